//! TCP connections made by the guest (generation 4), and the liveness
//! checks (generation 6).

use std::ffi::{c_char, c_int};

use super::client::{client_arg, msb_client, pulled, readiness_fd_out};
use super::handle::{arc_borrow, arc_into_raw, arc_release};
use super::{
    bytes_arg, deadline_arg, msb_bytes, msb_error, msb_status, need_out, new_bytes, put, run,
    run_value, str_arg, timeout_arg, Fail, MSB_ERR_WRONG_STATE, MSB_OK,
};
use crate::client::liveness;
use crate::client::tcp::TcpStream;

/// A TCP connection the guest made on the caller's behalf: bytes written
/// here go to the guest's peer, bytes the peer sends are pulled with
/// `msb_tcp_read`.
///
/// Thread safety: any function may be called from any thread. Reads from
/// several threads each get distinct chunks; writes from several threads
/// land in an undefined order, so write from one thread at a time.
/// `msb_tcp_stream_free` wakes a thread blocked in `msb_tcp_read` with
/// `MSB_ERR_CLOSED`.
pub struct msb_tcp_stream {
    stream: TcpStream,
}

/// Asks the guest to open a TCP connection to `host:port` (a name the
/// guest resolves, or an address) and waits up to `timeout_ms` for the
/// outcome (`MSB_TIMEOUT_INFINITE`: as long as the guest tries, 30 s).
///
/// Needs protocol generation 4 (0.5.5 and later): `MSB_ERR_UNSUPPORTED`
/// on older sandboxes. A connection the guest could not make is
/// `MSB_ERR_GUEST` with the guest's reason (`msb_error_errno` gives the
/// errno when the guest named one, e.g. 111 for a refused connection). On
/// timeout the guest's attempt is aborted.
///
/// On success the caller owns `*stream_out` and must release it with
/// `msb_tcp_stream_free`.
#[no_mangle]
pub extern "C" fn msb_tcp_connect(
    client: *const msb_client,
    host: *const c_char,
    port: u16,
    timeout_ms: i64,
    stream_out: *mut *mut msb_tcp_stream,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        // SAFETY: NUL-terminated string borrowed for this call (header contract).
        let host = unsafe { str_arg(host, "host") }?;
        need_out(stream_out, "stream_out")?;
        let stream = TcpStream::connect(&c.client, host, port, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(stream_out, arc_into_raw(msb_tcp_stream { stream })) };
        Ok(MSB_OK)
    })
}

/// Sends `len` bytes to the guest's peer, in chunks of at most 64 KiB.
/// The bytes are in the socket when this returns; `(NULL, 0)` sends
/// nothing. `MSB_ERR_WRONG_STATE` after `msb_tcp_shutdown_write` or once
/// the connection ended. A timeout after part of a frame was written
/// closes the client's connection (see `msb_client_send`).
#[no_mangle]
pub extern "C" fn msb_tcp_write(
    stream: *const msb_tcp_stream,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let s = arc_borrow(stream, "stream")?;
        // SAFETY: `len` readable bytes, borrowed for this call.
        let d = unsafe { bytes_arg(data, len, "data") }?;
        if s.stream.write_closed() {
            return Err(write_closed());
        }
        s.stream.write(d, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

fn write_closed() -> Fail {
    Fail::new(
        MSB_ERR_WRONG_STATE,
        "the connection's writing side is shut down or the connection ended",
    )
}

/// Half-closes the connection: the guest shuts down writing to its peer,
/// which then reads end-of-file. Pulling with `msb_tcp_read` goes on until
/// the peer closes too. Later writes fail with `MSB_ERR_WRONG_STATE`;
/// calling it twice is `MSB_OK`, calling it once the connection ended
/// (`MSB_ENDED` after the peer closed both ways, or a failure) is
/// `MSB_ERR_WRONG_STATE`.
#[no_mangle]
pub extern "C" fn msb_tcp_shutdown_write(
    stream: *const msb_tcp_stream,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let s = arc_borrow(stream, "stream")?;
        if s.stream.has_ended() {
            return Err(write_closed());
        }
        s.stream.shutdown_write(deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Pulls the next chunk the guest's peer sent (at most 64 KiB), waiting up
/// to `timeout_ms` (0: do not block).
///
/// Returns `MSB_OK` with `*chunk_out` set (owned by the caller; release it
/// with `msb_bytes_free`), `MSB_NOTHING_YET`, `MSB_ENDED` once the peer
/// closed its side or the connection closed (and on every later call), or
/// an error (`MSB_ERR_GUEST` with the guest's text if the connection
/// failed).
#[no_mangle]
pub extern "C" fn msb_tcp_read(
    stream: *const msb_tcp_stream,
    timeout_ms: i64,
    chunk_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let s = arc_borrow(stream, "stream")?;
        need_out(chunk_out, "chunk_out")?;
        pulled(
            s.stream.read(timeout_arg(timeout_ms))?,
            chunk_out,
            new_bytes,
        )
    })
}

/// A file descriptor readable exactly while `msb_tcp_read` would not return
/// `MSB_NOTHING_YET` (an eventfd; non-blocking, close-on-exec), until the
/// read that returned `MSB_ENDED`. Poll it; do not read, write or close it.
/// Borrowed: valid until `msb_tcp_stream_free(stream)`.
#[no_mangle]
pub extern "C" fn msb_tcp_readiness_fd(
    stream: *const msb_tcp_stream,
    fd_out: *mut c_int,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        readiness_fd_out(arc_borrow(stream, "stream")?.stream.subscription(), fd_out)
    })
}

