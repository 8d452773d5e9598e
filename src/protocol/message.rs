//! Message types and the decoded form of a frame.

use std::ffi::CStr;

use bytes::Bytes;

use super::{FLAG_BULK, FLAG_SESSION_START, FLAG_SHUTDOWN, FLAG_TERMINAL};

/// Every message type up to protocol 0.7.13 (generation 10), plus the ones
/// we do not know and the raw bulk records that carry no type at all.
///
/// An unknown type string is kept rather than rejected so that a newer agent
/// does not break an older client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Ready,
    InitResolved,
    InitAck,
    Shutdown,
    RelayClientDisconnected,
    ClockSync,
    Ping,
    Pong,
    Touch,
    Touched,
    WorkloadFreeze,
    WorkloadFrozen,
    WorkloadThaw,
    WorkloadThawed,
    WorkloadTransportCredit,
    RootDiskPrepare,
    RootDiskGrow,
    RootDiskState,
    CoreError,
    BulkAccepted,
    BulkCredit,
    BulkFinish,
    BulkCancel,
    ExecRequest,
    ExecStarted,
    ExecStdin,
    ExecStdinError,
    ExecStdout,
    ExecStderr,
    ExecExited,
    ExecFailed,
    ExecResize,
    ExecSignal,
    ExecOutputAck,
    ExecStdinAck,
    FsRequest,
    FsResponse,
    FsData,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
    TcpClose,
    TcpClosed,
    TcpFailed,
    Bootstrap,
    /// A generation-8 raw bulk record: a frame whose flags are exactly
    /// [`FLAG_BULK`] and whose body is not CBOR. It has no wire name, so
    /// `from_wire` never returns it and `is_known` is false for it.
    BulkRecord,
    Unknown(Box<str>),
}

/// Number of named message types (all of 0.7.13).
const KNOWN_COUNT: usize = 46;

/// Known types with their wire names, NUL-terminated so that the C API can
/// hand them out without allocating. Searched front to back, so the types of
/// streaming traffic come first.
const KNOWN: [(MessageType, &CStr); KNOWN_COUNT] = [
    (MessageType::ExecStdout, c"core.exec.stdout"),
    (MessageType::ExecStderr, c"core.exec.stderr"),
    (MessageType::ExecStdin, c"core.exec.stdin"),
    (MessageType::FsData, c"core.fs.data"),
    (MessageType::TcpData, c"core.tcp.data"),
    (MessageType::ExecOutputAck, c"core.exec.output.ack"),
    (MessageType::ExecStdinAck, c"core.exec.stdin.ack"),
    (MessageType::ExecStarted, c"core.exec.started"),
    (MessageType::ExecExited, c"core.exec.exited"),
    (MessageType::ExecRequest, c"core.exec.request"),
    (MessageType::ExecResize, c"core.exec.resize"),
    (MessageType::ExecSignal, c"core.exec.signal"),
    (MessageType::FsRequest, c"core.fs.request"),
    (MessageType::FsResponse, c"core.fs.response"),
    (MessageType::Ready, c"core.ready"),
    (MessageType::Shutdown, c"core.shutdown"),
    (MessageType::ExecFailed, c"core.exec.failed"),
    (MessageType::ExecStdinError, c"core.exec.stdin.error"),
    (MessageType::InitResolved, c"core.init.resolved"),
    (MessageType::InitAck, c"core.init.ack"),
    (
        MessageType::RelayClientDisconnected,
        c"core.relay.client.disconnected",
    ),
    (MessageType::ClockSync, c"core.clock.sync"),
    (MessageType::Ping, c"core.ping"),
    (MessageType::Pong, c"core.pong"),
    (MessageType::Touch, c"core.touch"),
    (MessageType::Touched, c"core.touched"),
    (MessageType::WorkloadFreeze, c"core.workload.freeze"),
    (MessageType::WorkloadFrozen, c"core.workload.frozen"),
    (MessageType::WorkloadThaw, c"core.workload.thaw"),
    (MessageType::WorkloadThawed, c"core.workload.thawed"),
    (
        MessageType::WorkloadTransportCredit,
        c"core.workload.transport.credit",
    ),
    (MessageType::RootDiskPrepare, c"core.root_disk.prepare"),
    (MessageType::RootDiskGrow, c"core.root_disk.grow"),
    (MessageType::RootDiskState, c"core.root_disk.state"),
    (MessageType::CoreError, c"core.error"),
    (MessageType::BulkAccepted, c"core.bulk.accepted"),
    (MessageType::BulkCredit, c"core.bulk.credit"),
    (MessageType::BulkFinish, c"core.bulk.finish"),
    (MessageType::BulkCancel, c"core.bulk.cancel"),
    (MessageType::TcpConnect, c"core.tcp.connect"),
    (MessageType::TcpConnected, c"core.tcp.connected"),
    (MessageType::TcpEof, c"core.tcp.eof"),
    (MessageType::TcpClose, c"core.tcp.close"),
    (MessageType::TcpClosed, c"core.tcp.closed"),
    (MessageType::TcpFailed, c"core.tcp.failed"),
    (MessageType::Bootstrap, c"core.bootstrap"),
];

