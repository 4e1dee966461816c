//! `rtchain bench consensus`: a cluster of validator processes on this machine under a
//! transaction load. Reports proposal-to-finalized latency as each validator measured it (from
//! building or first receiving a proposal to committing it as finalized) and
//! submit-to-finalized-receipt latency (`eth_sendRawTransactionSync` answers only once the
//! transaction is finalized), with the sync mode stated.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use serde::Serialize;

use super::{
    error::BenchError,
    report::{Machine, current_commit, emit_line, utc_timestamp},
};
use rtchain_node::{cluster, config::ConsensusSync};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    /// Votes, voted blocks and mini-blocks are synced before they leave a node (the default).
    Always,
    /// Nothing is synced: benchmarks only, unsafe under crashes.
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConsensusBenchArgs {
    /// Length of the measured load, seconds.
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    pub sync: SyncArg,
    /// Validator processes (n = 3f+1 >= 4).
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Transactions per second submitted (open loop, to validator 1 by `eth_sendRawTransactionSync`).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Also append the result line to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Free text copied into the result line.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Serialize)]
struct PerValidator {
    validator: usize,
    finalize_p50_us: u64,
    finalize_p99_us: u64,
    blocks: u64,
}

#[derive(Serialize)]
struct ConsensusResult {
    bench: &'static str,
    label: String,
    validators: usize,
    sync_mode: &'static str,
    /// The worst validator's median and 99th percentile of proposal-to-finalized.
    finalize_p50_us: u64,
    finalize_p99_us: u64,
    per_validator: Vec<PerValidator>,
    rate: u32,
    duration_s: u64,
    sent: u64,
    received: u64,
    errors: u64,
    achieved_tps: f64,
    e2e_p50_us: Option<u64>,
    e2e_p99_us: Option<u64>,
    /// After `kill -9` of validator 0: the longest time (polled every 1 ms) validator 1's
    /// finalized height did not move, and the view timeout it is to be compared with.
    crash_stall_max_us: u64,
    timeout_leader_ms: u64,
    machine: Machine,
    commit: String,
    timestamp: String,
}

#[derive(Parser)]
struct RpcArgsOnly {
    #[command(flatten)]
    args: super::RpcBenchArgs,
}

pub async fn run_consensus_bench(args: ConsensusBenchArgs) -> Result<(), BenchError> {
    let sync = match args.sync {
        SyncArg::Always => ConsensusSync::Always,
        SyncArg::Off => ConsensusSync::Off,
    };
    if sync == ConsensusSync::Off {
        eprintln!("WARNING: --sync off: nothing is synced; these numbers are not crash-safe");
    }
    let (dir, _temp) = cluster::cluster_dir(None).map_err(BenchError::Local)?;
    let spec = cluster::ClusterSpec {
        dir,
        validators: args.validators,
        followers: 0,
        chain_id: None,
        genesis: None,
        block_interval_ms: 100,
        sync,
        rpc_base_port: 0,
        netns: false,
        fastpath_base_port: None,
        l1: None,
        history: rtchain_node::config::StorageSection::default().history_mode(),
    };
    let mut cluster = tokio::task::spawn_blocking(move || cluster::launch(&spec))
        .await
        .map_err(|e| BenchError::Local(e.to_string()))?
        .map_err(BenchError::Local)?;
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|v| format!("http://{}", v.config.rpc.addr))
        .collect();
    let mut rpc = RpcArgsOnly::try_parse_from([
        "rpc".to_string(),
        "--url".into(),
        urls[1].clone(),
        "--rate".into(),
        args.rate.to_string(),
        "--duration".into(),
        args.duration_s.to_string(),
        "--senders".into(),
        "32".into(),
    ])
    .map_err(|e| BenchError::InvalidArgs(e.to_string()))?
    .args;
    rpc.quiet = true;
    let load = super::run_rpc_bench(rpc).await;
    let mut per_validator = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let stats = node_stats(url).await?;
        let lat = &stats["consensus"]["finalizeLatencyUs"];
        per_validator.push(PerValidator {
            validator: i,
            finalize_p50_us: lat["p50"].as_u64().unwrap_or_default(),
            finalize_p99_us: lat["p99"].as_u64().unwrap_or_default(),
            blocks: lat["count"].as_u64().unwrap_or_default(),
        });
    }
    // A crashed validator: every view it leads now waits out `timeout_leader` and is
    // nullified. The longest time validator 1's finalized height stands still is that stall.
    let timeout_leader_ms = cluster.nodes[0].config.consensus.timeout_leader_ms;
    if let Some(child) = &mut cluster.nodes[0].child {
        let _ = child.kill();
        let _ = child.wait();
    }
    let crash_stall_max_us = longest_stall(&urls[1], Duration::from_secs(3)).await?;
    tokio::task::spawn_blocking(move || {
        for v in &mut cluster.nodes {
            v.stop(Duration::from_secs(10));
        }
    })
    .await
    .map_err(|e| BenchError::Local(e.to_string()))?;
    let load = load?;
    let load = load
        .first()
        .ok_or_else(|| BenchError::Local("the load produced no result".into()))?;
    let result = ConsensusResult {
        bench: "consensus",
        label: args.label.clone(),
        validators: args.validators,
        sync_mode: match sync {
            ConsensusSync::Always => "always",
            ConsensusSync::Off => "off",
        },
        finalize_p50_us: per_validator
            .iter()
            .map(|v| v.finalize_p50_us)
            .max()
            .unwrap_or_default(),
        finalize_p99_us: per_validator
            .iter()
            .map(|v| v.finalize_p99_us)
            .max()
            .unwrap_or_default(),
        per_validator,
        rate: args.rate,
        duration_s: args.duration_s,
        sent: load.sent,
        received: load.received,
        errors: load.errors,
        achieved_tps: load.achieved_tps,
        e2e_p50_us: load.p50_us,
        e2e_p99_us: load.p99_us,
        crash_stall_max_us,
        timeout_leader_ms,
        machine: Machine::current(),
        commit: current_commit(),
        timestamp: utc_timestamp(),
    };
    emit_line(&result, args.out.as_deref())
}

/// Polls `url`'s finalized height for `window`; the longest time it stood still, in us.
async fn longest_stall(url: &str, window: Duration) -> Result<u64, BenchError> {
    let start = std::time::Instant::now();
    let mut last_height = None;
    let mut since = start;
    let mut longest = Duration::ZERO;
    while start.elapsed() < window {
        let height = node_stats(url).await?["consensus"]["finalizedHeight"].as_u64();
        let now = std::time::Instant::now();
        if height != last_height {
            last_height = height;
            since = now;
        }
        longest = longest.max(now - since);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(longest.as_micros() as u64)
}

async fn node_stats(url: &str) -> Result<serde_json::Value, BenchError> {
    use jsonrpsee::core::client::ClientT;
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(url)
        .map_err(|e| BenchError::Local(format!("{url}: {e}")))?;
    client
        .request("rtchain_nodeStats", jsonrpsee::rpc_params![])
        .await
        .map_err(|e| BenchError::Local(format!("{url}: rtchain_nodeStats: {e}")))
}
