#!/usr/bin/env bash
# Builds the library and runs the Zig binding's tests (unit tests plus
# integration tests against a development relay), once per relay release the
# development relay imitates.
#
#   scripts/test-zig.sh [zig build flags...]     e.g. scripts/test-zig.sh -Doptimize=ReleaseSafe
#   MSB_DEVRELAY_PROFILE=0.6.14 scripts/test-zig.sh   (one release only)
#
# Zig 0.17.x comes from the `ziglang` Python package and runs as
# `python3 -m ziglang` (set ZIG to use another zig executable). Without
# MSB_DEVRELAY_PROFILE the tests run against each of 0.3.14, 0.6.14 and
# 0.7.13 (scripts/with-devrelay.sh hands the variable to the relay, and the
# tests read it to know what to expect). The last line printed is
# "N passed, M failed", summed over the releases; the exit status is non-zero
# on any failure.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"

if [[ -n "${ZIG:-}" ]]; then
  zig=("$ZIG")
else
  zig=(python3 -m ziglang)
fi
if ! zig_version="$("${zig[@]}" version 2>/dev/null)"; then
  echo "error: Zig not found (tried: ${zig[*]}). The Zig binding needs Zig 0.17.x: pip install ziglang==0.17.1, or set ZIG=/path/to/zig" >&2
  exit 1
fi
case "$zig_version" in
  0.17.*) ;;
  *) echo "error: Zig $zig_version found; the Zig binding targets Zig 0.17.x (pip install ziglang==0.17.1)" >&2; exit 1 ;;
esac

(cd "$top" && cargo build --release --workspace)

# The global cache holds Zig's own compiled helpers (translate-c takes about a
# minute to build the first time); keep it across runs, under /tmp.
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-/tmp/msb-zig-global-cache}"
export ZIG_LOCAL_CACHE_DIR="${ZIG_LOCAL_CACHE_DIR:-$top/bindings/zig/.zig-cache}"
source "$top/scripts/built-env.sh"

log="$(mktemp /tmp/msb-zig-test.XXXXXX)"
trap 'rm -f "$log"' EXIT
if [[ -n "${MSB_DEVRELAY_PROFILE:-}" ]]; then
  profiles=("$MSB_DEVRELAY_PROFILE")
else
  profiles=(0.3.14 0.6.14 0.7.13)
fi

total_passed=0
total_failed=0
any_status=0
for profile in "${profiles[@]}"; do
  echo "=== Zig binding against a relay imitating $profile"
  set +e
  (cd "$top/bindings/zig" && MSB_DEVRELAY_PROFILE="$profile" "$top/scripts/with-devrelay.sh" -- "${zig[@]}" build test --summary all "$@") 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e

  # The build runner's summary reads "Build Summary: ...; P/T tests passed"
  # with "(F failed)" / "S skipped" after it when some did not pass. Tests
  # must not skip, so everything short of a pass counts as a failure here.
  summary="$(grep -o '[0-9]*/[0-9]* tests passed' "$log" | tail -n 1 || true)"
  if [[ -z "$summary" ]]; then
    echo "$profile: no test summary: the build failed before any test ran"
    passed=0
    failed=1
  else
    passed="${summary%%/*}"
    total="${summary#*/}"; total="${total%% *}"
    failed=$((total - passed))
    if [[ $status -ne 0 && $failed -eq 0 ]]; then
      # E.g. one test binary failed to compile: its tests never ran or counted.
      echo "$profile: zig build failed outside the counted tests (see above)"
      failed=1
    fi
  fi
  [[ $status -eq 0 ]] || any_status=$status
  echo "$profile: $passed passed, $failed failed"
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
done

echo "$total_passed passed, $total_failed failed"
if [[ $any_status -ne 0 || $total_failed -ne 0 ]]; then
  exit 1
fi
