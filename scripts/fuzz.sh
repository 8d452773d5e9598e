#!/usr/bin/env bash
# Fuzzes the wire-format code with cargo-fuzz (libFuzzer), each target for a
# bounded time:
#   frames    FrameDecoder + RawFrame::decode + parse_handshake_offset, the
#             stream fed in chunks, checked against feeding it whole, and
#             every decoded frame re-encoded and decoded again;
#   payloads  every Payload::decode, with decode -> encode -> decode round
#             trips that must give equal values and stable bytes;
#   reader    the client's real reader through a socket, the stream split
#             at arbitrary points, checked against a whole-stream decode.
# The seed corpus is generated from tests/data/protocol-0.3.14.json (every
# frame, the handshake, all frames as one stream, every payload); inputs in
# fuzz/regressions/<target>/ are replayed first on every run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, every target)
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script;
# reproduce it with: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(frames payloads reader)

cargo +nightly --version >/dev/null 2>&1 || { echo "error: the nightly toolchain is needed" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || { echo "error: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 1; }

echo "== seed corpus from tests/data/protocol-0.3.14.json"
python3 - <<'PY'
import json, os, hashlib
vectors = json.load(open("tests/data/protocol-0.3.14.json"))
def put(target, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
frames = [bytes.fromhex(m["frame_hex"]) for m in vectors["messages"]]
handshake = bytes.fromhex(vectors["handshake_slot3_hex"])
# frames: byte 0 is the read size minus one (0: byte by byte; 255: 256 bytes).
for chunk in (0, 6, 255):
    for f in frames:
        put("frames", bytes([chunk]) + f)
    put("frames", bytes([chunk]) + b"".join(frames))
put("frames", bytes([3]) + handshake)
put("frames", bytes([255]) + handshake + b"".join(frames))
for m in vectors["messages"]:
    put("payloads", bytes.fromhex(m["payload_cbor_hex"]))
# reader: byte 0 is the number of split points, then u16 offsets, then the
# stream. Frames of slot 0 would be needed to reach subscribers; the vectors'
# frames exercise splitting, dropping and the error paths as they are.
stream = b"".join(frames)
for splits in ([], [1], [4, 9, 10, 200]):
    head = bytes([len(splits)]) + b"".join(s.to_bytes(2, "little") for s in splits)
    put("reader", head + stream)
    for f in frames:
        put("reader", head + f)
    put("reader", head + stream[: len(stream) // 2])
print("frames: %d seeds, payloads: %d seeds, reader: %d seeds" % (
    len(os.listdir("fuzz/corpus/frames")), len(os.listdir("fuzz/corpus/payloads")),
    len(os.listdir("fuzz/corpus/reader"))))
PY

status=0
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  mkdir -p "fuzz/artifacts/$t" "fuzz/regressions/$t"
  log="fuzz/artifacts/$t.log"
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
    -max_total_time="$seconds" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
    2>&1 | tee "$log" | grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|==[0-9]+== ERROR|thread .* panicked|SUMMARY)'
  rc=${PIPESTATUS[0]}
  set -e
  if [[ $rc -ne 0 ]] || grep -qE 'panicked|ERROR: libFuzzer|SUMMARY: ' "$log"; then
    echo "FAILED: $t (see $log and fuzz/artifacts/$t/)"
    status=1
  else
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    echo "$t: ${execs:-?} executions in ${seconds}s, no crash"
  fi
done
exit $status
