"""The ``certAuthority`` stack settings, read into CertAuthority arguments.

An imported CA (``caCertPem``/``caCertFile`` with ``caKeyPem``/``caKeyFile``)
is checked here, before any resource exists, so that `pulumi preview` names
the stack setting at fault. The key never appears in a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provider import checks, expiry, pki
from provider.errors import InvalidInputError

# Stack setting name -> CertAuthority argument, for the settings passed as they are.
PLAIN_SETTINGS = {
    "algorithm": "algorithm",
    "validityDays": "validity_days",
    "clientValidityDays": "client_validity_days",
    "commonName": "common_name",
}
IMPORT_SETTINGS = {"caCertPem", "caCertFile", "caKeyPem", "caKeyFile"}
# These shape a CA the stack creates, so they conflict with an imported CA.
CREATED_CA_SETTINGS = ("validityDays", "commonName")
KEYS = {*PLAIN_SETTINGS, *IMPORT_SETTINGS, "rotate", "expiryWarningDays"}


def parse_cert_authority(settings: Any, is_secret: bool = False) -> dict[str, Any]:
    """Map the optional ``certAuthority`` settings to CertAuthority arguments.

    ``is_secret`` is True when the stack stores ``certAuthority`` encrypted.
    A ``caKeyPem`` in plaintext configuration is rejected.
    """
    settings = settings or {}
    if not isinstance(settings, dict):
        raise InvalidInputError("certAuthority", settings, "must be a mapping")
    # A setting set to null counts as unset, so it takes its default.
    settings = {key: value for key, value in settings.items() if value is not None}
    unknown = sorted(set(settings) - KEYS)
    if unknown:
        raise InvalidInputError(
            f"certAuthority.{unknown[0]}",
            settings[unknown[0]],
            f"unknown setting; use {', '.join(sorted(KEYS))}",
        )
    arguments = {
        PLAIN_SETTINGS[key]: value
        for key, value in settings.items()
        if key in PLAIN_SETTINGS
    }
    if "rotate" in settings:
        arguments["rotate"] = checks.check_rotate(
            settings["rotate"], "certAuthority.rotate"
        )
    if "expiryWarningDays" in settings:
        arguments["expiry_warning_days"] = expiry.check_warning_days(
            settings["expiryWarningDays"], "certAuthority.expiryWarningDays"
        )
    arguments.update(_imported_ca(settings, is_secret))
    return arguments


def _imported_ca(settings: dict[str, Any], is_secret: bool) -> dict[str, str]:
    """Read and check the imported CA settings; return the PEM arguments."""
    if not IMPORT_SETTINGS & set(settings):
        return {}
    cert_field, cert_pem = _read_pem(settings, "caCertPem", "caCertFile", False)
    key_field, key_pem = _read_pem(settings, "caKeyPem", "caKeyFile", True)
    if cert_pem is None or key_pem is None:
        missing, present = ("caCertPem", key_field) if cert_pem is None else (
            "caKeyPem",
            cert_field,
        )
        raise InvalidInputError(
            f"certAuthority.{missing}",
            None,
            f"missing: {present} is set, and an imported CA needs both its "
            f"certificate (caCertPem or caCertFile) and its key (caKeyPem or "
            f"caKeyFile)",
        )
    if key_field == "certAuthority.caKeyPem" and not is_secret:
        raise InvalidInputError(
            key_field,
            pki.HIDDEN_VALUE,
            "the CA key is stored in plaintext in the stack configuration; set "
            "it as a secret with `pulumi config set --secret --path "
            "certAuthority.caKeyPem < CA-KEY.pem`, or use caKeyFile",
        )
    for name in CREATED_CA_SETTINGS:
        if name in settings:
            raise InvalidInputError(
                f"certAuthority.{name}",
                settings[name],
                "applies only to a CA this stack creates, not to an imported "
                "CA; remove it",
            )
    pki.validate_imported_ca(cert_pem, key_pem, cert_field=cert_field, key_field=key_field)
    return {"imported_ca_cert_pem": cert_pem, "imported_ca_key_pem": key_pem}


def _read_pem(
    settings: dict[str, Any], inline_name: str, file_name: str, secret: bool
) -> tuple[str, str | None]:
    """Return the field name that supplied a PEM value, and the value or None."""
    inline = settings.get(inline_name)
    path_text = settings.get(file_name)
    if inline and path_text:
        raise InvalidInputError(
            f"certAuthority.{file_name}",
            path_text,
            f"give either {inline_name} or {file_name}, not both",
        )
    if inline:
        if not isinstance(inline, str):
            displayed_value = pki.HIDDEN_VALUE if secret else inline
            raise InvalidInputError(
                f"certAuthority.{inline_name}", displayed_value, "must be PEM text"
            )
        return f"certAuthority.{inline_name}", inline
    if not path_text:
        return f"certAuthority.{inline_name}", None
    field = f"certAuthority.{file_name}"
    if not isinstance(path_text, str):
        raise InvalidInputError(field, path_text, "must be the path of a PEM file")
    try:
        return field, Path(path_text).expanduser().read_text()
    except (OSError, ValueError) as error:
        # The ValueError is a UnicodeDecodeError, or pathlib's error for a NUL
        # character in the path.
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
        elif isinstance(error, UnicodeDecodeError):
            reason = "not text"
        else:
            reason = "not a valid path"
        raise InvalidInputError(
            field,
            path_text,
            f"cannot be read ({reason}); give the path of an existing PEM file "
            f"on this machine",
        ) from None
