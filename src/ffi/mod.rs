//! The C ABI: argument checking, conversion and ownership around the client
//! core. No protocol logic lives here.
//!
//! Conventions (the header repeats them on every function):
//! - every function that can fail returns an `msb_status`; `MSB_OK` (0) is
//!   success, negative values are errors, `MSB_NOTHING_YET` and `MSB_ENDED`
//!   are the non-error outcomes of a pull;
//! - `*_out` parameters are written only on success;
//! - `err_out` may be NULL; when it is not and the call fails, `*err_out`
//!   receives an owned `msb_error` to be released with `msb_error_free`;
//! - each owned type has its own `_free`, and `_free(NULL)` does nothing;
//! - a panic inside the library becomes `MSB_ERR_PANIC`, never an abort.
#![allow(non_camel_case_types)]
// These functions are C entry points: C cannot see `unsafe`, and the pointer
// preconditions are stated in the header on each function instead.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod client;
pub mod exec;
pub mod fs;
mod handle;
pub mod handles;
pub mod paths;
pub mod tcp;

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use bytes::Bytes;

use crate::client::{CloseCause, Error};

/// A status code. Fixed width, so it crosses every ABI unchanged; values are
/// never reused once retired.
pub type msb_status = i32;

/// Success.
pub const MSB_OK: msb_status = 0;
/// A pull found nothing within its timeout; nothing was consumed.
pub const MSB_NOTHING_YET: msb_status = 1;
/// A stream ended normally; there is nothing more to pull.
pub const MSB_ENDED: msb_status = 2;
/// An argument is out of range or malformed (the error message says which).
pub const MSB_ERR_INVALID_ARGUMENT: msb_status = -1;
/// A required pointer argument was NULL.
pub const MSB_ERR_NULL_POINTER: msb_status = -2;
/// A string argument is not valid UTF-8.
pub const MSB_ERR_INVALID_UTF8: msb_status = -3;
/// A message would exceed the protocol's 4 MiB frame limit.
pub const MSB_ERR_TOO_LARGE: msb_status = -4;
/// Not found: no relay at that socket path (missing, or nobody listening),
/// or the guest has no such file (errno `ENOENT`, see `msb_error_errno`).
pub const MSB_ERR_NOT_FOUND: msb_status = -5;
/// An operating-system error (the message has the details).
pub const MSB_ERR_IO: msb_status = -6;
/// The call's deadline passed.
pub const MSB_ERR_TIMEOUT: msb_status = -7;
/// The relay did not complete the handshake (for example: no free slot).
pub const MSB_ERR_HANDSHAKE: msb_status = -8;
/// The connection or handle is closed.
pub const MSB_ERR_CLOSED: msb_status = -9;
/// The relay broke the protocol; the connection has been closed.
pub const MSB_ERR_PROTOCOL: msb_status = -10;
/// The id is outside this client's range or already subscribed.
pub const MSB_ERR_ID_UNAVAILABLE: msb_status = -11;
/// The guest reported a failure; the message is the guest's text.
pub const MSB_ERR_GUEST: msb_status = -12;
/// The library panicked; the call had no effect that can be relied on.
pub const MSB_ERR_PANIC: msb_status = -13;
/// The handle is not in a state that allows the call (e.g. a finished writer).
pub const MSB_ERR_WRONG_STATE: msb_status = -14;
/// The sandbox's negotiated protocol generation lacks this operation; the
/// message names the message type, the generation it needs and the one the
/// sandbox speaks. Restarting the sandbox with a newer runtime helps.
pub const MSB_ERR_UNSUPPORTED: msb_status = -15;
/// The relay closed the connection before the first handshake byte: all of
/// its client slots (16 on 0.3/0.4 relays, 128 on later ones) are taken, or
/// the guest is stalled. Retry later.
pub const MSB_ERR_RELAY_BUSY: msb_status = -16;
/// Every correlation id of this connection's range has been used once, and
/// current relays refuse reused ids: reconnect.
pub const MSB_ERR_IDS_EXHAUSTED: msb_status = -17;
/// The guest could not start the command (`core.exec.failed`); the message
/// has the guest's text, the kind of failure and the stage.
pub const MSB_ERR_EXEC_FAILED: msb_status = -18;
/// The agent or relay refused a request with `core.error`; the message has
/// its kind and text.
pub const MSB_ERR_AGENT: msb_status = -19;
/// A stream's unread data kept the connection's memory budget full for the
/// whole overflow grace (1 s) without flow control: nobody pulled it, so
/// that stream failed (an exec's process was killed); the
/// connection and its other streams live. Messages queued before it are
/// still delivered. See the README's "Memory" section for the bound.
pub const MSB_ERR_STREAM_OVERFLOW: msb_status = -22;

