//! Typed payloads, encoded exactly as the upstream serde encoder does: maps
//! keyed by field name in declaration order, optional fields written as
//! `null`, byte fields as CBOR byte strings, enums externally tagged.
//!
//! Decoding accepts missing defaulted fields, unknown keys and integer arrays
//! for bytes, and names the field when a value has the wrong shape.

use std::borrow::Cow;

use bytes::Bytes;

use super::cbor::{self, CborError, Reader};
use super::ProtocolError;

/// A payload type: its CBOR encoding and decoding.
pub trait Payload: Sized {
    /// Name used in error messages.
    const NAME: &'static str;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError>;

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Decoding context: a reader over one payload, with the source `Bytes` so
/// that byte strings come out as zero-copy slices.
struct Fields<'a> {
    src: &'a Bytes,
    r: Reader<'a>,
    name: &'static str,
}

impl<'a> Fields<'a> {
    fn new(src: &'a Bytes, name: &'static str) -> Self {
        Fields {
            src,
            r: Reader::new(src),
            name,
        }
    }

    fn fail(&self, field: &str, e: CborError) -> ProtocolError {
        ProtocolError::BadPayload {
            message_type: self.name,
            detail: if field.is_empty() {
                e.to_string()
            } else {
                format!("field {field:?}: {e}")
            },
        }
    }

    fn missing(&self, field: &str) -> ProtocolError {
        ProtocolError::BadPayload {
            message_type: self.name,
            detail: format!("missing field {field:?}"),
        }
    }

    /// Walks a map, calling `f` with each key; `f` reads the value or returns
    /// `false` to have it skipped.
    fn map(
        &mut self,
        mut f: impl FnMut(&mut Self, &str) -> Result<bool, ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let mut seq = self.r.read_map().map_err(|e| self.fail("", e))?;
        while self.r.next_item(&mut seq).map_err(|e| self.fail("", e))? {
            let key = self
                .r
                .read_text()
                .map_err(|e| self.fail("", e))?
                .into_owned();
            if !f(self, &key)? {
                self.r.skip().map_err(|e| self.fail(&key, e))?;
            }
        }
        Ok(())
    }

    fn text(&mut self, field: &str) -> Result<String, ProtocolError> {
        self.r
            .read_text()
            .map(Cow::into_owned)
            .map_err(|e| self.fail(field, e))
    }

    fn opt_text(&mut self, field: &str) -> Result<Option<String>, ProtocolError> {
        if self.r.read_null().map_err(|e| self.fail(field, e))? {
            return Ok(None);
        }
        self.text(field).map(Some)
    }

    fn bytes(&mut self, field: &str) -> Result<Bytes, ProtocolError> {
        match self.r.read_bytes().map_err(|e| self.fail(field, e))? {
            Cow::Borrowed(s) => Ok(self.src.slice_ref(s)),
            Cow::Owned(v) => Ok(Bytes::from(v)),
        }
    }

    fn bool(&mut self, field: &str) -> Result<bool, ProtocolError> {
        self.r.read_bool().map_err(|e| self.fail(field, e))
    }

    fn int<T: TryFrom<i64>>(&mut self, field: &str) -> Result<T, ProtocolError> {
        let pos = self.r.position();
        let n = self.r.read_i64().map_err(|e| self.fail(field, e))?;
        T::try_from(n).map_err(|_| {
            self.fail(
                field,
                CborError {
                    offset: pos,
                    what: "integer out of range",
                },
            )
        })
    }

    fn u64(&mut self, field: &str) -> Result<u64, ProtocolError> {
        self.r.read_u64().map_err(|e| self.fail(field, e))
    }

    fn opt_int<T: TryFrom<i64>>(&mut self, field: &str) -> Result<Option<T>, ProtocolError> {
        if self.r.read_null().map_err(|e| self.fail(field, e))? {
            return Ok(None);
        }
        self.int(field).map(Some)
    }

    fn text_list(&mut self, field: &str) -> Result<Vec<String>, ProtocolError> {
        let mut out = Vec::new();
        let mut seq = self.r.read_array().map_err(|e| self.fail(field, e))?;
        while self
            .r
            .next_item(&mut seq)
            .map_err(|e| self.fail(field, e))?
        {
            out.push(self.text(field)?);
        }
        Ok(out)
    }

