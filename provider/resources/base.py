"""Helpers shared by the dynamic resource providers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from pulumi.dynamic import CheckFailure
from pulumi.output import Unknown
from pulumi.runtime import rpc

from provider.errors import DockerMachineError, InvalidInputError

T = TypeVar("T")

# During preview the Python SDK hands check and diff an ``Unknown`` instance
# for a value not known yet (pulumi 3.272); older SDKs passed this string.
UNKNOWN = rpc.UNKNOWN


def is_unknown(value: object) -> bool:
    """Tell whether ``value`` is a preview placeholder, at any depth."""
    if isinstance(value, Unknown):
        return True
    if isinstance(value, str):
        return value == UNKNOWN
    if isinstance(value, Mapping):
        return any(is_unknown(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(is_unknown(item) for item in value)
    return False


Check = Callable[[Any], Any]


def run_checks(
    props: dict[str, Any], checks: Iterable[tuple[str, Check]]
) -> tuple[dict[str, Any], list[CheckFailure]]:
    """Validate ``props`` field by field; return normalised inputs and failures.

    Absent and ``None`` fields are optional inputs and are skipped, and so are
    fields not known yet. Every other field is checked, so that one run
    reports every bad field at once.
    """
    inputs = dict(props)
    failures: list[CheckFailure] = []
    for field, check in checks:
        value = props.get(field)
        if value is None or is_unknown(value):
            continue
        try:
            inputs[field] = check(value)
        except InvalidInputError as error:
            failures.append(CheckFailure(field, str(error)))
    return inputs, failures


def changed_keys(
    olds: Mapping[str, Any], news: Mapping[str, Any], keys: Iterable[str]
) -> list[str]:
    """Return the keys among ``keys`` whose values differ between the dicts."""
    return [key for key in keys if olds.get(key) != news.get(key)]


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop in the calling gRPC worker thread."""
    return asyncio.run(coroutine)


F = TypeVar("F", bound=Callable[..., Any])


def short_errors(method: F) -> F:
    """Re-raise this project's errors without their inner traceback.

    The dynamic provider server reports a failed call with the whole Python
    traceback. The message of an error of ours already names what failed and
    what to do, so the frames below the provider method are dropped.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except DockerMachineError as error:
            raise error.with_traceback(None) from None

    return wrapper  # type: ignore[return-value]
