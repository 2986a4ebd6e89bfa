"""The ``amazonec2`` driver through the real ``pulumi`` CLI, against moto.

Bad settings fail at preview, before any API call. The end-to-end test gives
moto an Elastic IP at the loopback address of a test VM, so the instance that
moto simulates is reached at the VM. ``pulumi up`` logs in and configures
Docker, and the docker client works through the exported variables. Only
that Elastic IP is dialled, never an instance address moto reports.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.moto_ec2 import AMI_PARAMETER, FAKE_CREDENTIALS, REGION
from tests.harness.netguard import check_dialable

pytestmark = pytest.mark.engine


def aws_stack(stack_factory):
    """Return a stack whose pulumi processes see moto's fake credentials."""
    stack = stack_factory()
    stack.env.update(FAKE_CREDENTIALS)
    stack.env.pop("AWS_PROFILE", None)
    return stack


def test_preview_rejects_bad_settings(moto_ec2, stack_factory):
    stack = aws_stack(stack_factory)
    stack.write_config(
        [
            {
                "name": "bad",
                "driver": "amazonec2",
                "amazonec2": {
                    "endpointUrl": moto_ec2.endpoint_url,
                    "region": "us-north-9",
                    "instanceType": "T3 micro",
                    "rootSize": -8,
                    "spotPrice": "0.02",
                    "allowedCidrs": ["10.1.2.3/8"],
                },
            }
        ]
    )
    before = moto_ec2.inventory()
    result = stack.preview(check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid amazonec2.region 'us-north-9'" in output
    assert "invalid amazonec2.instanceType 'T3 micro'" in output
    assert "invalid amazonec2.rootSize -8" in output
    assert "set only with spot: true" in output
    assert "invalid amazonec2.allowedCidrs '10.1.2.3/8'" in output
    assert moto_ec2.inventory() == before


def test_up_rejects_missing_cidrs(moto_ec2, stack_factory):
    stack = aws_stack(stack_factory)
    stack.write_config(
        [{"name": "open", "driver": "amazonec2", "amazonec2": {"region": REGION}}]
    )
    result = stack.up(check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "amazonec2.allowedCidrs None: missing" in output
    assert stack.resources() == []


def docker_env(outputs):
    """Return an environment pointing the docker client at the machine."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "DOCKER_HOST": outputs["DOCKER_HOST"],
        "DOCKER_TLS_VERIFY": outputs["DOCKER_TLS_VERIFY"],
        "DOCKER_CERT_PATH": outputs["DOCKER_CERT_PATH"],
    }


@pytest.mark.vm
def test_end_to_end_through_elastic_ip(moto_ec2, stack_factory, shared_vm):
    # The shared test VM stands for the instance: the Elastic IP moto
    # allocates is the VM's loopback address.
    vm = shared_vm
    ec2 = moto_ec2.client()
    key_name = f"e2e-{vm.address}"
    try:
        allocation = ec2.allocate_address(Domain="vpc", Address=check_dialable(vm.address))
        ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=vm.public_key.encode())
        before = moto_ec2.inventory()
        stack = aws_stack(stack_factory)
        stack.write_config(
            [
                {
                    "name": "ec2",
                    "driver": "amazonec2",
                    "sshUser": vm.user,
                    "sshPort": vm.ssh_port,
                    "sshPrivateKeyFile": str(vm.private_key_path),
                    "amazonec2": {
                        "endpointUrl": moto_ec2.endpoint_url,
                        "region": REGION,
                        "amiParameter": AMI_PARAMETER,
                        "keyPairName": key_name,
                        "elasticIpAllocationId": allocation["AllocationId"],
                        "allowedCidrs": ["127.0.0.0/8"],
                        "tags": {"purpose": "end-to-end test"},
                    },
                }
            ]
        )

        stack.up()
        outputs = stack.outputs()["machines"]["ec2"]
        assert outputs["address"] == vm.address
        assert outputs["DOCKER_HOST"] == f"tcp://{vm.address}:2376"
        host = next(r for r in stack.resources() if r["type"].endswith("Host"))
        instance_id = host["id"]
        instance = ec2.describe_instances(InstanceIds=[instance_id])
        instance = instance["Reservations"][0]["Instances"][0]
        assert instance["State"]["Name"] == "running"
        assert instance["KeyName"] == key_name

        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=docker_env(outputs),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert info.returncode == 0, info.stderr
        assert info.stdout.strip() == outputs["dockerVersion"]

        stack.destroy()
        assert stack.resources() == []
        assert moto_ec2.inventory() == before
    finally:
        for cleanup in (
            lambda: ec2.release_address(AllocationId=allocation["AllocationId"]),
            lambda: ec2.delete_key_pair(KeyName=key_name),
        ):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - best effort after a failure
                pass
