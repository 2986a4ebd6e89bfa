"""A machine's whole life through the real ``pulumi`` CLI, on the Debian test VM.

The tests run in file order on one stack and one VM. They cover preview, up,
the docker client through the exported variables, a no-op up and an in-place
update. Then drift found by refresh and repaired by up, a changed host key,
and destroy.
Server-side SSH login counts come from the VM's sshd journal.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest
from cryptography import x509

from provider import daemon_config, tlsprobe
from provider.errors import DaemonUnreachableError
from tests.harness.netguard import check_dialable
from tests.harness.pulumi_cli import machine_config

pytestmark = pytest.mark.vm

ENGINE_PORT = 2376


@pytest.fixture(scope="module")
def stack(shared_vm, stack_factory):
    """A stack with one machine on the shared VM, destroyed at the end."""
    stack = stack_factory()
    stack.write_config([machine_entry(shared_vm)])
    yield stack
    if stack.resources():
        stack.destroy(check=False)


def machine_entry(vm, **settings):
    """Return the stack configuration entry of a machine on ``vm``."""
    return machine_config(vm, "lifecycle", **settings)


def machine_outputs(stack, name="lifecycle"):
    """Return the public outputs of one machine."""
    return stack.outputs()["machines"][name]


def docker_env(outputs):
    """Return an environment that points the docker client at the machine."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "DOCKER_HOST": outputs["DOCKER_HOST"],
        "DOCKER_TLS_VERIFY": outputs["DOCKER_TLS_VERIFY"],
        "DOCKER_CERT_PATH": outputs["DOCKER_CERT_PATH"],
    }


def run_docker(env, *args):
    """Run the real docker client; return the completed process."""
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=60
    )


def count_logins(vm, operation):
    """Run ``operation`` and return how many SSH logins the VM accepted for it."""
    before = vm.accepted_logins()
    operation()
    after = vm.accepted_logins()
    # The second count opens one connection of its own.
    return after - before - 1


