//! What a speculative execution sees and leaves behind: the multi-version memory of earlier
//! transactions' writes in the batch, and [`SpecDb`], the revm database that reads through it
//! (then the immutable base) and records every value it returned.
//!
//! Nothing here decides what is committed. The multi-version memory only makes speculation
//! *likely* right; the commit loop checks every recorded read against the committed state, so a
//! stale or missing entry costs a re-execution, never a wrong result.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

use alloy_primitives::{
    Address, B256, U256,
    map::{B256Map, HashMap},
};
use revm::{
    Database,
    bytecode::Bytecode,
    primitives::KECCAK_EMPTY,
    state::{AccountInfo, EvmState},
};

use crate::state::{StateError, StateReader, removed_on_commit};

/// Shards of the multi-version map: enough that the few worker threads of a shard rarely wait
/// on one another; a power of two so the shard is a mask of the location hash.
const SHARDS: usize = 64;

/// A location a transaction reads or writes, at the grain the commit loop validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Loc {
    /// Balance, nonce and code hash (revm's `basic`).
    Account(Address),
    Storage(Address, U256),
}

impl Loc {
    fn shard(&self) -> usize {
        // The address's last bytes are as good as a hash (keccak output), and storage slots of
        // one contract spread over shards by the slot's last byte (mapping slots are hashes too).
        let (address, extra) = match self {
            Loc::Account(address) => (address, 0),
            Loc::Storage(address, slot) => (address, slot.byte(0) as usize),
        };
        (address.0[19] as usize ^ extra) & (SHARDS - 1)
    }
}

/// What one transaction wrote to one location, as the commit would record it.
#[derive(Debug, Clone)]
pub(crate) enum MvValue {
    /// The account's new info (code left out, as the overlay keeps it), or `None` when it was
    /// removed. `cleared`: its storage was wiped first (destroyed or created afresh).
    Account {
        info: Option<AccountInfo>,
        cleared: bool,
    },
    Storage(U256),
}

/// One value a speculative execution was given.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub loc: Loc,
    pub value: ReadValue,
    /// Read from the immutable base, not from an earlier transaction of the batch.
    pub from_base: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum ReadValue {
    Account(Option<AccountInfo>),
    Storage(U256),
}

/// The writes to each location, by transaction index, ascending.
type Versions = HashMap<Loc, Vec<(u32, MvValue)>>;

/// Latest write to each location by each transaction of the batch that published one, ordered
/// by transaction index. Lock per shard; lookups and publications are short and never nest.
pub(crate) struct MvMemory {
    shards: Box<[Mutex<Versions>]>,
    /// Code deployed by transactions of the batch, by hash.
    codes: Mutex<B256Map<Bytecode>>,
    /// Set once any transaction wiped an account's storage: only then must a storage read also
    /// look for a wipe.
    any_cleared: AtomicBool,
}

impl MvMemory {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            codes: Mutex::default(),
            any_cleared: AtomicBool::new(false),
        }
    }

    fn shard(&self, loc: &Loc) -> MutexGuard<'_, Versions> {
        // A poisoned shard means a worker panicked mid-publication; the panic reaches the
        // caller through the thread scope, so reading on is harmless.
        self.shards[loc.shard()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest write to `loc` by a transaction before `tx`, with that transaction's index.
    fn latest_before(&self, loc: &Loc, tx: u32) -> Option<(u32, MvValue)> {
        let shard = self.shard(loc);
        let versions = shard.get(loc)?;
        let end = versions.partition_point(|(index, _)| *index < tx);
        end.checked_sub(1).map(|i| versions[i].clone())
    }

    /// The account as the transactions before `tx` left it, if any of them wrote it.
    pub(crate) fn account(&self, address: Address, tx: u32) -> Option<Option<AccountInfo>> {
        match self.latest_before(&Loc::Account(address), tx)? {
            (_, MvValue::Account { info, .. }) => Some(info),
            (_, MvValue::Storage(_)) => None,
        }
    }

    /// The slot as the transactions before `tx` left it, if any of them wrote it or wiped the
    /// account's storage.
    pub(crate) fn storage(&self, address: Address, slot: U256, tx: u32) -> Option<U256> {
        let written = match self.latest_before(&Loc::Storage(address, slot), tx) {
            Some((index, MvValue::Storage(value))) => Some((index, value)),
            _ => None,
        };
        let wiped = if self.any_cleared.load(Ordering::Acquire) {
            self.latest_wipe_before(address, tx)
        } else {
            None
        };
        match (written, wiped) {
            // The same transaction wipes first, then writes (a constructor's SSTORE).
            (Some((index, value)), Some(wipe)) if index >= wipe => Some(value),
            (_, Some(_)) => Some(U256::ZERO),
            (Some((_, value)), None) => Some(value),
            (None, None) => None,
        }
    }

    fn latest_wipe_before(&self, address: Address, tx: u32) -> Option<u32> {
        let loc = Loc::Account(address);
        let shard = self.shard(&loc);
        let versions = shard.get(&loc)?;
        let end = versions.partition_point(|(index, _)| *index < tx);
        versions[..end]
            .iter()
            .rev()
            .find(|(_, value)| {
                matches!(
                    value,
                    MvValue::Account { cleared: true, .. } | MvValue::Account { info: None, .. }
                )
            })
            .map(|(index, _)| *index)
    }

    pub(crate) fn code(&self, code_hash: B256) -> Option<Bytecode> {
        self.codes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&code_hash)
            .cloned()
    }

    /// Publishes what `tx` wrote, replacing an earlier publication of `tx` at the same
    /// locations. New code goes in before the accounts that point at it.
    pub(crate) fn publish(&self, tx: u32, writes: Writes) {
        if !writes.codes.is_empty() {
            let mut codes = self
                .codes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (hash, code) in writes.codes {
                codes.entry(hash).or_insert(code);
            }
        }
        for (loc, value) in writes.values {
            if matches!(
                value,
                MvValue::Account { cleared: true, .. } | MvValue::Account { info: None, .. }
            ) {
                self.any_cleared.store(true, Ordering::Release);
            }
            let mut shard = self.shard(&loc);
            let versions = shard.entry(loc).or_default();
            match versions.binary_search_by_key(&tx, |(index, _)| *index) {
                Ok(i) => versions[i].1 = value,
                Err(i) => versions.insert(i, (tx, value)),
            }
        }
    }

    /// Withdraws what `tx` published at `locs` (its speculation was wrong, or it was deferred).
    pub(crate) fn retract(&self, tx: u32, locs: &[Loc]) {
        for loc in locs {
            let mut shard = self.shard(loc);
            if let Some(versions) = shard.get_mut(loc)
                && let Ok(i) = versions.binary_search_by_key(&tx, |(index, _)| *index)
            {
                versions.remove(i);
            }
        }
    }
}

