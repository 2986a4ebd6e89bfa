"""``pulumi-docker-machine`` against a stand-in ``pulumi`` and local servers.

A script named ``pulumi``, first on PATH, prints the outputs that a test
defines for each stack in the JSON shape of ``pulumi stack output --json``,
and logs every call with its arguments and working directory. Everything else
is real: the tool runs as its own process, the live check dials TLS servers
on 127.0.0.1 started here, and ``ssh`` is OpenSSH's client against an
asyncssh server on 127.0.0.1. test_cli_bad_input.py runs commands against the
real pulumi CLI.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncssh
import pytest

from provider import certdir, pki, tlsprobe
from provider.cli import commands
from provider.cli.errors import EXIT_FAILURE
from provider.cli.stackoutputs import Machine
from provider.errors import DaemonResponseError
from tests.harness.netguard import check_dialable

PROJECT_DIR = Path(__file__).resolve().parents[1]
LOOPBACK = check_dialable("127.0.0.1")
PROJECT_NAME = "stand-in-project"
TOOL_TIMEOUT_SECONDS = 60

STAND_IN_PULUMI = """\
#!{python}
import json, os, sys
from pathlib import Path

arguments = [a for a in sys.argv[1:] if a != "--non-interactive"]
with open(os.environ["STAND_IN_PULUMI_LOG"], "a") as log:
    log.write(json.dumps({{"args": arguments, "cwd": os.getcwd()}}) + "\\n")
stacks = json.loads(Path(os.environ["STAND_IN_PULUMI_STACKS"]).read_text())
if arguments == ["stack", "--show-name"]:
    if not any(Path(name).exists() for name in ("Pulumi.yaml", "Pulumi.yml")):
        sys.exit("error: no Pulumi.yaml project file found")
    print(stacks["selected"])
    sys.exit(0)
if arguments[:3] == ["stack", "output", "--json"]:
    name = arguments[arguments.index("--stack") + 1]
    if name not in stacks["outputs"]:
        sys.exit(f'error: no stack named "{{name}}" found')
    outputs = dict(stacks["outputs"][name])
    if "--show-secrets" not in arguments and "machineSecrets" in outputs:
        outputs["machineSecrets"] = "[secret]"
    print(json.dumps(outputs))
    sys.exit(0)
sys.exit(f"error: the stand-in pulumi has no command {{arguments}}")
"""


class StandInPulumi:
    """The ``pulumi`` script, its stacks and its call log, under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        script = bin_dir / "pulumi"
        script.write_text(STAND_IN_PULUMI.format(python=sys.executable))
        script.chmod(0o755)
        self.stacks_file = directory / "stacks.json"
        self.log_file = directory / "pulumi-calls.jsonl"
        self.log_file.touch()
        self.home = directory / "machines-home"
        self.project_dir = directory / "project"
        self.project_dir.mkdir()
        (self.project_dir / "Pulumi.yaml").write_text(f"name: {PROJECT_NAME}\n")
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(PROJECT_DIR),
            "STAND_IN_PULUMI_LOG": str(self.log_file),
            "STAND_IN_PULUMI_STACKS": str(self.stacks_file),
            "PULUMI_DOCKER_MACHINE_HOME": str(self.home),
        }
        self.env.pop("SHELL", None)

    def define(self, outputs: dict[str, dict], selected: str = "dev") -> None:
        """Set each stack's outputs and the stack selected in the project."""
        document = {"outputs": outputs, "selected": selected}
        self.stacks_file.write_text(json.dumps(document))

    def calls(self) -> list[dict]:
        """Return the logged calls, each with ``args`` and ``cwd``."""
        lines = self.log_file.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def run_tool(
        self, *args: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``pulumi-docker-machine ARGS`` from this worktree's sources."""
        return subprocess.run(
            [sys.executable, "-m", "provider.cli", *args],
            cwd=cwd or self.project_dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_SECONDS,
        )


class StackPKI:
    """A stack's CA with its client certificate, and files for TLS servers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = pki.create_ca()
        self.client = pki.issue_client_certificate(self.ca.cert_pem, self.ca.key_pem)

    def server_context(self, ca: pki.IssuedCertificate, name: str) -> ssl.SSLContext:
        """Return a server context whose certificate ``ca`` signed for 127.0.0.1.

        The server requires a client certificate of this stack's CA, as dockerd
        with ``tlsverify`` does.
        """
        server = pki.issue_server_certificate(ca.cert_pem, ca.key_pem, [LOOPBACK])
        cert_file = self.directory / f"{name}-cert.pem"
        key_file = self.directory / f"{name}-key.pem"
        cert_file.write_text(server.cert_pem)
        key_file.write_text(server.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(cadata=self.ca.cert_pem)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def machine_outputs(self, port: int | None) -> dict:
        """Return a machine's public outputs for a daemon on 127.0.0.1:``port``."""
        docker_host = f"tcp://{LOOPBACK}" + (f":{port}" if port is not None else "")
        return {
            "DOCKER_HOST": docker_host,
            "address": LOOPBACK,
            "driver": "generic",
            "state": "running",
            "dockerVersion": "20.10.24",
            "caCertPem": self.ca.cert_pem,
            "clientCertPem": self.client.cert_pem,
        }


class DaemonHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that returns the status and body set for each path."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        status, body = self.server.responses.get(self.path, (404, b"page not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


class TLSServer:
    """An HTTPS server on 127.0.0.1 with fixed responses, in a thread."""

    def __init__(self, context: ssl.SSLContext, responses: dict[str, tuple]) -> None:
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), DaemonHandler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.responses = responses
        self.httpd.timeout = 5
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


