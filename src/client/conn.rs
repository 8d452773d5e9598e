//! One connection to a relay: the socket, the writer, the routing table and
//! the reader task.
//!
//! Writes happen on the caller's thread (no hop through a channel): a frame
//! is encoded into a small head buffer and sent with one vectored write
//! together with the payload, under a lock that keeps frames whole.
//!
//! Reads happen on the client's runtime thread: the reader fills a large
//! buffer, splits every complete frame out of it and routes them all under
//! one acquisition of the routing lock, waking each subscriber at most once
//! per batch and only when its queue turns non-empty.
//!
//! Memory: every queued message is charged to a per-connection budget. When
//! the budget is spent, the reader stops reading the socket until consumers
//! drain; the kernel buffers fill and the relay, then the guest, is held back.
//! The trade-off: one subscriber that never pulls pauses every subscriber of
//! the connection. That is deliberate: the alternatives are unbounded memory
//! or silently dropping data that arrived correctly.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use super::error::{CloseCause, Error, Result};
use super::subscription::{charge, SubShared, Subscription};
use crate::protocol::{
    encode_frame_head, encoded_len, FrameHeader, Message, MessageType, RawFrame, FRAME_HEAD_SIZE,
    ID_RANGE_STEP, MAX_FRAME_SIZE,
};

/// Size of the reader's buffer: large enough to take many small frames, or
/// most of a 64 KiB frame, in one read.
const READ_BUFFER: usize = 256 * 1024;

/// Frames at least this large that are only partly in the read buffer are
/// completed in a buffer of their own, read straight from the socket, so
/// large payloads are not copied.
const DIRECT_READ_THRESHOLD: usize = 16 * 1024;

/// What a guest did to this connection, for users to inspect.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub frames_received: u64,
    pub bytes_received: u64,
    /// In our range, but nobody was subscribed to the id.
    pub dropped_no_subscriber: u64,
    /// Outside our range: a peer bug or a hostile guest.
    pub dropped_out_of_range: u64,
    /// Frames whose type this version does not know.
    pub unknown_type: u64,
    /// Bytes charged to the memory budget right now.
    pub bytes_queued: u64,
}

#[derive(Default)]
struct AtomicCounters {
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_no_subscriber: AtomicU64,
    dropped_out_of_range: AtomicU64,
    unknown_type: AtomicU64,
}

/// The client's id range: `offset + 1 ..= offset + STEP - 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdRange {
    pub offset: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        id > self.offset && (id as u64) < self.offset as u64 + ID_RANGE_STEP as u64
    }

    fn nth(&self, n: u32) -> u32 {
        self.offset + 1 + n % (ID_RANGE_STEP - 1)
    }
}

pub(crate) struct Conn {
    fd: OwnedFd,
    /// Readable when the connection is closed; writers blocked on a full
    /// socket poll it too, so closing wakes them.
    close_event: OwnedFd,
    writer: Mutex<()>,
    routes: Mutex<HashMap<u32, Arc<SubShared>>>,
    closed: Mutex<Option<CloseCause>>,
    close_notify: Notify,
    pub(crate) range: IdRange,
    next_id: AtomicU32,
    budget: usize,
    queued: AtomicUsize,
    budget_freed: Notify,
    counters: AtomicCounters,
}

impl Conn {
    pub(crate) fn new(fd: OwnedFd, range: IdRange, budget: usize) -> Result<Arc<Conn>> {
        // SAFETY: eventfd has no memory-safety preconditions; checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::io(io::Error::last_os_error(), "eventfd"));
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let close_event = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
        // Start at a random point of the range: a recycled slot may still get
        // late frames addressed to the previous client's first ids.
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32;
        Ok(Arc::new(Conn {
            fd,
            close_event,
            writer: Mutex::new(()),
            routes: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            close_notify: Notify::new(),
            range,
            next_id: AtomicU32::new(start),
            budget,
            queued: AtomicUsize::new(0),
            budget_freed: Notify::new(),
            counters: AtomicCounters::default(),
        }))
    }

