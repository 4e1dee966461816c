//! A deterministic simulator for the consensus engine.
//!
//! One seed fixes everything: the scenario (validators, twins, Byzantine behaviours, link
//! latencies, loss, partitions, crashes) and every random choice while it runs (ChaCha8).
//! Time is virtual (nanoseconds); nothing reads the wall clock except the optional
//! [`Cpu::Measured`] model used by the latency measurement (not by seeded runs).
//!
//! Each simulated process runs a real [`Engine`] with a real [`VoteLog`] over a [`MemStorage`]
//! disk, driven exactly as a production driver must: persist, sync once, then send. Invariants
//! are checked at every step (see [`World::check_send`], [`World::on_deliver`]) and liveness
//! after the faults heal.

#![allow(dead_code)]
// Processes are addressed by index throughout (latency matrix, partition sides).
#![allow(clippy::needless_range_loop)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use alloy_primitives::{B256, keccak256};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rtchain_consensus::{
    Anchor, Block, Config, Digest, Effect, Engine, Event, Msg, Proposal, SignedVote, SyncMode,
    Target, ValidatorIndex, Validators, View, Vote, VoteLog, VoteLogConfig, signing_key_from_seed,
    votelog::MemStorage,
};

pub const US: u64 = 1_000;
pub const MS: u64 = 1_000_000;

/// What a faulty validator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// As leader, sends different blocks to different peers; as voter, sends conflicting
    /// notarize/finalize votes to different peers.
    Equivocate,
    /// Drops most of its votes and some of its proposals.
    Withhold,
    /// Corrupts the signature of half its votes and proposals.
    BadSignature,
    /// As leader, proposes blocks whose post-state commitment is wrong.
    BadCommitment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Honest,
    /// One of two processes sharing a key (each runs the honest code with its own disk).
    Twin,
    Byzantine(Behavior),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// Processing takes no virtual time.
    Zero,
    /// Each engine step takes the wall-clock time it really took, capped at 500 us
    /// (measurement only: not deterministic).
    Measured,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub n: usize,
    /// Process i runs validator `procs[i].0`.
    pub procs: Vec<(ValidatorIndex, Kind)>,
    /// One-way latency between processes.
    pub latency_ns: Vec<Vec<u64>>,
    /// Jitter: uniform extra delay up to this fraction of the link's latency (reorders).
    pub jitter: f64,
    pub loss: f64,
    pub duplicate: f64,
    pub mutate: f64,
    pub replay: f64,
    /// (start, end, side of each process): messages between sides are dropped.
    pub partitions: Vec<(u64, u64, Vec<u8>)>,
    /// (process, crash time, restart time).
    pub crashes: Vec<(usize, u64, u64)>,
    /// From here on: no loss, mutation, duplication, replay or partition; everyone is up.
    pub heal_at: u64,
    /// Every honest process must deliver `liveness_blocks` more blocks within this long.
    pub liveness_bound: u64,
    pub liveness_blocks: u64,
    pub timeout_leader: Duration,
    pub timeout_notarization: Duration,
    pub timeout_retry: Duration,
    pub build_ns: u64,
    pub verify_ns: u64,
    pub log_slots: u64,
    pub cpu: Cpu,
    /// Virtual cost of one vote-log sync.
    pub sync_ns: u64,
    /// Stop once every honest process delivered this many blocks (latency runs).
    pub stop_at_height: Option<u64>,
}

