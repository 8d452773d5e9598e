//! What the relay needs of the wire beyond the library's 0.3.14 protocol
//! module: the table of all 46 message types, the `{v,t,p}` envelope read
//! with its `v`, frames stamped with a chosen `v`, and the payloads of
//! generations 2 to 10.
//!
//! STOPGAP: the library's protocol module is being rewritten with these
//! payload types (serde + ciborium); until that lands the relay carries the
//! minimal serde definitions below. They mirror the wire shapes of
//! PROTOCOL-GENERATIONS.md §3 and §9, field for field in declaration order.

use std::io::Cursor;

use ciborium::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use microsandbox_agent::protocol::encode_frame;

pub const FLAG_TERMINAL: u8 = 0x01;
pub const FLAG_SHUTDOWN: u8 = 0x04;
pub const FLAG_BULK: u8 = 0x08;

/// One message type: its wire name, the only flags byte it may carry, the
/// generation that introduced it, and whether agentd 0.3.14 knew it.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    pub flags: u8,
    pub generation: u8,
    pub in_0_3_14: bool,
}

const fn kind(name: &'static str, flags: u8, generation: u8, in_0_3_14: bool) -> Kind {
    Kind {
        name,
        flags,
        generation,
        in_0_3_14,
    }
}

pub const KINDS: [Kind; 46] = [
    kind("core.ready", 0, 1, true),
    kind("core.init.resolved", 0, 1, false),
    kind("core.init.ack", 0, 1, false),
    kind("core.shutdown", 4, 1, true),
    kind("core.relay.client.disconnected", 0, 1, false),
    kind("core.clock.sync", 0, 1, false),
    kind("core.ping", 0, 6, false),
    kind("core.pong", 1, 6, false),
    kind("core.touch", 0, 6, false),
    kind("core.touched", 1, 6, false),
    kind("core.workload.freeze", 0, 9, false),
    kind("core.workload.frozen", 1, 9, false),
    kind("core.workload.thaw", 0, 9, false),
    kind("core.workload.thawed", 1, 9, false),
    kind("core.workload.transport.credit", 0, 9, false),
    kind("core.root_disk.prepare", 0, 9, false),
    kind("core.root_disk.grow", 0, 9, false),
    kind("core.root_disk.state", 1, 9, false),
    kind("core.error", 1, 5, false),
    kind("core.bulk.accepted", 0, 8, false),
    kind("core.bulk.credit", 0, 8, false),
    kind("core.bulk.finish", 0, 8, false),
    kind("core.bulk.cancel", 0, 8, false),
    kind("core.exec.request", 2, 1, true),
    kind("core.exec.started", 0, 1, true),
    kind("core.exec.stdin", 0, 1, true),
    kind("core.exec.stdin.error", 0, 1, false),
    kind("core.exec.stdout", 0, 1, true),
    kind("core.exec.stderr", 0, 1, true),
    kind("core.exec.exited", 1, 1, true),
    kind("core.exec.failed", 1, 1, false),
    kind("core.exec.resize", 0, 1, true),
    kind("core.exec.signal", 0, 1, true),
    kind("core.exec.output.ack", 0, 10, false),
    kind("core.exec.stdin.ack", 0, 10, false),
    kind("core.fs.request", 2, 2, true),
    kind("core.fs.response", 1, 2, true),
    kind("core.fs.data", 0, 2, true),
    kind("core.tcp.connect", 2, 4, false),
    kind("core.tcp.connected", 0, 4, false),
    kind("core.tcp.data", 0, 4, false),
    kind("core.tcp.eof", 0, 4, false),
    kind("core.tcp.close", 0, 4, false),
    kind("core.tcp.closed", 1, 4, false),
    kind("core.tcp.failed", 1, 4, false),
    kind("core.bootstrap", 0, 7, false),
];

