//! The Simplex state machine: events in, effects out. No I/O, no clock, no threads.
//!
//! # The protocol, view by view (n = 3f+1 validators, quorum q = 2f+1)
//!
//! 1. **Enter view v** (on a certificate for view v-1, or at start). Schedule the leader
//!    timeout. If we lead v, ask the application for a payload ([`Effect::Propose`]) on top of
//!    the *parent*: the highest view below v with a notarization, every view between them
//!    being nullified.
//! 2. **Propose.** With the payload ([`Event::ProposalReady`]) the leader builds the block,
//!    signs `notarize` on it, persists that vote, then broadcasts [`Msg::Propose`] carrying the
//!    parent's certificate and the nullifications of the skipped views.
//! 3. **Notarize.** A replica in view v that has not nullified v notarizes the leader's *first*
//!    valid proposal when (a) its parent is certified and every skipped view is nullified (so
//!    the proposal cannot fork away from anything that may be finalized, see below), and (b)
//!    its own execution of the block reproduces the leader's post-state commitment
//!    ([`Effect::Verify`] / [`Event::Verified`]). A block whose commitment differs is rejected,
//!    counted, and the replica nullifies v at once.
//! 4. **Notarization.** q notarize votes for one block form a notarization: the node
//!    broadcasts the certificate (if it assembled it), enters v+1, and, if it did not nullify
//!    v and its execution agreed, signs and broadcasts `finalize` for the block.
//!    (Not if we notarized a different block of v: its leader equivocated; we stay out.)
//! 5. **Finalization.** q finalize votes finalize the block and, by the hash chain, all its
//!    ancestors; blocks are delivered in height order ([`Effect::Deliver`]). Finalize votes
//!    count whenever they arrive, even after the network moved on to later views.
//! 6. **Timeout / nullification.** When the view timer fires the node signs `nullify(v)`
//!    (unless it already finalized v, which it cannot have while still in v). q nullifies form
//!    a nullification: enter v+1 with the next leader. While stuck in v the node rebroadcasts
//!    its votes and the certificate that got it into v every retry interval; a peer that
//!    already left v answers such a nullify with the certificate that ended v.
//!
//! # Why it is safe (at most f Byzantine validators)
//!
//! Any two quorums share at least one honest validator. An honest validator notarizes at most
//! one block per view, so a view has at most one notarized block. It never signs both
//! `nullify(v)` and `finalize(v)`, so if a block B is finalized in v, no nullification of v
//! exists. A proposal in a later view must name a notarized parent and carry nullifications for
//! every view it skips; it cannot skip v, so its parent is in v (then it is B) or above v (then
//! by induction it descends from B). Hence every notarized, and so every finalized, block above
//! v extends B: two different blocks are never finalized at one height.
//!
//! # Safety across restarts
//!
//! Every vote goes out as [`Effect::Persist`] *before* the [`Effect::Send`] that carries it: in
//! the effects of one [`Engine::handle`] call all `Persist` come first. The driver appends them
//! to the [`crate::votelog::VoteLog`], syncs once, and only then performs the rest. On restart
//! the log's records are replayed into [`Engine::new`]: the engine knows every vote it may have
//! sent and its signing rules ([`Vote::forbidden_after`]) refuse any conflicting one; views the
//! log no longer covers (it is a ring) are below its floor and never signed in again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use alloy_primitives::B256;
use ed25519_dalek::SigningKey;

use crate::crypto::Validators;
use crate::types::{
    Block, Certificate, Digest, Height, Msg, NULLIFICATIONS_MAX, PAYLOAD_BYTES_MAX, Proposal,
    Proposed, Record, SignedVote, ValidatorIndex, View, Vote,
};

/// Chooses the leader of a view among `n` validators.
pub type LeaderRule = fn(View, usize) -> ValidatorIndex;

/// The default leader rule: round-robin by view.
pub fn round_robin(view: View, n: usize) -> ValidatorIndex {
    (view % n as u64) as ValidatorIndex
}

/// At most this many block bodies are being fetched at once.
const REQUESTS_MAX: usize = 64;
/// On each retry, re-send our finalize votes for at most this many recent unfinalized views.
const FINALIZE_RESEND_VIEWS_MAX: u64 = 4;

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub validators: Validators,
    /// Digest of the genesis block (view 0, height 0, implicitly finalized).
    pub genesis: Digest,
    pub leader: LeaderRule,
    /// From entering a view until we nullify it if no valid proposal arrived.
    pub timeout_leader: Duration,
    /// From notarizing a view's proposal until we nullify it if the view did not complete.
    pub timeout_notarization: Duration,
    /// While stuck in a view after nullifying it: how often to rebroadcast our votes and the
    /// certificate that got us into the view (lost messages are recovered this way).
    pub timeout_retry: Duration,
    /// Votes and proposals more than this many views ahead of ours are dropped (counted):
    /// a bound on what a peer can make us hold. Certificates are accepted at any view: they
    /// cannot be forged and they are how a lagging node jumps forward.
    pub views_ahead_max: u64,
    /// At most this many views of state are held; the oldest unfinalized is dropped first (and
    /// never signed in again).
    pub rounds_max: usize,
    /// Finalized blocks kept to answer peers' [`Msg::Request`]s.
    pub blocks_cached_max: usize,
}

impl Config {
    /// Defaults sized for a LAN of validators with sub-millisecond links.
    pub fn new(validators: Validators, genesis: Digest) -> Self {
        Self {
            validators,
            genesis,
            leader: round_robin,
            timeout_leader: Duration::from_millis(20),
            timeout_notarization: Duration::from_millis(30),
            timeout_retry: Duration::from_millis(10),
            views_ahead_max: 64,
            rounds_max: 1024,
            blocks_cached_max: 1024,
        }
    }
}

/// Where the chain stood when the engine started: the last block the application committed
/// (genesis on a fresh node), with its finalization certificate if the application kept it.
#[derive(Clone, Debug)]
pub struct Anchor {
    pub view: View,
    pub height: Height,
    pub digest: Digest,
    pub finalization: Option<Certificate>,
}

impl Anchor {
    pub fn genesis(digest: Digest) -> Self {
        Self {
            view: 0,
            height: 0,
            digest,
            finalization: None,
        }
    }
}

/// What the vote log returned at start (see [`crate::votelog::VoteLog::open`]).
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// Our persisted votes and certificates, oldest first.
    pub records: Vec<Record>,
    /// The log no longer holds every vote at or below this view: never sign in those views.
    pub floor_view: View,
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every other validator.
    All,
    One(ValidatorIndex),
}

/// A finalized block, delivered in height order, exactly once per engine lifetime.
#[derive(Clone, Debug)]
pub struct Finalized {
    pub block: Block,
    /// The finalization certificate for this exact block, if we hold it (ancestors of a
    /// finalized block are final by the hash chain and may have none).
    pub finalization: Option<Certificate>,
}

