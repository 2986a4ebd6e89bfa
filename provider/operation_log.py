"""A record of when each remote operation starts and ends, across provider processes.

A stack's machines are served by several provider processes (see
:mod:`provider.program`), so "how many configures ran at once" cannot be read
from one process. When ``PULUMI_DOCKER_MACHINE_OPERATION_LOG`` names a file,
every process appends one JSON line per start and end to it; the engine
passes its environment on to provider processes. Each line is shorter than
PIPE_BUF and written with one ``write`` on an ``O_APPEND`` descriptor, so lines
from different processes do not interleave.
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


@contextlib.contextmanager
def record(machine_name: str, operation: str) -> Iterator[None]:
    """Log the start and end of ``operation`` on ``machine_name``."""
    global _running
    with _lock:
        _running += 1
        running = _running
    logger.info("%s of %s started (%d running in pid %d)", operation, machine_name, running, os.getpid())
    _append({"event": "start", "machine": machine_name, "operation": operation,
             "pid": os.getpid(), "time": time.time()})
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        with _lock:
            _running -= 1
        _append({"event": outcome, "machine": machine_name, "operation": operation,
                 "pid": os.getpid(), "time": time.time()})
        logger.info("%s of %s %s", operation, machine_name, outcome)


def max_in_flight(lines: list[str], operation: str) -> int:
    """Return the most ``operation`` records open at one time in a log's lines."""
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
