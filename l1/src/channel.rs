//! The batch format: what rtchain posts to L1 so that anyone can rebuild the L2 chain.
//!
//! A *batch* covers consecutive L2 EVM blocks `first..=last`. For each block it carries what
//! re-execution needs and nothing that re-execution recomputes: the time the block opened, and
//! for each of its mini-blocks the time it was cut and its raw signed transactions (deposits
//! included, as 0x7E transactions; a deriving node checks them against L1). The block context
//! (base fee, prevrandao, gas limit) follows from the parent, receipts and roots from
//! execution. Each block also carries the first 8 bytes of its hash (the last block its whole
//! hash), so a node that derives a different block says which one at once.
//!
//! A *channel* is one batch, compressed: a byte naming the compression, then the compressed
//! encoding. One channel fills at most one L1 transaction (its blobs, or its calldata), so a
//! batch is self-contained and the inbox contract orders batches by a hash chain. Decompression
//! is bounded ([`MAX_BATCH_BYTES`]) so a small channel cannot expand into an unbounded one.

use std::io::{Read, Write};

use alloy::consensus::{Signed, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256};

/// Largest decompressed batch accepted (a decompression bomb stops here).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Blocks in one batch at most.
pub const MAX_BATCH_BLOCKS: usize = 100_000;
/// Transactions in one mini-block at most (the node's own bound is lower).
const MAX_MINI_TXS: usize = 1 << 16;
/// Bytes of one transaction at most (the node's own bound is lower).
const MAX_TX_BYTES: usize = 1 << 20;
const FORMAT_VERSION: u8 = 3;
/// Bytes of each block's hash a batch carries (all 32 for its last block).
pub const HASH_PREFIX_BYTES: usize = 8;

/// One mini-block of a posted L2 block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMini {
    /// Wall-clock time it was cut, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Raw EIP-2718 transactions, in order.
    pub transactions: Vec<Bytes>,
}

/// One posted L2 EVM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchBlock {
    pub number: u64,
    /// When the block opened, microseconds since the Unix epoch (its timestamp is this in
    /// seconds, or its parent's if later).
    pub opened_at_us: u64,
    /// Its hash: whole for the last block of a batch, else only the first
    /// [`HASH_PREFIX_BYTES`] bytes are meaningful (the rest zero).
    pub hash: B256,
    pub minis: Vec<BatchMini>,
}

/// Consecutive L2 blocks; their mini-blocks are numbered consecutively from `first_mini`.
/// `chain_id` is the L2's: transactions signed for it are stored without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub chain_id: u64,
    pub first_mini: u64,
    pub blocks: Vec<BatchBlock>,
}

impl Batch {
    pub fn first_block(&self) -> Option<u64> {
        self.blocks.first().map(|b| b.number)
    }

    pub fn last_block(&self) -> Option<u64> {
        self.blocks.last().map(|b| b.number)
    }

    pub fn transaction_count(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| &b.minis)
            .map(|m| m.transactions.len())
            .sum()
    }
}

/// How a channel is compressed (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zlib (RFC 1950), best compression.
    Zlib = 0,
    /// Brotli (RFC 7932), quality 11, 4 MiB window.
    Brotli = 1,
    /// zstd, level 19: the default (about as small as brotli, an order of magnitude faster;
    /// docs/l1.md).
    Zstd = 2,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::Zlib, Compression::Brotli, Compression::Zstd];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Brotli => "brotli",
            Compression::Zstd => "zstd",
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u8 == b)
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::Zlib => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).expect("writing to memory");
                e.finish().expect("writing to memory")
            }
            Compression::Brotli => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
                    w.write_all(data).expect("writing to memory");
                }
                out
            }
            Compression::Zstd => zstd::bulk::compress(data, 19).expect("zstd level 19 is valid"),
        }
    }

    /// Decompresses at most `limit` bytes; more is an error.
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, ChannelError> {
        let mut out = Vec::new();
        let read = match self {
            Compression::Zlib => flate2::read::ZlibDecoder::new(data)
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
            Compression::Brotli => brotli::Decompressor::new(data, 4096)
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
            Compression::Zstd => zstd::stream::read::Decoder::new(data)
                .and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut out)),
        };
        read.map_err(|e| ChannelError::Decompress(format!("{}: {e}", self.name())))?;
        if out.len() > limit {
            return Err(ChannelError::TooLarge(limit));
        }
        Ok(out)
    }
}

