//! The pipeline against the example node (`examples/state/`), with built frames.
//!
//! ```text
//!  router ── uplink0 ─┐  node-1 (192.168.100.2)  ┌─ pod-client ── client 10.244.1.10 (id 1001)
//!                     └──────── nodeplane ───────┼─ pod-web1   ── web-1  10.244.1.21 (id 1002)
//!                                                └─ pod-web2   ── web-2  10.244.1.22 (id 1002)
//!  web      ClusterIP 10.96.0.10:80/tcp  → web-1:8080, web-2:8080 (maglev)
//!  nodeport 30080/tcp on node IPs        → web-1:8080, web-2:8080 (ClientIP affinity)
//! ```

use std::ops::Range;
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use nodeplane_dataplane::wire::{at, ethernet, ipv4};
use nodeplane_dataplane::{
    Action, CtStatus, DropReason, MaglevCache, Outcome, Pipeline, PolicyVerdict, Tables,
};
use nodeplane_state::{example, BackendState, PolicyMode, State};

/// Untagged IPv4 frames: where the header starts and its addresses sit.
const L3: usize = ethernet::HEADER_LEN;
const SRC4: Range<usize> = at(L3, ipv4::SRC_ADDR);
const DST4: Range<usize> = at(L3, ipv4::DST_ADDR);

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT: [u8; 4] = [10, 244, 1, 10];
const VIP: [u8; 4] = [10, 96, 0, 10];
const S: u64 = 1_000_000_000;

fn tables(state: &State, gen: u64) -> Arc<Tables> {
    Arc::new(Tables::build(state, gen, &mut MaglevCache::default()))
}

fn pipeline() -> (Pipeline, State) {
    let s = example::state().unwrap();
    (Pipeline::new(tables(&s, 1)), s)
}

fn iface(p: &Pipeline, name: &str) -> u16 {
    p.tables().iface_index(name).unwrap()
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 100, 65000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut f = Vec::new();
    b.write(&mut f, b"GET / HTTP/1.1\r\n").unwrap();
    f
}

/// (src, dst, sport, dport) of a frame, with its checksums verified.
fn addrs(f: &[u8]) -> (String, String, u16, u16) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let hdr = h.to_header();
            assert_eq!(
                hdr.header_checksum,
                hdr.calc_header_checksum(),
                "IPv4 checksum"
            );
            (
                h.source_addr().to_string(),
                h.destination_addr().to_string(),
            )
        }
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
        ),
        _ => panic!("no ip"),
    };
    let (sp, dp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (src, dst, sp, dp)
}

fn fwd(o: &Outcome) -> u16 {
    match o.action {
        Action::Forward(e) => e,
        a => panic!("expected forward, got {a:?} ({o:?})"),
    }
}

#[test]
fn clusterip_dnat_and_reverse_nat() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut syn = tcp4(CLIENT, VIP, 40000, 80, true, false);
    let o = p.process_one(&mut syn, pc, S);
    let eg = fwd(&o);
    assert_eq!(o.ct, CtStatus::New);
    assert_eq!(o.policy, PolicyVerdict::Allow);
    let (src, dst, sp, dp) = addrs(&syn);
    assert_eq!((src.as_str(), sp, dp), ("10.244.1.10", 40000, 8080));
    assert!(dst == "10.244.1.21" || dst == "10.244.1.22");
    let backend_iface = p.tables().ifaces[usize::from(eg)].name.clone();
    assert_eq!(
        backend_iface,
        if dst.ends_with(".21") {
            "pod-web1"
        } else {
            "pod-web2"
        }
    );
    // Source MAC is the egress interface's, destination the endpoint's.
    assert_eq!(
        &syn[ethernet::SRC_MAC],
        &p.tables().ifaces[usize::from(eg)].mac
    );

    // The backend's SYN-ACK comes back with the VIP restored.
    let b: [u8; 4] = dst.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let mut synack = tcp4(b, CLIENT, 8080, 40000, true, true);
    let o = p.process_one(&mut synack, eg, S + 1);
    assert_eq!(fwd(&o), pc);
    assert_eq!(o.ct, CtStatus::Reply);
    assert_eq!(
        addrs(&synack),
        ("10.96.0.10".into(), "10.244.1.10".into(), 80, 40000)
    );
    assert_eq!(&synack[ethernet::DST_MAC], &CLIENT_MAC);

    let mut ack = tcp4(CLIENT, VIP, 40000, 80, false, true);
    let o = p.process_one(&mut ack, pc, S + 2);
    assert_eq!(o.ct, CtStatus::Established);
    assert_eq!(addrs(&ack).1, dst);
}

