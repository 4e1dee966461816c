//! Chain data as the node stores and serves it: transactions with their recovered sender,
//! receipts with what RPC needs beyond the consensus receipt, mini-blocks and sealed EVM blocks.

use std::sync::Arc;

use alloy_consensus::Header;
use alloy_primitives::{Address, B256, Bytes};
use op_alloy_consensus::{OpReceiptEnvelope, OpTxEnvelope};
use serde::{Deserialize, Serialize};

/// A decoded, signature-checked transaction. `raw` is its EIP-2718 encoding (what was signed
/// and hashed), kept so that storage and the mini-block log write the exact bytes received.
///
/// The envelope is OP's: Ethereum's legacy, 2930, 1559 and 7702 transactions (byte for byte
/// the same as alloy's `TxEnvelope`), and the deposit transaction (0x7E) that L1 deposits
/// become. Blob transactions do not exist on this chain. A deposit has no signature: its
/// `sender` is its `from`, and it is only ever made by the node from L1 events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredTx {
    pub envelope: OpTxEnvelope,
    pub sender: Address,
    pub hash: B256,
    pub raw: Bytes,
}

impl RecoveredTx {
    /// Whether this is an L1 deposit (type 0x7E).
    pub fn is_deposit(&self) -> bool {
        self.envelope.is_deposit()
    }
}

/// The consensus receipt plus the per-transaction facts an RPC receipt carries that are not in
/// the consensus encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxReceipt {
    /// Typed receipt with `status`, `cumulative_gas_used` (within its EVM block), logs and bloom
    /// (a deposit's also carries its sender's nonce before it, OP's `depositNonce`).
    pub receipt: OpReceiptEnvelope,
    /// Gas used by this transaction alone.
    pub gas_used: u64,
    /// `min(max_fee, base_fee + priority_fee)`, what the sender paid per gas.
    pub effective_gas_price: u128,
    /// Set when the transaction created a contract.
    pub contract_address: Option<Address>,
    /// Index in its EVM block of this receipt's first log (logs are numbered block-wide).
    pub first_log_index: u64,
}

/// Where a transaction sits in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxLocation {
    /// EVM block number the transaction is (or will be, while preconfirmed) sealed into.
    pub block_number: u64,
    /// Hash of that EVM block; `None` while the transaction is preconfirmed (its mini-block has
    /// executed and is durable, but its EVM block is not sealed yet).
    pub block_hash: Option<B256>,
    /// Position in the EVM block.
    pub index: u64,
    /// Mini-block that carried it.
    pub mini_block_number: u64,
    /// Timestamp of its EVM block in seconds.
    pub block_timestamp: u64,
    /// Base fee of its EVM block.
    pub base_fee: u64,
}

/// A mini-block: the real-time unit, executed and made durable as soon as transactions wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiniBlockHeader {
    pub number: u64,
    pub parent_hash: B256,
    /// Wall-clock time the mini-block was cut, in microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// EVM block this mini-block belongs to.
    pub evm_block_number: u64,
    pub transactions_root: B256,
    /// Commitment to the receipts (keccak over their 2718 encodings) and so to the execution.
    pub receipts_root: B256,
    pub gas_used: u64,
    pub tx_count: u32,
}

impl MiniBlockHeader {
    /// Hash of the mini-block: keccak of its canonical JSON-free binary encoding.
    pub fn hash(&self) -> B256 {
        let mut buf = Vec::with_capacity(8 * 4 + 32 * 3 + 8 + 4);
        buf.extend_from_slice(&self.number.to_be_bytes());
        buf.extend_from_slice(self.parent_hash.as_slice());
        buf.extend_from_slice(&self.timestamp_us.to_be_bytes());
        buf.extend_from_slice(&self.evm_block_number.to_be_bytes());
        buf.extend_from_slice(self.transactions_root.as_slice());
        buf.extend_from_slice(self.receipts_root.as_slice());
        buf.extend_from_slice(&self.gas_used.to_be_bytes());
        buf.extend_from_slice(&self.tx_count.to_be_bytes());
        alloy_primitives::keccak256(&buf)
    }
}

/// An executed mini-block with its transactions and receipts, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniBlock {
    pub header: MiniBlockHeader,
    pub hash: B256,
    pub transactions: Vec<RecoveredTx>,
    pub receipts: Vec<TxReceipt>,
    /// Position of the first transaction in its EVM block.
    pub first_index_in_block: u64,
}

/// A sealed EVM block: a standard Ethereum header over consecutive mini-blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlock {
    pub header: Header,
    pub hash: B256,
    pub transactions: Vec<RecoveredTx>,
    pub receipts: Vec<TxReceipt>,
    /// Mini-blocks sealed into this block (inclusive range).
    pub mini_blocks: std::ops::RangeInclusive<u64>,
}

/// A receipt with its transaction and where it sits (`location.block_hash` is `None` while the
/// receipt is preconfirmed: executed, its EVM block not sealed yet).
#[derive(Debug, Clone)]
pub struct ReceiptView {
    pub tx: RecoveredTx,
    pub receipt: TxReceipt,
    pub location: TxLocation,
}

/// What the chain announces as it grows: every executed mini-block, then every sealed EVM block
/// (subscriptions, filters, receipt waiters).
#[derive(Debug, Clone)]
pub enum ChainEvent {
    MiniBlock(Arc<MiniBlock>),
    Block(Arc<SealedBlock>),
}