/// An effect for the driver. Within one [`Engine::handle`] call every `Persist` comes before any
/// other effect: append them all, sync the log once, then perform the rest in order.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Make this record durable before performing any later effect of this batch.
    Persist(Record),
    Send(Target, Msg),
    /// A finalized block for the application to commit.
    Deliver(Finalized),
    /// Deliver [`Event::Timeout`]`(view)` after `after`, replacing any earlier timer.
    ScheduleTimeout {
        view: View,
        after: Duration,
    },
    /// Execute this block on its parent's state and answer [`Event::Verified`]. Its parent is
    /// always the last delivered block or a block already verified.
    ///
    /// Durability contract: before answering `ok: true` the application must have stored the
    /// block durably (its mini-block log), and after a restart it hands back every stored block
    /// above its last committed one through [`Engine::restore_block`]. We vote for a block only
    /// after `ok`, so every notarized block stays available from the honest nodes that voted
    /// for it even if they all crash (a notarized block that nobody holds would block the chain
    /// forever: later proposals must extend it).
    Verify(Block),
    /// We lead `view`: build a payload on `parent` and answer [`Event::ProposalReady`].
    Propose {
        view: View,
        parent: Digest,
        parent_view: View,
        height: Height,
    },
}

/// An input event.
#[derive(Clone, Debug)]
pub enum Event {
    /// A decoded message from an authenticated peer.
    Message(ValidatorIndex, Msg),
    Timeout(View),
    /// The payload and post-state commitment for the block we were asked to propose.
    ProposalReady {
        view: View,
        payload: Vec<u8>,
        commitment: B256,
    },
    /// Our execution of a block: `ok` when our post-state commitment equals the block's.
    Verified {
        digest: Digest,
        ok: bool,
    },
}