/// `explain`'s scratch copies: one built on an earlier copy's buffers (whose flow cache holds
/// cells of that copy's slots) decides a packet exactly as a fresh one, sees the live flow it
/// was given, and leaves the live pipeline untouched.
#[test]
fn scratch_copies_on_reused_buffers_decide_as_fresh_ones() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut syn = tcp4(CLIENT, VIP, 40000, 80, true, false);
    let live = p.process_one(&mut syn, pc, S);
    assert_eq!(live.ct, CtStatus::New);
    let flows = p.conntrack().len();
    let key = p.conntrack().iter().next().expect("the live flow").orig();
    let explain = |p: &Pipeline, reuse, keys: &[_], sport| {
        let mut s = p.scratch(keys, S + 1, reuse);
        let mut f = tcp4(CLIENT, VIP, sport, 80, false, true);
        let o = s.process_one(&mut f, pc, S + 1);
        (o.ct, o.policy, addrs(&f), s.into_buffers())
    };
    // The established flow, fresh and then on reused buffers, twice.
    let (ct0, pol0, a0, b) = explain(&p, None, &[key], 40000);
    assert_eq!(
        ct0,
        CtStatus::Established,
        "the scratch copy has the live flow"
    );
    let (ct1, pol1, a1, b) = explain(&p, Some(b), &[key], 40000);
    let (ct2, pol2, a2, b) = explain(&p, Some(b), &[key], 40000);
    assert_eq!((ct1, pol1, &a1), (ct0, pol0, &a0));
    assert_eq!((ct2, pol2, &a2), (ct0, pol0, &a0));
    // Without the flow (another source port): a new one, on the same buffers.
    let (ct3, _, _, _) = explain(&p, Some(b), &[], 40001);
    assert_eq!(ct3, CtStatus::New);
    assert_eq!(
        p.conntrack().len(),
        flows,
        "the live conntrack is untouched"
    );
}

#[test]
fn spoofed_source_is_dropped() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut f = tcp4([10, 244, 1, 21], VIP, 1, 80, true, false);
    let o = p.process_one(&mut f, pc, S);
    assert_eq!(o.action, Action::Drop(DropReason::SpoofedSource));
    assert_eq!(p.counters().drops[DropReason::SpoofedSource as usize], 1);
}

#[test]
fn policy_denies_port_range_and_audit_forwards() {
    let (mut p, mut s) = pipeline();
    let pc = iface(&p, "pod-client");
    // client → web-1:9050 is in the deny range 9000-9100.
    let mut f = tcp4(CLIENT, [10, 244, 1, 21], 41000, 9050, true, false);
    let o = p.process_one(&mut f, pc, S);
    assert_eq!(o.action, Action::Drop(DropReason::PolicyDenied));
    assert_eq!(o.policy, PolicyVerdict::Deny);
    // Port 7000 matches no allow rule: default deny.
    let mut f = tcp4(CLIENT, [10, 244, 1, 21], 41001, 7000, true, false);
    assert_eq!(
        p.process_one(&mut f, pc, S).action,
        Action::Drop(DropReason::PolicyDenied)
    );
    s.node.policy_mode = PolicyMode::Audit;
    p.set_tables(tables(&s, 2));
    let mut f = tcp4(CLIENT, [10, 244, 1, 21], 41002, 9050, true, false);
    let o = p.process_one(&mut f, pc, 2 * S);
    assert_eq!(o.policy, PolicyVerdict::Audit);
    fwd(&o);
    s.node.policy_mode = PolicyMode::AllowAll;
    p.set_tables(tables(&s, 3));
    let mut f = tcp4(CLIENT, [10, 244, 1, 21], 41003, 9050, true, false);
    let o = p.process_one(&mut f, pc, 3 * S);
    assert_eq!(o.policy, PolicyVerdict::None);
    fwd(&o);
}

#[test]
fn nodeport_from_uplink_and_no_backend() {
    let (mut p, mut s) = pipeline();
    let up = iface(&p, "uplink0");
    let mut f = tcp4(
        [198, 51, 100, 7],
        [192, 168, 100, 2],
        50000,
        30080,
        true,
        false,
    );
    let o = p.process_one(&mut f, up, S);
    fwd(&o);
    assert_eq!(o.src_identity, Some(2), "world");
    let (_, dst, _, dp) = addrs(&f);
    assert!(dst.starts_with("10.244.1.2"), "{dst}");
    assert_eq!(dp, 8080);

    // Host traffic to the node IP on another port stays with the kernel.
    let mut ssh = tcp4(
        [198, 51, 100, 7],
        [192, 168, 100, 2],
        50001,
        22,
        true,
        false,
    );
    assert_eq!(p.process_one(&mut ssh, up, S).action, Action::Pass);

    // Every backend quarantined: no backend for new flows, existing flow ends.
    for svc in &mut s.services {
        for b in &mut svc.backends {
            b.state = BackendState::Quarantined;
        }
    }
    p.set_tables(tables(&s, 2));
    let mut f2 = tcp4(
        [198, 51, 100, 8],
        [192, 168, 100, 2],
        50002,
        30080,
        true,
        false,
    );
    assert_eq!(
        p.process_one(&mut f2, up, 2 * S).action,
        Action::Drop(DropReason::NoBackend)
    );
    let mut again = tcp4(
        [198, 51, 100, 7],
        [192, 168, 100, 2],
        50000,
        30080,
        false,
        true,
    );
    assert_eq!(
        p.process_one(&mut again, up, 2 * S).action,
        Action::Drop(DropReason::BackendGone)
    );
}

