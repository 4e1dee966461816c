//! The rtchain UDP fast path: its versioned binary wire format and a small blocking client.
//!
//! A client sends `SubmitTx` datagrams carrying raw EIP-2718 signed transactions; the node
//! answers every transaction with one `Receipt` or `Reject` datagram. `Ping`/`Pong` measure
//! liveness and round-trip time. The full specification, with byte tables, is `docs/wire.md`.
//!
//! This crate owns the byte layout only. It treats transactions as opaque bytes (decoding and
//! validating them is the node's job) and knows nothing of sockets beyond the convenience
//! [`client::FastPathClient`]. It depends on nothing but `thiserror`, so a dapp or a load
//! generator can link it without DPDK, revm or RocksDB.
//!
//! Decoding borrows from the datagram and never allocates; encoding writes into a caller's
//! buffer and returns the length, so the node's hot path allocates nothing.

pub mod client;

use std::borrow::Cow;

/// `"RT"`: the first two bytes of every datagram, so stray traffic on the port is recognised and
/// dropped without further parsing.
pub const MAGIC: u16 = 0x5254;

/// The version this crate encodes and the only one it decodes.
pub const VERSION: u8 = 1;

/// Largest datagram either side sends or accepts: a 1500-byte Ethernet MTU minus the IPv4 (20)
/// and UDP (8) headers. The DPDK stack drops IPv4 fragments, so a larger datagram could not
/// arrive there anyway; keeping to one frame also keeps loss per transaction independent.
pub const MAX_DATAGRAM: usize = 1472;

/// Bytes of the fixed header that starts every message.
pub const HEADER_LEN: usize = 16;

/// Most transactions in one `SubmitTx`. Bounds the replies one datagram can cause (and so the
/// reply amplification of a spoofed datagram) and the per-datagram work of the net tile. With
/// the smallest real signed transactions (~110 bytes) only about 12 fit anyway; the bound
/// matters for garbage.
pub const MAX_TXS_PER_SUBMIT: usize = 64;

/// Largest transaction that fits a `SubmitTx` (alone, with its 2-byte length prefix). Larger
/// transactions (big contract deployments) go through JSON-RPC `eth_sendRawTransaction`.
pub const MAX_TX_LEN: usize = MAX_DATAGRAM - HEADER_LEN - 2;

/// Longest reject reason, in bytes. Keeps a `Reject` small: it is a reply to possibly spoofed
/// traffic, so it must not amplify much.
pub const MAX_REASON_LEN: usize = 256;

/// Body of a `Receipt`, after the header.
pub const RECEIPT_BODY_LEN: usize = 64;
/// A whole `Receipt` datagram.
pub const RECEIPT_LEN: usize = HEADER_LEN + RECEIPT_BODY_LEN;

/// Fixed part of a `Reject` body (everything but the reason text).
pub const REJECT_FIXED_BODY_LEN: usize = 38;
/// The smallest `Reject` datagram (empty reason).
pub const REJECT_MIN_LEN: usize = HEADER_LEN + REJECT_FIXED_BODY_LEN;
/// The largest `Reject` datagram.
pub const REJECT_MAX_LEN: usize = REJECT_MIN_LEN + MAX_REASON_LEN;

/// Body of a `Ping` or `Pong`.
pub const PING_BODY_LEN: usize = 8;
/// A whole `Ping` or `Pong` datagram.
pub const PING_LEN: usize = HEADER_LEN + PING_BODY_LEN;

/// The `index` of a `Reject` that applies to the whole datagram (unknown version, bad framing,
/// rate limit) rather than to one transaction: the client applies it to every transaction it
/// sent under that `request_id`.
pub const INDEX_WHOLE_DATAGRAM: u16 = u16::MAX;

// The largest reply must fit the smallest buffer any peer uses.
const _: () = assert!(REJECT_MAX_LEN <= MAX_DATAGRAM);
const _: () = assert!(MAX_TXS_PER_SUBMIT < INDEX_WHOLE_DATAGRAM as usize);

/// Message type, byte 3 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    SubmitTx = 1,
    Receipt = 2,
    Reject = 3,
    Ping = 4,
    Pong = 5,
}

impl MsgType {
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::SubmitTx,
            2 => Self::Receipt,
            3 => Self::Reject,
            4 => Self::Ping,
            5 => Self::Pong,
            _ => return None,
        })
    }
}

