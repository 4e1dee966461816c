//! Consensus messages between validators over UDP, through the dataplane's `DatagramPort` (any
//! backend): authenticated per datagram, fragmented and reassembled, polled by the thread that
//! runs the engine.
//!
//! Frame (every datagram): magic `RTCC`, version 1, sender index u16, receiver index u16,
//! message id u64, fragment index u16, fragment count u16, a chunk of the message, then a 16-byte
//! tag: keccak256(link key ‖ everything before the tag), truncated. keccak is a sponge, so a
//! keyed prefix MAC has no length extension. The link key of validators a and b is
//! keccak256("rtchain/p2p/v1" ‖ X25519(a, b) ‖ namespace), with both ed25519 keys read as
//! X25519 keys, so no key material beyond the validator keys is configured.
//!
//! Lost datagrams are not retransmitted here: a message missing a fragment is dropped whole, and
//! the engine recovers what matters (it re-sends votes and certificates while a view is stuck and
//! fetches block bodies it holds a certificate for). Replays pass the tag but not the engine:
//! votes and certificates are idempotent and bodies are accepted only when requested.

use std::{
    collections::VecDeque,
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy_primitives::keccak256;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rtchain_dataplane::{Datagram, DatagramPort, MAX_PAYLOAD, PortConfig, PortWaker};

const MAGIC: &[u8; 4] = b"RTCC";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 2 + 2 + 8 + 2 + 2;
const TAG_LEN: usize = 16;
/// Message bytes carried by one datagram.
pub const CHUNK_LEN: usize = MAX_PAYLOAD - HEADER_LEN - TAG_LEN;
/// Largest message accepted: a 4 MiB payload plus its certificates.
pub const MAX_MESSAGE_BYTES: usize = (4 << 20) + (64 << 10);
const MAX_FRAGMENTS: usize = MAX_MESSAGE_BYTES.div_ceil(CHUNK_LEN);
/// Messages being reassembled per peer; the oldest is dropped for a new one beyond this.
const PARTIAL_PER_PEER_MAX: usize = 16;
/// Bytes being reassembled per peer.
const PARTIAL_BYTES_PER_PEER_MAX: usize = 2 * MAX_MESSAGE_BYTES;
/// A message not complete after this long lost a fragment.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a datagram was dropped (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Short,
    Magic,
    Version,
    NotForUs,
    UnknownSender,
    BadTag,
    BadFragment,
}

/// The symmetric key of the link between `me` and `peer`.
pub fn link_key(me: &SigningKey, peer: &VerifyingKey, namespace: &[u8]) -> [u8; 32] {
    let shared = peer.to_montgomery().mul_clamped(me.to_scalar_bytes());
    let mut input = b"rtchain/p2p/v1".to_vec();
    input.extend_from_slice(shared.as_bytes());
    input.extend_from_slice(namespace);
    keccak256(&input).0
}

fn tag(key: &[u8; 32], framed: &[u8]) -> [u8; TAG_LEN] {
    let mut input = Vec::with_capacity(32 + framed.len());
    input.extend_from_slice(key);
    input.extend_from_slice(framed);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&keccak256(&input)[..TAG_LEN]);
    out
}

/// Splits messages into authenticated datagrams and puts them back together.
pub struct Framer {
    me: u16,
    /// Link key per validator index (ours unused).
    keys: Vec<[u8; 32]>,
    next_id: u64,
    partial: Vec<VecDeque<Partial>>,
}

struct Partial {
    id: u64,
    chunks: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    started: Instant,
}

impl Framer {
    pub fn new(me: u16, keys: Vec<[u8; 32]>) -> Self {
        let n = keys.len();
        // Message ids start from the clock so that a restarted sender's ids do not collide with
        // partial messages its peers still hold from before.
        let next_id = crate::chain::now_us();
        Self {
            me,
            keys,
            next_id,
            partial: (0..n).map(|_| VecDeque::new()).collect(),
        }
    }

