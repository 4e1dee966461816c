//! `rtchain bench udp`: open-loop submit-to-receipt latency over the UDP fast path.
//!
//! Unlike `bench rpc` this owns its node: the DPDK backend needs a veth rig (a namespace with
//! the client's end) built before the node starts, and EAL starts once per process. The node
//! runs in this process with a genesis that funds the benchmark's senders; the client is a
//! kernel UDP socket (in the rig's namespace for DPDK, on loopback otherwise), so what is
//! measured is what a client on the wire sees.
//!
//! Latency is from each transaction's *scheduled* send time to its Receipt datagram, so a
//! generator or node that falls behind shows up in the numbers (no coordinated omission).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy_primitives::{Address, TxKind, U256};
use hdrhistogram::Histogram;
use rayon::prelude::*;
use rtchain_dataplane::{PollMode, rig::VethRig};
use rtchain_wire as wire;
use serde::Serialize;

use super::{
    chain::{Call, FeeParams, sender_key, sign_raw},
    error::BenchError,
    report::{Machine, current_commit, emit_line, utc_timestamp},
};
use rtchain_node::config::{BackendKind, NodeConfig};

const CHAIN_ID: u64 = 31_337;
/// Pre-signed transactions per run (signing is ~50 µs each on one core).
const TXS_MAX: u64 = 2_000_000;
/// How long after the schedule ends the receiver waits for the last replies.
const DRAIN: Duration = Duration::from_secs(5);

/// The packet I/O backend a benchmark runs on (`bench udp` and `bench reflect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpBackend {
    Socket,
    IoUring,
    /// DPDK `net_af_xdp` on a veth rig.
    DpdkAfXdp,
    /// DPDK `net_af_packet` on a veth rig.
    DpdkAfPacket,
}

impl UdpBackend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::IoUring => "io-uring",
            Self::DpdkAfXdp => "dpdk-af-xdp",
            Self::DpdkAfPacket => "dpdk-af-packet",
        }
    }

    pub fn is_dpdk(self) -> bool {
        matches!(self, Self::DpdkAfXdp | Self::DpdkAfPacket)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    Always,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollArg {
    BusyPoll,
    Blocking,
}

/// Open-loop load over the UDP fast path against an in-process node; one JSON line per run.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpBenchArgs {
    #[arg(long, value_enum, default_value_t = UdpBackend::Socket)]
    pub backend: UdpBackend,
    /// Target send rate, transactions per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Length of the send schedule, seconds.
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 10)]
    pub duration_s: u64,
    /// Sender accounts (funded in the node's genesis); transaction i is sent by i mod N.
    #[arg(long, default_value_t = 64)]
    pub senders: u32,
    /// Mini-block log syncing: `off` is for measuring everything but the disk.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    pub sync: SyncArg,
    /// How the node's net and verify tiles wait.
    #[arg(long, value_enum, default_value_t = PollArg::Blocking)]
    pub poll: PollArg,
    /// io-uring only: kernel-side submission polling (SQPOLL).
    #[arg(long)]
    pub sqpoll: bool,
    /// The node's `sequencer.exec_threads` (0: one per CPU; 1: sequential execution).
    #[arg(long, default_value_t = 0)]
    pub exec_threads: usize,
    /// Verify tiles (sender recovery); 0 verifies on the net tile.
    #[arg(long, default_value_t = 1)]
    pub verify_tiles: usize,
    /// Also append the result line to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Free text copied into the result line.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UdpBenchResult {
    pub bench: &'static str,
    pub backend: &'static str,
    pub label: String,
    pub rate: u32,
    pub duration_s: u64,
    pub senders: u32,
    pub sync_mode: &'static str,
    pub poll: &'static str,
    pub verify_tiles: usize,
    pub sqpoll: bool,
    pub exec_threads: usize,
    pub sent: u64,
    /// Receipt datagrams (status success).
    pub received: u64,
    /// Reject datagrams, reverted receipts, and transactions without any reply.
    pub errors: u64,
    pub rejects: BTreeMap<String, u64>,
    pub missing: u64,
    pub first_error: Option<String>,
    /// Receipts per second from the first scheduled send to the last receipt.
    pub achieved_tps: f64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
    pub send_lag_p99_us: u64,
    pub port: rtchain_dataplane::PortStats,
    pub machine: Machine,
    pub commit: String,
    pub timestamp: String,
}

/// Where the node listens and where the client's socket lives.
struct Target {
    rig: Option<VethRig>,
    listen: SocketAddrV4,
}

