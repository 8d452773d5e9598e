//! Handle-based filesystem requests (generation 2: agentd 0.5.0 and later).
//!
//! Files and directories are opened into numbered handles that belong to
//! the relay client (slot) that opened them: another client gets "owned by
//! a different relay client", a client holds at most 1024, and all of a
//! client's handles close when it disconnects. Read streams `core.fs.data`
//! chunks from an offset; Write takes chunks until an empty one. Errors are
//! agentd's: the operation's prefix (`open: `, `stat: `...) then the error.
//!
//! Paths are confined to the root exactly as the legacy requests are
//! (`fs.rs`); the confinement is a path check, not a security boundary.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions, ReadDir};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use microsandbox_agent::protocol::MessageType;

use crate::fs::{Follow, GuestFs};
use crate::outbox::Outbox;
use microsandbox_agent::protocol::payload::{
    FsEntryInfo, FsOp, FsOpenOptions, FsResponse, FsResponseData, FsSetAttrs,
};

pub const MAX_HANDLES_PER_CLIENT: usize = 1024;
const DEFAULT_READ_DIR_LIMIT: u32 = 128;
/// Largest `core.fs.data` chunk of a Read (the protocol allows 3 MiB).
const READ_CHUNK: usize = 2 * 1024 * 1024;

enum Object {
    File {
        file: Arc<File>,
        read: bool,
        write: bool,
        guest: String,
    },
    Dir {
        entries: Arc<Mutex<ReadDir>>,
        host: PathBuf,
        guest: String,
    },
}

struct Entry {
    owner: u32,
    object: Object,
}

/// Every open handle of the sandbox, numbered sandbox-wide like agentd's.
#[derive(Default)]
pub struct HandleTable {
    entries: Mutex<HashMap<u64, Entry>>,
    last: Mutex<u64>,
}

impl HandleTable {
    fn insert(&self, owner: u32, object: Object) -> Result<u64, String> {
        let mut entries = self.entries.lock().unwrap();
        let owned = entries.values().filter(|e| e.owner == owner).count();
        if owned >= MAX_HANDLES_PER_CLIENT {
            return Err(format!(
                "too many open filesystem handles for relay client: {owned}"
            ));
        }
        let mut last = self.last.lock().unwrap();
        loop {
            *last = last.wrapping_add(1).max(1);
            if !entries.contains_key(&last) {
                break;
            }
        }
        entries.insert(*last, Entry { owner, object });
        Ok(*last)
    }

    /// Runs `f` on a handle the caller owns.
    fn with<T>(
        &self,
        owner: u32,
        handle: u64,
        f: impl FnOnce(&Object) -> Result<T, String>,
    ) -> Result<T, String> {
        let entries = self.entries.lock().unwrap();
        let entry = entries
            .get(&handle)
            .ok_or_else(|| format!("invalid handle: {handle}"))?;
        if entry.owner != owner {
            return Err(format!(
                "handle {handle} is owned by a different relay client"
            ));
        }
        f(&entry.object)
    }

    fn close(&self, owner: u32, handle: u64) -> Result<(), String> {
        self.with(owner, handle, |_| Ok(()))?;
        self.entries.lock().unwrap().remove(&handle);
        Ok(())
    }

    fn file(&self, owner: u32, handle: u64) -> Result<(Arc<File>, bool, bool), String> {
        self.with(owner, handle, |object| match object {
            Object::File {
                file, read, write, ..
            } => Ok((file.clone(), *read, *write)),
            Object::Dir { .. } => Err(format!("handle {handle} is a directory")),
        })
    }

    fn dir(&self, owner: u32, handle: u64) -> Result<(Arc<Mutex<ReadDir>>, String), String> {
        self.with(owner, handle, |object| match object {
            Object::Dir { entries, guest, .. } => Ok((entries.clone(), guest.clone())),
            Object::File { .. } => Err(format!("handle {handle} is a file")),
        })
    }

