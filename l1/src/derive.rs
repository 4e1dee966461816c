//! Reading the L2 back from L1: every batch the `BatchInbox` recorded, in order, with its data
//! from the blobs (beacon API, `GET /eth/v1/beacon/blobs/{block}`) or the calldata, checked
//! against the hashes the inbox recorded and against the batch hash chain.

use alloy::{
    eips::eip4844::{AsCkzg, Blob, env_settings::EnvKzgSettings, kzg_to_versioned_hash},
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::{SolCall, SolEvent},
};

use crate::{
    batcher::batch_hash,
    blob,
    channel::{Batch, decode_channel},
    contracts::BatchInbox,
};

/// L1 blocks scanned for batches per request.
const LOG_RANGE: u64 = 2_000;
/// Blobs per batch at most (the inbox's own bound).
const MAX_BLOBS: usize = 16;

/// A batch as the inbox recorded it, with its decoded content.
#[derive(Debug, Clone)]
pub struct PostedBatch {
    pub index: u64,
    pub first_block: u64,
    pub last_block: u64,
    pub batch_hash: B256,
    pub l1_block: u64,
    pub l1_tx: B256,
    pub blobs: bool,
    pub batch: Batch,
}

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("L1: {0}")]
    L1(String),
    #[error("batch {index} (L1 tx {tx}): {why}")]
    BadBatch { index: u64, tx: B256, why: String },
    #[error(
        "batch {index} does not continue the chain read so far (parent {parent}, expected {expected}): L1 reorganised below the confirmation level; derive again from scratch"
    )]
    Reorg {
        index: u64,
        parent: B256,
        expected: B256,
    },
}

/// Reads batches in order from an inbox.
pub struct BatchReader {
    provider: DynProvider,
    http: reqwest::Client,
    /// The L1 node's HTTP URL (the beacon API is on the same port on anvil).
    beacon_url: String,
    inbox: Address,
    /// Next L1 block to scan.
    cursor: u64,
    next_index: u64,
    last_hash: B256,
}

impl BatchReader {
    /// Reads from the inbox's first batch, scanning L1 from `from_block` (its deployment).
    pub fn new(provider: DynProvider, beacon_url: String, inbox: Address, from_block: u64) -> Self {
        Self {
            provider,
            http: reqwest::Client::new(),
            beacon_url: beacon_url.trim_end_matches('/').to_owned(),
            inbox,
            cursor: from_block,
            next_index: 0,
            last_hash: B256::ZERO,
        }
    }

    /// The next L1 block to scan.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Every batch recorded in L1 blocks up to `until` that was not read yet, in order.
    pub async fn read_until(&mut self, until: u64) -> Result<Vec<PostedBatch>, DeriveError> {
        let mut out = Vec::new();
        while self.cursor <= until {
            let to = until.min(self.cursor + LOG_RANGE - 1);
            let logs = self
                .provider
                .get_logs(
                    &Filter::new()
                        .address(self.inbox)
                        .event_signature(BatchInbox::BatchSubmitted::SIGNATURE_HASH)
                        .from_block(self.cursor)
                        .to_block(to),
                )
                .await
                .map_err(|e| DeriveError::L1(format!("eth_getLogs: {e}")))?;
            for log in logs {
                out.push(self.read(&log).await?);
            }
            self.cursor = to + 1;
        }
        Ok(out)
    }

