//! How the executor sees state: a [`StateReader`] over committed state, and an [`Overlay`] that
//! records what a run of transactions changed (the [`StateDiff`] that storage then commits and
//! the trie hashes).

use std::collections::HashMap;

use alloy_primitives::{Address, B256, Bytes, U256};
use revm::{
    Database, DatabaseCommit,
    bytecode::Bytecode,
    primitives::{AddressMap, KECCAK_EMPTY},
    state::{Account, AccountInfo},
};

/// A failure of the state backend (disk error, corrupt record). Not a property of any
/// transaction: the node stops rather than execute on state it cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state backend: {0}")]
pub struct StateError(pub String);

impl revm::database_interface::DBErrorMarker for StateError {}

/// Committed state as the executor needs it. Implemented by RocksDB storage, by test fixtures,
/// and by [`Overlay`] itself so that overlays stack.
pub trait StateReader {
    /// Balance, nonce and code hash (the `code` field may be left `None`; the executor asks
    /// [`StateReader::code`] by hash when it needs it).
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError>;
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError>;
    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError>;
    /// Hash of an EVM block (BLOCKHASH); zero when unknown.
    fn block_hash(&self, number: u64) -> Result<B256, StateError>;
}

impl<T: StateReader + ?Sized> StateReader for &T {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        (**self).account(address)
    }
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        (**self).storage(address, slot)
    }
    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        (**self).code(code_hash)
    }
    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        (**self).block_hash(number)
    }
}

/// What happened to one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    /// New balance, nonce and code hash; `None` when the account no longer exists
    /// (self-destructed, or touched while empty and so removed by EIP-161).
    pub info: Option<AccountInfo>,
    /// Storage was wiped before `storage` applies (account destroyed or created afresh).
    pub storage_cleared: bool,
    /// Slots written, with their new values (zero means deleted).
    pub storage: HashMap<U256, U256>,
}

/// State changes of a run of transactions, in the form storage commits them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    pub accounts: HashMap<Address, AccountChange>,
    /// Code deployed, by hash.
    pub codes: HashMap<B256, Bytes>,
}

impl StateDiff {
    /// Folds a later diff into this one, as if both runs had been one.
    pub fn merge(&mut self, later: StateDiff) {
        for (address, change) in later.accounts {
            let entry = self.accounts.entry(address).or_default();
            if change.storage_cleared {
                entry.storage.clear();
                entry.storage_cleared = true;
            }
            entry.storage.extend(change.storage);
            entry.info = change.info;
        }
        self.codes.extend(later.codes);
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.codes.is_empty()
    }
}

/// Executes over a [`StateReader`] while keeping every change in memory. Reads of the base are
/// cached, because revm asks for the same sender and contract accounts for every transaction.
pub struct Overlay<R> {
    base: R,
    diff: StateDiff,
    accounts: HashMap<Address, Option<AccountInfo>>,
    slots: HashMap<(Address, U256), U256>,
}

impl<R: StateReader> Overlay<R> {
    pub fn new(base: R) -> Self {
        Self {
            base,
            diff: StateDiff::default(),
            accounts: HashMap::new(),
            slots: HashMap::new(),
        }
    }

    /// The changes made so far.
    pub fn diff(&self) -> &StateDiff {
        &self.diff
    }

    pub fn into_diff(self) -> StateDiff {
        self.diff
    }

    pub fn base(&self) -> &R {
        &self.base
    }

    /// Sets an account's balance, nonce and code hash as a committed change (what a deposit's
    /// mint and a failed deposit's nonce bump do outside the EVM).
    pub fn set_account_info(&mut self, address: Address, mut info: AccountInfo) {
        info.code = None;
        self.diff.accounts.entry(address).or_default().info = Some(info);
    }

    /// Replaces parts of an account for a simulated call (eth_call state overrides).
    /// `storage = Some((true, slots))` replaces the whole storage; `Some((false, slots))`
    /// changes only the given slots.
    pub fn override_account(
        &mut self,
        address: Address,
        balance: Option<U256>,
        nonce: Option<u64>,
        code: Option<Bytes>,
        storage: Option<(bool, Vec<(U256, U256)>)>,
    ) -> Result<(), StateError> {
        let mut info = self.account(address)?.unwrap_or_default();
        if let Some(balance) = balance {
            info.balance = balance;
        }
        if let Some(nonce) = nonce {
            info.nonce = nonce;
        }
        if let Some(code) = code {
            let bytecode = Bytecode::new_raw(code.clone());
            info.code_hash = bytecode.hash_slow();
            self.diff.codes.insert(info.code_hash, code);
            info.code = Some(bytecode);
        }
        let change = self.diff.accounts.entry(address).or_default();
        change.info = Some(info);
        if let Some((replace, slots)) = storage {
            if replace {
                change.storage.clear();
                change.storage_cleared = true;
            }
            change.storage.extend(slots);
        }
        Ok(())
    }
}

