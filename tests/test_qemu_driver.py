"""The qemu driver through the real ``pulumi`` CLI: a VM made, used and removed.

The lifecycle tests run in file order on one stack with one VM. They cover
create, the docker client through the exported variables, and power off and
on in place. Then the VM is killed by hand, refresh shows it and `pulumi up`
brings it back, and destroy must leave no process, disk, directory or address
lease behind. The bad-input tests run `pulumi preview` only. A create that
fails after QEMU started must leave nothing behind either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from provider import loopback, qemu
from tests.harness.netguard import check_dialable
from tests.harness.vm import take_manual_address

pytestmark = pytest.mark.vm

NAME = "qvm"


def qemu_machine(name=NAME, **settings):
    """Return a ``machines`` entry for a qemu machine with small settings."""
    # A generous SSH deadline: a boot under emulation on a busy machine is slow.
    entry = {"name": name, "driver": "qemu", "qemu": {"cpus": 1, "memory": 1024, "sshTimeout": 1200}}
    entry["qemu"].update(settings.pop("qemu", {}))
    entry.update(settings)
    return entry


@pytest.fixture(scope="module")
def stack(stack_factory):
    """A stack with one qemu machine; destroyed at the end if a test left it."""
    stack = stack_factory()
    stack.write_config([qemu_machine()])
    yield stack
    if stack.resources():
        stack.destroy(check=False)


def outputs_of(stack):
    return stack.outputs()["machines"][NAME]


def host_details(stack):
    """Return the ``details`` output of the machine's Host from the state."""
    for resource in stack.resources():
        if resource["urn"].endswith(f"::{NAME}-host"):
            return resource["outputs"]["details"]
    raise AssertionError(f"no Host {NAME}-host in the state")


def docker(outputs, *args):
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "DOCKER_HOST": outputs["DOCKER_HOST"],
        "DOCKER_TLS_VERIFY": outputs["DOCKER_TLS_VERIFY"],
        "DOCKER_CERT_PATH": outputs["DOCKER_CERT_PATH"],
    }
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=90
    )


def process_gone(pid):
    """Tell whether ``pid`` has exited; a zombie not yet reaped counts as exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def qemu_processes_naming(directory):
    """Return the pids of live processes whose command line contains ``directory``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or process_gone(int(proc.name)):
            continue
        try:
            arguments = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in arguments:
            pids.append(int(proc.name))
    return pids


def assert_docker_answers(outputs):
    check_dialable(outputs["address"])
    completed = docker(outputs, "version", "--format", "{{.Server.Version}}")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == outputs["dockerVersion"]


def test_up_creates_reachable_vm(stack):
    stack.up()
    outputs = outputs_of(stack)
    assert outputs["driver"] == "qemu"
    assert outputs["state"] == "running"
    assert outputs["DOCKER_HOST"] == f"tcp://{outputs['address']}:2376"
    machine_dir = Path(host_details(stack)["machineDir"])
    assert (machine_dir / qemu.DISK_NAME).is_file()
    assert qemu.is_running(machine_dir)
    # The address is leased to this machine alone.
    lease = loopback.lease_of(outputs["address"])
    assert lease is not None and str(machine_dir) in lease.holder
    # The generated SSH key is a secret output, absent from the plain outputs.
    secrets = stack.outputs(show_secrets=True)["machineSecrets"][NAME]
    assert "PRIVATE KEY" in secrets["sshPrivateKey"]
    assert "PRIVATE KEY" not in str(stack.outputs())
    assert_docker_answers(outputs)


def test_noop_up_changes_nothing(stack):
    stack.up("--expect-no-changes")


def test_stop_start_keeps_address(stack):
    before = outputs_of(stack)
    machine_dir = Path(host_details(stack)["machineDir"])

    stack.write_config([qemu_machine(state="stopped")])
    stack.up()
    stopped = outputs_of(stack)
    assert stopped["state"] == "stopped"
    assert not qemu.is_running(machine_dir)
    assert (machine_dir / qemu.DISK_NAME).is_file()

    stack.write_config([qemu_machine()])
    stack.up()
    after = outputs_of(stack)
    assert after["state"] == "running"
    for key in ("address", "DOCKER_HOST", "sshHostKey", "serverCertNotAfter"):
        assert after[key] == before[key], key
    # The certificate directory written by the first up still works.
    assert after["DOCKER_CERT_PATH"] == before["DOCKER_CERT_PATH"]
    assert_docker_answers(after)


