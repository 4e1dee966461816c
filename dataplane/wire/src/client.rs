//! A small blocking client for the fast path over a std `UdpSocket`: for dapps, tests and load
//! generators. One client is one connected socket, so it only ever hears from its node.
//!
//! Two ways to use it:
//! - request/response: [`FastPathClient::submit`] and [`FastPathClient::submit_batch`] send one
//!   `SubmitTx` and wait for its replies, dropping replies to earlier requests (stale ones that
//!   arrived after their own timeout);
//! - pipelined, for load generators: [`FastPathClient::send`] returns the request id at once and
//!   [`FastPathClient::recv`] yields replies in arrival order, for the caller to match by
//!   `(request_id, index)`.
//!
//! Do not mix the two on one client while pipelined requests are in flight: `submit` discards
//! their replies as stale.
//!
//! ```no_run
//! use std::time::Duration;
//! use rtchain_wire::client::{FastPathClient, Reply};
//!
//! # fn main() -> Result<(), rtchain_wire::client::ClientError> {
//! # let (raw, raw_a, raw_b) = (vec![0x02u8], vec![0x02u8], vec![0x02u8]);
//! let mut client = FastPathClient::connect("10.0.0.2:8547", Duration::from_millis(500))?;
//! println!("rtt {:?}", client.ping()?);
//! match client.submit(&raw)? {
//!     Reply::Receipt(r) => println!("mini-block {} block {}", r.mini_block, r.block_number),
//!     Reply::Reject(r) if r.code.is_transient() => println!("busy ({}), retry later", r.code),
//!     Reply::Reject(r) => println!("rejected: {} ({})", r.code, r.reason),
//! }
//! let _id = client.send(&[&raw_a, &raw_b])?;
//! while let Some(reply) = client.recv(Duration::from_millis(100))? {
//!     println!("request {} tx {}: {:?}", reply.request_id(), reply.index(), reply);
//! }
//! # Ok(())
//! # }
//! ```

use std::{
    io,
    net::{SocketAddr, ToSocketAddrs, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    INDEX_WHOLE_DATAGRAM, MAX_DATAGRAM, Message, Receipt, RejectCode, WireError, decode,
    encode_ping, encode_submit,
};

/// A `Reject` with its reason copied out of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedReject {
    pub request_id: u64,
    pub index: u16,
    pub tx_hash: [u8; 32],
    pub code: RejectCode,
    /// The node's reason; invalid UTF-8 from the wire is replaced, not an error.
    pub reason: String,
}

/// The node's answer for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Receipt(Receipt),
    Reject(OwnedReject),
}

impl Reply {
    pub fn request_id(&self) -> u64 {
        match self {
            Self::Receipt(r) => r.request_id,
            Self::Reject(r) => r.request_id,
        }
    }

    /// Index of the transaction within its `SubmitTx`; [`INDEX_WHOLE_DATAGRAM`] for a reject of
    /// the whole datagram (only from [`FastPathClient::recv`]; the waiting calls give every
    /// transaction its own copy).
    pub fn index(&self) -> u16 {
        match self {
            Self::Receipt(r) => r.index,
            Self::Reject(r) => r.index,
        }
    }

    fn set_index(&mut self, index: u16) {
        match self {
            Self::Receipt(r) => r.index = index,
            Self::Reject(r) => r.index = index,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("fast-path socket: {0}")]
    Io(#[from] io::Error),
    #[error(
        "node {node} refused the datagram (ICMP port unreachable): is the fast path enabled \
         and listening on that port?"
    )]
    NodeUnreachable { node: SocketAddr },
    #[error("cannot encode the SubmitTx: {0}")]
    Encode(#[from] WireError),
    #[error(
        "{received} of {expected} replies to request {request_id} within {waited:?}: the other \
         transactions' fate is unknown; ask eth_getTransactionReceipt over JSON-RPC before \
         resubmitting"
    )]
    Timeout {
        request_id: u64,
        received: usize,
        expected: usize,
        waited: Duration,
    },
}

/// Counters, monotonic for the life of the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub datagrams_sent: u64,
    /// Receipts and rejects handed to the caller.
    pub replies: u64,
    /// Replies to requests no call was waiting for any more (late, or duplicated by the network).
    pub stale_replies: u64,
    /// Datagrams from the node that did not decode, or that a client never expects.
    pub malformed_replies: u64,
}

