#!/usr/bin/env bash
# Run the whole test suite: install what it needs (scripts/setup.sh), build or
# reuse the test VM image, then pytest. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not vm"      skip the tests that boot a VM
#   scripts/test.sh tests/test_pki.py
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$project_dir/scripts/setup.sh" --without-engine)"
cd "$project_dir"

# The VM images are built before pytest starts, so no test's time limit
# includes an image build (1.5 to 2.5 minutes each on a fresh machine, reused
# afterwards). The second image lacks Docker, for the tests that install it.
# Both build in the background while the engine builds: debootstrap spends
# much of its time on downloads and dpkg, the engine build on the CPU. Each
# line of their progress names its image.
python -m provider.vmimage 2> >(sed -u 's/^/image with Docker: /' >&2) >/dev/null &
with_docker=$!
python -m provider.vmimage --no-docker 2> >(sed -u 's/^/image without Docker: /' >&2) >/dev/null &
without_docker=$!
# If the engine build fails, let the image builds finish and release their locks.
trap 'wait' EXIT

eval "$("$project_dir/scripts/setup.sh")"

status=0
wait "$with_docker" || status=$?
wait "$without_docker" || status=$?
trap - EXIT
if ((status)); then
    echo "test: building a VM image failed (the lines above say why)" >&2
    exit "$status"
fi

exec python -m pytest "$@"
