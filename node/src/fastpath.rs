//! The UDP fast path (docs/wire.md): net tiles move datagrams between a port (DPDK, io_uring or
//! sockets) and rings; verify tiles decode and recover senders and hand transactions to the
//! sequencer; the sequencer's outcomes come back to the net tile as Receipt or Reject datagrams.
//!
//! ```text
//! port -> net tile --(ring per verify tile)--> verify tile --mpsc--> sequencer
//!           ^   ^                                  |                     |
//!           |   +------ Reject/Pong ring ----------+                     |
//!           +---------- Receipt/Reject ring -----------------------------+
//! ```
//!
//! Ring policies when full (all counted in [`FastPathStats`]):
//! - net -> verify: drop the datagram. Shedding load at the door keeps latency bounded for what
//!   is admitted; the client sees no reply and may retry or ask JSON-RPC.
//! - verify -> net and sequencer -> net: drop the reply. The transaction itself is not lost: it
//!   is executed (or refused) either way, and its receipt is available over JSON-RPC. The
//!   sequencer must never wait on a client's network.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rtchain_dataplane::{
    Datagram, DatagramPort, PollMode, PortStats,
    doorbell::Doorbell,
    ring::{self, Consumer, Producer},
    tile::{self, TileHandle},
};
use rtchain_exec::TxError;
use rtchain_wire::{self as wire, Message, RejectCode};

use crate::{
    NodeError, admission,
    chain::Chain,
    config::{BackendKind, FastPathSection},
    outcome::{Answers, FastPathReplies, Outcome, Rejection, ReplySink, Ticket},
};

/// Slots in each ring between tiles: at 1.5 KiB a slot, 4,096 slots are 6 MiB per ring, about
/// 40 ms of traffic at 100,000 datagrams/s.
const RING_SLOTS: usize = 4_096;
/// Datagrams moved per port call.
const BURST: usize = 32;
/// Empty ring checks before an idle verify tile sleeps in blocking mode (a few microseconds:
/// cheaper than a wake-up when traffic is steady).
const IDLE_SPINS: u32 = 500;
/// Empty receive calls before an idle net tile sleeps in blocking mode. Each is a system call
/// with the socket backends, so few: spinning on them took a third of a 2-core machine.
const NET_IDLE_POLLS: u32 = 8;
/// Longest sleep of an idle tile (it also checks for shutdown this often).
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Rate-limit window: per-source counters reset this often.
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// Tries to send a burst of replies before the rest is dropped.
const SEND_ATTEMPTS: u32 = 16;
/// Datagrams a verify tile handles from one inbox before it looks at the others and at the
/// stop flag (each may take a dozen sender recoveries).
const VERIFY_BATCH: usize = 64;
/// Counters are logged this often while they change.
const STATS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct sources tracked per window; new sources beyond it are dropped until the window ends,
/// so a spoofed-source flood cannot grow memory.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Counters of the fast path, beside each port's own.
#[derive(Debug, Default)]
pub struct FastPathStats {
    pub submitted: AtomicU64,
    pub receipts: AtomicU64,
    pub rejects: AtomicU64,
    pub malformed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub verify_ring_full: AtomicU64,
    pub reply_ring_full: AtomicU64,
    /// Replies the port could not send (its queue stayed full, or the send failed).
    pub reply_send_dropped: AtomicU64,
    /// Rejects not sent because the datagram's reply budget was spent (amplification bound).
    pub reply_budget_spent: AtomicU64,
    pub ignored: AtomicU64,
}

/// A reply ring into one net tile.
struct Outbox {
    ring: Producer<Datagram>,
    bell: Doorbell,
}

impl Outbox {
    /// Encodes a reply straight into a ring slot; drops it (counted) when the ring is full.
    fn push(
        &mut self,
        stats: &FastPathStats,
        peer: SocketAddrV4,
        local_port: u16,
        encode: impl FnOnce(&mut [u8]) -> usize,
    ) {
        let Some(slot) = self.ring.reserve() else {
            stats.reply_ring_full.fetch_add(1, Ordering::Relaxed);
            return;
        };
        slot.peer = peer;
        slot.local_port = local_port;
        slot.len = encode(&mut slot.data[..wire::MAX_DATAGRAM]) as u16;
        self.ring.commit();
        self.bell.ring();
    }
}

