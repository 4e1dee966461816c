//! Node configuration: a documented TOML file for `rtchain node`, flags for `rtchain devnet`.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use rtchain_dataplane::{PollMode, tile::CoreMap};

use rtchain_state::minilog::SyncMode;
use serde::{Deserialize, Serialize};

/// Everything a node needs to run. Every field has a default, so a config file names only what
/// it changes. See docs/operator.md for each field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory for RocksDB and the mini-block log.
    pub data_dir: PathBuf,
    pub rpc: RpcSection,
    pub chain: ChainSection,
    pub sequencer: SequencerSection,
    pub storage: StorageSection,
    /// The UDP fast path (docs/wire.md) and its packet I/O backend.
    pub fastpath: FastPathSection,
    /// Which cores run which tiles. Empty: nothing pinned (shared hosts, CI).
    pub cores: CoreMap,
    /// BFT replication among validators (docs/consensus.md). No validators: one sequencer.
    pub consensus: ConsensusSection,
    /// Settlement to Ethereum L1 (docs/l1.md). No `url`: none.
    pub l1: L1Section,
}

/// `[l1]`: the L1 this chain settles to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Section {
    /// The L1's JSON-RPC URL; its beacon API (blobs) is read on the same origin. Unset: no
    /// settlement.
    pub url: Option<String>,
    /// Where the contracts are: the record `rtchain l1 deploy` writes. Relative to `data_dir`.
    pub deployment: PathBuf,
    /// Which L1 blocks deposits are taken from: `latest`, `safe` (default) or `finalized`.
    pub confirmation: rtchain_l1::watch::Confirmation,
    /// How often L1 is read.
    pub poll_ms: u64,
    /// This validator's secp256k1 settlement key (hex, `rtchain keys generate --secp256k1`):
    /// signs output roots and pays for posting them. Unset: this node signs nothing.
    pub settlement_key_file: Option<PathBuf>,
    /// The others wait this long after a quorum before posting an output root in the place of
    /// the validator whose turn it is.
    pub proposer_grace_ms: u64,
    pub batcher: BatcherSection,
    /// Rebuild the chain from L1 alone: read the batches, re-execute, check every output root
    /// (`rtchain node --derive-from-l1 URL`). Such a node takes no transactions and has no
    /// peers.
    pub derive: bool,
}

/// `[l1.batcher]`: this node posts the chain's data to L1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherSection {
    /// The batcher's secp256k1 key (hex), registered in the inbox. Unset: this node does not
    /// post batches.
    pub key_file: Option<PathBuf>,
    /// `blobs`, `calldata`, or `auto` (blobs, calldata where L1 refuses a blob transaction).
    pub data: rtchain_l1::batcher::DataMode,
    /// A block waits at most this long for more blocks to fill its batch.
    pub max_batch_age_ms: u64,
    /// Blobs per L1 transaction at most (prague takes 9).
    pub max_blobs_per_tx: usize,
    /// An unmined batch transaction is replaced with doubled fees after this long.
    pub resubmit_after_ms: u64,
}

impl Default for L1Section {
    fn default() -> Self {
        Self {
            url: None,
            deployment: PathBuf::from("l1.json"),
            confirmation: rtchain_l1::watch::Confirmation::Safe,
            poll_ms: 500,
            settlement_key_file: None,
            proposer_grace_ms: 5_000,
            batcher: BatcherSection::default(),
            derive: false,
        }
    }
}

impl Default for BatcherSection {
    fn default() -> Self {
        Self {
            key_file: None,
            data: rtchain_l1::batcher::DataMode::Auto,
            max_batch_age_ms: 2_000,
            max_blobs_per_tx: 6,
            resubmit_after_ms: 20_000,
        }
    }
}

impl L1Section {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }
}