/// The correlation id the connection travels on (0 if `stream` is NULL).
#[no_mangle]
pub extern "C" fn msb_tcp_stream_id(stream: *const msb_tcp_stream) -> u32 {
    run_value(0, || {
        arc_borrow(stream, "stream").map_or(0, |s| s.stream.id())
    })
}

/// Aborts the connection unless it already ended (`core.tcp.close`: the
/// guest drops it at once, without a reply) and releases the stream. A
/// thread blocked in `msb_tcp_read` on it returns `MSB_ERR_CLOSED`. For an
/// orderly close, `msb_tcp_shutdown_write` and read to `MSB_ENDED` first.
/// NULL is ignored; freeing twice is forbidden.
#[no_mangle]
pub extern "C" fn msb_tcp_stream_free(stream: *mut msb_tcp_stream) {
    run_value((), || {
        if let Some(s) = arc_release(stream) {
            // Wakes other threads now, even while they hold a reference.
            let _ = s.stream.close(std::time::Duration::from_millis(100));
        }
    })
}

// ---------------------------------------------------------------- liveness

/// Checks that the sandbox's agent answers (`core.ping`, answered with
/// `core.pong`), waiting up to `timeout_ms`. Does not count as activity
/// for the sandbox's idle timer. Needs protocol generation 6 (0.6.4 and
/// later): `MSB_ERR_UNSUPPORTED` on older sandboxes.
///
/// Thread safety: callable from any thread, concurrently.
#[no_mangle]
pub extern "C" fn msb_client_ping(
    client: *const msb_client,
    timeout_ms: i64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        liveness::ping(&c.client, deadline_arg(timeout_ms))?;
        Ok(MSB_OK)
    })
}

/// Marks the sandbox as active, restarting its idle timer (`core.touch`,
/// answered with `core.touched`), and writes the agent's activity sequence
/// number to `*activity_seq_out` (it grows with every activity). Waits up
/// to `timeout_ms`. Needs protocol generation 6 (0.6.4 and later):
/// `MSB_ERR_UNSUPPORTED` on older sandboxes.
///
/// Thread safety: callable from any thread, concurrently.
#[no_mangle]
pub extern "C" fn msb_client_touch(
    client: *const msb_client,
    timeout_ms: i64,
    activity_seq_out: *mut u64,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        let c = client_arg(client)?;
        need_out(activity_seq_out, "activity_seq_out")?;
        let seq = liveness::touch(&c.client, deadline_arg(timeout_ms))?;
        // SAFETY: checked non-NULL above.
        unsafe { put(activity_seq_out, seq) };
        Ok(MSB_OK)
    })
}
