//! Connecting, the client handle, and the raw message tier.

use std::ffi::{c_char, c_int};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use super::handle::{arc_borrow, arc_into_raw, arc_release, box_into_raw, box_ref, free_box};
use super::{
    borrowed_slice, bytes_arg, deadline_arg, msb_bytes, msb_error, msb_status, need_out, new_bytes,
    put, run, run_value, str_arg, timeout_arg, Fail, MSB_ENDED, MSB_ERR_INVALID_ARGUMENT,
    MSB_NOTHING_YET, MSB_OK,
};
use crate::client::{Client, ClientOptions, Pulled, Subscription};
use crate::protocol::{Message, MessageType};

// ---------------------------------------------------------------- options

/// Connection options, built by the caller and read by the connect calls.
/// New options are added as new setters, so compiled callers keep working.
///
/// Thread safety: not synchronised; do not modify it while another thread
/// connects with it.
pub struct msb_connect_options {
    options: ClientOptions,
}

/// Creates connection options with the defaults: a 10 s connect-and-handshake
/// timeout and a 16 MiB memory budget.
///
/// On success the caller owns `*options_out` and must release it with
/// `msb_connect_options_free`.
#[no_mangle]
pub extern "C" fn msb_connect_options_new(
    options_out: *mut *mut msb_connect_options,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        need_out(options_out, "options_out")?;
        let o = box_into_raw(msb_connect_options {
            options: ClientOptions::default(),
        });
        // SAFETY: checked non-NULL above.
        unsafe { put(options_out, o) };
        Ok(MSB_OK)
    })
}

/// Sets the deadline for connecting plus the handshake, in milliseconds.
/// It must be positive: a connection always has a deadline, because a
/// stalled guest would otherwise hold the caller forever, so 0 and every
/// negative value (`MSB_TIMEOUT_INFINITE` included) are
/// `MSB_ERR_INVALID_ARGUMENT` and leave the options unchanged. Errors:
/// `MSB_ERR_NULL_POINTER`, `MSB_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn msb_connect_options_set_timeout_ms(
    options: *mut msb_connect_options,
    timeout_ms: i64,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: NULL or a live options object owned by the caller, not
        // shared with another thread during this call (documented).
        let o = unsafe { options.as_mut() }.ok_or_else(|| Fail::null("options"))?;
        let ms = u64::try_from(timeout_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                Fail::invalid("the connect timeout must be positive: a connection needs a deadline")
            })?;
        o.options.connect_timeout = Duration::from_millis(ms);
        Ok(MSB_OK)
    })
}

/// Sets the memory budget (at least 65536 bytes, default 16 MiB): the
/// memory that received, not yet pulled messages may hold. What happens when
/// it is full is chosen by `msb_connect_options_set_backpressure`; the bound
/// on the client's memory is stated in the README, section "Memory, and
/// what a hostile guest can do".
#[no_mangle]
pub extern "C" fn msb_connect_options_set_memory_budget(
    options: *mut msb_connect_options,
    bytes: usize,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: as in msb_connect_options_set_timeout_ms.
        let o = unsafe { options.as_mut() }.ok_or_else(|| Fail::null("options"))?;
        if bytes < crate::client::MIN_MEMORY_BUDGET {
            return Err(Fail::invalid("memory budget below 65536 bytes"));
        }
        o.options.memory_budget = bytes;
        Ok(MSB_OK)
    })
}

/// Chooses what happens when unread messages fill the memory budget:
/// `MSB_BACKPRESSURE_FAIL_STREAM` (default): the socket stops being read
/// until the caller pulls, for at most 1 s; if the budget is still full
/// then, reading resumes and the stream holding the most unread data fails
/// with `MSB_ERR_STREAM_OVERFLOW` (see the README's "Memory" section). `MSB_BACKPRESSURE_PAUSE_SOCKET`: the library
/// stops reading the socket until the caller pulls; nothing fails, but one
/// unread stream pauses the whole connection, and the relay sees a client
/// that does not read: 0.7 relays disconnect it after 5 s (killing its
/// processes), 0.6 relays stall every client of the sandbox meanwhile.
/// Other values give `MSB_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn msb_connect_options_set_backpressure(
    options: *mut msb_connect_options,
    mode: i32,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: as in msb_connect_options_set_timeout_ms.
        let o = unsafe { options.as_mut() }.ok_or_else(|| Fail::null("options"))?;
        o.options.backpressure = match mode {
            super::MSB_BACKPRESSURE_FAIL_STREAM => crate::client::Backpressure::FailStream,
            super::MSB_BACKPRESSURE_PAUSE_SOCKET => crate::client::Backpressure::PauseSocket,
            other => return Err(Fail::invalid(format!("unknown backpressure mode {other}"))),
        };
        Ok(MSB_OK)
    })
}

