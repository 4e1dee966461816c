//! A minimal Ethernet II / ARP / IPv4 / UDP codec for the DPDK backend, which has no kernel stack
//! under it. It parses and builds frames in place on byte slices and never allocates.
//!
//! What it accepts, and why so little: the appliance serves UDP on one IPv4 address, so it needs
//! to answer ARP and to exchange unfragmented UDP datagrams, nothing more. VLAN tags, IPv6 and
//! other protocols are reported as [`Parsed::Other`] (counted and dropped by the caller); IPv4
//! fragments are refused ([`ParseError::Fragment`]) because reassembly would need buffers a flood
//! could exhaust, and the fast path never sends a datagram larger than one frame.
//!
//! Checksums are computed and verified in software. Both are cheap next to the work a datagram
//! causes (decoding and verifying a signed transaction), and doing them here keeps this module
//! independent of NIC offload capabilities.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

pub const ETH_HDR: usize = 14;
pub const IPV4_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
/// Where the UDP payload starts when the IPv4 header has no options (every frame we build).
pub const UDP_PAYLOAD_OFFSET: usize = ETH_HDR + IPV4_HDR + UDP_HDR;
/// Shortest Ethernet frame without its FCS. Shorter frames are padded on the wire; we pad the
/// frames we build ourselves rather than trust every NIC to do it.
pub const ETH_MIN_FRAME: usize = 60;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPPROTO_UDP: u8 = 17;

pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;
/// ARP body for IPv4 over Ethernet.
const ARP_LEN: usize = 28;

/// TTL of the datagrams we build: the Linux default.
const DEFAULT_TTL: u8 = 64;
/// IPv4 flags/fragment-offset field with only Don't Fragment set.
const IPV4_FLAG_DF: u16 = 0x4000;
const IPV4_FLAG_MF: u16 = 0x2000;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: Self = Self([0xff; 6]);
    pub const ZERO: Self = Self([0; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set: broadcast or multicast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes such as 02:00:5e:10:00:01")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (the Windows and `ip link` spellings),
    /// in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            // `from_str_radix` alone would also take a sign ("+1").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// [`ARP_OP_REQUEST`] or [`ARP_OP_REPLY`].
    pub op: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
pub struct UdpView<'a> {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
    /// Offset of `payload` within the frame (42 plus any IPv4 options), for zero-copy hand-off.
    pub payload_offset: usize,
}

#[derive(Debug)]
pub enum Parsed<'a> {
    Arp(ArpPacket),
    Udp(UdpView<'a>),
    /// another ethertype or IP protocol: ignored, counted as not for us
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame shorter than its headers say")]
    Truncated,
    #[error("IP version is not 4")]
    BadIpVersion,
    #[error("IPv4 header length below 20 bytes")]
    BadIpHeaderLength,
    #[error("IPv4 total length shorter than its header")]
    BadIpTotalLength,
    #[error("IPv4 header checksum mismatch")]
    BadIpChecksum,
    #[error("IPv4 fragment (fragments are not reassembled)")]
    Fragment,
    #[error("UDP length outside 8..=IP payload length")]
    BadUdpLength,
    #[error("UDP checksum mismatch")]
    BadUdpChecksum,
    #[error("ARP packet not IPv4-over-Ethernet or not a request/reply")]
    BadArp,
    #[error("not an IPv4/UDP frame")]
    NotUdp,
}

/// Where the parts of an IPv4/UDP frame are, after the structural checks (no checksums).
struct UdpLayout {
    ip_hdr_len: usize,
    /// Offset of the UDP header in the frame.
    udp_start: usize,
    /// UDP length field: header plus payload. Bytes of the IP payload past it are ignored, as
    /// Linux does.
    udp_len: usize,
}

fn be16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(ParseError::Truncated),
    }
}

fn mac_at(b: &[u8], at: usize) -> Result<MacAddr, ParseError> {
    let bytes = b.get(at..at + 6).ok_or(ParseError::Truncated)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(bytes);
    Ok(MacAddr(mac))
}

fn ip_at(b: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(Ipv4Addr::new(a, b, c, d)),
        _ => Err(ParseError::Truncated),
    }
}