/// Why a channel does not decode to a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("empty channel")]
    Empty,
    #[error("unknown compression {0}")]
    UnknownCompression(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("batch larger than {0} bytes once decompressed")]
    TooLarge(usize),
    #[error("batch format version {0} is not {FORMAT_VERSION}")]
    Version(u8),
    #[error("malformed batch: {0}")]
    Malformed(&'static str),
}

/// A batch as one channel.
pub fn encode_channel(batch: &Batch, compression: Compression) -> Vec<u8> {
    let raw = encode_batch(batch);
    let mut out = vec![compression as u8];
    out.extend_from_slice(&compression.compress(&raw));
    out
}

/// A channel back to its batch; refuses anything malformed, never panics.
pub fn decode_channel(channel: &[u8]) -> Result<Batch, ChannelError> {
    let (&kind, body) = channel.split_first().ok_or(ChannelError::Empty)?;
    let compression = Compression::from_byte(kind).ok_or(ChannelError::UnknownCompression(kind))?;
    let raw = compression.decompress(body, MAX_BATCH_BYTES)?;
    decode_batch(&raw)
}

/// The uncompressed encoding, in columns so that the compressor sees like next to like: block
/// and mini-block times (varint deltas), hash prefixes, then the transactions, themselves in
/// columns (see [`TxColumns`]).
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    put_varint(&mut out, batch.first_block().unwrap_or_default());
    put_varint(&mut out, batch.blocks.len() as u64);
    put_varint(&mut out, batch.first_mini);
    put_varint(&mut out, batch.chain_id);
    let (mut times, mut hashes) = (Vec::new(), Vec::new());
    let mut txs = TxColumns::default();
    let mut previous_open = 0u64;
    let count = batch.blocks.len();
    for (i, block) in batch.blocks.iter().enumerate() {
        put_signed(
            &mut times,
            block.opened_at_us as i128 - previous_open as i128,
        );
        previous_open = block.opened_at_us;
        put_varint(&mut times, block.minis.len() as u64);
        let hash_len = if i + 1 == count {
            32
        } else {
            HASH_PREFIX_BYTES
        };
        hashes.extend_from_slice(&block.hash[..hash_len]);
        let mut previous_time = block.opened_at_us;
        for mini in &block.minis {
            put_signed(
                &mut times,
                mini.timestamp_us as i128 - previous_time as i128,
            );
            previous_time = mini.timestamp_us;
            put_varint(&mut times, mini.transactions.len() as u64);
            for tx in &mini.transactions {
                txs.push(tx, batch.chain_id);
            }
        }
    }
    for column in [&times, &hashes] {
        put_varint(&mut out, column.len() as u64);
        out.extend_from_slice(column);
    }
    txs.write(&mut out);
    out
}

