//! The few host facilities that differ between Linux, macOS and FreeBSD.
//! Everything else in the relay is plain POSIX; keeping the differences
//! here means a missing facility is refused in one place, not ignored.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub type Resource = libc::c_int;

/// The rlimit names the protocol takes from Linux that the BSDs lack.
#[cfg(not(target_os = "linux"))]
const LINUX_ONLY_RLIMITS: [&str; 6] = [
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
];

/// Looks up a Linux-only rlimit name. `Ok(None)`: the protocol has no such
/// name. `Err`: it does, but this host has no such limit, so the exec must
/// be refused rather than run without it.
#[cfg(target_os = "linux")]
pub fn linux_only_rlimit(name: &str) -> Result<Option<Resource>, String> {
    Ok(Some(match name {
        "locks" => libc::RLIMIT_LOCKS,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        _ => return Ok(None),
    }))
}

#[cfg(not(target_os = "linux"))]
pub fn linux_only_rlimit(name: &str) -> Result<Option<Resource>, String> {
    if LINUX_ONLY_RLIMITS.contains(&name) {
        Err(format!(
            "rlimit resource {name:?} does not exist on {}",
            std::env::consts::OS
        ))
    } else {
        Ok(None)
    }
}

/// The ioctl request that makes a tty the caller's controlling terminal,
/// in the integer type each libc's `ioctl` takes.
#[cfg(target_os = "macos")]
pub const SET_CONTROLLING_TTY: libc::c_ulong = libc::TIOCSCTTY as libc::c_ulong;
#[cfg(not(target_os = "macos"))]
pub use libc::TIOCSCTTY as SET_CONTROLLING_TTY;

/// Path of the slave end of an unlocked pty master.
pub fn pty_slave_path(master: &OwnedFd) -> io::Result<CString> {
    let mut name = [0 as libc::c_char; 128];
    #[cfg(not(target_os = "macos"))]
    // SAFETY: `master` is an open pty master; `name` has the length we pass
    // and ptsname_r NUL-terminates what it writes into it.
    unsafe {
        let rc = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    #[cfg(target_os = "macos")]
    // SAFETY: TIOCPTYGNAME writes a NUL-terminated name of at most 128 bytes
    // into the pointer, which points to a live local of exactly that size.
    unsafe {
        if libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCPTYGNAME as libc::c_ulong,
            name.as_mut_ptr(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the call above succeeded, so `name` holds a NUL-terminated
    // string within its bounds.
    Ok(unsafe { CStr::from_ptr(name.as_ptr()) }.to_owned())
}

/// poll events that report the peer closing its end of a socket, without
/// asking for (and so without consuming interest in) readable data.
#[cfg(not(target_os = "macos"))]
pub const PEER_HANGUP_EVENTS: libc::c_short = libc::POLLRDHUP;
/// macOS has no POLLRDHUP; asking for POLLHUP watches the socket's
/// end-of-file, which it reports as POLLHUP.
#[cfg(target_os = "macos")]
pub const PEER_HANGUP_EVENTS: libc::c_short = libc::POLLHUP;

/// Fills `buf` (at most 256 bytes) from the kernel's random source. On
/// failure the bytes are left as they were.
pub fn fill_random(buf: &mut [u8]) {
    debug_assert!(buf.len() <= 256);
    #[cfg(not(target_os = "macos"))]
    // SAFETY: getrandom writes at most `buf.len()` bytes into the live buffer.
    unsafe {
        libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0);
    }
    #[cfg(target_os = "macos")]
    // SAFETY: getentropy writes exactly `buf.len()` (≤ 256) bytes into the
    // live buffer, or nothing.
    unsafe {
        libc::getentropy(buf.as_mut_ptr().cast(), buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_only_rlimits_resolve_here() {
        assert_eq!(linux_only_rlimit("locks"), Ok(Some(libc::RLIMIT_LOCKS)));
        assert_eq!(linux_only_rlimit("rttime"), Ok(Some(libc::RLIMIT_RTTIME)));
        assert_eq!(linux_only_rlimit("bogus"), Ok(None));
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn linux_only_rlimits_are_refused_by_name() {
        for name in LINUX_ONLY_RLIMITS {
            let refusal = linux_only_rlimit(name).unwrap_err();
            assert!(refusal.contains(name), "{refusal}");
        }
        assert_eq!(linux_only_rlimit("bogus"), Ok(None));
    }

    #[test]
    fn pty_slave_path_names_a_device() {
        // SAFETY: the path is a NUL-terminated literal; on success the fd is
        // new and owned by nobody else.
        let master = unsafe {
            let fd = libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        let path = pty_slave_path(&master).unwrap();
        assert!(path.to_bytes().starts_with(b"/dev/"), "{path:?}");
    }
}
