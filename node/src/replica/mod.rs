//! The node as one validator (or a follower) of a replicated chain (`[consensus]` in the
//! config).
//!
//! The replica runs on the sequencer's thread and drives the consensus engine
//! (`rtchain-consensus`, a pure state machine): it feeds the engine peers' messages, timer
//! expiries and its own execution results, and performs the engine's effects. It orders and
//! finalizes; the [`Sequencer`] executes, logs, commits and answers, through the interface it
//! offers the replica. So execution and consensus share no locks.
//!
//! - [`payload`]: what a consensus block carries and the post-state commitment.
//! - [`speculation`]: proposals executed on their parent's state before they are final; the
//!   leader's proposal built from the ready queue.
//! - `delivery`: committing a finalized block, and finishing one a crash interrupted.
//! - [`sync`]: catching up from peers' stored finalized blocks; followers.
//! - [`gossip`]: transactions accepted here go to every validator.
//! - [`setup`]: keys, peers, anchor, vote log, transport.
//!
//! **Durability.** Votes go to the vote log (one sync per engine step) before they are sent; a
//! block we vote for is stored (synced) before we vote; the anchor (the last delivered block)
//! is written after each delivery. After a crash the mini-block log replays what was
//! committed, the stored blocks are handed back to the engine, and any block the anchor had not
//! recorded yet is recognised as applied by its mini-block and block numbers.
//!
//! A receipt is only ever sent for a finalized transaction.

mod delivery;
mod gossip;
mod payload;
mod setup;
mod speculation;
mod stats;
mod sync;
mod waiters;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy_primitives::B256;
use rtchain_consensus::{
    Block, Certificate, Digest, Effect, Engine, Event, Height, Msg, Target, View, VoteLog,
    votelog::FileStorage,
};
use rtchain_exec::{RecoveredTx, StateDiff};
use rtchain_state::LogRecord;

pub use self::payload::diff_digest;
pub use self::stats::ConsensusStats;
use self::{
    gossip::Gossip,
    payload::{
        Invalid, KIND_ENGINE, KIND_OUTPUT_SIGNATURE, KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE,
        KIND_TXS, Tip, block_key, decode_output_signature, encode_output_signature, encode_payload,
    },
    setup::{EngineParts, StoredBlocks, build_engine},
    speculation::{Point, Spec, build_records, execute_records, records_txs},
    sync::{CatchUp, FOLLOW_POLL},
    waiters::Waiters,
};
use crate::{
    NodeError,
    chain::Chain,
    config::NodeConfig,
    outcome::{Failure, Outcome, Submission},
    sequencer::Sequencer,
    transport::Transport,
};

#[derive(Clone, Copy)]
struct ProposeRequest {
    view: View,
    parent: Digest,
    parent_view: View,
    height: Height,
    since: Instant,
}

/// The replication state; owned by the sequencer's thread.
pub struct Replica {
    /// `None` on a follower: it votes on nothing and takes finalized blocks from peers.
    engine: Option<Engine>,
    votelog: Option<VoteLog<FileStorage>>,
    engine_parts: EngineParts,
    me: u16,
    transport: Transport,
    /// Validators; the peers after them are followers.
    n: usize,
    timer: Option<(View, Instant)>,
    proposing: Option<ProposeRequest>,
    to_verify: Vec<Block>,
    spec: HashMap<Digest, Spec>,
    tip: Tip,
    /// Clients waiting here for transactions they submitted here.
    waiters: Waiters,
    gossip: Gossip,
    /// Blocks stored under `consensus/block/` (voted for or proposed, not yet settled).
    stored: StoredBlocks,
    /// Transactions of our proposals not finalized yet, by digest, with the height.
    own: HashMap<Digest, (Height, Vec<RecoveredTx>)>,
    first_seen: HashMap<Digest, Instant>,
    sync_blocks: bool,
    propose_idle: Duration,
    stats: Arc<ConsensusStats>,
    catch_up: CatchUp,
}

