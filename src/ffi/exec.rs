//! Running commands in the guest.

use std::ffi::{c_char, c_int, CString};

use bytes::Bytes;

use super::client::{client_arg, msb_client, pulled, readiness_fd_out};
use super::handle::{arc_borrow, arc_into_raw, arc_release, box_into_raw, box_ref, free_box};
use super::{
    borrowed_slice, bytes_arg, deadline_arg, msb_error, msb_status, need_out, put, run, run_value,
    str_arg, timeout_arg, Fail, MSB_OK,
};
use crate::client::exec::{self, Exec, ExecEvent, RunOutput};
use crate::protocol::payload::{ExecRequest, Rlimit, RLIMIT_RESOURCES};

// ---------------------------------------------------------------- request

/// A command to run: built with `msb_exec_request_new` and the setters,
/// then passed to `msb_exec_start` or `msb_exec_run` (which copy it, so it
/// can be reused or freed afterwards).
///
/// Thread safety: not synchronised; do not modify it while another thread
/// uses it.
pub struct msb_exec_request {
    request: ExecRequest,
}

/// Creates a request to run `cmd` (looked up in the guest's PATH) with no
/// arguments, the guest's default environment, no tty, 24x80.
///
/// On success the caller owns `*request_out` and must release it with
/// `msb_exec_request_free`. Errors: `MSB_ERR_NULL_POINTER`,
/// `MSB_ERR_INVALID_UTF8`, `MSB_ERR_INVALID_ARGUMENT` (empty `cmd`).
#[no_mangle]
pub extern "C" fn msb_exec_request_new(
    cmd: *const c_char,
    request_out: *mut *mut msb_exec_request,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: borrowed for this call (header contract).
        let cmd = unsafe { str_arg(cmd, "cmd") }?;
        need_out(request_out, "request_out")?;
        if cmd.is_empty() {
            return Err(Fail::invalid("cmd is empty"));
        }
        let r = box_into_raw(msb_exec_request {
            request: ExecRequest::new(cmd),
        });
        // SAFETY: checked non-NULL above.
        unsafe { put(request_out, r) };
        Ok(MSB_OK)
    })
}

/// Runs `f` on the request behind `request`.
fn with_request(
    request: *mut msb_exec_request,
    err_out: *mut *mut msb_error,
    f: impl FnOnce(&mut ExecRequest) -> Result<(), Fail>,
) -> msb_status {
    run(err_out, || {
        // SAFETY: NULL or a live request not used concurrently (documented).
        let r = unsafe { request.as_mut() }.ok_or_else(|| Fail::null("request"))?;
        f(&mut r.request)?;
        Ok(MSB_OK)
    })
}

/// Appends one argument.
#[no_mangle]
pub extern "C" fn msb_exec_request_add_arg(
    request: *mut msb_exec_request,
    arg: *const c_char,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        // SAFETY: borrowed for this call (header contract).
        let a = unsafe { str_arg(arg, "arg") }?;
        r.args.push(a.to_string());
        Ok(())
    })
}

/// Adds an environment variable. `key` must be non-empty and contain no '='.
#[no_mangle]
pub extern "C" fn msb_exec_request_add_env(
    request: *mut msb_exec_request,
    key: *const c_char,
    value: *const c_char,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        // SAFETY: borrowed for this call (header contract).
        let (k, v) = unsafe { (str_arg(key, "key")?, str_arg(value, "value")?) };
        if k.is_empty() || k.contains('=') {
            return Err(Fail::invalid("env key is empty or contains '='"));
        }
        r.env.push(format!("{k}={v}"));
        Ok(())
    })
}

/// Sets the working directory in the guest (NULL: the guest's default).
#[no_mangle]
pub extern "C" fn msb_exec_request_set_cwd(
    request: *mut msb_exec_request,
    cwd: *const c_char,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        r.cwd = match cwd.is_null() {
            true => None,
            // SAFETY: borrowed for this call (header contract).
            false => Some(unsafe { str_arg(cwd, "cwd") }?.to_string()),
        };
        Ok(())
    })
}

/// Sets the guest user to run as (NULL: the agent's default).
#[no_mangle]
pub extern "C" fn msb_exec_request_set_user(
    request: *mut msb_exec_request,
    user: *const c_char,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        r.user = match user.is_null() {
            true => None,
            // SAFETY: borrowed for this call (header contract).
            false => Some(unsafe { str_arg(user, "user") }?.to_string()),
        };
        Ok(())
    })
}

