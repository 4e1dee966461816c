//! The seam between the JSON-RPC server and the node: the server speaks JSON and Ethereum's
//! RPC conventions; the backend owns chain data, state and the transaction path.

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_rpc_types_eth::{
    AccessList, BlockOverrides, EIP1186AccountProofResponse, Filter, Log, TransactionRequest,
    state::StateOverride,
};
use alloy_rpc_types_trace::geth::{
    GethDebugTracingCallOptions, GethDebugTracingOptions, GethTrace, TraceResult,
};
pub use rtchain_exec::types::{ChainEvent, ReceiptView};
use rtchain_exec::types::{RecoveredTx, SealedBlock, TxLocation};
use tokio::sync::{broadcast, oneshot};

/// What a synchronous send waits on: the transaction's receipt once it executed, the backend's
/// refusal if it was dropped after admission (another transaction took its nonce, the node
/// stopped...), or `None` if the node gave no answer at all.
pub type ReceiptWait = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<Result<ReceiptView, BackendError>>> + Send>,
>;

/// A [`ReceiptWait`] on a oneshot channel: a sender dropped without an answer is `None`.
pub fn wait_on(receiver: oneshot::Receiver<Result<ReceiptView, BackendError>>) -> ReceiptWait {
    Box::pin(async move { receiver.await.ok() })
}

/// Which state a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateAt {
    /// The newest executed mini-block (tags `latest` and `pending`, and the head block number).
    Latest,
    /// The state right after the given EVM block (the head's included: without what executed
    /// since). A block older than the node keeps answers
    /// [`BackendError::HistoricalStateUnavailable`].
    Block(u64),
}

/// Heads of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Newest sealed EVM block (tag `latest` for block queries).
    pub block_number: u64,
    pub block_hash: B256,
    /// Newest executed mini-block.
    pub mini_block_number: u64,
    /// Newest notarized and finalized EVM blocks (a single node: equal to `block_number`).
    pub safe_block_number: u64,
    pub finalized_block_number: u64,
}

/// How far a catching-up node has come, in EVM block numbers (geth's `eth_syncing` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncProgress {
    /// The head when this catch-up began.
    pub starting_block: u64,
    pub current_block: u64,
    /// The newest block a peer (or L1) said exists.
    pub highest_block: u64,
}

/// A transaction and where it is, if it has executed.
#[derive(Debug, Clone)]
pub struct TxView {
    pub tx: RecoveredTx,
    /// `None` while the transaction waits in the pool (not executed yet).
    pub location: Option<TxLocation>,
}

/// Result of a simulated call (eth_call, eth_estimateGas, eth_createAccessList).
#[derive(Debug, Clone)]
pub enum CallOutcome {
    Success {
        gas_used: u64,
        output: Bytes,
        logs: Vec<alloy_primitives::Log>,
    },
    /// The call reverted; `output` is the revert data (an `Error(string)` reason or custom error).
    Revert { gas_used: u64, output: Bytes },
    /// The call halted (out of gas, invalid opcode, ...); `reason` is human-readable.
    Halt { gas_used: u64, reason: String },
}

/// Why the backend refused a request. The RPC layer maps each to geth's code and message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// A transaction failed validation; the message is geth's text (e.g. "nonce too low: next
    /// nonce 3, tx nonce 1", "insufficient funds for gas * price + value", "intrinsic gas too
    /// low"), answered with code -32000.
    #[error("{0}")]
    InvalidTransaction(String),
    /// The transaction is already known (pool or chain): geth answers "already known".
    #[error("already known")]
    AlreadyKnown,
    /// The pool is full or the sender has too many queued transactions.
    #[error("{0}")]
    PoolFull(String),
    /// A read below the history the node keeps; the message names the oldest block kept.
    #[error("{0}")]
    HistoricalStateUnavailable(String),
    #[error("header not found")]
    BlockNotFound,
    /// A signing method named an account this node holds no key for (geth's text). Only the
    /// devnet signs, for its dev accounts.
    #[error("unknown account")]
    UnknownAccount,
    /// What was asked for does not exist (geth's texts: "transaction not found", "block #N not
    /// found").
    #[error("{0}")]
    NotFound(String),
    /// Bad parameters the backend noticed (code -32602).
    #[error("{0}")]
    InvalidParams(String),
    /// A query hit a bound (e.g. more than `limit` logs): code -32005 "limit exceeded", so that a
    /// client narrows its query instead of retrying it as is.
    #[error("{0}")]
    LimitExceeded(String),
    /// The node is shutting down or the sequencer stopped.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the RPC server needs from a node. Methods are synchronous (reads hit RocksDB and memory
