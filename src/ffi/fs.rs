//! Files in the guest. Paths are guest paths (UTF-8). A failure reported by
//! the guest (`ok: false`) is `MSB_ERR_GUEST`, with the guest's text as the
//! error message.

use std::ffi::{c_char, c_int, CString};

use super::client::{client_arg, msb_client, pulled, readiness_fd_out};
use super::handle::{arc_borrow, arc_into_raw, arc_release, box_into_raw, box_ref, free_box};
use super::{
    bytes_arg, deadline_arg, msb_bytes, msb_error, msb_status, need_out, new_bytes, put, run,
    run_value, str_arg, timeout_arg, Fail, FfiResult, MSB_ERR_WRONG_STATE, MSB_OK,
};
use crate::client::fs::{self, FileReader, FileWriter};
use crate::client::Client;
use crate::protocol::payload::FsEntryInfo;

/// Shared shape of the path-only calls: borrow the client and the path, run
/// `op`, return `MSB_OK`.
fn path_call(
    client: *const msb_client,
    path: *const c_char,
    err_out: *mut *mut msb_error,
    op: impl FnOnce(&Client, &str) -> crate::client::Result<()>,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        op(&c.client, p)?;
        Ok(MSB_OK)
    })
}

/// Same for the two-path calls (copy, rename).
fn two_path_call(
    client: *const msb_client,
    src: *const c_char,
    dst: *const c_char,
    err_out: *mut *mut msb_error,
    op: impl FnOnce(&Client, &str, &str) -> crate::client::Result<()>,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let (s, d) = unsafe { (str_arg(src, "src")?, str_arg(dst, "dst")?) };
        op(&c.client, s, d)?;
        Ok(MSB_OK)
    })
}

/// Converts a mode argument: -1 means "the guest's default".
fn mode_arg(mode: i32) -> FfiResult<Option<u32>> {
    match mode {
        -1 => Ok(None),
        m if (0..=0o7777).contains(&m) => Ok(Some(m as u32)),
        _ => Err(Fail::invalid("mode must be -1 or within 0..=07777")),
    }
}

/// Reads a whole file.
///
/// On success the caller owns `*data_out` and must release it with
/// `msb_bytes_free`. `timeout_ms` bounds the whole read.
#[no_mangle]
pub extern "C" fn msb_fs_read_file(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    data_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(data_out, "data_out")?;
        let data = fs::read_file(&c.client, p, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(data_out, new_bytes(data)) };
        Ok(MSB_OK)
    })
}

/// Writes a whole file (created or truncated), sent in chunks of at most
/// 3 MiB. `mode` is the permission bits (e.g. 0644), or -1 for the guest's
/// default. `(NULL, 0)` writes an empty file. `timeout_ms` bounds the whole
/// write.
#[no_mangle]
pub extern "C" fn msb_fs_write_file(
    client: *const msb_client,
    path: *const c_char,
    data: *const u8,
    len: usize,
    mode: i32,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        // SAFETY: `len` readable bytes, borrowed for this call.
        let d = unsafe { bytes_arg(data, len, "data") }?;
        fs::write_file(&c.client, p, d, mode_arg(mode)?, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Creates a directory and any missing parents.
#[no_mangle]
pub extern "C" fn msb_fs_mkdir(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    path_call(client, path, err_out, |c, p| {
        fs::mkdir(c, p, deadline_arg(timeout_ms))
    })
}

/// Removes a file.
#[no_mangle]
pub extern "C" fn msb_fs_remove(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    path_call(client, path, err_out, |c, p| {
        fs::remove(c, p, deadline_arg(timeout_ms))
    })
}

/// Removes a directory and everything in it.
#[no_mangle]
pub extern "C" fn msb_fs_remove_dir(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    path_call(client, path, err_out, |c, p| {
        fs::remove_dir(c, p, deadline_arg(timeout_ms))
    })
}

/// Copies the file `src` to `dst`.
#[no_mangle]
pub extern "C" fn msb_fs_copy(
    client: *const msb_client,
    src: *const c_char,
    dst: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    two_path_call(client, src, dst, err_out, |c, s, d| {
        fs::copy(c, s, d, deadline_arg(timeout_ms))
    })
}

/// Renames (moves) `src` to `dst`.
#[no_mangle]
pub extern "C" fn msb_fs_rename(
    client: *const msb_client,
    src: *const c_char,
    dst: *const c_char,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    two_path_call(client, src, dst, err_out, |c, s, d| {
        fs::rename(c, s, d, deadline_arg(timeout_ms))
    })
}

// ---------------------------------------------------------------- entries

/// The kind of a filesystem entry.
pub type msb_fs_kind = i32;
/// Anything else: a device, a socket, a fifo, or a kind this library does
/// not know.
pub const MSB_FS_KIND_OTHER: msb_fs_kind = 0;
/// A regular file.
pub const MSB_FS_KIND_FILE: msb_fs_kind = 1;
/// A directory.
pub const MSB_FS_KIND_DIR: msb_fs_kind = 2;
/// A symbolic link (`msb_fs_stat` does not follow links).
pub const MSB_FS_KIND_SYMLINK: msb_fs_kind = 3;

/// Metadata of one file, directory or link, owned by the caller: returned
/// by `msb_fs_stat`, `msb_fs_stat_follow` and `msb_file_fstat`, released
/// with `msb_fs_entry_free`. Read it through `msb_fs_entry_as_view`.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_fs_entry {
    view: msb_fs_entry_view,
}

/// Metadata of one file, directory or link, borrowed: from a listing
/// (`msb_fs_entries_get`, valid until `msb_fs_entries_free`) or from an
/// owned entry (`msb_fs_entry_as_view`, valid until `msb_fs_entry_free`).
/// Every `msb_fs_entry_*` accessor takes a view. There is no function to
/// free a view: its owner frees it.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_fs_entry_view {
    pub(crate) info: FsEntryInfo,
    path: CString,
}

