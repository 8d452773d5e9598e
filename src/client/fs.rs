//! Filesystem conversations with the guest. Each call takes a timeout that
//! bounds the whole operation.
//!
//! Every call keeps one meaning on every relay, whatever shapes the wire
//! takes there:
//!
//! - legacy relays (0.3/0.4) get the path-based 0.3.14 requests: a `Read`
//!   or `Write` names the file and streams all of it;
//! - generation 2 and later (0.5.1+) get handle-based conversations: open
//!   the file, `Read`/`Write` through the handle, close it. A handle we
//!   opened is always closed, on error paths too.
//! - a current relay speaking generation 1 (0.5.0) refuses filesystem
//!   calls with [`Error::Unsupported`], as upstream does.
//!
//! `stat` never follows a final symlink, `remove_dir` is recursive and
//! `mkdir` creates missing parents, as in 0.3.14.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Error, Result};
use super::exec::{agent_error, send_data};
use super::peer::FsShapes;
use super::subscription::{Pulled, Subscription};
use super::Client;
use crate::protocol::payload::{
    legacy, Data, FsEntryInfo, FsOp, FsOpenOptions, FsRequest, FsResponse, FsResponseData, Payload,
};
use crate::protocol::{Message, MessageType, FS_CHUNK_SIZE};

pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The shapes this connection's filesystem requests take, or the refusal.
fn shapes(client: &Client) -> Result<FsShapes> {
    match client.peer().fs_shapes() {
        FsShapes::Refused => {
            client.peer().require(&MessageType::FsRequest)?;
            Err(Error::Unexpected("filesystem refused".into()))
        }
        shapes => Ok(shapes),
    }
}

/// One request in the shape of either generation.
pub(super) enum Request {
    Legacy(legacy::FsOp),
    Handles(FsOp),
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        match self {
            Request::Legacy(op) => legacy::FsRequest { op: op.clone() }.to_bytes(),
            Request::Handles(op) => FsRequest::new(op.clone()).to_bytes(),
        }
    }

    fn streams_data(&self) -> bool {
        matches!(
            self,
            Request::Legacy(legacy::FsOp::Read { .. }) | Request::Handles(FsOp::Read { .. })
        )
    }
}

/// What a Read session queues: data chunks with content, and the response
/// (or the agent's refusal).
fn is_read_reply(m: &Message) -> bool {
    match m.message_type {
        MessageType::FsResponse | MessageType::CoreError => true,
        // An empty chunk marks the end of data on legacy relays; the
        // response follows. A malformed chunk is queued, so that the pull
        // reports it.
        MessageType::FsData => !is_empty_data(&m.payload),
        _ => false,
    }
}

/// True for the encoding of `{data: h''}`, the end-of-data marker.
fn is_empty_data(payload: &Bytes) -> bool {
    Data::decode(payload).is_ok_and(|d| d.data.is_empty())
}

/// What every other fs session queues: its response, or the agent's
/// refusal.
pub(super) fn is_response(m: &Message) -> bool {
    matches!(
        m.message_type,
        MessageType::FsResponse | MessageType::CoreError
    )
}

/// Opens an fs session: subscribes, then sends the request.
pub(super) fn open(client: &Client, request: &Request, deadline: Instant) -> Result<Subscription> {
    let accept = if request.streams_data() {
        is_read_reply
    } else {
        is_response
    };
    let sub = client.subscribe_new_accepting(accept)?;
    let payload = request.encode();
    client.send_parts(&MessageType::FsRequest, sub.id(), &[&payload], deadline)?;
    Ok(sub)
}

/// Waits for the next message of the session, turning "nothing by the
/// deadline" into a timeout error.
fn next(sub: &Subscription, deadline: Instant, what: &'static str) -> Result<Option<Message>> {
    match sub.recv_until(Some(deadline))? {
        Pulled::Item(m) => Ok(Some(m)),
        Pulled::Ended => Ok(None),
        Pulled::Nothing => Err(Error::Timeout(what)),
    }
}

