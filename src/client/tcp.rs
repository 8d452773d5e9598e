//! TCP connections made by the guest (generation 4, 0.5.5 and later): the
//! guest connects to `host:port` from inside the sandbox and relays bytes
//! both ways over one id of this connection.
//!
//! The conversation: `core.tcp.connect` → `core.tcp.connected` or
//! `core.tcp.failed`; then `core.tcp.data` both ways, `core.tcp.eof` from
//! either side for a half-close, and `core.tcp.closed` once both halves are
//! done. `core.tcp.close` from us aborts the connection and gets no reply,
//! so the stream ends locally when it is sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Error, Result};
use super::exec::{agent_error, send_data};
use super::subscription::{Pulled, Subscription};
use super::Client;
use crate::protocol::payload::{Data, Empty, Payload, TcpConnect, TcpFailed};
use crate::protocol::{Message, MessageType};

/// Most bytes one `core.tcp.data` carries from us: what agentd reads at a
/// time from its side, so both directions use the same chunks.
pub const TCP_CHUNK_SIZE: usize = 64 * 1024;

/// How long the best-effort `core.tcp.close` of a dropped stream may wait
/// for the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// What a TCP session queues: everything the guest sends on it.
fn is_tcp_reply(m: &Message) -> bool {
    matches!(
        m.message_type,
        MessageType::TcpConnected
            | MessageType::TcpData
            | MessageType::TcpEof
            | MessageType::TcpClosed
            | MessageType::TcpFailed
            | MessageType::CoreError
    )
}

/// A TCP connection from inside the guest.
///
/// Thread safety: `Send + Sync`. Reads from several threads each get
/// distinct chunks, in no defined order between threads; writes from
/// several threads land in an undefined order, so write from one thread at
/// a time.
pub struct TcpStream {
    client: Client,
    sub: Subscription,
    /// The guest said `core.tcp.eof` or ended the session: reads are over.
    read_done: AtomicBool,
    /// We sent `core.tcp.eof`.
    write_shut: AtomicBool,
    /// The session ended (terminal received, or `core.tcp.close` sent):
    /// nothing more may be sent on its id.
    finished: AtomicBool,
}