/// The sequencer's replies into the net tiles' rings: Receipt or Reject datagrams.
struct ReplyRings {
    outboxes: Vec<Outbox>,
    stats: Arc<FastPathStats>,
}

impl FastPathReplies for ReplyRings {
    fn answer(&mut self, ticket: Ticket, outcome: &Outcome) {
        let Some(outbox) = self.outboxes.get_mut(ticket.route as usize) else {
            return;
        };
        let rejection = match outcome {
            Outcome::Executed(view) => {
                self.stats.receipts.fetch_add(1, Ordering::Relaxed);
                let receipt = wire::Receipt {
                    request_id: ticket.request_id,
                    index: ticket.index,
                    tx_hash: view.tx.hash.0,
                    status: if alloy_consensus::TxReceipt::status(&view.receipt.receipt) {
                        wire::TxStatus::Success
                    } else {
                        wire::TxStatus::Reverted
                    },
                    gas_used: view.receipt.gas_used,
                    mini_block: view.location.mini_block_number,
                    block_number: view.location.block_number,
                    tx_index: view.location.index as u32,
                };
                outbox.push(&self.stats, ticket.peer, ticket.local_port, |buf| {
                    wire::encode_receipt(buf, &receipt)
                });
                return;
            }
            Outcome::Rejected(rejection) => (reject_code(rejection), rejection.to_string()),
            Outcome::Failed(failure) => (RejectCode::Unavailable, failure.to_string()),
        };
        self.stats.rejects.fetch_add(1, Ordering::Relaxed);
        let (code, mut reason) = rejection;
        truncate_at_char(&mut reason, usize::from(ticket.reason_budget));
        outbox.push(&self.stats, ticket.peer, ticket.local_port, |buf| {
            wire::encode_reject(
                buf,
                ticket.request_id,
                ticket.index,
                &ticket.tx_hash,
                code,
                &reason,
            )
        });
    }
}

/// The wire code for a refusal (docs/wire.md): one `match` over the node's typed reasons.
pub fn reject_code(rejection: &Rejection) -> RejectCode {
    match rejection {
        Rejection::Invalid(error) => match error {
            TxError::Oversized { .. } => RejectCode::Oversized,
            TxError::Decode(_) => RejectCode::Malformed,
            TxError::BlobNotSupported
            | TxError::UnsupportedType
            | TxError::DepositNotSubmittable => RejectCode::UnsupportedTxType,
            TxError::Unprotected | TxError::WrongChainId { .. } => RejectCode::WrongChainId,
            TxError::InvalidSignature | TxError::InvalidSender(_) => RejectCode::InvalidSignature,
            TxError::IntrinsicGasTooLow { .. } => RejectCode::IntrinsicGas,
            TxError::GasLimitExceeded => RejectCode::GasLimit,
            TxError::FeeCapTooLow { .. } => RejectCode::FeeTooLow,
            TxError::NonceTooLow { .. } => RejectCode::NonceTooLow,
            TxError::InsufficientFunds { .. } => RejectCode::InsufficientFunds,
            // A future nonce the sequencer could not queue is a gap (it answers NonceGapFull
            // when the queue is full; this is the executor's own view of the same thing).
            TxError::NonceTooHigh { .. } => RejectCode::NonceGap,
            TxError::TipAboveFeeCap
            | TxError::InitcodeTooLarge { .. }
            | TxError::EmptyAuthList
            | TxError::SenderNotEoa(_)
            | TxError::NonceMax
            | TxError::Other(_) => RejectCode::Other,
        },
        Rejection::AlreadyKnown => RejectCode::AlreadyKnown,
        Rejection::PoolFull => RejectCode::TxpoolFull,
        Rejection::NonceGapFull { .. } => RejectCode::NonceGap,
        Rejection::Replaced { .. } => RejectCode::NonceTooLow,
        Rejection::Unavailable(_) | Rejection::Internal(_) => RejectCode::Unavailable,
    }
}

