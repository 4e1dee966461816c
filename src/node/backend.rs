//! The node's answers to RPC: reads from the newest state (layers over RocksDB), sealed blocks
//! (memory for recent ones, RocksDB otherwise), and the transaction path into the sequencer.

use std::sync::Arc;

use alloy_consensus::Transaction as _;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_rpc_types_eth::{
    AccessList, BlockOverrides, EIP1186AccountProofResponse, EIP1186StorageProof, Filter, Log,
    TransactionRequest, state::StateOverride,
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
    tx::decode_and_recover,
};
use rtchain_rpc::backend::{
    Backend, BackendError, CallOutcome, ChainEvent, ChainHead, ReceiptView, StateAt, TxView,
};
use rtchain_state::store::StoreError;
use tokio::sync::{broadcast, oneshot, watch};

use super::chain::{Chain, Reply, Submission};

pub struct NodeBackend {
    chain: Arc<Chain>,
    /// Set once the fast path runs: its counters for `rtchain_nodeStats`.
    fastpath: std::sync::OnceLock<super::fastpath::StatsHandle>,
    /// Set when this node is a validator: replication counters for `rtchain_nodeStats`.
    consensus: std::sync::OnceLock<Arc<super::sequencer::ConsensusStats>>,
}

impl NodeBackend {
    pub fn new(chain: Arc<Chain>) -> Self {
        Self {
            chain,
            fastpath: std::sync::OnceLock::new(),
            consensus: std::sync::OnceLock::new(),
        }
    }

    pub fn set_consensus_stats(&self, stats: Arc<super::sequencer::ConsensusStats>) {
        let _ = self.consensus.set(stats);
    }

    pub fn set_fastpath_stats(&self, stats: super::fastpath::StatsHandle) {
        let _ = self.fastpath.set(stats);
    }

    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    fn check_state_at(&self, at: StateAt) -> Result<(), BackendError> {
        match at {
            StateAt::Latest => Ok(()),
            StateAt::Block(n) => {
                let head = self.chain.state.read().head.number;
                if n >= head {
                    Ok(())
                } else {
                    Err(BackendError::HistoricalStateUnavailable(n))
                }
            }
        }
    }

    fn account(
        &self,
        address: Address,
        at: StateAt,
    ) -> Result<Option<rtchain_exec::revm::state::AccountInfo>, BackendError> {
        self.check_state_at(at)?;
        self.chain.latest_state().account(address).map_err(internal)
    }

    /// Stateless checks and sender recovery, then the checks against the newest state that
    /// geth's pool makes, so that `eth_sendRawTransaction` reports them at once. The sequencer
    /// checks again when it executes.
    /// Returns the transaction and its sender's nonce in the newest state.
    pub(super) fn admit(
        &self,
        raw: &[u8],
    ) -> Result<(rtchain_exec::RecoveredTx, u64), BackendError> {
        let tx = decode_and_recover(raw, &self.chain.exec)
            .map_err(|e| BackendError::InvalidTransaction(e.to_string()))?;
        let state = self.chain.latest_state();
        let account = state
            .account(tx.sender)
            .map_err(internal)?
            .unwrap_or_default();
        let nonce = tx.envelope.nonce();
        if nonce < account.nonce {
            return Err(BackendError::InvalidTransaction(format!(
                "nonce too low: address {}, tx: {nonce} state: {}",
                tx.sender, account.nonce
            )));
        }
        let max_cost = U256::from(tx.envelope.gas_limit())
            * U256::from(tx.envelope.max_fee_per_gas())
            + tx.envelope.value();
        if account.balance < max_cost {
            return Err(BackendError::InvalidTransaction(format!(
                "insufficient funds for gas * price + value: address {} have {} want {max_cost}",
                tx.sender, account.balance
            )));
        }
        if account.code_hash != KECCAK_EMPTY {
            let code = state.code(account.code_hash).map_err(internal)?;
            // EIP-7702 delegated accounts may still send; real contracts may not (EIP-3607).
            if !code.is_some_and(|c| c.is_eip7702()) {
                return Err(BackendError::InvalidTransaction(format!(
                    "sender not an eoa: address {}",
                    tx.sender
                )));
            }
        }
        if self.chain.state.read().preconfirmed.contains_key(&tx.hash)
            || self
                .chain
                .store
                .tx_index(tx.hash)
                .map_err(internal)?
                .is_some()
        {
            return Err(BackendError::AlreadyKnown);
        }
        Ok((tx, account.nonce))
    }

