"""Table tests of provider.checks: accepted values with their normalised form, and
rejected values whose message names the value (or hides it, for keys)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest

from provider import checks
from provider.errors import InvalidInputError


def case(case_id: str, *values: object) -> pytest.ParameterSet:
    return pytest.param(*values, id=case_id)


def assert_rejected(check, value, *fragments: str, field: str | None = None) -> str:
    """Call ``check`` on ``value``, expect InvalidInputError, return its message."""
    arguments = (value,) if field is None else (value, field)
    with pytest.raises(InvalidInputError) as caught:
        check(*arguments)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    return message


# --- machine name -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        case("letters", "web"),
        case("digit-first", "1node"),
        case("all-allowed", "web-1_blue.prod"),
        case("one-character", "a"),
        case("63-characters", "a" * 63),
    ],
)
def test_machine_name_accepted(name: str) -> None:
    assert checks.check_machine_name(name) == name


@pytest.mark.parametrize(
    "name, fragment",
    [
        case("empty", "", "required"),
        case("none", None, "required"),
        case("64-characters", "a" * 64, "1 to 63"),
        case("leading-dash", "-web", "starting with a letter or digit"),
        case("leading-dot", ".web", "starting with a letter or digit"),
        case("slash", "web/1", "letters, digits"),
        case("space", "web 1", "white space"),
        case("unicode", "wéb", "letters, digits"),
        case("number", 5, "must be text"),
    ],
)
def test_machine_name_rejected(name: object, fragment: str) -> None:
    message = assert_rejected(checks.check_machine_name, name, fragment)
    assert message.startswith(f"invalid name {name!r}:")


# --- address ----------------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        case("ipv4", "203.0.113.10", "203.0.113.10"),
        case("ipv4-loopback", "127.0.0.1", "127.0.0.1"),
        case("ipv6-compressed", "2001:db8:0:0::1", "2001:db8::1"),
        case("ipv6-loopback", "::1", "::1"),
        case("host-name", "docker-1.example.com", "docker-1.example.com"),
        case("host-name-upper", "Docker.Example.COM", "docker.example.com"),
        case("trailing-dot", "docker.example.com.", "docker.example.com"),
        case("single-label", "localhost", "localhost"),
        case("digit-label", "1host.example.com", "1host.example.com"),
    ],
)
def test_address_accepted(address: str, expected: str) -> None:
    assert checks.check_address(address) == expected


@pytest.mark.parametrize(
    "address, fragments",
    [
        case("empty", "", ["required"]),
        case("none", None, ["required"]),
        case("space-inside", "docker example.com", ["white space"]),
        case("trailing-space", "10.0.0.1 ", ["white space"]),
        case("url", "tcp://10.0.0.1:2376", ["URL", "give the bare address '10.0.0.1'"]),
        case("https-url", "https://docker.example.com/", ["docker.example.com"]),
        case(
            "host-port", "10.0.0.1:22", ["host:port", "give '10.0.0.1'", "port input"]
        ),
        case("name-port", "h.example.com:2222", ["host:port", "'h.example.com'"]),
        case("ipv6-port", "[2001:db8::1]:22", ["host:port", "'2001:db8::1'"]),
        case("ipv6-brackets", "[::1]", ["brackets", "'::1' without them"]),
        case("bad-ipv4", "10.0.0.256", ["not a valid IPv4 address"]),
        case("underscore", "my_host.example.com", ["label 'my_host'"]),
        case("leading-hyphen", "-h.example.com", ["label '-h'"]),
        case("empty-label", "a..example.com", ["label ''"]),
        case("long-label", "a" * 64 + ".com", ["1 to 63"]),
        case("long-name", ".".join(["a" * 60] * 5), ["longer than 253"]),
        case("number", 10, ["must be text"]),
    ],
)
def test_address_rejected(address: object, fragments: list[str]) -> None:
    message = assert_rejected(checks.check_address, address, *fragments)
    assert message.startswith(f"invalid address {address!r}:")


def test_address_field_named() -> None:
    assert_rejected(checks.check_address, "", "invalid public_ip", field="public_ip")


# --- port -------------------------------------------------------------------


@pytest.mark.parametrize(
    "port, expected",
    [
        case("int", 22, 22),
        case("lowest", 1, 1),
        case("highest", 65535, 65535),
        case("digits", "2222", 2222),
        case("whole-float", 22.0, 22),
    ],
)
def test_port_accepted(port: object, expected: int) -> None:
    result = checks.check_port(port, "ssh_port")
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "port",
    [
        case("zero", 0),
        case("negative", -1),
        case("too-high", 70000),
        case("bool-true", True),
        case("bool-false", False),
        case("fraction", 22.5),
        case("signed-digits", "+22"),
        case("spaced-digits", " 22"),
        case("word", "ssh"),
        case("empty", ""),
        case("none", None),
        case("unicode-digits", "２２"),
    ],
)
def test_port_rejected(port: object) -> None:
    message = assert_rejected(
        checks.check_port,
        port,
        "must be an integer from 1 to 65535",
        "use 22 for a standard sshd",
        field="ssh_port",
    )
    assert message.startswith(f"invalid ssh_port {port!r}:")


def test_port_message_example() -> None:
    message = assert_rejected(checks.check_port, 70000, field="port")
    assert message == (
        "invalid port 70000: must be an integer from 1 to 65535; use 22 for a "
        "standard sshd or 2376 for dockerd with TLS"
    )


# --- SSH user ---------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    [
        case("root", "root"),
        case("ec2-user", "ec2-user"),
        case("dotted", "first.last"),
        case("underscore-first", "_svc"),
        case("upper", "Admin"),
    ],
)
def test_ssh_user_accepted(user: str) -> None:
    assert checks.check_ssh_user(user) == user


@pytest.mark.parametrize(
    "user, fragment",
    [
        case("empty", "", "required"),
        case("none", None, "required"),
        case("at-host", "root@10.0.0.1", "give the user alone"),
        case("space", "ro ot", "white space"),
        case("digit-first", "1user", "starting with a letter"),
        case("too-long", "u" * 33, "1 to 32"),
        case("colon", "user:pass", "letters, digits"),
    ],
)
def test_ssh_user_rejected(user: object, fragment: str) -> None:
    message = assert_rejected(checks.check_ssh_user, user, fragment)
    assert message.startswith(f"invalid ssh_user {user!r}:")


# --- private key ------------------------------------------------------------


def private_key_text(algorithm: str, format_name: str, passphrase=None) -> str:
    key = asyncssh.generate_private_key(algorithm)
    return key.export_private_key(format_name, passphrase).decode()


@pytest.fixture(scope="module")
def ed25519_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.mark.parametrize(
    "algorithm, format_name",
    [
        case("ed25519-openssh", "ssh-ed25519", "openssh"),
        case("ecdsa-openssh", "ecdsa-sha2-nistp256", "openssh"),
        case("ecdsa-pkcs8-pem", "ecdsa-sha2-nistp256", "pkcs8-pem"),
        case("rsa-pkcs1-pem", "ssh-rsa", "pkcs1-pem"),
        case("rsa-openssh", "ssh-rsa", "openssh"),
    ],
)
def test_private_key_accepted(algorithm: str, format_name: str) -> None:
    text = private_key_text(algorithm, format_name)
    assert checks.check_private_key(text) == text


def test_private_key_normalised(ed25519_key: asyncssh.SSHKey) -> None:
    text = ed25519_key.export_private_key().decode()
    messy = "\n  " + text.strip().replace("\n", "\r\n")
    assert checks.check_private_key(messy) == text


def test_private_key_bytes_accepted(ed25519_key: asyncssh.SSHKey) -> None:
    text = ed25519_key.export_private_key().decode()
    assert checks.check_private_key(text.encode()) == text


def key_variants(key: asyncssh.SSHKey) -> dict[str, tuple[str, str]]:
    """Return rejected inputs built from ``key``, with the expected reason."""
    private = key.export_private_key().decode()
    certificate = key.generate_user_certificate(key, "user").export_certificate()
    return {
        "public-key": (key.export_public_key().decode(), "this is a public key"),
        "certificate": (certificate.decode(), "this is a certificate"),
        "truncated": (private[: len(private) // 2], "could not be read"),
        "body-only": ("\n".join(private.splitlines()[1:-1]), "not a private key"),
        "pkcs8-encrypted": (
            key.export_private_key("pkcs8-pem", "secret").decode(),
            "the key is encrypted",
        ),
        "pkcs1-encrypted": (
            asyncssh.generate_private_key("ssh-rsa")
            .export_private_key("pkcs1-pem", "secret")
            .decode(),
            "the key is encrypted",
        ),
    }


VARIANT_IDS = [
    "public-key",
    "certificate",
    "truncated",
    "body-only",
    "pkcs8-encrypted",
    "pkcs1-encrypted",
]


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_private_key_rejected_hidden(
    ed25519_key: asyncssh.SSHKey, variant: str
) -> None:
    text, reason = key_variants(ed25519_key)[variant]
    message = assert_rejected(checks.check_private_key, text, reason)
    assert_key_text_absent(text, message)
    assert "<value hidden>" in message


@pytest.mark.parametrize(
    "value, reason",
    [
        case("empty", "", "required"),
        case("blank", "   \n", "required"),
        case("none", None, "required"),
        case("garbage", "SECRET-GARBAGE-TEXT", "not a private key"),
        case("number", 42, "required"),
    ],
)
def test_private_key_rejected_simple(value: object, reason: str) -> None:
    message = assert_rejected(checks.check_private_key, value, reason)
    assert "SECRET-GARBAGE-TEXT" not in message
    assert "<value hidden>" in message


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_private_key_openssh_encrypted_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(key_file)]
    subprocess.run(command, check=True, timeout=30)
    text = key_file.read_text()
    message = assert_rejected(checks.check_private_key, text, "the key is encrypted")
    assert_key_text_absent(text, message)


def test_private_key_field_named(ed25519_key: asyncssh.SSHKey) -> None:
    public = ed25519_key.export_public_key().decode()
    message = assert_rejected(checks.check_private_key, public, field="ssh_key")
    assert message.startswith("invalid ssh_key '<value hidden>':")


def forbid_key_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(importer_name: str, text: str) -> bool:
        raise AssertionError(f"{importer_name} called for a key accepted before")

    monkeypatch.setattr(checks, "_imports", fail)


def test_private_key_accepted_before_not_parsed(
    ed25519_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ed25519_key.export_private_key().decode()
    forbid_key_parsing(monkeypatch)
    assert checks.check_private_key(text, accepted=text) == text


def test_private_key_other_than_accepted_parsed(ed25519_key: asyncssh.SSHKey) -> None:
    text = ed25519_key.export_private_key().decode()
    public = ed25519_key.export_public_key().decode()
    message = assert_rejected(
        lambda value: checks.check_private_key(value, accepted=text), public
    )
    assert "this is a public key" in message


def assert_key_text_absent(text: str, message: str) -> None:
    """Assert that no line, and no 16-character run, of ``text`` is in ``message``."""
    for line in text.splitlines():
        if "-----" in line or len(line) < 16:
            continue
        for start in range(0, len(line) - 15, 8):
            assert line[start : start + 16] not in message


# --- host key ---------------------------------------------------------------


@pytest.fixture(scope="module")
def host_public_keys() -> dict[str, str]:
    algorithms = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    return {
        algorithm: asyncssh.generate_private_key(algorithm)
        .export_public_key()
        .decode()
        .strip()
        for algorithm in algorithms
    }


@pytest.mark.parametrize("algorithm", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_host_key_accepted(host_public_keys: dict[str, str], algorithm: str) -> None:
    line = host_public_keys[algorithm]
    key_type, data = line.split()[:2]
    assert checks.check_host_key(line) == f"{key_type} {data}"
    assert key_type == algorithm


@pytest.mark.parametrize(
    "decorate",
    [
        case("comment", lambda line: line + " root@host"),
        case("comment-words", lambda line: line + " host key of web-1"),
        case("surrounding-space", lambda line: "  " + line + "\n"),
        case("tab", lambda line: line.replace(" ", "\t", 1)),
    ],
)
def test_host_key_normalised(host_public_keys: dict[str, str], decorate) -> None:
    line = host_public_keys["ssh-ed25519"]
    assert checks.check_host_key(decorate(line)) == line


@pytest.mark.parametrize("value", [None, "", "  "], ids=repr)
def test_host_key_optional(value: object) -> None:
    assert checks.check_host_key(value) is None


def test_host_key_known_hosts_line(host_public_keys: dict[str, str]) -> None:
    line = "10.0.0.5 " + host_public_keys["ssh-ed25519"]
    assert_rejected(checks.check_host_key, line, "known_hosts", "'ssh-ed25519' on")


def test_host_key_type_mismatch(host_public_keys: dict[str, str]) -> None:
    data = host_public_keys["ssh-ed25519"].split()[1]
    line = f"ssh-rsa {data}"
    message = assert_rejected(
        checks.check_host_key, line, "does not decode as that key type"
    )
    assert data in message


@pytest.mark.parametrize(
    "line, fragment",
    [
        case("garbage", "not-a-key", "not an OpenSSH public key"),
        case("type-only", "ssh-ed25519", "not an OpenSSH public key"),
        case("bad-base64", "ssh-ed25519 AAAA!!!!", "does not decode"),
        case("unknown-type", "ssh-foo AAAAC3NzaC1lZDI1NTE5", "does not decode"),
        case("number", 5, "must be a public key line"),
    ],
)
def test_host_key_rejected(line: object, fragment: str) -> None:
    message = assert_rejected(checks.check_host_key, line, fragment)
    assert message.startswith(f"invalid host_key {line!r}:")


def test_host_key_certificate_rejected(ed25519_key: asyncssh.SSHKey) -> None:
    certificate = ed25519_key.generate_host_certificate(ed25519_key, "host")
    line = certificate.export_certificate().decode()
    assert_rejected(checks.check_host_key, line, "this is an SSH certificate")


def test_host_key_private_key_hidden(ed25519_key: asyncssh.SSHKey) -> None:
    text = ed25519_key.export_private_key().decode()
    message = assert_rejected(checks.check_host_key, text, "this is a private key")
    assert_key_text_absent(text, message)


def test_host_key_accepted_before_not_parsed(
    host_public_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = host_public_keys["ssh-ed25519"]
    forbid_key_parsing(monkeypatch)
    assert checks.check_host_key(line, accepted=line) == line


def test_host_key_other_than_accepted_parsed(host_public_keys: dict[str, str]) -> None:
    ed25519_type, ed25519_data = host_public_keys["ssh-ed25519"].split()
    rsa_data = host_public_keys["ssh-rsa"].split()[1]
    mismatched = f"{ed25519_type} {rsa_data}"
    accepted = f"{ed25519_type} {ed25519_data}"
    assert_rejected(
        lambda value: checks.check_host_key(value, accepted=accepted),
        mismatched,
        "does not decode as that key type",
    )


def test_host_key_several_lines_hidden(ed25519_key: asyncssh.SSHKey) -> None:
    text = "\n".join(ed25519_key.export_private_key().decode().splitlines()[1:-1])
    message = assert_rejected(checks.check_host_key, text, "several lines")
    assert_key_text_absent(text, message)


# --- SAN --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        case("ipv4", "192.0.2.7", "192.0.2.7"),
        case("ipv6", "2001:DB8::7", "2001:db8::7"),
        case("dns", "docker.example.com", "docker.example.com"),
        case("dns-upper", "Docker.Example.com", "docker.example.com"),
        case("wildcard", "*.example.com", "*.example.com"),
        case("localhost", "localhost", "localhost"),
    ],
)
def test_san_accepted(value: str, expected: str) -> None:
    assert checks.check_san(value) == expected


@pytest.mark.parametrize(
    "value, fragments",
    [
        case("empty", "", ["required"]),
        case("url", "https://docker.example.com", ["URL", "'docker.example.com'"]),
        case("host-port", "docker.example.com:2376", ["host:port"]),
        case("space", "docker example.com", ["white space"]),
        case("wildcard-inner", "a.*.example.com", ["unknown SAN form", "'*'"]),
        case("wildcard-partial", "web*.example.com", ["unknown SAN form", "'*'"]),
        case("wildcard-alone", "*", ["unknown SAN form", "'*'"]),
        case("underscore", "a_b.example.com", ["unknown SAN form", "label 'a_b'"]),
        case("bad-ipv4", "10.1.1.300", ["unknown SAN form", "IPv4"]),
    ],
)
def test_san_rejected(value: str, fragments: list[str]) -> None:
    message = assert_rejected(checks.check_san, value, *fragments)
    assert message.startswith(f"invalid tls_san {value!r}:")


def test_san_message_names_fix() -> None:
    message = assert_rejected(checks.check_san, "a.*.b", field="tls_san")
    assert message.endswith(": give an IP address or a DNS name")


def test_sans_list_deduplicated() -> None:
    values = ["b.example.com", "B.example.com", "10.0.0.1", "10.0.0.1"]
    assert checks.check_sans(values) == ["b.example.com", "10.0.0.1"]


def test_sans_list_names_index() -> None:
    assert_rejected(
        checks.check_sans, ["ok.example.com", "bad:22"], "invalid tls_sans[1] 'bad:22'"
    )


@pytest.mark.parametrize("value", ["a.example.com", 5], ids=repr)
def test_sans_not_a_list(value: object) -> None:
    assert_rejected(checks.check_sans, value, "must be a list")


# --- algorithm and validity -------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        case("default-none", None, "ecdsa-p256"),
        case("default-empty", "", "ecdsa-p256"),
        case("ecdsa", "ecdsa-p256", "ecdsa-p256"),
        case("rsa-2048", "rsa-2048", "rsa-2048"),
        case("rsa-4096-upper", "RSA-4096", "rsa-4096"),
    ],
)
def test_algorithm_accepted(value: object, expected: str) -> None:
    assert checks.check_algorithm(value) == expected


@pytest.mark.parametrize(
    "value",
    [case("ed25519", "ed25519"), case("rsa-1024", "rsa-1024"), case("int", 256)],
)
def test_algorithm_rejected(value: object) -> None:
    message = assert_rejected(
        checks.check_algorithm, value, "must be one of ecdsa-p256, rsa-2048, rsa-4096"
    )
    assert message.startswith(f"invalid algorithm {value!r}:")


@pytest.mark.parametrize(
    "value, expected",
    [
        case("one", 1, 1),
        case("three-years", 1095, 1095),
        case("maximum", 36500, 36500),
        case("digits", "365", 365),
        case("whole-float", 365.0, 365),
    ],
)
def test_validity_days_accepted(value: object, expected: int) -> None:
    assert checks.check_validity_days(value, "ca_validity_days") == expected


@pytest.mark.parametrize(
    "value",
    [
        case("zero", 0),
        case("negative", -30),
        case("too-long", 36501),
        case("fraction", 1.5),
        case("bool", True),
        case("word", "year"),
        case("none", None),
    ],
)
def test_validity_days_rejected(value: object) -> None:
    message = assert_rejected(
        checks.check_validity_days,
        value,
        "from 1 to 36500",
        field="ca_validity_days",
    )
    assert message.startswith(f"invalid ca_validity_days {value!r}:")


# --- run_checks -------------------------------------------------------------


class Unknown:
    """Test double of pulumi.output.Unknown, matched by module and class name."""


Unknown.__module__ = "pulumi.output"


class OtherUnknown:
    """A class named Unknown in another module, which is not a preview value."""


OtherUnknown.__name__ = "Unknown"

FIELD_CHECKS = [
    ("name", checks.check_machine_name),
    ("address", checks.check_address),
    ("ssh_port", checks.check_port),
    ("ssh_user", checks.check_ssh_user),
    ("host_key", checks.check_host_key),
    ("algorithm", checks.check_algorithm),
    ("tls_sans", checks.check_sans),
    ("validity_days", checks.optional(checks.check_validity_days)),
]


def test_run_checks_reports_every_field() -> None:
    props = {
        "name": "-bad",
        "address": "tcp://10.0.0.1",
        "ssh_port": 0,
        "ssh_user": "root",
        "validity_days": 0,
    }
    failures = checks.run_checks(props, FIELD_CHECKS)
    assert [field for field, _ in failures] == [
        "name",
        "address",
        "ssh_port",
        "validity_days",
    ]
    assert failures[0][1].startswith("invalid name '-bad':")
    assert failures[2][1].startswith("invalid ssh_port 0:")


def test_run_checks_reports_missing_required() -> None:
    failures = dict(checks.run_checks({}, FIELD_CHECKS))
    assert set(failures) == {"name", "address", "ssh_port", "ssh_user"}
    assert "required" in failures["address"]


def test_run_checks_skips_unknowns() -> None:
    props = {field: Unknown() for field, _ in FIELD_CHECKS}
    assert checks.run_checks(props, FIELD_CHECKS) == []


def test_run_checks_other_unknown_class_checked() -> None:
    failures = checks.run_checks({"ssh_port": OtherUnknown()}, FIELD_CHECKS)
    assert "ssh_port" in dict(failures)


def test_sans_keep_unknown_items() -> None:
    unknown = Unknown()
    assert checks.check_sans([unknown, "a.example.com"]) == [unknown, "a.example.com"]


def test_check_props_normalises(host_public_keys: dict[str, str]) -> None:
    props = {
        "name": "web-1",
        "address": "Docker.Example.com.",
        "ssh_port": 22.0,
        "ssh_user": "root",
        "host_key": host_public_keys["ssh-ed25519"] + " comment",
        "tls_sans": ["10.0.0.1", "10.0.0.1"],
        "extra": "kept",
    }
    normalised, failures = checks.check_props(props, FIELD_CHECKS)
    assert failures == []
    assert normalised == {
        "name": "web-1",
        "address": "docker.example.com",
        "ssh_port": 22,
        "ssh_user": "root",
        "host_key": host_public_keys["ssh-ed25519"],
        "algorithm": "ecdsa-p256",
        "tls_sans": ["10.0.0.1"],
        "extra": "kept",
    }
    assert props["ssh_port"] == 22.0


def test_check_props_keeps_unknown_values() -> None:
    unknown = Unknown()
    normalised, failures = checks.check_props({"address": unknown}, FIELD_CHECKS[1:2])
    assert failures == []
    assert normalised["address"] is unknown


def test_is_unknown_with_real_pulumi() -> None:
    output = pytest.importorskip("pulumi.output")
    assert checks.is_unknown(output.Unknown())
    assert not checks.is_unknown("04da6b54-80e4-46f7-96ec-b56ff0331ba9")
