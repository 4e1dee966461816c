//! RocksDB storage. One column family per kind of record; one atomic write batch per sealed EVM
//! block, so that after any crash the database holds a whole number of blocks.

use std::path::{Path, PathBuf};

use alloy_consensus::Header;
use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_rlp::{Decodable, Encodable};
use revm::{bytecode::Bytecode, state::AccountInfo};
/// Pace of RocksDB's background writes (flush and compaction).
const BACKGROUND_WRITE_BYTES_PER_SEC: i64 = 64 << 20;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions,
};
use rtchain_exec::{RecoveredTx, StateDiff, StateError, StateReader, TxReceipt};

use crate::{
    codec,
    error::StoreError,
    history::{self, ChangeSet, HistoryMode},
};

pub const CF_ACCOUNTS: &str = "accounts";
pub const CF_STORAGE: &str = "storage";
pub const CF_CODE: &str = "code";
pub const CF_TRIE: &str = "trie";
pub const CF_HEADERS: &str = "headers";
pub const CF_BODIES: &str = "bodies";
pub const CF_RECEIPTS: &str = "receipts";
pub const CF_TX_INDEX: &str = "tx_index";
pub const CF_LOG_INDEX: &str = "log_index";
pub const CF_BLOCK_INDEX: &str = "block_index";
pub const CF_META: &str = "meta";
/// Settlement records written with their block: each block's mini-block layout (what a batch
/// posts), output-root fields, and the message passer's storage-trie nodes by hash (so
/// withdrawals can be proven against any output, not only the newest state).
pub const CF_SETTLEMENT: &str = "settlement";
/// History records: the value of an account or slot before each block that changed it (see
/// [`crate::history`]).
pub const CF_HISTORY: &str = "history";
/// Change sets: the history keys each block wrote, for pruning.
pub const CF_CHANGE_SETS: &str = "change_sets";

const COLUMN_FAMILIES: [&str; 14] = [
    CF_ACCOUNTS,
    CF_STORAGE,
    CF_CODE,
    CF_TRIE,
    CF_HEADERS,
    CF_BODIES,
    CF_RECEIPTS,
    CF_TX_INDEX,
    CF_LOG_INDEX,
    CF_BLOCK_INDEX,
    CF_META,
    CF_SETTLEMENT,
    CF_HISTORY,
    CF_CHANGE_SETS,
];

const META_HEAD: &[u8] = b"head";
const META_CHAIN: &[u8] = b"chain";
/// The oldest block whose state can be read; absent while no history is kept.
const META_HISTORY_OLDEST: &[u8] = b"history_oldest";

/// Log index key prefixes: by emitting address and by topic (any position), each followed by
/// the block number, so a range query is one seek and a forward scan.
const LOG_BY_ADDRESS: u8 = b'a';
const LOG_BY_TOPIC: u8 = b't';

/// The newest sealed block, as recorded atomically with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub number: u64,
    pub hash: B256,
    /// Last mini-block sealed into this block (0 for genesis, which has none).
    pub last_mini_block: u64,
}

/// Position of a transaction in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxIndexEntry {
    pub block_number: u64,
    pub index: u32,
    pub mini_block_number: u64,
}

/// Everything a sealed block writes, applied in one batch.
pub struct BlockCommit<'a> {
    pub header: &'a Header,
    pub hash: B256,
    pub transactions: &'a [RecoveredTx],
    pub receipts: &'a [TxReceipt],
    /// Mini-block of each transaction.
    pub mini_blocks: &'a [u64],
    pub last_mini_block: u64,
    pub diff: &'a StateDiff,
    pub trie: &'a TrieWrites,
    /// Settlement entries written in the same batch (see [`CF_SETTLEMENT`]).
    pub settlement: &'a [(Vec<u8>, Vec<u8>)],
}

/// Trie node writes keyed by the full trie key (see [`crate::state_root`]).
#[derive(Debug, Default)]
pub struct TrieWrites {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
    /// Key ranges `[from, to)` to delete (the storage trie of a destroyed account).
    pub delete_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// New storage roots of the accounts whose storage changed.
    pub storage_roots: Vec<(Address, B256)>,
}

pub struct Store {
    db: DB,
    path: PathBuf,
    history: HistoryMode,
}

