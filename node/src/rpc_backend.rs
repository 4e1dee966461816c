//! The JSON-RPC adapter: implements the RPC crate's `Backend` over the chain: reads from the
//! newest state (layers over RocksDB), sealed blocks (memory for recent ones, RocksDB
//! otherwise), and the transaction path through [`admission`], whose typed answers it maps to
//! the RPC crate's errors (and so to geth's codes and texts).

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_rpc_types_eth::{
    AccessList, BlockOverrides, EIP1186AccountProofResponse, EIP1186StorageProof, Filter, Log,
    TransactionRequest, state::StateOverride,
};
use alloy_rpc_types_trace::geth::{
    GethDebugTracingCallOptions, GethDebugTracingOptions, GethTrace, TraceResult,
};
use rtchain_exec::{
    BlockContext, SealedBlock, SimulationChecks, StateReader, TxLocation,
    call::{Estimate, create_access_list, estimate_gas},
    executor::simulate,
    revm::{
        context::TxEnv,
        context_interface::{either::Either, result::ExecutionResult},
        primitives::KECCAK_EMPTY,
    },
    state::Overlay,
};
use rtchain_exec::{
    StateError,
    trace::{TraceError, TxTrace, trace_block, trace_call},
};
use rtchain_rpc::backend::{
    Backend, BackendError, CallOutcome, ChainEvent, ChainHead, ReceiptView, ReceiptWait, StateAt,
    SyncProgress, TxView,
};
use rtchain_state::{StoreError, store::HistoricalView};
use tokio::sync::{broadcast, oneshot, watch};

use crate::{
    admission,
    chain::{Chain, LiveState},
    fastpath::StatsHandle,
    outcome::{Outcome, Rejection, ReplySink},
    replica::ConsensusStats,
};

pub struct NodeBackend {
    chain: Arc<Chain>,
    /// Set once the fast path runs: its counters for `rtchain_nodeStats`.
    fastpath: std::sync::OnceLock<StatsHandle>,
    /// Set when this node is a validator: replication counters for `rtchain_nodeStats`.
    consensus: std::sync::OnceLock<Arc<ConsensusStats>>,
    /// The dev accounts' keys, on a devnet that signs for them (`rpc.dev_accounts`).
    dev_signers: std::sync::OnceLock<Vec<alloy_signer_local::PrivateKeySigner>>,
}

/// A refusal as the RPC crate reports it: geth's code (-32000 for every transaction refusal,
/// -32603 for an internal failure) and geth's text.
fn backend_error(rejection: Rejection) -> BackendError {
    match rejection {
        Rejection::Invalid(_) | Rejection::Replaced { .. } => {
            BackendError::InvalidTransaction(rejection.to_string())
        }
        Rejection::AlreadyKnown => BackendError::AlreadyKnown,
        Rejection::PoolFull | Rejection::NonceGapFull { .. } => {
            BackendError::PoolFull(rejection.to_string())
        }
        Rejection::Unavailable(why) => BackendError::Unavailable(why.to_string()),
        Rejection::Internal(why) => BackendError::Internal(why),
    }
}

/// What a synchronous sender hears: the receipt, or why the node dropped the transaction.
fn receipt_result(outcome: Outcome) -> Result<ReceiptView, BackendError> {
    match outcome {
        Outcome::Executed(view) => Ok(view),
        Outcome::Rejected(rejection) => Err(backend_error(rejection)),
        Outcome::Failed(failure) => Err(BackendError::Unavailable(failure.to_string())),
    }
}

impl NodeBackend {
    pub fn new(chain: Arc<Chain>) -> Self {
        Self {
            chain,
            fastpath: std::sync::OnceLock::new(),
            consensus: std::sync::OnceLock::new(),
            dev_signers: std::sync::OnceLock::new(),
        }
    }

    /// Signs for these accounts (eth_accounts, eth_sendTransaction, eth_sign...).
    pub fn set_dev_signers(&self, signers: Vec<alloy_signer_local::PrivateKeySigner>) {
        let _ = self.dev_signers.set(signers);
    }

    fn dev_signer(
        &self,
        from: Address,
    ) -> Result<&alloy_signer_local::PrivateKeySigner, BackendError> {
        self.dev_signers
            .get()
            .and_then(|signers| signers.iter().find(|s| s.address() == from))
            .ok_or(BackendError::UnknownAccount)
    }

    pub fn set_consensus_stats(&self, stats: Arc<ConsensusStats>) {
        let _ = self.consensus.set(stats);
    }

