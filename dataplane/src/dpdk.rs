//! The safe DPDK layer: EAL start-up from config, one mbuf pool per NUMA socket, an Ethernet port
//! with N RX/TX queue pairs (RSS over the UDP 4-tuple when N > 1), link status, counters, and a
//! [`DpdkQueue`] per queue pair that speaks UDP through our minimal stack (ARP, IPv4, UDP with
//! software checksums). Each queue pair is owned by exactly one net tile.
//!
//! All calls into DPDK live in this module; every `unsafe` block says why it is sound.

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use rtchain_dpdk_sys as sys;
use serde::{Deserialize, Serialize};

use crate::{
    packet::{self, MacAddr, Parsed},
    port::{Datagram, DatagramPort, PollMode, PortError, PortStats, PortWaker},
};

/// Frames moved per `rte_eth_rx_burst`/`tx_burst` call: DPDK's customary burst, enough to
/// amortise the call while keeping a burst's latency to a few microseconds.
const BURST: usize = 32;
/// How long an idle DPDK poller naps in blocking mode.
const IDLE_NAP: Duration = Duration::from_micros(20);
/// Per-lcore mbuf cache of the pool (DPDK's recommended order of magnitude).
const POOL_CACHE: u32 = 256;
/// Peers a queue's ARP table holds: far more clients than one fast-path queue serves, small
/// enough that a flood of spoofed sources costs a bounded few hundred KiB.
const MAX_ARP_ENTRIES: usize = 4_096;

/// One static ARP entry from the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArpEntry {
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// DPDK settings (`[dataplane.dpdk]` in the node config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpdkConfig {
    /// EAL lcores (`-l`): the core of the thread that starts EAL (EAL pins it there). Empty:
    /// that thread may run on any core this process is allowed (nothing pinned). The node sets
    /// it from `cores.net`.
    pub lcores: Vec<usize>,
    /// Memory EAL reserves, in MiB (`-m`).
    pub memory_mb: u32,
    /// Run without hugepages (`--no-huge`): for virtual devices in CI; slower on real NICs.
    pub no_huge: bool,
    /// Virtual devices (`--vdev`), e.g. `net_af_xdp0,iface=veth1,start_queue=0,queue_count=1`.
    pub vdevs: Vec<String>,
    /// PCI addresses to use (`-a`); empty with vdevs means `--no-pci`.
    pub pci: Vec<String>,
    /// The device to serve on: a vdev name (`net_af_xdp0`) or a PCI address (`0000:3b:00.0`).
    pub port: String,
    /// RX/TX queue pairs, one net tile each.
    pub queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// mbufs in each socket's pool.
    pub mbufs: u32,
    /// EAL `--file-prefix`: distinct per process when several share a host with shared config.
    pub file_prefix: Option<String>,
    /// Static ARP entries (peers that cannot or should not be resolved).
    pub static_arp: Vec<ArpEntry>,
    /// How long start-up waits for the link to come up.
    pub link_wait_ms: u64,
    /// Further EAL arguments, passed as given.
    pub extra_eal_args: Vec<String>,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        Self {
            lcores: Vec::new(),
            memory_mb: 256,
            no_huge: false,
            vdevs: Vec::new(),
            pci: Vec::new(),
            port: String::new(),
            queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mbufs: 8191,
            file_prefix: None,
            static_arp: Vec::new(),
            link_wait_ms: 5_000,
            extra_eal_args: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("DPDK EAL is already initialised in this process (it can start only once per process)")]
    AlreadyInitialised,
    #[error("DPDK EAL init failed: {reason}. {hint}EAL arguments: {args:?}")]
    EalInit {
        reason: String,
        hint: &'static str,
        args: Vec<String>,
    },
    #[error(
        "dpdk.port is empty: name the device to serve on (a vdev such as net_af_xdp0, or a PCI address)"
    )]
    NoPortConfigured,
    #[error(
        "DPDK port {name:?} not found ({available} ports probed). For a PCI NIC, check that it is bound to vfio-pci (`dpdk-devbind.py -s`; bind with `dpdk-devbind.py -b vfio-pci {name}`) and listed in dpdk.pci; for a vdev, that dpdk.vdevs declares it"
    )]
    PortNotFound { name: String, available: u16 },
    #[error(
        "port {name}: {queues} queue pairs requested, but the device supports at most {max_rx} RX and {max_tx} TX queues"
    )]
    UnsupportedQueues {
        name: String,
        queues: u16,
        max_rx: u16,
        max_tx: u16,
    },
    #[error(
        "cannot create the mbuf pool ({mbufs} mbufs on socket {socket}): {reason}. With hugepages, reserve more (`echo 512 > /proc/sys/vm/nr_hugepages`) or raise dpdk.memory_mb; without them set dpdk.no_huge = true"
    )]
    Mempool {
        mbufs: u32,
        socket: i32,
        reason: String,
    },
    #[error("port {name}: {step} failed: {reason}")]
    PortSetup {
        name: String,
        step: &'static str,
        reason: String,
    },
    #[error(
        "port {name}: link is down after {waited_ms} ms (check the cable or, for a veth, that both ends are up)"
    )]
    LinkDown { name: String, waited_ms: u64 },
    #[error("dataplane config: {0}")]
    Config(String),
}

