//! The generation-2 filesystem calls (0.5.1 and later): stat that follows
//! links, realpath, readlink, symlink, set-stat, removing only empty
//! directories, more of each entry's metadata, and files kept open through
//! a guest handle. Every call here fails with `MSB_ERR_UNSUPPORTED` on
//! older sandboxes (legacy relays and 0.5.0) without sending anything.

use std::ffi::c_char;

use bytes::Bytes;
use parking_lot::RwLock;

use super::client::{client_arg, msb_client};
use super::fs::msb_fs_entry;
use super::handle::{arc_borrow, arc_into_raw, arc_release, box_into_raw, box_ref, free_box};
use super::{
    bytes_arg, deadline_arg, msb_bytes, msb_error, msb_status, need_out, new_bytes, put, run,
    run_value, str_arg, Fail, FfiResult, MSB_ERR_WRONG_STATE, MSB_OK,
};
use crate::client::handles::{self, File};
use crate::protocol::payload::{FsOpenOptions, FsSetAttrs};

/// An owned buffer holding `text` followed by a NUL that its length does
/// not count, so that its data is also a C string.
fn nul_terminated_bytes(text: String) -> *mut msb_bytes {
    let mut v = text.into_bytes();
    let len = v.len();
    v.push(0);
    new_bytes(Bytes::from(v).slice(..len))
}

fn put_entry(
    info: crate::protocol::payload::FsEntryInfo,
    out: *mut *mut msb_fs_entry,
) -> msb_status {
    // SAFETY: the caller checked `out` non-NULL.
    unsafe { put(out, box_into_raw(msb_fs_entry::new(info))) };
    MSB_OK
}

/// Metadata of `path`, following symlinks (the entry describes what the
/// link points at; `msb_fs_stat` describes the link itself).
///
/// On success the caller owns `*entry_out` and must release it with
/// `msb_fs_entry_free`. A dangling link is `MSB_ERR_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn msb_fs_stat_follow(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    entry_out: *mut *mut msb_fs_entry,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(entry_out, "entry_out")?;
        let info = handles::stat(&c.client, p, true, deadline_arg(timeout_ms))?;
        Ok(put_entry(info, entry_out))
    })
}

/// Shared shape of realpath and readlink: a path in, a path out.
fn path_to_path(
    client: *const msb_client,
    path: *const c_char,
    path_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
    op: impl FnOnce(&crate::client::Client, &str) -> crate::client::Result<String>,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(path_out, "path_out")?;
        let result = op(&c.client, p)?;
        // SAFETY: checked non-NULL above.
        unsafe { put(path_out, nul_terminated_bytes(result)) };
        Ok(MSB_OK)
    })
}

/// The canonical absolute path of `path` in the guest, with every symlink,
/// `.` and `..` resolved (`realpath(3)`); the path must exist.
///
/// On success the caller owns `*path_out` and must release it with
/// `msb_bytes_free`. Its bytes are the path (UTF-8, no terminating NUL
/// counted by `msb_bytes_len`), and a NUL follows them in memory, so
/// `(const char *)msb_bytes_data(path)` is also a C string.
#[no_mangle]
pub extern "C" fn msb_fs_realpath(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    path_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    path_to_path(client, path, path_out, err_out, |c, p| {
        handles::real_path(c, p, deadline_arg(timeout_ms))
    })
}

/// The target stored in the symlink `path`, unresolved. Same ownership of
/// `*path_out` as `msb_fs_realpath`. A path that is not a symlink is a
/// guest error (`EINVAL`, errno 22).
#[no_mangle]
pub extern "C" fn msb_fs_readlink(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    path_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    path_to_path(client, path, path_out, err_out, |c, p| {
        handles::read_link(c, p, deadline_arg(timeout_ms))
    })
}

