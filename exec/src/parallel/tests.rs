//! Differential tests: random blocks executed by [`execute_batch`] and by parallel executors of
//! several shapes (thread counts, stale speculation, commit loops that never execute directly)
//! must agree byte for byte: outcomes with their receipts (2718 encodings), gas, logs, the
//! state diff (every field, code presence included) and the state root after it.
//!
//! The pre-state holds every kind of account the generator aims at: funded and poor senders,
//! the compiled ERC-20 (`contracts/out/Token.json`) and AMM (`contracts/out/Amm.json`), and
//! hand-assembled contracts for a hot counter, `BALANCE(COINBASE)`, `BALANCE(x)`, CREATE,
//! CREATE2, SELFDESTRUCT, REVERT and an endless loop. Transactions are built unsigned (the
//! executor trusts the recovered sender); EIP-7702 authorizations are signed for real, since
//! revm recovers their authority.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use alloy_consensus::{Signed, TxEip1559, TxEip2930, TxEip7702, TxLegacy};
use alloy_eips::{
    eip2718::Encodable2718,
    eip2930::{AccessList, AccessListItem},
    eip7702::{Authorization, SignedAuthorization},
};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use op_alloy_consensus::OpTxEnvelope as TxEnvelope;
use proptest::prelude::*;

use super::*;
use crate::{executor::execute_batch, memory::MemoryState, state::StateDiff, types::RecoveredTx};

const CHAIN_ID: u64 = 31337;
const GWEI: u128 = 1_000_000_000;
const KEYED: usize = 8;

// Hand-assembled runtime code.
/// `slot0 += 1`.
const COUNTER: &[u8] = &[0x5f, 0x54, 0x60, 0x01, 0x01, 0x5f, 0x55, 0x00];
/// `slot0 = BALANCE(COINBASE)`.
const COINBASE_READER: &[u8] = &[0x41, 0x31, 0x5f, 0x55, 0x00];
/// `slot0 = BALANCE(calldata[0..32])`.
const BALANCE_READER: &[u8] = &[0x5f, 0x35, 0x31, 0x5f, 0x55, 0x00];
/// `SELFDESTRUCT(CALLER)`.
const DESTRUCTIBLE: &[u8] = &[0x33, 0xff];
/// `slot0 = CALLVALUE; REVERT`: the write must vanish.
const REVERTER: &[u8] = &[0x34, 0x5f, 0x55, 0x5f, 0x5f, 0xfd];
/// `JUMPDEST PUSH0 JUMP`: runs out of gas.
const LOOPER: &[u8] = &[0x5b, 0x5f, 0x56];
/// Init code deploying [`DESTRUCTIBLE`]: `PUSH2 0x33ff PUSH0 MSTORE PUSH1 2 PUSH1 30 RETURN`.
const CHILD_INIT: [u8; 10] = [0x61, 0x33, 0xff, 0x5f, 0x52, 0x60, 0x02, 0x60, 0x1e, 0xf3];

/// `slot0 = CREATE(CHILD_INIT)`.
fn creator_keep() -> Vec<u8> {
    let mut code = vec![0x69];
    code.extend_from_slice(&CHILD_INIT);
    code.extend_from_slice(&[
        0x5f, 0x52, 0x60, 0x0a, 0x60, 0x16, 0x5f, 0xf0, 0x5f, 0x55, 0x00,
    ]);
    code
}

/// `slot0 = CREATE(CHILD_INIT)`, then calls the child, which self-destructs in the
/// transaction that created it (so it is removed).
fn creator_destroy() -> Vec<u8> {
    let mut code = vec![0x69];
    code.extend_from_slice(&CHILD_INIT);
    code.extend_from_slice(&[
        0x5f, 0x52, 0x60, 0x0a, 0x60, 0x16, 0x5f, 0xf0, // CREATE
        0x80, 0x5f, 0x55, // DUP1 PUSH0 SSTORE
        0x5f, 0x5f, 0x5f, 0x5f, 0x5f, 0x85, 0x5a, 0xf1, 0x50, 0x00, // CALL child; POP; STOP
    ]);
    code
}

/// `slot0 = CREATE2(CHILD_INIT, salt = calldata[0..32])`; a repeated salt collides.
fn creator2() -> Vec<u8> {
    let mut code = vec![0x5f, 0x35, 0x69];
    code.extend_from_slice(&CHILD_INIT);
    code.extend_from_slice(&[
        0x5f, 0x52, 0x60, 0x0a, 0x60, 0x16, 0x5f, 0xf5, 0x5f, 0x55, 0x00,
    ]);
    code
}

fn addr(n: u64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[12..].copy_from_slice(&n.to_be_bytes());
    // Spread over the multi-version memory's shards like real addresses.
    bytes[0] = 0xaa;
    bytes[19] ^= (n as u8).wrapping_mul(37);
    Address::from(bytes)
}

