#!/usr/bin/env bash
# Checks that the shipped library is built with its own features only.
#
# `cargo build --workspace` unifies dependency features across members, so a
# library built that way would carry tokio's `process` and `signal` (which
# only the development relay uses). The shipped build (`make`, and this
# script) builds the library package alone; this checks its dependency
# features, and that the built .so and .a hold no tokio process or signal
# code. A separate target directory keeps target/release (the workspace
# build the tests use) from being rebuilt back and forth.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

failures=0
features="$(cargo tree -p microsandbox-agent -e features -e normal --prefix none -i tokio 2>/dev/null | grep -E '^tokio feature' | sort -u || true)"
if grep -Eq '"(process|signal)"' <<<"$features"; then
  echo "not ok - the library alone enables tokio process/signal:"
  echo "$features"
  failures=$((failures + 1))
else
  echo "ok - the library's own tokio features: $(sed -nE 's/^tokio feature "([^"]+)".*/\1/p' <<<"$features" | tr '\n' ' ')"
fi

dir=target/lib-only
cargo build --release -p microsandbox-agent --target-dir "$dir" >&2
for lib in "$dir/release/libmicrosandbox_agent.so" "$dir/release/libmicrosandbox_agent.a"; do
  n="$(nm -C "$lib" 2>/dev/null | grep -ciE 'tokio[^ ]*(::process|::signal)' || true)"
  if [[ "$n" -eq 0 ]]; then
    echo "ok - $(basename "$lib"): no tokio process or signal symbols"
  else
    echo "not ok - $(basename "$lib"): $n tokio process/signal symbols"
    nm -C "$lib" | grep -iE 'tokio[^ ]*(::process|::signal)' | head -5
    failures=$((failures + 1))
  fi
done
[[ $failures -eq 0 ]] || { echo "check-features.sh: $failures checks failed" >&2; exit 1; }
echo "check-features.sh: all checks passed"
