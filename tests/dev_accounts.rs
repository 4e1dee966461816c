//! The devnet signs for its ten dev accounts as anvil and hardhat do (eth_accounts,
//! eth_sendTransaction with the missing fields filled, eth_signTransaction, eth_sign,
//! personal_sign, eth_signTypedData_v4) and serves evm_mine; a node without `rpc.dev_accounts`
//! signs for nobody and has no evm_mine.

mod common;

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, Signature, U256};
use common::{
    CHAIN_ID, Devnet, Rpc, RpcFailure, dev_signer, free_port, quantity, token_deploy_input,
};
use serde_json::json;

const RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);

fn unknown_account(answer: Result<serde_json::Value, RpcFailure>) {
    match answer {
        Err(RpcFailure::Error { code, message, .. }) => {
            assert_eq!((code, message.as_str()), (-32000, "unknown account"));
        }
        other => panic!("expected unknown account, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_signs_for_its_dev_accounts() {
    let node = Devnet::start(&[]);
    let rpc = Rpc::new(&node.url());
    let dev: Vec<Address> = (0..10).map(|i| dev_signer(i).address()).collect();
    let accounts: Vec<Address> =
        serde_json::from_value(rpc.ok("eth_accounts", json!([])).await).unwrap();
    assert_eq!(accounts, dev);

    // A transfer with only from, to and value: nonce, gas and fees are filled.
    let to = Address::repeat_byte(0x42);
    let hash: B256 = serde_json::from_value(
        rpc.ok(
            "eth_sendTransaction",
            json!([{"from": dev[0], "to": to, "value": "0x5"}]),
        )
        .await,
    )
    .unwrap();
    let receipt = rpc.wait_receipt(hash, RECEIPT_TIMEOUT).await;
    assert_eq!(receipt.status, 1);
    assert_eq!(receipt.gas_used, 21_000);
    assert_eq!(rpc.balance(to).await, U256::from(5));

    // A deployment (no `to`), its gas estimated.
    let create = token_deploy_input("Dev", "DEV", U256::from(1000u64));
    let hash: B256 = serde_json::from_value(
        rpc.ok(
            "eth_sendTransaction",
            json!([{"from": dev[1], "data": create}]),
        )
        .await,
    )
    .unwrap();
    let receipt = rpc.wait_receipt(hash, RECEIPT_TIMEOUT).await;
    assert_eq!(receipt.status, 1);
    let token = receipt.contract_address.expect("a contract address");
    assert!(!rpc.code(token).await.is_empty());

    // eth_signTransaction gives raw bytes that eth_sendRawTransaction takes.
    let signed = rpc
        .ok(
            "eth_signTransaction",
            json!([{"from": dev[2], "to": to, "value": "0x7"}]),
        )
        .await;
    let raw: Bytes = serde_json::from_value(signed["raw"].clone()).unwrap();
    let hash: B256 =
        serde_json::from_value(rpc.ok("eth_sendRawTransaction", json!([raw])).await).unwrap();
    assert_eq!(json!(hash), signed["hash"]);
    rpc.wait_receipt(hash, RECEIPT_TIMEOUT).await;
    assert_eq!(rpc.balance(to).await, U256::from(12));

    // eth_sign and personal_sign: EIP-191, recoverable to the account.
    let message = b"hello rtchain";
    let by_eth_sign: Bytes = serde_json::from_value(
        rpc.ok("eth_sign", json!([dev[3], Bytes::from_static(message)]))
            .await,
    )
    .unwrap();
    let by_personal: Bytes = serde_json::from_value(
        rpc.ok(
            "personal_sign",
            json!([Bytes::from_static(message), dev[3]]),
        )
        .await,
    )
    .unwrap();
    assert_eq!(by_eth_sign, by_personal);
    let signature = Signature::try_from(by_eth_sign.as_ref()).expect("65 bytes");
    assert_eq!(signature.recover_address_from_msg(message).unwrap(), dev[3]);

    // eth_signTypedData_v4: EIP-712, the typed data as an object or as a string holding its
    // JSON (as viem and MetaMask send it); the expected hash comes from alloy's sol! types.
    alloy::sol! {
        struct Mail { address to; string contents; uint256 amount; }
    }
    let verifying_contract = Address::repeat_byte(0xcc);
    let domain = alloy::sol_types::eip712_domain! {
        name: "rtchain test",
        version: "1",
        chain_id: CHAIN_ID,
        verifying_contract: verifying_contract,
    };
    let mail = Mail {
        to,
        contents: "hello".into(),
        amount: U256::from(10u64).pow(U256::from(20u64)),
    };
    let expected = alloy::sol_types::SolStruct::eip712_signing_hash(&mail, &domain);
    let typed = json!({
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Mail": [
                {"name": "to", "type": "address"},
                {"name": "contents", "type": "string"},
                {"name": "amount", "type": "uint256"},
            ],
        },
        "primaryType": "Mail",
        "domain": {
            "name": "rtchain test",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": verifying_contract,
        },
        "message": {"to": to, "contents": "hello", "amount": "100000000000000000000"},
    });
    let by_object: Bytes =
        serde_json::from_value(rpc.ok("eth_signTypedData_v4", json!([dev[5], typed])).await)
            .unwrap();
    let by_string: Bytes = serde_json::from_value(
        rpc.ok("eth_signTypedData_v4", json!([dev[5], typed.to_string()]))
            .await,
    )
    .unwrap();
    assert_eq!(by_object, by_string);
    let signature = Signature::try_from(by_object.as_ref()).expect("65 bytes");
    assert_eq!(
        signature.recover_address_from_prehash(&expected).unwrap(),
        dev[5]
    );
    match rpc
        .call(
            "eth_signTypedData_v4",
            json!([dev[5], {"types": {}, "primaryType": "Missing", "domain": {}, "message": {}}]),
        )
        .await
    {
        Err(RpcFailure::Error { code, message, .. }) => {
            assert_eq!(code, -32602, "{message}");
            assert!(message.contains("typed data"), "{message}");
        }
        other => panic!("malformed typed data: {other:?}"),
    }
    // A type that contains itself can only be signed as far as the message nests it: a cycle in
    // the types alone is answered, not looped on.
    let cyclic = json!({
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}],
            "Node": [{"name": "next", "type": "Node"}, {"name": "value", "type": "uint256"}],
        },
        "primaryType": "Node",
        "domain": {"name": "cycle"},
        "message": {"next": {"next": {"value": "1"}, "value": "2"}, "value": "3"},
    });
    let answer = rpc
        .call("eth_signTypedData_v4", json!([dev[5], cyclic]))
        .await;
    assert!(
        matches!(answer, Ok(_) | Err(RpcFailure::Error { code: -32602, .. })),
        "{answer:?}"
    );

    // evm_mine: answers once more blocks are sealed (the idle empty blocks come every second);
    // a chosen timestamp is refused.
    let before = rpc.block_number().await.unwrap();
    assert_eq!(rpc.ok("evm_mine", json!([])).await, json!("0x0"));
    assert!(rpc.block_number().await.unwrap() > before);
    let before = rpc.block_number().await.unwrap();
    assert_eq!(
        rpc.ok("evm_mine", json!([{"blocks": 2}])).await,
        json!("0x0")
    );
    assert!(rpc.block_number().await.unwrap() >= before + 2);
    for refused in [
        json!([1_700_000_000u64]),
        json!([{"timestamp": "0x1"}]),
        json!([{"blocks": 0}]),
    ] {
        match rpc.call("evm_mine", refused.clone()).await {
            Err(RpcFailure::Error { code, .. }) => assert_eq!(code, -32602, "{refused}"),
            other => panic!("evm_mine {refused}: {other:?}"),
        }
    }

    // Any other account: geth's refusal, for every signing method.
    let stranger = Address::repeat_byte(0x99);
    unknown_account(
        rpc.call("eth_sendTransaction", json!([{"from": stranger, "to": to}]))
            .await,
    );
    unknown_account(rpc.call("eth_sign", json!([stranger, "0x00"])).await);
    unknown_account(
        rpc.call("eth_signTypedData_v4", json!([stranger, typed]))
            .await,
    );
    // A transaction that cannot succeed is refused with the estimate's error, not sent.
    let broke = rpc
        .call(
            "eth_sendTransaction",
            json!([{"from": dev[4], "to": to, "value": format!("{:#x}", U256::MAX)}]),
        )
        .await;
    assert!(broke.is_err(), "{broke:?}");
    assert_eq!(
        quantity(
            &rpc.ok("eth_getTransactionCount", json!([dev[4], "latest"]))
                .await
        ),
        U256::ZERO
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_dev_accounts_signs_for_nobody() {
    let temp = tempfile::tempdir().unwrap();
    let node = Devnet::start_node_config(&temp.path().join("data"), free_port(), "");
    let rpc = Rpc::new(&node.url());
    assert_eq!(rpc.ok("eth_accounts", json!([])).await, json!([]));
    let dev0 = dev_signer(0).address();
    unknown_account(
        rpc.call("eth_sendTransaction", json!([{"from": dev0, "to": dev0}]))
            .await,
    );
    unknown_account(rpc.call("personal_sign", json!(["0x00", dev0])).await);
    match rpc.call("evm_mine", json!([])).await {
        Err(RpcFailure::Error { code, .. }) => assert_eq!(code, -32601),
        other => panic!("evm_mine on a node without dev accounts: {other:?}"),
    }
}

/// Nick's method, the keyless way singletons (the CREATE2 deployer, ERC-1820) are deployed on
/// every chain: a pre-EIP-155 deployment with a made-up signature, whose recovered sender
/// nobody holds a key for, so the contract lands at the same address everywhere. Refused by
/// default (tests/bad_input.rs); accepted with `--rpc-allow-unprotected-txs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_deployment_needs_the_unprotected_opt_in() {
    use alloy::consensus::{SignableTransaction, TxEnvelope, TxLegacy};
    use alloy::eips::eip2718::Encodable2718;
    use alloy::primitives::TxKind;

    // Runtime code that returns 42; the init code copies it out.
    let init_code = Bytes::from_static(&alloy::hex!("69602a60005260206000f3600052600a6016f3"));
    let tx = TxLegacy {
        chain_id: None,
        nonce: 0,
        gas_price: 100 * common::GWEI,
        gas_limit: 100_000,
        to: TxKind::Create,
        value: U256::ZERO,
        input: init_code,
    };
    // The first made-up r that is a curve point's x gives a sender.
    let (signed, keyless) = (1u8..)
        .find_map(|byte| {
            let signature = Signature::new(
                U256::from_be_bytes([byte; 32]),
                U256::from_be_bytes([0x22; 32]),
                false,
            );
            let signed = tx.clone().into_signed(signature);
            let sender = signed.recover_signer().ok()?;
            Some((signed, sender))
        })
        .expect("a valid made-up signature");
    let raw = Bytes::from(TxEnvelope::from(signed).encoded_2718());

    let node = Devnet::start(&["--rpc-allow-unprotected-txs"]);
    let rpc = Rpc::new(&node.url());
    // Fund the keyless sender with exactly its gas, as the singletons' deploy scripts do.
    let fee = U256::from(100_000u64) * U256::from(100 * common::GWEI);
    let funding: B256 = serde_json::from_value(
        rpc.ok(
            "eth_sendTransaction",
            json!([{"from": dev_signer(5).address(), "to": keyless, "value": format!("{fee:#x}")}]),
        )
        .await,
    )
    .unwrap();
    assert_eq!(rpc.wait_receipt(funding, RECEIPT_TIMEOUT).await.status, 1);

    let hash: B256 =
        serde_json::from_value(rpc.ok("eth_sendRawTransaction", json!([raw])).await).unwrap();
    let receipt = rpc.wait_receipt(hash, RECEIPT_TIMEOUT).await;
    assert_eq!(receipt.status, 1);
    let contract = keyless.create(0);
    assert_eq!(receipt.contract_address, Some(contract));
    let answer = rpc
        .ok("eth_call", json!([{"to": contract}, "latest"]))
        .await;
    assert_eq!(quantity(&answer), U256::from(42));
    // Served as what it is: a legacy transaction without a chain id.
    let served = rpc.ok("eth_getTransactionByHash", json!([hash])).await;
    assert_eq!(served["type"], "0x0");
    assert!(
        served.get("chainId").is_none_or(|c| c.is_null()),
        "{served}"
    );
    assert!(
        matches!(served["v"].as_str(), Some("0x1b" | "0x1c")),
        "{served}"
    );
}
