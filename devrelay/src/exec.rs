//! Exec sessions: real host processes, on pipes or on a pseudo-terminal.
//!
//! There is no isolation here: the command runs on the host with the relay's
//! privileges (or the requested user's, when the relay is root).
//!
//! How a session reports trouble depends on the release imitated: 0.3.14
//! answers a spawn failure with `core.exec.exited {-1}`; later releases send
//! `core.exec.failed` and report stdin write errors as
//! `core.exec.stdin.error`. Flow-controlled sessions (see `flow.rs`) charge
//! their output, acknowledge stdin and hold the exit code until all output
//! is acknowledged.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, Semaphore};

use microsandbox_agent::protocol::payload::{ExecExited, ExecRequest, ExecStarted};
use microsandbox_agent::protocol::MessageType;

use crate::flow::{AdmissionSlot, ExecFlow};
use crate::log;
use crate::outbox::{Closed, Hangup, Outbox};
use crate::platform::{self, Resource};
use crate::profile::Profile;
use crate::wire;
use microsandbox_agent::protocol::payload::{
    ExecFailed, ExecFailureKind, ExecStdinAck, ExecStdinError,
};

/// Stdin bytes one exec may have queued before the connection's reader
/// waits for the process to take them.
const STDIN_BUDGET: usize = 16 * 1024 * 1024;

/// What a pty user types for end-of-file; a pty cannot be half-closed.
const PTY_EOF: u8 = 0x04;

/// Maps a protocol rlimit name to this host's resource; the error is the
/// refusal message.
fn rlimit_resource(name: &str) -> Result<Resource, String> {
    Ok(match name {
        "cpu" => libc::RLIMIT_CPU,
        "fsize" => libc::RLIMIT_FSIZE,
        "data" => libc::RLIMIT_DATA,
        "stack" => libc::RLIMIT_STACK,
        "core" => libc::RLIMIT_CORE,
        "rss" => libc::RLIMIT_RSS,
        "nproc" => libc::RLIMIT_NPROC,
        "nofile" => libc::RLIMIT_NOFILE,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "as" => libc::RLIMIT_AS,
        other => match platform::linux_only_rlimit(other)? {
            Some(resource) => resource,
            None => return Err(format!("unknown rlimit resource {other:?}")),
        },
    })
}

/// Every process the relay started and has not reaped yet, across all
/// connections, so that shutdown and signals can reach them.
#[derive(Default)]
pub struct ProcessRegistry {
    pids: Mutex<HashMap<u64, i32>>,
    next_key: AtomicU64,
}

/// Keeps a pid in the registry until dropped.
pub struct Registration {
    registry: Arc<ProcessRegistry>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.pids.lock().unwrap().remove(&self.key);
    }
}

impl ProcessRegistry {
    fn register(self: &Arc<Self>, pid: i32) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.pids.lock().unwrap().insert(key, pid);
        Registration {
            registry: self.clone(),
            key,
        }
    }

    /// Signals every running exec's process group.
    pub fn signal_all(&self, signal: i32) {
        for &pid in self.pids.lock().unwrap().values() {
            signal_group(pid, signal);
        }
    }

    pub fn running(&self) -> usize {
        self.pids.lock().unwrap().len()
    }
}

/// Every exec is the leader of its own process group (or session, on a tty),
/// so this reaches the helpers it forked as well.
pub fn signal_group(pid: i32, signal: i32) {
    if pid <= 0 {
        return; // reaped: kill(0) would hit our own group
    }
    // SAFETY: kill has no memory-safety preconditions. `pid` is a child we
    // have not yet reaped, so neither it nor its group id can be reused.
    unsafe {
        libc::kill(-pid, signal);
        libc::kill(pid, signal);
    }
}

/// A running exec, as the connection's reader sees it.
pub struct ExecControl {
    pub pid: i32,
    stdin: StdinQueue,
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
    /// Present on flow-controlled sessions.
    pub flow: Option<Arc<ExecFlow>>,
}

