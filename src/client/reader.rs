//! Reading the socket: one read state, two drivers.
//!
//! The bytes of a stream socket can only be framed by one reader at a time,
//! so all read state (buffer, partly received frame) sits behind one lock.
//! Whoever holds it reads:
//!
//! - a caller blocked in a pull, when nobody else is reading ("leader"):
//!   it reads and routes frames on its own thread until its own message has
//!   arrived, so a request/response costs no thread hop at all. Callers that
//!   find the lock taken wait as followers; the leader routes their messages
//!   to them, and when it lets go it asks one follower to lead next. The
//!   followers one read served, and the next leader, are woken with one
//!   system call (`sync::WakeGroup`);
//! - the background task on the client's runtime, only while some
//!   subscription waits passively (a readiness fd, an async waker): those
//!   have no thread of their own blocked in a pull. With no passive waiter,
//!   the task is not even registered with the poller, so it never wakes.
//!   Unread data then stays in the kernel, which is backpressure anyway.
//!
//! How a leader waits: replies usually come within microseconds, so it first
//! waits inside the read itself (a blocking `recv` bounded by a short
//! receive timeout), which costs one system call; measured against
//! `poll` + `recv`, that is 10-35 % more round trips. Only when nothing
//! came within that short wait does it fall back to `poll`, which also watches
//! the close and re-check eventfds, so closing or cancelling reaches a waiting
//! leader within the short wait at worst.
//!
//! Handing over to the task: it notices new data through edge-triggered
//! readiness, which a leader may consume without reading everything. A task
//! that found the lock taken raises `task_waiting`, and a leader that
//! releases the lock with that flag up wakes the task to resume.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::conn::{set_socket_timeout, Conn};
use super::error::CloseCause;
use crate::protocol::{decode_borrowed, FrameHeader, Message, RawFrame, FRAME_HEAD_SIZE};

/// Size of the read buffer: large enough to take many small frames, or
/// most of a 64 KiB frame, in one read.
const READ_BUFFER: usize = 256 * 1024;

/// Frames at least this large that are only partly in the read buffer are
/// completed in a buffer of their own, read straight from the socket, so
/// large payloads are copied at most once (from the part already buffered).
/// Exec output arrives in frames of 8 to 64 KiB.
const DIRECT_READ_THRESHOLD: usize = 8 * 1024;

/// Bytes read into the shared buffer along with the rest of a large frame,
/// and at a time while large frames keep coming (see `large_frames`).
const LARGE_FRAME_TAIL: usize = 4096;

/// How long a leader waits inside a blocking read before it falls back to
/// `poll` (the kernel rounds it up to its timer tick, a few ms at most).
const SHORT_READ_WAIT: Duration = Duration::from_millis(2);

/// Deadlines closer than this are waited for in `poll` only: the short read
/// wait, rounded up by the kernel, could overshoot them noticeably.
const SHORT_READ_MIN_LEFT: Duration = Duration::from_millis(20);

/// How one read may wait for data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadWait {
    /// Return at once if nothing is there.
    No,
    /// Block up to `SHORT_READ_WAIT`.
    Short,
}

/// What one read did.
pub(crate) enum Step {
    /// Bytes were read and every complete frame among them was routed.
    Progress,
    /// Nothing to read right now.
    WouldBlock,
}

pub(crate) struct ReadState {
    buf: Box<[u8]>,
    filled: usize,
    /// A large frame being completed in its own buffer.
    large: Option<(FrameHeader, Vec<u8>)>,
    batch: Vec<Message>,
    wakers: Vec<std::task::Waker>,
    /// Blocked pullers (`WakeGroup` bits) that routing served and that are
    /// not woken yet: woken before the next read, or with the caller asked
    /// to read next when the reader lets go (one system call for both).
    served: u32,
    /// SO_RCVTIMEO is set to `SHORT_READ_WAIT` (once, on the first short wait).
    receive_timeout_set: bool,
    /// Large frames are arriving: read only `LARGE_FRAME_TAIL` bytes into
    /// the shared buffer, so that the next one is found incomplete and the
    /// rest of it is read into a buffer of its own instead of being copied
    /// out of the shared one.
    large_frames: bool,
}

