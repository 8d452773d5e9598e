//! The client's real reader (socket reads, frame splitting, the large-frame
//! path that completes big frames in buffers of their own, routing) over an
//! arbitrary byte stream split at arbitrary points.
//!
//! Input layout: byte 0 is the number of split points n (mod 16); then n
//! little-endian u16 offsets; the rest is the stream. Offsets are scaled so
//! that splits land anywhere in streams longer than 64 KiB too.
//!
//! Checked beyond "no panic, no hang":
//! - the reader delivers, per subscribed id, exactly the frames a
//!   `FrameDecoder` fed the whole stream decodes (up to the first error),
//!   whatever the split points: framing does not depend on reads;
//! - a stream that ends on a frame boundary closes as EOF; one that ends
//!   inside a frame, or holds a bad frame, is a protocol error;
//! - when everything has been pulled, no memory is charged any more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microsandbox_agent::client::testing::{drive_reader, SUBSCRIBED_IDS};
use microsandbox_agent::client::CloseCause;
use microsandbox_agent::protocol::{FrameDecoder, Message};

/// What a whole-stream decode says: the messages per subscribed id (a
/// terminal frame ends its id's stream), and whether it ended cleanly.
fn expected(stream: &[u8]) -> (Vec<Vec<Message>>, bool) {
    let mut per_id = vec![Vec::new(); SUBSCRIBED_IDS.count()];
    let mut ended = vec![false; per_id.len()];
    let mut d = FrameDecoder::new();
    d.extend(stream);
    loop {
        let raw = match d.next_frame() {
            Ok(Some(raw)) => raw,
            Ok(None) => return (per_id, d.buffered() == 0),
            Err(_) => return (per_id, false),
        };
        let m = match raw.decode() {
            Ok(m) => m,
            Err(_) => return (per_id, false),
        };
        if SUBSCRIBED_IDS.contains(&m.id) {
            let i = (m.id - SUBSCRIBED_IDS.start()) as usize;
            if !ended[i] {
                ended[i] = m.is_terminal();
                per_id[i].push(m);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 16) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (offsets, stream) = rest.split_at(2 * n);
    let scale = (stream.len() / 65536).max(1);
    let splits: Vec<usize> = offsets
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize * scale)
        .collect();

    let run = drive_reader(stream, &splits);
    let (want, clean) = expected(stream);
    assert_eq!(run.delivered, want, "delivered frames differ");
    match &run.close {
        CloseCause::Eof => assert!(clean, "EOF reported for a broken stream"),
        CloseCause::Protocol(_) => assert!(!clean, "protocol error on a clean stream"),
        other => panic!("unexpected close: {other}"),
    }
    assert_eq!(run.counters.bytes_queued, 0);
});