/// `msb_connect_options_set_backpressure`: when unread messages fill the
/// memory budget, pause the socket for at most 1 s, then fail the stream
/// holding the most (default).
pub const MSB_BACKPRESSURE_FAIL_STREAM: i32 = 0;
/// `msb_connect_options_set_backpressure`: when unread messages fill the
/// memory budget, stop reading the socket until the caller pulls.
pub const MSB_BACKPRESSURE_PAUSE_SOCKET: i32 = 1;
/// The guest refused for lack of permission (errno `EACCES` or `EPERM`);
/// `msb_error_errno` gives which.
pub const MSB_ERR_PERMISSION: msb_status = -20;
/// The guest found something already there (errno `EEXIST`).
pub const MSB_ERR_EXISTS: msb_status = -21;

/// `msb_message_flags` bit: the last message of its id.
pub const MSB_FLAG_TERMINAL: u8 = 0x01;
/// `msb_message_flags` bit: opens a session.
pub const MSB_FLAG_SESSION_START: u8 = 0x02;
/// `msb_message_flags` bit: a shutdown request.
pub const MSB_FLAG_SHUTDOWN: u8 = 0x04;
/// Largest frame (`len` field) the protocol allows, in bytes: payloads
/// passed to `msb_client_send` must fit in it with their envelope.
pub const MSB_MAX_FRAME_SIZE: u32 = 4 * 1024 * 1024;

/// Pass as a timeout to wait without limit (any negative value does).
pub const MSB_TIMEOUT_INFINITE: i64 = -1;

/// Major version of this library (see `msb_version`).
pub const MSB_VERSION_MAJOR: u32 = 0;
/// Minor version of this library.
pub const MSB_VERSION_MINOR: u32 = 1;
/// Patch version of this library.
pub const MSB_VERSION_PATCH: u32 = 0;

/// The library's version as "MAJOR.MINOR.PATCH". Static; never free it.
///
/// Thread safety: callable from any thread.
#[no_mangle]
pub extern "C" fn msb_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("version contains NUL"),
        };
    VERSION.as_ptr()
}

/// A static, human-readable description of a status code (never NULL;
/// unknown codes get a generic text). Never free it.
///
/// Thread safety: callable from any thread.
#[no_mangle]
pub extern "C" fn msb_status_str(status: msb_status) -> *const c_char {
    let s: &'static CStr = match status {
        MSB_OK => c"ok",
        MSB_NOTHING_YET => c"nothing yet",
        MSB_ENDED => c"stream ended",
        MSB_ERR_INVALID_ARGUMENT => c"invalid argument",
        MSB_ERR_NULL_POINTER => c"null pointer argument",
        MSB_ERR_INVALID_UTF8 => c"string is not valid UTF-8",
        MSB_ERR_TOO_LARGE => c"message exceeds the 4 MiB frame limit",
        MSB_ERR_NOT_FOUND => c"not found (no relay at that socket path, or no such guest file)",
        MSB_ERR_IO => c"operating-system error",
        MSB_ERR_TIMEOUT => c"timed out",
        MSB_ERR_HANDSHAKE => c"relay handshake failed",
        MSB_ERR_CLOSED => c"connection closed",
        MSB_ERR_PROTOCOL => c"relay broke the protocol",
        MSB_ERR_ID_UNAVAILABLE => c"id unavailable",
        MSB_ERR_GUEST => c"the guest reported an error",
        MSB_ERR_PANIC => c"internal panic",
        MSB_ERR_WRONG_STATE => c"handle in wrong state",
        MSB_ERR_UNSUPPORTED => c"the sandbox's protocol generation lacks this",
        MSB_ERR_RELAY_BUSY => c"relay full or guest stalled; retry later",
        MSB_ERR_IDS_EXHAUSTED => c"correlation ids of this connection used up; reconnect",
        MSB_ERR_EXEC_FAILED => c"the guest could not start the command",
        MSB_ERR_AGENT => c"the agent refused the request",
        MSB_ERR_STREAM_OVERFLOW => c"stream overflowed its memory bound",
        MSB_ERR_PERMISSION => c"permission denied in the guest",
        MSB_ERR_EXISTS => c"already exists in the guest",
        _ => c"unknown status code",
    };
    s.as_ptr()
}

