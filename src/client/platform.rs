//! The operating-system primitives the client needs, in one place: a
//! pollable event descriptor, waiting on a 32-bit word, and the socket flags
//! that differ between systems.
//!
//! Linux gets `eventfd` and `futex`. Every other system (macOS, the BSDs),
//! and Linux with the `portable-primitives` feature, gets a non-blocking,
//! close-on-exec pipe and a hashed table of mutexes and condition variables.
//! The portable versions are tested on Linux through that feature, so the
//! code that macOS runs is not left untested.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

#[cfg(all(target_os = "linux", not(feature = "portable-primitives")))]
mod imp {
    use super::*;
    use std::sync::atomic::Ordering;

    /// An eventfd: one descriptor that polls readable while signalled.
    pub(crate) struct Event {
        fd: OwnedFd,
    }

    impl Event {
        pub(crate) fn new() -> io::Result<Event> {
            // SAFETY: eventfd has no memory-safety preconditions; checked below.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            Ok(Event {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        }

        pub(crate) fn poll_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }

        pub(crate) fn signal(&self) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to the eventfd we own;
            // a counter at its maximum fails with EAGAIN and stays readable.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }

        pub(crate) fn clear(&self) {
            let mut sink: u64 = 0;
            // SAFETY: reading 8 bytes into a live u64 from our non-blocking
            // eventfd; one read resets the counter.
            unsafe { libc::read(self.fd.as_raw_fd(), (&mut sink as *mut u64).cast(), 8) };
        }
    }

    /// Sleeps while `word` holds `expected`, until a wake for one of `bits` or
    /// `deadline`. May return early; true only once the deadline has passed.
    pub(crate) fn wait(
        word: &AtomicU32,
        expected: u32,
        bits: u32,
        deadline: Option<Instant>,
    ) -> bool {
        let timeout = deadline.map(monotonic_timespec);
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the word is a live, aligned u32 for the whole call
        // (borrowed); the timeout is null or a live timespec; the second
        // address is unused by FUTEX_WAIT_BITSET.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
                expected,
                timeout_ptr,
                std::ptr::null::<u32>(),
                bits,
            )
        };
        if r == 0 {
            return false;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ETIMEDOUT) => true,
            // The word moved on, or a signal: the caller re-checks.
            Some(libc::EAGAIN) | Some(libc::EINTR) => false,
            // Anything else (ENOSYS under a seccomp filter, say) would make
            // every retry fail at once: sleep a little instead of spinning,
            // and let the clock decide about the deadline.
            _ => {
                if word.load(Ordering::SeqCst) == expected {
                    super::bounded_sleep(deadline);
                }
                deadline.is_some_and(|d| Instant::now() >= d)
            }
        }
    }

    /// Wakes up to `count` threads waiting on `word` for any of `bits`.
    pub(crate) fn wake(word: &AtomicU32, count: i32, bits: u32) {
        // SAFETY: as in `wait`; FUTEX_WAKE_BITSET reads only the word's
        // address, the count and the bit set.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE_BITSET | libc::FUTEX_PRIVATE_FLAG,
                count,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                bits,
            )
        };
    }

    /// `deadline` as the absolute CLOCK_MONOTONIC time FUTEX_WAIT_BITSET
    /// takes (`Instant` reads the same clock, but does not expose it).
    fn monotonic_timespec(deadline: Instant) -> libc::timespec {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a live timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let nanos = now.tv_nsec as u64 + u64::from(left.subsec_nanos());
        let secs = (now.tv_sec as u64)
            .saturating_add(left.as_secs())
            .saturating_add(nanos / 1_000_000_000);
        libc::timespec {
            tv_sec: secs.min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: (nanos % 1_000_000_000) as _,
        }
    }

    #[cfg(test)]
    pub(crate) const PRIMITIVES: &str = "eventfd+futex";
}

#[cfg(not(all(target_os = "linux", not(feature = "portable-primitives"))))]
mod imp {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::{Condvar, Mutex, PoisonError};

