//! `rtchain bench exec`: the executor alone, sequential against parallel, on pre-signed batches
//! held in memory.
//!
//! Everything that is not execution happens before the clock starts: keys are derived,
//! transactions signed and encoded, and (for the execution figures) decoded and recovered. The
//! pre-state is an in-memory [`MemoryState`] (no disk), and every batch of a run executes on
//! that same pre-state: senders never straddle batches, so each batch is valid on its own and
//! the measurement includes no state application between batches.
//!
//! Figures, each the median of `--repeat` measurements:
//! - `sequential_tps`: [`execute_batch`] over all batches (execution, commit into the overlay,
//!   receipts and the diff);
//! - `parallel_tps`: the same batches through a [`ParallelExecutor`] with `--threads`;
//! - `with_recovery_tps`: decoding and sender recovery of each batch on `threads` threads, then
//!   its parallel execution;
//! - `ecrecover_bound_tps`: `threads` divided by the single-thread time of one
//!   [`decode_and_recover`], measured in the same run: the most a box of that many cores could
//!   do if it did nothing but recover senders.
//!
//! The parallel results are compared with the sequential ones (`equal`), so a fast wrong
//! executor cannot produce a good-looking line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use rayon::iter::{IntoParallelIterator, IntoParallelRefIterator, ParallelIterator};
use rtchain_exec::{
    BatchStats, BlockContext, ExecConfig, MemoryState, ParallelConfig, ParallelExecutor,
    RecoveredTx, TxOutcome, decode_and_recover,
    executor::{BatchResult, execute_batch},
    parallel::THREADS_MAX,
};
use serde::Serialize;

use super::chain::{Call, FeeParams, sender_key, sign_raw};
use super::erc20::Token;
use super::error::BenchError;
use super::report::{Machine, current_commit, emit_line, utc_timestamp};
use super::rpc::TOKEN_ARTIFACT_DEFAULT;

const AMM_ARTIFACT_DEFAULT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts/out/Amm.json");

/// Pre-signed transactions of one run. Each holds its raw bytes and its recovered form, a few
/// hundred bytes: the bound keeps a run under ~1 GiB.
const TXS_MAX: usize = 1_000_000;
const REPEAT_MAX: usize = 100;

const CHAIN_ID: u64 = 31337;
const GWEI: u128 = 1_000_000_000;
const BASE_FEE_WEI: u64 = 1_000_000_000;
/// Where the benchmark places its contracts in the pre-state.
const TOKEN_ADDRESS: Address = Address::repeat_byte(0x70);
const AMM_ADDRESS: Address = Address::repeat_byte(0x71);
const BENEFICIARY: Address = Address::repeat_byte(0x7b);
/// Far more than a run spends, so no sender runs dry.
const SENDER_WEI: u128 = 1_000_000_000_000_000_000_000_000;
const SENDER_TOKENS: u128 = 1_000_000_000_000_000_000_000_000_000;
/// AMM reserves: deep enough that a run's swaps barely move the price.
const AMM_RESERVE: u128 = 1_000_000_000_000_000_000_000_000_000_000;
const SWAP_IN: u64 = 1_000_000_000_000_000;

/// Solidity storage slots (contracts/Token.sol, contracts/Amm.sol).
const TOKEN_TOTAL_SUPPLY_SLOT: u64 = 2;
const TOKEN_BALANCE_OF_SLOT: u64 = 3;
const AMM_RESERVE0_SLOT: u64 = 0;
const AMM_RESERVE1_SLOT: u64 = 1;
const AMM_BALANCE0_SLOT: u64 = 2;
const AMM_BALANCE1_SLOT: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecWorkload {
    /// 1 wei transfers, each to a distinct new account.
    Transfer,
    /// ERC-20 `transfer` of one unit, each to a distinct recipient (independent transactions
    /// touching one contract).
    Erc20,
    /// Swaps on one constant-product pair (contracts/Amm.sol): every swap writes both reserves.
    Amm,
    /// Interleaved: 50% transfers, 35% ERC-20 transfers, 15% swaps on the hot pair.
    Mixed,
}

impl ExecWorkload {
    fn name(self) -> &'static str {
        match self {
            ExecWorkload::Transfer => "transfer",
            ExecWorkload::Erc20 => "erc20",
            ExecWorkload::Amm => "amm",
            ExecWorkload::Mixed => "mixed",
        }
    }
}