impl From<DpdkError> for PortError {
    fn from(e: DpdkError) -> Self {
        PortError::Dpdk(e.to_string())
    }
}

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

fn rte_error_text(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let text = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    format!("{} (rte_errno {code})", text.to_string_lossy())
}

fn last_rte_error() -> String {
    // SAFETY: reads DPDK's per-thread error number.
    rte_error_text(unsafe { sys::rtc_errno() })
}

fn hugepages_reserved() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The EAL, started once per process. Dropping it does not clean EAL up: DPDK cannot start
/// again in the same process anyway, and its devices are closed by [`DpdkDevice`]'s drop.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    /// Only [`Eal::init`] makes one: holding an `Eal` proves EAL is up.
    _started: (),
}

impl Eal {
    /// The EAL arguments this config produces (also shown in errors).
    pub fn args(config: &DpdkConfig) -> Result<Vec<String>, DpdkError> {
        let mut args = vec!["rtchain".to_string()];
        if config.lcores.is_empty() {
            // One lcore mapped onto every allowed CPU: EAL does not pin this thread.
            let cpus = crate::tile::allowed_cpus().map_err(|e| DpdkError::Config(e.to_string()))?;
            let set = cpus
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            args.push(format!("--lcores=0@({set})"));
        } else {
            let list = config
                .lcores
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            args.push("-l".into());
            args.push(list);
        }
        args.push("-m".into());
        args.push(config.memory_mb.to_string());
        if config.no_huge {
            args.push("--no-huge".into());
        }
        match &config.file_prefix {
            Some(prefix) => args.push(format!("--file-prefix={prefix}")),
            None => args.push("--no-shconf".into()),
        }
        if config.pci.is_empty() {
            args.push("--no-pci".into());
        } else {
            for pci in &config.pci {
                args.push("-a".into());
                args.push(pci.clone());
            }
        }
        for vdev in &config.vdevs {
            args.push(format!("--vdev={vdev}"));
        }
        args.push("--log-level=lib.eal:error".into());
        args.extend(config.extra_eal_args.iter().cloned());
        Ok(args)
    }

