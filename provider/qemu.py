"""Boot and stop Debian VMs under QEMU with software emulation (TCG).

Each VM lives in a machine directory that the caller chooses::

    disk.qcow2    copy-on-write overlay of the cached base image
    qemu.pid      pid of the daemonized qemu-system-x86_64
    console.log   the guest's serial console
    qmp.sock      QMP socket, used for a clean ACPI power-down

QEMU's user-mode network forwards the guest's ports 22 and 2376 to a loopback
address of the caller's choice (see :mod:`provider.loopback`), so nothing of
the VM listens outside 127.0.0.0/8. Root's authorized key travels on the
kernel command line (``pdm.authorized_key``); only a public key may go there.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from provider.errors import DockerMachineError, InvalidInputError
from provider.vmimage import AUTHORIZED_KEY_PARAMETER, BaseImage

logger = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
DISK_NAME = "disk.qcow2"
PIDFILE_NAME = "qemu.pid"
CONSOLE_NAME = "console.log"
QMP_NAME = "qmp.sock"
_CREATED_NAMES = (DISK_NAME, PIDFILE_NAME, CONSOLE_NAME, QMP_NAME)
# x86 kernels truncate a longer command line (COMMAND_LINE_SIZE).
_MAX_KERNEL_COMMAND_LINE = 2047
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
# A unix socket path is at most 107 bytes long (sun_path), shorter than a
# machine directory's path may be. So both QEMU and the QMP client name the
# socket through an O_PATH descriptor of the machine directory, as
# /proc/self/fd/N/qmp.sock, which is short whatever the directory's path.
_DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY


class QemuError(DockerMachineError):
    """QEMU could not start or stop a VM."""


class VMBootError(QemuError):
    """A VM failed to start, or its SSH server sent no banner."""


class SSHWaitTimeoutError(VMBootError, TimeoutError):
    """The VM's SSH server sent no banner within the time or attempt limit."""


@dataclass(frozen=True)
class VMConfig:
    """Boot settings of a VM: image, forwarded ports and root's public key."""

    machine_dir: Path
    image: BaseImage
    address: str
    authorized_key: str
    memory_mb: int = 2048
    cpus: int = 2
    ssh_port: int = 22
    docker_port: int = 2376
    # Name shown by `ps` and in QEMU's messages. Empty means pdm-<machine dir name>.
    name: str = ""
    accelerator: str = "tcg"
    # Size of the overlay disk in bytes; None keeps the size of the base image.
    disk_size: int | None = None
    # A cloud-init NoCloud seed image attached as a second drive, for images
    # that boot with their own boot loader and take their key from cloud-init.
    seed_image: Path | None = None
    # Guest ports forwarded to the same port of ``address``. None forwards
    # ``docker_port`` of ``address`` to the guest's 2376.
    forward_ports: tuple[int, ...] | None = None


@dataclass(frozen=True)
class VM:
    """A running VM: its qemu process and where its ports are forwarded."""

    machine_dir: Path
    pid: int
    address: str
    ssh_port: int
    docker_port: int

    @property
    def console_log(self) -> Path:
        """Path of the guest's serial console log."""
        return self.machine_dir / CONSOLE_NAME


def kernel_command_line(authorized_key: str) -> str:
    """Return the kernel command line that installs ``authorized_key`` for root."""
    key = authorized_key.strip()
    if "\n" in key or not key.startswith(_KEY_TYPE_PREFIXES):
        raise InvalidInputError(
            "authorized_key",
            authorized_key[:40] + "...",
            "must be one OpenSSH public key line such as 'ssh-ed25519 AAAA...'",
        )
    encoded = base64.b64encode(key.encode()).decode()
    line = (
        "console=ttyS0 root=/dev/vda rw net.ifnames=0 "
        f"{AUTHORIZED_KEY_PARAMETER}={encoded}"
    )
    if len(line) > _MAX_KERNEL_COMMAND_LINE:
        raise InvalidInputError(
            "authorized_key",
            key[:40] + "...",
            f"too long for the kernel command line ({len(line)} of "
            f"{_MAX_KERNEL_COMMAND_LINE} bytes): use an ed25519 key",
        )
    return line


