//! The sequencer: one thread that cuts mini-blocks as soon as transactions wait, executes them,
//! makes them durable in the mini-block log, answers their outcomes, and closes EVM blocks; and
//! the sealer beside it ([`sealer`]), which computes each closed block's state root, writes it
//! to RocksDB and publishes it.
//!
//! Alone, the sequencer drives itself ([`Sequencer::run`]): its loop never sleeps on a fixed
//! period; it blocks on the ingress queue until a transaction arrives or the open block's seal
//! is due, so a lone transaction executes as soon as it lands. As a validator, the replica
//! (`crate::replica`) drives it through the interface at the end of this file: the ready
//! queue, speculative execution on a parent's state, and committing finalized mini-blocks and
//! seals.
//!
//! Closing a block costs one log write; the trie and RocksDB work happens on the sealer thread,
//! so the next block's mini-blocks execute meanwhile. Everything the next block needs from its
//! parent is known at close (see `ParentInfo`); BLOCKHASH of a block still being sealed waits
//! for it, so results never depend on timing.

mod sealer;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        mpsc::{SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use alloy_consensus::Transaction as _;
use alloy_primitives::{Address, B256};
use rtchain_dataplane::tile::{CoreMap, TileHandle};
use rtchain_exec::{
    BatchResult, BlockContext, ChainEvent, MiniBlock, MiniBlockHeader, ParallelConfig,
    ParallelExecutor, ReceiptView, RecoveredTx, StateDiff, StateError, TxError, TxLocation,
    TxOutcome, TxReceipt, receipt,
};
use rtchain_state::{LogRecord, MiniLog, MiniLogError, minilog::MiniBlockRecord};

use self::sealer::{ClosedBlock, Sealer};
use crate::{
    NodeError,
    chain::{Chain, ParentInfo, Recovered, next_block_context, now_us},
    outcome::{Answers, Failure, Outcome, Rejection, ReplySink, Submission},
    settlement::MiniLayout,
};

/// Room kept in the mini-block log for the open block's seal record.
const SEAL_RESERVE_BYTES: usize = 256;

/// How long the loop waits for work before checking for shutdown and idle blocks.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Bound on closed blocks waiting for the sealer: beyond it the sequencer waits, so a slow disk
/// slows execution instead of growing memory.
const MAX_BLOCKS_IN_FLIGHT: usize = 8;

/// The open EVM block: its context and everything its mini-blocks produced.
struct OpenBlock {
    ctx: BlockContext,
    opened_at: Instant,
    opened_at_us: u64,
    first_mini: u64,
    txs: Vec<RecoveredTx>,
    receipts: Vec<TxReceipt>,
    minis: Vec<u64>,
    diff: StateDiff,
    gas_used: u64,
    logs: u64,
    layout: Vec<MiniLayout>,
}

/// The open block as the replica needs it to continue it: context, opening time, and what its
/// mini-blocks have used so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenState {
    pub ctx: BlockContext,
    pub opened_at_us: u64,
    pub gas_used: u64,
    pub logs: u64,
}

/// A mini-block's number, time and receipts root as some record gives them.
#[derive(Clone, Copy, Debug)]
struct Logged {
    number: u64,
    timestamp_us: u64,
    receipts_root: B256,
}

/// Where a mini-block being committed comes from, which decides what is checked, logged and
/// answered.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Cut and executed here just now: numbered and timed now, logged, answered.
    New,
    /// Re-executed from the mini-block log after a restart: must give the logged result; not
    /// logged again; nobody waits for it.
    Replayed(Logged),
    /// A finalized consensus block's mini-block: must give the finalized result; logged;
    /// answered to whoever waits here.
    Finalized(Logged),
    /// A mini-block read back from L1 (a batch carries its time, not its receipts root):
    /// logged; nobody waits for it.
    Derived { timestamp_us: u64 },
}

impl Origin {
    fn logged(self) -> Option<Logged> {
        match self {
            Origin::New | Origin::Derived { .. } => None,
            Origin::Replayed(l) | Origin::Finalized(l) => Some(l),
        }
    }
}

pub struct Sequencer {
    chain: Arc<Chain>,
    minilog: MiniLog,
    ingress: crossbeam_channel::Receiver<Submission>,
    open: Option<OpenBlock>,
    /// Future-nonce transactions, per sender by nonce, until the gap fills.
    queued: HashMap<Address, BTreeMap<u64, Submission>>,
    queued_total: usize,
    /// Queued transactions whose nonce became current, to run before new arrivals.
    ready: VecDeque<Submission>,
    /// Newest mini-block whose block RocksDB holds durably (synced).
    durable_mini: u64,
    last_seal: Instant,
    /// Seals inline during replay; moved to its own thread once the sequencer runs.
    sealer: Option<Sealer>,
    to_sealer: Option<SyncSender<ClosedBlock>>,
    sealer_thread: Option<JoinHandle<()>>,
    /// Sends outcomes to whoever waits: RPC callers and fast-path clients.
    answers: Answers,
    /// Executes mini-blocks; decides per batch whether to speculate in parallel or run
    /// sequentially (one thread configured, small or cheap batches, conflict-heavy history).
    executor: ParallelExecutor,
    /// The L1 origin and deposits processed as the newest committed state records them (when
    /// the chain settles to L1): read once at start, then followed through the groups
    /// committed, so the hot path asks L1 only when it has news.
    l1_cursor: (u64, u64),
}