/// Runs on a pseudo-terminal of `rows` x `cols` (or not, if `tty` is false;
/// the size is kept either way). With a tty, stderr arrives merged into stdout.
#[no_mangle]
pub extern "C" fn msb_exec_request_set_tty(
    request: *mut msb_exec_request,
    tty: bool,
    rows: u16,
    cols: u16,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        r.tty = tty;
        r.rows = rows;
        r.cols = cols;
        Ok(())
    })
}

/// Adds a resource limit. `resource` is a lower-case name: cpu fsize data
/// stack core rss nproc nofile memlock as locks sigpending msgqueue nice
/// rtprio rttime; anything else is `MSB_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn msb_exec_request_add_rlimit(
    request: *mut msb_exec_request,
    resource: *const c_char,
    soft: u64,
    hard: u64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    with_request(request, err_out, |r| {
        // SAFETY: borrowed for this call (header contract).
        let res = unsafe { str_arg(resource, "resource") }?;
        if !RLIMIT_RESOURCES.contains(&res) {
            return Err(Fail::invalid(format!("unknown rlimit resource {res:?}")));
        }
        if soft > hard {
            return Err(Fail::invalid("rlimit soft value exceeds hard value"));
        }
        r.rlimits.push(Rlimit {
            resource: res.to_string(),
            soft,
            hard,
        });
        Ok(())
    })
}

/// Releases a request. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_exec_request_free(request: *mut msb_exec_request) {
    free_box(request);
}

fn request_arg<'a>(p: *const msb_exec_request) -> Result<&'a ExecRequest, Fail> {
    box_ref(p, "request").map(|r| &r.request)
}

// ---------------------------------------------------------------- process

/// A process running in the guest.
///
/// Thread safety: any function may be called from any thread: one thread can
/// wait in `msb_exec_next_event` while others write stdin, signal or resize.
/// `msb_exec_free` may run while another thread waits on events: that wait
/// returns `MSB_ERR_CLOSED`.
pub struct msb_exec {
    exec: Exec,
}

/// Starts a process. Events (started, output, exit) are pulled with
/// `msb_exec_next_event`. `timeout_ms` bounds sending the request.
///
/// On success the caller owns `*exec_out` and must release it with
/// `msb_exec_free`. Freeing it does not kill the process; it runs until it
/// exits or the client disconnects (the relay then kills it).
#[no_mangle]
pub extern "C" fn msb_exec_start(
    client: *const msb_client,
    request: *const msb_exec_request,
    timeout_ms: i64,
    exec_out: *mut *mut msb_exec,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        let r = request_arg(request)?;
        need_out(exec_out, "exec_out")?;
        let exec = Exec::start(&c.client, r, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(exec_out, arc_into_raw(msb_exec { exec })) };
        Ok(MSB_OK)
    })
}

fn exec_arg(p: *const msb_exec) -> Result<std::sync::Arc<msb_exec>, Fail> {
    arc_borrow(p, "exec")
}

/// The kinds of `msb_exec_event`.
pub type msb_exec_kind = i32;
/// The process started; `msb_exec_event_pid` is valid.
pub const MSB_EXEC_STARTED: msb_exec_kind = 1;
/// Output on stdout (or the tty); `msb_exec_event_data` is valid.
pub const MSB_EXEC_STDOUT: msb_exec_kind = 2;
/// Output on stderr; `msb_exec_event_data` is valid.
pub const MSB_EXEC_STDERR: msb_exec_kind = 3;
/// The process ended; `msb_exec_event_exit_code` is valid. Last, unless
/// `MSB_EXEC_FAILED` comes instead.
pub const MSB_EXEC_EXITED: msb_exec_kind = 4;
/// The guest could not start the command (agents 0.4.4+): no process ran.
/// `msb_exec_event_failure_kind`, `msb_exec_event_errno`,
/// `msb_exec_event_message` and `msb_exec_event_stage` are valid. Last.
pub const MSB_EXEC_FAILED: msb_exec_kind = 5;
/// Writing stdin into the process failed (agents 0.4.6+);
/// `msb_exec_event_errno` and `msb_exec_event_message` are valid. The
/// process runs on and more events follow.
pub const MSB_EXEC_STDIN_ERROR: msb_exec_kind = 6;

/// One event of a process, owned by the caller of `msb_exec_next_event`.
///
/// Thread safety: the accessors (which take `const msb_exec_event *`) only
/// read it and may run on any thread at once. `msb_exec_event_take_data`
/// (which takes it non-const) moves its data out: no other call on the
/// event may run meanwhile.
pub struct msb_exec_event {
    event: ExecEvent,
    /// The texts of a failure event, NUL-terminated for the accessors.
    texts: Option<Box<FailureTexts>>,
}

