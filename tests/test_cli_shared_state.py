"""A machine's life with the state on S3, used from a second, empty home.

moto's S3 server on 127.0.0.1 stores the backend. The main stack provisions a
machine on the shared test VM. Then a workstation with an empty home
directory, the backend URL, S3 credentials and the passphrase runs
``pulumi-docker-machine`` and reaches the daemon with the real docker client,
and a consumer stack on the same backend reaches it through a StackReference.
The tests run in file order on one stack.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.harness.netguard import check_dialable
from tests.harness.pulumi_cli import (
    PASSPHRASE,
    PROJECT_DIR,
    PROJECT_NAME,
    PulumiStack,
    machine_config,
)

pytestmark = pytest.mark.vm

MACHINE = "shared"
CONSUMER_DIR = PROJECT_DIR / "examples" / "consumer"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    # Static credentials are set, so no SDK may look for instance metadata.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_loopback_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def backend_url():
    """Start moto's S3 on 127.0.0.1, make a bucket; return the backend URL."""
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://{check_dialable('127.0.0.1')}:{port}"
    bucket = f"state-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    yield (
        f"s3://{bucket}?endpoint={endpoint}&use_path_style=true&region=us-east-1",
        s3,
        bucket,
    )
    server.stop()


@pytest.fixture(scope="module")
def stack(shared_vm, backend_url, tmp_path_factory):
    """The machine stack on the S3 backend; destroyed and removed at the end."""
    stack = PulumiStack(
        tmp_path_factory.mktemp("s3-stack"),
        backend_url=backend_url[0],
        extra_env=S3_ENV,
    )
    stack.write_config([machine_config(shared_vm, MACHINE)])
    yield stack
    if stack.resources():
        stack.destroy(check=False)
    stack.remove()


@pytest.fixture(scope="module")
def workstation(tmp_path_factory, backend_url):
    """An empty home with only backend access and the passphrase."""
    home = tmp_path_factory.mktemp("second-home")
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PULUMI_BACKEND_URL": backend_url[0],
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        **S3_ENV,
    }
    return home, cwd, env


def qualified(stack: PulumiStack) -> str:
    """Return ORG/PROJECT/STACK, which works outside the project directory."""
    return f"organization/{PROJECT_NAME}/{stack.name}"


