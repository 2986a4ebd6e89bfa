"""Errors raised by the providers.

Every error the providers raise derives from :class:`DockerMachineError`, and a
subclass also derives from the builtin it refines, so callers may catch either.
Messages name what failed, on which value, and what to do next.
"""

from __future__ import annotations


class DockerMachineError(Exception):
    """Base class of every error raised by pulumi-docker-machine."""


class InvalidInputError(DockerMachineError, ValueError):
    """An input value that cannot be used, named with the reason and the fix."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        # Numbers cross the Pulumi engine as doubles: show 2376.0 as 2376.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        super().__init__(f"invalid {field} {value!r}: {reason}")


class SSHConnectError(DockerMachineError, ConnectionError):
    """The SSH server could not be reached or rejected the login."""


class HostKeyMismatchError(DockerMachineError):
    """The server presented a host key other than the one recorded or pinned."""

    def __init__(
        self, host: str, port: int, expected: str, presented: str | None
    ) -> None:
        self.host = host
        self.port = port
        self.expected = expected
        self.presented = presented
        seen = presented or "a key that could not be read"
        super().__init__(
            f"host key of {host}:{port} changed: recorded {expected}, "
            f"the server now presents {seen}. If the machine was rebuilt on "
            f"purpose, accept the new key by setting sshHostKey in the stack "
            f"configuration (the Host input host_key) to the new public key and "
            f"running `pulumi up`; otherwise treat it as a possible "
            f"man-in-the-middle and do not connect."
        )


class RemoteCommandError(DockerMachineError):
    """A command run over SSH exited with a non-zero status.

    ``command`` is a short description safe to log; secrets never reach
    a command line, so there is nothing to mask in it.
    """

    def __init__(
        self,
        host: str,
        command: str,
        exit_status: int | None,
        stdout: str,
        stderr: str,
        hint: str = "",
    ) -> None:
        self.host = host
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        self.hint = hint
        detail = (stderr or stdout).strip()
        if len(detail) > 2000:
            detail = "..." + detail[-2000:]
        message = f"{command} on {host} failed with exit status {exit_status}"
        if detail:
            message += f": {detail}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class HostNotSupportedError(DockerMachineError):
    """The host lacks something the provisioner needs (systemd, Docker)."""


class DaemonUnreachableError(DockerMachineError, ConnectionError):
    """The Docker daemon did not respond on its TCP port (a network fault)."""


class TLSVerificationError(DockerMachineError):
    """Mutual TLS with the daemon failed, or a client without a certificate
    was accepted."""


class DaemonResponseError(DockerMachineError):
    """The daemon's port completed mutual TLS but did not respond as dockerd.

    An HTTP status other than 200, or a ``/_ping`` body other than ``OK``,
    means that another server (a proxy, a different service) listens there.
    """


class EngineStartError(DockerMachineError):
    """Docker did not start with a new daemon configuration.

    ``options`` names the stack settings suspected, ``daemon_message`` quotes
    the daemon's own error from its journal, and ``restored`` tells whether
    the previous configuration is running again.
    """

    def __init__(
        self, message: str, options: list[str], daemon_message: str, restored: bool
    ) -> None:
        self.options = options
        self.daemon_message = daemon_message
        self.restored = restored
        super().__init__(message)
