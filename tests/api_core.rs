//! The TCP, liveness and generation-2 file conversations of the client
//! core, against a scripted relay: the frames the client sends are checked
//! one by one, which the C suites (run against the development relay)
//! cannot see.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use microsandbox_agent::client::handles::{self, File};
use microsandbox_agent::client::tcp::TcpStream;
use microsandbox_agent::client::{liveness, Client, ClientOptions, Error, Pulled};
use microsandbox_agent::protocol::payload::{
    Data, Empty, FsOpenOptions, FsResponse, FsResponseData, Payload, Ready, TcpFailed, Touched,
};
use microsandbox_agent::protocol::{decode_borrowed, encode_frame, FrameHeader, Message};

const T: Duration = Duration::from_secs(10);
const ID_START: u32 = 33554431;

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A peer that answers with the handshake of a current relay whose agent
/// speaks `generation` (or a legacy relay's when `generation` is 1), then
/// runs `script` on the socket.
fn scripted_peer(
    generation: u8,
    script: impl FnOnce(UnixStream) + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let dir = std::env::temp_dir().join(format!("msb-api-peer-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hs = if generation == 1 {
            0u32.to_be_bytes().to_vec()
        } else {
            let mut v = ID_START.to_be_bytes().to_vec();
            v.extend_from_slice(&(2 * ID_START).to_be_bytes());
            v
        };
        let ready = Ready::default();
        encode_frame(&mut hs, "core.ready", 0, 0, generation, &ready.to_bytes());
        s.write_all(&hs).unwrap();
        script(s);
    });
    (path, t)
}

fn read_message(s: &mut UnixStream) -> Message {
    let mut buf = vec![0u8; 4];
    s.read_exact(&mut buf).unwrap();
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    buf.resize(4 + len, 0);
    s.read_exact(&mut buf[4..]).unwrap();
    let header = FrameHeader::parse(&buf).unwrap().unwrap();
    decode_borrowed(&header, &buf[9..]).unwrap()
}

fn send(s: &mut UnixStream, t: &str, id: u32, flags: u8, payload: &[u8]) {
    let mut out = Vec::new();
    encode_frame(&mut out, t, id, flags, 7, payload);
    s.write_all(&out).unwrap();
}

fn connect(path: &PathBuf) -> Client {
    Client::connect(path, &ClientOptions::default()).unwrap()
}

#[test]
fn tcp_writes_in_64k_chunks_reads_to_the_end_and_sends_no_close_after_closed() {
    let (path, peer) = scripted_peer(7, |mut s| {
        let m = read_message(&mut s);
        assert_eq!(m.message_type.static_name(), "core.tcp.connect");
        assert_eq!(m.flags, 0x02);
        let id = m.id;
        send(&mut s, "core.tcp.connected", id, 0, &Empty {}.to_bytes());
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 150_000 {
            let d = read_message(&mut s);
            assert_eq!(d.message_type.static_name(), "core.tcp.data");
            sizes.push(Data::decode(&d.payload).unwrap().data.len());
        }
        assert_eq!(sizes, vec![65536, 65536, 150_000 - 131072]);
        let eof = read_message(&mut s);
        assert_eq!(eof.message_type.static_name(), "core.tcp.eof");
        let data = Data {
            data: bytes::Bytes::from_static(b"answer"),
        };
        send(&mut s, "core.tcp.data", id, 0, &data.to_bytes());
        send(&mut s, "core.tcp.eof", id, 0, &Empty {}.to_bytes());
        send(&mut s, "core.tcp.closed", id, 0x01, &Empty {}.to_bytes());
        // The next frame is the ping sent after the stream was dropped: no
        // core.tcp.close came for a session the guest had ended.
        let ping = read_message(&mut s);
        assert_eq!(ping.message_type.static_name(), "core.ping");
        send(&mut s, "core.pong", ping.id, 0x01, &Empty {}.to_bytes());
    });
    let c = connect(&path);
    let stream = TcpStream::connect(&c, "example", 80, T).unwrap();
    stream.write(&vec![7u8; 150_000], T).unwrap();
    stream.shutdown_write(T).unwrap();
    assert!(stream.write_closed());
    match stream.read(Some(T)).unwrap() {
        Pulled::Item(b) => assert_eq!(&b[..], b"answer"),
        other => panic!("expected data, got {:?}", other.is_nothing()),
    }
    assert!(matches!(stream.read(Some(T)).unwrap(), Pulled::Ended));
    assert!(matches!(
        stream.read(Some(Duration::ZERO)).unwrap(),
        Pulled::Ended
    ));
    drop(stream);
    liveness::ping(&c, T).unwrap();
    peer.join().unwrap();
}