    /// The datagram payloads carrying `msg` to `to`.
    pub fn frame(&mut self, to: u16, msg: &[u8]) -> Vec<Vec<u8>> {
        let id = self.next_id;
        self.next_id += 1;
        let count = msg.len().div_ceil(CHUNK_LEN).max(1);
        let key = &self.keys[to as usize];
        let mut out = Vec::with_capacity(count);
        for index in 0..count {
            let chunk =
                &msg[(index * CHUNK_LEN).min(msg.len())..((index + 1) * CHUNK_LEN).min(msg.len())];
            let mut d = Vec::with_capacity(HEADER_LEN + chunk.len() + TAG_LEN);
            d.extend_from_slice(MAGIC);
            d.push(VERSION);
            d.extend_from_slice(&self.me.to_be_bytes());
            d.extend_from_slice(&to.to_be_bytes());
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(&(index as u16).to_be_bytes());
            d.extend_from_slice(&(count as u16).to_be_bytes());
            d.extend_from_slice(chunk);
            let t = tag(key, &d);
            d.extend_from_slice(&t);
            out.push(d);
        }
        out
    }

    /// Checks one datagram; returns a whole message once its last fragment arrived.
    pub fn accept(&mut self, d: &[u8], now: Instant) -> Result<Option<(u16, Vec<u8>)>, FrameError> {
        if d.len() < HEADER_LEN + TAG_LEN {
            return Err(FrameError::Short);
        }
        if &d[..4] != MAGIC {
            return Err(FrameError::Magic);
        }
        if d[4] != VERSION {
            return Err(FrameError::Version);
        }
        let from = u16::from_be_bytes([d[5], d[6]]);
        let to = u16::from_be_bytes([d[7], d[8]]);
        if to != self.me {
            return Err(FrameError::NotForUs);
        }
        if from == self.me || from as usize >= self.keys.len() {
            return Err(FrameError::UnknownSender);
        }
        let (framed, got) = d.split_at(d.len() - TAG_LEN);
        if tag(&self.keys[from as usize], framed) != got {
            return Err(FrameError::BadTag);
        }
        let id = u64::from_be_bytes(d[9..17].try_into().expect("8 bytes"));
        let index = u16::from_be_bytes([d[17], d[18]]) as usize;
        let count = u16::from_be_bytes([d[19], d[20]]) as usize;
        let chunk = &framed[HEADER_LEN..];
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(FrameError::BadFragment);
        }
        if count == 1 {
            return Ok(Some((from, chunk.to_vec())));
        }
        let queue = &mut self.partial[from as usize];
        queue.retain(|p| now.duration_since(p.started) < PARTIAL_TIMEOUT);
        let position = match queue.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                // Bounded by what each partial message may grow to, not what it holds yet.
                while queue.len() >= PARTIAL_PER_PEER_MAX
                    || queue
                        .iter()
                        .map(|p| p.chunks.len() * CHUNK_LEN)
                        .sum::<usize>()
                        + count * CHUNK_LEN
                        > PARTIAL_BYTES_PER_PEER_MAX
                {
                    if queue.pop_front().is_none() {
                        break;
                    }
                }
                queue.push_back(Partial {
                    id,
                    chunks: vec![None; count],
                    received: 0,
                    bytes: 0,
                    started: now,
                });
                queue.len() - 1
            }
        };
        let partial = &mut queue[position];
        if partial.chunks.len() != count {
            return Err(FrameError::BadFragment);
        }
        if partial.chunks[index].is_none() {
            partial.bytes += chunk.len();
            partial.received += 1;
            partial.chunks[index] = Some(chunk.to_vec());
        }
        if partial.received < count {
            return Ok(None);
        }
        let partial = queue.remove(position).expect("present");
        let mut msg = Vec::with_capacity(partial.bytes);
        for c in partial.chunks.into_iter().flatten() {
            msg.extend_from_slice(&c);
        }
        Ok(Some((from, msg)))
    }
}

