//! State shared between the sequencer thread, the sealer and RPC: the sealed head, the open
//! block's layers, preconfirmed receipts, the pool index, and the event feeds; and opening it
//! from the data directory.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use alloy_consensus::Header;
use alloy_primitives::{Address, B256, U256};
use parking_lot::RwLock;
use rtchain_exec::{
    BlockContext, ChainEvent, ExecConfig, RecoveredTx, SealedBlock, StateError, StateReader,
    TxLocation, TxReceipt,
    revm::primitives::hardfork::SpecId,
    revm::{bytecode::Bytecode, state::AccountInfo},
};
use rtchain_state::{
    Genesis, LayeredState, Layers, LogRecord, MiniLog, Store, StoreError,
    store::{BlockCommit, Head, StoreView},
};
use tokio::sync::{broadcast, watch};

use crate::{
    NodeError,
    config::{NodeConfig, SequencerSection},
    outcome::{Rejection, Submission, Unavailable},
    pool::Pool,
};

/// Recent sealed blocks kept in memory for RPC and subscriptions.
const RECENT_BLOCKS: usize = 256;
/// Subscribers that fall this far behind lose events (and are told so by the broadcast).
const EVENT_CAPACITY: usize = 4_096;

/// What the next EVM block needs from its parent, known as soon as the parent is closed (before
/// its state root and hash are): this is what lets sealing run beside execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentInfo {
    pub number: u64,
    pub timestamp: u64,
    pub gas_used: u64,
    pub gas_limit: u64,
    pub base_fee: u64,
    /// Hash of the parent's last mini-block (carried in every block's `extraData`).
    pub last_mini_hash: B256,
}

impl ParentInfo {
    pub fn of(header: &Header) -> Self {
        Self {
            number: header.number,
            timestamp: header.timestamp,
            gas_used: header.gas_used,
            gas_limit: header.gas_limit,
            base_fee: header
                .base_fee_per_gas
                .unwrap_or(rtchain_state::genesis::INITIAL_BASE_FEE),
            last_mini_hash: last_mini_hash_of(header),
        }
    }
}

/// The last mini-block hash a block header carries in `extraData` (zero for genesis).
pub fn last_mini_hash_of(header: &Header) -> B256 {
    if header.number > 0 && header.extra_data.len() == 32 {
        B256::from_slice(&header.extra_data)
    } else {
        B256::ZERO
    }
}

/// The part that changes with every mini-block and block.
pub struct ChainState {
    /// Newest sealed (committed) block.
    pub head: Head,
    pub head_header: Header,
    /// Newest closed block: sealed, or handed to the sealer and not yet committed.
    pub closed_head: u64,
    /// Parent of the next block to open.
    pub closed_parent: ParentInfo,
    /// Diffs of the mini-blocks of every block not yet committed (closed ones being sealed and
    /// the open one), oldest first, with the block each belongs to.
    pub layers: Arc<Layers>,
    pub layer_blocks: Vec<u64>,
    /// The open EVM block, if any mini-block has started it.
    pub open_block: Option<BlockContext>,
    /// Executed but not yet sealed: transaction, receipt, location.
    pub preconfirmed: HashMap<B256, (RecoveredTx, TxReceipt, TxLocation)>,
    pub last_mini_block: u64,
    pub last_mini_block_hash: B256,
}

impl ChainState {
    /// Layers `diff`, executed in EVM block `block`, over the newest state until that block is
    /// sealed. Readers holding the previous layers keep them: the list is copied, not changed.
    pub fn push_layer(&mut self, diff: Arc<rtchain_exec::StateDiff>, block: u64) {
        let mut diffs = self.layers.diffs.clone();
        diffs.push(diff);
        self.layers = Arc::new(Layers { diffs });
        self.layer_blocks.push(block);
    }
}

