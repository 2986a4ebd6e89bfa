"""Validation of resource inputs, run by the providers' ``check`` before any I/O.

Each ``check_*`` function takes one value and the name of its input. It returns
the value normalised (a port as ``int``, an IPv6 address compressed, a host key
without its comment), or raises :class:`InvalidInputError` naming the value, the
reason and the fix. Private keys never appear in a message, not even in
part. :func:`run_checks` applies many checks to a props dict and collects every
failure, so ``check`` can report all bad fields at once.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from typing import Any, Callable, Iterable

from provider.errors import InvalidInputError
from provider.pki import ALGORITHMS, DEFAULT_ALGORITHM, HIDDEN_VALUE

Check = Callable[..., Any]

MAX_VALIDITY_DAYS = 36500

_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_HOST_PORT = re.compile(r"(?P<host>[^:\[\]]+):(?P<port>\d+)")
_BRACKETED = re.compile(r"\[(?P<host>[^\]]*)\](:(?P<port>\d+))?")


def check_machine_name(name: Any, field: str = "name") -> str:
    """Validate a machine name, which becomes a directory and a resource name."""
    _require_text(name, field, "give a name such as 'web-1'")
    if _MACHINE_NAME.fullmatch(name) is None:
        raise InvalidInputError(
            field,
            name,
            "must be 1 to 63 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit; e.g. 'web-1'",
        )
    return name


def check_address(address: Any, field: str = "address") -> str:
    """Validate an IP address or DNS host name and return it normalised."""
    text = _require_text(address, field, "give the host's IP address or DNS name")
    _reject_url_and_port(text, field, "an address")
    ip = _parse_ip(text)
    if ip is not None:
        return ip
    problem = _host_name_problem(text)
    if problem is not None:
        raise InvalidInputError(
            field, text, f"{problem}; give an IP address or a DNS host name"
        )
    return _normalise_host_name(text)


def check_port(port: Any, field: str = "port") -> int:
    """Validate a TCP port number given as an int, a whole float or digits."""
    number = _whole_number(port)
    if number is None or not 1 <= number <= 65535:
        if "engine" in field.lower():
            usual = "use 2376, the usual port of dockerd with TLS"
        elif "ssh" in field.lower():
            usual = "use 22 for a standard sshd"
        else:
            usual = "use 22 for a standard sshd or 2376 for dockerd with TLS"
        raise InvalidInputError(
            field, port, f"must be an integer from 1 to 65535; {usual}"
        )
    return number


def check_ssh_user(user: Any, field: str = "ssh_user") -> str:
    """Validate the login name used over SSH."""
    text = _require_text(user, field, "give the login name, e.g. 'root' or 'ubuntu'")
    if "@" in text:
        raise InvalidInputError(
            field,
            text,
            "contains '@'; give the user alone, and the host in the address input",
        )
    if _SSH_USER.fullmatch(text) is None:
        raise InvalidInputError(
            field,
            text,
            "must be 1 to 32 letters, digits, '.', '_' or '-', starting with a "
            "letter or '_'; e.g. 'ubuntu'",
        )
    return text


def check_private_key(
    pem: Any, field: str = "ssh_private_key", accepted: str | None = None
) -> str:
    """Validate an unencrypted OpenSSH or PEM private key without quoting it.

    ``accepted`` is a key that passed this check before, such as the input
    of the previous run. The same text is not parsed again, so a preview
    that changes no key does without asyncssh.
    """
    if isinstance(pem, bytes):
        pem = pem.decode("utf-8", errors="replace")
    if not isinstance(pem, str) or not pem.strip():
        raise InvalidInputError(
            field, HIDDEN_VALUE, "required; give the text of the private key file"
        )
    text = pem.replace("\r\n", "\n").strip() + "\n"
    if _is_encrypted_key(text):
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            "the key is encrypted; give an unencrypted key (it is stored as a "
            "Pulumi secret), e.g. a copy decrypted with `ssh-keygen -p -N '' -f COPY`",
        )
    if text != accepted and not _imports("import_private_key", text):
        raise InvalidInputError(field, HIDDEN_VALUE, _not_private_key_reason(text))
    return text


def check_host_key(
    line: Any, field: str = "host_key", accepted: str | None = None
) -> str | None:
    """Validate an optional OpenSSH public key and return 'type base64', or None.

    ``accepted`` is a value this check returned before. A ``line`` equal to
    it is returned as it is, without parsing the key again.
    """
    if line is None or (isinstance(line, str) and not line.strip()):
        return None
    if not isinstance(line, str):
        raise InvalidInputError(field, line, "must be a public key line as text")
    if line == accepted:
        return line
    if "PRIVATE KEY" in line or _imports_as_private_key(line):
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            "this is a private key; give the host's public key, e.g. the output "
            "of `ssh-keyscan -t ed25519 HOST` without the host name",
        )
    if "\n" in line.strip():
        raise InvalidInputError(
            field,
            HIDDEN_VALUE,
            "has several lines; give one public key line such as "
            "'ssh-ed25519 AAAAC3Nza...'",
        )
    words = line.split()
    start = _key_type_position(words)
    if start is None or len(words) < start + 2:
        raise InvalidInputError(
            field,
            line,
            "not an OpenSSH public key; give a line such as "
            "'ssh-ed25519 AAAAC3Nza...', e.g. from /etc/ssh/ssh_host_ed25519_key.pub",
        )
    if start > 0:
        raise InvalidInputError(
            field,
            line,
            "starts with a known_hosts host field; give only the key type and "
            f"the key, from {words[start]!r} on",
        )
    return _parse_host_public_key(words[0], words[1], line, field)


def check_san(value: Any, field: str = "tls_san") -> str:
    """Validate one subject alternative name: an IP address or a DNS name."""
    text = _require_text(value, field, "give an IP address or a DNS name")
    _reject_url_and_port(text, field, "a SAN")
    ip = _parse_ip(text)
    if ip is not None:
        return ip
    name = text
    if name.startswith("*."):
        name = name[2:]
    problem = _host_name_problem(name)
    if "*" in name:
        problem = "'*' is allowed only as the whole first label, as in *.example.com"
    if problem is not None:
        raise InvalidInputError(
            field,
            text,
            f"unknown SAN form ({problem}): give an IP address or a DNS name",
        )
    return _normalise_host_name(text)


def check_sans(values: Any, field: str = "tls_sans") -> list[Any]:
    """Validate a list of SANs, keeping unknown items and dropping repeats."""
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InvalidInputError(
            field, values, "must be a list of IP addresses or DNS names"
        )
    checked = []
    for index, value in enumerate(values):
        if is_unknown(value):
            checked.append(value)
            continue
        san = check_san(value, f"{field}[{index}]")
        if san not in checked:
            checked.append(san)
    return checked


def check_algorithm(value: Any, field: str = "algorithm") -> str:
    """Validate a key algorithm name, where None or '' selects DEFAULT_ALGORITHM."""
    if value is None or value == "":
        return DEFAULT_ALGORITHM
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in ALGORITHMS:
        raise InvalidInputError(
            field,
            value,
            f"must be one of {', '.join(ALGORITHMS)}; use {DEFAULT_ALGORITHM} "
            "unless a client needs RSA",
        )
    return text


def check_validity_days(value: Any, field: str = "validity_days") -> int:
    """Validate a certificate lifetime in days, from 1 to MAX_VALIDITY_DAYS."""
    number = _whole_number(value)
    if number is None or not 1 <= number <= MAX_VALIDITY_DAYS:
        raise InvalidInputError(
            field,
            value,
            f"must be a whole number of days from 1 to {MAX_VALIDITY_DAYS}; "
            "e.g. 1095 for three years",
        )
    return number


def check_rotate(value: Any, field: str = "rotate") -> str:
    """Validate a rotation trigger: any text or number, kept as text.

    Only a change of the value matters, never the value itself.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInputError(
            field,
            value,
            "must be text or a number, e.g. the date of the rotation; change it "
            "to rotate",
        )
    return str(value)


