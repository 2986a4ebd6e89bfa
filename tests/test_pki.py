"""Tests of provider.pki: chain, extensions and validity at a pinned time, and a
real TLS handshake through Python's ssl module over a socket pair."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from provider import pki
from provider.errors import InvalidInputError

NOW = datetime(2030, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
CA_DAYS = 3650
LEAF_DAYS = 365
SERVER_ADDRESS = "10.0.0.5"
EXTRA_SANS = ["docker.example.com", "::1"]

KEY_SHAPES = {
    "ecdsa-p256": (ec.EllipticCurvePublicKey, 256),
    "rsa-2048": (rsa.RSAPublicKey, 2048),
    "rsa-4096": (rsa.RSAPublicKey, 4096),
}


class Chain:
    """A CA with one client and one server certificate issued at NOW."""

    def __init__(self, algorithm: str, now: datetime | None = NOW) -> None:
        self.algorithm = algorithm
        self.ca = pki.create_ca(algorithm, CA_DAYS, "test CA", now=now)
        self.client = pki.issue_client_certificate(
            self.ca.cert_pem, self.ca.key_pem, algorithm, LEAF_DAYS, "client", now=now
        )
        self.server = pki.issue_server_certificate(
            self.ca.cert_pem,
            self.ca.key_pem,
            pki.server_sans(SERVER_ADDRESS, EXTRA_SANS),
            algorithm,
            LEAF_DAYS,
            "server",
            now=now,
        )


@pytest.fixture(scope="module", params=pki.ALGORITHMS)
def chain(request: pytest.FixtureRequest) -> Chain:
    return Chain(request.param)


@pytest.fixture(scope="module")
def ecdsa_chain() -> Chain:
    return Chain("ecdsa-p256")


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def extension(certificate: x509.Certificate, kind: type) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


def key_usage_flags(certificate: x509.Certificate) -> set[str]:
    usage = extension(certificate, x509.KeyUsage).value
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ]
    return {name for name in names if getattr(usage, name)}


def client_policy(at: datetime, ca_pem: str) -> PolicyBuilder:
    """Return a verifier builder for client certificates trusting only ``ca_pem``."""
    # Client certificates carry no subjectAltName, and the default web PKI
    # profile requires one, so this policy allows it to be absent.
    end_entity = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return server_policy(at, ca_pem).extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=end_entity
    )


def server_policy(at: datetime, ca_pem: str) -> PolicyBuilder:
    """Return a web PKI verifier builder trusting only ``ca_pem``, at time ``at``."""
    return PolicyBuilder().store(Store([load(ca_pem)])).time(at)


# --- CA ---------------------------------------------------------------------


def test_ca_is_self_signed(chain: Chain) -> None:
    ca = load(chain.ca.cert_pem)
    ca.verify_directly_issued_by(ca)
    assert ca.subject == ca.issuer


def test_ca_basic_constraints(chain: Chain) -> None:
    constraints = extension(load(chain.ca.cert_pem), x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0


def test_ca_key_usage(chain: Chain) -> None:
    ca = load(chain.ca.cert_pem)
    assert extension(ca, x509.KeyUsage).critical
    assert key_usage_flags(ca) == {"digital_signature", "key_cert_sign", "crl_sign"}


def test_ca_subject_key_identifier(chain: Chain) -> None:
    ca = load(chain.ca.cert_pem)
    expected = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert extension(ca, x509.SubjectKeyIdentifier).value == expected


def test_ca_validity_at_pinned_now(chain: Chain) -> None:
    ca = load(chain.ca.cert_pem)
    assert ca.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert ca.not_valid_after_utc == NOW + timedelta(days=CA_DAYS)
    assert chain.ca.not_after == "2040-01-13T12:00:00Z"


def test_ca_key_is_unencrypted_pkcs8(chain: Chain) -> None:
    assert chain.ca.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(chain.ca.key_pem.encode(), None)
    assert key is not None


# --- keys and serials -------------------------------------------------------


@pytest.mark.parametrize("which", ["ca", "client", "server"])
def test_key_type_and_size(chain: Chain, which: str) -> None:
    issued = getattr(chain, which)
    public_key = load(issued.cert_pem).public_key()
    kind, size = KEY_SHAPES[chain.algorithm]
    assert isinstance(public_key, kind)
    assert public_key.key_size == size


def test_serials_are_random_and_positive(chain: Chain) -> None:
    serials = [
        load(issued.cert_pem).serial_number
        for issued in (chain.ca, chain.client, chain.server)
    ]
    assert len(set(serials)) == 3
    for serial in serials:
        assert serial > 2**64
        assert serial.bit_length() <= 159


# --- client certificate -----------------------------------------------------


def test_client_signed_by_ca(chain: Chain) -> None:
    load(chain.client.cert_pem).verify_directly_issued_by(load(chain.ca.cert_pem))


def test_client_chain_verifies(chain: Chain) -> None:
    verifier = client_policy(NOW + timedelta(days=1), chain.ca.cert_pem)
    verified = verifier.build_client_verifier().verify(load(chain.client.cert_pem), [])
    assert len(verified.chain) == 2


def test_client_extended_key_usage(chain: Chain) -> None:
    usage = extension(load(chain.client.cert_pem), x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_key_usage(chain: Chain) -> None:
    client = load(chain.client.cert_pem)
    expected = {"digital_signature"}
    if chain.algorithm.startswith("rsa"):
        expected.add("key_encipherment")
    assert extension(client, x509.KeyUsage).critical
    assert key_usage_flags(client) == expected


def test_client_is_not_a_ca(chain: Chain) -> None:
    constraints = extension(load(chain.client.cert_pem), x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False


def test_client_has_no_san(chain: Chain) -> None:
    assert pki.certificate_sans(chain.client.cert_pem) == []


def test_client_authority_key_identifier(chain: Chain) -> None:
    ca_ski = extension(load(chain.ca.cert_pem), x509.SubjectKeyIdentifier).value
    aki = extension(load(chain.client.cert_pem), x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest


def test_client_rejected_as_server(chain: Chain) -> None:
    verifier = server_policy(NOW + timedelta(days=1), chain.ca.cert_pem)
    server_verifier = verifier.build_server_verifier(x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        server_verifier.verify(load(chain.client.cert_pem), [])


# --- server certificate -----------------------------------------------------


def test_server_signed_by_ca(chain: Chain) -> None:
    load(chain.server.cert_pem).verify_directly_issued_by(load(chain.ca.cert_pem))


@pytest.mark.parametrize(
    "name",
    [
        x509.IPAddress(ipaddress.ip_address(SERVER_ADDRESS)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
        x509.DNSName("docker.example.com"),
    ],
    ids=str,
)
def test_server_chain_verifies_for(chain: Chain, name: x509.GeneralName) -> None:
    verifier = server_policy(NOW + timedelta(days=1), chain.ca.cert_pem)
    verified = verifier.build_server_verifier(name).verify(
        load(chain.server.cert_pem), []
    )
    assert len(verified) == 2


def test_server_rejected_for_other_name(chain: Chain) -> None:
    verifier = server_policy(NOW + timedelta(days=1), chain.ca.cert_pem)
    other = x509.IPAddress(ipaddress.ip_address("10.0.0.6"))
    with pytest.raises(VerificationError):
        verifier.build_server_verifier(other).verify(load(chain.server.cert_pem), [])


def test_server_sans_exactly(chain: Chain) -> None:
    sans = extension(load(chain.server.cert_pem), x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "localhost",
        "docker.example.com",
    ]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(SERVER_ADDRESS),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert len(list(sans)) == 5


def test_certificate_sans_in_order(chain: Chain) -> None:
    assert pki.certificate_sans(chain.server.cert_pem) == [
        SERVER_ADDRESS,
        "localhost",
        "127.0.0.1",
        "docker.example.com",
        "::1",
    ]


def test_server_extended_key_usage(chain: Chain) -> None:
    usage = extension(load(chain.server.cert_pem), x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_server_key_usage(chain: Chain) -> None:
    expected = {"digital_signature"}
    if chain.algorithm.startswith("rsa"):
        expected.add("key_encipherment")
    assert key_usage_flags(load(chain.server.cert_pem)) == expected


def test_server_is_not_a_ca(chain: Chain) -> None:
    constraints = extension(load(chain.server.cert_pem), x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False


def test_server_rejected_as_client(chain: Chain) -> None:
    verifier = client_policy(NOW + timedelta(days=1), chain.ca.cert_pem)
    with pytest.raises(VerificationError):
        verifier.build_client_verifier().verify(load(chain.server.cert_pem), [])


# --- validity ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["client", "server"])
def test_leaf_validity_at_pinned_now(chain: Chain, which: str) -> None:
    issued = getattr(chain, which)
    certificate = load(issued.cert_pem)
    assert certificate.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert certificate.not_valid_after_utc == NOW + timedelta(days=LEAF_DAYS)
    assert issued.not_after == "2031-01-15T12:00:00Z"
    assert pki.certificate_not_after(issued.cert_pem) == issued.not_after


def test_leaf_rejected_after_expiry(ecdsa_chain: Chain) -> None:
    later = NOW + timedelta(days=LEAF_DAYS, seconds=1)
    verifier = client_policy(later, ecdsa_chain.ca.cert_pem)
    with pytest.raises(VerificationError):
        verifier.build_client_verifier().verify(load(ecdsa_chain.client.cert_pem), [])


def test_leaf_accepted_within_clock_skew(ecdsa_chain: Chain) -> None:
    verifier = client_policy(NOW - timedelta(minutes=4), ecdsa_chain.ca.cert_pem)
    verifier.build_client_verifier().verify(load(ecdsa_chain.client.cert_pem), [])


def test_leaf_not_after_capped_by_ca() -> None:
    ca = pki.create_ca("ecdsa-p256", 30, "short CA", now=NOW)
    client = pki.issue_client_certificate(
        ca.cert_pem, ca.key_pem, "ecdsa-p256", 365, "client", now=NOW
    )
    assert client.not_after == ca.not_after
    assert client.not_after == "2030-02-14T12:00:00Z"


def test_naive_now_is_utc() -> None:
    ca = pki.create_ca("ecdsa-p256", 1, "CA", now=NOW.replace(tzinfo=None))
    assert load(ca.cert_pem).not_valid_before_utc == NOW - timedelta(minutes=5)


def test_microseconds_are_dropped() -> None:
    ca = pki.create_ca("ecdsa-p256", 1, "CA", now=NOW.replace(microsecond=999999))
    assert ca.not_after == "2030-01-16T12:00:00Z"


def test_issue_from_expired_ca_rejected(ecdsa_chain: Chain) -> None:
    after_ca = NOW + timedelta(days=CA_DAYS + 1)
    with pytest.raises(InvalidInputError, match="expired at 2040-01-13T12:00:00Z"):
        pki.issue_client_certificate(
            ecdsa_chain.ca.cert_pem, ecdsa_chain.ca.key_pem, now=after_ca
        )


# --- inputs the functions reject --------------------------------------------


@pytest.mark.parametrize(
    "algorithm", ["ed25519", "rsa-1024", "ECDSA-P256", ""], ids=repr
)
def test_unknown_algorithm_rejected(algorithm: str) -> None:
    with pytest.raises(InvalidInputError, match="must be one of ecdsa-p256"):
        pki.create_ca(algorithm, 1, "CA", now=NOW)


@pytest.mark.parametrize("days", [0, -1, 1.5, True, "30"], ids=repr)
def test_bad_validity_days_rejected(days: object) -> None:
    with pytest.raises(InvalidInputError, match="validity_days"):
        pki.create_ca("ecdsa-p256", days, "CA", now=NOW)  # type: ignore[arg-type]


def test_server_without_sans_rejected(ecdsa_chain: Chain) -> None:
    with pytest.raises(InvalidInputError, match="at least one subject alternative"):
        pki.issue_server_certificate(
            ecdsa_chain.ca.cert_pem, ecdsa_chain.ca.key_pem, [], now=NOW
        )


# --- server_sans ------------------------------------------------------------


@pytest.mark.parametrize(
    "address, extras, expected",
    [
        ("10.0.0.5", None, ["10.0.0.5", "localhost", "127.0.0.1"]),
        ("10.0.0.5", [], ["10.0.0.5", "localhost", "127.0.0.1"]),
        (
            "10.0.0.5",
            ["a.example.com", "10.0.0.6"],
            ["10.0.0.5", "localhost", "127.0.0.1", "a.example.com", "10.0.0.6"],
        ),
        ("127.0.0.1", None, ["127.0.0.1", "localhost"]),
        ("localhost", ["localhost"], ["localhost", "127.0.0.1"]),
        (
            "h.example.com",
            ["10.1.1.1", "10.1.1.1", "127.0.0.1"],
            ["h.example.com", "localhost", "127.0.0.1", "10.1.1.1"],
        ),
    ],
    ids=[
        "no-extras",
        "empty-extras",
        "extras-appended",
        "address-is-loopback",
        "extra-repeats-default",
        "extras-repeated",
    ],
)
def test_server_sans_helper(
    address: str, extras: list[str] | None, expected: list[str]
) -> None:
    assert pki.server_sans(address, extras) == expected


# --- helpers ----------------------------------------------------------------


def test_key_matches_own_certificate(chain: Chain) -> None:
    assert pki.key_matches_certificate(chain.ca.cert_pem, chain.ca.key_pem)
    assert pki.key_matches_certificate(chain.client.cert_pem, chain.client.key_pem)
    assert pki.key_matches_certificate(chain.server.cert_pem, chain.server.key_pem)


def test_key_matches_foreign_key_false(chain: Chain) -> None:
    assert not pki.key_matches_certificate(chain.server.cert_pem, chain.client.key_pem)
    assert not pki.key_matches_certificate(chain.client.cert_pem, chain.ca.key_pem)


def test_key_matches_other_algorithm_false(ecdsa_chain: Chain) -> None:
    other = pki.create_ca("rsa-2048", 1, "other", now=NOW)
    assert not pki.key_matches_certificate(ecdsa_chain.ca.cert_pem, other.key_pem)


def test_repr_hides_key(chain: Chain) -> None:
    for issued in (chain.ca, chain.client, chain.server):
        key_body = issued.key_pem.splitlines()[1]
        assert key_body not in repr(issued)
        assert key_body not in str(issued)
        assert "key_pem" not in repr(issued)
        assert issued.not_after in repr(issued)


def test_issued_certificate_is_frozen(ecdsa_chain: Chain) -> None:
    with pytest.raises(AttributeError):
        ecdsa_chain.ca.key_pem = "x"  # type: ignore[misc]


def test_fingerprint_is_sha256_of_der(chain: Chain) -> None:
    certificate = load(chain.server.cert_pem)
    expected = certificate.fingerprint(hashes.SHA256()).hex()
    assert pki.certificate_fingerprint(chain.server.cert_pem) == expected
    assert len(expected) == 64


def test_is_issued_by(ecdsa_chain: Chain) -> None:
    other = pki.create_ca("ecdsa-p256", 1, "other CA", now=NOW)
    assert pki.is_issued_by(ecdsa_chain.server.cert_pem, ecdsa_chain.ca.cert_pem)
    assert pki.is_issued_by(ecdsa_chain.ca.cert_pem, ecdsa_chain.ca.cert_pem)
    assert not pki.is_issued_by(ecdsa_chain.server.cert_pem, other.cert_pem)
    assert not pki.is_issued_by(
        ecdsa_chain.client.cert_pem, ecdsa_chain.server.cert_pem
    )


def test_is_issued_by_same_name_other_key(ecdsa_chain: Chain) -> None:
    impostor = pki.create_ca("ecdsa-p256", 1, "test CA", now=NOW)
    assert not pki.is_issued_by(ecdsa_chain.client.cert_pem, impostor.cert_pem)


def test_verify_issued_by_raises(ecdsa_chain: Chain) -> None:
    other = pki.create_ca("ecdsa-p256", 1, "other CA", now=NOW)
    pki.verify_issued_by(ecdsa_chain.client.cert_pem, ecdsa_chain.ca.cert_pem)
    with pytest.raises(InvalidInputError, match="not signed by the CA 'CN=other CA'"):
        pki.verify_issued_by(ecdsa_chain.client.cert_pem, other.cert_pem)


def test_validate_ca_pair_accepts_own_ca(chain: Chain) -> None:
    pki.validate_ca_pair(chain.ca.cert_pem, chain.ca.key_pem, now=NOW)


def test_validate_ca_pair_accepts_bytes(ecdsa_chain: Chain) -> None:
    pki.validate_ca_pair(
        ecdsa_chain.ca.cert_pem.encode(), ecdsa_chain.ca.key_pem.encode(), now=NOW
    )


def test_validate_ca_pair_foreign_key(ecdsa_chain: Chain) -> None:
    key_pem = ecdsa_chain.client.key_pem
    with pytest.raises(InvalidInputError) as caught:
        pki.validate_ca_pair(ecdsa_chain.ca.cert_pem, key_pem, now=NOW)
    message = str(caught.value)
    assert "does not belong to the CA certificate 'CN=test CA'" in message
    assert caught.value.field == "ca_key_pem"
    assert key_pem.splitlines()[1] not in message


def test_validate_ca_pair_leaf_rejected(ecdsa_chain: Chain) -> None:
    with pytest.raises(InvalidInputError, match="not a CA certificate") as caught:
        pki.validate_ca_pair(
            ecdsa_chain.server.cert_pem, ecdsa_chain.server.key_pem, now=NOW
        )
    assert caught.value.field == "ca_cert_pem"


def test_validate_ca_pair_expired(ecdsa_chain: Chain) -> None:
    later = NOW + timedelta(days=CA_DAYS, seconds=1)
    with pytest.raises(InvalidInputError, match="expired at 2040-01-13T12:00:00Z"):
        pki.validate_ca_pair(ecdsa_chain.ca.cert_pem, ecdsa_chain.ca.key_pem, later)


def test_validate_ca_pair_not_yet_valid(ecdsa_chain: Chain) -> None:
    earlier = NOW - timedelta(days=1)
    with pytest.raises(InvalidInputError, match="not valid before"):
        pki.validate_ca_pair(ecdsa_chain.ca.cert_pem, ecdsa_chain.ca.key_pem, earlier)


def test_validate_ca_pair_swapped_inputs(ecdsa_chain: Chain) -> None:
    key_pem = ecdsa_chain.ca.key_pem
    with pytest.raises(InvalidInputError, match="this is a private key") as caught:
        pki.validate_ca_pair(key_pem, ecdsa_chain.ca.cert_pem, now=NOW)
    assert key_pem.splitlines()[1] not in str(caught.value)
    assert "<PEM block -----BEGIN PRIVATE KEY----->" in str(caught.value)


def test_encrypted_key_rejected(ecdsa_chain: Chain) -> None:
    key = serialization.load_pem_private_key(ecdsa_chain.ca.key_pem.encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    with pytest.raises(InvalidInputError, match="the key is encrypted") as caught:
        pki.validate_ca_pair(ecdsa_chain.ca.cert_pem, encrypted, now=NOW)
    assert encrypted.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    "text", ["", "not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n"], ids=repr
)
def test_parse_certificate_rejects(text: str) -> None:
    with pytest.raises(InvalidInputError, match="not a PEM certificate"):
        pki.parse_certificate(text)


def test_parse_private_key_hides_garbage() -> None:
    with pytest.raises(InvalidInputError) as caught:
        pki.parse_private_key("SECRETSECRET")
    assert "SECRETSECRET" not in str(caught.value)
    assert "<value hidden>" in str(caught.value)


# --- TLS handshake with Python's ssl module ----------------------------------


def write_pair(directory: Path, name: str, issued: pki.IssuedCertificate) -> tuple:
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}-key.pem"
    cert_file.write_text(issued.cert_pem)
    key_file.write_text(issued.key_pem)
    key_file.chmod(0o600)
    return str(cert_file), str(key_file)


def server_context(tmp_path: Path, chain: Chain) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*write_pair(tmp_path, "server", chain.server))
    context.load_verify_locations(cadata=chain.ca.cert_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    tmp_path: Path, ca_pem: str, issued: pki.IssuedCertificate | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem)
    if issued is not None:
        context.load_cert_chain(*write_pair(tmp_path, "client", issued))
    return context


def run_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str
) -> tuple[dict, BaseException | None, BaseException | None]:
    """Run a TLS handshake over a socket pair and echo one byte.

    Returns the client certificate the server saw, the server's error and the
    client's error.
    """
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)
    outcome: dict = {"peer": None, "error": None}

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                outcome["peer"] = tls.getpeercert()
                tls.sendall(tls.recv(1))
        except (ssl.SSLError, OSError) as error:
            outcome["error"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    client_error = None
    try:
        with client.wrap_socket(client_end, server_hostname=server_hostname) as tls:
            tls.sendall(b"x")
            if tls.recv(1) != b"x":
                client_error = AssertionError("echo failed")
    except (ssl.SSLError, OSError) as error:
        client_error = error
    thread.join(timeout=15)
    assert not thread.is_alive()
    return outcome["peer"], outcome["error"], client_error


@pytest.fixture(scope="module", params=pki.ALGORITHMS)
def current_chain(request: pytest.FixtureRequest) -> Chain:
    return Chain(request.param, now=None)


@pytest.mark.parametrize("hostname", [SERVER_ADDRESS, "127.0.0.1", "localhost"])
def test_tls_handshake_mutual(
    tmp_path: Path, current_chain: Chain, hostname: str
) -> None:
    server = server_context(tmp_path, current_chain)
    client = client_context(tmp_path, current_chain.ca.cert_pem, current_chain.client)
    peer, server_error, client_error = run_handshake(server, client, hostname)
    assert server_error is None
    assert client_error is None
    assert peer["subject"] == ((("commonName", "client"),),)


def test_tls_client_without_certificate_rejected(
    tmp_path: Path, current_chain: Chain
) -> None:
    server = server_context(tmp_path, current_chain)
    client = client_context(tmp_path, current_chain.ca.cert_pem, None)
    peer, server_error, client_error = run_handshake(server, client, "localhost")
    assert peer is None
    assert isinstance(server_error, ssl.SSLError)
    assert "certificate" in str(server_error).lower()
    assert client_error is not None


def test_tls_client_from_other_ca_rejected(
    tmp_path: Path, current_chain: Chain
) -> None:
    stranger = Chain("ecdsa-p256", now=None)
    server = server_context(tmp_path, current_chain)
    client = client_context(tmp_path, current_chain.ca.cert_pem, stranger.client)
    peer, server_error, client_error = run_handshake(server, client, "localhost")
    assert peer is None
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert client_error is not None


def test_tls_server_cert_as_client_rejected(
    tmp_path: Path, current_chain: Chain
) -> None:
    server = server_context(tmp_path, current_chain)
    client = client_context(tmp_path, current_chain.ca.cert_pem, current_chain.server)
    peer, server_error, client_error = run_handshake(server, client, "localhost")
    assert peer is None
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert "certificate purpose" in str(server_error)
    assert client_error is not None


def test_tls_wrong_server_name_rejected(tmp_path: Path, current_chain: Chain) -> None:
    server = server_context(tmp_path, current_chain)
    client = client_context(tmp_path, current_chain.ca.cert_pem, current_chain.client)
    _, _, client_error = run_handshake(server, client, "10.0.0.6")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(client_error)