/// Sequential against parallel execution of pre-signed batches in memory; one JSON line per
/// thread count.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecBenchArgs {
    /// What the transactions do.
    #[arg(long, value_enum, default_value_t = ExecWorkload::Transfer)]
    pub workload: ExecWorkload,

    /// Transactions per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub txs: usize,

    /// Executor threads, the committing thread included; comma-separate for a scaling curve
    /// (one line each), e.g. `1,2`.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub threads: Vec<usize>,

    /// Transactions per batch (a mini-block).
    #[arg(long, default_value_t = 2_000)]
    pub batch_txs: usize,

    /// Transactions each sender sends in one batch (a nonce chain); 1: every transaction has
    /// its own sender. Must divide --batch-txs.
    #[arg(long, default_value_t = 1)]
    pub txs_per_sender: usize,

    /// Measurements of each figure; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,

    /// Also append each result line to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Free text copied into each result line.
    #[arg(long, default_value = "")]
    pub label: String,

    /// Compiled ERC-20 (JSON with `abi` and `deployedBytecode`).
    #[arg(long, value_name = "PATH", default_value = TOKEN_ARTIFACT_DEFAULT)]
    pub token_artifact: PathBuf,

    /// Compiled AMM pair (contracts/out/Amm.json).
    #[arg(long, value_name = "PATH", default_value = AMM_ARTIFACT_DEFAULT)]
    pub amm_artifact: PathBuf,
}

impl ExecBenchArgs {
    fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::InvalidArgs(m));
        if !(1..=TXS_MAX).contains(&self.txs) {
            return fail(format!("--txs must be between 1 and {TXS_MAX}"));
        }
        if self.threads.is_empty() || self.threads.iter().any(|t| !(1..=THREADS_MAX).contains(t)) {
            return fail(format!("--threads must be between 1 and {THREADS_MAX}"));
        }
        if self.batch_txs == 0 || self.txs_per_sender == 0 {
            return fail("--batch-txs and --txs-per-sender must be at least 1".to_owned());
        }
        if !self.batch_txs.is_multiple_of(self.txs_per_sender) {
            return fail(format!(
                "--txs-per-sender {} must divide --batch-txs {}: a sender's chain may not \
                 straddle batches",
                self.txs_per_sender, self.batch_txs
            ));
        }
        if !(1..=REPEAT_MAX).contains(&self.repeat) {
            return fail(format!("--repeat must be between 1 and {REPEAT_MAX}"));
        }
        Ok(())
    }
}

/// One line of `bench exec` output.
#[derive(Debug, Clone, Serialize)]
pub struct ExecBenchResult {
    pub bench: &'static str,
    pub workload: &'static str,
    pub threads: usize,
    pub txs: usize,
    pub batch_txs: usize,
    pub txs_per_sender: usize,
    /// Gas of all transactions of one measurement.
    pub gas: u64,
    /// Transactions not included, or included with a failed status: 0 unless the workload is
    /// broken.
    pub failed_txs: usize,
    /// The parallel results equalled the sequential ones, batch for batch.
    pub equal: bool,
    pub sequential_tps: f64,
    pub parallel_tps: f64,
    pub speedup: f64,
    /// Gas per second of the parallel execution, in millions.
    pub mgas_per_s: f64,
    /// Speculations found stale at commit (each one re-executed), per measurement.
    pub conflicts: u64,
    pub reexecutions: u64,
    /// Speculations committed as they were.
    pub validated: u64,
    /// Transactions the commit loop executed itself because no thread had started them.
    pub direct: u64,
    /// Batches run sequentially (too small, one thread, or a conflict history).
    pub sequential_batches: u64,
    /// Batches whose conflicts stopped speculation part-way.
    pub stopped_batches: u64,
    /// Decoding, sender recovery on `threads` threads, then parallel execution.
    pub with_recovery_tps: f64,
    /// Single-thread time of one `decode_and_recover`, microseconds.
    pub ecrecover_us: f64,
    pub ecrecover_bound_tps: f64,
    /// `with_recovery_tps / ecrecover_bound_tps`.
    pub recovery_bound_fraction: f64,
    /// Cargo profile the binary was built with (`dev` builds are optimised, see Cargo.toml).
    pub profile: &'static str,
    /// 1-minute load average when the measurement started: on a shared machine, other work
    /// competes for the cores the parallel figures need.
    pub load_avg_1m: Option<f64>,
    pub label: String,
    pub machine: Machine,
    pub commit: String,
    pub timestamp: String,
}

