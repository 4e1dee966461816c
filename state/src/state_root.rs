//! The Ethereum state root, kept incrementally: each sealed block updates only the trie paths
//! of the accounts and slots it changed, reading the rest of the trie from RocksDB by path.
//!
//! Trie keys in the `trie` column family: `0x00 || nibbles` for the account trie and
//! `0x01 || keccak(address) || nibbles` for each account's storage trie (one byte per nibble,
//! so a storage trie is one contiguous key range and a destroyed account's trie is one range
//! delete).

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_rlp::{Decodable, Encodable};
use alloy_trie::{
    EMPTY_ROOT_HASH, Nibbles, TrieAccount,
    root::{state_root_unsorted, storage_root_unhashed},
};
use rtchain_exec::StateDiff;

use crate::{
    error::StoreError,
    store::{StoreView, TrieWrites},
    trie::{MerkleTrie, TrieError, TrieStore},
};

const ACCOUNT_TRIE: u8 = 0x00;
const STORAGE_TRIE: u8 = 0x01;

/// A trie's nodes inside a store view, under one key prefix.
struct PrefixedTrieStore<'a, 'b> {
    view: &'a StoreView<'b>,
    prefix: Vec<u8>,
}

impl TrieStore for PrefixedTrieStore<'_, '_> {
    fn load(&self, path: &Nibbles) -> Result<Option<Vec<u8>>, TrieError> {
        let key = node_key(&self.prefix, path);
        self.view
            .trie_node(&key)
            .map_err(|e| TrieError::Store(e.to_string()))
    }
}

fn node_key(prefix: &[u8], path: &Nibbles) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + path.len());
    key.extend_from_slice(prefix);
    key.extend(path.to_vec());
    key
}

fn storage_prefix(address: &Address) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(33);
    prefix.push(STORAGE_TRIE);
    prefix.extend_from_slice(keccak256(address).as_slice());
    prefix
}

fn trie_err(e: TrieError) -> StoreError {
    StoreError::Corrupt(format!("trie: {e}"))
}

fn encode_slot_value(value: &U256) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    value.encode(&mut out);
    out
}

fn encode_account(account: &TrieAccount) -> Vec<u8> {
    let mut out = Vec::with_capacity(110);
    account.encode(&mut out);
    out
}

/// Applies `diff` to the trie whose root is `parent_root` (as stored in `view`), returning the
/// new root and the node writes that make the store match it.
pub fn apply_diff(
    view: &StoreView<'_>,
    parent_root: B256,
    diff: &StateDiff,
) -> Result<(B256, TrieWrites), StoreError> {
    let mut writes = TrieWrites::default();
    let account_store = PrefixedTrieStore {
        view,
        prefix: vec![ACCOUNT_TRIE],
    };
    let mut accounts = MerkleTrie::open(parent_root);
    // Sorted so the writes, and any error, are the same on every validator.
    let mut changed: Vec<_> = diff.accounts.iter().collect();
    changed.sort_by_key(|(address, _)| **address);
    for (address, change) in changed {
        let hashed = keccak256(address);
        let prefix = storage_prefix(address);
        let Some(info) = &change.info else {
            accounts.remove(&account_store, hashed).map_err(trie_err)?;
            let mut end = prefix.clone();
            end.push(0xff);
            writes.delete_ranges.push((prefix, end));
            continue;
        };
        let old_storage_root = match accounts.get(&account_store, hashed).map_err(trie_err)? {
            Some(bytes) => {
                TrieAccount::decode(&mut &bytes[..])
                    .map_err(|e| StoreError::Corrupt(format!("account leaf of {address}: {e}")))?
                    .storage_root
            }
            None => EMPTY_ROOT_HASH,
        };
        let storage_root = if change.storage_cleared || !change.storage.is_empty() {
            let start_root = if change.storage_cleared {
                let mut end = prefix.clone();
                end.push(0xff);
                writes.delete_ranges.push((prefix.clone(), end));
                EMPTY_ROOT_HASH
            } else {
                old_storage_root
            };
            let store = PrefixedTrieStore {
                view,
                prefix: prefix.clone(),
            };
            let mut storage = MerkleTrie::open(start_root);
            let mut slots: Vec<_> = change.storage.iter().collect();
            slots.sort_by_key(|(slot, _)| **slot);
            for (slot, value) in slots {
                let key = keccak256(slot.to_be_bytes::<32>());
                if value.is_zero() {
                    storage.remove(&store, key).map_err(trie_err)?;
                } else {
                    storage
                        .insert(&store, key, encode_slot_value(value))
                        .map_err(trie_err)?;
                }
            }
            let root = storage.root_hash();
            writes.storage_roots.push((*address, root));
            let updates = storage.take_updates();
            // After a range delete of the whole trie, deletes inside it are redundant.
            if !change.storage_cleared {
                writes
                    .deletes
                    .extend(updates.deletes.iter().map(|p| node_key(&prefix, p)));
            }
            writes.puts.extend(
                updates
                    .puts
                    .iter()
                    .map(|(p, node)| (node_key(&prefix, p), node.clone())),
            );
            root
        } else {
            old_storage_root
        };
        let leaf = TrieAccount {
            nonce: info.nonce,
            balance: info.balance,
            storage_root,
            code_hash: info.code_hash,
        };
        accounts
            .insert(&account_store, hashed, encode_account(&leaf))
            .map_err(trie_err)?;
    }
    let root = accounts.root_hash();
    let updates = accounts.take_updates();
    let account_prefix = [ACCOUNT_TRIE];
    writes
        .deletes
        .extend(updates.deletes.iter().map(|p| node_key(&account_prefix, p)));
    writes.puts.extend(
        updates
            .puts
            .iter()
            .map(|(p, node)| (node_key(&account_prefix, p), node.clone())),
    );
    Ok((root, writes))
}

