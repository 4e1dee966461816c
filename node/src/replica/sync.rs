//! Catch-up: fetching finalized blocks from peers when the engine's own body requests cannot
//! close the gap (we were down longer than peers keep bodies in memory, or we start from
//! genesis), serving such requests, and a follower's polling.
//!
//! A request names the first height wanted and how many blocks; the answer carries the peer's
//! newest EVM block number (how far a catch-up has to go, for `eth_syncing`) and the finalized
//! blocks it keeps from there, up to the last one whose finalization certificate it holds (that
//! certificate proves them all). The asker checks that the blocks extend its tip
//! and that the certificate finalizes the last one before it delivers any of them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rtchain_consensus::{Block, Certificate, Digest, Height, Validators};
use rtchain_state::{Store, StoreError};

use super::payload::{KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE, decode_final, final_key};
use crate::transport::Transport;

/// Finalized blocks per sync response, and their bytes.
const SYNC_BLOCKS_MAX: u64 = 256;
const SYNC_BYTES_MAX: usize = 256 << 10;
/// Never more than this in one answer (one transport message holds a little over 4 MiB).
const SYNC_BYTES_HARD_MAX: usize = 4 << 20;
/// A follower asks this often while it is up to date...
pub const FOLLOW_POLL: Duration = Duration::from_millis(5);
/// ...and moves to the next validator when an answer takes this long.
const FOLLOW_TIMEOUT: Duration = Duration::from_millis(300);
/// At most one large sync answer per peer this often.
const SYNC_SERVE_INTERVAL: Duration = Duration::from_millis(100);
/// A validator's pause after an answer with nothing new.
const SYNC_EMPTY_BACKOFF: Duration = Duration::from_millis(200);
/// Answers up to this size are not rate-limited.
const SYNC_SMALL_BYTES: usize = 64 << 10;
/// A sync request unanswered this long goes to the next peer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// The tip must be stuck this long behind a known finalized height before we fetch.
const SYNC_STALL: Duration = Duration::from_millis(500);
/// A validator whose engine knows of finalized heights more than this far past its delivered
/// tip is catching up (`eth_syncing`); closer, the engine's own body requests keep up.
pub const SYNC_BEHIND_HEIGHTS: u64 = 8;

/// The catch-up state of one node.
#[derive(Default)]
pub struct CatchUp {
    /// The request in flight: peer, first height, when sent.
    inflight: Option<(u16, Height, Instant)>,
    /// When the tip last moved, and where it was.
    tip_seen: Option<(Height, Instant)>,
    next_peer: u16,
    /// When we last answered each peer's request with a large answer.
    served: HashMap<u16, Instant>,
    /// A follower's last request.
    last_poll: Option<Instant>,
    /// After an empty answer, a validator asks again no sooner than this.
    backoff_until: Option<Instant>,
}

/// A checked sync answer: blocks extending our tip, the last one finalized by `certificate`.
pub struct Answer {
    /// The answering peer's newest sealed EVM block when it answered.
    pub peer_head: u64,
    pub blocks: Vec<Block>,
    pub certificate: Certificate,
}

impl CatchUp {
    /// A validator: when the engine knows of a finalized height above our delivered `tip` and
    /// the tip has not moved for a while, asks the next of the `n` validators (not `me`).
    pub fn request_if_behind(
        &mut self,
        transport: &mut Transport,
        me: u16,
        n: usize,
        tip: Height,
        known_finalized: Height,
    ) {
        let now = Instant::now();
        match self.tip_seen {
            Some((h, _)) if h == tip => {}
            _ => self.tip_seen = Some((tip, now)),
        }
        if known_finalized <= tip {
            return;
        }
        let stalled = self
            .tip_seen
            .is_some_and(|(_, since)| now.duration_since(since) >= SYNC_STALL);
        if !stalled {
            return;
        }
        if let Some((_, _, sent)) = self.inflight
            && now.duration_since(sent) < SYNC_TIMEOUT
        {
            return;
        }
        if self.backoff_until.is_some_and(|t| now < t) {
            return;
        }
        let mut peer = self.next_peer % n as u16;
        if peer == me {
            peer = (peer + 1) % n as u16;
        }
        self.next_peer = peer + 1;
        self.send_request(transport, peer, tip + 1, now);
        tracing::info!(
            "behind: delivered height {tip}, finalized height known {known_finalized}; fetching from validator {peer}"
        );
    }

    /// A follower asks the `n` validators in turn for the finalized blocks after its `tip`, a
    /// request in flight at a time (an answer with nothing new ends it).
    pub fn follow(&mut self, transport: &mut Transport, n: usize, tip: Height) {
        let now = Instant::now();
        if let Some((_, _, sent)) = self.inflight
            && now.duration_since(sent) < FOLLOW_TIMEOUT
        {
            return;
        }
        if self
            .last_poll
            .is_some_and(|at| now.duration_since(at) < FOLLOW_POLL)
        {
            return;
        }
        let peer = self.next_peer % n as u16;
        self.next_peer = peer + 1;
        self.send_request(transport, peer, tip + 1, now);
        self.last_poll = Some(now);
    }

    /// Asks `peer` for the finalized blocks from height `from` on; the answer is awaited as
    /// `inflight`.
    fn send_request(&mut self, transport: &mut Transport, peer: u16, from: Height, now: Instant) {
        let mut req = vec![KIND_SYNC_REQUEST];
        req.extend_from_slice(&from.to_be_bytes());
        req.extend_from_slice(&(SYNC_BLOCKS_MAX as u16).to_be_bytes());
        transport.send(&[peer], &req);
        self.inflight = Some((peer, from, now));
    }

