//! Typed payloads, each a serde type encoded and decoded by ciborium exactly
//! as the upstream encoders do: maps keyed by field name in declaration
//! order, `Option` fields written as `null` unless stated otherwise, byte
//! fields as CBOR byte strings, enums externally tagged.
//!
//! Decoding accepts what upstream's decoders accept (missing defaulted
//! fields, unknown keys, integer arrays for bytes, byte-string keys) and
//! reports what ciborium reports, which names the field when serde knows it.
//! Where we deliberately accept more (unknown error or failure kinds), the
//! type says so.
//!
//! Shapes by generation: exec and core payloads are shared by every
//! generation (new keys are optional); the filesystem shapes of generation 2+
//! (0.5.0 and later) are here, those of 0.3.x/0.4.x in [`legacy`].

pub mod legacy;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, VariantAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::head::{self, CanonicalReader};
use super::ProtocolError;

/// A payload type: its CBOR encoding and decoding.
///
/// Every payload goes through the same serde path; only [`Data`] overrides
/// it with a zero-copy fast path that is tested to agree with it.
pub trait Payload: Serialize + DeserializeOwned {
    /// Name used in error messages.
    const NAME: &'static str;

    fn encode(&self, out: &mut Vec<u8>) {
        encode_cbor(self, out)
    }

    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        decode_cbor(payload, Self::NAME)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Appends the CBOR of `value` to `out`.
pub fn encode_cbor<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and none of our Serialize impls reports
    // an error of its own.
    let written = ciborium::ser::into_writer(value, out);
    debug_assert!(written.is_ok(), "payload encoding failed: {written:?}");
}

/// Decodes `payload` as a `T`, naming `message_type` in the error.
pub fn decode_cbor<T: DeserializeOwned>(
    payload: &[u8],
    message_type: &'static str,
) -> Result<T, ProtocolError> {
    ciborium::de::from_reader(payload).map_err(|e| ProtocolError::BadPayload {
        message_type,
        detail: cbor_error_detail(&e),
    })
}

/// A ciborium decoding error in words, with the byte offset where known.
pub(crate) fn cbor_error_detail(e: &ciborium::de::Error<std::io::Error>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(_) => "truncated CBOR".to_owned(),
        Error::Syntax(offset) => format!("invalid CBOR at byte {offset}"),
        Error::Semantic(Some(offset), what) => format!("{what} at byte {offset}"),
        Error::Semantic(None, what) => what.clone(),
        Error::RecursionLimitExceeded => "CBOR nested too deeply".to_owned(),
    }
}

/// Names the payload types of one wire name each.
macro_rules! payloads {
    ($($ty:ty => $name:literal,)*) => {
        $(impl Payload for $ty {
            const NAME: &'static str = $name;
        })*
    };
}

// ------------------------------------------------------------------ bytes

/// A byte field as upstream decodes it (`serde_bytes`): a byte string,
/// definite or not, or an array of integers 0..=255.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WireBytes(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for WireBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = WireBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("byte array")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WireBytes, E> {
                Ok(WireBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<WireBytes, E> {
                Ok(WireBytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireBytes, E> {
                Ok(WireBytes(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<WireBytes, A::Error> {
                // Capped: a hostile length must not reserve memory up front.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(WireBytes(v))
            }
        }
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// `#[serde(with)]` for `Bytes` fields: a CBOR byte string out, anything
/// [`WireBytes`] accepts in.
mod bytes_field {
    use super::*;

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        WireBytes::deserialize(d).map(|b| Bytes::from(b.0))
    }
}

/// `#[serde(deserialize_with)]` for `Option<Option<T>>` fields whose key may
/// be absent (outer `None`) or present, possibly `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ------------------------------------------------------------------ enums of names

/// Enums of snake_case names that must survive names we do not know: the
/// unknown name is kept in `Unknown` instead of failing the whole payload.
/// Otherwise decoded as upstream's derived unit-variant enums are (text, or
/// the one-entry-map form ciborium also accepts).
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A name this library does not know, as received.
            Unknown(String),
        }

        impl $name {
            /// Every known name, in wire spelling.
            pub const NAMES: &'static [&'static str] = &[$($wire),*];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)*
                    $name::Unknown(s) => s,
                }
            }

            pub fn from_wire(s: &str) -> $name {
                match s {
                    $($wire => $name::$variant,)*
                    other => $name::Unknown(other.to_owned()),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_enum(stringify!($name), $name::NAMES, OpenEnumVisitor($name::from_wire))
            }
        }
    };
}

