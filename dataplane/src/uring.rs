//! The `io-uring` backend: the same UDP sockets as the `socket` backend, driven through one
//! io_uring instead of `recvmmsg`/`sendmmsg` calls.
//!
//! A fixed number of `RecvMsg` requests is always in flight on the listen socket (and on the
//! reflector socket), each with its own preallocated buffer, `msghdr`, `iovec` and address slot.
//! `recv_burst` submits pending requests, walks the completion queue without blocking, copies
//! completed datagrams out and re-arms their slots. `send_burst` copies each datagram into a
//! free send slot and queues a `SendMsg`; the number of sends in flight is bounded by the slot
//! count, and when every slot is busy the caller gets back the count queued so far.
//!
//! Waiting ([`PollMode::Blocking`]) is `io_uring_enter` for one completion with a timeout
//! (`IORING_FEAT_EXT_ARG`, Linux 5.11+); the [`PortWaker`]'s eventfd has a `PollAdd` armed on
//! it, so a wake-up is just another completion. [`UringPortConfig::sqpoll`] turns on kernel-side
//! submission polling (ENVIRONMENT.md: loopback echo p50 12 us with SQPOLL against 20-24 us when
//! waiting on completions), at the cost of a kernel thread spinning on a core.
//!
//! # Buffer lifetime
//!
//! The kernel holds pointers into the slot arrays while requests are in flight. The arrays are
//! `Box<[..]>`s allocated once in [`UringPort::bind`] and never resized or replaced, so moving
//! the port moves only the box pointers, not the slots. `Drop` cancels every request and waits
//! for all of their completions before the slots are freed; if the kernel does not confirm in
//! time, the slots are leaked rather than freed under it.

use std::{
    collections::VecDeque,
    io,
    net::{SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use io_uring::{IoUring, opcode, squeue, types};

use crate::{
    port::{Datagram, DatagramPort, MAX_PAYLOAD, PollMode, PortError, PortStats, PortWaker},
    socket::{
        SocketPortConfig, bind_udp, check_config, drain_eventfd, from_sockaddr, local_v4,
        new_eventfd, to_sockaddr,
    },
};

/// Configuration of the `io-uring` backend: the socket backend's settings plus SQPOLL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringPortConfig {
    pub socket: SocketPortConfig,
    /// Kernel-side submission polling. If the kernel refuses it, the port falls back to normal
    /// submission, logs a warning, and [`UringPort::sqpoll_active`] says so.
    pub sqpoll: bool,
}

impl UringPortConfig {
    pub fn new(socket: SocketPortConfig) -> Self {
        Self {
            socket,
            sqpoll: false,
        }
    }
}

/// How long the SQPOLL kernel thread keeps spinning after the last submission before it
/// sleeps (and the next submit has to wake it with a syscall). Long enough to span the gaps
/// between bursts under load, short enough not to burn a core on an idle devnet.
const SQPOLL_IDLE_MS: u32 = 100;

/// How long `Drop` waits for cancelled requests to complete before leaking their buffers.
const DROP_DRAIN: Duration = Duration::from_secs(2);

/// Completions copied out of the ring per batch while reaping.
const REAP_BATCH: usize = 64;

// `user_data` = kind << 32 | slot index.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;

fn user_data(kind: u64, index: usize) -> u64 {
    (kind << 32) | index as u64
}

/// One receive request's memory: the kernel writes `buf`, `addr` and parts of `msg` while the
/// request is in flight.
struct RecvSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in,
    /// The completion's result (bytes received or -errno), valid once completed.
    result: i32,
    buf: [u8; MAX_PAYLOAD],
}

/// One send request's memory; the kernel reads it while the request is in flight.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in,
    len: u16,
    /// A reflector reply (counted in `reflected`, not `tx_packets`).
    reflect: bool,
    buf: [u8; MAX_PAYLOAD],
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct; all-zero (null pointers, zero lengths) is valid.
    unsafe { std::mem::zeroed() }
}

