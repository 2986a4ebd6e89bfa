"""Network-safety guard for test code.

Test code dials only loopback addresses (127.0.0.0/8, ::1) and the addresses
of test hosts that the test itself created and registered here. Every address
a test dials or hands to the product passes through :func:`check_dialable`
first, so a stray address (an EC2 public or private address reported by moto,
a typo) fails the test before anything connects.
"""

from __future__ import annotations

import ipaddress
import threading

_lock = threading.Lock()
_registered: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()


class UnsafeAddressError(AssertionError):
    """A test was about to dial an address outside the allowed ranges."""


def register_test_host(address: str) -> None:
    """Allow ``address``, an address of a host this test run created."""
    with _lock:
        _registered.add(ipaddress.ip_address(address))


def unregister_test_host(address: str) -> None:
    """Withdraw an address registered with :func:`register_test_host`."""
    with _lock:
        _registered.discard(ipaddress.ip_address(address))


def check_dialable(address: str) -> str:
    """Return ``address`` unchanged if tests may dial it, else raise.

    Host names are rejected too, except ``localhost``: resolving a name could
    lead anywhere.
    """
    if address == "localhost":
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UnsafeAddressError(
            f"refusing to dial {address!r}: tests dial IP addresses only"
        ) from None
    if ip.is_loopback:
        return address
    with _lock:
        if ip in _registered:
            return address
    raise UnsafeAddressError(
        f"refusing to dial {address}: outside 127.0.0.0/8 and ::1 and not a "
        f"test host created by this run"
    )
