"""X.509 keys and certificates for dockerd's mutual TLS.

A CA signs one client certificate (the docker client's ``cert.pem``) and one
server certificate per host (dockerd's ``server.pem``). Everything here is a
pure function of its arguments and the random number generator: no files, no
network. Keys are PKCS #8 PEM without encryption, because the providers store
them as Pulumi secrets; certificates are PEM.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provider.errors import InvalidInputError

DEFAULT_ALGORITHM = "ecdsa-p256"
ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-4096")
HIDDEN_VALUE = "<value hidden>"

# Certificates start this far in the past, because the clock of the machine
# running Pulumi and the clock of the Docker host may disagree.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)

_PEM_HEADER = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate with its private key and expiry, whose ``repr`` omits the key."""

    cert_pem: str
    key_pem: str = field(repr=False)
    not_after: str


def create_ca(
    algorithm: str = DEFAULT_ALGORITHM,
    validity_days: int = 3650,
    common_name: str = "pulumi-docker-machine CA",
    now: datetime | None = None,
) -> IssuedCertificate:
    """Create a CA key and a self-signed CA certificate."""
    key = generate_private_key(algorithm)
    not_before, not_after = _validity_window(now, validity_days)
    name = _name(common_name)
    public_key = key.public_key()
    builder = (
        _base_builder(name, name, public_key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    return _sign(builder, key, key)


def issue_client_certificate(
    ca_cert_pem: str,
    ca_key_pem: str,
    algorithm: str = DEFAULT_ALGORITHM,
    validity_days: int = 1095,
    common_name: str = "docker client",
    now: datetime | None = None,
) -> IssuedCertificate:
    """Create a key and a client-authentication certificate signed by the CA."""
    return _issue_leaf(
        ca_cert_pem,
        ca_key_pem,
        algorithm,
        validity_days,
        common_name,
        now,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=None,
    )


def issue_server_certificate(
    ca_cert_pem: str,
    ca_key_pem: str,
    sans: list[str],
    algorithm: str = DEFAULT_ALGORITHM,
    validity_days: int = 1095,
    common_name: str = "docker server",
    now: datetime | None = None,
) -> IssuedCertificate:
    """Create a key and a server-authentication certificate for ``sans``."""
    if not sans:
        raise InvalidInputError(
            "sans",
            sans,
            "a server certificate needs at least one subject alternative name; "
            "give the host's address",
        )
    return _issue_leaf(
        ca_cert_pem,
        ca_key_pem,
        algorithm,
        validity_days,
        common_name,
        now,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )


def server_sans(address: str, extra_sans: list[str] | None = None) -> list[str]:
    """Return the address, localhost, 127.0.0.1 and the extras, without repeats."""
    ordered = [address, "localhost", "127.0.0.1", *(extra_sans or [])]
    return list(dict.fromkeys(ordered))


def generate_private_key(algorithm: str = DEFAULT_ALGORITHM) -> SigningKey:
    """Generate a private key for one of :data:`ALGORITHMS`."""
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "rsa-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise InvalidInputError(
        "algorithm",
        algorithm,
        f"must be one of {', '.join(ALGORITHMS)}; "
        f"use {DEFAULT_ALGORITHM} unless the clients need RSA",
    )


def parse_certificate(pem: str | bytes, field: str = "certificate") -> x509.Certificate:
    """Parse one PEM certificate, raising InvalidInputError if it is not one."""
    text = _as_text(pem)
    if "PRIVATE KEY-----" in text:
        raise InvalidInputError(
            field,
            _describe_pem(text),
            "this is a private key, not a certificate; give the PEM certificate",
        )
    try:
        return x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidInputError(
            field,
            _describe_pem(text),
            "not a PEM certificate; give text that starts with "
            "'-----BEGIN CERTIFICATE-----'",
        ) from None


def parse_private_key(pem: str | bytes, field: str = "private_key") -> SigningKey:
    """Parse an unencrypted PEM private key, naming it "<value hidden>" in errors."""
    text = _as_text(pem)
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except TypeError:
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            "the key is encrypted; give it unencrypted (it is stored as a Pulumi "
            "secret), e.g. after `openssl pkey -in KEY -out PLAIN`",
        ) from None
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            "not a PEM private key; give text that starts with "
            "'-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----'",
        ) from None
    if not isinstance(key, SigningKey):
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            f"unsupported key type {type(key).__name__}; "
            "give an RSA, ECDSA or Ed25519 key",
        )
    return key


