//! Parallel execution of a batch whose results equal [`execute_batch`]'s, byte for byte.
//!
//! Block-STM-style optimistic concurrency with an ordered commit:
//!
//! 1. **Speculation.** Worker threads execute transactions on revm over the immutable base plus
//!    the multi-version memory of earlier transactions' published writes ([`mv`]), recording
//!    every account and storage value each execution was given, and publish what it wrote.
//!    Senders are assigned to threads by affinity, so a sender's nonce chain runs in order on
//!    one thread and each transaction sees its predecessor's nonce and balance.
//! 2. **Ordered commit.** The calling thread walks the batch in order over an [`Overlay`], the
//!    very state the sequential executor commits into. For transaction `i` it checks every
//!    recorded read against the overlay (the state after `0..i`): if all match, revm (a
//!    deterministic function of the values it reads) did exactly what it would have done
//!    sequentially, and its state changes are committed as they are. If any differs, `i` is
//!    executed again right there, on the overlay, exactly as `execute_batch` does. A
//!    transaction nobody has started when the commit reaches it is executed there directly.
//!
//! So every committed transaction is either a sequential execution or one proven to have read
//! what a sequential execution would read; equality holds by construction, whatever the
//! multi-version memory or the scheduling got wrong.
//!
//! **Fees.** Every transaction pays its priority fee to the block's beneficiary, which would
//! make every transaction conflict with the one before. Speculation runs with a handler that
//! skips that payment and notes the amount; the commit applies it to the beneficiary the way
//! revm's `reward_beneficiary` does (load, touch, checked add). A transaction that itself reads
//! the beneficiary (`BALANCE(COINBASE)`, a transfer to it) reads a value the commit's overlay
//! disagrees with, and is re-executed: exact semantics, at the cost of a re-execution.
//!
//! **Fallback.** Batches below [`ParallelConfig::min_batch_txs`] run sequentially (waking the
//! workers costs more than they save). A batch's conflict rate is measured as it commits: once a
//! sample of validated transactions shows more than [`ParallelConfig::conflict_pct_max`] percent
//! re-executed, speculation stops and the rest of the batch commits sequentially. The rate is
//! remembered across batches: while it stays high, batches run sequentially, with one probe in
//! parallel every [`PROBE_INTERVAL_BATCHES`] batches to notice when the load changes.
//!
//! Specs after Osaka run sequentially: Amsterdam changes what happens after the fee payment
//! (EIP-8246) and how gas is accounted (EIP-8037), which the lazy fee does not model.
//!
//! [`execute_batch`]: crate::executor::execute_batch

mod mv;
#[cfg(test)]
mod tests;

use std::{
    cell::Cell,
    marker::PhantomData,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
};

use alloy_primitives::{Address, U256, map::HashMap};
use revm::{
    Context, Database, DatabaseCommit, ExecuteEvm, MainBuilder, MainContext,
    context::{ContextSetters, result::ExecResultAndState},
    context_interface::{
        Block, Cfg, ContextTr, Transaction,
        result::{EVMError, ExecutionResult, HaltReason, InvalidTransaction},
    },
    handler::{EvmTr, FrameResult, Handler, MainnetContext, MainnetEvm},
    primitives::hardfork::SpecId,
    state::{Account, EvmState, TransactionId},
};

use self::mv::{Loc, MvMemory, Read, ReadValue, SpecDb, Writes};
use crate::{
    config::ExecConfig,
    executor::{BatchResult, BlockContext, BlockLedger, TxOutcome, execute_batch},
    state::{Overlay, StateError, StateReader},
    tx::to_tx_env,
    types::{RecoveredTx, TxReceipt},
};

/// While the remembered conflict rate is too high, one batch in this many still runs in
/// parallel, to measure again.
pub const PROBE_INTERVAL_BATCHES: u32 = 8;

/// Most threads a [`ParallelExecutor`] runs: far above any core count it is pinned to; a bound
/// so a typo in a config cannot ask for a million threads.
pub const THREADS_MAX: usize = 256;

/// Most transactions in one parallel batch: transaction indices are `u32` in the multi-version
/// memory. A mini-block is far smaller.
pub const BATCH_TXS_MAX: usize = 1 << 24;

