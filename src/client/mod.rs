//! The connection engine: connect and handshake, id allocation, routing of
//! frames to subscriptions, bounded memory, and the exec and filesystem
//! conversations built on top. No C in here; the ABI wraps it.
//!
//! Threads: sends run on the caller's thread, and a caller blocked in a pull
//! reads the socket itself. Each [`Client`] also has one background thread,
//! started by its first send or readiness fd, that reads the socket whenever no caller
//! does, so the relay never sees a client that stops reading (see
//! `reader`). When the last handle to a client is dropped, the connection
//! is closed and that thread is joined, so nothing of ours keeps running.
//! Memory: the bound is stated once, in the README ("Memory, and what a
//! hostile guest can do").

mod conn;
pub mod errno;
mod error;
pub mod exec;
mod flow;
pub mod fs;
pub mod handles;
mod handshake;
mod ids;
pub mod liveness;
mod paths;
mod peer;
mod platform;
mod pool;
mod reader;
mod subscription;
mod sync;
pub mod tcp;
#[cfg(any(test, feature = "test-hooks"))]
#[doc(hidden)]
pub mod testing;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use error::{CloseCause, Error, ExecFailure, Result};
pub use ids::IdRange;
pub use paths::{path_to_nul_terminated, sandbox_socket_path};
pub use peer::{Form, Peer};
pub use reader::{Backpressure, Counters, OVERFLOW_GRACE};
pub use subscription::{Pulled, Subscription};

use crate::protocol::payload::Ready;
use crate::protocol::{Message, MessageType, ProtocolError, FLAG_SHUTDOWN};
use conn::Conn;
use ids::IdAllocator;

/// Default deadline for connect plus handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default memory budget for received messages not yet pulled (see the
/// README's "Memory" section for the bound it gives).
pub const DEFAULT_MEMORY_BUDGET: usize = 16 * 1024 * 1024;
/// Smallest budget accepted: below it, normal traffic would stall.
pub const MIN_MEMORY_BUDGET: usize = 64 * 1024;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// One deadline for connecting and completing the handshake.
    pub connect_timeout: Duration,
    /// Memory that unread messages may hold; what happens when it is full
    /// is `backpressure`'s choice. The README's "Memory" section states the
    /// bound this gives.
    pub memory_budget: usize,
    /// Fail the largest stream (the default), or pause the socket.
    pub backpressure: Backpressure,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            backpressure: Backpressure::default(),
        }
    }
}

struct ClientInner {
    conn: Arc<Conn>,
    peer: Arc<Peer>,
    ready: Ready,
    ready_payload: Bytes,
    /// Files open through [`handles::File`] on this connection.
    open_files: handles::OpenFiles,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.conn.fail(CloseCause::ClosedByCaller);
        self.conn.join_background();
    }
}

