//! `rtchain bench rpc`: an open-loop JSON-RPC transaction load generator.
//!
//! The schedule is fixed before the first send: transaction `i` is due at `start + i / rate`.
//! A dedicated thread sends each transaction at its due time whatever happened to the ones
//! before it, and every latency is measured from the due time, not from when the request left.
//! A closed-loop client (send, wait, send the next) slows down exactly when the node does and
//! so never records the requests it failed to send during a stall ("coordinated omission");
//! here a stall shows up in the latencies of every transaction that was due during it.
//!
//! All transactions are signed before the timed phase, so the generator only copies bytes into
//! requests while it is being timed. The in-flight transactions are bounded by `--concurrency`;
//! when the bound is reached the dispatcher waits for a slot, and the wait counts against the
//! waiting transaction's latency (and shows in `send_lag_*_us`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use jsonrpsee::core::ClientError;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::HttpClient;
use jsonrpsee::rpc_params;
use rayon::iter::{IntoParallelIterator, ParallelIterator};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

use super::anvil::Anvil;
use super::chain::{Call, FeeParams, Node, Receipt, SignedTx, sender_key, sign};
use super::erc20::Token;
use super::error::BenchError;
use super::report::{BenchResult, Machine, current_commit, utc_timestamp};

/// The target when no `--url` (and no `--anvil`) is given: a local node's default port.
const URL_DEFAULT: &str = "http://127.0.0.1:8545";

/// Anvil's and hardhat's dev account 0. Both anvil and rtchain's devnet fund it at genesis.
const FUNDER_KEY_DEFAULT: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

const ANVIL_BIN_DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../node_modules/.bin/anvil");
pub(crate) const TOKEN_ARTIFACT_DEFAULT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts/out/Token.json");

/// Transactions signed for one target's run (`rate * duration`). Each costs about 400 bytes
/// once signed and hex-encoded, so the bound keeps the pre-signed load under ~400 MiB.
const TXS_MAX: u64 = 1_000_000;
const SENDERS_MAX: u32 = 10_000;
/// In-flight transactions. Each holds a task and, while a request is out, an HTTP connection,
/// so the bound also keeps the generator under common file-descriptor limits.
const CONCURRENCY_MAX: usize = 16_384;
const POLL_INTERVAL_MS_MAX: u64 = 1_000;
const TIMEOUT_S_MAX: u64 = 3_600;

/// Gas of a plain value transfer to an account without code.
const TRANSFER_GAS: u64 = 21_000;
/// Wei moved by each timed transfer: nonzero so the transfer really touches both balances.
const TRANSFER_VALUE_WEI: u64 = 1;
/// Minted to the funder at deployment, and given to each sender: far more than the one token
/// unit each timed ERC-20 transfer moves, so no balance ever returns to zero (which would
/// change the transfer's gas cost mid-run).
const TOKEN_SUPPLY: u128 = 1_000_000_000_000_000_000_000_000_000_000;
const TOKENS_PER_SENDER: u128 = 1_000_000_000_000_000_000_000_000;
const TOKENS_PER_TX: u64 = 1;

/// Between spawning the dispatcher and the first due time, so send 0 is not late by the time it
/// takes to start the thread.
const SCHEDULE_LEAD: Duration = Duration::from_millis(50);
/// Latencies above an hour are recorded as an hour; the timeout ends transactions long before.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Parallel `eth_getBalance` / `eth_getTransactionCount` requests while setting up senders.
const SETUP_PARALLELISM: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `eth_sendRawTransactionSync` (EIP-7966): the reply is the receipt.
    Sync,
    /// `eth_sendRawTransaction`, then `eth_getTransactionReceipt` until the receipt exists.
    Poll,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Poll => "poll",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 1 wei value transfers between the benchmark's senders (21000 gas each).
    Transfer,
    /// ERC-20 `transfer` calls of one token unit between the senders, on a freshly deployed token.
    Erc20,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Transfer => "transfer",
            Workload::Erc20 => "erc20",
        }
    }
}