const TOKEN: u64 = 0x1000;
const AMM: u64 = 0x2000;
const COUNTER_AT: u64 = 0x3000;
const COINBASE_READER_AT: u64 = 0x3001;
const BALANCE_READER_AT: u64 = 0x3002;
const CREATOR_KEEP_AT: u64 = 0x3003;
const CREATOR_DESTROY_AT: u64 = 0x3004;
const CREATOR2_AT: u64 = 0x3005;
const DESTRUCTIBLE_AT: u64 = 0x3006;
const REVERTER_AT: u64 = 0x3007;
const LOOPER_AT: u64 = 0x3008;
/// Plain recipients, absent from the pre-state.
const RECIPIENTS: [u64; 4] = [0x4000, 0x4001, 0x4002, 0x4003];
/// A beneficiary absent from the pre-state.
const FRESH_COINBASE: u64 = 0x5000;

fn deployed_code(artifact: &str) -> Bytes {
    let json: serde_json::Value = serde_json::from_str(artifact).expect("artifact is JSON");
    json["deployedBytecode"]
        .as_str()
        .expect("deployedBytecode")
        .parse()
        .expect("hex")
}

/// Solidity's slot of `mapping(address => _)[key]` declared at `slot`.
fn mapping_slot(key: Address, slot: u64) -> U256 {
    let mut buf = [0u8; 64];
    buf[12..32].copy_from_slice(key.as_slice());
    buf[56..].copy_from_slice(&slot.to_be_bytes());
    U256::from_be_bytes(keccak256(buf).0)
}

struct World {
    keys: Vec<PrivateKeySigner>,
    senders: Vec<Address>,
    state: MemoryState,
    /// The same pre-state, but handing out code inline with each account.
    state_inline: MemoryState,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let keys: Vec<PrivateKeySigner> = (0..KEYED)
            .map(|i| {
                let seed = keccak256(format!("rtchain parallel executor test {i}"));
                PrivateKeySigner::from_bytes(&seed).expect("valid key")
            })
            .collect();
        let senders: Vec<Address> = keys.iter().map(|k| k.address()).collect();
        let mut state = MemoryState::new();
        let eth = U256::from(10u128.pow(18));
        for (i, sender) in senders.iter().enumerate() {
            let balance = match i {
                // Enough for a few transactions, then insufficient funds.
                6 => U256::from(200_000u128 * 2 * GWEI),
                // Not even one.
                7 => U256::from(10_000u128 * GWEI),
                _ => eth * U256::from(1000),
            };
            state.set_account(*sender, balance, 0, Bytes::new());
        }
        let token = addr(TOKEN);
        state.set_account(
            token,
            U256::ZERO,
            1,
            deployed_code(include_str!("../../../contracts/out/Token.json")),
        );
        let supply = U256::from(10u128.pow(24));
        state.set_storage(token, U256::from(2), supply * U256::from(KEYED));
        let amm = addr(AMM);
        state.set_account(
            amm,
            U256::ZERO,
            1,
            deployed_code(include_str!("../../../contracts/out/Amm.json")),
        );
        state.set_storage(amm, U256::ZERO, supply);
        state.set_storage(amm, U256::from(1), supply);
        for sender in &senders {
            state.set_storage(token, mapping_slot(*sender, 3), supply);
            state.set_storage(amm, mapping_slot(*sender, 2), supply / U256::from(100));
            state.set_storage(amm, mapping_slot(*sender, 3), supply / U256::from(100));
        }
        let contracts: [(u64, Vec<u8>, U256); 9] = [
            (COUNTER_AT, COUNTER.to_vec(), U256::ZERO),
            (COINBASE_READER_AT, COINBASE_READER.to_vec(), U256::ZERO),
            (BALANCE_READER_AT, BALANCE_READER.to_vec(), U256::ZERO),
            (CREATOR_KEEP_AT, creator_keep(), U256::ZERO),
            (CREATOR_DESTROY_AT, creator_destroy(), U256::ZERO),
            (CREATOR2_AT, creator2(), U256::ZERO),
            (DESTRUCTIBLE_AT, DESTRUCTIBLE.to_vec(), eth),
            (REVERTER_AT, REVERTER.to_vec(), U256::ZERO),
            (LOOPER_AT, LOOPER.to_vec(), U256::ZERO),
        ];
        for (at, code, balance) in contracts {
            state.set_account(addr(at), balance, 1, code.into());
        }
        state.set_storage(addr(COUNTER_AT), U256::ZERO, U256::from(7));
        let mut state_inline = state.clone();
        state_inline.set_inline_code(true);
        World {
            keys,
            senders,
            state,
            state_inline,
        }
    })
}

/// One generated transaction, before it is mapped onto the world.
#[derive(Debug, Clone)]
struct Op {
    kind: u8,
    a: u8,
    b: u8,
    amount: u64,
    flags: u8,
}

fn op() -> impl Strategy<Value = Op> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(|(kind, a, b, amount, flags)| Op {
            kind,
            a,
            b,
            amount,
            flags,
        })
}

/// Block-level choices.
#[derive(Debug, Clone)]
struct BlockParams {
    coinbase: u8,
    gas_limit: u8,
    base_fee: u8,
    gas_used: u16,
    logs: u8,
    inline_code: bool,
}

fn block_params() -> impl Strategy<Value = BlockParams> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u8>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(coinbase, gas_limit, base_fee, gas_used, logs, inline_code)| BlockParams {
                coinbase,
                gas_limit,
                base_fee,
                gas_used,
                logs,
                inline_code,
            },
        )
}

