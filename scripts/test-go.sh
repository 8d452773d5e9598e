#!/usr/bin/env bash
# Builds the library and runs the Go binding's tests (with the race
# detector) against a development relay, once per relay profile: the
# release it imitates (0.3.14, 0.6.14, 0.7.13) decides the protocol
# generation, and the tests check the calls each generation has and the
# ErrUnsupported of those it lacks.
#
#   scripts/test-go.sh [go test flags...]      e.g. scripts/test-go.sh -run Exec -v
#   MSB_DEVRELAY_PROFILE=0.6.14 scripts/test-go.sh    one profile only
#
# cgo finds the library through `#cgo pkg-config: microsandbox_agent`; this
# script writes a microsandbox_agent.pc that points at the build tree and
# puts it first on PKG_CONFIG_PATH.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"

command -v go >/dev/null || { echo "error: go not found in PATH; the Go binding tests need Go >= 1.19 (and gcc for cgo)" >&2; exit 1; }
command -v pkg-config >/dev/null || { echo "error: pkg-config not found in PATH; cgo needs it to find microsandbox_agent" >&2; exit 1; }

(cd "$top" && cargo build --release --workspace)

pcdir="$(mktemp -d /tmp/msb-go-pc.XXXXXX)"
trap 'rm -rf "$pcdir"' EXIT
version="$(sed -n 's/^#define MSB_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' "$top/include/microsandbox_agent.h" | paste -sd.)"
cat >"$pcdir/microsandbox_agent.pc" <<PC
Name: microsandbox_agent
Description: libmicrosandbox_agent from the build tree at $top
Version: $version
Cflags: -I$top/include
Libs: -L$top/target/release -lmicrosandbox_agent
PC
export PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
source "$top/scripts/built-env.sh"
export CGO_ENABLED=1
# The module has no dependencies: never reach for a module proxy.
export GOPROXY=off GOFLAGS="${GOFLAGS:-}"
# Keep Go's caches usable when HOME is missing or read-only.
if ! go env GOCACHE >/dev/null 2>&1 || [[ ! -w "${HOME:-/nonexistent}" ]]; then
  export GOCACHE="${GOCACHE:-/tmp/msb-go-cache}" GOPATH="${GOPATH:-/tmp/msb-go-path}"
fi

if [[ -n "${MSB_DEVRELAY_PROFILE:-}" ]]; then
  profiles=("$MSB_DEVRELAY_PROFILE")
else
  profiles=(0.3.14 0.6.14 0.7.13)
fi

cd "$top/bindings/go"
go vet ./...
expected='exit 0: hello from the sandbox
SHOUTED THROUGH A PIPE
read back "hi\n"'
for profile in "${profiles[@]}"; do
  export MSB_DEVRELAY_PROFILE="$profile"
  echo "== Go binding against the $profile profile"
  "$top/scripts/with-devrelay.sh" -- go test -race -count=1 "$@" ./...
  # The README's quickstart must keep working as written.
  out="$("$top/scripts/with-devrelay.sh" -- sh -c 'go run ./examples/quickstart "$MSB_SOCKET"')"
  [[ "$out" == "$expected" ]] || { printf 'error: quickstart (%s profile) printed:\n%s\nexpected:\n%s\n' "$profile" "$out" "$expected" >&2; exit 1; }
  echo "quickstart ($profile): ok"
done
