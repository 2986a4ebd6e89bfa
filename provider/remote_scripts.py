"""Shell scripts run on the host, and the parser for what they print.

Each script is POSIX sh, travels on stdin (never on the command line), and
prints ``key=base64(value)`` lines so file contents survive intact. The apply
script carries the files it places, the server key among them, as base64 text
in shell variables: it exists only in the SSH channel and the shell's memory.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from provider.daemon_config import (
    CA_CERT_PATH,
    DAEMON_JSON_PATH,
    DROPIN_DIR,
    DROPIN_PATH,
    SERVER_CERT_PATH,
    SERVER_KEY_PATH,
)

STATE_DIR = "/var/lib/pulumi-docker-machine"
ORIGINAL_DAEMON_JSON = f"{STATE_DIR}/daemon.json.orig"
NO_ORIGINAL_MARKER = f"{STATE_DIR}/daemon.json.absent"

# Files placed on the host: name, destination, mode. Owner is root.
PLACED_FILES = (
    ("ca.pem", CA_CERT_PATH, "0444"),
    ("server.pem", SERVER_CERT_PATH, "0444"),
    ("server-key.pem", SERVER_KEY_PATH, "0400"),
    ("daemon.json", DAEMON_JSON_PATH, "0644"),
    ("dropin.conf", DROPIN_PATH, "0644"),
)

_EMIT_FUNCTIONS = """\
emit() { printf '%s=%s\\n' "$1" "$(printf '%s' "$2" | base64 | tr -d '\\n')"; }
emit_file() {
    if [ -f "$2" ]; then
        printf '%s=%s\\n' "$1" "$(base64 < "$2" | tr -d '\\n')"
    fi
}
"""

# Prints what the configure step needs to know about the host. Runs as the
# login user, alone after an install and otherwise as part of the preflight
# script, which also waits for cloud-init and the package locks.
FACTS_BODY = f"""\
# A non-root login's PATH often lacks the sbin directories where dockerd is.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
emit uid "$(id -u)"
if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then emit sudo yes; else emit sudo no; fi
if [ -d /run/systemd/system ]; then emit systemd yes; else emit systemd no; fi
emit dockerd "$(command -v dockerd || true)"
fragment=$(systemctl show -p FragmentPath --value docker.service 2>/dev/null || true)
emit unit_path "$fragment"
if [ -n "$fragment" ]; then emit_file unit "$fragment"; fi
emit_file os_release /etc/os-release
if [ -f {ORIGINAL_DAEMON_JSON} ]; then
    emit_file base_daemon_json {ORIGINAL_DAEMON_JSON}
elif [ -f {NO_ORIGINAL_MARKER} ]; then
    emit base_daemon_json ""
else
    emit_file base_daemon_json {DAEMON_JSON_PATH}
fi
"""
FACTS_SCRIPT = "set -eu\n" + _EMIT_FUNCTIONS + FACTS_BODY

# Prints the configuration as the host has it now; appended to the apply
# script and run alone by refresh. Expects $engine_port to be set.
OBSERVE_SCRIPT = _EMIT_FUNCTIONS + f"""\
describe() {{
    if [ -e "$1" ]; then
        printf '%s %s' "$(sha256sum < "$1" | cut -d' ' -f1)" \\
            "$(stat -c '%a %U:%G' "$1")"
    else
        printf 'missing'
    fi
}}
emit_file daemon_json {DAEMON_JSON_PATH}
emit_file dropin {DROPIN_PATH}
emit file:{CA_CERT_PATH} "$(describe {CA_CERT_PATH})"
emit file:{SERVER_CERT_PATH} "$(describe {SERVER_CERT_PATH})"
emit file:{SERVER_KEY_PATH} "$(describe {SERVER_KEY_PATH})"
emit docker_active "$(systemctl is-active docker.service 2>/dev/null || true)"
if ss -Hltn "sport = :$engine_port" 2>/dev/null | grep -q .; then
    emit listener yes
else
    emit listener no
fi
"""


# Prints the journal of docker.service since the Unix time in $3: every line
# of the unit under $1, and only dockerd's own lines under $2. dockerd's
# error is its last line, and systemd logs the exit status and, with
# Restart=on-failure, the next "Starting docker.service" after it.
_JOURNAL_FUNCTION = """\
emit_journal() {
    journalctl --sync 2>/dev/null || true
    emit "$1" "$(journalctl -u docker.service --since "@$3" \\
        --no-pager -o cat 2>/dev/null | tail -n 40)"
    emit "$2" "$(journalctl _SYSTEMD_UNIT=docker.service SYSLOG_IDENTIFIER=dockerd \\
        --since "@$3" --no-pager -o cat 2>/dev/null | tail -n 40)"
}
"""


# Writes a file from the base64 text in $1 to $2 with mode $3, owned by
# root: first under a temporary name with no access for others, then renamed
# over the old file. printf is a shell builtin, so the content (a private key
# among them) never appears in a process's command line.
_PUT_FUNCTION = """\
put() {
    (umask 077 && printf '%s' "$1" | base64 -d > "$2.pdm-new")
    chown root:root "$2.pdm-new"
    chmod "$3" "$2.pdm-new"
    mv -f "$2.pdm-new" "$2"
}
"""


def _place_lines() -> str:
    return "".join(
        f'put "$content_{_variable(name)}" "{destination}" {mode}\n'
        for name, destination, mode in PLACED_FILES
    )


def _variable(name: str) -> str:
    """Return the shell variable suffix of a placed file's name."""
    return name.replace(".", "_").replace("-", "_")


