//! Reading the socket, routing frames to streams, and waking whoever waits:
//! all of it owned by one type, [`Reader`]. Nothing outside this file
//! touches its fields; the connection and the subscription handles call its
//! methods.
//!
//! # Who reads
//!
//! The socket is read for as long as the connection is open, whatever the
//! caller does: a relay of the 0.7 line drops a client whose socket makes no
//! progress for 5 s (and kills its processes), and a 0.6 relay stalls every
//! client behind one that does not read. Two kinds of thread take turns at
//! the one read state:
//!
//! - a caller blocked in a pull, when nobody else is reading ("leader"):
//!   it reads and routes frames on its own thread until its own message has
//!   arrived, so a request/response costs no thread hop. Callers that find
//!   the read state taken wait as followers; the leader routes their
//!   messages to them and, when it lets go, asks one of them to lead next
//!   (one system call wakes the served followers and the next leader,
//!   `sync::WakeGroup`);
//! - the connection's background thread, started by its first send or passive wait (see
//!   `conn`). It reads at once while some stream is waited on passively (a readiness fd,
//!   an async waker). Otherwise it stays out of the callers' way: it watches
//!   the socket only once no caller has led for [`TAKEOVER_GRACE`], so a
//!   thread doing round trips never competes with it, and a caller that
//!   stops pulling still has its socket read within that grace.
//!
//! How a leader waits: replies usually come within microseconds, so it first
//! waits inside the read itself (a blocking `recv` bounded by a short
//! receive timeout), one system call; only when nothing came does it fall
//! back to `poll`, which also watches the close and re-check events.
//!
//! # Memory
//!
//! The bound is stated once, in the README ("Memory, and what a hostile
//! guest can do"); this is how it is kept. Every queued message is charged
//! the memory it holds: the capacity of its buffer (a large frame's own
//! buffer may be larger than the frame) plus [`PER_MESSAGE_OVERHEAD`]. With
//! [`Backpressure::FailStream`] (the default) a full budget first pauses
//! the socket for at most [`OVERFLOW_GRACE`]: a caller that pulls, only
//! slower than the guest produces (file reads and exec output before
//! generation 10 have no flow control), frees memory within it, and reading
//! resumes at once. Only once the budget has stayed full for the whole grace
//! does reading resume with overflow enforced: a message that would take the
//! connection past its budget (beyond [`PULLED_STREAM_SLACK`] for a stream a
//! thread is blocked pulling, which one read may fill) fails a stream with
//! [`CloseCause::StreamOverflow`] instead of being queued: the stream of
//! that message if it holds the most, else the stream that holds the most,
//! whose unread messages are then released to make room. A read started
//! while the budget had room queues all it brings, so unread messages may
//! pass the budget by one read, as with [`Backpressure::PauseSocket`]. A failed stream
//! still delivers what it had queued (unless released), then the error; an
//! exec is killed (signal 9) and its later frames are dropped and counted.
//! With [`Backpressure::PauseSocket`] the reader instead stops reading while
//! the budget is spent (see its documentation for the cost).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::error::{CloseCause, Error, Result};
use super::flow::{self, ExecFlow, ExecLimits, StdinBlocked};
use super::ids::IdAllocator;
use super::platform::Event;
use super::pool::FramePool;
use super::sync::{thread_wake_bit, CacheAligned, Mutex, MutexGuard, WakeGroup};
use crate::protocol::{
    decode_borrowed, FrameHeader, Message, MessageType, ProtocolError, RawFrame, FRAME_HEAD_SIZE,
};

/// Size of the read buffer: large enough to take many small frames, or
/// most of a 64 KiB frame, in one read.
pub(crate) const READ_BUFFER: usize = 256 * 1024;

/// Frames at least this large that are only partly in the read buffer are
/// completed in a buffer of their own, read straight from the socket, so
/// large payloads are copied at most once (from the part already buffered).
/// Smaller frames are read many to a system call and copied out of the
/// shared buffer: below this size the copy costs less than the extra reads
/// (and acknowledgements) of one read per frame. Streaming 1 GiB of
/// flow-controlled exec output (frames of up to 16 KiB, as a 0.7 agent
/// sends), an 8 KiB threshold took 71 000 reads and as many
/// acknowledgements, this one 9 800 of each, and the throughput rose by a
/// fifth (`scripts/bench.sh --bench stream`).
const DIRECT_READ_THRESHOLD: usize = 64 * 1024;

/// Bytes read into the shared buffer along with the rest of a large frame,
/// and at a time while large frames keep coming (see `large_frames`).
const LARGE_FRAME_TAIL: usize = 4096;

/// How long a leader waits inside a blocking read before it falls back to
/// `poll` (the kernel rounds it up to its timer tick, a few ms at most).
const SHORT_READ_WAIT: Duration = Duration::from_millis(2);

/// Deadlines closer than this are waited for in `poll` only: the short read
/// wait, rounded up by the kernel, could overshoot them noticeably.
const SHORT_READ_MIN_LEFT: Duration = Duration::from_millis(20);

/// How long the read state must sit unused by callers before the background
/// thread watches the socket when nothing waits passively. Short against the
/// relay's 5 s stall limit; long against a round trip, so that a thread
/// doing round trips never wakes it more than once per grace.
pub(crate) const TAKEOVER_GRACE: Duration = Duration::from_millis(20);

/// How far a stream that a thread is blocked pulling may take the connection
/// past its budget: what one read can bring (the read buffer, or one frame).
const PULLED_STREAM_SLACK: usize = READ_BUFFER + crate::protocol::MAX_FRAME_SIZE as usize;

/// Bytes charged for one queued message beyond its buffer: the queue slot
/// and allocation overhead, so that a flood of tiny frames is bounded too.
pub(crate) const PER_MESSAGE_OVERHEAD: usize = 64;

/// How long a full budget pauses the socket before streams fail (with
/// [`Backpressure::FailStream`]): well under the 5 s after which a 0.7
/// relay drops a client that makes no read progress, short enough that a
/// 0.6 relay's other clients stall only briefly, and long against the gap
/// between two pulls of a caller that is reading.
pub const OVERFLOW_GRACE: Duration = Duration::from_secs(1);

/// What to do when unread messages fill the connection's memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Stop reading the socket for at most [`OVERFLOW_GRACE`], resuming as
    /// soon as the caller pulls; if the budget is still full then, keep
    /// reading and fail the stream that holds the most unread data with
    /// `StreamOverflow` (see the module documentation). The connection lives.
    #[default]
    FailStream,
    /// Stop reading the socket until the caller pulls. Nothing is ever
    /// failed or dropped, but one unread stream pauses every stream of the
    /// connection, and the relay sees a client that does not read: a 0.7
    /// relay disconnects it after 5 s (killing its processes), a 0.6 relay
    /// stalls every client of the sandbox meanwhile.
    PauseSocket,
}

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
    /// Memory held by unread messages right now (see the module docs).
    pub bytes_queued: u64,
    /// Messages not queued, or released, because their stream had failed
    /// with `StreamOverflow`.
    pub dropped_overflow: u64,
}

#[derive(Default)]
struct AtomicCounters {
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_no_subscriber: AtomicU64,
    dropped_out_of_range: AtomicU64,
    unknown_type: AtomicU64,
    dropped_overflow: AtomicU64,
}

