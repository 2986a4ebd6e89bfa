"""Installing and upgrading Docker through the real ``pulumi`` CLI, on a fresh VM.

The VM boots from the image without Docker, and the tests run in file order
on one stack. First they install the docker.io package at a pinned version
while another process holds the dpkg lock. Then they upgrade in place to the
next Debian release's docker.io with an install script that this test serves
on 127.0.0.1, which the guest reaches through QEMU's gateway 10.0.2.2. The
script's first download fails with HTTP 503, so the retry runs for real.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
import time

import pytest

from provider import install_scripts, vmimage
from tests.harness.pulumi_cli import machine_config
from tests.harness.vm import TestVM

# A fresh VM and real apt installs under emulation: about 7 minutes on an
# idle 2-core machine, 25 when other VMs share it.
pytestmark = pytest.mark.vm

NAME = "install"
MIRROR = os.environ.get("PDM_DEBIAN_MIRROR") or vmimage.DEFAULT_MIRROR
# Debian 13's docker.io: the only newer Docker build the guest can reach.
TRIXIE_SOURCE = f"deb {MIRROR} trixie main"
TRIXIE_VERSION = "26.1.5+dfsg1-9+deb13u1+b1"
LOCK = install_scripts.PACKAGE_LOCKS[0]
LOCK_SECONDS = 45
# An install under software emulation can outlast the harness's default of
# 600 s for one pulumi command: with 2 cores shared by 8 VMs,
# the docker.io package install alone took more than 25 minutes.
UP_TIMEOUT_SECONDS = 3600

# A real install of the requested version, in the shape of Docker's
# convenience script: it reads the version from VERSION.
SERVED_SCRIPT = b"""\
#!/bin/sh
set -eu
: "${VERSION:?set VERSION to the docker.io version to install}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends --allow-downgrades "docker.io=$VERSION"
"""

# Holds dpkg's frontend lock for LOCK_SECONDS the way dpkg takes it: an fcntl
# write lock, with the struct flock layout of x86-64 Linux.
HOLD_LOCK = (
    f"systemd-run --unit pdm-lock-holder --collect perl -MFcntl -e "
    f"'open(my $f, \"+<\", \"{LOCK}\") or die \"open: $!\"; "
    f"fcntl($f, F_SETLK, pack(\"s s x4 q q i x4\", F_WRLCK, SEEK_SET, 0, 0, 0)) "
    f"or die \"lock: $!\"; sleep {LOCK_SECONDS}'"
)


class ScriptServer(http.server.ThreadingHTTPServer):
    """HTTP server of SERVED_SCRIPT on 127.0.0.1, failing the first request with 503."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptHandler)
        self.requests: list[int] = []


class ScriptHandler(http.server.BaseHTTPRequestHandler):
    server: ScriptServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = 503 if not self.server.requests else 200
        self.server.requests.append(status)
        body = SERVED_SCRIPT if status == 200 else b"try again\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def fresh_vm():
    """A VM booted from the image without Docker."""
    # Boots take longer than the harness default allows when other VMs
    # share the machine's cores.
    with TestVM(cpus=1, with_docker=False, ssh_timeout=900.0) as vm:
        yield vm


@pytest.fixture(scope="module")
def script_server():
    """The install script server, reachable from the guest at 10.0.2.2."""
    server = ScriptServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(fresh_vm, stack_factory):
    stack = stack_factory()
    yield stack
    if stack.resources():
        stack.destroy(check=False)


@pytest.fixture(scope="module")
def bookworm_version(fresh_vm):
    """The docker.io version in the image's own package lists (Debian 12)."""
    status, stdout, stderr = fresh_vm.run(
        "LC_ALL=C apt-cache policy docker.io | sed -n 's/^ *Candidate: *//p'"
    )
    assert status == 0, stderr
    version = stdout.strip()
    assert version.startswith("20.10."), stdout
    return version


def run_in_vm(vm, command, timeout=120.0):
    status, stdout, stderr = vm.run(command, timeout=timeout)
    assert status == 0, f"{command}: {stderr}"
    return stdout


def up(stack, check=True):
    """Run ``pulumi up`` with the time limit of an install."""
    return stack.run(
        "up",
        "--yes",
        "--config-file",
        str(stack.config_file),
        check=check,
        timeout=UP_TIMEOUT_SECONDS,
    )


def docker_env(outputs):
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "DOCKER_HOST": outputs["DOCKER_HOST"],
        "DOCKER_TLS_VERIFY": outputs["DOCKER_TLS_VERIFY"],
        "DOCKER_CERT_PATH": outputs["DOCKER_CERT_PATH"],
    }