/// Points `msg` at one iovec and one IPv4 address, both inside the same slot.
fn point_msghdr(msg: &mut libc::msghdr, iov: &mut libc::iovec, addr: &mut libc::sockaddr_in) {
    *msg = zeroed_msghdr();
    msg.msg_name = (addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
}

/// The `io-uring` backend. See the module docs.
pub struct UringPort {
    ring: IoUring,
    listen: UdpSocket,
    listen_addr: SocketAddrV4,
    reflector: Option<(UdpSocket, u16)>,
    poll: PollMode,
    sqpoll_active: bool,
    /// Receive slots: `0..listen_slots` on the listen socket, the rest on the reflector.
    recv: Box<[RecvSlot]>,
    listen_slots: usize,
    /// Listen slots whose datagram completed but was not yet handed out, oldest first. At most
    /// `listen_slots` entries (capacity reserved in `bind`, so pushing never allocates).
    ready: VecDeque<usize>,
    send: Box<[SendSlot]>,
    /// Indices of idle send slots (capacity reserved in `bind`).
    free_sends: Vec<usize>,
    eventfd: Arc<OwnedFd>,
    wake_armed: bool,
    /// Requests the kernel may still touch our memory for (recv, send, wake poll).
    in_flight: usize,
    shutting_down: bool,
    /// The first fatal error seen while reaping, reported once the whole batch is processed.
    error: Option<PortError>,
    reaped: Box<[(u64, i32)]>,
    stats: PortStats,
}

// SAFETY: the raw pointers inside the slot `msghdr`s point into heap memory owned by this port
// (its own slot boxes), which moves with it; the kernel side is keyed by the ring fd, not by
// thread. `IoUring` itself is Send. Nothing else holds the pointers, so handing the whole port
// to another thread is sound.
unsafe impl Send for UringPort {}

impl UringPort {
    pub fn bind(config: &UringPortConfig) -> Result<UringPort, PortError> {
        let sc = &config.socket;
        check_config("io-uring", sc.listen, sc.reflector_port, sc.burst)?;
        // Twice the burst in flight on the fast path, so a full burst can be handed out while
        // the next one is already being received; the reflector serves probes, one burst is
        // plenty. Sends: two bursts, so one can complete while the next is queued.
        let listen_slots = 2 * sc.burst;
        let reflector_slots = if sc.reflector_port.is_some() {
            sc.burst
        } else {
            0
        };
        let send_slots = 2 * sc.burst;
        // Between two submits we push at most: every receive re-arm, every send, the wake-up
        // poll and a cancel. Sizing the SQ for that means a push never finds it full.
        let entries = (listen_slots + reflector_slots + send_slots + 2)
            .next_power_of_two()
            .max(8);
        let entries = u32::try_from(entries)
            .map_err(|_| PortError::Config(format!("io-uring port: {entries} ring entries")))?;

        let (ring, sqpoll_active) = build_ring(entries, config.sqpoll)?;
        if sc.poll == PollMode::Blocking && !ring.params().is_feature_ext_arg() {
            return Err(PortError::Config(
                "io-uring port: poll = \"blocking\" needs IORING_FEAT_EXT_ARG (Linux 5.11+); use \
                 poll = \"busy-poll\" or backend = \"socket\""
                    .into(),
            ));
        }

        let listen = bind_udp("io-uring", sc.listen, false)?;
        let listen_addr = local_v4(&listen)?;
        let reflector = match sc.reflector_port {
            Some(port) => {
                let socket = bind_udp("io-uring", SocketAddrV4::new(*sc.listen.ip(), port), false)?;
                let port = local_v4(&socket)?.port();
                Some((socket, port))
            }
            None => None,
        };

        let recv = (0..listen_slots + reflector_slots)
            .map(|_| RecvSlot {
                msg: zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: to_sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
                result: 0,
                buf: [0; MAX_PAYLOAD],
            })
            .collect();
        let send = (0..send_slots)
            .map(|_| SendSlot {
                msg: zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: to_sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
                len: 0,
                reflect: false,
                buf: [0; MAX_PAYLOAD],
            })
            .collect();

        let mut port = UringPort {
            ring,
            listen,
            listen_addr,
            reflector,
            poll: sc.poll,
            sqpoll_active,
            recv,
            listen_slots,
            ready: VecDeque::with_capacity(listen_slots),
            send,
            free_sends: (0..send_slots).rev().collect(),
            eventfd: new_eventfd()?,
            wake_armed: false,
            in_flight: 0,
            shutting_down: false,
            error: None,
            reaped: vec![(0, 0); REAP_BATCH].into_boxed_slice(),
            stats: PortStats::default(),
        };
        for i in 0..port.recv.len() {
            port.arm_recv(i)?;
        }
        if port.poll == PollMode::Blocking {
            port.arm_wake()?;
        }
        port.submit()?;
        Ok(port)
    }

    /// The bound fast-path address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.listen_addr
    }

    /// The bound reflector address, if there is a reflector.
    pub fn reflector_addr(&self) -> Option<SocketAddrV4> {
        self.reflector
            .as_ref()
            .map(|(_, port)| SocketAddrV4::new(*self.listen_addr.ip(), *port))
    }

    /// Whether SQPOLL is in use (it was asked for and the kernel accepted it).
    pub fn sqpoll_active(&self) -> bool {
        self.sqpoll_active
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), PortError> {
        for attempt in 0..2 {
            // SAFETY: every entry we build points only into our slot boxes (or at nothing),
            // which stay allocated until the request completes (see the module docs: Drop
            // waits for completions or leaks the slots).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            if attempt == 0 {
                // Cannot happen with the SQ sized in `bind`, but a full SQ is cured by
                // submitting it.
                self.submit()?;
            }
        }
        Err(PortError::Io(io::Error::other(
            "io-uring port: submission queue still full after submitting",
        )))
    }

    fn submit(&mut self) -> Result<(), PortError> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // EBUSY: completions are backed up (we reap them next); EAGAIN: the kernel is
            // short of memory for requests right now; EINTR: a signal. All pass; retry later.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(PortError::Io(io::Error::new(
                e.kind(),
                format!("io-uring port: submitting: {e}"),
            ))),
        }
    }

    fn arm_recv(&mut self, i: usize) -> Result<(), PortError> {
        let fd = if i < self.listen_slots {
            self.listen.as_raw_fd()
        } else {
            match &self.reflector {
                Some((socket, _)) => socket.as_raw_fd(),
                // No reflector means no reflector slots exist; nothing to arm.
                None => return Ok(()),
            }
        };
        let slot = &mut self.recv[i];
        slot.iov = libc::iovec {
            iov_base: slot.buf.as_mut_ptr().cast(),
            iov_len: MAX_PAYLOAD,
        };
        point_msghdr(&mut slot.msg, &mut slot.iov, &mut slot.addr);
        let entry = opcode::RecvMsg::new(types::Fd(fd), &mut slot.msg)
            // MSG_TRUNC: an oversized datagram reports its real length, so it is recognised
            // and dropped rather than delivered cut short.
            .flags(libc::MSG_TRUNC as u32)
            .build()
            .user_data(user_data(KIND_RECV, i));
        self.push(&entry)?;
        self.in_flight += 1;
        Ok(())
    }

    fn arm_wake(&mut self) -> Result<(), PortError> {
        let entry = opcode::PollAdd::new(types::Fd(self.eventfd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(KIND_WAKE, 0));
        self.push(&entry)?;
        self.in_flight += 1;
        self.wake_armed = true;
        Ok(())
    }

    /// Queues `payload` to `peer` from socket `fd` in a free send slot; `false` if none is
    /// free.
    fn queue_send(
        &mut self,
        fd: RawFd,
        peer: libc::sockaddr_in,
        payload_from: SendSource,
        reflect: bool,
    ) -> Result<bool, PortError> {
        let Some(i) = self.free_sends.pop() else {
            return Ok(false);
        };
        let (len, slot) = match payload_from {
            SendSource::Bytes(bytes) => {
                let slot = &mut self.send[i];
                slot.buf[..bytes.len()].copy_from_slice(bytes);
                (bytes.len(), slot)
            }
            SendSource::RecvSlot(r, len) => {
                let (recv, send) = (&self.recv[r], &mut self.send[i]);
                send.buf[..len].copy_from_slice(&recv.buf[..len]);
                (len, send)
            }
        };
        slot.addr = peer;
        slot.len = len as u16;
        slot.reflect = reflect;
        slot.iov = libc::iovec {
            iov_base: slot.buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        point_msghdr(&mut slot.msg, &mut slot.iov, &mut slot.addr);
        let entry = opcode::SendMsg::new(types::Fd(fd), &slot.msg)
            .build()
            .user_data(user_data(KIND_SEND, i));
        if let Err(e) = self.push(&entry) {
            self.free_sends.push(i);
            return Err(e);
        }
        self.in_flight += 1;
        Ok(true)
    }

    /// Processes every completion available now. Never blocks.
    fn reap(&mut self) -> Result<(), PortError> {
        loop {
            let n = {
                let mut cq = self.ring.completion();
                let mut n = 0;
                for cqe in &mut cq {
                    self.reaped[n] = (cqe.user_data(), cqe.result());
                    n += 1;
                    if n == self.reaped.len() {
                        break;
                    }
                }
                n
            };
            for k in 0..n {
                let (data, result) = self.reaped[k];
                // Keep going on error: the rest of the batch is already off the ring and must
                // be accounted for (slots freed, datagrams queued).
                if let Err(e) = self.complete(data, result) {
                    self.error.get_or_insert(e);
                }
            }
            if n < self.reaped.len() {
                break;
            }
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn complete(&mut self, data: u64, result: i32) -> Result<(), PortError> {
        let index = (data & u64::from(u32::MAX)) as usize;
        match data >> 32 {
            KIND_RECV if index < self.recv.len() => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.recv[index].result = result;
                if self.shutting_down {
                    return Ok(());
                }
                if result < 0 {
                    self.recv_failed(-result);
                    return self.arm_recv(index);
                }
                if index < self.listen_slots {
                    // Handed out (and re-armed) by the next recv_burst.
                    self.ready.push_back(index);
                    Ok(())
                } else {
                    self.reflect(index)?;
                    self.arm_recv(index)
                }
            }
            KIND_SEND if index < self.send.len() => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.free_sends.push(index);
                let slot = &self.send[index];
                if result < 0 {
                    self.stats.tx_dropped += 1;
                    tracing::debug!(
                        error = %io::Error::from_raw_os_error(-result),
                        "io-uring port: datagram not sent"
                    );
                } else if slot.reflect {
                    self.stats.reflected += 1;
                } else {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += u64::from(slot.len);
                }
                Ok(())
            }
            KIND_WAKE => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.wake_armed = false;
                drain_eventfd(self.eventfd.as_raw_fd());
                if self.poll == PollMode::Blocking && !self.shutting_down {
                    self.arm_wake()?;
                }
                Ok(())
            }
            KIND_CANCEL => Ok(()),
            _ => {
                // Only our own user_data values exist; anything else is a bug worth hearing
                // about but not worth crashing the net tile for.
                tracing::error!(user_data = data, "io-uring port: unknown completion");
                Ok(())
            }
        }
    }

    /// A receive completed with `-errno`.
    fn recv_failed(&mut self, code: i32) {
        match code {
            // Transient: interrupted, nothing there after all, an ICMP error from an earlier
            // send, short of memory. The slot is simply re-armed.
            libc::EINTR | libc::EAGAIN | libc::ECONNREFUSED | libc::ENOBUFS | libc::ENOMEM => {}
            _ => {
                let e = io::Error::from_raw_os_error(code);
                tracing::warn!(error = %e, "io-uring port: receive failed");
                if matches!(
                    code,
                    libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL
                ) {
                    self.error.get_or_insert(PortError::Io(e));
                }
            }
        }
    }

    /// Length and sender of completed receive slot `i`, or `None` (counted) if the datagram
    /// must be dropped.
    fn received(&mut self, i: usize) -> Option<(usize, SocketAddrV4)> {
        let slot = &self.recv[i];
        let len = usize::try_from(slot.result).ok()?;
        let truncated = len > MAX_PAYLOAD || slot.msg.msg_flags & libc::MSG_TRUNC != 0;
        match from_sockaddr(&slot.addr, slot.msg.msg_namelen) {
            Some(peer) if !truncated => Some((len, peer)),
            _ => {
                self.stats.rx_dropped += 1;
                None
            }
        }
    }

    /// Sends the datagram in reflector slot `i` back to its sender.
    fn reflect(&mut self, i: usize) -> Result<(), PortError> {
        let Some((len, peer)) = self.received(i) else {
            return Ok(());
        };
        let Some((socket, port)) = &self.reflector else {
            return Ok(());
        };
        if !crate::port::reflectable(peer, *port) {
            self.stats.rx_dropped += 1;
            return Ok(());
        }
        let fd = socket.as_raw_fd();
        let peer = self.recv[i].addr;
        if !self.queue_send(fd, peer, SendSource::RecvSlot(i, len), true)? {
            // Probes are best effort: with every send slot busy, drop rather than stall.
            self.stats.tx_dropped += 1;
        }
        Ok(())
    }

    /// Cancels every request and waits for their completions; `true` when none is left.
    fn cancel_all(&mut self) -> bool {
        self.shutting_down = true;
        if self.in_flight == 0 {
            return true;
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(KIND_CANCEL, 0));
        if self.push(&cancel).is_err() {
            return false;
        }
        let start = Instant::now();
        while self.in_flight > 0 && start.elapsed() < DROP_DRAIN {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args)
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                )
            {
                return false;
            }
            // Errors here are about requests being torn down; only the count matters now.
            let _ = self.reap();
        }
        self.in_flight == 0
    }
}

