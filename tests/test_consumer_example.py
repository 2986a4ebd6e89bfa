"""examples/consumer/ under Pulumi's mocks: what it reads from the machine stack.

The program runs in a child interpreter, because the mocks replace the Pulumi
runtime's global settings. The StackReference returns the outputs a test
gives, and the run is a preview, so the program dials no daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).resolve().parents[1] / "examples" / "consumer" / "__main__.py"

CHILD = """
import json, runpy, sys
import pulumi

OUTPUTS = json.loads(sys.argv[2])


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        if args.typ == "pulumi:pulumi:StackReference":
            state = {"name": args.name, "outputs": OUTPUTS, "secretOutputNames": []}
            return f"{args.name}-id", state
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


pulumi.runtime.set_mocks(
    Mocks(), project="docker-machine-consumer", stack="dev", preview=True
)
pulumi.runtime.set_all_config(
    {
        "docker-machine-consumer:machineStack": "organization/machines/prod",
        "docker-machine-consumer:machine": "build-1",
    }
)


@pulumi.runtime.test
def read_client_key():
    program = runpy.run_path(sys.argv[1])
    return program["client_key_pem"].apply(print)


read_client_key()
"""

MACHINES = {"build-1": {"DOCKER_HOST": "tcp://127.0.0.1:2376"}}


def run_consumer(outputs: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(PROGRAM), json.dumps(outputs)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_consumer_reads_client_key():
    secrets = {"build-1": {"clientKeyPem": "KEY PEM"}}
    completed = run_consumer({"machines": MACHINES, "machineSecrets": secrets})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "KEY PEM"


@pytest.mark.parametrize(
    "machine_secrets",
    [{}, {"build-1": {}}, {"build-1": {"clientKeyPem": ""}}],
    ids=["no-entry", "no-key", "empty-key"],
)
def test_consumer_missing_key_message(machine_secrets):
    completed = run_consumer({"machines": MACHINES, "machineSecrets": machine_secrets})
    assert completed.returncode != 0
    assert "KeyError" not in completed.stderr
    assert "machine 'build-1' has no clientKeyPem" in completed.stderr
    assert "organization/machines/prod" in completed.stderr
