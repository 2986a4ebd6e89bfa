#!/usr/bin/env bash
# Build the pinned Pulumi engine (CLI, Python language host and the two Python
# shims beside them) from the Go module proxy into a cache directory outside
# the clone, keyed by version. A second run finds the cache and returns at once.
#
# Prints the directory that contains the binaries on its last line of stdout.
#
# Environment:
#   PDM_CACHE_DIR  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/pulumi-docker-machine)
set -euo pipefail

PULUMI_VERSION=v3.276.0
# The last sdk/v3 release that still ships the Python language host inside
# it; later hosts live in a module the Go proxy does not serve.
LANGUAGE_HOST_SDK_VERSION=v3.79.0

cache_root=${PDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pulumi-docker-machine}
engine_dir=$cache_root/engine/pulumi-$PULUMI_VERSION-python-host-$LANGUAGE_HOST_SDK_VERSION
bin_dir=$engine_dir/bin

log() { echo "install-engine: $*" >&2; }

engine_ready() {
    [[ -x $bin_dir/pulumi && -x $bin_dir/pulumi-language-python \
       && -x $bin_dir/pulumi-resource-pulumi-python \
       && -x $bin_dir/pulumi-language-python-exec ]]
}

if engine_ready; then
    log "reusing the engine in $bin_dir"
    echo "$bin_dir"
    exit 0
fi

# Two clones set up at once on one machine share this cache: the second
# waits for the first build instead of writing into the same directory.
mkdir -p "$engine_dir"
exec 9>"$engine_dir.lock"
if ! flock --nonblock 9; then
    log "waiting for another build of the engine in $engine_dir (lock $engine_dir.lock)"
    flock 9
fi
if engine_ready; then
    log "reusing the engine another process built in $bin_dir"
    echo "$bin_dir"
    exit 0
fi

command -v go >/dev/null || { log "go not found on PATH: install Go 1.26 or later"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$bin_dir.partial"
mkdir -p "$bin_dir.partial"

module_dir() {
    # Print the directory of a downloaded module (go mod download -json reports it).
    go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

module_gomod() {
    go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

log "building the Pulumi CLI $PULUMI_VERSION (about 5 minutes and 1.5 GB of module cache on first run)"
cd "$work"
# pkg/v3 carries replace directives, which `go install pkg@version` rejects,
# so a throwaway module requires it and repeats the replaces that point at
# other modules. The clipboard fork's pseudo-version is read from pkg/v3's
# own go.mod so it always matches the pinned release.
pkg_gomod=$(module_gomod "github.com/pulumi/pulumi/pkg/v3@$PULUMI_VERSION")
clipboard_replace=$(grep -E '^replace github.com/atotto/clipboard =>' "$pkg_gomod" | sed 's/^replace //')
mkdir cli && cd cli
cat > go.mod <<GOMOD
module pulumi-docker-machine/engine-build/cli

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 $PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION
)

replace $clipboard_replace

replace golang.org/x/text => golang.org/x/text v0.41.0
GOMOD
go get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@$PULUMI_VERSION" >&2
go build -trimpath -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
    -o "$bin_dir.partial/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi

log "building the Python language host from sdk/v3 $LANGUAGE_HOST_SDK_VERSION"
cd "$work"
mkdir host && cd host
cat > go.mod <<GOMOD
module pulumi-docker-machine/engine-build/host

go 1.26

require github.com/pulumi/pulumi/sdk/v3 $LANGUAGE_HOST_SDK_VERSION

replace golang.org/x/text => golang.org/x/text v0.3.6
GOMOD
go get "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python@$LANGUAGE_HOST_SDK_VERSION" >&2
go build -trimpath -ldflags "-s -w" -o "$bin_dir.partial/pulumi-language-python" \
    github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python

log "copying the Python shims from sdk/v3 $PULUMI_VERSION"
sdk_dir=$(module_dir "github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION")
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$bin_dir.partial/"
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$bin_dir.partial/"

rm -rf "$bin_dir"
mv "$bin_dir.partial" "$bin_dir"
log "engine ready in $bin_dir ($(du -sh "$bin_dir" | cut -f1))"
echo "$bin_dir"
