#!/usr/bin/env bash
# Runs a command with a development relay serving on a fresh socket.
#
#   scripts/with-devrelay.sh [--relay-arg ARG]... -- CMD [ARGS...]
#
# Starts target/release/msb-devrelay (build it first: cargo build --release
# --workspace), waits for its ready line, exports MSB_SOCKET (the socket path)
# and MSB_DEVRELAY_ROOT (its fs root), runs CMD, then stops the relay. Exits
# with CMD's status. The relay imitates the release named by
# MSB_DEVRELAY_PROFILE (0.3.14, 0.6.14 or 0.7.13; default 0.7.13).
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
relay="${MSB_DEVRELAY:-$top/target/release/msb-devrelay}"
profile="${MSB_DEVRELAY_PROFILE:-0.7.13}"
relay_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --relay-arg) relay_args+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--relay-arg ARG]... -- CMD [ARGS...]" >&2; exit 2; }
[[ -x "$relay" ]] || { echo "error: $relay not built (cargo build --release --workspace)" >&2; exit 2; }

dir="$(mktemp -d /tmp/msb-relay.XXXXXX)"
mkdir -p "$dir/root"
export MSB_SOCKET="$dir/agent.sock"
export MSB_DEVRELAY_ROOT="$dir/root"
"$relay" --profile "$profile" --socket "$MSB_SOCKET" --root "$MSB_DEVRELAY_ROOT" --quiet "${relay_args[@]}" >"$dir/ready" 2>"$dir/relay.log" &
relay_pid=$!
cleanup() {
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 200); do
  grep -q "listening" "$dir/ready" 2>/dev/null && break
  kill -0 "$relay_pid" 2>/dev/null || { cat "$dir/relay.log" >&2; echo "error: relay exited" >&2; exit 1; }
  sleep 0.05
done
grep -q "listening" "$dir/ready" || { echo "error: relay did not become ready" >&2; exit 1; }
set +e
"$@"
status=$?
set -e
exit $status
