"""The apply and restore scripts' file handling, run for real in a private mount namespace.

Each case runs the shell script as root inside ``unshare --mount``, with
temporary directories bound over /etc/docker, /etc/systemd/system and
/var/lib, so the host's own files are never touched. ``systemctl``,
``journalctl`` and ``ss`` are stand-ins on PATH: ``systemctl restart``
fails while daemon.json names the storage driver ``btrfs``, the way dockerd
does on an ext4 root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provider import remote_scripts

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare for a private mount namespace",
)

FAKE_SYSTEMCTL = """\
#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
case "$1" in
restart)
    if grep -q '"btrfs"' /etc/docker/daemon.json 2>/dev/null; then
        echo failed > "$FAKE_STATE"; exit 1
    fi
    echo active > "$FAKE_STATE"; exit 0 ;;
is-active)
    state=$(cat "$FAKE_STATE" 2>/dev/null || echo inactive)
    [ "$2" = --quiet ] || echo "$state"
    [ "$state" = active ] ;;
*) exit 0 ;;
esac
"""
FAKE_JOURNALCTL = """\
#!/bin/sh
case "$*" in *--sync*) exit 0 ;; esac
echo 'failed to start daemon: error initializing graphdriver: prerequisites for driver not satisfied (wrong filesystem?)'
"""
FAKE_SS = "#!/bin/sh\necho 'LISTEN 0 4096 *:2376 *:*'\n"

NAMESPACE_SETUP = """\
set -e
mount --bind "$ROOT/etc-docker" /etc/docker
mount --bind "$ROOT/systemd" /etc/systemd/system
mount --bind "$ROOT/var-lib" /var/lib
exec sh -s -- "$@"
"""


def staged_files(storage_driver: str, key: str) -> dict[str, str]:
    """Return the files the apply script places, for one storage driver."""
    return {
        "ca.pem": "ca\n",
        "server.pem": f"server for {storage_driver}\n",
        "server-key.pem": key,
        "daemon.json": f'{{"storage-driver": "{storage_driver}"}}\n',
        "dropin.conf": "[Service]\n",
    }


@pytest.fixture
def sandbox(tmp_path):
    """Return a runner of scripts inside a private mount namespace."""
    for name in ("etc-docker", "systemd", "var-lib", "bin"):
        (tmp_path / name).mkdir()
    for name, text in (
        ("systemctl", FAKE_SYSTEMCTL),
        ("journalctl", FAKE_JOURNALCTL),
        ("ss", FAKE_SS),
    ):
        path = tmp_path / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    if not Path("/etc/docker").is_dir():
        pytest.skip("/etc/docker is missing, so there is no mount point")
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin",
        "ROOT": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STATE": str(tmp_path / "state"),
    }

    def run(script: str, *args: str) -> dict[str, str]:
        completed = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SETUP, "sh", *args],
            input=script,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        return remote_scripts.parse_emitted(completed.stdout)

    def apply(files: dict[str, str]) -> dict[str, str]:
        content = {name: text.encode() for name, text in files.items()}
        return run(remote_scripts.apply_script(content), "2376")

    run.apply = apply
    run.root = tmp_path
    return run


def test_apply_places_files_and_observes(sandbox):
    emitted = sandbox.apply(staged_files("overlay2", "key one\n"))
    assert "restart_failed" not in emitted
    assert emitted["daemon_json"] == '{"storage-driver": "overlay2"}\n'
    assert emitted["listener"] == "yes"
    assert emitted["docker_active"] == "active"
    key = sandbox.root / "etc-docker" / "server-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o400"


def test_failed_restart_restores_previous_files(sandbox):
    sandbox.apply(staged_files("overlay2", "key one\n"))
    emitted = sandbox.apply(staged_files("btrfs", "key two\n"))

    assert emitted["restart_failed"] == "yes"
    assert emitted["rollback"] == "restored"
    assert "graphdriver" in emitted["journal"]
    assert "graphdriver" in emitted["daemon_log"]
    assert emitted["previous_daemon_json"] == '{"storage-driver": "overlay2"}\n'
    etc_docker = sandbox.root / "etc-docker"
    assert (etc_docker / "daemon.json").read_text() == '{"storage-driver": "overlay2"}\n'
    assert (etc_docker / "server.pem").read_text() == "server for overlay2\n"
    assert (etc_docker / "server-key.pem").read_text() == "key one\n"
    assert oct((etc_docker / "server-key.pem").stat().st_mode & 0o777) == "0o400"
    assert not (sandbox.root / "var-lib" / "pulumi-docker-machine" / "previous").exists()


def test_failed_restart_resets_start_limit(sandbox):
    sandbox.apply(staged_files("overlay2", "key one\n"))
    sandbox.apply(staged_files("btrfs", "key two\n"))
    calls = (sandbox.root / "calls.log").read_text().splitlines()
    reset = calls.index("systemctl reset-failed docker.service docker.socket")
    assert calls[reset + 1] == "systemctl restart docker.service"


def test_failed_first_apply_removes_new_files(sandbox):
    emitted = sandbox.apply(staged_files("btrfs", "key two\n"))
    assert emitted["restart_failed"] == "yes"
    assert "previous_daemon_json" not in emitted
    assert list((sandbox.root / "etc-docker").iterdir()) == []


def test_restore_script_after_tls_failure(sandbox):
    sandbox.apply(staged_files("overlay2", "key one\n"))
    sandbox.apply(staged_files("vfs", "key two\n"))
    emitted = sandbox(remote_scripts.RESTORE_SCRIPT)
    assert emitted["rollback"] == "restored"
    daemon_json = sandbox.root / "etc-docker" / "daemon.json"
    assert daemon_json.read_text() == '{"storage-driver": "overlay2"}\n'