impl msb_fs_entry_view {
    fn new(info: FsEntryInfo) -> msb_fs_entry_view {
        let path = CString::new(info.path.replace('\0', "")).unwrap_or_default();
        msb_fs_entry_view { info, path }
    }
}

/// Hands an owned entry to C.
pub(crate) fn new_entry(info: FsEntryInfo) -> *mut msb_fs_entry {
    box_into_raw(msb_fs_entry {
        view: msb_fs_entry_view::new(info),
    })
}

/// Borrows a view for an accessor; NULL gives `None`.
pub(crate) fn view_ref<'a>(view: *const msb_fs_entry_view) -> Option<&'a msb_fs_entry_view> {
    box_ref(view, "entry").ok()
}

/// Metadata of `path` (symlinks are not followed).
///
/// On success the caller owns `*entry_out` and must release it with
/// `msb_fs_entry_free`.
#[no_mangle]
pub extern "C" fn msb_fs_stat(
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
        let info = fs::stat(&c.client, p, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(entry_out, new_entry(info)) };
        Ok(MSB_OK)
    })
}

/// A borrowed view of an owned entry, for the `msb_fs_entry_*` accessors.
/// Borrowed: valid until `msb_fs_entry_free(entry)`; NULL if `entry` is
/// NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_as_view(entry: *const msb_fs_entry) -> *const msb_fs_entry_view {
    box_ref(entry, "entry").map_or(std::ptr::null(), |e| &e.view as *const msb_fs_entry_view)
}

/// The entry's guest path. Borrowed: valid as long as the view. NULL if
/// `entry` is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_path(entry: *const msb_fs_entry_view) -> *const c_char {
    view_ref(entry).map_or(std::ptr::null(), |e| e.path.as_ptr())
}

/// The entry's kind (`MSB_FS_KIND_*`); 0 (`MSB_FS_KIND_OTHER`) if `entry`
/// is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_kind(entry: *const msb_fs_entry_view) -> msb_fs_kind {
    view_ref(entry).map_or(MSB_FS_KIND_OTHER, |e| match e.info.kind.as_str() {
        "file" => MSB_FS_KIND_FILE,
        "dir" => MSB_FS_KIND_DIR,
        "symlink" => MSB_FS_KIND_SYMLINK,
        _ => MSB_FS_KIND_OTHER,
    })
}

/// Size in bytes; 0 if `entry` is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_size(entry: *const msb_fs_entry_view) -> u64 {
    view_ref(entry).map_or(0, |e| e.info.size)
}

/// Mode including the file-type bits, e.g. 0100644; 0 if `entry` is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_mode(entry: *const msb_fs_entry_view) -> u32 {
    view_ref(entry).map_or(0, |e| e.info.mode)
}

