"""Tests of certificate lifetimes without a network: expiry warnings, rotation
triggers and imported CAs, through the pure functions and the providers'
check, diff, create, read and update methods."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provider import checks, expiry, pki
from provider.ca_config import parse_cert_authority
from provider.errors import InvalidInputError
from provider.resources.cert_authority import CertAuthorityProvider
from provider.resources.docker_daemon import (
    DockerDaemonConfigProvider,
    _needs_new_server_certificate,
)

NOW = datetime(2030, 1, 15, 12, 0, 0, tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    """Format ``moment`` the way the providers record notAfter."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def root_ca() -> pki.IssuedCertificate:
    """A self-signed CA valid now (the real clock), as a user would bring."""
    return pki.create_ca("ecdsa-p256", 365, "imported test CA")


@pytest.fixture(scope="module")
def intermediate_ca(root_ca: pki.IssuedCertificate) -> pki.IssuedCertificate:
    """A CA certificate signed by ``root_ca``: a CA, but not self-signed."""
    issuer = pki.parse_certificate(root_ca.cert_pem)
    issuer_key = pki.parse_private_key(root_ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=intermediate test CA"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return pki.IssuedCertificate(cert_pem, key_pem, iso(certificate.not_valid_after_utc))


# --- expiry warnings -------------------------------------------------------


@pytest.mark.parametrize(
    ("days_left", "warning_days", "expected"),
    [
        pytest.param(10, 30, "expires at", id="inside-window"),
        pytest.param(29.5, 30, "in 29 days", id="whole-days-rounded-down"),
        pytest.param(30, 30, "in 30 days", id="window-edge"),
        pytest.param(31, 30, None, id="outside-window"),
        pytest.param(-1, 30, "expired at", id="expired"),
        pytest.param(-1, 0, None, id="warnings-off"),
    ],
)
def test_expiry_warning_window(days_left, warning_days, expected) -> None:
    not_after = iso(NOW + timedelta(days=days_left))
    messages = expiry.expiry_warnings({"the CA of x": not_after}, warning_days, NOW)
    if expected is None:
        assert messages == []
    else:
        (message,) = messages
        assert message.startswith("the CA of x ")
        assert expected in message
        assert not_after in message


def test_expiry_warning_skips_missing() -> None:
    assert expiry.expiry_warnings({"the CA of x": None}, 30, NOW) == []


def test_expiry_warning_printed(capsys) -> None:
    not_after = iso(NOW + timedelta(days=3))
    messages = expiry.warn_about_expiry(
        {"the client certificate of ca": not_after}, 30.0, "renew it", NOW
    )
    stderr = capsys.readouterr().err
    assert len(messages) == 1
    assert messages[0].endswith("; renew it")
    assert f"warning: {messages[0]}" in stderr


def test_expiry_warning_default_window(capsys) -> None:
    inside = iso(NOW + timedelta(days=expiry.DEFAULT_WARNING_DAYS - 1))
    messages = expiry.warn_about_expiry({"c": inside}, None, "renew it", NOW)
    assert len(messages) == 1


@pytest.mark.parametrize(("value", "expected"), [(30, 30), (30.0, 30), (0, 0)])
def test_warning_days_accepted(value, expected) -> None:
    assert expiry.check_warning_days(value) == expected


@pytest.mark.parametrize("value", [-1, 1.5, "30", True, None, 36501])
def test_warning_days_rejected(value) -> None:
    with pytest.raises(InvalidInputError, match="expiry_warning_days"):
        expiry.check_warning_days(value)


@pytest.mark.parametrize(
    ("value", "expected"), [("2030-01", "2030-01"), (3, "3"), (3.0, "3"), (1.5, "1.5")]
)
def test_rotate_trigger_accepted(value, expected) -> None:
    assert checks.check_rotate(value) == expected


@pytest.mark.parametrize("value", [True, ["a"], {"a": 1}])
def test_rotate_trigger_rejected(value) -> None:
    with pytest.raises(InvalidInputError, match="invalid rotate"):
        checks.check_rotate(value)


# --- imported CA: pki ------------------------------------------------------


def test_imported_ca_accepted(root_ca) -> None:
    pki.validate_imported_ca(root_ca.cert_pem, root_ca.key_pem)


def test_imported_intermediate_rejected(intermediate_ca) -> None:
    with pytest.raises(InvalidInputError) as caught:
        pki.validate_imported_ca(intermediate_ca.cert_pem, intermediate_ca.key_pem)
    message = str(caught.value)
    assert "invalid ca_cert_pem" in message
    assert "not a self-signed root CA" in message
    assert "imported test CA" in message, "the message names the issuer"


# --- imported CA: stack settings -------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_settings_null_means_default() -> None:
    settings = {"validityDays": None, "expiryWarningDays": None, "rotate": None}
    assert parse_cert_authority(settings) == {}


def test_settings_inline_imported_ca(root_ca) -> None:
    settings = {"caCertPem": root_ca.cert_pem, "caKeyPem": root_ca.key_pem}
    arguments = parse_cert_authority(settings, is_secret=True)
    assert arguments == {
        "imported_ca_cert_pem": root_ca.cert_pem,
        "imported_ca_key_pem": root_ca.key_pem,
    }


def test_settings_file_imported_ca(root_ca, tmp_path) -> None:
    settings = {
        "caCertFile": write(tmp_path / "ca.pem", root_ca.cert_pem),
        "caKeyFile": write(tmp_path / "ca-key.pem", root_ca.key_pem),
        "rotate": 2,
        "expiryWarningDays": 60,
    }
    arguments = parse_cert_authority(settings, is_secret=False)
    assert arguments["imported_ca_key_pem"] == root_ca.key_pem
    assert arguments["rotate"] == "2"
    assert arguments["expiry_warning_days"] == 60


def bad_settings_cases(root_ca, intermediate_ca, tmp_path):
    other = pki.create_ca("ecdsa-p256", 30, "other CA")
    expired = pki.create_ca(
        "ecdsa-p256", 1, "expired CA", now=datetime.now(timezone.utc) - timedelta(days=3)
    )
    leaf = pki.issue_client_certificate(root_ca.cert_pem, root_ca.key_pem)
    return {
        "key-only": (
            {"caKeyPem": root_ca.key_pem},
            "invalid certAuthority.caCertPem None: missing",
        ),
        "cert-only": (
            {"caCertPem": root_ca.cert_pem},
            "invalid certAuthority.caKeyPem None: missing",
        ),
        "foreign-key": (
            {"caCertPem": root_ca.cert_pem, "caKeyPem": other.key_pem},
            "invalid certAuthority.caKeyPem '<value hidden>': the key does not belong",
        ),
        "leaf": (
            {"caCertPem": leaf.cert_pem, "caKeyPem": leaf.key_pem},
            "invalid certAuthority.caCertPem 'CN=docker client': not a CA certificate",
        ),
        "intermediate": (
            {"caCertPem": intermediate_ca.cert_pem, "caKeyPem": intermediate_ca.key_pem},
            "not a self-signed root CA",
        ),
        "expired": (
            {"caCertPem": expired.cert_pem, "caKeyPem": expired.key_pem},
            "the CA certificate expired at",
        ),
        "garbage": (
            {"caCertPem": "hello", "caKeyPem": root_ca.key_pem},
            "invalid certAuthority.caCertPem '<value hidden>': not a PEM certificate",
        ),
        "key-as-cert": (
            {"caCertPem": root_ca.key_pem, "caKeyPem": root_ca.key_pem},
            "this is a private key, not a certificate",
        ),
        "both-inline-and-file": (
            {
                "caCertPem": root_ca.cert_pem,
                "caCertFile": "/nonexistent/ca.pem",
                "caKeyPem": root_ca.key_pem,
            },
            "give either caCertPem or caCertFile, not both",
        ),
        "unreadable-file": (
            {"caCertFile": str(tmp_path / "missing.pem"), "caKeyPem": root_ca.key_pem},
            "invalid certAuthority.caCertFile",
        ),
        "validity-with-import": (
            {"caCertPem": root_ca.cert_pem, "caKeyPem": root_ca.key_pem, "validityDays": 9},
            "invalid certAuthority.validityDays 9: applies only to a CA this stack creates",
        ),
        "binary-file": (
            {"caCertFile": write_bytes(tmp_path / "ca.der", b"\x30\x82\xff"), "caKeyPem": "x"},
            "invalid certAuthority.caCertFile",
        ),
        "nul-in-path": (
            {"caCertFile": str(tmp_path / "ca.pem") + "\0", "caKeyPem": root_ca.key_pem},
            "cannot be read (not a valid path)",
        ),
        "unknown-setting": ({"caCert": "x"}, "invalid certAuthority.caCert"),
        "bad-warning-days": (
            {"expiryWarningDays": "soon"},
            "invalid certAuthority.expiryWarningDays 'soon'",
        ),
    }


def test_settings_rejected_with_field(root_ca, intermediate_ca, tmp_path) -> None:
    cases = bad_settings_cases(root_ca, intermediate_ca, tmp_path)
    for case, (settings, fragment) in cases.items():
        with pytest.raises(InvalidInputError) as caught:
            parse_cert_authority(settings, is_secret=True)
        message = str(caught.value)
        assert fragment in message, f"{case}: {message}"
        assert "PRIVATE KEY-----\n" not in message, f"{case}: the key leaked"


def test_settings_plaintext_key_rejected(root_ca) -> None:
    settings = {"caCertPem": root_ca.cert_pem, "caKeyPem": root_ca.key_pem}
    with pytest.raises(InvalidInputError) as caught:
        parse_cert_authority(settings, is_secret=False)
    message = str(caught.value)
    assert "invalid certAuthority.caKeyPem '<value hidden>'" in message
    assert "pulumi config set --secret --path certAuthority.caKeyPem" in message
    assert root_ca.key_pem not in message


# --- CertAuthority provider ------------------------------------------------


def ca_inputs(**overrides):
    inputs = {
        "algorithm": "ecdsa-p256",
        "validity_days": 3650,
        "client_validity_days": 1095,
        "common_name": "pulumi-docker-machine CA",
        "rotate": None,
        "expiry_warning_days": 30,
        "imported_ca_cert_pem": None,
        "imported_ca_key_pem": None,
    }
    inputs.update(overrides)
    return inputs


def test_ca_check_accepts_import(root_ca) -> None:
    inputs = ca_inputs(
        imported_ca_cert_pem=root_ca.cert_pem, imported_ca_key_pem=root_ca.key_pem
    )
    assert CertAuthorityProvider().check({}, inputs).failures == []


def test_ca_check_rejects_leaf_import(root_ca) -> None:
    leaf = pki.issue_client_certificate(root_ca.cert_pem, root_ca.key_pem)
    inputs = ca_inputs(imported_ca_cert_pem=leaf.cert_pem, imported_ca_key_pem=leaf.key_pem)
    (failure,) = CertAuthorityProvider().check({}, inputs).failures
    assert failure.property == "imported_ca_cert_pem"
    assert "not a CA certificate" in failure.reason


def test_ca_check_rejects_key_without_cert(root_ca) -> None:
    inputs = ca_inputs(imported_ca_key_pem=root_ca.key_pem)
    (failure,) = CertAuthorityProvider().check({}, inputs).failures
    assert failure.property == "imported_ca_cert_pem"
    assert root_ca.key_pem not in failure.reason


@pytest.mark.parametrize(
    ("change", "replaces"),
    [
        pytest.param({"rotate": "1"}, ["rotate"], id="rotate"),
        pytest.param({"algorithm": "rsa-2048"}, ["algorithm"], id="algorithm"),
        pytest.param({"expiry_warning_days": 90}, [], id="warning-days"),
    ],
)
def test_ca_diff(change, replaces) -> None:
    olds = ca_inputs()
    result = CertAuthorityProvider().diff("ca-1", olds, ca_inputs(**change))
    assert result.changes is True
    assert result.replaces == replaces


def test_ca_create_imported_issues_client(root_ca) -> None:
    provider = CertAuthorityProvider()
    inputs = ca_inputs(
        imported_ca_cert_pem=root_ca.cert_pem, imported_ca_key_pem=root_ca.key_pem
    )
    outputs = provider.create(inputs).outs
    assert outputs["ca_cert_pem"] == root_ca.cert_pem
    assert outputs["ca_key_pem"] == root_ca.key_pem
    assert outputs["ca_not_after"] == root_ca.not_after
    assert pki.is_issued_by(outputs["client_cert_pem"], root_ca.cert_pem)
    assert pki.key_matches_certificate(
        outputs["client_cert_pem"], outputs["client_key_pem"]
    )
    # The client certificate never outlives the CA (365 days here, 1095 asked).
    assert outputs["client_not_after"] <= root_ca.not_after


def test_ca_update_keeps_certificates() -> None:
    provider = CertAuthorityProvider()
    olds = provider.create(ca_inputs()).outs
    news = ca_inputs(expiry_warning_days=400)
    outputs = provider.update("ca-1", olds, news).outs
    assert outputs["ca_cert_pem"] == olds["ca_cert_pem"]
    assert outputs["client_cert_pem"] == olds["client_cert_pem"]
    assert outputs["expiry_warning_days"] == 400


def test_ca_read_warns_near_expiry(capsys) -> None:
    provider = CertAuthorityProvider()
    outputs = provider.create(ca_inputs(client_validity_days=10)).outs
    result = provider.read("ca-1", outputs)
    stderr = capsys.readouterr().err
    assert result.outs == outputs
    assert "warning: the client certificate of ca-1 expires at" in stderr
    assert "the CA certificate of ca-1" not in stderr
    assert "rotate" in stderr, "the warning says how to renew"


# --- DockerDaemonConfig provider -------------------------------------------


def daemon_outputs(**overrides):
    ca = pki.create_ca("ecdsa-p256", 30, "ca")
    server = pki.issue_server_certificate(
        ca.cert_pem, ca.key_pem, pki.server_sans("127.0.0.1"), validity_days=5
    )
    outputs = {
        "machine_name": "m1",
        "address": "127.0.0.1",
        "ssh_port": 22,
        "extra_sans": [],
        "engine_port": 2376,
        "ca_cert_pem": ca.cert_pem,
        "ca_key_pem": ca.key_pem,
        "host_key": "ssh-ed25519 AAAA",
        "rotate_server_cert": None,
        "expiry_warning_days": 30,
        "host_state": "stopped",
        "server_cert_pem": server.cert_pem,
        "server_key_pem": server.key_pem,
        "server_cert_not_after": server.not_after,
        "server_sans": pki.server_sans("127.0.0.1"),
        "applied": {},
        "observed": {},
    }
    outputs.update(overrides)
    return outputs


def test_daemon_rotate_updates_in_place() -> None:
    olds = daemon_outputs()
    news = {**olds, "rotate_server_cert": "1"}
    result = DockerDaemonConfigProvider().diff("m1-1", olds, news)
    assert result.changes is True
    assert result.replaces == []
    assert _needs_new_server_certificate(olds, news)
    assert not _needs_new_server_certificate(olds, dict(olds))


def test_daemon_warning_days_touch_no_host() -> None:
    olds = daemon_outputs(host_state="running")
    news = {**olds, "expiry_warning_days": 9}
    provider = DockerDaemonConfigProvider()
    assert provider.diff("m1-1", olds, news).changes is True
    # These outputs hold no SSH key, so an attempt to reach the host would raise.
    outputs = provider.update("m1-1", olds, news).outs
    assert outputs["expiry_warning_days"] == 9
    assert outputs["server_cert_pem"] == olds["server_cert_pem"]


def test_daemon_read_warns_near_expiry(capsys) -> None:
    outputs = daemon_outputs()
    DockerDaemonConfigProvider().read("m1-1", outputs)
    stderr = capsys.readouterr().err
    assert "warning: the server certificate of m1 expires at" in stderr
    assert "rotateServerCert" in stderr


def test_daemon_check_rejects_bad_rotate() -> None:
    inputs = daemon_outputs(rotate_server_cert=["x"])
    failures = DockerDaemonConfigProvider().check({}, inputs).failures
    assert [failure.property for failure in failures] == ["rotate_server_cert"]
    assert "invalid rotate_server_cert ['x']" in failures[0].reason


def test_daemon_check_engine_port_unset() -> None:
    inputs = daemon_outputs()
    del inputs["engine_port"]
    failures = DockerDaemonConfigProvider().check({}, inputs).failures
    assert failures == []