/// The state root recomputed from the flat state alone, ignoring stored trie nodes: the check
/// that the incremental root never drifted.
pub fn full_state_root(view: &StoreView<'_>) -> Result<B256, StoreError> {
    let mut leaves: Vec<(B256, TrieAccount)> = Vec::new();
    view.for_each_account(|address, info| {
        let mut slots: Vec<(B256, U256)> = Vec::new();
        view.for_each_slot(address, |slot, value| slots.push((B256::from(slot), value)))?;
        let storage_root = storage_root_unhashed(slots);
        let leaf = TrieAccount {
            nonce: info.nonce,
            balance: info.balance,
            storage_root,
            code_hash: info.code_hash,
        };
        leaves.push((keccak256(address), leaf));
        Ok(())
    })?;
    Ok(state_root_unsorted(leaves))
}

/// The storage-trie nodes of `address` that `writes` puts (RLP encodings), for keeping them by
/// hash.
pub fn storage_nodes_written<'a>(
    writes: &'a TrieWrites,
    address: &Address,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let prefix = storage_prefix(address);
    writes
        .puts
        .iter()
        .filter(move |(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v.as_slice())
}

/// The storage root of `address` in the state whose root is `root`.
pub fn storage_root(
    view: &StoreView<'_>,
    root: B256,
    address: Address,
) -> Result<B256, StoreError> {
    Ok(prove(view, root, address, &[])?
        .account
        .map_or(EMPTY_ROOT_HASH, |a| a.storage_root))
}

