"""The Pulumi program: machines from the stack configuration, and the outputs.

The stack configuration lists the machines under ``machines``; every machine
gets a Host and a DockerDaemonConfig, and all share one CertAuthority. The
output names and nesting below are a public contract (see the README), read
by the command-line tool and by other stacks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import is_config_secret

from provider import certdir, checks
from provider.ca_config import parse_cert_authority
from provider.drivers import DRIVER_MODULES
from provider.errors import InvalidInputError
from provider.resources import CertAuthority, DockerDaemonConfig, Host

MACHINE_KEYS = {
    "name",
    "driver",
    "address",
    "sshPort",
    "sshUser",
    "sshPrivateKey",
    "sshPrivateKeyFile",
    "sshHostKey",
    "extraSans",
    "enginePort",
    "rotateServerCert",
    "engine",
    "state",
    "install",
    *DRIVER_MODULES,
}

# Stack configuration names of the install settings -> DockerDaemonConfig's.
INSTALL_KEYS = {
    "method": "method",
    "version": "version",
    "scriptUrl": "script_url",
    "scriptSha256": "script_sha256",
    "packageSource": "package_source",
    "waitTimeout": "wait_timeout",
}


@dataclasses.dataclass(frozen=True)
class MachineSpec:
    """One entry of the ``machines`` list; values are checked by the resources."""

    name: str
    driver: str
    address: Any
    ssh_port: Any
    ssh_user: Any
    ssh_private_key: str | None = dataclasses.field(repr=False)
    ssh_host_key: Any
    extra_sans: Any
    engine_port: Any
    state: Any = None
    options: Any = None
    rotate_server_cert: Any = None
    engine: Any = None
    install: Any = None


def _read_key_file(path_text: str, where: str) -> str:
    path = Path(path_text).expanduser()
    try:
        return path.read_text()
    except OSError as error:
        raise InvalidInputError(
            f"{where}.sshPrivateKeyFile",
            path_text,
            f"cannot be read ({error.strerror}); give the path of an existing "
            f"private key file on this machine",
        ) from None


def _private_key(entry: dict[str, Any], where: str, driver: Any) -> str | None:
    inline = entry.get("sshPrivateKey")
    key_file = entry.get("sshPrivateKeyFile")
    if inline and key_file:
        raise InvalidInputError(
            f"{where}.sshPrivateKeyFile",
            key_file,
            "give either sshPrivateKey or sshPrivateKeyFile, not both",
        )
    if not inline and not key_file and driver != "generic":
        # Drivers that make the machine generate its key when none is given.
        return None
    if not inline and not key_file:
        raise InvalidInputError(
            f"{where}.sshPrivateKey",
            None,
            "missing; set sshPrivateKeyFile to a key file path, or set the key "
            "itself as a secret: pulumi config set --secret --path "
            f"'{where}.sshPrivateKey' < KEYFILE",
        )
    return inline if inline else _read_key_file(key_file, where)


def _install_settings(settings: Any, where: str) -> dict[str, Any] | None:
    """Map a machine's ``install`` settings to the DockerDaemonConfig input."""
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise InvalidInputError(
            f"{where}.install", settings, "must be a mapping such as {method: package}"
        )
    unknown = sorted(set(settings) - set(INSTALL_KEYS))
    if unknown:
        raise InvalidInputError(
            f"{where}.install.{unknown[0]}",
            settings[unknown[0]],
            f"unknown install setting; use {', '.join(INSTALL_KEYS)}",
        )
    return {INSTALL_KEYS[key]: value for key, value in settings.items()}


def parse_machine(entry: Any, index: int) -> MachineSpec:
    """Read one ``machines`` entry.

    Only the structure is checked here: a mapping, known settings, a name and
    a readable key file. The values are checked by the resources' ``check``,
    so that a program written against the resources gets the same checks.
    """
    where = f"machines[{index}]"
    if not isinstance(entry, dict):
        raise InvalidInputError(where, entry, "must be a mapping with name and address")
    unknown = sorted(set(entry) - MACHINE_KEYS)
    if unknown:
        raise InvalidInputError(
            f"{where}.{unknown[0]}", entry[unknown[0]],
            f"unknown setting; the settings of a machine are "
            f"{', '.join(sorted(MACHINE_KEYS))}",
        )
    driver = entry.get("driver", "generic")
    if driver == "generic" and "address" not in entry:
        raise InvalidInputError(
            f"{where}.address", None, "missing; give the IP address or DNS name of the host"
        )
    for other in DRIVER_MODULES:
        if other in entry and other != driver:
            raise InvalidInputError(
                f"{where}.{other}",
                entry[other],
                f"settings of the {other} driver on a machine whose driver is "
                f"{driver!r}; set driver: {other}, or remove these settings",
            )
    _check_engine_port_forwarded(entry, driver, where)
    return MachineSpec(
        # The name becomes part of resource names, so it is checked here.
        name=checks.check_machine_name(entry.get("name"), f"{where}.name"),
        driver=driver,
        address=entry.get("address"),
        ssh_port=entry.get("sshPort", 22),
        ssh_user=entry.get("sshUser"),
        ssh_private_key=_private_key(entry, where, driver),
        ssh_host_key=entry.get("sshHostKey"),
        extra_sans=entry.get("extraSans", []),
        engine_port=entry.get("enginePort", 2376),
        state=entry.get("state"),
        options=entry.get(driver),
        rotate_server_cert=entry.get("rotateServerCert"),
        engine=entry.get("engine"),
        install=_install_settings(entry.get("install"), where),
    )