/// Why a transaction (or a whole datagram, with [`INDEX_WHOLE_DATAGRAM`]) was refused.
///
/// Codes are stable across versions: new ones may be added, never renumbered. A decoder maps a
/// code it does not know to [`RejectCode::Other`], so an old client still reads a new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RejectCode {
    /// The datagram or the transaction could not be decoded.
    Malformed = 1,
    /// The header names a wire version the node does not speak.
    UnknownVersion = 2,
    /// The datagram is larger than [`MAX_DATAGRAM`], or the transaction larger than the node's
    /// limit.
    Oversized = 3,
    /// More than [`MAX_TXS_PER_SUBMIT`] transactions in one `SubmitTx`.
    TooManyTxs = 4,
    /// The source is over its rate limit. Usually such datagrams are dropped silently; the node
    /// may say so occasionally.
    RateLimited = 5,
    /// The signature does not recover a sender (or is malleable: high `s`).
    InvalidSignature = 6,
    /// The transaction is signed for another chain.
    WrongChainId = 7,
    /// The sender's nonce has moved past this transaction's.
    NonceTooLow = 8,
    /// The nonce leaves a gap and the sender's queue of future nonces is full.
    NonceGap = 9,
    /// The node's pending queue is full: retry later.
    TxpoolFull = 10,
    /// The sender cannot pay `gas_limit * max_fee + value`.
    InsufficientFunds = 11,
    /// The gas limit is below the transaction's intrinsic gas.
    IntrinsicGas = 12,
    /// The gas limit exceeds the block gas limit.
    GasLimit = 13,
    /// The fee is below the base fee or the node's minimum.
    FeeTooLow = 14,
    /// This transaction is already pending or included; its receipt is available over JSON-RPC.
    AlreadyKnown = 15,
    /// The node cannot accept transactions now (starting, syncing, shutting down, not the
    /// sequencer).
    Unavailable = 16,
    /// The transaction type is not accepted on the fast path (e.g. EIP-4844 blob transactions).
    UnsupportedTxType = 17,
    /// Anything else, including codes this version does not know; the reason text says more.
    Other = 0xFFFF,
}

impl RejectCode {
    /// Maps a code from the wire; codes this version does not know become [`RejectCode::Other`].
    pub fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::Malformed,
            2 => Self::UnknownVersion,
            3 => Self::Oversized,
            4 => Self::TooManyTxs,
            5 => Self::RateLimited,
            6 => Self::InvalidSignature,
            7 => Self::WrongChainId,
            8 => Self::NonceTooLow,
            9 => Self::NonceGap,
            10 => Self::TxpoolFull,
            11 => Self::InsufficientFunds,
            12 => Self::IntrinsicGas,
            13 => Self::GasLimit,
            14 => Self::FeeTooLow,
            15 => Self::AlreadyKnown,
            16 => Self::Unavailable,
            17 => Self::UnsupportedTxType,
            _ => Self::Other,
        }
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether sending the same bytes again later may succeed (load, not the transaction, was
    /// the problem). A client may retry these with backoff; the others need a new transaction.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::TxpoolFull | Self::Unavailable | Self::NonceGap
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownVersion => "unknown version",
            Self::Oversized => "oversized",
            Self::TooManyTxs => "too many transactions",
            Self::RateLimited => "rate limited",
            Self::InvalidSignature => "invalid signature",
            Self::WrongChainId => "wrong chain id",
            Self::NonceTooLow => "nonce too low",
            Self::NonceGap => "nonce gap",
            Self::TxpoolFull => "txpool is full",
            Self::InsufficientFunds => "insufficient funds",
            Self::IntrinsicGas => "intrinsic gas too low",
            Self::GasLimit => "exceeds block gas limit",
            Self::FeeTooLow => "fee too low",
            Self::AlreadyKnown => "already known",
            Self::Unavailable => "unavailable",
            Self::UnsupportedTxType => "unsupported transaction type",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of an executed transaction, as in an Ethereum receipt's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxStatus {
    Reverted = 0,
    Success = 1,
}

/// What is wrong with a datagram (decoding) or with a request to encode one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram of {available} bytes is truncated: {needed} bytes needed")]
    Truncated { needed: usize, available: usize },
    #[error("bad magic {0:#06x} (expected {MAGIC:#06x}): not an rtchain fast-path datagram")]
    BadMagic(u16),
    #[error("unknown wire version {0} (this build speaks version {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("datagram of {len} bytes exceeds the {MAX_DATAGRAM}-byte maximum")]
    Oversized { len: usize },
    #[error("{extra} bytes after the end of the message")]
    TrailingBytes { extra: usize },
    #[error("{count} transactions in one SubmitTx (at most {MAX_TXS_PER_SUBMIT})")]
    TooManyTxs { count: usize },
    #[error("SubmitTx carries no transactions")]
    EmptySubmit,
    #[error("transaction {index} of the SubmitTx is empty")]
    EmptyTx { index: u16 },
    #[error("message type {msg_type:?} must have count 0, got {count}")]
    UnexpectedCount { msg_type: MsgType, count: u16 },
    #[error("receipt status {0} is neither 0 (reverted) nor 1 (success)")]
    BadStatus(u8),
    #[error("reject reason of {len} bytes exceeds {MAX_REASON_LEN}")]
    ReasonTooLong { len: usize },
    #[error("output buffer of {available} bytes is too small: {needed} bytes needed")]
    BufferTooSmall { needed: usize, available: usize },
}