struct FailureTexts {
    kind: CString,
    message: CString,
    stage: Option<CString>,
}

/// A string from the guest as a C string; a NUL inside it (which no
/// well-behaved agent sends) cuts it short.
fn guest_c_string(s: &str) -> CString {
    CString::new(s.split('\0').next().unwrap_or("")).unwrap_or_default()
}

fn new_event(event: ExecEvent) -> *mut msb_exec_event {
    let texts = match &event {
        ExecEvent::Failed(f) => Some(FailureTexts {
            kind: guest_c_string(&f.kind),
            message: guest_c_string(&f.message),
            stage: f.stage.as_deref().map(guest_c_string),
        }),
        ExecEvent::StdinError { message, .. } => Some(FailureTexts {
            kind: CString::default(),
            message: guest_c_string(message),
            stage: None,
        }),
        _ => None,
    };
    box_into_raw(msb_exec_event {
        event,
        texts: texts.map(Box::new),
    })
}

/// Pulls the next event, waiting up to `timeout_ms` (0: do not block;
/// `MSB_TIMEOUT_INFINITE`: no limit).
///
/// Returns `MSB_OK` with `*event_out` set (owned by the caller; release it
/// with `msb_exec_event_free`), `MSB_NOTHING_YET` if nothing arrived in
/// time (nothing is consumed), `MSB_ENDED` after the exit event was pulled,
/// or an error. Output received before the connection died is still
/// delivered before the error.
#[no_mangle]
pub extern "C" fn msb_exec_next_event(
    exec: *const msb_exec,
    timeout_ms: i64,
    event_out: *mut *mut msb_exec_event,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let e = exec_arg(exec)?;
        need_out(event_out, "event_out")?;
        pulled(
            e.exec.next_event(timeout_arg(timeout_ms))?,
            event_out,
            new_event,
        )
    })
}

/// A file descriptor readable exactly while `msb_exec_next_event` would not
/// return `MSB_NOTHING_YET` (eventfd; non-blocking, close-on-exec). Poll it
/// for reading; do not read, write or close it. Borrowed: valid until
/// `msb_exec_free(exec)`.
#[no_mangle]
pub extern "C" fn msb_exec_readiness_fd(
    exec: *const msb_exec,
    fd_out: *mut c_int,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        readiness_fd_out(exec_arg(exec)?.exec.subscription(), fd_out)
    })
}

/// The correlation id of the process's session (0 if `exec` is NULL).
#[no_mangle]
pub extern "C" fn msb_exec_id(exec: *const msb_exec) -> u32 {
    run_value(0, || exec_arg(exec).map_or(0, |e| e.exec.id()))
}

