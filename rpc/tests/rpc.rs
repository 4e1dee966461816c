//! The JSON layer over real HTTP and WebSocket connections, against the in-memory test backend
//! in `support/`: geth's error codes and messages, block tags and EIP-1898 objects, call
//! objects, receipts, the real-time methods, filters, subscriptions and the limits.

mod support;

use std::time::Duration;

use alloy_primitives::{B256, Bytes, keccak256};
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::WsClientBuilder;
use serde_json::{Value, json};
use support::*;

fn hex(n: u64) -> String {
    format!("{n:#x}")
}

#[tokio::test]
async fn basic_methods() {
    let (server, _backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    assert_eq!(
        result(addr, "web3_clientVersion", json!([])).await,
        "rtchain/test"
    );
    assert_eq!(result(addr, "eth_chainId", json!([])).await, hex(CHAIN_ID));
    assert_eq!(
        result(addr, "net_version", json!([])).await,
        CHAIN_ID.to_string()
    );
    assert_eq!(result(addr, "net_listening", json!([])).await, true);
    assert_eq!(result(addr, "net_peerCount", json!([])).await, "0x0");
    assert_eq!(result(addr, "eth_blockNumber", json!([])).await, "0x3");
    assert_eq!(result(addr, "eth_syncing", json!([])).await, false);
    assert_eq!(result(addr, "eth_accounts", json!([])).await, json!([]));
    // Params may be omitted entirely when a method takes none.
    let response = post(addr, r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}"#)
        .await
        .1;
    assert_eq!(response["result"], hex(CHAIN_ID));
    assert_eq!(response["id"], 7);
    assert_eq!(
        result(addr, "eth_gasPrice", json!([])).await,
        format!("{:#x}", u128::from(NEXT_BASE_FEE) + PRIORITY_FEE)
    );
    assert_eq!(
        result(addr, "eth_maxPriorityFeePerGas", json!([])).await,
        format!("{PRIORITY_FEE:#x}")
    );
    assert_eq!(result(addr, "eth_blobBaseFee", json!([])).await, "0x7");
    let sha = result(addr, "web3_sha3", json!(["0x68656c6c6f"])).await;
    assert_eq!(sha, json!(keccak256(b"hello")));
    server.stop();
    server.stopped().await;
}

#[tokio::test]
async fn geth_error_codes() {
    let (server, _backend) = serve(|_| {}).await;
    let addr = server.local_addr();

    for method in ["eth_fillTransaction", "eth_coinbase"] {
        let err = error(addr, method, json!([])).await;
        assert_eq!(err["code"], -32601, "{method}");
        assert_eq!(
            err["message"],
            format!("the method {method} does not exist/is not available")
        );
    }
    // A node without keys knows no account to sign with.
    let someone = "0x0000000000000000000000000000000000000001";
    for (method, params) in [
        ("eth_sign", json!([someone, "0x00"])),
        ("personal_sign", json!(["0x00", someone])),
        (
            "eth_sendTransaction",
            json!([{"from": someone, "to": someone}]),
        ),
        (
            "eth_signTransaction",
            json!([{"from": someone, "to": someone}]),
        ),
    ] {
        let err = error(addr, method, params).await;
        assert_eq!(err["code"], -32000, "{method}");
        assert_eq!(err["message"], "unknown account", "{method}");
    }

    // Wrong types and bad hex are invalid params.
    let err = error(addr, "eth_getBalance", json!(["0xzz", "latest"])).await;
    assert_eq!(err["code"], -32602);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid argument 0:"),
        "{err}"
    );
    let err = error(addr, "eth_getBlockByNumber", json!([true, false])).await;
    assert_eq!(err["code"], -32602);
    let err = error(addr, "eth_getBalance", json!([])).await;
    assert_eq!(err["message"], "missing value for required argument 0");
    let err = error(addr, "eth_chainId", json!([1])).await;
    assert_eq!(err["message"], "too many arguments, want at most 0");

    // Malformed JSON and non-requests.
    let (status, response) = post(addr, r#"{"jsonrpc":"2.0","id":1,"method":"#).await;
    assert_eq!(status, 200);
    assert_eq!(response["error"]["code"], -32700);
    let (_, response) = post(addr, r#"{"foo":1,"id":3}"#).await;
    assert_eq!(response["error"]["code"], -32600);

    // Backend refusals.
    let err = error(addr, "eth_sendRawTransaction", json!(["0x01"])).await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(-32000), json!("already known"))
    );
    let err = error(addr, "eth_sendRawTransaction", json!(["0x02"])).await;
    assert_eq!(err["code"], -32000);
    assert_eq!(err["message"], "nonce too low: next nonce 3, tx nonce 1");
    let oversized = format!("0x{}", "00".repeat(128 * 1024 + 1));
    let err = error(addr, "eth_sendRawTransaction", json!([oversized])).await;
    assert_eq!(
        err["message"],
        "oversized data: transaction size 131073, limit 131072"
    );
    let hash = result(addr, "eth_sendRawTransaction", json!(["0xc0ffee"])).await;
    assert_eq!(hash, json!(keccak256([0xc0, 0xff, 0xee])));

    // Subscriptions need a WebSocket, as geth says.
    let err = error(addr, "eth_subscribe", json!(["newHeads"])).await;
    assert_eq!(err["code"], -32601);
    assert_eq!(err["message"], "notifications not supported");
}