def run_tool(workstation, *args, env=None, timeout=120):
    """Run pulumi-docker-machine on the second workstation."""
    _, cwd, base_env = workstation
    return subprocess.run(
        [shutil.which("pulumi-docker-machine"), *args],
        cwd=cwd,
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_s3_preview_and_up(stack, backend_url):
    preview = stack.preview()
    assert "+ " in preview.stdout
    stack.up()
    outputs = stack.outputs()
    assert outputs["machines"][MACHINE]["DOCKER_TLS_VERIFY"] == "1"
    _, s3, bucket = backend_url
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(stack.name in key for key in keys), keys


def test_env_from_fresh_home(stack, workstation):
    home, _, env = workstation
    printed = run_tool(
        workstation, "env", "--shell", "bash", "--stack", qualified(stack), MACHINE
    )
    assert printed.returncode == 0, printed.stderr
    cert_dir = home / ".pulumi-docker-machine" / "machines" / PROJECT_NAME / stack.name / MACHINE
    assert f"export DOCKER_CERT_PATH='{cert_dir}'" in printed.stdout
    assert stat.S_IMODE((cert_dir / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_dir.stat().st_mode) == 0o700
    assert "PRIVATE KEY" not in printed.stdout

    # Apply the output in bash the way its hint shows, then run the real client.
    script = home / "env.sh"
    script.write_text(printed.stdout)
    docker = subprocess.run(
        ["bash", "-c", '. "$1" && docker info --format "{{.ServerVersion}}"', "bash",
         str(script)],
        env={"PATH": env["PATH"], "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert docker.returncode == 0, docker.stderr
    expected = stack.outputs()["machines"][MACHINE]["dockerVersion"]
    assert docker.stdout.strip() == expected


def test_env_unset_no_proxy(stack, workstation):
    address = stack.outputs()["machines"][MACHINE]["address"]
    printed = run_tool(
        workstation, "env", "--shell", "bash", "--no-proxy", "--stack",
        qualified(stack), MACHINE, env={"NO_PROXY": f"a.example,{address}"},
    )
    assert printed.returncode == 0, printed.stderr
    assert f"export NO_PROXY='a.example,{address}'" in printed.stdout
    assert f"export no_proxy='a.example,{address}'" in printed.stdout
    unset = run_tool(
        workstation, "env", "--shell", "fish", "--unset", "--stack", qualified(stack),
        MACHINE,
    )
    assert unset.returncode == 0, unset.stderr
    assert "set -e DOCKER_HOST;" in unset.stdout


def test_ip_url_inspect(stack, workstation):
    public = stack.outputs()["machines"][MACHINE]
    flags = ["--stack", qualified(stack), MACHINE]
    assert run_tool(workstation, "ip", *flags).stdout.strip() == public["address"]
    assert run_tool(workstation, "url", *flags).stdout.strip() == public["DOCKER_HOST"]
    inspected = run_tool(workstation, "inspect", *flags)
    assert inspected.returncode == 0, inspected.stderr
    document = json.loads(inspected.stdout)
    assert document["outputs"]["DOCKER_HOST"] == public["DOCKER_HOST"]
    assert document["stack"] == stack.name
    assert "PRIVATE KEY" not in inspected.stdout


def test_config_flags_reach_daemon(stack, workstation):
    home, _, env = workstation
    flags = run_tool(workstation, "config", "--stack", qualified(stack), MACHINE)
    assert flags.returncode == 0, flags.stderr
    docker = subprocess.run(
        ["docker", *flags.stdout.split(), "version", "--format", "{{.Server.Version}}"],
        env={"PATH": env["PATH"], "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert docker.returncode == 0, docker.stderr
    assert docker.stdout.strip() == stack.outputs()["machines"][MACHINE]["dockerVersion"]


# The default live-check timeout (3 s) is too short for a daemon under
# software emulation on a loaded test machine.
PROBE_TIMEOUT = ["--timeout", "30"]


def test_status_and_ls_live(stack, workstation):
    status = run_tool(
        workstation, "status", *PROBE_TIMEOUT, "--stack", qualified(stack), MACHINE
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == "Running"
    listing = run_tool(workstation, "ls", *PROBE_TIMEOUT, "--stack", qualified(stack))
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "DRIVER", "STATE"]
    assert row.split()[0] == MACHINE
    assert row.split()[-1] == "OK"


def test_ls_without_passphrase(stack, workstation):
    listing = run_tool(
        workstation, "ls", "--stack", qualified(stack),
        env={"PULUMI_CONFIG_PASSPHRASE": ""},
    )
    assert listing.returncode == 0, listing.stderr
    assert "live check skipped" in listing.stderr
    assert "unknown (no access to secrets)" in listing.stdout


def test_ssh_runs_command(stack, workstation):
    ran = run_tool(
        workstation, "ssh", "--stack", qualified(stack), MACHINE,
        "systemctl", "is-active", "docker",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "active"
    failed = run_tool(workstation, "ssh", "--stack", qualified(stack), MACHINE, "exit 3")
    assert failed.returncode == 3


def test_context_create_then_update(stack, workstation):
    home, _, env = workstation
    created = run_tool(workstation, "context", "--stack", qualified(stack), MACHINE)
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    updated = run_tool(workstation, "context", "--stack", qualified(stack), MACHINE)
    assert updated.returncode == 0, updated.stderr
    assert "updated" in updated.stdout
    docker = subprocess.run(
        ["docker", "--context", MACHINE, "info", "--format", "{{.ServerVersion}}"],
        env={"PATH": env["PATH"], "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert docker.returncode == 0, docker.stderr
    assert docker.stdout.strip() == stack.outputs()["machines"][MACHINE]["dockerVersion"]


@pytest.mark.parametrize(
    "args,env,code,fragment",
    [
        (["env", "--shell", "bash", "nosuch"], {}, 5, "'nosuch' not found"),
        (["ip", "nosuch"], {}, 5, "its machines are shared"),
        (["env", "--shell", "nushell", MACHINE], {}, 2, "invalid shell 'nushell'"),
        (["env", "--shell", "bash", MACHINE], {"PULUMI_CONFIG_PASSPHRASE": "wrong"}, 6,
         "PULUMI_CONFIG_PASSPHRASE"),
        (["config", MACHINE], {"PULUMI_CONFIG_PASSPHRASE": ""}, 6, "secret outputs"),
    ],
    ids=["env-unknown", "ip-unknown", "env-bad-shell", "env-wrong-passphrase",
         "config-no-passphrase"],
)
def test_bad_input_on_live_stack(stack, workstation, args, env, code, fragment):
    completed = run_tool(workstation, *args[:-1], "--stack", qualified(stack), args[-1],
                         env=env)
    assert completed.returncode == code, completed.stderr
    assert fragment in completed.stderr


def test_consumer_reaches_daemon(stack, backend_url, tmp_path_factory):
    consumer = PulumiStack(
        tmp_path_factory.mktemp("consumer"),
        project_dir=CONSUMER_DIR,
        backend_url=backend_url[0],
        extra_env=S3_ENV,
    )
    try:
        consumer.write_raw_config(
            {
                "docker-machine-consumer:machineStack": qualified(stack),
                "docker-machine-consumer:machine": MACHINE,
            }
        )
        consumer.up()
        outputs = consumer.outputs()
        public = stack.outputs()["machines"][MACHINE]
        assert outputs["dockerHost"] == public["DOCKER_HOST"]
        assert outputs["daemonInfo"]["serverVersion"] == public["dockerVersion"]
        key = stack.outputs(show_secrets=True)["machineSecrets"][MACHINE]["clientKeyPem"]
        assert key.strip().splitlines()[1] not in json.dumps(consumer.export())
        consumer.destroy()
    finally:
        consumer.remove()


def test_s3_destroy_then_env_fails(stack, workstation):
    stack.destroy()
    assert stack.resources() == []
    completed = run_tool(
        workstation, "env", "--shell", "bash", "--stack", qualified(stack), MACHINE
    )
    assert completed.returncode == 4, completed.stderr
    assert "no machines output" in completed.stderr
