//! `rtchain devnet --genesis genesis.json` (geth style) starts the chain the file describes: its
//! chain id (over --chain-id), its allocation (balance, nonce, code, storage) and block 0's
//! header fields. A data directory initialised with another genesis is refused, and so is a
//! malformed file, with a clear error and no panic.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alloy::primitives::{Address, B256, Bytes, TxKind, U256, address, b256, hex};
use common::{
    Devnet, GWEI, Rpc, dev_signer, free_port, quantity_u64, sign, token_deploy_input,
    tools::ChildGuard,
};
use serde_json::{Value, json};

const CHAIN_ID: u64 = 4242;
const GAS_LIMIT: u64 = 0x1c9c380;
const BASE_FEE: u64 = 7;
const TIMESTAMP: u64 = 0x6553_f100;
/// Dev account 0 (so the test can sign for it), allocated with nonce 5.
const EOA: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
const EOA_NONCE: u64 = 5;
const CONTRACT: Address = address!("00000000000000000000000000000000000c0de0");
const CONTRACT_BALANCE: u64 = 12_345;
/// Returns the storage word at the slot given by the first 32 bytes of calldata:
/// PUSH1 0 CALLDATALOAD SLOAD PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN.
const RUNTIME: [u8; 12] = hex!("6000355460005260206000f3");
const SLOT_1: B256 = b256!("0000000000000000000000000000000000000000000000000000000000000001");
const VALUE_0: B256 = b256!("000000000000000000000000000000000000000000000000000000000000002a");
const VALUE_1: B256 = b256!("deadbeef00000000000000000000000000000000000000000000000000c0ffee");

fn eoa_balance() -> U256 {
    U256::from(1000u64) * U256::from(10u64).pow(U256::from(18u64))
}

/// The genesis under test; `eoa_balance` varies it for the "another chain" case.
fn genesis(eoa_balance: U256) -> Value {
    json!({
        "config": { "chainId": CHAIN_ID, "londonBlock": 0, "shanghaiTime": 0, "cancunTime": 0 },
        "nonce": "0x0",
        "timestamp": format!("{TIMESTAMP:#x}"),
        "extraData": "0x",
        "gasLimit": format!("{GAS_LIMIT:#x}"),
        "difficulty": "0x0",
        "mixHash": B256::ZERO,
        "coinbase": Address::ZERO,
        "baseFeePerGas": format!("{BASE_FEE:#x}"),
        "alloc": {
            EOA.to_string(): { "balance": format!("{eoa_balance:#x}"), "nonce": format!("{EOA_NONCE:#x}") },
            CONTRACT.to_string(): {
                "balance": format!("{CONTRACT_BALANCE:#x}"),
                "code": Bytes::from_static(&RUNTIME),
                "storage": { B256::ZERO.to_string(): VALUE_0, SLOT_1.to_string(): VALUE_1 },
            },
        },
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the genesis file");
    path
}

#[tokio::test]
async fn genesis_file_defines_the_chain_and_pins_the_data_dir() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = write(
        temp.path(),
        "genesis.json",
        &genesis(eoa_balance()).to_string(),
    );
    let file = file.to_str().expect("utf-8 path");
    let data = temp.path().join("data");
    let node = Devnet::start_in(&data, &["--genesis", file, "--chain-id", "4242"]);
    let rpc = Rpc::new(&node.url());

    assert_eq!(
        quantity_u64(&rpc.ok("eth_chainId", json!([])).await),
        CHAIN_ID
    );
    assert_eq!(rpc.balance(EOA).await, eoa_balance(), "EOA balance");
    assert_eq!(rpc.nonce(EOA).await, EOA_NONCE, "EOA nonce");
    assert_eq!(rpc.balance(CONTRACT).await, U256::from(CONTRACT_BALANCE));
    let dev_1 = dev_signer(1).address();
    assert_eq!(rpc.balance(dev_1).await, U256::ZERO, "no dev genesis");
    assert_eq!(rpc.code(CONTRACT).await.as_ref(), RUNTIME, "eth_getCode");
    assert_eq!(rpc.storage(CONTRACT, B256::ZERO).await, VALUE_0, "slot 0");
    assert_eq!(rpc.storage(CONTRACT, SLOT_1).await, VALUE_1, "slot 1");
    let call = rpc.eth_call(CONTRACT, Bytes::new()).await;
    assert_eq!(call.as_ref(), VALUE_0.as_slice(), "eth_call, slot 0");
    let call = rpc.eth_call(CONTRACT, SLOT_1.into()).await;
    assert_eq!(call.as_ref(), VALUE_1.as_slice(), "eth_call, slot 1");

    let block0 = rpc.ok("eth_getBlockByNumber", json!(["0x0", false])).await;
    assert_eq!(quantity_u64(&block0["baseFeePerGas"]), BASE_FEE, "{block0}");
    assert_eq!(quantity_u64(&block0["gasLimit"]), GAS_LIMIT, "{block0}");
    assert_eq!(quantity_u64(&block0["timestamp"]), TIMESTAMP, "{block0}");

    // The chain executes with the file's chain id and nonce: a deployment signed for 4242 at
    // nonce 5 lands at the address derived from nonce 5.
    let tx = alloy::consensus::TxEip1559 {
        chain_id: CHAIN_ID,
        nonce: EOA_NONCE,
        gas_limit: 1_000_000,
        max_fee_per_gas: 100 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to: TxKind::Create,
        value: U256::ZERO,
        access_list: Default::default(),
        input: token_deploy_input("T", "T", U256::from(1u64)),
    };
    let receipt = rpc
        .send_raw_sync(&sign(&dev_signer(0), tx))
        .await
        .expect("deploy at nonce 5 on chain 4242");
    assert!(receipt.succeeded(), "{receipt:?}");
    assert_eq!(receipt.contract_address, Some(EOA.create(EOA_NONCE)));
    // SIGKILL, not SIGTERM: rtchain installs its SIGTERM handler only after printing the dev
    // accounts, so a SIGTERM this early can kill it by the default action (reported).
    drop(node);

    // The same genesis restarts on the data directory and keeps the chain; the file names the
    // chain id, so --chain-id may be left out (one that disagrees is refused, below).
    let node = Devnet::start_in(&data, &["--genesis", file]);
    let rpc = Rpc::new(&node.url());
    assert_eq!(
        quantity_u64(&rpc.ok("eth_chainId", json!([])).await),
        CHAIN_ID
    );
    assert_eq!(
        rpc.nonce(EOA).await,
        EOA_NONCE + 1,
        "the deployment survived"
    );
    drop(node);

    // Another genesis (one balance differs) is refused.
    let other = write(
        temp.path(),
        "other.json",
        &genesis(U256::from(1u64)).to_string(),
    );
    let stderr = devnet_refuses(&data, &other, &[]);
    assert!(
        stderr.contains("data directory") && stderr.contains("another chain"),
        "the error should name the data directory and another chain:\n{stderr}"
    );
}

#[test]
fn invalid_json_genesis_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = write(
        temp.path(),
        "genesis.json",
        "{ \"config\": { \"chainId\": 4242 }, ",
    );
    let stderr = devnet_refuses(&temp.path().join("data"), &file, &[]);
    assert!(
        stderr.contains("invalid JSON") && stderr.contains(&file.display().to_string()),
        "the error should say the file is not JSON and name it:\n{stderr}"
    );
}