/// Runs the benchmark for each thread count, printing each result line as soon as it is known.
pub fn run_exec_bench(args: ExecBenchArgs) -> Result<Vec<ExecBenchResult>, BenchError> {
    args.validate()?;
    let token = Token::load(&args.token_artifact)?;
    let amm_code = Token::load(&args.amm_artifact)?.deployed_bytecode().clone();
    if token.deployed_bytecode().is_empty() || amm_code.is_empty() {
        return Err(BenchError::InvalidArgs(
            "the token and AMM artifacts need a `deployedBytecode`; run `node \
             scripts/compile-contracts.mjs`"
                .to_owned(),
        ));
    }
    let config = ExecConfig::dev(CHAIN_ID);
    let block = BlockContext {
        number: 1,
        timestamp: 1_700_000_000,
        beneficiary: BENEFICIARY,
        base_fee: BASE_FEE_WEI,
        gas_limit: config.block_gas_limit,
        prevrandao: B256::ZERO,
    };
    eprintln!(
        "bench exec: signing {} {} transactions...",
        args.txs,
        args.workload.name()
    );
    let load = Load::build(&args, &token, &amm_code)?;
    let machine = Machine::current();
    let commit = current_commit();
    let mut results = Vec::with_capacity(args.threads.len());
    for &threads in &args.threads {
        let result = measure(&args, &config, &block, &load, threads)?;
        let line = ExecBenchResult {
            machine: machine.clone(),
            commit: commit.clone(),
            ..result
        };
        emit_line(&line, args.out.as_deref())?;
        results.push(line);
    }
    Ok(results)
}

/// The pre-state and the pre-signed batches.
struct Load {
    state: MemoryState,
    /// Per batch, the EIP-2718 bytes of its transactions in block order.
    raw: Vec<Vec<Vec<u8>>>,
    /// The same, decoded and recovered.
    recovered: Vec<Vec<RecoveredTx>>,
}