impl Sequencer {
    /// Builds the sequencer over the opened chain, replays the mini-block log after the
    /// committed head, and starts the sealer thread.
    pub fn open(
        chain: Arc<Chain>,
        recovered: Recovered,
        answers: Answers,
        config: &crate::config::NodeConfig,
    ) -> Result<Self, NodeError> {
        let executor = executor(chain.sequencer.exec_threads, &config.cores)?;
        let durable_mini = chain.state.read().head.last_mini_block;
        let mut sequencer = Sequencer {
            sealer: Some(Sealer::new(chain.clone())?),
            chain,
            minilog: recovered.minilog,
            ingress: recovered.ingress,
            open: None,
            queued: HashMap::new(),
            queued_total: 0,
            ready: VecDeque::new(),
            durable_mini,
            last_seal: Instant::now(),
            to_sealer: None,
            sealer_thread: None,
            answers,
            executor,
            l1_cursor: (0, 0),
        };
        sequencer.replay(recovered.replay)?;
        if sequencer.chain.settlement.is_some() {
            let (origin, _, processed) =
                crate::settlement::origin_in(&sequencer.chain.latest_state())?;
            sequencer.l1_cursor = (origin, processed);
        }
        let mut sealer = sequencer
            .sealer
            .take()
            .expect("sealer present until started");
        let (to_sealer, closed_blocks) = sync_channel::<ClosedBlock>(MAX_BLOCKS_IN_FLIGHT);
        let sealer_chain = sequencer.chain.clone();
        let sealer_thread = std::thread::Builder::new()
            .name("sealer".into())
            .spawn(move || {
                for closed in closed_blocks {
                    if let Err(e) = sealer.seal(closed) {
                        tracing::error!("sealer stopped: {e}");
                        sealer_chain.shutdown();
                        return;
                    }
                }
            })
            .map_err(|e| NodeError::Recovery(format!("cannot start the sealer thread: {e}")))?;
        sequencer.to_sealer = Some(to_sealer);
        sequencer.sealer_thread = Some(sealer_thread);
        Ok(sequencer)
    }
}

/// Runs the sequencer on its tile (pinned to `core`), driven by `drive`: [`Sequencer::run`]
/// alone, or the replica's loop. When `drive` returns, everything still waiting is answered as
/// failed and the sealer finishes what was closed.
pub fn spawn(
    mut sequencer: Sequencer,
    core: Option<usize>,
    drive: impl FnOnce(&mut Sequencer) -> Result<(), NodeError> + Send + 'static,
) -> Result<TileHandle<()>, NodeError> {
    rtchain_dataplane::tile::spawn_tile("sequencer", core, move || {
        if let Err(e) = drive(&mut sequencer) {
            // Storage or log failure: stop sequencing rather than acknowledge what cannot be
            // kept. RPC keeps serving reads and refuses new transactions.
            tracing::error!("sequencer stopped: {e}");
            sequencer.chain.fail(format!("sequencer stopped: {e}"));
        }
        sequencer.fail_waiting();
        // Let the sealer finish what was closed, then stop it.
        sequencer.to_sealer = None;
        if let Some(handle) = sequencer.sealer_thread.take() {
            let _ = handle.join();
        }
    })
    .map_err(|e| NodeError::Recovery(format!("cannot start the sequencer thread: {e}")))
}

/// The mini-block executor. `threads` counts the sequencer thread, which executes too (on
/// `cores.sequencer`); the other threads are workers, pinned to `cores.exec` when it lists
/// cores. 0: the sequencer plus one worker per `cores.exec` entry, or else one thread per CPU
/// this process may use.
fn executor(threads: usize, cores: &CoreMap) -> Result<ParallelExecutor, NodeError> {
    let threads = match threads {
        0 if !cores.exec.is_empty() => cores.exec.len() + 1,
        0 => rtchain_dataplane::tile::allowed_cpus()
            .map_err(|e| NodeError::Config(e.to_string()))?
            .len(),
        n => n,
    };
    let worker_cores = cores.exec.clone();
    ParallelExecutor::with_thread_start(ParallelConfig::with_threads(threads), move |i| {
        if let Some(&core) = worker_cores.get(i) {
            match rtchain_dataplane::tile::pin_current_thread(core) {
                Ok(()) => rtchain_dataplane::tile::bind_memory_near(core),
                Err(e) => tracing::error!("exec worker {i}: cannot pin to core {core}: {e}"),
            }
        }
    })
    .map_err(|e| NodeError::Config(format!("cannot start the executor's threads: {e}")))
}

