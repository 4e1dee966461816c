//! The index of transactions accepted and not executed yet: by hash (for `eth_getTransaction*`
//! and duplicate checks) and by sender and nonce (for the `pending` nonce and nonce-gap bounds).

use std::collections::{BTreeMap, HashMap};

use alloy_primitives::{Address, B256};
use rtchain_exec::RecoveredTx;

/// Transactions accepted but not executed yet: in the ingress queue, or waiting for a nonce gap.
#[derive(Default)]
pub struct Pool {
    by_hash: HashMap<B256, RecoveredTx>,
    by_sender: HashMap<Address, BTreeMap<u64, B256>>,
}

impl Pool {
    /// Transactions accepted and not executed yet.
    pub fn pending_count(&self) -> usize {
        self.by_hash.len()
    }

    /// Senders with transactions waiting.
    pub fn senders(&self) -> usize {
        self.by_sender.len()
    }

    pub fn get(&self, hash: &B256) -> Option<&RecoveredTx> {
        self.by_hash.get(hash)
    }

    pub fn contains(&self, hash: &B256) -> bool {
        self.by_hash.contains_key(hash)
    }

    pub fn insert(&mut self, tx: RecoveredTx) {
        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
        self.by_sender
            .entry(tx.sender)
            .or_default()
            .insert(nonce, tx.hash);
        self.by_hash.insert(tx.hash, tx);
    }

    pub fn remove(&mut self, hash: &B256) -> Option<RecoveredTx> {
        let tx = self.by_hash.remove(hash)?;
        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
        if let Some(nonces) = self.by_sender.get_mut(&tx.sender) {
            // A replacement may have taken this nonce's slot: remove only our own entry.
            if nonces.get(&nonce) == Some(hash) {
                nonces.remove(&nonce);
            }
            if nonces.is_empty() {
                self.by_sender.remove(&tx.sender);
            }
        }
        Some(tx)
    }

    /// The sender's next nonce counting its waiting transactions that follow `state_nonce`
    /// without a gap (the `pending` nonce).
    pub fn next_nonce(&self, sender: Address, state_nonce: u64) -> u64 {
        let mut next = state_nonce;
        if let Some(nonces) = self.by_sender.get(&sender) {
            for nonce in nonces.range(state_nonce..).map(|(n, _)| *n) {
                if nonce != next {
                    break;
                }
                next += 1;
            }
        }
        next
    }

    /// How many of the sender's transactions wait behind a nonce gap.
    pub fn gapped(&self, sender: Address, state_nonce: u64) -> usize {
        let next = self.next_nonce(sender, state_nonce);
        self.by_sender
            .get(&sender)
            .map_or(0, |nonces| nonces.range(next..).count())
    }
}
