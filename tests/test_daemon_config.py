"""Rendering of daemon.json and the systemd drop-in, and the remote scripts."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from provider import daemon_config, remote_scripts
from provider.configure import applied_state

DEBIAN_UNIT = """\
[Unit]
Description=Docker Application Container Engine
After=network-online.target docker.socket containerd.service

[Service]
Type=notify
EnvironmentFile=-/etc/default/docker
ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS
ExecReload=/bin/kill -s HUP $MAINPID
"""

DOCKER_CE_UNIT = """\
[Service]
ExecStart=/usr/bin/dockerd -H fd:// \\
    --containerd=/run/containerd/containerd.sock
"""


def test_daemon_json_sets_tls_listener():
    settings = json.loads(daemon_config.render_daemon_json({}, 2376))
    assert settings == {
        "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"],
        "tls": True,
        "tlsverify": True,
        "tlscacert": "/etc/docker/ca.pem",
        "tlscert": "/etc/docker/server.pem",
        "tlskey": "/etc/docker/server-key.pem",
    }


def test_daemon_json_keeps_other_settings():
    base = {"storage-driver": "overlay2", "log-driver": "journald"}
    settings = json.loads(daemon_config.render_daemon_json(base, 2376))
    assert settings["storage-driver"] == "overlay2"
    assert settings["log-driver"] == "journald"


def test_daemon_json_replaces_owned_settings():
    base = {"hosts": ["tcp://0.0.0.0:2375"], "tlsverify": False}
    settings = json.loads(daemon_config.render_daemon_json(base, 2376))
    assert settings["hosts"] == ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]
    assert settings["tlsverify"] is True
    assert daemon_config.replaced_keys(base, 2376) == ["hosts", "tlsverify"]


def test_daemon_json_is_stable_text():
    first = daemon_config.render_daemon_json({"b": 1, "a": 2}, 2376)
    second = daemon_config.render_daemon_json({"a": 2, "b": 1}, 2376)
    assert first == second
    assert first.endswith("}\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty-file"),
        pytest.param("  \n", {}, id="blank-file"),
        pytest.param('{"debug": true}', {"debug": True}, id="object"),
    ],
)
def test_parse_daemon_json(text, expected):
    assert daemon_config.parse_daemon_json(text) == expected


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"], ids=["list", "broken"])
def test_parse_daemon_json_rejects(text):
    with pytest.raises(ValueError):
        daemon_config.parse_daemon_json(text)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param("/usr/sbin/dockerd -H fd://", "/usr/sbin/dockerd", id="separate"),
        pytest.param("/usr/sbin/dockerd -H=fd://", "/usr/sbin/dockerd", id="equals"),
        pytest.param("/usr/sbin/dockerd -Hfd://", "/usr/sbin/dockerd", id="joined"),
        pytest.param(
            "/usr/bin/dockerd --host fd:// --host=tcp://0.0.0.0:2375 --debug",
            "/usr/bin/dockerd --debug",
            id="long-forms",
        ),
        pytest.param(
            "/usr/sbin/dockerd -H fd:// $DOCKER_OPTS",
            "/usr/sbin/dockerd $DOCKER_OPTS",
            id="environment-variable-kept",
        ),
        pytest.param(
            "/usr/bin/dockerd --containerd=/run/containerd/containerd.sock",
            "/usr/bin/dockerd --containerd=/run/containerd/containerd.sock",
            id="nothing-to-remove",
        ),
    ],
)
def test_strip_host_flags(command, expected):
    assert daemon_config.strip_host_flags(command) == expected


def test_dropin_clears_packaged_exec_start():
    dropin = daemon_config.render_dropin(DEBIAN_UNIT)
    exec_lines = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == ["ExecStart=", "ExecStart=/usr/sbin/dockerd $DOCKER_OPTS"]
    assert "[Service]" in dropin


def test_dropin_joins_continuation_lines():
    dropin = daemon_config.render_dropin(DOCKER_CE_UNIT)
    assert (
        "ExecStart=/usr/bin/dockerd --containerd=/run/containerd/containerd.sock"
        in dropin.splitlines()
    )


def test_dropin_needs_exec_start():
    with pytest.raises(ValueError, match="ExecStart"):
        daemon_config.render_dropin("[Service]\nType=notify\n")


@pytest.mark.parametrize(
    "script",
    [
        remote_scripts.FACTS_SCRIPT,
        remote_scripts.apply_script(
            {name: b"content\n" for name, _, _ in remote_scripts.PLACED_FILES}
        ),
        remote_scripts.REMOVE_SCRIPT,
        remote_scripts.OBSERVE_ONLY_SCRIPT,
    ],
    ids=["facts", "apply", "remove", "observe"],
)
def test_remote_script_syntax(script):
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_parse_emitted_round_trip():
    text = "line one\nquote ' and = sign\n"
    encoded = base64.b64encode(text.encode()).decode()
    stdout = f"noise without separator\ndaemon_json={encoded}\nempty=\n"
    values = remote_scripts.parse_emitted(stdout)
    assert values["daemon_json"] == text
    assert values["empty"] == ""
    assert "noise without separator" not in values


def test_emit_functions_encode_like_parser(tmp_path):
    content = tmp_path / "file"
    content.write_text('{"a": 1}\n')
    script = remote_scripts.OBSERVE_SCRIPT.split("describe()")[0] + (
        f'emit_file json {content}\nemit word "two words"\n'
    )
    result = subprocess.run(["sh"], input=script, text=True, capture_output=True)
    values = remote_scripts.parse_emitted(result.stdout)
    assert values == {"json": '{"a": 1}\n', "word": "two words"}


def sample_files():
    return {
        "ca.pem": b"ca",
        "server.pem": b"cert",
        "server-key.pem": b"key",
        "daemon.json": b"{}\n",
        "dropin.conf": b"[Service]\n",
    }


def test_no_drift_right_after_apply():
    applied = applied_state(sample_files())
    assert remote_scripts.describe_drift(applied, applied) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"daemon_json": "{\"debug\": true}\n"}, "daemon.json was changed", id="daemon-json"
        ),
        pytest.param({"docker_active": "inactive"}, "docker.service is inactive", id="stopped"),
        pytest.param({"dropin": None}, "10-pulumi-docker-machine.conf", id="dropin-gone"),
    ],
)
def test_drift_described(change, message):
    applied = applied_state(sample_files())
    observed = {**applied, **change}
    drift = remote_scripts.describe_drift(applied, observed)
    assert len(drift) == 1
    assert message in drift[0]


def test_drift_in_key_file_mode():
    applied = applied_state(sample_files())
    files = dict(applied["files"])
    digest = files["/etc/docker/server-key.pem"].split()[0]
    files["/etc/docker/server-key.pem"] = f"{digest} 644 root:root"
    drift = remote_scripts.describe_drift(applied, {**applied, "files": files})
    assert drift == ["/etc/docker/server-key.pem has mode and owner 644 root:root"]


def test_drift_in_replaced_certificate():
    applied = applied_state(sample_files())
    files = dict(applied["files"])
    files["/etc/docker/ca.pem"] = "0" * 64 + " 444 root:root"
    drift = remote_scripts.describe_drift(applied, {**applied, "files": files})
    assert drift == ["/etc/docker/ca.pem was replaced"]


def test_engine_labels_added_to_host_labels():
    base = {"labels": ["team=build", "provider=old"], "log-level": "warn"}
    rendered = json.loads(
        daemon_config.render_daemon_json(base, 2376, {"labels": ["provider=generic"]})
    )
    assert rendered["labels"] == ["team=build", "provider=generic"]
    assert rendered["log-level"] == "warn"
