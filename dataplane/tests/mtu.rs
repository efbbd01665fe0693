//! The egress MTU (`dataplane/src/mtu.rs`) on the example node with a jumbo client pod: the
//! client's interface at 9000, web-1's at 9000, web-2's and the uplink at 1500.
//!
//! ```text
//!  router ── uplink0 (1500) ─┐  node-1 (192.168.100.2)  ┌─ pod-client (9000) ── client 10.244.1.10
//!                            └──────── nodeplane ───────┼─ pod-web1   (9000) ── web-1  10.244.1.21
//!                                                       └─ pod-web2   (1500) ── web-2  10.244.1.22
//!  web ClusterIP 10.96.0.10:80/tcp, fd00:96::10 → web-1:8080, web-2:8080
//! ```

use std::sync::Arc;

use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use nodeplane_dataplane::csum::{checksum, put16};
use nodeplane_dataplane::mtu::SLOTS;
use nodeplane_dataplane::reject::REJECT_BURST;
use nodeplane_dataplane::{Action, DropReason, MaglevCache, Pipeline, Tables};
use nodeplane_state::{example, State};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT: [u8; 4] = [10, 244, 1, 10];
const WEB1: [u8; 4] = [10, 244, 1, 21];
const WEB2: [u8; 4] = [10, 244, 1, 22];
const VIP: [u8; 4] = [10, 96, 0, 10];
const NODE_IP: [u8; 4] = [192, 168, 100, 2];
const S: u64 = 1_000_000_000;

fn state() -> State {
    let mut s = example::state().unwrap();
    for i in &mut s.interfaces {
        i.mtu = Some(match i.name.as_str() {
            "pod-client" | "pod-web1" => 9000,
            _ => 1500,
        });
    }
    nodeplane_state::validate(&s).expect("valid state");
    s
}

fn pipeline(s: &State) -> Pipeline {
    Pipeline::new(Arc::new(Tables::build(s, 1, &mut MaglevCache::default())))
}

fn iface(p: &Pipeline, name: &str) -> u16 {
    p.tables().iface_index(name).unwrap()
}

/// A TCP segment from the client with `payload` bytes, DF set or not.
fn tcp4(dst: [u8; 4], dport: u16, sport: u16, syn: bool, payload: usize, df: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 100, 65000);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::new();
    b.write(&mut f, &vec![0x5a; payload]).unwrap();
    let flags = if df { 0x4000 } else { 0 };
    put16(&mut f, 14 + 6, flags);
    put16(&mut f, 14 + 10, 0);
    let c = checksum(&f[14..34]);
    put16(&mut f, 14 + 10, c);
    f
}

fn tcp6(dst: [u16; 8], sport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let ip = |a: [u16; 8]| std::net::Ipv6Addr::from(a).octets();
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv6(ip([0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10]), ip(dst), 64)
        .tcp(sport, 80, 100, 65000);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::new();
    b.write(&mut f, &vec![0x5a; payload]).unwrap();
    f
}

/// ICMP errors the pipeline queued: (egress, frame).
type Answers = Vec<(u16, Vec<u8>)>;

/// The answers the pipeline queued.
fn answers(p: &mut Pipeline) -> Answers {
    let mut v = Vec::new();
    p.mtu_errors_mut().flush(|e, _, f| v.push((e, f.to_vec())));
    v
}

/// A new flow (SYN, small) then a big segment on it, through the pipeline; the big one's
/// outcome and the answers.
fn big_after_syn(
    p: &mut Pipeline,
    dst: [u8; 4],
    dport: u16,
    sport: u16,
    df: bool,
) -> (Action, Answers, Vec<u8>) {
    let ing = iface(p, "pod-client");
    let mut syn = tcp4(dst, dport, sport, true, 0, true);
    assert!(matches!(
        p.process_one(&mut syn, ing, S).action,
        Action::Forward(_)
    ));
    let orig = tcp4(dst, dport, sport, false, 4000, df);
    let mut f = orig.clone();
    let o = p.process_one(&mut f, ing, S + 1000);
    (o.action, answers(p), orig)
}

