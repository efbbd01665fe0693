//! The established fast lane (`pipeline/lane4.rs`) against the general path, frame for frame:
//! two pipelines over the same tables get the same packets; one parses them itself (the lane
//! takes the common IPv4 frames), the other is handed each frame's parse (a carried parse skips
//! the lane: `established_fast` or the full path decide). Every output byte and every outcome
//! must agree, for DNAT and reverse NAT (TCP, UDP, UDP without checksum), source NAT,
//! pod-to-pod without NAT, partial checksums, state changes (FIN) and TTL expiry.
//!
//! ```text
//!  router ── uplink0 ─┐  node-1 (192.168.100.2)  ┌─ pod-client ── client 10.244.1.10
//!                     └──────── nodeplane ───────┼─ pod-web1   ── web-1  10.244.1.21
//!                                                └─ pod-web2   ── web-2  10.244.1.22
//!  web 10.96.0.10:80/tcp, dns 10.96.0.53:53/udp (example node); web-nodeport 30080/tcp →
//!  10.244.2.5:8080 on node-2 (masqueraded to the node IP)
//! ```

use std::sync::Arc;

use etherparse::PacketBuilder;
use nodeplane_dataplane::parse::parse;
use nodeplane_dataplane::{Action, MaglevCache, Outcome, Packet, Pipeline, Tables};
use nodeplane_state::State;

mod common;
use common::{remote_nodeport, REMOTE};

const CLIENT: [u8; 4] = [10, 244, 1, 10];
const WEB1: [u8; 4] = [10, 244, 1, 21];
const VIP: [u8; 4] = [10, 96, 0, 10];
const DNS: [u8; 4] = [10, 96, 0, 53];
const WORLD: [u8; 4] = [198, 51, 100, 7];
const NODE: [u8; 4] = [192, 168, 100, 2];
const S: u64 = 1_000_000_000;

/// The example node, `web-nodeport`'s only backend on another node (source NAT).
fn state() -> State {
    remote_nodeport(|_| {})
}

#[derive(Clone, Copy)]
enum L4 {
    Tcp { syn: bool, ack: bool, fin: bool },
    Udp,
}

fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, l4: L4, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 1, 0]).ipv4(src, dst, ttl);
    let mut f = Vec::new();
    match l4 {
        L4::Tcp { syn, ack, fin } => {
            let mut b = b.tcp(sport, dport, 100, 65000);
            if syn {
                b = b.syn();
            }
            if ack {
                b = b.ack(1);
            }
            if fin {
                b = b.fin();
            }
            b.write(&mut f, b"payload bytes").unwrap();
        }
        L4::Udp => b.udp(sport, dport).write(&mut f, b"query").unwrap(),
    }
    f
}

const SYN: L4 = L4::Tcp {
    syn: true,
    ack: false,
    fin: false,
};
const SYNACK: L4 = L4::Tcp {
    syn: true,
    ack: true,
    fin: false,
};
const ACK: L4 = L4::Tcp {
    syn: false,
    ack: true,
    fin: false,
};
const FIN: L4 = L4::Tcp {
    syn: false,
    ack: true,
    fin: true,
};

/// Two pipelines over the same tables: `lane` parses itself, `general` is handed the parse.
struct Twins {
    lane: Pipeline,
    general: Pipeline,
}

impl Twins {
    fn new() -> Twins {
        let s = state();
        let t = Arc::new(Tables::build(&s, 1, &mut MaglevCache::default()));
        Twins {
            lane: Pipeline::new(Arc::clone(&t)),
            general: Pipeline::new(t),
        }
    }

    fn iface(&self, name: &str) -> u16 {
        self.lane.tables().iface_index(name).unwrap()
    }

    /// Runs `f` through both; asserts the same bytes and outcome; returns them.
    fn run(&mut self, f: &[u8], iface: u16, ts: u64) -> (Vec<u8>, Outcome) {
        let mut a = f.to_vec();
        let mut b = f.to_vec();
        let mut oa = [Outcome::default()];
        let mut ob = [Outcome::default()];
        let parsed = parse(&b);
        self.lane.process_burst(
            &mut [Packet {
                data: &mut a,
                iface,
                ts,
                tag: 0,
                parsed: None,
            }],
            &mut oa,
        );
        self.general.process_burst(
            &mut [Packet {
                data: &mut b,
                iface,
                ts,
                tag: 0,
                parsed: Some(parsed),
            }],
            &mut ob,
        );
        assert_eq!(a, b, "bytes differ for {f:02x?}");
        assert_eq!(format!("{:?}", oa[0]), format!("{:?}", ob[0]), "outcome");
        assert_eq!(self.lane.tuples(1), self.general.tuples(1), "5-tuple");
        (a, oa[0])
    }
}

