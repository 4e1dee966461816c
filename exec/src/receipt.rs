//! Receipts in the chain's consensus form (typed, with logs bloom; OP's for deposits) plus the
//! RPC extras.

use alloy_primitives::Log;
use op_alloy_consensus::{OpReceiptEnvelope, OpTxEnvelope};

use crate::{
    tx,
    types::{RecoveredTx, TxReceipt},
};

/// OP's deposit receipt version since Canyon: the receipt carries the deposit nonce in its
/// consensus encoding (and so in the receipts root).
pub const DEPOSIT_RECEIPT_VERSION: u64 = 1;

/// Builds the receipt of `tx` that used `gas_used` and emitted `logs`, given the gas its EVM
/// block had used before it and how many logs the block had before it. `nonce` is the sender's
/// nonce the transaction executed with (a deposit's receipt records it).
#[allow(clippy::too_many_arguments)]
pub fn build_receipt(
    tx: &RecoveredTx,
    success: bool,
    gas_used: u64,
    logs: Vec<Log>,
    cumulative_gas_used: u64,
    first_log_index: u64,
    base_fee: u64,
    nonce: u64,
) -> TxReceipt {
    let deposit = tx.is_deposit();
    let receipt = OpReceiptEnvelope::from_parts(
        success,
        cumulative_gas_used,
        &logs,
        tx.envelope.tx_type(),
        deposit.then_some(nonce),
        deposit.then_some(DEPOSIT_RECEIPT_VERSION),
    );
    TxReceipt {
        receipt,
        gas_used,
        effective_gas_price: tx::effective_gas_price(&tx.envelope, base_fee),
        contract_address: if success {
            tx::created_address(&tx.envelope, tx.sender, nonce)
        } else {
            None
        },
        first_log_index,
    }
}

/// Receipts root of an EVM block (typed 2718 encodings, as Ethereum's and OP's).
pub fn receipts_root(receipts: &[TxReceipt]) -> alloy_primitives::B256 {
    let envelopes: Vec<&OpReceiptEnvelope> = receipts.iter().map(|r| &r.receipt).collect();
    alloy_consensus::proofs::calculate_receipt_root(&envelopes)
}

/// Transactions root of an EVM block.
pub fn transactions_root(txs: &[RecoveredTx]) -> alloy_primitives::B256 {
    let envelopes: Vec<&OpTxEnvelope> = txs.iter().map(|t| &t.envelope).collect();
    alloy_consensus::proofs::calculate_transaction_root(&envelopes)
}
