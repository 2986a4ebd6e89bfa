"""The ``env`` syntax of each supported shell: set, unset, and the hint line.

Pure functions with no I/O. Every value is quoted for its shell, so paths with
spaces, quotes, backslashes or Windows drive letters survive ``eval``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

SHELLS = ("bash", "sh", "zsh", "fish", "powershell", "cmd", "tcsh", "emacs")

# Login shells named in $SHELL that use another shell's syntax.
SHELL_ALIASES = {"csh": "tcsh", "pwsh": "powershell", "ksh": "sh", "dash": "sh"}


class UnsupportedShellError(ValueError):
    """A shell name that has no syntax here, or a value it cannot express."""


def detect_shell(environ: Mapping[str, str], os_name: str = os.name) -> str:
    """Return the shell whose syntax ``env`` prints, from the environment.

    ``$SHELL`` decides on POSIX systems. On Windows, where ``$SHELL`` is
    usually unset, a set ``PSModulePath`` means PowerShell and otherwise cmd.
    A POSIX process without ``$SHELL`` (a CI job, cron, ``docker exec``) gets
    ``sh`` syntax, which every POSIX shell's ``eval`` accepts.
    """
    login_shell = environ.get("SHELL", "")
    if login_shell:
        name = os.path.basename(login_shell.rstrip("/"))
        if name.endswith(".exe"):
            name = name[: -len(".exe")]
        name = SHELL_ALIASES.get(name, name)
        if name in SHELLS:
            return name
        raise UnsupportedShellError(
            f"cannot tell the syntax of shell {login_shell!r} from $SHELL; "
            f"choose one with --shell ({', '.join(SHELLS)})"
        )
    if os_name == "nt":
        return "powershell" if "PSModulePath" in environ else "cmd"
    return "sh"


def check_shell(name: str) -> str:
    """Return the canonical name of ``name``, or raise naming the choices."""
    canonical = SHELL_ALIASES.get(name, name)
    if canonical not in SHELLS:
        raise UnsupportedShellError(
            f"invalid shell {name!r}: use one of {', '.join(SHELLS)}"
        )
    return canonical


def quote_posix(value: str) -> str:
    """Quote for sh, bash and zsh: single quotes, with ``'`` as ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"


def quote_fish(value: str) -> str:
    """Quote for fish: inside single quotes only ``\\`` and ``'`` are escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# PowerShell ends a single-quoted string at any of these, not only at "'".
POWERSHELL_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def quote_powershell(value: str) -> str:
    """Quote for PowerShell: a literal string, with each single quote doubled.

    Inside the string a doubled quote character stands for one of itself.
    """
    quoted = "".join(
        character * 2 if character in POWERSHELL_SINGLE_QUOTES else character
        for character in value
    )
    return "'" + quoted + "'"


def quote_tcsh(value: str) -> str:
    """Quote for tcsh: single quotes, except ``!`` (history) and ``'``."""
    if "\n" in value:
        raise UnsupportedShellError(
            f"tcsh cannot take a newline inside a value: {value!r}"
        )
    return "'" + value.replace("'", "'\\''").replace("!", "\\!") + "'"


