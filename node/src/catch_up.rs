//! How far behind this node knows itself to be, for `eth_syncing`: the newest EVM block a
//! source says exists (a peer's head in its sync answer, the last block of a batch L1 holds)
//! against our own head, and whether replication knows of finalized heights we have not
//! delivered yet. The replica and the L1 deriver write it; RPC reads it.
//!
//! Atomics rather than a lock: the replica touches it on every turn of its loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Behind by at most this many EVM blocks counts as keeping up: a follower polls every few
/// milliseconds and a block is sealed every 100, so it is often one block behind a peer's
/// answer for an instant.
pub const KEEPING_UP_BLOCKS: u64 = 2;

const NONE: u64 = u64::MAX;

/// Catch-up progress in EVM block numbers, as `eth_syncing` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Our head when this catch-up began.
    pub starting_block: u64,
    pub current_block: u64,
    /// The newest block a source said exists (at least our head: while replication knows it
    /// is behind but no answer has arrived yet, it knows no more).
    pub highest_block: u64,
}

#[derive(Debug)]
pub struct CatchUpStatus {
    /// The EVM head the latest sync answer (or L1 batch) reported. The latest, not the largest:
    /// a peer's head is not proven by its answer's certificate, so a wrong one lasts only until
    /// the next answer, or until replication, whose finalized heights are certified, finds
    /// itself caught up.
    highest_heard: AtomicU64,
    /// Replication knows of finalized heights well past the ones it delivered.
    behind_heights: AtomicBool,
    /// Our head when the current catch-up began; [`NONE`] while keeping up.
    starting: AtomicU64,
}

impl Default for CatchUpStatus {
    fn default() -> Self {
        Self {
            highest_heard: AtomicU64::new(0),
            behind_heights: AtomicBool::new(false),
            starting: AtomicU64::new(NONE),
        }
    }
}

impl CatchUpStatus {
    /// A source says block `highest` exists; our head is `head`.
    pub fn heard(&self, highest: u64, head: u64) {
        self.highest_heard.store(highest, Relaxed);
        self.progress(head);
    }

    /// Replication is (or is no longer) behind by finalized heights it has not delivered;
    /// `head` (our head) is read only when that changes.
    pub fn set_behind_heights(&self, behind: bool, head: impl FnOnce() -> u64) {
        if self.behind_heights.load(Relaxed) != behind {
            self.behind_heights.store(behind, Relaxed);
            if !behind {
                // Caught up by certified heights: what peers said of their heads is spent.
                self.highest_heard.store(0, Relaxed);
            }
            self.progress(head());
        }
    }

    /// `None` while keeping up; otherwise where the catch-up began, is and is heading.
    pub fn progress(&self, head: u64) -> Option<Progress> {
        let highest = self.highest_heard.load(Relaxed);
        let behind =
            self.behind_heights.load(Relaxed) || highest > head.saturating_add(KEEPING_UP_BLOCKS);
        if !behind {
            self.starting.store(NONE, Relaxed);
            return None;
        }
        // The first to see us behind records where the catch-up began.
        let starting = match self.starting.compare_exchange(NONE, head, Relaxed, Relaxed) {
            Ok(_) => head,
            Err(earlier) => earlier,
        };
        Some(Progress {
            starting_block: starting.min(head),
            current_block: head,
            highest_block: highest.max(head),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_up_is_not_syncing() {
        let status = CatchUpStatus::default();
        assert_eq!(status.progress(0), None);
        status.heard(10, 9);
        assert_eq!(status.progress(9), None);
        status.heard(12, 10);
        assert_eq!(status.progress(10), None, "two behind is keeping up");
    }

    #[test]
    fn a_far_peer_head_starts_a_catch_up_that_ends_on_reaching_it() {
        let status = CatchUpStatus::default();
        status.heard(1_000, 5);
        let p = status.progress(5).expect("behind");
        assert_eq!(
            (p.starting_block, p.current_block, p.highest_block),
            (5, 5, 1_000)
        );
        // The start stays while we advance; a newer answer moves the target.
        status.heard(1_200, 400);
        let p = status.progress(700).expect("still behind");
        assert_eq!(
            (p.starting_block, p.current_block, p.highest_block),
            (5, 700, 1_200)
        );
        // The latest answer counts: a peer that lied about its head is corrected by the next.
        status.heard(1_150, 700);
        assert_eq!(status.progress(800).unwrap().highest_block, 1_150);
        assert_eq!(status.progress(1_149), None);
        // The next catch-up starts from where we are then.
        status.heard(5_000, 1_300);
        assert_eq!(status.progress(1_300).unwrap().starting_block, 1_300);
    }

    #[test]
    fn behind_in_heights_is_syncing_before_any_answer() {
        let status = CatchUpStatus::default();
        status.set_behind_heights(true, || 40);
        let p = status.progress(40).expect("behind");
        assert_eq!(
            (p.starting_block, p.current_block, p.highest_block),
            (40, 40, 40)
        );
        status.set_behind_heights(false, || 41);
        assert_eq!(status.progress(41), None);
    }

    #[test]
    fn catching_up_by_certified_heights_clears_a_claimed_head() {
        let status = CatchUpStatus::default();
        status.set_behind_heights(true, || 0);
        status.heard(u64::MAX, 0);
        assert_eq!(status.progress(10).unwrap().highest_block, u64::MAX);
        status.set_behind_heights(false, || 50);
        assert_eq!(
            status.progress(50),
            None,
            "no longer syncing towards a made-up head"
        );
    }
}