#[test]
fn ipv4_df_through_a_cluster_ip_is_answered_from_the_vip_quoting_the_packet_as_sent() {
    let s = state();
    // Find a client port whose flow Maglev sends to web-2 (MTU 1500).
    let mut found = false;
    for sport in 40000..40100 {
        let mut p = pipeline(&s);
        let ing = iface(&p, "pod-client");
        let mut syn = tcp4(VIP, 80, sport, true, 0, true);
        let o = p.process_one(&mut syn, ing, S);
        if o.action != Action::Forward(iface(&p, "pod-web2")) {
            continue;
        }
        found = true;
        let orig = tcp4(VIP, 80, sport, false, 4000, true);
        let mut f = orig.clone();
        let o = p.process_one(&mut f, ing, S + 1000);
        assert_eq!(o.action, Action::Drop(DropReason::FragNeeded));
        assert_eq!(p.counters().drops[DropReason::FragNeeded as usize], 1);
        let a = answers(&mut p);
        assert_eq!(a.len(), 1, "one ICMP error");
        let (egress, icmp) = &a[0];
        assert_eq!(*egress, ing, "back out of the interface it came in on");
        assert_eq!(&icmp[..6], &CLIENT_MAC, "to the sender's MAC");
        assert_eq!(&icmp[6..12], &NODE_CLIENT_MAC);
        let pk = SlicedPacket::from_ethernet(icmp).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &pk.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            (h.source, h.destination),
            (VIP, CLIENT),
            "from the address the client dialled"
        );
        assert_eq!(
            usize::from(h.total_len),
            576,
            "an ICMPv4 error fills 576 bytes"
        );
        let Some(TransportSlice::Icmpv4(i)) = &pk.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            i.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1500
                }
            )
        );
        assert_eq!(
            i.header().checksum,
            i.header().icmp_type.calc_checksum(i.payload())
        );
        assert_eq!(
            i.payload(),
            &orig[14..14 + 548],
            "the packet quoted as the client sent it (to the VIP, its checksums untouched)"
        );
        assert_eq!(p.mtu_errors().sent, 1);
        break;
    }
    assert!(found, "no client port maps to web-2");
}

#[test]
fn ipv4_df_to_a_pod_directly_is_answered_from_the_node_and_fitting_frames_pass() {
    let s = state();
    let mut p = pipeline(&s);
    // web-1 at 9000: a 4000-byte segment fits.
    let (a, ans, _) = big_after_syn(&mut p, WEB1, 8080, 41000, true);
    assert_eq!(a, Action::Forward(iface(&p, "pod-web1")));
    assert!(ans.is_empty());
    // web-2 at 1500: it does not; not translated, so the error comes from the node.
    let (a, ans, orig) = big_after_syn(&mut p, WEB2, 8080, 41001, true);
    assert_eq!(a, Action::Drop(DropReason::FragNeeded));
    assert_eq!(ans.len(), 1);
    let icmp = &ans[0].1;
    assert_eq!(&icmp[14 + 12..14 + 16], &NODE_IP, "from the node's address");
    assert_eq!(&icmp[14 + 16..14 + 20], &CLIENT);
    assert_eq!(&icmp[42..42 + 548], &orig[14..14 + 548]);
    // Exactly at the MTU: 1500 bytes of IP fit.
    let mut f = tcp4(WEB2, 8080, 41001, false, 1500 - 40, true);
    let o = p.process_one(&mut f, iface(&p, "pod-client"), S + 2000);
    assert_eq!(o.action, Action::Forward(iface(&p, "pod-web2")));
    // One byte more does not.
    let mut f = tcp4(WEB2, 8080, 41001, false, 1500 - 39, true);
    let o = p.process_one(&mut f, iface(&p, "pod-client"), S + 3000);
    assert_eq!(o.action, Action::Drop(DropReason::FragNeeded));
}

