//! Running a command in the guest: one session per process, keyed by its
//! correlation id.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Error, ExecFailure, Result};
use super::subscription::{Pulled, Subscription};
use super::Client;
use crate::protocol::payload::{
    CoreError, Data, ExecExited, ExecFailed, ExecRequest, ExecResize, ExecSignal, ExecStarted,
    ExecStdinError, Payload,
};
use crate::protocol::{Message, MessageType};

/// One thing that happened to a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last event: the exit code, `-1` for a signal death (or, from
    /// agents before 0.4.4, a failed spawn).
    Exited {
        code: i32,
    },
    /// The last event instead of `Exited` when the guest could not start
    /// the command (`core.exec.failed`, agents 0.4.4 and later).
    Failed(ExecFailure),
    /// Writing stdin into the process failed (`core.exec.stdin.error`,
    /// agents 0.4.6 and later). The process runs on; more events follow.
    StdinError {
        errno: Option<i32>,
        errno_name: Option<String>,
        message: String,
    },
}

/// A process started in the guest.
///
/// Thread safety: `Send + Sync`. One thread may wait on events while others
/// write stdin, signal or resize. Dropping it stops listening; the process
/// keeps running until it exits or the connection closes (the relay then
/// kills it).
pub struct Exec {
    client: Client,
    sub: Subscription,
}

impl Exec {
    /// Sends the request; events follow through [`next_event`](Self::next_event).
    pub fn start(client: &Client, request: &ExecRequest, timeout: Duration) -> Result<Exec> {
        if request.cmd.is_empty() {
            return Err(Error::InvalidArgument("empty command".into()));
        }
        let sub = client.subscribe_new_accepting(is_exec_event)?;
        let payload = request.to_bytes();
        client.send_parts(
            &MessageType::ExecRequest,
            sub.id(),
            &[&payload],
            Instant::now() + timeout,
        )?;
        Ok(Exec {
            client: client.clone(),
            sub,
        })
    }

