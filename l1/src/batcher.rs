//! The batcher: posts the L2's blocks to the `BatchInbox` on L1, in order, as compressed
//! channels in EIP-4844 blobs (or calldata).
//!
//! The inbox is the source of truth: it accepts a batch only if it starts at its
//! `nextL2Block()` and names its `latestBatchHash()` as parent, so the batcher can never post a
//! gap or a duplicate, whatever happens to it. Each round it reads the inbox at L1's latest
//! block and posts what comes next; so a restart resumes where L1 says, and a reorg that drops
//! a batch makes the inbox's `nextL2Block` go back and the batch is posted again.
//!
//! One transaction is in flight at a time. If it is not mined within `resubmit_after`, it is
//! replaced (same nonce, fees doubled, which clears both the 10% replacement rule for fees and
//! the 100% rule for blob fees); if another transaction took its nonce, or it reverted (a
//! batch raced or was overtaken by a reorg), the round starts again from the inbox.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    eips::eip4844::{BlobTransactionSidecar, env_settings::EnvKzgSettings},
    network::{EthereumWallet, TransactionBuilder, TransactionBuilder4844},
    primitives::{Address, B256, Bytes, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use parking_lot::Mutex;

use crate::{
    blob,
    channel::{Batch, BatchBlock, Compression, encode_batch},
    contracts::BatchInbox,
};

/// Where the batcher reads L2 blocks (the node implements it over its RocksDB).
pub trait BatchSource: Send + Sync + 'static {
    /// The L2's chain id (transactions signed for it are stored compactly).
    fn chain_id(&self) -> u64;
    /// The newest L2 block that may be posted: committed here (on a validator, finalized).
    fn head(&self) -> u64;
    /// Block `number` as posted, and the number its first mini-block has (or the next
    /// mini-block number, if it has none). `None` if this node does not hold it.
    fn block(&self, number: u64) -> Result<Option<(BatchBlock, u64)>, String>;
}

/// How batch data goes to L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    Blobs,
    Calldata,
    /// Blobs; calldata for a batch whose blob transaction L1 refuses.
    Auto,
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub inbox: Address,
    pub l1_chain_id: u64,
    pub key: PrivateKeySigner,
    pub data: DataMode,
    pub compression: Compression,
    /// Blobs per transaction at most (prague allows 9; 6 is the target).
    pub max_blobs_per_tx: usize,
    /// Calldata bytes per transaction at most (a 30M-gas L1 block takes about 700 KB under
    /// EIP-7623's floor).
    pub max_calldata_bytes: usize,
    /// A block waits at most this long for more to fill its batch.
    pub max_batch_age: Duration,
    /// An unmined transaction is replaced after this long.
    pub resubmit_after: Duration,
    /// How often the batcher looks at L1 and the L2 head.
    pub poll: Duration,
}

/// A posted batch, for `rtchain l1 status` and `bench l1`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PostedBatch {
    pub first_block: u64,
    pub last_block: u64,
    pub transactions: usize,
    pub raw_bytes: usize,
    pub channel_bytes: usize,
    pub blobs: usize,
    pub l1_tx: B256,
    pub l1_block: u64,
    pub l1_gas_used: u64,
    /// From the newest posted L2 block's time to the receipt.
    pub posted_after_ms: u64,
    /// From the oldest posted L2 block's time to the receipt.
    pub oldest_after_ms: u64,
    /// When the receipt was seen, microseconds since the Unix epoch.
    pub included_at_us: u64,
}