#[test]
fn genesis_without_chain_id_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut without = genesis(eoa_balance());
    without["config"]
        .as_object_mut()
        .expect("config")
        .remove("chainId");
    let file = write(temp.path(), "genesis.json", &without.to_string());
    let stderr = devnet_refuses(&temp.path().join("data"), &file, &[]);
    assert!(
        stderr.contains("chainId"),
        "the error should name config.chainId:\n{stderr}"
    );
}

#[test]
fn a_chain_id_that_disagrees_with_the_genesis_file_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = write(
        temp.path(),
        "genesis.json",
        &genesis(eoa_balance()).to_string(),
    );
    let other = (CHAIN_ID + 1).to_string();
    let stderr = devnet_refuses(&temp.path().join("data"), &file, &["--chain-id", &other]);
    assert!(
        stderr.contains(&format!("chain id {other} was asked for"))
            && stderr.contains(&format!("is chain {CHAIN_ID}")),
        "the error should name both chain ids:\n{stderr}"
    );
}

#[test]
fn a_fork_scheduled_after_genesis_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut later = genesis(eoa_balance());
    later["config"]["pragueTime"] = json!(TIMESTAMP + 3600);
    let file = write(temp.path(), "genesis.json", &later.to_string());
    let stderr = devnet_refuses(&temp.path().join("data"), &file, &[]);
    assert!(
        stderr.contains(&format!("config.pragueTime is {}", TIMESTAMP + 3600))
            && stderr.contains("Prague from genesis"),
        "the error should name the fork and what rtchain runs:\n{stderr}"
    );
}

/// Runs `rtchain devnet --genesis FILE` on `data_dir`, which must exit non-zero within 30 s
/// without a panic; returns its stderr. A node that starts instead is killed and fails the test.
fn devnet_refuses(data_dir: &Path, file: &Path, extra: &[&str]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_rtchain"))
        .arg("devnet")
        .arg("--no-l1")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--rpc-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--genesis")
        .arg(file)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rtchain");
    let mut child = ChildGuard(child);
    let stderr = child.0.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    // A node that serves prints "RPC: ..." and never exits by itself: stop it then.
    let (line_tx, lines) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stdout = String::new();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for rtchain") {
            break Some(status);
        }
        let serving = lines.try_iter().fold(false, |serving, line| {
            stdout += &format!("{line}\n");
            serving || line.starts_with("RPC: ")
        });
        if serving || Instant::now() > deadline {
            drop(child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "devnet started with {} instead of refusing it\nstdout:\n{stdout}\nstderr:\n{stderr}",
            file.display()
        );
    };
    assert!(
        !status.success() && status.code() != Some(101) && !stderr.contains("panicked"),
        "expected a clean error exit, got {status}:\n{stderr}"
    );
    println!("refused ({status}): {}", stderr.trim());
    stderr
}
