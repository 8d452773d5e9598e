//! One client connection: handshake, request reader, teardown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use microsandbox_agent::protocol::payload::legacy::{FsOp, FsRequest, FsResponse};
use microsandbox_agent::protocol::payload::{
    Data, ExecExited, ExecRequest, ExecResize, ExecSignal, Payload, Ready,
};
use microsandbox_agent::protocol::{FrameDecoder, Message, MessageType, LEGACY_ID_RANGE_STEP};

use crate::exec::{self, ExecEnv, ExecTable, ProcessRegistry};
use crate::fault::{self, AfterFault, Fault};
use crate::fs::{self, GuestFs, PendingWrite};
use crate::log;
use crate::outbox::{data_frame, typed_frame, Hangup, Outbox};

/// Socket reads are this large so that one read usually yields many frames.
const READ_BUFFER: usize = 256 * 1024;

/// State shared by every connection.
pub struct Relay {
    pub fs: GuestFs,
    pub fault: Option<Fault>,
    pub exec_chunk: usize,
    pub processes: Arc<ProcessRegistry>,
    pub ready: Ready,
    /// Told when a client sends `core.shutdown`.
    pub shutdown: mpsc::UnboundedSender<()>,
}

/// A connection in the serving state.
struct Connection {
    relay: Arc<Relay>,
    id_offset: u32,
    outbox: Outbox,
    hangup: Arc<Hangup>,
    execs: ExecTable,
    writes: HashMap<u32, PendingWrite>,
}

/// Why the reader stopped.
enum Stop {
    ClientLeft,
    /// The stream cannot be resynchronised, or the client sent something we
    /// refuse to guess about.
    Protocol(String),
}

pub async fn serve(relay: Arc<Relay>, mut stream: UnixStream, slot: u32) {
    let id_offset = slot * LEGACY_ID_RANGE_STEP;
    let mut handshake = id_offset.to_be_bytes().to_vec();
    handshake.extend(typed_frame(MessageType::Ready, 0, &relay.ready));

    match fault::run_connection_fault(&mut stream, relay.fault, &handshake).await {
        Err(e) => {
            log!("client {slot}: handshake: {e}");
            return;
        }
        Ok(AfterFault::Serve) => {}
        Ok(AfterFault::Closed) => return,
        Ok(AfterFault::Drain) => return fault::drain(&mut stream).await,
        Ok(AfterFault::StopReading) => {
            return fault::wait_for_hangup_without_reading(&stream).await
        }
    }

    let (reader, writer) = stream.into_split();
    let hangup = Arc::new(Hangup::default());
    let mut conn = Connection {
        outbox: Outbox::start(writer, hangup.clone()),
        relay,
        id_offset,
        hangup: hangup.clone(),
        execs: Arc::new(Mutex::new(HashMap::new())),
        writes: HashMap::new(),
    };
    let stop = tokio::select! {
        stop = conn.read_loop(reader) => stop,
        _ = hangup.wait() => Stop::ClientLeft,
    };
    if let Stop::Protocol(why) = stop {
        log!("client {slot}: closing: {why}");
    }
    // The client is gone or cut off: what it started must not outlive it.
    for control in conn.execs.lock().unwrap().values() {
        exec::signal_group(control.pid, libc::SIGKILL);
    }
    hangup.trigger();
}

