//! The format of historical state, as reth keeps it: per-block change sets and history indices,
//! not copies of the state.
//!
//! - A **history record** is keyed by what changed and the block that changed it, and holds the
//!   value from before that block: `a | address | block` -> the account record (empty: the
//!   account did not exist), `s | address | slot | block` -> the 32-byte slot value (empty:
//!   zero). The state after block `N` is then one seek per read: the first record of the key
//!   with a block above `N` holds the value as of `N`; if there is none, the key has not changed
//!   since and the flat state holds it.
//! - A **change set** is keyed by block and lists the history keys (without the block) that the
//!   block wrote, so that pruning a block deletes exactly its records, without a scan.
//!
//! Records of a block `b` are only ever read for blocks below `b`, so keeping the state of the
//! blocks from `oldest` on means keeping the records of the blocks above `oldest`.

use alloy_primitives::{Address, U256};

use crate::error::StoreError;

const ACCOUNT: u8 = b'a';
const STORAGE: u8 = b's';
const ACCOUNT_PREFIX_LEN: usize = 1 + 20;
const STORAGE_PREFIX_LEN: usize = 1 + 20 + 32;

/// How much history a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryMode {
    /// Only the newest state (and no history records are written).
    #[default]
    Off,
    /// The state after each of the last `n` blocks below the head, and the head's.
    Window(u64),
    /// The state after every block since history was first enabled.
    Archive,
}

impl HistoryMode {
    /// The oldest block to keep with `head` as the newest (`None`: keep everything).
    pub fn oldest_to_keep(&self, head: u64) -> Option<u64> {
        match self {
            HistoryMode::Off => Some(head),
            HistoryMode::Window(n) => Some(head.saturating_sub(*n)),
            HistoryMode::Archive => None,
        }
    }
}

/// The history key of an account without its block.
pub fn account_prefix(address: &Address) -> [u8; ACCOUNT_PREFIX_LEN] {
    let mut k = [0u8; ACCOUNT_PREFIX_LEN];
    k[0] = ACCOUNT;
    k[1..].copy_from_slice(address.as_slice());
    k
}

/// The history key of a storage slot without its block.
pub fn storage_prefix(address: &Address, slot: &U256) -> [u8; STORAGE_PREFIX_LEN] {
    let mut k = [0u8; STORAGE_PREFIX_LEN];
    k[0] = STORAGE;
    k[1..21].copy_from_slice(address.as_slice());
    k[21..].copy_from_slice(&slot.to_be_bytes::<32>());
    k
}

/// A history key: its prefix followed by the block number, big-endian, so that one key's
/// records sort by block.
pub fn record_key(prefix: &[u8], block: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&block.to_be_bytes());
    k
}

/// Whether `key` is a record of `prefix` (and not of a longer key that starts the same way).
pub fn is_record_of(key: &[u8], prefix: &[u8]) -> bool {
    key.len() == prefix.len() + 8 && key.starts_with(prefix)
}

/// Change set of one block: the history keys it wrote, concatenated (the first byte of each
/// says its length).
#[derive(Debug, Default)]
pub struct ChangeSet {
    bytes: Vec<u8>,
    entries: usize,
}

impl ChangeSet {
    pub fn push(&mut self, prefix: &[u8]) {
        self.bytes.extend_from_slice(prefix);
        self.entries += 1;
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The history keys a stored change set lists.
pub fn decode_change_set(mut bytes: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let mut out = Vec::new();
    while let Some(&tag) = bytes.first() {
        let len = match tag {
            ACCOUNT => ACCOUNT_PREFIX_LEN,
            STORAGE => STORAGE_PREFIX_LEN,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "change set entry of kind {other:#04x}"
                )));
            }
        };
        if bytes.len() < len {
            return Err(StoreError::Corrupt("truncated change set".into()));
        }
        let (entry, rest) = bytes.split_at(len);
        out.push(entry);
        bytes = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_sets_round_trip() {
        let a = Address::repeat_byte(7);
        let mut set = ChangeSet::default();
        set.push(&account_prefix(&a));
        set.push(&storage_prefix(&a, &U256::from(9)));
        set.push(&account_prefix(&Address::ZERO));
        let decoded = decode_change_set(set.as_bytes()).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0], account_prefix(&a));
        assert_eq!(decoded[1], storage_prefix(&a, &U256::from(9)));
        assert_eq!(decoded[2], account_prefix(&Address::ZERO));
    }

    #[test]
    fn corrupt_change_sets_are_errors() {
        assert!(decode_change_set(&[b'x'; 21]).is_err());
        assert!(decode_change_set(&account_prefix(&Address::ZERO)[..20]).is_err());
        assert!(decode_change_set(&[]).unwrap().is_empty());
    }

    #[test]
    fn records_sort_by_key_then_block() {
        let a = account_prefix(&Address::repeat_byte(1));
        let k1 = record_key(&a, 1);
        let k2 = record_key(&a, 256);
        assert!(k1 < k2);
        assert!(is_record_of(&k2, &a));
        // A slot record of the same address never reads as an account record.
        let s = record_key(&storage_prefix(&Address::repeat_byte(1), &U256::ZERO), 1);
        assert!(!is_record_of(&s, &a));
    }

    #[test]
    fn window_keeps_the_last_blocks() {
        assert_eq!(HistoryMode::Window(100).oldest_to_keep(1000), Some(900));
        assert_eq!(HistoryMode::Window(100).oldest_to_keep(10), Some(0));
        assert_eq!(HistoryMode::Archive.oldest_to_keep(1000), None);
        assert_eq!(HistoryMode::Off.oldest_to_keep(1000), Some(1000));
    }
}
