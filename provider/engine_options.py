"""Engine options of ``DockerDaemonConfig``: checking and rendering (no I/O).

A machine's ``engine`` mapping names dockerd settings in the stack's own
words (``storageDriver``, ``registryMirrors``, ``hardened``, ...). Every one
of them ends up in ``daemon.json``, except ``env``, which goes into the
systemd drop-in as ``Environment=`` lines because dockerd reads its
environment from the process, not from a file.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any

from provider.errors import InvalidInputError

# The daemon.json keys that make up the TLS listener. They come from the
# resource's own inputs, so ``daemonJson`` may not set them.
LISTENER_KEYS = ("hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey")

# Stack setting name -> the daemon.json key it sets.
NAMED_OPTIONS = {
    "labels": "labels",
    "storageDriver": "storage-driver",
    "insecureRegistries": "insecure-registries",
    "registryMirrors": "registry-mirrors",
    "logDriver": "log-driver",
    "logOpts": "log-opts",
}
ENGINE_KEYS = (*NAMED_OPTIONS, "env", "daemonJson", "hardened")
HARDENED_KEYS = ("logDriver", "logOpts", "authorizationPlugin")

# What ``hardened`` sets besides the log target, after the
# daemon-configuration section of the CIS Docker Benchmark. It turns off
# traffic between containers on the default bridge and turns on user
# namespace remapping. It blocks privilege gain through setuid binaries,
# keeps containers running while dockerd restarts, and turns off the
# userland proxy for published ports.
HARDENED_SETTINGS: dict[str, object] = {
    "icc": False,
    "userns-remap": "default",
    "no-new-privileges": True,
    "live-restore": True,
    "userland-proxy": False,
}
# With ``hardened: true`` the daemon logs to the host's journal, from where
# the host's own log shipping can forward it.
HARDENED_DEFAULT_LOG_DRIVER = "journald"

# The storage and logging drivers built into dockerd 20.10 to 26.
STORAGE_DRIVERS = (
    "overlay2",
    "fuse-overlayfs",
    "btrfs",
    "zfs",
    "vfs",
    "devicemapper",
    "aufs",
    "overlay",
)
LOG_DRIVERS = (
    "json-file",
    "local",
    "journald",
    "syslog",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "gcplogs",
    "logentries",
    "etwlogs",
    "none",
)
# A logging or authorization plugin is referenced by its image name, which
# has a slash or a tag (``grafana/loki-docker-driver:2.9.1``).
_PLUGIN_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_OPTION_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PROVIDER_LABEL = "provider"


def check_engine(value: Any, field: str = "engine") -> dict[str, Any]:
    """Validate an ``engine`` mapping and return it normalised.

    Strings stand for every scalar the daemon reads as a string, so a label
    value or log option given as a YAML number becomes its text. ``hardened``
    becomes a mapping, or is dropped when false.
    """
    engine = _require_mapping(value, field)
    unknown = sorted(set(engine) - set(ENGINE_KEYS))
    if unknown:
        raise InvalidInputError(
            f"{field}.{unknown[0]}",
            engine[unknown[0]],
            f"unknown engine option; the engine options are {', '.join(ENGINE_KEYS)}",
        )
    checkers = {
        "labels": _check_labels,
        "storageDriver": _check_storage_driver,
        "insecureRegistries": _check_insecure_registries,
        "registryMirrors": _check_registry_mirrors,
        "logDriver": _check_log_driver,
        "logOpts": _check_string_map,
        "env": _check_env,
        "daemonJson": _check_daemon_json,
        "hardened": _check_hardened,
    }
    result: dict[str, Any] = {}
    for key in ENGINE_KEYS:
        if engine.get(key) is None:
            continue
        checked = checkers[key](engine[key], f"{field}.{key}")
        if checked is not None:
            result[key] = checked
    _check_conflicts(result, field)
    return result


def render_settings(engine: dict[str, Any] | None, driver: str) -> dict[str, object]:
    """Return the daemon.json keys that ``engine`` sets on a host of ``driver``."""
    engine = engine or {}
    labels = {**(engine.get("labels") or {}), PROVIDER_LABEL: driver}
    settings: dict[str, object] = {
        "labels": [f"{key}={labels[key]}" for key in sorted(labels)]
    }
    for name in ("storageDriver", "insecureRegistries", "registryMirrors"):
        if name in engine:
            settings[NAMED_OPTIONS[name]] = engine[name]
    log_driver, log_opts = _log_target(engine)
    if log_driver:
        settings["log-driver"] = log_driver
    if log_opts:
        settings["log-opts"] = log_opts
    hardened = engine.get("hardened")
    if hardened is not None:
        settings.update(HARDENED_SETTINGS)
        if hardened.get("authorizationPlugin"):
            settings["authorization-plugins"] = [hardened["authorizationPlugin"]]
    # Numbers cross the Pulumi engine as doubles even after ``check``, so
    # whole numbers are turned back into ints here, where the file is written.
    settings.update(_whole_numbers_as_int(engine.get("daemonJson") or {}))
    return settings


def render_environment(engine: dict[str, Any] | None) -> list[str]:
    """Return the drop-in's ``Environment=`` lines for the engine's ``env``."""
    env = (engine or {}).get("env") or {}
    return [f'Environment="{_systemd_quote(f"{name}={env[name]}")}"' for name in sorted(env)]


def option_name(daemon_key: str, engine: dict[str, Any] | None) -> str:
    """Return the stack setting that put ``daemon_key`` into daemon.json."""
    engine = engine or {}
    if daemon_key in (engine.get("daemonJson") or {}):
        return f"engine.daemonJson.{daemon_key}"
    for name, key in NAMED_OPTIONS.items():
        if key == daemon_key and name in engine:
            return f"engine.{name}"
    hardened = engine.get("hardened")
    if hardened is not None:
        if daemon_key == "authorization-plugins":
            return "engine.hardened.authorizationPlugin"
        if daemon_key in HARDENED_SETTINGS or daemon_key.startswith("log-"):
            return "engine.hardened"
    return daemon_key


def _log_target(engine: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    hardened = engine.get("hardened")
    if hardened is None:
        return engine.get("logDriver"), engine.get("logOpts") or {}
    driver = hardened.get("logDriver") or engine.get("logDriver")
    options = hardened.get("logOpts") or engine.get("logOpts") or {}
    return driver or HARDENED_DEFAULT_LOG_DRIVER, options


def _check_conflicts(engine: dict[str, Any], field: str) -> None:
    extra = engine.get("daemonJson") or {}
    for key in sorted(extra):
        if key in LISTENER_KEYS:
            raise InvalidInputError(
                f"{field}.daemonJson.{key}",
                extra[key],
                "is part of the TLS listener this resource manages; set the port "
                "with enginePort and more certificate names with extraSans",
            )
        named = [name for name, daemon_key in NAMED_OPTIONS.items() if daemon_key == key]
        if named:
            raise InvalidInputError(
                f"{field}.daemonJson.{key}",
                extra[key],
                f"clashes with the engine option {named[0]}; set it there only",
            )
        if "hardened" in engine and (key in HARDENED_SETTINGS or key == "authorization-plugins"):
            raise InvalidInputError(
                f"{field}.daemonJson.{key}",
                extra[key],
                "is set by the hardened preset; remove it from daemonJson, or "
                "switch hardened off to set it yourself",
            )
    hardened = engine.get("hardened") or {}
    for name in ("logDriver", "logOpts"):
        if name in hardened and name in engine:
            raise InvalidInputError(
                f"{field}.hardened.{name}",
                hardened[name],
                f"clashes with {field}.{name}; give the log target in one place",
            )


def _require_mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(field, value, "must be a mapping of names to values")
    for key in value:
        if not isinstance(key, str) or not key:
            raise InvalidInputError(field, key, "every key must be a non-empty string")
    return value


def _require_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(field, value, "must be a list")
    return list(value)


def _scalar_text(value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInputError(field, value, "must be a string (quote it in YAML)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidInputError(field, value, "must not contain control characters such as newlines")
    return text


def _check_string_map(value: Any, field: str) -> dict[str, str]:
    mapping = _require_mapping(value, field)
    for key in mapping:
        if _OPTION_KEY.fullmatch(key) is None:
            raise InvalidInputError(
                f"{field}.{key}", mapping[key], "has an invalid name; use letters, digits, '.', '_' or '-'"
            )
    return {key: _scalar_text(mapping[key], f"{field}.{key}") for key in sorted(mapping)}


def _check_labels(value: Any, field: str) -> dict[str, str]:
    labels = _require_mapping(value, field)
    for key in labels:
        if key == PROVIDER_LABEL:
            raise InvalidInputError(
                f"{field}.{key}",
                labels[key],
                "is set by this provider to the machine's driver; use another label name",
            )
        if _LABEL_KEY.fullmatch(key) is None:
            raise InvalidInputError(
                f"{field}.{key}",
                labels[key],
                "invalid label name; use letters, digits, '.', '_' and '-', "
                "for example com.example.team",
            )
    return {key: _scalar_text(labels[key], f"{field}.{key}") for key in sorted(labels)}


def _check_storage_driver(value: Any, field: str) -> str:
    if value not in STORAGE_DRIVERS:
        raise InvalidInputError(
            field, value, f"unknown storage driver; use one of {', '.join(STORAGE_DRIVERS)}"
        )
    return value


def _check_log_driver(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, value, "must be the name of a logging driver")
    if value in LOG_DRIVERS:
        return value
    if ("/" in value or ":" in value) and _PLUGIN_REFERENCE.fullmatch(value):
        return value
    raise InvalidInputError(
        field,
        value,
        f"unknown logging driver; use one of {', '.join(LOG_DRIVERS)}, or a "
        f"logging plugin as NAME:TAG",
    )


def _check_insecure_registries(value: Any, field: str) -> list[str]:
    registries = _require_list(value, field)
    for index, registry in enumerate(registries):
        where = f"{field}[{index}]"
        if not isinstance(registry, str) or not registry or "://" in registry:
            raise InvalidInputError(
                where, registry, "give a registry as HOST[:PORT] or a CIDR, without a scheme"
            )
        if "/" in registry:
            try:
                ipaddress.ip_network(registry, strict=False)
            except ValueError:
                raise InvalidInputError(
                    where, registry, "is neither HOST[:PORT] nor a CIDR such as 10.0.0.0/8"
                ) from None
        elif any(char.isspace() for char in registry):
            raise InvalidInputError(where, registry, "must not contain white space")
    return registries


def _check_registry_mirrors(value: Any, field: str) -> list[str]:
    mirrors = _require_list(value, field)
    for index, mirror in enumerate(mirrors):
        parsed = urllib.parse.urlsplit(mirror) if isinstance(mirror, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInputError(
                f"{field}[{index}]",
                mirror,
                "give the mirror as an http:// or https:// URL, e.g. https://mirror.example.com",
            )
    return mirrors


def _check_env(value: Any, field: str) -> dict[str, str]:
    env = _require_mapping(value, field)
    for name in env:
        if _ENV_NAME.fullmatch(name) is None:
            raise InvalidInputError(
                f"{field}.{name}",
                env[name],
                "invalid variable name; use letters, digits and '_', not starting with a digit",
            )
    return {name: _scalar_text(env[name], f"{field}.{name}") for name in sorted(env)}


def _check_daemon_json(value: Any, field: str) -> dict[str, Any]:
    extra = _require_mapping(value, field)
    for key in extra:
        if _OPTION_KEY.fullmatch(key) is None:
            raise InvalidInputError(
                f"{field}.{key}", extra[key], "is not a daemon.json option name"
            )
    return {key: _whole_numbers_as_int(extra[key]) for key in sorted(extra)}


def _whole_numbers_as_int(value: Any) -> Any:
    """Turn whole floats back into ints, at any depth.

    Numbers cross the Pulumi engine as doubles, and dockerd 20.10 refuses
    ``5.0`` for an integer option such as ``max-concurrent-downloads``.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(item) for item in value]
    return value


