//! One connection to a relay: the socket, the writer, and the reader that
//! owns everything about receiving (see `reader`).
//!
//! Writes happen on the caller's thread (no hop through a channel): a frame
//! is encoded into a small head buffer and sent with one write, under a lock
//! that keeps frames whole. A small payload is copied behind the head; a
//! large one goes out by reference in the same (vectored) write. A send that
//! finds the socket full blocks in the kernel, bounded by its deadline.
//!
//! Each connection has one background thread, which keeps the socket read
//! whenever no caller does (see `reader`), and which is joined when the
//! client is freed. It starts with the first send or the first passive
//! wait (a readiness fd, an async `recv`): relays send nothing unasked after
//! the handshake, so a client that never sent has nothing to read but the
//! end of the connection, which a blocking pull reads itself; connecting
//! costs no thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::error::{CloseCause, Error, Result};
use super::flow;
use super::ids::IdAllocator;
use super::peer::Peer;
use super::platform;
use super::reader::{set_socket_timeout, Backpressure, Counters, Outbox, Reader, Stream};
use super::sync::{CacheAligned, Mutex, TimedLock};
use crate::protocol::{encode_frame_head, encoded_len, MessageType, MAX_FRAME_SIZE};

/// Stack of the background thread: it runs only the reader, no caller code.
const BACKGROUND_STACK: usize = 128 * 1024;

/// How long the reader may spend sending the kill for an exec whose output
/// overflowed: it must get back to reading.
const KILL_SEND_TIMEOUT: Duration = Duration::from_millis(200);

pub(crate) struct Conn {
    fd: OwnedFd,
    /// What the handshake said; gives the `v` every frame is stamped with.
    pub(crate) peer: Arc<Peer>,
    writer: CacheAligned<TimedLock>,
    pub(crate) reader: Reader,
    /// The background reader thread, started by the first send or passive
    /// wait (see the module docs); taken when joined.
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
    background_started: AtomicBool,
    /// This connection, for the thread to hold on to.
    this: Weak<Conn>,
}

impl Conn {
    pub(crate) fn new(
        fd: OwnedFd,
        ids: IdAllocator,
        peer: Arc<Peer>,
        budget: usize,
        backpressure: Backpressure,
        exec_limits: Option<crate::protocol::payload::ExecLimits>,
    ) -> Result<Arc<Conn>> {
        platform::prepare_socket(fd.as_raw_fd())
            .map_err(|e| Error::io(e, "preparing the socket"))?;
        let exec_limits = exec_limits.map(|l| flow::ExecLimits::from(&l));
        let reader = Reader::new(fd.as_raw_fd(), ids, budget, backpressure, exec_limits)
            .map_err(|e| Error::io(e, "creating the reader's events"))?;
        Ok(Arc::new_cyclic(|this| Conn {
            fd,
            peer,
            writer: CacheAligned::default(),
            reader,
            background: Mutex::new(None),
            background_started: AtomicBool::new(false),
            this: this.clone(),
        }))
    }

    /// Starts the background reader unless it runs already: before the
    /// first frame goes out, so that whatever comes back is read whatever
    /// the caller does.
    #[inline]
    pub(crate) fn ensure_background(&self) -> Result<()> {
        if self.background_started.load(Ordering::Acquire) {
            return Ok(());
        }
        self.start_background()
    }

    #[cold]
    fn start_background(&self) -> Result<()> {
        let mut slot = self.background.lock();
        if self.background_started.load(Ordering::Acquire) {
            return Ok(());
        }
        // Checked under the slot's lock: a close that joined already left
        // nothing to join a new thread, so none may start.
        self.reader.check_open()?;
        let Some(conn) = self.this.upgrade() else {
            return self.reader.check_open();
        };
        let started = std::thread::Builder::new()
            .name("msb-client".into())
            .stack_size(BACKGROUND_STACK)
            .spawn(move || conn.reader.run_background(&*conn));
        match started {
            Ok(handle) => {
                *slot = Some(handle);
                self.background_started.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                drop(slot);
                // Without it, an unread socket would stall the relay.
                self.fail(CloseCause::Io(format!("starting the reader thread: {e}")));
                Err(Error::io(e, "starting the reader thread"))
            }
        }
    }