/// Open-loop transaction load against one or more JSON-RPC endpoints; one JSON line per target.
#[derive(Debug, Clone, clap::Args)]
pub struct RpcBenchArgs {
    /// JSON-RPC endpoint to load; repeat or comma-separate to measure several nodes in turn with
    /// the same load [default: `http://127.0.0.1:8545`, unless --anvil is given]
    #[arg(long = "url", value_name = "URL", value_delimiter = ',')]
    pub urls: Vec<String>,

    /// Target send rate, transactions per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,

    /// Length of the send schedule, seconds.
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 10)]
    pub duration_s: u64,

    /// How each transaction is sent and its receipt obtained.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    pub mode: Mode,

    /// What each transaction does.
    #[arg(long, value_enum, default_value_t = Workload::Transfer)]
    pub workload: Workload,

    /// Number of sender accounts; transaction i is sent by sender i mod N.
    #[arg(long, default_value_t = 64)]
    pub senders: u32,

    /// Maximum transactions in flight (sent, receipt not yet received).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,

    /// Poll mode: wait between two `eth_getTransactionReceipt` calls for one transaction, ms.
    #[arg(long = "poll-interval-ms", value_name = "MS", default_value_t = 2)]
    pub poll_interval_ms: u64,

    /// A transaction without a receipt this long after its due time counts as an error.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 30)]
    pub timeout_s: u64,

    /// Also append each result line to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Free text copied into each result line.
    #[arg(long, default_value = "")]
    pub label: String,

    /// Start an anvil on a free loopback port, add it as the last target, and stop it at the end.
    #[arg(long)]
    pub anvil: bool,

    /// The anvil binary --anvil starts.
    #[arg(long, value_name = "PATH", default_value = ANVIL_BIN_DEFAULT)]
    pub anvil_bin: PathBuf,

    /// Compiled ERC-20 (JSON with `abi` and `bytecode`) for --workload erc20.
    #[arg(long, value_name = "PATH", default_value = TOKEN_ARTIFACT_DEFAULT)]
    pub token_artifact: PathBuf,

    /// Private key of the account that funds the senders and deploys the token.
    #[arg(long, value_name = "HEX", default_value = FUNDER_KEY_DEFAULT)]
    pub funder_key: String,

    /// Print nothing (a caller such as `bench consensus` reports the results its own way).
    #[arg(skip)]
    pub quiet: bool,
}

impl RpcBenchArgs {
    fn total_txs(&self) -> u64 {
        u64::from(self.rate).saturating_mul(self.duration_s)
    }

    fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::InvalidArgs(m));
        if self.rate == 0 || self.duration_s == 0 {
            return fail("--rate and --duration must be at least 1".to_owned());
        }
        if self.total_txs() > TXS_MAX {
            return fail(format!(
                "--rate {} x --duration {} = {} transactions; at most {TXS_MAX} are pre-signed \
                 per run",
                self.rate,
                self.duration_s,
                self.total_txs()
            ));
        }
        if !(1..=SENDERS_MAX).contains(&self.senders) {
            return fail(format!("--senders must be between 1 and {SENDERS_MAX}"));
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return fail(format!(
                "--concurrency must be between 1 and {CONCURRENCY_MAX}"
            ));
        }
        if !(1..=POLL_INTERVAL_MS_MAX).contains(&self.poll_interval_ms) {
            return fail(format!(
                "--poll-interval-ms must be between 1 and {POLL_INTERVAL_MS_MAX}"
            ));
        }
        if !(1..=TIMEOUT_S_MAX).contains(&self.timeout_s) {
            return fail(format!(
                "--timeout must be between 1 and {TIMEOUT_S_MAX} seconds"
            ));
        }
        for url in &self.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return fail(format!(
                    "--url {url}: only http:// and https:// endpoints are supported"
                ));
            }
        }
        Ok(())
    }
}

