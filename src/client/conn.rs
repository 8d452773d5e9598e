//! One connection to a relay: the socket, the writer, the routing table,
//! the memory budget, and who reads when.
//!
//! Writes happen on the caller's thread (no hop through a channel): a frame
//! is encoded into a small head buffer and sent with one write, under a lock
//! that keeps frames whole. A small payload is copied behind the head; a
//! large one goes out by reference in the same (vectored) write. A send that
//! finds the socket full blocks in the kernel, bounded by its deadline.
//!
//! Reads (see `reader`) happen on whichever thread holds the read state: a
//! caller blocked in a pull, or the background task while something waits
//! passively. Every complete frame of a read is routed under one
//! acquisition of the routing lock, and a subscriber is woken only when its
//! queue turns non-empty.
//!
//! Memory: every queued message is charged to a per-connection budget. When
//! the budget is spent, the reader stops reading the socket until consumers
//! drain; the kernel buffers fill and the relay, then the guest, is held back.
//! The trade-off: one subscriber that never pulls pauses every subscriber of
//! the connection. That is deliberate: the alternatives are unbounded memory
//! or silently dropping data that arrived correctly.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use super::error::{CloseCause, Error, Result};
use super::ids::IdAllocator;
use super::peer::Peer;
use super::pool::FramePool;
use super::reader::ReadState;
use super::subscription::{charge, Accept, SubShared, Subscription};
use super::sync::{CacheAligned, Mutex, TimedLock, WakeGroup};
use crate::protocol::{encode_frame_head, encoded_len, Message, MessageType, MAX_FRAME_SIZE};

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

enum SocketWait {
    Ready,
    TimedOut,
    Closed,
    Recheck,
}

fn new_eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions; checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(Error::io(io::Error::last_os_error(), "eventfd"));
    }
    // SAFETY: `efd` is a fresh descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) })
}

/// Live subscriptions by correlation id.
type Routes = HashMap<u32, Arc<SubShared>, BuildHasherDefault<IdHasher>>;

