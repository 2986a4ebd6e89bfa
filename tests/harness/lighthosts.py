"""Light test hosts: systemd containers of the test image, one per network namespace.

A :class:`LightHostFleet` starts up to 16 hosts side by side. Each runs the
Debian root of the test VM image (read-only loop mount) under
``systemd-nspawn --boot`` with real systemd, sshd and dockerd, and has:

- its own network namespace and veth pair, with addresses from a /30 of a
  private /24 that no route on this machine uses yet. Only the container end of
  each link is registered with the network-safety guard;
- a copy-on-write view of the root (``--overlay``). Its upper directory has
  only ``lo`` in /etc/network/interfaces, because with the image's DHCP line
  boot waits minutes for a lease. It also has an empty fstab, root's
  authorized key, and sshd logging each connection and session to
  /var/log/sshd-counting.log;
- a data directory on the real file system bound at /var/lib/docker, because
  dockerd's overlay2 storage cannot sit on an overlay.

Leaving the ``with`` block stops every host with SIGTERM (a clean poweroff),
kills by pid whatever is still inside its namespace, deletes the namespace by
name, unmounts the image and checks that no process, namespace, link or mount
is left. Needs root and Debian's ``systemd-container``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provider import vmimage
from tests.harness.netguard import (
    check_dialable,
    register_test_host,
    unregister_test_host,
)

logger = logging.getLogger(__name__)

MAX_HOSTS = 16
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 20.0
INOTIFY_INSTANCES = 1024
SSHD_LOG = "/var/log/sshd-counting.log"
# Candidate private /24 networks for the veth links. Each fleet takes one that
# no route of this machine covers, so a link never shadows a real network.
_CANDIDATE_SUBNETS = [ipaddress.ip_network(f"10.{octet}.77.0/24") for octet in range(200, 250)]

_SSH_DROP_IN = f"""\
[Service]
ExecStart=
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS -E {SSHD_LOG}
"""


class LightHostError(RuntimeError):
    """A light host could not be started, reached or removed."""


@dataclasses.dataclass
class LightHost:
    """One running container: its address, names, pids and directories."""

    name: str
    namespace: str
    host_link: str
    address: str
    gateway: str
    upper_dir: Path
    data_dir: Path
    private_key_path: Path
    process: subprocess.Popen | None = None
    user: str = "root"
    ssh_port: int = 22

    @property
    def sshd_log(self) -> Path:
        """Return the host-side path of the container's sshd log."""
        return self.upper_dir / SSHD_LOG.lstrip("/")

    def sshd_log_lines(self) -> list[str]:
        """Return the sshd log lines written so far."""
        try:
            return self.sshd_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def namespace_pids(self) -> list[int]:
        """Return the pids of every process inside this host's namespace."""
        completed = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        )
        return [int(word) for word in completed.stdout.split()]

    def init_pid(self) -> int | None:
        """Return the host pid of the container's systemd (pid 1 inside)."""
        for pid in self.namespace_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
            if match and match.group(1).split()[-1] == "1":
                return pid
        return None

    def run(self, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``command`` inside the container's namespaces (no SSH involved)."""
        pid = self.init_pid()
        if pid is None:
            raise LightHostError(f"{self.name}: the container's systemd is not running")
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class LightHostFleet:
    """Up to :data:`MAX_HOSTS` light hosts for the length of a ``with`` block."""

    def __init__(
        self, count: int, *, workdir: Path | None = None, with_python: bool = False
    ) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"invalid host count {count}: use 1 to {MAX_HOSTS}")
        if os.geteuid() != 0:
            raise LightHostError("light hosts need root (systemd-nspawn, ip netns)")
        if shutil.which("systemd-nspawn") is None:
            raise LightHostError(
                "systemd-nspawn not found: install Debian's systemd-container "
                "(scripts/setup.sh does)"
            )
        self.count = count
        # The image has no Python. Tools whose remote steps need it (Ansible)
        # get this machine's python3.11, bound read-only: both are Debian 12.
        self.with_python = with_python
        self.run_id = uuid.uuid4().hex[:6]
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pdm-light-"))
        self.root = self.workdir / "root"
        self.hosts: list[LightHost] = []
        self._root_mounted = False

    def __enter__(self) -> LightHostFleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Start-up

    def start(self) -> None:
        """Mount the image, start every host and wait until SSH and Docker respond."""
        _raise_inotify_instances()
        image = vmimage.ensure_image()
        self.root.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-o", "loop,ro", str(image.path), str(self.root)])
        self._root_mounted = True

        private_key_path = self._write_key_pair()
        subnet = _free_subnet()
        links = list(subnet.subnets(new_prefix=30))
        for index in range(self.count):
            link = links[index]
            gateway, address = (str(ip) for ip in list(link.hosts())[:2])
            host = LightHost(
                name=f"pdm-{self.run_id}-{index:02d}",
                namespace=f"pdm-{self.run_id}-{index:02d}",
                host_link=f"pdm{self.run_id}{index:02d}",
                address=address,
                gateway=gateway,
                upper_dir=self.workdir / f"upper-{index:02d}",
                data_dir=self.workdir / f"docker-{index:02d}",
                private_key_path=private_key_path,
            )
            self.hosts.append(host)
            self._make_network(host)
            register_test_host(host.address)
            self._write_upper_dir(host)
            self._boot(host)
        self._wait_until_ready()

    def _write_key_pair(self) -> Path:
        key = Ed25519PrivateKey.generate()
        path = self.workdir / "id_ed25519"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.public_key = public.decode() + " light-host-test\n"
        return path

    def _make_network(self, host: LightHost) -> None:
        _run(["ip", "netns", "add", host.namespace])
        _run(
            [
                "ip", "link", "add", host.host_link, "type", "veth",
                "peer", "name", "eth0", "netns", host.namespace,
            ]
        )
        _run(["ip", "addr", "add", f"{host.gateway}/30", "dev", host.host_link])
        _run(["ip", "link", "set", host.host_link, "up"])
        _run(["ip", "-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", "eth0"])
        _run(["ip", "-n", host.namespace, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.namespace, "link", "set", "lo", "up"])
        _run(["ip", "-n", host.namespace, "route", "add", "default", "via", host.gateway])
        # /proc/sys is read-only inside the container, and dockerd fails to
        # start unless forwarding is on, so it is set here, per namespace.
        _run(["ip", "netns", "exec", host.namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def _write_upper_dir(self, host: LightHost) -> None:
        files = {
            "etc/network/interfaces": "auto lo\niface lo inet loopback\n",
            "etc/fstab": "",
            "etc/hostname": f"{host.name}\n",
            "etc/ssh/sshd_config.d/20-light-host.conf": "LogLevel VERBOSE\n",
            "etc/systemd/system/ssh.service.d/20-counting-log.conf": _SSH_DROP_IN,
            "root/.ssh/authorized_keys": self.public_key,
        }
        for relative, content in files.items():
            path = host.upper_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        if self.with_python:
            (host.upper_dir / "usr/bin").mkdir(parents=True, exist_ok=True)
            (host.upper_dir / "usr/bin/python3").symlink_to("python3.11")
        (host.upper_dir / "root/.ssh").chmod(0o700)
        (host.upper_dir / "root/.ssh/authorized_keys").chmod(0o600)
        (host.upper_dir / "var/log").mkdir(parents=True, exist_ok=True)
        host.data_dir.mkdir(parents=True)

    def _boot(self, host: LightHost) -> None:
        command = [
            "systemd-nspawn",
            "--quiet",
            "-D", str(self.root),
            f"--overlay={self.root}:{host.upper_dir}:/",
            f"--bind={host.data_dir}:/var/lib/docker",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{host.namespace}",
            "--capability=all",
            f"--machine={host.name}",
        ]
        if self.with_python:
            command += ["--bind-ro=/usr/bin/python3.11", "--bind-ro=/usr/lib/python3.11"]
        log = open(self.workdir / f"{host.name}.console.log", "wb")
        host.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_until_ready(self) -> None:
        """Wait, bounded in time, until every host's sshd and dockerd respond."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        waiting = list(self.hosts)
        attempt = 0
        while waiting:
            attempt += 1
            for host in list(waiting):
                if host.process.poll() is not None:
                    # The work directory goes on close, so the console's end
                    # goes into the message.
                    console = self.workdir / f"{host.name}.console.log"
                    tail = console.read_text(errors="replace").splitlines()[-8:]
                    raise LightHostError(
                        f"{host.name} exited with status {host.process.returncode} "
                        f"while booting; its console ended with:\n" + "\n".join(tail)
                    )
                if _booted(host) and _ssh_banner(host.address) and _docker_answers(host):
                    waiting.remove(host)
            if not waiting:
                break
            if time.monotonic() > deadline:
                names = ", ".join(host.name for host in waiting)
                raise LightHostError(
                    f"timed out after {READY_TIMEOUT_SECONDS:.0f} s waiting for SSH "
                    f"and Docker on {names}"
                )
            logger.info(
                "waiting for SSH and Docker on %d of %d light hosts (check %d)",
                len(waiting), self.count, attempt,
            )
            time.sleep(0.5)

    # Tear-down

    def close(self) -> None:
        """Stop and remove every host, then raise if anything is left."""
        for host in self.hosts:
            if host.process and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
        for host in self.hosts:
            self._stop(host)
        for host in self.hosts:
            unregister_test_host(host.address)
        if self._root_mounted:
            _run(["umount", str(self.root)], check=False)
            self._root_mounted = False
        leftovers = self.leftovers()
        if not leftovers and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.hosts = []
        if leftovers:
            raise LightHostError("light hosts left behind: " + "; ".join(leftovers))

    def _stop(self, host: LightHost) -> None:
        if host.process is not None:
            try:
                host.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM, killing it", host.name)
                host.process.kill()
                host.process.wait(10)
        # A killed nspawn leaves the container's processes running: kill by pid.
        for pid in host.namespace_pids():
            logger.warning("%s: killing pid %d left in its namespace", host.name, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_until(lambda: not host.namespace_pids(), 10.0)
        _run(["ip", "link", "del", host.host_link], check=False)
        _run(["ip", "netns", "del", host.namespace], check=False)
        if host.data_dir.exists():
            shutil.rmtree(host.data_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Describe every process, namespace, link and mount this fleet left."""
        found = []
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True
        ).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                found.append(f"{host.name}: nspawn pid {host.process.pid} running")
            if re.search(rf"^{re.escape(host.namespace)}\b", namespaces, re.MULTILINE):
                found.append(f"network namespace {host.namespace}")
            if f" {host.host_link}@" in links or f" {host.host_link}:" in links:
                found.append(f"link {host.host_link}")
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.workdir) in mounts:
            found.append(f"mounts under {self.workdir}")
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if f"pdm-{self.run_id}-".encode() in cmdline:
                found.append(f"process {pid_dir.name}: {cmdline[:80]!r}")
        return found