#[tokio::test]
async fn reverts_and_halts() {
    let (server, _backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    let to = format!("{CONTRACT_A}");

    let ok = result(
        addr,
        "eth_call",
        json!([{"to": to, "input": "0x"}, "latest"]),
    )
    .await;
    assert_eq!(ok, format!("0x{}2a", "00".repeat(31)));

    let err = error(
        addr,
        "eth_call",
        json!([{"to": to, "data": "0xdeadbeef"}, "latest"]),
    )
    .await;
    assert_eq!(err["code"], 3);
    assert_eq!(err["message"], "execution reverted: nope");
    assert_eq!(err["data"], revert_nope().to_string());

    let err = error(addr, "eth_call", json!([{"to": to, "data": "0xbad0"}])).await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(-32000), json!("out of gas"))
    );
    let err = error(addr, "eth_call", json!([{"to": to, "data": "0xfe"}])).await;
    assert_eq!(err["message"], "invalid opcode: INVALID");

    assert_eq!(
        result(
            addr,
            "eth_estimateGas",
            json!([{"to": to, "data": "0x1234"}])
        )
        .await,
        hex(21_032)
    );
    let err = error(
        addr,
        "eth_estimateGas",
        json!([{"to": to, "data": "0xdeadbeef"}]),
    )
    .await;
    assert_eq!(err["code"], 3);
    assert_eq!(err["data"], revert_nope().to_string());
    let err = error(
        addr,
        "eth_estimateGas",
        json!([{"to": to, "data": "0xbad0"}]),
    )
    .await;
    assert_eq!(
        err["message"],
        format!("gas required exceeds allowance ({GAS_LIMIT})")
    );
    let err = error(
        addr,
        "eth_estimateGas",
        json!([{"to": to, "data": "0xbad0", "gas": "0x5208"}]),
    )
    .await;
    assert_eq!(err["message"], "gas required exceeds allowance (21000)");
    let err = error(addr, "eth_estimateGas", json!([{"to": to, "data": "0xfe"}])).await;
    assert_eq!(err["message"], "invalid opcode: INVALID");

    let list = result(
        addr,
        "eth_createAccessList",
        json!([{"to": to, "data": "0xdeadbeef"}]),
    )
    .await;
    assert_eq!(list["error"], "execution reverted: nope");
    assert_eq!(list["accessList"], json!([]));
    let list = result(addr, "eth_createAccessList", json!([{"to": to}, "latest"])).await;
    assert_eq!(list["gasUsed"], hex(21_000));
    assert!(list.get("error").is_none());
}

