#!/usr/bin/env bash
# The demo: `pulumi up` on the demo stack (Pulumi.demo.yaml). Its one machine
# is a Debian VM on this workstation, made by the qemu driver. Pulumi boots
# it and makes its Docker daemon listen on tcp 2376 with mutual TLS. The
# script then prints the line that points a shell's docker client at it.
#
#   scripts/demo.sh           set up, pulumi up, print the eval line
#   scripts/demo.sh env       print the DOCKER_* exports of the demo machine
#                             (extra flags go to `pulumi-docker-machine env`)
#   scripts/demo.sh destroy   pulumi destroy: removes the VM, its disk and address
#
# State lives in a local file backend under ~/.cache/pulumi-docker-machine/demo.
# The stack's secrets (the VM's SSH key) are encrypted with the passphrase
# "pulumi-docker-machine demo", from which the encryptionsalt committed in
# Pulumi.demo.yaml was made. Pulumi rejects any other passphrase for this
# stack, so the script sets this one even if you exported your own.
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_root=${PDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pulumi-docker-machine}
demo_dir=$cache_root/demo
stack=demo

eval "$("$project_dir/scripts/setup.sh")"
mkdir -p "$demo_dir/backend"
export PULUMI_BACKEND_URL="file://$demo_dir/backend"
export PULUMI_CONFIG_PASSPHRASE="pulumi-docker-machine demo"
unset PULUMI_CONFIG_PASSPHRASE_FILE
cd "$project_dir"

print_env() {
    pulumi-docker-machine env --stack "$stack" "$@" demo
}

case "${1:-up}" in
up)
    pulumi stack select --create "$stack" --non-interactive >/dev/null
    pulumi up --yes --non-interactive --stack "$stack"
    echo
    echo "The demo machine is ready. Point your shell's docker client at it with:"
    echo
    echo "    eval \"\$(scripts/demo.sh env)\""
    echo "    docker info"
    echo
    echo "Tear it down with: scripts/demo.sh destroy"
    ;;
env)
    shift
    print_env "$@"
    ;;
destroy)
    if pulumi stack select "$stack" --non-interactive 2>/dev/null; then
        pulumi destroy --yes --non-interactive --stack "$stack"
    fi
    ;;
*)
    echo "usage: scripts/demo.sh [up|env|destroy]" >&2
    exit 2
    ;;
esac
