#!/usr/bin/env bash
# Time fleets of light hosts against the engine floor, a minimal script and
# Ansible, and print a table (see scripts/benchmark.py). Needs root; runs in a
# few minutes.
#
#   scripts/benchmark.sh [--skip-ansible]
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$project_dir/scripts/setup.sh")"
cd "$project_dir"
python -m provider.vmimage >/dev/null
exec python scripts/benchmark.py "$@"