/// Parses one received frame. Never panics; trailing bytes past the IPv4 total length (Ethernet
/// padding) are ignored. Verifies the IPv4 header checksum, and the UDP checksum unless it is 0
/// (sender computed none).
pub fn parse_frame(frame: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let ethertype = be16(frame, 12)?;
    match ethertype {
        ETHERTYPE_ARP => parse_arp(&frame[ETH_HDR..]).map(Parsed::Arp),
        ETHERTYPE_IPV4 => {
            let Some(layout) = ipv4_udp_layout(frame)? else {
                return Ok(Parsed::Other);
            };
            let ip = &frame[ETH_HDR..ETH_HDR + layout.ip_hdr_len];
            if fold(sum_be(ip, 0)) != 0xffff {
                return Err(ParseError::BadIpChecksum);
            }
            let src_ip = ip_at(frame, ETH_HDR + 12)?;
            let dst_ip = ip_at(frame, ETH_HDR + 16)?;
            let udp = &frame[layout.udp_start..layout.udp_start + layout.udp_len];
            if be16(udp, 6)? != 0
                && fold(sum_be(udp, pseudo_sum(src_ip, dst_ip, udp.len()))) != 0xffff
            {
                return Err(ParseError::BadUdpChecksum);
            }
            let payload_offset = layout.udp_start + UDP_HDR;
            Ok(Parsed::Udp(UdpView {
                dst_mac: mac_at(frame, 0)?,
                src_mac: mac_at(frame, 6)?,
                src: SocketAddrV4::new(src_ip, be16(udp, 0)?),
                dst: SocketAddrV4::new(dst_ip, be16(udp, 2)?),
                payload: &udp[UDP_HDR..],
                payload_offset,
            }))
        }
        _ => Ok(Parsed::Other),
    }
}

fn parse_arp(body: &[u8]) -> Result<ArpPacket, ParseError> {
    if body.len() < ARP_LEN {
        return Err(ParseError::Truncated);
    }
    // Hardware Ethernet (1), protocol IPv4, 6-byte and 4-byte addresses: the only ARP we speak.
    if be16(body, 0)? != 1 || be16(body, 2)? != ETHERTYPE_IPV4 || body[4] != 6 || body[5] != 4 {
        return Err(ParseError::BadArp);
    }
    let op = be16(body, 6)?;
    if op != ARP_OP_REQUEST && op != ARP_OP_REPLY {
        return Err(ParseError::BadArp);
    }
    Ok(ArpPacket {
        op,
        sender_mac: mac_at(body, 8)?,
        sender_ip: ip_at(body, 14)?,
        target_mac: mac_at(body, 18)?,
        target_ip: ip_at(body, 24)?,
    })
}

