"""``Host``: a machine reachable over SSH, made by a driver.

The ``generic`` driver takes an existing machine: create logs in once to
check the address, the key and the host key, and records the host key it saw
(or checks the one the user pinned). Later operations on the machine, by
``DockerDaemonConfig``, trust only that key.
"""

from __future__ import annotations

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

from provider import checks
from provider.errors import InvalidInputError
from provider.progress import report
from provider.resources.base import changed_keys, run_async, run_checks, short_errors
from provider.sshsession import SSHTarget, host_key_fingerprint, open_session

DRIVERS = ("generic",)
INPUTS = (
    "driver",
    "address",
    "ssh_port",
    "ssh_user",
    "ssh_private_key",
    "pinned_host_key",
)
# A different address or port is a different machine.
REPLACE_ON = ("driver", "address", "ssh_port")
SECRET_OUTPUTS = ["ssh_private_key", "connection"]


def _check_driver(value: Any) -> str:
    if value not in DRIVERS:
        raise InvalidInputError(
            "driver", value, f"unknown driver; use one of: {', '.join(DRIVERS)}"
        )
    return value


def _os_name(os_release: str) -> str:
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return "unknown"


async def _log_in(target: SSHTarget) -> tuple[str, str]:
    """Log in once; return the host key presented and the OS name."""
    async with open_session(target) as session:
        result = await session.run_script(
            "cat /etc/os-release 2>/dev/null || true\n",
            "reading /etc/os-release",
            as_root=False,
        )
        return session.host_key, _os_name(result.stdout)


def _target(props: dict[str, Any], host_key: str | None) -> SSHTarget:
    return SSHTarget(
        host=props["address"],
        port=int(props["ssh_port"]),
        user=props["ssh_user"],
        private_key=props["ssh_private_key"],
        host_key=host_key,
    )


def _outputs(props: dict[str, Any], host_key: str, os_name: str) -> dict[str, Any]:
    outputs = {key: props.get(key) for key in INPUTS}
    outputs.update(
        host_key=host_key,
        host_key_fingerprint=host_key_fingerprint(host_key),
        os=os_name,
        # The fields of pulumi_command.remote.ConnectionArgs, so a user can run
        # their own remote commands on this machine.
        connection={
            "host": props["address"],
            "port": int(props["ssh_port"]),
            "user": props["ssh_user"],
            "privateKey": props["ssh_private_key"],
        },
    )
    return outputs


class HostProvider(ResourceProvider):
    """Takes over an existing machine (driver ``generic``)."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = run_checks(
            news,
            [
                ("driver", _check_driver),
                ("address", checks.check_address),
                ("ssh_port", lambda v: checks.check_port(v, "ssh_port")),
                ("ssh_user", checks.check_ssh_user),
                ("ssh_private_key", checks.check_private_key),
                ("pinned_host_key", lambda v: checks.check_host_key(v, "host_key")),
            ],
        )
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changes = changed_keys(olds, news, INPUTS)
        replaces = [key for key in changes if key in REPLACE_ON]
        return DiffResult(changes=bool(changes), replaces=replaces)

    @short_errors
    def create(self, props: dict[str, Any]) -> CreateResult:
        pinned = props.get("pinned_host_key")
        target = _target(props, pinned)
        key_step = "checking the pinned host key" if pinned else "recording its host key"
        report(f"logging in to {target.label}, {key_step}")
        host_key, os_name = run_async(_log_in(target))
        report(
            f"{target.label} runs {os_name}; host key {host_key_fingerprint(host_key)}"
        )

        host_id = f"generic:{props['address']}:{int(props['ssh_port'])}"
        return CreateResult(host_id, _outputs(props, host_key, os_name))

    @short_errors
    def update(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> UpdateResult:
        # A newly pinned key is how a user accepts a changed host key on purpose.
        trusted = news.get("pinned_host_key") or olds.get("host_key")
        target = _target(news, trusted)
        report(f"logging in to {target.label} with the new settings")
        host_key, os_name = run_async(_log_in(target))
        return UpdateResult(_outputs(news, host_key, os_name))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # NOTE: a generic host belongs to its owner, so refresh opens no SSH
        # connection here; DockerDaemonConfig's refresh checks the host key.
        return ReadResult(id_, props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The machine was there before Pulumi and stays after it.
        return None


class Host(Resource, module="docker-machine", name="Host"):
    """A machine reachable over SSH.

    ``connection`` (secret) has the fields ``pulumi_command.remote.Command``
    takes in its ``connection`` argument.
    """

    address: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    ssh_user: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    host_key: pulumi.Output[str]
    host_key_fingerprint: pulumi.Output[str]
    os: pulumi.Output[str]
    connection: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        address: pulumi.Input[str],
        ssh_private_key: pulumi.Input[str],
        ssh_port: pulumi.Input[int] = 22,
        ssh_user: pulumi.Input[str] = "root",
        host_key: pulumi.Input[str] | None = None,
        driver: str = "generic",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "driver": driver,
            "address": address,
            "ssh_port": ssh_port,
            "ssh_user": ssh_user,
            "ssh_private_key": pulumi.Output.secret(ssh_private_key),
            "pinned_host_key": host_key,
            "host_key": None,
            "host_key_fingerprint": None,
            "os": None,
            "connection": None,
        }
        secrets = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        super().__init__(
            HostProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secrets),
        )