struct OpenEnumVisitor<T>(fn(&str) -> T);

impl<'de, T> Visitor<'de> for OpenEnumVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a snake_case name")
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<T, A::Error> {
        let (name, variant) = data.variant::<VariantName>()?;
        variant.unit_variant()?;
        Ok((self.0)(&name.0))
    }
}

/// The name of an enum variant, text or (as serde also allows) bytes.
struct VariantName(String);

impl<'de> Deserialize<'de> for VariantName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = VariantName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VariantName, E> {
                Ok(VariantName(v.to_owned()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<VariantName, E> {
                std::str::from_utf8(v)
                    .map(|s| VariantName(s.to_owned()))
                    .map_err(|_| E::invalid_value(de::Unexpected::Bytes(v), &self))
            }
        }
        d.deserialize_identifier(NameVisitor)
    }
}

// ------------------------------------------------------------------ core

/// `core.ready`: how long the sandbox took to come up, and (0.5.5+) what it
/// runs and (0.7.x) what it offers. Every key after the three times is
/// omitted when absent.
///
/// From 0.7.8 on the relay appends `exec_control` through serde's flatten,
/// which makes ciborium write the whole map with indefinite length; the
/// encoder does the same whenever `exec_control` is present, so relayed
/// payloads re-encode byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Ready {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
    pub ready_time_ns: u64,
    /// Empty before 0.5.5.
    #[serde(default)]
    pub agent_version: String,
    /// Relay-agentd topology (0.7.x); of no use to a client.
    #[serde(default)]
    pub bulk_transport: Option<BulkTransportReady>,
    /// Relay-agentd range leases (0.7.x); of no use to a client.
    #[serde(default)]
    pub relay_lease: Option<MaxFormat>,
    /// Offered by a 0.7.x relay on Unix sockets (shared memory upgrade).
    #[serde(default)]
    pub local_transport: Option<MaxFormat>,
    /// Relay-agentd (0.7.x); of no use to a client.
    #[serde(default)]
    pub workload_transport_barrier_version: Option<u8>,
    /// Execution flow-control policy (0.7.9+, generation 10).
    #[serde(default)]
    pub exec_limits: Option<ExecLimits>,
    /// Out-of-band signal route (0.7.8+ relays). Read in a second pass (see
    /// `Payload::decode`), so that it never changes the verdict on a ready
    /// payload: upstream's `Ready` does not have it and ignores it.
    #[serde(skip_deserializing)]
    pub exec_control: Option<ExecControlReady>,
}

/// The second look at a ready payload, for `exec_control` alone.
#[derive(Deserialize)]
struct ExecControlDiscovery {
    #[serde(default)]
    exec_control: Option<ExecControlReady>,
}

impl Payload for Ready {
    const NAME: &'static str = "core.ready";
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut ready: Ready = decode_cbor(payload, Self::NAME)?;
        // A malformed `exec_control` counts as absent: it is optional, and
        // the handshake must not fail over it.
        ready.exec_control = ciborium::de::from_reader::<ExecControlDiscovery, _>(&payload[..])
            .ok()
            .and_then(|d| d.exec_control);
        Ok(ready)
    }
}

impl Serialize for Ready {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let present = 3
            + usize::from(!self.agent_version.is_empty())
            + usize::from(self.bulk_transport.is_some())
            + usize::from(self.relay_lease.is_some())
            + usize::from(self.local_transport.is_some())
            + usize::from(self.workload_transport_barrier_version.is_some())
            + usize::from(self.exec_limits.is_some());
        let len = match self.exec_control {
            Some(_) => None,
            None => Some(present),
        };
        let mut map = s.serialize_map(len)?;
        map.serialize_entry("boot_time_ns", &self.boot_time_ns)?;
        map.serialize_entry("init_time_ns", &self.init_time_ns)?;
        map.serialize_entry("ready_time_ns", &self.ready_time_ns)?;
        if !self.agent_version.is_empty() {
            map.serialize_entry("agent_version", &self.agent_version)?;
        }
        if let Some(v) = &self.bulk_transport {
            map.serialize_entry("bulk_transport", v)?;
        }
        if let Some(v) = &self.relay_lease {
            map.serialize_entry("relay_lease", v)?;
        }
        if let Some(v) = &self.local_transport {
            map.serialize_entry("local_transport", v)?;
        }
        if let Some(v) = &self.workload_transport_barrier_version {
            map.serialize_entry("workload_transport_barrier_version", v)?;
        }
        if let Some(v) = &self.exec_limits {
            map.serialize_entry("exec_limits", v)?;
        }
        if let Some(v) = &self.exec_control {
            map.serialize_entry("exec_control", v)?;
        }
        map.end()
    }
}