/// `[consensus]`: this node as one of n = 3f+1 validators.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusSection {
    /// Every validator, in index order (the same list on every validator). Empty: no
    /// replication, this node sequences and finalizes alone.
    pub validators: Vec<ValidatorEntry>,
    /// Non-voting full nodes, by key and address: they take finalized blocks from the
    /// validators, verify and re-execute them, and serve RPC. A node whose key is listed here
    /// runs as a follower. The same list on every node.
    pub followers: Vec<ValidatorEntry>,
    /// Our ed25519 key (`rtchain keys generate`); its public key must be in `validators`.
    pub key_file: Option<PathBuf>,
    /// Where we receive consensus datagrams (our entry's `addr` is where peers send them).
    pub listen: Option<SocketAddrV4>,
    /// Packet I/O for consensus messages: `socket` or `io-uring`.
    pub backend: BackendKind,
    /// `always` (default): votes, voted blocks and finalized mini-blocks are synced before they
    /// are sent or acknowledged. `off`: benchmarks only; a crash can make a validator sign
    /// conflicting votes.
    pub sync: ConsensusSync,
    /// From entering a view until we nullify it if no valid proposal arrived.
    pub timeout_leader_ms: u64,
    /// From notarizing until we nullify a view that did not complete.
    pub timeout_notarization_ms: u64,
    /// While stuck in a view: how often votes and certificates are re-sent.
    pub timeout_retry_ms: u64,
    /// The leader waits at most this long for transactions before proposing an empty block.
    pub propose_idle_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    /// The validator's public key, hex (`rtchain keys show`).
    pub key: String,
    /// Its consensus address.
    pub addr: SocketAddrV4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsensusSync {
    Always,
    Off,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        Self {
            validators: Vec::new(),
            followers: Vec::new(),
            key_file: None,
            listen: None,
            backend: BackendKind::Socket,
            sync: ConsensusSync::Always,
            timeout_leader_ms: 100,
            timeout_notarization_ms: 150,
            timeout_retry_ms: 25,
            propose_idle_ms: 10,
        }
    }
}

