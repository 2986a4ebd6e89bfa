"""The client certificate directory that ``DOCKER_CERT_PATH`` points at.

One directory per machine on each workstation, holding ``ca.pem``,
``cert.pem`` and ``key.pem`` (the names the docker client looks for). The key
is written 0600 through a temporary file and a rename, so no reader ever sees
a partial or world-readable key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

HOME_ENV = "PULUMI_DOCKER_MACHINE_HOME"


def machines_home() -> Path:
    """Return the root of the per-machine directories on this workstation."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".pulumi-docker-machine"


def cert_path(project: str, stack: str, machine: str) -> Path:
    """Return the certificate directory of one machine of one stack."""
    return machines_home() / "machines" / project / stack / machine


def _write_atomically(path: Path, text: str, mode: int) -> None:
    # mkstemp creates the file 0600, so the key is never readable by others.
    # Windows Python has os.fchmod only from 3.13, so the mode is set by path.
    # On Windows os.chmod sets only the read-only flag.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_cert_dir(
    directory: Path, ca_cert_pem: str, client_cert_pem: str, client_key_pem: str
) -> Path:
    """Write ca.pem, cert.pem and key.pem (0600) into ``directory`` (0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    _write_atomically(directory / "ca.pem", ca_cert_pem, 0o644)
    _write_atomically(directory / "cert.pem", client_cert_pem, 0o644)
    _write_atomically(directory / "key.pem", client_key_pem, 0o600)
    return directory


def remove_cert_dir(directory: str | Path | None) -> None:
    """Remove a directory written by :func:`write_cert_dir`, if present."""
    if not directory:
        return
    path = Path(directory)
    if (path / "key.pem").exists() or (path / "ca.pem").exists():
        shutil.rmtree(path, ignore_errors=True)
    # Remove the stack and project directories too once they are empty.
    home = machines_home().resolve()
    for parent in list(path.resolve().parents)[:2]:
        if home not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
