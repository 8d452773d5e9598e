#!/usr/bin/env bash
# Regenerates include/microsandbox_agent.h from the Rust sources with the
# pinned cbindgen. `--check` fails (exit 1) if the committed header is stale.
set -euo pipefail
CBINDGEN_VERSION=0.29.4
cd "$(dirname "$0")/.."
if ! command -v cbindgen >/dev/null || [[ "$(cbindgen --version)" != "cbindgen $CBINDGEN_VERSION" ]]; then
  cargo install --locked --quiet cbindgen --version "$CBINDGEN_VERSION"
fi
out=include/microsandbox_agent.h
if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  cbindgen --quiet --config cbindgen.toml --crate microsandbox-agent --output "$tmp"
  if ! cmp -s "$tmp" "$out"; then
    echo "error: $out is stale; run scripts/gen-header.sh and commit the result" >&2
    diff -u "$out" "$tmp" | head -40 >&2 || true
    exit 1
  fi
  echo "header is up to date"
else
  cbindgen --quiet --config cbindgen.toml --crate microsandbox-agent --output "$out"
fi
