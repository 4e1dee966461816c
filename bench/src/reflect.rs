//! `rtchain bench reflect`: the pktgen-compatible reflector's round trip on a veth rig, and in
//! the same run, on the same rig, `dpdk-testpmd --forward-mode=5tswap` as the baseline.
//!
//! The client is a kernel UDP socket in the rig's namespace sending pktgen-style latency probes
//! (64-byte frames whose bytes 48..64 are pktgen's stamp: magic, index, TSC) one at a time and
//! timing each echo. Every echo is checked: stamp intact, index in order.

use std::{
    io::Read as _,
    net::{SocketAddrV4, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rtchain_dataplane::{
    Backend, PollMode, PortConfig, PortStats,
    packet::{PKTGEN_MAGIC, PKTGEN_STAMP_OFFSET, UDP_PAYLOAD_OFFSET},
    rig::VethRig,
    tile,
};
use serde::Serialize;

use super::{
    error::BenchError,
    report::{Machine, current_commit, emit_line, utc_timestamp},
    udp::UdpBackend,
};

/// Where the stamp sits in the UDP payload of an IPv4 (no options) frame.
const STAMP_IN_PAYLOAD: usize = PKTGEN_STAMP_OFFSET - UDP_PAYLOAD_OFFSET;
/// Payload of the smallest probe that carries the whole stamp: a 64-byte frame (without FCS).
const PROBE_PAYLOAD: usize = PKTGEN_STAMP_OFFSET + 16 - UDP_PAYLOAD_OFFSET;
const REFLECTOR_PORT: u16 = 9_000;
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct ReflectBenchArgs {
    #[arg(long, value_enum, default_value_t = UdpBackend::DpdkAfXdp)]
    pub backend: UdpBackend,
    /// Seconds of probing for each of the two reflectors.
    #[arg(long = "duration", value_name = "SECONDS", default_value_t = 5)]
    pub duration_s: u64,
    /// io-uring only: kernel-side submission polling (SQPOLL).
    #[arg(long)]
    pub sqpoll: bool,
    /// Skip the dpdk-testpmd baseline.
    #[arg(long)]
    pub no_testpmd: bool,
    #[arg(long, default_value = "dpdk-testpmd")]
    pub testpmd_bin: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReflectBenchResult {
    pub bench: &'static str,
    pub backend: &'static str,
    pub label: String,
    pub duration_s: u64,
    pub probes: u64,
    pub lost: u64,
    /// Echoes whose stamp was damaged or whose index was out of order (pktgen would drop them).
    pub bad_echoes: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub testpmd_p50_us: Option<f64>,
    pub testpmd_p99_us: Option<f64>,
    pub testpmd_probes: u64,
    pub testpmd_lost: u64,
    /// Our p50 over testpmd's (1.0 = as fast as testpmd).
    pub ratio_p50: Option<f64>,
    pub sqpoll: bool,
    pub port: PortStats,
    pub machine: Machine,
    pub commit: String,
    pub timestamp: String,
}

struct Probed {
    probes: u64,
    lost: u64,
    bad: u64,
    rtt_ns: Histogram<u64>,
}

impl Probed {
    fn us(&self, q: f64) -> Option<f64> {
        (!self.rtt_ns.is_empty())
            .then(|| (self.rtt_ns.value_at_quantile(q) as f64 / 100.0).round() / 10.0)
    }
}

fn local(e: impl std::fmt::Display) -> BenchError {
    BenchError::Local(e.to_string())
}

/// Sends probes one at a time for `duration` from a socket in the rig's namespace.
fn probe(
    rig: &VethRig,
    target: SocketAddrV4,
    duration: Duration,
    client_core: Option<usize>,
) -> Result<Probed, BenchError> {
    let socket = rig
        .in_namespace(move || -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(target)?;
            Ok(socket)
        })
        .map_err(local)?
        .map_err(local)?;
    socket.set_nonblocking(true).map_err(local)?;
    let handle = tile::spawn_tile(
        "probe",
        client_core,
        move || -> Result<Probed, BenchError> {
            let mut rtt_ns = Histogram::new_with_bounds(100, 10_000_000_000, 3).map_err(local)?;
            let (mut probes, mut lost, mut bad) = (0u64, 0u64, 0u64);
            let mut payload = [0u8; PROBE_PAYLOAD];
            let mut echo = [0u8; 2048];
            let started = Instant::now();
            let mut index = 0u32;
            while started.elapsed() < duration {
                index = index.wrapping_add(1);
                payload[STAMP_IN_PAYLOAD..STAMP_IN_PAYLOAD + 4]
                    .copy_from_slice(&PKTGEN_MAGIC.to_le_bytes());
                payload[STAMP_IN_PAYLOAD + 4..STAMP_IN_PAYLOAD + 8]
                    .copy_from_slice(&index.to_le_bytes());
                let sent_at = Instant::now();
                let stamp = started.elapsed().as_nanos() as u64;
                payload[STAMP_IN_PAYLOAD + 8..STAMP_IN_PAYLOAD + 16]
                    .copy_from_slice(&stamp.to_le_bytes());
                probes += 1;
                if socket.send(&payload).is_err() {
                    lost += 1;
                    continue;
                }
                // Busy-polling (non-blocking) receive: a sleeping client would add its own
                // wake-up, about 10 us here, to every round trip.
                loop {
                    match socket.recv(&mut echo) {
                        Ok(n) => {
                            let rtt = sent_at.elapsed();
                            if n != PROBE_PAYLOAD || echo[..n] != payload[..] {
                                // A late echo of an earlier (lost) probe, or a damaged one.
                                bad += 1;
                                continue;
                            }
                            rtt_ns.saturating_record(rtt.as_nanos() as u64);
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if sent_at.elapsed() > PROBE_TIMEOUT {
                                lost += 1;
                                break;
                            }
                            std::hint::spin_loop();
                        }
                        Err(_) => {
                            lost += 1;
                            break;
                        }
                    }
                }
            }
            Ok(Probed {
                probes,
                lost,
                bad,
                rtt_ns,
            })
        },
    )
    .map_err(local)?;
    handle.join().map_err(local)?
}

/// Runs our reflector on `core` until `stop`; returns its port counters.
fn run_reflector(
    config: PortConfig,
    core: Option<usize>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<tile::TileHandle<PortStats>, BenchError> {
    tile::spawn_tile("reflector", core, move || {
        let mut port = match rtchain_dataplane::open_port(&config) {
            Ok(port) => {
                let _ = ready.send(Ok(()));
                port
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return PortStats::default();
            }
        };
        let mut buf: Vec<rtchain_dataplane::Datagram> = (0..32)
            .map(|_| rtchain_dataplane::Datagram::empty())
            .collect();
        while !stop.load(Ordering::Relaxed) {
            // Reflection happens inside recv_burst; nothing else listens here.
            if let Ok(0) | Err(_) = port.recv_burst(&mut buf) {
                let _ = port.wait(Duration::from_millis(10));
            }
        }
        port.stats()
    })
    .map_err(local)
}

/// A running dpdk-testpmd, killed if the benchmark returns early (it busy-polls two cores).
struct Testpmd(Child);

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets the reflector's stop flag however the benchmark ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts dpdk-testpmd in 5tswap mode on the rig's host end. testpmd needs two lcores: a main
/// one (idle, waiting on stdin) and the forwarding one.
fn start_testpmd(
    bin: &PathBuf,
    rig: &VethRig,
    backend: UdpBackend,
    main_core: usize,
    core: usize,
) -> Result<Child, BenchError> {
    let vdev = match backend {
        UdpBackend::DpdkAfPacket => format!("--vdev=net_af_packet0,iface={}", rig.host_if),
        _ => format!(
            "--vdev=net_af_xdp0,iface={},start_queue=0,queue_count=1",
            rig.host_if
        ),
    };
    Command::new(bin)
        .args([
            "--no-huge",
            "-m",
            "256",
            "--no-pci",
            "--no-shconf",
            "-l",
            &format!("{main_core},{core}"),
            &vdev,
            "--",
            "--forward-mode=5tswap",
            "--total-num-mbufs=4096",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            BenchError::Local(format!(
                "cannot start {} ({e}); install DPDK with scripts/setup.sh or pass --no-testpmd",
                bin.display()
            ))
        })
}

pub fn run_reflect_bench(args: ReflectBenchArgs) -> Result<ReflectBenchResult, BenchError> {
    if args.duration_s == 0 {
        return Err(BenchError::InvalidArgs(
            "--duration must be at least 1".into(),
        ));
    }
    let duration = Duration::from_secs(args.duration_s);
    let cpus = tile::allowed_cpus().map_err(local)?;
    // The reflector (ours or testpmd) on the last core, the client on the first.
    let reflector_core = *cpus.last().ok_or_else(|| local("no allowed CPU"))?;
    let client_core = (cpus.len() > 1).then(|| cpus[0]);

    let rig = VethRig::create(!args.backend.is_dpdk())
        .map_err(|e| BenchError::Local(format!("veth rig (needs root): {e}")))?;
    rig.static_neighbour(rig.host_ip).map_err(local)?;
    let target = SocketAddrV4::new(rig.host_ip, REFLECTOR_PORT);

    let mut dpdk = rtchain_dataplane::dpdk::DpdkConfig {
        no_huge: true,
        memory_mb: 256,
        lcores: vec![reflector_core],
        ..Default::default()
    };
    let backend = match args.backend {
        UdpBackend::DpdkAfXdp => {
            dpdk.port = "net_af_xdp0".into();
            dpdk.vdevs = vec![format!(
                "net_af_xdp0,iface={},start_queue=0,queue_count=1",
                rig.host_if
            )];
            Backend::Dpdk
        }
        UdpBackend::DpdkAfPacket => {
            dpdk.port = "net_af_packet0".into();
            dpdk.vdevs = vec![format!("net_af_packet0,iface={}", rig.host_if)];
            Backend::Dpdk
        }
        UdpBackend::Socket => Backend::Socket,
        UdpBackend::IoUring => Backend::IoUring,
    };
    let config = PortConfig {
        backend,
        // The fast-path port is unused here; only the reflector port answers.
        listen: SocketAddrV4::new(rig.host_ip, REFLECTOR_PORT + 1),
        reflector_port: Some(REFLECTOR_PORT),
        poll: PollMode::BusyPoll,
        sqpoll: args.sqpoll,
        dpdk,
    };
    // testpmd first: a DPDK process that quits cleanly leaves the interface free, while this
    // process keeps EAL (and, with af_xdp, its hold on the queue) until it exits.
    let mut baseline = None;
    if !args.no_testpmd {
        rig.detach_xdp().map_err(local)?;
        eprintln!(
            "bench reflect: dpdk-testpmd 5tswap for {} s",
            args.duration_s
        );
        let main_core = client_core.ok_or_else(|| local("dpdk-testpmd needs two CPUs"))?;
        let mut child = Testpmd(start_testpmd(
            &args.testpmd_bin,
            &rig,
            args.backend,
            main_core,
            reflector_core,
        )?);
        // Wait until testpmd forwards (it prints its port set-up, then forwards).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut forwarding = false;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.0.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(BenchError::Local(format!(
                    "dpdk-testpmd exited ({status}): {}",
                    stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            let warm = probe(&rig, target, Duration::from_millis(200), client_core)?;
            if !warm.rtt_ns.is_empty() {
                forwarding = true;
                break;
            }
        }
        if forwarding {
            baseline = Some(probe(&rig, target, duration, client_core)?);
        }
        // Enter stops testpmd cleanly (it detaches from the interface); kill is the fallback.
        if let Some(mut stdin) = child.0.stdin.take() {
            use std::io::Write as _;
            let _ = stdin.write_all(b"\n");
        }
        let quit_by = Instant::now() + Duration::from_secs(5);
        while Instant::now() < quit_by && matches!(child.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(child);
        let _ = rig.detach_xdp();
        if !forwarding {
            return Err(local("dpdk-testpmd did not forward probes within 20 s"));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reflector = run_reflector(config, Some(reflector_core), stop.clone(), ready_tx)?;
    let stop_guard = StopOnDrop(stop.clone());
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(BenchError::Local(format!("reflector: {e}"))),
        Err(_) => return Err(local("the reflector stopped at start")),
    }
    // Let the link settle (af_xdp attaches its program asynchronously).
    let _ = probe(&rig, target, Duration::from_millis(300), client_core)?;
    eprintln!(
        "bench reflect: {} reflector for {} s",
        args.backend.name(),
        args.duration_s
    );
    let ours = probe(&rig, target, duration, client_core)?;
    drop(stop_guard);
    let port = reflector.join().map_err(local)?;

    drop(rig);

    let result = ReflectBenchResult {
        bench: "reflect",
        backend: args.backend.name(),
        label: args.label.clone(),
        duration_s: args.duration_s,
        probes: ours.probes,
        lost: ours.lost,
        bad_echoes: ours.bad,
        p50_us: ours.us(0.5),
        p99_us: ours.us(0.99),
        p999_us: ours.us(0.999),
        testpmd_p50_us: baseline.as_ref().and_then(|b| b.us(0.5)),
        testpmd_p99_us: baseline.as_ref().and_then(|b| b.us(0.99)),
        testpmd_probes: baseline.as_ref().map_or(0, |b| b.probes),
        testpmd_lost: baseline.as_ref().map_or(0, |b| b.lost),
        ratio_p50: match (ours.us(0.5), baseline.as_ref().and_then(|b| b.us(0.5))) {
            (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
            _ => None,
        },
        sqpoll: args.sqpoll,
        port,
        machine: Machine::current(),
        commit: current_commit(),
        timestamp: utc_timestamp(),
    };
    emit_line(&result, args.out.as_deref())?;
    Ok(result)
}
