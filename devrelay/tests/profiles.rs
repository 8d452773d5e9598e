//! What each profile says in its handshake, how many clients it takes, and
//! the generation-5/6 core messages (core.error, ping/pong, touch/touched).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use ciborium::Value;
use common::*;
use microsandbox_agent::protocol::payload::{CoreError, CoreErrorKind, Payload, Ready, Touched};
use microsandbox_agent::protocol::{
    FrameDecoder, MessageType, CURRENT_ID_RANGE_STEP, CURRENT_MAX_CLIENTS, LEGACY_ID_RANGE_STEP,
};

fn vectors(release: &str) -> serde_json::Value {
    let path = format!(
        "{}/../tests/data/protocol-{release}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Reads a whole handshake: the prologue of `prologue_len` bytes and the
/// ready frame.
fn read_handshake(stream: &mut UnixStream, prologue_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; prologue_len + 4];
    stream.read_exact(&mut out).unwrap();
    let len = u32::from_be_bytes(out[prologue_len..].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).unwrap();
    out.extend(rest);
    out
}

/// The ready payload of a handshake and the `v` of its frame.
fn ready_of(handshake: &[u8], prologue_len: usize) -> (u8, Vec<u8>) {
    let mut decoder = FrameDecoder::new();
    decoder.extend(&handshake[prologue_len..]);
    let m = decoder.next_frame().unwrap().unwrap().decode().unwrap();
    assert_eq!((m.id, m.flags, m.message_type), (0, 0, MessageType::Ready));
    (m.version, m.payload.to_vec())
}

/// The shape of a CBOR value: map keys in order with their values' shapes,
/// where the values themselves (times, tokens, paths) may differ.
fn shape(value: &Value) -> String {
    match value {
        Value::Map(entries) => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", k.as_text().unwrap_or("?"), shape(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}x{}]", items.len(), shape(&items[0])),
        Value::Integer(_) => "int".into(),
        Value::Text(_) => "text".into(),
        Value::Bytes(_) => "bytes".into(),
        other => format!("{other:?}"),
    }
}

fn cbor(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).unwrap()
}

#[test]
fn handshake_0_3_14_is_the_legacy_form() {
    let relay = Relay::start_profile("hs03", "0.3.14", &[]);
    let clients: Vec<UnixStream> = (0..3).map(|_| relay.raw_connect()).collect();
    let mut slot3 = relay.raw_connect();
    let ours = read_handshake(&mut slot3, 4);
    let theirs = unhex(vectors("0.3.14")["handshake_slot3_hex"].as_str().unwrap());
    assert_eq!(ours[..4], theirs[..4], "id_offset of slot 3");
    assert_eq!(&ours[..4], &(3 * LEGACY_ID_RANGE_STEP).to_be_bytes());
    let (v, payload) = ready_of(&ours, 4);
    let (their_v, their_payload) = ready_of(&theirs, 4);
    assert_eq!((v, their_v), (1, 1));
    assert_eq!(shape(&cbor(&payload)), shape(&cbor(&their_payload)));
    assert_eq!(payload[0], 0xa3, "three keys, no agent_version");
    drop(clients);
}

#[test]
fn handshake_0_6_14_is_current_with_agent_version() {
    let relay = Relay::start_profile("hs06", "0.6.14", &[]);
    let mut s = relay.raw_connect();
    let ours = read_handshake(&mut s, 8);
    let vector = &vectors("0.6.14")["handshakes"][0];
    assert_eq!(vector["name"], "current_slot0_gen7");
    let theirs = unhex(vector["bytes_hex"].as_str().unwrap());
    assert_eq!(ours[..8], theirs[..8], "[1][33554431]");
    let (v, payload) = ready_of(&ours, 8);
    let (their_v, their_payload) = ready_of(&theirs, 8);
    assert_eq!((v, their_v), (7, 7));
    assert_eq!(shape(&cbor(&payload)), shape(&cbor(&their_payload)));
    assert_eq!(
        Ready::decode(&payload.into()).unwrap().agent_version,
        "0.6.14"
    );
}