impl ReadState {
    pub(crate) fn new() -> ReadState {
        ReadState {
            // Allocated by the first read: idle clients should cost little.
            buf: Box::default(),
            filled: 0,
            large: None,
            batch: Vec::new(),
            wakers: Vec::new(),
            served: 0,
            receive_timeout_set: false,
            large_frames: false,
        }
    }

    /// One read, then routing of every frame it completed. `WouldBlock`
    /// when nothing came (at once, or within the short wait).
    pub(crate) fn step(&mut self, conn: &Conn, wait: ReadWait) -> Result<Step, CloseCause> {
        // Nobody served may wait behind a read that blocks.
        conn.blocked.wake(std::mem::take(&mut self.served));
        if self.buf.is_empty() {
            self.buf = vec![0u8; READ_BUFFER].into_boxed_slice();
        }
        let flags = match wait {
            ReadWait::No => libc::MSG_DONTWAIT,
            ReadWait::Short => {
                if !self.receive_timeout_set {
                    set_socket_timeout(conn.raw_fd(), libc::SO_RCVTIMEO, SHORT_READ_WAIT)
                        .map_err(|e| CloseCause::Io(format!("setting the receive timeout: {e}")))?;
                    self.receive_timeout_set = true;
                }
                0
            }
        };
        if let Some((header, mut body)) = self.large.take() {
            // One readv: the rest of the large frame straight into its own
            // buffer, plus a small tail into the shared buffer so the next
            // frame's header comes with it. The tail is small so that the
            // next large frame is mostly read directly too.
            debug_assert_eq!(self.filled, 0);
            let want = header.body_len() - body.len();
            let tail = LARGE_FRAME_TAIL.min(self.buf.len());
            let n = match readv(
                conn.raw_fd(),
                flags,
                &mut body.spare_capacity_mut()[..want],
                &mut self.buf[..tail],
            )? {
                Some(n) => n,
                None => {
                    self.large = Some((header, body));
                    return Ok(Step::WouldBlock);
                }
            };
            let into_body = n.min(want);
            // SAFETY: readv initialised the first `into_body` spare bytes.
            unsafe { body.set_len(body.len() + into_body) };
            if body.len() < header.body_len() {
                self.large = Some((header, body));
                return Ok(Step::Progress);
            }
            let raw = RawFrame {
                id: header.id,
                flags: header.flags,
                body: conn.frame_buffers.freeze(body),
            };
            self.batch.push(raw.decode().map_err(CloseCause::Protocol)?);
            self.filled = n - into_body;
            // Routes the completed frame together with whatever the tail held.
            self.split_frames(conn, true)?;
            return Ok(Step::Progress);
        }

        let end = if self.large_frames {
            (self.filled + LARGE_FRAME_TAIL).min(self.buf.len())
        } else {
            self.buf.len()
        };
        let spare = &mut self.buf[self.filled..end];
        // SAFETY: initialised bytes may be viewed as MaybeUninit.
        let spare = unsafe {
            std::slice::from_raw_parts_mut(
                spare.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                spare.len(),
            )
        };
        let Some(n) = read(conn.raw_fd(), flags, spare)? else {
            return Ok(Step::WouldBlock);
        };
        self.filled += n;
        self.split_frames(conn, false)?;
        Ok(Step::Progress)
    }

