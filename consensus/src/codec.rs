//! The byte codec shared by network messages and vote-log records.
//!
//! Fixed-width little-endian integers, 32-byte digests, 64-byte signatures and length-prefixed
//! byte strings. Every length read from the wire is checked against a stated maximum before
//! anything is allocated, so a hostile length field costs nothing (TigerBeetle: a bound on
//! everything). Decoding never panics: a malformed input is an error the caller counts and drops.

use alloy_primitives::B256;

/// Why bytes did not decode. The engine's driver counts these and drops the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("unknown {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("{what} of {len} exceeds the maximum {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Appends encoded values to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity_bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity_bytes),
        }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn b256(&mut self, v: &B256) {
        self.buf.extend_from_slice(v.as_slice());
    }
    /// A fixed-size byte array (a signature), with no length prefix.
    pub(crate) fn array<const N: usize>(&mut self, v: &[u8; N]) {
        self.buf.extend_from_slice(v);
    }
    /// A byte string with a u32 length prefix.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        // Callers bound their byte strings far below 4 GiB (PAYLOAD_BYTES_MAX).
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
}

/// Reads encoded values from a byte slice; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// A fixed-size byte array (a signature), with no length prefix.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn b256(&mut self) -> Result<B256, DecodeError> {
        Ok(B256::from(self.array::<32>()?))
    }
    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        self.take(len)
    }
    /// A count prefix (u16) checked against `max` before anything is allocated.
    pub(crate) fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        Ok(len)
    }
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}