    /// A pipe: the read end polls readable while a byte is in it.
    pub(crate) struct Event {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Event {
        pub(crate) fn new() -> io::Result<Event> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` is a live array of two ints for pipe(2) to fill.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both descriptors are fresh and owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            for fd in [&read, &write] {
                super::set_cloexec_nonblock(fd.as_raw_fd())?;
            }
            Ok(Event { read, write })
        }

        pub(crate) fn poll_fd(&self) -> RawFd {
            self.read.as_raw_fd()
        }

        pub(crate) fn signal(&self) {
            let one = 1u8;
            // SAFETY: writing one byte from a live u8 to our non-blocking
            // pipe; a full pipe (EAGAIN) is readable already.
            unsafe { libc::write(self.write.as_raw_fd(), (&one as *const u8).cast(), 1) };
        }

        pub(crate) fn clear(&self) {
            let mut sink = [0u8; 64];
            loop {
                // SAFETY: reading into a live buffer from our non-blocking pipe.
                let n = unsafe {
                    libc::read(self.read.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len())
                };
                if n < sink.len() as isize {
                    return;
                }
            }
        }
    }

    /// Waiters hash to one of these by the word's address; a wake takes the
    /// same lock after the word changed, so a waiter that checked the word
    /// under it cannot miss the wake. Bits are ignored: every waiter of a
    /// bucket wakes and re-checks, which the callers allow for.
    struct Bucket {
        lock: Mutex<()>,
        cond: Condvar,
    }

    const BUCKETS: usize = 64;

    fn bucket(word: &AtomicU32) -> &'static Bucket {
        static TABLE: [Bucket; BUCKETS] = [const {
            Bucket {
                lock: Mutex::new(()),
                cond: Condvar::new(),
            }
        }; BUCKETS];
        &TABLE[(word as *const AtomicU32 as usize >> 2) % BUCKETS]
    }

    pub(crate) fn wait(
        word: &AtomicU32,
        expected: u32,
        _bits: u32,
        deadline: Option<Instant>,
    ) -> bool {
        let b = bucket(word);
        let guard = b.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if word.load(Ordering::SeqCst) != expected {
            return false;
        }
        match deadline {
            None => {
                drop(b.cond.wait(guard).unwrap_or_else(PoisonError::into_inner));
                false
            }
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return true;
                }
                drop(
                    b.cond
                        .wait_timeout(guard, left)
                        .unwrap_or_else(PoisonError::into_inner),
                );
                Instant::now() >= d
            }
        }
    }

    pub(crate) fn wake(word: &AtomicU32, _count: i32, _bits: u32) {
        let b = bucket(word);
        drop(b.lock.lock().unwrap_or_else(PoisonError::into_inner));
        b.cond.notify_all();
    }

    #[cfg(test)]
    pub(crate) const PRIMITIVES: &str = "pipe+condvar";
}

#[cfg(test)]
use imp::PRIMITIVES;
pub(crate) use imp::{wait, wake, Event};

/// Sleeps at most 1 ms, and never past `deadline`: the fallback when a
/// wait primitive fails in a way retrying would not fix.
#[cfg_attr(
    not(all(target_os = "linux", not(feature = "portable-primitives"))),
    allow(dead_code)
)]
fn bounded_sleep(deadline: Option<Instant>) {
    let mut nap = std::time::Duration::from_millis(1);
    if let Some(d) = deadline {
        nap = nap.min(d.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(nap);
}

/// Marks a descriptor close-on-exec and non-blocking, where the system
/// cannot do it at creation.
#[cfg_attr(
    all(target_os = "linux", not(feature = "portable-primitives")),
    allow(dead_code)
)]
pub(crate) fn set_cloexec_nonblock(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fdfl = libc::fcntl(fd, libc::F_GETFD);
        if fdfl < 0 || libc::fcntl(fd, libc::F_SETFD, fdfl | libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new Unix stream socket, close-on-exec and non-blocking.
pub(crate) fn unix_stream_socket() -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let ty = libc::SOCK_STREAM;
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    set_cloexec_nonblock(fd.as_raw_fd())?;
    Ok(fd)
}

/// Flags for every send: a dead peer must give EPIPE, not a SIGPIPE that
/// kills the host program. macOS has no MSG_NOSIGNAL; there the socket
/// carries SO_NOSIGPIPE instead (see [`prepare_socket`]).
#[cfg(not(target_vendor = "apple"))]
pub(crate) const SEND_NOSIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
pub(crate) const SEND_NOSIGNAL: libc::c_int = 0;

/// Per-socket settings the send flags rely on.
pub(crate) fn prepare_socket(_fd: RawFd) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                _fd,
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn event_is_readable_between_signal_and_clear() {
        let e = Event::new().unwrap();
        assert!(!readable(e.poll_fd()));
        e.signal();
        e.signal();
        assert!(readable(e.poll_fd()));
        e.clear();
        assert!(!readable(e.poll_fd()), "{PRIMITIVES}");
    }

    #[test]
    fn wait_times_out_and_returns_when_the_word_moved() {
        let word = AtomicU32::new(5);
        assert!(!wait(
            &word,
            4,
            1,
            Some(Instant::now() + Duration::from_secs(5))
        ));
        let start = Instant::now();
        assert!(wait(&word, 5, 1, Some(start + Duration::from_millis(20))));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