/// Which kinds of transaction a test generates (`Op::kind` modulo the list's length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transfer,
    Erc20,
    Amm,
    Counter,
    CoinbaseReader,
    BalanceReader,
    Create,
    Create2,
    Destruct,
    RevertOrLoop,
    Precompile,
    Delegation,
    Deploy,
}

const ALL_KINDS: &[Kind] = &[
    Kind::Transfer,
    Kind::Transfer,
    Kind::Transfer,
    Kind::Erc20,
    Kind::Erc20,
    Kind::Amm,
    Kind::Counter,
    Kind::CoinbaseReader,
    Kind::BalanceReader,
    Kind::Create,
    Kind::Create2,
    Kind::Destruct,
    Kind::RevertOrLoop,
    Kind::Precompile,
    Kind::Delegation,
    Kind::Deploy,
];

struct Built {
    ctx: BlockContext,
    txs: Vec<RecoveredTx>,
    gas_used: u64,
    logs: u64,
}

/// Targets of transfers and balance reads: recipients, senders, precompiles, contracts.
fn target(world: &World, coinbase: Address, b: u8) -> Address {
    match b % 12 {
        0..=3 => addr(RECIPIENTS[(b % 4) as usize]),
        4..=7 => world.senders[(b as usize / 4) % KEYED],
        8 => Address::with_last_byte(1 + b / 12 % 3),
        9 => coinbase,
        10 => addr(DESTRUCTIBLE_AT),
        _ => addr(COUNTER_AT),
    }
}

fn config_spec() -> revm::primitives::hardfork::SpecId {
    ExecConfig::dev(CHAIN_ID).spec
}

fn signed_authorization(
    world: &World,
    authority: usize,
    delegate: Address,
    nonce: u64,
    chain_id: u64,
) -> SignedAuthorization {
    type Key = (usize, Address, u64, u64);
    static CACHE: OnceLock<Mutex<HashMap<Key, SignedAuthorization>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (authority, delegate, nonce, chain_id);
    if let Some(auth) = cache.lock().expect("cache").get(&key) {
        return auth.clone();
    }
    let auth = Authorization {
        chain_id: U256::from(chain_id),
        address: delegate,
        nonce,
    };
    let signature = world.keys[authority]
        .sign_hash_sync(&auth.signature_hash())
        .expect("signing works");
    let signed = auth.into_signed(signature);
    cache.lock().expect("cache").insert(key, signed.clone());
    signed
}