def certificate_not_after(pem: str | bytes) -> str:
    """Return the certificate's notAfter as ISO 8601 UTC, e.g. 2027-01-31T12:00:00Z."""
    return _iso8601(parse_certificate(pem).not_valid_after_utc)


def certificate_sans(pem: str | bytes) -> list[str]:
    """Return the DNS names and IP addresses of the certificate, in its order."""
    certificate = parse_certificate(pem)
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return []
    names = []
    for entry in extension.value:
        if isinstance(entry, (x509.DNSName, x509.IPAddress)):
            names.append(str(entry.value))
    return names


def certificate_fingerprint(pem: str | bytes) -> str:
    """Return the SHA-256 fingerprint of the certificate's DER, in lower-case hex."""
    der = parse_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def key_matches_certificate(cert_pem: str | bytes, key_pem: str | bytes) -> bool:
    """Tell whether the private key belongs to the certificate's public key."""
    certificate_key = parse_certificate(cert_pem).public_key()
    private_key = parse_private_key(key_pem)
    return _public_key_der(certificate_key) == _public_key_der(private_key.public_key())


def validate_ca_pair(
    cert_pem: str | bytes,
    key_pem: str | bytes,
    now: datetime | None = None,
    cert_field: str = "ca_cert_pem",
    key_field: str = "ca_key_pem",
) -> None:
    """Raise InvalidInputError unless the pair is a current CA and its own key."""
    certificate = parse_certificate(cert_pem, cert_field)
    subject = certificate.subject.rfc4514_string()
    parse_private_key(key_pem, key_field)
    if not key_matches_certificate(cert_pem, key_pem):
        raise InvalidInputError(
            key_field,
            HIDDEN_VALUE,
            f"the key does not belong to the CA certificate {subject!r}; "
            "give the private key that was created with that certificate",
        )
    if not _is_ca(certificate):
        raise InvalidInputError(
            cert_field,
            subject,
            "not a CA certificate (it lacks BasicConstraints CA=TRUE or the "
            "keyCertSign key usage); give the CA certificate, not a leaf",
        )
    _check_current(certificate, _utc_now(now), cert_field)


def validate_imported_ca(
    cert_pem: str | bytes,
    key_pem: str | bytes,
    now: datetime | None = None,
    cert_field: str = "ca_cert_pem",
    key_field: str = "ca_key_pem",
) -> None:
    """Raise InvalidInputError unless the pair can serve as a stack's own CA.

    On top of :func:`validate_ca_pair`, the certificate must be self-signed.
    The provider's own mutual-TLS check uses Python's ``ssl``, which before
    Python 3.13 accepts a chain only when it ends at a self-signed root, so an
    intermediate CA would pass here and fail at the end of every configure.
    """
    validate_ca_pair(cert_pem, key_pem, now, cert_field, key_field)
    certificate = parse_certificate(cert_pem, cert_field)
    subject = certificate.subject.rfc4514_string()
    if certificate.issuer != certificate.subject or not is_issued_by(cert_pem, cert_pem):
        issuer = certificate.issuer.rfc4514_string()
        raise InvalidInputError(
            cert_field,
            subject,
            f"not a self-signed root CA (issued by {issuer!r}); give a root CA "
            "certificate and its key, or leave the CA settings out to create one",
        )


def is_issued_by(cert_pem: str | bytes, ca_cert_pem: str | bytes) -> bool:
    """Tell whether the CA's key signed the certificate and its name is the issuer."""
    certificate = parse_certificate(cert_pem)
    ca_certificate = parse_certificate(ca_cert_pem, "ca_cert_pem")
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_issued_by(
    cert_pem: str | bytes, ca_cert_pem: str | bytes, field: str = "certificate"
) -> None:
    """Raise InvalidInputError unless the CA signed the certificate."""
    if is_issued_by(cert_pem, ca_cert_pem):
        return
    subject = parse_certificate(cert_pem).subject.rfc4514_string()
    ca_subject = parse_certificate(ca_cert_pem).subject.rfc4514_string()
    raise InvalidInputError(
        field,
        subject,
        f"not signed by the CA {ca_subject!r}; issue a new certificate from it",
    )