#[tokio::test]
async fn call_objects_accept_input_or_data() {
    let (server, backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    let to = format!("{CONTRACT_A}");
    let seen = || {
        backend
            .last_call
            .lock()
            .clone()
            .expect("a call reached the backend")
            .input
    };

    for object in [
        json!({"to": to, "data": "0x1234"}),
        json!({"to": to, "input": "0x1234"}),
        json!({"to": to, "input": "0x1234", "data": "0x1234"}),
    ] {
        result(addr, "eth_call", json!([object, "latest"])).await;
        let input = seen();
        assert_eq!(
            input.input,
            Some(Bytes::from_static(&[0x12, 0x34])),
            "{object}"
        );
        assert_eq!(input.data, None, "{object}");
    }
    let err = error(
        addr,
        "eth_call",
        json!([{"to": to, "input": "0x12", "data": "0x34"}]),
    )
    .await;
    assert_eq!(err["code"], -32000);
    assert_eq!(
        err["message"],
        "both \"data\" and \"input\" are set and not equal. Please use \"input\" to pass transaction call data"
    );
    // State and block overrides are accepted.
    let overrides = json!({ to.clone(): {"balance": "0x1"} });
    result(
        addr,
        "eth_call",
        json!([{"to": to}, "latest", overrides, {"number": "0x10"}]),
    )
    .await;
}

#[tokio::test]
async fn block_tags_and_eip1898() {
    let (server, backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    let balance = |block: Value| async move {
        result(addr, "eth_getBalance", json!([format!("{SENDER}"), block])).await
    };
    let latest = hex(LATEST_MARKER);

    // State reads: latest/pending read the newest mini-block state; a number, even the
    // head's, names exactly that block's state.
    assert_eq!(balance(json!("latest")).await, latest);
    assert_eq!(balance(json!("pending")).await, latest);
    assert_eq!(balance(json!("0x3")).await, "0x3");
    assert_eq!(balance(Value::Null).await, latest);
    assert_eq!(balance(json!("0x2")).await, "0x2");
    assert_eq!(balance(json!("safe")).await, "0x2");
    assert_eq!(balance(json!("finalized")).await, "0x1");
    assert_eq!(balance(json!({"blockNumber": "0x2"})).await, "0x2");
    let block1 = backend.block(1).hash;
    assert_eq!(
        balance(json!({"blockHash": block1, "requireCanonical": true})).await,
        "0x1"
    );
    assert_eq!(balance(json!({"blockHash": block1})).await, "0x1");
    // A node that keeps only recent state refuses older reads with the backend's message.
    let err = error(
        addr,
        "eth_getBalance",
        json!([format!("{SENDER}"), "earliest"]),
    )
    .await;
    assert_eq!(err["code"], -32000);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("historical state for block 0 is not kept"),
        "{err}"
    );
    for unknown in [json!("0x10"), json!({"blockHash": B256::repeat_byte(7)})] {
        let err = error(
            addr,
            "eth_getBalance",
            json!([format!("{SENDER}"), unknown]),
        )
        .await;
        assert_eq!(
            (err["code"].clone(), err["message"].clone()),
            (json!(-32000), json!("header not found"))
        );
    }

    // Nonces: pending counts the pool.
    let nonce = |block: &str| {
        let block = block.to_owned();
        async move {
            result(
                addr,
                "eth_getTransactionCount",
                json!([format!("{SENDER}"), block]),
            )
            .await
        }
    };
    assert_eq!(nonce("pending").await, hex(PENDING_NONCE));
    assert_eq!(nonce("latest").await, hex(LATEST_NONCE));
    assert_eq!(nonce("0x2").await, "0x2");

    // Block queries: latest/pending are the newest sealed block; unknown is null.
    let number_of = |block: Value| block["number"].as_str().map(str::to_owned);
    for (tag, want) in [
        ("latest", "0x3"),
        ("pending", "0x3"),
        ("safe", "0x2"),
        ("finalized", "0x1"),
        ("earliest", "0x0"),
        ("0x2", "0x2"),
    ] {
        let block = result(addr, "eth_getBlockByNumber", json!([tag, false])).await;
        assert_eq!(number_of(block).as_deref(), Some(want), "{tag}");
    }
    assert_eq!(
        result(addr, "eth_getBlockByNumber", json!(["0x10", false])).await,
        Value::Null
    );
    assert_eq!(
        result(
            addr,
            "eth_getBlockByHash",
            json!([B256::repeat_byte(7), false])
        )
        .await,
        Value::Null
    );
    let receipts = result(addr, "eth_getBlockReceipts", json!([{"blockHash": block1}])).await;
    assert_eq!(receipts.as_array().unwrap().len(), 2);
    assert_eq!(
        result(addr, "eth_getBlockReceipts", json!(["0x10"])).await,
        Value::Null
    );

    // Storage slots may be short quantities.
    let slot = result(
        addr,
        "eth_getStorageAt",
        json!([format!("{CONTRACT_A}"), "0x1", "latest"]),
    )
    .await;
    assert_eq!(slot, json!(B256::with_last_byte(1)));
    assert_eq!(
        result(
            addr,
            "eth_getCode",
            json!([format!("{CONTRACT_A}"), "latest"])
        )
        .await,
        "0x6000"
    );
    let proof = result(
        addr,
        "eth_getProof",
        json!([format!("{CONTRACT_A}"), ["0x0"], "latest"]),
    )
    .await;
    assert_eq!(proof["storageProof"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn blocks_transactions_and_receipts() {
    let (server, backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    let block1 = backend.block(1);
    let tx0 = block1.transactions[0].hash;
    let tx1 = block1.transactions[1].hash;

    let block = result(addr, "eth_getBlockByHash", json!([block1.hash, false])).await;
    assert_eq!(block["hash"], json!(block1.hash));
    assert_eq!(block["number"], "0x1");
    assert_eq!(block["transactions"], json!([tx0, tx1]));
    assert_eq!(block["uncles"], json!([]));
    assert_eq!(block["withdrawals"], json!([]));
    assert_eq!(block["baseFeePerGas"], hex(BASE_FEE));
    assert!(block["size"].as_str().unwrap().starts_with("0x"));
    assert!(block["withdrawalsRoot"].is_string());

    let full = result(addr, "eth_getBlockByNumber", json!(["0x1", true])).await;
    let first = &full["transactions"][0];
    assert_eq!(first["hash"], json!(tx0));
    assert_eq!(first["blockHash"], json!(block1.hash));
    assert_eq!(first["blockNumber"], "0x1");
    assert_eq!(first["transactionIndex"], "0x0");
    assert_eq!(first["from"], json!(SENDER));
    // Effective gas price: base fee + min(tip, max fee - base fee).
    assert_eq!(first["gasPrice"], hex(BASE_FEE + 1_000_000));

    assert_eq!(
        result(
            addr,
            "eth_getBlockTransactionCountByHash",
            json!([block1.hash])
        )
        .await,
        "0x2"
    );
    assert_eq!(
        result(addr, "eth_getBlockTransactionCountByNumber", json!(["0x2"])).await,
        "0x1"
    );
    assert_eq!(
        result(addr, "eth_getUncleCountByBlockNumber", json!(["0x1"])).await,
        "0x0"
    );
    assert_eq!(
        result(addr, "eth_getUncleCountByBlockHash", json!([block1.hash])).await,
        "0x0"
    );
    assert_eq!(
        result(addr, "eth_getUncleCountByBlockNumber", json!(["0x10"])).await,
        Value::Null
    );

    let tx = result(
        addr,
        "eth_getTransactionByBlockHashAndIndex",
        json!([block1.hash, "0x1"]),
    )
    .await;
    assert_eq!(tx["hash"], json!(tx1));
    assert_eq!(tx["input"], "0x1234");
    let tx = result(
        addr,
        "eth_getTransactionByBlockNumberAndIndex",
        json!(["0x1", "0x0"]),
    )
    .await;
    assert_eq!(tx["hash"], json!(tx0));
    assert_eq!(
        result(
            addr,
            "eth_getTransactionByBlockNumberAndIndex",
            json!(["0x1", "0x5"])
        )
        .await,
        Value::Null
    );
    let tx = result(addr, "eth_getTransactionByHash", json!([tx1])).await;
    assert_eq!(tx["blockHash"], json!(block1.hash));
    assert_eq!(tx["transactionIndex"], "0x1");
    let raw = result(addr, "eth_getRawTransactionByHash", json!([tx1])).await;
    assert_eq!(raw, json!(block1.transactions[1].raw));

    let receipt = result(addr, "eth_getTransactionReceipt", json!([tx0])).await;
    assert_eq!(receipt["transactionHash"], json!(tx0));
    assert_eq!(receipt["blockHash"], json!(block1.hash));
    assert_eq!(receipt["blockNumber"], "0x1");
    assert_eq!(receipt["transactionIndex"], "0x0");
    assert_eq!(receipt["from"], json!(SENDER));
    assert_eq!(receipt["to"], json!(CONTRACT_A));
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(receipt["type"], "0x2");
    assert_eq!(receipt["gasUsed"], hex(22_000));
    assert_eq!(receipt["cumulativeGasUsed"], hex(22_000));
    assert_eq!(receipt["contractAddress"], Value::Null);
    assert!(receipt["logsBloom"].is_string());
    let log = &receipt["logs"][0];
    assert_eq!(log["address"], json!(CONTRACT_A));
    assert_eq!(log["logIndex"], "0x0");
    assert_eq!(log["transactionHash"], json!(tx0));
    assert_eq!(log["blockHash"], json!(block1.hash));
    assert_eq!(log["blockTimestamp"], hex(block1.header.timestamp));
    // Block 2's transaction logs twice: indices are block-wide.
    let tx2 = backend.block(2).transactions[0].hash;
    let receipt = result(addr, "eth_getTransactionReceipt", json!([tx2])).await;
    assert_eq!(receipt["logs"][1]["logIndex"], "0x1");

    // A preconfirmed transaction is not visible to standard tools until its block is sealed.
    assert_eq!(
        result(
            addr,
            "eth_getTransactionReceipt",
            json!([PRECONFIRMED_HASH])
        )
        .await,
        Value::Null
    );
    let pending = result(addr, "eth_getTransactionByHash", json!([PRECONFIRMED_HASH])).await;
    assert_eq!(pending["blockHash"], Value::Null);
    assert_eq!(pending["blockNumber"], Value::Null);
    assert_eq!(
        result(
            addr,
            "eth_getTransactionReceipt",
            json!([B256::repeat_byte(3)])
        )
        .await,
        Value::Null
    );
}

#[tokio::test]
async fn send_raw_transaction_sync() {
    let (server, backend) = serve(|config| {
        config.send_sync_timeout_default = Duration::from_millis(300);
    })
    .await;
    let addr = server.local_addr();
    let head = backend.head_number();

    for method in ["eth_sendRawTransactionSync", "realtime_sendRawTransaction"] {
        let receipt = result(addr, method, json!(["0xc0ffee"])).await;
        assert_eq!(receipt["blockHash"], Value::Null, "{method}");
        assert_eq!(receipt["blockNumber"], hex(head + 1));
        assert_eq!(receipt["miniBlockNumber"], hex(41));
        assert_eq!(receipt["preconfirmed"], true);
        assert_eq!(receipt["status"], "0x1");
        assert_eq!(receipt["logs"][0]["blockHash"], Value::Null);
        assert_eq!(
            receipt["transactionHash"],
            json!(make_tx(50, &[0xc0, 0xff, 0xee]).hash)
        );
    }

    // Timeout: code 4 with the hash; an explicit timeout (ms, hex or number) is honoured.
    let started = std::time::Instant::now();
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x03", 50])).await;
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err["code"], 4);
    assert_eq!(err["data"], json!(keccak256([0x03])));
    assert_eq!(
        err["message"],
        "The transaction was added to the mempool but wasn't processed in 50ms."
    );
    // Zero or too large: the default.
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x03", "0x0"])).await;
    assert_eq!(
        err["message"],
        "The transaction was added to the mempool but wasn't processed in 300ms."
    );

    // Accepted then dropped, or refused at execution: code 5 with the hash.
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x04"])).await;
    assert_eq!(err["code"], 5);
    assert_eq!(err["data"], json!(keccak256([0x04])));
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x05"])).await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (
            json!(5),
            json!("insufficient funds for gas * price + value")
        )
    );
    // Refused at submission: the eth_sendRawTransaction error.
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x01"])).await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(-32000), json!("already known"))
    );
}

#[tokio::test]
async fn sync_sends_waiting_are_bounded() {
    let (server, _backend) = serve(|config| {
        config.max_sync_sends_waiting = 1;
        config.send_sync_timeout_default = Duration::from_millis(500);
    })
    .await;
    let addr = server.local_addr();
    let first =
        tokio::spawn(
            async move { error(addr, "eth_sendRawTransactionSync", json!(["0x03"])).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = error(addr, "eth_sendRawTransactionSync", json!(["0x03"])).await;
    assert_eq!(err["code"], -32005);
    assert_eq!(first.await.unwrap()["code"], 4);
}

#[tokio::test]
async fn logs_queries() {
    let (server, backend) = serve(|config| config.max_block_range = 3).await;
    let addr = server.local_addr();
    let logs = |filter: Value| async move { result(addr, "eth_getLogs", json!([filter])).await };

    let all = logs(json!({"fromBlock": "0x1", "toBlock": "latest"})).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let a = logs(json!({"fromBlock": "0x1", "address": CONTRACT_A})).await;
    assert_eq!(a.as_array().unwrap().len(), 1);
    let either = logs(json!({"fromBlock": "0x1", "address": [CONTRACT_A, CONTRACT_B]})).await;
    assert_eq!(either.as_array().unwrap().len(), 3);
    // Null is a wildcard; an array is an OR.
    let topic2 = logs(json!({"fromBlock": "0x1", "topics": [null, TOPIC_2]})).await;
    assert_eq!(topic2.as_array().unwrap().len(), 1);
    let any_of = logs(json!({"fromBlock": "0x1", "topics": [[TOPIC_1, TOPIC_3]]})).await;
    assert_eq!(any_of.as_array().unwrap().len(), 3);
    let by_hash = logs(json!({"blockHash": backend.block(2).hash})).await;
    assert_eq!(by_hash.as_array().unwrap().len(), 2);
    assert_eq!(by_hash[1]["logIndex"], "0x1");
    // Default range is the latest block (empty here).
    assert_eq!(logs(json!({})).await, json!([]));

    let err = error(
        addr,
        "eth_getLogs",
        json!([{"fromBlock": "earliest", "toBlock": "latest"}]),
    )
    .await;
    assert_eq!(err["code"], -32005);
    assert_eq!(err["message"], "exceed maximum block range: 3");
    let err = error(
        addr,
        "eth_getLogs",
        json!([{"fromBlock": "0x3", "toBlock": "0x1"}]),
    )
    .await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(-32000), json!("invalid block range params"))
    );
    let err = error(
        addr,
        "eth_getLogs",
        json!([{"blockHash": B256::repeat_byte(9)}]),
    )
    .await;
    assert_eq!(err["message"], "unknown block");
    let err = error(
        addr,
        "eth_getLogs",
        json!([{"blockHash": B256::repeat_byte(9), "fromBlock": "0x1"}]),
    )
    .await;
    assert_eq!(err["code"], -32602);
}

#[tokio::test]
async fn logs_limit() {
    let (server, _backend) = serve(|config| config.max_logs_per_query = 2).await;
    let err = error(
        server.local_addr(),
        "eth_getLogs",
        json!([{"fromBlock": "0x0"}]),
    )
    .await;
    assert_eq!(err["code"], -32005);
    assert_eq!(err["message"], "query returned more than 2 results");
}

#[tokio::test]
async fn fee_history() {
    let (server, backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    let history = result(addr, "eth_feeHistory", json!(["0x2", "0x2", [25.0, 75.0]])).await;
    assert_eq!(history["oldestBlock"], "0x1");
    assert_eq!(
        history["baseFeePerGas"],
        json!([hex(BASE_FEE), hex(BASE_FEE), hex(BASE_FEE)])
    );
    let block1 = backend.block(1);
    let ratio = block1.header.gas_used as f64 / GAS_LIMIT as f64;
    // serde_json's default float parser may differ from the exact value in the last bit.
    assert!((history["gasUsedRatio"][0].as_f64().unwrap() - ratio).abs() < 1e-12);
    // Block 1: tips 1_000_000 (22,000 gas) and 2_000_000 (21,000 gas); 25% of 43,000 gas falls in
    // the first, 75% in the second. Block 2: one transaction, tip 3_000_000.
    assert_eq!(
        history["reward"],
        json!([
            [hex(1_000_000), hex(2_000_000)],
            [hex(3_000_000), hex(3_000_000)]
        ])
    );

    // Newest is the head: the last base fee is the next block's. Counts are clamped; decimal ok.
    let history = result(addr, "eth_feeHistory", json!([100, "latest"])).await;
    assert_eq!(history["oldestBlock"], "0x0");
    assert_eq!(history["baseFeePerGas"].as_array().unwrap().len(), 5);
    assert_eq!(history["baseFeePerGas"][4], hex(NEXT_BASE_FEE));
    assert!(history.get("reward").is_none());

    let err = error(
        addr,
        "eth_feeHistory",
        json!(["0x1", "latest", [50.0, 10.0]]),
    )
    .await;
    assert_eq!(err["code"], -32000);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid reward percentile")
    );
    let err = error(addr, "eth_feeHistory", json!(["0x1", "0x10"])).await;
    assert_eq!(
        err["message"],
        "request beyond head block: requested 16, head 3"
    );
}

#[tokio::test]
async fn batches_and_limits() {
    let (server, _backend) = serve(|config| {
        config.max_batch_len = 3;
        config.max_request_body_bytes = 4096;
    })
    .await;
    let addr = server.local_addr();

    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]},
                    {"jsonrpc":"2.0","id":2,"method":"eth_fillTransaction","params":[]}]"#;
    let (status, response) = post(addr, batch).await;
    assert_eq!(status, 200);
    let responses = response.as_array().unwrap();
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0]["result"], hex(CHAIN_ID));
    assert_eq!(responses[1]["error"]["code"], -32601);
    assert_eq!(
        responses[1]["error"]["message"],
        "the method eth_fillTransaction does not exist/is not available"
    );

    let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let too_many = format!("[{}]", [call; 4].join(","));
    let (_, response) = post(addr, &too_many).await;
    assert_eq!(response["error"]["code"], -32010);
    assert_eq!(
        response["error"]["message"],
        "The batch request was too large"
    );

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"web3_sha3","params":["0x{}"]}}"#,
        "00".repeat(4096)
    );
    let (status, response) = post(addr, &big).await;
    assert_eq!(status, 413);
    assert_eq!(response["error"]["code"], -32007);
    assert_eq!(response["error"]["message"], "Request is too big");
}