def test_refresh_after_kill_then_up(stack):
    machine_dir = Path(host_details(stack)["machineDir"])
    pid = qemu.read_pid(machine_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while qemu.is_running(machine_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not qemu.is_running(machine_dir)

    # Refresh does not run the program, so the resources' state shows it.
    stack.refresh("--skip-preview")
    states = {
        resource["urn"].rsplit("::", 1)[1]: resource["outputs"]
        for resource in stack.resources()
    }
    assert states[f"{NAME}-host"]["state"] == "stopped"
    assert states[f"{NAME}-docker"]["drift"], "refresh must report the host as down"

    stack.up()
    outputs = outputs_of(stack)
    assert outputs["state"] == "running"
    assert qemu.is_running(machine_dir)
    assert_docker_answers(outputs)


def test_destroy_leaves_nothing(stack):
    outputs = outputs_of(stack)
    machine_dir = Path(host_details(stack)["machineDir"])
    pid = qemu.read_pid(machine_dir)
    stack.destroy()
    assert stack.resources() == []
    assert not machine_dir.exists()
    assert pid is not None
    assert process_gone(pid)
    assert loopback.lease_of(outputs["address"]) is None
    assert not Path(outputs["DOCKER_CERT_PATH"]).exists()


def preview_output(stack_factory, machine):
    """Run `pulumi preview` of one machine; return the failed run's output."""
    stack = stack_factory()
    stack.write_config([machine])
    completed = stack.preview(check=False)
    assert completed.returncode != 0
    return completed.stdout + completed.stderr


def test_bad_settings_rejected_at_preview(stack_factory):
    # The engine stops at the first resource whose check fails, so each
    # preview contains one machine. All its settings are checked at once.
    cpus = (os.cpu_count() or 1) + 1
    output = preview_output(
        stack_factory,
        qemu_machine(qemu={"image": "/nonexistent/disk.qcow2", "memory": 128, "cpus": cpus}),
    )
    assert "invalid qemu.image '/nonexistent/disk.qcow2': no such file" in output
    assert "invalid qemu.memory 128: too small: give at least 512" in output
    assert f"invalid qemu.cpus {cpus}: must be a whole number from 1 to" in output

    output = preview_output(stack_factory, qemu_machine(qemu={"diskSize": 1}))
    assert "invalid qemu.diskSize 1: smaller than the image" in output


def test_leased_address_rejected_at_preview(stack_factory):
    leased = take_manual_address("a test holding this address")
    try:
        output = preview_output(stack_factory, qemu_machine(address=leased.address))
    finally:
        loopback.release(leased.address)
    expected = f"invalid address '{leased.address}': already leased to a test holding this address"
    assert expected in output


def test_failed_create_leaves_nothing(stack_factory, tmp_path):
    """A disk without a boot loader: QEMU runs, but SSH never sends a banner.

    The 63-character name, the longest allowed, also makes the QMP socket's
    path in the machine directory longer than a unix socket path may be.
    """
    blank_disk = tmp_path / "blank.raw"
    blank_disk.write_bytes(b"\0" * 1024**2)
    name = "n" * 63
    stack = stack_factory()
    stack.write_config([qemu_machine(name=name, qemu={"image": str(blank_disk), "sshTimeout": 10})])

    completed = stack.up(check=False)

    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert "sent no banner" in output
    # The stack's CA may have been created, but the Host must not be in the state.
    urns = [resource["urn"] for resource in stack.resources()]
    assert not any(urn.endswith(f"::{name}-host") for urn in urns), urns
    vms = stack.machines_home / "vms"
    assert not vms.exists() or list(vms.iterdir()) == []
    assert qemu_processes_naming(vms) == []
    holders = [lease.holder for lease in loopback.list_leases()]
    assert not any(str(vms) in holder for holder in holders), holders