    /// Reads the head of a one-entry map `{Variant: value}` and the variant
    /// name; the caller reads the value, then calls `end_variant`.
    fn variant(&mut self, field: &str) -> Result<(String, cbor::Seq), ProtocolError> {
        let mut seq = self.r.read_map().map_err(|e| self.fail(field, e))?;
        if !self
            .r
            .next_item(&mut seq)
            .map_err(|e| self.fail(field, e))?
        {
            return Err(self.missing(&format!("{field} variant")));
        }
        Ok((self.text(field)?, seq))
    }

    /// An externally tagged enum is a map of exactly one entry.
    fn end_variant(&mut self, field: &str, mut seq: cbor::Seq) -> Result<(), ProtocolError> {
        if self
            .r
            .next_item(&mut seq)
            .map_err(|e| self.fail(field, e))?
        {
            return Err(ProtocolError::BadPayload {
                message_type: self.name,
                detail: format!("field {field:?}: enum map has more than one entry"),
            });
        }
        Ok(())
    }
}

macro_rules! require {
    ($f:expr, $var:ident) => {
        $var.ok_or_else(|| $f.missing(stringify!($var)))?
    };
}

// ------------------------------------------------------------------ core

/// `core.ready`: how long the sandbox took to come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
    pub ready_time_ns: u64,
}

impl Payload for Ready {
    const NAME: &'static str = "core.ready";
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 3);
        cbor::write_text(out, "boot_time_ns");
        cbor::write_u64(out, self.boot_time_ns);
        cbor::write_text(out, "init_time_ns");
        cbor::write_u64(out, self.init_time_ns);
        cbor::write_text(out, "ready_time_ns");
        cbor::write_u64(out, self.ready_time_ns);
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let (mut boot_time_ns, mut init_time_ns, mut ready_time_ns) = (None, None, None);
        f.map(|f, k| {
            match k {
                "boot_time_ns" => boot_time_ns = Some(f.u64(k)?),
                "init_time_ns" => init_time_ns = Some(f.u64(k)?),
                "ready_time_ns" => ready_time_ns = Some(f.u64(k)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Ready {
            boot_time_ns: require!(f, boot_time_ns),
            init_time_ns: require!(f, init_time_ns),
            ready_time_ns: require!(f, ready_time_ns),
        })
    }
}

// ------------------------------------------------------------------ exec

/// One resource limit applied to an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `core.exec.request`: the process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: String,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
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
            rows: 24,
            cols: 80,
            rlimits: Vec::new(),
        }
    }
}

