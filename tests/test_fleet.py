"""Sixteen machines in one stack, on light hosts, through the real ``pulumi`` CLI.

The tests run in file order on one stack. They count what each host's sshd
logged during create, preview, a no-op up, refresh, update and the removal of
the first machine, and read the provider processes' operation log for how
many configures ran at once. Times are measured by scripts/benchmark.py, not
checked here.

The last tests make 16 amazonec2 Hosts on moto's EC2 server, in a second
stack of Host resources only (tests/programs/hosts_only), and count the API
calls that preview and a no-op up make with moto's request recorder. Each
Elastic IP is a loopback address that a relay run by the test forwards to one
light host's sshd, so create's one SSH login reaches a real sshd and no
instance address that moto reports is ever dialled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from provider import loopback, operation_log, tlsprobe
from tests.harness.lighthosts import LightHostFleet, count_ssh_activity
from tests.harness.moto_ec2 import (
    AMI_PARAMETER,
    FAKE_CREDENTIALS,
    REGION,
    MotoEC2,
    is_read_only,
)
from tests.harness.netguard import check_dialable
from tests.harness.pulumi_cli import PROJECT_DIR, PulumiStack, machine_config
from tests.harness.tcprelay import TCPRelay

pytestmark = [pytest.mark.engine, pytest.mark.lighthosts]

HOSTS = 16
# A configure runs the preflight script, the apply script that carries the
# files, and the removal of the previous copy. An install method adds the
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
    # One provider process serves the whole fleet; with the SDK's 4 worker
    # threads it could run only 4 configures at once.
    pids = {json.loads(line)["pid"] for line in operation_lines(stack)}
    assert len(pids) == 1, f"configures ran in {len(pids)} processes"
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


def daemon_outputs(stack):
    """Return each DockerDaemonConfig's outputs in state, by machine name."""
    return {
        resource["outputs"]["machine_name"]: resource["outputs"]
        for resource in stack.resources()
        if resource["type"].endswith("DockerDaemonConfig")
    }


def provider_references(stack):
    """Return the provider reference of each machine's resources, by machine name."""
    references = {}
    for resource in stack.resources():
        name = resource["outputs"].get("machine_name")
        if name is not None:
            references.setdefault(name, set()).add(resource.get("provider"))
    return references


def state_records(stack):
    """Return id, creation and modification time of each resource, by URN."""
    return {
        resource["urn"]: (
            resource.get("id"),
            resource.get("created"),
            resource.get("modified"),
        )
        for resource in stack.resources()
    }


def test_removing_first_machine_moves_no_other(fleet, stack):
    # Each later machine moves up one place in the list.
    entries = machine_entries(fleet, extraSans=["fleet.test"])
    kept_names = [entry["name"] for entry in entries[1:]]
    outputs_before = stack.outputs(show_secrets=True)
    daemons_before = daemon_outputs(stack)
    records_before = state_records(stack)
    providers_before = provider_references(stack)
    server_pems_before = {
        host.address: host.run("cat", "/etc/docker/server.pem").stdout
        for host in fleet.hosts[1:]
    }
    stack.write_config(entries[1:])
    result = {}

    def up():
        result["stdout"] = stack.up("--parallel", PARALLEL).stdout

    activity = ssh_activity(fleet, up)

    stdout = result["stdout"]
    assert "2 deleted" in stdout, stdout[-2000:]
    assert "updated" not in stdout, stdout[-2000:]
    assert "replaced" not in stdout, stdout[-2000:]
    records_after = state_records(stack)
    removed = {urn for urn in records_before if "::fleet-00-" in urn}
    assert len(removed) == 2, sorted(records_before)
    assert set(records_after) == set(records_before) - removed
    for urn, record in records_after.items():
        assert record == records_before[urn], urn
    providers_after = provider_references(stack)
    for name in kept_names:
        assert providers_after[name] == providers_before[name], name

    outputs_after = stack.outputs(show_secrets=True)
    assert sorted(outputs_after["machines"]) == kept_names
    daemons_after = daemon_outputs(stack)
    for name in kept_names:
        before = outputs_before["machines"][name]
        after = outputs_after["machines"][name]
        for key in ("DOCKER_HOST", "caCertPem", "clientCertPem", "serverCertNotAfter"):
            assert after[key] == before[key], (name, key)
        server_cert_pem = daemons_after[name]["server_cert_pem"]
        assert server_cert_pem == daemons_before[name]["server_cert_pem"], name

    first = fleet.hosts[0]
    assert activity[first.address].tcp_connections == 1, activity[first.address]
    for host in fleet.hosts[1:]:
        counted = activity[host.address]
        assert counted.tcp_connections == 0, (host.address, counted)
        served = host.run("cat", "/etc/docker/server.pem").stdout
        assert served == server_pems_before[host.address], host.address


