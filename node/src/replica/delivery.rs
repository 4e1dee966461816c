//! Delivery: committing a finalized block through the sequencer (its mini-blocks to the log and
//! the state, its receipts to whoever waits here, its seals to the sealer), then the anchor; and
//! finishing a delivery that a crash interrupted.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use alloy_primitives::{Address, B256};
use rtchain_consensus::{Block, Digest, Finalized, Msg};
use rtchain_state::LogRecord;

use super::{
    Replica,
    payload::{
        ANCHOR_KEY, DELIVERING_KEY, Invalid, Tip, block_key, decode_payload, encode_final,
        encode_payload, final_key,
    },
    speculation::{Step, execute_records},
};
use crate::{NodeError, outcome::Submission, sequencer::Sequencer};

impl Replica {
    /// Commits a finalized block that extends our tip.
    pub(super) fn deliver(
        &mut self,
        seq: &mut Sequencer,
        finalized: Finalized,
    ) -> Result<(), NodeError> {
        let chain = seq.chain().clone();
        let block = finalized.block;
        let digest = block.digest();
        if block.parent() != self.tip.digest {
            return Err(NodeError::Recovery(format!(
                "finalized block at height {} does not extend our tip at height {}",
                block.height(),
                self.tip.height
            )));
        }
        let spec = match self.spec.remove(&digest) {
            Some(spec) if spec.parent == self.tip.digest => spec,
            _ => {
                // Never verified here (fetched after the fact, or restarted), or already
                // partly applied before a crash: execute what is not applied yet.
                let records = decode_payload(block.payload()).map_err(|Invalid(why)| {
                    NodeError::Recovery(format!("finalized block: {why}"))
                })?;
                let fresh: Vec<LogRecord> = records
                    .iter()
                    .filter(|r| !chain.is_committed(r))
                    .cloned()
                    .collect();
                let partly = fresh.len() != records.len();
                let stub = Block::new(
                    block.view(),
                    block.parent_view(),
                    block.height(),
                    block.parent(),
                    block.commitment(),
                    encode_payload(&fresh),
                );
                let base = self.tip_point(seq);
                let mut spec = execute_records(seq, base, Vec::new(), &stub, true).map_err(
                    |Invalid(why)| {
                        NodeError::Recovery(format!(
                            "finalized block at height {} does not execute here: {why}",
                            block.height()
                        ))
                    },
                )?;
                if partly {
                    // Its first records were committed before a crash: the commitment of the
                    // whole block is the finalized one.
                    spec.point.commitment = block.commitment();
                }
                spec
            }
        };
        if spec.point.commitment != block.commitment() {
            return Err(NodeError::Recovery(format!(
                "finalized block at height {} has post-state commitment {} but our execution gives {}: this node diverged; stopping",
                block.height(),
                block.commitment(),
                spec.point.commitment
            )));
        }
        let mut txs_finalized = 0;
        // Marked before anything of the block is committed (survives a process crash; the log
        // records themselves are synced): a restart finishes exactly this block.
        chain
            .store
            .put_consensus(DELIVERING_KEY, digest.as_slice(), false)?;
        // Transactions of this block that sit in our queue (gossip queued them everywhere):
        // out of the queue, their waiters (a queued future nonce keeps its reply there) to the
        // ones the commit below answers.
        let in_block: HashSet<B256> = spec
            .steps
            .iter()
            .flat_map(|step| match step {
                Step::Mini { record, .. } => record.transactions.iter().map(|t| t.hash).collect(),
                Step::Seal { .. } => Vec::new(),
            })
            .collect();
        for s in seq.take_ready(&in_block) {
            if let Some(reply) = s.reply {
                self.waiters.restore(s.tx.hash, reply);
            }
        }
        let mut included_nonces: Vec<(Address, u64, B256)> = Vec::new();
        for step in spec.steps {
            match step {
                Step::Mini {
                    record,
                    receipts,
                    diff,
                    gas_used,
                    logs,
                } => {
                    txs_finalized += record.transactions.len() as u64;
                    let mut replies = HashMap::new();
                    for tx in &record.transactions {
                        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
                        included_nonces.push((tx.sender, nonce, tx.hash));
                        if let Some(reply) = self.waiters.remove(&tx.hash) {
                            replies.insert(tx.hash, reply);
                        }
                    }
                    let diff = std::sync::Arc::try_unwrap(diff).unwrap_or_else(|d| (*d).clone());
                    seq.commit_finalized(&record, receipts, diff, (gas_used, logs), replies)?;
                }
                Step::Seal {
                    block_number,
                    timestamp_us,
                } => seq.seal_finalized(block_number, timestamp_us)?,
            }
        }
        for (reply, outcome) in self.waiters.replaced(&included_nonces) {
            seq.answer(reply, outcome);
        }
        let height = block.height();
        self.tip = Tip {
            view: block.view(),
            height,
            digest,
            commitment: spec.point.commitment,
        };
        chain
            .store
            .put_consensus(ANCHOR_KEY, &self.tip.encode(), false)?;
        chain.store.delete_consensus(DELIVERING_KEY)?;
        // Kept for peers that catch up (see `sync`).
        chain.store.put_consensus(
            &final_key(height),
            &encode_final(&block, finalized.finalization.as_ref()),
            false,
        )?;
        // Stored blocks at or below the new tip are settled. Tracked in memory: scanning the
        // prefix would walk every deletion tombstone RocksDB still holds.
        while let Some(&(h, d)) = self.stored.first()
            && h <= height
        {
            chain.store.delete_consensus(&block_key(h, &d))?;
            self.stored.pop_first();
        }
        self.spec.retain(|_, s| s.height > height);
        // Our proposals at this height or below that did not make it: their transactions go
        // back to the queue (if another block took them, their nonces now refuse them).
        let abandoned: Vec<Digest> = self
            .own
            .iter()
            .filter(|(_, (h, _))| *h <= height)
            .map(|(d, _)| *d)
            .collect();
        for d in abandoned {
            if let Some((_, txs)) = self.own.remove(&d)
                && d != digest
            {
                for tx in txs.into_iter().rev() {
                    seq.push_ready_front(Submission::unanswered(tx));
                }
            }
        }
        self.to_verify.retain(|b| b.height() > height);
        let latency = self.first_seen.remove(&digest).map(|t| t.elapsed());
        self.first_seen
            .retain(|_, t| t.elapsed() < Duration::from_secs(60));
        let mut s = self.stats.inner.lock();
        s.finalized_height = height;
        s.blocks_delivered += 1;
        s.txs_finalized += txs_finalized;
        if let Some(latency) = latency {
            let _ = s.finalize_us.record((latency.as_micros() as u64).max(1));
        }
        Ok(())
    }