    pub fn id(&self) -> u32 {
        self.sub.id()
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// The next event within `timeout` (`None`: no limit; zero: don't block).
    /// `Ended` after `Exited` or `Failed` was delivered. Frames of unknown or
    /// unrelated types never reach the queue (see `is_exec_event`), so every
    /// queued message is an event, or a `core.error` refusing the request,
    /// which is returned as [`Error::Agent`] (and ends the exec).
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Pulled<ExecEvent>> {
        Ok(match self.sub.recv_timeout(timeout)? {
            Pulled::Item(m) => Pulled::Item(self.decode(&m)?),
            Pulled::Nothing => Pulled::Nothing,
            Pulled::Ended => Pulled::Ended,
        })
    }

    /// Async form of [`next_event`](Self::next_event) without a timeout;
    /// `None` once the process has exited and that was delivered.
    pub async fn next_event_async(&self) -> Result<Option<ExecEvent>> {
        match self.sub.recv().await? {
            Some(m) => self.decode(&m).map(Some),
            None => Ok(None),
        }
    }

    fn decode(&self, m: &Message) -> Result<ExecEvent> {
        let ev = match m.message_type {
            MessageType::ExecStarted => {
                ExecStarted::decode(&m.payload).map(|p| ExecEvent::Started { pid: p.pid })
            }
            MessageType::ExecStdout => Data::decode(&m.payload).map(|d| ExecEvent::Stdout(d.data)),
            MessageType::ExecStderr => Data::decode(&m.payload).map(|d| ExecEvent::Stderr(d.data)),
            MessageType::ExecExited => {
                ExecExited::decode(&m.payload).map(|p| ExecEvent::Exited { code: p.code })
            }
            MessageType::ExecFailed => ExecFailed::decode(&m.payload).map(|p| {
                ExecEvent::Failed(ExecFailure {
                    kind: p.kind.as_str().to_owned(),
                    errno: p.errno,
                    errno_name: p.errno_name,
                    message: p.message,
                    stage: p.stage,
                })
            }),
            MessageType::ExecStdinError => {
                ExecStdinError::decode(&m.payload).map(|p| ExecEvent::StdinError {
                    errno: p.errno,
                    errno_name: p.errno_name,
                    message: p.message,
                })
            }
            MessageType::CoreError => {
                let e = agent_error(&m.payload)
                    .map_err(|e| self.client.fail_protocol(e.in_message(&m.message_type)))?;
                return Err(e);
            }
            // Filtered out on arrival; kept as an error, not a panic, in case
            // the filter and this match ever disagree.
            ref other => return Err(Error::Unexpected(format!("{other} in an exec session"))),
        };
        ev.map_err(|e| self.client.fail_protocol(e.in_message(&m.message_type)))
    }

    /// Writes to the process's stdin. An empty slice is ignored (use
    /// [`close_stdin`](Self::close_stdin)); large input is split into frames.
    pub fn write_stdin(&self, data: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for chunk in data.chunks(STDIN_CHUNK) {
            send_data(
                &self.client,
                &MessageType::ExecStdin,
                self.id(),
                chunk,
                deadline,
            )?;
        }
        Ok(())
    }

    /// Closes the process's stdin (an empty stdin frame).
    pub fn close_stdin(&self, timeout: Duration) -> Result<()> {
        send_data(
            &self.client,
            &MessageType::ExecStdin,
            self.id(),
            &[],
            Instant::now() + timeout,
        )
    }

    pub fn signal(&self, signal: i32, timeout: Duration) -> Result<()> {
        let p = ExecSignal { signal }.to_bytes();
        self.client
            .send(&MessageType::ExecSignal, self.id(), &p, timeout)
    }

    pub fn resize(&self, rows: u16, cols: u16, timeout: Duration) -> Result<()> {
        let p = ExecResize { rows, cols }.to_bytes();
        self.client
            .send(&MessageType::ExecResize, self.id(), &p, timeout)
    }
}

/// The messages an exec session queues: everything else (unknown types,
/// another conversation's types) is dropped as it arrives.
fn is_exec_event(m: &Message) -> bool {
    matches!(
        m.message_type,
        MessageType::ExecStarted
            | MessageType::ExecStdout
            | MessageType::ExecStderr
            | MessageType::ExecExited
            | MessageType::ExecFailed
            | MessageType::ExecStdinError
            | MessageType::CoreError
    )
}

/// A `core.error` payload as [`Error::Agent`]; the kind as sent, also when
/// this library does not know it.
pub(crate) fn agent_error(
    payload: &Bytes,
) -> std::result::Result<Error, crate::protocol::ProtocolError> {
    let e = CoreError::decode(payload)?;
    Ok(Error::Agent {
        kind: e.kind.as_str().to_owned(),
        message: e.message,
    })
}

/// Stdin frames carry at most this much, well under the frame limit.
const STDIN_CHUNK: usize = 1024 * 1024;

/// Sends `{data: bytes}` with the data written from the caller's buffer.
pub(crate) fn send_data(
    client: &Client,
    message_type: &MessageType,
    id: u32,
    data: &[u8],
    deadline: Instant,
) -> Result<()> {
    let mut prefix = Vec::with_capacity(16);
    Data::encode_head(data.len(), &mut prefix);
    debug_assert_eq!(prefix.len() + data.len(), Data::encoded_len(data.len()));
    client.send_parts(message_type, id, &[&prefix, data], deadline)
}

/// What a process printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True if output beyond the cap was discarded.
    pub truncated: bool,
}

/// Runs a command to completion: stdin is closed at once, output is captured
/// up to `capture_limit` bytes per stream (the rest is read and discarded),
/// and the whole run must finish within `timeout` (the process is killed
/// with SIGKILL if it does not).
pub fn run(
    client: &Client,
    request: &ExecRequest,
    capture_limit: usize,
    timeout: Duration,
) -> Result<RunOutput> {
    let deadline = Instant::now() + timeout;
    let exec = Exec::start(client, request, timeout)?;
    exec.close_stdin(deadline.saturating_duration_since(Instant::now()))?;
    let mut out = RunOutput::default();
    let keep = |buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool| {
        let room = capture_limit.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if data.len() > room {
            *truncated = true;
        }
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match exec.next_event(Some(left))? {
            Pulled::Item(ExecEvent::Started { .. }) => {}
            Pulled::Item(ExecEvent::Stdout(d)) => keep(&mut out.stdout, &d, &mut out.truncated),
            Pulled::Item(ExecEvent::Stderr(d)) => keep(&mut out.stderr, &d, &mut out.truncated),
            Pulled::Item(ExecEvent::Exited { code }) => {
                out.code = code;
                return Ok(out);
            }
            Pulled::Item(ExecEvent::Failed(f)) => return Err(Error::ExecFailed(f)),
            // Stdin was closed at once; a failure to write it changes nothing.
            Pulled::Item(ExecEvent::StdinError { .. }) => {}
            Pulled::Ended => {
                return Err(Error::Unexpected("exec ended without an exit code".into()))
            }
            Pulled::Nothing => {
                let _ = exec.signal(libc::SIGKILL, Duration::from_millis(100));
                return Err(Error::Timeout("running the command"));
            }
        }
    }
}
