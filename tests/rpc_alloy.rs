//! The node through alloy, as a dapp developer uses it: transfers, an ERC-20 (deploy, transfer,
//! events through eth_getLogs and a `logs` subscription), eth_call, eth_estimateGas, a revert
//! with its reason, eth_getProof checked against the block's stateRoot, and
//! eth_sendRawTransactionSync.

mod common;

use std::time::Duration;

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::eip2718::Encodable2718,
    network::{EthereumWallet, TransactionBuilder, TxSignerSync},
    primitives::{Address, B256, Bytes, TxKind, U256, keccak256},
    providers::{Provider, ProviderBuilder, WsConnect},
    rpc::types::{Filter, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
    sol_types::{SolEvent, SolValue},
};
use alloy_trie::{Nibbles, TrieAccount, proof::verify_proof};
use common::{CHAIN_ID, DEV_KEY_0, DEV_KEY_1, Devnet, raw_rpc, token_artifact};
use futures::StreamExt;

sol! {
    #[sol(rpc)]
    interface IToken {
        event Transfer(address indexed from, address indexed to, uint256 value);
        function transfer(address to, uint256 value) external returns (bool);
        function balanceOf(address owner) external view returns (uint256);
    }
}

fn signer(key: &str) -> PrivateKeySigner {
    key.parse().expect("dev key")
}