pub fn decode_batch(raw: &[u8]) -> Result<Batch, ChannelError> {
    let mut r = Reader(raw);
    let version = r.byte()?;
    if version != FORMAT_VERSION {
        return Err(ChannelError::Version(version));
    }
    let first = r.varint()?;
    let count = r.varint()? as usize;
    if count == 0 || count > MAX_BATCH_BLOCKS {
        return Err(ChannelError::Malformed("block count"));
    }
    let first_mini = r.varint()?;
    let chain_id = r.varint()?;
    let mut times = Reader(column(&mut r)?);
    let mut hashes = Reader(column(&mut r)?);
    let mut txs = TxReader::read(&mut r, chain_id)?;
    let mut blocks = Vec::with_capacity(count.min(1024));
    let mut previous_open = 0u64;
    for i in 0..count {
        let opened_at_us = times.offset(previous_open)?;
        previous_open = opened_at_us;
        let minis_len = times.varint()? as usize;
        let hash_len = if i + 1 == count {
            32
        } else {
            HASH_PREFIX_BYTES
        };
        let mut hash = B256::ZERO;
        hash[..hash_len].copy_from_slice(hashes.take(hash_len)?);
        let mut minis = Vec::with_capacity(minis_len.min(1024));
        let mut previous_time = opened_at_us;
        for _ in 0..minis_len {
            let timestamp_us = times.offset(previous_time)?;
            previous_time = timestamp_us;
            let n = times.varint()? as usize;
            if n == 0 || n > MAX_MINI_TXS {
                return Err(ChannelError::Malformed("transaction count"));
            }
            let mut transactions = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                transactions.push(txs.next()?);
            }
            minis.push(BatchMini {
                timestamp_us,
                transactions,
            });
        }
        let number = first
            .checked_add(i as u64)
            .ok_or(ChannelError::Malformed("block number"))?;
        blocks.push(BatchBlock {
            number,
            opened_at_us,
            hash,
            minis,
        });
    }
    if !(times.0.is_empty() && hashes.0.is_empty() && txs.is_empty() && r.0.is_empty()) {
        return Err(ChannelError::Malformed("trailing bytes"));
    }
    Ok(Batch {
        chain_id,
        first_mini,
        blocks,
    })
}

fn column<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], ChannelError> {
    let len = r.varint()? as usize;
    r.take(len)
}

/// How a transaction is stored: as its raw bytes, or (an EIP-1559 transaction for this chain
/// without an access list, the bulk of traffic) as its fields in columns, which compress far
/// better than the interleaved RLP. The field form is used only when it gives back the exact
/// raw bytes.
const TX_RAW: u8 = 0;
const TX_1559: u8 = 1;
/// In a kind byte: the signature's y parity.
const PARITY_BIT: u8 = 0x80;

#[derive(Default)]
struct TxColumns {
    kinds: Vec<u8>,
    raws: Vec<u8>,
    numbers: Vec<u8>,
    tos: Vec<u8>,
    values: Vec<u8>,
    inputs: Vec<u8>,
    signatures: Vec<u8>,
}

impl TxColumns {
    fn push(&mut self, raw: &[u8], chain_id: u64) {
        if let Some(fields) = compact_1559(raw, chain_id) {
            let (tx, signature) = fields;
            self.kinds
                .push(TX_1559 | if signature.v() { PARITY_BIT } else { 0 });
            for n in [
                tx.nonce,
                tx.gas_limit,
                tx.max_fee_per_gas as u64,
                tx.max_priority_fee_per_gas as u64,
            ] {
                put_varint(&mut self.numbers, n);
            }
            match tx.to {
                TxKind::Create => self.tos.push(0),
                TxKind::Call(to) => {
                    self.tos.push(1);
                    self.tos.extend_from_slice(to.as_slice());
                }
            }
            let value = tx.value.to_be_bytes_trimmed_vec();
            self.values.push(value.len() as u8);
            self.values.extend_from_slice(&value);
            put_varint(&mut self.inputs, tx.input.len() as u64);
            self.inputs.extend_from_slice(&tx.input);
            self.signatures
                .extend_from_slice(&signature.r().to_be_bytes::<32>());
            self.signatures
                .extend_from_slice(&signature.s().to_be_bytes::<32>());
            return;
        }
        self.kinds.push(TX_RAW);
        put_varint(&mut self.raws, raw.len() as u64);
        self.raws.extend_from_slice(raw);
    }

    fn write(&self, out: &mut Vec<u8>) {
        for column in [
            &self.kinds,
            &self.raws,
            &self.numbers,
            &self.tos,
            &self.values,
            &self.inputs,
            &self.signatures,
        ] {
            put_varint(out, column.len() as u64);
            out.extend_from_slice(column);
        }
    }
}

