"""Checks of the daemon's mutual-TLS listener from the machine running Pulumi.

A network fault (no listener, connection refused, timeout) is reported as
:class:`DaemonUnreachableError`, never as a certificate problem. A certificate
problem is reported as :class:`TLSVerificationError` with which side rejected
which certificate. An HTTP response other than dockerd's, after a successful
handshake, is reported as :class:`DaemonResponseError`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator

from provider.errors import (
    DaemonResponseError,
    DaemonUnreachableError,
    TLSVerificationError,
)
from provider.progress import report

REQUEST_TIMEOUT_SECONDS = 10.0
WAIT_ATTEMPTS = 30
WAIT_DEADLINE_SECONDS = 120.0


def docker_host_url(address: str, port: int) -> str:
    """Return the ``DOCKER_HOST`` value for an address and engine port."""
    if ":" in address:
        return f"tcp://[{address}]:{port}"
    return f"tcp://{address}:{port}"


@contextlib.contextmanager
def client_context(
    ca_cert_pem: str, client_cert_pem: str | None, client_key_pem: str | None
) -> Iterator[ssl.SSLContext]:
    """Yield a client context that trusts only the given CA.

    ``ssl`` loads a certificate chain only from files, so the client key is
    written to a private temporary directory that is removed on exit.
    """
    context = ssl.create_default_context(cadata=ca_cert_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert_pem is None:
        yield context
        return
    with tempfile.TemporaryDirectory(prefix="pdm-tls-") as directory:
        cert_file = os.path.join(directory, "cert.pem")
        key_file = os.path.join(directory, "key.pem")
        _write_private(cert_file, client_cert_pem)
        _write_private(key_file, client_key_pem or "")
        context.load_cert_chain(cert_file, key_file)
        yield context


def _write_private(path: str, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _get(
    address: str,
    port: int,
    path: str,
    context: ssl.SSLContext,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> bytes:
    connection = http.client.HTTPSConnection(
        address, port, context=context, timeout=timeout
    )
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise DaemonResponseError(
            f"GET {path} on {docker_host_url(address, port)} returned HTTP "
            f"{response.status} {response.reason}: {body[:200]!r}; the TLS "
            f"handshake succeeded, so a proxy or a server other than dockerd "
            f"may listen on port {port}"
        )
    return body


def _classify(
    error: BaseException,
    address: str,
    port: int,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> Exception:
    url = docker_host_url(address, port)
    if isinstance(error, (ssl.SSLEOFError, ConnectionResetError)):
        # Closed before any TLS alert: nothing listens behind a forwarder or
        # a firewall cut the connection, which no certificate change will fix.
        return DaemonUnreachableError(
            f"network error: {url} closed the connection before the TLS "
            f"handshake finished; check that the daemon runs and listens on "
            f"port {port}, and that nothing between here and the host cuts it"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        return TLSVerificationError(
            f"the certificate of the daemon at {url} was rejected: "
            f"{error.verify_message}. The server certificate must be signed by "
            f"this stack's CA and name {address} among its SANs; run `pulumi up` "
            f"to re-sign it"
        )
    if isinstance(error, ssl.SSLError):
        return TLSVerificationError(
            f"TLS handshake with the daemon at {url} failed: {error.reason or error}. "
            f"The daemon may trust a different CA than this stack's"
        )
    if isinstance(error, (TimeoutError, socket.timeout)):
        return DaemonUnreachableError(
            f"network error: {url} timed out after "
            f"{timeout:g} s; check that port {port} is open "
            f"between this machine and the host"
        )
    return DaemonUnreachableError(
        f"network error: could not connect to {url}: {error}; check that the "
        f"daemon runs and that port {port} is reachable from this machine"
    )


def fetch_version(
    address: str,
    port: int,
    ca_cert_pem: str,
    client_cert_pem: str,
    client_key_pem: str,
    *,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> dict:
    """Return the daemon's ``/version`` document after a ``/_ping``, over mTLS.

    ``timeout`` applies to each socket operation, in seconds.
    """
    with client_context(ca_cert_pem, client_cert_pem, client_key_pem) as context:
        try:
            ping = _get(address, port, "/_ping", context, timeout)
            version = _get(address, port, "/version", context, timeout)
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            raise _classify(error, address, port, timeout) from error
    if ping.strip() != b"OK":
        raise DaemonResponseError(
            f"GET /_ping on {docker_host_url(address, port)} returned "
            f"{ping[:100]!r}, expected OK; a server other than dockerd may "
            f"listen on port {port}"
        )
    return json.loads(version)


def check_rejects_anonymous(address: str, port: int, ca_cert_pem: str) -> None:
    """Raise unless the daemon rejects a client that has no certificate."""
    with client_context(ca_cert_pem, None, None) as context:
        try:
            _get(address, port, "/_ping", context)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return
        except http.client.RemoteDisconnected:
            return
        except DaemonResponseError:
            # Any HTTP response means the handshake accepted the client.
            pass
        except (OSError, http.client.HTTPException) as error:
            raise _classify(error, address, port) from error
    raise TLSVerificationError(
        f"the daemon at {docker_host_url(address, port)} accepted a client "
        f"without a certificate: tlsverify is not in effect; check "
        f"/etc/docker/daemon.json and the flags dockerd runs with"
    )


def wait_for_daemon(
    address: str,
    port: int,
    ca_cert_pem: str,
    client_cert_pem: str,
    client_key_pem: str,
    *,
    attempts: int = WAIT_ATTEMPTS,
    deadline_seconds: float = WAIT_DEADLINE_SECONDS,
) -> dict:
    """Poll ``/version`` over mTLS until the daemon responds, within bounds.

    Only network faults are retried, because waiting does not fix a
    certificate error.
    """
    url = docker_host_url(address, port)
    deadline = time.monotonic() + deadline_seconds
    for attempt in range(1, attempts + 1):
        try:
            return fetch_version(
                address, port, ca_cert_pem, client_cert_pem, client_key_pem
            )
        except DaemonUnreachableError as error:
            if attempt == attempts or time.monotonic() >= deadline:
                raise DaemonUnreachableError(
                    f"{error} (gave up after {attempt} attempts)"
                ) from None
            report(
                f"waiting for Docker on {url} over mutual TLS "
                f"(attempt {attempt} of {attempts})"
            )
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0)))
    raise AssertionError("unreachable")
