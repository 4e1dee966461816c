//! Random state diffs for the crate's property tests.

use std::collections::HashMap;

use alloy_primitives::{Address, U256};
use revm::{primitives::KECCAK_EMPTY, state::AccountInfo};
use rtchain_exec::{AccountChange, StateDiff};

/// One change: (account index, destroy?, wipe storage?, balance, slots).
pub type Change = (u8, bool, bool, u64, Vec<(u8, u8)>);

pub fn diff_of(changes: &[Change]) -> StateDiff {
    let mut diff = StateDiff::default();
    for (account, destroy, wipe, balance, slots) in changes {
        let address = Address::repeat_byte(*account % 12 + 1);
        let mut later = StateDiff::default();
        let change = if *destroy {
            AccountChange {
                info: None,
                storage_cleared: true,
                storage: HashMap::new(),
            }
        } else {
            AccountChange {
                info: Some(AccountInfo {
                    balance: U256::from(*balance),
                    nonce: 1,
                    code_hash: KECCAK_EMPTY,
                    ..Default::default()
                }),
                storage_cleared: *wipe,
                storage: slots
                    .iter()
                    .map(|(k, v)| (U256::from(*k % 16), U256::from(*v % 4)))
                    .collect(),
            }
        };
        later.accounts.insert(address, change);
        diff.merge(later);
    }
    diff
}
