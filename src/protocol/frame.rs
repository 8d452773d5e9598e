//! Frame codec: `[len u32 BE][id u32 BE][flags u8][CBOR {v, t, p}]`.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use super::head::{self, CanonicalReader};
use super::payload::{cbor_error_detail, WireBytes};
use super::{
    Message, MessageType, ProtocolError, FLAG_BULK, FRAME_HEADER_SIZE, FRAME_HEAD_SIZE,
    LEN_PREFIX_SIZE, MAX_FRAME_SIZE,
};

/// The fixed part of a frame, readable from its first 9 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// `len`: everything after the length prefix.
    pub len: u32,
    pub id: u32,
    pub flags: u8,
}

impl FrameHeader {
    /// Parses the 9-byte header, or returns `Ok(None)` if fewer bytes are
    /// present. The length is validated as soon as its 4 bytes are there, so
    /// an oversize announcement is refused before we wait for its body.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        if buf.len() < LEN_PREFIX_SIZE {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap());
        if len < FRAME_HEADER_SIZE as u32 {
            return Err(ProtocolError::FrameTooShort(len));
        }
        if len > MAX_FRAME_SIZE {
            return Err(ProtocolError::FrameTooLarge(len));
        }
        if buf.len() < FRAME_HEAD_SIZE {
            return Ok(None);
        }
        Ok(Some(FrameHeader {
            len,
            id: u32::from_be_bytes(buf[4..8].try_into().unwrap()),
            flags: buf[8],
        }))
    }

    /// Bytes of the whole frame, length prefix included.
    pub fn frame_size(&self) -> usize {
        LEN_PREFIX_SIZE + self.len as usize
    }

    pub fn body_len(&self) -> usize {
        self.len as usize - FRAME_HEADER_SIZE
    }
}

/// A frame whose header is parsed but whose body is not yet decoded.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub id: u32,
    pub flags: u8,
    pub body: Bytes,
}

impl RawFrame {
    /// Decodes the CBOR body `{v, t, p}` into a message. `p` stays a
    /// zero-copy slice of `body` whenever the body has the canonical shape
    /// every encoder writes (other shapes go through serde, which copies). A
    /// raw bulk record (flags exactly [`FLAG_BULK`]) is not CBOR: it becomes
    /// a [`MessageType::BulkRecord`] message whose payload is the whole body,
    /// so that a client can count and drop it instead of failing the stream.
    pub fn decode(self) -> Result<Message, ProtocolError> {
        if self.flags == FLAG_BULK {
            return Ok(bulk_record(self.id, self.body));
        }
        let (message_type, version, payload) = decode_body(&self.body)?;
        let payload = match payload {
            Cow::Borrowed(s) => self.body.slice_ref(s),
            Cow::Owned(v) => Bytes::from(v),
        };
        Ok(Message {
            id: self.id,
            flags: self.flags,
            version,
            message_type,
            payload,
        })
    }
}

fn bulk_record(id: u32, body: Bytes) -> Message {
    Message {
        id,
        flags: FLAG_BULK,
        version: 0,
        message_type: MessageType::BulkRecord,
        payload: body,
    }
}

/// Decodes a frame whose body is borrowed (from a read buffer that is about
/// to be reused): only the payload is copied out, into a buffer of its own.
pub fn decode_borrowed(header: &FrameHeader, body: &[u8]) -> Result<Message, ProtocolError> {
    if header.flags == FLAG_BULK {
        return Ok(bulk_record(header.id, Bytes::copy_from_slice(body)));
    }
    let (message_type, version, payload) = decode_body(body)?;
    Ok(Message {
        id: header.id,
        flags: header.flags,
        version,
        message_type,
        payload: match payload {
            Cow::Borrowed(s) => Bytes::copy_from_slice(s),
            Cow::Owned(v) => Bytes::from(v),
        },
    })
}

/// What a frame body carries: its type, its `v`, and its payload bytes.
type Body<'a> = (MessageType, u8, Cow<'a, [u8]>);

/// Decodes the CBOR body `{v, t, p}`.
fn decode_body(body: &[u8]) -> Result<Body<'_>, ProtocolError> {
    match decode_canonical_body(body) {
        Some((message_type, version, payload)) => {
            Ok((message_type, version, Cow::Borrowed(payload)))
        }
        None => decode_any_body(body),
    }
}