impl WireError {
    /// The code a `Reject` for this error carries; `None` for errors that never get one (not our
    /// protocol, or an encoder-side error). See [`error_reply`] for when the node answers at all.
    pub fn reject_code(&self) -> Option<RejectCode> {
        match self {
            Self::BadMagic(_) | Self::BufferTooSmall { .. } => None,
            Self::UnknownVersion(_) => Some(RejectCode::UnknownVersion),
            Self::Oversized { .. } => Some(RejectCode::Oversized),
            Self::TooManyTxs { .. } => Some(RejectCode::TooManyTxs),
            Self::Truncated { .. }
            | Self::UnknownType(_)
            | Self::TrailingBytes { .. }
            | Self::EmptySubmit
            | Self::EmptyTx { .. }
            | Self::UnexpectedCount { .. }
            | Self::BadStatus(_)
            | Self::ReasonTooLong { .. } => Some(RejectCode::Malformed),
        }
    }
}

/// How the node answers a datagram `buf` that [`decode`] refused with `err`: `Some((request_id,
/// code))` means send a `Reject` with index [`INDEX_WHOLE_DATAGRAM`]; `None` means drop it and
/// count it.
///
/// Dropped: datagrams whose header is unreadable (no request id to answer, and probably not
/// ours), and anything a node itself sends (`Receipt`, `Reject`, `Pong`) — never answering a
/// reply means two nodes, or a node and a spoofed source, cannot be set bouncing datagrams at
/// each other.
pub fn error_reply(buf: &[u8], err: &WireError) -> Option<(u64, RejectCode)> {
    let header = decode_header(buf).ok()?;
    let is_reply = matches!(
        MsgType::from_u8(header.msg_type),
        Some(MsgType::Receipt | MsgType::Reject | MsgType::Pong)
    );
    // Another version may number its types differently; the version is then the error to report.
    if is_reply && header.version == VERSION {
        return None;
    }
    Some((header.request_id, err.reject_code()?))
}

/// The fixed 16-byte header. Bytes 0..12 (magic, version, type, request id) keep this layout in
/// every version, so a node can answer a client of any version with `UnknownVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// Raw type byte: [`decode_header`] does not interpret it, so it can describe datagrams of
    /// other versions.
    pub msg_type: u8,
    pub request_id: u64,
    /// `SubmitTx`: number of transactions. Every other type: 0.
    pub count: u16,
    /// Reserved: sent as 0, ignored on receipt (room for compatible additions).
    pub flags: u16,
}

/// The node's answer for one executed transaction.
///
/// Sent once the transaction's mini-block is executed and durably logged, i.e. when
/// `eth_sendRawTransactionSync` would return; `block_number` is the EVM block the mini-block
/// will be sealed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub request_id: u64,
    /// Position of the transaction within its `SubmitTx`.
    pub index: u16,
    pub tx_hash: [u8; 32],
    pub status: TxStatus,
    pub gas_used: u64,
    /// Mini-block that executed the transaction.
    pub mini_block: u64,
    /// EVM block the mini-block seals into.
    pub block_number: u64,
    /// Position of the transaction within that EVM block (its receipt's `transactionIndex`).
    pub tx_index: u32,
}

/// The node's refusal of one transaction (or of a whole datagram, see [`INDEX_WHOLE_DATAGRAM`]),
/// borrowing its reason from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject<'a> {
    pub request_id: u64,
    pub index: u16,
    /// All zero when the transaction could not be decoded (or the reject is for the datagram).
    pub tx_hash: [u8; 32],
    pub code: RejectCode,
    /// Raw reason bytes: meant to be UTF-8, but from the network, so read them with
    /// [`Reject::reason_lossy`].
    pub reason: &'a [u8],
}

impl Reject<'_> {
    /// The reason as text; invalid UTF-8 is replaced, never an error.
    pub fn reason_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.reason)
    }
}

/// One decoded datagram, borrowing from its buffer.
#[derive(Debug, Clone)]
pub enum Message<'a> {
    SubmitTx {
        request_id: u64,
        txs: TxIter<'a>,
    },
    Receipt(Receipt),
    Reject(Reject<'a>),
    /// `timestamp_ns` is the sender's clock, opaque to the node and echoed in the `Pong`.
    Ping {
        request_id: u64,
        timestamp_ns: u64,
    },
    Pong {
        request_id: u64,
        timestamp_ns: u64,
    },
}