/// The fast path's counters, readable from RPC (`rtchain_nodeStats`).
#[derive(Clone)]
pub struct StatsHandle {
    pub backend: &'static str,
    pub local_addr: SocketAddrV4,
    pub stats: Arc<FastPathStats>,
    /// The net tile's port counters, refreshed every 100 ms.
    pub port: Arc<parking_lot::Mutex<PortStats>>,
}

impl StatsHandle {
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "backend": self.backend,
            "listen": self.local_addr.to_string(),
            "port": *self.port.lock(),
        });
        for (_, name, value) in self.stats.counters() {
            json[name] = value.into();
        }
        json
    }
}

/// The running fast path: its tiles, their counters, and how to stop them.
pub struct FastPath {
    pub stats: Arc<FastPathStats>,
    pub port_stats: Vec<Arc<parking_lot::Mutex<PortStats>>>,
    pub backend: &'static str,
    /// The address the port serves (the port the kernel chose, for a configured port 0).
    pub local_addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    tiles: Vec<TileHandle<()>>,
}

impl FastPathStats {
    /// Every counter, with its name in the log line and in `rtchain_nodeStats`.
    fn counters(&self) -> [(&'static str, &'static str, u64); 10] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("submitted", "submitted", get(&self.submitted)),
            ("receipts", "receipts", get(&self.receipts)),
            ("rejects", "rejects", get(&self.rejects)),
            ("malformed", "malformed", get(&self.malformed)),
            ("rate_limited", "rateLimited", get(&self.rate_limited)),
            (
                "verify_ring_full",
                "verifyRingFull",
                get(&self.verify_ring_full),
            ),
            (
                "reply_ring_full",
                "replyRingFull",
                get(&self.reply_ring_full),
            ),
            (
                "reply_send_dropped",
                "replySendDropped",
                get(&self.reply_send_dropped),
            ),
            (
                "reply_budget_spent",
                "replyBudgetSpent",
                get(&self.reply_budget_spent),
            ),
            ("ignored", "ignored", get(&self.ignored)),
        ]
    }

    /// One line of counters: what an operator watches for drops and refusals.
    pub fn summary(&self, port: &PortStats) -> String {
        use std::fmt::Write as _;
        let mut line = format!("rx {} tx {}", port.rx_packets, port.tx_packets);
        for (name, _, value) in self.counters() {
            let _ = write!(line, " {name} {value}");
        }
        let _ = write!(
            line,
            " | port: rx_dropped {} tx_dropped {} bad_frames {} fragments {} no_buffers {} reflected {} arp_replies {}",
            port.rx_dropped,
            port.tx_dropped,
            port.bad_frames,
            port.fragments,
            port.no_buffers,
            port.reflected,
            port.arp_replies,
        );
        line
    }
}

impl FastPath {
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            backend: self.backend,
            local_addr: self.local_addr,
            stats: self.stats.clone(),
            port: self.port_stats[0].clone(),
        }
    }

    /// Stops the tiles and waits for them (their port, rings and DPDK device go with them).
    pub fn stop(self) {
        drop(self);
    }
}

/// Dropping the fast path stops it, on every path: a node whose start-up fails after the fast
/// path started must not leave tiles spinning and a port bound.
impl Drop for FastPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for tile in self.tiles.drain(..) {
            let _ = tile.join();
        }
        if let Some(port) = self.port_stats.first() {
            tracing::info!("fast path stopped: {}", self.stats.summary(&port.lock()));
        }
    }
}

/// Per-source fixed-window rate limit.
struct RateLimit {
    per_window: u32,
    window_start: Instant,
    counts: HashMap<Ipv4Addr, u32>,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let windows_per_second =
            (Duration::from_secs(1).as_micros() / RATE_WINDOW.as_micros()) as u32;
        Self {
            per_window: (per_second / windows_per_second).max(1),
            window_start: Instant::now(),
            counts: HashMap::with_capacity(1_024),
        }
    }

    fn admit(&mut self, now: Instant, source: Ipv4Addr) -> bool {
        if now.duration_since(self.window_start) >= RATE_WINDOW {
            self.window_start = now;
            self.counts.clear();
        }
        if let Some(count) = self.counts.get_mut(&source) {
            *count += 1;
            return *count <= self.per_window;
        }
        if self.counts.len() >= MAX_TRACKED_SOURCES {
            return false;
        }
        self.counts.insert(source, 1);
        true
    }
}

