"""Lease loopback addresses (127.x.y.z) to local VMs.

Each VM forwards its ports to an address of its own, so every VM looks like a
host with the standard ports (22 for SSH, 2376 for Docker over TLS). Leases
are JSON files under ``<cache root>/loopback``, created and removed while an
flock on ``.lock`` there is held, so concurrent processes on one workstation
never hand out the same address. An address is leased only if every requested
port can also be bound on it right now.

Automatic allocation draws from 127.100.1.1 to 127.100.255.254. The
addresses 127.100.0.2 to 127.100.0.254 are left for addresses chosen by hand
with :func:`take`, which accepts no other address.

A lease records the process that made it and lapses when that process exits.
A lease made with ``persistent=True`` is for a VM that outlives the process
(as a Pulumi provider's does), and only :func:`release` ends it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from provider.errors import DockerMachineError, InvalidInputError
from provider.vmimage import cache_root

logger = logging.getLogger(__name__)

DEFAULT_PORTS = (22, 2376)
NETWORK = ipaddress.IPv4Network("127.100.0.0/16")
MANUAL_BLOCK = ipaddress.IPv4Network("127.100.0.0/24")
MANUAL_RANGE = "127.100.0.2 to 127.100.0.254"
_LOCALHOST_BLOCK = ipaddress.IPv4Network("127.0.0.0/24")


class LoopbackError(DockerMachineError):
    """A loopback address could not be leased."""


class AddressTakenError(LoopbackError):
    """The requested address is leased or one of its ports is in use."""


class AddressesExhaustedError(LoopbackError):
    """Every address of the automatic range is leased or busy."""


@dataclass(frozen=True)
class Lease:
    """A loopback address leased with the ports that were free on it."""

    address: str
    ports: tuple[int, ...]
    holder: str
    pid: int | None
    pid_start_time: int | None
    created: float


def leases_dir(cache_dir: Path | None = None) -> Path:
    """Return the directory of lease files."""
    return (cache_dir or cache_root()) / "loopback"


def allocate(
    ports: Sequence[int] = DEFAULT_PORTS,
    holder: str = "",
    *,
    persistent: bool = False,
    cache_dir: Path | None = None,
) -> Lease:
    """Lease the first free address of the automatic range with ``ports`` free."""
    ports = _validate_ports(ports)
    with _locked(cache_dir) as directory:
        for address in _automatic_addresses():
            if _is_leased(directory, address):
                continue
            if find_busy_ports(address, ports):
                logger.debug("skipping %s: a port is in use", address)
                continue
            return _write_lease(directory, address, ports, holder, persistent)
    raise AddressesExhaustedError(
        f"no free loopback address in {NETWORK} with ports {list(ports)} free: "
        f"release unused leases in {leases_dir(cache_dir)}"
    )


def take(
    address: str,
    ports: Sequence[int] = DEFAULT_PORTS,
    holder: str = "",
    *,
    persistent: bool = False,
    cache_dir: Path | None = None,
) -> Lease:
    """Lease ``address`` itself, or raise AddressTakenError if it is not free.

    ``address`` must be in 127.100.0.2 to 127.100.0.254 (InvalidInputError).
    """
    address = check_manual_address(address)
    ports = _validate_ports(ports)
    with _locked(cache_dir) as directory:
        current = _read_live_lease(directory, address)
        if current is not None:
            raise AddressTakenError(
                f"loopback address {address} is already leased to "
                f"{current.holder or 'an unnamed holder'} (pid {current.pid}): "
                f"stop that VM, or choose another address"
            )
        busy = find_busy_ports(address, ports)
        if busy:
            raise AddressTakenError(
                f"loopback address {address} is not free: port(s) {busy} already "
                f"in use there; stop what listens on them (`ss -ltnp`), or choose "
                f"another address"
            )
        return _write_lease(directory, address, ports, holder, persistent)


def release(address: str, cache_dir: Path | None = None) -> None:
    """End the lease of ``address``. Releasing an address not leased does nothing."""
    with _locked(cache_dir) as directory:
        path = _lease_path(directory, address)
        try:
            path.unlink()
        except FileNotFoundError:
            logger.debug("loopback address %s was not leased", address)
            return
    logger.info("released loopback address %s", address)


def lease_of(address: str, cache_dir: Path | None = None) -> Lease | None:
    """Return the lease in force on ``address``, or None."""
    with _locked(cache_dir) as directory:
        return _read_live_lease(directory, _validate_address(address))


def list_leases(cache_dir: Path | None = None) -> list[Lease]:
    """Return the leases in force, skipping those whose process has exited."""
    with _locked(cache_dir) as directory:
        leases = []
        for path in sorted(directory.glob("*.json")):
            lease = _read_live_lease(directory, path.stem)
            if lease is not None:
                leases.append(lease)
        return leases


def find_busy_ports(address: str, ports: Sequence[int]) -> list[int]:
    """Return the ports of ``ports`` that cannot be bound on ``address`` now."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # QEMU's user-mode network sets SO_REUSEADDR on its listeners too,
            # so connections in TIME_WAIT do not count as busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except PermissionError:
                raise LoopbackError(
                    f"binding port {port} on {address} needs root or "
                    f"CAP_NET_BIND_SERVICE: run as root, or forward ports of 1024 "
                    f"and above"
                ) from None
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return busy