HOSTS_ONLY_PROGRAM = PROJECT_DIR / "tests" / "programs" / "hosts_only"
HOSTS_ONLY_MACHINES_KEY = "pdm-hosts-only:machines"
# Seconds a Host create waits for SSH (default 300), short so that a relay
# that fails to connect fails the test soon.
EC2_SSH_TIMEOUT = 60


@dataclass
class EC2Fleet:
    """The stack of amazonec2 Hosts, its Elastic IPs and the relay behind them."""

    stack: PulumiStack
    moto: MotoEC2
    relay: TCPRelay
    elastic_ips: dict[str, str]
    create_actions: list[str]


def ec2_machine_entry(name, light_host, allocation_id, endpoint_url):
    """Return a ``machines`` entry for an amazonec2 machine on an Elastic IP."""
    return {
        "name": name,
        "driver": "amazonec2",
        "sshUser": light_host.user,
        "sshPrivateKeyFile": str(light_host.private_key_path),
        "amazonec2": {
            "endpointUrl": endpoint_url,
            "region": REGION,
            "amiParameter": AMI_PARAMETER,
            "elasticIpAllocationId": allocation_id,
            "allowedCidrs": ["127.0.0.0/8"],
            "sshTimeout": EC2_SSH_TIMEOUT,
        },
    }


@pytest.fixture(scope="module")
def ec2_fleet(fleet, moto_ec2, stack_factory):
    """Sixteen amazonec2 Hosts made by `pulumi up`, destroyed at the end."""
    ec2 = moto_ec2.client()
    leases, allocations = [], []
    try:
        for _ in fleet.hosts:
            leases.append(loopback.allocate(ports=(22,), holder="fleet amazonec2 test"))
        routes = {
            (lease.address, 22): (light_host.address, light_host.ssh_port)
            for lease, light_host in zip(leases, fleet.hosts)
        }
        with TCPRelay(routes, max_connections=4 * HOSTS) as relay:
            for lease in leases:
                address = check_dialable(lease.address)
                reply = ec2.allocate_address(Domain="vpc", Address=address)
                allocations.append(reply["AllocationId"])
            environment = {**FAKE_CREDENTIALS, "PYTHONPATH": str(PROJECT_DIR)}
            stack = stack_factory(project_dir=HOSTS_ONLY_PROGRAM, extra_env=environment)
            stack.env.pop("AWS_PROFILE", None)
            names = [f"ec2-{index:02d}" for index in range(HOSTS)]
            entries = [
                ec2_machine_entry(name, light_host, allocation_id, moto_ec2.endpoint_url)
                for name, light_host, allocation_id in zip(names, fleet.hosts, allocations)
            ]
            stack.write_raw_config({HOSTS_ONLY_MACHINES_KEY: entries})

            create_actions = moto_ec2.recorded_actions(
                lambda: stack.up("--parallel", PARALLEL)
            )
            elastic_ips = {name: lease.address for name, lease in zip(names, leases)}
            yield EC2Fleet(stack, moto_ec2, relay, elastic_ips, create_actions)
            stack.destroy("--parallel", PARALLEL)
    finally:
        for allocation_id in allocations:
            ec2.release_address(AllocationId=allocation_id)
        for lease in leases:
            loopback.release(lease.address)


def mutating_calls(actions):
    """Return the actions that are neither Describe* nor Get*."""
    return [action for action in actions if not is_read_only(action)]


def test_ec2_create_logs_in_once_through_elastic_ip(ec2_fleet):
    # The record must see the create's calls, or the checks below prove nothing.
    assert ec2_fleet.create_actions.count("RunInstances") == HOSTS
    assert ec2_fleet.create_actions.count("AssociateAddress") == HOSTS
    addresses = ec2_fleet.stack.outputs()["addresses"]
    assert addresses == ec2_fleet.elastic_ips
    for address in ec2_fleet.elastic_ips.values():
        assert ec2_fleet.relay.connections[address] == 1, address
    assert ec2_fleet.relay.total_connections() == HOSTS


def test_ec2_preview_makes_no_mutating_call(ec2_fleet):
    connections_before = ec2_fleet.relay.total_connections()

    actions = ec2_fleet.moto.recorded_actions(
        lambda: ec2_fleet.stack.preview("--parallel", PARALLEL)
    )

    assert mutating_calls(actions) == [], actions
    assert ec2_fleet.relay.total_connections() == connections_before


def test_ec2_noop_up_makes_no_mutating_call(ec2_fleet):
    connections_before = ec2_fleet.relay.total_connections()
    result = {}

    def up():
        result["stdout"] = ec2_fleet.stack.up("--parallel", PARALLEL).stdout

    actions = ec2_fleet.moto.recorded_actions(up)

    assert mutating_calls(actions) == [], actions
    assert "updated" not in result["stdout"], result["stdout"][-2000:]
    assert "created" not in result["stdout"], result["stdout"][-2000:]
    assert ec2_fleet.relay.total_connections() == connections_before