impl Scenario {
    /// The random scenario for a seed: n = 4 (sometimes 7), up to f faulty validators (twins or
    /// Byzantine), per-link latency 50 us to 3 ms with jitter, loss, duplication, mutation,
    /// replay, partitions and crash/restart of honest processes until `heal_at`.
    pub fn random(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_u64 << 32);
        let n = if rng.random_bool(0.2) { 7 } else { 4 };
        let f = (n - 1) / 3;
        let faulty = rng.random_range(0..=f);
        let mut procs: Vec<(ValidatorIndex, Kind)> = (0..n)
            .map(|i| (i as ValidatorIndex, Kind::Honest))
            .collect();
        let mut keys: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            keys.swap(i, rng.random_range(0..=i));
        }
        for &k in &keys[..faulty] {
            let kind = match rng.random_range(0..5) {
                0 => Kind::Twin,
                1 => Kind::Byzantine(Behavior::Equivocate),
                2 => Kind::Byzantine(Behavior::Withhold),
                3 => Kind::Byzantine(Behavior::BadSignature),
                _ => Kind::Byzantine(Behavior::BadCommitment),
            };
            procs[k].1 = kind;
            if kind == Kind::Twin {
                procs.push((k as ValidatorIndex, Kind::Twin));
            }
        }
        let p = procs.len();
        let (lo, hi) = if rng.random_bool(0.5) {
            (50 * US, 500 * US)
        } else {
            (100 * US, 3 * MS)
        };
        let mut latency_ns = vec![vec![0; p]; p];
        for a in 0..p {
            for b in a + 1..p {
                let l = rng.random_range(lo..=hi);
                latency_ns[a][b] = l;
                latency_ns[b][a] = l;
            }
        }
        let heal_at = rng.random_range(20..100) * MS;
        let mut partitions = Vec::new();
        for _ in 0..rng.random_range(0..3) {
            let start = rng.random_range(0..heal_at);
            let end = (start + rng.random_range(5 * MS..60 * MS)).min(heal_at);
            let side: Vec<u8> = (0..p).map(|_| rng.random_range(0..2)).collect();
            partitions.push((start, end, side));
        }
        let mut crashes = Vec::new();
        for _ in 0..rng.random_range(0..=2) {
            let who = rng.random_range(0..p);
            let at = rng.random_range(0..heal_at.saturating_sub(2 * MS).max(1));
            let back = (at + rng.random_range(MS..40 * MS)).min(heal_at - MS);
            if back > at
                && !crashes.iter().any(|(w, a, b): &(usize, u64, u64)| {
                    *w == who && at <= *b + MS && *a <= back + MS
                })
            {
                crashes.push((who, at, back));
            }
        }
        let delta = hi + hi / 2;
        Self {
            seed,
            n,
            procs,
            latency_ns,
            jitter: rng.random_range(0.0..0.5),
            loss: if rng.random_bool(0.7) {
                rng.random_range(0.0..0.1)
            } else {
                0.0
            },
            duplicate: rng.random_range(0.0..0.05),
            mutate: if rng.random_bool(0.5) {
                rng.random_range(0.0..0.02)
            } else {
                0.0
            },
            replay: if rng.random_bool(0.5) {
                rng.random_range(0.0..0.02)
            } else {
                0.0
            },
            partitions,
            crashes,
            heal_at,
            liveness_bound: 1500 * MS,
            liveness_blocks: 2,
            timeout_leader: Duration::from_nanos(4 * delta + 2 * MS),
            timeout_notarization: Duration::from_nanos(6 * delta + 2 * MS),
            timeout_retry: Duration::from_nanos(2 * delta + MS),
            build_ns: rng.random_range(0..2 * MS),
            verify_ns: rng.random_range(0..200 * US),
            log_slots: if rng.random_bool(0.3) { 64 } else { 4096 },
            cpu: Cpu::Zero,
            sync_ns: 0,
            stop_at_height: None,
        }
    }

    /// The negative control: n = 4 with f+1 = 2 keys twinned, and a partition that puts one twin
    /// of each with one honest validator on each side. Each side has three keys, a quorum, so
    /// both sides finalize, different blocks: the checker must see it.
    pub fn negative_control(seed: u64) -> Self {
        let mut s = Self::random(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00ff_u64 << 40);
        s.n = 4;
        s.procs = vec![
            (0, Kind::Twin),
            (1, Kind::Twin),
            (2, Kind::Honest),
            (3, Kind::Honest),
            (0, Kind::Twin),
            (1, Kind::Twin),
        ];
        let p = s.procs.len();
        let l = rng.random_range(50 * US..500 * US);
        s.latency_ns = vec![vec![l; p]; p];
        s.partitions = vec![(0, s.heal_at, vec![0, 0, 0, 1, 1, 1])];
        s.crashes.clear();
        s.loss = 0.0;
        s.timeout_leader = Duration::from_millis(3);
        s.timeout_notarization = Duration::from_millis(4);
        s.timeout_retry = Duration::from_millis(2);
        s
    }

    /// All links `link_ns`, no jitter or faults: the fast path.
    pub fn clean(n: usize, link_ns: u64, blocks: u64, cpu: Cpu, sync_ns: u64) -> Self {
        let mut s = Self::random(0);
        s.n = n;
        s.procs = (0..n)
            .map(|i| (i as ValidatorIndex, Kind::Honest))
            .collect();
        s.latency_ns = vec![vec![link_ns; n]; n];
        s.jitter = 0.0;
        s.loss = 0.0;
        s.duplicate = 0.0;
        s.mutate = 0.0;
        s.replay = 0.0;
        s.partitions.clear();
        s.crashes.clear();
        s.heal_at = 0;
        s.liveness_bound = 10_000 * MS;
        s.liveness_blocks = blocks;
        s.timeout_leader = Duration::from_millis(5);
        s.timeout_notarization = Duration::from_millis(5);
        s.timeout_retry = Duration::from_millis(2);
        s.build_ns = 0;
        s.verify_ns = 0;
        s.log_slots = 4096;
        s.cpu = cpu;
        s.sync_ns = sync_ns;
        s.stop_at_height = Some(blocks);
        s
    }

    pub fn describe(&self) -> String {
        let kinds: Vec<String> = self
            .procs
            .iter()
            .map(|(k, kind)| format!("{k}:{kind:?}"))
            .collect();
        format!(
            "seed {} n={} procs=[{}] loss={:.3} dup={:.3} mutate={:.3} replay={:.3} jitter={:.2} partitions={} crashes={:?} heal_at={}ms log_slots={}",
            self.seed,
            self.n,
            kinds.join(" "),
            self.loss,
            self.duplicate,
            self.mutate,
            self.replay,
            self.jitter,
            self.partitions.len(),
            self.crashes
                .iter()
                .map(|(p, a, b)| format!("p{p}@{}..{}ms", a / MS, b / MS))
                .collect::<Vec<_>>(),
            self.heal_at / MS,
            self.log_slots,
        )
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub safety_violation: bool,
    pub steps: u64,
    pub end_ns: u64,
    /// Lowest delivered height among honest processes at the end.
    pub min_height: u64,
    /// Proposal sent -> delivered, per (block, honest process).
    pub finalize_latency_ns: Vec<u64>,
    pub malformed: u64,
    pub invalid_signatures: u64,
    pub equivocations: u64,
    pub rejected_commitments: u64,
    pub restarts: u64,
    pub torn_slots: u64,
}

