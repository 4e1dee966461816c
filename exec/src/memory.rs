//! An in-memory [`StateReader`]: the pre-state of tests and benchmarks, with a state root.
//!
//! Not for the node: no persistence, no bound on size, and a root recomputed from scratch.

use std::collections::HashMap;

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_trie::{
    EMPTY_ROOT_HASH, TrieAccount,
    root::{state_root_unsorted, storage_root_unhashed},
};
use revm::{bytecode::Bytecode, primitives::KECCAK_EMPTY, state::AccountInfo};

use crate::state::{StateDiff, StateError, StateReader};

/// Accounts, storage and code held in hash maps. `Sync`, so the parallel executor's threads
/// read it at once.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    accounts: HashMap<Address, MemoryAccount>,
    codes: HashMap<B256, Bytecode>,
    /// Return each account's code inline with its info (as some backends do) instead of only
    /// its hash (as RocksDB storage does).
    inline_code: bool,
}

#[derive(Debug, Clone, Default)]
struct MemoryAccount {
    info: AccountInfo,
    storage: HashMap<U256, U256>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`StateReader::account`] returns the code inline (default: hash only).
    pub fn set_inline_code(&mut self, inline: bool) {
        self.inline_code = inline;
    }

    /// Creates or replaces an account, keeping its storage. `code` empty: an account without
    /// code.
    pub fn set_account(&mut self, address: Address, balance: U256, nonce: u64, code: Bytes) {
        let code_hash = if code.is_empty() {
            KECCAK_EMPTY
        } else {
            let hash = keccak256(&code);
            self.codes.insert(hash, Bytecode::new_raw(code));
            hash
        };
        let account = self.accounts.entry(address).or_default();
        account.info = AccountInfo {
            balance,
            nonce,
            code_hash,
            code: None,
            ..AccountInfo::default()
        };
    }

    /// Sets one storage slot of an existing account (zero deletes it).
    pub fn set_storage(&mut self, address: Address, slot: U256, value: U256) {
        let account = self.accounts.entry(address).or_default();
        if value.is_zero() {
            account.storage.remove(&slot);
        } else {
            account.storage.insert(slot, value);
        }
    }

    /// Applies `diff` as storage commits it: removed accounts go with their storage, a cleared
    /// storage starts empty before the written slots, zero slots are deleted.
    pub fn apply(&mut self, diff: &StateDiff) {
        for (hash, code) in &diff.codes {
            self.codes
                .entry(*hash)
                .or_insert_with(|| Bytecode::new_raw(code.clone()));
        }
        for (address, change) in &diff.accounts {
            let Some(info) = &change.info else {
                self.accounts.remove(address);
                continue;
            };
            let account = self.accounts.entry(*address).or_default();
            account.info = AccountInfo {
                code: None,
                ..info.clone()
            };
            if change.storage_cleared {
                account.storage.clear();
            }
            for (slot, value) in &change.storage {
                if value.is_zero() {
                    account.storage.remove(slot);
                } else {
                    account.storage.insert(*slot, *value);
                }
            }
        }
    }

    /// The Merkle-Patricia state root, computed from scratch.
    pub fn state_root(&self) -> B256 {
        state_root_unsorted(self.accounts.iter().map(|(address, account)| {
            let storage_root = if account.storage.is_empty() {
                EMPTY_ROOT_HASH
            } else {
                storage_root_unhashed(
                    account
                        .storage
                        .iter()
                        .map(|(slot, value)| (B256::from(*slot), *value)),
                )
            };
            let info = &account.info;
            (
                keccak256(address),
                TrieAccount::new(info.nonce, info.balance, storage_root, info.code_hash),
            )
        }))
    }
}

impl StateReader for MemoryState {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        Ok(self.accounts.get(&address).map(|account| {
            let mut info = account.info.clone();
            if self.inline_code {
                info.code = self.codes.get(&info.code_hash).cloned();
            }
            info
        }))
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        Ok(self
            .accounts
            .get(&address)
            .and_then(|account| account.storage.get(&slot).copied())
            .unwrap_or_default())
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Some(Bytecode::default()));
        }
        Ok(self.codes.get(&code_hash).cloned())
    }

    /// keccak256 of the number's decimal digits, as ethereum/tests and revm's `EmptyDB` do.
    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        Ok(keccak256(number.to_string().as_bytes()))
    }
}
