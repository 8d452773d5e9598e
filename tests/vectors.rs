//! Every frame produced by the upstream 0.3.14, 0.6.14 and 0.7.13 encoders
//! decodes to the values recorded beside it and re-encodes to the identical
//! bytes: payloads of the types we model through their typed round trip,
//! the others through the envelope.

use bytes::Bytes;
use microsandbox_agent::protocol::payload::{self, Payload};
use microsandbox_agent::protocol::{
    encode_frame, parse_handshake_offset, FrameDecoder, Message, MessageType, ProtocolError,
    LEGACY_GENERATION, LEGACY_ID_RANGE_STEP,
};
use serde::Serialize;
use serde_json::Value;

/// The three vector files, with the generation whose FS shapes they use.
const FILES: [(&str, Shapes); 3] = [
    ("protocol-0.3.14.json", Shapes::Legacy),
    ("protocol-0.6.14.json", Shapes::Current),
    ("protocol-0.7.13.json", Shapes::Current),
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Shapes {
    /// 0.3.x/0.4.x filesystem payloads.
    Legacy,
    /// Generation 2+ filesystem payloads.
    Current,
}

fn vectors(file: &str) -> Value {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_frame(frame: &[u8]) -> Message {
    let mut d = FrameDecoder::new();
    d.extend(frame);
    let msg = d.next_frame().unwrap().unwrap().decode().unwrap();
    assert_eq!(d.buffered(), 0);
    msg
}

/// Decodes `bytes` as a `T`, checks its value against the JSON the vector
/// records, and returns its re-encoding.
fn typed<T: Payload + Serialize>(bytes: &Bytes, json: &Value) -> Vec<u8> {
    let value = T::decode(bytes).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(&serde_json::to_value(&value).unwrap(), json, "{}", T::NAME);
    value.to_bytes()
}

/// The typed round trip of a payload, or `None` for the types we recognise
/// only by name (their payloads pass through untouched).
fn typed_round_trip(
    t: &MessageType,
    shapes: Shapes,
    json: &Value,
    bytes: &Bytes,
) -> Option<Vec<u8>> {
    use payload::*;
    use MessageType as M;
    Some(match t {
        M::Ready => typed::<Ready>(bytes, json),
        M::ExecRequest => typed::<ExecRequest>(bytes, json),
        M::ExecStarted => typed::<ExecStarted>(bytes, json),
        M::ExecExited => typed::<ExecExited>(bytes, json),
        M::ExecFailed => typed::<ExecFailed>(bytes, json),
        M::ExecStdinError => typed::<ExecStdinError>(bytes, json),
        M::ExecResize => typed::<ExecResize>(bytes, json),
        M::ExecSignal => typed::<ExecSignal>(bytes, json),
        M::ExecOutputAck => typed::<ExecOutputAck>(bytes, json),
        M::ExecStdinAck => typed::<ExecStdinAck>(bytes, json),
        M::ExecStdin | M::ExecStdout | M::ExecStderr | M::FsData | M::TcpData => {
            let p = Data::decode(bytes).unwrap();
            assert_eq!(&p.data[..], &hex(json["data_hex"].as_str().unwrap())[..]);
            assert_eq!(Data::encoded_len(p.data.len()), bytes.len());
            p.to_bytes()
        }
        M::FsRequest if shapes == Shapes::Legacy => typed::<legacy::FsRequest>(bytes, json),
        M::FsResponse if shapes == Shapes::Legacy => typed::<legacy::FsResponse>(bytes, json),
        M::FsRequest => typed::<FsRequest>(bytes, json),
        M::FsResponse => typed::<FsResponse>(bytes, json),
        M::TcpConnect => typed::<TcpConnect>(bytes, json),
        M::TcpFailed => typed::<TcpFailed>(bytes, json),
        M::TcpConnected | M::TcpEof | M::TcpClose | M::TcpClosed | M::Ping | M::Pong | M::Touch => {
            typed::<Empty>(bytes, json)
        }
        M::Touched => typed::<Touched>(bytes, json),
        M::CoreError => typed::<CoreError>(bytes, json),
        _ => return None,
    })
}

/// Checks one recorded frame; returns whether its payload was typed.
fn check_frame(name: &str, m: &Value, shapes: Shapes) -> bool {
    let frame = hex(m["frame_hex"].as_str().unwrap());
    let msg = decode_frame(&frame);
    assert_eq!(msg.id as u64, m["id"].as_u64().unwrap(), "{name}");
    assert_eq!(msg.flags as u64, m["flags"].as_u64().unwrap(), "{name}");
    assert_eq!(
        msg.message_type.as_str(),
        m["type"].as_str().unwrap(),
        "{name}"
    );
    assert!(msg.message_type.is_known(), "{name}");
    assert_eq!(msg.flags, msg.message_type.flags(), "{name}");
    let version = m["v"].as_u64().unwrap_or(LEGACY_GENERATION.into());
    assert_eq!(msg.version as u64, version, "{name}");
    let payload_bytes = hex(m["payload_cbor_hex"].as_str().unwrap());
    assert_eq!(&msg.payload[..], &payload_bytes[..], "{name}");

    let typed = typed_round_trip(&msg.message_type, shapes, &m["payload"], &msg.payload);
    let reencoded = typed.clone().unwrap_or_else(|| msg.payload.to_vec());
    assert_eq!(reencoded, payload_bytes, "{name}: payload re-encoding");

    let mut out = Vec::new();
    encode_frame(
        &mut out,
        msg.message_type.as_str(),
        msg.id,
        msg.message_type.flags(),
        msg.version,
        &reencoded,
    );
    assert_eq!(out, frame, "{name}: frame re-encoding");
    typed.is_some()
}

#[test]
fn every_vector_frame_decodes_and_reencodes_byte_exact() {
    let mut typed = 0;
    let mut frames = 0;
    for (file, shapes) in FILES {
        let v = vectors(file);
        for m in v["messages"].as_array().unwrap() {
            let name = format!("{file}: {}", m["name"].as_str().unwrap());
            typed += usize::from(check_frame(&name, m, shapes));
            frames += 1;
        }
    }
    assert_eq!(frames, 28 + 88 + 106);
    assert!(
        typed >= 180,
        "only {typed} payloads went through a typed round trip"
    );
}

/// Frames of an older encoder fed to a newer decoder: 0.6.14 frames as
/// 0.7.13 sees them (the ones it decodes must round-trip through our
/// current shapes too: no `user`, no `bulk`).
#[test]
fn older_encoders_frames_reencode_byte_exact() {
    let mut seen = 0;
    for (file, key) in [
        ("protocol-0.6.14.json", "old_messages_through_0_6_14"),
        ("protocol-0.7.13.json", "old_messages_through_0_7_13"),
    ] {
        for m in vectors(file)[key].as_array().unwrap() {
            let name = format!("{file}: {}", m["name"].as_str().unwrap());
            let frame = hex(m["frame_hex"].as_str().unwrap());
            let msg = decode_frame(&frame);
            assert_eq!(
                msg.message_type.as_str(),
                m["type"].as_str().unwrap(),
                "{name}"
            );
            let mut out = Vec::new();
            let payload = match msg.message_type {
                MessageType::FsRequest if m["decoded_by_0_7_13"] == "ok" => {
                    payload::FsRequest::decode(&msg.payload).unwrap().to_bytes()
                }
                MessageType::TcpConnect => payload::TcpConnect::decode(&msg.payload)
                    .unwrap()
                    .to_bytes(),
                MessageType::Ready => payload::Ready::decode(&msg.payload).unwrap().to_bytes(),
                _ => msg.payload.to_vec(),
            };
            encode_frame(
                &mut out,
                msg.message_type.as_str(),
                msg.id,
                msg.flags,
                msg.version,
                &payload,
            );
            assert_eq!(out, frame, "{name}");
            seen += 1;
        }
    }
    assert!(seen > 20, "{seen}");
}

/// The ready frame of a handshake: after `[id_offset]` (legacy) or
/// `[id_start][id_end_exclusive]` (0.5.0+), whichever makes the frame end
/// exactly at the end of the bytes.
fn ready_frame_of(hs: &[u8]) -> Option<(usize, &[u8])> {
    [4, 8].into_iter().find_map(|at| {
        let len = u32::from_be_bytes(hs.get(at..at + 4)?.try_into().unwrap()) as usize;
        (hs.len() == at + 4 + len).then(|| (at, &hs[at..]))
    })
}

#[test]
fn every_handshake_ready_decodes_and_reencodes_byte_exact() {
    let mut indefinite = 0;
    let mut checked = 0;
    for (file, _) in FILES {
        let v = vectors(file);
        let handshakes: Vec<Value> = match v.get("handshakes") {
            Some(h) => h.as_array().unwrap().clone(),
            None => vec![serde_json::json!({
                "name": "handshake_slot3",
                "bytes_hex": v["handshake_slot3_hex"],
            })],
        };
        for h in &handshakes {
            let name = format!("{file}: {}", h["name"].as_str().unwrap());
            let hs = hex(h["bytes_hex"].as_str().unwrap());
            let Some((prologue, frame)) = ready_frame_of(&hs) else {
                // The EOF case has no bytes at all.
                assert!(hs.is_empty(), "{name}: no frame found");
                continue;
            };
            let msg = decode_frame(frame);
            if msg.message_type != MessageType::Ready {
                assert!(name.contains("not_ready"), "{name}");
                continue;
            }
            if prologue == 4 {
                let slot = parse_handshake_offset(&hs).unwrap() / LEGACY_ID_RANGE_STEP;
                assert!(slot < 16, "{name}");
            }
            if h["ready_payload_has_indefinite_length_map"] == true {
                assert_eq!(msg.payload[0], 0xbf, "{name}");
                indefinite += 1;
            }
            let ready = payload::Ready::decode(&msg.payload).unwrap();
            assert_eq!(ready.boot_time_ns, 111, "{name}");
            assert_eq!(
                ready.to_bytes(),
                &msg.payload[..],
                "{name}: ready re-encoding"
            );
            let mut out = Vec::new();
            encode_frame(
                &mut out,
                "core.ready",
                msg.id,
                msg.flags,
                msg.version,
                &ready.to_bytes(),
            );
            assert_eq!(out, frame, "{name}: frame re-encoding");
            checked += 1;
        }
    }
    assert_eq!(indefinite, 5);
    assert_eq!(checked, 19);
}

#[test]
fn the_0_7_13_ready_carries_every_optional_key() {
    let v = vectors("protocol-0.7.13.json");
    let hs = hex(v["handshakes"][0]["bytes_hex"].as_str().unwrap());
    let msg = decode_frame(ready_frame_of(&hs).unwrap().1);
    assert_eq!(msg.version, 10);
    let ready = payload::Ready::decode(&msg.payload).unwrap();
    assert_eq!(ready.agent_version, "0.7.13");
    assert_eq!(ready.exec_limits, Some(payload::ExecLimits::default()));
    assert_eq!(ready.exec_control.as_ref().unwrap().connection, [0xab; 16]);
    assert_eq!(
        ready.bulk_transport.as_ref().unwrap().connection_id,
        [0x11; 16]
    );
    assert_eq!(
        ready.local_transport,
        Some(payload::MaxFormat { max_format: 1 })
    );
    assert_eq!(ready.workload_transport_barrier_version, Some(2));
}

#[test]
fn message_types_agree_with_the_vectors() {
    for file in ["protocol-0.6.14.json", "protocol-0.7.13.json"] {
        let types = vectors(file)["message_types"].as_array().unwrap().clone();
        assert_eq!(types.len(), if file.contains("0.7") { 46 } else { 32 });
        for row in &types {
            let name = row["type"].as_str().unwrap();
            let t = MessageType::from_wire(name);
            assert!(t.is_known(), "{name}");
            assert_eq!(t.as_str(), name);
            assert_eq!(t.static_c_name().unwrap().to_str().unwrap(), name);
            assert_eq!(
                t.flags() as u64,
                row["flags"].as_u64().unwrap(),
                "{file}: {name}"
            );
            assert_eq!(
                t.min_generation() as u64,
                row["introduced_in"].as_u64().unwrap(),
                "{file}: {name}"
            );
        }
    }
}

#[test]
fn raw_bulk_frames_are_recognised() {
    let v = vectors("protocol-0.7.13.json");
    let mut bulk = 0;
    for r in v["raw_frames"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let Some(frame_hex) = r["frame_hex"].as_str() else {
            continue; // console-port records and encoder refusals: no frame
        };
        let frame = hex(frame_hex);
        if r["flags"] != 8 {
            // Relay-agentd lease records and the shared-memory upgrade
            // request: flags 0 with a non-CBOR body, which a client never
            // receives; they stay malformed frames.
            let mut d = FrameDecoder::new();
            d.extend(&frame);
            let err = d.next_frame().unwrap().unwrap().decode().unwrap_err();
            assert!(matches!(err, ProtocolError::BadBody(_)), "{name}: {err}");
            continue;
        }
        let msg = decode_frame(&frame);
        assert_eq!(msg.message_type, MessageType::BulkRecord, "{name}");
        assert_eq!(msg.flags, 0x08, "{name}");
        assert_eq!(msg.id as u64, r["id"].as_u64().unwrap(), "{name}");
        assert!(!msg.is_terminal(), "{name}");
        assert_eq!(&msg.payload[..], &frame[9..], "{name}");
        let payload = hex(r["payload_hex"].as_str().unwrap());
        assert!(msg.payload.ends_with(&payload), "{name}");
        assert_eq!(
            msg.payload[0] as u64,
            r["bulk_kind"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            msg.payload[1] as u64,
            r["bulk_flow"].as_u64().unwrap(),
            "{name}"
        );
        bulk += 1;
    }
    assert_eq!(bulk, 5);
}

#[test]
fn constants_match_upstream() {
    use microsandbox_agent::protocol::*;
    let c = &vectors("protocol-0.3.14.json")["constants"];
    assert_eq!(c["FLAG_SESSION_START"], FLAG_SESSION_START as u64);
    assert_eq!(c["FLAG_SHUTDOWN"], FLAG_SHUTDOWN as u64);
    assert_eq!(c["FLAG_TERMINAL"], FLAG_TERMINAL as u64);
    assert_eq!(c["FRAME_HEADER_SIZE"], FRAME_HEADER_SIZE as u64);
    assert_eq!(c["FS_CHUNK_SIZE"], FS_CHUNK_SIZE as u64);
    assert_eq!(c["ID_RANGE_STEP"], LEGACY_ID_RANGE_STEP as u64);
    assert_eq!(c["MAX_CLIENTS"], LEGACY_MAX_CLIENTS as u64);
    assert_eq!(c["MAX_FRAME_SIZE"], MAX_FRAME_SIZE as u64);
    assert_eq!(c["PROTOCOL_VERSION"], LEGACY_GENERATION as u64);
    let c = &vectors("protocol-0.7.13.json")["constants"];
    assert_eq!(c["FLAG_BULK"], FLAG_BULK as u64);
    assert_eq!(c["LEGACY_ID_RANGE_STEP"], LEGACY_ID_RANGE_STEP as u64);
    assert_eq!(c["LEGACY_MAX_CLIENTS"], LEGACY_MAX_CLIENTS as u64);
    assert_eq!(c["AGENT_RELAY_ID_RANGE_STEP"], CURRENT_ID_RANGE_STEP as u64);
    assert_eq!(c["AGENT_RELAY_MAX_CLIENTS"], CURRENT_MAX_CLIENTS as u64);
    assert_eq!(c["PROTOCOL_VERSION"], MAX_GENERATION as u64);
    let defaults: payload::ExecLimits =
        serde_json::from_value(c["ExecLimits_default"].clone()).unwrap();
    assert_eq!(defaults, payload::ExecLimits::default());
}

#[test]
fn tolerant_decoding_matches_upstream() {
    // Extra keys, a different v, trailing bytes, and p as an integer array.
    let body = [
        0xa4, 0x61, 0x78, 0x00, // "x": 0
        0x61, 0x76, 0x05, // "v": 5
        0x61, 0x74, 0x70, b'c', b'o', b'r', b'e', b'.', b'e', b'x', b'e', b'c', b'.', b's', b't',
        b'd', b'o', b'u', b't', // "t": "core.exec.stdout"
        0x61, 0x70, 0x82, 0x18, 0xa0, 0x00, // "p": [160, 0]
        0xff, 0xff, // trailing garbage
    ];
    let mut frame = ((body.len() + 5) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0, 0, 0, 9, 0x01]);
    frame.extend_from_slice(&body);
    let msg = decode_frame(&frame);
    assert_eq!(msg.message_type, MessageType::ExecStdout);
    assert_eq!(msg.version, 5);
    assert_eq!(&msg.payload[..], &[0xa0, 0x00]);
    // A payload missing a required field names it.
    let err = payload::Data::decode(&Bytes::from_static(&[0xa0])).unwrap_err();
    assert!(err.to_string().contains("`data`"), "{err}");
    // Missing defaulted fields take their defaults.
    let p = Bytes::from_static(b"\xa1\x63cmd\x62ls");
    assert_eq!(
        payload::ExecRequest::decode(&p).unwrap(),
        payload::ExecRequest::new("ls")
    );
    // Unknown kinds are kept, not refused.
    let p = Bytes::from_static(b"\xa2\x64kind\x63new\x67message\x60");
    let e = payload::CoreError::decode(&p).unwrap();
    assert_eq!(e.kind, payload::CoreErrorKind::Unknown("new".into()));
    assert_eq!(e.to_bytes(), &p[..]);
}

/// The `user` key of 0.7.7+ FS requests: absent, null, or set, each written
/// back as it came, so a client can speak either dialect.
#[test]
fn fs_user_keys_keep_their_dialect() {
    use payload::{FsOp, FsRequest};
    let mkdir = |user| {
        FsRequest::new(FsOp::Mkdir {
            path: "/d".into(),
            mode: None,
            user,
        })
    };
    let pre_0_7_7 = mkdir(None).to_bytes();
    let null_user = mkdir(Some(None)).to_bytes();
    let alice = mkdir(Some(Some("alice".into()))).to_bytes();
    assert!(!pre_0_7_7.windows(4).any(|w| w == b"user"));
    assert!(null_user.ends_with(b"user\xf6"));
    assert!(alice.ends_with(b"user\x65alice"));
    for bytes in [pre_0_7_7, null_user, alice] {
        let decoded = FsRequest::decode(&Bytes::from(bytes.clone())).unwrap();
        assert_eq!(decoded.to_bytes(), bytes);
    }
}