    pub fn set_fastpath_stats(&self, stats: StatsHandle) {
        let _ = self.fastpath.set(stats);
    }

    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// The state a read names: the newest (layers over RocksDB), or a sealed block's from the
    /// history the store keeps.
    fn state(&self, at: StateAt) -> Result<ReadState<'_>, BackendError> {
        match at {
            StateAt::Latest => Ok(ReadState::Live(self.chain.latest_state())),
            StateAt::Block(n) => self
                .chain
                .store
                .view_at(n)
                .map(ReadState::Block)
                .map_err(history_err),
        }
    }

    fn account(
        &self,
        address: Address,
        at: StateAt,
    ) -> Result<Option<rtchain_exec::revm::state::AccountInfo>, BackendError> {
        self.state(at)?.account(address).map_err(internal)
    }

    /// The block a call executes in: the next block's context on the newest state, the block's
    /// own header at a sealed block (as geth does), then the caller's overrides.
    fn block_context(
        &self,
        state: &ReadState<'_>,
        overrides: Option<&BlockOverrides>,
    ) -> Result<BlockContext, BackendError> {
        let mut ctx = match state {
            ReadState::Live(_) => self.chain.pending_block_context(),
            ReadState::Block(view) => context_of(
                &view
                    .header()
                    .map_err(store_err)?
                    .ok_or(BackendError::BlockNotFound)?,
            ),
        };
        if let Some(o) = overrides {
            if let Some(n) = o.number {
                ctx.number = n.saturating_to();
            }
            if let Some(t) = o.time {
                ctx.timestamp = t;
            }
            if let Some(g) = o.gas_limit {
                ctx.gas_limit = g;
            }
            if let Some(c) = o.coinbase {
                ctx.beneficiary = c;
            }
            if let Some(r) = o.random {
                ctx.prevrandao = r;
            }
            if let Some(f) = o.base_fee {
                ctx.base_fee = f.saturating_to();
            }
        }
        Ok(ctx)
    }

    /// geth's call semantics: no fee fields means a zero gas price, no base fee and no balance
    /// check; the gas defaults to the block gas limit.
    fn tx_env(
        &self,
        request: &TransactionRequest,
        ctx: &BlockContext,
    ) -> Result<(TxEnv, SimulationChecks), BackendError> {
        let input = request
            .input
            .clone()
            .try_into_unique_input()
            .map_err(|e| BackendError::InvalidParams(e.to_string()))?
            .unwrap_or_default();
        let caller = request.from.unwrap_or_default();
        let fee_given = request.gas_price.is_some() || request.max_fee_per_gas.is_some();
        let gas_price = request.gas_price.or(request.max_fee_per_gas).unwrap_or(0);
        let mut env = TxEnv {
            caller,
            gas_limit: request.gas.unwrap_or(ctx.gas_limit).min(ctx.gas_limit),
            gas_price,
            kind: request.to.unwrap_or(TxKind::Create),
            value: request.value.unwrap_or_default(),
            data: input,
            nonce: request.nonce.unwrap_or_default(),
            chain_id: Some(self.chain.exec.chain_id),
            access_list: request.access_list.clone().unwrap_or_default(),
            ..TxEnv::default()
        };
        env.tx_type = if request.authorization_list.is_some() {
            4
        } else if request.max_fee_per_gas.is_some() || request.max_priority_fee_per_gas.is_some() {
            2
        } else if request.access_list.is_some() {
            1
        } else {
            0
        };
        if env.tx_type >= 2 {
            env.gas_priority_fee =
                Some(request.max_priority_fee_per_gas.unwrap_or(0).min(gas_price));
        }
        if let Some(list) = &request.authorization_list {
            env.authorization_list = list.iter().cloned().map(Either::Left).collect();
        }
        if env.tx_type == 4 && env.kind == TxKind::Create {
            return Err(BackendError::InvalidParams(
                "EIP-7702 transactions cannot create contracts".into(),
            ));
        }
        let checks = SimulationChecks {
            no_base_fee: !fee_given,
            no_balance_check: !fee_given,
        };
        Ok((env, checks))
    }

    fn overlay_with<'a>(
        &self,
        base: &'a dyn StateReader,
        overrides: Option<&StateOverride>,
    ) -> Result<Overlay<&'a dyn StateReader>, BackendError> {
        let mut overlay = Overlay::new(base);
        if let Some(overrides) = overrides {
            for (address, o) in overrides {
                if o.state.is_some() && o.state_diff.is_some() {
                    return Err(BackendError::InvalidParams(format!(
                        "account {address} has both 'state' and 'stateDiff'"
                    )));
                }
                let storage = match (&o.state, &o.state_diff) {
                    (Some(full), _) => Some((true, slots(full))),
                    (None, Some(diff)) => Some((false, slots(diff))),
                    (None, None) => None,
                };
                overlay
                    .override_account(*address, o.balance, o.nonce, o.code.clone(), storage)
                    .map_err(internal)?;
            }
        }
        Ok(overlay)
    }

    /// Re-executes sealed block `number` on its parent's state (from the history kept) and
    /// traces all its transactions, or the one at `only`.
    fn trace_sealed(
        &self,
        number: u64,
        only: Option<usize>,
        options: &GethDebugTracingOptions,
    ) -> Result<Vec<TxTrace>, BackendError> {
        let block = self
            .block_by_number(number)?
            .ok_or_else(|| BackendError::NotFound(format!("block #{number} not found")))?;
        if number == 0 {
            // Genesis has no transactions and no parent.
            return Ok(Vec::new());
        }
        let parent = self.chain.store.view_at(number - 1).map_err(history_err)?;
        trace_block(
            &self.chain.exec,
            &context_of(&block.header),
            block.hash,
            &parent,
            &block.transactions,
            only,
            options,
        )
        .map_err(trace_err)
    }

    fn location_of(
        &self,
        number: u64,
        hash: B256,
        index: u64,
        mini: u64,
        block: &SealedBlock,
    ) -> TxLocation {
        TxLocation {
            block_number: number,
            block_hash: Some(hash),
            index,
            mini_block_number: mini,
            block_timestamp: block.header.timestamp,
            base_fee: block.header.base_fee_per_gas.unwrap_or_default(),
        }
    }
}

