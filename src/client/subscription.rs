//! The handle to one correlation id's stream, and the three ways to wait on
//! it: a blocking pull with a timeout, an async `recv`, and a readiness file
//! descriptor for event loops. The stream itself (its queue, its wake-ups)
//! belongs to the connection's reader; this handle only asks it.
//!
//! All three read the same state under one lock, so a pull that times out (or
//! a future that is dropped) never consumes a message.

use std::future::poll_fn;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::error::Result;
use super::reader::{Accept, Stream};
use crate::protocol::Message;

pub use super::reader::Pulled;

/// A subscription to one correlation id. Messages for the id are queued from
/// the moment it exists, so subscribe before sending.
///
/// Thread safety: `Send + Sync`; several threads may pull concurrently (each
/// message goes to exactly one of them). Dropping it unsubscribes and releases
/// whatever it still holds against the memory budget.
pub struct Subscription {
    pub(crate) conn: Arc<Conn>,
    pub(crate) stream: Arc<Stream>,
}

/// Opening streams lives here, beside the handle it returns: the
/// connection itself knows nothing of subscriptions.
impl Conn {
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
}

impl Subscription {
    pub fn id(&self) -> u32 {
        self.stream.id()
    }

    /// Writes to the stdin of the exec this subscription belongs to (see
    /// `Conn::write_stdin`).
    pub(crate) fn write_stdin(&self, data: &[u8], deadline: Instant) -> Result<()> {
        self.conn.write_stdin(&self.stream, data, deadline)
    }

    /// Ends the stdin of the exec this subscription belongs to.
    pub(crate) fn close_stdin(&self, deadline: Instant) -> Result<()> {
        self.conn.close_stdin(&self.stream, deadline)
    }

    /// Waits up to `timeout` for the next message (`None`: wait without
    /// limit; zero: do not block). Messages queued before the stream failed
    /// (the connection died, or the stream overflowed its memory bound) are
    /// still delivered; after them, the cause is returned.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Pulled<Message>> {
        self.recv_until(timeout.map(|t| Instant::now() + t))
    }

    /// [`recv_timeout`](Self::recv_timeout) with an absolute deadline, for
    /// callers that already hold one (one clock read fewer per call).
    pub(crate) fn recv_until(&self, deadline: Option<Instant>) -> Result<Pulled<Message>> {
        self.conn.reader.pull(&self.stream, deadline, &*self.conn)
    }

    /// Waits for the next message; `Ok(None)` once the stream has ended.
    /// Cancel-safe: dropping the future consumes nothing.
    pub async fn recv(&self) -> Result<Option<Message>> {
        // Nobody pulls while this waits: the background thread must read.
        self.conn.ensure_background()?;
        poll_fn(|cx| {
            match self
                .conn
                .reader
                .poll_pull(&self.stream, cx.waker(), &*self.conn)
            {
                Ok(Pulled::Item(m)) => Poll::Ready(Ok(Some(m))),
                Ok(Pulled::Ended) => Poll::Ready(Ok(None)),
                Err(e) => Poll::Ready(Err(e)),
                Ok(Pulled::Nothing) => Poll::Pending,
            }
        })
        .await
    }

    /// A file descriptor (non-blocking, close-on-exec; an eventfd on Linux,
    /// a pipe's read end elsewhere) that is readable exactly while a pull
    /// would not return `Nothing`. Owned by the subscription; valid until it
    /// is dropped. Created on first use.
    pub fn readiness_fd(&self) -> Result<RawFd> {
        // Whoever polls it pulls only once it is readable: the background
        // thread must read meanwhile (for frames, and for the end).
        self.conn.ensure_background()?;
        self.conn.reader.readiness_fd(&self.stream)
    }

    /// Unsubscribes and wakes every thread waiting on this subscription with
    /// [`CloseCause::Cancelled`](super::CloseCause::Cancelled); for handles
    /// released while in use.
    pub fn cancel(&self) {
        self.conn.reader.cancel(&self.stream);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.conn.reader.release_stream(&self.stream, &*self.conn);
    }
}
