//! The Prague system contracts on a running devnet: every block's start stores its parent's hash
//! (EIP-2935) and its parent beacon root (EIP-4788), blocks with transactions and empty ones
//! alike, so that contracts read them as on Ethereum; the header carries the same beacon root.

mod common;

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, TxKind, U256, address};
use common::{Devnet, Rpc, dev_signer, eip1559, quantity_u64, sign, wait_for};
use serde_json::{Value, json};

const HISTORY_STORAGE: Address = address!("0x0000F90827F1C53a10cb7A02335B175320002935");
const BEACON_ROOTS: Address = address!("0x000F3df6D732807Ef1319fB7B8bB8522d0Beac02");

fn word(n: u64) -> Bytes {
    Bytes::from(U256::from(n).to_be_bytes::<32>().to_vec())
}

fn tag(number: u64) -> Value {
    json!(format!("{number:#x}"))
}

async fn block(rpc: &Rpc, number: u64) -> Value {
    rpc.ok("eth_getBlockByNumber", json!([tag(number), false]))
        .await
}

fn hash_field(block: &Value, field: &str) -> B256 {
    block[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {block}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_stores_its_parents_hash_and_beacon_root() {
    let node = Devnet::start(&[]);
    let rpc = Rpc::new(&node.url());
    for code_at in [HISTORY_STORAGE, BEACON_ROOTS] {
        assert!(!rpc.code(code_at).await.is_empty(), "no code at {code_at}");
    }
    // Blocks with transactions, then idle ones (the devnet seals empty blocks when idle).
    let alice = dev_signer(0);
    for nonce in 0..5 {
        let to = TxKind::Call(Address::with_last_byte(0x77));
        let tx = sign(
            &alice,
            eip1559(nonce, to, U256::from(1), Bytes::new(), 21_000),
        );
        rpc.send_raw_sync(&tx).await.expect("transfer");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let busy_until = rpc.block_number().await.unwrap();
    wait_for("idle blocks", Duration::from_secs(30), || {
        let rpc = &rpc;
        async move { (rpc.block_number().await.ok()? >= busy_until + 5).then_some(()) }
    })
    .await;
    let head = rpc.block_number().await.unwrap();

    let (mut empty, mut full) = (0, 0);
    for number in 1..head {
        let b = block(&rpc, number).await;
        if b["transactions"].as_array().unwrap().is_empty() {
            empty += 1;
        } else {
            full += 1;
        }
        // At the newest state and at the block after it, the contract answers the block's hash.
        let hash = hash_field(&b, "hash");
        for at in [json!("latest"), tag(number + 1)] {
            let got = rpc
                .ok(
                    "eth_call",
                    json!([{"to": HISTORY_STORAGE, "data": word(number)}, at]),
                )
                .await;
            assert_eq!(
                got.as_str().unwrap().parse::<B256>().unwrap(),
                hash,
                "EIP-2935 answer for block {number} at {at}"
            );
        }
        // The beacon root the block started with, by its timestamp, as its header says (zero
        // without an L1: there is no L1 origin).
        let timestamp = quantity_u64(&b["timestamp"]);
        let root = hash_field(&b, "parentBeaconBlockRoot");
        assert_eq!(root, B256::ZERO);
        let got = rpc
            .ok(
                "eth_call",
                json!([{"to": BEACON_ROOTS, "data": word(timestamp)}, tag(number)]),
            )
            .await;
        assert_eq!(got.as_str().unwrap().parse::<B256>().unwrap(), root);
    }
    assert!(
        empty > 0 && full > 0,
        "both kinds of blocks: {empty} empty, {full} with transactions"
    );
    // A timestamp no block had is refused by the contract, as on Ethereum.
    let never = rpc
        .call(
            "eth_call",
            json!([{"to": BEACON_ROOTS, "data": word(12_345)}, "latest"]),
        )
        .await;
    assert!(never.is_err(), "{never:?}");
    // And a block number the contract does not serve (the current one) reverts too.
    let current = rpc
        .call(
            "eth_call",
            json!([{"to": HISTORY_STORAGE, "data": word(head + 100)}, "latest"]),
        )
        .await;
    assert!(current.is_err(), "{current:?}");
}