/// The context a sealed block's transactions executed in, from its header.
fn context_of(header: &alloy_consensus::Header) -> BlockContext {
    BlockContext {
        number: header.number,
        timestamp: header.timestamp,
        beneficiary: header.beneficiary,
        base_fee: header.base_fee_per_gas.unwrap_or_default(),
        gas_limit: header.gas_limit,
        prevrandao: header.mix_hash,
    }
}

fn trace_err(e: TraceError) -> BackendError {
    match e {
        TraceError::Options(message) => BackendError::InvalidParams(message),
        TraceError::Invalid(tx) => BackendError::InvalidTransaction(tx.to_string()),
        TraceError::State(e) => internal(e),
    }
}

fn slots(map: &alloy_primitives::map::B256HashMap<B256>) -> Vec<(U256, U256)> {
    map.iter()
        .map(|(k, v)| (U256::from_be_bytes(k.0), U256::from_be_bytes(v.0)))
        .collect()
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

fn store_err(e: StoreError) -> BackendError {
    BackendError::Internal(e.to_string())
}

/// A read below the history kept is the caller's to fix (a newer block, or a node that keeps
/// more); anything else is internal.
fn history_err(e: StoreError) -> BackendError {
    match e {
        StoreError::HistoryNotKept { .. } => {
            BackendError::HistoricalStateUnavailable(e.to_string())
        }
        other => store_err(other),
    }
}

/// The state an RPC read or call sees.
enum ReadState<'a> {
    Live(LiveState<'a>),
    Block(HistoricalView<'a>),
}

impl StateReader for ReadState<'_> {
    fn account(
        &self,
        address: Address,
    ) -> Result<Option<rtchain_exec::revm::state::AccountInfo>, StateError> {
        match self {
            ReadState::Live(s) => s.account(address),
            ReadState::Block(s) => s.account(address),
        }
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        match self {
            ReadState::Live(s) => s.storage(address, slot),
            ReadState::Block(s) => s.storage(address, slot),
        }
    }

    fn code(
        &self,
        code_hash: B256,
    ) -> Result<Option<rtchain_exec::revm::bytecode::Bytecode>, StateError> {
        match self {
            ReadState::Live(s) => s.code(code_hash),
            ReadState::Block(s) => s.code(code_hash),
        }
    }

    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        match self {
            ReadState::Live(s) => s.block_hash(number),
            ReadState::Block(s) => s.block_hash(number),
        }
    }
}

fn outcome(result: ExecutionResult) -> CallOutcome {
    let gas_used = result.tx_gas_used();
    match result {
        ExecutionResult::Success { logs, output, .. } => CallOutcome::Success {
            gas_used,
            output: output.into_data(),
            logs,
        },
        ExecutionResult::Revert { output, .. } => CallOutcome::Revert { gas_used, output },
        ExecutionResult::Halt { reason, .. } => CallOutcome::Halt {
            gas_used,
            reason: halt_message(&reason),
        },
    }
}

/// geth's wording for the common halts.
fn halt_message(reason: &rtchain_exec::revm::context_interface::result::HaltReason) -> String {
    use rtchain_exec::revm::context_interface::result::HaltReason as H;
    match reason {
        H::OutOfGas(_) => "out of gas".into(),
        H::OpcodeNotFound | H::InvalidFEOpcode => "invalid opcode".into(),
        H::InvalidJump => "invalid jump destination".into(),
        H::StackUnderflow => "stack underflow".into(),
        H::StackOverflow => "stack limit reached 1024".into(),
        H::StateChangeDuringStaticCall | H::CallNotAllowedInsideStatic => "write protection".into(),
        H::OutOfFunds => "insufficient balance for transfer".into(),
        H::CallTooDeep => "max call depth exceeded".into(),
        H::CreateCollision => "contract address collision".into(),
        H::CreateContractSizeLimit => "max code size exceeded".into(),
        H::CreateContractStartingWithEF => "invalid code: must not begin with 0xef".into(),
        H::CreateInitCodeSizeLimit => "max initcode size exceeded".into(),
        other => format!("{other:?}"),
    }
}

impl Backend for NodeBackend {
    fn chain_id(&self) -> u64 {
        self.chain.exec.chain_id
    }

    fn client_version(&self) -> String {
        self.chain.client_version.clone()
    }

