//! The `web3_`, `net_` and `eth_` methods (filters and subscriptions live in their own modules),
//! and block-tag resolution.
//!
//! Tags: for block queries `latest` and `pending` name the newest sealed EVM block; for state
//! reads they name the newest executed mini-block's state (`StateAt::Latest`). `safe` and
//! `finalized` come from [`ChainHead`], `earliest` is 0, EIP-1898 objects select by number or
//! hash. Cheap methods run inline on the connection's task; methods that execute EVM code or
//! scan blocks run on tokio's blocking pool so they never stall other connections.

use std::sync::Arc;
use std::time::Duration;

use alloy_consensus::Transaction as _;
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, U64, U128, U256, keccak256};
use alloy_rpc_types_eth::state::StateOverride;
use alloy_rpc_types_eth::{
    AccessListResult, BlockOverrides, EIP1186AccountProofResponse, FeeHistory, Filter,
    FilterBlockOption, Index, Log, TransactionRequest,
};
use alloy_serde::JsonStorageKey;
use jsonrpsee::RpcModule;
use jsonrpsee::core::RegisterMethodError;
use jsonrpsee::types::{ErrorObject, Params};
use rtchain_exec::types::SealedBlock;

use crate::RpcContext;
use crate::backend::{BackendError, CallOutcome, ChainHead, StateAt};
use crate::convert::{
    Block, RealtimeReceipt, Transaction, TransactionReceipt, TxPosition, block_receipts,
    realtime_receipt, rpc_block, rpc_receipt, rpc_transaction,
};
use crate::error::{
    RpcResult, code, execution_reverted, from_backend, header_not_found, internal_error,
    invalid_params, limit_exceeded, server_error,
};
use crate::params::{Args, HexOrDecimal};

/// Largest raw transaction accepted (geth's txpool limit: 4 slots of 32 KiB). Checked before
/// decoding so that the backend never sees more.
pub(crate) const MAX_RAW_TX_BYTES: usize = 128 * 1024;
/// eth_feeHistory answers at most this many blocks, as geth (larger counts are clamped).
const MAX_FEE_HISTORY_BLOCKS: u64 = 1024;
/// eth_feeHistory accepts at most this many reward percentiles.
const MAX_REWARD_PERCENTILES: usize = 100;
/// eth_getProof accepts at most this many storage keys.
const MAX_PROOF_KEYS: usize = 1024;
/// A log filter may name at most this many addresses, and as many alternatives per topic
/// position (geth's limits), so that matching stays cheap.
pub(crate) const MAX_FILTER_ADDRESSES: usize = 1000;
pub(crate) const MAX_FILTER_TOPIC_ALTERNATIVES: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Block and state resolution.

/// The block number a tag names (may be beyond the head for explicit numbers).
pub(crate) fn tag_number(tag: BlockNumberOrTag, head: &ChainHead) -> u64 {
    match tag {
        BlockNumberOrTag::Latest | BlockNumberOrTag::Pending => head.block_number,
        BlockNumberOrTag::Safe => head.safe_block_number,
        BlockNumberOrTag::Finalized => head.finalized_block_number,
        BlockNumberOrTag::Earliest => 0,
        BlockNumberOrTag::Number(number) => number,
    }
}

impl RpcContext {
    /// A sealed block by number; `None` if the node does not have it.
    pub(crate) fn block_by_number(&self, number: u64) -> RpcResult<Option<Arc<SealedBlock>>> {
        match self.backend.block_by_number(number) {
            Ok(Some(block)) if block.header.number == number => Ok(Some(block)),
            Ok(Some(block)) => Err(internal_error(format!(
                "backend returned block {} for number {number}",
                block.header.number
            ))),
            Ok(None) | Err(BackendError::BlockNotFound) => Ok(None),
            Err(err) => Err(from_backend(err)),
        }
    }

    /// A sealed block by hash; `None` if unknown.
    pub(crate) fn block_by_hash(&self, hash: B256) -> RpcResult<Option<Arc<SealedBlock>>> {
        let Some(number) = self.block_number_by_hash(hash)? else {
            return Ok(None);
        };
        // The index and the block must agree; a mismatch is a node bug, not "not found".
        match self.block_by_number(number)? {
            Some(block) if block.hash == hash => Ok(Some(block)),
            Some(block) => Err(internal_error(format!(
                "hash index maps {hash} to block {number} whose hash is {}",
                block.hash
            ))),
            None => Ok(None),
        }
    }

    fn block_number_by_hash(&self, hash: B256) -> RpcResult<Option<u64>> {
        match self.backend.block_number_by_hash(hash) {
            Ok(found) => Ok(found),
            Err(BackendError::BlockNotFound) => Ok(None),
            Err(err) => Err(from_backend(err)),
        }
    }

