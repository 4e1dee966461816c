//! Running nodes for people: `rtchain node` (a node from a config file until SIGTERM or
//! Ctrl-C), `rtchain devnet` (a single validator with the dev genesis, or a cluster of node
//! processes), and the state check the crash tests use.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use alloy_primitives::{Address, B256};
use alloy_signer_local::{MnemonicBuilder, coins_bip39::English};
use rtchain_l1::{
    anvil::{Anvil, AnvilOptions},
    deploy::{DeployParams, Deployment},
};

use crate::{
    cluster::{self, ClusterL1, ClusterSpec},
    config::{ConsensusSync, NodeConfig},
    keys::{DEV_ADMIN_KEY, DEV_BATCHER_KEY, DEV_SETTLEMENT_KEY_FIRST, dev_key},
    node::Node,
};

/// Which L1 the devnet settles to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L1Choice {
    /// Start anvil (from the project's node_modules) with the devnet, stop it with it.
    Anvil,
    /// An L1 already running (the contracts are deployed there on first start).
    Url(String),
    /// No settlement.
    None,
}

/// The devnet's settlement parameters.
#[derive(Debug, Clone)]
pub struct DevnetL1Options {
    pub choice: L1Choice,
    /// Port of the anvil the devnet starts (0: a free one).
    pub anvil_port: u16,
    /// L2 blocks between output roots.
    pub output_interval: u64,
    /// How long an output root waits on L1 before withdrawals against it can be finalized.
    pub finalization_secs: u64,
}

impl Default for DevnetL1Options {
    fn default() -> Self {
        Self {
            choice: L1Choice::Anvil,
            anvil_port: 8546,
            output_interval: 10,
            finalization_secs: 12,
        }
    }
}

/// The devnet's L1 while it runs: anvil (if the devnet started it) and the contracts.
pub struct DevnetL1 {
    pub url: String,
    pub anvil: Option<Anvil>,
    pub deployment: Deployment,
}

/// Starts (or reaches) the devnet's L1 and makes sure the contracts are deployed for these
/// validators, recording them at `record` (an existing record on the same L1 is reused).
pub async fn prepare_l1(
    options: &DevnetL1Options,
    dir: &Path,
    l2_chain_id: u64,
    consensus_keys: Vec<B256>,
) -> Result<Option<DevnetL1>, String> {
    if options.choice != L1Choice::None {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let (url, anvil) = match &options.choice {
        L1Choice::None => return Ok(None),
        L1Choice::Url(url) => (url.clone(), None),
        L1Choice::Anvil => {
            let anvil_options = AnvilOptions {
                port: options.anvil_port,
                // Blocks, receipts and blobs survive a devnet restart on the same directory.
                state_file: Some(dir.join("anvil-state.json")),
                log_file: Some(dir.join("anvil.log")),
                ..AnvilOptions::default()
            };
            let anvil = tokio::task::spawn_blocking(move || Anvil::start(&anvil_options))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            (anvil.url.clone(), Some(anvil))
        }
    };
    let record = dir.join("l1.json");
    if record.exists() {
        let deployment = Deployment::load(&record).map_err(|e| e.to_string())?;
        if deployed_at(&url, &deployment).await {
            return Ok(Some(DevnetL1 {
                url,
                anvil,
                deployment,
            }));
        }
        tracing::warn!(
            "{} names contracts that {url} does not hold: deploying again",
            record.display()
        );
    }
    let settlement_keys: Vec<Address> = (0..consensus_keys.len() as u32)
        .map(|i| dev_key(DEV_SETTLEMENT_KEY_FIRST + i).address())
        .collect();
    let params = DeployParams {
        l2_chain_id,
        admin: dev_key(DEV_ADMIN_KEY).address(),
        batcher: dev_key(DEV_BATCHER_KEY).address(),
        consensus_keys,
        settlement_keys,
        epoch_length: 100_000,
        submission_interval: options.output_interval,
        finalization_period_secs: options.finalization_secs,
    };
    let deployment = rtchain_l1::deploy::deploy(&url, dev_key(DEV_ADMIN_KEY), &params)
        .await
        .map_err(|e| e.to_string())?;
    deployment.save(&record).map_err(|e| e.to_string())?;
    Ok(Some(DevnetL1 {
        url,
        anvil,
        deployment,
    }))
}

/// Whether the contracts a record names exist on the L1 at `url`.
async fn deployed_at(url: &str, deployment: &Deployment) -> bool {
    use alloy::providers::{Provider, ProviderBuilder};
    let Ok(provider) = ProviderBuilder::new().connect(url).await else {
        return false;
    };
    provider
        .get_chain_id()
        .await
        .is_ok_and(|id| id == deployment.l1_chain_id)
        && provider
            .get_code_at(deployment.inbox)
            .await
            .is_ok_and(|code| !code.is_empty())
}

/// Prints where the L2's L1 is and what is deployed there.
fn print_l1(l1: &DevnetL1) {
    let d = &l1.deployment;
    println!(
        "L1: {} (chain id {}{})",
        l1.url,
        d.l1_chain_id,
        if l1.anvil.is_some() {
            ", anvil started by the devnet"
        } else {
            ""
        }
    );
    println!(
        "L1 contracts: Portal {}  OutputOracle {}  BatchInbox {}  ValidatorRegistry {}",
        d.portal, d.oracle, d.inbox, d.registry
    );
    println!(
        "Output roots every {} L2 blocks, withdrawals final {} s after their root; `rtchain l1 status --rpc URL`",
        d.submission_interval, d.finalization_period_secs
    );
}

/// What `rtchain devnet` was asked for.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Keep chain data here across runs (default: a fresh directory deleted on exit).
    pub data_dir: Option<PathBuf>,
    pub rpc_addr: SocketAddr,
    /// Without `genesis`: the dev genesis's id (default 31337); with it, left out or equal to
    /// the file's.
    pub chain_id: Option<u64>,
    pub block_interval_ms: u64,
    pub genesis: Option<PathBuf>,
    /// Skip fdatasync of the mini-block log and votes (benchmarks only).
    pub unsafe_no_sync: bool,
    pub fastpath_addr: std::net::SocketAddrV4,
    pub no_fastpath: bool,
    pub validators: usize,
    pub followers: usize,
    pub netns: bool,
    pub l1: DevnetL1Options,
    /// State history each node keeps.
    pub history: rtchain_state::HistoryMode,
    /// Web origins allowed to use the RPC from a browser (`rpc.allowed_origins`).
    pub allowed_origins: Vec<String>,
    /// Accept unprotected (pre-EIP-155) transactions (`rpc.allow_unprotected_txs`).
    pub allow_unprotected_txs: bool,
}