/// `Ready.bulk_transport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkTransportReady {
    pub profile: String,
    pub port: String,
    /// A CBOR array of 16 integers on the wire, not a byte string.
    pub connection_id: [u8; 16],
}

/// `Ready.relay_lease` and `Ready.local_transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxFormat {
    pub max_format: u8,
}

/// `Ready.exec_control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecControlReady {
    pub version: u8,
    /// Path of the sandbox's host-control socket.
    pub endpoint: String,
    /// A CBOR array of 16 integers on the wire.
    pub connection: [u8; 16],
}

/// `Ready.exec_limits`: the sandbox's execution flow-control policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecLimits {
    pub max_executions: u32,
    pub input_limit: u32,
    pub output_limit: u32,
    pub stdin_chunk_size: u32,
    pub output_chunk_size: u32,
}

impl Default for ExecLimits {
    /// The runtime's defaults, which a missing key takes.
    fn default() -> Self {
        ExecLimits {
            max_executions: 128,
            input_limit: 64 * 1024,
            output_limit: 1024 * 1024,
            stdin_chunk_size: 16 * 1024,
            output_chunk_size: 16 * 1024,
        }
    }
}

/// `{}`: `core.tcp.connected`, `.eof`, `.close`, `.closed`, `core.ping`,
/// `core.pong`, `core.touch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `core.touched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    pub activity_seq: u64,
}

open_enum! {
    /// `core.error.kind`.
    CoreErrorKind {
        InitializationFailed = "initialization_failed",
        MalformedMessage = "malformed_message",
        UnsupportedMessageType = "unsupported_message_type",
        UnsupportedProtocolGeneration = "unsupported_protocol_generation",
        InvalidFlags = "invalid_flags",
        InvalidPayload = "invalid_payload",
        InvalidSession = "invalid_session",
        CapabilityUnavailable = "capability_unavailable",
    }
}

open_enum! {
    /// `core.error.init_failure` (0.7.7+).
    InitFailureReason {
        UserNotFound = "user_not_found",
        GroupNotFound = "group_not_found",
    }
}

open_enum! {
    /// `core.error.workload_failure.disposition` (0.7.x).
    WorkloadFailureDisposition {
        Unavailable = "unavailable",
        RecoveryRequired = "recovery_required",
    }
}

/// `core.error.workload_failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadFailure {
    pub attempt_id: String,
    pub disposition: WorkloadFailureDisposition,
}

/// `core.error` (0.5.6+): ends the conversation of the offending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreError {
    pub kind: CoreErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offending_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_failure: Option<InitFailureReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_failure: Option<WorkloadFailure>,
}

// ------------------------------------------------------------------ exec

/// One resource limit applied to an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Lower-case name: `cpu`, `fsize`, `nofile`, ...
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// The rlimit resource names the protocol knows, in their wire spelling.
pub const RLIMIT_RESOURCES: [&str; 16] = [
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

/// `core.exec.request`: the process to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default = "default_rows")]
    pub rows: u16,
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

impl ExecRequest {
    /// A request with the protocol's defaults: no args or env, no tty, 24x80.
    pub fn new(cmd: impl Into<String>) -> Self {
        ExecRequest {
            cmd: cmd.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            tty: false,
            rows: default_rows(),
            cols: default_cols(),
            rlimits: Vec::new(),
        }
    }
}

/// `core.exec.started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    pub pid: u32,
}

/// `core.exec.exited`: `-1` when the process died by a signal or never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExited {
    pub code: i32,
}

