//! `rtchain bench l1`: what settlement costs. A node in this process settles to an anvil L1 the
//! benchmark starts; the `bench rpc` load runs against it; once every block is posted and safe
//! on L1 the result reports, over the batches that carry the load:
//! - L1 bytes per L2 transaction: channel bytes (what the batches carry) and blob bytes (what
//!   L1 charges: whole blobs), beside brotli of the raw signed transactions alone (the
//!   baseline the batch format must not exceed);
//! - each compression (zlib, brotli, zstd) on the same batches: bytes and time;
//! - blob fill ratio, L1 gas per batch and per output root;
//! - time from an L2 block's seal to its batch's inclusion on L1, and to L1's `safe`.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use rtchain_l1::{
    blob::MAX_BLOB_DATA_BYTES,
    channel::{Batch, Compression, encode_batch},
};
use rtchain_node::{
    Node, NodeConfig,
    cluster::configure_l1,
    devnet::{DevnetL1Options, L1Choice, prepare_l1},
    settlement::block_as_posted,
};
use serde::Serialize;

use super::{
    error::BenchError,
    report::{Machine, current_commit, emit_line, utc_timestamp},
    rpc::Workload,
};

#[derive(Debug, Clone, clap::Args)]
pub struct L1BenchArgs {
    /// What the load's transactions do.
    #[arg(long, value_enum, default_value_t = Workload::Transfer)]
    pub workload: Workload,
    /// Transactions per second offered.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 20)]
    pub duration_s: u64,
    /// How long blocks wait to fill a batch (the batcher's max age).
    #[arg(long, default_value_t = 2_000)]
    pub max_batch_age_ms: u64,
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Serialize)]
struct CompressionResult {
    name: &'static str,
    bytes: usize,
    bytes_per_tx: f64,
    compress_ms: f64,
    decompress_ms: f64,
}

#[derive(Debug, Serialize)]
struct L1BenchResult {
    bench: &'static str,
    label: String,
    workload: String,
    rate: u32,
    duration_s: u64,
    achieved_tps: f64,
    l2_blocks: u64,
    /// Transactions of clients (deposits and L1-info transactions excluded).
    l2_txs: usize,
    batches: usize,
    blobs: usize,
    raw_bytes: usize,
    channel_bytes: usize,
    channel_bytes_per_tx: f64,
    blob_bytes_per_tx: f64,
    /// brotli (quality 11), batch by batch, of the raw transactions the same batches carry
    /// (the clients' and the deposits'), without any of the format's metadata.
    baseline_brotli_bytes_per_tx: f64,
    blob_fill_ratio: f64,
    compression: Vec<CompressionResult>,
    l1_gas_per_batch: f64,
    l1_gas_per_output_root: f64,
    outputs_posted: usize,
    /// Seal of a batch's newest and oldest block to the batch's L1 receipt, p50 / max.
    inclusion_newest_p50_ms: u64,
    inclusion_oldest_p50_ms: u64,
    inclusion_oldest_max_ms: u64,
    /// Seal of a batch's newest block to L1's safe block holding it.
    safe_p50_ms: u64,
    safe_max_ms: u64,
    machine: Machine,
    commit: String,
    timestamp: String,
}

#[derive(Parser)]
struct RpcArgsOnly {
    #[command(flatten)]
    args: super::RpcBenchArgs,
}

fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

