//! The `socket` backend: kernel UDP sockets driven with `recvmmsg`/`sendmmsg`.
//!
//! One non-blocking socket on the fast-path address, and optionally a second one on the
//! reflector port (same IP) that bounces every datagram straight back to its sender. Every
//! burst reuses `mmsghdr`/`iovec`/`sockaddr_in` arrays allocated in [`SocketPort::bind`]; the
//! hot path allocates nothing, and receives land directly in the caller's `Datagram` buffers.
//!
//! In [`PollMode::BusyPoll`] the net tile spins on `recv_burst` (each call one `recvmmsg`, two
//! with a reflector): the lowest-latency kernel path measured here, at the cost of a full core.
//! In [`PollMode::Blocking`], `wait` sleeps in `ppoll` on the sockets and an eventfd that the
//! [`PortWaker`] writes to.
//!
//! Also home of the small socket helpers the `io-uring` backend shares (binding, address
//! conversion, the eventfd).

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::port::{Datagram, DatagramPort, MAX_PAYLOAD, PollMode, PortError, PortStats, PortWaker};

/// Largest burst: `recvmmsg`/`sendmmsg` take at most `UIO_MAXIOV` (1024) messages per call.
pub const MAX_BURST: usize = 1024;

/// Socket buffer size we ask for: 4 MiB holds ~2,800 full-size datagrams, enough to ride out a
/// scheduling hiccup of a few milliseconds at line rate on loopback. The kernel caps it at
/// `net.core.rmem_max`/`wmem_max`; we log when it does.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Configuration of the `socket` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketPortConfig {
    /// The fast-path address (port 0: an ephemeral port, see [`SocketPort::local_addr`]).
    pub listen: SocketAddrV4,
    /// Reflector port on the same IP: every datagram to it is sent straight back (latency
    /// probes). `Some(0)`: an ephemeral port.
    #[serde(default)]
    pub reflector_port: Option<u16>,
    #[serde(default)]
    pub poll: PollMode,
    /// Datagrams per `recvmmsg`/`sendmmsg`, 1..=[`MAX_BURST`]; also the size of the
    /// preallocated message arrays.
    #[serde(default = "default_burst")]
    pub burst: usize,
}

fn default_burst() -> usize {
    32
}

impl SocketPortConfig {
    /// Busy-polling, no reflector, bursts of 32.
    pub fn new(listen: SocketAddrV4) -> Self {
        Self {
            listen,
            reflector_port: None,
            poll: PollMode::default(),
            burst: default_burst(),
        }
    }
}

/// Checks the settings both socket-based backends share.
pub(crate) fn check_config(
    backend: &str,
    listen: SocketAddrV4,
    reflector_port: Option<u16>,
    burst: usize,
) -> Result<(), PortError> {
    if burst == 0 || burst > MAX_BURST {
        return Err(PortError::Config(format!(
            "{backend} port: burst must be between 1 and {MAX_BURST}, got {burst}"
        )));
    }
    if let Some(port) = reflector_port
        && port != 0
        && port == listen.port()
    {
        return Err(PortError::Config(format!(
            "{backend} port: reflector_port {port} is the listen port; pick another"
        )));
    }
    Ok(())
}

/// Binds a UDP socket with enlarged buffers. `nonblocking` for the socket backend, which calls
/// `recvmmsg` itself; io_uring wants blocking sockets (it polls them itself and would otherwise
/// pass EAGAIN through as a completion on some kernels).
pub(crate) fn bind_udp(
    backend: &str,
    addr: SocketAddrV4,
    nonblocking: bool,
) -> Result<UdpSocket, PortError> {
    let context = |what: &str, e: io::Error| {
        PortError::Io(io::Error::new(
            e.kind(),
            format!("{backend} port: {what} UDP {addr}: {e}"),
        ))
    };
    let socket = UdpSocket::bind(addr).map_err(|e| context("binding", e))?;
    socket
        .set_nonblocking(nonblocking)
        .map_err(|e| context("configuring", e))?;
    let fd = socket.as_raw_fd();
    for (option, name) in [
        (libc::SO_RCVBUF, "SO_RCVBUF / net.core.rmem_max"),
        (libc::SO_SNDBUF, "SO_SNDBUF / net.core.wmem_max"),
    ] {
        // Best effort: a small buffer costs drops under bursts, not correctness.
        let got = set_buffer_size(fd, option, SOCKET_BUFFER_BYTES);
        // Linux reports twice the usable size it granted (bookkeeping overhead included).
        if got < SOCKET_BUFFER_BYTES {
            tracing::info!(
                %addr,
                requested_bytes = SOCKET_BUFFER_BYTES,
                granted_bytes = got / 2,
                "{backend} port: socket buffer capped by {name}"
            );
        }
    }
    Ok(socket)
}

