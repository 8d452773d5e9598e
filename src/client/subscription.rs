//! The queue of messages for one correlation id, and the three ways to wait
//! on it: a blocking pull with a timeout, an async `recv`, and a readiness
//! file descriptor for event loops.
//!
//! All three read the same state under one lock, so a pull that times out (or
//! a future that is dropped) never consumes a message.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::sync::{thread_wake_bit, Mutex, MutexGuard};

use super::conn::Conn;
use super::error::{CloseCause, Error, Result};
use crate::protocol::Message;

/// Bytes charged against the memory budget for one queued message beyond its
/// body: the queue slot and allocation overhead, so that a flood of tiny
/// frames is bounded too.
pub(crate) const PER_MESSAGE_OVERHEAD: usize = 64;

pub(crate) fn charge(m: &Message) -> usize {
    m.payload.len() + m.message_type.as_str().len() + PER_MESSAGE_OVERHEAD
}

/// A FIFO of messages that holds its first message inline: most
/// subscriptions (a request's) only ever get one, and allocating a queue
/// buffer for it on the reading thread, to be freed on the pulling one, was
/// the largest allocation cost of a round trip.
#[derive(Default)]
struct MessageQueue {
    /// The oldest message, whenever `rest` is empty or it came first.
    head: Option<Message>,
    rest: VecDeque<Message>,
}

impl MessageQueue {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.rest.is_empty()
    }

    fn push_back(&mut self, m: Message) {
        if self.head.is_none() && self.rest.is_empty() {
            self.head = Some(m);
        } else {
            self.rest.push_back(m);
        }
    }

    fn pop_front(&mut self) -> Option<Message> {
        self.head.take().or_else(|| self.rest.pop_front())
    }

    fn clear(&mut self) {
        self.head = None;
        self.rest.clear();
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
pub(crate) struct SubState {
    queue: MessageQueue,
    /// Bytes of `queue` counted against the connection's budget.
    charged: usize,
    /// The terminal frame is in (or went through) the queue.
    terminal: bool,
    closed: Option<CloseCause>,
    waker: Option<Waker>,
    ready_fd: Option<OwnedFd>,
    ready_fd_signalled: bool,
    /// Threads blocked in `recv_timeout`.
    waiters: usize,
    /// Their bits in the connection's `WakeGroup` (or-ed; cleared when the
    /// last one leaves).
    wait_bits: u32,
    /// A waiter was asked to take over reading the socket.
    promoted: bool,
    /// Counted in the connection's passive waiters (readiness fd or async).
    passive: bool,
}

impl SubState {
    fn readable(&self) -> bool {
        !self.queue.is_empty() || self.terminal || self.closed.is_some()
    }

    /// Keeps the readiness fd readable exactly while a pull would not say
    /// "nothing yet" (level-triggered semantics on top of an eventfd).
    fn sync_ready_fd(&mut self) {
        let Some(fd) = &self.ready_fd else { return };
        let want = self.readable();
        if want == self.ready_fd_signalled {
            return;
        }
        if want {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const _, 8) };
        } else {
            let mut sink: u64 = 0;
            // SAFETY: reading 8 bytes into a live u64 from an eventfd we own;
            // it is non-blocking, so this cannot hang.
            unsafe { libc::read(fd.as_raw_fd(), &mut sink as *mut u64 as *mut _, 8) };
        }
        self.ready_fd_signalled = want;
    }
}

/// Shared between the reader (which pushes) and the subscription's owner.
/// Which messages a subscription wants queued; the rest are dropped as they
/// arrive. Typed conversations (exec, fs) filter out what they would skip
/// anyway, so that a queued message always means a pull yields something,
/// which is what their readiness fds promise.
pub(crate) type Accept = fn(&Message) -> bool;

pub(crate) struct SubShared {
    pub(crate) id: u32,
    pub(crate) accept: Option<Accept>,
    pub(crate) state: Mutex<SubState>,
}

impl SubShared {
    pub(crate) fn new(id: u32, accept: Option<Accept>) -> Arc<SubShared> {
        Arc::new(SubShared {
            id,
            accept,
            state: Mutex::new(SubState::default()),
        })
    }