    fn block_context(&self, overrides: Option<&BlockOverrides>) -> BlockContext {
        let mut ctx = self.chain.pending_block_context();
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
        ctx
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
            "fastpath": self.fastpath.get().map(super::fastpath::StatsHandle::to_json),
            "consensus": self.consensus.get().map(|c| c.to_json()),
        })
    }

    fn head(&self) -> ChainHead {
        let state = self.chain.state.read();
        // Alone, a sealed block is final the moment it is written; as a validator, only
        // finalized mini-blocks are ever committed, so again every sealed block is final.
        ChainHead {
            block_number: state.head.number,
            block_hash: state.head.hash,
            mini_block_number: state.last_mini_block,
            safe_block_number: state.head.number,
            finalized_block_number: state.head.number,
        }
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
        let code = self
            .chain
            .latest_state()
            .code(account.code_hash)
            .map_err(internal)?;
        Ok(code.map(|c| c.original_bytes()).unwrap_or_default())
    }

    fn storage(&self, address: Address, slot: U256, at: StateAt) -> Result<B256, BackendError> {
        self.check_state_at(at)?;
        let value = self
            .chain
            .latest_state()
            .storage(address, slot)
            .map_err(internal)?;
        Ok(B256::from(value))
    }

    fn call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        state_overrides: Option<&StateOverride>,
        block_overrides: Option<&BlockOverrides>,
    ) -> Result<CallOutcome, BackendError> {
        self.check_state_at(at)?;
        let ctx = self.block_context(block_overrides);
        let (env, checks) = self.tx_env(request, &ctx)?;
        let latest = self.chain.latest_state();
        let overlay = self.overlay_with(&latest, state_overrides)?;
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
        self.check_state_at(at)?;
        let ctx = self.block_context(None);
        let (env, checks) = self.tx_env(request, &ctx)?;
        let latest = self.chain.latest_state();
        let overlay = self.overlay_with(&latest, state_overrides)?;
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
        self.check_state_at(at)?;
        let ctx = self.block_context(None);
        let (env, checks) = self.tx_env(request, &ctx)?;
        let latest = self.chain.latest_state();
        match create_access_list(&self.chain.exec, &ctx, &latest, env, checks).map_err(internal)? {
            Ok((list, result)) => Ok((list, outcome(result))),
            Err(e) => Err(BackendError::InvalidTransaction(e.to_string())),
        }
    }

    fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, BackendError> {
        let (tx, state_nonce) = self.admit(&raw)?;
        let hash = tx.hash;
        self.chain
            .submit(Submission { tx, reply: None }, state_nonce)?;
        Ok(hash)
    }

    fn send_raw_transaction_with_receipt(
        &self,
        raw: Bytes,
    ) -> Result<(B256, oneshot::Receiver<Result<ReceiptView, BackendError>>), BackendError> {
        let (tx, state_nonce) = self.admit(&raw)?;
        let hash = tx.hash;
        let (reply, receiver) = oneshot::channel();
        self.chain.submit(
            Submission {
                tx,
                reply: Some(Reply::Rpc(reply)),
            },
            state_nonce,
        )?;
        Ok((hash, receiver))
    }

    fn proof(
        &self,
        address: Address,
        slots: &[B256],
        at: StateAt,
    ) -> Result<EIP1186AccountProofResponse, BackendError> {
        let head = self.chain.state.read().head;
        if let StateAt::Block(n) = at
            && n != head.number
        {
            return Err(BackendError::HistoricalStateUnavailable(n));
        }
        // Proofs are against the newest sealed block: its root is what clients can check.
        let view = self.chain.store.view();
        let head = view
            .head()
            .map_err(store_err)?
            .ok_or(BackendError::BlockNotFound)?;
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

    fn next_base_fee(&self) -> u64 {
        self.chain.pending_block_context().base_fee
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
