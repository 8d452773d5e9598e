#!/usr/bin/env bash
# The hostile-guest and careless-caller suite (tests/hostile/): every fault
# mode of msb-devrelay, a scripted peer sending malformed bytes, and caller
# mistakes. Each test program runs once against every relay release the
# devrelay imitates (0.3.14, 0.6.14, 0.7.13: the devrelay behaves as that
# release, the scripted peer speaks its handshake, and the tests expect what
# that release does), each run
#   1. as a plain build, against every release,
#   2. rebuilt with AddressSanitizer + UBSan (LeakSanitizer included: the
#      Rust library allocates through malloc, so leaked msb_* objects and
#      leaks inside the library both show up), against every release,
#   3. the plain build under valgrind (--leak-check=full --error-exitcode=1;
#      suppressions in tests/hostile/valgrind.supp), against 0.3.14 and
#      0.7.13 only (0.6.14's library paths are the union of theirs),
#   4. the soak test once, against the first release (scripts/soak.sh:
#      10,000 execs and 10,000 fs round trips from 8 threads, then RSS and
#      fds back where they started; ~25 s on 2 cores).
# Each program spawns its own relays (one per test, with the fault it needs).
# The default run takes about 7 minutes on 2 cores (plain ~70 s per release,
# most of it the flood and unread-commands windows; ASan ~35 s and valgrind
# ~30 s per release).
#
#   scripts/test-hostile.sh [--quick] [--soak] [--tsan] [--miri]
#
#   --quick  plain build only: no sanitizer, no valgrind, no soak (~3.5 min)
#   --soak   run the soak test even with --quick
#   --tsan   also run the Rust core's unit tests and tests/client_core.rs
#            (its concurrency tests) under ThreadSanitizer: needs the nightly
#            toolchain with rust-src; builds std with -Zbuild-std into
#            target/tsan (first build ~5 minutes)
#   --miri   also run the protocol module's unit tests (frame codec, CBOR,
#            payloads) and tests/vectors.rs under Miri: needs nightly with
#            the miri component (~1 minute)
#
# Environment: MSB_DEVRELAY_PROFILE=RELEASE runs against that release only,
# MSB_TEST_PROFILES="R1 R2" against those (default "0.3.14 0.6.14 0.7.13");
# MSB_TEST_ONLY=SUBSTRING runs only tests whose name (which ends in
# "(relay RELEASE)") contains it; MSB_FLOOD_SECONDS (default 10) is the
# flood's not-pulling window; MSB_UNREAD_SECONDS (default 20) how long
# unread-commands leaves two commands' output unread.
# Prints each program's "N passed, M failed" line and a final
# "hostile: N passed, M failed"; exits non-zero if anything failed.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

quick=0 soak=default tsan=0 miri=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --soak) soak=1 ;;
    --tsan) tsan=1 ;;
    --miri) miri=1 ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

CC="${CC:-cc}"
out="$top/target/hostile"
warn=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
link=(-L"$top/target/release" -lmicrosandbox_agent -lpthread)
programs=(faults mistakes)

[[ $soak == default ]] && soak=$((1 - quick))
command -v "$CC" >/dev/null || { echo "error: C compiler '$CC' not found" >&2; exit 1; }
if [[ $quick -eq 0 ]] && ! command -v valgrind >/dev/null; then
  echo "error: valgrind is not installed (apt-get install valgrind, or use --quick)" >&2
  exit 1
fi

echo "== building the library and msb-devrelay"
cargo build --release --workspace

mkdir -p "$out"
source "$top/scripts/built-env.sh"

# The relay releases every test program runs against: MSB_DEVRELAY_PROFILE
# alone when it is set, else MSB_TEST_PROFILES, else all three.
if [[ -n "${MSB_DEVRELAY_PROFILE:-}" ]]; then
  profiles=("$MSB_DEVRELAY_PROFILE")
else
  read -r -a profiles <<<"${MSB_TEST_PROFILES:-0.3.14 0.6.14 0.7.13}"
fi
echo "== relay profiles: ${profiles[*]}"

echo "== compiling tests/hostile"
for p in "${programs[@]}"; do
  "$CC" "${warn[@]}" -g -Iinclude "tests/hostile/$p.c" "${link[@]}" -o "$out/$p"
  if [[ $quick -eq 0 ]]; then
    "$CC" "${warn[@]}" -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
      -fno-sanitize-recover=undefined -Iinclude "tests/hostile/$p.c" "${link[@]}" -o "$out/$p-asan"
  fi
done

total_passed=0 total_failed=0 broken_runs=0
# Runs one test program; adds its counts to the totals. A program that dies
# without its closing line (crash, sanitizer abort, watchdog) counts as a
# broken run.
run() {
  local label="$1"; shift
  local log="$out/last.log" rc=0 started=$SECONDS
  echo "== $label"
  set +e
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "== $label took $((SECONDS - started)) s"
  local line
  line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)"
  if [[ -z "$line" ]]; then
    echo "BROKEN: $label ended without its summary line (exit $rc)"
    broken_runs=$((broken_runs + 1))
    return
  fi
  local p f
  p="${line%% passed*}"
  f="${line#*, }"; f="${f%% failed*}"
  total_passed=$((total_passed + p))
  total_failed=$((total_failed + f))
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    echo "BROKEN: $label exited $rc although its tests passed (sanitizer or valgrind report above)"
    broken_runs=$((broken_runs + 1))
  fi
}

