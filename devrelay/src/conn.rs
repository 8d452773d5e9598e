//! One client connection: handshake, the relay's rules, agentd's dispatch,
//! teardown.
//!
//! Each frame first passes the imitated relay's rules (`rules.rs`; a
//! violation disconnects the client), then agentd's checks: a body that is
//! not `{v,t,p}` or an unknown type kills agentd, and with it the sandbox;
//! wrong flags or an undecodable payload get `core.error` from agentds that
//! have it when the frame's `v >= 5`, and kill older ones or older frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use microsandbox_agent::protocol::payload::legacy::{self, FsOp};
use microsandbox_agent::protocol::payload::{
    CoreError, CoreErrorKind, Data, Empty, ExecFailed, ExecFailureKind, ExecLimits, ExecOutputAck,
    ExecRequest, ExecResize, ExecSignal, FsRequest, FsResponse, Payload, TcpConnect, Touched,
};
use microsandbox_agent::protocol::{FrameDecoder, Message, MessageType, RawFrame, FLAG_BULK};

use crate::exec::{self, Controlled, ExecEnv, ExecTable, FlowTable, ProcessRegistry};
use crate::fault::{self, AfterFault, Fault, Handshake};
use crate::flow::{Admission, ExecFlow};
use crate::fs::{self, GuestFs, PendingWrite};
use crate::fs2::{self, ClientFs, HandleTable};
use crate::log;
use crate::outbox::{data_frame, Hangup, Outbox, OutboxSettings};
use crate::profile::{IdRange, Profile};
use crate::rules::{Correlations, RelayRules};
use crate::tcp::{self, TcpStreams};
use crate::wire;

/// Socket reads are this large so that one read usually yields many frames.
const READ_BUFFER: usize = 256 * 1024;

/// How long a 0.7.13 relay lets a client's socket take no bytes.
const CLIENT_OUTPUT_STALL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the relay as a whole ends.
pub enum Ending {
    /// A client sent `core.shutdown`.
    Shutdown,
    /// agentd would have exited: the sandbox is gone.
    AgentDied(String),
}

/// State shared by every connection.
pub struct Relay {
    pub fs: GuestFs,
    pub fault: Option<Fault>,
    pub exec_chunk: usize,
    pub processes: Arc<ProcessRegistry>,
    pub profile: Profile,
    /// The `core.ready` payload of the handshake.
    pub ready_payload: Vec<u8>,
    pub ending: mpsc::UnboundedSender<Ending>,
    pub handles: Arc<HandleTable>,
    pub admission: Admission,
    pub activity_seq: AtomicU64,
}

impl Relay {
    /// Ends the sandbox the way agentd's exit does: every process killed,
    /// every connection closed, the relay exiting non-zero.
    pub fn agent_dies(&self, why: String) {
        log!(
            "agentd {} would exit here: {why}; ending the sandbox",
            self.profile.name()
        );
        self.processes.signal_all(libc::SIGKILL);
        let _ = self.ending.send(Ending::AgentDied(why));
    }
}

/// A connection in the serving state.
struct Connection {
    relay: Arc<Relay>,
    range: IdRange,
    outbox: Outbox,
    hangup: Arc<Hangup>,
    execs: ExecTable,
    flows: FlowTable,
    rules: RelayRules,
    correlations: Arc<Correlations>,
    legacy_writes: HashMap<u32, PendingWrite>,
    fs: ClientFs,
    tcp: TcpStreams,
}

/// Why the reader stopped.
enum Stop {
    ClientLeft,
    /// The relay cuts the client off (a rule violation, or a stream it
    /// cannot resynchronise).
    Disconnect(String),
    /// agentd is gone; the relay is ending.
    AgentDied,
}

