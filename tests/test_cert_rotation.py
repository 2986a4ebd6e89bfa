"""Certificates over time, through the real ``pulumi`` CLI on the shared test VM.

The tests run in file order on one stack and one machine. They cover the
expiry outputs, the refresh warning and rotation of the server certificate.
Then rotation of the CA, after which the daemon rejects the old client
certificate, and an imported CA whose key is a secret in the stack
configuration. The stack is destroyed at the end.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provider import pki
from tests.harness.netguard import check_dialable
from tests.harness.pulumi_cli import PROJECT_DIR, machine_config

pytestmark = pytest.mark.vm

MACHINE = "certs"
ENGINE_PORT = 2376
# More than the 1095 days of the client and server certificates and less than
# the 3650 days of the CA, so that refresh warns about two of the three.
WARNING_DAYS = 1100
# The package logs of the guest: apt and dpkg append to them on any install.
PACKAGE_LOGS = "/var/log/dpkg.log /var/log/apt/history.log /var/log/apt/term.log"


@pytest.fixture(scope="module")
def stack(shared_vm, stack_factory):
    """A stack with one machine on the shared VM, destroyed at the end."""
    stack = stack_factory()
    write_config(stack, shared_vm)
    yield stack
    if stack.resources():
        stack.destroy(check=False)


def write_config(stack, vm, machine=None, cert_authority=None):
    """Write the stack configuration: one machine on ``vm`` and the CA settings."""
    settings = {"expiryWarningDays": WARNING_DAYS, **(cert_authority or {})}
    stack.write_config(
        [machine_config(vm, MACHINE, **(machine or {}))], certAuthority=settings
    )


def outputs(stack):
    """Return the public outputs of the machine."""
    return stack.outputs()["machines"][MACHINE]


def docker_env(cert_path, docker_host):
    """Return an environment that points the docker client at the machine."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "DOCKER_HOST": docker_host,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(cert_path),
    }


def docker_info(cert_path, docker_host):
    """Run the real ``docker info`` with the certificates in ``cert_path``."""
    return subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        env=docker_env(cert_path, docker_host),
        capture_output=True,
        text=True,
        timeout=60,
    )


def tls_request(address, ca_file, cert_file, key_file):
    """Send ``GET /_ping`` over mutual TLS; return the response or raise SSLError.

    A TLS 1.3 server checks the client certificate after the client considers
    the handshake done, so its rejection arrives as an alert on the first read.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    with socket.create_connection((check_dialable(address), ENGINE_PORT), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=address) as tls:
            tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return tls.recv(4096)


def peer_certificate(address, cert_path):
    """Return the server certificate the daemon presents to the client in ``cert_path``."""
    context = ssl.create_default_context(cafile=str(cert_path / "ca.pem"))
    context.load_cert_chain(str(cert_path / "cert.pem"), str(cert_path / "key.pem"))
    with socket.create_connection((check_dialable(address), ENGINE_PORT), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=address) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def peer_pem(address, cert_path):
    """Return the presented server certificate as PEM text."""
    certificate = peer_certificate(address, cert_path)
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def resource_id(stack, kind):
    """Return the id of the single resource of type ``kind`` in state."""
    (resource,) = [
        r for r in stack.resources() if r["type"].endswith(f"docker-machine:{kind}")
    ]
    return resource["id"]


def host_facts(vm):
    """Return the boot id, dockerd's pid and a digest of the package logs."""
    command = (
        "cat /proc/sys/kernel/random/boot_id; pidof dockerd; "
        f"cat {PACKAGE_LOGS} 2>/dev/null | sha256sum"
    )
    status, stdout, stderr = vm.run(command)
    assert status == 0, stderr
    boot_id, pid, packages = stdout.splitlines()
    return {"boot_id": boot_id, "dockerd_pid": pid, "package_logs": packages}


def test_up_exports_expiry(shared_vm, stack):
    stack.up()
    machine = outputs(stack)
    cert_path = stack.machines_home.joinpath(machine["DOCKER_CERT_PATH"])

    client_pem = (cert_path / "cert.pem").read_text()
    ca_pem = (cert_path / "ca.pem").read_text()
    assert machine["clientCertNotAfter"] == pki.certificate_not_after(client_pem)
    assert machine["caCertNotAfter"] == pki.certificate_not_after(ca_pem)
    server_pem = peer_pem(shared_vm.address, cert_path)
    assert machine["serverCertNotAfter"] == pki.certificate_not_after(server_pem)


def test_refresh_warns_near_expiry(stack):
    result = stack.refresh("--skip-preview")
    text = result.stdout + result.stderr
    assert f"warning: the server certificate of {MACHINE} expires at" in text, text
    assert "warning: the client certificate of" in text, text
    assert "rotateServerCert" in text, "the warning says how to renew"
    assert "the CA certificate of" not in text, "the CA has 3650 days left"