// ---------------------------------------------------------------- errors

/// An error's code and message. Owned by the caller once returned through
/// `err_out`; release it with `msb_error_free`.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_error {
    code: msb_status,
    message: CString,
    errno: i32,
}

/// The status code of `err`; 0 (`MSB_OK`: no error object, no error) if
/// `err` is NULL.
#[no_mangle]
pub extern "C" fn msb_error_code(err: *const msb_error) -> msb_status {
    // SAFETY: the caller passes NULL or a live msb_error (header contract).
    unsafe { err.as_ref() }.map_or(MSB_OK, |e| e.code)
}

/// The message of `err`: NUL-terminated UTF-8. Borrowed: valid until
/// `msb_error_free(err)`. NULL if `err` is NULL.
#[no_mangle]
pub extern "C" fn msb_error_message(err: *const msb_error) -> *const c_char {
    // SAFETY: the caller passes NULL or a live msb_error (header contract).
    unsafe { err.as_ref() }.map_or(std::ptr::null(), |e| e.message.as_ptr())
}

/// The guest's errno behind `err`, or 0 when there is none (the error did not
/// come from the guest or the guest gave no errno); 0 if `err` is NULL.
///
/// Guest failures (`MSB_ERR_GUEST`, `MSB_ERR_NOT_FOUND`, `MSB_ERR_PERMISSION`,
/// `MSB_ERR_EXISTS` from filesystem and TCP calls) carry the errno the guest
/// reported in its message, and `MSB_ERR_EXEC_FAILED` the errno of the
/// failed start when the guest gave one. The guest is Linux: compare with Linux's numbers
/// (ENOENT 2, EPERM 1, EACCES 13, EEXIST 17, ...), not the host's `<errno.h>`
/// on other systems. `MSB_ERR_NOT_FOUND` from connecting has errno 0.
#[no_mangle]
pub extern "C" fn msb_error_errno(err: *const msb_error) -> i32 {
    // SAFETY: the caller passes NULL or a live msb_error (header contract).
    unsafe { err.as_ref() }.map_or(0, |e| e.errno)
}

/// Releases an error. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_error_free(err: *mut msb_error) {
    handle::free_box(err);
}

/// A failure on its way out of an exported function.
pub(crate) struct Fail {
    code: msb_status,
    message: String,
    /// The guest's errno, 0 when there is none.
    errno: i32,
}

impl Fail {
    pub(crate) fn new(code: msb_status, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
            errno: 0,
        }
    }

    pub(crate) fn null(what: &str) -> Fail {
        Fail::new(MSB_ERR_NULL_POINTER, format!("{what} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Fail {
        Fail::new(MSB_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::InvalidArgument(_) => MSB_ERR_INVALID_ARGUMENT,
            Error::TooLarge(_) => MSB_ERR_TOO_LARGE,
            Error::Io(io, _) => match io.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => MSB_ERR_NOT_FOUND,
                _ => MSB_ERR_IO,
            },
            Error::Timeout(_) => MSB_ERR_TIMEOUT,
            Error::Handshake(_) => MSB_ERR_HANDSHAKE,
            Error::Closed(CloseCause::Protocol(_)) => MSB_ERR_PROTOCOL,
            Error::Closed(CloseCause::StreamOverflow(_)) => MSB_ERR_STREAM_OVERFLOW,
            Error::Closed(CloseCause::ReaderPanicked(_)) => MSB_ERR_PANIC,
            Error::Closed(_) => MSB_ERR_CLOSED,
            Error::Protocol(_) | Error::Unexpected(_) => MSB_ERR_PROTOCOL,
            Error::IdUnavailable(_) => MSB_ERR_ID_UNAVAILABLE,
            Error::Guest(text) => return guest_fail(text, e.to_string()),
            Error::RelayBusy => MSB_ERR_RELAY_BUSY,
            Error::Unsupported { .. } => MSB_ERR_UNSUPPORTED,
            Error::IdsExhausted => MSB_ERR_IDS_EXHAUSTED,
            Error::ExecFailed(f) => {
                let mut fail = Fail::new(MSB_ERR_EXEC_FAILED, e.to_string());
                fail.errno = f.errno.unwrap_or(0);
                return fail;
            }
            Error::Agent { .. } => MSB_ERR_AGENT,
        };
        Fail::new(code, e.to_string())
    }
}

