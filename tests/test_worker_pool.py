"""The dynamic provider server's worker pool, in pulumi's real server process.

Each case starts ``python -m pulumi.dynamic`` (the server the
``pulumi-resource-pulumi-python`` plugin runs) and sends it 16 create calls
at once over gRPC, each sleeping 2 seconds. The SDK's server runs 4 of them
at a time. Once this project's providers are loaded it must run all 16.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from provider import worker_pool
from tests.harness.sleep_provider import SleepProvider

PROJECT_DIR = Path(__file__).resolve().parents[1]
CALLS = 16
SLEEP_SECONDS = 2.0
# Seconds for the server to print its port, and for all calls to return.
START_TIMEOUT = 30
CALL_TIMEOUT = 60


@pytest.fixture
def server_stub():
    """Start the SDK's dynamic provider server; yield a stub connected to it."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.dynamic"],
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with ThreadPoolExecutor(1) as reader:
            port = reader.submit(process.stdout.readline).result(START_TIMEOUT).strip()
        assert port.isdigit(), f"server printed {port!r} instead of its port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield provider_pb2_grpc.ResourceProviderStub(channel)
    finally:
        process.kill()
        process.wait(timeout=10)


def create_request(index: int, load_project_providers: bool) -> provider_pb2.CreateRequest:
    properties = struct_pb2.Struct()
    properties.update(
        {
            "__provider": serialize_provider(SleepProvider()),
            "seconds": SLEEP_SECONDS,
            "load_project_providers": load_project_providers,
        }
    )
    return provider_pb2.CreateRequest(
        urn=f"urn:pulumi:test::test::pulumi-python:dynamic:Resource::sleep-{index}",
        properties=properties,
    )


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Return how many of ``spans`` (start, end) were open at one time, at most."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = highest = 0
    for _, change in events:
        running += change
        highest = max(highest, running)
    return highest


def concurrent_creates(stub, load_project_providers: bool) -> int:
    """Send CALLS creates at once; return how many ran side by side."""
    with ThreadPoolExecutor(CALLS) as callers:
        responses = list(
            callers.map(
                lambda index: stub.Create(
                    create_request(index, load_project_providers), timeout=CALL_TIMEOUT
                ),
                range(CALLS),
            )
        )
    spans = [
        (response.properties["started"], response.properties["ended"])
        for response in responses
    ]
    return max_overlap(spans)


def test_sdk_server_runs_four_calls_at_once(server_stub):
    assert concurrent_creates(server_stub, load_project_providers=False) == (
        worker_pool.SDK_WORKER_THREADS
    )


def test_project_providers_widen_server_pool(server_stub):
    assert concurrent_creates(server_stub, load_project_providers=True) == CALLS


def test_widen_does_nothing_outside_server():
    assert worker_pool.widen_server_pool() is False