/// Decodes a `core.fs.response` in this connection's shape (legacy entries
/// are widened to the generation-2 form, with uid/gid 0 and no atime);
/// `ok: false` becomes [`Error::Guest`], a `core.error` [`Error::Agent`].
pub(super) fn response(client: &Client, m: &Message) -> Result<FsResponse> {
    if m.message_type == MessageType::CoreError {
        return Err(agent_error(&m.payload).map_err(|e| client.fail_protocol(e))?);
    }
    let r = if client.peer().is_legacy() {
        let r = legacy::FsResponse::decode(&m.payload).map_err(|e| client.fail_protocol(e))?;
        FsResponse {
            ok: r.ok,
            error: r.error,
            data: r.data.map(|d| match d {
                legacy::FsResponseData::Stat(e) => FsResponseData::Stat(widen(e)),
                legacy::FsResponseData::List(v) => {
                    FsResponseData::List(v.into_iter().map(widen).collect())
                }
            }),
        }
    } else {
        FsResponse::decode(&m.payload).map_err(|e| client.fail_protocol(e))?
    };
    if !r.ok {
        return Err(Error::Guest(
            r.error.unwrap_or_else(|| "unspecified error".into()),
        ));
    }
    Ok(r)
}

fn widen(e: legacy::FsEntryInfo) -> FsEntryInfo {
    FsEntryInfo {
        path: e.path,
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        modified: e.modified,
        uid: 0,
        gid: 0,
        atime: None,
        mtime: e.modified,
    }
}

/// Waits for the response of a session that queues only its response
/// (see `is_response`).
pub(super) fn await_response(
    client: &Client,
    sub: &Subscription,
    deadline: Instant,
    what: &'static str,
) -> Result<FsResponse> {
    match next(sub, deadline, what)? {
        Some(m) => response(client, &m),
        None => Err(Error::Unexpected(
            "fs session ended without a response".into(),
        )),
    }
}

/// One request, one response.
pub(super) fn simple(client: &Client, request: Request, deadline: Instant) -> Result<FsResponse> {
    let sub = open(client, &request, deadline)?;
    await_response(client, &sub, deadline, "waiting for the fs response")
}

/// One request in whichever shape this connection takes.
fn simple_either(
    client: &Client,
    legacy_op: impl FnOnce() -> legacy::FsOp,
    op: impl FnOnce() -> FsOp,
    timeout: Duration,
) -> Result<FsResponse> {
    let request = match shapes(client)? {
        FsShapes::Legacy => Request::Legacy(legacy_op()),
        _ => Request::Handles(op()),
    };
    simple(client, request, Instant::now() + timeout)
}

/// Stats `path` without following a final symlink.
pub fn stat(client: &Client, path: &str, timeout: Duration) -> Result<FsEntryInfo> {
    let r = simple_either(
        client,
        || legacy::FsOp::Stat { path: path.into() },
        || FsOp::Stat {
            path: path.into(),
            follow_symlink: false,
        },
        timeout,
    )?;
    match r.data {
        Some(FsResponseData::Stat(e)) => Ok(e),
        _ => Err(Error::Unexpected("Stat reply without an entry".into())),
    }
}

pub fn list(client: &Client, path: &str, timeout: Duration) -> Result<Vec<FsEntryInfo>> {
    let r = simple_either(
        client,
        || legacy::FsOp::List { path: path.into() },
        || FsOp::List { path: path.into() },
        timeout,
    )?;
    match r.data {
        Some(FsResponseData::List(v)) => Ok(v),
        _ => Err(Error::Unexpected("List reply without entries".into())),
    }
}

/// Creates `path` and any missing parents.
pub fn mkdir(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple_either(
        client,
        || legacy::FsOp::Mkdir { path: path.into() },
        || FsOp::Mkdir {
            path: path.into(),
            mode: None,
            user: None,
        },
        timeout,
    )
    .map(drop)
}