#[test]
fn terminating_backend_keeps_its_flow_but_gets_no_new_ones() {
    let (mut p, mut s) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut f = tcp4(CLIENT, VIP, 42000, 80, true, false);
    let o = p.process_one(&mut f, pc, S);
    let (b, _) = o.backend.unwrap();
    for svc in &mut s.services {
        for be in &mut svc.backends {
            if be.ip == b.to_ip() {
                be.state = BackendState::Terminating;
            }
        }
    }
    p.set_tables(tables(&s, 2));
    let mut f = tcp4(CLIENT, VIP, 42000, 80, false, true);
    let o2 = p.process_one(&mut f, pc, 2 * S);
    assert_eq!(o2.backend.unwrap().0, b, "existing flow stays");
    for port in 0..50 {
        let mut f = tcp4(CLIENT, VIP, 43000 + port, 80, true, false);
        let o = p.process_one(&mut f, pc, 3 * S);
        assert_ne!(
            o.backend.unwrap().0,
            b,
            "new flows avoid the terminating backend"
        );
    }
}

#[test]
fn maglev_spreads_flows_and_is_deterministic() {
    let (mut p, _) = pipeline();
    let (mut q, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut hits = std::collections::HashMap::new();
    for port in 0..2000u16 {
        let mut f = tcp4(CLIENT, VIP, 10000 + port, 80, true, false);
        let mut g = f.clone();
        let o = p.process_one(&mut f, pc, S);
        let o2 = q.process_one(&mut g, pc, S);
        assert_eq!(o.backend, o2.backend);
        *hits.entry(o.backend.unwrap().0).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 2);
    for n in hits.values() {
        assert!((800..1200).contains(n), "{hits:?}");
    }
}

/// `random` is weighted random (docs/state-schema.md): the example's UDP `dns` service with three
/// backends weighted 1:1:2 and 1:1:100, 2000 new flows each.
#[test]
fn random_algorithm_follows_backend_weights() {
    for weights in [[1u16, 1, 2], [1, 1, 100]] {
        let mut s = example::state().unwrap();
        s.node.policy_mode = PolicyMode::AllowAll;
        let dns = s.services.iter_mut().find(|v| v.name == "dns").unwrap();
        assert_eq!(dns.algorithm, nodeplane_state::Algorithm::Random);
        let mut third = dns.backends[0].clone();
        third.ip = "10.244.2.23".parse().unwrap();
        dns.backends.push(third);
        for (b, w) in dns.backends.iter_mut().zip(weights) {
            b.weight = w;
        }
        let ips: Vec<String> = dns.backends.iter().map(|b| b.ip.to_string()).collect();
        let mut p = Pipeline::new(tables(&s, 1));
        let pc = iface(&p, "pod-client");
        let mut hits = [0usize; 3];
        const N: usize = 2000;
        for port in 0..N as u16 {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
                .ipv4(CLIENT, [10, 96, 0, 53], 64)
                .udp(20000 + port, 53)
                .write(&mut f, b"q")
                .unwrap();
            let o = p.process_one(&mut f, pc, S);
            fwd(&o);
            let be = o.backend.unwrap().0.to_string();
            hits[ips.iter().position(|i| *i == be).unwrap()] += 1;
        }
        let total: usize = weights.iter().map(|&w| usize::from(w)).sum();
        for (w, h) in weights.iter().zip(hits) {
            // Within 5 standard deviations of the binomial expectation.
            let p = f64::from(*w) / total as f64;
            let (mean, sd) = (N as f64 * p, (N as f64 * p * (1.0 - p)).sqrt());
            assert!(
                (h as f64 - mean).abs() <= 5.0 * sd,
                "weights {weights:?}: hits {hits:?}, expected {mean:.0} ± {:.0}",
                5.0 * sd
            );
        }
    }
}

#[test]
fn truncated_and_garbage_frames_never_panic() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let base = tcp4(CLIENT, VIP, 40000, 80, true, false);
    let mut seed = 0x1234_5678_u64;
    for n in 0..base.len() {
        let mut f = base[..n].to_vec();
        let o = p.process_one(&mut f, pc, S);
        assert!(
            matches!(o.action, Action::Drop(_) | Action::Pass),
            "{n}: {o:?}"
        );
    }
    for _ in 0..20000 {
        let mut f = base.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % f.len();
            f[i] = (seed >> 32) as u8;
        }
        let _ = p.process_one(&mut f, pc, S);
    }
    let c = p.counters();
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
}

/// UDP datagram to the `dns` ClusterIP split into 2 IPv4 fragments by hand.
fn udp_fragments(id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, [10, 96, 0, 53], 64)
        .udp(33333, 53)
        .write(&mut whole, &[7u8; 64])
        .unwrap();
    split_v4(&whole, id)
}

/// A TCP segment (20-byte header + 64 bytes) split into 2 IPv4 fragments.
fn tcp_fragments(src: [u8; 4], dst: [u8; 4], dport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(src, dst, 64)
        .tcp(40000, dport, 100, 65000)
        .syn()
        .write(&mut whole, &[7u8; 64])
        .unwrap();
    split_v4(&whole, id)
}