    pub(crate) fn counters(&self) -> Counters {
        let c = &self.counters;
        Counters {
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            dropped_no_subscriber: c.dropped_no_subscriber.load(Ordering::Relaxed),
            dropped_out_of_range: c.dropped_out_of_range.load(Ordering::Relaxed),
            unknown_type: c.unknown_type.load(Ordering::Relaxed),
            bytes_queued: self.queued.load(Ordering::Relaxed) as u64,
        }
    }

    pub(crate) fn close_cause(&self) -> Option<CloseCause> {
        self.closed.lock().clone()
    }

    fn check_open(&self) -> Result<()> {
        match self.close_cause() {
            Some(c) => Err(Error::Closed(c)),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------ ids

    /// An id of our range that has no live subscription right now.
    pub(crate) fn alloc_id(&self) -> u32 {
        let routes = self.routes.lock();
        self.free_id_locked(&routes)
    }

    fn free_id_locked(&self, routes: &HashMap<u32, Arc<SubShared>>) -> u32 {
        // The range holds 268 million ids; live subscriptions are bounded by
        // memory, so a free id is found within a few probes.
        loop {
            let id = self.range.nth(self.next_id.fetch_add(1, Ordering::Relaxed));
            if !routes.contains_key(&id) {
                return id;
            }
        }
    }

    /// Subscribes to `id`, which must be in our range and not subscribed.
    pub(crate) fn subscribe(self: &Arc<Self>, id: u32) -> Result<Subscription> {
        self.check_open()?;
        if !self.range.contains(id) {
            return Err(Error::IdUnavailable(id));
        }
        let mut routes = self.routes.lock();
        if routes.contains_key(&id) {
            return Err(Error::IdUnavailable(id));
        }
        Ok(self.insert_route(&mut routes, id))
    }

    /// Allocates a fresh id and subscribes to it in one step.
    pub(crate) fn subscribe_new(self: &Arc<Self>) -> Result<Subscription> {
        self.check_open()?;
        let mut routes = self.routes.lock();
        let id = self.free_id_locked(&routes);
        Ok(self.insert_route(&mut routes, id))
    }

    fn insert_route(
        self: &Arc<Self>,
        routes: &mut HashMap<u32, Arc<SubShared>>,
        id: u32,
    ) -> Subscription {
        let shared = SubShared::new(id);
        routes.insert(id, shared.clone());
        // A close that raced with us must still reach this subscription.
        if let Some(cause) = self.close_cause() {
            SubShared::close_locked(&mut shared.state.lock(), &cause);
        }
        Subscription {
            conn: self.clone(),
            shared,
        }
    }

    pub(crate) fn unsubscribe(&self, shared: &Arc<SubShared>) {
        let mut routes = self.routes.lock();
        if let Some(s) = routes.get(&shared.id) {
            if Arc::ptr_eq(s, shared) {
                routes.remove(&shared.id);
            }
        }
    }

    // ------------------------------------------------------------ budget

    pub(crate) fn release_budget(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        if before >= self.budget && before - n < self.budget {
            self.budget_freed.notify_one();
        }
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
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let len = encoded_len(message_type, payload_len);
        if len > MAX_FRAME_SIZE as usize {
            return Err(Error::TooLarge(len + 4));
        }
        let mut head = Vec::with_capacity(64 + message_type.len());
        encode_frame_head(&mut head, message_type, id, flags, payload_len);
        let mut iov: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        iov.push(&head);
        iov.extend(parts.iter().filter(|p| !p.is_empty()));

        self.check_open()?;
        let Some(_guard) = self.writer.try_lock_until(deadline) else {
            return Err(Error::Timeout("waiting for another sender"));
        };
        self.check_open()?;
        let total = head.len() + payload_len;
        let mut written = 0;
        while written < total {
            match write_vectored_at(self.fd.as_raw_fd(), &iov, written) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.wait_writable(deadline) {
                        Ok(()) => {}
                        Err(Error::Timeout(_)) if written > 0 => {
                            self.fail(CloseCause::SendTimedOutMidFrame);
                            return Err(Error::Timeout("sending a frame"));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let cause = CloseCause::Io(e.to_string());
                    self.fail(cause.clone());
                    return Err(Error::Closed(cause));
                }
            }
        }
        Ok(())
    }

    fn wait_writable(&self, deadline: Instant) -> Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: self.close_event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout("sending a frame"));
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `fds` is a live array of two initialised pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io(e, "poll"));
            }
            if fds[1].revents != 0 {
                self.check_open()?;
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
        }
    }

    // ------------------------------------------------------------ closing

    /// Marks the connection dead with `cause` (the first cause wins), wakes
    /// every waiter, and stops the reader. Idempotent.
    pub(crate) fn fail(&self, cause: CloseCause) {
        {
            let mut closed = self.closed.lock();
            if closed.is_some() {
                return;
            }
            *closed = Some(cause.clone());
        }
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to the eventfd we own.
        unsafe {
            libc::write(
                self.close_event.as_raw_fd(),
                &one as *const u64 as *const _,
                8,
            )
        };
        self.close_notify.notify_one();
        let subs: Vec<Arc<SubShared>> = self.routes.lock().drain().map(|(_, s)| s).collect();
        for s in subs {
            let mut st = s.state.lock();
            let wake = SubShared::close_locked(&mut st, &cause);
            let (waker, waiters) = SubShared::take_wakers(&mut st);
            drop(st);
            if wake || waiters {
                s.wake(waker, waiters);
            }
        }
    }

    // ------------------------------------------------------------ reading

    /// Runs until the connection dies; then every waiter has been woken.
    pub(crate) async fn read_loop(self: Arc<Self>, leftover: Vec<u8>) {
        let cause = match self.read_frames(leftover).await {
            Ok(()) => CloseCause::Eof,
            Err(c) => c,
        };
        self.fail(cause);
    }

    async fn read_frames(&self, leftover: Vec<u8>) -> std::result::Result<(), CloseCause> {
        // SAFETY: the descriptor is owned by `self.fd`, which outlives `afd`:
        // `afd` is local to this method, which borrows `self`, and nothing
        // closes or replaces `self.fd` before `Conn` is dropped.
        let afd = unsafe {
            AsyncFd::register_with_interest(RawFdRef(self.fd.as_raw_fd()), Interest::READABLE)
        }
        .map_err(|e| CloseCause::Io(e.to_string()))?;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut filled = leftover.len().min(READ_BUFFER);
        buf[..filled].copy_from_slice(&leftover[..filled]);
        let mut batch: Vec<Message> = Vec::new();
        loop {
            // Split every complete frame out of the buffer.
            let mut start = 0;
            let mut large: Option<(FrameHeader, Vec<u8>)> = None;
            loop {
                let header = match FrameHeader::parse(&buf[start..filled]) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        self.route(&mut batch);
                        return Err(CloseCause::Protocol(e));
                    }
                };
                let size = header.frame_size();
                if filled - start >= size {
                    let body = &buf[start + FRAME_HEAD_SIZE..start + size];
                    let raw = RawFrame {
                        id: header.id,
                        flags: header.flags,
                        body: Bytes::copy_from_slice(body),
                    };
                    match raw.decode() {
                        Ok(m) => batch.push(m),
                        Err(e) => {
                            self.route(&mut batch);
                            return Err(CloseCause::Protocol(e));
                        }
                    }
                    start += size;
                } else if size >= DIRECT_READ_THRESHOLD || size > READ_BUFFER {
                    let mut body = Vec::with_capacity(header.body_len());
                    body.extend_from_slice(&buf[start + FRAME_HEAD_SIZE..filled]);
                    start = filled;
                    large = Some((header, body));
                    break;
                } else {
                    break;
                }
            }
            self.route(&mut batch);
            buf.copy_within(start..filled, 0);
            filled -= start;

            if let Some((header, mut body)) = large {
                while body.len() < header.body_len() {
                    let want = header.body_len() - body.len();
                    body.reserve_exact(want);
                    let n = read_some(
                        &afd,
                        &self.close_notify,
                        &mut body.spare_capacity_mut()[..want],
                    )
                    .await?;
                    // SAFETY: `read_some` initialised the first `n` spare bytes.
                    unsafe { body.set_len(body.len() + n) };
                }
                let raw = RawFrame {
                    id: header.id,
                    flags: header.flags,
                    body: Bytes::from(body),
                };
                batch.push(raw.decode().map_err(CloseCause::Protocol)?);
                self.route(&mut batch);
                continue;
            }

            // Backpressure: stop reading while unread messages fill the budget.
            while self.queued.load(Ordering::Acquire) >= self.budget {
                tokio::select! {
                    _ = self.budget_freed.notified() => {}
                    _ = self.close_notify.notified() => return Err(self.close_cause().unwrap_or(CloseCause::ClosedByCaller)),
                }
            }
            let spare = &mut buf[filled..];
            // SAFETY: reinterpreting initialised bytes as MaybeUninit is sound.
            let spare =
                unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), spare.len()) };
            let n = read_some(&afd, &self.close_notify, spare).await?;
            filled += n;
        }
    }

    /// Delivers a batch of decoded frames to their subscribers, taking the
    /// routing lock once.
    fn route(&self, batch: &mut Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        let c = &self.counters;
        c.frames_received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut to_wake: Vec<(Arc<SubShared>, Option<std::task::Waker>, bool)> = Vec::new();
        {
            let mut routes = self.routes.lock();
            for m in batch.drain(..) {
                c.bytes_received
                    .fetch_add(m.payload.len() as u64, Ordering::Relaxed);
                if !m.message_type.is_known() {
                    c.unknown_type.fetch_add(1, Ordering::Relaxed);
                }
                if !self.range.contains(m.id) {
                    c.dropped_out_of_range.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(sub) = routes.get(&m.id) else {
                    c.dropped_no_subscriber.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let sub = sub.clone();
                let terminal = m.is_terminal();
                let cost = charge(&m);
                self.queued.fetch_add(cost, Ordering::AcqRel);
                let mut st = sub.state.lock();
                let wake = SubShared::push_locked(&mut st, m, cost);
                if terminal {
                    routes.remove(&sub.id);
                }
                if wake {
                    let (waker, waiters) = SubShared::take_wakers(&mut st);
                    drop(st);
                    to_wake.push((sub, waker, waiters));
                }
            }
        }
        for (sub, waker, waiters) in to_wake {
            sub.wake(waker, waiters);
        }
    }
}

/// The socket's descriptor, borrowed for the AsyncFd registration; the
/// `OwnedFd` in `Conn` outlives it because the reader holds the `Conn`.
struct RawFdRef(RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Reads at least one byte, waiting for readability; EOF and errors end the
/// connection.
async fn read_some(
    afd: &AsyncFd<RawFdRef>,
    close: &Notify,
    dst: &mut [std::mem::MaybeUninit<u8>],
) -> std::result::Result<usize, CloseCause> {
    loop {
        let mut guard = tokio::select! {
            g = afd.readable() => g.map_err(|e| CloseCause::Io(e.to_string()))?,
            _ = close.notified() => return Err(CloseCause::ClosedByCaller),
        };
        match guard.try_io(|fd| {
            // SAFETY: `dst` is a live, writable buffer of `dst.len()` bytes.
            let n = unsafe { libc::read(fd.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(0)) => return Err(CloseCause::Eof),
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(CloseCause::Io(e.to_string())),
            Err(_would_block) => {}
        }
    }
}

/// One `sendmsg` of the iovecs, skipping the first `skip` bytes.
fn write_vectored_at(fd: RawFd, parts: &[&[u8]], mut skip: usize) -> io::Result<usize> {
    let mut iov: [libc::iovec; 8] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let mut n = 0;
    for p in parts {
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
    // duration of the call; MSG_NOSIGNAL turns a dead peer into EPIPE instead
    // of a SIGPIPE that would kill the host program.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_wrap_inside_the_range_and_never_hit_its_edges() {
        for slot in [0u32, 1, 15] {
            let r = IdRange {
                offset: slot * ID_RANGE_STEP,
            };
            let first = r.nth(0);
            assert_eq!(first, r.offset + 1);
            let last = r.nth(ID_RANGE_STEP - 2);
            assert_eq!(last, r.offset + ID_RANGE_STEP - 1);
            assert!(r.contains(first) && r.contains(last));
            assert_eq!(r.nth(ID_RANGE_STEP - 1), first, "wraps to the start");
            assert!(!r.contains(r.offset) && !r.contains(r.offset + ID_RANGE_STEP));
            for n in [u32::MAX, u32::MAX - 1, 12345] {
                assert!(r.contains(r.nth(n)));
            }
        }
    }
}