    pub(crate) fn close_cause(&self) -> Option<CloseCause> {
        self.reader.close_cause()
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
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
            use std::os::unix::thread::JoinHandleExt;
            // Compared by pthread id: `thread::current()` would allocate a
            // handle for a caller's thread that the library never frees.
            // SAFETY: pthread_self has no preconditions and cannot fail.
            let this_thread = unsafe { libc::pthread_self() };
            if h.as_pthread_t() as libc::pthread_t != this_thread {
                let _ = h.join();
            }
        }
    }

    pub(crate) fn counters(&self) -> Counters {
        self.reader.counters()
    }

    /// An id of our range that has no live subscription right now, for a
    /// caller that subscribes to it later.
    pub(crate) fn alloc_id(&self) -> Result<u32> {
        self.reader.alloc_id()
    }

    /// Checks the id of an outgoing frame (see `IdAllocator::check_send`).
    pub(crate) fn check_send_id(&self, message_type: &MessageType, id: u32) -> Result<()> {
        self.reader.ids().check_send(message_type, id)
    }

    /// Makes the reader panic on its next read (tests of panic containment).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn inject_reader_panic(&self) {
        self.reader.inject_panic();
    }

    // ------------------------------------------------------------ stdin

    /// Writes `data` to the stdin of the exec on `sub`. With exec flow
    /// control, waits for `core.exec.started` and for room in the input
    /// window, in chunks of `stdin_chunk_size`; otherwise sends at once, in
    /// chunks of [`LEGACY_STDIN_CHUNK`]. All within `deadline`.
    pub(crate) fn write_stdin(
        &self,
        stream: &Arc<Stream>,
        data: &[u8],
        deadline: Instant,
    ) -> Result<()> {
        if !self.reader.exec_flow_control() {
            for chunk in data.chunks(LEGACY_STDIN_CHUNK) {
                self.send_stdin(stream.id(), chunk, deadline)?;
            }
            return Ok(());
        }
        let mut rest = data;
        while !rest.is_empty() {
            let Some(n) = self
                .reader
                .reserve_stdin(stream, rest.len(), deadline, self)?
            else {
                // The process has ended: its stdin goes nowhere, as on a
                // relay without flow control.
                return Ok(());
            };
            if let Err(e) = self.send_stdin(stream.id(), &rest[..n], deadline) {
                self.reader.unreserve_stdin(stream, n);
                return Err(e);
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Ends the exec's stdin with the empty chunk; with flow control, only
    /// once it has started, and never twice.
    pub(crate) fn close_stdin(&self, stream: &Arc<Stream>, deadline: Instant) -> Result<()> {
        // Ended (or never started): nothing to close.
        if self.reader.exec_flow_control()
            && self
                .reader
                .reserve_stdin(stream, 0, deadline, self)?
                .is_none()
        {
            return Ok(());
        }
        self.send_stdin(stream.id(), &[], deadline)
    }

    /// One `core.exec.stdin` frame, the data written from the caller's buffer.
    fn send_stdin(&self, id: u32, data: &[u8], deadline: Instant) -> Result<()> {
        let mut prefix = Vec::with_capacity(16);
        crate::protocol::payload::Data::encode_head(data.len(), &mut prefix);
        self.send(&MessageType::ExecStdin, id, &[&prefix, data], deadline)
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
        // the relay's, and only `core.shutdown` is addressed to it. Every
        // send goes through here, so none escapes the check (the type is
        // parsed only for ids outside the range).
        if !self.reader.ids().range().contains(id) {
            self.reader
                .ids()
                .check_send(&MessageType::from_wire(message_type), id)?;
        }
        self.ensure_background()?;
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

/// Stdin frames carry at most this much without flow control, well under
/// the frame limit.
pub(crate) const LEGACY_STDIN_CHUNK: usize = 1024 * 1024;

/// How long the reader or a pulling caller may spend sending an output
/// acknowledgement; it is small, and the socket is rarely full.
const ACK_SEND_TIMEOUT: Duration = Duration::from_secs(5);

impl Outbox for Conn {
    fn ack_output(&self, id: u32, consumed: u64) {
        let payload = flow::encode_consumed(consumed);
        // A lost acknowledgement would stall the guest: a send that fails
        // has failed the connection (or it was closed) anyway.
        let _ = self.send(
            &MessageType::ExecOutputAck,
            id,
            &[&payload],
            Instant::now() + ACK_SEND_TIMEOUT,
        );
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_frame, Message};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::super::reader::{
        Pulled, OVERFLOW_GRACE, PER_MESSAGE_OVERHEAD, READ_BUFFER, TAKEOVER_GRACE,
    };
    use super::super::subscription::Subscription;
    use super::super::testing::test_conn;
    use crate::protocol::payload::ExecLimits;
    use crate::protocol::{MessageType, LEGACY_ID_RANGE_STEP as ID_RANGE_STEP};

    const BUDGET: usize = 256 * 1024;

    /// A connection on one end of a socket pair, with the test as the relay
    /// on the other; slot 1's id range.
    fn pair(backpressure: Backpressure) -> (Arc<Conn>, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let conn = test_conn(OwnedFd::from(ours), BUDGET, backpressure, None);
        (conn, peer)
    }

    fn frame(t: &str, id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, t, id, flags, 10, payload);
        out
    }

    fn pull(sub: &Subscription, ms: u64) -> Result<Pulled<Message>> {
        sub.recv_timeout(Some(Duration::from_millis(ms)))
    }

    #[test]
    fn an_unread_stream_fails_alone_and_the_socket_keeps_being_read() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let flood = conn.subscribe_new(None).unwrap();
        let other = conn.subscribe_new(None).unwrap();
        // Far more than the budget and the socket buffers together: the
        // writes finish only because the background thread keeps reading
        // while nobody pulls.
        let chunk = frame("core.fs.data", flood.id(), 0, &[7u8; 32 * 1024]);
        let writer = {
            let mut peer = peer.try_clone().unwrap();
            std::thread::spawn(move || {
                for _ in 0..256 {
                    peer.write_all(&chunk).unwrap();
                }
            })
        };
        writer.join().unwrap();
        peer.write_all(&frame("core.fs.data", other.id(), 1, b"hi"))
            .unwrap();
        match pull(&other, 5000).unwrap() {
            Pulled::Item(m) => assert_eq!(&m.payload[..], b"hi"),
            p => panic!("{p:?}"),
        }
        let k = conn.counters();
        // The read that filled the budget is queued whole: one read buffer.
        assert!(k.bytes_queued <= (BUDGET + 320 * 1024) as u64, "{k:?}");
        assert!(k.dropped_overflow > 0, "{k:?}");
        // What was queued before the overflow comes first, then the error.
        let mut delivered = 0;
        let err = loop {
            match pull(&flood, 1000) {
                Ok(Pulled::Item(m)) => delivered += m.payload.len(),
                Ok(p) => panic!("{p:?}"),
                Err(e) => break e,
            }
        };
        assert!(delivered > BUDGET / 2, "delivered {delivered}");
        assert!(
            matches!(&err, Error::Closed(CloseCause::StreamOverflow(_))),
            "{err}"
        );
        assert!(conn.close_cause().is_none(), "the connection lives");
        assert_eq!(conn.counters().bytes_queued, 0);
    }

    #[test]
    fn a_burst_for_a_stream_being_pulled_does_not_overflow_a_small_budget() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let conn = test_conn(
            OwnedFd::from(ours),
            64 * 1024,
            Backpressure::FailStream,
            None,
        );
        let sub = conn.subscribe_new(None).unwrap();
        let burst: Vec<u8> = (0..12)
            .flat_map(|_| frame("core.fs.data", sub.id(), 0, &[5u8; 16 * 1024]))
            .collect();
        let puller = {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let mut got = 0;
                while got < 12 {
                    match pull(&sub, 5000) {
                        Ok(Pulled::Item(m)) => assert_eq!(m.payload.len(), 16 * 1024),
                        other => panic!("{:?}", other.map(|_| ())),
                    }
                    got += 1;
                }
                drop(conn);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        // 192 KiB in one write, three budgets: one read takes most of it.
        peer.write_all(&burst).unwrap();
        puller.join().unwrap();
        assert_eq!(conn.counters().dropped_overflow, 0);
    }

    #[test]
    fn a_full_budget_releases_the_largest_other_stream() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let big = conn.subscribe_new(None).unwrap();
        let small = conn.subscribe_new(None).unwrap();
        for _ in 0..8 {
            peer.write_all(&frame("core.fs.data", big.id(), 0, &[1u8; 32 * 1024]))
                .unwrap();
        }
        let started = Instant::now();
        while conn.counters().frames_received < 8 {
            assert!(started.elapsed() < Duration::from_secs(5), "not read");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The budget is full: once the grace has run out, `small` needs
        // room, `big` holds the most, so it fails and what it held is
        // released.
        for _ in 0..3 {
            peer.write_all(&frame("core.fs.data", small.id(), 0, &[2u8; 20 * 1024]))
                .unwrap();
        }
        // Nobody pulls until the background thread has routed all eleven
        // (a pulled stream may pass the budget by one read).
        while conn.counters().frames_received < 11 {
            assert!(started.elapsed() < Duration::from_secs(5), "not read");
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..3 {
            match pull(&small, 5000).unwrap() {
                Pulled::Item(m) => assert_eq!(m.payload.len(), 20 * 1024),
                p => panic!("{p:?}"),
            }
        }
        match pull(&big, 1000) {
            Err(Error::Closed(CloseCause::StreamOverflow(d))) => {
                assert!(d.contains("released"), "{d}")
            }
            other => panic!("{:?}", other.map(|p| matches!(p, Pulled::Item(_)))),
        }
        assert!(conn.counters().dropped_overflow >= 8);
    }

    #[test]
    fn a_stream_pulled_slower_than_it_arrives_never_overflows() {
        const FRAME: usize = 32 * 1024;
        const FRAMES: usize = 40;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        // Two frames fill the budget; twenty budgets are streamed.
        let conn = test_conn(
            OwnedFd::from(ours),
            64 * 1024,
            Backpressure::FailStream,
            None,
        );
        let sub = conn.subscribe_new(None).unwrap();
        let id = sub.id();
        let writer = std::thread::spawn(move || {
            for i in 0..FRAMES {
                peer.write_all(&frame("core.fs.data", id, 0, &[i as u8; FRAME]))
                    .unwrap();
            }
            peer
        });
        let mut received = 0;
        for i in 0..FRAMES {
            // Slower than the peer writes, but never idle for the grace.
            std::thread::sleep(Duration::from_millis(50));
            match pull(&sub, 5000) {
                Ok(Pulled::Item(m)) => {
                    assert_eq!(m.payload.len(), FRAME);
                    assert!(m.payload.iter().all(|&b| b == i as u8), "frame {i}");
                    received += m.payload.len();
                }
                other => panic!("frame {i}: {:?}", other.map(|_| ())),
            }
        }
        // Kept open: its end would close the connection.
        let _peer = writer.join().unwrap();
        assert_eq!(received, FRAME * FRAMES);
        let k = conn.counters();
        assert_eq!(k.dropped_overflow, 0, "{k:?}");
        assert!(conn.close_cause().is_none());
    }

    #[test]
    fn a_quiet_stream_that_filled_the_budget_holds_a_pulled_stream_back_one_grace_at_most() {
        const QUIET_FRAME: usize = 30 * 1024;
        const QUIET_FRAMES: usize = 9; // a little over the budget, then silence
        const LIVE: usize = 20;
        let (conn, peer) = pair(Backpressure::FailStream);
        let quiet = conn.subscribe_new(None).unwrap();
        let live = conn.subscribe_new(None).unwrap();
        let (pulled_tx, pulled_rx) = std::sync::mpsc::channel::<()>();
        let (quiet_id, live_id) = (quiet.id(), live.id());
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            for i in 0..QUIET_FRAMES {
                let f = frame("core.fs.data", quiet_id, 0, &[i as u8; QUIET_FRAME]);
                peer.write_all(&f).unwrap();
            }
            // One message at a time, each a little after the last was
            // pulled, when the caller is blocked pulling the next: the live
            // stream never has a backlog of its own.
            for i in 0..LIVE {
                peer.write_all(&frame("core.fs.data", live_id, 0, &[i as u8; 1024]))
                    .unwrap();
                if pulled_rx.recv().is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            peer
        });
        let started = Instant::now();
        for i in 0..LIVE {
            match pull(&live, 5000) {
                Ok(Pulled::Item(m)) => assert!(m.payload.iter().all(|&b| b == i as u8)),
                other => panic!("live message {i}: {:?}", other.map(|_| ())),
            }
            pulled_tx.send(()).unwrap();
        }
        let took = started.elapsed();
        let _peer = writer.join().unwrap();
        // The budget filled once, so the live stream waited for one grace
        // at most (plus the writer's 20 pauses of 30 ms); were every
        // message to wait for a grace of its own, this would take twenty.
        assert!(
            took < OVERFLOW_GRACE * 2 + Duration::from_millis(1000),
            "took {took:?}"
        );
        // Every live message found its caller blocked pulling it, which
        // takes it past a full budget; the quiet stream sent nothing more,
        // so nothing had to make room and it keeps all it received. (Had a
        // live message come while its caller was busy, the quiet stream,
        // holding the most, would have been failed to make room.)
        for i in 0..QUIET_FRAMES {
            match pull(&quiet, 0) {
                Ok(Pulled::Item(m)) => {
                    assert_eq!(m.payload.len(), QUIET_FRAME);
                    assert!(m.payload.iter().all(|&b| b == i as u8), "quiet frame {i}");
                }
                other => panic!("quiet frame {i}: {:?}", other.map(|_| ())),
            }
        }
        assert_eq!(conn.counters().dropped_overflow, 0);
        assert!(conn.close_cause().is_none());
    }

    #[test]
    fn a_stream_nobody_pulls_fails_after_the_grace_and_the_connection_lives() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let flood = conn.subscribe_new(None).unwrap();
        let other = conn.subscribe_new(None).unwrap();
        let chunk = frame("core.fs.data", flood.id(), 0, &[9u8; 32 * 1024]);
        let started = Instant::now();
        let writer = {
            let mut peer = peer.try_clone().unwrap();
            std::thread::spawn(move || {
                // Eight budgets: more than the socket buffers hold.
                for _ in 0..64 {
                    peer.write_all(&chunk).unwrap();
                }
            })
        };
        while conn.counters().dropped_overflow == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "never failed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let failed_after = started.elapsed();
        assert!(failed_after >= OVERFLOW_GRACE, "{failed_after:?}");
        assert!(failed_after < Duration::from_secs(3), "{failed_after:?}");
        writer.join().unwrap();
        let err = loop {
            match pull(&flood, 1000) {
                Ok(Pulled::Item(_)) => {}
                Ok(p) => panic!("{p:?}"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(&err, Error::Closed(CloseCause::StreamOverflow(_))),
            "{err}"
        );
        peer.write_all(&frame("core.fs.data", other.id(), 1, b"still here"))
            .unwrap();
        match pull(&other, 5000).unwrap() {
            Pulled::Item(m) => assert_eq!(&m.payload[..], b"still here"),
            p => panic!("{p:?}"),
        }
        assert!(conn.close_cause().is_none(), "the connection lives");
    }

    #[test]
    fn pausing_the_socket_holds_back_the_peer_and_loses_nothing() {
        let (conn, mut peer) = pair(Backpressure::PauseSocket);
        let sub = conn.subscribe_new(None).unwrap();
        peer.set_nonblocking(true).unwrap();
        let chunk = frame("core.fs.data", sub.id(), 0, &[3u8; 32 * 1024]);
        let mut sent = 0usize;
        let started = Instant::now();
        // Write until the socket stays full: the reader stopped reading.
        let mut stalled_since = None;
        while started.elapsed() < Duration::from_secs(5) {
            match peer.write(&chunk[sent % chunk.len()..]) {
                Ok(n) => {
                    sent += n;
                    stalled_since = None;
                }
                Err(_) => {
                    let s = *stalled_since.get_or_insert_with(Instant::now);
                    if s.elapsed() > TAKEOVER_GRACE * 10 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert!(stalled_since.is_some(), "the peer was never held back");
        let k = conn.counters();
        // The documented bound: the budget plus what the read that filled
        // it brought, which is queued whole (frames this size are read many
        // to a read buffer).
        assert!(
            k.bytes_queued as usize <= BUDGET + READ_BUFFER + 8 * PER_MESSAGE_OVERHEAD,
            "{k:?}"
        );
        assert!(k.bytes_queued as usize >= BUDGET, "{k:?}");
        assert_eq!(k.dropped_overflow, 0);
        let _ = sent;
    }

    #[test]
    fn a_frame_cut_off_by_eof_is_a_protocol_error_naming_the_cut() {
        for (body, size) in [(100usize, 100 + 9 + 30), (20 * 1024, 20 * 1024 + 9 + 30)] {
            let (conn, mut peer) = pair(Backpressure::FailStream);
            let sub = conn.subscribe_new(None).unwrap();
            let whole = frame("core.fs.data", sub.id(), 0, &vec![0u8; body]);
            let cut = whole.len() / 2;
            peer.write_all(&whole[..cut]).unwrap();
            drop(peer);
            match pull(&sub, 5000) {
                Err(Error::Closed(CloseCause::Protocol(e))) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!(
                            "frame of {} bytes cut off after {cut}",
                            whole.len()
                        )),
                        "{text} (frame {} ~ {size})",
                        whole.len()
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // EOF between frames stays an ordinary close.
        let (conn, peer) = pair(Backpressure::FailStream);
        let sub = conn.subscribe_new(None).unwrap();
        drop(peer);
        assert!(matches!(
            pull(&sub, 5000),
            Err(Error::Closed(CloseCause::Eof))
        ));
    }

    #[test]
    fn sends_outside_the_range_are_refused() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let deadline = Instant::now() + Duration::from_secs(1);
        for id in [1, ID_RANGE_STEP, 2 * ID_RANGE_STEP, u32::MAX] {
            let r = conn.send(&MessageType::FsData, id, &[b""], deadline);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{id}: {r:?}");
        }
        assert!(matches!(
            conn.send_with_flags("core.fs.data", 0, 0, &[], deadline),
            Err(Error::InvalidArgument(_))
        ));
        conn.send_with_flags("core.shutdown", 0, 4, &[], deadline)
            .unwrap();
        conn.send(&MessageType::FsData, ID_RANGE_STEP + 1, &[b""], deadline)
            .unwrap();
        drop(conn);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
    }

    #[test]
    fn a_reader_panic_wakes_every_waiter_with_an_error() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let blocking = conn.subscribe_new(None).unwrap();
        let passive = conn.subscribe_new(None).unwrap();
        let fd = passive.readiness_fd().unwrap();
        let puller =
            std::thread::spawn(move || blocking.recv_timeout(Some(Duration::from_secs(20))));
        std::thread::sleep(TAKEOVER_GRACE * 3);
        // Whoever reads next panics: the blocked puller or the background
        // thread (which reads for the readiness fd); some data makes sure
        // one of them reads.
        conn.inject_reader_panic();
        peer.write_all(&frame("core.fs.data", ID_RANGE_STEP + 5, 0, b"x"))
            .unwrap();
        let r = puller.join().unwrap();
        assert!(
            matches!(&r, Err(Error::Closed(CloseCause::ReaderPanicked(_)))),
            "{:?}",
            r.map(|_| ())
        );
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "fd readable");
        assert!(matches!(
            pull(&passive, 0),
            Err(Error::Closed(CloseCause::ReaderPanicked(_)))
        ));
        // A later pull fails at once instead of reading a dead socket.
        let late = conn.subscribe_new(None);
        assert!(matches!(late, Err(Error::Closed(_))));
        conn.join_background();
    }

    #[test]
    fn a_panic_on_the_background_thread_fails_the_connection() {
        let (conn, mut peer) = pair(Backpressure::FailStream);
        let passive = conn.subscribe_new(None).unwrap();
        let fd = passive.readiness_fd().unwrap();
        // Nobody leads: only the background thread reads.
        conn.inject_reader_panic();
        peer.write_all(&frame("core.fs.data", ID_RANGE_STEP + 5, 0, b"x"))
            .unwrap();
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "fd readable");
        match pull(&passive, 0) {
            Err(Error::Closed(CloseCause::ReaderPanicked(m))) => {
                assert!(m.contains("injected"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let handle = conn.background.lock().take().unwrap();
        assert!(handle.join().is_ok(), "the thread ended without unwinding");
    }

    /// Reads frames from the peer's end until `n` arrived or `wait` passed.
    fn read_frames(peer: &mut UnixStream, n: usize, wait: Duration) -> Vec<Message> {
        use crate::protocol::FrameDecoder;
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        let until = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < n && Instant::now() < until {
            if let Ok(k) = peer.read(&mut buf) {
                d.extend(&buf[..k]);
            }
            while let Ok(Some(raw)) = d.next_frame() {
                got.push(raw.decode().unwrap());
            }
        }
        got
    }

    fn consumed_of(m: &Message) -> u64 {
        flow::decode_consumed(&m.payload).unwrap()
    }

    #[test]
    fn exec_flow_control_follows_the_worked_exchange() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let limits = ExecLimits::default();
        let conn = test_conn(
            OwnedFd::from(ours),
            BUDGET,
            Backpressure::FailStream,
            Some(limits),
        );
        let sub = Arc::new(conn.subscribe_new(None).unwrap());
        let id = sub.id();
        let writer = {
            let (conn, sub) = (conn.clone(), sub.clone());
            std::thread::spawn(move || {
                let data = vec![b'x'; 70_000];
                conn.write_stdin(&sub.stream, &data, Instant::now() + Duration::from_secs(20))
            })
        };
        // No stdin before core.exec.started.
        assert!(read_frames(&mut peer, 1, Duration::from_millis(200)).is_empty());
        peer.write_all(&frame(
            "core.exec.started",
            id,
            0,
            &[0xa1, 0x63, b'p', b'i', b'd', 0x18, 0x4d],
        ))
        .unwrap();
        // Four chunks of 16 384 fill input_limit; then nothing until an ack.
        let chunks = read_frames(&mut peer, 5, Duration::from_millis(500));
        assert_eq!(chunks.len(), 4, "input_limit holds back the fifth chunk");
        for c in &chunks {
            assert_eq!(c.message_type, MessageType::ExecStdin);
            assert_eq!(
                c.version, 10,
                "every frame of the connection carries v = 10"
            );
            assert_eq!(flow::data_len(&c.payload), 16_384);
        }
        let mut ack = [0xa1, 0x68].to_vec();
        ack.extend_from_slice(b"consumed");
        ack.extend_from_slice(&[0x19, 0x80, 0x00]);
        peer.write_all(&frame("core.exec.stdin.ack", id, 0, &ack))
            .unwrap();
        let rest = read_frames(&mut peer, 2, Duration::from_secs(1));
        let sizes: Vec<usize> = rest.iter().map(|m| flow::data_len(&m.payload)).collect();
        assert_eq!(sizes, [70_000 - 4 * 16_384]);
        writer.join().unwrap().unwrap();

        // Output: "a" and "bb" queued together, consumed: one ack of 515.
        let out = |d: &[u8]| {
            let mut p = vec![0xa1, 0x64, b'd', b'a', b't', b'a', 0x40 | d.len() as u8];
            p.extend_from_slice(d);
            frame("core.exec.stdout", id, 0, &p)
        };
        let received = conn.counters().frames_received;
        peer.write_all(&[out(b"a"), out(b"bb")].concat()).unwrap();
        while conn.counters().frames_received < received + 2 {
            std::thread::sleep(Duration::from_millis(2));
        }
        // The started event, then the two chunks; the stdin ack was not queued.
        for _ in 0..3 {
            assert!(matches!(pull(&sub, 1000).unwrap(), Pulled::Item(_)));
        }
        let acks = read_frames(&mut peer, 2, Duration::from_millis(300));
        assert_eq!(acks.len(), 1, "one acknowledgement for the batch");
        assert_eq!(acks[0].message_type, MessageType::ExecOutputAck);
        assert_eq!(acks[0].version, 10);
        assert_eq!(consumed_of(&acks[0]), 515);
        peer.write_all(&out(b"ccc")).unwrap();
        assert!(matches!(pull(&sub, 5000).unwrap(), Pulled::Item(_)));
        let acks = read_frames(&mut peer, 1, Duration::from_secs(5));
        assert_eq!(consumed_of(&acks[0]), 774);

        // EOF only once; stdin after it is refused.
        conn.close_stdin(&sub.stream, Instant::now() + Duration::from_secs(5))
            .unwrap();
        let eof = read_frames(&mut peer, 1, Duration::from_secs(5));
        assert_eq!(eof[0].message_type, MessageType::ExecStdin);
        assert_eq!(flow::data_len(&eof[0].payload), 0);
        assert!(conn
            .write_stdin(
                &sub.stream,
                b"late",
                Instant::now() + Duration::from_secs(1)
            )
            .is_err());

        // Output left unread when the exec is freed is acknowledged too.
        let received = conn.counters().frames_received;
        peer.write_all(&out(b"dddd")).unwrap();
        while conn.counters().frames_received < received + 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(Arc::try_unwrap(sub).ok().unwrap());
        let acks = read_frames(&mut peer, 1, Duration::from_secs(5));
        assert_eq!(consumed_of(&acks[0]), 774 + 4 + 256);
    }

    #[test]
    fn stdin_waits_for_the_start_only_within_its_deadline() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let limits = ExecLimits::default();
        let conn = test_conn(
            OwnedFd::from(ours),
            BUDGET,
            Backpressure::FailStream,
            Some(limits),
        );
        let sub = conn.subscribe_new(None).unwrap();
        let started = Instant::now();
        let r = conn.write_stdin(&sub.stream, b"x", started + Duration::from_millis(100));
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            conn.close_stdin(&sub.stream, Instant::now() + Duration::from_millis(50)),
            Err(Error::Timeout(_))
        ));
    }

    #[test]
    fn the_real_reader_frames_streams_whatever_the_splits() {
        use super::super::testing::drive_reader;
        let mut stream = Vec::new();
        let sizes = [
            0usize,
            1,
            100,
            8 * 1024 - 40,
            8 * 1024,
            20_000,
            70_000,
            300_000,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
            let first = *super::super::testing::SUBSCRIBED_IDS.start();
            encode_frame(
                &mut stream,
                "core.fs.data",
                first + (i as u32 % 3),
                0,
                10,
                &payload,
            );
            encode_frame(&mut stream, "x.unknown", first + 500, 0, 10, b"dropped");
        }
        let cuts_list: [&[usize]; 4] = [
            &[],
            &[1, 2, 3, 4, 5],
            &[9, 8200, 8300, 30_000],
            &[100_000, 200_000, 350_000],
        ];
        for cuts in cuts_list {
            let run = drive_reader(&stream, cuts);
            assert!(matches!(run.close, CloseCause::Eof), "{}", run.close);
            let got: Vec<usize> = run
                .delivered
                .iter()
                .flatten()
                .map(|m| m.payload.len())
                .collect();
            assert_eq!(got.len(), sizes.len(), "{cuts:?}");
            assert_eq!(run.counters.dropped_no_subscriber, sizes.len() as u64);
            assert_eq!(run.counters.bytes_queued, 0);
        }
        // Cut off inside a large frame, at every kind of point.
        for end in [stream.len() - 1, 20, 8 * 1024 + 100] {
            let run = drive_reader(&stream[..end], &[10]);
            assert!(
                matches!(run.close, CloseCause::Protocol(_)),
                "{end}: {}",
                run.close
            );
        }
    }
}