/// Structural checks of an IPv4 frame (checksums excepted): `Ok(None)` if it is valid IPv4 but
/// not UDP. The caller has checked the ethertype.
fn ipv4_udp_layout(frame: &[u8]) -> Result<Option<UdpLayout>, ParseError> {
    let ip = frame.get(ETH_HDR..).ok_or(ParseError::Truncated)?;
    let first = *ip.first().ok_or(ParseError::Truncated)?;
    if first >> 4 != 4 {
        return Err(ParseError::BadIpVersion);
    }
    let ip_hdr_len = usize::from(first & 0x0f) * 4;
    if ip_hdr_len < IPV4_HDR {
        return Err(ParseError::BadIpHeaderLength);
    }
    if ip.len() < ip_hdr_len {
        return Err(ParseError::Truncated);
    }
    let total_len = usize::from(be16(ip, 2)?);
    if total_len < ip_hdr_len {
        return Err(ParseError::BadIpTotalLength);
    }
    if ip.len() < total_len {
        return Err(ParseError::Truncated);
    }
    let frag = be16(ip, 6)?;
    if frag & (IPV4_FLAG_MF | IPV4_FRAG_OFFSET_MASK) != 0 {
        return Err(ParseError::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Ok(None);
    }
    let ip_payload_len = total_len - ip_hdr_len;
    if ip_payload_len < UDP_HDR {
        return Err(ParseError::Truncated);
    }
    let udp_start = ETH_HDR + ip_hdr_len;
    let udp_len = usize::from(be16(frame, udp_start + 4)?);
    if !(UDP_HDR..=ip_payload_len).contains(&udp_len) {
        return Err(ParseError::BadUdpLength);
    }
    Ok(Some(UdpLayout {
        ip_hdr_len,
        udp_start,
        udp_len,
    }))
}

/// Writes a whole Ethernet+IPv4+UDP frame (IPv4 header checksum and UDP checksum computed in
/// software, DF set, TTL 64) into buf; returns the frame length, or None if buf is too small.
///
/// Frames shorter than [`ETH_MIN_FRAME`] are zero-padded to it, so the length returned is
/// `max(42 + payload.len(), 60)` and `buf` must hold that much.
pub fn build_udp_frame(
    buf: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ip_id: u16,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = u16::try_from(UDP_HDR + payload.len()).ok()?;
    let ip_total = u16::try_from(IPV4_HDR + usize::from(udp_len)).ok()?;
    let frame_len = ETH_HDR + usize::from(ip_total);
    let out_len = frame_len.max(ETH_MIN_FRAME);
    let out = buf.get_mut(..out_len)?;

    write_eth(out, dst_mac, src_mac, ETHERTYPE_IPV4);
    let ip = &mut out[ETH_HDR..ETH_HDR + IPV4_HDR];
    ip[0] = 0x45; // version 4, no options
    ip[1] = 0; // DSCP/ECN
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&IPV4_FLAG_DF.to_be_bytes());
    ip[8] = DEFAULT_TTL;
    ip[9] = IPPROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let ip_csum = ipv4_header_checksum(ip);
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());

    let udp = &mut out[ETH_HDR + IPV4_HDR..frame_len];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    udp[UDP_HDR..].copy_from_slice(payload);
    let udp_csum = udp_checksum(*src.ip(), *dst.ip(), udp);
    udp[6..8].copy_from_slice(&udp_csum.to_be_bytes());

    out[frame_len..].fill(0);
    Some(out_len)
}

/// Answers `request` (the caller has checked it asks for `our_ip`): to the requester's MAC,
/// telling it `our_ip` is at `our_mac`. Returns the frame length (60), or None if buf is too
/// small.
pub fn build_arp_reply(
    buf: &mut [u8],
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    request: &ArpPacket,
) -> Option<usize> {
    build_arp(
        buf,
        request.sender_mac,
        ArpPacket {
            op: ARP_OP_REPLY,
            sender_mac: our_mac,
            sender_ip: our_ip,
            target_mac: request.sender_mac,
            target_ip: request.sender_ip,
        },
    )
}

