"""Shell scripts that wait for the host and install Docker on it.

Like the configure scripts, each one is POSIX sh sent on stdin and prints
``key=base64(value)`` lines (see :mod:`provider.remote_scripts`). Every
argument is a checked input, never a secret. apt runs with ``LC_ALL=C`` so
that its messages, which decide whether a failure is retried, are English
whatever the host's locale.
"""

from __future__ import annotations

from provider.remote_scripts import _EMIT_FUNCTIONS, FACTS_BODY

# Exit statuses the install scripts use to tell the provider what to do.
EXIT_TRANSIENT = 75  # a download failed in a way worth retrying (EX_TEMPFAIL)
EXIT_BAD_VERSION = 65  # the requested version or package does not exist
EXIT_CHECKSUM = 66  # the downloaded script has another SHA-256 than pinned

# Lock files of dpkg and apt, in the order apt takes them.
PACKAGE_LOCKS = (
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
)

DOCKER_SOCKET = "/var/run/docker.sock"
SOURCE_LIST = "/etc/apt/sources.list.d/pulumi-docker-machine.list"
SOURCE_PREFERENCES = "/etc/apt/preferences.d/pulumi-docker-machine"

# Prints the cloud-init status and, with "$1" = yes, the processes holding
# a dpkg or apt lock, then the host facts the configure step needs. The lock
# test reads /proc/locks, which lists every fcntl and flock lock by device
# and inode, so it needs neither root, nor fuser, nor apt's localized "Could
# not get lock" message. One script for both, so a host that is ready costs
# one SSH session before the apply script.
# Argument: yes to look at the locks. Runs as the login user.
PREFLIGHT_SCRIPT = (
    "set -eu\n"
    + _EMIT_FUNCTIONS
    + f"""\
if command -v cloud-init >/dev/null 2>&1; then
    emit cloud_init "$(cloud-init status 2>/dev/null | sed -n 's/^status: *//p' | head -n 1)"
fi
for lock in {" ".join(PACKAGE_LOCKS)}; do
    [ "$1" = yes ] && [ -e "$lock" ] || continue
    # stat's %D is the kernel's encoded device number; /proc/locks prints
    # major:minor in hex, then the inode.
    dev=$((0x$(stat -c %D "$lock")))
    major=$(( (dev & 0xfff00) >> 8 ))
    minor=$(( (dev & 0xff) | ((dev >> 12) & 0xfff00) ))
    id=$(printf '%02x:%02x:%s' "$major" "$minor" "$(stat -c %i "$lock")")
    # Fields: number, class, mode, access, pid, device:inode, start, end.
    # A waiting request has "->" as its second field: skip it.
    holders=$(awk -v id="$id" '$2 != "->" && $6 == id {{ print $5 }}' /proc/locks |
        sort -u | while read -r pid; do
            printf '%s(%s) ' "$pid" "$(cat /proc/"$pid"/comm 2>/dev/null || echo '?')"
        done)
    if [ -n "$holders" ]; then emit "lock:$lock" "$holders"; fi
done
"""
    + FACTS_BODY
)

# Prints what is installed: dockerd's path and version, the docker.io
# package version, and the version of the daemon running now. The docker
# client reads that version. On a host without the client, curl sends
# GET /version to the Unix socket and the script prints the body as
# version_json. Debian 13's docker.io 26.1.5 contains no client, because the
# client moved to docker-cli, which docker.io only recommends. So an upgrade
# from Debian 12's docker.io without recommends removes /usr/bin/docker.
ENGINE_PROBE_SCRIPT = (
    "set -u\n"
    + _EMIT_FUNCTIONS
    + f"""\
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
emit dockerd "$(command -v dockerd || true)"
if command -v dockerd >/dev/null 2>&1; then
    emit dockerd_version "$(dockerd --version 2>/dev/null || true)"
fi
emit package_version "$(dpkg-query -W -f '${{Version}}' docker.io 2>/dev/null || true)"
if command -v docker >/dev/null 2>&1; then
    emit client docker
    emit server_version "$(timeout 60 docker version --format '{{{{.Server.Version}}}}' 2>/dev/null || true)"
elif command -v curl >/dev/null 2>&1; then
    emit client curl
    emit version_json "$(curl -sS --max-time 60 --unix-socket {DOCKER_SOCKET} \\
        http://docker/version 2>/dev/null || true)"
else
    emit client none
fi
"""
)

