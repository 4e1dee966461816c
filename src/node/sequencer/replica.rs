//! The sequencer as one validator of a replicated chain (`[consensus]` in the config).
//!
//! The same thread that executes mini-blocks drives the consensus engine (`rtchain-consensus`):
//! it feeds the engine peers' messages, timer expiries and its own execution results, and
//! performs the engine's effects. So execution and consensus share no locks.
//!
//! - **Payload.** A consensus block carries mini-block log records (`LogRecord`): at most one
//!   mini-block (the transactions, the EVM block context it executes in, its receipts root) and
//!   seals of EVM blocks. The leader decides when an EVM block closes, so every validator seals
//!   the same blocks at the same points.
//! - **Commitment.** keccak256 chained over the parent's commitment, each mini-block's header
//!   hash and a canonical digest of its state diff, and each seal: equal commitments mean equal
//!   receipts and an equal post-state (the parent's being equal by induction).
//! - **Speculation.** A proposal is executed as soon as it arrives, on its parent's state: the
//!   committed state plus the diffs of the not-yet-finalized ancestors it extends. Nothing is
//!   committed until the engine delivers the block as finalized; then the speculative result is
//!   committed (mini-block log, state, receipts to waiting clients, seals) without executing
//!   again. A receipt is therefore only ever sent for a finalized transaction.
//! - **Durability.** Votes go to the vote log (one sync per engine step) before they are sent; a
//!   block we vote for is stored (synced) before we vote; the anchor (the last delivered block)
//!   is written after each delivery. After a crash the mini-block log replays what was
//!   committed, the stored blocks are handed back to the engine, and any block the anchor had
//!   not recorded yet is recognised as applied by its mini-block and block numbers.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256, keccak256};
use parking_lot::Mutex;
use rtchain_consensus::{
    Anchor, Block, Config as EngineConfig, Digest, Effect, Engine, Event, Finalized, Height, Msg,
    Target, Validators, View, VoteLog, VoteLogConfig, votelog::FileStorage,
};
use rtchain_exec::{
    BlockContext, MiniBlockHeader, RecoveredTx, StateDiff, TxError, TxOutcome, TxReceipt, receipt,
};
use rtchain_rpc::backend::BackendError;
use rtchain_state::{LogRecord, MiniLog, minilog::MiniBlockRecord};

use super::{NodeError, Sequencer};
use crate::{
    config::{ConsensusSection, ConsensusSync, NodeConfig},
    node::{
        chain::{ParentInfo, Reply, Submission, next_block_context, now_us},
        transport::{Framer, Transport, link_key},
    },
};

/// How far ahead of our clock a leader's timestamps may be.
const MAX_CLOCK_AHEAD_US: u64 = 10_000_000;

/// Execution position after some block: what the next mini-block or seal needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Point {
    last_mini: u64,
    last_mini_hash: B256,
    open: Option<OpenPoint>,
    closed_parent: ParentInfo,
    commitment: B256,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpenPoint {
    ctx: BlockContext,
    opened_at_us: u64,
    gas_used: u64,
    logs: u64,
}

/// What committing a block does, in order.
enum Step {
    Mini {
        record: MiniBlockRecord,
        receipts: Vec<TxReceipt>,
        diff: Arc<StateDiff>,
        gas_used: u64,
        logs: u64,
    },
    Seal {
        block_number: u64,
        timestamp_us: u64,
    },
}

/// A block executed on its parent's state but not finalized yet.
struct Spec {
    parent: Digest,
    height: Height,
    point: Point,
    diffs: Vec<Arc<StateDiff>>,
    steps: Vec<Step>,
}

/// The delivered tip: the last block committed.
#[derive(Clone, Copy)]
struct Tip {
    view: View,
    height: Height,
    digest: Digest,
    commitment: B256,
}

/// A client waiting for a transaction's receipt on this node.
struct Waiter {
    reply: Reply,
}

#[derive(Clone, Copy)]
struct ProposeRequest {
    view: View,
    parent: Digest,
    parent_view: View,
    height: Height,
    since: Instant,
}

/// Counters and latency of replication, for `rtchain_nodeStats` and `bench consensus`.
pub struct ConsensusStats {
    inner: Mutex<StatsInner>,
}

struct StatsInner {
    me: usize,
    follower: bool,
    validators: usize,
    sync: &'static str,
    view: u64,
    finalized_height: u64,
    /// First sight of a proposal (built, or received) to its delivery as finalized, in us.
    finalize_us: hdrhistogram::Histogram<u64>,
    blocks_delivered: u64,
    txs_finalized: u64,
    rejected_payloads: u64,
    /// Sync responses applied (catching up from peers' stored finalized blocks).
    sync_rounds: u64,
    engine: rtchain_consensus::Stats,
    transport: Option<Arc<crate::node::transport::TransportStats>>,
}

