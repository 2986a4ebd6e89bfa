"""One SSH connection per provider operation, over asyncssh.

A :class:`RemoteSession` wraps a single authenticated connection: every command
of one create, update, read or delete goes through it.
The server's host key is checked against the key recorded in state (or pinned
by the user) before authentication. On first contact, with nothing recorded,
the presented key is accepted and returned so that the caller can record it.

Secrets never reach a command line: scripts, and the files they write, travel
on the channel's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import shlex
import time
from collections.abc import AsyncIterator

import asyncssh

from provider.errors import HostKeyMismatchError, RemoteCommandError, SSHConnectError
from provider.progress import report

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 10
CONNECT_DEADLINE_SECONDS = 120.0
CONNECT_TIMEOUT_SECONDS = 15.0
COMMAND_TIMEOUT_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class SSHTarget:
    """Login details of one host; a ``host_key`` of ``None`` means first contact."""

    host: str
    port: int
    user: str
    private_key: str = dataclasses.field(repr=False)
    host_key: str | None = None

    @property
    def label(self) -> str:
        """Return ``user@host:port`` for messages."""
        return f"{self.user}@{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """Exit status and output of a finished remote command."""

    exit_status: int | None
    stdout: str
    stderr: str


def host_key_fingerprint(host_key: str) -> str:
    """Return the OpenSSH SHA256 fingerprint of a public key line."""
    return asyncssh.import_public_key(host_key).get_fingerprint("sha256")


def _describe_key(host_key: str) -> str:
    algorithm = host_key.split()[0]
    return f"{algorithm} {host_key_fingerprint(host_key)}"


class RemoteSession:
    """Commands and uploads over one authenticated SSH connection."""

    def __init__(self, target: SSHTarget, connection: asyncssh.SSHClientConnection):
        self.target = target
        self._connection = connection
        presented = connection.get_server_host_key()
        self.host_key = presented.export_public_key("openssh").decode().strip()
        self.host_key = " ".join(self.host_key.split()[:2])
        self.channels_opened = 0

    @property
    def is_root(self) -> bool:
        """Tell whether the login user is root (no sudo needed)."""
        return self.target.user == "root"

    async def run_script(
        self,
        script: str,
        description: str,
        *,
        args: tuple[str, ...] = (),
        as_root: bool = True,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> CommandResult:
        """Run a POSIX shell script sent on stdin; raise on failure if ``check``.

        ``description`` names the step in logs and errors. ``args`` become the
        script's positional parameters and must hold no secret.
        """
        command = "sh -s"
        if args:
            command += " -- " + " ".join(shlex.quote(arg) for arg in args)
        if as_root and not self.is_root:
            command = "sudo -n " + command
        logger.debug("running %s on %s", description, self.target.label)
        self.channels_opened += 1
        try:
            completed = await asyncio.wait_for(
                self._connection.run(command, input=script, check=False),
                timeout,
            )
        except asyncio.TimeoutError:
            raise RemoteCommandError(
                self.target.host,
                description,
                None,
                "",
                "",
                hint=f"timed out after {timeout:.0f} s",
            ) from None
        result = CommandResult(
            completed.exit_status, str(completed.stdout), str(completed.stderr)
        )
        if check and result.exit_status != 0:
            raise RemoteCommandError(
                self.target.host,
                description,
                result.exit_status,
                result.stdout,
                result.stderr,
                hint=_sudo_hint(self, result),
            )
        return result


def _sudo_hint(session: RemoteSession, result: CommandResult) -> str:
    if session.is_root or "sudo" not in result.stderr:
        return ""
    return (
        f"the SSH user {session.target.user!r} needs passwordless sudo "
        f"(NOPASSWD) on {session.target.host}, or log in as root"
    )


def _known_hosts(target: SSHTarget) -> tuple[list, list, list] | None:
    if target.host_key is None:
        return None
    return ([asyncssh.import_public_key(target.host_key)], [], [])


# On first contact, record the strongest and shortest key type the server has.
_FIRST_CONTACT_ALGORITHMS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
]


def _host_key_algorithms(target: SSHTarget) -> list[str] | tuple[()]:
    # With a recorded key asyncssh offers only that key's algorithms.
    return _FIRST_CONTACT_ALGORITHMS if target.host_key is None else ()


async def _connect_once(
    target: SSHTarget, timeout: float
) -> asyncssh.SSHClientConnection:
    client_key = asyncssh.import_private_key(target.private_key)
    return await asyncssh.connect(
        target.host,
        port=target.port,
        username=target.user,
        client_keys=[client_key],
        known_hosts=_known_hosts(target),
        server_host_key_algs=_host_key_algorithms(target),
        agent_path=None,
        config=None,
        preferred_auth="publickey",
        connect_timeout=timeout,
        keepalive_interval=30,
    )


async def _presented_host_key(target: SSHTarget) -> str | None:
    """Fetch the key the server presents now, of the recorded key's type."""
    algorithm = target.host_key.split()[0] if target.host_key else None
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                target.host,
                target.port,
                server_host_key_algs=[algorithm] if algorithm else (),
                config=None,
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
    except (OSError, asyncio.TimeoutError, asyncssh.Error):
        return None
    if key is None:
        return None
    line = key.export_public_key("openssh").decode().strip()
    return _describe_key(" ".join(line.split()[:2]))


