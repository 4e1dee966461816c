//! Stored chain data (exec's types) to the RPC shapes of alloy-rpc-types-eth, plus the two
//! shapes of our own: the preconfirmed receipt and the `miniBlocks` notification.
//!
//! Every RPC object here is built from a block or a [`TxLocation`]: block hash, number, index and
//! log indices always come from where the transaction sits, never from client input.

use alloy_consensus::Transaction as _;
use alloy_consensus::transaction::{Recovered, TransactionInfo};
use alloy_primitives::{B256, U256};
use alloy_rlp::Encodable as _;
use alloy_rpc_types_eth::{BlockTransactions, Header, Log, Withdrawals};
use op_alloy_consensus::{OpReceiptEnvelope, OpTxEnvelope};
use rtchain_exec::types::{MiniBlock, RecoveredTx, SealedBlock, TxLocation, TxReceipt};

/// A transaction object: Ethereum's fields, and a deposit's own (`sourceHash`, `mint`,
/// `isSystemTx`) for type 0x7E, as OP chains show them.
pub(crate) type Transaction = alloy_rpc_types_eth::Transaction<OpTxEnvelope>;
/// A receipt object (a deposit's carries `depositNonce` and `depositReceiptVersion`).
pub(crate) type TransactionReceipt =
    alloy_rpc_types_eth::TransactionReceipt<OpReceiptEnvelope<Log>>;
pub(crate) type Block = alloy_rpc_types_eth::Block<Transaction>;
use serde::Serialize;

use crate::backend::ReceiptView;

/// Where a transaction sits, as RPC objects show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxPosition {
    /// `None` while preconfirmed (its EVM block is not sealed yet).
    pub block_hash: Option<B256>,
    /// The EVM block it is (or will be) sealed into.
    pub block_number: u64,
    /// Position in that EVM block.
    pub index: u64,
    /// Seconds; only once sealed (the block's timestamp is fixed at sealing).
    pub block_timestamp: Option<u64>,
    /// Base fee of the EVM block, for the effective gas price of a transaction object.
    pub base_fee: Option<u64>,
}

impl TxPosition {
    pub(crate) fn in_block(block: &SealedBlock, index: usize) -> Self {
        Self {
            block_hash: Some(block.hash),
            block_number: block.header.number,
            index: index as u64,
            block_timestamp: Some(block.header.timestamp),
            base_fee: block.header.base_fee_per_gas,
        }
    }

    pub(crate) fn from_location(location: &TxLocation) -> Self {
        Self {
            block_hash: location.block_hash,
            block_number: location.block_number,
            index: location.index,
            block_timestamp: location.block_hash.map(|_| location.block_timestamp),
            base_fee: Some(location.base_fee),
        }
    }
}

/// A transaction object. `position` is `None` for a transaction that is not in a sealed block
/// yet: block fields are null and `gasPrice` is the max fee, as geth shows pending transactions.
pub(crate) fn rpc_transaction(tx: &RecoveredTx, position: Option<TxPosition>) -> Transaction {
    let info = match position {
        Some(position) => TransactionInfo {
            hash: Some(tx.hash),
            index: Some(position.index),
            block_hash: position.block_hash,
            block_number: Some(position.block_number),
            base_fee: position.base_fee,
            block_timestamp: position.block_timestamp,
        },
        None => TransactionInfo {
            hash: Some(tx.hash),
            index: None,
            block_hash: None,
            block_number: None,
            base_fee: None,
            block_timestamp: None,
        },
    };
    Transaction::from_transaction(
        Recovered::new_unchecked(tx.envelope.clone(), tx.sender),
        info,
    )
}

/// A log as RPC shows it, numbered block-wide.
fn rpc_log(
    inner: alloy_primitives::Log,
    tx_hash: B256,
    position: &TxPosition,
    log_index: u64,
) -> Log {
    Log {
        inner,
        block_hash: position.block_hash,
        block_number: Some(position.block_number),
        block_timestamp: position.block_timestamp,
        transaction_hash: Some(tx_hash),
        transaction_index: Some(position.index),
        log_index: Some(log_index),
        removed: false,
    }
}

/// A receipt object with its logs' positions filled in.
pub(crate) fn rpc_receipt(
    tx: &RecoveredTx,
    receipt: &TxReceipt,
    position: &TxPosition,
) -> TransactionReceipt {
    let mut log_index = receipt.first_log_index;
    let inner = receipt.receipt.clone().map_logs(|log| {
        let log = rpc_log(log, tx.hash, position, log_index);
        log_index += 1;
        log
    });
    TransactionReceipt {
        inner,
        transaction_hash: tx.hash,
        transaction_index: Some(position.index),
        block_hash: position.block_hash,
        block_number: Some(position.block_number),
        gas_used: receipt.gas_used,
        effective_gas_price: receipt.effective_gas_price,
        blob_gas_used: None,
        blob_gas_price: None,
        from: tx.sender,
        to: tx.envelope.to(),
        contract_address: receipt.contract_address,
    }
}