impl Load {
    fn build(args: &ExecBenchArgs, token: &Token, amm_code: &Bytes) -> Result<Self, BenchError> {
        let senders_count = args.txs.div_ceil(args.txs_per_sender);
        let keys = (0..senders_count)
            .into_par_iter()
            .map(|i| sender_key(i as u32))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = MemoryState::new();
        state.set_account(
            TOKEN_ADDRESS,
            U256::ZERO,
            1,
            token.deployed_bytecode().clone(),
        );
        state.set_account(AMM_ADDRESS, U256::ZERO, 1, amm_code.clone());
        let reserve = U256::from(AMM_RESERVE);
        state.set_storage(AMM_ADDRESS, U256::from(AMM_RESERVE0_SLOT), reserve);
        state.set_storage(AMM_ADDRESS, U256::from(AMM_RESERVE1_SLOT), reserve);
        let tokens = U256::from(SENDER_TOKENS);
        state.set_storage(
            TOKEN_ADDRESS,
            U256::from(TOKEN_TOTAL_SUPPLY_SLOT),
            tokens * U256::from(senders_count),
        );
        for key in &keys {
            let sender = key.address();
            state.set_account(sender, U256::from(SENDER_WEI), 0, Bytes::new());
            state.set_storage(
                TOKEN_ADDRESS,
                mapping_slot(sender, TOKEN_BALANCE_OF_SLOT),
                tokens,
            );
            state.set_storage(AMM_ADDRESS, mapping_slot(sender, AMM_BALANCE0_SLOT), tokens);
            state.set_storage(AMM_ADDRESS, mapping_slot(sender, AMM_BALANCE1_SLOT), tokens);
        }
        let fees = FeeParams {
            chain_id: CHAIN_ID,
            max_fee_per_gas: 2 * GWEI,
            max_priority_fee_per_gas: GWEI,
        };
        // Transaction j of the run: its sender and nonce. Within a batch, senders take turns
        // (nonce 0 of every sender, then nonce 1, ...), as interleaved arrivals would.
        let per_batch_senders = args.batch_txs / args.txs_per_sender;
        let place = |j: usize| {
            let batch = j / args.batch_txs;
            let k = j % args.batch_txs;
            let sender = batch * per_batch_senders + k % per_batch_senders;
            let nonce = (k / per_batch_senders) as u64;
            (sender, nonce)
        };
        let signed = (0..args.txs)
            .into_par_iter()
            .map(|j| {
                let (sender, nonce) = place(j);
                let call = workload_call(args.workload, j, token)?;
                sign_raw(&keys[sender], fees, nonce, &call).map(|(_, raw)| raw)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = ExecConfig::dev(CHAIN_ID);
        let raw: Vec<Vec<Vec<u8>>> = signed
            .chunks(args.batch_txs)
            .map(|batch| batch.to_vec())
            .collect();
        let recovered = raw
            .iter()
            .map(|batch| recover_all(batch, &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            state,
            raw,
            recovered,
        })
    }
}

fn recover_all(raw: &[Vec<u8>], config: &ExecConfig) -> Result<Vec<RecoveredTx>, BenchError> {
    raw.par_iter()
        .map(|bytes| {
            decode_and_recover(bytes, config).map_err(|e| BenchError::Setup {
                target: "bench exec".to_owned(),
                reason: format!("a pre-signed transaction does not decode: {e}"),
            })
        })
        .collect()
}

/// Solidity's slot of `mapping(address => _)[key]` declared at `slot`.
fn mapping_slot(key: Address, slot: u64) -> U256 {
    let mut buf = [0u8; 64];
    buf[12..32].copy_from_slice(key.as_slice());
    buf[56..].copy_from_slice(&slot.to_be_bytes());
    U256::from_be_bytes(keccak256(buf).0)
}

/// A distinct account that does not exist before the run.
fn recipient(j: usize) -> Address {
    let mut seed = b"rtchain-bench-recipient/".to_vec();
    seed.extend_from_slice(&(j as u64).to_be_bytes());
    Address::from_slice(&keccak256(&seed)[12..])
}

fn workload_call(workload: ExecWorkload, j: usize, token: &Token) -> Result<Call, BenchError> {
    let kind = match workload {
        ExecWorkload::Mixed => match j % 20 {
            0..=9 => ExecWorkload::Transfer,
            10..=16 => ExecWorkload::Erc20,
            _ => ExecWorkload::Amm,
        },
        other => other,
    };
    Ok(match kind {
        ExecWorkload::Transfer | ExecWorkload::Mixed => Call {
            to: TxKind::Call(recipient(j)),
            value: U256::from(1),
            input: Bytes::new(),
            gas_limit: 21_000,
        },
        ExecWorkload::Erc20 => Call {
            to: TxKind::Call(TOKEN_ADDRESS),
            value: U256::ZERO,
            input: token.transfer_calldata(recipient(j), U256::from(1))?,
            gas_limit: 80_000,
        },
        ExecWorkload::Amm => {
            let mut input = keccak256("swap(bool,uint256,uint256)")[..4].to_vec();
            input.extend_from_slice(&U256::from(j % 2).to_be_bytes::<32>());
            input.extend_from_slice(&U256::from(SWAP_IN).to_be_bytes::<32>());
            input.extend_from_slice(&U256::ZERO.to_be_bytes::<32>());
            Call {
                to: TxKind::Call(AMM_ADDRESS),
                value: U256::ZERO,
                input: input.into(),
                gas_limit: 120_000,
            }
        }
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn tps(txs: usize, time: Duration) -> f64 {
    txs as f64 / time.as_secs_f64().max(1e-9)
}

fn measure(
    args: &ExecBenchArgs,
    config: &ExecConfig,
    block: &BlockContext,
    load: &Load,
    threads: usize,
) -> Result<ExecBenchResult, BenchError> {
    let exec_error = |e: rtchain_exec::StateError| BenchError::Task("execute", e.to_string());
    let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let executor = ParallelExecutor::new(ParallelConfig::with_threads(threads)).map_err(|e| {
        BenchError::Setup {
            target: "bench exec".to_owned(),
            reason: e.to_string(),
        }
    })?;
    let recovery_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| BenchError::Setup {
            target: "bench exec".to_owned(),
            reason: format!("cannot start {threads} recovery threads: {e}"),
        })?;

    // Warm-up, untimed: page in the pre-state, the allocator's arenas and the workers.
    for txs in load.recovered.clone() {
        executor
            .execute_batch(config, block, &load.state, txs, 0, 0)
            .map_err(exec_error)?;
    }

    // Sequential, and the reference results.
    let mut reference: Vec<BatchResult> = Vec::new();
    let mut sequential = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let batches = load.recovered.clone();
        let start = Instant::now();
        let mut results = Vec::with_capacity(batches.len());
        for txs in batches {
            results.push(execute_batch(config, block, &load.state, txs, 0, 0).map_err(exec_error)?);
        }
        sequential.push(start.elapsed());
        reference = results;
    }
    let gas: u64 = reference.iter().map(|r| r.gas_used).sum();
    let failed_txs = reference
        .iter()
        .flat_map(|r| &r.outcomes)
        .filter(|o| !matches!(o, TxOutcome::Included { receipt, .. } if receipt.receipt.status()))
        .count();

    // Parallel.
    let mut parallel = Vec::with_capacity(args.repeat);
    let mut equal = true;
    let mut stats_run = Vec::new();
    for _ in 0..args.repeat {
        let batches = load.recovered.clone();
        let start = Instant::now();
        let mut results = Vec::with_capacity(batches.len());
        for txs in batches {
            results.push(
                executor
                    .execute_batch_with_stats(config, block, &load.state, txs, 0, 0)
                    .map_err(exec_error)?,
            );
        }
        parallel.push(start.elapsed());
        equal &= results.len() == reference.len()
            && results
                .iter()
                .zip(&reference)
                .all(|((got, _), want)| got == want);
        stats_run = results.into_iter().map(|(_, stats)| stats).collect();
    }
    let total = |f: fn(&BatchStats) -> u64| stats_run.iter().map(f).sum::<u64>();

    // Recovery alone, one thread: the cost the bound is made of.
    let sample: Vec<&Vec<u8>> = load.raw.iter().flatten().take(5_000).collect();
    let mut per_tx = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let start = Instant::now();
        for raw in &sample {
            decode_and_recover(raw, config).map_err(|e| BenchError::Setup {
                target: "bench exec".to_owned(),
                reason: format!("recovery failed: {e}"),
            })?;
        }
        per_tx.push(start.elapsed() / sample.len() as u32);
    }
    let ecrecover = median(per_tx);

    // Recovery on `threads` threads, then parallel execution, batch after batch.
    let mut with_recovery = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let start = Instant::now();
        for raw in &load.raw {
            let txs = recovery_pool.install(|| recover_all(raw, config))?;
            executor
                .execute_batch(config, block, &load.state, txs, 0, 0)
                .map_err(exec_error)?;
        }
        with_recovery.push(start.elapsed());
    }

    let sequential = median(sequential);
    let parallel = median(parallel);
    let with_recovery_tps = tps(args.txs, median(with_recovery));
    let ecrecover_bound_tps = threads as f64 / ecrecover.as_secs_f64().max(1e-12);
    let reexecutions = total(|s| s.reexecuted);
    Ok(ExecBenchResult {
        bench: "exec",
        workload: args.workload.name(),
        threads,
        txs: args.txs,
        batch_txs: args.batch_txs,
        txs_per_sender: args.txs_per_sender,
        gas,
        failed_txs,
        equal,
        sequential_tps: tps(args.txs, sequential),
        parallel_tps: tps(args.txs, parallel),
        speedup: sequential.as_secs_f64() / parallel.as_secs_f64().max(1e-12),
        mgas_per_s: gas as f64 / parallel.as_secs_f64().max(1e-12) / 1e6,
        conflicts: reexecutions,
        reexecutions,
        validated: total(|s| s.validated),
        direct: total(|s| s.direct),
        sequential_batches: total(|s| u64::from(s.sequential.is_some())),
        stopped_batches: total(|s| u64::from(s.speculation_stopped)),
        with_recovery_tps,
        ecrecover_us: ecrecover.as_secs_f64() * 1e6,
        ecrecover_bound_tps,
        recovery_bound_fraction: with_recovery_tps / ecrecover_bound_tps,
        load_avg_1m,
        profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        label: args.label.clone(),
        machine: Machine {
            hostname: String::new(),
            nproc: 0,
        },
        commit: String::new(),
        timestamp: utc_timestamp(),
    })
}