trait IsNothing {
    fn is_nothing(&self) -> bool;
}
impl<T> IsNothing for Pulled<T> {
    fn is_nothing(&self) -> bool {
        matches!(self, Pulled::Nothing)
    }
}

#[test]
fn tcp_connect_timeout_aborts_the_attempt_and_failures_carry_the_guest_text() {
    let (path, peer) = scripted_peer(7, |mut s| {
        let first = read_message(&mut s);
        assert_eq!(first.message_type.static_name(), "core.tcp.connect");
        // No answer: the client gives up and aborts with core.tcp.close.
        let close = read_message(&mut s);
        assert_eq!(close.message_type.static_name(), "core.tcp.close");
        assert_eq!((close.id, close.flags), (first.id, 0));
        let second = read_message(&mut s);
        let failed = TcpFailed {
            error: "connect: Connection refused (os error 111)".into(),
        };
        send(
            &mut s,
            "core.tcp.failed",
            second.id,
            0x01,
            &failed.to_bytes(),
        );
        // Nothing follows the failure: the next frame is the ping.
        let ping = read_message(&mut s);
        assert_eq!(ping.message_type.static_name(), "core.ping");
        send(&mut s, "core.pong", ping.id, 0x01, &Empty {}.to_bytes());
    });
    let c = connect(&path);
    let started = Instant::now();
    let e = TcpStream::connect(&c, "slow", 1, Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = TcpStream::connect(&c, "refused", 1, T).err().unwrap();
    match e {
        Error::Guest(text) => assert!(text.contains("os error 111"), "{text}"),
        e => panic!("expected a guest error, got {e}"),
    }
    liveness::ping(&c, T).unwrap();
    peer.join().unwrap();
}

#[test]
fn touch_returns_the_sequence_and_core_error_is_an_agent_error() {
    let (path, peer) = scripted_peer(7, |mut s| {
        let touch = read_message(&mut s);
        assert_eq!(touch.message_type.static_name(), "core.touch");
        assert_eq!(touch.flags, 0);
        send(
            &mut s,
            "core.touched",
            touch.id,
            0x01,
            &Touched { activity_seq: 42 }.to_bytes(),
        );
        let ping = read_message(&mut s);
        assert_eq!(ping.flags, 0);
        let err = b"\xa2\x64kind\x6finvalid_payload\x67message\x63bad";
        send(&mut s, "core.error", ping.id, 0x01, err);
    });
    let c = connect(&path);
    assert_eq!(liveness::touch(&c, T).unwrap(), 42);
    match liveness::ping(&c, T).unwrap_err() {
        Error::Agent { kind, message } => assert_eq!(
            (kind.as_str(), message.as_str()),
            ("invalid_payload", "bad")
        ),
        e => panic!("expected an agent error, got {e}"),
    }
    peer.join().unwrap();
}

#[test]
fn new_calls_are_unsupported_on_older_sandboxes_and_send_nothing() {
    for generation in [1u8, 5] {
        let (path, peer) = scripted_peer(generation, move |mut s| {
            // The only frame that arrives is the shutdown sent last.
            let m = read_message(&mut s);
            assert_eq!(
                m.message_type.static_name(),
                "core.shutdown",
                "generation {generation}"
            );
        });
        let c = connect(&path);
        let unsupported = |e: Error| matches!(e, Error::Unsupported { .. });
        assert!(unsupported(liveness::ping(&c, T).unwrap_err()));
        assert!(unsupported(liveness::touch(&c, T).unwrap_err()));
        if generation < 4 {
            assert!(unsupported(
                TcpStream::connect(&c, "h", 1, T).err().unwrap()
            ));
        }
        if generation < 2 {
            assert!(unsupported(handles::stat(&c, "/", true, T).unwrap_err()));
            assert!(unsupported(
                handles::remove_dir(&c, "/x", true, T).unwrap_err()
            ));
            let e = File::open(&c, "/x", FsOpenOptions::default(), T)
                .err()
                .unwrap();
            assert!(unsupported(e));
            assert_eq!(c.open_files().count(), 0);
        }
        c.shutdown(T).unwrap();
        peer.join().unwrap();
    }
}

#[test]
fn file_reads_and_writes_go_through_the_handle_and_the_limit_is_explained() {
    let (path, peer) = scripted_peer(7, |mut s| {
        let reply = |s: &mut UnixStream, id: u32, r: FsResponse| {
            send(s, "core.fs.response", id, 0x01, &r.to_bytes());
        };
        // Open: handle 9.
        let open = read_message(&mut s);
        let mut ok = FsResponse::ok();
        ok.data = Some(FsResponseData::Handle(9));
        reply(&mut s, open.id, ok);
        // Write at 5: the request names the handle, offset and length, then
        // the data and an empty chunk end it.
        let w = read_message(&mut s);
        let text = String::from_utf8_lossy(&w.payload).to_string();
        assert!(text.contains("Write"), "{text}");
        let chunk = read_message(&mut s);
        assert_eq!(&Data::decode(&chunk.payload).unwrap().data[..], b"hello");
        let end = read_message(&mut s);
        assert!(Data::decode(&end.payload).unwrap().data.is_empty());
        reply(&mut s, w.id, FsResponse::ok());
        // Read: two chunks, then the response.
        let r = read_message(&mut s);
        for part in [&b"hel"[..], &b"lo"[..]] {
            let d = Data {
                data: bytes::Bytes::copy_from_slice(part),
            };
            send(&mut s, "core.fs.data", r.id, 0, &d.to_bytes());
        }
        reply(&mut s, r.id, FsResponse::ok());
        // Close.
        let close = read_message(&mut s);
        assert!(String::from_utf8_lossy(&close.payload).contains("CloseHandle"));
        reply(&mut s, close.id, FsResponse::ok());
        // A second open is refused at the limit.
        let open2 = read_message(&mut s);
        reply(
            &mut s,
            open2.id,
            FsResponse::error("too many open filesystem handles for relay client: 1024"),
        );
    });
    let c = connect(&path);
    let options = FsOpenOptions {
        read: true,
        write: true,
        ..FsOpenOptions::default()
    };
    let f = File::open(&c, "/f", options.clone(), T).unwrap();
    assert_eq!(f.handle(), 9);
    assert_eq!(c.open_files().count(), 1);
    f.write_at(5, b"hello", T).unwrap();
    assert_eq!(&f.read_at(0, 100, T).unwrap()[..], b"hello");
    f.close(T).unwrap();
    assert!(!f.is_open());
    assert_eq!(c.open_files().count(), 0);
    match File::open(&c, "/g", options, T).err().unwrap() {
        Error::Guest(text) => {
            assert!(text.contains("1024 open handles per connection"), "{text}");
            assert!(text.contains("0 are held"), "{text}");
        }
        e => panic!("expected a guest error, got {e}"),
    }
    assert_eq!(c.open_files().count(), 0);
    drop(f);
    peer.join().unwrap();
}