/// Counters of the transport, for logs and `rtchain_nodeStats`, and when each peer was last
/// heard from (for `net_peerCount`).
pub struct TransportStats {
    started: Instant,
    /// Per peer index: milliseconds after `started` of its last authenticated message, plus
    /// one (0: never heard).
    last_heard_ms: Vec<AtomicU64>,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub dropped_bad_tag: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_send_full: AtomicU64,
}

impl TransportStats {
    pub fn new(peers: usize) -> Self {
        Self {
            started: Instant::now(),
            last_heard_ms: (0..peers).map(|_| AtomicU64::new(0)).collect(),
            datagrams_in: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            dropped_bad_tag: AtomicU64::new(0),
            dropped_malformed: AtomicU64::new(0),
            dropped_send_full: AtomicU64::new(0),
        }
    }

    fn heard(&self, peer: u16) {
        if let Some(slot) = self.last_heard_ms.get(peer as usize) {
            let ms = self.started.elapsed().as_millis() as u64 + 1;
            slot.store(ms, Ordering::Relaxed);
        }
    }

    /// Peers an authenticated message came from within `window`: the validators and followers
    /// this node is in touch with (UDP has no connections to count).
    pub fn peers_heard_within(&self, window: Duration) -> usize {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let window = window.as_millis() as u64;
        self.last_heard_ms
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&at| at != 0 && now.saturating_sub(at) <= window)
            .count()
    }
}

/// The consensus port and its framing, owned and polled by the thread that runs the engine:
/// a message goes out in the same step that produced it and a datagram is handled by the thread
/// it woke, with no hand-over between threads (each costs a wake-up, tens of microseconds on a
/// shared host, several per message delay).
pub struct Transport {
    port: Box<dyn DatagramPort>,
    framer: Framer,
    peers: Vec<SocketAddrV4>,
    rx: Vec<Datagram>,
    /// Datagrams the kernel queue had no room for, retried first; bounded.
    pending: VecDeque<Datagram>,
    pub local_addr: SocketAddrV4,
    pub stats: Arc<TransportStats>,
}

/// Datagrams kept for a retry when the send queue is full; beyond this the oldest are dropped
/// (the engine re-sends what matters).
const PENDING_MAX: usize = 1 << 16;

impl Transport {
    pub fn open(
        port_config: &PortConfig,
        framer: Framer,
        peers: Vec<SocketAddrV4>,
    ) -> Result<Self, String> {
        let port = rtchain_dataplane::open_port(port_config)
            .map_err(|e| format!("consensus.listen {}: {e}", port_config.listen))?;
        let peers_len = peers.len();
        Ok(Self {
            local_addr: port.local_addr(),
            port,
            framer,
            peers,
            rx: (0..32).map(|_| Datagram::empty()).collect(),
            pending: VecDeque::new(),
            stats: Arc::new(TransportStats::new(peers_len)),
        })
    }

    /// Wakes [`Transport::wait`] from another thread (a new submission).
    pub fn waker(&self) -> PortWaker {
        self.port.waker()
    }

    /// Frames `msg` for each of `to` and sends what the kernel takes now.
    pub fn send(&mut self, to: &[u16], msg: &[u8]) {
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        let local_port = self.local_addr.port();
        for &peer_index in to {
            let Some(&peer) = self.peers.get(peer_index as usize) else {
                continue;
            };
            for payload in self.framer.frame(peer_index, msg) {
                let mut d = Datagram::empty();
                d.peer = peer;
                d.local_port = local_port;
                d.set_payload(&payload);
                self.pending.push_back(d);
            }
        }
        self.flush();
    }

