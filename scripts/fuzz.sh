#!/usr/bin/env bash
# Fuzzes the wire-format code with cargo-fuzz (libFuzzer), each target for a
# bounded time:
#   frames    FrameDecoder + RawFrame::decode + parse_handshake_offset, the
#             stream fed in chunks, checked against feeding it whole, and
#             every decoded frame re-encoded and decoded again;
#   payloads  every Payload::decode, with decode -> encode -> decode round
#             trips that must give equal values and stable bytes;
#   differential  our decoders against upstream's (0.3.14 legacy FS shapes,
#             0.7.13 otherwise) and the envelope against 0.7.13's: same
#             verdict, same bytes when both values are re-encoded.
# The seed corpus is generated from tests/data/protocol-{0.3.14,0.6.14,
# 0.7.13}.json (every frame, the handshakes, all frames as one stream, every
# payload); inputs in fuzz/regressions/<target>/ are replayed first on every
# run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all targets)
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
[[ ${#targets[@]} -gt 0 ]] || targets=(frames payloads differential)

cargo +nightly --version >/dev/null 2>&1 || { echo "error: the nightly toolchain is needed" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || { echo "error: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 1; }

echo "== seed corpus from tests/data/protocol-*.json"
python3 - <<'PY'
import json, os, hashlib
def put(target, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
for path in ("tests/data/protocol-0.3.14.json", "tests/data/protocol-0.6.14.json",
             "tests/data/protocol-0.7.13.json"):
    vectors = json.load(open(path))
    frames = [bytes.fromhex(m["frame_hex"]) for m in vectors["messages"]]
    frames += [bytes.fromhex(r["frame_hex"]) for r in vectors.get("raw_frames", [])
               if "frame_hex" in r]
    handshakes = [bytes.fromhex(h["bytes_hex"]) for h in vectors.get("handshakes", [])]
    if "handshake_slot3_hex" in vectors:
        handshakes.append(bytes.fromhex(vectors["handshake_slot3_hex"]))
    # frames: byte 0 is the read size minus one (0: byte by byte; 255: 256 bytes).
    for chunk in (0, 6, 255):
        for f in frames:
            put("frames", bytes([chunk]) + f)
        put("frames", bytes([chunk]) + b"".join(frames))
    for hs in handshakes:
        put("frames", bytes([3]) + hs)
        put("frames", bytes([255]) + hs + b"".join(frames))
    for m in vectors["messages"]:
        payload = bytes.fromhex(m["payload_cbor_hex"])
        put("payloads", payload)
        # differential: byte 0 picks the decoder pair (0: envelope).
        put("differential", bytes([0]) + bytes.fromhex(m["frame_hex"])[9:])
        for pick in range(1, 8):
            put("differential", bytes([pick]) + payload)
for t in ("frames", "payloads", "differential"):
    print("%s: %d seeds" % (t, len(os.listdir(os.path.join("fuzz", "corpus", t)))))
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
