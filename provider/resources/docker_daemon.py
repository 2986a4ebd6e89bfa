"""``DockerDaemonConfig``: dockerd listening on TCP with mutual TLS.

Given a Host and a CertAuthority, create and update sign the server
certificate, upload it with the CA certificate and the configuration, restart
Docker and check the listener from the machine running Pulumi. Refresh reads
the configuration back so that a hand edit on the host shows as drift, and
destroy puts the host back on its Unix socket alone.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

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

from provider import certdir, checks, engine_install, engine_options, expiry, operation_log, pki
from provider.errors import SSHConnectError
from provider.progress import report
from provider.remote_scripts import describe_drift
from provider.resources.base import (
    changed_keys,
    is_unknown,
    run_async,
    run_checks,
    short_errors,
)

if TYPE_CHECKING:
    from provider.configure import ConfigureRequest

# provider.configure, and asyncssh with it, is imported inside create, update,
# read and delete. Every preview loads this module for check and diff, which
# reach no host.

# Inputs that need work on the host when they change. A new host key is
# there too: it usually means the machine was rebuilt and lost its settings.
APPLY_INPUTS = (
    "extra_sans",
    "engine_port",
    "engine",
    "driver",
    "ca_cert_pem",
    "ca_key_pem",
    "host_key",
    "rotate_server_cert",
    "install",
)
# Inputs used only to reach the host or to check the listener.
ACCESS_INPUTS = (
    "machine_name",
    "ssh_user",
    "ssh_private_key",
    "client_cert_pem",
    "client_key_pem",
    "cert_path",
    "server_validity_days",
    "host_state",
)
# Another address or SSH port is another machine: configure the new one and
# remove the listener from the old one.
REPLACE_ON = ("address", "ssh_port")
# Inputs that change only what refresh reports.
REPORT_INPUTS = ("expiry_warning_days",)
INPUTS = REPLACE_ON + APPLY_INPUTS + ACCESS_INPUTS + REPORT_INPUTS
SECRET_OUTPUTS = ["ssh_private_key", "ca_key_pem", "client_key_pem", "server_key_pem"]
DEFAULT_ENGINE_PORT = 2376
DEFAULT_SERVER_VALIDITY_DAYS = 1095
SERVER_RENEW_HINT = (
    "renew it with a new value of the machine's rotateServerCert setting (the "
    "DockerDaemonConfig input rotate_server_cert) and `pulumi up`"
)


def _check_ca_cert(value: Any) -> str:
    pki.parse_certificate(value, "ca_cert_pem")
    return value


def _port_clash(inputs: dict[str, Any], failures: list) -> list[CheckFailure]:
    """Reject an engine port equal to the SSH port of the same address."""
    ssh_port = inputs.get("ssh_port")
    engine_port = inputs.get("engine_port")
    if failures or is_unknown(ssh_port) or is_unknown(engine_port):
        return []
    if ssh_port is None or engine_port is None:
        return []
    if int(engine_port) != int(ssh_port):
        return []
    message = (
        f"invalid engine_port {int(engine_port)}: sshd already listens on that port "
        f"of the host; use 2376, the usual port of dockerd with TLS"
    )
    return [CheckFailure("engine_port", message)]


def _request(props: dict[str, Any]) -> ConfigureRequest:
    from provider.configure import ConfigureRequest

    return ConfigureRequest(
        machine_name=props["machine_name"],
        address=props["address"],
        ssh_port=int(props["ssh_port"]),
        ssh_user=props["ssh_user"],
        ssh_private_key=props["ssh_private_key"],
        host_key=props.get("host_key") or None,
        engine_port=int(props.get("engine_port") or DEFAULT_ENGINE_PORT),
        ca_cert_pem=props["ca_cert_pem"],
        client_cert_pem=props["client_cert_pem"],
        client_key_pem=props["client_key_pem"],
        engine=props.get("engine") or {},
        driver=props.get("driver") or "generic",
        install=props.get("install"),
    )


def _changed_inputs(olds: dict[str, Any], news: dict[str, Any], keys: tuple) -> list[str]:
    """Return the changed inputs among ``keys``; no engine equals an empty one."""
    changes = changed_keys(olds, news, keys)
    if "engine" in changes and (olds.get("engine") or {}) == (news.get("engine") or {}):
        changes.remove("engine")
    return changes


def _sign_server_certificate(props: dict[str, Any]) -> pki.IssuedCertificate:
    sans = pki.server_sans(props["address"], list(props.get("extra_sans") or []))
    return pki.issue_server_certificate(
        props["ca_cert_pem"],
        props["ca_key_pem"],
        sans,
        validity_days=int(props.get("server_validity_days") or DEFAULT_SERVER_VALIDITY_DAYS),
        common_name=props["machine_name"],
    )


def _server_sans(props: dict[str, Any]) -> list[str]:
    return pki.server_sans(props["address"], list(props.get("extra_sans") or []))


def _needs_new_server_certificate(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    if not olds.get("server_cert_pem") or not olds.get("server_key_pem"):
        return True
    if olds.get("ca_cert_pem") != news.get("ca_cert_pem"):
        return True
    if olds.get("rotate_server_cert") != news.get("rotate_server_cert"):
        return True
    return olds.get("server_sans") != _server_sans(news)


def _has_drifted(olds: dict[str, Any]) -> bool:
    """Tell whether refresh saw the host differ from what was applied."""
    if olds.get("unreachable"):
        return True
    applied = olds.get("applied")
    return bool(applied) and bool(describe_drift(applied, olds.get("observed") or {}))


class DockerDaemonConfigProvider(ResourceProvider):
    """Configures, reads back and removes dockerd's mutual-TLS listener."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = run_checks(
            news,
            [
                ("machine_name", checks.check_machine_name),
                ("address", checks.check_address),
                ("ssh_port", lambda v: checks.check_port(v, "ssh_port")),
                ("engine_port", lambda v: checks.check_port(v, "engine_port")),
                ("extra_sans", lambda v: checks.check_sans(v, "extra_sans")),
                (
                    "server_validity_days",
                    lambda v: checks.check_validity_days(v, "server_validity_days"),
                ),
                ("ca_cert_pem", _check_ca_cert),
                (
                    "rotate_server_cert",
                    lambda v: checks.check_rotate(v, "rotate_server_cert"),
                ),
                ("expiry_warning_days", expiry.check_warning_days),
                ("engine", engine_options.check_engine),
                ("install", engine_install.check_install),
            ],
        )
        failures += _port_clash(inputs, failures)
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changes = _changed_inputs(olds, news, INPUTS)
        # During preview the outputs of a Host being updated are unknown, for
        # example a VM being stopped or started. Only a known new address or
        # port means another machine.
        replaces = [
            key for key in changes if key in REPLACE_ON and not is_unknown(news.get(key))
        ]
        return DiffResult(
            changes=bool(changes) or _has_drifted(olds), replaces=replaces
        )

    @short_errors
    def create(self, props: dict[str, Any]) -> CreateResult:
        from provider.configure import configure_host

        server = _sign_server_certificate(props)
        with operation_log.record(props["machine_name"], "configure"):
            outputs = run_async(
                configure_host(_request(props), server, undo_on_failure=True)
            )
        return CreateResult(
            f"{props['machine_name']}-{uuid.uuid4().hex[:8]}",
            self._outputs(props, server, outputs),
        )

    @short_errors
    def update(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> UpdateResult:
        from provider.configure import configure_host

        if _needs_new_server_certificate(olds, news):
            server = _sign_server_certificate(news)
        else:
            server = pki.IssuedCertificate(
                olds["server_cert_pem"],
                olds["server_key_pem"],
                olds["server_cert_not_after"],
            )
        apply_changes = _changed_inputs(olds, news, APPLY_INPUTS)
        if (
            not apply_changes
            and not _has_drifted(olds)
            and server.cert_pem == olds.get("server_cert_pem")
        ):
            # Only the means of access changed (SSH key, host key, client
            # certificate): keep the host as it is and record the new values.
            return UpdateResult({**olds, **{key: news.get(key) for key in INPUTS}})
        with operation_log.record(news["machine_name"], "configure"):
            outputs = run_async(
                configure_host(_request(news), server, undo_on_failure=False)
            )
        return UpdateResult(self._outputs(news, server, outputs))

    @short_errors
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from provider.configure import observe_host

        expiry.warn_about_expiry(
            {f"the server certificate of {props['machine_name']}": props.get(
                "server_cert_not_after"
            )},
            props.get("expiry_warning_days"),
            SERVER_RENEW_HINT,
        )
        if props.get("host_state") == "stopped":
            # A stopped machine keeps its settings on disk; nothing to read now.
            return ReadResult(id_, props)
        try:
            with operation_log.record(props["machine_name"], "read"):
                observed = run_async(observe_host(_request(props)))
        except SSHConnectError as error:
            # A machine that is down (a VM killed by hand, an instance
            # stopped outside Pulumi) is drift, not a failed refresh: the
            # next `pulumi up` configures it again once its Host is running.
            message = f"the host did not respond over SSH: {error}"
            report(f"{props['machine_name']}: {message}")
            return ReadResult(id_, {**props, "unreachable": message, "drift": [message]})
        drift = describe_drift(props.get("applied") or {}, observed)
        return ReadResult(
            id_, {**props, "observed": observed, "drift": drift, "unreachable": None}
        )

    @short_errors
    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("host_state") == "stopped":
            report(
                f"{props['machine_name']} is stopped: its TLS settings stay on its "
                f"disk, which goes when its Host does"
            )
            certdir.remove_cert_dir(props.get("cert_path"))
            return
        from provider.configure import unconfigure_host

        try:
            run_async(unconfigure_host(_request(props)))
        except SSHConnectError as error:
            error.add_note(
                f"The TLS settings are still on {props['address']} and the "
                f"resource stays in the stack. Run the command again once the host "
                f"is back; if the machine is gone for good, drop the resource "
                f"with `pulumi state delete URN` (the URN is in `pulumi stack "
                f"--show-urns`)."
            )
            raise
        certdir.remove_cert_dir(props.get("cert_path"))

    @staticmethod
    def _outputs(
        props: dict[str, Any], server: pki.IssuedCertificate, result: dict[str, Any]
    ) -> dict[str, Any]:
        outputs = {key: props.get(key) for key in INPUTS}
        outputs.update(result)
        outputs.update(
            server_cert_pem=server.cert_pem,
            server_key_pem=server.key_pem,
            server_cert_not_after=server.not_after,
            server_sans=_server_sans(props),
            tls_verify="1",
            drift=[],
            unreachable=None,
        )
        return outputs


class DockerDaemonConfig(Resource, module="docker-machine", name="DockerDaemonConfig"):
    """dockerd on a Host, listening on ``engine_port`` with ``--tlsverify``."""

    docker_host: pulumi.Output[str]
    tls_verify: pulumi.Output[str]
    docker_version: pulumi.Output[str]
    server_cert_pem: pulumi.Output[str]
    server_cert_not_after: pulumi.Output[str]
    server_sans: pulumi.Output[list]
    cert_path: pulumi.Output[str]
    applied: pulumi.Output[dict]
    observed: pulumi.Output[dict]
    drift: pulumi.Output[list]

    def __init__(
        self,
        resource_name: str,
        machine_name: pulumi.Input[str],
        host: Any,
        cert_authority: Any,
        extra_sans: pulumi.Input[list] | None = None,
        engine_port: pulumi.Input[int] = DEFAULT_ENGINE_PORT,
        engine: pulumi.Input[dict] | None = None,
        server_validity_days: pulumi.Input[int] = DEFAULT_SERVER_VALIDITY_DAYS,
        cert_path: pulumi.Input[str] | None = None,
        rotate_server_cert: pulumi.Input[str] | None = None,
        install: pulumi.Input[dict] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "machine_name": machine_name,
            "address": host.address,
            "ssh_port": host.ssh_port,
            "ssh_user": host.ssh_user,
            "ssh_private_key": host.ssh_private_key,
            "host_key": host.host_key,
            "host_state": host.state,
            "ca_cert_pem": cert_authority.ca_cert_pem,
            "ca_key_pem": cert_authority.ca_key_pem,
            "client_cert_pem": cert_authority.client_cert_pem,
            "client_key_pem": cert_authority.client_key_pem,
            "extra_sans": extra_sans or [],
            "engine_port": DEFAULT_ENGINE_PORT if engine_port is None else engine_port,
            "engine": engine or {},
            "driver": getattr(host, "driver", "generic"),
            "server_validity_days": server_validity_days,
            "cert_path": cert_path,
            "rotate_server_cert": rotate_server_cert,
            "expiry_warning_days": cert_authority.expiry_warning_days,
            "install": install,
            "docker_host": None,
            "tls_verify": None,
            "docker_version": None,
            "server_cert_pem": None,
            "server_key_pem": None,
            "server_cert_not_after": None,
            "server_sans": None,
            "applied": None,
            "observed": None,
            "drift": None,
        }
        secrets = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        super().__init__(
            DockerDaemonConfigProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secrets),
        )