/// What the receive loop can hand back.
enum Incoming {
    Reply(Reply),
    Pong { request_id: u64 },
}

pub struct FastPathClient {
    socket: UdpSocket,
    node: SocketAddr,
    timeout: Duration,
    next_request_id: u64,
    /// The read timeout last set on the socket, to skip the syscall when it is unchanged.
    read_timeout: Option<Duration>,
    stats: ClientStats,
    tx_buf: [u8; MAX_DATAGRAM],
    /// One byte more than the largest datagram, so an oversized one is seen as such by `decode`
    /// instead of being silently cut to a plausible length.
    rx_buf: [u8; MAX_DATAGRAM + 1],
}

impl FastPathClient {
    /// Binds an ephemeral port of the node address's family and connects it to `node`, so the
    /// kernel drops datagrams from anyone else. `timeout` bounds every waiting call.
    pub fn connect(node: impl ToSocketAddrs, timeout: Duration) -> Result<Self, ClientError> {
        let node = node.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "node address resolved to nothing",
            )
        })?;
        let bind: SocketAddr = match node {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(node)?;
        Ok(Self::from_connected(socket, node, timeout))
    }

    /// Wraps a socket the caller has already bound and connected to `node` (to pick the local
    /// port or set socket options first).
    pub fn from_connected(socket: UdpSocket, node: SocketAddr, timeout: Duration) -> Self {
        Self {
            socket,
            node,
            timeout,
            next_request_id: initial_request_id(),
            read_timeout: None,
            stats: ClientStats::default(),
            tx_buf: [0; MAX_DATAGRAM],
            rx_buf: [0; MAX_DATAGRAM + 1],
        }
    }

    pub fn node(&self) -> SocketAddr {
        self.node
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Submits one transaction and waits for its receipt or reject.
    pub fn submit(&mut self, raw_tx: &[u8]) -> Result<Reply, ClientError> {
        let mut replies = self.submit_batch(&[raw_tx])?;
        // `submit_batch` returns exactly one reply per transaction.
        replies.pop().ok_or(ClientError::Timeout {
            request_id: 0,
            received: 0,
            expected: 1,
            waited: Duration::ZERO,
        })
    }

    /// Submits `txs` in one datagram and waits for one reply per transaction, returned in the
    /// order of `txs` whatever order they arrived in. On timeout the replies already received
    /// are dropped; use [`Self::send`] and [`Self::recv`] to keep partial results.
    pub fn submit_batch(&mut self, txs: &[&[u8]]) -> Result<Vec<Reply>, ClientError> {
        let request_id = self.send(txs)?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut slots: Vec<Option<Reply>> = vec![None; txs.len()];
        let mut received = 0;
        while received < txs.len() {
            let Some(incoming) = self.recv_until(deadline)? else {
                return Err(ClientError::Timeout {
                    request_id,
                    received,
                    expected: txs.len(),
                    waited: started.elapsed(),
                });
            };
            let reply = match incoming {
                Incoming::Reply(reply) if reply.request_id() == request_id => reply,
                Incoming::Reply(_) | Incoming::Pong { .. } => {
                    self.stats.stale_replies += 1;
                    continue;
                }
            };
            if reply.index() == INDEX_WHOLE_DATAGRAM {
                // The node refused the datagram as a whole: that is every transaction's answer.
                for (index, slot) in slots.iter_mut().enumerate() {
                    if slot.is_none() {
                        let mut copy = reply.clone();
                        copy.set_index(index as u16);
                        *slot = Some(copy);
                        received += 1;
                    }
                }
                continue;
            }
            match slots.get_mut(usize::from(reply.index())) {
                Some(slot @ None) => {
                    *slot = Some(reply);
                    received += 1;
                }
                // A duplicate (the network may duplicate datagrams): the first one stands.
                Some(Some(_)) => self.stats.stale_replies += 1,
                None => self.stats.malformed_replies += 1,
            }
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// Sends `txs` as one `SubmitTx` without waiting; returns its request id, which the replies
    /// from [`Self::recv`] carry.
    pub fn send(&mut self, txs: &[&[u8]]) -> Result<u64, ClientError> {
        let request_id = self.take_request_id();
        let len = encode_submit(&mut self.tx_buf, request_id, txs)?;
        self.send_buf(len)?;
        Ok(request_id)
    }

    /// Waits up to `timeout` for the next receipt or reject, to any request; `None` if none
    /// came. A whole-datagram reject arrives once, with index [`INDEX_WHOLE_DATAGRAM`].
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Reply>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline)? {
                None => return Ok(None),
                Some(Incoming::Reply(reply)) => return Ok(Some(reply)),
                Some(Incoming::Pong { .. }) => self.stats.stale_replies += 1,
            }
        }
    }

    /// Sends a `Ping` and waits for its `Pong`; returns the round-trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let request_id = self.take_request_id();
        let started = Instant::now();
        let len = encode_ping(&mut self.tx_buf, request_id, unix_nanos());
        self.send_buf(len)?;
        let deadline = started + self.timeout;
        loop {
            match self.recv_until(deadline)? {
                None => {
                    return Err(ClientError::Timeout {
                        request_id,
                        received: 0,
                        expected: 1,
                        waited: started.elapsed(),
                    });
                }
                Some(Incoming::Pong { request_id: id }) if id == request_id => {
                    return Ok(started.elapsed());
                }
                Some(_) => self.stats.stale_replies += 1,
            }
        }
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = id.wrapping_add(1);
        id
    }

    fn send_buf(&mut self, len: usize) -> Result<(), ClientError> {
        let buf = &self.tx_buf[..len];
        match self.socket.send(buf) {
            Ok(_) => {
                self.stats.datagrams_sent += 1;
                Ok(())
            }
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// The next datagram from the node that decodes as a reply or a pong, or `None` at the
    /// deadline. Anything else is counted and skipped, so a misbehaving node cannot make a call
    /// wait past its deadline or fail it with garbage.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<Incoming>, ClientError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A zero read timeout means "block forever" to the OS: check the deadline here.
            if remaining.is_zero() {
                return Ok(None);
            }
            if self.read_timeout != Some(remaining) {
                self.socket.set_read_timeout(Some(remaining))?;
                self.read_timeout = Some(remaining);
            }
            let n = match self.socket.recv(&mut self.rx_buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            let incoming = match decode(&self.rx_buf[..n]) {
                Ok(Message::Receipt(r)) => Incoming::Reply(Reply::Receipt(r)),
                Ok(Message::Reject(r)) => Incoming::Reply(Reply::Reject(OwnedReject {
                    request_id: r.request_id,
                    index: r.index,
                    tx_hash: r.tx_hash,
                    code: r.code,
                    reason: r.reason_lossy().into_owned(),
                })),
                Ok(Message::Pong { request_id, .. }) => Incoming::Pong { request_id },
                Ok(Message::SubmitTx { .. } | Message::Ping { .. }) | Err(_) => {
                    self.stats.malformed_replies += 1;
                    continue;
                }
            };
            if let Incoming::Reply(_) = incoming {
                self.stats.replies += 1;
            }
            return Ok(Some(incoming));
        }
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ClientError::NodeUnreachable { node: self.node }
        } else {
            ClientError::Io(e)
        }
    }
}