    /// Closes everything a client left open.
    pub fn release_owner(&self, owner: u32) {
        self.entries.lock().unwrap().retain(|_, e| e.owner != owner);
    }
}

/// A Write whose data chunks are arriving.
struct WriteSession {
    file: Arc<File>,
    offset: u64,
    written: u64,
    expected: Option<u64>,
}

/// One client connection's filesystem state.
pub struct ClientFs {
    fs: GuestFs,
    table: Arc<HandleTable>,
    slot: u32,
    writes: HashMap<u32, WriteSession>,
}

impl Drop for ClientFs {
    fn drop(&mut self) {
        self.table.release_owner(self.slot);
    }
}

/// What became of a request.
pub enum Outcome {
    /// Answer this now.
    Respond(FsResponse),
    /// A Read: stream it with [`stream_read`] (blocking), which answers.
    Read {
        file: Arc<File>,
        offset: u64,
        len: Option<u64>,
    },
    /// A Write session is open; the answer follows its data.
    AwaitData,
}

impl ClientFs {
    pub fn new(fs: GuestFs, table: Arc<HandleTable>, slot: u32) -> ClientFs {
        ClientFs {
            fs,
            table,
            slot,
            writes: HashMap::new(),
        }
    }

    /// Serves one request. Blocking (a few syscalls; Copy and recursive
    /// RemoveDir can take longer).
    pub fn request(&mut self, id: u32, op: FsOp) -> Outcome {
        match op {
            FsOp::Read {
                handle,
                offset,
                len,
            } => match self.table.file(self.slot, handle) {
                Ok((file, true, _)) => Outcome::Read { file, offset, len },
                Ok(_) => Outcome::Respond(FsResponse::error(format!(
                    "read: handle {handle} is not open for reading"
                ))),
                Err(e) => Outcome::Respond(FsResponse::error(format!("read: {e}"))),
            },
            FsOp::Write {
                handle,
                offset,
                len,
            } => match self.table.file(self.slot, handle) {
                Ok((file, _, true)) => {
                    self.writes.insert(
                        id,
                        WriteSession {
                            file,
                            offset,
                            written: 0,
                            expected: len,
                        },
                    );
                    Outcome::AwaitData
                }
                Ok(_) => Outcome::Respond(FsResponse::error(format!(
                    "write: handle {handle} is not open for writing"
                ))),
                Err(e) => Outcome::Respond(FsResponse::error(format!("write: {e}"))),
            },
            op => Outcome::Respond(self.serve(op)),
        }
    }

    /// One `core.fs.data` chunk of a Write; `Some` answer ends the session.
    pub fn data(&mut self, id: u32, data: &[u8]) -> Option<FsResponse> {
        let Some(session) = self.writes.get_mut(&id) else {
            return Some(FsResponse::error(format!("unknown write session: {id}")));
        };
        let end = session.written + data.len() as u64;
        let answer = if data.is_empty() {
            match session.expected {
                Some(expected) if expected != session.written => Some(FsResponse::error(format!(
                    "write length mismatch: expected {expected}, wrote {}",
                    session.written
                ))),
                _ => Some(FsResponse::ok()),
            }
        } else if session.expected.is_some_and(|expected| end > expected) {
            Some(FsResponse::error(format!(
                "write length mismatch: expected {}, received at least {end}",
                session.expected.unwrap()
            )))
        } else {
            match session
                .file
                .write_all_at(data, session.offset + session.written)
            {
                Ok(()) => {
                    session.written = end;
                    None
                }
                Err(e) => Some(FsResponse::error(format!("write: {e}"))),
            }
        };
        if answer.is_some() {
            self.writes.remove(&id);
        }
        answer
    }

    fn host(&self, guest: &str, follow: bool) -> Result<PathBuf, String> {
        let follow = if follow {
            Follow::Last
        } else {
            Follow::NotLast
        };
        self.fs.resolve(guest, follow)
    }