/// Sets a socket buffer option and returns the size the kernel reports afterwards (0 if it
/// cannot be read).
fn set_buffer_size(fd: RawFd, option: libc::c_int, bytes: usize) -> usize {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a pointer to a live c_int and its exact size; the kernel only reads it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&want as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut got: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `got` and `len` are live and `len` holds the size of `got`, as getsockopt needs.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        usize::try_from(got).unwrap_or(0)
    } else {
        0
    }
}

/// The bound address of a socket we bound to an IPv4 address.
pub(crate) fn local_v4(socket: &UdpSocket) -> Result<SocketAddrV4, PortError> {
    match socket.local_addr()? {
        std::net::SocketAddr::V4(addr) => Ok(addr),
        std::net::SocketAddr::V6(addr) => Err(PortError::Config(format!(
            "socket bound to IPv6 address {addr}; the fast path is IPv4 only"
        ))),
    }
}

pub(crate) fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The sender of a received datagram; `None` if the kernel did not fill in an IPv4 address
/// (never expected on an AF_INET UDP socket, but it comes from the kernel per datagram, so it
/// is checked rather than trusted).
pub(crate) fn from_sockaddr(sa: &libc::sockaddr_in, len: libc::socklen_t) -> Option<SocketAddrV4> {
    if (len as usize) < size_of::<libc::sockaddr_in>() || sa.sin_family != libc::AF_INET as u16 {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

/// A non-blocking eventfd for [`PortWaker`].
pub(crate) fn new_eventfd() -> Result<Arc<OwnedFd>, PortError> {
    // SAFETY: plain syscall with no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(PortError::Io(io::Error::new(
            e.kind(),
            format!("creating the port's wake-up eventfd: {e}"),
        )));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Resets the eventfd counter so the next wait sleeps again. A failed read means it was