/// An untagged IPv4 frame (IHL 5) split into 2 fragments: the first carries 32 bytes of the IP
/// payload (the whole TCP or UDP header), the second the rest.
fn split_v4(whole: &[u8], id: u16) -> (Vec<u8>, Vec<u8>) {
    const L4: usize = L3 + ipv4::MIN_HEADER_LEN;
    let hdr = &whole[..L4];
    let payload = &whole[L4..];
    let mk = |off: usize, data: &[u8], more: bool| {
        let mut f = hdr.to_vec();
        f.extend_from_slice(data);
        let total = (ipv4::MIN_HEADER_LEN + data.len()) as u16;
        f[at(L3, ipv4::TOTAL_LEN)].copy_from_slice(&total.to_be_bytes());
        f[at(L3, ipv4::IDENT)].copy_from_slice(&id.to_be_bytes());
        let fo = ((off / 8) as u16) | if more { ipv4::FLAG_MF } else { 0 };
        f[at(L3, ipv4::FLG_OFF)].copy_from_slice(&fo.to_be_bytes());
        f[at(L3, ipv4::CHECKSUM)].copy_from_slice(&[0, 0]);
        let c = etherparse::Ipv4Header::from_slice(&f[L3..L4])
            .unwrap()
            .0
            .calc_header_checksum();
        f[at(L3, ipv4::CHECKSUM)].copy_from_slice(&c.to_be_bytes());
        f
    };
    (mk(0, &payload[..32], true), mk(32, &payload[32..], false))
}

#[test]
fn fragments_follow_their_first_in_either_order() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    // In order.
    let (mut a, mut b) = udp_fragments(1);
    let oa = p.process_one(&mut a, pc, S);
    let ob = p.process_one(&mut b, pc, S);
    assert_eq!(fwd(&oa), fwd(&ob));
    assert_eq!(
        &a[DST4], &b[DST4],
        "both fragments DNATed to the same backend"
    );
    assert_ne!(&b[DST4], &[10, 96, 0, 53]);

    // Out of order: the later fragment is held, then released after the first.
    let (mut a, mut b) = udp_fragments(2);
    assert_eq!(p.process_one(&mut b, pc, 2 * S).action, Action::Held);
    let mut released = Vec::new();
    p.drain(2 * S, |r| released.push(r.outcome));
    assert!(
        released.is_empty(),
        "nothing is due before the first fragment"
    );
    let oa = p.process_one(&mut a, pc, 2 * S);
    let mut out = Vec::new();
    p.drain(2 * S, |r| out.push((r.outcome, r.data.to_vec(), r.tag)));
    assert_eq!(out.len(), 1);
    assert_eq!(fwd(&out[0].0), fwd(&oa));
    assert_eq!(&out[0].1[DST4], &a[DST4]);

    // A later fragment whose first never comes times out, counted.
    let (_, mut b) = udp_fragments(3);
    assert_eq!(p.process_one(&mut b, pc, 3 * S).action, Action::Held);
    let mut out = Vec::new();
    p.drain(3 * S + 31 * S, |r| out.push(r.outcome.action));
    assert_eq!(out, vec![Action::Drop(DropReason::FragTimeout)]);
}

#[test]
fn icmp_frag_needed_for_a_dnat_flow_is_reverse_translated() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut syn = tcp4(CLIENT, VIP, 40000, 80, true, false);
    let o = p.process_one(&mut syn, pc, S);
    let eg = fwd(&o);
    let (backend, _) = o.backend.unwrap();
    let b4: [u8; 4] = backend.octets().try_into().unwrap();
    // The backend answers with "fragmentation needed" about the client's packet as it saw it
    // (client → backend:8080), quoting its IP header and first 8 bytes.
    let quoted = &syn[14..14 + 28];
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x15], [2, 0, 0, 0, 1, 2])
        .ipv4(b4, CLIENT, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut icmp, quoted)
        .unwrap();
    let o = p.process_one(&mut icmp, eg, S + 1);
    assert_eq!(fwd(&o), pc);
    assert_eq!(o.ct, CtStatus::Related);
    let pkt = SlicedPacket::from_ethernet(&icmp).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!()
    };
    assert_eq!(
        ip.header().source_addr().octets(),
        VIP,
        "outer source is the VIP"
    );
    // The quoted header now reads client → VIP:80, with a valid quoted IP checksum.
    let inner = &icmp[14 + 20 + 8..];
    let (ih, rest) = etherparse::Ipv4Header::from_slice(inner).unwrap();
    assert_eq!(ih.destination, VIP);
    assert_eq!(ih.header_checksum, ih.calc_header_checksum());
    assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 80);
    // The ICMP checksum verifies over the whole message.
    let icmp_bytes = &icmp[34..];
    let mut sum = 0u32;
    for c in icmp_bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff);
}

