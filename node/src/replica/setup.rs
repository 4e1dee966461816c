//! Opening a replica: keys and peers from `[consensus]`, the anchor, the vote log and the
//! stored blocks (a validator's engine is rebuilt from them after a restart), and the
//! authenticated transport.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use alloy_primitives::keccak256;
use rtchain_consensus::{
    Anchor, Certificate, Config as EngineConfig, Digest, Engine, Height, Msg, Validators, VoteLog,
    VoteLogConfig, votelog::FileStorage,
};

use super::{
    payload::{ANCHOR_KEY, BLOCK_PREFIX, Tip},
    stats::ConsensusStats,
};
use crate::{
    NodeError,
    chain::Chain,
    config::{BackendKind, ConsensusSection, ConsensusSync, NodeConfig},
    keys,
    transport::{Framer, Transport, link_key},
};

/// Blocks stored under `consensus/block/` (voted for or proposed, not yet settled), by
/// (height, digest).
pub type StoredBlocks = BTreeSet<(Height, Digest)>;

/// Everything a replica is built from.
pub struct Setup {
    /// `None` on a follower: it votes on nothing and takes finalized blocks from peers.
    pub engine: Option<Engine>,
    pub votelog: Option<VoteLog<FileStorage>>,
    pub stored: StoredBlocks,
    pub me: u16,
    /// Validators (peers `0..n`); followers are the peers after them.
    pub n: usize,
    pub transport: Transport,
    pub tip: Tip,
    pub sync_blocks: bool,
    pub propose_idle: Duration,
    pub stats: Arc<ConsensusStats>,
    pub engine_parts: EngineParts,
}

/// What rebuilding the engine needs (after catching up from peers).
pub struct EngineParts {
    pub config: EngineConfig,
    pub key: ed25519_dalek::SigningKey,
    pub votelog_path: PathBuf,
    pub log_config: VoteLogConfig,
}

/// Opens the vote log, the stored blocks and the anchor, binds the transport, and builds the
/// engine.
pub fn open(config: &NodeConfig, chain: &Chain) -> Result<Setup, NodeError> {
    let c: &ConsensusSection = &config.consensus;
    let bad = |m: String| NodeError::Config(m);
    let key_file = c
        .key_file
        .as_ref()
        .ok_or_else(|| bad("consensus.key_file is required".into()))?;
    let key = keys::load(key_file).map_err(|e| bad(format!("consensus.key_file: {e}")))?;
    // Peers by index: validators first, then followers.
    let mut peer_keys = Vec::with_capacity(c.validators.len() + c.followers.len());
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
        peer_keys.push(
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| bad(format!("{name}.key: not an ed25519 public key")))?,
        );
    }
    let n = c.validators.len();
    let namespace = format!("rtchain/chain/{}", chain.exec.chain_id);
    let validators = Validators::new(peer_keys[..n].to_vec(), namespace.as_bytes())
        .map_err(|e| bad(format!("consensus.validators: {e}")))?;
    let me = peer_keys
        .iter()
        .position(|k| *k == key.verifying_key())
        .ok_or_else(|| {
            bad(format!(
                "consensus.key_file {}: its public key {} is in neither consensus.validators nor consensus.followers",
                key_file.display(),
                keys::public_hex(&key)
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
    let tip = match chain.store.get_consensus(ANCHOR_KEY)? {
        Some(bytes) => Tip::decode(&bytes)
            .ok_or_else(|| NodeError::Recovery("consensus anchor is malformed".into()))?,
        None => genesis_tip,
    };
    let parts = EngineParts {
        config: engine_config,
        key,
        votelog_path,
        log_config,
    };
    // A follower signs nothing: no engine, no vote log.
    let (engine, votelog, stored) = if follower {
        (None, None, StoredBlocks::new())
    } else {
        let (engine, votelog, stored) = build_engine(&chain.store, &parts, tip, None)?;
        (Some(engine), Some(votelog), stored)
    };

    let mut peer_addrs = Vec::new();
    let mut link_keys = Vec::new();
    for (i, v) in c.validators.iter().chain(&c.followers).enumerate() {
        peer_addrs.push(v.addr);
        link_keys.push(if i == me as usize {
            [0; 32]
        } else {
            link_key(&parts.key, &peer_keys[i], namespace.as_bytes())
        });
    }
    let listen = c.listen.unwrap_or(peer_addrs[me as usize]);
    let port_config = rtchain_dataplane::PortConfig {
        backend: match c.backend {
            BackendKind::IoUring => rtchain_dataplane::Backend::IoUring,
            _ => rtchain_dataplane::Backend::Socket,
        },
        listen,
        reflector_port: None,
        poll: rtchain_dataplane::PollMode::Blocking,
        sqpoll: false,
        dpdk: Default::default(),
    };
    let framer = Framer::new(me, link_keys);
    let transport = Transport::open(&port_config, framer, peer_addrs).map_err(NodeError::Config)?;
    // A submission wakes the sequencer out of its wait on the consensus port.
    chain.set_ingress_waker(transport.waker());

    let stats = Arc::new(ConsensusStats::new(
        me as usize,
        follower,
        n,
        match c.sync {
            ConsensusSync::Always => "always",
            ConsensusSync::Off => "off",
        },
        tip.height,
        transport.stats.clone(),
    ));
    tracing::info!(
        "validator {me} of {n} (key {}), consensus on udp://{}, sync {:?}, anchor height {}",
        keys::public_hex(&parts.key),
        transport.local_addr,
        c.sync,
        tip.height
    );
    Ok(Setup {
        engine,
        votelog,
        stored,
        me,
        n,
        transport,
        tip,
        sync_blocks: c.sync == ConsensusSync::Always,
        propose_idle: Duration::from_millis(c.propose_idle_ms),
        stats,
        engine_parts: parts,
    })
}

/// Opens the vote log (replaying it) and builds an engine anchored at `tip`, with every stored
/// block above it handed back (those at or below it are deleted). Also returns the stored blocks
/// kept.
pub fn build_engine(
    store: &rtchain_state::Store,
    parts: &EngineParts,
    tip: Tip,
    finalization: Option<Certificate>,
) -> Result<(Engine, VoteLog<FileStorage>, StoredBlocks), NodeError> {
    let path = &parts.votelog_path;
    let storage = FileStorage::open(path, parts.log_config.size_bytes())
        .map_err(|e| NodeError::Recovery(format!("vote log {}: {e}", path.display())))?;
    let (votelog, replay) = VoteLog::open(
        storage,
        parts.log_config,
        parts.key.verifying_key().as_bytes(),
    )
    .map_err(|e| NodeError::Recovery(format!("vote log: {e}")))?;
    let anchor = Anchor {
        view: tip.view,
        height: tip.height,
        digest: tip.digest,
        finalization,
    };
    let mut engine = Engine::new(parts.config.clone(), parts.key.clone(), replay, anchor)
        .map_err(|e| NodeError::Recovery(format!("consensus: {e}")))?;
    let mut kept = StoredBlocks::new();
    for (k, bytes) in store.consensus_entries(BLOCK_PREFIX)? {
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
