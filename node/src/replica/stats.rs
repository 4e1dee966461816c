//! Replication's counters and latency, for `rtchain_nodeStats` and `bench consensus`.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::transport::TransportStats;

/// Counters and latency of replication, for `rtchain_nodeStats` and `bench consensus`.
/// A peer counts as connected if it was heard from this recently: validators exchange votes
/// every view (about 100 ms) and followers ask to sync far more often than this.
pub const PEER_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

pub struct ConsensusStats {
    pub(super) inner: Mutex<StatsInner>,
}

pub(super) struct StatsInner {
    pub(super) me: usize,
    pub(super) follower: bool,
    pub(super) validators: usize,
    pub(super) sync: &'static str,
    pub(super) view: u64,
    pub(super) finalized_height: u64,
    /// First sight of a proposal (built, or received) to its delivery as finalized, in us.
    pub(super) finalize_us: hdrhistogram::Histogram<u64>,
    pub(super) blocks_delivered: u64,
    pub(super) txs_finalized: u64,
    pub(super) rejected_payloads: u64,
    /// Sync responses applied (catching up from peers' stored finalized blocks).
    pub(super) sync_rounds: u64,
    pub(super) engine: rtchain_consensus::Stats,
    pub(super) transport: Option<Arc<TransportStats>>,
}

impl ConsensusStats {
    pub(super) fn new(
        me: usize,
        follower: bool,
        validators: usize,
        sync: &'static str,
        finalized_height: u64,
        transport: Arc<TransportStats>,
    ) -> Self {
        Self {
            inner: Mutex::new(StatsInner {
                me,
                follower,
                validators,
                sync,
                view: 0,
                finalized_height,
                finalize_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds"),
                blocks_delivered: 0,
                txs_finalized: 0,
                rejected_payloads: 0,
                sync_rounds: 0,
                engine: Default::default(),
                transport: Some(transport),
            }),
        }
    }

    /// Validators and followers heard from within [`PEER_ALIVE`].
    pub fn connected_peers(&self) -> usize {
        let s = self.inner.lock();
        s.transport
            .as_ref()
            .map_or(0, |t| t.peers_heard_within(PEER_ALIVE))
    }

    pub fn to_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.inner.lock();
        let q = |p: f64| s.finalize_us.value_at_quantile(p);
        let t = s.transport.as_ref();
        let c = |f: fn(&TransportStats) -> &std::sync::atomic::AtomicU64| {
            t.map_or(0, |t| f(t).load(Relaxed))
        };
        serde_json::json!({
            "role": if s.follower { "follower" } else { "validator" },
            "index": s.me,
            "validators": s.validators,
            "syncMode": s.sync,
            "view": s.view,
            "finalizedHeight": s.finalized_height,
            "blocksDelivered": s.blocks_delivered,
            "txsFinalized": s.txs_finalized,
            "finalizeLatencyUs": {
                "count": s.finalize_us.len(),
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s.finalize_us.max(),
            },
            "rejectedPayloads": s.rejected_payloads,
            "syncRounds": s.sync_rounds,
            "engine": {
                "malformed": s.engine.malformed,
                "invalidSignature": s.engine.invalid_signature,
                "equivocations": s.engine.equivocations,
                "rejectedCommitment": s.engine.rejected_commitment,
                "invalidProposal": s.engine.invalid_proposal,
                "finalizedRejected": s.engine.finalized_rejected,
                "forks": s.engine.forks,
                "requestsSent": s.engine.requests_sent,
                "requestsServed": s.engine.requests_served,
                "viewsDropped": s.engine.views_dropped,
            },
            "transport": {
                "peersConnected": t.map_or(0, |t| t.peers_heard_within(PEER_ALIVE)),
                "datagramsIn": c(|t| &t.datagrams_in),
                "datagramsOut": c(|t| &t.datagrams_out),
                "messagesIn": c(|t| &t.messages_in),
                "messagesOut": c(|t| &t.messages_out),
                "droppedBadTag": c(|t| &t.dropped_bad_tag),
                "droppedMalformed": c(|t| &t.dropped_malformed),
                "droppedSendFull": c(|t| &t.dropped_send_full),
            },
        })
    }
}
