//! Root tests against the real kernel: the XDP program on veth in namespaces, real AF_XDP
//! sockets, real kernel clients (ping, UDP sockets) in the peer namespace. See
//! `common::Bed` for the topology.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::*;
use nodeplane_dataplane::afxdp::{Action, SocketId, TxError, XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{
    AttachMode, Counter, Counters, Loader, NodePort, Proto, SnatAddr, SteeringConfig,
};

fn test_config() -> XskConfig {
    XskConfig {
        ring_size: 256,
        frames_per_socket: 512,
        ..XskConfig::default()
    }
}

/// The XDP state once it is no longer `from` (or `from` after 5 s). Closing the last BPF link
/// detaches in the kernel under the RTNL lock, which other tests creating and deleting
/// namespaces at the same moment may hold for a while: the detach is not always visible
/// the instant the loader is dropped.
fn xdp_state_after(ns: &Netns, iface: &str, from: &str) -> &'static str {
    let t0 = Instant::now();
    loop {
        let s = xdp_state(ns, iface);
        if s != from || t0.elapsed() > Duration::from_secs(5) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xdp_state(ns: &Netns, iface: &str) -> &'static str {
    // First line: "... mtu 1500 xdp qdisc ..." (native) or "... xdpgeneric ..." (generic).
    let out = ns.ip(&["link", "show", iface]);
    let first = out.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    if words.contains(&"xdpgeneric") {
        "generic"
    } else if words.contains(&"xdp") || words.contains(&"xdpdrv") {
        "native"
    } else if out.contains("xdp") {
        "other"
    } else {
        "none"
    }
}

#[test]
fn attaches_native_and_generic_and_detaches_on_drop() {
    require_root();
    let node = Netns::new("at", "n");
    let peer = Netns::new("at", "p");
    veth(
        &node,
        "v0",
        "02:00:00:00:50:01",
        &peer,
        "v1",
        "02:00:00:00:50:02",
    );
    node.run(|| {
        let mut l = Loader::load().expect("load XDP program");
        assert_eq!(l.attach("v0", 2).expect("attach"), AttachMode::Driver);
        assert_eq!(xdp_state(&node, "v0"), "native");
        assert_eq!(l.attached()[0].mode, AttachMode::Driver);
        let again = l.attach("v0", 2).unwrap_err();
        assert_eq!(
            again.to_string(),
            "failed to attach XDP to v0: already attached"
        );
        drop(l);
        assert_eq!(
            xdp_state_after(&node, "v0", "native"),
            "none",
            "dropping the loader detaches"
        );

        let mut l = Loader::load().expect("load XDP program");
        l.attach_with_mode("v0", 2, AttachMode::Skb)
            .expect("attach generic");
        assert_eq!(xdp_state(&node, "v0"), "generic");
        l.detach("v0").expect("detach");
        assert_eq!(xdp_state_after(&node, "v0", "generic"), "none");
        l.attach_with_mode("v0", 1, AttachMode::Skb)
            .expect("re-attach generic");
        assert_eq!(xdp_state(&node, "v0"), "generic");
        let e = l.attach("nope0", 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to attach XDP to nope0: no such interface in this network namespace"
        );
        drop(l);
        assert_eq!(xdp_state_after(&node, "v0", "generic"), "none");
    });
}

#[test]
fn detach_all_detaches_every_interface_and_frees_their_slots() {
    require_root();
    let node = Netns::new("da", "n");
    let peer = Netns::new("da", "p");
    veth(
        &node,
        "v0",
        "02:00:00:00:51:01",
        &peer,
        "v1",
        "02:00:00:00:51:02",
    );
    veth(
        &node,
        "v2",
        "02:00:00:00:51:03",
        &peer,
        "v3",
        "02:00:00:00:51:04",
    );
    node.run(|| {
        let mut l = Loader::load().expect("load XDP program");
        l.attach("v0", 2).expect("attach v0");
        l.attach_with_mode("v2", 2, AttachMode::Skb)
            .expect("attach v2");
        let mut closed: Vec<String> = l.detach_all().into_iter().map(|(i, _)| i).collect();
        closed.sort();
        assert_eq!(closed, ["v0", "v2"], "one close per attached interface");
        assert!(l.attached().is_empty(), "{:?}", l.attached());
        assert_eq!(xdp_state_after(&node, "v0", "native"), "none");
        assert_eq!(xdp_state_after(&node, "v2", "generic"), "none");
        // The same loader attaches again: the slots of the detached interfaces are free.
        l.attach("v0", 2).expect("attach v0 again");
        assert_eq!(xdp_state(&node, "v0"), "native");
        drop(l);
        assert_eq!(xdp_state_after(&node, "v0", "native"), "none");
    });
}

fn udp_send(to: &str, payload: &[u8], count: usize) {
    let to: SocketAddr = to.parse().unwrap();
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).unwrap();
    for _ in 0..count {
        s.send_to(payload, to).unwrap();
    }
}