def _content_lines(files: Mapping[str, bytes]) -> str:
    """Assign each file's base64 content to its shell variable."""
    missing = sorted({name for name, _, _ in PLACED_FILES} - set(files))
    if missing:
        raise ValueError(f"files missing from the apply script: {', '.join(missing)}")
    return "".join(
        f"content_{_variable(name)}='{base64.b64encode(files[name]).decode()}'\n"
        for name, _, _ in PLACED_FILES
    )


def _backup_lines() -> str:
    """Copy each file about to be replaced into $backup, keeping mode and owner."""
    return "".join(
        f'if [ -e "{destination}" ]; then cp -p "{destination}" "$backup/{name}"; fi\n'
        for name, destination, _mode in PLACED_FILES
    )


def _restore_lines() -> str:
    """Put every file back as $backup has it; remove those it lacks."""
    lines = []
    for name, destination, _mode in PLACED_FILES:
        lines.append(
            f'if [ -e "$backup/{name}" ]; then\n'
            f'    cp -p "$backup/{name}" "{destination}.pdm-old"\n'
            f'    mv -f "{destination}.pdm-old" "{destination}"\n'
            f"else\n"
            f'    rm -f "{destination}"\n'
            f"fi\n"
        )
    return "".join(lines)


# The maximum wait for one `systemctl restart docker`. Debian's docker.io
# 20.10 unit has no start timeout of its own (TimeoutStartSec=0), so a daemon
# that hangs at start would otherwise hold the script forever. Under QEMU
# software emulation on a loaded machine, one start of dockerd 20.10 took
# about 7 minutes (mostly iptables set-up), so the limit is generous.
RESTART_TIMEOUT_SECONDS = 600
# The SSH command timeout of the apply script, which may restart Docker twice
# (the new configuration, then the previous one).
APPLY_TIMEOUT_SECONDS = 2 * RESTART_TIMEOUT_SECONDS + 300

# The files as they were before the last apply, kept until the new
# configuration has passed the mutual-TLS check.
BACKUP_DIR = f"{STATE_DIR}/previous"

# Restores the files kept in BACKUP_DIR and restarts Docker with them.
# systemd counts the failed starts against the unit's start limit, so the
# failed state is reset first. The copies go once Docker runs again, and stay
# for a manual repair when it does not; then the journal lines are printed.
_RESTORE_BODY = (
    f'backup="{BACKUP_DIR}"\n'
    + _restore_lines()
    + """\
systemctl daemon-reload
systemctl reset-failed docker.service docker.socket 2>/dev/null || true
restored=$(date +%s)
if timeout {RESTART_TIMEOUT_SECONDS} systemctl restart docker.service \\
        && systemctl is-active --quiet docker.service; then
    emit rollback restored
    rm -rf "$backup"
else
    emit rollback failed
    emit_journal rollback_journal rollback_daemon_log "$restored"
fi
""".replace("{RESTART_TIMEOUT_SECONDS}", str(RESTART_TIMEOUT_SECONDS))
)

# Writes the files into place (temporary name, then rename), keeps the
# host's original daemon.json once and the replaced files in BACKUP_DIR,
# and restarts Docker. When Docker does not come back, the script prints the
# daemon's journal, restores the previous files and restarts Docker with
# them. Otherwise it prints the observed configuration.
# Argument: the engine port. Runs as root, after the content assignments
# that apply_script puts in front.
_APPLY_BODY = (
    'engine_port="$1"\n'
    + _EMIT_FUNCTIONS
    + _JOURNAL_FUNCTION
    + _PUT_FUNCTION
    + f"""\
install -d -m 0755 -o root -g root /etc/docker {DROPIN_PATH.rsplit("/", 1)[0]}
install -d -m 0700 -o root -g root {STATE_DIR}
if [ ! -e {ORIGINAL_DAEMON_JSON} ] && [ ! -e {NO_ORIGINAL_MARKER} ]; then
    if [ -e {DAEMON_JSON_PATH} ]; then
        cp -p {DAEMON_JSON_PATH} {ORIGINAL_DAEMON_JSON}
    else
        : > {NO_ORIGINAL_MARKER}
    fi
fi
backup="{BACKUP_DIR}"
rm -rf "$backup"
install -d -m 0700 -o root -g root "$backup"
"""
    + _backup_lines()
    + _place_lines()
    + """\
systemctl daemon-reload
started=$(date +%s)
# restart, not start: start leaves a running dockerd on its old flags.
if ! { timeout {RESTART_TIMEOUT_SECONDS} systemctl restart docker.service \\
        && systemctl is-active --quiet docker.service; }; then
    emit restart_failed yes
    emit_journal journal daemon_log "$started"
    emit_file previous_daemon_json "$backup/daemon.json"
""".replace("{RESTART_TIMEOUT_SECONDS}", str(RESTART_TIMEOUT_SECONDS))
    + "".join("    " + line + "\n" for line in _RESTORE_BODY.splitlines())
    + """\
    exit 0
fi
"""
    + OBSERVE_SCRIPT
)


