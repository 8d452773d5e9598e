//! Generation-10 exec flow control on 0.7.13: the output window and its
//! acknowledgements, the held exit code, the stdin rules and acks, and
//! admission.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use microsandbox_agent::protocol::payload::{
    Data, ExecExited, ExecFailed, ExecFailureKind, ExecStarted, ExecStdinAck, Payload,
};
use microsandbox_agent::protocol::{Message, MessageType};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Re-encodes a received message as its sender did.
fn encoded(m: &Message) -> Vec<u8> {
    frame_v(m.version, m.message_type.clone(), m.id, &m.payload)
}

fn relay_and_client(tag: &str) -> (Relay, Client) {
    let relay = Relay::start_profile(tag, "0.7.13", &["--quiet"]);
    let c = relay.connect();
    assert_eq!((c.v, c.auto_ack), (10, true));
    (relay, c)
}

fn started_pid(c: &mut Client, id: u32) -> u32 {
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::ExecStarted));
    ExecStarted::decode(&m.payload).unwrap().pid
}

/// Receives until nothing arrives for `quiet`; returns the frames.
fn drain_until_quiet(c: &mut Client, quiet: Duration) -> Vec<Message> {
    c.stream.set_read_timeout(Some(quiet)).unwrap();
    let mut frames = Vec::new();
    while let Some(m) = c.try_recv() {
        frames.push(m);
    }
    c.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    frames
}

fn charge(frames: &[Message]) -> u64 {
    frames
        .iter()
        .filter(|m| {
            matches!(
                m.message_type,
                MessageType::ExecStdout | MessageType::ExecStderr
            )
        })
        .map(|m| Data::decode(&m.payload).unwrap().data.len() as u64 + 256)
        .sum()
}

