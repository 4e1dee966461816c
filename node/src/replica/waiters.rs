//! Clients waiting on this validator for transactions it accepted: answered when a finalized
//! block includes them, whoever proposed it, or told they were replaced when another
//! transaction with the same sender and nonce was finalized.

use std::collections::HashMap;

use alloy_primitives::{Address, B256};

use crate::outcome::{Outcome, Rejection, ReplySink};

/// Waiters by transaction hash, and the same hashes by sender and nonce.
#[derive(Default)]
pub struct Waiters {
    by_hash: HashMap<B256, ReplySink>,
    by_nonce: HashMap<(Address, u64), Vec<B256>>,
}

impl Waiters {
    /// Someone waits for `hash` (sent by `sender` with `nonce`).
    pub fn insert(&mut self, hash: B256, sender: Address, nonce: u64, reply: ReplySink) {
        self.by_hash.insert(hash, reply);
        self.by_nonce.entry((sender, nonce)).or_default().push(hash);
    }

    /// Puts back the reply of a transaction that was indexed before (a queued future nonce
    /// whose gap filled, or one a finalized block took from the queue).
    pub fn restore(&mut self, hash: B256, reply: ReplySink) {
        self.by_hash.insert(hash, reply);
    }

    /// The reply for `hash`, leaving its nonce entry (a finalized block answers it; the nonce
    /// entry then tells the others with that nonce they were replaced).
    pub fn remove(&mut self, hash: &B256) -> Option<ReplySink> {
        self.by_hash.remove(hash)
    }

    /// The reply for `hash` and its nonce entry.
    pub fn take(&mut self, hash: &B256, sender: Address, nonce: u64) -> Option<ReplySink> {
        let reply = self.by_hash.remove(hash)?;
        if let Some(hashes) = self.by_nonce.get_mut(&(sender, nonce)) {
            hashes.retain(|h| h != hash);
            if hashes.is_empty() {
                self.by_nonce.remove(&(sender, nonce));
            }
        }
        Some(reply)
    }

    /// After a delivery of `included` (sender, nonce, hash): every other waiter on one of those
    /// nonces learns it was replaced; returns their replies with the outcome to send.
    pub fn replaced(&mut self, included: &[(Address, u64, B256)]) -> Vec<(ReplySink, Outcome)> {
        let mut out = Vec::new();
        for (sender, nonce, hash) in included {
            let Some(hashes) = self.by_nonce.remove(&(*sender, *nonce)) else {
                continue;
            };
            for h in hashes {
                if h == *hash {
                    continue;
                }
                if let Some(reply) = self.by_hash.remove(&h) {
                    let rejection = Rejection::Replaced {
                        nonce: *nonce,
                        by: Some(*hash),
                    };
                    out.push((reply, Outcome::Rejected(rejection)));
                }
            }
        }
        out
    }

    /// Every reply still waiting (at exit).
    pub fn drain(&mut self) -> impl Iterator<Item = ReplySink> + '_ {
        self.by_nonce.clear();
        self.by_hash.drain().map(|(_, reply)| reply)
    }
}
