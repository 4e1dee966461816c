//! The one interface every packet I/O backend implements: bursts of UDP datagrams in and out of
//! preallocated buffers. The rest of the node sees only this (and the rings behind it), whatever
//! moves the bytes: DPDK, io_uring or sockets.

use std::{net::SocketAddrV4, time::Duration};

/// Largest UDP payload a port moves: a 1500-byte Ethernet MTU minus the IPv4 and UDP headers.
/// The DPDK stack drops IPv4 fragments, so nothing larger can arrive there either.
pub const MAX_PAYLOAD: usize = 1472;

/// One UDP datagram in a fixed-size buffer (ring slots and bursts are arrays of these, allocated
/// once at start-up).
#[derive(Clone)]
pub struct Datagram {
    /// The remote end: the source of a received datagram, the destination of one to send.
    pub peer: SocketAddrV4,
    /// Our UDP port it arrived on, or leaves from.
    pub local_port: u16,
    pub len: u16,
    pub data: [u8; MAX_PAYLOAD],
}

impl Datagram {
    pub const fn empty() -> Self {
        Self {
            peer: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            local_port: 0,
            len: 0,
            data: [0; MAX_PAYLOAD],
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    /// Copies `payload` in; `false` (and nothing copied) if it does not fit.
    pub fn set_payload(&mut self, payload: &[u8]) -> bool {
        if payload.len() > MAX_PAYLOAD {
            return false;
        }
        self.data[..payload.len()].copy_from_slice(payload);
        self.len = payload.len() as u16;
        true
    }
}

impl Default for Datagram {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagram")
            .field("peer", &self.peer)
            .field("local_port", &self.local_port)
            .field("len", &self.len)
            .finish()
    }
}

/// How a net tile waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    /// Spin on the queue: lowest latency, one core at 100%. For dedicated cores.
    #[default]
    BusyPoll,
    /// Sleep in the kernel until a datagram arrives or the port is woken: for shared hosts and
    /// CI, at the cost of a wake-up (tens of microseconds).
    Blocking,
}

/// Counters every backend keeps. Monotonic; read them with [`DatagramPort::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Received but dropped: not for us, malformed, fragments, full rings.
    pub rx_dropped: u64,
    /// Could not be sent (queue full, send error).
    pub tx_dropped: u64,
    /// Frames that failed to parse (truncated, bad header, bad checksum).
    pub bad_frames: u64,
    /// IPv4 fragments (dropped: the fast path never needs them).
    pub fragments: u64,
    /// Receives that found no free packet buffer (DPDK mbuf exhaustion).
    pub no_buffers: u64,
    /// pktgen probes (or any datagram to the reflector port) sent back.
    pub reflected: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
}

/// Wakes a port's tile from [`DatagramPort::wait`] (for example when a receipt is queued for
/// it). Cheap to clone and to call from any thread.
#[derive(Clone, Default)]
pub struct PortWaker {
    eventfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl PortWaker {
    /// A waker that does nothing: for ports that never sleep.
    pub fn none() -> Self {
        Self { eventfd: None }
    }

    pub fn from_eventfd(fd: std::sync::Arc<std::os::fd::OwnedFd>) -> Self {
        Self { eventfd: Some(fd) }
    }

    pub fn wake(&self) {
        if let Some(fd) = &self.eventfd {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own; a failed write only
            // means the counter is already non-zero, which wakes the reader all the same.
            unsafe {
                libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("dpdk: {0}")]
    Dpdk(String),
    #[error("{0}")]
    Config(String),
}

/// A source and sink of UDP datagrams owned by one net tile.
///
/// Datagrams addressed to the configured reflector port never surface here: the port sends them
/// straight back (5-tuple swapped, payload untouched) inside `recv_burst`, counted in
/// `PortStats::reflected`.
pub trait DatagramPort: Send {
    /// The backend's name as written in the config (`dpdk`, `socket`, `io-uring`).
    fn backend(&self) -> &'static str;

    /// The fast-path address this port serves (with the port the kernel chose for port 0).
    fn local_addr(&self) -> SocketAddrV4;

    /// Moves up to `out.len()` received datagrams into `out` without blocking; returns how many.
    fn recv_burst(&mut self, out: &mut [Datagram]) -> Result<usize, PortError>;

    /// Sends datagrams from the front of `datagrams`; returns how many were handled (sent, or
    /// dropped as unsendable). The rest may be retried (the queue was full).
    fn send_burst(&mut self, datagrams: &[Datagram]) -> Result<usize, PortError>;

    /// Waits until something may be received, the waker fires, or `timeout` passes. Returns at
    /// once in busy-poll mode.
    fn wait(&mut self, timeout: Duration) -> Result<(), PortError>;

    /// Wakes this port's `wait` from another thread.
    fn waker(&self) -> PortWaker;

    fn stats(&self) -> PortStats;
}

/// Whether a datagram from `peer` may be reflected by a reflector on `reflector_port`. Refused:
/// sources on a privileged port or on the reflector port itself (one spoofed datagram between
/// two reflectors would otherwise bounce forever), and broadcast, multicast or unspecified
/// source addresses (a reflection would go to many hosts, or nowhere).
pub fn reflectable(peer: SocketAddrV4, reflector_port: u16) -> bool {
    let ip = peer.ip();
    peer.port() >= 1024
        && peer.port() != reflector_port
        && !ip.is_broadcast()
        && !ip.is_multicast()
        && !ip.is_unspecified()
}