def server_version(outputs):
    """Return the version the daemon reports to the docker client over TLS."""
    result = subprocess.run(
        ["docker", "version", "--format", "{{json .Server.Version}}"],
        env=docker_env(outputs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tar_member(archive: bytes, name: str) -> bytes:
    """Return the content of the file ``name`` in a tar archive."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{name} is not a regular file in the archive"
        return member.read()


def hold_dpkg_lock(vm):
    """Start a process in the VM that holds dpkg's lock, and check that dpkg is blocked."""
    run_in_vm(vm, HOLD_LOCK)
    time.sleep(2)
    status, _, stderr = vm.run("LC_ALL=C dpkg --configure -a")
    assert status != 0, "dpkg ran although the lock holder should block it"
    assert "lock" in stderr


def installed_package(vm):
    return run_in_vm(vm, "dpkg-query -W -f '${Version}' docker.io").strip()


def test_package_install_waits_for_lock(fresh_vm, stack, bookworm_version):
    assert "not-installed" in run_in_vm(fresh_vm, "command -v dockerd || echo not-installed")
    install = {"method": "package", "version": bookworm_version}
    stack.write_config([machine_config(fresh_vm, NAME, install=install)])
    hold_dpkg_lock(fresh_vm)

    result = up(stack)

    assert f"waiting for {LOCK} held by pid" in result.stdout
    assert "(perl)" in result.stdout
    assert "installing the docker.io package (attempt 1 of" in result.stdout
    holder = fresh_vm.run("systemctl is-active pdm-lock-holder")[1].strip()
    assert holder != "active", "up finished while the lock was still held"


def test_pinned_package_version_installed(fresh_vm, stack, bookworm_version):
    outputs = stack.outputs()["machines"][NAME]
    assert installed_package(fresh_vm) == bookworm_version
    assert outputs["dockerVersion"] == bookworm_version.split("-")[0]
    assert server_version(outputs) == outputs["dockerVersion"]


def test_noop_up_installs_nothing(fresh_vm, stack):
    result = up(stack)
    assert "installing" not in result.stdout
    assert "4 unchanged" in result.stdout


def test_script_upgrade_keeps_container(fresh_vm, stack, script_server, bookworm_version):
    run_in_vm(
        fresh_vm,
        "set -e; tar -C /etc -c hostname | docker import - pdm-keep:1; "
        "docker create --name pdm-keep pdm-keep:1 /keep; "
        "mkdir -p /tmp/keep; echo kept-data > /tmp/keep/data.txt; "
        "tar -C /tmp/keep -c data.txt | docker cp - pdm-keep:/",
    )
    url = f"http://10.0.2.2:{script_server.server_address[1]}/install.sh"
    install = {
        "method": "script",
        "scriptUrl": url,
        "scriptSha256": hashlib.sha256(SERVED_SCRIPT).hexdigest(),
        "version": TRIXIE_VERSION,
        "packageSource": TRIXIE_SOURCE,
    }
    stack.write_config([machine_config(fresh_vm, NAME, install=install)])

    result = up(stack)

    assert script_server.requests == [503, 200]
    assert "download failed, retrying in" in result.stdout
    old_daemon = bookworm_version.split("-")[0]
    assert f"the running daemon is {old_daemon}, the installed one 26.1.5" in result.stdout
    outputs = stack.outputs()["machines"][NAME]
    assert installed_package(fresh_vm) == TRIXIE_VERSION
    assert outputs["dockerVersion"] == "26.1.5+dfsg1"
    assert server_version(outputs) == "26.1.5+dfsg1"
    # The served script installs docker.io alone, and Debian 13's docker.io
    # has no client, so the container is read over mutual TLS from here.
    copy = subprocess.run(
        ["docker", "cp", "pdm-keep:/data.txt", "-"],
        env=docker_env(outputs),
        capture_output=True,
        timeout=120,
    )
    assert copy.returncode == 0, copy.stderr
    assert tar_member(copy.stdout, "data.txt") == b"kept-data\n"


def test_wait_deadline_names_lock(fresh_vm, stack, bookworm_version):
    install = {"method": "package", "version": bookworm_version, "waitTimeout": 8}
    stack.write_config([machine_config(fresh_vm, NAME, install=install)])
    hold_dpkg_lock(fresh_vm)
    try:
        result = up(stack, check=False)
    finally:
        fresh_vm.run("systemctl stop pdm-lock-holder")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "still busy after 8 s" in output, output
    assert f"{LOCK} held by pid" in output, output
    assert "install.waitTimeout" in output, output
    assert installed_package(fresh_vm) == TRIXIE_VERSION
