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

DEFAULT_ENGINE_PORT = 2376

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


def _read_key_file(path_text: Any, where: str) -> str:
    field = f"{where}.sshPrivateKeyFile"
    if not isinstance(path_text, str):
        raise InvalidInputError(
            field, path_text, "must be the path of a private key file, as text"
        )
    try:
        return Path(path_text).expanduser().read_text()
    except OSError as error:
        reason = error.strerror
    except UnicodeDecodeError:
        reason = "not text"
    except ValueError:
        # pathlib raises ValueError for a path with a NUL character.
        reason = "not a valid path"
    raise InvalidInputError(
        field,
        path_text,
        f"cannot be read ({reason}); give the path of an existing private key "
        f"file on this machine",
    )


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
    # A setting set to null counts as unset, so it takes its default.
    entry = {key: value for key, value in entry.items() if value is not None}
    unknown = sorted(set(entry) - MACHINE_KEYS)
    if unknown:
        raise InvalidInputError(
            f"{where}.{unknown[0]}", entry[unknown[0]],
            f"unknown setting; the settings of a machine are "
            f"{', '.join(sorted(MACHINE_KEYS))}",
        )
    driver = entry.get("driver", "generic")
    if not isinstance(driver, str) or driver not in DRIVER_MODULES:
        raise InvalidInputError(
            f"{where}.driver",
            driver,
            f"unknown driver; use one of: {', '.join(DRIVER_MODULES)}",
        )
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
    options = _driver_options(entry, driver, where)
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
        engine_port=entry.get("enginePort", DEFAULT_ENGINE_PORT),
        state=entry.get("state"),
        options=options,
        rotate_server_cert=entry.get("rotateServerCert"),
        engine=entry.get("engine"),
        install=_install_settings(entry.get("install"), where),
    )


def _port_number(value: Any) -> Any:
    """Return a port given as an int, a whole float or digits as an int.

    Any other value is returned as it is, for the resources to reject.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def _check_engine_port_forwarded(entry: dict[str, Any], driver: Any, where: str) -> None:
    """Reject a qemu machine whose engine port QEMU would not forward."""
    if driver != "qemu" or not isinstance(entry.get("qemu", {}), dict):
        return
    engine_port = entry.get("enginePort", DEFAULT_ENGINE_PORT)
    forwarded = entry.get("qemu", {}).get("forwardPorts", [DEFAULT_ENGINE_PORT])
    if not isinstance(forwarded, list):
        return
    if _port_number(engine_port) not in [_port_number(port) for port in forwarded]:
        raise InvalidInputError(
            f"{where}.enginePort",
            engine_port,
            f"not among the ports QEMU forwards to the VM ({forwarded}); add it to "
            f"{where}.qemu.forwardPorts",
        )


def _driver_options(entry: dict[str, Any], driver: str, where: str) -> Any:
    """Return the driver's settings, with the amazonec2 engine port filled in.

    The amazonec2 driver opens its own ``enginePort`` (default 2376) in the
    security group, so it must be the port dockerd listens on, the machine's
    ``enginePort``. It is filled in only when it is not the default, so the
    settings of existing machines stay as they were.
    """
    options = entry.get(driver)
    if driver != "amazonec2" or (options is not None and not isinstance(options, dict)):
        return options
    engine_port = _port_number(entry.get("enginePort", DEFAULT_ENGINE_PORT))
    if "enginePort" in (options or {}):
        if _port_number(options["enginePort"]) != engine_port:
            raise InvalidInputError(
                f"{where}.amazonec2.enginePort",
                options["enginePort"],
                f"differs from {where}.enginePort ({engine_port}), the port dockerd "
                f"listens on, so the security group would open the wrong port; "
                f"remove amazonec2.enginePort or give both the same value",
            )
        return options
    if engine_port == DEFAULT_ENGINE_PORT:
        return options
    return {**(options or {}), "enginePort": engine_port}


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
    _reject_shared_hosts(machines)
    return machines


def _reject_shared_hosts(machines: list[MachineSpec]) -> None:
    """Reject two machines with the same host, or two qemu VMs with one address.

    Two machines on one host would write the same daemon.json. A generic
    host is its address and SSH port. A qemu VM is its address alone,
    because the address is leased to one VM.
    """
    seen: dict[tuple[Any, ...], int] = {}
    for index, machine in enumerate(machines):
        if machine.driver == "amazonec2" or not isinstance(machine.address, str):
            continue
        address = machine.address.lower().removesuffix(".")
        if machine.driver == "qemu":
            key: tuple[Any, ...] = ("qemu", address)
            same = "address"
            reason = "an address is leased to one VM"
        else:
            ssh_port = _port_number(machine.ssh_port)
            key = (machine.driver, address, ssh_port)
            same = f"address and sshPort {ssh_port}"
            reason = (
                "two machines on one host would overwrite each other's Docker "
                "configuration"
            )
        if key in seen:
            raise InvalidInputError(
                f"machines[{index}].address",
                machine.address,
                f"machines[{seen[key]}] has the same {same}, and {reason}; give "
                f"each machine a host of its own",
            )
        seen[key] = index


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
