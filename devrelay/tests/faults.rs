//! Every `--fault` mode sends exactly the bytes it promises.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use microsandbox_agent::protocol::payload::legacy::{FsOp, FsResponse};
use microsandbox_agent::protocol::payload::{Data, ExecStarted, Payload};
use microsandbox_agent::protocol::{
    FrameDecoder, FrameHeader, Message, MessageType, ProtocolError, LEGACY_ID_RANGE_STEP,
    MAX_FRAME_SIZE,
};

const QUIET_WAIT: Duration = Duration::from_millis(300);

fn faulty(mode: &str) -> Relay {
    Relay::start_with(mode, &["--fault", mode, "--quiet"])
}

/// Reads one whole frame's bytes (length prefix included).
fn read_frame_bytes(stream: &mut UnixStream) -> Vec<u8> {
    let mut bytes = read_up_to(stream, 4);
    assert_eq!(bytes.len(), 4, "a length prefix");
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let rest = read_up_to(stream, len);
    assert_eq!(rest.len(), len, "the whole frame");
    bytes.extend(rest);
    bytes
}

/// Decodes `bytes`, which must be exactly one whole frame.
fn decode_frame(bytes: &[u8]) -> Result<Message, ProtocolError> {
    let mut d = FrameDecoder::new();
    d.extend(bytes);
    let frame = d.next_frame().unwrap().unwrap();
    assert_eq!(d.buffered(), 0);
    frame.decode()
}

fn decode_one(bytes: &[u8]) -> Message {
    decode_frame(bytes).unwrap()
}

/// Reads `[id_offset][ready frame]` and returns the offset and the ready
/// frame's bytes.
fn read_handshake(stream: &mut UnixStream) -> (u32, Vec<u8>) {
    let offset = read_up_to(stream, 4);
    assert_eq!(offset.len(), 4);
    let ready = read_frame_bytes(stream);
    let m = decode_one(&ready);
    assert_eq!((m.id, m.message_type), (0, MessageType::Ready));
    (u32::from_be_bytes(offset.try_into().unwrap()), ready)
}

fn send_exec(stream: &mut UnixStream, id: u32, cmd: &str, args: &[&str]) {
    stream
        .write_all(&frame(
            MessageType::ExecRequest,
            id,
            &exec_req(cmd, args).to_bytes(),
        ))
        .unwrap();
}

fn send_stat(stream: &mut UnixStream, id: u32) {
    let req = microsandbox_agent::protocol::payload::legacy::FsRequest {
        op: FsOp::Stat { path: "/".into() },
    };
    stream
        .write_all(&frame(MessageType::FsRequest, id, &req.to_bytes()))
        .unwrap();
}

fn recv_message(stream: &mut UnixStream) -> Message {
    decode_one(&read_frame_bytes(stream))
}

#[test]
fn oversize_frame() {
    let relay = faulty("oversize-frame");
    let mut s = relay.raw_connect();
    read_handshake(&mut s);
    let bytes = read_up_to(&mut s, 4 + 16);
    assert_eq!(bytes[..4], (MAX_FRAME_SIZE + 1).to_be_bytes());
    assert_eq!(bytes.len(), 20);
    assert_eq!(
        FrameHeader::parse(&bytes),
        Err(ProtocolError::FrameTooLarge(MAX_FRAME_SIZE + 1))
    );
    assert!(stays_silent(&mut s, QUIET_WAIT), "kept open, nothing more");
}

#[test]
fn truncated_frame() {
    let relay = faulty("truncated-frame");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    assert_eq!(rest.len(), (4 + len) / 2, "half a frame, then EOF");
    assert_eq!(rest[4..8], (offset + 1).to_be_bytes());
}

