//! Filesystem requests, served inside a host directory that plays the
//! guest's `/`.
//!
//! Path confinement is checked, not enforced by the kernel: symlinks are
//! resolved with `canonicalize` and the result must stay under the root, but
//! an exec running at the same time could swap a path between the check and
//! the use. That is acceptable only because this relay has no isolation at
//! all (exec runs arbitrary host commands); the checks exist so that fs
//! requests behave as they would in a guest, not as a security boundary.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use microsandbox_agent::protocol::payload::legacy::{
    FsEntryInfo, FsOp, FsResponse, FsResponseData,
};

/// Largest `core.fs.data` the relay sends for a Read, as the real agent does;
/// below the protocol's 3 MiB chunk limit.
pub const READ_CHUNK: usize = 2 * 1024 * 1024;
const _: () = assert!(READ_CHUNK <= microsandbox_agent::protocol::FS_CHUNK_SIZE);

/// A Write in progress writes to disk once this much data is buffered, so a
/// large upload does not sit in memory.
const WRITE_FLUSH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct GuestFs {
    /// Canonical host path of the guest's `/`.
    root: PathBuf,
}

/// Whether the last path component is followed if it is a symlink.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Last,
    NotLast,
}

fn fail(guest: &str, err: impl std::fmt::Display) -> String {
    format!("{guest}: {err}")
}

impl GuestFs {
    /// Canonical host path of the guest's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn new(root: &Path) -> std::io::Result<GuestFs> {
        Ok(GuestFs {
            root: fs::canonicalize(root)?,
        })
    }

    /// Maps a guest path to a host path under the root, refusing `..`
    /// components and symlinks that resolve outside it.
    pub fn resolve(&self, guest: &str, follow: Follow) -> Result<PathBuf, String> {
        let mut components = Vec::new();
        for c in guest.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(fail(guest, "\"..\" is not allowed in paths")),
                name => components.push(name),
            }
        }
        let Some((last, parents)) = components.split_last() else {
            return Ok(self.root.clone());
        };
        let mut dir = self.root.clone();
        for (i, name) in parents.iter().enumerate() {
            let next = dir.join(name);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => dir = self.confined_target(guest, &next)?,
                Ok(_) => dir = next,
                Err(_) => {
                    // Nothing below a missing directory exists, so nothing
                    // below it can be a symlink; the operation will report
                    // the missing directory itself (or create it).
                    dir = next;
                    dir.extend(&parents[i + 1..]);
                    break;
                }
            }
        }
        let host = dir.join(last);
        if follow == Follow::NotLast {
            return Ok(host);
        }
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => self.confined_target(guest, &host),
            _ => Ok(host),
        }
    }

    /// The fully resolved target of the symlink `link`, if under the root.
    fn confined_target(&self, guest: &str, link: &Path) -> Result<PathBuf, String> {
        let target = fs::canonicalize(link)
            .map_err(|e| fail(guest, format!("cannot resolve symlink: {e}")))?;
        if target.starts_with(&self.root) {
            Ok(target)
        } else {
            Err(fail(guest, "symlink resolves outside the root"))
        }
    }

    pub fn resolve_not_root(&self, guest: &str) -> Result<PathBuf, String> {
        let host = self.resolve(guest, Follow::NotLast)?;
        if host == self.root {
            return Err(fail(guest, "refusing to modify the root directory itself"));
        }
        Ok(host)
    }

    /// Serves every op but Read and Write, which stream data.
    pub fn serve(&self, op: &FsOp) -> FsResponse {
        match self.try_serve(op) {
            Ok(resp) => resp,
            Err(message) => FsResponse::error(message),
        }
    }

    fn try_serve(&self, op: &FsOp) -> Result<FsResponse, String> {
        let with_data = |data| FsResponse {
            data: Some(data),
            ..FsResponse::ok()
        };
        match op {
            FsOp::Stat { path } => {
                let host = self.resolve(path, Follow::NotLast)?;
                let meta = fs::symlink_metadata(&host).map_err(|e| fail(path, e))?;
                Ok(with_data(FsResponseData::Stat(entry_info(
                    path.clone(),
                    &meta,
                ))))
            }
            FsOp::List { path } => {
                let host = self.resolve(path, Follow::Last)?;
                let mut entries = Vec::new();
                for entry in fs::read_dir(&host).map_err(|e| fail(path, e))? {
                    let entry = entry.map_err(|e| fail(path, e))?;
                    let name = entry.file_name();
                    let guest_child = Path::new(path).join(&name);
                    let guest_child = guest_child.to_string_lossy().into_owned();
                    // An entry deleted while listing is simply left out.
                    if let Ok(meta) = fs::symlink_metadata(entry.path()) {
                        entries.push(entry_info(guest_child, &meta));
                    }
                }
                Ok(with_data(FsResponseData::List(entries)))
            }
            FsOp::Mkdir { path } => {
                let host = self.resolve(path, Follow::Last)?;
                fs::create_dir_all(&host).map_err(|e| fail(path, e))?;
                Ok(FsResponse::ok())
            }
            FsOp::Remove { path } => {
                let host = self.resolve_not_root(path)?;
                fs::remove_file(&host).map_err(|e| fail(path, e))?;
                Ok(FsResponse::ok())
            }
            FsOp::RemoveDir { path } => {
                let host = self.resolve_not_root(path)?;
                let meta = fs::symlink_metadata(&host).map_err(|e| fail(path, e))?;
                if !meta.is_dir() {
                    return Err(fail(path, "not a directory"));
                }
                fs::remove_dir_all(&host).map_err(|e| fail(path, e))?;
                Ok(FsResponse::ok())
            }
            FsOp::Copy { src, dst } => {
                let from = self.resolve(src, Follow::Last)?;
                let to = self.resolve(dst, Follow::Last)?;
                if fs::metadata(&from).map_err(|e| fail(src, e))?.is_dir() {
                    return Err(fail(src, "is a directory; Copy copies files"));
                }
                fs::copy(&from, &to).map_err(|e| fail(&format!("{src} -> {dst}"), e))?;
                Ok(FsResponse::ok())
            }
            FsOp::Rename { src, dst } => {
                let from = self.resolve_not_root(src)?;
                let to = self.resolve_not_root(dst)?;
                fs::rename(&from, &to).map_err(|e| fail(&format!("{src} -> {dst}"), e))?;
                Ok(FsResponse::ok())
            }
            FsOp::Read { .. } | FsOp::Write { .. } => {
                unreachable!("Read and Write are streamed by the connection")
            }
        }
    }

    /// Opens a regular file for a Read.
    pub fn open_for_read(&self, guest: &str) -> Result<File, String> {
        let host = self.resolve(guest, Follow::Last)?;
        let file = File::open(&host).map_err(|e| fail(guest, e))?;
        let meta = file.metadata().map_err(|e| fail(guest, e))?;
        if meta.is_dir() {
            return Err(fail(guest, "is a directory"));
        }
        Ok(file)
    }

    pub fn begin_write(&self, guest: &str, mode: Option<u32>) -> PendingWrite {
        PendingWrite {
            guest: guest.to_string(),
            target: self.resolve(guest, Follow::Last),
            mode,
            file: None,
            chunks: Vec::new(),
            buffered: 0,
        }
    }
}