/// How a [`ParallelExecutor`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelConfig {
    /// Threads executing a batch, the calling thread (which also commits) included. 0 or 1:
    /// always sequential.
    pub threads: usize,
    /// Batches with fewer transactions run sequentially.
    pub min_batch_txs: usize,
    /// Percentage of speculated transactions that had to be re-executed above which a batch
    /// stops speculating (and following batches start sequential).
    pub conflict_pct_max: u32,
    /// Validated transactions a batch commits before its conflict rate may stop speculation.
    pub conflict_sample_txs: u32,
    /// Batches whose transactions' gas limits average below this run sequentially: a plain
    /// transfer executes in about the time its validation and commit take, so speculating it
    /// on another thread saves nothing and costs the hand-over.
    pub min_avg_gas_limit: u64,
}

impl ParallelConfig {
    /// `threads` threads with the measured defaults (see docs/architecture.md).
    pub fn with_threads(threads: usize) -> Self {
        Self {
            threads,
            min_batch_txs: 32,
            conflict_pct_max: 50,
            conflict_sample_txs: 32,
            min_avg_gas_limit: 30_000,
        }
    }
}

/// Why a batch ran sequentially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SequentialReason {
    /// Configured with fewer than two threads.
    OneThread,
    /// Fewer transactions than [`ParallelConfig::min_batch_txs`].
    SmallBatch,
    /// Recent batches conflicted too much.
    ConflictHistory,
    /// A spec the lazy fee accounting does not model (after Osaka).
    Spec,
    /// Transactions too cheap to be worth speculating (see
    /// [`ParallelConfig::min_avg_gas_limit`]).
    CheapTxs,
    /// The batch carries L1 deposits, which mint outside the EVM (rare: once per L1 block at
    /// most).
    Deposits,
    /// The block's first batch, which starts with its system calls (once per EVM block).
    BlockStart,
}

/// What happened while executing one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// `Some` when the whole batch ran through [`execute_batch`].
    pub sequential: Option<SequentialReason>,
    /// Speculative executions that finished (committed or not).
    pub speculated: u64,
    /// Speculative results committed after validation.
    pub validated: u64,
    /// Speculative results whose reads were stale: executed again by the commit loop.
    pub reexecuted: u64,
    /// Executed directly by the commit loop because no thread had started them.
    pub direct: u64,
    /// The batch's conflict rate stopped speculation part-way.
    pub speculation_stopped: bool,
}

/// Totals over the life of a [`ParallelExecutor`], for metrics.
#[derive(Debug, Default)]
pub struct ExecutorCounters {
    pub batches_parallel: AtomicU64,
    pub batches_sequential: AtomicU64,
    pub validated: AtomicU64,
    pub reexecuted: AtomicU64,
    pub direct: AtomicU64,
}

/// Executes batches on a fixed pool of worker threads, created once.
pub struct ParallelExecutor {
    config: ParallelConfig,
    /// `threads - 1` workers; the calling thread is the last executor thread and the committer.
    pool: Option<rayon::ThreadPool>,
    /// Exponentially weighted conflict rate of recent parallel batches, in percent.
    conflict_pct_recent: AtomicU32,
    /// Batches run sequentially for their conflict history since the last probe.
    skipped_for_conflicts: AtomicU32,
    counters: ExecutorCounters,
    /// Tests only: make speculation stale or the commit loop wait, to exercise each path.
    stress: Stress,
}

/// Ways to make a batch take its rare paths on purpose (tests).
#[derive(Debug, Clone, Copy, Default)]
struct Stress {
    /// Speculation ignores the multi-version memory: every read of a location an earlier
    /// transaction wrote is stale and must be caught by validation.
    base_only: bool,
    /// The commit loop never executes a transaction nobody started: nearly every transaction
    /// is speculated, then validated.
    never_direct: bool,
}

/// Failure to start the worker threads.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {threads} executor threads: {reason}")]
pub struct PoolError {
    threads: usize,
    reason: String,
}

impl std::fmt::Debug for ParallelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelExecutor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ParallelExecutor {
    pub fn new(config: ParallelConfig) -> Result<Self, PoolError> {
        Self::with_thread_start(config, |_| {})
    }