/// `rtchain devnet`: one validator in this process, or `validators` node processes.
pub async fn run(options: DevnetOptions) -> Result<(), String> {
    if options.validators > 1 {
        return run_cluster(options).await;
    }
    let (data_dir, _temp) = match options.data_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rtchain-devnet-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary data directory: {e}"))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let mut config = NodeConfig {
        data_dir,
        ..NodeConfig::default()
    };
    config.rpc.addr = options.rpc_addr;
    config.rpc.allowed_origins = options.allowed_origins.clone();
    config.rpc.allow_unprotected_txs = options.allow_unprotected_txs;
    // Like anvil and hardhat: the dev accounts sign through the RPC (their keys are public).
    config.rpc.dev_accounts = options.genesis.is_none();
    config.chain.chain_id = options.chain_id;
    config.chain.genesis = options.genesis;
    config.storage.set_history_mode(options.history);
    config.fastpath.listen = options.fastpath_addr;
    config.fastpath.enabled = !options.no_fastpath;
    config.sequencer.block_interval_ms = options.block_interval_ms;
    config.sequencer.idle_block_interval_ms = config
        .sequencer
        .idle_block_interval_ms
        .max(options.block_interval_ms);
    if options.unsafe_no_sync {
        eprintln!(
            "WARNING: --unsafe-no-sync: the mini-block log is not synced; a crash can lose acknowledged transactions"
        );
        config.storage.minilog_sync = rtchain_state::minilog::SyncMode::Off;
    }
    // The single validator's consensus key is never used to vote; the registry still wants
    // one per validator.
    let placeholder = alloy_primitives::keccak256("rtchain devnet validator 0");
    let chain_id = config.chain.resolve_chain_id()?;
    let l1 = prepare_l1(&options.l1, &config.data_dir, chain_id, vec![placeholder]).await?;
    if let Some(l1) = &l1 {
        let dir = config.data_dir.clone();
        cluster::configure_l1(&mut config, &dir, &l1.url, &l1.deployment, 0, 1)?;
        print_l1(l1);
    }
    // The dev accounts are funded only by the built-in dev genesis.
    let banner = if config.chain.genesis.is_none() {
        Some(print_dev_accounts as fn())
    } else {
        None
    };
    let result = run_node(config, banner).await;
    drop(l1);
    result
}