impl Twins {
    /// Runs `frames` as one burst through both (the lane's twin parsing itself); asserts the
    /// same bytes and outcomes frame for frame and the same counters.
    fn run_burst(&mut self, frames: &[(Vec<u8>, u16, u64)]) -> Vec<Outcome> {
        let mut a: Vec<Vec<u8>> = frames.iter().map(|f| f.0.clone()).collect();
        let mut b = a.clone();
        let mut oa = vec![Outcome::default(); frames.len()];
        let mut ob = oa.clone();
        let mut pa: Vec<Packet<'_>> = a
            .iter_mut()
            .zip(frames)
            .map(|(d, f)| Packet {
                data: d,
                iface: f.1,
                ts: f.2,
                tag: 0,
                parsed: None,
            })
            .collect();
        let mut pb: Vec<Packet<'_>> = b
            .iter_mut()
            .zip(frames)
            .map(|(d, f)| {
                let parsed = Some(parse(d));
                Packet {
                    data: d,
                    iface: f.1,
                    ts: f.2,
                    tag: 0,
                    parsed,
                }
            })
            .collect();
        self.lane.process_burst(&mut pa, &mut oa);
        self.general.process_burst(&mut pb, &mut ob);
        drop((pa, pb));
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "bytes differ for frame {k}");
            assert_eq!(
                format!("{:?}", oa[k]),
                format!("{:?}", ob[k]),
                "outcome {k}"
            );
        }
        assert_eq!(
            format!("{:?}", self.lane.counters()),
            format!("{:?}", self.general.counters())
        );
        oa
    }
}

fn forwarded(o: &Outcome) -> u16 {
    match o.action {
        Action::Forward(e) => e,
        a => panic!("not forwarded: {a:?}"),
    }
}

/// The backend address an outcome names, as IPv4 bytes.
fn backend(o: &Outcome) -> ([u8; 4], u16) {
    let (a, p) = o.backend.expect("a service flow");
    (a.bytes[..4].try_into().unwrap(), p)
}

#[test]
fn clusterip_tcp_both_directions_and_its_end() {
    let mut t = Twins::new();
    let pc = t.iface("pod-client");
    let (_, o) = t.run(&frame(CLIENT, VIP, 40000, 80, SYN, 64), pc, S);
    let eg = forwarded(&o);
    let (b, bp) = backend(&o);
    t.run(&frame(b, CLIENT, bp, 40000, SYNACK, 64), eg, S + 1);
    for i in 0..4 {
        // Established both ways: the lane's packets.
        let (_, o) = t.run(&frame(CLIENT, VIP, 40000, 80, ACK, 64), pc, S + 2 + i);
        assert_eq!(forwarded(&o), eg);
        let (out, o) = t.run(
            &frame(b, CLIENT, bp, 40000, ACK, 64 - i as u8),
            eg,
            S + 2 + i,
        );
        assert_eq!(forwarded(&o), pc);
        assert_eq!(&out[26..30], &VIP, "reverse NAT");
    }
    // TTL 1: expired, on neither path forwarded.
    let (_, o) = t.run(&frame(CLIENT, VIP, 40000, 80, ACK, 1), pc, S + 10);
    assert!(matches!(o.action, Action::Drop(_)), "{o:?}");
    // A FIN leaves the lane; the packets after it too.
    t.run(&frame(CLIENT, VIP, 40000, 80, FIN, 64), pc, S + 11);
    t.run(&frame(b, CLIENT, bp, 40000, FIN, 64), eg, S + 12);
    t.run(&frame(CLIENT, VIP, 40000, 80, ACK, 64), pc, S + 13);
}

#[test]
fn clusterip_udp_with_and_without_checksum() {
    let mut t = Twins::new();
    let pc = t.iface("pod-client");
    let (_, o) = t.run(&frame(CLIENT, DNS, 5000, 53, L4::Udp, 64), pc, S);
    let eg = forwarded(&o);
    let (b, bp) = backend(&o);
    for i in 0..3 {
        t.run(&frame(b, CLIENT, bp, 5000, L4::Udp, 64), eg, S + 1 + i);
        let mut q = frame(CLIENT, DNS, 5000, 53, L4::Udp, 64);
        let (out, _) = t.run(&q, pc, S + 1 + i);
        assert_eq!(&out[30..34], &b, "DNAT");
        // UDP over IPv4 without a checksum (0) keeps none.
        q[40..42].copy_from_slice(&[0, 0]);
        let (out, _) = t.run(&q, pc, S + 1 + i);
        assert_eq!(&out[40..42], &[0, 0]);
    }
}

