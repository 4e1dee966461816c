//! `rtchain`: the real-time EVM L2 validator appliance. This binary is a thin CLI: it parses
//! arguments and hands them to the crates that do the work.
//!
//! Subcommands: `devnet` (a local chain with the embedded dev genesis, or a cluster), `node` (a
//! persistent node from a TOML config), `keys`, `statetest` (ethereum/tests through our
//! executor), `bench`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

mod cli_l1;

use clap::{Parser, Subcommand};
use rtchain_bench as bench;
use rtchain_node::{NodeConfig, devnet, keys};
use rtchain_statetest as statetest;

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
    Node(NodeArgs),
    /// Settlement to L1: deploy the contracts, deposit, withdraw, status (docs/l1.md).
    #[command(subcommand)]
    L1(cli_l1::L1Command),
    /// Run ethereum/tests GeneralStateTests through our executor (docs/conformance.md).
    Statetest(StatetestArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Keys: ed25519 validator keys for BFT replication, secp256k1 keys for settlement.
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

#[derive(clap::Args)]
struct NodeArgs {
    /// The node's TOML config (every field in docs/operator.md); without it, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Rebuild the chain from this L1 alone: read the batches, re-execute, check every output
    /// root; no peers, no transactions taken (docs/l1.md).
    #[arg(long, value_name = "URL")]
    derive_from_l1: Option<String>,
    /// With --derive-from-l1: the contracts' record (`rtchain l1 deploy --out`), copied into
    /// the data directory.
    #[arg(long, value_name = "FILE")]
    deployment: Option<PathBuf>,
    /// Overrides the config's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides the config's JSON-RPC address.
    #[arg(long)]
    rpc_addr: Option<SocketAddr>,
    #[command(flatten)]
    history: HistoryArgs,
}

/// How much state history a node keeps for reads at older blocks (docs/operator.md).
#[derive(clap::Args, Debug, Clone)]
struct HistoryArgs {
    /// Keep the state of the last N EVM blocks for reads below the head (0: only the newest
    /// state). Default: the config's `[storage] history_blocks` (100,000).
    #[arg(long, value_name = "N")]
    history_blocks: Option<u64>,
    /// Keep the state of every block.
    #[arg(long, conflicts_with = "history_blocks")]
    archive: bool,
}

impl HistoryArgs {
    fn apply(&self, storage: &mut rtchain_node::config::StorageSection) {
        if let Some(n) = self.history_blocks {
            storage.history_blocks = n;
        }
        if self.archive {
            storage.archive = true;
        }
    }
}

impl NodeArgs {
    fn config(&self) -> Result<NodeConfig, String> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_toml_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(addr) = self.rpc_addr {
            config.rpc.addr = addr;
        }
        self.history.apply(&mut config.storage);
        if let Some(url) = &self.derive_from_l1 {
            config.l1.url = Some(url.clone());
            config.l1.derive = true;
            // Deriving is a read-only job: no fast path to take transactions on.
            config.fastpath.enabled = false;
            if let Some(record) = &self.deployment {
                std::fs::create_dir_all(&config.data_dir)
                    .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
                let target = config.data_dir.join(&config.l1.deployment);
                std::fs::copy(record, &target)
                    .map_err(|e| format!("{} -> {}: {e}", record.display(), target.display()))?;
            }
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a new key file (mode 0600, never overwritten) and prints its public key (an
    /// ed25519 validator key), or with --secp256k1 its address (a settlement or batcher key).
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        secp256k1: bool,
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
    /// Storage cost of the state history in a stopped node's data directory, per block and
    /// per transaction.
    History(bench::HistoryBenchArgs),
    /// The executor alone: sequential against parallel on pre-signed batches in memory.
    Exec(bench::ExecBenchArgs),
    /// The UDP fast path: open-loop submit-to-receipt latency and sustained rate per backend.
    Udp(bench::UdpBenchArgs),
    /// The pktgen-compatible reflector's round trip, against dpdk-testpmd 5tswap on one rig.
    Reflect(bench::ReflectBenchArgs),
    /// A validator cluster on this machine: proposal-to-finalized and submit-to-finalized
    /// latency.
    Consensus(bench::ConsensusBenchArgs),
    /// Settlement to an anvil L1: bytes per transaction, compression, blob fill, L1 gas,
    /// time to inclusion and to safe.
    L1(bench::L1BenchArgs),
}

#[derive(clap::Args)]
struct DevnetArgs {
    /// Keep chain data here across runs (default: a fresh directory deleted on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON-RPC address (HTTP and WebSocket).
    #[arg(long, default_value = "127.0.0.1:8545")]
    rpc_addr: SocketAddr,
    /// Chain id of the built-in dev genesis (default 31337); with --genesis, the file names it
    /// and this must agree or be left out.
    #[arg(long)]
    chain_id: Option<u64>,
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
    /// Settle to this L1 (already running) instead of an anvil the devnet starts; the
    /// contracts are deployed there on first start and recorded in the data directory.
    #[arg(long, value_name = "URL", conflicts_with = "no_l1")]
    l1: Option<String>,
    /// Run without an L1 (no deposits, withdrawals, batches or output roots).
    #[arg(long)]
    no_l1: bool,
    /// Port of the anvil L1 the devnet starts (0: a free one).
    #[arg(long, default_value_t = 8546)]
    l1_port: u16,
    /// L2 blocks between output roots.
    #[arg(long, default_value_t = 10)]
    output_interval: u64,
    /// Seconds an output root waits on L1 before withdrawals against it can be finalized.
    #[arg(long, default_value_t = 12)]
    withdrawal_delay_secs: u64,
    #[command(flatten)]
    history: HistoryArgs,
    /// Web origins whose pages may use the RPC (CORS, WebSocket origin check): `local` (pages
    /// on this machine), `*`, or exact origins such as https://app.example.org.
    #[arg(long, value_delimiter = ',', default_value = "local")]
    rpc_allowed_origins: Vec<String>,
    /// Accept legacy transactions without a chain id (pre-EIP-155), as geth's
    /// --rpc.allow-unprotected-txs: the keyless way singletons such as the CREATE2 deployer
    /// are deployed. They can be replayed on any chain.
    #[arg(long)]
    rpc_allow_unprotected_txs: bool,
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
        Command::Node(args) => args.config().ok().and_then(|c| c.cores.housekeeping),
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
            Command::Devnet(args) => devnet::run(args.into()).await,
            Command::Node(args) => devnet::run_node(args.config()?, None).await,
            Command::L1(command) => cli_l1::run(command).await,
            Command::Bench(BenchCommand::Rpc(args)) => bench::run_rpc_bench(args)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::Bench(BenchCommand::Consensus(args)) => bench::run_consensus_bench(args)
                .await
                .map_err(|e| e.to_string()),
            Command::Bench(BenchCommand::L1(args)) => {
                bench::run_l1_bench(args).await.map_err(|e| e.to_string())
            }
            Command::Bench(BenchCommand::History(args)) => bench::run_history_bench(args)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::Bench(BenchCommand::Exec(args)) => bench::run_exec_bench(args)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::VerifyState { data_dir } => devnet::verify_state(&data_dir),
            Command::Keys(KeysCommand::Generate {
                out,
                secp256k1: false,
            }) => keys::generate(&out)
                .map(|key| println!("{}", keys::public_hex(&key)))
                .map_err(|e| e.to_string()),
            Command::Keys(KeysCommand::Generate {
                out,
                secp256k1: true,
            }) => keys::generate_secp256k1(&out)
                .map(|key| println!("{}", key.address()))
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

impl From<DevnetArgs> for devnet::DevnetOptions {
    fn from(a: DevnetArgs) -> Self {
        Self {
            data_dir: a.data_dir,
            rpc_addr: a.rpc_addr,
            chain_id: a.chain_id,
            block_interval_ms: a.block_interval_ms,
            genesis: a.genesis,
            unsafe_no_sync: a.unsafe_no_sync,
            fastpath_addr: a.fastpath_addr,
            no_fastpath: a.no_fastpath,
            validators: a.validators,
            followers: a.followers,
            netns: a.netns,
            allowed_origins: a.rpc_allowed_origins,
            allow_unprotected_txs: a.rpc_allow_unprotected_txs,
            history: {
                let mut storage = rtchain_node::config::StorageSection::default();
                a.history.apply(&mut storage);
                storage.history_mode()
            },
            l1: devnet::DevnetL1Options {
                choice: match (a.l1, a.no_l1) {
                    (_, true) => devnet::L1Choice::None,
                    (Some(url), false) => devnet::L1Choice::Url(url),
                    (None, false) => devnet::L1Choice::Anvil,
                },
                anvil_port: a.l1_port,
                output_interval: a.output_interval,
                finalization_secs: a.withdrawal_delay_secs,
            },
        }
    }
}
