//! Filesystem conversations with the guest. Each call takes a timeout that
//! bounds the whole operation.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Error, Result};
use super::exec::send_data;
use super::subscription::{Pulled, Subscription};
use super::Client;
use crate::protocol::payload::legacy::{FsEntryInfo, FsOp, FsRequest, FsResponse, FsResponseData};
use crate::protocol::payload::{Data, Payload};
use crate::protocol::{Message, MessageType, FS_CHUNK_SIZE};

fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now()))
}

/// What a Read session queues: data chunks with content, and the response.
fn is_read_reply(m: &Message) -> bool {
    match m.message_type {
        MessageType::FsResponse => true,
        // An empty chunk marks the end of data; the response follows. A
        // malformed chunk is queued, so that the pull reports it.
        MessageType::FsData => !is_empty_data(&m.payload),
        _ => false,
    }
}

/// True for the encoding of `{data: h''}`, the end-of-data marker.
fn is_empty_data(payload: &Bytes) -> bool {
    Data::decode(payload).is_ok_and(|d| d.data.is_empty())
}

/// What every other fs session queues: its response only.
fn is_response(m: &Message) -> bool {
    m.message_type == MessageType::FsResponse
}

/// Opens an fs session: subscribes, then sends the request.
fn open(client: &Client, op: FsOp, deadline: Instant) -> Result<Subscription> {
    let accept = match op {
        FsOp::Read { .. } => is_read_reply,
        _ => is_response,
    };
    let sub = client.subscribe_new_accepting(accept)?;
    let payload = FsRequest { op }.to_bytes();
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

/// Decodes a `core.fs.response`; `ok: false` becomes [`Error::Guest`].
fn response(client: &Client, m: &Message) -> Result<FsResponse> {
    let r = FsResponse::decode(&m.payload).map_err(|e| client.fail_protocol(e))?;
    if !r.ok {
        return Err(Error::Guest(
            r.error.unwrap_or_else(|| "unspecified error".into()),
        ));
    }
    Ok(r)
}

/// Waits for the response of a session that queues only its response
/// (see `is_response`).
fn await_response(
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

/// One request, one response: everything but Read and Write.
fn simple(client: &Client, op: FsOp, timeout: Duration) -> Result<FsResponse> {
    let deadline = Instant::now() + timeout;
    let sub = open(client, op, deadline)?;
    await_response(client, &sub, deadline, "waiting for the fs response")
}

pub fn stat(client: &Client, path: &str, timeout: Duration) -> Result<FsEntryInfo> {
    let op = FsOp::Stat { path: path.into() };
    match simple(client, op, timeout)?.data {
        Some(FsResponseData::Stat(e)) => Ok(e),
        _ => Err(Error::Unexpected("Stat reply without an entry".into())),
    }
}

pub fn list(client: &Client, path: &str, timeout: Duration) -> Result<Vec<FsEntryInfo>> {
    let op = FsOp::List { path: path.into() };
    match simple(client, op, timeout)?.data {
        Some(FsResponseData::List(v)) => Ok(v),
        _ => Err(Error::Unexpected("List reply without entries".into())),
    }
}

pub fn mkdir(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple(client, FsOp::Mkdir { path: path.into() }, timeout).map(drop)
}

pub fn remove(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple(client, FsOp::Remove { path: path.into() }, timeout).map(drop)
}

pub fn remove_dir(client: &Client, path: &str, timeout: Duration) -> Result<()> {
    simple(client, FsOp::RemoveDir { path: path.into() }, timeout).map(drop)
}

pub fn copy(client: &Client, src: &str, dst: &str, timeout: Duration) -> Result<()> {
    let op = FsOp::Copy {
        src: src.into(),
        dst: dst.into(),
    };
    simple(client, op, timeout).map(drop)
}

pub fn rename(client: &Client, src: &str, dst: &str, timeout: Duration) -> Result<()> {
    let op = FsOp::Rename {
        src: src.into(),
        dst: dst.into(),
    };
    simple(client, op, timeout).map(drop)
}

/// A file being read from the guest, chunk by chunk.
///
/// Thread safety: `Send + Sync`; pulls from several threads each get
/// distinct chunks, in no defined order between threads.
pub struct FileReader {
    client: Client,
    sub: Subscription,
}

impl FileReader {
    pub fn open(client: &Client, path: &str, timeout: Duration) -> Result<FileReader> {
        let sub = open(
            client,
            FsOp::Read { path: path.into() },
            Instant::now() + timeout,
        )?;
        Ok(FileReader {
            client: client.clone(),
            sub,
        })
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// The next chunk; `Ended` after the whole file arrived and the guest
    /// confirmed it. A failed read returns [`Error::Guest`].
    pub fn next_chunk(&self, timeout: Option<Duration>) -> Result<Pulled<Bytes>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
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
                MessageType::FsResponse => {
                    response(&self.client, &m)?;
                }
                _ => {}
            }
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
        match reader.next_chunk(left(deadline))? {
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
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// A file being written to the guest, chunk by chunk.
///
/// Thread safety: `Send + Sync`, but chunks written from several threads at
/// once land in an undefined order; write from one thread at a time.
/// Dropping it without [`finish`](Self::finish) abandons the write; the
/// guest may keep what it received so far.
pub struct FileWriter {
    client: Client,
    sub: Subscription,
}

impl FileWriter {
    /// Starts writing `path` (created or truncated), with `mode` if given.
    pub fn create(
        client: &Client,
        path: &str,
        mode: Option<u32>,
        timeout: Duration,
    ) -> Result<FileWriter> {
        let sub = open(
            client,
            FsOp::Write {
                path: path.into(),
                mode,
            },
            Instant::now() + timeout,
        )?;
        Ok(FileWriter {
            client: client.clone(),
            sub,
        })
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// Sends `data`, split into chunks of at most 3 MiB. An early failure
    /// reported by the guest is returned here rather than at `finish`.
    pub fn write(&self, data: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if let Pulled::Item(m) = self.sub.recv_timeout(Some(Duration::ZERO))? {
            if m.message_type == MessageType::FsResponse {
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

    /// Sends the end-of-data marker and waits for the guest's confirmation.
    pub fn finish(self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        send_data(
            &self.client,
            &MessageType::FsData,
            self.sub.id(),
            &[],
            deadline,
        )?;
        await_response(
            &self.client,
            &self.sub,
            deadline,
            "waiting for the write confirmation",
        )
        .map(drop)
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
    let w = FileWriter::create(client, path, mode, timeout)?;
    w.write(data, deadline.saturating_duration_since(Instant::now()))?;
    w.finish(deadline.saturating_duration_since(Instant::now()))
}
