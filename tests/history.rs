//! Historical state through JSON-RPC on a real devnet: reads, calls and estimates at old blocks
//! (by number and by hash, EIP-1898) equal what was read when those blocks were the newest,
//! across a restart; reads below the kept window name the oldest block kept.

mod common;

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, Bytes, TxKind, U256},
    sol_types::SolCall,
};
use common::{
    Devnet, Rpc, RpcFailure, Token, dev_signer, eip1559, quantity, quantity_u64, sign,
    token_deploy_input, wait_for,
};
use serde_json::{Value, json};

const RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the test reads at one block.
#[derive(Debug, Clone, PartialEq)]
struct Reads {
    eth: U256,
    tokens: U256,
    nonce: u64,
    code_len: usize,
}

async fn reads_at(
    rpc: &Rpc,
    at: &Value,
    token: Address,
    holder: Address,
    sender: Address,
) -> Reads {
    let eth = quantity(&rpc.ok("eth_getBalance", json!([holder, at])).await);
    let data = Bytes::from(Token::balanceOfCall(holder).abi_encode());
    let out = rpc
        .ok("eth_call", json!([{"to": token, "data": data}, at]))
        .await;
    let tokens = U256::from_str_radix(out.as_str().unwrap().trim_start_matches("0x"), 16)
        .unwrap_or_default();
    let nonce = quantity_u64(&rpc.ok("eth_getTransactionCount", json!([sender, at])).await);
    let code = rpc.ok("eth_getCode", json!([token, at])).await;
    let code_len = (code.as_str().unwrap().len() - 2) / 2;
    Reads {
        eth,
        tokens,
        nonce,
        code_len,
    }
}

/// Reads again at each block, by number and by hash, and compares with what was read then.
async fn check(
    rpc: &Rpc,
    seen: &[(u64, B256, Reads)],
    token: Address,
    holder: Address,
    sender: Address,
) {
    for (number, hash, at_the_time) in seen {
        let by_number = reads_at(rpc, &number_tag(*number), token, holder, sender).await;
        assert_eq!(&by_number, at_the_time, "block {number} by number");
        let by_hash = json!({"blockHash": hash, "requireCanonical": true});
        let by_hash = reads_at(rpc, &by_hash, token, holder, sender).await;
        assert_eq!(&by_hash, at_the_time, "block {number} by hash");
    }
}

fn number_tag(number: u64) -> Value {
    json!(format!("{number:#x}"))
}

