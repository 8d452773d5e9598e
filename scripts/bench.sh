#!/usr/bin/env bash
# Benchmarks libmicrosandbox_agent against a minimal blocking client.
#
#   scripts/bench.sh [BENCH ARGS...]      e.g. --quick, --json, --socket PATH, --runs 5
#
# Builds the library and msb-devrelay in release mode, builds
# examples/c/bench.c into target/bench with the documented one-line cc
# command, and runs it (it starts its own msb-devrelay unless --socket is
# given). `target/bench --help` lists the flags.
set -euo pipefail
# The relay imitates 0.3.14 until the client speaks the current handshake.
export MSB_DEVRELAY_PROFILE=0.3.14
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
cargo build --release --workspace >&2
cc -O2 -Iinclude examples/c/bench.c -Ltarget/release -lmicrosandbox_agent -lpthread -o target/bench
source "$top/scripts/built-env.sh"
exec target/bench "$@"