/// The CORS grant a preflight from `origin` gets (`None`: no grant).
async fn cors_grant(addr: std::net::SocketAddr, origin: &str) -> Option<String> {
    let request = format!(
        "OPTIONS / HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
    );
    let (status, head, _) = http_exchange(addr, &request).await;
    assert_eq!(status, 200, "{head}");
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("access-control-allow-origin:")
            .map(|v| v.trim().to_owned())
    })
}

/// The status a WebSocket upgrade with `origin` (if any) gets.
async fn ws_upgrade_status(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    // An accepted upgrade keeps the connection open: read the head only.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer to the upgrade")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[tokio::test]
async fn cors_and_websocket_origins_default_to_pages_on_this_machine() {
    let (server, _backend) = serve(|_| {}).await;
    let addr = server.local_addr();
    assert_eq!(
        cors_grant(addr, "http://localhost:3000").await.as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(
        cors_grant(addr, "http://127.0.0.1:5173").await.as_deref(),
        Some("http://127.0.0.1:5173")
    );
    assert_eq!(cors_grant(addr, "https://evil.example").await, None);
    assert_eq!(
        ws_upgrade_status(addr, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        ws_upgrade_status(addr, Some("http://localhost:3000")).await,
        101
    );
    // Not from a browser page: served.
    assert_eq!(ws_upgrade_status(addr, None).await, 101);
}

#[tokio::test]
async fn allowed_origins_are_configurable() {
    let (server, _backend) = serve(|c| {
        c.allowed_origins = vec!["https://app.example.org".into()];
    })
    .await;
    let addr = server.local_addr();
    assert_eq!(
        cors_grant(addr, "https://app.example.org").await.as_deref(),
        Some("https://app.example.org")
    );
    assert_eq!(cors_grant(addr, "http://localhost:3000").await, None);
    assert_eq!(
        ws_upgrade_status(addr, Some("http://localhost:3000")).await,
        403
    );
    assert_eq!(
        ws_upgrade_status(addr, Some("https://app.example.org")).await,
        101
    );

    let (any, _backend) = serve(|c| c.allowed_origins = vec!["*".into()]).await;
    assert_eq!(
        cors_grant(any.local_addr(), "https://evil.example")
            .await
            .as_deref(),
        Some("*")
    );
    let bad = rtchain_rpc::start(
        rtchain_rpc::RpcConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            allowed_origins: vec!["example.org/path".into()],
            ..Default::default()
        },
        TestBackend::new(),
    )
    .await;
    assert!(bad.is_err(), "a malformed origin is a configuration error");
}

#[tokio::test]
async fn polling_filters() {
    let (server, backend) = serve(|_| {}).await;
    let addr = server.local_addr();

    let blocks = result(addr, "eth_newBlockFilter", json!([])).await;
    let id = blocks.as_str().unwrap().to_owned();
    assert!(id.starts_with("0x") && id.len() == 34, "{id}");
    let logs = result(addr, "eth_newFilter", json!([{"address": CONTRACT_B}])).await;
    let pending = result(addr, "eth_newPendingTransactionFilter", json!([])).await;
    assert_eq!(
        result(addr, "eth_getFilterChanges", json!([blocks])).await,
        json!([])
    );

    let b4 = backend.seal(vec![(
        make_tx(10, b""),
        vec![make_log(CONTRACT_B, vec![TOPIC_3])],
    )]);
    let b5 = backend.seal(vec![(
        make_tx(11, b""),
        vec![make_log(CONTRACT_A, vec![TOPIC_3])],
    )]);
    assert_eq!(
        result(addr, "eth_getFilterChanges", json!([blocks])).await,
        json!([b4.hash, b5.hash])
    );
    assert_eq!(
        result(addr, "eth_getFilterChanges", json!([blocks])).await,
        json!([])
    );

    let changes = result(addr, "eth_getFilterChanges", json!([logs])).await;
    assert_eq!(changes.as_array().unwrap().len(), 1);
    assert_eq!(changes[0]["blockNumber"], "0x4");
    assert_eq!(
        result(addr, "eth_getFilterChanges", json!([logs])).await,
        json!([])
    );
    // eth_getFilterLogs re-runs the whole query (here: all of CONTRACT_B's logs up to latest).
    let all = result(addr, "eth_getFilterLogs", json!([logs])).await;
    assert_eq!(
        all.as_array().unwrap().len(),
        0,
        "the filter's default range is the latest block"
    );

    // Pending transactions arrive through the backend's event stream.
    let mini = backend.execute_mini_block(60, vec![make_tx(20, b""), make_tx(21, b"")]);
    let mut hashes = json!([]);
    for _ in 0..50 {
        hashes = result(addr, "eth_getFilterChanges", json!([pending])).await;
        if hashes != json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        hashes,
        json!([mini.transactions[0].hash, mini.transactions[1].hash])
    );

    assert_eq!(
        result(addr, "eth_uninstallFilter", json!([blocks])).await,
        true
    );
    assert_eq!(
        result(addr, "eth_uninstallFilter", json!([blocks])).await,
        false
    );
    let err = error(addr, "eth_getFilterChanges", json!([blocks])).await;
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(-32000), json!("filter not found"))
    );
}