open_enum! {
    /// `core.exec.failed.kind`.
    ExecFailureKind {
        NotFound = "not_found",
        PermissionDenied = "permission_denied",
        NotExecutable = "not_executable",
        BadCwd = "bad_cwd",
        BadArgs = "bad_args",
        ResourceLimit = "resource_limit",
        UserSetupFailed = "user_setup_failed",
        OutOfMemory = "out_of_memory",
        PtySetupFailed = "pty_setup_failed",
        Other = "other",
    }
}

/// `core.exec.failed` (0.4.4+): the process never started; ends the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFailed {
    pub kind: ExecFailureKind,
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub errno_name: Option<String>,
    pub message: String,
    #[serde(default)]
    pub stage: Option<String>,
}

/// `core.exec.stdin.error` (0.4.6+): writing stdin failed; not terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdinError {
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub errno_name: Option<String>,
    pub message: String,
}

/// `core.exec.resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResize {
    pub rows: u16,
    pub cols: u16,
}

/// `core.exec.signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSignal {
    pub signal: i32,
}

/// `core.exec.output.ack` (generation 10): cumulative output charge the
/// application consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutputAck {
    pub consumed: u64,
}

/// `core.exec.stdin.ack` (generation 10): cumulative stdin bytes delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdinAck {
    pub consumed: u64,
}

/// `{data: bytes}`: the payload of `core.exec.stdin`, `core.exec.stdout`,
/// `core.exec.stderr`, `core.fs.data` and `core.tcp.data`. An empty chunk
/// means end of input (stdin) or end of data (fs).
///
/// Decoding takes a hand-written path for the canonical encoding, so that
/// `data` is a zero-copy slice of the payload; anything else goes through
/// serde like every payload (tested to agree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    #[serde(with = "bytes_field")]
    pub data: Bytes,
}

/// `{` then the key `"data"`: the start of every canonical `Data`.
const DATA_PREFIX: [u8; 6] = [0xa1, 0x64, b'd', b'a', b't', b'a'];

impl Data {
    /// Encoded size of a `Data` payload carrying `len` bytes.
    pub fn encoded_len(len: usize) -> usize {
        DATA_PREFIX.len() + head::head_len(len) + len
    }

    /// Appends everything of `{data: bytes}` up to the `len` bytes of data,
    /// which the caller sends after it.
    pub fn encode_head(len: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&DATA_PREFIX);
        head::write_bytes_head(out, len);
    }

    /// Encodes `{data: bytes}` around a borrowed slice, without building a
    /// `Data` first.
    pub fn encode_slice(data: &[u8], out: &mut Vec<u8>) {
        Data::encode_head(data.len(), out);
        out.extend_from_slice(data);
    }

    /// The canonical encoding, decoded without copying; `None` for any
    /// other shape.
    fn decode_canonical(payload: &Bytes) -> Option<Data> {
        let mut r = CanonicalReader::new(payload);
        if !r.eat(&DATA_PREFIX) {
            return None;
        }
        let data = r.read_definite_bytes()?;
        Some(Data {
            data: payload.slice_ref(data),
        })
    }
}

impl Payload for Data {
    const NAME: &'static str = "data";
    fn encode(&self, out: &mut Vec<u8>) {
        Data::encode_slice(&self.data, out)
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        match Data::decode_canonical(payload) {
            Some(data) => Ok(data),
            None => decode_cbor(payload, Self::NAME),
        }
    }
}

// ------------------------------------------------------------------ fs, generation 2+

/// Attributes a `SetStat`/`FSetStat` changes; `None` leaves one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsSetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

/// How `OpenFile` opens (as `OpenOptions`); `mode` applies on creation.
///
/// `user` (0.7.7+): see [`FsOp`] on when to send it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsOpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub create_new: bool,
    pub mode: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub user: Option<Option<String>>,
}