    /// The block a block query names; `None` (JSON null) if there is none.
    pub(crate) fn block_by_id(&self, id: BlockId) -> RpcResult<Option<Arc<SealedBlock>>> {
        match id {
            BlockId::Hash(hash) => self.block_by_hash(hash.block_hash),
            BlockId::Number(tag) => {
                let head = self.backend.head();
                let number = tag_number(tag, &head);
                if number > head.block_number {
                    return Ok(None);
                }
                self.block_by_number(number)
            }
        }
    }

    /// The state a read names. `latest`/`pending` (and no block at all) read the newest
    /// mini-block's state (the head block's plus what executed since); a number, hash or the
    /// other tags name exactly that sealed block's state, which the backend keeps for a window
    /// of blocks. Unknown blocks answer geth's "header not found".
    pub(crate) fn state_at(&self, id: Option<BlockId>) -> RpcResult<StateAt> {
        let head = self.backend.head();
        let number = match id {
            None | Some(BlockId::Number(BlockNumberOrTag::Latest | BlockNumberOrTag::Pending)) => {
                return Ok(StateAt::Latest);
            }
            Some(BlockId::Number(tag)) => tag_number(tag, &head),
            Some(BlockId::Hash(hash)) => self
                .block_number_by_hash(hash.block_hash)?
                .ok_or_else(header_not_found)?,
        };
        if number > head.block_number {
            Err(header_not_found())
        } else {
            Ok(StateAt::Block(number))
        }
    }

    /// eth_getLogs (and eth_getFilterLogs): resolves the range, applies the bounds, asks the
    /// backend.
    pub(crate) fn logs(&self, filter: &Filter) -> RpcResult<Vec<Log>> {
        check_filter_bounds(filter)?;
        let (from, to) = match filter.block_option {
            FilterBlockOption::AtBlockHash(hash) => {
                let number = self
                    .block_number_by_hash(hash)?
                    .ok_or_else(|| server_error("unknown block"))?;
                (number, number)
            }
            FilterBlockOption::Range {
                from_block,
                to_block,
            } => {
                let head = self.backend.head();
                let from = from_block.map_or(head.block_number, |tag| tag_number(tag, &head));
                let to = to_block.map_or(head.block_number, |tag| tag_number(tag, &head));
                if from > to {
                    return Err(server_error("invalid block range params"));
                }
                if from > head.block_number {
                    return Ok(Vec::new());
                }
                (from, to.min(head.block_number))
            }
        };
        self.logs_in_range(from, to, filter)
    }

    /// Logs of blocks `from..=to` (both sealed) matching the filter's addresses and topics.
    pub(crate) fn logs_in_range(&self, from: u64, to: u64, filter: &Filter) -> RpcResult<Vec<Log>> {
        let max_range = self.config.max_block_range;
        if to - from >= max_range {
            return Err(limit_exceeded(format!(
                "exceed maximum block range: {max_range}"
            )));
        }
        let limit = self.config.max_logs_per_query;
        let logs = self
            .backend
            .logs(from, to, filter, limit)
            .map_err(from_backend)?;
        if logs.len() > limit {
            // The backend should have refused; never send more than the bound.
            return Err(limit_exceeded(format!(
                "query returned more than {limit} results"
            )));
        }
        Ok(logs)
    }
}