impl Connection {
    async fn read_loop(&mut self, mut socket: OwnedReadHalf) -> Stop {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let n = match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return Stop::ClientLeft,
                Ok(n) => n,
            };
            decoder.extend(&buf[..n]);
            loop {
                let raw = match decoder.next_frame() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(e) => return Stop::Protocol(e.to_string()),
                };
                let message = match raw.decode() {
                    Ok(m) => m,
                    Err(e) => return Stop::Protocol(e.to_string()),
                };
                if let Err(stop) = self.dispatch(message).await {
                    return stop;
                }
            }
        }
    }

    async fn dispatch(&mut self, message: Message) -> Result<(), Stop> {
        let id = message.id;
        match &message.message_type {
            MessageType::ExecRequest => self.exec_request(id, &message.payload).await,
            MessageType::ExecStdin => {
                let Some(data) = decode_or_log::<Data>(&message) else {
                    return Ok(());
                };
                // Cloned out so the table lock is not held across the await.
                let queue = self
                    .execs
                    .lock()
                    .unwrap()
                    .get(&id)
                    .map(|c| c.stdin_handle());
                if let Some(queue) = queue {
                    queue.push(data.data).await;
                }
            }
            MessageType::ExecResize => {
                if let Some(size) = decode_or_log::<ExecResize>(&message) {
                    if let Some(control) = self.execs.lock().unwrap().get(&id) {
                        control.resize(size.rows, size.cols);
                    }
                }
            }
            MessageType::ExecSignal => {
                if let Some(signal) = decode_or_log::<ExecSignal>(&message) {
                    if let Some(control) = self.execs.lock().unwrap().get(&id) {
                        control.signal(signal.signal);
                    }
                }
            }
            MessageType::FsRequest => self.fs_request(id, &message.payload).await,
            MessageType::FsData => {
                if let Some(data) = decode_or_log::<Data>(&message) {
                    self.fs_data(id, data.data).await;
                }
            }
            MessageType::Shutdown => {
                log!("core.shutdown received");
                let _ = self.relay.shutdown.send(());
            }
            MessageType::Unknown(t) => {
                return Err(Stop::Protocol(format!(
                    "unknown message type {t:?} (id {id})"
                )))
            }
            other => log!("ignoring {other} (id {id}): not a host-to-guest message"),
        }
        Ok(())
    }

    async fn exec_request(&mut self, id: u32, payload: &Bytes) {
        let fault = self.relay.fault;
        let req = match ExecRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                // Answer anyway, so the client's call ends instead of hanging.
                log!("exec {id}: {e}");
                let text = format!("msb-devrelay: {e}\n");
                let _ = self
                    .outbox
                    .send(data_frame(MessageType::ExecStderr, id, text.as_bytes()))
                    .await;
                let _ = self
                    .outbox
                    .send_payload(MessageType::ExecExited, id, &ExecExited { code: -1 })
                    .await;
                return;
            }
        };
        if fault::before_request(fault, &self.outbox, self.id_offset, id, true)
            .await
            .is_err()
        {
            return;
        }
        if fault::answer_exec(fault, &self.outbox, id).await {
            return;
        }
        let env = ExecEnv {
            outbox: self.outbox.clone(),
            hangup: self.hangup.clone(),
            table: self.execs.clone(),
            registry: self.relay.processes.clone(),
            chunk: self.relay.exec_chunk,
        };
        exec::start(env, id, req).await;
    }

    async fn fs_request(&mut self, id: u32, payload: &Bytes) {
        let fault = self.relay.fault;
        let op = match FsRequest::decode(payload) {
            Ok(r) => r.op,
            Err(e) => {
                log!("fs {id}: {e}");
                let resp = FsResponse::error(e.to_string());
                let _ = self
                    .outbox
                    .send_payload(MessageType::FsResponse, id, &resp)
                    .await;
                return;
            }
        };
        if fault::before_request(fault, &self.outbox, self.id_offset, id, false)
            .await
            .is_err()
        {
            return;
        }
        if fault::answer_fs(fault, &self.outbox, id).await {
            return;
        }
        match op {
            FsOp::Read { path } => {
                let guest_fs = self.relay.fs.clone();
                let outbox = self.outbox.clone();
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    read_file(&guest_fs, &outbox, &runtime, id, &path)
                });
            }
            FsOp::Write { path, mode } => {
                let pending = self.relay.fs.begin_write(&path, mode);
                self.writes.insert(id, pending);
            }
            // These can take long (big trees, big files): off the reader.
            op @ (FsOp::Copy { .. } | FsOp::RemoveDir { .. }) => {
                let guest_fs = self.relay.fs.clone();
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let resp = tokio::task::spawn_blocking(move || guest_fs.serve(&op)).await;
                    if let Ok(resp) = resp {
                        let _ = outbox
                            .send_payload(MessageType::FsResponse, id, &resp)
                            .await;
                    }
                });
            }
            // A few syscalls each: cheaper inline than a task.
            op => {
                let resp = self.relay.fs.serve(&op);
                let _ = self
                    .outbox
                    .send_payload(MessageType::FsResponse, id, &resp)
                    .await;
            }
        }
    }

    async fn fs_data(&mut self, id: u32, data: Bytes) {
        if data.is_empty() {
            let Some(pending) = self.writes.remove(&id) else {
                return;
            };
            let outbox = self.outbox.clone();
            tokio::spawn(async move {
                if let Ok(resp) = tokio::task::spawn_blocking(move || pending.finish()).await {
                    let _ = outbox
                        .send_payload(MessageType::FsResponse, id, &resp)
                        .await;
                }
            });
            return;
        }
        if let Some(pending) = self.writes.get_mut(&id) {
            if pending.push(data) {
                // Bounded work (a few MiB to the page cache); the reader
                // pausing meanwhile is the backpressure a fast uploader needs.
                tokio::task::block_in_place(|| pending.flush());
            }
        }
    }
}

fn decode_or_log<P: Payload>(message: &Message) -> Option<P> {
    match P::decode(&message.payload) {
        Ok(p) => Some(p),
        Err(e) => {
            log!("ignoring {} (id {}): {e}", message.message_type, message.id);
            None
        }
    }
}

/// Streams a file as `core.fs.data` chunks, then the response. Runs on a
/// blocking thread; sending waits on the runtime so the outbox budget holds.
fn read_file(
    guest_fs: &GuestFs,
    outbox: &Outbox,
    runtime: &tokio::runtime::Handle,
    id: u32,
    path: &str,
) {
    let mut connection_gone = false;
    let result = guest_fs.open_for_read(path).and_then(|file| {
        fs::read_chunks(path, file, |chunk| {
            let frame = data_frame(MessageType::FsData, id, chunk);
            connection_gone = runtime.block_on(outbox.send(frame)).is_err();
            !connection_gone
        })
    });
    if connection_gone {
        return;
    }
    let resp = match result {
        Ok(()) => FsResponse::ok(),
        Err(message) => FsResponse::error(message),
    };
    let _ = runtime.block_on(outbox.send_payload(MessageType::FsResponse, id, &resp));
}