/// Where a queued send's payload comes from.
enum SendSource<'a> {
    Bytes(&'a [u8]),
    /// `len` bytes of a receive slot (a reflected probe).
    RecvSlot(usize, usize),
}

fn build_ring(entries: u32, sqpoll: bool) -> Result<(IoUring, bool), PortError> {
    let setup_error = |e: io::Error| {
        PortError::Io(io::Error::new(
            e.kind(),
            format!(
                "io-uring port: io_uring_setup failed: {e} (io_uring may be disabled by the \
                 kernel.io_uring_disabled sysctl or a seccomp profile; backend = \"socket\" \
                 works without it)"
            ),
        ))
    };
    if sqpoll {
        match IoUring::builder()
            .setup_sqpoll(SQPOLL_IDLE_MS)
            .build(entries)
        {
            Ok(ring) => return Ok((ring, true)),
            Err(e) => tracing::warn!(
                error = %e,
                "io-uring port: SQPOLL refused by the kernel (needs Linux 5.11+ or \
                 CAP_SYS_NICE before that); continuing without it"
            ),
        }
    }
    IoUring::new(entries)
        .map(|ring| (ring, false))
        .map_err(setup_error)
}

impl DatagramPort for UringPort {
    fn backend(&self) -> &'static str {
        "io-uring"
    }

    fn local_addr(&self) -> SocketAddrV4 {
        UringPort::local_addr(self)
    }

    fn recv_burst(&mut self, out: &mut [Datagram]) -> Result<usize, PortError> {
        // Hands the kernel the re-arms and sends queued since the last call, and gives it the
        // chance to post completions; then reaps without waiting.
        self.submit()?;
        self.reap()?;
        let mut n = 0;
        while n < out.len() {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            if let Some((len, peer)) = self.received(i) {
                let dg = &mut out[n];
                dg.data[..len].copy_from_slice(&self.recv[i].buf[..len]);
                // `len <= MAX_PAYLOAD` (checked in `received`), which fits in u16.
                dg.len = len as u16;
                dg.peer = peer;
                dg.local_port = self.listen_addr.port();
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += len as u64;
                n += 1;
            }
            // Submitted with the next call (or `wait`, or `send_burst`): one syscall per burst,
            // and datagrams arriving meanwhile wait in the socket buffer, not dropped.
            self.arm_recv(i)?;
        }
        Ok(n)
    }

    fn send_burst(&mut self, datagrams: &[Datagram]) -> Result<usize, PortError> {
        let listen = (self.listen_addr.port(), self.listen.as_raw_fd());
        let reflector = self
            .reflector
            .as_ref()
            .map(|(socket, port)| (*port, socket.as_raw_fd()));
        let mut done = 0;
        let mut queued_any = false;
        for dg in datagrams {
            let len = usize::from(dg.len);
            // Port 0 (a datagram built from `Datagram::empty()`) means the fast-path port.
            let fd = if dg.local_port == listen.0 || dg.local_port == 0 {
                Some(listen.1)
            } else {
                reflector.filter(|r| r.0 == dg.local_port).map(|r| r.1)
            };
            let Some(fd) = fd.filter(|_| len <= MAX_PAYLOAD) else {
                // Unsendable (bad length, not one of our ports): retrying cannot help, so it
                // counts as handled and dropped.
                tracing::debug!(
                    local_port = dg.local_port,
                    len = dg.len,
                    "io-uring port: unsendable datagram dropped"
                );
                self.stats.tx_dropped += 1;
                done += 1;
                continue;
            };
            if self.free_sends.is_empty() {
                // Every slot is in flight: push what we have and collect finished sends.
                self.submit()?;
                self.reap()?;
            }
            let source = SendSource::Bytes(&dg.data[..len]);
            if !self.queue_send(fd, to_sockaddr(dg.peer), source, false)? {
                break;
            }
            queued_any = true;
            done += 1;
        }
        if queued_any {
            self.submit()?;
        }
        Ok(done)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        if self.poll == PollMode::BusyPoll {
            std::hint::spin_loop();
            return Ok(());
        }
        if !self.ready.is_empty() {
            return Ok(());
        }
        if !self.wake_armed {
            self.arm_wake()?;
        }
        if self.ring.completion().is_empty() {
            let ts = types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                // ETIME: the timeout passed; EINTR: a signal; EBUSY: completions backed up.
                // All are ordinary returns from a wait.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    return Err(PortError::Io(io::Error::new(
                        e.kind(),
                        format!("io-uring port: waiting for completions: {e}"),
                    )));
                }
            }
        } else {
            self.submit()?;
        }
        // Consumes a wake-up (drains the eventfd) so the next wait sleeps again; received
        // datagrams stay queued for recv_burst.
        self.reap()
    }

    fn waker(&self) -> PortWaker {
        PortWaker::from_eventfd(Arc::clone(&self.eventfd))
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

impl Drop for UringPort {
    fn drop(&mut self) {
        if !self.cancel_all() {
            tracing::error!(
                in_flight = self.in_flight,
                "io-uring port: requests still in flight at shutdown; leaking their buffers"
            );
            // The kernel may still write into these; leaking is the only safe choice.
            std::mem::forget(std::mem::take(&mut self.recv));
            std::mem::forget(std::mem::take(&mut self.send));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::testutil::*;

    fn port(poll: PollMode, reflector: bool, sqpoll: bool) -> UringPort {
        let mut socket = SocketPortConfig::new("127.0.0.1:0".parse().expect("addr"));
        socket.poll = poll;
        socket.burst = 8;
        socket.reflector_port = reflector.then_some(0);
        UringPort::bind(&UringPortConfig { socket, sqpoll }).expect("bind")
    }

    #[test]
    fn echo_busy_poll() {
        let mut p = port(PollMode::BusyPoll, false, false);
        let server = p.local_addr();
        echo_roundtrip(&mut p, server, 200);
    }

    #[test]
    fn echo_blocking() {
        let mut p = port(PollMode::Blocking, false, false);
        let server = p.local_addr();
        echo_roundtrip(&mut p, server, 100);
    }

    #[test]
    fn echo_sqpoll() {
        let mut p = port(PollMode::BusyPoll, false, true);
        // Either SQPOLL is on or the port fell back (and says so); both must work.
        let _ = p.sqpoll_active();
        let server = p.local_addr();
        echo_roundtrip(&mut p, server, 50);
    }

    #[test]
    fn reflector() {
        let mut p = port(PollMode::BusyPoll, true, false);
        let (server, refl) = (p.local_addr(), p.reflector_addr().expect("reflector"));
        reflector_roundtrip(&mut p, refl, server);
    }

    #[test]
    fn oversized() {
        let mut p = port(PollMode::BusyPoll, false, false);
        let server = p.local_addr();
        oversized_dropped(&mut p, server);
    }

    #[test]
    fn waker() {
        let mut p = port(PollMode::Blocking, true, false);
        waker_wakes_blocking_wait(&mut p);
    }

    #[test]
    fn data_wakes_wait() {
        let mut p = port(PollMode::Blocking, false, false);
        let server = p.local_addr();
        datagram_wakes_blocking_wait(&mut p, server);
    }

    #[test]
    fn send_slots_bound_in_flight_sends() {
        let mut p = port(PollMode::BusyPoll, false, false);
        let c = client();
        let mut dg = Datagram::empty();
        dg.set_payload(&[7; 100]);
        dg.peer = client_addr(&c);
        // Far more than the 16 send slots: the port must return a partial count or queue them
        // all as earlier sends complete, never grow or fail.
        let burst = vec![dg; 64];
        let n = p.send_burst(&burst).expect("send");
        assert!((1..=64).contains(&n));
        send_all(&mut p, &burst[n..]);
    }

    #[test]
    fn drop_with_requests_in_flight_is_clean() {
        for _ in 0..20 {
            let mut p = port(PollMode::Blocking, true, false);
            // 16 listen + 8 reflector receives and the wake-up poll.
            assert_eq!(p.in_flight, 25);
            // What Drop does: every request is cancelled and its completion seen, so the
            // buffers are freed, not leaked.
            assert!(p.cancel_all());
            assert_eq!(p.in_flight, 0);
        }
    }
}