/// A non-first IPv4 or IPv6 fragment (untagged Ethernet).
fn later_fragment(f: &[u8]) -> bool {
    match f.get(12..14) {
        Some([0x08, 0x00]) => f
            .get(20..22)
            .is_some_and(|o| u16::from_be_bytes([o[0], o[1]]) & 0x1fff != 0),
        Some([0x86, 0xdd]) => {
            f.get(20) == Some(&44)
                && f.get(56..58)
                    .is_some_and(|o| u16::from_be_bytes([o[0], o[1]]) & 0xfff8 != 0)
        }
        _ => false,
    }
}

fn delta(after: &Counters, before: &Counters, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

fn count(seen: &[Seen], dst: &str, dport: u16, payload: &[u8]) -> usize {
    let dst: IpAddr = dst.parse().unwrap();
    seen.iter()
        .filter(|s| s.dst_ip == dst && s.dport == dport && s.payload == payload)
        .count()
}

#[test]
fn steers_owned_destinations_and_passes_the_rest() {
    require_root();
    let bed = Bed::new("st");
    let v0 = bed.node.ifindex("v0");
    let node_ip: IpAddr = NODE_V4.into();
    let base_cfg = SteeringConfig {
        pod_ifindexes: vec![],
        prefixes: vec![
            "10.99.0.0/24".parse().unwrap(),
            "fd00:99::/64".parse().unwrap(),
        ],
        host_addrs: vec![node_ip, "fd00:50::1".parse().unwrap()],
        nodeports: vec![
            NodePort {
                addr: node_ip,
                proto: Proto::Udp,
                port: 30053,
            },
            NodePort {
                addr: "fd00:50::1".parse().unwrap(),
                proto: Proto::Udp,
                port: 30053,
            },
        ],
        snat: [node_ip, "fd00:50::1".parse().unwrap()]
            .into_iter()
            .map(|addr| SnatAddr {
                addr,
                first: 61000,
                last: 65535,
            })
            .collect(),
    };
    bed.node.run(|| {
        let mut loader = Loader::load().expect("load");
        loader.attach("v0", 2).expect("attach");
        loader.apply(&base_cfg).expect("apply");
        let mut w = XskWorker::new(
            &test_config(),
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
        .expect("AF_XDP sockets on veth");
        loader
            .register_sockets(w.registrations())
            .expect("register sockets");
        let host = UdpSocket::bind("0.0.0.0:40000").unwrap();
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        // Phase 1: uplink semantics.
        let before = loader.counters().unwrap();
        bed.peer.run(|| {
            // ARP / ND and ICMP to the node's own addresses reach its kernel.
            bed.peer
                .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "192.168.50.1"]);
            bed.peer.exec(&[
                "ping",
                "-6",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                "fd00:50::1",
            ]);
            udp_send("10.99.0.7:9000", b"steer-v4", 5);
            udp_send("[fd00:99::7]:9000", b"steer-v6", 5);
            udp_send("192.168.50.1:30053", b"nodeport", 3);
            udp_send("192.168.50.1:40000", b"host", 3);
            // Datagrams larger than the MTU, fragmented by the peer's kernel (3 fragments
            // each): to a NodePort every fragment is steered, to a host port none is.
            udp_send("192.168.50.1:30053", &[b'f'; 3000], 2);
            udp_send("[fd00:50::1]:30053", &[b'g'; 3000], 1);
            udp_send("192.168.50.1:40000", &[b'h'; 3000], 1);
            // Replies of source-NATed flows: a node IP in the SNAT port range, TCP/UDP only;
            // below the range it is host traffic.
            udp_send("192.168.50.1:61234", b"snat", 3);
            udp_send("[fd00:50::1]:65535", b"snat6", 2);
            udp_send("192.168.50.1:61000", &[b's'; 3000], 1);
            udp_send("192.168.50.1:60999", b"below", 2);
        });
        let frames = drain(&mut w, Duration::from_millis(300));
        let later = frames.iter().filter(|f| later_fragment(f)).count();
        let seen: Vec<Seen> = frames.iter().filter_map(|f| parse(f)).collect();
        let after = loader.counters().unwrap();
        assert_eq!(count(&seen, "10.99.0.7", 9000, b"steer-v4"), 5, "{seen:?}");
        assert_eq!(count(&seen, "fd00:99::7", 9000, b"steer-v6"), 5, "{seen:?}");
        assert_eq!(count(&seen, "192.168.50.1", 30053, b"nodeport"), 3);
        assert_eq!(count(&seen, "192.168.50.1", 61234, b"snat"), 3);
        assert_eq!(count(&seen, "fd00:50::1", 65535, b"snat6"), 2);
        assert_eq!(count(&seen, "192.168.50.1", 60999, b"below"), 0);
        assert_eq!(
            delta(&after, &before, Counter::RedirectSnat),
            3 + 2 + 1,
            "SNAT-range datagrams and a first fragment"
        );
        assert!(
            seen.iter().all(|s| s.dport != 40000),
            "host UDP must not be steered"
        );
        assert!(
            seen.iter().all(|s| s.proto != 1 && s.proto != 58),
            "ICMP goes to the kernel"
        );
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let (n, _) = host.recv_from(&mut buf).expect("kernel receives host UDP");
            assert_eq!(&buf[..n], b"host");
        }
        assert_eq!(delta(&after, &before, Counter::RedirectUplink), 10);
        assert_eq!(
            delta(&after, &before, Counter::RedirectNodePort),
            3 + 2 + 1,
            "small NodePort datagrams and first fragments"
        );
        assert_eq!(
            delta(&after, &before, Counter::RedirectFragment),
            4 * 2,
            "the later fragments follow their first fragment"
        );
        assert_eq!(later, 4 * 2, "later fragments received on the sockets");
        let mut big = [0u8; 4096];
        let (n, _) = host
            .recv_from(&mut big)
            .expect("the kernel reassembles a fragmented host datagram");
        assert_eq!(&big[..n], &[b'h'; 3000][..]);
        assert_eq!(delta(&after, &before, Counter::PassNoSocket), 0);
        assert!(
            delta(&after, &before, Counter::PassNotIp) >= 1,
            "ARP passed"
        );
        assert!(delta(&after, &before, Counter::PassNd) >= 1, "ND passed");
        assert!(
            delta(&after, &before, Counter::PassHost) >= 2 + 2 + 3 + 2,
            "pings + host UDP + below the SNAT range"
        );

        // Phase 2: replace the config: 10.99.0.0/24 withdrawn, 198.51.100.0/24 added.
        let mut cfg2 = base_cfg.clone();
        cfg2.prefixes = vec!["198.51.100.0/24".parse().unwrap()];
        let (_, removed) = loader.apply(&cfg2).expect("apply 2");
        assert_eq!(removed, 2);
        let before = loader.counters().unwrap();
        bed.peer.run(|| {
            udp_send("10.99.0.7:9000", b"withdrawn", 4);
            udp_send("198.51.100.9:9000", b"new", 4);
        });
        let seen: Vec<Seen> = drain(&mut w, Duration::from_millis(300))
            .iter()
            .filter_map(|f| parse(f))
            .collect();
        let after = loader.counters().unwrap();
        assert_eq!(count(&seen, "198.51.100.9", 9000, b"new"), 4);
        assert_eq!(count(&seen, "10.99.0.7", 9000, b"withdrawn"), 0);
        assert_eq!(delta(&after, &before, Counter::PassNotSteered), 4);
        assert_eq!(delta(&after, &before, Counter::RedirectUplink), 4);

        // Phase 3: v0 becomes a pod interface: all its IP traffic is steered, except to the
        // node's own addresses.
        let mut cfg3 = cfg2.clone();
        cfg3.pod_ifindexes = vec![v0];
        cfg3.prefixes.clear();
        loader.apply(&cfg3).expect("apply 3");
        let before = loader.counters().unwrap();
        bed.peer.run(|| {
            udp_send("10.99.0.7:9000", b"pod", 4);
            udp_send("192.168.50.1:40000", b"host", 2);
            bed.peer
                .exec(&["ping", "-c", "1", "-W", "2", "192.168.50.1"]);
        });
        let seen: Vec<Seen> = drain(&mut w, Duration::from_millis(300))
            .iter()
            .filter_map(|f| parse(f))
            .collect();
        let after = loader.counters().unwrap();
        assert_eq!(count(&seen, "10.99.0.7", 9000, b"pod"), 4);
        assert_eq!(delta(&after, &before, Counter::RedirectPod), 4);
        for _ in 0..2 {
            let (n, _) = host.recv_from(&mut buf).expect("kernel receives host UDP");
            assert_eq!(&buf[..n], b"host");
        }
        w.check_accounting().expect("frame accounting");

        // The sockets close (a worker that died): steered traffic goes to the kernel, or is
        // dropped once the loader asks for it, and passes again when asked.
        drop(w);
        let no_socket = |loader: &Loader, label: &[u8]| {
            let before = loader.counters().unwrap();
            bed.peer.run(|| udp_send("10.99.0.7:9000", label, 3));
            std::thread::sleep(Duration::from_millis(200));
            let after = loader.counters().unwrap();
            (
                delta(&after, &before, Counter::PassNoSocket),
                delta(&after, &before, Counter::DropNoSocket),
            )
        };
        assert_eq!(no_socket(&loader, b"no socket, passed"), (3, 0));
        loader.set_no_socket_drop(true).expect("config map");
        assert_eq!(no_socket(&loader, b"no socket, dropped"), (0, 3));
        assert_eq!(loader.counters().unwrap().dropped(), 3);
        loader.set_no_socket_drop(false).expect("config map");
        assert_eq!(no_socket(&loader, b"no socket, passed again"), (3, 0));

        // A config the maps cannot hold is rejected whole; the previous one stays in force.
        let kept = loader.steering().clone();
        let mut too_big = cfg3.clone();
        too_big.host_addrs = (0..1025u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let err = loader.apply(&too_big).unwrap_err();
        assert!(
            err.to_string().starts_with("rejected steering config: "),
            "{err}"
        );
        assert_eq!(loader.steering(), &kept);
    });
}

