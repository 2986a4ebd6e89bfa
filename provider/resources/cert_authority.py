"""``CertAuthority``: the CA and the client certificate of a stack's machines.

Everything happens on the machine running Pulumi; nothing is remote. The CA is
created here, or imported: a CA certificate and key the user gives. A change
of any input that shapes the CA replaces the resource, and with it the CA and
the client certificate. The machines that use it are re-signed in the same
``pulumi up``, because their server certificates depend on the CA. Refresh
warns about a CA or client certificate near its expiry.
"""

from __future__ import annotations

import uuid
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from provider import checks, expiry, pki
from provider.errors import InvalidInputError
from provider.progress import report
from provider.resources.base import changed_keys, is_unknown, run_checks, short_errors

# Inputs that shape the CA or the client certificate: a change replaces both.
# ``rotate`` exists only to trigger that replacement.
# NOTE: with an imported CA the replacement keeps the same CA, so ``rotate``
# renews only the client certificate, and the old one stays trusted.
REPLACE_INPUTS = (
    "algorithm",
    "validity_days",
    "client_validity_days",
    "common_name",
    "rotate",
    "imported_ca_cert_pem",
    "imported_ca_key_pem",
)
# Inputs that only change what refresh reports.
UPDATE_INPUTS = ("expiry_warning_days",)
INPUTS = REPLACE_INPUTS + UPDATE_INPUTS
SECRET_OUTPUTS = ["ca_key_pem", "client_key_pem", "imported_ca_key_pem"]
RENEW_HINT = (
    "renew the CA and the client certificate with a new value of the "
    "certAuthority rotate setting (the CertAuthority input rotate) and `pulumi up`"
)
DEFAULT_VALIDITY_DAYS = 3650
DEFAULT_CLIENT_VALIDITY_DAYS = 1095


def _check_common_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise InvalidInputError(
            "common_name", value, "must be 1 to 64 characters of text"
        )
    return value.strip()


def _imported_pair_failures(inputs: dict[str, Any]) -> list[CheckFailure]:
    """Check that an imported CA comes with its key, is a CA and is current."""
    cert_pem = inputs.get("imported_ca_cert_pem")
    key_pem = inputs.get("imported_ca_key_pem")
    if is_unknown(cert_pem) or is_unknown(key_pem) or (not cert_pem and not key_pem):
        return []
    if not key_pem:
        reason = (
            "imported_ca_key_pem is missing: an imported CA needs its private key "
            "too, so give both imported_ca_cert_pem and imported_ca_key_pem"
        )
        return [CheckFailure("imported_ca_key_pem", reason)]
    if not cert_pem:
        reason = (
            "imported_ca_cert_pem is missing: give the CA certificate that "
            "belongs to imported_ca_key_pem"
        )
        return [CheckFailure("imported_ca_cert_pem", reason)]
    try:
        pki.validate_imported_ca(
            cert_pem, key_pem, cert_field="imported_ca_cert_pem",
            key_field="imported_ca_key_pem",
        )
    except InvalidInputError as error:
        return [CheckFailure(error.field, str(error))]
    return []


def _imported_ca(props: dict[str, Any]) -> pki.IssuedCertificate | None:
    cert_pem = props.get("imported_ca_cert_pem")
    if not cert_pem:
        return None
    return pki.IssuedCertificate(
        cert_pem=cert_pem,
        key_pem=props["imported_ca_key_pem"],
        not_after=pki.certificate_not_after(cert_pem),
    )