    /// Sends what waits, as far as the kernel queue takes it.
    pub fn flush(&mut self) {
        let mut batch: Vec<Datagram> = Vec::new();
        while !self.pending.is_empty() {
            batch.clear();
            batch.extend(self.pending.drain(..self.pending.len().min(64)));
            match self.port.send_burst(&batch) {
                Ok(handled) => {
                    self.stats
                        .datagrams_out
                        .fetch_add(handled as u64, Ordering::Relaxed);
                    if handled < batch.len() {
                        for d in batch.drain(handled..).rev() {
                            self.pending.push_front(d);
                        }
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("consensus transport: send failed: {e}");
                    self.stats
                        .dropped_send_full
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        }
        while self.pending.len() > PENDING_MAX {
            self.pending.pop_front();
            self.stats.dropped_send_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Receives what has arrived (without blocking) and appends each whole, authenticated
    /// message to `out` as (sender index, bytes).
    pub fn recv(&mut self, out: &mut Vec<(u16, Vec<u8>)>) {
        // A bounded number of bursts, so a flood cannot starve the caller's other work.
        for _ in 0..8 {
            let n = match self.port.recv_burst(&mut self.rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("consensus transport: receive failed: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for d in &self.rx[..n] {
                self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                match self.framer.accept(d.payload(), now) {
                    Ok(Some(message)) => {
                        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                        self.stats.heard(message.0);
                        out.push(message);
                    }
                    Ok(None) => {}
                    Err(FrameError::BadTag) => {
                        self.stats.dropped_bad_tag.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if n < self.rx.len() {
                return;
            }
        }
    }

    /// Sleeps until a datagram arrives, the waker fires, or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) {
        if !self.pending.is_empty() {
            // Room in the send queue frees up without a wake-up: poll again soon.
            let _ = self.port.wait(timeout.min(Duration::from_micros(200)));
            return;
        }
        let _ = self.port.wait(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Framer, Framer) {
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let ka = link_key(&a, &b.verifying_key(), b"ns");
        let kb = link_key(&b, &a.verifying_key(), b"ns");
        assert_eq!(ka, kb, "both ends derive the same link key");
        (
            Framer::new(0, vec![[0; 32], ka]),
            Framer::new(1, vec![kb, [0; 32]]),
        )
    }

    #[test]
    fn messages_of_any_size_round_trip_in_any_order() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        for len in [0usize, 1, CHUNK_LEN, CHUNK_LEN + 1, 100_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut frames = a.frame(1, &msg);
            frames.reverse();
            let mut got = None;
            for f in &frames {
                assert!(f.len() <= MAX_PAYLOAD);
                if let Some(m) = b.accept(f, now).unwrap() {
                    got = Some(m);
                }
            }
            assert_eq!(got, Some((0, msg)));
        }
    }

    #[test]
    fn forged_mutated_and_misdirected_datagrams_are_refused() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        let frame = a.frame(1, b"vote").remove(0);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 1;
            assert!(b.accept(&bad, now).is_err(), "byte {i} flipped");
        }
        // A third key cannot speak for validator 0.
        let c = SigningKey::from_bytes(&[3; 32]);
        let b_key = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let mut forger = Framer::new(0, vec![[0; 32], link_key(&c, &b_key, b"ns")]);
        assert_eq!(
            b.accept(&forger.frame(1, b"vote")[0], now),
            Err(FrameError::BadTag)
        );
        // Our own frames sent back to us, and garbage.
        assert!(a.accept(&frame, now).is_err());
        assert_eq!(b.accept(b"short", now), Err(FrameError::Short));
    }

    #[test]
    fn a_lost_fragment_loses_the_message_and_memory_stays_bounded() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        for _ in 0..100 {
            let frames = a.frame(1, &vec![9u8; CHUNK_LEN * 3]);
            for f in &frames[1..] {
                assert_eq!(b.accept(f, now).unwrap(), None);
            }
        }
        assert!(b.partial[0].len() <= PARTIAL_PER_PEER_MAX);
        let later = now + PARTIAL_TIMEOUT + Duration::from_millis(1);
        let frames = a.frame(1, b"fresh");
        assert_eq!(
            b.accept(&frames[0], later).unwrap(),
            Some((0, b"fresh".to_vec()))
        );
    }
}
