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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    let mut ledger = BlockLedger::new(block, block_gas_used, block_logs);
    for tx in txs {
        if !ledger.fits(&tx) {
            outcomes.push(TxOutcome::Deferred { tx });
            continue;
        }
        let env = to_tx_env(&tx.envelope, tx.sender);
        match evm.transact_commit(env) {
            Ok(result) => {
                let receipt = ledger.include(&tx, result);
                outcomes.push(TxOutcome::Included { tx, receipt });
            }
            Err(EVMError::Transaction(invalid)) => {
                let error = ledger.reject(&tx, invalid);
                outcomes.push(TxOutcome::Rejected { tx, error });
            }
            Err(EVMError::Database(e)) => return Err(e),
            Err(other) => return Err(StateError(format!("executor: {other}"))),
        }
    }
    let diff = evm.ctx.journaled_state.database.into_diff();
    Ok(ledger.finish(outcomes, diff))
}

/// The block-wide counters a batch advances in transaction order: gas used (which decides
/// what still fits) and logs emitted (which number the next receipt's logs). Shared by the
/// sequential and the parallel executor, so both build their receipts with the same code.
#[derive(Debug)]
pub(crate) struct BlockLedger<'a> {
    block: &'a BlockContext,
    gas_used_start: u64,
    logs_start: u64,
    gas_used: u64,
    logs: u64,
}

impl<'a> BlockLedger<'a> {
    pub(crate) fn new(block: &'a BlockContext, gas_used: u64, logs: u64) -> Self {
        Self {
            block,
            gas_used_start: gas_used,
            logs_start: logs,
            gas_used,
            logs,
        }
    }

    /// Whether `tx`'s gas limit fits in what the block has left; if not, it is deferred.
    pub(crate) fn fits(&self, tx: &RecoveredTx) -> bool {
        tx.envelope_gas_limit() <= self.block.gas_limit.saturating_sub(self.gas_used)
    }

    /// The receipt of `tx`, executed with `result` as the next transaction of the block.
    pub(crate) fn include(&mut self, tx: &RecoveredTx, result: ExecutionResult) -> TxReceipt {
        let tx_gas = result.tx_gas_used();
        let success = result.is_success();
        self.gas_used += tx_gas;
        let logs = result.into_logs();
        let first_log_index = self.logs;
        self.logs += logs.len() as u64;
        build_receipt(
            tx,
            success,
            tx_gas,
            logs,
            self.gas_used,
            first_log_index,
            self.block.base_fee,
        )
    }

    /// Why `tx` was refused, in geth's words.
    pub(crate) fn reject(&self, tx: &RecoveredTx, invalid: InvalidTransaction) -> TxError {
        map_invalid(tx, invalid, self.block)
    }

    /// Gas used and logs emitted by the block so far, this batch included.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.gas_used, self.logs)
    }

    pub(crate) fn finish(self, outcomes: Vec<TxOutcome>, diff: StateDiff) -> BatchResult {
        BatchResult {
            outcomes,
            diff,
            gas_used: self.gas_used - self.gas_used_start,
            logs: self.logs - self.logs_start,
        }
    }
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