    async fn read(&mut self, log: &alloy::rpc::types::Log) -> Result<PostedBatch, DeriveError> {
        let tx = log.transaction_hash.unwrap_or_default();
        let l1_block = log.block_number.unwrap_or_default();
        let event = BatchInbox::BatchSubmitted::decode_log_data(log.data())
            .map_err(|e| DeriveError::L1(format!("undecodable BatchSubmitted log in {tx}: {e}")))?;
        let index: u64 = event.index.try_into().unwrap_or(u64::MAX);
        let bad = |why: String| DeriveError::BadBatch { index, tx, why };
        if index != self.next_index || event.parentBatchHash != self.last_hash {
            return Err(DeriveError::Reorg {
                index,
                parent: event.parentBatchHash,
                expected: self.last_hash,
            });
        }
        let hashes = &event.dataHashes;
        let expected_hash = batch_hash(
            event.parentBatchHash,
            event.firstBlock,
            event.lastBlock,
            hashes,
        );
        if expected_hash != event.batchHash {
            return Err(bad(format!(
                "batch hash {} is not the hash of its fields ({expected_hash})",
                event.batchHash
            )));
        }
        let channel = if event.blobs {
            self.blob_data(l1_block, hashes).await.map_err(bad)?
        } else {
            self.calldata(tx, hashes).await.map_err(bad)?
        };
        let batch = decode_channel(&channel).map_err(|e| bad(e.to_string()))?;
        if batch.first_block() != Some(event.firstBlock)
            || batch.last_block() != Some(event.lastBlock)
        {
            return Err(bad(format!(
                "the data covers {:?}..={:?}, the inbox says {}..={}",
                batch.first_block(),
                batch.last_block(),
                event.firstBlock,
                event.lastBlock
            )));
        }
        self.next_index += 1;
        self.last_hash = event.batchHash;
        Ok(PostedBatch {
            index,
            first_block: event.firstBlock,
            last_block: event.lastBlock,
            batch_hash: event.batchHash,
            l1_block,
            l1_tx: tx,
            blobs: event.blobs,
            batch,
        })
    }

    /// The channel from a batch's blobs, each checked against its versioned hash.
    async fn blob_data(&self, l1_block: u64, hashes: &[B256]) -> Result<Vec<u8>, String> {
        if hashes.is_empty() || hashes.len() > MAX_BLOBS {
            return Err(format!("{} blob hashes", hashes.len()));
        }
        let filter: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
        let url = format!(
            "{}/eth/v1/beacon/blobs/{l1_block}?versioned_hashes={}",
            self.beacon_url,
            filter.join(",")
        );
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        let data = json["data"]
            .as_array()
            .ok_or_else(|| format!("GET {url}: no data (answer: {})", truncate(&text)))?;
        let mut by_hash = std::collections::HashMap::new();
        let settings = EnvKzgSettings::Default.get();
        for entry in data.iter().take(MAX_BLOBS * 2) {
            let hex = entry.as_str().ok_or("a blob is not a hex string")?;
            let bytes = alloy::primitives::hex::decode(hex).map_err(|e| e.to_string())?;
            let blob = Blob::try_from(bytes.as_slice()).map_err(|_| "a blob of the wrong size")?;
            let commitment = settings
                .blob_to_kzg_commitment(blob.as_ckzg())
                .map_err(|e| format!("KZG: {e}"))?;
            by_hash.insert(
                kzg_to_versioned_hash(commitment.to_bytes().as_slice()),
                blob,
            );
        }
        let mut channel = Vec::new();
        for h in hashes {
            let blob = by_hash.get(h).ok_or_else(|| {
                format!("L1 block {l1_block} serves no blob with versioned hash {h}")
            })?;
            channel.extend(blob::decode(blob).map_err(|e| e.to_string())?);
        }
        Ok(channel)
    }

    /// The channel from a calldata batch, checked against its hash.
    async fn calldata(&self, tx: B256, hashes: &[B256]) -> Result<Vec<u8>, String> {
        let found = self
            .provider
            .get_transaction_by_hash(tx)
            .await
            .map_err(|e| format!("eth_getTransactionByHash: {e}"))?
            .ok_or("the batch transaction is not on L1")?;
        let input = alloy::consensus::Transaction::input(&found);
        let call = BatchInbox::submitBatchCalldataCall::abi_decode(input)
            .map_err(|e| format!("not a submitBatchCalldata call: {e}"))?;
        if hashes.len() != 1 || alloy::primitives::keccak256(&call.data) != hashes[0] {
            return Err("calldata does not match the recorded hash".into());
        }
        Ok(call.data.to_vec())
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
