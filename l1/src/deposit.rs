//! Deposits: from the Portal's `TransactionDeposited` events on L1 to OP's deposit transaction
//! (type 0x7E) on L2, and the L1-info deposit that records each L1 origin in the `L1Block`
//! predeploy.
//!
//! **The L1-origin rule.** An L2 mini-block may begin with an *L1-info group*: the L1-info
//! deposit for an L1 block `B` (number, hash, time, fees), then every Portal deposit of the L1
//! blocks after the previous origin `A` up to and including `B`, in deposit-nonce order (the
//! Portal numbers its deposits). The L1-info deposit also records how many deposits L2 has then
//! processed, which must equal the Portal's count at `B`. No deposit appears anywhere else.
//! Every validator checks a proposal's group against its own view of L1, and a node deriving
//! the chain from L1 checks it the same way, so deposits can neither be skipped, invented nor
//! reordered.

use alloy::{
    primitives::{Address, B256, Bytes, TxKind, U256},
    sol_types::{SolCall, SolEvent},
};
use op_alloy_consensus::{L1InfoDepositSource, TxDeposit, UserDepositSource};

use crate::contracts::{DEPOSITOR_ACCOUNT, L1_BLOCK_ADDRESS, L1Block, Portal};

/// Gas of the L1-info deposit (OP's value after Regolith).
pub const L1_INFO_GAS: u64 = 1_000_000;

/// An L1 block as an L2 origin: what the L1-info deposit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct L1Origin {
    pub number: u64,
    pub hash: B256,
    pub timestamp: u64,
    pub base_fee: u64,
    pub blob_base_fee: u128,
    pub parent_beacon_root: B256,
}

/// A Portal deposit as L2 executes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// The Portal's deposit counter for this deposit (0, 1, ...).
    pub nonce: u64,
    /// The L1 block that emitted it.
    pub l1_block: u64,
    pub tx: TxDeposit,
}

/// Why an L1 log is not a deposit L2 can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    #[error("not a TransactionDeposited event: {0}")]
    NotDeposit(String),
    #[error("opaque data of {0} bytes is shorter than 73")]
    Short(usize),
    #[error("mint {0} does not fit 128 bits")]
    MintTooLarge(U256),
    #[error("log lacks its block hash, block number or log index (pending?)")]
    Unmined,
}

/// Decodes a Portal log into the deposit L2 executes. The source hash ties it to the L1 block
/// and its position there (OP's user-deposit source: domain 0, block hash, block-wide log index).
pub fn decode_deposit(log: &alloy::rpc::types::Log) -> Result<Deposit, DepositError> {
    let (Some(block_hash), Some(l1_block), Some(log_index)) =
        (log.block_hash, log.block_number, log.log_index)
    else {
        return Err(DepositError::Unmined);
    };
    let event = Portal::TransactionDeposited::decode_log_data(log.data())
        .map_err(|e| DepositError::NotDeposit(e.to_string()))?;
    let data = &event.opaqueData;
    if data.len() < 73 {
        return Err(DepositError::Short(data.len()));
    }
    let mint = U256::from_be_slice(&data[0..32]);
    let value = U256::from_be_slice(&data[32..64]);
    let gas_limit = u64::from_be_bytes(data[64..72].try_into().expect("8 bytes"));
    let is_creation = data[72] != 0;
    let mint: u128 = mint
        .try_into()
        .map_err(|_| DepositError::MintTooLarge(mint))?;
    let nonce: u64 = event
        .depositNonce
        .try_into()
        .map_err(|_| DepositError::NotDeposit("deposit nonce above 2^64".into()))?;
    let tx = TxDeposit {
        source_hash: UserDepositSource::new(block_hash, log_index).source_hash(),
        from: event.from,
        to: if is_creation {
            TxKind::Create
        } else {
            TxKind::Call(event.to)
        },
        mint,
        value,
        gas_limit,
        is_system_transaction: false,
        input: Bytes::copy_from_slice(&data[73..]),
    };
    Ok(Deposit {
        nonce,
        l1_block,
        tx,
    })
}

/// The topic the Portal's deposits are found by.
pub fn deposit_event_topic() -> B256 {
    Portal::TransactionDeposited::SIGNATURE_HASH
}

/// The L1-info deposit for `origin`, after which `deposits_processed` Portal deposits are on L2.
pub fn l1_info_deposit(origin: &L1Origin, deposits_processed: u64) -> TxDeposit {
    let call = L1Block::setL1BlockValuesCall {
        number_: origin.number,
        timestamp_: origin.timestamp,
        basefee_: U256::from(origin.base_fee),
        hash_: origin.hash,
        blobBaseFee_: U256::from(origin.blob_base_fee),
        parentBeaconRoot_: origin.parent_beacon_root,
        depositsProcessed_: deposits_processed,
    };
    TxDeposit {
        // Each origin appears once, so sequence number 0 makes the source unique.
        source_hash: L1InfoDepositSource::new(origin.hash, 0).source_hash(),
        from: DEPOSITOR_ACCOUNT,
        to: TxKind::Call(L1_BLOCK_ADDRESS),
        mint: 0,
        value: U256::ZERO,
        gas_limit: L1_INFO_GAS,
        is_system_transaction: false,
        input: call.abi_encode().into(),
    }
}