/// The operation of a generation-2+ (0.5.0 and later) `core.fs.request`.
///
/// The `user` fields of `Mkdir`, `Symlink` and [`FsOpenOptions`] exist
/// since agent 0.7.7, whose encoder always writes them (`null` by default);
/// earlier agents do not have them. The outer `Option` says whether the key
/// is on the wire at all: `None` writes the 0.5.0..0.7.6 shape (use it when
/// `Ready.agent_version` is older than 0.7.7, or unknown), `Some(None)` the
/// 0.7.7+ shape without a user, `Some(Some(name))` acts as that user (only
/// for agent_version >= 0.7.7). An older agentd ignores the key (none of
/// upstream's payload types denies unknown fields), so the user would be
/// silently dropped there rather than refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    Stat {
        path: String,
        follow_symlink: bool,
    },
    List {
        path: String,
    },
    Read {
        handle: u64,
        offset: u64,
        /// `None`: to end of file.
        len: Option<u64>,
    },
    Write {
        handle: u64,
        offset: u64,
        /// If set, a byte-count mismatch fails the write.
        len: Option<u64>,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        user: Option<Option<String>>,
    },
    Remove {
        path: String,
    },
    RemoveDir {
        path: String,
        recursive: bool,
    },
    Copy {
        src: String,
        dst: String,
    },
    Rename {
        src: String,
        dst: String,
    },
    RealPath {
        path: String,
    },
    SetStat {
        path: String,
        follow_symlink: bool,
        attrs: FsSetAttrs,
    },
    ReadLink {
        path: String,
    },
    Symlink {
        target: String,
        link_path: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        user: Option<Option<String>>,
    },
    OpenFile {
        path: String,
        options: FsOpenOptions,
    },
    OpenDir {
        path: String,
    },
    CloseHandle {
        handle: u64,
    },
    ReadDir {
        handle: u64,
        /// `None`: the agent's default (128 entries).
        limit: Option<u32>,
    },
    FStat {
        handle: u64,
    },
    FSetStat {
        handle: u64,
        attrs: FsSetAttrs,
    },
}

/// A generation-8 raw bulk offer on `Read`, `Write` or `core.tcp.connect`
/// (0.7.x). Modelled so that such requests round-trip; this library does
/// not make offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkOffer {
    pub format: u8,
    pub max_record_payload: u32,
    pub guest_to_host_credit_limit: u64,
}

/// `core.fs.request`, generation 2+.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    pub op: FsOp,
    /// Omitted when absent; needs a request frame with `v >= 8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<BulkOffer>,
}

impl FsRequest {
    pub fn new(op: FsOp) -> Self {
        FsRequest { op, bulk: None }
    }
}

/// One entry of a `Stat`, `FStat`, `List` or `ReadDir` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntryInfo {
    pub path: String,
    /// `"file"`, `"dir"`, `"symlink"` or `"other"`.
    pub kind: String,
    pub size: u64,
    /// Including the file-type bits (`0o100644` for a regular file).
    pub mode: u32,
    /// Unix seconds; equals `mtime`.
    pub modified: Option<i64>,
    pub uid: u32,
    pub gid: u32,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

/// What a successful request returns, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponseData {
    Stat(FsEntryInfo),
    List(Vec<FsEntryInfo>),
    Handle(u64),
    Path(String),
}

/// `core.fs.response`, generation 2+: ends every fs session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsResponse {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Option<FsResponseData>,
}

impl FsResponse {
    pub fn ok() -> Self {
        FsResponse {
            ok: true,
            error: None,
            data: None,
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        FsResponse {
            ok: false,
            error: Some(msg.into()),
            data: None,
        }
    }
}

// ------------------------------------------------------------------ tcp

/// `core.tcp.connect` (generation 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnect {
    pub host: String,
    pub port: u16,
    /// Omitted when absent; needs a request frame with `v >= 8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<BulkOffer>,
}

/// `core.tcp.failed`: ends the connection's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpFailed {
    pub error: String,
}

