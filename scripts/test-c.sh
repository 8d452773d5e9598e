#!/usr/bin/env bash
# Builds the library, the C examples and the C tests, and runs them against
# a development relay imitating each release (0.3.14, 0.6.14, 0.7.13; or
# only MSB_DEVRELAY_PROFILE), three ways each:
#   1. plain build: every test, then every example;
#   2. tests rebuilt with AddressSanitizer + UBSan (LeakSanitizer included:
#      the Rust library allocates through malloc, so an msb_* object a test
#      forgets to free shows up as a leak);
#   3. the plain test binary once under valgrind (definite leaks and memory
#      errors fail the run).
# Exits non-zero if anything fails. Installs nothing; needs cc and valgrind.
#
#   scripts/test-c.sh
set -euo pipefail
# The releases the relay imitates: every one (0.3.14, 0.6.14, 0.7.13), or
# only MSB_DEVRELAY_PROFILE when it is set.
if [[ -n "${MSB_DEVRELAY_PROFILE:-}" ]]; then
  profiles=("$MSB_DEVRELAY_PROFILE")
else
  profiles=(0.3.14 0.6.14 0.7.13)
fi
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

CC="${CC:-cc}"
out="$top/target/c-tests"
warn=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
link=(-L"$top/target/release" -lmicrosandbox_agent -lpthread)
failures=0

command -v valgrind >/dev/null || { echo "error: valgrind is not installed; this script needs it" >&2; exit 1; }
command -v "$CC" >/dev/null || { echo "error: C compiler '$CC' not found" >&2; exit 1; }

echo "== building the library and msb-devrelay"
cargo build --release --workspace

mkdir -p "$out"
source "$top/scripts/built-env.sh"

