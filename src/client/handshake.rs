//! Connecting and the relay handshake, done on the caller's thread with one
//! deadline, before the reader starts.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use super::error::{Error, Result};
use super::ids::IdRange;
use super::peer::Form;
use crate::protocol::{
    FrameHeader, Message, MessageType, ProtocolError, RawFrame, FRAME_HEADER_SIZE, FRAME_HEAD_SIZE,
    MAX_FRAME_SIZE,
};

pub(crate) struct Handshake {
    pub form: Form,
    pub range: IdRange,
    pub ready: Message,
}

fn os_err(what: &'static str) -> Error {
    Error::io(io::Error::last_os_error(), what)
}

/// Waits until `fd` has `events`, or the deadline passes.
fn wait_for(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout("connecting and completing the handshake"));
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `p` is one live, initialised pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io(e, "poll"));
        }
        if r > 0 {
            return Ok(());
        }
    }
}

/// Opens a non-blocking, close-on-exec Unix stream socket connected to `path`.
pub(crate) fn connect_unix(path: &Path, deadline: Instant) -> Result<OwnedFd> {
    // SAFETY: an all-zero sockaddr_un is valid; fields are set below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(Error::InvalidArgument(
            "socket path is empty or contains NUL".into(),
        ));
    }
    if bytes.len() >= addr.sun_path.len() {
        return Err(Error::InvalidArgument(format!(
            "socket path {} is {} bytes; a Unix socket path holds at most {}",
            path.display(),
            bytes.len(),
            addr.sun_path.len() - 1
        )));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let fd = super::platform::unix_stream_socket().map_err(|e| Error::io(e, "socket"))?;
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed it.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A listener with a full backlog: wait for it within the deadline.
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                wait_for(&fd, libc::POLLOUT, deadline)?;
                let mut err: libc::c_int = 0;
                let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: `err` and `l` are live and sized for SO_ERROR.
                unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut err as *mut _ as *mut _,
                        &mut l,
                    )
                };
                if err != 0 {
                    return Err(Error::io(io::Error::from_raw_os_error(err), "connect"));
                }
            }
            _ => return Err(Error::io(e, "connect")),
        }
    }
    // Our own stream socket, already close-on-exec: only the connect's
    // O_NONBLOCK goes (see `prepare_fd`). F_SETFL with 0 clears it and sets
    // nothing else a fresh socket could have had.
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
        return Err(os_err("fcntl"));
    }
    Ok(fd)
}

/// Makes a connected descriptor handed to us blocking and close-on-exec,
/// and checks that it is a stream socket. Blocking, because sends that find the socket full
/// wait in the kernel (bounded by SO_SNDTIMEO), and a leading reader's short
/// wait happens in the read itself (bounded by SO_RCVTIMEO); every other
/// read passes MSG_DONTWAIT.
pub(crate) fn prepare_fd(fd: &OwnedFd) -> Result<()> {
    let raw = fd.as_raw_fd();
    let mut ty: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `l` are live and sized for SO_TYPE.
    let r = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut _ as *mut _,
            &mut l,
        )
    };
    if r < 0 || ty != libc::SOCK_STREAM {
        return Err(Error::InvalidArgument(
            "descriptor is not a connected stream socket".into(),
        ));
    }
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(os_err("fcntl"));
        }
        let fdfl = libc::fcntl(raw, libc::F_GETFD);
        if fdfl < 0 || libc::fcntl(raw, libc::F_SETFD, fdfl | libc::FD_CLOEXEC) < 0 {
            return Err(os_err("fcntl"));
        }
    }
    Ok(())
}

/// Reads until `buf` holds at least `want` bytes. An end of stream before
/// the first byte is [`Error::RelayBusy`]: relays refuse a client by
/// accepting it and closing at once.
fn fill(fd: &OwnedFd, buf: &mut Vec<u8>, want: usize, deadline: Instant) -> Result<()> {
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        let n_want = (want - buf.len()).min(chunk.len());
        // SAFETY: `chunk` is a live buffer of at least `n_want` bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                n_want,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            buf.extend_from_slice(&chunk[..n as usize]);
        } else if n == 0 {
            if buf.is_empty() {
                return Err(Error::RelayBusy);
            }
            return Err(Error::Handshake(format!(
                "the relay closed the connection during the handshake: truncated after {} \
                 of at least {want} bytes",
                buf.len()
            )));
        } else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => wait_for(fd, libc::POLLIN, deadline)?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(Error::io(e, "reading the handshake")),
            }
        }
    }
    Ok(())
}

/// Reads the handshake, in either form (see the protocol notes, §1.3):
///
/// - legacy (0.3/0.4 relays): `[id_offset u32][ready frame]`;
/// - current (0.5+): `[id_start u32][id_end_exclusive u32][ready frame]`.
///
/// Both start with 8 bytes. In the legacy form the second word is the ready
/// frame's length, between 5 and 4 MiB, and the first is 0 or a multiple of
/// 268435455 (so not below that length); in the current form the second
/// word is at least 33554431. Reads exactly the handshake's bytes, so
/// whatever follows stays in the socket for the reader.
pub(crate) fn read_handshake(fd: &OwnedFd, deadline: Instant) -> Result<Handshake> {
    let mut buf = Vec::with_capacity(128);
    fill(fd, &mut buf, 8, deadline)?;
    let w0 = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
    let w1 = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    let legacy = (FRAME_HEADER_SIZE as u32..=MAX_FRAME_SIZE).contains(&w1) && (w0 == 0 || w0 >= w1);
    let (form, range, frame_start) = if legacy {
        (Form::Legacy, IdRange::legacy(w0)?, 4)
    } else {
        (Form::Current, IdRange::current(w0, w1)?, 8)
    };
    fill(fd, &mut buf, frame_start + FRAME_HEAD_SIZE, deadline)?;
    let header = FrameHeader::parse(&buf[frame_start..])
        .map_err(|e| Error::Handshake(format!("ready frame: {e}")))?
        .expect("header bytes are present");
    fill(fd, &mut buf, frame_start + header.frame_size(), deadline)?;
    if header.id != 0 || header.flags != 0 {
        return Err(Error::Handshake(format!(
            "the ready frame has id {} and flags {:#04x}; expected 0 and 0",
            header.id, header.flags
        )));
    }
    let body = bytes::Bytes::copy_from_slice(
        &buf[frame_start + FRAME_HEAD_SIZE..frame_start + header.frame_size()],
    );
    let ready = RawFrame {
        id: header.id,
        flags: header.flags,
        body,
    }
    .decode()
    .map_err(|e| Error::Handshake(format!("decoding the ready frame: {e}")))?;
    if ready.message_type != MessageType::Ready {
        return Err(Error::Protocol(ProtocolError::NotReady(
            ready.message_type.as_str().to_string(),
        )));
    }
    Ok(Handshake { form, range, ready })
}
