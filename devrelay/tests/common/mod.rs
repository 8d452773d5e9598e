//! A relay process per test and a small synchronous protocol client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use microsandbox_agent::protocol::payload::legacy::{FsOp, FsRequest, FsResponse};
use microsandbox_agent::protocol::payload::{
    Data, ExecExited, ExecRequest, ExecStarted, Payload, Ready,
};
use microsandbox_agent::protocol::payload::{ExecFailed, ExecOutputAck, ExecStdinError};
use microsandbox_agent::protocol::{
    encode_frame, FrameDecoder, Message, MessageType, LEGACY_ID_RANGE_STEP,
};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "msb-devrelay-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `msb-devrelay`, killed on drop.
pub struct Relay {
    pub child: Child,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub dir: TempDir,
    pub stderr: Option<std::process::ChildStderr>,
}

impl Relay {
    pub fn start(tag: &str) -> Relay {
        Relay::start_with(tag, &[])
    }

    /// Starts the relay with `--root <dir>/root` plus `extra` arguments,
    /// imitating 0.3.14 unless `extra` names a profile.
    pub fn start_with(tag: &str, extra: &[&str]) -> Relay {
        if extra.contains(&"--profile") {
            Relay::start_raw(tag, extra)
        } else {
            Relay::start_raw(tag, &[&["--profile", "0.3.14"], extra].concat())
        }
    }

    /// Starts the relay imitating `profile`, with `extra` arguments.
    pub fn start_profile(tag: &str, profile: &str, extra: &[&str]) -> Relay {
        Relay::start_raw(tag, &[&["--profile", profile], extra].concat())
    }

    fn start_raw(tag: &str, extra: &[&str]) -> Relay {
        let dir = TempDir::new(tag);
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let socket = dir.path().join("relay.sock");
        let mut command = Command::new(env!("CARGO_BIN_EXE_msb-devrelay"));
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .args(extra);
        Relay::spawn(command, dir, socket, root)
    }

    pub fn spawn(mut command: Command, dir: TempDir, socket: PathBuf, root: PathBuf) -> Relay {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start msb-devrelay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(TIMEOUT).expect("relay ready line");
        assert_eq!(
            line,
            format!("msb-devrelay listening on {}\n", socket.display())
        );
        Relay {
            stderr: child.stderr.take(),
            child,
            socket,
            root,
            dir,
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn raw_connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    /// Waits for the relay to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the relay logged.
        if std::thread::panicking() {
            if let Some(mut stderr) = self.stderr.take() {
                let mut log = String::new();
                let _ = stderr.read_to_string(&mut log);
                eprintln!("--- relay stderr ---\n{log}--- end ---");
            }
        }
    }
}

/// Reads until `n` bytes arrived or EOF/timeout; returns what arrived.
pub fn read_up_to(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match stream.read(&mut out[filled..]) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break,
            Ok(k) => filled += k,
        }
    }
    out.truncate(filled);
    out
}

/// True if the peer closed: EOF before `timeout`.
pub fn sees_eof(stream: &mut UnixStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// True if nothing at all arrives (and the peer does not close) for `wait`.
pub fn stays_silent(stream: &mut UnixStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1];
    let silent = loop {
        match stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            Ok(_) => break false,
        }
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    silent
}

/// Encodes a frame with the flags of its type, stamped `v = 1`.
pub fn frame(message_type: MessageType, id: u32, payload: &[u8]) -> Vec<u8> {
    frame_v(1, message_type, id, payload)
}

/// Encodes a frame with the flags of its type, stamped `v`.
pub fn frame_v(v: u8, message_type: MessageType, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        message_type.as_str(),
        id,
        message_type.flags(),
        v,
        payload,
    );
    out
}

/// The three profiles the relay imitates.
pub const PROFILES: [&str; 3] = ["0.3.14", "0.6.14", "0.7.13"];

/// Generates one test per profile from `fn name(profile: &str)`.
#[macro_export]
macro_rules! for_profiles {
    ($body:ident: $($test:ident = $profile:literal),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                $body($profile)
            }
        )+
    };
}