/// `KNOWN` as one table in memory, for use at run time: every use of a
/// `const` array of values that need dropping builds a temporary copy of all
/// of it, and drops it again, which cost more than the lookup itself.
static KNOWN_TABLE: [(MessageType, &CStr); KNOWN_COUNT] = KNOWN;

/// The names of `KNOWN` as `&str`, index for index.
const KNOWN_NAMES: [&str; KNOWN_COUNT] = {
    let mut names = [""; KNOWN_COUNT];
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

/// What `static_name` says for types without a wire name.
const BULK_RECORD_NAME: &str = "(raw bulk record)";

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

    /// The wire name of a known type, `"(raw bulk record)"`, or
    /// `"unknown type"`, with a static lifetime for error values.
    pub fn static_name(&self) -> &'static str {
        if *self == MessageType::BulkRecord {
            return BULK_RECORD_NAME;
        }
        self.known_index()
            .map_or("unknown type", |i| KNOWN_NAMES[i])
    }

    /// The wire name of a known type as a C string; `None` for unknown types
    /// and raw bulk records.
    pub fn static_c_name(&self) -> Option<&'static CStr> {
        self.known_index().map(|i| KNOWN_TABLE[i].1)
    }

    /// The flags byte that goes with this type; flags are a function of the
    /// type on the wire, and agentd 0.5.6+ and the 0.7 relay refuse any
    /// other byte.
    pub fn flags(&self) -> u8 {
        match self {
            MessageType::Pong
            | MessageType::Touched
            | MessageType::WorkloadFrozen
            | MessageType::WorkloadThawed
            | MessageType::RootDiskState
            | MessageType::CoreError
            | MessageType::ExecExited
            | MessageType::ExecFailed
            | MessageType::FsResponse
            | MessageType::TcpClosed
            | MessageType::TcpFailed => FLAG_TERMINAL,
            MessageType::ExecRequest | MessageType::FsRequest | MessageType::TcpConnect => {
                FLAG_SESSION_START
            }
            MessageType::Shutdown => FLAG_SHUTDOWN,
            MessageType::BulkRecord => FLAG_BULK,
            _ => 0,
        }
    }

    /// The protocol generation that introduced this type: a peer whose
    /// generation is lower does not know it. Unknown types answer
    /// `u8::MAX`.
    pub fn min_generation(&self) -> u8 {
        match self {
            MessageType::FsRequest | MessageType::FsResponse | MessageType::FsData => 2,
            MessageType::TcpConnect
            | MessageType::TcpConnected
            | MessageType::TcpData
            | MessageType::TcpEof
            | MessageType::TcpClose
            | MessageType::TcpClosed
            | MessageType::TcpFailed => 4,
            MessageType::CoreError => 5,
            MessageType::Ping | MessageType::Pong | MessageType::Touch | MessageType::Touched => 6,
            MessageType::Bootstrap => 7,
            MessageType::BulkAccepted
            | MessageType::BulkCredit
            | MessageType::BulkFinish
            | MessageType::BulkCancel => 8,
            MessageType::WorkloadFreeze
            | MessageType::WorkloadFrozen
            | MessageType::WorkloadThaw
            | MessageType::WorkloadThawed
            | MessageType::WorkloadTransportCredit
            | MessageType::RootDiskPrepare
            | MessageType::RootDiskGrow
            | MessageType::RootDiskState => 9,
            MessageType::ExecOutputAck | MessageType::ExecStdinAck => 10,
            MessageType::BulkRecord => 8,
            MessageType::Unknown(_) => u8::MAX,
            _ => 1,
        }
    }

    /// True for the named types of the protocol.
    pub fn is_known(&self) -> bool {
        !matches!(self, MessageType::Unknown(_) | MessageType::BulkRecord)
    }

    /// False for the types a relay client never sends: `core.ready`, every
    /// reply that travels guest to host, the types that only flow between
    /// the relay, the runtime and agentd, and anything unknown.
    pub fn client_may_send(&self) -> bool {
        matches!(
            self,
            MessageType::Shutdown
                | MessageType::Ping
                | MessageType::Touch
                | MessageType::ExecRequest
                | MessageType::ExecStdin
                | MessageType::ExecResize
                | MessageType::ExecSignal
                | MessageType::ExecOutputAck
                | MessageType::FsRequest
                | MessageType::FsData
                | MessageType::TcpConnect
                | MessageType::TcpData
                | MessageType::TcpEof
                | MessageType::TcpClose
        )
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded frame: routing header, the `v` it carried, its type, and the
/// payload's CBOR bytes (or, for a raw bulk record, the whole raw body).
///
/// `payload` is a reference-counted slice, so handing it (or a byte string
/// inside it) onward never copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u32,
    pub flags: u8,
    /// The sender's generation, the frame's `v` (255 if it was larger; 0 if
    /// it was absent, not an unsigned integer, or the frame is a raw record).
    pub version: u8,
    pub message_type: MessageType,
    pub payload: Bytes,
}