/// `devnet --validators N`: N `rtchain node` processes on loopback, stopped together.
async fn run_cluster(options: DevnetOptions) -> Result<(), String> {
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (dir, _temp) = cluster::cluster_dir(options.data_dir)?;
    if options.unsafe_no_sync {
        eprintln!(
            "WARNING: --unsafe-no-sync: votes and mini-blocks are not synced; a crash can lose acknowledged transactions and make a validator equivocate"
        );
    }
    let mut spec = ClusterSpec {
        dir: dir.clone(),
        validators: options.validators,
        followers: options.followers,
        chain_id: options.chain_id,
        genesis: options.genesis.clone(),
        block_interval_ms: options.block_interval_ms,
        sync: if options.unsafe_no_sync {
            ConsensusSync::Off
        } else {
            ConsensusSync::Always
        },
        rpc_base_port: options.rpc_addr.port(),
        netns: options.netns,
        fastpath_base_port: (!options.no_fastpath).then_some(options.fastpath_addr.port()),
        l1: None,
        history: options.history,
    };
    let consensus_keys = cluster::node_keys(&spec)?
        .iter()
        .take(options.validators)
        .map(|(_, key)| B256::from(key.to_bytes()))
        .collect();
    let chain_id = crate::config::ChainSection {
        chain_id: options.chain_id,
        genesis: options.genesis.clone(),
        ..Default::default()
    }
    .resolve_chain_id()?;
    let l1 = prepare_l1(&options.l1, &dir, chain_id, consensus_keys).await?;
    if let Some(l1) = &l1 {
        print_l1(l1);
        spec.l1 = Some(ClusterL1 {
            url: l1.url.clone(),
            deployment: l1.deployment.clone(),
        });
    }
    let mut cluster = tokio::task::spawn_blocking(move || cluster::launch(&spec))
        .await
        .map_err(|e| e.to_string())??;
    println!(
        "rtchain {} cluster of {} validators and {} followers in {}",
        env!("CARGO_PKG_VERSION"),
        options.validators,
        options.followers,
        dir.display()
    );
    if let Some(net) = &cluster.net {
        println!(
            "Network: bridge {} ({}/24), one namespace per node",
            net.bridge, net.bridge_ip
        );
    }
    cluster::print_validators(&cluster.nodes);
    println!("Chain id: {chain_id}");
    if options.genesis.is_none() {
        print_dev_accounts();
    }
    tokio::pin!(shutdown);
    let mut exited = vec![false; cluster.nodes.len()];
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for v in cluster.nodes.iter_mut() {
                    if let Some(child) = &mut v.child
                        && let Ok(Some(status)) = child.try_wait()
                        && !exited[v.index]
                    {
                        exited[v.index] = true;
                        eprintln!("validator {} exited ({status}); see {}", v.index, v.log_path.display());
                    }
                }
            }
        }
    }
    println!("shutting down");
    tokio::task::spawn_blocking(move || {
        for v in &mut cluster.nodes {
            v.stop(Duration::from_secs(10));
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    drop(l1);
    Ok(())
}

/// The incremental root must never drift from the flat state: recompute it from scratch over the
/// committed state (the newest sealed block; mini-blocks only in the log are not applied).
pub fn verify_state(data_dir: &std::path::Path) -> Result<(), String> {
    let store = rtchain_state::Store::open(&data_dir.join("db")).map_err(|e| e.to_string())?;
    let view = store.view();
    let head = view
        .head()
        .map_err(|e| e.to_string())?
        .ok_or("the data directory has no chain head")?;
    let header = view
        .header(head.number)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("head block {} has no header", head.number))?;
    let recomputed =
        rtchain_state::state_root::full_state_root(&view).map_err(|e| e.to_string())?;
    println!("block {} ({})", head.number, head.hash);
    println!("stored stateRoot:     {}", header.state_root);
    println!("recomputed stateRoot: {recomputed}");
    if recomputed != header.state_root {
        return Err(format!("state root mismatch at block {}", head.number));
    }
    println!("state root OK");
    Ok(())
}

fn print_dev_accounts() {
    println!(
        "Dev accounts (10,000 ETH each), mnemonic: {}",
        rtchain_state::genesis::DEV_MNEMONIC
    );
    for (i, expected) in rtchain_state::genesis::DEV_ACCOUNTS.iter().enumerate() {
        let signer = MnemonicBuilder::<English>::default()
            .phrase(rtchain_state::genesis::DEV_MNEMONIC)
            .index(i as u32)
            .and_then(|b| b.build());
        match signer {
            Ok(signer) if signer.address() == *expected => {
                println!(
                    "({i}) {expected}  private key 0x{}",
                    alloy_primitives::hex::encode(signer.to_bytes())
                );
            }
            _ => println!("({i}) {expected}"),
        }
    }
}

/// `rtchain node`: runs a node until SIGTERM or Ctrl-C; `banner` prints after the addresses.
pub async fn run_node(config: NodeConfig, banner: Option<fn()>) -> Result<(), String> {
    // Handlers first: a SIGTERM that arrives while the node starts must stop it cleanly, not
    // kill it by the default action.
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    let addr = node.rpc.local_addr();
    let head = node.chain.state.read().head;
    println!("rtchain {} listening", env!("CARGO_PKG_VERSION"));
    if let Some(fastpath) = &node.fastpath {
        println!(
            "Fast path: udp://{} ({})",
            fastpath.local_addr, fastpath.backend
        );
    }
    println!("RPC: http://{addr} (WebSocket: ws://{addr})");
    println!(
        "Chain id: {}  head block: {} ({})",
        node.chain.exec.chain_id, head.number, head.hash
    );
    if let Some(banner) = banner {
        banner();
    }
    let chain = node.chain.clone();
    let stopped_itself = async move {
        while !chain.is_shut_down() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown => println!("shutting down"),
        _ = stopped_itself => {}
    }
    let failure = node.chain.failure();
    node.stop().await;
    match failure {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Resolves on SIGTERM or Ctrl-C; the handlers are installed when this returns.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}
