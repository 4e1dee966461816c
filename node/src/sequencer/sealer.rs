//! The sealer: computes each closed EVM block's state root, builds its header, commits it to
//! RocksDB in one write batch and publishes it, in order, on its own thread beside the
//! sequencer, so that the hot path never waits for the trie or RocksDB.

use std::{sync::Arc, time::Instant};

use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Header};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{B256, Bloom, Bytes};
use alloy_trie::EMPTY_ROOT_HASH;
use rtchain_exec::{
    BlockContext, ChainEvent, RecoveredTx, SealedBlock, StateDiff, TxReceipt, receipt,
};
use rtchain_state::{Layers, store::BlockCommit};

use crate::{
    NodeError,
    chain::Chain,
    settlement::{self, MiniLayout},
};

/// A block closed by the sequencer, waiting for its state root, header and commit.
pub struct ClosedBlock {
    pub ctx: BlockContext,
    pub first_mini: u64,
    pub last_mini: u64,
    pub last_mini_hash: B256,
    pub txs: Vec<RecoveredTx>,
    pub receipts: Vec<TxReceipt>,
    pub minis: Vec<u64>,
    pub diff: StateDiff,
    pub gas_used: u64,
    /// When the block opened, and its mini-blocks (number, time, transactions): what a batch
    /// posts so that the block can be rebuilt from L1.
    pub opened_at_us: u64,
    pub layout: Vec<MiniLayout>,
}

/// Computes state roots, builds headers and commits closed blocks, in order, beside the
/// sequencer: the hot path never waits for the trie or RocksDB.
pub struct Sealer {
    chain: Arc<Chain>,
    /// The message passer's storage root after the newest sealed block (part of every output
    /// root), followed across blocks from the trie writes.
    message_passer_root: B256,
}

impl Sealer {
    pub fn new(chain: Arc<Chain>) -> Result<Self, NodeError> {
        let root = {
            let state = chain.state.read();
            state.head_header.state_root
        };
        let message_passer_root = rtchain_state::state_root::storage_root(
            &chain.store.view(),
            root,
            rtchain_l1::contracts::MESSAGE_PASSER_ADDRESS,
        )?;
        Ok(Self {
            chain,
            message_passer_root,
        })
    }

    /// State root, header, one RocksDB batch, then publication: the block, its receipts with
    /// their block hash, and the removal of its layers from the newest state.
    pub fn seal(&mut self, closed: ClosedBlock) -> Result<(), NodeError> {
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
        let (state_root, trie, parent_beacon_root) = {
            let view = self.chain.store.view();
            // The store holds the parent's final state: what the block's EIP-4788 call read.
            let beacon_root = rtchain_exec::system::parent_beacon_root(&self.chain.exec, &view)?;
            let (root, trie) =
                rtchain_state::state_root::apply_diff(&view, parent.state_root, &closed.diff)?;
            (root, trie, beacon_root)
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
            parent_beacon_block_root: Some(parent_beacon_root),
            requests_hash: Some(EMPTY_REQUESTS_HASH),
            ..Default::default()
        };
        let hash = header.hash_slow();
        let passer = rtchain_l1::contracts::MESSAGE_PASSER_ADDRESS;
        if let Some((_, root)) = trie.storage_roots.iter().find(|(a, _)| *a == passer) {
            self.message_passer_root = *root;
        }
        let mut entries = vec![(
            settlement::layout_key(ctx.number),
            settlement::encode_layout(closed.opened_at_us, &closed.layout),
        )];
        // Nodes shorter than 32 bytes live inside their parent; the rest by hash, for proofs
        // against any later output.
        for node in rtchain_state::state_root::storage_nodes_written(&trie, &passer) {
            if node.len() >= 32 {
                entries.push((
                    settlement::node_key(alloy_primitives::keccak256(node)),
                    node.to_vec(),
                ));
            }
        }
        let output = self.chain.settlement.as_ref().and_then(|s| {
            s.is_output_block(ctx.number).then(|| {
                rtchain_l1::output::OutputRootProof::new(state_root, self.message_passer_root, hash)
            })
        });
        if let Some(proof) = &output {
            entries.push((
                settlement::output_key(ctx.number),
                settlement::encode_output(proof),
            ));
        }
        self.chain.store.commit_block(&BlockCommit {
            header: &header,
            hash,
            transactions: &closed.txs,
            receipts: &closed.receipts,
            mini_blocks: &closed.minis,
            last_mini_block: closed.last_mini,
            diff: &closed.diff,
            trie: &trie,
            settlement: &entries,
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
        if let (Some(settlement), Some(proof)) = (&self.chain.settlement, output) {
            settlement.output_sealed(ctx.number, proof);
        }
        self.chain.sealed.send_replace(ctx.number);
        self.chain.notify_sealed();
        let _ = self.chain.events.send(ChainEvent::Block(block));
        // After publication, off the answer's path: a few blocks of history per seal keep
        // pace with sealing and bound the deletes of one write.
        match self.chain.store.prune_history(PRUNE_BLOCKS_PER_SEAL) {
            Ok(pruned) if pruned.blocks > 0 => tracing::debug!(
                blocks = pruned.blocks,
                records = pruned.records,
                oldest = pruned.oldest,
                "history pruned"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning history failed; will retry next seal"),
        }
        Ok(())
    }
}

/// History pruned per seal at most: one block is sealed per seal, so a window that shrank is
/// caught up at three blocks per seal.
const PRUNE_BLOCKS_PER_SEAL: u64 = 4;
