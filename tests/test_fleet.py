"""Sixteen machines in one stack, on light hosts, through the real ``pulumi`` CLI.

The tests run in file order on one stack. They count what each host's sshd
logged during create, preview, a no-op up, refresh and update, and
read the provider processes' operation log for how many configures ran at
once. Times are measured by scripts/benchmark.py, not checked here.
"""

from __future__ import annotations

import json

import pytest

from provider import operation_log, tlsprobe
from tests.harness.lighthosts import LightHostFleet, count_ssh_activity
from tests.harness.pulumi_cli import machine_config

pytestmark = [pytest.mark.engine, pytest.mark.lighthosts]

HOSTS = 16
# A configure runs the preflight script, the apply script that carries the
# files, and the removal of the previous copy; an install method adds the
# engine probe.
MAX_SESSIONS_PER_CONFIGURE = 4
# Enough engine steps for every machine at once. The default of pulumi CLI
# v3.276.0 is 4 per core, 8 on a 2-core machine.
PARALLEL = str(2 * HOSTS)


@pytest.fixture(scope="module")
def fleet():
    """Sixteen light hosts, stopped and checked for leftovers at the end."""
    with LightHostFleet(HOSTS) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def stack(fleet, stack_factory, tmp_path_factory):
    """A stack with one machine per light host."""
    stack = stack_factory()
    log_path = tmp_path_factory.mktemp("operations") / "operations.jsonl"
    stack.env[operation_log.LOG_ENVIRONMENT_VARIABLE] = str(log_path)
    stack.operation_log = log_path
    stack.write_config(machine_entries(fleet))
    yield stack
    # No destroy: the hosts go away with the fleet, and stack_factory removes
    # the state. Destroying 16 machines would double the time of this file.


def machine_entries(fleet, **settings):
    """Return one ``machines`` entry per light host."""
    return [
        machine_config(host, f"fleet-{index:02d}", **settings)
        for index, host in enumerate(fleet.hosts)
    ]


def ssh_activity(fleet, operation):
    """Run ``operation``; return each host's sshd activity during it, by address."""
    offsets = {host.address: len(host.sshd_log_lines()) for host in fleet.hosts}
    operation()
    return {
        host.address: count_ssh_activity(host.sshd_log_lines()[offsets[host.address]:])
        for host in fleet.hosts
    }


def operation_lines(stack):
    """Return the operation log lines written so far."""
    if not stack.operation_log.exists():
        return []
    return stack.operation_log.read_text().splitlines()


def test_create_configures_side_by_side(fleet, stack):
    activity = ssh_activity(fleet, lambda: stack.up("--parallel", PARALLEL))

    in_flight = operation_log.max_in_flight(operation_lines(stack), "configure")
    assert in_flight >= 8, f"at most {in_flight} configures ran at once"
    pids = {json.loads(line)["pid"] for line in operation_lines(stack)}
    assert len(pids) == HOSTS // 4, f"configures ran in {len(pids)} processes"
    for address, counted in activity.items():
        # One login by the Host (host key and OS), one by the configure.
        assert counted.tcp_connections == 2, (address, counted)
        assert counted.logins == 2, (address, counted)
        host_sessions, configure_sessions = counted.sessions_per_login
        assert host_sessions == 1, (address, counted)
        assert configure_sessions <= MAX_SESSIONS_PER_CONFIGURE, (address, counted)


def test_every_daemon_answers_mutual_tls(fleet, stack):
    outputs = stack.outputs(show_secrets=True)
    secrets = outputs["machineSecrets"]
    certificates = _client_certificates(stack)
    for index, host in enumerate(fleet.hosts):
        name = f"fleet-{index:02d}"
        assert outputs["machines"][name]["DOCKER_HOST"] == f"tcp://{host.address}:2376"
        assert "clientKeyPem" in secrets[name]
        version = tlsprobe.wait_for_daemon(host.address, 2376, *certificates)
        assert version.get("Version"), (name, version)


def _client_certificates(stack):
    outputs = stack.outputs(show_secrets=True)
    first = outputs["machines"]["fleet-00"]
    key = outputs["machineSecrets"]["fleet-00"]["clientKeyPem"]
    return first["caCertPem"], first["clientCertPem"], key


def test_preview_opens_no_connection(fleet, stack):
    activity = ssh_activity(fleet, lambda: stack.preview("--parallel", PARALLEL))

    for address, counted in activity.items():
        assert counted.tcp_connections == 0, (address, counted)


def test_noop_up_opens_no_connection(fleet, stack):
    result = {}

    def up():
        result["stdout"] = stack.up("--parallel", PARALLEL).stdout

    activity = ssh_activity(fleet, up)

    assert "updated" not in result["stdout"], result["stdout"][-2000:]
    assert "created" not in result["stdout"], result["stdout"][-2000:]
    for address, counted in activity.items():
        assert counted.tcp_connections == 0, (address, counted)


def test_refresh_opens_one_connection_per_host(fleet, stack):
    # Without --skip-preview, refresh reads every resource twice: once for its
    # preview and once for the refresh itself.
    activity = ssh_activity(
        fleet, lambda: stack.refresh("--skip-preview", "--parallel", PARALLEL)
    )

    for address, counted in activity.items():
        assert counted.tcp_connections == 1, (address, counted)
        assert counted.logins == 1, (address, counted)
        assert counted.sessions == 1, (address, counted)


def test_update_opens_one_connection_per_host(fleet, stack):
    stack.write_config(machine_entries(fleet, extraSans=["fleet.test"]))

    activity = ssh_activity(fleet, lambda: stack.up("--parallel", PARALLEL))

    for address, counted in activity.items():
        assert counted.tcp_connections == 1, (address, counted)
        assert counted.logins == 1, (address, counted)
        assert counted.sessions <= MAX_SESSIONS_PER_CONFIGURE, (address, counted)
