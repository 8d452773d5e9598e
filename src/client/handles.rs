//! The filesystem calls only generation 2 (0.5.1 and later) has: stat that
//! follows links, realpath, readlink, symlink, set-stat, removing only
//! empty directories, and files kept open through a guest handle for
//! reads and writes at any offset.
//!
//! Each of them is refused with [`Error::Unsupported`] below generation 2
//! (legacy relays, and 0.5.0 sandboxes), never approximated: a legacy
//! agent would silently ignore `follow_symlink` and `recursive`, and dies
//! on the other requests.
//!
//! Handles belong to the connection that opened them, and the guest allows
//! 1024 open at once per connection. Every [`File`] counts itself in
//! [`OpenFiles`] while its handle is open, so that a refusal by the guest
//! can say how many of them are ours.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::error::{Error, Result};
use super::exec::send_data;
use super::fs::{await_response, open, response, simple, start_close, Request};
use super::peer::FsShapes;
use super::subscription::Pulled;
use super::Client;
use crate::protocol::payload::{
    Data, FsEntryInfo, FsOp, FsOpenOptions, FsResponse, FsResponseData, FsSetAttrs, Payload,
};
use crate::protocol::{MessageType, FS_CHUNK_SIZE};

/// Open handles the guest allows one relay client (agentd's own limit).
pub const GUEST_HANDLE_LIMIT: usize = 1024;

/// The most one `read_at` returns: the reply is held in memory whole.
pub const MAX_READ_AT: u64 = 64 * 1024 * 1024;

/// The text agentd answers an open with once a client holds
/// [`GUEST_HANDLE_LIMIT`] handles.
const GUEST_LIMIT_TEXT: &str = "too many open filesystem handles";

/// Refuses the call unless this connection speaks generation-2 filesystem
/// requests.
fn require_handles(client: &Client) -> Result<()> {
    match client.peer().fs_shapes() {
        FsShapes::Handles => Ok(()),
        FsShapes::Legacy | FsShapes::Refused => Err(Error::Unsupported {
            message_type: "core.fs.request (handle-based, generation 2)",
            needs: 2,
            speaks: client.peer().generation(),
        }),
    }
}

/// One generation-2 request, one response.
fn request(client: &Client, op: FsOp, timeout: Duration) -> Result<FsResponse> {
    require_handles(client)?;
    simple(client, Request::Handles(op), Instant::now() + timeout)
}

fn entry_of(r: FsResponse, what: &str) -> Result<FsEntryInfo> {
    match r.data {
        Some(FsResponseData::Stat(e)) => Ok(e),
        _ => Err(Error::Unexpected(format!("{what} reply without an entry"))),
    }
}

fn path_of(r: FsResponse, what: &str) -> Result<String> {
    match r.data {
        Some(FsResponseData::Path(p)) => Ok(p),
        _ => Err(Error::Unexpected(format!("{what} reply without a path"))),
    }
}

/// Stats `path`, following a final symlink when `follow_symlink` is set.
pub fn stat(
    client: &Client,
    path: &str,
    follow_symlink: bool,
    timeout: Duration,
) -> Result<FsEntryInfo> {
    let op = FsOp::Stat {
        path: path.into(),
        follow_symlink,
    };
    entry_of(request(client, op, timeout)?, "Stat")
}

/// The canonical absolute form of `path` in the guest, every link resolved.
pub fn real_path(client: &Client, path: &str, timeout: Duration) -> Result<String> {
    let op = FsOp::RealPath { path: path.into() };
    path_of(request(client, op, timeout)?, "RealPath")
}

/// The target a symlink points at, as stored in the link.
pub fn read_link(client: &Client, path: &str, timeout: Duration) -> Result<String> {
    let op = FsOp::ReadLink { path: path.into() };
    path_of(request(client, op, timeout)?, "ReadLink")
}

/// Creates the symlink `link_path` pointing at `target`.
pub fn symlink(client: &Client, target: &str, link_path: &str, timeout: Duration) -> Result<()> {
    let op = FsOp::Symlink {
        target: target.into(),
        link_path: link_path.into(),
        user: None,
    };
    request(client, op, timeout).map(drop)
}

/// Changes what `attrs` sets of `path` (the link itself unless
/// `follow_symlink`).
pub fn set_stat(
    client: &Client,
    path: &str,
    follow_symlink: bool,
    attrs: FsSetAttrs,
    timeout: Duration,
) -> Result<()> {
    let op = FsOp::SetStat {
        path: path.into(),
        follow_symlink,
        attrs,
    };
    request(client, op, timeout).map(drop)
}

/// Removes a directory: with everything in it when `recursive`, else only
/// if it is empty.
pub fn remove_dir(client: &Client, path: &str, recursive: bool, timeout: Duration) -> Result<()> {
    let op = FsOp::RemoveDir {
        path: path.into(),
        recursive,
    };
    request(client, op, timeout).map(drop)
}

// ------------------------------------------------------------------ files

/// How many [`File`]s of one connection hold an open handle.
#[derive(Debug, Default)]
pub struct OpenFiles(AtomicUsize);

impl OpenFiles {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One count in [`OpenFiles`], given back when dropped.
struct Counted<'a>(&'a OpenFiles);

