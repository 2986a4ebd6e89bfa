"""Rendering of the Docker daemon configuration (pure functions, no I/O).

The daemon reads its listeners and TLS settings from ``daemon.json`` alone.
Packaged units start dockerd with ``-H fd://``, and dockerd refuses to start
when a flag and ``daemon.json`` both set ``hosts``, so a systemd drop-in
clears the packaged ``ExecStart`` and repeats it without any ``-H`` flag.
"""

from __future__ import annotations

import json

ETC_DOCKER = "/etc/docker"
CA_CERT_PATH = f"{ETC_DOCKER}/ca.pem"
SERVER_CERT_PATH = f"{ETC_DOCKER}/server.pem"
SERVER_KEY_PATH = f"{ETC_DOCKER}/server-key.pem"
DAEMON_JSON_PATH = f"{ETC_DOCKER}/daemon.json"
DROPIN_DIR = "/etc/systemd/system/docker.service.d"
DROPIN_PATH = f"{DROPIN_DIR}/10-pulumi-docker-machine.conf"
UNIX_SOCKET = "unix:///var/run/docker.sock"

# daemon.json keys this project sets; a pre-existing value for any of them is
# replaced, every other key of a pre-existing daemon.json is kept.
OWNED_KEYS = ("hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey")

_HOST_FLAGS = ("-H", "--host")


def tls_settings(engine_port: int) -> dict[str, object]:
    """Return the daemon.json keys that enable the mutual-TLS listener."""
    return {
        "hosts": [UNIX_SOCKET, f"tcp://0.0.0.0:{engine_port}"],
        "tls": True,
        "tlsverify": True,
        "tlscacert": CA_CERT_PATH,
        "tlscert": SERVER_CERT_PATH,
        "tlskey": SERVER_KEY_PATH,
    }


def replaced_keys(
    base: dict[str, object],
    engine_port: int,
    engine: dict[str, object] | None = None,
) -> list[str]:
    """Return the keys of ``base`` whose values the TLS or engine settings replace."""
    ours = {**(engine or {}), **tls_settings(engine_port)}
    return sorted(key for key in ours if key in base and base[key] != ours[key])


def render_daemon_json(
    base: dict[str, object],
    engine_port: int,
    engine: dict[str, object] | None = None,
) -> str:
    """Merge the engine and TLS settings over ``base`` (a pre-existing daemon.json)."""
    merged = dict(base)
    engine = dict(engine or {})
    labels = engine.pop("labels", None)
    merged.update(engine)
    if labels is not None:
        merged["labels"] = merge_labels(base.get("labels"), labels)
    merged.update(tls_settings(engine_port))
    return json.dumps(merged, indent=2, sort_keys=True) + "\n"


def merge_labels(existing: object, labels: list[str]) -> list[str]:
    """Add ``labels`` (``key=value``) to the host's own, replacing those of the same key."""
    keys = {label.split("=", 1)[0] for label in labels}
    kept = [
        label
        for label in (existing if isinstance(existing, list) else [])
        if str(label).split("=", 1)[0] not in keys
    ]
    return kept + list(labels)


def flag_conflicts(unit_text: str, keys: list[str]) -> list[str]:
    """Return the daemon.json ``keys`` that the packaged ExecStart also sets as flags.

    dockerd refuses to start when a flag and daemon.json set the same option.
    """
    words = strip_host_flags(packaged_exec_start(unit_text)).split()
    flags = {word.split("=", 1)[0].removeprefix("--") for word in words if word.startswith("--")}
    return sorted(key for key in keys if key in flags)


def parse_daemon_json(text: str) -> dict[str, object]:
    """Parse an existing daemon.json; an empty file counts as ``{}``.

    Raises ``ValueError`` when the file is not a JSON object, since merging
    into it could lose the owner's settings.
    """
    if not text.strip():
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("daemon.json does not contain a JSON object")
    return value


def join_continuation_lines(unit_text: str) -> list[str]:
    """Return the logical lines of a systemd unit file."""
    lines: list[str] = []
    pending = ""
    for raw in unit_text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def packaged_exec_start(unit_text: str) -> str:
    """Return the last non-empty ``ExecStart=`` command of a unit file."""
    command = ""
    for line in join_continuation_lines(unit_text):
        stripped = line.strip()
        if stripped.startswith("ExecStart="):
            value = stripped[len("ExecStart=") :].strip()
            command = value or command
    if not command:
        raise ValueError("the docker.service unit has no ExecStart= line")
    return command


def strip_host_flags(command: str) -> str:
    """Remove every ``-H``/``--host`` flag and its value from a dockerd command.

    Words are split on white space and joined back unchanged, so systemd's
    own syntax (``$DOCKER_OPTS``, executable prefixes) passes through.
    """
    words = command.split()
    kept: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word in _HOST_FLAGS:
            skip_next = True
            continue
        if word.startswith(("--host=", "-H=")) or (
            word.startswith("-H") and not word.startswith("--")
        ):
            continue
        kept.append(word)
    return " ".join(kept)


def render_dropin(unit_text: str, environment: list[str] | None = None) -> str:
    """Render the drop-in that restarts dockerd without ``-H`` flags.

    ``environment`` contains complete ``Environment=`` lines for dockerd's process.
    """
    command = strip_host_flags(packaged_exec_start(unit_text))
    return (
        "# Written by pulumi-docker-machine: the listeners are set in\n"
        f"# {DAEMON_JSON_PATH}, so dockerd must start without -H flags.\n"
        "[Service]\n"
        + "".join(f"{line}\n" for line in environment or [])
        + "ExecStart=\n"
        f"ExecStart={command}\n"
    )
