#!/usr/bin/env bash
# Keeps the benchmark working: builds it with the documented command (through
# scripts/bench.sh), runs every measurement once at small sizes, and checks
# that each promised JSON line is there with its ratio. It also holds the one
# target that does not depend on timing: 64 idle clients cost at most 2 threads
# and 1 MiB of RSS each. Throughput targets are not asserted here: on a shared
# machine they are read from full runs, not checked in a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
failures=0
check() {
  local what="$1" pattern="$2"
  if grep -Eq "$pattern" "$out"; then
    echo "ok - $what"
  else
    echo "not ok - $what"
    failures=$((failures + 1))
  fi
}

scripts/bench.sh --quick --runs 1 --json >"$out"
number='[0-9]+(\.[0-9]+)?'
for bench in roundtrip stream file_write file_read connect; do
  for client in library baseline; do
    check "$bench: $client line with a ratio" "^\{\"bench\": \"$bench\", \"client\": \"$client\".*\"ratio\": $number"
  done
done
check "roundtrip: threaded reference from 8 threads" \
  "^\{\"bench\": \"roundtrip\", \"client\": \"threaded\", \"threads\": 8,.*\"ratio\": $number"
check "roundtrip: library pipelined from one thread" \
  "^\{\"bench\": \"roundtrip\", \"client\": \"lib-pipelined\", \"threads\": 8,.*\"ratio\": $number"
check "roundtrip: library over threaded" \
  "^\{\"bench\": \"roundtrip\", \"client\": \"library\", \"threads\": 8,.*\"ratio_threaded\": $number"
check "roundtrip: p50 and p99" "\"p50_us\": $number, \"p99_us\": $number"

idle="$(grep '"bench": "idle_clients", "client": "library"' "$out" || true)"
threads="$(sed -nE 's/.*"threads_per_client": ([0-9.]+).*/\1/p' <<<"$idle")"
rss="$(sed -nE 's/.*"rss_kib_per_client": ([0-9.]+).*/\1/p' <<<"$idle")"
if [[ -n "$threads" && -n "$rss" ]] && awk -v t="$threads" -v r="$rss" 'BEGIN { exit !(t <= 2 && r <= 1024) }'; then
  echo "ok - 64 idle clients: $threads threads and $rss KiB RSS each"
else
  echo "not ok - 64 idle clients: '${threads:-?}' threads and '${rss:-?}' KiB RSS each (at most 2 and 1024)"
  failures=$((failures + 1))
fi

# --only library: no baseline line at all.
scripts/bench.sh --quick --runs 1 --json --only library --bench roundtrip >"$out"
if grep -q '"client": "library"' "$out" && ! grep -Eq '"client": "(baseline|threaded)"' "$out" \
  && grep -q '"client": "lib-pipelined"' "$out"; then
  echo "ok - --only library runs the library alone"
else
  echo "not ok - --only library runs the library alone"
  failures=$((failures + 1))
fi

[[ $failures -eq 0 ]] || { echo "test-bench.sh: $failures checks failed" >&2; exit 1; }
echo "test-bench.sh: all checks passed"