impl TcpStream {
    /// Asks the guest to connect to `host:port` and waits up to `timeout`
    /// for the outcome. A refusal by the guest is [`Error::Guest`] with its
    /// text (agentd gives up after 30 s on its own).
    pub fn connect(client: &Client, host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
        let deadline = Instant::now() + timeout;
        client.peer().require(&MessageType::TcpConnect)?;
        if host.is_empty() {
            return Err(Error::InvalidArgument("host is empty".into()));
        }
        let sub = client.subscribe_new_accepting(is_tcp_reply)?;
        let payload = TcpConnect {
            host: host.into(),
            port,
            bulk: None,
        }
        .to_bytes();
        client.send_parts(&MessageType::TcpConnect, sub.id(), &[&payload], deadline)?;
        let stream = TcpStream {
            client: client.clone(),
            sub,
            read_done: AtomicBool::new(false),
            write_shut: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        };
        let m = match stream.sub.recv_until(Some(deadline))? {
            Pulled::Item(m) => m,
            // Dropping `stream` sends core.tcp.close: the guest may still be
            // connecting, and must not keep the connection for nobody.
            Pulled::Nothing => return Err(Error::Timeout("waiting for the guest to connect")),
            Pulled::Ended => {
                stream.finished.store(true, Ordering::Release);
                return Err(Error::Unexpected(
                    "tcp session ended before connecting".into(),
                ));
            }
        };
        match m.message_type {
            MessageType::TcpConnected => Ok(stream),
            _ => {
                stream.finished.store(true, Ordering::Release);
                Err(stream.session_end_error(&m).unwrap_or_else(|| {
                    Error::Unexpected(format!("{} before core.tcp.connected", m.message_type))
                }))
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.sub.id()
    }

    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// The error a terminal message stands for: `tcp.failed` is
    /// [`Error::Guest`], `core.error` [`Error::Agent`]. `None` for others.
    fn session_end_error(&self, m: &Message) -> Option<Error> {
        let decoded = match m.message_type {
            MessageType::TcpFailed => TcpFailed::decode(&m.payload).map(|f| Error::Guest(f.error)),
            MessageType::CoreError => agent_error(&m.payload),
            _ => return None,
        };
        Some(decoded.unwrap_or_else(|e| self.client.fail_protocol(e)))
    }

    /// Sends `data` to the guest's peer, in chunks of at most 64 KiB. The
    /// bytes are in our socket when this returns.
    pub fn write(&self, data: &[u8], timeout: Duration) -> Result<()> {
        self.check_can_write()?;
        let deadline = Instant::now() + timeout;
        for chunk in data.chunks(TCP_CHUNK_SIZE) {
            send_data(
                &self.client,
                &MessageType::TcpData,
                self.id(),
                chunk,
                deadline,
            )?;
        }
        Ok(())
    }

    /// Half-closes: the guest shuts down writing to its peer
    /// (`core.tcp.eof`). Reading goes on.
    pub fn shutdown_write(&self, timeout: Duration) -> Result<()> {
        if self.write_shut.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_can_write()?;
        if self.write_shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let payload = Empty {}.to_bytes();
        self.client.send_parts(
            &MessageType::TcpEof,
            self.id(),
            &[&payload],
            Instant::now() + timeout,
        )
    }

    fn check_can_write(&self) -> Result<()> {
        if self.finished.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument(
                "the tcp connection has ended".into(),
            ));
        }
        if self.write_shut.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument(
                "the tcp connection's writing side was shut down".into(),
            ));
        }
        Ok(())
    }

    /// True once the session ended: the guest closed or failed it, or we
    /// aborted it.
    pub fn has_ended(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// True once writes are refused: after [`shutdown_write`](Self::shutdown_write)
    /// or the end of the session.
    pub fn write_closed(&self) -> bool {
        self.write_shut.load(Ordering::Acquire) || self.finished.load(Ordering::Acquire)
    }

    /// The next chunk the guest's peer sent. `Ended` once the peer closed
    /// its side (`core.tcp.eof`) or the connection closed; from then on
    /// every read ends. A failure is [`Error::Guest`] with the guest's text.
    pub fn read(&self, timeout: Option<Duration>) -> Result<Pulled<Bytes>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.read_done.load(Ordering::Acquire) {
                // Drain what follows the eof (the closing terminal) without
                // waiting, so that the session's id is released.
                while let Pulled::Item(m) = self.sub.recv_timeout(Some(Duration::ZERO))? {
                    self.note_end(&m);
                }
                return Ok(Pulled::Ended);
            }
            let m = match self.sub.recv_until(deadline)? {
                Pulled::Item(m) => m,
                Pulled::Nothing => return Ok(Pulled::Nothing),
                Pulled::Ended => {
                    self.read_done.store(true, Ordering::Release);
                    self.finished.store(true, Ordering::Release);
                    return Ok(Pulled::Ended);
                }
            };
            match m.message_type {
                MessageType::TcpData => {
                    let d = Data::decode(&m.payload).map_err(|e| {
                        self.client
                            .fail_protocol(e.in_message(&MessageType::TcpData))
                    })?;
                    if !d.data.is_empty() {
                        return Ok(Pulled::Item(d.data));
                    }
                }
                MessageType::TcpEof | MessageType::TcpClosed => {
                    self.note_end(&m);
                    self.read_done.store(true, Ordering::Release);
                    return Ok(Pulled::Ended);
                }
                MessageType::TcpFailed | MessageType::CoreError => {
                    self.note_end(&m);
                    self.read_done.store(true, Ordering::Release);
                    if let Some(e) = self.session_end_error(&m) {
                        return Err(e);
                    }
                }
                // A second `connected` would be the guest's mistake; skip it.
                _ => {}
            }
        }
    }

    fn note_end(&self, m: &Message) {
        if m.flags & crate::protocol::FLAG_TERMINAL != 0 {
            self.finished.store(true, Ordering::Release);
        }
    }

    /// Aborts the connection (`core.tcp.close`, which has no reply) unless
    /// it is over already, and ends the stream locally.
    pub fn close(&self, timeout: Duration) -> Result<()> {
        // A terminal already queued means the guest ended the session: then
        // there is nothing to abort, and nothing may be sent on its id.
        if !self.finished.load(Ordering::Acquire) {
            while let Ok(Pulled::Item(m)) = self.sub.recv_timeout(Some(Duration::ZERO)) {
                self.note_end(&m);
            }
        }
        // Both halves closed: the guest ends the session by itself (its
        // `core.tcp.closed` may still be on the way), so no abort either.
        let both_halves_closed =
            self.read_done.load(Ordering::Acquire) && self.write_shut.load(Ordering::Acquire);
        let result = if self.finished.swap(true, Ordering::AcqRel) || both_halves_closed {
            Ok(())
        } else {
            let payload = Empty {}.to_bytes();
            self.client.send_parts(
                &MessageType::TcpClose,
                self.id(),
                &[&payload],
                Instant::now() + timeout,
            )
        };
        self.read_done.store(true, Ordering::Release);
        self.sub.cancel();
        result
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        // Best effort: a full socket or a closed connection is no reason to
        // hold up the drop, and the guest closes everything of ours when
        // the connection goes.
        let _ = self.close(CLOSE_SEND_TIMEOUT);
    }
}