echo "== checking that the tests call every function the header declares"
missing=0
for fn in $(grep -vE '^\s*(\*|/\*)' include/microsandbox_agent.h | grep -oE '\bmsb_[a-z_0-9]+\(' | tr -d '(' | sort -u); do
  if ! grep -qw "$fn" tests/c/*.c; then
    echo "not covered by tests/c: $fn"
    missing=$((missing + 1))
  fi
done
[[ $missing -eq 0 ]] || { echo "error: $missing header functions have no C test" >&2; exit 1; }

echo "== checking that the NULL-accessor test covers every accessor"
# An accessor: returns a value (not a status, not void) read from the object
# its first parameter points at.
for fn in $(grep -vE '^\s*(\*|/\*)' include/microsandbox_agent.h | tr '\n' ' ' |
            grep -oE '[a-z_0-9]+ \*?msb_[a-z_0-9]+\(const struct' | grep -vE '^(msb_status|void) ' |
            grep -oE 'msb_[a-z_0-9]+\(' | tr -d '('); do
  if ! grep -q "NULL_CASE($fn)" tests/c/test_basics.c; then
    echo "accessor missing from test_every_accessor_on_null: $fn"
    missing=$((missing + 1))
  fi
done
[[ $missing -eq 0 ]] || { echo "error: $missing accessors are not checked with NULL" >&2; exit 1; }

echo "== checking that the compiler rejects freeing a borrowed fs entry"
# The positive control compiles the same call shapes with the right types,
# so the negative one fails for the type alone.
cat >"$out/entry_owned.c" <<'C'
#include "microsandbox_agent.h"
uint64_t size_of(const msb_fs_entries *l, msb_fs_entry *owned) {
    uint64_t n = msb_fs_entry_size(msb_fs_entries_get(l, 0)) + msb_fs_entry_size(msb_fs_entry_as_view(owned));
    msb_fs_entry_free(owned);
    return n;
}
C
cat >"$out/entry_borrowed.c" <<'C'
#include "microsandbox_agent.h"
void free_borrowed(const msb_fs_entries *l) { msb_fs_entry_free(msb_fs_entries_get(l, 0)); }
C
"$CC" "${warn[@]}" -Iinclude -c "$out/entry_owned.c" -o /dev/null
if "$CC" "${warn[@]}" -Iinclude -c "$out/entry_borrowed.c" -o /dev/null 2>/dev/null; then
  echo "error: msb_fs_entry_free accepted a view from msb_fs_entries_get" >&2; exit 1
fi
if command -v c++ >/dev/null; then
  # C++ rejects it without any warning flag.
  c++ -x c++ -Iinclude -c "$out/entry_owned.c" -o /dev/null
  if c++ -x c++ -Iinclude -c "$out/entry_borrowed.c" -o /dev/null 2>/dev/null; then
    echo "error: C++ accepted freeing a view from msb_fs_entries_get" >&2; exit 1
  fi
fi

echo "== compiling examples and tests"
# The examples this script runs (other programs in examples/c, such as the
# benchmark, have their own build).
for example in quickstart interactive bigfile poll_loop tcp_forward; do
  "$CC" "${warn[@]}" -Iinclude "examples/c/$example.c" "${link[@]}" -o "$out/$example"
done
"$CC" "${warn[@]}" -g -Iinclude tests/c/*.c "${link[@]}" -o "$out/c-tests"
"$CC" "${warn[@]}" -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
  -Iinclude tests/c/*.c "${link[@]}" -o "$out/c-tests-asan"

# Runs a test binary beside a fresh relay; the binary prints its own
# "N passed, M failed" line.
run_tests() {
  local label="$1"; shift
  echo "== $label"
  if ! scripts/with-devrelay.sh -- "$@"; then
    echo "FAILED: $label"
    failures=$((failures + 1))
  fi
}

echo "== examples"
# Each example with its own success criteria, all against one relay.
run_examples() {
  local sock="$MSB_SOCKET" passed=0 failed=0 log
  log="$(mktemp)"
  check() {
    local name="$1"; shift
    if "$@" >"$log" 2>&1; then
      passed=$((passed + 1)); echo "ok - example $name"
    else
      failed=$((failed + 1)); echo "not ok - example $name"; sed 's/^/#   /' "$log"
    fi
  }
  interactive_cat() {
    printf 'alpha\nbeta\n' | "$out/interactive" "$sock" | tee /dev/fd/2 >"$log.out"
    [[ "$(cat "$log.out")" == $'alpha\nbeta\nexit code: 0' ]]
  }
  interactive_sh() {
    printf 'echo from-sh\necho to-stderr >&2\nexit 3\n' | "$out/interactive" "$sock" sh >"$log.out"
    [[ "$(cat "$log.out")" == $'from-sh\nexit code: 3' ]]
  }
  fails_without_relay() {
    local rc=0
    "$out/poll_loop" /nonexistent/agent.sock || rc=$?
    [[ $rc -eq 1 ]]
  }
  check quickstart "$out/quickstart" "$sock"
  check "interactive (cat echoes stdin, exit 0)" interactive_cat
  check "interactive (sh, stderr, exit 3)" interactive_sh
  check "bigfile (20 MiB round trip)" "$out/bigfile" "$sock"
  check poll_loop "$out/poll_loop" "$sock"
  check "exit 1 and a message when there is no relay" fails_without_relay
  rm -f "$log" "$log.out"
  echo "examples: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
}
export -f run_examples
export out

for profile in "${profiles[@]}"; do
  export MSB_DEVRELAY_PROFILE=$profile
  run_tests "tests (relay $profile)" "$out/c-tests"
  echo "== examples (relay $profile)"
  if ! scripts/with-devrelay.sh -- bash -c run_examples; then
    echo "FAILED: examples on $profile"
    failures=$((failures + 1))
  fi
  # LeakSanitizer reports what a test forgot to free; UBSan aborts on the
  # first undefined behaviour. Timing checks stay meaningful: ASan costs ~2x.
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    run_tests "tests under AddressSanitizer + UBSan (relay $profile)" "$out/c-tests-asan"
  # valgrind runs ~20x slower: give each test more time before the harness
  # declares it hung.
  MSB_TEST_TIMEOUT_S=300 run_tests "tests under valgrind (relay $profile)" \
    valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1 \
    --suppressions=tests/c/valgrind.supp "$out/c-tests"
done
unset MSB_DEVRELAY_PROFILE

# tcp_forward needs TCP (generation 4): it forwards several concurrent
# connections to a local echo server on the profiles that have it, and
# refuses with exit status 1 on the legacy one.
for profile in 0.6.14 0.7.13; do
  echo "== example tcp_forward (profile $profile)"
  if ! MSB_DEVRELAY_PROFILE=$profile scripts/with-devrelay.sh -- \
      bash -c 'python3 tests/examples/tcp_forward_check.py "$0" "$MSB_SOCKET" 8' "$out/tcp_forward"; then
    echo "FAILED: tcp_forward on $profile"
    failures=$((failures + 1))
  fi
done
echo "== example tcp_forward (profile 0.3.14: refused)"
if ! MSB_DEVRELAY_PROFILE=0.3.14 scripts/with-devrelay.sh -- \
    bash -c 'rc=0; "$0" "$MSB_SOCKET" 0 127.0.0.1 9 1 2>/dev/null || rc=$?; [[ $rc -eq 1 ]]' "$out/tcp_forward"; then
  echo "FAILED: tcp_forward on 0.3.14 did not refuse"
  failures=$((failures + 1))
fi


if [[ $failures -ne 0 ]]; then
  echo "test-c.sh: $failures run(s) failed"
  exit 1
fi
echo "test-c.sh: all runs passed"