/// What the reader asks the connection to send; implemented by `Conn`, so
/// that this file needs nothing of the writer.
pub(crate) trait Outbox {
    /// Kills the exec on `id` (its output overflowed).
    fn kill_exec(&self, id: u32);
    /// Acknowledges `consumed` (cumulative) of the exec on `id`'s output.
    fn ack_output(&self, id: u32, consumed: u64);
}

// ---------------------------------------------------------------- streams

/// Which messages a stream wants queued; the rest are dropped as they
/// arrive. Typed conversations (exec, fs) filter out what they would skip
/// anyway, so that a queued message always means a pull yields something,
/// which is what their readiness fds promise.
pub(crate) type Accept = fn(&Message) -> bool;

/// A FIFO of messages that holds its first message inline: most streams (a
/// request's) only ever get one, and allocating a queue buffer for it on
/// the reading thread, to be freed on the pulling one, was the largest
/// allocation cost of a round trip. Each message carries its charge.
#[derive(Default)]
struct MessageQueue {
    head: Option<(Message, usize)>,
    rest: VecDeque<(Message, usize)>,
}

impl MessageQueue {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.rest.is_empty()
    }

    fn push_back(&mut self, m: (Message, usize)) {
        if self.head.is_none() && self.rest.is_empty() {
            self.head = Some(m);
        } else {
            self.rest.push_back(m);
        }
    }

    fn pop_front(&mut self) -> Option<(Message, usize)> {
        self.head.take().or_else(|| self.rest.pop_front())
    }

    fn pop_back(&mut self) -> Option<(Message, usize)> {
        self.rest.pop_back().or_else(|| self.head.take())
    }

    fn clear(&mut self) -> usize {
        let n = usize::from(self.head.is_some()) + self.rest.len();
        self.head = None;
        self.rest.clear();
        n
    }
}

/// Result of one pull.
#[derive(Debug)]
pub enum Pulled<T> {
    /// The next item.
    Item(T),
    /// Nothing arrived within the timeout; nothing was consumed.
    Nothing,
    /// The stream ended normally (its terminal frame was delivered).
    Ended,
}

#[derive(Default)]
struct StreamState {
    queue: MessageQueue,
    /// Memory of `queue` charged to the connection's budget.
    held: usize,
    /// The terminal frame is in (or went through) the queue.
    terminal: bool,
    /// Why no more messages come: the connection closed, the handle was
    /// cancelled, or the stream overflowed. Queued messages come first.
    closed: Option<CloseCause>,
    /// The stream failed with `StreamOverflow`; its route stays so that
    /// later frames are counted as dropped for that reason.
    overflowed: bool,
    /// In the routing table.
    routed: bool,
    waker: Option<Waker>,
    ready: Option<Event>,
    ready_signalled: bool,
    /// Threads blocked in a pull.
    waiters: usize,
    /// Their bits in the reader's `WakeGroup` (or-ed; cleared when the last
    /// one leaves).
    wait_bits: u32,
    /// A waiter was asked to take over reading the socket.
    promoted: bool,
    /// A thread pulling this stream is reading the socket for it.
    leading: bool,
    /// Counted in the reader's passive waiters (readiness fd or async).
    passive: bool,
    /// Generation-10 flow control of an exec, from its `core.exec.started`
    /// on (only on connections that negotiated it).
    flow: Option<ExecFlow>,
}

impl StreamState {
    fn readable(&self) -> bool {
        !self.queue.is_empty() || self.terminal || self.closed.is_some()
    }

    /// Keeps the readiness fd readable exactly while a pull would not say
    /// "nothing yet".
    fn sync_ready(&mut self) {
        let Some(ev) = &self.ready else { return };
        let want = self.readable();
        if want == self.ready_signalled {
            return;
        }
        if want {
            ev.signal();
        } else {
            ev.clear();
        }
        self.ready_signalled = want;
    }

    /// Whom to wake: the async task's waker, and the blocked pullers' bits.
    fn take_wakers(&mut self) -> (Option<Waker>, u32) {
        (self.waker.take(), self.wait_bits)
    }

    fn close(&mut self, cause: &CloseCause) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let was_readable = self.readable();
        self.closed = Some(cause.clone());
        self.sync_ready();
        !was_readable
    }
}

/// One correlation id's stream: shared between the reader, which pushes,
/// and the subscription handle, which pulls.
pub(crate) struct Stream {
    id: u32,
    accept: Option<Accept>,
    state: Mutex<StreamState>,
    /// The last output total acknowledged, held while one is sent: totals
    /// are computed under `state` but sent after it is let go, and two
    /// threads pulling one exec must not send them out of order (a relay
    /// disconnects a client whose acknowledgement goes backwards).
    acked: Mutex<u64>,
}

impl Stream {
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

/// Live streams by correlation id.
type Routes = HashMap<u32, Arc<Stream>, BuildHasherDefault<IdHasher>>;

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

// ---------------------------------------------------------------- reader

/// How one read may wait for data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadWait {
    /// Return at once if nothing is there.
    No,
    /// Block up to `SHORT_READ_WAIT`.
    Short,
}

/// What one read did.
enum Step {
    /// Bytes were read and every complete frame among them was routed.
    Progress,
    /// Nothing to read right now.
    WouldBlock,
}

/// What a wait in `poll` ended with.
enum Woken {
    Socket,
    Closed,
    /// The event the waiter watches was signalled (or the time ran out).
    Recheck,
}

