"""The commands of ``pulumi-docker-machine``, each reading the stack outputs.

Each function takes the parsed arguments, prints its result and returns the
exit code; failures raise :class:`CliError`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from provider import certdir, tlsprobe
from provider.cli import shells
from provider.cli.errors import (
    EXIT_FAILURE,
    EXIT_NO_SECRETS,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from provider.cli.stackoutputs import Machine, StackSelection, find_machine, load_machines
from provider.errors import (
    DaemonResponseError,
    DaemonUnreachableError,
    TLSVerificationError,
)

PROGRAM = "pulumi-docker-machine"
DOCKER_VARIABLES = (
    "DOCKER_TLS_VERIFY",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "DOCKER_MACHINE_NAME",
)
LS_WORKERS = 8


def selection_of(args: argparse.Namespace) -> StackSelection:
    """Return the stack selection given by ``--stack`` and ``--cwd``."""
    project_dir = Path(args.cwd).expanduser().resolve() if args.cwd else None
    return StackSelection(stack=args.stack, project_dir=project_dir)


def write_cert_dir(machine: Machine) -> Path:
    """Write the machine's ca.pem, cert.pem and key.pem; return the directory.

    The directory is this user's own, so a workstation that never ran
    ``pulumi up`` gets the same layout as the one that did.
    """
    directory = certdir.cert_path(machine.project, machine.stack, machine.name)
    ca_cert = str(machine.public.get("caCertPem") or "")
    client_cert = str(machine.public.get("clientCertPem") or "")
    if not ca_cert or not client_cert:
        raise CliError(
            f"machine {machine.name!r} has no caCertPem or clientCertPem output; "
            f"run `pulumi up` on stack {machine.stack!r}",
            EXIT_FAILURE,
        )
    return certdir.write_cert_dir(
        directory, ca_cert, client_cert, machine.secret("clientKeyPem")
    )


def engine_port(machine: Machine) -> int:
    """Return the daemon's TCP port, parsed from DOCKER_HOST."""
    docker_host = str(machine.public.get("DOCKER_HOST") or "")
    try:
        return int(docker_host.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise CliError(
            f"machine {machine.name!r} has an invalid DOCKER_HOST output "
            f"{docker_host!r}; run `pulumi up` on stack {machine.stack!r}",
            EXIT_FAILURE,
        ) from None


def probe(machine: Machine, timeout: float) -> str | None:
    """Return None if the daemon responds over mutual TLS, else the error.

    Network faults and certificate faults are named apart, because only the
    second is fixed by re-signing certificates. Raise :class:`CliError`,
    before any connection, when the machine lacks an output the check needs.
    """
    port = engine_port(machine)
    client_key = machine.secret("clientKeyPem")
    try:
        tlsprobe.fetch_version(
            machine.address,
            port,
            str(machine.public.get("caCertPem") or ""),
            str(machine.public.get("clientCertPem") or ""),
            client_key,
            timeout=timeout,
        )
    except DaemonUnreachableError as error:
        return str(error)
    except TLSVerificationError as error:
        return f"TLS error: {error}"
    except DaemonResponseError as error:
        return f"HTTP error: {error}"
    except (ssl.SSLError, ValueError) as error:
        # Raised while loading the certificates, before any connection.
        return f"TLS error: the stack's certificates or key cannot be loaded: {error}"
    return None


def live_check(machine: Machine, timeout: float) -> str:
    """Return the LIVE cell of ``ls``: OK, or why this machine failed the check.

    A machine that lacks an output gets the error in its own row, so the other
    machines are still listed and checked.
    """
    try:
        error = probe(machine, timeout)
    except CliError as missing_output:
        return str(missing_output)
    return "OK" if error is None else error


def hint_command(args: argparse.Namespace) -> list[str]:
    """Return the ``env`` command line that reproduces this output."""
    command = [PROGRAM, "env"]
    if args.stack:
        command += ["--stack", args.stack]
    if args.cwd:
        command += ["--cwd", args.cwd]
    if args.shell:
        command += ["--shell", args.shell]
    if args.unset:
        command.append("--unset")
    if args.no_proxy:
        command.append("--no-proxy")
    if args.name:
        command.append(args.name)
    return command


def run_env(args: argparse.Namespace) -> int:
    """Print the docker client's variables for the user's shell."""
    try:
        if args.shell:
            shell = shells.check_shell(args.shell)
        else:
            shell = shells.detect_shell(os.environ)
    except shells.UnsupportedShellError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    if not args.name and (not args.unset or args.no_proxy):
        raise CliError(
            "missing machine NAME; `env --unset` alone is the only form "
            "without one", EXIT_USAGE
        )

    # Unsetting the docker variables reads nothing from the stack. Setting them
    # and --no-proxy (which needs the machine's address) read it.
    machine = None
    if not args.unset or args.no_proxy:
        machine = find_machine(selection_of(args), args.name, secrets=not args.unset)
    variables: dict[str, str | None]
    if args.unset:
        variables = {name: None for name in DOCKER_VARIABLES}
    else:
        variables = {
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_HOST": str(machine.public["DOCKER_HOST"]),
            "DOCKER_CERT_PATH": str(write_cert_dir(machine)),
            "DOCKER_MACHINE_NAME": machine.name,
        }
    if args.no_proxy:
        current = [os.environ.get("NO_PROXY", ""), os.environ.get("no_proxy", "")]
        merged = shells.merge_no_proxy(current, machine.address, remove=args.unset)
        for name in ("NO_PROXY", "no_proxy"):
            variables[name] = merged or None
    try:
        text = shells.render_env(shell, variables, hint_command(args))
    except shells.UnsupportedShellError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    sys.stdout.write(text)
    return EXIT_OK


def run_config(args: argparse.Namespace) -> int:
    """Print the docker client flags that reach the machine, one per line."""
    machine = find_machine(selection_of(args), args.name, secrets=True)
    directory = write_cert_dir(machine)
    print("--tlsverify")
    print(f"--tlscacert={directory / 'ca.pem'}")
    print(f"--tlscert={directory / 'cert.pem'}")
    print(f"--tlskey={directory / 'key.pem'}")
    print(f"-H={machine.public['DOCKER_HOST']}")
    return EXIT_OK


def run_ip(args: argparse.Namespace) -> int:
    """Print the machine's address."""
    print(find_machine(selection_of(args), args.name, secrets=False).address)
    return EXIT_OK


def run_url(args: argparse.Namespace) -> int:
    """Print the machine's DOCKER_HOST URL."""
    machine = find_machine(selection_of(args), args.name, secrets=False)
    print(machine.public["DOCKER_HOST"])
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    """Print the machine's public outputs as JSON; secrets are left out."""
    machine = find_machine(selection_of(args), args.name, secrets=False)
    document = {
        "name": machine.name,
        "project": machine.project,
        "stack": machine.stack,
        "localCertPath": str(
            certdir.cert_path(machine.project, machine.stack, machine.name)
        ),
        "outputs": machine.public,
    }
    print(json.dumps(document, indent=2, sort_keys=True))
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    """Print Running if the daemon responds over mutual TLS, else the reason."""
    machine = find_machine(selection_of(args), args.name, secrets=True)
    state = str(machine.public.get("state") or "running")
    if state.lower() != "running":
        print(state.capitalize())
        return EXIT_UNREACHABLE
    error = probe(machine, args.timeout)
    if error is None:
        print("Running")
        return EXIT_OK
    print("Unreachable")
    print(f"{PROGRAM}: {error}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _ls_machines(selection: StackSelection) -> tuple[list[Machine], bool]:
    try:
        return load_machines(selection, secrets=True), True
    except CliError as error:
        if error.exit_code != EXIT_NO_SECRETS:
            raise
        print(f"{PROGRAM}: live check skipped: {error}", file=sys.stderr)
        return load_machines(selection, secrets=False), False


def run_ls(args: argparse.Namespace) -> int:
    """Print a table of the stack's machines with a live check of each."""
    machines, can_probe = _ls_machines(selection_of(args))
    live: dict[str, str] = {}
    if can_probe:
        with concurrent.futures.ThreadPoolExecutor(LS_WORKERS) as pool:
            cells = pool.map(lambda m: live_check(m, args.timeout), machines)
            live = dict(zip((machine.name for machine in machines), cells))
    header = ["NAME", "DRIVER", "STATE", "URL", "DOCKER", "CERT EXPIRES", "LIVE"]
    rows = [header]
    for machine in machines:
        expiry = str(machine.public.get("serverCertNotAfter") or "")
        rows.append(
            [
                machine.name,
                str(machine.public.get("driver") or ""),
                str(machine.public.get("state") or ""),
                str(machine.public.get("DOCKER_HOST") or ""),
                str(machine.public.get("dockerVersion") or ""),
                expiry[:10],
                live.get(machine.name, "unknown (no access to secrets)"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return EXIT_OK


def run_context(args: argparse.Namespace) -> int:
    """Create or update a docker context that points at the machine."""
    if shutil.which("docker") is None:
        raise CliError("the docker client was not found on PATH", EXIT_FAILURE)
    machine = find_machine(selection_of(args), args.name, secrets=True)
    directory = write_cert_dir(machine)
    context_name = args.context_name or machine.name
    files = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
    endpoint = [f"host={machine.public['DOCKER_HOST']}"]
    for field, file_name in files.items():
        path = str(directory / file_name)
        if "," in path or "=" in path:
            raise CliError(
                f"the certificate path {path!r} contains ',' or '=', which "
                f"`docker context` cannot parse; set PULUMI_DOCKER_MACHINE_HOME "
                f"to a plain directory",
                EXIT_FAILURE,
            )
        endpoint.append(f"{field}={path}")
    exists = _docker(["context", "inspect", context_name], check=False).returncode == 0
    verb = "update" if exists else "create"
    description = f"{machine.name} of stack {machine.stack}"
    _docker(
        [
            "context", verb, context_name,
            "--description", description,
            "--docker", ",".join(endpoint),
        ]
    )
    print(
        f"docker context {context_name!r} {verb}d for {machine.public['DOCKER_HOST']}; "
        f"use it with `docker --context {context_name} info` or "
        f"`docker context use {context_name}`"
    )
    return EXIT_OK


def _docker(arguments: list[str], check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        ["docker", *arguments], capture_output=True, text=True, timeout=60
    )
    if check and completed.returncode != 0:
        raise CliError(
            f"`docker {' '.join(arguments[:3])}` failed: {completed.stderr.strip()}",
            EXIT_FAILURE,
        )
    return completed


def ssh_command(machine: Machine, directory: Path, command: list[str]) -> list[str]:
    """Return the ssh argument list; only file paths, never key material.

    The recorded host key is the only one accepted (no trust on first use),
    under an alias so that the address and port need no known_hosts syntax.
    """
    alias = f"pulumi-docker-machine.{machine.stack}.{machine.name}"
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"{alias} {machine.public['sshHostKey']}\n")
    arguments = [
        "ssh",
        "-o", f"IdentityFile={directory / 'id'}",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"HostKeyAlias={alias}",
        "-p", str(machine.public.get("sshPort") or 22),
        "-l", str(machine.public.get("sshUser") or "root"),
        machine.address,
    ]
    if command:
        arguments += ["--", *command]
    return arguments


def run_ssh(args: argparse.Namespace) -> int:
    """Log in to the machine, or run a command on it; return ssh's exit code."""
    if shutil.which("ssh") is None:
        raise CliError("the OpenSSH client (ssh) was not found on PATH", EXIT_FAILURE)
    machine = find_machine(selection_of(args), args.name, secrets=True)
    if not machine.public.get("sshHostKey"):
        raise CliError(
            f"machine {machine.name!r} has no recorded sshHostKey output; run "
            f"`pulumi up` on stack {machine.stack!r} so it records one",
            EXIT_FAILURE,
        )
    private_key = machine.secret("sshPrivateKey")
    with tempfile.TemporaryDirectory(prefix="pdm-ssh-") as name:
        directory = Path(name)
        key_file = os.open(directory / "id", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_file, "w") as handle:
            handle.write(private_key if private_key.endswith("\n") else private_key + "\n")
        completed = subprocess.run(ssh_command(machine, directory, args.command))
    return completed.returncode