impl Payload for ExecRequest {
    const NAME: &'static str = "core.exec.request";
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 9);
        cbor::write_text(out, "cmd");
        cbor::write_text(out, &self.cmd);
        cbor::write_text(out, "args");
        write_text_list(out, &self.args);
        cbor::write_text(out, "env");
        write_text_list(out, &self.env);
        cbor::write_text(out, "cwd");
        cbor::write_opt_text(out, self.cwd.as_deref());
        cbor::write_text(out, "user");
        cbor::write_opt_text(out, self.user.as_deref());
        cbor::write_text(out, "tty");
        cbor::write_bool(out, self.tty);
        cbor::write_text(out, "rows");
        cbor::write_u64(out, self.rows as u64);
        cbor::write_text(out, "cols");
        cbor::write_u64(out, self.cols as u64);
        cbor::write_text(out, "rlimits");
        cbor::write_array_head(out, self.rlimits.len());
        for l in &self.rlimits {
            cbor::write_map_head(out, 3);
            cbor::write_text(out, "resource");
            cbor::write_text(out, &l.resource);
            cbor::write_text(out, "soft");
            cbor::write_u64(out, l.soft);
            cbor::write_text(out, "hard");
            cbor::write_u64(out, l.hard);
        }
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let mut cmd = None;
        let mut req = ExecRequest::new("");
        f.map(|f, k| {
            match k {
                "cmd" => cmd = Some(f.text(k)?),
                "args" => req.args = f.text_list(k)?,
                "env" => req.env = f.text_list(k)?,
                "cwd" => req.cwd = f.opt_text(k)?,
                "user" => req.user = f.opt_text(k)?,
                "tty" => req.tty = f.bool(k)?,
                "rows" => req.rows = f.int(k)?,
                "cols" => req.cols = f.int(k)?,
                "rlimits" => {
                    let mut seq = f.r.read_array().map_err(|e| f.fail(k, e))?;
                    while f.r.next_item(&mut seq).map_err(|e| f.fail(k, e))? {
                        let (mut resource, mut soft, mut hard) = (None, None, None);
                        f.map(|f, k| {
                            match k {
                                "resource" => resource = Some(f.text(k)?),
                                "soft" => soft = Some(f.u64(k)?),
                                "hard" => hard = Some(f.u64(k)?),
                                _ => return Ok(false),
                            }
                            Ok(true)
                        })?;
                        req.rlimits.push(Rlimit {
                            resource: require!(f, resource),
                            soft: require!(f, soft),
                            hard: require!(f, hard),
                        });
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        req.cmd = require!(f, cmd);
        Ok(req)
    }
}

fn write_text_list(out: &mut Vec<u8>, items: &[String]) {
    cbor::write_array_head(out, items.len());
    for s in items {
        cbor::write_text(out, s);
    }
}

/// `core.exec.started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStarted {
    pub pid: u32,
}

/// `core.exec.exited`: `-1` when the process died by a signal or never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExited {
    pub code: i32,
}

/// `core.exec.signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecSignal {
    pub signal: i32,
}

/// Payloads with a single integer field share one shape.
macro_rules! single_int_payload {
    ($ty:ident, $name:literal, $field:ident) => {
        impl Payload for $ty {
            const NAME: &'static str = $name;
            fn encode(&self, out: &mut Vec<u8>) {
                cbor::write_map_head(out, 1);
                cbor::write_text(out, stringify!($field));
                cbor::write_i64(out, self.$field as i64);
            }
            fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
                let mut f = Fields::new(payload, Self::NAME);
                let mut $field = None;
                f.map(|f, k| {
                    if k != stringify!($field) {
                        return Ok(false);
                    }
                    $field = Some(f.int(k)?);
                    Ok(true)
                })?;
                Ok($ty {
                    $field: require!(f, $field),
                })
            }
        }
    };
}

single_int_payload!(ExecStarted, "core.exec.started", pid);
single_int_payload!(ExecExited, "core.exec.exited", code);
single_int_payload!(ExecSignal, "core.exec.signal", signal);

/// `core.exec.resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResize {
    pub rows: u16,
    pub cols: u16,
}

impl Payload for ExecResize {
    const NAME: &'static str = "core.exec.resize";
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 2);
        cbor::write_text(out, "rows");
        cbor::write_u64(out, self.rows as u64);
        cbor::write_text(out, "cols");
        cbor::write_u64(out, self.cols as u64);
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let (mut rows, mut cols) = (None, None);
        f.map(|f, k| {
            match k {
                "rows" => rows = Some(f.int(k)?),
                "cols" => cols = Some(f.int(k)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(ExecResize {
            rows: require!(f, rows),
            cols: require!(f, cols),
        })
    }
}

/// `{data: bytes}`: the payload of `core.exec.stdin`, `core.exec.stdout`,
/// `core.exec.stderr` and `core.fs.data`. An empty chunk means end of input
/// (stdin) or end of data (fs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub data: Bytes,
}

impl Data {
    /// Encoded size of a `Data` payload carrying `len` bytes.
    pub fn encoded_len(len: usize) -> usize {
        1 + 5 + cbor::bytes_head_len(len) + len
    }

    /// Encodes `{data: bytes}` around a borrowed slice, without building a
    /// `Data` first.
    pub fn encode_slice(data: &[u8], out: &mut Vec<u8>) {
        cbor::write_map_head(out, 1);
        cbor::write_text(out, "data");
        cbor::write_bytes(out, data);
    }
}

impl Payload for Data {
    const NAME: &'static str = "data";
    fn encode(&self, out: &mut Vec<u8>) {
        Data::encode_slice(&self.data, out)
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let mut data = None;
        f.map(|f, k| {
            if k != "data" {
                return Ok(false);
            }
            data = Some(f.bytes(k)?);
            Ok(true)
        })?;
        Ok(Data {
            data: require!(f, data),
        })
    }
}

// ------------------------------------------------------------------ fs

/// The operation of a `core.fs.request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    Stat { path: String },
    List { path: String },
    Read { path: String },
    Write { path: String, mode: Option<u32> },
    Mkdir { path: String },
    Remove { path: String },
    RemoveDir { path: String },
    Copy { src: String, dst: String },
    Rename { src: String, dst: String },
}