    fn accounts(&self) -> Vec<Address> {
        self.dev_signers
            .get()
            .map(|signers| signers.iter().map(|s| s.address()).collect())
            .unwrap_or_default()
    }

    fn sign_transaction(
        &self,
        from: Address,
        mut tx: alloy_consensus::TypedTransaction,
    ) -> Result<Bytes, BackendError> {
        use alloy::network::TxSignerSync;
        use alloy_eips::eip2718::Encodable2718;
        let signer = self.dev_signer(from)?;
        let signature = signer
            .sign_transaction_sync(&mut tx)
            .map_err(|e| BackendError::InvalidParams(format!("cannot sign: {e}")))?;
        let envelope = alloy_consensus::TxEnvelope::from(
            alloy_consensus::SignableTransaction::into_signed(tx, signature),
        );
        Ok(envelope.encoded_2718().into())
    }

    fn sign_message(&self, from: Address, message: &[u8]) -> Result<Bytes, BackendError> {
        use alloy::signers::SignerSync;
        let signature = self
            .dev_signer(from)?
            .sign_message_sync(message)
            .map_err(|e| BackendError::Internal(format!("signing: {e}")))?;
        Ok(signature.as_bytes().to_vec().into())
    }

    fn sign_hash(&self, from: Address, hash: B256) -> Result<Bytes, BackendError> {
        use alloy::signers::SignerSync;
        let signature = self
            .dev_signer(from)?
            .sign_hash_sync(&hash)
            .map_err(|e| BackendError::Internal(format!("signing: {e}")))?;
        Ok(signature.as_bytes().to_vec().into())
    }

    fn sync_progress(&self) -> Option<SyncProgress> {
        let head = self.chain.state.read().head.number;
        self.chain.catch_up.progress(head).map(|p| SyncProgress {
            starting_block: p.starting_block,
            current_block: p.current_block,
            highest_block: p.highest_block,
        })
    }

    fn peer_count(&self) -> u64 {
        self.consensus
            .get()
            .map_or(0, |stats| stats.connected_peers() as u64)
    }

    fn node_stats(&self) -> serde_json::Value {
        let (pending, queued_senders) = {
            let pool = self.chain.pool.read();
            (pool.pending_count(), pool.senders())
        };
        let state = self.chain.state.read();
        serde_json::json!({
            "head": state.head.number,
            "miniBlock": state.last_mini_block,
            "pool": { "pending": pending, "senders": queued_senders },
            "fastpath": self.fastpath.get().map(StatsHandle::to_json),
            "consensus": self.consensus.get().map(|c| c.to_json()),
        })
    }

    fn head(&self) -> ChainHead {
        let state = self.chain.state.read();
        // Without L1, a sealed block is final the moment it is written (alone), or once 2f+1
        // validators finalized it (only finalized content is committed). Settled to L1,
        // `safe` and `finalized` mean what they mean on OP chains: the newest L2 block whose
        // batch is in a safe / finalized L1 block.
        let (safe, finalized) = match &self.chain.settlement {
            Some(s) => {
                let view = s.view.read();
                (
                    view.l2_safe.min(state.head.number),
                    view.l2_finalized.min(state.head.number),
                )
            }
            None => (state.head.number, state.head.number),
        };
        ChainHead {
            block_number: state.head.number,
            block_hash: state.head.hash,
            mini_block_number: state.last_mini_block,
            safe_block_number: safe,
            finalized_block_number: finalized,
        }
    }

    fn l1_status(&self) -> serde_json::Value {
        let Some(s) = &self.chain.settlement else {
            return serde_json::Value::Null;
        };
        let head = self.chain.state.read().head.number;
        let view = s.view.read();
        let batcher = s.batcher.lock();
        let proposer = s.proposer.lock();
        let book = s.book.lock();
        let last_batch = batcher.posted.last();
        let last_output = proposer.posted.last();
        serde_json::json!({
            "deployment": s.deployment,
            "l1": {
                "latest": view.latest,
                "safe": view.safe,
                "finalized": view.finalized,
                "errorsInARow": view.errors_in_a_row,
                "lastError": view.last_error,
            },
            "l2": {
                "head": head,
                "safe": view.l2_safe.min(head),
                "finalized": view.l2_finalized.min(head),
                "safeLag": head.saturating_sub(view.l2_safe),
                "finalizedLag": head.saturating_sub(view.l2_finalized),
            },
            "inbox": {
                "nextL2Block": view.inbox_next_block,
                "batches": view.inbox_batches,
                "postedLag": head.saturating_sub(view.inbox_next_block.saturating_sub(1)),
            },
            "batcher": {
                "posted": batcher.posted.len(),
                "last": last_batch,
                "replacements": batcher.replacements,
                "reverted": batcher.reverted,
                "errors": batcher.errors,
                "lastError": batcher.last_error,
            },
            "proposer": {
                "oracleNextBlock": book.next_wanted,
                "outputLag": head.saturating_sub(book.next_wanted.saturating_sub(book.interval)),
                "posted": proposer.posted.len(),
                "last": last_output,
                "errors": proposer.errors,
                "lastError": proposer.last_error,
                "signer": s.signer_address(),
            },
        })
    }

