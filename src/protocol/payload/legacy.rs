//! Filesystem payloads of protocol 0.3.x and 0.4.x (generation 1, legacy
//! relays), path-based: a `Read` streams a whole file, a `Write` takes one.
//! Generation 2+ agents refuse most of these shapes; see the parent module
//! for theirs.

use serde::{Deserialize, Serialize};

use super::Payload;

/// The operation of a 0.3.x/0.4.x `core.fs.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// Never follows a final symlink.
    Stat {
        path: String,
    },
    List {
        path: String,
    },
    Read {
        path: String,
    },
    Write {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
    },
    Mkdir {
        path: String,
    },
    Remove {
        path: String,
    },
    /// Always recursive.
    RemoveDir {
        path: String,
    },
    Copy {
        src: String,
        dst: String,
    },
    Rename {
        src: String,
        dst: String,
    },
}

/// `core.fs.request`, legacy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    pub op: FsOp,
}

/// One entry of a `Stat` or `List` reply, legacy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// What a successful `Stat` or `List` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponseData {
    Stat(FsEntryInfo),
    List(Vec<FsEntryInfo>),
}

/// `core.fs.response`, legacy: ends every fs session.
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

impl Payload for FsRequest {
    const NAME: &'static str = "core.fs.request";
}

impl Payload for FsResponse {
    const NAME: &'static str = "core.fs.response";
}
