"""``Host``: a machine reachable over SSH, made or taken over by a driver.

The resource checks what every driver shares (SSH user and port, keys,
``state``) and leaves the rest to the driver (see :mod:`provider.drivers`):
``generic`` takes an existing machine, ``qemu`` runs a VM on this
workstation, ``amazonec2`` an EC2 instance. Every driver gives the same
outputs, so ``DockerDaemonConfig`` and the stack outputs do not depend on it.
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
from provider.drivers import STATES, default_ssh_user, get_driver, unknown_options
from provider.errors import InvalidInputError
from provider.resources.base import is_unknown, run_checks, short_errors

INPUTS = (
    "driver",
    "machine_name",
    "address",
    "ssh_port",
    "ssh_user",
    "ssh_private_key",
    "pinned_host_key",
    "state",
    "options",
)
SECRET_OUTPUTS = ["ssh_private_key", "connection"]


def _check_driver(value: Any) -> str:
    get_driver(value)
    return value


def _check_state(value: Any) -> str:
    if value not in STATES:
        raise InvalidInputError("state", value, f"use one of: {', '.join(STATES)}")
    return value


class HostProvider(ResourceProvider):
    """Dispatches each operation to the driver the Host names."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # ``olds`` are the inputs of the previous run, which passed check when
        # they were applied, so keys equal to them are not parsed again.
        olds = olds or {}
        old_key = olds.get("ssh_private_key")
        old_host_key = olds.get("pinned_host_key")
        inputs, failures = run_checks(
            news,
            [
                ("driver", _check_driver),
                ("machine_name", checks.check_machine_name),
                ("address", checks.check_address),
                ("ssh_port", lambda v: checks.check_port(v, "ssh_port")),
                ("ssh_user", checks.check_ssh_user),
                (
                    "ssh_private_key",
                    lambda v: checks.check_private_key(v, accepted=old_key),
                ),
                (
                    "pinned_host_key",
                    lambda v: checks.check_host_key(v, "host_key", accepted=old_host_key),
                ),
                ("state", _check_state),
            ],
        )
        if failures or is_unknown(inputs.get("driver")):
            return CheckResult(inputs, failures)
        driver = get_driver(inputs["driver"])
        options = inputs.get("options")
        option_failures = unknown_options(driver, options)
        if not option_failures and not is_unknown(options):
            option_failures = driver.check(inputs, olds)
        return CheckResult(inputs, failures + option_failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # ``olds`` are the outputs, where state is what the machine was last
        # seen in; an unset state input means running.
        olds = {**olds, "state": olds.get("state") or "running"}
        news = {**news, "state": news.get("state") or "running"}
        if olds.get("driver") != news.get("driver"):
            return DiffResult(changes=True, replaces=["driver"])
        driver = get_driver(news["driver"])
        changes = driver.changed_inputs(olds, news, INPUTS)
        replaces = driver.replaces(olds, news)
        return DiffResult(
            changes=bool(changes),
            replaces=replaces,
            delete_before_replace=bool(replaces) and news["driver"] != "generic",
        )

    @short_errors
    def create(self, props: dict[str, Any]) -> CreateResult:
        id_, outputs = get_driver(props["driver"]).create(props)
        return CreateResult(id_, outputs)

    @short_errors
    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> UpdateResult:
        return UpdateResult(get_driver(news["driver"]).update(id_, olds, news))

    @short_errors
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outputs = get_driver(props["driver"]).read(id_, props)
        if outputs is None:
            # The machine is gone: an empty result drops it from the state.
            return ReadResult("", {})
        return ReadResult(id_, outputs)

    @short_errors
    def delete(self, id_: str, props: dict[str, Any]) -> None:
        get_driver(props["driver"]).delete(id_, props)


class Host(Resource, module="docker-machine", name="Host"):
    """A machine reachable over SSH.

    ``options`` holds the driver's own settings. ``connection`` (secret) has
    the fields ``pulumi_command.remote.Command`` takes in its ``connection``
    argument. ``state`` is ``running`` or ``stopped``.
    """

    address: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    ssh_user: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    host_key: pulumi.Output[str]
    host_key_fingerprint: pulumi.Output[str]
    os: pulumi.Output[str]
    state: pulumi.Output[str]
    details: pulumi.Output[dict]
    connection: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        address: pulumi.Input[str] | None = None,
        ssh_private_key: pulumi.Input[str] | None = None,
        ssh_port: pulumi.Input[int] = 22,
        ssh_user: pulumi.Input[str] | None = None,
        host_key: pulumi.Input[str] | None = None,
        driver: str | None = "generic",
        machine_name: pulumi.Input[str] | None = None,
        state: pulumi.Input[str] | None = None,
        options: pulumi.Input[dict] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        # None selects the default, as leaving the argument out does.
        driver = "generic" if driver is None else driver
        props = {
            "driver": driver,
            "machine_name": machine_name or resource_name,
            "address": address,
            "ssh_port": 22 if ssh_port is None else ssh_port,
            "ssh_user": default_ssh_user(driver) if ssh_user is None else ssh_user,
            "ssh_private_key": (
                None if ssh_private_key is None else pulumi.Output.secret(ssh_private_key)
            ),
            "pinned_host_key": host_key,
            "state": state,
            "options": options or {},
            "host_key": None,
            "host_key_fingerprint": None,
            "os": None,
            "details": None,
            "connection": None,
        }
        secrets = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        super().__init__(
            HostProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secrets),
        )
