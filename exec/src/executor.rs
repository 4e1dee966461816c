//! Executes ordered transactions on revm and produces receipts and a [`StateDiff`].
//!
//! One revm instance runs a whole mini-block: building the EVM per transaction would cost more
//! than executing a transfer.

use alloy_primitives::{Address, B256, U256};
use revm::{
    Context, ExecuteCommitEvm, MainBuilder, MainContext,
    context::{BlockEnv, TxEnv},
    context_interface::{
        block::BlobExcessGasAndPrice,
        result::{EVMError, ExecutionResult, InvalidTransaction},
    },
};

use crate::{
    config::ExecConfig,
    receipt::build_receipt,
    state::{Overlay, StateDiff, StateError, StateReader},
    tx::{TxError, to_tx_env},
    types::{RecoveredTx, TxReceipt},
};

/// The block-level environment every transaction of an EVM block sees. Fixed when the block
/// opens, so that all its mini-blocks execute under the header the block is sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockContext {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub beneficiary: Address,
    pub base_fee: u64,
    pub gas_limit: u64,
    pub prevrandao: B256,
}

impl BlockContext {
    pub fn block_env(&self) -> BlockEnv {
        BlockEnv {
            number: U256::from(self.number),
            beneficiary: self.beneficiary,
            timestamp: U256::from(self.timestamp),
            gas_limit: self.gas_limit,
            basefee: self.base_fee,
            difficulty: U256::ZERO,
            prevrandao: Some(self.prevrandao),
            // No blobs on this chain: excess blob gas stays zero, so the blob base fee is 1 wei.
            blob_excess_gas_and_price: Some(BlobExcessGasAndPrice::new(0, 1)),
            ..Default::default()
        }
    }
}

/// What happened to one transaction offered to a mini-block.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "Included is the common case; boxing it would add an allocation per transaction"
)]
pub enum TxOutcome {
    /// Executed (successfully or not) and included, with its receipt.
    Included { tx: RecoveredTx, receipt: TxReceipt },
    /// Refused by a consensus rule (nonce, balance, fee); not included, nothing charged.
    Rejected { tx: RecoveredTx, error: TxError },
    /// Does not fit the gas left in this EVM block; offer it to the next one.
    Deferred { tx: RecoveredTx },
}

/// Result of executing a batch of transactions.
#[derive(Debug)]
pub struct BatchResult {
    pub outcomes: Vec<TxOutcome>,
    pub diff: StateDiff,
    pub gas_used: u64,
    pub logs: u64,
}

/// Executes `txs` in order on top of `state`, as the next transactions of the EVM block
/// described by `block`, which has already used `block_gas_used` gas and emitted `block_logs`
/// logs. Transactions that break a consensus rule are rejected and the rest go on; only a
/// failure of the state backend aborts the batch.
pub fn execute_batch<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: R,
    txs: Vec<RecoveredTx>,
    block_gas_used: u64,
    block_logs: u64,
) -> Result<BatchResult, StateError> {
    let mut evm = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(config.cfg_env())
        .with_block(block.block_env())
        .build_mainnet();
    let mut outcomes = Vec::with_capacity(txs.len());
    let mut gas_used = block_gas_used;
    let mut logs = block_logs;
    for tx in txs {
        if tx.envelope_gas_limit() > block.gas_limit.saturating_sub(gas_used) {
            outcomes.push(TxOutcome::Deferred { tx });
            continue;
        }
        let env = to_tx_env(&tx.envelope, tx.sender);
        match evm.transact_commit(env) {
            Ok(result) => {
                let tx_gas = result.tx_gas_used();
                gas_used += tx_gas;
                let receipt = build_receipt(
                    &tx,
                    result.is_success(),
                    tx_gas,
                    result.logs().to_vec(),
                    gas_used,
                    logs,
                    block.base_fee,
                );
                logs += result.logs().len() as u64;
                outcomes.push(TxOutcome::Included { tx, receipt });
            }
            Err(EVMError::Transaction(invalid)) => {
                let error = map_invalid(&tx, invalid, block);
                outcomes.push(TxOutcome::Rejected { tx, error });
            }
            Err(EVMError::Database(e)) => return Err(e),
            Err(other) => return Err(StateError(format!("executor: {other}"))),
        }
    }
    let diff = evm.ctx.journaled_state.database.into_diff();
    Ok(BatchResult {
        outcomes,
        diff,
        gas_used: gas_used - block_gas_used,
        logs: logs - block_logs,
    })
}

impl RecoveredTx {
    fn envelope_gas_limit(&self) -> u64 {
        alloy_consensus::Transaction::gas_limit(&self.envelope)
    }
}

