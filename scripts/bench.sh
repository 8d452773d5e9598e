#!/usr/bin/env bash
# Benchmarks libmicrosandbox_agent against a minimal blocking client and
# against upstream's agent client (microsandbox-agent-client 0.7.13).
#
#   scripts/bench.sh [--no-upstream] [BENCH ARGS...]
#       e.g. --quick, --json, --runs 5, --profile 0.3.14, --socket PATH
#
# Builds the library and msb-devrelay in release mode, the upstream peer
# (bench/upstream, its own workspace and lockfile) into target/bench-upstream,
# and examples/c/bench.c into target/bench with the documented one-line cc
# command, then runs it (it starts its own msb-devrelay, --profile 0.7.13 by
# default, unless --socket is given). --no-upstream skips the upstream peer
# and its build. `target/bench --help` lists the other flags.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
upstream=1
args=()
for arg in "$@"; do
  if [[ "$arg" == "--no-upstream" ]]; then upstream=0; else args+=("$arg"); fi
done
cargo build --release --workspace >&2
if [[ $upstream -eq 1 ]]; then
  cargo build --release --locked --manifest-path bench/upstream/Cargo.toml --target-dir target/bench-upstream >&2
  args=(--upstream target/bench-upstream/release/msb-bench-upstream "${args[@]}")
fi
cc -O2 -Iinclude examples/c/bench.c -Ltarget/release -lmicrosandbox_agent -lpthread -o target/bench
source "$top/scripts/built-env.sh"
exec target/bench "${args[@]}"