#[test]
fn ipv4_without_df_is_a_counted_drop_without_an_answer() {
    let s = state();
    let mut p = pipeline(&s);
    let (a, ans, _) = big_after_syn(&mut p, WEB2, 8080, 42000, false);
    assert_eq!(a, Action::Drop(DropReason::MtuExceeded));
    assert!(ans.is_empty());
    assert_eq!(p.counters().drops[DropReason::MtuExceeded as usize], 1);
    assert_eq!((p.mtu_errors().sent, p.mtu_errors().suppressed), (0, 0));
}

#[test]
fn ipv6_is_answered_with_packet_too_big_quoting_the_vip() {
    let s = state();
    let vip6 = [0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10];
    let mut found = false;
    for sport in 40000..40100 {
        let mut p = pipeline(&s);
        let ing = iface(&p, "pod-client");
        let mut syn = tcp6(vip6, sport, true, 0);
        if p.process_one(&mut syn, ing, S).action != Action::Forward(iface(&p, "pod-web2")) {
            continue;
        }
        found = true;
        let orig = tcp6(vip6, sport, false, 3000);
        let mut f = orig.clone();
        let o = p.process_one(&mut f, ing, S + 1000);
        assert_eq!(o.action, Action::Drop(DropReason::FragNeeded));
        let a = answers(&mut p);
        assert_eq!(a.len(), 1);
        let icmp = &a[0].1;
        assert_eq!(
            icmp.len(),
            14 + 1280,
            "an ICMPv6 error fills the minimum MTU"
        );
        let pk = SlicedPacket::from_ethernet(icmp).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &pk.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        assert_eq!(h.source, std::net::Ipv6Addr::from(vip6).octets());
        let Some(TransportSlice::Icmpv6(i)) = &pk.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(i.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1500 });
        assert_eq!(
            i.header().checksum,
            i.header()
                .icmp_type
                .calc_checksum(h.source, h.destination, i.payload())
                .unwrap()
        );
        assert_eq!(i.payload(), &orig[14..14 + 1280 - 48]);
        break;
    }
    assert!(found, "no client port maps to web-2");
}

#[test]
fn answers_are_rate_limited_and_the_rest_counted() {
    let s = state();
    let mut p = pipeline(&s);
    let ing = iface(&p, "pod-client");
    let mut syn = tcp4(WEB2, 8080, 43000, true, 0, true);
    p.process_one(&mut syn, ing, S);
    let mut sent = 0;
    // 100 oversized segments at the same instant, flushed every SLOTS.
    for k in 0..100 {
        let mut f = tcp4(WEB2, 8080, 43000, false, 2000, true);
        let o = p.process_one(&mut f, ing, S + 1);
        assert_eq!(o.action, Action::Drop(DropReason::FragNeeded));
        if k % SLOTS == SLOTS - 1 {
            sent += answers(&mut p).len();
        }
    }
    sent += answers(&mut p).len();
    assert_eq!(
        sent as u64, REJECT_BURST,
        "the burst of the bucket, no more"
    );
    assert_eq!(p.mtu_errors().sent, REJECT_BURST);
    assert_eq!(p.mtu_errors().suppressed, 100 - REJECT_BURST);
    assert_eq!(p.counters().drops[DropReason::FragNeeded as usize], 100);
}

#[test]
fn without_an_mtu_in_the_state_nothing_is_checked() {
    let s = example::state().unwrap();
    let mut p = pipeline(&s);
    assert_eq!(p.tables().frame_limit, usize::MAX);
    let (a, ans, _) = big_after_syn(&mut p, WEB2, 8080, 44000, true);
    assert_eq!(a, Action::Forward(iface(&p, "pod-web2")));
    assert!(ans.is_empty());
}
