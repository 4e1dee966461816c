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

/// SIGTERM to a devnet (which stops its nodes), up to 20 s for it to exit, then SIGKILL.
/// Returns its exit status if it exited by itself.
fn stop_devnet(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) with a valid pid of our own child and a standard signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Stops the devnet when dropped, also when the test panics.
struct DevnetGuard(std::process::Child);

impl Drop for DevnetGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            stop_devnet(&mut self.0);
        }
    }
}

/// `rtchain devnet ARGS --data-dir DIR`, its output piped.
fn spawn_devnet(args: &[&str], dir: &Path) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rtchain"));
    command.arg("devnet").args(args);
    // Settlement has tests of its own (tests/l1.rs).
    if !args.iter().any(|a| a.starts_with("--l1")) {
        command.arg("--no-l1");
    }
    command
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn rtchain devnet {args:?}: {e}"))
}

/// Starts `devnet --validators 4` on free ports, submits one transfer through it, stops it with
/// SIGTERM (which must stop every validator), and returns where each validator's config is.
fn devnet_cluster(dir: &Path) -> Vec<Member> {
    let mut child = DevnetGuard(spawn_devnet(
        &[
            "--validators",
            "4",
            "--followers",
            "1",
            "--no-fastpath",
            "--rpc-addr",
            "127.0.0.1:0",
        ],
        dir,
    ));
    let stdout = child.0.stdout.take().expect("stdout");
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
    let status = stop_devnet(&mut child.0).expect("devnet exits on SIGTERM");
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
    // Every node hears the four others: validators vote, the follower asks to sync, and
    // validators answer it.
    for (i, rpc) in rpcs.iter().enumerate() {
        wait_for(
            &format!("node {i} to count 4 peers"),
            Duration::from_secs(15),
            || async {
                let peers = rpc.ok("net_peerCount", serde_json::json!([])).await;
                (common::quantity_u64(&peers) == 4).then_some(())
            },
        )
        .await;
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
    // While it catches up, eth_syncing reports how far (geth's object, in EVM blocks); `false`
    // again once it keeps up.
    let target = rpcs[1].block_number().await.unwrap();
    // Polled without pause: the answer's blocks execute in tens of milliseconds here.
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let syncing = rpcs[0].ok("eth_syncing", serde_json::json!([])).await;
        if syncing != serde_json::json!(false) {
            samples.push(syncing);
        } else if rpcs[0].block_number().await.unwrap() >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "validator 0 did not sync from genesis within 60 s"
        );
    }
    let progress: Vec<[u64; 3]> = samples
        .iter()
        .map(|s| {
            ["startingBlock", "currentBlock", "highestBlock"]
                .map(|field| common::quantity_u64(&s[field]))
        })
        .collect();
    assert!(
        progress
            .iter()
            .all(|[start, current, highest]| start <= current && current <= highest),
        "{samples:?}"
    );
    assert!(
        progress
            .iter()
            .any(|[_, current, highest]| *highest > current + 2),
        "eth_syncing never showed the blocks still to fetch: {samples:?}"
    );
    println!(
        "eth_syncing while catching up ({} samples, {} ahead of the head): first {:?}, last {:?}",
        progress.len(),
        progress.iter().filter(|[_, c, h]| h > c).count(),
        progress.first(),
        progress.last()
    );
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

/// `devnet --validators 4 --netns`, stopped (and its namespaces removed) on drop even when the
/// test fails.
struct NetnsCluster {
    child: std::process::Child,
    urls: Vec<String>,
    links: Vec<String>,
    namespaces: Vec<String>,
    bridge: String,
}

impl NetnsCluster {
    fn start(dir: &Path) -> Self {
        let mut child = spawn_devnet(&["--validators", "4", "--netns", "--no-fastpath"], dir);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut cluster = Self {
            child,
            urls: Vec::new(),
            links: Vec::new(),
            namespaces: Vec::new(),
            bridge: String::new(),
        };
        while cluster.urls.len() < 4 {
            let line = lines
                .next()
                .expect("devnet printed its validators")
                .unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .map(|i| words[i + 1].to_owned())
            };
            if line.starts_with("Network: bridge ") {
                cluster.bridge = words[2].to_owned();
            }
            if line.starts_with(&format!("Validator {}: ", cluster.urls.len())) {
                cluster.urls.push(after("RPC:").unwrap());
                cluster.links.push(after("link").unwrap());
                cluster.namespaces.push(after("netns").unwrap());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        cluster
    }

    fn set_link(&self, i: usize, up: bool) {
        let status = Command::new("ip")
            .args([
                "link",
                "set",
                &self.links[i],
                if up { "up" } else { "down" },
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        stop_devnet(&mut self.child);
        // Normally devnet removed them already; after a kill, this does (nodes left running in
        // a namespace are killed first: deleting a namespace does not stop its processes).
        for ns in &self.namespaces {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for link in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        if !self.bridge.is_empty() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_cut_off_by_its_link_catches_up_after_healing() {
    let temp = tempfile::tempdir().unwrap();
    let cluster = NetnsCluster::start(temp.path());
    let rpcs: Vec<Rpc> = cluster.urls.iter().map(|u| Rpc::new(u)).collect();
    let signer = dev_signer(3);
    let transfer = |nonce| {
        sign(
            &signer,
            eip1559(
                nonce,
                TxKind::Call(Address::repeat_byte(0x33)),
                U256::from(1),
                Default::default(),
                21_000,
            ),
        )
    };
    rpcs[0].send_raw_sync(&transfer(0)).await.expect("receipt");

    // Validator 3's link goes down: the other three keep finalizing, and take transactions.
    cluster.set_link(3, false);
    let before = finalized_height(&rpcs[0]).await;
    let during = rpcs[1]
        .send_raw_sync(&transfer(1))
        .await
        .expect("receipt while validator 3 is cut off");
    wait_for(
        "finalization without validator 3",
        Duration::from_secs(20),
        || async { (finalized_height(&rpcs[0]).await > before + 20).then_some(()) },
    )
    .await;
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        rpcs[3].call("eth_blockNumber", serde_json::json!([])),
    )
    .await;
    assert!(
        !matches!(probe, Ok(Ok(_))),
        "validator 3 should be unreachable"
    );

    // Healed: it catches up and has the receipt it missed.
    cluster.set_link(3, true);
    catch_up(
        &rpcs[3],
        &rpcs[0],
        "validator 3 to catch up after healing",
        60,
    )
    .await;
    let seen = rpcs[3]
        .wait_receipt(during.transaction_hash, Duration::from_secs(30))
        .await;
    assert_eq!(seen.block_number, during.block_number);
    let after = rpcs[3]
        .send_raw_sync(&transfer(2))
        .await
        .expect("receipt through the healed validator");
    assert!(after.succeeded());
    drop(cluster);
}