/// The history a store keeps and its size on disk (see [`Store::history_footprint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryFootprint {
    pub oldest: Option<u64>,
    pub head: u64,
    /// Blocks with a change set (every block above `oldest`).
    pub blocks: u64,
    /// History records: accounts and slots changed, summed over blocks.
    pub records: u64,
    /// Compressed SST bytes of the records and of the change sets.
    pub history_bytes: u64,
    pub change_set_bytes: u64,
}

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub blocks: u64,
    pub records: u64,
    /// The oldest block whose state is still kept.
    pub oldest: u64,
}

impl Store {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        options.set_max_background_jobs(2);
        // Background flushes and compactions write in bursts that queue ahead of the mini-block
        // log's fdatasync on the same disk (measured: submit-to-receipt p99 from 2 ms to 40-600
        // ms on this VM). Paced writes leave the foreground sync a short queue.
        options.set_ratelimiter(BACKGROUND_WRITE_BYTES_PER_SEC, 10_000, 10);
        // Sync the SST files written in small steps, not one large burst at the end.
        options.set_bytes_per_sync(1 << 20);
        let cache = Cache::new_lru_cache(256 << 20);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Point reads dominate (accounts, slots, trie nodes by path): a bloom filter saves a
            // disk read for every miss.
            table.set_bloom_filter(10.0, false);
            cf.set_block_based_table_factory(&table);
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db =
            DB::open_cf_descriptors(&options, path, cfs).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            db,
            path: path.to_owned(),
            history: HistoryMode::Off,
        })
    }

    /// Sets how much history this store keeps, before the first commit. Enabling history on a
    /// chain that kept none makes the head the oldest readable block; turning it off deletes
    /// every history record (a later enabling starts afresh).
    pub fn configure_history(&mut self, mode: HistoryMode) -> Result<(), StoreError> {
        self.history = mode;
        let meta = self.cf(CF_META);
        if mode == HistoryMode::Off {
            if self.db.get_cf(meta, META_HISTORY_OLDEST)?.is_some() {
                let mut batch = WriteBatch::default();
                batch.delete_cf(meta, META_HISTORY_OLDEST);
                for cf in [CF_HISTORY, CF_CHANGE_SETS] {
                    batch.delete_range_cf(self.cf(cf), [0u8].as_slice(), [0xffu8; 64].as_slice());
                }
                self.db.write_opt(batch, &sync_write())?;
            }
            return Ok(());
        }
        if self.db.get_cf(meta, META_HISTORY_OLDEST)?.is_none()
            && let Some(head) = self.head()?
        {
            self.db.put_cf_opt(
                meta,
                META_HISTORY_OLDEST,
                head.number.to_be_bytes(),
                &sync_write(),
            )?;
        }
        Ok(())
    }

    pub fn history_mode(&self) -> HistoryMode {
        self.history
    }

    /// The oldest block whose state can be read (`None`: no history kept, only the head).
    pub fn history_oldest(&self) -> Result<Option<u64>, StoreError> {
        read_oldest(self.db.get_cf(self.cf(CF_META), META_HISTORY_OLDEST)?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family is created at open, so a missing one is a programming error.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Chain identity recorded at genesis (chain id and genesis hash), checked on every start.
    pub fn chain_marker(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), META_CHAIN)?)
    }

    pub fn set_chain_marker(&self, marker: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(CF_META), META_CHAIN, marker, &sync_write())?;
        Ok(())
    }

    pub fn head(&self) -> Result<Option<Head>, StoreError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_META), META_HEAD)? else {
            return Ok(None);
        };
        decode_head(&bytes).map(Some)
    }

    /// Writes a sealed block, its state changes, trie nodes and indexes in one atomic batch.
    /// The WAL is written but not synced: the mini-block log is what makes blocks durable, and
    /// [`Store::sync`] is called before that log reuses space.
    pub fn commit_block(&self, c: &BlockCommit<'_>) -> Result<(), StoreError> {
        let number = c.header.number;
        if c.transactions.len() != c.receipts.len() || c.transactions.len() != c.mini_blocks.len() {
            return Err(StoreError::Invalid(format!(
                "block {number}: {} transactions, {} receipts, {} mini-block numbers",
                c.transactions.len(),
                c.receipts.len(),
                c.mini_blocks.len()
            )));
        }
        let key = number.to_be_bytes();
        let mut batch = WriteBatch::default();

        if self.history != HistoryMode::Off {
            let meta = self.cf(CF_META);
            if self.db.get_cf(meta, META_HISTORY_OLDEST)?.is_none() {
                batch.put_cf(meta, META_HISTORY_OLDEST, number.to_be_bytes());
            }
            if number > 0 {
                let changes = self.record_history(&mut batch, number, c.diff)?;
                batch.put_cf(self.cf(CF_CHANGE_SETS), key, changes.as_bytes());
            }
        }
        for (address, change) in &c.diff.accounts {
            if change.storage_cleared || change.info.is_none() {
                let (from, to) = storage_range(address);
                batch.delete_range_cf(self.cf(CF_STORAGE), from, to);
            }
            match &change.info {
                Some(info) => {
                    batch.put_cf(self.cf(CF_ACCOUNTS), address, codec::encode_account(info))
                }
                None => batch.delete_cf(self.cf(CF_ACCOUNTS), address),
            }
            for (slot, value) in &change.storage {
                let k = storage_key(address, slot);
                if value.is_zero() {
                    batch.delete_cf(self.cf(CF_STORAGE), k);
                } else {
                    batch.put_cf(self.cf(CF_STORAGE), k, value.to_be_bytes::<32>());
                }
            }
        }
        for (hash, code) in &c.diff.codes {
            batch.put_cf(self.cf(CF_CODE), hash, code);
        }
        for (from, to) in &c.trie.delete_ranges {
            batch.delete_range_cf(self.cf(CF_TRIE), from, to);
        }
        for k in &c.trie.deletes {
            batch.delete_cf(self.cf(CF_TRIE), k);
        }
        for (k, v) in &c.trie.puts {
            batch.put_cf(self.cf(CF_TRIE), k, v);
        }

        let mut header_rlp = Vec::with_capacity(600);
        c.header.encode(&mut header_rlp);
        batch.put_cf(self.cf(CF_HEADERS), key, header_rlp);
        batch.put_cf(self.cf(CF_BLOCK_INDEX), c.hash, key);
        batch.put_cf(
            self.cf(CF_BODIES),
            key,
            codec::encode_transactions(c.transactions),
        );
        batch.put_cf(
            self.cf(CF_RECEIPTS),
            key,
            codec::encode_receipts(c.receipts),
        );
        for (index, (tx, mini)) in c.transactions.iter().zip(c.mini_blocks).enumerate() {
            let mut v = [0u8; 20];
            v[..8].copy_from_slice(&key);
            v[8..12].copy_from_slice(&(index as u32).to_be_bytes());
            v[12..].copy_from_slice(&mini.to_be_bytes());
            batch.put_cf(self.cf(CF_TX_INDEX), tx.hash, v);
        }
        for receipt in c.receipts {
            for log in receipt.receipt.logs() {
                batch.put_cf(
                    self.cf(CF_LOG_INDEX),
                    log_key(LOG_BY_ADDRESS, log.address.as_slice(), number),
                    [],
                );
                for topic in log.topics() {
                    batch.put_cf(
                        self.cf(CF_LOG_INDEX),
                        log_key(LOG_BY_TOPIC, topic.as_slice(), number),
                        [],
                    );
                }
            }
        }
        for (k, v) in c.settlement {
            batch.put_cf(self.cf(CF_SETTLEMENT), k, v);
        }
        let head = Head {
            number,
            hash: c.hash,
            last_mini_block: c.last_mini_block,
        };
        batch.put_cf(self.cf(CF_META), META_HEAD, encode_head(&head));

        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Writes into `batch` the history records of block `number`: the value, before it, of each
    /// account and slot that `diff` changes. Reads the flat state, which holds the block before.
    fn record_history(
        &self,
        batch: &mut WriteBatch,
        number: u64,
        diff: &StateDiff,
    ) -> Result<ChangeSet, StoreError> {
        let cf_history = self.cf(CF_HISTORY);
        let mut changes = ChangeSet::default();
        let mut record = |batch: &mut WriteBatch, prefix: &[u8], old: &[u8]| {
            batch.put_cf(cf_history, history::record_key(prefix, number), old);
            changes.push(prefix);
        };
        for (address, change) in &diff.accounts {
            let old = self.db.get_cf(self.cf(CF_ACCOUNTS), address)?;
            let new = change.info.as_ref().map(codec::encode_account);
            if old.as_deref() != new.as_ref().map(|n| n.as_slice()) {
                record(
                    batch,
                    &history::account_prefix(address),
                    old.as_deref().unwrap_or_default(),
                );
            }
            // A destroyed or re-created account loses every slot it had: each one's old value
            // goes on record unless the diff writes the same value back.
            let cleared = change.storage_cleared || change.info.is_none();
            if cleared {
                let (from, to) = storage_range(address);
                let mut options = ReadOptions::default();
                options.set_iterate_upper_bound(to);
                let iter = self.db.iterator_cf_opt(
                    self.cf(CF_STORAGE),
                    options,
                    IteratorMode::From(&from, Direction::Forward),
                );
                for item in iter {
                    let (k, v) = item?;
                    if k.len() != 52 {
                        return Err(StoreError::Corrupt("storage record".into()));
                    }
                    let slot = U256::from_be_slice(&k[20..]);
                    let kept = change.info.is_some()
                        && change.storage.get(&slot) == Some(&U256::from_be_slice(&v));
                    if !kept {
                        record(batch, &history::storage_prefix(address, &slot), &v);
                    }
                }
            }
            for (slot, value) in &change.storage {
                let old = self
                    .db
                    .get_pinned_cf(self.cf(CF_STORAGE), storage_key(address, slot))?;
                let old_value = old.as_deref().map(U256::from_be_slice).unwrap_or_default();
                if cleared && old.is_some() {
                    // Recorded (or found unchanged) with the cleared slots above.
                    continue;
                }
                if old_value != *value {
                    record(
                        batch,
                        &history::storage_prefix(address, slot),
                        old.as_deref().unwrap_or_default(),
                    );
                }
            }
        }
        Ok(changes)
    }

    /// Deletes the history of at most `max_blocks` blocks that fell out of the window, oldest
    /// first, in one batch: a bounded amount of work per call, so that pruning keeps pace with
    /// sealing without bursts (a node that shrinks its window catches up over many calls).
    pub fn prune_history(&self, max_blocks: u64) -> Result<Pruned, StoreError> {
        let Some(oldest) = self.history_oldest()? else {
            return Ok(Pruned::default());
        };
        let Some(head) = self.head()? else {
            return Ok(Pruned::default());
        };
        let Some(target) = self.history.oldest_to_keep(head.number) else {
            return Ok(Pruned {
                oldest,
                ..Pruned::default()
            });
        };
        let until = target.min(oldest.saturating_add(max_blocks));
        let mut pruned = Pruned {
            oldest,
            ..Pruned::default()
        };
        if until <= oldest {
            return Ok(pruned);
        }
        let mut batch = WriteBatch::default();
        let cf_sets = self.cf(CF_CHANGE_SETS);
        for block in oldest + 1..=until {
            let key = block.to_be_bytes();
            if let Some(set) = self.db.get_pinned_cf(cf_sets, key)? {
                for prefix in history::decode_change_set(&set)? {
                    batch.delete_cf(self.cf(CF_HISTORY), history::record_key(prefix, block));
                    pruned.records += 1;
                }
            }
            batch.delete_cf(cf_sets, key);
            pruned.blocks += 1;
        }
        batch.put_cf(self.cf(CF_META), META_HISTORY_OLDEST, until.to_be_bytes());
        self.db.write(batch)?;
        pruned.oldest = until;
        Ok(pruned)
    }

    /// A consistent read view of the state right after block `number`: the newest state if it
    /// is the head, else the flat state rolled back through the history records. A block below
    /// the oldest kept, or any block but the head on a node without history, is an error that
    /// names what is kept.
    pub fn view_at(&self, number: u64) -> Result<HistoricalView<'_>, StoreError> {
        let snapshot = self.db.snapshot();
        let head = match snapshot.get_cf(self.cf(CF_META), META_HEAD)? {
            Some(bytes) => decode_head(&bytes)?,
            None => return Err(StoreError::Invalid("the store holds no block yet".into())),
        };
        if number > head.number {
            return Err(StoreError::Invalid(format!(
                "block {number} is above the newest sealed block {}",
                head.number
            )));
        }
        if number < head.number {
            let oldest = read_oldest(snapshot.get_cf(self.cf(CF_META), META_HISTORY_OLDEST)?)?;
            if oldest.is_none_or(|oldest| number < oldest) {
                return Err(StoreError::HistoryNotKept {
                    block: number,
                    oldest,
                });
            }
        }
        Ok(HistoricalView {
            view: StoreView {
                store: self,
                snapshot,
            },
            number,
            is_head: number == head.number,
        })
    }

    /// What the history kept costs on disk, measured the way it settles: memtables flushed
    /// and the two families compacted (so that pruned records no longer count). For
    /// benchmarks and operators, on a stopped node's data directory: it rewrites those files.
    pub fn history_footprint(&self) -> Result<HistoryFootprint, StoreError> {
        let mut footprint = HistoryFootprint {
            oldest: self.history_oldest()?,
            head: self.head()?.map(|h| h.number).unwrap_or_default(),
            ..HistoryFootprint::default()
        };
        for name in [CF_HISTORY, CF_CHANGE_SETS] {
            let cf = self.cf(name);
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            let bytes = self
                .db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
                .unwrap_or_default();
            if name == CF_HISTORY {
                footprint.history_bytes = bytes;
            } else {
                footprint.change_set_bytes = bytes;
            }
        }
        for item in self
            .db
            .iterator_cf(self.cf(CF_CHANGE_SETS), IteratorMode::Start)
        {
            let (_, set) = item?;
            footprint.blocks += 1;
            footprint.records += history::decode_change_set(&set)?.len() as u64;
        }
        Ok(footprint)
    }

    /// Replication metadata (the consensus anchor, blocks voted for but not yet finalized),
    /// kept in the meta family under `consensus/`. `sync` makes the write durable before
    /// returning; without it the write survives a process crash but not a power loss.
    pub fn put_consensus(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .put_cf_opt(self.cf(CF_META), consensus_key(key), value, &options)?;
        Ok(())
    }

    pub fn get_consensus(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), consensus_key(key))?)
    }

    pub fn delete_consensus(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db.delete_cf(self.cf(CF_META), consensus_key(key))?;
        Ok(())
    }

    /// Every replication entry whose key starts with `prefix`: (key without `consensus/`, value).
    pub fn consensus_entries(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let full = consensus_key(prefix);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_META),
            rocksdb::IteratorMode::From(&full, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&full) {
                break;
            }
            out.push((key[CONSENSUS_PREFIX.len()..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// A settlement entry written with its block (see [`CF_SETTLEMENT`]).
    pub fn settlement(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_SETTLEMENT), key)?)
    }

    /// Makes every committed block durable (syncs RocksDB's WAL).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    pub fn header(&self, number: u64) -> Result<Option<Header>, StoreError> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_HEADERS), number.to_be_bytes())?
        else {
            return Ok(None);
        };
        decode_header(number, &bytes).map(Some)
    }

    pub fn block_number(&self, hash: B256) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf(CF_BLOCK_INDEX), hash)? else {
            return Ok(None);
        };
        codec::Reader::new(&bytes, "block index").u64().map(Some)
    }

    pub fn transactions(&self, number: u64) -> Result<Option<Vec<RecoveredTx>>, StoreError> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_BODIES), number.to_be_bytes())?
        else {
            return Ok(None);
        };
        codec::decode_transactions(&bytes).map(Some)
    }

    pub fn receipts(&self, number: u64) -> Result<Option<Vec<TxReceipt>>, StoreError> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_RECEIPTS), number.to_be_bytes())?
        else {
            return Ok(None);
        };
        codec::decode_receipts(&bytes).map(Some)
    }

    pub fn tx_index(&self, hash: B256) -> Result<Option<TxIndexEntry>, StoreError> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf(CF_TX_INDEX), hash)? else {
            return Ok(None);
        };
        let mut r = codec::Reader::new(&bytes, "tx index");
        Ok(Some(TxIndexEntry {
            block_number: r.u64()?,
            index: r.u32()?,
            mini_block_number: r.u64()?,
        }))
    }

    /// Blocks in `[from, to]` that emitted a log from `address` (`by_topic = false`) or with
    /// `topic` among its topics (`by_topic = true`), ascending, at most `limit` of them.
    pub fn log_blocks(
        &self,
        key: &[u8],
        by_topic: bool,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let prefix = if by_topic {
            LOG_BY_TOPIC
        } else {
            LOG_BY_ADDRESS
        };
        let start = log_key(prefix, key, from);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG_INDEX),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if k.len() != 1 + key.len() + 8 || k[0] != prefix || &k[1..1 + key.len()] != key {
                break;
            }
            let number = u64::from_be_bytes(k[1 + key.len()..].try_into().expect("8 bytes"));
            if number > to {
                break;
            }
            out.push(number);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// A consistent read view of the flat state and trie as of now.
    pub fn view(&self) -> StoreView<'_> {
        StoreView {
            store: self,
            snapshot: self.db.snapshot(),
        }
    }

    /// Reads a trie node by its full key from a view.
    pub(crate) fn trie_node(
        &self,
        snapshot: &SnapshotWithThreadMode<'_, DB>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(snapshot.get_cf(self.cf(CF_TRIE), key)?)
    }
}