/// The fields of `raw` if it is an EIP-1559 transaction for `chain_id` without an access list
/// whose fees fit 64 bits, and those fields encode back to exactly `raw`.
fn compact_1559(raw: &[u8], chain_id: u64) -> Option<(TxEip1559, Signature)> {
    if raw.first() != Some(&2) {
        return None;
    }
    let TxEnvelope::Eip1559(signed) = TxEnvelope::decode_2718(&mut &raw[..]).ok()? else {
        return None;
    };
    let tx = signed.tx();
    if tx.chain_id != chain_id
        || !tx.access_list.is_empty()
        || u64::try_from(tx.max_fee_per_gas).is_err()
        || u64::try_from(tx.max_priority_fee_per_gas).is_err()
    {
        return None;
    }
    let fields = (tx.clone(), *signed.signature());
    (rebuild_1559(&fields.0, fields.1).as_slice() == raw).then_some(fields)
}

fn rebuild_1559(tx: &TxEip1559, signature: Signature) -> Vec<u8> {
    TxEnvelope::Eip1559(Signed::new_unhashed(tx.clone(), signature)).encoded_2718()
}

struct TxReader<'a> {
    chain_id: u64,
    kinds: Reader<'a>,
    raws: Reader<'a>,
    numbers: Reader<'a>,
    tos: Reader<'a>,
    values: Reader<'a>,
    inputs: Reader<'a>,
    signatures: Reader<'a>,
}

impl<'a> TxReader<'a> {
    fn read(r: &mut Reader<'a>, chain_id: u64) -> Result<Self, ChannelError> {
        Ok(Self {
            chain_id,
            kinds: Reader(column(r)?),
            raws: Reader(column(r)?),
            numbers: Reader(column(r)?),
            tos: Reader(column(r)?),
            values: Reader(column(r)?),
            inputs: Reader(column(r)?),
            signatures: Reader(column(r)?),
        })
    }

    fn next(&mut self) -> Result<Bytes, ChannelError> {
        let kind = self.kinds.byte()?;
        match kind & !PARITY_BIT {
            TX_RAW => {
                let len = self.raws.varint()? as usize;
                if len == 0 || len > MAX_TX_BYTES {
                    return Err(ChannelError::Malformed("transaction length"));
                }
                Ok(Bytes::copy_from_slice(self.raws.take(len)?))
            }
            TX_1559 => {
                let nonce = self.numbers.varint()?;
                let gas_limit = self.numbers.varint()?;
                let max_fee = self.numbers.varint()?;
                let tip = self.numbers.varint()?;
                let to = match self.tos.byte()? {
                    0 => TxKind::Create,
                    1 => TxKind::Call(Address::from_slice(self.tos.take(20)?)),
                    _ => return Err(ChannelError::Malformed("recipient")),
                };
                let value_len = self.values.byte()? as usize;
                if value_len > 32 {
                    return Err(ChannelError::Malformed("value"));
                }
                let value = U256::from_be_slice(self.values.take(value_len)?);
                let input_len = self.inputs.varint()? as usize;
                if input_len > MAX_TX_BYTES {
                    return Err(ChannelError::Malformed("input length"));
                }
                let input = Bytes::copy_from_slice(self.inputs.take(input_len)?);
                let r = U256::from_be_slice(self.signatures.take(32)?);
                let s = U256::from_be_slice(self.signatures.take(32)?);
                let tx = TxEip1559 {
                    chain_id: self.chain_id,
                    nonce,
                    gas_limit,
                    max_fee_per_gas: u128::from(max_fee),
                    max_priority_fee_per_gas: u128::from(tip),
                    to,
                    value,
                    access_list: Default::default(),
                    input,
                };
                let signature = Signature::new(r, s, kind & PARITY_BIT != 0);
                Ok(rebuild_1559(&tx, signature).into())
            }
            _ => Err(ChannelError::Malformed("transaction kind")),
        }
    }

