//! The client core against a real protocol peer: the development relay, and
//! for the cases it cannot produce on demand (a relay that stalls, a late
//! reply), a scripted peer on a socket of the test's own.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsandbox_agent::client::exec::{self, Exec, ExecEvent};
use microsandbox_agent::client::{fs, Client, ClientOptions, CloseCause, Error, Pulled};
use microsandbox_agent::protocol::payload as current;
use microsandbox_agent::protocol::payload::legacy::{FsOp, FsRequest, FsResponse};
use microsandbox_agent::protocol::payload::{Data, ExecExited, ExecRequest, Payload, Ready};
use microsandbox_agent::protocol::{
    encode_frame, MessageType, CURRENT_ID_RANGE_STEP, CURRENT_MAX_CLIENTS, LEGACY_ID_RANGE_STEP,
    LEGACY_MAX_CLIENTS,
};

const T: Duration = Duration::from_secs(10);

/// Finds (building if needed) the msb-devrelay binary of this workspace.
fn devrelay_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("msb-devrelay");
    if !bin.exists() {
        let release = profile_dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "msb-devrelay"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building msb-devrelay");
    }
    bin
}

struct Relay {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let dir = std::env::temp_dir().join(format!(
            "msb-core-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let socket = dir.join("agent.sock");
        // The release the relay imitates (every suite runs each of them).
        let profile =
            std::env::var("MSB_DEVRELAY_PROFILE").unwrap_or_else(|_| "0.7.13".to_string());
        let mut child = Command::new(devrelay_bin())
            .args(["--profile", &profile])
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--quiet")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = [0u8; 256];
        let n = child.stdout.as_mut().unwrap().read(&mut line).unwrap();
        assert!(
            String::from_utf8_lossy(&line[..n]).contains("listening"),
            "relay did not start"
        );
        Relay { child, dir, socket }
    }

    fn connect(&self) -> Client {
        Client::connect(&self.socket, &ClientOptions::default()).unwrap()
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// `core.fs.request {Stat path}` in the shape of the client's generation:
/// 0.3.14's on a legacy relay, generation 2's (not following links) after.
fn stat_request(c: &Client, path: &str) -> Vec<u8> {
    if c.peer().generation() < 2 {
        FsRequest {
            op: FsOp::Stat { path: path.into() },
        }
        .to_bytes()
    } else {
        current::FsRequest::new(current::FsOp::Stat {
            path: path.into(),
            follow_symlink: false,
        })
        .to_bytes()
    }
}

/// The id range step and client slots of the relay `c` is connected to.
fn slots_of(c: &Client) -> (u32, u32) {
    if c.peer().is_legacy() {
        (LEGACY_ID_RANGE_STEP, LEGACY_MAX_CLIENTS)
    } else {
        (CURRENT_ID_RANGE_STEP, CURRENT_MAX_CLIENTS)
    }
}

/// `core.fs.request {Stat "/"}` in 0.3.14's shape, for the scripted peer.
fn stat_root() -> Vec<u8> {
    FsRequest {
        op: FsOp::Stat { path: "/".into() },
    }
    .to_bytes()
}

fn sh(script: &str) -> ExecRequest {
    let mut r = ExecRequest::new("sh");
    r.args = vec!["-c".into(), script.into()];
    r
}

#[test]
fn handshake_gives_range_and_timings() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    assert_eq!(c.id_offset(), 0, "first client gets slot 0");
    let r = c.ready();
    assert!(r.ready_time_ns > 0);
    assert_eq!(&Ready::decode(c.ready_payload()).unwrap(), r);
    let id = c.alloc_id().unwrap();
    assert!(id > 0 && id < slots_of(&c).0);
}

#[test]
fn request_response_round_trip() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    let reply = c
        .request(&MessageType::FsRequest, &stat_request(&c, "/"), T)
        .unwrap();
    assert_eq!(reply.message_type, MessageType::FsResponse);
    assert!(reply.is_terminal());
    let resp = FsResponse::decode(&reply.payload).unwrap();
    assert!(resp.ok);
    assert_eq!(fs::stat(&c, "/", T).unwrap().kind, "dir");
    assert_eq!(c.counters().bytes_queued, 0, "nothing left queued");
}

#[test]
fn a_payload_sent_in_many_parts_arrives_whole() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    // Both ways a payload goes out: a small one is copied behind the frame
    // head, a large one is sent by reference with vectored writes. Each is
    // split into more parts than one sendmsg takes (8 iovecs with the head),
    // with an empty one among them.
    let small = stat_request(&c, "/");
    let mut exec = sh("printf %s \"$V\" | wc -c");
    exec.env = vec![format!("V={}", "v".repeat(20_000))];
    let large = exec.to_bytes();
    for (message_type, payload, part_len) in [
        (MessageType::FsRequest, &small, 2),
        (MessageType::ExecRequest, &large, 700),
    ] {
        let mut parts: Vec<&[u8]> = payload.chunks(part_len).collect();
        parts.insert(3, &[]);
        assert!(parts.len() > 8);
        let sub = c.subscribe_new().unwrap();
        c.send_parts(&message_type, sub.id(), &parts, Instant::now() + T)
            .unwrap();
        let mut replies = Vec::new();
        while let Pulled::Item(m) = sub.recv_timeout(Some(T)).unwrap() {
            replies.push(m);
        }
        let last = replies.last().expect("a reply");
        if message_type == MessageType::FsRequest {
            assert!(FsResponse::decode(&last.payload).unwrap().ok);
            continue;
        }
        // The command saw the whole 20 000-byte value.
        assert_eq!(ExecExited::decode(&last.payload).unwrap().code, 0);
        let stdout: Vec<u8> = replies
            .iter()
            .filter(|m| m.message_type == MessageType::ExecStdout)
            .flat_map(|m| Data::decode(&m.payload).unwrap().data.to_vec())
            .collect();
        assert_eq!(String::from_utf8_lossy(&stdout).trim(), "20000");
    }
}