enum Ev {
    Net {
        to: usize,
        from: ValidatorIndex,
        bytes: Rc<Vec<u8>>,
    },
    Timer {
        p: usize,
        inc: u64,
        tgen: u64,
        view: View,
    },
    Verified {
        p: usize,
        inc: u64,
        digest: Digest,
        ok: bool,
    },
    Ready {
        p: usize,
        inc: u64,
        view: View,
        payload: Vec<u8>,
        commitment: B256,
    },
    Crash {
        p: usize,
    },
    Restart {
        p: usize,
    },
    Heal,
}

/// The application of one process: the finalized chain it committed and the blocks it
/// accepted (its mini-block log; both durable: they survive a crash), and the commitments of
/// blocks it executed (volatile).
struct App {
    chain: Vec<(Digest, B256)>,
    stored: HashMap<Digest, Block>,
    anchor: Anchor,
    anchor_commitment: B256,
    executed: HashMap<Digest, B256>,
    built: u64,
}

struct Proc {
    key: ValidatorIndex,
    kind: Kind,
    engine: Option<Engine>,
    log: Option<VoteLog<MemStorage>>,
    disk: Option<MemStorage>,
    app: App,
    inc: u64,
    timer_gen: u64,
    busy_until: u64,
    /// Crash in the middle of the next step: after its persists are written, before the sync.
    crash_mid_step: bool,
}

#[derive(Default, Clone, Copy)]
struct Signed {
    notarize: Option<Proposal>,
    nullify: bool,
    finalize: Option<Proposal>,
}

pub struct World {
    sc: Scenario,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    procs: Vec<Proc>,
    keys: Vec<SigningKey>,
    validators: Validators,
    genesis: Digest,
    healed: bool,
    history: Vec<(ValidatorIndex, Rc<Vec<u8>>)>,
    /// Height -> (digest, commitment) finalized by any honest process.
    finalized: BTreeMap<u64, (Digest, B256)>,
    /// Every vote an honest key sent, per key and view.
    signed: HashMap<(ValidatorIndex, View), Signed>,
    proposed_at: HashMap<Digest, u64>,
    heights_at_heal: Vec<u64>,
    out: Outcome,
    trace: bool,
    done: bool,
}

pub fn commit(parent: &B256, payload: &[u8]) -> B256 {
    let mut b = parent.to_vec();
    b.extend_from_slice(payload);
    keccak256(&b)
}

pub fn run(sc: &Scenario, trace: bool) -> Outcome {
    let mut w = World::new(sc.clone(), trace);
    w.run();
    w.out
}