pub async fn run_l1_bench(args: L1BenchArgs) -> Result<(), BenchError> {
    let local = |e: String| BenchError::Local(e);
    let dir = tempfile::Builder::new()
        .prefix("rtchain-bench-l1-")
        .tempdir()
        .map_err(|e| local(e.to_string()))?;
    let options = DevnetL1Options {
        choice: L1Choice::Anvil,
        anvil_port: 0,
        output_interval: 10,
        finalization_secs: 12,
    };
    let placeholder = alloy_primitives::keccak256("rtchain bench validator 0");
    let l1 = prepare_l1(&options, dir.path(), 31337, vec![placeholder])
        .await
        .map_err(local)?
        .ok_or_else(|| local("no L1".into()))?;
    let mut config = NodeConfig {
        data_dir: dir.path().join("node"),
        ..NodeConfig::default()
    };
    config.rpc.addr = "127.0.0.1:0".parse().expect("address");
    config.fastpath.enabled = false;
    configure_l1(&mut config, dir.path(), &l1.url, &l1.deployment, 0, 1).map_err(local)?;
    config.l1.batcher.max_batch_age_ms = args.max_batch_age_ms;
    let node = Node::start(config)
        .await
        .map_err(|e| local(e.to_string()))?;
    let chain = node.chain.clone();
    let settlement = chain
        .settlement
        .clone()
        .ok_or_else(|| local("the node does not settle".into()))?;
    let url = format!("http://{}", node.rpc.local_addr());
    let first_block = chain.state.read().head.number + 1;

    let workload = match args.workload {
        Workload::Transfer => "transfer",
        Workload::Erc20 => "erc20",
    };
    let mut rpc = RpcArgsOnly::try_parse_from([
        "rpc".to_string(),
        "--url".into(),
        url.clone(),
        "--rate".into(),
        args.rate.to_string(),
        "--duration".into(),
        args.duration_s.to_string(),
        "--workload".into(),
        workload.into(),
        "--senders".into(),
        "64".into(),
    ])
    .map_err(|e| BenchError::InvalidArgs(e.to_string()))?
    .args;
    rpc.quiet = true;
    let load = super::run_rpc_bench(rpc).await?;
    let achieved = load.first().map_or(0.0, |r| r.achieved_tps);
    let head = chain.state.read().head.number;

    // Until every block of the load is in a safe L1 block; meanwhile note when each batch
    // became safe.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut safe_at: Vec<(u64, u64)> = Vec::new();
    let mut seen_safe = 0;
    loop {
        let safe = settlement.view.read().l2_safe;
        if safe > seen_safe {
            safe_at.push((safe, now_us()));
            seen_safe = safe;
        }
        if safe >= head {
            break;
        }
        if Instant::now() > deadline {
            return Err(local(format!(
                "L2 block {head} not safe on L1 within 180 s (safe: {safe})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted: Vec<_> = settlement
        .batcher
        .lock()
        .posted
        .iter()
        .filter(|b| b.last_block >= first_block)
        .cloned()
        .collect();
    let outputs: Vec<_> = settlement.proposer.lock().posted.clone();

    // The same batches again, for the baseline and each compression.
    let mut baseline = 0usize;
    let mut l2_txs = 0;
    let mut raws = Vec::new();
    for b in &posted {
        let mut batch = Batch {
            chain_id: chain.exec.chain_id,
            first_mini: 0,
            blocks: Vec::new(),
        };
        let mut txs: Vec<u8> = Vec::new();
        for n in b.first_block..=b.last_block {
            let (block, first_mini) = block_as_posted(&chain.store, n)
                .map_err(local)?
                .ok_or_else(|| local(format!("block {n} is not stored")))?;
            if batch.blocks.is_empty() {
                batch.first_mini = first_mini;
            }
            for tx in block.minis.iter().flat_map(|m| &m.transactions) {
                txs.extend_from_slice(tx);
                if tx.first() != Some(&op_alloy_consensus::DEPOSIT_TX_TYPE_ID) {
                    l2_txs += 1;
                }
            }
            batch.blocks.push(block);
        }
        baseline += Compression::Brotli.compress(&txs).len();
        raws.push(encode_batch(&batch));
    }
    let per_tx = |bytes: usize| bytes as f64 / l2_txs.max(1) as f64;
    let mut compression = Vec::new();
    for c in Compression::ALL {
        let started = Instant::now();
        let packed: Vec<Vec<u8>> = raws.iter().map(|r| c.compress(r)).collect();
        let compress_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        for p in &packed {
            c.decompress(p, rtchain_l1::channel::MAX_BATCH_BYTES)
                .map_err(|e| local(e.to_string()))?;
        }
        let decompress_ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes: usize = packed.iter().map(|p| p.len() + 1).sum();
        compression.push(CompressionResult {
            name: c.name(),
            bytes,
            bytes_per_tx: per_tx(bytes),
            compress_ms,
            decompress_ms,
        });
    }
    let channel_bytes: usize = posted.iter().map(|b| b.channel_bytes).sum();
    let blobs: usize = posted.iter().map(|b| b.blobs).sum();
    let safe_ms: Vec<u64> = posted
        .iter()
        .filter_map(|b| {
            let (_, at) = safe_at.iter().find(|(safe, _)| *safe >= b.last_block)?;
            let newest = b.included_at_us.saturating_sub(b.posted_after_ms * 1_000);
            Some(at.saturating_sub(newest) / 1_000)
        })
        .collect();
    let result = L1BenchResult {
        bench: "l1",
        label: args.label.clone(),
        workload: workload.into(),
        rate: args.rate,
        duration_s: args.duration_s,
        achieved_tps: achieved,
        l2_blocks: head.saturating_sub(first_block) + 1,
        l2_txs,
        batches: posted.len(),
        blobs,
        raw_bytes: raws.iter().map(Vec::len).sum(),
        channel_bytes,
        channel_bytes_per_tx: per_tx(channel_bytes),
        blob_bytes_per_tx: per_tx(blobs * alloy_eips::eip4844::BYTES_PER_BLOB),
        baseline_brotli_bytes_per_tx: per_tx(baseline),
        blob_fill_ratio: channel_bytes as f64 / (blobs.max(1) * MAX_BLOB_DATA_BYTES) as f64,
        compression,
        l1_gas_per_batch: posted.iter().map(|b| b.l1_gas_used as f64).sum::<f64>()
            / posted.len().max(1) as f64,
        l1_gas_per_output_root: outputs.iter().map(|o| o.l1_gas_used as f64).sum::<f64>()
            / outputs.len().max(1) as f64,
        outputs_posted: outputs.len(),
        inclusion_newest_p50_ms: percentile(
            posted.iter().map(|b| b.posted_after_ms).collect(),
            0.5,
        ),
        inclusion_oldest_p50_ms: percentile(
            posted.iter().map(|b| b.oldest_after_ms).collect(),
            0.5,
        ),
        inclusion_oldest_max_ms: percentile(
            posted.iter().map(|b| b.oldest_after_ms).collect(),
            1.0,
        ),
        safe_p50_ms: percentile(safe_ms.clone(), 0.5),
        safe_max_ms: percentile(safe_ms, 1.0),
        machine: Machine::current(),
        commit: current_commit(),
        timestamp: utc_timestamp(),
    };
    emit_line(&result, args.out.as_deref())?;
    let _ = std::io::stdout().flush();
    node.stop().await;
    drop(l1);
    Ok(())
}