#[test]
fn short_frame() {
    let relay = faulty("short-frame");
    let mut s = relay.raw_connect();
    read_handshake(&mut s);
    let bytes = read_up_to(&mut s, 7);
    assert_eq!(bytes, [0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(
        FrameHeader::parse(&bytes),
        Err(ProtocolError::FrameTooShort(3))
    );
    assert!(stays_silent(&mut s, QUIET_WAIT));
}

#[test]
fn bad_cbor() {
    let relay = faulty("bad-cbor");
    let mut s = relay.raw_connect();
    read_handshake(&mut s);
    let bytes = read_frame_bytes(&mut s);
    assert_eq!(bytes, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    assert!(matches!(
        decode_frame(&bytes),
        Err(ProtocolError::BadBody(_))
    ));
    assert!(stays_silent(&mut s, QUIET_WAIT));
}

#[test]
fn bad_body_shape() {
    let relay = faulty("bad-body-shape");
    let mut s = relay.raw_connect();
    read_handshake(&mut s);
    let bytes = read_frame_bytes(&mut s);
    assert_eq!(bytes[4..9], [0, 0, 0, 0, 0], "id 0, flags 0");
    assert_eq!(bytes[9] >> 5, 4, "valid CBOR: an array");
    assert!(matches!(
        decode_frame(&bytes),
        Err(ProtocolError::BadBody(_))
    ));
    assert!(stays_silent(&mut s, QUIET_WAIT));
}

#[test]
fn unknown_type_precedes_every_request() {
    let relay = faulty("unknown-type");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    send_exec(&mut s, offset + 1, "echo", &["hi"]);
    let bogus = recv_message(&mut s);
    assert_eq!(
        bogus.message_type,
        MessageType::Unknown("core.bogus.type".into())
    );
    assert_eq!((bogus.id, bogus.flags), (offset + 1, 0));
    // Then the exec is served normally.
    let mut types = Vec::new();
    loop {
        let m = recv_message(&mut s);
        assert_eq!(m.id, offset + 1);
        types.push(m.message_type.clone());
        if m.message_type == MessageType::ExecExited {
            break;
        }
    }
    assert_eq!(
        types,
        [
            MessageType::ExecStarted,
            MessageType::ExecStdout,
            MessageType::ExecExited
        ]
    );
    send_stat(&mut s, offset + 2);
    let bogus = recv_message(&mut s);
    assert_eq!(
        (bogus.id, bogus.message_type),
        (offset + 2, MessageType::Unknown("core.bogus.type".into()))
    );
    let resp = recv_message(&mut s);
    assert_eq!(
        (resp.id, resp.message_type.clone()),
        (offset + 2, MessageType::FsResponse)
    );
    assert!(FsResponse::decode(&resp.payload).unwrap().ok);
}

#[test]
fn out_of_range_ids_precede_every_request() {
    let relay = faulty("out-of-range-id");
    // Slot 1, so that "outside the range" is not just "above it from 0".
    let _slot0 = relay.raw_connect();
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    assert_eq!(offset, LEGACY_ID_RANGE_STEP);
    let outside = offset + LEGACY_ID_RANGE_STEP + 1;

    send_exec(&mut s, offset + 1, "true", &[]);
    let first = recv_message(&mut s);
    assert_eq!(
        (first.id, first.message_type.clone()),
        (outside, MessageType::ExecStdout)
    );
    Data::decode(&first.payload).expect("a valid stdout payload");
    let second = recv_message(&mut s);
    assert_eq!(
        (second.id, second.message_type),
        (0, MessageType::ExecStdout)
    );
    let started = recv_message(&mut s);
    assert_eq!(
        (started.id, started.message_type),
        (offset + 1, MessageType::ExecStarted)
    );
    let exited = recv_message(&mut s);
    assert_eq!(exited.message_type, MessageType::ExecExited);

    send_stat(&mut s, offset + 2);
    let first = recv_message(&mut s);
    assert_eq!(
        (first.id, first.message_type.clone()),
        (outside, MessageType::FsResponse)
    );
    assert!(FsResponse::decode(&first.payload).unwrap().ok);
    assert_eq!(recv_message(&mut s).id, 0);
    let real = recv_message(&mut s);
    assert_eq!(
        (real.id, real.message_type),
        (offset + 2, MessageType::FsResponse)
    );
}

#[test]
fn out_of_range_id_for_the_last_slot() {
    let relay = faulty("out-of-range-id");
    let mut streams: Vec<UnixStream> = (0..16).map(|_| relay.raw_connect()).collect();
    let mut last = streams.pop().unwrap();
    let (offset, _) = read_handshake(&mut last);
    assert_eq!(offset, 15 * LEGACY_ID_RANGE_STEP);
    send_stat(&mut last, offset + 1);
    let first = recv_message(&mut last);
    let expected = offset.wrapping_add(LEGACY_ID_RANGE_STEP).wrapping_add(1);
    assert_eq!(first.id, expected);
    assert!(first.id < offset || first.id >= offset + LEGACY_ID_RANGE_STEP);
}

#[test]
fn wrong_payload() {
    let relay = faulty("wrong-payload");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    send_exec(&mut s, offset + 1, "echo", &["never", "runs"]);
    let started = recv_message(&mut s);
    assert_eq!(started.message_type, MessageType::ExecStarted);
    assert_eq!(ExecStarted::decode(&started.payload).unwrap().pid, 0);
    let bad = recv_message(&mut s);
    assert_eq!(
        (bad.id, bad.message_type.clone()),
        (offset + 1, MessageType::ExecStdout)
    );
    assert_eq!(&bad.payload[..], [0xa0]);
    assert!(Data::decode(&bad.payload).is_err());
    assert!(stays_silent(&mut s, QUIET_WAIT));

    send_stat(&mut s, offset + 2);
    let resp = recv_message(&mut s);
    assert_eq!(resp.message_type, MessageType::FsResponse);
    assert_eq!(resp.flags, MessageType::FsResponse.flags());
    assert_eq!(&resp.payload[..], b"\xa1\x62ok\x63yes");
    assert!(FsResponse::decode(&resp.payload).is_err());
}

#[test]
fn no_handshake() {
    let relay = faulty("no-handshake");
    let mut s = relay.raw_connect();
    assert!(stays_silent(&mut s, QUIET_WAIT));
    // A client that gives up frees its slot: 16 more fit after it leaves.
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    let mut others: Vec<UnixStream> = (0..16).map(|_| relay.raw_connect()).collect();
    assert!(wait_until(TIMEOUT, || stays_silent(
        others.last_mut().unwrap(),
        Duration::from_millis(50)
    )));
}

#[test]
fn stall_after_id() {
    let relay = faulty("stall-after-id");
    let _first = relay.raw_connect();
    let mut s = relay.raw_connect();
    assert_eq!(read_up_to(&mut s, 4), LEGACY_ID_RANGE_STEP.to_be_bytes());
    assert!(stays_silent(&mut s, QUIET_WAIT));
}

#[test]
fn not_ready_first() {
    let relay = faulty("not-ready-first");
    let mut s = relay.raw_connect();
    assert_eq!(read_up_to(&mut s, 4), [0, 0, 0, 0]);
    let m = recv_message(&mut s);
    assert_eq!(m.message_type, MessageType::ExecStdout);
    assert!(stays_silent(&mut s, QUIET_WAIT));
}

#[test]
fn close_in_handshake() {
    let relay = faulty("close-in-handshake");
    let mut s = relay.raw_connect();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all[..4], [0, 0, 0, 0]);
    let len = u32::from_be_bytes(all[4..8].try_into().unwrap()) as usize;
    assert!(len > 20);
    assert_eq!(
        all.len() - 4,
        (4 + len) / 2,
        "half the ready frame, then EOF"
    );
    // The relay goes on accepting.
    let mut again = relay.raw_connect();
    assert_eq!(read_up_to(&mut again, 4).len(), 4);
}

#[test]
fn close_mid_exec() {
    let relay = faulty("close-mid-exec");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    send_exec(&mut s, offset + 1, "sleep", &["10"]);
    let started = recv_message(&mut s);
    assert_eq!(
        (started.id, started.message_type),
        (offset + 1, MessageType::ExecStarted)
    );
    let out = recv_message(&mut s);
    assert_eq!(out.message_type, MessageType::ExecStdout);
    assert!(!Data::decode(&out.payload).unwrap().data.is_empty());
    assert!(sees_eof(&mut s, TIMEOUT));
    // The relay keeps running and the slot is reusable.
    assert!(wait_until(TIMEOUT, || {
        let mut again = relay.raw_connect();
        read_handshake(&mut again).0 == 0
    }));
}

#[test]
fn flood() {
    let relay = faulty("flood");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    send_exec(&mut s, offset + 1, "true", &[]);
    assert_eq!(recv_message(&mut s).message_type, MessageType::ExecStarted);
    for seq in 0..200u64 {
        let m = recv_message(&mut s);
        assert_eq!(
            (m.id, m.message_type.clone()),
            (offset + 1, MessageType::ExecStdout)
        );
        let data = Data::decode(&m.payload).unwrap().data;
        assert_eq!(data.len(), 64 * 1024);
        assert_eq!(&data[..8], &seq.to_be_bytes(), "frames numbered in order");
        assert!(data[8..].iter().all(|&b| b == b'f'));
    }
    drop(s);
    // The flood stops with the client; the relay serves the next one.
    assert!(wait_until(TIMEOUT, || {
        let mut again = relay.raw_connect();
        read_handshake(&mut again).0 == 0
    }));
}

#[test]
fn stop_reading() {
    let relay = faulty("stop-reading");
    let mut s = relay.raw_connect();
    let (offset, _) = read_handshake(&mut s);
    let request = frame(
        MessageType::ExecRequest,
        offset + 1,
        &exec_req("echo", &["x"]).to_bytes(),
    );
    s.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let blocked = loop {
        match s.write(&request) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(e) => panic!("write failed: {e}"),
        }
        if written > 256 * 1024 * 1024 {
            break false;
        }
    };
    assert!(blocked, "writes block once the socket buffers are full");
    s.set_nonblocking(false).unwrap();
    assert!(stays_silent(&mut s, QUIET_WAIT), "nothing was served");
    // Leaving frees the slot even though the relay never read.
    drop(s);
    assert!(wait_until(TIMEOUT, || {
        let mut again = relay.raw_connect();
        read_handshake(&mut again).0 == 0
    }));
}

/// Every fault mode on the current profiles: the handshake (or its faulty
/// part) has the current form `[id_start][id_end_exclusive]`, and every
/// frame the fault writes carries the profile's generation.
#[test]
fn faults_use_the_current_handshake_form_and_generation() {
    use microsandbox_agent::protocol::CURRENT_ID_RANGE_STEP;
    let prologue: Vec<u8> = [1u32, CURRENT_ID_RANGE_STEP]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    for (profile, v) in [("0.6.14", 7u8), ("0.7.13", 10)] {
        let start = |mode: &str| {
            let relay = Relay::start_profile(mode, profile, &["--fault", mode, "--quiet"]);
            let stream = relay.raw_connect();
            (relay, stream)
        };
        let read_ready = |s: &mut UnixStream| {
            assert_eq!(read_up_to(s, 8), prologue, "{profile}: prologue");
            let ready = recv_message(s);
            assert_eq!((ready.message_type, ready.version), (MessageType::Ready, v));
        };
        // The handshake faults.
        let (_r, mut s) = start("no-handshake");
        assert!(stays_silent(&mut s, QUIET_WAIT));
        let (_r, mut s) = start("stall-after-id");
        assert_eq!(read_up_to(&mut s, 8), prologue);
        assert!(stays_silent(&mut s, QUIET_WAIT));
        let (_r, mut s) = start("not-ready-first");
        assert_eq!(read_up_to(&mut s, 8), prologue);
        let m = recv_message(&mut s);
        assert_eq!((m.message_type, m.version), (MessageType::ExecStdout, v));
        let (_r, mut s) = start("close-in-handshake");
        let got = read_up_to(&mut s, 4096);
        assert!(got.len() > 12 && got.starts_with(&prologue), "{profile}");
        // Faults right after a whole handshake.
        for mode in [
            "oversize-frame",
            "short-frame",
            "bad-cbor",
            "bad-body-shape",
            "stop-reading",
        ] {
            let (_r, mut s) = start(mode);
            read_ready(&mut s);
        }
        let (_r, mut s) = start("truncated-frame");
        read_ready(&mut s);
        let half = read_up_to(&mut s, 4096);
        assert_eq!(&half[4..8], &1u32.to_be_bytes(), "first id of the range");
        assert_eq!(half[12], v);
        // Faults in answers to requests.
        let exec = frame_v(
            v,
            MessageType::ExecRequest,
            1,
            &exec_req("true", &[]).to_bytes(),
        );
        for mode in ["unknown-type", "wrong-payload", "close-mid-exec", "flood"] {
            let (_r, mut s) = start(mode);
            read_ready(&mut s);
            s.write_all(&exec).unwrap();
            let first = read_frame_bytes(&mut s);
            assert_eq!(first[12], v, "{profile} {mode}: v of the first answer");
        }
        let (_r, mut s) = start("out-of-range-id");
        read_ready(&mut s);
        s.write_all(&exec).unwrap();
        let outside = recv_message(&mut s);
        assert_eq!(
            (outside.id, outside.version),
            (CURRENT_ID_RANGE_STEP + 1, v)
        );
        assert_eq!(recv_message(&mut s).id, 0);
    }
}
