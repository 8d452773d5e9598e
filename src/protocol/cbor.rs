//! The small subset of CBOR (RFC 8949) the relay protocol uses.
//!
//! The encoder is canonical in the way the upstream serde encoder is: shortest
//! integer heads, definite lengths, map keys in the order the caller writes
//! them. The decoder is deliberately more tolerant (indefinite lengths, tags,
//! floats and unknown keys are accepted or skipped) because the upstream decoder
//! is, and a newer agent must not break us. Every length read from the input is
//! checked against the bytes actually present before anything is allocated, and
//! nesting is capped, so hostile input costs at most linear time and no stack.

use std::borrow::Cow;

/// Deepest nesting of arrays, maps and tags the decoder follows.
pub const MAX_DEPTH: usize = 32;

/// What went wrong while decoding CBOR, with the byte offset where it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError {
    pub offset: usize,
    pub what: &'static str,
}

impl std::fmt::Display for CborError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

pub type Result<T> = std::result::Result<T, CborError>;

const MAJOR_UINT: u8 = 0;
const MAJOR_NINT: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;

const SIMPLE_FALSE: u8 = 20;
const SIMPLE_TRUE: u8 = 21;
const SIMPLE_NULL: u8 = 22;
const SIMPLE_UNDEFINED: u8 = 23;
const BREAK: u8 = 0xff;

// ---------------------------------------------------------------- encoding

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

pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    write_head(out, MAJOR_UINT, n);
}

pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n >= 0 {
        write_head(out, MAJOR_UINT, n as u64);
    } else {
        // CBOR stores -1 - n for negatives; `!n` is exactly that for two's complement.
        write_head(out, MAJOR_NINT, !n as u64);
    }
}

pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.push((MAJOR_SIMPLE << 5) | if b { SIMPLE_TRUE } else { SIMPLE_FALSE });
}

pub fn write_null(out: &mut Vec<u8>) {
    out.push((MAJOR_SIMPLE << 5) | SIMPLE_NULL);
}

pub fn write_text(out: &mut Vec<u8>, s: &str) {
    write_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn write_opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_text(out, s),
        None => write_null(out),
    }
}

pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_bytes_head(out, b.len());
    out.extend_from_slice(b);
}

/// Writes only the head of a byte string, for callers that append the
/// content themselves (avoids building the content in a temporary first).
pub fn write_bytes_head(out: &mut Vec<u8>, len: usize) {
    write_head(out, MAJOR_BYTES, len as u64);
}

