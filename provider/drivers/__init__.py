"""Drivers of ``Host``: how a machine comes to exist and how it is reached.

Each driver is a :class:`Driver` subclass in a module of this package. The
``Host`` resource checks the inputs every driver shares (SSH user, port,
keys, ``state``) and hands the rest to the driver named by ``driver``. A
driver's own settings arrive in the ``options`` mapping, with the names a
user writes in the stack configuration (``memory``, ``instanceType`` ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from pulumi.dynamic import CheckFailure

from provider.errors import InvalidInputError

DRIVER_MODULES = {
    "generic": "provider.drivers.generic",
    "amazonec2": "provider.drivers.amazonec2",
    "qemu": "provider.drivers.qemu",
}
STATES = ("running", "stopped")
# The SSH login of a machine whose sshUser is unset: the user of the
# driver's default image (Ubuntu's cloud images reject root), else root.
DEFAULT_SSH_USERS = {"amazonec2": "ubuntu"}


def default_ssh_user(driver: Any) -> str:
    """Return the SSH login a Host of ``driver`` uses when none is given."""
    return DEFAULT_SSH_USERS.get(driver, "root") if isinstance(driver, str) else "root"


class Driver:
    """The operations ``Host`` calls on a driver.

    The defaults suit a machine the driver does not own.
    """

    name = ""
    # Settings accepted in ``options``; anything else is rejected by check.
    options: frozenset[str] = frozenset()
    # Host inputs whose change makes another machine.
    replace_on: tuple[str, ...] = ("driver",)
    # Entries of ``options`` whose change makes another machine.
    replace_on_options: tuple[str, ...] = ()

    def check(self, inputs: dict[str, Any], olds: dict[str, Any]) -> list[CheckFailure]:
        """Check the driver's own settings; ``inputs`` passed the shared checks.

        ``olds`` are the inputs of the previous run, empty on a first create.
        """
        return []

    # Host inputs the driver fills in when the user leaves them unset. The
    # output then contains the value the driver chose, so only a value the
    # user sets counts as a change.
    filled_inputs: tuple[str, ...] = ()

    def _differs(self, key: str, olds: dict[str, Any], news: dict[str, Any]) -> bool:
        if key in self.filled_inputs and news.get(key) is None:
            return False
        return olds.get(key) != news.get(key)

    def replaces(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        """Name the inputs whose change replaces the machine."""
        replaces = [key for key in self.replace_on if self._differs(key, olds, news)]
        old_options = olds.get("options") or {}
        new_options = news.get("options") or {}
        if any(old_options.get(k) != new_options.get(k) for k in self.replace_on_options):
            replaces.append("options")
        return replaces

    def changed_inputs(
        self, olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]
    ) -> list[str]:
        """Name the inputs among ``keys`` that differ; ``olds`` are the outputs."""
        return [key for key in keys if self._differs(key, olds, news)]

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Make (or take over) the machine; return its id and the outputs."""
        raise NotImplementedError

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply in-place changes; return the new outputs."""
        raise NotImplementedError

    def read(self, id_: str, props: dict[str, Any]) -> dict[str, Any] | None:
        """Return the outputs as the machine is now, or None if it is gone."""
        return props

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove what the driver made."""


def unknown_options(driver: Driver, options: Any) -> list[CheckFailure]:
    """Reject an ``options`` value that is not a mapping or contains unknown names."""
    if options is None:
        return []
    if not isinstance(options, dict):
        message = str(InvalidInputError(
            driver.name, options, "must be a mapping of driver settings"
        ))
        return [CheckFailure("options", message)]
    failures = []
    for key in sorted(set(options) - driver.options):
        known = ", ".join(sorted(driver.options)) or "none"
        reason = f"unknown setting of the {driver.name} driver; its settings are: {known}"
        message = str(InvalidInputError(f"{driver.name}.{key}", options[key], reason))
        failures.append(CheckFailure("options", message))
    return failures


def get_driver(name: Any) -> Driver:
    """Return the driver called ``name``, or raise InvalidInputError."""
    if name not in DRIVER_MODULES:
        raise InvalidInputError(
            "driver", name, f"unknown driver; use one of: {', '.join(DRIVER_MODULES)}"
        )
    module = importlib.import_module(DRIVER_MODULES[name])
    return module.DRIVER
