"""The loopback allocator, the QEMU boot module and the test VM harness.

Tests marked ``vm`` boot real Debian VMs under QEMU with software emulation,
one to two minutes each on 2 cores. The others need neither QEMU nor an image.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncssh
import pytest

from provider import loopback, qemu, vmimage
from provider.errors import InvalidInputError
from tests.harness.netguard import UnsafeAddressError, check_dialable
from tests.harness.vm import TestVM

# Unprivileged ports, so the allocator tests also run without root.
PORTS = (40022, 42376)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC5f3ZbyN0qB1LhDTkG6b2pT5bS test"


def _allocate_persistent(cache_dir: str) -> str:
    return loopback.allocate(
        PORTS, "pool", persistent=True, cache_dir=Path(cache_dir)
    ).address


def _take_and_exit(cache_dir: str) -> str:
    return loopback.take("127.100.0.3", PORTS, "lapsing", cache_dir=Path(cache_dir)).address


def _take_persistent(cache_dir: str) -> str:
    return loopback.take(
        "127.100.0.3", PORTS, "pool", persistent=True, cache_dir=Path(cache_dir)
    ).address


def qemu_processes_of(machine_dir: Path) -> list[int]:
    """Return the pids of live processes whose command line names ``machine_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            arguments = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(machine_dir).encode() in arguments:
            pids.append(int(proc.name))
    return pids


def test_allocate_hands_out_distinct_addresses(tmp_path):
    first = loopback.allocate(PORTS, "first", cache_dir=tmp_path)
    second = loopback.allocate(PORTS, "second", cache_dir=tmp_path)

    assert first.address != second.address
    assert first.address == "127.100.1.1"
    assert loopback.find_busy_ports(second.address, PORTS) == []


def test_allocate_distinct_across_processes(tmp_path):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        addresses = pool.map(_allocate_persistent, [str(tmp_path)] * 12)

    assert len(set(addresses)) == 12
    assert all(address.startswith("127.100.") for address in addresses)


def test_take_rejects_leased_address(tmp_path):
    lease = loopback.take("127.100.0.3", PORTS, "holder", cache_dir=tmp_path)

    with pytest.raises(loopback.AddressTakenError, match="already leased to holder"):
        loopback.take(lease.address, PORTS, cache_dir=tmp_path)


def test_take_rejects_address_with_busy_port(tmp_path):
    with socket.create_server(("127.100.0.9", PORTS[1])):
        with pytest.raises(loopback.AddressTakenError, match=r"port\(s\) \[42376\]"):
            loopback.take("127.100.0.9", PORTS, cache_dir=tmp_path)


def test_allocate_skips_address_with_busy_port(tmp_path):
    with socket.create_server(("127.100.1.1", PORTS[0])):
        lease = loopback.allocate(PORTS, cache_dir=tmp_path)

    assert lease.address == "127.100.1.2"


def test_take_after_release(tmp_path):
    loopback.take("127.100.0.2", PORTS, "demo", cache_dir=tmp_path)
    loopback.release("127.100.0.2", cache_dir=tmp_path)

    lease = loopback.take("127.100.0.2", PORTS, "demo again", cache_dir=tmp_path)

    assert lease.holder == "demo again"


def test_lease_lapses_when_holder_exits(tmp_path):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        address = pool.apply(_take_and_exit, (str(tmp_path),))
    # The pool's worker has exited, so its lease no longer counts.
    lease = loopback.take(address, PORTS, "successor", cache_dir=tmp_path)

    assert lease.address == address


def test_persistent_lease_survives_holder(tmp_path):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        address = pool.apply(_take_persistent, (str(tmp_path),))

    with pytest.raises(loopback.AddressTakenError):
        loopback.take(address, PORTS, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.0.0.5", "127.1.2.3", "127.100.1.5", "127.100.0.1",
        "127.100.0.255", "10.0.0.1", "54.1.2.3", "::1", "localhost",
    ],
    ids=[
        "localhost-ip", "localhost-block", "other-loopback", "automatic-range",
        "manual-block-first", "manual-block-broadcast", "private", "public", "ipv6",
        "name",
    ],
)  # fmt: skip
def test_take_rejects_address_outside_manual_range(tmp_path, address):
    with pytest.raises(InvalidInputError, match="127.100.0.2 to 127.100.0.254"):
        loopback.take(address, PORTS, cache_dir=tmp_path)


@pytest.mark.parametrize("address", ["54.1.2.3", "10.0.2.15", "172.31.0.5"])
def test_netguard_rejects_non_loopback(address):
    with pytest.raises(UnsafeAddressError):
        check_dialable(address)


def test_wait_for_ssh_rejects_public_address():
    with pytest.raises(InvalidInputError, match="loopback addresses only"):
        qemu.wait_for_ssh("54.1.2.3", 22, timeout=1, attempts=1)


@pytest.fixture
def test_address():
    """A loopback address leased for the test, so that no other test binds it."""
    lease = loopback.allocate(PORTS, "wait_for_ssh test")
    yield lease.address
    loopback.release(lease.address)