def qemu_command(config: VMConfig, qmp_socket: str | None = None) -> list[str]:
    """Return the qemu-system-x86_64 command line that boots ``config``.

    ``qmp_socket`` is the path QEMU binds its QMP socket to, by default
    ``qmp.sock`` in the machine directory.
    """
    machine_dir = config.machine_dir
    qmp_socket = qmp_socket or str(machine_dir / QMP_NAME)
    guest_ports = {config.docker_port: 2376}
    if config.forward_ports is not None:
        guest_ports = {port: port for port in config.forward_ports}
    forwards = ",".join(
        [f"hostfwd=tcp:{config.address}:{config.ssh_port}-:22"]
        + [
            f"hostfwd=tcp:{config.address}:{host_port}-:{guest_port}"
            for host_port, guest_port in guest_ports.items()
        ]
    )
    command = [
        QEMU_BINARY,
        "-name", config.name or f"pdm-{machine_dir.name}",
        "-accel", config.accelerator,
        "-m", str(config.memory_mb),
        "-smp", str(config.cpus),
        "-nodefaults",
        "-display", "none",
        "-serial", f"file:{machine_dir / CONSOLE_NAME}",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-drive", f"file={machine_dir / DISK_NAME},format=qcow2,if=virtio",
        "-netdev", f"user,id=net0,{forwards}",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-daemonize",
        "-pidfile", str(machine_dir / PIDFILE_NAME),
    ]  # fmt: skip
    if config.image.kernel is not None:
        command += [
            "-kernel", str(config.image.kernel),
            "-initrd", str(config.image.initrd),
            "-append", kernel_command_line(config.authorized_key),
        ]  # fmt: skip
    if config.seed_image is not None:
        command += ["-drive", f"file={config.seed_image},format=raw,if=virtio,readonly=on"]
    return command


def boot(
    config: VMConfig,
    *,
    ssh_timeout: float = 300.0,
    ssh_attempts: int = 100,
    progress: Callable[[str], None] | None = None,
) -> VM:
    """Start the VM and wait for its SSH banner, removing what it made on failure."""
    config = _validated(config)
    if is_running(config.machine_dir):
        raise VMBootError(
            f"a VM is already running in {config.machine_dir}: stop it first"
        )
    created_dir = not config.machine_dir.exists()
    created_disk = not (config.machine_dir / DISK_NAME).exists()
    started = time.monotonic()
    try:
        vm = start(config)
        wait_for_ssh(
            vm.address,
            vm.ssh_port,
            machine_dir=vm.machine_dir,
            timeout=ssh_timeout,
            attempts=ssh_attempts,
            progress=progress,
        )
    except BaseException as error:
        _undo_boot(config.machine_dir, created_dir, created_disk, error)
        raise
    logger.info(
        "VM %s sent its SSH banner %.0f s after boot",
        vm.machine_dir,
        time.monotonic() - started,
    )
    return vm