/// `v` as the `u8` a message keeps.
fn saturate_version(v: u64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// The body exactly as encoders write it, `{"v": uint, "t": text, "p":
/// bytes}` in that order with definite lengths, decoded straight through:
/// the general decoder's bookkeeping cost more than the rest of a round
/// trip's decoding. `None` for any other shape, which `decode_any_body`
/// then decodes or refuses; where both apply, they agree (tested below).
fn decode_canonical_body(body: &[u8]) -> Option<(MessageType, u8, &[u8])> {
    const MAP_OF_3: u8 = 0xa3;
    const TEXT_OF_1: u8 = 0x61;
    let mut r = CanonicalReader::new(body);
    if !r.eat(&[MAP_OF_3, TEXT_OF_1, b'v']) {
        return None;
    }
    let version = saturate_version(r.read_u64()?);
    if !r.eat(&[TEXT_OF_1, b't']) {
        return None;
    }
    let name = r.read_definite_text()?;
    if !r.eat(&[TEXT_OF_1, b'p']) {
        return None;
    }
    let payload = r.read_definite_bytes()?;
    Some((MessageType::from_wire(name), version, payload))
}

/// The envelope as the general decoder sees it: `v` is read apart (see
/// `EnvelopeVersion`), so that no value of it can fail the frame.
#[derive(Deserialize)]
struct Envelope {
    t: String,
    p: WireBytes,
}

/// `v` read as upstream reads its `u8` (tags skipped, big-number tags
/// allowed), but wider, so that a larger value saturates.
#[derive(Deserialize)]
struct EnvelopeVersion {
    v: u128,
}

/// Decodes a body of any shape serde accepts for the envelope, as tolerant
/// as earlier releases of this library: `v` may be absent or of any type
/// (it then counts as 0), unknown keys and trailing bytes are ignored, and
/// `p` may be an array of integers (where the payload is not borrowed from
/// `body`).
fn decode_any_body(body: &[u8]) -> Result<Body<'_>, ProtocolError> {
    let envelope: Envelope = ciborium::de::from_reader(body)
        .map_err(|e| ProtocolError::BadBody(cbor_error_detail(&e)))?;
    let version = ciborium::de::from_reader::<EnvelopeVersion, _>(body)
        .map_or(0, |v| u8::try_from(v.v).unwrap_or(u8::MAX));
    Ok((
        MessageType::from_wire(&envelope.t),
        version,
        Cow::Owned(envelope.p.0),
    ))
}

/// Appends one encoded frame, stamped with generation `version`.
///
/// Panics only if the frame would exceed `u32` length; callers bound payloads
/// by [`MAX_FRAME_SIZE`] first (see [`encoded_len`]).
pub fn encode_frame(
    out: &mut Vec<u8>,
    message_type: &str,
    id: u32,
    flags: u8,
    version: u8,
    payload: &[u8],
) {
    encode_frame_head(out, message_type, id, flags, version, payload.len());
    out.extend_from_slice(payload);
}

/// Like [`encode_frame`], but the payload (exactly `payload_len` bytes) is
/// written by `write_payload` straight into `out`, so typed payloads are
/// encoded without an intermediate buffer.
pub fn encode_frame_with(
    out: &mut Vec<u8>,
    message_type: &str,
    id: u32,
    flags: u8,
    version: u8,
    payload_len: usize,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    encode_frame_head(out, message_type, id, flags, version, payload_len);
    let before = out.len();
    write_payload(out);
    assert_eq!(out.len() - before, payload_len, "payload length mismatch");
}

