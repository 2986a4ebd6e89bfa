"""``CertAuthority``: the CA and the client certificate of a stack's machines.

Everything happens on the machine running Pulumi; nothing is remote. Every
input change replaces the resource, since a new CA invalidates every
certificate it signed (the machines that use it are re-signed in the same
``pulumi up``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from provider import checks, pki
from provider.errors import InvalidInputError
from provider.progress import report
from provider.resources.base import changed_keys, run_checks, short_errors

INPUTS = ("algorithm", "validity_days", "client_validity_days", "common_name")
SECRET_OUTPUTS = ["ca_key_pem", "client_key_pem"]
DEFAULT_VALIDITY_DAYS = 3650
DEFAULT_CLIENT_VALIDITY_DAYS = 1095


def _check_common_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise InvalidInputError(
            "common_name", value, "must be 1 to 64 characters of text"
        )
    return value.strip()


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
            ],
        )
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = changed_keys(olds, news, INPUTS)
        return DiffResult(changes=bool(replaces), replaces=replaces)

    @short_errors
    def create(self, props: dict[str, Any]) -> CreateResult:
        algorithm = props.get("algorithm") or pki.DEFAULT_ALGORITHM
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
        return ReadResult(id_, props)

    def update(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> UpdateResult:
        # diff replaces on every input change, so an update changes nothing.
        return UpdateResult({**olds, **{key: news.get(key) for key in INPUTS}})


class CertAuthority(Resource, module="docker-machine", name="CertAuthority"):
    """A CA (ECDSA P-256 by default) and a client certificate it signed.

    The private keys are secret outputs.
    """

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
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "algorithm": algorithm,
            "validity_days": validity_days,
            "client_validity_days": client_validity_days,
            "common_name": common_name,
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