    fn withdrawal_proof(
        &self,
        withdrawal_hash: B256,
        l2_block: u64,
    ) -> Result<serde_json::Value, BackendError> {
        if self.chain.settlement.is_none() {
            return Err(BackendError::Unavailable(
                "this node does not settle to L1".into(),
            ));
        }
        let Some((proof, value, nodes)) =
            crate::settlement::withdrawal_proof(&self.chain.store, l2_block, withdrawal_hash)
                .map_err(BackendError::Internal)?
        else {
            return Err(BackendError::InvalidParams(format!(
                "block {l2_block} is not an output block this node sealed"
            )));
        };
        Ok(serde_json::json!({
            "l2BlockNumber": l2_block,
            "outputRoot": proof.root(),
            "outputRootProof": proof,
            "withdrawalHash": withdrawal_hash,
            "storageSlot": rtchain_l1::output::withdrawal_slot(withdrawal_hash),
            "sent": !value.is_zero(),
            "withdrawalProof": nodes,
        }))
    }

    fn block_by_number(&self, number: u64) -> Result<Option<Arc<SealedBlock>>, BackendError> {
        if let Some(block) = self
            .chain
            .recent
            .read()
            .iter()
            .rev()
            .find(|b| b.header.number == number)
        {
            return Ok(Some(block.clone()));
        }
        let Some(header) = self.chain.store.header(number).map_err(store_err)? else {
            return Ok(None);
        };
        let transactions = self
            .chain
            .store
            .transactions(number)
            .map_err(store_err)?
            .unwrap_or_default();
        let receipts = self
            .chain
            .store
            .receipts(number)
            .map_err(store_err)?
            .unwrap_or_default();
        let hash = header.hash_slow();
        let minis = match (transactions.first(), transactions.last()) {
            (Some(first), Some(last)) => {
                let a = self
                    .chain
                    .store
                    .tx_index(first.hash)
                    .map_err(store_err)?
                    .map(|e| e.mini_block_number)
                    .unwrap_or_default();
                let b = self
                    .chain
                    .store
                    .tx_index(last.hash)
                    .map_err(store_err)?
                    .map(|e| e.mini_block_number)
                    .unwrap_or_default();
                a..=b
            }
            // A block without transactions carries no mini-block: an empty range.
            _ => std::ops::RangeInclusive::new(1, 0),
        };
        Ok(Some(Arc::new(SealedBlock {
            header,
            hash,
            transactions,
            receipts,
            mini_blocks: minis,
        })))
    }

    fn block_number_by_hash(&self, hash: B256) -> Result<Option<u64>, BackendError> {
        if let Some(block) = self
            .chain
            .recent
            .read()
            .iter()
            .rev()
            .find(|b| b.hash == hash)
        {
            return Ok(Some(block.header.number));
        }
        self.chain.store.block_number(hash).map_err(store_err)
    }

    fn transaction(&self, hash: B256) -> Result<Option<TxView>, BackendError> {
        if let Some(view) = self.receipt(hash)? {
            return Ok(Some(TxView {
                tx: view.tx,
                location: Some(view.location),
            }));
        }
        if let Some(tx) = self.chain.state.read().preconfirmed.get(&hash) {
            return Ok(Some(TxView {
                tx: tx.0.clone(),
                location: Some(tx.2),
            }));
        }
        Ok(self.chain.pool.read().get(&hash).map(|tx| TxView {
            tx: tx.clone(),
            location: None,
        }))
    }

    fn receipt(&self, hash: B256) -> Result<Option<ReceiptView>, BackendError> {
        if let Some((tx, receipt, location)) = self.chain.state.read().preconfirmed.get(&hash) {
            return Ok(Some(ReceiptView {
                tx: tx.clone(),
                receipt: receipt.clone(),
                location: *location,
            }));
        }
        let Some(entry) = self.chain.store.tx_index(hash).map_err(store_err)? else {
            return Ok(None);
        };
        let Some(block) = self.block_by_number(entry.block_number)? else {
            return Ok(None);
        };
        let index = entry.index as usize;
        let (Some(tx), Some(receipt)) = (block.transactions.get(index), block.receipts.get(index))
        else {
            return Err(BackendError::Internal(format!(
                "transaction {hash} indexed at a missing position"
            )));
        };
        let location = self.location_of(
            entry.block_number,
            block.hash,
            index as u64,
            entry.mini_block_number,
            &block,
        );
        Ok(Some(ReceiptView {
            tx: tx.clone(),
            receipt: receipt.clone(),
            location,
        }))
    }