impl<'a> Counted<'a> {
    fn new(files: &'a OpenFiles) -> Self {
        files.0.fetch_add(1, Ordering::Relaxed);
        Counted(files)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Adds the limit and our own count to the guest's refusal of an open, so
/// that the message says what to do about it.
fn explain_limit(client: &Client, e: Error) -> Error {
    match e {
        Error::Guest(text) if text.contains(GUEST_LIMIT_TEXT) => Error::Guest(format!(
            "{text} (the guest allows {GUEST_HANDLE_LIMIT} open handles per connection; \
             {} are held by open files of this client, the rest by directory reads or \
             transfers in progress): close files you no longer need",
            client.open_files().count()
        )),
        e => e,
    }
}

/// A file in the guest kept open through a handle, for reads and writes at
/// any offset. Closed by [`close`](Self::close), or without waiting for
/// the guest when dropped.
///
/// Thread safety: `Send + Sync`; reads, writes and stats may run from
/// several threads at once (each is its own conversation).
pub struct File {
    client: Client,
    handle: u64,
    /// True until `close` or the drop sent `CloseHandle`.
    open: std::sync::atomic::AtomicBool,
}

impl File {
    /// Opens `path` with `options` (generation 2+).
    pub fn open(
        client: &Client,
        path: &str,
        options: FsOpenOptions,
        timeout: Duration,
    ) -> Result<File> {
        let op = FsOp::OpenFile {
            path: path.into(),
            options,
        };
        let r = request(client, op, timeout).map_err(|e| explain_limit(client, e))?;
        match r.data {
            Some(FsResponseData::Handle(handle)) => {
                // The File owns this count; `close` or the drop give it back.
                std::mem::forget(Counted::new(client.open_files()));
                Ok(File {
                    client: client.clone(),
                    handle,
                    open: std::sync::atomic::AtomicBool::new(true),
                })
            }
            _ => Err(Error::Unexpected("OpenFile reply without a handle".into())),
        }
    }

    /// The guest's handle number.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Reads up to `len` bytes from `offset`; fewer at the end of the file,
    /// none past it.
    pub fn read_at(&self, offset: u64, len: u64, timeout: Duration) -> Result<Bytes> {
        if len > MAX_READ_AT {
            return Err(Error::InvalidArgument(format!(
                "a read of {len} bytes is over the {MAX_READ_AT}-byte limit of one read_at"
            )));
        }
        let deadline = Instant::now() + timeout;
        let op = FsOp::Read {
            handle: self.handle,
            offset,
            len: Some(len),
        };
        let sub = open(&self.client, &Request::Handles(op), deadline)?;
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        loop {
            let m = match sub.recv_until(Some(deadline))? {
                Pulled::Item(m) => m,
                Pulled::Nothing => return Err(Error::Timeout("reading from a file")),
                Pulled::Ended => {
                    return Err(Error::Unexpected("read ended without a response".into()))
                }
            };
            if m.message_type != MessageType::FsData {
                response(&self.client, &m)?;
                break;
            }
            let chunk = Data::decode(&m.payload)
                .map_err(|e| {
                    self.client
                        .fail_protocol(e.in_message(&MessageType::FsData))
                })?
                .data;
            match first.take() {
                None if joined.is_empty() => first = Some(chunk),
                None => joined.extend_from_slice(&chunk),
                Some(f) => {
                    joined.extend_from_slice(&f);
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        let data = first.unwrap_or_else(|| joined.freeze());
        if data.len() as u64 > len {
            return Err(Error::Unexpected(format!(
                "asked for {len} bytes, the guest sent {}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Writes `data` at `offset`, in chunks of at most 3 MiB. The guest
    /// checks that all of it arrived.
    pub fn write_at(&self, offset: u64, data: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let op = FsOp::Write {
            handle: self.handle,
            offset,
            len: Some(data.len() as u64),
        };
        let sub = open(&self.client, &Request::Handles(op), deadline)?;
        let id = sub.id();
        for chunk in data.chunks(FS_CHUNK_SIZE) {
            // A refusal of the request (a handle not open for writing) comes
            // at once; sending the rest would only earn "unknown write
            // session" replies.
            if let Pulled::Item(m) = sub.recv_timeout(Some(Duration::ZERO))? {
                response(&self.client, &m)?;
                return Err(Error::Unexpected("the guest ended the write early".into()));
            }
            send_data(&self.client, &MessageType::FsData, id, chunk, deadline)?;
        }
        send_data(&self.client, &MessageType::FsData, id, &[], deadline)?;
        await_response(
            &self.client,
            &sub,
            deadline,
            "waiting for the write confirmation",
        )
        .map(drop)
    }

    /// Metadata of the open file.
    pub fn stat(&self, timeout: Duration) -> Result<FsEntryInfo> {
        let op = FsOp::FStat {
            handle: self.handle,
        };
        entry_of(request(&self.client, op, timeout)?, "FStat")
    }

    /// Changes what `attrs` sets of the open file.
    pub fn set_stat(&self, attrs: FsSetAttrs, timeout: Duration) -> Result<()> {
        let op = FsOp::FSetStat {
            handle: self.handle,
            attrs,
        };
        request(&self.client, op, timeout).map(drop)
    }

    /// Closes the handle and waits for the guest to confirm. Later calls on
    /// this file are refused by the guest (the handle is gone); closing
    /// twice is a no-op.
    pub fn close(&self, timeout: Duration) -> Result<()> {
        if !self.open.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let _count = Counted(self.client.open_files());
        let op = FsOp::CloseHandle {
            handle: self.handle,
        };
        simple(&self.client, Request::Handles(op), Instant::now() + timeout).map(drop)
    }

    /// True until [`close`](Self::close) was called.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if self.open.swap(false, Ordering::AcqRel) {
            let _count = Counted(self.client.open_files());
            // Without waiting: the reply, if it comes, is a stray frame.
            drop(start_close(&self.client, self.handle));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_gives_its_count_back() {
        let files = OpenFiles::default();
        {
            let _a = Counted::new(&files);
            let b = Counted::new(&files);
            assert_eq!(files.count(), 2);
            std::mem::forget(b);
        }
        assert_eq!(files.count(), 1);
        drop(Counted(&files));
        assert_eq!(files.count(), 0);
    }
}