/// Writes `len` bytes to the process's stdin (`len` 0 does nothing; use
/// `msb_exec_close_stdin` to signal end of input). Large input is split
/// into frames. The bytes are copied into the socket before this returns.
/// A timeout after part of a frame was written closes the connection (see
/// `msb_client_send`).
#[no_mangle]
pub extern "C" fn msb_exec_write_stdin(
    exec: *const msb_exec,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let e = exec_arg(exec)?;
        // SAFETY: `len` readable bytes, borrowed for this call.
        let d = unsafe { bytes_arg(data, len, "data") }?;
        e.exec.write_stdin(d, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Closes the process's stdin (end of input).
#[no_mangle]
pub extern "C" fn msb_exec_close_stdin(
    exec: *const msb_exec,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        exec_arg(exec)?.exec.close_stdin(deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Sends signal number `signal` (e.g. 15 for SIGTERM) to the process.
#[no_mangle]
pub extern "C" fn msb_exec_signal(
    exec: *const msb_exec,
    signal: i32,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        if signal <= 0 {
            return Err(Fail::invalid("signal must be positive"));
        }
        exec_arg(exec)?
            .exec
            .signal(signal, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Resizes the process's terminal (meaningful for tty execs).
#[no_mangle]
pub extern "C" fn msb_exec_resize(
    exec: *const msb_exec,
    rows: u16,
    cols: u16,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        exec_arg(exec)?
            .exec
            .resize(rows, cols, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Releases the handle and stops listening to the process (which keeps
/// running). A thread blocked in `msb_exec_next_event` on it wakes with
/// `MSB_ERR_CLOSED`. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_exec_free(exec: *mut msb_exec) {
    run_value((), || {
        if let Some(e) = arc_release(exec) {
            e.exec.subscription().cancel();
        }
    })
}

/// The event's kind (`MSB_EXEC_STARTED`, `_STDOUT`, `_STDERR`, `_EXITED`,
/// `_FAILED`, `_STDIN_ERROR`); 0 if `event` is NULL.
#[no_mangle]
pub extern "C" fn msb_exec_event_kind(event: *const msb_exec_event) -> msb_exec_kind {
    box_ref(event, "event").map_or(0, |e| match e.event {
        ExecEvent::Started { .. } => MSB_EXEC_STARTED,
        ExecEvent::Stdout(_) => MSB_EXEC_STDOUT,
        ExecEvent::Stderr(_) => MSB_EXEC_STDERR,
        ExecEvent::Exited { .. } => MSB_EXEC_EXITED,
        ExecEvent::Failed(_) => MSB_EXEC_FAILED,
        ExecEvent::StdinError { .. } => MSB_EXEC_STDIN_ERROR,
    })
}

/// Why a `MSB_EXEC_FAILED` event's command did not start, as the guest
/// names it: "not_found", "permission_denied", "not_executable", "bad_cwd",
/// "bad_args", "resource_limit", "user_setup_failed", "out_of_memory",
/// "pty_setup_failed", "other", or a newer name passed through as sent.
/// "" for other kinds; NULL if `event` is NULL. Borrowed: valid until
/// `msb_exec_event_free(event)`.
#[no_mangle]
pub extern "C" fn msb_exec_event_failure_kind(event: *const msb_exec_event) -> *const c_char {
    match box_ref(event, "event") {
        Ok(e) => match (&e.event, &e.texts) {
            (ExecEvent::Failed(_), Some(t)) => t.kind.as_ptr(),
            _ => c"".as_ptr(),
        },
        Err(_) => std::ptr::null(),
    }
}

/// The guest's errno for a `MSB_EXEC_FAILED` or `MSB_EXEC_STDIN_ERROR`
/// event; 0 when the guest sent none, for other kinds, and if `event` is
/// NULL.
#[no_mangle]
pub extern "C" fn msb_exec_event_errno(event: *const msb_exec_event) -> i32 {
    box_ref(event, "event").map_or(0, |e| match &e.event {
        ExecEvent::Failed(f) => f.errno.unwrap_or(0),
        ExecEvent::StdinError { errno, .. } => errno.unwrap_or(0),
        _ => 0,
    })
}

/// The guest's message for a `MSB_EXEC_FAILED` or `MSB_EXEC_STDIN_ERROR`
/// event; "" for other kinds; NULL if `event` is NULL. Borrowed: valid
/// until `msb_exec_event_free(event)`.
#[no_mangle]
pub extern "C" fn msb_exec_event_message(event: *const msb_exec_event) -> *const c_char {
    match box_ref(event, "event") {
        Ok(e) => e
            .texts
            .as_ref()
            .map_or(c"".as_ptr(), |t| t.message.as_ptr()),
        Err(_) => std::ptr::null(),
    }
}

/// Where a `MSB_EXEC_FAILED` event's start failed (e.g. "spawn",
/// "execution_admission"); NULL when the guest did not say, for other
/// kinds, and if `event` is NULL. Borrowed: valid until
/// `msb_exec_event_free(event)`.
#[no_mangle]
pub extern "C" fn msb_exec_event_stage(event: *const msb_exec_event) -> *const c_char {
    box_ref(event, "event")
        .ok()
        .and_then(|e| e.texts.as_ref())
        .and_then(|t| t.stage.as_ref())
        .map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The guest pid of a `MSB_EXEC_STARTED` event (0 for other kinds); 0 if
/// `event` is NULL.
#[no_mangle]
pub extern "C" fn msb_exec_event_pid(event: *const msb_exec_event) -> u32 {
    box_ref(event, "event").map_or(0, |e| match e.event {
        ExecEvent::Started { pid } => pid,
        _ => 0,
    })
}

/// The exit code of a `MSB_EXEC_EXITED` event: -1 if the process was
/// killed by a signal or could not be started (0 for other kinds); 0 if
/// `event` is NULL.
#[no_mangle]
pub extern "C" fn msb_exec_event_exit_code(event: *const msb_exec_event) -> i32 {
    box_ref(event, "event").map_or(0, |e| match e.event {
        ExecEvent::Exited { code } => code,
        _ => 0,
    })
}

/// The bytes of a `MSB_EXEC_STDOUT` or `MSB_EXEC_STDERR` event; the length
/// goes to `*len_out` (may be NULL). Other kinds, and an event whose data
/// `msb_exec_event_take_data` moved out: length 0 (the pointer is not
/// NULL). Borrowed: valid until `msb_exec_event_free(event)` or
/// `msb_exec_event_take_data(event)`, whichever comes first. NULL (length
/// 0) if `event` is NULL.
#[no_mangle]
pub extern "C" fn msb_exec_event_data(
    event: *const msb_exec_event,
    len_out: *mut usize,
) -> *const u8 {
    let data = box_ref(event, "event").ok().map(|e| match &e.event {
        ExecEvent::Stdout(d) | ExecEvent::Stderr(d) => &d[..],
        _ => &[],
    });
    borrowed_slice(data, len_out)
}

/// Moves the output of a `MSB_EXEC_STDOUT` / `MSB_EXEC_STDERR` event out of
/// the event into an owned buffer, without copying (other kinds give an
/// empty buffer). This is the one call that modifies an event, hence its
/// non-const parameter: no other thread may read the event meanwhile, and
/// a pointer from an earlier `msb_exec_event_data(event)` is invalid once
/// it returns. Afterwards the event stays valid, of the same kind, and
/// `msb_exec_event_data` gives length 0 (a second take gives an empty
/// buffer). On success the caller owns `*data_out` and must release it
/// with `msb_bytes_free`. Errors: `MSB_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn msb_exec_event_take_data(
    event: *mut msb_exec_event,
    data_out: *mut *mut super::msb_bytes,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: NULL or a live event owned by the caller, not shared
        // during this call (header contract).
        let e = unsafe { event.as_mut() }.ok_or_else(|| Fail::null("event"))?;
        need_out(data_out, "data_out")?;
        let data = match &mut e.event {
            ExecEvent::Stdout(d) | ExecEvent::Stderr(d) => std::mem::take(d),
            _ => Bytes::new(),
        };
        // SAFETY: checked non-NULL above.
        unsafe { put(data_out, super::new_bytes(data)) };
        Ok(MSB_OK)
    })
}

/// Releases an event. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_exec_event_free(event: *mut msb_exec_event) {
    free_box(event);
}

// ---------------------------------------------------------------- run

/// The outcome of `msb_exec_run`.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_run_output {
    output: RunOutput,
}

/// Runs a command to completion: stdin is closed at once, stdout and stderr
/// are captured up to `capture_limit` bytes each (the rest is read and
/// discarded; see `msb_run_output_truncated`), and the whole run must end
/// within `timeout_ms`, or the process is killed and `MSB_ERR_TIMEOUT`
/// returned.
///
/// On success the caller owns `*output_out` and must release it with
/// `msb_run_output_free`. A non-zero exit code is still `MSB_OK`. A command
/// the guest could not start gives `MSB_ERR_EXEC_FAILED` (agents 0.4.4+;
/// the message has the guest's text, the kind and the stage) or, from older
/// agents, exit code -1.
#[no_mangle]
pub extern "C" fn msb_exec_run(
    client: *const msb_client,
    request: *const msb_exec_request,
    capture_limit: usize,
    timeout_ms: i64,
    output_out: *mut *mut msb_run_output,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        let r = request_arg(request)?;
        need_out(output_out, "output_out")?;
        let output = exec::run(&c.client, r, capture_limit, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(output_out, box_into_raw(msb_run_output { output })) };
        Ok(MSB_OK)
    })
}

/// The exit code (-1: killed by a signal or not started); 0 if `output` is
/// NULL.
#[no_mangle]
pub extern "C" fn msb_run_output_exit_code(output: *const msb_run_output) -> i32 {
    box_ref(output, "output").map_or(0, |o| o.output.code)
}

/// Captured stdout; length to `*len_out` (may be NULL). Borrowed: valid
/// until `msb_run_output_free(output)`. Not NUL-terminated; never NULL for
/// a live output, even when empty. NULL (length 0) if `output` is NULL.
#[no_mangle]
pub extern "C" fn msb_run_output_stdout(
    output: *const msb_run_output,
    len_out: *mut usize,
) -> *const u8 {
    let data = box_ref(output, "output").ok().map(|o| &o.output.stdout[..]);
    borrowed_slice(data, len_out)
}

/// Captured stderr; as `msb_run_output_stdout` (NULL, length 0, if
/// `output` is NULL).
#[no_mangle]
pub extern "C" fn msb_run_output_stderr(
    output: *const msb_run_output,
    len_out: *mut usize,
) -> *const u8 {
    let data = box_ref(output, "output").ok().map(|o| &o.output.stderr[..]);
    borrowed_slice(data, len_out)
}

/// True if output beyond `capture_limit` was discarded; false if `output`
/// is NULL.
#[no_mangle]
pub extern "C" fn msb_run_output_truncated(output: *const msb_run_output) -> bool {
    box_ref(output, "output").is_ok_and(|o| o.output.truncated)
}

/// Releases a run output. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_run_output_free(output: *mut msb_run_output) {
    free_box(output);
}
