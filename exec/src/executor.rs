//! Executes ordered transactions on revm and produces receipts and a [`StateDiff`].
//!
//! One revm instance runs a whole mini-block: building the EVM per transaction would cost more
//! than executing a transfer.

use alloy_primitives::{Address, B256, U256};
use op_alloy_consensus::OpTxEnvelope;
use revm::{
    Context, Database, ExecuteCommitEvm, MainBuilder, MainContext,
    context::{BlockEnv, TxEnv},
    context_interface::{
        block::BlobExcessGasAndPrice,
        result::{EVMError, ExecutionResult, InvalidTransaction},
    },
    handler::{MainnetContext, MainnetEvm},
};

use crate::{
    config::ExecConfig,
    receipt::build_receipt,
    state::{Overlay, StateDiff, StateError, StateReader},
    system,
    tx::{TxError, to_tx_env},
    types::{RecoveredTx, TxReceipt},
};

/// The blob base fee of every block: the chain carries no blobs (admission refuses type 3), so
/// excess blob gas stays zero and the fee stays at EIP-4844's minimum.
pub const BLOB_BASE_FEE_WEI: u128 = 1;

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
    /// A block for tests: number 1, a 1 gwei base fee, a 30M gas limit.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            number: 1,
            timestamp: 1_700_000_000,
            beneficiary: Address::with_last_byte(0xc0),
            base_fee: 1_000_000_000,
            gas_limit: 30_000_000,
            prevrandao: B256::ZERO,
        }
    }

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
            blob_excess_gas_and_price: Some(BlobExcessGasAndPrice {
                excess_blob_gas: 0,
                blob_gasprice: BLOB_BASE_FEE_WEI,
            }),
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
///
/// A batch with `block_gas_used` zero is the block's first (every included transaction uses
/// gas): it starts with the block's system calls ([`crate::system`]), whose writes are part of
/// its diff. A batch that includes nothing is not committed, so the next one runs them again.
pub fn execute_batch<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: R,
    txs: Vec<RecoveredTx>,
    block_gas_used: u64,
    block_logs: u64,
) -> Result<BatchResult, StateError> {
    let system_calls = if block_gas_used == 0 {
        system::block_start_calls(config, block, &state)?
    } else {
        Vec::new()
    };
    let mut evm = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(config.cfg_env())
        .with_block(block.block_env())
        .build_mainnet();
    system::run_block_start(&mut evm, &system_calls)?;
    let mut outcomes = Vec::with_capacity(txs.len());
    let mut ledger = BlockLedger::new(block, block_gas_used, block_logs);
    for tx in txs {
        if !ledger.fits(&tx) {
            outcomes.push(TxOutcome::Deferred { tx });
            continue;
        }
        if tx.is_deposit() {
            let receipt = execute_deposit(&mut evm, &tx, &mut ledger, |evm, env| {
                evm.transact_commit(env)
            })?;
            outcomes.push(TxOutcome::Included { tx, receipt });
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
        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
        self.include_parts(
            tx,
            result.is_success(),
            result.tx_gas_used(),
            result.into_logs(),
            nonce,
        )
    }

    /// The receipt of `tx` that used `tx_gas` and emitted `logs`, executed with the sender's
    /// `nonce`.
    fn include_parts(
        &mut self,
        tx: &RecoveredTx,
        success: bool,
        tx_gas: u64,
        logs: Vec<alloy_primitives::Log>,
        nonce: u64,
    ) -> TxReceipt {
        self.gas_used += tx_gas;
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
            nonce,
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

/// Executes an L1 deposit (type 0x7E) as OP does after Regolith:
/// - the mint is credited to `from` first, and stays whatever happens next;
/// - the call runs like a legacy transaction with a zero gas price: no fee is charged, nothing
///   goes to the beneficiary, no base fee applies, and the sender's nonce is whatever it is
///   (deposits carry none) and goes up by one;
/// - a deposit that fails before the EVM runs (its `value` above the balance after the mint,
///   gas below the intrinsic cost, a system flag) or halts is included as failed: status 0, no
///   logs, the state it leaves is the mint and the nonce bump, and it uses its whole gas limit.
///   A revert reports the gas it used, as any transaction does.
///
/// Its receipt records the nonce before it (OP's `depositNonce`). `run` executes and commits
/// the call (the tracer runs it under its inspector).
pub(crate) fn execute_deposit<R: StateReader, I>(
    evm: &mut MainnetEvm<MainnetContext<Overlay<R>>, I>,
    tx: &RecoveredTx,
    ledger: &mut BlockLedger<'_>,
    run: impl FnOnce(
        &mut MainnetEvm<MainnetContext<Overlay<R>>, I>,
        TxEnv,
    ) -> Result<ExecutionResult, EVMError<StateError>>,
) -> Result<TxReceipt, StateError> {
    let OpTxEnvelope::Deposit(deposit) = &tx.envelope else {
        return Err(StateError(format!("{} is not a deposit", tx.hash)));
    };
    let from = deposit.from;
    let db = &mut evm.ctx.journaled_state.database;
    let mut account = db.basic(from)?.unwrap_or_default();
    if deposit.mint > 0 {
        account.balance = account.balance.saturating_add(U256::from(deposit.mint));
        db.set_account_info(from, account.clone());
    }
    let nonce = account.nonce;
    let mut env = to_tx_env(&tx.envelope, from);
    env.nonce = nonce;
    let cfg = evm.ctx.cfg.clone();
    evm.ctx.cfg.disable_base_fee = true;
    // The aliased sender of a contract's deposit may hold code on L2 only by coincidence;
    // deposits are authorised by L1, not by a signature.
    evm.ctx.cfg.disable_eip3607 = true;
    let result = if deposit.is_system_transaction {
        None
    } else {
        match run(evm, env) {
            Ok(result) => Some(result),
            Err(EVMError::Transaction(_)) => None,
            Err(EVMError::Database(e)) => {
                evm.ctx.cfg = cfg;
                return Err(e);
            }
            Err(other) => {
                evm.ctx.cfg = cfg;
                return Err(StateError(format!(
                    "executor: deposit {}: {other}",
                    tx.hash
                )));
            }
        }
    };
    evm.ctx.cfg = cfg;
    Ok(match result {
        Some(result @ (ExecutionResult::Success { .. } | ExecutionResult::Revert { .. })) => ledger
            .include_parts(
                tx,
                result.is_success(),
                result.tx_gas_used(),
                result.into_logs(),
                nonce,
            ),
        // Halted: revm kept the nonce bump and nothing else (the mint is outside its journal).
        Some(ExecutionResult::Halt { .. }) => {
            ledger.include_parts(tx, false, deposit.gas_limit, Vec::new(), nonce)
        }
        // Refused before execution: nothing of it reached the state but the mint.
        None => {
            let db = &mut evm.ctx.journaled_state.database;
            let mut account = db.basic(from)?.unwrap_or_default();
            account.nonce = account.nonce.saturating_add(1);
            db.set_account_info(from, account);
            ledger.include_parts(tx, false, deposit.gas_limit, Vec::new(), nonce)
        }
    })
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
        Err(e) => map_simulation_error(e, caller).map(Err),
    }
}

/// A simulated call's failure: a refused transaction as geth words it (`Ok`), or a failure of
/// the state backend (`Err`).
pub(crate) fn map_simulation_error(
    error: EVMError<StateError>,
    caller: Address,
) -> Result<TxError, StateError> {
    match error {
        EVMError::Transaction(invalid) => Ok(match invalid {
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
        }),
        EVMError::Database(e) => Err(e),
        other => Err(StateError(format!("executor: {other}"))),
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

#[cfg(test)]
mod deposit_tests {
    use alloy_consensus::Sealable;
    use alloy_primitives::{Address, Bytes, TxKind, U256, address};
    use op_alloy_consensus::OpTxEnvelope;

    use super::*;
    use crate::{
        MemoryState, ParallelConfig, ParallelExecutor,
        test_deposits::{self, DEPOSITOR as FROM},
        types::RecoveredTx,
    };

    const TO: Address = address!("0x2000000000000000000000000000000000000002");
    /// Runtime code that reverts: PUSH0 PUSH0 REVERT.
    const REVERTS: [u8; 3] = [0x5f, 0x5f, 0xfd];
    /// Runtime code that halts: INVALID.
    const HALTS: [u8; 1] = [0xfe];

    fn deposit(to: TxKind, mint: u128, value: u64, gas: u64, input: &[u8]) -> RecoveredTx {
        test_deposits::deposit(0x11, to, mint, value, gas, input)
    }

    fn state() -> MemoryState {
        let mut s = MemoryState::new();
        s.set_account(FROM, U256::from(5), 3, Bytes::new());
        s.set_account(
            address!("0x3000000000000000000000000000000000000003"),
            U256::ZERO,
            1,
            Bytes::from_static(&REVERTS),
        );
        s.set_account(
            address!("0x4000000000000000000000000000000000000004"),
            U256::ZERO,
            1,
            Bytes::from_static(&HALTS),
        );
        s
    }

    fn run(txs: Vec<RecoveredTx>) -> (BatchResult, MemoryState) {
        let config = ExecConfig::dev(901);
        let mut s = state();
        let result =
            execute_batch(&config, &BlockContext::for_tests(), &s, txs.clone(), 0, 0).unwrap();
        // The parallel executor agrees (it runs batches with deposits sequentially).
        let parallel = ParallelExecutor::new(ParallelConfig::with_threads(2)).unwrap();
        let p = parallel
            .execute_batch(&config, &BlockContext::for_tests(), &s, txs, 0, 0)
            .unwrap();
        assert_eq!(p, result);
        s.apply(&result.diff);
        (result, s)
    }

    fn receipt(result: &BatchResult, i: usize) -> &crate::TxReceipt {
        match &result.outcomes[i] {
            TxOutcome::Included { receipt, .. } => receipt,
            other => panic!("not included: {other:?}"),
        }
    }

    #[test]
    fn a_deposit_mints_pays_no_fee_and_bumps_the_nonce() {
        let (result, s) = run(vec![deposit(TxKind::Call(TO), 1_000, 600, 100_000, b"")]);
        let r = receipt(&result, 0);
        assert!(r.receipt.status());
        assert_eq!(r.gas_used, 21_000);
        assert_eq!(r.effective_gas_price, 0);
        assert_eq!(r.receipt.deposit_nonce(), Some(3));
        assert_eq!(r.receipt.deposit_receipt_version(), Some(1));
        let from = StateReader::account(&s, FROM).unwrap().unwrap();
        assert_eq!(from.balance, U256::from(5 + 1_000 - 600));
        assert_eq!(from.nonce, 4);
        assert_eq!(
            StateReader::account(&s, TO).unwrap().unwrap().balance,
            U256::from(600)
        );
        // No fee reached the beneficiary.
        assert!(
            StateReader::account(&s, BlockContext::for_tests().beneficiary)
                .unwrap()
                .is_none()
        );
        assert_eq!(result.gas_used, 21_000);
    }

    #[test]
    fn a_deposit_that_cannot_pay_its_value_fails_but_keeps_its_mint() {
        let (result, s) = run(vec![deposit(TxKind::Call(TO), 10, 1_000, 50_000, b"")]);
        let r = receipt(&result, 0);
        assert!(!r.receipt.status());
        assert_eq!(
            r.gas_used, 50_000,
            "a failed deposit uses its whole gas limit"
        );
        assert!(r.receipt.logs().is_empty());
        let from = StateReader::account(&s, FROM).unwrap().unwrap();
        assert_eq!(from.balance, U256::from(15));
        assert_eq!(from.nonce, 4);
        assert!(StateReader::account(&s, TO).unwrap().is_none());
    }

    #[test]
    fn reverted_and_halted_deposits_keep_the_mint_and_the_nonce_bump() {
        let reverting = address!("0x3000000000000000000000000000000000000003");
        let halting = address!("0x4000000000000000000000000000000000000004");
        let (result, s) = run(vec![
            deposit(TxKind::Call(reverting), 100, 50, 60_000, b""),
            deposit(TxKind::Call(halting), 100, 50, 70_000, b""),
        ]);
        let reverted = receipt(&result, 0);
        assert!(!reverted.receipt.status());
        assert!(
            reverted.gas_used < 60_000,
            "a revert reports the gas it used"
        );
        let halted = receipt(&result, 1);
        assert!(!halted.receipt.status());
        assert_eq!(halted.gas_used, 70_000);
        assert_eq!(halted.receipt.deposit_nonce(), Some(4));
        let from = StateReader::account(&s, FROM).unwrap().unwrap();
        assert_eq!(from.balance, U256::from(205));
        assert_eq!(from.nonce, 5);
    }

    #[test]
    fn a_creating_deposit_deploys_at_the_senders_nonce() {
        // Initcode that returns one byte of runtime code (0x00).
        let initcode = [0x60, 0x01, 0x60, 0x00, 0x53, 0x60, 0x01, 0x60, 0x00, 0xf3];
        let (result, s) = run(vec![deposit(TxKind::Create, 0, 0, 200_000, &initcode)]);
        let r = receipt(&result, 0);
        assert!(r.receipt.status());
        let created = FROM.create(3);
        assert_eq!(r.contract_address, Some(created));
        assert!(StateReader::account(&s, created).unwrap().is_some());
    }

    #[test]
    fn a_system_flagged_deposit_is_a_failed_one() {
        let mut tx = deposit(TxKind::Call(TO), 7, 0, 40_000, b"");
        if let OpTxEnvelope::Deposit(sealed) = &tx.envelope {
            let mut inner = sealed.inner().clone();
            inner.is_system_transaction = true;
            tx.envelope = OpTxEnvelope::Deposit(inner.seal_slow());
        }
        let (result, s) = run(vec![tx]);
        assert!(!receipt(&result, 0).receipt.status());
        let from = StateReader::account(&s, FROM).unwrap().unwrap();
        assert_eq!((from.balance, from.nonce), (U256::from(12), 4));
    }
}