/// Creates the symlink `link_path` pointing at `target` (stored as given;
/// it need not exist). `MSB_ERR_EXISTS` if `link_path` exists.
#[no_mangle]
pub extern "C" fn msb_fs_symlink(
    client: *const msb_client,
    target: *const c_char,
    link_path: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let (t, l) = unsafe { (str_arg(target, "target")?, str_arg(link_path, "link_path")?) };
        handles::symlink(&c.client, t, l, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Removes the directory `path`: with everything in it when `recursive`
/// (as `msb_fs_remove_dir`), else only if it is empty (a directory with
/// entries is a guest error, `ENOTEMPTY`, errno 39).
#[no_mangle]
pub extern "C" fn msb_fs_remove_dir_ex(
    client: *const msb_client,
    path: *const c_char,
    recursive: bool,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        handles::remove_dir(&c.client, p, recursive, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

// ---------------------------------------------------------------- set-stat

/// The attributes a set-stat changes: a builder, each field left alone
/// unless set. Build it, pass it to `msb_fs_set_stat` or
/// `msb_file_set_stat` (which copy it), and release it with
/// `msb_fs_set_attrs_free`; it may be reused.
///
/// Thread safety: a plain builder; one thread at a time.
pub struct msb_fs_set_attrs {
    attrs: FsSetAttrs,
}

/// A builder that changes nothing yet.
///
/// On success the caller owns `*attrs_out` and must release it with
/// `msb_fs_set_attrs_free`.
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_new(
    attrs_out: *mut *mut msb_fs_set_attrs,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        need_out(attrs_out, "attrs_out")?;
        let a = box_into_raw(msb_fs_set_attrs {
            attrs: FsSetAttrs::default(),
        });
        // SAFETY: checked non-NULL above.
        unsafe { put(attrs_out, a) };
        Ok(MSB_OK)
    })
}

/// Changes one field of a builder.
fn set_field(
    attrs: *mut msb_fs_set_attrs,
    err_out: *mut *mut msb_error,
    f: impl FnOnce(&mut FsSetAttrs) -> FfiResult<()>,
) -> msb_status {
    run(err_out, || {
        // SAFETY: NULL or a live builder, used by one thread at a time
        // (header contract).
        let a = unsafe { attrs.as_mut() }.ok_or_else(|| Fail::null("attrs"))?;
        f(&mut a.attrs)?;
        Ok(MSB_OK)
    })
}

/// Sets the permission bits (within 0..=07777, else
/// `MSB_ERR_INVALID_ARGUMENT`).
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_mode(
    attrs: *mut msb_fs_set_attrs,
    mode: u32,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        if mode > 0o7777 {
            return Err(Fail::invalid("mode must be within 0..=07777"));
        }
        a.mode = Some(mode);
        Ok(())
    })
}

/// Sets the owning user id (`chown`).
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_uid(
    attrs: *mut msb_fs_set_attrs,
    uid: u32,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        a.uid = Some(uid);
        Ok(())
    })
}

/// Sets the owning group id (`chown`).
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_gid(
    attrs: *mut msb_fs_set_attrs,
    gid: u32,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        a.gid = Some(gid);
        Ok(())
    })
}

/// Sets the size: the file is truncated or extended with zeros.
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_size(
    attrs: *mut msb_fs_set_attrs,
    size: u64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        a.size = Some(size);
        Ok(())
    })
}

/// Sets the access time, in Unix seconds.
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_atime(
    attrs: *mut msb_fs_set_attrs,
    atime: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        a.atime = Some(atime);
        Ok(())
    })
}

/// Sets the modification time, in Unix seconds.
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_mtime(
    attrs: *mut msb_fs_set_attrs,
    mtime: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    set_field(attrs, err_out, |a| {
        a.mtime = Some(mtime);
        Ok(())
    })
}

/// Releases a builder. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_fs_set_attrs_free(attrs: *mut msb_fs_set_attrs) {
    free_box(attrs);
}

fn attrs_arg(attrs: *const msb_fs_set_attrs) -> FfiResult<FsSetAttrs> {
    box_ref(attrs, "attrs").map(|a| a.attrs)
}