def start(config: VMConfig) -> VM:
    """Create the overlay if missing and start qemu daemonized, without waiting."""
    config = _validated(config)
    machine_dir = config.machine_dir
    if is_running(machine_dir):
        raise VMBootError(
            f"a VM is already running in {machine_dir} (pid {read_pid(machine_dir)}): "
            f"stop it first"
        )
    machine_dir.mkdir(parents=True, exist_ok=True)
    disk = machine_dir / DISK_NAME
    if not disk.exists():
        _create_overlay(config.image.path, disk, config.image.format, config.disk_size)

    logger.info("starting VM %s on %s", machine_dir, config.address)
    directory = os.open(machine_dir, _DIRECTORY_FLAGS)
    try:
        # QEMU inherits the descriptor and binds the socket through it.
        completed = subprocess.run(
            qemu_command(config, qmp_socket=f"/proc/self/fd/{directory}/{QMP_NAME}"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(directory,),
        )
    finally:
        os.close(directory)
    if completed.returncode != 0:
        raise VMBootError(
            f"{QEMU_BINARY} failed to start the VM in {machine_dir} with exit "
            f"status {completed.returncode}: {completed.stderr.strip()}"
        )
    pid = read_pid(machine_dir)
    if pid is None:
        raise VMBootError(
            f"{QEMU_BINARY} exited right after starting: {console_tail(machine_dir)}"
        )
    return VM(machine_dir, pid, config.address, config.ssh_port, config.docker_port)


def wait_for_ssh(
    address: str,
    port: int = 22,
    *,
    machine_dir: Path | None = None,
    timeout: float = 300.0,
    attempts: int = 100,
    interval: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Wait for an SSH server's banner on ``address:port`` and return the banner.

    QEMU accepts TCP on a forwarded port before the guest listens, so only a
    banner counts. If ``machine_dir`` is given, a qemu that exits ends the wait.
    """
    _require_loopback(address)
    if attempts < 1:
        raise InvalidInputError("attempts", attempts, "must be at least 1")
    deadline = time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        message = (
            f"waiting for SSH on {address}:{port} (attempt {attempt} of {attempts}, "
            f"{max(0.0, deadline - time.monotonic()):.0f} s left)"
        )
        logger.info("%s", message)
        if progress is not None and (attempt == 1 or attempt % 5 == 0):
            progress(message)
        banner = _read_ssh_banner(address, port, deadline)
        if banner:
            return banner
        if machine_dir is not None and not is_running(machine_dir):
            raise VMBootError(
                f"the VM in {machine_dir} exited before SSH responded on "
                f"{address}:{port}; last console lines:\n{console_tail(machine_dir)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    console = console_tail(machine_dir) if machine_dir else "(no console log)"
    raise SSHWaitTimeoutError(
        f"SSH on {address}:{port} sent no banner after {attempt} attempts in "
        f"{timeout:.0f} s. The guest may still be booting (raise the timeout) or "
        f"failed to boot. Last console lines:\n{console}"
    )


def _read_ssh_banner(address: str, port: int, deadline: float) -> str | None:
    budget = max(0.1, min(10.0, deadline - time.monotonic()))
    try:
        with socket.create_connection((address, port), timeout=budget) as connection:
            data = connection.recv(256)
    except OSError as error:
        logger.debug("no SSH banner on %s:%d yet: %s", address, port, error)
        return None
    if not data.startswith(b"SSH-2.0-"):
        return None
    return data.split(b"\r\n", 1)[0].decode("ascii", "replace")


def stop(machine_dir: Path, *, timeout: float = 60.0) -> None:
    """Power the VM off through QMP, and SIGKILL it if it is still up at the deadline.

    Stopping a VM that is not running does nothing.
    """
    machine_dir = Path(machine_dir).resolve()
    pid = read_pid(machine_dir)
    if pid is None:
        logger.info("VM %s is not running", machine_dir)
        _remove_runtime_files(machine_dir)
        return

    logger.info("powering off VM %s (pid %d)", machine_dir, pid)
    try:
        _qmp_execute(machine_dir / QMP_NAME, "system_powerdown")
    except (OSError, ValueError, QemuError) as error:
        logger.warning("QMP system_powerdown failed for %s: %s", machine_dir, error)
    else:
        if _wait_for_exit(pid, machine_dir, timeout):
            _remove_runtime_files(machine_dir)
            return
        logger.warning("VM %s still running after %.0f s", machine_dir, timeout)

    logger.warning("sending SIGKILL to qemu pid %d", pid)
    _kill(pid, machine_dir)
    _remove_runtime_files(machine_dir)


def remove(machine_dir: Path) -> None:
    """Stop the VM at once and delete the files QEMU and :func:`start` made."""
    machine_dir = Path(machine_dir).resolve()
    pid = read_pid(machine_dir)
    if pid is not None:
        _kill(pid, machine_dir)
    for name in _CREATED_NAMES:
        (machine_dir / name).unlink(missing_ok=True)


def read_pid(machine_dir: Path) -> int | None:
    """Return the pid of the qemu running this machine directory, else None."""
    machine_dir = Path(machine_dir).resolve()
    try:
        pid = int((machine_dir / PIDFILE_NAME).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_vm_process(pid, machine_dir) else None


def is_running(machine_dir: Path) -> bool:
    """Tell whether a qemu process for ``machine_dir`` is running."""
    return read_pid(machine_dir) is not None


def console_tail(machine_dir: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of the VM's serial console log."""
    try:
        text = (Path(machine_dir) / CONSOLE_NAME).read_text(errors="replace")
    except FileNotFoundError:
        return "(no console log)"
    # systemd draws its progress spinner with terminal escape sequences.
    text = _TERMINAL_ESCAPE.sub("", text).replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip() not in ("", "M")]
    return "\n".join(kept[-lines:])


def _validated(config: VMConfig) -> VMConfig:
    machine_dir = Path(config.machine_dir).resolve()
    _require_loopback(config.address)
    for field, value in (("machine_dir", str(machine_dir)), ("name", config.name)):
        if "," in value:
            raise InvalidInputError(field, value, "QEMU options cannot take a comma")
    if config.image.kernel is not None:
        kernel_command_line(config.authorized_key)
    return replace(config, machine_dir=machine_dir)


def _require_loopback(address: str) -> None:
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidInputError(
            "address", address, "VM ports are forwarded to loopback addresses only"
        )


def _create_overlay(
    base: Path, disk: Path, base_format: str = "raw", size: int | None = None
) -> None:
    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format]
    command += ["-b", str(base), str(disk)]
    if size is not None:
        command.append(str(size))
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise VMBootError(
            f"qemu-img failed to create the overlay {disk} of {base}: "
            f"{completed.stderr.strip()}"
        )


