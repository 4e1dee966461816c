//! Deposit transactions for the crate's tests.

use alloy_consensus::Sealable;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, address};
use op_alloy_consensus::{OpTxEnvelope, TxDeposit};

use crate::types::RecoveredTx;

/// The L1 account every test deposit comes from.
pub const DEPOSITOR: Address = address!("0x1000000000000000000000000000000000000001");

/// A deposit from [`DEPOSITOR`]; `source` varies the source hash (and so the hash).
pub fn deposit(
    source: u8,
    to: TxKind,
    mint: u128,
    value: u64,
    gas: u64,
    input: &[u8],
) -> RecoveredTx {
    let tx = TxDeposit {
        source_hash: B256::repeat_byte(source),
        from: DEPOSITOR,
        to,
        mint,
        value: U256::from(value),
        gas_limit: gas,
        is_system_transaction: false,
        input: Bytes::copy_from_slice(input),
    };
    let raw = alloy_eips::eip2718::Encodable2718::encoded_2718(&tx);
    let envelope = OpTxEnvelope::Deposit(tx.seal_slow());
    RecoveredTx {
        hash: envelope.tx_hash(),
        envelope,
        sender: DEPOSITOR,
        raw: raw.into(),
    }
}