/// A snapshot of committed state (through the newest sealed block).
pub struct StoreView<'a> {
    store: &'a Store,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl StoreView<'_> {
    pub fn head(&self) -> Result<Option<Head>, StoreError> {
        let Some(bytes) = self.snapshot.get_cf(self.store.cf(CF_META), META_HEAD)? else {
            return Ok(None);
        };
        decode_head(&bytes).map(Some)
    }

    pub fn header(&self, number: u64) -> Result<Option<Header>, StoreError> {
        let Some(bytes) = self
            .snapshot
            .get_cf(self.store.cf(CF_HEADERS), number.to_be_bytes())?
        else {
            return Ok(None);
        };
        decode_header(number, &bytes).map(Some)
    }

    pub fn trie_node(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.trie_node(&self.snapshot, key)
    }

    fn read_account(&self, address: Address) -> Result<Option<AccountInfo>, StoreError> {
        match self.snapshot.get_cf(self.store.cf(CF_ACCOUNTS), address)? {
            Some(bytes) => codec::decode_account(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every account of the flat state, for verifying the trie from scratch.
    pub fn for_each_account(
        &self,
        mut f: impl FnMut(Address, AccountInfo) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self
            .snapshot
            .iterator_cf(self.store.cf(CF_ACCOUNTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            if k.len() != 20 {
                return Err(StoreError::Corrupt(format!(
                    "account key of {} bytes",
                    k.len()
                )));
            }
            f(Address::from_slice(&k), codec::decode_account(&v)?)?;
        }
        Ok(())
    }

    /// Every non-zero slot of one account.
    pub fn for_each_slot(
        &self,
        address: Address,
        mut f: impl FnMut(U256, U256),
    ) -> Result<(), StoreError> {
        let (from, to) = storage_range(&address);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to);
        let iter = self.snapshot.iterator_cf_opt(
            self.store.cf(CF_STORAGE),
            options,
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if k.len() != 52 || v.len() != 32 {
                return Err(StoreError::Corrupt("storage record".into()));
            }
            f(U256::from_be_slice(&k[20..]), U256::from_be_slice(&v));
        }
        Ok(())
    }
}

impl StateReader for StoreView<'_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        Ok(self.read_account(address)?)
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        let value = self
            .snapshot
            .get_pinned_cf(self.store.cf(CF_STORAGE), storage_key(&address, &slot))
            .map_err(StoreError::from)?;
        Ok(value.map(|v| U256::from_be_slice(&v)).unwrap_or_default())
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        let code = self
            .snapshot
            .get_cf(self.store.cf(CF_CODE), code_hash)
            .map_err(StoreError::from)?;
        Ok(code.map(|c| Bytecode::new_raw(c.into())))
    }

    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        let Some(bytes) = self
            .snapshot
            .get_cf(self.store.cf(CF_HEADERS), number.to_be_bytes())
            .map_err(StoreError::from)?
        else {
            return Ok(B256::ZERO);
        };
        Ok(keccak256(&bytes))
    }
}