/// A connection to one relay. Cheap to clone; all clones share the
/// connection, which closes when the last one is dropped.
///
/// Thread safety: `Send + Sync`; every method may be called from any thread
/// concurrently. Frames sent concurrently are never interleaved.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// Connects to the relay socket at `path` and completes the handshake,
    /// all within `options.connect_timeout`.
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Client> {
        let deadline = Instant::now() + options.connect_timeout;
        let fd = handshake::connect_unix(path.as_ref(), deadline)?;
        Self::start(fd, options, deadline)
    }

    /// Connects to a sandbox by name (see [`sandbox_socket_path`]).
    pub fn connect_sandbox(name: &str, options: &ClientOptions) -> Result<Client> {
        Self::connect(sandbox_socket_path(name)?, options)
    }

    /// Takes over an already-connected stream socket and performs the
    /// handshake on it. The descriptor is owned by the client from now on.
    pub fn from_fd(fd: OwnedFd, options: &ClientOptions) -> Result<Client> {
        let deadline = Instant::now() + options.connect_timeout;
        handshake::prepare_fd(&fd)?;
        Self::start(fd, options, deadline)
    }

    fn start(fd: OwnedFd, options: &ClientOptions, deadline: Instant) -> Result<Client> {
        if options.memory_budget < MIN_MEMORY_BUDGET {
            return Err(Error::InvalidArgument(format!(
                "memory budget {} is below the minimum of {MIN_MEMORY_BUDGET} bytes",
                options.memory_budget
            )));
        }
        let hs = handshake::read_handshake(&fd, deadline)?;
        let ready = Ready::decode_payload(&hs.ready.payload)?;
        let peer = Arc::new(Peer::new(
            hs.form,
            hs.ready.version,
            &ready.agent_version,
            ready.exec_limits,
            hs.range,
        ));
        let ids = IdAllocator::new(hs.range, hs.form);
        // Exec flow control whenever the sandbox offers it (generation 10
        // and exec limits): decided before the first frame, as every frame
        // of the connection then carries v = 10.
        let exec_limits = if peer.enable_flow_control() {
            peer.exec_limits().copied()
        } else {
            None
        };
        let conn = Conn::new(
            fd,
            ids,
            peer.clone(),
            options.memory_budget,
            options.backpressure,
            exec_limits,
        )?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                conn,
                peer,
                ready,
                ready_payload: hs.ready.payload,
                open_files: handles::OpenFiles::default(),
            }),
        })
    }

    /// The relay and agent at the other end: handshake form, generations,
    /// agent version, id range.
    pub fn peer(&self) -> &Peer {
        &self.inner.peer
    }

    /// Files open through [`handles::File`] on this connection.
    pub fn open_files(&self) -> &handles::OpenFiles {
        &self.inner.open_files
    }

    /// The relay's `core.ready`.
    pub fn ready(&self) -> &Ready {
        &self.inner.ready
    }

    /// The raw CBOR payload of `core.ready`, as received.
    pub fn ready_payload(&self) -> &Bytes {
        &self.inner.ready_payload
    }

    /// The first id of this client's range minus one: the `id_offset` of a
    /// legacy relay's handshake, `id_start - 1` on a current relay.
    pub fn id_offset(&self) -> u32 {
        self.inner.peer.id_range().start - 1
    }

    /// An id of this client's range that has no live subscription now. On a
    /// current relay it was never handed out before on this connection, and
    /// [`Error::IdsExhausted`] says the range is used up.
    pub fn alloc_id(&self) -> Result<u32> {
        self.inner.conn.alloc_id()
    }

    /// Subscribes to `id` (in range, not already subscribed). Subscribe before
    /// sending: replies can arrive before `send` returns.
    pub fn subscribe(&self, id: u32) -> Result<Subscription> {
        self.inner.conn.subscribe(id)
    }

    /// Allocates an id and subscribes to it atomically.
    pub fn subscribe_new(&self) -> Result<Subscription> {
        self.inner.conn.subscribe_new(None)
    }

    /// Like [`subscribe_new`](Self::subscribe_new), queueing only the
    /// messages `accept` lets through.
    pub(crate) fn subscribe_new_accepting(&self, accept: reader::Accept) -> Result<Subscription> {
        self.inner.conn.subscribe_new(Some(accept))
    }

    /// Sends one message whose payload the caller encoded. Returns once the
    /// whole frame is in the socket; blocks only while the socket is full,
    /// never longer than `timeout`. On a current relay only message types
    /// this library knows and a client may send are accepted (an agent
    /// fails on anything else); types above the negotiated generation give
    /// [`Error::Unsupported`].
    pub fn send(
        &self,
        message_type: &MessageType,
        id: u32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        self.inner.peer.check_raw_send(message_type)?;
        self.send_parts(message_type, id, &[payload], Instant::now() + timeout)
    }

    /// Sends one message of a type the library encoded itself, with the
    /// payload given in pieces (written with one write; copied only when
    /// small) and an absolute deadline. Refuses types the sandbox's
    /// generation lacks ([`Error::Unsupported`]) and ids outside the range
    /// (only `core.shutdown` may use id 0).
    pub fn send_parts(
        &self,
        message_type: &MessageType,
        id: u32,
        parts: &[&[u8]],
        deadline: Instant,
    ) -> Result<()> {
        // A closed connection says so first, whatever else is wrong.
        if let Some(cause) = self.close_cause() {
            return Err(Error::Closed(cause));
        }
        if message_type.is_known() {
            self.inner.peer.require(message_type)?;
        }
        self.inner.conn.check_send_id(message_type, id)?;
        self.inner.conn.send(message_type, id, parts, deadline)
    }

    /// Subscribes to a fresh id, then sends on it (in that order: the reply
    /// may arrive before the send returns).
    fn send_on_new_id(
        &self,
        message_type: &MessageType,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Subscription> {
        let sub = self.subscribe_new()?;
        self.send_parts(message_type, sub.id(), &[payload], deadline)?;
        Ok(sub)
    }

    /// Sends a request on a fresh id and waits up to `timeout` for the first
    /// reply. On timeout the pending entry is removed; a late reply is
    /// dropped and counted.
    pub fn request(
        &self,
        message_type: &MessageType,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message> {
        self.inner.peer.check_raw_send(message_type)?;
        let deadline = Instant::now() + timeout;
        let sub = self.send_on_new_id(message_type, payload, deadline)?;
        match sub.recv_until(Some(deadline))? {
            Pulled::Item(m) => Ok(m),
            Pulled::Nothing => Err(Error::Timeout("waiting for a reply")),
            Pulled::Ended => Err(Error::Unexpected("stream ended without a reply".into())),
        }
    }

    /// The async form of [`request`](Self::request), for tokio callers. The
    /// timeout uses the caller's runtime timer.
    pub async fn request_async(
        &self,
        message_type: &MessageType,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message> {
        self.inner.peer.check_raw_send(message_type)?;
        let deadline = Instant::now() + timeout;
        let sub = self.send_on_new_id(message_type, payload, deadline)?;
        match tokio::time::timeout_at(deadline.into(), sub.recv()).await {
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(Error::Unexpected("stream ended without a reply".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout("waiting for a reply")),
        }
    }

    /// Asks the sandbox to shut down (`core.shutdown`, id 0). No reply comes.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.inner.conn.send_with_flags(
            MessageType::Shutdown.as_str(),
            0,
            FLAG_SHUTDOWN,
            &[],
            Instant::now() + timeout,
        )
    }

    /// What the relay has sent so far, and what is queued now.
    pub fn counters(&self) -> Counters {
        self.inner.conn.counters()
    }

    /// Closes the connection and wakes every waiter with
    /// [`CloseCause::ClosedByCaller`]. Idempotent; callable from any thread.
    pub fn close(&self) {
        self.inner.conn.fail(CloseCause::ClosedByCaller);
    }

    /// Closes the connection, then waits for the client's background thread
    /// to finish, so that no thread of ours is left running. Must not be
    /// called from within an async task of the caller's runtime that the
    /// reader could be waiting on (it never is: the reader runs no caller code).
    pub fn close_and_join(&self) {
        self.close();
        self.inner.conn.join_background();
    }

    /// Why the connection is closed, or `None` while it is open.
    pub fn close_cause(&self) -> Option<CloseCause> {
        self.inner.conn.close_cause()
    }

    /// Fails the whole connection because the peer broke the protocol; used
    /// by the conversations when a payload has the wrong shape.
    pub(crate) fn fail_protocol(&self, e: ProtocolError) -> Error {
        self.inner.conn.fail(CloseCause::Protocol(e.clone()));
        Error::Protocol(e)
    }
}

impl Ready {
    fn decode_payload(p: &Bytes) -> Result<Ready> {
        use crate::protocol::payload::Payload;
        Ready::decode(p).map_err(Error::Protocol)
    }
}