impl Replica {
    /// Opens the vote log, the stored blocks and the anchor, binds the transport, and builds the
    /// engine.
    pub fn open(config: &NodeConfig, chain: &Chain) -> Result<Self, NodeError> {
        let s = setup::open(config, chain)?;
        Ok(Self {
            engine: s.engine,
            votelog: s.votelog,
            engine_parts: s.engine_parts,
            me: s.me,
            transport: s.transport,
            n: s.n,
            timer: None,
            proposing: None,
            to_verify: Vec::new(),
            spec: HashMap::new(),
            tip: s.tip,
            waiters: Waiters::default(),
            gossip: Gossip::default(),
            stored: s.stored,
            own: HashMap::new(),
            first_seen: HashMap::new(),
            sync_blocks: s.sync_blocks,
            propose_idle: s.propose_idle,
            stats: s.stats,
            catch_up: CatchUp::default(),
        })
    }

    /// Replication counters, for `rtchain_nodeStats`.
    pub fn stats(&self) -> Arc<ConsensusStats> {
        self.stats.clone()
    }

    /// The loop of a validator or follower: peers' messages, timers, submissions, proposals.
    /// At exit, everyone still waiting here is told the node stopped.
    pub fn run(mut self, seq: &mut Sequencer) -> Result<(), NodeError> {
        let result = self.run_loop(seq);
        for reply in self.waiters.drain() {
            seq.answer(reply, Outcome::Failed(Failure::Stopped));
        }
        result
    }

    fn run_loop(&mut self, seq: &mut Sequencer) -> Result<(), NodeError> {
        if self.finish_interrupted_deliveries(seq)? {
            self.rebuild_engine(seq, None)?;
        } else if let Some(engine) = &mut self.engine {
            let mut out = Vec::new();
            engine.start(&mut out);
            self.perform(seq, out)?;
        }
        let chain = seq.chain().clone();
        let mut inbox = Vec::new();
        loop {
            if chain.is_shut_down() {
                return Ok(());
            }
            let now = Instant::now();
            if let Some((view, at)) = self.timer
                && now >= at
            {
                self.timer = None;
                self.step(seq, Event::Timeout(view))?;
                continue;
            }
            // Everything that arrived, peers first (they move the chain), then submissions.
            let mut busy = false;
            inbox.clear();
            self.transport.recv(&mut inbox);
            for (from, bytes) in inbox.drain(..) {
                busy = true;
                self.on_peer_bytes(seq, from, &bytes)?;
            }
            while let Some(s) = seq.next_submission() {
                busy = true;
                self.accept_submission(seq, s);
            }
            self.verify_ready(seq)?;
            if self.propose_if_due(seq)? {
                continue;
            }
            self.request_sync_if_behind(&chain);
            let others = self.others();
            self.gossip.flush(&mut self.transport, &others);
            if let Some(settlement) = &chain.settlement {
                // Our output-root signatures, to every validator (whoever posts needs a
                // quorum of them).
                for (block, root, signature) in settlement.take_outgoing() {
                    let msg = encode_output_signature(block, root, &signature);
                    self.transport.send(&others, &msg);
                }
            }
            self.transport.flush();
            if busy {
                continue;
            }
            let mut wait = Duration::from_millis(50);
            if let Some((_, at)) = self.timer {
                wait = wait.min(at.saturating_duration_since(now));
            }
            // Only while the proposal could be built: waiting for its parent is the peers' job.
            if let Some(p) = &self.proposing
                && self.base_of(seq, &p.parent).is_some()
            {
                wait = wait.min((p.since + self.propose_idle).saturating_duration_since(now));
            }
            if self.is_follower() {
                wait = wait.min(FOLLOW_POLL);
            }
            self.transport.wait(wait);
        }
    }

    /// Every validator but us.
    fn others(&self) -> Vec<u16> {
        (0..self.n as u16).filter(|&i| i != self.me).collect()
    }

    fn is_follower(&self) -> bool {
        self.engine.is_none()
    }

    /// A transaction admitted at one of our doors: its waiter is kept here, it goes to every
    /// validator by gossip, and (on a validator) into our ready queue for when we lead.
    fn accept_submission(&mut self, seq: &mut Sequencer, s: Submission) {
        if let Some(reply) = s.reply {
            let nonce = alloy_consensus::Transaction::nonce(&s.tx.envelope);
            self.waiters.insert(s.tx.hash, s.tx.sender, nonce, reply);
        }
        self.gossip.push(s.tx.raw.clone());
        if !self.is_follower() {
            seq.push_ready(Submission::unanswered(s.tx));
        }
    }