/// Releases connection options. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_connect_options_free(options: *mut msb_connect_options) {
    free_box(options);
}

fn options_arg(options: *const msb_connect_options) -> ClientOptions {
    // SAFETY: NULL or a live options object (header contract).
    match unsafe { options.as_ref() } {
        Some(o) => o.options.clone(),
        None => ClientOptions::default(),
    }
}

// ---------------------------------------------------------------- client

/// A connection to one relay. Calls run on the caller's thread (a thread
/// blocked in a pull reads the socket itself); a private background thread
/// is started only once something waits through a readiness fd.
///
/// Thread safety: every function taking an `msb_client` may be called from
/// any thread, concurrently. `msb_client_free` may run while other threads
/// are blocked in calls on this client: they return `MSB_ERR_CLOSED`. Using
/// the pointer after `msb_client_free` returned is forbidden.
pub struct msb_client {
    pub(crate) client: Client,
}

pub(crate) fn client_arg(p: *const msb_client) -> Result<std::sync::Arc<msb_client>, Fail> {
    arc_borrow(p, "client")
}

fn connected(client: Client, client_out: *mut *mut msb_client) -> msb_status {
    let h = arc_into_raw(msb_client { client });
    // SAFETY: NULL-checked by the caller before connecting.
    unsafe { put(client_out, h) };
    MSB_OK
}

/// Connects to the relay socket at `socket_path` and completes the handshake
/// within the options' timeout. `options` may be NULL for the defaults.
///
/// On success the caller owns `*client_out` and must release it with
/// `msb_client_free`. Speaks every relay from 0.3.14 to 0.7.13: both
/// handshake forms are recognised (see `msb_client_is_legacy` and
/// `msb_client_generation`). Errors: `MSB_ERR_NOT_FOUND` (no relay there),
/// `MSB_ERR_RELAY_BUSY` (the relay closed before the handshake: full or
/// stalled; retry later), `MSB_ERR_TIMEOUT`, `MSB_ERR_HANDSHAKE` (a
/// truncated or invalid handshake), `MSB_ERR_PROTOCOL`,
/// `MSB_ERR_INVALID_ARGUMENT` (path too long for a Unix socket),
/// `MSB_ERR_IO`.
#[no_mangle]
pub extern "C" fn msb_client_connect(
    socket_path: *const c_char,
    options: *const msb_connect_options,
    client_out: *mut *mut msb_client,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: NUL-terminated string borrowed for this call (header contract).
        let path = unsafe { str_arg(socket_path, "socket_path") }?;
        need_out(client_out, "client_out")?;
        let client = Client::connect(path, &options_arg(options))?;
        Ok(connected(client, client_out))
    })
}

/// Connects to a sandbox by name, at the socket `msb_sandbox_socket_path`
/// resolves for it (under `$MSB_HOME`, default `~/.microsandbox`, in the
/// layout of whichever runtime line started the sandbox). Same ownership
/// and errors as `msb_client_connect`; an unknown name gives
/// `MSB_ERR_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn msb_client_connect_sandbox(
    name: *const c_char,
    options: *const msb_connect_options,
    client_out: *mut *mut msb_client,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: NUL-terminated string borrowed for this call (header contract).
        let name = unsafe { str_arg(name, "name") }?;
        need_out(client_out, "client_out")?;
        let client = Client::connect_sandbox(name, &options_arg(options))?;
        Ok(connected(client, client_out))
    })
}

