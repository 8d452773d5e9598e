//! The relay's own rules: what makes it disconnect a client (killing that
//! client's processes) on each profile, and what it lets through.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use microsandbox_agent::protocol::payload::{Data, ExecStarted, Payload};
use microsandbox_agent::protocol::MessageType;

/// Starts `sleep 30` and returns its pid.
fn start_sleeper(c: &mut Client) -> u32 {
    let id = c.start_exec(&exec_req("sleep", &["30"]));
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::ExecStarted));
    ExecStarted::decode(&m.payload).unwrap().pid
}

/// `bytes` must get the client disconnected, its process killed, while
/// another client carries on.
fn disconnects(profile: &str, tag: &str, bytes: impl Fn(&mut Client) -> Vec<u8>) {
    let relay = Relay::start_profile(tag, profile, &["--quiet"]);
    let mut other = relay.connect();
    let mut c = relay.connect();
    let pid = start_sleeper(&mut c);
    let bytes = bytes(&mut c);
    c.stream.write_all(&bytes).unwrap();
    assert!(sees_eof(&mut c.stream, TIMEOUT), "{tag}: disconnected");
    assert!(
        wait_until(TIMEOUT, || !process_alive(pid)),
        "{tag}: its process killed"
    );
    assert_eq!(other.exec(&exec_req("echo", &["on"])).stdout_text(), "on\n");
}

/// `[len][id][flags][body]`.
fn raw(id: u32, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = (5 + body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(body);
    out
}

fn ping(c: &Client, id: u32) -> Vec<u8> {
    frame_v(c.v, MessageType::Ping, id, &[0xa0])
}

#[test]
fn current_relays_disconnect_ids_outside_the_range() {
    for profile in ["0.6.14", "0.7.13"] {
        disconnects(profile, "above", |c| ping(c, c.id_end));
        disconnects(profile, "below", |c| ping(c, c.id_start - 1));
        disconnects(profile, "zero", |c| ping(c, 0));
    }
}

#[test]
fn id_zero_is_allowed_with_shutdown() {
    for profile in ["0.6.14", "0.7.13"] {
        let mut relay = Relay::start_profile("shutdown0", profile, &["--quiet"]);
        let mut c = relay.connect();
        let _ = c.next_id();
        c.send(MessageType::Shutdown, 0, &[0xf6]);
        assert_eq!(relay.wait_exit(TIMEOUT), Some(0), "{profile}");
    }
}

#[test]
fn the_legacy_relay_forwards_any_id() {
    let relay = Relay::start_profile("anyid", "0.3.14", &["--quiet"]);
    let mut c = relay.connect();
    let foreign = c.id_end + 5;
    c.send(
        MessageType::ExecRequest,
        foreign,
        &exec_req("echo", &["x"]).to_bytes(),
    );
    // Served, not refused. (Upstream would route the answer by id to the
    // slot owning it; the devrelay answers on the requesting connection.)
    assert_eq!(c.finish_exec(foreign).stdout_text(), "x\n");
    assert_eq!(c.exec(&exec_req("echo", &["y"])).stdout_text(), "y\n");
}

#[test]
fn the_0_7_relay_disconnects_bad_flag_bytes() {
    disconnects("0.7.13", "flags", |c| {
        let mut frame = ping(c, c.id_start + 1);
        frame[8] = 0x03;
        frame
    });
    // On 0.6.14 the same frame reaches agentd, which answers core.error.
    let relay = Relay::start_profile("flags06", "0.6.14", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.next_id();
    let mut frame = ping(&c, id);
    frame[8] = 0x03;
    c.stream.write_all(&frame).unwrap();
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::CoreError));
}