impl ConsensusStats {
    pub fn to_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.inner.lock();
        let q = |p: f64| s.finalize_us.value_at_quantile(p);
        let t = s.transport.as_ref();
        let c =
            |f: fn(&crate::node::transport::TransportStats) -> &std::sync::atomic::AtomicU64| {
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

/// Why a payload is refused (the block gets `Verified { ok: false }`).
#[derive(Debug)]
struct Invalid(String);

/// The replication state owned by the sequencer thread.
pub struct Replica {
    /// `None` on a follower: it votes on nothing and takes finalized blocks from peers.
    engine: Option<Engine>,
    votelog: Option<VoteLog<FileStorage>>,
    me: u16,
    transport: Transport,
    n: usize,
    timer: Option<(View, Instant)>,
    proposing: Option<ProposeRequest>,
    to_verify: Vec<Block>,
    spec: HashMap<Digest, Spec>,
    tip: Tip,
    /// Replies for transactions submitted here, by hash: answered when a finalized block
    /// includes them, whoever proposed it.
    waiting: HashMap<B256, Waiter>,
    /// Waiting hashes by sender and nonce, to answer those another transaction replaced.
    waiting_by_nonce: HashMap<(Address, u64), Vec<B256>>,
    /// Transactions accepted here since the last flush, to gossip to the other validators so
    /// that whoever leads next can include them.
    gossip_out: Vec<alloy_primitives::Bytes>,
    /// Blocks stored under `consensus/block/` (voted for or proposed, not yet settled).
    stored: StoredBlocks,
    /// Transactions of our proposals not finalized yet, by digest, with the height.
    own: HashMap<Digest, (Height, Vec<RecoveredTx>)>,
    first_seen: HashMap<Digest, Instant>,
    sync_blocks: bool,
    propose_idle: Duration,
    pub stats: Arc<ConsensusStats>,
    engine_config: EngineConfig,
    key: ed25519_dalek::SigningKey,
    votelog_path: std::path::PathBuf,
    log_config: VoteLogConfig,
    catch_up: CatchUp,
}

/// Fetching finalized blocks from peers when the engine's own body requests cannot close the
/// gap (we were down longer than peers keep bodies in memory, or we start from genesis).
#[derive(Default)]
struct CatchUp {
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

/// First byte of every transport message: what it is for.
const KIND_ENGINE: u8 = 0;
const KIND_SYNC_REQUEST: u8 = 1;
const KIND_SYNC_RESPONSE: u8 = 2;
const KIND_TXS: u8 = 3;
/// Transactions and bytes per gossip message.
const GOSSIP_TXS_MAX: u16 = 512;
const GOSSIP_BYTES_MAX: usize = 256 << 10;
/// Finalized blocks per sync response, and their bytes.
const SYNC_BLOCKS_MAX: u64 = 256;
const SYNC_BYTES_MAX: usize = 256 << 10;
/// Never more than this in one answer (one transport message holds a little over 4 MiB).
const SYNC_BYTES_HARD_MAX: usize = 4 << 20;
/// A follower asks this often while it is up to date...
const FOLLOW_POLL: Duration = Duration::from_millis(5);
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

fn anchor_bytes(t: &Tip) -> Vec<u8> {
    let mut b = Vec::with_capacity(80);
    b.extend_from_slice(&t.view.to_be_bytes());
    b.extend_from_slice(&t.height.to_be_bytes());
    b.extend_from_slice(t.digest.as_slice());
    b.extend_from_slice(t.commitment.as_slice());
    b
}

fn anchor_from(b: &[u8]) -> Option<Tip> {
    (b.len() == 80).then(|| Tip {
        view: u64::from_be_bytes(b[..8].try_into().expect("8")),
        height: u64::from_be_bytes(b[8..16].try_into().expect("8")),
        digest: B256::from_slice(&b[16..48]),
        commitment: B256::from_slice(&b[48..80]),
    })
}

fn block_key(height: Height, digest: &Digest) -> Vec<u8> {
    let mut k = b"block/".to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k.extend_from_slice(digest.as_slice());
    k
}

/// Decodes each transaction again and recovers its sender; refuses the payload if a sender
/// differs from the one it claims or a transaction is invalid on its own.
fn recover_all(
    txs: &[RecoveredTx],
    exec: &rtchain_exec::ExecConfig,
) -> Result<Vec<RecoveredTx>, Invalid> {
    use rayon::prelude::*;
    txs.par_iter()
        .map(|claimed| {
            let tx = rtchain_exec::tx::decode_and_recover(&claimed.raw, exec)
                .map_err(|e| Invalid(format!("transaction {}: {e}", claimed.hash)))?;
            if tx.sender != claimed.sender {
                return Err(Invalid(format!(
                    "transaction {} claims sender {} but is signed by {}",
                    tx.hash, claimed.sender, tx.sender
                )));
            }
            Ok(tx)
        })
        .collect()
}

/// A gossip message's raw transactions.
fn parse_gossip(msg: &[u8]) -> Option<Vec<&[u8]>> {
    let count = u16::from_be_bytes(msg.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &msg[2..];
    let mut out = Vec::with_capacity(count.min(GOSSIP_TXS_MAX as usize));
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        out.push(rest.get(4..4usize.checked_add(len)?)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(out)
}

/// A sync response's blocks, in order, each with its certificate if it came with one.
fn parse_sync_response(
    resp: &[u8],
) -> Option<Vec<(Block, Option<rtchain_consensus::Certificate>)>> {
    let count = u16::from_be_bytes(resp.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &resp[2..];
    let mut out = Vec::with_capacity(count.min(SYNC_BLOCKS_MAX as usize));
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let entry = rest.get(4..4usize.checked_add(len)?)?;
        out.push(decode_final(entry)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(out)
}

/// The payload: log records, each as u32 length and bytes.
fn encode_payload(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        out.extend_from_slice(&(buf.len() as u32).to_be_bytes());
        out.extend_from_slice(&buf);
    }
    out
}

fn decode_payload(mut bytes: &[u8]) -> Result<Vec<LogRecord>, Invalid> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(Invalid("truncated payload".into()));
        }
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
        let body = bytes
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| Invalid("truncated payload record".into()))?;
        if out.len() == 4 {
            return Err(Invalid("too many records in one payload".into()));
        }
        out.push(
            LogRecord::decode(body).ok_or_else(|| Invalid("malformed payload record".into()))?,
        );
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}

/// keccak256 over a canonical encoding of a state diff (sorted accounts, slots and codes).
pub fn diff_digest(diff: &StateDiff) -> B256 {
    let mut buf = Vec::new();
    let mut accounts: Vec<_> = diff.accounts.iter().collect();
    accounts.sort_by_key(|(a, _)| **a);
    for (address, change) in accounts {
        buf.extend_from_slice(address.as_slice());
        match &change.info {
            Some(info) => {
                buf.push(1);
                buf.extend_from_slice(&info.balance.to_be_bytes::<32>());
                buf.extend_from_slice(&info.nonce.to_be_bytes());
                buf.extend_from_slice(info.code_hash.as_slice());
            }
            None => buf.push(0),
        }
        buf.push(change.storage_cleared as u8);
        let mut slots: Vec<_> = change.storage.iter().collect();
        slots.sort_by_key(|(k, _)| **k);
        buf.extend_from_slice(&(slots.len() as u64).to_be_bytes());
        for (k, v) in slots {
            buf.extend_from_slice(&k.to_be_bytes::<32>());
            buf.extend_from_slice(&v.to_be_bytes::<32>());
        }
    }
    let mut codes: Vec<_> = diff.codes.keys().collect();
    codes.sort();
    for hash in codes {
        buf.extend_from_slice(hash.as_slice());
    }
    keccak256(&buf)
}

fn chain_commitment(parent: B256, parts: &[u8]) -> B256 {
    let mut buf = b"rtchain/commit/v1".to_vec();
    buf.extend_from_slice(parent.as_slice());
    buf.extend_from_slice(parts);
    keccak256(&buf)
}

impl Replica {
    /// Opens the vote log, the stored blocks and the anchor, binds the transport, and builds the
    /// engine. `tip_point` is where the replayed chain stands.
    pub(super) fn open(config: &NodeConfig, chain: &crate::node::Chain) -> Result<Self, NodeError> {
        let c: &ConsensusSection = &config.consensus;
        let bad = |m: String| NodeError::Config(m);
        let key_file = c
            .key_file
            .as_ref()
            .ok_or_else(|| bad("consensus.key_file is required".into()))?;
        let key =
            crate::keys::load(key_file).map_err(|e| bad(format!("consensus.key_file: {e}")))?;
        // Peers by index: validators first, then followers.
        let mut keys = Vec::with_capacity(c.validators.len() + c.followers.len());
        let listed = c
            .validators
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("consensus.validators[{i}]"), v))
            .chain(
                c.followers
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("consensus.followers[{i}]"), v)),
            );
        for (name, v) in listed {
            let bytes: [u8; 32] = hex::decode(v.key.trim_start_matches("0x"))
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad(format!("{name}.key: expected 64 hex digits")))?;
            keys.push(
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| bad(format!("{name}.key: not an ed25519 public key")))?,
            );
        }
        let n = c.validators.len();
        let namespace = format!("rtchain/chain/{}", chain.exec.chain_id);
        let key_for_engine = key.clone();
        let validators = Validators::new(keys[..n].to_vec(), namespace.as_bytes())
            .map_err(|e| bad(format!("consensus.validators: {e}")))?;
        let me = keys
            .iter()
            .position(|k| *k == key.verifying_key())
            .ok_or_else(|| {
                bad(format!(
                    "consensus.key_file {}: its public key {} is in neither consensus.validators nor consensus.followers",
                    key_file.display(),
                    crate::keys::public_hex(&key)
                ))
            })? as u16;
        let follower = me as usize >= n;
        let genesis_header = chain
            .store
            .header(0)?
            .ok_or_else(|| NodeError::Recovery("genesis header missing".into()))?;
        let genesis_digest = keccak256(
            [
                b"rtchain/genesis/".as_slice(),
                genesis_header.hash_slow().as_slice(),
            ]
            .concat(),
        );
        let mut engine_config = EngineConfig::new(validators, genesis_digest);
        engine_config.timeout_leader = Duration::from_millis(c.timeout_leader_ms);
        engine_config.timeout_notarization = Duration::from_millis(c.timeout_notarization_ms);
        engine_config.timeout_retry = Duration::from_millis(c.timeout_retry_ms);

        let sync = match c.sync {
            ConsensusSync::Always => rtchain_consensus::SyncMode::Always,
            ConsensusSync::Off => rtchain_consensus::SyncMode::Off,
        };
        let log_config = VoteLogConfig {
            sync,
            ..Default::default()
        };
        let votelog_path = config.data_dir.join("votelog");
        let genesis_tip = Tip {
            view: 0,
            height: 0,
            digest: genesis_digest,
            commitment: genesis_header.state_root,
        };
        let tip = match chain.store.get_consensus(b"anchor")? {
            Some(bytes) => anchor_from(&bytes)
                .ok_or_else(|| NodeError::Recovery("consensus anchor is malformed".into()))?,
            None => genesis_tip,
        };
        // A follower signs nothing: no engine, no vote log.
        let (engine, votelog, stored) = if follower {
            (None, None, StoredBlocks::new())
        } else {
            let (engine, votelog, stored) = build_engine(
                &chain.store,
                &engine_config,
                &key,
                &votelog_path,
                log_config,
                tip,
                None,
            )?;
            (Some(engine), Some(votelog), stored)
        };

        let mut peer_addrs = Vec::new();
        let mut link_keys = Vec::new();
        for (i, v) in c.validators.iter().chain(&c.followers).enumerate() {
            peer_addrs.push(v.addr);
            link_keys.push(if i == me as usize {
                [0; 32]
            } else {
                link_key(&key, &keys[i], namespace.as_bytes())
            });
        }
        let listen = c.listen.unwrap_or(peer_addrs[me as usize]);
        let port_config = rtchain_dataplane::PortConfig {
            backend: match c.backend {
                crate::config::BackendKind::IoUring => rtchain_dataplane::Backend::IoUring,
                _ => rtchain_dataplane::Backend::Socket,
            },
            listen,
            reflector_port: None,
            poll: rtchain_dataplane::PollMode::Blocking,
            sqpoll: false,
            dpdk: Default::default(),
        };
        let framer = Framer::new(me, link_keys);
        let transport =
            Transport::open(&port_config, framer, peer_addrs).map_err(NodeError::Config)?;
        // A submission wakes the sequencer out of its wait on the consensus port.
        chain.set_ingress_waker(transport.waker());

        let stats = Arc::new(ConsensusStats {
            inner: Mutex::new(StatsInner {
                me: me as usize,
                follower,
                validators: c.validators.len(),
                sync: match c.sync {
                    ConsensusSync::Always => "always",
                    ConsensusSync::Off => "off",
                },
                view: 0,
                finalized_height: tip.height,
                finalize_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds"),
                blocks_delivered: 0,
                txs_finalized: 0,
                rejected_payloads: 0,
                sync_rounds: 0,
                engine: Default::default(),
                transport: Some(transport.stats.clone()),
            }),
        });
        tracing::info!(
            "validator {me} of {} (key {}), consensus on udp://{}, sync {:?}, anchor height {}",
            c.validators.len(),
            crate::keys::public_hex(&key),
            transport.local_addr,
            c.sync,
            tip.height
        );
        Ok(Self {
            engine,
            votelog,
            me,
            transport,
            n: c.validators.len(),
            timer: None,
            proposing: None,
            to_verify: Vec::new(),
            spec: HashMap::new(),
            tip,
            waiting: HashMap::new(),
            waiting_by_nonce: HashMap::new(),
            gossip_out: Vec::new(),
            own: HashMap::new(),
            stored,
            first_seen: HashMap::new(),
            sync_blocks: c.sync == ConsensusSync::Always,
            propose_idle: Duration::from_millis(c.propose_idle_ms),
            stats,
            engine_config,
            key: key_for_engine,
            votelog_path,
            log_config,
            catch_up: CatchUp::default(),
        })
    }
}

