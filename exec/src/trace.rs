//! `debug_trace*`: re-executes a sealed block's transactions, or a call, under revm-inspectors'
//! [`DebugInspector`], which shapes geth's struct logger, `callTracer`, `prestateTracer` (with
//! `diffMode`) and its other built-in tracers exactly as geth answers them.
//!
//! A block is replayed on its parent's state with the same code path as the block executor
//! (deposits included), so a trace shows what the transaction did when it was sealed.

use alloy_primitives::{Address, B256, U256};
use alloy_rpc_types_trace::geth::{
    AccountState, GethDebugTracerType, GethDebugTracingOptions, GethTrace, PreStateFrame,
    PreStateMode,
};
use revm::{
    Context, DatabaseCommit, DatabaseRef, ExecuteCommitEvm, InspectEvm, MainBuilder, MainContext,
    bytecode::Bytecode,
    context::TxEnv,
    context_interface::result::{EVMError, ExecutionResult, ResultAndState},
    handler::{MainnetContext, MainnetEvm},
    state::AccountInfo,
};
use revm_inspectors::tracing::{DebugInspector, TransactionContext};

use crate::{
    config::ExecConfig,
    executor::{
        BlockContext, BlockLedger, SimulationChecks, execute_deposit, map_simulation_error,
    },
    state::{Overlay, StateError, StateReader},
    tx::{TxError, to_tx_env},
    types::RecoveredTx,
};

/// Why a trace has no result.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The tracer name or its configuration is not one this node knows (geth answers these as
    /// invalid parameters).
    #[error("{0}")]
    Options(String),
    /// A traced call breaks a transaction rule (nonce, funds, gas).
    #[error("{0}")]
    Invalid(TxError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One traced transaction of a block: its trace, or why it has none (geth answers such a
/// transaction with an `error` in place of a `result`).
#[derive(Debug, Clone)]
pub struct TxTrace {
    pub index: usize,
    pub hash: B256,
    pub trace: Result<GethTrace, String>,
}

type TracingEvm<R> = MainnetEvm<MainnetContext<Overlay<R>>, DebugInspector>;

fn inspector(options: &GethDebugTracingOptions) -> Result<DebugInspector, TraceError> {
    // Any name that is not a built-in tracer parses as JavaScript source, which this node does
    // not run: say which name was refused and what is there instead.
    if let Some(GethDebugTracerType::JsTracer(code)) = &options.tracer
        && !code.is_empty()
    {
        let shown: String = code.chars().take(64).collect();
        return Err(TraceError::Options(format!(
            "tracer {shown:?} is not supported: the built-in tracers are callTracer, prestateTracer, 4byteTracer, flatCallTracer, muxTracer, noopTracer and the struct logger (no tracer); JavaScript tracers are not run"
        )));
    }
    DebugInspector::new(options.clone()).map_err(|e| TraceError::Options(e.to_string()))
}

/// Traces the transactions of a sealed block: all of them, or only the one at `only` (the
/// ones before it still run, untraced, for the state it saw). `state` is the parent block's
/// state and `block` the block's own context.
pub fn trace_block<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    block_hash: B256,
    state: R,
    txs: &[RecoveredTx],
    only: Option<usize>,
    options: &GethDebugTracingOptions,
) -> Result<Vec<TxTrace>, TraceError> {
    let block_env = block.block_env();
    let system_calls = crate::system::block_start_calls(config, block, &state)?;
    let mut evm: TracingEvm<R> = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(config.cfg_env())
        .with_block(block_env.clone())
        .build_mainnet_with_inspector(inspector(options)?);
    // Not traced, as geth does not trace them, but their writes are what the block's
    // transactions read.
    crate::system::run_block_start(&mut evm, &system_calls)?;
    let mut ledger = BlockLedger::new(block, 0, 0);
    let end = only.map_or(txs.len(), |i| (i + 1).min(txs.len()));
    let mut out = Vec::new();
    for (index, tx) in txs[..end].iter().enumerate() {
        let traced = only.is_none_or(|i| i == index);
        let context = TransactionContext {
            block_hash: Some(block_hash),
            tx_index: Some(index),
            tx_hash: Some(tx.hash),
        };
        let mut trace = None;
        let mut run = |evm: &mut TracingEvm<R>, env: TxEnv| {
            if !traced {
                return evm.transact_commit(env);
            }
            let (result, geth) = inspect_and_commit(evm, env, Some(context))?;
            trace = Some(geth);
            Ok(result)
        };
        if tx.is_deposit() {
            execute_deposit(&mut evm, tx, &mut ledger, run)?;
        } else {
            match run(&mut evm, to_tx_env(&tx.envelope, tx.sender)) {
                Ok(result) => {
                    ledger.include(tx, result);
                }
                Err(EVMError::Transaction(invalid)) => {
                    return Err(StateError(format!(
                        "transaction {} of block {} does not execute on its parent's state: {invalid}",
                        tx.hash, block.number
                    ))
                    .into());
                }
                Err(EVMError::Database(e)) => return Err(e.into()),
                Err(other) => return Err(StateError(format!("tracer: {other}")).into()),
            }
        }
        if traced {
            let trace = match trace {
                Some(trace) => trace.map_err(|e| e.to_string()),
                // Refused before the EVM ran (OP includes it as failed, nonce bumped).
                None => Err("the deposit failed before execution: no code ran".to_owned()),
            };
            out.push(TxTrace {
                index,
                hash: tx.hash,
                trace,
            });
        }
    }
    Ok(out)
}

/// Traces a call on `state` in `block` (debug_traceCall): geth's call semantics, as
/// `eth_call` has them.
pub fn trace_call<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: R,
    tx: TxEnv,
    checks: SimulationChecks,
    options: &GethDebugTracingOptions,
) -> Result<GethTrace, TraceError> {
    let mut cfg = config.cfg_env();
    cfg.disable_nonce_check = true;
    cfg.disable_base_fee = checks.no_base_fee;
    cfg.disable_balance_check = checks.no_balance_check;
    let caller = tx.caller;
    let mut evm: TracingEvm<R> = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(cfg)
        .with_block(block.block_env())
        .build_mainnet_with_inspector(inspector(options)?);
    match inspect_and_commit(&mut evm, tx, None) {
        Ok((_, trace)) => trace,
        Err(e) => match map_simulation_error(e, caller) {
            Ok(invalid) => Err(TraceError::Invalid(invalid)),
            Err(state) => Err(state.into()),
        },
    }
}