    fn serve(&mut self, op: FsOp) -> FsResponse {
        let (prefix, result) = match op {
            FsOp::Stat {
                path,
                follow_symlink,
            } => ("stat", self.stat(&path, follow_symlink)),
            FsOp::SetStat {
                path,
                follow_symlink,
                attrs,
            } => ("setstat", self.set_stat(&path, follow_symlink, &attrs)),
            FsOp::List { path } => ("readdir", self.list(&path)),
            FsOp::RealPath { path } => ("realpath", self.real_path(&path)),
            FsOp::ReadLink { path } => ("readlink", self.read_link(&path)),
            FsOp::Symlink {
                target, link_path, ..
            } => ("symlink", self.symlink(&target, &link_path)),
            FsOp::Mkdir { path, mode, .. } => ("mkdir", self.mkdir(&path, mode)),
            FsOp::Remove { path } => (
                "remove",
                self.fs
                    .resolve_not_root(&path)
                    .and_then(|host| fs::remove_file(host).map_err(text))
                    .map(|()| None),
            ),
            FsOp::RemoveDir { path, recursive } => (
                "remove_dir",
                self.fs
                    .resolve_not_root(&path)
                    .and_then(|host| {
                        if recursive {
                            fs::remove_dir_all(host).map_err(text)
                        } else {
                            fs::remove_dir(host).map_err(text)
                        }
                    })
                    .map(|()| None),
            ),
            FsOp::Copy { src, dst } => (
                "copy",
                self.host(&src, true).and_then(|from| {
                    let to = self.host(&dst, true)?;
                    fs::copy(from, to).map_err(text).map(|_| None)
                }),
            ),
            FsOp::Rename { src, dst } => (
                "rename",
                self.fs.resolve_not_root(&src).and_then(|from| {
                    let to = self.fs.resolve_not_root(&dst)?;
                    fs::rename(from, to).map_err(text).map(|()| None)
                }),
            ),
            FsOp::OpenFile { path, options } => ("open", self.open_file(&path, &options)),
            FsOp::OpenDir { path } => ("opendir", self.open_dir(&path)),
            FsOp::CloseHandle { handle } => {
                ("close", self.table.close(self.slot, handle).map(|()| None))
            }
            FsOp::ReadDir { handle, limit } => ("readdir", self.read_dir(handle, limit)),
            FsOp::FStat { handle } => ("fstat", self.fstat(handle)),
            FsOp::FSetStat { handle, attrs } => ("fsetstat", self.fset_stat(handle, &attrs)),
            FsOp::Read { .. } | FsOp::Write { .. } => {
                unreachable!("Read and Write are handled by request()")
            }
        };
        match result {
            Ok(data) => FsResponse {
                data,
                ..FsResponse::ok()
            },
            Err(e) => FsResponse::error(format!("{prefix}: {e}")),
        }
    }