/// The socket's read side: the buffer and the frame being completed.
struct ReadState {
    buf: Box<[u8]>,
    filled: usize,
    /// A large frame being completed in its own buffer.
    large: Option<(FrameHeader, Vec<u8>)>,
    /// Decoded frames of one read, with the memory each holds.
    batch: Vec<(Message, usize)>,
    wakers: Vec<Waker>,
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

pub(crate) struct Reader {
    /// The socket; owned by the connection, which owns this reader.
    fd: RawFd,
    /// The connection's correlation ids (see `ids`).
    ids: IdAllocator,
    state: CacheAligned<parking_lot::Mutex<ReadState>>,
    routes: CacheAligned<Mutex<Routes>>,
    closed: Mutex<Option<CloseCause>>,
    /// Mirrors `closed.is_some()`, so the checks on every call take no lock.
    is_closed: AtomicBool,
    /// Signalled once, when the connection closes; every poll watches it.
    close_event: Event,
    /// Makes a leading caller re-check whether to stop (its stream was
    /// cancelled under it).
    leader_wake: Event,
    /// Makes the background thread look again (passive waiters came, budget
    /// was freed, a leader let go while it waited).
    background_wake: Event,
    /// The background thread found the read state taken by a leader and
    /// waits to be told when it is free.
    background_waiting: AtomicBool,
    /// Moves every time a caller lets go of the read state (on a line of
    /// its own: every leader writes it).
    activity: CacheAligned<AtomicU32>,
    budget: usize,
    backpressure: Backpressure,
    held: CacheAligned<AtomicUsize>,
    /// When the budget was first found full (nanoseconds since `created`,
    /// plus one; 0: it was not), for the overflow grace.
    full_since: AtomicU64,
    created: Instant,
    counters: AtomicCounters,
    /// Callers blocked in a pull that could not take the read lock; one of
    /// them is asked to lead when the current reader lets go.
    followers: CacheAligned<Mutex<VecDeque<Arc<Stream>>>>,
    /// Where those callers sleep.
    blocked: CacheAligned<WakeGroup>,
    /// Streams waited on without a pulling thread.
    passive: AtomicUsize,
    /// Execs whose output overflowed, to be killed by whoever read.
    kills: Mutex<Vec<u32>>,
    /// The relay's exec limits when exec flow control is on.
    exec_limits: Option<ExecLimits>,
    /// Moves whenever stdin may have become sendable (an exec started, a
    /// stdin acknowledgement, a stream or the connection ended); stdin
    /// writers that cannot read themselves wait on it.
    stdin_progress: std::sync::Mutex<u64>,
    stdin_progressed: std::sync::Condvar,
    /// Large frame buffers, reused once the caller frees them.
    frame_buffers: FramePool,
    #[cfg(any(test, feature = "test-hooks"))]
    inject_panic: AtomicBool,
}

impl Reader {
    pub(crate) fn new(
        fd: RawFd,
        ids: IdAllocator,
        budget: usize,
        backpressure: Backpressure,
        exec_limits: Option<ExecLimits>,
    ) -> io::Result<Reader> {
        Ok(Reader {
            fd,
            ids,
            state: CacheAligned(parking_lot::Mutex::new(ReadState {
                // Allocated by the first read: idle clients should cost little.
                buf: Box::default(),
                filled: 0,
                large: None,
                batch: Vec::new(),
                wakers: Vec::new(),
                served: 0,
                receive_timeout_set: false,
                large_frames: false,
            })),
            routes: CacheAligned::default(),
            closed: Mutex::new(None),
            is_closed: AtomicBool::new(false),
            close_event: Event::new()?,
            leader_wake: Event::new()?,
            background_wake: Event::new()?,
            background_waiting: AtomicBool::new(false),
            activity: CacheAligned(AtomicU32::new(0)),
            budget,
            backpressure,
            held: CacheAligned::default(),
            full_since: AtomicU64::new(0),
            created: Instant::now(),
            counters: AtomicCounters::default(),
            followers: CacheAligned::default(),
            blocked: CacheAligned::default(),
            passive: AtomicUsize::new(0),
            kills: Mutex::new(Vec::new()),
            exec_limits: exec_limits.map(ExecLimits::sanitized),
            stdin_progress: std::sync::Mutex::new(0),
            stdin_progressed: std::sync::Condvar::new(),
            frame_buffers: FramePool::default(),
            #[cfg(any(test, feature = "test-hooks"))]
            inject_panic: AtomicBool::new(false),
        })
    }

    pub(crate) fn ids(&self) -> &IdAllocator {
        &self.ids
    }

    pub(crate) fn counters(&self) -> Counters {
        let c = &self.counters;
        Counters {
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            dropped_no_subscriber: c.dropped_no_subscriber.load(Ordering::Relaxed),
            dropped_out_of_range: c.dropped_out_of_range.load(Ordering::Relaxed),
            unknown_type: c.unknown_type.load(Ordering::Relaxed),
            bytes_queued: self.held.load(Ordering::Relaxed) as u64,
            dropped_overflow: c.dropped_overflow.load(Ordering::Relaxed),
        }
    }

    // ------------------------------------------------------------ closing

    pub(crate) fn close_cause(&self) -> Option<CloseCause> {
        if !self.is_closed.load(Ordering::Acquire) {
            return None;
        }
        self.closed.lock().clone()
    }

    /// Checked several times per request: the open case is one load, inline.
    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    #[cold]
    fn closed_error(&self) -> Error {
        Error::Closed(self.close_cause().unwrap_or(CloseCause::ClosedByCaller))
    }

    /// Marks the connection dead with `cause` (the first cause wins), shuts
    /// the socket down, and wakes every waiter: blocked pulls, async tasks,
    /// readiness fds, writers, the background thread. Idempotent.
    pub(crate) fn fail(&self, cause: CloseCause) {
        {
            let mut closed = self.closed.lock();
            if closed.is_some() {
                return;
            }
            *closed = Some(cause.clone());
            self.is_closed.store(true, Ordering::Release);
        }
        self.close_event.signal();
        // Shut the socket down rather than wait for the descriptor to be
        // closed: the relay sees the end now even if a caller still holds a
        // duplicate (connect_fd), and a read or send blocked on it returns.
        // SAFETY: shutdown on the connection's socket, which outlives us;
        // errors (already shut down, peer gone) leave nothing to undo.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        let streams: Vec<Arc<Stream>> = self.routes.lock().drain().map(|(_, s)| s).collect();
        let mut bits = 0;
        for s in streams {
            let mut st = s.state.lock();
            st.routed = false;
            st.close(&cause);
            let (waker, sub_bits) = st.take_wakers();
            drop(st);
            bits |= sub_bits;
            if let Some(w) = waker {
                w.wake();
            }
        }
        // Waiters of streams no longer routed (finished, overflowed) share
        // the word; a spurious wake only makes them re-check.
        self.blocked.wake(bits | u32::MAX);
        self.stdin_progress();
    }

    // ------------------------------------------------------------ streams

    /// An id of our range that has no live stream right now, for a caller
    /// that opens it later.
    pub(crate) fn alloc_id(&self) -> Result<u32> {
        let routes = self.routes.lock();
        self.ids.hand_out(|id| routes.contains_key(&id))
    }

    /// Opens the stream of `id`, which must be in our range, not open, and
    /// (on current relays) never used before on this connection.
    pub(crate) fn open(&self, id: u32) -> Result<Arc<Stream>> {
        self.check_open()?;
        let mut routes = self.routes.lock();
        if routes.contains_key(&id) {
            return Err(Error::IdUnavailable(id));
        }
        self.ids.claim(id)?;
        Ok(self.insert_route(&mut routes, id, None))
    }

    /// Opens a stream on a fresh id; with `accept`, only messages it
    /// accepts are queued.
    pub(crate) fn open_new(&self, accept: Option<Accept>) -> Result<Arc<Stream>> {
        self.check_open()?;
        let mut routes = self.routes.lock();
        let id = self.ids.next_id(|id| routes.contains_key(&id))?;
        Ok(self.insert_route(&mut routes, id, accept))
    }

