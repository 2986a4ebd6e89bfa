"""More worker threads for the dynamic provider server of this process.

pulumi's Python dynamic provider server (``pulumi/dynamic/__main__.py`` in
the Python SDK, checked with 3.272.0) serves every gRPC call of one provider
process from ``ThreadPoolExecutor(max_workers=4)``. A create or update keeps
its worker thread until its host is configured. So with 4 threads a stack of
16 machines would configure them 4 at a time, and every other call waits in
the executor's queue.

The SDK offers no setting for that number. So when this project's providers
are loaded into that server, ``widen_server_pool`` raises the executor's
``_max_workers`` (a private attribute of CPython's ThreadPoolExecutor,
unchanged from 3.8 to 3.13) and starts threads for calls already queued. One
provider process then serves a whole fleet, and the engine's ``--parallel``
is the only limit on the configures in flight. tests/test_worker_pool.py runs
the SDK's real server and fails if this stops working.
"""

from __future__ import annotations

import gc
import sys
from concurrent.futures import ThreadPoolExecutor

# Enough for `pulumi up --parallel 64`. An idle worker thread costs a few
# hundred KiB of virtual memory and no CPU.
WORKER_THREADS = 64

# The executor size that pulumi/dynamic/__main__.py creates.
SDK_WORKER_THREADS = 4
SERVER_MODULE = "pulumi.dynamic.__main__"


def in_dynamic_provider_server() -> bool:
    """Tell whether this process runs pulumi's Python dynamic provider server."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec is not None and spec.name == SERVER_MODULE


def find_server_executor() -> ThreadPoolExecutor | None:
    """Return the server's executor: the one live executor of the SDK's size."""
    candidates = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, ThreadPoolExecutor)
        and obj._max_workers == SDK_WORKER_THREADS
        and not obj._shutdown
    ]
    return candidates[0] if len(candidates) == 1 else None


def widen_server_pool(max_workers: int = WORKER_THREADS) -> bool:
    """Let the dynamic provider server run ``max_workers`` calls at once.

    Does nothing outside the server process, and returns whether the pool
    was widened.
    """
    if not in_dynamic_provider_server():
        return False
    executor = find_server_executor()
    if executor is None:
        # NOTE: a newer SDK that builds its server another way keeps its own
        # pool size; tests/test_worker_pool.py shows which.
        print(
            "pulumi-docker-machine: dynamic provider server pool not found; "
            f"configures run at most {SDK_WORKER_THREADS} at a time",
            file=sys.stderr,
        )
        return False
    with executor._shutdown_lock:
        executor._max_workers = max_workers
        # submit() adds at most one thread per call, so calls that queued
        # while the pool was full get their threads here.
        for _ in range(min(executor._work_queue.qsize(), max_workers)):
            executor._adjust_thread_count()
    return True