    fn stat(&self, path: &str, follow: bool) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, follow)?;
        let meta = if follow {
            fs::metadata(host)
        } else {
            fs::symlink_metadata(host)
        };
        Ok(Some(FsResponseData::Stat(entry_info(
            path,
            &meta.map_err(text)?,
        ))))
    }

    fn set_stat(
        &self,
        path: &str,
        follow: bool,
        attrs: &FsSetAttrs,
    ) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, follow)?;
        if let Some(mode) = attrs.mode {
            fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| format!("chmod: {e}"))?;
        }
        if attrs.uid.is_some() || attrs.gid.is_some() {
            let chown = if follow {
                std::os::unix::fs::chown
            } else {
                std::os::unix::fs::lchown
            };
            chown(&host, attrs.uid, attrs.gid).map_err(|e| format!("chown: {e}"))?;
        }
        if let Some(size) = attrs.size {
            OpenOptions::new()
                .write(true)
                .open(&host)
                .and_then(|f| f.set_len(size))
                .map_err(|e| format!("set_len: {e}"))?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            set_path_times(&host, follow, attrs).map_err(|e| format!("utimensat: {e}"))?;
        }
        Ok(None)
    }

    fn list(&self, path: &str) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, true)?;
        let mut dir = fs::read_dir(&host).map_err(text)?;
        let entries = next_entries(&mut dir, path, usize::MAX)?;
        Ok(Some(FsResponseData::List(entries)))
    }

    fn real_path(&self, path: &str) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, true)?;
        let canonical = fs::canonicalize(host).map_err(text)?;
        Ok(Some(FsResponseData::Path(self.guest_path(&canonical))))
    }

    /// The guest's name for a host path under the root.
    fn guest_path(&self, host: &Path) -> String {
        let relative = host.strip_prefix(self.fs.root()).unwrap_or(host);
        format!("/{}", relative.to_string_lossy())
    }

    fn read_link(&self, path: &str) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, false)?;
        let target = fs::read_link(host).map_err(text)?;
        Ok(Some(FsResponseData::Path(
            target.to_string_lossy().into_owned(),
        )))
    }

    fn symlink(&self, target: &str, link_path: &str) -> Result<Option<FsResponseData>, String> {
        let host = self.fs.resolve_not_root(link_path)?;
        std::os::unix::fs::symlink(target, host).map_err(text)?;
        Ok(None)
    }

    fn mkdir(&self, path: &str, mode: Option<u32>) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, true)?;
        fs::create_dir_all(&host).map_err(text)?;
        if let Some(mode) = mode {
            fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| format!("chmod: {e}"))?;
        }
        Ok(None)
    }

    fn open_file(
        &self,
        path: &str,
        options: &FsOpenOptions,
    ) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, true)?;
        let mut open = OpenOptions::new();
        open.read(options.read)
            .write(options.write)
            .append(options.append)
            .create(options.create)
            .truncate(options.truncate)
            .create_new(options.create_new);
        if let Some(mode) = options.mode {
            open.mode(mode);
        }
        let file = open.open(host).map_err(text)?;
        let handle = self.table.insert(
            self.slot,
            Object::File {
                file: Arc::new(file),
                read: options.read,
                write: options.write || options.append,
                guest: path.to_string(),
            },
        )?;
        Ok(Some(FsResponseData::Handle(handle)))
    }

    fn open_dir(&self, path: &str) -> Result<Option<FsResponseData>, String> {
        let host = self.host(path, true)?;
        let entries = fs::read_dir(&host).map_err(text)?;
        let handle = self.table.insert(
            self.slot,
            Object::Dir {
                entries: Arc::new(Mutex::new(entries)),
                host,
                guest: path.to_string(),
            },
        )?;
        Ok(Some(FsResponseData::Handle(handle)))
    }

    fn read_dir(&self, handle: u64, limit: Option<u32>) -> Result<Option<FsResponseData>, String> {
        let (dir, guest) = self.table.dir(self.slot, handle)?;
        let limit = limit.unwrap_or(DEFAULT_READ_DIR_LIMIT).max(1) as usize;
        let entries = next_entries(&mut dir.lock().unwrap(), &guest, limit)?;
        Ok(Some(FsResponseData::List(entries)))
    }

    fn fstat(&self, handle: u64) -> Result<Option<FsResponseData>, String> {
        let info = self.table.with(self.slot, handle, |object| match object {
            Object::File { file, guest, .. } => {
                file.metadata().map(|m| entry_info(guest, &m)).map_err(text)
            }
            Object::Dir { host, guest, .. } => fs::metadata(host)
                .map(|m| entry_info(guest, &m))
                .map_err(text),
        })?;
        Ok(Some(FsResponseData::Stat(info)))
    }

    fn fset_stat(&self, handle: u64, attrs: &FsSetAttrs) -> Result<Option<FsResponseData>, String> {
        let (file, _, _) = self.table.file(self.slot, handle)?;
        if let Some(mode) = attrs.mode {
            file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| format!("chmod: {e}"))?;
        }
        if attrs.uid.is_some() || attrs.gid.is_some() {
            std::os::unix::fs::fchown(&*file, attrs.uid, attrs.gid)
                .map_err(|e| format!("fchown: {e}"))?;
        }
        if let Some(size) = attrs.size {
            file.set_len(size).map_err(|e| format!("set_len: {e}"))?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let times = timespecs(attrs);
            // SAFETY: the fd is open for as long as `file` lives, and
            // `times` is a live array of the two timespecs futimens reads.
            if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
                return Err(format!("futimens: {}", io::Error::last_os_error()));
            }
        }
        Ok(None)
    }
}