/// and take microseconds); the RPC layer calls them from tokio worker threads.
pub trait Backend: Send + Sync + 'static {
    fn chain_id(&self) -> u64;
    fn client_version(&self) -> String;
    fn head(&self) -> ChainHead;

    /// Accounts this node signs for (`eth_accounts`): the devnet's dev accounts; none on a
    /// real node, which holds no user keys.
    fn accounts(&self) -> Vec<Address> {
        Vec::new()
    }

    /// Signs a filled transaction as `from`, one of [`Backend::accounts`]: its EIP-2718 bytes.
    fn sign_transaction(
        &self,
        from: Address,
        tx: alloy_consensus::TypedTransaction,
    ) -> Result<Bytes, BackendError> {
        let _ = (from, tx);
        Err(BackendError::UnknownAccount)
    }

    /// An EIP-191 personal-message signature by `from` (65 bytes, r || s || v with v 27/28).
    fn sign_message(&self, from: Address, message: &[u8]) -> Result<Bytes, BackendError> {
        let _ = (from, message);
        Err(BackendError::UnknownAccount)
    }

    /// A signature by `from` over a 32-byte digest (an EIP-712 signing hash): 65 bytes,
    /// r || s || v with v 27/28.
    fn sign_hash(&self, from: Address, hash: B256) -> Result<Bytes, BackendError> {
        let _ = (from, hash);
        Err(BackendError::UnknownAccount)
    }

    /// Catch-up progress for `eth_syncing`; `None` while the node keeps up with its peers (or
    /// has none).
    fn sync_progress(&self) -> Option<SyncProgress> {
        None
    }

    /// Peers this node is in touch with (validators and followers heard from recently), for
    /// `net_peerCount`; 0 for a node that replicates with nobody.
    fn peer_count(&self) -> u64 {
        0
    }

    /// Operational counters for `rtchain_nodeStats` (packet I/O, fast path, pool): a JSON object
    /// whose fields are documented in docs/operator.md. `null` when the node keeps none.
    fn node_stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Settlement to L1 for `rtchain_l1Status`: heads, latest batch and output root, lags
    /// (docs/l1.md). `null` when the node does not settle to L1.
    fn l1_status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// For `rtchain_getWithdrawalProof`: the output root's fields at `l2_block` (an output
    /// block) and the message passer's storage proof of `withdrawal_hash`.
    fn withdrawal_proof(
        &self,
        withdrawal_hash: B256,
        l2_block: u64,
    ) -> Result<serde_json::Value, BackendError> {
        let _ = (withdrawal_hash, l2_block);
        Err(BackendError::Unavailable(
            "this node does not settle to L1".into(),
        ))
    }

    /// Sealed EVM blocks.
    fn block_by_number(&self, number: u64) -> Result<Option<Arc<SealedBlock>>, BackendError>;
    fn block_number_by_hash(&self, hash: B256) -> Result<Option<u64>, BackendError>;

    fn transaction(&self, hash: B256) -> Result<Option<TxView>, BackendError>;
    /// The receipt once the transaction's mini-block executed (preconfirmed) or its EVM block
    /// sealed. Standard `eth_getTransactionReceipt` only returns sealed receipts (see docs/rpc.md).
    fn receipt(&self, hash: B256) -> Result<Option<ReceiptView>, BackendError>;

    /// Logs matching `filter` between two sealed blocks (inclusive), block-ordered, at most
    /// `limit` of them (more is an error, so that a client narrows its range).
    fn logs(
        &self,
        from: u64,
        to: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Log>, BackendError>;

    fn balance(&self, address: Address, at: StateAt) -> Result<U256, BackendError>;
    /// Nonce after the newest mini-block (`at = Latest`) or at a block.
    fn nonce(&self, address: Address, at: StateAt) -> Result<u64, BackendError>;
    /// Next nonce counting transactions waiting in the pool (tag `pending`).
    fn pending_nonce(&self, address: Address) -> Result<u64, BackendError>;
    fn code(&self, address: Address, at: StateAt) -> Result<Bytes, BackendError>;
    fn storage(&self, address: Address, slot: U256, at: StateAt) -> Result<B256, BackendError>;

    /// Executes a call without committing. `request.gas` unset means the block gas limit.
    fn call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        state_overrides: Option<&StateOverride>,
        block_overrides: Option<&BlockOverrides>,
    ) -> Result<CallOutcome, BackendError>;
    /// Smallest gas limit with which the call succeeds (binary search, as geth does). A call
    /// that fails at the maximum answers its outcome as `Err(Ok(outcome))`-style via CallOutcome.
    fn estimate_gas(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        state_overrides: Option<&StateOverride>,
    ) -> Result<Result<u64, CallOutcome>, BackendError>;
    /// The access list the call touches and the gas it uses with that list.
    fn create_access_list(
        &self,
        request: &TransactionRequest,
        at: StateAt,
    ) -> Result<(AccessList, CallOutcome), BackendError>;

    /// Validates and queues a raw EIP-2718 transaction; returns its hash.
    fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, BackendError>;
    /// Like `send_raw_transaction`, plus a future that yields the receipt as soon as the
    /// transaction's mini-block is executed and durable (or why it was dropped).
    fn send_raw_transaction_with_receipt(
        &self,
        raw: Bytes,
    ) -> Result<(B256, ReceiptWait), BackendError>;

    /// EIP-1186 proof against the state root of a sealed block (only the head is kept).
    fn proof(
        &self,
        address: Address,
        slots: &[B256],
        at: StateAt,
    ) -> Result<EIP1186AccountProofResponse, BackendError>;

    /// debug_traceTransaction: the sealed transaction re-executed on its block's parent state,
    /// after the transactions before it, under the tracer `options` name.
    fn trace_transaction(
        &self,
        hash: B256,
        options: &GethDebugTracingOptions,
    ) -> Result<GethTrace, BackendError> {
        let _ = (hash, options);
        Err(BackendError::Unavailable("this node does not trace".into()))
    }

    /// debug_traceBlockByNumber/Hash: every transaction of a sealed block, in order.
    fn trace_block(
        &self,
        number: u64,
        options: &GethDebugTracingOptions,
    ) -> Result<Vec<TraceResult>, BackendError> {
        let _ = (number, options);
        Err(BackendError::Unavailable("this node does not trace".into()))
    }

    /// debug_traceCall: a call as `eth_call` runs it, traced.
    fn trace_call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        options: &GethDebugTracingCallOptions,
    ) -> Result<GethTrace, BackendError> {
        let _ = (request, at, options);
        Err(BackendError::Unavailable("this node does not trace".into()))
    }

    /// Base fee the next EVM block will charge.
    fn next_base_fee(&self) -> u64;
    /// Blob base fee of the next block (eth_blobBaseFee), in wei.
    fn next_blob_base_fee(&self) -> u128;
    /// Suggested priority fee (eth_maxPriorityFeePerGas).
    fn suggested_priority_fee(&self) -> u128;
    /// Block gas limit of new blocks.
    fn block_gas_limit(&self) -> u64;

    fn subscribe(&self) -> broadcast::Receiver<ChainEvent>;

    /// Whether `hash` is accepted but not yet in a sealed block (in the pool or preconfirmed).
    /// `eth_getTransactionReceipt` then waits for the next seal (bounded) instead of answering
    /// null, because standard clients poll slowly after a null (viem waits 4 s).
    fn receipt_pending(&self, hash: B256) -> bool {
        let _ = hash;
        false
    }

    /// Newest sealed block number, updated on every seal.
    fn sealed_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
