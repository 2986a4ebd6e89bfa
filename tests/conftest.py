"""Fixtures shared by the suite: isolated Pulumi stacks and the shared test VM."""

from __future__ import annotations

import signal

import pytest

from tests.harness.pulumi_cli import PulumiStack


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: runs the real pulumi CLI")
    config.addinivalue_line("markers", "vm: boots or uses a QEMU test VM")


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory):
    """Create stacks on private backends; remove them (state only) at the end."""
    stacks: list[PulumiStack] = []

    def create() -> PulumiStack:
        stack = PulumiStack(tmp_path_factory.mktemp("stack"))
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
