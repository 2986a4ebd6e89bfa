"""Fault injection on test VMs, and a record of what a failed pulumi run left.

A fault test breaks something on a test VM (a host file, a service, the VM
itself), runs a ``pulumi`` command through :class:`PulumiStack`, and keeps a
:class:`FaultRun`: the command's output and duration, the resources in state,
the stack export, and the configuration files and staging directories on the
host afterwards. Tests then assert on the record, one condition at a time.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provider import daemon_config, qemu, remote_scripts
from tests.harness.pulumi_cli import PulumiStack, machine_config
from tests.harness.vm import TestVM

MACHINE_NAME = "faults"

# What a configure step places on the host, none of which may stay after a
# failed first configure. Each staging directory is made by `mktemp -d`.
PLACED_PATHS = (
    daemon_config.CA_CERT_PATH,
    daemon_config.SERVER_CERT_PATH,
    daemon_config.SERVER_KEY_PATH,
    daemon_config.DROPIN_PATH,
    remote_scripts.STATE_DIR,
)
STAGING_GLOB = "/tmp/tmp.*"

_SNAPSHOT_SCRIPT = f"""\
for path in {' '.join(PLACED_PATHS)}; do
    if [ -e "$path" ]; then echo "placed=$path"; fi
done
for path in {STAGING_GLOB}; do
    if [ -e "$path" ]; then echo "staging=$path"; fi
done
if [ -e {daemon_config.DAEMON_JSON_PATH} ]; then
    echo "daemon_json=$(sha256sum < {daemon_config.DAEMON_JSON_PATH} | cut -d' ' -f1)\
 $(stat -c '%a %U:%G' {daemon_config.DAEMON_JSON_PATH})"
else
    echo "daemon_json=missing"
fi
echo "docker=$(systemctl is-active docker.service)"
"""

# Put the image's Docker set-up back: no daemon.json, no TLS files, no
# staging directories, Docker active. Restarts Docker only when it removed a
# file that dockerd reads, or when Docker is not running.
_RESET_SCRIPT = f"""\
changed=no
for path in {' '.join(PLACED_PATHS)} {daemon_config.DAEMON_JSON_PATH}; do
    if [ -e "$path" ]; then rm -rf "$path"; changed=yes; fi
done
rm -rf {STAGING_GLOB}
if [ "$changed" = yes ]; then systemctl daemon-reload; fi
if [ "$changed" = yes ] || ! systemctl is-active --quiet docker.service; then
    systemctl reset-failed docker.service docker.socket 2>/dev/null || true
    systemctl restart docker.service
fi
systemctl is-active docker.service
"""


@dataclasses.dataclass(frozen=True)
class HostSnapshot:
    """The Docker configuration files and staging directories on a host."""

    placed: list[str]
    staging: list[str]
    daemon_json: str  # "SHA256 MODE OWNER:GROUP", or "missing"
    docker_active: str

    @property
    def leftovers(self) -> list[str]:
        """Paths that a failed first configure must not leave behind."""
        return self.placed + self.staging


@dataclasses.dataclass(frozen=True)
class FaultRun:
    """What one pulumi command printed and left in state and on the host."""

    result: subprocess.CompletedProcess
    seconds: float
    resource_types: list[str]
    export_text: str
    host: HostSnapshot | None  # None when the host could not be read
    address: str
    ssh_port: int
    private_keys: list[str] = dataclasses.field(repr=False)
    facts: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def output(self) -> str:
        """The command's stdout and stderr together."""
        return self.result.stdout + self.result.stderr


def machine_entry(vm: TestVM, **settings: object) -> dict[str, object]:
    """Return a stack configuration entry for a machine on ``vm``."""
    return machine_config(vm, MACHINE_NAME, **settings)


def write_unknown_key(directory: Path) -> Path:
    """Write a new ed25519 private key that no test VM authorizes.

    Returns the path of the key file (mode 0600).
    """
    key = Ed25519PrivateKey.generate()
    path = directory / "id_ed25519_unknown"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def new_public_key_line() -> str:
    """Return the OpenSSH public key line of a new ed25519 key."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def openssh_fingerprint(public_key_line: str) -> str:
    """Return ``SHA256:...`` as ``ssh-keygen -l`` prints it for a public key line."""
    blob = base64.b64decode(public_key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def snapshot_host(vm: TestVM) -> HostSnapshot:
    """Read the Docker configuration files and staging directories on ``vm``."""
    status, stdout, stderr = vm.run(_SNAPSHOT_SCRIPT)
    if status != 0:
        raise RuntimeError(f"reading the host state failed ({status}): {stderr}")
    values: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return HostSnapshot(
        placed=values.get("placed", []),
        staging=values.get("staging", []),
        daemon_json=values["daemon_json"][0],
        docker_active=values["docker"][0],
    )


def reset_host(vm: TestVM) -> None:
    """Put Docker on ``vm`` back to the image's set-up, and raise unless it runs."""
    status, stdout, stderr = vm.run(_RESET_SCRIPT, timeout=180.0)
    if status != 0 or stdout.strip().splitlines()[-1:] != ["active"]:
        raise RuntimeError(f"resetting Docker on {vm.address} failed: {stderr}")


