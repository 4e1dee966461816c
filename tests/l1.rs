//! Settlement to a real L1 (anvil from the project's node_modules): deposits in, withdrawals
//! out, output roots posted by a validator quorum, the chain rebuilt from L1 alone, and the
//! batcher surviving an L1 reorg and its own kill -9. Contract-level refusals (signatures,
//! proofs, the inbox's hash chain) are in `tests/js/l1-contracts.mjs`, run here too.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use alloy::{
    eips::eip2718::Encodable2718,
    primitives::{Address, B256, Bytes, TxKind, U256, address, utils::parse_ether},
    providers::Provider,
};
use common::{Devnet, Rpc, dev_signer, eip1559, free_port, quantity, sign, wait_for};
use rtchain_l1::{
    anvil::{Anvil, AnvilOptions},
    contracts::{BatchInbox, OutputOracle},
    deploy::Deployment,
};
use rtchain_node::{keys::dev_key, l1_cli};

const WAIT: Duration = Duration::from_secs(90);

/// A devnet with its own anvil L1 on a free port; returns it, the L1 URL and the contracts.
fn devnet_with_l1(dir: &Path, extra: &[&str]) -> (Devnet, String, Deployment) {
    let l1_port = free_port().to_string();
    let mut args = vec!["--l1-port", &l1_port, "--withdrawal-delay-secs", "3"];
    args.extend_from_slice(extra);
    let node = Devnet::start_on(dir, free_port(), &args);
    let deployment =
        Deployment::load(&dir.join("l1.json")).expect("the devnet records its contracts");
    (node, format!("http://127.0.0.1:{l1_port}"), deployment)
}

async fn l1_status(rpc: &Rpc) -> serde_json::Value {
    rpc.ok("rtchain_l1Status", serde_json::json!([])).await
}

/// Waits until the inbox holds batches for L2 blocks up to at least `block`.
async fn wait_posted(rpc: &Rpc, block: u64) {
    wait_for(&format!("batches up to L2 block {block}"), WAIT, || async {
        let s = l1_status(rpc).await;
        (s["inbox"]["nextL2Block"].as_u64().unwrap_or(0) > block).then_some(())
    })
    .await
}

/// A transfer from dev account `from`, with its nonce.
async fn transfer(rpc: &Rpc, from: u32, to: Address, value: U256) -> B256 {
    let signer = dev_signer(from);
    let nonce = rpc.nonce(signer.address()).await;
    let tx = sign(
        &signer,
        eip1559(nonce, TxKind::Call(to), value, Bytes::new(), 21_000),
    );
    rpc.send_raw_sync(&tx)
        .await
        .expect("transfer")
        .transaction_hash
}

/// The head once the last of `hashes` is sealed: a synchronous send answers at its mini-block,
/// before the block that holds it is sealed.
async fn sealed_head(rpc: &Rpc, hashes: &[B256]) -> u64 {
    let last = hashes.last().expect("a transaction was sent");
    let sealed = rpc.wait_receipt(*last, WAIT).await;
    let head = rpc.block_number().await.unwrap();
    head.max(sealed.block_number.expect("a sealed receipt has a block"))
}

/// Starts `rtchain node --derive-from-l1` on a fresh directory and waits until it reaches L2
/// block `until`; returns it.
fn derivation_node(dir: &Path, l1: &str, deployment: &Path) -> (std::process::Child, Rpc) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_rtchain"))
        .args(["node", "--derive-from-l1", l1, "--deployment"])
        .arg(deployment)
        .arg("--data-dir")
        .arg(dir)
        .args(["--rpc-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the derivation node");
    (child, Rpc::new(&format!("http://127.0.0.1:{port}")))
}

/// The hash and state root of block `number` on `rpc`, once it has it.
async fn block_facts(rpc: &Rpc, number: u64) -> (String, String) {
    wait_for(&format!("block {number} on {}", rpc.url), WAIT, || async {
        let b = rpc
            .call(
                "eth_getBlockByNumber",
                serde_json::json!([format!("0x{number:x}"), false]),
            )
            .await
            .ok()?;
        if b.is_null() {
            return None;
        }
        Some((
            b["hash"].as_str()?.to_owned(),
            b["stateRoot"].as_str()?.to_owned(),
        ))
    })
    .await
}