    /// Like [`ParallelExecutor::new`], running `on_start(worker_index)` first on each worker
    /// thread, before it executes anything. This is the seam for pinning: the core map (in
    /// `tuning`) passes a closure that pins worker `i` to its core and binds its memory to the
    /// core's NUMA node, so the memory the worker then allocates is local.
    pub fn with_thread_start(
        config: ParallelConfig,
        on_start: impl Fn(usize) + Send + Sync + 'static,
    ) -> Result<Self, PoolError> {
        let threads = config.threads.min(THREADS_MAX);
        let pool = if threads >= 2 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads - 1)
                .thread_name(|i| format!("exec-worker-{i}"))
                .stack_size(crate::EVM_THREAD_STACK_BYTES)
                .start_handler(on_start)
                .build()
                .map_err(|e| PoolError {
                    threads,
                    reason: e.to_string(),
                })?;
            Some(pool)
        } else {
            None
        };
        Ok(Self {
            config: ParallelConfig { threads, ..config },
            pool,
            conflict_pct_recent: AtomicU32::new(0),
            skipped_for_conflicts: AtomicU32::new(0),
            counters: ExecutorCounters::default(),
            stress: Stress::default(),
        })
    }

    pub fn config(&self) -> &ParallelConfig {
        &self.config
    }

    pub fn counters(&self) -> &ExecutorCounters {
        &self.counters
    }

    /// [`execute_batch`] with the same arguments and the same result, executed in parallel.
    pub fn execute_batch<R: StateReader + Sync>(
        &self,
        config: &ExecConfig,
        block: &BlockContext,
        state: R,
        txs: Vec<RecoveredTx>,
        block_gas_used: u64,
        block_logs: u64,
    ) -> Result<BatchResult, StateError> {
        self.execute_batch_with_stats(config, block, state, txs, block_gas_used, block_logs)
            .map(|(result, _)| result)
    }

    /// [`ParallelExecutor::execute_batch`], also telling how the batch ran.
    pub fn execute_batch_with_stats<R: StateReader + Sync>(
        &self,
        config: &ExecConfig,
        block: &BlockContext,
        state: R,
        txs: Vec<RecoveredTx>,
        block_gas_used: u64,
        block_logs: u64,
    ) -> Result<(BatchResult, BatchStats), StateError> {
        let opens_block = block_gas_used == 0
            && !crate::system::block_start_calls(config, block, &state)?.is_empty();
        let sequential = match self.sequential_reason(config, &txs) {
            Some(reason) => Some(reason),
            None if opens_block => Some(SequentialReason::BlockStart),
            None if self.conflicts_dominate() => Some(SequentialReason::ConflictHistory),
            None => None,
        };
        let Some(pool) = self.pool.as_ref().filter(|_| sequential.is_none()) else {
            self.counters
                .batches_sequential
                .fetch_add(1, Ordering::Relaxed);
            let result = execute_batch(config, block, state, txs, block_gas_used, block_logs)?;
            let stats = BatchStats {
                sequential: Some(sequential.unwrap_or(SequentialReason::OneThread)),
                ..BatchStats::default()
            };
            return Ok((result, stats));
        };
        let batch = Batch::new(&txs, &state, self.config.threads);
        let run = Run {
            exec: config,
            block,
            tuning: &self.config,
            base_only: self.stress.base_only,
            never_direct: self.stress.never_direct,
        };
        let (pending, diff, stats) = run.execute(pool, &batch, block_gas_used, block_logs)?;
        drop(batch);
        self.remember(&stats);
        let mut ledger_gas = pending.gas_used;
        let outcomes = pending
            .outcomes
            .into_iter()
            .zip(txs)
            .map(|(outcome, tx)| match outcome {
                Pending::Included(receipt) => TxOutcome::Included { tx, receipt },
                Pending::Rejected(error) => TxOutcome::Rejected { tx, error },
                Pending::Deferred => TxOutcome::Deferred { tx },
            })
            .collect();
        ledger_gas -= block_gas_used;
        Ok((
            BatchResult {
                outcomes,
                diff,
                gas_used: ledger_gas,
                logs: pending.logs - block_logs,
            },
            stats,
        ))
    }

    fn sequential_reason(
        &self,
        config: &ExecConfig,
        txs: &[RecoveredTx],
    ) -> Option<SequentialReason> {
        let gas_limits: u128 = txs
            .iter()
            .map(|tx| u128::from(alloy_consensus::Transaction::gas_limit(&tx.envelope)))
            .sum();
        if self.pool.is_none() {
            Some(SequentialReason::OneThread)
        } else if config.spec.is_enabled_in(SpecId::AMSTERDAM) {
            Some(SequentialReason::Spec)
        } else if txs.iter().any(RecoveredTx::is_deposit) {
            Some(SequentialReason::Deposits)
        } else if txs.len() < self.config.min_batch_txs.max(1) || txs.len() > BATCH_TXS_MAX {
            Some(SequentialReason::SmallBatch)
        } else if gas_limits < u128::from(self.config.min_avg_gas_limit) * txs.len() as u128 {
            Some(SequentialReason::CheapTxs)
        } else {
            None
        }
    }

    /// Whether recent batches conflicted so much that this one should not speculate; every
    /// [`PROBE_INTERVAL_BATCHES`]th such batch speculates anyway, to measure again.
    fn conflicts_dominate(&self) -> bool {
        if self.conflict_pct_recent.load(Ordering::Relaxed) <= self.config.conflict_pct_max {
            return false;
        }
        let skipped = self.skipped_for_conflicts.fetch_add(1, Ordering::Relaxed) + 1;
        if skipped >= PROBE_INTERVAL_BATCHES {
            self.skipped_for_conflicts.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn remember(&self, stats: &BatchStats) {
        let c = &self.counters;
        c.batches_parallel.fetch_add(1, Ordering::Relaxed);
        c.validated.fetch_add(stats.validated, Ordering::Relaxed);
        c.reexecuted.fetch_add(stats.reexecuted, Ordering::Relaxed);
        c.direct.fetch_add(stats.direct, Ordering::Relaxed);
        let checked = stats.validated + stats.reexecuted;
        if checked < u64::from(self.config.conflict_sample_txs.max(1)) && !stats.speculation_stopped
        {
            return;
        }
        let recent = if stats.speculation_stopped {
            // A batch that gave up speculating is conclusive on its own.
            100
        } else {
            let pct = (stats.reexecuted * 100 / checked.max(1)) as u32;
            // Weight 1/2: two calm probes bring a hot history back under any threshold.
            (self.conflict_pct_recent.load(Ordering::Relaxed) + pct) / 2
        };
        self.conflict_pct_recent.store(recent, Ordering::Relaxed);
    }
}

/// A transaction's receipt or error before the transaction itself is moved into its outcome
/// (after the worker threads, which borrow the transactions, are done).
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "Included is the common case; boxing it would add an allocation per transaction"
)]
enum Pending {
    Included(TxReceipt),
    Rejected(crate::tx::TxError),
    Deferred,
}