#[test]
fn handshake_0_7_13_matches_the_relays_reencoded_ready() {
    let relay = Relay::start_profile("hs07", "0.7.13", &[]);
    let vectors = vectors("0.7.13");
    let handshakes = vectors["handshakes"].as_array().unwrap();
    let by_name = |name: &str| {
        let h = handshakes.iter().find(|h| h["name"] == name).unwrap();
        unhex(h["bytes_hex"].as_str().unwrap())
    };
    let mut streams = Vec::new();
    for slot in 0..4u32 {
        let mut s = relay.raw_connect();
        let ours = read_handshake(&mut s, 8);
        streams.push(s);
        if slot != 0 && slot != 3 {
            continue;
        }
        let theirs = by_name(&format!(
            "relay_0_7_13_unix_dual_port_exec_control_slot{slot}"
        ));
        assert_eq!(ours[..8], theirs[..8], "range of slot {slot}");
        // Same frame head up to the payload's length: the endpoint differs.
        assert_eq!(ours[12..17], theirs[12..17], "id 0, flags 0");
        let (v, payload) = ready_of(&ours, 8);
        let (their_v, their_payload) = ready_of(&theirs, 8);
        assert_eq!((v, their_v), (10, 10));
        assert_eq!(payload[0], 0xbf, "indefinite-length map");
        assert_eq!(*payload.last().unwrap(), 0xff);
        assert_eq!(shape(&cbor(&payload)), shape(&cbor(&their_payload)));
        let ready = Ready::decode(&payload.into()).unwrap();
        assert_eq!(ready.agent_version, "0.7.13");
        let limits = ready.exec_limits.unwrap();
        assert_eq!(
            (
                limits.max_executions,
                limits.input_limit,
                limits.output_limit,
                limits.stdin_chunk_size,
                limits.output_chunk_size
            ),
            (128, 64 * 1024, 1024 * 1024, 16 * 1024, 16 * 1024)
        );
        assert_eq!(ready.exec_control.unwrap().version, 1);
        assert_eq!(ready.local_transport.unwrap().max_format, 1);
    }
    // Slot 127's range too.
    let last = Profile127::range();
    assert_eq!(last, (4261412738, 4294967168));
}

/// The 128th slot's range as the current form computes it.
struct Profile127;
impl Profile127 {
    fn range() -> (u32, u32) {
        let offset = 127 * CURRENT_ID_RANGE_STEP;
        (offset + 1, offset + CURRENT_ID_RANGE_STEP)
    }
}

#[test]
fn current_profiles_take_128_clients_then_refuse() {
    for profile in ["0.6.14", "0.7.13"] {
        let relay = Relay::start_profile("full", profile, &["--quiet"]);
        let mut clients: Vec<Client> = (0..CURRENT_MAX_CLIENTS).map(|_| relay.connect()).collect();
        for (k, c) in clients.iter().enumerate() {
            let offset = k as u32 * CURRENT_ID_RANGE_STEP;
            assert_eq!(
                (c.id_start, c.id_end),
                (offset + 1, offset + CURRENT_ID_RANGE_STEP)
            );
            assert!(!c.legacy);
        }
        assert_eq!(
            (clients[127].id_start, clients[127].id_end),
            Profile127::range()
        );
        // Full: accepted, then closed before any byte.
        let mut refused = relay.raw_connect();
        assert_eq!(read_up_to(&mut refused, 8), Vec::<u8>::new());
        // The lowest free slot is handed out next.
        clients.remove(5);
        assert!(wait_until(TIMEOUT, || {
            let mut s = relay.raw_connect();
            read_up_to(&mut s, 4) == (5 * CURRENT_ID_RANGE_STEP + 1).to_be_bytes()
        }));
    }
}

fn expect_core_error(
    c: &mut Client,
    id: u32,
    kind: CoreErrorKind,
    offending: MessageType,
) -> CoreError {
    let m = c.recv();
    assert_eq!((m.id, m.message_type.clone()), (id, MessageType::CoreError));
    assert_eq!(m.flags, 1);
    let error = CoreError::decode(&m.payload).unwrap();
    assert_eq!(error.kind, kind);
    assert_eq!(error.offending_type.as_deref(), Some(offending.as_str()));
    error
}

