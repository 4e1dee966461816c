//! From raw bytes to a checked transaction: EIP-2718 decoding, sender recovery with
//! libsecp256k1 (4-6x faster than k256; recovery is the per-transaction cost that bounds
//! throughput), and the checks that need no state. Error texts follow geth's, so wallets and
//! libraries that match on them keep working.

use alloy_consensus::{SignableTransaction, Transaction as _};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, Bytes, Signature, U256, keccak256};
use op_alloy_consensus::OpTxEnvelope;
use revm::{
    context::TxEnv,
    context_interface::{cfg::gas::calculate_initial_tx_gas_for_tx, either::Either},
    primitives::{TxKind, hardfork::SpecId},
};
use secp256k1::{
    Message, SECP256K1,
    ecdsa::{RecoverableSignature, RecoveryId},
};

use crate::{config::ExecConfig, types::RecoveredTx};

/// EIP-3860: initcode is limited to twice the EIP-170 code size limit.
pub const MAX_INITCODE_SIZE_BYTES: usize = 2 * 24_576;

/// secp256k1n / 2: signatures with a larger `s` are malleable and refused (EIP-2).
const SECP256K1N_HALF: U256 = U256::from_be_slice(&[
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

/// Why a transaction was refused. `Display` gives geth's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("oversized data: transaction size {size}, limit {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("rlp: {0}")]
    Decode(String),
    #[error(
        "transaction type not supported: blob (EIP-4844) transactions are not accepted by this chain"
    )]
    BlobNotSupported,
    #[error("transaction type not supported")]
    UnsupportedType,
    /// Deposits (0x7E) are made by the node from the L1 Portal's events, never submitted.
    #[error(
        "transaction type not supported: deposit transactions come from L1 (the Portal), not from clients"
    )]
    DepositNotSubmittable,
    #[error("only replay-protected (EIP-155) transactions allowed over RPC")]
    Unprotected,
    #[error("invalid chain id for signer: have {have} want {want}")]
    WrongChainId { have: u64, want: u64 },
    #[error("invalid transaction v, r, s values")]
    InvalidSignature,
    #[error("invalid sender: {0}")]
    InvalidSender(String),
    #[error("intrinsic gas too low: have {have}, want {want}")]
    IntrinsicGasTooLow { have: u64, want: u64 },
    #[error("exceeds block gas limit")]
    GasLimitExceeded,
    #[error("max priority fee per gas higher than max fee per gas")]
    TipAboveFeeCap,
    #[error("max initcode size exceeded: code size {size}, limit {limit}")]
    InitcodeTooLarge { size: usize, limit: usize },
    #[error("EIP-7702 transaction with empty auth list")]
    EmptyAuthList,
    #[error("nonce too low: address {address}, tx: {tx} state: {state}")]
    NonceTooLow {
        address: Address,
        tx: u64,
        state: u64,
    },
    #[error("nonce too high: address {address}, tx: {tx} state: {state}")]
    NonceTooHigh {
        address: Address,
        tx: u64,
        state: u64,
    },
    #[error(
        "insufficient funds for gas * price + value: address {address} have {have} want {want}"
    )]
    InsufficientFunds {
        address: Address,
        have: U256,
        want: U256,
    },
    #[error(
        "max fee per gas less than block base fee: address {address}, maxFeePerGas: {max_fee}, baseFee: {base_fee}"
    )]
    FeeCapTooLow {
        address: Address,
        max_fee: u128,
        base_fee: u64,
    },
    #[error("sender not an eoa: address {0}")]
    SenderNotEoa(Address),
    #[error("nonce has max value")]
    NonceMax,
    /// Any other consensus rule revm enforces, in revm's words.
    #[error("invalid transaction: {0}")]
    Other(String),
}

/// Decodes a raw EIP-2718 transaction, recovers its sender and applies every check that needs no
/// state: size, type, chain id, signature malleability, intrinsic gas, gas against the block
/// limit, fee fields and initcode size. Never panics on any input.
pub fn decode_and_recover(raw: &[u8], config: &ExecConfig) -> Result<RecoveredTx, TxError> {
    decode_submitted(raw, config, Admission::Node)
}

