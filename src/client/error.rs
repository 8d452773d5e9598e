//! Errors of the client core.

use std::fmt;
use std::sync::Arc;

use crate::protocol::ProtocolError;

/// Why a connection stopped working. Shared by every waiter it woke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// `close()` was called.
    ClosedByCaller,
    /// The relay closed the socket.
    Eof,
    /// Reading or writing the socket failed.
    Io(String),
    /// The peer sent something that breaks the protocol.
    Protocol(ProtocolError),
    /// A send timed out after part of its frame was written; the byte stream
    /// can no longer be framed.
    SendTimedOutMidFrame,
    /// The subscription (or the exec or file handle around it) was released
    /// while a call was waiting on it.
    Cancelled,
    /// This stream's unread messages passed the memory bound (the text says
    /// how); only this stream failed, the connection lives.
    StreamOverflow(String),
    /// A thread of the library panicked while reading; the connection
    /// cannot be read any more.
    ReaderPanicked(String),
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::ClosedByCaller => f.write_str("the client was closed"),
            CloseCause::Eof => f.write_str("the relay closed the connection"),
            CloseCause::Io(e) => write!(f, "socket error: {e}"),
            CloseCause::Protocol(e) => write!(f, "protocol violation by the relay: {e}"),
            CloseCause::SendTimedOutMidFrame => {
                f.write_str("a send timed out in the middle of a frame")
            }
            CloseCause::Cancelled => f.write_str("the handle was released while in use"),
            CloseCause::StreamOverflow(d) => write!(f, "stream overflow: {d}"),
            CloseCause::ReaderPanicked(p) => write!(f, "the reader panicked: {p}"),
        }
    }
}

/// Everything that can go wrong in the client core.
#[derive(Debug, Clone)]
pub enum Error {
    /// The caller passed something unusable (the text says what).
    InvalidArgument(String),
    /// A frame would exceed the 4 MiB protocol limit.
    TooLarge(usize),
    /// Connecting or a socket operation failed.
    Io(Arc<std::io::Error>, &'static str),
    /// A deadline passed; `what` names the operation.
    Timeout(&'static str),
    /// The handshake could not be completed (the text says why).
    Handshake(String),
    /// The connection is gone; every later call fails the same way.
    Closed(CloseCause),
    /// The peer sent a payload of the wrong shape for its type.
    Protocol(ProtocolError),
    /// The id is already subscribed, or outside this client's range.
    IdUnavailable(u32),
    /// The guest reported failure (`ok: false`); the text is the guest's.
    Guest(String),
    /// Something the relay sent made no sense for this conversation.
    Unexpected(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
            Error::TooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the protocol's 4 MiB frame limit"
            ),
            Error::Io(e, what) => write!(f, "{what}: {e}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Handshake(s) => write!(f, "handshake failed: {s}"),
            Error::Closed(c) => write!(f, "connection closed: {c}"),
            Error::Protocol(e) => write!(f, "{e}"),
            Error::IdUnavailable(id) => {
                write!(
                    f,
                    "id {id} is already subscribed or outside this client's range"
                )
            }
            Error::Guest(s) => write!(f, "the guest reported an error: {s}"),
            Error::Unexpected(s) => write!(f, "unexpected reply: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn io(e: std::io::Error, what: &'static str) -> Error {
        Error::Io(Arc::new(e), what)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