#[test]
fn streamed_exec_with_stdin() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    let e = Exec::start(&c, &ExecRequest::new("cat"), T).unwrap();
    let mut pid = None;
    let mut echoed = Vec::new();
    for line in ["one\n", "two\n", "three\n"] {
        e.write_stdin(line.as_bytes(), T).unwrap();
        // Each line comes back before the next is sent: output streams.
        while !echoed.ends_with(line.as_bytes()) {
            match e.next_event(Some(T)).unwrap() {
                Pulled::Item(ExecEvent::Started { pid: p }) => pid = Some(p),
                Pulled::Item(ExecEvent::Stdout(d)) => echoed.extend_from_slice(&d),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    e.close_stdin(T).unwrap();
    loop {
        match e.next_event(Some(T)).unwrap() {
            Pulled::Item(ExecEvent::Exited { code }) => {
                assert_eq!(code, 0);
                break;
            }
            Pulled::Item(ExecEvent::Stdout(d)) => echoed.extend_from_slice(&d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pid.is_some_and(|p| p > 0));
    assert_eq!(echoed, b"one\ntwo\nthree\n");
    assert!(matches!(e.next_event(Some(T)).unwrap(), Pulled::Ended));
}

#[test]
fn run_to_completion_captures_and_caps_output() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    let out = exec::run(&c, &sh("echo out; echo err >&2; exit 7"), 1024, T).unwrap();
    assert_eq!(
        (out.code, &out.stdout[..], &out.stderr[..]),
        (7, &b"out\n"[..], &b"err\n"[..])
    );
    let out = exec::run(&c, &sh("head -c 100000 /dev/zero"), 10, T).unwrap();
    assert_eq!(out.stdout.len(), 10);
    assert!(out.truncated);
    let err = exec::run(&c, &sh("sleep 5"), 10, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_from_eight_tasks() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    std::fs::write(relay.root().join("f"), b"x").unwrap();
    let payload = Arc::new(stat_request(&c, "/f"));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, payload) = (c.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let m = c
                    .request_async(&MessageType::FsRequest, &payload, T)
                    .await
                    .unwrap();
                assert!(FsResponse::decode(&m.payload).unwrap().ok);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let k = c.counters();
    assert_eq!(k.frames_received, 1600);
    assert_eq!(k.dropped_no_subscriber + k.dropped_out_of_range, 0);
}

#[test]
fn eight_blocking_threads_share_the_socket_reader() {
    // Blocked pullers take turns reading the socket (leader and followers);
    // every reply must reach its own caller, whatever thread read it.
    let relay = Relay::start(&[]);
    let c = relay.connect();
    for i in 0..8 {
        std::fs::write(relay.root().join(format!("f{i}")), vec![b'x'; i + 1]).unwrap();
    }
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let st = fs::stat(&c, &format!("/f{i}"), T).unwrap();
                    assert_eq!(st.size, i as u64 + 1, "reply routed to the wrong caller");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.counters().frames_received, 2400);
}

#[test]
fn every_slot_gets_a_disjoint_range_and_one_more_client_is_refused() {
    // 16 slots on a legacy relay, 128 on a current one.
    let relay = Relay::start(&[]);
    let first = relay.connect();
    let (step, slots) = slots_of(&first);
    let mut clients = vec![first];
    clients.extend((1..slots).map(|_| relay.connect()));
    let mut offsets: Vec<u32> = clients.iter().map(|c| c.id_offset()).collect();
    offsets.sort();
    let expected: Vec<u32> = (0..slots).map(|k| k * step).collect();
    assert_eq!(offsets, expected);
    for c in &clients {
        let id = c.alloc_id().unwrap();
        assert!(id > c.id_offset() && (id as u64) < c.id_offset() as u64 + step as u64);
        assert!(fs::stat(c, "/", T).is_ok());
    }
    let err = Client::connect(&relay.socket, &ClientOptions::default())
        .err()
        .expect("a connection past the last slot must fail");
    assert!(matches!(err, Error::RelayBusy), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    // A freed slot is handed out again.
    drop(clients);
    std::thread::sleep(Duration::from_millis(200));
    let again = relay.connect();
    assert_eq!(again.id_offset() % step, 0);
}

#[test]
fn transport_death_wakes_every_waiter() {
    let mut relay = Relay::start(&[]);
    let c = relay.connect();
    let execs: Vec<Exec> = (0..4)
        .map(|_| Exec::start(&c, &sh("sleep 30"), T).unwrap())
        .collect();
    let waiters: Vec<_> = execs
        .into_iter()
        .map(|e| {
            std::thread::spawn(move || loop {
                match e.next_event(Some(T)) {
                    Ok(Pulled::Item(ExecEvent::Started { .. })) => continue,
                    other => return other,
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    relay.child.kill().unwrap();
    for w in waiters {
        let r = w.join().unwrap();
        assert!(
            matches!(
                r,
                Err(Error::Closed(CloseCause::Eof)) | Err(Error::Closed(CloseCause::Io(_)))
            ),
            "{r:?}"
        );
    }
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    // Later calls fail at once with the same cause.
    let started = Instant::now();
    assert!(matches!(fs::stat(&c, "/", T), Err(Error::Closed(_))));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn close_is_idempotent_and_wakes_waiters() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    let sub = c.subscribe_new().unwrap();
    let c2 = c.clone();
    let t = std::thread::spawn(move || sub.recv_timeout(None));
    std::thread::sleep(Duration::from_millis(100));
    c2.close();
    c2.close();
    assert!(matches!(
        t.join().unwrap(),
        Err(Error::Closed(CloseCause::ClosedByCaller))
    ));
    assert!(matches!(c.subscribe_new(), Err(Error::Closed(_))));
}

#[test]
fn ids_outside_the_range_cannot_be_subscribed() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    assert!(matches!(c.subscribe(0), Err(Error::IdUnavailable(0))));
    assert!(matches!(
        c.subscribe(LEGACY_ID_RANGE_STEP),
        Err(Error::IdUnavailable(_))
    ));
    let id = c.alloc_id().unwrap();
    let _s = c.subscribe(id).unwrap();
    assert!(matches!(c.subscribe(id), Err(Error::IdUnavailable(_))));
}

#[test]
fn backpressure_bounds_memory_and_loses_nothing() {
    let relay = Relay::start(&["--exec-chunk", "65536"]);
    // The old behaviour, kept as an explicit option: pause the socket.
    let options = ClientOptions {
        memory_budget: 256 * 1024,
        backpressure: microsandbox_agent::client::Backpressure::PauseSocket,
        ..ClientOptions::default()
    };
    let c = Client::connect(&relay.socket, &options).unwrap();
    let total = 32 * 1024 * 1024;
    let e = Exec::start(
        &c,
        &sh(&format!(
            "head -c {total} /dev/urandom | tee /dev/stderr | sha256sum >&2"
        )),
        T,
    )
    .unwrap();
    // Waiting passively (a readiness fd) without pulling: the background
    // reader fills the budget, plus at most one frame, then stops.
    e.subscription().readiness_fd().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let queued = c.counters().bytes_queued;
    assert!(queued <= 256 * 1024 + 4 * 1024 * 1024, "queued {queued}");
    assert!(
        queued >= 256 * 1024,
        "queued {queued}: the budget should be full"
    );
    let mut stdout = 0usize;
    let mut stderr = Vec::new();
    loop {
        match e.next_event(Some(T)).unwrap() {
            Pulled::Item(ExecEvent::Stdout(d)) => stdout += d.len(),
            Pulled::Item(ExecEvent::Stderr(d)) => stderr.extend_from_slice(&d),
            Pulled::Item(ExecEvent::Exited { code }) => {
                assert_eq!(code, 0);
                break;
            }
            Pulled::Item(ExecEvent::Started { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(c.counters().bytes_queued <= 256 * 1024 + 4 * 1024 * 1024);
    }
    assert_eq!(stdout, 0);
    // stderr carries the data followed by its hash: check it arrived intact.
    assert!(stderr.len() > total);
    let (data, hash_line) = stderr.split_at(total);
    let hash = String::from_utf8_lossy(hash_line);
    let mut tmp = std::env::temp_dir();
    tmp.push(format!("msb-bp-{}", rand_suffix()));
    std::fs::write(&tmp, data).unwrap();
    let out = Command::new("sha256sum").arg(&tmp).output().unwrap();
    std::fs::remove_file(&tmp).unwrap();
    let ours = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        ours.split_whitespace().next(),
        hash.split_whitespace().next(),
        "data corrupted or reordered"
    );
}

#[test]
fn fs_round_trips() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    fs::mkdir(&c, "/a/b", T).unwrap();
    let big: Vec<u8> = (0..7 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    fs::write_file(&c, "/a/b/big", &big, Some(0o600), T).unwrap();
    assert_eq!(&fs::read_file(&c, "/a/b/big", T).unwrap()[..], &big[..]);
    let st = fs::stat(&c, "/a/b/big", T).unwrap();
    assert_eq!((st.size, st.mode & 0o7777), (big.len() as u64, 0o600));
    fs::copy(&c, "/a/b/big", "/a/c", T).unwrap();
    fs::rename(&c, "/a/c", "/a/d", T).unwrap();
    let mut names: Vec<String> = fs::list(&c, "/a", T)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    names.sort();
    assert_eq!(names, ["/a/b", "/a/d"]);
    fs::remove(&c, "/a/d", T).unwrap();
    fs::remove_dir(&c, "/a", T).unwrap();
    let err = fs::read_file(&c, "/a/b/big", T).unwrap_err();
    assert!(matches!(err, Error::Guest(_)), "{err}");
    assert!(!relay.root().join("a").exists());
}

// ------------------------------------------------------------ scripted peer

/// What a relay sends first: id offset 0, then `core.ready` with the
/// timings 1, 2 and 3 ns.
fn relay_handshake() -> Vec<u8> {
    let mut hs = 0u32.to_be_bytes().to_vec();
    let ready = Ready {
        boot_time_ns: 1,
        init_time_ns: 2,
        ready_time_ns: 3,
        ..Ready::default()
    };
    encode_frame(&mut hs, "core.ready", 0, 0, 1, &ready.to_bytes());
    hs
}

/// A peer that performs the handshake and then runs `script` on the socket.
fn scripted_peer(
    script: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    peer_with(relay_handshake(), script)
}

/// A peer that writes `handshake` (any bytes) and then runs `script`.
fn peer_with(
    handshake: Vec<u8>,
    script: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let dir = std::env::temp_dir().join(format!("msb-peer-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&handshake).unwrap();
        script(s);
    });
    (path, t)
}

fn read_frame(s: &mut impl Read) -> (u32, Vec<u8>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).unwrap();
    (u32::from_be_bytes(rest[..4].try_into().unwrap()), rest)
}

#[test]
fn request_timeout_removes_the_pending_entry_and_late_replies_are_counted() {
    let (path, peer) = scripted_peer(|mut s| {
        let reply = |s: &mut std::os::unix::net::UnixStream, id: u32| {
            let mut out = Vec::new();
            let ok = FsResponse::ok().to_bytes();
            encode_frame(&mut out, "core.fs.response", id, 1, 1, &ok);
            s.write_all(&out).unwrap();
        };
        let (late, _) = read_frame(&mut s);
        std::thread::sleep(Duration::from_millis(400));
        reply(&mut s, late);
        let (next, _) = read_frame(&mut s);
        reply(&mut s, next);
        std::thread::sleep(Duration::from_millis(300));
    });
    let c = Client::connect(&path, &ClientOptions::default()).unwrap();
    assert_eq!(c.ready().init_time_ns, 2);
    let p = stat_root();
    let started = Instant::now();
    let err = c
        .request(&MessageType::FsRequest, &p, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(500));
    // The next request reads past the late reply, which finds no subscriber.
    c.request(&MessageType::FsRequest, &p, T).unwrap();
    assert_eq!(c.counters().dropped_no_subscriber, 1);
    peer.join().unwrap();
}

#[test]
fn closing_an_adopted_socket_ends_the_connection_for_the_peer() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(&relay_handshake()).unwrap();
    // The caller keeps a duplicate of the socket open, as msb_client_connect_fd allows.
    let kept = ours.try_clone().unwrap();
    let c = Client::from_fd(OwnedFd::from(ours), &ClientOptions::default()).unwrap();
    c.close();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        peer.read(&mut buf).unwrap(),
        0,
        "the peer sees the end at once"
    );
    drop(kept);
}

#[test]
fn connect_times_out_on_a_silent_relay() {
    let dir = std::env::temp_dir().join(format!("msb-silent-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let started = Instant::now();
    let err = Client::connect(&path, &options).err().unwrap();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(listener);
}

#[test]
fn frames_outside_our_range_are_dropped_and_counted() {
    let (path, peer) = scripted_peer(|mut s| {
        let (id, _) = read_frame(&mut s);
        let mut out = Vec::new();
        let resp = FsResponse::ok().to_bytes();
        encode_frame(
            &mut out,
            "core.fs.response",
            id + LEGACY_ID_RANGE_STEP,
            1,
            1,
            &resp,
        );
        encode_frame(&mut out, "core.future.thing", id, 0, 1, b"");
        encode_frame(&mut out, "core.fs.response", id, 1, 1, &resp);
        s.write_all(&out).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let c = Client::connect(&path, &ClientOptions::default()).unwrap();
    fs::mkdir(&c, "/x", T).unwrap();
    let k = c.counters();
    assert_eq!(
        (k.dropped_out_of_range, k.unknown_type, k.frames_received),
        (1, 1, 3)
    );
    peer.join().unwrap();
}

#[test]
fn frames_of_every_size_sent_in_one_burst_arrive_whole_and_in_order() {
    // Sizes around the reader's thresholds: frames that fit its shared
    // buffer, frames read into buffers of their own, and runs of large
    // frames that arrive complete together (after which it reads in small
    // steps), all written at once so that reads end anywhere in a frame.
    let sizes = [
        0, 5, 4090, 8191, 8192, 9000, 16_384, 65_400, 65_536, 65_536, 8192, 70_000, 100, 300_000,
        4096, 12_000, 12_000, 12_000, 60_000, 1,
    ];
    let payload =
        |i: usize, len: usize| -> Vec<u8> { (0..len).map(|j| (i * 31 + j * 7) as u8).collect() };
    let (path, peer) = scripted_peer(move |mut s| {
        let (id, _) = read_frame(&mut s);
        let mut out = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            encode_frame(&mut out, "core.exec.stdout", id, 0, 1, &payload(i, len));
        }
        encode_frame(&mut out, "core.exec.exited", id, 1, 1, b"\xa1\x64code\x00");
        s.write_all(&out).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let c = Client::connect(&path, &ClientOptions::default()).unwrap();
    let sub = c.subscribe_new().unwrap();
    c.send(&MessageType::ExecRequest, sub.id(), b"\xa0", T)
        .unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        let Pulled::Item(m) = sub.recv_timeout(Some(T)).unwrap() else {
            panic!("frame {i} missing");
        };
        assert_eq!(m.message_type, MessageType::ExecStdout, "frame {i}");
        assert!(
            m.payload[..] == payload(i, len)[..],
            "frame {i} ({len} bytes) differs"
        );
    }
    let Pulled::Item(m) = sub.recv_timeout(Some(T)).unwrap() else {
        panic!("no exit frame");
    };
    assert_eq!(m.message_type, MessageType::ExecExited);
    assert!(matches!(sub.recv_timeout(Some(T)).unwrap(), Pulled::Ended));
    assert_eq!(c.counters().frames_received, sizes.len() as u64 + 1);
    peer.join().unwrap();
}

// ------------------------------------------------------------ every relay 0.3.14..0.7.13

use microsandbox_agent::client::Form;
use microsandbox_agent::protocol::payload::{
    CoreError, CoreErrorKind, ExecFailed, ExecFailureKind, ExecLimits, ExecStarted, ExecStdinError,
    FsEntryInfo, FsOpenOptions, FsResponseData,
};
use microsandbox_agent::protocol::{payload, Message, RawFrame};
use std::os::unix::net::UnixStream;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A `core.ready` frame stamped `v`.
fn ready_frame(v: u8, ready: &Ready) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, "core.ready", 0, 0, v, &ready.to_bytes());
    out
}

fn ready_of(agent_version: &str, exec_limits: bool) -> Ready {
    Ready {
        boot_time_ns: 1,
        init_time_ns: 2,
        ready_time_ns: 3,
        agent_version: agent_version.into(),
        exec_limits: exec_limits.then(ExecLimits::default),
        ..Ready::default()
    }
}

/// The handshake of a current relay (0.5.0+): `[start][end][ready]`.
fn current_handshake(start: u32, end: u32, v: u8, ready: &Ready) -> Vec<u8> {
    let mut hs = start.to_be_bytes().to_vec();
    hs.extend(end.to_be_bytes());
    hs.extend(ready_frame(v, ready));
    hs
}

/// Slot 0 of a current relay whose agent speaks generation `v`.
fn gen_handshake(v: u8) -> Vec<u8> {
    current_handshake(1, 33554431, v, &ready_of("0.6.14", false))
}

/// Reads one frame as the relay would: the raw bytes and their decoding.
fn recv_frame(s: &mut UnixStream) -> (Vec<u8>, Message) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).unwrap();
    let m = RawFrame {
        id: u32::from_be_bytes(rest[..4].try_into().unwrap()),
        flags: rest[4],
        body: bytes::Bytes::copy_from_slice(&rest[5..]),
    }
    .decode()
    .unwrap();
    let mut raw = len.to_vec();
    raw.extend(rest);
    (raw, m)
}

/// Sends one frame of `message_type` (with its flags) as the guest would.
fn send_frame(s: &mut UnixStream, message_type: &str, id: u32, v: u8, payload: &[u8]) {
    let flags = MessageType::from_wire(message_type).flags();
    let mut out = Vec::new();
    encode_frame(&mut out, message_type, id, flags, v, payload);
    s.write_all(&out).unwrap();
}

fn short_connect(path: &std::path::Path) -> Result<Client, Error> {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::connect(path, &options)
}

#[test]
fn every_upstream_handshake_vector_gets_the_upstream_verdict() {
    let mut checked = 0;
    for file in ["protocol-0.6.14.json", "protocol-0.7.13.json"] {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for h in doc["handshakes"].as_array().unwrap() {
            let name = h["name"].as_str().unwrap().to_owned();
            let verdict = &h["upstream_0_6_14_client"];
            let ok = verdict["ok"].as_bool().unwrap();
            let bytes = hex(h["bytes_hex"].as_str().unwrap());
            let (tx, rx) = std::sync::mpsc::channel();
            let (sock, peer) = peer_with(bytes, move |mut s| {
                if ok {
                    s.set_read_timeout(Some(T)).unwrap();
                    tx.send(recv_frame(&mut s).0).unwrap();
                }
            });
            let result = short_connect(&sock);
            if !ok {
                let err = result.err().unwrap_or_else(|| panic!("{name}: connected"));
                let upstream = verdict["error"].as_str().unwrap();
                if upstream.contains("early eof") {
                    assert!(matches!(err, Error::RelayBusy), "{name}: {err}");
                } else if upstream.contains("invalid relay id range") {
                    assert!(matches!(err, Error::Handshake(_)), "{name}: {err}");
                    let detail = upstream.trim_start_matches("handshake: ");
                    assert!(err.to_string().contains(detail), "{name}: {err}");
                } else {
                    assert!(upstream.contains("expected core.ready"), "{name}");
                    assert!(matches!(err, Error::Protocol(_)), "{name}: {err}");
                    assert!(
                        err.to_string().contains("core.exec.stdout"),
                        "{name}: {err}"
                    );
                }
                peer.join().unwrap();
                checked += 1;
                continue;
            }
            let c = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let p = c.peer();
            let legacy = verdict["protocol"] == "LegacyV1";
            let ready_v = h["ready_v"]
                .as_u64()
                .or(h["form"]["ready_v"].as_u64())
                .unwrap() as u8;
            assert_eq!(p.is_legacy(), legacy, "{name}");
            assert_eq!(p.form(), if legacy { Form::Legacy } else { Form::Current });
            assert_eq!(p.peer_generation(), ready_v, "{name}");
            let negotiated = if legacy { 1 } else { ready_v.min(10) };
            assert_eq!(p.generation(), negotiated, "{name}");
            // The 0.6.14 client caps at 7, the 0.7.13 one at 10, like us.
            assert_eq!(
                verdict["negotiated_version"].as_u64().unwrap(),
                negotiated.min(7) as u64,
                "{name}"
            );
            if let Some(sdk) = h.get("upstream_0_7_13_sdk_client") {
                assert_eq!(
                    sdk["negotiated_version"].as_u64().unwrap(),
                    negotiated as u64,
                    "{name}"
                );
                assert_eq!(
                    p.exec_limits().is_some(),
                    sdk["ready_has_exec_limits"].as_bool().unwrap(),
                    "{name}"
                );
            }
            assert_eq!(p.agent_version(), verdict["agent_version"], "{name}");
            let first = verdict["first_request_id"].as_u64().unwrap() as u32;
            assert_eq!(p.id_range().start, first, "{name}");
            if let Some(supports) = verdict["supports"].as_object() {
                for (t, b) in supports {
                    // Legacy relays get the filesystem in its 0.3.14 shapes.
                    let want = b.as_bool().unwrap() || (legacy && t.starts_with("core.fs."));
                    assert_eq!(p.supports(&MessageType::from_wire(t)), want, "{name}: {t}");
                }
            }
            // Our exec request is the 0.6.14 client's frame byte for byte:
            // same payload, same v (7 on current relays, 1 on legacy ones),
            // and on current relays the same first id.
            let mut req = ExecRequest::new("/bin/true");
            req.rows = 24;
            req.cols = 80;
            let exec = Exec::start(&c, &req, T).unwrap();
            let mut want = hex(verdict["request_frame_hex"].as_str().unwrap());
            let got = rx.recv_timeout(T).unwrap();
            if legacy {
                // Our legacy ids start at a random point of the range.
                want[4..8].copy_from_slice(&exec.id().to_be_bytes());
                assert!(p.id_range().contains(exec.id()));
            } else {
                assert_eq!(exec.id(), first, "{name}");
            }
            // Where the sandbox offers exec flow control (generation 10 with
            // exec_limits) it is on, and every frame carries v = 10 instead.
            let v = if legacy {
                1
            } else if p.flow_control() {
                10
            } else {
                7
            };
            want[12] = v;
            assert_eq!(got, want, "{name}");
            assert_eq!(got[12], v, "{name}: v");
            drop(exec);
            drop(c);
            peer.join().unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, 21, "every handshake of both files");
}

#[test]
fn negotiation_and_the_stamped_v_follow_the_relay() {
    let cases: [(Vec<u8>, Form, u8, u8); 6] = [
        (relay_handshake(), Form::Legacy, 1, 1),
        (gen_handshake(1), Form::Current, 1, 7),
        (gen_handshake(5), Form::Current, 5, 7),
        (gen_handshake(7), Form::Current, 7, 7),
        (gen_handshake(9), Form::Current, 9, 7),
        (gen_handshake(10), Form::Current, 10, 7),
    ];
    for (hs, form, negotiated, stamp) in cases {
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, peer) = peer_with(hs, move |mut s| {
            tx.send(recv_frame(&mut s).1.version).unwrap();
        });
        let c = short_connect(&path).unwrap();
        assert_eq!(c.peer().form(), form);
        assert_eq!(c.peer().generation(), negotiated);
        assert_eq!(c.peer().stamped_generation(), stamp);
        // Flow control needs generation 10 and exec_limits: none here.
        assert!(!c.peer().enable_flow_control());
        let _e = Exec::start(&c, &ExecRequest::new("true"), T).unwrap();
        assert_eq!(rx.recv_timeout(T).unwrap(), stamp, "{form:?} {negotiated}");
        drop(c);
        peer.join().unwrap();
    }

    // Generation 10 with exec_limits: once flow control is switched on,
    // every frame carries 10.
    let hs = current_handshake(1, 33554431, 10, &ready_of("0.7.13", true));
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, peer) = peer_with(hs, move |mut s| {
        tx.send(recv_frame(&mut s).1.version).unwrap();
    });
    let c = short_connect(&path).unwrap();
    // Switched on by the connection itself, before its first frame.
    assert!(c.peer().flow_control());
    assert_eq!(c.peer().stamped_generation(), 10);
    let _e = Exec::start(&c, &ExecRequest::new("true"), T).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), 10);
    drop(c);
    peer.join().unwrap();
}

#[test]
fn types_above_the_negotiated_generation_are_refused_before_sending() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, peer) = peer_with(gen_handshake(3), move |mut s| {
        // The first frame to arrive must be the exec request sent last.
        tx.send(recv_frame(&mut s).1.message_type).unwrap();
    });
    let c = short_connect(&path).unwrap();
    let id = c.alloc_id().unwrap();
    let err = c
        .send(&MessageType::TcpConnect, id, b"\xa0", T)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                message_type: "core.tcp.connect",
                needs: 4,
                speaks: 3
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "core.tcp.connect needs protocol generation 4; this sandbox speaks 3"
    );
    let err = c.send(&MessageType::Ping, id, b"\xa0", T).unwrap_err();
    assert!(matches!(err, Error::Unsupported { needs: 6, .. }), "{err}");
    // The raw tier refuses what an agent would die on.
    for t in ["core.ready", "core.exec.exited", "core.nope"] {
        let err = c
            .send(&MessageType::from_wire(t), id, b"\xa0", T)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{t}: {err}");
        let err = c
            .request(&MessageType::from_wire(t), b"\xa0", T)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{t}: {err}");
    }
    // Ids outside the range, and id 0 for anything but a shutdown.
    for bad in [0, 33554431, u32::MAX] {
        let err = c
            .send(&MessageType::ExecStdin, bad, b"\xa0", T)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
    }
    let _e = Exec::start(&c, &ExecRequest::new("true"), T).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), MessageType::ExecRequest);
    drop(c);
    peer.join().unwrap();
}