def test_wait_for_ssh_needs_banner_not_just_tcp(test_address):
    """A listener that accepts and closes, as QEMU's forwarding does early on."""
    server = socket.create_server((test_address, 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept_and_close():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=accept_and_close)
    thread.start()
    try:
        with pytest.raises(
            qemu.SSHWaitTimeoutError, match="no banner after 3 attempts"
        ):
            qemu.wait_for_ssh(test_address, port, timeout=5, attempts=3, interval=0.1)
    finally:
        stop.set()
        thread.join()
        server.close()


def test_wait_for_ssh_returns_banner(test_address):
    server = socket.create_server((test_address, 0))
    port = server.getsockname()[1]

    def send_banner():
        connection, _ = server.accept()
        connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        connection.close()

    thread = threading.Thread(target=send_banner)
    thread.start()
    try:
        banner = qemu.wait_for_ssh(test_address, port, timeout=10, attempts=2)
    finally:
        thread.join()
        server.close()

    assert banner == "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"


@pytest.fixture
def stand_in_qemu(tmp_path):
    """A sleeping process that counts as the qemu of ``tmp_path``.

    :func:`qemu.is_running` looks for the pid file's path in the command line
    of the process that the pid file names.
    """
    pidfile = tmp_path / qemu.PIDFILE_NAME
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(pidfile)]
    )
    pidfile.write_text(f"{process.pid}\n")
    # Right after exec, /proc shows an empty command line for a moment.
    deadline = time.monotonic() + 10
    while not qemu.is_running(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu.is_running(tmp_path)
    yield process
    process.kill()
    process.wait(timeout=10)


def write_console_log(machine_dir: Path) -> list[str]:
    """Write a console log of 41 lines and return the 30 its tail must show."""
    boot_lines = [f"[   {n}.000000] boot step {n}" for n in range(40)]
    # systemd colours its status lines with terminal escape sequences.
    text = "\n".join(boot_lines) + "\n\x1b[0;1;31mFAILED\x1b[0m to start sshd\r\n"
    (machine_dir / qemu.CONSOLE_NAME).write_text(text)
    return boot_lines[-29:] + ["FAILED to start sshd"]


def test_wait_for_ssh_timeout_shows_console_tail(test_address, tmp_path, stand_in_qemu):
    expected_tail = write_console_log(tmp_path)
    # A bound socket that does not listen: every connection is refused.
    with socket.socket() as closed_port:
        closed_port.bind((test_address, 0))
        port = closed_port.getsockname()[1]
        with pytest.raises(qemu.SSHWaitTimeoutError) as raised:
            qemu.wait_for_ssh(
                test_address, port, machine_dir=tmp_path, timeout=1, attempts=3, interval=0.2
            )

    message = str(raised.value)
    assert "sent no banner after" in message
    assert message.split("Last console lines:\n", 1)[1].splitlines() == expected_tail


def test_wait_for_ssh_exited_vm_shows_console_tail(test_address, tmp_path):
    expected_tail = write_console_log(tmp_path)
    with socket.socket() as closed_port:
        closed_port.bind((test_address, 0))
        port = closed_port.getsockname()[1]
        with pytest.raises(qemu.VMBootError) as raised:
            qemu.wait_for_ssh(
                test_address, port, machine_dir=tmp_path, timeout=10, attempts=3, interval=0.2
            )

    message = str(raised.value)
    assert f"the VM in {tmp_path} exited before SSH responded" in message
    assert message.split("last console lines:\n", 1)[1].splitlines() == expected_tail


def test_kernel_command_line_carries_public_key_only():
    line = qemu.kernel_command_line(PUBLIC_KEY)

    assert "pdm.authorized_key=c3NoLWVkMjU1MTkg" in line
    assert "root=/dev/vda" in line
    with pytest.raises(InvalidInputError):
        qemu.kernel_command_line("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")


def test_qemu_command_forwards_to_address_only(tmp_path):
    image = vmimage.BaseImage(
        tmp_path / "base.raw", Path("/vmlinuz"), Path("/initrd"), "6"
    )
    config = qemu.VMConfig(tmp_path, image, "127.100.0.3", PUBLIC_KEY, ssh_port=2222)

    command = qemu.qemu_command(config)

    netdev = command[command.index("-netdev") + 1]
    assert netdev == (
        "user,id=net0,hostfwd=tcp:127.100.0.3:2222-:22,"
        "hostfwd=tcp:127.100.0.3:2376-:2376"
    )
    assert command[command.index("-accel") + 1] == "tcg"
    assert "-daemonize" in command


def test_recipe_hash_follows_kernel_version():
    assert vmimage.recipe_hash("6.1.0-1") != vmimage.recipe_hash("6.1.0-2")
    assert vmimage.recipe_hash("6.1.0-1") == vmimage.recipe_hash("6.1.0-1")


def test_configure_root_strips_machine_state(tmp_path):
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("baked-in key")
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/archives/curl.deb").write_text("package")

    vmimage.configure_root(root)

    assert not (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/cache/apt/archives/curl.deb").exists()
    assert (root / "usr/local/sbin/pdm-authorized-key").stat().st_mode & 0o777 == 0o755
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "docker.service").readlink() == Path(
        "/lib/systemd/system/docker.service"
    )
    assert (wants / "pdm-authorized-key.service").is_symlink()
    sshd = (root / "etc/ssh/sshd_config.d/10-pulumi-docker-machine.conf").read_text()
    assert "PermitRootLogin prohibit-password" in sshd
    assert "PasswordAuthentication no" in sshd


@pytest.mark.vm
def test_vm_boot_failure_cleans_up(tmp_path):
    """QEMU cannot forward a port that is in use, so the boot fails at once."""
    image = vmimage.ensure_image()
    machine_dir = tmp_path / "machine"
    lease = loopback.allocate(holder="test of a failed boot")
    config = qemu.VMConfig(machine_dir, image, lease.address, PUBLIC_KEY)

    try:
        with socket.create_server((lease.address, 2376)):
            with pytest.raises(qemu.VMBootError, match="failed to start"):
                qemu.boot(config)
    finally:
        loopback.release(lease.address)

    assert not machine_dir.exists()
    assert qemu_processes_of(machine_dir) == []


@pytest.mark.vm
def test_qmp_socket_in_deep_machine_dir(tmp_path, test_address):
    """QEMU starts, and QMP replies, where the socket path exceeds sun_path."""
    base = tmp_path / "blank.raw"
    base.write_bytes(b"\0" * 1024**2)
    machine_dir = tmp_path / ("d" * 100) / "machine"
    config = qemu.VMConfig(
        machine_dir, vmimage.BaseImage(base, None, None, ""), test_address, PUBLIC_KEY,
        memory_mb=64, cpus=1, ssh_port=PORTS[0], docker_port=PORTS[1],
    )  # fmt: skip
    assert len(bytes(machine_dir / qemu.QMP_NAME)) > 107

    qemu.start(config)
    try:
        # The disk has no boot loader, so the guest idles in the firmware.
        status = qemu._qmp_execute(machine_dir / qemu.QMP_NAME, "query-status")
        assert status["status"] == "running"
    finally:
        # No guest OS handles the power-down request, so stop kills QEMU.
        qemu.stop(machine_dir, timeout=2)
    assert not qemu.is_running(machine_dir)
    assert qemu_processes_of(machine_dir) == []


@pytest.mark.vm
def test_vm_runs_commands_as_root(shared_vm):
    status, stdout, stderr = shared_vm.run("id -u; echo to-stderr >&2; exit 3")

    assert status == 3
    assert stdout == "0\n"
    assert stderr == "to-stderr\n"


@pytest.mark.vm
def test_vm_docker_active(shared_vm):
    status, stdout, _ = shared_vm.run(
        "systemctl is-active docker; docker version -f '{{.Server.Version}}'"
    )

    assert status == 0
    assert stdout.splitlines()[0] == "active"
    assert stdout.splitlines()[1].startswith("20.10.")


@pytest.mark.vm
def test_vm_authorized_key_from_command_line(shared_vm):
    status, stdout, _ = shared_vm.run(
        "stat -c '%a %n' /root/.ssh /root/.ssh/authorized_keys; "
        "cat /root/.ssh/authorized_keys"
    )

    lines = stdout.splitlines()
    assert status == 0
    assert lines[0] == "700 /root/.ssh"
    assert lines[1] == "600 /root/.ssh/authorized_keys"
    assert lines[2] == shared_vm.public_key


@pytest.mark.vm
def test_vm_sshd_allows_keys_only(shared_vm):
    _, stdout, _ = shared_vm.run("sshd -T")

    settings = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    assert settings["permitrootlogin"] == "without-password"
    assert settings["passwordauthentication"] == "no"


@pytest.mark.vm
def test_vm_rejects_unknown_key(shared_vm):
    other_key = asyncssh.generate_private_key("ssh-ed25519")

    async def login():
        async with asyncssh.connect(
            check_dialable(shared_vm.address),
            shared_vm.ssh_port,
            username="root",
            client_keys=[other_key],
            known_hosts=None,
            connect_timeout=30,
        ):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login())


@pytest.mark.vm
def test_vm_accepted_logins_count_connections(shared_vm):
    before = shared_vm.accepted_logins()
    shared_vm.run("true")
    shared_vm.run("true")
    after = shared_vm.accepted_logins()

    # Two runs plus the second count's own connection.
    assert after - before == 3


@pytest.mark.vm
def test_second_vm_differs_and_stops_cleanly(shared_vm):
    with TestVM() as second:
        machine_dir = second.machine_dir
        address = second.address
        _, first_machine_id, _ = shared_vm.run("cat /etc/machine-id")
        _, second_machine_id, _ = second.run("cat /etc/machine-id")

        assert second.address != shared_vm.address
        assert second.host_key != shared_vm.host_key
        assert second_machine_id != first_machine_id
        assert qemu.is_running(machine_dir)
        assert address in [lease.address for lease in loopback.list_leases()]

    assert not qemu.is_running(machine_dir)
    assert qemu_processes_of(machine_dir) == []
    assert address not in [lease.address for lease in loopback.list_leases()]
    assert loopback.find_busy_ports(address, loopback.DEFAULT_PORTS) == []
    assert second.timings["stop"] < 60