/// Length in bytes of the head `write_bytes_head` writes for `len`.
pub fn bytes_head_len(len: usize) -> usize {
    match len {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

pub fn write_array_head(out: &mut Vec<u8>, len: usize) {
    write_head(out, MAJOR_ARRAY, len as u64);
}

pub fn write_map_head(out: &mut Vec<u8>, len: usize) {
    write_head(out, MAJOR_MAP, len as u64);
}

// ---------------------------------------------------------------- decoding

/// One data item's head: major type and argument. `arg` is `None` for an
/// indefinite-length string, array or map.
#[derive(Debug, Clone, Copy)]
struct Head {
    major: u8,
    info: u8,
    arg: Option<u64>,
}

/// A cursor over one CBOR buffer. All reads are bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err<T>(&self, what: &'static str) -> Result<T> {
        Err(CborError {
            offset: self.pos,
            what,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return self.err("truncated input");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn peek_byte(&self) -> Result<u8> {
        match self.buf.get(self.pos) {
            Some(b) => Ok(*b),
            None => self.err("truncated input"),
        }
    }

    fn head(&mut self) -> Result<Head> {
        let b = self.take(1)?[0];
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => Some(info as u64),
            24 => Some(self.take(1)?[0] as u64),
            25 => Some(u16::from_be_bytes(self.take(2)?.try_into().unwrap()) as u64),
            26 => Some(u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as u64),
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().unwrap())),
            31 if matches!(major, MAJOR_BYTES | MAJOR_TEXT | MAJOR_ARRAY | MAJOR_MAP) => None,
            31 if major == MAJOR_SIMPLE => return self.err("unexpected break"),
            _ => return self.err("reserved additional information"),
        };
        Ok(Head { major, info, arg })
    }

    /// Skips tags (they carry no meaning in this protocol) and returns the
    /// head of the tagged item.
    fn head_untagged(&mut self) -> Result<Head> {
        for _ in 0..MAX_DEPTH {
            let h = self.head()?;
            if h.major != MAJOR_TAG {
                return Ok(h);
            }
        }
        self.err("tags nested too deeply")
    }

    fn at_break(&mut self) -> Result<bool> {
        if self.peek_byte()? == BREAK {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// A length that must fit in what is left of the input (each element or
    /// byte takes at least one byte), so no hostile length can make us
    /// allocate or loop beyond the input's size.
    fn bounded_len(&self, n: u64) -> Result<usize> {
        if n > (self.buf.len() - self.pos) as u64 {
            return self.err("length exceeds input");
        }
        Ok(n as usize)
    }

    /// Reads a text or byte string of the given major type. Definite strings
    /// are borrowed; indefinite ones are concatenated.
    fn string(&mut self, head: Head, major: u8) -> Result<Cow<'a, [u8]>> {
        match head.arg {
            Some(n) => {
                let n = self.bounded_len(n)?;
                Ok(Cow::Borrowed(self.take(n)?))
            }
            None => {
                let mut v = Vec::new();
                while !self.at_break()? {
                    let chunk = self.head()?;
                    if chunk.major != major || chunk.arg.is_none() {
                        return self.err("bad chunk in indefinite string");
                    }
                    let n = self.bounded_len(chunk.arg.unwrap())?;
                    v.extend_from_slice(self.take(n)?);
                }
                Ok(Cow::Owned(v))
            }
        }
    }

    pub fn read_text(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos;
        let h = self.head_untagged()?;
        if h.major != MAJOR_TEXT {
            self.pos = start;
            return self.err("expected text");
        }
        match self.string(h, MAJOR_TEXT)? {
            Cow::Borrowed(b) => match super::str_from_utf8(b) {
                Ok(s) => Ok(Cow::Borrowed(s)),
                Err(_) => self.err("text is not UTF-8"),
            },
            Cow::Owned(v) => match String::from_utf8(v) {
                Ok(s) => Ok(Cow::Owned(s)),
                Err(_) => self.err("text is not UTF-8"),
            },
        }
    }

    /// Consumes `literal` if the input continues with exactly those bytes.
    pub fn eat(&mut self, literal: &[u8]) -> bool {
        let matches = self.buf[self.pos..].starts_with(literal);
        if matches {
            self.pos += literal.len();
        }
        matches
    }

    /// A byte string with a definite length, borrowed; `None`, consuming
    /// nothing, for anything else (the caller falls back to `read_bytes`).
    pub fn read_definite_bytes(&mut self) -> Option<&'a [u8]> {
        self.definite(MAJOR_BYTES)
    }

    /// A UTF-8 text string with a definite length, borrowed; `None`,
    /// consuming nothing, for anything else (the caller falls back to
    /// `read_text`, which also says what is wrong).
    pub fn read_definite_text(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let text = self.definite(MAJOR_TEXT).map(super::str_from_utf8);
        match text {
            Some(Ok(s)) => Some(s),
            _ => {
                self.pos = start;
                None
            }
        }
    }

    fn definite(&mut self, major: u8) -> Option<&'a [u8]> {
        let start = self.pos;
        let string = match self.head() {
            Ok(Head {
                major: m,
                arg: Some(n),
                ..
            }) if m == major => self.bounded_len(n).and_then(|n| self.take(n)).ok(),
            _ => None,
        };
        if string.is_none() {
            self.pos = start;
        }
        string
    }

    /// Reads a byte string; like the upstream decoder, also accepts an array
    /// of integers 0..=255.
    pub fn read_bytes(&mut self) -> Result<Cow<'a, [u8]>> {
        let start = self.pos;
        let h = self.head_untagged()?;
        match h.major {
            MAJOR_BYTES => self.string(h, MAJOR_BYTES),
            MAJOR_ARRAY => {
                let mut v = Vec::new();
                let mut remaining = h.arg.map(|n| self.bounded_len(n)).transpose()?;
                loop {
                    match remaining.as_mut() {
                        Some(0) => break,
                        Some(n) => *n -= 1,
                        None => {
                            if self.at_break()? {
                                break;
                            }
                        }
                    }
                    let b = self.read_u64()?;
                    if b > 255 {
                        return self.err("byte array element out of range");
                    }
                    v.push(b as u8);
                }
                Ok(Cow::Owned(v))
            }
            _ => {
                self.pos = start;
                self.err("expected bytes")
            }
        }
    }

    pub fn read_u64(&mut self) -> Result<u64> {
        let start = self.pos;
        let h = self.head_untagged()?;
        if h.major != MAJOR_UINT {
            self.pos = start;
            return self.err("expected unsigned integer");
        }
        Ok(h.arg.unwrap_or(0))
    }

    pub fn read_i64(&mut self) -> Result<i64> {
        let start = self.pos;
        let h = self.head_untagged()?;
        let n = h.arg.unwrap_or(0);
        match h.major {
            MAJOR_UINT if n <= i64::MAX as u64 => Ok(n as i64),
            MAJOR_NINT if n <= i64::MAX as u64 => Ok(!(n as i64)),
            MAJOR_UINT | MAJOR_NINT => {
                self.pos = start;
                self.err("integer out of range")
            }
            _ => {
                self.pos = start;
                self.err("expected integer")
            }
        }
    }

    pub fn read_bool(&mut self) -> Result<bool> {
        let start = self.pos;
        let h = self.head_untagged()?;
        match (h.major, h.info) {
            (MAJOR_SIMPLE, SIMPLE_TRUE) => Ok(true),
            (MAJOR_SIMPLE, SIMPLE_FALSE) => Ok(false),
            _ => {
                self.pos = start;
                self.err("expected bool")
            }
        }
    }

    /// Consumes a `null` (or `undefined`) if one is next.
    pub fn read_null(&mut self) -> Result<bool> {
        let b = self.peek_byte()?;
        if b == (MAJOR_SIMPLE << 5) | SIMPLE_NULL || b == (MAJOR_SIMPLE << 5) | SIMPLE_UNDEFINED {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Reads an array head; `None` means indefinite (use `next_item`).
    pub fn read_array(&mut self) -> Result<Seq> {
        self.collection(MAJOR_ARRAY, "expected array")
    }

    /// Reads a map head; `None` means indefinite (use `next_item`).
    pub fn read_map(&mut self) -> Result<Seq> {
        self.collection(MAJOR_MAP, "expected map")
    }

    fn collection(&mut self, major: u8, what: &'static str) -> Result<Seq> {
        let start = self.pos;
        let h = self.head_untagged()?;
        if h.major != major {
            self.pos = start;
            return self.err(what);
        }
        let remaining = h.arg.map(|n| self.bounded_len(n)).transpose()?;
        Ok(Seq { remaining })
    }

    /// Advances a sequence: true if another element (or map entry) follows.
    pub fn next_item(&mut self, seq: &mut Seq) -> Result<bool> {
        match seq.remaining.as_mut() {
            Some(0) => Ok(false),
            Some(n) => {
                *n -= 1;
                Ok(true)
            }
            None => Ok(!self.at_break()?),
        }
    }

    /// Skips one complete data item of any type.
    pub fn skip(&mut self) -> Result<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let h = self.head()?;
        match h.major {
            MAJOR_UINT | MAJOR_NINT => Ok(()),
            MAJOR_BYTES | MAJOR_TEXT => self.string(h, h.major).map(drop),
            MAJOR_ARRAY | MAJOR_MAP => {
                let per = if h.major == MAJOR_MAP { 2 } else { 1 };
                match h.arg {
                    Some(n) => {
                        let n = self.bounded_len(n)?;
                        for _ in 0..n * per {
                            self.skip_at(depth + 1)?;
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            for _ in 0..per {
                                self.skip_at(depth + 1)?;
                            }
                        }
                    }
                }
                Ok(())
            }
            MAJOR_TAG => self.skip_at(depth + 1),
            _ => Ok(()), // simple values and floats: the head already consumed them
        }
    }
}

