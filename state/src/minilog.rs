//! The mini-block log: what makes a receipt an acknowledgment.
//!
//! Every executed mini-block (its block context and raw transactions) and every EVM block seal is
//! written here and `fdatasync`ed before any receipt or block of it is shown to a client. The
//! file is preallocated and overwritten in place, so a sync flushes data only (about 0.1 ms on
//! the CI VM, against about 4 ms for an appended file whose size changes). One sync covers a
//! whole mini-block: a group commit.
//!
//! After a crash, the node reloads RocksDB (whole sealed blocks), then replays the records
//! after the last committed mini-block; execution is deterministic, so the same receipts and
//! blocks come back. A record whose checksum fails (torn by the crash) ends the replay: it was
//! never synced, so nothing in it was acknowledged.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use alloy_primitives::{Address, B256};
use rtchain_exec::{BlockContext, RecoveredTx};

use crate::codec::Reader;

const FILE_MAGIC: &[u8; 8] = b"RTMLOG01";
const RECORD_MAGIC: u32 = 0x524d_4c47;
/// The first page holds the file header; records start after it.
const HEADER_LEN: u64 = 4096;
/// magic (4) | payload length (4) | crc32 of the payload (4).
const RECORD_HEADER_LEN: usize = 12;
/// Bound on one record, so that a corrupt length can never make recovery allocate gigabytes.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MiniLogError {
    #[error("mini-block log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("mini-block log {path} is not a mini-block log (bad magic)")]
    NotALog { path: PathBuf },
    #[error("record of {0} bytes exceeds the mini-block log's record bound")]
    TooLarge(usize),
    /// The space to reuse still holds records that are not yet durable in RocksDB.
    #[error(
        "mini-block log full: a {record_bytes}-byte record at offset {position} of {size} must wrap, but mini-block {oldest_needed} is not durable yet (durable through {durable})"
    )]
    Full {
        record_bytes: u64,
        position: u64,
        size: u64,
        oldest_needed: u64,
        durable: u64,
    },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    MiniBlock(MiniBlockRecord),
    Seal {
        block_number: u64,
        last_mini_block: u64,
        timestamp_us: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniBlockRecord {
    pub number: u64,
    pub timestamp_us: u64,
    pub block: BlockContext,
    /// Commitment to the execution result, checked on replay (determinism guard).
    pub receipts_root: B256,
    pub transactions: Vec<RecoveredTx>,
}

impl LogRecord {
    /// The mini-block this record covers up to.
    pub fn mini_block(&self) -> u64 {
        match self {
            LogRecord::MiniBlock(m) => m.number,
            LogRecord::Seal {
                last_mini_block, ..
            } => *last_mini_block,
        }
    }

    /// Appends the record's encoding (the log's and the consensus payload's format).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LogRecord::MiniBlock(m) => {
                out.push(1);
                out.extend_from_slice(&m.number.to_be_bytes());
                out.extend_from_slice(&m.timestamp_us.to_be_bytes());
                out.extend_from_slice(&m.block.number.to_be_bytes());
                out.extend_from_slice(&m.block.timestamp.to_be_bytes());
                out.extend_from_slice(&m.block.base_fee.to_be_bytes());
                out.extend_from_slice(&m.block.gas_limit.to_be_bytes());
                out.extend_from_slice(m.block.beneficiary.as_slice());
                out.extend_from_slice(m.block.prevrandao.as_slice());
                out.extend_from_slice(m.receipts_root.as_slice());
                out.extend_from_slice(&crate::codec::encode_transactions(&m.transactions));
            }
            LogRecord::Seal {
                block_number,
                last_mini_block,
                timestamp_us,
            } => {
                out.push(2);
                out.extend_from_slice(&block_number.to_be_bytes());
                out.extend_from_slice(&last_mini_block.to_be_bytes());
                out.extend_from_slice(&timestamp_us.to_be_bytes());
            }
        }
    }

    /// Decodes one record; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes, "mini-block log");
        match r.u8().ok()? {
            1 => {
                let number = r.u64().ok()?;
                let timestamp_us = r.u64().ok()?;
                let block = BlockContext {
                    number: r.u64().ok()?,
                    timestamp: r.u64().ok()?,
                    base_fee: r.u64().ok()?,
                    gas_limit: r.u64().ok()?,
                    beneficiary: Address::from_slice(r.take(20).ok()?),
                    prevrandao: r.b256().ok()?,
                };
                let receipts_root = r.b256().ok()?;
                let rest = r.take(bytes.len() - (1 + 8 * 6 + 20 + 32 + 32)).ok()?;
                let transactions = crate::codec::decode_transactions(rest).ok()?;
                Some(LogRecord::MiniBlock(MiniBlockRecord {
                    number,
                    timestamp_us,
                    block,
                    receipts_root,
                    transactions,
                }))
            }
            2 => {
                let record = LogRecord::Seal {
                    block_number: r.u64().ok()?,
                    last_mini_block: r.u64().ok()?,
                    timestamp_us: r.u64().ok()?,
                };
                r.is_empty().then_some(record)
            }
            _ => None,
        }
    }
}

