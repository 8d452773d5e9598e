//! Message types and the decoded form of a frame.

use bytes::Bytes;

use super::{FLAG_SESSION_START, FLAG_SHUTDOWN, FLAG_TERMINAL};

/// Every message type of protocol 0.3.14, plus the ones we do not know.
///
/// An unknown type string is kept rather than rejected so that a newer agent
/// does not break an older client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Ready,
    Shutdown,
    ExecRequest,
    ExecStarted,
    ExecStdin,
    ExecStdout,
    ExecStderr,
    ExecExited,
    ExecResize,
    ExecSignal,
    FsRequest,
    FsData,
    FsResponse,
    Unknown(Box<str>),
}

const KNOWN: [(MessageType, &str); 13] = [
    (MessageType::Ready, "core.ready"),
    (MessageType::Shutdown, "core.shutdown"),
    (MessageType::ExecRequest, "core.exec.request"),
    (MessageType::ExecStarted, "core.exec.started"),
    (MessageType::ExecStdin, "core.exec.stdin"),
    (MessageType::ExecStdout, "core.exec.stdout"),
    (MessageType::ExecStderr, "core.exec.stderr"),
    (MessageType::ExecExited, "core.exec.exited"),
    (MessageType::ExecResize, "core.exec.resize"),
    (MessageType::ExecSignal, "core.exec.signal"),
    (MessageType::FsRequest, "core.fs.request"),
    (MessageType::FsData, "core.fs.data"),
    (MessageType::FsResponse, "core.fs.response"),
];

impl MessageType {
    pub fn from_wire(s: &str) -> MessageType {
        KNOWN
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| MessageType::Unknown(s.into()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Unknown(s) => s,
            known => known.static_name(),
        }
    }

    /// The wire name of a known type, or `"unknown type"`, with a static
    /// lifetime for error values.
    pub fn static_name(&self) -> &'static str {
        KNOWN
            .iter()
            .find(|(t, _)| t == self)
            .map_or("unknown type", |(_, name)| *name)
    }

    /// The flags byte that goes with this type; flags are a function of the
    /// type on the wire.
    pub fn flags(&self) -> u8 {
        match self {
            MessageType::ExecExited | MessageType::FsResponse => FLAG_TERMINAL,
            MessageType::ExecRequest | MessageType::FsRequest => FLAG_SESSION_START,
            MessageType::Shutdown => FLAG_SHUTDOWN,
            _ => 0,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, MessageType::Unknown(_))
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded frame: routing header, type, and the payload's CBOR bytes.
///
/// `payload` is a reference-counted slice, so handing it (or a byte string
/// inside it) onward never copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u32,
    pub flags: u8,
    pub message_type: MessageType,
    pub payload: Bytes,
}

impl Message {
    /// A message with the flags its type calls for.
    pub fn new(message_type: MessageType, id: u32, payload: impl Into<Bytes>) -> Message {
        Message {
            id,
            flags: message_type.flags(),
            message_type,
            payload: payload.into(),
        }
    }

    /// True if the frame ends its session. Judged by the flags byte, which is
    /// what the relay routes on.
    pub fn is_terminal(&self) -> bool {
        self.flags & FLAG_TERMINAL != 0
    }
}
