"""Waiting for a host to be ready, and installing or upgrading Docker on it.

Runs over the configure step's SSH connection, before the host's facts are
read. First it waits for cloud-init to finish and, before an install, for
the dpkg and apt locks to be free. Then it installs Docker when the host has
none or runs another version than the one pinned: with an install script
(Docker's convenience script by default) or with the distribution's
``docker.io`` package. Last, it checks the version of the daemon that runs,
restarting Docker if the package left the old daemon up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from provider import install_scripts
from provider.errors import DockerMachineError, InvalidInputError, RemoteCommandError
from provider.progress import report
from provider.remote_scripts import parse_emitted

if TYPE_CHECKING:
    # Only for annotations: check_install runs in every preview, and
    # sshsession brings in asyncssh.
    from provider.sshsession import RemoteSession

METHODS = ("script", "package", "none")
DEFAULT_METHOD = "script"
DEFAULT_SCRIPT_URL = "https://get.docker.com"
DEFAULT_WAIT_TIMEOUT_SECONDS = 600
MAX_WAIT_TIMEOUT_SECONDS = 24 * 3600
WAIT_INTERVAL_SECONDS = 5.0
INSTALL_ATTEMPTS = 4
INSTALL_TIMEOUT_SECONDS = 1800.0
FIRST_RETRY_DELAY_SECONDS = 5.0

SETTINGS = (
    "method",
    "version",
    "script_url",
    "script_sha256",
    "package_source",
    "wait_timeout",
)
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~:-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(
    r"deb(?:\s+\[[^\]\n'\"\\$`]*\])?\s+(?P<uri>(?:https?|file):/\S+)\s+"
    r"(?P<suite>[0-9A-Za-z][0-9A-Za-z./_-]*)(?:\s+[0-9A-Za-z/_-]+)*"
)


class EngineInstallError(DockerMachineError):
    """Docker could not be installed, or runs another version than requested."""


class HostWaitTimeoutError(DockerMachineError, TimeoutError):
    """cloud-init or a dpkg/apt lock kept the host busy past the deadline."""


@dataclasses.dataclass(frozen=True)
class InstallSettings:
    """The checked ``install`` input of a DockerDaemonConfig."""

    method: str = "none"
    version: str | None = None
    script_url: str = DEFAULT_SCRIPT_URL
    script_sha256: str | None = None
    package_source: str | None = None
    wait_timeout: int = DEFAULT_WAIT_TIMEOUT_SECONDS

    @classmethod
    def from_input(cls, value: dict[str, Any] | None) -> InstallSettings:
        """Build the settings from a checked ``install`` input (``None``: none)."""
        if not value:
            return cls()
        settings = {key: value[key] for key in SETTINGS if value.get(key) is not None}
        # The engine passes every number as a float (8 arrives as 8.0), and
        # messages should show the whole seconds the user wrote.
        if "wait_timeout" in settings:
            settings["wait_timeout"] = int(settings["wait_timeout"])
        return cls(**settings)

    @property
    def source_suite(self) -> str:
        """Return the suite of ``package_source``, which the apt pin names."""
        match = _SOURCE.fullmatch(self.package_source or "")
        return match.group("suite") if match else ""


def _field(name: str) -> str:
    return f"install.{name}"


def _check_method(value: Any) -> str:
    if value not in METHODS:
        raise InvalidInputError(
            _field("method"), value, f"must be one of {', '.join(METHODS)}"
        )
    return value


def _check_version(value: Any) -> str:
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise InvalidInputError(
            _field("version"),
            value,
            "must be a Docker or Debian package version such as 24.0.7 or "
            "26.1.5+dfsg1-9+deb13u1+b1 (letters, digits and . + ~ : -)",
        )
    return value


def _check_script_url(value: Any, sha256: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            _field("script_url"), value, "must be an http:// or https:// URL"
        )
    if re.search(r"[\s'\"\\`$]", value):
        raise InvalidInputError(
            _field("script_url"), value, "must not contain spaces, quotes or $"
        )
    if parts.scheme == "http" and not sha256:
        raise InvalidInputError(
            _field("script_url"),
            value,
            "a plain http URL needs install.script_sha256, so that a script "
            "changed on the way is not run as root; set it or use https",
        )
    return value


def _check_sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidInputError(
            _field("script_sha256"),
            value,
            "must be 64 hexadecimal digits, as printed by sha256sum",
        )
    return value.lower()


def _check_package_source(value: Any) -> str:
    if not isinstance(value, str) or not _SOURCE.fullmatch(value.strip()):
        raise InvalidInputError(
            _field("package_source"),
            value,
            "must be one sources.list line such as "
            "'deb http://deb.debian.org/debian trixie main'",
        )
    return value.strip()


def _check_wait_timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(_field("wait_timeout"), value, "must be a number of seconds")
    if value != int(value) or not 1 <= value <= MAX_WAIT_TIMEOUT_SECONDS:
        raise InvalidInputError(
            _field("wait_timeout"),
            value,
            f"must be a whole number of seconds from 1 to {MAX_WAIT_TIMEOUT_SECONDS}",
        )
    return int(value)


def _check_combination(settings: dict[str, Any]) -> None:
    method = settings["method"]
    if method != "script":
        for key in ("script_url", "script_sha256"):
            if settings.get(key) is not None:
                raise InvalidInputError(
                    _field(key),
                    settings[key],
                    f"applies to method script only, and method is {method!r}; "
                    f"remove it or set install.method to script",
                )
    if method == "none":
        for key in ("version", "package_source"):
            if settings.get(key) is not None:
                raise InvalidInputError(
                    _field(key),
                    settings[key],
                    "method none installs nothing; remove it or set "
                    "install.method to package or script",
                )


def check_install(value: Any) -> dict[str, Any]:
    """Check the ``install`` input; return it with the defaults filled in.

    Settings that do not apply (script_url for method package) are left out.

    Raises InvalidInputError naming the first invalid setting.
    """
    if not isinstance(value, dict):
        raise InvalidInputError("install", value, "must be a mapping of install settings")
    unknown = sorted(set(value) - set(SETTINGS))
    if unknown:
        raise InvalidInputError(
            _field(unknown[0]),
            value[unknown[0]],
            f"unknown install setting; use {', '.join(SETTINGS)}",
        )
    settings = {key: value.get(key) for key in SETTINGS}
    settings["method"] = _check_method(settings["method"] or DEFAULT_METHOD)
    _check_combination(settings)
    if settings["version"] is not None:
        settings["version"] = _check_version(settings["version"])
    if settings["script_sha256"] is not None:
        settings["script_sha256"] = _check_sha256(settings["script_sha256"])
    if settings["method"] == "script":
        settings["script_url"] = _check_script_url(
            settings["script_url"] or DEFAULT_SCRIPT_URL, settings["script_sha256"]
        )
    if settings["package_source"] is not None:
        settings["package_source"] = _check_package_source(settings["package_source"])
    if settings["wait_timeout"] is None:
        settings["wait_timeout"] = DEFAULT_WAIT_TIMEOUT_SECONDS
    settings["wait_timeout"] = _check_wait_timeout(settings["wait_timeout"])
    # The engine drops keys whose value is None from stored outputs, so an
    # input that kept them would never equal the stored one and always diff.
    return {key: value for key, value in settings.items() if value is not None}


def version_matches(requested: str, installed: str) -> bool:
    """Tell whether Docker ``installed`` is the ``requested`` version.

    ``requested`` may be a prefix (24.0 matches 24.0.7) or a Debian package
    version whose upstream part the daemon reports (26.1.5+dfsg1-9+deb13u1+b1
    matches 26.1.5+dfsg1). A leading epoch (5:) is ignored.
    """
    requested = requested.split(":", 1)[-1]
    candidates = {requested}
    if "-" in requested:
        candidates.add(requested.rsplit("-", 1)[0])
    for candidate in candidates:
        if installed == candidate:
            return True
        if installed.startswith((candidate + ".", candidate + "+", candidate + "-")):
            return True
    return False


def dockerd_version(text: str) -> str:
    """Return the version in ``dockerd --version`` output, or ''."""
    match = re.search(r"version\s+([^\s,]+)", text)
    return match.group(1) if match else ""


def server_version(engine: dict[str, str]) -> str:
    """Return the version of the running daemon from an engine probe, or ''.

    The probe prints it from the docker client (``server_version``) or, on
    hosts without a client, as the body of the API's ``GET /version``
    (``version_json``).
    """
    if engine.get("server_version"):
        return engine["server_version"]
    try:
        body = json.loads(engine.get("version_json") or "{}")
    except ValueError:
        return ""
    version = body.get("Version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else ""


def install_reason(settings: InstallSettings, engine: dict[str, str]) -> str | None:
    """Return why Docker must be installed on a host, or None to leave it."""
    if settings.method == "none":
        return None
    if not engine.get("dockerd"):
        return "Docker is not installed"
    if settings.version is None:
        return None
    package = engine.get("package_version", "")
    installed = dockerd_version(engine.get("dockerd_version", ""))
    if package == settings.version or version_matches(settings.version, installed):
        return None
    return f"Docker {installed or package or 'of unknown version'} is installed"


def _pending(probe: dict[str, str]) -> list[str]:
    """Describe what a wait probe found busy; empty when the host is ready."""
    pending = []
    if probe.get("cloud_init") in ("running", "not started", "not run"):
        pending.append(f"cloud-init to finish (status {probe['cloud_init']})")
    for key, holders in sorted(probe.items()):
        if key.startswith("lock:"):
            pending.append(f"{key[5:]} held by pid {holders.strip()}")
    return pending


async def wait_until_ready(
    session: RemoteSession, name: str, settings: InstallSettings
) -> dict[str, str]:
    """Wait for cloud-init and, before an install, for the dpkg and apt locks.

    Polls every few seconds, printing what is awaited with attempt and limit,
    and raises HostWaitTimeoutError after ``settings.wait_timeout`` seconds.
    Returns the host facts the last probe printed (see
    ``remote_scripts.FACTS_BODY``), read once the host was ready.
    """
    check_locks = "yes" if settings.method != "none" else "no"
    attempts = int(settings.wait_timeout // WAIT_INTERVAL_SECONDS) + 1
    deadline = time.monotonic() + settings.wait_timeout
    for attempt in range(1, attempts + 1):
        result = await session.run_script(
            install_scripts.PREFLIGHT_SCRIPT,
            "checking cloud-init, the package locks and the host",
            args=(check_locks,),
            as_root=False,
        )
        probe = parse_emitted(result.stdout)
        if probe.get("cloud_init") == "error":
            report(f"{name}: cloud-init finished with errors; going on")
        pending = _pending(probe)
        if not pending:
            return probe
        report(f"{name}: waiting for {'; '.join(pending)} (attempt {attempt} of {attempts})")
        if attempt == attempts or time.monotonic() + WAIT_INTERVAL_SECONDS > deadline:
            break
        await asyncio.sleep(WAIT_INTERVAL_SECONDS)
    raise HostWaitTimeoutError(
        f"{name}: {session.target.host} was still busy after "
        f"{settings.wait_timeout} s: waiting for {'; '.join(pending)}. Let that "
        f"finish (or stop it) and run `pulumi up` again, or raise "
        f"install.waitTimeout (the input install.wait_timeout)"
    )


async def _probe_engine(session: RemoteSession) -> dict[str, str]:
    result = await session.run_script(
        install_scripts.ENGINE_PROBE_SCRIPT, "reading the installed Docker version"
    )
    return parse_emitted(result.stdout)


def _install_step(settings: InstallSettings) -> tuple[str, tuple[str, ...], str]:
    """Return the script, its arguments and a description for the install."""
    if settings.method == "package":
        return (
            install_scripts.PACKAGE_INSTALL_SCRIPT,
            (settings.version or "",),
            "installing the docker.io package",
        )
    return (
        install_scripts.SCRIPT_INSTALL_SCRIPT,
        (settings.script_url, settings.script_sha256 or "", settings.version or ""),
        f"running the install script {settings.script_url}",
    )


def _install_failure_hint(settings: InstallSettings, status: int | None) -> str:
    if status == install_scripts.EXIT_BAD_VERSION:
        return (
            f"apt has no docker.io version {settings.version!r}: list the versions "
            f"with `apt-cache policy docker.io` on the host, or add the source "
            f"that has it with install.packageSource"
        )
    if status == install_scripts.EXIT_CHECKSUM:
        return (
            "the script changed since its SHA-256 was pinned: review the new "
            "script, then set install.scriptSha256 to its checksum"
        )
    return ""


async def _run_install(session: RemoteSession, name: str, settings: InstallSettings) -> None:
    """Run the install, retrying transient download failures with backoff."""
    script, args, description = _install_step(settings)
    delay = FIRST_RETRY_DELAY_SECONDS
    for attempt in range(1, INSTALL_ATTEMPTS + 1):
        report(f"{name}: {description} (attempt {attempt} of {INSTALL_ATTEMPTS})")
        try:
            await session.run_script(
                script, description, args=args, timeout=INSTALL_TIMEOUT_SECONDS
            )
            return
        except RemoteCommandError as error:
            transient = error.exit_status == install_scripts.EXIT_TRANSIENT
            if not transient or attempt == INSTALL_ATTEMPTS:
                hint = _install_failure_hint(settings, error.exit_status)
                raise EngineInstallError(
                    f"{name}: {error}" + (f"\n{hint}" if hint else "")
                ) from None
            report(f"{name}: download failed, retrying in {delay:.0f} s: {error}")
        await asyncio.sleep(delay)
        delay *= 2


async def _check_running_version(
    session: RemoteSession, name: str, settings: InstallSettings
) -> str:
    """Restart Docker if it runs an older daemon than installed; return the version."""
    engine = await _probe_engine(session)
    installed = dockerd_version(engine.get("dockerd_version", ""))
    if not engine.get("dockerd") or not installed:
        raise EngineInstallError(
            f"{name}: the install finished but dockerd is not on "
            f"{session.target.host}; check the output of the install method "
            f"{settings.method!r}"
        )
    if engine.get("client") == "none":
        raise EngineInstallError(
            f"{name}: Docker {installed} is installed on {session.target.host}, "
            f"but its running version cannot be checked because the host has "
            f"neither the docker client nor curl. Install one of them there "
            f"(the client is Debian's docker-cli package) and run `pulumi up` again"
        )
    if server_version(engine) != installed:
        report(
            f"{name}: restarting Docker: the running daemon is "
            f"{server_version(engine) or 'not answering'}, the installed one {installed}"
        )
        await session.run_script(install_scripts.RESTART_SCRIPT, "restarting Docker")
        engine = await _probe_engine(session)
    running = server_version(engine)
    if running != installed:
        raise EngineInstallError(
            f"{name}: Docker {installed} is installed on {session.target.host} but "
            f"the daemon reports {running or 'nothing'} after a restart; see "
            f"`journalctl -u docker.service` there"
        )
    if settings.version and not version_matches(settings.version, running):
        raise EngineInstallError(
            f"{name}: requested Docker {settings.version} but {running} runs on "
            f"{session.target.host}; check that the install method installs "
            f"the requested version"
        )
    return running


async def install_if_needed(
    session: RemoteSession, name: str, settings: InstallSettings
) -> str | None:
    """Install Docker when the settings call for it; the host must be ready.

    Returns the server version the install left running, or None when
    nothing was installed.
    """
    if settings.method == "none":
        return None

    engine = await _probe_engine(session)
    reason = install_reason(settings, engine)
    if reason is None:
        return None

    requested = f"Docker {settings.version}" if settings.version else "Docker"
    report(f"{name}: {reason}; installing {requested} with method {settings.method}")
    await session.run_script(
        install_scripts.PACKAGE_SOURCE_SCRIPT,
        "setting the extra package source",
        args=(settings.package_source or "", settings.source_suite),
    )
    await _run_install(session, name, settings)

    running = await _check_running_version(session, name, settings)
    report(f"{name}: Docker {running} installed and running")
    return running
