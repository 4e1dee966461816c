//! What replication puts into bytes: a consensus block's payload (mini-block log records), the
//! post-state commitment, the anchor, and the keys and encodings of blocks kept in RocksDB.
//!
//! - **Payload.** A consensus block carries mini-block log records (`LogRecord`): at most one
//!   mini-block (the transactions, the EVM block context it executes in, its receipts root) and
//!   seals of EVM blocks; each record as a u32 length and its bytes.
//! - **Commitment.** keccak256 chained over the parent's commitment, each mini-block's header
//!   hash and a canonical digest of its state diff, and each seal: equal commitments mean equal
//!   receipts and an equal post-state (the parent's being equal by induction).

use alloy_primitives::{B256, keccak256};
use rtchain_consensus::{Block, Certificate, Digest, Height, Msg, View};
use rtchain_exec::StateDiff;
use rtchain_state::LogRecord;

/// First byte of every transport message: what it is for.
pub const KIND_ENGINE: u8 = 0;
pub const KIND_SYNC_REQUEST: u8 = 1;
pub const KIND_SYNC_RESPONSE: u8 = 2;
pub const KIND_TXS: u8 = 3;
/// A validator's signature over an output root: block (8) | root (32) | signature (65).
pub const KIND_OUTPUT_SIGNATURE: u8 = 4;

/// An output-root signature message.
pub fn encode_output_signature(block: u64, root: B256, signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 32 + signature.len());
    out.push(KIND_OUTPUT_SIGNATURE);
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(root.as_slice());
    out.extend_from_slice(signature);
    out
}

/// (block, root, signature) of an output-root signature message (after its kind byte).
pub fn decode_output_signature(msg: &[u8]) -> Option<(u64, B256, alloy_primitives::Bytes)> {
    (msg.len() == 8 + 32 + 65).then(|| {
        (
            u64::from_be_bytes(msg[..8].try_into().expect("8")),
            B256::from_slice(&msg[8..40]),
            alloy_primitives::Bytes::copy_from_slice(&msg[40..]),
        )
    })
}

/// Why a payload is refused (the block gets `Verified { ok: false }`).
#[derive(Debug)]
pub struct Invalid(pub String);

/// Records in one payload at most: a mini-block and the seals around it.
const PAYLOAD_RECORDS_MAX: usize = 4;

/// The payload: log records, each as u32 length and bytes.
pub fn encode_payload(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        out.extend_from_slice(&(buf.len() as u32).to_be_bytes());
        out.extend_from_slice(&buf);
    }
    out
}

pub fn decode_payload(mut bytes: &[u8]) -> Result<Vec<LogRecord>, Invalid> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(Invalid("truncated payload".into()));
        }
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
        let body = bytes
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| Invalid("truncated payload record".into()))?;
        if out.len() == PAYLOAD_RECORDS_MAX {
            return Err(Invalid("too many records in one payload".into()));
        }
        out.push(
            LogRecord::decode(body).ok_or_else(|| Invalid("malformed payload record".into()))?,
        );
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}

/// keccak256 over a canonical encoding of a state diff (sorted accounts, slots and codes).
pub fn diff_digest(diff: &StateDiff) -> B256 {
    let mut buf = Vec::new();
    let mut accounts: Vec<_> = diff.accounts.iter().collect();
    accounts.sort_by_key(|(a, _)| **a);
    for (address, change) in accounts {
        buf.extend_from_slice(address.as_slice());
        match &change.info {
            Some(info) => {
                buf.push(1);
                buf.extend_from_slice(&info.balance.to_be_bytes::<32>());
                buf.extend_from_slice(&info.nonce.to_be_bytes());
                buf.extend_from_slice(info.code_hash.as_slice());
            }
            None => buf.push(0),
        }
        buf.push(change.storage_cleared as u8);
        let mut slots: Vec<_> = change.storage.iter().collect();
        slots.sort_by_key(|(k, _)| **k);
        buf.extend_from_slice(&(slots.len() as u64).to_be_bytes());
        for (k, v) in slots {
            buf.extend_from_slice(&k.to_be_bytes::<32>());
            buf.extend_from_slice(&v.to_be_bytes::<32>());
        }
    }
    let mut codes: Vec<_> = diff.codes.keys().collect();
    codes.sort();
    for hash in codes {
        buf.extend_from_slice(hash.as_slice());
    }
    keccak256(&buf)
}