DOCKER_RESPONSES = {
    "/_ping": (200, b"OK"),
    "/version": (200, b'{"Version": "20.10.24", "ApiVersion": "1.41"}'),
}
PROXY_RESPONSES = {"/_ping": (502, b"Bad Gateway")}


def free_loopback_port() -> int:
    """Return a TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@pytest.fixture
def stand_in(tmp_path):
    return StandInPulumi(tmp_path)


@pytest.fixture(scope="module")
def stack_pki(tmp_path_factory):
    return StackPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(stack_pki):
    """A daemon, a proxy, a daemon of a foreign CA and a silent listener."""
    other_ca = pki.create_ca(common_name="another CA")
    contexts = {
        "daemon": stack_pki.server_context(stack_pki.ca, "daemon"),
        "proxy": stack_pki.server_context(stack_pki.ca, "proxy"),
        "foreign": stack_pki.server_context(other_ca, "foreign"),
    }
    started = {
        "daemon": TLSServer(contexts["daemon"], DOCKER_RESPONSES),
        "proxy": TLSServer(contexts["proxy"], PROXY_RESPONSES),
        "foreign": TLSServer(contexts["foreign"], DOCKER_RESPONSES),
    }
    # The kernel completes the TCP handshake for the backlog, so a client
    # connects, sends its ClientHello and then waits for a response that never
    # comes, because accept() is never called.
    silent = socket.create_server((LOOPBACK, 0), backlog=8)
    ports = {name: server.port for name, server in started.items()}
    ports["silent"] = silent.getsockname()[1]
    yield ports
    silent.close()
    for server in started.values():
        server.close()


# ---------------------------------------------------------------- ls


LS_TIMEOUT_SECONDS = 1.0


@pytest.fixture(scope="module")
def ls_rows(tmp_path_factory, stack_pki, servers):
    """Run ``ls`` once on a stack with one machine per outcome; return its rows."""
    stand_in = StandInPulumi(tmp_path_factory.mktemp("ls"))
    public = {
        "good": stack_pki.machine_outputs(servers["daemon"]),
        "no-key": stack_pki.machine_outputs(servers["daemon"]),
        "bad-host": stack_pki.machine_outputs(None),
        "closed": stack_pki.machine_outputs(free_loopback_port()),
        "foreign-ca": stack_pki.machine_outputs(servers["foreign"]),
        "silent": stack_pki.machine_outputs(servers["silent"]),
        "proxy": stack_pki.machine_outputs(servers["proxy"]),
    }
    secrets = {
        name: {"clientKeyPem": stack_pki.client.key_pem}
        for name in public
        if name != "no-key"
    }
    stand_in.define({"dev": {"machines": public, "machineSecrets": secrets}})
    started = time.monotonic()
    completed = stand_in.run_tool(
        "ls", "--stack", "dev", "--timeout", str(LS_TIMEOUT_SECONDS)
    )
    elapsed = time.monotonic() - started
    lines = completed.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    return completed, rows, elapsed


def test_ls_lists_every_machine(ls_rows):
    completed, rows, _ = ls_rows
    assert completed.returncode == 0, completed.stderr
    assert sorted(rows) == sorted(
        ["good", "no-key", "bad-host", "closed", "foreign-ca", "silent", "proxy"]
    )


@pytest.mark.parametrize(
    "name,fragments",
    [
        ("good", ["OK"]),
        ("no-key", ["has no clientKeyPem", "pulumi up"]),
        ("bad-host", ["invalid DOCKER_HOST", "'tcp://127.0.0.1'"]),
        ("closed", ["network error", "could not connect"]),
        ("foreign-ca", ["TLS error", "was rejected"]),
        ("silent", ["network error", f"timed out after {LS_TIMEOUT_SECONDS:g} s"]),
        ("proxy", ["HTTP error", "HTTP 502"]),
    ],
)
def test_ls_row_shows_own_result(ls_rows, name, fragments):
    _, rows, _ = ls_rows
    for fragment in fragments:
        assert fragment in rows[name]


def test_ls_proxy_row_not_tls_error(ls_rows):
    _, rows, _ = ls_rows
    assert "TLS error" not in rows["proxy"]


def test_ls_timeout_bounds_run(ls_rows):
    # The checks run in parallel: the silent listener costs about one timeout
    # for the handshake. The margin covers the interpreter's start on a busy
    # machine.
    _, _, elapsed = ls_rows
    assert elapsed < 30


def test_live_check_missing_key_in_row(stack_pki):
    machine = Machine(
        name="no-key",
        project=PROJECT_NAME,
        stack="dev",
        public=stack_pki.machine_outputs(9),
        secrets={},
    )
    cell = commands.live_check(machine, timeout=1)
    assert "has no clientKeyPem" in cell


# ---------------------------------------------------------------- tlsprobe


def test_fetch_version_from_daemon(stack_pki, servers):
    version = tlsprobe.fetch_version(
        LOOPBACK,
        servers["daemon"],
        stack_pki.ca.cert_pem,
        stack_pki.client.cert_pem,
        stack_pki.client.key_pem,
        timeout=5,
    )
    assert version["Version"] == "20.10.24"


def test_fetch_version_http_error_kind(stack_pki, servers):
    with pytest.raises(DaemonResponseError) as caught:
        tlsprobe.fetch_version(
            LOOPBACK,
            servers["proxy"],
            stack_pki.ca.cert_pem,
            stack_pki.client.cert_pem,
            stack_pki.client.key_pem,
            timeout=5,
        )
    assert "HTTP 502" in str(caught.value)
    assert "proxy" in str(caught.value)


# ---------------------------------------------------------------- stack selection


@pytest.fixture
def one_machine(stand_in, stack_pki):
    """Define stack ``dev``, selected in the project, with machine ``build-1``."""
    public = {"build-1": stack_pki.machine_outputs(2376)}
    secrets = {"build-1": {"clientKeyPem": stack_pki.client.key_pem}}
    stand_in.define({"dev": {"machines": public, "machineSecrets": secrets}})
    return stand_in


def test_selected_stack_without_stack_option(one_machine):
    completed = one_machine.run_tool("ip", "build-1")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == LOOPBACK
    calls = one_machine.calls()
    assert calls[0]["args"] == ["stack", "--show-name"]
    assert calls[1]["args"][-2:] == ["--stack", "dev"]


def test_env_selected_stack_writes_certs(one_machine):
    completed = one_machine.run_tool("env", "--shell", "bash", "build-1")
    assert completed.returncode == 0, completed.stderr
    directory = one_machine.home / "machines" / PROJECT_NAME / "dev" / "build-1"
    assert f"export DOCKER_CERT_PATH='{directory}'" in completed.stdout
    assert (directory / "key.pem").read_text() == one_machine_key(one_machine)
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600


def one_machine_key(stand_in: StandInPulumi) -> str:
    stacks = json.loads(stand_in.stacks_file.read_text())
    return stacks["outputs"]["dev"]["machineSecrets"]["build-1"]["clientKeyPem"]


@pytest.mark.parametrize("project_file", ["Pulumi.yaml", "Pulumi.yml"])
def test_cwd_option_with_project_file(one_machine, tmp_path, project_file):
    project = tmp_path / "elsewhere"
    project.mkdir()
    (project / project_file).write_text("name: other-project\n")
    completed = one_machine.run_tool(
        "inspect", "--cwd", str(project), "build-1", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["project"] == "other-project"
    assert all(call["cwd"] == str(project) for call in one_machine.calls())


def test_cwd_option_without_project_file(one_machine, tmp_path):
    completed = one_machine.run_tool("ip", "--cwd", str(tmp_path), "build-1")
    assert completed.returncode == 3
    assert "no Pulumi.yaml or Pulumi.yml" in completed.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e300", "soon"])
@pytest.mark.parametrize("command", ["ls", "status"])
def test_timeout_option_rejected(one_machine, command, timeout):
    arguments = [command, "--timeout", timeout]
    if command == "status":
        arguments.append("build-1")
    completed = one_machine.run_tool(*arguments)
    assert completed.returncode == 2, completed.stderr
    assert f"argument --timeout: invalid value '{timeout}'" in completed.stderr
    assert "above 0 and at most 3600" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert one_machine.calls() == []


# ---------------------------------------------------------------- env --unset


def test_env_unset_reads_no_stack(one_machine):
    completed = one_machine.run_tool(
        "env", "--unset", "--shell", "bash", "--stack", "nosuch", "build-1"
    )
    assert completed.returncode == 0, completed.stderr
    assert "unset DOCKER_HOST" in completed.stdout
    assert one_machine.calls() == []


def test_env_unset_no_proxy_reads_stack(one_machine):
    one_machine.env["NO_PROXY"] = f"example.org,{LOOPBACK}"
    completed = one_machine.run_tool(
        "env", "--unset", "--no-proxy", "--shell", "bash", "--stack", "dev", "build-1"
    )
    assert completed.returncode == 0, completed.stderr
    assert "export NO_PROXY='example.org'" in completed.stdout
    assert len(one_machine.calls()) == 1


# ---------------------------------------------------------------- ssh


class SSHServer:
    """An asyncssh server on 127.0.0.1 that runs no command, only reports it."""

    def __init__(self, host_key: asyncssh.SSHKey, client_key: asyncssh.SSHKey) -> None:
        self.commands: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        authorized = asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        )

        async def start() -> asyncssh.SSHAcceptor:
            return await asyncssh.listen(
                LOOPBACK,
                0,
                server_host_keys=[host_key],
                authorized_client_keys=authorized,
                process_factory=self._handle,
            )

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.port = self.server.sockets[0].getsockname()[1]

    def _handle(self, process: asyncssh.SSHServerProcess) -> None:
        self.commands.append(process.command or "")
        process.stdout.write(f"ran: {process.command}\n")
        process.exit(3)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def ssh_keys():
    return {
        "host": asyncssh.generate_private_key("ssh-ed25519"),
        "other-host": asyncssh.generate_private_key("ssh-ed25519"),
        "client": asyncssh.generate_private_key("ssh-ed25519"),
    }


@pytest.fixture(scope="module")
def ssh_server(ssh_keys):
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    server = SSHServer(ssh_keys["host"], ssh_keys["client"])
    yield server
    server.close()


def define_ssh_machine(stand_in, stack_pki, ssh_keys, port, recorded_key, secrets):
    public = stack_pki.machine_outputs(2376)
    public.update(
        {
            "sshPort": port,
            "sshUser": "tester",
            "sshHostKey": ssh_keys[recorded_key].export_public_key().decode().strip(),
        }
    )
    outputs = {"machines": {"build-1": public}, "machineSecrets": {"build-1": secrets}}
    stand_in.define({"dev": outputs})


def client_secrets(ssh_keys) -> dict:
    return {"sshPrivateKey": ssh_keys["client"].export_private_key().decode()}


def test_ssh_recorded_host_key(stand_in, stack_pki, ssh_keys, ssh_server):
    define_ssh_machine(
        stand_in, stack_pki, ssh_keys, ssh_server.port, "host", client_secrets(ssh_keys)
    )
    completed = stand_in.run_tool("ssh", "--stack", "dev", "build-1", "echo", "hi")
    assert completed.returncode == 3, completed.stderr
    assert completed.stdout == "ran: echo hi\n"


def test_ssh_rejects_changed_host_key(stand_in, stack_pki, ssh_keys, ssh_server):
    secrets = client_secrets(ssh_keys)
    define_ssh_machine(
        stand_in, stack_pki, ssh_keys, ssh_server.port, "other-host", secrets
    )
    runs_before = len(ssh_server.commands)
    completed = stand_in.run_tool("ssh", "--stack", "dev", "build-1", "echo", "hi")
    assert completed.returncode == 255
    assert "Host key verification failed" in completed.stderr
    assert completed.stdout == ""
    assert len(ssh_server.commands) == runs_before


def test_ssh_without_private_key(stand_in, stack_pki, ssh_keys):
    define_ssh_machine(stand_in, stack_pki, ssh_keys, 22, "host", {"clientKeyPem": "x"})
    completed = stand_in.run_tool("ssh", "--stack", "dev", "build-1")
    assert completed.returncode == EXIT_FAILURE
    assert "has no sshPrivateKey" in completed.stderr


def test_machine_secret_missing_exit_code():
    machine = Machine(name="m", project="p", stack="dev", public={}, secrets={})
    with pytest.raises(commands.CliError) as caught:
        machine.secret("sshPrivateKey")
    assert caught.value.exit_code == EXIT_FAILURE


# ---------------------------------------------------------------- certificate directory


def test_cert_dir_without_fchmod(tmp_path, monkeypatch):
    # Windows Python before 3.13 has no os.fchmod. The mode of each file is
    # recorded when it is renamed into place, the moment it becomes visible.
    monkeypatch.delattr(os, "fchmod", raising=False)
    modes_at_rename = {}
    real_replace = os.replace

    def recording_replace(source, destination):
        modes_at_rename[Path(destination).name] = stat.S_IMODE(os.stat(source).st_mode)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", recording_replace)
    directory = certdir.write_cert_dir(
        tmp_path / "build-1", "CA PEM", "CERT PEM", "KEY PEM"
    )
    assert modes_at_rename == {"ca.pem": 0o644, "cert.pem": 0o644, "key.pem": 0o600}
    assert (directory / "key.pem").read_text() == "KEY PEM"
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = sorted(path.name for path in directory.iterdir())
    assert names == ["ca.pem", "cert.pem", "key.pem"]


def test_cert_dir_rewrite_replaces_key(tmp_path):
    directory = tmp_path / "build-1"
    certdir.write_cert_dir(directory, "CA PEM", "CERT PEM", "OLD KEY")
    certdir.write_cert_dir(directory, "CA PEM", "CERT PEM", "NEW KEY")
    assert (directory / "key.pem").read_text() == "NEW KEY"
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    assert len(list(directory.iterdir())) == 3
