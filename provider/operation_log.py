"""A record of when each remote operation starts and ends, across provider processes.

It shows how many configures ran at once, and in which process. A `pulumi
up` runs a preview and then an update, each in provider processes of its own,
and a stack may declare providers of its own. When
``PULUMI_DOCKER_MACHINE_OPERATION_LOG`` names a file, every process appends
one JSON line per start and end to it. The engine
passes its environment on to provider processes, so setting the variable
for ``pulumi`` is enough. Each line of about 150 bytes goes out in one
``write`` on an ``O_APPEND`` descriptor, so on a local file system lines from
different processes do not interleave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator

logger = logging.getLogger(__name__)

LOG_ENVIRONMENT_VARIABLE = "PULUMI_DOCKER_MACHINE_OPERATION_LOG"

_lock = threading.Lock()
_running = 0


def _append(record: dict) -> None:
    path = os.environ.get(LOG_ENVIRONMENT_VARIABLE)
    if not path:
        return
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def _entry(event: str, machine_name: str, operation: str) -> dict:
    return {
        "event": event,
        "machine": machine_name,
        "operation": operation,
        "pid": os.getpid(),
        "time": time.time(),
    }


@contextlib.contextmanager
def record(machine_name: str, operation: str) -> Iterator[None]:
    """Log the start and end of ``operation`` on ``machine_name``."""
    global _running
    with _lock:
        _running += 1
        running = _running
    logger.info(
        "%s of %s started (%d running in pid %d)",
        operation,
        machine_name,
        running,
        os.getpid(),
    )
    _append(_entry("start", machine_name, operation))
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        with _lock:
            _running -= 1
        _append(_entry(outcome, machine_name, operation))
        logger.info("%s of %s %s", operation, machine_name, outcome)


def max_in_flight(lines: list[str], operation: str) -> int:
    """Return the maximum number of ``operation`` spans open at one time in ``lines``."""
    events = []
    for line in lines:
        entry = json.loads(line)
        if entry["operation"] != operation:
            continue
        events.append((entry["time"], 0 if entry["event"] != "start" else 1))
    running = peak = 0
    # At equal times an end sorts before a start, so touching spans do not overlap.
    for _time, is_start in sorted(events):
        running += 1 if is_start else -1
        peak = max(peak, running)
    return peak