/// Request ids start at a value unlikely to repeat across runs, so replies still in flight to a
/// previous client that had the same local port are not mistaken for ours.
fn initial_request_id() -> u64 {
    unix_nanos() ^ (u64::from(std::process::id()) << 40)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_TXS_PER_SUBMIT, TxStatus, encode_pong, encode_receipt, encode_reject};
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        thread,
    };

    /// A stand-in node: answers each SubmitTx with a stale reply first, then one reply per
    /// transaction in reverse order (a receipt, or a reject for a tx starting with 0xff), plus a
    /// duplicate; answers pings; ignores txs starting with 0xee (to test timeouts).
    fn fake_node() -> (SocketAddr, Arc<AtomicBool>, thread::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let mut rx = [0u8; MAX_DATAGRAM];
            let mut out = [0u8; MAX_DATAGRAM];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut rx) else {
                    continue;
                };
                match decode(&rx[..n]) {
                    Ok(Message::SubmitTx { request_id, txs }) => {
                        let txs: Vec<&[u8]> = txs.collect();
                        if txs[0][0] == 0xee {
                            continue;
                        }
                        let stale = Receipt {
                            request_id: request_id.wrapping_sub(1000),
                            index: 0,
                            tx_hash: [0; 32],
                            status: TxStatus::Reverted,
                            gas_used: 0,
                            mini_block: 0,
                            block_number: 0,
                            tx_index: 0,
                        };
                        let len = encode_receipt(&mut out, &stale);
                        socket.send_to(&out[..len], from).unwrap();
                        socket.send_to(b"garbage", from).unwrap();
                        for (index, tx) in txs.iter().enumerate().rev() {
                            let index = index as u16;
                            let len = if tx[0] == 0xff {
                                encode_reject(
                                    &mut out,
                                    request_id,
                                    index,
                                    &[0; 32],
                                    RejectCode::Malformed,
                                    "bad rlp",
                                )
                            } else {
                                let receipt = Receipt {
                                    request_id,
                                    index,
                                    tx_hash: [tx[0]; 32],
                                    status: TxStatus::Success,
                                    gas_used: 21_000,
                                    mini_block: 1,
                                    block_number: 1,
                                    tx_index: u32::from(index),
                                };
                                encode_receipt(&mut out, &receipt)
                            };
                            socket.send_to(&out[..len], from).unwrap();
                            if index == 0 {
                                socket.send_to(&out[..len], from).unwrap();
                            }
                        }
                    }
                    Ok(Message::Ping {
                        request_id,
                        timestamp_ns,
                    }) => {
                        let len = encode_pong(&mut out, request_id, timestamp_ns);
                        socket.send_to(&out[..len], from).unwrap();
                    }
                    _ => {}
                }
            }
        });
        (addr, stop, handle)
    }

    #[test]
    fn client_matches_replies_to_requests() {
        let (addr, stop, handle) = fake_node();
        let mut client = FastPathClient::connect(addr, Duration::from_secs(5)).unwrap();

        let Reply::Receipt(r) = client.submit(&[0x02, 0x01]).unwrap() else {
            panic!("expected a receipt");
        };
        assert_eq!((r.index, r.tx_hash, r.gas_used), (0, [0x02; 32], 21_000));

        let txs: [&[u8]; 3] = [&[0x01], &[0xff, 0x00], &[0x03]];
        let replies = client.submit_batch(&txs).unwrap();
        assert_eq!(replies.len(), 3);
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(reply.index(), i as u16);
        }
        assert!(matches!(&replies[0], Reply::Receipt(r) if r.tx_hash == [0x01; 32]));
        assert!(
            matches!(&replies[1], Reply::Reject(r) if r.code == RejectCode::Malformed && r.reason == "bad rlp")
        );
        assert!(matches!(&replies[2], Reply::Receipt(r) if r.tx_index == 2));

        // Pipelined: two requests in flight, replies matched by the caller.
        let a = client.send(&[&[0x0a]]).unwrap();
        let b = client.send(&[&[0x0b], &[0x0c]]).unwrap();
        let mut seen = Vec::new();
        while let Some(reply) = client.recv(Duration::from_millis(300)).unwrap() {
            seen.push((reply.request_id(), reply.index()));
        }
        for want in [(a, 0), (b, 0), (b, 1)] {
            assert!(seen.contains(&want), "{want:?} not in {seen:?}");
        }

        assert!(client.ping().unwrap() < Duration::from_secs(5));

        let stats = client.stats();
        assert!(stats.stale_replies >= 2, "{stats:?}");
        assert!(stats.malformed_replies >= 2, "{stats:?}");

        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }

    #[test]
    fn client_times_out_and_refuses_bad_batches() {
        let (addr, stop, handle) = fake_node();
        let mut client = FastPathClient::connect(addr, Duration::from_millis(100)).unwrap();
        match client.submit(&[0xee]) {
            Err(ClientError::Timeout {
                received: 0,
                expected: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client.submit_batch(&[]),
            Err(ClientError::Encode(WireError::EmptySubmit))
        ));
        let one: &[u8] = &[1];
        assert!(matches!(
            client.send(&vec![one; MAX_TXS_PER_SUBMIT + 1]),
            Err(ClientError::Encode(WireError::TooManyTxs { .. }))
        ));
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }
}
