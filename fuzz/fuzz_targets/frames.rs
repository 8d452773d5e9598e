//! Bytes from a hostile relay, as the client sees them: the handshake's
//! 4-byte id_offset and frame header, then a stream of frames.
//!
//! Input layout: byte 0 picks the chunk size the stream is fed in (1..=256
//! bytes per read); the rest is the stream.
//!
//! Checked beyond "no panic, no unbounded allocation":
//! - feeding the stream in chunks yields exactly the frames (and the same
//!   error, at the same point) as feeding it whole: framing does not depend
//!   on how reads split the bytes;
//! - every frame whose body decodes re-encodes canonically (with its own
//!   `v`) to a frame that decodes to the same message; raw bulk records
//!   (flags exactly 0x08) keep their whole body as payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microsandbox_agent::protocol::{
    encode_frame, parse_handshake_offset, FrameDecoder, FrameHeader, Message, MessageType,
    ProtocolError, RawFrame, FLAG_BULK, MAX_FRAME_SIZE,
};

/// What a decoder produced: its frames as (id, flags, body), then how it stopped.
type Outcome = (Vec<(u32, u8, Vec<u8>)>, Option<ProtocolError>);

fn drain(d: &mut FrameDecoder, frames: &mut Vec<(u32, u8, Vec<u8>)>) -> Option<ProtocolError> {
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push((f.id, f.flags, f.body.to_vec())),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn whole(stream: &[u8]) -> Outcome {
    let mut d = FrameDecoder::new();
    d.extend(stream);
    let mut frames = Vec::new();
    let err = drain(&mut d, &mut frames);
    (frames, err)
}

fn chunked(stream: &[u8], chunk: usize) -> Outcome {
    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        d.extend(piece);
        if let Some(e) = drain(&mut d, &mut frames) {
            return (frames, Some(e));
        }
        // A partial frame is all that may stay buffered, and never more
        // than one maximal frame of it.
        assert!(d.buffered() <= 4 + MAX_FRAME_SIZE as usize);
    }
    (frames, None)
}

fn reencode(m: &Message) {
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        m.message_type.as_str(),
        m.id,
        m.flags,
        m.version,
        &m.payload,
    );
    let mut d = FrameDecoder::new();
    d.extend(&out);
    let raw = d
        .next_frame()
        .expect("canonical frame")
        .expect("whole frame");
    assert_eq!(d.buffered(), 0);
    let again = raw.decode().expect("canonical body decodes");
    assert_eq!(&again, m);
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };

    // The handshake: id_offset, then the header of the ready frame.
    assert_eq!(parse_handshake_offset(stream).is_some(), stream.len() >= 4);
    if stream.len() >= 4 {
        if let Ok(Some(h)) = FrameHeader::parse(&stream[4..]) {
            assert!(h.len >= 5 && h.len <= MAX_FRAME_SIZE);
            assert_eq!(h.frame_size(), 4 + h.len as usize);
        }
    }

    let expected = whole(stream);
    assert_eq!(chunked(stream, split as usize + 1), expected);

    for (id, flags, body) in expected.0 {
        let raw = RawFrame {
            id,
            flags,
            body: body.into(),
        };
        let bulk = flags == FLAG_BULK;
        let body_len = raw.body.len();
        match raw.decode() {
            Ok(m) if bulk => {
                assert_eq!(m.message_type, MessageType::BulkRecord);
                assert_eq!(m.payload.len(), body_len);
            }
            Ok(m) => {
                assert_eq!((m.id, m.flags), (id, flags));
                assert_ne!(m.message_type, MessageType::BulkRecord);
                reencode(&m);
            }
            Err(e) => assert!(!bulk, "a raw bulk record failed: {e}"),
        }
    }
});