struct PendingOutcomes {
    outcomes: Vec<Pending>,
    gas_used: u64,
    logs: u64,
}

/// Status of one transaction's speculation.
const PENDING: u8 = 0;
/// A thread is speculating it.
const RUNNING: u8 = 1;
/// Its speculative result waits in its slot.
const DONE: u8 = 2;
/// The commit loop took it (executed directly, or deferred) before anyone speculated it.
const TAKEN: u8 = 3;

/// What a speculative execution produced.
struct SpecOutput {
    result: Result<ExecutionResult, SpecFailure>,
    state: EvmState,
    reads: Vec<Read>,
    /// The priority fee the beneficiary is owed; `None` when fees are not charged.
    reward: Option<U256>,
    /// Locations it published to the multi-version memory.
    published: Vec<Loc>,
}

enum SpecFailure {
    /// Refused by a validation rule: a valid outcome if its reads hold.
    Invalid(InvalidTransaction),
    /// Could not run to an answer (a backend error, code not visible yet): executed again.
    Abort,
}

struct Slot {
    status: AtomicU8,
    output: Mutex<Option<SpecOutput>>,
}

/// The shared state of one batch: the transactions, the affinity queues, the speculation slots
/// and the multi-version memory.
struct Batch<'a, R> {
    txs: &'a [RecoveredTx],
    base: &'a R,
    mv: MvMemory,
    slots: Vec<Slot>,
    /// Per thread (0 is the committing thread), the transactions assigned to it, in order.
    queues: Vec<Vec<u32>>,
    /// Per queue, the position of the first entry its owner has not looked at yet.
    cursors: Vec<AtomicUsize>,
    /// The previous transaction of the same sender, `u32::MAX` when none.
    prev_same_sender: Vec<u32>,
    /// Transactions committed so far: everything below is final.
    committed: AtomicUsize,
    /// Transactions nobody has claimed yet.
    unclaimed: AtomicUsize,
    /// Stop speculating: the batch is done, or its conflicts dominate.
    stop: AtomicBool,
}