fn decode_submitted(
    raw: &[u8],
    config: &ExecConfig,
    admission: Admission,
) -> Result<RecoveredTx, TxError> {
    if raw.len() > config.max_tx_size_bytes {
        return Err(TxError::Oversized {
            size: raw.len(),
            limit: config.max_tx_size_bytes,
        });
    }
    // The first byte says what follows (EIP-2718): a type byte below 0x7f, or an RLP list
    // (0xc0 and up) for a legacy transaction. Anything else is malformed before decoding starts.
    match raw.first() {
        None => return Err(TxError::Decode("empty transaction".into())),
        Some(0x03) => return Err(TxError::BlobNotSupported),
        Some(0x01 | 0x02 | 0x04) | Some(0xc0..=0xff) => {}
        Some(&op_alloy_consensus::DEPOSIT_TX_TYPE_ID) => {
            return Err(TxError::DepositNotSubmittable);
        }
        Some(0x00..=0x7f) => return Err(TxError::UnsupportedType),
        Some(byte) => {
            return Err(TxError::Decode(format!(
                "invalid first byte 0x{byte:02x}: neither a transaction type nor an RLP list"
            )));
        }
    }
    decode_checked(raw, config, admission)
}

/// Whose rule on unprotected (pre-EIP-155) transactions applies: refusing them is a node's
/// RPC policy (geth's `--rpc.allow-unprotected-txs`), not a chain rule, so a block that carries
/// one is valid on every node whatever its own policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// A client's submission: [`ExecConfig::allow_unprotected_txs`] decides.
    Node,
    /// A transaction already in a block (a peer's proposal, the log, L1).
    Block,
}

/// Decodes a transaction of a block: a client's transaction with every check
/// [`decode_and_recover`] makes, or a deposit (0x7E), whose sender is its `from` (the node
/// checks deposits against L1, not here).
pub fn decode_block_tx(raw: &[u8], config: &ExecConfig) -> Result<RecoveredTx, TxError> {
    if raw.first() == Some(&op_alloy_consensus::DEPOSIT_TX_TYPE_ID) {
        if raw.len() > config.max_tx_size_bytes {
            return Err(TxError::Oversized {
                size: raw.len(),
                limit: config.max_tx_size_bytes,
            });
        }
        let envelope = decode_exact(raw)?;
        let OpTxEnvelope::Deposit(deposit) = &envelope else {
            return Err(TxError::UnsupportedType);
        };
        let sender = deposit.from;
        let hash = envelope.tx_hash();
        return Ok(RecoveredTx {
            envelope,
            sender,
            hash,
            raw: Bytes::copy_from_slice(raw),
        });
    }
    decode_submitted(raw, config, Admission::Block)
}

/// The 2718 envelope, with nothing after it.
fn decode_exact(raw: &[u8]) -> Result<OpTxEnvelope, TxError> {
    let mut buf = raw;
    let envelope =
        OpTxEnvelope::decode_2718(&mut buf).map_err(|e| TxError::Decode(e.to_string()))?;
    if !buf.is_empty() {
        return Err(TxError::Decode(format!(
            "{} trailing bytes after the transaction",
            buf.len()
        )));
    }
    Ok(envelope)
}

fn decode_checked(
    raw: &[u8],
    config: &ExecConfig,
    admission: Admission,
) -> Result<RecoveredTx, TxError> {
    let envelope = decode_exact(raw)?;
    let unprotected_ok = admission == Admission::Block || config.allow_unprotected_txs;
    check_static(&envelope, config, unprotected_ok)?;
    let sender = recover_sender(&envelope)?;
    let hash = envelope.tx_hash();
    Ok(RecoveredTx {
        envelope,
        sender,
        hash,
        raw: Bytes::copy_from_slice(raw),
    })
}

/// The stateless rules, in the order geth checks them; `unprotected_ok`: a transaction without
/// a chain id passes (it is valid on chain; refusing it is a node's policy).
pub fn check_static(
    tx: &OpTxEnvelope,
    config: &ExecConfig,
    unprotected_ok: bool,
) -> Result<(), TxError> {
    match tx {
        OpTxEnvelope::Deposit(_) => return Err(TxError::DepositNotSubmittable),
        OpTxEnvelope::PostExec(_) => return Err(TxError::UnsupportedType),
        OpTxEnvelope::Eip7702(signed) if signed.tx().authorization_list.is_empty() => {
            return Err(TxError::EmptyAuthList);
        }
        _ => {}
    }
    match tx.chain_id() {
        None if !unprotected_ok => return Err(TxError::Unprotected),
        None => {}
        Some(have) if have != config.chain_id => {
            return Err(TxError::WrongChainId {
                have,
                want: config.chain_id,
            });
        }
        Some(_) => {}
    }
    if tx.gas_limit() > config.block_gas_limit {
        return Err(TxError::GasLimitExceeded);
    }
    if let Some(tip) = tx.max_priority_fee_per_gas()
        && tip > tx.max_fee_per_gas()
    {
        return Err(TxError::TipAboveFeeCap);
    }
    if tx.kind().is_create() && tx.input().len() > MAX_INITCODE_SIZE_BYTES {
        return Err(TxError::InitcodeTooLarge {
            size: tx.input().len(),
            limit: MAX_INITCODE_SIZE_BYTES,
        });
    }
    let want = intrinsic_gas(tx, config.spec);
    if tx.gas_limit() < want {
        return Err(TxError::IntrinsicGasTooLow {
            have: tx.gas_limit(),
            want,
        });
    }
    Ok(())
}

