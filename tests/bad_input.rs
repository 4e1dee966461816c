//! Bad input gets its documented JSON-RPC error (docs/rpc.md, "Errors for bad input") and the
//! node keeps serving: after every case, eth_blockNumber must still answer.
//!
//! Each test collects every mismatch and reports them together, so that one run shows all
//! that is wrong.

mod common;

use std::time::Duration;

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy},
    eips::eip2718::Encodable2718,
    network::TxSignerSync,
    primitives::{Bytes, Signature, TxKind, U256, keccak256},
    signers::local::PrivateKeySigner,
};
use common::{
    CHAIN_ID, Devnet, GWEI, Rpc, RpcFailure, dev_signer, eip1559, raw_rpc, reqwest_lite, sign,
    wait_for,
};
use serde_json::{Value, json};

/// geth's code for transaction refusals ("nonce too low", ...).
const SERVER_ERROR: i64 = -32000;
/// secp256k1's group order n.
const SECP256K1_N: U256 = U256::from_be_slice(&[
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
]);
/// rtchain's defaults (src/config.rs, exec/src/config.rs, rpc/src/lib.rs).
const BLOCK_GAS_LIMIT: u64 = 300_000_000;
const MAX_TX_BYTES: usize = 128 * 1024;
const MAX_REQUEST_BODY_BYTES: usize = 5 << 20;
const MAX_BATCH_LEN: usize = 100;
const MAX_QUEUED_PER_SENDER: u64 = 64;