/// The state right after one block (see [`Store::view_at`]).
pub struct HistoricalView<'a> {
    view: StoreView<'a>,
    number: u64,
    is_head: bool,
}

impl HistoricalView<'_> {
    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn header(&self) -> Result<Option<Header>, StoreError> {
        self.view.header(self.number)
    }

    /// The value before the first change above this block, if any: `Some(None)` if that record
    /// says "absent", `None` if the key has not changed since (the flat state holds it).
    fn rolled_back(&self, prefix: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        if self.is_head {
            return Ok(None);
        }
        let from = history::record_key(prefix, self.number + 1);
        let mut iter = self.view.snapshot.iterator_cf(
            self.view.store.cf(CF_HISTORY),
            IteratorMode::From(&from, Direction::Forward),
        );
        match iter.next().transpose()? {
            Some((k, v)) if history::is_record_of(&k, prefix) => {
                Ok(Some((!v.is_empty()).then(|| v.to_vec())))
            }
            _ => Ok(None),
        }
    }
}

impl StateReader for HistoricalView<'_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        match self.rolled_back(&history::account_prefix(&address))? {
            Some(Some(bytes)) => Ok(Some(codec::decode_account(&bytes)?)),
            Some(None) => Ok(None),
            None => self.view.account(address),
        }
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        match self.rolled_back(&history::storage_prefix(&address, &slot))? {
            Some(Some(bytes)) if bytes.len() == 32 => Ok(U256::from_be_slice(&bytes)),
            Some(Some(_)) => Err(StoreError::Corrupt("storage history record".into()).into()),
            Some(None) => Ok(U256::ZERO),
            None => self.view.storage(address, slot),
        }
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        // Code is stored by hash and never deleted: every block's code is there.
        self.view.code(code_hash)
    }

    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        self.view.block_hash(number)
    }
}