/// Performs the handshake on an already-connected stream socket. The
/// library duplicates `fd` and uses its duplicate: the caller keeps
/// ownership of `fd` and may close it at any time after this returns, but
/// must not read from or write to it while the client lives. The socket,
/// which `fd` shares, is switched to blocking mode with the library's own
/// send and receive timeouts (every wait stays bounded by the timeout of
/// the call that waits), and closing the client shuts the connection down
/// (`shutdown(2)`).
/// Same ownership of `*client_out` and errors as `msb_client_connect`.
#[no_mangle]
pub extern "C" fn msb_client_connect_fd(
    fd: c_int,
    options: *const msb_connect_options,
    client_out: *mut *mut msb_client,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        need_out(client_out, "client_out")?;
        if fd < 0 {
            return Err(Fail::invalid("fd is negative"));
        }
        // SAFETY: F_DUPFD_CLOEXEC on a caller-provided descriptor; an invalid
        // one yields EBADF, which is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(Fail::new(
                MSB_ERR_INVALID_ARGUMENT,
                format!("fd {fd}: {}", std::io::Error::last_os_error()),
            ));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let client = Client::from_fd(owned, &options_arg(options))?;
        Ok(connected(client, client_out))
    })
}

/// Closes the connection: calls blocked on this client (and its
/// subscriptions, execs and file streams) wake, and later calls fail with
/// `MSB_ERR_CLOSED`, except that a pull (`msb_subscription_next`,
/// `msb_exec_next_event`, `msb_file_reader_next`, `msb_tcp_read`) first
/// delivers what was received before the close, then returns
/// `MSB_ERR_CLOSED`. Idempotent; callable from any thread. The handle must
/// still be released with `msb_client_free`.
#[no_mangle]
pub extern "C" fn msb_client_close(client: *const msb_client) -> msb_status {
    run(std::ptr::null_mut(), || {
        client_arg(client)?.client.close();
        Ok(MSB_OK)
    })
}

/// Closes the connection (as `msb_client_close`), waits for the client's
/// background thread (if one was started) to exit, and releases the handle:
/// no thread of the library is left running for this client. Subscriptions,
/// execs and file streams of this client stay valid (and must still be
/// freed): sends on them fail with `MSB_ERR_CLOSED` at once, while pulls
/// first deliver what was received before the close, then return
/// `MSB_ERR_CLOSED`. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_client_free(client: *mut msb_client) {
    run_value((), || {
        if let Some(c) = arc_release(client) {
            c.client.close_and_join();
        }
    })
}

/// Sandbox start-up timings from the relay's `core.ready`, in nanoseconds.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct msb_ready_timings {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
    pub ready_time_ns: u64,
}

/// Writes the ready timings to `*timings_out`.
#[no_mangle]
pub extern "C" fn msb_client_ready_timings(
    client: *const msb_client,
    timings_out: *mut msb_ready_timings,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        let c = client_arg(client)?;
        need_out(timings_out, "timings_out")?;
        let r = c.client.ready();
        let t = msb_ready_timings {
            boot_time_ns: r.boot_time_ns,
            init_time_ns: r.init_time_ns,
            ready_time_ns: r.ready_time_ns,
        };
        // SAFETY: checked non-NULL above.
        unsafe { put(timings_out, t) };
        Ok(MSB_OK)
    })
}

/// The raw CBOR payload of the relay's `core.ready`, as received.
///
/// On success the caller owns `*payload_out` and must release it with
/// `msb_bytes_free`.
#[no_mangle]
pub extern "C" fn msb_client_ready_payload(
    client: *const msb_client,
    payload_out: *mut *mut msb_bytes,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        let c = client_arg(client)?;
        need_out(payload_out, "payload_out")?;
        let b = new_bytes(c.client.ready_payload().clone());
        // SAFETY: checked non-NULL above.
        unsafe { put(payload_out, b) };
        Ok(MSB_OK)
    })
}

/// The first id of this client's range minus one. On a legacy (0.3/0.4)
/// relay this is the handshake's `id_offset`, and ids run from
/// `id_offset + 1` to `id_offset + 268435454`. On a current (0.5+) relay it
/// is `id_start - 1`, and ids run up to `id_end_exclusive - 1`: use
/// `msb_client_id_range`, which is right for both. 0 if `client` is NULL.
#[no_mangle]
pub extern "C" fn msb_client_id_offset(client: *const msb_client) -> u32 {
    run_value(0, || client_arg(client).map_or(0, |c| c.client.id_offset()))
}