# Adds the extra package source with priority 100, so apt takes a package
# from it only when asked for that version. An empty "$1" removes it.
# Arguments: the sources.list line, its suite. Runs as root.
PACKAGE_SOURCE_SCRIPT = f"""\
set -eu
if [ -z "$1" ]; then
    rm -f {SOURCE_LIST} {SOURCE_PREFERENCES}
    exit 0
fi
printf '%s\\n' "$1" > {SOURCE_LIST}.new
mv -f {SOURCE_LIST}.new {SOURCE_LIST}
cat > {SOURCE_PREFERENCES}.new <<EOF
# Written by pulumi-docker-machine: packages come from this source only on request.
Package: *
Pin: release n=$2
Pin-Priority: 100

Package: *
Pin: release a=$2
Pin-Priority: 100
EOF
mv -f {SOURCE_PREFERENCES}.new {SOURCE_PREFERENCES}
"""

_APT_FUNCTIONS = f"""\
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
apt_run() {{
    log=$(mktemp)
    if apt-get -q -o DPkg::Lock::Timeout=120 -o Acquire::Retries=3 "$@" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    tail -n 20 "$log" >&2
    if grep -q -E "Unable to locate package|was not found|has no installation candidate" "$log"; then
        rm -f "$log"
        exit {EXIT_BAD_VERSION}
    fi
    if grep -q -E "Failed to fetch|Temporary failure|Could not connect|Connection failed|timed out" "$log"; then
        rm -f "$log"
        exit {EXIT_TRANSIENT}
    fi
    rm -f "$log"
    exit 1
}}
"""

# Installs Debian's docker.io, at the version "$1" when it is not empty.
# In Debian 13 the docker client is the package docker-cli, built from the
# same source at the same version, and docker.io only recommends it. So the
# script installs docker-cli too when apt has it at docker.io's version.
# Runs as root.
PACKAGE_INSTALL_SCRIPT = (
    "set -eu\n"
    + _APT_FUNCTIONS
    + """\
apt_run update
version="$1"
if [ -z "$version" ]; then
    version=$(apt-cache policy docker.io | sed -n 's/^ *Candidate: *//p')
fi
packages="docker.io${1:+=$1}"
if [ -n "$version" ] && apt-cache show "docker-cli=$version" >/dev/null 2>&1; then
    packages="$packages docker-cli=$version"
fi
# $packages is split into its words on purpose.
apt_run install -y --no-install-recommends --allow-downgrades \\
    -o Dpkg::Options::=--force-confold $packages
"""
)

# Downloads the install script "$1", checks its SHA-256 against "$2" when
# that is not empty, and runs it with VERSION="$3" when that is not empty
# (the variable Docker's convenience script reads). Runs as root.
SCRIPT_INSTALL_SCRIPT = f"""\
set -u
url="$1"
expected="$2"
version="$3"
if ! command -v curl >/dev/null 2>&1; then
    echo "curl is not installed on the host; install it, or use install method package" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
code=$(curl -sS -L --proto '=https,http' --connect-timeout 20 --max-time 300 \\
    -o "$dir/install.sh" -w '%{{http_code}}' "$url")
status=$?
case "$status" in
0) ;;
6|7|28|35|52|55|56)
    echo "downloading $url failed (curl exit status $status)" >&2
    exit {EXIT_TRANSIENT} ;;
*)
    echo "downloading $url failed (curl exit status $status)" >&2
    exit 1 ;;
esac
case "$code" in
200) ;;
408|429|5??)
    echo "downloading $url failed: HTTP status $code" >&2
    exit {EXIT_TRANSIENT} ;;
*)
    echo "downloading $url failed: HTTP status $code" >&2
    exit 1 ;;
esac
actual=$(sha256sum "$dir/install.sh" | cut -d' ' -f1)
if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
    echo "the script at $url has SHA-256 $actual, not the pinned $expected" >&2
    exit {EXIT_CHECKSUM}
fi
echo "running the install script from $url (SHA-256 $actual)"
export DEBIAN_FRONTEND=noninteractive
if [ -n "$version" ]; then export VERSION="$version"; fi
sh "$dir/install.sh"
"""

RESTART_SCRIPT = """\
set -eu
systemctl daemon-reload
systemctl restart docker.service
"""
