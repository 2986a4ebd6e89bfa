"""Engine options: input checks, rendering, and the explanation of a failed restart."""

from __future__ import annotations

import json
import subprocess

import pytest

from provider import daemon_config, engine_options, remote_scripts, restart_failure
from provider.configure import applied_state
from provider.errors import InvalidInputError

FULL_ENGINE = {
    "labels": {"com.example.team": "build", "tier": 2},
    "storageDriver": "overlay2",
    "insecureRegistries": ["registry.internal:5000", "10.20.0.0/16"],
    "registryMirrors": ["https://mirror.example.com"],
    "env": {"HTTP_PROXY": "http://proxy.example.com:3128", "NO_PROXY": "localhost"},
    "logDriver": "local",
    "logOpts": {"max-size": "10m", "max-file": 3},
    "daemonJson": {"max-concurrent-downloads": 5, "debug": False},
}

DEBIAN_UNIT = """\
[Service]
ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS --containerd=/run/containerd/containerd.sock
"""


def test_full_engine_normalised():
    engine = engine_options.check_engine(FULL_ENGINE)
    assert engine["labels"] == {"com.example.team": "build", "tier": "2"}
    assert engine["logOpts"] == {"max-file": "3", "max-size": "10m"}
    assert engine["daemonJson"] == {"debug": False, "max-concurrent-downloads": 5}


def test_full_engine_rendered():
    engine = engine_options.check_engine(FULL_ENGINE)
    settings = engine_options.render_settings(engine, "amazonec2")
    assert settings == {
        "labels": ["com.example.team=build", "provider=amazonec2", "tier=2"],
        "storage-driver": "overlay2",
        "insecure-registries": ["registry.internal:5000", "10.20.0.0/16"],
        "registry-mirrors": ["https://mirror.example.com"],
        "log-driver": "local",
        "log-opts": {"max-file": "3", "max-size": "10m"},
        "max-concurrent-downloads": 5,
        "debug": False,
    }


def test_empty_engine_sets_provider_label():
    assert engine_options.render_settings({}, "generic") == {"labels": ["provider=generic"]}


def test_engine_in_daemon_json_under_tls_settings():
    settings = engine_options.render_settings(engine_options.check_engine(FULL_ENGINE), "generic")
    rendered = json.loads(daemon_config.render_daemon_json({"debug": True}, 2376, settings))
    assert rendered["debug"] is False, "an engine option replaces the host's own value"
    assert rendered["hosts"][1] == "tcp://0.0.0.0:2376"
    assert rendered["storage-driver"] == "overlay2"


def test_hardened_true_preset():
    engine = engine_options.check_engine({"hardened": True})
    settings = engine_options.render_settings(engine, "generic")
    assert settings["icc"] is False
    assert settings["userns-remap"] == "default"
    assert settings["no-new-privileges"] is True
    assert settings["live-restore"] is True
    assert settings["userland-proxy"] is False
    assert settings["log-driver"] == "journald"
    assert "authorization-plugins" not in settings


def test_hardened_with_log_target_and_plugin():
    engine = engine_options.check_engine(
        {
            "hardened": {
                "logDriver": "syslog",
                "logOpts": {"syslog-address": "udp://logs.example.com:514"},
                "authorizationPlugin": "opa-docker-authz",
            }
        }
    )
    settings = engine_options.render_settings(engine, "generic")
    assert settings["log-driver"] == "syslog"
    assert settings["log-opts"] == {"syslog-address": "udp://logs.example.com:514"}
    assert settings["authorization-plugins"] == ["opa-docker-authz"]


def test_hardened_false_is_dropped():
    assert engine_options.check_engine({"hardened": False}) == {}


def test_hardened_takes_top_level_log_driver():
    engine = engine_options.check_engine({"hardened": True, "logDriver": "syslog"})
    assert engine_options.render_settings(engine, "generic")["log-driver"] == "syslog"