/// Intrinsic gas including the EIP-7623 calldata floor (Prague), computed by revm's own rules
/// so that admission and execution can never disagree.
pub fn intrinsic_gas(tx: &OpTxEnvelope, spec: SpecId) -> u64 {
    let env = to_tx_env(tx, Address::ZERO);
    let gas = calculate_initial_tx_gas_for_tx(&env, spec, None);
    let initial = gas.initial_regular_gas + gas.initial_state_gas;
    if spec.is_enabled_in(SpecId::PRAGUE) {
        initial.max(gas.floor_gas)
    } else {
        initial
    }
}

/// Recovers the signer with libsecp256k1, refusing high-`s` signatures (EIP-2).
pub fn recover_sender(tx: &OpTxEnvelope) -> Result<Address, TxError> {
    let (signature, hash) = match tx {
        OpTxEnvelope::Legacy(t) => (t.signature(), t.tx().signature_hash()),
        OpTxEnvelope::Eip2930(t) => (t.signature(), t.tx().signature_hash()),
        OpTxEnvelope::Eip1559(t) => (t.signature(), t.tx().signature_hash()),
        OpTxEnvelope::Eip7702(t) => (t.signature(), t.tx().signature_hash()),
        OpTxEnvelope::Deposit(d) => return Ok(d.from),
        OpTxEnvelope::PostExec(_) => return Err(TxError::UnsupportedType),
    };
    if signature.s() > SECP256K1N_HALF || signature.r().is_zero() || signature.s().is_zero() {
        return Err(TxError::InvalidSignature);
    }
    recover_signer(signature, hash)
}

/// ECDSA public-key recovery of the address that signed `hash`.
pub fn recover_signer(signature: &Signature, hash: B256) -> Result<Address, TxError> {
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&signature.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&signature.s().to_be_bytes::<32>());
    let recovery_id =
        RecoveryId::try_from(i32::from(signature.v())).map_err(|_| TxError::InvalidSignature)?;
    let recoverable = RecoverableSignature::from_compact(&compact, recovery_id)
        .map_err(|_| TxError::InvalidSignature)?;
    let public = SECP256K1
        .recover_ecdsa(Message::from_digest(hash.0), &recoverable)
        .map_err(|e| TxError::InvalidSender(e.to_string()))?;
    let uncompressed = public.serialize_uncompressed();
    Ok(Address::from_slice(&keccak256(&uncompressed[1..])[12..]))
}

/// The revm view of a transaction sent by `caller`. A deposit runs as a legacy transaction
/// with a zero gas price (the executor sets its nonce and switches off the base fee check).
pub fn to_tx_env(tx: &OpTxEnvelope, caller: Address) -> TxEnv {
    let mut env = TxEnv {
        tx_type: tx.tx_type() as u8,
        caller,
        gas_limit: tx.gas_limit(),
        gas_price: tx.max_fee_per_gas(),
        kind: tx.kind(),
        value: tx.value(),
        data: tx.input().clone(),
        nonce: tx.nonce(),
        chain_id: tx.chain_id(),
        gas_priority_fee: tx.max_priority_fee_per_gas(),
        ..TxEnv::default()
    };
    if let Some(list) = tx.access_list() {
        env.access_list = list.clone();
    }
    if let Some(list) = tx.authorization_list() {
        env.authorization_list = list.iter().cloned().map(Either::Left).collect();
    }
    match tx {
        OpTxEnvelope::Legacy(_) => env.gas_priority_fee = None,
        OpTxEnvelope::Deposit(_) => {
            env.tx_type = 0;
            env.gas_price = 0;
            env.gas_priority_fee = None;
        }
        _ => {}
    }
    env
}

/// The address a contract-creating transaction deploys to.
/// The address a contract-creating transaction deploys to. `nonce` is the sender's nonce the
/// transaction executed with (a deposit carries none of its own).
pub fn created_address(tx: &OpTxEnvelope, sender: Address, nonce: u64) -> Option<Address> {
    match tx.kind() {
        TxKind::Create => Some(sender.create(nonce)),
        TxKind::Call(_) => None,
    }
}

