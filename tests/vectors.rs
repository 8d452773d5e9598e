//! Every frame produced by the upstream 0.3.14 encoder decodes to the values
//! recorded beside it and re-encodes to the identical bytes.

use bytes::Bytes;
use microsandbox_agent::protocol::payload::legacy::*;
use microsandbox_agent::protocol::payload::{
    Data, ExecExited, ExecRequest, ExecResize, ExecSignal, ExecStarted, Payload, Ready, Rlimit,
};
use microsandbox_agent::protocol::{
    encode_frame, parse_handshake_offset, FrameDecoder, MessageType, LEGACY_ID_RANGE_STEP,
};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/protocol-0.3.14.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn data_of(p: &Value) -> Bytes {
    Bytes::from(hex(p["data_hex"].as_str().unwrap()))
}

fn entry(v: &Value) -> FsEntryInfo {
    FsEntryInfo {
        path: v["path"].as_str().unwrap().into(),
        kind: v["kind"].as_str().unwrap().into(),
        size: v["size"].as_u64().unwrap(),
        mode: v["mode"].as_u64().unwrap() as u32,
        modified: v["modified"].as_i64(),
    }
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

/// Checks the typed decoding against the JSON and returns the re-encoding.
fn check_payload(t: &MessageType, json: &Value, bytes: &Bytes) -> Vec<u8> {
    match t {
        MessageType::Ready => {
            let p = Ready::decode(bytes).unwrap();
            assert_eq!(
                p,
                Ready {
                    boot_time_ns: json["boot_time_ns"].as_u64().unwrap(),
                    init_time_ns: json["init_time_ns"].as_u64().unwrap(),
                    ready_time_ns: json["ready_time_ns"].as_u64().unwrap(),
                    ..Ready::default()
                }
            );
            p.to_bytes()
        }
        MessageType::Shutdown => {
            assert!(json.is_null());
            Vec::new()
        }
        MessageType::ExecRequest => {
            let p = ExecRequest::decode(bytes).unwrap();
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().into())
                    .collect()
            };
            let expected = ExecRequest {
                cmd: json["cmd"].as_str().unwrap().into(),
                args: strs(&json["args"]),
                env: strs(&json["env"]),
                cwd: opt_str(&json["cwd"]),
                user: opt_str(&json["user"]),
                tty: json["tty"].as_bool().unwrap(),
                rows: json["rows"].as_u64().unwrap() as u16,
                cols: json["cols"].as_u64().unwrap() as u16,
                rlimits: json["rlimits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| Rlimit {
                        resource: l["resource"].as_str().unwrap().into(),
                        soft: l["soft"].as_u64().unwrap(),
                        hard: l["hard"].as_u64().unwrap(),
                    })
                    .collect(),
            };
            assert_eq!(p, expected);
            p.to_bytes()
        }
        MessageType::ExecStarted => {
            let p = ExecStarted::decode(bytes).unwrap();
            assert_eq!(p.pid as u64, json["pid"].as_u64().unwrap());
            p.to_bytes()
        }
        MessageType::ExecStdin
        | MessageType::ExecStdout
        | MessageType::ExecStderr
        | MessageType::FsData => {
            let p = Data::decode(bytes).unwrap();
            assert_eq!(p.data, data_of(json));
            assert_eq!(Data::encoded_len(p.data.len()), bytes.len());
            p.to_bytes()
        }
        MessageType::ExecExited => {
            let p = ExecExited::decode(bytes).unwrap();
            assert_eq!(p.code as i64, json["code"].as_i64().unwrap());
            p.to_bytes()
        }
        MessageType::ExecResize => {
            let p = ExecResize::decode(bytes).unwrap();
            assert_eq!(p.rows as u64, json["rows"].as_u64().unwrap());
            assert_eq!(p.cols as u64, json["cols"].as_u64().unwrap());
            p.to_bytes()
        }
        MessageType::ExecSignal => {
            let p = ExecSignal::decode(bytes).unwrap();
            assert_eq!(p.signal as i64, json["signal"].as_i64().unwrap());
            p.to_bytes()
        }
        MessageType::FsRequest => {
            let p = FsRequest::decode(bytes).unwrap();
            let (name, f) = json["op"].as_object().unwrap().iter().next().unwrap();
            let path = || f["path"].as_str().unwrap().to_string();
            let src = || f["src"].as_str().unwrap().to_string();
            let dst = || f["dst"].as_str().unwrap().to_string();
            let expected = match name.as_str() {
                "Stat" => FsOp::Stat { path: path() },
                "List" => FsOp::List { path: path() },
                "Read" => FsOp::Read { path: path() },
                "Write" => FsOp::Write {
                    path: path(),
                    mode: f["mode"].as_u64().map(|m| m as u32),
                },
                "Mkdir" => FsOp::Mkdir { path: path() },
                "Remove" => FsOp::Remove { path: path() },
                "RemoveDir" => FsOp::RemoveDir { path: path() },
                "Copy" => FsOp::Copy {
                    src: src(),
                    dst: dst(),
                },
                "Rename" => FsOp::Rename {
                    src: src(),
                    dst: dst(),
                },
                other => panic!("unexpected op {other}"),
            };
            assert_eq!(p.op, expected);
            p.to_bytes()
        }
        MessageType::FsResponse => {
            let p = FsResponse::decode(bytes).unwrap();
            assert_eq!(p.ok, json["ok"].as_bool().unwrap());
            assert_eq!(p.error, opt_str(&json["error"]));
            let data = &json["data"];
            let expected = if data.is_null() {
                None
            } else if let Some(s) = data.get("Stat") {
                Some(FsResponseData::Stat(entry(s)))
            } else {
                Some(FsResponseData::List(
                    data["List"].as_array().unwrap().iter().map(entry).collect(),
                ))
            };
            assert_eq!(p.data, expected);
            p.to_bytes()
        }
        other => panic!("vector with unexpected type {other}"),
    }
}