/// Runs `env` under the inspector, builds its trace against the state before it, then commits
/// its changes (so the block's next transaction sees them).
fn inspect_and_commit<R: StateReader>(
    evm: &mut TracingEvm<R>,
    env: TxEnv,
    context: Option<TransactionContext>,
) -> Result<(ExecutionResult, Result<GethTrace, TraceError>), EVMError<StateError>> {
    evm.inspector
        .fuse()
        .map_err(|e| EVMError::Custom(e.to_string()))?;
    let outcome: ResultAndState = evm.inspect_tx(env.clone())?;
    let block_env = evm.ctx.block.clone();
    let mut before = ReadOnly(&evm.ctx.journaled_state.database);
    let trace = evm
        .inspector
        .get_result(context, &env, &block_env, &outcome, &mut before)
        .map_err(|e| TraceError::State(StateError(format!("tracer: {e}"))))
        .and_then(|trace| with_created_account(trace, &env, &outcome, &before));
    evm.ctx.journaled_state.database.commit(outcome.state);
    Ok((outcome.result, trace))
}

/// geth's prestate tracer lists the account a creation makes, as it was before (empty, or
/// whatever balance it was sent), with the slots the constructor touched at their old values;
/// revm-inspectors leaves it out.
fn with_created_account<R: StateReader>(
    trace: GethTrace,
    env: &TxEnv,
    outcome: &ResultAndState,
    before: &ReadOnly<'_, R>,
) -> Result<GethTrace, TraceError> {
    let GethTrace::PreStateTracer(PreStateFrame::Default(PreStateMode(mut accounts))) = trace
    else {
        return Ok(trace);
    };
    if env.kind.is_create() {
        let created = env.caller.create(env.nonce);
        if let (Some(touched), false) =
            (outcome.state.get(&created), accounts.contains_key(&created))
        {
            let info = before.basic_ref(created)?.unwrap_or_default();
            let code = before.code_by_hash_ref(info.code_hash)?;
            let mut state = AccountState::from_account_info(
                info.nonce,
                info.balance,
                (!code.is_empty()).then(|| code.original_bytes()),
            );
            for (slot, value) in &touched.storage {
                state
                    .storage
                    .insert(B256::from(*slot), B256::from(value.original_value()));
            }
            accounts.insert(created, state);
        }
    }
    Ok(GethTrace::PreStateTracer(PreStateFrame::Default(
        PreStateMode(accounts),
    )))
}

/// The state before a transaction, for the tracers that read it (prestate).
struct ReadOnly<'a, R>(&'a R);