/// Changes the attributes `attrs` sets on `path`: of what a final symlink
/// points at when `follow_symlink`, else of the path itself. `attrs` is
/// borrowed for the call.
#[no_mangle]
pub extern "C" fn msb_fs_set_stat(
    client: *const msb_client,
    path: *const c_char,
    follow_symlink: bool,
    attrs: *const msb_fs_set_attrs,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        let a = attrs_arg(attrs)?;
        handles::set_stat(&c.client, p, follow_symlink, a, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

// ---------------------------------------------------------------- entries

/// The owner's user id (0 if NULL, and on legacy relays, which do not
/// report it).
#[no_mangle]
pub extern "C" fn msb_fs_entry_uid(entry: *const msb_fs_entry) -> u32 {
    box_ref(entry, "entry").map_or(0, |e| e.info.uid)
}

/// The owner's group id (0 if NULL, and on legacy relays).
#[no_mangle]
pub extern "C" fn msb_fs_entry_gid(entry: *const msb_fs_entry) -> u32 {
    box_ref(entry, "entry").map_or(0, |e| e.info.gid)
}

/// Writes the access time (Unix seconds) to `*atime_out` and returns true,
/// or returns false if the guest did not report one (legacy relays never
/// do) or on NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_atime(entry: *const msb_fs_entry, atime_out: *mut i64) -> bool {
    match box_ref(entry, "entry").ok().and_then(|e| e.info.atime) {
        Some(t) if !atime_out.is_null() => {
            // SAFETY: non-NULL, caller-provided storage for an int64_t.
            unsafe { put(atime_out, t) };
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------- files

/// `msb_file_open` flag: open for reading.
pub const MSB_FILE_READ: u32 = 0x01;
/// `msb_file_open` flag: open for writing.
pub const MSB_FILE_WRITE: u32 = 0x02;
/// `msb_file_open` flag: every write goes to the end of the file.
pub const MSB_FILE_APPEND: u32 = 0x04;
/// `msb_file_open` flag: create the file if it does not exist (needs
/// `MSB_FILE_WRITE` or `MSB_FILE_APPEND`).
pub const MSB_FILE_CREATE: u32 = 0x08;
/// `msb_file_open` flag: truncate the file to 0 bytes (needs
/// `MSB_FILE_WRITE`).
pub const MSB_FILE_TRUNCATE: u32 = 0x10;
/// `msb_file_open` flag: create the file, failing with `MSB_ERR_EXISTS` if
/// it exists.
pub const MSB_FILE_CREATE_NEW: u32 = 0x20;

const ALL_FILE_FLAGS: u32 = MSB_FILE_READ
    | MSB_FILE_WRITE
    | MSB_FILE_APPEND
    | MSB_FILE_CREATE
    | MSB_FILE_TRUNCATE
    | MSB_FILE_CREATE_NEW;

/// The number of open handles the guest allows one connection; opening
/// more fails with `MSB_ERR_GUEST` and a message naming this limit.
pub const MSB_FILE_HANDLE_LIMIT: u32 = 1024;

/// A file in the guest kept open through a handle, for reads and writes
/// at any offset. The handle belongs to the client connection that opened
/// it and dies with it.
///
/// Thread safety: any function may be called from any thread; reads,
/// writes and stats may run concurrently (each is its own request).
/// `msb_file_close` waits for calls in progress on the file, then makes
/// later ones fail with `MSB_ERR_WRONG_STATE`.
pub struct msb_file {
    file: RwLock<Option<File>>,
}

/// Opens `path` in the guest. `flags` combines `MSB_FILE_*` (at least one
/// of READ, WRITE, APPEND; unknown bits are `MSB_ERR_INVALID_ARGUMENT`);
/// `mode` is the permission bits of a created file (e.g. 0644), or -1 for
/// the guest's default. A missing file without CREATE is
/// `MSB_ERR_NOT_FOUND`.
///
/// Each open file holds one of the guest's `MSB_FILE_HANDLE_LIMIT` handles
/// per connection until `msb_file_close` or `msb_file_free`;
/// `msb_client_open_files` counts them.
///
/// On success the caller owns `*file_out` and must release it with
/// `msb_file_free`.
#[no_mangle]
pub extern "C" fn msb_file_open(
    client: *const msb_client,
    path: *const c_char,
    flags: u32,
    mode: i32,
    timeout_ms: i64,
    file_out: *mut *mut msb_file,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(file_out, "file_out")?;
        let options = open_options(flags, mode)?;
        let file = File::open(&c.client, p, options, deadline_arg(timeout_ms))?;
        let h = arc_into_raw(msb_file {
            file: RwLock::new(Some(file)),
        });
        // SAFETY: checked non-NULL above.
        unsafe { put(file_out, h) };
        Ok(MSB_OK)
    })
}

fn open_options(flags: u32, mode: i32) -> FfiResult<FsOpenOptions> {
    if flags & !ALL_FILE_FLAGS != 0 {
        return Err(Fail::invalid(format!(
            "flags 0x{flags:x} has bits outside MSB_FILE_*"
        )));
    }
    if flags & (MSB_FILE_READ | MSB_FILE_WRITE | MSB_FILE_APPEND) == 0 {
        return Err(Fail::invalid(
            "flags needs MSB_FILE_READ, MSB_FILE_WRITE or MSB_FILE_APPEND",
        ));
    }
    let mode = match mode {
        -1 => None,
        m if (0..=0o7777).contains(&m) => Some(m as u32),
        _ => return Err(Fail::invalid("mode must be -1 or within 0..=07777")),
    };
    Ok(FsOpenOptions {
        read: flags & MSB_FILE_READ != 0,
        write: flags & MSB_FILE_WRITE != 0,
        append: flags & MSB_FILE_APPEND != 0,
        create: flags & MSB_FILE_CREATE != 0,
        truncate: flags & MSB_FILE_TRUNCATE != 0,
        create_new: flags & MSB_FILE_CREATE_NEW != 0,
        mode,
        user: None,
    })
}

fn closed() -> Fail {
    Fail::new(MSB_ERR_WRONG_STATE, "the file was already closed")
}

/// Runs `f` on an open file.
fn with_file<T>(file: *const msb_file, f: impl FnOnce(&File) -> FfiResult<T>) -> FfiResult<T> {
    let h = arc_borrow(file, "file")?;
    let guard = h.file.read();
    f(guard.as_ref().ok_or_else(closed)?)
}

/// Reads up to `len` bytes at `offset` (at most 64 MiB per call; more is
/// `MSB_ERR_INVALID_ARGUMENT`). Fewer bytes come back at the end of the
/// file, and none at or past it: a buffer of length 0, still `MSB_OK`.
/// The file must be open for reading.
///
/// On success the caller owns `*data_out` and must release it with
/// `msb_bytes_free`.
#[no_mangle]
pub extern "C" fn msb_file_read_at(
    file: *const msb_file,
    offset: u64,
    len: u64,
    timeout_ms: i64,
    data_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        need_out(data_out, "data_out")?;
        let data = with_file(file, |f| {
            Ok(f.read_at(offset, len, deadline_arg(timeout_ms))?)
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { put(data_out, new_bytes(data)) };
        Ok(MSB_OK)
    })
}

/// Writes `len` bytes at `offset` (sent in chunks of at most 3 MiB; the
/// guest checks that all of them arrived). On a file opened with
/// `MSB_FILE_APPEND` the bytes go to the end whatever `offset` says. The
/// file must be open for writing or appending.
#[no_mangle]
pub extern "C" fn msb_file_write_at(
    file: *const msb_file,
    offset: u64,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: `len` readable bytes, borrowed for this call.
        let d = unsafe { bytes_arg(data, len, "data") }?;
        with_file(file, |f| {
            Ok(f.write_at(offset, d, deadline_arg(timeout_ms))?)
        })?;
        Ok(MSB_OK)
    })
}