/// Reads `file` in chunks of at most [`READ_CHUNK`] bytes, handing each to
/// `sink`; stops early if `sink` returns false.
pub fn read_chunks(
    guest: &str,
    mut file: File,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // Fill the chunk as far as the file allows, so that a file is sent
        // in as few frames as possible.
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(guest, e)),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        if !sink(&buf[..filled]) {
            return Ok(());
        }
        if filled < buf.len() {
            return Ok(());
        }
    }
}

fn entry_info(path: String, meta: &Metadata) -> FsEntryInfo {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_file() {
        "file"
    } else {
        "other"
    };
    FsEntryInfo {
        path,
        kind: kind.to_string(),
        size: meta.len(),
        mode: meta.mode(),
        modified: Some(meta.mtime()),
    }
}

/// A Write whose data is still arriving.
pub struct PendingWrite {
    guest: String,
    /// The resolved host path, or the error to report at the end.
    target: Result<PathBuf, String>,
    mode: Option<u32>,
    file: Option<File>,
    chunks: Vec<Bytes>,
    buffered: usize,
}

impl PendingWrite {
    /// Takes one chunk; returns true when enough is buffered that the caller
    /// should [`flush`](Self::flush) it (a blocking call).
    pub fn push(&mut self, data: Bytes) -> bool {
        if self.target.is_err() {
            return false;
        }
        self.buffered += data.len();
        self.chunks.push(data);
        self.buffered >= WRITE_FLUSH_BYTES
    }

    /// Writes the buffered chunks to disk, creating or truncating the file on
    /// the first call. Blocking.
    pub fn flush(&mut self) {
        if let Err(e) = self.try_flush() {
            self.target = Err(e);
            self.chunks.clear();
        }
        self.buffered = 0;
    }

    fn try_flush(&mut self) -> Result<(), String> {
        let guest = &self.guest;
        let path = self.target.as_ref().map_err(Clone::clone)?;
        if self.file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.mode.unwrap_or(0o666) & 0o7777)
                .open(path)
                .map_err(|e| fail(guest, e))?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().unwrap();
        for chunk in self.chunks.drain(..) {
            file.write_all(&chunk).map_err(|e| fail(guest, e))?;
        }
        Ok(())
    }

    /// Writes what is left and applies `mode`. Blocking.
    pub fn finish(mut self) -> FsResponse {
        self.flush();
        let result = self.target.clone().and_then(|_| {
            let file = self.file.as_ref().expect("flush opened the file");
            if let Some(mode) = self.mode {
                // Explicitly, since the open mode is masked by the umask and
                // ignored for a file that already existed.
                file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| fail(&self.guest, e))?;
            }
            Ok(())
        });
        match result {
            Ok(()) => FsResponse::ok(),
            Err(message) => FsResponse::error(message),
        }
    }
}