def run_as_root(vm: TestVM, command: str, *, timeout: float = 120.0) -> str:
    """Run ``command`` on ``vm`` as root and return its stdout.

    Raises ``RuntimeError`` when the command exits with a non-zero status.
    """
    status, stdout, stderr = vm.run(command, timeout=timeout)
    if status != 0:
        raise RuntimeError(f"{command!r} on {vm.address} exited {status}: {stderr}")
    return stdout


def short_types(stack: PulumiStack) -> list[str]:
    """Return the short type names (``Host``, ...) of the resources in state."""
    return [resource["type"].rsplit(":", 1)[-1] for resource in stack.resources()]


def resource_outputs(stack: PulumiStack, short_type: str) -> dict:
    """Return the outputs of the one resource of ``short_type`` in state."""
    (resource,) = [
        resource
        for resource in stack.resources()
        if resource["type"].rsplit(":", 1)[-1] == short_type
    ]
    return resource["outputs"]


def run_and_record(
    stack: PulumiStack,
    vm: TestVM,
    operation: Callable[[], subprocess.CompletedProcess],
    private_keys: list[str],
    *,
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    read_host: bool = True,
    **facts: object,
) -> FaultRun:
    """Run ``operation`` (a stack command) inside ``around``, then record.

    The state and the host are read after ``around`` has exited, so a fault
    that makes the host unreachable can be lifted there first. With
    ``read_host`` false (a VM that is off), the host is not read.
    """
    with around():
        started = time.monotonic()
        result = operation()
        seconds = time.monotonic() - started
    export_text = stack.run("stack", "export").stdout
    return FaultRun(
        result=result,
        seconds=seconds,
        resource_types=short_types(stack),
        export_text=export_text,
        host=snapshot_host(vm) if read_host else None,
        address=vm.address,
        ssh_port=vm.ssh_port,
        private_keys=private_keys,
        facts=dict(facts),
    )


def leaked_key_lines(text: str, private_key: str) -> list[str]:
    """Return the lines of ``private_key``'s body that occur in ``text``."""
    body = [
        line.strip()
        for line in private_key.splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    return [line for line in body if line in text]


def resource_error_seconds(output: str, resource_name: str, verb: str) -> int | None:
    """Return the seconds the engine showed when ``resource_name`` failed.

    The engine prints, for example, ``faults-host creating (65s) error: ...``;
    ``verb`` is ``creating``, ``updating``, ``deleting`` or ``refreshing``.
    """
    pattern = rf"{re.escape(resource_name)} {verb} \((\d+)s\) error"
    match = re.search(pattern, output)
    return int(match.group(1)) if match else None


def _qmp_command(vm: TestVM, command: str, timeout: float = 10.0) -> None:
    """Send one QMP command to ``vm``'s QEMU and wait for its reply."""
    path = vm.machine_dir / qemu.QMP_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        stream = connection.makefile("rwb")
        stream.readline()  # the greeting
        for name in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": name}).encode() + b"\n")
            stream.flush()
            # Events may arrive before the reply; read a bounded number.
            for _ in range(50):
                reply = json.loads(stream.readline() or b"{}")
                if "return" in reply or "error" in reply:
                    break
            if "return" not in reply:
                raise RuntimeError(f"QMP {name} on {path} failed: {reply}")


@contextlib.contextmanager
def paused(vm: TestVM) -> Iterator[None]:
    """Freeze ``vm``'s CPUs for the block, so that SSH sends no banner.

    QEMU's user-mode network still accepts connections on the forwarded ports
    while the guest is frozen, so a client sees a host that accepts TCP and
    then sends nothing, as behind a firewall that drops packets.
    """
    _qmp_command(vm, "stop")
    try:
        yield
    finally:
        _qmp_command(vm, "cont")


@contextlib.contextmanager
def guest_clock_behind(vm: TestVM, seconds: int) -> Iterator[None]:
    """Set ``vm``'s clock ``seconds`` behind this machine's for the block."""
    run_as_root(vm, f"date -s @{int(time.time()) - seconds} >/dev/null")
    try:
        yield
    finally:
        run_as_root(vm, f"date -s @{int(time.time())} >/dev/null")


def socket_labels(vm: TestVM) -> tuple[int, str]:
    """Return the exit status and the labels of ``docker info`` on the Unix socket.

    The docker client inside the VM connects to ``/var/run/docker.sock``, so
    this also checks the socket that ``docker.socket`` passes to dockerd.
    """
    status, stdout, _ = vm.run("docker info --format '{{json .Labels}}'", timeout=60.0)
    return status, stdout.strip()


@contextlib.contextmanager
def port_held(vm: TestVM, port: int) -> Iterator[None]:
    """Keep ``port`` busy on all of ``vm``'s addresses with a second sshd."""
    unit = f"pdm-faults-port-{port}"
    run_as_root(
        vm,
        f"systemd-run --unit={unit} /usr/sbin/sshd -D -p {port}\n"
        f"for attempt in $(seq 1 40); do\n"
        f"    ss -ltnH 'sport = :{port}' | grep -q . && exit 0\n"
        f"    sleep 0.5\n"
        f"done\n"
        f"echo 'sshd did not listen on port {port} within 20 s' >&2\n"
        f"exit 1\n",
    )
    try:
        yield
    finally:
        run_as_root(vm, f"systemctl stop {unit}")


def power_off(vm: TestVM) -> None:
    """Power ``vm`` off, so that its forwarded ports refuse connections."""
    qemu.stop(vm.machine_dir)
