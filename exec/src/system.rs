//! The system calls every EVM block starts with, as Ethereum runs them since Cancun and Prague:
//! EIP-4788 stores the parent beacon block root and EIP-2935 the parent block's hash, each in its
//! system contract's ring buffer, called from the system address before the first transaction.
//!
//! On this L2 the beacon root is the L1 origin's (OP chains do the same): the L1-info deposit
//! records it in the state, and [`ExecConfig::beacon_root_source`] says where. A chain without
//! settlement stores zero. The calls run only where the contract has code (EIP-4788: "fail
//! silently"), so a state test's pre-state without them is not touched.

use alloy_primitives::{Address, B256, Bytes, U256};
use revm::{
    ExecuteCommitEvm, SystemCallEvm,
    context_interface::result::{EVMError, ExecResultAndState, ExecutionResult},
    primitives::hardfork::SpecId,
    state::EvmState,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::ExecConfig,
    executor::BlockContext,
    state::{StateError, StateReader},
};

pub use alloy_eips::{
    eip2935::{HISTORY_STORAGE_ADDRESS, HISTORY_STORAGE_CODE},
    eip4788::{BEACON_ROOTS_ADDRESS, BEACON_ROOTS_CODE, SYSTEM_ADDRESS},
};

/// A storage slot of the L2 state that holds a value the executor needs at block start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageLocation {
    pub address: Address,
    pub slot: U256,
}

/// One system call due at a block's start: the contract and its 32-byte input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemCall {
    pub contract: Address,
    pub input: B256,
}

/// The parent beacon block root of a block that starts on `state`: the L1 origin's, read from
/// where the chain keeps it, or zero.
pub fn parent_beacon_root<R: StateReader>(
    config: &ExecConfig,
    state: &R,
) -> Result<B256, StateError> {
    match config.beacon_root_source {
        Some(at) => Ok(B256::from(state.storage(at.address, at.slot)?)),
        None => Ok(B256::ZERO),
    }
}

/// The system calls block `block` starts with on `state` (its parent's final state), in the
/// order geth makes them: beacon root, then parent hash. Empty before Cancun or where the
/// contracts have no code.
pub fn block_start_calls<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: &R,
) -> Result<Vec<SystemCall>, StateError> {
    let mut calls = Vec::new();
    if config.spec.is_enabled_in(SpecId::CANCUN) && has_code(state, BEACON_ROOTS_ADDRESS)? {
        calls.push(SystemCall {
            contract: BEACON_ROOTS_ADDRESS,
            input: parent_beacon_root(config, state)?,
        });
    }
    if config.spec.is_enabled_in(SpecId::PRAGUE)
        && block.number > 0
        && has_code(state, HISTORY_STORAGE_ADDRESS)?
    {
        let parent = block.number - 1;
        let hash = state.block_hash(parent)?;
        // An unknown parent hash (the node is stopping while the parent seals) must not be
        // written into the state: the block would differ from every other validator's.
        if hash.is_zero() {
            return Err(StateError(format!(
                "the hash of block {parent} is not known: block {} cannot start",
                block.number
            )));
        }
        calls.push(SystemCall {
            contract: HISTORY_STORAGE_ADDRESS,
            input: hash,
        });
    }
    Ok(calls)
}

/// Runs `calls` on `evm` and commits what each wrote to its own contract, and nothing else: the
/// system address pays nothing and is not created, and the beneficiary earns nothing (as geth
/// and reth commit them).
pub fn run_block_start<E>(evm: &mut E, calls: &[SystemCall]) -> Result<(), StateError>
where
    E: SystemCallEvm<
            ExecutionResult = ExecutionResult,
            State = EvmState,
            Error = EVMError<StateError>,
        > + ExecuteCommitEvm,
{
    for call in calls {
        let ExecResultAndState { result, mut state } = evm
            .system_call(call.contract, Bytes::copy_from_slice(call.input.as_slice()))
            .map_err(|e| match e {
                EVMError::Database(e) => e,
                other => StateError(format!("system call to {}: {other}", call.contract)),
            })?;
        if !result.is_success() {
            return Err(StateError(format!(
                "the system call to {} failed: {result:?}",
                call.contract
            )));
        }
        state.retain(|address, _| *address == call.contract);
        evm.commit(state);
    }
    Ok(())
}

