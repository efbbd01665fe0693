//! Frames with partial (CHECKSUM_PARTIAL) TCP/UDP checksums, as Linux pods at default offloads
//! send them on veth, through the pipeline of the example node: DNAT to a backend, reverse NAT
//! of the reply and plain pod-to-pod routing, TCP and UDP, IPv4 and IPv6, first packets (full
//! path) and established ones (fast path). smoltcp verifies every output checksum.
//!
//! ```text
//!  client 10.244.1.10 / fd00:244:1::10 ── pod-client ─┐
//!                                                      nodeplane ─ pod-web1 ── web-1 .21 / ::21
//!  web  ClusterIP 10.96.0.10:80/tcp, fd00:96::10:80/tcp → web-1/web-2 :8080
//!  dns  ClusterIP 10.96.0.53:53/udp (+ fd00:96::53:53/udp added here) → web-1/web-2 :5353
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::PacketBuilder;
use nodeplane_dataplane::csum;
use nodeplane_dataplane::parse::{parse, Parsed};
use nodeplane_dataplane::{Action, MaglevCache, Pipeline, Tables};
use nodeplane_state::{example, Backend, BackendState, Frontend, L4Proto};
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

const S: u64 = 1_000_000_000;
const TCP: u8 = 6;

fn pipeline() -> Pipeline {
    let mut s = example::state().unwrap();
    let dns = s.services.iter_mut().find(|x| x.name == "dns").unwrap();
    dns.frontends.push(Frontend {
        ip: "fd00:96::53".parse().unwrap(),
        port: 53,
        protocol: L4Proto::UDP,
    });
    for ip in ["fd00:244:1::21", "fd00:244:1::22"] {
        dns.backends.push(Backend {
            ip: ip.parse().unwrap(),
            port: 5353,
            weight: 1,
            state: BackendState::Active,
            ready: None,
            serving: None,
            terminating: None,
        });
    }
    Pipeline::new(Arc::new(Tables::build(&s, 1, &mut MaglevCache::default())))
}

/// TCP flags of a built segment.
#[derive(Clone, Copy)]
enum Seg {
    Syn,
    SynAck,
    Ack,
}

fn frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, seg: Seg) -> Vec<u8> {
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 13 + 5) as u8).collect();
    let payload = if matches!(seg, Seg::Ack) || proto != TCP {
        &payload[..]
    } else {
        &payload[..0]
    };
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x0a], [2, 0, 0, 0, 1, 1]);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut f = Vec::new();
    if proto == TCP {
        let t = b.tcp(sport, dport, 100, 65000);
        let t = match seg {
            Seg::Syn => t.syn(),
            Seg::SynAck => t.syn().ack(101),
            Seg::Ack => t.ack(101),
        };
        t.write(&mut f, payload).unwrap();
    } else {
        b.udp(sport, dport).write(&mut f, payload).unwrap();
    }
    f
}

fn l4_field(f: &[u8]) -> usize {
    let Ok(Parsed::Ip(m)) = parse(f) else {
        panic!("not ip")
    };
    usize::from(m.l4_off) + if m.proto == TCP { 16 } else { 6 }
}

/// Overwrites the L4 checksum with what a Linux sender with TX checksum offload leaves there:
/// `~csum_tcpudp_magic(saddr, daddr, len, proto, 0)`, the folded pseudo-header sum.
fn make_partial(f: &mut [u8]) {
    let Ok(Parsed::Ip(m)) = parse(f) else {
        panic!("not ip")
    };
    let len = usize::from(m.ip_end - m.l4_off);
    let p = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, len);
    csum::put16(f, l4_field(f), csum::fold64(p));
}

/// (src, dst, sport, dport) of an output frame and whether its L4 checksum verifies.
type Seen = (IpAddr, IpAddr, u16, u16, bool);

/// [`Seen`] of a frame, the checksum verified by smoltcp (independent of the pipeline).
fn inspect(f: &[u8]) -> Seen {
    let Ok(Parsed::Ip(m)) = parse(f) else {
        panic!("not ip")
    };
    let l3 = &f[usize::from(m.l3_off)..usize::from(m.ip_end)];
    let (s, d, payload) = if m.v6 {
        let ip = Ipv6Packet::new_checked(l3).unwrap();
        (
            IpAddress::Ipv6(ip.src_addr()),
            IpAddress::Ipv6(ip.dst_addr()),
            ip.payload(),
        )
    } else {
        let ip = Ipv4Packet::new_checked(l3).unwrap();
        assert!(ip.verify_checksum(), "IPv4 header checksum");
        (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
            ip.payload(),
        )
    };
    let ok = if m.proto == TCP {
        TcpPacket::new_checked(payload)
            .unwrap()
            .verify_checksum(&s, &d)
    } else {
        UdpPacket::new_checked(payload)
            .unwrap()
            .verify_checksum(&s, &d)
    };
    let ip = |a: IpAddress| -> IpAddr {
        match a {
            IpAddress::Ipv4(a) => IpAddr::V4(a),
            IpAddress::Ipv6(a) => IpAddr::V6(a),
        }
    };
    (ip(s), ip(d), m.sport, m.dport, ok)
}

/// How the test frames' checksums are written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Check {
    Partial,
    Full,
    Garbage,
}

struct Case {
    client: &'static str,
    vip: &'static str,
    vport: u16,
    web1: &'static str,
    bport: u16,
    proto: u8,
}