/// Share of the transactions the committing thread takes in its own queue, relative to a worker
/// thread's (it also validates and commits every transaction): 1/2.
const COMMITTER_SHARE_DIVISOR: usize = 2;

/// How far past a queue's cursor a thread looks for transactions to steal.
const STEAL_WINDOW: usize = 64;

impl<'a, R> Batch<'a, R> {
    fn new(txs: &'a [RecoveredTx], base: &'a R, threads: usize) -> Self {
        let n = txs.len();
        let mut queues: Vec<Vec<u32>> = (0..threads)
            .map(|_| Vec::with_capacity(n / threads + 1))
            .collect();
        let mut load = vec![0usize; threads];
        let mut owner: HashMap<Address, (usize, u32)> = HashMap::default();
        let mut prev_same_sender = vec![u32::MAX; n];
        for (i, tx) in txs.iter().enumerate() {
            let i = i as u32;
            let queue = match owner.get_mut(&tx.sender) {
                Some((queue, last)) => {
                    prev_same_sender[i as usize] = *last;
                    *last = i;
                    *queue
                }
                None => {
                    // A new sender goes to the least loaded thread, the committer's load
                    // counted several times over.
                    let queue = (0..threads)
                        .min_by_key(|&q| {
                            if q == 0 {
                                load[q] * COMMITTER_SHARE_DIVISOR
                            } else {
                                load[q]
                            }
                        })
                        .unwrap_or(0);
                    owner.insert(tx.sender, (queue, i));
                    queue
                }
            };
            load[queue] += 1;
            queues[queue].push(i);
        }
        Self {
            txs,
            base,
            mv: MvMemory::new(),
            slots: (0..n)
                .map(|_| Slot {
                    status: AtomicU8::new(PENDING),
                    output: Mutex::new(None),
                })
                .collect(),
            cursors: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            queues,
            prev_same_sender,
            committed: AtomicUsize::new(0),
            unclaimed: AtomicUsize::new(n),
            stop: AtomicBool::new(false),
        }
    }