pub async fn serve(relay: Arc<Relay>, mut stream: UnixStream, slot: u32) {
    let profile = relay.profile;
    let v = profile.generation();
    let handshake = Handshake {
        prologue: profile.handshake_prologue(slot),
        ready: wire::frame(v, "core.ready", 0, 0, &relay.ready_payload),
        range: profile.id_range(slot),
        v,
    };

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
    let correlations = Arc::new(Correlations::default());
    let settings = OutboxSettings {
        v,
        correlations: profile.strict_relay().then(|| correlations.clone()),
        stall_limit: profile.strict_relay().then_some(CLIENT_OUTPUT_STALL_GRACE),
    };
    let mut conn = Connection {
        outbox: Outbox::start(writer, hangup.clone(), settings),
        range: handshake.range,
        rules: RelayRules::new(profile, handshake.range),
        correlations,
        fs: ClientFs::new(relay.fs.clone(), relay.handles.clone(), slot),
        relay,
        hangup: hangup.clone(),
        execs: Arc::new(Mutex::new(HashMap::new())),
        flows: Arc::default(),
        legacy_writes: HashMap::new(),
        tcp: TcpStreams::default(),
    };
    let stop = tokio::select! {
        stop = conn.read_loop(reader) => stop,
        _ = hangup.wait() => Stop::ClientLeft,
    };
    if let Stop::Disconnect(why) = &stop {
        log!("client {slot}: disconnecting: {why}");
    }
    // The client is gone or cut off: what it started must not outlive it.
    for control in conn.execs.lock().unwrap().values() {
        exec::signal_group(control.pid, libc::SIGKILL);
    }
    for flow in conn.flows.lock().unwrap().values() {
        flow.close();
    }
    hangup.trigger();
    // Its FS handles and TCP streams go with `conn`.
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
                    Err(e) => return Stop::Disconnect(e.to_string()),
                };
                if let Err(why) = self
                    .rules
                    .check(raw.id, raw.flags, &raw.body, &self.correlations)
                {
                    return Stop::Disconnect(why);
                }
                if let Err(stop) = self.agentd(raw).await {
                    return stop;
                }
            }
        }
    }

    fn die(&self, why: String) -> Stop {
        self.relay.agent_dies(why);
        Stop::AgentDied
    }

    /// agentd's reading of one frame the relay let through.
    async fn agentd(&mut self, raw: RawFrame) -> Result<(), Stop> {
        let id = raw.id;
        // agentd's envelope has a required `v`; the library reads a missing
        // one as 0. Canonical bodies open with it, so only others are parsed.
        let missing_v = raw.flags != FLAG_BULK
            && !raw.body.starts_with(&[0xa3, 0x61, b'v'])
            && wire::Envelope::read(&raw.body).is_some_and(|e| e.is_map && e.v.is_none());
        if missing_v {
            return Err(self.die(format!("decode message for id {id}: missing field `v`")));
        }
        let message = match raw.decode() {
            Ok(message) => message,
            Err(e) => return Err(self.die(format!("decode message for id {id}: {e}"))),
        };
        let Message {
            flags,
            version: v,
            message_type,
            payload,
            ..
        } = message;
        let profile = self.relay.profile;
        if !profile.knows(&message_type) {
            return Err(self.die(format!(
                "decode message for id {id}: unknown message type {:?}",
                message_type.as_str()
            )));
        }
        if profile.checks_flags() && flags != message_type.flags() {
            let message = format!(
                "invalid flags for {message_type}: got {flags}, expected {}",
                message_type.flags()
            );
            return self
                .core_error(v, id, CoreErrorKind::InvalidFlags, message, &message_type)
                .await;
        }
        self.dispatch(message_type, id, v, payload).await
    }

    /// Answers a bad frame with `core.error` where agentd can (0.5.6+, and
    /// the frame's `v >= 5`); anywhere else agentd's loop fails and it exits.
    async fn core_error(
        &self,
        v: u8,
        id: u32,
        kind: CoreErrorKind,
        message: String,
        offending_type: &MessageType,
    ) -> Result<(), Stop> {
        if !self.relay.profile.checks_flags() {
            return Err(self.die(message));
        }
        if v < 5 {
            return Err(self.die(format!(
                "{message}; cannot send core.error to protocol generation {v}"
            )));
        }
        let error = CoreError {
            kind,
            message,
            offending_type: Some(offending_type.as_str().to_string()),
            init_failure: None,
            workload_failure: None,
        };
        let _ = self
            .outbox
            .send_payload(MessageType::CoreError, id, &error)
            .await;
        Ok(())
    }

    /// A payload that does not decode as its type.
    async fn bad_payload(
        &self,
        v: u8,
        id: u32,
        t: &MessageType,
        error: impl std::fmt::Display,
    ) -> Result<(), Stop> {
        let message = format!("decode payload for {t}: {error}");
        self.core_error(v, id, CoreErrorKind::InvalidPayload, message, t)
            .await
    }

    async fn dispatch(
        &mut self,
        t: MessageType,
        id: u32,
        v: u8,
        payload: Bytes,
    ) -> Result<(), Stop> {
        let handle_fs = self.relay.profile.has_handle_fs();
        match t {
            MessageType::ExecRequest => match ExecRequest::decode(&payload) {
                Ok(req) => self.exec_request(id, v, req).await,
                Err(e) => return self.bad_payload(v, id, &t, e).await,
            },
            MessageType::ExecStdin => {
                let data = match Data::decode(&payload) {
                    Ok(d) => d.data,
                    Err(e) => return self.bad_payload(v, id, &t, e).await,
                };
                // Cloned out so the table lock is not held across the await.
                let control = self
                    .execs
                    .lock()
                    .unwrap()
                    .get(&id)
                    .map(|c| (c.stdin_handle(), c.flow.clone()));
                // Stdin for an exec that has ended is dropped.
                if let Some((queue, flow)) = control {
                    if let Some(flow) = flow {
                        flow.on_stdin(data.len()).map_err(Stop::Disconnect)?;
                    }
                    queue.push(data).await;
                }
            }
            MessageType::ExecResize => match ExecResize::decode(&payload) {
                Ok(size) => {
                    if let Some(control) = self.execs.lock().unwrap().get(&id) {
                        control.resize(size.rows, size.cols);
                    }
                }
                Err(e) => return self.bad_payload(v, id, &t, e).await,
            },
            MessageType::ExecSignal => match ExecSignal::decode(&payload) {
                Ok(signal) => {
                    if let Some(control) = self.execs.lock().unwrap().get(&id) {
                        control.signal(signal.signal);
                    }
                }
                Err(e) => return self.bad_payload(v, id, &t, e).await,
            },
            MessageType::ExecOutputAck => {
                let ack = match ExecOutputAck::decode(&payload) {
                    Ok(a) => a,
                    Err(e) => return self.bad_payload(v, id, &t, e).await,
                };
                let flow = self.flows.lock().unwrap().get(&id).cloned();
                if let Some(flow) = flow {
                    flow.on_output_ack(ack.consumed).map_err(Stop::Disconnect)?;
                }
            }
            MessageType::FsRequest if handle_fs => match FsRequest::decode(&payload) {
                Ok(request) => self.fs_request(id, request).await,
                Err(e) => return self.bad_payload(v, id, &t, e).await,
            },
            MessageType::FsRequest => match legacy::FsRequest::decode(&payload) {
                Ok(request) => self.legacy_fs_request(id, request.op).await,
                Err(e) => return Err(self.die(format!("decode payload for {t}: {e}"))),
            },
            MessageType::FsData => {
                let data = match Data::decode(&payload) {
                    Ok(d) => d.data,
                    Err(e) if handle_fs => return self.bad_payload(v, id, &t, e).await,
                    Err(e) => return Err(self.die(format!("decode payload for {t}: {e}"))),
                };
                if handle_fs {
                    self.fs_data(id, data).await;
                } else {
                    self.legacy_fs_data(id, data).await;
                }
            }
            MessageType::TcpConnect => match TcpConnect::decode(&payload) {
                Ok(request) => self.tcp.connect(&self.outbox, id, request),
                Err(e) => return self.bad_payload(v, id, &t, e).await,
            },
            MessageType::TcpData => {
                let data = match Data::decode(&payload) {
                    Ok(d) => d.data,
                    Err(e) => return self.bad_payload(v, id, &t, e).await,
                };
                if !self.tcp.forward(id, Some(data)) {
                    tcp::unknown_stream(&self.outbox, id).await;
                }
            }
            MessageType::TcpEof => {
                self.tcp.forward(id, None);
            }
            MessageType::TcpClose => self.tcp.close(id),
            MessageType::Ping => {
                let _ = self
                    .outbox
                    .send_payload(MessageType::Pong, id, &Empty {})
                    .await;
            }
            MessageType::Touch => {
                let activity_seq = self.relay.activity_seq.fetch_add(1, Ordering::SeqCst) + 1;
                let touched = Touched { activity_seq };
                let _ = self
                    .outbox
                    .send_payload(MessageType::Touched, id, &touched)
                    .await;
            }
            MessageType::Shutdown => {
                log!("core.shutdown received");
                let _ = self.relay.ending.send(Ending::Shutdown);
            }
            other => log!("ignoring {other} (id {id}): not a request this agent serves"),
        }
        Ok(())
    }

    async fn exec_request(&mut self, id: u32, v: u8, req: ExecRequest) {
        let fault = self.relay.fault;
        let controlled = if self.relay.profile.has_exec_flow_control() && v >= 10 {
            let Some(admission) = self.relay.admission.try_admit() else {
                let failed = ExecFailed {
                    kind: ExecFailureKind::ResourceLimit,
                    errno: None,
                    errno_name: None,
                    message: "active execution limit reached".into(),
                    stage: Some("execution_admission".into()),
                };
                let _ = self
                    .outbox
                    .send_payload(MessageType::ExecFailed, id, &failed)
                    .await;
                return;
            };
            Some(Controlled {
                flow: ExecFlow::new(ExecLimits::default()),
                _admission: admission,
            })
        } else {
            None
        };
        if fault::before_request(fault, &self.outbox, self.range, id, true)
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
            profile: self.relay.profile,
            flows: self.flows.clone(),
        };
        exec::start(env, id, req, controlled).await;
    }

    /// A generation-2 FS request.
    async fn fs_request(&mut self, id: u32, request: FsRequest) {
        let fault = self.relay.fault;
        if fault::before_request(fault, &self.outbox, self.range, id, false)
            .await
            .is_err()
        {
            return;
        }
        if fault::answer_fs(fault, &self.outbox, id).await {
            return;
        }
        if request.bulk.is_some() {
            // Generation-8 raw bulk is not imitated: refuse the offer the way
            // agentd refuses one it cannot take.
            let refused = FsResponse::error("msb-devrelay does not serve raw bulk transfers");
            let _ = self
                .outbox
                .send_payload(MessageType::FsResponse, id, &refused)
                .await;
            return;
        }
        let outcome = tokio::task::block_in_place(|| self.fs.request(id, request.op));
        match outcome {
            fs2::Outcome::Respond(response) => {
                let _ = self
                    .outbox
                    .send_payload(MessageType::FsResponse, id, &response)
                    .await;
            }
            fs2::Outcome::AwaitData => {}
            fs2::Outcome::Read { file, offset, len } => {
                let outbox = self.outbox.clone();
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    fs2::stream_read(&outbox, &runtime, id, &file, offset, len)
                });
            }
        }
    }

    async fn fs_data(&mut self, id: u32, data: Bytes) {
        let answer = tokio::task::block_in_place(|| self.fs.data(id, &data));
        if let Some(response) = answer {
            let _ = self
                .outbox
                .send_payload(MessageType::FsResponse, id, &response)
                .await;
        }
    }

    async fn legacy_fs_request(&mut self, id: u32, op: FsOp) {
        let fault = self.relay.fault;
        if fault::before_request(fault, &self.outbox, self.range, id, false)
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
                self.legacy_writes.insert(id, pending);
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

    async fn legacy_fs_data(&mut self, id: u32, data: Bytes) {
        if data.is_empty() {
            let Some(pending) = self.legacy_writes.remove(&id) else {
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
        if let Some(pending) = self.legacy_writes.get_mut(&id) {
            if pending.push(data) {
                // Bounded work (a few MiB to the page cache); the reader
                // pausing meanwhile is the backpressure a fast uploader needs.
                tokio::task::block_in_place(|| pending.flush());
            }
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