/// Every batch in the inbox continues the one before: no gap, no duplicate, a hash chain.
async fn check_inbox_chain(l1: &str, deployment: &Deployment) -> u64 {
    let provider = l1_cli::reader(l1).await.unwrap();
    let inbox = BatchInbox::new(deployment.inbox, &provider);
    let count: u64 = inbox.batchCount().call().await.unwrap().try_into().unwrap();
    let mut next = 1u64;
    let mut parent = B256::ZERO;
    for i in 0..count {
        let b = inbox.getBatch(U256::from(i)).call().await.unwrap();
        assert_eq!(
            b.firstBlock,
            next,
            "batch {i} starts at {} after {}",
            b.firstBlock,
            next - 1
        );
        assert_eq!(b.parentBatchHash, parent, "batch {i} does not chain");
        next = b.lastBlock + 1;
        parent = b.batchHash;
    }
    next - 1
}

#[tokio::test]
async fn deposits_and_withdrawals_round_trip_and_l1_alone_rebuilds_the_chain() {
    let temp = tempfile::tempdir().unwrap();
    let (node, l1, deployment) = devnet_with_l1(&temp.path().join("dev"), &[]);
    let rpc = Rpc::new(&node.url());

    // Deposit: 2 ETH from an L1 account into a fresh L2 address.
    let recipient = address!("0x00000000000000000000000000000000000d3905");
    let sent = l1_cli::deposit(
        &l1,
        deployment.portal,
        dev_key(5),
        recipient,
        parse_ether("2").unwrap(),
        Bytes::new(),
        100_000,
    )
    .await
    .unwrap();
    wait_for("the deposit on L2", WAIT, || async {
        (rpc.balance(recipient).await == parse_ether("2").unwrap()).then_some(())
    })
    .await;
    let receipt = rpc
        .ok("eth_getTransactionReceipt", serde_json::json!([sent.l2_tx]))
        .await;
    assert_eq!(receipt["type"], "0x7e");
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(receipt["depositReceiptVersion"], "0x1");
    assert_eq!(
        receipt["from"].as_str().unwrap().to_lowercase(),
        dev_key(5).address().to_string().to_lowercase()
    );

    // Ordinary traffic meanwhile.
    for i in 0..5u64 {
        transfer(
            &rpc,
            0,
            Address::with_last_byte(0x40 + i as u8),
            U256::from(1_000 + i),
        )
        .await;
    }

    // Withdrawal: 1 ETH from L2 to a fresh L1 address, proven and finalized after the window.
    let l1_target = address!("0x00000000000000000000000000000000000a1b2c");
    let started = l1_cli::initiate_withdrawal(
        &node.url(),
        dev_key(6),
        l1_target,
        parse_ether("1").unwrap(),
        100_000,
    )
    .await
    .unwrap();
    let l2_tx = started.transaction_hash;
    let inputs = wait_for("an output root over the withdrawal", WAIT, || async {
        l1_cli::proof_inputs(&l1, &node.url(), &deployment, l2_tx)
            .await
            .ok()
    })
    .await;

    // A forged proof is refused: one flipped byte in a trie node.
    let mut forged = inputs.clone();
    let mut node0 = forged.storage_proof[0].to_vec();
    let last = node0.len() - 1;
    node0[last] ^= 1;
    forged.storage_proof[0] = node0.into();
    assert!(
        l1_cli::prove(&l1, &deployment, dev_key(6), &forged)
            .await
            .is_err(),
        "a forged proof was accepted"
    );
    // A withdrawal against an output index not posted is refused.
    let mut unposted = inputs.clone();
    unposted.output_index = inputs.output_index + U256::from(1_000);
    assert!(
        l1_cli::prove(&l1, &deployment, dev_key(6), &unposted)
            .await
            .is_err()
    );

    l1_cli::prove(&l1, &deployment, dev_key(6), &inputs)
        .await
        .unwrap();
    // Too early: the window has not passed.
    let withdrawal = inputs.withdrawal.clone();
    assert!(
        l1_cli::finalize(&l1, &deployment, dev_key(6), &withdrawal)
            .await
            .is_err()
    );
    wait_for("the withdrawal window", WAIT, || async {
        (l1_cli::seconds_to_finalize(&l1, &deployment, &withdrawal)
            .await
            .ok()??
            == 0)
            .then_some(())
    })
    .await;
    l1_cli::finalize(&l1, &deployment, dev_key(6), &withdrawal)
        .await
        .unwrap();
    let l1_provider = l1_cli::reader(&l1).await.unwrap();
    assert_eq!(
        l1_provider.get_balance(l1_target).await.unwrap(),
        parse_ether("1").unwrap()
    );
    // Replayed: refused.
    assert!(
        l1_cli::finalize(&l1, &deployment, dev_key(6), &withdrawal)
            .await
            .is_err(),
        "a finalized withdrawal was finalized again"
    );

    // safe and finalized follow L1.
    let head = rpc.block_number().await.unwrap();
    wait_posted(&rpc, head).await;
    let status = l1_status(&rpc).await;
    assert!(status["l2"]["safe"].as_u64().unwrap() <= status["l2"]["head"].as_u64().unwrap());
    let safe = wait_for("L2 safe past the withdrawal", WAIT, || async {
        let s = l1_status(&rpc).await;
        let safe = s["l2"]["safe"].as_u64()?;
        (safe >= head).then_some(safe)
    })
    .await;
    let tagged = rpc
        .ok("eth_getBlockByNumber", serde_json::json!(["safe", false]))
        .await;
    assert!(quantity(&tagged["number"]) >= U256::from(safe));

    // Anyone can rebuild the chain from L1 alone and reach the validators' state at every
    // output root (the node checks each one and stops at a difference).
    check_inbox_chain(&l1, &deployment).await;
    let (mut derived, derived_rpc) = derivation_node(
        &temp.path().join("derived"),
        &l1,
        &temp.path().join("dev/l1.json"),
    );
    assert_eq!(
        block_facts(&derived_rpc, head).await,
        block_facts(&rpc, head).await
    );
    assert_eq!(
        derived_rpc.balance(recipient).await,
        parse_ether("2").unwrap(),
        "the derived chain holds the deposit"
    );
    let derived_receipt = derived_rpc
        .ok("eth_getTransactionReceipt", serde_json::json!([l2_tx]))
        .await;
    assert_eq!(derived_receipt["blockHash"], {
        let r = rpc
            .ok("eth_getTransactionReceipt", serde_json::json!([l2_tx]))
            .await;
        r["blockHash"].clone()
    });
    assert!(
        derived.try_wait().unwrap().is_none(),
        "the derivation node stopped: it found a difference"
    );
    let _ = derived.kill();
    let _ = derived.wait();
}