/// Runs the benchmark against every target in turn (never at once: on a small machine two
/// loaded nodes would measure each other), printing each result line as soon as it is known.
/// Stops at the first target that cannot be set up; the lines already printed stay valid.
pub async fn run_rpc_bench(args: RpcBenchArgs) -> Result<Vec<BenchResult>, BenchError> {
    args.validate()?;
    let funder: PrivateKeySigner = args
        .funder_key
        .parse()
        .map_err(|e| BenchError::InvalidArgs(format!("--funder-key is not a private key: {e}")))?;
    let token = match args.workload {
        Workload::Erc20 => Some(Token::load(&args.token_artifact)?),
        Workload::Transfer => None,
    };
    let senders = (0..args.senders)
        .map(sender_key)
        .collect::<Result<Vec<_>, _>>()?;

    let mut targets = args.urls.clone();
    if targets.is_empty() && !args.anvil {
        targets.push(URL_DEFAULT.to_owned());
    }
    let anvil = if args.anvil {
        Some(Anvil::start(&args.anvil_bin).await?)
    } else {
        None
    };
    if let Some(anvil) = &anvil {
        targets.push(anvil.url.clone());
    }

    let context = RunContext {
        args: &args,
        funder: &funder,
        senders: &senders,
        token: token.as_ref(),
    };
    let mut results = Vec::with_capacity(targets.len());
    let mut outcome = Ok(());
    for target in &targets {
        match context.bench_target(target).await {
            Ok(result) => {
                let emitted = if args.quiet {
                    Ok(())
                } else {
                    result.emit(args.out.as_deref())
                };
                results.push(result);
                if let Err(e) = emitted {
                    outcome = Err(e);
                    break;
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if let Some(anvil) = anvil {
        anvil.stop().await;
    }
    outcome.map(|()| results)
}

/// What stays the same across targets.
struct RunContext<'a> {
    args: &'a RpcBenchArgs,
    funder: &'a PrivateKeySigner,
    senders: &'a [PrivateKeySigner],
    token: Option<&'a Token>,
}

impl RunContext<'_> {
    async fn bench_target(&self, url: &str) -> Result<BenchResult, BenchError> {
        let args = self.args;
        let timeout = Duration::from_secs(args.timeout_s);
        let node = Node::connect(url, args.concurrency, timeout)?;
        let client = node.client_version().await;
        eprintln!(
            "bench rpc: {url} ({client}): setting up {} senders",
            self.senders.len()
        );
        let txs = self.prepare(&node).await?;
        eprintln!(
            "bench rpc: {url}: sending {} {} transactions at {}/s, mode {}",
            txs.len(),
            args.workload.name(),
            args.rate,
            args.mode.name()
        );
        let run = run_schedule(&node, args, txs).await?;

        let quantile = |q: f64| (run.received > 0).then(|| run.latency_us.value_at_quantile(q));
        let window_s = run.last_receipt.map_or(0.0, |at| {
            at.saturating_duration_since(run.start).as_secs_f64()
        });
        let achieved_tps = if window_s > 0.0 {
            run.received as f64 / window_s
        } else {
            0.0
        };
        Ok(BenchResult {
            bench: "rpc",
            target: url.to_owned(),
            client,
            label: args.label.clone(),
            mode: args.mode.name(),
            workload: args.workload.name(),
            rate: args.rate,
            duration_s: args.duration_s,
            senders: args.senders,
            concurrency: args.concurrency,
            sent: run.sent,
            received: run.received,
            errors: run.errors,
            first_error: run.first_error,
            achieved_tps: round1(achieved_tps),
            p50_us: quantile(0.5),
            p90_us: quantile(0.9),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: (run.received > 0).then(|| run.latency_us.max()),
            mean_us: (run.received > 0).then(|| round1(run.latency_us.mean())),
            send_lag_p99_us: run.send_lag_us.value_at_quantile(0.99),
            send_lag_max_us: run.send_lag_us.max(),
            receipt_polls: run.receipt_polls,
            machine: Machine::current(),
            commit: current_commit(),
            timestamp: utc_timestamp(),
        })
    }

    /// Funds the senders (and deploys and distributes the token), then signs the whole
    /// schedule. Sender `s` sends transactions `s, s + N, s + 2N, ...` with consecutive nonces
    /// from its current pending nonce, each to sender `s + 1` (mod N), so the run moves value
    /// around a ring of accounts that already exist instead of creating new ones.
    async fn prepare(&self, node: &Node) -> Result<Vec<SignedTx>, BenchError> {
        let senders = self.senders;
        let n = senders.len();
        let recipient = |s: usize| senders[(s + 1) % n].address();
        let mut funder = Funder {
            signer: self.funder,
            fees: node.fee_params().await?,
            nonce: node.nonce(self.funder.address()).await?,
            txs: Vec::with_capacity(2 * n),
        };
        let calls: Vec<Call> = match self.token {
            None => (0..n)
                .map(|s| Call {
                    to: TxKind::Call(recipient(s)),
                    value: U256::from(TRANSFER_VALUE_WEI),
                    input: Bytes::new(),
                    gas_limit: TRANSFER_GAS,
                })
                .collect(),
            Some(token) => {
                let (address, gas_limit) = self.deploy_token(node, token, &mut funder).await?;
                (0..n)
                    .map(|s| {
                        Ok(Call {
                            to: TxKind::Call(address),
                            value: U256::ZERO,
                            input: token
                                .transfer_calldata(recipient(s), U256::from(TOKENS_PER_TX))?,
                            gas_limit,
                        })
                    })
                    .collect::<Result<_, BenchError>>()?
            }
        };
        self.fund_senders(node, &calls, &mut funder).await?;
        if !funder.txs.is_empty() {
            eprintln!(
                "bench rpc: {}: {} funding and token transactions",
                node.url,
                funder.txs.len()
            );
            node.send_and_confirm(&funder.txs, "funding").await?;
        }

        let nonces: Vec<u64> =
            futures::stream::iter(senders.iter().map(|s| node.nonce(s.address())))
                .buffered(SETUP_PARALLELISM)
                .try_collect()
                .await?;
        let total = self.args.total_txs();
        sign_schedule(senders.to_vec(), calls, nonces, funder.fees, total).await
    }

    /// Deploys the token (waiting for it), queues a token transfer from the funder to every
    /// sender, and returns the token's address and the gas limit for transfers.
    async fn deploy_token(
        &self,
        node: &Node,
        token: &Token,
        funder: &mut Funder<'_>,
    ) -> Result<(Address, u64), BenchError> {
        let from = funder.signer.address();
        let code = token.deploy_code(U256::from(TOKEN_SUPPLY), from)?;
        let gas = node.estimate_gas(from, None, &code).await?;
        let deploy = funder.sign(TxKind::Create, U256::ZERO, code, with_margin(gas))?;
        let receipts = node
            .send_and_confirm(std::slice::from_ref(&deploy), "token deployment")
            .await?;
        let address = receipts
            .first()
            .and_then(|r| r.contract_address)
            .ok_or_else(|| BenchError::Setup {
                target: node.url.clone(),
                reason: format!(
                    "token deployment {}: receipt has no contractAddress",
                    deploy.hash
                ),
            })?;
        // Measured once, on the funder's transfer to a sender that holds no tokens yet: writing
        // a zero balance slot is the dearest path, so the limit also covers the timed transfers
        // between senders that all hold tokens.
        let amount = U256::from(TOKENS_PER_SENDER);
        let probe = token.transfer_calldata(self.senders[0].address(), amount)?;
        let gas_limit = with_margin(node.estimate_gas(from, Some(address), &probe).await?);
        for sender in self.senders {
            let input = token.transfer_calldata(sender.address(), amount)?;
            funder.queue(TxKind::Call(address), U256::ZERO, input, gas_limit)?;
        }
        Ok((address, gas_limit))
    }

    /// Queues a top-up for every sender whose balance does not cover the gas and value of its
    /// share of the schedule at the signed max fee. A sender short of that gets twice its need,
    /// so repeated runs rarely fund again.
    async fn fund_senders(
        &self,
        node: &Node,
        calls: &[Call],
        funder: &mut Funder<'_>,
    ) -> Result<(), BenchError> {
        let senders = self.senders;
        let n = senders.len() as u64;
        let total = self.args.total_txs();
        let max_fee = U256::from(funder.fees.max_fee_per_gas);
        let balances: Vec<U256> =
            futures::stream::iter(senders.iter().map(|s| node.balance(s.address())))
                .buffered(SETUP_PARALLELISM)
                .try_collect()
                .await?;
        let mut funding_wei = U256::ZERO;
        for ((s, balance), call) in balances.iter().enumerate().zip(calls) {
            let txs = total / n + u64::from((s as u64) < total % n);
            let need = U256::from(txs) * (U256::from(call.gas_limit) * max_fee + call.value);
            if *balance < need {
                let value = need * U256::from(2);
                funding_wei += value;
                let to = TxKind::Call(senders[s].address());
                funder.queue(to, value, Bytes::new(), TRANSFER_GAS)?;
            }
        }
        // Every queued transaction costs at most the dearer of the two gas limits.
        let gas_max = calls
            .iter()
            .map(|c| c.gas_limit)
            .fold(TRANSFER_GAS, u64::max);
        let setup_fees = U256::from(funder.txs.len()) * U256::from(gas_max) * max_fee;
        let funder_balance = node.balance(funder.signer.address()).await?;
        if funder_balance < funding_wei + setup_fees {
            return Err(BenchError::Setup {
                target: node.url.clone(),
                reason: format!(
                    "funder {} holds {funder_balance} wei but funding the senders needs {}; \
                     fund it, or lower --rate / --duration",
                    funder.signer.address(),
                    funding_wei + setup_fees
                ),
            });
        }
        Ok(())
    }
}

/// The funder's setup transactions, signed with locally tracked nonces.
struct Funder<'a> {
    signer: &'a PrivateKeySigner,
    fees: FeeParams,
    nonce: u64,
    /// Signed and waiting to be sent by [`Node::send_and_confirm`].
    txs: Vec<SignedTx>,
}

impl Funder<'_> {
    fn sign(
        &mut self,
        to: TxKind,
        value: U256,
        input: Bytes,
        gas_limit: u64,
    ) -> Result<SignedTx, BenchError> {
        let call = Call {
            to,
            value,
            input,
            gas_limit,
        };
        let tx = sign(self.signer, self.fees, self.nonce, &call)?;
        self.nonce += 1;
        Ok(tx)
    }

    fn queue(
        &mut self,
        to: TxKind,
        value: U256,
        input: Bytes,
        gas_limit: u64,
    ) -> Result<(), BenchError> {
        let tx = self.sign(to, value, input, gas_limit)?;
        self.txs.push(tx);
        Ok(())
    }
}