#[test]
fn every_vector_decodes_and_reencodes_byte_exact() {
    let v = vectors();
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 28);
    for m in messages {
        let name = m["name"].as_str().unwrap();
        let frame = hex(m["frame_hex"].as_str().unwrap());
        let mut d = FrameDecoder::new();
        d.extend(&frame);
        let msg = d.next_frame().unwrap().unwrap().decode().unwrap();
        assert_eq!(d.buffered(), 0, "{name}");
        assert_eq!(msg.id as u64, m["id"].as_u64().unwrap(), "{name}");
        assert_eq!(msg.flags as u64, m["flags"].as_u64().unwrap(), "{name}");
        assert_eq!(
            msg.message_type.as_str(),
            m["type"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(msg.flags, msg.message_type.flags(), "{name}");
        let payload_hex = hex(m["payload_cbor_hex"].as_str().unwrap());
        assert_eq!(&msg.payload[..], &payload_hex[..], "{name}");

        let reencoded_payload = check_payload(&msg.message_type, &m["payload"], &msg.payload);
        assert_eq!(
            reencoded_payload, payload_hex,
            "{name}: payload re-encoding"
        );

        let mut out = Vec::new();
        encode_frame(
            &mut out,
            msg.message_type.as_str(),
            msg.id,
            msg.message_type.flags(),
            1,
            &reencoded_payload,
        );
        assert_eq!(out, frame, "{name}: frame re-encoding");
    }
}

#[test]
fn handshake_vector_parses() {
    let v = vectors();
    let hs = hex(v["handshake_slot3_hex"].as_str().unwrap());
    assert_eq!(parse_handshake_offset(&hs), Some(3 * LEGACY_ID_RANGE_STEP));
    let mut d = FrameDecoder::new();
    d.extend(&hs[4..]);
    let msg = d.next_frame().unwrap().unwrap().decode().unwrap();
    assert_eq!(msg.message_type, MessageType::Ready);
    let ready = Ready::decode(&msg.payload).unwrap();
    assert_eq!(
        (ready.boot_time_ns, ready.init_time_ns, ready.ready_time_ns),
        (111, 222, 333)
    );
}

#[test]
fn constants_match_upstream() {
    use microsandbox_agent::protocol::*;
    let c = &vectors()["constants"];
    assert_eq!(c["FLAG_SESSION_START"], FLAG_SESSION_START as u64);
    assert_eq!(c["FLAG_SHUTDOWN"], FLAG_SHUTDOWN as u64);
    assert_eq!(c["FLAG_TERMINAL"], FLAG_TERMINAL as u64);
    assert_eq!(c["FRAME_HEADER_SIZE"], FRAME_HEADER_SIZE as u64);
    assert_eq!(c["FS_CHUNK_SIZE"], FS_CHUNK_SIZE as u64);
    assert_eq!(c["ID_RANGE_STEP"], LEGACY_ID_RANGE_STEP as u64);
    assert_eq!(c["MAX_CLIENTS"], LEGACY_MAX_CLIENTS as u64);
    assert_eq!(c["MAX_FRAME_SIZE"], MAX_FRAME_SIZE as u64);
    assert_eq!(c["PROTOCOL_VERSION"], LEGACY_GENERATION as u64);
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
    let mut d = FrameDecoder::new();
    d.extend(&frame);
    let msg = d.next_frame().unwrap().unwrap().decode().unwrap();
    assert_eq!(msg.message_type, MessageType::ExecStdout);
    assert_eq!(&msg.payload[..], &[0xa0, 0x00]);
    // A payload missing a required field names it.
    let err = Data::decode(&Bytes::from_static(&[0xa0])).unwrap_err();
    assert!(err.to_string().contains("`data`"), "{err}");
    // Missing defaulted fields take their defaults.
    let p = b"\xa1\x63cmd\x62ls".to_vec();
    assert_eq!(
        ExecRequest::decode(&Bytes::from(p)).unwrap(),
        ExecRequest::new("ls")
    );
}