impl Message<'_> {
    pub fn request_id(&self) -> u64 {
        match self {
            Self::SubmitTx { request_id, .. }
            | Self::Ping { request_id, .. }
            | Self::Pong { request_id, .. } => *request_id,
            Self::Receipt(r) => r.request_id,
            Self::Reject(r) => r.request_id,
        }
    }
}

/// The transactions of a decoded `SubmitTx`, in order. [`decode`] has already checked the
/// framing of every one, so iteration cannot fail and allocates nothing.
#[derive(Debug, Clone)]
pub struct TxIter<'a> {
    /// The length-prefixed transactions not yet yielded.
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for TxIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            return None;
        }
        // Checked by `decode`; the `?`s keep a logic error from becoming a panic.
        let len = usize::from(u16::from_be_bytes(self.rest.get(..2)?.try_into().ok()?));
        let tx = self.rest.get(2..2 + len)?;
        self.rest = self.rest.get(2 + len..)?;
        self.remaining -= 1;
        Some(tx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.remaining);
        (n, Some(n))
    }
}

impl ExactSizeIterator for TxIter<'_> {}

/// Reads and checks the magic of the fixed header, without checking the version or the type.
/// The node uses it to answer a datagram whose full decode failed (the request id is here).
pub fn decode_header(buf: &[u8]) -> Result<Header, WireError> {
    let mut r = Reader::new(buf);
    let magic = r.u16()?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    Ok(Header {
        version: r.u8()?,
        msg_type: r.u8()?,
        request_id: r.u64()?,
        count: r.u16()?,
        flags: r.u16()?,
    })
}

/// Decodes one datagram. Checks everything (size, header, framing of every transaction, no
/// trailing bytes) before returning, so a `Message` is always well-formed. Never panics.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized { len: buf.len() });
    }
    let header = decode_header(buf)?;
    if header.version != VERSION {
        return Err(WireError::UnknownVersion(header.version));
    }
    let msg_type =
        MsgType::from_u8(header.msg_type).ok_or(WireError::UnknownType(header.msg_type))?;
    if msg_type != MsgType::SubmitTx && header.count != 0 {
        return Err(WireError::UnexpectedCount {
            msg_type,
            count: header.count,
        });
    }
    let mut r = Reader::new(buf);
    r.pos = HEADER_LEN;
    let request_id = header.request_id;
    let msg = match msg_type {
        MsgType::SubmitTx => {
            let count = usize::from(header.count);
            if count == 0 {
                return Err(WireError::EmptySubmit);
            }
            if count > MAX_TXS_PER_SUBMIT {
                return Err(WireError::TooManyTxs { count });
            }
            let start = r.pos;
            for index in 0..header.count {
                let len = usize::from(r.u16()?);
                if len == 0 {
                    return Err(WireError::EmptyTx { index });
                }
                r.bytes(len)?;
            }
            Message::SubmitTx {
                request_id,
                txs: TxIter {
                    rest: &buf[start..r.pos],
                    remaining: header.count,
                },
            }
        }
        MsgType::Receipt => {
            let tx_hash = r.array()?;
            let index = r.u16()?;
            let status = match r.u8()? {
                0 => TxStatus::Reverted,
                1 => TxStatus::Success,
                other => return Err(WireError::BadStatus(other)),
            };
            // Reserved padding that aligns the integers after it; ignored like header flags.
            r.u8()?;
            Message::Receipt(Receipt {
                request_id,
                index,
                tx_hash,
                status,
                tx_index: r.u32()?,
                gas_used: r.u64()?,
                mini_block: r.u64()?,
                block_number: r.u64()?,
            })
        }
        MsgType::Reject => {
            let tx_hash = r.array()?;
            let index = r.u16()?;
            let code = RejectCode::from_u16(r.u16()?);
            let reason_len = usize::from(r.u16()?);
            if reason_len > MAX_REASON_LEN {
                return Err(WireError::ReasonTooLong { len: reason_len });
            }
            Message::Reject(Reject {
                request_id,
                index,
                tx_hash,
                code,
                reason: r.bytes(reason_len)?,
            })
        }
        MsgType::Ping => Message::Ping {
            request_id,
            timestamp_ns: r.u64()?,
        },
        MsgType::Pong => Message::Pong {
            request_id,
            timestamp_ns: r.u64()?,
        },
    };
    if r.pos != buf.len() {
        return Err(WireError::TrailingBytes {
            extra: buf.len() - r.pos,
        });
    }
    Ok(msg)
}

