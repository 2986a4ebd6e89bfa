"""The configure, observe and remove steps of ``DockerDaemonConfig``.

Each step opens one SSH connection and runs everything over it. A configure
runs a preflight script (wait for cloud-init, read the host's facts), an
install when one is requested, and one apply script that carries the files
and restarts Docker. Then it checks mutual TLS from this machine and removes
the previous configuration's copy on the host. So a ready host with Docker
costs three sessions, or four with an install method (the engine probe). A
failed first configure removes what it placed on the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

from provider import daemon_config, engine_install, engine_options, remote_scripts, restart_failure, tlsprobe
from provider.errors import DockerMachineError, HostNotSupportedError, InvalidInputError
from provider.pki import IssuedCertificate
from provider.progress import report
from provider.sshsession import RemoteSession, SSHTarget, open_session

REFRESH_CONNECT_ATTEMPTS = 3

# Guessing a host's kind (a mistyped address reaching another machine) is
# worse than a clear refusal, so the facts below must all hold.
_SUPPORTED_HINT = (
    "this provisioner configures Docker through systemd on Debian or Ubuntu "
    "hosts that already have Docker installed (for example the docker.io package)"
)


@dataclasses.dataclass(frozen=True)
class ConfigureRequest:
    """Everything the remote steps need about one machine."""

    machine_name: str
    address: str
    ssh_port: int
    ssh_user: str
    ssh_private_key: str = dataclasses.field(repr=False)
    host_key: str | None
    engine_port: int
    ca_cert_pem: str
    client_cert_pem: str
    client_key_pem: str = dataclasses.field(repr=False)
    # The checked ``engine`` input and the Host's driver, for the labels.
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)
    driver: str = "generic"
    install: dict[str, Any] | None = None

    def target(self) -> SSHTarget:
        """Return the SSH login for this machine."""
        return SSHTarget(
            self.address,
            self.ssh_port,
            self.ssh_user,
            self.ssh_private_key,
            self.host_key,
        )

    @property
    def docker_host(self) -> str:
        """Return the ``DOCKER_HOST`` URL of this machine."""
        return tlsprobe.docker_host_url(self.address, self.engine_port)


def _describe_file(content: bytes, mode: str) -> str:
    """Describe a placed file the way the observe script does."""
    digest = hashlib.sha256(content).hexdigest()
    return f"{digest} {int(mode, 8):o} root:root"


def applied_state(files: dict[str, bytes]) -> dict[str, Any]:
    """Return what the observe script prints right after ``files`` are placed."""
    described = {}
    for staged, destination, mode in remote_scripts.PLACED_FILES:
        if destination.endswith(".pem"):
            described[destination] = _describe_file(files[staged], mode)
    return {
        "daemon_json": files["daemon.json"].decode(),
        "dropin": files["dropin.conf"].decode(),
        "files": dict(sorted(described.items())),
        "docker_active": "active",
        "listener": "yes",
    }


async def _read_facts(session: RemoteSession, name: str) -> dict[str, str]:
    result = await session.run_script(
        remote_scripts.FACTS_SCRIPT, "reading host facts", as_root=False
    )
    return remote_scripts.parse_emitted(result.stdout)


def _check_access(session: RemoteSession, name: str, facts: dict[str, str]) -> None:
    """Raise HostNotSupportedError unless the login can run root commands on systemd."""
    host = session.target.host
    if facts.get("sudo") != "yes":
        raise HostNotSupportedError(
            f"{name}: the SSH user {session.target.user!r} cannot run sudo without "
            f"a password on {host}; allow it passwordless sudo (NOPASSWD in "
            f"/etc/sudoers.d) or log in as root"
        )
    if facts.get("systemd") != "yes":
        raise HostNotSupportedError(f"{name}: {host} does not run systemd; {_SUPPORTED_HINT}")


def _check_docker(session: RemoteSession, name: str, facts: dict[str, str]) -> None:
    """Raise HostNotSupportedError unless Docker and its unit are installed."""
    host = session.target.host
    if not facts.get("dockerd") or not facts.get("unit"):
        raise HostNotSupportedError(
            f"{name}: Docker is not installed on {host} (no dockerd or no "
            f"docker.service unit); {_SUPPORTED_HINT}, or set install.method "
            f"to package or script to install it"
        )


def _render_files(
    request: ConfigureRequest, server: IssuedCertificate, facts: dict[str, str]
) -> dict[str, bytes]:
    try:
        base = daemon_config.parse_daemon_json(facts.get("base_daemon_json", ""))
    except ValueError as error:
        raise HostNotSupportedError(
            f"{request.machine_name}: {daemon_config.DAEMON_JSON_PATH} on "
            f"{request.address} is not valid JSON ({error}); fix or remove it so "
            f"its settings can be kept alongside the TLS settings"
        ) from None
    settings = engine_options.render_settings(request.engine, request.driver)
    _reject_flag_conflicts(request, facts["unit"], settings)
    replaced = daemon_config.replaced_keys(base, request.engine_port, settings)
    if replaced:
        report(
            f"{request.machine_name}: replacing {', '.join(replaced)} from the "
            f"host's existing daemon.json with the TLS and engine settings"
        )
    return {
        "ca.pem": request.ca_cert_pem.encode(),
        "server.pem": server.cert_pem.encode(),
        "server-key.pem": server.key_pem.encode(),
        "daemon.json": daemon_config.render_daemon_json(
            base, request.engine_port, settings
        ).encode(),
        "dropin.conf": daemon_config.render_dropin(
            facts["unit"], engine_options.render_environment(request.engine)
        ).encode(),
    }


def _reject_flag_conflicts(
    request: ConfigureRequest, unit_text: str, settings: dict[str, object]
) -> None:
    """Raise before any change when the packaged unit sets an option as a flag."""
    conflicts = daemon_config.flag_conflicts(unit_text, list(settings))
    if conflicts:
        key = conflicts[0]
        raise InvalidInputError(
            engine_options.option_name(key, request.engine),
            settings[key],
            f"the docker.service unit on {request.address} already passes "
            f"--{key} to dockerd, and dockerd refuses to start when a flag and "
            f"daemon.json both set it; remove the option from the stack",
        )


async def _verify_tls(request: ConfigureRequest) -> dict:
    report(f"{request.machine_name}: checking mutual TLS on {request.docker_host}")
    version = await asyncio.to_thread(
        tlsprobe.wait_for_daemon,
        request.address,
        request.engine_port,
        request.ca_cert_pem,
        request.client_cert_pem,
        request.client_key_pem,
    )
    await asyncio.to_thread(
        tlsprobe.check_rejects_anonymous,
        request.address,
        request.engine_port,
        request.ca_cert_pem,
    )
    return version


async def _place_and_verify(
    session: RemoteSession,
    request: ConfigureRequest,
    server: IssuedCertificate,
    facts: dict[str, str],
    restore_on_failure: bool,
) -> dict[str, Any]:
    name = request.machine_name
    files = _render_files(request, server, facts)
    report(
        f"{name}: placing the certificates and daemon configuration, restarting "
        f"Docker with the TLS listener on port {request.engine_port}"
    )
    result = await session.run_script(
        remote_scripts.apply_script(files),
        "placing the certificates and configuration and restarting Docker",
        args=(str(request.engine_port),),
        timeout=remote_scripts.APPLY_TIMEOUT_SECONDS,
    )
    emitted = remote_scripts.parse_emitted(result.stdout)
    if emitted.get("restart_failed") == "yes":
        outcome = "restored" if emitted.get("rollback") == "restored" else "not restored"
        report(f"{name}: Docker did not start; the previous configuration was {outcome}")
        raise restart_failure.explain(
            name, request.docker_host, emitted, files["daemon.json"].decode(), request.engine
        )
    observed = remote_scripts.observed_state(emitted)

    try:
        version = await _verify_tls(request)
    except DockerMachineError as error:
        if restore_on_failure:
            await _restore_previous(session, request, error)
        raise
    await session.run_script(
        remote_scripts.FORGET_BACKUP_SCRIPT, "removing the previous configuration copy"
    )
    report(f"{name}: Docker {version.get('Version')} answers on {request.docker_host}")
    return {
        "docker_host": request.docker_host,
        "docker_version": version.get("Version", ""),
        "applied": applied_state(files),
        "observed": observed,
    }


async def configure_host(
    request: ConfigureRequest, server: IssuedCertificate, *, undo_on_failure: bool
) -> dict[str, Any]:
    """Place the certificates and configuration, restart Docker, check mTLS.

    With ``undo_on_failure`` (a first configure), a failure removes what was
    placed and restarts Docker on its Unix socket before the error is raised.
    Without it (an update), the configuration that was in force before is
    restored and Docker restarted with it. A failure of that cleanup is added
    to the error as a note.
    """
    name = request.machine_name
    settings = engine_install.InstallSettings.from_input(request.install)
    report(f"{name}: connecting to {request.target().label}")
    async with open_session(request.target()) as session:
        # Nothing of the TLS settings is on the host before _place_and_verify,
        # so a failure up to there has nothing to undo. On a ready host with
        # Docker this step runs at most four sessions (see the module doc).
        facts = await engine_install.wait_until_ready(session, name, settings)
        _check_access(session, name, facts)
        installed = await engine_install.install_if_needed(session, name, settings)
        if installed:
            facts = await _read_facts(session, name)
        _check_docker(session, name, facts)
        try:
            outputs = await _place_and_verify(
                session, request, server, facts, restore_on_failure=not undo_on_failure
            )
        except DockerMachineError as error:
            if undo_on_failure and not isinstance(
                error, (HostNotSupportedError, InvalidInputError)
            ):
                await _undo(session, request, error)
            raise
    if installed and outputs["docker_version"] != installed:
        raise engine_install.EngineInstallError(
            f"{request.machine_name}: Docker {installed} was installed but "
            f"{request.docker_host} reports version {outputs['docker_version']}"
        )
    return outputs


async def _restore_previous(
    session: RemoteSession, request: ConfigureRequest, error: DockerMachineError
) -> None:
    """Put back the configuration the apply script replaced; note the outcome."""
    report(
        f"{request.machine_name}: the new configuration failed the mutual-TLS "
        f"check, restoring the previous one"
    )
    try:
        result = await session.run_script(
            remote_scripts.RESTORE_SCRIPT,
            "restoring the previous configuration",
            timeout=remote_scripts.RESTART_TIMEOUT_SECONDS + 300,
        )
    except DockerMachineError as restore_error:
        error.add_note(f"restoring the previous configuration also failed: {restore_error}")
        return
    emitted = remote_scripts.parse_emitted(result.stdout)
    if emitted.get("rollback") == "restored":
        error.add_note(
            "The previous daemon configuration and certificates are back in place "
            "and Docker runs with them."
        )
    else:
        error.add_note(
            "Restoring the previous configuration failed as well: "
            + restart_failure.rollback_error_line(emitted)
        )


async def _undo(
    session: RemoteSession, request: ConfigureRequest, error: DockerMachineError
) -> None:
    report(f"{request.machine_name}: configure failed, removing what it placed")
    try:
        await session.run_script(
            remote_scripts.REMOVE_SCRIPT, "removing the TLS settings"
        )
    except DockerMachineError as cleanup_error:
        error.add_note(f"cleanup also failed: {cleanup_error}")


async def observe_host(request: ConfigureRequest) -> dict[str, Any]:
    """Return the configuration as the host has it now (for refresh).

    Refresh tries for a short while only: a host that is down is reported as
    drift by the caller rather than waited for.
    """
    async with open_session(
        request.target(), attempts=REFRESH_CONNECT_ATTEMPTS, deadline_seconds=30.0
    ) as session:
        result = await session.run_script(
            remote_scripts.OBSERVE_ONLY_SCRIPT,
            "reading the Docker configuration",
            args=(str(request.engine_port),),
        )
    return remote_scripts.observed_state(remote_scripts.parse_emitted(result.stdout))


async def unconfigure_host(request: ConfigureRequest) -> None:
    """Remove the TLS listener and certificates; Docker keeps its Unix socket."""
    report(f"{request.machine_name}: removing the TLS listener from {request.address}")
    async with open_session(request.target()) as session:
        await session.run_script(
            remote_scripts.REMOVE_SCRIPT, "removing the TLS settings"
        )