pub struct Chain {
    pub exec: ExecConfig,
    pub sequencer: SequencerSection,
    pub store: Store,
    pub client_version: String,
    pub state: RwLock<ChainState>,
    /// Signalled after every seal, for readers waiting on a block being sealed (BLOCKHASH).
    seal_lock: parking_lot::Mutex<()>,
    seal_signal: parking_lot::Condvar,
    pub events: broadcast::Sender<ChainEvent>,
    /// Newest sealed block number, for receipt waiters.
    pub sealed: watch::Sender<u64>,
    pub recent: RwLock<VecDeque<Arc<SealedBlock>>>,
    /// Transactions accepted but not executed yet (in the channel or waiting for a nonce gap).
    pub pool: RwLock<Pool>,
    ingress: crossbeam_channel::Sender<Submission>,
    /// Wakes the sequencer when it sleeps on something else than the ingress queue (a
    /// validator waits on its consensus port).
    ingress_waker: std::sync::OnceLock<rtchain_dataplane::PortWaker>,
    shutdown: AtomicBool,
    /// L1 settlement, when the node settles to (or derives from) an L1.
    pub settlement: Option<Arc<crate::settlement::Settlement>>,
    /// Why the node stopped itself (a storage failure, a divergence), for its exit.
    failure: parking_lot::Mutex<Option<String>>,
    /// How far behind its peers or L1 the node knows itself to be (`eth_syncing`).
    pub catch_up: crate::catch_up::CatchUpStatus,
}

/// What the sequencer starts from.
pub struct Recovered {
    pub ingress: crossbeam_channel::Receiver<Submission>,
    pub minilog: MiniLog,
    /// Log records after the newest committed block, to replay.
    pub replay: Vec<LogRecord>,
}

impl Chain {
    /// Hands a checked transaction to the sequencer. `state_nonce` is the sender's nonce in the
    /// newest state: a transaction beyond the sender's next nonce waits for the gap to fill, and
    /// at most `max_queued_per_sender` of those may wait.
    pub fn submit(&self, submission: Submission, state_nonce: u64) -> Result<(), Rejection> {
        if self.is_shut_down() {
            return Err(Rejection::Unavailable(Unavailable::ShuttingDown));
        }
        let hash = submission.tx.hash;
        {
            let mut pool = self.pool.write();
            if pool.contains(&hash) {
                return Err(Rejection::AlreadyKnown);
            }
            let sender = submission.tx.sender;
            let nonce = alloy_consensus::Transaction::nonce(&submission.tx.envelope);
            let limit = self.sequencer.max_queued_per_sender;
            let mut next = pool.next_nonce(sender, state_nonce);
            if nonce > next && pool.gapped(sender, state_nonce) >= limit {
                // `state_nonce` was read before this lock: a transaction of the sender's that
                // executed since has left the pool, and the pool alone shows a gap that is not
                // there. Read it again under the lock (the sequencer publishes a mini-block's
                // state before it removes its transactions from the pool), then decide.
                let fresh = rtchain_exec::StateReader::account(&self.latest_state(), sender)
                    .ok()
                    .flatten()
                    .map_or(state_nonce, |a| a.nonce.max(state_nonce));
                next = pool.next_nonce(sender, fresh);
                if nonce > next && pool.gapped(sender, fresh) >= limit {
                    return Err(Rejection::NonceGapFull {
                        sender,
                        limit,
                        next_nonce: next,
                    });
                }
            }
            pool.insert(submission.tx.clone());
        }
        match self.ingress.try_send(submission) {
            Ok(()) => {
                if let Some(waker) = self.ingress_waker.get() {
                    waker.wake();
                }
                Ok(())
            }
            Err(e) => {
                self.pool.write().remove(&hash);
                Err(match e {
                    crossbeam_channel::TrySendError::Full(_) => Rejection::PoolFull,
                    crossbeam_channel::TrySendError::Disconnected(_) => {
                        Rejection::Unavailable(Unavailable::SequencerStopped)
                    }
                })
            }
        }
    }

    /// Whether a mini-block log record is already committed here (by its mini-block or EVM
    /// block number): how a block partly committed before a crash is recognised.
    pub fn is_committed(&self, record: &LogRecord) -> bool {
        let s = self.state.read();
        match record {
            LogRecord::MiniBlock(m) => m.number <= s.last_mini_block,
            LogRecord::Seal { block_number, .. } => *block_number <= s.closed_head,
        }
    }

