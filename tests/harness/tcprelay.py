"""A TCP relay from loopback addresses to test hosts, with a connection count.

A test hands the product a loopback address (for example an Elastic IP that
moto allocates in 127.0.0.0/8), and a light host in its own network namespace
serves the connections behind it. Both ends pass the network-safety guard.
The relay counts the connections per listening address. It accepts at most
``max_connections`` in all and drops a connection idle for ``idle_seconds``,
so the traffic it carries is bounded in count and time.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections import Counter

from tests.harness.netguard import check_dialable

logger = logging.getLogger(__name__)

ACCEPT_POLL_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 10.0
BUFFER_SIZE = 65536


class TCPRelay:
    """Listeners on loopback addresses, each relaying to one target address."""

    def __init__(
        self,
        routes: dict[tuple[str, int], tuple[str, int]],
        *,
        max_connections: int = 256,
        idle_seconds: float = 120.0,
    ) -> None:
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self.connections: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TCPRelay:
        try:
            for listen, target in self.routes.items():
                self._listen(listen, target)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def total_connections(self) -> int:
        """Return how many connections the relay has accepted so far."""
        with self._lock:
            return sum(self.connections.values())

    def close(self) -> None:
        """Stop accepting, close the listeners and wait for the accept threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for listener in self._listeners:
            listener.close()

    def _listen(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        address, port = listen
        if not ipaddress.IPv4Address(address).is_loopback:
            raise ValueError(f"invalid listen address {address}: use 127.0.0.0/8")
        check_dialable(target[0])
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)
        listener.settimeout(ACCEPT_POLL_SECONDS)
        self._listeners.append(listener)
        thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, address, target),
            name=f"relay {address}:{port}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _accept_loop(
        self, listener: socket.socket, address: str, target: tuple[str, int]
    ) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if sum(self.connections.values()) >= self.max_connections:
                    logger.warning(
                        "relay at %s: limit of %d connections reached, closing",
                        address,
                        self.max_connections,
                    )
                    client.close()
                    continue
                self.connections[address] += 1
            threading.Thread(
                target=self._relay, args=(client, target), daemon=True
            ).start()

    def _relay(self, client: socket.socket, target: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(
                (check_dialable(target[0]), target[1]), timeout=CONNECT_TIMEOUT_SECONDS
            )
        except OSError as error:
            logger.warning("relay to %s:%d failed: %s", target[0], target[1], error)
            client.close()
            return
        for end in (client, upstream):
            end.settimeout(self.idle_seconds)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(timeout=self.idle_seconds)
        client.close()
        upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink`` until end of file, an error or idleness."""
    try:
        while True:
            data = source.recv(BUFFER_SIZE)
            if not data:
                break
            sink.sendall(data)
    except OSError as error:
        # A reset or an idle timeout ends the connection like end of file does.
        logger.debug("relay connection ended: %s", error)
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