impl Replica {
    /// Every validator but us.
    fn others(&self) -> Vec<u16> {
        (0..self.n as u16).filter(|&i| i != self.me).collect()
    }

    fn is_follower(&self) -> bool {
        self.engine.is_none()
    }
}

/// Opens the vote log (replaying it) and builds an engine anchored at `tip`, with every stored
/// block above it handed back (those at or below it are deleted). Also returns the stored blocks
/// kept, by height and digest.
fn build_engine(
    store: &rtchain_state::Store,
    config: &EngineConfig,
    key: &ed25519_dalek::SigningKey,
    votelog_path: &std::path::Path,
    log_config: VoteLogConfig,
    tip: Tip,
    finalization: Option<rtchain_consensus::Certificate>,
) -> Result<(Engine, VoteLog<FileStorage>, StoredBlocks), NodeError> {
    let storage = FileStorage::open(votelog_path, log_config.size_bytes())
        .map_err(|e| NodeError::Recovery(format!("vote log {}: {e}", votelog_path.display())))?;
    let (votelog, replay) = VoteLog::open(storage, log_config, key.verifying_key().as_bytes())
        .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
    let anchor = Anchor {
        view: tip.view,
        height: tip.height,
        digest: tip.digest,
        finalization,
    };
    let mut engine = Engine::new(config.clone(), key.clone(), replay, anchor)
        .map_err(|e| NodeError::Recovery(format!("consensus: {e}")))?;
    let mut kept = StoredBlocks::new();
    for (k, bytes) in store.consensus_entries(b"block/")? {
        match Msg::decode(&bytes) {
            Ok(Msg::Block(block)) if block.height() > tip.height => {
                kept.insert((block.height(), block.digest()));
                engine.restore_block(*block);
            }
            Ok(_) => store.delete_consensus(&k)?,
            Err(_) => {
                tracing::warn!("dropping an undecodable stored block");
                store.delete_consensus(&k)?;
            }
        }
    }
    Ok((engine, votelog, kept))
}

/// Blocks stored under `consensus/block/`, by (height, digest).
type StoredBlocks = std::collections::BTreeSet<(Height, Digest)>;

impl Sequencer {
    /// The loop of a validator: peers' messages, timers, submissions, proposals.
    pub(super) fn run_replicated(&mut self, mut rep: Replica) -> Result<(), NodeError> {
        if self.finish_interrupted_deliveries(&mut rep)? {
            self.rebuild_engine(&mut rep, None)?;
        } else if let Some(engine) = &mut rep.engine {
            let mut out = Vec::new();
            engine.start(&mut out);
            self.perform(&mut rep, out)?;
        }
        let mut inbox = Vec::new();
        loop {
            if self.chain.is_shut_down() {
                return Ok(());
            }
            let now = Instant::now();
            if let Some((view, at)) = rep.timer
                && now >= at
            {
                rep.timer = None;
                self.step(&mut rep, Event::Timeout(view))?;
                continue;
            }
            // Everything that arrived, peers first (they move the chain), then submissions.
            let mut busy = false;
            inbox.clear();
            rep.transport.recv(&mut inbox);
            for (from, bytes) in inbox.drain(..) {
                busy = true;
                self.on_peer_bytes(&mut rep, from, &bytes)?;
            }
            while let Ok(s) = self.ingress.try_recv() {
                busy = true;
                self.accept_submission(&mut rep, s);
            }
            self.verify_ready(&mut rep)?;
            if self.propose_if_due(&mut rep)? {
                continue;
            }
            self.request_sync_if_behind(&mut rep);
            self.flush_gossip(&mut rep);
            rep.transport.flush();
            if busy {
                continue;
            }
            let mut wait = Duration::from_millis(50);
            if let Some((_, at)) = rep.timer {
                wait = wait.min(at.saturating_duration_since(now));
            }
            // Only while the proposal could be built: waiting for its parent is the peers' job.
            if let Some(p) = &rep.proposing
                && self.base_of(&rep, &p.parent).is_some()
            {
                wait = wait.min((p.since + rep.propose_idle).saturating_duration_since(now));
            }
            if rep.is_follower() {
                wait = wait.min(FOLLOW_POLL);
            }
            rep.transport.wait(wait);
        }
    }

    fn accept_submission(&mut self, rep: &mut Replica, s: Submission) {
        if let Some(reply) = s.reply {
            let sender = s.tx.sender;
            let nonce = alloy_consensus::Transaction::nonce(&s.tx.envelope);
            rep.waiting.insert(s.tx.hash, Waiter { reply });
            rep.waiting_by_nonce
                .entry((sender, nonce))
                .or_default()
                .push(s.tx.hash);
        }
        rep.gossip_out.push(s.tx.raw.clone());
        if !rep.is_follower() {
            self.ready.push_back(Submission {
                tx: s.tx,
                reply: None,
            });
        }
    }

    /// Sends the transactions accepted since the last call to every other validator.
    fn flush_gossip(&mut self, rep: &mut Replica) {
        if rep.gossip_out.is_empty() {
            return;
        }
        let others = rep.others();
        let mut msg = vec![KIND_TXS];
        let mut count = 0u16;
        let mut body = Vec::new();
        for raw in std::mem::take(&mut rep.gossip_out) {
            body.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            body.extend_from_slice(&raw);
            count += 1;
            if count == GOSSIP_TXS_MAX || body.len() > GOSSIP_BYTES_MAX {
                msg.extend_from_slice(&count.to_be_bytes());
                msg.append(&mut body);
                rep.transport.send(&others, &msg);
                msg.truncate(1);
                count = 0;
            }
        }
        if count > 0 {
            msg.extend_from_slice(&count.to_be_bytes());
            msg.append(&mut body);
            rep.transport.send(&others, &msg);
        }
    }