/// Refuses filters whose matching would be expensive (geth's limits).
pub(crate) fn check_filter_bounds(filter: &Filter) -> RpcResult<()> {
    if filter.address.len() > MAX_FILTER_ADDRESSES {
        return Err(invalid_params(format!(
            "exceed max addresses: at most {MAX_FILTER_ADDRESSES}"
        )));
    }
    if filter
        .topics
        .iter()
        .any(|topic| topic.len() > MAX_FILTER_TOPIC_ALTERNATIVES)
    {
        return Err(invalid_params(format!(
            "exceed max topics per position: at most {MAX_FILTER_TOPIC_ALTERNATIVES}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Registration.

pub(crate) type Module = RpcModule<RpcContext>;

/// Registers a method that runs inline on the connection's task (cheap reads).
macro_rules! inline {
    ($module:expr, $name:literal, $handler:expr) => {
        $module.register_method($name, |params, ctx, _| $handler(ctx, &params))?;
    };
}

/// Registers a heavy method (EVM execution, block scans): it waits for one of
/// `max_concurrent_heavy_calls` permits, then runs on tokio's blocking pool, so it never stalls
/// a connection's task and a flood of them queues instead of taking every thread.
pub(crate) fn register_heavy<T>(
    module: &mut Module,
    name: &'static str,
    handler: fn(&RpcContext, &Params<'_>) -> RpcResult<T>,
) -> Result<(), RegisterMethodError>
where
    T: serde::Serialize + Clone + Send + 'static,
{
    module.register_async_method(name, move |params, ctx, _| async move {
        let Ok(_permit) = ctx.heavy_calls.clone().acquire_owned().await else {
            return Err(internal_error("server is shutting down"));
        };
        tokio::task::spawn_blocking(move || handler(&ctx, &params))
            .await
            .unwrap_or_else(|err| {
                tracing::error!(target: "rpc", method = name, %err, "RPC handler panicked");
                Err(internal_error("internal error"))
            })
    })?;
    Ok(())
}

macro_rules! blocking {
    ($module:expr, $name:literal, $handler:expr) => {
        register_heavy($module, $name, $handler)?;
    };
}

pub(crate) fn register(module: &mut Module) -> Result<(), RegisterMethodError> {
    inline!(module, "web3_clientVersion", client_version);
    inline!(module, "rtchain_nodeStats", node_stats);
    inline!(module, "rtchain_l1Status", l1_status);
    inline!(module, "rtchain_getWithdrawalProof", withdrawal_proof);
    inline!(module, "web3_sha3", sha3);
    inline!(module, "net_version", net_version);
    inline!(module, "net_listening", net_listening);
    inline!(module, "net_peerCount", net_peer_count);

    inline!(module, "eth_chainId", chain_id);
    inline!(module, "eth_blockNumber", block_number);
    inline!(module, "eth_syncing", syncing);
    inline!(module, "eth_accounts", accounts);
    inline!(module, "eth_gasPrice", gas_price);
    inline!(module, "eth_maxPriorityFeePerGas", max_priority_fee);
    inline!(module, "eth_blobBaseFee", blob_base_fee);
    blocking!(module, "eth_feeHistory", fee_history);

    inline!(module, "eth_getBalance", get_balance);
    inline!(module, "eth_getTransactionCount", get_transaction_count);
    inline!(module, "eth_getCode", get_code);
    inline!(module, "eth_getStorageAt", get_storage_at);
    blocking!(module, "eth_getProof", get_proof);

    blocking!(module, "eth_call", call);
    blocking!(module, "eth_estimateGas", estimate_gas);
    blocking!(module, "eth_createAccessList", create_access_list);

    inline!(module, "eth_sendRawTransaction", send_raw_transaction);
    module.register_async_method("eth_sendRawTransactionSync", |params, ctx, _| {
        send_raw_transaction_sync(ctx, params)
    })?;
    module.register_alias("realtime_sendRawTransaction", "eth_sendRawTransactionSync")?;

    inline!(module, "eth_getTransactionByHash", transaction_by_hash);
    inline!(
        module,
        "eth_getRawTransactionByHash",
        raw_transaction_by_hash
    );
    inline!(
        module,
        "eth_getTransactionByBlockHashAndIndex",
        transaction_by_block_hash_and_index
    );
    inline!(
        module,
        "eth_getTransactionByBlockNumberAndIndex",
        transaction_by_block_number_and_index
    );
    module.register_async_method("eth_getTransactionReceipt", |params, ctx, _| {
        transaction_receipt(ctx, params)
    })?;

    inline!(module, "eth_getBlockByNumber", block_by_number);
    inline!(module, "eth_getBlockByHash", block_by_hash);
    inline!(module, "eth_getBlockReceipts", block_receipts_of);
    inline!(
        module,
        "eth_getBlockTransactionCountByHash",
        transaction_count_by_hash
    );
    inline!(
        module,
        "eth_getBlockTransactionCountByNumber",
        transaction_count_by_number
    );
    inline!(module, "eth_getUncleCountByBlockHash", uncle_count_by_hash);
    inline!(
        module,
        "eth_getUncleCountByBlockNumber",
        uncle_count_by_number
    );
    inline!(
        module,
        "eth_getUncleByBlockHashAndIndex",
        uncle_by_hash_and_index
    );
    inline!(
        module,
        "eth_getUncleByBlockNumberAndIndex",
        uncle_by_number_and_index
    );

    blocking!(module, "eth_getLogs", get_logs);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// web3_ and net_.

fn client_version(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<String> {
    Args::new(params, 0)?;
    Ok(ctx.backend.client_version())
}

fn node_stats(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<serde_json::Value> {
    Args::new(params, 0)?;
    Ok(ctx.backend.node_stats())
}

fn l1_status(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<serde_json::Value> {
    Args::new(params, 0)?;
    Ok(ctx.backend.l1_status())
}

/// `rtchain_getWithdrawalProof(withdrawalHash, l2BlockNumber)`: what the Portal's
/// `proveWithdrawalTransaction` takes for that output block (docs/l1.md).
fn withdrawal_proof(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<serde_json::Value> {
    let mut args = Args::new(params, 2)?;
    let hash: B256 = args.required()?;
    let block: HexOrDecimal = args.required()?;
    ctx.backend
        .withdrawal_proof(hash, block.0)
        .map_err(from_backend)
}

fn sha3(_: &RpcContext, params: &Params<'_>) -> RpcResult<B256> {
    let data: Bytes = Args::new(params, 1)?.required()?;
    Ok(keccak256(&data))
}

/// The network id is the chain id, in decimal (geth's format for net_version).
fn net_version(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<String> {
    Args::new(params, 0)?;
    Ok(ctx.backend.chain_id().to_string())
}

fn net_listening(_: &RpcContext, params: &Params<'_>) -> RpcResult<bool> {
    Args::new(params, 0)?;
    Ok(true)
}

/// The backend does not expose validator peers to RPC; devp2p peers there are none.
fn net_peer_count(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U64> {
    Args::new(params, 0)?;
    Ok(U64::from(ctx.backend.peer_count()))
}

// ---------------------------------------------------------------------------------------------
// Chain and fees.

fn chain_id(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U64> {
    Args::new(params, 0)?;
    Ok(U64::from(ctx.backend.chain_id()))
}

fn block_number(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U64> {
    Args::new(params, 0)?;
    Ok(U64::from(ctx.backend.head().block_number))
}

/// `false` while the node keeps up; while it catches up (from its peers, or from L1), geth's
/// progress object in EVM block numbers.
fn syncing(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<serde_json::Value> {
    Args::new(params, 0)?;
    Ok(match ctx.backend.sync_progress() {
        None => serde_json::Value::Bool(false),
        Some(p) => serde_json::json!({
            "startingBlock": U64::from(p.starting_block),
            "currentBlock": U64::from(p.current_block),
            "highestBlock": U64::from(p.highest_block),
        }),
    })
}

/// The accounts the node signs for: the devnet's dev accounts, none elsewhere.
fn accounts(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Vec<Address>> {
    Args::new(params, 0)?;
    Ok(ctx.backend.accounts())
}

/// Next block's base fee plus the suggested tip: what a legacy transaction should bid.
fn gas_price(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U128> {
    Args::new(params, 0)?;
    let base_fee = u128::from(ctx.backend.next_base_fee());
    Ok(U128::from(
        base_fee.saturating_add(ctx.backend.suggested_priority_fee()),
    ))
}

fn max_priority_fee(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U128> {
    Args::new(params, 0)?;
    Ok(U128::from(ctx.backend.suggested_priority_fee()))
}

/// EIP-7516's BLOBBASEFEE of the next block.
fn blob_base_fee(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U128> {
    Args::new(params, 0)?;
    Ok(U128::from(ctx.backend.next_blob_base_fee()))
}

/// eth_feeHistory as geth computes it: per block its base fee, gas used ratio and, for each
/// requested percentile, the effective tip of the transaction at which the cumulative gas used
/// (transactions sorted by tip) reaches that percentile of the block's gas used; plus the base
/// fee of the block after the newest.
fn fee_history(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<FeeHistory> {
    let mut args = Args::new(params, 3)?;
    let HexOrDecimal(block_count) = args.required()?;
    let newest: BlockNumberOrTag = args.required()?;
    let percentiles: Option<Vec<f64>> = args.optional()?;
    let percentiles = percentiles.filter(|p| !p.is_empty());
    if let Some(percentiles) = &percentiles {
        check_percentiles(percentiles)?;
    }
    if block_count == 0 {
        return Ok(FeeHistory::default());
    }

    let head = ctx.backend.head();
    let newest = tag_number(newest, &head);
    if newest > head.block_number {
        return Err(server_error(format!(
            "request beyond head block: requested {newest}, head {}",
            head.block_number
        )));
    }
    let block_count = block_count.min(MAX_FEE_HISTORY_BLOCKS).min(newest + 1);
    let oldest = newest + 1 - block_count;

    let mut history = FeeHistory {
        oldest_block: oldest,
        reward: percentiles
            .as_ref()
            .map(|_| Vec::with_capacity(block_count as usize)),
        ..FeeHistory::default()
    };
    for number in oldest..=newest {
        let block = ctx
            .block_by_number(number)?
            .ok_or_else(|| internal_error(format!("block {number} missing below the head")))?;
        let header = &block.header;
        history
            .base_fee_per_gas
            .push(u128::from(header.base_fee_per_gas.unwrap_or_default()));
        history.gas_used_ratio.push(if header.gas_limit == 0 {
            0.0
        } else {
            header.gas_used as f64 / header.gas_limit as f64
        });
        if let (Some(percentiles), Some(rewards)) = (&percentiles, &mut history.reward) {
            rewards.push(block_rewards(&block, percentiles));
        }
    }
    let next_base_fee = if newest == head.block_number {
        ctx.backend.next_base_fee()
    } else {
        ctx.block_by_number(newest + 1)?
            .and_then(|block| block.header.base_fee_per_gas)
            .unwrap_or_default()
    };
    history.base_fee_per_gas.push(u128::from(next_base_fee));
    Ok(history)
}

/// geth's checks: at most 100 percentiles, each in [0, 100], strictly increasing.
fn check_percentiles(percentiles: &[f64]) -> RpcResult<()> {
    if percentiles.len() > MAX_REWARD_PERCENTILES {
        return Err(invalid_params(format!(
            "too many reward percentiles: at most {MAX_REWARD_PERCENTILES}"
        )));
    }
    for (i, &p) in percentiles.iter().enumerate() {
        if !(0.0..=100.0).contains(&p) {
            return Err(server_error(format!("invalid reward percentile: {p}")));
        }
        if i > 0 && p <= percentiles[i - 1] {
            return Err(server_error(format!(
                "invalid reward percentile: #{}:{} >= #{i}:{p}",
                i - 1,
                percentiles[i - 1]
            )));
        }
    }
    Ok(())
}

/// Tips at the given percentiles of a block's gas, weighted by gas used (geth's algorithm).
fn block_rewards(block: &SealedBlock, percentiles: &[f64]) -> Vec<u128> {
    if block.transactions.is_empty() {
        return vec![0; percentiles.len()];
    }
    let base_fee = block.header.base_fee_per_gas.unwrap_or_default();
    let mut sorted: Vec<(u128, u64)> = block
        .transactions
        .iter()
        .zip(&block.receipts)
        .map(|(tx, receipt)| {
            (
                tx.envelope
                    .effective_tip_per_gas(base_fee)
                    .unwrap_or_default(),
                receipt.gas_used,
            )
        })
        .collect();
    sorted.sort_by_key(|&(tip, _)| tip);
    let mut rewards = Vec::with_capacity(percentiles.len());
    let mut index = 0;
    let mut cumulative_gas = sorted[0].1;
    for &p in percentiles {
        let threshold = (block.header.gas_used as f64 * p / 100.0) as u64;
        while cumulative_gas < threshold && index < sorted.len() - 1 {
            index += 1;
            cumulative_gas += sorted[index].1;
        }
        rewards.push(sorted[index].0);
    }
    rewards
}

// ---------------------------------------------------------------------------------------------
// State reads.

fn get_balance(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U256> {
    let mut args = Args::new(params, 2)?;
    let address: Address = args.required()?;
    let at = ctx.state_at(args.optional()?)?;
    ctx.backend.balance(address, at).map_err(from_backend)
}

/// `pending` counts the sender's transactions waiting in the pool, as wallets expect when they
/// pick the next nonce.
fn get_transaction_count(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U64> {
    let mut args = Args::new(params, 2)?;
    let address: Address = args.required()?;
    let block: Option<BlockId> = args.optional()?;
    let nonce = if block == Some(BlockId::Number(BlockNumberOrTag::Pending)) {
        ctx.backend.pending_nonce(address)
    } else {
        ctx.backend.nonce(address, ctx.state_at(block)?)
    };
    nonce.map(U64::from).map_err(from_backend)
}

fn get_code(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 2)?;
    let address: Address = args.required()?;
    let at = ctx.state_at(args.optional()?)?;
    ctx.backend.code(address, at).map_err(from_backend)
}

/// The slot may be given as a full 32-byte word or a shorter quantity ("0x0"), as geth accepts.
fn get_storage_at(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<B256> {
    let mut args = Args::new(params, 3)?;
    let address: Address = args.required()?;
    let slot: JsonStorageKey = args.required()?;
    let at = ctx.state_at(args.optional()?)?;
    let slot = U256::from_be_bytes(slot.as_b256().0);
    ctx.backend.storage(address, slot, at).map_err(from_backend)
}

fn get_proof(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<EIP1186AccountProofResponse> {
    let mut args = Args::new(params, 3)?;
    let address: Address = args.required()?;
    let keys: Vec<JsonStorageKey> = args.required()?;
    if keys.len() > MAX_PROOF_KEYS {
        return Err(invalid_params(format!(
            "too many storage keys: at most {MAX_PROOF_KEYS}"
        )));
    }
    let at = ctx.state_at(args.optional()?)?;
    let keys: Vec<B256> = keys.iter().map(JsonStorageKey::as_b256).collect();
    ctx.backend.proof(address, &keys, at).map_err(from_backend)
}

// ---------------------------------------------------------------------------------------------
// Simulation.

/// Call objects may carry the calldata as `input` or as the older `data`; both set and
/// different is refused with geth's message. Afterwards only `input` is set, so the backend
/// reads one field.
pub(crate) fn normalize_input(request: &mut TransactionRequest) -> RpcResult<()> {
    let input = &mut request.input;
    if let (Some(a), Some(b)) = (&input.input, &input.data)
        && a != b
    {
        return Err(server_error(
            "both \"data\" and \"input\" are set and not equal. Please use \"input\" to pass \
             transaction call data",
        ));
    }
    if input.input.is_none() {
        input.input = input.data.take();
    } else {
        input.data = None;
    }
    Ok(())
}

fn call(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 4)?;
    let mut request: TransactionRequest = args.required()?;
    let block: Option<BlockId> = args.optional()?;
    let state_overrides: Option<StateOverride> = args.optional()?;
    let block_overrides: Option<Box<BlockOverrides>> = args.optional()?;
    normalize_input(&mut request)?;
    let at = ctx.state_at(block)?;
    let outcome = ctx
        .backend
        .call(
            &request,
            at,
            state_overrides.as_ref(),
            block_overrides.as_deref(),
        )
        .map_err(from_backend)?;
    match outcome {
        CallOutcome::Success { output, .. } => Ok(output),
        CallOutcome::Revert { output, .. } => Err(execution_reverted(&output)),
        CallOutcome::Halt { reason, .. } => Err(server_error(reason)),
    }
}

/// Whether a halt reason is running out of gas (which estimation reports as "gas required
/// exceeds allowance"); other halts (invalid opcode, stack errors) are reported as they are.
fn is_out_of_gas(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("out of gas") || reason.contains("outofgas")
}

fn estimate_gas(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<U64> {
    let mut args = Args::new(params, 3)?;
    let mut request: TransactionRequest = args.required()?;
    let block: Option<BlockId> = args.optional()?;
    let state_overrides: Option<StateOverride> = args.optional()?;
    normalize_input(&mut request)?;
    let at = ctx.state_at(block)?;
    estimated_gas(ctx, &request, at, state_overrides.as_ref()).map(U64::from)
}

/// eth_estimateGas's answer: the gas, or geth's error for a call that fails at the cap.
pub(crate) fn estimated_gas(
    ctx: &RpcContext,
    request: &TransactionRequest,
    at: StateAt,
    state_overrides: Option<&StateOverride>,
) -> RpcResult<u64> {
    match ctx
        .backend
        .estimate_gas(request, at, state_overrides)
        .map_err(from_backend)?
    {
        Ok(gas) => Ok(gas),
        Err(CallOutcome::Revert { output, .. }) => Err(execution_reverted(&output)),
        Err(CallOutcome::Halt { reason, .. }) if is_out_of_gas(&reason) => {
            let cap = request.gas.unwrap_or_else(|| ctx.backend.block_gas_limit());
            Err(server_error(format!(
                "gas required exceeds allowance ({cap})"
            )))
        }
        Err(CallOutcome::Halt { reason, .. }) => Err(server_error(reason)),
        Err(CallOutcome::Success { .. }) => Err(internal_error(
            "gas estimation failed although the call succeeded",
        )),
    }
}

/// Like geth, a failing call still returns the access list and gas used, with `error` set.
fn create_access_list(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<AccessListResult> {
    let mut args = Args::new(params, 2)?;
    let mut request: TransactionRequest = args.required()?;
    let block: Option<BlockId> = args.optional()?;
    normalize_input(&mut request)?;
    let at = ctx.state_at(block)?;
    let (access_list, outcome) = ctx
        .backend
        .create_access_list(&request, at)
        .map_err(from_backend)?;
    let (gas_used, error) = match outcome {
        CallOutcome::Success { gas_used, .. } => (gas_used, None),
        CallOutcome::Revert { gas_used, output } => (
            gas_used,
            Some(execution_reverted(&output).message().to_owned()),
        ),
        CallOutcome::Halt { gas_used, reason } => (gas_used, Some(reason)),
    };
    Ok(AccessListResult {
        access_list,
        gas_used: U256::from(gas_used),
        error,
    })
}

// ---------------------------------------------------------------------------------------------
// Sending.

fn check_raw_size(raw: &Bytes) -> RpcResult<()> {
    if raw.len() > MAX_RAW_TX_BYTES {
        return Err(server_error(format!(
            "oversized data: transaction size {}, limit {MAX_RAW_TX_BYTES}",
            raw.len()
        )));
    }
    Ok(())
}

fn send_raw_transaction(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<B256> {
    let raw: Bytes = Args::new(params, 1)?.required()?;
    check_raw_size(&raw)?;
    ctx.backend.send_raw_transaction(raw).map_err(from_backend)
}

/// EIP-7966: submit, then wait for the receipt up to a timeout (milliseconds, optional; zero,
/// unreadable or above the configured maximum means the default, as the EIP says). Answers the
/// preconfirmed receipt as soon as the transaction's mini-block executed; on timeout code 4, if
/// the node dropped the transaction after accepting it code 5, both with the hash as `data`.
async fn send_raw_transaction_sync(
    ctx: Arc<RpcContext>,
    params: Params<'static>,
) -> RpcResult<RealtimeReceipt> {
    let (raw, timeout_ms) = {
        let mut args = Args::new(&params, 2)?;
        let raw: Bytes = args.required()?;
        (raw, args.optional::<HexOrDecimal>().ok().flatten())
    };
    check_raw_size(&raw)?;
    let config = &ctx.config;
    let wait = match timeout_ms {
        Some(HexOrDecimal(ms))
            if ms > 0 && Duration::from_millis(ms) <= config.send_sync_timeout_max =>
        {
            Duration::from_millis(ms)
        }
        _ => config.send_sync_timeout_default,
    };
    let _permit = ctx.sync_sends.clone().try_acquire_owned().map_err(|_| {
        limit_exceeded(format!(
            "too many eth_sendRawTransactionSync calls waiting (limit {})",
            config.max_sync_sends_waiting
        ))
    })?;
    let (hash, receipt) = ctx
        .backend
        .send_raw_transaction_with_receipt(raw)
        .map_err(from_backend)?;
    match tokio::time::timeout(wait, receipt).await {
        Ok(Some(Ok(view))) if view.tx.hash == hash => Ok(realtime_receipt(&view)),
        Ok(Some(Ok(view))) => Err(internal_error(format!(
            "backend answered the receipt of {} for {hash}",
            view.tx.hash
        ))),
        Ok(Some(Err(err))) => Err(ErrorObject::owned(
            code::SYNC_NOT_PROCESSED,
            err.to_string(),
            Some(hash),
        )),
        Ok(None) => Err(ErrorObject::owned(
            code::SYNC_NOT_PROCESSED,
            "the transaction was accepted but dropped before execution",
            Some(hash),
        )),
        Err(_elapsed) => Err(ErrorObject::owned(
            code::SYNC_TIMEOUT,
            format!("The transaction was added to the mempool but wasn't processed in {wait:?}."),
            Some(hash),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Transactions and receipts.

/// A transaction not yet in a sealed block (waiting in the pool, or preconfirmed) is shown as
/// pending: null block fields. That keeps it consistent with eth_getTransactionReceipt, which
/// answers null until the block is sealed.
fn transaction_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<Transaction>> {
    let hash: B256 = Args::new(params, 1)?.required()?;
    let Some(view) = ctx.backend.transaction(hash).map_err(from_backend)? else {
        return Ok(None);
    };
    let position = view
        .location
        .filter(|location| location.block_hash.is_some())
        .map(|location| TxPosition::from_location(&location));
    Ok(Some(rpc_transaction(&view.tx, position)))
}

fn raw_transaction_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<Bytes>> {
    let hash: B256 = Args::new(params, 1)?.required()?;
    Ok(ctx
        .backend
        .transaction(hash)
        .map_err(from_backend)?
        .map(|view| view.tx.raw))
}

fn transaction_in_block(block: Option<Arc<SealedBlock>>, index: Index) -> Option<Transaction> {
    let block = block?;
    let tx = block.transactions.get(index.0)?;
    Some(rpc_transaction(
        tx,
        Some(TxPosition::in_block(&block, index.0)),
    ))
}

fn transaction_by_block_hash_and_index(
    ctx: &RpcContext,
    params: &Params<'_>,
) -> RpcResult<Option<Transaction>> {
    let mut args = Args::new(params, 2)?;
    let hash: B256 = args.required()?;
    let index: Index = args.required()?;
    Ok(transaction_in_block(ctx.block_by_hash(hash)?, index))
}

fn transaction_by_block_number_and_index(
    ctx: &RpcContext,
    params: &Params<'_>,
) -> RpcResult<Option<Transaction>> {
    let mut args = Args::new(params, 2)?;
    let tag: BlockNumberOrTag = args.required()?;
    let index: Index = args.required()?;
    Ok(transaction_in_block(
        ctx.block_by_id(BlockId::Number(tag))?,
        index,
    ))
}

/// Bound on how long eth_getTransactionReceipt waits for a pending transaction's EVM block to
/// be sealed. Blocks seal every block interval (100 ms by default), so this is rarely reached.
const RECEIPT_WAIT_MAX: Duration = Duration::from_secs(2);

/// Only sealed receipts: a preconfirmed receipt has no block hash yet, and standard tools
/// resolve the hash they are given. For a transaction the node has accepted but not sealed yet,
/// the call waits (bounded) for the seal instead of answering null: clients poll slowly after a
/// null (viem waits 4 s), and the seal is at most one block interval away.
async fn transaction_receipt(
    ctx: Arc<RpcContext>,
    params: Params<'static>,
) -> RpcResult<Option<TransactionReceipt>> {
    let hash: B256 = Args::new(&params, 1)?.required()?;
    let deadline = tokio::time::Instant::now() + RECEIPT_WAIT_MAX;
    let mut sealed = ctx.backend.sealed_watch();
    loop {
        // Subscribe before reading, so a seal between the read and the wait is not missed.
        if let Some(watch) = sealed.as_mut() {
            watch.borrow_and_update();
        }
        if let Some(view) = ctx.backend.receipt(hash).map_err(from_backend)?
            && view.location.block_hash.is_some()
        {
            let position = TxPosition::from_location(&view.location);
            return Ok(Some(rpc_receipt(&view.tx, &view.receipt, &position)));
        }
        let Some(watch) = sealed.as_mut() else {
            return Ok(None);
        };
        if !ctx.backend.receipt_pending(hash) {
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out or the node is shutting down: answer as geth does for unknown receipts.
            _ => return Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks.

fn block_by_number(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<Block>> {
    let mut args = Args::new(params, 2)?;
    let tag: BlockNumberOrTag = args.required()?;
    let full: bool = args.optional()?.unwrap_or(false);
    Ok(ctx
        .block_by_id(BlockId::Number(tag))?
        .map(|block| rpc_block(&block, full)))
}

fn block_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<Block>> {
    let mut args = Args::new(params, 2)?;
    let hash: B256 = args.required()?;
    let full: bool = args.optional()?.unwrap_or(false);
    Ok(ctx
        .block_by_hash(hash)?
        .map(|block| rpc_block(&block, full)))
}

fn block_receipts_of(
    ctx: &RpcContext,
    params: &Params<'_>,
) -> RpcResult<Option<Vec<TransactionReceipt>>> {
    let id: BlockId = Args::new(params, 1)?.required()?;
    Ok(ctx.block_by_id(id)?.map(|block| block_receipts(&block)))
}

fn transaction_count_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<U64>> {
    let hash: B256 = Args::new(params, 1)?.required()?;
    Ok(ctx
        .block_by_hash(hash)?
        .map(|block| U64::from(block.transactions.len())))
}

fn transaction_count_by_number(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<U64>> {
    let tag: BlockNumberOrTag = Args::new(params, 1)?.required()?;
    Ok(ctx
        .block_by_id(BlockId::Number(tag))?
        .map(|block| U64::from(block.transactions.len())))
}

/// There are no uncles: 0 for a known block, null for an unknown one.
fn uncle_count_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<U64>> {
    let hash: B256 = Args::new(params, 1)?.required()?;
    Ok(ctx.block_by_hash(hash)?.map(|_| U64::ZERO))
}

fn uncle_count_by_number(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Option<U64>> {
    let tag: BlockNumberOrTag = Args::new(params, 1)?.required()?;
    Ok(ctx.block_by_id(BlockId::Number(tag))?.map(|_| U64::ZERO))
}

fn uncle_by_hash_and_index(_: &RpcContext, params: &Params<'_>) -> RpcResult<Option<()>> {
    let mut args = Args::new(params, 2)?;
    let _hash: B256 = args.required()?;
    let _index: Index = args.required()?;
    Ok(None)
}

fn uncle_by_number_and_index(_: &RpcContext, params: &Params<'_>) -> RpcResult<Option<()>> {
    let mut args = Args::new(params, 2)?;
    let _tag: BlockNumberOrTag = args.required()?;
    let _index: Index = args.required()?;
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Logs.

fn get_logs(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Vec<Log>> {
    let filter: Filter = Args::new(params, 1)?.required()?;
    ctx.logs(&filter)
}