/// Writes the modification time (Unix seconds) to `*mtime_out` and returns
/// true, or returns false if the guest did not report one; false (nothing
/// written) if `entry` or `mtime_out` is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entry_mtime(entry: *const msb_fs_entry_view, mtime_out: *mut i64) -> bool {
    match view_ref(entry).and_then(|e| e.info.modified) {
        Some(t) if !mtime_out.is_null() => {
            // SAFETY: non-NULL, caller-provided storage for an int64_t.
            unsafe { put(mtime_out, t) };
            true
        }
        _ => false,
    }
}

/// Releases an owned entry (from `msb_fs_stat`, `msb_fs_stat_follow` or
/// `msb_file_fstat`) and its view. Entries of a listing are views, not
/// entries: their listing frees them. NULL is ignored; freeing twice is
/// forbidden.
#[no_mangle]
pub extern "C" fn msb_fs_entry_free(entry: *mut msb_fs_entry) {
    free_box(entry);
}

/// The entries of a directory listing.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_fs_entries {
    entries: Vec<msb_fs_entry_view>,
}

/// Lists the immediate children of `path` (unsorted).
///
/// On success the caller owns `*entries_out` and must release it with
/// `msb_fs_entries_free`.
#[no_mangle]
pub extern "C" fn msb_fs_list(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    entries_out: *mut *mut msb_fs_entries,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(entries_out, "entries_out")?;
        let list = fs::list(&c.client, p, deadline_arg(timeout_ms))?;
        let entries = list.into_iter().map(msb_fs_entry_view::new).collect();
        // SAFETY: checked non-NULL above.
        unsafe { put(entries_out, box_into_raw(msb_fs_entries { entries })) };
        Ok(MSB_OK)
    })
}

/// Number of entries; 0 if `entries` is NULL.
#[no_mangle]
pub extern "C" fn msb_fs_entries_len(entries: *const msb_fs_entries) -> usize {
    box_ref(entries, "entries").map_or(0, |l| l.entries.len())
}

/// A view of entry `index`; NULL if out of range or if `entries` is NULL.
/// Borrowed: valid until `msb_fs_entries_free(entries)`. A view has no
/// free function (`msb_fs_entry_free` does not accept it).
#[no_mangle]
pub extern "C" fn msb_fs_entries_get(
    entries: *const msb_fs_entries,
    index: usize,
) -> *const msb_fs_entry_view {
    box_ref(entries, "entries")
        .ok()
        .and_then(|l| l.entries.get(index))
        .map_or(std::ptr::null(), |e| e as *const msb_fs_entry_view)
}

/// Releases a listing and its entries. NULL is ignored; freeing twice is
/// forbidden.
#[no_mangle]
pub extern "C" fn msb_fs_entries_free(entries: *mut msb_fs_entries) {
    free_box(entries);
}

// ---------------------------------------------------------------- streams

/// A file being read from the guest chunk by chunk, for files too large to
/// hold at once.
///
/// Thread safety: any function may be called from any thread;
/// `msb_file_reader_free` wakes a thread blocked in `msb_file_reader_next`
/// with `MSB_ERR_CLOSED`.
pub struct msb_file_reader {
    reader: FileReader,
}

/// Starts reading `path`. On a legacy (0.3/0.4) relay this only sends the
/// request, and a failure (e.g. a missing file) arrives on the first pull;
/// from generation 2 on it also waits for the guest to open the file, so
/// such a failure is returned here (a missing file: `MSB_ERR_NOT_FOUND`).
/// `timeout_ms` bounds this call. A 0.5.0 sandbox gives
/// `MSB_ERR_UNSUPPORTED`.
///
/// On success the caller owns `*reader_out` and must release it with
/// `msb_file_reader_free`.
#[no_mangle]
pub extern "C" fn msb_file_reader_open(
    client: *const msb_client,
    path: *const c_char,
    timeout_ms: i64,
    reader_out: *mut *mut msb_file_reader,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(reader_out, "reader_out")?;
        let reader = FileReader::open(&c.client, p, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(reader_out, arc_into_raw(msb_file_reader { reader })) };
        Ok(MSB_OK)
    })
}

/// Pulls the next chunk (at most 3 MiB), waiting up to `timeout_ms`.
///
/// Returns `MSB_OK` with `*chunk_out` set (owned by the caller; release it
/// with `msb_bytes_free`), `MSB_NOTHING_YET`, `MSB_ENDED` once the whole file
/// arrived and the guest confirmed it, or an error (`MSB_ERR_GUEST` if the
/// read failed in the guest).
#[no_mangle]
pub extern "C" fn msb_file_reader_next(
    reader: *const msb_file_reader,
    timeout_ms: i64,
    chunk_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let r = arc_borrow(reader, "reader")?;
        need_out(chunk_out, "chunk_out")?;
        pulled(
            r.reader.next_chunk(timeout_arg(timeout_ms))?,
            chunk_out,
            new_bytes,
        )
    })
}