#[test]
fn a_0_5_0_sandbox_runs_commands_but_refuses_the_filesystem() {
    let (tx, rx) = std::sync::mpsc::channel();
    let hs = current_handshake(1, 33554431, 1, &ready_of("", false));
    let (path, peer) = peer_with(hs, move |mut s| {
        tx.send(recv_frame(&mut s).1.message_type).unwrap();
    });
    let c = short_connect(&path).unwrap();
    assert_eq!((c.peer().form(), c.peer().generation()), (Form::Current, 1));
    assert_eq!(c.peer().agent_version(), "");
    let want = "core.fs.request needs protocol generation 2; this sandbox speaks 1";
    let errs = [
        fs::stat(&c, "/", T).unwrap_err(),
        fs::read_file(&c, "/f", T).unwrap_err(),
        fs::write_file(&c, "/f", b"x", None, T).unwrap_err(),
        fs::mkdir(&c, "/d", T).unwrap_err(),
        fs::FileReader::open(&c, "/f", T).err().unwrap(),
        fs::FileWriter::create(&c, "/f", None, T).err().unwrap(),
    ];
    for err in errs {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert_eq!(err.to_string(), want);
    }
    let _e = Exec::start(&c, &ExecRequest::new("true"), T).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), MessageType::ExecRequest);
    drop(c);
    peer.join().unwrap();
}

