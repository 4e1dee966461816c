//! `rtchain`: the real-time EVM L2 validator appliance.
//!
//! Subcommands: `devnet` (a local chain with the embedded dev genesis), `node` (a persistent
//! node from a TOML config), `statetest` (ethereum/tests through our executor), `bench`.

mod bench;
mod cluster;
mod config;
mod keys;
mod node;
mod statetest;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::config::NodeConfig;

#[derive(Parser)]
#[command(
    name = "rtchain",
    version,
    about = "Real-time EVM-compatible L2 validator appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local single-validator chain with the dev accounts funded.
    Devnet(DevnetArgs),
    /// Run a persistent node from a TOML config file (see docs/operator.md).
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run ethereum/tests GeneralStateTests through our executor (docs/conformance.md).
    Statetest(StatetestArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Validator keys (ed25519) for BFT replication.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Recomputes the state root of a stopped node's data directory from the flat state alone
    /// and compares it with the newest header's stateRoot (crash tests; exits 1 on mismatch).
    #[command(hide = true)]
    VerifyState {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a new validator key file (mode 0600, never overwritten) and prints its public key.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Prints the public key of a validator key file.
    Show {
        #[arg(value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(clap::Args)]
struct StatetestArgs {
    /// Fixture files, or directories searched recursively for *.json.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Only this fork's cases: Cancun, Prague or Osaka (default: all three).
    #[arg(long)]
    fork: Option<String>,
    /// Worker threads (default: available parallelism).
    #[arg(long)]
    jobs: Option<std::num::NonZeroUsize>,
    /// Also print skipped cases, per-file times and skip reasons.
    #[arg(long)]
    verbose: bool,
    /// Run each case the node's way: the signed transaction checked as a submission and
    /// executed by the parallel executor, forced to speculate on a worker thread.
    #[arg(long)]
    parallel: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Open-loop JSON-RPC load: submit-to-receipt latency and sustained rate.
    Rpc(bench::RpcBenchArgs),
    /// The executor alone: sequential against parallel on pre-signed batches in memory.
    Exec(bench::ExecBenchArgs),
    /// The UDP fast path: open-loop submit-to-receipt latency and sustained rate per backend.
    Udp(bench::UdpBenchArgs),
    /// The pktgen-compatible reflector's round trip, against dpdk-testpmd 5tswap on one rig.
    Reflect(bench::ReflectBenchArgs),
    /// A validator cluster on this machine: proposal-to-finalized and submit-to-finalized
    /// latency.
    Consensus(bench::ConsensusBenchArgs),
}

#[derive(clap::Args)]
struct DevnetArgs {
    /// Keep chain data here across runs (default: a fresh directory deleted on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON-RPC address (HTTP and WebSocket).
    #[arg(long, default_value = "127.0.0.1:8545")]
    rpc_addr: SocketAddr,
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// An EVM block is sealed this many milliseconds after its first mini-block.
    #[arg(long, default_value_t = 100)]
    block_interval_ms: u64,
    /// A geth-style genesis.json instead of the built-in dev genesis.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Skip fdatasync of the mini-block log (benchmarks only: a crash can lose acknowledged
    /// transactions).
    #[arg(long)]
    unsafe_no_sync: bool,
    /// UDP fast path address (docs/wire.md); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8547")]
    fastpath_addr: std::net::SocketAddrV4,
    /// Serve no UDP fast path.
    #[arg(long)]
    no_fastpath: bool,
    /// Run this many validator processes (n = 3f+1 >= 4) replicating by BFT on loopback.
    /// Validator i serves RPC on the RPC port + 10 i, the fast path on its port + 10 i and
    /// consensus on the RPC port + 4 + 10 i (port 0: free ports). Keys, configs, data and logs
    /// go to DATA_DIR/v{i}/.
    #[arg(long, default_value_t = 1)]
    validators: usize,
    /// With --validators: also run this many followers (non-voting full nodes that verify and
    /// re-execute the finalized blocks and serve RPC), after the validators' ports.
    #[arg(long, default_value_t = 0)]
    followers: usize,
    /// With --validators: run each node in its own network namespace on a bridge (needs root);
    /// every node gets its own 10.x address and the default ports.
    #[arg(long)]
    netns: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Statetest(args) = cli.command {
        let options = statetest::StatetestOptions {
            fork: args.fork,
            jobs: args.jobs,
            verbose: args.verbose,
            parallel: args.parallel,
        };
        return match statetest::run(&args.paths, &options) {
            Ok(summary) if summary.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("statetest: {e}");
                ExitCode::from(2)
            }
        };
    }
    // These own their node or port and its runtime (the DPDK backend needs a rig first and EAL
    // once per process), so they run outside the main runtime.
    let standalone = match &cli.command {
        Command::Bench(BenchCommand::Udp(args)) => {
            Some(bench::run_udp_bench(args.clone()).map(|_| ()))
        }
        Command::Bench(BenchCommand::Reflect(args)) => {
            Some(bench::run_reflect_bench(args.clone()).map(|_| ()))
        }
        _ => None,
    };
    if let Some(result) = standalone {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `rtchain node`: the runtime's threads (RPC, admin) are the housekeeping tile; pin them to
    // `cores.housekeeping` when the config names one. (The main thread stays unpinned: the core
    // map is validated against its allowed CPU set.)
    let housekeeping = match &cli.command {
        Command::Node { config } => NodeConfig::from_toml_file(config)
            .ok()
            .and_then(|c| c.cores.housekeeping),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(core) = housekeeping {
        builder.on_thread_start(move || {
            if let Err(e) = rtchain_dataplane::tile::pin_current_thread(core) {
                tracing::error!("housekeeping thread: cannot pin to core {core}: {e}");
            }
        });
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Devnet(args) => devnet(args).await,
            Command::Node { config } => {
                let config = NodeConfig::from_toml_file(&config)?;
                run_node(config, None).await
            }
            Command::Bench(BenchCommand::Rpc(args)) => bench::run_rpc_bench(args)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::Bench(BenchCommand::Consensus(args)) => bench::run_consensus_bench(args)
                .await
                .map_err(|e| e.to_string()),
            Command::Bench(BenchCommand::Exec(args)) => bench::run_exec_bench(args)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::VerifyState { data_dir } => verify_state(&data_dir),
            Command::Keys(KeysCommand::Generate { out }) => keys::generate(&out)
                .map(|key| println!("{}", keys::public_hex(&key)))
                .map_err(|e| e.to_string()),
            Command::Keys(KeysCommand::Show { key }) => keys::load(&key)
                .map(|key| println!("{}", keys::public_hex(&key)))
                .map_err(|e| e.to_string()),
            Command::Statetest(_)
            | Command::Bench(BenchCommand::Udp(_))
            | Command::Bench(BenchCommand::Reflect(_)) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn devnet(args: DevnetArgs) -> Result<(), String> {
    if args.validators > 1 {
        return devnet_cluster(args).await;
    }
    let (data_dir, _temp) = match args.data_dir {
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
    config.rpc.addr = args.rpc_addr;
    config.chain.chain_id = args.chain_id;
    config.chain.genesis = args.genesis;
    config.fastpath.listen = args.fastpath_addr;
    config.fastpath.enabled = !args.no_fastpath;
    config.sequencer.block_interval_ms = args.block_interval_ms;
    config.sequencer.idle_block_interval_ms = config
        .sequencer
        .idle_block_interval_ms
        .max(args.block_interval_ms);
    if args.unsafe_no_sync {
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
async fn devnet_cluster(args: DevnetArgs) -> Result<(), String> {
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (dir, _temp) = cluster::cluster_dir(args.data_dir)?;
    if args.unsafe_no_sync {
        eprintln!(
            "WARNING: --unsafe-no-sync: votes and mini-blocks are not synced; a crash can lose acknowledged transactions and make a validator equivocate"
        );
    }
    let spec = cluster::ClusterSpec {
        dir: dir.clone(),
        validators: args.validators,
        followers: args.followers,
        chain_id: args.chain_id,
        genesis: args.genesis.clone(),
        block_interval_ms: args.block_interval_ms,
        sync: if args.unsafe_no_sync {
            config::ConsensusSync::Off
        } else {
            config::ConsensusSync::Always
        },
        rpc_base_port: args.rpc_addr.port(),
        netns: args.netns,
        fastpath_base_port: (!args.no_fastpath).then_some(args.fastpath_addr.port()),
    };
    let mut cluster = tokio::task::spawn_blocking(move || cluster::launch(&spec))
        .await
        .map_err(|e| e.to_string())??;
    println!(
        "rtchain {} cluster of {} validators and {} followers in {}",
        env!("CARGO_PKG_VERSION"),
        args.validators,
        args.followers,
        dir.display()
    );
    if let Some(net) = &cluster.net {
        println!(
            "Network: bridge {} ({}/24), one namespace per node",
            net.bridge, net.bridge_ip
        );
    }
    cluster::print_validators(&cluster.nodes);
    println!("Chain id: {}", args.chain_id);
    if args.genesis.is_none() {
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
fn verify_state(data_dir: &std::path::Path) -> Result<(), String> {
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

async fn run_node(config: NodeConfig, banner: Option<fn()>) -> Result<(), String> {
    // Handlers first: a SIGTERM that arrives while the node starts must stop it cleanly, not
    // kill it by the default action.
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let node = node::Node::start(config).await.map_err(|e| e.to_string())?;
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
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
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