    /// Starts EAL. Call it on the thread that will poll the first queue: EAL pins its calling
    /// thread to the first lcore.
    pub fn init(config: &DpdkConfig) -> Result<Eal, DpdkError> {
        let args = Self::args(config)?;
        if EAL_STARTED.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let c_args: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|_| DpdkError::Config("an EAL argument contains a NUL byte".into()))?;
        let mut argv: Vec<*mut libc::c_char> =
            c_args.iter().map(|a| a.as_ptr() as *mut _).collect();
        // SAFETY: argv points at NUL-terminated strings that outlive the call (EAL copies what
        // it keeps); argc matches argv's length; this runs once per process (guarded above).
        let ret = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if ret < 0 {
            let reason = last_rte_error();
            let hint = if !config.no_huge && !hugepages_reserved() {
                "No hugepages are reserved: reserve some (`echo 512 > /proc/sys/vm/nr_hugepages`) or set dpdk.no_huge = true. "
            } else {
                ""
            };
            return Err(DpdkError::EalInit { reason, hint, args });
        }
        Ok(Eal { args, _started: () })
    }

    /// The arguments EAL was started with.
    pub fn started_args(&self) -> &[String] {
        &self.args
    }
}

/// An mbuf pool (one per NUMA socket the ports sit on).
struct Mempool {
    ptr: *mut sys::rte_mempool,
}

// SAFETY: a DPDK mempool is a multi-producer multi-consumer structure designed to be shared
// between lcores; we only hand its pointer to DPDK calls.
unsafe impl Send for Mempool {}
unsafe impl Sync for Mempool {}

impl Mempool {
    fn create(name: &str, mbufs: u32, socket: i32) -> Result<Self, DpdkError> {
        let c_name = CString::new(name).map_err(|_| DpdkError::Config("pool name".into()))?;
        // SAFETY: plain constructor call with a valid NUL-terminated name.
        let ptr = unsafe {
            sys::rte_pktmbuf_pool_create(
                c_name.as_ptr(),
                mbufs,
                POOL_CACHE,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                socket,
            )
        };
        if ptr.is_null() {
            return Err(DpdkError::Mempool {
                mbufs,
                socket,
                reason: last_rte_error(),
            });
        }
        Ok(Self { ptr })
    }
}

/// A configured port: stopped and closed when the device and every queue handed out are gone,
/// so a queue can never be polled on a closed port.
struct PortGuard {
    port_id: u16,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        // SAFETY: the port was configured by us and nothing polls it any more (every queue
        // holds this guard); stopping a port that is not started only returns an error. For
        // af_xdp, closing detaches the XDP program from the interface.
        unsafe {
            sys::rte_eth_dev_stop(self.port_id);
            sys::rte_eth_dev_close(self.port_id);
        }
    }
}

/// Link state as DPDK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// A started Ethernet port with its queue pairs not yet handed out.
pub struct DpdkDevice {
    name: String,
    port: std::sync::Arc<PortGuard>,
    mac: MacAddr,
    socket: i32,
    driver: String,
    pool: std::sync::Arc<Mempool>,
    handed_out: Vec<bool>,
}

