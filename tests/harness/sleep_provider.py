"""A dynamic provider whose create sleeps, for counting concurrent calls.

tests/test_worker_pool.py pickles it into pulumi's real dynamic provider
server. With ``load_project_providers`` set, a create first imports this
project's providers, as unpickling a Host or DockerDaemonConfig provider does.
"""

from __future__ import annotations

import importlib
import time
import uuid
from typing import Any

from pulumi.dynamic import CreateResult, ResourceProvider


class SleepProvider(ResourceProvider):
    """Create sleeps ``seconds`` and returns when it started and ended."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        if props.get("load_project_providers"):
            importlib.import_module("provider.resources")
        started = time.monotonic()
        time.sleep(props["seconds"])
        return CreateResult(
            id_=uuid.uuid4().hex,
            outs={"started": started, "ended": time.monotonic()},
        )
