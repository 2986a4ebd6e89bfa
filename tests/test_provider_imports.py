"""What a fresh provider or program process imports for a preview.

Every ``pulumi preview`` and ``pulumi up`` starts the program and one
dynamic provider process per provider resource. Each provider process
unpickles our providers, which imports their modules, and then runs check
and diff. None of that opens an SSH connection or calls AWS, so asyncssh and
boto3 (each about 0.2 s to import on a 2-core machine) must stay out until
create, update, read or delete needs them. Each case runs in a new interpreter, because this test
process has imported them already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from provider import pki
from provider.resources.cert_authority import CertAuthorityProvider
from provider.resources.docker_daemon import DockerDaemonConfigProvider
from provider.resources.host import HostProvider

PROJECT_DIR = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("asyncssh", "boto3", "botocore")
PROVIDERS = {
    "host": HostProvider,
    "docker": DockerDaemonConfigProvider,
    "ca": CertAuthorityProvider,
}

# Unpickles the providers the way pulumi/dynamic/__main__.py does (dill from
# base64), runs the requested check and diff calls, and prints the check
# failures and the top-level names of the imported modules.
CHILD = """
import base64, json, sys
import dill

request = json.load(sys.stdin)
providers = {
    name: dill.loads(base64.b64decode(text))
    for name, text in request["providers"].items()
}
loaded_by_unpickling = sorted({name.split(".")[0] for name in sys.modules})
failures = []
for name, olds, news in request["calls"]:
    result = providers[name].check(olds, news)
    failures += [(name, failure.property, failure.reason) for failure in result.failures]
    if olds:
        providers[name].diff("id", olds, news)
print(json.dumps({
    "failures": failures,
    "after_unpickling": loaded_by_unpickling,
    "after_calls": sorted({name.split(".")[0] for name in sys.modules}),
}))
"""


def run_child(calls: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Run ``calls`` (provider name, olds, news) in a new provider-like process."""
    request = {
        "providers": {name: serialize_provider(cls()) for name, cls in PROVIDERS.items()},
        "calls": calls,
    }
    completed = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=PROJECT_DIR,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.fixture(scope="module")
def private_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture(scope="module")
def ca_cert_pem() -> str:
    return pki.create_ca().cert_pem


def host_inputs(private_key: str, **changes: Any) -> dict[str, Any]:
    inputs = {
        "driver": "generic",
        "machine_name": "node-1",
        "address": "127.0.0.1",
        "ssh_port": 22,
        "ssh_user": "root",
        "ssh_private_key": private_key,
        "pinned_host_key": None,
        "state": None,
        "options": {},
    }
    return {**inputs, **changes}


def docker_inputs(ca_cert_pem: str) -> dict[str, Any]:
    return {
        "machine_name": "node-1",
        "address": "127.0.0.1",
        "ssh_port": 22,
        "engine_port": 2376,
        "extra_sans": [],
        "ca_cert_pem": ca_cert_pem,
        "engine": {},
        "install": None,
        "driver": "generic",
    }


def test_unpickling_imports_no_ssh_or_aws() -> None:
    result = run_child([])
    for module in HEAVY_MODULES:
        assert module not in result["after_unpickling"]


def test_unchanged_inputs_import_no_ssh_or_aws(
    private_key: str, ca_cert_pem: str
) -> None:
    host = host_inputs(private_key)
    docker = docker_inputs(ca_cert_pem)
    ca = {"algorithm": "ecdsa-p256", "validity_days": 3650}
    result = run_child([("ca", ca, ca), ("host", host, host), ("docker", docker, docker)])
    assert result["failures"] == []
    for module in HEAVY_MODULES:
        assert module not in result["after_calls"]


@pytest.mark.parametrize("driver", ["qemu", "amazonec2"])
def test_driver_check_imports_no_ssh_or_boto3(driver: str, private_key: str) -> None:
    host = host_inputs(private_key, driver=driver, address=None)
    result = run_child([("host", host, host)])
    assert "asyncssh" not in result["after_calls"]
    # amazonec2's check reads the list of regions from botocore's data, so
    # only boto3 itself stays out.
    assert "boto3" not in result["after_calls"]


def test_new_key_still_parsed(private_key: str) -> None:
    result = run_child([("host", {}, host_inputs(private_key))])
    assert result["failures"] == []
    assert "asyncssh" in result["after_calls"]


def test_changed_bad_key_rejected(private_key: str) -> None:
    public_key = asyncssh.import_private_key(private_key).export_public_key().decode()
    olds = host_inputs(private_key)
    result = run_child([("host", olds, host_inputs(public_key))])
    assert [(name, field) for name, field, _ in result["failures"]] == [
        ("host", "ssh_private_key")
    ]
    assert "this is a public key" in result["failures"][0][2]


def test_program_imports_no_ssh_or_aws() -> None:
    code = "import json, sys, provider.program; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = {name.split(".")[0] for name in json.loads(completed.stdout)}
    for module in HEAVY_MODULES:
        assert module not in loaded
