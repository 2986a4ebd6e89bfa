"""The ``generic`` driver: a machine that exists already.

Create logs in once to check the address, the key and the host key, and
records the host key it saw (or checks the one the user pinned). Later
operations on the machine trust only that key. The machine belongs to its
owner: refresh opens no connection and destroy leaves it running.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure

from provider.drivers import Driver
from provider.drivers.common import host_outputs, log_in


def _missing(field: str, fix: str) -> CheckFailure:
    return CheckFailure(field, f"missing {field}: {fix}")


class GenericDriver(Driver):
    """Takes over an existing machine reachable over SSH."""

    name = "generic"
    # A different address or port is a different machine.
    replace_on = ("driver", "address", "ssh_port")

    def check(self, inputs: dict[str, Any], olds: dict[str, Any]) -> list[CheckFailure]:
        failures = []
        if inputs.get("address") is None:
            failures.append(
                _missing("address", "give the IP address or DNS name of the machine")
            )
        if inputs.get("ssh_private_key") is None:
            failures.append(
                _missing(
                    "ssh_private_key",
                    "give the private key that logs in to the machine "
                    "(sshPrivateKeyFile in the stack configuration)",
                )
            )
        if inputs.get("state") not in (None, "running"):
            failures.append(
                CheckFailure(
                    "state",
                    f"invalid state {inputs['state']!r}: the generic driver does not "
                    f"power machines on or off; leave state unset",
                )
            )
        return failures

    def _log_in(self, props: dict[str, Any], trusted: str | None) -> dict[str, Any]:
        port = int(props["ssh_port"])
        host_key, os_name = log_in(
            props["address"], port, props["ssh_user"], props["ssh_private_key"], trusted
        )
        return host_outputs(
            props,
            address=props["address"],
            ssh_port=port,
            ssh_private_key=props["ssh_private_key"],
            host_key=host_key,
            os_name=os_name,
        )

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        outputs = self._log_in(props, props.get("pinned_host_key"))
        return f"generic:{props['address']}:{int(props['ssh_port'])}", outputs

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        # A newly pinned key is how a user accepts a changed host key on purpose.
        return self._log_in(news, news.get("pinned_host_key") or olds.get("host_key"))


DRIVER = GenericDriver()