#[test]
fn current_ids_are_single_use_and_run_out() {
    let hs = current_handshake(5, 8, 7, &ready_of("0.6.14", false));
    let (path, peer) = peer_with(hs, |mut s| {
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    });
    let c = short_connect(&path).unwrap();
    assert_eq!(
        c.peer().form(),
        Form::Current,
        "a tiny range reads as current"
    );
    let r = c.peer().id_range();
    assert_eq!((r.start, r.end), (5, 8));
    assert_eq!(c.id_offset(), 4);
    let a = c.subscribe_new().unwrap();
    assert_eq!(a.id(), 5);
    assert_eq!(c.alloc_id().unwrap(), 6);
    drop(a);
    // Freed, but used: a 0.7 relay would disconnect on its reuse.
    assert!(matches!(c.subscribe(5), Err(Error::IdUnavailable(5))));
    let b = c.subscribe(6).unwrap();
    assert!(matches!(c.subscribe(6), Err(Error::IdUnavailable(6))));
    let last = c.subscribe_new().unwrap();
    assert_eq!(last.id(), 7);
    assert!(matches!(c.subscribe_new(), Err(Error::IdsExhausted)));
    assert!(matches!(c.alloc_id(), Err(Error::IdsExhausted)));
    let err = Exec::start(&c, &ExecRequest::new("true"), T).err().unwrap();
    assert!(matches!(err, Error::IdsExhausted));
    assert!(err.to_string().contains("reconnect"), "{err}");
    drop((b, last));
    drop(c);
    peer.join().unwrap();
}

