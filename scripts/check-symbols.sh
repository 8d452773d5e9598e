#!/usr/bin/env bash
# Checks the dynamic symbols the shared library exports against the committed
# list symbols/exported-symbols.txt, and against the header.
#
#   scripts/check-symbols.sh [LIBRARY]      # default target/release/libmicrosandbox_agent.so
#   scripts/check-symbols.sh --update       # rewrite the list from the built library
#
# Fails when a symbol appears or disappears without the list changing (an
# ABI change must be a reviewed diff of the list), when anything without the
# msb_ prefix is exported (Rust runtime symbols leaking into the C namespace),
# or when an exported function is missing from the header or vice versa.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
list="$top/symbols/exported-symbols.txt"
header="$top/include/microsandbox_agent.h"
update=false
if [[ "${1:-}" == "--update" ]]; then update=true; shift; fi
lib="${1:-$top/target/release/libmicrosandbox_agent.so}"
[[ -f "$lib" ]] || { echo "error: $lib not built (cargo build --release --workspace)" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Defined dynamic symbols, names only (drop any @VERSION suffix).
nm -D --defined-only "$lib" | awk '{ sub(/@.*/, "", $3); print $3 }' | LC_ALL=C sort -u >"$tmp/exported"

failed=0
foreign="$(grep -v '^msb_' "$tmp/exported" || true)"
if [[ -n "$foreign" ]]; then
  echo "error: $lib exports symbols outside the msb_ namespace:" >&2
  sed 's/^/  /' <<<"$foreign" >&2
  echo "  Only msb_* may be exported. If these come from Rust (e.g. rust_eh_personality)," >&2
  echo "  restrict the exports with a linker version script passed from build.rs." >&2
  failed=1
fi

if $update; then
  {
    echo "# Every symbol exported by libmicrosandbox_agent.so, one per line, sorted."
    echo "# Checked by scripts/check-symbols.sh; regenerate with --update and review the diff:"
    echo "# a removed or changed symbol is an ABI break (see the soname policy in the README)."
    cat "$tmp/exported"
  } >"$list"
  echo "wrote $(wc -l <"$tmp/exported") symbols to ${list#$top/}"
  exit $failed
fi

grep -v '^#' "$list" | sed '/^$/d' | LC_ALL=C sort -u >"$tmp/listed"
if ! cmp -s "$tmp/listed" "$tmp/exported"; then
  echo "error: exported symbols differ from ${list#$top/}:" >&2
  LC_ALL=C comm -13 "$tmp/listed" "$tmp/exported" | sed 's/^/  exported but not listed: /' >&2
  LC_ALL=C comm -23 "$tmp/listed" "$tmp/exported" | sed 's/^/  listed but not exported: /' >&2
  echo "  If the change is intended, run scripts/check-symbols.sh --update and commit the list." >&2
  failed=1
fi

# Function declarations in the header: an identifier directly followed by
# "(" at the start of a declaration, i.e. `type msb_name(`.
grep -oE '^[A-Za-z_][A-Za-z0-9_ *]*[ *](msb_[a-z0-9_]+)\(' "$header" \
  | grep -oE 'msb_[a-z0-9_]+\($' | tr -d '(' | LC_ALL=C sort -u >"$tmp/declared"
if ! cmp -s "$tmp/declared" "$tmp/exported"; then
  echo "error: header declarations and exported symbols differ:" >&2
  LC_ALL=C comm -13 "$tmp/declared" "$tmp/exported" | sed 's/^/  exported but not in the header: /' >&2
  LC_ALL=C comm -23 "$tmp/declared" "$tmp/exported" | sed 's/^/  in the header but not exported: /' >&2
  failed=1
fi

if [[ $failed -eq 0 ]]; then
  echo "symbols: $(wc -l <"$tmp/exported") exported, all msb_*, matching the list and the header"
fi
exit $failed
