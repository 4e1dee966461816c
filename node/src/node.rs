//! [`Node`]: how the parts are wired at start and stopped in order.

use std::sync::Arc;

use crate::{
    chain::{self, Chain},
    config::NodeConfig,
    derive,
    error::NodeError,
    fastpath, l1_tasks,
    outcome::Answers,
    replica::Replica,
    rpc_backend::NodeBackend,
    sequencer,
    sequencer::Sequencer,
    settlement,
};

/// A running node: the sequencer thread, the fast path and the RPC server.
pub struct Node {
    pub chain: Arc<Chain>,
    pub rpc: rtchain_rpc::RpcHandle,
    pub fastpath: Option<fastpath::FastPath>,
    sequencer: Option<rtchain_dataplane::tile::TileHandle<()>>,
    /// L1 tasks (watcher, batcher, proposer, tick), aborted at stop.
    l1_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens (or initialises) the data directory, replays the mini-block log, starts the
    /// sequencer and serves RPC. Must be called inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        match rtchain_dataplane::numa::numa_nodes() {
            Ok(n) if n > 1 => tracing::info!(
                "{n} NUMA nodes: each pinned tile and exec worker binds its memory to its core's node"
            ),
            Ok(_) => tracing::debug!("one NUMA node: no memory binding needed"),
            Err(e) => tracing::warn!("cannot read the NUMA topology ({e}); no memory binding"),
        }
        let settlement = if config.l1.enabled() {
            Some(Arc::new(settlement::open(&config).await?))
        } else {
            None
        };
        let (chain, recovered) = chain::open(&config, settlement.clone())?;
        let chain = Arc::new(chain);
        // L1 first: the sequencer's first mini-block may take deposits.
        let mut l1_tasks = match &settlement {
            Some(s) => l1_tasks::spawn_tasks(&config, s.clone(), chain.clone()).await?,
            None => Vec::new(),
        };
        let backend = Arc::new(NodeBackend::new(chain.clone()));
        if config.rpc.dev_accounts {
            if config.chain.genesis.is_some() {
                return Err(NodeError::Config(
                    "rpc.dev_accounts signs with the public dev keys, funded only by the built-in dev genesis: remove it or chain.genesis".into(),
                ));
            }
            let count = rtchain_state::genesis::DEV_ACCOUNTS.len() as u32;
            backend.set_dev_signers((0..count).map(crate::keys::dev_key).collect());
        }
        // The fast path starts first: the sequencer answers through its reply rings.
        let (fastpath, answers) = if config.fastpath.enabled {
            let (fastpath, answers) =
                fastpath::start(&config.fastpath, &config.cores, chain.clone())?;
            backend.set_fastpath_stats(fastpath.stats_handle());
            (Some(fastpath), answers)
        } else {
            (None, Answers::none())
        };
        let sequencer = Sequencer::open(chain.clone(), recovered, answers, &config)?;
        let core = config.cores.sequencer;
        let tile = if config.l1.derive {
            let settlement = settlement.clone().expect("derive needs l1.url (validated)");
            let (blocks, received) = crossbeam_channel::bounded(derive::DERIVED_BLOCKS_AHEAD);
            let provider = alloy::providers::ProviderBuilder::new()
                .connect(config.l1.url.as_deref().unwrap_or_default())
                .await
                .map_err(|e| NodeError::Config(format!("l1.url: {e}")))?;
            l1_tasks.push(tokio::spawn(derive::follow(
                alloy::providers::Provider::erased(provider),
                config.l1.url.clone().unwrap_or_default(),
                settlement,
                chain.clone(),
                config.l1.confirmation,
                blocks,
                std::time::Duration::from_millis(config.l1.poll_ms),
            )));
            sequencer::spawn(sequencer, core, move |seq| seq.run_derived(received))?
        } else if config.consensus.enabled() {
            let replica = Replica::open(&config, &chain)?;
            backend.set_consensus_stats(replica.stats());
            sequencer::spawn(sequencer, core, move |seq| replica.run(seq))?
        } else {
            sequencer::spawn(sequencer, core, Sequencer::run)?
        };
        let rpc_config = rtchain_rpc::RpcConfig {
            addr: config.rpc.addr,
            max_connections: config.rpc.max_connections,
            max_request_body_bytes: config.rpc.max_request_body_bytes,
            max_batch_len: config.rpc.max_batch_len,
            allowed_origins: config.rpc.allowed_origins.clone(),
            ..Default::default()
        };
        let rpc = rtchain_rpc::start(rpc_config, backend)
            .await
            .map_err(|e| NodeError::Rpc(e.to_string()))?;
        if let Some(fastpath) = &fastpath {
            tracing::info!(
                "fast path ({}) on udp://{}",
                fastpath.backend,
                config.fastpath.listen
            );
        }
        Ok(Self {
            chain,
            rpc,
            fastpath,
            sequencer: Some(tile),
            l1_tasks,
        })
    }

    /// Stops RPC, lets the sequencer finish its mini-block, and syncs storage.
    pub async fn stop(mut self) {
        for task in self.l1_tasks.drain(..) {
            task.abort();
        }
        self.rpc.stop();
        self.rpc.stopped().await;
        if let Some(fastpath) = self.fastpath.take() {
            let _ = tokio::task::spawn_blocking(move || fastpath.stop()).await;
        }
        self.chain.shutdown();
        if let Some(handle) = self.sequencer.take() {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        if let Err(e) = self.chain.store.sync() {
            tracing::error!("sync on shutdown failed: {e}");
        }
    }
}
