//! Handshake, client slots, malformed client frames, shutdown and the CLI.

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use common::*;
use microsandbox_agent::protocol::{
    MessageType, CURRENT_ID_RANGE_STEP, LEGACY_ID_RANGE_STEP, LEGACY_MAX_CLIENTS,
};

#[test]
fn ready_line_socket_mode_and_handshake_for_all_slots() {
    let relay = Relay::start("slots");
    let meta = std::fs::symlink_metadata(&relay.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let clients: Vec<Client> = (0..LEGACY_MAX_CLIENTS).map(|_| relay.connect()).collect();
    for (k, c) in clients.iter().enumerate() {
        assert_eq!(c.id_offset, k as u32 * LEGACY_ID_RANGE_STEP, "slot {k}");
        assert!(c.ready.boot_time_ns > 0);
        assert!(c.ready.boot_time_ns <= c.ready.init_time_ns);
        assert!(c.ready.init_time_ns <= c.ready.ready_time_ns);
    }
    // The 17th is accepted and closed before any byte.
    let mut extra = relay.raw_connect();
    assert_eq!(read_up_to(&mut extra, 4), Vec::<u8>::new());
    assert!(sees_eof(&mut extra, TIMEOUT));
}

#[test]
fn freed_slot_is_reused_lowest_first() {
    let relay = Relay::start("reuse");
    let mut clients: Vec<Option<Client>> = (0..4).map(|_| Some(relay.connect())).collect();
    clients[1] = None;
    clients[2] = None;
    // The relay frees slots when it notices the disconnect.
    let mut again = None;
    assert!(wait_until(TIMEOUT, || {
        let c = relay.connect();
        let slot = c.id_offset / LEGACY_ID_RANGE_STEP;
        if slot == 1 {
            again = Some(c);
            true
        } else {
            false
        }
    }));
    let mut next = None;
    assert!(wait_until(TIMEOUT, || {
        let c = relay.connect();
        let is_two = c.id_offset == 2 * LEGACY_ID_RANGE_STEP;
        next = Some(c);
        is_two
    }));
    // Slots 0..=3 are all taken again: the next one is 4.
    assert!(wait_until(TIMEOUT, || relay.connect().id_offset
        == 4 * LEGACY_ID_RANGE_STEP));
    drop(again);
}

#[test]
fn seventeenth_gets_a_slot_after_one_leaves() {
    let relay = Relay::start("full");
    let mut clients: Vec<Client> = (0..LEGACY_MAX_CLIENTS).map(|_| relay.connect()).collect();
    let mut refused = relay.raw_connect();
    assert!(sees_eof(&mut refused, TIMEOUT));
    clients.remove(7);
    assert!(wait_until(TIMEOUT, || {
        let mut s = relay.raw_connect();
        read_up_to(&mut s, 4) == (7 * LEGACY_ID_RANGE_STEP).to_be_bytes()
    }));
}

/// Sends raw bytes on a fresh connection and checks the relay closes only it.
fn bad_input_closes_only_that_client(tag: &str, bytes: &[u8]) {
    let relay = Relay::start_with(tag, &["--quiet", "--profile", "0.7.13"]);
    let mut good = relay.connect();
    let mut bad = relay.connect();
    bad.stream.write_all(bytes).unwrap();
    assert!(
        sees_eof(&mut bad.stream, TIMEOUT),
        "{tag}: bad client closed"
    );
    let out = good.exec(&exec_req("echo", &["still", "here"]));
    assert_eq!(out.stdout_text(), "still here\n");
    // Its slot is free again and the relay is alive.
    let again = relay.connect();
    assert_eq!(again.id_start, CURRENT_ID_RANGE_STEP + 1);
}

#[test]
fn short_frame_from_client_closes_it() {
    bad_input_closes_only_that_client("c-short", &[0, 0, 0, 4, 0, 0, 0, 0]);
}

#[test]
fn oversize_frame_from_client_closes_it() {
    bad_input_closes_only_that_client("c-big", &[0, 0x40, 0, 1, 0, 0, 0, 1, 0]);
}

/// Sends `bytes(id)` (an id of its range) on one connection while another
/// runs a process; the sandbox must die: the process killed, every
/// connection closed, the relay exiting 1.
fn bad_input_kills_the_sandbox(tag: &str, profile: &str, bytes: impl Fn(u32) -> Vec<u8>) {
    let mut relay = Relay::start_profile(tag, profile, &["--quiet"]);
    let mut good = relay.connect();
    let pid = start_sleeper(&mut good);
    let mut bad = relay.connect();
    let id = bad.next_id();
    bad.stream.write_all(&bytes(id)).unwrap();
    assert_eq!(relay.wait_exit(TIMEOUT), Some(1), "{tag}: relay exits 1");
    assert!(
        sees_eof(&mut good.stream, TIMEOUT),
        "{tag}: good client closed"
    );
    assert!(
        wait_until(TIMEOUT, || !process_alive(pid)),
        "{tag}: process killed"
    );
}

/// Starts `sleep 30` and returns its pid.
fn start_sleeper(c: &mut Client) -> u32 {
    let id = c.start_exec(&exec_req("sleep", &["30"]));
    let m = c.recv();
    assert_eq!((m.id, m.message_type), (id, MessageType::ExecStarted));
    let started: microsandbox_agent::protocol::payload::ExecStarted =
        microsandbox_agent::protocol::payload::Payload::decode(&m.payload).unwrap();
    started.pid
}

/// `[len][id][flags 0][body]`.
fn raw(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = (5 + body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

fn bad_cbor(id: u32) -> Vec<u8> {
    raw(id, &[0xff, 0xff, 0xff])
}

/// {"v": 1} only.
fn body_without_type(id: u32) -> Vec<u8> {
    raw(id, &[0xa1, 0x61, b'v', 1])
}

#[test]
fn bad_cbor_kills_older_agents() {
    bad_input_kills_the_sandbox("cbor-03", "0.3.14", bad_cbor);
    bad_input_kills_the_sandbox("cbor-06", "0.6.14", bad_cbor);
}

#[test]
fn body_without_type_kills_older_agents() {
    bad_input_kills_the_sandbox("shape-03", "0.3.14", body_without_type);
    bad_input_kills_the_sandbox("shape-06", "0.6.14", body_without_type);
}

#[test]
fn the_0_7_relay_cuts_off_bad_bodies_before_agentd() {
    bad_input_closes_only_that_client("cbor-07", &bad_cbor(CURRENT_ID_RANGE_STEP + 1));
    bad_input_closes_only_that_client("shape-07", &body_without_type(CURRENT_ID_RANGE_STEP + 1));
}

#[test]
fn unknown_type_kills_the_sandbox_on_every_profile() {
    for profile in PROFILES {
        let v = if profile == "0.3.14" { 1 } else { 10 };
        bad_input_kills_the_sandbox(&format!("unknown-{profile}"), profile, |id| {
            frame_v(v, MessageType::Unknown("core.nope".into()), id, &[])
        });
    }
}

#[test]
fn types_newer_than_the_agent_are_unknown_to_it() {
    // core.tcp.connect did not exist in 0.3.14, core.exec.output.ack not in 0.6.14.
    bad_input_kills_the_sandbox("newer-03", "0.3.14", |id| {
        frame_v(1, MessageType::TcpConnect, id, &[0xa0])
    });
    bad_input_kills_the_sandbox("newer-06", "0.6.14", |id| {
        frame_v(7, MessageType::ExecOutputAck, id, &[0xa0])
    });
}

#[test]
fn undecodable_payload_kills_0_3_14() {
    // {} has no cmd.
    bad_input_kills_the_sandbox("payload-03", "0.3.14", |id| {
        frame_v(1, MessageType::ExecRequest, id, &[0xa0])
    });
}

#[test]
fn shutdown_terminates_execs_and_exits_zero() {
    let mut relay = Relay::start_with("shutdown", &["--quiet"]);
    let mut c = relay.connect();
    c.start_exec(&exec_req("sleep", &["30"]));
    let pid = c.recv().payload;
    let pid = microsandbox_agent::protocol::payload::Payload::decode(&pid)
        .map(|s: microsandbox_agent::protocol::payload::ExecStarted| s.pid)
        .unwrap();
    assert!(process_alive(pid));
    c.send(MessageType::Shutdown, 0, &[]);
    assert_eq!(relay.wait_exit(TIMEOUT), Some(0));
    assert!(wait_until(TIMEOUT, || !process_alive(pid)));
    assert!(!relay.socket.exists(), "socket file removed");
}

#[test]
fn sigterm_kills_execs_removes_socket_and_temp_root() {
    let dir = TempDir::new("sigterm");
    let socket = dir.path().join("s.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut command = Command::new(env!("CARGO_BIN_EXE_msb-devrelay"));
    command.arg("--socket").arg(&socket).arg("--quiet");
    command.env("TMPDIR", dir.path());
    let mut relay = Relay::spawn(command, dir, socket.clone(), Default::default());
    let temp_roots = || {
        std::fs::read_dir(relay_dir(&socket))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("msb-devrelay-root")
            })
            .count()
    };
    assert_eq!(temp_roots(), 1, "a fresh temporary root");
    let mut c = relay.connect();
    c.start_exec(&exec_req("sleep", &["30"]));
    let started = c.recv();
    let pid: microsandbox_agent::protocol::payload::ExecStarted =
        microsandbox_agent::protocol::payload::Payload::decode(&started.payload).unwrap();
    // SAFETY: plain kill(2) of the relay child we started.
    unsafe { libc::kill(relay.child.id() as i32, libc::SIGTERM) };
    assert_eq!(relay.wait_exit(TIMEOUT), Some(0));
    assert!(wait_until(TIMEOUT, || !process_alive(pid.pid)));
    assert!(!socket.exists());
    assert_eq!(temp_roots(), 0, "temporary root removed");
}

fn relay_dir(socket: &std::path::Path) -> std::path::PathBuf {
    socket.parent().unwrap().to_path_buf()
}

#[test]
fn cli_help_and_errors() {
    let bin = env!("CARGO_BIN_EXE_msb-devrelay");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "NO ISOLATION",
        "--socket",
        "--root",
        "--exec-chunk",
        "--quiet",
        "host path",
        "flood",
        "stop-reading",
        "close-in-handshake",
        "--profile",
        "0.3.14",
        "0.6.14",
        "0.7.13",
        "exec_limits",
    ] {
        assert!(text.contains(needle), "help mentions {needle}");
    }
    let missing = Command::new(bin).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let bad_fault = Command::new(bin)
        .args(["--socket", "/nonexistent/x", "--fault", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad_fault.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_fault.stderr).contains("oversize-frame"));
    let bad_profile = Command::new(bin)
        .args(["--socket", "/nonexistent/x", "--profile", "0.5.0"])
        .output()
        .unwrap();
    assert_eq!(bad_profile.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_profile.stderr).contains("0.3.14, 0.6.14, 0.7.13"));
    // A regular file where the socket should go is not deleted.
    let dir = TempDir::new("notsock");
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let refused = Command::new(bin)
        .arg("--socket")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn many_small_requests_pipelined() {
    let relay = Relay::start_with("pipeline", &["--quiet"]);
    let mut c = relay.connect();
    std::fs::write(relay.root.join("f"), b"x").unwrap();
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..2000 {
        let id = c.next_id();
        ids.push(id);
        let req = microsandbox_agent::protocol::payload::legacy::FsRequest {
            op: microsandbox_agent::protocol::payload::legacy::FsOp::Stat { path: "/f".into() },
        };
        use microsandbox_agent::protocol::payload::Payload;
        batch.extend(frame(MessageType::FsRequest, id, &req.to_bytes()));
    }
    c.stream.write_all(&batch).unwrap();
    for id in ids {
        let m = c.recv();
        assert_eq!(m.id, id, "responses in request order");
    }
}

#[test]
fn an_envelope_without_v_kills_the_agent() {
    // {"t": "core.ping", "p": h'a0'}
    let mut body = vec![0xa2, 0x61, b't', 0x69];
    body.extend(b"core.ping");
    body.extend([0x61, b'p', 0x41, 0xa0]);
    for profile in PROFILES {
        bad_input_kills_the_sandbox(&format!("no-v-{profile}"), profile, |id| raw(id, &body));
    }
}