#[test]
fn the_0_7_relay_disconnects_malformed_envelopes() {
    // Two "t" keys.
    disconnects("0.7.13", "two-t", |c| {
        let mut body = vec![0xa4, 0x61, b'v', 0x0a];
        for _ in 0..2 {
            body.extend([0x61, b't', 0x69]);
            body.extend(b"core.ping");
        }
        body.extend([0x61, b'p', 0x41, 0xa0]);
        raw(c.id_start, 0, &body)
    });
    // Trailing bytes after a valid body.
    disconnects("0.7.13", "trailing", |c| {
        let mut frame = ping(c, c.id_start);
        frame.push(0x00);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame
    });
    // A text t that is not text.
    disconnects("0.7.13", "t-int", |c| {
        raw(
            c.id_start,
            0,
            &[
                0xa3, 0x61, b'v', 0x0a, 0x61, b't', 0x05, 0x61, b'p', 0x41, 0xa0,
            ],
        )
    });
    // A raw bulk record: no bulk operation is ever active here.
    disconnects("0.7.13", "bulk", |c| {
        raw(c.id_start, 0x08, &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9])
    });
}

#[test]
fn the_0_7_relay_disconnects_control_types() {
    disconnects("0.7.13", "control", |c| {
        frame_v(
            c.v,
            MessageType::Unknown("control.exec.signal".into()),
            c.id_start,
            &[0xa0],
        )
    });
}

#[test]
fn the_0_7_relay_disconnects_reused_request_ids() {
    // An fs request whose id already completed an exec.
    disconnects("0.7.13", "reuse", |c| {
        let out = c.exec(&exec_req("true", &[]));
        assert_eq!(out.code, 0);
        let used = c.id_start + 1;
        frame_v(
            c.v,
            MessageType::ExecRequest,
            used,
            &exec_req("true", &[]).to_bytes(),
        )
    });
    // 0.6.14 allows it.
    let relay = Relay::start_profile("reuse06", "0.6.14", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.start_exec(&exec_req("true", &[]));
    assert_eq!(c.finish_exec(id).code, 0);
    c.send_payload(MessageType::ExecRequest, id, &exec_req("echo", &["again"]));
    assert_eq!(c.finish_exec(id).stdout_text(), "again\n");
}

#[test]
fn the_0_7_relay_disconnects_a_client_that_stops_reading() {
    let relay = Relay::start_profile("stall", "0.7.13", &["--quiet"]);
    let mut c = relay.connect();
    c.at_most_gen7();
    // Endless output, never read.
    let id = c.start_exec(&exec_req("yes", &[]));
    let pid = {
        let m = c.recv();
        assert_eq!((m.id, m.message_type), (id, MessageType::ExecStarted));
        ExecStarted::decode(&m.payload).unwrap().pid
    };
    let stalled_at = Instant::now();
    // Within 5 s plus some slack the relay gives up on us and kills `yes`.
    assert!(wait_until(Duration::from_secs(15), || !process_alive(pid)));
    let waited = stalled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "not before the grace: {waited:?}"
    );
    assert!(sees_eof(&mut c.stream, TIMEOUT), "disconnected");
}

#[test]
fn a_0_6_relay_waits_for_a_slow_reader() {
    let relay = Relay::start_profile("nostall", "0.6.14", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.start_exec(&sh("head -c 20000000 /dev/zero"));
    std::thread::sleep(Duration::from_secs(6));
    let out = c.finish_exec(id);
    assert_eq!(out.stdout.len(), 20_000_000);
    assert_eq!(out.code, 0);
}

#[test]
fn disconnect_releases_tcp_streams_and_handles_on_every_current_profile() {
    // Covered per feature in fs_handles.rs and tcp.rs; here: a rule
    // violation mid-exec takes the exec's stdin pipe with it.
    for profile in ["0.6.14", "0.7.13"] {
        let relay = Relay::start_profile("midexec", profile, &["--quiet"]);
        let mut c = relay.connect();
        c.at_most_gen7();
        let id = c.start_exec(&exec_req("cat", &[]));
        let started = c.recv();
        let pid = ExecStarted::decode(&started.payload).unwrap().pid;
        c.send_payload(
            MessageType::ExecStdin,
            id,
            &Data {
                data: b"x".to_vec().into(),
            },
        );
        assert_eq!(c.recv().message_type, MessageType::ExecStdout);
        let bad = ping(&c, c.id_end);
        c.stream.write_all(&bad).unwrap();
        assert!(sees_eof(&mut c.stream, TIMEOUT));
        assert!(wait_until(TIMEOUT, || !process_alive(pid)), "{profile}");
    }
}