impl Sequencer {
    /// Re-executes the logged mini-blocks after the committed head and re-seals their blocks.
    fn replay(&mut self, records: Vec<LogRecord>) -> Result<(), NodeError> {
        let count = records.len();
        for record in records {
            match record {
                LogRecord::MiniBlock(m) => {
                    if self
                        .open
                        .as_ref()
                        .is_some_and(|o| o.ctx.number != m.block.number)
                    {
                        return Err(NodeError::Recovery(format!(
                            "mini-block {} belongs to block {} but block {} is unsealed",
                            m.number,
                            m.block.number,
                            self.open.as_ref().map(|o| o.ctx.number).unwrap_or_default()
                        )));
                    }
                    if self.open.is_none() {
                        self.open_block(m.block, m.timestamp_us);
                    }
                    let submissions = m
                        .transactions
                        .into_iter()
                        .map(Submission::unanswered)
                        .collect();
                    let logged = Logged {
                        number: m.number,
                        timestamp_us: m.timestamp_us,
                        receipts_root: m.receipts_root,
                    };
                    let included = self.execute(submissions, Origin::Replayed(logged))?;
                    if !included {
                        return Err(NodeError::Recovery(format!(
                            "mini-block {} replayed to nothing",
                            m.number
                        )));
                    }
                }
                LogRecord::Seal {
                    block_number,
                    timestamp_us,
                    ..
                } => {
                    if self.open.is_none() {
                        let parent = self.chain.state.read().closed_parent;
                        let ctx = next_block_context(&self.chain.exec, &parent, timestamp_us);
                        self.open_block(ctx, timestamp_us);
                    }
                    let number = self.open.as_ref().map(|o| o.ctx.number).unwrap_or_default();
                    if number != block_number {
                        return Err(NodeError::Recovery(format!(
                            "seal of block {block_number} but block {number} is open"
                        )));
                    }
                    self.close_block(false, Some(timestamp_us))?;
                }
            }
        }
        if count > 0 {
            tracing::info!("replayed {count} mini-block log records");
        }
        // Whatever was replayed is now committed; make it durable before acknowledging more.
        self.chain.store.sync()?;
        self.durable_mini = self.chain.state.read().head.last_mini_block;
        Ok(())
    }