/// A genesis funding `senders` with plenty of ether.
fn write_genesis(dir: &std::path::Path, senders: &[Address]) -> Result<PathBuf, BenchError> {
    let alloc: serde_json::Map<String, serde_json::Value> = senders
        .iter()
        .map(|a| {
            (
                a.to_string(),
                serde_json::json!({ "balance": "0x33b2e3c9fd0803ce8000000" }),
            )
        })
        .collect();
    let genesis = serde_json::json!({
        "config": { "chainId": CHAIN_ID },
        "gasLimit": "0x11e1a300",
        "baseFeePerGas": "0x3b9aca00",
        "difficulty": "0x0",
        "alloc": alloc,
    });
    let path = dir.join("genesis.json");
    std::fs::write(&path, genesis.to_string())
        .map_err(|e| BenchError::Local(format!("write {}: {e}", path.display())))?;
    Ok(path)
}

/// Node config for a benchmark run on `backend`.
pub fn bench_node_config(
    data_dir: PathBuf,
    genesis: Option<PathBuf>,
    backend: UdpBackend,
    listen: SocketAddrV4,
    rig: Option<&VethRig>,
    poll: PollMode,
) -> Result<NodeConfig, BenchError> {
    let mut config = NodeConfig {
        data_dir,
        ..Default::default()
    };
    config.chain.genesis = genesis;
    // Port 0: the kernel picks free ports, the node reports them (no race with other processes).
    config.rpc.addr = (Ipv4Addr::LOCALHOST, 0).into();
    config.fastpath.listen = listen;
    config.fastpath.poll = poll;
    config.fastpath.backend = match backend {
        UdpBackend::Socket => BackendKind::Socket,
        UdpBackend::IoUring => BackendKind::IoUring,
        UdpBackend::DpdkAfXdp | UdpBackend::DpdkAfPacket => BackendKind::Dpdk,
    };
    if let Some(rig) = rig {
        let (name, vdev) = match backend {
            UdpBackend::DpdkAfPacket => (
                "net_af_packet0",
                format!("net_af_packet0,iface={}", rig.host_if),
            ),
            _ => (
                "net_af_xdp0",
                format!(
                    "net_af_xdp0,iface={},start_queue=0,queue_count=1",
                    rig.host_if
                ),
            ),
        };
        config.fastpath.dpdk.port = name.into();
        config.fastpath.dpdk.vdevs = vec![vdev];
        config.fastpath.dpdk.no_huge = true;
        config.fastpath.dpdk.memory_mb = 256;
    }
    Ok(config)
}

fn target(backend: UdpBackend) -> Result<Target, BenchError> {
    if backend.is_dpdk() {
        let rig = VethRig::create(false)
            .map_err(|e| BenchError::Local(format!("veth rig (needs root): {e}")))?;
        let listen = SocketAddrV4::new(rig.host_ip, 8547);
        Ok(Target {
            rig: Some(rig),
            listen,
        })
    } else {
        Ok(Target {
            rig: None,
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        })
    }
}

/// A connected client socket: in the rig's namespace when there is one.
pub fn client_socket(rig: Option<&VethRig>, node: SocketAddrV4) -> Result<UdpSocket, BenchError> {
    let open = move || -> std::io::Result<UdpSocket> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(node)?;
        Ok(socket)
    };
    let socket = match rig {
        Some(rig) => rig
            .in_namespace(open)
            .map_err(|e| BenchError::Local(e.to_string()))?,
        None => open(),
    };
    socket.map_err(|e| BenchError::Local(format!("client socket: {e}")))
}

/// Pings until the node answers (tiles started, ARP resolved).
pub fn wait_for_pong(socket: &UdpSocket, deadline: Duration) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let mut id = u64::MAX - 1_000_000;
    while started.elapsed() < deadline {
        id += 1;
        let len = wire::encode_ping(&mut buf, id, 0);
        let sent_at = Instant::now();
        let _ = socket.send(&buf[..len]);
        let mut reply = [0u8; wire::MAX_DATAGRAM];
        while let Ok(n) = socket.recv(&mut reply) {
            if let Ok(wire::Message::Pong { request_id, .. }) = wire::decode(&reply[..n])
                && request_id == id
            {
                return Ok(sent_at.elapsed());
            }
        }
    }
    Err(BenchError::Local(format!(
        "the node's fast path did not answer a ping within {deadline:?}"
    )))
}

fn due_offset(i: u64, rate: u32) -> Duration {
    Duration::from_nanos(i.saturating_mul(1_000_000_000) / u64::from(rate))
}