    /// Whether EVM block `number` is closed here (sealed, or handed to the sealer).
    pub fn is_closed(&self, number: u64) -> bool {
        number <= self.state.read().closed_head
    }

    pub fn set_ingress_waker(&self, waker: rtchain_dataplane::PortWaker) {
        let _ = self.ingress_waker.set(waker);
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    pub fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Stops the node because of `why` (the first reason is kept): it serves reads, refuses
    /// transactions, and `rtchain node` exits with the reason.
    pub fn fail(&self, why: String) {
        self.failure.lock().get_or_insert(why);
        self.shutdown();
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// The newest state: the open block's layers over a RocksDB snapshot. Layers first, so
    /// that a concurrent seal can only make the snapshot newer than the layers, which is safe.
    pub fn latest_state(&self) -> LiveState<'_> {
        let layers = self.state.read().layers.clone();
        LiveState {
            layered: LayeredState::new(layers, self.store.view()),
            chain: self,
        }
    }

    /// The newest state with `extra` layers on top: a block being verified on a parent that is
    /// executed but not yet committed.
    pub fn state_with(&self, extra: &[Arc<rtchain_exec::StateDiff>]) -> LiveState<'_> {
        let mut diffs = self.state.read().layers.diffs.clone();
        diffs.extend(extra.iter().cloned());
        LiveState {
            layered: LayeredState::new(Arc::new(Layers { diffs }), self.store.view()),
            chain: self,
        }
    }

    /// Wakes readers waiting for a seal.
    pub fn notify_sealed(&self) {
        let _guard = self.seal_lock.lock();
        self.seal_signal.notify_all();
    }

    /// Waits until block `number` is committed (or the node shuts down).
    pub fn wait_sealed(&self, number: u64) {
        let mut guard = self.seal_lock.lock();
        while self.state.read().head.number < number && !self.is_shut_down() {
            self.seal_signal
                .wait_for(&mut guard, std::time::Duration::from_millis(10));
        }
    }

    /// The hash of block `number`, waiting if it is closed but still being sealed, so that
    /// BLOCKHASH gives the same answer on every run (it is rare: only the newest one or two
    /// blocks can be in flight).
    pub fn block_hash(&self, number: u64) -> Result<B256, StoreError> {
        loop {
            if let Some(block) = self
                .recent
                .read()
                .iter()
                .rev()
                .find(|b| b.header.number == number)
            {
                return Ok(block.hash);
            }
            if let Some(header) = self.store.header(number)? {
                return Ok(header.hash_slow());
            }
            let (closed, head) = {
                let state = self.state.read();
                (state.closed_head, state.head.number)
            };
            if number > closed || number <= head || self.is_shut_down() {
                return Ok(B256::ZERO);
            }
            self.wait_sealed(number);
        }
    }

    /// The context the next transaction would execute under (for calls): the open block's, or
    /// the one the next block would get.
    pub fn pending_block_context(&self) -> BlockContext {
        let state = self.state.read();
        state
            .open_block
            .unwrap_or_else(|| next_block_context(&self.exec, &state.closed_parent, now_us()))
    }

    pub fn push_recent(&self, block: Arc<SealedBlock>) {
        let mut recent = self.recent.write();
        if recent.len() >= RECENT_BLOCKS {
            recent.pop_front();
        }
        recent.push_back(block);
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// The block after `parent`, opened at `now_us`. Everything but the timestamp follows from the
/// parent, so replay rebuilds the same context from the logged timestamp. `prevrandao` comes from
/// the parent's last mini-block hash (known when the parent closes) rather than its block hash
/// (known only once its state root is), so the next block can start while the parent seals.
pub fn next_block_context(exec: &ExecConfig, parent: &ParentInfo, now_us: u64) -> BlockContext {
    let number = parent.number + 1;
    let mut seed = [0u8; 40];
    seed[..32].copy_from_slice(parent.last_mini_hash.as_slice());
    seed[32..].copy_from_slice(&number.to_be_bytes());
    BlockContext {
        number,
        timestamp: (now_us / 1_000_000).max(parent.timestamp),
        beneficiary: exec.coinbase,
        base_fee: exec.next_base_fee(parent.gas_used, parent.gas_limit, parent.base_fee),
        gas_limit: exec.block_gas_limit,
        prevrandao: alloy_primitives::keccak256(seed),
    }
}

/// The newest state for execution and RPC: layers over a RocksDB snapshot, with BLOCKHASH
/// answered by the chain (waiting for a block that is being sealed).
pub struct LiveState<'a> {
    layered: LayeredState<StoreView<'a>>,
    chain: &'a Chain,
}

impl StateReader for LiveState<'_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        self.layered.account(address)
    }
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        self.layered.storage(address, slot)
    }
    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        self.layered.code(code_hash)
    }
    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        Ok(self.chain.block_hash(number)?)
    }
}