#[tokio::test]
async fn filter_limits() {
    let (server, _backend) = serve(|config| {
        config.max_filters = 2;
        config.filter_timeout = Duration::from_millis(100);
    })
    .await;
    let addr = server.local_addr();
    let first = result(addr, "eth_newBlockFilter", json!([])).await;
    result(addr, "eth_newBlockFilter", json!([])).await;
    let err = error(addr, "eth_newBlockFilter", json!([])).await;
    assert_eq!(err["code"], -32005);
    // Idle filters expire and make room.
    tokio::time::sleep(Duration::from_millis(150)).await;
    result(addr, "eth_newBlockFilter", json!([])).await;
    let err = error(addr, "eth_getFilterChanges", json!([first])).await;
    assert_eq!(err["message"], "filter not found");
}

async fn next(subscription: &mut jsonrpsee::core::client::Subscription<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("notification within 5 s")
        .expect("subscription open")
        .expect("valid notification")
}

#[tokio::test]
async fn websocket_subscriptions() {
    let (server, backend) = serve(|_| {}).await;
    let client = WsClientBuilder::default()
        .build(format!("ws://{}", server.local_addr()))
        .await
        .unwrap();

    // Plain calls work on the same port over WebSocket.
    let chain_id: String = client.request("eth_chainId", rpc_params![]).await.unwrap();
    assert_eq!(chain_id, hex(CHAIN_ID));

    let mut heads = client
        .subscribe::<Value, _>("eth_subscribe", rpc_params!["newHeads"], "eth_unsubscribe")
        .await
        .unwrap();
    let mut logs = client
        .subscribe::<Value, _>(
            "eth_subscribe",
            rpc_params!["logs", json!({"topics": [TOPIC_3]})],
            "eth_unsubscribe",
        )
        .await
        .unwrap();
    let mut minis = client
        .subscribe::<Value, _>(
            "eth_subscribe",
            rpc_params!["miniBlocks"],
            "eth_unsubscribe",
        )
        .await
        .unwrap();
    let mut pending = client
        .subscribe::<Value, _>(
            "eth_subscribe",
            rpc_params!["newPendingTransactions"],
            "eth_unsubscribe",
        )
        .await
        .unwrap();
    match heads.kind() {
        jsonrpsee::core::client::SubscriptionKind::Subscription(
            jsonrpsee::types::SubscriptionId::Str(id),
        ) => {
            assert!(id.starts_with("0x") && id.len() == 34, "{id}");
        }
        other => panic!("unexpected subscription id {other:?}"),
    }

    let mini = backend.execute_mini_block(70, vec![make_tx(30, b"")]);
    let notification = next(&mut minis).await;
    assert_eq!(notification["number"], hex(70));
    assert_eq!(notification["hash"], json!(mini.hash));
    assert_eq!(notification["evmBlockNumber"], "0x4");
    assert_eq!(notification["timestampUs"], hex(1_700_000_000_000_000));
    assert_eq!(
        notification["transactions"],
        json!([mini.transactions[0].hash])
    );
    let receipt = &notification["receipts"][0];
    assert_eq!(receipt["transactionHash"], json!(mini.transactions[0].hash));
    assert_eq!(receipt["blockHash"], Value::Null);
    assert_eq!(receipt["blockNumber"], "0x4");
    assert_eq!(receipt["miniBlockNumber"], hex(70));
    assert_eq!(receipt["preconfirmed"], true);
    assert_eq!(next(&mut pending).await, json!(mini.transactions[0].hash));

    let b4 = backend.seal(vec![(
        make_tx(31, b""),
        vec![
            make_log(CONTRACT_A, vec![TOPIC_3]),
            make_log(CONTRACT_A, vec![TOPIC_1]),
        ],
    )]);
    let head = next(&mut heads).await;
    assert_eq!(head["number"], "0x4");
    assert_eq!(head["hash"], json!(b4.hash));
    assert_eq!(head["parentHash"], json!(backend.block(3).hash));
    let log = next(&mut logs).await;
    assert_eq!(log["blockHash"], json!(b4.hash));
    assert_eq!(log["logIndex"], "0x0");
    assert_eq!(log["topics"], json!([TOPIC_3]));

    // Blocks sealed while the subscriber missed their events are filled in from the backend.
    let b5 = backend.seal_silently(vec![]);
    let b6 = backend.seal_silently(vec![]);
    backend.announce(b6.clone());
    assert_eq!(next(&mut heads).await["hash"], json!(b5.hash));
    assert_eq!(next(&mut heads).await["hash"], json!(b6.hash));

    heads.unsubscribe().await.unwrap();
    let err = client
        .subscribe::<Value, _>("eth_subscribe", rpc_params!["syncing"], "eth_unsubscribe")
        .await
        .unwrap_err();
    match err {
        jsonrpsee::core::ClientError::Call(err) => {
            assert_eq!(err.code(), -32601);
            assert_eq!(
                err.message(),
                "no \"syncing\" subscription in eth namespace"
            );
        }
        other => panic!("unexpected error {other}"),
    }
}
