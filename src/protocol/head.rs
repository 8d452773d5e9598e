//! The few CBOR item heads that the hand-written fast paths write and read:
//! the `{v, t, p}` envelope of every frame and the `{data: bytes}` payload
//! of streaming frames. Everything else goes through serde and ciborium.
//!
//! The writer produces what ciborium produces (shortest heads, definite
//! lengths); the reader accepts only definite-length items whose bytes are
//! all present, and leaves any other shape to the general decoder.

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_MAP: u8 = 5;

fn write_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    write_head(out, MAJOR_UINT, n);
}

pub(crate) fn write_text(out: &mut Vec<u8>, s: &str) {
    write_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn write_bytes_head(out: &mut Vec<u8>, len: usize) {
    write_head(out, MAJOR_BYTES, len as u64);
}

pub(crate) fn write_map_head(out: &mut Vec<u8>, len: usize) {
    write_head(out, MAJOR_MAP, len as u64);
}

/// Bytes taken by the head of a byte or text string of `len` bytes.
pub(crate) fn head_len(len: usize) -> usize {
    match len as u64 {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A cursor over canonical CBOR: every read either consumes a whole item of
/// the expected shape or answers `None` (the caller then gives up).
pub(crate) struct CanonicalReader<'a> {
    buf: &'a [u8],
}

impl<'a> CanonicalReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        CanonicalReader { buf }
    }

    /// Consumes `literal` if the input starts with it.
    pub(crate) fn eat(&mut self, literal: &[u8]) -> bool {
        match self.buf.strip_prefix(literal) {
            Some(rest) => {
                self.buf = rest;
                true
            }
            None => false,
        }
    }

    /// The argument of a head of major type `major` with a definite value.
    fn head(&mut self, major: u8) -> Option<u64> {
        let (&first, rest) = self.buf.split_first()?;
        if first >> 5 != major {
            return None;
        }
        let (n, rest) = match first & 0x1f {
            n @ 0..=23 => (n as u64, rest),
            24 => (*rest.first()? as u64, &rest[1..]),
            25 => (
                u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as u64,
                &rest[2..],
            ),
            26 => (
                u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as u64,
                &rest[4..],
            ),
            27 => (
                u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                &rest[8..],
            ),
            _ => return None,
        };
        self.buf = rest;
        Some(n)
    }

    pub(crate) fn read_u64(&mut self) -> Option<u64> {
        self.head(MAJOR_UINT)
    }

    fn read_definite(&mut self, major: u8) -> Option<&'a [u8]> {
        let before = self.buf;
        let len = self.head(major)?;
        match usize::try_from(len)
            .ok()
            .and_then(|len| self.buf.get(..len))
        {
            Some(s) => {
                self.buf = &self.buf[s.len()..];
                Some(s)
            }
            None => {
                self.buf = before;
                None
            }
        }
    }

    pub(crate) fn read_definite_bytes(&mut self) -> Option<&'a [u8]> {
        self.read_definite(MAJOR_BYTES)
    }

    pub(crate) fn read_definite_text(&mut self) -> Option<&'a str> {
        super::str_from_utf8(self.read_definite(MAJOR_TEXT)?).ok()
    }
}