def _check_engine_port_forwarded(entry: dict[str, Any], driver: Any, where: str) -> None:
    """Reject a qemu machine whose engine port QEMU would not forward."""
    if driver != "qemu" or not isinstance(entry.get("qemu", {}), dict):
        return
    engine_port = entry.get("enginePort", 2376)
    forwarded = entry.get("qemu", {}).get("forwardPorts", [2376])
    if isinstance(forwarded, list) and engine_port not in forwarded:
        raise InvalidInputError(
            f"{where}.enginePort",
            engine_port,
            f"not among the ports QEMU forwards to the VM ({forwarded}); add it to "
            f"{where}.qemu.forwardPorts",
        )


def parse_machines(entries: Any) -> list[MachineSpec]:
    """Validate the ``machines`` list; names must be unique."""
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(
            "machines",
            entries,
            "must be a non-empty list of machines, each with at least name and address",
        )
    machines = [parse_machine(entry, index) for index, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for index, machine in enumerate(machines):
        if machine.name in seen:
            raise InvalidInputError(
                f"machines[{index}].name",
                machine.name,
                f"duplicate machine name, already used by machines[{seen[machine.name]}]; "
                f"give every machine its own name",
            )
        seen[machine.name] = index
    return machines


def _write_cert_dir(directory: Path, values: list[str]) -> str:
    if not pulumi.runtime.is_dry_run():
        certdir.write_cert_dir(directory, *values)
    return str(directory)


def declare_host(
    machine: MachineSpec, opts: pulumi.ResourceOptions | None = None
) -> Host:
    """Declare the Host of one machine."""
    return Host(
        f"{machine.name}-host",
        address=machine.address,
        ssh_port=machine.ssh_port,
        ssh_user=machine.ssh_user,
        ssh_private_key=(
            None
            if machine.ssh_private_key is None
            else pulumi.Output.secret(machine.ssh_private_key)
        ),
        host_key=machine.ssh_host_key,
        driver=machine.driver,
        machine_name=machine.name,
        state=machine.state,
        options=machine.options,
        opts=opts,
    )


def declare_machine(
    machine: MachineSpec,
    ca: CertAuthority,
    project: str,
    stack: str,
    opts: pulumi.ResourceOptions | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Declare one machine's resources; return its public and secret outputs."""
    host = declare_host(machine, opts)
    directory = certdir.cert_path(project, stack, machine.name)
    daemon = DockerDaemonConfig(
        f"{machine.name}-docker",
        machine_name=machine.name,
        host=host,
        cert_authority=ca,
        extra_sans=machine.extra_sans,
        engine_port=machine.engine_port,
        engine=machine.engine,
        cert_path=str(directory),
        rotate_server_cert=machine.rotate_server_cert,
        opts=opts,
        install=machine.install,
    )
    # Written once the daemon is configured, from the outputs other stacks read.
    cert_path = pulumi.Output.all(
        ca.ca_cert_pem, ca.client_cert_pem, ca.client_key_pem, daemon.docker_host
    ).apply(lambda values: _write_cert_dir(directory, values[:3]))
    # The path is no secret even though the key written there is.
    cert_path = pulumi.Output.unsecret(cert_path)
    public = {
        "DOCKER_HOST": daemon.docker_host,
        "DOCKER_TLS_VERIFY": daemon.tls_verify,
        "DOCKER_CERT_PATH": cert_path,
        "DOCKER_MACHINE_NAME": machine.name,
        "driver": machine.driver,
        "state": host.state,
        "address": host.address,
        "sshPort": host.ssh_port,
        "sshUser": host.ssh_user,
        "sshHostKey": host.host_key,
        "dockerVersion": daemon.docker_version,
        "caCertPem": ca.ca_cert_pem,
        "clientCertPem": ca.client_cert_pem,
        "serverCertNotAfter": daemon.server_cert_not_after,
        "clientCertNotAfter": ca.client_not_after,
        "caCertNotAfter": ca.ca_not_after,
    }
    secret = {
        "clientKeyPem": ca.client_key_pem,
        "sshPrivateKey": host.ssh_private_key,
    }
    return public, secret


def main() -> None:
    """Declare every machine of the stack configuration and export the outputs."""
    config = pulumi.Config()
    machines = parse_machines(config.require_object("machines"))
    ca_settings = parse_cert_authority(
        config.get_object("certAuthority"),
        is_secret=is_config_secret(config.full_key("certAuthority")),
    )
    ca = CertAuthority("ca", **ca_settings)

    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    # All machines share the default provider process, whose worker pool
    # provider/worker_pool.py widens so that it configures them side by side.
    for machine in machines:
        public[machine.name], secret[machine.name] = declare_machine(
            machine, ca, pulumi.get_project(), pulumi.get_stack()
        )
    pulumi.export("machines", public)
    pulumi.export("machineSecrets", pulumi.Output.secret(secret))