@pytest.mark.parametrize(
    ("engine", "field", "words"),
    [
        pytest.param({"storagedriver": "overlay2"}, "engine.storagedriver", "unknown engine option", id="unknown-key"),
        pytest.param({"storageDriver": "ext4"}, "engine.storageDriver", "overlay2", id="storage-driver"),
        pytest.param({"logDriver": "files"}, "engine.logDriver", "json-file", id="log-driver"),
        pytest.param({"labels": {"provider": "x"}}, "engine.labels.provider", "driver", id="provider-label"),
        pytest.param({"labels": {"a b": "x"}}, "engine.labels.a b", "label name", id="label-name"),
        pytest.param({"labels": ["a=b"]}, "engine.labels", "mapping", id="labels-list"),
        pytest.param({"labels": {"a": "x\ny"}}, "engine.labels.a", "control characters", id="label-newline"),
        pytest.param({"insecureRegistries": ["http://r:5000"]}, "engine.insecureRegistries[0]", "without a scheme", id="registry-scheme"),
        pytest.param({"insecureRegistries": ["10.0.0/99"]}, "engine.insecureRegistries[0]", "CIDR", id="registry-cidr"),
        pytest.param({"insecureRegistries": "r:5000"}, "engine.insecureRegistries", "list", id="registry-not-list"),
        pytest.param({"registryMirrors": ["mirror.example.com"]}, "engine.registryMirrors[0]", "https://", id="mirror-scheme"),
        pytest.param({"env": {"1X": "y"}}, "engine.env.1X", "variable name", id="env-name"),
        pytest.param({"env": {"X": {"a": 1}}}, "engine.env.X", "string", id="env-value"),
        pytest.param({"logOpts": {"max-size": True}}, "engine.logOpts.max-size", "string", id="log-opt-bool"),
        pytest.param({"daemonJson": {"hosts": ["tcp://0.0.0.0:2375"]}}, "engine.daemonJson.hosts", "enginePort", id="owned-hosts"),
        pytest.param({"daemonJson": {"tlsverify": False}}, "engine.daemonJson.tlsverify", "TLS listener", id="owned-tls"),
        pytest.param({"storageDriver": "overlay2", "daemonJson": {"storage-driver": "vfs"}}, "engine.daemonJson.storage-driver", "storageDriver", id="named-clash"),
        pytest.param({"daemonJson": {"labels": ["a=b"]}}, "engine.daemonJson.labels", "labels", id="labels-clash"),
        pytest.param({"hardened": True, "daemonJson": {"icc": True}}, "engine.daemonJson.icc", "hardened", id="hardened-clash"),
        pytest.param({"hardened": {"logDriver": "syslog"}, "logDriver": "local"}, "engine.hardened.logDriver", "one place", id="log-twice"),
        pytest.param({"hardened": {"icc": True}}, "engine.hardened.icc", "authorizationPlugin", id="hardened-unknown"),
        pytest.param({"hardened": "yes"}, "engine.hardened", "mapping", id="hardened-text"),
        pytest.param({"hardened": {"authorizationPlugin": "bad name"}}, "engine.hardened.authorizationPlugin", "plugin", id="plugin-name"),
        pytest.param(["labels"], "engine", "mapping", id="not-mapping"),
    ],
)
def test_bad_engine_rejected(engine, field, words):
    with pytest.raises(InvalidInputError) as caught:
        engine_options.check_engine(engine)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_environment_lines_quoted_for_systemd():
    engine = engine_options.check_engine({"env": {"B": 'say "hi" 100%', "A": "c:\\d"}})
    assert engine_options.render_environment(engine) == [
        'Environment="A=c:\\\\d"',
        'Environment="B=say \\"hi\\" 100%%"',
    ]


def test_dropin_holds_environment():
    dropin = daemon_config.render_dropin(DEBIAN_UNIT, ['Environment="A=b"'])
    assert dropin.index('Environment="A=b"') < dropin.index("ExecStart=\n")


def test_flag_conflicts_with_packaged_unit():
    conflicts = daemon_config.flag_conflicts(DEBIAN_UNIT, ["containerd", "labels", "hosts"])
    assert conflicts == ["containerd"]