/// What the sender paid per gas under `base_fee` (nothing, for a deposit: L1 paid).
pub fn effective_gas_price(tx: &OpTxEnvelope, base_fee: u64) -> u128 {
    if tx.is_deposit() {
        return 0;
    }
    tx.effective_gas_price(Some(base_fee))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxLegacy};
    use alloy_eips::eip2718::Encodable2718;
    use alloy_network::TxSignerSync;
    use alloy_signer_local::PrivateKeySigner;

    fn signer() -> PrivateKeySigner {
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            .parse()
            .unwrap()
    }

    fn eip1559(chain_id: u64, gas_limit: u64) -> TxEip1559 {
        TxEip1559 {
            chain_id,
            nonce: 0,
            gas_limit,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(Address::repeat_byte(1)),
            value: U256::from(1),
            access_list: Default::default(),
            input: Bytes::new(),
        }
    }

    fn encode_1559(tx: TxEip1559) -> Vec<u8> {
        let mut tx = tx;
        let sig = signer().sign_transaction_sync(&mut tx).unwrap();
        alloy_consensus::TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
    }

    #[test]
    fn recovers_the_signer() {
        let config = ExecConfig::dev(31337);
        let raw = encode_1559(eip1559(31337, 21_000));
        let tx = decode_and_recover(&raw, &config).unwrap();
        assert_eq!(tx.sender, signer().address());
        assert_eq!(tx.hash, keccak256(&raw));
    }

    #[test]
    fn refuses_wrong_chain_and_low_gas_and_huge_gas() {
        let config = ExecConfig::dev(31337);
        let raw = encode_1559(eip1559(1, 21_000));
        assert_eq!(
            decode_and_recover(&raw, &config),
            Err(TxError::WrongChainId {
                have: 1,
                want: 31337
            })
        );
        let raw = encode_1559(eip1559(31337, 20_999));
        assert_eq!(
            decode_and_recover(&raw, &config),
            Err(TxError::IntrinsicGasTooLow {
                have: 20_999,
                want: 21_000
            })
        );
        let raw = encode_1559(eip1559(31337, config.block_gas_limit + 1));
        assert_eq!(
            decode_and_recover(&raw, &config),
            Err(TxError::GasLimitExceeded)
        );
    }

    #[test]
    fn refuses_unprotected_legacy_and_high_s() {
        let config = ExecConfig::dev(31337);
        let mut legacy = TxLegacy {
            chain_id: None,
            nonce: 0,
            gas_price: 2_000_000_000,
            gas_limit: 21_000,
            to: TxKind::Call(Address::repeat_byte(2)),
            value: U256::ZERO,
            input: Bytes::new(),
        };
        let sig = signer().sign_transaction_sync(&mut legacy).unwrap();
        let raw = alloy_consensus::TxEnvelope::from(legacy.clone().into_signed(sig)).encoded_2718();
        assert_eq!(decode_and_recover(&raw, &config), Err(TxError::Unprotected));
        // Valid in a block whatever this node's policy, and accepted where the node allows it.
        assert!(decode_block_tx(&raw, &config).is_ok());
        let allowing = ExecConfig {
            allow_unprotected_txs: true,
            ..config.clone()
        };
        assert_eq!(
            decode_and_recover(&raw, &allowing).unwrap().sender,
            signer().address()
        );

        let mut tx = eip1559(31337, 21_000);
        let sig = signer().sign_transaction_sync(&mut tx).unwrap();
        // The same signature with s' = n - s verifies mathematically but is malleable.
        let n = U256::from_be_slice(&hex_n());
        let high = Signature::new(sig.r(), n - sig.s(), !sig.v());
        let raw = alloy_consensus::TxEnvelope::from(tx.into_signed(high)).encoded_2718();
        assert_eq!(
            decode_and_recover(&raw, &config),
            Err(TxError::InvalidSignature)
        );
    }

    fn hex_n() -> [u8; 32] {
        let mut n = [0u8; 32];
        let hex = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
        for (i, byte) in n.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        n
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let config = ExecConfig::dev(31337);
        for raw in [
            &[][..],
            &[0x02],
            &[0x03, 0xc0],
            &[0x7f, 0x01],
            &[0xf8, 0xff, 0x00],
            &[0xc0],
        ] {
            assert!(decode_and_recover(raw, &config).is_err(), "{raw:?}");
        }
        let big = vec![0u8; config.max_tx_size_bytes + 1];
        assert!(matches!(
            decode_and_recover(&big, &config),
            Err(TxError::Oversized { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_and_recover(&raw, &ExecConfig::dev(31337));
        }

        #[test]
        fn mutated_transactions_never_panic(index in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut raw = encode_1559(eip1559(31337, 21_000));
            let i = index % raw.len();
            raw[i] = byte;
            let _ = decode_and_recover(&raw, &ExecConfig::dev(31337));
        }
    }
}