impl<R: StateReader> DatabaseRef for ReadOnly<'_, R> {
    type Error = StateError;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        self.0.account(address)
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, StateError> {
        Ok(self.0.code(code_hash)?.unwrap_or_default())
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, StateError> {
        self.0.storage(address, index)
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, StateError> {
        self.0.block_hash(number)
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Bytes, TxKind, address};
    use alloy_rpc_types_trace::geth::{GethDebugBuiltInTracerType, PreStateConfig};

    use super::*;
    use crate::{
        MemoryState,
        test_deposits::{self, DEPOSITOR as FROM},
    };
    const COUNTER: Address = address!("0x2000000000000000000000000000000000000002");
    /// slot0 += 1: PUSH0 SLOAD PUSH1 1 ADD PUSH0 SSTORE STOP.
    const INCREMENT: [u8; 8] = [0x5f, 0x54, 0x60, 0x01, 0x01, 0x5f, 0x55, 0x00];

    fn deposit(source: u8) -> RecoveredTx {
        test_deposits::deposit(source, TxKind::Call(COUNTER), 0, 0, 100_000, b"")
    }

    fn state() -> MemoryState {
        let mut s = MemoryState::new();
        s.set_account(FROM, U256::from(1), 0, Bytes::new());
        s.set_account(COUNTER, U256::ZERO, 1, Bytes::from_static(&INCREMENT));
        s
    }

    fn prestate() -> GethDebugTracingOptions {
        GethDebugTracingOptions::default()
            .with_tracer(GethDebugBuiltInTracerType::PreStateTracer.into())
            .with_prestate_config(PreStateConfig::default())
    }

    fn slot0_before(trace: &GethTrace) -> U256 {
        let GethTrace::PreStateTracer(PreStateFrame::Default(PreStateMode(accounts))) = trace
        else {
            panic!("not a prestate trace: {trace:?}");
        };
        let value = accounts[&COUNTER].storage[&B256::ZERO];
        U256::from_be_bytes(value.0)
    }

    /// A transaction is traced on the state the ones before it in its block left, whether the
    /// whole block is traced or that one alone.
    #[test]
    fn a_transaction_sees_the_block_before_it() {
        let config = ExecConfig::dev(901);
        let txs = vec![deposit(1), deposit(2), deposit(3)];
        let state = state();
        let all = trace_block(
            &config,
            &BlockContext::for_tests(),
            B256::ZERO,
            &state,
            &txs,
            None,
            &prestate(),
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        for (i, t) in all.iter().enumerate() {
            assert_eq!((t.index, t.hash), (i, txs[i].hash));
            assert_eq!(slot0_before(t.trace.as_ref().unwrap()), U256::from(i));
        }
        let alone = trace_block(
            &config,
            &BlockContext::for_tests(),
            B256::ZERO,
            &state,
            &txs,
            Some(2),
            &prestate(),
        )
        .unwrap();
        assert_eq!(alone.len(), 1);
        assert_eq!(
            serde_json::to_value(alone[0].trace.as_ref().unwrap()).unwrap(),
            serde_json::to_value(all[2].trace.as_ref().unwrap()).unwrap()
        );
    }

    #[test]
    fn the_struct_logger_lists_every_opcode() {
        let config = ExecConfig::dev(901);
        let traces = trace_block(
            &config,
            &BlockContext::for_tests(),
            B256::ZERO,
            state(),
            &[deposit(1)],
            None,
            &GethDebugTracingOptions::default(),
        )
        .unwrap();
        let GethTrace::Default(frame) = traces[0].trace.as_ref().unwrap() else {
            panic!("not a struct log");
        };
        let ops: Vec<&str> = frame.struct_logs.iter().map(|l| l.op.as_ref()).collect();
        assert_eq!(
            ops,
            ["PUSH0", "SLOAD", "PUSH1", "ADD", "PUSH0", "SSTORE", "STOP"]
        );
        assert!(!frame.failed);
    }

    #[test]
    fn an_unknown_tracer_is_refused_by_name() {
        let options = GethDebugTracingOptions::default()
            .with_tracer(GethDebugTracerType::JsTracer("{ result: 1 }".into()));
        let err = trace_block(
            &ExecConfig::dev(901),
            &BlockContext::for_tests(),
            B256::ZERO,
            state(),
            &[deposit(1)],
            None,
            &options,
        )
        .unwrap_err();
        assert!(matches!(err, TraceError::Options(_)), "{err}");
        assert!(err.to_string().contains("is not supported"), "{err}");
    }
}