#[test]
fn broken_handshakes_name_what_broke() {
    let ready = ready_frame(7, &ready_of("0.6.14", false));
    let mut truncated_frame = vec![0, 0, 0, 1, 1, 255, 255, 255];
    truncated_frame.extend(&ready[..ready.len() / 2]);
    let mut nonzero_id = vec![0, 0, 0, 1, 1, 255, 255, 255];
    let mut f = ready.clone();
    f[7] = 9; // the ready frame's id
    nonzero_id.extend(f);
    let mut big_legacy = (u32::MAX - LEGACY_ID_RANGE_STEP + 1).to_be_bytes().to_vec();
    big_legacy.extend(ready_frame(1, &ready_of("", false)));
    let cases: [(Vec<u8>, &str); 5] = [
        (vec![0, 0, 0, 0, 0, 0], "truncated after 6"),
        (truncated_frame, "truncated"),
        (nonzero_id, "id 9"),
        (
            [50_000_000u32.to_be_bytes(), 40_000_000u32.to_be_bytes()].concat(),
            "invalid relay id range: start=50000000, end=40000000",
        ),
        (big_legacy, "leaves no room"),
    ];
    for (bytes, needle) in cases {
        let (path, peer) = peer_with(bytes, |_| {});
        let err = short_connect(&path).err().unwrap();
        assert!(matches!(err, Error::Handshake(_)), "{needle}: {err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        peer.join().unwrap();
    }
    // Nothing at all: the relay is full or the guest stalled.
    let (path, peer) = peer_with(Vec::new(), |_| {});
    let err = short_connect(&path).err().unwrap();
    assert!(matches!(err, Error::RelayBusy), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");
    peer.join().unwrap();
}

/// Reads the next `core.fs.request` and checks it byte for byte against
/// `op` encoded at v 7 with SESSION_START; returns its id.
fn expect_fs_request(s: &mut UnixStream, op: payload::FsOp) -> u32 {
    let (raw, m) = recv_frame(s);
    assert_eq!(m.message_type, MessageType::FsRequest, "{m:?}");
    let mut want = Vec::new();
    let p = payload::FsRequest::new(op.clone()).to_bytes();
    encode_frame(&mut want, "core.fs.request", m.id, 2, 7, &p);
    assert_eq!(raw, want, "{op:?}");
    m.id
}

fn fs_reply(s: &mut UnixStream, id: u32, data: Option<FsResponseData>) {
    let r = payload::FsResponse {
        data,
        ..payload::FsResponse::ok()
    };
    send_frame(s, "core.fs.response", id, 7, &r.to_bytes());
}

/// Reads the next frame: `core.fs.data` on `id` carrying `data`.
fn expect_fs_data(s: &mut UnixStream, id: u32, data: &[u8]) {
    let (raw, m) = recv_frame(s);
    let mut want = Vec::new();
    encode_frame(
        &mut want,
        "core.fs.data",
        id,
        0,
        7,
        &Data {
            data: bytes::Bytes::copy_from_slice(data),
        }
        .to_bytes(),
    );
    assert_eq!(raw, want, "{m:?}");
}

#[test]
fn generation_2_filesystem_conversations_go_through_handles() {
    use payload::FsOp as Op;
    let (path, peer) = peer_with(gen_handshake(7), |mut s| {
        // write_file: open, Write with the length, data, EOF, close.
        let open = expect_fs_request(
            &mut s,
            Op::OpenFile {
                path: "/f".into(),
                options: FsOpenOptions {
                    write: true,
                    create: true,
                    truncate: true,
                    mode: Some(0o644),
                    ..FsOpenOptions::default()
                },
            },
        );
        fs_reply(&mut s, open, Some(FsResponseData::Handle(42)));
        let w = expect_fs_request(
            &mut s,
            Op::Write {
                handle: 42,
                offset: 0,
                len: Some(5),
            },
        );
        expect_fs_data(&mut s, w, b"hello");
        expect_fs_data(&mut s, w, b"");
        fs_reply(&mut s, w, None);
        let close = expect_fs_request(&mut s, Op::CloseHandle { handle: 42 });
        fs_reply(&mut s, close, None);

        // read_file: open for reading, Read to the end, chunks, close.
        let open = expect_fs_request(
            &mut s,
            Op::OpenFile {
                path: "/f".into(),
                options: FsOpenOptions {
                    read: true,
                    ..FsOpenOptions::default()
                },
            },
        );
        fs_reply(&mut s, open, Some(FsResponseData::Handle(43)));
        let r = expect_fs_request(
            &mut s,
            Op::Read {
                handle: 43,
                offset: 0,
                len: None,
            },
        );
        for chunk in [&b"hel"[..], b"lo"] {
            send_frame(
                &mut s,
                "core.fs.data",
                r,
                7,
                &Data {
                    data: bytes::Bytes::copy_from_slice(chunk),
                }
                .to_bytes(),
            );
        }
        fs_reply(&mut s, r, None);
        let close = expect_fs_request(&mut s, Op::CloseHandle { handle: 43 });
        fs_reply(&mut s, close, None);

        // stat does not follow links; remove_dir is recursive; mkdir
        // sends no mode and no user.
        let st = expect_fs_request(
            &mut s,
            Op::Stat {
                path: "/l".into(),
                follow_symlink: false,
            },
        );
        let entry = FsEntryInfo {
            path: "/l".into(),
            kind: "symlink".into(),
            size: 1,
            mode: 0o120777,
            modified: Some(5),
            uid: 1000,
            gid: 100,
            atime: Some(4),
            mtime: Some(5),
        };
        fs_reply(&mut s, st, Some(FsResponseData::Stat(entry)));
        let rd = expect_fs_request(
            &mut s,
            Op::RemoveDir {
                path: "/d".into(),
                recursive: true,
            },
        );
        fs_reply(&mut s, rd, None);
        let mk = expect_fs_request(
            &mut s,
            Op::Mkdir {
                path: "/a/b".into(),
                mode: None,
                user: None,
            },
        );
        fs_reply(&mut s, mk, None);

        // A write the guest refuses: the handle is closed all the same.
        let open = recv_frame(&mut s).1;
        fs_reply(&mut s, open.id, Some(FsResponseData::Handle(44)));
        let (_, w) = recv_frame(&mut s);
        let refused = payload::FsResponse::error("write: denied").to_bytes();
        send_frame(&mut s, "core.fs.response", w.id, 7, &refused);
        loop {
            let (_, m) = recv_frame(&mut s);
            if m.message_type == MessageType::FsRequest {
                let req = payload::FsRequest::decode(&m.payload).unwrap();
                assert_eq!(req.op, Op::CloseHandle { handle: 44 });
                fs_reply(&mut s, m.id, None);
                break;
            }
            assert_eq!((m.message_type, m.id), (MessageType::FsData, w.id));
        }
        // Keep the socket open until the client is done.
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    });
    let c = short_connect(&path).unwrap();
    fs::write_file(&c, "/f", b"hello", Some(0o644), T).unwrap();
    assert_eq!(&fs::read_file(&c, "/f", T).unwrap()[..], b"hello");
    let e = fs::stat(&c, "/l", T).unwrap();
    assert_eq!(
        (e.kind.as_str(), e.uid, e.mode),
        ("symlink", 1000, 0o120777)
    );
    fs::remove_dir(&c, "/d", T).unwrap();
    fs::mkdir(&c, "/a/b", T).unwrap();
    let err = fs::write_file(&c, "/ro", b"x", None, T).unwrap_err();
    assert!(
        matches!(&err, Error::Guest(m) if m == "write: denied"),
        "{err}"
    );
    // The close of the refused write reaches the peer before we hang up.
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    peer.join().unwrap();
}

/// The next frame that opens a session, skipping stdin and the like.
fn recv_request(s: &mut UnixStream) -> Message {
    loop {
        let (_, m) = recv_frame(s);
        if m.flags == microsandbox_agent::protocol::FLAG_SESSION_START {
            return m;
        }
    }
}

fn exec_failed_payload() -> Vec<u8> {
    ExecFailed {
        kind: ExecFailureKind::from_wire("not_found"),
        errno: Some(2),
        errno_name: Some("ENOENT".into()),
        message: "no such file or directory".into(),
        stage: Some("spawn".into()),
    }
    .to_bytes()
}

#[test]
fn exec_failures_stdin_errors_and_core_error_become_typed() {
    let (path, peer) = peer_with(gen_handshake(7), |mut s| {
        // run(): the command cannot start.
        let m = recv_request(&mut s);
        send_frame(&mut s, "core.exec.failed", m.id, 7, &exec_failed_payload());
        // A started process whose stdin cannot be written.
        let m = recv_request(&mut s);
        send_frame(
            &mut s,
            "core.exec.started",
            m.id,
            7,
            &ExecStarted { pid: 7 }.to_bytes(),
        );
        let stdin_error = ExecStdinError {
            errno: Some(32),
            errno_name: Some("EPIPE".into()),
            message: "broken pipe".into(),
        };
        send_frame(
            &mut s,
            "core.exec.stdin.error",
            m.id,
            7,
            &stdin_error.to_bytes(),
        );
        send_frame(
            &mut s,
            "core.exec.exited",
            m.id,
            7,
            &ExecExited { code: 0 }.to_bytes(),
        );
        // The agent refuses an exec, and an fs request.
        for _ in 0..2 {
            let m = recv_request(&mut s);
            let e = CoreError {
                kind: CoreErrorKind::from_wire("invalid_payload"),
                message: "bad payload".into(),
                offending_type: None,
                init_failure: None,
                workload_failure: None,
            };
            send_frame(&mut s, "core.error", m.id, 7, &e.to_bytes());
        }
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    });
    let c = short_connect(&path).unwrap();
    let err = exec::run(&c, &ExecRequest::new("nope"), 64, T).unwrap_err();
    let Error::ExecFailed(f) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (f.kind.as_str(), f.errno, f.stage.as_deref()),
        ("not_found", Some(2), Some("spawn"))
    );
    let text = err.to_string();
    assert!(text.contains("no such file") && text.contains("not_found") && text.contains("spawn"));

    let e = Exec::start(&c, &ExecRequest::new("cat"), T).unwrap();
    let mut events = Vec::new();
    while let Pulled::Item(ev) = e.next_event(Some(T)).unwrap() {
        events.push(ev);
    }
    assert_eq!(
        events,
        [
            ExecEvent::Started { pid: 7 },
            ExecEvent::StdinError {
                errno: Some(32),
                errno_name: Some("EPIPE".into()),
                message: "broken pipe".into()
            },
            ExecEvent::Exited { code: 0 },
        ]
    );

    let e = Exec::start(&c, &ExecRequest::new("x"), T).unwrap();
    let err = e.next_event(Some(T)).unwrap_err();
    assert!(
        matches!(&err, Error::Agent { kind, message } if kind == "invalid_payload" && message == "bad payload"),
        "{err}"
    );
    assert!(matches!(e.next_event(Some(T)).unwrap(), Pulled::Ended));
    let err = fs::stat(&c, "/", T).unwrap_err();
    assert!(
        matches!(&err, Error::Agent { kind, .. } if kind == "invalid_payload"),
        "{err}"
    );
    // Earlier execs still hold the client: close it for the peer to see the end.
    c.close();
    drop((e, c));
    peer.join().unwrap();
}

#[test]
fn legacy_relays_deliver_exec_failed_too() {
    // Agents 0.4.4..0.4.6 answer a spawn failure with core.exec.failed
    // behind a legacy relay.
    let (path, peer) = scripted_peer(|mut s| {
        let (_, m) = recv_frame(&mut s);
        assert_eq!(m.version, 1);
        send_frame(&mut s, "core.exec.failed", m.id, 1, &exec_failed_payload());
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    });
    let c = short_connect(&path).unwrap();
    assert!(c.peer().is_legacy());
    let err = exec::run(&c, &ExecRequest::new("nope"), 64, T).unwrap_err();
    assert!(
        matches!(&err, Error::ExecFailed(f) if f.kind == "not_found"),
        "{err}"
    );
    drop(c);
    peer.join().unwrap();
}
