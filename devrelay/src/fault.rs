//! Deliberate misbehaviour for the client library's hostile-guest tests.
//!
//! Faults in the handshake or right after it are written straight to the
//! socket by [`run_connection_fault`]; faults in the answer to a request are
//! applied by the request handlers in `conn.rs` through [`Fault::on_request`]
//! and friends.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use microsandbox_agent::protocol::payload::{ExecStarted, FsResponse};
use microsandbox_agent::protocol::{MessageType, MAX_FRAME_SIZE};

use crate::outbox::{data_frame, raw_frame, typed_frame, Closed, Outbox};
use crate::profile::IdRange;
use crate::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    OversizeFrame,
    TruncatedFrame,
    ShortFrame,
    BadCbor,
    BadBodyShape,
    UnknownType,
    OutOfRangeId,
    WrongPayload,
    NoHandshake,
    StallAfterId,
    NotReadyFirst,
    CloseInHandshake,
    CloseMidExec,
    Flood,
    StopReading,
}

const TABLE: [(Fault, &str); 15] = [
    (Fault::OversizeFrame, "oversize-frame"),
    (Fault::TruncatedFrame, "truncated-frame"),
    (Fault::ShortFrame, "short-frame"),
    (Fault::BadCbor, "bad-cbor"),
    (Fault::BadBodyShape, "bad-body-shape"),
    (Fault::UnknownType, "unknown-type"),
    (Fault::OutOfRangeId, "out-of-range-id"),
    (Fault::WrongPayload, "wrong-payload"),
    (Fault::NoHandshake, "no-handshake"),
    (Fault::StallAfterId, "stall-after-id"),
    (Fault::NotReadyFirst, "not-ready-first"),
    (Fault::CloseInHandshake, "close-in-handshake"),
    (Fault::CloseMidExec, "close-mid-exec"),
    (Fault::Flood, "flood"),
    (Fault::StopReading, "stop-reading"),
];

/// Payload size of each `flood` frame.
pub const FLOOD_CHUNK: usize = 64 * 1024;
/// What the bad-frame faults carry after their header.
pub const OVERSIZE_TAIL: usize = 16;
pub const BOGUS_TYPE: &str = "core.bogus.type";

/// How the connection continues after [`run_connection_fault`].
pub enum AfterFault {
    /// Serve requests normally (the fault, if any, acts on requests).
    Serve,
    /// The connection was closed on purpose.
    Closed,
    /// Keep the connection open and read-and-discard until the client leaves.
    Drain,
    /// Keep the connection open and never read again; wait for the client to
    /// hang up.
    StopReading,
}

impl Fault {
    pub const NAMES: [&'static str; 15] = {
        let mut names = [""; 15];
        let mut i = 0;
        while i < TABLE.len() {
            names[i] = TABLE[i].1;
            i += 1;
        }
        names
    };

    pub fn from_name(name: &str) -> Option<Fault> {
        TABLE.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    pub fn name(self) -> &'static str {
        TABLE.iter().find(|(f, _)| *f == self).unwrap().1
    }
}

/// A connection's handshake in the profile's form.
pub struct Handshake {
    /// `[id_offset]` (legacy) or `[id_start][id_end_exclusive]` (current).
    pub prologue: Vec<u8>,
    /// The `core.ready` frame.
    pub ready: Vec<u8>,
    pub range: IdRange,
    /// The generation stamped on frames.
    pub v: u8,
}

/// Writes the handshake (or the faulty version of it) and any fault that
/// follows it directly.
pub async fn run_connection_fault(
    stream: &mut UnixStream,
    fault: Option<Fault>,
    shake: &Handshake,
) -> std::io::Result<AfterFault> {
    let id_only = shake.prologue.as_slice();
    let handshake = &[shake.prologue.as_slice(), shake.ready.as_slice()].concat();
    let stamped = |mut frame: Vec<u8>| {
        wire::stamp(&mut frame, shake.v);
        frame
    };
    let after = match fault {
        None
        | Some(Fault::UnknownType)
        | Some(Fault::OutOfRangeId)
        | Some(Fault::WrongPayload)
        | Some(Fault::CloseMidExec)
        | Some(Fault::Flood) => {
            stream.write_all(handshake).await?;
            AfterFault::Serve
        }
        Some(Fault::StopReading) => {
            stream.write_all(handshake).await?;
            AfterFault::StopReading
        }
        Some(Fault::NoHandshake) => AfterFault::Drain,
        Some(Fault::StallAfterId) => {
            stream.write_all(id_only).await?;
            AfterFault::Drain
        }
        Some(Fault::NotReadyFirst) => {
            let mut out = id_only.to_vec();
            out.extend(stamped(data_frame(
                MessageType::ExecStdout,
                0,
                b"not ready",
            )));
            stream.write_all(&out).await?;
            AfterFault::Drain
        }
        Some(Fault::CloseInHandshake) => {
            let ready_frame_len = shake.ready.len();
            stream
                .write_all(&handshake[..id_only.len() + ready_frame_len / 2])
                .await?;
            AfterFault::Closed
        }
        Some(Fault::OversizeFrame) => {
            let mut out = handshake.to_vec();
            out.extend_from_slice(&(MAX_FRAME_SIZE + 1).to_be_bytes());
            out.extend_from_slice(&[0u8; OVERSIZE_TAIL]);
            stream.write_all(&out).await?;
            AfterFault::Drain
        }
        Some(Fault::TruncatedFrame) => {
            let frame = stamped(data_frame(
                MessageType::ExecStdout,
                shake.range.start,
                b"this frame is cut in half",
            ));
            let mut out = handshake.to_vec();
            out.extend_from_slice(&frame[..frame.len() / 2]);
            stream.write_all(&out).await?;
            AfterFault::Closed
        }
        Some(Fault::ShortFrame) => {
            let mut out = handshake.to_vec();
            out.extend_from_slice(&3u32.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0]);
            stream.write_all(&out).await?;
            AfterFault::Drain
        }
        Some(Fault::BadCbor) => {
            let mut out = handshake.to_vec();
            out.extend_from_slice(&bad_body_frame(&[0xff, 0xff, 0xff]));
            stream.write_all(&out).await?;
            AfterFault::Drain
        }
        Some(Fault::BadBodyShape) => {
            // A CBOR array ["v", 1] instead of the {v, t, p} map.
            let mut out = handshake.to_vec();
            out.extend_from_slice(&bad_body_frame(&[0x82, 0x61, b'v', 0x01]));
            stream.write_all(&out).await?;
            AfterFault::Drain
        }
    };
    stream.flush().await?;
    Ok(after)
}