    fn claim(&self, i: u32, to: u8) -> bool {
        let won = self.slots[i as usize]
            .status
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.unclaimed.fetch_sub(1, Ordering::Relaxed);
        }
        won
    }

    /// Whether the same sender's previous transaction has a result others can see.
    fn predecessor_ready(&self, i: u32) -> bool {
        let prev = self.prev_same_sender[i as usize];
        prev == u32::MAX
            || self.committed.load(Ordering::Acquire) > prev as usize
            || self.slots[prev as usize].status.load(Ordering::Acquire) == DONE
    }

    /// The next transaction thread `me` should speculate: its own queue in order, then one
    /// stolen from another queue whose sender's previous transaction is done.
    fn next_task(&self, me: usize) -> Option<u32> {
        let queue = &self.queues[me];
        let cursor = &self.cursors[me];
        let mut pos = cursor.load(Ordering::Relaxed);
        while pos < queue.len() {
            let i = queue[pos];
            pos += 1;
            cursor.store(pos, Ordering::Relaxed);
            if self.claim(i, RUNNING) {
                return Some(i);
            }
        }
        let committed = self.committed.load(Ordering::Acquire);
        for (victim, queue) in self.queues.iter().enumerate() {
            if victim == me {
                continue;
            }
            let start = self.cursors[victim].load(Ordering::Relaxed);
            for &i in queue.iter().skip(start).take(STEAL_WINDOW) {
                if (i as usize) >= committed
                    && self.slots[i as usize].status.load(Ordering::Relaxed) == PENDING
                    && self.predecessor_ready(i)
                    && self.claim(i, RUNNING)
                {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// Stops the workers when the commit loop ends, however it ends (an error or a panic included).
struct StopOnDrop<'b>(&'b AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// One batch's execution parameters.
struct Run<'a> {
    exec: &'a ExecConfig,
    block: &'a BlockContext,
    tuning: &'a ParallelConfig,
    /// Tests: speculation ignores the multi-version memory.
    base_only: bool,
    /// Tests: the commit loop waits for speculation instead of executing directly.
    never_direct: bool,
}

type SpecEvm<'b, R> = MainnetEvm<MainnetContext<SpecDb<'b, R>>>;

impl Run<'_> {
    fn execute<R: StateReader + Sync>(
        &self,
        pool: &rayon::ThreadPool,
        batch: &Batch<'_, R>,
        block_gas_used: u64,
        block_logs: u64,
    ) -> Result<(PendingOutcomes, crate::state::StateDiff, BatchStats), StateError> {
        let workers = batch.queues.len() - 1;
        let speculated = AtomicU64::new(0);
        let result = pool.in_place_scope(|scope| {
            for worker in 1..=workers {
                let speculated = &speculated;
                scope.spawn(move |_| {
                    let count = self.worker(batch, worker);
                    speculated.fetch_add(count, Ordering::Relaxed);
                });
            }
            let _stop = StopOnDrop(&batch.stop);
            self.commit_loop(batch, block_gas_used, block_logs)
        });
        let (pending, diff, mut stats) = result?;
        stats.speculated += speculated.load(Ordering::Relaxed);
        Ok((pending, diff, stats))
    }

    fn spec_evm<'b, R: StateReader>(&self, batch: &'b Batch<'b, R>) -> SpecEvm<'b, R> {
        Context::mainnet()
            .with_db(SpecDb::new(batch.base, &batch.mv, self.base_only))
            .with_cfg(self.exec.cfg_env())
            .with_block(self.block.block_env())
            .build_mainnet()
    }

    /// A worker thread: speculates its queue, then steals, until nothing is left or the
    /// batch stops. Returns how many transactions it speculated.
    fn worker<R: StateReader + Sync>(&self, batch: &Batch<'_, R>, me: usize) -> u64 {
        let mut evm = self.spec_evm(batch);
        let mut count = 0;
        let mut idle_spins = 0u32;
        while !batch.stop.load(Ordering::Acquire) {
            if let Some(i) = batch.next_task(me) {
                speculate(&mut evm, batch, i);
                count += 1;
                idle_spins = 0;
            } else if batch.unclaimed.load(Ordering::Relaxed) == 0 {
                break;
            } else {
                // Left: transactions whose sender's previous one is still running. Spin briefly
                // (they are microseconds away), then give the core up.
                idle_spins += 1;
                if idle_spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        count
    }

    /// The ordered commit on the calling thread; speculates its own queue while it waits.
    fn commit_loop<R: StateReader + Sync>(
        &self,
        batch: &Batch<'_, R>,
        block_gas_used: u64,
        block_logs: u64,
    ) -> Result<(PendingOutcomes, crate::state::StateDiff, BatchStats), StateError> {
        let mut evm = Context::mainnet()
            .with_db(Overlay::new(batch.base))
            .with_cfg(self.exec.cfg_env())
            .with_block(self.block.block_env())
            .build_mainnet();
        let mut spec_evm = self.spec_evm(batch);
        let mut ledger = BlockLedger::new(self.block, block_gas_used, block_logs);
        let mut outcomes = Vec::with_capacity(batch.txs.len());
        let mut stats = BatchStats::default();
        let beneficiary = self.block.beneficiary;
        let sample = u64::from(self.tuning.conflict_sample_txs.max(1));
        for (i, tx) in batch.txs.iter().enumerate() {
            let index = i as u32;
            let slot = &batch.slots[i];
            if !ledger.fits(tx) {
                if !batch.claim(index, TAKEN) {
                    // Speculated (or being speculated) in vain: withdraw what it published.
                    wait_while_running(slot);
                    if let Some(output) = take_output(slot) {
                        batch.mv.retract(index, &output.published);
                    }
                }
                outcomes.push(Pending::Deferred);
                batch.committed.store(i + 1, Ordering::Release);
                continue;
            }
            let outcome = loop {
                match slot.status.load(Ordering::Acquire) {
                    PENDING if !self.never_direct || batch.stop.load(Ordering::Relaxed) => {
                        if batch.claim(index, TAKEN) {
                            stats.direct += 1;
                            break self.direct(&mut evm, batch, index, &mut ledger)?;
                        }
                    }
                    DONE => {
                        let Some(output) = take_output(slot) else {
                            return Err(StateError(format!(
                                "parallel executor: transaction {i}'s speculation vanished"
                            )));
                        };
                        if reads_hold(&output.reads, evm.ctx.db_ref()) {
                            stats.validated += 1;
                            break commit_speculation(
                                &mut evm,
                                output,
                                tx,
                                beneficiary,
                                &mut ledger,
                            )?;
                        }
                        stats.reexecuted += 1;
                        if !batch.stop.load(Ordering::Relaxed) {
                            batch.mv.retract(index, &output.published);
                        }
                        let outcome = self.direct(&mut evm, batch, index, &mut ledger)?;
                        let checked = stats.validated + stats.reexecuted;
                        if checked >= sample
                            && stats.reexecuted * 100
                                > u64::from(self.tuning.conflict_pct_max) * checked
                            && !batch.stop.load(Ordering::Relaxed)
                        {
                            stats.speculation_stopped = true;
                            batch.stop.store(true, Ordering::Release);
                        }
                        break outcome;
                    }
                    _ => {
                        // Another thread is speculating `i`: speculate something of our own
                        // meanwhile, or wait.
                        if !batch.stop.load(Ordering::Relaxed)
                            && let Some(task) = batch.next_task(0)
                        {
                            speculate(&mut spec_evm, batch, task);
                            stats.speculated += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            };
            outcomes.push(outcome);
            batch.committed.store(i + 1, Ordering::Release);
        }
        let (gas_used, logs) = ledger.totals();
        let diff = evm.ctx.journaled_state.database.into_diff();
        Ok((
            PendingOutcomes {
                outcomes,
                gas_used,
                logs,
            },
            diff,
            stats,
        ))
    }

    /// Executes transaction `index` on the committed state, exactly as [`execute_batch`] does,
    /// and publishes its writes for the speculation of later transactions.
    fn direct<R: StateReader + Sync>(
        &self,
        evm: &mut MainnetEvm<MainnetContext<Overlay<&R>>>,
        batch: &Batch<'_, R>,
        index: u32,
        ledger: &mut BlockLedger<'_>,
    ) -> Result<Pending, StateError> {
        let tx = &batch.txs[index as usize];
        match evm.transact(to_tx_env(&tx.envelope, tx.sender)) {
            Ok(ExecResultAndState { result, state }) => {
                if !batch.stop.load(Ordering::Relaxed) && (index as usize) + 1 < batch.txs.len() {
                    batch.mv.publish(index, Writes::from_state(&state, None));
                }
                evm.ctx.db_mut().commit(state);
                Ok(Pending::Included(ledger.include(tx, result)))
            }
            Err(EVMError::Transaction(invalid)) => {
                Ok(Pending::Rejected(ledger.reject(tx, invalid)))
            }
            Err(EVMError::Database(e)) => Err(e),
            Err(other) => Err(StateError(format!("executor: {other}"))),
        }
    }
}

/// Speculates transaction `i` (claimed by the caller) and leaves the result in its slot.
fn speculate<R: StateReader>(evm: &mut SpecEvm<'_, R>, batch: &Batch<'_, R>, i: u32) {
    let tx = &batch.txs[i as usize];
    evm.ctx.db_mut().begin(i);
    evm.ctx.set_tx(to_tx_env(&tx.envelope, tx.sender));
    let mut handler = LazyFeeHandler::default();
    let outcome = handler.run(evm);
    let reward = handler.reward.get();
    let state = evm.finalize();
    let reads = std::mem::take(&mut evm.ctx.db_mut().reads);
    let result = match outcome {
        Ok(result) => Ok(result),
        Err(EVMError::Transaction(invalid)) => Err(SpecFailure::Invalid(invalid)),
        Err(_) => Err(SpecFailure::Abort),
    };
    let published = if result.is_ok() && !batch.stop.load(Ordering::Relaxed) {
        let writes = Writes::from_state(&state, Some(&reads));
        let locs = writes.locs();
        batch.mv.publish(i, writes);
        locs
    } else {
        Vec::new()
    };
    let slot = &batch.slots[i as usize];
    *slot
        .output
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(SpecOutput {
        result,
        state,
        reads,
        reward,
        published,
    });
    slot.status.store(DONE, Ordering::Release);
}

fn take_output(slot: &Slot) -> Option<SpecOutput> {
    slot.output
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

fn wait_while_running(slot: &Slot) {
    while slot.status.load(Ordering::Acquire) == RUNNING {
        std::hint::spin_loop();
    }
}

/// Whether every value a speculation read is what the committed state holds now, i.e. what the
/// sequential executor's reads would return at this point of the batch.
fn reads_hold<R: StateReader>(reads: &[Read], committed: &Overlay<R>) -> bool {
    reads.iter().all(|read| match (&read.loc, &read.value) {
        (Loc::Account(address), ReadValue::Account(seen)) => {
            match committed.written_account(*address) {
                Some(now) => same_account(seen, &now),
                // Untouched by the batch so far: the base value, which a base read saw.
                None => read.from_base,
            }
        }
        (Loc::Storage(address, slot), ReadValue::Storage(seen)) => {
            match committed.written_storage(*address, *slot) {
                Some(now) => *seen == now,
                None => read.from_base,
            }
        }
        _ => false,
    })
}

/// Account equality as revm could observe it: `AccountInfo`'s own `==` looks at balance, nonce
/// and code hash only, but whether the code came inline also changes what a commit records.
fn same_account(
    a: &Option<revm::state::AccountInfo>,
    b: &Option<revm::state::AccountInfo>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.balance == b.balance
                && a.nonce == b.nonce
                && a.code_hash == b.code_hash
                && a.account_id == b.account_id
                && a.code.is_some() == b.code.is_some()
        }
        _ => false,
    }
}

/// Commits a validated speculation: its state changes plus the fee it owes the beneficiary,
/// applied as revm's `reward_beneficiary` would have at the end of the transaction.
fn commit_speculation<R: StateReader>(
    evm: &mut MainnetEvm<MainnetContext<Overlay<&R>>>,
    output: SpecOutput,
    tx: &RecoveredTx,
    beneficiary: Address,
    ledger: &mut BlockLedger<'_>,
) -> Result<Pending, StateError> {
    let SpecOutput {
        result,
        mut state,
        reward,
        ..
    } = output;
    match result {
        Ok(result) => {
            if let Some(reward) = reward {
                let db = evm.ctx.db_mut();
                let account = match state.entry(beneficiary) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(match db.basic(beneficiary)? {
                            Some(info) => Account::from(info),
                            None => Account::new_not_existing(TransactionId::ZERO),
                        })
                    }
                };
                // `incr_balance`: touch always; on overflow the balance stays.
                account.mark_touch();
                if let Some(balance) = account.info.balance.checked_add(reward) {
                    account.info.balance = balance;
                }
            }
            evm.ctx.db_mut().commit(state);
            Ok(Pending::Included(ledger.include(tx, result)))
        }
        Err(SpecFailure::Invalid(invalid)) => Ok(Pending::Rejected(ledger.reject(tx, invalid))),
        Err(SpecFailure::Abort) => Err(StateError(
            "parallel executor: an aborted speculation passed validation".into(),
        )),
    }
}

/// The mainnet handler, except that the beneficiary's fee is noted instead of paid (see the
/// module docs). Everything else is revm's default handler code.
struct LazyFeeHandler<DB> {
    reward: Cell<Option<U256>>,
    _db: PhantomData<DB>,
}

impl<DB> Default for LazyFeeHandler<DB> {
    fn default() -> Self {
        Self {
            reward: Cell::new(None),
            _db: PhantomData,
        }
    }
}

impl<DB: Database> Handler for LazyFeeHandler<DB> {
    type Evm = MainnetEvm<MainnetContext<DB>>;
    type Error = EVMError<DB::Error, InvalidTransaction>;
    type HaltReason = HaltReason;

    /// revm's `post_execution::reward_beneficiary`, without touching the beneficiary.
    fn reward_beneficiary(
        &self,
        evm: &mut Self::Evm,
        exec_result: &mut FrameResult,
    ) -> Result<(), Self::Error> {
        let ctx = evm.ctx_ref();
        if ctx.cfg().is_fee_charge_disabled() {
            return Ok(());
        }
        let basefee = ctx.block().basefee() as u128;
        let effective_gas_price = ctx.tx().effective_gas_price(basefee);
        let coinbase_gas_price = if ctx.cfg().spec().is_enabled_in(SpecId::LONDON) {
            effective_gas_price.saturating_sub(basefee)
        } else {
            effective_gas_price
        };
        let gas = exec_result.gas();
        let effective_used = gas.used().saturating_sub(gas.reservoir());
        self.reward.set(Some(U256::from(
            coinbase_gas_price * effective_used as u128,
        )));
        Ok(())
    }
}