fn read_oldest(bytes: Option<Vec<u8>>) -> Result<Option<u64>, StoreError> {
    bytes
        .map(|b| codec::Reader::new(&b, "history oldest").u64())
        .transpose()
}

/// number (8) | hash (32) | last mini-block (8).
fn encode_head(head: &Head) -> [u8; 48] {
    let mut out = [0u8; 48];
    out[..8].copy_from_slice(&head.number.to_be_bytes());
    out[8..40].copy_from_slice(head.hash.as_slice());
    out[40..].copy_from_slice(&head.last_mini_block.to_be_bytes());
    out
}

fn decode_head(bytes: &[u8]) -> Result<Head, StoreError> {
    let mut r = codec::Reader::new(bytes, "head");
    Ok(Head {
        number: r.u64()?,
        hash: r.b256()?,
        last_mini_block: r.u64()?,
    })
}

fn decode_header(number: u64, bytes: &[u8]) -> Result<Header, StoreError> {
    Header::decode(&mut &bytes[..])
        .map_err(|e| StoreError::Corrupt(format!("header {number}: {e}")))
}

fn storage_key(address: &Address, slot: &U256) -> [u8; 52] {
    let mut k = [0u8; 52];
    k[..20].copy_from_slice(address.as_slice());
    k[20..].copy_from_slice(&slot.to_be_bytes::<32>());
    k
}