    /// Appends a message; returns true if a waiter must be woken (the queue
    /// was empty). Called by the reader with the state lock held.
    pub(crate) fn push_locked(st: &mut SubState, m: Message, cost: usize) -> bool {
        let was_readable = st.readable();
        st.charged += cost;
        if m.is_terminal() {
            st.terminal = true;
        }
        st.queue.push_back(m);
        st.sync_ready_fd();
        !was_readable
    }

    /// Ends the stream without queueing anything: a terminal frame the
    /// subscription does not accept still ends it.
    pub(crate) fn end_locked(st: &mut SubState) -> bool {
        let was_readable = st.readable();
        st.terminal = true;
        st.sync_ready_fd();
        !was_readable
    }

    pub(crate) fn close_locked(st: &mut SubState, cause: &CloseCause) -> bool {
        if st.closed.is_some() {
            return false;
        }
        let was_readable = st.readable();
        st.closed = Some(cause.clone());
        st.sync_ready_fd();
        !was_readable
    }

    /// Asks a waiter of this subscription to take over reading; returns the
    /// bits to wake it with (in the connection's `WakeGroup`), or 0, asking
    /// nothing, if a pull would not block anyway.
    pub(crate) fn promote(&self) -> u32 {
        let mut st = self.state.lock();
        if st.readable() || st.waiters == 0 {
            return 0;
        }
        st.promoted = true;
        st.wait_bits
    }

    /// Whom to wake: the async task's waker, and the bits of the blocked
    /// pullers. Taken under the state lock; woken after it is released.
    pub(crate) fn take_wakers(st: &mut SubState) -> (Option<Waker>, u32) {
        (st.waker.take(), st.wait_bits)
    }
}

/// A subscription to one correlation id. Messages for the id are queued from
/// the moment it exists, so subscribe before sending.
///
/// Thread safety: `Send + Sync`; several threads may pull concurrently (each
/// message goes to exactly one of them). Dropping it unsubscribes and releases
/// whatever it still holds against the memory budget.
pub struct Subscription {
    pub(crate) conn: Arc<Conn>,
    pub(crate) shared: Arc<SubShared>,
}