impl ConsensusSection {
    pub fn enabled(&self) -> bool {
        !self.validators.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSection {
    /// HTTP and WebSocket on one port.
    pub addr: SocketAddr,
    pub max_connections: u32,
    pub max_request_body_bytes: u32,
    pub max_batch_len: u32,
    /// Web origins whose pages may use the RPC (CORS, WebSocket `Origin`): "local" (pages on
    /// this machine, the default), "*", or exact origins ("https://app.example.org").
    pub allowed_origins: Vec<String>,
    /// Sign for the ten dev accounts (eth_accounts, eth_sendTransaction, eth_signTransaction,
    /// eth_sign, personal_sign), as anvil and hardhat do. Their keys are public: only with the
    /// built-in dev genesis (the devnet turns it on).
    pub dev_accounts: bool,
    /// Accept legacy transactions without a chain id (pre-EIP-155) from clients, as geth's
    /// `--rpc.allow-unprotected-txs`: such a transaction can be replayed on any chain, but it
    /// is the keyless way the CREATE2 deployer and other singletons are deployed. A node
    /// policy, not a chain rule: blocks carrying one are valid on every node.
    pub allow_unprotected_txs: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainSection {
    /// A geth-style genesis.json; without it, the built-in dev genesis with `chain_id`.
    pub genesis: Option<PathBuf>,
    /// Chain id of the built-in dev genesis (default 31337). With `genesis`, the file names the
    /// chain id: this may be left out, and if set must equal it.
    pub chain_id: Option<u64>,
    /// Block gas limit of the dev genesis (a genesis file sets its own).
    pub block_gas_limit: u64,
    /// EVM rules by name (e.g. "Prague", "Cancun").
    pub spec: String,
    /// Receives priority fees.
    pub coinbase: alloy_primitives::Address,
}

/// The dev genesis's chain id when none is configured (anvil's and hardhat's).
pub const DEV_CHAIN_ID: u64 = 31337;

impl ChainSection {
    /// The chain's id: the genesis file's, or `chain_id` (default [`DEV_CHAIN_ID`]) for the
    /// dev genesis. A configured id that disagrees with the file's is an error, not ignored.
    pub fn resolve_chain_id(&self) -> Result<u64, String> {
        let Some(path) = &self.genesis else {
            return Ok(self.chain_id.unwrap_or(DEV_CHAIN_ID));
        };
        let file = rtchain_state::Genesis::from_file(path)
            .map_err(|e| e.to_string())?
            .chain_id;
        check_chain_id(self.chain_id, file, path)
    }
}

/// `configured` (if set) against the genesis file's chain id.
pub fn check_chain_id(
    configured: Option<u64>,
    file: u64,
    path: &std::path::Path,
) -> Result<u64, String> {
    match configured {
        Some(id) if id != file => Err(format!(
            "chain id {id} was asked for, but the genesis file {} is chain {file}: leave out the chain id or make them agree",
            path.display()
        )),
        _ => Ok(file),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencerSection {
    /// An EVM block is sealed this long after its first mini-block.
    pub block_interval_ms: u64,
    /// With no transactions, an empty block is sealed this often so that time moves on.
    pub idle_block_interval_ms: u64,
    /// Bound on transactions in one mini-block (more wait for the next one).
    pub max_mini_block_txs: usize,
    /// Bound on transactions waiting to be sequenced; a full queue refuses new ones.
    pub max_pending_txs: usize,
    /// Bound on future-nonce transactions held per sender until the gap fills.
    pub max_queued_per_sender: usize,
    /// Bound on future-nonce transactions held in total.
    pub max_queued_total: usize,
    /// Threads executing a mini-block, the sequencer's own included (Block-STM style; results
    /// equal sequential execution). 0: one per CPU this process may use, or the sequencer plus
    /// one worker per `cores.exec` entry. 1: sequential.
    pub exec_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Size of the preallocated mini-block log.
    pub minilog_size_bytes: u64,
    /// `always` (default): every mini-block is fdatasync'ed before its receipts go out.
    /// `off`: for benchmarks only; a crash can lose acknowledged transactions.
    pub minilog_sync: SyncMode,
    /// State kept for reads below the head: the last this many EVM blocks (0: only the newest
    /// state). Older history is pruned a few blocks per seal.
    pub history_blocks: u64,
    /// Keep the state of every block (overrides `history_blocks`).
    pub archive: bool,
}

impl StorageSection {
    pub fn set_history_mode(&mut self, mode: rtchain_state::HistoryMode) {
        use rtchain_state::HistoryMode;
        (self.archive, self.history_blocks) = match mode {
            HistoryMode::Archive => (true, self.history_blocks),
            HistoryMode::Off => (false, 0),
            HistoryMode::Window(n) => (false, n),
        };
    }

    pub fn history_mode(&self) -> rtchain_state::HistoryMode {
        use rtchain_state::HistoryMode;
        match (self.archive, self.history_blocks) {
            (true, _) => HistoryMode::Archive,
            (false, 0) => HistoryMode::Off,
            (false, n) => HistoryMode::Window(n),
        }
    }
}

/// Packet I/O backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Dpdk,
    Socket,
    IoUring,
}

/// Verify tiles at most (each owns a thread and two 6 MiB rings).
pub const MAX_VERIFY_TILES: usize = 64;

/// `[fastpath]` in the node config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FastPathSection {
    pub enabled: bool,
    pub backend: BackendKind,
    /// Our address and UDP port for SubmitTx (with `dpdk`, the address our stack answers ARP for).
    pub listen: SocketAddrV4,
    /// UDP port that returns pktgen latency probes (and any datagram) to their sender.
    pub reflector_port: Option<u16>,
    /// `busy-poll` for dedicated cores; `blocking` sleeps when idle (shared hosts, CI).
    pub poll: PollMode,
    /// Verify tiles (sender recovery), ignored when `cores.verify` lists cores. 0: the net tile
    /// verifies itself (one thread hand-over less, for small hosts).
    pub verify_tiles: usize,
    /// Datagrams accepted per second from one source IPv4 address; the excess is dropped.
    pub max_datagrams_per_source_per_sec: u32,
    /// io_uring: kernel-side submission polling (SQPOLL).
    pub sqpoll: bool,
    pub dpdk: rtchain_dataplane::dpdk::DpdkConfig,
}

impl Default for FastPathSection {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: BackendKind::Socket,
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8547),
            reflector_port: None,
            poll: PollMode::Blocking,
            verify_tiles: 1,
            max_datagrams_per_source_per_sec: 200_000,
            sqpoll: false,
            dpdk: Default::default(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("rtchain-data"),
            rpc: RpcSection::default(),
            chain: ChainSection::default(),
            sequencer: SequencerSection::default(),
            storage: StorageSection::default(),
            fastpath: FastPathSection::default(),
            cores: CoreMap::default(),
            consensus: ConsensusSection::default(),
            l1: L1Section::default(),
        }
    }
}

impl Default for RpcSection {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8545".parse().expect("valid address"),
            max_connections: 512,
            max_request_body_bytes: 5 << 20,
            max_batch_len: 100,
            allowed_origins: vec!["local".to_owned()],
            dev_accounts: false,
            allow_unprotected_txs: false,
        }
    }
}