def quote_elisp(value: str) -> str:
    """Quote as an Emacs Lisp string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_cmd_value(name: str, value: str) -> str:
    """Return ``value`` if cmd's ``SET "NAME=VALUE"`` keeps it intact.

    Inside the quotes cmd takes spaces, ``&``, ``|``, ``<``, ``>`` and ``^``
    literally, but it still expands ``%VAR%`` and cannot contain ``"``.
    """
    for character in ('"', "%", "\n", "\r"):
        if character in value:
            raise UnsupportedShellError(
                f"cmd cannot set {name} to {value!r}, which contains "
                f"{character!r}; use --shell powershell instead"
            )
    return value


def render_set(shell: str, name: str, value: str) -> str:
    """Return the line that sets environment variable ``name`` to ``value``."""
    if shell in ("bash", "sh", "zsh"):
        return f"export {name}={quote_posix(value)}"
    if shell == "fish":
        return f"set -gx {name} {quote_fish(value)};"
    if shell == "powershell":
        return f"$Env:{name} = {quote_powershell(value)}"
    if shell == "cmd":
        return f'SET "{name}={check_cmd_value(name, value)}"'
    if shell == "tcsh":
        return f"setenv {name} {quote_tcsh(value)};"
    if shell == "emacs":
        return f"(setenv {quote_elisp(name)} {quote_elisp(value)})"
    raise UnsupportedShellError(f"invalid shell {shell!r}")


def render_unset(shell: str, name: str) -> str:
    """Return the line that removes environment variable ``name``."""
    if shell in ("bash", "sh", "zsh"):
        return f"unset {name}"
    if shell == "fish":
        return f"set -e {name};"
    if shell == "powershell":
        return f"Remove-Item Env:\\{name} -ErrorAction SilentlyContinue"
    if shell == "cmd":
        return f"SET {name}="
    if shell == "tcsh":
        return f"unsetenv {name};"
    if shell == "emacs":
        return f"(setenv {quote_elisp(name)} nil)"
    raise UnsupportedShellError(f"invalid shell {shell!r}")


def render_hint(shell: str, command: Sequence[str]) -> list[str]:
    """Return the closing comment lines that show how to apply the output."""
    if shell == "emacs":
        # call-process passes each argument as it is, with no shell between,
        # so every argument only needs to be a Lisp string literal.
        arguments = " ".join(quote_elisp(argument) for argument in command[1:])
        usage = (
            f"(with-temp-buffer (call-process {quote_elisp(command[0])} nil t nil "
            f"{arguments}) (eval-buffer))"
        )
        return [
            ";; Run this command to apply these settings to Emacs:",
            f";; {usage}",
        ]
    line = " ".join(_quote_argument(shell, argument) for argument in command)
    if shell == "fish":
        usage = f"{line} | source"
    elif shell == "powershell":
        usage = f"& {line} | Invoke-Expression"
    elif shell == "cmd":
        usage = f"@FOR /f \"tokens=*\" %i IN ('{line}') DO @%i"
    elif shell == "tcsh":
        # Double quotes keep runs of spaces inside values intact.
        usage = f"eval \"`{line}`\""
    else:
        usage = f'eval "$({line})"'
    marker = "REM" if shell == "cmd" else "#"
    return [
        f"{marker} Run this command to apply these settings to your shell:",
        f"{marker} {usage}",
    ]


def _quote_argument(shell: str, argument: str) -> str:
    plain = argument and all(c.isalnum() or c in "-_./:=@+," for c in argument)
    if plain:
        return argument
    if shell == "powershell":
        return quote_powershell(argument)
    if shell == "cmd":
        return quote_cmd_argument(argument)
    return quote_posix(argument)


def quote_cmd_argument(argument: str) -> str:
    """Quote one argument of the cmd hint line, or raise if cmd cannot hold it.

    Inside double quotes cmd still expands ``%VAR%`` and has no escape for
    ``"``. The Microsoft C runtime, which splits a Windows program's command
    line, reads backslashes before the closing quote as escapes, so trailing
    backslashes are doubled.
    """
    for character in ('"', "%", "\n", "\r"):
        if character in argument:
            raise UnsupportedShellError(
                f"the cmd hint line cannot pass the argument {argument!r}, which "
                f"contains {character!r}; use --shell powershell instead"
            )
    trailing = len(argument) - len(argument.rstrip("\\"))
    return '"' + argument + "\\" * trailing + '"'


def merge_no_proxy(current: Sequence[str], host: str, remove: bool = False) -> str:
    """Return a ``no_proxy`` list with ``host`` added once, or taken out.

    ``current`` holds the raw values of ``NO_PROXY`` and ``no_proxy``; their
    entries are joined in order, without duplicates or empty entries.
    """
    entries: list[str] = []
    for raw in current:
        for entry in raw.split(","):
            entry = entry.strip()
            if entry and entry not in entries:
                entries.append(entry)
    if remove:
        entries = [entry for entry in entries if entry != host]
    elif host not in entries:
        entries.append(host)
    return ",".join(entries)


def render_env(
    shell: str,
    variables: Mapping[str, str | None],
    hint_command: Sequence[str],
) -> str:
    """Return the whole ``env`` output: one line per variable, then the hint.

    A variable whose value is ``None`` is unset.
    """
    lines = []
    for name, value in variables.items():
        if value is None:
            lines.append(render_unset(shell, name))
        else:
            lines.append(render_set(shell, name, value))
    lines.extend(render_hint(shell, hint_command))
    return "\n".join(lines) + "\n"