    /// Transactions another validator accepted: checked like any submission (decoded, senders
    /// recovered, nonces against our state) and queued for when we lead. Nobody waits for them
    /// here.
    fn accept_gossip(&mut self, msg: &[u8]) {
        let Some(raws) = parse_gossip(msg) else {
            return;
        };
        let limit = self.chain.sequencer.max_pending_txs;
        let fresh: Vec<&[u8]> = {
            let pool = self.chain.pool.read();
            if pool.pending_count() >= limit {
                return;
            }
            raws.into_iter()
                .filter(|raw| !pool.contains(&alloy_primitives::keccak256(raw)))
                .collect()
        };
        use rayon::prelude::*;
        let exec = &self.chain.exec;
        let recovered: Vec<RecoveredTx> = fresh
            .par_iter()
            .filter_map(|raw| rtchain_exec::tx::decode_and_recover(raw, exec).ok())
            .collect();
        let state = self.chain.latest_state();
        let mut accepted = Vec::new();
        for tx in recovered {
            let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
            let current = rtchain_exec::StateReader::account(&state, tx.sender)
                .ok()
                .flatten()
                .map_or(0, |a| a.nonce);
            if nonce >= current {
                accepted.push(tx);
            }
        }
        drop(state);
        let mut pool = self.chain.pool.write();
        for tx in accepted {
            if pool.contains(&tx.hash) {
                continue;
            }
            if pool.pending_count() >= limit {
                break;
            }
            pool.insert(tx.clone());
            self.ready.push_back(Submission { tx, reply: None });
        }
    }

    /// After a delivery: waiters whose nonce another transaction has taken learn so.
    fn answer_replaced(&mut self, rep: &mut Replica, included: &[(Address, u64, B256)]) {
        for (sender, nonce, hash) in included {
            let Some(hashes) = rep.waiting_by_nonce.remove(&(*sender, *nonce)) else {
                continue;
            };
            for h in hashes {
                if h == *hash {
                    continue;
                }
                if let Some(w) = rep.waiting.remove(&h) {
                    self.answers.send(
                        w.reply,
                        Err(BackendError::InvalidTransaction(format!(
                            "replaced: transaction {hash} with the same nonce {nonce} was finalized"
                        ))),
                    );
                }
            }
        }
    }

