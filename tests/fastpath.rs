//! The UDP fast path end to end: a node process per backend (sockets, io_uring, DPDK on
//! `net_af_xdp` and `net_af_packet` over a veth pair into a namespace this test creates), a
//! kernel UDP client submitting signed transactions, receipts checked against JSON-RPC, bad
//! datagrams answered or dropped without hurting the next client, and the pktgen reflector.
//!
//! DPDK tests need root (namespaces, veth, XDP); CI runs as root.

mod common;

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use alloy_primitives::{Address, TxKind, U256};
use common::{Devnet, Rpc, dev_signer, eip1559, free_port, sign};
use rtchain_dataplane::{
    packet::{PKTGEN_MAGIC, PKTGEN_STAMP_OFFSET, UDP_PAYLOAD_OFFSET},
    rig::VethRig,
};
use rtchain_wire::{
    self as wire, RejectCode,
    client::{FastPathClient, Reply},
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn transfer(signer_index: u32, nonce: u64) -> common::SignedTx {
    sign(
        &dev_signer(signer_index),
        eip1559(
            nonce,
            TxKind::Call(Address::with_last_byte(0x77)),
            U256::from(1_000u64),
            Default::default(),
            21_000,
        ),
    )
}

fn expect_receipt(reply: Reply) -> wire::Receipt {
    match reply {
        Reply::Receipt(r) => r,
        Reply::Reject(r) => panic!("rejected: {} ({})", r.code, r.reason),
    }
}

fn expect_reject(reply: Reply, code: RejectCode) -> String {
    match reply {
        Reply::Reject(r) => {
            assert_eq!(r.code, code, "reason: {}", r.reason);
            r.reason
        }
        Reply::Receipt(r) => panic!("expected a {code} reject, got a receipt {r:?}"),
    }
}

/// Submits transactions and bad datagrams from `client`; checks every answer and the chain.
/// `raw` is a second, unconnected socket in the client's namespace, for hand-made datagrams.
async fn exercise(node: &Devnet, mut client: FastPathClient, raw: UdpSocket, signer_index: u32) {
    let rpc = Rpc::new(&node.url());
    // One transaction per datagram, in nonce order.
    let mut hashes = Vec::new();
    for nonce in 0..5 {
        let tx = transfer(signer_index, nonce);
        let receipt = expect_receipt(client.submit(&tx.raw).expect("reply"));
        assert_eq!(receipt.tx_hash, tx.hash.0);
        assert_eq!(receipt.status, wire::TxStatus::Success);
        assert_eq!(receipt.gas_used, 21_000);
        assert!(receipt.mini_block > 0);
        hashes.push((tx.hash, receipt));
    }
    // Several transactions in one datagram: one reply each, matched by index.
    let batch: Vec<common::SignedTx> = (5..8).map(|n| transfer(signer_index, n)).collect();
    let raws: Vec<&[u8]> = batch.iter().map(|t| t.raw.as_ref()).collect();
    let replies = client.submit_batch(&raws).expect("batch replies");
    assert_eq!(replies.len(), 3);
    for (tx, reply) in batch.iter().zip(replies) {
        let receipt = expect_receipt(reply);
        assert_eq!(receipt.tx_hash, tx.hash.0);
        hashes.push((tx.hash, receipt));
    }
    // Receipts agree with JSON-RPC once sealed.
    for (hash, fast) in &hashes {
        let facts = rpc.wait_receipt(*hash, TIMEOUT).await;
        assert_eq!(facts.status, 1, "status of {hash}");
        assert_eq!(
            facts.block_number,
            Some(fast.block_number),
            "block of {hash}"
        );
        assert_eq!(facts.gas_used, fast.gas_used, "gas of {hash}");
    }

    // Refusals, each with its code, and none of them disturbs what follows.
    let replay = transfer(signer_index, 0);
    let reason = expect_reject(client.submit(&replay.raw).unwrap(), RejectCode::NonceTooLow);
    assert!(reason.contains("nonce too low"), "{reason}");
    expect_reject(
        client.submit(&[0x02, 0xc0, 0x01]).unwrap(),
        RejectCode::Malformed,
    );
    let mut wrong_chain = eip1559(
        8,
        TxKind::Call(Address::ZERO),
        U256::ZERO,
        Default::default(),
        21_000,
    );
    wrong_chain.chain_id = 1;
    let wrong_chain = sign(&dev_signer(signer_index), wrong_chain);
    expect_reject(
        client.submit(&wrong_chain.raw).unwrap(),
        RejectCode::WrongChainId,
    );
    // 10^30 wei: far beyond the 10,000 ETH of a dev account.
    let poor = eip1559(
        8,
        TxKind::Call(Address::ZERO),
        U256::from(10u64).pow(U256::from(30u64)),
        Default::default(),
        21_000,
    );
    let poor = sign(&dev_signer(signer_index), poor);
    expect_reject(
        client.submit(&poor.raw).unwrap(),
        RejectCode::InsufficientFunds,
    );

    // Datagrams that are not requests: garbage and bad magic get no answer; an unknown version
    // with a readable header gets UnknownVersion.
    raw.connect(client.node()).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    raw.send(b"not an rtchain datagram").unwrap();
    raw.send(&[0u8; 1]).unwrap();
    let mut buf = [0u8; 2048];
    assert!(raw.recv(&mut buf).is_err(), "garbage must not be answered");
    // Shorter than a Reject: not answered either (no amplification).
    let mut datagram = [0u8; wire::MAX_DATAGRAM];
    let len = wire::encode_submit(&mut datagram, 41, &[&[1, 2, 3]]).unwrap();
    datagram[2] = 99; // version
    raw.send(&datagram[..len]).unwrap();
    assert!(
        raw.recv(&mut buf).is_err(),
        "a 21-byte datagram must not get a 54-byte reply"
    );
    let len = wire::encode_submit(&mut datagram, 42, &[&[1u8; 60]]).unwrap();
    datagram[2] = 99; // version
    raw.send(&datagram[..len]).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = raw.recv(&mut buf).expect("an UnknownVersion reject");
    match wire::decode(&buf[..n]).unwrap() {
        wire::Message::Reject(r) => {
            assert_eq!(r.code, RejectCode::UnknownVersion);
            assert_eq!(r.request_id, 42);
        }
        other => panic!("expected a reject, got {other:?}"),
    }

    // Many tiny invalid transactions in one datagram: the Rejects together stay within the
    // datagram's own size plus one Reject's fixed part.
    let tiny: Vec<&[u8]> = vec![&[0x05]; 60];
    let len = wire::encode_submit(&mut datagram, 43, &tiny).unwrap();
    raw.send(&datagram[..len]).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut reply_bytes = 0;
    while let Ok(n) = raw.recv(&mut buf) {
        if let Ok(wire::Message::Reject(r)) = wire::decode(&buf[..n]) {
            assert_eq!(r.request_id, 43);
            reply_bytes += n;
        }
    }
    assert!(reply_bytes > 0, "the first tiny transactions are answered");
    assert!(
        reply_bytes <= len + wire::REJECT_MIN_LEN,
        "{reply_bytes} bytes of Rejects for a {len}-byte datagram"
    );

    // The next valid transaction still goes through.
    let next = transfer(signer_index, 8);
    let receipt = expect_receipt(client.submit(&next.raw).expect("reply"));
    assert_eq!(receipt.tx_hash, next.hash.0);
    assert!(client.ping().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_backend_answers_with_receipts() {
    let node = Devnet::start(&[]);
    let addr = node
        .fastpath
        .expect("the node prints its fast path address");
    let client = FastPathClient::connect(addr, TIMEOUT).unwrap();
    exercise(&node, client, UdpSocket::bind("0.0.0.0:0").unwrap(), 1).await;

    // The counters an operator watches, over JSON-RPC.
    let stats = Rpc::new(&node.url())
        .ok("rtchain_nodeStats", serde_json::json!([]))
        .await;
    let fastpath = &stats["fastpath"];
    assert_eq!(fastpath["backend"], "socket", "{stats}");
    assert!(fastpath["receipts"].as_u64().unwrap() >= 9, "{stats}");
    assert!(fastpath["rejects"].as_u64().unwrap() >= 4, "{stats}");
    assert!(fastpath["malformed"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["miniBlock"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_backend_answers_with_receipts() {
    let temp = tempfile::tempdir().unwrap();
    let node = Devnet::start_node_config(
        &temp.path().join("data"),
        free_port(),
        "[fastpath]\nbackend = \"io-uring\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let addr = node.fastpath.expect("fast path address");
    let client = FastPathClient::connect(addr, TIMEOUT).unwrap();
    exercise(&node, client, UdpSocket::bind("0.0.0.0:0").unwrap(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_on_the_net_tile_answers_with_receipts() {
    let temp = tempfile::tempdir().unwrap();
    let node = Devnet::start_node_config(
        &temp.path().join("data"),
        free_port(),
        "[fastpath]\nverify_tiles = 0\nlisten = \"127.0.0.1:0\"\n",
    );
    let addr = node.fastpath.expect("fast path address");
    let client = FastPathClient::connect(addr, TIMEOUT).unwrap();
    exercise(&node, client, UdpSocket::bind("0.0.0.0:0").unwrap(), 5).await;
}

/// A node on a DPDK vdev over the rig's host end; the client in the namespace.
fn dpdk_node(
    rig: &VethRig,
    vdev: &str,
    port_name: &str,
    reflector: u16,
) -> (Devnet, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let sections = format!(
        "[fastpath]\nbackend = \"dpdk\"\nlisten = \"{}:8547\"\nreflector_port = {reflector}\npoll = \"busy-poll\"\n\n[fastpath.dpdk]\nno_huge = true\nmemory_mb = 256\nvdevs = [\"{vdev}\"]\nport = \"{port_name}\"\n",
        rig.host_ip
    );
    let node = Devnet::start_node_config(&temp.path().join("data"), free_port(), &sections);
    (node, temp)
}

fn namespace_client(rig: &VethRig, node: SocketAddr) -> FastPathClient {
    let socket = rig
        .in_namespace(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(node).unwrap();
            socket
        })
        .expect("enter the namespace");
    FastPathClient::from_connected(socket, node, TIMEOUT)
}

async fn dpdk_end_to_end(vdev_kind: &str) {
    let rig = VethRig::create(false).expect("veth rig (needs root)");
    let (vdev, name) = match vdev_kind {
        "af_xdp" => (
            format!(
                "net_af_xdp0,iface={},start_queue=0,queue_count=1",
                rig.host_if
            ),
            "net_af_xdp0",
        ),
        _ => (
            format!("net_af_packet0,iface={}", rig.host_if),
            "net_af_packet0",
        ),
    };
    let (node, _temp) = dpdk_node(&rig, &vdev, name, 9000);
    let addr = SocketAddr::V4(SocketAddrV4::new(rig.host_ip, 8547));
    assert_eq!(node.fastpath, Some(addr));
    // The client resolves the node's MAC through ARP, answered by our stack.
    let mut client = namespace_client(&rig, addr);
    // Short pings while the port comes up (af_xdp attaches asynchronously), 10 s in all.
    client.set_timeout(Duration::from_millis(200));
    let ready = (0..50).any(|_| client.ping().is_ok());
    assert!(ready, "the DPDK node never answered a ping");
    client.set_timeout(TIMEOUT);
    let raw = rig
        .in_namespace(|| UdpSocket::bind("0.0.0.0:0").unwrap())
        .unwrap();
    exercise(&node, client, raw, 3).await;

    // The reflector returns pktgen probes with the stamp intact and in order.
    let probe_target = SocketAddrV4::new(rig.host_ip, 9000);
    let socket = rig
        .in_namespace(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(probe_target).unwrap();
            socket
        })
        .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let stamp_at = PKTGEN_STAMP_OFFSET - UDP_PAYLOAD_OFFSET;
    for index in 1..=100u32 {
        let mut probe = [0u8; 18 + 6];
        probe[stamp_at..stamp_at + 4].copy_from_slice(&PKTGEN_MAGIC.to_le_bytes());
        probe[stamp_at + 4..stamp_at + 8].copy_from_slice(&index.to_le_bytes());
        probe[stamp_at + 8..stamp_at + 16].copy_from_slice(&(u64::from(index) * 7).to_le_bytes());
        socket.send(&probe).unwrap();
        let mut echo = [0u8; 128];
        let n = socket.recv(&mut echo).expect("probe echoed");
        assert_eq!(&echo[..n], &probe[..], "probe {index} came back changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpdk_af_xdp_backend_answers_with_receipts_and_reflects_probes() {
    dpdk_end_to_end("af_xdp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpdk_af_packet_backend_answers_with_receipts_and_reflects_probes() {
    dpdk_end_to_end("af_packet").await;
}

/// A flood from one source is cut to its rate limit and dropped (counted), while another
/// client's transactions still get their receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_does_not_starve_other_clients() {
    let temp = tempfile::tempdir().unwrap();
    let node = Devnet::start_node_config(
        &temp.path().join("data"),
        free_port(),
        "[fastpath]\nlisten = \"127.0.0.1:0\"\nmax_datagrams_per_source_per_sec = 2000\n",
    );
    let addr = node.fastpath.expect("fast path address");

    // The flooder and the honest client differ in source address (all of 127/8 is local).
    let flooder = UdpSocket::bind("127.0.0.2:0").unwrap();
    flooder.connect(addr).unwrap();
    let flood = std::thread::spawn(move || {
        let mut datagram = [0u8; wire::PING_LEN];
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            let len = wire::encode_ping(&mut datagram, sent, 0);
            if flooder.send(&datagram[..len]).is_ok() {
                sent += 1;
            }
        }
        flooder
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut pongs = 0u64;
        let mut buf = [0u8; 128];
        while flooder.recv(&mut buf).is_ok() {
            pongs += 1;
        }
        (sent, pongs)
    });

    let honest = UdpSocket::bind("127.0.0.3:0").unwrap();
    honest.connect(addr).unwrap();
    let mut client = FastPathClient::from_connected(honest, addr, TIMEOUT);
    for nonce in 0..5 {
        let tx = transfer(4, nonce);
        let receipt = expect_receipt(client.submit(&tx.raw).expect("a receipt during the flood"));
        assert_eq!(receipt.tx_hash, tx.hash.0);
    }
    let (sent, pongs) = flood.join().unwrap();
    // 2 s at 2,000/s, plus a window's slack; the flood sends far more than that.
    assert!(
        sent > 10_000,
        "the flood was too slow to test anything: {sent}"
    );
    assert!(
        pongs <= 6_000,
        "the rate limit let {pongs} of {sent} flood datagrams through"
    );
    assert!(
        pongs > 0,
        "the flooder's first datagrams are within its limit"
    );
}