    /// Answers a peer's request with our newest sealed EVM block number (`head`) and the
    /// finalized blocks we keep from its height on, up to the last one whose finalization
    /// certificate we hold.
    pub fn serve(
        &mut self,
        store: &Store,
        head: u64,
        transport: &mut Transport,
        from: u16,
        req: &[u8],
    ) -> Result<(), StoreError> {
        if req.len() != 10 {
            return Ok(());
        }
        // One large answer per peer per interval: a replayed request (the tag has no freshness)
        // must not make us send megabytes on repeat. Small answers (a follower keeping up) are
        // not limited.
        let now = Instant::now();
        if self
            .served
            .get(&from)
            .is_some_and(|last| now.duration_since(*last) < SYNC_SERVE_INTERVAL)
        {
            return Ok(());
        }
        let start = u64::from_be_bytes(req[..8].try_into().expect("8"));
        let max = u64::from(u16::from_be_bytes([req[8], req[9]])).min(SYNC_BLOCKS_MAX);
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut usable = 0;
        let mut bytes = 0;
        for height in start..start.saturating_add(max * 4) {
            let Some(entry) = store.get_consensus(&final_key(height))? else {
                break;
            };
            bytes += entry.len();
            // Past the soft limits only until a block with a certificate ends the answer (blocks
            // finalized through a descendant carry none), and never past what one message holds.
            if bytes > SYNC_BYTES_HARD_MAX
                || (usable > 0 && (bytes > SYNC_BYTES_MAX || entries.len() as u64 >= max))
            {
                break;
            }
            if decode_final(&entry).is_some_and(|(_, cert)| cert.is_some()) {
                usable = entries.len() + 1;
            }
            entries.push(entry);
        }
        entries.truncate(usable);
        // An empty answer too: the asker moves on without waiting for a timeout.
        let mut resp = vec![KIND_SYNC_RESPONSE];
        resp.extend_from_slice(&(entries.len() as u16).to_be_bytes());
        resp.extend_from_slice(&head.to_be_bytes());
        for e in &entries {
            resp.extend_from_slice(&(e.len() as u32).to_be_bytes());
            resp.extend_from_slice(e);
        }
        if resp.len() > SYNC_SMALL_BYTES {
            self.served.insert(from, now);
        }
        transport.send(&[from], &resp);
        Ok(())
    }

    /// Checks an answer from `from` against our delivered tip (`tip_height`, `tip_digest`):
    /// it must be the one awaited, extend the tip block by block, and end in a block whose
    /// finalization certificate `validators` accept. `None`: nothing to deliver.
    pub fn check_answer(
        &mut self,
        from: u16,
        resp: &[u8],
        tip_height: Height,
        tip_digest: Digest,
        validators: &Validators,
    ) -> Option<Answer> {
        match self.inflight {
            Some((peer, start, _)) if peer == from && start == tip_height + 1 => {}
            _ => return None,
        }
        let Some((peer_head, blocks)) = parse_response(resp) else {
            tracing::warn!("validator {from}: malformed sync response");
            return None;
        };
        if blocks.is_empty() {
            // Nothing new there: a follower polls again soon anyway; a validator waits before
            // asking the next peer instead of looping at round-trip speed.
            self.inflight = None;
            self.backoff_until = Some(Instant::now() + SYNC_EMPTY_BACKOFF);
            return None;
        }
        let mut parent = tip_digest;
        for (height, (block, _)) in (tip_height + 1..).zip(&blocks) {
            if block.parent() != parent || block.height() != height {
                tracing::warn!("validator {from}: sync response does not extend our chain");
                return None;
            }
            parent = block.digest();
        }
        let Some((last, Some(cert))) = blocks.last() else {
            return None;
        };
        let proves =
            matches!(cert.vote, rtchain_consensus::Vote::Finalize(p) if p == last.proposal());
        if !proves || validators.verify_certificate(cert).is_err() {
            tracing::warn!("validator {from}: sync response without a valid finalization");
            return None;
        }
        let certificate = cert.clone();
        self.inflight = None;
        Some(Answer {
            peer_head,
            blocks: blocks.into_iter().map(|(block, _)| block).collect(),
            certificate,
        })
    }

    /// After delivering an answer: if still behind, the next round need not wait out the
    /// stall timer again.
    pub fn caught_up_to(&mut self, tip: Height) {
        self.tip_seen = Some((tip, Instant::now() - SYNC_STALL));
    }
}

/// A finalized block as kept and served, with its finalization certificate if we hold it.
type KeptBlock = (Block, Option<Certificate>);

/// A sync response's peer head and blocks, in order, each with its certificate if it came with
/// one.
fn parse_response(resp: &[u8]) -> Option<(u64, Vec<KeptBlock>)> {
    let count = u16::from_be_bytes(resp.get(..2)?.try_into().ok()?) as usize;
    let head = u64::from_be_bytes(resp.get(2..10)?.try_into().ok()?);
    let mut rest = &resp[10..];
    let mut out = Vec::with_capacity(count.min(SYNC_BLOCKS_MAX as usize));
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let entry = rest.get(4..4usize.checked_add(len)?)?;
        out.push(decode_final(entry)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some((head, out))
}