/// Encodes a `SubmitTx` carrying `txs`, in order. Fails (writing nothing useful) if there are no
/// transactions, too many, an empty one, or if they do not fit one datagram or `buf`.
pub fn encode_submit(buf: &mut [u8], request_id: u64, txs: &[&[u8]]) -> Result<usize, WireError> {
    if txs.is_empty() {
        return Err(WireError::EmptySubmit);
    }
    if txs.len() > MAX_TXS_PER_SUBMIT {
        return Err(WireError::TooManyTxs { count: txs.len() });
    }
    if let Some(index) = txs.iter().position(|tx| tx.is_empty()) {
        // An empty transaction is never valid; refusing it here keeps `decode` strict.
        return Err(WireError::EmptyTx {
            index: index as u16,
        });
    }
    let len = submit_len(txs);
    if len > MAX_DATAGRAM {
        return Err(WireError::Oversized { len });
    }
    if len > buf.len() {
        return Err(WireError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        });
    }
    // Lengths are now known to fit: the datagram bound is far below u16::MAX.
    let count = txs.len() as u16;
    let mut w = Writer::new(buf);
    w.header(MsgType::SubmitTx, request_id, count);
    for tx in txs {
        w.u16(tx.len() as u16);
        w.bytes(tx);
    }
    debug_assert_eq!(w.pos, len);
    Ok(w.pos)
}

/// Size of the `SubmitTx` that would carry `txs` (for packing batches up to [`MAX_DATAGRAM`]).
pub fn submit_len(txs: &[&[u8]]) -> usize {
    HEADER_LEN + txs.iter().map(|tx| 2 + tx.len()).sum::<usize>()
}

/// Encodes a `Receipt`; returns [`RECEIPT_LEN`].
///
/// # Panics
/// If `buf` is shorter than [`RECEIPT_LEN`]: a buffer of [`MAX_DATAGRAM`] always suffices.
pub fn encode_receipt(buf: &mut [u8], receipt: &Receipt) -> usize {
    assert_buf(buf, RECEIPT_LEN);
    let mut w = Writer::new(buf);
    w.header(MsgType::Receipt, receipt.request_id, 0);
    w.bytes(&receipt.tx_hash);
    w.u16(receipt.index);
    w.u8(receipt.status as u8);
    w.u8(0);
    w.u32(receipt.tx_index);
    w.u64(receipt.gas_used);
    w.u64(receipt.mini_block);
    w.u64(receipt.block_number);
    debug_assert_eq!(w.pos, RECEIPT_LEN);
    w.pos
}

/// Encodes a `Reject`; returns its length. `reason` is cut, at a character boundary, to
/// [`MAX_REASON_LEN`] bytes and to what fits `buf`: a reason is a courtesy, never a failure.
///
/// # Panics
/// If `buf` is shorter than [`REJECT_MIN_LEN`]: a buffer of [`MAX_DATAGRAM`] always suffices.
pub fn encode_reject(
    buf: &mut [u8],
    request_id: u64,
    index: u16,
    tx_hash: &[u8; 32],
    code: RejectCode,
    reason: &str,
) -> usize {
    assert_buf(buf, REJECT_MIN_LEN);
    let reason = truncate_utf8(reason, MAX_REASON_LEN.min(buf.len() - REJECT_MIN_LEN));
    let mut w = Writer::new(buf);
    w.header(MsgType::Reject, request_id, 0);
    w.bytes(tx_hash);
    w.u16(index);
    w.u16(code.as_u16());
    w.u16(reason.len() as u16);
    w.bytes(reason.as_bytes());
    w.pos
}

/// Encodes a `Ping`; returns [`PING_LEN`].
///
/// # Panics
/// If `buf` is shorter than [`PING_LEN`].
pub fn encode_ping(buf: &mut [u8], request_id: u64, timestamp_ns: u64) -> usize {
    encode_ping_pong(buf, MsgType::Ping, request_id, timestamp_ns)
}

/// Encodes the `Pong` answering a `Ping`: same `request_id`, same `timestamp_ns`.
///
/// # Panics
/// If `buf` is shorter than [`PING_LEN`].
pub fn encode_pong(buf: &mut [u8], request_id: u64, timestamp_ns: u64) -> usize {
    encode_ping_pong(buf, MsgType::Pong, request_id, timestamp_ns)
}

fn encode_ping_pong(
    buf: &mut [u8],
    msg_type: MsgType,
    request_id: u64,
    timestamp_ns: u64,
) -> usize {
    assert_buf(buf, PING_LEN);
    let mut w = Writer::new(buf);
    w.header(msg_type, request_id, 0);
    w.u64(timestamp_ns);
    w.pos
}

/// Encoder buffers are the caller's (a preallocated slot), not network input: one that is too
/// small is a bug in the caller, caught at the first message.
fn assert_buf(buf: &[u8], needed: usize) {
    assert!(
        buf.len() >= needed,
        "rtchain-wire: output buffer of {} bytes, {needed} needed",
        buf.len()
    );
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bounds-checked big-endian reads; every read reports `Truncated` instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.saturating_add(n);
        let out = self.buf.get(self.pos..end).ok_or(WireError::Truncated {
            needed: end,
            available: self.buf.len(),
        })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }
}