/// This client's correlation ids: `*start_out <= id < *end_exclusive_out`.
/// Id 0 is never in it (only `core.shutdown` uses id 0).
///
/// Errors: `MSB_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn msb_client_id_range(
    client: *const msb_client,
    start_out: *mut u32,
    end_exclusive_out: *mut u32,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        let c = client_arg(client)?;
        need_out(start_out, "start_out")?;
        need_out(end_exclusive_out, "end_exclusive_out")?;
        let r = c.client.peer().id_range();
        // SAFETY: both checked non-NULL above.
        unsafe {
            put(start_out, r.start);
            put(end_exclusive_out, r.end);
        }
        Ok(MSB_OK)
    })
}

/// The protocol generation this connection speaks: 1 on a legacy (0.3/0.4)
/// relay, otherwise the smaller of the sandbox's generation and the
/// library's (10). A 0.5.0 sandbox speaks 1 although its relay is current;
/// it runs commands but refuses filesystem calls (`MSB_ERR_UNSUPPORTED`).
/// 0 if `client` is NULL.
#[no_mangle]
pub extern "C" fn msb_client_generation(client: *const msb_client) -> u32 {
    run_value(0, || {
        client_arg(client).map_or(0, |c| c.client.peer().generation().into())
    })
}

/// The sandbox's own protocol generation: the `v` of the relay's
/// `core.ready` (1 for 0.3.x to 0.5.0, 7 for 0.6.10 to 0.6.18, 9 or 10 for
/// 0.7.x). 0 if `client` is NULL.
#[no_mangle]
pub extern "C" fn msb_client_peer_generation(client: *const msb_client) -> u32 {
    run_value(0, || {
        client_arg(client).map_or(0, |c| c.client.peer().peer_generation().into())
    })
}

/// True if the relay used the legacy handshake of 0.3.x and 0.4.x (16
/// clients, filesystem calls in their 0.3.14 shapes). False for current
/// relays and if `client` is NULL.
#[no_mangle]
pub extern "C" fn msb_client_is_legacy(client: *const msb_client) -> bool {
    run_value(false, || {
        client_arg(client).is_ok_and(|c| c.client.peer().is_legacy())
    })
}

/// The agent's version from `core.ready` (e.g. "0.6.14"); "" when the
/// sandbox does not say (before 0.5.5). Borrowed: valid until
/// `msb_client_free(client)`. NULL if `client` is NULL.
#[no_mangle]
pub extern "C" fn msb_client_agent_version(client: *const msb_client) -> *const c_char {
    run_value(std::ptr::null(), || match client_arg(client) {
        // The string lives in the client's peer, which lives as long as any
        // handle to the client, so it outlives this borrowed Arc.
        Ok(c) => c.client.peer().agent_version_c().as_ptr(),
        Err(_) => std::ptr::null(),
    })
}

/// True if this connection can carry `message_type` (a wire name such as
/// "core.tcp.connect"): the type is known to the library and the negotiated
/// generation has it. On legacy relays the filesystem types count as
/// supported: the library speaks their 0.3.14 shapes there. False for
/// unknown names, invalid UTF-8 and NULL arguments.
#[no_mangle]
pub extern "C" fn msb_client_supports(
    client: *const msb_client,
    message_type: *const c_char,
) -> bool {
    run_value(false, || {
        let Ok(c) = client_arg(client) else {
            return false;
        };
        // SAFETY: NULL or a NUL-terminated string borrowed for this call
        // (header contract).
        let Ok(t) = (unsafe { str_arg(message_type, "message_type") }) else {
            return false;
        };
        c.client.peer().supports(&MessageType::from_wire(t))
    })
}

/// What the relay has sent this client, to see what a guest did.
///
/// Extensible: set `struct_size = sizeof(msb_counters)` before the call; the
/// library fills only the fields that fit in that size, so a caller compiled
/// against an older, smaller struct keeps working.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct msb_counters {
    /// Set by the caller to `sizeof(msb_counters)`.
    pub struct_size: usize,
    /// Frames received since the handshake.
    pub frames_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Frames in our id range that nobody was subscribed to (dropped).
    pub dropped_no_subscriber: u64,
    /// Frames with an id outside our range (dropped).
    pub dropped_out_of_range: u64,
    /// Frames of a type this library does not know (delivered to raw
    /// subscribers, skipped by the exec and fs calls).
    pub unknown_type: u64,
    /// Memory held by received messages waiting to be pulled, right now
    /// (buffer capacity plus per-message overhead).
    pub bytes_queued: u64,
    /// Messages dropped because their stream had failed with
    /// `MSB_ERR_STREAM_OVERFLOW` (arrived after, or released by, the failure).
    pub dropped_overflow: u64,
}