impl Message {
    /// A message with the flags its type calls for and `version` 0; see
    /// [`Message::with_version`].
    pub fn new(message_type: MessageType, id: u32, payload: impl Into<Bytes>) -> Message {
        Message {
            id,
            flags: message_type.flags(),
            version: 0,
            message_type,
            payload: payload.into(),
        }
    }

    /// The same message, marked as carrying generation `version`.
    pub fn with_version(mut self, version: u8) -> Message {
        self.version = version;
        self
    }

    /// True if the frame ends its session. Judged by the flags byte, which is
    /// what the relay routes on; a raw bulk record never ends one.
    pub fn is_terminal(&self) -> bool {
        self.flags != FLAG_BULK && self.flags & FLAG_TERMINAL != 0
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
            assert!(known.is_known());
        }
        let unknown = MessageType::from_wire("core.future");
        assert_eq!(unknown, MessageType::Unknown("core.future".into()));
        assert_eq!(unknown.as_str(), "core.future");
        assert_eq!(unknown.static_c_name(), None);
        assert!(!unknown.client_may_send());
        let bulk = MessageType::BulkRecord;
        assert_eq!(
            MessageType::from_wire(bulk.as_str()),
            MessageType::Unknown(BULK_RECORD_NAME.into())
        );
        assert_eq!(bulk.static_c_name(), None);
        assert!(!bulk.is_known());
    }

    #[test]
    fn known_names_are_distinct() {
        for (i, a) in KNOWN_NAMES.iter().enumerate() {
            assert!(a.starts_with("core."), "{a}");
            assert!(!KNOWN_NAMES[i + 1..].contains(a), "{a} twice");
        }
    }

    #[test]
    fn clients_send_only_requests_and_their_own_stream_frames() {
        let sendable: Vec<&str> = KNOWN_TABLE
            .iter()
            .filter(|(t, _)| t.client_may_send())
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(sendable.len(), 14, "{sendable:?}");
        for (t, _) in &KNOWN_TABLE {
            if t.client_may_send() {
                assert!(t.flags() & FLAG_TERMINAL == 0, "{t} is a reply");
            }
        }
    }
}