impl DpdkDevice {
    /// Finds, configures and starts the configured port; waits for its link.
    pub fn open(_eal: &Eal, config: &DpdkConfig) -> Result<Self, DpdkError> {
        if config.port.is_empty() {
            return Err(DpdkError::NoPortConfigured);
        }
        if config.queues == 0 {
            return Err(DpdkError::Config("dpdk.queues must be at least 1".into()));
        }
        let name = config.port.clone();
        let c_name = CString::new(name.as_str())
            .map_err(|_| DpdkError::Config("dpdk.port contains a NUL byte".into()))?;
        let mut port_id = 0u16;
        // SAFETY: valid C string and out-pointer.
        if unsafe { sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut port_id) } != 0 {
            // SAFETY: plain query.
            let available = unsafe { sys::rte_eth_dev_count_avail() };
            return Err(DpdkError::PortNotFound { name, available });
        }
        let setup_err = |step: &'static str, ret: i32| DpdkError::PortSetup {
            name: config.port.clone(),
            step,
            reason: rte_error_text(-ret),
        };

        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a properly sized, writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        if ret != 0 {
            return Err(setup_err("rte_eth_dev_info_get", ret));
        }
        if config.queues > info.max_rx_queues || config.queues > info.max_tx_queues {
            return Err(DpdkError::UnsupportedQueues {
                name,
                queues: config.queues,
                max_rx: info.max_rx_queues,
                max_tx: info.max_tx_queues,
            });
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: DPDK gives a static NUL-terminated driver name.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };

        let mut conf = sys::rte_eth_conf::default();
        if config.queues > 1 {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
            // SAFETY: returns a constant.
            let wanted = unsafe { sys::rtc_rss_ipv4_udp() };
            conf.rx_adv_conf.rss_conf.rss_hf = wanted & info.flow_type_rss_offloads;
            if conf.rx_adv_conf.rss_conf.rss_hf == 0 {
                return Err(DpdkError::PortSetup {
                    name,
                    step: "RSS",
                    reason: "the device cannot hash IPv4/UDP flows, so it cannot spread them over several queues; use dpdk.queues = 1".into(),
                });
            }
        }
        // SAFETY: conf is fully initialised; queue counts were checked against the device.
        let ret =
            unsafe { sys::rte_eth_dev_configure(port_id, config.queues, config.queues, &conf) };
        if ret != 0 {
            return Err(setup_err("rte_eth_dev_configure", ret));
        }
        // From here on, any error closes the port again (the guard's drop).
        let port = std::sync::Arc::new(PortGuard { port_id });
        // SAFETY: plain query on a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) };
        let socket = if socket < 0 { 0 } else { socket };
        let pool = std::sync::Arc::new(Mempool::create(
            &format!("rtc_pool_{port_id}_s{socket}"),
            config.mbufs,
            socket,
        )?);
        for q in 0..config.queues {
            // SAFETY: valid port and queue index, default rxconf (null), live pool.
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(
                    port_id,
                    q,
                    config.rx_descriptors,
                    socket as u32,
                    std::ptr::null(),
                    pool.ptr,
                )
            };
            if ret != 0 {
                return Err(setup_err("rte_eth_rx_queue_setup", ret));
            }
            // SAFETY: as above, default txconf.
            let ret = unsafe {
                sys::rte_eth_tx_queue_setup(
                    port_id,
                    q,
                    config.tx_descriptors,
                    socket as u32,
                    std::ptr::null(),
                )
            };
            if ret != 0 {
                return Err(setup_err("rte_eth_tx_queue_setup", ret));
            }
        }
        // SAFETY: configured port.
        let ret = unsafe { sys::rte_eth_dev_start(port_id) };
        if ret != 0 {
            return Err(setup_err("rte_eth_dev_start", ret));
        }
        let mut addr = sys::rte_ether_addr::default();
        // SAFETY: valid out-pointer.
        unsafe { sys::rte_eth_macaddr_get(port_id, &mut addr) };
        let device = Self {
            name,
            port,
            mac: MacAddr(addr.addr_bytes),
            socket,
            driver,
            pool,
            handed_out: vec![false; config.queues as usize],
        };
        let started = Instant::now();
        let wait = Duration::from_millis(config.link_wait_ms);
        while !device.link().up {
            if started.elapsed() >= wait {
                return Err(DpdkError::LinkDown {
                    name: device.name.clone(),
                    waited_ms: config.link_wait_ms,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port_id(&self) -> u16 {
        self.port.port_id
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The NUMA socket the port (and its mbuf pool) is on.
    pub fn socket(&self) -> i32 {
        self.socket
    }

    pub fn driver(&self) -> &str {
        &self.driver
    }

    pub fn link(&self) -> LinkStatus {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port, valid out-pointer.
        unsafe { sys::rte_eth_link_get_nowait(self.port.port_id, &mut link) };
        LinkStatus {
            up: u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() == 1,
        }
    }

    /// The device's own counters: (rx missed by the NIC, rx errors, rx without mbufs, tx errors).
    pub fn hw_counters(&self) -> (u64, u64, u64, u64) {
        let mut stats = sys::rte_eth_stats::default();
        // SAFETY: valid port, valid out-pointer.
        unsafe { sys::rte_eth_stats_get(self.port.port_id, &mut stats) };
        (stats.imissed, stats.ierrors, stats.rx_nombuf, stats.oerrors)
    }

    /// Hands out queue pair `queue` to the net tile that will own it (each exactly once).
    pub fn queue(
        &mut self,
        queue: u16,
        listen: SocketAddrV4,
        reflector_port: Option<u16>,
        static_arp: &[ArpEntry],
    ) -> Result<DpdkQueue, DpdkError> {
        let slot = self
            .handed_out
            .get_mut(queue as usize)
            .ok_or_else(|| DpdkError::Config(format!("queue {queue} does not exist")))?;
        if std::mem::replace(slot, true) {
            return Err(DpdkError::Config(format!(
                "queue {queue} is already owned by a net tile"
            )));
        }
        let mut arp = HashMap::new();
        for entry in static_arp {
            let mac: MacAddr = entry.mac.parse().map_err(|_| {
                DpdkError::Config(format!("static_arp: bad MAC address {:?}", entry.mac))
            })?;
            arp.insert(entry.ip, mac);
        }
        Ok(DpdkQueue {
            port_id: self.port.port_id,
            _port: self.port.clone(),
            queue,
            mac: self.mac,
            ip: *listen.ip(),
            listen_port: listen.port(),
            reflector_port,
            pool: self.pool.clone(),
            arp,
            ip_id: 0,
            poll: PollMode::BusyPoll,
            rx: [std::ptr::null_mut(); BURST],
            tx: Vec::with_capacity(BURST * 2),
            stats: PortStats::default(),
        })
    }
}

/// An RX/TX queue pair with our minimal UDP/IPv4 stack on it.
pub struct DpdkQueue {
    port_id: u16,
    /// Keeps the port open while this queue exists.
    _port: std::sync::Arc<PortGuard>,
    queue: u16,
    mac: MacAddr,
    ip: Ipv4Addr,
    listen_port: u16,
    reflector_port: Option<u16>,
    pool: std::sync::Arc<Mempool>,
    /// Static entries plus what we learn from ARP and from the frames of our clients.
    arp: HashMap<Ipv4Addr, MacAddr>,
    ip_id: u16,
    poll: PollMode,
    rx: [*mut sys::rte_mbuf; BURST],
    /// Frames to send at the end of this call (ARP replies, reflected probes).
    tx: Vec<*mut sys::rte_mbuf>,
    stats: PortStats,
}

// SAFETY: a queue pair is used by exactly one thread at a time (the net tile that owns it); the
// mbuf pointers it holds are owned by it alone until handed to tx_burst or freed.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn queue_id(&self) -> u16 {
        self.queue
    }

    fn free(mbuf: *mut sys::rte_mbuf) {
        // SAFETY: we own the mbuf (received, or allocated and not sent).
        unsafe { sys::rtc_pktmbuf_free(mbuf) }
    }

    /// Sends the frames queued in `self.tx`; frees and counts those the NIC did not take.
    fn flush_tx(&mut self) {
        let mut sent = 0;
        while sent < self.tx.len() {
            let chunk = (self.tx.len() - sent).min(BURST);
            // Bytes are read before the burst: afterwards the sent mbufs belong to the NIC.
            let bytes: u64 = self.tx[sent..sent + chunk]
                .iter()
                // SAFETY: mbufs we own until the burst below.
                .map(|&m| u64::from(unsafe { sys::rtc_pktmbuf_pkt_len(m) }))
                .sum();
            // SAFETY: the pointers are mbufs we own; tx_burst takes ownership of those it sends.
            let n = unsafe {
                sys::rtc_eth_tx_burst(
                    self.port_id,
                    self.queue,
                    self.tx.as_mut_ptr().add(sent),
                    chunk as u16,
                )
            } as usize;
            self.stats.tx_packets += n as u64;
            let mut unsent_bytes = 0;
            if n < chunk {
                for &m in &self.tx[sent + n..sent + chunk] {
                    // SAFETY: not taken by the NIC, still ours.
                    unsent_bytes += u64::from(unsafe { sys::rtc_pktmbuf_pkt_len(m) });
                }
            }
            self.stats.tx_bytes += bytes - unsent_bytes;
            sent += n;
            if n < chunk {
                for &m in &self.tx[sent..] {
                    Self::free(m);
                    self.stats.tx_dropped += 1;
                }
                break;
            }
        }
        self.tx.clear();
    }

    /// Remembers `ip`'s MAC. The table is bounded: when full, only entries already known are
    /// updated (static and early entries stay), so a spoofed-source flood cannot grow memory;
    /// a peer that does not fit is resolved by ARP when it is answered.
    fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        if ip.is_unspecified() || mac.is_multicast() {
            return;
        }
        if self.arp.len() < MAX_ARP_ENTRIES || self.arp.contains_key(&ip) {
            self.arp.insert(ip, mac);
        }
    }

    /// Handles one received frame: returns (the mbuf was queued for sending, `out` was filled).
    fn handle_frame(&mut self, mbuf: *mut sys::rte_mbuf, out: &mut Datagram) -> (bool, bool) {
        // SAFETY: a received mbuf: data pointer and data_len describe its first segment.
        let (data, segs) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    sys::rtc_pktmbuf_data(mbuf),
                    sys::rtc_pktmbuf_data_len(mbuf) as usize,
                ),
                sys::rtc_pktmbuf_nb_segs(mbuf),
            )
        };
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += data.len() as u64;
        if segs != 1 {
            // Chained mbufs mean a frame beyond one buffer: larger than anything we accept.
            self.stats.rx_dropped += 1;
            return (false, false);
        }
        match packet::parse_frame(data) {
            Err(packet::ParseError::Fragment) => {
                self.stats.fragments += 1;
                self.stats.rx_dropped += 1;
                (false, false)
            }
            Err(_) => {
                self.stats.bad_frames += 1;
                self.stats.rx_dropped += 1;
                (false, false)
            }
            Ok(Parsed::Arp(arp)) => {
                // Only ARP about us teaches us anything we need (other hosts' chatter would fill
                // the table).
                if arp.target_ip == self.ip {
                    self.learn(arp.sender_ip, arp.sender_mac);
                }
                if arp.op == 1 && arp.target_ip == self.ip {
                    // The reply is written over the request, in the mbuf's whole data room: a
                    // request from a kernel may be unpadded (42 bytes), a reply is padded to 60.
                    // SAFETY: our mbuf; the request was parsed into `arp` (a copy) already.
                    let room = unsafe {
                        std::slice::from_raw_parts_mut(
                            sys::rtc_pktmbuf_data(mbuf),
                            sys::rtc_pktmbuf_room(mbuf) as usize,
                        )
                    };
                    if let Some(len) = packet::build_arp_reply(room, self.mac, self.ip, &arp) {
                        // SAFETY: len bytes were written within the mbuf's room.
                        unsafe { sys::rtc_pktmbuf_set_len(mbuf, len as u16) };
                        self.stats.arp_replies += 1;
                        self.tx.push(mbuf);
                        return (true, false);
                    }
                }
                (false, false)
            }
            Ok(Parsed::Udp(udp)) => {
                if *udp.dst.ip() != self.ip || udp.dst_mac != self.mac {
                    self.stats.rx_dropped += 1;
                    return (false, false);
                }
                let port = udp.dst.port();
                if Some(port) == self.reflector_port {
                    if !crate::port::reflectable(udp.src, port) || udp.src_mac.is_multicast() {
                        self.stats.rx_dropped += 1;
                        return (false, false);
                    }
                    if packet::swap_5tuple_in_place(data).is_ok() {
                        self.stats.reflected += 1;
                        self.tx.push(mbuf);
                        return (true, false);
                    }
                    self.stats.bad_frames += 1;
                    return (false, false);
                }
                if port != self.listen_port {
                    self.stats.rx_dropped += 1;
                    return (false, false);
                }
                let (src, src_mac) = (udp.src, udp.src_mac);
                if !out.set_payload(udp.payload) {
                    self.stats.rx_dropped += 1;
                    return (false, false);
                }
                out.peer = src;
                out.local_port = port;
                self.learn(*src.ip(), src_mac);
                (false, true)
            }
            Ok(Parsed::Other) => {
                self.stats.rx_dropped += 1;
                (false, false)
            }
        }
    }
}

