//! A 4-validator cluster (plus one follower) of real processes on loopback:
//! `rtchain devnet --validators 4 --followers 1` starts and stops it; then the same nodes run as
//! `rtchain node --config` processes through a leader crash, a paused validator, a restart of
//! the whole cluster and a validator resyncing from genesis. Every receipt a client got must
//! stay valid, and every node (the follower included) must hold the same blocks.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alloy::primitives::{Address, TxKind, U256};
use common::{Devnet, ReceiptFacts, Rpc, dev_signer, eip1559, sign, wait_for};

struct Member {
    config: PathBuf,
    data: PathBuf,
    port: u16,
}

/// Starts `devnet --validators 4` on free ports, submits one transfer through it, stops it with
/// SIGTERM (which must stop every validator), and returns where each validator's config is.
fn devnet_cluster(dir: &Path) -> Vec<Member> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtchain"))
        .args([
            "devnet",
            "--validators",
            "4",
            "--followers",
            "1",
            "--no-fastpath",
            "--rpc-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rtchain devnet --validators 4");
    let stdout = child.stdout.take().expect("stdout");
    let mut urls = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while urls.len() < 5 {
        let line = lines
            .next()
            .expect("devnet printed its validators")
            .expect("read devnet output");
        let prefix = match urls.len() {
            4 => "Follower 0: RPC: ".to_string(),
            i => format!("Validator {i}: RPC: "),
        };
        if let Some(rest) = line.strip_prefix(&prefix) {
            urls.push(rest.split_whitespace().next().unwrap().to_owned());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    // One transfer through the devnet's validators: a receipt, then the same on all four.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tx = sign(
            &dev_signer(1),
            eip1559(
                0,
                TxKind::Call(Address::repeat_byte(0x11)),
                U256::from(5),
                Default::default(),
                21_000,
            ),
        );
        let receipt = Rpc::new(&urls[1])
            .send_raw_sync(&tx)
            .await
            .expect("a receipt from the devnet cluster");
        assert!(receipt.succeeded());
        for url in &urls {
            Rpc::new(url)
                .wait_receipt(tx.hash, Duration::from_secs(20))
                .await;
        }
    });
    // SAFETY: kill(2) with a valid pid of our own child and a standard signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait for devnet");
    assert!(
        status.success(),
        "devnet --validators 4 exited with {status}"
    );
    (0..5)
        .map(|i| Member {
            config: dir
                .join(if i < 4 { format!("v{i}") } else { "f0".into() })
                .join("node.toml"),
            data: dir
                .join(if i < 4 { format!("v{i}") } else { "f0".into() })
                .join("data"),
            port: urls[i].rsplit(':').next().unwrap().parse().unwrap(),
        })
        .collect()
}

async fn stats(rpc: &Rpc) -> serde_json::Value {
    rpc.ok("rtchain_nodeStats", serde_json::json!([])).await["consensus"].clone()
}

/// Waits until `node` has finalized as far as `reference` had when called.
async fn catch_up(node: &Rpc, reference: &Rpc, what: &str, seconds: u64) {
    let target = finalized_height(reference).await;
    wait_for(what, Duration::from_secs(seconds), || async {
        (finalized_height(node).await >= target).then_some(())
    })
    .await;
}