    /// Takes every complete frame out of the buffer and routes them as one
    /// batch (with a large frame just completed, if `large_before`); moves a
    /// large incomplete frame to a buffer of its own.
    fn split_frames(&mut self, conn: &Conn, large_before: bool) -> Result<(), CloseCause> {
        let mut start = 0;
        let mut large_frames = large_before;
        let result = loop {
            let header = match FrameHeader::parse(&self.buf[start..self.filled]) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(()),
                Err(e) => break Err(CloseCause::Protocol(e)),
            };
            let size = header.frame_size();
            if self.filled - start >= size {
                match decode_borrowed(&header, &self.buf[start + FRAME_HEAD_SIZE..start + size]) {
                    Ok(m) => self.batch.push(m),
                    Err(e) => break Err(CloseCause::Protocol(e)),
                }
                large_frames |= size >= DIRECT_READ_THRESHOLD;
                start += size;
            } else if size >= DIRECT_READ_THRESHOLD || size > READ_BUFFER {
                large_frames = true;
                let mut body = conn.frame_buffers.take(header.body_len());
                body.extend_from_slice(&self.buf[start + FRAME_HEAD_SIZE..self.filled]);
                start = self.filled;
                self.large = Some((header, body));
                break Ok(());
            } else {
                break Ok(());
            }
        };
        self.large_frames = large_frames;
        // Frames that arrived intact before a bad one are still delivered.
        self.served |= conn.route(&mut self.batch, &mut self.wakers);
        self.buf.copy_within(start..self.filled, 0);
        self.filled -= start;
        result
    }
}

/// One read into `dst` with `flags` (`MSG_DONTWAIT`, or 0 to wait up to
/// the receive timeout); `Ok(None)` when nothing came. EOF and errors end
/// the connection.
fn read(
    fd: RawFd,
    flags: libc::c_int,
    dst: &mut [MaybeUninit<u8>],
) -> Result<Option<usize>, CloseCause> {
    loop {
        // SAFETY: `dst` is a live, writable buffer borrowed for the call.
        // Without MSG_DONTWAIT it blocks at most for the socket's receive
        // timeout, which the leader sets before its first waiting read.
        let n = unsafe { libc::recv(fd, dst.as_mut_ptr().cast(), dst.len(), flags) };
        if let Some(outcome) = read_outcome(n) {
            return outcome;
        }
    }
}

/// One vectored read into `first`, then `second`; as [`read`].
fn readv(
    fd: RawFd,
    flags: libc::c_int,
    first: &mut [MaybeUninit<u8>],
    second: &mut [u8],
) -> Result<Option<usize>, CloseCause> {
    let mut iov = [
        libc::iovec {
            iov_base: first.as_mut_ptr().cast(),
            iov_len: first.len(),
        },
        libc::iovec {
            iov_base: second.as_mut_ptr().cast(),
            iov_len: second.len(),
        },
    ];
    recv(fd, flags, &mut iov)
}

/// `recvmsg` into `iov`, which must describe live, writable buffers
/// borrowed for the call.
fn recv(
    fd: RawFd,
    flags: libc::c_int,
    iov: &mut [libc::iovec],
) -> Result<Option<usize>, CloseCause> {
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose entries describe live, writable
        // buffers (the callers build them from borrowed slices). Without
        // MSG_DONTWAIT the call blocks at most for the socket's receive
        // timeout, which the leader sets before its first waiting read.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if let Some(outcome) = read_outcome(n) {
            return outcome;
        }
    }
}

/// What a read that returned `n` means: bytes, nothing yet (`Ok(None)`), or
/// the end of the connection; `None` when a signal interrupted it (retry).
fn read_outcome(n: isize) -> Option<Result<Option<usize>, CloseCause>> {
    if n > 0 {
        return Some(Ok(Some(n as usize)));
    }
    if n == 0 {
        return Some(Err(CloseCause::Eof));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Some(Ok(None)),
        io::ErrorKind::Interrupted => None,
        _ => Some(Err(CloseCause::Io(e.to_string()))),
    }
}