pub fn remove(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple_either(
        client,
        || legacy::FsOp::Remove { path: path.into() },
        || FsOp::Remove { path: path.into() },
        timeout,
    )
    .map(drop)
}

/// Removes a directory and everything in it.
pub fn remove_dir(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple_either(
        client,
        || legacy::FsOp::RemoveDir { path: path.into() },
        || FsOp::RemoveDir {
            path: path.into(),
            recursive: true,
        },
        timeout,
    )
    .map(drop)
}

pub fn copy(client: &Client, src: &str, dst: &str, timeout: Duration) -> Result<()> {
    simple_either(
        client,
        || legacy::FsOp::Copy {
            src: src.into(),
            dst: dst.into(),
        },
        || FsOp::Copy {
            src: src.into(),
            dst: dst.into(),
        },
        timeout,
    )
    .map(drop)
}

pub fn rename(client: &Client, src: &str, dst: &str, timeout: Duration) -> Result<()> {
    simple_either(
        client,
        || legacy::FsOp::Rename {
            src: src.into(),
            dst: dst.into(),
        },
        || FsOp::Rename {
            src: src.into(),
            dst: dst.into(),
        },
        timeout,
    )
    .map(drop)
}

// ------------------------------------------------------------------ handles

/// Opens `path` with `options` and returns the guest's handle.
fn open_handle(
    client: &Client,
    path: &str,
    options: FsOpenOptions,
    deadline: Instant,
) -> Result<u64> {
    let op = FsOp::OpenFile {
        path: path.into(),
        options,
    };
    match simple(client, Request::Handles(op), deadline)?.data {
        Some(FsResponseData::Handle(h)) => Ok(h),
        _ => Err(Error::Unexpected("OpenFile reply without a handle".into())),
    }
}

/// Closes a handle and waits for the guest to confirm.
fn close_handle(client: &Client, handle: u64, deadline: Instant) -> Result<()> {
    simple(
        client,
        Request::Handles(FsOp::CloseHandle { handle }),
        deadline,
    )
    .map(drop)
}

/// Sends `CloseHandle` without waiting for its response, for paths that
/// must not block (a stream dropped or ended under a non-blocking pull).
/// The session stays subscribed while the returned value lives, so that
/// its response is not counted as a stray frame.
pub(super) fn start_close(client: &Client, handle: u64) -> Option<Subscription> {
    // Small frame, short deadline: a full socket must not hold up a drop.
    let deadline = Instant::now() + CLOSE_SEND_TIMEOUT;
    open(
        client,
        &Request::Handles(FsOp::CloseHandle { handle }),
        deadline,
    )
    .ok()
}

/// How long a send of `CloseHandle` from a drop may wait for the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// A handle owned by a stream, closed exactly once.
struct OwnedHandle {
    client: Client,
    handle: parking_lot::Mutex<Option<u64>>,
    /// The close sent without waiting, kept until the stream is dropped.
    closing: parking_lot::Mutex<Option<Subscription>>,
}

impl OwnedHandle {
    fn new(client: &Client, handle: u64) -> OwnedHandle {
        OwnedHandle {
            client: client.clone(),
            handle: parking_lot::Mutex::new(Some(handle)),
            closing: parking_lot::Mutex::new(None),
        }
    }

    fn get(&self) -> Option<u64> {
        *self.handle.lock()
    }

    /// Closes the handle and waits for the guest's answer.
    fn close(&self, deadline: Instant) -> Result<()> {
        match self.handle.lock().take() {
            Some(h) => close_handle(&self.client, h, deadline),
            None => Ok(()),
        }
    }

    /// Closes the handle without waiting.
    fn close_nowait(&self) {
        if let Some(h) = self.handle.lock().take() {
            *self.closing.lock() = start_close(&self.client, h);
        }
    }
}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        self.close_nowait();
    }
}

// ------------------------------------------------------------------ read