/// Fills `*counters` (see `msb_counters` for `struct_size`).
#[no_mangle]
pub extern "C" fn msb_client_counters(
    client: *const msb_client,
    counters: *mut msb_counters,
) -> msb_status {
    run(std::ptr::null_mut(), || {
        let c = client_arg(client)?;
        need_out(counters, "counters")?;
        // SAFETY: non-NULL; the caller set struct_size (header contract).
        let size = unsafe { (*counters).struct_size };
        if size < std::mem::size_of::<usize>() {
            return Err(Fail::invalid("counters->struct_size is not set"));
        }
        let k = c.client.counters();
        let full = msb_counters {
            struct_size: size.min(std::mem::size_of::<msb_counters>()),
            frames_received: k.frames_received,
            bytes_received: k.bytes_received,
            dropped_no_subscriber: k.dropped_no_subscriber,
            dropped_out_of_range: k.dropped_out_of_range,
            unknown_type: k.unknown_type,
            bytes_queued: k.bytes_queued,
            dropped_overflow: k.dropped_overflow,
        };
        let n = full.struct_size;
        // SAFETY: the caller provides `size` writable bytes at `counters`; we
        // copy at most that many from a live struct of at least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &full as *const msb_counters as *const u8,
                counters as *mut u8,
                n,
            )
        };
        Ok(MSB_OK)
    })
}