def peer_certificate(address, port, ca_path, cert_path, key_path):
    """Return the server certificate the daemon presents over mutual TLS."""
    context = ssl.create_default_context(cafile=ca_path)
    context.load_cert_chain(cert_path, key_path)
    with socket.create_connection((check_dialable(address), port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=address) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_preview_touches_no_host(shared_vm, stack):
    result = {}
    logins = count_logins(shared_vm, lambda: result.update(out=stack.preview().stdout))
    assert logins == 0
    for kind in ("CertAuthority", "Host", "DockerDaemonConfig"):
        assert f"docker-machine:{kind}" in result["out"]
    assert "+ 4 to create" in result["out"]


def test_up_configures_mutual_tls(shared_vm, stack):
    logins = count_logins(shared_vm, stack.up)
    outputs = machine_outputs(stack)
    assert logins == 2, "Host create and DockerDaemonConfig create: one login each"
    assert outputs["DOCKER_HOST"] == f"tcp://{shared_vm.address}:{ENGINE_PORT}"
    assert outputs["DOCKER_TLS_VERIFY"] == "1"
    assert outputs["DOCKER_MACHINE_NAME"] == "lifecycle"


def test_docker_client_reaches_daemon(stack):
    outputs = machine_outputs(stack)
    result = run_docker(docker_env(outputs), "info", "--format", "{{json .ServerVersion}}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == outputs["dockerVersion"]


def test_client_without_certificate_rejected(stack, tmp_path):
    outputs = machine_outputs(stack)
    (tmp_path / "ca.pem").write_text(outputs["caCertPem"])
    env = {**docker_env(outputs), "DOCKER_CERT_PATH": str(tmp_path)}
    result = run_docker(env, "info")
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower() or "tls" in result.stderr.lower()


def test_cert_dir_written_with_private_key_mode(stack):
    cert_path = machine_outputs(stack)["DOCKER_CERT_PATH"]
    mode = (stack.machines_home / "machines").stat()  # the tree exists
    assert mode
    key = stack.machines_home.joinpath(cert_path).resolve()
    assert oct((key / "key.pem").stat().st_mode & 0o777) == "0o600"
    assert sorted(path.name for path in key.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_host_files_owned_and_moded(shared_vm, stack):
    status, stdout, _ = shared_vm.run(
        "stat -c '%n %a %U:%G' /etc/docker/ca.pem /etc/docker/server.pem "
        "/etc/docker/server-key.pem /etc/docker/daemon.json"
    )
    assert status == 0
    modes = dict(line.split(" ", 1) for line in stdout.splitlines())
    assert modes["/etc/docker/server-key.pem"] == "400 root:root"
    assert modes["/etc/docker/ca.pem"] == "444 root:root"
    assert modes["/etc/docker/server.pem"] == "444 root:root"
    assert modes["/etc/docker/daemon.json"] == "644 root:root"


def test_dockerd_runs_without_host_flags(shared_vm, stack):
    status, stdout, _ = shared_vm.run("cat /proc/$(pidof dockerd)/cmdline | tr '\\0' ' '")
    assert status == 0
    assert "-H" not in stdout.split()
    assert "fd://" not in stdout
    status, stdout, _ = shared_vm.run(f"cat {daemon_config.DAEMON_JSON_PATH}")
    settings = json.loads(stdout)
    assert settings["tlsverify"] is True
    assert f"tcp://0.0.0.0:{ENGINE_PORT}" in settings["hosts"]


def test_state_holds_no_plaintext_key(stack):
    exported = stack.run("stack", "export").stdout
    assert "PRIVATE KEY" not in exported


def test_noop_up_opens_no_connection(shared_vm, stack):
    result = {}
    logins = count_logins(
        shared_vm, lambda: result.update(out=stack.up("--expect-no-changes").stdout)
    )
    assert logins == 0
    assert "4 unchanged" in result["out"]


def test_extra_san_updates_in_place(shared_vm, stack):
    host_id_before = resource_id(stack, "Host")
    pid_before = dockerd_pid(shared_vm)
    stack.write_config([machine_entry(shared_vm, extraSans=["docker.example.test"])])

    result = stack.up()

    assert "replace" not in result.stdout
    assert resource_id(stack, "Host") == host_id_before
    assert dockerd_pid(shared_vm) != pid_before, "Docker was not restarted"
    certificate = current_peer_certificate(stack)
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "docker.example.test" in names


def test_refresh_reports_hand_edit(shared_vm, stack):
    edit = (
        f"sed -i '0,/{{/s//{{\\n  \"debug\": true,/' {daemon_config.DAEMON_JSON_PATH}"
    )
    assert shared_vm.run(edit)[0] == 0
    assert '"debug": true' in shared_vm.run(f"cat {daemon_config.DAEMON_JSON_PATH}")[1]

    result = {}
    logins = count_logins(
        shared_vm, lambda: result.update(out=stack.refresh("--skip-preview", "--diff").stdout)
    )

    # Without --skip-preview, refresh reads every resource twice: once for its
    # preview and once for the refresh itself.
    assert logins == 1, "refresh reads the host over one connection"
    assert "daemon.json was changed on the host" in result["out"]
    assert daemon_outputs(stack)["drift"] == [
        f"{daemon_config.DAEMON_JSON_PATH} was changed on the host"
    ]
    drifted = stack.preview("--expect-no-changes", check=False)
    assert drifted.returncode != 0, "preview after refresh must show the drift"
    assert "lifecycle-docker" in drifted.stdout


def test_up_repairs_drift(shared_vm, stack):
    stack.up()
    _, daemon_json, _ = shared_vm.run(f"cat {daemon_config.DAEMON_JSON_PATH}")
    assert "debug" not in json.loads(daemon_json)
    stack.refresh()
    assert stack.preview("--expect-no-changes", check=False).returncode == 0


def test_changed_host_key_rejected_then_accepted(shared_vm, stack):
    # The image's ssh.service makes new host keys when they are missing.
    assert shared_vm.run("rm -f /etc/ssh/ssh_host_* && systemctl restart ssh")[0] == 0
    shared_vm.forget_host_key()
    _, new_key, _ = shared_vm.run("cat /etc/ssh/ssh_host_ed25519_key.pub")

    rejected = stack.refresh(check=False)

    message = rejected.stdout + rejected.stderr
    assert rejected.returncode != 0
    assert f"host key of {shared_vm.address}:{shared_vm.ssh_port} changed" in message, message
    assert "sshHostKey" in message, "the message says how to accept the key"

    new_key = " ".join(new_key.split()[:2])
    stack.write_config(
        [machine_entry(shared_vm, extraSans=["docker.example.test"], sshHostKey=new_key)]
    )
    pid_before = dockerd_pid(shared_vm)
    stack.up()

    # A new host key may mean a rebuilt machine, so the daemon is configured again.
    assert dockerd_pid(shared_vm) != pid_before
    assert machine_outputs(stack)["sshHostKey"] == new_key
    stack.refresh()


def test_destroy_removes_listener_keeps_docker(shared_vm, stack):
    outputs = machine_outputs(stack)
    secrets = stack.outputs(show_secrets=True)["machineSecrets"]["lifecycle"]
    cert_dir = outputs["DOCKER_CERT_PATH"]

    stack.destroy()

    assert stack.resources() == []
    _, active, _ = shared_vm.run("systemctl is-active docker")
    assert active.strip() == "active"
    _, listing, _ = shared_vm.run("ls /etc/docker")
    assert "server-key.pem" not in listing.split()
    assert "ca.pem" not in listing.split()
    status, _, stderr = shared_vm.run("docker info --format '{{.ServerVersion}}'")
    assert status == 0, f"docker over the Unix socket failed: {stderr}"
    # QEMU accepts every TCP connection on a forwarded port, so the check is
    # that no daemon completes a TLS handshake there any more.
    with pytest.raises(DaemonUnreachableError):
        tlsprobe.fetch_version(
            check_dialable(shared_vm.address),
            ENGINE_PORT,
            outputs["caCertPem"],
            outputs["clientCertPem"],
            secrets["clientKeyPem"],
        )
    assert not stack.machines_home.joinpath(cert_dir).exists()


def daemon_outputs(stack):
    """Return the outputs of the DockerDaemonConfig in state."""
    (resource,) = [
        r for r in stack.resources() if r["type"].endswith("docker-machine:DockerDaemonConfig")
    ]
    return resource["outputs"]


def resource_id(stack, kind):
    """Return the id of the single resource of type ``kind`` in state."""
    (resource,) = [
        r for r in stack.resources() if r["type"].endswith(f"docker-machine:{kind}")
    ]
    return resource["id"]


def dockerd_pid(vm):
    """Return the pid of dockerd on ``vm``."""
    return vm.run("pidof dockerd")[1].strip()


def current_peer_certificate(stack):
    """Return the certificate the stack's machine presents now."""
    outputs = machine_outputs(stack)
    address = outputs["address"]
    cert_dir = outputs["DOCKER_CERT_PATH"]
    return peer_certificate(
        address, ENGINE_PORT, f"{cert_dir}/ca.pem", f"{cert_dir}/cert.pem",
        f"{cert_dir}/key.pem",
    )