    /// A crash in the middle of a delivery leaves a block whose first records are committed
    /// (the mini-block log replayed them) while the anchor still names its parent. Only
    /// finalized blocks are ever committed, so such a stored block is final: finish it (and any
    /// such successor) before the engine starts. Returns whether the tip moved.
    pub(super) fn finish_interrupted_deliveries(
        &mut self,
        seq: &mut Sequencer,
    ) -> Result<bool, NodeError> {
        let chain = seq.chain().clone();
        let mut moved = false;
        loop {
            // Only the block whose delivery was marked as begun: another stored block of the
            // same height (a nullified view's) may share its first mini-block number.
            let Some(marked) = chain.store.get_consensus(DELIVERING_KEY)? else {
                return Ok(moved);
            };
            let mut next = None;
            if marked.len() == 32 {
                let digest = B256::from_slice(&marked);
                let key = block_key(self.tip.height + 1, &digest);
                if let Some(bytes) = chain.store.get_consensus(&key)?
                    && let Ok(Msg::Block(block)) = Msg::decode(&bytes)
                    && block.parent() == self.tip.digest
                    && block.digest() == digest
                    && let Ok(records) = decode_payload(block.payload())
                    && records.iter().any(|r| chain.is_committed(r))
                {
                    next = Some(*block);
                }
            }
            let Some(block) = next else {
                return Ok(moved);
            };
            tracing::info!(
                height = block.height(),
                "finishing the delivery a crash interrupted"
            );
            self.deliver(
                seq,
                Finalized {
                    block,
                    finalization: None,
                },
            )?;
            moved = true;
        }
    }
}