/// The origin and processed-deposit count an L1-info deposit records; `None` if `tx` is not one.
pub fn decode_l1_info(tx: &TxDeposit) -> Option<(L1Origin, u64)> {
    if tx.from != DEPOSITOR_ACCOUNT || tx.to != TxKind::Call(L1_BLOCK_ADDRESS) {
        return None;
    }
    let call = L1Block::setL1BlockValuesCall::abi_decode(&tx.input).ok()?;
    let origin = L1Origin {
        number: call.number_,
        hash: call.hash_,
        timestamp: call.timestamp_,
        base_fee: call.basefee_.try_into().ok()?,
        blob_base_fee: call.blobBaseFee_.try_into().ok()?,
        parent_beacon_root: call.parentBeaconRoot_,
    };
    Some((origin, call.depositsProcessed_))
}

/// Whether `tx` is exactly the L1-info deposit for what it decodes to (no extra fields).
pub fn is_canonical_l1_info(tx: &TxDeposit) -> bool {
    decode_l1_info(tx).is_some_and(|(origin, processed)| l1_info_deposit(&origin, processed) == *tx)
}

/// Storage slots of `L1Block` the node reads (see the contract's layout comment).
pub mod l1_block_slots {
    use alloy::primitives::U256;
    /// `number` (low 64 bits) and `timestamp` (next 64 bits).
    pub const NUMBER_AND_TIME: U256 = U256::ZERO;
    pub const HASH: U256 = U256::from_limbs([2, 0, 0, 0]);
    /// `parentBeaconRoot`: the L1 origin's, which each L2 block's start stores (EIP-4788).
    pub const PARENT_BEACON_ROOT: U256 = U256::from_limbs([4, 0, 0, 0]);
    /// `depositsProcessed` (low 64 bits).
    pub const DEPOSITS_PROCESSED: U256 = U256::from_limbs([5, 0, 0, 0]);
}

/// The origin L2 state records: (L1 block number, its hash, deposits processed).
pub fn origin_from_storage(
    number_word: U256,
    hash_word: U256,
    processed_word: U256,
) -> (u64, B256, u64) {
    let low = |w: U256| w.as_limbs()[0];
    (low(number_word), B256::from(hash_word), low(processed_word))
}

/// The L2 sender of an L1 contract's deposit (OP's aliasing: plus 0x1111...1111 mod 2^160).
pub fn alias(l1_sender: Address) -> Address {
    let offset = U256::from_be_slice(
        alloy::primitives::address!("0x1111000000000000000000000000000000001111").as_slice(),
    );
    let value: U256 = (U256::from_be_slice(l1_sender.as_slice()) + offset) % (U256::from(1) << 160);
    Address::from_slice(&value.to_be_bytes::<32>()[12..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, b256};

    #[test]
    fn l1_info_deposits_round_trip_and_only_the_canonical_form_is_one() {
        let origin = L1Origin {
            number: 42,
            hash: B256::repeat_byte(9),
            timestamp: 1_700_000_000,
            base_fee: 7,
            blob_base_fee: 1,
            parent_beacon_root: B256::repeat_byte(3),
        };
        let tx = l1_info_deposit(&origin, 5);
        assert_eq!(decode_l1_info(&tx), Some((origin, 5)));
        assert!(is_canonical_l1_info(&tx));
        let mut other = tx.clone();
        other.gas_limit += 1;
        assert!(!is_canonical_l1_info(&other));
        other = tx.clone();
        other.from = Address::repeat_byte(1);
        assert_eq!(decode_l1_info(&other), None);
    }

    #[test]
    fn aliasing_adds_the_offset_and_wraps() {
        assert_eq!(
            alias(address!("0x0000000000000000000000000000000000000001")),
            address!("0x1111000000000000000000000000000000001112")
        );
        assert_eq!(
            alias(address!("0xffffffffffffffffffffffffffffffffffffffff")),
            address!("0x1111000000000000000000000000000000001110")
        );
    }

    #[test]
    fn the_user_source_hash_is_ops() {
        // OP's user-deposit source for block hash 0x00..01 and log index 0 (checked against
        // op-alloy's implementation of the spec).
        let hash = UserDepositSource::new(B256::with_last_byte(1), 0).source_hash();
        assert_eq!(
            hash,
            b256!("0x871b3b0713ea5d7fd1f75a811c349209996193f3a2535cdfd79d35416bf80123")
        );
    }
}