/// What the batcher did, shared with RPC.
#[derive(Debug, Default)]
pub struct BatcherStats {
    pub posted: Vec<PostedBatch>,
    pub replacements: u64,
    pub reverted: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Posted batches kept in [`BatcherStats`].
const KEEP_POSTED: usize = 1_024;

struct InFlight {
    hash: B256,
    nonce: u64,
    sent_at: Instant,
    request: TransactionRequest,
    batch: PendingBatch,
}

#[derive(Clone)]
struct PendingBatch {
    first: u64,
    last: u64,
    transactions: usize,
    raw_bytes: usize,
    channel_bytes: usize,
    blobs: usize,
    newest_block_time_us: u64,
    oldest_block_time_us: u64,
}

/// Runs the batcher until the process ends. Errors are counted and retried.
pub async fn run(
    l1_url: String,
    config: BatcherConfig,
    source: Arc<dyn BatchSource>,
    stats: Arc<Mutex<BatcherStats>>,
) {
    let provider = match ProviderBuilder::new()
        .wallet(EthereumWallet::from(config.key.clone()))
        .connect(&l1_url)
        .await
    {
        Ok(p) => p.erased(),
        Err(e) => {
            tracing::error!("batcher: cannot reach L1 at {l1_url}: {e}");
            return;
        }
    };
    let mut batcher = Batcher {
        provider,
        config,
        source,
        stats,
        in_flight: None,
    };
    loop {
        if let Err(e) = batcher.round().await {
            let mut s = batcher.stats.lock();
            s.errors += 1;
            if crate::watch::worth_logging(s.errors) {
                tracing::warn!("batcher: {e} (retrying)");
            }
            s.last_error = Some(e);
        }
        tokio::time::sleep(batcher.config.poll).await;
    }
}

struct Batcher {
    provider: DynProvider,
    config: BatcherConfig,
    source: Arc<dyn BatchSource>,
    stats: Arc<Mutex<BatcherStats>>,
    in_flight: Option<InFlight>,
}

impl Batcher {
    async fn round(&mut self) -> Result<(), String> {
        if self.in_flight.is_some() {
            return self.track().await;
        }
        let inbox = BatchInbox::new(self.config.inbox, &self.provider);
        let next = inbox
            .nextL2Block()
            .call()
            .await
            .map_err(|e| format!("BatchInbox.nextL2Block: {e}"))?;
        let parent = inbox
            .latestBatchHash()
            .call()
            .await
            .map_err(|e| format!("BatchInbox.latestBatchHash: {e}"))?;
        let head = self.source.head();
        if head < next {
            return Ok(());
        }
        let Some((batch, channel)) = self.build(next, head)? else {
            return Ok(());
        };
        self.send(batch, channel, parent).await
    }

    /// The batch from `first` on, as large as one transaction takes; `None` while it is neither
    /// full nor old enough to go.
    fn build(&self, first: u64, head: u64) -> Result<Option<(PendingBatch, Vec<u8>)>, String> {
        let capacity = match self.config.data {
            DataMode::Calldata => self.config.max_calldata_bytes,
            _ => self.config.max_blobs_per_tx * blob::MAX_BLOB_DATA_BYTES,
        };
        // Gather blocks while their raw size could still compress into one transaction
        // (transactions compress to about half; 4x leaves room for luckier data).
        let mut blocks = Vec::new();
        let mut first_mini = None;
        let mut raw = 0usize;
        for number in first..=head {
            let Some((block, mini)) = self.source.block(number)? else {
                if blocks.is_empty() {
                    return Err(format!("L2 block {number} is not available to post"));
                }
                break;
            };
            first_mini.get_or_insert(mini);
            raw += block
                .minis
                .iter()
                .flat_map(|m| &m.transactions)
                .map(|t| t.len() + 3)
                .sum::<usize>()
                + 16;
            blocks.push(block);
            if raw > capacity * 4 || blocks.len() >= crate::channel::MAX_BATCH_BLOCKS {
                break;
            }
        }
        let oldest = blocks.first().map_or(0, |b| b.opened_at_us);
        let mut batch = Batch {
            chain_id: self.source.chain_id(),
            first_mini: first_mini.unwrap_or_default(),
            blocks,
        };
        // Shrink until the channel fits (each step keeps the share that fitted last time).
        let mut channel;
        loop {
            channel = vec![self.config.compression as u8];
            channel.extend_from_slice(&self.config.compression.compress(&encode_batch(&batch)));
            if channel.len() <= capacity || batch.blocks.len() == 1 {
                break;
            }
            let keep = ((batch.blocks.len() as u128 * capacity as u128 * 95
                / (channel.len() as u128 * 100)) as usize)
                .clamp(1, batch.blocks.len() - 1);
            batch.blocks.truncate(keep);
        }
        if channel.len() > capacity {
            return Err(format!(
                "L2 block {first} alone compresses to {} bytes, more than one L1 transaction takes ({capacity})",
                channel.len()
            ));
        }
        let full = channel.len() * 10 >= capacity * 9;
        let now_us = now_us();
        let old_enough =
            now_us.saturating_sub(oldest) >= self.config.max_batch_age.as_micros() as u64;
        if !full && !old_enough {
            return Ok(None);
        }
        let last = batch.last_block().expect("a batch has blocks");
        let pending = PendingBatch {
            first,
            last,
            transactions: batch.transaction_count(),
            raw_bytes: encode_batch(&batch).len(),
            channel_bytes: channel.len(),
            blobs: 0,
            newest_block_time_us: batch.blocks.last().map_or(0, |b| b.opened_at_us),
            oldest_block_time_us: oldest,
        };
        Ok(Some((pending, channel)))
    }

