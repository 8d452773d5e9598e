#!/usr/bin/env bash
# The demo: builds the library and the development relay, starts the relay,
# and runs the C quickstart against it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
cc -Iinclude examples/c/quickstart.c -Ltarget/release -lmicrosandbox_agent -o target/quickstart
scripts/with-devrelay.sh -- env LD_LIBRARY_PATH=target/release sh -c 'target/quickstart "$MSB_SOCKET"'