/// Gas estimates plus 20%: an estimate is the least gas that succeeded on the node's state at
/// that moment, and a limit with no room fails on the first small difference (a warm slot
/// gone cold, a different refund).
fn with_margin(gas: u64) -> u64 {
    gas.saturating_add(gas / 5)
}

/// Signs transactions `0..total` on all cores (signing is ~50 µs of CPU each, so a large
/// schedule would otherwise take a minute) off the async runtime's threads.
async fn sign_schedule(
    senders: Vec<PrivateKeySigner>,
    calls: Vec<Call>,
    nonces: Vec<u64>,
    fees: FeeParams,
    total: u64,
) -> Result<Vec<SignedTx>, BenchError> {
    assert_eq!(senders.len(), calls.len());
    assert_eq!(senders.len(), nonces.len());
    let txs = tokio::task::spawn_blocking(move || {
        let n = senders.len() as u64;
        (0..total)
            .into_par_iter()
            .map(|i| {
                let s = (i % n) as usize;
                sign(&senders[s], fees, nonces[s] + i / n, &calls[s])
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| BenchError::Task("signing", e.to_string()))??;
    assert_eq!(txs.len() as u64, total);
    Ok(txs)
}

/// What the timed phase shares with every in-flight transaction.
struct Shared {
    client: HttpClient,
    txs: Vec<SignedTx>,
    mode: Mode,
    poll_interval: Duration,
    timeout: Duration,
    /// `eth_getTransactionReceipt` calls made by poll mode: the read load it added.
    receipt_polls: AtomicU64,
}

enum Outcome {
    Receipt { latency_us: u64, at: Instant },
    Failed(String),
}

/// What the collector counts: one outcome per sent transaction.
struct Tally {
    received: u64,
    errors: u64,
    first_error: Option<String>,
    last_receipt: Option<Instant>,
    latency_us: Histogram<u64>,
}

/// The timed phase's result.
struct Run {
    start: Instant,
    sent: u64,
    received: u64,
    errors: u64,
    first_error: Option<String>,
    last_receipt: Option<Instant>,
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    receipt_polls: u64,
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    // Three significant digits: 0.1% resolution at any magnitude, ~200 KiB per histogram.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .map_err(|e| BenchError::Task("histogram", e.to_string()))
}

/// Offset of send `i` from the start of the schedule, exact to the nanosecond (no accumulated
/// rounding, however long the run).
fn due_offset(i: u64, rate: u32) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

async fn run_schedule(
    node: &Node,
    args: &RpcBenchArgs,
    txs: Vec<SignedTx>,
) -> Result<Run, BenchError> {
    let shared = Arc::new(Shared {
        client: node.client.clone(),
        txs,
        mode: args.mode,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        timeout: Duration::from_secs(args.timeout_s),
        receipt_polls: AtomicU64::new(0),
    });
    let shared_after = Arc::clone(&shared);
    let permits = Arc::new(Semaphore::new(args.concurrency));
    // The collector drains faster than sends complete; the channel bound only matters if it is
    // descheduled, and then completing transactions wait for it instead of queueing unbounded.
    let (outcomes, outcomes_rx) = mpsc::channel(args.concurrency);
    let collector = tokio::spawn(collect(outcomes_rx, histogram()?));
    let start = Instant::now() + SCHEDULE_LEAD;
    let runtime = Handle::current();
    let rate = args.rate;
    let mut send_lag_us = histogram()?;
    let dispatcher = tokio::task::spawn_blocking(move || {
        let sent = dispatch(
            &shared,
            start,
            rate,
            &permits,
            &runtime,
            &outcomes,
            &mut send_lag_us,
        );
        (sent, send_lag_us)
    });
    let (sent, send_lag_us) = dispatcher
        .await
        .map_err(|e| BenchError::Task("dispatcher", e.to_string()))?;
    let tally = collector
        .await
        .map_err(|e| BenchError::Task("collector", e.to_string()))?;
    assert_eq!(
        tally.received + tally.errors,
        sent,
        "every sent transaction has one outcome"
    );
    Ok(Run {
        start,
        sent,
        received: tally.received,
        errors: tally.errors,
        first_error: tally.first_error,
        last_receipt: tally.last_receipt,
        latency_us: tally.latency_us,
        send_lag_us,
        receipt_polls: shared_after.receipt_polls.load(Ordering::Relaxed),
    })
}

/// The dispatcher thread: sleeps until each transaction's due time and hands it to the runtime.
/// A thread of its own rather than a task because `std::thread::sleep` wakes within tens of
/// microseconds of the due time, while tokio's timer rounds up to the next millisecond.
/// Returns the number of transactions sent.
fn dispatch(
    shared: &Arc<Shared>,
    start: Instant,
    rate: u32,
    permits: &Arc<Semaphore>,
    runtime: &Handle,
    outcomes: &mpsc::Sender<Outcome>,
    send_lag_us: &mut Histogram<u64>,
) -> u64 {
    let mut sent = 0;
    for i in 0..shared.txs.len() {
        let due = start + due_offset(i as u64, rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                match futures::executor::block_on(permits.clone().acquire_owned()) {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            }
            // Nobody closes the semaphore; if that changes, stop sending rather than spin.
            Err(TryAcquireError::Closed) => break,
        };
        send_lag_us.saturating_record(micros(Instant::now().saturating_duration_since(due)));
        runtime.spawn(send_one(
            Arc::clone(shared),
            i,
            due,
            permit,
            outcomes.clone(),
        ));
        sent += 1;
    }
    sent
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn send_one(
    shared: Arc<Shared>,
    i: usize,
    due: Instant,
    permit: OwnedSemaphorePermit,
    outcomes: mpsc::Sender<Outcome>,
) {
    let tx = &shared.txs[i];
    let deadline = due + shared.timeout;
    // Not cancelled at the deadline: a transaction sent late (the concurrency bound was full)
    // still goes out, so its sender's later nonces are not stranded behind a gap the generator
    // made. Each request is bounded by the client's timeout; the deadline decides the outcome.
    let result = match shared.mode {
        Mode::Sync => send_sync(&shared.client, tx).await,
        Mode::Poll => send_poll(&shared, tx, deadline).await,
    };
    let at = Instant::now();
    let outcome = match result {
        Ok(()) if at <= deadline => Outcome::Receipt {
            latency_us: micros(at.saturating_duration_since(due)),
            at,
        },
        Ok(()) | Err(Failure::Timeout) => Outcome::Failed(format!(
            "transaction {}: no receipt within {:?} of its due time",
            tx.hash, shared.timeout
        )),
        Err(Failure::Other(e)) => Outcome::Failed(e),
    };
    // Free the slot before reporting: the dispatcher may be waiting for it.
    drop(permit);
    // The collector runs until the last sender is dropped, so it is there to receive this.
    let _ = outcomes.send(outcome).await;
}

enum Failure {
    /// No receipt by the deadline.
    Timeout,
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

fn check_receipt(tx: &SignedTx, receipt: &Receipt) -> Result<(), String> {
    if receipt.transaction_hash != tx.hash {
        return Err(format!(
            "receipt for {} returned for transaction {}",
            receipt.transaction_hash, tx.hash
        ));
    }
    if !receipt.succeeded() {
        return Err(format!(
            "transaction {} failed (status {:?})",
            tx.hash, receipt.status
        ));
    }
    Ok(())
}

async fn send_sync(client: &HttpClient, tx: &SignedTx) -> Result<(), Failure> {
    let receipt: Receipt = client
        .request(
            "eth_sendRawTransactionSync",
            rpc_params![tx.raw_hex.as_str()],
        )
        .await
        .map_err(|e| match e {
            ClientError::RequestTimeout => Failure::Timeout,
            e => Failure::Other(format!("eth_sendRawTransactionSync: {e}")),
        })?;
    Ok(check_receipt(tx, &receipt)?)
}

/// Sends, then asks for the receipt at once (a node that includes transactions as they arrive
/// may have it already) and every `interval` after that until `deadline`. The interval bounds
/// how late a receipt is noticed, and so is added to the measured latency at worst once.
async fn send_poll(shared: &Shared, tx: &SignedTx, deadline: Instant) -> Result<(), Failure> {
    let client = &shared.client;
    let hash: B256 = client
        .request("eth_sendRawTransaction", rpc_params![tx.raw_hex.as_str()])
        .await
        .map_err(|e| format!("eth_sendRawTransaction: {e}"))?;
    if hash != tx.hash {
        return Err(format!(
            "eth_sendRawTransaction returned {hash} for transaction {}",
            tx.hash
        )
        .into());
    }
    loop {
        shared.receipt_polls.fetch_add(1, Ordering::Relaxed);
        let receipt: Option<Receipt> = client
            .request("eth_getTransactionReceipt", rpc_params![tx.hash])
            .await
            .map_err(|e| format!("eth_getTransactionReceipt: {e}"))?;
        if let Some(receipt) = receipt {
            return Ok(check_receipt(tx, &receipt)?);
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout);
        }
        tokio::time::sleep(shared.poll_interval).await;
    }
}

/// Tallies outcomes until every sender (the dispatcher's and each in-flight transaction's) is
/// gone, which is when the last transaction has finished.
async fn collect(mut outcomes: mpsc::Receiver<Outcome>, mut latency_us: Histogram<u64>) -> Tally {
    let mut received = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut last_receipt: Option<Instant> = None;
    while let Some(outcome) = outcomes.recv().await {
        match outcome {
            Outcome::Receipt {
                latency_us: latency,
                at,
            } => {
                latency_us.saturating_record(latency);
                received += 1;
                last_receipt = Some(last_receipt.map_or(at, |last| last.max(at)));
            }
            Outcome::Failed(e) => {
                if first_error.is_none() {
                    eprintln!("bench rpc: first error: {e}");
                    first_error = Some(e);
                }
                errors += 1;
            }
        }
    }
    Tally {
        received,
        errors,
        first_error,
        last_receipt,
        latency_us,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exact_and_evenly_spaced() {
        assert_eq!(due_offset(0, 200), Duration::ZERO);
        assert_eq!(due_offset(1, 200), Duration::from_millis(5));
        assert_eq!(due_offset(3, 3), Duration::from_secs(1));
        assert_eq!(
            due_offset(1_000_000, 7),
            Duration::from_nanos(142_857_142_857_142)
        );
    }

    /// End to end against a throw-away anvil: `cargo test --bin rtchain anvil_smoke -- --ignored
    /// --nocapture`. Extra flags come from `RTCHAIN_BENCH_RPC_ARGS` (e.g. "--mode poll
    /// --workload erc20 --rate 200 --duration 5"). Ignored by default: it needs anvil installed
    /// (`scripts/setup.sh`) and takes seconds.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs node_modules/.bin/anvil; run with --ignored"]
    async fn anvil_smoke() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RpcBenchArgs,
        }
        let extra = std::env::var("RTCHAIN_BENCH_RPC_ARGS")
            .unwrap_or_else(|_| "--rate 50 --duration 2".to_owned());
        let argv = ["bench-rpc", "--anvil"]
            .into_iter()
            .map(str::to_owned)
            .chain(extra.split_whitespace().map(str::to_owned));
        let cli =
            <Cli as clap::Parser>::try_parse_from(argv).expect("valid RTCHAIN_BENCH_RPC_ARGS");
        let results = run_rpc_bench(cli.args).await.expect("benchmark runs");
        assert_eq!(results.len(), 1);
        let result = &results[0];
        assert_eq!(result.errors, 0, "first error: {:?}", result.first_error);
        assert_eq!(result.received, result.sent);
        assert!(result.p50_us.is_some());
    }

    #[test]
    fn sender_keys_are_deterministic_and_distinct() {
        let a: Vec<Address> = (0..4)
            .map(|i| sender_key(i).expect("valid key").address())
            .collect();
        let b: Vec<Address> = (0..4)
            .map(|i| sender_key(i).expect("valid key").address())
            .collect();
        assert_eq!(a, b);
        let mut unique = a.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), a.len());
    }
}
