"""``env`` output per shell: golden files, and a round trip through real shells.

The golden files under tests/golden/env/ fix the exact text. The round trip
runs each installed shell on that text, the way the printed hint shows, and
checks that every value arrives byte for byte. Set
``UPDATE_GOLDEN=1`` to rewrite the golden files after a deliberate change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provider.cli import shells

GOLDEN_DIR = Path(__file__).parent / "golden" / "env"

# The certificate path needs quoting in every shell. It contains a single
# quote, double quotes, a backslash, a dollar sign, a history '!' and two
# spaces in a row. The Windows path contains spaces and backslashes.
POSIX_VALUES = {
    "DOCKER_TLS_VERIFY": "1",
    "DOCKER_HOST": "tcp://127.0.0.1:2376",
    "DOCKER_CERT_PATH": "/home/o'neil/my \"certs\"/a\\b  $HOME !x",
    "DOCKER_MACHINE_NAME": "build-1",
}
WINDOWS_VALUES = {
    **POSIX_VALUES,
    "DOCKER_CERT_PATH": "C:\\Users\\Jane Doe\\.pulumi-docker-machine\\machines\\p\\dev\\build-1",
}
# PowerShell ends a single-quoted string at U+2018, U+2019, U+201A and U+201B
# as well as at the ASCII quote.
QUOTE_VALUES = {
    **POSIX_VALUES,
    "DOCKER_CERT_PATH": "C:\\Users\\O\u2019Brien\\\u2018a\u2019 \u201ab\u201b 'c'",
}
HINT_SET = ["pulumi-docker-machine", "env", "--stack", "dev team", "build-1"]
HINT_UNSET = ["pulumi-docker-machine", "env", "--unset"]

CASES = [
    *[(shell, "set-posix", POSIX_VALUES, HINT_SET) for shell in shells.SHELLS if shell != "cmd"],
    *[(shell, "set-windows", WINDOWS_VALUES, HINT_SET) for shell in shells.SHELLS],
    *[(shell, "set-quotes", QUOTE_VALUES, HINT_SET) for shell in shells.SHELLS],
    *[(shell, "unset", dict.fromkeys(POSIX_VALUES), HINT_UNSET) for shell in shells.SHELLS],
]


@pytest.mark.parametrize(
    "shell,case,values,hint", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_env_golden(shell, case, values, hint):
    text = shells.render_env(shell, values, hint)
    golden = GOLDEN_DIR / f"{shell}.{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_cmd_rejects_double_quote():
    with pytest.raises(shells.UnsupportedShellError) as caught:
        shells.render_env("cmd", POSIX_VALUES, HINT_SET)
    assert "DOCKER_CERT_PATH" in str(caught.value)
    assert "--shell powershell" in str(caught.value)


def test_cmd_rejects_percent():
    with pytest.raises(shells.UnsupportedShellError):
        shells.render_set("cmd", "DOCKER_CERT_PATH", "C:\\%USERPROFILE%\\certs")


@pytest.mark.parametrize("quote", list("'\u2018\u2019\u201a\u201b"))
def test_powershell_doubles_each_quote(quote):
    assert shells.quote_powershell(f"a{quote}b") == f"'a{quote}{quote}b'"


@pytest.mark.parametrize(
    "argument",
    ["dev team", "C:\\Users\\Jane Doe\\project\\", "C:\\a b\\\\", "a&b |c"],
    ids=["space", "trailing-backslash", "two-trailing-backslashes", "cmd-operators"],
)
def test_cmd_hint_quotes_like_windows_argv(argument):
    # subprocess.list2cmdline applies the argument rules of the Microsoft C
    # runtime, which a Windows program uses to split its command line.
    assert shells.quote_cmd_argument(argument) == subprocess.list2cmdline([argument])


@pytest.mark.parametrize(
    "argument", ['C:\\a"b', "C:\\%USERPROFILE%"], ids=["quote", "percent"]
)
def test_cmd_hint_rejects_argument(argument):
    hint = ["pulumi-docker-machine", "env", "--cwd", argument, "build-1"]
    with pytest.raises(shells.UnsupportedShellError) as caught:
        shells.render_env("cmd", WINDOWS_VALUES, hint)
    assert repr(argument) in str(caught.value)
    assert "--shell powershell" in str(caught.value)


def _elisp_strings(line: str) -> list[str]:
    """Return the string literals of an Emacs Lisp line, unescaped."""
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
    return [re.sub(r"\\(.)", r"\1", literal) for literal in literals]


def test_emacs_hint_passes_arguments_intact():
    cwd = "/home/o'neil/a \"b\"\\c $HOME"
    hint = ["pulumi-docker-machine", "env", "--cwd", cwd, "build-1"]
    text = shells.render_env("emacs", dict.fromkeys(POSIX_VALUES), hint)
    usage = text.splitlines()[-1]
    assert usage.startswith(";; (with-temp-buffer (call-process ")
    assert _elisp_strings(usage) == hint


def test_tcsh_rejects_newline():
    with pytest.raises(shells.UnsupportedShellError):
        shells.render_set("tcsh", "X", "a\nb")


# Each shell applies the output the way its hint line shows, with `cat FILE`
# standing in for the tool, then prints the values separated by NUL bytes.
ROUND_TRIP = {
    "bash": ["bash", "-c", 'eval "$(cat "$1")"; printf "%s\\0" {refs}', "bash"],
    "sh": ["sh", "-c", 'eval "$(cat "$1")"; printf "%s\\0" {refs}', "sh"],
    "zsh": ["zsh", "-c", 'eval "$(cat "$1")"; printf "%s\\0" {refs}', "zsh"],
    "fish": ["fish", "-c", 'cat $argv[1] | source; printf "%s\\0" {refs}'],
    "tcsh": ["tcsh", "-c", 'eval "`cat $1`"; {tcsh_prints}'],
}


def _round_trip_command(shell: str, names: list[str], script: Path) -> list[str]:
    command = list(ROUND_TRIP[shell])
    refs = " ".join(f'"${name}"' for name in names)
    # tcsh has no printf %s with NUL; printenv prints one value per call.
    tcsh_prints = "; ".join(f"printenv {name}; printf '\\0'" for name in names)
    command[2] = command[2].replace("{refs}", refs).replace("{tcsh_prints}", tcsh_prints)
    if shell == "fish":
        return ["fish", "-c", command[2], str(script)]
    return [*command, str(script)]


@pytest.mark.parametrize("shell", sorted(ROUND_TRIP))
@pytest.mark.parametrize(
    "values",
    [POSIX_VALUES, WINDOWS_VALUES, QUOTE_VALUES],
    ids=["posix", "windows", "quotes"],
)
def test_env_round_trip(shell, values, tmp_path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (scripts/setup.sh installs it)")
    script = tmp_path / "env.out"
    script.write_text(shells.render_env(shell, values, HINT_SET))
    names = list(values)
    completed = subprocess.run(
        _round_trip_command(shell, names, script),
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr.decode()
    printed = completed.stdout.decode().split("\0")[:-1]
    if shell == "tcsh":
        printed = [value.removesuffix("\n") for value in printed]
    assert dict(zip(names, printed)) == values


def test_unset_round_trip_bash(tmp_path):
    script = tmp_path / "unset.out"
    script.write_text(shells.render_env("bash", dict.fromkeys(POSIX_VALUES), HINT_UNSET))
    completed = subprocess.run(
        ["bash", "-c", 'eval "$(cat "$1")"; env', "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **POSIX_VALUES},
    )
    assert completed.returncode == 0, completed.stderr
    for name in POSIX_VALUES:
        assert f"{name}=" not in completed.stdout


@pytest.mark.parametrize(
    "current,host,remove,expected",
    [
        (["", ""], "127.0.0.5", False, "127.0.0.5"),
        (["a.example,127.0.0.5", ""], "127.0.0.5", False, "a.example,127.0.0.5"),
        (["a.example", "a.example, b.example"], "10.1.2.3", False, "a.example,b.example,10.1.2.3"),
        (["a.example,127.0.0.5,,", ""], "127.0.0.5", True, "a.example"),
        (["127.0.0.5", "127.0.0.5"], "127.0.0.5", True, ""),
    ],
    ids=["empty", "present", "merged", "remove", "remove-last"],
)
def test_no_proxy_merge(current, host, remove, expected):
    assert shells.merge_no_proxy(current, host, remove=remove) == expected


@pytest.mark.parametrize(
    "environ,os_name,expected",
    [
        ({"SHELL": "/bin/bash"}, "posix", "bash"),
        ({"SHELL": "/usr/bin/zsh"}, "posix", "zsh"),
        ({"SHELL": "/usr/bin/fish"}, "posix", "fish"),
        ({"SHELL": "/bin/csh"}, "posix", "tcsh"),
        ({"SHELL": "/bin/dash"}, "posix", "sh"),
        ({"SHELL": "/usr/bin/pwsh"}, "posix", "powershell"),
        ({"PSModulePath": "C:\\x"}, "nt", "powershell"),
        ({}, "nt", "cmd"),
        ({}, "posix", "sh"),
    ],
)
def test_detect_shell(environ, os_name, expected):
    assert shells.detect_shell(environ, os_name) == expected


def test_detect_shell_unknown():
    with pytest.raises(shells.UnsupportedShellError) as caught:
        shells.detect_shell({"SHELL": "/bin/nushell"}, "posix")
    assert "--shell" in str(caught.value)
