//! Crash safety of a real `rtchain devnet` process under `kill -9`.
//!
//! Several senders load the node (ETH transfers and ERC-20 transfers, some of which revert,
//! through eth_sendRawTransactionSync and eth_sendRawTransaction), the node is killed with
//! SIGKILL at a random moment, its state root is recomputed from scratch on the stopped data
//! directory (`rtchain verify-state`), and it is restarted on the same data directory (on the same
//! port half of the time). Then:
//! - every transaction whose receipt a client got before the kill (from the sync call, or from
//!   eth_getTransactionReceipt) is still there, in the same block at the same index, with the
//!   same status, gas and logs (and the same block hash if the receipt had one);
//! - every block seen before the kill keeps its hash, the chain continues from its newest block,
//!   and each block's parentHash is the hash of the block before;
//! - each sender's nonce counts exactly its executed transactions, and the ETH and token balances
//!   of senders and recipients are what the receipts say.
//!
//! A second loop does the same through a 1 MiB mini-block log that wraps, and a third test checks
//! that the mini-block chain (`miniBlocks` parentHash links) continues across a restart.
//!
//! Randomness is seeded and the seed printed; `RTCHAIN_CRASH_SEED` replays the same choices
//! (the kill moments are real time, so a run is not bit-for-bit repeatable). Iterations:
//! `RTCHAIN_CRASH_ITERATIONS` (default 20 for the devnet test, about 25 s on a quiet 2-core CI
//! machine; 8 for the wrapping-log variant, which runs more until the log has wrapped).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, B256, Bytes, TxKind, U256},
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use common::{
    DEV_BALANCE_WEI, Devnet, ReceiptFacts, Rpc, RpcFailure, SignedTx, Token, dev_signer, eip1559,
    free_port, quantity_u64, sign, token_deploy_input, verify_state, wait_for,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

/// Dev accounts that send the load; they never receive ETH, so their balance is
/// 10,000 ETH minus what their own receipts say they spent.
const SENDERS: [u32; 4] = [0, 1, 2, 3];
/// Deploys the token and hands each sender its share; sends nothing during the load.
const DEPLOYER: u32 = 4;
/// Receive ETH and tokens; never send.
const RECIPIENTS: [u32; 5] = [5, 6, 7, 8, 9];
const ITERATIONS_DEFAULT: usize = 20;
/// The wrapping-log variant: the smallest log the config allows, and at least this many laps'
/// worth of raw transactions (a lower bound on what the log holds: records add headers).
const SMALL_LOG_BYTES: u64 = 1 << 20;
const SMALL_LOG_LAPS_MIN: u64 = 1;
const SMALL_LOG_ITERATIONS_DEFAULT: usize = 8;
/// The kill comes this long after the load starts (uniformly random in the range).
const LOAD_MS_MIN: u64 = 20;
const LOAD_MS_MAX: u64 = 900;
/// Bound on what one sender sends in one iteration (keeps memory and checking time bounded).
const TXS_PER_SENDER_ITERATION_MAX: usize = 1_500;
const GAS_ETH_TRANSFER: u64 = 21_000;
const GAS_TOKEN_TRANSFER: u64 = 100_000;
const TOKEN_SUPPLY: u128 = 1_000_000_000_000_000_000_000_000;
const TOKEN_PER_SENDER: u128 = TOKEN_SUPPLY / 8;
/// Blocks before the head whose parent links are checked after every restart (all are checked
/// at the end).
const RECENT_BLOCKS_CHECKED: u64 = 64;
/// Older acknowledged receipts re-checked after every restart (all are checked at the end).
const OLD_ACKS_SAMPLED: usize = 64;
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Op {
    Eth { to: Address, value: U256 },
    Token { to: Address, amount: U256 },
}

/// A receipt a client was given before a kill.
#[derive(Debug, Clone)]
struct Ack {
    receipt: ReceiptFacts,
    /// "eth_sendRawTransactionSync" or "eth_getTransactionReceipt".
    via: &'static str,
    iteration: usize,
}

#[derive(Debug, Clone)]
struct Sent {
    hash: B256,
    raw_len: usize,
    sender: usize,
    nonce: u64,
    op: Op,
    ack: Option<Ack>,
}

#[derive(Default)]
struct LoadResult {
    sent: Vec<Sent>,
    /// (number, hash) of blocks a client saw.
    blocks: Vec<(u64, B256)>,
    /// Unexpected RPC errors (not a dead connection).
    errors: Vec<String>,
}

/// What the test knows about the chain: transactions sent and not yet resolved, and the effects
/// of those the chain holds.
struct Ledger {
    addresses: Vec<Address>,
    recipients: Vec<Address>,
    deployer: Address,
    token: Address,
    next_nonce: Vec<u64>,
    /// Sent, not yet matched against a restarted node.
    pending: Vec<Sent>,
    /// Every acknowledged transaction ever, with the receipt the client got.
    acks: Vec<(B256, Ack)>,
    /// Fees plus ETH value of each sender's executed transactions.
    spent_wei: Vec<U256>,
    received_wei: HashMap<Address, U256>,
    tokens: HashMap<Address, U256>,
    blocks_seen: BTreeMap<u64, B256>,
    /// Blocks seen since the last restart (checked at the next one).
    blocks_new: Vec<(u64, B256)>,
    confirmed: usize,
    lost: usize,
    /// Raw bytes of the transactions in the chain.
    raw_bytes: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_kill_9() {
    crash_loop(ITERATIONS_DEFAULT, 0, |dir, port| {
        Devnet::start_on(dir, port, &[])
    })
    .await;
}

/// The same with a 1 MiB mini-block log (the smallest allowed), so that the log wraps: a
/// record then overwrites space whose mini-blocks must already be durable in RocksDB.
/// Runs until the transactions written add up to [`SMALL_LOG_LAPS_MIN`] laps of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_kill_9_with_a_wrapping_log() {
    let sections = format!("[storage]\nminilog_size_bytes = {SMALL_LOG_BYTES}");
    crash_loop(
        SMALL_LOG_ITERATIONS_DEFAULT,
        SMALL_LOG_BYTES * SMALL_LOG_LAPS_MIN,
        |dir, port| Devnet::start_node_config(dir, port, &sections),
    )
    .await;
}

/// Kills and restarts a node (started by `start` on a data directory and a port) in a loop under load;
/// checks after every restart, then once more after a last load without a kill and a clean
/// stop. Runs `iterations` (or RTCHAIN_CRASH_ITERATIONS) kills, more if the raw transactions
/// sent add up to less than `log_bytes_min` (at most 3 times as many kills).
async fn crash_loop(
    iterations_default: usize,
    log_bytes_min: u64,
    start: impl Fn(&Path, u16) -> Devnet,
) {
    let seed: u64 = match std::env::var("RTCHAIN_CRASH_SEED") {
        Ok(s) => s.parse().expect("RTCHAIN_CRASH_SEED is a u64"),
        Err(_) => rand::random(),
    };
    let iterations: usize = match std::env::var("RTCHAIN_CRASH_ITERATIONS") {
        Ok(s) => s.parse().expect("RTCHAIN_CRASH_ITERATIONS is a number"),
        Err(_) => iterations_default,
    };
    println!(
        "crash test: seed {seed} (RTCHAIN_CRASH_SEED={seed} replays the choices), {iterations} iterations"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");

    let mut node = start(&data_dir, free_port());
    let mut rpc = Rpc::new(&node.url());
    let signers: Vec<PrivateKeySigner> = SENDERS.iter().map(|i| dev_signer(*i)).collect();
    let mut ledger = setup(&rpc).await;
    ledger.addresses = signers.iter().map(|s| s.address()).collect();
    ledger.next_nonce = vec![0; SENDERS.len()];
    ledger.spent_wei = vec![U256::ZERO; SENDERS.len()];

    let mut iteration = 0;
    while iteration < iterations || (ledger.raw_bytes < log_bytes_min && iteration < 3 * iterations)
    {
        let load_ms = rng.random_range(LOAD_MS_MIN..=LOAD_MS_MAX);
        let load = Duration::from_millis(load_ms);
        let result = run_load(
            &rpc,
            &signers,
            &ledger,
            &mut rng,
            iteration,
            load,
            Some(&mut node),
        )
        .await;
        let sent = result.sent.len();
        let acked = result.sent.iter().filter(|s| s.ack.is_some()).count();
        ledger.absorb(result, seed);

        let verify = verify_state(&data_dir);
        assert!(
            verify.status.success(),
            "seed {seed}, iteration {iteration}: verify-state after kill -9 failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );

        // Half the restarts reuse the port the killed node listened on, as an operator's would.
        let port = if rng.random_bool(0.5) {
            node.port
        } else {
            free_port()
        };
        node = start(&data_dir, port);
        rpc = Rpc::new(&node.url());
        let failures = ledger.check_after_restart(&rpc, &mut rng).await;
        let head = rpc.block_number().await.expect("eth_blockNumber");
        println!(
            "iteration {iteration}: killed after {load_ms} ms; sent {sent}, acknowledged {acked}; in chain {} in total, lost (never acknowledged) {}; head {head}",
            ledger.confirmed, ledger.lost
        );
        assert!(
            failures.is_empty(),
            "seed {seed}, iteration {iteration}:\n{}",
            failures.join("\n")
        );
        iteration += 1;
    }
    assert!(
        ledger.raw_bytes >= log_bytes_min,
        "seed {seed}: only {} bytes of transactions in {iteration} iterations, fewer than the {log_bytes_min} this test needs",
        ledger.raw_bytes
    );

    // The chain goes on after the last restart; then a clean stop keeps everything.
    let result = run_load(
        &rpc,
        &signers,
        &ledger,
        &mut rng,
        iteration,
        Duration::from_millis(300),
        None,
    )
    .await;
    ledger.absorb(result, seed);
    ledger.settle(&rpc).await;
    let mut failures = ledger.check_after_restart(&rpc, &mut rng).await;
    failures.extend(ledger.check_all_acks(&rpc).await);
    failures.extend(check_chain(&rpc, 0, &ledger.blocks_seen).await);
    assert!(
        failures.is_empty(),
        "seed {seed}, final checks:\n{}",
        failures.join("\n")
    );
    let head = rpc.block_number().await.expect("eth_blockNumber");
    let head_hash = block_hash(&rpc, head).await;
    let status = node.terminate();
    assert!(status.success(), "rtchain exited with {status} on SIGTERM");
    let verify = verify_state(&data_dir);
    assert!(
        verify.status.success(),
        "seed {seed}: verify-state after a clean stop failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let node = start(&data_dir, node.port);
    let rpc = Rpc::new(&node.url());
    assert_eq!(
        block_hash(&rpc, head).await,
        head_hash,
        "block {head} changed across a clean restart"
    );
    println!(
        "crash test passed: seed {seed}, {iteration} kills, {} transactions in chain ({} bytes), {} acknowledged, {:.1} s",
        ledger.confirmed,
        ledger.raw_bytes,
        ledger.acks.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Deploys the token from [`DEPLOYER`] and gives each sender [`TOKEN_PER_SENDER`].
async fn setup(rpc: &Rpc) -> Ledger {
    let deployer = dev_signer(DEPLOYER);
    let deploy = sign(
        &deployer,
        eip1559(
            0,
            TxKind::Create,
            U256::ZERO,
            token_deploy_input("Crash", "CR", U256::from(TOKEN_SUPPLY)),
            3_000_000,
        ),
    );
    let receipt = rpc.send_raw_sync(&deploy).await.expect("deploy the token");
    assert!(receipt.succeeded(), "token deploy failed: {receipt:?}");
    let token = receipt
        .contract_address
        .expect("deploy receipt has a contractAddress");
    assert_eq!(token, deployer.address().create(0));
    let mut tokens = HashMap::new();
    tokens.insert(deployer.address(), U256::from(TOKEN_SUPPLY));
    for (i, index) in SENDERS.iter().enumerate() {
        let to = dev_signer(*index).address();
        let input = Token::transferCall {
            to,
            value: U256::from(TOKEN_PER_SENDER),
        }
        .abi_encode();
        let tx = sign(
            &deployer,
            eip1559(
                1 + i as u64,
                TxKind::Call(token),
                U256::ZERO,
                input.into(),
                GAS_TOKEN_TRANSFER,
            ),
        );
        let receipt = rpc.send_raw_sync(&tx).await.expect("token share");
        assert!(receipt.succeeded(), "token share failed: {receipt:?}");
        *tokens.entry(deployer.address()).or_default() -= U256::from(TOKEN_PER_SENDER);
        tokens.insert(to, U256::from(TOKEN_PER_SENDER));
    }
    Ledger {
        addresses: Vec::new(),
        recipients: RECIPIENTS
            .iter()
            .map(|i| dev_signer(*i).address())
            .collect(),
        deployer: deployer.address(),
        token,
        next_nonce: Vec::new(),
        pending: Vec::new(),
        acks: Vec::new(),
        spent_wei: Vec::new(),
        received_wei: HashMap::new(),
        tokens,
        blocks_seen: BTreeMap::new(),
        blocks_new: Vec::new(),
        confirmed: 0,
        lost: 0,
        raw_bytes: 0,
    }
}

/// Runs one sender task per sender for `load`, then SIGKILLs `kill` (the random moment) and
/// stops the senders. Without a node to kill (the final round), the senders are stopped and
/// their last calls finish.
async fn run_load(
    rpc: &Rpc,
    signers: &[PrivateKeySigner],
    ledger: &Ledger,
    rng: &mut StdRng,
    iteration: usize,
    load: Duration,
    kill: Option<&mut Devnet>,
) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (sender, signer) in signers.iter().enumerate() {
        let task = SenderTask {
            rpc: rpc.clone(),
            signer: signer.clone(),
            sender,
            nonce: ledger.next_nonce[sender],
            token: ledger.token,
            recipients: ledger.recipients.clone(),
            seed: rng.random(),
            stop: stop.clone(),
            iteration,
        };
        tasks.push(tokio::spawn(task.run()));
    }
    tokio::time::sleep(load).await;
    if let Some(node) = kill {
        node.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    let mut result = LoadResult::default();
    for task in tasks {
        let part = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a sender task did not stop within 60 s")
            .expect("sender task panicked");
        result.sent.extend(part.sent);
        result.blocks.extend(part.blocks);
        result.errors.extend(part.errors);
    }
    result
}

struct SenderTask {
    rpc: Rpc,
    signer: PrivateKeySigner,
    sender: usize,
    nonce: u64,
    token: Address,
    recipients: Vec<Address>,
    seed: u64,
    stop: Arc<AtomicBool>,
    iteration: usize,
}

impl SenderTask {
    /// Sends until stopped or until the node stops answering. A transaction whose send failed
    /// at the transport level (the node died) is recorded too: it may or may not have executed,
    /// and the check after the restart finds out.
    async fn run(mut self) -> LoadResult {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = LoadResult::default();
        // Indices in `out.sent` of transactions sent without a receipt so far.
        let mut unacked: Vec<usize> = Vec::new();
        'load: while !self.stop.load(Ordering::Relaxed)
            && out.sent.len() < TXS_PER_SENDER_ITERATION_MAX
        {
            let roll = rng.random_range(0..100u32);
            if roll < 4 {
                match self
                    .rpc
                    .call("eth_getBlockByNumber", json!(["latest", false]))
                    .await
                {
                    Ok(block) => {
                        let number = quantity_u64(&block["number"]);
                        let hash: B256 =
                            serde_json::from_value(block["hash"].clone()).expect("block hash");
                        out.blocks.push((number, hash));
                    }
                    Err(RpcFailure::Transport(_)) => break,
                    Err(e) => {
                        out.errors.push(format!("eth_getBlockByNumber latest: {e}"));
                        break;
                    }
                }
            } else if roll < 14 && !unacked.is_empty() {
                let pick = rng.random_range(0..unacked.len());
                let index = unacked[pick];
                match self.rpc.receipt(out.sent[index].hash).await {
                    Ok(Some(receipt)) if receipt.block_hash.is_some() => {
                        out.sent[index].ack = Some(Ack {
                            receipt,
                            via: "eth_getTransactionReceipt",
                            iteration: self.iteration,
                        });
                        unacked.swap_remove(pick);
                    }
                    Ok(_) => {}
                    Err(RpcFailure::Transport(_)) => break,
                    Err(e) => {
                        out.errors.push(format!(
                            "eth_getTransactionReceipt {}: {e}",
                            out.sent[index].hash
                        ));
                        break;
                    }
                }
            } else if roll < 44 {
                for _ in 0..rng.random_range(1..=4u32) {
                    let (op, tx) = self.next_tx(&mut rng);
                    let sent = Sent {
                        hash: tx.hash,
                        raw_len: tx.raw.len(),
                        sender: self.sender,
                        nonce: self.nonce,
                        op,
                        ack: None,
                    };
                    match self.rpc.send_raw(&tx).await {
                        Ok(hash) => {
                            if hash != tx.hash {
                                out.errors.push(format!(
                                    "eth_sendRawTransaction answered {hash} for {}",
                                    tx.hash
                                ));
                                break 'load;
                            }
                            unacked.push(out.sent.len());
                            out.sent.push(sent);
                            self.nonce += 1;
                        }
                        Err(RpcFailure::Transport(_)) => {
                            out.sent.push(sent);
                            break 'load;
                        }
                        Err(e) => {
                            out.errors
                                .push(format!("eth_sendRawTransaction nonce {}: {e}", self.nonce));
                            break 'load;
                        }
                    }
                }
            } else {
                let (op, tx) = self.next_tx(&mut rng);
                let mut sent = Sent {
                    hash: tx.hash,
                    raw_len: tx.raw.len(),
                    sender: self.sender,
                    nonce: self.nonce,
                    op,
                    ack: None,
                };
                match self.rpc.send_raw_sync(&tx).await {
                    Ok(receipt) => {
                        if receipt.transaction_hash != tx.hash {
                            out.errors.push(format!(
                                "eth_sendRawTransactionSync answered the receipt of {} for {}",
                                receipt.transaction_hash, tx.hash
                            ));
                            break;
                        }
                        sent.ack = Some(Ack {
                            receipt,
                            via: "eth_sendRawTransactionSync",
                            iteration: self.iteration,
                        });
                        out.sent.push(sent);
                        self.nonce += 1;
                    }
                    // EIP-7966 timeout: accepted, no receipt yet.
                    Err(RpcFailure::Error { code: 4, .. }) => {
                        unacked.push(out.sent.len());
                        out.sent.push(sent);
                        self.nonce += 1;
                    }
                    Err(RpcFailure::Transport(_)) => {
                        out.sent.push(sent);
                        break;
                    }
                    Err(e) => {
                        out.errors.push(format!(
                            "eth_sendRawTransactionSync nonce {}: {e}",
                            self.nonce
                        ));
                        break;
                    }
                }
            }
        }
        out
    }

    /// The next transaction: mostly ETH transfers, some token transfers, a tenth of which move
    /// more than the whole supply and revert.
    fn next_tx(&self, rng: &mut StdRng) -> (Op, SignedTx) {
        let to = self.recipients[rng.random_range(0..self.recipients.len())];
        if rng.random_bool(0.3) {
            let amount = if rng.random_bool(0.1) {
                U256::from(TOKEN_SUPPLY) + U256::from(1)
            } else {
                U256::from(rng.random_range(1..1_000_000u64))
            };
            let input = Token::transferCall { to, value: amount }.abi_encode();
            let tx = eip1559(
                self.nonce,
                TxKind::Call(self.token),
                U256::ZERO,
                input.into(),
                GAS_TOKEN_TRANSFER,
            );
            (Op::Token { to, amount }, sign(&self.signer, tx))
        } else {
            let value = U256::from(rng.random_range(1..1_000_000_000_000u64));
            let tx = eip1559(
                self.nonce,
                TxKind::Call(to),
                value,
                Bytes::new(),
                GAS_ETH_TRANSFER,
            );
            (Op::Eth { to, value }, sign(&self.signer, tx))
        }
    }
}

impl Ledger {
    fn absorb(&mut self, result: LoadResult, seed: u64) {
        assert!(
            result.errors.is_empty(),
            "seed {seed}: unexpected RPC errors under load:\n{}",
            result.errors.join("\n")
        );
        for sent in &result.sent {
            if let Some(ack) = &sent.ack {
                self.acks.push((sent.hash, ack.clone()));
                if let (Some(number), Some(hash)) =
                    (ack.receipt.block_number, ack.receipt.block_hash)
                {
                    self.blocks_new.push((number, hash));
                }
            }
        }
        self.pending.extend(result.sent);
        self.blocks_new.extend(result.blocks);
    }

    /// Without a kill, waits until every transaction the live node accepted has executed, so
    /// that the nonces the checks read are final.
    async fn settle(&self, rpc: &Rpc) {
        for (sender, address) in self.addresses.iter().enumerate() {
            let sent_up_to = self
                .pending
                .iter()
                .filter(|s| s.sender == sender)
                .map(|s| s.nonce + 1)
                .max()
                .unwrap_or(0);
            wait_for(
                &format!("sender {address} to reach nonce {sent_up_to}"),
                RECEIPT_TIMEOUT,
                || async move { (rpc.nonce(*address).await >= sent_up_to).then_some(()) },
            )
            .await;
        }
    }

    /// The checks after a restart (or, for the final round, on the live node). Returns every
    /// violation found.
    async fn check_after_restart(&mut self, rpc: &Rpc, rng: &mut StdRng) -> Vec<String> {
        let mut failures = Vec::new();
        // The restarted node must come back at least to the newest block anyone was told of.
        let newest_told = self
            .acks
            .iter()
            .filter_map(|(_, a)| a.receipt.block_number)
            .chain(self.blocks_new.iter().map(|(n, _)| *n))
            .chain(self.blocks_seen.keys().copied())
            .max()
            .unwrap_or(0);
        let head = wait_for(
            &format!("the restarted node to seal block {newest_told}"),
            RECEIPT_TIMEOUT,
            || async { rpc.block_number().await.ok().filter(|h| *h >= newest_told) },
        )
        .await;

        // Blocks seen before the kill keep their hashes.
        let new_blocks = std::mem::take(&mut self.blocks_new);
        for (number, hash) in &new_blocks {
            if let Some(old) = self.blocks_seen.insert(*number, *hash)
                && old != *hash
            {
                failures.push(format!(
                    "clients saw two hashes for block {number}: {old} and {hash}"
                ));
            }
        }
        let seen: BTreeMap<u64, B256> = new_blocks.into_iter().collect();
        failures.extend(check_chain(rpc, head.saturating_sub(RECENT_BLOCKS_CHECKED), &seen).await);

        // Nonces: which of the sent transactions executed.
        let mut chain_nonce = Vec::with_capacity(self.addresses.len());
        for (sender, address) in self.addresses.iter().enumerate() {
            let nonce = rpc.nonce(*address).await;
            let floor = self.next_nonce[sender];
            let sent_up_to = self
                .pending
                .iter()
                .filter(|s| s.sender == sender)
                .map(|s| s.nonce + 1)
                .max()
                .unwrap_or(floor);
            if nonce < floor || nonce > sent_up_to {
                failures.push(format!(
                    "sender {address}: nonce {nonce} after restart, but {floor} transactions were in the chain before and {sent_up_to} were sent"
                ));
            }
            chain_nonce.push(nonce);
        }
        let pending = std::mem::take(&mut self.pending);
        let (executed, lost): (Vec<Sent>, Vec<Sent>) = pending
            .into_iter()
            .partition(|s| s.nonce < chain_nonce[s.sender]);
        for sent in &lost {
            if let Some(ack) = &sent.ack {
                failures.push(format!(
                    "LOST: {} (sender {}, nonce {}) was acknowledged via {} in iteration {} (block {:?}) but the restarted node's nonce is {}",
                    sent.hash, self.addresses[sent.sender], sent.nonce, ack.via, ack.iteration, ack.receipt.block_number, chain_nonce[sent.sender]
                ));
            }
        }
        self.lost += lost.len();

        // Receipts of everything that executed; compare those a client was given.
        let receipts = receipts_of(rpc, &executed.iter().map(|s| s.hash).collect::<Vec<_>>()).await;
        for (sent, receipt) in executed.iter().zip(&receipts) {
            let Some(receipt) = receipt else {
                failures.push(format!(
                    "{} (sender {}, nonce {}) has no receipt although the sender's nonce is {}",
                    sent.hash, self.addresses[sent.sender], sent.nonce, chain_nonce[sent.sender]
                ));
                continue;
            };
            if let Some(ack) = &sent.ack {
                failures.extend(compare_receipts(sent.hash, ack, receipt));
            }
            self.apply(sent, receipt);
        }
        self.confirmed += executed.len();
        self.raw_bytes += executed.iter().map(|s| s.raw_len as u64).sum::<u64>();
        self.next_nonce = chain_nonce;

        // A sample of older acknowledged receipts (all of them at the end).
        if !self.acks.is_empty() {
            let sample: Vec<(B256, Ack)> = (0..OLD_ACKS_SAMPLED.min(self.acks.len()))
                .map(|_| self.acks[rng.random_range(0..self.acks.len())].clone())
                .collect();
            failures.extend(compare_acks(rpc, &sample).await);
        }

        failures.extend(self.check_balances(rpc).await);
        failures
    }

    fn apply(&mut self, sent: &Sent, receipt: &ReceiptFacts) {
        self.spent_wei[sent.sender] += receipt.fee_wei();
        if !receipt.succeeded() {
            return;
        }
        match &sent.op {
            Op::Eth { to, value } => {
                self.spent_wei[sent.sender] += *value;
                *self.received_wei.entry(*to).or_default() += *value;
            }
            Op::Token { to, amount } => {
                let from = self.addresses[sent.sender];
                *self.tokens.entry(from).or_default() -= *amount;
                *self.tokens.entry(*to).or_default() += *amount;
            }
        }
    }

    async fn check_balances(&self, rpc: &Rpc) -> Vec<String> {
        let mut failures = Vec::new();
        let initial = U256::from(DEV_BALANCE_WEI);
        for (sender, address) in self.addresses.iter().enumerate() {
            let expected = initial - self.spent_wei[sender];
            let actual = rpc.balance(*address).await;
            if actual != expected {
                failures.push(format!(
                    "sender {address}: balance {actual}, receipts say {expected}"
                ));
            }
        }
        for address in &self.recipients {
            let expected = initial + self.received_wei.get(address).copied().unwrap_or_default();
            let actual = rpc.balance(*address).await;
            if actual != expected {
                failures.push(format!(
                    "recipient {address}: balance {actual}, receipts say {expected}"
                ));
            }
        }
        for address in self
            .addresses
            .iter()
            .chain(&self.recipients)
            .chain(std::iter::once(&self.deployer))
        {
            let expected = self.tokens.get(address).copied().unwrap_or_default();
            let actual = rpc.token_balance(self.token, *address).await;
            if actual != expected {
                failures.push(format!(
                    "{address}: token balance {actual}, receipts say {expected}"
                ));
            }
        }
        failures
    }

    async fn check_all_acks(&self, rpc: &Rpc) -> Vec<String> {
        compare_acks(rpc, &self.acks).await
    }
}

/// Receipts (of sealed blocks) of `hashes`, polled until every one is there or the deadline
/// passes (a transaction replayed into the open block is sealed shortly after the restart).
async fn receipts_of(rpc: &Rpc, hashes: &[B256]) -> Vec<Option<ReceiptFacts>> {
    let mut out: Vec<Option<ReceiptFacts>> = vec![None; hashes.len()];
    let deadline = Instant::now() + RECEIPT_TIMEOUT;
    loop {
        let missing: Vec<usize> = (0..hashes.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return out;
        }
        let calls: Vec<(&str, serde_json::Value)> = missing
            .iter()
            .map(|i| ("eth_getTransactionReceipt", json!([hashes[*i]])))
            .collect();
        let answers = rpc
            .batch(&calls)
            .await
            .expect("batch eth_getTransactionReceipt");
        for (i, answer) in missing.into_iter().zip(answers) {
            match answer {
                Ok(v) if v.is_null() => {}
                Ok(v) => {
                    let receipt = ReceiptFacts::parse(&v).expect("receipt");
                    if receipt.block_hash.is_some() {
                        out[i] = Some(receipt);
                    }
                }
                Err(e) => panic!("eth_getTransactionReceipt {}: {e}", hashes[i]),
            }
        }
        if out.iter().any(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn compare_acks(rpc: &Rpc, acks: &[(B256, Ack)]) -> Vec<String> {
    let hashes: Vec<B256> = acks.iter().map(|(h, _)| *h).collect();
    let receipts = receipts_of(rpc, &hashes).await;
    let mut failures = Vec::new();
    for ((hash, ack), receipt) in acks.iter().zip(receipts) {
        match receipt {
            Some(receipt) => failures.extend(compare_receipts(*hash, ack, &receipt)),
            None => failures.push(format!(
                "LOST: {hash} was acknowledged via {} in iteration {} (block {:?}) and now has no receipt",
                ack.via, ack.iteration, ack.receipt.block_number
            )),
        }
    }
    failures
}

/// A receipt given to a client must not change: same block, position, status, gas and logs.
/// A preconfirmed receipt (from the sync call) had no block hash; a sealed one must keep it.
fn compare_receipts(hash: B256, ack: &Ack, now: &ReceiptFacts) -> Vec<String> {
    let before = &ack.receipt;
    let mut diffs = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            diffs.push(format!("{name}: {a} -> {b}"));
        }
    };
    field("status", before.status.to_string(), now.status.to_string());
    field(
        "gasUsed",
        before.gas_used.to_string(),
        now.gas_used.to_string(),
    );
    field(
        "cumulativeGasUsed",
        before.cumulative_gas_used.to_string(),
        now.cumulative_gas_used.to_string(),
    );
    field(
        "effectiveGasPrice",
        before.effective_gas_price.to_string(),
        now.effective_gas_price.to_string(),
    );
    field(
        "blockNumber",
        format!("{:?}", before.block_number),
        format!("{:?}", now.block_number),
    );
    field(
        "transactionIndex",
        format!("{:?}", before.transaction_index),
        format!("{:?}", now.transaction_index),
    );
    field("from", before.from.to_string(), now.from.to_string());
    field(
        "logs",
        format!("{:?}", before.logs),
        format!("{:?}", now.logs),
    );
    if before.block_hash.is_some() {
        field(
            "blockHash",
            format!("{:?}", before.block_hash),
            format!("{:?}", now.block_hash),
        );
    }
    if diffs.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "CHANGED: receipt of {hash} (acknowledged via {} in iteration {}): {}",
            ack.via,
            ack.iteration,
            diffs.join("; ")
        )]
    }
}

async fn block_hash(rpc: &Rpc, number: u64) -> B256 {
    let block = rpc
        .ok(
            "eth_getBlockByNumber",
            json!([format!("{number:#x}"), false]),
        )
        .await;
    serde_json::from_value(block["hash"].clone())
        .unwrap_or_else(|e| panic!("block {number}: {e}: {block}"))
}

/// Blocks `from..=head`: numbers in order, each parentHash the previous block's hash; and every
/// block in `seen` (below the head) still has the hash a client saw.
async fn check_chain(rpc: &Rpc, from: u64, seen: &BTreeMap<u64, B256>) -> Vec<String> {
    let head = rpc.block_number().await.expect("eth_blockNumber");
    let mut numbers: Vec<u64> = (from.saturating_sub(1)..=head).collect();
    numbers.extend(seen.keys().copied().filter(|n| *n < from.saturating_sub(1)));
    let calls: Vec<(&str, serde_json::Value)> = numbers
        .iter()
        .map(|n| ("eth_getBlockByNumber", json!([format!("{n:#x}"), false])))
        .collect();
    let answers = rpc.batch(&calls).await.expect("batch eth_getBlockByNumber");
    let mut blocks: BTreeMap<u64, (B256, B256)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (number, answer) in numbers.iter().zip(answers) {
        match answer {
            Ok(block) if !block.is_null() => {
                let got = quantity_u64(&block["number"]);
                if got != *number {
                    failures.push(format!(
                        "eth_getBlockByNumber({number}) answered block {got}"
                    ));
                }
                let hash: B256 = serde_json::from_value(block["hash"].clone()).expect("hash");
                let parent: B256 =
                    serde_json::from_value(block["parentHash"].clone()).expect("parentHash");
                blocks.insert(*number, (hash, parent));
            }
            Ok(_) => failures.push(format!("block {number} (head {head}) is missing")),
            Err(e) => failures.push(format!("eth_getBlockByNumber({number}): {e}")),
        }
    }
    for number in from.max(1)..=head {
        if let (Some((_, parent)), Some((previous, _))) =
            (blocks.get(&number), blocks.get(&(number - 1)))
            && parent != previous
        {
            failures.push(format!(
                "block {number}: parentHash {parent} but block {} has hash {previous}",
                number - 1
            ));
        }
    }
    for (number, hash) in seen {
        if *number > head {
            failures.push(format!(
                "block {number} ({hash}) was seen before the kill but the head is {head}"
            ));
        } else if let Some((now, _)) = blocks.get(number)
            && now != hash
        {
            failures.push(format!(
                "block {number} was {hash} before the kill and is {now} now"
            ));
        }
    }
    failures
}

/// A mini-block as `miniBlocks` subscribers see it.
#[derive(Debug)]
struct MiniBlockSeen {
    number: u64,
    hash: B256,
    parent_hash: B256,
}

/// The mini-block chain continues across a kill -9 and restart: the first mini-block after the
/// restart names the last one announced before it as its parent (the replayed mini-block keeps
/// the hash it was announced with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_block_chain_continues_across_a_restart() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let signer = dev_signer(0);
    let to = TxKind::Call(dev_signer(5).address());
    let mut node = Devnet::start_in(&data_dir, &[]);
    // A first mini-block in a sealed block, so that the one announced before the kill is not the
    // first of the chain (whose parent is zero anyway).
    let first = mini_block_carrying(&node, &signer, 0, to).await;
    let rpc = Rpc::new(&node.url());
    wait_for(
        "a block sealed after the first mini-block",
        RECEIPT_TIMEOUT,
        || async { (rpc.block_number().await.ok()? >= 1).then_some(()) },
    )
    .await;
    let before = mini_block_carrying(&node, &signer, 1, to).await;
    assert_eq!(
        before.parent_hash, first.hash,
        "mini-block parent links while running"
    );
    node.kill9();
    let node = Devnet::start_in(&data_dir, &[]);
    let after = mini_block_carrying(&node, &signer, 2, to).await;
    assert_eq!(
        after.number,
        before.number + 1,
        "mini-block numbers across the restart: {before:?}, {after:?}"
    );
    assert_eq!(
        after.parent_hash, before.hash,
        "the first mini-block after the restart does not name the last one announced before it: {before:?}, {after:?}"
    );
}

/// Sends a transfer with `nonce` and returns the `miniBlocks` notification that carries it.
async fn mini_block_carrying(
    node: &Devnet,
    signer: &PrivateKeySigner,
    nonce: u64,
    to: TxKind,
) -> MiniBlockSeen {
    use alloy::providers::{Provider, ProviderBuilder, WsConnect};
    let provider = ProviderBuilder::new()
        .connect_ws(WsConnect::new(node.ws_url()))
        .await
        .expect("WebSocket");
    let mut subscription = provider
        .subscribe::<_, serde_json::Value>(("miniBlocks",))
        .await
        .expect("subscribe to miniBlocks");
    let tx = sign(
        signer,
        eip1559(nonce, to, U256::from(1), Bytes::new(), GAS_ETH_TRANSFER),
    );
    let receipt = Rpc::new(&node.url())
        .send_raw_sync(&tx)
        .await
        .expect("a transfer");
    assert!(receipt.succeeded());
    let deadline = Instant::now() + RECEIPT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let note = tokio::time::timeout(left, subscription.recv())
            .await
            .expect("no miniBlocks notification for the transfer within 10 s")
            .expect("miniBlocks subscription");
        let carries = note["transactions"]
            .as_array()
            .is_some_and(|txs| txs.iter().any(|h| h.as_str() == Some(&tx.hash.to_string())));
        if carries {
            return MiniBlockSeen {
                number: quantity_u64(&note["number"]),
                hash: serde_json::from_value(note["hash"].clone()).expect("hash"),
                parent_hash: serde_json::from_value(note["parentHash"].clone())
                    .expect("parentHash"),
            };
        }
    }
}