/// Big-endian writes into a buffer whose size the encoder has already checked.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }

    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    fn header(&mut self, msg_type: MsgType, request_id: u64, count: u16) {
        self.u16(MAGIC);
        self.u8(VERSION);
        self.u8(msg_type as u8);
        self.u64(request_id);
        self.u16(count);
        self.u16(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_receipt() -> Receipt {
        Receipt {
            request_id: 0x0102_0304_0506_0708,
            index: 3,
            tx_hash: [0xab; 32],
            status: TxStatus::Success,
            gas_used: 21_000,
            mini_block: 77,
            block_number: 12,
            tx_index: 5,
        }
    }

    #[test]
    fn submit_exact_bytes() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_submit(&mut buf, 0x1122_3344_5566_7788, &[&[0x02, 0xf8], &[0xc0]]).unwrap();
        let expected: &[u8] = &[
            0x52, 0x54, 0x01, 0x01, // magic "RT", version 1, type SubmitTx
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // request id
            0x00, 0x02, 0x00, 0x00, // count 2, flags 0
            0x00, 0x02, 0x02, 0xf8, // tx 0
            0x00, 0x01, 0xc0, // tx 1
        ];
        assert_eq!(&buf[..n], expected);
        let Message::SubmitTx { request_id, txs } = decode(expected).unwrap() else {
            panic!("not a SubmitTx");
        };
        assert_eq!(request_id, 0x1122_3344_5566_7788);
        assert_eq!(txs.len(), 2);
        assert_eq!(
            txs.collect::<Vec<_>>(),
            vec![&[0x02, 0xf8][..], &[0xc0][..]]
        );
    }

    #[test]
    fn receipt_round_trip_and_layout() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let r = sample_receipt();
        let n = encode_receipt(&mut buf, &r);
        assert_eq!(n, RECEIPT_LEN);
        assert_eq!(&buf[..4], &[0x52, 0x54, 1, 2]);
        assert_eq!(&buf[16..48], &[0xab; 32]);
        assert_eq!(&buf[48..52], &[0, 3, 1, 0]); // index, status, reserved
        assert_eq!(&buf[52..56], &5u32.to_be_bytes());
        assert_eq!(&buf[56..64], &21_000u64.to_be_bytes());
        match decode(&buf[..n]).unwrap() {
            Message::Receipt(got) => assert_eq!(got, r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reject_round_trip_and_truncation() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_reject(
            &mut buf,
            9,
            1,
            &[0; 32],
            RejectCode::NonceTooLow,
            "nonce 4 < 5",
        );
        assert_eq!(n, REJECT_MIN_LEN + 11);
        let Message::Reject(rj) = decode(&buf[..n]).unwrap() else {
            panic!("not a Reject");
        };
        assert_eq!(
            (rj.request_id, rj.index, rj.code),
            (9, 1, RejectCode::NonceTooLow)
        );
        assert_eq!(rj.reason_lossy(), "nonce 4 < 5");

        // A long multi-byte reason is cut at a character boundary within the limit.
        let long = "é".repeat(300);
        let n = encode_reject(&mut buf, 9, 1, &[0; 32], RejectCode::Other, &long);
        assert_eq!(n, REJECT_MAX_LEN);
        let Message::Reject(rj) = decode(&buf[..n]).unwrap() else {
            panic!("not a Reject");
        };
        assert_eq!(rj.reason_lossy(), "é".repeat(128));

        // ... and to what fits a small buffer.
        let mut small = [0u8; REJECT_MIN_LEN + 3];
        let n = encode_reject(&mut small, 9, 1, &[0; 32], RejectCode::Other, &long);
        assert_eq!(n, REJECT_MIN_LEN + 2);
        assert!(decode(&small[..n]).is_ok());
    }

    #[test]
    fn reject_invalid_utf8_is_lossy_and_unknown_code_is_other() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_reject(&mut buf, 1, 0, &[1; 32], RejectCode::Malformed, "ab");
        buf[REJECT_MIN_LEN] = 0xff; // invalid UTF-8 lead byte
        buf[HEADER_LEN + 34..HEADER_LEN + 36].copy_from_slice(&999u16.to_be_bytes());
        let Message::Reject(rj) = decode(&buf[..n]).unwrap() else {
            panic!("not a Reject");
        };
        assert_eq!(rj.code, RejectCode::Other);
        assert_eq!(rj.reason_lossy(), "\u{fffd}b");
    }

    #[test]
    fn ping_pong_round_trip() {
        let mut buf = [0u8; PING_LEN];
        let n = encode_ping(&mut buf, 5, 123);
        assert!(matches!(
            decode(&buf[..n]).unwrap(),
            Message::Ping {
                request_id: 5,
                timestamp_ns: 123
            }
        ));
        let n = encode_pong(&mut buf, 5, 123);
        assert!(matches!(
            decode(&buf[..n]).unwrap(),
            Message::Pong {
                request_id: 5,
                timestamp_ns: 123
            }
        ));
    }

    #[test]
    fn reject_code_numbers_are_stable() {
        for v in 0..=u16::MAX {
            let code = RejectCode::from_u16(v);
            assert!(code.as_u16() == v || code == RejectCode::Other, "{v}");
        }
        assert_eq!(RejectCode::Malformed.as_u16(), 1);
        assert_eq!(RejectCode::Unavailable.as_u16(), 16);
        assert_eq!(RejectCode::Other.as_u16(), 0xffff);
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let n = encode_submit(&mut buf, 7, &[&[1, 2, 3]]).unwrap();
        let good = buf[..n].to_vec();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            decode(&b).map(|_| ()).unwrap_err()
        };
        assert_eq!(with(0, 0), WireError::BadMagic(0x0054));
        assert_eq!(with(2, 2), WireError::UnknownVersion(2));
        assert_eq!(with(3, 9), WireError::UnknownType(9));
        assert_eq!(with(13, 0), WireError::EmptySubmit);
        assert_eq!(with(13, 65), WireError::TooManyTxs { count: 65 });
        assert_eq!(with(17, 0), WireError::EmptyTx { index: 0 });
        assert_eq!(
            with(17, 4),
            WireError::Truncated {
                needed: n + 1,
                available: n
            }
        );
        assert_eq!(
            decode(&good[..5]).unwrap_err(),
            WireError::Truncated {
                needed: 12,
                available: 5
            }
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode(&trailing).unwrap_err(),
            WireError::TrailingBytes { extra: 1 }
        );
        assert_eq!(
            decode(&buf).unwrap_err(),
            WireError::Oversized {
                len: MAX_DATAGRAM + 1
            }
        );
        let n = encode_ping(&mut buf, 1, 1);
        buf[13] = 1;
        assert_eq!(
            decode(&buf[..n]).unwrap_err(),
            WireError::UnexpectedCount {
                msg_type: MsgType::Ping,
                count: 1
            }
        );
        // The header of an unknown version is still readable, so the node can answer it.
        let mut v2 = good.clone();
        v2[2] = 2;
        assert_eq!(decode_header(&v2).unwrap().request_id, 7);
        assert_eq!(
            WireError::UnknownVersion(2).reject_code(),
            Some(RejectCode::UnknownVersion)
        );
        assert_eq!(WireError::BadMagic(0).reject_code(), None);
        assert_eq!(
            error_reply(&v2, &WireError::UnknownVersion(2)),
            Some((7, RejectCode::UnknownVersion))
        );
        assert_eq!(error_reply(&v2[..11], &WireError::UnknownVersion(2)), None);
        // A bad reply is never answered.
        let n = encode_receipt(&mut buf, &sample_receipt());
        buf[50] = 7;
        let err = decode(&buf[..n]).unwrap_err();
        assert_eq!(err, WireError::BadStatus(7));
        assert_eq!(error_reply(&buf[..n], &err), None);
    }

    #[test]
    fn encode_submit_refuses_bad_input() {
        let mut buf = [0u8; MAX_DATAGRAM];
        assert_eq!(encode_submit(&mut buf, 1, &[]), Err(WireError::EmptySubmit));
        assert_eq!(
            encode_submit(&mut buf, 1, &[&[1], &[]]),
            Err(WireError::EmptyTx { index: 1 })
        );
        let one = [1u8];
        let many = vec![&one[..]; MAX_TXS_PER_SUBMIT + 1];
        assert_eq!(
            encode_submit(&mut buf, 1, &many),
            Err(WireError::TooManyTxs { count: 65 })
        );
        let big = vec![0u8; MAX_TX_LEN + 1];
        assert_eq!(
            encode_submit(&mut buf, 1, &[&big]),
            Err(WireError::Oversized {
                len: MAX_DATAGRAM + 1
            })
        );
        let max = vec![0u8; MAX_TX_LEN];
        assert_eq!(encode_submit(&mut buf, 1, &[&max]), Ok(MAX_DATAGRAM));
        let mut small = [0u8; 20];
        assert_eq!(
            encode_submit(&mut small, 1, &[&[1, 2, 3]]),
            Err(WireError::BufferTooSmall {
                needed: 21,
                available: 20
            })
        );
    }

    fn arb_txs() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(
            prop::collection::vec(any::<u8>(), 1..300),
            1..=MAX_TXS_PER_SUBMIT,
        )
        .prop_filter("fits one datagram", |txs| {
            submit_len(&txs.iter().map(Vec::as_slice).collect::<Vec<_>>()) <= MAX_DATAGRAM
        })
    }

    fn arb_receipt() -> impl Strategy<Value = Receipt> {
        (
            any::<u64>(),
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<(u64, u64, u64, u32)>(),
        )
            .prop_map(|(request_id, index, tx_hash, ok, (g, m, b, t))| Receipt {
                request_id,
                index,
                tx_hash,
                status: if ok {
                    TxStatus::Success
                } else {
                    TxStatus::Reverted
                },
                gas_used: g,
                mini_block: m,
                block_number: b,
                tx_index: t,
            })
    }

    /// Any valid datagram, to be mutated.
    fn arb_valid() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (any::<u64>(), arb_txs()).prop_map(|(id, txs)| {
                let txs: Vec<&[u8]> = txs.iter().map(Vec::as_slice).collect();
                let mut b = vec![0u8; MAX_DATAGRAM];
                let n = encode_submit(&mut b, id, &txs).unwrap();
                b.truncate(n);
                b
            }),
            arb_receipt().prop_map(|r| {
                let mut b = vec![0u8; RECEIPT_LEN];
                encode_receipt(&mut b, &r);
                b
            }),
            (any::<u64>(), any::<u16>(), any::<u16>(), ".{0,80}").prop_map(
                |(id, idx, code, reason)| {
                    let mut buf = vec![0u8; MAX_DATAGRAM];
                    let n = encode_reject(
                        &mut buf,
                        id,
                        idx,
                        &[7; 32],
                        RejectCode::from_u16(code),
                        &reason,
                    );
                    buf[..n].to_vec()
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(id, ts)| {
                let mut b = vec![0u8; PING_LEN];
                encode_ping(&mut b, id, ts);
                b
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let _ = decode(&bytes);
            let _ = decode_header(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutations(
            valid in arb_valid(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            do_cut in any::<bool>(),
        ) {
            let mut b = valid;
            for (at, v) in flips {
                let i = at.index(b.len());
                b[i] = v;
            }
            if do_cut {
                b.truncate(cut.index(b.len() + 1));
            }
            if let Ok(Message::SubmitTx { txs, .. }) = decode(&b) {
                // Whatever decodes must iterate exactly `count` non-empty transactions.
                let n = txs.len();
                let got: Vec<_> = txs.collect();
                prop_assert_eq!(got.len(), n);
                prop_assert!(got.iter().all(|tx| !tx.is_empty()));
            }
        }

        #[test]
        fn submit_round_trips(id in any::<u64>(), txs in arb_txs()) {
            let txs: Vec<&[u8]> = txs.iter().map(Vec::as_slice).collect();
            let mut buf = [0u8; MAX_DATAGRAM];
            let n = encode_submit(&mut buf, id, &txs).unwrap();
            prop_assert_eq!(n, submit_len(&txs));
            match decode(&buf[..n]).unwrap() {
                Message::SubmitTx { request_id, txs: got } => {
                    prop_assert_eq!(request_id, id);
                    prop_assert_eq!(got.collect::<Vec<_>>(), txs);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn receipt_round_trips(r in arb_receipt()) {
            let mut buf = [0u8; RECEIPT_LEN];
            encode_receipt(&mut buf, &r);
            match decode(&buf).unwrap() {
                Message::Receipt(got) => prop_assert_eq!(got, r),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn reject_round_trips(
            id in any::<u64>(),
            index in any::<u16>(),
            hash in any::<[u8; 32]>(),
            code in any::<u16>(),
            reason in ".{0,300}",
        ) {
            let code = RejectCode::from_u16(code);
            let mut buf = [0u8; MAX_DATAGRAM];
            let n = encode_reject(&mut buf, id, index, &hash, code, &reason);
            match decode(&buf[..n]).unwrap() {
                Message::Reject(rj) => {
                    prop_assert_eq!((rj.request_id, rj.index, rj.tx_hash, rj.code), (id, index, hash, code));
                    prop_assert!(rj.reason.len() <= MAX_REASON_LEN);
                    let text = rj.reason_lossy();
                    prop_assert!(reason.starts_with(&*text));
                    prop_assert!(text.len() == reason.len() || text.len() > MAX_REASON_LEN - 4);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn ping_pong_round_trips(id in any::<u64>(), ts in any::<u64>()) {
            let mut buf = [0u8; PING_LEN];
            encode_pong(&mut buf, id, ts);
            let decoded = decode(&buf).unwrap();
            let Message::Pong { request_id, timestamp_ns } = decoded else {
                return Err(TestCaseError::fail(format!("not a Pong: {decoded:?}")));
            };
            prop_assert_eq!((request_id, timestamp_ns), (id, ts));
        }
    }
}