/// Hashes correlation ids for `Routes`. The ids in the table are ours: we
/// allocate them (mostly consecutively) and nothing from the guest is ever
/// inserted, so a keyed hash would protect nothing, and it cost more than the
/// rest of the lookup. One multiplication spreads consecutive ids over both
/// the bucket index (low bits) and the tag (high bits).
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    /// 2^64 divided by the golden ratio: odd, with well-mixed high bits.
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u32` keys are hashed here; this keeps the trait complete.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(Self::MULTIPLIER);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(Self::MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) struct Conn {
    fd: OwnedFd,
    /// Readable when the connection is closed; writers blocked on a full
    /// socket poll it too, so closing wakes them.
    close_event: OwnedFd,
    /// Readable when a reading caller must re-check whether to stop (its
    /// subscription was released under it); polled only by that caller.
    leader_wake: OwnedFd,
    writer: CacheAligned<TimedLock>,
    routes: CacheAligned<Mutex<Routes>>,
    closed: Mutex<Option<CloseCause>>,
    /// Mirrors `closed.is_some()`, so the checks on every call take no lock.
    is_closed: AtomicBool,
    pub(crate) close_notify: Notify,
    /// The socket's read side; see `reader` for who holds it when.
    pub(crate) read_state: CacheAligned<parking_lot::Mutex<ReadState>>,
    /// The background task found the read state taken and waits for `handoff`.
    pub(crate) task_waiting: AtomicBool,
    pub(crate) handoff: Notify,
    /// The connection's correlation ids (see `ids`).
    pub(crate) ids: IdAllocator,
    /// What the handshake said; gives the `v` every frame is stamped with.
    pub(crate) peer: Arc<Peer>,
    budget: usize,
    queued: CacheAligned<AtomicUsize>,
    pub(crate) budget_freed: Notify,
    counters: AtomicCounters,
    /// Callers blocked in a pull that could not take the read lock; one of
    /// them is asked to lead when the current reader lets go.
    followers: CacheAligned<Mutex<VecDeque<Arc<SubShared>>>>,
    /// Where those callers sleep.
    pub(crate) blocked: CacheAligned<WakeGroup>,
    /// Subscriptions that wait without pulling (readiness fd, async waker):
    /// while any exist, the background task reads for them.
    passive: AtomicUsize,
    pub(crate) passive_changed: Notify,
    /// Large frame buffers, reused once the caller frees them.
    pub(crate) frame_buffers: FramePool,
    /// The thread that runs the private runtime; started the first time a
    /// subscription waits passively, so idle clients cost no thread.
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Conn {
    pub(crate) fn new(
        fd: OwnedFd,
        ids: IdAllocator,
        peer: Arc<Peer>,
        budget: usize,
    ) -> Result<Arc<Conn>> {
        let close_event = new_eventfd()?;
        let leader_wake = new_eventfd()?;
        Ok(Arc::new(Conn {
            fd,
            close_event,
            leader_wake,
            writer: CacheAligned::default(),
            routes: CacheAligned::default(),
            closed: Mutex::new(None),
            is_closed: AtomicBool::new(false),
            close_notify: Notify::new(),
            read_state: CacheAligned(parking_lot::Mutex::new(ReadState::new())),
            task_waiting: AtomicBool::new(false),
            handoff: Notify::new(),
            ids,
            peer,
            budget,
            queued: CacheAligned::default(),
            budget_freed: Notify::new(),
            counters: AtomicCounters::default(),
            followers: CacheAligned::default(),
            blocked: CacheAligned::default(),
            passive: AtomicUsize::new(0),
            passive_changed: Notify::new(),
            frame_buffers: FramePool::default(),
            background: Mutex::new(None),
        }))
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn budget_available(&self) -> bool {
        self.queued.load(Ordering::Acquire) < self.budget
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
        if !self.is_closed.load(Ordering::Acquire) {
            return None;
        }
        self.closed.lock().clone()
    }

    /// Checked several times per request: the open case is one load, inline.
    #[inline]
    fn check_open(&self) -> Result<()> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    #[cold]
    fn closed_error(&self) -> Error {
        Error::Closed(self.close_cause().unwrap_or(CloseCause::ClosedByCaller))
    }

    // ------------------------------------------------------------ ids

    /// An id of our range that has no live subscription right now, for a
    /// caller that subscribes to it later.
    pub(crate) fn alloc_id(&self) -> Result<u32> {
        let routes = self.routes.lock();
        self.ids.hand_out(|id| routes.contains_key(&id))
    }

    /// Subscribes to `id`, which must be in our range, not subscribed, and
    /// (on current relays) never used before on this connection.
    pub(crate) fn subscribe(self: &Arc<Self>, id: u32) -> Result<Subscription> {
        self.check_open()?;
        let mut routes = self.routes.lock();
        if routes.contains_key(&id) {
            return Err(Error::IdUnavailable(id));
        }
        self.ids.claim(id)?;
        Ok(self.insert_route(&mut routes, id, None))
    }

    /// Checks the id of an outgoing frame (see `IdAllocator::check_send`).
    pub(crate) fn check_send_id(&self, message_type: &MessageType, id: u32) -> Result<()> {
        self.ids.check_send(message_type, id)
    }

    /// Allocates a fresh id and subscribes to it in one step.
    /// Allocates a fresh id and subscribes to it in one step; with `accept`,
    /// only messages it accepts are queued.
    pub(crate) fn subscribe_new(self: &Arc<Self>, accept: Option<Accept>) -> Result<Subscription> {
        self.check_open()?;
        let mut routes = self.routes.lock();
        let id = self.ids.next_id(|id| routes.contains_key(&id))?;
        Ok(self.insert_route(&mut routes, id, accept))
    }

    fn insert_route(
        self: &Arc<Self>,
        routes: &mut Routes,
        id: u32,
        accept: Option<Accept>,
    ) -> Subscription {
        let shared = SubShared::new(id, accept);
        // A close that raced with us must still reach this subscription. It
        // drained the routes before we took the lock, so this one must not
        // stay in them: a closed subscription has no route (its drop relies
        // on that).
        if let Some(cause) = self.close_cause() {
            SubShared::close_locked(&mut shared.state.lock(), &cause);
        } else {
            routes.insert(id, shared.clone());
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
            self.promote_follower();
        }
    }

    // ------------------------------------------------------------ who reads

    pub(crate) fn add_follower(&self, sub: &Arc<SubShared>) {
        self.followers.lock().push_back(sub.clone());
    }

    pub(crate) fn remove_follower(&self, sub: &Arc<SubShared>) {
        let mut f = self.followers.lock();
        if let Some(i) = f.iter().position(|s| Arc::ptr_eq(s, sub)) {
            f.remove(i);
        }
    }

    /// Asks one waiting caller to take over reading. Call after releasing
    /// the read lock (or freeing budget), without holding any other lock.
    pub(crate) fn promote_follower(&self) {
        self.blocked.wake(self.pick_next_reader());
    }

    /// [`promote_follower`](Self::promote_follower) without the wake:
    /// returns the bits to wake the chosen caller with (0: nobody waits), so
    /// that the reader can wake it together with the callers it served.
    pub(crate) fn pick_next_reader(&self) -> u32 {
        // A follower whose message is already queued has been woken by the
        // routing and will return; asking it to lead would cost a wake-up
        // only for it to pass the request on. Skip to one still waiting.
        loop {
            let next = self.followers.lock().pop_front();
            match next {
                Some(sub) => {
                    let bits = sub.promote();
                    if bits != 0 {
                        return bits;
                    }
                }
                None => return 0,
            }
        }
    }

    pub(crate) fn passive_count(&self) -> usize {
        self.passive.load(Ordering::SeqCst)
    }

    pub(crate) fn add_passive(self: &Arc<Self>) {
        if self.passive.fetch_add(1, Ordering::SeqCst) == 0 {
            self.passive_changed.notify_one();
        }
        self.ensure_background();
    }

    /// Starts the background thread with its private single-threaded
    /// runtime, once. Failing to start it fails the connection: passive
    /// waiters would otherwise wait forever.
    fn ensure_background(self: &Arc<Self>) {
        let mut slot = self.background.lock();
        if slot.is_some() {
            return;
        }
        let conn = self.clone();
        let started = std::thread::Builder::new()
            .name("msb-client".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt.block_on(super::reader::run_task(conn)),
                    Err(e) => conn.fail(CloseCause::Io(format!("starting the runtime: {e}"))),
                }
            });
        match started {
            Ok(handle) => *slot = Some(handle),
            Err(e) => {
                drop(slot);
                self.fail(CloseCause::Io(format!("starting the client thread: {e}")));
            }
        }
    }

    /// Waits for the background thread (if one was started) to finish; call
    /// after `fail`. Never called from that thread: it runs no caller code.
    pub(crate) fn join_background(&self) {
        let handle = self.background.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    pub(crate) fn remove_passive(&self) {
        if self.passive.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.passive_changed.notify_one();
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
        // The one place a frame's `v` is chosen: one value per connection.
        let version = self.peer.stamped_generation();
        let len = encoded_len(message_type, version, payload_len);
        if len > MAX_FRAME_SIZE as usize {
            return Err(Error::TooLarge(len + 4));
        }
        FRAME_HEAD.with_borrow_mut(|head| {
            head.clear();
            encode_frame_head(head, message_type, id, flags, version, payload_len);
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
        self.check_open()?;
        let Some(_guard) = self.writer.lock_until(deadline) else {
            return Err(Error::Timeout("waiting for another sender"));
        };
        self.check_open()?;
        let mut written = 0;
        // First try without blocking: small frames always fit. Once the
        // socket is full, block in the kernel (bounded by SO_SNDTIMEO) rather
        // than poll and retry: the kernel then refills the socket as soon as
        // the relay drains any of it, which keeps large transfers streaming.
        let mut blocking = false;
        while written < total {
            let mut flags = libc::MSG_NOSIGNAL;
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
                    self.check_open()?;
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

    /// Waits until the socket has `events` (or an error or hang-up), the
    /// connection is closed, the leader is asked to re-check (readers only),
    /// or the deadline (if any) passes.
    fn wait_socket(&self, events: libc::c_short, deadline: Option<Instant>) -> SocketWait {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.close_event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.leader_wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Writers must not consume a reader's wake-up.
        let nfds = if events & libc::POLLIN != 0 { 3 } else { 2 };
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return SocketWait::TimedOut;
                    }
                    // Round up so a sub-millisecond remainder still waits.
                    (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
                }
            };
            // SAFETY: `fds` is a live array of at least `nfds` initialised pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
            if r < 0 {
                // EINTR: retry; anything else cannot happen with valid fds,
                // so retrying is the safe choice either way.
                continue;
            }
            if fds[1].revents != 0 {
                return SocketWait::Closed;
            }
            if nfds == 3 && fds[2].revents != 0 {
                let mut sink: u64 = 0;
                // SAFETY: reading 8 bytes into a live u64 from our non-blocking eventfd.
                unsafe {
                    libc::read(
                        self.leader_wake.as_raw_fd(),
                        &mut sink as *mut u64 as *mut _,
                        8,
                    )
                };
                return SocketWait::Recheck;
            }
            if fds[0].revents != 0 {
                return SocketWait::Ready;
            }
        }
    }

    /// Makes a reading caller re-check its stop condition.
    pub(crate) fn wake_leader(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to the eventfd we own.
        unsafe {
            libc::write(
                self.leader_wake.as_raw_fd(),
                &one as *const u64 as *const _,
                8,
            )
        };
    }

    /// For a leading reader: waits until the socket is readable. False if
    /// the deadline passed or the connection closed.
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> bool {
        matches!(
            self.wait_socket(libc::POLLIN, deadline),
            SocketWait::Ready | SocketWait::Recheck
        )
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
            self.is_closed.store(true, Ordering::Release);
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
        // Shut the socket down rather than wait for the descriptor to be
        // closed: the relay sees the end now even if a caller still holds a
        // duplicate (connect_fd), and a read or send blocked on it returns.
        // SAFETY: shutdown on a descriptor we own; errors (already shut
        // down, peer gone) leave nothing to undo.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.close_notify.notify_one();
        let subs: Vec<Arc<SubShared>> = self.routes.lock().drain().map(|(_, s)| s).collect();
        let mut bits = 0;
        for s in subs {
            let mut st = s.state.lock();
            SubShared::close_locked(&mut st, &cause);
            let (waker, sub_bits) = SubShared::take_wakers(&mut st);
            drop(st);
            bits |= sub_bits;
            self.wake(waker, 0);
        }
        self.blocked.wake(bits);
    }

    /// Wakes an async task and the blocked pullers with `bits`, as taken
    /// by `SubShared::take_wakers`; call without holding any lock.
    pub(crate) fn wake(&self, waker: Option<std::task::Waker>, bits: u32) {
        self.blocked.wake(bits);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Delivers a batch of decoded frames to their subscribers, taking the
    /// routing lock once, and wakes the async tasks among them. Returns the
    /// bits of the blocked pullers it delivered to, for the reader to wake
    /// (`reader` wakes them before it reads again or lets go). `wakers` is
    /// scratch space the reader keeps, so routing allocates nothing; it is
    /// left empty.
    #[must_use]
    pub(crate) fn route(
        &self,
        batch: &mut Vec<Message>,
        wakers: &mut Vec<std::task::Waker>,
    ) -> u32 {
        if batch.is_empty() {
            return 0;
        }
        let c = &self.counters;
        c.frames_received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Added up once per batch: one atomic operation, not one per frame.
        let mut bytes = 0;
        let mut bits = 0;
        {
            let mut routes = self.routes.lock();
            for m in batch.drain(..) {
                bytes += m.payload.len() as u64;
                if !m.message_type.is_known() {
                    c.unknown_type.fetch_add(1, Ordering::Relaxed);
                }
                if !self.ids.range().contains(m.id) {
                    c.dropped_out_of_range.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let terminal = m.is_terminal();
                // A terminal frame ends the route: take it out of the table
                // now. Otherwise borrow it; cloning the `Arc` would touch a
                // cache line that the subscription's owner is using.
                let removed;
                let sub = if terminal {
                    removed = routes.remove(&m.id);
                    removed.as_ref()
                } else {
                    routes.get(&m.id)
                };
                let Some(sub) = sub else {
                    c.dropped_no_subscriber.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut st = sub.state.lock();
                let wake = if sub.accept.is_none_or(|accept| accept(&m)) {
                    let cost = charge(&m);
                    self.queued.fetch_add(cost, Ordering::AcqRel);
                    SubShared::push_locked(&mut st, m, cost)
                } else {
                    terminal && SubShared::end_locked(&mut st)
                };
                if wake {
                    let (waker, sub_bits) = SubShared::take_wakers(&mut st);
                    bits |= sub_bits;
                    wakers.extend(waker);
                }
            }
        }
        c.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        for w in wakers.drain(..) {
            w.wake();
        }
        bits
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

/// Sets SO_SNDTIMEO or SO_RCVTIMEO: how long a send or read without
/// MSG_DONTWAIT may block on the socket.
pub(crate) fn set_socket_timeout(
    fd: RawFd,
    option: libc::c_int,
    timeout: std::time::Duration,
) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            &tv as *const libc::timeval as *const _,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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
