//! The microsandbox agent-relay wire protocol of every relay from 0.3.14 to
//! 0.7.13 (generations 1 to 10): frames, message types and payloads. Pure data transformation, no I/O, so that the client core,
//! the development relay and the fuzz targets share one implementation.

mod frame;
mod head;
mod message;
pub mod payload;

pub use frame::{
    decode_borrowed, encode_frame, encode_frame_head, encode_frame_with, encoded_len,
    parse_handshake_offset, FrameDecoder, FrameHeader, RawFrame,
};
pub use message::{Message, MessageType};

/// `std::str::from_utf8`, with a shortcut for the short ASCII strings that
/// make up most of the protocol (map keys, type names, paths): checking for
/// ASCII first costs a fraction of the general validation's setup.
pub fn str_from_utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// Bytes of `len` before the rest of a frame.
pub const LEN_PREFIX_SIZE: usize = 4;
/// `id` and `flags`: the part of a frame counted by `len` that is not CBOR.
pub const FRAME_HEADER_SIZE: usize = 5;
/// Bytes before a frame's CBOR body: `len`, `id` and `flags`.
pub const FRAME_HEAD_SIZE: usize = LEN_PREFIX_SIZE + FRAME_HEADER_SIZE;
/// Largest `len` either side may send or accept.
pub const MAX_FRAME_SIZE: u32 = 4 * 1024 * 1024;
/// Largest file chunk carried by one `core.fs.data`.
pub const FS_CHUNK_SIZE: usize = 3 * 1024 * 1024;
/// Clients one 0.3.x/0.4.x relay (legacy handshake) serves at once.
pub const LEGACY_MAX_CLIENTS: u32 = 16;
/// Size of every client's correlation-id range on a legacy relay.
pub const LEGACY_ID_RANGE_STEP: u32 = u32::MAX / LEGACY_MAX_CLIENTS;
/// Clients one 0.5.0+ relay (current handshake) serves at once.
pub const CURRENT_MAX_CLIENTS: u32 = 128;
/// Size of every client's correlation-id range on a 0.5.0+ relay.
pub const CURRENT_ID_RANGE_STEP: u32 = u32::MAX / CURRENT_MAX_CLIENTS;
/// The highest generation whose semantics this library implements.
pub const MAX_GENERATION: u8 = 10;
/// The generation of every legacy (0.3.x/0.4.x) connection.
pub const LEGACY_GENERATION: u8 = 1;

/// Last frame of a session (`core.exec.exited`, `core.fs.response`).
pub const FLAG_TERMINAL: u8 = 0x01;
/// Opens a session (`core.exec.request`, `core.fs.request`).
pub const FLAG_SESSION_START: u8 = 0x02;
/// `core.shutdown`.
pub const FLAG_SHUTDOWN: u8 = 0x04;
/// A generation-8 raw bulk record. Exclusive: a frame whose flags are
/// exactly this byte has a raw, non-CBOR body.
pub const FLAG_BULK: u8 = 0x08;

/// Why bytes from the peer could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// `len` below the 5 bytes of id and flags.
    FrameTooShort(u32),
    /// `len` above [`MAX_FRAME_SIZE`].
    FrameTooLarge(u32),
    /// The frame body is not valid CBOR, or not the `{v, t, p}` map.
    BadBody(String),
    /// A payload whose CBOR does not have the shape its type requires.
    BadPayload {
        message_type: &'static str,
        detail: String,
    },
    /// The first frame of the handshake was not `core.ready`.
    NotReady(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::FrameTooShort(len) => {
                write!(f, "frame length {len} is shorter than the 5-byte header")
            }
            ProtocolError::FrameTooLarge(len) => write!(
                f,
                "frame length {len} exceeds the {MAX_FRAME_SIZE}-byte limit"
            ),
            ProtocolError::BadBody(d) => write!(f, "malformed frame body: {d}"),
            ProtocolError::BadPayload {
                message_type,
                detail,
            } => write!(f, "malformed {message_type} payload: {detail}"),
            ProtocolError::NotReady(t) => {
                write!(f, "handshake frame is {t:?}, expected core.ready")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

impl ProtocolError {
    /// Names the message type in a payload error. Payload shapes shared by
    /// several types (`{data}`) cannot know which one they were decoding.
    pub fn in_message(self, message_type: &MessageType) -> ProtocolError {
        match self {
            ProtocolError::BadPayload { detail, .. } => ProtocolError::BadPayload {
                message_type: message_type.static_name(),
                detail,
            },
            other => other,
        }
    }
}
