//! The node's L1 tasks, started with the node when `[l1]` is set: following L1 (deposits,
//! batches, finality), the batcher and the proposer when this node holds their keys, and the
//! settlement tick. They read the chain and the [`Settlement`] state; neither names them.

use std::sync::Arc;

use rtchain_l1::{batcher::BatchSource, channel::BatchBlock};

use crate::{
    chain::Chain,
    config::NodeConfig,
    error::NodeError,
    settlement::{
        Settlement, block_as_posted, decode_output, origin_in, output_key, registered_validators,
    },
};

/// Blocks as the batcher posts them, read from RocksDB.
pub struct StoreBatchSource {
    pub chain: Arc<Chain>,
}

impl BatchSource for StoreBatchSource {
    fn chain_id(&self) -> u64 {
        self.chain.exec.chain_id
    }

    fn head(&self) -> u64 {
        self.chain.state.read().head.number
    }

    fn block(&self, number: u64) -> Result<Option<(BatchBlock, u64)>, String> {
        block_as_posted(&self.chain.store, number)
    }
}

/// Starts the node's L1 tasks: following L1, the batcher and the proposer (when this node holds
/// their keys), and the settlement tick (re-signing after a restart, resending signatures,
/// following the registry). They run on the housekeeping runtime until aborted.
pub async fn spawn_tasks(
    config: &NodeConfig,
    settlement: Arc<Settlement>,
    chain: Arc<Chain>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, NodeError> {
    use std::time::Duration;

    use alloy::providers::{Provider, ProviderBuilder};
    use rtchain_l1::{batcher, proposer, watch};

    let bad = |m: String| NodeError::Config(m);
    let l1 = &config.l1;
    let url = l1.url.clone().expect("checked by open");
    let provider = ProviderBuilder::new()
        .connect(&url)
        .await
        .map_err(|e| bad(format!("l1.url {url}: {e}")))?
        .erased();
    let d = settlement.deployment.clone();
    let (origin, _, _) = origin_in(&chain.latest_state())?;
    let watched = watch::Watched {
        portal: d.portal,
        inbox: d.inbox,
        from_block: d.deploy_block.max(origin),
    };
    let poll = Duration::from_millis(l1.poll_ms);
    // One round before anything starts: the sequencer's first look at L1 sees it.
    if let Err(e) = watch::poll(&provider, &watched, &settlement.view).await {
        tracing::warn!("L1: {e} (following it in the background)");
    }
    let mut tasks = vec![tokio::spawn(watch::follow(
        provider.clone(),
        watched,
        settlement.view.clone(),
        poll,
    ))];
    if let Some(file) = &l1.batcher.key_file {
        let key = crate::keys::load_secp256k1(file)
            .map_err(|e| bad(format!("l1.batcher.key_file: {e}")))?;
        if key.address() != d.batcher {
            tracing::warn!(
                "batcher key {} is not the inbox's batcher {}: its batches will be refused",
                key.address(),
                d.batcher
            );
        }
        let b = &l1.batcher;
        let config = batcher::BatcherConfig {
            inbox: d.inbox,
            l1_chain_id: d.l1_chain_id,
            key,
            data: b.data,
            compression: rtchain_l1::channel::Compression::Zstd,
            max_blobs_per_tx: b.max_blobs_per_tx,
            max_calldata_bytes: 600_000,
            max_batch_age: Duration::from_millis(b.max_batch_age_ms),
            resubmit_after: Duration::from_millis(b.resubmit_after_ms),
            poll,
        };
        let source: Arc<dyn BatchSource> = Arc::new(StoreBatchSource {
            chain: chain.clone(),
        });
        tasks.push(tokio::spawn(batcher::run(
            url.clone(),
            config,
            source,
            settlement.batcher.clone(),
        )));
    }
    if let Some(key) = settlement.signer().cloned() {
        let validators = registered_validators(&provider, d.registry, 0).await?;
        let index = validators
            .iter()
            .position(|a| *a == key.address())
            .unwrap_or(0);
        let config = proposer::ProposerConfig {
            oracle: d.oracle,
            key,
            index,
            validators: validators.len(),
            grace: Duration::from_millis(l1.proposer_grace_ms),
            poll,
        };
        tasks.push(tokio::spawn(proposer::run(
            url.clone(),
            config,
            settlement.book.clone(),
            settlement.proposer.clone(),
        )));
    }
    tasks.push(tokio::spawn(tick(provider, settlement, chain)));
    Ok(tasks)
}

/// Every second: after a restart the book is empty, so the output the oracle waits for is
/// signed again from its stored fields; our signature for it is sent again every few seconds
/// until it is posted (a validator that lost it must not stall the root); and the validator set
/// follows the registry at the oracle's next block.
async fn tick(
    provider: alloy::providers::DynProvider,
    settlement: Arc<Settlement>,
    chain: Arc<Chain>,
) {
    let mut rounds = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        rounds += 1;
        let wanted = settlement.book.lock().next_wanted;
        if wanted == 0 {
            continue;
        }
        let have = settlement.book.lock().get(wanted).is_some();
        if !have
            && wanted <= chain.state.read().head.number
            && let Ok(Some(bytes)) = chain.store.settlement(&output_key(wanted))
            && let Some(proof) = decode_output(&bytes)
        {
            settlement.output_sealed(wanted, proof);
        }
        if rounds.is_multiple_of(3) {
            settlement.resend_wanted();
        }
        if rounds.is_multiple_of(10)
            && let Ok(set) =
                registered_validators(&provider, settlement.deployment.registry, wanted).await
        {
            settlement.book.lock().validators = set.into_iter().collect();
        }
    }
}