/// already zero (EAGAIN), which is the state we want.
pub(crate) fn drain_eventfd(fd: RawFd) {
    let mut counter: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64, the size an eventfd read requires.
    unsafe {
        libc::read(fd, (&mut counter as *mut u64).cast(), 8);
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Errors that mean the socket itself is unusable (a bug, not a bad datagram).
fn is_fatal_socket_error(code: i32) -> bool {
    matches!(code, libc::EBADF | libc::ENOTSOCK | libc::EFAULT)
}

/// Preallocated `recvmmsg`/`sendmmsg` arguments for up to `burst` datagrams.
///
/// The headers hold raw pointers that are (re)written right before each call and only
/// dereferenced by the kernel during it; between calls they may dangle and are never read.
struct MsgBatch {
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_in]>,
}

impl MsgBatch {
    fn new(burst: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs for which all-zero bytes
        // (null pointers, zero lengths) are valid values.
        let zeroed = || unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        Self {
            hdrs: (0..burst).map(|_| zeroed()).collect(),
            iovs: (0..burst)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            addrs: (0..burst)
                .map(|_| to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
                .collect(),
        }
    }

    /// Points message `i` at `len` bytes at `buf` and at address slot `i`.
    fn prepare(&mut self, i: usize, buf: *mut u8, len: usize) {
        self.iovs[i] = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        let hdr = &mut self.hdrs[i];
        hdr.msg_len = 0;
        hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
        hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdr.msg_hdr.msg_iov = &mut self.iovs[i];
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = std::ptr::null_mut();
        hdr.msg_hdr.msg_controllen = 0;
        hdr.msg_hdr.msg_flags = 0;
    }

    /// Receives up to `n` datagrams into the buffers prepared for `0..n`; `Ok(0)` when none is
    /// waiting.
    fn recv(&mut self, fd: RawFd, n: usize) -> Result<usize, PortError> {
        loop {
            // SAFETY: messages `0..n` were prepared by `prepare` with pointers to live buffers
            // (of the given lengths) and to our own address/iovec slots, all of which stay put
            // for the duration of this call; `n <= hdrs.len()` (callers pass at most burst).
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    // MSG_TRUNC: a datagram larger than its buffer reports its real length
                    // (and MSG_TRUNC in msg_flags) so it can be dropped instead of delivered cut.
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            match errno(&e) {
                libc::EINTR => continue,
                // EAGAIN: nothing queued. ECONNREFUSED: an ICMP error queued by an earlier
                // send; it carries no datagram and the next call proceeds normally.
                libc::EAGAIN | libc::ECONNREFUSED => return Ok(0),
                _ => return Err(PortError::Io(e)),
            }
        }
    }

    /// Length of received message `i` if it fits in MAX_PAYLOAD, else `None` (truncated).
    fn received_len(&self, i: usize) -> Option<usize> {
        let hdr = &self.hdrs[i];
        let len = hdr.msg_len as usize;
        if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_PAYLOAD {
            None
        } else {
            Some(len)
        }
    }

    fn peer(&self, i: usize) -> Option<SocketAddrV4> {
        from_sockaddr(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// Sends the prepared messages `from..to`, in order; returns how many of them went out
    /// (counting from `from`) and why it stopped.
    fn send(&mut self, fd: RawFd, from: usize, to: usize) -> Result<(usize, SendStop), PortError> {
        let mut next = from;
        while next < to {
            // SAFETY: messages `next..to` were prepared with pointers to live buffers and to
            // our own address/iovec slots, unchanged during the call; the kernel only reads
            // them. `to <= hdrs.len()`, so the count stays inside the array.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[next..].as_mut_ptr(),
                    (to - next) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                next += rc as usize;
                continue;
            }
            if rc == 0 {
                return Ok((next - from, SendStop::WouldBlock));
            }
            let e = io::Error::last_os_error();
            match errno(&e) {
                libc::EINTR => continue,
                libc::EAGAIN | libc::ENOBUFS => return Ok((next - from, SendStop::WouldBlock)),
                code if is_fatal_socket_error(code) => return Err(PortError::Io(e)),
                // Anything else concerns message `next` alone (unreachable destination, port
                // 0, a firewall's EPERM): the caller drops it and carries on with the next.
                _ => {
                    tracing::debug!(error = %e, "socket port: datagram not sent");
                    return Ok((next - from, SendStop::Rejected));
                }
            }
        }
        Ok((next - from, SendStop::Done))
    }
}

/// Why [`MsgBatch::send`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum SendStop {
    Done,
    /// The socket's send buffer is full: try again later.
    WouldBlock,
    /// The message right after the sent ones was refused; the rest were not tried.
    Rejected,
}

/// The reflector: its own socket, buffers, and message arrays.
struct Reflector {
    socket: UdpSocket,
    port: u16,
    rx: MsgBatch,
    tx: MsgBatch,
    bufs: Box<[[u8; MAX_PAYLOAD]]>,
}

/// The `socket` backend. See the module docs.
pub struct SocketPort {
    listen: UdpSocket,
    listen_addr: SocketAddrV4,
    reflector: Option<Reflector>,
    poll: PollMode,
    burst: usize,
    rx: MsgBatch,
    tx: MsgBatch,
    eventfd: Arc<OwnedFd>,
    stats: PortStats,
}

// SAFETY: the only non-Send fields are the raw pointers inside the `MsgBatch` arrays. They
// point into heap memory owned by this `SocketPort` (its own iovec/address/buffer boxes, which
// move with it) or into a caller's slice during a single call, and they are rewritten before
// every use. Nothing else holds them, so moving the port to another thread is sound.
unsafe impl Send for SocketPort {}

impl SocketPort {
    pub fn bind(config: &SocketPortConfig) -> Result<SocketPort, PortError> {
        check_config("socket", config.listen, config.reflector_port, config.burst)?;
        let listen = bind_udp("socket", config.listen, true)?;
        let listen_addr = local_v4(&listen)?;
        let reflector = match config.reflector_port {
            Some(port) => {
                let socket =
                    bind_udp("socket", SocketAddrV4::new(*config.listen.ip(), port), true)?;
                let port = local_v4(&socket)?.port();
                Some(Reflector {
                    socket,
                    port,
                    rx: MsgBatch::new(config.burst),
                    tx: MsgBatch::new(config.burst),
                    bufs: vec![[0u8; MAX_PAYLOAD]; config.burst].into_boxed_slice(),
                })
            }
            None => None,
        };
        Ok(SocketPort {
            listen,
            listen_addr,
            reflector,
            poll: config.poll,
            burst: config.burst,
            rx: MsgBatch::new(config.burst),
            tx: MsgBatch::new(config.burst),
            eventfd: new_eventfd()?,
            stats: PortStats::default(),
        })
    }

    /// The bound fast-path address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.listen_addr
    }

    /// The bound reflector address, if there is a reflector.
    pub fn reflector_addr(&self) -> Option<SocketAddrV4> {
        self.reflector
            .as_ref()
            .map(|r| SocketAddrV4::new(*self.listen_addr.ip(), r.port))
    }

    /// Bounces one burst of reflector datagrams back to their senders.
    fn reflect(&mut self) -> Result<(), PortError> {
        let Some(r) = self.reflector.as_mut() else {
            return Ok(());
        };
        for (i, buf) in r.bufs.iter_mut().enumerate() {
            r.rx.prepare(i, buf.as_mut_ptr(), MAX_PAYLOAD);
        }
        let n = r.rx.recv(r.socket.as_raw_fd(), self.burst)?;
        let mut queued = 0;
        for i in 0..n {
            let (Some(len), Some(peer)) = (r.rx.received_len(i), r.rx.peer(i)) else {
                self.stats.rx_dropped += 1;
                continue;
            };
            if !crate::port::reflectable(peer, r.port) {
                self.stats.rx_dropped += 1;
                continue;
            }
            r.tx.prepare(queued, r.bufs[i].as_mut_ptr(), len);
            // The reply goes to where the probe came from: copy the sender's address.
            r.tx.addrs[queued] = r.rx.addrs[i];
            queued += 1;
        }
        let fd = r.socket.as_raw_fd();
        let mut next = 0;
        while next < queued {
            let (sent, stop) = r.tx.send(fd, next, queued)?;
            self.stats.reflected += sent as u64;
            next += sent;
            match stop {
                SendStop::Done => {}
                SendStop::WouldBlock => {
                    // Probes are best effort: drop what does not fit rather than stall.
                    self.stats.tx_dropped += (queued - next) as u64;
                    break;
                }
                SendStop::Rejected => {
                    self.stats.tx_dropped += 1;
                    next += 1;
                }
            }
        }
        Ok(())
    }
}

impl DatagramPort for SocketPort {
    fn backend(&self) -> &'static str {
        "socket"
    }

    fn local_addr(&self) -> SocketAddrV4 {
        SocketPort::local_addr(self)
    }

    fn recv_burst(&mut self, out: &mut [Datagram]) -> Result<usize, PortError> {
        self.reflect()?;
        let want = out.len().min(self.burst);
        if want == 0 {
            return Ok(0);
        }
        for (i, dg) in out[..want].iter_mut().enumerate() {
            self.rx.prepare(i, dg.data.as_mut_ptr(), MAX_PAYLOAD);
        }
        let n = self.rx.recv(self.listen.as_raw_fd(), want)?;
        // Datagrams were received in place; dropped ones leave gaps that later ones move into
        // (a copy only on the rare drop path).
        let mut kept = 0;
        for i in 0..n {
            let (Some(len), Some(peer)) = (self.rx.received_len(i), self.rx.peer(i)) else {
                self.stats.rx_dropped += 1;
                continue;
            };
            if kept != i {
                let (front, back) = out.split_at_mut(i);
                front[kept].data[..len].copy_from_slice(&back[0].data[..len]);
            }
            let dg = &mut out[kept];
            dg.peer = peer;
            dg.local_port = self.listen_addr.port();
            // `len <= MAX_PAYLOAD` (checked above), which fits in u16.
            dg.len = len as u16;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            kept += 1;
        }
        Ok(kept)
    }

    fn send_burst(&mut self, datagrams: &[Datagram]) -> Result<usize, PortError> {
        let listen = (self.listen_addr.port(), self.listen.as_raw_fd());
        let reflector = self
            .reflector
            .as_ref()
            .map(|r| (r.port, r.socket.as_raw_fd()));
        // Which socket a datagram leaves from; `None`: it cannot be sent at all.
        let source = |dg: &Datagram| -> Option<RawFd> {
            if usize::from(dg.len) > MAX_PAYLOAD {
                return None;
            }
            // Port 0 (a datagram built from `Datagram::empty()`) means the fast-path port.
            if dg.local_port == listen.0 || dg.local_port == 0 {
                Some(listen.1)
            } else {
                reflector.filter(|r| r.0 == dg.local_port).map(|r| r.1)
            }
        };
        let mut done = 0;
        while done < datagrams.len() {
            let Some(fd) = source(&datagrams[done]) else {
                // Unsendable (bad length, not one of our ports): retrying cannot help, so it
                // counts as handled and dropped.
                tracing::debug!(
                    local_port = datagrams[done].local_port,
                    len = datagrams[done].len,
                    "socket port: unsendable datagram dropped"
                );
                self.stats.tx_dropped += 1;
                done += 1;
                continue;
            };
            // One sendmmsg per run of datagrams leaving from the same socket.
            let mut n = 0;
            while n < self.burst
                && done + n < datagrams.len()
                && source(&datagrams[done + n]) == Some(fd)
            {
                let dg = &datagrams[done + n];
                // The kernel only reads through this pointer (sendmmsg); the *mut is what
                // iovec's type demands.
                self.tx
                    .prepare(n, dg.data.as_ptr().cast_mut(), usize::from(dg.len));
                self.tx.addrs[n] = to_sockaddr(dg.peer);
                n += 1;
            }
            let (sent, stop) = self.tx.send(fd, 0, n)?;
            for dg in &datagrams[done..done + sent] {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += u64::from(dg.len);
            }
            done += sent;
            match stop {
                SendStop::Done => {}
                SendStop::WouldBlock => break,
                SendStop::Rejected => {
                    self.stats.tx_dropped += 1;
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        if self.poll == PollMode::BusyPoll {
            std::hint::spin_loop();
            return Ok(());
        }
        let event = self.eventfd.as_raw_fd();
        let pollfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            pollfd(event),
            pollfd(self.listen.as_raw_fd()),
            // An fd of -1 is ignored by poll: the slot for an absent reflector.
            pollfd(self.reflector.as_ref().map_or(-1, |r| r.socket.as_raw_fd())),
        ];
        let ts = timespec_from(timeout);
        // SAFETY: `fds` is a live array of pollfd whose length we pass; `ts` is a live timespec;
        // a null signal mask means "leave the mask alone".
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // A signal is just an early return, which the contract allows.
            if errno(&e) != libc::EINTR {
                return Err(PortError::Io(e));
            }
            return Ok(());
        }
        if fds[0].revents & libc::POLLIN != 0 {
            drain_eventfd(event);
        }
        Ok(())
    }

    fn waker(&self) -> PortWaker {
        PortWaker::from_eventfd(Arc::clone(&self.eventfd))
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

fn timespec_from(timeout: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    }
}

/// Test helpers shared by the socket and io_uring backends' tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::{
        net::{SocketAddrV4, UdpSocket},
        time::{Duration, Instant},
    };

    use crate::port::{Datagram, DatagramPort, MAX_PAYLOAD};

    /// Far beyond anything a healthy run needs: only a hang trips it.
    pub const DEADLINE: Duration = Duration::from_secs(20);

    pub fn client() -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        c
    }

    pub fn client_addr(c: &UdpSocket) -> SocketAddrV4 {
        match c.local_addr().expect("client addr") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("unexpected {other}"),
        }
    }

    pub fn payload(i: usize) -> Vec<u8> {
        // Varying lengths (1..=MAX_PAYLOAD) and contents.
        let len = 1 + (i * 37) % MAX_PAYLOAD;
        (0..len)
            .map(|j| (i as u8).wrapping_mul(31) ^ (j as u8))
            .collect()
    }

    /// Polls `recv_burst` until `n` datagrams arrived (or the deadline passed).
    pub fn recv_n(port: &mut dyn DatagramPort, n: usize) -> Vec<Datagram> {
        let mut got = Vec::new();
        let mut burst = vec![Datagram::empty(); 8];
        let start = Instant::now();
        while got.len() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "only {} of {n} datagrams arrived",
                got.len()
            );
            let k = port.recv_burst(&mut burst).expect("recv_burst");
            if k == 0 {
                port.wait(Duration::from_millis(10)).expect("wait");
                std::thread::yield_now();
            }
            got.extend_from_slice(&burst[..k]);
        }
        got
    }

    /// Sends all of `dgs`, retrying the unsent tail.
    pub fn send_all(port: &mut dyn DatagramPort, dgs: &[Datagram]) {
        let mut done = 0;
        let start = Instant::now();
        while done < dgs.len() {
            assert!(start.elapsed() < DEADLINE, "send_burst stalled at {done}");
            done += port.send_burst(&dgs[done..]).expect("send_burst");
            if done < dgs.len() {
                // Give io_uring sends a chance to complete (reaped inside send_burst).
                let mut none: [Datagram; 0] = [];
                port.recv_burst(&mut none).expect("recv_burst");
                std::thread::yield_now();
            }
        }
    }

    /// Lets the port reap send completions until `done(stats)` holds (io_uring counts a send
    /// when its completion is reaped, which may be after the peer already has the datagram).
    pub fn settle(port: &mut dyn DatagramPort, done: impl Fn(&crate::PortStats) -> bool) {
        let start = Instant::now();
        while !done(&port.stats()) {
            assert!(
                start.elapsed() < DEADLINE,
                "counters never settled: {:?}",
                port.stats()
            );
            let mut none: [Datagram; 0] = [];
            port.recv_burst(&mut none).expect("recv_burst");
            std::thread::yield_now();
        }
    }

    /// The common echo test: the client sends `n` datagrams, the port receives them all and
    /// echoes them back, the client receives every one intact.
    pub fn echo_roundtrip(port: &mut dyn DatagramPort, server: SocketAddrV4, n: usize) {
        let c = client();
        let me = client_addr(&c);
        let mut sent = std::collections::BTreeSet::new();
        // Send in windows so the loopback socket buffers never overflow whatever the
        // scheduling: drops here would be the test's fault, not the port's.
        let window = 16;
        let mut received = Vec::new();
        for chunk_start in (0..n).step_by(window) {
            let chunk_end = (chunk_start + window).min(n);
            for i in chunk_start..chunk_end {
                c.send_to(&payload(i), server).expect("client send");
                sent.insert(payload(i));
            }
            let got = recv_n(port, chunk_end - chunk_start);
            for dg in &got {
                assert_eq!(dg.peer, me);
                assert_eq!(dg.local_port, server.port());
            }
            // Echo: same datagram, back to its peer from the port it arrived on.
            send_all(port, &got);
            let mut buf = [0u8; 2048];
            for _ in chunk_start..chunk_end {
                let (len, from) = c.recv_from(&mut buf).expect("echo reply");
                assert_eq!(from, std::net::SocketAddr::V4(server));
                received.push(buf[..len].to_vec());
            }
        }
        let received: std::collections::BTreeSet<_> = received.into_iter().collect();
        assert_eq!(received, sent, "echoed payloads differ from those sent");
        settle(port, |s| s.tx_packets >= n as u64);
        let stats = port.stats();
        assert_eq!(stats.rx_packets, n as u64);
        assert_eq!(stats.tx_packets, n as u64);
        assert_eq!(stats.rx_dropped, 0);
        assert_eq!(stats.tx_dropped, 0);
        let bytes: u64 = (0..n).map(|i| payload(i).len() as u64).sum();
        assert_eq!(stats.rx_bytes, bytes);
        assert_eq!(stats.tx_bytes, bytes);
    }

    /// Reflector: probes come back unchanged from the reflector port and never surface in
    /// `recv_burst`.
    pub fn reflector_roundtrip(
        port: &mut dyn DatagramPort,
        reflector: SocketAddrV4,
        server: SocketAddrV4,
    ) {
        let c = client();
        let probes = 20;
        for i in 0..probes {
            c.send_to(&payload(i * 7), reflector).expect("probe send");
        }
        // One datagram to the fast path too, to show both are served side by side.
        c.send_to(b"fast", server).expect("send");
        let got = recv_n(port, 1);
        assert_eq!(got[0].payload(), b"fast");
        let mut buf = [0u8; 2048];
        let mut echoed = Vec::new();
        let start = Instant::now();
        while echoed.len() < probes {
            assert!(start.elapsed() < DEADLINE, "reflections missing");
            // The reflector is serviced inside recv_burst.
            let mut burst = vec![Datagram::empty(); 4];
            assert_eq!(
                port.recv_burst(&mut burst).expect("recv"),
                0,
                "probe surfaced"
            );
            c.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            if let Ok((len, from)) = c.recv_from(&mut buf) {
                assert_eq!(from, std::net::SocketAddr::V4(reflector));
                echoed.push(buf[..len].to_vec());
            }
        }
        let mut want: Vec<_> = (0..probes).map(|i| payload(i * 7)).collect();
        want.sort();
        echoed.sort();
        assert_eq!(echoed, want);
        settle(port, |s| s.reflected >= probes as u64);
        let stats = port.stats();
        assert_eq!(stats.reflected, probes as u64);
        assert_eq!(stats.rx_packets, 1);
    }

    /// A datagram larger than MAX_PAYLOAD is dropped and counted; the one after it arrives.
    pub fn oversized_dropped(port: &mut dyn DatagramPort, server: SocketAddrV4) {
        let c = client();
        c.send_to(&[0xAB; 2000], server).expect("send big");
        c.send_to(&[0xCD; MAX_PAYLOAD], server).expect("send max");
        c.send_to(b"after", server).expect("send small");
        let got = recv_n(port, 2);
        assert_eq!(got[0].payload(), &[0xCD; MAX_PAYLOAD][..]);
        assert_eq!(got[1].payload(), b"after");
        let stats = port.stats();
        assert_eq!(stats.rx_dropped, 1);
        assert_eq!(stats.rx_packets, 2);
    }

    /// `wait` in blocking mode returns soon after `wake()` from another thread.
    pub fn waker_wakes_blocking_wait(port: &mut dyn DatagramPort) {
        let waker = port.waker();
        let (woke_tx, woke_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            waker.wake();
            // If wait() never returns, the main thread's assert below fires first.
            let _ = woke_rx.recv_timeout(Duration::from_secs(30));
        });
        let start = Instant::now();
        port.wait(Duration::from_secs(60)).expect("wait");
        // Wake happens at ~0.1 s; 60 s is the timeout. Anything well under that proves the
        // waker, not the timeout, ended the wait.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "wait was not woken"
        );
        let _ = woke_tx.send(());
        helper.join().expect("helper");
        // The wake-up was consumed: a short wait now times out normally.
        port.wait(Duration::from_millis(1)).expect("wait");
    }

    /// `wait` in blocking mode returns when a datagram arrives.
    pub fn datagram_wakes_blocking_wait(port: &mut dyn DatagramPort, server: SocketAddrV4) {
        let helper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            client().send_to(b"ping", server).expect("send");
        });
        let start = Instant::now();
        port.wait(Duration::from_secs(60)).expect("wait");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "wait not woken by data"
        );
        helper.join().expect("helper");
        let got = recv_n(port, 1);
        assert_eq!(got[0].payload(), b"ping");
    }
}

