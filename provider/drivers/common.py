"""Steps every driver shares: the first login and the shape of the outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provider.progress import report
from provider.resources.base import run_async

if TYPE_CHECKING:
    from provider.sshsession import SSHTarget

# provider.sshsession, and asyncssh with it, is imported inside the functions
# that log in or read a host key. Host's check and diff load the driver
# module but open no SSH connection.


def _os_name(os_release: str) -> str:
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return "unknown"


async def _log_in(
    target: SSHTarget, setup_script: str | None, **connect_options: Any
) -> tuple[str, str]:
    from provider.sshsession import open_session

    async with open_session(target, **connect_options) as session:
        result = await session.run_script(
            "cat /etc/os-release 2>/dev/null || true\n",
            "reading /etc/os-release",
            as_root=False,
        )
        if setup_script:
            await session.run_script(setup_script, "preparing the machine")
        return session.host_key, _os_name(result.stdout)


def log_in(
    address: str,
    port: int,
    user: str,
    private_key: str,
    host_key: str | None,
    setup_script: str | None = None,
    deadline_seconds: float | None = None,
    deadline_setting: str | None = None,
) -> tuple[str, str]:
    """Log in once; return the host key the server presented and the OS name.

    With ``host_key`` given, any other key presented is rejected. Without it,
    the key presented is returned for the caller to record. ``setup_script``
    runs as root on the same connection. ``deadline_seconds`` bounds the wait
    for SSH to respond (a machine still booting), in place of the default of
    :func:`provider.sshsession.connect`; ``deadline_setting`` names the
    user's setting it comes from, which the progress lines and the error name.
    """
    from provider.sshsession import SSHTarget, host_key_fingerprint

    target = SSHTarget(
        host=address, port=port, user=user, private_key=private_key, host_key=host_key
    )
    step = "checking its host key" if host_key else "recording its host key"
    report(f"logging in to {target.label}, {step}")
    options: dict[str, Any] = {}
    if deadline_seconds is not None:
        # The deadline alone ends the wait, not a count of attempts.
        options = {
            "deadline_seconds": deadline_seconds,
            "attempts": None,
            "deadline_setting": deadline_setting,
        }
    presented, os_name = run_async(_log_in(target, setup_script, **options))
    report(f"{target.label} runs {os_name}; host key {host_key_fingerprint(presented)}")
    return presented, os_name


def generate_ssh_key(comment: str) -> tuple[str, str]:
    """Return a new ed25519 key pair: OpenSSH private key text and public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, f"{public} {comment}"


def host_outputs(
    props: dict[str, Any],
    *,
    address: str,
    ssh_port: int,
    ssh_private_key: str,
    host_key: str,
    os_name: str,
    state: str = "running",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the outputs of a Host, the same keys for every driver."""
    from provider.sshsession import host_key_fingerprint

    outputs = dict(props)
    outputs.update(
        address=address,
        ssh_port=ssh_port,
        ssh_private_key=ssh_private_key,
        host_key=host_key,
        host_key_fingerprint=host_key_fingerprint(host_key),
        os=os_name,
        state=state,
        details=details or {},
        # The fields of pulumi_command.remote.ConnectionArgs, so a user can run
        # their own remote commands on this machine.
        connection={
            "host": address,
            "port": ssh_port,
            "user": props["ssh_user"],
            "privateKey": ssh_private_key,
        },
    )
    return outputs
