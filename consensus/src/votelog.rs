//! The vote log: our votes (and the certificates that moved us forward) made durable before any
//! of them is sent, so that a restarted node never signs a vote conflicting with one it sent
//! before the crash.
//!
//! # Format
//!
//! A preallocated file of `1 + slots` slots of [`SLOT_BYTES`] bytes. Slot 0 is the header
//! (magic, version, slot size, slot count, the validator's public key, CRC). The data slots
//! form a ring: the record with sequence number `seq` lives in slot `seq % slots`, overwriting
//! in place the record `slots` sequence numbers older. Each data slot:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | CRC-32 (IEEE) of bytes 4..256 |
//! | 4..12 | seq (u64 LE, from 1) |
//! | 12..20 | hwm: highest view of any vote written up to and including this record |
//! | 20..22 | part index within the record |
//! | 22..24 | parts in the record (a certificate of many signatures spans several slots) |
//! | 24..26 | data bytes in this slot |
//! | 26..256 | data (an encoded [`Record`]), zero padded |
//!
//! 256-byte slots never straddle a 512-byte or 4 KiB sector.
//!
//! # Sync rule
//!
//! [`VoteLog::append`] only writes; [`VoteLog::sync`] makes every append so far durable with one
//! `fdatasync` (a group commit per engine step). The driver must sync before performing the
//! sends of the step. Writing in place into a preallocated file means `fdatasync` has no
//! metadata to flush: about 0.1 ms, against milliseconds for a growing file.
//!
//! # Replay
//!
//! Every slot is read; a slot whose CRC fails (a torn write: the crash hit mid-write) or that
//! belongs to an incomplete record is ignored. That is safe because only synced records can have
//! been sent, and a torn write was by definition not synced. Records older than the ring
//! (`seq <= max_seq - slots`) are gone; the `hwm` of the oldest surviving slot bounds the views
//! they covered, and the engine never signs at or below that floor again.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::engine::Replay;
use crate::types::{Record, View, Vote};

pub const SLOT_BYTES: usize = 256;
const SLOT_HEADER_BYTES: usize = 26;
const SLOT_DATA_BYTES: usize = SLOT_BYTES - SLOT_HEADER_BYTES;
const MAGIC: &[u8; 8] = b"RTCVLOG1";
const VERSION: u32 = 1;
/// A record may use at most this share of the ring (1/4), so the ring always holds several.
const RECORD_SHARE_OF_RING: u64 = 4;

/// Whether appends are made durable before sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` once per batch: a crash never loses a vote that was sent. The default.
    #[default]
    Always,
    /// Never sync. Benchmarks only: a crash can lose votes that were sent, and the restarted
    /// node can then sign conflicting votes (equivocate) and break safety.
    Off,
}

/// Vote-log configuration.
#[derive(Clone, Copy, Debug)]
pub struct VoteLogConfig {
    /// Data slots in the ring. The default (16,384 slots, 4 MiB) holds a few thousand views.
    pub slots: u64,
    pub sync: SyncMode,
}

impl Default for VoteLogConfig {
    fn default() -> Self {
        Self {
            slots: 16_384,
            sync: SyncMode::Always,
        }
    }
}

impl VoteLogConfig {
    /// The size of the preallocated file.
    pub fn size_bytes(&self) -> u64 {
        (self.slots + 1) * SLOT_BYTES as u64
    }
}

/// Vote-log errors, with what an operator needs to act.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("vote log I/O on {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "vote log {path} is {actual} bytes, the configuration needs {expected}; it was created with another slot count: restore the configuration or move the file aside (only when the validator has never voted with it)"
    )]
    Size {
        path: String,
        actual: u64,
        expected: u64,
    },
    #[error("vote log {1} has a bad header ({0}); it is not an rtchain vote log, or it is corrupt")]
    Header(&'static str, String),
    #[error(
        "vote log {0} belongs to another validator key; each key needs its own log and each log its own key"
    )]
    WrongKey(String),
    #[error("record of {0} bytes is too large for the vote log ring")]
    RecordTooLarge(usize),
    #[error("at least 8 slots are needed, got {0}")]
    TooFewSlots(u64),
}