/// The chain's genesis: the configured file or the dev genesis, with the L2 predeploys (the
/// L1-origin record and the message passer) and the preinstalls (the CREATE2 deployer, the
/// EIP-4788 and EIP-2935 system contracts) added
/// where the allocation leaves them free.
pub fn genesis(config: &NodeConfig) -> Result<Genesis, NodeError> {
    let mut genesis = match &config.chain.genesis {
        Some(path) => {
            let genesis = Genesis::from_file(path)?;
            crate::config::check_chain_id(config.chain.chain_id, genesis.chain_id, path)
                .map_err(NodeError::Config)?;
            genesis
        }
        None => Genesis::dev(
            config.chain.chain_id.unwrap_or(crate::config::DEV_CHAIN_ID),
            config.chain.block_gas_limit,
        ),
    };
    let predeploys = rtchain_l1::contracts::predeploys()
        .into_iter()
        .map(|(address, code)| {
            let account = rtchain_state::genesis::GenesisAccount {
                code: Some(code),
                ..Default::default()
            };
            (address, account)
        });
    for (address, account) in predeploys.chain(rtchain_state::genesis::preinstalls()) {
        if !genesis.alloc.iter().any(|(a, _)| *a == address) {
            genesis.alloc.push((address, account));
        }
    }
    Ok(genesis)
}

/// Opens the data directory: storage (initialising genesis on first start), the mini-block log,
/// and the records to replay.
pub fn open(
    config: &NodeConfig,
    settlement: Option<Arc<crate::settlement::Settlement>>,
) -> Result<(Chain, Recovered), NodeError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let genesis = genesis(config)?;
    let spec: SpecId = config.chain.spec.parse().map_err(|_| {
        NodeError::Config(format!(
            "chain.spec: unknown EVM spec {:?}",
            config.chain.spec
        ))
    })?;
    let exec = ExecConfig {
        chain_id: genesis.chain_id,
        spec,
        block_gas_limit: genesis.gas_limit,
        coinbase: config.chain.coinbase,
        allow_unprotected_txs: config.rpc.allow_unprotected_txs,
        beacon_root_source: Some(rtchain_exec::system::StorageLocation {
            address: rtchain_l1::contracts::L1_BLOCK_ADDRESS,
            slot: rtchain_l1::deposit::l1_block_slots::PARENT_BEACON_ROOT,
        }),
        ..ExecConfig::dev(genesis.chain_id)
    };
    let mut store = Store::open(&dir.join("db"))?;
    store.configure_history(config.storage.history_mode())?;
    let head = init_genesis(&store, &genesis)?;
    let head_header = store
        .header(head.number)?
        .ok_or_else(|| NodeError::Recovery(format!("head block {} has no header", head.number)))?;
    let (minilog, records) = MiniLog::open(
        &dir.join("minilog"),
        config.storage.minilog_size_bytes,
        config.storage.minilog_sync,
    )?;
    let replay = records_to_replay(records, &head);

    let (ingress, rx) = crossbeam_channel::bounded(config.sequencer.max_pending_txs);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (sealed, _) = watch::channel(head.number);
    let state = ChainState {
        head,
        closed_head: head.number,
        closed_parent: ParentInfo::of(&head_header),
        last_mini_block_hash: last_mini_hash_of(&head_header),
        head_header,
        layers: Arc::new(Layers::default()),
        layer_blocks: Vec::new(),
        open_block: None,
        preconfirmed: HashMap::new(),
        last_mini_block: head.last_mini_block,
    };
    let chain = Chain {
        exec,
        sequencer: config.sequencer.clone(),
        store,
        client_version: format!("rtchain/v{}/linux-x86_64", env!("CARGO_PKG_VERSION")),
        state: RwLock::new(state),
        seal_lock: parking_lot::Mutex::new(()),
        seal_signal: parking_lot::Condvar::new(),
        events,
        sealed,
        recent: RwLock::new(VecDeque::with_capacity(RECENT_BLOCKS)),
        pool: RwLock::new(Pool::default()),
        ingress,
        ingress_waker: std::sync::OnceLock::new(),
        shutdown: AtomicBool::new(false),
        settlement,
        failure: parking_lot::Mutex::new(None),
        catch_up: Default::default(),
    };
    Ok((
        chain,
        Recovered {
            ingress: rx,
            minilog,
            replay,
        },
    ))
}

