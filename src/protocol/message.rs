//! Message types and the decoded form of a frame.

use std::ffi::CStr;

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

/// Known types with their wire names, NUL-terminated so that the C API can
/// hand them out without allocating.
const KNOWN: [(MessageType, &CStr); 13] = [
    (MessageType::Ready, c"core.ready"),
    (MessageType::Shutdown, c"core.shutdown"),
    (MessageType::ExecRequest, c"core.exec.request"),
    (MessageType::ExecStarted, c"core.exec.started"),
    (MessageType::ExecStdin, c"core.exec.stdin"),
    (MessageType::ExecStdout, c"core.exec.stdout"),
    (MessageType::ExecStderr, c"core.exec.stderr"),
    (MessageType::ExecExited, c"core.exec.exited"),
    (MessageType::ExecResize, c"core.exec.resize"),
    (MessageType::ExecSignal, c"core.exec.signal"),
    (MessageType::FsRequest, c"core.fs.request"),
    (MessageType::FsData, c"core.fs.data"),
    (MessageType::FsResponse, c"core.fs.response"),
];

/// `KNOWN` as one table in memory, for use at run time: every use of a
/// `const` array of values that need dropping builds a temporary copy of all
/// of it, and drops it again, which cost more than the lookup itself.
static KNOWN_TABLE: [(MessageType, &CStr); 13] = KNOWN;

/// The names of `KNOWN` as `&str`, index for index.
const KNOWN_NAMES: [&str; 13] = {
    let mut names = [""; 13];
    let mut i = 0;
    while i < KNOWN.len() {
        names[i] = match KNOWN[i].1.to_str() {
            Ok(name) => name,
            Err(_) => panic!("message type names are ASCII"),
        };
        i += 1;
    }
    names
};

impl MessageType {
    pub fn from_wire(s: &str) -> MessageType {
        KNOWN_NAMES
            .iter()
            .position(|name| *name == s)
            .map(|i| KNOWN_TABLE[i].0.clone())
            .unwrap_or_else(|| MessageType::Unknown(s.into()))
    }

    fn known_index(&self) -> Option<usize> {
        KNOWN_TABLE.iter().position(|(t, _)| t == self)
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
        self.known_index()
            .map_or("unknown type", |i| KNOWN_NAMES[i])
    }

    /// The wire name of a known type as a C string; `None` for unknown types.
    pub fn static_c_name(&self) -> Option<&'static CStr> {
        self.known_index().map(|i| KNOWN_TABLE[i].1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_round_trip_and_match_their_c_names() {
        for (known, c_name) in &KNOWN_TABLE {
            let name = known.as_str();
            assert_eq!(MessageType::from_wire(name), *known);
            assert_eq!(known.static_c_name(), Some(*c_name));
            assert_eq!(c_name.to_bytes(), name.as_bytes());
        }
        let unknown = MessageType::from_wire("core.future");
        assert_eq!(unknown, MessageType::Unknown("core.future".into()));
        assert_eq!(unknown.as_str(), "core.future");
        assert_eq!(unknown.static_c_name(), None);
    }
}