pub fn run_udp_bench(args: UdpBenchArgs) -> Result<UdpBenchResult, BenchError> {
    let total = u64::from(args.rate).saturating_mul(args.duration_s);
    if args.rate == 0 || args.duration_s == 0 || total > TXS_MAX {
        return Err(BenchError::InvalidArgs(format!(
            "--rate x --duration must be between 1 and {TXS_MAX} transactions"
        )));
    }
    if args.senders == 0 {
        return Err(BenchError::InvalidArgs(
            "--senders must be at least 1".into(),
        ));
    }
    let keys = (0..args.senders)
        .map(sender_key)
        .collect::<Result<Vec<_>, _>>()?;
    let addresses: Vec<Address> = keys.iter().map(|k| k.address()).collect();
    eprintln!(
        "bench udp: signing {total} transfers from {} senders",
        args.senders
    );
    let fees = FeeParams {
        chain_id: CHAIN_ID,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1,
    };
    let n = keys.len() as u64;
    let raw: Vec<Vec<u8>> = (0..total)
        .into_par_iter()
        .map(|i| {
            let s = (i % n) as usize;
            let call = Call {
                // Plain accounts above the precompile range (0x01..0x11 would run precompiles).
                to: TxKind::Call(Address::left_padding_from(
                    &(0x1_0000 + i % 200).to_be_bytes(),
                )),
                value: U256::from(1u64),
                input: Default::default(),
                gas_limit: 21_000,
            };
            sign_raw(&keys[s], fees, i / n, &call).map(|(_, raw)| raw)
        })
        .collect::<Result<_, _>>()?;

    let target = target(args.backend)?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::Local(e.to_string()))?;
    let genesis = write_genesis(dir.path(), &addresses)?;
    let poll = match args.poll {
        PollArg::BusyPoll => PollMode::BusyPoll,
        PollArg::Blocking => PollMode::Blocking,
    };
    let mut config = bench_node_config(
        dir.path().join("data"),
        Some(genesis),
        args.backend,
        target.listen,
        target.rig.as_ref(),
        poll,
    )?;
    config.fastpath.verify_tiles = args.verify_tiles;
    config.fastpath.sqpoll = args.sqpoll;
    config.sequencer.exec_threads = args.exec_threads;
    config.storage.minilog_sync = match args.sync {
        SyncArg::Always => rtchain_state::minilog::SyncMode::Always,
        SyncArg::Off => rtchain_state::minilog::SyncMode::Off,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let node = runtime
        .block_on(rtchain_node::Node::start(config))
        .map_err(|e| BenchError::Local(format!("node: {e}")))?;

    // The address the node bound (the port the kernel chose for port 0).
    let listen = node
        .fastpath
        .as_ref()
        .map_or(target.listen, |fastpath| fastpath.local_addr);
    // Whatever happens next, the node is stopped before its data directory and rig go away.
    let outcome = client_socket(target.rig.as_ref(), listen).and_then(|socket| {
        let rtt = wait_for_pong(&socket, Duration::from_secs(10))?;
        eprintln!(
            "bench udp: {} node up at udp://{} (ping {} us); {} tx/s for {} s",
            args.backend.name(),
            listen,
            rtt.as_micros(),
            args.rate,
            args.duration_s
        );
        measure(&socket, &raw, args.rate)
    });
    let port = node
        .fastpath
        .as_ref()
        .and_then(|f| f.port_stats.first().map(|s| *s.lock()))
        .unwrap_or_default();
    runtime.block_on(node.stop());
    drop(target);
    let outcome = outcome?;
    let pct = |q: f64| (!outcome.latency.is_empty()).then(|| outcome.latency.value_at_quantile(q));
    let result = UdpBenchResult {
        bench: "udp",
        backend: args.backend.name(),
        label: args.label.clone(),
        rate: args.rate,
        duration_s: args.duration_s,
        senders: args.senders,
        sync_mode: match args.sync {
            SyncArg::Always => "always",
            SyncArg::Off => "off",
        },
        poll: match poll {
            PollMode::BusyPoll => "busy-poll",
            PollMode::Blocking => "blocking",
        },
        verify_tiles: args.verify_tiles,
        sqpoll: args.sqpoll,
        exec_threads: args.exec_threads,
        sent: total,
        received: outcome.received,
        errors: total - outcome.received,
        missing: outcome.missing,
        rejects: outcome.rejects,
        first_error: outcome.first_error,
        achieved_tps: outcome.achieved_tps,
        p50_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: (!outcome.latency.is_empty()).then(|| outcome.latency.max()),
        send_lag_p99_us: outcome.send_lag.value_at_quantile(0.99),
        port,
        machine: Machine::current(),
        commit: current_commit(),
        timestamp: utc_timestamp(),
    };
    emit_line(&result, args.out.as_deref())?;
    Ok(result)
}