impl FsOp {
    pub fn variant_name(&self) -> &'static str {
        match self {
            FsOp::Stat { .. } => "Stat",
            FsOp::List { .. } => "List",
            FsOp::Read { .. } => "Read",
            FsOp::Write { .. } => "Write",
            FsOp::Mkdir { .. } => "Mkdir",
            FsOp::Remove { .. } => "Remove",
            FsOp::RemoveDir { .. } => "RemoveDir",
            FsOp::Copy { .. } => "Copy",
            FsOp::Rename { .. } => "Rename",
        }
    }
}

/// `core.fs.request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRequest {
    pub op: FsOp,
}

impl Payload for FsRequest {
    const NAME: &'static str = "core.fs.request";
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 1);
        cbor::write_text(out, "op");
        cbor::write_map_head(out, 1);
        cbor::write_text(out, self.op.variant_name());
        match &self.op {
            FsOp::Stat { path }
            | FsOp::List { path }
            | FsOp::Read { path }
            | FsOp::Mkdir { path }
            | FsOp::Remove { path }
            | FsOp::RemoveDir { path } => {
                cbor::write_map_head(out, 1);
                cbor::write_text(out, "path");
                cbor::write_text(out, path);
            }
            FsOp::Write { path, mode } => {
                cbor::write_map_head(out, 2);
                cbor::write_text(out, "path");
                cbor::write_text(out, path);
                cbor::write_text(out, "mode");
                match mode {
                    Some(m) => cbor::write_u64(out, *m as u64),
                    None => cbor::write_null(out),
                }
            }
            FsOp::Copy { src, dst } | FsOp::Rename { src, dst } => {
                cbor::write_map_head(out, 2);
                cbor::write_text(out, "src");
                cbor::write_text(out, src);
                cbor::write_text(out, "dst");
                cbor::write_text(out, dst);
            }
        }
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let mut op = None;
        f.map(|f, k| {
            if k != "op" {
                return Ok(false);
            }
            let (variant, seq) = f.variant(k)?;
            let (mut path, mut mode, mut src, mut dst) = (None, None, None, None);
            f.map(|f, k| {
                match k {
                    "path" => path = Some(f.text(k)?),
                    "mode" => mode = f.opt_int(k)?,
                    "src" => src = Some(f.text(k)?),
                    "dst" => dst = Some(f.text(k)?),
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            f.end_variant(k, seq)?;
            op = Some(match variant.as_str() {
                "Stat" => FsOp::Stat {
                    path: require!(f, path),
                },
                "List" => FsOp::List {
                    path: require!(f, path),
                },
                "Read" => FsOp::Read {
                    path: require!(f, path),
                },
                "Write" => FsOp::Write {
                    path: require!(f, path),
                    mode,
                },
                "Mkdir" => FsOp::Mkdir {
                    path: require!(f, path),
                },
                "Remove" => FsOp::Remove {
                    path: require!(f, path),
                },
                "RemoveDir" => FsOp::RemoveDir {
                    path: require!(f, path),
                },
                "Copy" => FsOp::Copy {
                    src: require!(f, src),
                    dst: require!(f, dst),
                },
                "Rename" => FsOp::Rename {
                    src: require!(f, src),
                    dst: require!(f, dst),
                },
                other => {
                    return Err(ProtocolError::BadPayload {
                        message_type: Self::NAME,
                        detail: format!("unknown op {other:?}"),
                    })
                }
            });
            Ok(true)
        })?;
        Ok(FsRequest {
            op: require!(f, op),
        })
    }
}

/// One entry of a `Stat` or `List` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEntryInfo {
    pub path: String,
    /// `"file"`, `"dir"`, `"symlink"` or `"other"`.
    pub kind: String,
    pub size: u64,
    /// Including the file-type bits (`0o100644` for a regular file).
    pub mode: u32,
    /// Unix seconds.
    pub modified: Option<i64>,
}