/// A guest failure: its code follows the errno its text carries, if any.
fn guest_fail(text: &str, message: String) -> Fail {
    use crate::client::errno::{guest_errno, linux};
    let errno = guest_errno(text).unwrap_or(0);
    let code = match errno {
        linux::ENOENT => MSB_ERR_NOT_FOUND,
        linux::EACCES | linux::EPERM => MSB_ERR_PERMISSION,
        linux::EEXIST => MSB_ERR_EXISTS,
        _ => MSB_ERR_GUEST,
    };
    Fail {
        code,
        message,
        errno,
    }
}

pub(crate) type FfiResult<T = msb_status> = Result<T, Fail>;

/// Runs the body of an exported function: a panic becomes `MSB_ERR_PANIC`,
/// an error becomes its code, and either is described through `err_out`.
pub(crate) fn run(err_out: *mut *mut msb_error, body: impl FnOnce() -> FfiResult) -> msb_status {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(f)) => f,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Fail::new(MSB_ERR_PANIC, format!("internal panic: {what}"))
        }
    };
    if !err_out.is_null() {
        let message = CString::new(fail.message.replace('\0', "\\0"))
            .unwrap_or_else(|_| c"(unprintable error)".to_owned());
        let e = Box::new(msb_error {
            code: fail.code,
            message,
            errno: fail.errno,
        });
        // SAFETY: `err_out` is non-NULL and points at writable storage for a
        // pointer (header contract).
        unsafe { *err_out = Box::into_raw(e) };
    }
    fail.code
}

/// Like [`run`] for functions without an error channel that return a plain
/// value: a panic yields `fallback`.
pub(crate) fn run_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

// ---------------------------------------------------------------- arguments

/// Borrows a C string argument as UTF-8.
///
/// # Safety
/// `p` must be NULL or point at a NUL-terminated string that stays valid and
/// unmodified for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let c = unsafe { CStr::from_ptr(p) };
    crate::protocol::str_from_utf8(c.to_bytes())
        .map_err(|_| Fail::new(MSB_ERR_INVALID_UTF8, format!("{what} is not valid UTF-8")))
}

/// Borrows a byte-buffer argument; `(NULL, 0)` is an empty buffer.
///
/// # Safety
/// `p` must be NULL or point at `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn bytes_arg<'a>(p: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Fail::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Fail::invalid(format!("{what} length is too large")));
    }
    // SAFETY: non-NULL, `len` readable bytes per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A timeout argument: negative waits without limit, 0 does not block.
pub(crate) fn timeout_arg(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// A timeout for operations that always need a deadline; "no limit" becomes
/// one far enough away never to matter.
pub(crate) fn deadline_arg(ms: i64) -> Duration {
    timeout_arg(ms).unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Writes an output parameter.
///
/// # Safety
/// `out` must be NULL-checked by the caller and point at writable storage.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) {
    // SAFETY: per this function's contract.
    unsafe { out.write(value) }
}

/// Fails unless every output pointer is non-NULL.
pub(crate) fn need_out<T>(out: *mut T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        Err(Fail::null(what))
    } else {
        Ok(())
    }
}