/// Where the log lives: a preallocated file in production, memory in tests and the simulator.
pub trait Storage {
    fn describe(&self) -> String;
    fn len_bytes(&self) -> io::Result<u64>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every write so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// A preallocated file.
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    /// Opens the log file, creating it filled with zeros (so its blocks are allocated once and
    /// later syncs flush only data) if it does not exist.
    pub fn open(path: &Path, size_bytes: u64) -> io::Result<Self> {
        use std::io::Write;
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !exists || file.metadata()?.len() == 0 {
            let chunk = vec![0u8; 1 << 20];
            let mut left = size_bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                // The new directory entry must be durable too.
                File::open(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?
                .sync_all()?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Storage for FileStorage {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// In-memory storage with a crash model: writes since the last sync sit in a volatile list; a
/// crash keeps an arbitrary subset of them (disks reorder unsynced writes) and may tear one.
#[derive(Clone, Debug)]
pub struct MemStorage {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    pub syncs: u64,
}

impl MemStorage {
    pub fn new(size_bytes: u64) -> Self {
        Self {
            durable: vec![0; size_bytes as usize],
            pending: Vec::new(),
            syncs: 0,
        }
    }

    /// Simulates power loss. Bit `i` of `bits` decides whether unsynced write `i` (for the
    /// first 48) survives; if bit 63 is set, the first write that does not survive is torn:
    /// a prefix of `(bits >> 48) & 0x7fff` bytes (modulo its length) reaches the disk.
    pub fn crash(&mut self, bits: u64) {
        let mut torn_done = bits >> 63 == 0;
        for (i, (off, data)) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let off = off as usize;
            if i < 48 && bits >> i & 1 == 1 {
                self.durable[off..off + data.len()].copy_from_slice(&data);
            } else if !torn_done {
                torn_done = true;
                let n = ((bits >> 48) & 0x7fff) as usize % data.len().max(1);
                self.durable[off..off + n].copy_from_slice(&data[..n]);
            }
        }
    }

    /// Unsynced writes outstanding.
    pub fn unsynced(&self) -> usize {
        self.pending.len()
    }
}

impl Storage for MemStorage {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.durable.len() as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = offset as usize;
        let end = off
            .checked_add(buf.len())
            .filter(|e| *e <= self.durable.len());
        let Some(end) = end else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        buf.copy_from_slice(&self.durable[off..end]);
        // Reads see the page cache: unsynced writes on top, in order.
        for (w_off, data) in &self.pending {
            let (w_off, w_end) = (*w_off as usize, *w_off as usize + data.len());
            let (lo, hi) = (off.max(w_off), end.min(w_end));
            if lo < hi {
                buf[lo - off..hi - off].copy_from_slice(&data[lo - w_off..hi - w_off]);
            }
        }
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset as usize + data.len() > self.durable.len() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        self.pending.push((offset, data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        for (off, data) in std::mem::take(&mut self.pending) {
            let off = off as usize;
            self.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}

/// What replay found besides the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Non-empty slots whose CRC failed: torn writes (never synced, never sent).
    pub torn_slots: u64,
    /// Records missing a part (lost unsynced, or partly overwritten by the ring).
    pub incomplete_records: u64,
    /// Records whose bytes passed the CRC but did not decode (should be 0).
    pub undecodable_records: u64,
    pub records: u64,
}

/// The vote log over some [`Storage`].
pub struct VoteLog<S: Storage> {
    storage: S,
    slots: u64,
    next_seq: u64,
    hwm: View,
    dirty: bool,
    sync: SyncMode,
    slot: Vec<u8>,
    report: ReplayReport,
}

struct Slot {
    seq: u64,
    hwm: View,
    part: u16,
    parts: u16,
    data: Vec<u8>,
}

fn parse_slot(b: &[u8]) -> Result<Option<Slot>, ()> {
    if b.iter().all(|x| *x == 0) {
        return Ok(None);
    }
    let crc = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if crc32fast::hash(&b[4..]) != crc {
        return Err(());
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let seq = u64_at(4);
    let hwm = u64_at(12);
    let part = u16::from_le_bytes([b[20], b[21]]);
    let parts = u16::from_le_bytes([b[22], b[23]]);
    let len = u16::from_le_bytes([b[24], b[25]]) as usize;
    if seq == 0 || parts == 0 || part >= parts || len > SLOT_DATA_BYTES {
        return Err(());
    }
    Ok(Some(Slot {
        seq,
        hwm,
        part,
        parts,
        data: b[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len].to_vec(),
    }))
}

impl<S: Storage> VoteLog<S> {
    /// Opens (or initialises) the log and replays it. `key` is the validator's public key: a
    /// log is bound to one key, since sharing one between two keys (or two logs for one key)
    /// defeats its purpose.
    pub fn open(
        mut storage: S,
        config: VoteLogConfig,
        key: &[u8; 32],
    ) -> Result<(Self, Replay), LogError> {
        let path = storage.describe();
        let io_err = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        if config.slots < 8 {
            return Err(LogError::TooFewSlots(config.slots));
        }
        let expected = config.size_bytes();
        let actual = storage.len_bytes().map_err(io_err)?;
        if actual != expected {
            return Err(LogError::Size {
                path,
                actual,
                expected,
            });
        }
        if config.sync == SyncMode::Off {
            tracing::warn!(
                log = %path,
                "VOTE LOG SYNC IS OFF: votes are sent before they are durable. A crash can make this \
                 validator sign conflicting votes and break consensus safety. Use only for benchmarks."
            );
        }
        // Header.
        let mut header = vec![0u8; SLOT_BYTES];
        storage.read_at(0, &mut header).map_err(io_err)?;
        let want = Self::header(config.slots, key);
        if header.iter().all(|b| *b == 0) {
            storage.write_at(0, &want).map_err(io_err)?;
            storage.sync().map_err(io_err)?;
        } else if header[..8] != MAGIC[..] {
            return Err(LogError::Header("magic", path));
        } else if crc32fast::hash(&header[4 + 8..])
            != u32::from_le_bytes([header[8], header[9], header[10], header[11]])
        {
            return Err(LogError::Header("checksum", path));
        } else if header[12..28] != want[12..28] {
            return Err(LogError::Header("version, slot size or slot count", path));
        } else if header[28..60] != want[28..60] {
            return Err(LogError::WrongKey(path));
        }
        // Data slots.
        let mut data = vec![0u8; (config.slots as usize) * SLOT_BYTES];
        storage
            .read_at(SLOT_BYTES as u64, &mut data)
            .map_err(io_err)?;
        let mut report = ReplayReport::default();
        let mut slots: Vec<Slot> = Vec::new();
        for chunk in data.chunks_exact(SLOT_BYTES) {
            match parse_slot(chunk) {
                Ok(Some(s)) => slots.push(s),
                Ok(None) => {}
                Err(()) => report.torn_slots += 1,
            }
        }
        let max_seq = slots.iter().map(|s| s.seq).max().unwrap_or(0);
        // Only the last `slots` sequence numbers can still be in the ring; anything older is a
        // stale slot whose newer write was lost before a sync.
        let lo = max_seq.saturating_sub(config.slots - 1).max(1);
        slots.retain(|s| s.seq >= lo);
        slots.sort_by_key(|s| s.seq);
        // Nothing was overwritten until the ring wrapped; after that, every record older than
        // the oldest survivor had views at most that survivor's hwm.
        let floor_view = match slots.first() {
            Some(first) if max_seq > config.slots => first.hwm,
            _ => 0,
        };
        let mut records = Vec::new();
        let mut hwm = 0;
        let mut i = 0;
        while i < slots.len() {
            let s = &slots[i];
            hwm = hwm.max(s.hwm);
            let parts = s.parts as usize;
            let complete = s.part == 0
                && i + parts <= slots.len()
                && (0..parts).all(|k| {
                    let t = &slots[i + k];
                    t.seq == s.seq + k as u64 && t.part as usize == k && t.parts == s.parts
                });
            if !complete {
                report.incomplete_records += 1;
                // Skip to the next slot that starts a record.
                i += 1;
                while i < slots.len() && slots[i].part != 0 {
                    hwm = hwm.max(slots[i].hwm);
                    i += 1;
                }
                continue;
            }
            let bytes: Vec<u8> = slots[i..i + parts]
                .iter()
                .flat_map(|t| t.data.iter().copied())
                .collect();
            for t in &slots[i..i + parts] {
                hwm = hwm.max(t.hwm);
            }
            match Record::decode(&bytes) {
                Ok(r) => records.push(r),
                Err(_) => report.undecodable_records += 1,
            }
            i += parts;
        }
        report.records = records.len() as u64;
        let log = Self {
            storage,
            slots: config.slots,
            next_seq: max_seq + 1,
            hwm,
            dirty: false,
            sync: config.sync,
            slot: vec![0; SLOT_BYTES],
            report,
        };
        Ok((
            log,
            Replay {
                records,
                floor_view,
            },
        ))
    }

    fn header(slots: u64, key: &[u8; 32]) -> Vec<u8> {
        let mut h = vec![0u8; SLOT_BYTES];
        h[..8].copy_from_slice(MAGIC);
        h[12..16].copy_from_slice(&VERSION.to_le_bytes());
        h[16..20].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
        h[20..28].copy_from_slice(&slots.to_le_bytes());
        h[28..60].copy_from_slice(key);
        let crc = crc32fast::hash(&h[12..]);
        h[8..12].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Writes a record into the ring (not yet durable: see [`VoteLog::sync`]).
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        let bytes = record.encode();
        let parts = bytes.len().div_ceil(SLOT_DATA_BYTES).max(1);
        if parts as u64 > self.slots / RECORD_SHARE_OF_RING {
            return Err(LogError::RecordTooLarge(bytes.len()));
        }
        if let Record::Vote(v) = record {
            self.hwm = self.hwm.max(Vote::view(v));
        }
        for (k, chunk) in bytes.chunks(SLOT_DATA_BYTES).enumerate() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let s = &mut self.slot;
            s.fill(0);
            s[4..12].copy_from_slice(&seq.to_le_bytes());
            s[12..20].copy_from_slice(&self.hwm.to_le_bytes());
            s[20..22].copy_from_slice(&(k as u16).to_le_bytes());
            s[22..24].copy_from_slice(&(parts as u16).to_le_bytes());
            s[24..26].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            s[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + chunk.len()].copy_from_slice(chunk);
            let crc = crc32fast::hash(&s[4..]);
            s[..4].copy_from_slice(&crc.to_le_bytes());
            let offset = (1 + seq % self.slots) * SLOT_BYTES as u64;
            let path = self.storage.describe();
            self.storage
                .write_at(offset, &self.slot)
                .map_err(|source| LogError::Io { path, source })?;
        }
        self.dirty = true;
        Ok(())
    }

    /// Makes every append so far durable: one `fdatasync` per batch (nothing to do if nothing
    /// was appended, or in [`SyncMode::Off`]).
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.dirty && self.sync == SyncMode::Always {
            let path = self.storage.describe();
            self.storage
                .sync()
                .map_err(|source| LogError::Io { path, source })?;
        }
        self.dirty = false;
        Ok(())
    }

    pub fn report(&self) -> &ReplayReport {
        &self.report
    }
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }
    /// Gives the storage back (the simulator crashes it and opens the log again).
    pub fn into_storage(self) -> S {
        self.storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Certificate, Proposal, Signature};
    use alloy_primitives::B256;

    const KEY: [u8; 32] = [7; 32];

    fn cfg(slots: u64) -> VoteLogConfig {
        VoteLogConfig {
            slots,
            sync: SyncMode::Always,
        }
    }
    fn notarize(view: View) -> Record {
        Record::Vote(Vote::Notarize(Proposal {
            view,
            parent_view: view - 1,
            height: view,
            digest: B256::repeat_byte(view as u8),
        }))
    }
    fn big_cert(view: View, signers: u16) -> Record {
        Record::Certificate(Certificate {
            vote: Vote::Nullify(view),
            signatures: (0..signers)
                .map(|i| (i, Signature([i as u8; 64])))
                .collect(),
        })
    }

    #[test]
    fn round_trip_and_reopen() {
        let c = cfg(64);
        let (mut log, replay) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        assert!(replay.records.is_empty());
        let recs: Vec<Record> = vec![
            notarize(1),
            Record::Vote(Vote::Nullify(1)),
            big_cert(1, 9),
            notarize(2),
        ];
        for r in &recs {
            log.append(r).unwrap();
        }
        log.sync().unwrap();
        let (_, replay) = VoteLog::open(log.into_storage(), c, &KEY).unwrap();
        assert_eq!(replay.records, recs);
        assert_eq!(replay.floor_view, 0);
    }

    #[test]
    fn torn_tail_is_ignored_and_synced_records_survive() {
        let c = cfg(64);
        let (mut log, _) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        log.append(&notarize(1)).unwrap();
        log.append(&notarize(2)).unwrap();
        log.sync().unwrap();
        log.append(&notarize(3)).unwrap();
        let mut storage = log.into_storage();
        // Power loss: the unsynced write is torn after 40 bytes (mid-record: the record's
        // bytes end near byte 100 of the slot, zero padding after).
        storage.crash(1 << 63 | 40 << 48);
        let (mut log, replay) = VoteLog::open(storage, c, &KEY).unwrap();
        assert_eq!(replay.records, vec![notarize(1), notarize(2)]);
        assert_eq!(log.report().torn_slots, 1);
        // The next record overwrites the torn slot and replays cleanly.
        log.append(&notarize(4)).unwrap();
        log.sync().unwrap();
        let (log, replay) = VoteLog::open(log.into_storage(), c, &KEY).unwrap();
        assert_eq!(replay.records, vec![notarize(1), notarize(2), notarize(4)]);
        assert_eq!(log.report().torn_slots, 0);
    }

    #[test]
    fn torn_multi_slot_record_is_dropped_whole() {
        let c = cfg(64);
        let (mut log, _) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        log.append(&notarize(1)).unwrap();
        log.sync().unwrap();
        log.append(&big_cert(1, 9)).unwrap(); // 3 slots
        let mut storage = log.into_storage();
        // First part survives, second is torn, third lost.
        storage.crash(1 | 1 << 63 | 17 << 48);
        let (log, replay) = VoteLog::open(storage, c, &KEY).unwrap();
        assert_eq!(replay.records, vec![notarize(1)]);
        assert_eq!(log.report().incomplete_records, 1);
        assert_eq!(log.report().torn_slots, 1);
    }

    #[test]
    fn unsynced_writes_may_survive_out_of_order() {
        let c = cfg(64);
        let (mut log, _) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        for v in 1..=4 {
            log.append(&notarize(v)).unwrap();
        }
        let mut storage = log.into_storage();
        storage.crash(0b1010); // writes 2 and 4 survive
        let (_, replay) = VoteLog::open(storage, c, &KEY).unwrap();
        assert_eq!(replay.records, vec![notarize(2), notarize(4)]);
    }

    #[test]
    fn ring_wraps_and_reports_floor() {
        let c = cfg(8);
        let (mut log, _) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        for v in 1..=20 {
            log.append(&notarize(v)).unwrap();
            log.sync().unwrap();
        }
        let (_, replay) = VoteLog::open(log.into_storage(), c, &KEY).unwrap();
        // Sequence numbers 13..=20 remain; the oldest's hwm (view 13) is the floor.
        assert_eq!(replay.records, (13..=20).map(notarize).collect::<Vec<_>>());
        assert_eq!(replay.floor_view, 13);
    }

    #[test]
    fn refuses_foreign_or_resized_logs() {
        let c = cfg(16);
        let (log, _) = VoteLog::open(MemStorage::new(c.size_bytes()), c, &KEY).unwrap();
        let storage = log.into_storage();
        assert!(matches!(
            VoteLog::open(storage.clone(), c, &[8; 32]),
            Err(LogError::WrongKey(_))
        ));
        assert!(matches!(
            VoteLog::open(storage, cfg(32), &KEY),
            Err(LogError::Size { .. })
        ));
        let mut garbage = MemStorage::new(c.size_bytes());
        garbage.write_at(0, b"not a log").unwrap();
        assert!(matches!(
            VoteLog::open(garbage, c, &KEY),
            Err(LogError::Header("magic", _))
        ));
    }

    #[test]
    fn file_storage_preallocates_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes.log");
        let c = cfg(32);
        let (mut log, _) =
            VoteLog::open(FileStorage::open(&path, c.size_bytes()).unwrap(), c, &KEY).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), c.size_bytes());
        log.append(&notarize(5)).unwrap();
        log.sync().unwrap();
        drop(log);
        // A torn tail on a real file: garbage over the next slot.
        {
            let mut f = FileStorage::open(&path, c.size_bytes()).unwrap();
            f.write_at((1 + 2) * SLOT_BYTES as u64, &[0xAB; 100])
                .unwrap();
            f.sync().unwrap();
        }
        let (log, replay) =
            VoteLog::open(FileStorage::open(&path, c.size_bytes()).unwrap(), c, &KEY).unwrap();
        assert_eq!(replay.records, vec![notarize(5)]);
        assert_eq!(log.report().torn_slots, 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), c.size_bytes());
    }
}