/// Counters of everything dropped or refused, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub malformed: u64,
    pub wrong_sender: u64,
    pub invalid_signature: u64,
    pub invalid_certificate: u64,
    pub out_of_window: u64,
    pub equivocations: u64,
    pub rejected_commitment: u64,
    pub invalid_proposal: u64,
    pub unsolicited_blocks: u64,
    pub conflicting_certificates: u64,
    /// Votes the signing rules refused (must stay 0: a refusal means a logic error).
    pub refused_votes: u64,
    /// Finalized blocks our execution disagrees with: delivery halts (needs an operator).
    pub finalized_rejected: u64,
    /// A finalized chain that does not extend what we delivered (more than f faults).
    pub forks: u64,
    pub requests_sent: u64,
    pub requests_served: u64,
    pub views_dropped: u64,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("signing key is not in the validator set")]
    NotAValidator,
    #[error(
        "vote log holds conflicting votes {0:?}: the log is corrupt or was shared between two nodes; refusing to sign anything"
    )]
    ConflictingReplay(Box<(Vote, Vote)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tip {
    view: View,
    height: Height,
    digest: Digest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    NotRequested,
    Pending,
    Ok,
    Bad,
}

struct Entry {
    block: Block,
    verify: Verify,
}

/// Everything we know about one view.
#[derive(Default)]
struct Round {
    /// Digest of the first valid proposal from this view's leader.
    proposal: Option<Digest>,
    notarizes: BTreeMap<ValidatorIndex, (Proposal, crate::types::Signature)>,
    nullifies: BTreeMap<ValidatorIndex, crate::types::Signature>,
    finalizes: BTreeMap<ValidatorIndex, (Proposal, crate::types::Signature)>,
    notarization: Option<Certificate>,
    nullification: Option<Certificate>,
    finalization: Option<Certificate>,
    my_notarize: Option<SignedVote>,
    my_nullify: Option<SignedVote>,
    my_finalize: Option<SignedVote>,
}

impl Round {
    fn my_votes(&self) -> impl Iterator<Item = &SignedVote> {
        [&self.my_notarize, &self.my_nullify, &self.my_finalize]
            .into_iter()
            .flatten()
    }
    /// The best certificate showing this view is over: finalization, notarization, nullification.
    fn exit_certificate(&self) -> Option<&Certificate> {
        self.finalization
            .as_ref()
            .or(self.notarization.as_ref())
            .or(self.nullification.as_ref())
    }
    /// The block certified at this view (notarized or finalized), if any.
    fn certified(&self) -> Option<Proposal> {
        match self
            .finalization
            .as_ref()
            .or(self.notarization.as_ref())
            .map(|c| c.vote)
        {
            Some(Vote::Notarize(p) | Vote::Finalize(p)) => Some(p),
            _ => None,
        }
    }
}

/// The consensus state machine of one validator.
pub struct Engine {
    cfg: Config,
    key: SigningKey,
    me: ValidatorIndex,
    view: View,
    /// Never sign a vote at or below this view (the log's floor, dropped rounds, finality).
    sign_floor: View,
    /// The highest finalized block we know of (its body may still be missing).
    finalized: Tip,
    finalized_cert: Option<Certificate>,
    /// The last block delivered to the application (the anchor at start).
    delivered: Tip,
    rounds: BTreeMap<View, Round>,
    blocks: HashMap<Digest, Entry>,
    delivered_cache: VecDeque<Digest>,
    /// Bodies being fetched: attempts so far (rotates the peer asked) and the view of the
    /// last attempt (a request still unanswered two views later is sent again).
    requests: BTreeMap<Digest, (u32, View)>,
    /// The view we asked the application to build a payload for, and on which parent.
    proposing: Option<(View, Tip)>,
    stats: Stats,
    deferred: Vec<Effect>,
}

impl Engine {
    /// Builds the engine from its configuration, its key, the vote log's replay and the anchor
    /// (the application's last committed block). Call [`Engine::start`] next.
    pub fn new(
        cfg: Config,
        key: SigningKey,
        replay: Replay,
        anchor: Anchor,
    ) -> Result<Self, StartError> {
        let me = cfg
            .validators
            .index_of(&key.verifying_key())
            .ok_or(StartError::NotAValidator)?;
        let tip = Tip {
            view: anchor.view,
            height: anchor.height,
            digest: anchor.digest,
        };
        let mut e = Self {
            cfg,
            key,
            me,
            view: anchor.view,
            sign_floor: replay.floor_view,
            finalized: tip,
            finalized_cert: anchor.finalization.clone(),
            delivered: tip,
            rounds: BTreeMap::new(),
            blocks: HashMap::new(),
            delivered_cache: VecDeque::new(),
            requests: BTreeMap::new(),
            proposing: None,
            stats: Stats::default(),
            deferred: Vec::new(),
        };
        // Replay: restore every vote we may have sent (assert the log itself is consistent:
        // the same rules that guard signing guard the replayed history).
        let mut replayed: Vec<Vote> = Vec::new();
        let mut start_view = anchor.view + 1;
        for record in &replay.records {
            match record {
                Record::Vote(vote) => {
                    // In log order: notarize then nullify is legal, the reverse is not.
                    if let Some(prev) = replayed.iter().find(|p| vote.forbidden_after(p)) {
                        return Err(StartError::ConflictingReplay(Box::new((*prev, *vote))));
                    }
                    replayed.push(*vote);
                    let signed = SignedVote {
                        vote: *vote,
                        signer: me,
                        signature: e.cfg.validators.sign(&e.key, vote),
                    };
                    let round = e.rounds.entry(vote.view()).or_default();
                    match vote {
                        Vote::Notarize(_) => round.my_notarize = Some(signed),
                        Vote::Nullify(_) => round.my_nullify = Some(signed),
                        Vote::Finalize(_) => round.my_finalize = Some(signed),
                    }
                    // Having finalized v we had entered v+1; otherwise we were in v.
                    let v = vote.view() + u64::from(matches!(vote, Vote::Finalize(_)));
                    start_view = start_view.max(v);
                }
                Record::Certificate(cert) => {
                    // Our own log, but checked again: assertions on both sides of the disk.
                    if e.cfg.validators.verify_certificate(cert).is_err() {
                        e.stats.invalid_certificate += 1;
                        continue;
                    }
                    start_view = start_view.max(cert.view() + 1);
                    e.store_certificate(cert.clone());
                }
            }
        }
        // Views at or below the floor may hold votes the ring overwrote: start above it.
        if replay.floor_view > 0 {
            start_view = start_view.max(replay.floor_view + 1);
        }
        e.view = start_view;
        e.prune();
        Ok(e)
    }

    /// Before [`Engine::start`]: a block the application kept durably (see [`Effect::Verify`]).
    /// It is executed again in chain order (a `Verify`), then voted on, delivered or served to
    /// peers like any other. Blocks at or below the anchor are ignored.
    pub fn restore_block(&mut self, block: Block) {
        if block.height() <= self.delivered.height || block.view() < self.finalized.view {
            return;
        }
        self.blocks.entry(block.digest()).or_insert(Entry {
            block,
            verify: Verify::NotRequested,
        });
    }

    /// Effects to perform once at start: the view timer, re-sending the votes of the current
    /// view, re-executing restored blocks, and (if we lead it) the proposal request.
    pub fn start(&mut self, out: &mut Vec<Effect>) {
        let restored: Vec<Digest> = self.blocks.keys().copied().collect();
        for d in restored {
            self.try_verify(d);
        }
        let v = self.view;
        let votes: Vec<SignedVote> = self
            .rounds
            .get(&v)
            .map(|r| r.my_votes().copied().collect())
            .unwrap_or_default();
        for sv in votes {
            self.send(Target::All, Msg::Vote(sv));
        }
        self.schedule(v, self.cfg.timeout_leader);
        self.try_propose();
        self.try_deliver();
        out.append(&mut self.deferred);
    }

    /// Processes one event, appending effects to `out` (all `Persist` first).
    pub fn handle(&mut self, event: Event, out: &mut Vec<Effect>) {
        let first = out.len();
        match event {
            Event::Message(from, msg) => self.on_message(from, msg, out),
            Event::Timeout(view) => self.on_timeout(view, out),
            Event::ProposalReady {
                view,
                payload,
                commitment,
            } => self.on_proposal_ready(view, payload, commitment, out),
            Event::Verified { digest, ok } => self.on_verified(digest, ok, out),
        }
        debug_assert!(out[first..].iter().all(|e| matches!(e, Effect::Persist(_))));
        out.append(&mut self.deferred);
    }

    /// Decodes and handles a message; a malformed one is counted and dropped.
    pub fn handle_bytes(&mut self, from: ValidatorIndex, bytes: &[u8], out: &mut Vec<Effect>) {
        match Msg::decode(bytes) {
            Ok(msg) => self.handle(Event::Message(from, msg), out),
            Err(_) => self.stats.malformed += 1,
        }
    }

    pub fn view(&self) -> View {
        self.view
    }
    pub fn me(&self) -> ValidatorIndex {
        self.me
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// (view, height, digest) of the highest finalized block known.
    pub fn finalized(&self) -> (View, Height, Digest) {
        (
            self.finalized.view,
            self.finalized.height,
            self.finalized.digest,
        )
    }
    /// (height, digest) of the last delivered block.
    pub fn delivered(&self) -> (Height, Digest) {
        (self.delivered.height, self.delivered.digest)
    }
    pub fn leader(&self, view: View) -> ValidatorIndex {
        (self.cfg.leader)(view, self.cfg.validators.n())
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- effects -----

    fn send(&mut self, to: Target, msg: Msg) {
        self.deferred.push(Effect::Send(to, msg));
    }
    fn schedule(&mut self, view: View, after: Duration) {
        self.deferred.push(Effect::ScheduleTimeout { view, after });
    }

    /// Signs a vote if the signing rules allow it, records it, and emits `Persist`. Returns
    /// `None` (and counts) if it would conflict with a vote we may already have sent.
    fn sign(&mut self, vote: Vote, out: &mut Vec<Effect>) -> Option<SignedVote> {
        let v = vote.view();
        let allowed = v > self.sign_floor && {
            let round = self.rounds.get(&v);
            round.is_none_or(|r| r.my_votes().all(|mine| !vote.forbidden_after(&mine.vote)))
        };
        if !allowed {
            tracing::error!(
                ?vote,
                floor = self.sign_floor,
                "signing rules refused a vote: a logic error, nothing was signed"
            );
            self.stats.refused_votes += 1;
            return None;
        }
        let signed = SignedVote {
            vote,
            signer: self.me,
            signature: self.cfg.validators.sign(&self.key, &vote),
        };
        let round = self.round_mut(v)?;
        let slot = match vote {
            Vote::Notarize(_) => &mut round.my_notarize,
            Vote::Nullify(_) => &mut round.my_nullify,
            Vote::Finalize(_) => &mut round.my_finalize,
        };
        if slot.is_some() {
            // Same vote again (allowed by the rules): nothing new to persist.
            return Some(signed);
        }
        *slot = Some(signed);
        out.push(Effect::Persist(Record::Vote(vote)));
        Some(signed)
    }

    /// The round for `view`, created if needed. Holding at most `rounds_max` rounds: the
    /// oldest is dropped and the signing floor raised past it, so a dropped round's votes can
    /// never be contradicted. `None` if `view` is itself below what we may hold.
    fn round_mut(&mut self, view: View) -> Option<&mut Round> {
        if !self.rounds.contains_key(&view) {
            if view < self.finalized.view {
                return None;
            }
            while self.rounds.len() >= self.cfg.rounds_max {
                let Some((&oldest, _)) = self.rounds.first_key_value() else {
                    break;
                };
                if oldest >= view {
                    return None;
                }
                self.rounds.remove(&oldest);
                self.sign_floor = self.sign_floor.max(oldest);
                self.stats.views_dropped += 1;
            }
        }
        Some(self.rounds.entry(view).or_default())
    }

    // ----- messages -----

    fn on_message(&mut self, from: ValidatorIndex, msg: Msg, out: &mut Vec<Effect>) {
        if from as usize >= self.cfg.validators.n() || from == self.me {
            self.stats.wrong_sender += 1;
            return;
        }
        match msg {
            Msg::Propose(p) => self.on_propose(*p, out),
            Msg::Vote(v) => self.on_vote(from, v, out),
            Msg::Certificate(c) => self.on_certificate_msg(*c, out),
            Msg::Request(d) => self.on_request(from, d),
            Msg::Block(b) => self.on_block(*b, out),
        }
    }

    /// A leader's proposal: check the leader's signature, absorb the justifying certificates
    /// (which may move us into the proposal's view), keep the first proposal per view (a second
    /// one is equivocation, counted), count it as the leader's notarize vote, then notarize it if
    /// the rules allow.
    fn on_propose(&mut self, p: Proposed, out: &mut Vec<Effect>) {
        let b = &p.block;
        let v = b.view();
        if v <= self.finalized.view || v > self.view + self.cfg.views_ahead_max {
            self.stats.out_of_window += 1;
            return;
        }
        let leader = self.leader(v);
        let vote = SignedVote {
            vote: Vote::Notarize(b.proposal()),
            signer: leader,
            signature: p.signature,
        };
        if self
            .rounds
            .get(&v)
            .is_some_and(|r| r.proposal == Some(b.digest()))
        {
            return; // a duplicate of the proposal we hold: nothing to verify again
        }
        if !self.cfg.validators.verify(&vote) {
            self.stats.invalid_signature += 1;
            return;
        }
        // The parent's certificate must be about the parent this block names.
        if let Some(c) = &p.parent {
            let names_parent = matches!(c.vote, Vote::Notarize(q) | Vote::Finalize(q)
                if q.view == b.parent_view() && q.digest == b.parent() && q.height + 1 == b.height());
            if !names_parent {
                self.stats.invalid_proposal += 1;
                return;
            }
        }
        for c in p.parent.iter().chain(p.nullifications.iter()) {
            if !self.absorb_certificate(c, out) {
                self.stats.invalid_proposal += 1;
                return;
            }
        }
        let digest = b.digest();
        let round = match self.round_mut(v) {
            Some(r) => r,
            None => return,
        };
        match round.proposal {
            Some(d) if d != digest => {
                self.stats.equivocations += 1;
                return;
            }
            Some(_) => return, // duplicate
            None => round.proposal = Some(digest),
        }
        self.blocks.entry(digest).or_insert(Entry {
            block: p.block,
            verify: Verify::NotRequested,
        });
        self.requests.remove(&digest);
        self.add_vote(vote, true, out);
        self.try_verify(digest);
        self.try_notarize(v, out);
        self.try_finalize(v, out);
        self.try_propose();
        self.try_deliver();
    }

    /// One peer's vote. The transport authenticates `from`; a vote must come from its signer
    /// (so no peer can fill another's slot). A vote for a view we left is a sign the peer is
    /// stuck there: we answer with what ends that view for it.
    fn on_vote(&mut self, from: ValidatorIndex, sv: SignedVote, out: &mut Vec<Effect>) {
        if sv.signer != from {
            self.stats.wrong_sender += 1;
            return;
        }
        let v = sv.vote.view();
        if v > self.view + self.cfg.views_ahead_max {
            self.stats.out_of_window += 1;
            return;
        }
        if v < self.view && matches!(sv.vote, Vote::Nullify(_)) {
            self.help_peer(from, v);
        }
        if v <= self.finalized.view {
            return;
        }
        self.add_vote(sv, false, out);
    }

    /// Reply to a peer still voting in view `v` (which we left): the certificate that ended
    /// it, or our latest finalization if `v` is older than what we keep, or, failing both (a
    /// restart lost the certificate), our own recorded votes for `v`, which may complete its
    /// quorum. One reply per received nullify, and peers send those once per retry interval.
    fn help_peer(&mut self, peer: ValidatorIndex, v: View) {
        let reply: Vec<Msg> = match self.rounds.get(&v) {
            Some(r) => match r.exit_certificate() {
                Some(c) => vec![Msg::Certificate(Box::new(c.clone()))],
                None => r.my_votes().map(|sv| Msg::Vote(*sv)).collect(),
            },
            None => self
                .finalized_cert
                .iter()
                .map(|c| Msg::Certificate(Box::new(c.clone())))
                .collect(),
        };
        for m in reply {
            self.send(Target::One(peer), m);
        }
    }

    /// Adds a vote to its view's tally (verifying its signature unless `verified`) and forms a
    /// certificate at quorum. Votes that can no longer matter (the certificate exists) are
    /// dropped unverified, which saves most signature checks on the fast path.
    fn add_vote(&mut self, sv: SignedVote, verified: bool, out: &mut Vec<Effect>) {
        let v = sv.vote.view();
        let quorum = self.cfg.validators.quorum();
        let Some(round) = self.round_mut(v) else {
            return;
        };
        let (done, prior) = match sv.vote {
            Vote::Notarize(p) => (
                round.notarization.is_some(),
                round.notarizes.get(&sv.signer).map(|x| x.0 != p),
            ),
            Vote::Nullify(_) => (
                round.nullification.is_some(),
                round.nullifies.get(&sv.signer).map(|_| false),
            ),
            Vote::Finalize(p) => (
                round.finalization.is_some(),
                round.finalizes.get(&sv.signer).map(|x| x.0 != p),
            ),
        };
        if done {
            return;
        }
        match prior {
            Some(true) => {
                // A second, different vote of the same kind in one view: equivocation (only
                // counted once verified, so a forgery cannot frame a peer).
                if self.cfg.validators.verify(&sv) {
                    self.stats.equivocations += 1;
                }
                return;
            }
            Some(false) => return, // duplicate
            None => {}
        }
        if !verified && !self.cfg.validators.verify(&sv) {
            self.stats.invalid_signature += 1;
            return;
        }
        let Some(round) = self.rounds.get_mut(&v) else {
            return;
        };
        let cert = match sv.vote {
            Vote::Notarize(p) => {
                round.notarizes.insert(sv.signer, (p, sv.signature));
                collect(&round.notarizes, &p, quorum).map(|signatures| Certificate {
                    vote: sv.vote,
                    signatures,
                })
            }
            Vote::Nullify(_) => {
                round.nullifies.insert(sv.signer, sv.signature);
                (round.nullifies.len() >= quorum).then(|| Certificate {
                    vote: sv.vote,
                    signatures: round.nullifies.iter().map(|(i, s)| (*i, *s)).collect(),
                })
            }
            Vote::Finalize(p) => {
                round.finalizes.insert(sv.signer, (p, sv.signature));
                collect(&round.finalizes, &p, quorum).map(|signatures| Certificate {
                    vote: sv.vote,
                    signatures,
                })
            }
        };
        if let Some(cert) = cert {
            // We assembled it: tell everyone (the votes may not have reached them all).
            self.send(Target::All, Msg::Certificate(Box::new(cert.clone())));
            self.on_certificate(cert, out);
        }
    }

    fn on_certificate_msg(&mut self, cert: Certificate, out: &mut Vec<Effect>) {
        self.absorb_certificate(&cert, out);
    }

    /// Verifies a certificate we do not already hold and acts on it. Returns false if it is
    /// invalid. Certificates at or below the finalized view are ignored (true): they can no
    /// longer change anything.
    fn absorb_certificate(&mut self, cert: &Certificate, out: &mut Vec<Effect>) -> bool {
        let v = cert.view();
        if v <= self.finalized.view {
            return true;
        }
        if let Some(r) = self.rounds.get(&v) {
            let held = match cert.vote {
                Vote::Notarize(_) => &r.notarization,
                Vote::Nullify(_) => &r.nullification,
                Vote::Finalize(_) => &r.finalization,
            };
            if let Some(h) = held {
                if h.vote != cert.vote {
                    self.stats.conflicting_certificates += 1;
                }
                return true;
            }
        }
        if self.cfg.validators.verify_certificate(cert).is_err() {
            self.stats.invalid_certificate += 1;
            return false;
        }
        self.on_certificate(cert.clone(), out);
        true
    }

    /// Records a certificate in its round (no effects). Returns false if we already held one of
    /// this kind for the view.
    fn store_certificate(&mut self, cert: Certificate) -> bool {
        let v = cert.view();
        let finalized_view = self.finalized.view;
        let Some(round) = self.round_mut(v) else {
            return false;
        };
        let slot = match cert.vote {
            Vote::Notarize(_) => &mut round.notarization,
            Vote::Nullify(_) => &mut round.nullification,
            Vote::Finalize(_) => &mut round.finalization,
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(cert.clone());
        if let Vote::Finalize(p) = cert.vote
            && p.view > finalized_view
        {
            self.finalized = Tip {
                view: p.view,
                height: p.height,
                digest: p.digest,
            };
            self.finalized_cert = Some(cert);
        }
        true
    }

    /// Acts on a new, verified certificate:
    /// - notarization of v: enter v+1; sign finalize for the block if we did not nullify v and
    ///   our execution agreed; fetch the body if we lack it (a child will build on it);
    /// - nullification of v: enter v+1;
    /// - finalization of v: the block and its ancestors are final: deliver them in order, drop
    ///   the state of older views, enter v+1.
    ///
    /// A certificate that moves us forward is persisted, so that after a restart we can still
    /// give it to peers that did not see it.
    fn on_certificate(&mut self, cert: Certificate, out: &mut Vec<Effect>) {
        let v = cert.view();
        let vote = cert.vote;
        let advances =
            v >= self.view || (matches!(vote, Vote::Finalize(_)) && v > self.finalized.view);
        if !self.store_certificate(cert.clone()) {
            return;
        }
        if advances {
            out.push(Effect::Persist(Record::Certificate(cert)));
        }
        match vote {
            Vote::Notarize(p) => {
                if !self.blocks.contains_key(&p.digest) {
                    self.request(p.digest);
                }
                self.enter_view(v + 1, out);
                self.try_finalize(v, out);
            }
            Vote::Nullify(_) => self.enter_view(v + 1, out),
            Vote::Finalize(_) => {
                self.enter_view(v + 1, out);
                self.prune();
                self.try_deliver();
            }
        }
        // A new certificate may complete a pending proposal's justification.
        let current = self.view;
        self.try_notarize(current, out);
        self.try_propose();
    }

    fn on_request(&mut self, from: ValidatorIndex, digest: Digest) {
        if let Some(e) = self.blocks.get(&digest) {
            let block = e.block.clone();
            self.stats.requests_served += 1;
            self.send(Target::One(from), Msg::Block(Box::new(block)));
        }
    }

    /// A block body answering our request: trusted because its digest (recomputed from its
    /// contents when decoded) is one a certificate told us about.
    fn on_block(&mut self, block: Block, out: &mut Vec<Effect>) {
        let digest = block.digest();
        if self.requests.remove(&digest).is_none() || self.blocks.contains_key(&digest) {
            self.stats.unsolicited_blocks += 1;
            return;
        }
        let v = block.view();
        self.blocks.insert(
            digest,
            Entry {
                block,
                verify: Verify::NotRequested,
            },
        );
        self.try_verify(digest);
        self.try_finalize(v, out);
        self.try_propose();
        self.try_deliver();
    }

    // ----- timers and application answers -----

    /// The view timer. First expiry: nullify the view (the leader was slow or the view did not
    /// complete). Later expiries (every `timeout_retry`): rebroadcast our votes for the view,
    /// the certificate that got us into it, recent finalize votes, and pending body requests:
    /// this recovers lost messages without any reliable-broadcast layer.
    fn on_timeout(&mut self, view: View, out: &mut Vec<Effect>) {
        if view != self.view {
            return;
        }
        let already = self
            .rounds
            .get(&view)
            .is_some_and(|r| r.my_nullify.is_some());
        if !already {
            if let Some(sv) = self.sign(Vote::Nullify(view), out) {
                self.send(Target::All, Msg::Vote(sv));
                self.add_vote(sv, true, out);
            }
        } else {
            let mine: Vec<SignedVote> = self
                .rounds
                .get(&view)
                .map(|r| r.my_votes().copied().collect())
                .unwrap_or_default();
            for sv in mine {
                self.send(Target::All, Msg::Vote(sv));
            }
            let entry = self
                .rounds
                .get(&(view - 1))
                .and_then(|r| r.exit_certificate().cloned())
                .or_else(|| self.finalized_cert.clone());
            if let Some(c) = entry {
                self.send(Target::All, Msg::Certificate(Box::new(c)));
            }
            // Unchained finalization under loss: re-send finalize votes still short of a quorum.
            let from = self.finalized.view + 1;
            let lo = from.max(view.saturating_sub(FINALIZE_RESEND_VIEWS_MAX));
            let fin: Vec<SignedVote> = self
                .rounds
                .range(lo..view)
                .filter(|(_, r)| r.finalization.is_none())
                .filter_map(|(_, r)| r.my_finalize)
                .collect();
            for sv in fin {
                self.send(Target::All, Msg::Vote(sv));
            }
            let pending: Vec<Digest> = self.requests.keys().copied().collect();
            for d in pending {
                self.send_request(d);
            }
        }
        if self.view == view {
            self.schedule(view, self.cfg.timeout_retry);
        }
    }

    fn on_proposal_ready(
        &mut self,
        view: View,
        payload: Vec<u8>,
        commitment: B256,
        out: &mut Vec<Effect>,
    ) {
        let Some((asked, parent)) = self.proposing else {
            return;
        };
        // Stale (we left the view) or overtaken (the view timed out and we nullified it while
        // the application was building): drop the payload.
        if asked != view
            || view != self.view
            || !self.may_notarize(view)
            || payload.len() > PAYLOAD_BYTES_MAX
        {
            return;
        }
        let block = Block::new(
            view,
            parent.view,
            parent.height + 1,
            parent.digest,
            commitment,
            payload,
        );
        let Some(sv) = self.sign(Vote::Notarize(block.proposal()), out) else {
            return;
        };
        let parent_cert = if parent.view == 0 {
            None
        } else {
            self.rounds
                .get(&parent.view)
                .and_then(|r| r.finalization.as_ref().or(r.notarization.as_ref()).cloned())
                .or_else(|| {
                    self.finalized_cert
                        .clone()
                        .filter(|c| c.view() == parent.view)
                })
        };
        let nullifications: Vec<Certificate> = ((parent.view + 1)..view)
            .filter_map(|w| self.rounds.get(&w).and_then(|r| r.nullification.clone()))
            .collect();
        let digest = block.digest();
        let msg = Proposed {
            block: block.clone(),
            signature: sv.signature,
            parent: parent_cert,
            nullifications,
        };
        self.blocks.insert(
            digest,
            Entry {
                block,
                verify: Verify::Ok,
            },
        );
        if let Some(r) = self.round_mut(view) {
            r.proposal = Some(digest);
        }
        self.send(Target::All, Msg::Propose(Box::new(msg)));
        self.add_vote(sv, true, out);
    }

    fn on_verified(&mut self, digest: Digest, ok: bool, out: &mut Vec<Effect>) {
        let Some(e) = self.blocks.get_mut(&digest) else {
            return;
        };
        if e.verify != Verify::Pending {
            return;
        }
        let v = e.block.view();
        if ok {
            e.verify = Verify::Ok;
            self.try_notarize(v, out);
            self.try_finalize(v, out);
            let children: Vec<Digest> = self
                .blocks
                .iter()
                .filter(|(_, c)| c.block.parent() == digest)
                .map(|(d, _)| *d)
                .collect();
            for c in children {
                self.try_verify(c);
            }
            self.try_propose();
            self.try_deliver();
        } else {
            e.verify = Verify::Bad;
            self.stats.rejected_commitment += 1;
            // Our execution disagrees with the leader's commitment: this view's proposal is
            // invalid, so give up on the view at once rather than waiting for the timer.
            let is_current_proposal =
                v == self.view && self.rounds.get(&v).and_then(|r| r.proposal) == Some(digest);
            if is_current_proposal && let Some(sv) = self.sign(Vote::Nullify(v), out) {
                self.send(Target::All, Msg::Vote(sv));
                self.add_vote(sv, true, out);
                self.schedule(v, self.cfg.timeout_retry);
            }
        }
    }

    // ----- protocol steps -----

    /// Enter view `v` (no-op unless it is ahead of ours): start its timer and propose if we
    /// lead it. A proposal for `v` that arrived early is voted on now.
    fn enter_view(&mut self, v: View, out: &mut Vec<Effect>) {
        if v <= self.view {
            return;
        }
        self.view = v;
        self.proposing = None;
        self.schedule(v, self.cfg.timeout_leader);
        let stale: Vec<Digest> = self
            .requests
            .iter()
            .filter(|(_, (_, sent))| sent + 2 <= v)
            .map(|(d, _)| *d)
            .collect();
        for d in stale {
            self.send_request(d);
        }
        self.try_propose();
        self.try_notarize(v, out);
    }

    /// (view, height, digest) of the block certified at view `w`, if any: genesis, our
    /// finalized or delivered tip, or a notarization/finalization we hold.
    fn certified_at(&self, w: View) -> Option<Tip> {
        if w == 0 {
            return Some(Tip {
                view: 0,
                height: 0,
                digest: self.cfg.genesis,
            });
        }
        if w == self.finalized.view {
            return Some(self.finalized);
        }
        if w == self.delivered.view {
            return Some(self.delivered);
        }
        self.rounds.get(&w)?.certified().map(|p| Tip {
            view: w,
            height: p.height,
            digest: p.digest,
        })
    }

    /// The Simplex parent rule for a proposal in `view` naming a parent: the parent is
    /// certified at `parent_view` (not below our finalized view), and every view strictly
    /// between is nullified. This is what stops a proposal from forking around a block that
    /// may be finalized (a finalized view can never be nullified).
    fn parent_valid(&self, b: &Block) -> bool {
        if b.parent_view() < self.finalized.view
            || (b.view() - b.parent_view() - 1) as usize > NULLIFICATIONS_MAX
        {
            return false;
        }
        let certified = self.certified_at(b.parent_view());
        if !certified.is_some_and(|t| t.digest == b.parent() && t.height + 1 == b.height()) {
            return false;
        }
        ((b.parent_view() + 1)..b.view()).all(|w| {
            self.rounds
                .get(&w)
                .is_some_and(|r| r.nullification.is_some())
        })
    }

    /// The parent a leader of `view` builds on: walk down from view-1 over nullified views to
    /// the first certified one. `None` if some view in between is neither (we lack a
    /// certificate; the view will time out).
    fn choose_parent(&self, view: View) -> Option<Tip> {
        let mut w = view.checked_sub(1)?;
        loop {
            if let Some(t) = self.certified_at(w) {
                return Some(t);
            }
            if w <= self.finalized.view || (view - w) as usize > NULLIFICATIONS_MAX {
                return None;
            }
            self.rounds.get(&w)?.nullification.as_ref()?;
            w -= 1;
        }
    }

    fn is_verified(&self, digest: &Digest) -> bool {
        *digest == self.delivered.digest
            || self
                .blocks
                .get(digest)
                .is_some_and(|e| e.verify == Verify::Ok)
    }

    fn may_notarize(&self, v: View) -> bool {
        v > self.sign_floor
            && self
                .rounds
                .get(&v)
                .is_none_or(|r| r.my_notarize.is_none() && r.my_nullify.is_none())
    }

    /// If we lead the current view and may still vote in it, ask the application for a payload
    /// once the parent is known and executed (fetching its body if needed).
    fn try_propose(&mut self) {
        let v = self.view;
        if self.leader(v) != self.me
            || self.proposing.is_some_and(|(pv, _)| pv == v)
            || !self.may_notarize(v)
        {
            return;
        }
        let Some(parent) = self.choose_parent(v) else {
            return;
        };
        if !self.is_verified(&parent.digest) {
            if !self.blocks.contains_key(&parent.digest) {
                self.request(parent.digest);
            }
            return;
        }
        self.proposing = Some((v, parent));
        self.deferred.push(Effect::Propose {
            view: v,
            parent: parent.digest,
            parent_view: parent.view,
            height: parent.height + 1,
        });
    }

    /// Notarize the current view's proposal if: we have not voted notarize or nullify in it,
    /// its parent is valid (see [`Engine::parent_valid`]) and our execution agreed.
    fn try_notarize(&mut self, v: View, out: &mut Vec<Effect>) {
        if v != self.view || !self.may_notarize(v) {
            return;
        }
        let Some(digest) = self.rounds.get(&v).and_then(|r| r.proposal) else {
            return;
        };
        let Some(e) = self.blocks.get(&digest) else {
            return;
        };
        if !self.parent_valid(&e.block) {
            return;
        }
        match e.verify {
            Verify::Ok => {}
            Verify::NotRequested => return self.try_verify(digest),
            Verify::Pending | Verify::Bad => return,
        }
        let proposal = e.block.proposal();
        if let Some(sv) = self.sign(Vote::Notarize(proposal), out) {
            self.send(Target::All, Msg::Vote(sv));
            self.schedule(v, self.cfg.timeout_notarization);
            self.add_vote(sv, true, out);
        }
    }

    /// Finalize view `v`'s notarized block if we did not nullify `v`, have not finalized it,
    /// it is above our finalized view, and our execution agreed with its commitment.
    fn try_finalize(&mut self, v: View, out: &mut Vec<Effect>) {
        if v <= self.finalized.view || v <= self.sign_floor {
            return;
        }
        let Some(r) = self.rounds.get(&v) else { return };
        if r.my_nullify.is_some() || r.my_finalize.is_some() || r.finalization.is_some() {
            return;
        }
        let Some(Vote::Notarize(p)) = r.notarization.as_ref().map(|c| c.vote) else {
            return;
        };
        if r.my_notarize.is_some_and(|m| m.vote != Vote::Notarize(p)) {
            // We notarized another block of this view: the leader equivocated. Stay out of
            // this view's finalization (the block can still be finalized by a descendant).
            return;
        }
        match self.blocks.get(&p.digest).map(|e| e.verify) {
            Some(Verify::Ok) => {}
            Some(Verify::NotRequested) => return self.try_verify(p.digest),
            _ => return,
        }
        if let Some(sv) = self.sign(Vote::Finalize(p), out) {
            self.send(Target::All, Msg::Vote(sv));
            self.add_vote(sv, true, out);
        }
    }

    /// Ask the application to execute a block once its parent is executed: the parent is our
    /// delivered tip or a verified block above it.
    fn try_verify(&mut self, digest: Digest) {
        let Some(e) = self.blocks.get(&digest) else {
            return;
        };
        if e.verify != Verify::NotRequested || e.block.height() <= self.delivered.height {
            return;
        }
        let parent = e.block.parent();
        let parent_ok = parent == self.delivered.digest
            || self.blocks.get(&parent).is_some_and(|p| {
                p.verify == Verify::Ok && p.block.height() > self.delivered.height
            });
        if !parent_ok {
            // A missing ancestor (we were down or its proposal was lost): fetch it. Its own
            // parent is fetched in turn once it arrives, down to what we delivered.
            if !self.blocks.contains_key(&parent) && e.block.height() > self.delivered.height + 1 {
                self.request(parent);
            }
            return;
        }
        let block = e.block.clone();
        if let Some(e) = self.blocks.get_mut(&digest) {
            e.verify = Verify::Pending;
        }
        self.deferred.push(Effect::Verify(block));
    }

    /// Deliver finalized blocks in height order. Walk down from the finalized tip to the block
    /// right above the delivered one (fetching any missing body), then deliver it once our
    /// execution agreed; repeat.
    fn try_deliver(&mut self) {
        while self.delivered.height < self.finalized.height {
            let mut d = self.finalized.digest;
            let next = loop {
                let Some(e) = self.blocks.get(&d) else {
                    self.request(d);
                    return;
                };
                if e.block.height() <= self.delivered.height + 1 {
                    break d;
                }
                d = e.block.parent();
            };
            let Some(e) = self.blocks.get(&next) else {
                return;
            };
            if e.block.height() != self.delivered.height + 1
                || e.block.parent() != self.delivered.digest
            {
                // The finalized chain does not extend what we delivered: more than f faults.
                self.stats.forks += 1;
                return;
            }
            match e.verify {
                Verify::Ok => {}
                Verify::NotRequested => return self.try_verify(next),
                Verify::Pending => return,
                Verify::Bad => {
                    self.stats.finalized_rejected += 1;
                    return;
                }
            }
            let block = e.block.clone();
            let finalization = self
                .rounds
                .get(&block.view())
                .and_then(|r| r.finalization.clone())
                .filter(|c| matches!(c.vote, Vote::Finalize(p) if p.digest == next));
            self.delivered = Tip {
                view: block.view(),
                height: block.height(),
                digest: next,
            };
            self.delivered_cache.push_back(next);
            while self.delivered_cache.len() > self.cfg.blocks_cached_max {
                if let Some(old) = self.delivered_cache.pop_front() {
                    self.blocks.remove(&old);
                }
            }
            self.deferred.push(Effect::Deliver(Finalized {
                block,
                finalization,
            }));
            let children: Vec<Digest> = self
                .blocks
                .iter()
                .filter(|(_, c)| c.block.parent() == next)
                .map(|(d, _)| *d)
                .collect();
            for c in children {
                self.try_verify(c);
            }
        }
    }

    fn request(&mut self, digest: Digest) {
        if self.requests.contains_key(&digest) || self.requests.len() >= REQUESTS_MAX {
            return;
        }
        self.requests.insert(digest, (0, self.view));
        self.send_request(digest);
    }

    /// Ask one peer for a body, a different one on each attempt.
    fn send_request(&mut self, digest: Digest) {
        let n = self.cfg.validators.n() as u64;
        if n < 2 {
            return;
        }
        let view = self.view;
        let Some((attempt, sent)) = self.requests.get_mut(&digest) else {
            return;
        };
        *attempt += 1;
        *sent = view;
        let offset = (u64::from(digest[0]) + u64::from(*attempt)) % (n - 1);
        let peer = ((u64::from(self.me) + 1 + offset) % n) as ValidatorIndex;
        self.stats.requests_sent += 1;
        self.send(Target::One(peer), Msg::Request(digest));
    }

    /// Drop what finality made useless: rounds below the finalized view (we never vote there
    /// again: the signing floor rises with it) and bodies of blocks that lost.
    fn prune(&mut self) {
        let f = self.finalized.view;
        self.sign_floor = self.sign_floor.max(f);
        self.rounds = self.rounds.split_off(&f);
        let delivered_h = self.delivered.height;
        let cached: BTreeSet<Digest> = self.delivered_cache.iter().copied().collect();
        self.blocks.retain(|d, e| {
            cached.contains(d) || e.block.view() >= f || e.block.height() > delivered_h
        });
        let blocks = &self.blocks;
        self.requests.retain(|d, _| !blocks.contains_key(d));
    }
}

/// Signatures of the votes for `p`, sorted by signer, if they reach the quorum.
fn collect(
    votes: &BTreeMap<ValidatorIndex, (Proposal, crate::types::Signature)>,
    p: &Proposal,
    quorum: usize,
) -> Option<Vec<(ValidatorIndex, crate::types::Signature)>> {
    let sigs: Vec<_> = votes
        .iter()
        .filter(|(_, (q, _))| q == p)
        .map(|(i, (_, s))| (*i, *s))
        .collect();
    (sigs.len() >= quorum).then_some(sigs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signing_key_from_seed;

    fn setup() -> (Vec<SigningKey>, Config) {
        let keys: Vec<SigningKey> = (0..4)
            .map(|i| signing_key_from_seed([i as u8 + 1; 32]))
            .collect();
        let validators =
            Validators::new(keys.iter().map(|k| k.verifying_key()).collect(), b"t").unwrap();
        (keys, Config::new(validators, B256::repeat_byte(0xee)))
    }

    /// Validator 1 leads view 1 (round-robin); build its proposal on genesis.
    fn proposal(keys: &[SigningKey], cfg: &Config) -> Proposed {
        let block = Block::new(1, 0, 1, cfg.genesis, B256::repeat_byte(1), b"txs".to_vec());
        let signature = cfg
            .validators
            .sign(&keys[1], &Vote::Notarize(block.proposal()));
        Proposed {
            block,
            signature,
            parent: None,
            nullifications: vec![],
        }
    }

    fn run(e: &mut Engine, ev: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        e.handle(ev, &mut out);
        out
    }

    #[test]
    fn notarizes_after_verification_and_persists_before_sending() {
        let (keys, cfg) = setup();
        let p = proposal(&keys, &cfg);
        let digest = p.block.digest();
        let mut e = Engine::new(
            cfg.clone(),
            keys[2].clone(),
            Replay::default(),
            Anchor::genesis(cfg.genesis),
        )
        .unwrap();
        e.start(&mut Vec::new());
        let out = run(&mut e, Event::Message(1, Msg::Propose(Box::new(p))));
        assert!(matches!(out.as_slice(), [Effect::Verify(b)] if b.digest() == digest));
        let out = run(&mut e, Event::Verified { digest, ok: true });
        let first_send = out
            .iter()
            .position(|x| matches!(x, Effect::Send(..)))
            .unwrap();
        let last_persist = out
            .iter()
            .rposition(|x| matches!(x, Effect::Persist(_)))
            .unwrap();
        assert!(last_persist < first_send);
        assert!(
            matches!(&out[0], Effect::Persist(Record::Vote(Vote::Notarize(q))) if q.digest == digest)
        );
        assert!(out.iter().any(|x| matches!(x, Effect::Send(Target::All, Msg::Vote(sv)) if sv.vote == Vote::Notarize(proposal(&keys, &cfg).block.proposal()))));
    }

    #[test]
    fn replayed_nullify_forbids_notarize_after_restart() {
        let (keys, cfg) = setup();
        let p = proposal(&keys, &cfg);
        let digest = p.block.digest();
        let replay = Replay {
            records: vec![Record::Vote(Vote::Nullify(1))],
            floor_view: 0,
        };
        let mut e = Engine::new(
            cfg.clone(),
            keys[2].clone(),
            replay,
            Anchor::genesis(cfg.genesis),
        )
        .unwrap();
        let mut out = Vec::new();
        e.start(&mut out);
        // On start it re-sends the replayed nullify (same signature: ed25519 is deterministic).
        assert!(out.iter().any(
            |x| matches!(x, Effect::Send(Target::All, Msg::Vote(sv)) if sv.vote == Vote::Nullify(1))
        ));
        run(&mut e, Event::Message(1, Msg::Propose(Box::new(p))));
        let out = run(&mut e, Event::Verified { digest, ok: true });
        assert!(
            out.iter()
                .all(|x| !matches!(x, Effect::Persist(_) | Effect::Send(_, Msg::Vote(_)))),
            "{out:?}"
        );
        assert_eq!(e.stats().refused_votes, 0);
    }

    #[test]
    fn conflicting_log_refuses_to_start() {
        let (keys, cfg) = setup();
        let a = Proposal {
            view: 3,
            parent_view: 2,
            height: 3,
            digest: B256::repeat_byte(1),
        };
        let b = Proposal {
            digest: B256::repeat_byte(2),
            ..a
        };
        let replay = Replay {
            records: vec![
                Record::Vote(Vote::Notarize(a)),
                Record::Vote(Vote::Notarize(b)),
            ],
            floor_view: 0,
        };
        let r = Engine::new(
            cfg.clone(),
            keys[0].clone(),
            replay,
            Anchor::genesis(cfg.genesis),
        );
        assert!(matches!(r, Err(StartError::ConflictingReplay(_))));
        // Notarize then nullify is a legal history.
        let replay = Replay {
            records: vec![
                Record::Vote(Vote::Notarize(a)),
                Record::Vote(Vote::Nullify(3)),
            ],
            floor_view: 0,
        };
        let e = Engine::new(
            cfg.clone(),
            keys[0].clone(),
            replay,
            Anchor::genesis(cfg.genesis),
        )
        .unwrap();
        assert_eq!(e.view(), 3);
    }

    #[test]
    fn wrong_commitment_is_rejected_and_nullified_at_once() {
        let (keys, cfg) = setup();
        let p = proposal(&keys, &cfg);
        let digest = p.block.digest();
        let mut e = Engine::new(
            cfg.clone(),
            keys[2].clone(),
            Replay::default(),
            Anchor::genesis(cfg.genesis),
        )
        .unwrap();
        e.start(&mut Vec::new());
        run(&mut e, Event::Message(1, Msg::Propose(Box::new(p))));
        let out = run(&mut e, Event::Verified { digest, ok: false });
        assert!(matches!(
            &out[0],
            Effect::Persist(Record::Vote(Vote::Nullify(1)))
        ));
        assert_eq!(e.stats().rejected_commitment, 1);
    }
}