def _issue_leaf(
    ca_cert_pem: str,
    ca_key_pem: str,
    algorithm: str,
    validity_days: int,
    common_name: str,
    now: datetime | None,
    usage: x509.ObjectIdentifier,
    sans: list[str] | None,
) -> IssuedCertificate:
    ca_certificate = parse_certificate(ca_cert_pem, "ca_cert_pem")
    ca_key = parse_private_key(ca_key_pem, "ca_key_pem")
    _check_current(ca_certificate, _utc_now(now), "ca_cert_pem")
    key = generate_private_key(algorithm)
    not_before, not_after = _validity_window(now, validity_days)
    # Path validation also checks the CA's validity, so a leaf is unusable once the
    # CA expires. Capping not_after keeps the reported expiry true.
    not_after = min(not_after, ca_certificate.not_valid_after_utc)
    builder = _base_builder(
        _name(common_name),
        ca_certificate.subject,
        key.public_key(),
        not_before,
        not_after,
    )
    for extension, critical in _leaf_extensions(key, ca_certificate, usage, sans):
        builder = builder.add_extension(extension, critical=critical)
    return _sign(builder, key, ca_key)


def _leaf_extensions(
    key: SigningKey,
    ca_certificate: x509.Certificate,
    usage: x509.ObjectIdentifier,
    sans: list[str] | None,
) -> list[tuple[x509.ExtensionType, bool]]:
    # RSA key exchange in TLS 1.2 encrypts the premaster secret with the server's
    # key, and that needs keyEncipherment. ECDSA keys only sign.
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(digital_signature=True, key_encipherment=is_rsa), True),
        (x509.ExtendedKeyUsage([usage]), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (_authority_key_identifier(ca_certificate), False),
    ]
    if sans is not None:
        extensions.append((_subject_alternative_name(sans), False))
    return extensions


def _authority_key_identifier(
    ca_certificate: x509.Certificate,
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        )
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_certificate.public_key()
        )
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _subject_alternative_name(sans: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for san in sans:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            entries.append(x509.DNSName(san))
    return x509.SubjectAlternativeName(entries)


def _key_usage(
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _sign(
    builder: x509.CertificateBuilder, key: SigningKey, signing_key: SigningKey
) -> IssuedCertificate:
    # Ed25519 signs the message itself, so it takes no separate hash.
    algorithm = hashes.SHA256()
    if isinstance(signing_key, ed25519.Ed25519PrivateKey):
        algorithm = None
    certificate = builder.sign(signing_key, algorithm)
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return IssuedCertificate(
        cert_pem=cert_pem,
        key_pem=key_pem,
        not_after=_iso8601(certificate.not_valid_after_utc),
    )


def _validity_window(
    now: datetime | None, validity_days: int
) -> tuple[datetime, datetime]:
    if isinstance(validity_days, bool) or not isinstance(validity_days, int):
        raise InvalidInputError(
            "validity_days", validity_days, "must be a positive whole number of days"
        )
    if validity_days < 1:
        raise InvalidInputError(
            "validity_days", validity_days, "must be at least 1 day"
        )
    start = _utc_now(now)
    return start - CLOCK_SKEW_ALLOWANCE, start + timedelta(days=validity_days)


def _utc_now(now: datetime | None) -> datetime:
    """Return ``now`` (naive means UTC) or the current time, to whole seconds."""
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    # X.509 times have whole seconds, so truncating here keeps not_after exact.
    return now.astimezone(timezone.utc).replace(microsecond=0)


def _check_current(certificate: x509.Certificate, now: datetime, field: str) -> None:
    subject = certificate.subject.rfc4514_string()
    if now > certificate.not_valid_after_utc:
        expired = _iso8601(certificate.not_valid_after_utc)
        raise InvalidInputError(
            field,
            subject,
            f"the CA certificate expired at {expired}; give a current CA or "
            "leave the CA inputs empty to create one",
        )
    if now < certificate.not_valid_before_utc - CLOCK_SKEW_ALLOWANCE:
        starts = _iso8601(certificate.not_valid_before_utc)
        raise InvalidInputError(
            field,
            subject,
            f"the CA certificate is not valid before {starts}; check this "
            "machine's clock or give a CA that is valid now",
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    extensions = certificate.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    if not constraints.value.ca:
        return False
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return True
    return usage.value.key_cert_sign


def _public_key_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _iso8601(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_text(pem: str | bytes) -> str:
    if isinstance(pem, bytes):
        return pem.decode("ascii", errors="replace")
    if not isinstance(pem, str):
        raise InvalidInputError("pem", type(pem).__name__, "must be PEM text")
    return pem


def _describe_pem(text: str) -> str:
    """Name a PEM value by its first header line only, which is never secret."""
    match = _PEM_HEADER.search(text)
    if match is None:
        return HIDDEN_VALUE
    return f"<PEM block {match.group(0)}>"