async fn finalized_height(rpc: &Rpc) -> u64 {
    stats(rpc).await["finalizedHeight"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_finalize_through_a_leader_crash_a_pause_and_a_full_restart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_owned();
    let members = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || devnet_cluster(&dir)
    })
    .await
    .unwrap();
    let start = |m: &Member| Devnet::start_config_file(&m.config, &m.data, m.port);
    let mut nodes: Vec<Devnet> = members.iter().map(start).collect();
    let rpcs: Vec<Rpc> = nodes.iter().map(|n| Rpc::new(&n.url())).collect();
    let mut receipts: Vec<ReceiptFacts> = Vec::new();
    let signer = dev_signer(2);
    let mut nonce = 0;
    let transfer = |nonce: &mut u64| {
        let tx = sign(
            &signer,
            eip1559(
                *nonce,
                TxKind::Call(Address::repeat_byte(0x22)),
                U256::from(1),
                Default::default(),
                21_000,
            ),
        );
        *nonce += 1;
        tx
    };
    for rpc in &rpcs {
        let r = rpc
            .send_raw_sync(&transfer(&mut nonce))
            .await
            .expect("receipt");
        receipts.push(r);
    }

    // kill -9 validator 0: the others keep finalizing (its views time out and are nullified).
    let before = finalized_height(&rpcs[1]).await;
    nodes[0].kill9();
    let killed = Instant::now();
    wait_for(
        "finalization after the crash",
        Duration::from_secs(20),
        || async { (finalized_height(&rpcs[1]).await > before + 8).then_some(()) },
    )
    .await;
    println!(
        "8 blocks finalized {:?} after kill -9 of validator 0",
        killed.elapsed()
    );
    for rpc in &rpcs[1..] {
        let r = rpc
            .send_raw_sync(&transfer(&mut nonce))
            .await
            .expect("receipt with one validator down");
        receipts.push(r);
    }
    // It comes back and catches up.
    nodes[0] = start(&members[0]);
    catch_up(&rpcs[0], &rpcs[1], "validator 0 to catch up", 30).await;

    // SIGSTOP validator 3 for a while: the other three go on; it catches up after SIGCONT.
    nodes[3].signal(libc::SIGSTOP);
    let during = rpcs[1]
        .send_raw_sync(&transfer(&mut nonce))
        .await
        .expect("receipt while paused");
    receipts.push(during.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[3].signal(libc::SIGCONT);
    rpcs[3]
        .wait_receipt(during.transaction_hash, Duration::from_secs(30))
        .await;

    // All four killed at once, then restarted: nothing finalized is lost and the chain resumes.
    for node in nodes.iter_mut() {
        node.kill9();
    }
    nodes = members.iter().map(start).collect();
    let after = rpcs[2]
        .send_raw_sync(&transfer(&mut nonce))
        .await
        .expect("receipt after a full restart");
    receipts.push(after);
    for r in &receipts {
        for rpc in &rpcs {
            let seen = rpc
                .wait_receipt(r.transaction_hash, Duration::from_secs(30))
                .await;
            assert_eq!(
                seen.block_number, r.block_number,
                "receipt of {} moved",
                r.transaction_hash
            );
            assert!(seen.succeeded());
        }
    }
    // A validator that lost its chain data (its vote log kept) syncs everything from its peers.
    nodes[0].kill9();
    for dir in ["db", "minilog"] {
        let path = members[0].data.join(dir);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    nodes[0] = start(&members[0]);
    catch_up(&rpcs[0], &rpcs[1], "validator 0 to sync from genesis", 60).await;
    assert!(stats(&rpcs[0]).await["syncRounds"].as_u64().unwrap() > 0);
    for r in &receipts {
        let seen = rpcs[0]
            .wait_receipt(r.transaction_hash, Duration::from_secs(30))
            .await;
        assert_eq!(seen.block_number, r.block_number);
    }

    // The follower kept up without voting.
    let follower = stats(&rpcs[4]).await;
    assert_eq!(follower["role"], "follower", "{follower}");
    catch_up(&rpcs[4], &rpcs[1], "the follower to keep up", 30).await;

    // Every node holds the same blocks: same EVM block hashes everywhere.
    let head = rpcs[0].block_number().await.unwrap();
    for n in 1..=head.min(50) {
        let hashes: Vec<serde_json::Value> =
            futures::future::join_all(rpcs.iter().map(|rpc| async move {
                rpc.ok(
                    "eth_getBlockByNumber",
                    serde_json::json!([format!("0x{n:x}"), false]),
                )
                .await["hash"]
                    .clone()
            }))
            .await;
        if hashes.iter().all(|h| !h.is_null()) {
            assert!(
                hashes.windows(2).all(|w| w[0] == w[1]),
                "block {n}: {hashes:?}"
            );
        }
    }
    for rpc in &rpcs {
        let s = stats(rpc).await;
        assert_eq!(s["engine"]["forks"], 0, "{s}");
        assert_eq!(s["engine"]["finalizedRejected"], 0, "{s}");
    }
    drop(nodes);
}