/// Broadcasts "who has `target_ip`? tell `our_ip`". Returns the frame length (60), or None if
/// buf is too small.
pub fn build_arp_request(
    buf: &mut [u8],
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Option<usize> {
    build_arp(
        buf,
        MacAddr::BROADCAST,
        ArpPacket {
            op: ARP_OP_REQUEST,
            sender_mac: our_mac,
            sender_ip: our_ip,
            target_mac: MacAddr::ZERO,
            target_ip,
        },
    )
}

fn build_arp(buf: &mut [u8], eth_dst: MacAddr, arp: ArpPacket) -> Option<usize> {
    let out = buf.get_mut(..ETH_MIN_FRAME)?;
    write_eth(out, eth_dst, arp.sender_mac, ETHERTYPE_ARP);
    let body = &mut out[ETH_HDR..ETH_HDR + ARP_LEN];
    body[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    body[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    body[4] = 6;
    body[5] = 4;
    body[6..8].copy_from_slice(&arp.op.to_be_bytes());
    body[8..14].copy_from_slice(&arp.sender_mac.0);
    body[14..18].copy_from_slice(&arp.sender_ip.octets());
    body[18..24].copy_from_slice(&arp.target_mac.0);
    body[24..28].copy_from_slice(&arp.target_ip.octets());
    out[ETH_HDR + ARP_LEN..].fill(0);
    Some(ETH_MIN_FRAME)
}

/// `out` is at least [`ETH_HDR`] long (callers slice it to the frame length first).
fn write_eth(out: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    out[0..6].copy_from_slice(&dst.0);
    out[6..12].copy_from_slice(&src.0);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Reflects a parsed IPv4/UDP frame in place as testpmd's 5tswap does: swap MACs, IPv4 addresses
/// and UDP ports. Checksums stay valid (swapping is checksum-neutral); payload bytes untouched.
/// Err if the frame is not IPv4/UDP.
///
/// Checks the structure (so no index can be out of bounds) but not the checksums: the reflector
/// calls this on frames [`parse_frame`] has already verified, and a reflected frame with a bad
/// checksum stays exactly as bad.
pub fn swap_5tuple_in_place(frame: &mut [u8]) -> Result<(), ParseError> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return Err(ParseError::NotUdp);
    }
    let layout = ipv4_udp_layout(frame)?.ok_or(ParseError::NotUdp)?;
    swap_ranges(frame, 0, 6, 6);
    swap_ranges(frame, ETH_HDR + 12, ETH_HDR + 16, 4);
    swap_ranges(frame, layout.udp_start, layout.udp_start + 2, 2);
    Ok(())
}

/// Swaps `frame[a..a+n]` with `frame[b..b+n]`, for `a + n <= b` (checked by the caller's layout).
fn swap_ranges(frame: &mut [u8], a: usize, b: usize, n: usize) {
    let (left, right) = frame.split_at_mut(b);
    left[a..a + n].swap_with_slice(&mut right[..n]);
}

/// The IPv4 header checksum of `header` (its full `IHL * 4` bytes), computed as if the checksum
/// field (bytes 10..12) were zero, so it works on a header being built and, compared with the
/// stored field, on one received.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let before = header.get(..10).unwrap_or(header);
    let after = header.get(12..).unwrap_or(&[]);
    !fold(sum_be(after, sum_be(before, 0)))
}

/// The UDP checksum of `udp_segment` (header and payload, as long as its length field says)
/// with the IPv4 pseudo-header, computed as if the checksum field (bytes 6..8) were zero. A
/// result of 0 is returned as 0xffff, as it is transmitted: 0 on the wire means "no checksum".
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp_segment: &[u8]) -> u16 {
    let before = udp_segment.get(..6).unwrap_or(udp_segment);
    let after = udp_segment.get(8..).unwrap_or(&[]);
    let sum = sum_be(
        after,
        sum_be(before, pseudo_sum(src, dst, udp_segment.len())),
    );
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// Sum of the IPv4 pseudo-header for UDP: addresses, protocol, UDP length.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> u64 {
    let mut acc = u64::from(u32::from(src)) + u64::from(u32::from(dst));
    acc += u64::from(IPPROTO_UDP);
    // A UDP segment we checksum always fits an IPv4 datagram, so its length fits 32 bits.
    acc + udp_len as u64
}

