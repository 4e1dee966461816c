//! The sequencer: one thread that cuts mini-blocks as soon as transactions wait, executes them,
//! makes them durable in the mini-block log, answers their receipts, and closes EVM blocks; and
//! the sealer beside it, which computes each closed block's state root, writes it to RocksDB and
//! publishes it.
//!
//! The sequencer's loop never sleeps on a fixed period: it blocks on the ingress queue until a
//! transaction arrives or the open block's seal is due, so a lone transaction executes as soon as
//! it lands. Closing a block costs one log write; the trie and RocksDB work happens on the sealer
//! thread, so the next block's mini-blocks execute meanwhile. Everything the next block needs
//! from its parent is known at close (see `ParentInfo`); BLOCKHASH of a block still being sealed
//! waits for it, so results never depend on timing.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc,
        mpsc::{SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Header, Transaction as _};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{Address, B256, Bloom, Bytes};
use alloy_trie::EMPTY_ROOT_HASH;
use rtchain_dataplane::tile::{CoreMap, TileHandle};
use rtchain_exec::{
    BlockContext, MiniBlock, MiniBlockHeader, ParallelConfig, ParallelExecutor, RecoveredTx,
    SealedBlock, StateDiff, TxError, TxLocation, TxOutcome, TxReceipt, receipt,
};
use rtchain_rpc::backend::{BackendError, ChainEvent, ReceiptView};
use rtchain_state::{
    Layers, LogRecord, MiniLog, MiniLogError, minilog::MiniBlockRecord, store::BlockCommit,
};

use super::{
    NodeError,
    chain::{Chain, ParentInfo, Recovered, Reply, Submission, next_block_context, now_us},
    fastpath::Answers,
};

mod replica;

pub use replica::ConsensusStats;

/// Room kept in the mini-block log for the open block's seal record.
const SEAL_RESERVE_BYTES: usize = 256;

/// How long the loop waits for work before checking for shutdown and idle blocks.
const MAX_WAIT: Duration = Duration::from_millis(50);

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
}

struct Sequencer {
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
}

/// A block closed by the sequencer, waiting for its state root, header and commit.
struct ClosedBlock {
    ctx: BlockContext,
    first_mini: u64,
    last_mini: u64,
    last_mini_hash: B256,
    txs: Vec<RecoveredTx>,
    receipts: Vec<TxReceipt>,
    minis: Vec<u64>,
    diff: StateDiff,
    gas_used: u64,
}

/// Bound on closed blocks waiting for the sealer: beyond it the sequencer waits, so a slow disk
/// slows execution instead of growing memory.
const MAX_BLOCKS_IN_FLIGHT: usize = 8;

