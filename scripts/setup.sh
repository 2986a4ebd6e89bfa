#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh machine, then print the
# environment lines (export NAME=VALUE) that put the pinned engine and the
# project's virtualenv first on PATH. Safe to run again: each step is skipped
# when its result is already there.
#
#   eval "$(scripts/setup.sh)"
#
# With --without-engine it stops before the engine build and puts only the
# virtualenv on PATH.
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "setup: $*" >&2; }

debian_packages=(
    qemu-system-x86 qemu-utils debootstrap openssh-client docker.io
    linux-image-amd64 iproute2 e2fsprogs systemd-container
    zsh fish tcsh    # the tests evaluate `env` output in each shell
)

missing=()
for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    if [[ $(id -u) != 0 ]]; then
        log "not root: run as root, or install these packages first"
        exit 1
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi

venv=$project_dir/.venv
stamp=$venv/.requirements.sha256
wanted=$(sha256sum "$project_dir/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null) != "$wanted" ]]; then
    log "installing Python packages from requirements.txt into .venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$project_dir/requirements.txt" >&2
    echo "$wanted" > "$stamp"
fi

# The project itself, editable, for the pulumi-docker-machine command. Its
# dependencies are the pinned ones installed above; pip fetches setuptools
# for the build.
if [[ ! -x $venv/bin/pulumi-docker-machine ]]; then
    log "installing the pulumi-docker-machine command into .venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
        -e "$project_dir" >&2
fi

if [[ ${1:-} == --without-engine ]]; then
    echo "export PATH=\"$venv/bin:\$PATH\""
    exit 0
fi

engine_bin=$("$project_dir/scripts/install-engine.sh")

cat <<ENV
export PATH="$engine_bin:$venv/bin:\$PATH"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
ENV