    fn logs(
        &self,
        from: u64,
        to: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Log>, BackendError> {
        let store = &self.chain.store;
        // Candidate blocks from the index: by address, else by the first topic position that is
        // constrained; otherwise every block in range, screened by its bloom.
        let addresses: Vec<Address> = filter.address.iter().copied().collect();
        let first_topics: Option<Vec<B256>> = filter
            .topics
            .iter()
            .find(|t| !t.is_empty())
            .map(|t| t.iter().copied().collect());
        let max_blocks = (to.saturating_sub(from) + 1) as usize;
        let mut candidates: Vec<u64> = if !addresses.is_empty() {
            let mut all = Vec::new();
            for a in &addresses {
                all.extend(
                    store
                        .log_blocks(a.as_slice(), false, from, to, max_blocks)
                        .map_err(store_err)?,
                );
            }
            all
        } else if let Some(topics) = first_topics {
            let mut all = Vec::new();
            for t in &topics {
                all.extend(
                    store
                        .log_blocks(t.as_slice(), true, from, to, max_blocks)
                        .map_err(store_err)?,
                );
            }
            all
        } else {
            (from..=to).collect()
        };
        candidates.sort_unstable();
        candidates.dedup();
        let mut out = Vec::new();
        for number in candidates {
            let Some(block) = self.block_by_number(number)? else {
                continue;
            };
            if !filter.matches_bloom(block.header.logs_bloom) {
                continue;
            }
            for (index, (tx, receipt)) in block.transactions.iter().zip(&block.receipts).enumerate()
            {
                for (i, log) in receipt.receipt.logs().iter().enumerate() {
                    if !filter.matches(log) {
                        continue;
                    }
                    if out.len() >= limit {
                        return Err(BackendError::LimitExceeded(format!(
                            "query returned more than {limit} results; narrow the block range"
                        )));
                    }
                    out.push(Log {
                        inner: log.clone(),
                        block_hash: Some(block.hash),
                        block_number: Some(number),
                        block_timestamp: Some(block.header.timestamp),
                        transaction_hash: Some(tx.hash),
                        transaction_index: Some(index as u64),
                        log_index: Some(receipt.first_log_index + i as u64),
                        removed: false,
                    });
                }
            }
        }
        Ok(out)
    }

    fn balance(&self, address: Address, at: StateAt) -> Result<U256, BackendError> {
        Ok(self
            .account(address, at)?
            .map(|a| a.balance)
            .unwrap_or_default())
    }

    fn nonce(&self, address: Address, at: StateAt) -> Result<u64, BackendError> {
        Ok(self
            .account(address, at)?
            .map(|a| a.nonce)
            .unwrap_or_default())
    }

    fn pending_nonce(&self, address: Address) -> Result<u64, BackendError> {
        let nonce = self.nonce(address, StateAt::Latest)?;
        Ok(self.chain.pool.read().next_nonce(address, nonce))
    }

    fn code(&self, address: Address, at: StateAt) -> Result<Bytes, BackendError> {
        let Some(account) = self.account(address, at)? else {
            return Ok(Bytes::new());
        };
        if account.code_hash == KECCAK_EMPTY {
            return Ok(Bytes::new());
        }
        // Code is kept by hash for every block: the newest state has it.
        let code = self
            .chain
            .latest_state()
            .code(account.code_hash)
            .map_err(internal)?;
        Ok(code.map(|c| c.original_bytes()).unwrap_or_default())
    }

    fn storage(&self, address: Address, slot: U256, at: StateAt) -> Result<B256, BackendError> {
        let value = self.state(at)?.storage(address, slot).map_err(internal)?;
        Ok(B256::from(value))
    }

    fn call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        state_overrides: Option<&StateOverride>,
        block_overrides: Option<&BlockOverrides>,
    ) -> Result<CallOutcome, BackendError> {
        let state = self.state(at)?;
        let ctx = self.block_context(&state, block_overrides)?;
        let (env, checks) = self.tx_env(request, &ctx)?;
        let overlay = self.overlay_with(&state, state_overrides)?;
        match simulate(&self.chain.exec, &ctx, &overlay, env, checks).map_err(internal)? {
            Ok(result) => Ok(outcome(result)),
            Err(e) => Err(BackendError::InvalidTransaction(e.to_string())),
        }
    }

    fn estimate_gas(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        state_overrides: Option<&StateOverride>,
    ) -> Result<Result<u64, CallOutcome>, BackendError> {
        let state = self.state(at)?;
        let ctx = self.block_context(&state, None)?;
        let (env, checks) = self.tx_env(request, &ctx)?;
        let overlay = self.overlay_with(&state, state_overrides)?;
        match estimate_gas(&self.chain.exec, &ctx, &overlay, env, checks).map_err(internal)? {
            Estimate::Gas(gas) => Ok(Ok(gas)),
            Estimate::Fails(result) => Ok(Err(outcome(result))),
            Estimate::Invalid(e) => Err(BackendError::InvalidTransaction(e.to_string())),
        }
    }

    fn create_access_list(
        &self,
        request: &TransactionRequest,
        at: StateAt,
    ) -> Result<(AccessList, CallOutcome), BackendError> {
        let state = self.state(at)?;
        let ctx = self.block_context(&state, None)?;
        let (env, checks) = self.tx_env(request, &ctx)?;
        match create_access_list(&self.chain.exec, &ctx, &state, env, checks).map_err(internal)? {
            Ok((list, result)) => Ok((list, outcome(result))),
            Err(e) => Err(BackendError::InvalidTransaction(e.to_string())),
        }
    }

    fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, BackendError> {
        admission::submit(&self.chain, &raw, |_| None).map_err(backend_error)
    }

    fn send_raw_transaction_with_receipt(
        &self,
        raw: Bytes,
    ) -> Result<(B256, ReceiptWait), BackendError> {
        let (reply, receiver) = oneshot::channel();
        let hash = admission::submit(&self.chain, &raw, |_| Some(ReplySink::Rpc(reply)))
            .map_err(backend_error)?;
        let wait: ReceiptWait = Box::pin(async move { receiver.await.ok().map(receipt_result) });
        Ok((hash, wait))
    }

    fn proof(
        &self,
        address: Address,
        slots: &[B256],
        at: StateAt,
    ) -> Result<EIP1186AccountProofResponse, BackendError> {
        // Proofs are against the newest sealed block: its root is what clients can check. The
        // trie keeps one version, so older blocks have no proof (their state reads do).
        let view = self.chain.store.view();
        let head = view
            .head()
            .map_err(store_err)?
            .ok_or(BackendError::BlockNotFound)?;
        if let StateAt::Block(n) = at
            && n != head.number
        {
            return Err(BackendError::HistoricalStateUnavailable(format!(
                "eth_getProof is served at the newest sealed block ({}) only, not at block {n}: this node keeps one version of the state trie",
                head.number
            )));
        }
        let header = view
            .header(head.number)
            .map_err(store_err)?
            .ok_or(BackendError::BlockNotFound)?;
        let proof = rtchain_state::state_root::prove(&view, header.state_root, address, slots)
            .map_err(store_err)?;
        let account = proof.account.unwrap_or_default();
        let (code_hash, storage_hash) = match proof.account {
            Some(a) => (a.code_hash, a.storage_root),
            None => (KECCAK_EMPTY, alloy_trie::EMPTY_ROOT_HASH),
        };
        Ok(EIP1186AccountProofResponse {
            address,
            balance: account.balance,
            code_hash,
            nonce: account.nonce,
            storage_hash,
            account_proof: proof.account_proof,
            storage_proof: proof
                .storage
                .into_iter()
                .map(|(key, value, proof)| EIP1186StorageProof {
                    key: key.into(),
                    value,
                    proof,
                })
                .collect(),
        })
    }

    fn trace_transaction(
        &self,
        hash: B256,
        options: &GethDebugTracingOptions,
    ) -> Result<GethTrace, BackendError> {
        let Some(entry) = self.chain.store.tx_index(hash).map_err(store_err)? else {
            if self.receipt_pending(hash) {
                return Err(BackendError::NotFound(format!(
                    "transaction {hash} is not in a sealed block yet: retry after its block seals"
                )));
            }
            return Err(BackendError::NotFound("transaction not found".into()));
        };
        let index = entry.index as usize;
        let traced = self.trace_sealed(entry.block_number, Some(index), options)?;
        match traced.into_iter().find(|t| t.index == index) {
            Some(TxTrace { trace, .. }) => trace.map_err(BackendError::Internal),
            None => Err(BackendError::Internal(format!(
                "transaction {hash} is indexed at a missing position"
            ))),
        }
    }

    fn trace_block(
        &self,
        number: u64,
        options: &GethDebugTracingOptions,
    ) -> Result<Vec<TraceResult>, BackendError> {
        Ok(self
            .trace_sealed(number, None, options)?
            .into_iter()
            .map(|t| match t.trace {
                Ok(result) => TraceResult::Success {
                    result,
                    tx_hash: Some(t.hash),
                },
                Err(error) => TraceResult::Error {
                    error,
                    tx_hash: Some(t.hash),
                },
            })
            .collect())
    }