# Every program runs once per release: the devrelay imitates it, and the
# tests expect what that release's relay does (tests/hostile/faults.c).
for profile in "${profiles[@]}"; do
  for p in "${programs[@]}"; do
    MSB_DEVRELAY_PROFILE=$profile run "$p (relay $profile)" "$out/$p"
  done
done

if [[ $quick -eq 0 ]]; then
  # The sanitizers roughly double the cost of every call; the flood's RSS
  # limit is then checked as growth (shadow memory inflates absolute RSS),
  # and a shorter flood window keeps the run short.
  for profile in "${profiles[@]}"; do
    for p in "${programs[@]}"; do
      MSB_DEVRELAY_PROFILE=$profile MSB_TEST_INSTRUMENTED=1 \
      MSB_FLOOD_SECONDS="${MSB_FLOOD_SECONDS:-4}" MSB_UNREAD_SECONDS="${MSB_UNREAD_SECONDS:-8}" \
      ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        run "$p under AddressSanitizer + UBSan (relay $profile)" "$out/$p-asan"
    done
  done
  # valgrind slows every instruction ~20-50x: widen the timing slack and
  # the watchdog, shorten the flood. It runs against the legacy release and
  # the newest one: every library path a 0.6.14 run takes is taken by one
  # of them (the current handshake and handle-based fs as on 0.7.13, exec
  # without flow control as on 0.3.14), and leaving it out keeps the suite
  # within its time. Plain and sanitizer runs cover all three.
  valgrind_profiles=()
  for profile in "${profiles[@]}"; do
    [[ $profile == 0.6.14 && ${#profiles[@]} -gt 1 ]] || valgrind_profiles+=("$profile")
  done
  for profile in "${valgrind_profiles[@]}"; do
    for p in "${programs[@]}"; do
      MSB_DEVRELAY_PROFILE=$profile MSB_TEST_INSTRUMENTED=1 \
      MSB_TEST_SLACK_MS=3000 MSB_TEST_WATCHDOG_S=600 \
      MSB_FLOOD_SECONDS="${MSB_FLOOD_SECONDS:-3}" MSB_FLOOD_FRAMES=120 \
      MSB_UNREAD_SECONDS="${MSB_UNREAD_SECONDS:-6}" MSB_UNREAD_BYTES=$((32 * 1024 * 1024)) \
        run "$p under valgrind (relay $profile)" \
        valgrind --quiet --leak-check=full --error-exitcode=1 --child-silent-after-fork=yes \
        --suppressions=tests/hostile/valgrind.supp "$out/$p"
    done
  done
fi

if [[ $soak -eq 1 ]]; then
  # Against the first release of the list (0.3.14 by default, as before):
  # the soak measures the library's own steady state, and 0.7.13's exec
  # flow control nearly doubles its time.
  MSB_DEVRELAY_PROFILE=${profiles[0]} run "soak (relay ${profiles[0]})" scripts/soak.sh
fi

if [[ $tsan -eq 1 ]]; then
  # The Rust core's own concurrency tests (eight threads sharing the socket
  # reader, waiters woken by transport death and close, backpressure) under
  # ThreadSanitizer. std must be rebuilt with the sanitizer (-Zbuild-std),
  # hence nightly + rust-src. tests/client_core.rs looks for msb-devrelay
  # beside its own binary: put the release build there.
  echo "== Rust core under ThreadSanitizer"
  tsan_env=(env RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR="$top/target/tsan")
  tsan_args=(+nightly test -Zbuild-std --target x86_64-unknown-linux-gnu -p microsandbox-agent --lib --test client_core)
  if "${tsan_env[@]}" cargo "${tsan_args[@]}" --no-run; then
    mkdir -p "$top/target/tsan/x86_64-unknown-linux-gnu/debug"
    cp "$MSB_DEVRELAY" "$top/target/tsan/x86_64-unknown-linux-gnu/debug/msb-devrelay"
    if TSAN_OPTIONS="halt_on_error=1" "${tsan_env[@]}" cargo "${tsan_args[@]}"; then
      echo "tsan: 1 passed, 0 failed"
      total_passed=$((total_passed + 1))
    else
      echo "tsan: 0 passed, 1 failed"
      total_failed=$((total_failed + 1))
    fi
  else
    echo "BROKEN: the ThreadSanitizer build failed (nightly with rust-src needed)"
    broken_runs=$((broken_runs + 1))
  fi
fi

if [[ $miri -eq 1 ]]; then
  # Pure code without I/O: the frame codec, the CBOR reader/writer and the
  # payloads, through their unit tests and the upstream vectors (Miri cannot
  # run the socket code). The vectors test reads its JSON file, which Miri's
  # isolation would refuse.
  echo "== protocol module under Miri"
  if CARGO_TARGET_DIR="$top/target/miri" cargo +nightly miri test -p microsandbox-agent --lib protocol \
     && MIRIFLAGS=-Zmiri-disable-isolation CARGO_TARGET_DIR="$top/target/miri" \
        cargo +nightly miri test -p microsandbox-agent --test vectors; then
    echo "miri: 1 passed, 0 failed"
    total_passed=$((total_passed + 1))
  else
    echo "miri: 0 passed, 1 failed"
    total_failed=$((total_failed + 1))
  fi
fi

if [[ $broken_runs -ne 0 ]]; then
  echo "test-hostile.sh: $broken_runs run(s) broke"
  total_failed=$((total_failed + broken_runs))
fi
echo "hostile: $total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 ]]