#[test]
fn the_vectors_flow_control_example() {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/protocol-0.7.13.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let steps = vectors["flow_control_example"]["exec_steps"]
        .as_array()
        .unwrap();
    let frame_of = |i: usize| unhex(steps[i]["frame_hex"].as_str().unwrap());
    let relay = Relay::start_profile("example", "0.7.13", &["--quiet"]);
    // The example runs on id 33554433: the second id of slot 1.
    let _slot0 = relay.connect();
    let mut c = relay.connect();
    let _ = c.next_id();
    let id = c.next_id();
    assert_eq!(id, 33554433);
    // Our command, on the example's id and v: it takes 64 KiB of stdin, then
    // writes a, bb, ccc as separate chunks.
    let script = "head -c 65536 >/dev/null; printf a; sleep 0.3; printf bb; sleep 0.3; printf ccc";
    c.send_payload(MessageType::ExecRequest, id, &sh(script));
    let started = c.recv();
    assert_eq!((started.id, started.version, started.flags), (id, 10, 0));
    assert_eq!(started.message_type, MessageType::ExecStarted);
    // Four 16 KiB stdin chunks, byte for byte the example's.
    for i in 2..=5 {
        c.stream.write_all(&frame_of(i)).unwrap();
    }
    let mut acks = Vec::new();
    let mut stdout = Vec::new();
    while stdout.len() < 3 {
        let m = c.recv();
        match m.message_type {
            MessageType::ExecStdinAck => {
                let consumed = ExecStdinAck::decode(&m.payload).unwrap().consumed;
                if consumed == 32768 {
                    assert_eq!(encoded(&m), frame_of(6), "stdin.ack frame");
                }
                acks.push(consumed);
            }
            MessageType::ExecStdout => {
                let data = Data::decode(&m.payload).unwrap().data;
                stdout.push(data.to_vec());
                let expected = frame_of([7, 8, 10][stdout.len() - 1]);
                assert_eq!(encoded(&m), expected, "stdout frame {}", stdout.len());
                if stdout.len() == 2 {
                    // (1+256)+(2+256): the example's first ack.
                    c.stream.write_all(&frame_of(9)).unwrap();
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(acks, [16384, 32768, 49152, 65536], "cumulative, per write");
    assert_eq!(stdout, [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
    // The exit code waits for the last acknowledgement.
    assert!(
        stays_silent(&mut c.stream, Duration::from_millis(500)),
        "exited held"
    );
    c.stream.write_all(&frame_of(11)).unwrap();
    let exited = c.recv();
    assert_eq!(encoded(&exited), frame_of(13), "exited frame");
    // EOF afterwards is late stdin: dropped, no disconnect.
    c.stream.write_all(&frame_of(12)).unwrap();
    assert!(stays_silent(&mut c.stream, Duration::from_millis(200)));
    assert_eq!(
        c.exec(&exec_req("echo", &["still"])).stdout_text(),
        "still\n"
    );
}

#[test]
fn output_stops_at_the_window_and_resumes_with_acks() {
    let (_relay, mut c) = relay_and_client("window");
    let total = 3_000_000usize;
    let id = c.start_exec(&sh(&format!("head -c {total} /dev/zero")));
    started_pid(&mut c, id);
    let mut received = 0usize;
    let mut acked = 0u64;
    let mut exited = None;
    let mut rounds = 0;
    while exited.is_none() {
        let frames = drain_until_quiet(&mut c, Duration::from_millis(400));
        let unacked = charge(&frames);
        assert!(
            unacked <= 1024 * 1024,
            "at most output_limit unacknowledged: {unacked}"
        );
        for m in &frames {
            match &m.message_type {
                MessageType::ExecStdout => {
                    let n = Data::decode(&m.payload).unwrap().data.len();
                    assert!(n <= 16 * 1024, "chunk of {n}");
                    received += n;
                }
                MessageType::ExecExited => {
                    exited = Some(ExecExited::decode(&m.payload).unwrap().code)
                }
                other => panic!("unexpected {other}"),
            }
        }
        if exited.is_none() {
            assert!(!frames.is_empty(), "output resumes after an ack");
            if rounds == 0 {
                // The first window fills up and stops there.
                assert!(
                    unacked > 1024 * 1024 - (16 * 1024 + 256),
                    "window full: {unacked}"
                );
            }
            acked += unacked;
            c.ack_output(id, acked);
        }
        rounds += 1;
    }
    assert_eq!(received, total);
    assert_eq!(exited, Some(0));
    assert!(
        rounds >= 3,
        "the window stopped the output: {rounds} rounds"
    );
}

#[test]
fn the_exit_code_waits_for_every_ack() {
    let (_relay, mut c) = relay_and_client("held");
    let id = c.start_exec(&exec_req("echo", &["hi"]));
    started_pid(&mut c, id);
    let out = c.recv();
    assert_eq!(out.message_type, MessageType::ExecStdout);
    assert!(
        stays_silent(&mut c.stream, Duration::from_millis(700)),
        "no exit before the ack"
    );
    c.ack_output(id, 3 + 255);
    assert!(
        stays_silent(&mut c.stream, Duration::from_millis(300)),
        "a partial ack is not enough"
    );
    c.ack_output(id, 3 + 256);
    let exited = c.recv();
    assert_eq!(
        (exited.id, exited.message_type),
        (id, MessageType::ExecExited)
    );
}

/// `bad` makes the relay cut the client off; the controlled exec dies.
fn violation_disconnects(tag: &str, script: &str, bad: impl FnOnce(&mut Client, u32)) {
    let (relay, mut c) = relay_and_client(tag);
    let id = c.start_exec(&sh(script));
    let pid = started_pid(&mut c, id);
    bad(&mut c, id);
    assert!(sees_eof(&mut c.stream, TIMEOUT), "{tag}: disconnected");
    assert!(
        wait_until(TIMEOUT, || !process_alive(pid)),
        "{tag}: exec killed"
    );
    let mut other = relay.connect();
    assert_eq!(other.exec(&exec_req("echo", &["ok"])).stdout_text(), "ok\n");
}

#[test]
fn acks_that_go_backwards_or_beyond_what_was_sent_disconnect() {
    violation_disconnects("ack-back", "echo hi; sleep 30", |c, id| {
        assert_eq!(c.recv().message_type, MessageType::ExecStdout);
        c.ack_output(id, 259);
        c.ack_output(id, 100);
    });
    violation_disconnects("ack-above", "echo hi; sleep 30", |c, id| {
        assert_eq!(c.recv().message_type, MessageType::ExecStdout);
        c.ack_output(id, 260);
    });
}

#[test]
fn stdin_rules_disconnect() {
    violation_disconnects("stdin-eof", "sleep 30", |c, id| {
        c.send_data(MessageType::ExecStdin, id, b"");
        c.send_data(MessageType::ExecStdin, id, b"late");
    });
    violation_disconnects("stdin-big", "sleep 30", |c, id| {
        c.send_data(MessageType::ExecStdin, id, &vec![b'x'; 16 * 1024 + 1]);
    });
    violation_disconnects("stdin-limit", "sleep 30", |c, id| {
        // The child never reads: its pipe takes 64 KiB, then nothing.
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..4 {
            c.send_data(MessageType::ExecStdin, id, &chunk);
        }
        let mut consumed = 0;
        while consumed < 65536 {
            let m = c.recv();
            if m.message_type == MessageType::ExecStdinAck {
                consumed = ExecStdinAck::decode(&m.payload).unwrap().consumed;
            }
        }
        // 64 KiB more may be in flight; one byte beyond is a violation.
        for _ in 0..4 {
            c.send_data(MessageType::ExecStdin, id, &chunk);
        }
        c.send_data(MessageType::ExecStdin, id, b"x");
    });
}

#[test]
fn stdin_before_started_disconnects() {
    let (relay, mut c) = relay_and_client("early-stdin");
    let id = c.next_id();
    // Request and stdin in one write: the stdin is read before the relay
    // has sent core.exec.started.
    let mut bytes = frame_v(
        10,
        MessageType::ExecRequest,
        id,
        &exec_req("cat", &[]).to_bytes(),
    );
    bytes.extend(frame_v(
        10,
        MessageType::ExecStdin,
        id,
        &Data {
            data: b"too soon".to_vec().into(),
        }
        .to_bytes(),
    ));
    c.stream.write_all(&bytes).unwrap();
    assert!(sees_eof(&mut c.stream, TIMEOUT));
    // The same on the legacy path (v = 7) is fine.
    let mut old = relay.connect();
    old.at_most_gen7();
    let id = old.next_id();
    let mut bytes = frame_v(
        7,
        MessageType::ExecRequest,
        id,
        &exec_req("cat", &[]).to_bytes(),
    );
    for data in [&b"in time"[..], b""] {
        bytes.extend(frame_v(
            7,
            MessageType::ExecStdin,
            id,
            &Data {
                data: data.to_vec().into(),
            }
            .to_bytes(),
        ));
    }
    old.stream.write_all(&bytes).unwrap();
    assert_eq!(old.finish_exec(id).stdout_text(), "in time");
}

#[test]
fn at_most_128_controlled_execs_run_at_once() {
    let (relay, mut a) = relay_and_client("admission");
    let mut b = relay.connect();
    let mut ids = Vec::new();
    for client in [&mut a, &mut b] {
        for _ in 0..64 {
            let id = client.start_exec(&exec_req("sleep", &["30"]));
            started_pid(client, id);
            ids.push(id);
        }
    }
    let id = b.start_exec(&exec_req("true", &[]));
    let m = b.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::ExecFailed));
    let failed = ExecFailed::decode(&m.payload).unwrap();
    assert_eq!(failed.kind, ExecFailureKind::ResourceLimit);
    assert_eq!(failed.message, "active execution limit reached");
    assert_eq!(failed.stage.as_deref(), Some("execution_admission"));
    // Legacy-path execs are not counted.
    let mut legacy = relay.connect();
    legacy.at_most_gen7();
    assert_eq!(
        legacy.exec(&exec_req("echo", &["legacy"])).stdout_text(),
        "legacy\n"
    );
    // A client leaving frees its 64 slots.
    drop(a);
    assert!(wait_until(TIMEOUT, || {
        let id = b.start_exec(&exec_req("true", &[]));
        b.finish_exec(id).failed.is_none()
    }));
}
