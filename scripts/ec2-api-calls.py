"""Count the EC2 API calls of each amazonec2 driver operation, against moto.

Runs the driver in this process against moto's server on 127.0.0.1 and prints,
per operation, the API calls made and the wall-clock time. The create counted
is ``provision`` (create without its SSH login), because no SSH server
listens at the addresses moto gives.

    python scripts/ec2-api-calls.py
"""

from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import botocore.client  # noqa: E402

from tests.harness.moto_ec2 import FAKE_CREDENTIALS, moto_server  # noqa: E402
from tests.test_amazonec2 import DRIVER, host_props, provisioned  # noqa: E402

calls: collections.Counter[str] = collections.Counter()
_make_api_call = botocore.client.BaseClient._make_api_call


def _counting(self, operation, params):
    calls[operation] += 1
    return _make_api_call(self, operation, params)


def measure(label, operation):
    """Run ``operation`` and print its API calls and duration."""
    calls.clear()
    started = time.monotonic()
    result = operation()
    elapsed = time.monotonic() - started
    listing = ", ".join(f"{name} x{count}" for name, count in sorted(calls.items()))
    print(f"{label}: {sum(calls.values())} calls in {elapsed:.2f} s ({listing})")
    return result


def main() -> None:
    os.environ.update(FAKE_CREDENTIALS)
    os.environ.pop("AWS_PROFILE", None)
    botocore.client.BaseClient._make_api_call = _counting
    with moto_server() as moto:
        # The first request makes moto load its catalogue; keep it out of the figures.
        moto.client().describe_vpcs()
        props = host_props(moto)
        outputs = measure("create without SSH login", lambda: provisioned(props))
        instance_id = outputs["details"]["instance_id"]
        measure("read", lambda: DRIVER.read(instance_id, outputs))
        tagged = host_props(moto, tags={"team": "web"})
        outputs = measure("update tags", lambda: DRIVER.update(instance_id, outputs, tagged))
        measure("update with no change", lambda: DRIVER.update(instance_id, outputs, tagged))
        stopped = host_props(moto, tags={"team": "web"}, state="stopped")
        outputs = measure("update state to stopped", lambda: DRIVER.update(instance_id, outputs, stopped))
        measure("delete", lambda: DRIVER.delete(instance_id, outputs))


if __name__ == "__main__":
    main()
