//! Root tests of AF_XDP multi-buffer (`XDP_USE_SG`) against the real kernel: the `xdp.frags`
//! program on a veth at a jumbo MTU, real AF_XDP sockets receiving packets as chains of UMEM
//! frames and sending them back as chains, a real kernel UDP client in the peer namespace.
//!
//! ```text
//!   np-s4b-mb<pid>n (XDP + AF_XDP, reflector)        np-s4b-mb<pid>p (kernel client)
//!   v0 192.168.50.1/24  mtu M  <=================>  v1 192.168.50.2/24  mtu M
//!                                                     route 10.99.0.0/24 via the node
//! ```
//! Namespaces carry this helper's prefix `np-s4b` and are deleted by name on drop.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::*;
use nodeplane_dataplane::afxdp::{Action, SocketId, XskBinding, XskConfig, XskWorker};
use nodeplane_dataplane::partial;
use nodeplane_xdp::{Loader, SteeringConfig};

fn nstat(ns: &Netns, counter: &str) -> u64 {
    // `nstat -az`: absolute values, zeros included; "Name value rate".
    ns.exec(&["nstat", "-az", counter])
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(counter)).then(|| w.next().and_then(|v| v.parse().ok()))
        })
        .flatten()
        .unwrap_or_else(|| panic!("nstat in {} has no {counter}", ns.name))
}