/// Starts the sequencer (and, with `[consensus]` validators, its replication); returns its tile
/// and the replication counters.
pub fn spawn(
    chain: Arc<Chain>,
    recovered: Recovered,
    answers: Answers,
    config: &crate::config::NodeConfig,
) -> Result<(TileHandle<()>, Option<Arc<ConsensusStats>>), NodeError> {
    let cores = &config.cores;
    let core = cores.sequencer;
    let executor = executor(chain.sequencer.exec_threads, cores)?;
    let durable_mini = chain.state.read().head.last_mini_block;
    let chain_for_sealer = chain.clone();
    let mut sequencer = Sequencer {
        chain,
        minilog: recovered.minilog,
        ingress: recovered.ingress,
        open: None,
        queued: HashMap::new(),
        queued_total: 0,
        ready: VecDeque::new(),
        durable_mini,
        last_seal: Instant::now(),
        sealer: Some(Sealer::new(chain_for_sealer)),
        to_sealer: None,
        sealer_thread: None,
        answers,
        executor,
    };
    sequencer.replay(recovered.replay)?;
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
    let replica = if config.consensus.enabled() {
        Some(replica::Replica::open(config, &sequencer.chain)?)
    } else {
        None
    };
    let stats = replica.as_ref().map(|r| r.stats.clone());
    let tile = rtchain_dataplane::tile::spawn_tile("sequencer", core, move || {
        let result = match replica {
            Some(replica) => sequencer.run_replicated(replica),
            None => sequencer.run(),
        };
        if let Err(e) = result {
            // Storage or log failure: stop sequencing rather than acknowledge what cannot be
            // kept. RPC keeps serving reads and refuses new transactions.
            tracing::error!("sequencer stopped: {e}");
            sequencer.chain.shutdown();
        }
        // Let the sealer finish what was closed, then stop it.
        sequencer.to_sealer = None;
        if let Some(handle) = sequencer.sealer_thread.take() {
            let _ = handle.join();
        }
    })
    .map_err(|e| NodeError::Recovery(format!("cannot start the sequencer thread: {e}")))?;
    Ok((tile, stats))
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
                        .map(|tx| Submission { tx, reply: None })
                        .collect();
                    let included = self.execute(
                        submissions,
                        Some((m.number, m.timestamp_us, m.receipts_root)),
                    )?;
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

    fn run(&mut self) -> Result<(), NodeError> {
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
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
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
            self.make_log_room(&batch)?;
            if self.open.is_none() {
                let parent = self.chain.state.read().closed_parent;
                let at = now_us();
                let ctx = next_block_context(&self.chain.exec, &parent, at);
                self.open_block(ctx, at);
            }
            self.execute(std::mem::take(&mut batch), None)?;
        }
    }

    /// Makes sure the mini-block log can take this batch's record and a seal without
    /// overwriting anything not yet durable in RocksDB: first by syncing RocksDB, then, if the
    /// open block's own records fill the log, by sealing the open block before executing more.
    fn make_log_room(&mut self, batch: &[Submission]) -> Result<(), NodeError> {
        let needed = MiniLog::mini_block_record_bytes(batch.iter().map(|s| s.tx.raw.len()))
            + SEAL_RESERVE_BYTES;
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        self.sync_store()?;
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        if self.open.is_some() {
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
        });
        self.chain.state.write().open_block = Some(ctx);
    }

    /// Executes one mini-block. `replay` carries the logged number, time and receipts root when
    /// re-executing after a crash (nothing is logged or answered then). Returns whether anything
    /// was included.
    fn execute(
        &mut self,
        submissions: Vec<Submission>,
        replay: Option<(u64, u64, B256)>,
    ) -> Result<bool, NodeError> {
        let Some(open) = self.open.as_ref() else {
            return Ok(false);
        };
        let ctx = open.ctx;
        let (block_gas, block_logs) = (open.gas_used, open.logs);
        let mut replies: HashMap<B256, Reply> = HashMap::new();
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

        let mut included: Vec<(RecoveredTx, TxReceipt)> = Vec::new();
        let mut deferred = Vec::new();
        for outcome in result.outcomes {
            match outcome {
                TxOutcome::Included { tx, receipt, .. } => included.push((tx, receipt)),
                TxOutcome::Rejected { tx, error } => {
                    if replay.is_some() {
                        return Err(NodeError::Recovery(format!(
                            "replayed transaction {} was rejected: {error}",
                            tx.hash
                        )));
                    }
                    let reply = replies.remove(&tx.hash);
                    self.reject_or_queue(tx, error, reply);
                }
                TxOutcome::Deferred { tx } => {
                    if replay.is_some() {
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
                replay,
                replay.is_none(),
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

    fn commit_mini_block(
        &mut self,
        included: Vec<(RecoveredTx, TxReceipt)>,
        diff: StateDiff,
        (gas_used, logs): (u64, u64),
        replay: Option<(u64, u64, B256)>,
        log: bool,
        replies: &mut HashMap<B256, Reply>,
    ) -> Result<(), NodeError> {
        let (parent_hash, number) = {
            let state = self.chain.state.read();
            (state.last_mini_block_hash, state.last_mini_block + 1)
        };
        let (txs, receipts): (Vec<_>, Vec<_>) = included.into_iter().unzip();
        let receipts_root = receipt::receipts_root(&receipts);
        let timestamp_us = match replay {
            Some((logged_number, logged_time, logged_root)) => {
                if logged_number != number || logged_root != receipts_root {
                    return Err(NodeError::Recovery(format!(
                        "mini-block {logged_number} replayed to a different result (number {number}, receipts root {receipts_root} vs {logged_root})"
                    )));
                }
                logged_time
            }
            None => now_us(),
        };
        let open = self.open.as_mut().expect("an open block while executing");
        if log {
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
            let mut layers = Layers {
                diffs: state.layers.diffs.clone(),
            };
            layers.diffs.push(diff);
            state.layers = Arc::new(layers);
            state.layer_blocks.push(ctx.number);
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
                self.answers.send(reply, Ok(view));
            }
        }
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
    fn reject_or_queue(&mut self, tx: RecoveredTx, error: TxError, reply: Option<Reply>) {
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
                    if let Some(r) = old.reply {
                        self.answers.send(
                            r,
                            Err(BackendError::InvalidTransaction(
                                "replaced by a transaction with the same nonce".into(),
                            )),
                        );
                    }
                } else {
                    self.queued_total += 1;
                }
                return;
            }
            self.chain.pool.write().remove(&tx.hash);
            if let Some(reply) = reply {
                self.answers.send(reply, Err(BackendError::PoolFull(format!(
                    "too many queued transactions for sender {} (nonce gap; limit {} per sender)",
                    tx.sender, limits.max_queued_per_sender
                ))));
            }
            return;
        }
        self.chain.pool.write().remove(&tx.hash);
        if let Some(reply) = reply {
            self.answers.send(
                reply,
                Err(BackendError::InvalidTransaction(error.to_string())),
            );
        }
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
                if let Some(r) = old.reply {
                    self.answers.send(
                        r,
                        Err(BackendError::InvalidTransaction(format!(
                            "nonce too low: address {sender}, tx: {n} state: {next_nonce}"
                        ))),
                    );
                }
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
        let open = match self.open.take() {
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
}

/// Computes state roots, builds headers and commits closed blocks, in order, beside the
/// sequencer: the hot path never waits for the trie or RocksDB.
struct Sealer {
    chain: Arc<Chain>,
}

impl Sealer {
    fn new(chain: Arc<Chain>) -> Self {
        Self { chain }
    }

    /// State root, header, one RocksDB batch, then publication: the block, its receipts with
    /// their block hash, and the removal of its layers from the newest state.
    fn seal(&mut self, closed: ClosedBlock) -> Result<(), NodeError> {
        let started = Instant::now();
        let (parent, parent_hash) = {
            let state = self.chain.state.read();
            (state.head_header.clone(), state.head.hash)
        };
        let ctx = closed.ctx;
        if ctx.number != parent.number + 1 {
            return Err(NodeError::Recovery(format!(
                "sealing block {} on top of block {}",
                ctx.number, parent.number
            )));
        }
        let (state_root, trie) = {
            let view = self.chain.store.view();
            rtchain_state::state_root::apply_diff(&view, parent.state_root, &closed.diff)?
        };
        let mut bloom = Bloom::ZERO;
        for r in &closed.receipts {
            bloom.accrue_bloom(r.receipt.logs_bloom());
        }
        let header = Header {
            parent_hash,
            ommers_hash: EMPTY_OMMER_ROOT_HASH,
            beneficiary: ctx.beneficiary,
            state_root,
            transactions_root: receipt::transactions_root(&closed.txs),
            receipts_root: if closed.receipts.is_empty() {
                EMPTY_ROOT_HASH
            } else {
                receipt::receipts_root(&closed.receipts)
            },
            logs_bloom: bloom,
            difficulty: Default::default(),
            number: ctx.number,
            gas_limit: ctx.gas_limit,
            gas_used: closed.gas_used,
            timestamp: ctx.timestamp,
            // Links the EVM block to the mini-block chain, and lets a restart continue it.
            extra_data: Bytes::copy_from_slice(closed.last_mini_hash.as_slice()),
            mix_hash: ctx.prevrandao,
            nonce: Default::default(),
            base_fee_per_gas: Some(ctx.base_fee),
            withdrawals_root: Some(EMPTY_ROOT_HASH),
            blob_gas_used: Some(0),
            excess_blob_gas: Some(0),
            parent_beacon_block_root: Some(B256::ZERO),
            requests_hash: Some(EMPTY_REQUESTS_HASH),
            ..Default::default()
        };
        let hash = header.hash_slow();
        self.chain.store.commit_block(&BlockCommit {
            header: &header,
            hash,
            transactions: &closed.txs,
            receipts: &closed.receipts,
            mini_blocks: &closed.minis,
            last_mini_block: closed.last_mini,
            diff: &closed.diff,
            trie: &trie,
        })?;
        let accounts = closed.diff.accounts.len();
        let block = Arc::new(SealedBlock {
            header: header.clone(),
            hash,
            transactions: closed.txs,
            receipts: closed.receipts,
            mini_blocks: closed.first_mini..=closed.last_mini,
        });
        // Publish in an order readers can rely on: the block first (so a receipt's hash
        // resolves), then the head and the layers (RocksDB holds them now).
        self.chain.push_recent(block.clone());
        {
            let mut state = self.chain.state.write();
            state.head = rtchain_state::store::Head {
                number: ctx.number,
                hash,
                last_mini_block: closed.last_mini,
            };
            state.head_header = header;
            let sealed_layers = state
                .layer_blocks
                .iter()
                .take_while(|&&b| b == ctx.number)
                .count();
            if sealed_layers > 0 {
                state.layers = Arc::new(Layers {
                    diffs: state.layers.diffs[sealed_layers..].to_vec(),
                });
                state.layer_blocks.drain(..sealed_layers);
            }
            for tx in &block.transactions {
                state.preconfirmed.remove(&tx.hash);
            }
        }
        tracing::debug!(
            block = ctx.number,
            txs = block.transactions.len(),
            accounts,
            seal_us = started.elapsed().as_micros() as u64,
            "sealed"
        );
        self.chain.sealed.send_replace(ctx.number);
        self.chain.notify_sealed();
        let _ = self.chain.events.send(ChainEvent::Block(block));
        Ok(())
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