/// A file descriptor readable exactly while `msb_file_reader_next` would not
/// return `MSB_NOTHING_YET` (eventfd). Poll it; do not read, write or close
/// it. Borrowed: valid until `msb_file_reader_free(reader)`.
#[no_mangle]
pub extern "C" fn msb_file_reader_readiness_fd(
    reader: *const msb_file_reader,
    fd_out: *mut c_int,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        readiness_fd_out(arc_borrow(reader, "reader")?.reader.subscription(), fd_out)
    })
}

/// Releases a reader (abandoning the rest of the file). NULL is ignored;
/// freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_file_reader_free(reader: *mut msb_file_reader) {
    run_value((), || {
        if let Some(r) = arc_release(reader) {
            r.reader.subscription().cancel();
        }
    })
}

/// A file being written to the guest chunk by chunk.
///
/// Thread safety: calls may come from any thread, but chunks written from
/// several threads at once land in an undefined order: write from one
/// thread at a time. `msb_file_writer_free` wakes a thread blocked in
/// `msb_file_writer_finish` with `MSB_ERR_CLOSED`.
pub struct msb_file_writer {
    writer: FileWriter,
    /// Held by a write or a finish for its whole length, so that a finish
    /// never overtakes a write; true once a finish began.
    finished: parking_lot::Mutex<bool>,
}

/// Starts writing `path` (created or truncated) with `mode` (-1: the
/// guest's default). `timeout_ms` bounds sending the request.
///
/// On success the caller owns `*writer_out` and must release it with
/// `msb_file_writer_free`. Call `msb_file_writer_finish` to complete the
/// file; freeing without finishing abandons the write.
#[no_mangle]
pub extern "C" fn msb_file_writer_open(
    client: *const msb_client,
    path: *const c_char,
    mode: i32,
    timeout_ms: i64,
    writer_out: *mut *mut msb_file_writer,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let p = unsafe { str_arg(path, "path") }?;
        need_out(writer_out, "writer_out")?;
        let w = FileWriter::create(&c.client, p, mode_arg(mode)?, deadline_arg(timeout_ms))?;
        let h = arc_into_raw(msb_file_writer {
            writer: w,
            finished: parking_lot::Mutex::new(false),
        });
        // SAFETY: checked non-NULL above.
        unsafe { put(writer_out, h) };
        Ok(MSB_OK)
    })
}

fn finished_error() -> Fail {
    Fail::new(MSB_ERR_WRONG_STATE, "the writer was already finished")
}

/// Sends `len` bytes of the file (split into chunks of at most 3 MiB).
/// The bytes are in the socket when this returns. A timeout after part of
/// a frame was written closes the connection (see `msb_client_send`).
#[no_mangle]
pub extern "C" fn msb_file_writer_write(
    writer: *const msb_file_writer,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: `len` readable bytes, borrowed for this call.
        let d = unsafe { bytes_arg(data, len, "data") }?;
        let w = arc_borrow(writer, "writer")?;
        let finished = w.finished.lock();
        if *finished {
            return Err(finished_error());
        }
        w.writer.write(d, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Ends the file and waits up to `timeout_ms` for the guest to confirm it.
/// After this, writes and another finish fail with `MSB_ERR_WRONG_STATE`;
/// the handle must still be freed. `msb_file_writer_free` from another
/// thread wakes this wait with `MSB_ERR_CLOSED` (the write is abandoned).
#[no_mangle]
pub extern "C" fn msb_file_writer_finish(
    writer: *const msb_file_writer,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let w = arc_borrow(writer, "writer")?;
        let mut finished = w.finished.lock();
        if std::mem::replace(&mut *finished, true) {
            return Err(finished_error());
        }
        w.writer.finish(deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Releases a writer; without a finish, the write is abandoned. A thread
/// blocked in `msb_file_writer_finish` on it wakes with `MSB_ERR_CLOSED`.
/// NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_file_writer_free(writer: *mut msb_file_writer) {
    run_value((), || {
        if let Some(w) = arc_release(writer) {
            w.writer.subscription().cancel();
        }
    });
}
