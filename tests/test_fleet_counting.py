"""The counters behind the fleet tests: sshd log lines and the operation log."""

from __future__ import annotations

import json

import pytest

from provider import operation_log, program
from tests.harness.lighthosts import count_ssh_activity

# sshd (OpenSSH 9.2, LogLevel VERBOSE) lines for a banner probe, then a login
# running one command and one SFTP subsystem, then a second login.
SSHD_LINES = [
    'Connection from 10.1.1.1 port 40000 on 10.1.1.2 port 22 rdomain ""',
    "Connection closed by 10.1.1.1 port 40000",
    'Connection from 10.1.1.1 port 40002 on 10.1.1.2 port 22 rdomain ""',
    "Accepted publickey for root from 10.1.1.1 port 40002 ssh2: ED25519 SHA256:x",
    "Starting session: command for root from 10.1.1.1 port 40002 id 0",
    "Starting session: subsystem 'sftp' for root from 10.1.1.1 port 40002 id 1",
    'Connection from 10.1.1.1 port 40004 on 10.1.1.2 port 22 rdomain ""',
    "Accepted publickey for root from 10.1.1.1 port 40004 ssh2: ED25519 SHA256:x",
    "Starting session: command for root from 10.1.1.1 port 40004 id 0",
]


def test_ssh_counts_connections_logins_sessions():
    counted = count_ssh_activity(SSHD_LINES)

    assert counted.tcp_connections == 3
    assert counted.logins == 2
    assert counted.sessions_per_login == (2, 1)
    assert counted.sessions == 3


def test_ssh_counts_empty_log():
    counted = count_ssh_activity([])

    assert counted.tcp_connections == 0
    assert counted.logins == 0
    assert counted.sessions == 0


def _line(event, machine, time, operation="configure"):
    return json.dumps(
        {"event": event, "machine": machine, "operation": operation, "pid": 1, "time": time}
    )


def test_in_flight_overlapping_spans():
    lines = [
        _line("start", "a", 0.0),
        _line("start", "b", 1.0),
        _line("start", "c", 2.0),
        _line("done", "a", 3.0),
        _line("failed", "b", 4.0),
        _line("done", "c", 5.0),
    ]

    assert operation_log.max_in_flight(lines, "configure") == 3


def test_in_flight_touching_spans_do_not_overlap():
    lines = [
        _line("start", "a", 0.0),
        _line("done", "a", 1.0),
        _line("start", "b", 1.0),
        _line("done", "b", 2.0),
    ]

    assert operation_log.max_in_flight(lines, "configure") == 1


def test_in_flight_ignores_other_operations():
    lines = [
        _line("start", "a", 0.0),
        _line("start", "b", 0.5, operation="read"),
        _line("done", "a", 1.0),
        _line("done", "b", 1.5, operation="read"),
    ]

    assert operation_log.max_in_flight(lines, "configure") == 1


def test_record_appends_start_and_end(tmp_path, monkeypatch):
    path = tmp_path / "operations.jsonl"
    monkeypatch.setenv(operation_log.LOG_ENVIRONMENT_VARIABLE, str(path))

    with operation_log.record("m1", "configure"):
        pass

    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["event"] for entry in entries] == ["start", "done"]
    assert entries[0]["machine"] == "m1"
    assert entries[0]["time"] <= entries[1]["time"]


def test_record_marks_failure(tmp_path, monkeypatch):
    path = tmp_path / "operations.jsonl"
    monkeypatch.setenv(operation_log.LOG_ENVIRONMENT_VARIABLE, str(path))

    with pytest.raises(RuntimeError):
        with operation_log.record("m1", "configure"):
            raise RuntimeError("configure failed")

    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["event"] for entry in entries] == ["start", "failed"]
