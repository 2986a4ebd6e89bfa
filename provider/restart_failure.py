"""Explaining why Docker did not start with a new configuration (no I/O).

The apply script prints the journal of the failed restart twice (every line
of docker.service, and dockerd's own lines) and the daemon.json it replaced.
From those, :func:`explain` picks the daemon's own error line and the engine
options that most likely caused it.
"""

from __future__ import annotations

import json
import re

from provider import engine_options
from provider.daemon_config import parse_daemon_json
from provider.errors import EngineStartError

# Words in dockerd's start-up errors (20.10 to 26) and the daemon.json key
# each one points at when the message does not name the key itself.
_MESSAGE_HINTS = (
    ("graphdriver", "storage-driver"),
    ("storage driver", "storage-driver"),
    ("authorization", "authorization-plugins"),
    ("authz", "authorization-plugins"),
    ("remap", "userns-remap"),
    ("userns", "userns-remap"),
    ("log driver", "log-driver"),
    ("logging driver", "log-driver"),
    ("log-opt", "log-opts"),
    ("log opt", "log-opts"),
    ("mirror", "registry-mirrors"),
    ("insecure", "insecure-registries"),
    ("label", "labels"),
    ("listeners", "hosts"),
    ("address already in use", "hosts"),
)
# Kinds of journal line that explain a failed start, the most telling first.
# dockerd 20.10 to 26 prints the error that stops it as a plain line on
# stderr, in lower case like Go errors ("failed to load listeners: ...").
# systemd's lines start in upper case or with the unit name, and dockerd's
# log lines carry logrus fields (time="..." level=... msg="...").
_FAILURE_LINES = (
    re.compile(r"^(failed|unable|error|can't|cannot|invalid)\b"),
    re.compile(r"level=fatal"),
    re.compile(r"level=error|address already in use|directives", re.IGNORECASE),
    re.compile(r"\b(failed|error|unable|cannot|invalid|denied|not found)\b", re.IGNORECASE),
)
_LOGRUS_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def daemon_error_line(journal: str, daemon_log: str = "") -> str:
    """Return the line that explains a failed start, cut to its message.

    ``daemon_log`` contains dockerd's own journal lines, and ``journal``
    every line of docker.service, systemd's among them. For each kind of
    failure line in turn, dockerd's lines are searched before the unit's,
    and the last match wins. Without any match, the journal's last line is
    returned.
    """
    daemon_lines = _journal_lines(daemon_log)
    unit_lines = _journal_lines(journal)
    for pattern in _FAILURE_LINES:
        for lines in (daemon_lines, unit_lines):
            matches = [line for line in lines if pattern.search(line)]
            if matches:
                return _message(matches[-1])
    fallback = unit_lines or daemon_lines
    return _message(fallback[-1]) if fallback else ""


def _journal_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _message(line: str) -> str:
    """Return the ``msg`` field of a logrus line, or the line itself."""
    match = _LOGRUS_MESSAGE.search(line)
    if match:
        return match.group(1).replace('\\"', '"')
    return line


def rollback_error_line(emitted: dict[str, str]) -> str:
    """Return the daemon's error from a restore script's output."""
    return daemon_error_line(
        emitted.get("rollback_journal", ""), emitted.get("rollback_daemon_log", "")
    )


def changed_keys(previous_json: str, new_json: str) -> list[str]:
    """Return the daemon.json keys whose values differ between two files."""
    try:
        previous = parse_daemon_json(previous_json)
    except ValueError:
        previous = {}
    new = parse_daemon_json(new_json)
    keys = set(previous) | set(new)
    return sorted(key for key in keys if previous.get(key) != new.get(key))


def suspected_keys(message: str, new_json: str, changed: list[str]) -> list[str]:
    """Return the changed daemon.json keys that ``message`` points at.

    A key counts when the message names it, quotes its new value, or contains a
    word that dockerd uses for that option. With no match, every changed key
    is a suspect.
    """
    lowered = message.lower()
    new = parse_daemon_json(new_json)
    suspects = set()
    for key in changed:
        value = new.get(key)
        texts = [value] if isinstance(value, str) else []
        if isinstance(value, list):
            texts = [item for item in value if isinstance(item, str)]
        if key in lowered or any(text and text.lower() in lowered for text in texts):
            suspects.add(key)
    for word, key in _MESSAGE_HINTS:
        if word in lowered and key in changed:
            suspects.add(key)
    return sorted(suspects) or list(changed)


def explain(
    machine_name: str,
    docker_host: str,
    emitted: dict[str, str],
    new_json: str,
    engine: dict | None,
) -> EngineStartError:
    """Build the error for a restart that failed, from what the script printed."""
    message = daemon_error_line(emitted.get("journal", ""), emitted.get("daemon_log", ""))
    changed = changed_keys(emitted.get("previous_daemon_json", ""), new_json)
    keys = suspected_keys(message, new_json, changed)
    options = [engine_options.option_name(key, engine) for key in keys]
    named = ", ".join(_describe_option(key, new_json, engine) for key in keys)
    subject = named or "the new configuration (only certificates or engine env changed)"
    quoted = json.dumps(message or "no message in the journal")
    restored = emitted.get("rollback") == "restored"
    text = (
        f"{machine_name}: Docker did not start with {subject}. "
        f"The daemon reported: {quoted}. "
    )
    if restored:
        text += (
            f"The previous daemon configuration and certificates are back in "
            f"place and Docker runs with them, so {docker_host} still answers "
            f"with the old settings. Fix or remove the option and run `pulumi up` again."
        )
    else:
        text += (
            "Restoring the previous configuration failed as well: "
            f"{json.dumps(rollback_error_line(emitted))}. "
            "Log in to the host and read `journalctl -u docker.service`."
        )
    return EngineStartError(text, options, message, restored)


def _describe_option(key: str, new_json: str, engine: dict | None) -> str:
    value = parse_daemon_json(new_json).get(key)
    return f"{engine_options.option_name(key, engine)} ({key}: {json.dumps(value)})"