    fn insert_route(&self, routes: &mut Routes, id: u32, accept: Option<Accept>) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            id,
            accept,
            state: Mutex::new(StreamState::default()),
            acked: Mutex::new(0),
        });
        // A close that raced with us must still reach this stream. It
        // drained the routes before we took the lock, so this one must not
        // stay in them.
        if let Some(cause) = self.close_cause() {
            stream.state.lock().close(&cause);
        } else {
            stream.state.lock().routed = true;
            routes.insert(id, stream.clone());
        }
        stream
    }

    fn unroute(&self, stream: &Arc<Stream>) {
        let mut routes = self.routes.lock();
        if let Some(s) = routes.get(&stream.id) {
            if Arc::ptr_eq(s, stream) {
                routes.remove(&stream.id);
            }
        }
        stream.state.lock().routed = false;
    }

    /// Closes a stream whose handle is being released: unroutes it, frees
    /// what it holds, and stops counting it as passive.
    pub(crate) fn release_stream(&self, stream: &Arc<Stream>, out: &dyn Outbox) {
        // Once the stream has ended or the connection closed, the route is
        // already gone: skip the routing lock, which every request would take.
        if stream.state.lock().routed {
            self.unroute(stream);
        }
        let mut st = stream.state.lock();
        let held = std::mem::take(&mut st.held);
        let passive = std::mem::take(&mut st.passive);
        // Unread output counts as consumed: the guest must not wait for an
        // application that has gone (its exit code waits for these acks).
        let mut final_ack = None;
        if let Some(mut flow) = st.flow.take() {
            while let Some((m, _)) = st.queue.pop_front() {
                if is_output(&m) {
                    flow.output.consume(flow::data_len(&m.payload));
                }
            }
            final_ack = flow.output.flush();
        }
        st.queue.clear();
        let ended = st.terminal || st.closed.is_some();
        drop(st);
        if let Some(total) = final_ack {
            if !ended {
                self.ack_output(stream, total, out);
            }
        }
        self.release_memory(held);
        if passive {
            self.passive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Unroutes the stream and wakes every thread waiting on it with
    /// [`CloseCause::Cancelled`]; for handles released while in use.
    pub(crate) fn cancel(&self, stream: &Arc<Stream>) {
        self.unroute(stream);
        let mut st = stream.state.lock();
        st.close(&CloseCause::Cancelled);
        let (waker, bits) = st.take_wakers();
        drop(st);
        self.blocked.wake(bits);
        if let Some(w) = waker {
            w.wake();
        }
        // A thread pulling on this stream may be the one reading the
        // socket, blocked in poll rather than asleep on its wake bit.
        self.leader_wake.signal();
    }

    /// The stream's readiness descriptor (created on first use): readable
    /// exactly while a pull would not return `Nothing`.
    pub(crate) fn readiness_fd(&self, stream: &Stream) -> Result<RawFd> {
        let mut st = stream.state.lock();
        if st.ready.is_none() {
            st.ready = Some(Event::new().map_err(|e| Error::io(e, "creating a readiness fd"))?);
            st.ready_signalled = false;
            st.sync_ready();
        }
        let fd = st.ready.as_ref().map(Event::poll_fd).unwrap_or(-1);
        self.mark_passive(st);
        Ok(fd)
    }

    /// From now until the stream is released, it is waited on without a
    /// pulling thread: the background thread reads for it without delay.
    fn mark_passive(&self, mut st: MutexGuard<'_, StreamState>) {
        if !std::mem::replace(&mut st.passive, true) {
            drop(st);
            self.passive.fetch_add(1, Ordering::SeqCst);
            self.background_wake.signal();
        }
    }

    // ------------------------------------------------------------ memory

    fn budget_available(&self) -> bool {
        self.held.load(Ordering::Acquire) < self.budget
    }

    /// Whether a reader may read now: while the budget has room, or (with
    /// `FailStream`) once it has been full for the whole overflow grace.
    #[inline]
    fn may_read(&self) -> bool {
        if self.budget_available() {
            if self.full_since.load(Ordering::Relaxed) != 0 {
                self.full_since.store(0, Ordering::Relaxed);
            }
            return true;
        }
        self.pause_ends().is_some_and(|end| Instant::now() >= end)
    }

    /// When a pause for a full budget ends by itself: the end of the
    /// overflow grace (started now if it was not running), or never with
    /// `PauseSocket`.
    fn pause_ends(&self) -> Option<Instant> {
        if self.backpressure == Backpressure::PauseSocket {
            return None;
        }
        let now = self.nanos_since_created(Instant::now());
        let since =
            match self
                .full_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        Some(self.created + Duration::from_nanos(since - 1) + OVERFLOW_GRACE)
    }

    /// Never 0, which marks "not full".
    fn nanos_since_created(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.created).as_nanos() as u64).saturating_add(1)
    }

    /// Whether overflow is enforced on what a read brings: only when the
    /// read began with the budget full, which a reader does only once the
    /// grace has run out (the budget fills only by reading).
    fn overflow_enforced(&self) -> bool {
        self.backpressure == Backpressure::FailStream && !self.budget_available()
    }

    fn release_memory(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.held.fetch_sub(n, Ordering::AcqRel);
        if before >= self.budget && before - n < self.budget {
            self.budget_freed();
        }
    }

    /// The budget has room again: a reader paused for it reads now, and a
    /// later full budget starts a new grace.
    fn budget_freed(&self) {
        self.full_since.store(0, Ordering::Relaxed);
        self.background_wake.signal();
        self.blocked.wake(self.pick_next_reader());
    }

    // ------------------------------------------------------------ pulling

    /// Takes the next message if one is queued. For a flow-controlled
    /// exec, output taken counts as consumed; `ack` is set when an
    /// acknowledgement is due (sent by the caller once the lock is gone).
    fn pop_locked(&self, st: &mut StreamState, ack: &mut Option<u64>) -> Result<Pulled<Message>> {
        if let Some((m, cost)) = st.queue.pop_front() {
            st.held -= cost;
            st.sync_ready();
            self.release_memory(cost);
            if let Some(flow) = &mut st.flow {
                if is_output(&m) {
                    flow.output.consume(flow::data_len(&m.payload));
                }
                // Due at a quarter of the window, or when nothing more is
                // queued (the caller is about to wait: the guest must not).
                *ack = flow.output.due(st.queue.is_empty()).or(*ack);
            }
            return Ok(Pulled::Item(m));
        }
        if st.terminal {
            return Ok(Pulled::Ended);
        }
        if let Some(c) = &st.closed {
            return Err(Error::Closed(c.clone()));
        }
        Ok(Pulled::Nothing)
    }

    /// Waits until `deadline` (`None`: no limit) for the stream's next
    /// message. Messages queued before the stream failed are delivered
    /// first, then the cause. While nobody else reads the socket, the
    /// waiting thread reads it itself.
    pub(crate) fn pull(
        &self,
        stream: &Arc<Stream>,
        deadline: Option<Instant>,
        out: &dyn Outbox,
    ) -> Result<Pulled<Message>> {
        let mut st = stream.state.lock();
        let mut ack = None;
        loop {
            match self.pop_locked(&mut st, &mut ack) {
                Ok(Pulled::Nothing) => {}
                done => {
                    self.pass_on_promotion(st);
                    if let Some(total) = ack {
                        self.ack_output(stream, total, out);
                    }
                    return done;
                }
            }
            st.promoted = false;
            if self.may_read() {
                if let Some(read_state) = self.state.try_lock() {
                    // Routing locks streams, ours included: let go of it.
                    st.leading = true;
                    drop(st);
                    self.lead(read_state, deadline, out, || stream.state.lock().readable());
                    st = stream.state.lock();
                    st.leading = false;
                    // Usually our message came, and the top of the loop takes
                    // it: read the clock only when it did not.
                    if !st.readable() && deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Pulled::Nothing);
                    }
                    continue;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Pulled::Nothing);
            }
            // Follow: wait for the reader to route our message, or to be
            // asked to read. Joining the queue before re-checking the lock
            // closes the gap where the reader let go just before we joined.
            let bit = thread_wake_bit();
            st.waiters += 1;
            st.wait_bits |= bit;
            self.followers.lock().push_back(stream.clone());
            let may_lead = !self.state.is_locked() && self.may_read();
            let timed_out = if may_lead || st.promoted || st.readable() {
                false
            } else {
                // The ticket is taken under the stream lock that every waker
                // takes before it wakes: a wake this check missed makes the
                // wait return at once.
                let ticket = self.blocked.ticket();
                drop(st);
                let timed_out = self.blocked.wait(ticket, bit, deadline);
                st = stream.state.lock();
                timed_out
            };
            st.waiters -= 1;
            if st.waiters == 0 {
                st.wait_bits = 0;
            }
            self.remove_follower(stream);
            if timed_out {
                let r = self.pop_locked(&mut st, &mut ack);
                self.pass_on_promotion(st);
                if let Some(total) = ack {
                    self.ack_output(stream, total, out);
                }
                return r;
            }
        }
    }

    /// Non-blocking pull for async callers: registers `waker` when nothing
    /// is queued (the background thread then reads for it).
    pub(crate) fn poll_pull(
        &self,
        stream: &Stream,
        waker: &Waker,
        out: &dyn Outbox,
    ) -> Result<Pulled<Message>> {
        let mut st = stream.state.lock();
        let mut ack = None;
        let r = self.pop_locked(&mut st, &mut ack);
        if let Ok(Pulled::Nothing) = r {
            st.waker = Some(waker.clone());
            self.mark_passive(st);
        } else {
            drop(st);
        }
        if let Some(total) = ack {
            self.ack_output(stream, total, out);
        }
        r
    }

    /// Sends an output acknowledgement of `total`, unless a larger one
    /// went out already.
    fn ack_output(&self, stream: &Stream, total: u64, out: &dyn Outbox) {
        let mut acked = stream.acked.lock();
        if total > *acked {
            out.ack_output(stream.id, total);
            *acked = total;
        }
    }

    // ------------------------------------------------------------ stdin

    /// Whether exec flow control is on for this connection.
    pub(crate) fn exec_flow_control(&self) -> bool {
        self.exec_limits.is_some()
    }

    fn stdin_progress(&self) {
        let mut g = self
            .stdin_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = g.wrapping_add(1);
        drop(g);
        self.stdin_progressed.notify_all();
    }

    fn stdin_generation(&self) -> u64 {
        *self
            .stdin_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the exec on `stream` may take stdin (it has started and
    /// its window has room), then reserves up to `wanted` bytes of it (at
    /// most one chunk) and returns how many; `wanted == 0` waits to send
    /// the end of input and marks it sent. The caller sends what was
    /// reserved, or gives it back with [`unreserve_stdin`]. `None`: the
    /// exec has ended (or failed to start), so there is nothing to send it;
    /// the relay would drop such stdin anyway.
    pub(crate) fn reserve_stdin(
        &self,
        stream: &Arc<Stream>,
        wanted: usize,
        deadline: Instant,
        out: &dyn Outbox,
    ) -> Result<Option<usize>> {
        loop {
            let seen = self.stdin_generation();
            {
                let mut st = stream.state.lock();
                if st.terminal {
                    return Ok(None);
                }
                if let Some(c) = &st.closed {
                    return Err(Error::Closed(c.clone()));
                }
                let blocked = match &mut st.flow {
                    None => StdinBlocked::NotStarted,
                    Some(flow) if wanted == 0 => match flow.input.may_end() {
                        Ok(()) => {
                            flow.input.ended();
                            return Ok(Some(0));
                        }
                        Err(b) => b,
                    },
                    Some(flow) => match flow.input.allowance(wanted) {
                        Ok(n) => {
                            flow.input.sent(n);
                            return Ok(Some(n));
                        }
                        Err(b) => b,
                    },
                };
                if blocked == StdinBlocked::Ended {
                    return Err(Error::InvalidArgument("stdin was already closed".into()));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(
                    "waiting for the process to start or to take stdin",
                ));
            }
            // Read the socket ourselves if nobody does (the ack may be in
            // it); otherwise wait for whoever reads to route one.
            if self.may_read() {
                if let Some(state) = self.state.try_lock() {
                    self.lead(state, Some(deadline), out, || {
                        self.stdin_generation() != seen || self.is_closed.load(Ordering::Acquire)
                    });
                    continue;
                }
            }
            let g = self
                .stdin_progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *g == seen {
                let nap = deadline
                    .saturating_duration_since(Instant::now())
                    .min(TAKEOVER_GRACE);
                drop(
                    self.stdin_progressed
                        .wait_timeout(g, nap)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
            }
        }
    }

    /// Gives back stdin reserved by [`reserve_stdin`] that was not sent.
    pub(crate) fn unreserve_stdin(&self, stream: &Stream, n: usize) {
        if let Some(flow) = &mut stream.state.lock().flow {
            flow.input.unsent(n);
        }
    }

    /// A waiter asked to lead that returns instead hands the request on, so
    /// that the remaining waiters are not left without a reader.
    fn pass_on_promotion(&self, mut st: MutexGuard<'_, StreamState>) {
        if std::mem::take(&mut st.promoted) {
            drop(st);
            self.blocked.wake(self.pick_next_reader());
        }
    }

    fn remove_follower(&self, stream: &Arc<Stream>) {
        let mut f = self.followers.lock();
        if let Some(i) = f.iter().position(|s| Arc::ptr_eq(s, stream)) {
            f.remove(i);
        }
    }

    /// Asks one waiting caller to take over reading; returns the bits to
    /// wake it with (0: nobody waits), so that the reader can wake it
    /// together with the callers it served.
    fn pick_next_reader(&self) -> u32 {
        // A follower whose message is already queued has been woken by the
        // routing and will return; asking it to lead would cost a wake-up
        // only for it to pass the request on. Skip to one still waiting.
        loop {
            let next = self.followers.lock().pop_front();
            let Some(stream) = next else { return 0 };
            let mut st = stream.state.lock();
            if st.readable() || st.waiters == 0 {
                continue;
            }
            st.promoted = true;
            return st.wait_bits;
        }
    }

    // ------------------------------------------------------------ leading

    /// Reads on the caller's thread until `done()` holds, the deadline
    /// passes, reading must pause, or the connection dies. The caller holds
    /// the read lock (passed in) and no stream lock. A panic while reading
    /// fails the connection, and the read is handed over all the same.
    fn lead(
        &self,
        mut state: parking_lot::MutexGuard<'_, ReadState>,
        deadline: Option<Instant>,
        out: &dyn Outbox,
        done: impl Fn() -> bool,
    ) {
        let outcome = catch_unwind(AssertUnwindSafe(|| loop {
            let wait = if deadline
                .is_none_or(|d| d.saturating_duration_since(Instant::now()) >= SHORT_READ_MIN_LEFT)
            {
                ReadWait::Short
            } else {
                ReadWait::No
            };
            match self.step(&mut state, wait) {
                Ok(Step::Progress) => {
                    if done() || !self.may_read() {
                        return Ok(());
                    }
                }
                Ok(Step::WouldBlock) => {
                    // Nothing within the short wait (or the deadline is near):
                    // wait in poll, where closing and cancelling reach us, and
                    // check again after it, before another short wait.
                    if done() {
                        return Ok(());
                    }
                    match self.wait_for(Some(&self.leader_wake), true, deadline) {
                        Woken::Closed => return Ok(()),
                        Woken::Recheck if deadline.is_some_and(|d| Instant::now() >= d) => {
                            return Ok(())
                        }
                        _ => {}
                    }
                    if done() {
                        return Ok(());
                    }
                }
                Err(cause) => return Err(cause),
            }
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(cause)) => Some(cause),
            Err(panic) => Some(CloseCause::ReaderPanicked(panic_text(&*panic))),
        };
        // Closed first, so that nobody is asked to read a dead socket.
        if let Some(cause) = failure {
            self.fail(cause);
        }
        self.activity.fetch_add(1, Ordering::Relaxed);
        self.release(state);
        self.send_kills(out);
    }

    /// Lets go of the socket: wakes the callers the last read served
    /// together with one still waiting, asked to read next, in one system
    /// call, and the background thread if it waits for the read state.
    fn release(&self, mut state: parking_lot::MutexGuard<'_, ReadState>) {
        let served = std::mem::take(&mut state.served);
        drop(state);
        if self.background_waiting.swap(false, Ordering::SeqCst) {
            self.background_wake.signal();
        }
        self.blocked.wake(served | self.pick_next_reader());
    }

    fn send_kills(&self, out: &dyn Outbox) {
        let kills = std::mem::take(&mut *self.kills.lock());
        for id in kills {
            out.kill_exec(id);
        }
    }

    /// Waits in `poll` for the socket (when `socket`), the close event, and
    /// `event` (cleared when it fired), until `deadline`.
    fn wait_for(&self, event: Option<&Event>, socket: bool, deadline: Option<Instant>) -> Woken {
        let mut fds = [
            libc::pollfd {
                fd: self.close_event.poll_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: event.map_or(-1, Event::poll_fd),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if socket { self.fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Woken::Recheck;
                    }
                    // Round up so a sub-millisecond remainder still waits.
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                }
            };
            // SAFETY: `fds` is a live array of three initialised pollfd;
            // entries with fd -1 are ignored by poll.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    // Cannot happen with valid descriptors; never spin on it.
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            if fds[0].revents != 0 {
                return Woken::Closed;
            }
            if fds[1].revents != 0 {
                if let Some(e) = event {
                    e.clear();
                }
                return Woken::Recheck;
            }
            if fds[2].revents != 0 {
                return Woken::Socket;
            }
            if r == 0 {
                return Woken::Recheck;
            }
        }
    }

    // ------------------------------------------------------------ background

    /// The background thread's body: reads until the connection closes. A
    /// panic in it fails the connection with the cause, which wakes every
    /// waiter; so does any other end.
    pub(crate) fn run_background(&self, out: &dyn Outbox) {
        let cause = match catch_unwind(AssertUnwindSafe(|| self.background_loop(out))) {
            Ok(cause) => cause,
            Err(panic) => CloseCause::ReaderPanicked(panic_text(&*panic)),
        };
        self.fail(cause);
    }

    fn background_loop(&self, out: &dyn Outbox) -> CloseCause {
        let closed = || self.close_cause().unwrap_or(CloseCause::ClosedByCaller);
        // Whether the last look found the read state to ourselves: then the
        // grace has been served already.
        let mut reading = false;
        loop {
            if self.is_closed.load(Ordering::Acquire) {
                return closed();
            }
            if !self.may_read() {
                // Paused: wait for the budget to be freed, or for the
                // overflow grace to run out.
                let until = self.pause_ends();
                if let Woken::Closed = self.wait_for(Some(&self.background_wake), false, until) {
                    return closed();
                }
                continue;
            }
            if self.passive.load(Ordering::SeqCst) == 0 && !reading {
                // Callers that lead keep `activity` moving: wait until they
                // have left the read state alone for a whole grace.
                let seen = self.activity.load(Ordering::Relaxed);
                let grace = Instant::now() + TAKEOVER_GRACE;
                if let Woken::Closed =
                    self.wait_for(Some(&self.background_wake), false, Some(grace))
                {
                    return closed();
                }
                if self.activity.load(Ordering::Relaxed) != seen || self.state.is_locked() {
                    continue;
                }
                reading = true;
            }
            match self.wait_for(Some(&self.background_wake), true, None) {
                Woken::Closed => return closed(),
                Woken::Recheck => continue,
                Woken::Socket => {}
            }
            let Some(mut state) = self.state.try_lock() else {
                // A caller leads. With passive waiters, ask to be told when
                // it lets go (then look again in case it let go before
                // seeing the request); otherwise fall back to the grace.
                reading = false;
                if self.passive.load(Ordering::SeqCst) > 0 {
                    self.background_waiting.store(true, Ordering::SeqCst);
                    if self.state.is_locked() {
                        if let Woken::Closed =
                            self.wait_for(Some(&self.background_wake), false, None)
                        {
                            return closed();
                        }
                    }
                    self.background_waiting.store(false, Ordering::SeqCst);
                }
                continue;
            };
            let result = loop {
                match self.step(&mut state, ReadWait::No) {
                    Ok(Step::Progress) if self.may_read() => {}
                    Ok(_) => break Ok(()),
                    Err(cause) => break Err(cause),
                }
            };
            if let Err(cause) = result {
                // Closed first, so that nobody is asked to read a dead socket.
                self.fail(cause.clone());
                self.release(state);
                return cause;
            }
            // Callers may have queued up behind us; one of them reads next.
            self.release(state);
            self.send_kills(out);
        }
    }

    // ------------------------------------------------------------ reading

    /// One read, then routing of every frame it completed. `WouldBlock`
    /// when nothing came (at once, or within the short wait).
    fn step(&self, rs: &mut ReadState, wait: ReadWait) -> std::result::Result<Step, CloseCause> {
        #[cfg(any(test, feature = "test-hooks"))]
        if self.inject_panic.swap(false, Ordering::SeqCst) {
            panic!("injected reader panic");
        }
        // Nobody served may wait behind a read that blocks.
        self.blocked.wake(std::mem::take(&mut rs.served));
        // Decided before reading: see `overflow_enforced`.
        let enforce = self.overflow_enforced();
        if rs.buf.is_empty() {
            rs.buf = vec![0u8; READ_BUFFER].into_boxed_slice();
        }
        let flags = match wait {
            ReadWait::No => libc::MSG_DONTWAIT,
            ReadWait::Short => {
                if !rs.receive_timeout_set {
                    set_socket_timeout(self.fd, libc::SO_RCVTIMEO, SHORT_READ_WAIT)
                        .map_err(|e| CloseCause::Io(format!("setting the receive timeout: {e}")))?;
                    rs.receive_timeout_set = true;
                }
                0
            }
        };
        if let Some((header, mut body)) = rs.large.take() {
            // One readv: the rest of the large frame straight into its own
            // buffer, plus a small tail into the shared buffer so the next
            // frame's header comes with it. The tail is small so that the
            // next large frame is mostly read directly too.
            debug_assert_eq!(rs.filled, 0);
            let want = header.body_len() - body.len();
            let tail = LARGE_FRAME_TAIL.min(rs.buf.len());
            let got = readv(
                self.fd,
                flags,
                &mut body.spare_capacity_mut()[..want],
                &mut rs.buf[..tail],
            );
            let n = match got {
                Ok(Some(n)) => n,
                Ok(None) => {
                    rs.large = Some((header, body));
                    return Ok(Step::WouldBlock);
                }
                Err(CloseCause::Eof) => {
                    return Err(cut_off(header.frame_size(), FRAME_HEAD_SIZE + body.len()))
                }
                Err(e) => return Err(e),
            };
            let into_body = n.min(want);
            // SAFETY: readv initialised the first `into_body` spare bytes.
            unsafe { body.set_len(body.len() + into_body) };
            if body.len() < header.body_len() {
                rs.large = Some((header, body));
                return Ok(Step::Progress);
            }
            let held = body.capacity();
            let raw = RawFrame {
                id: header.id,
                flags: header.flags,
                body: self.frame_buffers.freeze(body),
            };
            rs.batch
                .push((raw.decode().map_err(CloseCause::Protocol)?, held));
            rs.filled = n - into_body;
            // Routes the completed frame together with whatever the tail held.
            self.split_frames(rs, true, enforce)?;
            return Ok(Step::Progress);
        }

        let end = if rs.large_frames {
            (rs.filled + LARGE_FRAME_TAIL).min(rs.buf.len())
        } else {
            rs.buf.len()
        };
        let spare = &mut rs.buf[rs.filled..end];
        // SAFETY: initialised bytes may be viewed as MaybeUninit.
        let spare = unsafe {
            std::slice::from_raw_parts_mut(
                spare.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                spare.len(),
            )
        };
        let n = match read(self.fd, flags, spare) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Step::WouldBlock),
            Err(CloseCause::Eof) if rs.filled > 0 => {
                // A frame was started and never finished.
                let size = FrameHeader::parse(&rs.buf[..rs.filled])
                    .ok()
                    .flatten()
                    .map_or(FRAME_HEAD_SIZE, |h| h.frame_size());
                return Err(cut_off(size, rs.filled));
            }
            Err(e) => return Err(e),
        };
        rs.filled += n;
        self.split_frames(rs, false, enforce)?;
        Ok(Step::Progress)
    }

    /// Takes every complete frame out of the buffer and routes them as one
    /// batch (with a large frame just completed, if `large_before`); moves a
    /// large incomplete frame to a buffer of its own. `enforce`: see `route`.
    fn split_frames(
        &self,
        rs: &mut ReadState,
        large_before: bool,
        enforce: bool,
    ) -> std::result::Result<(), CloseCause> {
        let mut start = 0;
        let mut large_frames = large_before;
        let result = loop {
            let header = match FrameHeader::parse(&rs.buf[start..rs.filled]) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(()),
                Err(e) => break Err(CloseCause::Protocol(e)),
            };
            let size = header.frame_size();
            if rs.filled - start >= size {
                match decode_borrowed(&header, &rs.buf[start + FRAME_HEAD_SIZE..start + size]) {
                    Ok(m) => {
                        // The payload was copied into an allocation of its own.
                        let held = m.payload.len();
                        rs.batch.push((m, held));
                    }
                    Err(e) => break Err(CloseCause::Protocol(e)),
                }
                large_frames |= size >= DIRECT_READ_THRESHOLD;
                start += size;
            } else if size >= DIRECT_READ_THRESHOLD || size > READ_BUFFER {
                large_frames = true;
                let mut body = self.frame_buffers.take(header.body_len());
                body.extend_from_slice(&rs.buf[start + FRAME_HEAD_SIZE..rs.filled]);
                start = rs.filled;
                rs.large = Some((header, body));
                break Ok(());
            } else {
                break Ok(());
            }
        };
        rs.large_frames = large_frames;
        // Frames that arrived intact before a bad one are still delivered.
        rs.served |= self.route(&mut rs.batch, &mut rs.wakers, enforce);
        rs.buf.copy_within(start..rs.filled, 0);
        rs.filled -= start;
        result
    }

    // ------------------------------------------------------------ routing

    /// Delivers a batch of decoded frames to their streams, taking the
    /// routing lock once, and wakes the async tasks among them. Returns the
    /// bits of the blocked pullers it delivered to, for the reader to wake
    /// before it reads again or lets go. `wakers` is scratch space the
    /// reader keeps, so routing allocates nothing; it is left empty.
    /// `enforce`: streams fail rather than pass the budget (see `make_room`).
    #[must_use]
    fn route(
        &self,
        batch: &mut Vec<(Message, usize)>,
        wakers: &mut Vec<Waker>,
        enforce: bool,
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
            for (m, held) in batch.drain(..) {
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
                // cache line that the stream's owner is using.
                let removed;
                let stream = if terminal {
                    removed = routes.remove(&m.id);
                    removed.as_ref()
                } else {
                    routes.get(&m.id)
                };
                let Some(stream) = stream else {
                    c.dropped_no_subscriber.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some(limits) = &self.exec_limits {
                    if self.flow_frame(stream, &m, limits) {
                        continue;
                    }
                }
                let cost = held + PER_MESSAGE_OVERHEAD;
                let accepted = stream.accept.is_none_or(|accept| accept(&m));
                if accepted
                    && enforce
                    && !self.make_room(&routes, stream, cost, &m, &mut bits, wakers)
                {
                    c.dropped_overflow.fetch_add(1, Ordering::Relaxed);
                    if terminal {
                        stream.state.lock().routed = false;
                    }
                    continue;
                }
                let mut st = stream.state.lock();
                if terminal {
                    st.routed = false;
                }
                let was_readable = st.readable();
                if st.overflowed {
                    c.dropped_overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if accepted {
                    self.held.fetch_add(cost, Ordering::AcqRel);
                    st.held += cost;
                    st.queue.push_back((m, cost));
                }
                if terminal {
                    st.terminal = true;
                }
                st.sync_ready();
                if !was_readable && st.readable() {
                    let (waker, sub_bits) = st.take_wakers();
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

    /// Flow-control bookkeeping of a routed frame: `core.exec.started`
    /// opens the exec's windows, and stdin acknowledgements are taken here
    /// (true: consumed, not queued). The end of an exec wakes stdin writers.
    fn flow_frame(&self, stream: &Stream, m: &Message, limits: &ExecLimits) -> bool {
        if m.message_type == MessageType::ExecStarted {
            let mut st = stream.state.lock();
            if st.flow.is_none() {
                let mut flow = ExecFlow::new(limits);
                flow.input.start();
                st.flow = Some(flow);
            }
            drop(st);
            self.stdin_progress();
            return false;
        }
        if m.message_type == MessageType::ExecStdinAck {
            if let (Some(flow), Some(consumed)) = (
                &mut stream.state.lock().flow,
                flow::decode_consumed(&m.payload),
            ) {
                flow.input.acknowledged(consumed);
            }
            self.stdin_progress();
            return true;
        }
        if m.is_terminal() {
            self.stdin_progress();
        }
        false
    }

    /// Makes room for a message of `cost` bytes for `stream` within the
    /// budget, failing streams as the module documentation says. False when
    /// the message must not be queued (its own stream failed, or had).
    fn make_room(
        &self,
        routes: &Routes,
        stream: &Arc<Stream>,
        cost: usize,
        m: &Message,
        bits: &mut u32,
        wakers: &mut Vec<Waker>,
    ) -> bool {
        loop {
            let held = self.held.load(Ordering::Acquire);
            // A message larger than the whole budget is still taken when
            // nothing else is held, so a small budget never refuses one frame.
            // (A stream that failed already is dropped by the caller.)
            if held + cost <= self.budget || held == 0 {
                return true;
            }
            {
                let st = stream.state.lock();
                if st.overflowed {
                    return false;
                }
                // A stream a thread is blocked pulling is emptied as soon as
                // it wakes: what one read brings for it is not a backlog.
                let pulled = st.waiters > 0 || st.leading;
                if pulled && st.held + cost <= PULLED_STREAM_SLACK {
                    return true;
                }
            }
            // The live stream that holds the most, counting this message.
            let own = stream.state.lock().held + cost;
            let mut largest: Option<(&Arc<Stream>, usize)> = None;
            for s in routes.values() {
                if Arc::ptr_eq(s, stream) {
                    continue;
                }
                let st = s.state.lock();
                if !st.overflowed && largest.is_none_or(|(_, h)| st.held > h) {
                    largest = Some((s, st.held));
                }
            }
            let victim = match largest {
                Some((s, h)) if h > own => s,
                _ => {
                    let exec = is_exec_output(m);
                    self.overflow(stream, own, Some(cost), exec, bits, wakers);
                    return false;
                }
            };
            // Another stream holds more: it fails, and what it held is
            // released so that this message fits.
            let exec = is_exec_stream(&victim.state.lock());
            let h = victim.state.lock().held;
            self.overflow(victim, h, None, exec, bits, wakers);
        }
    }

    /// Fails `stream` with `StreamOverflow`. With `keep_room_for`, its
    /// queued messages stay to be delivered, but for those at its back that
    /// keep the connection from having that much room in its budget (a read
    /// begun while the budget had room may have passed it); without, all
    /// are released. An exec is queued to be killed.
    fn overflow(
        &self,
        stream: &Arc<Stream>,
        held: usize,
        keep_room_for: Option<usize>,
        exec: bool,
        bits: &mut u32,
        wakers: &mut Vec<Waker>,
    ) {
        let mut st = stream.state.lock();
        st.overflowed = true;
        let mut released = 0;
        let discard = keep_room_for.is_none();
        if let Some(room) = keep_room_for {
            let mut n = 0u64;
            while self.held.load(Ordering::Acquire).saturating_sub(released) + room > self.budget {
                let Some((_, cost)) = st.queue.pop_back() else {
                    break;
                };
                released += cost;
                n += 1;
            }
            st.held -= released;
            self.counters
                .dropped_overflow
                .fetch_add(n, Ordering::Relaxed);
        } else {
            let n = st.queue.clear();
            self.counters
                .dropped_overflow
                .fetch_add(n as u64, Ordering::Relaxed);
            released = std::mem::take(&mut st.held);
        }
        let detail = if discard {
            format!(
                "{held} bytes of unread messages were released to keep the connection within its {} byte memory budget",
                self.budget
            )
        } else {
            format!(
                "unread messages reached {held} bytes, past the connection's {} byte memory budget; what was queued is delivered first",
                self.budget
            )
        };
        let was_readable = st.readable();
        if st.closed.is_none() {
            st.closed = Some(CloseCause::StreamOverflow(detail));
        }
        st.sync_ready();
        if !was_readable && st.readable() {
            let (waker, sub_bits) = st.take_wakers();
            *bits |= sub_bits;
            wakers.extend(waker);
        }
        drop(st);
        if released > 0 {
            let before = self.held.fetch_sub(released, Ordering::AcqRel);
            // The reader is reading already: only the grace starts anew.
            if before - released < self.budget {
                self.full_since.store(0, Ordering::Relaxed);
            }
        }
        if exec {
            self.kills.lock().push(stream.id);
        }
    }

    // ------------------------------------------------------------ test hooks

    /// Makes the next read panic, to test that the panic is contained.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn inject_panic(&self) {
        self.inject_panic.store(true, Ordering::SeqCst);
        // Make whoever reads look now, whether or not data comes.
        self.background_wake.signal();
        self.leader_wake.signal();
    }
}

/// A stdout or stderr chunk: what the output window charges.
fn is_output(m: &Message) -> bool {
    matches!(
        m.message_type,
        MessageType::ExecStdout | MessageType::ExecStderr
    )
}

/// Whether the message is output of an exec (its stream is then an exec's).
fn is_exec_output(m: &Message) -> bool {
    matches!(
        m.message_type,
        MessageType::ExecStarted | MessageType::ExecStdout | MessageType::ExecStderr
    )
}

fn is_exec_stream(st: &StreamState) -> bool {
    st.queue
        .head
        .as_ref()
        .or_else(|| st.queue.rest.front())
        .is_some_and(|(m, _)| is_exec_output(m))
}

/// The protocol error for a connection that ended inside a frame.
fn cut_off(size: usize, got: usize) -> CloseCause {
    CloseCause::Protocol(ProtocolError::BadBody(format!(
        "frame of {size} bytes cut off after {got}: the relay closed the connection mid-frame"
    )))
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Sets SO_SNDTIMEO or SO_RCVTIMEO: how long a send or read without
/// MSG_DONTWAIT may block on the socket.
pub(crate) fn set_socket_timeout(
    fd: RawFd,
    option: libc::c_int,
    timeout: Duration,
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

/// One read into `dst` with `flags` (`MSG_DONTWAIT`, or 0 to wait up to
/// the receive timeout); `Ok(None)` when nothing came. EOF and errors end
/// the connection.
fn read(
    fd: RawFd,
    flags: libc::c_int,
    dst: &mut [MaybeUninit<u8>],
) -> std::result::Result<Option<usize>, CloseCause> {
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
) -> std::result::Result<Option<usize>, CloseCause> {
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
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose entries describe live,
        // writable buffers borrowed for the call. Without MSG_DONTWAIT the
        // call blocks at most for the socket's receive timeout.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if let Some(outcome) = read_outcome(n) {
            return outcome;
        }
    }
}

/// What a read that returned `n` means: bytes, nothing yet (`Ok(None)`), or
/// the end of the connection; `None` when a signal interrupted it (retry).
fn read_outcome(n: isize) -> Option<std::result::Result<Option<usize>, CloseCause>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u32) -> (Message, usize) {
        (Message::new(MessageType::FsData, id, Vec::new()), 0)
    }

    #[test]
    fn message_queue_keeps_order_across_its_inline_head() {
        let mut q = MessageQueue::default();
        assert!(q.is_empty() && q.pop_front().is_none());
        q.push_back(msg(1));
        q.push_back(msg(2));
        assert_eq!(q.pop_front().unwrap().0.id, 1);
        // The head is free again but `rest` is not empty: 3 must queue behind 2.
        q.push_back(msg(3));
        q.push_back(msg(4));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_front())
            .map(|m| m.0.id)
            .collect();
        assert_eq!(order, [2, 3, 4]);
        assert!(q.is_empty());
        q.push_back(msg(5));
        assert_eq!(q.clear(), 1);
        assert!(q.is_empty());
    }
}
