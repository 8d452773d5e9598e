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
use microsandbox_agent::protocol::payload::legacy::{FsOp, FsRequest, FsResponse};
use microsandbox_agent::protocol::payload::{Data, ExecExited, ExecRequest, Payload, Ready};
use microsandbox_agent::protocol::{encode_frame, MessageType, LEGACY_ID_RANGE_STEP};

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
        // The client speaks only the legacy handshake so far.
        let profile =
            std::env::var("MSB_DEVRELAY_PROFILE").unwrap_or_else(|_| "0.3.14".to_string());
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

/// `core.fs.request {Stat "/"}`.
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
    assert!(id > 0 && id < LEGACY_ID_RANGE_STEP);
}

#[test]
fn request_response_round_trip() {
    let relay = Relay::start(&[]);
    let c = relay.connect();
    let reply = c.request(&MessageType::FsRequest, &stat_root(), T).unwrap();
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
    let small = stat_root();
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
    let payload = Arc::new(
        FsRequest {
            op: FsOp::Stat { path: "/f".into() },
        }
        .to_bytes(),
    );
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
fn sixteen_clients_get_disjoint_ranges_and_the_seventeenth_is_refused() {
    let relay = Relay::start(&[]);
    let clients: Vec<Client> = (0..16).map(|_| relay.connect()).collect();
    let mut offsets: Vec<u32> = clients.iter().map(|c| c.id_offset()).collect();
    offsets.sort();
    let expected: Vec<u32> = (0..16).map(|k| k * LEGACY_ID_RANGE_STEP).collect();
    assert_eq!(offsets, expected);
    for c in &clients {
        let id = c.alloc_id().unwrap();
        assert!(
            id > c.id_offset() && (id as u64) < c.id_offset() as u64 + LEGACY_ID_RANGE_STEP as u64
        );
        assert!(fs::stat(c, "/", T).is_ok());
    }
    let err = Client::connect(&relay.socket, &ClientOptions::default())
        .err()
        .expect("17th connection must fail");
    assert!(matches!(err, Error::RelayBusy), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    // A freed slot is handed out again.
    drop(clients);
    std::thread::sleep(Duration::from_millis(200));
    let again = relay.connect();
    assert_eq!(again.id_offset() % LEGACY_ID_RANGE_STEP, 0);
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
    let options = ClientOptions {
        memory_budget: 256 * 1024,
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
    let dir = std::env::temp_dir().join(format!("msb-peer-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&relay_handshake()).unwrap();
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
        0, 5, 4090, 8191, 8192, 9000, 16_384, 65_536, 65_536, 8192, 70_000, 100, 300_000, 4096,
        12_000, 12_000, 12_000, 1,
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
