"""moto's server on 127.0.0.1 as the EC2 endpoint of tests.

The driver reaches it through ``endpointUrl``, the way a user points boto3 at
another endpoint. The credentials are fake and live only in the environment
of the test process and of the pulumi processes it starts.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest

# moto's request recorder (moto.moto_api, moto 5.2) reads the path of its
# record file once, when moto is imported. Without this variable the file
# lands in the current directory as "moto_recording".
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH",
    os.path.join(tempfile.gettempdir(), f"pdm-moto-recording-{os.getpid()}.jsonl"),
)
from moto.server import ThreadedMotoServer  # noqa: E402

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-not-a-key",
    "AWS_SECRET_ACCESS_KEY": "testing-not-a-secret",
    # Keep any AWS configuration of the user out of the tests.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_DEFAULT_REGION": REGION,
}
# An AMI that moto lists in every region (Amazon Linux 2023, root /dev/xvda).
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


@dataclass(frozen=True)
class MotoEC2:
    """A running moto server and clients for it."""

    endpoint_url: str

    def client(self, service: str = "ec2", region: str = REGION) -> Any:
        """Return a boto3 client of ``service`` at this endpoint."""
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def inventory(self, region: str = REGION) -> dict[str, set[str]]:
        """Return the ids of live instances, key pairs, groups and Elastic IPs."""
        ec2 = self.client(region=region)
        instances = {
            instance["InstanceId"]
            for reservation in ec2.describe_instances()["Reservations"]
            for instance in reservation["Instances"]
            if instance["State"]["Name"] != "terminated"
        }
        return {
            "instances": instances,
            "key_pairs": {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]},
            "security_groups": {
                g["GroupId"]
                for g in ec2.describe_security_groups()["SecurityGroups"]
                if g["GroupName"] != "default"
            },
            "elastic_ips": {
                a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]
            },
            "associations": {
                a["AssociationId"]
                for a in ec2.describe_addresses()["Addresses"]
                if a.get("AssociationId")
            },
        }


    def _recorder(self, action: str, method: str = "POST") -> bytes:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/recorder/{action}", method=method
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.read()

    def recorded_actions(self, operation: Callable[[], Any]) -> list[str]:
        """Run ``operation``; return the API actions moto served meanwhile, in order.

        moto's recorder writes every request it serves to its record file
        between start-recording and stop-recording. The action is the
        ``Action`` field of a query-protocol body (EC2) or the operation named
        in ``X-Amz-Target`` (JSON protocol, such as SSM).
        """
        self._recorder("reset-recording")
        self._recorder("start-recording")
        try:
            operation()
        finally:
            self._recorder("stop-recording")
        record = self._recorder("download-recording", method="GET").decode()
        return [_action(json.loads(line)) for line in record.splitlines() if line]


def _action(entry: dict[str, Any]) -> str:
    """Return the API action of one request in moto's record."""
    target = entry["headers"].get("X-Amz-Target")
    if target:
        return target.rpartition(".")[2]
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode()
    return parse_qs(body).get("Action", ["(no action)"])[0]


def is_read_only(action: str) -> bool:
    """Tell whether an EC2 or SSM action only reads (Describe*, Get*)."""
    return action.startswith(("Describe", "Get"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[MotoEC2]:
    """Run moto's server on a free port of 127.0.0.1 for a ``with`` block."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoEC2(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_ec2() -> Iterator[MotoEC2]:
    """moto's server for the session, with fake credentials in the environment.

    Its first request per region takes seconds (moto loads its AMI catalogue),
    so the test modules share one server and tell their resources apart by id.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with moto_server() as server:
            yield server
    try:
        os.remove(os.environ["MOTO_RECORDER_FILEPATH"])
    except FileNotFoundError:
        pass