/// The records after the committed head, as one consecutive run: mini-blocks numbered from
/// the head's last mini-block on, and seals of blocks after the head (an empty block's seal
/// covers no new mini-block, so seals are matched by block number). Anything after a gap cannot
/// be applied, and nothing after a gap was acknowledged.
fn records_to_replay(records: Vec<LogRecord>, head: &Head) -> Vec<LogRecord> {
    let mut next_mini = head.last_mini_block + 1;
    let mut next_block = head.number + 1;
    let mut out = Vec::new();
    for record in records {
        match &record {
            LogRecord::MiniBlock(m) if m.number < next_mini => continue,
            LogRecord::MiniBlock(m) if m.number == next_mini && m.block.number == next_block => {
                next_mini += 1
            }
            LogRecord::Seal { block_number, .. } if *block_number < next_block => continue,
            LogRecord::Seal {
                block_number,
                last_mini_block,
                ..
            } if *block_number == next_block && *last_mini_block + 1 == next_mini => {
                next_block += 1
            }
            _ => break,
        }
        out.push(record);
    }
    out
}

/// Writes the genesis block on first start; on later starts checks that the data directory
/// belongs to this chain.
fn init_genesis(store: &Store, genesis: &Genesis) -> Result<Head, NodeError> {
    if let Some(head) = store.head()? {
        let marker = store.chain_marker()?.unwrap_or_default();
        let genesis_hash = store
            .header(0)?
            .map(|h| h.hash_slow())
            .ok_or_else(|| NodeError::Recovery("genesis header missing".into()))?;
        let expected_genesis = genesis.header(genesis.state_root()).hash_slow();
        if marker != chain_marker(genesis.chain_id, expected_genesis)
            || expected_genesis != genesis_hash
        {
            return Err(NodeError::Config(format!(
                "data directory {} holds another chain (its genesis is {genesis_hash}, the configured chain's is {expected_genesis}); use another --data-dir",
                store.path().display()
            )));
        }
        return Ok(head);
    }
    let diff = genesis.state_diff();
    let view = store.view();
    let (root, trie) =
        rtchain_state::state_root::apply_diff(&view, alloy_trie::EMPTY_ROOT_HASH, &diff)?;
    drop(view);
    let header = genesis.header(root);
    let hash = header.hash_slow();
    store.commit_block(&BlockCommit {
        header: &header,
        hash,
        transactions: &[],
        receipts: &[],
        mini_blocks: &[],
        last_mini_block: 0,
        diff: &diff,
        trie: &trie,
        settlement: &[],
    })?;
    store.sync()?;
    store.set_chain_marker(&chain_marker(genesis.chain_id, hash))?;
    Ok(Head {
        number: 0,
        hash,
        last_mini_block: 0,
    })
}

fn chain_marker(chain_id: u64, genesis_hash: B256) -> Vec<u8> {
    let mut marker = chain_id.to_be_bytes().to_vec();
    marker.extend_from_slice(genesis_hash.as_slice());
    marker
}