impl ExecControl {
    /// Where stdin data for this exec goes.
    pub fn stdin_handle(&self) -> StdinQueue {
        self.stdin.clone()
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        if let Some(pty) = &self.pty {
            if let Err(e) = set_window_size(pty.get_ref(), rows, cols) {
                log!("resize of pid {}: {e}", self.pid);
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        if self.pid <= 0 {
            return; // reaped already
        }
        // SAFETY: kill has no memory-safety preconditions; the entry is
        // removed right after the process is reaped, so the pid is ours.
        if unsafe { libc::kill(self.pid, signal) } != 0 {
            log!(
                "signal {signal} to pid {}: {}",
                self.pid,
                io::Error::last_os_error()
            );
        }
    }
}

pub type ExecTable = Arc<Mutex<HashMap<u32, ExecControl>>>;

/// Flow state of a connection's controlled sessions, until `exited` is
/// sent: acknowledgements keep coming after the process is reaped (and out
/// of the [`ExecTable`]).
pub type FlowTable = Arc<Mutex<HashMap<u32, Arc<ExecFlow>>>>;

/// What an exec needs from its connection and the relay.
pub struct ExecEnv {
    pub outbox: Outbox,
    pub hangup: Arc<Hangup>,
    pub table: ExecTable,
    pub registry: Arc<ProcessRegistry>,
    pub chunk: usize,
    pub profile: Profile,
    pub flows: FlowTable,
}

/// Flow control of one session, with its sandbox-wide admission.
pub struct Controlled {
    pub flow: Arc<ExecFlow>,
    /// Held for the session's lifetime; dropping it frees the slot.
    pub _admission: AdmissionSlot,
}

/// Stdin data queued for one exec, in order; empty data closes stdin.
#[derive(Clone)]
pub struct StdinQueue {
    queue: mpsc::UnboundedSender<Bytes>,
    budget: Arc<Semaphore>,
}

impl StdinQueue {
    /// Waits only when the process leaves [`STDIN_BUDGET`] bytes unread.
    pub async fn push(&self, data: Bytes) {
        let cost = data.len().min(STDIN_BUDGET) as u32;
        if let Ok(permit) = self.budget.acquire_many(cost).await {
            // The writer task gives the bytes back once written.
            permit.forget();
            let _ = self.queue.send(data);
        }
    }
}

enum StdinSink {
    Pipe(ChildStdin),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

/// Where the stdin writer reports: stdin errors (0.4.6+) and, on
/// flow-controlled sessions, acknowledgements.
struct StdinReports {
    outbox: Outbox,
    id: u32,
    report_errors: bool,
    flow: Option<Arc<ExecFlow>>,
}

async fn stdin_writer(
    mut sink: Option<StdinSink>,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
    reports: StdinReports,
) {
    while let Some(data) = queue.recv().await {
        let cost = data.len().min(STDIN_BUDGET);
        let result = match (&mut sink, data.is_empty()) {
            (None, _) => Ok(()),
            (Some(StdinSink::Pipe(_)), true) => {
                sink = None;
                Ok(())
            }
            (Some(StdinSink::Pty(pty)), true) => write_pty(pty, &[PTY_EOF]).await,
            (Some(StdinSink::Pipe(pipe)), false) => pipe.write_all(&data).await,
            (Some(StdinSink::Pty(pty)), false) => write_pty(pty, &data).await,
        };
        match result {
            Err(e) => {
                // The process closed its end (or exited): discard the rest.
                sink = None;
                if reports.report_errors {
                    let errno = e.raw_os_error();
                    let error = ExecStdinError {
                        errno,
                        errno_name: errno.and_then(wire::errno_name),
                        message: format!("I/O error: {e}"),
                    };
                    let _ = reports
                        .outbox
                        .send_payload(MessageType::ExecStdinError, reports.id, &error)
                        .await;
                }
            }
            Ok(()) if !data.is_empty() => {
                if let Some(flow) = &reports.flow {
                    let consumed = flow.on_stdin_written(data.len());
                    let _ = reports
                        .outbox
                        .send_payload(
                            MessageType::ExecStdinAck,
                            reports.id,
                            &ExecStdinAck { consumed },
                        )
                        .await;
                }
            }
            Ok(()) => {}
        }
        budget.add_permits(cost);
    }
}

/// The request, checked and turned into what the child needs before exec.
struct Prepared {
    env: Vec<(String, String)>,
    rlimits: Vec<(Resource, libc::rlimit)>,
    /// uid and gid to switch to.
    user: Option<(libc::uid_t, libc::gid_t)>,
}

/// Checks a request; an error carries the `core.exec.failed` kind.
fn prepare(req: &ExecRequest) -> Result<Prepared, (ExecFailureKind, String)> {
    let mut env = Vec::with_capacity(req.env.len());
    for entry in &req.env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => env.push((key.into(), value.into())),
            _ => {
                return Err((
                    ExecFailureKind::BadArgs,
                    format!("env entry {entry:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    let mut rlimits = Vec::with_capacity(req.rlimits.len());
    for limit in &req.rlimits {
        let resource = rlimit_resource(&limit.resource)
            .map_err(|message| (ExecFailureKind::BadArgs, message))?;
        rlimits.push((
            resource,
            libc::rlimit {
                rlim_cur: limit.soft as libc::rlim_t,
                rlim_max: limit.hard as libc::rlim_t,
            },
        ));
    }
    let user = match &req.user {
        None => None,
        Some(name) => Some(lookup_user(name).map_err(|e| (ExecFailureKind::UserSetupFailed, e))?),
    };
    Ok(Prepared { env, rlimits, user })
}

fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "cannot run as user {name:?}: the relay is not running as root"
        ));
    }
    let c_name = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `c_name` is a NUL-terminated
    // string, `pwd` and `found` are live locals, `buf` has `buf.len()` bytes.
    // getpwnam_r is the thread-safe variant; results point into `buf`, which
    // we only read (two integers) while it is alive.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("unknown user {name:?}"));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and raw pointers, for
    // which all-zero bytes (null pointers, 0) are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Starts one exec session: the process is spawned and registered before
/// this returns, so that stdin, resize and signal frames the client sends
/// right after the request find it; a task then carries the session to its
/// end (started, output, exited).
pub async fn start(env: ExecEnv, id: u32, req: ExecRequest, controlled: Option<Controlled>) {
    if env.table.lock().unwrap().contains_key(&id) {
        // Replacing the entry would orphan the running session's controls.
        let message = format!("id {id} already belongs to a running exec");
        log!("exec {id} refused: {message}");
        let _ = refuse(&env, id, ExecFailureKind::BadArgs, &message).await;
        return;
    }
    let prepared = match prepare(&req) {
        Ok(p) => p,
        Err((kind, message)) => {
            log!("exec {id} refused: {message}");
            let _ = refuse(&env, id, kind, &message).await;
            return;
        }
    };
    let spawned = if req.tty {
        spawn_on_pty(&req, prepared)
    } else {
        spawn_on_pipes(&req, prepared)
    };
    let (child, io) = match spawned {
        Ok(s) => s,
        Err(e) => {
            log!("exec {id}: cannot spawn {:?}: {e}", req.cmd);
            if env.profile.has_exec_failed() {
                let failed = spawn_failure(&e, &req.cmd);
                let _ = env
                    .outbox
                    .send_payload(MessageType::ExecFailed, id, &failed)
                    .await;
            } else {
                let _ = send_exited(&env.outbox, id, -1).await;
            }
            return;
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid") as i32;
    let registration = env.registry.register(pid);

    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let stdin_budget = Arc::new(Semaphore::new(STDIN_BUDGET));
    let (sink, outputs): (Option<StdinSink>, Vec<(OutputReader, MessageType)>) = match io {
        ProcessIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => (
            stdin.map(StdinSink::Pipe),
            vec![
                (Box::new(stdout) as OutputReader, MessageType::ExecStdout),
                (Box::new(stderr), MessageType::ExecStderr),
            ],
        ),
        ProcessIo::Pty(master) => (
            Some(StdinSink::Pty(master.clone())),
            vec![(
                Box::new(PtyReader(master.clone())) as _,
                MessageType::ExecStdout,
            )],
        ),
    };
    let pty = match &sink {
        Some(StdinSink::Pty(m)) => Some(m.clone()),
        _ => None,
    };
    let flow = controlled.as_ref().map(|c| c.flow.clone());
    if let Some(flow) = &flow {
        env.flows.lock().unwrap().insert(id, flow.clone());
    }
    env.table.lock().unwrap().insert(
        id,
        ExecControl {
            pid,
            stdin: StdinQueue {
                queue: stdin_tx,
                budget: stdin_budget.clone(),
            },
            pty,
            flow: flow.clone(),
        },
    );
    let reports = StdinReports {
        outbox: env.outbox.clone(),
        id,
        report_errors: env.profile.has_exec_failed(),
        flow,
    };
    let stdin_task = tokio::spawn(stdin_writer(sink, stdin_rx, stdin_budget, reports));
    tokio::spawn(run_session(
        env,
        id,
        child,
        registration,
        outputs,
        stdin_task,
        controlled,
    ));
}

/// `core.exec.failed` for a command that could not be spawned, classified
/// by errno as agentd does.
fn spawn_failure(e: &io::Error, cmd: &str) -> ExecFailed {
    let errno = e.raw_os_error();
    let kind = match errno {
        Some(libc::ENOENT) => ExecFailureKind::NotFound,
        Some(libc::ENOTDIR) => ExecFailureKind::BadCwd,
        Some(libc::EACCES | libc::EPERM) => ExecFailureKind::PermissionDenied,
        Some(libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY) => ExecFailureKind::NotExecutable,
        Some(libc::E2BIG | libc::ELOOP | libc::ENAMETOOLONG | libc::EFAULT) => {
            ExecFailureKind::BadArgs
        }
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN) => ExecFailureKind::ResourceLimit,
        Some(libc::ENOMEM) => ExecFailureKind::OutOfMemory,
        _ => ExecFailureKind::Other,
    };
    ExecFailed {
        kind,
        errno,
        errno_name: errno.and_then(wire::errno_name),
        message: format!("spawn {cmd:?}: {e}"),
        stage: Some("Command::spawn".into()),
    }
}

async fn run_session(
    env: ExecEnv,
    id: u32,
    mut child: Child,
    registration: Registration,
    outputs: Vec<(OutputReader, MessageType)>,
    stdin_task: tokio::task::JoinHandle<()>,
    controlled: Option<Controlled>,
) {
    let pid = child.id().unwrap_or(0);
    let flow = controlled.as_ref().map(|c| c.flow.clone());
    let session = async {
        env.outbox
            .send_payload(MessageType::ExecStarted, id, &ExecStarted { pid })
            .await?;
        if let Some(flow) = &flow {
            flow.mark_started();
        }
        let chunk = match &flow {
            Some(flow) => env.chunk.min(flow.output_chunk()),
            None => env.chunk,
        };
        let pumps = futures_join_all(
            outputs
                .into_iter()
                .map(|(reader, kind)| pump(reader, &env.outbox, id, kind, chunk, flow.as_deref())),
        );
        let reap = async {
            let status = child.wait().await;
            // Out of the tables before the pid can be reused. A flow-controlled
            // session stays routable without its pid: its pipes may still
            // hold output, whose acknowledgements must reach its window.
            let mut table = env.table.lock().unwrap();
            match (&flow, table.get_mut(&id)) {
                (Some(_), Some(control)) => control.pid = 0,
                _ => drop(table.remove(&id)),
            }
            drop(table);
            drop(registration);
            status
        };
        let (pumped, status) = tokio::join!(pumps, reap);
        pumped?;
        let code = match status {
            Ok(s) => s.code().unwrap_or(-1),
            Err(e) => {
                log!("exec {id}: waiting for pid {pid}: {e}");
                -1
            }
        };
        if let Some(flow) = &flow {
            // The exit code waits until the client has taken every byte.
            flow.wait_all_acked().await;
        }
        send_exited(&env.outbox, id, code).await
    };
    tokio::select! {
        _ = session => {}
        // The connection is gone; its teardown has killed the process group,
        // and dropping `child` (kill_on_drop) lets tokio reap it.
        _ = env.hangup.wait() => {}
    }
    env.table.lock().unwrap().remove(&id);
    stdin_task.abort();
    if let Some(flow) = &flow {
        env.flows.lock().unwrap().remove(&id);
        flow.close();
    }
    // The admission slot is released here, with `controlled`.
    drop(controlled);
}

/// Runs futures concurrently and returns the first error, after all ended.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Result<(), Closed>
where
    F: std::future::Future<Output = Result<(), Closed>>,
{
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<Result<(), Closed>>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(r) => *result = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// One of the process's output streams.
type OutputReader = Box<dyn AsyncRead + Send + Unpin>;

async fn pump(
    mut reader: OutputReader,
    outbox: &Outbox,
    id: u32,
    kind: MessageType,
    chunk: usize,
    flow: Option<&ExecFlow>,
) -> Result<(), Closed> {
    let mut buf = vec![0u8; chunk];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log!("exec {id}: reading {kind}: {e}");
                return Ok(());
            }
        };
        if let Some(flow) = flow {
            flow.charge_output(n).await.map_err(|()| Closed)?;
        }
        outbox.send_data(kind.clone(), id, &buf[..n]).await?;
    }
}

/// Refuses a request that cannot run: on 0.3.14 as a message on stderr and
/// exit code -1, later as `core.exec.failed` of `kind`.
async fn refuse(
    env: &ExecEnv,
    id: u32,
    kind: ExecFailureKind,
    message: &str,
) -> Result<(), Closed> {
    if env.profile.has_exec_failed() {
        let failed = ExecFailed {
            kind,
            errno: None,
            errno_name: None,
            message: message.to_string(),
            stage: Some("prepare".into()),
        };
        return env
            .outbox
            .send_payload(MessageType::ExecFailed, id, &failed)
            .await;
    }
    let text = format!("msb-devrelay: {message}\n");
    env.outbox
        .send_data(MessageType::ExecStderr, id, text.as_bytes())
        .await?;
    send_exited(&env.outbox, id, -1).await
}

async fn send_exited(outbox: &Outbox, id: u32, code: i32) -> Result<(), Closed> {
    outbox
        .send_payload(MessageType::ExecExited, id, &ExecExited { code })
        .await
}

enum ProcessIo {
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
    Pty(Arc<AsyncFd<OwnedFd>>),
}

fn base_command(req: &ExecRequest, prepared: &Prepared) -> Command {
    let mut command = Command::new(&req.cmd);
    command
        .args(&req.args)
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    if let Some(cwd) = &req.cwd {
        command.current_dir(cwd);
    }
    command
}

/// Child-side setup after fork, before exec: its own process group or
/// session, the rlimits, then the user switch (last, so that limits may
/// still be raised while root).
fn install_pre_exec(command: &mut Command, prepared: Prepared, tty: bool) {
    let Prepared { rlimits, user, .. } = prepared;
    let setup = move || -> io::Result<()> {
        // Only async-signal-safe calls in here: we are in a forked child of
        // a multithreaded process. No allocation happens on any path.
        // SAFETY (all calls below): plain syscalls on integers and on
        // pointers to live values owned by this closure.
        unsafe {
            if tty {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // stdin is the pty's slave end by now: make it our
                // controlling terminal.
                if libc::ioctl(0, platform::SET_CONTROLLING_TTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            for (resource, limit) in &rlimits {
                if libc::setrlimit(*resource, limit) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(1, &gid) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe syscalls and does not
    // allocate, as a pre_exec hook in a multithreaded process must.
    unsafe {
        command.pre_exec(setup);
    }
}

fn spawn_on_pipes(req: &ExecRequest, prepared: Prepared) -> io::Result<(Child, ProcessIo)> {
    let mut command = base_command(req, &prepared);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    install_pre_exec(&mut command, prepared, false);
    let mut child = command.spawn()?;
    let io = ProcessIo::Pipes {
        stdin: child.stdin.take(),
        stdout: child.stdout.take().expect("stdout was piped"),
        stderr: child.stderr.take().expect("stderr was piped"),
    };
    Ok((child, io))
}

fn spawn_on_pty(req: &ExecRequest, prepared: Prepared) -> io::Result<(Child, ProcessIo)> {
    let (master, slave) = open_pty(req.rows, req.cols)?;
    let mut command = base_command(req, &prepared);
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    install_pre_exec(&mut command, prepared, true);
    let child = command.spawn()?;
    // Our copies of the slave end must be gone, or reading the master would
    // never report the end of output after the process exits.
    drop(command);
    // SAFETY: `master` is an open fd owned by the OwnedFd we hand over, which
    // keeps it open and unchanged for the AsyncFd's whole life.
    let master = unsafe { AsyncFd::register(master)? };
    Ok((child, ProcessIo::Pty(Arc::new(master))))
}

/// Opens a pty pair with close-on-exec set atomically, so that a process
/// spawned concurrently by another session cannot inherit either end.
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: the path is a NUL-terminated literal; on success the returned
    // fd is new and owned by nobody else, so OwnedFd may take it.
    let master = unsafe {
        let fd = libc::open(c"/dev/ptmx".as_ptr(), flags | libc::O_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: `master` is an open pty master.
    unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let name = platform::pty_slave_path(&master)?;
    // SAFETY: `name` is a NUL-terminated path; on success the fd is new and
    // ours.
    let slave = unsafe {
        let fd = libc::open(name.as_ptr(), flags);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    set_window_size(&master, rows, cols)?;
    Ok((master, slave))
}

fn set_window_size(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points to
    // a live local; the fd is an open pty master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

async fn write_pty(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        let result = guard.try_io(|fd| {
            // SAFETY: `data` is a live slice of the length passed; the fd is
            // open for the lifetime of `master`.
            let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match result {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Reads the master end of a pty; EIO (every slave end closed) is the end
/// of output.
struct PtyReader(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: `unfilled` is a live, initialised buffer of the
                // length passed; the fd is open while `self.0` lives.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