def _check_hardened(value: Any, field: str) -> dict[str, Any] | None:
    if value is True:
        return {}
    if value is False:
        return None
    settings = _require_mapping(value, field)
    unknown = sorted(set(settings) - set(HARDENED_KEYS))
    if unknown:
        raise InvalidInputError(
            f"{field}.{unknown[0]}",
            settings[unknown[0]],
            f"unknown setting of the hardened preset; use true, or a mapping "
            f"with {', '.join(HARDENED_KEYS)}",
        )
    result: dict[str, Any] = {}
    if settings.get("logDriver") is not None:
        result["logDriver"] = _check_log_driver(settings["logDriver"], f"{field}.logDriver")
    if settings.get("logOpts") is not None:
        result["logOpts"] = _check_string_map(settings["logOpts"], f"{field}.logOpts")
    plugin = settings.get("authorizationPlugin")
    if plugin is not None:
        if not isinstance(plugin, str) or _PLUGIN_NAME.fullmatch(plugin) is None:
            raise InvalidInputError(
                f"{field}.authorizationPlugin",
                plugin,
                "give the name of an authorization plugin installed on the host",
            )
        result["authorizationPlugin"] = plugin
    return result


def _systemd_quote(text: str) -> str:
    """Escape ``text`` for a double-quoted systemd value.

    systemd expands ``%`` specifiers and C-style backslash escapes inside
    quotes, so both are doubled to reach dockerd unchanged.
    """
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