fn core_error_answers_wrong_flags_and_payloads(profile: &str) {
    let relay = Relay::start_profile("coreerr", profile, &["--quiet"]);
    let mut c = relay.connect();
    // An exec request without SESSION_START.
    let id = c.next_id();
    let mut frame = frame_v(
        c.v,
        MessageType::ExecRequest,
        id,
        &exec_req("true", &[]).to_bytes(),
    );
    frame[8] = 0;
    c.stream.write_all(&frame).unwrap();
    let error = expect_core_error(
        &mut c,
        id,
        CoreErrorKind::InvalidFlags,
        MessageType::ExecRequest,
    );
    assert_eq!(
        error.message,
        "invalid flags for core.exec.request: got 0, expected 2"
    );
    // An exec request without cmd.
    let id = c.next_id();
    c.send(MessageType::ExecRequest, id, &[0xa0]);
    let error = expect_core_error(
        &mut c,
        id,
        CoreErrorKind::InvalidPayload,
        MessageType::ExecRequest,
    );
    assert!(error.message.contains("cmd"), "{}", error.message);
    // The connection and the sandbox carry on.
    assert_eq!(c.exec(&exec_req("echo", &["ok"])).stdout_text(), "ok\n");
}

for_profiles!(core_error_answers_wrong_flags_and_payloads:
    core_error_on_0_6_14 = "0.6.14", core_error_on_0_7_13 = "0.7.13");

#[test]
fn below_generation_5_a_bad_frame_kills_the_agent() {
    for profile in ["0.6.14", "0.7.13"] {
        let mut relay = Relay::start_profile("old-v", profile, &["--quiet"]);
        let mut c = relay.connect();
        c.v = 4;
        let id = c.next_id();
        c.send(MessageType::ExecRequest, id, &[0xa0]);
        assert_eq!(relay.wait_exit(TIMEOUT), Some(1), "{profile}");
        assert!(sees_eof(&mut c.stream, TIMEOUT));
    }
}

fn ping_and_touch(profile: &str) {
    let relay = Relay::start_profile("ping", profile, &["--quiet"]);
    let mut c = relay.connect();
    let id = c.next_id();
    c.send(MessageType::Ping, id, &[0xa0]);
    let pong = c.recv();
    assert_eq!(
        (pong.id, pong.message_type, pong.flags),
        (id, MessageType::Pong, 1)
    );
    assert_eq!(&pong.payload[..], &[0xa0]);
    let mut last = 0;
    for _ in 0..3 {
        let id = c.next_id();
        c.send(MessageType::Touch, id, &[0xa0]);
        let touched = c.recv();
        assert_eq!(
            (touched.id, touched.message_type, touched.flags),
            (id, MessageType::Touched, 1)
        );
        let seq = Touched::decode(&touched.payload).unwrap().activity_seq;
        assert!(seq > last, "activity_seq increases: {seq} after {last}");
        last = seq;
    }
}

for_profiles!(ping_and_touch: ping_on_0_6_14 = "0.6.14", ping_on_0_7_13 = "0.7.13");

#[test]
fn frames_carry_the_profiles_generation() {
    for (profile, v) in [("0.3.14", 1), ("0.6.14", 7), ("0.7.13", 10)] {
        let relay = Relay::start_profile("gen", profile, &["--quiet"]);
        let mut c = relay.connect();
        assert_eq!(c.ready_v, v);
        let id = c.start_exec(&exec_req("echo", &["x"]));
        loop {
            let m = c.recv();
            assert_eq!(m.version, v, "{profile}: {}", m.message_type);
            if m.message_type == MessageType::ExecStdout && c.auto_ack {
                c.ack_output(id, 2 + 256);
            }
            if m.message_type == MessageType::ExecExited {
                break;
            }
        }
    }
}