/// The writes of one transaction, ready to publish.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pub values: Vec<(Loc, MvValue)>,
    pub codes: Vec<(B256, Bytecode)>,
}

impl Writes {
    /// What committing `state` would write, following the overlay's rules (removal of
    /// destroyed and touched-empty accounts, storage wipes on creation, code kept apart).
    /// With `reads`, accounts whose info is what the transaction read and whose storage was
    /// not wiped are left out: publishing them would only add versions equal to older ones.
    pub(crate) fn from_state(state: &EvmState, reads: Option<&[Read]>) -> Self {
        let mut writes = Writes::default();
        for (address, account) in state {
            if !account.is_touched() {
                continue;
            }
            if removed_on_commit(account) {
                writes.values.push((
                    Loc::Account(*address),
                    MvValue::Account {
                        info: None,
                        cleared: true,
                    },
                ));
                continue;
            }
            let cleared = account.is_created();
            let mut info = account.info.clone();
            if let Some(code) = info.code.take()
                && info.code_hash != KECCAK_EMPTY
                && !code.is_empty()
            {
                writes.codes.push((info.code_hash, code));
            }
            let unchanged = !cleared
                && reads.is_some_and(|reads| {
                    reads.iter().any(|read| {
                        read.loc == Loc::Account(*address)
                            && matches!(&read.value, ReadValue::Account(Some(before))
                                if before.balance == info.balance
                                    && before.nonce == info.nonce
                                    && before.code_hash == info.code_hash)
                    })
                });
            if !unchanged {
                writes.values.push((
                    Loc::Account(*address),
                    MvValue::Account {
                        info: Some(info),
                        cleared,
                    },
                ));
            }
            for (slot, value) in account.changed_storage_slots() {
                writes.values.push((
                    Loc::Storage(*address, *slot),
                    MvValue::Storage(value.present_value()),
                ));
            }
        }
        writes
    }

    pub(crate) fn locs(&self) -> Vec<Loc> {
        self.values.iter().map(|(loc, _)| *loc).collect()
    }
}

/// Why a speculative read could not be answered. Never reaches the caller: the transaction is
/// executed again by the commit loop, on the committed state, where a real backend failure
/// surfaces as the sequential executor would report it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SpecError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("code {0} is not visible to this speculation")]
    MissingCode(B256),
}

impl revm::database_interface::DBErrorMarker for SpecError {}

/// The database a speculative execution runs on: earlier transactions' published writes,
/// then the base. Records every account and slot value it hands out.
pub(crate) struct SpecDb<'a, R> {
    base: &'a R,
    mv: &'a MvMemory,
    /// Index of the transaction being executed.
    tx: u32,
    /// When set, the multi-version memory is not consulted (tests: every read of a location an
    /// earlier transaction wrote is then stale, which exercises re-execution).
    base_only: bool,
    pub(crate) reads: Vec<Read>,
}

impl<'a, R: StateReader> SpecDb<'a, R> {
    pub(crate) fn new(base: &'a R, mv: &'a MvMemory, base_only: bool) -> Self {
        Self {
            base,
            mv,
            tx: 0,
            base_only,
            // A transfer reads two accounts, an ERC-20 transfer three accounts and two slots.
            reads: Vec::with_capacity(16),
        }
    }

    /// Starts the speculation of transaction `tx`.
    pub(crate) fn begin(&mut self, tx: u32) {
        self.tx = tx;
        self.reads.clear();
    }
}

impl<R: StateReader> Database for SpecDb<'_, R> {
    type Error = SpecError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, SpecError> {
        let published = if self.base_only {
            None
        } else {
            self.mv.account(address, self.tx)
        };
        let (info, from_base) = match published {
            Some(info) => (info, false),
            None => (self.base.account(address)?, true),
        };
        self.reads.push(Read {
            loc: Loc::Account(address),
            value: ReadValue::Account(info.clone()),
            from_base,
        });
        Ok(info)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, SpecError> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::default());
        }
        if let Some(code) = self.mv.code(code_hash) {
            return Ok(code);
        }
        self.base
            .code(code_hash)?
            .ok_or(SpecError::MissingCode(code_hash))
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, SpecError> {
        let published = if self.base_only {
            None
        } else {
            self.mv.storage(address, index, self.tx)
        };
        let (value, from_base) = match published {
            Some(value) => (value, false),
            None => (self.base.storage(address, index)?, true),
        };
        self.reads.push(Read {
            loc: Loc::Storage(address, index),
            value: ReadValue::Storage(value),
            from_base,
        });
        Ok(value)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, SpecError> {
        Ok(self.base.block_hash(number)?)
    }
}