/// Everything one net tile owns.
struct NetTile {
    route: u16,
    to_verify: Vec<(Producer<Datagram>, Doorbell)>,
    /// `verify_tiles = 0`: this tile verifies each datagram itself (one thread hand-over less
    /// per transaction, for small hosts; sender recovery then shares the net tile's core).
    inline_verify: Option<VerifyTile>,
    replies: Vec<Consumer<Datagram>>,
    poll: PollMode,
    bell: Doorbell,
    stats: Arc<FastPathStats>,
    port_stats: Arc<parking_lot::Mutex<PortStats>>,
    limit: RateLimit,
    stop: Arc<AtomicBool>,
}

impl NetTile {
    /// Runs on the thread that opened `port` (DPDK's EAL is bound to it).
    fn run(mut self, mut port: Box<dyn DatagramPort>) {
        let mut rx: Vec<Datagram> = (0..BURST).map(|_| Datagram::empty()).collect();
        let mut tx: Vec<Datagram> = (0..BURST).map(|_| Datagram::empty()).collect();
        let mut idle = 0u32;
        let mut last_stats = Instant::now();
        let mut last_log = Instant::now();
        let mut logged = PortStats::default();
        while !self.stop.load(Ordering::Relaxed) {
            let received = match port.recv_burst(&mut rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("fast path net tile {}: receive failed: {e}", self.route);
                    0
                }
            };
            if received > 0 {
                self.dispatch(&rx[..received]);
            }
            let sent = self.send_replies(port.as_mut(), &mut tx);
            let now = Instant::now();
            if now.duration_since(last_stats) >= Duration::from_millis(100) {
                let stats = port.stats();
                *self.port_stats.lock() = stats;
                last_stats = now;
                if now.duration_since(last_log) >= STATS_LOG_INTERVAL && stats != logged {
                    tracing::info!("fast path: {}", self.stats.summary(&stats));
                    logged = stats;
                    last_log = now;
                }
            }
            if received + sent > 0 {
                idle = 0;
                continue;
            }
            idle += 1;
            if self.poll == PollMode::Blocking && idle > NET_IDLE_POLLS {
                self.bell.prepare_sleep();
                if self.replies.iter().all(|r| r.is_empty())
                    && let Err(e) = port.wait(MAX_SLEEP)
                {
                    tracing::error!("fast path net tile {}: wait failed: {e}", self.route);
                }
                self.bell.awake();
            } else {
                std::hint::spin_loop();
            }
        }
        *self.port_stats.lock() = port.stats();
    }

    fn dispatch(&mut self, datagrams: &[Datagram]) {
        let now = Instant::now();
        for d in datagrams {
            if !self.limit.admit(now, *d.peer.ip()) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(verify) = self.inline_verify.as_mut() {
                verify.handle(self.route, d);
                continue;
            }
            // One source always goes to the same verify tile, so its transactions reach the
            // sequencer in the order it sent them (nonce order).
            let index = source_hash(d.peer) % self.to_verify.len();
            let (ring, bell) = &mut self.to_verify[index];
            match ring.reserve() {
                Some(slot) => {
                    slot.peer = d.peer;
                    slot.local_port = d.local_port;
                    slot.len = d.len;
                    slot.data[..d.len as usize].copy_from_slice(d.payload());
                    ring.commit();
                    bell.ring();
                }
                None => {
                    self.stats.verify_ring_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn send_replies(&mut self, port: &mut dyn DatagramPort, tx: &mut [Datagram]) -> usize {
        let mut total = 0;
        for ring in &mut self.replies {
            loop {
                let mut n = 0;
                while n < tx.len() {
                    let Some(reply) = ring.peek() else { break };
                    tx[n].peer = reply.peer;
                    tx[n].local_port = reply.local_port;
                    tx[n].len = reply.len;
                    tx[n].data[..reply.len as usize].copy_from_slice(reply.payload());
                    ring.release();
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                let mut sent = 0;
                // A full TX queue is retried a bounded number of times, then the rest is dropped
                // and counted: a stuck NIC must not stall receiving.
                for attempt in 0..SEND_ATTEMPTS {
                    match port.send_burst(&tx[sent..n]) {
                        Ok(k) => sent += k,
                        Err(e) => {
                            tracing::warn!("fast path net tile {}: send failed: {e}", self.route);
                            break;
                        }
                    }
                    if sent >= n {
                        break;
                    }
                    if attempt > 0 {
                        std::thread::yield_now();
                    }
                }
                if sent < n {
                    self.stats
                        .reply_send_dropped
                        .fetch_add((n - sent) as u64, Ordering::Relaxed);
                }
                total += n;
                if n < tx.len() {
                    break;
                }
            }
        }
        total
    }
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn source_hash(peer: SocketAddrV4) -> usize {
    let ip = u32::from(*peer.ip()) as u64;
    let mixed = (ip << 16 | peer.port() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize
}

/// Everything one verify tile owns.
struct VerifyTile {
    chain: Arc<Chain>,
    inbox: Vec<Consumer<Datagram>>,
    /// Reject and Pong rings, one per net tile (indexed by route).
    outboxes: Vec<Outbox>,
    poll: PollMode,
    stats: Arc<FastPathStats>,
    stop: Arc<AtomicBool>,
}

impl VerifyTile {
    /// `bell` wakes this tile's thread (made on it).
    fn run(mut self, bell: Doorbell) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let mut worked = false;
            for route in 0..self.inbox.len() {
                for _ in 0..VERIFY_BATCH {
                    let Some(d) = self.inbox[route].peek() else {
                        break;
                    };
                    let d = d.clone();
                    self.inbox[route].release();
                    self.handle(route as u16, &d);
                    worked = true;
                }
            }
            if worked {
                idle = 0;
                continue;
            }
            idle += 1;
            if self.poll == PollMode::Blocking && idle > IDLE_SPINS {
                let inbox = &self.inbox;
                bell.sleep_unless(MAX_SLEEP, || inbox.iter().any(|r| !r.is_empty()));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn handle(&mut self, route: u16, d: &Datagram) {
        let stats = self.stats.clone();
        let outbox = &mut self.outboxes[route as usize];
        let message = match wire::decode(d.payload()) {
            Ok(message) => message,
            Err(error) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("fast path: malformed datagram from {}: {error}", d.peer);
                // Whole-datagram rejects carry no reason text: a spoofed source must not get
                // more bytes than it sent (docs/wire.md, "Amplification").
                if let Some((request_id, code)) = wire::error_reply(d.payload(), &error)
                    && d.payload().len() >= wire::REJECT_MIN_LEN
                {
                    outbox.push(&stats, d.peer, d.local_port, |buf| {
                        wire::encode_reject(
                            buf,
                            request_id,
                            wire::INDEX_WHOLE_DATAGRAM,
                            &[0; 32],
                            code,
                            "",
                        )
                    });
                }
                return;
            }
        };
        match message {
            Message::SubmitTx { request_id, txs } => {
                // Rejects answering this datagram add up to at most its own length plus one
                // Reject's fixed part: a SubmitTx of many tiny invalid transactions must not turn
                // into many Rejects (docs/wire.md, "Amplification").
                let mut budget = d.payload().len() + wire::REJECT_MIN_LEN;
                for (index, raw) in txs.enumerate() {
                    let index = index as u16;
                    stats.submitted.fetch_add(1, Ordering::Relaxed);
                    let result = admission::submit(&self.chain, raw, |tx| {
                        Some(ReplySink::FastPath(Ticket {
                            route,
                            peer: d.peer,
                            local_port: d.local_port,
                            request_id,
                            index,
                            tx_hash: tx.hash.0,
                            reason_budget: raw.len().min(wire::MAX_REASON_LEN) as u16,
                        }))
                    });
                    if let Err(error) = result {
                        stats.rejects.fetch_add(1, Ordering::Relaxed);
                        let code = reject_code(&error);
                        // The reason is cut to the transaction's own length, so that a Reject
                        // is at most 38 bytes longer than the SubmitTx that caused it.
                        let mut reason = error.to_string();
                        truncate_at_char(&mut reason, raw.len());
                        let size = wire::REJECT_MIN_LEN + reason.len();
                        if size > budget {
                            stats.reply_budget_spent.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        budget -= size;
                        let hash = alloy_primitives::keccak256(raw).0;
                        outbox.push(&stats, d.peer, d.local_port, |buf| {
                            wire::encode_reject(buf, request_id, index, &hash, code, &reason)
                        });
                    }
                }
            }
            Message::Ping {
                request_id,
                timestamp_ns,
            } => outbox.push(&stats, d.peer, d.local_port, |buf| {
                wire::encode_pong(buf, request_id, timestamp_ns)
            }),
            // Replies are never answered: two endpoints cannot be made to bounce datagrams.
            Message::Receipt(_) | Message::Reject(_) | Message::Pong { .. } => {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// EAL pins the thread that starts it to its first lcore: that must be the net tile's core.
fn dpdk_on_net_core(
    dpdk: &rtchain_dataplane::dpdk::DpdkConfig,
    net_core: Option<usize>,
) -> Result<rtchain_dataplane::dpdk::DpdkConfig, NodeError> {
    let mut dpdk = dpdk.clone();
    match (net_core, dpdk.lcores.as_slice()) {
        (Some(core), []) => dpdk.lcores = vec![core],
        (Some(core), [lcore]) if *lcore == core => {}
        (Some(core), lcores) => {
            return Err(NodeError::Config(format!(
                "fastpath.dpdk.lcores {lcores:?} must be [{core}] (cores.net[0]): EAL pins the net tile to its first lcore and would start workers on the others"
            )));
        }
        (None, []) => {}
        (None, lcores) => {
            return Err(NodeError::Config(format!(
                "fastpath.dpdk.lcores {lcores:?}: set cores.net to the same core instead, so that no other tile is placed on it"
            )));
        }
    }
    Ok(dpdk)
}

/// Opens the configured port(s) and starts the net and verify tiles. Returns the fast path and
/// the sequencer's [`Answers`], which reply through the net tile.
pub fn start(
    config: &FastPathSection,
    cores: &tile::CoreMap,
    chain: Arc<Chain>,
) -> Result<(FastPath, Answers), NodeError> {
    let err = |e: String| NodeError::Config(format!("fastpath: {e}"));
    let stats = Arc::new(FastPathStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let verify_count = if cores.verify.is_empty() {
        config.verify_tiles
    } else {
        cores.verify.len()
    };

    // The port is opened on the first net tile's thread, after it is pinned: DPDK's EAL binds
    // its calling thread, and the port's memory should be local to that core.
    let port_config = rtchain_dataplane::PortConfig {
        backend: match config.backend {
            BackendKind::Dpdk => rtchain_dataplane::Backend::Dpdk,
            BackendKind::Socket => rtchain_dataplane::Backend::Socket,
            BackendKind::IoUring => rtchain_dataplane::Backend::IoUring,
        },
        listen: config.listen,
        reflector_port: config.reflector_port,
        poll: config.poll,
        sqpoll: config.sqpoll,
        dpdk: dpdk_on_net_core(&config.dpdk, cores.net.first().copied())?,
    };
    let net_core = cores.net.first().copied();
    let port_stats = Arc::new(parking_lot::Mutex::new(PortStats::default()));
    // Built first, so that any error below drops it, which stops and joins what has started.
    let mut fastpath = FastPath {
        stats: stats.clone(),
        port_stats: vec![port_stats.clone()],
        backend: match config.backend {
            BackendKind::Dpdk => "dpdk",
            BackendKind::Socket => "socket",
            BackendKind::IoUring => "io-uring",
        },
        local_addr: config.listen,
        stop: stop.clone(),
        tiles: Vec::new(),
    };

    // Every ring is allocated by the tile that consumes it, on its own (pinned) thread, so its
    // slots are first touched on that core's NUMA node; the producer ends are handed out.
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Vec<(Producer<Datagram>, Doorbell)>>();
    let inline_verify = (verify_count == 0).then(|| VerifyTile {
        chain: chain.clone(),
        inbox: Vec::new(),
        outboxes: Vec::new(),
        poll: config.poll,
        stats: stats.clone(),
        stop: stop.clone(),
    });
    let net = NetTile {
        route: 0,
        to_verify: Vec::new(),
        inline_verify: None,
        replies: Vec::new(),
        poll: config.poll,
        bell: Doorbell::for_port(rtchain_dataplane::PortWaker::none()),
        stats: stats.clone(),
        port_stats,
        limit: RateLimit::new(config.max_datagrams_per_source_per_sec),
        stop: stop.clone(),
    };
    let net_stop = stop.clone();
    let opener = tile::spawn_tile("net-0", net_core, move || {
        let port = match rtchain_dataplane::open_port(&port_config) {
            Ok(port) => port,
            Err(e) => {
                let _ = opened_tx.send(Err(e.to_string()));
                return;
            }
        };
        let bell = Doorbell::for_port(port.waker());
        // One reply ring per verify tile (or one for verifying inline), and the sequencer's last.
        let (mut producers, replies): (Vec<_>, Vec<_>) = (0..=verify_count.max(1))
            .map(|_| ring::channel_with(RING_SLOTS, Datagram::empty))
            .unzip();
        let inline_verify = inline_verify.map(|mut verify| {
            verify.outboxes.push(Outbox {
                ring: producers.remove(0),
                bell: bell.clone(),
            });
            verify
        });
        let _ = opened_tx.send(Ok((bell.clone(), port.local_addr(), producers)));
        loop {
            match go_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(to_verify) => {
                    NetTile {
                        to_verify,
                        replies,
                        bell,
                        inline_verify,
                        ..net
                    }
                    .run(port);
                    return;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if net_stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    })
    .map_err(|e| err(e.to_string()))?;
    fastpath.tiles.push(opener);
    let (net_bell, local_addr, mut reply_producers) = match opened_rx.recv() {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Err(err(e)),
        Err(_) => return Err(err("the net tile stopped while opening its port".into())),
    };
    fastpath.local_addr = local_addr;
    let outbox = |ring| Outbox {
        ring,
        bell: net_bell.clone(),
    };
    let sequencer_ring = reply_producers
        .pop()
        .ok_or_else(|| err("the net tile made no reply ring for the sequencer".into()))?;
    let answers = Answers::with_fast_path(Box::new(ReplyRings {
        outboxes: vec![outbox(sequencer_ring)],
        stats: stats.clone(),
    }));

    let mut to_verify = Vec::new();
    for (i, reply_ring) in reply_producers.into_iter().enumerate() {
        let (inbox_tx, inbox_rx) = std::sync::mpsc::channel();
        let mut tile = VerifyTile {
            chain: chain.clone(),
            inbox: Vec::new(),
            outboxes: vec![outbox(reply_ring)],
            poll: config.poll,
            stats: stats.clone(),
            stop: stop.clone(),
        };
        let handle = tile::spawn_tile(
            &format!("verify-{i}"),
            cores.verify.get(i).copied(),
            move || {
                let bell = Doorbell::for_current_thread();
                let (producer, inbox) = ring::channel_with(RING_SLOTS, Datagram::empty);
                tile.inbox.push(inbox);
                let _ = inbox_tx.send((producer, bell.clone()));
                tile.run(bell);
            },
        )
        .map_err(|e| err(e.to_string()))?;
        fastpath.tiles.push(handle);
        to_verify.push(
            inbox_rx
                .recv()
                .map_err(|_| err("a verify tile stopped at start".into()))?,
        );
    }
    go_tx
        .send(to_verify)
        .map_err(|_| err("the net tile stopped at start".into()))?;
    Ok((fastpath, answers))
}