/// A storage proof (EIP-1186 `storageProof[].proof` shape: the RLP of every hash-referenced
/// node from the root down) of `slot` in a storage trie whose root is `root`, with nodes loaded
/// by their hash; and the slot's value. Works for any root whose nodes `load` holds, so for
/// tries that have since changed.
pub fn prove_by_hash(
    root: B256,
    slot: B256,
    load: impl Fn(B256) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<(U256, Vec<Bytes>), StoreError> {
    use alloy_trie::nodes::TrieNode;
    if root == EMPTY_ROOT_HASH {
        return Ok((U256::ZERO, Vec::new()));
    }
    let key = alloy_trie::Nibbles::unpack(keccak256(slot));
    let mut proof = Vec::new();
    let mut depth = 0;
    let mut node =
        load(root)?.ok_or_else(|| StoreError::Corrupt(format!("trie node {root} not kept")))?;
    proof.push(Bytes::copy_from_slice(&node));
    // Bound: a path is at most 64 nibbles, one node per nibble at worst (plus its leaf).
    for _ in 0..=64 {
        let decoded = TrieNode::decode(&mut &node[..])
            .map_err(|e| StoreError::Corrupt(format!("trie node: {e}")))?;
        let child = match decoded {
            TrieNode::EmptyRoot => return Ok((U256::ZERO, proof)),
            TrieNode::Leaf(leaf) => {
                if key.slice(depth..) != leaf.key {
                    return Ok((U256::ZERO, proof));
                }
                let value = U256::decode(&mut &leaf.value[..])
                    .map_err(|e| StoreError::Corrupt(format!("storage leaf: {e}")))?;
                return Ok((value, proof));
            }
            TrieNode::Extension(ext) => {
                if key.len() < depth + ext.key.len()
                    || key.slice(depth..depth + ext.key.len()) != ext.key
                {
                    return Ok((U256::ZERO, proof));
                }
                depth += ext.key.len();
                ext.child
            }
            TrieNode::Branch(branch) => {
                let Some(nibble) = key.get(depth) else {
                    return Ok((U256::ZERO, proof));
                };
                depth += 1;
                let branch = branch.as_ref();
                let mut children = branch.children();
                match children.find(|(n, _)| *n == nibble) {
                    Some((_, Some(child))) => child.clone(),
                    _ => return Ok((U256::ZERO, proof)),
                }
            }
        };
        node = match child.as_hash() {
            Some(hash) => {
                let bytes = load(hash)?
                    .ok_or_else(|| StoreError::Corrupt(format!("trie node {hash} not kept")))?;
                proof.push(Bytes::copy_from_slice(&bytes));
                bytes
            }
            // Shorter than 32 bytes: embedded in its parent, which the proof already holds.
            None => child.to_vec(),
        };
    }
    Err(StoreError::Corrupt("trie path longer than a key".into()))
}

/// An EIP-1186 proof of one account and some of its slots against `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountProof {
    pub account: Option<TrieAccount>,
    pub account_proof: Vec<Bytes>,
    pub storage: Vec<(B256, U256, Vec<Bytes>)>,
}

pub fn prove(
    view: &StoreView<'_>,
    root: B256,
    address: Address,
    slots: &[B256],
) -> Result<AccountProof, StoreError> {
    let account_store = PrefixedTrieStore {
        view,
        prefix: vec![ACCOUNT_TRIE],
    };
    let mut accounts = MerkleTrie::open(root);
    let hashed = keccak256(address);
    let account_proof = accounts.prove(&account_store, hashed).map_err(trie_err)?;
    let account = match accounts.get(&account_store, hashed).map_err(trie_err)? {
        Some(bytes) => Some(
            TrieAccount::decode(&mut &bytes[..])
                .map_err(|e| StoreError::Corrupt(format!("account leaf of {address}: {e}")))?,
        ),
        None => None,
    };
    let storage_root = account
        .as_ref()
        .map(|a| a.storage_root)
        .unwrap_or(EMPTY_ROOT_HASH);
    let store = PrefixedTrieStore {
        view,
        prefix: storage_prefix(&address),
    };
    let mut storage = MerkleTrie::open(storage_root);
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        let key = keccak256(slot);
        let proof = storage.prove(&store, key).map_err(trie_err)?;
        let value = match storage.get(&store, key).map_err(trie_err)? {
            Some(bytes) => U256::decode(&mut &bytes[..])
                .map_err(|e| StoreError::Corrupt(format!("storage leaf: {e}")))?,
            None => U256::ZERO,
        };
        out.push((*slot, value, proof));
    }
    Ok(AccountProof {
        account,
        account_proof,
        storage: out,
    })
}

#[cfg(test)]
mod tests {
    use alloy_consensus::Header;
    use proptest::prelude::*;

    use super::*;
    use crate::{
        store::{BlockCommit, Store},
        test_diffs::diff_of,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn incremental_root_equals_root_from_scratch(
            blocks in prop::collection::vec(
                prop::collection::vec((any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1), any::<u64>(),
                    prop::collection::vec((any::<u8>(), any::<u8>()), 0..6)), 1..8),
                1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut root = alloy_trie::EMPTY_ROOT_HASH;
            for (number, changes) in blocks.iter().enumerate() {
                let diff = diff_of(changes);
                let (new_root, trie) = apply_diff(&store.view(), root, &diff).unwrap();
                let header = Header { number: number as u64, state_root: new_root, ..Default::default() };
                store.commit_block(&BlockCommit {
                    header: &header,
                    hash: header.hash_slow(),
                    transactions: &[],
                    receipts: &[],
                    mini_blocks: &[],
                    last_mini_block: 0,
                    diff: &diff,
                    trie: &trie,
                    settlement: &[],
                }).unwrap();
                root = new_root;
                prop_assert_eq!(full_state_root(&store.view()).unwrap(), root, "block {}", number);
            }
        }
    }
}