payloads! {
    Empty => "empty",
    Touched => "core.touched",
    CoreError => "core.error",
    ExecRequest => "core.exec.request",
    ExecStarted => "core.exec.started",
    ExecExited => "core.exec.exited",
    ExecFailed => "core.exec.failed",
    ExecStdinError => "core.exec.stdin.error",
    ExecResize => "core.exec.resize",
    ExecSignal => "core.exec.signal",
    ExecOutputAck => "core.exec.output.ack",
    ExecStdinAck => "core.exec.stdin.ack",
    FsRequest => "core.fs.request",
    FsResponse => "core.fs.response",
    TcpConnect => "core.tcp.connect",
    TcpFailed => "core.tcp.failed",
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads near the canonical `{data}`: every truncation and every
    /// one-byte change of canonical payloads, plus tolerated variants.
    fn payloads_near_canonical() -> Vec<Vec<u8>> {
        let mut canonical = Vec::new();
        for len in [0, 1, 23, 24, 255, 256, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut p = Vec::new();
            Data::encode_slice(&data, &mut p);
            canonical.push(p);
        }
        let mut payloads = Vec::new();
        for p in &canonical {
            for len in 0..p.len().min(80) {
                payloads.push(p[..len].to_vec());
            }
            for i in 0..p.len().min(40) {
                for b in [
                    0x00, 0x18, 0x1f, 0x40, 0x41, 0x5f, 0x61, 0x64, 0x7f, 0x80, 0xa2, 0xbf, 0xc0,
                    0xf6, 0xff,
                ] {
                    let mut changed = p.clone();
                    changed[i] = b;
                    payloads.push(changed);
                }
            }
            let mut trailing = p.clone();
            trailing.extend_from_slice(b"\xff\x00");
            payloads.push(trailing);
            payloads.push(p.clone());
        }
        // Byte-string key, indefinite map, indefinite bytes, integer array,
        // an unknown key before `data`, a wider head than needed.
        payloads.push(b"\xa1\x44data\x41x".to_vec());
        payloads.push(b"\xbf\x64data\x41x\xff".to_vec());
        payloads.push(b"\xa1\x64data\x5f\x41x\x41y\xff".to_vec());
        payloads.push(b"\xa1\x64data\x82\x01\x18\xff".to_vec());
        payloads.push(b"\xa2\x61z\x61\xff\x64data\x41x".to_vec());
        payloads.push(b"\xa1\x64data\x58\x01x".to_vec());
        payloads
    }

    #[test]
    fn the_data_shortcut_agrees_with_serde() {
        let mut shortcut_taken = 0;
        for p in payloads_near_canonical() {
            let p = Bytes::from(p);
            let general = decode_cbor::<Data>(&p, Data::NAME);
            if let Some(fast) = Data::decode_canonical(&p) {
                shortcut_taken += 1;
                assert_eq!(Ok(&fast), general.as_ref(), "payload {p:02x?}");
                // Zero copy: the data points into the payload.
                let range = p.as_ptr_range();
                assert!(fast.data.is_empty() || range.contains(&fast.data.as_ptr()));
            }
            assert_eq!(Data::decode(&p), general, "payload {p:02x?}");
        }
        assert!(
            shortcut_taken > 100,
            "only {shortcut_taken} payloads took the shortcut"
        );
    }

    #[test]
    fn data_encodes_as_serde_does() {
        for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000] {
            let data = Data {
                data: Bytes::from(vec![7u8; len]),
            };
            let mut by_serde = Vec::new();
            encode_cbor(&data, &mut by_serde);
            assert_eq!(data.to_bytes(), by_serde, "{len}");
            assert_eq!(Data::encoded_len(len), by_serde.len(), "{len}");
        }
    }

    #[test]
    fn unknown_kinds_are_kept_and_known_ones_in_either_enum_form() {
        let text: ExecFailureKind = decode_cbor(b"\x69not_found", "t").unwrap();
        assert_eq!(text, ExecFailureKind::NotFound);
        let map: ExecFailureKind = decode_cbor(b"\xa1\x69not_found\xf6", "t").unwrap();
        assert_eq!(map, ExecFailureKind::NotFound);
        // A byte-string name only inside the map form, as ciborium allows.
        let bytes: ExecFailureKind = decode_cbor(b"\xa1\x49not_found\xf6", "t").unwrap();
        assert_eq!(bytes, ExecFailureKind::NotFound);
        assert!(decode_cbor::<ExecFailureKind>(b"\x49not_found", "t").is_err());
        let unknown: ExecFailureKind = decode_cbor(b"\x63new", "t").unwrap();
        assert_eq!(unknown, ExecFailureKind::Unknown("new".into()));
        assert!(decode_cbor::<ExecFailureKind>(b"\x01", "t").is_err());
        assert!(decode_cbor::<ExecFailureKind>(b"\x42\xff\xfe", "t").is_err());
    }
}