def _raise_inotify_instances() -> None:
    """Raise root's inotify instance limit to INOTIFY_INSTANCES if it is lower.

    The containers run as root without a user namespace, so the inotify
    instances of every host's systemd and services count against root's one
    limit (128 on Debian 12). Two fleets of 16 at once went past it, and
    systemd-nspawn then failed with "Too many open files".
    """
    path = Path("/proc/sys/fs/inotify/max_user_instances")
    current = int(path.read_text())
    if current < INOTIFY_INSTANCES:
        logger.info(
            "raising fs.inotify.max_user_instances from %d to %d for the light hosts",
            current,
            INOTIFY_INSTANCES,
        )
        path.write_text(f"{INOTIFY_INSTANCES}\n")


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and completed.returncode != 0:
        raise LightHostError(
            f"{' '.join(command)} failed with status {completed.returncode}: "
            f"{completed.stderr.strip()}"
        )
    return completed


def _free_subnet() -> ipaddress.IPv4Network:
    """Pick a candidate /24 that no route or address of this machine overlaps."""
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    used = []
    for word in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", routes):
        used.append(ipaddress.ip_network(word, strict=False))
    candidates = [
        net
        for net in _CANDIDATE_SUBNETS
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0)
    ]
    if not candidates:
        raise LightHostError("no free private /24 for light host links")
    return random.choice(candidates)


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((check_dialable(address), 22), timeout=2.0) as connection:
            return connection.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


