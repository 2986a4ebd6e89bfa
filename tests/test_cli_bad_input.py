"""Bad input to ``pulumi-docker-machine`` and the live check's error kinds.

The stacks here live on private file backends of the real ``pulumi`` CLI.
One has no outputs; another gets machine outputs through ``pulumi stack
import``, so every command can be given an unknown machine without a VM,
and the selected stack, ``--cwd`` and a machine without an SSH key are
read through the real CLI. The live check runs against a closed port and a
TLS server of another CA.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from provider import pki
from provider.cli import commands
from provider.cli.stackoutputs import Machine
from tests.harness.netguard import check_dialable
from tests.harness.pulumi_cli import PROJECT_DIR, PROJECT_NAME

pytestmark = pytest.mark.engine

COMMANDS = ["env", "context", "status", "ip", "url", "config", "inspect", "ssh"]
RECORDED_HOST_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEiwsmk/z7/wutrP9WfO2hGVHyhRLBE1hYgJn8dbIXh7"
)


def run_tool(stack, *args, cwd=PROJECT_DIR, env=None):
    """Run the tool with the stack's backend and passphrase.

    ``$SHELL`` is dropped, as in a CI job, unless ``env`` sets it.
    """
    environ = {key: value for key, value in stack.env.items() if key != "SHELL"}
    return subprocess.run(
        [shutil.which("pulumi-docker-machine"), *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def empty_stack(stack_factory):
    """A stack that was created but never deployed."""
    return stack_factory()


@pytest.fixture(scope="module")
def imported_stack(stack_factory):
    """A stack whose state contains the outputs of one machine, ``build-1``."""
    stack = stack_factory()
    deployment = stack.export()
    urn = (
        f"urn:pulumi:{stack.name}::{PROJECT_NAME}::pulumi:pulumi:Stack::"
        f"{PROJECT_NAME}-{stack.name}"
    )
    ca = pki.create_ca()
    client = pki.issue_client_certificate(ca.cert_pem, ca.key_pem)
    public = {
        "DOCKER_HOST": "tcp://127.0.0.1:9",
        "DOCKER_TLS_VERIFY": "1",
        "address": "127.0.0.1",
        "driver": "generic",
        "state": "running",
        "caCertPem": ca.cert_pem,
        "clientCertPem": client.cert_pem,
        # A host key but no sshPrivateKey below: `ssh` lacks only the key.
        "sshHostKey": RECORDED_HOST_KEY,
    }
    deployment["deployment"]["resources"] = [
        {
            "urn": urn,
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": {
                "machines": {"build-1": public},
                "machineSecrets": {"build-1": {"clientKeyPem": client.key_pem}},
            },
        }
    ]
    state_file = stack.workdir / "import.json"
    state_file.write_text(json.dumps(deployment))
    stack.run("stack", "import", "--file", str(state_file))
    return stack


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_machine_per_command(imported_stack, command):
    completed = run_tool(imported_stack, command, "--stack", imported_stack.name, "nosuch")
    assert completed.returncode == 5, completed.stderr
    assert "machine 'nosuch' not found" in completed.stderr
    assert "build-1" in completed.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_stack_per_command(empty_stack, command):
    completed = run_tool(empty_stack, command, "--stack", "nosuch", "build-1")
    assert completed.returncode == 3, completed.stderr
    assert "stack 'nosuch' not found" in completed.stderr


def test_ls_missing_stack(empty_stack):
    completed = run_tool(empty_stack, "ls", "--stack", "nosuch")
    assert completed.returncode == 3, completed.stderr
    assert "pulumi stack ls" in completed.stderr


@pytest.mark.parametrize("command", ["env", "ssh", "inspect", "ls"])
def test_stack_without_outputs(empty_stack, command):
    args = [command, "--stack", empty_stack.name] + ([] if command == "ls" else ["build-1"])
    completed = run_tool(empty_stack, *args)
    assert completed.returncode == 4, completed.stderr
    assert "has no machines output" in completed.stderr
    assert "pulumi up" in completed.stderr


def test_no_project_directory(empty_stack, tmp_path):
    completed = run_tool(empty_stack, "ip", "build-1", cwd=tmp_path)
    assert completed.returncode == 3, completed.stderr
    assert "--cwd" in completed.stderr


def test_cwd_without_project(empty_stack, tmp_path):
    completed = run_tool(empty_stack, "ip", "--cwd", str(tmp_path), "build-1")
    assert completed.returncode == 3, completed.stderr
    assert "no Pulumi.yaml" in completed.stderr


def test_not_logged_in(empty_stack, tmp_path):
    env = {
        name: value
        for name, value in empty_stack.env.items()
        if name not in ("PULUMI_BACKEND_URL", "PULUMI_HOME")
    }
    completed = subprocess.run(
        [shutil.which("pulumi-docker-machine"), "ip", "--stack", "org/project/dev", "x"],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 3, completed.stderr
    assert "pulumi login" in completed.stderr


def test_qualified_stack_outside_project(imported_stack, tmp_path):
    qualified = f"organization/{PROJECT_NAME}/{imported_stack.name}"
    completed = run_tool(imported_stack, "ip", "--stack", qualified, "build-1", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "127.0.0.1"


def test_selected_stack_without_stack_option(imported_stack):
    # `pulumi stack init` selected the stack for this PULUMI_HOME.
    completed = run_tool(imported_stack, "ip", "build-1")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "127.0.0.1"


def test_cwd_option_names_project(imported_stack, tmp_path):
    completed = run_tool(
        imported_stack, "url", "--cwd", str(PROJECT_DIR), "build-1", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "tcp://127.0.0.1:9"


def test_env_unset_missing_stack(empty_stack):
    completed = run_tool(
        empty_stack, "env", "--unset", "--shell", "bash", "--stack", "nosuch", "build-1"
    )
    assert completed.returncode == 0, completed.stderr
    assert "unset DOCKER_HOST" in completed.stdout


def test_ssh_without_private_key(imported_stack):
    completed = run_tool(
        imported_stack, "ssh", "--stack", imported_stack.name, "build-1"
    )
    assert completed.returncode == 1, completed.stderr
    assert "has no sshPrivateKey" in completed.stderr


def test_ls_closed_port_row(imported_stack):
    completed = run_tool(imported_stack, "ls", "--stack", imported_stack.name)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    (row,) = [line for line in lines if line.startswith("build-1")]
    assert "network error" in row


@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["env", "--shell", "nushell", "build-1"], {}, "invalid shell 'nushell'"),
        (["env", "build-1"], {"SHELL": "/usr/bin/nushell"}, "--shell"),
        (["env", "--shell", "bash"], {}, "missing machine NAME"),
        (["frobnicate"], {}, "invalid choice"),
    ],
    ids=["bad-shell", "undetected-shell", "missing-name", "unknown-command"],
)
def test_usage_errors(imported_stack, args, env, fragment):
    completed = run_tool(imported_stack, *args, env=env)
    assert completed.returncode == 2, completed.stderr
    assert fragment in completed.stderr


@pytest.mark.parametrize("command", [None, "ls", *COMMANDS])
def test_help_on_every_command(command):
    args = ["--help"] if command is None else [command, "--help"]
    completed = subprocess.run(
        [shutil.which("pulumi-docker-machine"), *args],
        capture_output=True, text=True, timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert "exit codes:" in completed.stdout


def test_status_closed_port_is_network_error(imported_stack):
    completed = run_tool(imported_stack, "status", "--stack", imported_stack.name, "build-1")
    assert completed.returncode == 7, completed.stderr
    assert completed.stdout.strip() == "Unreachable"
    assert "network error" in completed.stderr


def _serve_tls_once(listener: socket.socket, context: ssl.SSLContext) -> None:
    listener.settimeout(10)
    try:
        connection, _ = listener.accept()
    except OSError:
        return
    with connection:
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass


def test_probe_other_ca_is_tls_error(tmp_path):
    stack_ca = pki.create_ca()
    client = pki.issue_client_certificate(stack_ca.cert_pem, stack_ca.key_pem)
    other_ca = pki.create_ca()
    server = pki.issue_server_certificate(other_ca.cert_pem, other_ca.key_pem, ["127.0.0.1"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (tmp_path / "server.pem").write_text(server.cert_pem)
    (tmp_path / "server-key.pem").write_text(server.key_pem)
    server_context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")

    listener = socket.create_server((check_dialable("127.0.0.1"), 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(target=_serve_tls_once, args=(listener, server_context))
    thread.start()
    machine = Machine(
        name="build-1",
        project=PROJECT_NAME,
        stack="test",
        public={
            "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
            "address": "127.0.0.1",
            "caCertPem": stack_ca.cert_pem,
            "clientCertPem": client.cert_pem,
        },
        secrets={"clientKeyPem": client.key_pem},
    )
    try:
        error = commands.probe(machine, timeout=5)
    finally:
        thread.join(15)
        listener.close()
    assert error is not None
    assert error.startswith("TLS error:")
    assert "network error" not in error