#[test]
fn frame_accounting_holds_under_forwarding_drops_and_full_tx_rings() {
    require_root();
    let bed = Bed::new("ac");
    veth(
        &bed.node,
        "v2",
        "02:00:00:00:51:01",
        &bed.peer,
        "v3",
        "02:00:00:00:51:02",
    );
    bed.node.run(|| {
        let mut loader = Loader::load().expect("load");
        loader.attach("v0", 2).expect("attach");
        loader.attach("v2", 1).expect("attach");
        loader
            .apply(&SteeringConfig {
                prefixes: vec!["10.99.0.0/24".parse().unwrap()],
                ..SteeringConfig::default()
            })
            .expect("apply");
        let cfg = XskConfig {
            ring_size: 64,
            frames_per_socket: 128,
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
                XskBinding {
                    iface: "v2",
                    queue: 0,
                },
            ],
        )
        .expect("AF_XDP sockets");
        loader
            .register_sockets(w.registrations())
            .expect("register");
        let total = w.accounting().total;
        assert_eq!(total, 3 * 128);
        let out = SocketId(2);

        // Forward two fifths (enough to fill a stalled TX ring below), send a fifth back out
        // where it came from, drop a fifth, release a fifth (recycled, not counted as
        // dropped); check the invariant after every burst. Returns (received, marked Drop,
        // marked Release).
        let run = |w: &mut XskWorker, packets: usize| -> (usize, u64, u64) {
            let stop = AtomicBool::new(false);
            let (mut received, mut dropped, mut released) = (0, 0, 0);
            std::thread::scope(|s| {
                s.spawn(|| {
                    enter(&format!("/run/netns/{}", bed.peer.name));
                    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                    for i in 0..packets {
                        let to = format!("10.99.0.{}:9000", 1 + i % 200);
                        let _ = sock.send_to(&[0x5a; 64], to.parse::<SocketAddr>().unwrap());
                        // Paced in runs of 32 (half the small RX ring): unpaced, a receiver
                        // that other tests keep off the CPU for a moment loses most frames
                        // to a full RX ring before this loop ends.
                        if i % 32 == 31 {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    stop.store(true, Ordering::Release);
                });
                while !stop.load(Ordering::Acquire) {
                    let mut got = 0;
                    for id in [SocketId(0), SocketId(1)] {
                        let mut b = w.rx_burst(id, 64);
                        let n = b.len();
                        got += n;
                        // Frames outside the burst cannot be touched, not even with a length
                        // of 0 (index 64 is past the burst arrays, `n` past the live frames).
                        for i in [n, 64, 1000] {
                            assert!(!b.set_len(i, 0), "set_len({i}) on a burst of {n}");
                            assert_eq!(b.capacity(i), 0);
                            b.set_action(i, Action::Tx(out));
                        }
                        for (i, a) in b.actions_mut().iter_mut().enumerate() {
                            *a = match i % 5 {
                                0 => {
                                    dropped += 1;
                                    Action::Drop
                                }
                                1 | 3 => Action::Tx(out),
                                2 => Action::Tx(id),
                                _ => {
                                    released += 1;
                                    Action::Release
                                }
                            };
                        }
                        b.finish();
                        let acct = w.check_accounting().expect("invariant after a burst");
                        assert_eq!(acct.held, 0);
                    }
                    received += got;
                    if got == 0 {
                        w.wait_rx(5).unwrap();
                    }
                }
            });
            (received, dropped, released)
        };
        let counted = |w: &XskWorker| {
            let (a, b) = (w.stats(SocketId(0)), w.stats(SocketId(1)));
            (a.dropped + b.dropped, a.released + b.released)
        };

        // The peer resolves the node's MAC first: while ARP is pending its kernel would queue
        // only a few of the datagrams below and drop the rest.
        assert!(
            bed.peer
                .exec_ok(&["ping", "-c", "1", "-W", "2", &NODE_V4.to_string()]),
            "the node answers ARP and ping"
        );
        let (received, dropped, released) = run(&mut w, 3000);
        assert!(received > 500, "only {received} frames reached the sockets");
        assert!(w.stats(out).tx > 0);
        assert!(released > 0);
        assert_eq!(
            counted(&w),
            (dropped, released),
            "released frames are not counted as dropped"
        );

        // v2 down: its TX ring stops draining (sendto fails with ENETDOWN), fills up, and
        // further frames for it are dropped and recycled.
        bed.node.ip(&["link", "set", "v2", "down"]);
        let (received, _, _) = run(&mut w, 3000);
        assert!(received > 500);
        let full = w.stats(out).tx_ring_full;
        assert!(
            full > 0,
            "TX ring of a down interface never filled: {:?}",
            w.stats(out)
        );
        let mut ring_full = 0;
        for _ in 0..cfg.ring_size * 2 {
            match w.tx_copy(out, &[0u8; 60]) {
                Ok(()) => {}
                Err(TxError::RingFull) => ring_full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(ring_full > 0);
        let acct = w.check_accounting().expect("invariant with a full TX ring");
        assert!(acct.in_tx >= cfg.ring_size - 1, "{acct:?}");

        // v2 up again: everything queued is sent and every frame comes back.
        bed.node.ip(&["link", "set", "v2", "up"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            w.service();
            let acct = w.check_accounting().expect("invariant while draining");
            if acct.in_tx + acct.in_completion == 0 {
                assert_eq!(acct.free + acct.in_fill + acct.in_rx, total);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "TX frames never completed: {acct:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The fill rings still work: traffic flows again.
        let (received, _, _) = run(&mut w, 500);
        assert!(received > 100);
        w.service();
        let acct = w.check_accounting().expect("final invariant");
        assert_eq!(w.accounting_errors(), 0);
        for id in w.socket_ids() {
            eprintln!("socket {id:?} {:?}: {:?}", w.binding(id), w.stats(id));
        }
        eprintln!("{acct:?}");
    });
}

#[test]
fn reflector_round_trip_with_kernel_clients() {
    require_root();
    let bed = Bed::new("rt");
    bed.node.run(|| {
        let mut loader = Loader::load().expect("load");
        loader.attach("v0", 2).expect("attach");
        loader
            .apply(&SteeringConfig {
                prefixes: vec![
                    "10.99.0.0/24".parse().unwrap(),
                    "fd00:99::/64".parse().unwrap(),
                ],
                ..SteeringConfig::default()
            })
            .expect("apply");
        let mut w = XskWorker::new(
            &test_config(),
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
        .expect("AF_XDP sockets");
        loader
            .register_sockets(w.registrations())
            .expect("register");
        let stop = AtomicBool::new(false);
        let mut reflected = 0;
        std::thread::scope(|s| {
            let client = s.spawn(|| {
                enter(&format!("/run/netns/{}", bed.peer.name));
                let r = std::panic::catch_unwind(|| {
                    let ping4 =
                        bed.peer
                            .exec_ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.7"]);
                    let ping6 = bed.peer.exec_ok(&[
                        "ping",
                        "-6",
                        "-c",
                        "3",
                        "-i",
                        "0.2",
                        "-W",
                        "2",
                        "fd00:99::7",
                    ]);
                    let mut udp = Vec::new();
                    for (bind, to) in [
                        ("0.0.0.0:0", "10.99.0.7:7777"),
                        ("[::]:0", "[fd00:99::7]:7777"),
                    ] {
                        let sock = UdpSocket::bind(bind).unwrap();
                        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let to: SocketAddr = to.parse().unwrap();
                        for i in 0..5u8 {
                            let msg = [b'e', b'c', b'h', b'o', i];
                            sock.send_to(&msg, to).unwrap();
                            let mut buf = [0u8; 32];
                            let ok = match sock.recv_from(&mut buf) {
                                Ok((n, from)) => from == to && buf[..n] == msg,
                                Err(_) => false,
                            };
                            udp.push(ok);
                        }
                    }
                    (ping4, ping6, udp)
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
                        if !reflect(b.frame_mut(i)) {
                            continue;
                        }
                        reflected += 1;
                        if reflected % 2 == 0 {
                            // In place: the received frame goes back out.
                            b.set_action(i, Action::Tx(id));
                        } else {
                            // As a new frame; the received one is recycled.
                            let copy = b.frame(i).to_vec();
                            b.tx_copy(id, &copy).expect("tx_copy");
                        }
                    }
                    b.finish();
                }
                if got == 0 {
                    w.wait_rx(5).unwrap();
                }
            }
            let (ping4, ping6, udp) = client.join().unwrap();
            assert!(ping4, "ping 10.99.0.7 through the AF_XDP reflector failed");
            assert!(
                ping6,
                "ping -6 fd00:99::7 through the AF_XDP reflector failed"
            );
            assert!(udp.iter().all(|&ok| ok), "UDP echoes: {udp:?}");
        });
        // The peer sends at default offloads: its UDP datagrams come with partial checksums,
        // and only their completion let the echoes above through.
        let completed = common::COMPLETED.load(Ordering::Relaxed);
        assert!(completed >= 10, "partial checksums completed: {completed}");
        assert!(reflected >= 3 + 3 + 10, "reflected {reflected}");
        w.service();
        w.check_accounting().expect("accounting");
    });
}

#[test]
fn rebinding_right_after_close_succeeds() {
    require_root();
    let bed = Bed::new("rb");
    bed.node.run(|| {
        let mut loader = Loader::load().expect("load");
        loader.attach("v0", 2).expect("attach");
        let bindings = [
            XskBinding {
                iface: "v0",
                queue: 0,
            },
            XskBinding {
                iface: "v0",
                queue: 1,
            },
        ];
        // The kernel may still be tearing the previous socket down (EBUSY): binding retries.
        for round in 0..5 {
            let w = XskWorker::new(&test_config(), &bindings)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            loader
                .register_sockets(w.registrations())
                .expect("register");
            drop(w);
        }
        let dup = XskWorker::new(&test_config(), &[bindings[0], bindings[0]]).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "failed to bind AF_XDP socket to v0 queue 0: listed twice"
        );
        let missing = XskWorker::new(
            &test_config(),
            &[XskBinding {
                iface: "nope0",
                queue: 0,
            }],
        )
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("failed to bind AF_XDP socket to nope0 queue 0: "),
            "{missing}"
        );
    });
}