fn has_code<R: StateReader>(state: &R, address: Address) -> Result<bool, StateError> {
    Ok(state
        .account(address)?
        .is_some_and(|a| a.code_hash != revm::primitives::KECCAK_EMPTY))
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{TxKind, address};

    use super::*;
    use crate::{MemoryState, executor::execute_batch, test_deposits};

    const L1_INFO: Address = address!("0x4200000000000000000000000000000000000015");
    const ROOT_SLOT: U256 = U256::from_limbs([4, 0, 0, 0]);
    const ROOT: B256 = B256::repeat_byte(0xbe);

    fn config() -> ExecConfig {
        ExecConfig {
            beacon_root_source: Some(StorageLocation {
                address: L1_INFO,
                slot: ROOT_SLOT,
            }),
            ..ExecConfig::dev(901)
        }
    }

    fn state(with_contracts: bool) -> MemoryState {
        let mut s = MemoryState::new();
        s.set_account(test_deposits::DEPOSITOR, U256::from(5), 0, Bytes::new());
        s.set_storage(L1_INFO, ROOT_SLOT, U256::from_be_bytes(ROOT.0));
        if with_contracts {
            s.set_account(
                BEACON_ROOTS_ADDRESS,
                U256::ZERO,
                1,
                BEACON_ROOTS_CODE.clone(),
            );
            s.set_account(
                HISTORY_STORAGE_ADDRESS,
                U256::ZERO,
                1,
                HISTORY_STORAGE_CODE.clone(),
            );
        }
        s
    }

    fn transfer(source: u8) -> crate::RecoveredTx {
        let to = TxKind::Call(address!("0x2000000000000000000000000000000000000002"));
        test_deposits::deposit(source, to, 0, 0, 100_000, &[])
    }

    fn slot(diff: &crate::StateDiff, contract: Address, slot: u64) -> Option<U256> {
        diff.accounts
            .get(&contract)
            .and_then(|a| a.storage.get(&U256::from(slot)).copied())
    }

    #[test]
    fn the_first_batch_of_a_block_stores_the_beacon_root_and_the_parent_hash() {
        let block = BlockContext {
            number: 9000,
            ..BlockContext::for_tests()
        };
        let s = state(true);
        let first = execute_batch(&config(), &block, &s, vec![transfer(1)], 0, 0).unwrap();
        let ts = block.timestamp;
        let ring = ts % 8191;
        assert_eq!(
            slot(&first.diff, BEACON_ROOTS_ADDRESS, ring),
            Some(U256::from(ts))
        );
        assert_eq!(
            slot(&first.diff, BEACON_ROOTS_ADDRESS, ring + 8191),
            Some(U256::from_be_bytes(ROOT.0))
        );
        let parent_hash = s.block_hash(8999).unwrap();
        assert_eq!(
            slot(&first.diff, HISTORY_STORAGE_ADDRESS, 8999 % 8191),
            Some(U256::from_be_bytes(parent_hash.0))
        );
        // Nothing else: the system address is not created, the beneficiary earns nothing.
        let alone = execute_batch(&config(), &block, &s, Vec::new(), 0, 0).unwrap();
        let mut touched: Vec<_> = alone.diff.accounts.keys().copied().collect();
        touched.sort();
        assert_eq!(touched, [HISTORY_STORAGE_ADDRESS, BEACON_ROOTS_ADDRESS]);
        assert!(!first.diff.accounts.contains_key(&SYSTEM_ADDRESS));
        // The system calls use none of the block's gas.
        assert_eq!(first.gas_used, 21_000);

        // A later batch of the same block does not run them again.
        let later = execute_batch(&config(), &block, &s, vec![transfer(2)], 21_000, 0).unwrap();
        assert!(!later.diff.accounts.contains_key(&BEACON_ROOTS_ADDRESS));
        assert!(!later.diff.accounts.contains_key(&HISTORY_STORAGE_ADDRESS));
    }

    #[test]
    fn without_the_contracts_or_before_their_forks_nothing_is_called() {
        let block = BlockContext::for_tests();
        let bare = state(false);
        let result = execute_batch(&config(), &block, &bare, vec![transfer(1)], 0, 0).unwrap();
        assert!(!result.diff.accounts.contains_key(&BEACON_ROOTS_ADDRESS));
        assert!(!result.diff.accounts.contains_key(&HISTORY_STORAGE_ADDRESS));

        let shanghai = ExecConfig {
            spec: SpecId::SHANGHAI,
            ..config()
        };
        let calls = block_start_calls(&shanghai, &block, &state(true)).unwrap();
        assert!(calls.is_empty());
        let cancun = ExecConfig {
            spec: SpecId::CANCUN,
            ..config()
        };
        let calls = block_start_calls(&cancun, &block, &state(true)).unwrap();
        assert_eq!(
            calls,
            vec![SystemCall {
                contract: BEACON_ROOTS_ADDRESS,
                input: ROOT
            }]
        );
    }

    #[test]
    fn an_unknown_parent_hash_stops_the_block_instead_of_storing_zero() {
        struct NoHashes(MemoryState);
        impl StateReader for NoHashes {
            fn account(&self, a: Address) -> Result<Option<revm::state::AccountInfo>, StateError> {
                self.0.account(a)
            }
            fn storage(&self, a: Address, s: U256) -> Result<U256, StateError> {
                self.0.storage(a, s)
            }
            fn code(&self, h: B256) -> Result<Option<revm::bytecode::Bytecode>, StateError> {
                self.0.code(h)
            }
            fn block_hash(&self, _: u64) -> Result<B256, StateError> {
                Ok(B256::ZERO)
            }
        }
        let state = NoHashes(state(true));
        let err = execute_batch(
            &config(),
            &BlockContext::for_tests(),
            &state,
            vec![transfer(1)],
            0,
            0,
        )
        .unwrap_err();
        assert!(err.0.contains("is not known"), "{err}");
    }
}