    fn on_peer_bytes(
        &mut self,
        seq: &mut Sequencer,
        from: u16,
        bytes: &[u8],
    ) -> Result<(), NodeError> {
        match bytes.split_first() {
            Some((&KIND_ENGINE, msg)) => {
                // Only validators speak consensus; a follower listens to none of it.
                let n = self.n;
                let Some(engine) = self.engine.as_mut().filter(|_| (from as usize) < n) else {
                    return Ok(());
                };
                let mut out = Vec::new();
                engine.handle_bytes(from, msg, &mut out);
                self.perform(seq, out)
            }
            Some((&KIND_SYNC_REQUEST, req)) => {
                let chain = seq.chain();
                let head = chain.state.read().head.number;
                self.catch_up
                    .serve(&chain.store, head, &mut self.transport, from, req)?;
                Ok(())
            }
            Some((&KIND_SYNC_RESPONSE, resp)) => self.apply_sync(seq, from, resp),
            Some((&KIND_TXS, txs)) => {
                if !self.is_follower() {
                    gossip::accept(seq, txs);
                }
                Ok(())
            }
            Some((&KIND_OUTPUT_SIGNATURE, msg)) => {
                // The book checks the signer is a registered validator and the root ours.
                if let (Some(settlement), Some((block, root, signature))) =
                    (&seq.chain().settlement, decode_output_signature(msg))
                    && (from as usize) < self.n
                {
                    settlement.on_signature(block, root, signature);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step(&mut self, seq: &mut Sequencer, event: Event) -> Result<(), NodeError> {
        let Some(engine) = &mut self.engine else {
            return Ok(());
        };
        let mut out = Vec::new();
        engine.handle(event, &mut out);
        self.perform(seq, out)
    }

    /// Performs one step's effects: every `Persist` first with one sync, then the rest in order.
    fn perform(&mut self, seq: &mut Sequencer, effects: Vec<Effect>) -> Result<(), NodeError> {
        let mut persisted = false;
        for e in &effects {
            if let Effect::Persist(record) = e {
                self.votelog
                    .as_mut()
                    .expect("a validator has a vote log")
                    .append(record)
                    .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
                persisted = true;
            }
        }
        if persisted {
            self.votelog
                .as_mut()
                .expect("a validator has a vote log")
                .sync()
                .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
        }
        for e in effects {
            match e {
                Effect::Persist(_) => {}
                Effect::Send(target, msg) => {
                    let to: Vec<u16> = match target {
                        Target::All => self.others(),
                        Target::One(i) => vec![i],
                    };
                    let mut bytes = vec![KIND_ENGINE];
                    bytes.extend_from_slice(&msg.encode());
                    self.transport.send(&to, &bytes);
                }
                Effect::Deliver(finalized) => self.deliver(seq, finalized)?,
                Effect::ScheduleTimeout { view, after } => {
                    self.timer = Some((view, Instant::now() + after));
                }
                Effect::Verify(block) => {
                    self.first_seen
                        .entry(block.digest())
                        .or_insert_with(Instant::now);
                    self.to_verify.push(block);
                }
                Effect::Propose {
                    view,
                    parent,
                    parent_view,
                    height,
                } => {
                    self.proposing = Some(ProposeRequest {
                        view,
                        parent,
                        parent_view,
                        height,
                        since: Instant::now(),
                    });
                }
            }
        }
        if let Some(engine) = &self.engine {
            let mut s = self.stats.inner.lock();
            s.view = engine.view();
            s.engine = engine.stats().clone();
        }
        Ok(())
    }

    /// The tip's execution point: the committed chain as it stands.
    fn tip_point(&self, seq: &Sequencer) -> Point {
        let state = seq.chain().state.read();
        Point {
            last_mini: state.last_mini_block,
            last_mini_hash: state.last_mini_block_hash,
            open: seq.open_state(),
            closed_parent: state.closed_parent,
            commitment: self.tip.commitment,
        }
    }

    /// The point after `parent` and the diffs from the tip to it; `None` if `parent` is neither
    /// the tip nor an executed descendant of it (not executed yet, or on a dead fork).
    fn base_of(&self, seq: &Sequencer, parent: &Digest) -> Option<(Point, Vec<Arc<StateDiff>>)> {
        if *parent == self.tip.digest {
            return Some((self.tip_point(seq), Vec::new()));
        }
        let mut ancestors = Vec::new();
        let mut cursor = *parent;
        while cursor != self.tip.digest {
            let s = self.spec.get(&cursor)?;
            if s.height <= self.tip.height {
                return None;
            }
            ancestors.push(cursor);
            cursor = s.parent;
        }
        let point = self.spec.get(parent)?.point;
        let mut diffs = Vec::new();
        for d in ancestors.iter().rev() {
            diffs.extend(self.spec[d].diffs.iter().cloned());
        }
        Some((point, diffs))
    }

    /// Stores a block before we vote for it or propose it: a notarized block stays available.
    fn store_block(&mut self, seq: &Sequencer, block: &Block) -> Result<(), NodeError> {
        let digest = block.digest();
        seq.chain().store.put_consensus(
            &block_key(block.height(), &digest),
            &Msg::Block(Box::new(block.clone())).encode(),
            self.sync_blocks,
        )?;
        self.stored.insert((block.height(), digest));
        Ok(())
    }

    /// Executes the blocks waiting for verification whose parent state is known.
    fn verify_ready(&mut self, seq: &mut Sequencer) -> Result<(), NodeError> {
        loop {
            let Some(i) = self.to_verify.iter().position(|b| {
                b.height() <= self.tip.height || self.base_of(seq, &b.parent()).is_some()
            }) else {
                return Ok(());
            };
            let block = self.to_verify.swap_remove(i);
            let digest = block.digest();
            let ok = if block.height() <= self.tip.height {
                false
            } else {
                let (base, diffs) = self.base_of(seq, &block.parent()).expect("checked above");
                match execute_records(seq, base, diffs, &block, false) {
                    Ok(spec) if spec.point.commitment == block.commitment() => {
                        self.spec.insert(digest, spec);
                        self.store_block(seq, &block)?;
                        true
                    }
                    Ok(_) => {
                        tracing::warn!(
                            height = block.height(),
                            "proposal's post-state commitment differs from ours"
                        );
                        self.stats.inner.lock().rejected_payloads += 1;
                        false
                    }
                    Err(Invalid(why)) => {
                        tracing::warn!(height = block.height(), "invalid proposal: {why}");
                        self.stats.inner.lock().rejected_payloads += 1;
                        false
                    }
                }
            };
            self.step(seq, Event::Verified { digest, ok })?;
        }
    }

    /// Puts the transactions of records we did not propose back at the front of the queue.
    fn requeue(seq: &mut Sequencer, records: &[LogRecord]) {
        for tx in records_txs(records).into_iter().rev() {
            seq.push_ready_front(Submission::unanswered(tx));
        }
    }

    /// As leader: once the parent's state is known and transactions wait (or the idle wait is
    /// over), builds the payload from the ready queue and proposes it. Returns whether it did.
    fn propose_if_due(&mut self, seq: &mut Sequencer) -> Result<bool, NodeError> {
        let Some(request) = self.proposing else {
            return Ok(false);
        };
        if self.engine.as_ref().is_none_or(|e| request.view < e.view()) {
            self.proposing = None;
            return Ok(false);
        }
        // Empty blocks are paced by `propose_idle`, except right after views were nullified
        // (a crashed or slow leader): then the chain has waited long enough already.
        let after_nullified = request.view > request.parent_view + 1;
        if !seq.has_ready() && !after_nullified && request.since.elapsed() < self.propose_idle {
            return Ok(false);
        }
        let Some((base, diffs)) = self.base_of(seq, &request.parent) else {
            return Ok(false);
        };
        self.proposing = None;
        let started = Instant::now();
        let records = build_records(seq, &mut self.waiters, base, diffs.clone());
        let payload = encode_payload(&records);
        // Our own payload goes through the replicas' path: what we propose is exactly what they
        // check. (This executes the transactions a second time on the leader.)
        let stub = Block::new(
            request.view,
            request.parent_view,
            request.height,
            request.parent,
            B256::ZERO,
            payload.clone(),
        );
        let mut spec = match execute_records(seq, base, diffs, &stub, true) {
            Ok(spec) => spec,
            Err(Invalid(why)) => {
                tracing::error!("our own proposal does not execute: {why}");
                Self::requeue(seq, &records);
                return Ok(false);
            }
        };
        let commitment = spec.point.commitment;
        let own_txs: Vec<RecoveredTx> = records_txs(&records);
        let block = Block::new(
            request.view,
            request.parent_view,
            request.height,
            request.parent,
            commitment,
            payload.clone(),
        );
        let digest = block.digest();
        spec.parent = request.parent;
        spec.height = request.height;
        self.spec.insert(digest, spec);
        // Stored before our notarize vote (it rides in the proposal) leaves the node.
        self.store_block(seq, &block)?;
        self.first_seen.insert(digest, started);
        if !own_txs.is_empty() {
            self.own.insert(digest, (request.height, own_txs));
        }
        self.step(
            seq,
            Event::ProposalReady {
                view: request.view,
                payload,
                commitment,
            },
        )?;
        Ok(true)
    }

    /// Asks peers for finalized blocks when behind (a validator) or always (a follower).
    fn request_sync_if_behind(&mut self, chain: &Chain) {
        match &self.engine {
            Some(engine) => {
                let known = engine.finalized().1;
                let behind = known > self.tip.height + sync::SYNC_BEHIND_HEIGHTS;
                chain
                    .catch_up
                    .set_behind_heights(behind, || chain.state.read().head.number);
                self.catch_up.request_if_behind(
                    &mut self.transport,
                    self.me,
                    self.n,
                    self.tip.height,
                    known,
                );
            }
            None => self
                .catch_up
                .follow(&mut self.transport, self.n, self.tip.height),
        }
    }

    /// Checks a sync response (see [`CatchUp::check_answer`]), commits its blocks, and restarts
    /// the engine from the new tip (its votes come back from the vote log).
    fn apply_sync(&mut self, seq: &mut Sequencer, from: u16, resp: &[u8]) -> Result<(), NodeError> {
        let Some(answer) = self.catch_up.check_answer(
            from,
            resp,
            self.tip.height,
            self.tip.digest,
            &self.engine_parts.config.validators,
        ) else {
            return Ok(());
        };
        self.stats.inner.lock().sync_rounds += 1;
        let count = answer.blocks.len();
        // Known before the blocks execute: how far this catch-up goes (`eth_syncing`).
        let chain = seq.chain().clone();
        chain
            .catch_up
            .heard(answer.peer_head, chain.state.read().head.number);
        for (i, block) in answer.blocks.into_iter().enumerate() {
            // Only the last block's certificate was checked: the others are not kept (we would
            // archive and serve them to peers as if they were).
            let finalization = (i + 1 == count).then(|| answer.certificate.clone());
            self.deliver(
                seq,
                rtchain_consensus::Finalized {
                    block,
                    finalization,
                },
            )?;
        }
        tracing::info!(
            "caught up {count} finalized blocks from validator {from}; now at height {}",
            self.tip.height
        );
        self.catch_up.caught_up_to(self.tip.height);
        self.rebuild_engine(seq, Some(answer.certificate))
    }

    /// The engine cannot be moved forward from outside: builds it again on the current tip.
    /// Everything the old log holds was written through the same file (a second handle reads it
    /// all), so the replay sees every vote we cast.
    fn rebuild_engine(
        &mut self,
        seq: &mut Sequencer,
        cert: Option<Certificate>,
    ) -> Result<(), NodeError> {
        if self.is_follower() {
            return Ok(());
        }
        let (engine, votelog, stored) =
            build_engine(&seq.chain().store, &self.engine_parts, self.tip, cert)?;
        self.timer = None;
        self.proposing = None;
        self.to_verify.clear();
        self.spec.clear();
        let mut out = Vec::new();
        self.engine.insert(engine).start(&mut out);
        self.votelog = Some(votelog);
        self.stored = stored;
        self.perform(seq, out)
    }
}