/// Appends everything of a frame up to its payload bytes; the caller sends
/// exactly `payload_len` payload bytes after it (possibly from another
/// buffer, with vectored I/O, so large payloads are never copied).
pub fn encode_frame_head(
    out: &mut Vec<u8>,
    message_type: &str,
    id: u32,
    flags: u8,
    version: u8,
    payload_len: usize,
) {
    let len =
        u32::try_from(encoded_len(message_type, version, payload_len)).expect("frame over 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(flags);
    head::write_map_head(out, 3);
    head::write_text(out, "v");
    head::write_u64(out, version.into());
    head::write_text(out, "t");
    head::write_text(out, message_type);
    head::write_text(out, "p");
    head::write_bytes_head(out, payload_len);
}

/// `len` of the frame `encode_frame` would produce, to check the size limit
/// before encoding anything.
pub fn encoded_len(message_type: &str, version: u8, payload_len: usize) -> usize {
    // id + flags + map head + "v" <version> + "t" <type> + "p" <payload>
    let version_len = if version < 24 { 1 } else { 2 };
    FRAME_HEADER_SIZE
        + 1
        + 2
        + version_len
        + 2
        + head::head_len(message_type.len())
        + message_type.len()
        + 2
        + head::head_len(payload_len)
        + payload_len
}

/// Reads the 4-byte `id_offset` that opens the handshake.
pub fn parse_handshake_offset(buf: &[u8]) -> Option<u32> {
    buf.get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
}

/// Incremental frame splitter: feed it bytes as they arrive and take whole
/// frames out. A partial frame waits for more input.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// reason the stream is malformed (after which it cannot be resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, ProtocolError> {
        let Some(h) = FrameHeader::parse(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < h.frame_size() {
            self.buf.reserve(h.frame_size() - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEAD_SIZE);
        let body = self.buf.split_to(h.body_len()).freeze();
        Ok(Some(RawFrame {
            id: h.id,
            flags: h.flags,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_are_distinct() {
        assert_eq!(
            FrameHeader::parse(&[0, 0, 0, 4]),
            Err(ProtocolError::FrameTooShort(4))
        );
        assert_eq!(
            FrameHeader::parse(&[0, 0x40, 0, 1]),
            Err(ProtocolError::FrameTooLarge(MAX_FRAME_SIZE + 1))
        );
        assert_eq!(FrameHeader::parse(&[0, 0, 0, 5, 0, 0]), Ok(None));
        let mut d = FrameDecoder::new();
        d.extend(&[0, 0, 0, 6, 0, 0, 0, 1, 0, 0xff]);
        assert!(matches!(
            d.next_frame().unwrap().unwrap().decode(),
            Err(ProtocolError::BadBody(_))
        ));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut out = Vec::new();
        encode_frame(&mut out, "core.exec.stdout", 7, 0, 1, b"\xa1\x64data\x41x");
        let mut d = FrameDecoder::new();
        for b in &out[..out.len() - 1] {
            d.extend(std::slice::from_ref(b));
            assert!(d.next_frame().unwrap().is_none());
        }
        d.extend(&out[out.len() - 1..]);
        let m = d.next_frame().unwrap().unwrap().decode().unwrap();
        assert_eq!(m.id, 7);
        assert_eq!(m.message_type, MessageType::ExecStdout);
        assert_eq!(encoded_len("core.exec.stdout", 1, 8), out.len() - 4);
    }

    /// Bodies near the canonical shape: every truncation and every one-byte
    /// change of canonical bodies, plus the tolerated variants.
    fn bodies_near_canonical() -> Vec<Vec<u8>> {
        let mut canonical = Vec::new();
        for (name, payload_len) in [
            ("core.fs.response", 0),
            ("core.exec.stdout", 23),
            ("core.exec.stderr", 24),
            ("core.future.thing.with.a.long.name", 300),
            ("core.fs.data", 70_000),
        ] {
            let mut frame = Vec::new();
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
            encode_frame(&mut frame, name, 1, 0, 1, &payload);
            canonical.push(frame[FRAME_HEAD_SIZE..].to_vec());
        }
        let mut bodies = Vec::new();
        for body in &canonical {
            for len in 0..body.len().min(80) {
                bodies.push(body[..len].to_vec());
            }
            for i in 0..body.len().min(40) {
                for b in [0x00, 0x18, 0x1f, 0x41, 0x5f, 0x61, 0x7f, 0x80, 0xc0, 0xff] {
                    let mut changed = body.clone();
                    changed[i] = b;
                    bodies.push(changed);
                }
            }
            let mut trailing = body.clone();
            trailing.extend_from_slice(b"\xff\x00");
            bodies.push(trailing);
            bodies.push(body.clone());
        }
        // `v` above 255, negative, absent or a map; byte-string keys;
        // indefinite map and text.
        bodies.push(b"\xa3\x61v\x19\x01\x2c\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa3\x61v\x20\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa2\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa3\x61v\xa1\x61a\x01\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa3\x41v\x01\x41t\x61x\x41p\x40".to_vec());
        bodies.push(b"\xbf\x61v\x01\x61t\x7f\x61x\xff\x61p\x40\xff".to_vec());
        // `v` wider than needed or tagged; `t` not UTF-8; keys reordered.
        bodies.push(b"\xa3\x61v\x18\x01\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa3\x61v\xc0\x01\x61t\x61x\x61p\x40".to_vec());
        bodies.push(b"\xa3\x61v\x01\x61t\x61\xff\x61p\x40".to_vec());
        bodies.push(b"\xa3\x61p\x41z\x61v\x01\x61t\x61x".to_vec());
        bodies
    }

    #[test]
    fn the_canonical_shortcut_agrees_with_the_general_decoder() {
        let mut shortcut_taken = 0;
        for body in bodies_near_canonical() {
            let general = decode_any_body(&body);
            if let Some((message_type, version, payload)) = decode_canonical_body(&body) {
                shortcut_taken += 1;
                assert_eq!(
                    general,
                    Ok((message_type, version, Cow::Borrowed(payload))),
                    "body {body:02x?}"
                );
            }
            assert_eq!(decode_body(&body), general, "body {body:02x?}");
        }
        assert!(
            shortcut_taken > 50,
            "only {shortcut_taken} bodies took the shortcut"
        );
    }

    #[test]
    fn the_envelope_keeps_v_saturated() {
        for (v, kept) in [(0u8, 0u8), (1, 1), (10, 10), (23, 23), (24, 24), (255, 255)] {
            let mut out = Vec::new();
            encode_frame(&mut out, "core.ping", 5, 0, v, b"\xa0");
            assert_eq!(encoded_len("core.ping", v, 1), out.len() - 4);
            let m = RawFrame {
                id: 5,
                flags: 0,
                body: Bytes::copy_from_slice(&out[FRAME_HEAD_SIZE..]),
            };
            assert_eq!(m.decode().unwrap().version, kept);
        }
        let body = b"\xa3\x61v\x19\x01\x2c\x61t\x61x\x61p\x40";
        assert_eq!(decode_body(body).unwrap().1, 255);
        // Tags are skipped and big numbers read, as upstream reads its `u8`.
        let tagged = b"\xa3\x61v\xc0\xc0\x0a\x61t\x61x\x61p\x40";
        assert_eq!(decode_body(tagged).unwrap().1, 10);
        let big = b"\xa3\x61v\xc2\x41\x0a\x61t\x61x\x61p\x40";
        assert_eq!(decode_body(big).unwrap().1, 10);
        let text = b"\xa3\x61v\x61\x31\x61t\x61x\x61p\x40";
        assert_eq!(decode_body(text).unwrap().1, 0);
    }

    #[test]
    fn raw_bulk_bodies_are_not_cbor_but_are_recognised() {
        let body = Bytes::from_static(b"\x01\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00hello");
        let header = FrameHeader {
            len: body.len() as u32 + 5,
            id: 30,
            flags: FLAG_BULK,
        };
        let borrowed = decode_borrowed(&header, &body).unwrap();
        let owned = RawFrame {
            id: 30,
            flags: FLAG_BULK,
            body: body.clone(),
        }
        .decode()
        .unwrap();
        assert_eq!(borrowed, owned);
        assert_eq!(owned.message_type, MessageType::BulkRecord);
        assert_eq!(owned.payload, body);
        // Bit 3 with others set is not a bulk record: the body must be CBOR.
        let other = RawFrame {
            id: 30,
            flags: FLAG_BULK | 1,
            body,
        };
        assert!(matches!(other.decode(), Err(ProtocolError::BadBody(_))));
    }

    #[test]
    fn unknown_types_are_kept() {
        let mut out = Vec::new();
        encode_frame(&mut out, "core.future.thing", 3, 0x40, 1, b"");
        let mut d = FrameDecoder::new();
        d.extend(&out);
        let m = d.next_frame().unwrap().unwrap().decode().unwrap();
        assert_eq!(
            m.message_type,
            MessageType::Unknown("core.future.thing".into())
        );
        assert_eq!(m.flags, 0x40);
    }
}
