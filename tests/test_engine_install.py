"""The pure parts of installing Docker: input checks, version matching, plans.

The wait probe also runs here on this machine's own dpkg lock, held by a
process that takes it the way dpkg does (an fcntl write lock).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading

import pytest

from provider import engine_install, install_scripts, vmimage
from provider.engine_install import InstallSettings, check_install
from provider.errors import InvalidInputError
from provider.program import parse_machine
from provider.remote_scripts import parse_emitted

SHA = "ab" * 32
TRIXIE = "deb http://deb.debian.org/debian trixie main"


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param({}, {"method": "script", "script_url": "https://get.docker.com"}, id="defaults"),
        pytest.param({"method": "package"}, {"method": "package"}, id="package"),
        pytest.param(
            {"method": "package", "version": "26.1.5+dfsg1-9+deb13u1+b1", "package_source": TRIXIE},
            {"version": "26.1.5+dfsg1-9+deb13u1+b1", "package_source": TRIXIE},
            id="package-pinned",
        ),
        pytest.param(
            {"script_url": "http://10.0.2.2:8080/i.sh", "script_sha256": SHA.upper()},
            {"script_url": "http://10.0.2.2:8080/i.sh", "script_sha256": SHA},
            id="http-with-checksum",
        ),
        pytest.param({"wait_timeout": 30.0}, {"wait_timeout": 30}, id="timeout-float"),
        pytest.param({"method": "none"}, {"method": "none", "wait_timeout": 600}, id="none"),
    ],
)
def test_check_install_accepts(value, expected):
    settings = check_install(value)
    for key, value in expected.items():
        assert settings[key] == value, key
    assert None not in settings.values()


@pytest.mark.parametrize(
    "value, field, fragment",
    [
        pytest.param({"method": "apt"}, "install.method", "script, package, none", id="method"),
        pytest.param({"colour": 1}, "install.colour", "unknown install setting", id="unknown"),
        pytest.param({"version": "1.0; rm -rf /"}, "install.version", "letters, digits", id="version"),
        pytest.param({"script_url": "ftp://x/y"}, "install.script_url", "http", id="url-scheme"),
        pytest.param(
            {"script_url": "http://example.test/i.sh"},
            "install.script_url",
            "script_sha256",
            id="http-without-checksum",
        ),
        pytest.param({"script_sha256": "abc"}, "install.script_sha256", "64", id="checksum"),
        pytest.param(
            {"method": "package", "script_url": "https://x.test/"},
            "install.script_url",
            "method script only",
            id="url-with-package",
        ),
        pytest.param(
            {"method": "none", "version": "24.0"}, "install.version", "installs nothing", id="none-version"
        ),
        pytest.param(
            {"method": "package", "package_source": "deb trixie"},
            "install.package_source",
            "sources.list line",
            id="source-malformed",
        ),
        pytest.param(
            {"method": "package", "package_source": TRIXIE + "\ndeb http://x.test/ y main"},
            "install.package_source",
            "sources.list line",
            id="source-two-lines",
        ),
        pytest.param({"wait_timeout": 0}, "install.wait_timeout", "1 to", id="timeout-zero"),
        pytest.param({"wait_timeout": "10m"}, "install.wait_timeout", "seconds", id="timeout-text"),
        pytest.param("package", "install", "mapping", id="not-mapping"),
    ],
)
def test_check_install_rejects(value, field, fragment):
    with pytest.raises(InvalidInputError) as raised:
        check_install(value)
    assert raised.value.field == field
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    "requested, installed, expected",
    [
        ("26.1.5+dfsg1-9+deb13u1+b1", "26.1.5+dfsg1", True),
        ("20.10.24+dfsg1-1+deb12u1+b6", "20.10.24+dfsg1", True),
        ("20.10.24+dfsg1-1+deb12u1+b6", "26.1.5+dfsg1", False),
        ("24.0", "24.0.7", True),
        ("24.0", "24.01.1", False),
        ("5:24.0.7-1~debian.12~bookworm", "24.0.7", True),
        ("26.1", "26.10.0", False),
    ],
)
def test_version_matches(requested, installed, expected):
    assert engine_install.version_matches(requested, installed) is expected


def test_dockerd_version_parsed():
    text = "Docker version 26.1.5+dfsg1, build a72d7cd"
    assert engine_install.dockerd_version(text) == "26.1.5+dfsg1"


# A shortened GET /version body of dockerd 26.1.5, whose components come
# before the engine's own Version.
VERSION_JSON = (
    '{"Platform":{"Name":""},"Components":[{"Name":"Engine",'
    '"Version":"26.1.5+dfsg1"},{"Name":"containerd","Version":"1.6.20~ds1"}],'
    '"Version":"26.1.5+dfsg1","ApiVersion":"1.45"}'
)


@pytest.mark.parametrize(
    "engine, expected",
    [
        pytest.param({"client": "docker", "server_version": "20.10.24+dfsg1"}, "20.10.24+dfsg1", id="client"),
        pytest.param({"client": "curl", "version_json": VERSION_JSON}, "26.1.5+dfsg1", id="api"),
        pytest.param({"client": "curl", "version_json": ""}, "", id="api-no-answer"),
        pytest.param({"client": "curl", "version_json": "curl: (7) failed"}, "", id="api-not-json"),
        pytest.param({"client": "curl", "version_json": '["26.1.5"]'}, "", id="api-not-object"),
        pytest.param({"client": "none"}, "", id="no-client"),
    ],
)
def test_server_version_from_probe(engine, expected):
    assert engine_install.server_version(engine) == expected


OLD = {
    "dockerd": "/usr/sbin/dockerd",
    "dockerd_version": "Docker version 20.10.24+dfsg1, build 5d6db84",
    "package_version": "20.10.24+dfsg1-1+deb12u1+b6",
}


@pytest.mark.parametrize(
    "settings, engine, expected",
    [
        pytest.param(InstallSettings(), {}, None, id="none-missing"),
        pytest.param(InstallSettings("package"), {}, "not installed", id="missing"),
        pytest.param(InstallSettings("script"), OLD, None, id="present-unpinned"),
        pytest.param(InstallSettings("package", "20.10.24+dfsg1-1+deb12u1+b6"), OLD, None, id="same-package"),
        pytest.param(InstallSettings("script", "20.10"), OLD, None, id="same-prefix"),
        pytest.param(
            InstallSettings("package", "26.1.5+dfsg1-9+deb13u1+b1"),
            OLD,
            "Docker 20.10.24+dfsg1 is installed",
            id="upgrade",
        ),
    ],
)
def test_install_reason(settings, engine, expected):
    reason = engine_install.install_reason(settings, engine)
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


def test_settings_wait_timeout_whole_seconds():
    settings = InstallSettings.from_input({"method": "package", "wait_timeout": 8.0})
    assert settings.wait_timeout == 8
    assert isinstance(settings.wait_timeout, int)


def test_source_suite_from_line():
    line = "deb [arch=amd64] http://deb.debian.org/debian trixie main"
    settings = InstallSettings("package", package_source=check_install(
        {"method": "package", "package_source": line})["package_source"])
    assert settings.source_suite == "trixie"


def test_pending_names_lock_holder():
    probe = {"cloud_init": "running", "lock:/var/lib/dpkg/lock": "42(apt-get) "}
    pending = engine_install._pending(probe)
    assert pending[0] == "cloud-init to finish (status running)"
    assert pending[1] == "/var/lib/dpkg/lock held by pid 42(apt-get)"
    assert engine_install._pending({"cloud_init": "done"}) == []


def test_stack_install_settings_renamed():
    entry = {
        "name": "m",
        "address": "127.0.0.1",
        "sshPrivateKey": "key",
        "install": {"method": "package", "packageSource": TRIXIE, "waitTimeout": 60},
    }
    machine = parse_machine(entry, 0)
    assert machine.install == {
        "method": "package",
        "package_source": TRIXIE,
        "wait_timeout": 60,
    }


def test_stack_install_unknown_setting():
    entry = {"name": "m", "address": "127.0.0.1", "sshPrivateKey": "k", "install": {"url": "x"}}
    with pytest.raises(InvalidInputError) as raised:
        parse_machine(entry, 2)
    assert raised.value.field == "machines[2].install.url"


# struct flock on x86-64 Linux: type, whence, start, len, pid (dpkg's lock).
_HOLD_FCNTL_LOCK = (
    'open(my $f, "+<", $ARGV[0]) or die "open: $!";'
    'fcntl($f, F_SETLK, pack("s s x4 q q i x4", F_WRLCK, SEEK_SET, 0, 0, 0))'
    ' or die "lock: $!"; $| = 1; print "held\\n"; sleep 30'
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(install_scripts.PACKAGE_LOCKS[0]),
    reason="needs root and dpkg on this machine",
)
def test_preflight_sees_dpkg_lock():
    holder = subprocess.Popen(
        ["perl", "-MFcntl", "-e", _HOLD_FCNTL_LOCK, install_scripts.PACKAGE_LOCKS[0]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = subprocess.run(
            ["sh", "-s", "--", "yes"],
            input=install_scripts.PREFLIGHT_SCRIPT,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "de_DE.UTF-8"},
        )
    finally:
        holder.kill()
        holder.wait()
    free = subprocess.run(
        ["sh", "-s", "--", "yes"],
        input=install_scripts.PREFLIGHT_SCRIPT,
        capture_output=True,
        text=True,
    )
    assert busy.returncode == 0, busy.stderr
    held = parse_emitted(busy.stdout)
    assert held[f"lock:{install_scripts.PACKAGE_LOCKS[0]}"] == f"{holder.pid}(perl) "
    assert not any(key.startswith("lock:") for key in parse_emitted(free.stdout))


def test_image_variant_drops_docker():
    assert "docker.io" not in vmimage.image_packages(with_docker=False)
    assert vmimage.image_packages() == vmimage.PACKAGES
    links = vmimage.image_symlinks(with_docker=False)
    assert not any("docker" in link for link in links)
    assert vmimage.recipe_hash("6.1.0-1", with_docker=False) != vmimage.recipe_hash("6.1.0-1")


_HARMLESS_SCRIPT = b'echo "install script ran with VERSION=$VERSION"\n'


class _StatusServer(http.server.ThreadingHTTPServer):
    """Serves _HARMLESS_SCRIPT on 127.0.0.1 with the HTTP status a test sets."""

    status = 200

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StatusHandler)


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(_HARMLESS_SCRIPT)))
        self.end_headers()
        self.wfile.write(_HARMLESS_SCRIPT)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def status_server():
    server = _StatusServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


GOOD_SHA = hashlib.sha256(_HARMLESS_SCRIPT).hexdigest()


@pytest.mark.parametrize(
    "status, sha256, exit_status",
    [
        pytest.param(503, GOOD_SHA, install_scripts.EXIT_TRANSIENT, id="http-503"),
        pytest.param(429, GOOD_SHA, install_scripts.EXIT_TRANSIENT, id="http-429"),
        pytest.param(404, GOOD_SHA, 1, id="http-404"),
        pytest.param(200, "0" * 64, install_scripts.EXIT_CHECKSUM, id="checksum"),
        pytest.param(200, GOOD_SHA, 0, id="runs"),
    ],
)
def test_script_install_exit_status(status_server, status, sha256, exit_status):
    status_server.status = status
    url = f"http://127.0.0.1:{status_server.server_address[1]}/install.sh"
    result = subprocess.run(
        ["sh", "-s", "--", url, sha256, "1.2.3"],
        input=install_scripts.SCRIPT_INSTALL_SCRIPT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == exit_status, result.stderr
    if exit_status == 0:
        assert "install script ran with VERSION=1.2.3" in result.stdout


def test_script_install_refused_connection():
    # Port 9 (discard) on loopback, where test machines run no service.
    result = subprocess.run(
        ["sh", "-s", "--", "http://127.0.0.1:9/install.sh", "", ""],
        input=install_scripts.SCRIPT_INSTALL_SCRIPT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == install_scripts.EXIT_TRANSIENT
    assert "curl exit status 7" in result.stderr