def apply_script(files: Mapping[str, bytes]) -> str:
    """Return the apply script with ``files`` (name in PLACED_FILES to content)."""
    return "set -eu\n" + _content_lines(files) + _APPLY_BODY


# Puts back the configuration kept by the last apply, after the new one
# failed the mutual-TLS check. Argument: none. Runs as root.
RESTORE_SCRIPT = "set -eu\n" + _EMIT_FUNCTIONS + _JOURNAL_FUNCTION + _RESTORE_BODY

# Drops the copies kept by the last apply once its configuration is verified.
FORGET_BACKUP_SCRIPT = f'rm -rf "{BACKUP_DIR}"\n'

# Removes the TLS listener: restores the original daemon.json, removes the
# drop-in and the certificates, and restarts Docker on its Unix socket.
REMOVE_SCRIPT = f"""\
set -eu
rm -f {DROPIN_PATH} {CA_CERT_PATH} {SERVER_CERT_PATH} {SERVER_KEY_PATH}
rmdir {DROPIN_DIR} 2>/dev/null || true
if [ -f {ORIGINAL_DAEMON_JSON} ]; then
    mv -f {ORIGINAL_DAEMON_JSON} {DAEMON_JSON_PATH}
else
    rm -f {DAEMON_JSON_PATH}
fi
rm -rf {STATE_DIR}
systemctl daemon-reload
systemctl stop docker.service
# Packaged units take the Unix socket from docker.socket (-H fd://). While the
# TLS settings were in force dockerd bound that path itself, so docker.socket
# still listens on a socket file that no longer exists: restart it first.
if systemctl cat docker.socket >/dev/null 2>&1; then
    systemctl restart docker.socket
fi
if ! systemctl start docker.service; then
    echo "docker.service failed to start after removing the TLS settings:" >&2
    journalctl -u docker.service -n 20 --no-pager -o cat >&2 || true
    exit 1
fi
systemctl is-active docker.service
"""

# Argument: the engine port.
OBSERVE_ONLY_SCRIPT = "set -eu\n" + 'engine_port="$1"\n' + OBSERVE_SCRIPT


def parse_emitted(stdout: str) -> dict[str, str]:
    """Decode the ``key=base64`` lines a script printed; skip other lines."""
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, separator, encoded = line.partition("=")
        if not separator or not key or " " in key:
            continue
        try:
            values[key] = base64.b64decode(encoded, validate=True).decode()
        except ValueError:
            continue
    return values


def describe_drift(applied: dict, observed: dict) -> list[str]:
    """List, in words, how the host differs from what was applied."""
    drift = []
    for key, path in (("daemon_json", DAEMON_JSON_PATH), ("dropin", DROPIN_PATH)):
        if observed.get(key) is None:
            drift.append(f"{path} is missing")
        elif observed.get(key) != applied.get(key):
            drift.append(f"{path} was changed on the host")
    observed_files = observed.get("files") or {}
    for path, expected in sorted((applied.get("files") or {}).items()):
        seen = observed_files.get(path, "missing")
        if seen == "missing":
            drift.append(f"{path} is missing")
        elif seen.split()[0] != expected.split()[0]:
            drift.append(f"{path} was replaced")
        elif seen != expected:
            drift.append(f"{path} has mode and owner {' '.join(seen.split()[1:])}")
    if observed.get("docker_active") != applied.get("docker_active"):
        drift.append(f"docker.service is {observed.get('docker_active') or 'unknown'}")
    # States recorded before the listener was observed have no "listener".
    if "listener" in applied and observed.get("listener") != applied["listener"]:
        drift.append("nothing listens on the engine port (the TLS listener is gone)")
    return drift


def observed_state(values: dict[str, str]) -> dict[str, object]:
    """Build the ``observed`` output from what the observe script printed."""
    files = {
        key.removeprefix("file:"): value
        for key, value in sorted(values.items())
        if key.startswith("file:")
    }
    return {
        "daemon_json": values.get("daemon_json"),
        "dropin": values.get("dropin"),
        "files": files,
        "docker_active": values.get("docker_active", ""),
        "listener": values.get("listener", ""),
    }
