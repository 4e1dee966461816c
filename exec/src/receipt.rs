//! Receipts in Ethereum's consensus form (typed, with logs bloom) plus the RPC extras.

use alloy_consensus::{
    Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, TxEnvelope, TxType,
};
use alloy_primitives::{Log, logs_bloom};

use crate::{
    tx,
    types::{RecoveredTx, TxReceipt},
};

/// Builds the receipt of `tx` that used `gas_used` and emitted `logs`, given the gas its EVM
/// block had used before it and how many logs the block had before it.
pub fn build_receipt(
    tx: &RecoveredTx,
    success: bool,
    gas_used: u64,
    logs: Vec<Log>,
    cumulative_gas_used: u64,
    first_log_index: u64,
    base_fee: u64,
) -> TxReceipt {
    let bloom = logs_bloom(logs.iter());
    let receipt = ReceiptWithBloom::new(
        Receipt {
            status: Eip658Value::Eip658(success),
            cumulative_gas_used,
            logs,
        },
        bloom,
    );
    let receipt = match tx.envelope.tx_type() {
        TxType::Legacy => ReceiptEnvelope::Legacy(receipt),
        TxType::Eip2930 => ReceiptEnvelope::Eip2930(receipt),
        TxType::Eip1559 => ReceiptEnvelope::Eip1559(receipt),
        TxType::Eip4844 => ReceiptEnvelope::Eip4844(receipt),
        TxType::Eip7702 => ReceiptEnvelope::Eip7702(receipt),
    };
    TxReceipt {
        receipt,
        gas_used,
        effective_gas_price: tx::effective_gas_price(&tx.envelope, base_fee),
        contract_address: if success {
            tx::created_address(&tx.envelope, tx.sender)
        } else {
            None
        },
        first_log_index,
    }
}

/// Receipts root of an EVM block.
pub fn receipts_root(receipts: &[TxReceipt]) -> alloy_primitives::B256 {
    let envelopes: Vec<&ReceiptEnvelope> = receipts.iter().map(|r| &r.receipt).collect();
    alloy_consensus::proofs::calculate_receipt_root(&envelopes)
}

/// Transactions root of an EVM block.
pub fn transactions_root(txs: &[RecoveredTx]) -> alloy_primitives::B256 {
    let envelopes: Vec<&TxEnvelope> = txs.iter().map(|t| &t.envelope).collect();
    alloy_consensus::proofs::calculate_transaction_root(&envelopes)
}