/// A receipt returned by eth_sendRawTransactionSync / realtime_sendRawTransaction and carried by
/// `miniBlocks` notifications: the standard receipt object plus the mini-block that executed
/// the transaction. While `preconfirmed` is true, `blockHash` is null and `blockNumber` is the
/// EVM block the transaction will be sealed into (see docs/rpc.md, "the life of a receipt").
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RealtimeReceipt {
    #[serde(flatten)]
    pub receipt: TransactionReceipt,
    #[serde(with = "alloy_serde::quantity")]
    pub mini_block_number: u64,
    pub preconfirmed: bool,
}

pub(crate) fn realtime_receipt(view: &ReceiptView) -> RealtimeReceipt {
    let position = TxPosition::from_location(&view.location);
    RealtimeReceipt {
        receipt: rpc_receipt(&view.tx, &view.receipt, &position),
        mini_block_number: view.location.mini_block_number,
        preconfirmed: view.location.block_hash.is_none(),
    }
}

/// The `miniBlocks` subscription's notification: one per executed mini-block.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MiniBlockNotification {
    #[serde(with = "alloy_serde::quantity")]
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
    /// Microseconds since the Unix epoch (EVM blocks carry seconds; the unit is in the name).
    #[serde(with = "alloy_serde::quantity")]
    pub timestamp_us: u64,
    #[serde(with = "alloy_serde::quantity")]
    pub evm_block_number: u64,
    pub transactions_root: B256,
    pub receipts_root: B256,
    #[serde(with = "alloy_serde::quantity")]
    pub gas_used: u64,
    /// Transaction hashes in execution order.
    pub transactions: Vec<B256>,
    /// Preconfirmed receipts, in the same order.
    pub receipts: Vec<RealtimeReceipt>,
}

pub(crate) fn mini_block_notification(mini: &MiniBlock) -> MiniBlockNotification {
    let header = &mini.header;
    let receipts = mini
        .transactions
        .iter()
        .zip(&mini.receipts)
        .enumerate()
        .map(|(i, (tx, receipt))| {
            let position = TxPosition {
                block_hash: None,
                block_number: header.evm_block_number,
                index: mini.first_index_in_block + i as u64,
                block_timestamp: None,
                base_fee: None,
            };
            RealtimeReceipt {
                receipt: rpc_receipt(tx, receipt, &position),
                mini_block_number: header.number,
                preconfirmed: true,
            }
        })
        .collect();
    MiniBlockNotification {
        number: header.number,
        hash: mini.hash,
        parent_hash: header.parent_hash,
        timestamp_us: header.timestamp_us,
        evm_block_number: header.evm_block_number,
        transactions_root: header.transactions_root,
        receipts_root: header.receipts_root,
        gas_used: header.gas_used,
        transactions: mini.transactions.iter().map(|tx| tx.hash).collect(),
        receipts,
    }
}

/// The header object (newHeads notifications; `size` only in full block objects).
pub(crate) fn rpc_header(block: &SealedBlock) -> Header {
    Header {
        hash: block.hash,
        inner: block.header.clone(),
        total_difficulty: None,
        size: None,
    }
}

/// A block object with transaction hashes or full transaction objects.
pub(crate) fn rpc_block(block: &SealedBlock, full_transactions: bool) -> Block {
    let transactions = if full_transactions {
        BlockTransactions::Full(
            block
                .transactions
                .iter()
                .enumerate()
                .map(|(i, tx)| rpc_transaction(tx, Some(TxPosition::in_block(block, i))))
                .collect(),
        )
    } else {
        BlockTransactions::Hashes(block.transactions.iter().map(|tx| tx.hash).collect())
    };
    Block {
        header: rpc_header(block).with_size(Some(U256::from(block_size_bytes(block)))),
        uncles: Vec::new(),
        transactions,
        // Post-Shanghai headers carry a withdrawals root; the body then has a (for us always
        // empty) withdrawals list.
        withdrawals: block
            .header
            .withdrawals_root
            .map(|_| Withdrawals::default()),
    }
}