/// The socket's descriptor, borrowed for the AsyncFd registration; the
/// `OwnedFd` in `Conn` outlives it because the task holds the `Conn`.
struct RawFdRef(RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The background reader: runs until the connection dies, then wakes every
/// waiter with the cause.
pub(crate) async fn run_task(conn: Arc<Conn>) {
    let cause = task_loop(&conn).await;
    conn.fail(cause);
}

async fn task_loop(conn: &Conn) -> CloseCause {
    let closed = || conn.close_cause().unwrap_or(CloseCause::ClosedByCaller);
    loop {
        if let Some(cause) = conn.close_cause() {
            return cause;
        }
        // Idle: nothing waits passively, so do not even watch the socket.
        while conn.passive_count() == 0 {
            tokio::select! {
                _ = conn.passive_changed.notified() => {}
                _ = conn.close_notify.notified() => return closed(),
            }
        }
        if let Err(cause) = serve_passive(conn).await {
            return cause;
        }
    }
}

/// Reads for passive waiters until there are none left. `Err` ends the
/// connection.
async fn serve_passive(conn: &Conn) -> Result<(), CloseCause> {
    let closed = || conn.close_cause().unwrap_or(CloseCause::ClosedByCaller);
    // SAFETY: the descriptor is owned by `conn`, which outlives `afd` (a
    // local of this function, which borrows `conn`); nothing closes the
    // descriptor before `Conn` is dropped.
    let afd =
        unsafe { AsyncFd::register_with_interest(RawFdRef(conn.raw_fd()), Interest::READABLE) }
            .map_err(|e| CloseCause::Io(e.to_string()))?;
    while conn.passive_count() > 0 {
        // Backpressure: while unread messages fill the budget, read nothing.
        if !conn.budget_available() {
            tokio::select! {
                _ = conn.budget_freed.notified() => {}
                _ = conn.passive_changed.notified() => {}
                _ = conn.close_notify.notified() => return Err(closed()),
            }
            continue;
        }
        let mut ready = tokio::select! {
            r = afd.readable() => r.map_err(|e| CloseCause::Io(e.to_string()))?,
            _ = conn.passive_changed.notified() => continue,
            _ = conn.close_notify.notified() => return Err(closed()),
        };
        let Some(mut state) = conn.read_state.try_lock() else {
            // A caller is leading. Ask for a hand-over, then check again in
            // case it let go before seeing the request.
            conn.task_waiting.store(true, Ordering::SeqCst);
            if conn.read_state.is_locked() {
                tokio::select! {
                    _ = conn.handoff.notified() => {}
                    _ = conn.close_notify.notified() => return Err(closed()),
                }
            }
            conn.task_waiting.store(false, Ordering::SeqCst);
            continue;
        };
        let result = loop {
            match state.step(conn, ReadWait::No) {
                Ok(Step::Progress) if conn.budget_available() => {}
                Ok(Step::Progress) => break Ok(()),
                Ok(Step::WouldBlock) => {
                    ready.clear_ready();
                    break Ok(());
                }
                Err(cause) => break Err(cause),
            }
        };
        // Callers may have queued up behind us; one of them reads next.
        release(conn, state);
        result?;
    }
    Ok(())
}

/// Reads on the caller's thread until `done()` holds, the deadline passes,
/// the budget is spent, or the connection dies. The caller holds the read
/// lock (passed in) and must not hold any subscription lock.
pub(crate) fn lead(
    conn: &Conn,
    mut state: parking_lot::MutexGuard<'_, ReadState>,
    deadline: Option<Instant>,
    done: impl Fn() -> bool,
) {
    loop {
        let wait = if deadline
            .is_none_or(|d| d.saturating_duration_since(Instant::now()) >= SHORT_READ_MIN_LEFT)
        {
            ReadWait::Short
        } else {
            ReadWait::No
        };
        match state.step(conn, wait) {
            Ok(Step::Progress) => {
                if done() || !conn.budget_available() {
                    break;
                }
            }
            Ok(Step::WouldBlock) => {
                // Nothing within the short wait (or the deadline is near):
                // wait in poll, where closing and cancelling reach us, and
                // check again after it, before another short wait.
                if done() || !conn.wait_readable(deadline) || done() {
                    break;
                }
            }
            Err(cause) => {
                // Closed first, so that nobody is asked to read a dead socket.
                conn.fail(cause);
                release(conn, state);
                return;
            }
        }
    }
    release(conn, state);
}

/// Lets go of the socket: wakes the callers the last read served together
/// with one still waiting, asked to read next, in one system call, and the
/// background task if it asked for a hand-over.
fn release(conn: &Conn, mut state: parking_lot::MutexGuard<'_, ReadState>) {
    let served = std::mem::take(&mut state.served);
    drop(state);
    if conn.task_waiting.swap(false, Ordering::SeqCst) {
        conn.handoff.notify_one();
    }
    conn.blocked.wake(served | conn.pick_next_reader());
}