    fn on_peer_bytes(
        &mut self,
        rep: &mut Replica,
        from: u16,
        bytes: &[u8],
    ) -> Result<(), NodeError> {
        match bytes.split_first() {
            Some((&KIND_ENGINE, msg)) => {
                // Only validators speak consensus; a follower listens to none of it.
                let Some(engine) = rep.engine.as_mut().filter(|_| (from as usize) < rep.n) else {
                    return Ok(());
                };
                let mut out = Vec::new();
                engine.handle_bytes(from, msg, &mut out);
                self.perform(rep, out)
            }
            Some((&KIND_SYNC_REQUEST, req)) => {
                self.serve_sync(rep, from, req)?;
                Ok(())
            }
            Some((&KIND_SYNC_RESPONSE, resp)) => self.apply_sync(rep, from, resp),
            Some((&KIND_TXS, txs)) => {
                if !rep.is_follower() {
                    self.accept_gossip(txs);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step(&mut self, rep: &mut Replica, event: Event) -> Result<(), NodeError> {
        let Some(engine) = &mut rep.engine else {
            return Ok(());
        };
        let mut out = Vec::new();
        engine.handle(event, &mut out);
        self.perform(rep, out)
    }

    /// Performs one step's effects: every `Persist` first with one sync, then the rest in order.
    fn perform(&mut self, rep: &mut Replica, effects: Vec<Effect>) -> Result<(), NodeError> {
        let mut persisted = false;
        for e in &effects {
            if let Effect::Persist(record) = e {
                rep.votelog
                    .as_mut()
                    .expect("a validator has a vote log")
                    .append(record)
                    .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
                persisted = true;
            }
        }
        if persisted {
            rep.votelog
                .as_mut()
                .expect("a validator has a vote log")
                .sync()
                .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
        }
        for e in effects {
            match e {
                Effect::Persist(_) => {}
                Effect::Send(target, msg) => {
                    let to: Vec<u16> = match target {
                        Target::All => rep.others(),
                        Target::One(i) => vec![i],
                    };
                    let mut bytes = vec![KIND_ENGINE];
                    bytes.extend_from_slice(&msg.encode());
                    rep.transport.send(&to, &bytes);
                }
                Effect::Deliver(finalized) => self.deliver(rep, finalized)?,
                Effect::ScheduleTimeout { view, after } => {
                    rep.timer = Some((view, Instant::now() + after));
                }
                Effect::Verify(block) => {
                    rep.first_seen
                        .entry(block.digest())
                        .or_insert_with(Instant::now);
                    rep.to_verify.push(block);
                }
                Effect::Propose {
                    view,
                    parent,
                    parent_view,
                    height,
                } => {
                    rep.proposing = Some(ProposeRequest {
                        view,
                        parent,
                        parent_view,
                        height,
                        since: Instant::now(),
                    });
                }
            }
        }
        {
            let mut s = rep.stats.inner.lock();
            if let Some(engine) = &rep.engine {
                s.view = engine.view();
                s.engine = engine.stats().clone();
            }
        }
        Ok(())
    }

    /// A crash in the middle of a delivery leaves a block whose first records are committed
    /// (the mini-block log replayed them) while the anchor still names its parent. Only
    /// finalized blocks are ever committed, so such a stored block is final: finish it (and any
    /// such successor) before the engine starts. Returns whether the tip moved.
    fn finish_interrupted_deliveries(&mut self, rep: &mut Replica) -> Result<bool, NodeError> {
        let mut moved = false;
        loop {
            // Only the block whose delivery was marked as begun: another stored block of the
            // same height (a nullified view's) may share its first mini-block number.
            let Some(marked) = self.chain.store.get_consensus(b"delivering")? else {
                return Ok(moved);
            };
            let mut next = None;
            if marked.len() == 32 {
                let digest = B256::from_slice(&marked);
                let key = block_key(rep.tip.height + 1, &digest);
                if let Some(bytes) = self.chain.store.get_consensus(&key)?
                    && let Ok(Msg::Block(block)) = Msg::decode(&bytes)
                    && block.parent() == rep.tip.digest
                    && block.digest() == digest
                    && let Ok(records) = decode_payload(block.payload())
                    && records.iter().any(|r| self.committed(r))
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
                rep,
                Finalized {
                    block,
                    finalization: None,
                },
            )?;
            moved = true;
        }
    }

    /// Whether a log record is already committed here (by its mini-block or EVM block number):
    /// how a block partly committed before a crash is recognised.
    fn committed(&self, record: &LogRecord) -> bool {
        let s = self.chain.state.read();
        match record {
            LogRecord::MiniBlock(m) => m.number <= s.last_mini_block,
            LogRecord::Seal { block_number, .. } => *block_number <= s.closed_head,
        }
    }

    /// The tip's execution point: the committed chain as it stands.
    fn tip_point(&self, rep: &Replica) -> Point {
        let state = self.chain.state.read();
        Point {
            last_mini: state.last_mini_block,
            last_mini_hash: state.last_mini_block_hash,
            open: self.open.as_ref().map(|o| OpenPoint {
                ctx: o.ctx,
                opened_at_us: o.opened_at_us,
                gas_used: o.gas_used,
                logs: o.logs,
            }),
            closed_parent: state.closed_parent,
            commitment: rep.tip.commitment,
        }
    }

    /// The point after `parent` and the diffs from the tip to it; `None` if `parent` is neither
    /// the tip nor an executed descendant of it (not executed yet, or on a dead fork).
    fn base_of(&self, rep: &Replica, parent: &Digest) -> Option<(Point, Vec<Arc<StateDiff>>)> {
        if *parent == rep.tip.digest {
            return Some((self.tip_point(rep), Vec::new()));
        }
        let mut chain = Vec::new();
        let mut cursor = *parent;
        while cursor != rep.tip.digest {
            let s = rep.spec.get(&cursor)?;
            if s.height <= rep.tip.height {
                return None;
            }
            chain.push(cursor);
            cursor = s.parent;
        }
        let point = rep.spec.get(parent)?.point;
        let mut diffs = Vec::new();
        for d in chain.iter().rev() {
            diffs.extend(rep.spec[d].diffs.iter().cloned());
        }
        Some((point, diffs))
    }

    /// Executes the blocks waiting for verification whose parent state is known.
    fn verify_ready(&mut self, rep: &mut Replica) -> Result<(), NodeError> {
        loop {
            let Some(i) = rep.to_verify.iter().position(|b| {
                b.height() <= rep.tip.height || self.base_of(rep, &b.parent()).is_some()
            }) else {
                return Ok(());
            };
            let block = rep.to_verify.swap_remove(i);
            let digest = block.digest();
            let ok = if block.height() <= rep.tip.height {
                false
            } else {
                let (base, diffs) = self.base_of(rep, &block.parent()).expect("checked above");
                match self.execute_records(base, diffs, &block, false) {
                    Ok(spec) if spec.point.commitment == block.commitment() => {
                        // Stored before we vote for it: a notarized block stays available.
                        rep.spec.insert(digest, spec);
                        self.chain.store.put_consensus(
                            &block_key(block.height(), &digest),
                            &Msg::Block(Box::new(block.clone())).encode(),
                            rep.sync_blocks,
                        )?;
                        rep.stored.insert((block.height(), digest));
                        true
                    }
                    Ok(_) => {
                        tracing::warn!(
                            height = block.height(),
                            "proposal's post-state commitment differs from ours"
                        );
                        rep.stats.inner.lock().rejected_payloads += 1;
                        false
                    }
                    Err(Invalid(why)) => {
                        tracing::warn!(height = block.height(), "invalid proposal: {why}");
                        rep.stats.inner.lock().rejected_payloads += 1;
                        false
                    }
                }
            };
            self.step(rep, Event::Verified { digest, ok })?;
        }
    }

    /// Executes a block's records on `base` (with `diffs` from the tip to its parent).
    /// `trusted`: our own payload, or a finalized one (a quorum executed it); any other
    /// payload's transactions are decoded and their senders recovered again here, since the
    /// encoding carries the sender the proposer claims.
    fn execute_records(
        &mut self,
        base: Point,
        mut diffs: Vec<Arc<StateDiff>>,
        block: &Block,
        trusted: bool,
    ) -> Result<Spec, Invalid> {
        let mut records = decode_payload(block.payload())?;
        if !trusted {
            for record in &mut records {
                if let LogRecord::MiniBlock(m) = record {
                    m.transactions = recover_all(&m.transactions, &self.chain.exec)?;
                }
            }
        }
        let own_from = diffs.len();
        let mut point = base;
        let mut steps = Vec::new();
        let mut parts = Vec::new();
        // A finalized block is what it is: clock checks guard only what we vote on.
        let now = if trusted { u64::MAX / 2 } else { now_us() };
        for record in records {
            match record {
                LogRecord::MiniBlock(m) => {
                    if m.number != point.last_mini + 1 {
                        return Err(Invalid(format!(
                            "mini-block {} after {}",
                            m.number, point.last_mini
                        )));
                    }
                    if m.timestamp_us > now + MAX_CLOCK_AHEAD_US {
                        return Err(Invalid("timestamp too far in the future".into()));
                    }
                    if point.open.is_none() && !trusted && !self.may_open_block(&point) {
                        return Err(Invalid(
                            "mini-block opens an EVM block on a parent block not committed yet"
                                .into(),
                        ));
                    }
                    let open = match point.open {
                        Some(o) if o.ctx == m.block && m.timestamp_us >= o.opened_at_us => o,
                        Some(_) => {
                            return Err(Invalid(
                                "mini-block does not continue the open block".into(),
                            ));
                        }
                        None => {
                            let ctx = next_block_context(
                                &self.chain.exec,
                                &point.closed_parent,
                                m.timestamp_us,
                            );
                            if ctx != m.block
                                || m.timestamp_us / 1_000_000 < point.closed_parent.timestamp
                            {
                                return Err(Invalid(
                                    "mini-block opens a block with a wrong context".into(),
                                ));
                            }
                            OpenPoint {
                                ctx,
                                opened_at_us: m.timestamp_us,
                                gas_used: 0,
                                logs: 0,
                            }
                        }
                    };
                    if m.transactions.is_empty() {
                        return Err(Invalid("empty mini-block".into()));
                    }
                    let result = self
                        .executor
                        .execute_batch(
                            &self.chain.exec,
                            &open.ctx,
                            self.chain.state_with(&diffs),
                            m.transactions.clone(),
                            open.gas_used,
                            open.logs,
                        )
                        .map_err(|e| Invalid(format!("execution failed: {e}")))?;
                    let mut receipts = Vec::with_capacity(m.transactions.len());
                    for outcome in result.outcomes {
                        match outcome {
                            TxOutcome::Included { receipt, .. } => receipts.push(receipt),
                            TxOutcome::Rejected { tx, error } => {
                                return Err(Invalid(format!(
                                    "transaction {} is invalid: {error}",
                                    tx.hash
                                )));
                            }
                            TxOutcome::Deferred { tx } => {
                                return Err(Invalid(format!(
                                    "transaction {} does not fit the block",
                                    tx.hash
                                )));
                            }
                        }
                    }
                    if receipt::receipts_root(&receipts) != m.receipts_root {
                        return Err(Invalid("receipts root differs".into()));
                    }
                    let diff = Arc::new(result.diff);
                    let hash = advance(&mut point, open, &m, result.gas_used, result.logs);
                    parts.extend_from_slice(hash.as_slice());
                    parts.extend_from_slice(diff_digest(&diff).as_slice());
                    diffs.push(diff.clone());
                    steps.push(Step::Mini {
                        record: m,
                        receipts,
                        diff,
                        gas_used: result.gas_used,
                        logs: result.logs,
                    });
                }
                LogRecord::Seal {
                    block_number,
                    last_mini_block,
                    timestamp_us,
                } => {
                    apply_seal(
                        &self.chain.exec,
                        &mut point,
                        block_number,
                        last_mini_block,
                        timestamp_us,
                        now,
                    )?;
                    parts.extend_from_slice(b"seal");
                    parts.extend_from_slice(&block_number.to_be_bytes());
                    parts.extend_from_slice(&timestamp_us.to_be_bytes());
                    steps.push(Step::Seal {
                        block_number,
                        timestamp_us,
                    });
                }
            }
        }
        point.commitment = chain_commitment(base.commitment, &parts);
        Ok(Spec {
            parent: block.parent(),
            height: block.height(),
            point,
            diffs: diffs.split_off(own_from),
            steps,
        })
    }

    /// Puts the transactions of records we did not propose back at the front of the queue.
    fn requeue(&mut self, records: Vec<LogRecord>) {
        for tx in records_txs(&records).into_iter().rev() {
            self.ready.push_front(Submission { tx, reply: None });
        }
    }

    /// Whether a mini-block may open the EVM block after `point`'s last closed one: only when
    /// that block is committed here, so that BLOCKHASH of it reads its real hash on every
    /// validator and in every later re-execution (a block sealed only in an unfinalized
    /// ancestor has no hash yet). Replicas apply the same rule to proposals.
    fn may_open_block(&self, point: &Point) -> bool {
        point.closed_parent.number <= self.chain.state.read().closed_head
    }

    /// As leader: once the parent's state is known and transactions wait (or the idle wait is
    /// over), builds the payload from the ready queue and proposes it. Returns whether it did.
    fn propose_if_due(&mut self, rep: &mut Replica) -> Result<bool, NodeError> {
        let Some(request) = rep.proposing else {
            return Ok(false);
        };
        if rep.engine.as_ref().is_none_or(|e| request.view < e.view()) {
            rep.proposing = None;
            return Ok(false);
        }
        // Empty blocks are paced by `propose_idle`, except right after views were nullified
        // (a crashed or slow leader): then the chain has waited long enough already.
        let after_nullified = request.view > request.parent_view + 1;
        if self.ready.is_empty() && !after_nullified && request.since.elapsed() < rep.propose_idle {
            return Ok(false);
        }
        let Some((base, diffs)) = self.base_of(rep, &request.parent) else {
            return Ok(false);
        };
        rep.proposing = None;
        let started = Instant::now();
        let records = self.build_records(rep, base, diffs.clone());
        let payload = encode_payload(&records);
        // Our own payload goes through the replicas' path: what we propose is exactly what they
        // check. (This executes the transactions a second time on the leader.)
        let stub = Block::new(
            request.view,
            request.parent_view,
            request.height,
            request.parent,
            B256::ZERO,
            payload.clone(),
        );
        let mut spec = match self.execute_records(base, diffs, &stub, true) {
            Ok(spec) => spec,
            Err(Invalid(why)) => {
                tracing::error!("our own proposal does not execute: {why}");
                self.requeue(records);
                return Ok(false);
            }
        };
        let commitment = spec.point.commitment;
        let own_txs: Vec<RecoveredTx> = records_txs(&records);
        let block = Block::new(
            request.view,
            request.parent_view,
            request.height,
            request.parent,
            commitment,
            payload.clone(),
        );
        let digest = block.digest();
        spec.parent = request.parent;
        spec.height = request.height;
        rep.spec.insert(digest, spec);
        // Stored before our notarize vote (it rides in the proposal) leaves the node.
        self.chain.store.put_consensus(
            &block_key(block.height(), &digest),
            &Msg::Block(Box::new(block)).encode(),
            rep.sync_blocks,
        )?;
        rep.stored.insert((request.height, digest));
        rep.first_seen.insert(digest, started);
        if !own_txs.is_empty() {
            rep.own.insert(digest, (request.height, own_txs));
        }
        self.step(
            rep,
            Event::ProposalReady {
                view: request.view,
                payload,
                commitment,
            },
        )?;
        Ok(true)
    }

    /// Picks the next transactions and decides the seals: the records of one proposal.
    fn build_records(
        &mut self,
        rep: &mut Replica,
        base: Point,
        diffs: Vec<Arc<StateDiff>>,
    ) -> Vec<LogRecord> {
        let max_txs = self.chain.sequencer.max_mini_block_txs;
        let max_bytes = self.minilog.max_mini_block_bytes().min(3 << 20);
        let interval_us = self.chain.sequencer.block_interval_ms * 1000;
        let idle_us = self.chain.sequencer.idle_block_interval_ms * 1000;
        let now = now_us();
        let mut records = Vec::new();
        let mut point = base;
        let mut batch: Vec<RecoveredTx> = Vec::new();
        let mut bytes = 0;
        // A new EVM block may open only on a parent block this node has committed (see
        // `may_open_block`); until then the proposal carries no transactions.
        let may_open = point.open.is_some() || self.may_open_block(&point);
        while may_open && batch.len() < max_txs {
            let Some(s) = self.ready.pop_front() else {
                break;
            };
            let size = MiniLog::mini_block_record_bytes([s.tx.raw.len()])
                - MiniLog::mini_block_record_bytes([]);
            if !batch.is_empty() && bytes + size > max_bytes {
                self.ready.push_front(s);
                break;
            }
            bytes += size;
            if let Some(reply) = s.reply {
                // A queued future-nonce transaction whose gap filled: its waiter moves back.
                rep.waiting.insert(s.tx.hash, Waiter { reply });
            }
            batch.push(s.tx);
        }
        if !batch.is_empty() {
            // Never before the parent block's second: replicas refuse a block that goes back.
            let opened_at = now.max(point.closed_parent.timestamp * 1_000_000);
            let open = point.open.unwrap_or_else(|| OpenPoint {
                ctx: next_block_context(&self.chain.exec, &point.closed_parent, opened_at),
                opened_at_us: opened_at,
                gas_used: 0,
                logs: 0,
            });
            let result = self.executor.execute_batch(
                &self.chain.exec,
                &open.ctx,
                self.chain.state_with(&diffs),
                batch,
                open.gas_used,
                open.logs,
            );
            match result {
                Ok(result) => {
                    let mut included = Vec::new();
                    let mut receipts = Vec::new();
                    let mut deferred = Vec::new();
                    for outcome in result.outcomes {
                        match outcome {
                            TxOutcome::Included { tx, receipt, .. } => {
                                included.push(tx);
                                receipts.push(receipt);
                            }
                            TxOutcome::Rejected { tx, error } => {
                                // Nonce too low here means a transaction with this nonce is
                                // already in the chain or an unfinalized ancestor (this one,
                                // gossiped to several leaders, or a replacement): its waiter is
                                // answered when that block is finalized (`answer_replaced`).
                                let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
                                let taken_in_committed = || {
                                    rtchain_exec::StateReader::account(
                                        &self.chain.latest_state(),
                                        tx.sender,
                                    )
                                    .ok()
                                    .flatten()
                                    .is_some_and(|a| a.nonce > nonce)
                                };
                                let reply = if matches!(error, TxError::NonceTooLow { .. })
                                    && !taken_in_committed()
                                {
                                    None
                                } else {
                                    take_waiter(rep, &tx.hash, tx.sender, nonce)
                                };
                                self.reject_or_queue(tx, error, reply);
                            }
                            TxOutcome::Deferred { tx } => {
                                deferred.push(Submission { tx, reply: None })
                            }
                        }
                    }
                    if !included.is_empty() {
                        let m = MiniBlockRecord {
                            number: point.last_mini + 1,
                            timestamp_us: now.max(open.opened_at_us),
                            block: open.ctx,
                            receipts_root: receipt::receipts_root(&receipts),
                            transactions: included,
                        };
                        advance(&mut point, open, &m, result.gas_used, result.logs);
                        records.push(LogRecord::MiniBlock(m));
                    }
                    if !deferred.is_empty() {
                        for s in deferred.into_iter().rev() {
                            self.ready.push_front(s);
                        }
                        if let Some(o) = point.open {
                            records.push(seal_record(&mut point, o, &self.chain.exec));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("executing a proposal's transactions failed: {e}");
                }
            }
        }
        // Close the open block when its interval is over, or an empty one when idle, so that
        // time moves on.
        match point.open {
            Some(o) if now >= o.opened_at_us + interval_us => {
                records.push(seal_record(&mut point, o, &self.chain.exec));
            }
            None if now >= point.closed_parent.timestamp * 1_000_000 + idle_us => {
                records.push(LogRecord::Seal {
                    block_number: point.closed_parent.number + 1,
                    last_mini_block: point.last_mini,
                    timestamp_us: now,
                });
            }
            _ => {}
        }
        records
    }

    /// When the engine knows of finalized blocks we cannot deliver (the tip has not moved for a
    /// while), asks a peer for the finalized blocks after our tip.
    fn request_sync_if_behind(&mut self, rep: &mut Replica) {
        let now = Instant::now();
        let Some(engine) = &rep.engine else {
            return self.follow(rep);
        };
        let known = engine.finalized().1;
        let tip = rep.tip.height;
        match rep.catch_up.tip_seen {
            Some((h, _)) if h == tip => {}
            _ => rep.catch_up.tip_seen = Some((tip, now)),
        }
        if known <= tip {
            return;
        }
        let stalled = rep
            .catch_up
            .tip_seen
            .is_some_and(|(_, since)| now.duration_since(since) >= SYNC_STALL);
        if !stalled {
            return;
        }
        if let Some((_, _, sent)) = rep.catch_up.inflight
            && now.duration_since(sent) < SYNC_TIMEOUT
        {
            return;
        }
        if rep.catch_up.backoff_until.is_some_and(|t| now < t) {
            return;
        }
        let me = rep.me;
        let mut peer = rep.catch_up.next_peer % rep.n as u16;
        if peer == me {
            peer = (peer + 1) % rep.n as u16;
        }
        rep.catch_up.next_peer = peer + 1;
        send_sync_request(rep, peer, now);
        tracing::info!(
            "behind: delivered height {tip}, finalized height known {known}; fetching from validator {peer}"
        );
    }

    /// A follower asks the validators in turn for the finalized blocks after its tip, a request
    /// in flight at a time (an answer with nothing new ends it).
    fn follow(&mut self, rep: &mut Replica) {
        let now = Instant::now();
        if let Some((_, _, sent)) = rep.catch_up.inflight
            && now.duration_since(sent) < FOLLOW_TIMEOUT
        {
            return;
        }
        if rep
            .catch_up
            .last_poll
            .is_some_and(|at| now.duration_since(at) < FOLLOW_POLL)
        {
            return;
        }
        let peer = rep.catch_up.next_peer % rep.n as u16;
        rep.catch_up.next_peer = peer + 1;
        send_sync_request(rep, peer, now);
        rep.catch_up.last_poll = Some(now);
    }

    /// Answers a peer's request with the finalized blocks we keep from its height on, up to the
    /// last one whose finalization certificate we hold (that certificate proves them all).
    fn serve_sync(&mut self, rep: &mut Replica, from: u16, req: &[u8]) -> Result<(), NodeError> {
        if req.len() != 10 {
            return Ok(());
        }
        // One large answer per peer per interval: a replayed request (the tag has no freshness)
        // must not make us send megabytes on repeat. Small answers (a follower keeping up) are
        // not limited.
        let now = Instant::now();
        if rep
            .catch_up
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
            let Some(entry) = self.chain.store.get_consensus(&final_key(height))? else {
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
        for e in &entries {
            resp.extend_from_slice(&(e.len() as u32).to_be_bytes());
            resp.extend_from_slice(e);
        }
        if resp.len() > SYNC_SMALL_BYTES {
            rep.catch_up.served.insert(from, now);
        }
        rep.transport.send(&[from], &resp);
        Ok(())
    }

    /// Checks a sync response (it must extend our tip block by block and end in a block with a
    /// valid finalization certificate), commits its blocks, and restarts the engine from the new
    /// tip (its votes come back from the vote log).
    fn apply_sync(&mut self, rep: &mut Replica, from: u16, resp: &[u8]) -> Result<(), NodeError> {
        match rep.catch_up.inflight {
            Some((peer, start, _)) if peer == from && start == rep.tip.height + 1 => {}
            _ => return Ok(()),
        }
        let Some(blocks) = parse_sync_response(resp) else {
            tracing::warn!("validator {from}: malformed sync response");
            return Ok(());
        };
        if blocks.is_empty() {
            // Nothing new there: a follower polls again soon anyway; a validator waits before
            // asking the next peer instead of looping at round-trip speed.
            rep.catch_up.inflight = None;
            rep.catch_up.backoff_until = Some(Instant::now() + SYNC_EMPTY_BACKOFF);
            return Ok(());
        }
        let mut parent = rep.tip.digest;
        for (height, (block, _)) in (rep.tip.height + 1..).zip(&blocks) {
            if block.parent() != parent || block.height() != height {
                tracing::warn!("validator {from}: sync response does not extend our chain");
                return Ok(());
            }
            parent = block.digest();
        }
        let Some((last, Some(cert))) = blocks.last() else {
            return Ok(());
        };
        let proves =
            matches!(cert.vote, rtchain_consensus::Vote::Finalize(p) if p == last.proposal());
        if !proves
            || rep
                .engine_config
                .validators
                .verify_certificate(cert)
                .is_err()
        {
            tracing::warn!("validator {from}: sync response without a valid finalization");
            return Ok(());
        }
        let cert = cert.clone();
        rep.catch_up.inflight = None;
        rep.stats.inner.lock().sync_rounds += 1;
        let count = blocks.len();
        for (i, (block, _)) in blocks.into_iter().enumerate() {
            // Only the last block's certificate was checked: the others are not kept (we would
            // archive and serve them to peers as if they were).
            let finalization = (i + 1 == count).then(|| cert.clone());
            self.deliver(
                rep,
                Finalized {
                    block,
                    finalization,
                },
            )?;
        }
        tracing::info!(
            "caught up {count} finalized blocks from validator {from}; now at height {}",
            rep.tip.height
        );
        // Still behind: the next round need not wait out the stall timer again.
        rep.catch_up.tip_seen = Some((rep.tip.height, Instant::now() - SYNC_STALL));
        self.rebuild_engine(rep, Some(cert))
    }

    /// The engine cannot be moved forward from outside: builds it again on the current tip.
    /// Everything the old log holds was written through the same file (a second handle reads it
    /// all), so the replay sees every vote we cast.
    fn rebuild_engine(
        &mut self,
        rep: &mut Replica,
        cert: Option<rtchain_consensus::Certificate>,
    ) -> Result<(), NodeError> {
        if rep.is_follower() {
            return Ok(());
        }
        let (engine, votelog, stored) = build_engine(
            &self.chain.store,
            &rep.engine_config,
            &rep.key,
            &rep.votelog_path,
            rep.log_config,
            rep.tip,
            cert,
        )?;
        rep.timer = None;
        rep.proposing = None;
        rep.to_verify.clear();
        rep.spec.clear();
        let mut out = Vec::new();
        rep.engine.insert(engine).start(&mut out);
        rep.votelog = Some(votelog);
        rep.stored = stored;
        self.perform(rep, out)
    }

    /// Commits a finalized block: its mini-blocks to the log and the state, its receipts to
    /// whoever waits, its seals to the sealer; then records the anchor.
    fn deliver(&mut self, rep: &mut Replica, finalized: Finalized) -> Result<(), NodeError> {
        let block = finalized.block;
        let digest = block.digest();
        if block.parent() != rep.tip.digest {
            return Err(NodeError::Recovery(format!(
                "finalized block at height {} does not extend our tip at height {}",
                block.height(),
                rep.tip.height
            )));
        }
        let spec = match rep.spec.remove(&digest) {
            Some(spec) if spec.parent == rep.tip.digest => spec,
            _ => {
                // Never verified here (fetched after the fact, or restarted), or already
                // partly applied before a crash: execute what is not applied yet.
                let records = decode_payload(block.payload()).map_err(|Invalid(why)| {
                    NodeError::Recovery(format!("finalized block: {why}"))
                })?;
                let fresh: Vec<LogRecord> = records
                    .iter()
                    .filter(|r| !self.committed(r))
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
                let base = self.tip_point(rep);
                let mut spec = self
                    .execute_records(base, Vec::new(), &stub, true)
                    .map_err(|Invalid(why)| {
                        NodeError::Recovery(format!(
                            "finalized block at height {} does not execute here: {why}",
                            block.height()
                        ))
                    })?;
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
        self.chain
            .store
            .put_consensus(b"delivering", digest.as_slice(), false)?;
        // Transactions of this block that sit in our queue (gossip queued them everywhere):
        // out of the queue, their waiters (a queued future nonce keeps its reply there) to the
        // ones the commit below answers.
        let in_block: std::collections::HashSet<B256> = spec
            .steps
            .iter()
            .flat_map(|step| match step {
                Step::Mini { record, .. } => record.transactions.iter().map(|t| t.hash).collect(),
                Step::Seal { .. } => Vec::new(),
            })
            .collect();
        if !in_block.is_empty() && !self.ready.is_empty() {
            let mut kept = std::collections::VecDeque::with_capacity(self.ready.len());
            for s in self.ready.drain(..) {
                if !in_block.contains(&s.tx.hash) {
                    kept.push_back(s);
                } else if let Some(reply) = s.reply {
                    rep.waiting.insert(s.tx.hash, Waiter { reply });
                }
            }
            self.ready = kept;
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
                    if self.open.is_none() {
                        self.open_block(record.block, record.timestamp_us);
                    }
                    self.make_log_room_for(&record)?;
                    txs_finalized += record.transactions.len() as u64;
                    let mut replies: HashMap<B256, Reply> = HashMap::new();
                    for tx in &record.transactions {
                        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
                        included_nonces.push((tx.sender, nonce, tx.hash));
                        if let Some(w) = rep.waiting.remove(&tx.hash) {
                            replies.insert(tx.hash, w.reply);
                        }
                    }
                    let included = record.transactions.iter().cloned().zip(receipts).collect();
                    let diff = Arc::try_unwrap(diff).unwrap_or_else(|d| (*d).clone());
                    self.commit_mini_block(
                        included,
                        diff,
                        (gas_used, logs),
                        Some((record.number, record.timestamp_us, record.receipts_root)),
                        true,
                        &mut replies,
                    )?;
                }
                Step::Seal {
                    block_number,
                    timestamp_us,
                } => {
                    let closed = self.close_block(true, Some(timestamp_us))?;
                    if closed != block_number {
                        return Err(NodeError::Recovery(format!(
                            "finalized seal of block {block_number} closed block {closed}"
                        )));
                    }
                }
            }
        }
        self.answer_replaced(rep, &included_nonces);
        let height = block.height();
        rep.tip = Tip {
            view: block.view(),
            height,
            digest,
            commitment: spec.point.commitment,
        };
        self.chain
            .store
            .put_consensus(b"anchor", &anchor_bytes(&rep.tip), false)?;
        self.chain.store.delete_consensus(b"delivering")?;
        // Kept for peers that catch up (see `serve_sync`).
        self.chain.store.put_consensus(
            &final_key(height),
            &encode_final(&block, finalized.finalization.as_ref()),
            false,
        )?;
        // Stored blocks at or below the new tip are settled. Tracked in memory: scanning the
        // prefix would walk every deletion tombstone RocksDB still holds.
        while let Some(&(h, d)) = rep.stored.first()
            && h <= height
        {
            self.chain.store.delete_consensus(&block_key(h, &d))?;
            rep.stored.pop_first();
        }
        rep.spec.retain(|_, s| s.height > height);
        // Our proposals at this height or below that did not make it: their transactions go
        // back to the queue (if another block took them, their nonces now refuse them).
        let abandoned: Vec<Digest> = rep
            .own
            .iter()
            .filter(|(_, (h, _))| *h <= height)
            .map(|(d, _)| *d)
            .collect();
        for d in abandoned {
            if let Some((_, txs)) = rep.own.remove(&d)
                && d != digest
            {
                for tx in txs.into_iter().rev() {
                    self.ready.push_front(Submission { tx, reply: None });
                }
            }
        }
        rep.to_verify.retain(|b| b.height() > height);
        let latency = rep.first_seen.remove(&digest).map(|t| t.elapsed());
        rep.first_seen
            .retain(|_, t| t.elapsed() < Duration::from_secs(60));
        let mut s = rep.stats.inner.lock();
        s.finalized_height = height;
        s.blocks_delivered += 1;
        s.txs_finalized += txs_finalized;
        if let Some(latency) = latency {
            let _ = s.finalize_us.record((latency.as_micros() as u64).max(1));
        }
        Ok(())
    }

    /// Room in the mini-block log for a replicated mini-block (see `make_log_room`).
    fn make_log_room_for(&mut self, record: &MiniBlockRecord) -> Result<(), NodeError> {
        let needed =
            MiniLog::mini_block_record_bytes(record.transactions.iter().map(|t| t.raw.len()))
                + super::SEAL_RESERVE_BYTES;
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        self.sync_store()?;
        if self.minilog.has_room(needed, self.durable_mini) {
            return Ok(());
        }
        Err(NodeError::Config(format!(
            "the mini-block log is too small for a replicated mini-block of {needed} bytes; raise storage.minilog_size_bytes"
        )))
    }
}

/// Moves `point` past mini-block `m` of the open block `open`; returns the mini-block's hash.
fn advance(
    point: &mut Point,
    open: OpenPoint,
    m: &MiniBlockRecord,
    gas_used: u64,
    logs: u64,
) -> B256 {
    let hash = mini_header(m, point.last_mini_hash, gas_used).hash();
    point.last_mini = m.number;
    point.last_mini_hash = hash;
    point.open = Some(OpenPoint {
        gas_used: open.gas_used + gas_used,
        logs: open.logs + logs,
        ..open
    });
    hash
}

fn final_key(height: Height) -> Vec<u8> {
    let mut k = b"final/".to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k
}

/// A finalized block as kept for catch-up: the block, then its finalization certificate if we
/// hold it.
fn encode_final(block: &Block, cert: Option<&rtchain_consensus::Certificate>) -> Vec<u8> {
    let body = Msg::Block(Box::new(block.clone())).encode();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    if let Some(cert) = cert {
        out.extend_from_slice(&Msg::Certificate(Box::new(cert.clone())).encode());
    }
    out
}

fn decode_final(bytes: &[u8]) -> Option<(Block, Option<rtchain_consensus::Certificate>)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    let Ok(Msg::Block(block)) = Msg::decode(body) else {
        return None;
    };
    let rest = &bytes[4 + len..];
    let cert = if rest.is_empty() {
        None
    } else {
        match Msg::decode(rest) {
            Ok(Msg::Certificate(cert)) => Some(*cert),
            _ => return None,
        }
    };
    Some((*block, cert))
}

/// Asks `peer` for the finalized blocks after our tip; the answer is awaited as `inflight`.
fn send_sync_request(rep: &mut Replica, peer: u16, now: Instant) {
    let from = rep.tip.height + 1;
    let mut req = vec![KIND_SYNC_REQUEST];
    req.extend_from_slice(&from.to_be_bytes());
    req.extend_from_slice(&(SYNC_BLOCKS_MAX as u16).to_be_bytes());
    rep.transport.send(&[peer], &req);
    rep.catch_up.inflight = Some((peer, from, now));
}

/// Removes a waiter (and its nonce index entry); its reply, if someone waited.
fn take_waiter(rep: &mut Replica, hash: &B256, sender: Address, nonce: u64) -> Option<Reply> {
    let waiter = rep.waiting.remove(hash)?;
    if let Some(hashes) = rep.waiting_by_nonce.get_mut(&(sender, nonce)) {
        hashes.retain(|h| h != hash);
        if hashes.is_empty() {
            rep.waiting_by_nonce.remove(&(sender, nonce));
        }
    }
    Some(waiter.reply)
}

fn records_txs(records: &[LogRecord]) -> Vec<RecoveredTx> {
    records
        .iter()
        .flat_map(|r| match r {
            LogRecord::MiniBlock(m) => m.transactions.clone(),
            LogRecord::Seal { .. } => Vec::new(),
        })
        .collect()
}

fn mini_header(m: &MiniBlockRecord, parent_hash: B256, gas_used: u64) -> MiniBlockHeader {
    MiniBlockHeader {
        number: m.number,
        parent_hash,
        timestamp_us: m.timestamp_us,
        evm_block_number: m.block.number,
        transactions_root: receipt::transactions_root(&m.transactions),
        receipts_root: m.receipts_root,
        gas_used,
        tx_count: m.transactions.len() as u32,
    }
}

fn seal_record(point: &mut Point, open: OpenPoint, exec: &rtchain_exec::ExecConfig) -> LogRecord {
    let record = LogRecord::Seal {
        block_number: open.ctx.number,
        last_mini_block: point.last_mini,
        timestamp_us: open.opened_at_us,
    };
    apply_seal(
        exec,
        point,
        open.ctx.number,
        point.last_mini,
        open.opened_at_us,
        u64::MAX,
    )
    .expect("a seal we build is valid");
    record
}

/// Checks a seal against `point` and moves `point` past it.
fn apply_seal(
    exec: &rtchain_exec::ExecConfig,
    point: &mut Point,
    block_number: u64,
    last_mini_block: u64,
    timestamp_us: u64,
    now: u64,
) -> Result<(), Invalid> {
    if last_mini_block != point.last_mini {
        return Err(Invalid("seal names the wrong last mini-block".into()));
    }
    let (ctx, gas_used) = match point.open {
        Some(o) => {
            if o.ctx.number != block_number || o.opened_at_us != timestamp_us {
                return Err(Invalid("seal does not match the open block".into()));
            }
            (o.ctx, o.gas_used)
        }
        None => {
            if block_number != point.closed_parent.number + 1
                || timestamp_us / 1_000_000 < point.closed_parent.timestamp
                || timestamp_us > now.saturating_add(MAX_CLOCK_AHEAD_US)
            {
                return Err(Invalid(
                    "empty block seal out of order or out of time".into(),
                ));
            }
            (
                next_block_context(exec, &point.closed_parent, timestamp_us),
                0,
            )
        }
    };
    point.closed_parent = ParentInfo {
        number: ctx.number,
        timestamp: ctx.timestamp,
        gas_used,
        gas_limit: ctx.gas_limit,
        base_fee: ctx.base_fee,
        last_mini_hash: point.last_mini_hash,
    };
    point.open = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, U256};
    use rtchain_exec::AccountChange;

    #[test]
    fn the_diff_digest_ignores_map_order_and_sees_every_change() {
        let mut a = StateDiff::default();
        for i in 0..20u8 {
            let mut change = AccountChange::default();
            change.storage.insert(U256::from(i), U256::from(i * 2));
            a.accounts.insert(Address::repeat_byte(i), change);
        }
        let mut b = StateDiff::default();
        for i in (0..20u8).rev() {
            b.accounts.insert(
                Address::repeat_byte(i),
                a.accounts[&Address::repeat_byte(i)].clone(),
            );
        }
        assert_eq!(diff_digest(&a), diff_digest(&b));
        b.accounts
            .get_mut(&Address::repeat_byte(3))
            .unwrap()
            .storage
            .insert(U256::from(3), U256::from(7));
        assert_ne!(diff_digest(&a), diff_digest(&b));
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let records = vec![LogRecord::Seal {
            block_number: 4,
            last_mini_block: 9,
            timestamp_us: 1,
        }];
        let bytes = encode_payload(&records);
        assert_eq!(decode_payload(&bytes).unwrap(), records);
        assert!(decode_payload(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_payload(&[0, 0, 0, 1, 9]).is_err());
        assert!(decode_payload(&[]).unwrap().is_empty());
    }
}
