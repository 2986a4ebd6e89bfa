"""Read a stack's machine outputs through the ``pulumi`` CLI.

The tool needs no state of its own: whatever the user's ``pulumi`` can read
(backend login, ``PULUMI_CONFIG_PASSPHRASE`` or a cloud secrets provider), it
can read. Failures of ``pulumi`` are turned into :class:`CliError` with the
exit code documented in the README.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from provider.cli.errors import (
    EXIT_FAILURE,
    EXIT_NO_OUTPUTS,
    EXIT_NO_SECRETS,
    EXIT_NO_STACK,
    EXIT_UNKNOWN_MACHINE,
    CliError,
)

PULUMI_TIMEOUT_SECONDS = 120.0
DEFAULT_PROJECT = "pulumi-docker-machine"

# The project file names that pulumi accepts in a project directory.
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.yml")

# Fragments of pulumi's error messages (checked with pulumi v3.276.0).
SECRET_ERRORS = (
    "passphrase",
    "decrypt",
    "secrets manager",
    "secrets provider",
    "KMS",
)


@dataclasses.dataclass(frozen=True)
class StackSelection:
    """The stack to read (a name or ``org/project/stack``) and its project dir."""

    stack: str | None
    project_dir: Path | None


@dataclasses.dataclass(frozen=True)
class Machine:
    """One machine of a stack: its public outputs and, if read, its secrets."""

    name: str
    project: str
    stack: str
    public: dict[str, Any]
    secrets: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def address(self) -> str:
        """Return the host address that DOCKER_HOST and SSH use."""
        return str(self.public.get("address") or "")

    def secret(self, key: str) -> str:
        """Return one secret output, or raise when the machine lacks it.

        A missing secret of one machine is a missing output of that machine
        (exit 1), not a stack without outputs (exit 4).
        """
        if self.secrets is None or not self.secrets.get(key):
            raise CliError(
                f"machine {self.name!r} has no {key} in the stack's "
                f"machineSecrets output; run `pulumi up` on stack {self.stack!r}",
                EXIT_FAILURE,
            )
        return str(self.secrets[key])


def _run_pulumi(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if shutil.which("pulumi") is None:
        raise CliError(
            "the pulumi CLI was not found on PATH; install it (any 3.x) and log "
            "in to the backend that stores the stack",
            EXIT_NO_STACK,
        )
    try:
        return subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise CliError(
            f"`pulumi {' '.join(args)}` timed out after "
            f"{PULUMI_TIMEOUT_SECONDS:.0f} s; check that the backend is reachable",
            EXIT_NO_STACK,
        ) from None


def _raise_for(completed: subprocess.CompletedProcess, stack: str) -> None:
    message = completed.stderr.strip().removeprefix("error: ")
    if "no stack named" in message:
        raise CliError(
            f"stack {stack!r} not found in the current backend ({message}); "
            f"check `pulumi whoami -v` and `pulumi stack ls`, or pass --stack "
            f"ORG/PROJECT/STACK",
            EXIT_NO_STACK,
        )
    if "no Pulumi.yaml project file found" in message:
        raise CliError(
            "no Pulumi project here: run the command in the project directory, "
            "pass --cwd PROJECT_DIR, or pass --stack ORG/PROJECT/STACK",
            EXIT_NO_STACK,
        )
    if "PULUMI_ACCESS_TOKEN" in message:
        raise CliError(
            f"not logged in to a Pulumi backend ({message}); run `pulumi login "
            f"BACKEND_URL` or set PULUMI_BACKEND_URL to the backend that stores "
            f"stack {stack!r}",
            EXIT_NO_STACK,
        )
    if any(fragment in message for fragment in SECRET_ERRORS):
        raise CliError(
            f"cannot read the secret outputs of stack {stack!r}: {message}. Set "
            f"PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) to the "
            f"stack's passphrase, or get access to its secrets provider",
            EXIT_NO_SECRETS,
        )
    raise CliError(
        f"pulumi failed to read stack {stack!r}: {message or 'no error output'}",
        EXIT_NO_STACK,
    )


def _project_name(selection: StackSelection, stack: str) -> str:
    parts = stack.split("/")
    if len(parts) == 3:
        return parts[1]
    directory = selection.project_dir or Path.cwd()
    for candidate in (directory, *directory.parents):
        for file_name in PROJECT_FILES:
            path = candidate / file_name
            if path.exists():
                document = yaml.safe_load(path.read_text()) or {}
                return str(document.get("name") or DEFAULT_PROJECT)
    return DEFAULT_PROJECT


def _working_dir(selection: StackSelection, stack: str | None) -> Path:
    if selection.project_dir is not None:
        if not any((selection.project_dir / name).exists() for name in PROJECT_FILES):
            raise CliError(
                f"no Pulumi.yaml or Pulumi.yml in --cwd "
                f"{str(selection.project_dir)!r}; give the directory of the "
                f"project that declares the machines",
                EXIT_NO_STACK,
            )
        return selection.project_dir
    if stack is not None and stack.count("/") == 2:
        # A fully qualified name needs no project directory, so the tool
        # works on a workstation that has no copy of the project.
        return Path(tempfile.gettempdir())
    return Path.cwd()


def current_stack(selection: StackSelection) -> str:
    """Return the stack to read: ``--stack`` or the project's selected one."""
    if selection.stack:
        return selection.stack
    directory = _working_dir(selection, None)
    completed = _run_pulumi(["stack", "--show-name"], directory)
    if completed.returncode != 0 or not completed.stdout.strip():
        message = completed.stderr.strip().removeprefix("error: ")
        if "no Pulumi.yaml project file found" in message:
            _raise_for(completed, "(current)")
        raise CliError(
            f"no stack selected ({message or 'no current stack'}); pass --stack "
            f"NAME or run `pulumi stack select NAME`",
            EXIT_NO_STACK,
        )
    return completed.stdout.strip()