#[test]
fn counters_account_for_every_packet_across_holds_and_releases() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    for id in 10..20u16 {
        let (mut a, mut b) = udp_fragments(id);
        p.process_one(&mut b, pc, S);
        if id % 2 == 0 {
            p.process_one(&mut a, pc, S);
        }
        p.drain(S, |_| {});
    }
    let c = p.counters().clone();
    assert_eq!(c.held, 5, "odd datagrams' later fragments are still held");
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
    p.drain(100 * S, |_| {});
    let c = p.counters();
    assert_eq!(c.held, 0);
    assert_eq!(c.drops[DropReason::FragTimeout as usize], 5);
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped);
}

#[test]
fn maglev_fill_progresses_even_past_its_deadline() {
    // 300 services with distinct backend sets, every table left pending. Each fill call with
    // a deadline already passed still builds one table: a huge state completes in steps
    // instead of stalling (at 100k services, re-walking every service each step used to
    // outlast the step, so no table was ever built).
    let mut s = example::state().unwrap();
    let template = s
        .services
        .iter()
        .find(|v| v.algorithm == nodeplane_state::Algorithm::Maglev)
        .expect("a maglev service")
        .clone();
    for i in 0..300u16 {
        let mut v = template.clone();
        v.name = format!("many-{i}");
        for (k, f) in v.frontends.iter_mut().enumerate() {
            f.port = 20_000 + i * 4 + k as u16;
        }
        for b in &mut v.backends {
            b.port = 30_000 + i;
        }
        s.services.push(v);
    }
    let mut cache = MaglevCache::default();
    let t = Tables::build_within(&s, 1, &mut cache, Some(std::time::Instant::now()));
    let pending = t.maglev_pending;
    assert!(pending >= 300, "pending {pending}");
    let mut left = usize::MAX;
    let mut calls = 0;
    while left > 0 {
        let now = cache.fill(std::time::Instant::now());
        assert!(
            now < left,
            "every call builds at least one table: {now} after {left}"
        );
        left = now;
        calls += 1;
    }
    assert!(calls <= pending, "{calls} calls for {pending} tables");
    assert_eq!(Tables::build(&s, 2, &mut cache).maglev_pending, 0);
}

#[test]
fn pending_maglev_tables_hash_deterministically_then_complete() {
    let s = example::state().unwrap();
    let mut cache = MaglevCache::default();
    // A deadline already passed: every Maglev table is left pending.
    let t = Tables::build_within(&s, 1, &mut cache, Some(std::time::Instant::now()));
    assert!(t.maglev_pending > 0);
    let mut p = Pipeline::new(Arc::new(t));
    let mut q = Pipeline::new(Arc::new(Tables::build_within(
        &s,
        1,
        &mut MaglevCache::default(),
        Some(std::time::Instant::now()),
    )));
    let pc = iface(&p, "pod-client");
    let mut seen = std::collections::HashSet::new();
    for port in 0..200u16 {
        let mut f = tcp4(CLIENT, VIP, 20000 + port, 80, true, false);
        let mut g = f.clone();
        let o = p.process_one(&mut f, pc, S);
        assert_eq!(
            o.backend,
            q.process_one(&mut g, pc, S).backend,
            "deterministic"
        );
        seen.insert(o.backend.unwrap().0);
    }
    assert_eq!(seen.len(), 2, "both backends used while pending");
    // Completing: fill with time to spare, then the build has every table.
    assert_eq!(
        cache.fill(std::time::Instant::now() + std::time::Duration::from_secs(10)),
        0
    );
    let full = Tables::build(&s, 2, &mut cache);
    assert_eq!(full.maglev_pending, 0);
    assert!(full
        .services
        .iter()
        .all(|svc| svc.algorithm != nodeplane_state::Algorithm::Maglev
            || svc.v4.active.is_empty()
            || !svc.v4.maglev.is_empty()));
}

/// NodePort traffic has no ports in its later fragments, and a node IP also receives host
/// traffic: a later fragment is held until its first decides, in either order.
#[test]
fn nodeport_fragments_from_the_uplink_in_either_order() {
    let (mut p, _) = pipeline();
    let up = iface(&p, "uplink0");
    const NODE: [u8; 4] = [192, 168, 100, 2];
    const ROUTER_SIDE: [u8; 4] = [198, 51, 100, 7];
    // In order.
    let (mut a, mut b) = tcp_fragments(ROUTER_SIDE, NODE, 30080, 11);
    let oa = p.process_one(&mut a, up, S);
    let ob = p.process_one(&mut b, up, S);
    assert!(matches!(oa.action, Action::Forward(_)), "{oa:?}");
    assert_eq!(oa.action, ob.action);
    assert_eq!(&a[DST4], &b[DST4], "same backend");
    assert_eq!(&b[DST4][..3], &[10, 244, 1]);

    // Out of order: held, then released and forwarded to the first fragment's backend.
    let (mut a, mut b) = tcp_fragments(ROUTER_SIDE, NODE, 30080, 12);
    assert_eq!(p.process_one(&mut b, up, 2 * S).action, Action::Held);
    let oa = p.process_one(&mut a, up, 2 * S);
    assert!(matches!(oa.action, Action::Forward(_)), "{oa:?}");
    let mut out = Vec::new();
    p.drain(2 * S, |r| out.push((r.outcome, r.data.to_vec())));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.action, oa.action);
    assert_eq!(&out[0].1[DST4], &a[DST4]);
}