/// Mismatches found so far.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// `answer` must be a JSON-RPC error with `code` whose message starts with `message`.
    fn error(&mut self, case: &str, answer: &Value, code: i64, message: &str) {
        let got_code = answer["error"]["code"].as_i64();
        let got_message = answer["error"]["message"].as_str().unwrap_or_default();
        if got_code != Some(code) || !got_message.starts_with(message) {
            self.failures.push(format!(
                "{case}: expected error {code} \"{message}...\", got {answer}"
            ));
        } else {
            println!("ok   {case}: {code} {got_message}");
        }
    }

    /// Like [`Checks::error`], for a failure from [`Rpc`].
    fn failure(
        &mut self,
        case: &str,
        result: Result<impl std::fmt::Debug, RpcFailure>,
        code: i64,
        message: &str,
    ) {
        match result {
            Err(RpcFailure::Error {
                code: c,
                message: m,
                ..
            }) if c == code && m.starts_with(message) => {
                println!("ok   {case}: {c} {m}");
            }
            other => self.failures.push(format!(
                "{case}: expected error {code} \"{message}...\", got {other:?}"
            )),
        }
    }

    /// The node still answers a plain call.
    async fn serving(&mut self, rpc: &Rpc, after: &str) {
        if let Err(e) = rpc.block_number().await {
            self.failures
                .push(format!("after {after}: eth_blockNumber failed: {e}"));
        }
    }

    fn assert_none(self) {
        assert!(
            self.failures.is_empty(),
            "{} bad-input case(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn request(method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string()
}

/// Signs `tx` and re-encodes it with `signature` in place of the real one.
fn with_signature(tx: TxEip1559, signature: Signature) -> Bytes {
    let envelope: TxEnvelope = tx.into_signed(signature).into();
    envelope.encoded_2718().into()
}

#[tokio::test]
async fn malformed_requests_get_json_rpc_errors() {
    let node = Devnet::start(&[]);
    let url = node.url();
    let rpc = Rpc::new(&url);
    let mut checks = Checks::default();

    let answer = raw_rpc(
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber""#,
    )
    .await;
    checks.error("truncated JSON", &answer, -32700, "Parse error");
    checks.serving(&rpc, "truncated JSON").await;

    let (status, text) = reqwest_lite::Client::new()
        .post_raw(&url, "this is not JSON")
        .await;
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    checks.error("not JSON", &answer, -32700, "Parse error");
    if status != 400 {
        checks
            .failures
            .push(format!("not JSON: HTTP {status}, expected 400"));
    }
    checks.serving(&rpc, "not JSON").await;

    let answer = raw_rpc(&url, r#"{"jsonrpc":"2.0","id":1}"#).await;
    checks.error("JSON without a method", &answer, -32600, "Invalid request");
    checks.serving(&rpc, "JSON without a method").await;

    let answer = raw_rpc(&url, &request("eth_fillTransaction", json!([{}]))).await;
    checks.error(
        "unknown method eth_fillTransaction",
        &answer,
        -32601,
        "the method eth_fillTransaction does not exist/is not available",
    );
    checks.serving(&rpc, "unknown method").await;

    let answer = raw_rpc(&url, &request("eth_sendRawTransaction", json!(["0xzz"]))).await;
    checks.error("raw transaction that is not hex", &answer, -32602, "");
    checks.serving(&rpc, "non-hex raw transaction").await;

    let (status, answer) = post_oversized(&url, MAX_REQUEST_BODY_BYTES + (1 << 20)).await;
    if status != 413 {
        checks.failures.push(format!(
            "request body over {MAX_REQUEST_BODY_BYTES} bytes: HTTP {status}, expected 413"
        ));
    }
    checks.error(
        "request body over the limit",
        &answer,
        -32007,
        "Request is too big",
    );
    let limit = format!("Exceeded max limit of {MAX_REQUEST_BODY_BYTES}");
    if answer["error"]["data"] != Value::String(limit.clone()) {
        checks.failures.push(format!(
            "request body over the limit: data should be {limit:?}: {answer}"
        ));
    }
    checks.serving(&rpc, "oversized request body").await;

    let batch = |n: usize| {
        let calls: Vec<Value> =
            (0..n).map(|id| json!({ "jsonrpc": "2.0", "id": id, "method": "eth_blockNumber", "params": [] })).collect();
        Value::Array(calls).to_string()
    };
    let answer = raw_rpc(&url, &batch(MAX_BATCH_LEN + 1)).await;
    checks.error(
        "batch of 101 calls",
        &answer,
        -32010,
        "The batch request was too large",
    );
    checks.serving(&rpc, "too-large batch").await;
    let answer = raw_rpc(&url, &batch(MAX_BATCH_LEN)).await;
    match answer.as_array() {
        Some(answers)
            if answers.len() == MAX_BATCH_LEN
                && answers.iter().all(|a| a.get("result").is_some()) =>
        {
            println!("ok   batch of {MAX_BATCH_LEN} calls answered");
        }
        _ => checks.failures.push(format!(
            "a batch of exactly {MAX_BATCH_LEN} calls must be answered: {answer}"
        )),
    }

    checks.assert_none();
}

#[tokio::test]
async fn invalid_transactions_are_refused_with_geths_errors() {
    let node = Devnet::start(&[]);
    let url = node.url();
    let rpc = Rpc::new(&url);
    let mut checks = Checks::default();
    let signer = dev_signer(1);
    let to = TxKind::Call(dev_signer(2).address());
    let transfer = |nonce: u64| eip1559(nonce, to, U256::from(1), Bytes::new(), 21_000);

    // Every refusal must come from both send methods alike.
    let both = async |checks: &mut Checks, case: &str, raw: &Bytes, message: &str| {
        for method in ["eth_sendRawTransaction", "eth_sendRawTransactionSync"] {
            let answer = raw_rpc(&url, &request(method, json!([raw]))).await;
            checks.error(
                &format!("{case} ({method})"),
                &answer,
                SERVER_ERROR,
                message,
            );
            checks.serving(&rpc, case).await;
        }
    };

    let valid = sign(&signer, transfer(0)).raw;
    let mut trailing = valid.to_vec();
    trailing.push(0x00);
    let bad_rlp: [(&str, Bytes); 5] = [
        ("empty raw transaction", Bytes::new()),
        (
            "typed transaction with an empty list",
            Bytes::from_static(&[0x02, 0xc0]),
        ),
        (
            "RLP list longer than its bytes",
            Bytes::from_static(&[0xf8, 0xff, 0x00]),
        ),
        ("truncated transaction", valid.slice(..valid.len() - 1)),
        ("transaction with a trailing byte", trailing.into()),
    ];
    for (case, raw) in &bad_rlp {
        both(&mut checks, case, raw, "rlp: ").await;
    }
    // EIP-2718 type 0x05 is not defined.
    let unknown_type = Bytes::from_static(&[0x05, 0xc0]);
    both(
        &mut checks,
        "unknown transaction type 0x05",
        &unknown_type,
        "transaction type not supported",
    )
    .await;

    let mut tx = transfer(0);
    let real = signer.sign_transaction_sync(&mut tx).expect("sign");
    let r_zero = with_signature(tx.clone(), Signature::new(U256::ZERO, real.s(), real.v()));
    both(
        &mut checks,
        "signature with r = 0",
        &r_zero,
        "invalid transaction v, r, s values",
    )
    .await;
    let high_s = with_signature(
        tx.clone(),
        Signature::new(real.r(), SECP256K1_N - real.s(), !real.v()),
    );
    both(
        &mut checks,
        "signature with a high s (EIP-2)",
        &high_s,
        "invalid transaction v, r, s values",
    )
    .await;

    let mut other_chain = transfer(0);
    other_chain.chain_id = 1;
    let raw = sign(&signer, other_chain).raw;
    both(
        &mut checks,
        "chain id 1",
        &raw,
        &format!("invalid chain id for signer: have 1 want {CHAIN_ID}"),
    )
    .await;

    let unprotected = TxLegacy {
        chain_id: None,
        nonce: 0,
        gas_price: 2 * GWEI,
        gas_limit: 21_000,
        to,
        value: U256::from(1),
        input: Bytes::new(),
    };
    let raw = sign(&signer, unprotected).raw;
    both(
        &mut checks,
        "legacy transaction without a chain id",
        &raw,
        "only replay-protected (EIP-155) transactions allowed over RPC",
    )
    .await;

    let raw = sign(
        &signer,
        eip1559(0, to, U256::from(1), Bytes::new(), BLOCK_GAS_LIMIT + 1),
    )
    .raw;
    both(
        &mut checks,
        "gas above the block gas limit",
        &raw,
        "exceeds block gas limit",
    )
    .await;

    let raw = sign(&signer, eip1559(0, to, U256::from(1), Bytes::new(), 20_000)).raw;
    both(
        &mut checks,
        "gas below the intrinsic 21,000",
        &raw,
        "intrinsic gas too low",
    )
    .await;

    let mut tip_above_cap = transfer(0);
    tip_above_cap.max_priority_fee_per_gas = tip_above_cap.max_fee_per_gas + 1;
    let raw = sign(&signer, tip_above_cap).raw;
    both(
        &mut checks,
        "tip above the fee cap",
        &raw,
        "max priority fee per gas higher than max fee per gas",
    )
    .await;

    // 130 KiB of calldata: over the 128 KiB limit on a transaction's encoding.
    let big = sign(
        &signer,
        eip1559(0, to, U256::ZERO, vec![0x01; 130 * 1024].into(), 5_000_000),
    )
    .raw;
    assert!(big.len() > MAX_TX_BYTES);
    both(
        &mut checks,
        "transaction over 128 KiB",
        &big,
        "oversized data",
    )
    .await;

    let poor =
        PrivateKeySigner::from_bytes(&keccak256("rtchain bad-input test: an account with no ETH"))
            .expect("key");
    let raw = sign(&poor, eip1559(0, to, U256::from(1), Bytes::new(), 21_000)).raw;
    both(
        &mut checks,
        "sender without ETH",
        &raw,
        "insufficient funds for gas * price + value",
    )
    .await;

    // A valid transaction, then the same nonce again, then the very same bytes again.
    let first = sign(&signer, transfer(0));
    let receipt = rpc.send_raw_sync(&first).await.expect("a valid transfer");
    assert!(receipt.succeeded());
    let again = sign(&signer, eip1559(0, to, U256::from(2), Bytes::new(), 21_000)).raw;
    both(&mut checks, "nonce already used", &again, "nonce too low").await;
    // A transaction still waiting (its nonce is ahead), sent again.
    let waiting = sign(&signer, transfer(5));
    rpc.send_raw(&waiting)
        .await
        .expect("a future nonce is accepted");
    checks.failure(
        "the same transaction again while it waits",
        rpc.send_raw(&waiting).await,
        SERVER_ERROR,
        "already known",
    );
    checks.serving(&rpc, "a duplicate").await;

    checks.serving(&rpc, "all invalid transactions").await;
    checks.assert_none();
}

#[tokio::test]
async fn future_nonces_wait_for_the_gap_and_are_bounded_per_sender() {
    let node = Devnet::start(&[]);
    let rpc = Rpc::new(&node.url());
    let mut checks = Checks::default();
    let to = TxKind::Call(dev_signer(9).address());
    let transfer = |signer: &PrivateKeySigner, nonce: u64| {
        sign(
            signer,
            eip1559(nonce, to, U256::from(1), Bytes::new(), 21_000),
        )
    };

    // Nonce n + 1 first, then n: both execute.
    let gap = dev_signer(3);
    let later = transfer(&gap, 1);
    match rpc.send_raw(&later).await {
        Ok(hash) => assert_eq!(hash, later.hash),
        Err(e) => panic!("a transaction one nonce ahead must be accepted (and queued): {e}"),
    }
    checks.serving(&rpc, "a future nonce").await;
    let first = rpc
        .send_raw_sync(&transfer(&gap, 0))
        .await
        .expect("the gap-filling transaction");
    assert!(first.succeeded());
    let receipt = rpc.wait_receipt(later.hash, Duration::from_secs(10)).await;
    assert!(
        receipt.succeeded(),
        "queued transaction failed: {receipt:?}"
    );
    println!(
        "ok   nonce 1 sent before nonce 0: both executed (blocks {:?}, {:?})",
        first.block_number, receipt.block_number
    );

    // 64 future transactions wait; the 65th is refused, through either send method.
    let other = dev_signer(8);
    for (signer, sync) in [(dev_signer(5), false), (dev_signer(6), true)] {
        let method = if sync {
            "eth_sendRawTransactionSync"
        } else {
            "eth_sendRawTransaction"
        };
        for nonce in 1..=MAX_QUEUED_PER_SENDER {
            let tx = transfer(&signer, nonce);
            if let Err(e) = rpc.send_raw(&tx).await {
                checks.failures.push(format!(
                    "future nonce {nonce} of {} (within the bound of 64) refused: {e}",
                    signer.address()
                ));
            }
        }
        let over = transfer(&signer, MAX_QUEUED_PER_SENDER + 1);
        let case = format!("the 65th future transaction of one sender ({method})");
        let result = if sync {
            rpc.send_raw_sync(&over).await.map(|r| r.transaction_hash)
        } else {
            rpc.send_raw(&over).await
        };
        match result {
            Err(RpcFailure::Error { code, message, .. }) if message.contains("queued") => {
                println!("ok   {case}: {code} {message}")
            }
            other => checks.failures.push(format!(
                "{case}: expected an error about the per-sender queue bound, got {other:?}"
            )),
        }
        checks.serving(&rpc, &case).await;

        // Filling the gap runs the 64 waiting transactions and not the refused one.
        let filled = rpc
            .send_raw_sync(&transfer(&signer, 0))
            .await
            .expect("the gap-filling transaction");
        assert!(filled.succeeded());
        let address = signer.address();
        let expected = MAX_QUEUED_PER_SENDER + 1;
        wait_for(
            &format!("{address} to reach nonce {expected}"),
            Duration::from_secs(10),
            || async { (rpc.nonce(address).await >= expected).then_some(()) },
        )
        .await;
        // One more mini-block from another sender: a refused-but-kept transaction would have
        // run before it (promoted transactions run before new arrivals).
        let nonce = rpc.nonce(other.address()).await;
        rpc.send_raw_sync(&transfer(&other, nonce))
            .await
            .expect("a transfer from another sender");
        let nonce = rpc.nonce(address).await;
        if nonce != expected {
            checks.failures.push(format!("{case}: after filling the gap the nonce is {nonce}, expected {expected} (the refused transaction ran)"));
        }
        match rpc.receipt(over.hash).await {
            Ok(None) => {}
            other => checks.failures.push(format!(
                "{case}: the refused transaction has a receipt: {other:?}"
            )),
        }
    }

    checks.serving(&rpc, "the queue tests").await;
    checks.assert_none();
}

/// POSTs a JSON-RPC request of `len` bytes, reading the answer while still writing (the server
/// may answer 413 as soon as it sees Content-Length and close without reading the body).
/// Returns the HTTP status and the JSON answer.
async fn post_oversized(url: &str, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[""#;
    let tail = r#""]}"#;
    let filler = len - head.len() - tail.len();
    let send = tokio::spawn(async move {
        let header = format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{head}"
        );
        writer.write_all(header.as_bytes()).await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = filler;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        writer.write_all(tail.as_bytes()).await
    });
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut response)).await;
    send.abort();
    let text = String::from_utf8_lossy(&response).to_string();
    assert!(
        read.is_ok(),
        "no answer to an oversized request within 30 s"
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = body
        .find('{')
        .and_then(|start| {
            serde_json::Deserializer::from_str(&body[start..])
                .into_iter::<Value>()
                .next()
        })
        .and_then(Result::ok)
        .unwrap_or(Value::Null);
    (status, json)
}