pub struct Client {
    pub stream: UnixStream,
    pub decoder: FrameDecoder,
    /// Legacy handshakes: the announced offset; current: `id_start - 1`.
    pub id_offset: u32,
    /// The usable ids, half-open.
    pub id_start: u32,
    pub id_end: u32,
    pub legacy: bool,
    pub ready: Ready,
    /// The `v` of the ready frame.
    pub ready_v: u8,
    /// The `v` this client stamps (1 on legacy, else the peer's).
    pub v: u8,
    /// Acknowledge exec output as it is collected (generation 10).
    pub auto_ack: bool,
    next_id: u32,
    read_buf: Vec<u8>,
}

/// Everything an exec produced.
#[derive(Debug, Default)]
pub struct ExecOutcome {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: i32,
    /// The `core.exec.failed` payload, if the exec never started.
    pub failed: Option<ExecFailed>,
    /// `core.exec.stdin.error` payloads.
    pub stdin_errors: Vec<ExecStdinError>,
    /// Types in arrival order.
    pub sequence: Vec<MessageType>,
}

impl ExecOutcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let mut stream = UnixStream::connect(socket).expect("connect to relay");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        // Upstream's classification of the first 8 bytes.
        let mut words = [0u8; 8];
        stream.read_exact(&mut words).expect("handshake prologue");
        let w0 = u32::from_be_bytes(words[..4].try_into().unwrap());
        let w1 = u32::from_be_bytes(words[4..].try_into().unwrap());
        let legacy = (5..=4 * 1024 * 1024).contains(&w1) && (w0 == 0 || w0 >= w1);
        let (id_start, id_end) = if legacy {
            (w0 + 1, w0 + LEGACY_ID_RANGE_STEP)
        } else {
            assert!(w0 < w1, "invalid range {w0}..{w1}");
            (w0, w1)
        };
        let mut client = Client {
            stream,
            decoder: FrameDecoder::new(),
            id_offset: id_start - 1,
            id_start,
            id_end,
            legacy,
            ready: Ready::default(),
            ready_v: 0,
            v: 1,
            auto_ack: false,
            next_id: id_start,
            read_buf: vec![0u8; 256 * 1024],
        };
        if legacy {
            // The second word was the ready frame's length prefix.
            client.decoder.extend(&words[4..]);
        }
        let ready = client.recv();
        assert_eq!(ready.message_type, MessageType::Ready);
        assert_eq!(ready.id, 0);
        assert_eq!(ready.flags, 0);
        client.ready = Ready::decode(&ready.payload).unwrap();
        client.ready_v = ready.version;
        if !legacy {
            client.v = ready.version;
        }
        client.auto_ack = client.v >= 10 && client.ready.exec_limits.is_some();
        client
    }

    /// Stamps at most generation 7, as a 0.6.14 client does: execs take the
    /// legacy path (no flow control) even on 0.7.13.
    pub fn at_most_gen7(&mut self) {
        self.v = self.v.min(7);
        self.auto_ack = false;
    }

    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn send(&mut self, message_type: MessageType, id: u32, payload: &[u8]) {
        self.stream
            .write_all(&frame_v(self.v, message_type, id, payload))
            .unwrap();
    }

    pub fn send_payload(&mut self, message_type: MessageType, id: u32, payload: &impl Payload) {
        self.send(message_type, id, &payload.to_bytes());
    }

    pub fn send_data(&mut self, message_type: MessageType, id: u32, data: &[u8]) {
        self.send_payload(
            message_type,
            id,
            &Data {
                data: Bytes::copy_from_slice(data),
            },
        );
    }

    /// The next frame, or `None` on EOF or timeout.
    pub fn try_recv(&mut self) -> Option<Message> {
        loop {
            if let Some(raw) = self.decoder.next_frame().expect("well-formed frame") {
                let message = raw.decode().expect("decodable frame");
                assert_eq!(
                    message.flags,
                    message.message_type.flags(),
                    "flags of {}",
                    message.message_type
                );
                return Some(message);
            }
            match self.stream.read(&mut self.read_buf) {
                Ok(0) => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
                Ok(n) => self.decoder.extend(&self.read_buf[..n]),
            }
        }
    }

    pub fn recv(&mut self) -> Message {
        self.try_recv().expect("a frame from the relay")
    }

    /// Starts an exec and returns its id.
    pub fn start_exec(&mut self, req: &ExecRequest) -> u32 {
        let id = self.next_id();
        self.send_payload(MessageType::ExecRequest, id, req);
        id
    }

    /// Collects an exec's frames until `core.exec.exited`.
    pub fn finish_exec(&mut self, id: u32) -> ExecOutcome {
        let mut outcome = ExecOutcome::default();
        let mut charged = 0u64;
        loop {
            let m = self.recv();
            assert_eq!(m.id, id, "frame {} for another id", m.message_type);
            outcome.sequence.push(m.message_type.clone());
            match m.message_type {
                MessageType::ExecStarted => {
                    outcome.pid = Some(ExecStarted::decode(&m.payload).unwrap().pid)
                }
                MessageType::ExecStdout | MessageType::ExecStderr => {
                    let data = Data::decode(&m.payload).unwrap().data;
                    if m.message_type == MessageType::ExecStdout {
                        outcome.stdout.extend_from_slice(&data);
                    } else {
                        outcome.stderr.extend_from_slice(&data);
                    }
                    if self.auto_ack {
                        charged += data.len() as u64 + 256;
                        self.ack_output(id, charged);
                    }
                }
                MessageType::ExecStdinAck => {}
                MessageType::ExecStdinError => outcome
                    .stdin_errors
                    .push(ExecStdinError::decode(&m.payload).unwrap()),
                MessageType::ExecExited => {
                    outcome.code = ExecExited::decode(&m.payload).unwrap().code;
                    return outcome;
                }
                MessageType::ExecFailed => {
                    outcome.code = -1;
                    outcome.failed = Some(ExecFailed::decode(&m.payload).unwrap());
                    return outcome;
                }
                other => panic!("unexpected {other} in an exec"),
            }
        }
    }

    /// `core.exec.output.ack` with a cumulative total.
    pub fn ack_output(&mut self, id: u32, consumed: u64) {
        self.send_payload(MessageType::ExecOutputAck, id, &ExecOutputAck { consumed });
    }

    pub fn exec(&mut self, req: &ExecRequest) -> ExecOutcome {
        let id = self.start_exec(req);
        self.finish_exec(id)
    }

    /// Sends an fs request and returns its id.
    pub fn start_fs(&mut self, op: FsOp) -> u32 {
        let id = self.next_id();
        self.send_payload(MessageType::FsRequest, id, &FsRequest { op });
        id
    }

    /// One-shot fs op: request, then the single response.
    pub fn fs(&mut self, op: FsOp) -> FsResponse {
        let id = self.start_fs(op);
        let m = self.recv();
        assert_eq!(m.id, id);
        assert_eq!(m.message_type, MessageType::FsResponse);
        FsResponse::decode(&m.payload).unwrap()
    }

    /// Reads a file: data chunks (sizes returned too), then the response.
    pub fn read_file(&mut self, path: &str) -> (Vec<u8>, Vec<usize>, FsResponse) {
        let id = self.start_fs(FsOp::Read { path: path.into() });
        let mut data = Vec::new();
        let mut chunks = Vec::new();
        loop {
            let m = self.recv();
            assert_eq!(m.id, id);
            match m.message_type {
                MessageType::FsData => {
                    let chunk = Data::decode(&m.payload).unwrap().data;
                    chunks.push(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                MessageType::FsResponse => {
                    return (data, chunks, FsResponse::decode(&m.payload).unwrap())
                }
                other => panic!("unexpected {other} in a read"),
            }
        }
    }

    /// Writes a file in chunks of `chunk` bytes, then EOF; returns the response.
    pub fn write_file(
        &mut self,
        path: &str,
        mode: Option<u32>,
        data: &[u8],
        chunk: usize,
    ) -> FsResponse {
        let id = self.start_fs(FsOp::Write {
            path: path.into(),
            mode,
        });
        for piece in data.chunks(chunk) {
            self.send_data(MessageType::FsData, id, piece);
        }
        self.send_data(MessageType::FsData, id, &[]);
        let m = self.recv();
        assert_eq!(m.id, id);
        assert_eq!(m.message_type, MessageType::FsResponse);
        FsResponse::decode(&m.payload).unwrap()
    }
}

pub fn exec_req(cmd: &str, args: &[&str]) -> ExecRequest {
    let mut req = ExecRequest::new(cmd);
    req.args = args.iter().map(|s| s.to_string()).collect();
    req
}

pub fn sh(script: &str) -> ExecRequest {
    exec_req("sh", &["-c", script])
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}
