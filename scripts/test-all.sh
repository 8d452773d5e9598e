#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the header freshness
# check, the C suites (functional, hostile-guest, sanitizers, valgrind), the
# packaging checks, a smoke run of the benchmark, and the Go and Zig
# bindings, each against a development relay. The suites that talk to a
# relay run against every release it imitates (0.3.14, 0.6.14, 0.7.13).
# Missing tools are installed first (scripts/install-test-deps.sh).
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1 \
   || ! command -v valgrind >/dev/null || ! command -v pkg-config >/dev/null \
   || ! command -v doxygen >/dev/null; then
  scripts/install-test-deps.sh || { echo "error: could not install test dependencies" >&2; exit 1; }
fi

set -e
cargo build --release --workspace
set +e

suites=(
  "rust:cargo test --workspace"
  "rust-0.3.14:MSB_DEVRELAY_PROFILE=0.3.14 cargo test --test client_core"
  "rust-0.6.14:MSB_DEVRELAY_PROFILE=0.6.14 cargo test --test client_core"
  "rust-portable:cargo test --features portable-primitives --lib client:: && cargo test --features portable-primitives --test client_core"
  "header:scripts/gen-header.sh --check"
  "c:scripts/test-c.sh"
  "hostile:scripts/test-hostile.sh"
  "install:scripts/test-install.sh"
  "bench:scripts/test-bench.sh"
  "go:scripts/test-go.sh"
  "zig:scripts/test-zig.sh"
)
passed=0
failed=0
failed_names=()
for entry in "${suites[@]}"; do
  name="${entry%%:*}"
  cmd="${entry#*:}"
  echo
  echo "=== $name: $cmd"
  started=$SECONDS
  if bash -c "$cmd"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failed_names+=("$name")
  fi
  echo "=== $name took $((SECONDS - started)) s"
done
echo
if [[ $failed -gt 0 ]]; then
  echo "failed suites: ${failed_names[*]}"
fi
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