/// Reflects UDP datagrams of `sizes` bytes through a multi-buffer worker at `mtu` and checks
/// every echo byte for byte; returns the worker's (rx chains, tx chains). With `offload`, the
/// UMEM has TX metadata and every echo leaves with its checksum field set to the pseudo-header
/// sum and a checksum request in its (first buffer's) metadata: the kernel must finish it, or
/// the peer counts `UdpInCsumErrors` and the echo never arrives.
fn round_trip(tag: &str, mtu: u32, sizes: &[usize], rounds: usize, offload: bool) -> (u64, u64) {
    require_root();
    let Bed { node, peer } = Bed::new(tag);
    node.run(|| {
        let mut loader = Loader::load().expect("load");
        loader.attach("v0", 2).expect("attach");
        // Beyond one page only with the frags program attached (veth_xdp_set); both ends.
        let m = mtu.to_string();
        node.ip(&["link", "set", "v0", "mtu", &m]);
        peer.ip(&["link", "set", "v1", "mtu", &m]);
        loader
            .apply(&SteeringConfig {
                prefixes: vec!["10.99.0.0/24".parse().unwrap()],
                ..SteeringConfig::default()
            })
            .expect("apply");
        let cfg = XskConfig {
            ring_size: 256,
            frames_per_socket: 1024,
            frame_size: 4096,
            multi_buffer: true,
            tx_metadata: offload,
            ..XskConfig::default()
        };
        let mut w = XskWorker::new(
            &cfg,
            &[
                XskBinding {
                    iface: "v0",
                    queue: 0,
                },
                XskBinding {
                    iface: "v0",
                    queue: 1,
                },
            ],
        )
        .expect("AF_XDP sockets with XDP_USE_SG");
        assert_eq!(
            w.tx_metadata(),
            offload,
            "TX metadata as asked (kernel 6.11+)"
        );
        let mut requests = 0u64;
        loader
            .register_sockets(w.registrations())
            .expect("register");
        let start = w.check_accounting().expect("accounting at start");
        let csum_errors_before = nstat(&peer, "UdpInCsumErrors");
        let stop = AtomicBool::new(false);
        let mut longest = 0usize;
        std::thread::scope(|s| {
            let client = s.spawn(|| {
                enter(&format!("/run/netns/{}", peer.name));
                let r = std::panic::catch_unwind(|| {
                    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let to: SocketAddr = "10.99.0.7:7777".parse().unwrap();
                    let mut bad = Vec::new();
                    let mut buf = vec![0u8; 70_000];
                    for round in 0..rounds {
                        for &size in sizes {
                            let msg: Vec<u8> = (0..size)
                                .map(|i| (i * 7 + round * 13 + size) as u8)
                                .collect();
                            sock.send_to(&msg, to).unwrap();
                            match sock.recv_from(&mut buf) {
                                Ok((n, from)) if from == to && buf[..n] == msg[..] => {}
                                Ok((n, from)) => {
                                    bad.push(format!("{size} B: echo of {n} B from {from} differs"))
                                }
                                Err(e) => bad.push(format!("{size} B: {e}")),
                            }
                        }
                    }
                    bad
                });
                stop.store(true, Ordering::Release);
                r.unwrap_or_else(|e| std::panic::resume_unwind(e))
            });
            let ids: Vec<SocketId> = w.socket_ids().collect();
            while !stop.load(Ordering::Acquire) {
                let mut got = 0;
                for &id in &ids {
                    let mut b = w.rx_burst(id, 64);
                    got += b.len();
                    for i in 0..b.len() {
                        longest = longest.max(b.frame(i).len());
                        if reflect(b.frame_mut(i)) {
                            if offload {
                                let (start, off) = partial::offload_request(b.frame_mut(i))
                                    .expect("a UDP echo can carry a checksum request");
                                assert!(b.request_checksum(i, start, off), "metadata room");
                                requests += 1;
                            }
                            b.set_action(i, Action::Tx(id));
                        }
                    }
                    b.finish();
                    w.check_accounting().expect("invariant after a burst");
                }
                if got == 0 {
                    w.wait_rx(5).unwrap();
                }
            }
            let bad = client.join().unwrap();
            assert!(
                bad.is_empty(),
                "MTU {mtu}: {} bad echoes: {bad:?}",
                bad.len()
            );
        });
        let largest = sizes.iter().max().copied().unwrap_or(0);
        assert!(
            longest >= largest + 42,
            "MTU {mtu}: longest frame seen {longest}, sent {largest} B datagrams"
        );
        assert_eq!(
            nstat(&peer, "UdpInCsumErrors"),
            csum_errors_before,
            "MTU {mtu}: the peer counted bad UDP checksums"
        );
        // Every frame comes back: TX completes, the free count returns to its start.
        let deadline = Instant::now() + Duration::from_secs(5);
        let end = loop {
            w.service();
            let a = w.check_accounting().expect("invariant while draining");
            if a.in_tx + a.in_completion + a.in_rx == 0 || Instant::now() > deadline {
                break a;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            (end.free, end.in_fill, end.in_tx, end.in_completion),
            (start.free, start.in_fill, 0, 0),
            "MTU {mtu}: frames lost: start {start:?}, end {end:?}"
        );
        assert_eq!(w.accounting_errors(), 0);
        let (mut rx_chains, mut tx_chains, mut chain_drops) = (0, 0, 0);
        for id in w.socket_ids() {
            let st = w.stats(id);
            eprintln!("MTU {mtu} socket {id:?}: {st:?}");
            rx_chains += st.rx_chains;
            tx_chains += st.tx_chains;
            chain_drops += st.rx_chain_dropped;
        }
        assert_eq!(chain_drops, 0, "MTU {mtu}: chains dropped");
        if offload {
            assert!(requests > 0, "MTU {mtu}: no checksum request sent");
        }
        for id in w.socket_ids() {
            let k = w.kernel_stats(id).expect("XDP_STATISTICS");
            assert_eq!(
                k.tx_invalid_descs(),
                0,
                "MTU {mtu}: the kernel refused TX descriptors"
            );
        }
        (rx_chains, tx_chains)
    })
}

#[test]
fn udp_echoes_intact_through_chains_at_mtu_9000() {
    let sizes = [64, 1400, 3700, 3900, 8000, 8972];
    let (rx, tx) = round_trip("mb9k", 9000, &sizes, 20, false);
    // 3900, 8000 and 8972 B datagrams span 2-3 frames of 3840 B each way.
    assert!(rx >= 3 * 20 && tx >= 3 * 20, "chains rx {rx} tx {tx}");
}

#[test]
fn udp_echoes_intact_through_chains_at_mtu_65000() {
    let sizes = [100, 20_000, 40_000, 64_972];
    let (rx, tx) = round_trip("mb64k", 65000, &sizes, 10, false);
    assert!(rx >= 3 * 10 && tx >= 3 * 10, "chains rx {rx} tx {tx}");
}

/// The same through TX metadata checksum requests (single frames and chains): the kernel
/// finishes every checksum; the UMEM's frames all come back (the ring layer's accounting).
#[test]
fn udp_echoes_with_checksum_requests_at_mtu_9000() {
    let sizes = [64, 1400, 3700, 3900, 8000, 8972];
    let (rx, tx) = round_trip("mbcs", 9000, &sizes, 20, true);
    assert!(rx >= 3 * 20 && tx >= 3 * 20, "chains rx {rx} tx {tx}");
}