/// `[address, address + 1)`: every slot of one account.
fn storage_range(address: &Address) -> (Vec<u8>, Vec<u8>) {
    let from = address.to_vec();
    let mut to = address.to_vec();
    // The address + 1 as a big-endian number; all-ones addresses get a 21-byte bound.
    let mut i = to.len();
    loop {
        if i == 0 {
            to = address.to_vec();
            to.extend_from_slice(&[0xff; 33]);
            break;
        }
        i -= 1;
        if to[i] == 0xff {
            to[i] = 0;
        } else {
            to[i] += 1;
            break;
        }
    }
    (from, to)
}

fn log_key(prefix: u8, key: &[u8], number: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len() + 8);
    k.push(prefix);
    k.extend_from_slice(key);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

const CONSENSUS_PREFIX: &[u8] = b"consensus/";

fn consensus_key(key: &[u8]) -> Vec<u8> {
    let mut full = CONSENSUS_PREFIX.to_vec();
    full.extend_from_slice(key);
    full
}

fn sync_write() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use alloy_consensus::Header;
    use proptest::prelude::*;

    use super::*;
    use crate::{state_root::apply_diff, test_diffs::diff_of};

    /// Every account and slot of the flat state: what a read at the time sees.
    type Snapshot = BTreeMap<Address, (AccountInfo, BTreeMap<U256, U256>)>;

    fn snapshot(store: &Store) -> Snapshot {
        let view = store.view();
        let mut out = Snapshot::new();
        view.for_each_account(|address, info| {
            out.insert(address, (info, BTreeMap::new()));
            Ok(())
        })
        .unwrap();
        for (address, (_, slots)) in out.iter_mut() {
            view.for_each_slot(*address, |k, v| {
                slots.insert(k, v);
            })
            .unwrap();
        }
        out
    }

    fn commit(store: &Store, number: u64, root: B256, diff: &StateDiff) -> B256 {
        let (new_root, trie) = apply_diff(&store.view(), root, diff).unwrap();
        let header = Header {
            number,
            state_root: new_root,
            ..Default::default()
        };
        store
            .commit_block(&BlockCommit {
                header: &header,
                hash: header.hash_slow(),
                transactions: &[],
                receipts: &[],
                mini_blocks: &[],
                last_mini_block: 0,
                diff,
                trie: &trie,
                settlement: &[],
            })
            .unwrap();
        new_root
    }

    /// Reads every account and slot the test can touch at `view` and compares with `expected`.
    fn assert_reads(view: &HistoricalView<'_>, expected: &Snapshot) -> Result<(), TestCaseError> {
        for byte in 1..=12u8 {
            let address = Address::repeat_byte(byte);
            let want = expected.get(&address);
            let got = view.account(address).unwrap();
            prop_assert_eq!(
                got.map(|a| (a.balance, a.nonce)),
                want.map(|(a, _)| (a.balance, a.nonce)),
                "account {} at block {}",
                byte,
                view.number()
            );
            for slot in 0..16u64 {
                let slot = U256::from(slot);
                let want = want
                    .and_then(|(_, s)| s.get(&slot).copied())
                    .unwrap_or_default();
                prop_assert_eq!(
                    view.storage(address, slot).unwrap(),
                    want,
                    "slot {} of account {} at block {}",
                    slot,
                    byte,
                    view.number()
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Reads at every kept block equal what was read at the time; pruning drops exactly
        /// the blocks below the window, with an error naming the oldest block kept.
        #[test]
        fn history_reads_equal_reads_at_the_time(
            blocks in prop::collection::vec(
                prop::collection::vec((any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1), any::<u64>(),
                    prop::collection::vec((any::<u8>(), any::<u8>()), 0..6)), 0..8),
                2..10),
            window in 0u64..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            store.configure_history(HistoryMode::Window(window)).unwrap();
            let mut root = alloy_trie::EMPTY_ROOT_HASH;
            let mut seen = Vec::new();
            for (number, changes) in blocks.iter().enumerate() {
                root = commit(&store, number as u64, root, &diff_of(changes));
                seen.push(snapshot(&store));
            }
            let head = seen.len() as u64 - 1;
            prop_assert_eq!(store.history_oldest().unwrap(), Some(0));
            for (number, expected) in seen.iter().enumerate() {
                assert_reads(&store.view_at(number as u64).unwrap(), expected)?;
            }
            // One block per call, as the sealer does, until the window is reached.
            let oldest = head.saturating_sub(window);
            while store.prune_history(1).unwrap().blocks > 0 {}
            prop_assert_eq!(store.history_oldest().unwrap(), Some(oldest));
            for (number, expected) in seen.iter().enumerate() {
                let number = number as u64;
                match store.view_at(number) {
                    Ok(view) => {
                        prop_assert!(number >= oldest);
                        assert_reads(&view, expected)?;
                    }
                    Err(StoreError::HistoryNotKept { block, oldest: Some(o) }) => {
                        prop_assert!(number < oldest);
                        prop_assert_eq!((block, o), (number, oldest));
                    }
                    Err(other) => prop_assert!(false, "{}", other),
                }
            }
            // Every pruned block's records are gone, not only unreachable.
            let left = store.db.iterator_cf(store.cf(CF_HISTORY), IteratorMode::Start)
                .filter(|item| {
                    let (k, _) = item.as_ref().unwrap();
                    u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()) <= oldest
                })
                .count();
            prop_assert_eq!(left, 0);
        }
    }

    #[test]
    fn without_history_only_the_head_is_readable_and_enabling_starts_at_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut root = alloy_trie::EMPTY_ROOT_HASH;
        for number in 0..3u64 {
            root = commit(
                &store,
                number,
                root,
                &diff_of(&[(1, false, false, number, vec![])]),
            );
        }
        assert!(store.view_at(2).is_ok());
        let err = store.view_at(1).err().unwrap();
        assert!(matches!(
            err,
            StoreError::HistoryNotKept {
                block: 1,
                oldest: None
            }
        ));
        assert!(
            err.to_string().contains("keeps only the newest state"),
            "{err}"
        );

        store.configure_history(HistoryMode::Archive).unwrap();
        assert_eq!(store.history_oldest().unwrap(), Some(2));
        commit(
            &store,
            3,
            root,
            &diff_of(&[(1, false, false, 99, vec![(3, 1)])]),
        );
        let balance_at_two = store
            .view_at(2)
            .unwrap()
            .account(Address::repeat_byte(2))
            .unwrap()
            .unwrap()
            .balance;
        assert_eq!(balance_at_two, U256::from(2));
        let err = store.view_at(1).err().unwrap();
        assert!(
            err.to_string()
                .contains("oldest block this node keeps is 2"),
            "{err}"
        );
        // Archive never prunes.
        assert_eq!(store.prune_history(10).unwrap().blocks, 0);

        // Turning history off deletes it.
        store.configure_history(HistoryMode::Off).unwrap();
        assert_eq!(store.history_oldest().unwrap(), None);
        assert!(store.view_at(2).is_err());
        assert_eq!(
            store
                .db
                .iterator_cf(store.cf(CF_HISTORY), IteratorMode::Start)
                .count(),
            0
        );
    }
}