async fn wait_head_at_least(rpc: &Rpc, number: u64) {
    wait_for(
        &format!("block {number}"),
        Duration::from_secs(30),
        || async move { (rpc.block_number().await.ok()? >= number).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_calls_and_estimates_at_old_blocks_equal_what_was_read_at_the_time() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut node = Devnet::start_in(&dir, &[]);
    let rpc = Rpc::new(&node.url());
    let alice = dev_signer(0);
    let bob = dev_signer(1).address();

    let supply = U256::from(1_000_000u64);
    let deploy = sign(
        &alice,
        eip1559(
            0,
            TxKind::Create,
            U256::ZERO,
            token_deploy_input("T", "T", supply),
            2_000_000,
        ),
    );
    rpc.send_raw(&deploy).await.unwrap();
    let deployed = rpc.wait_receipt(deploy.hash, RECEIPT_TIMEOUT).await;
    let token = deployed.contract_address.expect("contract address");
    let before_deploy = deployed.block_number.unwrap() - 1;

    // Five rounds, each in its own block: ETH and tokens to Bob; read at that block at once.
    let mut seen: Vec<(u64, B256, Reads)> = Vec::new();
    let mut nonce = 1;
    for round in 1..=5u64 {
        let pay = sign(
            &alice,
            eip1559(
                nonce,
                TxKind::Call(bob),
                U256::from(round * 1_000),
                Bytes::new(),
                21_000,
            ),
        );
        let give = sign(
            &alice,
            eip1559(
                nonce + 1,
                TxKind::Call(token),
                U256::ZERO,
                Token::transferCall {
                    to: bob,
                    value: U256::from(round * 100),
                }
                .abi_encode()
                .into(),
                100_000,
            ),
        );
        nonce += 2;
        rpc.send_raw(&pay).await.unwrap();
        rpc.send_raw(&give).await.unwrap();
        let receipt = rpc.wait_receipt(give.hash, RECEIPT_TIMEOUT).await;
        assert_eq!(receipt.status, 1);
        let number = receipt.block_number.unwrap();
        let reads = reads_at(&rpc, &number_tag(number), token, bob, alice.address()).await;
        seen.push((number, receipt.block_hash.unwrap(), reads));
    }
    // The test is only as good as the reads differ from block to block.
    for pair in seen.windows(2) {
        assert!(pair[0].0 < pair[1].0, "rounds share a block: {pair:?}");
        assert!(pair[0].2.tokens < pair[1].2.tokens && pair[0].2.eth < pair[1].2.eth);
    }
    assert_eq!(seen[0].2.tokens, U256::from(100));

    wait_head_at_least(&rpc, seen.last().unwrap().0 + 3).await;
    check(&rpc, &seen, token, bob, alice.address()).await;

    // Before the deployment, the token has no code: a call answers empty data.
    let empty = reads_at(
        &rpc,
        &number_tag(before_deploy),
        token,
        bob,
        alice.address(),
    )
    .await;
    assert_eq!(empty.code_len, 0);
    assert_eq!(empty.tokens, U256::ZERO);

    // eth_estimateGas runs on the block's state: Bob cannot send at the first round what he
    // holds at the last, but can at the last.
    let spend = Token::transferCall {
        to: alice.address(),
        value: seen[4].2.tokens,
    }
    .abi_encode();
    let request = json!({"from": bob, "to": token, "data": Bytes::from(spend)});
    let at_last = rpc
        .call("eth_estimateGas", json!([request, number_tag(seen[4].0)]))
        .await;
    assert!(at_last.is_ok(), "{at_last:?}");
    let at_first = rpc
        .call("eth_estimateGas", json!([request, number_tag(seen[0].0)]))
        .await;
    assert!(
        matches!(&at_first, Err(RpcFailure::Error { code: 3, .. })),
        "{at_first:?}"
    );
    // Proofs need the trie of that block, which is not kept: a clear refusal.
    let proof = rpc
        .call("eth_getProof", json!([bob, [], number_tag(seen[0].0)]))
        .await;
    match proof {
        Err(RpcFailure::Error { code, message, .. }) => {
            assert_eq!(code, -32000);
            assert!(
                message.contains("eth_getProof is served at the newest"),
                "{message}"
            );
        }
        other => panic!("eth_getProof at an old block: {other:?}"),
    }

    // History is on disk: the same answers after a restart.
    node.terminate();
    let node = Devnet::start_in(&dir, &[]);
    let rpc = Rpc::new(&node.url());
    check(&rpc, &seen, token, bob, alice.address()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_below_the_window_name_the_oldest_block_kept() {
    let node = Devnet::start(&["--history-blocks", "3"]);
    let rpc = Rpc::new(&node.url());
    let alice = dev_signer(0);
    let bob = dev_signer(1).address();
    for nonce in 0..10 {
        let pay = sign(
            &alice,
            eip1559(
                nonce,
                TxKind::Call(bob),
                U256::from(1),
                Bytes::new(),
                21_000,
            ),
        );
        rpc.send_raw(&pay).await.unwrap();
        rpc.wait_receipt(pay.hash, RECEIPT_TIMEOUT).await;
    }
    let head = rpc.block_number().await.unwrap();
    assert!(head >= 10, "head {head}");
    let at_genesis = rpc.call("eth_getBalance", json!([bob, "earliest"])).await;
    let Err(RpcFailure::Error { code, message, .. }) = at_genesis else {
        panic!("a read at genesis below a 3-block window: {at_genesis:?}");
    };
    assert_eq!(code, -32000);
    let oldest: u64 = message
        .split("the oldest block this node keeps is ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no oldest block in {message:?}"));
    assert!(
        oldest > 0 && oldest + 3 >= head.saturating_sub(4),
        "oldest {oldest}, head {head}"
    );
    // The oldest kept block reads; the one below it does not.
    rpc.ok("eth_getBalance", json!([bob, number_tag(oldest)]))
        .await;
    assert!(
        rpc.call("eth_getBalance", json!([bob, number_tag(oldest - 1)]))
            .await
            .is_err()
    );
    // Tracing a block needs its parent's state: within the window it traces, below it the
    // error names the oldest block kept.
    let traced = rpc
        .ok(
            "debug_traceBlockByNumber",
            json!([number_tag(head), {"tracer": "callTracer"}]),
        )
        .await;
    assert!(traced.is_array(), "{traced}");
    match rpc
        .call("debug_traceBlockByNumber", json!([number_tag(1)]))
        .await
    {
        Err(RpcFailure::Error {
            code: -32000,
            message,
            ..
        }) => {
            assert!(
                message.contains("the oldest block this node keeps is"),
                "{message}"
            );
        }
        other => panic!("tracing block 1 below the window: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_requests_that_cannot_be_answered_get_geths_errors() {
    let node = Devnet::start(&[]);
    let rpc = Rpc::new(&node.url());
    let alice = dev_signer(0);
    let pay = sign(
        &alice,
        eip1559(
            0,
            TxKind::Call(dev_signer(1).address()),
            U256::from(1),
            Bytes::new(),
            21_000,
        ),
    );
    rpc.send_raw(&pay).await.unwrap();
    rpc.wait_receipt(pay.hash, RECEIPT_TIMEOUT).await;
    let expect = |answer: Result<Value, RpcFailure>, want_code: i64, want: &str| match answer {
        Err(RpcFailure::Error { code, message, .. }) => {
            assert_eq!(code, want_code, "{message}");
            assert!(message.contains(want), "{message:?} lacks {want:?}");
        }
        other => panic!("expected error {want_code} {want:?}, got {other:?}"),
    };
    expect(
        rpc.call("debug_traceTransaction", json!([B256::repeat_byte(9)]))
            .await,
        -32000,
        "transaction not found",
    );
    expect(
        rpc.call(
            "debug_traceTransaction",
            json!([pay.hash, {"tracer": "noSuchTracer"}]),
        )
        .await,
        -32602,
        "tracer \"noSuchTracer\" is not supported",
    );
    expect(
        rpc.call("debug_traceBlockByNumber", json!(["0xffffff"]))
            .await,
        -32000,
        "block #16777215 not found",
    );
    // A plain transfer runs no code: the struct logger answers no steps, the call tracer one
    // frame.
    let steps = rpc.ok("debug_traceTransaction", json!([pay.hash])).await;
    assert_eq!(steps["failed"], false);
    assert_eq!(steps["gas"], 21_000);
    assert_eq!(steps["structLogs"], json!([]));
    let call = rpc
        .ok(
            "debug_traceTransaction",
            json!([pay.hash, {"tracer": "callTracer"}]),
        )
        .await;
    assert_eq!(call["type"], "CALL");
    assert_eq!(call["value"], "0x1");
}