impl FsEntryInfo {
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 5);
        cbor::write_text(out, "path");
        cbor::write_text(out, &self.path);
        cbor::write_text(out, "kind");
        cbor::write_text(out, &self.kind);
        cbor::write_text(out, "size");
        cbor::write_u64(out, self.size);
        cbor::write_text(out, "mode");
        cbor::write_u64(out, self.mode as u64);
        cbor::write_text(out, "modified");
        match self.modified {
            Some(m) => cbor::write_i64(out, m),
            None => cbor::write_null(out),
        }
    }

    fn decode(f: &mut Fields) -> Result<Self, ProtocolError> {
        let (mut path, mut kind, mut size, mut mode, mut modified) = (None, None, None, None, None);
        f.map(|f, k| {
            match k {
                "path" => path = Some(f.text(k)?),
                "kind" => kind = Some(f.text(k)?),
                "size" => size = Some(f.u64(k)?),
                "mode" => mode = Some(f.int(k)?),
                "modified" => modified = f.opt_int(k)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(FsEntryInfo {
            path: require!(f, path),
            kind: require!(f, kind),
            size: require!(f, size),
            mode: require!(f, mode),
            modified,
        })
    }
}

/// What a successful `Stat` or `List` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsResponseData {
    Stat(FsEntryInfo),
    List(Vec<FsEntryInfo>),
}

/// `core.fs.response`: ends every fs session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsResponse {
    pub ok: bool,
    pub error: Option<String>,
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

impl Payload for FsResponse {
    const NAME: &'static str = "core.fs.response";
    fn encode(&self, out: &mut Vec<u8>) {
        cbor::write_map_head(out, 3);
        cbor::write_text(out, "ok");
        cbor::write_bool(out, self.ok);
        cbor::write_text(out, "error");
        cbor::write_opt_text(out, self.error.as_deref());
        cbor::write_text(out, "data");
        match &self.data {
            None => cbor::write_null(out),
            Some(FsResponseData::Stat(e)) => {
                cbor::write_map_head(out, 1);
                cbor::write_text(out, "Stat");
                e.encode(out);
            }
            Some(FsResponseData::List(entries)) => {
                cbor::write_map_head(out, 1);
                cbor::write_text(out, "List");
                cbor::write_array_head(out, entries.len());
                for e in entries {
                    e.encode(out);
                }
            }
        }
    }
    fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(payload, Self::NAME);
        let mut ok = None;
        let mut resp = FsResponse::ok();
        f.map(|f, k| {
            match k {
                "ok" => ok = Some(f.bool(k)?),
                "error" => resp.error = f.opt_text(k)?,
                "data" => {
                    if f.r.read_null().map_err(|e| f.fail(k, e))? {
                        resp.data = None;
                        return Ok(true);
                    }
                    let (variant, seq) = f.variant(k)?;
                    resp.data = Some(match variant.as_str() {
                        "Stat" => FsResponseData::Stat(FsEntryInfo::decode(f)?),
                        "List" => {
                            let mut entries = Vec::new();
                            let mut seq = f.r.read_array().map_err(|e| f.fail(k, e))?;
                            while f.r.next_item(&mut seq).map_err(|e| f.fail(k, e))? {
                                entries.push(FsEntryInfo::decode(f)?);
                            }
                            FsResponseData::List(entries)
                        }
                        other => {
                            return Err(ProtocolError::BadPayload {
                                message_type: Self::NAME,
                                detail: format!("unknown data variant {other:?}"),
                            })
                        }
                    });
                    f.end_variant(k, seq)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        resp.ok = require!(f, ok);
        Ok(resp)
    }
}
