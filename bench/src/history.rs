//! `rtchain bench history`: what the state history of a node's data directory costs on disk,
//! per block and per transaction.
//!
//! Run a workload against a node first (`rtchain devnet --data-dir D` and `rtchain bench rpc
//! --workload transfer|erc20`), stop it, then point this at `D`: it flushes and compacts the
//! history families (so the figure is what the records settle to, pruned ones gone) and
//! divides by the blocks and transactions they cover. Empty blocks count as blocks: on an idle
//! chain they cost only their change set's key.

use std::path::PathBuf;

use rtchain_state::Store;
use serde::Serialize;

use super::error::BenchError;
use super::report::{Machine, current_commit, emit_line, utc_timestamp};

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryBenchArgs {
    /// A stopped node's data directory (the one given to `--data-dir`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Also append the result line to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Free text copied into the result line (e.g. the workload that filled the directory).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryBenchResult {
    pub bench: &'static str,
    pub oldest: Option<u64>,
    pub head: u64,
    pub blocks: u64,
    /// Blocks that carried at least one transaction.
    pub nonempty_blocks: u64,
    pub txs: u64,
    /// Accounts and slots changed, summed over blocks.
    pub records: u64,
    pub history_bytes: u64,
    pub change_set_bytes: u64,
    pub bytes_per_block: f64,
    pub bytes_per_nonempty_block: f64,
    pub bytes_per_tx: f64,
    pub bytes_per_record: f64,
    pub label: String,
    pub machine: Machine,
    pub commit: String,
    pub timestamp: String,
}

pub fn run_history_bench(args: HistoryBenchArgs) -> Result<HistoryBenchResult, BenchError> {
    let db = args.data_dir.join("db");
    if !db.is_dir() {
        return Err(BenchError::InvalidArgs(format!(
            "{} holds no node database (expected {})",
            args.data_dir.display(),
            db.display()
        )));
    }
    let store = Store::open(&db).map_err(|e| {
        BenchError::Local(format!("{e} (is a node still running on this directory?)"))
    })?;
    let footprint = store
        .history_footprint()
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let Some(oldest) = footprint.oldest else {
        return Err(BenchError::InvalidArgs(format!(
            "{} keeps no history (the node ran with --history-blocks 0)",
            args.data_dir.display()
        )));
    };
    let (mut txs, mut nonempty_blocks) = (0u64, 0u64);
    for number in oldest + 1..=footprint.head {
        let n = store
            .transactions(number)
            .map_err(|e| BenchError::Local(e.to_string()))?
            .map_or(0, |t| t.len() as u64);
        txs += n;
        nonempty_blocks += u64::from(n > 0);
    }
    let bytes = (footprint.history_bytes + footprint.change_set_bytes) as f64;
    let per = |n: u64| if n == 0 { 0.0 } else { bytes / n as f64 };
    let result = HistoryBenchResult {
        bench: "history",
        oldest: footprint.oldest,
        head: footprint.head,
        blocks: footprint.blocks,
        nonempty_blocks,
        txs,
        records: footprint.records,
        history_bytes: footprint.history_bytes,
        change_set_bytes: footprint.change_set_bytes,
        bytes_per_block: per(footprint.blocks),
        bytes_per_nonempty_block: per(nonempty_blocks),
        bytes_per_tx: per(txs),
        bytes_per_record: per(footprint.records),
        label: args.label,
        machine: Machine::current(),
        commit: current_commit(),
        timestamp: utc_timestamp(),
    };
    emit_line(&result, args.out.as_deref())?;
    Ok(result)
}