#[test]
fn host_fragments_go_to_the_kernel_in_either_order() {
    let (mut p, _) = pipeline();
    let up = iface(&p, "uplink0");
    let pc = iface(&p, "pod-client");
    const NODE: [u8; 4] = [192, 168, 100, 2];
    // From the uplink to a port that is no NodePort (ssh), in order and out of order.
    let (mut a, mut b) = tcp_fragments([198, 51, 100, 7], NODE, 22, 21);
    assert_eq!(p.process_one(&mut a, up, S).action, Action::Pass);
    assert_eq!(p.process_one(&mut b, up, S).action, Action::Pass);
    let (mut a, mut b) = tcp_fragments([198, 51, 100, 7], NODE, 22, 22);
    assert_eq!(p.process_one(&mut b, up, S).action, Action::Held);
    assert_eq!(p.process_one(&mut a, up, S).action, Action::Pass);
    let mut out = Vec::new();
    p.drain(S, |r| out.push(r.outcome.action));
    assert_eq!(out, vec![Action::Pass]);

    // From a pod to the node IP: the kernel's, both fragments.
    let (mut a, mut b) = tcp_fragments(CLIENT, NODE, 22, 23);
    assert_eq!(p.process_one(&mut a, pc, S).action, Action::Pass);
    assert_eq!(p.process_one(&mut b, pc, S).action, Action::Pass);
    let c = p.counters();
    assert_eq!(c.dropped, 0, "{:?}", c.drops);
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
}

/// A drain that runs long after the first fragment came (a sparse capture: one burst spanning
/// more than the fragment timeout) still releases the held fragment as its datagram decided,
/// and leaves nothing behind.
#[test]
fn late_drain_releases_by_the_first_fragments_time() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let (mut a, mut b) = udp_fragments(31);
    assert_eq!(p.process_one(&mut b, pc, S).action, Action::Held);
    let oa = p.process_one(&mut a, pc, 2 * S);
    assert!(matches!(oa.action, Action::Forward(_)));
    let mut out = Vec::new();
    p.drain(2 * S + 600 * S, |r| out.push(r.outcome.action));
    assert_eq!(out, vec![oa.action]);
    assert_eq!(p.fragments().held_count(), 0, "no copy held again");
    let c = p.counters();
    assert_eq!(c.held, 0);
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
}

/// The other direction: the client's kernel answers the backend's reply (which it saw as coming
/// from VIP:80) with an ICMP error. The outer destination and the quoted source are translated
/// to the backend, so the error reaches the backend as about its own packet.
#[test]
fn icmp_error_from_the_client_is_translated_toward_the_backend() {
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut syn = tcp4(CLIENT, VIP, 40001, 80, true, false);
    let o = p.process_one(&mut syn, pc, S);
    let eg = fwd(&o);
    let (backend, bport) = o.backend.unwrap();
    let b4: [u8; 4] = backend.octets().try_into().unwrap();
    // The backend's SYN-ACK, reverse-NATed to VIP:80 → client on the way out.
    let mut synack = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x15], [2, 0, 0, 0, 1, 2])
        .ipv4(b4, CLIENT, 64)
        .tcp(bport, 40001, 500, 65000)
        .syn()
        .ack(101)
        .write(&mut synack, &[])
        .unwrap();
    let o = p.process_one(&mut synack, eg, S + 1);
    assert_eq!(fwd(&o), pc);
    assert_eq!(&synack[SRC4], &VIP, "the client sees the VIP");
    // The client's kernel: port unreachable about that packet as it saw it.
    let quoted = &synack[14..14 + 28];
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut icmp, quoted)
        .unwrap();
    let o = p.process_one(&mut icmp, pc, S + 2);
    assert_eq!(fwd(&o), eg, "toward the backend");
    assert_eq!(o.ct, CtStatus::Related);
    let (ih, _) = etherparse::Ipv4Header::from_slice(&icmp[14..]).unwrap();
    assert_eq!(ih.destination, b4, "outer destination is the backend");
    assert_eq!(ih.header_checksum, ih.calc_header_checksum());
    let inner = &icmp[14 + 20 + 8..];
    let (qh, rest) = etherparse::Ipv4Header::from_slice(inner).unwrap();
    assert_eq!(qh.source, b4, "quoted source is the backend");
    assert_eq!(qh.header_checksum, qh.calc_header_checksum());
    assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), bport);
    let mut sum = 0u32;
    for c in icmp[34..].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "ICMP checksum");
}