def _automatic_addresses() -> Iterator[str]:
    for ip in NETWORK.hosts():
        if ip in MANUAL_BLOCK or ip.packed[3] in (0, 255):
            continue
        yield str(ip)


def _validate_address(address: str) -> str:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise InvalidInputError(
            "loopback address", address, "not an IPv4 address"
        ) from None
    if not ip.is_loopback or ip in _LOCALHOST_BLOCK or ip.packed[3] in (0, 255):
        raise InvalidInputError(
            "loopback address",
            address,
            "must be in 127.0.0.0/8 outside 127.0.0.0/24 and not end in .0 or "
            ".255; 127.100.0.2 to 127.100.0.254 are kept for manual choice",
        )
    return str(ip)


def check_manual_address(address: str) -> str:
    """Validate an address chosen by hand and return it normalised."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise InvalidInputError(
            "loopback address", address, f"not an IPv4 address; give one in {MANUAL_RANGE}"
        ) from None
    if ip not in MANUAL_BLOCK or ip.packed[3] in (0, 1, 255):
        raise InvalidInputError(
            "loopback address",
            address,
            f"must be in {MANUAL_RANGE}, the addresses kept for manual choice "
            f"(automatic ones start at 127.100.1.1)",
        )
    return str(ip)


def _validate_ports(ports: Sequence[int]) -> tuple[int, ...]:
    checked = tuple(ports)
    for port in checked:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidInputError("port", port, "must be an integer from 1 to 65535")
    return checked


@contextmanager
def _locked(cache_dir: Path | None) -> Iterator[Path]:
    directory = leases_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory


def _lease_path(directory: Path, address: str) -> Path:
    return directory / f"{address}.json"


def _is_leased(directory: Path, address: str) -> bool:
    return _read_live_lease(directory, address) is not None


def _read_live_lease(directory: Path, address: str) -> Lease | None:
    """Return the lease of ``address``, or None if there is none or it lapsed."""
    path = _lease_path(directory, address)
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        logger.warning("ignoring the unreadable lease file %s", path)
        return None
    lease = Lease(**{**fields, "ports": tuple(fields["ports"])})
    if lease.pid is not None and _start_time(lease.pid) != lease.pid_start_time:
        logger.info("lease of %s lapsed: process %s exited", address, lease.pid)
        return None
    return lease


def _write_lease(
    directory: Path,
    address: str,
    ports: tuple[int, ...],
    holder: str,
    persistent: bool,
) -> Lease:
    pid = None if persistent else os.getpid()
    start_time = None if pid is None else _start_time(pid)
    lease = Lease(address, ports, holder, pid, start_time, time.time())
    partial = directory / f".{address}.json.partial"
    partial.write_text(json.dumps(asdict(lease)))
    os.rename(partial, _lease_path(directory, address))
    logger.info("leased loopback address %s to %s", address, holder or f"pid {pid}")
    return lease


def _start_time(pid: int) -> int | None:
    """Return the start time of process ``pid`` in clock ticks, or None if gone.

    Comparing start times distinguishes a live lease holder from a later process
    that reused its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces, but the fields after it cannot.
    fields_after_name = stat.rsplit(")", 1)[1].split()
    if fields_after_name[0] == "Z":
        return None
    return int(fields_after_name[19])