fn build(params: &BlockParams, ops: &[Op], kinds: &[Kind]) -> Built {
    let world = world();
    let coinbase = match params.coinbase % 5 {
        0 => addr(FRESH_COINBASE),
        1 => world.senders[0],
        2 => addr(COUNTER_AT),
        3 => Address::ZERO,
        _ => world.senders[3],
    };
    let base_fee = [0, 7, GWEI as u64, 3 * GWEI as u64 / 2][(params.base_fee % 4) as usize];
    let gas_limit = match params.gas_limit % 8 {
        0 => 300_000,
        1 => 1_000_000,
        _ => 30_000_000,
    };
    let ctx = BlockContext {
        number: 7,
        timestamp: 1_700_000_000,
        beneficiary: coinbase,
        base_fee,
        gas_limit,
        prevrandao: B256::repeat_byte(0x42),
    };
    let mut nonces = [0u64; KEYED];
    let mut txs = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        // Mostly the funded senders; one in eight from the two poor ones.
        let sender_index = if op.a < 224 {
            op.a as usize % 6
        } else {
            6 + op.a as usize % 2
        };
        let sender = world.senders[sender_index];
        let expected = nonces[sender_index];
        // One in sixteen with a wrong nonce, too low or too high.
        let nonce = match (op.flags >> 2) & 15 {
            14 => expected.checked_sub(1).unwrap_or(expected + 5),
            15 => expected + 1,
            _ => expected,
        };
        let kind = kinds[op.kind as usize % kinds.len()];
        let b = op.b;
        let small_value = U256::from(op.amount % 1_000_000_000_000_000_000);
        let mut authorization_list = Vec::new();
        let (to, value, input, gas_limit): (TxKind, U256, Bytes, u64) = match kind {
            Kind::Transfer => {
                let to = target(world, coinbase, b);
                let value = if op.amount % 5 == 0 {
                    U256::ZERO
                } else {
                    small_value
                };
                let gas = if to.0[..19] == [0u8; 19] {
                    60_000
                } else {
                    21_000
                };
                (TxKind::Call(to), value, Bytes::new(), gas)
            }
            Kind::Erc20 => {
                let to = if b % 3 == 0 {
                    addr(RECIPIENTS[(b % 4) as usize])
                } else {
                    world.senders[(b as usize) % KEYED]
                };
                // Sometimes more than any balance: the transfer reverts.
                let amount =
                    U256::from(op.amount) * U256::from(if b % 7 == 0 { 1u128 << 64 } else { 1 });
                let mut data = vec![0xa9, 0x05, 0x9c, 0xbb];
                data.extend_from_slice(&B256::left_padding_from(to.as_slice()).0);
                data.extend_from_slice(&amount.to_be_bytes::<32>());
                (TxKind::Call(addr(TOKEN)), U256::ZERO, data.into(), 90_000)
            }
            Kind::Amm => {
                // swap(bool,uint256,uint256)
                let mut data = keccak256("swap(bool,uint256,uint256)")[..4].to_vec();
                data.extend_from_slice(&U256::from(b & 1).to_be_bytes::<32>());
                let amount_in = U256::from(op.amount % 10u64.pow(18) + 1)
                    * U256::from(if b % 11 == 0 { 1u128 << 80 } else { 1 });
                data.extend_from_slice(&amount_in.to_be_bytes::<32>());
                data.extend_from_slice(&U256::ZERO.to_be_bytes::<32>());
                (TxKind::Call(addr(AMM)), U256::ZERO, data.into(), 120_000)
            }
            Kind::Counter => (
                TxKind::Call(addr(COUNTER_AT)),
                small_value * U256::from(op.amount % 2),
                Bytes::new(),
                50_000,
            ),
            Kind::CoinbaseReader => (
                TxKind::Call(addr(COINBASE_READER_AT)),
                U256::ZERO,
                Bytes::new(),
                50_000,
            ),
            Kind::BalanceReader => (
                TxKind::Call(addr(BALANCE_READER_AT)),
                U256::ZERO,
                B256::left_padding_from(target(world, coinbase, b).as_slice())
                    .0
                    .to_vec()
                    .into(),
                50_000,
            ),
            Kind::Create => {
                let at = if b & 1 == 0 {
                    CREATOR_KEEP_AT
                } else {
                    CREATOR_DESTROY_AT
                };
                (TxKind::Call(addr(at)), U256::ZERO, Bytes::new(), 200_000)
            }
            Kind::Create2 => (
                TxKind::Call(addr(CREATOR2_AT)),
                U256::ZERO,
                U256::from(b % 4).to_be_bytes::<32>().to_vec().into(),
                200_000,
            ),
            Kind::Destruct => (
                TxKind::Call(addr(DESTRUCTIBLE_AT)),
                small_value,
                Bytes::new(),
                60_000,
            ),
            Kind::RevertOrLoop => {
                if b & 1 == 0 {
                    (
                        TxKind::Call(addr(REVERTER_AT)),
                        small_value,
                        Bytes::new(),
                        60_000,
                    )
                } else {
                    (
                        TxKind::Call(addr(LOOPER_AT)),
                        U256::ZERO,
                        Bytes::new(),
                        25_000 + op.amount % 50_000,
                    )
                }
            }
            Kind::Precompile => {
                let to = Address::with_last_byte(1 + b % 10);
                let data: Vec<u8> = op.amount.to_be_bytes().repeat(1 + (b as usize % 24));
                (
                    TxKind::Call(to),
                    small_value * U256::from(op.amount % 2),
                    data.into(),
                    200_000,
                )
            }
            Kind::Delegation => {
                let count = 1 + (b % 2) as usize;
                for j in 0..count {
                    let authority = (4 + (b as usize >> 1) + j) % KEYED;
                    let delegate = match (b >> 3) % 4 {
                        0 => addr(COUNTER_AT),
                        1 => addr(COINBASE_READER_AT),
                        2 => Address::ZERO,
                        _ => addr(DESTRUCTIBLE_AT),
                    };
                    // The sender's own authorization must carry its nonce after the bump.
                    let self_bump = u64::from(authority == sender_index);
                    let auth_nonce = match (b >> 5) % 4 {
                        0 => nonces[authority].wrapping_sub(1),
                        _ => nonces[authority] + self_bump,
                    };
                    let chain_id = match (op.flags >> 5) % 4 {
                        0 => 0,
                        1 => CHAIN_ID + 1,
                        _ => CHAIN_ID,
                    };
                    if auth_nonce == nonces[authority] + self_bump && chain_id != CHAIN_ID + 1 {
                        nonces[authority] += 1;
                    }
                    authorization_list.push(signed_authorization(
                        world, authority, delegate, auth_nonce, chain_id,
                    ));
                }
                let to = world.senders[(b as usize / 3) % KEYED];
                (TxKind::Call(to), small_value, Bytes::new(), 150_000)
            }
            Kind::Deploy => {
                let init: Vec<u8> = match b % 3 {
                    0 => CHILD_INIT.to_vec(),
                    1 => vec![0x5f, 0x5f, 0xfd],
                    _ => DESTRUCTIBLE.to_vec(),
                };
                (TxKind::Create, small_value, init.into(), 120_000)
            }
        };
        // Rarely: just the intrinsic gas, or less.
        let gas_limit = match op.flags >> 7 {
            1 if op.amount % 4 == 0 => 21_000 + (op.amount % 3_000),
            _ => gas_limit,
        };
        let (max_fee, tip) = if op.flags & 0x60 == 0x60 && op.amount % 3 == 0 {
            // Below any nonzero base fee.
            (5u128, 1u128)
        } else {
            (
                2 * GWEI + (op.amount % 5) as u128,
                (op.amount % 3) as u128 * GWEI / 2,
            )
        };
        let kind_type = if kind == Kind::Delegation {
            if authorization_list.is_empty() { 0 } else { 4 }
        } else {
            match op.flags & 3 {
                2 => 1, // legacy
                3 => 2, // EIP-2930
                _ => 0, // EIP-1559
            }
        };
        let signature = Signature::test_signature();
        let hash = keccak256((index as u64).to_be_bytes());
        let envelope = match (kind_type, to) {
            (4, TxKind::Call(to)) => TxEnvelope::Eip7702(Signed::new_unchecked(
                TxEip7702 {
                    chain_id: CHAIN_ID,
                    nonce,
                    gas_limit,
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: tip.min(max_fee),
                    to,
                    value,
                    access_list: AccessList::default(),
                    authorization_list,
                    input,
                },
                signature,
                hash,
            )),
            (1, to) => TxEnvelope::Legacy(Signed::new_unchecked(
                TxLegacy {
                    chain_id: Some(CHAIN_ID),
                    nonce,
                    gas_price: max_fee,
                    gas_limit,
                    to,
                    value,
                    input,
                },
                signature,
                hash,
            )),
            (2, to) => {
                let touched = match to {
                    TxKind::Call(to) => to,
                    TxKind::Create => addr(COUNTER_AT),
                };
                TxEnvelope::Eip2930(Signed::new_unchecked(
                    TxEip2930 {
                        chain_id: CHAIN_ID,
                        nonce,
                        gas_price: max_fee,
                        gas_limit,
                        to,
                        value,
                        access_list: AccessList(vec![AccessListItem {
                            address: touched,
                            storage_keys: vec![B256::ZERO],
                        }]),
                        input,
                    },
                    signature,
                    hash,
                ))
            }
            (_, to) => TxEnvelope::Eip1559(Signed::new_unchecked(
                TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce,
                    gas_limit,
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: tip.min(max_fee),
                    to,
                    value,
                    access_list: AccessList::default(),
                    input,
                },
                signature,
                hash,
            )),
        };
        // The chain goes on only if this one is likely included (a rejection for a static
        // rule would leave every later transaction of the sender with a nonce too high).
        let intrinsic = crate::tx::intrinsic_gas(&envelope, config_spec());
        if nonce == expected && gas_limit >= intrinsic && max_fee >= u128::from(base_fee) {
            nonces[sender_index] += 1;
        }
        txs.push(RecoveredTx {
            envelope,
            sender,
            hash,
            raw: Bytes::new(),
        });
    }
    Built {
        ctx,
        txs,
        gas_used: u64::from(params.gas_used) % 200_000,
        logs: u64::from(params.logs),
    }
}