def optional(check: Check) -> Check:
    """Wrap ``check`` so that a missing value (None) passes as None."""

    def check_optional(value: Any, field: str) -> Any:
        if value is None:
            return None
        return check(value, field)

    check_optional.__name__ = f"optional_{check.__name__}"
    return check_optional


def is_unknown(value: Any) -> bool:
    """Tell whether ``value`` is a ``pulumi.output.Unknown`` from a preview."""
    # Matching by name keeps pulumi out of this module's imports.
    cls = type(value)
    return cls.__name__ == "Unknown" and cls.__module__ == "pulumi.output"


def check_props(
    props: dict[str, Any], field_checks: Iterable[tuple[str, Check]]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Run each check on its field and return the normalised props and failures."""
    normalised = dict(props)
    failures: list[tuple[str, str]] = []
    for field, check in field_checks:
        value = props.get(field)
        if is_unknown(value):
            continue
        try:
            result = check(value, field)
        except InvalidInputError as error:
            failures.append((field, str(error)))
            continue
        if result is not None or field in props:
            normalised[field] = result
    return normalised, failures


def run_checks(
    props: dict[str, Any], field_checks: Iterable[tuple[str, Check]]
) -> list[tuple[str, str]]:
    """Run each check on its field and return every (field, message) failure."""
    return check_props(props, field_checks)[1]


def _require_text(value: Any, field: str, fix: str) -> str:
    if value is None or value == "":
        raise InvalidInputError(field, value, f"required; {fix}")
    if not isinstance(value, str):
        raise InvalidInputError(
            field, value, f"must be text, not {type(value).__name__}; {fix}"
        )
    if any(character.isspace() for character in value):
        raise InvalidInputError(
            field, value, f"contains white space; {fix}, with no spaces"
        )
    return value


def _reject_url_and_port(text: str, field: str, input_kind: str) -> None:
    """Raise for 'scheme://...', 'host:port' and '[ipv6]' forms."""
    if "://" in text:
        host = urllib.parse.urlsplit(text).hostname or "the host part"
        raise InvalidInputError(
            field, text, f"a URL is not {input_kind}; give the bare address {host!r}"
        )
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed is not None and bracketed.group("port") is not None:
        _raise_host_port(text, field, bracketed.group("host"))
    if bracketed is not None:
        raise InvalidInputError(
            field,
            text,
            f"brackets are not part of {input_kind}; "
            f"give {bracketed.group('host')!r} without them",
        )
    host_port = _HOST_PORT.fullmatch(text)
    if host_port is not None:
        _raise_host_port(text, field, host_port.group("host"))


def _raise_host_port(text: str, field: str, host: str) -> None:
    raise InvalidInputError(
        field,
        text,
        f"host:port form; give {host!r} here and the port in the port input",
    )


def _parse_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _host_name_problem(name: str) -> str | None:
    """Return why ``name`` is not an RFC 1123 host name, or None if it is one."""
    name = name.removesuffix(".")
    if not name:
        return "empty host name"
    if len(name) > 253:
        return "longer than 253 characters"
    labels = name.split(".")
    for label in labels:
        if _HOST_LABEL.fullmatch(label) is None:
            return (
                f"label {label!r} must be 1 to 63 letters, digits or '-', "
                "not starting or ending with '-'"
            )
    # An all-digit last label means a mistyped IPv4 address, such as 10.0.0.256.
    if labels[-1].isdigit():
        return "not a valid IPv4 address"
    return None


def _normalise_host_name(name: str) -> str:
    # DNS names are case-insensitive, and a certificate SAN has no trailing dot.
    return name.removesuffix(".").lower()


def _whole_number(value: Any) -> int | None:
    """Return ``value`` as an int, or None when it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # Pulumi sends numbers through gRPC as protobuf doubles, so 22 arrives as 22.0.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _is_encrypted_key(text: str) -> bool:
    if "BEGIN ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return True
    if "BEGIN OPENSSH PRIVATE KEY" not in text:
        return False
    # The OpenSSH format names its cipher right after the magic string, and
    # checking it here does not depend on asyncssh having bcrypt.
    body = "".join(line for line in text.splitlines() if "-----" not in line)
    try:
        blob = base64.b64decode(body, validate=False)
    except ValueError:
        return False
    magic = b"openssh-key-v1\x00"
    if not blob.startswith(magic) or len(blob) < len(magic) + 4:
        return False
    length = int.from_bytes(blob[len(magic) : len(magic) + 4], "big")
    cipher = blob[len(magic) + 4 : len(magic) + 4 + length]
    return cipher != b"none"


def _not_private_key_reason(text: str) -> str:
    """Say what ``text`` is instead of a private key, without quoting it."""
    if _imports("import_certificate", text):
        return "this is a certificate; give the private key file"
    if _imports("import_public_key", text):
        return "this is a public key; give the private key file"
    if "-----BEGIN" in text:
        return (
            "the private key could not be read (damaged or an unsupported "
            "type); give an OpenSSH or PEM private key file"
        )
    return "not a private key; give the text of an OpenSSH or PEM private key file"


def _imports_as_private_key(text: str) -> bool:
    return _imports("import_private_key", text)


def _imports(importer_name: str, text: str) -> bool:
    """Tell whether asyncssh's ``importer_name`` function accepts ``text``."""
    # Imported here because asyncssh takes about 0.2 s to import (measured
    # with python -X importtime on a 2-core machine). Every provider process
    # loads this module, also when its check and diff parse no key.
    import asyncssh

    try:
        getattr(asyncssh, importer_name)(text)
    except (asyncssh.KeyImportError, ValueError):
        return False
    return True


def _key_type_position(words: list[str]) -> int | None:
    """Return the index of the first word that names an SSH key type."""
    for index, word in enumerate(words[:2]):
        if word.startswith(("ssh-", "ecdsa-sha2-", "sk-")):
            return index
    return None


def _parse_host_public_key(key_type: str, data: str, line: str, field: str) -> str:
    if "-cert-v01@openssh.com" in key_type:
        raise InvalidInputError(
            field,
            line,
            "this is an SSH certificate; give the host's plain public key, "
            "e.g. /etc/ssh/ssh_host_ed25519_key.pub",
        )
    normalised = f"{key_type} {data}"
    # asyncssh also rejects key data whose embedded type differs from key_type.
    if not _imports("import_public_key", normalised):
        raise InvalidInputError(
            field,
            line,
            "the key data does not decode as that key type; copy the whole line "
            "from the host's /etc/ssh/ssh_host_*_key.pub",
        )
    return normalised