/// Streams a Read's chunks, then its answer. Blocking; sends through the
/// runtime so the outbox budget holds.
pub fn stream_read(
    outbox: &Outbox,
    runtime: &tokio::runtime::Handle,
    id: u32,
    file: &File,
    offset: u64,
    len: Option<u64>,
) {
    let mut position = offset;
    let end = len.map(|len| offset.saturating_add(len));
    let mut buf = vec![0u8; READ_CHUNK];
    let response = loop {
        let want = match end {
            Some(end) => (end - position).min(READ_CHUNK as u64) as usize,
            None => READ_CHUNK,
        };
        if want == 0 {
            break FsResponse::ok();
        }
        let n = match read_full_at(file, &mut buf[..want], position) {
            Ok(0) => break FsResponse::ok(),
            Ok(n) => n,
            Err(e) => break FsResponse::error(format!("read: {e}")),
        };
        position += n as u64;
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if runtime
            .block_on(outbox.send_data(MessageType::FsData, id, &chunk))
            .is_err()
        {
            return;
        }
        if n < want {
            break FsResponse::ok();
        }
    };
    let _ = runtime.block_on(outbox.send_payload(MessageType::FsResponse, id, &response));
}

/// Reads as much of `buf` as the file has from `offset`.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn next_entries(dir: &mut ReadDir, guest: &str, limit: usize) -> Result<Vec<FsEntryInfo>, String> {
    let mut entries = Vec::new();
    while entries.len() < limit {
        let Some(entry) = dir.next() else { break };
        let entry = entry.map_err(text)?;
        let child = Path::new(guest).join(entry.file_name());
        let child = child.to_string_lossy();
        entries.push(match fs::symlink_metadata(entry.path()) {
            Ok(meta) => entry_info(&child, &meta),
            Err(_) => unknown_entry(&child),
        });
    }
    Ok(entries)
}

fn text(e: io::Error) -> String {
    e.to_string()
}

pub fn entry_info(path: &str, meta: &Metadata) -> FsEntryInfo {
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        "file"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    FsEntryInfo {
        path: path.to_string(),
        kind: kind.into(),
        size: meta.len(),
        mode: meta.mode(),
        modified: Some(meta.mtime()),
        uid: meta.uid(),
        gid: meta.gid(),
        atime: Some(meta.atime()),
        mtime: Some(meta.mtime()),
    }
}

fn unknown_entry(path: &str) -> FsEntryInfo {
    FsEntryInfo {
        path: path.to_string(),
        kind: "other".into(),
        size: 0,
        mode: 0,
        modified: None,
        uid: 0,
        gid: 0,
        atime: None,
        mtime: None,
    }
}

/// `[atime, mtime]` for utimensat/futimens; an absent time is left as is.
fn timespecs(attrs: &FsSetAttrs) -> [libc::timespec; 2] {
    let spec = |secs: Option<i64>| match secs {
        Some(s) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: 0,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    [spec(attrs.atime), spec(attrs.mtime)]
}

fn set_path_times(host: &Path, follow: bool, attrs: &FsSetAttrs) -> io::Result<()> {
    let c_path = CString::new(host.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = timespecs(attrs);
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: `c_path` is NUL-terminated and `times` is a live array of two
    // timespecs; both outlive the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