/// Metadata of the open file.
///
/// On success the caller owns `*entry_out` and must release it with
/// `msb_fs_entry_free`.
#[no_mangle]
pub extern "C" fn msb_file_fstat(
    file: *const msb_file,
    timeout_ms: i64,
    entry_out: *mut *mut msb_fs_entry,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        need_out(entry_out, "entry_out")?;
        let info = with_file(file, |f| Ok(f.stat(deadline_arg(timeout_ms))?))?;
        Ok(put_entry(info, entry_out))
    })
}

/// Changes the attributes `attrs` sets on the open file. `attrs` is
/// borrowed for the call.
#[no_mangle]
pub extern "C" fn msb_file_set_stat(
    file: *const msb_file,
    attrs: *const msb_fs_set_attrs,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let a = attrs_arg(attrs)?;
        with_file(file, |f| Ok(f.set_stat(a, deadline_arg(timeout_ms))?))?;
        Ok(MSB_OK)
    })
}

/// Closes the guest's handle and waits up to `timeout_ms` for the guest to
/// confirm. The handle is given back even when this fails. Later calls on
/// the file, a second close included, fail with `MSB_ERR_WRONG_STATE`; the
/// file must still be released with `msb_file_free`.
#[no_mangle]
pub extern "C" fn msb_file_close(
    file: *const msb_file,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let h = arc_borrow(file, "file")?;
        let f = h.file.write().take().ok_or_else(closed)?;
        f.close(deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Releases a file. If it is still open, its handle is closed without
/// waiting for the guest's answer. NULL is ignored; freeing twice is
/// forbidden.
#[no_mangle]
pub extern "C" fn msb_file_free(file: *mut msb_file) {
    run_value((), || drop(arc_release(file)));
}

/// The number of files open through `msb_file_open` on this client (opened
/// and not yet closed or freed); 0 if `client` is NULL. Each holds one of
/// the guest's `MSB_FILE_HANDLE_LIMIT` handles of this connection.
///
/// Thread safety: callable from any thread.
#[no_mangle]
pub extern "C" fn msb_client_open_files(client: *const msb_client) -> u32 {
    run_value(0, || {
        client_arg(client).map_or(0, |c| c.client.open_files().count() as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_limit_is_the_guest_limit() {
        assert_eq!(MSB_FILE_HANDLE_LIMIT as usize, handles::GUEST_HANDLE_LIMIT);
    }

    #[test]
    fn open_flags_become_open_options() {
        let o = open_options(MSB_FILE_WRITE | MSB_FILE_CREATE | MSB_FILE_TRUNCATE, 0o640)
            .ok()
            .unwrap();
        assert!(o.write && o.create && o.truncate && !o.read && !o.append && !o.create_new);
        assert_eq!(o.mode, Some(0o640));
        assert_eq!(open_options(MSB_FILE_READ, -1).ok().unwrap().mode, None);
        assert!(open_options(0, -1).is_err());
        assert!(open_options(MSB_FILE_CREATE, -1).is_err());
        assert!(open_options(MSB_FILE_READ | 0x40, -1).is_err());
        assert!(open_options(MSB_FILE_READ, 0o10000).is_err());
        assert!(open_options(MSB_FILE_READ, -2).is_err());
    }
}