pub fn kind_of(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The flags byte of a known type (0 for anything else).
pub fn flags_of(name: &str) -> u8 {
    kind_of(name).map_or(0, |k| k.flags)
}

/// Encodes one frame whose envelope carries `v`.
///
/// The library's encoder writes `v = 1`; a generation below 24 is a single
/// CBOR byte at offset 12 of every frame (len, id, flags, map head, "v"), so
/// stamping another generation is overwriting that byte.
pub fn frame(v: u8, message_type: &str, id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 48);
    encode_frame(&mut out, message_type, id, flags, payload);
    stamp(&mut out, v);
    out
}

/// Sets the `v` of an encoded frame; see [`frame`].
pub fn stamp(encoded: &mut [u8], v: u8) {
    debug_assert!(v < 24);
    debug_assert_eq!(&encoded[9..12], &[0xa3, 0x61, b'v']);
    encoded[12] = v;
}

/// A frame of a known type with its own flags and a serde payload.
pub fn typed(v: u8, message_type: &str, id: u32, payload: &impl Serialize) -> Vec<u8> {
    frame(
        v,
        message_type,
        id,
        flags_of(message_type),
        &to_cbor(payload),
    )
}

pub fn to_cbor(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encoding to memory cannot fail");
    out
}

/// Decodes a payload the way agentd's serde decoder does: missing required
/// fields and wrong shapes fail, unknown keys are ignored.
pub fn from_cbor<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    ciborium::from_reader(payload).map_err(|e| e.to_string())
}

/// A frame body read as the generic CBOR value it is.
pub struct Envelope {
    pub v: Option<u64>,
    pub t: Option<String>,
    /// How many keys named "t" the map has.
    pub t_keys: usize,
    /// Whether the body was a map at all.
    pub is_map: bool,
    /// Bytes after the first CBOR item.
    pub trailing: bool,
}

impl Envelope {
    /// Reads a body; `None` if it is not CBOR at all.
    pub fn read(body: &[u8]) -> Option<Envelope> {
        let mut cursor = Cursor::new(body);
        let value: Value = ciborium::from_reader(&mut cursor).ok()?;
        let trailing = (cursor.position() as usize) < body.len();
        let mut envelope = Envelope {
            v: None,
            t: None,
            t_keys: 0,
            is_map: false,
            trailing,
        };
        let Value::Map(entries) = value else {
            return Some(envelope);
        };
        envelope.is_map = true;
        for (key, value) in entries {
            let Value::Text(key) = key else { continue };
            match (key.as_str(), value) {
                ("v", Value::Integer(n)) => envelope.v = u64::try_from(n).ok(),
                ("t", value) => {
                    envelope.t_keys += 1;
                    if let Value::Text(t) = value {
                        envelope.t = Some(t);
                    }
                }
                _ => {}
            }
        }
        Some(envelope)
    }
}

// ---------------------------------------------------------------- ready

#[derive(Serialize, Default)]
pub struct ReadyPayload {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
    pub ready_time_ns: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_transport: Option<BulkTransport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_lease: Option<LocalTransport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_transport: Option<LocalTransport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_transport_barrier_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_limits: Option<ExecLimits>,
    #[serde(skip)]
    pub exec_control: Option<ExecControl>,
}

/// The 0.7.8+ relay adds `exec_control` by wrapping agentd's ready in a
/// flattened struct, which makes the encoder write an indefinite-length map;
/// clients must cope, so we do the same.
#[derive(Serialize)]
struct AdvertisedReady<'a> {
    #[serde(flatten)]
    ready: &'a ReadyPayload,
    exec_control: &'a ExecControl,
}

pub fn ready_payload_bytes(ready: &ReadyPayload) -> Vec<u8> {
    match &ready.exec_control {
        Some(exec_control) => to_cbor(&AdvertisedReady {
            ready,
            exec_control,
        }),
        None => to_cbor(ready),
    }
}

#[derive(Serialize, Clone)]
pub struct BulkTransport {
    pub profile: String,
    pub port: String,
    pub connection_id: [u8; 16],
}

impl BulkTransport {
    pub fn dual_port() -> BulkTransport {
        BulkTransport {
            profile: "dual-port-v1".into(),
            port: "agent-bulk".into(),
            connection_id: random_token(),
        }
    }
}