def read_outputs(selection: StackSelection, *, secrets: bool) -> tuple[str, str, dict]:
    """Return (project, stack, outputs) of the selected stack.

    With ``secrets`` the secret outputs are decrypted, which needs access to
    the stack's secrets provider.
    """
    stack = current_stack(selection)
    directory = _working_dir(selection, stack)
    args = ["stack", "output", "--json", "--stack", stack]
    if secrets:
        args.append("--show-secrets")
    completed = _run_pulumi(args, directory)
    if completed.returncode != 0:
        _raise_for(completed, stack)
    try:
        outputs = json.loads(completed.stdout or "{}")
    except json.JSONDecodeError as error:
        raise CliError(
            f"pulumi printed outputs of stack {stack!r} that are not JSON: {error}",
            EXIT_NO_STACK,
        ) from None
    return _project_name(selection, stack), stack.split("/")[-1], outputs


def load_machines(selection: StackSelection, *, secrets: bool) -> list[Machine]:
    """Return every machine of the selected stack, in name order."""
    project, stack, outputs = read_outputs(selection, secrets=secrets)
    public = outputs.get("machines")
    if not isinstance(public, dict) or not public:
        raise CliError(
            f"stack {stack!r} has no machines output: it was never deployed, was "
            f"destroyed, or is not a pulumi-docker-machine stack. Run `pulumi up` "
            f"on it, or choose another stack with --stack",
            EXIT_NO_OUTPUTS,
        )
    secret_outputs = outputs.get("machineSecrets") if secrets else None
    if secrets and not isinstance(secret_outputs, dict):
        raise CliError(
            f"stack {stack!r} has no readable machineSecrets output; run `pulumi "
            f"up` on it with this version of pulumi-docker-machine",
            EXIT_NO_OUTPUTS,
        )
    return [
        Machine(
            name=name,
            project=project,
            stack=stack,
            public=dict(values),
            secrets=None if secret_outputs is None else secret_outputs.get(name),
        )
        for name, values in sorted(public.items())
    ]


def find_machine(selection: StackSelection, name: str, *, secrets: bool) -> Machine:
    """Return the machine ``name`` of the selected stack, or raise naming the others."""
    machines = load_machines(selection, secrets=secrets)
    for machine in machines:
        if machine.name == name:
            return machine
    names = ", ".join(machine.name for machine in machines)
    raise CliError(
        f"machine {name!r} not found in stack {machines[0].stack!r}; its machines "
        f"are {names}. Run `pulumi-docker-machine ls` to list them",
        EXIT_UNKNOWN_MACHINE,
    )