/// Hands out a borrowed view of `data`: writes its length to `len_out`
/// (if non-NULL) and returns a pointer that is never NULL, even for zero
/// bytes, so callers can pass it on to functions that reject NULL. `None`
/// (the accessor's object was NULL) gives NULL and length 0.
pub(crate) fn borrowed_slice(data: Option<&[u8]>, len_out: *mut usize) -> *const u8 {
    if !len_out.is_null() {
        // SAFETY: non-NULL, caller-provided storage for a size_t.
        unsafe { put(len_out, data.map_or(0, <[u8]>::len)) };
    }
    match data {
        None => std::ptr::null(),
        Some([]) => std::ptr::NonNull::<u8>::dangling().as_ptr(),
        Some(d) => d.as_ptr(),
    }
}

// ---------------------------------------------------------------- bytes

/// An owned, immutable byte buffer handed to the caller. Release it with
/// `msb_bytes_free`.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_bytes {
    data: Bytes,
}

pub(crate) fn new_bytes(data: Bytes) -> *mut msb_bytes {
    handle::box_into_raw(msb_bytes { data })
}

/// The buffer's bytes. Borrowed: valid until `msb_bytes_free(bytes)`. Never
/// NULL for a live buffer (an empty buffer returns a non-NULL pointer to
/// zero bytes); NULL if `bytes` is NULL.
#[no_mangle]
pub extern "C" fn msb_bytes_data(bytes: *const msb_bytes) -> *const u8 {
    // SAFETY: the caller passes NULL or a live msb_bytes (header contract).
    let data = unsafe { bytes.as_ref() }.map(|b| &b.data[..]);
    borrowed_slice(data, std::ptr::null_mut())
}

/// The buffer's length in bytes (0 if `bytes` is NULL).
#[no_mangle]
pub extern "C" fn msb_bytes_len(bytes: *const msb_bytes) -> usize {
    // SAFETY: the caller passes NULL or a live msb_bytes (header contract).
    unsafe { bytes.as_ref() }.map_or(0, |b| b.data.len())
}

/// Releases a buffer. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_bytes_free(bytes: *mut msb_bytes) {
    handle::free_box(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_failures_take_their_code_from_the_errno() {
        let cases = [
            (
                "open: No such file or directory (os error 2)",
                MSB_ERR_NOT_FOUND,
                2,
            ),
            (
                "stat: Permission denied (os error 13)",
                MSB_ERR_PERMISSION,
                13,
            ),
            (
                "chown: Operation not permitted (os error 1)",
                MSB_ERR_PERMISSION,
                1,
            ),
            ("mkdir: File exists (os error 17)", MSB_ERR_EXISTS, 17),
            (
                "rmdir: Directory not empty (os error 39)",
                MSB_ERR_GUEST,
                39,
            ),
            ("unknown write session: 4", MSB_ERR_GUEST, 0),
        ];
        for (text, code, errno) in cases {
            let f = Fail::from(Error::Guest(text.into()));
            assert_eq!((f.code, f.errno), (code, errno), "{text}");
            assert!(f.message.contains(text));
        }
        let not_guest = Fail::from(Error::Timeout("x"));
        assert_eq!(not_guest.errno, 0);
        let exec = Fail::from(Error::ExecFailed(crate::client::ExecFailure {
            kind: "not_found".into(),
            errno: Some(2),
            errno_name: Some("ENOENT".into()),
            message: "spawn: No such file or directory".into(),
            stage: None,
        }));
        assert_eq!((exec.code, exec.errno), (MSB_ERR_EXEC_FAILED, 2));
    }

    #[test]
    fn exported_constants_agree_with_the_protocol_and_cargo() {
        use crate::protocol;
        assert_eq!(MSB_FLAG_TERMINAL, protocol::FLAG_TERMINAL);
        assert_eq!(MSB_FLAG_SESSION_START, protocol::FLAG_SESSION_START);
        assert_eq!(MSB_FLAG_SHUTDOWN, protocol::FLAG_SHUTDOWN);
        assert_eq!(MSB_MAX_FRAME_SIZE, protocol::MAX_FRAME_SIZE);
        assert_eq!(
            MSB_VERSION_MAJOR.to_string(),
            env!("CARGO_PKG_VERSION_MAJOR")
        );
        assert_eq!(
            MSB_VERSION_MINOR.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
        assert_eq!(
            MSB_VERSION_PATCH.to_string(),
            env!("CARGO_PKG_VERSION_PATCH")
        );
        // SAFETY: msb_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(msb_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
