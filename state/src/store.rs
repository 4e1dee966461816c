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

use crate::{codec, error::StoreError};

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

const COLUMN_FAMILIES: [&str; 12] = [
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
];

const META_HEAD: &[u8] = b"head";
const META_CHAIN: &[u8] = b"chain";

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
        })
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