@pytest.mark.parametrize(
    ("key", "engine", "expected"),
    [
        ("storage-driver", {"storageDriver": "btrfs"}, "engine.storageDriver"),
        ("debug", {"daemonJson": {"debug": True}}, "engine.daemonJson.debug"),
        ("authorization-plugins", {"hardened": {"authorizationPlugin": "x"}}, "engine.hardened.authorizationPlugin"),
        ("userns-remap", {"hardened": {}}, "engine.hardened"),
        ("log-driver", {"hardened": {}}, "engine.hardened"),
        ("hosts", {}, "hosts"),
    ],
)
def test_option_name(key, engine, expected):
    assert engine_options.option_name(key, engine) == expected


# A journal as docker.io 20.10 on Debian 12 writes it when the storage driver
# does not fit the file system.
GRAPHDRIVER_JOURNAL = """\
time="2026-12-04T20:01:02.000000000Z" level=info msg="Starting up"
time="2026-12-04T20:01:02.100000000Z" level=error msg="[graphdriver] prerequisites for driver not satisfied (wrong filesystem?)" storage-driver=btrfs
failed to start daemon: error initializing graphdriver: prerequisites for driver not satisfied (wrong filesystem?)
docker.service: Main process exited, code=exited, status=1/FAILURE
docker.service: Failed with result 'exit-code'.
"""


def test_daemon_error_line_picks_start_error():
    line = restart_failure.daemon_error_line(GRAPHDRIVER_JOURNAL)
    assert line == (
        "failed to start daemon: error initializing graphdriver: "
        "prerequisites for driver not satisfied (wrong filesystem?)"
    )


def test_daemon_error_line_unwraps_logrus_message():
    journal = 'time="x" level=fatal msg="unable to configure the \\"x\\" daemon"\n'
    assert restart_failure.daemon_error_line(journal) == 'unable to configure the "x" daemon'


# The journal of docker.service as docker.io 20.10 on Debian 12 writes it
# when another process listens on the engine port. After dockerd's error,
# systemd logs the exit and, with Restart=on-failure, the next start.
PORT_TAKEN_DAEMON_LOG = """\
time="2026-12-04T23:16:37.039701410Z" level=info msg="Starting up"
time="2026-12-04T23:16:38.135340210Z" level=warning msg="Support for listening on TCP without authentication or explicit intent to run without authentication will be removed in the next release" host="tcp://0.0.0.0:2399"
failed to load listeners: listen tcp 0.0.0.0:2399: bind: address already in use
"""
PORT_TAKEN_JOURNAL = (
    "Starting docker.service - Docker Application Container Engine...\n"
    + PORT_TAKEN_DAEMON_LOG
    + """\
docker.service: Main process exited, code=exited, status=1/FAILURE
docker.service: Failed with result 'exit-code'.
Failed to start docker.service - Docker Application Container Engine.
docker.service: Scheduled restart job, restart counter is at 1.
Stopped docker.service - Docker Application Container Engine.
Starting docker.service - Docker Application Container Engine...
"""
)
PORT_TAKEN_ERROR = (
    "failed to load listeners: listen tcp 0.0.0.0:2399: bind: address already in use"
)


def test_daemon_error_line_prefers_dockerd_lines():
    line = restart_failure.daemon_error_line(PORT_TAKEN_JOURNAL, PORT_TAKEN_DAEMON_LOG)
    assert line == PORT_TAKEN_ERROR


def test_daemon_error_line_skips_systemd_lines():
    # Without dockerd's own lines, the unit's journal still yields its error.
    assert restart_failure.daemon_error_line(PORT_TAKEN_JOURNAL) == PORT_TAKEN_ERROR


def test_daemon_error_line_falls_back_to_systemd():
    journal = (
        "docker.service: Start request repeated too quickly.\n"
        "docker.service: Failed with result 'start-limit-hit'.\n"
        "Failed to start docker.service - Docker Application Container Engine.\n"
    )
    line = restart_failure.daemon_error_line(journal, "")
    assert line == "Failed to start docker.service - Docker Application Container Engine."


def _daemon_json(engine: dict) -> str:
    settings = engine_options.render_settings(engine, "generic")
    return daemon_config.render_daemon_json({}, 2376, settings)