async def connect(
    target: SSHTarget,
    *,
    attempts: int | None = CONNECT_ATTEMPTS,
    deadline_seconds: float = CONNECT_DEADLINE_SECONDS,
    deadline_setting: str | None = None,
) -> asyncssh.SSHClientConnection:
    """Open one connection, retrying network faults within the given bounds.

    A changed host key or a rejected login is never retried. ``attempts``
    None leaves only the deadline. ``deadline_setting`` names the user's
    setting that gave the deadline, for the progress lines and the error.
    """
    start = time.monotonic()
    deadline = start + deadline_seconds
    delay = 1.0
    counter = itertools.count(1) if attempts is None else range(1, attempts + 1)
    for attempt in counter:
        # The last attempt gets only what is left, so the deadline holds.
        timeout = min(CONNECT_TIMEOUT_SECONDS, max(deadline - time.monotonic(), 1.0))
        try:
            return await _connect_once(target, timeout)
        except asyncssh.HostKeyNotVerifiable:
            presented = await _presented_host_key(target)
            raise HostKeyMismatchError(
                target.host, target.port, _describe_key(target.host_key), presented
            ) from None
        except asyncssh.PermissionDenied:
            raise SSHConnectError(
                f"SSH login as {target.user!r} to {target.host}:{target.port} was "
                f"rejected: check that the private key given for this host matches "
                f"an entry in ~{target.user}/.ssh/authorized_keys there"
            ) from None
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as error:
            cause = _network_cause(error)
            remaining = deadline - time.monotonic()
            if attempt == attempts or remaining <= 0:
                raise SSHConnectError(
                    _unreachable(target, attempt, cause, deadline_seconds, deadline_setting)
                ) from None
            waited = f"{time.monotonic() - start:.0f} s of the {deadline_seconds:.0f} s"
            if deadline_setting:
                bound = f"attempt {attempt}, {waited} that {deadline_setting} allows"
            elif attempts is None:
                bound = f"attempt {attempt}, {waited} allowed"
            else:
                bound = f"attempt {attempt} of {attempts}"
            report(f"waiting for SSH on {target.host}:{target.port} ({bound}): {cause}")
            await asyncio.sleep(min(delay, max(remaining, 0)))
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


def _unreachable(
    target: SSHTarget,
    attempt: int,
    cause: str,
    deadline_seconds: float,
    deadline_setting: str | None,
) -> str:
    where = f"{target.host}:{target.port}"
    checks = (
        f"Check that the host is up, that sshd listens on port {target.port}, "
        f"and that no firewall drops the connection"
    )
    if not deadline_setting:
        return f"could not reach SSH on {where} after {attempt} attempts: {cause}. {checks}"
    return (
        f"could not reach SSH on {where} within the {deadline_seconds:.0f} s of "
        f"{deadline_setting} ({attempt} attempts): {cause}. {checks}; if the "
        f"machine only boots slowly, raise {deadline_setting}"
    )


def _network_cause(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:.0f} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error) or type(error).__name__
    return text


@contextlib.asynccontextmanager
async def open_session(
    target: SSHTarget, **connect_options
) -> AsyncIterator[RemoteSession]:
    """Yield a :class:`RemoteSession` on one new connection, closed on exit."""
    connection = await connect(target, **connect_options)
    logger.info("connected to %s", target.label)
    try:
        yield RemoteSession(target, connection)
    finally:
        connection.close()
        with contextlib.suppress(Exception):
            await connection.wait_closed()
