"""Drive the real ``pulumi`` CLI on this project, one isolated stack per test.

Every stack gets its own file backend, ``PULUMI_HOME``, certificate home and
stack configuration file (passed with ``--config-file``), all in a temporary
directory, so tests leave nothing in the repository or the user's home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.harness.netguard import check_dialable

PROJECT_DIR = Path(__file__).resolve().parents[2]
PROJECT_NAME = "pulumi-docker-machine"
PASSPHRASE = "test passphrase, not a secret"
# A pulumi command that boots a VM takes minutes under software emulation;
# PDM_TEST_PULUMI_TIMEOUT raises the limit on a loaded machine.
DEFAULT_TIMEOUT_SECONDS = float(os.environ.get("PDM_TEST_PULUMI_TIMEOUT", "900"))


def machine_config(vm: Any, name: str, **settings: Any) -> dict[str, Any]:
    """Return a ``machines`` entry for a machine on the test VM ``vm``."""
    entry = {
        "name": name,
        "address": check_dialable(vm.address),
        "sshPort": vm.ssh_port,
        "sshUser": vm.user,
        "sshPrivateKeyFile": str(vm.private_key_path),
    }
    entry.update(settings)
    return entry


class PulumiCommandError(AssertionError):
    """A pulumi command exited with an unexpected status."""


class PulumiStack:
    """A stack of this project on a private local backend."""

    def __init__(
        self,
        workdir: Path,
        name: str | None = None,
        *,
        project_dir: Path = PROJECT_DIR,
        backend_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        if shutil.which("pulumi") is None:
            raise RuntimeError("pulumi not on PATH: run the tests through scripts/test.sh")
        self.name = name or f"test-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.project_dir = project_dir
        self.backend_dir = workdir / "backend"
        self.config_file = workdir / f"Pulumi.{self.name}.yaml"
        self.machines_home = workdir / "machines-home"
        for directory in (self.backend_dir, workdir / "pulumi-home", self.machines_home):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PULUMI_BACKEND_URL": backend_url or f"file://{self.backend_dir}",
            "PULUMI_HOME": str(workdir / "pulumi-home"),
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_DOCKER_MACHINE_HOME": str(self.machines_home),
            **(extra_env or {}),
        }
        self.run("stack", "init", self.name, stack_flag=False)
        # stack init writes the passphrase's salt into Pulumi.<stack>.yaml in
        # the project directory: move it into this stack's own config file.
        created = project_dir / f"Pulumi.{self.name}.yaml"
        self.base_config = yaml.safe_load(created.read_text()) if created.exists() else {}
        created.unlink(missing_ok=True)
        self.config_file.write_text(yaml.safe_dump(self.base_config or {}))

    def write_raw_config(self, config: dict[str, Any]) -> None:
        """Write the stack configuration file with fully qualified keys."""
        document = {**(self.base_config or {}), "config": config}
        self.config_file.write_text(yaml.safe_dump(document))

    def write_config(self, machines: list[dict[str, Any]], **extra: Any) -> None:
        """Write the stack configuration file with ``machines`` and extras."""
        config = {f"{PROJECT_NAME}:machines": machines}
        config.update({f"{PROJECT_NAME}:{key}": value for key, value in extra.items()})
        document = {**(self.base_config or {}), "config": config}
        self.config_file.write_text(yaml.safe_dump(document))

    def run(
        self,
        *args: str,
        check: bool = True,
        stack_flag: bool = True,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess:
        """Run ``pulumi ARGS`` in the project directory; raise if ``check`` fails."""
        command = ["pulumi", *args, "--non-interactive"]
        if stack_flag:
            command += ["--stack", self.name]
        completed = subprocess.run(
            command,
            cwd=self.project_dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and completed.returncode != 0:
            raise PulumiCommandError(
                f"{' '.join(command)} exited {completed.returncode}\n"
                f"--- stdout ---\n{completed.stdout[-6000:]}\n"
                f"--- stderr ---\n{completed.stderr[-3000:]}"
            )
        return completed

    def _config_flags(self) -> list[str]:
        return ["--config-file", str(self.config_file)]

    def preview(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``pulumi preview``."""
        return self.run("preview", *self._config_flags(), *flags, check=check)

    def up(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``pulumi up --yes``."""
        return self.run("up", "--yes", *self._config_flags(), *flags, check=check)

    def refresh(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``pulumi refresh --yes``."""
        return self.run("refresh", "--yes", *self._config_flags(), *flags, check=check)

    def destroy(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``pulumi destroy --yes``."""
        return self.run("destroy", "--yes", *self._config_flags(), *flags, check=check)

    def outputs(self, show_secrets: bool = False) -> dict[str, Any]:
        """Return the stack outputs as JSON."""
        flags = ["--json"] + (["--show-secrets"] if show_secrets else [])
        return json.loads(self.run("stack", "output", *flags).stdout)

    def export(self) -> dict[str, Any]:
        """Return the stack's checkpoint (``pulumi stack export``)."""
        return json.loads(self.run("stack", "export").stdout)

    def resources(self) -> list[dict[str, Any]]:
        """Return the resources in state, the stack itself excepted."""
        deployment = self.export().get("deployment", {})
        return [
            resource
            for resource in deployment.get("resources") or []
            if resource["type"] != "pulumi:pulumi:Stack"
            and not resource["type"].startswith("pulumi:providers:")
        ]

    def remove(self) -> None:
        """Remove the stack and its state, destroying nothing remote."""
        self.run("stack", "rm", "--yes", "--force", check=False)
