//! Entry points for tests and fuzz targets that must drive the real reader
//! (not a model of it). Built only with the `test-hooks` feature; not part
//! of the library's API.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::error::{CloseCause, Error};
use super::ids::{IdAllocator, IdRange};
use super::peer::{Form, Peer};
use super::reader::{Backpressure, Pulled};
use super::Counters;
use crate::protocol::payload::ExecLimits;
use crate::protocol::Message;

/// Ids the driven reader subscribes to (the first of slot 1's range).
pub const SUBSCRIBED_IDS: std::ops::RangeInclusive<u32> =
    crate::protocol::LEGACY_ID_RANGE_STEP + 1..=crate::protocol::LEGACY_ID_RANGE_STEP + 8;

/// What the reader made of a byte stream.
#[derive(Debug)]
pub struct ReaderRun {
    /// Messages delivered to the ids of [`SUBSCRIBED_IDS`], per id in order.
    pub delivered: Vec<Vec<Message>>,
    /// How the connection ended.
    pub close: CloseCause,
    pub counters: Counters,
}

/// Feeds `stream` to a real connection's reader through a socket, cut at
/// `splits` (offsets into the stream; each piece is read by the reader
/// before the next is written), then closes the peer's end, and pulls every
/// subscribed id dry.
pub fn drive_reader(stream: &[u8], splits: &[usize]) -> ReaderRun {
    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    let conn = test_conn(
        OwnedFd::from(ours),
        super::DEFAULT_MEMORY_BUDGET,
        Backpressure::FailStream,
        None,
    );
    let subs: Vec<_> = SUBSCRIBED_IDS
        .map(|id| conn.subscribe(id).expect("subscribe"))
        .collect();
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s.min(stream.len())).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut from = 0;
    for cut in cuts {
        if cut <= from {
            continue;
        }
        if peer.write_all(&stream[from..cut]).is_err() {
            break; // the reader failed the connection and shut it down
        }
        from = cut;
        wait_until_read(&conn);
    }
    let _ = peer.shutdown(std::net::Shutdown::Write);
    let mut delivered = Vec::new();
    let mut close = None;
    for sub in &subs {
        let mut got = Vec::new();
        loop {
            match sub.recv_timeout(Some(Duration::from_secs(10))) {
                Ok(Pulled::Item(m)) => got.push(m),
                Ok(Pulled::Ended) => break,
                Ok(Pulled::Nothing) => panic!("the reader never closed"),
                Err(Error::Closed(c)) => {
                    close.get_or_insert(c);
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        delivered.push(got);
    }
    let counters = conn.counters();
    drop(subs);
    conn.fail(CloseCause::ClosedByCaller);
    conn.join_background();
    let close = close.or_else(|| conn.close_cause()).expect("closed");
    ReaderRun {
        delivered,
        close,
        counters,
    }
}

/// A connection on `fd` without a handshake, as a peer of slot 1 would
/// give it: a legacy range (ids from 268435456) without `exec_limits`, or
/// with them a current relay of generation 10 with exec flow control on.
pub(crate) fn test_conn(
    fd: OwnedFd,
    budget: usize,
    backpressure: Backpressure,
    exec_limits: Option<ExecLimits>,
) -> Arc<Conn> {
    let step = crate::protocol::LEGACY_ID_RANGE_STEP;
    let (form, generation, range) = match exec_limits {
        None => (Form::Legacy, 1, IdRange::legacy(step).expect("range")),
        Some(_) => (
            Form::Current,
            10,
            IdRange::current(step + 1, 2 * step).expect("range"),
        ),
    };
    let peer = Arc::new(Peer::new(form, generation, "", exec_limits, range));
    if exec_limits.is_some() {
        assert!(peer.enable_flow_control());
    }
    let limits = exec_limits.filter(|_| peer.flow_control());
    let conn = Conn::new(
        fd,
        IdAllocator::new(range, form),
        peer,
        budget,
        backpressure,
        limits,
    )
    .expect("connection");
    // As after a client's first send: the peer here writes unasked.
    conn.ensure_background().expect("reader thread");
    conn
}

/// Waits (up to a second) until the socket holds nothing unread, so that
/// the next write is a separate read for the reader.
fn wait_until_read(conn: &Conn) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && conn.close_cause().is_none() {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the live `unread`.
        let r = unsafe { libc::ioctl(conn.raw_fd(), libc::FIONREAD as _, &mut unread) };
        if r < 0 || unread == 0 {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Makes the connection's reader panic on its next read.
pub fn inject_reader_panic(client: &super::Client) {
    client.inner.conn.inject_reader_panic();
}