def test_server_rotation_restarts_docker_only(shared_vm, stack):
    before = outputs(stack)
    cert_path = stack.machines_home.joinpath(before["DOCKER_CERT_PATH"])
    facts_before = host_facts(shared_vm)
    served_before = peer_certificate(shared_vm.address, cert_path)
    ca_id = resource_id(stack, "CertAuthority")
    host_id = resource_id(stack, "Host")

    write_config(stack, shared_vm, machine={"rotateServerCert": "first"})
    result = stack.up()

    facts_after = host_facts(shared_vm)
    served_after = peer_certificate(shared_vm.address, cert_path)
    assert "replace" not in result.stdout
    assert resource_id(stack, "CertAuthority") == ca_id
    assert resource_id(stack, "Host") == host_id
    assert facts_after["boot_id"] == facts_before["boot_id"], "the VM rebooted"
    assert facts_after["package_logs"] == facts_before["package_logs"], "apt or dpkg ran"
    assert facts_after["dockerd_pid"] != facts_before["dockerd_pid"], "no restart"
    assert served_after.serial_number != served_before.serial_number
    assert served_after.issuer == served_before.issuer
    assert outputs(stack)["caCertPem"] == before["caCertPem"]
    info = docker_info(cert_path, before["DOCKER_HOST"])
    assert info.returncode == 0, info.stderr


def test_ca_rotation_rejects_old_client(shared_vm, stack, tmp_path):
    before = outputs(stack)
    cert_path = stack.machines_home.joinpath(before["DOCKER_CERT_PATH"])
    old_dir = tmp_path / "old-certs"
    shutil.copytree(cert_path, old_dir)
    ca_id = resource_id(stack, "CertAuthority")

    write_config(
        stack,
        shared_vm,
        machine={"rotateServerCert": "first"},
        cert_authority={"rotate": "2026-12"},
    )
    stack.up()

    after = outputs(stack)
    assert resource_id(stack, "CertAuthority") != ca_id
    assert after["caCertPem"] != before["caCertPem"]
    assert (cert_path / "ca.pem").read_text() == after["caCertPem"]
    served = peer_pem(shared_vm.address, cert_path)
    assert pki.is_issued_by(served, after["caCertPem"])

    info = docker_info(cert_path, after["DOCKER_HOST"])
    assert info.returncode == 0, info.stderr
    old_info = docker_info(old_dir, after["DOCKER_HOST"])
    assert old_info.returncode != 0, "the old certificate directory still works"

    # Trust the new CA but present the old client certificate: only the
    # daemon can reject this one.
    with pytest.raises(ssl.SSLError) as rejected:
        tls_request(
            shared_vm.address,
            cert_path / "ca.pem",
            old_dir / "cert.pem",
            old_dir / "key.pem",
        )
    assert "ALERT" in str(rejected.value).upper(), rejected.value
    accepted = tls_request(
        shared_vm.address, cert_path / "ca.pem", cert_path / "cert.pem",
        cert_path / "key.pem",
    )
    assert accepted.startswith(b"HTTP/1.1 200"), accepted[:100]


def test_imported_leaf_rejected_at_preview(shared_vm, stack):
    resources_before = stack.resources()
    ca = pki.create_ca("ecdsa-p256", 30, "bring-your-own test CA")
    leaf = pki.issue_client_certificate(ca.cert_pem, ca.key_pem)
    write_config(stack, shared_vm, cert_authority={"caCertPem": leaf.cert_pem})
    set_secret(stack, "certAuthority.caKeyPem", leaf.key_pem)

    result = stack.preview(check=False)

    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid certAuthority.caCertPem 'CN=docker client'" in text, text
    assert "not a CA certificate" in text
    assert leaf.key_pem.splitlines()[1] not in text, "the key reached the output"
    assert stack.resources() == resources_before


def test_imported_ca_signs_host(shared_vm, stack, tmp_path):
    before = outputs(stack)
    cert_path = stack.machines_home.joinpath(before["DOCKER_CERT_PATH"])
    old_dir = tmp_path / "generated-ca-certs"
    shutil.copytree(cert_path, old_dir)
    ca = pki.create_ca("rsa-2048", 400, "bring-your-own test CA")
    key_line = ca.key_pem.splitlines()[1]
    write_config(stack, shared_vm, cert_authority={"caCertPem": ca.cert_pem})
    set_secret(stack, "certAuthority.caKeyPem", ca.key_pem)

    result = stack.up()

    machine = outputs(stack)
    assert machine["caCertPem"] == ca.cert_pem
    assert machine["caCertNotAfter"] == ca.not_after
    assert pki.is_issued_by(machine["clientCertPem"], ca.cert_pem)
    served = peer_pem(shared_vm.address, cert_path)
    assert pki.is_issued_by(served, ca.cert_pem)
    info = docker_info(cert_path, machine["DOCKER_HOST"])
    assert info.returncode == 0, info.stderr
    assert docker_info(old_dir, machine["DOCKER_HOST"]).returncode != 0

    assert key_line not in result.stdout + result.stderr
    assert key_line not in stack.config_file.read_text()
    exported = stack.run("stack", "export").stdout
    assert "PRIVATE KEY" not in exported
    assert key_line not in exported


def set_secret(stack, path, value):
    """Set ``path`` in the stack configuration as a secret, passing it on stdin."""
    command = [
        "pulumi", "config", "set", "--secret", "--path", path,
        "--config-file", str(stack.config_file), "--stack", stack.name,
        "--non-interactive",
    ]
    completed = subprocess.run(
        command, cwd=PROJECT_DIR, env=stack.env, input=value, capture_output=True,
        text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