impl Subscription {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Takes the next message if one is queued, under the state lock.
    fn pop_locked(&self, st: &mut SubState) -> Result<Pulled<Message>> {
        if let Some(m) = st.queue.pop_front() {
            let cost = charge(&m);
            st.charged -= cost;
            st.sync_ready_fd();
            self.conn.release_budget(cost);
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

    /// Waits up to `timeout` for the next message (`None`: wait without
    /// limit; zero: do not block). Messages queued before the connection died
    /// are still delivered; after them, the close cause is returned.
    ///
    /// While nobody else is reading the socket, the waiting thread reads it
    /// itself (see `reader`), so a reply reaches it without a thread hop.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Pulled<Message>> {
        self.recv_until(timeout.map(|t| Instant::now() + t))
    }

    /// [`recv_timeout`](Self::recv_timeout) with an absolute deadline, for
    /// callers that already hold one (one clock read fewer per call).
    pub(crate) fn recv_until(&self, deadline: Option<Instant>) -> Result<Pulled<Message>> {
        let conn = &self.conn;
        let mut st = self.shared.state.lock();
        loop {
            match self.pop_locked(&mut st) {
                Ok(Pulled::Nothing) => {}
                done => {
                    self.pass_on_promotion(st);
                    return done;
                }
            }
            st.promoted = false;
            if conn.budget_available() {
                if let Some(read_state) = conn.read_state.try_lock() {
                    // Routing locks subscriptions, ours included: let go of it.
                    drop(st);
                    super::reader::lead(conn, read_state, deadline, || {
                        self.shared.state.lock().readable()
                    });
                    st = self.shared.state.lock();
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
            conn.add_follower(&self.shared);
            let may_lead = !conn.read_state.is_locked() && conn.budget_available();
            let timed_out = if may_lead || st.promoted || st.readable() {
                false
            } else {
                // The ticket is taken under the state lock that every waker
                // takes before it wakes: a wake this check missed makes the
                // wait return at once.
                let ticket = conn.blocked.ticket();
                drop(st);
                let timed_out = conn.blocked.wait(ticket, bit, deadline);
                st = self.shared.state.lock();
                timed_out
            };
            st.waiters -= 1;
            if st.waiters == 0 {
                st.wait_bits = 0;
            }
            conn.remove_follower(&self.shared);
            if timed_out {
                let r = self.pop_locked(&mut st);
                self.pass_on_promotion(st);
                return r;
            }
        }
    }

    /// A waiter asked to lead that returns instead hands the request on, so
    /// that the remaining waiters are not left without a reader.
    fn pass_on_promotion(&self, mut st: MutexGuard<'_, SubState>) {
        if std::mem::take(&mut st.promoted) {
            drop(st);
            self.conn.promote_follower();
        }
    }

    /// Waits for the next message; `Ok(None)` once the stream has ended.
    /// Cancel-safe: dropping the future consumes nothing.
    pub async fn recv(&self) -> Result<Option<Message>> {
        poll_fn(|cx| {
            let mut st = self.shared.state.lock();
            match self.pop_locked(&mut st) {
                Ok(Pulled::Item(m)) => Poll::Ready(Ok(Some(m))),
                Ok(Pulled::Ended) => Poll::Ready(Ok(None)),
                Err(e) => Poll::Ready(Err(e)),
                Ok(Pulled::Nothing) => {
                    st.waker = Some(cx.waker().clone());
                    let newly_passive = !std::mem::replace(&mut st.passive, true);
                    drop(st);
                    if newly_passive {
                        self.conn.add_passive();
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// A file descriptor (eventfd: non-blocking, close-on-exec) that is
    /// readable exactly while a pull would not return `Nothing`. Owned by the
    /// subscription; valid until it is dropped. Created on first use.
    pub fn readiness_fd(&self) -> Result<RawFd> {
        let mut st = self.shared.state.lock();
        if st.ready_fd.is_none() {
            // SAFETY: eventfd has no memory-safety preconditions; the result
            // is checked before it is wrapped.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(Error::io(std::io::Error::last_os_error(), "eventfd"));
            }
            // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
            st.ready_fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
            st.ready_fd_signalled = false;
            st.sync_ready_fd();
        }
        let fd = st.ready_fd.as_ref().unwrap().as_raw_fd();
        // From now until it is dropped, this subscription is waited on
        // without a pulling thread, so the background task reads for it.
        // Registered after unlocking: starting the task may fail the
        // connection, which locks every subscription.
        let newly_passive = !std::mem::replace(&mut st.passive, true);
        drop(st);
        if newly_passive {
            self.conn.add_passive();
        }
        Ok(fd)
    }

    /// Unsubscribes and wakes every thread waiting on this subscription with
    /// [`CloseCause::Cancelled`]; for handles released while in use.
    pub fn cancel(&self) {
        self.conn.unsubscribe(&self.shared);
        let mut st = self.shared.state.lock();
        SubShared::close_locked(&mut st, &CloseCause::Cancelled);
        let (waker, bits) = SubShared::take_wakers(&mut st);
        drop(st);
        self.conn.wake(waker, bits);
        // A thread pulling on this subscription may be the one reading the
        // socket, blocked in poll rather than asleep on its wake bit.
        self.conn.wake_leader();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Once the stream has ended or the connection closed, the route is
        // already gone (whoever set these removed it first, under the
        // routing lock): skip the routing lock, which every request would
        // take.
        let routed = {
            let st = self.shared.state.lock();
            !st.terminal && st.closed.is_none()
        };
        if routed {
            self.conn.unsubscribe(&self.shared);
        }
        let mut st = self.shared.state.lock();
        let charged = std::mem::take(&mut st.charged);
        let passive = std::mem::take(&mut st.passive);
        st.queue.clear();
        drop(st);
        self.conn.release_budget(charged);
        if passive {
            self.conn.remove_passive();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageType;

    fn msg(id: u32) -> Message {
        Message::new(MessageType::FsData, id, Vec::new())
    }

    #[test]
    fn message_queue_keeps_order_across_its_inline_head() {
        let mut q = MessageQueue::default();
        assert!(q.is_empty() && q.pop_front().is_none());
        q.push_back(msg(1));
        q.push_back(msg(2));
        assert_eq!(q.pop_front().unwrap().id, 1);
        // The head is free again but `rest` is not empty: 3 must queue behind 2.
        q.push_back(msg(3));
        q.push_back(msg(4));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_front()).map(|m| m.id).collect();
        assert_eq!(order, [2, 3, 4]);
        assert!(q.is_empty());
        q.push_back(msg(5));
        q.clear();
        assert!(q.is_empty());
    }
}