/// Translates revm's validation error into geth's message, filling in the state it refers to.
fn map_invalid(tx: &RecoveredTx, invalid: InvalidTransaction, block: &BlockContext) -> TxError {
    use alloy_consensus::Transaction as _;
    let address = tx.sender;
    match invalid {
        InvalidTransaction::NonceTooLow { tx: nonce, state } => TxError::NonceTooLow {
            address,
            tx: nonce,
            state,
        },
        InvalidTransaction::NonceTooHigh { tx: nonce, state } => TxError::NonceTooHigh {
            address,
            tx: nonce,
            state,
        },
        InvalidTransaction::LackOfFundForMaxFee { fee, balance } => TxError::InsufficientFunds {
            address,
            have: *balance,
            want: *fee,
        },
        InvalidTransaction::GasPriceLessThanBasefee => TxError::FeeCapTooLow {
            address,
            max_fee: tx.envelope.max_fee_per_gas(),
            base_fee: block.base_fee,
        },
        InvalidTransaction::RejectCallerWithCode => TxError::SenderNotEoa(address),
        InvalidTransaction::NonceOverflowInTransaction => TxError::NonceMax,
        InvalidTransaction::CallGasCostMoreThanGasLimit {
            initial_gas,
            gas_limit,
        }
        | InvalidTransaction::GasFloorMoreThanGasLimit {
            gas_floor: initial_gas,
            gas_limit,
        } => TxError::IntrinsicGasTooLow {
            have: gas_limit,
            want: initial_gas,
        },
        InvalidTransaction::CallerGasLimitMoreThanBlock => TxError::GasLimitExceeded,
        InvalidTransaction::PriorityFeeGreaterThanMaxFee => TxError::TipAboveFeeCap,
        InvalidTransaction::InvalidChainId => TxError::WrongChainId {
            have: tx.envelope.chain_id().unwrap_or_default(),
            want: 0,
        },
        other => TxError::Other(other.to_string()),
    }
}

/// Executes one transaction environment without keeping its changes (eth_call and friends).
pub fn simulate<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: R,
    tx: TxEnv,
    checks: SimulationChecks,
) -> Result<Result<ExecutionResult, TxError>, StateError> {
    let mut cfg = config.cfg_env();
    cfg.disable_nonce_check = true;
    cfg.disable_base_fee = checks.no_base_fee;
    cfg.disable_balance_check = checks.no_balance_check;
    cfg.disable_block_gas_limit = false;
    let caller = tx.caller;
    let mut evm = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(cfg)
        .with_block(block.block_env())
        .build_mainnet();
    use revm::ExecuteEvm as _;
    match evm.transact(tx) {
        Ok(out) => Ok(Ok(out.result)),
        Err(EVMError::Transaction(invalid)) => Ok(Err(match invalid {
            InvalidTransaction::LackOfFundForMaxFee { fee, balance } => {
                TxError::InsufficientFunds {
                    address: caller,
                    have: *balance,
                    want: *fee,
                }
            }
            InvalidTransaction::CallGasCostMoreThanGasLimit {
                initial_gas,
                gas_limit,
            }
            | InvalidTransaction::GasFloorMoreThanGasLimit {
                gas_floor: initial_gas,
                gas_limit,
            } => TxError::IntrinsicGasTooLow {
                have: gas_limit,
                want: initial_gas,
            },
            InvalidTransaction::CallerGasLimitMoreThanBlock => TxError::GasLimitExceeded,
            other => TxError::Other(other.to_string()),
        })),
        Err(EVMError::Database(e)) => Err(e),
        Err(other) => Err(StateError(format!("executor: {other}"))),
    }
}

/// Which checks a simulated call skips, following geth: with no fee fields, a call pays no base
/// fee and needs no balance for gas.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulationChecks {
    pub no_base_fee: bool,
    pub no_balance_check: bool,
}

/// Executes one transaction environment on top of `state` under an explicit revm block
/// environment, the way [`execute_batch`] does (an [`Overlay`] over `state`, `transact_commit`),
/// and returns its result with the changes it made. For conformance runs (ethereum/tests state
/// tests): the caller builds the [`TxEnv`] itself, so transaction types the node refuses at
/// admission (EIP-4844 blobs) still execute, and the [`BlockEnv`] may carry what
/// [`BlockContext`] does not model (excess blob gas, difficulty).
///
/// A transaction that breaks a validation rule yields `Err(InvalidTransaction)` and an empty
/// diff; only a failure of the state backend (or a header revm refuses) is an `Err` of the whole.
pub fn execute_tx_env<R: StateReader>(
    config: &ExecConfig,
    block: &BlockEnv,
    state: R,
    tx: TxEnv,
) -> Result<(Result<ExecutionResult, InvalidTransaction>, StateDiff), StateError> {
    let mut evm = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(config.cfg_env())
        .with_block(block.clone())
        .build_mainnet();
    let result = match evm.transact_commit(tx) {
        Ok(result) => Ok(result),
        Err(EVMError::Transaction(invalid)) => Err(invalid),
        Err(EVMError::Database(e)) => return Err(e),
        Err(other) => return Err(StateError(format!("executor: {other}"))),
    };
    let diff = evm.ctx.journaled_state.database.into_diff();
    // A refused transaction is not committed: nothing of it may reach the diff.
    debug_assert!(
        result.is_ok() || diff.is_empty(),
        "rejected transaction changed state"
    );
    Ok((result, diff))
}