#[cfg(test)]
mod tests {
    use super::{testutil::*, *};

    fn port(poll: PollMode, reflector: bool) -> SocketPort {
        let mut config = SocketPortConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.poll = poll;
        config.burst = 8;
        config.reflector_port = reflector.then_some(0);
        SocketPort::bind(&config).expect("bind")
    }

    #[test]
    fn echo_busy_poll() {
        let mut p = port(PollMode::BusyPoll, false);
        let server = p.local_addr();
        assert_ne!(server.port(), 0);
        echo_roundtrip(&mut p, server, 200);
    }

    #[test]
    fn echo_blocking() {
        let mut p = port(PollMode::Blocking, false);
        let server = p.local_addr();
        echo_roundtrip(&mut p, server, 100);
    }

    #[test]
    fn reflector() {
        let mut p = port(PollMode::BusyPoll, true);
        let (server, refl) = (p.local_addr(), p.reflector_addr().expect("reflector"));
        assert_ne!(refl.port(), server.port());
        reflector_roundtrip(&mut p, refl, server);
    }

    #[test]
    fn oversized() {
        let mut p = port(PollMode::BusyPoll, false);
        let server = p.local_addr();
        oversized_dropped(&mut p, server);
    }

    #[test]
    fn waker() {
        let mut p = port(PollMode::Blocking, true);
        waker_wakes_blocking_wait(&mut p);
    }