/// Progress through an array or map being read.
pub struct Seq {
    remaining: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_i(n: i64) -> Vec<u8> {
        let mut v = Vec::new();
        write_i64(&mut v, n);
        v
    }

    #[test]
    fn integers_round_trip_at_every_width() {
        for n in [
            0i64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            -1,
            -24,
            -25,
            -256,
            -257,
            i64::MIN,
        ] {
            let b = enc_i(n);
            assert_eq!(Reader::new(&b).read_i64().unwrap(), n, "{n}");
        }
        assert_eq!(enc_i(-9), vec![0x28]);
        assert_eq!(enc_i(500), vec![0x19, 0x01, 0xf4]);
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        // A byte string claiming 2^64-1 bytes.
        let b = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(Reader::new(&b).read_bytes().is_err());
        // An array claiming 4 billion elements.
        let b = [0x9a, 0xff, 0xff, 0xff, 0xff];
        assert!(Reader::new(&b).skip().is_err());
        // Deep nesting.
        let b = vec![0x81; 10_000];
        assert!(Reader::new(&b).skip().is_err());
    }

    #[test]
    fn indefinite_strings_and_int_arrays_decode_as_bytes() {
        let b = [0x5f, 0x42, 1, 2, 0x41, 3, 0xff];
        assert_eq!(&*Reader::new(&b).read_bytes().unwrap(), &[1, 2, 3]);
        let b = [0x83, 0x01, 0x18, 0xff, 0x00];
        assert_eq!(&*Reader::new(&b).read_bytes().unwrap(), &[1, 255, 0]);
        let b = [0x81, 0x19, 0x01, 0x00];
        assert!(Reader::new(&b).read_bytes().is_err());
    }
}