#[derive(Serialize, Clone)]
pub struct LocalTransport {
    pub max_format: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    pub max_executions: u32,
    pub input_limit: u32,
    pub output_limit: u32,
    pub stdin_chunk_size: u32,
    pub output_chunk_size: u32,
}

impl Default for ExecLimits {
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

#[derive(Serialize, Clone)]
pub struct ExecControl {
    pub version: u32,
    pub endpoint: String,
    pub connection: [u8; 16],
}

impl ExecControl {
    pub fn new(endpoint: &str) -> ExecControl {
        ExecControl {
            version: 1,
            endpoint: endpoint.into(),
            connection: random_token(),
        }
    }
}

fn random_token() -> [u8; 16] {
    let mut token = [0u8; 16];
    // SAFETY: getrandom writes at most `token.len()` bytes into the live
    // local buffer; a short or failed read only leaves zeros, which is a
    // valid (if predictable) token for a development relay.
    unsafe { libc::getrandom(token.as_mut_ptr().cast(), token.len(), 0) };
    token
}

// ---------------------------------------------------------------- core

#[derive(Serialize, Deserialize, Default)]
pub struct Empty {}

#[derive(Serialize)]
pub struct Touched {
    pub activity_seq: u64,
}

#[derive(Serialize)]
pub struct CoreError {
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offending_type: Option<String>,
}

// ---------------------------------------------------------------- exec

#[derive(Serialize, Debug)]
pub struct ExecFailed {
    pub kind: &'static str,
    pub errno: Option<i32>,
    pub errno_name: Option<String>,
    pub message: String,
    pub stage: Option<String>,
}

#[derive(Serialize)]
pub struct ExecStdinError {
    pub errno: Option<i32>,
    pub errno_name: Option<String>,
    pub message: String,
}

/// `core.exec.output.ack` and `core.exec.stdin.ack`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Consumed {
    pub consumed: u64,
}

// ---------------------------------------------------------------- tcp

#[derive(Deserialize)]
pub struct TcpConnect {
    pub host: String,
    pub port: u16,
}

#[derive(Serialize)]
pub struct TcpFailed {
    pub error: String,
}

// ---------------------------------------------------------------- fs (generation 2)

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum FsOp {
    RealPath {
        path: String,
    },
    Stat {
        path: String,
        follow_symlink: bool,
    },
    SetStat {
        path: String,
        follow_symlink: bool,
        attrs: FsSetAttrs,
    },
    List {
        path: String,
    },
    ReadLink {
        path: String,
    },
    Symlink {
        target: String,
        link_path: String,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
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
    Read {
        handle: u64,
        offset: u64,
        len: Option<u64>,
    },
    Write {
        handle: u64,
        offset: u64,
        len: Option<u64>,
    },
    ReadDir {
        handle: u64,
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

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FsSetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FsOpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub create_new: bool,
    pub mode: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct FsRequest {
    pub op: FsOp,
    /// A generation-8 raw-bulk offer (0.7.x); see `fs2.rs` for its fate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsEntryInfo {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub modified: Option<i64>,
    pub uid: u32,
    pub gid: u32,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FsResponseData {
    Stat(FsEntryInfo),
    List(Vec<FsEntryInfo>),
    Handle(u64),
    Path(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsResponse {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Option<FsResponseData>,
}

impl FsResponse {
    pub fn ok(data: Option<FsResponseData>) -> FsResponse {
        FsResponse {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn error(message: impl Into<String>) -> FsResponse {
        FsResponse {
            ok: false,
            error: Some(message.into()),
            data: None,
        }
    }
}

/// Standard name of an errno, as agentd reports it next to the number.
pub fn errno_name(errno: i32) -> Option<String> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        _ => return None,
    };
    Some(name.into())
}

/// `{data}` payloads (stdin, stdout, fs and tcp data) by reference.
#[derive(Serialize)]
pub struct DataRef<'a> {
    #[serde(with = "serde_bytes")]
    pub data: &'a [u8],
}