impl<R> Overlay<R> {
    /// The account as the transactions committed so far left it, or `None` when none of them
    /// wrote it (its value is then the base's). `Some(None)`: the account no longer exists.
    pub fn written_account(&self, address: Address) -> Option<Option<AccountInfo>> {
        self.diff
            .accounts
            .get(&address)
            .map(|change| change.info.clone())
    }

    /// The slot as the transactions committed so far left it, or `None` when its value is
    /// still the base's. A slot of a destroyed or re-created account reads zero unless written
    /// again since.
    pub fn written_storage(&self, address: Address, slot: U256) -> Option<U256> {
        let change = self.diff.accounts.get(&address)?;
        if let Some(value) = change.storage.get(&slot) {
            return Some(*value);
        }
        (change.storage_cleared || change.info.is_none()).then_some(U256::ZERO)
    }
}

impl<R: StateReader> StateReader for Overlay<R> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        if let Some(written) = self.written_account(address) {
            return Ok(written);
        }
        if let Some(cached) = self.accounts.get(&address) {
            return Ok(cached.clone());
        }
        self.base.account(address)
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        if let Some(value) = self.written_storage(address, slot) {
            return Ok(value);
        }
        if let Some(value) = self.slots.get(&(address, slot)) {
            return Ok(*value);
        }
        self.base.storage(address, slot)
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        if let Some(code) = self.diff.codes.get(&code_hash) {
            return Ok(Some(Bytecode::new_raw(code.clone())));
        }
        self.base.code(code_hash)
    }

    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        self.base.block_hash(number)
    }
}

impl<R: StateReader> Database for Overlay<R> {
    type Error = StateError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        if let Some(written) = self.written_account(address) {
            return Ok(written);
        }
        if let Some(cached) = self.accounts.get(&address) {
            return Ok(cached.clone());
        }
        let info = self.base.account(address)?;
        self.accounts.insert(address, info.clone());
        Ok(info)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, StateError> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::default());
        }
        StateReader::code(self, code_hash)?
            .ok_or_else(|| StateError(format!("code {code_hash} missing from the state")))
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, StateError> {
        if let Some(value) = self.written_storage(address, index) {
            return Ok(value);
        }
        if let Some(value) = self.slots.get(&(address, index)) {
            return Ok(*value);
        }
        let value = self.base.storage(address, index)?;
        self.slots.insert((address, index), value);
        Ok(value)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, StateError> {
        self.base.block_hash(number)
    }
}

impl<R: StateReader> DatabaseCommit for Overlay<R> {
    fn commit(&mut self, changes: AddressMap<Account>) {
        for (address, account) in changes {
            self.commit_account(address, account);
        }
    }
}

/// Whether committing a touched `account` removes it: self-destructed, or (EIP-161) touched
/// while empty. Its storage goes with it.
pub(crate) fn removed_on_commit(account: &Account) -> bool {
    account.is_selfdestructed() || account.info.is_empty()
}

impl<R> Overlay<R> {
    fn commit_account(&mut self, address: Address, account: Account) {
        if !account.is_touched() {
            return;
        }
        if removed_on_commit(&account) {
            self.diff.accounts.insert(
                address,
                AccountChange {
                    info: None,
                    storage_cleared: true,
                    storage: HashMap::new(),
                },
            );
            return;
        }
        let change = self.diff.accounts.entry(address).or_default();
        if account.is_created() {
            change.storage.clear();
            change.storage_cleared = true;
        }
        for (slot, value) in account.changed_storage_slots() {
            change.storage.insert(*slot, value.present_value());
        }
        let mut info = account.info;
        if let Some(code) = info.code.take()
            && info.code_hash != KECCAK_EMPTY
            && !code.is_empty()
        {
            self.diff
                .codes
                .entry(info.code_hash)
                .or_insert_with(|| code.original_bytes());
        }
        change.info = Some(info);
    }
}
