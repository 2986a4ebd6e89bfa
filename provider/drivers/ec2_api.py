"""Calls to the EC2 API for the ``amazonec2`` driver, one function per step.

Clients are built per operation, because the provider object is pickled
into the state and must keep no client. botocore retries throttling and
transient faults in its ``standard`` or ``adaptive`` mode. The waits here
poll with a bound on attempts and on time, and print each attempt.

boto3 and botocore are imported inside the functions that call AWS, because
the provider loads this module also for check and diff, which make no call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from provider.errors import DockerMachineError
from provider.progress import report

if TYPE_CHECKING:
    import boto3
    import botocore.config

API_MAX_ATTEMPTS = 5
WAIT_ATTEMPTS = 40
WAIT_SECONDS = 300.0
# Error codes that mean the resource is gone already.
NOT_FOUND_CODES = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidKeyPair.NotFound",
        "InvalidGroup.NotFound",
        "InvalidAllocationID.NotFound",
        "InvalidAssociationID.NotFound",
        "InvalidAddress.NotFound",
        "InvalidSpotInstanceRequestID.NotFound",
    }
)


class EC2Error(DockerMachineError):
    """An EC2 API call failed; the message names the step and the AWS error."""


class EC2TimeoutError(EC2Error, TimeoutError):
    """An instance did not reach the awaited state within the bounds."""


def client(settings: dict[str, Any]) -> Any:
    """Build an EC2 client for the region, endpoint and profile of ``settings``."""
    return _client("ec2", settings)


def ssm_client(settings: dict[str, Any]) -> Any:
    """Build an SSM client next to the EC2 one (same endpoint when one is set)."""
    return _client("ssm", settings)


def _client(service: str, settings: dict[str, Any]) -> Any:
    session = _session(settings)
    with _sessions_lock:
        return session.client(
            service, endpoint_url=settings["endpointUrl"], config=_config(settings)
        )


_sessions: dict[tuple[str | None, str], boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _session(settings: dict[str, Any]) -> boto3.session.Session:
    """Return the boto3 session of a profile and region, made once per process.

    Making a session loads botocore's data files (seconds on a busy machine).
    The provider serves calls on several threads and a boto3 session is not
    thread-safe, so sessions are made and used under a lock. The clients
    they make are safe to use from any thread.
    """
    key = (settings["profile"], settings["region"])
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = _new_session(*key)
        return _sessions[key]


def _new_session(profile: str | None, region: str) -> boto3.session.Session:
    # Credentials resolve the way boto3 resolves them: environment, profile,
    # shared files, then instance or container roles.
    import boto3
    import botocore.exceptions

    try:
        return boto3.session.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound:
        raise EC2Error(
            f"invalid amazonec2.profile {profile!r}: no such profile in "
            f"the AWS config files; run `aws configure list-profiles`"
        ) from None


def _config(settings: dict[str, Any]) -> botocore.config.Config:
    import botocore.config

    return botocore.config.Config(
        retries={"mode": settings["retryMode"], "max_attempts": API_MAX_ATTEMPTS},
        connect_timeout=10,
        read_timeout=60,
    )


def error_code(error: BaseException) -> str:
    """Return the AWS error code of a ClientError, or '' for other errors."""
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        return error.response.get("Error", {}).get("Code", "")
    return ""


def call(step: str, function: Callable[..., Any], **params: Any) -> Any:
    """Call ``function(**params)``; raise EC2Error naming ``step`` on failure."""
    import botocore.exceptions

    try:
        return function(**params)
    except botocore.exceptions.ClientError as error:
        detail = error.response.get("Error", {})
        raise EC2Error(
            f"failed to {step}: {detail.get('Code', 'error')}: {detail.get('Message', error)}"
        ) from error
    except botocore.exceptions.NoCredentialsError:
        raise EC2Error(
            f"failed to {step}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or amazonec2.profile, or run `aws configure`"
        ) from None
    except botocore.exceptions.BotoCoreError as error:
        raise EC2Error(f"failed to {step}: {error}") from error


def call_unless_gone(step: str, function: Callable[..., Any], **params: Any) -> bool:
    """Like :func:`call`, but return False when the resource no longer exists."""
    try:
        call(step, function, **params)
    except EC2Error as error:
        if error_code(error.__cause__) in NOT_FOUND_CODES:
            report(f"nothing to do to {step}: it no longer exists")
            return False
        raise
    return True


def describe_instance(ec2: Any, instance_id: str) -> dict[str, Any] | None:
    """Return the description of one instance, or None if EC2 has none."""
    try:
        reply = call(
            f"describe instance {instance_id}",
            ec2.describe_instances,
            InstanceIds=[instance_id],
        )
    except EC2Error as error:
        if error_code(error.__cause__) == "InvalidInstanceID.NotFound":
            return None
        raise
    for reservation in reply.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return instance
    return None


def wait_for_state(
    ec2: Any,
    instance_id: str,
    expected: str,
    *,
    attempts: int = WAIT_ATTEMPTS,
    deadline_seconds: float = WAIT_SECONDS,
) -> dict[str, Any] | None:
    """Poll until the instance is in state ``expected``; return its description.

    A terminated instance that EC2 no longer lists counts as ``terminated``
    (and returns None). Raises EC2TimeoutError after ``attempts`` polls or
    ``deadline_seconds``, whichever comes first.
    """
    deadline = time.monotonic() + deadline_seconds
    delay = 1.0
    for attempt in range(1, attempts + 1):
        instance = describe_instance(ec2, instance_id)
        current = instance["State"]["Name"] if instance else "terminated"
        if current == expected:
            return instance
        if expected == "running" and current in ("terminated", "shutting-down"):
            raise EC2Error(
                f"instance {instance_id} is {current} instead of running: see "
                f"its state reason in the EC2 console or `aws ec2 describe-instances`"
            )
        remaining = deadline - time.monotonic()
        if attempt == attempts or remaining <= 0:
            break
        report(
            f"waiting for instance {instance_id} to be {expected}, now {current} "
            f"(attempt {attempt} of {attempts})"
        )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 10.0)
    raise EC2TimeoutError(
        f"instance {instance_id} was not {expected} after {attempt} checks in "
        f"{deadline_seconds:.0f} s; check it with `aws ec2 describe-instances "
        f"--instance-ids {instance_id}` and run the command again"
    )


def delete_security_group(ec2: Any, group_id: str) -> None:
    """Delete a security group, retrying while a terminating instance still uses it."""
    attempts = 10
    for attempt in range(1, attempts + 1):
        try:
            call_unless_gone(
                f"delete security group {group_id}", ec2.delete_security_group,
                GroupId=group_id,
            )
            return
        except EC2Error as error:
            if error_code(error.__cause__) != "DependencyViolation" or attempt == attempts:
                raise
            report(
                f"security group {group_id} is still in use "
                f"(attempt {attempt} of {attempts}); retrying"
            )
            time.sleep(min(2.0 * attempt, 10.0))


class Undo:
    """Steps that reverse what a create made, run newest first on failure."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, description: str, step: Callable[[], Any]) -> None:
        """Record how to remove something just made."""
        self._steps.append((description, step))

    def run(self) -> list[str]:
        """Run every step, newest first; return one message per step that failed."""
        failures = []
        for description, step in reversed(self._steps):
            report(f"cleaning up after the failed create: {description}")
            try:
                step()
            except Exception as error:  # every cleanup failure is reported
                failures.append(f"{description}: {error}")
        self._steps.clear()
        return failures


def raise_with_cleanup(error: BaseException, cleanup_failures: list[str]) -> None:
    """Re-raise ``error``, naming anything the cleanup could not remove."""
    if not cleanup_failures:
        raise error
    listing = "\n  ".join(cleanup_failures)
    raise EC2Error(
        f"{error}\nThe cleanup after this failure did not remove everything; "
        f"remove these by hand:\n  {listing}"
    ) from error