/// Drop reasons no other test reaches: each is a counted drop with its own reason.
#[test]
fn less_common_drops_are_counted_by_reason() {
    let (mut p, mut s) = pipeline();
    let pc = iface(&p, "pod-client");
    let expect = |p: &mut Pipeline, f: &mut Vec<u8>, iface: u16, r: DropReason| {
        let o = p.process_one(f, iface, S);
        assert_eq!(o.action, Action::Drop(r), "{o:?}");
    };
    // A service IP on a port no frontend has.
    let mut f = tcp4(CLIENT, VIP, 40000, 81, true, false);
    expect(&mut p, &mut f, pc, DropReason::NoService);
    // Inside the node's PodCIDR, but no endpoint there.
    let mut f = tcp4(CLIENT, [10, 244, 1, 99], 40000, 80, true, false);
    expect(&mut p, &mut f, pc, DropReason::NoEndpoint);
    // A protocol the pipeline does not forward from pods (GRE).
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, [10, 244, 1, 21], 64)
        .write(&mut f, etherparse::IpNumber(47), &[0u8; 8])
        .unwrap();
    expect(&mut p, &mut f, pc, DropReason::UnsupportedProtocol);
    // An ICMP error quoting a flow nobody tracks, addressed to a service VIP: it would need a
    // translation nothing can give.
    let quoted = &tcp4(VIP, CLIENT, 80, 45000, true, true)[14..14 + 28];
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut f, quoted)
        .unwrap();
    expect(&mut p, &mut f, pc, DropReason::CtInvalid);
    // Longer than 65,535 bytes (replay has no MTU): its offsets would not fit the parse's u16.
    let mut f = tcp4(CLIENT, [10, 244, 1, 21], 40003, 8080, true, false);
    f.resize(70_000, 0);
    expect(&mut p, &mut f, pc, DropReason::FrameTooLong);

    // The uplink's next hop unknown: traffic to the world is dropped, not black-holed.
    for i in &mut s.interfaces {
        i.gateway_mac = None;
    }
    p.set_tables(tables(&s, 2));
    let mut f = tcp4(CLIENT, [198, 51, 100, 7], 40002, 443, true, false);
    expect(&mut p, &mut f, pc, DropReason::NoNeighbor);

    let c = p.counters();
    for r in [
        DropReason::NoService,
        DropReason::NoEndpoint,
        DropReason::UnsupportedProtocol,
        DropReason::CtInvalid,
        DropReason::FrameTooLong,
        DropReason::NoNeighbor,
    ] {
        assert_eq!(c.drops[r as usize], 1, "{}", r.name());
    }
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
}

/// Parse once: a frame that carries its parse (done by the worker that received it, for flow
/// ownership) is not parsed again; a frame without one is.
#[test]
fn a_carried_parse_is_used_instead_of_parsing_again() {
    use nodeplane_dataplane::parse::{parse, Parsed};
    use nodeplane_dataplane::Packet;
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut a = tcp4(CLIENT, VIP, 41000, 80, true, false);
    let mut b = a.clone();
    let mut c = a.clone();
    let good = parse(&a);
    assert!(matches!(good, Ok(Parsed::Ip(_))));
    let mut outs = [Outcome::default(); 3];
    let mut pkts = [
        // The carried parse is the truth for the pipeline: a (deliberately wrong) carried
        // verdict shows it was not parsed again.
        Packet {
            data: &mut a,
            iface: pc,
            ts: S,
            tag: 0,
            parsed: Some(Err(DropReason::MalformedL4)),
        },
        Packet {
            data: &mut b,
            iface: pc,
            ts: S,
            tag: 1,
            parsed: Some(good),
        },
        Packet {
            data: &mut c,
            iface: pc,
            ts: S,
            tag: 2,
            parsed: None,
        },
    ];
    p.process_burst(&mut pkts, &mut outs);
    assert_eq!(outs[0].action, Action::Drop(DropReason::MalformedL4));
    assert!(
        matches!(outs[1].action, Action::Forward(_)),
        "{:?}",
        outs[1]
    );
    assert_eq!(outs[1].ct, CtStatus::New);
    assert!(
        matches!(outs[2].action, Action::Forward(_)),
        "{:?}",
        outs[2]
    );
}

