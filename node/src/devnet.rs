//! Running nodes for people: `rtchain node` (a node from a config file until SIGTERM or
//! Ctrl-C), `rtchain devnet` (a single validator with the dev genesis, or a cluster of node
//! processes), and the state check the crash tests use.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    Node,
    cluster::{self, ClusterSpec},
    config::{ConsensusSync, NodeConfig},
};

/// What `rtchain devnet` was asked for.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Keep chain data here across runs (default: a fresh directory deleted on exit).
    pub data_dir: Option<PathBuf>,
    pub rpc_addr: SocketAddr,
    pub chain_id: u64,
    pub block_interval_ms: u64,
    pub genesis: Option<PathBuf>,
    /// Skip fdatasync of the mini-block log and votes (benchmarks only).
    pub unsafe_no_sync: bool,
    pub fastpath_addr: std::net::SocketAddrV4,
    pub no_fastpath: bool,
    pub validators: usize,
    pub followers: usize,
    pub netns: bool,
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
    config.chain.chain_id = options.chain_id;
    config.chain.genesis = options.genesis;
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
    // The dev accounts are funded only by the built-in dev genesis.
    let banner = if config.chain.genesis.is_none() {
        Some(print_dev_accounts as fn())
    } else {
        None
    };
    run_node(config, banner).await
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
    let spec = ClusterSpec {
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
    };
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
    println!("Chain id: {}", options.chain_id);
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
    use alloy_signer_local::{MnemonicBuilder, coins_bip39::English};
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
    shutdown.await;
    println!("shutting down");
    node.stop().await;
    Ok(())
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