def test_failed_restart_names_storage_driver():
    old = engine_options.check_engine({"labels": {"a": "1"}})
    new = engine_options.check_engine({"labels": {"a": "2"}, "storageDriver": "btrfs"})
    emitted = {
        "journal": GRAPHDRIVER_JOURNAL,
        "previous_daemon_json": _daemon_json(old),
        "rollback": "restored",
    }
    error = restart_failure.explain("m1", "tcp://h:2376", emitted, _daemon_json(new), new)
    assert error.options == ["engine.storageDriver"]
    assert error.restored
    assert 'engine.storageDriver (storage-driver: "btrfs")' in str(error)
    assert "wrong filesystem?" in str(error)
    assert "tcp://h:2376 still answers" in str(error)


def test_failed_restart_names_unknown_daemon_json_key():
    new = engine_options.check_engine({"daemonJson": {"no-such-option": 1}})
    journal = (
        "unable to configure the Docker daemon with file /etc/docker/daemon.json: "
        "the following directives don't match any configuration option: no-such-option\n"
    )
    emitted = {"journal": journal, "previous_daemon_json": _daemon_json({}), "rollback": "restored"}
    error = restart_failure.explain("m1", "tcp://h:2376", emitted, _daemon_json(new), new)
    assert error.options == ["engine.daemonJson.no-such-option"]


def test_failed_restart_names_taken_port():
    new = engine_options.check_engine({})
    emitted = {
        "journal": PORT_TAKEN_JOURNAL,
        "daemon_log": PORT_TAKEN_DAEMON_LOG,
        "previous_daemon_json": "",
        "rollback": "restored",
    }
    settings = engine_options.render_settings(new, "generic")
    new_json = daemon_config.render_daemon_json({}, 2399, settings)
    error = restart_failure.explain("m1", "tcp://h:2399", emitted, new_json, new)
    assert error.daemon_message == PORT_TAKEN_ERROR
    assert error.options == ["hosts"]
    assert "Starting docker.service" not in str(error)


def test_failed_restart_without_match_names_every_change():
    new = engine_options.check_engine({"daemonJson": {"a-b": 1, "c-d": 2}})
    emitted = {"journal": "something odd\n", "previous_daemon_json": "", "rollback": "restored"}
    error = restart_failure.explain("m1", "tcp://h:2376", emitted, _daemon_json(new), new)
    assert "engine.daemonJson.a-b" in error.options
    assert "engine.daemonJson.c-d" in error.options


def test_failed_rollback_reported():
    new = engine_options.check_engine({"storageDriver": "zfs"})
    emitted = {
        "journal": GRAPHDRIVER_JOURNAL,
        "previous_daemon_json": _daemon_json({}),
        "rollback": "failed",
        "rollback_journal": "failed to start daemon: pid file found\n",
    }
    error = restart_failure.explain("m1", "tcp://h:2376", emitted, _daemon_json(new), new)
    assert not error.restored
    assert "pid file found" in str(error)
    assert "journalctl -u docker.service" in str(error)


def test_listener_drift_described():
    files = {
        "ca.pem": b"ca",
        "server.pem": b"cert",
        "server-key.pem": b"key",
        "daemon.json": b"{}\n",
        "dropin.conf": b"[Service]\n",
    }
    applied = applied_state(files)
    drift = remote_scripts.describe_drift(applied, {**applied, "listener": "no"})
    assert drift == ["nothing listens on the engine port (the TLS listener is gone)"]


def test_listener_not_compared_for_older_state():
    applied = {"daemon_json": "{}", "dropin": "x", "files": {}, "docker_active": "active"}
    observed = {**applied, "listener": "no"}
    assert remote_scripts.describe_drift(applied, observed) == []


@pytest.mark.parametrize(
    "script",
    [remote_scripts.RESTORE_SCRIPT, remote_scripts.FORGET_BACKUP_SCRIPT],
    ids=["restore", "forget-backup"],
)
def test_rollback_script_syntax(script):
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_daemon_json_whole_numbers_become_int():
    # As create receives them: the engine turned every number into a double.
    engine = {"daemonJson": {"max-concurrent-downloads": 5.0, "default-ulimits": {"n": [1.0, 2.5]}}}
    settings = engine_options.render_settings(engine, "generic")
    rendered = daemon_config.render_daemon_json({}, 2376, settings)
    assert '"max-concurrent-downloads": 5,' in rendered
    assert json.loads(rendered)["default-ulimits"] == {"n": [1, 2.5]}