impl DatagramPort for DpdkQueue {
    fn backend(&self) -> &'static str {
        "dpdk"
    }

    fn local_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.listen_port)
    }

    fn recv_burst(&mut self, out: &mut [Datagram]) -> Result<usize, PortError> {
        let want = out.len().min(BURST);
        if want == 0 {
            return Ok(0);
        }
        // SAFETY: rx has room for BURST pointers; DPDK fills the first n with mbufs we then own.
        let n = unsafe {
            sys::rtc_eth_rx_burst(self.port_id, self.queue, self.rx.as_mut_ptr(), want as u16)
        } as usize;
        let mut delivered = 0;
        for i in 0..n {
            let mbuf = self.rx[i];
            let (kept, is_datagram) = self.handle_frame(mbuf, &mut out[delivered]);
            if is_datagram {
                delivered += 1;
            }
            if !kept {
                Self::free(mbuf);
            }
        }
        if !self.tx.is_empty() {
            self.flush_tx();
        }
        Ok(delivered)
    }

    fn send_burst(&mut self, datagrams: &[Datagram]) -> Result<usize, PortError> {
        let mut taken = 0;
        for d in datagrams {
            taken += 1;
            let Some(&dst_mac) = self.arp.get(d.peer.ip()) else {
                // A reply goes to a client we heard from (learned above) or a static entry; an
                // unknown peer gets an ARP request and this datagram is dropped.
                self.stats.tx_dropped += 1;
                self.send_arp_request(*d.peer.ip());
                continue;
            };
            // SAFETY: allocation from our pool; null when it is exhausted.
            let mbuf = unsafe { sys::rtc_pktmbuf_alloc(self.pool.ptr) };
            if mbuf.is_null() {
                self.stats.no_buffers += 1;
                self.stats.tx_dropped += 1;
                continue;
            }
            // SAFETY: a fresh mbuf: its data room from data_off to the end is ours to write.
            let room = unsafe {
                std::slice::from_raw_parts_mut(
                    sys::rtc_pktmbuf_data(mbuf),
                    sys::rtc_pktmbuf_room(mbuf) as usize,
                )
            };
            self.ip_id = self.ip_id.wrapping_add(1);
            let src = SocketAddrV4::new(self.ip, d.local_port);
            match packet::build_udp_frame(
                room,
                self.mac,
                dst_mac,
                src,
                d.peer,
                self.ip_id,
                d.payload(),
            ) {
                Some(len) => {
                    // SAFETY: len bytes were just written within the mbuf's room.
                    unsafe { sys::rtc_pktmbuf_set_len(mbuf, len as u16) };
                    self.tx.push(mbuf);
                }
                None => {
                    Self::free(mbuf);
                    self.stats.tx_dropped += 1;
                }
            }
            if self.tx.len() >= BURST {
                self.flush_tx();
            }
        }
        self.flush_tx();
        Ok(taken)
    }

    /// Virtual devices have no RX interrupts, so a DPDK queue is always polled. In blocking
    /// mode the poller naps between polls when idle: on a shared host a spinning net tile takes
    /// a whole core from the tiles that verify and execute (measured: 8,100 transfers/s with a
    /// spinning DPDK tile against 10,000/s with sockets on 2 cores), at the cost of up to
    /// IDLE_NAP of latency on the first frame after a quiet spell.
    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        match self.poll {
            PollMode::BusyPoll => std::hint::spin_loop(),
            PollMode::Blocking => std::thread::sleep(timeout.min(IDLE_NAP)),
        }
        Ok(())
    }

    fn waker(&self) -> PortWaker {
        PortWaker::none()
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

impl DpdkQueue {
    fn send_arp_request(&mut self, target: Ipv4Addr) {
        // SAFETY: allocation from our pool; null when exhausted.
        let mbuf = unsafe { sys::rtc_pktmbuf_alloc(self.pool.ptr) };
        if mbuf.is_null() {
            self.stats.no_buffers += 1;
            return;
        }
        // SAFETY: a fresh mbuf's data room is ours to write.
        let room = unsafe {
            std::slice::from_raw_parts_mut(
                sys::rtc_pktmbuf_data(mbuf),
                sys::rtc_pktmbuf_room(mbuf) as usize,
            )
        };
        match packet::build_arp_request(room, self.mac, self.ip, target) {
            Some(len) => {
                // SAFETY: len bytes written within the room.
                unsafe { sys::rtc_pktmbuf_set_len(mbuf, len as u16) };
                self.tx.push(mbuf);
            }
            None => Self::free(mbuf),
        }
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        for &m in &self.tx {
            Self::free(m);
        }
        self.tx.clear();
    }
}

/// The TSC frequency DPDK calibrated (for pktgen-style stamps).
pub fn tsc_hz() -> u64 {
    // SAFETY: plain query, valid after EAL init.
    unsafe { sys::rte_get_tsc_hz() }
}

/// The DPDK version string (e.g. "DPDK 22.11.11").
pub fn version() -> String {
    // SAFETY: rte_version returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::rtc_version()) }
        .to_string_lossy()
        .into_owned()
}

/// A device together with the one queue pair a single net tile serves: the queue is dropped
/// (its mbufs freed) before the device is stopped and closed.
pub struct DeviceQueue {
    queue: DpdkQueue,
    device: DpdkDevice,
}

impl DeviceQueue {
    pub fn new(
        mut device: DpdkDevice,
        queue: u16,
        listen: SocketAddrV4,
        reflector_port: Option<u16>,
        static_arp: &[ArpEntry],
    ) -> Result<Self, DpdkError> {
        let queue = device.queue(queue, listen, reflector_port, static_arp)?;
        tracing::info!(
            "dpdk: port {} ({}, driver {}) up, mac {}, serving {listen}",
            device.name,
            device.port.port_id,
            device.driver,
            device.mac
        );
        Ok(Self { queue, device })
    }

    pub fn device(&self) -> &DpdkDevice {
        &self.device
    }

    /// How `wait` idles (busy-poll by default). Blocking mode also tightens the calling
    /// thread's timer slack so that its naps stay short: call it on the polling thread.
    pub fn set_poll(&mut self, poll: PollMode) {
        self.queue.poll = poll;
        if poll == PollMode::Blocking {
            crate::tile::tight_timer_slack();
        }
    }
}

impl DatagramPort for DeviceQueue {
    fn backend(&self) -> &'static str {
        "dpdk"
    }

    fn local_addr(&self) -> SocketAddrV4 {
        self.queue.local_addr()
    }

    fn recv_burst(&mut self, out: &mut [Datagram]) -> Result<usize, PortError> {
        self.queue.recv_burst(out)
    }

    fn send_burst(&mut self, datagrams: &[Datagram]) -> Result<usize, PortError> {
        self.queue.send_burst(datagrams)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        self.queue.wait(timeout)
    }

    fn waker(&self) -> PortWaker {
        self.queue.waker()
    }

    /// Our stack's counters plus the device's own: frames the NIC missed and receives that found
    /// no mbuf count as drops.
    fn stats(&self) -> PortStats {
        let mut stats = self.queue.stats();
        let (missed, errors, no_mbuf, tx_errors) = self.device.hw_counters();
        stats.rx_dropped += missed + no_mbuf;
        stats.bad_frames += errors;
        stats.no_buffers += no_mbuf;
        stats.tx_dropped += tx_errors;
        stats
    }
}