/// A file being read from the guest, chunk by chunk.
///
/// Thread safety: `Send + Sync`; pulls from several threads each get
/// distinct chunks, in no defined order between threads.
pub struct FileReader {
    client: Client,
    sub: Subscription,
    /// Generation 2+: the handle the read goes through.
    handle: Option<OwnedHandle>,
}

impl FileReader {
    pub fn open(client: &Client, path: &str, timeout: Duration) -> Result<FileReader> {
        let deadline = Instant::now() + timeout;
        match shapes(client)? {
            FsShapes::Legacy => {
                let request = Request::Legacy(legacy::FsOp::Read { path: path.into() });
                Ok(FileReader {
                    client: client.clone(),
                    sub: open(client, &request, deadline)?,
                    handle: None,
                })
            }
            _ => {
                let options = FsOpenOptions {
                    read: true,
                    ..FsOpenOptions::default()
                };
                let h = OwnedHandle::new(client, open_handle(client, path, options, deadline)?);
                let request = Request::Handles(FsOp::Read {
                    handle: h.get().expect("just opened"),
                    offset: 0,
                    len: None,
                });
                // On failure `h` is dropped, which closes the handle.
                let sub = open(client, &request, deadline)?;
                Ok(FileReader {
                    client: client.clone(),
                    sub,
                    handle: Some(h),
                })
            }
        }
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// The next chunk; `Ended` after the whole file arrived and the guest
    /// confirmed it. A failed read returns [`Error::Guest`]. On generation
    /// 2+ the handle is closed once the read ends (without waiting for the
    /// guest's confirmation; [`read_file`] waits for it).
    pub fn next_chunk(&self, timeout: Option<Duration>) -> Result<Pulled<Bytes>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait = deadline.map(left);
            let m = match self.sub.recv_timeout(wait)? {
                Pulled::Item(m) => m,
                Pulled::Nothing => return Ok(Pulled::Nothing),
                Pulled::Ended => return Ok(Pulled::Ended),
            };
            match m.message_type {
                MessageType::FsData => {
                    let d = Data::decode(&m.payload).map_err(|e| {
                        self.client
                            .fail_protocol(e.in_message(&MessageType::FsData))
                    })?;
                    if !d.data.is_empty() {
                        return Ok(Pulled::Item(d.data));
                    }
                }
                MessageType::FsResponse | MessageType::CoreError => {
                    if let Some(h) = &self.handle {
                        h.close_nowait();
                    }
                    response(&self.client, &m)?;
                }
                _ => {}
            }
        }
    }

    /// Waits until the guest confirmed closing the handle (generation 2+),
    /// and reports a failure to close.
    fn await_close(&self, deadline: Instant) -> Result<()> {
        let Some(h) = &self.handle else {
            return Ok(());
        };
        if h.get().is_some() {
            return h.close(deadline);
        }
        let closing = h.closing.lock().take();
        match closing {
            Some(sub) => await_response(&self.client, &sub, deadline, "closing the file").map(drop),
            None => Ok(()),
        }
    }
}

/// Reads a whole file.
pub fn read_file(client: &Client, path: &str, timeout: Duration) -> Result<Bytes> {
    let deadline = Instant::now() + timeout;
    let reader = FileReader::open(client, path, timeout)?;
    // A file of one chunk is handed out as received. Larger ones are
    // appended as they come, so each chunk's buffer goes back to the pool
    // for the next one instead of all of them being held until the end.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    loop {
        match reader.next_chunk(Some(left(deadline)))? {
            Pulled::Item(c) => match first.take() {
                None if joined.is_empty() => first = Some(c),
                None => joined.extend_from_slice(&c),
                Some(f) => {
                    joined.reserve(f.len() + c.len());
                    joined.extend_from_slice(&f);
                    joined.extend_from_slice(&c);
                }
            },
            Pulled::Ended => break,
            Pulled::Nothing => return Err(Error::Timeout("reading a file")),
        }
    }
    reader.await_close(deadline)?;
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