/// Asks the sandbox to shut down (`core.shutdown`). No reply comes; the
/// relay closes the connection as the sandbox goes away.
#[no_mangle]
pub extern "C" fn msb_client_shutdown(
    client: *const msb_client,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        c.client.shutdown(deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

// ---------------------------------------------------------------- raw tier

/// A received message: id, flags, type and CBOR payload.
///
/// Thread safety: immutable; may be read from any thread.
pub struct msb_message {
    message: Message,
    /// Static for the types this library knows: no allocation per message.
    type_name: std::borrow::Cow<'static, std::ffi::CStr>,
}

fn new_message(message: Message) -> *mut msb_message {
    let type_name = match message.message_type.static_c_name() {
        Some(name) => std::borrow::Cow::Borrowed(name),
        None => std::borrow::Cow::Owned(
            std::ffi::CString::new(message.message_type.as_str())
                .unwrap_or_else(|_| c"(invalid)".to_owned()),
        ),
    };
    box_into_raw(msb_message { message, type_name })
}

/// Returns an id of this client's range that no subscription uses now.
/// Subscribe to it before sending on it. On a current (0.5+) relay every id
/// is handed out once per connection (0.7 relays disconnect a client that
/// reuses one); the id stays yours to subscribe to until 4096 more have
/// been allocated. Returns 0 if `client` is NULL or
/// every id of the range has been used (`MSB_ERR_IDS_EXHAUSTED` on the
/// calls that report errors): reconnect then.
#[no_mangle]
pub extern "C" fn msb_client_alloc_id(client: *const msb_client) -> u32 {
    run_value(0, || {
        client_arg(client)
            .ok()
            .and_then(|c| c.client.alloc_id().ok())
            .unwrap_or(0)
    })
}

/// Sends one message with the flags its type calls for (0 for types this
/// library does not know). `payload` is the CBOR payload; `(NULL, 0)` sends
/// an empty one. `id` must lie in the client's range (see
/// `msb_client_id_range`); only "core.shutdown" may use id 0. On a current
/// (0.5+) relay, `message_type` must be a type this library knows and that
/// a client sends (an agent fails on anything else): otherwise
/// `MSB_ERR_INVALID_ARGUMENT`. A type above the negotiated generation gives
/// `MSB_ERR_UNSUPPORTED` on every relay. Blocks only while the socket is full, at most `timeout_ms`
/// (`MSB_TIMEOUT_INFINITE`: no limit). Frames sent concurrently from
/// several threads are never interleaved.
///
/// On `MSB_ERR_TIMEOUT`: if no byte had been written, nothing was sent and
/// the connection stays usable; if part of the frame was written, the byte
/// stream can no longer be framed, so the connection is closed (later calls
/// return `MSB_ERR_CLOSED`). The same holds for every call that sends.
///
/// Errors: `MSB_ERR_TOO_LARGE` (over 4 MiB), `MSB_ERR_TIMEOUT`,
/// `MSB_ERR_CLOSED`, `MSB_ERR_INVALID_UTF8`, `MSB_ERR_INVALID_ARGUMENT`,
/// `MSB_ERR_UNSUPPORTED`.
#[no_mangle]
pub extern "C" fn msb_client_send(
    client: *const msb_client,
    message_type: *const c_char,
    id: u32,
    payload: *const u8,
    payload_len: usize,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let t = unsafe { str_arg(message_type, "message_type") }?;
        // SAFETY: `payload_len` readable bytes, borrowed for this call.
        let p = unsafe { bytes_arg(payload, payload_len, "payload") }?;
        if t.is_empty() {
            return Err(Fail::invalid("message_type is empty"));
        }
        c.client
            .send(&MessageType::from_wire(t), id, p, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Sends a message on a fresh id and waits up to `timeout_ms` for the first
/// reply. On timeout the pending entry is removed (a late reply is dropped
/// and counted). `message_type` is checked as by `msb_client_send`; a
/// fresh id on a used-up range gives `MSB_ERR_IDS_EXHAUSTED`.
///
/// On success the caller owns `*reply_out` and must release it with
/// `msb_message_free`.
#[no_mangle]
pub extern "C" fn msb_client_request(
    client: *const msb_client,
    message_type: *const c_char,
    payload: *const u8,
    payload_len: usize,
    timeout_ms: i64,
    reply_out: *mut *mut msb_message,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: borrowed for this call (header contract).
        let t = unsafe { str_arg(message_type, "message_type") }?;
        // SAFETY: `payload_len` readable bytes, borrowed for this call.
        let p = unsafe { bytes_arg(payload, payload_len, "payload") }?;
        need_out(reply_out, "reply_out")?;
        if t.is_empty() {
            return Err(Fail::invalid("message_type is empty"));
        }
        let m = c
            .client
            .request(&MessageType::from_wire(t), p, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(reply_out, new_message(m)) };
        Ok(MSB_OK)
    })
}

/// A subscription to the messages of one correlation id.
///
/// Thread safety: any function may be called from any thread; concurrent
/// pulls each get distinct messages. `msb_subscription_free` may run while
/// another thread is blocked in a pull on it: that pull returns
/// `MSB_ERR_CLOSED`.
pub struct msb_subscription {
    sub: Subscription,
}

/// Subscribes to `id`, which must be in this client's range and not already
/// subscribed. Messages for it are queued from now on: subscribe before
/// sending.
///
/// On success the caller owns `*sub_out` and must release it with
/// `msb_subscription_free`. On a current (0.5+) relay an id can carry one
/// conversation per connection: an id used before (other than one just
/// returned by `msb_client_alloc_id`) is refused. Errors:
/// `MSB_ERR_ID_UNAVAILABLE`, `MSB_ERR_CLOSED`.
#[no_mangle]
pub extern "C" fn msb_client_subscribe(
    client: *const msb_client,
    id: u32,
    sub_out: *mut *mut msb_subscription,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        need_out(sub_out, "sub_out")?;
        let sub = c.client.subscribe(id)?;
        // SAFETY: checked non-NULL above.
        unsafe { put(sub_out, arc_into_raw(msb_subscription { sub })) };
        Ok(MSB_OK)
    })
}

/// The id this subscription listens to (0 if `sub` is NULL).
#[no_mangle]
pub extern "C" fn msb_subscription_id(sub: *const msb_subscription) -> u32 {
    run_value(0, || arc_borrow(sub, "sub").map_or(0, |s| s.sub.id()))
}