/// Whether the log calls `fdatasync` after each write. `Off` is for benchmarks only: a crash can
/// then lose acknowledged transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Always,
    Off,
}

pub struct MiniLog {
    file: File,
    path: PathBuf,
    size: u64,
    position: u64,
    sync: SyncMode,
    /// (start, end, mini-block) of every record in the current lap, oldest first: what a wrap
    /// would overwrite.
    records: VecDeque<(u64, u64, u64)>,
    buffer: Vec<u8>,
}

impl MiniLog {
    /// Opens the log at `path`, creating and preallocating it (`size_bytes`) if absent, and
    /// returns it with every valid record found, in write order.
    pub fn open(
        path: &Path,
        size_bytes: u64,
        sync: SyncMode,
    ) -> Result<(Self, Vec<LogRecord>), MiniLogError> {
        let io_err = |source| MiniLogError::Io {
            path: path.to_owned(),
            source,
        };
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        if !exists || file.metadata().map_err(io_err)?.len() < HEADER_LEN {
            preallocate(&file, size_bytes.max(HEADER_LEN * 4)).map_err(io_err)?;
        }
        let size = file.metadata().map_err(io_err)?.len();
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, 0).map_err(io_err)?;
        if &magic != FILE_MAGIC {
            return Err(MiniLogError::NotALog {
                path: path.to_owned(),
            });
        }
        let mut log = Self {
            file,
            path: path.to_owned(),
            size,
            position: HEADER_LEN,
            sync,
            records: VecDeque::new(),
            buffer: Vec::with_capacity(1 << 20),
        };
        let records = log.scan()?;
        Ok((log, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bound on one mini-block's record: a quarter of the log, at most 4 MiB, so that the log
    /// always holds several mini-blocks and a flood of large transactions is split, not refused.
    pub fn max_mini_block_bytes(&self) -> usize {
        (((self.size - HEADER_LEN) / 4) as usize).min(4 << 20)
    }

    /// Reads every intact record. Records carry increasing mini-block numbers within a lap; the
    /// newest lap starts at the header, so the scan stops at the first record that is torn,
    /// blank, or older than its predecessor (left over from the previous lap).
    fn scan(&mut self) -> Result<Vec<LogRecord>, MiniLogError> {
        let io_err = |source| MiniLogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut out = Vec::new();
        let mut position = HEADER_LEN;
        let mut last_mini = 0u64;
        let mut header = [0u8; RECORD_HEADER_LEN];
        while position + RECORD_HEADER_LEN as u64 <= self.size {
            self.file
                .read_exact_at(&mut header, position)
                .map_err(io_err)?;
            let magic = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
            let end = position + (RECORD_HEADER_LEN + len) as u64;
            if magic != RECORD_MAGIC || len > MAX_RECORD_BYTES || end > self.size {
                break;
            }
            let mut payload = vec![0u8; len];
            self.file
                .read_exact_at(&mut payload, position + RECORD_HEADER_LEN as u64)
                .map_err(io_err)?;
            if crc32fast::hash(&payload) != crc {
                break;
            }
            let Some(record) = LogRecord::decode(&payload) else {
                break;
            };
            let mini = record.mini_block();
            if mini < last_mini {
                break;
            }
            last_mini = mini;
            self.records.push_back((position, end, mini));
            out.push(record);
            position = end;
        }
        self.position = position;
        Ok(out)
    }

    /// Whether a record of up to `payload_bytes` can be appended without overwriting a record
    /// newer than `durable_mini_block`.
    pub fn has_room(&self, payload_bytes: usize, durable_mini_block: u64) -> bool {
        let len = (RECORD_HEADER_LEN + payload_bytes) as u64;
        if len > self.size - HEADER_LEN {
            return false;
        }
        if self.position + len <= self.size {
            return true;
        }
        // A wrap overwrites the current lap from its start: all of it must be durable elsewhere.
        self.records
            .iter()
            .all(|&(_, _, mini)| mini <= durable_mini_block)
    }

    /// Bytes a mini-block record with these transactions takes, as [`MiniLog::has_room`] counts.
    pub fn mini_block_record_bytes(raw_lengths: impl IntoIterator<Item = usize>) -> usize {
        // kind, numbers, block context, receipts root, transaction count.
        let fixed = 1 + 8 * 6 + 20 + 32 + 32 + 4;
        fixed + raw_lengths.into_iter().map(|len| 24 + len).sum::<usize>()
    }

    /// Appends a record and (in `SyncMode::Always`) makes it durable before returning.
    /// `durable_mini_block` is the newest mini-block whose EVM block RocksDB holds durably: only
    /// records at or below it may be overwritten when the log wraps.
    /// `reserve_after` bytes must stay free after the record, or the log wraps first: a
    /// mini-block record keeps room for its block's seal, which must never have to overwrite
    /// the block's own records.
    pub fn append(
        &mut self,
        record: &LogRecord,
        durable_mini_block: u64,
        reserve_after: usize,
    ) -> Result<(), MiniLogError> {
        self.buffer.clear();
        self.buffer.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        record.encode(&mut self.buffer);
        let len = self.buffer.len() - RECORD_HEADER_LEN;
        if len > MAX_RECORD_BYTES || (self.buffer.len() as u64) > self.size - HEADER_LEN {
            return Err(MiniLogError::TooLarge(len));
        }
        let crc = crc32fast::hash(&self.buffer[RECORD_HEADER_LEN..]);
        self.buffer[..4].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
        self.buffer[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        self.buffer[8..12].copy_from_slice(&crc.to_be_bytes());

        let mut start = self.position;
        if start + (self.buffer.len() + reserve_after) as u64 > self.size {
            start = HEADER_LEN;
        }
        let end = start + self.buffer.len() as u64;
        // Records this write would overwrite must all be durable elsewhere.
        let wraps = start < self.position;
        if wraps {
            if let Some(&(_, _, needed)) = self
                .records
                .iter()
                .find(|&&(_, _, mini)| mini > durable_mini_block)
            {
                return Err(MiniLogError::Full {
                    record_bytes: self.buffer.len() as u64,
                    position: self.position,
                    size: self.size,
                    oldest_needed: needed,
                    durable: durable_mini_block,
                });
            }
            self.records.clear();
        }
        let io_err = |source| MiniLogError::Io {
            path: self.path.clone(),
            source,
        };
        // Terminate the new lap: a zeroed header after this record stops a later scan from
        // running into the previous lap's records.
        let terminator_fits = end + RECORD_HEADER_LEN as u64 <= self.size;
        if terminator_fits {
            self.buffer.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        }
        self.file
            .write_all_at(&self.buffer, start)
            .map_err(io_err)?;
        if self.sync == SyncMode::Always {
            self.file.sync_data().map_err(io_err)?;
        }
        self.records.push_back((start, end, record.mini_block()));
        self.position = end;
        Ok(())
    }
}

/// Writes the header and zeroes the rest, so that later writes overwrite allocated blocks and a
/// data sync never has to update file metadata.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        let n = zeros.len().min((size - written) as usize);
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
    }
    let mut header = vec![0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(FILE_MAGIC);
    file.write_all_at(&header, 0)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mini(number: u64) -> LogRecord {
        LogRecord::MiniBlock(MiniBlockRecord {
            number,
            timestamp_us: number * 1000,
            block: BlockContext {
                number: number / 4 + 1,
                timestamp: 1,
                beneficiary: Address::ZERO,
                base_fee: 7,
                gas_limit: 30_000_000,
                prevrandao: B256::repeat_byte(9),
            },
            receipts_root: B256::repeat_byte(number as u8),
            transactions: Vec::new(),
        })
    }

    #[test]
    fn records_survive_reopen_and_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minilog");
        let size = HEADER_LEN * 4;
        {
            let (mut log, records) = MiniLog::open(&path, size, SyncMode::Always).unwrap();
            assert!(records.is_empty());
            for n in 1..=10 {
                log.append(&mini(n), 0, 0).unwrap();
            }
        }
        let (mut log, records) = MiniLog::open(&path, size, SyncMode::Always).unwrap();
        assert_eq!(
            records
                .iter()
                .map(LogRecord::mini_block)
                .collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        // Filling the file forces a wrap, refused until the old records are durable elsewhere.
        let mut n = 11;
        loop {
            match log.append(&mini(n), 0, 0) {
                Ok(()) => n += 1,
                Err(MiniLogError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        log.append(&mini(n), n - 1, 0).unwrap();
        log.append(
            &LogRecord::Seal {
                block_number: 9,
                last_mini_block: n,
                timestamp_us: 5,
            },
            n - 1,
            0,
        )
        .unwrap();
        drop(log);
        let (_, records) = MiniLog::open(&path, size, SyncMode::Always).unwrap();
        assert_eq!(
            records
                .iter()
                .map(LogRecord::mini_block)
                .collect::<Vec<_>>(),
            vec![n, n]
        );
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minilog");
        let (mut log, _) = MiniLog::open(&path, 1 << 20, SyncMode::Always).unwrap();
        for n in 1..=3 {
            log.append(&mini(n), 0, 0).unwrap();
        }
        let torn_at = log.records[2].0 + 20;
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xde, 0xad], torn_at).unwrap();
        let (_, records) = MiniLog::open(&path, 1 << 20, SyncMode::Always).unwrap();
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn refuses_a_file_that_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minilog");
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        assert!(matches!(
            MiniLog::open(&path, 1 << 20, SyncMode::Always),
            Err(MiniLogError::NotALog { .. })
        ));
    }
}
