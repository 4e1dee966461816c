//! The newest state: committed RocksDB state plus the diffs of mini-blocks whose EVM block is
//! not committed yet, newest last. Readers take the layers first and the RocksDB snapshot second;
//! since a layer holds final values (not deltas), a layer already committed to RocksDB reads the
//! same whether it is applied once or twice, so every interleaving with a commit is consistent.

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use revm::{bytecode::Bytecode, state::AccountInfo};
use rtchain_exec::{StateDiff, StateError, StateReader};

/// Uncommitted diffs, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub diffs: Vec<Arc<StateDiff>>,
}

/// Layers over a base reader (a RocksDB snapshot).
pub struct LayeredState<B> {
    layers: Arc<Layers>,
    base: B,
}

impl<B: StateReader> LayeredState<B> {
    pub fn new(layers: Arc<Layers>, base: B) -> Self {
        Self { layers, base }
    }

    pub fn base(&self) -> &B {
        &self.base
    }
}

impl<B: StateReader> StateReader for LayeredState<B> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        for diff in self.layers.diffs.iter().rev() {
            if let Some(change) = diff.accounts.get(&address) {
                return Ok(change.info.clone());
            }
        }
        self.base.account(address)
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        for diff in self.layers.diffs.iter().rev() {
            if let Some(change) = diff.accounts.get(&address) {
                if let Some(value) = change.storage.get(&slot) {
                    return Ok(*value);
                }
                if change.storage_cleared || change.info.is_none() {
                    return Ok(U256::ZERO);
                }
            }
        }
        self.base.storage(address, slot)
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        for diff in self.layers.diffs.iter().rev() {
            if let Some(code) = diff.codes.get(&code_hash) {
                return Ok(Some(Bytecode::new_raw(code.clone())));
            }
        }
        self.base.code(code_hash)
    }

    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        self.base.block_hash(number)
    }
}
