"""Warnings about certificates that expire soon, for ``pulumi refresh``.

The providers record each certificate's notAfter as ISO 8601 UTC text in
their outputs. Refresh compares those times with the current time and, for a
certificate within the warning window, prints a line that the Pulumi CLI shows
under Diagnostics with a ``warning:`` prefix.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from typing import Any

import pulumi

from provider.errors import InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_WARNING_DAYS = 30
MAX_WARNING_DAYS = 36500


def check_warning_days(value: Any, field: str = "expiry_warning_days") -> int:
    """Validate a warning window in whole days, where 0 turns warnings off."""
    # Numbers cross the Pulumi engine as doubles: 30 arrives as 30.0.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            field, value, "must be a whole number of days, e.g. 30; 0 turns warnings off"
        )
    if not 0 <= value <= MAX_WARNING_DAYS:
        raise InvalidInputError(
            field, value, f"must be from 0 to {MAX_WARNING_DAYS} days, e.g. 30"
        )
    return value


def parse_not_after(text: str) -> datetime:
    """Parse a notAfter written as ``2029-01-31T12:00:00Z``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def days_left(not_after: str, now: datetime | None = None) -> float:
    """Return the days from ``now`` (default: the current time) to ``not_after``."""
    now = now or datetime.now(timezone.utc)
    return (parse_not_after(not_after) - now).total_seconds() / 86400


def expiry_warnings(
    certificates: dict[str, str | None],
    warning_days: int,
    now: datetime | None = None,
) -> list[str]:
    """Return one message per certificate that expires within ``warning_days``.

    ``certificates`` maps a description such as "the CA certificate of ca" to
    its notAfter. Entries without a notAfter are skipped. The message of an
    expired certificate reads "expired at" instead.
    """
    if warning_days <= 0:
        return []
    messages = []
    for description, not_after in certificates.items():
        if not not_after:
            continue
        left = days_left(not_after, now)
        if left <= 0:
            messages.append(f"{description} expired at {not_after}")
        elif left <= warning_days:
            messages.append(
                f"{description} expires at {not_after}, in {math.floor(left)} days "
                f"(warning window {warning_days} days)"
            )
    return messages


def warn_about_expiry(
    certificates: dict[str, str | None],
    warning_days: Any,
    remedy: str,
    now: datetime | None = None,
) -> list[str]:
    """Print a warning for each certificate that expires soon; return the messages.

    ``remedy`` is the renewal instruction appended to each message.
    """
    # A resource created before the window was an input has no value: use the default.
    days = DEFAULT_WARNING_DAYS if warning_days is None else int(warning_days)
    messages = [f"{message}; {remedy}" for message in expiry_warnings(certificates, days, now)]
    for message in messages:
        logger.warning(message)
        _print_warning(message)
    return messages


def _print_warning(message: str) -> None:
    # Inside a dynamic provider, pulumi.log has no engine connection and writes
    # "warning: MESSAGE" to stderr, which the CLI shows under Diagnostics
    # (checked with CLI v3.276.0 and the pulumi 3.272.0 Python package).
    pulumi.log.warn(message)
