#!/usr/bin/env bash
# Soak test (tests/hostile/soak.c): 10,000 execs and 10,000 fs round trips
# over one client from 8 threads against a development relay, then RSS and
# open fds must be back where they started. Prints "N passed, M failed";
# exits non-zero on failure. Takes about a minute on 2 cores.
#
#   scripts/soak.sh            (MSB_SOAK_EXECS / MSB_SOAK_FS / MSB_SOAK_THREADS scale it)
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
CC="${CC:-cc}"
out="$top/target/hostile"

cargo build --release --workspace
mkdir -p "$out"
"$CC" -std=c11 -Wall -Wextra -Wpedantic -Werror -g -O1 -Iinclude tests/hostile/soak.c \
  -L"$top/target/release" -lmicrosandbox_agent -lpthread -o "$out/soak"
source "$top/scripts/built-env.sh"
MSB_TEST_WATCHDOG_S="${MSB_TEST_WATCHDOG_S:-900}" "$out/soak"