/// The parallel executors every block runs through, created once (pools are long-lived, as in
/// the node). History-based fallback is off (threshold 100%) except in the last one, so most
/// runs really go through the parallel path.
fn executors() -> &'static [ParallelExecutor] {
    static EXECUTORS: OnceLock<Vec<ParallelExecutor>> = OnceLock::new();
    EXECUTORS.get_or_init(|| {
        let always = |threads| ParallelConfig {
            threads,
            min_batch_txs: 0,
            conflict_pct_max: 100,
            conflict_sample_txs: u32::MAX,
            min_avg_gas_limit: 0,
        };
        let stressed = |threads, stress| {
            let mut executor = ParallelExecutor::new(always(threads)).expect("pool");
            executor.stress = stress;
            executor
        };
        vec![
            ParallelExecutor::new(always(2)).expect("pool"),
            ParallelExecutor::new(always(4)).expect("pool"),
            stressed(
                3,
                Stress {
                    base_only: true,
                    never_direct: true,
                },
            ),
            stressed(
                2,
                Stress {
                    base_only: false,
                    never_direct: true,
                },
            ),
            ParallelExecutor::new(ParallelConfig {
                min_batch_txs: 0,
                conflict_sample_txs: 4,
                min_avg_gas_limit: 0,
                ..ParallelConfig::with_threads(2)
            })
            .expect("pool"),
        ]
    })
}

/// A canonical text of a diff that shows every field, in a fixed order.
fn canonical(diff: &StateDiff) -> String {
    let mut accounts: Vec<_> = diff.accounts.iter().collect();
    accounts.sort_by_key(|(address, _)| **address);
    let mut out = String::new();
    for (address, change) in accounts {
        let info = change.info.as_ref().map(|info| {
            (
                info.balance,
                info.nonce,
                info.code_hash,
                info.account_id,
                info.code.as_ref().map(|code| code.original_bytes()),
            )
        });
        let mut storage: Vec<_> = change.storage.iter().collect();
        storage.sort();
        out.push_str(&format!(
            "{address} {info:?} cleared={} {storage:?}\n",
            change.storage_cleared
        ));
    }
    let mut codes: Vec<_> = diff.codes.iter().collect();
    codes.sort();
    out.push_str(&format!("{codes:?}"));
    out
}