    fn is_empty(&self) -> bool {
        [
            &self.kinds,
            &self.raws,
            &self.numbers,
            &self.tos,
            &self.values,
            &self.inputs,
            &self.signatures,
        ]
        .iter()
        .all(|c| c.0.is_empty())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A signed delta, zigzag-encoded (clocks may step back between blocks).
fn put_signed(out: &mut Vec<u8>, v: i128) {
    let v = v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ChannelError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(ChannelError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ChannelError> {
        if self.0.len() < n {
            return Err(ChannelError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, ChannelError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChannelError::Malformed("varint too long"))
    }

    /// `base` moved by a zigzag delta; must stay a valid time.
    fn offset(&mut self, base: u64) -> Result<u64, ChannelError> {
        let z = self.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let v = base as i128 + delta as i128;
        u64::try_from(v).map_err(|_| ChannelError::Malformed("time out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Batch {
        let tx = |n: u8, len: usize| Bytes::from(vec![n; len]);
        Batch {
            chain_id: 31337,
            first_mini: 40,
            blocks: vec![
                BatchBlock {
                    number: 7,
                    opened_at_us: 1_700_000_000_000_000,
                    hash: B256::from([1; 32]),
                    minis: vec![
                        BatchMini {
                            timestamp_us: 1_700_000_000_000_200,
                            transactions: vec![tx(1, 110), tx(2, 111)],
                        },
                        BatchMini {
                            timestamp_us: 1_700_000_000_050_000,
                            transactions: vec![tx(3, 200)],
                        },
                    ],
                },
                BatchBlock {
                    number: 8,
                    opened_at_us: 1_700_000_001_000_000,
                    hash: B256::from([2; 32]),
                    minis: vec![],
                },
            ],
        }
    }

    fn prefixed(mut batch: Batch) -> Batch {
        let last = batch.blocks.len() - 1;
        for b in &mut batch.blocks[..last] {
            b.hash[HASH_PREFIX_BYTES..].fill(0);
        }
        batch
    }

    #[test]
    fn batches_round_trip_through_every_compression() {
        let batch = sample();
        for c in Compression::ALL {
            let channel = encode_channel(&batch, c);
            assert_eq!(channel[0], c as u8);
            assert_eq!(
                decode_channel(&channel).unwrap(),
                prefixed(batch.clone()),
                "{c:?}"
            );
        }
        assert_eq!(batch.transaction_count(), 3);
    }

    #[test]
    fn malformed_channels_are_errors_not_panics() {
        assert_eq!(decode_channel(&[]), Err(ChannelError::Empty));
        assert_eq!(
            decode_channel(&[9, 1, 2]),
            Err(ChannelError::UnknownCompression(9))
        );
        let raw = encode_batch(&sample());
        for cut in 0..raw.len() {
            assert!(decode_batch(&raw[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
        assert!(decode_channel(&[Compression::Zlib as u8, 1, 2, 3]).is_err());
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let zeros = vec![0u8; 1 << 20];
        for c in Compression::ALL {
            let packed = c.compress(&zeros);
            assert_eq!(
                c.decompress(&packed, 1 << 10),
                Err(ChannelError::TooLarge(1 << 10))
            );
            assert_eq!(c.decompress(&packed, 1 << 20).unwrap().len(), 1 << 20);
        }
    }

    proptest! {
        #[test]
        fn random_batches_round_trip(
            first in 1u64..1_000_000,
            opens in proptest::collection::vec(0u64..u64::MAX / 4, 1..6),
            txs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..12),
        ) {
            let blocks = opens.iter().enumerate().map(|(i, &open)| BatchBlock {
                number: first + i as u64,
                opened_at_us: open,
                hash: B256::from([i as u8; 32]),
                minis: if txs.is_empty() { vec![] } else {
                    vec![BatchMini { timestamp_us: open + 5, transactions: txs.iter().cloned().map(Bytes::from).collect() }]
                },
            }).collect();
            let batch = Batch { chain_id: 7, first_mini: 1, blocks };
            let decoded = decode_batch(&encode_batch(&batch)).unwrap();
            prop_assert_eq!(decoded, prefixed(batch));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
            let _ = decode_channel(&bytes);
        }
    }
}