def _booted(host: LightHost) -> bool:
    """Tell whether the container's systemd finished booting.

    A SIGTERM sent earlier can be lost, and the container then ignores it.
    """
    try:
        completed = host.run("systemctl", "is-system-running", timeout=10)
    except (LightHostError, subprocess.TimeoutExpired):
        return False
    return completed.stdout.strip() in ("running", "degraded")


def _docker_answers(host: LightHost) -> bool:
    try:
        completed = host.run("docker", "version", "--format", "{{.Server.Version}}", timeout=20)
    except (LightHostError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0 and bool(completed.stdout.strip())


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@dataclasses.dataclass(frozen=True)
class SSHActivity:
    """What one host's sshd logged in a stretch of time, counted per connection."""

    tcp_connections: int
    logins: int
    sessions_per_login: tuple[int, ...]

    @property
    def sessions(self) -> int:
        """Return the sessions (command and SFTP channels) of all logins."""
        return sum(self.sessions_per_login)


_CONNECTION = re.compile(r"^Connection from \S+ port (\d+) on ")
_LOGIN = re.compile(r"^Accepted publickey for \S+ from \S+ port (\d+) ")
_SESSION = re.compile(r"^Starting session: .* from \S+ port (\d+) id \d+$")


def count_ssh_activity(lines: list[str]) -> SSHActivity:
    """Count TCP connections, logins and sessions in sshd ``LogLevel VERBOSE`` lines.

    sshd logs "Starting session" once per channel that runs a command or a
    subsystem such as SFTP, with the client port of its connection.
    """
    connections = 0
    sessions: dict[str, int] = {}
    for line in lines:
        if _CONNECTION.match(line):
            connections += 1
        elif match := _LOGIN.match(line):
            sessions[match.group(1)] = 0
        elif match := _SESSION.match(line):
            port = match.group(1)
            sessions[port] = sessions.get(port, 0) + 1
    return SSHActivity(connections, len(sessions), tuple(sessions.values()))