/// `[len][id 0][flags 0][body]` with an arbitrary body.
pub fn bad_body_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.extend_from_slice(&(5 + body.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Reads and discards until the client hangs up.
pub async fn drain(stream: &mut UnixStream) {
    let mut sink = vec![0u8; 64 * 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Waits for the client to hang up without reading anything it sent.
pub async fn wait_for_hangup_without_reading(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: crate::platform::PEER_HANGUP_EVENTS,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and
        // the fd is owned by `stream`, which outlives it; timeout 0 never
        // blocks the runtime thread.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ready < 0
            || pfd.revents
                & (crate::platform::PEER_HANGUP_EVENTS
                    | libc::POLLHUP
                    | libc::POLLERR
                    | libc::POLLNVAL)
                != 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Id just past the client's range, used by `out-of-range-id`.
pub fn out_of_range_id(range: IdRange) -> u32 {
    range.end_exclusive.wrapping_add(1)
}

/// Sent before serving a request under `unknown-type` / `out-of-range-id`.
pub async fn before_request(
    fault: Option<Fault>,
    outbox: &Outbox,
    range: IdRange,
    request_id: u32,
    is_exec: bool,
) -> Result<(), Closed> {
    match fault {
        Some(Fault::UnknownType) => outbox.send(raw_frame(BOGUS_TYPE, request_id, 0, &[])).await,
        Some(Fault::OutOfRangeId) => {
            for id in [out_of_range_id(range), 0] {
                let frame = if is_exec {
                    data_frame(MessageType::ExecStdout, id, b"out of range")
                } else {
                    typed_frame(MessageType::FsResponse, id, &FsResponse::ok())
                };
                outbox.send(frame).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Answers an exec request in place of running it, for the faults that do
/// so. Returns false when the request should be served normally.
pub async fn answer_exec(fault: Option<Fault>, outbox: &Outbox, id: u32) -> bool {
    let started = typed_frame(MessageType::ExecStarted, id, &ExecStarted { pid: 0 });
    match fault {
        Some(Fault::WrongPayload) => {
            let _ = outbox.send(started).await;
            let empty_map = [0xa0];
            let t = MessageType::ExecStdout;
            let _ = outbox
                .send(raw_frame(t.as_str(), id, t.flags(), &empty_map))
                .await;
            true
        }
        Some(Fault::CloseMidExec) => {
            let _ = outbox.send(started).await;
            let _ = outbox
                .send(data_frame(MessageType::ExecStdout, id, b"partial output\n"))
                .await;
            outbox.close();
            true
        }
        Some(Fault::Flood) => {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                if outbox.send(started).await.is_err() {
                    return;
                }
                // Each chunk starts with its sequence number (u64 big-endian)
                // so a client can prove that nothing was lost or reordered.
                let mut chunk = vec![b'f'; FLOOD_CHUNK];
                for seq in 0u64.. {
                    chunk[..8].copy_from_slice(&seq.to_be_bytes());
                    let frame = data_frame(MessageType::ExecStdout, id, &chunk);
                    if outbox.send(frame).await.is_err() {
                        break;
                    }
                }
            });
            true
        }
        _ => false,
    }
}

/// Answers an fs request in place of serving it, for `wrong-payload`.
pub async fn answer_fs(fault: Option<Fault>, outbox: &Outbox, id: u32) -> bool {
    if fault != Some(Fault::WrongPayload) {
        return false;
    }
    // {"ok": "yes"}
    let payload = [0xa1, 0x62, b'o', b'k', 0x63, b'y', b'e', b's'];
    let t = MessageType::FsResponse;
    let _ = outbox
        .send(raw_frame(t.as_str(), id, t.flags(), &payload))
        .await;
    true
}