async fn deploy_token(provider: &impl Provider, supply: U256) -> Address {
    let (_, code) = token_artifact();
    let mut init = code;
    init.extend(("Test Token".to_string(), "TT".to_string(), supply).abi_encode_params());
    let tx = TransactionRequest::default().with_deploy_code(init);
    let receipt = provider
        .send_transaction(tx)
        .await
        .expect("send deploy")
        .get_receipt()
        .await
        .expect("deploy receipt");
    assert!(receipt.status(), "deploy failed: {receipt:?}");
    receipt.contract_address.expect("contract address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_erc20_through_alloy() {
    let node = Devnet::start(&[]);
    let alice = signer(DEV_KEY_0);
    let bob = signer(DEV_KEY_1).address();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(alice.clone()))
        .connect_http(node.url().parse().unwrap());

    assert_eq!(provider.get_chain_id().await.unwrap(), CHAIN_ID);

    // A plain transfer: the receipt's block resolves by hash and holds the transaction.
    let before = provider.get_balance(bob).await.unwrap();
    let value = U256::from(1_234_567_890_000u64);
    let tx = TransactionRequest::default().with_to(bob).with_value(value);
    let receipt = provider
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(receipt.gas_used, 21_000);
    let block_hash = receipt.block_hash.expect("sealed receipt has a block hash");
    let block = provider
        .get_block_by_hash(block_hash)
        .await
        .unwrap()
        .expect("block by hash");
    assert_eq!(block.header.number, receipt.block_number.unwrap());
    assert!(
        block
            .transactions
            .hashes()
            .any(|h| h == receipt.transaction_hash)
    );
    assert_eq!(provider.get_balance(bob).await.unwrap(), before + value);

    // ERC-20: deploy, transfer, events, calls, estimates.
    let supply = U256::from(1_000_000u64) * U256::from(10u64).pow(U256::from(18u64));
    let token_address = deploy_token(&provider, supply).await;
    let token = IToken::new(token_address, &provider);
    assert_eq!(
        token.balanceOf(alice.address()).call().await.unwrap(),
        supply
    );
    let amount = U256::from(4242u64);
    let gas = token.transfer(bob, amount).estimate_gas().await.unwrap();
    assert!(gas > 21_000 && gas < 100_000, "estimate {gas}");
    let receipt = token
        .transfer(bob, amount)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert!(
        receipt.gas_used <= gas,
        "used {} > estimated {gas}",
        receipt.gas_used
    );
    assert_eq!(token.balanceOf(bob).call().await.unwrap(), amount);

    let filter = Filter::new()
        .address(token_address)
        .event_signature(IToken::Transfer::SIGNATURE_HASH)
        .from_block(0u64);
    let logs = provider.get_logs(&filter).await.unwrap();
    assert_eq!(logs.len(), 2, "mint and transfer: {logs:?}");
    let transfer = IToken::Transfer::decode_log(&logs[1].inner).unwrap();
    assert_eq!(
        (transfer.from, transfer.to, transfer.value),
        (alice.address(), bob, amount)
    );
    assert_eq!(logs[1].transaction_hash, Some(receipt.transaction_hash));
    assert_eq!(logs[1].block_hash, receipt.block_hash);
    // Filtering by the indexed recipient topic finds only the transfer.
    let by_recipient = Filter::new()
        .address(token_address)
        .topic2(bob.into_word())
        .from_block(0u64);
    assert_eq!(provider.get_logs(&by_recipient).await.unwrap().len(), 1);

    // A revert carries its reason (code 3 with the revert data).
    let too_much = supply + U256::from(1u64);
    let error = token
        .transfer(bob, too_much)
        .from(bob)
        .call()
        .await
        .expect_err("must revert");
    let text = error.to_string();
    assert!(text.contains("insufficient balance"), "{text}");
    let error = token
        .transfer(bob, too_much)
        .from(bob)
        .estimate_gas()
        .await
        .expect_err("estimate must fail");
    assert!(
        error.to_string().contains("insufficient balance"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_subscription_delivers_new_transfers() {
    let node = Devnet::start(&[]);
    let alice = signer(DEV_KEY_0);
    let http = ProviderBuilder::new()
        .wallet(EthereumWallet::from(alice.clone()))
        .connect_http(node.url().parse().unwrap());
    let token_address = deploy_token(&http, U256::from(10_000u64)).await;

    let ws = ProviderBuilder::new()
        .connect_ws(WsConnect::new(node.ws_url()))
        .await
        .unwrap();
    let filter = Filter::new()
        .address(token_address)
        .event_signature(IToken::Transfer::SIGNATURE_HASH);
    let mut stream = ws.subscribe_logs(&filter).await.unwrap().into_stream();

    let bob = signer(DEV_KEY_1).address();
    let token = IToken::new(token_address, &http);
    let receipt = token
        .transfer(bob, U256::from(7u64))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let log = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("log within 10 s")
        .expect("stream open");
    assert_eq!(log.transaction_hash, Some(receipt.transaction_hash));
    let decoded = IToken::Transfer::decode_log(&log.inner).unwrap();
    assert_eq!(decoded.value, U256::from(7u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_proof_verifies_against_the_state_root() {
    let node = Devnet::start(&[]);
    let alice = signer(DEV_KEY_0);
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(alice.clone()))
        .connect_http(node.url().parse().unwrap());
    let token_address = deploy_token(&provider, U256::from(777u64)).await;

    // The token's balances mapping is its slot 2 or so; prove the holder's slot whatever it is,
    // by trying the first few mapping slots and keeping the non-zero one.
    let block = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .unwrap();
    let mut proven_nonzero = false;
    for mapping_slot in 0u64..6 {
        let key = keccak256((alice.address(), U256::from(mapping_slot)).abi_encode());
        let proof = provider.get_proof(token_address, vec![key]).await.unwrap();
        let root = provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap()
            .header
            .state_root;
        let account = TrieAccount {
            nonce: proof.nonce,
            balance: proof.balance,
            storage_root: proof.storage_hash,
            code_hash: proof.code_hash,
        };
        verify_proof(
            root,
            Nibbles::unpack(keccak256(token_address)),
            Some(alloy_rlp::encode(account)),
            &proof.account_proof,
        )
        .expect("account proof verifies against the block's stateRoot");
        let slot = &proof.storage_proof[0];
        let expected = (!slot.value.is_zero()).then(|| alloy_rlp::encode(slot.value));
        verify_proof(
            proof.storage_hash,
            Nibbles::unpack(keccak256(key)),
            expected,
            &slot.proof,
        )
        .expect("storage proof verifies against the account's storage root");
        proven_nonzero |= slot.value == U256::from(777u64);
    }
    assert!(proven_nonzero, "the holder's balance slot was proven");
    let _ = block;

    // An account that does not exist has a valid exclusion proof.
    let nobody = Address::repeat_byte(0x5a);
    let proof = provider.get_proof(nobody, vec![]).await.unwrap();
    let root = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .unwrap()
        .header
        .state_root;
    verify_proof(
        root,
        Nibbles::unpack(keccak256(nobody)),
        None,
        &proof.account_proof,
    )
    .expect("exclusion proof");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_raw_transaction_sync_returns_the_receipt() {
    let node = Devnet::start(&[]);
    let alice = signer(DEV_KEY_0);
    let provider = ProviderBuilder::new().connect_http(node.url().parse().unwrap());
    let base_fee = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .unwrap()
        .header
        .base_fee_per_gas
        .unwrap_or(1_000_000_000);
    for (nonce, method) in [
        (0u64, "eth_sendRawTransactionSync"),
        (1, "realtime_sendRawTransaction"),
    ] {
        let mut tx = TxEip1559 {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: (base_fee as u128) * 2 + 1,
            max_priority_fee_per_gas: 1,
            to: TxKind::Call(Address::repeat_byte(0x11)),
            value: U256::from(5u64),
            access_list: Default::default(),
            input: Bytes::new(),
        };
        let signature = alice.sign_transaction_sync(&mut tx).unwrap();
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        let raw = Bytes::from(envelope.encoded_2718());
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [raw, 5000]})
                .to_string();
        let response = raw_rpc(&node.url(), &body).await;
        let receipt = &response["result"];
        assert_eq!(receipt["status"], "0x1", "{method}: {response}");
        assert_eq!(
            receipt["transactionHash"]
                .as_str()
                .unwrap()
                .parse::<B256>()
                .unwrap(),
            *envelope.tx_hash()
        );
        assert_eq!(receipt["gasUsed"], "0x5208");
        // Once its block is sealed, the standard receipt agrees and carries a block hash.
        let sealed = provider
            .get_transaction_receipt(*envelope.tx_hash())
            .await
            .unwrap()
            .expect("receipt");
        assert!(sealed.block_hash.is_some());
        assert_eq!(
            Some(sealed.block_number.unwrap()),
            receipt["blockNumber"].as_str().map(|n| u64::from_str_radix(
                n.trim_start_matches("0x"),
                16
            )
            .unwrap())
        );
    }
    assert_eq!(
        provider
            .get_balance(Address::repeat_byte(0x11))
            .await
            .unwrap(),
        U256::from(10u64)
    );
}
