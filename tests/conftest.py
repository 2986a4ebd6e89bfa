"""Fixtures shared by the suite: isolated Pulumi stacks and the shared test VM."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness.pulumi_cli import PulumiStack


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: runs the real pulumi CLI")
    config.addinivalue_line("markers", "vm: boots or uses a QEMU test VM")
    config.addinivalue_line("markers", "lighthosts: starts systemd-nspawn light hosts")
    config.addinivalue_line(
        "markers", "slow: left out unless --run-slow or PDM_RUN_SLOW=1 (see the README)"
    )


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (long waits, fresh VMs, apt installs)",
    )


def _is_slow(item) -> bool:
    """Tell whether ``item`` is marked slow or uses a fixture its module lists as slow."""
    if item.get_closest_marker("slow"):
        return True
    slow_fixtures = set(getattr(item.module, "SLOW_FIXTURES", ()))
    if slow_fixtures & set(item.fixturenames):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(value in slow_fixtures for value in params.values() if isinstance(value, str))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("PDM_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or PDM_RUN_SLOW=1")
    for item in items:
        if _is_slow(item):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory):
    """Create stacks on private backends; remove them (state only) at the end."""
    stacks: list[PulumiStack] = []

    def create(**options) -> PulumiStack:
        stack = PulumiStack(tmp_path_factory.mktemp("stack"), **options)
        stacks.append(stack)
        return stack

    yield create
    for stack in stacks:
        stack.remove()


# The session-wide test VM (about 30 s to boot), shared by the tests that do
# not need a fresh host.
from tests.harness.vm import shared_vm  # noqa: E402,F401


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# `timeout` and CI runners stop a run with SIGTERM. As a KeyboardInterrupt it
# lets pytest run the fixtures' teardown, which powers off the test VMs.
signal.signal(signal.SIGTERM, _interrupt_on_sigterm)

# moto's EC2 server on 127.0.0.1, shared by the amazonec2 tests.
from tests.harness.moto_ec2 import moto_ec2  # noqa: E402,F401