/// Flows saved from one pipeline and restored into a new one (a daemon restart) keep their
/// backend even where the new tables' Maglev would pick another one, and end `backend-gone`
/// where their backend was removed meanwhile.
#[test]
fn restored_flows_keep_their_backend_across_a_restart() {
    use nodeplane_dataplane::snapshot::Snapshot;
    let (mut p, mut s) = pipeline();
    let pc = iface(&p, "pod-client");
    let mut backends = Vec::new();
    for port in 0..40u16 {
        let mut f = tcp4(CLIENT, VIP, 30000 + port, 80, true, false);
        let o = p.process_one(&mut f, pc, S);
        let b = o.backend.unwrap().0;
        let eg = fwd(&o);
        let mut f = tcp4(
            b.octets().try_into().unwrap(),
            CLIENT,
            8080,
            30000 + port,
            true,
            true,
        );
        fwd(&p.process_one(&mut f, eg, S + 1));
        let mut f = tcp4(CLIENT, VIP, 30000 + port, 80, false, true);
        assert_eq!(p.process_one(&mut f, pc, S + 2).ct, CtStatus::Established);
        backends.push(b);
    }
    let web1 = backends[0];
    let web2 = *backends
        .iter()
        .find(|b| **b != web1)
        .expect("two backends used");
    // Save at the old process's time 10 s, through the file format.
    let mut snap = Snapshot::new(0);
    snap.add(p.save(10 * S));
    let snap = Snapshot::decode(&snap.encode()).unwrap();
    assert_eq!(snap.flows.len(), 40);

    // The new process: web1 terminating (Maglev now sends everything to web2).
    for svc in &mut s.services {
        for be in &mut svc.backends {
            if be.ip == web1.to_ip() {
                be.state = BackendState::Terminating;
            }
        }
    }
    let mut fresh = Pipeline::new(tables(&s, 1));
    let mut q = Pipeline::new(tables(&s, 1));
    let r = q.restore(&snap.flows, &snap.affinity, 2 * S);
    assert_eq!((r.flows, r.skipped), (40, 0));
    for (i, b) in backends.iter().enumerate() {
        let port = 30000 + i as u16;
        let mut f = tcp4(CLIENT, VIP, port, 80, false, true);
        let o = q.process_one(&mut f, pc, 3 * S);
        assert_eq!(o.ct, CtStatus::Established, "flow {port}");
        assert_eq!(o.backend.unwrap().0, *b, "flow {port} keeps its backend");
        assert_eq!(addrs(&f).1, b.to_string());
        // Without the snapshot the same packet is a mid-stream pickup sent to web2.
        let mut g = tcp4(CLIENT, VIP, port, 80, false, true);
        assert_eq!(
            fresh.process_one(&mut g, pc, 3 * S).backend.unwrap().0,
            web2
        );
    }
    // Timers came across relative: ESTABLISHED has its full timeout from the last packet
    // (at 3 s now).
    let ct = q.conntrack();
    let (slot, e) = ct.iter_slots().next().unwrap();
    assert_eq!(ct.expires(slot), 3 * S + q.tables().ct.established);
    assert_eq!(e.state.name(), "ESTABLISHED");

    // Another new process where web2 was removed: its flows end, web1's go on.
    let mut s2 = example::state().unwrap();
    for svc in &mut s2.services {
        svc.backends.retain(|be| be.ip != web2.to_ip());
    }
    let mut q = Pipeline::new(tables(&s2, 1));
    q.restore(&snap.flows, &snap.affinity, 2 * S);
    for (i, b) in backends.iter().enumerate() {
        let port = 30000 + i as u16;
        let mut f = tcp4(CLIENT, VIP, port, 80, false, true);
        let o = q.process_one(&mut f, pc, 3 * S);
        if *b == web2 {
            assert_eq!(
                o.action,
                Action::Drop(DropReason::BackendGone),
                "flow {port}"
            );
        } else {
            assert_eq!(o.backend.unwrap().0, web1, "flow {port}");
        }
    }
}

/// New connections decided in one burst (after a burst that created a flow: the SYN
/// look-ahead's hints and the new-connection lane) leave as each SYN does through a fresh
/// pipeline, which has looked ahead at nothing: same outcome, same bytes. A SYN of a key that
/// an earlier SYN of the burst created, and a spoofed SYN, take the full path from the lane.
#[test]
fn a_burst_of_syns_is_decided_as_each_syn_alone() {
    use nodeplane_dataplane::Packet;
    let (mut p, _) = pipeline();
    let pc = iface(&p, "pod-client");
    // Arms the look-ahead for the next burst.
    let mut warm = tcp4(CLIENT, VIP, 39999, 80, true, false);
    fwd(&p.process_one(&mut warm, pc, S));
    let mut frames: Vec<Vec<u8>> = (0..40u16)
        .map(|i| tcp4(CLIENT, VIP, 41000 + i, 80, true, false))
        .collect();
    let expected: Vec<(Outcome, Vec<u8>)> = frames
        .iter()
        .map(|f| {
            let (mut q, _) = pipeline();
            let mut g = f.clone();
            let o = q.process_one(&mut g, pc, S);
            (o, g)
        })
        .collect();
    // A retransmission of the first SYN, and a spoofed one (web-1's address from pod-client).
    frames.push(tcp4(CLIENT, VIP, 41000, 80, true, false));
    frames.push(tcp4([10, 244, 1, 21], VIP, 41000, 80, true, false));
    let n = frames.len();
    let mut out = vec![Outcome::default(); n];
    {
        let mut pkts: Vec<Packet<'_>> = frames
            .iter_mut()
            .enumerate()
            .map(|(i, f)| Packet {
                data: f.as_mut_slice(),
                iface: pc,
                ts: 2 * S,
                tag: i as u64,
                parsed: None,
            })
            .collect();
        p.process_burst(&mut pkts, &mut out);
    }
    for (i, (o, g)) in expected.iter().enumerate() {
        assert_eq!(format!("{:?}", out[i]), format!("{o:?}"), "frame {i}");
        assert_eq!(&frames[i], g, "frame {i}");
        assert_eq!(out[i].ct, CtStatus::New);
    }
    let again = &out[n - 2];
    assert_eq!(again.ct, CtStatus::Established);
    assert_eq!(again.backend, out[0].backend);
    assert_eq!(addrs(&frames[n - 2]), addrs(&frames[0]));
    assert_eq!(out[n - 1].action, Action::Drop(DropReason::SpoofedSource));
    assert_eq!(p.counters().ct_new, 41);
}
