"""Throwaway Debian VMs for tests, booted under QEMU and reached over SSH.

:class:`TestVM` leases a loopback address, makes an ed25519 key pair for the
VM, boots it from the cached image and waits for SSH and then for Docker.
Leaving the ``with`` block always stops the VM and releases the address, also
when the test failed. Booting a VM takes one to two minutes under software
emulation on 2 cores (scripts/vm-measure.py), so tests share one through the
session-scoped :func:`shared_vm` fixture.

The harness itself trusts the host key that the VM presents on the first
connection after boot and pins it for every later connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provider import loopback, qemu, vmimage
from provider.errors import DockerMachineError
from tests.harness.netguard import (
    check_dialable,
    register_test_host,
    unregister_test_host,
)

logger = logging.getLogger(__name__)


class DockerWaitTimeoutError(DockerMachineError, TimeoutError):
    """Docker did not become active in the VM within the time or attempt limit."""


class TestVM:
    """A Debian 12 VM with SSH and Docker, for the length of a ``with`` block."""

    __test__ = False  # a class named Test* that pytest must not collect
    user = "root"

    def __init__(
        self,
        *,
        address: str | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        ssh_timeout: float = 300.0,
        docker_timeout: float = 180.0,
        image: vmimage.BaseImage | None = None,
        with_docker: bool = True,
    ) -> None:
        """``with_docker=False`` boots the image without Docker and waits for SSH only."""
        self._requested_address = address
        self._memory_mb = memory_mb
        self._cpus = cpus
        self._ssh_timeout = ssh_timeout
        self._docker_timeout = docker_timeout
        self._image = image
        self._with_docker = with_docker
        self._lease: loopback.Lease | None = None
        self._work_dir: Path | None = None
        self._registered = False
        self._host_key: asyncssh.SSHKey | None = None
        self.vm: qemu.VM | None = None
        self.public_key = ""
        self.timings: dict[str, float] = {}

    def __enter__(self) -> TestVM:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """Loopback address that the VM's ports are forwarded to."""
        return self._require_vm().address

    @property
    def ssh_port(self) -> int:
        """Host port forwarded to the guest's SSH port 22."""
        return self._require_vm().ssh_port

    @property
    def docker_port(self) -> int:
        """Host port forwarded to the guest's port 2376."""
        return self._require_vm().docker_port

    @property
    def machine_dir(self) -> Path:
        """Directory holding the VM's overlay, pid file and console log."""
        return self._require_vm().machine_dir

    @property
    def private_key_path(self) -> Path:
        """Path of root's private key for this VM (OpenSSH format, mode 0600)."""
        assert self._work_dir is not None, "TestVM was not started"
        return self._work_dir / "id_ed25519"

    @property
    def private_key_text(self) -> str:
        """Root's private key for this VM, as the OpenSSH PEM text."""
        return self.private_key_path.read_text()

    @property
    def host_key(self) -> str:
        """The VM's SSH host key as an OpenSSH public key line."""
        if self._host_key is None:
            raise RuntimeError("the VM's host key is known after the first SSH login")
        return self._host_key.export_public_key().decode().strip()

    def start(self) -> None:
        """Lease an address, boot the VM and wait for SSH and Docker."""
        started = time.monotonic()
        try:
            self._image = self._image or vmimage.ensure_image(
                with_docker=self._with_docker
            )
            self._lease = self._lease_address()
            self._work_dir = Path(tempfile.mkdtemp(prefix="pdm-vm-"))
            self._write_key_pair()
            self._allow_dialing(self._lease.address)

            self.vm = qemu.boot(self._config(), ssh_timeout=self._ssh_timeout)
            self.timings["ssh"] = time.monotonic() - started

            if self._with_docker:
                self._wait_for_docker()
                self.timings["docker"] = time.monotonic() - started
        except BaseException:
            self.close()
            raise
        logger.info("VM %s ready: %s", self.address, self.timings)

    def close(self) -> None:
        """Stop the VM, release its address and delete its files, once."""
        try:
            if self._work_dir is not None:
                started = time.monotonic()
                qemu.stop(self._work_dir / "machine")
                self.timings["stop"] = time.monotonic() - started
                shutil.rmtree(self._work_dir, ignore_errors=True)
                self._work_dir = None
        finally:
            if self._lease is not None:
                if self._registered:
                    unregister_test_host(self._lease.address)
                    self._registered = False
                loopback.release(self._lease.address)
                self._lease = None

    def run(self, command: str, *, timeout: float = 120.0) -> tuple[int, str, str]:
        """Run ``command`` as root over a new SSH connection.

        Returns the exit status (minus the signal number if a signal ended the
        command), stdout and stderr.
        """
        return _run_coroutine(self._run_async(command, timeout))

    def forget_host_key(self) -> None:
        """Trust the next host key presented, after a test replaced the keys."""
        self._host_key = None

    def accepted_logins(self) -> int:
        """Return how many SSH logins sshd has accepted since boot.

        The count includes the connection this call opens to read the journal.
        """
        command = (
            "journalctl --sync; "
            "journalctl -b -u ssh.service -o cat --no-pager | "
            "grep -c 'Accepted publickey' || true"
        )
        status, stdout, stderr = self.run(command)
        if status != 0:
            raise RuntimeError(f"counting SSH logins failed ({status}): {stderr}")
        return int(stdout.strip())

    def _require_vm(self) -> qemu.VM:
        if self.vm is None:
            raise RuntimeError("TestVM is not running: use it inside `with TestVM()`")
        return self.vm

    def _lease_address(self) -> loopback.Lease:
        holder = f"test VM of pid {os.getpid()}"
        if self._requested_address:
            return loopback.take(self._requested_address, holder=holder)
        return loopback.allocate(holder=holder)

    def _allow_dialing(self, address: str) -> None:
        if not ipaddress.ip_address(address).is_loopback:
            register_test_host(address)
            self._registered = True
        check_dialable(address)

    def _write_key_pair(self) -> None:
        key = Ed25519PrivateKey.generate()
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        descriptor = os.open(
            self.private_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        with os.fdopen(descriptor, "wb") as private_file:
            private_file.write(private_pem)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.public_key = f"{public.decode()} pdm-test-vm"

    def _config(self) -> qemu.VMConfig:
        assert self._image is not None
        assert self._lease is not None
        assert self._work_dir is not None
        return qemu.VMConfig(
            machine_dir=self._work_dir / "machine",
            image=self._image,
            address=self._lease.address,
            authorized_key=self.public_key,
            memory_mb=self._memory_mb,
            cpus=self._cpus,
            name=f"pdm-test-{self._lease.address}",
        )

    def _wait_for_docker(self) -> None:
        _run_coroutine(self._wait_for_docker_async(attempts=90, interval=2.0))

    async def _wait_for_docker_async(self, attempts: int, interval: float) -> None:
        deadline = time.monotonic() + self._docker_timeout
        async with self._connect() as connection:
            for attempt in range(1, attempts + 1):
                result = await connection.run("systemctl is-active docker")
                state = str(result.stdout).strip()
                if state == "active":
                    return
                logger.info(
                    "waiting for Docker on %s (attempt %d of %d): %s",
                    self.address,
                    attempt,
                    attempts,
                    state,
                )
                if time.monotonic() + interval > deadline:
                    break
                await asyncio.sleep(interval)
            journal = await connection.run("journalctl -u docker -n 20 --no-pager")
        raise DockerWaitTimeoutError(
            f"Docker in the VM at {self.address} is {state!r} after {attempt} "
            f"attempts in {self._docker_timeout:.0f} s; last docker.service "
            f"journal lines:\n{journal.stdout}"
        )

    async def _run_async(self, command: str, timeout: float) -> tuple[int, str, str]:
        async with self._connect() as connection:
            result = await asyncio.wait_for(connection.run(command), timeout)
        return result.returncode, str(result.stdout), str(result.stderr)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """Open an SSH connection, pinning the host key seen on the first one."""
        address = check_dialable(self.address)
        known_hosts = None if self._host_key is None else ([self._host_key], [], [])
        async with asyncssh.connect(
            address,
            self.ssh_port,
            username=self.user,
            client_keys=[str(self.private_key_path)],
            known_hosts=known_hosts,
            connect_timeout=30,
        ) as connection:
            if self._host_key is None:
                self._host_key = connection.get_server_host_key()
            yield connection


def _run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def take_manual_address(
    holder: str, ports: tuple[int, ...] = loopback.DEFAULT_PORTS
) -> loopback.Lease:
    """Lease a free address of the range kept for addresses chosen by hand.

    Tests that need such an address lease it here rather than naming a fixed
    one, so that parallel runs and other tests never share it.
    """
    for last_octet in range(2, 255):
        try:
            return loopback.take(f"127.100.0.{last_octet}", ports, holder)
        except loopback.AddressTakenError:
            continue
    raise loopback.AddressesExhaustedError(
        f"every address of {loopback.MANUAL_RANGE} is leased or has a port of "
        f"{list(ports)} in use"
    )


@pytest.fixture(scope="session")
def shared_vm() -> Iterator[TestVM]:
    """Boot one VM for the whole test session and stop it at the end."""
    # A boot takes one to two minutes on an idle 2-core machine and several
    # times that when other VMs share the cores, so the waits are generous.
    with TestVM(ssh_timeout=900.0, docker_timeout=600.0) as vm:
        yield vm