/// One's-complement sum (RFC 1071) of `data` as big-endian 16-bit words, odd byte padded with
/// zero, added to `acc`. Sums 32-bit words into 64 bits and folds later: the same result,
/// because 2^16 ≡ 1 modulo 0xffff, at half the additions. `data` must start at an even offset of
/// the checksummed whole.
fn sum_be(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a] => acc += u64::from(a) << 8,
        [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
        [a, b, c] => acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        _ => {}
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// pktgen-DPDK latency probe: 16-byte stamp at frame offset 48: u32 magic 0xf00dcafe, u32 index,
/// u64 TSC. Offset 48 is the UDP payload (42) rounded up to 8, as pktgen's
/// `pktgen_tstamp_pointer` places it.
///
/// Byte order: little endian, because pktgen stores the struct in host order and runs on x86 (or
/// little-endian Arm). The TSC is whatever clock the sender stamped (pktgen: `rte_rdtsc`, or
/// nanoseconds with its clock_gettime option); only the sender can interpret it.
pub const PKTGEN_STAMP_OFFSET: usize = 48;
pub const PKTGEN_MAGIC: u32 = 0xf00dcafe;
const PKTGEN_STAMP_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PktgenStamp {
    pub index: u32,
    pub tsc: u64,
}

/// The probe stamp of `frame`, if it is long enough and carries the magic. Looks only at the
/// bytes at [`PKTGEN_STAMP_OFFSET`], as pktgen does.
pub fn read_pktgen_stamp(frame: &[u8]) -> Option<PktgenStamp> {
    let s = frame.get(PKTGEN_STAMP_OFFSET..PKTGEN_STAMP_OFFSET + PKTGEN_STAMP_LEN)?;
    let magic = u32::from_le_bytes(s[0..4].try_into().ok()?);
    if magic != PKTGEN_MAGIC {
        return None;
    }
    Some(PktgenStamp {
        index: u32::from_le_bytes(s[4..8].try_into().ok()?),
        tsc: u64::from_le_bytes(s[8..16].try_into().ok()?),
    })
}

/// Writes a probe stamp; `false` (frame untouched) if the frame is too short to hold it.
///
/// If the frame is IPv4/UDP with a UDP checksum, the checksum is recomputed, because the stamp
/// changes payload bytes: a receiver that verifies it (ours does) would otherwise drop the probe.
pub fn write_pktgen_stamp(frame: &mut [u8], stamp: PktgenStamp) -> bool {
    let Some(s) = frame.get_mut(PKTGEN_STAMP_OFFSET..PKTGEN_STAMP_OFFSET + PKTGEN_STAMP_LEN) else {
        return false;
    };
    s[0..4].copy_from_slice(&PKTGEN_MAGIC.to_le_bytes());
    s[4..8].copy_from_slice(&stamp.index.to_le_bytes());
    s[8..16].copy_from_slice(&stamp.tsc.to_le_bytes());
    refresh_udp_checksum(frame);
    true
}

/// Recomputes the UDP checksum of an IPv4/UDP frame that has one; leaves anything else alone.
fn refresh_udp_checksum(frame: &mut [u8]) {
    if be16(frame, 12) != Ok(ETHERTYPE_IPV4) {
        return;
    }
    let Ok(Some(layout)) = ipv4_udp_layout(frame) else {
        return;
    };
    let (Ok(src), Ok(dst)) = (ip_at(frame, ETH_HDR + 12), ip_at(frame, ETH_HDR + 16)) else {
        return;
    };
    let udp = &mut frame[layout.udp_start..layout.udp_start + layout.udp_len];
    if udp[6..8] == [0, 0] {
        return;
    }
    let csum = udp_checksum(src, dst, udp);
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
    const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);

    /// 10.0.0.1:40000 -> 10.0.0.2:9000, IP id 0x1234, DF, TTL 64, payload "hello rtchain".
    /// Built independently with Python's `struct` and an RFC 1071 checksum (IPv4 checksum
    /// 0x148e, UDP checksum 0x4320), not with this module.
    const PY_FRAME: &str = "020000000002020000000001080045000029123440004011148e0a0000010a000002\
                            9c4023280015432068656c6c6f207274636861696e";

    fn sock(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    #[test]
    fn checksum_known_vectors() {
        // RFC 1071 section 3 example: the sum of these words is 0xddf2.
        assert_eq!(ipv4_header_checksum(&hex("0001f203f4f5f6f7")), !0xddf2);
        // The classic IPv4 header example (Wikipedia, "Internet checksum"): checksum 0xb861,
        // whether the field is zeroed or already filled in.
        let mut h = hex("45000073000040004011b861c0a80001c0a800c7");
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        h[10..12].fill(0);
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
    }

    #[test]
    fn build_matches_independent_frame() {
        let mut buf = [0u8; 128];
        let n = build_udp_frame(
            &mut buf,
            MAC_A,
            MAC_B,
            sock([10, 0, 0, 1], 40000),
            sock([10, 0, 0, 2], 9000),
            0x1234,
            b"hello rtchain",
        )
        .unwrap();
        let expected = hex(PY_FRAME);
        assert_eq!(expected.len(), 55);
        assert_eq!(n, ETH_MIN_FRAME);
        assert_eq!(&buf[..55], &expected[..]);
        assert_eq!(&buf[55..60], &[0; 5]);
    }

    #[test]
    fn parse_independent_frame_with_padding() {
        let mut frame = hex(PY_FRAME);
        frame.extend_from_slice(&[0xaa; 5]); // Ethernet padding is not part of the datagram
        let Parsed::Udp(v) = parse_frame(&frame).unwrap() else {
            panic!("not UDP");
        };
        assert_eq!(v.src_mac, MAC_A);
        assert_eq!(v.dst_mac, MAC_B);
        assert_eq!(v.src, sock([10, 0, 0, 1], 40000));
        assert_eq!(v.dst, sock([10, 0, 0, 2], 9000));
        assert_eq!(v.payload, b"hello rtchain");
        assert_eq!(v.payload_offset, UDP_PAYLOAD_OFFSET);
    }

    #[test]
    fn parse_rejects_what_it_must() {
        let good = hex(PY_FRAME);
        let with = |i: usize, v: u8| {
            let mut f = good.clone();
            f[i] = v;
            parse_frame(&f).map(|_| ()).unwrap_err()
        };
        assert_eq!(with(14, 0x65), ParseError::BadIpVersion);
        assert_eq!(with(14, 0x44), ParseError::BadIpHeaderLength);
        assert_eq!(with(14, 0x4f), ParseError::Truncated);
        assert_eq!(with(17, 0x10), ParseError::BadIpTotalLength);
        assert_eq!(with(17, 0x2a), ParseError::Truncated);
        assert_eq!(with(22, 0x41), ParseError::BadIpChecksum); // TTL changed, checksum not
        assert_eq!(with(54, b'X'), ParseError::BadUdpChecksum);
        assert_eq!(parse_frame(&good[..13]).unwrap_err(), ParseError::Truncated);
        assert_eq!(parse_frame(&good[..40]).unwrap_err(), ParseError::Truncated);

        // Fragments, with valid checksums, are refused: MF set, or a non-zero offset.
        for frag in [0x2000u16, 0x0001] {
            let mut f = good.clone();
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            fix_ip_checksum(&mut f);
            assert_eq!(parse_frame(&f).unwrap_err(), ParseError::Fragment);
        }
        // UDP length beyond the IP payload.
        let mut f = good.clone();
        f[39] = 0x16;
        assert_eq!(parse_frame(&f).unwrap_err(), ParseError::BadUdpLength);
        // Checksum 0: none computed, so corrupt payload is accepted.
        let mut f = good.clone();
        f[40..42].fill(0);
        f[54] = b'X';
        assert!(matches!(parse_frame(&f), Ok(Parsed::Udp(v)) if v.payload == b"hello rtchaiX"));
        // Another IP protocol (TCP) and another ethertype (IPv6, a VLAN tag) are not for us.
        let mut f = good.clone();
        f[23] = 6;
        fix_ip_checksum(&mut f);
        assert!(matches!(parse_frame(&f), Ok(Parsed::Other)));
        for ethertype in [0x86ddu16, 0x8100] {
            let mut f = good.clone();
            f[12..14].copy_from_slice(&ethertype.to_be_bytes());
            assert!(matches!(parse_frame(&f), Ok(Parsed::Other)));
        }
    }

    fn fix_ip_checksum(f: &mut [u8]) {
        let c = ipv4_header_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn ip_options_are_skipped() {
        // The Python frame with a 4-byte option (NOP NOP NOP EOL): IHL 6, total length +4.
        let base = hex(PY_FRAME);
        let mut f = base[..34].to_vec();
        f.extend_from_slice(&[1, 1, 1, 0]);
        f.extend_from_slice(&base[34..]);
        f[14] = 0x46;
        f[17] += 4;
        let c = ipv4_header_checksum(&f[14..38]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let Parsed::Udp(v) = parse_frame(&f).unwrap() else {
            panic!("not UDP");
        };
        assert_eq!(v.payload_offset, UDP_PAYLOAD_OFFSET + 4);
        assert_eq!(v.payload, b"hello rtchain");
        assert_eq!(&f[v.payload_offset..v.payload_offset + 5], b"hello");
        swap_5tuple_in_place(&mut f).unwrap();
        let Parsed::Udp(v) = parse_frame(&f).unwrap() else {
            panic!("not UDP");
        };
        assert_eq!(v.dst, sock([10, 0, 0, 1], 40000));
    }

    #[test]
    fn arp_request_and_reply() {
        let our_ip = Ipv4Addr::new(10, 0, 0, 2);
        let peer_ip = Ipv4Addr::new(10, 0, 0, 1);
        let mut buf = [0u8; 64];
        let n = build_arp_request(&mut buf, MAC_A, peer_ip, our_ip).unwrap();
        assert_eq!(n, 60);
        // Broadcast, ARP, Ethernet/IPv4 6/4, op 1, sender, zero target MAC, target IP.
        let expected = [
            "ffffffffffff",
            "020000000001",
            "0806", // Ethernet
            "0001",
            "0800",
            "06",
            "04",
            "0001", // Ethernet/IPv4, 6/4, request
            "020000000001",
            "0a000001", // sender
            "000000000000",
            "0a000002", // target
        ]
        .concat();
        let expected = hex(&expected);
        assert_eq!(&buf[..42], &expected[..]);
        assert_eq!(&buf[42..60], &[0; 18]);
        let Parsed::Arp(req) = parse_frame(&buf[..n]).unwrap() else {
            panic!("not ARP");
        };
        assert_eq!(req.op, ARP_OP_REQUEST);
        assert_eq!(
            (req.sender_mac, req.sender_ip, req.target_ip),
            (MAC_A, peer_ip, our_ip)
        );

        let n = build_arp_reply(&mut buf, MAC_B, our_ip, &req).unwrap();
        assert_eq!(&buf[..6], &MAC_A.0); // unicast back to the requester
        let Parsed::Arp(rep) = parse_frame(&buf[..n]).unwrap() else {
            panic!("not ARP");
        };
        assert_eq!(
            rep,
            ArpPacket {
                op: ARP_OP_REPLY,
                sender_mac: MAC_B,
                sender_ip: our_ip,
                target_mac: MAC_A,
                target_ip: peer_ip,
            }
        );
        buf[21] = 3; // op 3 (RARP): not ours
        assert_eq!(parse_frame(&buf[..n]).unwrap_err(), ParseError::BadArp);
        assert_eq!(parse_frame(&buf[..30]).unwrap_err(), ParseError::Truncated);
        assert!(build_arp_reply(&mut buf[..59], MAC_B, our_ip, &req).is_none());
    }

    #[test]
    fn swap_rejects_non_udp() {
        let mut buf = [0u8; 64];
        let n =
            build_arp_request(&mut buf, MAC_A, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(swap_5tuple_in_place(&mut buf[..n]), Err(ParseError::NotUdp));
        assert_eq!(
            swap_5tuple_in_place(&mut buf[..5]),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn mac_display_and_parse() {
        let mac: MacAddr = "02:00:5E:10:00:01".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]));
        assert_eq!(mac.to_string(), "02:00:5e:10:00:01");
        assert_eq!("02-00-5e-10-00-01".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "2:00:5e:10:00:01",
            "zz:00:5e:10:00:01",
            "+1:00:5e:10:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(!mac.is_multicast());
    }

    #[test]
    fn pktgen_stamp_round_trip_keeps_udp_checksum_valid() {
        let mut buf = [0u8; 128];
        let n = build_udp_frame(
            &mut buf,
            MAC_A,
            MAC_B,
            sock([10, 0, 0, 1], 1),
            sock([10, 0, 0, 2], 2),
            7,
            &[0u8; 30],
        )
        .unwrap();
        let frame = &mut buf[..n];
        assert_eq!(read_pktgen_stamp(frame), None);
        let stamp = PktgenStamp {
            index: 0x0102_0304,
            tsc: 0x1122_3344_5566_7788,
        };
        assert!(write_pktgen_stamp(frame, stamp));
        // Little endian, as pktgen writes it on x86.
        assert_eq!(&frame[48..52], &[0xfe, 0xca, 0x0d, 0xf0]);
        assert_eq!(&frame[52..56], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(read_pktgen_stamp(frame), Some(stamp));
        assert!(matches!(parse_frame(frame), Ok(Parsed::Udp(_))));
        assert!(!write_pktgen_stamp(&mut [0u8; 63], stamp));
    }

    fn arb_sock() -> impl Strategy<Value = SocketAddrV4> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| sock(ip, port))
    }

    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            arb_sock(),
            arb_sock(),
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..1472),
        )
            .prop_map(|(sm, dm, s, d, id, payload)| {
                let mut buf = vec![0u8; 1514];
                let n = build_udp_frame(&mut buf, MacAddr(sm), MacAddr(dm), s, d, id, &payload)
                    .unwrap();
                buf.truncate(n);
                buf
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse_frame(&bytes);
            let mut b = bytes;
            let _ = swap_5tuple_in_place(&mut b);
            let _ = read_pktgen_stamp(&b);
        }

        #[test]
        fn parse_never_panics_on_mutated_frames(
            frame in arb_frame(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut f = frame;
            for (at, v) in flips {
                let i = at.index(f.len());
                f[i] = v;
            }
            f.truncate(cut.index(f.len() + 1).max(f.len() / 2));
            if let Ok(Parsed::Udp(v)) = parse_frame(&f) {
                prop_assert_eq!(&f[v.payload_offset..v.payload_offset + v.payload.len()], v.payload);
            }
            let _ = swap_5tuple_in_place(&mut f);
            let _ = write_pktgen_stamp(&mut f, PktgenStamp { index: 1, tsc: 2 });
        }

        #[test]
        fn build_parse_round_trips(
            sm in any::<[u8; 6]>(),
            dm in any::<[u8; 6]>(),
            s in arb_sock(),
            d in arb_sock(),
            id in any::<u16>(),
            payload in prop::collection::vec(any::<u8>(), 0..1472),
        ) {
            let mut buf = [0u8; 1514];
            let n = build_udp_frame(&mut buf, MacAddr(sm), MacAddr(dm), s, d, id, &payload).unwrap();
            prop_assert_eq!(n, (UDP_PAYLOAD_OFFSET + payload.len()).max(ETH_MIN_FRAME));
            prop_assert!(build_udp_frame(&mut buf[..n - 1], MacAddr(sm), MacAddr(dm), s, d, id, &payload).is_none());
            let n = build_udp_frame(&mut buf, MacAddr(sm), MacAddr(dm), s, d, id, &payload).unwrap();
            let Parsed::Udp(v) = parse_frame(&buf[..n]).unwrap() else {
                return Err(TestCaseError::fail("not UDP"));
            };
            prop_assert_eq!((v.src_mac, v.dst_mac, v.src, v.dst), (MacAddr(sm), MacAddr(dm), s, d));
            prop_assert_eq!(v.payload, &payload[..]);
            prop_assert_eq!(v.payload_offset, UDP_PAYLOAD_OFFSET);
            prop_assert_eq!(&buf[18..20], &id.to_be_bytes());
        }

        #[test]
        fn swap_twice_is_identity_and_keeps_checksums(frame in arb_frame()) {
            let Parsed::Udp(before) = parse_frame(&frame).unwrap() else {
                return Err(TestCaseError::fail("not UDP"));
            };
            let (src_mac, dst_mac, src, dst) = (before.src_mac, before.dst_mac, before.src, before.dst);
            let mut f = frame.clone();
            swap_5tuple_in_place(&mut f).unwrap();
            let Parsed::Udp(once) = parse_frame(&f).unwrap() else {
                return Err(TestCaseError::fail("not UDP after swap"));
            };
            prop_assert_eq!((once.src_mac, once.dst_mac, once.src, once.dst), (dst_mac, src_mac, dst, src));
            prop_assert_eq!(once.payload, before.payload);
            swap_5tuple_in_place(&mut f).unwrap();
            prop_assert_eq!(f, frame);
        }
    }
}
