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
    /// The relay closed the connection before sending any handshake byte:
    /// every client slot is taken, or the guest is stalled. Retry later.
    RelayBusy,
    /// The sandbox's negotiated protocol generation lacks this message type.
    Unsupported {
        message_type: &'static str,
        needs: u8,
        speaks: u8,
    },
    /// Every correlation id of this connection's range has been used once;
    /// current relays refuse reused ids, so only a new connection helps.
    IdsExhausted,
    /// The guest could not start the command (`core.exec.failed`).
    ExecFailed(ExecFailure),
    /// The agent or relay answered `core.error`.
    Agent { kind: String, message: String },
}

/// Why the guest could not start a command, as `core.exec.failed` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFailure {
    /// `not_found`, `permission_denied`, ... (unknown kinds are kept as sent).
    pub kind: String,
    pub errno: Option<i32>,
    pub errno_name: Option<String>,
    pub message: String,
    /// Where it failed (`spawn`, `execution_admission`, ...), when said.
    pub stage: Option<String>,
}

impl fmt::Display for ExecFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.message, self.kind)?;
        if let Some(name) = &self.errno_name {
            write!(f, ", {name}")?;
        } else if let Some(errno) = self.errno {
            write!(f, ", errno {errno}")?;
        }
        if let Some(stage) = &self.stage {
            write!(f, ", stage {stage}")?;
        }
        f.write_str(")")
    }
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
            Error::RelayBusy => f.write_str(
                "the relay closed the connection before the handshake: it is full \
                 (16 clients on 0.3/0.4 relays, 128 on later ones) or the guest is \
                 stalled; retry later",
            ),
            Error::Unsupported {
                message_type,
                needs,
                speaks,
            } => write!(
                f,
                "{message_type} needs protocol generation {needs}; this sandbox speaks {speaks}"
            ),
            Error::IdsExhausted => f.write_str(
                "every correlation id of this connection has been used once and the relay \
                 refuses reused ids; reconnect",
            ),
            Error::ExecFailed(e) => write!(f, "the guest could not start the command: {e}"),
            Error::Agent { kind, message } => {
                write!(f, "the agent refused the request ({kind}): {message}")
            }
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
