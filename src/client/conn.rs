//! One connection to a relay: the socket, the writer, and the reader that
//! owns everything about receiving (see `reader`).
//!
//! Writes happen on the caller's thread (no hop through a channel): a frame
//! is encoded into a small head buffer and sent with one write, under a lock
//! that keeps frames whole. A small payload is copied behind the head; a
//! large one goes out by reference in the same (vectored) write. A send that
//! finds the socket full blocks in the kernel, bounded by its deadline.
//!
//! Each connection has one background thread, started with it, which keeps
//! the socket read whenever no caller does (see `reader`), and which is
//! joined when the client is freed.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{CloseCause, Error, Result};
use super::platform;
use super::reader::{set_socket_timeout, Accept, Backpressure, Counters, IdRange, Outbox, Reader};
use super::subscription::Subscription;
use super::sync::{CacheAligned, Mutex, TimedLock};
use crate::protocol::{encode_frame_head, encoded_len, MessageType, MAX_FRAME_SIZE};

/// Stack of the background thread: it runs only the reader, no caller code.
const BACKGROUND_STACK: usize = 128 * 1024;

/// How long the reader may spend sending the kill for an exec whose output
/// overflowed: it must get back to reading.
const KILL_SEND_TIMEOUT: Duration = Duration::from_millis(200);