    /// The loop of a node that sequences alone: cut, execute, log and answer mini-blocks as
    /// transactions arrive; close EVM blocks on time.
    pub fn run(&mut self) -> Result<(), NodeError> {
        let max_txs = self.chain.sequencer.max_mini_block_txs;
        let interval = Duration::from_millis(self.chain.sequencer.block_interval_ms);
        let idle = Duration::from_millis(self.chain.sequencer.idle_block_interval_ms);
        let mut batch: Vec<Submission> = Vec::with_capacity(max_txs);
        loop {
            if self.chain.is_shut_down() {
                if self.open.is_some() {
                    self.close_block(true, None)?;
                }
                return Ok(());
            }
            let now = Instant::now();
            let deadline = match &self.open {
                Some(open) => open.opened_at + interval,
                None => self.last_seal + idle,
            };
            if now >= deadline {
                self.close_block(true, None)?;
                continue;
            }
            // A mini-block is bounded in transactions and in bytes; what does not fit waits at
            // the front of the ready queue for the next one.
            let max_bytes = self.minilog.max_mini_block_bytes();
            let mut bytes = MiniLog::mini_block_record_bytes([]);
            let mut take =
                |batch: &mut Vec<Submission>, s: Submission, ready: &mut VecDeque<Submission>| {
                    let size = MiniLog::mini_block_record_bytes([s.tx.raw.len()])
                        - MiniLog::mini_block_record_bytes([]);
                    if !batch.is_empty() && bytes + size > max_bytes {
                        ready.push_front(s);
                        return false;
                    }
                    bytes += size;
                    batch.push(s);
                    true
                };
            while batch.len() < max_txs {
                match self.ready.pop_front() {
                    Some(s) => {
                        if !take(&mut batch, s, &mut self.ready) {
                            break;
                        }
                    }
                    None => break,
                }
            }
            if batch.is_empty() {
                match self.ingress.recv_timeout((deadline - now).min(MAX_WAIT)) {
                    Ok(s) => {
                        take(&mut batch, s, &mut self.ready);
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            while batch.len() < max_txs && self.ready.is_empty() {
                match self.ingress.try_recv() {
                    Ok(s) => {
                        if !take(&mut batch, s, &mut self.ready) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            // L1's next origin and its deposits go first in the mini-block, even with no
            // user transaction waiting.
            let group = self.next_l1_group()?;
            if batch.is_empty() && group.is_none() {
                continue;
            }
            if let Some(group) = group {
                batch.splice(0..0, group.into_iter().map(Submission::unanswered));
            }
            self.make_log_room(&batch)?;
            if self.open.is_none() {
                let parent = self.chain.state.read().closed_parent;
                let at = now_us();
                let ctx = next_block_context(&self.chain.exec, &parent, at);
                self.open_block(ctx, at);
            }
            self.execute(std::mem::take(&mut batch), Origin::New)?;
        }
    }

    /// The next L1-info group to include, when the chain settles to L1 and L1 has one. Closes
    /// the open block first when it could not take a whole group.
    fn next_l1_group(&mut self) -> Result<Option<Vec<RecoveredTx>>, NodeError> {
        let Some(settlement) = self.chain.settlement.clone() else {
            return Ok(None);
        };
        let (origin, processed) = self.l1_cursor;
        if settlement.derive || !settlement.has_news(origin, processed) {
            return Ok(None);
        }
        let limit = self.chain.exec.block_gas_limit;
        let room = crate::settlement::group_gas_room(limit);
        if let Some(open) = &self.open
            && limit.saturating_sub(open.gas_used) < room
        {
            self.close_block(true, None)?;
        }
        let gas_left = limit - self.open.as_ref().map_or(0, |o| o.gas_used);
        Ok(settlement.next_group(&self.chain.latest_state(), gas_left, limit)?)
    }

    /// Makes sure the mini-block log can take this batch's record and a seal without
    /// overwriting anything not yet durable in RocksDB: first by syncing RocksDB, then, if the
    /// open block's own records fill the log, by sealing the open block before executing more.
    fn make_log_room(&mut self, batch: &[Submission]) -> Result<(), NodeError> {
        let needed = MiniLog::mini_block_record_bytes(batch.iter().map(|s| s.tx.raw.len()))
            + SEAL_RESERVE_BYTES;
        self.log_room(needed, true)
    }

    /// Room for a record of `needed` bytes: by syncing RocksDB, then (if `may_seal`: the
    /// sequencer decides where blocks end) by sealing the open block early.
    fn log_room(&mut self, needed: usize, may_seal: bool) -> Result<(), NodeError> {
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        self.sync_store()?;
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        if may_seal && self.open.is_some() {
            let number = self.close_block(true, None)?;
            self.chain.wait_sealed(number);
            self.sync_store()?;
            if self.minilog.has_room(needed, self.durable_mini) {
                return Ok(());
            }
        }
        Err(NodeError::Config(format!(
            "the mini-block log is too small for a mini-block of {needed} bytes; raise storage.minilog_size_bytes"
        )))
    }

    /// Lets the sealer commit every closed block, then syncs RocksDB: afterwards everything
    /// closed so far is durable without the log.
    fn sync_store(&mut self) -> Result<(), NodeError> {
        self.durable_mini = sync_closed_blocks(&self.chain)?;
        Ok(())
    }

    fn open_block(&mut self, ctx: BlockContext, at_us: u64) {
        let first_mini = self.chain.state.read().last_mini_block + 1;
        self.open = Some(OpenBlock {
            ctx,
            opened_at: Instant::now(),
            opened_at_us: at_us,
            first_mini,
            txs: Vec::new(),
            receipts: Vec::new(),
            minis: Vec::new(),
            diff: StateDiff::default(),
            gas_used: 0,
            logs: 0,
            layout: Vec::new(),
        });
        self.chain.state.write().open_block = Some(ctx);
    }

    /// Executes one mini-block on the newest state. Returns whether anything was included.
    fn execute(&mut self, submissions: Vec<Submission>, origin: Origin) -> Result<bool, NodeError> {
        let Some(open) = self.open.as_ref() else {
            return Ok(false);
        };
        let ctx = open.ctx;
        let (block_gas, block_logs) = (open.gas_used, open.logs);
        let mut replies: HashMap<B256, ReplySink> = HashMap::new();
        let mut txs = Vec::with_capacity(submissions.len());
        for s in submissions {
            if let Some(reply) = s.reply {
                replies.insert(s.tx.hash, reply);
            }
            txs.push(s.tx);
        }
        let result = self.executor.execute_batch(
            &self.chain.exec,
            &ctx,
            self.chain.latest_state(),
            txs,
            block_gas,
            block_logs,
        )?;
        let replaying = matches!(origin, Origin::Replayed(_));

        let mut included: Vec<(RecoveredTx, TxReceipt)> = Vec::new();
        let mut deferred = Vec::new();
        for outcome in result.outcomes {
            match outcome {
                TxOutcome::Included { tx, receipt, .. } => included.push((tx, receipt)),
                TxOutcome::Rejected { tx, error } => {
                    if let Origin::Derived { .. } = origin {
                        return Err(NodeError::Diverged(format!(
                            "transaction {} of a batch read from L1 is refused here: {error}",
                            tx.hash
                        )));
                    }
                    if replaying {
                        return Err(NodeError::Recovery(format!(
                            "replayed transaction {} was rejected: {error}",
                            tx.hash
                        )));
                    }
                    let reply = replies.remove(&tx.hash);
                    self.reject_or_queue(tx, error, reply);
                }
                TxOutcome::Deferred { tx } if tx.is_deposit() => {
                    // The group's gas is checked against the open block before it is taken;
                    // a deposit left out would be lost for good (L1 moved the origin on).
                    return Err(NodeError::Recovery(format!(
                        "deposit {} did not fit its block: the L1-info group gas check is wrong",
                        tx.hash
                    )));
                }
                TxOutcome::Deferred { tx } => {
                    if let Origin::Derived { .. } = origin {
                        return Err(NodeError::Diverged(format!(
                            "transaction {} of a batch read from L1 does not fit its block here",
                            tx.hash
                        )));
                    }
                    if replaying {
                        return Err(NodeError::Recovery(format!(
                            "replayed transaction {} did not fit its block",
                            tx.hash
                        )));
                    }
                    let reply = replies.remove(&tx.hash);
                    deferred.push(Submission { tx, reply });
                }
            }
        }
        let any = !included.is_empty();
        if any {
            self.commit_mini_block(
                included,
                result.diff,
                (result.gas_used, result.logs),
                origin,
                &mut replies,
            )?;
        }
        if !deferred.is_empty() {
            // The open block is full: seal it and offer the rest to the next block first.
            self.close_block(true, None)?;
            for s in deferred.into_iter().rev() {
                self.ready.push_front(s);
            }
        }
        Ok(any)
    }

    /// Commits an executed mini-block of the open block: logs it (unless replayed), makes its
    /// state the newest, answers its transactions and announces it.
    fn commit_mini_block(
        &mut self,
        included: Vec<(RecoveredTx, TxReceipt)>,
        diff: StateDiff,
        (gas_used, logs): (u64, u64),
        origin: Origin,
        replies: &mut HashMap<B256, ReplySink>,
    ) -> Result<(), NodeError> {
        let (parent_hash, number) = {
            let state = self.chain.state.read();
            (state.last_mini_block_hash, state.last_mini_block + 1)
        };
        let (txs, receipts): (Vec<_>, Vec<_>) = included.into_iter().unzip();
        let receipts_root = receipt::receipts_root(&receipts);
        let timestamp_us = match origin.logged() {
            Some(logged) => {
                if logged.number != number || logged.receipts_root != receipts_root {
                    return Err(NodeError::Recovery(format!(
                        "mini-block {} re-executed to a different result (number {number}, receipts root {receipts_root} vs {})",
                        logged.number, logged.receipts_root
                    )));
                }
                logged.timestamp_us
            }
            None => match origin {
                Origin::Derived { timestamp_us } => timestamp_us,
                _ => now_us(),
            },
        };
        if let Some((l1, processed)) = crate::settlement::group_origin(&txs) {
            self.l1_cursor = (l1.number, processed);
        }
        let open = self.open.as_mut().expect("an open block while executing");
        if !matches!(origin, Origin::Replayed(_)) {
            let record = LogRecord::MiniBlock(MiniBlockRecord {
                number,
                timestamp_us,
                block: open.ctx,
                receipts_root,
                transactions: txs.clone(),
            });
            append_durably(
                &mut self.minilog,
                &self.chain,
                &mut self.durable_mini,
                &record,
            )?;
        }

        let header = MiniBlockHeader {
            number,
            parent_hash,
            timestamp_us,
            evm_block_number: open.ctx.number,
            transactions_root: receipt::transactions_root(&txs),
            receipts_root,
            gas_used,
            tx_count: txs.len() as u32,
        };
        let hash = header.hash();
        let first_index = open.txs.len() as u64;
        let diff = Arc::new(diff);
        open.diff.merge((*diff).clone());
        open.gas_used += gas_used;
        open.logs += logs;
        let ctx = open.ctx;
        let mut views = Vec::with_capacity(txs.len());
        {
            let mut state = self.chain.state.write();
            state.push_layer(diff, ctx.number);
            state.last_mini_block = number;
            state.last_mini_block_hash = hash;
            for (i, (tx, receipt)) in txs.iter().zip(&receipts).enumerate() {
                let location = TxLocation {
                    block_number: ctx.number,
                    block_hash: None,
                    index: first_index + i as u64,
                    mini_block_number: number,
                    block_timestamp: ctx.timestamp,
                    base_fee: ctx.base_fee,
                };
                state
                    .preconfirmed
                    .insert(tx.hash, (tx.clone(), receipt.clone(), location));
                views.push(ReceiptView {
                    tx: tx.clone(),
                    receipt: receipt.clone(),
                    location,
                });
            }
        }
        {
            let mut pool = self.chain.pool.write();
            for tx in &txs {
                pool.remove(&tx.hash);
            }
        }
        let mut senders: Vec<(Address, u64)> = Vec::new();
        for view in views {
            senders.push((view.tx.sender, view.tx.envelope.nonce() + 1));
            if let Some(reply) = replies.remove(&view.tx.hash) {
                self.answers.send(reply, Outcome::Executed(view));
            }
        }
        open.layout.push(MiniLayout {
            number,
            timestamp_us,
            transactions: txs.len() as u32,
        });
        open.txs.extend(txs.iter().cloned());
        open.receipts.extend(receipts.iter().cloned());
        open.minis.extend(std::iter::repeat_n(number, txs.len()));
        let _ = self
            .chain
            .events
            .send(ChainEvent::MiniBlock(Arc::new(MiniBlock {
                header,
                hash,
                transactions: txs,
                receipts,
                first_index_in_block: first_index,
            })));
        for (sender, next_nonce) in senders {
            self.promote(sender, next_nonce);
        }
        Ok(())
    }

    /// A future nonce waits (bounded) for its gap to fill; everything else is refused.
    pub fn reject_or_queue(&mut self, tx: RecoveredTx, error: TxError, reply: Option<ReplySink>) {
        if let TxError::NonceTooHigh { .. } = error {
            let per_sender = self.queued.get(&tx.sender).map_or(0, BTreeMap::len);
            let limits = &self.chain.sequencer;
            if per_sender < limits.max_queued_per_sender
                && self.queued_total < limits.max_queued_total
            {
                let nonce = tx.envelope.nonce();
                let entry = self.queued.entry(tx.sender).or_default();
                let submission = Submission { tx, reply };
                if let Some(old) = entry.insert(nonce, submission) {
                    // A replacement with the same nonce: the old one is dropped.
                    self.chain.pool.write().remove(&old.tx.hash);
                    self.answers
                        .reject(old.reply, Rejection::Replaced { nonce, by: None });
                } else {
                    self.queued_total += 1;
                }
                return;
            }
            self.chain.pool.write().remove(&tx.hash);
            let next_nonce = match error {
                TxError::NonceTooHigh { state, .. } => state,
                _ => unreachable!("matched above"),
            };
            self.answers.reject(
                reply,
                Rejection::NonceGapFull {
                    sender: tx.sender,
                    limit: limits.max_queued_per_sender,
                    next_nonce,
                },
            );
            return;
        }
        self.chain.pool.write().remove(&tx.hash);
        self.answers.reject(reply, Rejection::Invalid(error));
    }

    /// Moves `sender`'s queued transaction with `next_nonce` (if any) to the ready queue.
    fn promote(&mut self, sender: Address, next_nonce: u64) {
        let Some(entry) = self.queued.get_mut(&sender) else {
            return;
        };
        // Nonces below the new one can never execute now.
        let stale: Vec<u64> = entry.range(..next_nonce).map(|(n, _)| *n).collect();
        for n in stale {
            if let Some(old) = entry.remove(&n) {
                self.queued_total -= 1;
                self.chain.pool.write().remove(&old.tx.hash);
                self.answers.reject(
                    old.reply,
                    Rejection::Invalid(TxError::NonceTooLow {
                        address: sender,
                        tx: n,
                        state: next_nonce,
                    }),
                );
            }
        }
        if let Some(s) = entry.remove(&next_nonce) {
            self.queued_total -= 1;
            self.ready.push_back(s);
        }
        if entry.is_empty() {
            self.queued.remove(&sender);
        }
    }

    /// Closes the open block (or an empty one when idle): logs its seal durably, hands it to
    /// the sealer, and makes its successor openable at once. `log` is false during replay (the
    /// seal is logged already), when the block is also sealed inline. Returns the block number.
    fn close_block(&mut self, log: bool, empty_at_us: Option<u64>) -> Result<u64, NodeError> {
        let mut open = match self.open.take() {
            Some(open) => open,
            None => {
                let parent = self.chain.state.read().closed_parent;
                let at = empty_at_us.unwrap_or_else(now_us);
                let ctx = next_block_context(&self.chain.exec, &parent, at);
                self.open_block(ctx, at);
                self.open.take().expect("just opened")
            }
        };
        let ctx = open.ctx;
        if open.layout.is_empty() {
            self.start_empty_block(&mut open)?;
        }
        let (last_mini, last_mini_hash) = {
            let state = self.chain.state.read();
            (state.last_mini_block, state.last_mini_block_hash)
        };
        if log {
            let record = LogRecord::Seal {
                block_number: ctx.number,
                last_mini_block: last_mini,
                timestamp_us: open.opened_at_us,
            };
            append_durably(
                &mut self.minilog,
                &self.chain,
                &mut self.durable_mini,
                &record,
            )?;
        }
        {
            let mut state = self.chain.state.write();
            state.open_block = None;
            state.closed_head = ctx.number;
            state.closed_parent = ParentInfo {
                number: ctx.number,
                timestamp: ctx.timestamp,
                gas_used: open.gas_used,
                gas_limit: ctx.gas_limit,
                base_fee: ctx.base_fee,
                last_mini_hash,
            };
        }
        let closed = ClosedBlock {
            ctx,
            first_mini: open.first_mini,
            last_mini,
            last_mini_hash,
            txs: open.txs,
            receipts: open.receipts,
            minis: open.minis,
            diff: open.diff,
            gas_used: open.gas_used,
            opened_at_us: open.opened_at_us,
            layout: open.layout,
        };
        self.last_seal = Instant::now();
        match (&mut self.sealer, &self.to_sealer) {
            (Some(sealer), _) => sealer.seal(closed)?,
            (None, Some(to_sealer)) => to_sealer
                .send(closed)
                .map_err(|_| NodeError::Recovery("the sealer stopped".into()))?,
            (None, None) => return Err(NodeError::Recovery("no sealer".into())),
        }
        Ok(ctx.number)
    }

    /// A block without mini-blocks still starts with its system calls (a first mini-block runs
    /// them in its batch): executed here on its parent's state, identically on every path that
    /// closes it (sequencing, replay, replicas, derivation), and layered over the newest state
    /// until sealed so that the next block reads them.
    fn start_empty_block(&mut self, open: &mut OpenBlock) -> Result<(), NodeError> {
        let result = self.executor.execute_batch(
            &self.chain.exec,
            &open.ctx,
            self.chain.latest_state(),
            Vec::new(),
            0,
            0,
        )?;
        if result.diff.accounts.is_empty() {
            return Ok(());
        }
        open.diff.merge(result.diff.clone());
        self.chain
            .state
            .write()
            .push_layer(Arc::new(result.diff), open.ctx.number);
        Ok(())
    }

    /// At exit: everything accepted and not executed is answered as failed (a fast-path client
    /// would otherwise wait for a datagram that never comes) and leaves the pool.
    fn fail_waiting(&mut self) {
        let mut waiting: Vec<Submission> = self.ready.drain(..).collect();
        for (_, by_nonce) in std::mem::take(&mut self.queued) {
            waiting.extend(by_nonce.into_values());
        }
        self.queued_total = 0;
        waiting.extend(self.ingress.try_iter());
        let mut pool = self.chain.pool.write();
        for s in waiting {
            pool.remove(&s.tx.hash);
            if let Some(reply) = s.reply {
                self.answers.send(reply, Outcome::Failed(Failure::Stopped));
            }
        }
    }
}

/// A block read back from L1, ready to execute.
pub struct DerivedBlock {
    pub number: u64,
    pub opened_at_us: u64,
    /// Its hash as the batch records it: whole, or only the first 8 bytes (`full_hash` false).
    pub hash: B256,
    pub full_hash: bool,
    /// Its mini-blocks: the time each was cut and its transactions.
    pub minis: Vec<(u64, Vec<RecoveredTx>)>,
    /// Where it came from, for the report of a mismatch.
    pub batch_index: u64,
    pub l1_block: u64,
}

impl Sequencer {
    /// The loop of a node that derives its chain from L1: executes the blocks the L1 reader
    /// sends, checks each one's deposits against L1 and its hash against the batch, and
    /// stops at the first difference.
    pub fn run_derived(
        &mut self,
        blocks: crossbeam_channel::Receiver<DerivedBlock>,
    ) -> Result<(), NodeError> {
        loop {
            if self.chain.is_shut_down() {
                return Ok(());
            }
            let block = match blocks.recv_timeout(MAX_WAIT) {
                Ok(block) => block,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            self.apply_derived(block)?;
        }
    }

    fn apply_derived(&mut self, block: DerivedBlock) -> Result<(), NodeError> {
        let at = |why: String| {
            NodeError::Diverged(format!(
                "L2 block {} (batch {}, L1 block {}): {why}",
                block.number, block.batch_index, block.l1_block
            ))
        };
        let closed = self.chain.state.read().closed_head;
        if block.number <= closed {
            // Derived before a restart: it must still be the same block.
            self.chain.wait_sealed(block.number);
            return self.check_derived_hash(&block).map_err(at);
        }
        if block.number != closed + 1 {
            return Err(at(format!("expected block {} next", closed + 1)));
        }
        let settlement = self.chain.settlement.clone();
        let parent = self.chain.state.read().closed_parent;
        let ctx = next_block_context(&self.chain.exec, &parent, block.opened_at_us);
        if block.minis.is_empty() {
            self.close_block(true, Some(block.opened_at_us))?;
        } else {
            self.open_block(ctx, block.opened_at_us);
            for (timestamp_us, txs) in &block.minis {
                if let Some(settlement) = &settlement {
                    if let Some((origin, _)) = crate::settlement::group_origin(txs) {
                        // The reader may be ahead of the view of L1 it checks against.
                        while settlement.view.read().block(origin.number).is_none() {
                            if self.chain.is_shut_down() {
                                return Ok(());
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    settlement
                        .check_mini_block(&self.chain.latest_state(), txs)
                        .map_err(|why| at(format!("its deposits do not match L1: {why}")))?;
                }
                let submissions: Vec<Submission> =
                    txs.iter().cloned().map(Submission::unanswered).collect();
                let count = submissions.len();
                let needed = MiniLog::mini_block_record_bytes(txs.iter().map(|t| t.raw.len()))
                    + SEAL_RESERVE_BYTES;
                // The batch decided where the block ends: never seal it early here.
                self.log_room(needed, false)?;
                let before = self.chain.state.read().last_mini_block;
                self.execute(
                    submissions,
                    Origin::Derived {
                        timestamp_us: *timestamp_us,
                    },
                )?;
                if self.chain.state.read().last_mini_block != before + 1 || count == 0 {
                    return Err(at("a mini-block did not execute whole".into()));
                }
            }
            self.close_block(true, None)?;
        }
        self.chain.wait_sealed(block.number);
        self.check_derived_hash(&block).map_err(at)
    }

    fn check_derived_hash(&self, block: &DerivedBlock) -> Result<(), String> {
        let ours = self
            .chain
            .block_hash(block.number)
            .map_err(|e| e.to_string())?;
        let len = if block.full_hash {
            32
        } else {
            rtchain_l1::channel::HASH_PREFIX_BYTES
        };
        if ours[..len] != block.hash[..len] {
            return Err(format!(
                "derived hash {ours} differs from the batch's {}{}",
                alloy_primitives::hex::encode(&block.hash[..len]),
                if block.full_hash { "" } else { "..." }
            ));
        }
        Ok(())
    }
}

/// What the replica (`crate::replica`) may do with the sequencer: it orders and finalizes, the
/// sequencer executes, logs, commits and answers. Nothing else of the sequencer's state is
/// reachable from the replica.
impl Sequencer {
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// The next submission accepted at a door, if any.
    pub fn next_submission(&mut self) -> Option<Submission> {
        self.ingress.try_recv().ok()
    }

    /// Queues a transaction to be proposed (at the back).
    pub fn push_ready(&mut self, submission: Submission) {
        self.ready.push_back(submission);
    }

    /// Puts a transaction back at the front: the next proposal takes it first.
    pub fn push_ready_front(&mut self, submission: Submission) {
        self.ready.push_front(submission);
    }

    pub fn pop_ready(&mut self) -> Option<Submission> {
        self.ready.pop_front()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Removes the queued transactions with these hashes (a finalized block took them) and
    /// returns them.
    pub fn take_ready(&mut self, hashes: &HashSet<B256>) -> Vec<Submission> {
        if hashes.is_empty() || self.ready.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.ready.len());
        for s in self.ready.drain(..) {
            if hashes.contains(&s.tx.hash) {
                taken.push(s);
            } else {
                kept.push_back(s);
            }
        }
        self.ready = kept;
        taken
    }

    /// The largest mini-block record the log can take.
    pub fn max_mini_block_bytes(&self) -> usize {
        self.minilog.max_mini_block_bytes()
    }

    /// The open EVM block as committed here, if a mini-block has opened one.
    pub fn open_state(&self) -> Option<OpenState> {
        self.open.as_ref().map(|o| OpenState {
            ctx: o.ctx,
            opened_at_us: o.opened_at_us,
            gas_used: o.gas_used,
            logs: o.logs,
        })
    }

    /// Executes `txs` in block `ctx` on the committed state plus `diffs` (the not yet finalized
    /// ancestors of a proposal), without committing anything.
    pub fn execute_on(
        &self,
        ctx: &BlockContext,
        diffs: &[Arc<StateDiff>],
        txs: Vec<RecoveredTx>,
        block_gas_used: u64,
        block_logs: u64,
    ) -> Result<BatchResult, StateError> {
        self.executor.execute_batch(
            &self.chain.exec,
            ctx,
            self.chain.state_with(diffs),
            txs,
            block_gas_used,
            block_logs,
        )
    }

    /// Sends an outcome to its sink.
    pub fn answer(&mut self, reply: ReplySink, outcome: Outcome) {
        self.answers.send(reply, outcome);
    }

    /// Commits a finalized block's mini-block, executed before (`receipts`, `diff`): logged,
    /// made the newest state, answered to `replies`.
    pub fn commit_finalized(
        &mut self,
        record: &MiniBlockRecord,
        receipts: Vec<TxReceipt>,
        diff: StateDiff,
        (gas_used, logs): (u64, u64),
        mut replies: HashMap<B256, ReplySink>,
    ) -> Result<(), NodeError> {
        if self.open.is_none() {
            self.open_block(record.block, record.timestamp_us);
        }
        self.make_log_room_for(record)?;
        let included = record.transactions.iter().cloned().zip(receipts).collect();
        let logged = Logged {
            number: record.number,
            timestamp_us: record.timestamp_us,
            receipts_root: record.receipts_root,
        };
        self.commit_mini_block(
            included,
            diff,
            (gas_used, logs),
            Origin::Finalized(logged),
            &mut replies,
        )
    }

    /// Commits a finalized block's seal of EVM block `block_number`.
    pub fn seal_finalized(
        &mut self,
        block_number: u64,
        timestamp_us: u64,
    ) -> Result<(), NodeError> {
        let closed = self.close_block(true, Some(timestamp_us))?;
        if closed != block_number {
            return Err(NodeError::Recovery(format!(
                "finalized seal of block {block_number} closed block {closed}"
            )));
        }
        Ok(())
    }

    /// Room in the mini-block log for a replicated mini-block (see `make_log_room`; here the
    /// open block cannot be sealed early: the leader decided where it ends).
    fn make_log_room_for(&mut self, record: &MiniBlockRecord) -> Result<(), NodeError> {
        let needed =
            MiniLog::mini_block_record_bytes(record.transactions.iter().map(|t| t.raw.len()))
                + SEAL_RESERVE_BYTES;
        self.log_room(needed, false)
    }
}

/// Waits for the sealer to commit every closed block, syncs RocksDB, and returns the newest
/// mini-block that is now durable there.
fn sync_closed_blocks(chain: &Chain) -> Result<u64, NodeError> {
    let closed = chain.state.read().closed_head;
    chain.wait_sealed(closed);
    chain.store.sync()?;
    Ok(chain.state.read().head.last_mini_block)
}

/// Appends a record, syncing RocksDB first if the log must reuse space still needed.
fn append_durably(
    minilog: &mut MiniLog,
    chain: &Chain,
    durable_mini: &mut u64,
    record: &LogRecord,
) -> Result<(), NodeError> {
    // A mini-block record keeps room after it for its block's seal record.
    let reserve = match record {
        LogRecord::MiniBlock(_) => SEAL_RESERVE_BYTES,
        LogRecord::Seal { .. } => 0,
    };
    match minilog.append(record, *durable_mini, reserve) {
        Err(MiniLogError::Full { .. }) => {
            *durable_mini = sync_closed_blocks(chain)?;
            minilog.append(record, *durable_mini, reserve)?;
            Ok(())
        }
        other => Ok(other?),
    }
}
