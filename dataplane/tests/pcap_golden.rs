//! Golden-file test of the DPDK stack's frame handling through DPDK's `net_pcap` driver: the
//! frames in `golden/in.pcap` (an ARP request, a fast-path datagram, a pktgen probe, an IPv4
//! fragment, a frame with a bad UDP checksum, a datagram for another port) go through a
//! [`DpdkQueue`]; what it sends must equal `golden/expected_out.pcap` frame for frame (the ARP
//! reply, the reflected probe, the reply datagram), and its counters must say why the rest was
//! dropped. Both files open in Wireshark.
//!
//! `RTCHAIN_BLESS=1 cargo nextest run -p rtchain-dataplane --test pcap_golden` rewrites both
//! files from the frame builders below; review the diff of what the stack then sends.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rtchain_dataplane::{
    Datagram, DatagramPort,
    dpdk::{DeviceQueue, DpdkConfig, DpdkDevice, Eal},
    packet::{self, MacAddr, PktgenStamp},
};

const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const FAST_PORT: u16 = 8547;
const REFLECTOR_PORT: u16 = 9000;

fn golden(name: &str) -> PathBuf {
    // The runner's CARGO_MANIFEST_DIR first: a test binary reused from a shared target
    // directory may have been compiled in another checkout of the same tree.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&dir).join("tests/golden").join(name)
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    // libpcap global header: magic, version 2.4, zone 0, sigfigs 0, snaplen, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// The frames of a pcap file (timestamps ignored: they are the only part that varies).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "{}: no pcap header", path.display());
    let big_endian = data[..4] == [0xa1, 0xb2, 0xc3, 0xd4];
    let u32_at = |at: usize| {
        let bytes: [u8; 4] = data[at..at + 4].try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(at + 8) as usize;
        at += 16;
        frames.push(data[at..at + len].to_vec());
        at += len;
    }
    frames
}

fn input_frames(our_mac: MacAddr) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = [0u8; 256];
    let peer = SocketAddrV4::new(PEER_IP, 40_000);

    let n = packet::build_arp_request(&mut buf, PEER_MAC, PEER_IP, OUR_IP).unwrap();
    frames.push(buf[..n].to_vec());

    let fast = SocketAddrV4::new(OUR_IP, FAST_PORT);
    let n = packet::build_udp_frame(&mut buf, PEER_MAC, our_mac, peer, fast, 1, b"hello").unwrap();
    frames.push(buf[..n].to_vec());

    let reflector = SocketAddrV4::new(OUR_IP, REFLECTOR_PORT);
    let n =
        packet::build_udp_frame(&mut buf, PEER_MAC, our_mac, peer, reflector, 2, &[0; 22]).unwrap();
    assert!(packet::write_pktgen_stamp(
        &mut buf[..n],
        PktgenStamp {
            index: 7,
            tsc: 0x0123_4567_89ab_cdef,
        }
    ));
    frames.push(buf[..n].to_vec());

    // A first fragment: more-fragments flag set.
    let n = packet::build_udp_frame(&mut buf, PEER_MAC, our_mac, peer, fast, 3, b"frag").unwrap();
    let mut fragment = buf[..n].to_vec();
    fragment[packet::ETH_HDR + 6] |= 0x20;
    let checksum_at = packet::ETH_HDR + 10;
    fragment[checksum_at..checksum_at + 2].copy_from_slice(&[0, 0]);
    let sum = packet::ipv4_header_checksum(&fragment[packet::ETH_HDR..packet::ETH_HDR + 20]);
    fragment[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    frames.push(fragment);

    // A damaged UDP checksum.
    let n = packet::build_udp_frame(&mut buf, PEER_MAC, our_mac, peer, fast, 4, b"bad").unwrap();
    let mut bad = buf[..n].to_vec();
    bad[packet::ETH_HDR + 20 + 6] ^= 0xff;
    frames.push(bad);

    // A datagram for a port we do not serve.
    let other = SocketAddrV4::new(OUR_IP, 5353);
    let n = packet::build_udp_frame(&mut buf, PEER_MAC, our_mac, peer, other, 5, b"other").unwrap();
    frames.push(buf[..n].to_vec());
    frames
}

/// net_pcap ports take their MAC from the driver; the frames are addressed to it.
const PCAP_MAC: MacAddr = MacAddr([0x02, 0x70, 0x63, 0x61, 0x70, 0x00]);

#[test]
fn the_stack_answers_reflects_and_drops_exactly_as_recorded() {
    let bless = std::env::var_os("RTCHAIN_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(golden("")).unwrap();
        write_pcap(&golden("in.pcap"), &input_frames(PCAP_MAC));
    }
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("out.pcap");
    let config = DpdkConfig {
        no_huge: true,
        memory_mb: 128,
        vdevs: vec![format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            golden("in.pcap").display(),
            out.display()
        )],
        port: "net_pcap0".into(),
        mbufs: 1023,
        ..Default::default()
    };
    let eal = Eal::init(&config).expect("EAL");
    let device = DpdkDevice::open(&eal, &config).expect("net_pcap port");
    assert_eq!(device.mac(), PCAP_MAC, "net_pcap's MAC changed: re-bless");
    let mut port = DeviceQueue::new(
        device,
        0,
        SocketAddrV4::new(OUR_IP, FAST_PORT),
        Some(REFLECTOR_PORT),
        &[],
    )
    .unwrap();

    let mut rx: Vec<Datagram> = (0..32).map(|_| Datagram::empty()).collect();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while port.stats().rx_packets < 6 && Instant::now() < deadline {
        let n = port.recv_burst(&mut rx).unwrap();
        received.extend(rx[..n].iter().cloned());
    }
    assert_eq!(received.len(), 1, "exactly the fast-path datagram surfaces");
    assert_eq!(received[0].payload(), b"hello");
    assert_eq!(received[0].peer, SocketAddrV4::new(PEER_IP, 40_000));
    let mut reply = received[0].clone();
    assert!(reply.set_payload(b"world"));
    assert_eq!(port.send_burst(std::slice::from_ref(&reply)).unwrap(), 1);

    let stats = port.stats();
    assert_eq!(stats.rx_packets, 6);
    assert_eq!(stats.arp_replies, 1);
    assert_eq!(stats.reflected, 1);
    assert_eq!(stats.fragments, 1);
    assert_eq!(stats.bad_frames, 1);
    assert_eq!(stats.tx_packets, 3);
    drop(port); // closes the device, which flushes tx_pcap

    let sent = read_pcap(&out);
    if bless {
        write_pcap(&golden("expected_out.pcap"), &sent);
    }
    let expected = read_pcap(&golden("expected_out.pcap"));
    assert_eq!(sent.len(), expected.len(), "frames sent");
    for (i, (got, want)) in sent.iter().zip(&expected).enumerate() {
        assert_eq!(
            hex(got),
            hex(want),
            "frame {i} differs from the golden file"
        );
    }
    // Independent of the golden file: the probe came back with pktgen's stamp intact.
    assert_eq!(
        packet::read_pktgen_stamp(&sent[1]),
        Some(PktgenStamp {
            index: 7,
            tsc: 0x0123_4567_89ab_cdef
        })
    );
    for frame in &sent {
        packet::parse_frame(frame).expect("every frame we send parses, checksums included");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