#[tokio::test]
async fn an_l1_reorg_and_a_killed_batcher_lose_nothing_and_post_no_gap_or_duplicate() {
    let temp = tempfile::tempdir().unwrap();
    let anvil = tokio::task::spawn_blocking(|| {
        Anvil::start(&AnvilOptions {
            port: 0,
            ..AnvilOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let dir = temp.path().join("dev");
    let args = ["--l1", anvil.url.as_str()];
    let port = free_port();
    let mut node = Devnet::start_on(&dir, port, &args);
    let deployment = Deployment::load(&dir.join("l1.json")).unwrap();
    let rpc = Rpc::new(&node.url());
    let mut hashes = Vec::new();
    for i in 0..6u64 {
        hashes.push(
            transfer(
                &rpc,
                1,
                Address::with_last_byte(0x50 + i as u8),
                U256::from(7),
            )
            .await,
        );
    }
    let head = sealed_head(&rpc, &hashes).await;
    wait_posted(&rpc, head).await;

    // Reorg the two newest L1 blocks (anvil's safe block is two behind: origins and deposits
    // stay) right after a batch landed in one of them: the batch is dropped and must be posted
    // again. The contracts are deployed well below the reorg.
    let l1 = Rpc::new(&anvil.url);
    let provider = l1_cli::reader(&anvil.url).await.unwrap();
    let inbox = BatchInbox::new(deployment.inbox, &provider);
    let before = wait_for("a batch in the newest L1 block", WAIT, || async {
        let latest = provider.get_block_number().await.ok()?;
        if latest < deployment.deploy_block + 6 {
            return None;
        }
        let count: u64 = inbox.batchCount().call().await.ok()?.try_into().ok()?;
        let last = inbox
            .getBatch(U256::from(count.checked_sub(1)?))
            .call()
            .await
            .ok()?;
        (last.l1BlockNumber == latest).then_some(last.lastBlock + 1)
    })
    .await;
    l1.ok("anvil_reorg", serde_json::json!([2, []])).await;
    let after: u64 = inbox.nextL2Block().call().await.unwrap();
    assert!(
        after < before,
        "the reorg dropped no batch ({after} >= {before})"
    );
    for i in 0..4u64 {
        hashes.push(
            transfer(
                &rpc,
                1,
                Address::with_last_byte(0x60 + i as u8),
                U256::from(9),
            )
            .await,
        );
    }

    // kill -9 while a batch transaction is in flight (pending in anvil's pool), then restart.
    let batcher = dev_key(rtchain_node::keys::DEV_BATCHER_KEY)
        .address()
        .to_string()
        .to_lowercase();
    wait_for("a batch transaction in flight", WAIT, || async {
        let pool = l1.ok("txpool_content", serde_json::json!([])).await;
        pool["pending"]
            .to_string()
            .to_lowercase()
            .contains(&batcher)
            .then_some(())
    })
    .await;
    node.kill9();
    let node = Devnet::start_on(&dir, port, &args);
    let rpc = Rpc::new(&node.url());
    for i in 0..3u64 {
        hashes.push(
            transfer(
                &rpc,
                1,
                Address::with_last_byte(0x70 + i as u8),
                U256::from(11),
            )
            .await,
        );
    }
    let head = sealed_head(&rpc, &hashes).await;
    wait_posted(&rpc, head).await;
    let posted = check_inbox_chain(&anvil.url, &deployment).await;
    assert!(posted >= head);

    // Everything is on L1: a node deriving from it has every transaction, in the same blocks.
    let (mut derived, derived_rpc) = derivation_node(
        &temp.path().join("derived"),
        &anvil.url,
        &dir.join("l1.json"),
    );
    assert_eq!(
        block_facts(&derived_rpc, head).await,
        block_facts(&rpc, head).await
    );
    for hash in &hashes {
        let ours = rpc
            .receipt(*hash)
            .await
            .unwrap()
            .expect("receipt on the devnet");
        let theirs = derived_rpc
            .receipt(*hash)
            .await
            .unwrap()
            .expect("receipt on the derived chain");
        assert_eq!(ours.block_hash, theirs.block_hash, "transaction {hash}");
    }
    assert!(
        derived.try_wait().unwrap().is_none(),
        "the derivation node stopped"
    );
    let _ = derived.kill();
    let _ = derived.wait();
    drop(node);
}

#[tokio::test]
async fn a_four_validator_cluster_posts_output_roots_signed_by_its_quorum() {
    let temp = tempfile::tempdir().unwrap();
    let l1_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtchain"))
        .args(["devnet", "--validators", "4", "--no-fastpath"])
        .args([
            "--rpc-addr",
            "127.0.0.1:0",
            "--l1-port",
            &l1_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(temp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read every line (a devnet whose stdout closes would fail its next print).
    let (found, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("Validator 0: RPC: ") {
                let _ = found.send(rest.split_whitespace().next().map(str::to_owned));
            }
        }
    });
    let rpc_url = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
        .await
        .unwrap()
        .ok()
        .flatten()
        .expect("the cluster prints validator 0's RPC");
    let l1 = format!("http://127.0.0.1:{l1_port}");
    let deployment = Deployment::load(&temp.path().join("v0/data/l1.json")).unwrap();
    let provider = l1_cli::reader(&l1).await.unwrap();
    let oracle = OutputOracle::new(deployment.oracle, &provider);
    // Three roots accepted means three quorum checks passed on L1 (the oracle refuses fewer
    // than 3 of the 4 registered signers).
    wait_for("three output roots on L1", WAIT, || async {
        let next: u64 = oracle
            .nextOutputIndex()
            .call()
            .await
            .ok()?
            .try_into()
            .ok()?;
        (next >= 3).then_some(())
    })
    .await;
    let rpc = Rpc::new(&rpc_url);
    let status = l1_status(&rpc).await;
    let last = &status["proposer"]["last"];
    if !last.is_null() {
        assert!(last["signatures"].as_u64().unwrap() >= 3);
    }
    // Each validator signs with its own settlement key.
    let mut signers = std::collections::HashSet::new();
    for i in 0..4 {
        let path = temp.path().join(format!("v{i}/settlement.key"));
        signers.insert(rtchain_node::keys::load_secp256k1(&path).unwrap().address());
    }
    assert_eq!(signers.len(), 4);
    // The roots are the validators' view of the chain: validator 0's output of the first root
    // block is what the oracle holds.
    let first = oracle.getL2Output(U256::ZERO).call().await.unwrap();
    let proof = rpc
        .ok(
            "rtchain_getWithdrawalProof",
            serde_json::json!([B256::ZERO, first.l2BlockNumber]),
        )
        .await;
    assert_eq!(
        proof["outputRoot"]
            .as_str()
            .unwrap()
            .parse::<B256>()
            .unwrap(),
        first.outputRoot
    );
    // SIGTERM stops every validator and the anvil the devnet started.
    // SAFETY: kill(2) with our child's pid and a standard signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Our deposit transaction's encoding and hash against an independent implementation: anvil
/// in optimism mode accepts the raw 0x7E transaction and reports the same hash.
#[tokio::test]
async fn deposit_transactions_encode_and_hash_as_anvils_optimism_mode_does() {
    let anvil = common::Anvil::start(&["--network", "optimism"]);
    let rpc = Rpc::new(&anvil.url());
    let from = dev_key(3).address();
    let tx = op_alloy_consensus::TxDeposit {
        source_hash: B256::repeat_byte(0x42),
        from,
        to: TxKind::Call(address!("0x00000000000000000000000000000000000b0b0b")),
        mint: 5_000_000_000_000_000,
        value: U256::from(1_000_000_000_000_000u64),
        gas_limit: 100_000,
        is_system_transaction: false,
        input: Bytes::from_static(&[0xde, 0xad]),
    };
    let ours = rtchain_node::settlement::deposit_tx(tx.clone());
    let answer = rpc
        .ok("eth_sendRawTransaction", serde_json::json!([ours.raw]))
        .await;
    assert_eq!(answer.as_str().unwrap().parse::<B256>().unwrap(), ours.hash);
    let mined = wait_for("anvil mines the deposit", WAIT, || async {
        let r = rpc
            .call("eth_getTransactionReceipt", serde_json::json!([ours.hash]))
            .await
            .ok()?;
        (!r.is_null()).then_some(r)
    })
    .await;
    assert_eq!(mined["status"], "0x1");
    // The same bytes as op-alloy's own 2718 encoding of the deposit.
    assert_eq!(ours.raw, Bytes::from(tx.encoded_2718()));
}

/// The contracts on their own against anvil: every refusal (signatures, proofs, the inbox's
/// hash chain, pausing, deletion) as the contracts implement it.
#[test]
fn the_l1_contracts_pass_their_own_tests_against_anvil() {
    let root = common::repo_root();
    let status = Command::new("node")
        .arg(root.join("tests/js/l1-contracts.mjs"))
        .current_dir(&root)
        .status()
        .expect("run node (run scripts/setup.sh)");
    assert!(status.success(), "tests/js/l1-contracts.mjs failed");
}
