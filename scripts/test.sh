#!/usr/bin/env bash
# Run the whole test suite: install what it needs (scripts/setup.sh), build or
# reuse the test VM image, then pytest. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not vm"      skip the tests that boot a VM
#   scripts/test.sh tests/test_pki.py
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$project_dir/scripts/setup.sh")"
cd "$project_dir"

# Built before pytest starts, so no test's time limit includes the image build
# (about a minute with a warm apt cache, reused afterwards). The second image
# lacks Docker, for the tests that install it.
python -m provider.vmimage >/dev/null
python -m provider.vmimage --no-docker >/dev/null

exec python -m pytest "$@"