def _undo_boot(
    machine_dir: Path, created_dir: bool, created_disk: bool, error: BaseException
) -> None:
    """Kill the qemu of a failed boot and delete the files the boot created."""
    cleanup_errors = []
    pid = read_pid(machine_dir)
    if pid is not None:
        try:
            _kill(pid, machine_dir)
        except OSError as kill_error:
            cleanup_errors.append(f"killing qemu pid {pid}: {kill_error}")
    names = _CREATED_NAMES if created_disk else _CREATED_NAMES[1:]
    for name in names:
        try:
            (machine_dir / name).unlink(missing_ok=True)
        except OSError as unlink_error:
            cleanup_errors.append(f"removing {name}: {unlink_error}")
    if created_dir:
        try:
            machine_dir.rmdir()
        except OSError as rmdir_error:
            cleanup_errors.append(f"removing {machine_dir}: {rmdir_error}")
    for message in cleanup_errors:
        logger.error("cleanup after a failed boot of %s: %s", machine_dir, message)
        error.add_note(f"cleanup failed: {message}")


def _remove_runtime_files(machine_dir: Path) -> None:
    for name in (PIDFILE_NAME, QMP_NAME):
        (machine_dir / name).unlink(missing_ok=True)


def _kill(pid: int, machine_dir: Path) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_for_exit(pid, machine_dir, 10.0):
        raise QemuError(f"qemu pid {pid} of {machine_dir} survived SIGKILL")


def _wait_for_exit(pid: int, machine_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_vm_process(pid, machine_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _is_vm_process(pid: int, machine_dir: Path) -> bool:
    """Tell whether ``pid`` is a live qemu started with this machine directory.

    A zombie has an empty command line, so it does not count as running.
    """
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.fsencode(machine_dir / PIDFILE_NAME) in arguments


def _qmp_execute(socket_path: Path, command: str, timeout: float = 10.0) -> dict:
    """Run one QMP command and return its ``return`` value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        _connect_unix(connection, socket_path)
        stream = connection.makefile("rwb")
        _qmp_read_reply(stream, "QMP")  # greeting
        for request in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": request}).encode() + b"\r\n")
            stream.flush()
            reply = _qmp_read_reply(stream, "return", "error")
            if "error" in reply:
                raise QemuError(f"QMP {request} failed: {reply['error']}")
        return reply["return"]


def _connect_unix(connection: socket.socket, socket_path: Path) -> None:
    """Connect to ``socket_path`` through its directory's descriptor."""
    directory = os.open(socket_path.parent, _DIRECTORY_FLAGS)
    try:
        connection.connect(f"/proc/self/fd/{directory}/{socket_path.name}")
    finally:
        os.close(directory)


def _qmp_read_reply(stream, *keys: str) -> dict:
    # QMP may send events between replies, so skip up to 100 messages. The
    # socket timeout bounds the wait for each one.
    for _ in range(100):
        line = stream.readline()
        if not line:
            raise QemuError("QMP socket closed before a reply")
        message = json.loads(line)
        if any(key in message for key in keys):
            return message
    raise QemuError(f"no QMP reply with {keys} in 100 messages")