impl World {
    fn new(sc: Scenario, trace: bool) -> Self {
        let keys: Vec<SigningKey> = (0..sc.n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                signing_key_from_seed(seed)
            })
            .collect();
        let validators = Validators::new(keys.iter().map(|k| k.verifying_key()).collect(), b"sim")
            .expect("validator set");
        let genesis = keccak256(b"rtchain-sim-genesis");
        let procs = sc
            .procs
            .iter()
            .map(|(key, kind)| Proc {
                key: *key,
                kind: *kind,
                engine: None,
                log: None,
                disk: Some(MemStorage::new(
                    VoteLogConfig {
                        slots: sc.log_slots,
                        sync: SyncMode::Always,
                    }
                    .size_bytes(),
                )),
                app: App {
                    chain: Vec::new(),
                    stored: HashMap::new(),
                    anchor: Anchor::genesis(genesis),
                    anchor_commitment: B256::ZERO,
                    executed: HashMap::new(),
                    built: 0,
                },
                inc: 0,
                timer_gen: 0,
                busy_until: 0,
                crash_mid_step: false,
            })
            .collect();
        let rng = ChaCha8Rng::seed_from_u64(sc.seed);
        Self {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            procs,
            keys,
            validators,
            genesis,
            healed: false,
            history: Vec::new(),
            finalized: BTreeMap::new(),
            signed: HashMap::new(),
            proposed_at: HashMap::new(),
            heights_at_heal: Vec::new(),
            out: Outcome::default(),
            trace,
            done: false,
            sc,
        }
    }

    fn honest(&self, p: usize) -> bool {
        self.procs[p].kind == Kind::Honest
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn violation(&mut self, safety: bool, msg: String) {
        if self.trace {
            println!("[{:>10.3}ms] VIOLATION {msg}", self.now as f64 / MS as f64);
        }
        self.out.safety_violation |= safety;
        self.out.violations.push(msg);
        self.done = true;
    }

    fn run(&mut self) {
        for p in 0..self.procs.len() {
            self.boot(p);
        }
        for (p, at, back) in self.sc.crashes.clone() {
            self.push(at, Ev::Crash { p });
            self.push(back, Ev::Restart { p });
        }
        let heal = self.sc.heal_at;
        self.push(heal, Ev::Heal);
        let deadline = heal + self.sc.liveness_bound;
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if self.done {
                break;
            }
            if t > deadline {
                self.now = deadline;
                self.check_liveness(true);
                break;
            }
            self.now = t;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.out.steps += 1;
            self.step(ev);
        }
        self.out.end_ns = self.now;
        self.out.min_height = (0..self.procs.len())
            .filter(|p| self.honest(*p))
            .map(|p| self.procs[p].app.chain.len() as u64)
            .min()
            .unwrap_or(0);
        for p in &self.procs {
            if let Some(e) = &p.engine {
                let s = e.stats();
                self.out.malformed += s.malformed;
                self.out.invalid_signatures += s.invalid_signature;
                self.out.equivocations += s.equivocations;
                self.out.rejected_commitments += s.rejected_commitment;
            }
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(self.validators.clone(), self.genesis);
        c.timeout_leader = self.sc.timeout_leader;
        c.timeout_notarization = self.sc.timeout_notarization;
        c.timeout_retry = self.sc.timeout_retry;
        c
    }

    /// Start (or restart) a process: open its log, replay, build the engine from the app's
    /// anchor, and perform the start effects.
    fn boot(&mut self, p: usize) {
        let Some(disk) = self.procs[p].disk.take() else {
            return;
        };
        let cfg = VoteLogConfig {
            slots: self.sc.log_slots,
            sync: SyncMode::Always,
        };
        let key = self.keys[self.procs[p].key as usize].clone();
        let (log, replay) = match VoteLog::open(disk, cfg, key.verifying_key().as_bytes()) {
            Ok(x) => x,
            Err(e) => return self.violation(false, format!("p{p}: vote log failed to open: {e}")),
        };
        self.out.torn_slots += log.report().torn_slots;
        let anchor = self.procs[p].app.anchor.clone();
        let mut engine = match Engine::new(self.config(), key, replay, anchor) {
            Ok(e) => e,
            Err(e) => return self.violation(true, format!("p{p}: engine refused to start: {e}")),
        };
        // The application hands back the blocks it stored (the Verify durability contract).
        for b in self.procs[p].app.stored.values() {
            engine.restore_block(b.clone());
        }
        if self.trace {
            println!(
                "[{:>10.3}ms] p{p} boots at view {} (log: {:?})",
                self.now as f64 / MS as f64,
                engine.view(),
                log.report()
            );
        }
        let proc = &mut self.procs[p];
        proc.inc += 1;
        proc.engine = Some(engine);
        proc.log = Some(log);
        proc.app.executed.clear();
        proc.busy_until = self.now;
        let mut effects = Vec::new();
        if let Some(e) = proc.engine.as_mut() {
            e.start(&mut effects);
        }
        self.drive(p, self.now, effects);
    }

    fn crash(&mut self, p: usize) {
        let proc = &mut self.procs[p];
        let Some(log) = proc.log.take() else { return };
        proc.engine = None;
        proc.inc += 1;
        let mut disk = log.into_storage();
        let bits: u64 = self.rng.random();
        disk.crash(bits);
        proc.disk = Some(disk);
        self.out.restarts += 1;
        if self.trace {
            println!("[{:>10.3}ms] p{p} crashes", self.now as f64 / MS as f64);
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Heal => {
                self.healed = true;
                self.heights_at_heal = self
                    .procs
                    .iter()
                    .map(|p| p.app.chain.len() as u64)
                    .collect();
                if self.trace {
                    println!(
                        "[{:>10.3}ms] heal: heights {:?}",
                        self.now as f64 / MS as f64,
                        self.heights_at_heal
                    );
                }
                self.check_liveness(false);
            }
            Ev::Crash { p } => {
                // Half the crashes hit mid-step: written but unsynced votes are lost or torn.
                if self.rng.random_bool(0.5) {
                    self.procs[p].crash_mid_step = true;
                } else {
                    self.crash(p);
                }
            }
            Ev::Restart { p } => {
                if self.procs[p].engine.is_none() {
                    self.boot(p);
                } else {
                    self.procs[p].crash_mid_step = false;
                }
            }
            Ev::Net { to, from, bytes } => {
                self.input(to, None, |e, out| e.handle_bytes(from, &bytes, out))
            }
            Ev::Timer { p, inc, tgen, view } => {
                if self.procs[p].timer_gen == tgen {
                    self.input(p, Some(inc), |e, out| e.handle(Event::Timeout(view), out));
                }
            }
            Ev::Verified { p, inc, digest, ok } => self.input(p, Some(inc), |e, out| {
                e.handle(Event::Verified { digest, ok }, out)
            }),
            Ev::Ready {
                p,
                inc,
                view,
                payload,
                commitment,
            } => self.input(p, Some(inc), |e, out| {
                e.handle(
                    Event::ProposalReady {
                        view,
                        payload,
                        commitment,
                    },
                    out,
                )
            }),
        }
    }

    /// Run one engine step on process `p` (if it is up and, for timers and application answers,
    /// still the same incarnation), then drive its effects.
    fn input(&mut self, p: usize, inc: Option<u64>, f: impl FnOnce(&mut Engine, &mut Vec<Effect>)) {
        let proc = &mut self.procs[p];
        if inc.is_some_and(|i| i != proc.inc) {
            return;
        }
        let Some(engine) = proc.engine.as_mut() else {
            return;
        };
        let start = self.now.max(proc.busy_until);
        let mut effects = Vec::new();
        let wall = Instant::now();
        f(engine, &mut effects);
        let elapsed = match self.sc.cpu {
            Cpu::Zero => 0,
            // Wall clock, capped: a step longer than 500 us is this thread being descheduled
            // (the test machine is shared), not engine work (a step is 10-100 us).
            Cpu::Measured => (wall.elapsed().as_nanos() as u64).min(500 * US),
        };
        let end = start + elapsed;
        proc.busy_until = end;
        if self.honest(p) {
            let s = self.procs[p]
                .engine
                .as_ref()
                .map(|e| e.stats().clone())
                .unwrap_or_default();
            if s.refused_votes > 0 || s.forks > 0 || s.finalized_rejected > 0 {
                self.violation(
                    s.forks > 0,
                    format!(
                        "p{p}: engine stats refused_votes={} forks={} finalized_rejected={}",
                        s.refused_votes, s.forks, s.finalized_rejected
                    ),
                );
            }
        }
        self.drive(p, end, effects);
    }

    /// The driver: persist every record, sync once, then perform the other effects.
    fn drive(&mut self, p: usize, mut at: u64, effects: Vec<Effect>) {
        let mut persisted = false;
        for e in &effects {
            if let Effect::Persist(r) = e {
                persisted = true;
                let res = self.procs[p].log.as_mut().map(|l| l.append(r));
                if let Some(Err(e)) = res {
                    return self.violation(false, format!("p{p}: vote log append failed: {e}"));
                }
            }
        }
        if persisted {
            if self.procs[p].crash_mid_step {
                // Power lost between the writes and the sync: nothing of this step goes out.
                self.procs[p].crash_mid_step = false;
                return self.crash(p);
            }
            if let Some(Err(e)) = self.procs[p].log.as_mut().map(|l| l.sync()) {
                return self.violation(false, format!("p{p}: vote log sync failed: {e}"));
            }
            at += self.sc.sync_ns;
            self.procs[p].busy_until = self.procs[p].busy_until.max(at);
        } else if self.procs[p].crash_mid_step {
            self.procs[p].crash_mid_step = false;
            return self.crash(p);
        }
        let inc = self.procs[p].inc;
        for e in effects {
            if self.done {
                return;
            }
            match e {
                Effect::Persist(_) => {}
                Effect::Send(to, msg) => self.send(p, at, to, msg),
                Effect::Deliver(fin) => self.on_deliver(p, fin),
                Effect::ScheduleTimeout { view, after } => {
                    self.procs[p].timer_gen += 1;
                    let tgen = self.procs[p].timer_gen;
                    self.push(
                        at + after.as_nanos() as u64,
                        Ev::Timer { p, inc, tgen, view },
                    );
                }
                Effect::Verify(block) => {
                    let ok = self.app_verify(p, &block);
                    self.push(
                        at + self.sc.verify_ns,
                        Ev::Verified {
                            p,
                            inc,
                            digest: block.digest(),
                            ok,
                        },
                    );
                }
                Effect::Propose { view, parent, .. } => {
                    let key = self.procs[p].key;
                    let app = &mut self.procs[p].app;
                    app.built += 1;
                    let payload = format!("p{p} k{key} v{view} #{}", app.built).into_bytes();
                    let parent_commit = if parent == app.anchor.digest {
                        Some(app.anchor_commitment)
                    } else {
                        app.executed.get(&parent).copied()
                    };
                    let Some(pc) = parent_commit else {
                        return self.violation(
                            false,
                            format!("p{p}: asked to build on unexecuted parent"),
                        );
                    };
                    let mut commitment = commit(&pc, &payload);
                    if self.procs[p].kind == Kind::Byzantine(Behavior::BadCommitment) {
                        commitment = keccak256(commitment);
                    }
                    self.push(
                        at + self.sc.build_ns,
                        Ev::Ready {
                            p,
                            inc,
                            view,
                            payload,
                            commitment,
                        },
                    );
                }
            }
        }
    }

    /// The application's execution: recompute the post-state commitment on the parent's.
    fn app_verify(&mut self, p: usize, block: &Block) -> bool {
        let app = &mut self.procs[p].app;
        let parent_commit = if block.parent() == app.anchor.digest {
            Some(app.anchor_commitment)
        } else {
            app.executed.get(&block.parent()).copied()
        };
        let Some(pc) = parent_commit else {
            self.violation(
                false,
                format!("p{p}: asked to verify {block:?} before its parent"),
            );
            return false;
        };
        let c = commit(&pc, block.payload());
        app.executed.insert(block.digest(), c);
        if c == block.commitment() {
            // Stored before answering ok (the durability contract of Effect::Verify).
            app.stored.insert(block.digest(), block.clone());
        }
        c == block.commitment()
    }

    /// Invariants at delivery: heights contiguous and chained; no two blocks finalized at one
    /// height on honest processes; the same commitment everywhere, equal to our own execution.
    fn on_deliver(&mut self, p: usize, fin: rtchain_consensus::Finalized) {
        let b = fin.block;
        let d = b.digest();
        let app = &mut self.procs[p].app;
        let h = b.height();
        if h != app.chain.len() as u64 + 1 || b.parent() != app.anchor.digest {
            let msg = format!(
                "p{p}: delivered height {h} after {} (parent mismatch or gap)",
                app.chain.len()
            );
            return self.violation(true, msg);
        }
        let computed = app.executed.get(&d).copied();
        app.chain.push((d, b.commitment()));
        app.anchor = Anchor {
            view: b.view(),
            height: h,
            digest: d,
            finalization: fin.finalization,
        };
        app.anchor_commitment = b.commitment();
        app.stored.retain(|_, s| s.height() > h);
        if self.trace {
            println!(
                "[{:>10.3}ms] p{p} delivers h{h} {b:?}",
                self.now as f64 / MS as f64
            );
        }
        if !self.honest(p) {
            return;
        }
        if computed != Some(b.commitment()) {
            return self.violation(
                true,
                format!(
                    "p{p}: delivered h{h} with commitment {} but executed {computed:?}",
                    b.commitment()
                ),
            );
        }
        match self.finalized.get(&h) {
            Some((d2, c2)) if *d2 != d || *c2 != b.commitment() => {
                let msg =
                    format!("SAFETY: two blocks finalized at height {h}: {d} (p{p}) and {d2}");
                return self.violation(true, msg);
            }
            Some(_) => {}
            None => {
                self.finalized.insert(h, (d, b.commitment()));
            }
        }
        if let Some(t0) = self.proposed_at.get(&d) {
            self.out
                .finalize_latency_ns
                .push(self.now.saturating_sub(*t0));
        }
        if self.healed {
            self.check_liveness(false);
        }
    }

    /// Liveness: after healing, every honest process delivers `liveness_blocks` more blocks
    /// within the bound. Ends the run early once that holds.
    fn check_liveness(&mut self, at_deadline: bool) {
        if !self.healed {
            return;
        }
        let mut lagging = Vec::new();
        for p in 0..self.procs.len() {
            if !self.honest(p) {
                continue;
            }
            let target = self.heights_at_heal[p] + self.sc.liveness_blocks;
            let target = self.sc.stop_at_height.map_or(target, |s| s.max(target));
            let h = self.procs[p].app.chain.len() as u64;
            if h < target {
                lagging.push(format!(
                    "p{p} at h{h} (wants h{target}, view {:?})",
                    self.procs[p].engine.as_ref().map(|e| e.view())
                ));
            }
        }
        if lagging.is_empty() {
            self.done = true;
        } else if at_deadline {
            let msg = format!(
                "LIVENESS: {}ms after healing: {}",
                self.sc.liveness_bound / MS,
                lagging.join(", ")
            );
            self.violation(false, msg);
        }
    }

    /// Every vote an honest key sends is checked against every vote that key sent before.
    fn check_send(&mut self, p: usize, msg: &Msg) {
        if !self.honest(p) {
            return;
        }
        let key = self.procs[p].key;
        let vote = match msg {
            Msg::Vote(sv) if sv.signer == key => sv.vote,
            Msg::Propose(pp) => Vote::Notarize(pp.block.proposal()),
            _ => return,
        };
        if self.trace {
            println!(
                "[{:>10.3}ms] p{p} sends {vote:?}",
                self.now as f64 / MS as f64
            );
        }
        let s = self.signed.entry((key, vote.view())).or_default();
        let earlier: Vec<Vote> = [
            s.notarize.map(Vote::Notarize),
            s.nullify.then_some(Vote::Nullify(vote.view())),
            s.finalize.map(Vote::Finalize),
        ]
        .into_iter()
        .flatten()
        .collect();
        if earlier.contains(&vote) {
            return; // the same vote again (a retry): not a new signature
        }
        match vote {
            Vote::Notarize(q) => s.notarize = s.notarize.or(Some(q)),
            Vote::Nullify(_) => s.nullify = true,
            Vote::Finalize(q) => s.finalize = s.finalize.or(Some(q)),
        }
        if let Some(e) = earlier.iter().find(|e| vote.forbidden_after(e)) {
            let msg = format!("SAFETY: honest key {key} (p{p}) signed {vote:?} after {e:?}");
            self.violation(true, msg);
        }
    }

    fn send(&mut self, p: usize, at: u64, to: Target, msg: Msg) {
        self.check_send(p, &msg);
        if let Msg::Propose(pp) = &msg {
            self.proposed_at.entry(pp.block.digest()).or_insert(at);
            // The leader's app knows its own block's post-state, and stored it.
            let app = &mut self.procs[p].app;
            app.executed
                .insert(pp.block.digest(), pp.block.commitment());
            app.stored.insert(pp.block.digest(), pp.block.clone());
        }
        let key = self.procs[p].key;
        let recipients: Vec<ValidatorIndex> = match to {
            Target::All => (0..self.sc.n as ValidatorIndex)
                .filter(|k| *k != key)
                .collect(),
            Target::One(k) => vec![k],
        };
        for k in recipients {
            let m = match self.procs[p].kind {
                Kind::Byzantine(b) => match self.byzantine(p, b, k, &msg) {
                    Some(m) => m,
                    None => continue,
                },
                _ => msg.clone(),
            };
            let bytes = Rc::new(m.encode());
            for q in 0..self.procs.len() {
                if self.procs[q].key == k {
                    self.transmit(p, q, at, bytes.clone());
                }
            }
        }
    }

    /// What a Byzantine process sends to validator `k` instead of `msg` (None: nothing).
    fn byzantine(&mut self, p: usize, b: Behavior, k: ValidatorIndex, msg: &Msg) -> Option<Msg> {
        let key = self.keys[self.procs[p].key as usize].clone();
        match (b, msg) {
            (Behavior::Equivocate, Msg::Propose(pp)) if k % 2 == 1 => {
                let blk = &pp.block;
                let mut payload = blk.payload().to_vec();
                payload.extend_from_slice(b"-other");
                let app = &self.procs[p].app;
                let pc = if blk.parent() == app.anchor.digest {
                    Some(app.anchor_commitment)
                } else {
                    app.executed.get(&blk.parent()).copied()
                };
                let commitment = pc.map_or(blk.commitment(), |pc| commit(&pc, &payload));
                let alt = Block::new(
                    blk.view(),
                    blk.parent_view(),
                    blk.height(),
                    blk.parent(),
                    commitment,
                    payload,
                );
                let signature = self.validators.sign(&key, &Vote::Notarize(alt.proposal()));
                self.procs[p].app.executed.insert(alt.digest(), commitment);
                let mut np = (**pp).clone();
                np.block = alt;
                np.signature = signature;
                Some(Msg::Propose(Box::new(np)))
            }
            (Behavior::Equivocate, Msg::Vote(sv)) if k % 2 == 1 => {
                let vote = match sv.vote {
                    Vote::Notarize(q) => Vote::Notarize(Proposal {
                        digest: keccak256(q.digest),
                        ..q
                    }),
                    Vote::Finalize(q) => Vote::Finalize(Proposal {
                        digest: keccak256(q.digest),
                        ..q
                    }),
                    Vote::Nullify(v) => Vote::Finalize(Proposal {
                        view: v,
                        parent_view: v - 1,
                        height: v,
                        digest: keccak256(b"x"),
                    }),
                };
                let signature = self.validators.sign(&key, &vote);
                Some(Msg::Vote(SignedVote {
                    vote,
                    signer: sv.signer,
                    signature,
                }))
            }
            (Behavior::Withhold, Msg::Vote(_)) => self.rng.random_bool(0.2).then(|| msg.clone()),
            (Behavior::Withhold, Msg::Propose(_)) => self.rng.random_bool(0.6).then(|| msg.clone()),
            (Behavior::BadSignature, Msg::Vote(sv)) if self.rng.random_bool(0.5) => {
                let mut sv = *sv;
                sv.signature.0[self.rng.random_range(0..64)] ^= 1 << self.rng.random_range(0..8);
                Some(Msg::Vote(sv))
            }
            (Behavior::BadSignature, Msg::Propose(pp)) if self.rng.random_bool(0.5) => {
                let mut np = (**pp).clone();
                np.signature.0[self.rng.random_range(0..64)] ^= 1;
                Some(Msg::Propose(Box::new(np)))
            }
            _ => Some(msg.clone()),
        }
    }

    /// The network: partitions, loss, latency with jitter (reordering), duplication, mutation
    /// and replay of old messages (as if from their original sender) until healing.
    fn transmit(&mut self, from_p: usize, to: usize, at: u64, bytes: Rc<Vec<u8>>) {
        let from = self.procs[from_p].key;
        let faults = !self.healed;
        if faults {
            let cut = self
                .sc
                .partitions
                .iter()
                .any(|(s, e, side)| *s <= at && at < *e && side[from_p] != side[to]);
            if cut || self.rng.random_bool(self.sc.loss) {
                return;
            }
        }
        let base = self.sc.latency_ns[from_p][to];
        let jitter = (base as f64 * self.sc.jitter * self.rng.random::<f64>()) as u64;
        let mut bytes = bytes;
        if faults && self.sc.mutate > 0.0 && self.rng.random_bool(self.sc.mutate) {
            let mut b = (*bytes).clone();
            let i = self.rng.random_range(0..b.len());
            b[i] ^= 1 << self.rng.random_range(0..8);
            bytes = Rc::new(b);
        }
        self.push(
            at + base + jitter,
            Ev::Net {
                to,
                from,
                bytes: bytes.clone(),
            },
        );
        if faults && self.rng.random_bool(self.sc.duplicate) {
            let extra = self.rng.random_range(0..=2 * base);
            self.push(
                at + base + extra,
                Ev::Net {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
        if faults && self.sc.replay > 0.0 {
            if self.history.len() < 512 {
                self.history.push((from, bytes));
            } else {
                let i = self.rng.random_range(0..512);
                self.history[i] = (from, bytes);
            }
            if self.rng.random_bool(self.sc.replay) {
                let (f, old) = self.history[self.rng.random_range(0..self.history.len())].clone();
                let target = self.rng.random_range(0..self.procs.len());
                if self.procs[target].key != f {
                    let delay = self.rng.random_range(0..20 * MS);
                    self.push(
                        at + delay,
                        Ev::Net {
                            to: target,
                            from: f,
                            bytes: old,
                        },
                    );
                }
            }
        }
    }
}

/// p-quantile of a sample (sorted in place).
pub fn quantile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}