/// All receipts of a sealed block.
pub(crate) fn block_receipts(block: &SealedBlock) -> Vec<TransactionReceipt> {
    block
        .transactions
        .iter()
        .zip(&block.receipts)
        .enumerate()
        .map(|(i, (tx, receipt))| rpc_receipt(tx, receipt, &TxPosition::in_block(block, i)))
        .collect()
}

/// The logs of a sealed block that `matches` accepts, in block order.
pub(crate) fn block_logs(
    block: &SealedBlock,
    mut matches: impl FnMut(&alloy_primitives::Log) -> bool,
) -> Vec<Log> {
    let mut out = Vec::new();
    for (i, (tx, receipt)) in block.transactions.iter().zip(&block.receipts).enumerate() {
        let position = TxPosition::in_block(block, i);
        for (j, log) in receipt.receipt.logs().iter().enumerate() {
            if matches(log) {
                let index = receipt.first_log_index + j as u64;
                out.push(rpc_log(log.clone(), tx.hash, &position, index));
            }
        }
    }
    out
}

/// Size of the block's RLP encoding (header, transactions, no uncles, withdrawals when the
/// header commits to them), as geth reports `size`, computed from the stored raw transactions
/// without re-encoding them.
pub(crate) fn block_size_bytes(block: &SealedBlock) -> u64 {
    let transactions_payload: usize = block
        .transactions
        .iter()
        .map(|tx| tx_in_body_len(&tx.raw))
        .sum();
    let transactions = alloy_rlp::Header {
        list: true,
        payload_length: transactions_payload,
    }
    .length_with_payload();
    let uncles = 1; // the empty list 0xc0
    let withdrawals = usize::from(block.header.withdrawals_root.is_some());
    let payload = block.header.length() + transactions + uncles + withdrawals;
    alloy_rlp::Header {
        list: true,
        payload_length: payload,
    }
    .length_with_payload() as u64
}

/// Length of one transaction inside a block body: a legacy transaction is its RLP list as is;
/// a typed one (EIP-2718) is wrapped as an RLP byte string.
fn tx_in_body_len(raw: &[u8]) -> usize {
    match raw.first() {
        Some(&first) if first >= 0xc0 => raw.len(),
        _ => alloy_rlp::Header {
            list: false,
            payload_length: raw.len(),
        }
        .length_with_payload(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{
        BlockBody, Header as ConsensusHeader, SignableTransaction, TxEip1559, TxLegacy,
    };
    use alloy_eips::eip2718::Encodable2718;
    use alloy_primitives::{Address, Bytes, Signature, TxKind};
    use op_alloy_consensus::OpTxEnvelope as TxEnvelope;

    fn recovered(envelope: TxEnvelope) -> RecoveredTx {
        let raw = Bytes::from(envelope.encoded_2718());
        RecoveredTx {
            hash: envelope.tx_hash(),
            envelope,
            sender: Address::repeat_byte(1),
            raw,
        }
    }

    /// `size` must equal the length of the block's consensus RLP encoding.
    #[test]
    fn block_size_matches_rlp_encoding() {
        let typed = TxEip1559 {
            chain_id: 1,
            gas_limit: 21_000,
            to: TxKind::Call(Address::repeat_byte(2)),
            input: Bytes::from(vec![7; 300]),
            ..Default::default()
        };
        let legacy = TxLegacy {
            chain_id: Some(1),
            gas_limit: 21_000,
            ..Default::default()
        };
        let transactions = vec![
            recovered(TxEnvelope::from(
                typed.into_signed(Signature::test_signature()),
            )),
            recovered(TxEnvelope::from(
                legacy.into_signed(Signature::test_signature()),
            )),
        ];
        for withdrawals_root in [None, Some(alloy_consensus::constants::EMPTY_WITHDRAWALS)] {
            let header = ConsensusHeader {
                number: 5,
                withdrawals_root,
                base_fee_per_gas: Some(7),
                ..Default::default()
            };
            let consensus = alloy_consensus::Block {
                header: header.clone(),
                body: BlockBody {
                    transactions: transactions
                        .iter()
                        .map(|tx| tx.envelope.clone())
                        .collect::<Vec<_>>(),
                    ommers: vec![],
                    withdrawals: withdrawals_root.map(|_| Withdrawals::default()),
                },
            };
            let block = SealedBlock {
                hash: header.hash_slow(),
                header,
                transactions: transactions.clone(),
                receipts: vec![],
                mini_blocks: 0..=0,
            };
            assert_eq!(block_size_bytes(&block), consensus.length() as u64);
            let rpc = rpc_block(&block, false);
            assert_eq!(rpc.header.size, Some(U256::from(consensus.length())));
            assert_eq!(rpc.withdrawals.is_some(), withdrawals_root.is_some());
        }
    }
}