/// Pulls the next message, waiting up to `timeout_ms` (0: do not block;
/// `MSB_TIMEOUT_INFINITE`: no limit).
///
/// Returns `MSB_OK` with `*message_out` set (owned by the caller; release it
/// with `msb_message_free`), `MSB_NOTHING_YET` when nothing arrived in time
/// (nothing is consumed), `MSB_ENDED` after the id's terminal message was
/// delivered, or an error (`MSB_ERR_CLOSED`, `MSB_ERR_PROTOCOL`) once the
/// connection is gone and every message received before that was pulled.
#[no_mangle]
pub extern "C" fn msb_subscription_next(
    sub: *const msb_subscription,
    timeout_ms: i64,
    message_out: *mut *mut msb_message,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let s = arc_borrow(sub, "sub")?;
        need_out(message_out, "message_out")?;
        pulled(
            s.sub.recv_timeout(timeout_arg(timeout_ms))?,
            message_out,
            new_message,
        )
    })
}

/// Converts a pull's outcome to a status, writing the item if there is one.
pub(crate) fn pulled<T, C>(
    p: Pulled<T>,
    out: *mut *mut C,
    convert: impl FnOnce(T) -> *mut C,
) -> Result<msb_status, Fail> {
    Ok(match p {
        Pulled::Item(item) => {
            // SAFETY: the caller checked `out` non-NULL.
            unsafe { put(out, convert(item)) };
            MSB_OK
        }
        Pulled::Nothing => MSB_NOTHING_YET,
        Pulled::Ended => MSB_ENDED,
    })
}

/// The body of every `*_readiness_fd` export: writes the readiness fd of
/// `sub` to `fd_out`.
pub(crate) fn readiness_fd_out(sub: &Subscription, fd_out: *mut c_int) -> Result<msb_status, Fail> {
    need_out(fd_out, "fd_out")?;
    let fd = sub.readiness_fd()?;
    // SAFETY: checked non-NULL above.
    unsafe { put(fd_out, fd) };
    Ok(MSB_OK)
}

/// A file descriptor that is readable exactly while
/// `msb_subscription_next` would not return `MSB_NOTHING_YET` (an eventfd;
/// non-blocking, close-on-exec). Poll it for reading; do not read, write or
/// close it. Borrowed: valid until `msb_subscription_free(sub)`.
#[no_mangle]
pub extern "C" fn msb_subscription_readiness_fd(
    sub: *const msb_subscription,
    fd_out: *mut c_int,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        readiness_fd_out(&arc_borrow(sub, "sub")?.sub, fd_out)
    })
}

/// Unsubscribes and releases the subscription; unread messages are dropped
/// and their memory returned to the budget. A thread blocked in a pull on
/// it wakes with `MSB_ERR_CLOSED`. NULL is ignored; freeing twice is
/// forbidden.
#[no_mangle]
pub extern "C" fn msb_subscription_free(sub: *mut msb_subscription) {
    run_value((), || {
        if let Some(s) = arc_release(sub) {
            s.sub.cancel();
        }
    })
}

/// The message's correlation id (0 if `message` is NULL).
#[no_mangle]
pub extern "C" fn msb_message_id(message: *const msb_message) -> u32 {
    box_ref(message, "message").map_or(0, |m| m.message.id)
}

/// The message's flags byte (0 if `message` is NULL).
#[no_mangle]
pub extern "C" fn msb_message_flags(message: *const msb_message) -> u8 {
    box_ref(message, "message").map_or(0, |m| m.message.flags)
}

/// The message type, e.g. "core.fs.response"; types unknown to this library
/// are reported as received. Borrowed: valid until `msb_message_free`.
/// NULL if `message` is NULL.
#[no_mangle]
pub extern "C" fn msb_message_type(message: *const msb_message) -> *const c_char {
    box_ref(message, "message").map_or(std::ptr::null(), |m| m.type_name.as_ptr())
}

/// The CBOR payload; its length goes to `*len_out` (which may be NULL).
/// Borrowed: valid until `msb_message_free`. Never NULL for a live
/// message, even when empty; NULL (length 0) if `message` is NULL.
#[no_mangle]
pub extern "C" fn msb_message_payload(
    message: *const msb_message,
    len_out: *mut usize,
) -> *const u8 {
    let data = box_ref(message, "message")
        .ok()
        .map(|m| &m.message.payload[..]);
    borrowed_slice(data, len_out)
}

/// Releases a message. NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_message_free(message: *mut msb_message) {
    free_box(message);
}