struct Outcome {
    received: u64,
    missing: u64,
    rejects: BTreeMap<String, u64>,
    first_error: Option<String>,
    achieved_tps: f64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| BenchError::Local(e.to_string()))
}

/// Sends `raw[i]` at `start + i / rate` (one transaction per datagram, request id = i) and
/// times each reply against its due time.
fn measure(socket: &UdpSocket, raw: &[Vec<u8>], rate: u32) -> Result<Outcome, BenchError> {
    let total = raw.len() as u64;
    let receiver = socket
        .try_clone()
        .map_err(|e| BenchError::Local(e.to_string()))?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let start = Instant::now() + Duration::from_millis(20);
    let sending_done = Arc::new(AtomicBool::new(false));
    // Tells the receiver to drain and stop however the send loop ends (also on an error).
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done_guard = Done(sending_done.clone());
    let last_sent = Arc::new(AtomicU64::new(0));
    let done = sending_done.clone();
    let receiver_thread = std::thread::spawn(move || -> Result<Outcome, BenchError> {
        let mut latency = histogram()?;
        let mut answered = vec![false; total as usize];
        let mut received = 0u64;
        let mut replies = 0u64;
        let mut rejects = BTreeMap::new();
        let mut first_error = None;
        let mut last_receipt = start;
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let mut drain_deadline: Option<Instant> = None;
        while replies < total {
            if done.load(Ordering::Acquire) && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN);
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let Ok(len) = receiver.recv(&mut buf) else {
                continue;
            };
            let now = Instant::now();
            match wire::decode(&buf[..len]) {
                Ok(wire::Message::Receipt(r)) => {
                    let Some(slot) = answered.get_mut(r.request_id as usize) else {
                        continue;
                    };
                    if std::mem::replace(slot, true) {
                        continue;
                    }
                    replies += 1;
                    if r.status == wire::TxStatus::Success {
                        received += 1;
                        let due = start + due_offset(r.request_id, rate);
                        let us = now.saturating_duration_since(due).as_micros() as u64;
                        latency.saturating_record(us.max(1));
                        last_receipt = now;
                    } else {
                        *rejects.entry("reverted".to_string()).or_insert(0) += 1;
                    }
                }
                Ok(wire::Message::Reject(r)) => {
                    let Some(slot) = answered.get_mut(r.request_id as usize) else {
                        continue;
                    };
                    if std::mem::replace(slot, true) {
                        continue;
                    }
                    replies += 1;
                    *rejects.entry(r.code.as_str().to_string()).or_insert(0) += 1;
                    if first_error.is_none() {
                        first_error = Some(format!("{}: {}", r.code, r.reason_lossy()));
                    }
                }
                _ => {}
            }
        }
        let elapsed = last_receipt.saturating_duration_since(start).as_secs_f64();
        Ok(Outcome {
            received,
            missing: total - replies,
            rejects,
            first_error,
            achieved_tps: if elapsed > 0.0 {
                (received as f64 / elapsed * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency,
            send_lag: histogram()?,
        })
    });

    rtchain_dataplane::tile::tight_timer_slack();
    let mut send_lag = histogram()?;
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    for (i, tx) in raw.iter().enumerate() {
        let due = start + due_offset(i as u64, rate);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let wait = due - now;
            if wait > Duration::from_micros(30) {
                std::thread::sleep(wait - Duration::from_micros(10));
            } else {
                std::hint::spin_loop();
            }
        }
        let len = wire::encode_submit(&mut buf, i as u64, &[tx.as_slice()])
            .map_err(|e| BenchError::Local(format!("encode: {e}")))?;
        send_lag.saturating_record(due.elapsed().as_micros() as u64);
        // A full socket buffer is a lost datagram: the transaction then counts as missing.
        let _ = socket.send(&buf[..len]);
        last_sent.store(i as u64, Ordering::Relaxed);
    }
    drop(done_guard);
    let mut outcome = receiver_thread
        .join()
        .map_err(|_| BenchError::Local("receiver thread panicked".into()))??;
    outcome.send_lag = send_lag;
    Ok(outcome)
}