    async fn send(
        &mut self,
        mut batch: PendingBatch,
        channel: Vec<u8>,
        parent: B256,
    ) -> Result<(), String> {
        let from = self.config.key.address();
        let nonce = self
            .provider
            .get_transaction_count(from)
            .await
            .map_err(|e| format!("eth_getTransactionCount: {e}"))?;
        let use_blobs = !matches!(self.config.data, DataMode::Calldata);
        let request = if use_blobs {
            let blobs = blob::encode_all(&channel);
            batch.blobs = blobs.len();
            let sidecar = BlobTransactionSidecar::try_from_blobs_with_settings(
                blobs,
                EnvKzgSettings::Default.get(),
            )
            .map_err(|e| format!("KZG commitments: {e}"))?;
            let call = BatchInbox::submitBatchCall {
                firstBlock: batch.first,
                lastBlock: batch.last,
                parentBatchHash: parent,
            };
            TransactionRequest::default()
                .with_to(self.config.inbox)
                .with_input(Bytes::from(call.abi_encode()))
                .with_blob_sidecar_4844(sidecar)
        } else {
            let call = BatchInbox::submitBatchCalldataCall {
                firstBlock: batch.first,
                lastBlock: batch.last,
                parentBatchHash: parent,
                data: channel.clone().into(),
            };
            TransactionRequest::default()
                .with_to(self.config.inbox)
                .with_input(Bytes::from(call.abi_encode()))
        };
        let request = self
            .priced(request.with_from(from).with_nonce(nonce), 1)
            .await?;
        match self.provider.send_transaction(request.clone()).await {
            Ok(pending) => {
                let hash = *pending.tx_hash();
                tracing::info!(
                    "batcher: posting L2 blocks {}..={} ({} txs, {} -> {} bytes, {} blobs) in {hash}",
                    batch.first,
                    batch.last,
                    batch.transactions,
                    batch.raw_bytes,
                    batch.channel_bytes,
                    batch.blobs
                );
                self.in_flight = Some(InFlight {
                    hash,
                    nonce,
                    sent_at: Instant::now(),
                    request,
                    batch,
                });
                Ok(())
            }
            Err(e) if use_blobs && self.config.data == DataMode::Auto => {
                tracing::warn!("batcher: L1 refused the blob transaction ({e}); posting calldata");
                self.config.data = DataMode::Calldata;
                let result = Box::pin(self.send(batch, channel, parent)).await;
                self.config.data = DataMode::Auto;
                result
            }
            Err(e) => Err(format!("sending the batch: {e}")),
        }
    }