const CASES: [Case; 4] = [
    Case {
        client: "10.244.1.10",
        vip: "10.96.0.10",
        vport: 80,
        web1: "10.244.1.21",
        bport: 8080,
        proto: TCP,
    },
    Case {
        client: "fd00:244:1::10",
        vip: "fd00:96::10",
        vport: 80,
        web1: "fd00:244:1::21",
        bport: 8080,
        proto: TCP,
    },
    Case {
        client: "10.244.1.10",
        vip: "10.96.0.53",
        vport: 53,
        web1: "10.244.1.21",
        bport: 5353,
        proto: 17,
    },
    Case {
        client: "fd00:244:1::10",
        vip: "fd00:96::53",
        vport: 53,
        web1: "fd00:244:1::21",
        bport: 5353,
        proto: 17,
    },
];

/// Runs one frame through the pipeline after writing its checksum the `check` way; returns the
/// output frame (forwarded) and whether the checksum was completed.
fn run(p: &mut Pipeline, mut f: Vec<u8>, iface: &str, check: Check, now: u64) -> (Vec<u8>, Action) {
    match check {
        Check::Partial => make_partial(&mut f),
        Check::Full => {}
        Check::Garbage => {
            let off = l4_field(&f);
            f[off] ^= 0x5a;
        }
    }
    let i = p.tables().iface_index(iface).unwrap();
    let o = p.process_one(&mut f, i, now);
    (f, o.action)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Client → VIP (DNAT), backend → client (reverse NAT), client → web-1 (plain routing); three
/// packets each way so that the established fast path runs too. Returns every output's
/// (src, dst, sport, dport, verifies).
fn conversation(c: &Case, check: Check) -> (Vec<Seen>, u64) {
    let mut p = pipeline();
    let mut seen = Vec::new();
    let mut now = S;
    let mut t = |p: &mut Pipeline, f: Vec<u8>, iface: &str| {
        now += 1000;
        let (out, action) = run(p, f, iface, check, now);
        assert!(matches!(action, Action::Forward(_)), "{action:?} {check:?}");
        let i = inspect(&out);
        seen.push(i);
        i
    };
    let client = ip(c.client);
    let segs = [Seg::Syn, Seg::Ack, Seg::Ack];
    let replies = [Seg::SynAck, Seg::Ack, Seg::Ack];
    // Through the service.
    let mut backend = None;
    for (k, (seg, reply)) in segs.into_iter().zip(replies).enumerate() {
        let (_, dst, _, dport, _) = t(
            &mut p,
            frame(client, ip(c.vip), 40000, c.vport, c.proto, seg),
            "pod-client",
        );
        assert_eq!(dport, c.bport);
        assert!(backend.is_none_or(|b| b == dst), "one backend per flow");
        backend = Some(dst);
        let be_iface = if dst.to_string().ends_with("21") {
            "pod-web1"
        } else {
            "pod-web2"
        };
        let (src, dst2, sport, _, _) = t(
            &mut p,
            frame(dst, client, c.bport, 40000, c.proto, reply),
            be_iface,
        );
        assert_eq!(
            (src, dst2, sport),
            (ip(c.vip), client, c.vport),
            "reply {k}"
        );
    }
    // Pod to pod, no translation.
    for (seg, reply) in segs.into_iter().zip(replies) {
        let web1 = ip(c.web1);
        let (_, dst, _, dport, _) = t(
            &mut p,
            frame(client, web1, 41000, c.bport, c.proto, seg),
            "pod-client",
        );
        assert_eq!((dst, dport), (web1, c.bport));
        t(
            &mut p,
            frame(web1, client, c.bport, 41000, c.proto, reply),
            "pod-web1",
        );
    }
    let completed = p.counters().csum_completed;
    (seen, completed)
}

#[test]
fn partial_checksums_leave_complete_through_dnat_reverse_nat_and_routing() {
    for c in &CASES {
        let (seen, completed) = conversation(c, Check::Partial);
        assert_eq!(seen.len(), 12);
        for (k, s) in seen.iter().enumerate() {
            assert!(
                s.4,
                "{} proto {}: output {k} {s:?} does not verify",
                c.client, c.proto
            );
        }
        assert_eq!(completed, 12, "{} proto {}", c.client, c.proto);
    }
}

#[test]
fn full_checksums_stay_valid_and_are_not_counted() {
    for c in &CASES {
        let (seen, completed) = conversation(c, Check::Full);
        assert!(seen.iter().all(|s| s.4), "{} proto {}", c.client, c.proto);
        assert_eq!(completed, 0);
    }
}

/// A checksum that is neither valid nor partial is forwarded as before: updated
/// incrementally, so still wrong for the receiver to drop, and not counted.
#[test]
fn garbage_checksums_are_forwarded_as_before() {
    for c in &CASES {
        let (seen, completed) = conversation(c, Check::Garbage);
        assert_eq!(seen.len(), 12);
        assert!(seen.iter().all(|s| !s.4), "{} proto {}", c.client, c.proto);
        assert_eq!(completed, 0);
    }
}

/// Completion then NAT gives the same bytes as NAT of the same frame sent with a full
/// checksum: the order is right, and nothing else changes.
#[test]
fn a_completed_frame_leaves_as_its_full_checksum_twin_would() {
    for c in &CASES {
        let client = ip(c.client);
        for seg in [Seg::Syn, Seg::Ack] {
            let f = frame(client, ip(c.vip), 40000, c.vport, c.proto, seg);
            let (full, _) = run(&mut pipeline(), f.clone(), "pod-client", Check::Full, S);
            let (part, _) = run(&mut pipeline(), f, "pod-client", Check::Partial, S);
            assert_eq!(full, part, "{} proto {}", c.client, c.proto);
        }
    }
}