class CertAuthorityProvider(ResourceProvider):
    """Creates the CA key and certificate and the client certificate."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = run_checks(
            news,
            [
                ("algorithm", checks.check_algorithm),
                (
                    "validity_days",
                    lambda v: checks.check_validity_days(v, "validity_days"),
                ),
                (
                    "client_validity_days",
                    lambda v: checks.check_validity_days(v, "client_validity_days"),
                ),
                ("common_name", _check_common_name),
                ("rotate", checks.check_rotate),
                ("expiry_warning_days", expiry.check_warning_days),
            ],
        )
        failures += _imported_pair_failures(inputs)
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = changed_keys(olds, news, REPLACE_INPUTS)
        updates = changed_keys(olds, news, UPDATE_INPUTS)
        return DiffResult(changes=bool(replaces or updates), replaces=replaces)

    @short_errors
    def create(self, props: dict[str, Any]) -> CreateResult:
        algorithm = props.get("algorithm") or pki.DEFAULT_ALGORITHM
        ca = _imported_ca(props)
        if ca is not None:
            subject = pki.parse_certificate(ca.cert_pem).subject.rfc4514_string()
            report(f"using the imported CA {subject!r}, valid until {ca.not_after}")
        else:
            common_name = props.get("common_name") or "pulumi-docker-machine CA"
            report(f"creating a {algorithm} CA {common_name!r}")
            ca = pki.create_ca(
                algorithm,
                # Numbers cross the engine as doubles: 3650 arrives as 3650.0.
                int(props.get("validity_days") or DEFAULT_VALIDITY_DAYS),
                common_name,
            )

        report("issuing the client certificate")
        client = pki.issue_client_certificate(
            ca.cert_pem,
            ca.key_pem,
            algorithm,
            int(props.get("client_validity_days") or DEFAULT_CLIENT_VALIDITY_DAYS),
            "docker client",
        )

        outputs = {key: props.get(key) for key in INPUTS}
        outputs.update(
            ca_cert_pem=ca.cert_pem,
            ca_key_pem=ca.key_pem,
            ca_not_after=ca.not_after,
            ca_fingerprint=pki.certificate_fingerprint(ca.cert_pem),
            client_cert_pem=client.cert_pem,
            client_key_pem=client.key_pem,
            client_not_after=client.not_after,
        )
        return CreateResult(f"ca-{uuid.uuid4().hex[:16]}", outputs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # Nothing outside the state to compare with: the CA exists only here.
        # What can change is the time, so refresh warns about near expiry.
        expiry.warn_about_expiry(
            {
                f"the CA certificate of {id_}": props.get("ca_not_after"),
                f"the client certificate of {id_}": props.get("client_not_after"),
            },
            props.get("expiry_warning_days"),
            RENEW_HINT,
        )
        return ReadResult(id_, props)

    def update(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> UpdateResult:
        # diff replaces on any other change, so only UPDATE_INPUTS reach here
        # and no certificate is issued again.
        return UpdateResult({**olds, **{key: news.get(key) for key in INPUTS}})


class CertAuthority(Resource, module="docker-machine", name="CertAuthority"):
    """A CA (ECDSA P-256 by default) and a client certificate it signed.

    With ``imported_ca_cert_pem`` and ``imported_ca_key_pem`` the CA is the
    given one (a self-signed CA certificate and its key, passed as secrets),
    and ``validity_days`` and ``common_name`` are not used. The private keys
    are secret outputs.
    """

    expiry_warning_days: pulumi.Output[int]
    ca_cert_pem: pulumi.Output[str]
    ca_key_pem: pulumi.Output[str]
    ca_not_after: pulumi.Output[str]
    ca_fingerprint: pulumi.Output[str]
    client_cert_pem: pulumi.Output[str]
    client_key_pem: pulumi.Output[str]
    client_not_after: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        algorithm: pulumi.Input[str] = pki.DEFAULT_ALGORITHM,
        validity_days: pulumi.Input[int] = DEFAULT_VALIDITY_DAYS,
        client_validity_days: pulumi.Input[int] = DEFAULT_CLIENT_VALIDITY_DAYS,
        common_name: pulumi.Input[str] = "pulumi-docker-machine CA",
        rotate: pulumi.Input[str] | None = None,
        expiry_warning_days: pulumi.Input[int] = expiry.DEFAULT_WARNING_DAYS,
        imported_ca_cert_pem: pulumi.Input[str] | None = None,
        imported_ca_key_pem: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        if imported_ca_key_pem is not None:
            imported_ca_key_pem = pulumi.Output.secret(imported_ca_key_pem)
        props = {
            "algorithm": algorithm,
            "validity_days": validity_days,
            "client_validity_days": client_validity_days,
            "common_name": common_name,
            "rotate": rotate,
            "expiry_warning_days": expiry_warning_days,
            "imported_ca_cert_pem": imported_ca_cert_pem,
            "imported_ca_key_pem": imported_ca_key_pem,
            "ca_cert_pem": None,
            "ca_key_pem": None,
            "ca_not_after": None,
            "ca_fingerprint": None,
            "client_cert_pem": None,
            "client_key_pem": None,
            "client_not_after": None,
        }
        secrets = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        super().__init__(
            CertAuthorityProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secrets),
        )