pub(crate) struct Conn {
    fd: OwnedFd,
    writer: CacheAligned<TimedLock>,
    pub(crate) reader: Reader,
    /// The background reader thread; taken when joined.
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Conn {
    pub(crate) fn new(
        fd: OwnedFd,
        range: IdRange,
        budget: usize,
        backpressure: Backpressure,
    ) -> Result<Arc<Conn>> {
        platform::prepare_socket(fd.as_raw_fd())
            .map_err(|e| Error::io(e, "preparing the socket"))?;
        let reader = Reader::new(fd.as_raw_fd(), range, budget, backpressure)
            .map_err(|e| Error::io(e, "creating the reader's events"))?;
        let conn = Arc::new(Conn {
            fd,
            writer: CacheAligned::default(),
            reader,
            background: Mutex::new(None),
        });
        let for_thread = conn.clone();
        let started = std::thread::Builder::new()
            .name("msb-client".into())
            .stack_size(BACKGROUND_STACK)
            .spawn(move || for_thread.reader.run_background(&*for_thread));
        match started {
            Ok(handle) => *conn.background.lock() = Some(handle),
            Err(e) => {
                // Without it, an unread socket would stall the relay.
                conn.fail(CloseCause::Io(format!("starting the reader thread: {e}")));
                return Err(Error::io(e, "starting the reader thread"));
            }
        }
        Ok(conn)
    }

    pub(crate) fn close_cause(&self) -> Option<CloseCause> {
        self.reader.close_cause()
    }

    /// Marks the connection dead with `cause` (the first cause wins) and
    /// wakes every waiter. Idempotent.
    pub(crate) fn fail(&self, cause: CloseCause) {
        self.reader.fail(cause);
    }

    /// Waits for the background thread to finish; call after `fail`. A call
    /// from that thread itself (the last handle dropped there) skips it.
    pub(crate) fn join_background(&self) {
        let handle = self.background.lock().take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    pub(crate) fn counters(&self) -> Counters {
        self.reader.counters()
    }

    pub(crate) fn range(&self) -> IdRange {
        self.reader.range()
    }

    /// An id of our range that has no live subscription right now.
    pub(crate) fn alloc_id(&self) -> u32 {
        self.reader.alloc_id()
    }

    /// Subscribes to `id`, which must be in our range and not subscribed.
    pub(crate) fn subscribe(self: &Arc<Self>, id: u32) -> Result<Subscription> {
        let stream = self.reader.open(id)?;
        Ok(Subscription {
            conn: self.clone(),
            stream,
        })
    }

    /// Allocates a fresh id and subscribes to it in one step; with `accept`,
    /// only messages it accepts are queued.
    pub(crate) fn subscribe_new(self: &Arc<Self>, accept: Option<Accept>) -> Result<Subscription> {
        let stream = self.reader.open_new(accept)?;
        Ok(Subscription {
            conn: self.clone(),
            stream,
        })
    }

    /// Makes the reader panic on its next read (tests of panic containment).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn inject_reader_panic(&self) {
        self.reader.inject_panic();
    }

    // ------------------------------------------------------------ writing

    /// Sends one frame: `payload` is the concatenation of `parts`. Blocks
    /// only while the socket is full, and never past `deadline`.
    pub(crate) fn send(
        &self,
        message_type: &MessageType,
        id: u32,
        parts: &[&[u8]],
        deadline: Instant,
    ) -> Result<()> {
        self.send_with_flags(
            message_type.as_str(),
            id,
            message_type.flags(),
            parts,
            deadline,
        )
    }

    pub(crate) fn send_with_flags(
        &self,
        message_type: &str,
        id: u32,
        flags: u8,
        parts: &[&[u8]],
        deadline: Instant,
    ) -> Result<()> {
        // Ids of another client's range would reach that client; id 0 is
        // the relay's, and only `core.shutdown` is addressed to it.
        if !self.reader.range().contains(id) && !(id == 0 && message_type == "core.shutdown") {
            return Err(Error::InvalidArgument(format!(
                "id {id} is outside this client's range ({}..={}); only core.shutdown may use id 0",
                self.reader.range().offset + 1,
                self.reader.range().offset + (crate::protocol::ID_RANGE_STEP - 1)
            )));
        }
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let len = encoded_len(message_type, payload_len);
        if len > MAX_FRAME_SIZE as usize {
            return Err(Error::TooLarge(len + 4));
        }
        FRAME_HEAD.with_borrow_mut(|head| {
            head.clear();
            encode_frame_head(head, message_type, id, flags, payload_len);
            let total = head.len() + payload_len;
            if payload_len <= COPY_PAYLOAD_MAX {
                // One contiguous buffer goes out with `send`, which the
                // kernel takes faster than a `sendmsg` with a vector.
                for part in parts {
                    head.extend_from_slice(part);
                }
                return self.write_frame(head, &[], total, deadline);
            }
            self.write_frame(head, parts, total, deadline)
        })
    }

    /// Writes one whole frame, `head` then `parts`, totalling `total` bytes,
    /// under the writer lock.
    fn write_frame(
        &self,
        head: &[u8],
        parts: &[&[u8]],
        total: usize,
        deadline: Instant,
    ) -> Result<()> {
        self.reader.check_open()?;
        let Some(_guard) = self.writer.lock_until(deadline) else {
            return Err(Error::Timeout("waiting for another sender"));
        };
        self.reader.check_open()?;
        let mut written = 0;
        // First try without blocking: small frames always fit. Once the
        // socket is full, block in the kernel (bounded by SO_SNDTIMEO) rather
        // than poll and retry: the kernel then refills the socket as soon as
        // the relay drains any of it, which keeps large transfers streaming.
        let mut blocking = false;
        while written < total {
            let mut flags = platform::SEND_NOSIGNAL;
            if blocking {
                let left = deadline.saturating_duration_since(Instant::now());
                if left < std::time::Duration::from_millis(1) {
                    return Err(self.send_timed_out(written));
                }
                if let Err(e) = set_socket_timeout(self.fd.as_raw_fd(), libc::SO_SNDTIMEO, left) {
                    return Err(Error::io(e, "setting the send timeout"));
                }
            } else {
                flags |= libc::MSG_DONTWAIT;
            }
            match write_vectored_at(self.fd.as_raw_fd(), head, parts, written, flags) {
                Ok(n) => {
                    written += n;
                    blocking = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if blocking {
                        return Err(self.send_timed_out(written));
                    }
                    blocking = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE after `fail` shut the socket down: report that cause.
                    self.reader.check_open()?;
                    let cause = CloseCause::Io(e.to_string());
                    self.fail(cause.clone());
                    return Err(Error::Closed(cause));
                }
            }
        }
        Ok(())
    }

    /// A send ran out of time. Part of a frame on the wire cannot be taken
    /// back, so then the byte stream is unusable and the connection fails.
    fn send_timed_out(&self, written: usize) -> Error {
        if written > 0 {
            self.fail(CloseCause::SendTimedOutMidFrame);
        }
        Error::Timeout("sending a frame")
    }

}

impl Outbox for Conn {
    fn kill_exec(&self, id: u32) {
        let p = crate::protocol::payload::ExecSignal {
            signal: libc::SIGKILL,
        };
        let payload = crate::protocol::payload::Payload::to_bytes(&p);
        // Best effort: if the socket stays full, the relay is not reading
        // either, and the connection's end will kill the process.
        let _ = self.send(
            &MessageType::ExecSignal,
            id,
            &[&payload],
            Instant::now() + KILL_SEND_TIMEOUT,
        );
    }
}

/// Payloads up to this size are copied behind the frame head and sent as one
/// buffer; larger ones go out by reference, with a vectored write.
const COPY_PAYLOAD_MAX: usize = 4096;

thread_local! {
    /// Each sending thread's buffer for frame heads (and small payloads),
    /// reused from send to send.
    static FRAME_HEAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One write of `head` then `parts`, skipping the first `skip` bytes (empty
/// parts are skipped too): `send` for `head` alone, else `sendmsg`.
fn write_vectored_at(
    fd: RawFd,
    head: &[u8],
    parts: &[&[u8]],
    skip: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    let r = if parts.is_empty() {
        let rest = &head[skip..];
        // SAFETY: `rest` is a live slice borrowed for the call. Callers pass
        // MSG_NOSIGNAL, which turns a dead peer into EPIPE instead of a
        // SIGPIPE that would kill the host program.
        unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), flags) }
    } else {
        sendmsg_at(fd, head, parts, skip, flags)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// The `sendmsg` of [`write_vectored_at`]: at most 8 iovecs per call.
fn sendmsg_at(
    fd: RawFd,
    head: &[u8],
    parts: &[&[u8]],
    mut skip: usize,
    flags: libc::c_int,
) -> isize {
    let mut iov: [libc::iovec; 8] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let mut n = 0;
    for p in std::iter::once(head).chain(parts.iter().copied()) {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if n == iov.len() {
            break;
        }
        iov[n] = libc::iovec {
            iov_base: p[skip..].as_ptr() as *mut _,
            iov_len: p.len() - skip,
        };
        skip = 0;
        n += 1;
    }
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    // SAFETY: `msg` points at `n` iovecs that borrow live slices for the
    // duration of the call; MSG_NOSIGNAL as in `write_vectored_at`.
    unsafe { libc::sendmsg(fd, &msg, flags) }
}