    #[test]
    fn data_wakes_wait() {
        let mut p = port(PollMode::Blocking, false);
        let server = p.local_addr();
        datagram_wakes_blocking_wait(&mut p, server);
    }

    #[test]
    fn busy_poll_wait_returns_at_once() {
        let mut p = port(PollMode::BusyPoll, false);
        // A 60 s timeout would hang the test if busy-poll mode slept.
        p.wait(Duration::from_secs(60)).expect("wait");
    }

    #[test]
    fn unsendable_datagrams_are_dropped_and_counted() {
        let mut p = port(PollMode::BusyPoll, false);
        let c = client();
        let mut good = Datagram::empty();
        good.set_payload(b"ok");
        good.peer = client_addr(&c);
        let mut wrong_port = good.clone();
        wrong_port.local_port = 1; // not one of ours
        let mut bad_len = good.clone();
        bad_len.len = 2000; // corrupted length must not panic
        let mut to_port_zero = good.clone();
        to_port_zero.peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let n = p
            .send_burst(&[wrong_port, bad_len, to_port_zero, good])
            .expect("send");
        assert_eq!(n, 4);
        let mut buf = [0u8; 16];
        let (len, _) = c.recv_from(&mut buf).expect("good one arrives");
        assert_eq!(&buf[..len], b"ok");
        let stats = p.stats();
        assert_eq!(stats.tx_packets, 1);
        assert_eq!(stats.tx_dropped, 3);
    }

    #[test]
    fn config_errors() {
        let mut config = SocketPortConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.burst = 0;
        let err = SocketPort::bind(&config).err().expect("burst 0");
        assert!(
            err.to_string().contains("burst must be between 1 and 1024"),
            "{err}"
        );
        let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let taken = local_v4(&taken).expect("v4");
        let err = SocketPort::bind(&SocketPortConfig::new(taken))
            .err()
            .expect("address in use");
        assert!(
            err.to_string().contains(&format!("binding UDP {taken}")),
            "{err}"
        );
        let mut config = SocketPortConfig::new(taken);
        config.reflector_port = Some(taken.port());
        let err = SocketPort::bind(&config).err().expect("same port");
        assert!(err.to_string().contains("is the listen port"), "{err}");
    }

    #[test]
    fn config_parses_from_toml() {
        let config: SocketPortConfig =
            toml::from_str("listen = \"10.0.0.1:9000\"\npoll = \"blocking\"\n").expect("parse");
        assert_eq!(config.listen, "10.0.0.1:9000".parse().expect("addr"));
        assert_eq!(config.poll, PollMode::Blocking);
        assert_eq!(config.burst, 32);
        assert_eq!(config.reflector_port, None);
    }
}