// ------------------------------------------------------------------ write

/// A file being written to the guest, chunk by chunk.
///
/// Thread safety: `Send + Sync`, but chunks written from several threads at
/// once land in an undefined order; write from one thread at a time.
/// Dropping it without [`finish`](Self::finish) abandons the write; the
/// guest may keep what it received so far.
pub struct FileWriter {
    client: Client,
    sub: Subscription,
    /// Generation 2+: the handle the write goes through.
    handle: Option<OwnedHandle>,
}

impl FileWriter {
    /// Starts writing `path` (created or truncated), with `mode` if given.
    pub fn create(
        client: &Client,
        path: &str,
        mode: Option<u32>,
        timeout: Duration,
    ) -> Result<FileWriter> {
        Self::create_sized(client, path, mode, None, Instant::now() + timeout)
    }

    /// [`create`](Self::create), announcing the length on generation 2+
    /// when it is known (the guest then fails a write of another length).
    fn create_sized(
        client: &Client,
        path: &str,
        mode: Option<u32>,
        len: Option<u64>,
        deadline: Instant,
    ) -> Result<FileWriter> {
        match shapes(client)? {
            FsShapes::Legacy => {
                let request = Request::Legacy(legacy::FsOp::Write {
                    path: path.into(),
                    mode,
                });
                Ok(FileWriter {
                    client: client.clone(),
                    sub: open(client, &request, deadline)?,
                    handle: None,
                })
            }
            _ => {
                let options = FsOpenOptions {
                    write: true,
                    create: true,
                    truncate: true,
                    mode,
                    ..FsOpenOptions::default()
                };
                let h = OwnedHandle::new(client, open_handle(client, path, options, deadline)?);
                let request = Request::Handles(FsOp::Write {
                    handle: h.get().expect("just opened"),
                    offset: 0,
                    len,
                });
                // On failure `h` is dropped, which closes the handle.
                let sub = open(client, &request, deadline)?;
                Ok(FileWriter {
                    client: client.clone(),
                    sub,
                    handle: Some(h),
                })
            }
        }
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// Sends `data`, split into chunks of at most 3 MiB. An early failure
    /// reported by the guest is returned here rather than at `finish`.
    pub fn write(&self, data: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if let Pulled::Item(m) = self.sub.recv_timeout(Some(Duration::ZERO))? {
            if is_response(&m) {
                response(&self.client, &m)?;
                return Err(Error::Unexpected("the guest ended the write early".into()));
            }
        }
        for chunk in data.chunks(FS_CHUNK_SIZE) {
            send_data(
                &self.client,
                &MessageType::FsData,
                self.sub.id(),
                chunk,
                deadline,
            )?;
        }
        Ok(())
    }

    /// Sends the end-of-data marker, waits for the guest's confirmation,
    /// then (generation 2+) closes the handle, also when the write failed.
    pub fn finish(self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let written = send_data(
            &self.client,
            &MessageType::FsData,
            self.sub.id(),
            &[],
            deadline,
        )
        .and_then(|()| {
            await_response(
                &self.client,
                &self.sub,
                deadline,
                "waiting for the write confirmation",
            )
        });
        let closed = match &self.handle {
            Some(h) if written.is_ok() => h.close(deadline),
            // The write's error is the one to report; the close must still
            // happen, without waiting on a connection that may be failing.
            Some(h) => {
                h.close_nowait();
                Ok(())
            }
            None => Ok(()),
        };
        written?;
        closed
    }
}

/// Writes a whole file (created or truncated), in chunks of at most 3 MiB.
pub fn write_file(
    client: &Client,
    path: &str,
    data: &[u8],
    mode: Option<u32>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let w = FileWriter::create_sized(client, path, mode, Some(data.len() as u64), deadline)?;
    w.write(data, left(deadline))?;
    w.finish(left(deadline))
}