/// The commitment after a block whose records contributed `parts` (see the module docs).
pub fn chain_commitment(parent: B256, parts: &[u8]) -> B256 {
    let mut buf = b"rtchain/commit/v1".to_vec();
    buf.extend_from_slice(parent.as_slice());
    buf.extend_from_slice(parts);
    keccak256(&buf)
}

/// The delivered tip: the last block committed here, as the anchor records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub view: View,
    pub height: Height,
    pub digest: Digest,
    pub commitment: B256,
}

impl Tip {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(80);
        b.extend_from_slice(&self.view.to_be_bytes());
        b.extend_from_slice(&self.height.to_be_bytes());
        b.extend_from_slice(self.digest.as_slice());
        b.extend_from_slice(self.commitment.as_slice());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == 80).then(|| Self {
            view: u64::from_be_bytes(b[..8].try_into().expect("8")),
            height: u64::from_be_bytes(b[8..16].try_into().expect("8")),
            digest: B256::from_slice(&b[16..48]),
            commitment: B256::from_slice(&b[48..80]),
        })
    }
}

/// Key of the anchor (the delivered tip) in RocksDB's consensus entries.
pub const ANCHOR_KEY: &[u8] = b"anchor";
/// Key of the digest of the block whose delivery began (see `delivery`).
pub const DELIVERING_KEY: &[u8] = b"delivering";
/// Prefix of blocks stored because we voted for or proposed them.
pub const BLOCK_PREFIX: &[u8] = b"block/";

/// Key of a block we voted for or proposed, until it is settled.
pub fn block_key(height: Height, digest: &Digest) -> Vec<u8> {
    let mut k = BLOCK_PREFIX.to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k.extend_from_slice(digest.as_slice());
    k
}

/// Key of a finalized block kept for peers that catch up.
pub fn final_key(height: Height) -> Vec<u8> {
    let mut k = b"final/".to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k
}

/// A finalized block as kept for catch-up: the block, then its finalization certificate if we
/// hold it.
pub fn encode_final(block: &Block, cert: Option<&Certificate>) -> Vec<u8> {
    let body = Msg::Block(Box::new(block.clone())).encode();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    if let Some(cert) = cert {
        out.extend_from_slice(&Msg::Certificate(Box::new(cert.clone())).encode());
    }
    out
}

pub fn decode_final(bytes: &[u8]) -> Option<(Block, Option<Certificate>)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    let Ok(Msg::Block(block)) = Msg::decode(body) else {
        return None;
    };
    let rest = &bytes[4 + len..];
    let cert = if rest.is_empty() {
        None
    } else {
        match Msg::decode(rest) {
            Ok(Msg::Certificate(cert)) => Some(*cert),
            _ => return None,
        }
    };
    Some((*block, cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, U256};
    use rtchain_exec::AccountChange;

    #[test]
    fn the_diff_digest_ignores_map_order_and_sees_every_change() {
        let mut a = StateDiff::default();
        for i in 0..20u8 {
            let mut change = AccountChange::default();
            change.storage.insert(U256::from(i), U256::from(i * 2));
            a.accounts.insert(Address::repeat_byte(i), change);
        }
        let mut b = StateDiff::default();
        for i in (0..20u8).rev() {
            b.accounts.insert(
                Address::repeat_byte(i),
                a.accounts[&Address::repeat_byte(i)].clone(),
            );
        }
        assert_eq!(diff_digest(&a), diff_digest(&b));
        b.accounts
            .get_mut(&Address::repeat_byte(3))
            .unwrap()
            .storage
            .insert(U256::from(3), U256::from(7));
        assert_ne!(diff_digest(&a), diff_digest(&b));
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let records = vec![LogRecord::Seal {
            block_number: 4,
            last_mini_block: 9,
            timestamp_us: 1,
        }];
        let bytes = encode_payload(&records);
        assert_eq!(decode_payload(&bytes).unwrap(), records);
        assert!(decode_payload(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_payload(&[0, 0, 0, 1, 9]).is_err());
        assert!(decode_payload(&[]).unwrap().is_empty());
    }

    #[test]
    fn the_anchor_round_trips_and_refuses_other_lengths() {
        let tip = Tip {
            view: 7,
            height: 5,
            digest: B256::repeat_byte(1),
            commitment: B256::repeat_byte(2),
        };
        assert_eq!(Tip::decode(&tip.encode()), Some(tip));
        assert_eq!(Tip::decode(&tip.encode()[..79]), None);
    }
}