#[test]
fn pod_to_pod_without_nat_and_partial_checksums() {
    let mut t = Twins::new();
    let pc = t.iface("pod-client");
    let (_, o) = t.run(&frame(CLIENT, WEB1, 41000, 8080, SYN, 64), pc, S);
    let eg = forwarded(&o);
    t.run(&frame(WEB1, CLIENT, 8080, 41000, SYNACK, 64), eg, S + 1);
    // The first ACK establishes the connection (the general path); the next ones take the lane.
    for i in 0..3 {
        let (out, o) = t.run(&frame(CLIENT, WEB1, 41000, 8080, ACK, 64), pc, S + 2 + i);
        assert_eq!(forwarded(&o), eg);
        assert_eq!(out[22], 63, "TTL decremented");
        t.run(&frame(WEB1, CLIENT, 8080, 41000, ACK, 64), eg, S + 2 + i);
    }
    // A partial checksum (the pseudo-header sum only, as a pod at default offloads sends):
    // completed on the general path, so the lane must leave it there.
    let mut f = frame(CLIENT, WEB1, 41000, 8080, ACK, 64);
    let len = (f.len() - 34) as u32;
    let pseudo = [CLIENT, WEB1]
        .iter()
        .map(|a| {
            u32::from(u16::from_be_bytes([a[0], a[1]]))
                + u32::from(u16::from_be_bytes([a[2], a[3]]))
        })
        .sum::<u32>()
        + 6
        + len;
    let folded = (pseudo & 0xffff) + (pseudo >> 16);
    let folded = ((folded & 0xffff) + (folded >> 16)) as u16;
    f[50..52].copy_from_slice(&folded.to_be_bytes());
    let (out, _) = t.run(&f, pc, S + 3);
    assert_ne!(&out[50..52], &folded.to_be_bytes(), "completed");
    assert_eq!(t.lane.counters().csum_completed, 1);
}

#[test]
fn nodeport_with_source_nat_both_directions() {
    let mut t = Twins::new();
    let up = t.iface("uplink0");
    let (out, o) = t.run(&frame(WORLD, NODE, 50000, 30080, SYN, 64), up, S);
    let eg = forwarded(&o);
    let (b, bp) = backend(&o);
    assert_eq!(b, REMOTE);
    assert_eq!(&out[26..30], &NODE, "masqueraded to the node IP");
    let sport = u16::from_be_bytes([out[34], out[35]]);
    t.run(&frame(REMOTE, NODE, bp, sport, SYNACK, 64), eg, S + 1);
    for i in 0..3 {
        let (out, _) = t.run(&frame(WORLD, NODE, 50000, 30080, ACK, 64), up, S + 2 + i);
        assert_eq!(&out[26..30], &NODE);
        let (out, _) = t.run(&frame(REMOTE, NODE, bp, sport, ACK, 64), eg, S + 2 + i);
        assert_eq!(&out[30..34], &WORLD, "back to the client");
    }
}

/// One burst holding a flow's lane packets around its FIN and after it (and another flow's):
/// the lane's run stops at the first frame it does not take and every frame is decided in its
/// turn, so the burst gives what the general path gives frame by frame.
#[test]
fn a_burst_keeps_each_flows_order_across_the_lane_and_the_general_path() {
    let mut t = Twins::new();
    let pc = t.iface("pod-client");
    let (_, o) = t.run(&frame(CLIENT, VIP, 40000, 80, SYN, 64), pc, S);
    let eg = forwarded(&o);
    let (b, bp) = backend(&o);
    t.run(&frame(b, CLIENT, bp, 40000, SYNACK, 64), eg, S + 1);
    let (_, o) = t.run(&frame(CLIENT, WEB1, 41000, 8080, SYN, 64), pc, S + 1);
    let eg2 = forwarded(&o);
    t.run(&frame(WEB1, CLIENT, 8080, 41000, SYNACK, 64), eg2, S + 1);
    // Both flows established both ways (their first ACKs record the fast paths).
    for i in 0..2 {
        t.run(&frame(CLIENT, VIP, 40000, 80, ACK, 64), pc, S + 2 + i);
        t.run(&frame(b, CLIENT, bp, 40000, ACK, 64), eg, S + 2 + i);
        t.run(&frame(CLIENT, WEB1, 41000, 8080, ACK, 64), pc, S + 2 + i);
        t.run(&frame(WEB1, CLIENT, 8080, 41000, ACK, 64), eg2, S + 2 + i);
    }
    let burst = vec![
        (frame(CLIENT, VIP, 40000, 80, ACK, 64), pc, S + 5),
        (frame(b, CLIENT, bp, 40000, ACK, 64), eg, S + 5),
        (frame(CLIENT, WEB1, 41000, 8080, ACK, 64), pc, S + 5),
        (frame(CLIENT, VIP, 40000, 80, FIN, 64), pc, S + 5),
        (frame(b, CLIENT, bp, 40000, ACK, 64), eg, S + 5),
        (frame(WEB1, CLIENT, 8080, 41000, ACK, 64), eg2, S + 5),
        (frame(b, CLIENT, bp, 40000, FIN, 64), eg, S + 5),
        (frame(CLIENT, VIP, 40000, 80, ACK, 64), pc, S + 5),
        (frame(CLIENT, WEB1, 41000, 8080, ACK, 1), pc, S + 5),
        (frame(CLIENT, WEB1, 41000, 8080, ACK, 64), pc, S + 5),
    ];
    let o = t.run_burst(&burst);
    assert_eq!(o.len(), burst.len());
    assert!(matches!(o[8].action, Action::Drop(_)), "TTL 1: {:?}", o[8]);
    assert_eq!(forwarded(&o[9]), eg2);
}