    fn trace_call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        options: &GethDebugTracingCallOptions,
    ) -> Result<GethTrace, BackendError> {
        let state = self.state(at)?;
        let ctx = self.block_context(&state, options.block_overrides.as_ref())?;
        let (env, checks) = self.tx_env(request, &ctx)?;
        let overlay = self.overlay_with(&state, options.state_overrides.as_ref())?;
        trace_call(
            &self.chain.exec,
            &ctx,
            &overlay,
            env,
            checks,
            &options.tracing_options,
        )
        .map_err(trace_err)
    }

    fn next_base_fee(&self) -> u64 {
        self.chain.pending_block_context().base_fee
    }

    fn next_blob_base_fee(&self) -> u128 {
        rtchain_exec::executor::BLOB_BASE_FEE_WEI
    }

    fn suggested_priority_fee(&self) -> u128 {
        // Blocks are not full, so no tip is needed for inclusion; a token tip keeps wallets that
        // refuse a zero tip happy.
        1
    }

    fn block_gas_limit(&self) -> u64 {
        self.chain.exec.block_gas_limit
    }

    fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.chain.events.subscribe()
    }

    fn receipt_pending(&self, hash: B256) -> bool {
        self.chain.pool.read().contains(&hash)
            || self.chain.state.read().preconfirmed.contains_key(&hash)
    }

    fn sealed_watch(&self) -> Option<watch::Receiver<u64>> {
        Some(self.chain.sealed.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, U256};
    use rtchain_exec::TxError;
    use rtchain_wire::RejectCode;

    use super::*;
    use crate::{fastpath::reject_code, outcome::Unavailable};

    /// Both doors answer every refusal from the one enum: the wire code and the JSON-RPC error
    /// (kind and geth's text) for each reason, side by side.
    #[test]
    fn every_rejection_maps_to_one_wire_code_and_one_rpc_error() {
        let a = Address::repeat_byte(7);
        let cases: Vec<(Rejection, RejectCode, &str)> = vec![
            (
                TxError::NonceTooLow {
                    address: a,
                    tx: 1,
                    state: 3,
                }
                .into(),
                RejectCode::NonceTooLow,
                "nonce too low: address 0x0707070707070707070707070707070707070707, tx: 1 state: 3",
            ),
            (
                TxError::InsufficientFunds {
                    address: a,
                    have: U256::from(1),
                    want: U256::from(2),
                }
                .into(),
                RejectCode::InsufficientFunds,
                "insufficient funds for gas * price + value: address 0x0707070707070707070707070707070707070707 have 1 want 2",
            ),
            (
                TxError::IntrinsicGasTooLow {
                    have: 1,
                    want: 21000,
                }
                .into(),
                RejectCode::IntrinsicGas,
                "intrinsic gas too low: have 1, want 21000",
            ),
            (
                TxError::WrongChainId { have: 1, want: 2 }.into(),
                RejectCode::WrongChainId,
                "invalid chain id for signer: have 1 want 2",
            ),
            (
                TxError::Unprotected.into(),
                RejectCode::WrongChainId,
                "only replay-protected (EIP-155) transactions allowed over RPC",
            ),
            (
                TxError::InvalidSignature.into(),
                RejectCode::InvalidSignature,
                "invalid transaction v, r, s values",
            ),
            (
                TxError::GasLimitExceeded.into(),
                RejectCode::GasLimit,
                "exceeds block gas limit",
            ),
            (
                TxError::FeeCapTooLow {
                    address: a,
                    max_fee: 1,
                    base_fee: 2,
                }
                .into(),
                RejectCode::FeeTooLow,
                "max fee per gas less than block base fee: address 0x0707070707070707070707070707070707070707, maxFeePerGas: 1, baseFee: 2",
            ),
            (
                TxError::Oversized { size: 9, limit: 8 }.into(),
                RejectCode::Oversized,
                "oversized data: transaction size 9, limit 8",
            ),
            (
                TxError::BlobNotSupported.into(),
                RejectCode::UnsupportedTxType,
                "transaction type not supported: blob (EIP-4844) transactions are not accepted by this chain",
            ),
            (
                TxError::Decode("bad".into()).into(),
                RejectCode::Malformed,
                "rlp: bad",
            ),
            (
                TxError::SenderNotEoa(a).into(),
                RejectCode::Other,
                "sender not an eoa: address 0x0707070707070707070707070707070707070707",
            ),
            (
                Rejection::AlreadyKnown,
                RejectCode::AlreadyKnown,
                "already known",
            ),
            (
                Rejection::PoolFull,
                RejectCode::TxpoolFull,
                "txpool is full",
            ),
            (
                Rejection::NonceGapFull {
                    sender: a,
                    limit: 64,
                    next_nonce: 5,
                },
                RejectCode::NonceGap,
                "txpool is full: sender 0x0707070707070707070707070707070707070707 has 64 queued transactions waiting for nonce 5 (the per-sender limit)",
            ),
            (
                Rejection::Replaced { nonce: 4, by: None },
                RejectCode::NonceTooLow,
                "replaced by a transaction with the same nonce",
            ),
            (
                Rejection::Unavailable(Unavailable::ShuttingDown),
                RejectCode::Unavailable,
                "node unavailable: node is shutting down",
            ),
        ];
        for (rejection, code, text) in cases {
            assert_eq!(reject_code(&rejection), code, "{rejection:?}");
            assert_eq!(rejection.to_string(), text);
            let rpc = backend_error(rejection.clone());
            let expected_kind = match &rejection {
                Rejection::AlreadyKnown => matches!(rpc, BackendError::AlreadyKnown),
                Rejection::PoolFull | Rejection::NonceGapFull { .. } => {
                    matches!(&rpc, BackendError::PoolFull(t) if t == text)
                }
                Rejection::Unavailable(_) => {
                    matches!(&rpc, BackendError::Unavailable(_)) && rpc.to_string() == text
                }
                Rejection::Internal(_) => matches!(rpc, BackendError::Internal(_)),
                Rejection::Invalid(_) | Rejection::Replaced { .. } => {
                    matches!(&rpc, BackendError::InvalidTransaction(t) if t == text)
                }
            };
            assert!(expected_kind, "{rejection:?} -> {rpc:?}");
        }
    }
}
