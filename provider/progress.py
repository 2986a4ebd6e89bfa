"""Progress lines that reach the user's terminal from a provider process.

The engine shows what a dynamic provider prints to stdout, so each long step
prints one line (what is awaited, attempt N of M) as well as logging it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("provider")


def report(message: str) -> None:
    """Print ``message`` for the user and log it at info level."""
    logger.info(message)
    print(message, flush=True)
