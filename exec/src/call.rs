//! Simulated calls: gas estimation by binary search (as geth does) and access-list discovery.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_primitives::{Address, B256, U256};
use revm::{
    Context, InspectEvm, Inspector, MainBuilder, MainContext,
    bytecode::opcode,
    context::TxEnv,
    context_interface::result::{EVMError, ExecutionResult},
    interpreter::{
        Interpreter,
        interpreter::EthInterpreter,
        interpreter_types::{InputsTr, Jumps},
    },
    precompile::{PrecompileSpecId, Precompiles},
};

use crate::{
    config::ExecConfig,
    executor::{BlockContext, SimulationChecks, simulate},
    state::{Overlay, StateError, StateReader},
    tx::TxError,
};

/// geth stops the search once the bounds are within 1.5% of each other: a slightly high
/// estimate is harmless, and each probe is a full execution.
const ESTIMATE_ERROR_RATIO: f64 = 0.015;

/// Outcome of a gas estimate.
#[derive(Debug, Clone)]
pub enum Estimate {
    Gas(u64),
    /// The call fails even with all the gas it may have; the result says how.
    Fails(ExecutionResult),
    Invalid(TxError),
}

/// Smallest gas limit (within 1.5%) with which `tx` succeeds, searching below `cap`.
pub fn estimate_gas<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: &R,
    mut tx: TxEnv,
    checks: SimulationChecks,
) -> Result<Estimate, StateError> {
    let mut hi = if tx.gas_limit >= 21_000 {
        tx.gas_limit.min(block.gas_limit)
    } else {
        block.gas_limit
    };
    // A sender can only buy as much gas as its balance allows at the offered price.
    if tx.gas_price > 0 && !checks.no_balance_check {
        let balance = state
            .account(tx.caller)?
            .map(|a| a.balance)
            .unwrap_or_default();
        let available = balance.saturating_sub(tx.value);
        let allowance = available / U256::from(tx.gas_price);
        if allowance < U256::from(hi) {
            hi = allowance.to::<u64>();
        }
    }
    let mut run = |gas: u64| -> Result<Result<ExecutionResult, TxError>, StateError> {
        tx.gas_limit = gas;
        simulate(config, block, state, tx.clone(), checks)
    };
    let first = match run(hi)? {
        Ok(result) => result,
        Err(error) => return Ok(Estimate::Invalid(error)),
    };
    if !first.is_success() {
        return Ok(Estimate::Fails(first));
    }
    let used = first.gas().total_gas_spent();
    let refund = first.gas().inner_refunded();
    let mut lo = used.saturating_sub(1);
    // Most calls succeed with what they used plus the refund and the 63/64 reserve; try that
    // first so that the common case costs two executions, not twenty.
    let optimistic = (used + refund + 2_300) * 64 / 63;
    if optimistic < hi {
        match run(optimistic)? {
            Ok(result) if result.is_success() => hi = optimistic,
            _ => lo = optimistic,
        }
    }
    while lo + 1 < hi {
        if ((hi - lo) as f64) / (hi as f64) < ESTIMATE_ERROR_RATIO {
            break;
        }
        let mid = if hi > lo * 2 {
            lo * 2
        } else {
            lo + (hi - lo) / 2
        };
        match run(mid)? {
            Ok(result) if result.is_success() => hi = mid,
            _ => lo = mid,
        }
    }
    Ok(Estimate::Gas(hi))
}

/// Records every account and storage slot a call touches (EIP-2930).
#[derive(Debug, Default)]
struct AccessListInspector {
    excluded: HashSet<Address>,
    touched: BTreeMap<Address, BTreeSet<B256>>,
}

impl AccessListInspector {
    fn touch(&mut self, address: Address) {
        if !self.excluded.contains(&address) {
            self.touched.entry(address).or_default();
        }
    }
}

impl<CTX> Inspector<CTX, EthInterpreter> for AccessListInspector {
    fn step(&mut self, interp: &mut Interpreter<EthInterpreter>, _context: &mut CTX) {
        let op = interp.bytecode.opcode();
        let peek_address = |n: usize| {
            interp
                .stack
                .peek(n)
                .ok()
                .map(|word| Address::from_word(B256::from(word)))
        };
        match op {
            opcode::SLOAD | opcode::SSTORE => {
                if let Ok(slot) = interp.stack.peek(0) {
                    let address = interp.input.target_address();
                    // Slots of excluded accounts (sender, recipient) still count: geth lists them.
                    self.touched
                        .entry(address)
                        .or_default()
                        .insert(B256::from(slot));
                }
            }
            opcode::EXTCODECOPY
            | opcode::EXTCODEHASH
            | opcode::EXTCODESIZE
            | opcode::BALANCE
            | opcode::SELFDESTRUCT => {
                if let Some(address) = peek_address(0) {
                    self.touch(address);
                }
            }
            opcode::DELEGATECALL | opcode::CALL | opcode::STATICCALL | opcode::CALLCODE => {
                if let Some(address) = peek_address(1) {
                    self.touch(address);
                }
            }
            _ => {}
        }
    }
}

/// The access list `tx` touches, and the result of running it with that list.
pub fn create_access_list<R: StateReader>(
    config: &ExecConfig,
    block: &BlockContext,
    state: &R,
    mut tx: TxEnv,
    checks: SimulationChecks,
) -> Result<Result<(AccessList, ExecutionResult), TxError>, StateError> {
    let mut excluded: HashSet<Address> =
        Precompiles::new(PrecompileSpecId::from_spec_id(config.spec))
            .addresses()
            .copied()
            .collect();
    excluded.insert(tx.caller);
    if let revm::primitives::TxKind::Call(to) = tx.kind {
        excluded.insert(to);
    } else {
        excluded.insert(tx.caller.create(tx.nonce));
    }
    let mut cfg = config.cfg_env();
    cfg.disable_nonce_check = true;
    cfg.disable_base_fee = checks.no_base_fee;
    cfg.disable_balance_check = checks.no_balance_check;
    let inspector = AccessListInspector {
        excluded,
        touched: BTreeMap::new(),
    };
    let mut evm = Context::mainnet()
        .with_db(Overlay::new(state))
        .with_cfg(cfg)
        .with_block(block.block_env())
        .build_mainnet_with_inspector(inspector);
    match evm.inspect_tx(tx.clone()) {
        Ok(_) => {}
        Err(EVMError::Database(e)) => return Err(e),
        Err(EVMError::Transaction(invalid)) => return Ok(Err(TxError::Other(invalid.to_string()))),
        Err(other) => return Err(StateError(format!("executor: {other}"))),
    }
    let touched = std::mem::take(&mut evm.inspector.touched);
    let list = AccessList(
        touched
            .into_iter()
            .map(|(address, slots)| AccessListItem {
                address,
                storage_keys: slots.into_iter().collect(),
            })
            .collect(),
    );
    tx.access_list = list.clone();
    if tx.tx_type == 0 {
        tx.tx_type = 1;
    }
    Ok(simulate(config, block, state, tx, checks)?.map(|result| (list, result)))
}