fn outcome_bytes(outcome: &TxOutcome) -> Vec<u8> {
    match outcome {
        TxOutcome::Included { tx, receipt } => {
            let mut bytes = vec![0];
            bytes.extend_from_slice(tx.hash.as_slice());
            bytes.extend_from_slice(&receipt.receipt.encoded_2718());
            bytes.extend_from_slice(&receipt.gas_used.to_be_bytes());
            bytes.extend_from_slice(&receipt.effective_gas_price.to_be_bytes());
            bytes.extend_from_slice(&receipt.first_log_index.to_be_bytes());
            if let Some(created) = receipt.contract_address {
                bytes.extend_from_slice(created.as_slice());
            }
            bytes
        }
        TxOutcome::Rejected { tx, error } => {
            let mut bytes = vec![1];
            bytes.extend_from_slice(tx.hash.as_slice());
            bytes.extend_from_slice(error.to_string().as_bytes());
            bytes
        }
        TxOutcome::Deferred { tx } => {
            let mut bytes = vec![2];
            bytes.extend_from_slice(tx.hash.as_slice());
            bytes
        }
    }
}

/// What the differential runs went through, printed by `coverage` (run with `--nocapture`).
struct Coverage {
    counts: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

static COVERAGE: Coverage = Coverage {
    counts: Mutex::new(std::collections::BTreeMap::new()),
};

impl Coverage {
    fn record(&self, stats: &BatchStats, result: &BatchResult) {
        let mut counts = self.counts.lock().expect("coverage");
        let mut add = |key: &'static str, n: u64| *counts.entry(key).or_default() += n;
        add("batches", 1);
        add("sequential batches", u64::from(stats.sequential.is_some()));
        add("speculation stopped", u64::from(stats.speculation_stopped));
        add("validated", stats.validated);
        add("reexecuted", stats.reexecuted);
        add("direct", stats.direct);
        for outcome in &result.outcomes {
            match outcome {
                TxOutcome::Included { receipt, .. } => {
                    add("included", 1);
                    add("failed (revert/halt)", u64::from(!receipt.receipt.status()));
                    add("created", u64::from(receipt.contract_address.is_some()));
                }
                TxOutcome::Rejected { error, .. } => {
                    add("rejected", 1);
                    add(
                        match error {
                            crate::tx::TxError::NonceTooLow { .. } => "rejected: nonce too low",
                            crate::tx::TxError::NonceTooHigh { .. } => "rejected: nonce too high",
                            crate::tx::TxError::InsufficientFunds { .. } => {
                                "rejected: insufficient funds"
                            }
                            crate::tx::TxError::FeeCapTooLow { .. } => "rejected: fee cap",
                            crate::tx::TxError::IntrinsicGasTooLow { .. } => {
                                "rejected: intrinsic gas"
                            }
                            _ => "rejected: other",
                        },
                        1,
                    );
                }
                TxOutcome::Deferred { .. } => add("deferred", 1),
            }
        }
        add(
            "accounts removed",
            result
                .diff
                .accounts
                .values()
                .filter(|c| c.info.is_none())
                .count() as u64,
        );
    }
}

/// Executes `built` sequentially and through every parallel executor; all must agree.
fn check(built: &Built, inline_code: bool) -> Result<(), TestCaseError> {
    let world = world();
    let state = if inline_code {
        &world.state_inline
    } else {
        &world.state
    };
    let config = ExecConfig::dev(CHAIN_ID);
    let expected = execute_batch(
        &config,
        &built.ctx,
        state,
        built.txs.clone(),
        built.gas_used,
        built.logs,
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let expected_bytes: Vec<Vec<u8>> = expected.outcomes.iter().map(outcome_bytes).collect();
    let expected_diff = canonical(&expected.diff);
    let mut after = state.clone();
    after.apply(&expected.diff);
    let expected_root = after.state_root();
    for (n, executor) in executors().iter().enumerate() {
        let (got, stats) = executor
            .execute_batch_with_stats(
                &config,
                &built.ctx,
                state,
                built.txs.clone(),
                built.gas_used,
                built.logs,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        COVERAGE.record(&stats, &got);
        let got_bytes: Vec<Vec<u8>> = got.outcomes.iter().map(outcome_bytes).collect();
        prop_assert_eq!(&got_bytes, &expected_bytes, "executor {}: outcomes", n);
        prop_assert_eq!(got.gas_used, expected.gas_used, "executor {}: gas", n);
        prop_assert_eq!(got.logs, expected.logs, "executor {}: logs", n);
        prop_assert_eq!(
            canonical(&got.diff),
            expected_diff.clone(),
            "executor {}: diff",
            n
        );
        prop_assert_eq!(&got, &expected, "executor {}: result", n);
        let mut after = state.clone();
        after.apply(&got.diff);
        prop_assert_eq!(
            after.state_root(),
            expected_root,
            "executor {}: state root",
            n
        );
    }
    Ok(())
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Shrinking a failing block down to a few transactions is worth the time.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(3_000))]

    /// Every kind of transaction at once, over both kinds of base reader.
    #[test]
    fn mixed_blocks_equal_sequential(
        params in block_params(),
        ops in prop::collection::vec(op(), 1..48),
    ) {
        check(&build(&params, &ops, ALL_KINDS), params.inline_code)?;
    }
}

proptest! {
    #![proptest_config(cases(500))]

    /// Independent and chained transfers among few senders: nonce chains, shared recipients,
    /// the beneficiary as sender or recipient.
    #[test]
    fn transfers_and_nonce_chains_equal_sequential(
        params in block_params(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        check(&build(&params, &ops, &[Kind::Transfer]), false)?;
    }

    /// ERC-20 transfers to shared recipients, and the hot AMM pair.
    #[test]
    fn erc20_and_amm_equal_sequential(
        params in block_params(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        check(&build(&params, &ops, &[Kind::Erc20, Kind::Erc20, Kind::Amm]), false)?;
    }

    /// Code and account lifecycle: CREATE, CREATE2 collisions, SELFDESTRUCT, deployments,
    /// EIP-7702 delegations, precompiles, reads of the beneficiary.
    #[test]
    fn lifecycle_and_coinbase_equal_sequential(
        params in block_params(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        check(
            &build(
                &params,
                &ops,
                &[
                    Kind::Create,
                    Kind::Create2,
                    Kind::Destruct,
                    Kind::Deploy,
                    Kind::Delegation,
                    Kind::Precompile,
                    Kind::CoinbaseReader,
                    Kind::BalanceReader,
                    Kind::Transfer,
                ],
            ),
            params.inline_code,
        )?;
    }
}

#[test]
#[ignore = "prints what a few hundred random blocks exercise"]
fn coverage() {
    let mut runner = proptest::test_runner::TestRunner::new(cases(300));
    runner
        .run(
            &(block_params(), prop::collection::vec(op(), 1..48)),
            |(params, ops)| check(&build(&params, &ops, ALL_KINDS), params.inline_code),
        )
        .expect("equal");
    for (key, n) in COVERAGE.counts.lock().expect("coverage").iter() {
        println!("{key}: {n}");
    }
}

fn fixed_ops(n: usize, kind: u8) -> Vec<Op> {
    (0..n)
        .map(|i| Op {
            kind,
            a: i as u8,
            b: (i * 7) as u8,
            amount: 1_000 + i as u64,
            flags: 0,
        })
        .collect()
}

fn default_params() -> BlockParams {
    BlockParams {
        coinbase: 0,
        gas_limit: 2,
        base_fee: 2,
        gas_used: 0,
        logs: 0,
        inline_code: false,
    }
}

#[test]
fn a_hot_pair_stops_speculating_and_stays_equal() {
    let built = build(&default_params(), &fixed_ops(400, 0), &[Kind::Amm]);
    check(&built, false).expect("equal");
    let executor = ParallelExecutor::new(ParallelConfig::with_threads(2)).expect("pool");
    let config = ExecConfig::dev(CHAIN_ID);
    let run = |executor: &ParallelExecutor| {
        executor
            .execute_batch_with_stats(&config, &built.ctx, &world().state, built.txs.clone(), 0, 0)
            .expect("executes")
    };
    let (_, stats) = run(&executor);
    assert!(stats.sequential.is_none(), "{stats:?}");
    // Whether the 2 threads collided enough to stop depends on timing; when they did, the
    // next batch starts sequential for its history.
    if stats.speculation_stopped {
        let (_, next) = run(&executor);
        assert_eq!(next.sequential, Some(SequentialReason::ConflictHistory));
    }
}

#[test]
fn small_batches_and_one_thread_run_sequentially() {
    let config = ExecConfig::dev(CHAIN_ID);
    let built = build(&default_params(), &fixed_ops(4, 0), &[Kind::Transfer]);
    let run = |executor: ParallelExecutor| {
        executor
            .execute_batch_with_stats(&config, &built.ctx, &world().state, built.txs.clone(), 0, 0)
            .expect("executes")
            .1
            .sequential
    };
    assert_eq!(
        run(ParallelExecutor::new(ParallelConfig::with_threads(2)).expect("pool")),
        Some(SequentialReason::SmallBatch)
    );
    assert_eq!(
        run(ParallelExecutor::new(ParallelConfig::with_threads(1)).expect("pool")),
        Some(SequentialReason::OneThread)
    );
    assert_eq!(
        run(ParallelExecutor::new(ParallelConfig {
            min_batch_txs: 2,
            ..ParallelConfig::with_threads(2)
        })
        .expect("pool")),
        Some(SequentialReason::CheapTxs)
    );
}

#[test]
fn a_blocks_first_batch_runs_its_system_calls_sequentially_and_equal() {
    use crate::system::{
        BEACON_ROOTS_ADDRESS, BEACON_ROOTS_CODE, HISTORY_STORAGE_ADDRESS, HISTORY_STORAGE_CODE,
    };
    let mut state = world().state.clone();
    state.set_account(
        BEACON_ROOTS_ADDRESS,
        U256::ZERO,
        1,
        BEACON_ROOTS_CODE.clone(),
    );
    state.set_account(
        HISTORY_STORAGE_ADDRESS,
        U256::ZERO,
        1,
        HISTORY_STORAGE_CODE.clone(),
    );
    let built = build(&default_params(), &fixed_ops(200, 0), &[Kind::Erc20]);
    let config = ExecConfig::dev(CHAIN_ID);
    let executor = ParallelExecutor::new(ParallelConfig::with_threads(2)).expect("pool");
    let run = |gas_used: u64| {
        executor
            .execute_batch_with_stats(&config, &built.ctx, &state, built.txs.clone(), gas_used, 0)
            .expect("executes")
    };
    let (first, stats) = run(0);
    assert_eq!(stats.sequential, Some(SequentialReason::BlockStart));
    let sequential =
        execute_batch(&config, &built.ctx, &state, built.txs.clone(), 0, 0).expect("executes");
    assert_eq!(first, sequential);
    assert!(first.diff.accounts.contains_key(&HISTORY_STORAGE_ADDRESS));
    // Later batches of the block speculate as before.
    let (later, stats) = run(21_000);
    assert_ne!(stats.sequential, Some(SequentialReason::BlockStart));
    assert!(!later.diff.accounts.contains_key(&HISTORY_STORAGE_ADDRESS));
}

#[test]
fn independent_transfers_validate_without_reexecution() {
    // One transaction per sender, to distinct fresh recipients: nothing to conflict on but the
    // beneficiary, whose fees are lazy.
    let world = world();
    let built = build(&default_params(), &fixed_ops(6, 0), &[Kind::Transfer]);
    let mut txs = built.txs.clone();
    for (i, tx) in txs.iter_mut().enumerate() {
        tx.sender = world.senders[i];
        if let TxEnvelope::Eip1559(signed) = &mut tx.envelope {
            let mut inner = signed.tx().clone();
            inner.nonce = 0;
            inner.to = TxKind::Call(addr(0x6000 + i as u64));
            *signed = Signed::new_unchecked(inner, *signed.signature(), tx.hash);
        }
    }
    let executor = &executors()[3];
    let (result, stats) = executor
        .execute_batch_with_stats(
            &ExecConfig::dev(CHAIN_ID),
            &built.ctx,
            &world.state,
            txs,
            0,
            0,
        )
        .expect("executes");
    assert!(
        result
            .outcomes
            .iter()
            .all(|o| matches!(o, TxOutcome::Included { .. })),
        "{:?}",
        result.outcomes
    );
    assert_eq!(stats.reexecuted, 0, "{stats:?}");
    assert_eq!(stats.validated, 6, "{stats:?}");
}

/// Where the time of a parallel batch goes (run with `--run-ignored only --no-capture`):
/// sequential execution, speculation alone on one thread, and validation plus commit alone.
#[test]
#[ignore = "timing breakdown for tuning, not a check"]
fn timing_breakdown() {
    use std::time::Instant;
    let n = 20_000usize;
    let mut state = MemoryState::new();
    let senders: Vec<Address> = (0..n).map(|i| addr(0x10_0000 + i as u64)).collect();
    for s in &senders {
        state.set_account(*s, U256::from(10u128.pow(24)), 0, Bytes::new());
    }
    let txs: Vec<RecoveredTx> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let hash = keccak256((i as u64).to_be_bytes());
            RecoveredTx {
                envelope: TxEnvelope::Eip1559(Signed::new_unchecked(
                    TxEip1559 {
                        chain_id: CHAIN_ID,
                        nonce: 0,
                        gas_limit: 21_000,
                        max_fee_per_gas: 2 * GWEI,
                        max_priority_fee_per_gas: GWEI,
                        to: TxKind::Call(addr(0x20_0000 + i as u64)),
                        value: U256::from(1),
                        access_list: AccessList::default(),
                        input: Bytes::new(),
                    },
                    Signature::test_signature(),
                    hash,
                )),
                sender: *s,
                hash,
                raw: Bytes::new(),
            }
        })
        .collect();
    let config = ExecConfig::dev(CHAIN_ID);
    let mut params = default_params();
    params.coinbase = 0;
    let ctx = BlockContext {
        gas_limit: u64::MAX / 2,
        ..build(&params, &[], &[Kind::Transfer]).ctx
    };
    let executor = ParallelExecutor::new(ParallelConfig {
        min_avg_gas_limit: 0,
        ..ParallelConfig::with_threads(2)
    })
    .unwrap();
    for _ in 0..4 {
        let t = Instant::now();
        let seq = execute_batch(&config, &ctx, &state, txs.clone(), 0, 0).unwrap();
        let t_seq = t.elapsed();
        let batch = Batch::new(&txs, &state, 1);
        let tuning = ParallelConfig::with_threads(2);
        let run = Run {
            exec: &config,
            block: &ctx,
            tuning: &tuning,
            base_only: false,
            never_direct: true,
        };
        let mut evm = run.spec_evm(&batch);
        let t = Instant::now();
        for i in 0..n as u32 {
            batch.claim(i, RUNNING);
            speculate(&mut evm, &batch, i);
        }
        let t_spec = t.elapsed();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let t = Instant::now();
        let (_, _, stats) = run.execute(&pool, &batch, 0, 0).unwrap();
        let t_commit = t.elapsed();
        let t = Instant::now();
        drop(batch);
        let t_drop = t.elapsed();
        let t = Instant::now();
        let (par, pstats) = executor
            .execute_batch_with_stats(&config, &ctx, &state, txs.clone(), 0, 0)
            .unwrap();
        let t_par = t.elapsed();
        assert_eq!(par, seq);
        println!(
            "per tx: sequential {:?}, speculate {:?}, validate+commit {:?} ({} validated), \
             drop {:?}, parallel(2) {:?} {pstats:?}",
            t_seq / n as u32,
            t_spec / n as u32,
            t_commit / n as u32,
            stats.validated,
            t_drop / n as u32,
            t_par / n as u32,
        );
    }
}
