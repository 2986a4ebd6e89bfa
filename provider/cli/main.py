"""Entry point of ``pulumi-docker-machine``: argument parsing and exit codes."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from provider.cli import commands, shells
from provider.cli.errors import CliError

DEFAULT_PROBE_TIMEOUT_SECONDS = 3.0

EPILOG = """\
exit codes:
  0  success
  1  the command failed (docker context, a missing output of the machine)
  2  invalid arguments, including an unsupported shell
  3  no pulumi, no project, stack not found, or the backend failed
  4  the stack has no machines output (never deployed, or destroyed),
     or no machineSecrets output when the command needs a key
  5  no machine of that name in the stack
  6  the secret outputs cannot be decrypted (passphrase or secrets provider)
  7  status: the daemon did not respond or the machine is not running
ssh returns the exit status of ssh itself, or of the remote command.
"""


def _add_stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack",
        "-s",
        help="stack to read, as NAME or ORG/PROJECT/STACK "
        "(default: the project's selected stack)",
    )
    parser.add_argument(
        "--cwd",
        "-C",
        help="directory of the Pulumi project (default: the current directory)",
    )


def _add_command(
    subparsers: argparse._SubParsersAction, name: str, summary: str, handler
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_stack_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def _add_name(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    parser.add_argument("name", metavar="NAME", nargs=nargs, help="machine name")


# socket.settimeout raises OverflowError for 1e10 s (CPython 3.11 on Linux).
MAX_TIMEOUT_SECONDS = 3600


def _timeout_seconds(text: str) -> float:
    """Parse ``--timeout``: seconds, more than 0 and at most MAX_TIMEOUT_SECONDS."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: give a number of seconds above 0 and at "
            f"most {MAX_TIMEOUT_SECONDS}, e.g. 3"
        )
    return seconds


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_timeout_seconds,
        default=DEFAULT_PROBE_TIMEOUT_SECONDS,
        help="seconds to wait for each network operation of the live check "
        f"(default {DEFAULT_PROBE_TIMEOUT_SECONDS:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command and option."""
    parser = argparse.ArgumentParser(
        prog=commands.PROGRAM,
        description="Use the Docker hosts of a pulumi-docker-machine stack: "
        "point the docker client at them, list them, log in to them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    env = _add_command(
        subparsers, "env", "print the docker client's variables for a shell",
        commands.run_env,
    )
    _add_name(env, nargs="?")
    env.add_argument(
        "--shell",
        help=f"output syntax: {', '.join(shells.SHELLS)} "
        "(default: detected from $SHELL, sh when it is unset, PowerShell/cmd on Windows)",
    )
    env.add_argument(
        "--unset", "-u", action="store_true",
        help="print the lines that remove the variables instead",
    )
    env.add_argument(
        "--no-proxy", action="store_true",
        help="also add the machine's address to NO_PROXY and no_proxy "
        "(with --unset: remove it)",
    )

    context = _add_command(
        subparsers, "context", "create or update a docker context for a machine",
        commands.run_context,
    )
    _add_name(context)
    context.add_argument(
        "--context-name", help="name of the docker context (default: NAME)"
    )

    ls = _add_command(
        subparsers, "ls", "list the stack's machines with a live check",
        commands.run_ls,
    )
    _add_timeout(ls)

    status = _add_command(
        subparsers, "status", "print Running, or why the daemon does not respond",
        commands.run_status,
    )
    _add_name(status)
    _add_timeout(status)

    for name, summary, handler in (
        ("ip", "print the machine's address", commands.run_ip),
        ("url", "print the machine's DOCKER_HOST URL", commands.run_url),
        ("config", "print the docker client's TLS and host flags", commands.run_config),
        ("inspect", "print the machine's public outputs as JSON", commands.run_inspect),
    ):
        _add_name(_add_command(subparsers, name, summary, handler))

    ssh = _add_command(
        subparsers, "ssh",
        "log in with the recorded host key, or run COMMAND on the machine",
        commands.run_ssh,
    )
    _add_name(ssh)
    ssh.add_argument(
        "command", metavar="COMMAND", nargs=argparse.REMAINDER,
        help="command and arguments to run instead of a login shell",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"{commands.PROGRAM}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

