//! Where a sandbox's relay socket is, by name.

use std::ffi::c_char;

use super::{msb_bytes, msb_error, msb_status, need_out, new_bytes, put, run, str_arg, MSB_OK};
use crate::client::{path_to_nul_terminated, sandbox_socket_path};

/// The relay socket path of the sandbox `name`, as
/// `msb_client_connect_sandbox` resolves it. Sandboxes of different runtime
/// lines keep the socket in different places under `$MSB_HOME` (default
/// `~/.microsandbox`); they are tried newest first:
///
/// 1. `run/sandboxes/<first 24 hex digits of sha256(name)>/agent.sock`
///    (0.6.9 and later; its `control.sock` sits beside it);
/// 2. `run/agent/<first 32 hex digits of sha256(name)>.sock` (0.5.2 to 0.6.8);
/// 3. `sandboxes/<name>/runtime/agent.sock` (up to 0.5.1).
///
/// The first path that exists wins. If none exists, the answer is the first
/// whose socket paths fit in a `sockaddr_un` (for the first layout, both
/// `agent.sock` and `control.sock` must fit). For the name "worker" the
/// first two are `run/sandboxes/87eba76e7f3164534045ba92/agent.sock` and
/// `run/agent/87eba76e7f3164534045ba922e7770fb.sock`.
///
/// Nothing is connected to. `name` must be 1 to 255 bytes of UTF-8 without
/// '/' and not "." or ".." (else `MSB_ERR_INVALID_ARGUMENT`, also when no
/// layout fits in a socket address or neither `MSB_HOME` nor `HOME` is set).
///
/// On success the caller owns `*path_out` and must release it with
/// `msb_bytes_free`. Its bytes are the path without a terminating NUL
/// (`msb_bytes_len` counts only them), and a NUL byte follows them in
/// memory, so `(const char *)msb_bytes_data(path)` is also a C string.
///
/// Thread safety: callable from any thread; it reads the environment, so
/// not while another thread changes `MSB_HOME` or `HOME`.
#[no_mangle]
pub extern "C" fn msb_sandbox_socket_path(
    name: *const c_char,
    path_out: *mut *mut msb_bytes,
    err_out: *mut *mut msb_error,
) -> msb_status {
    run(err_out, || {
        // SAFETY: NUL-terminated string borrowed for this call (header contract).
        let name = unsafe { str_arg(name, "name") }?;
        need_out(path_out, "path_out")?;
        let path = sandbox_socket_path(name)?;
        let with_nul = bytes::Bytes::from(path_to_nul_terminated(&path));
        // The slice shares the allocation, so the NUL stays right after it.
        let bytes = with_nul.slice(..with_nul.len() - 1);
        // SAFETY: checked non-NULL above.
        unsafe { put(path_out, new_bytes(bytes)) };
        Ok(MSB_OK)
    })
}