impl Default for ChainSection {
    fn default() -> Self {
        Self {
            genesis: None,
            chain_id: None,
            block_gas_limit: 300_000_000,
            spec: "Prague".into(),
            coinbase: alloy_primitives::Address::ZERO,
        }
    }
}

impl Default for SequencerSection {
    fn default() -> Self {
        Self {
            block_interval_ms: 100,
            idle_block_interval_ms: 1_000,
            max_mini_block_txs: 2_048,
            max_pending_txs: 65_536,
            max_queued_per_sender: 64,
            max_queued_total: 16_384,
            exec_threads: 0,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            minilog_size_bytes: 64 << 20,
            minilog_sync: SyncMode::Always,
            history_blocks: 100_000,
            archive: false,
        }
    }
}

impl NodeConfig {
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        let s = &self.sequencer;
        if s.block_interval_ms == 0 || s.idle_block_interval_ms < s.block_interval_ms {
            return Err(
                "sequencer.block_interval_ms must be > 0 and <= idle_block_interval_ms".into(),
            );
        }
        if s.max_mini_block_txs == 0 || s.max_pending_txs == 0 {
            return Err("sequencer.max_mini_block_txs and max_pending_txs must be > 0".into());
        }
        self.cores.validate().map_err(|e| e.to_string())?;
        let f = &self.fastpath;
        if f.verify_tiles > MAX_VERIFY_TILES {
            return Err(format!(
                "fastpath.verify_tiles must be between 0 (verify on the net tile) and {MAX_VERIFY_TILES}"
            ));
        }
        if f.max_datagrams_per_source_per_sec < 10 {
            return Err("fastpath.max_datagrams_per_source_per_sec must be at least 10".into());
        }
        if self.fastpath.enabled && self.fastpath.backend == BackendKind::Dpdk {
            if self.fastpath.dpdk.port.is_empty() {
                return Err("fastpath.dpdk.port must name the device (e.g. net_af_xdp0 or a PCI address) when fastpath.backend = \"dpdk\"".into());
            }
            if self.cores.net.len() > 1 {
                return Err("cores.net: the node runs one net tile; list one core".into());
            }
        }
        let c = &self.consensus;
        if c.enabled() {
            if c.validators.len() < 4 {
                return Err(format!(
                    "consensus.validators lists {} validators; BFT needs n = 3f+1 >= 4",
                    c.validators.len()
                ));
            }
            if c.key_file.is_none() {
                return Err("consensus.key_file is required when consensus.validators is set (create one with `rtchain keys generate --out FILE`)".into());
            }
            if c.backend == BackendKind::Dpdk {
                return Err("consensus.backend: use socket or io-uring (DPDK serves the fast path only: EAL runs once per process)".into());
            }
            if c.timeout_leader_ms == 0 || c.timeout_notarization_ms == 0 || c.timeout_retry_ms == 0
            {
                return Err("consensus timeouts must be > 0".into());
            }
            if c.propose_idle_ms >= c.timeout_leader_ms {
                return Err("consensus.propose_idle_ms must be below consensus.timeout_leader_ms (or every idle view times out)".into());
            }
        }
        let l = &self.l1;
        if l.enabled() {
            if l.poll_ms == 0 {
                return Err("l1.poll_ms must be > 0".into());
            }
            if l.batcher.max_blobs_per_tx == 0 || l.batcher.max_blobs_per_tx > 9 {
                return Err(
                    "l1.batcher.max_blobs_per_tx must be between 1 and 9 (prague's limit)".into(),
                );
            }
            if l.derive && (self.consensus.enabled() || l.batcher.key_file.is_some()) {
                return Err("l1.derive: a node deriving from L1 has no validators, followers or batcher key".into());
            }
        } else if l.derive || l.batcher.key_file.is_some() || l.settlement_key_file.is_some() {
            return Err(
                "l1.derive, l1.batcher.key_file and l1.settlement_key_file need l1.url".into(),
            );
        }
        if self.storage.minilog_size_bytes < (1 << 20) {
            return Err("storage.minilog_size_bytes must be at least 1 MiB".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node.example.toml");
        let parsed = NodeConfig::from_toml_file(&path).expect("docs/node.example.toml parses");
        let defaults = NodeConfig::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_clear_errors() {
        let err = toml::from_str::<NodeConfig>("[rpc]\nadress = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("adress"), "{err}");
        let mut config = NodeConfig::default();
        config.sequencer.block_interval_ms = 0;
        assert!(config.validate().is_err());
    }
}