    /// Fees for a new (`bump` 1) or replacement (`bump` 2, 4, ...) transaction, and its gas.
    async fn priced(
        &self,
        request: TransactionRequest,
        bump: u128,
    ) -> Result<TransactionRequest, String> {
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| format!("fee estimate: {e}"))?;
        let mut request = request
            .with_chain_id(self.config.l1_chain_id)
            .with_max_fee_per_gas(fees.max_fee_per_gas.max(1) * 2 * bump)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas.max(1) * bump);
        if request.sidecar.is_some() {
            let blob_fee = self
                .provider
                .get_blob_base_fee()
                .await
                .map_err(|e| format!("blob base fee: {e}"))?;
            request = request.with_max_fee_per_blob_gas(blob_fee.max(1) * 2 * bump);
        }
        if request.gas.is_none() {
            let gas = self
                .provider
                .estimate_gas(request.clone())
                .await
                .map_err(|e| format!("gas estimate: {e}"))?;
            request = request.with_gas_limit(gas + gas / 5);
        }
        Ok(request)
    }

    /// Follows the transaction in flight: done when mined; replaced when stuck.
    async fn track(&mut self) -> Result<(), String> {
        let flight = self.in_flight.as_ref().expect("checked by the caller");
        let receipt = self
            .provider
            .get_transaction_receipt(flight.hash)
            .await
            .map_err(|e| format!("eth_getTransactionReceipt: {e}"))?;
        if let Some(receipt) = receipt {
            let flight = self.in_flight.take().expect("present");
            if !receipt.status() {
                tracing::warn!(
                    "batcher: batch {}..={} reverted in L1 block {:?} (the inbox moved on: a race or a reorg); starting again from the inbox",
                    flight.batch.first,
                    flight.batch.last,
                    receipt.block_number
                );
                self.stats.lock().reverted += 1;
                return Ok(());
            }
            let b = flight.batch;
            let posted = PostedBatch {
                first_block: b.first,
                last_block: b.last,
                transactions: b.transactions,
                raw_bytes: b.raw_bytes,
                channel_bytes: b.channel_bytes,
                blobs: b.blobs,
                l1_tx: flight.hash,
                l1_block: receipt.block_number.unwrap_or_default(),
                l1_gas_used: receipt.gas_used,
                posted_after_ms: now_us().saturating_sub(b.newest_block_time_us) / 1_000,
                oldest_after_ms: now_us().saturating_sub(b.oldest_block_time_us) / 1_000,
                included_at_us: now_us(),
            };
            let mut s = self.stats.lock();
            s.posted.push(posted);
            if s.posted.len() > KEEP_POSTED {
                s.posted.remove(0);
            }
            return Ok(());
        }
        // Not mined: was its nonce taken by another transaction (a replacement of ours from
        // before a restart, or a reorg)? Then it will never be: start again from the inbox.
        let mined_nonce = self
            .provider
            .get_transaction_count(self.config.key.address())
            .await
            .map_err(|e| format!("eth_getTransactionCount: {e}"))?;
        if mined_nonce > flight.nonce {
            self.in_flight = None;
            return Ok(());
        }
        if flight.sent_at.elapsed() < self.config.resubmit_after {
            return Ok(());
        }
        let mut request = flight.request.clone();
        request.max_fee_per_gas = request.max_fee_per_gas.map(|f| f * 2);
        request.max_priority_fee_per_gas = request.max_priority_fee_per_gas.map(|f| f * 2);
        request.max_fee_per_blob_gas = request.max_fee_per_blob_gas.map(|f| f * 2);
        match self.provider.send_transaction(request.clone()).await {
            Ok(pending) => {
                let hash = *pending.tx_hash();
                tracing::info!(
                    "batcher: replaced stuck batch transaction with {hash} (fees doubled)"
                );
                self.stats.lock().replacements += 1;
                let flight = self.in_flight.as_mut().expect("present");
                flight.hash = hash;
                flight.sent_at = Instant::now();
                flight.request = request;
                Ok(())
            }
            Err(e) => Err(format!("replacing the stuck batch transaction: {e}")),
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// The inbox's batch hash of a batch (`keccak256(abi.encode(parent, first, last, dataHashes))`).
pub fn batch_hash(parent: B256, first: u64, last: u64, data_hashes: &[B256]) -> B256 {
    use alloy::sol_types::SolValue;
    keccak256(
        (
            parent,
            alloy::primitives::U256::from(first),
            alloy::primitives::U256::from(last),
            data_hashes.to_vec(),
        )
            .abi_encode_params(),
    )
}
