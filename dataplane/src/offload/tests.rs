//! The offer decision and the worker's batches against the example node, with a flow map in
//! memory standing in for the kernel's (the real map is tested by the lab's fast-path test).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use etherparse::PacketBuilder;
use nodeplane_state::{example, PolicyMode};

use super::*;
use crate::{MaglevCache, Tables};

const S: u64 = 1_000_000_000;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const CLIENT: [u8; 4] = [10, 244, 1, 10];
const VIP: [u8; 4] = [10, 96, 0, 10];
const DNS_VIP: [u8; 4] = [10, 96, 0, 53];

/// The kernel's map in memory: entries with the age of their last packet; `cap` entries.
#[derive(Debug, Default)]
struct Mem {
    entries: HashMap<OffloadKey, (OffloadAction, Option<u64>)>,
    cap: usize,
    inserts: usize,
}

/// The map as the [`Offload`] holds it; the test keeps another handle.
#[derive(Debug, Clone, Default)]
struct MemMap(Arc<Mutex<Mem>>);

impl FlowMap for MemMap {
    fn insert(&mut self, keys: &[OffloadKey], actions: &[OffloadAction]) -> io::Result<usize> {
        let mut m = self.0.lock().unwrap();
        m.inserts += 1;
        let mut n = 0;
        for (k, a) in keys.iter().zip(actions) {
            if !m.entries.contains_key(k) && m.entries.len() >= m.cap {
                continue;
            }
            m.entries.insert(*k, (*a, None));
            n += 1;
        }
        Ok(n)
    }
    fn remove(&mut self, keys: &[OffloadKey]) -> io::Result<usize> {
        let mut m = self.0.lock().unwrap();
        Ok(keys
            .iter()
            .filter(|k| m.entries.remove(k).is_some())
            .count())
    }
    fn last_seen_age(&self, key: &OffloadKey) -> io::Result<Option<u64>> {
        Ok(self.0.lock().unwrap().entries.get(key).and_then(|e| e.1))
    }
    fn clear(&mut self) -> io::Result<usize> {
        let mut m = self.0.lock().unwrap();
        let n = m.entries.len();
        m.entries.clear();
        Ok(n)
    }
}

/// A pipeline on the example node; kernel ifindex 10 + table index for every interface.
fn setup(cap: usize) -> (Pipeline, Offload, MemMap) {
    let s = example::state().unwrap();
    let t = Arc::new(Tables::build(&s, 1, &mut MaglevCache::default()));
    let n = t.ifaces.len();
    let p = Pipeline::new(t);
    let m = MemMap::default();
    m.0.lock().unwrap().cap = cap;
    let mut o = Offload::new(Box::new(m.clone()));
    o.set_ifindexes((0..n as u32).map(|i| 10 + i).collect());
    (p, o, m)
}

fn idx(p: &Pipeline, name: &str) -> IfIndex {
    p.tables().iface_index(name).unwrap()
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 1, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 100, 65000);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut f = Vec::new();
    b.write(&mut f, b"data").unwrap();
    f
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 1, 1])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, b"q")
        .unwrap();
    f
}

/// Runs one frame through the pipeline and the offers, as the worker does after a burst.
fn step(p: &mut Pipeline, o: &mut Offload, mut f: Vec<u8>, iface: &str, ts: u64) -> Outcome {
    let i = idx(p, iface);
    let out = p.process_one(&mut f, i, ts);
    o.after_burst(p, &[Seen::of(i, &out)], ts);
    out
}

/// The backend a flow to the VIP went to: (address, its pod interface).
fn backend(out: &Outcome) -> ([u8; 4], &'static str) {
    let (a, _) = out.backend.expect("a service flow");
    let b: [u8; 4] = a.bytes[..4].try_into().unwrap();
    (
        b,
        if b == [10, 244, 1, 21] {
            "pod-web1"
        } else {
            "pod-web2"
        },
    )
}

/// A TCP connection through the ClusterIP, handshake done; the backend and its interface.
fn connected(p: &mut Pipeline, o: &mut Offload, m: &MemMap) -> ([u8; 4], &'static str) {
    let syn = step(p, o, tcp(CLIENT, VIP, 40000, 80, "S"), "pod-client", S);
    assert_eq!(syn.ct, CtStatus::New);
    let (be, be_if) = backend(&syn);
    step(p, o, tcp(be, CLIENT, 8080, 40000, "SA"), be_if, S);
    assert!(
        m.0.lock().unwrap().entries.is_empty(),
        "nothing offered during the handshake"
    );
    (be, be_if)
}

#[test]
fn an_established_tcp_flow_is_offered_each_direction_on_its_own_with_its_nat() {
    let (mut p, mut o, m) = setup(100);
    let (be, be_if) = connected(&mut p, &mut o, &m);
    let ack = step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    assert!(matches!(ack.action, Action::Forward(_)));
    assert_eq!(
        o.counters.offered, 1,
        "the client's direction, once established"
    );
    let (k, (a, _)) =
        m.0.lock()
            .unwrap()
            .entries
            .iter()
            .next()
            .map(|(k, v)| (*k, *v))
            .unwrap();
    let t = p.tables().clone();
    let ifx = |n: &str| 10 + u32::from(t.iface_index(n).unwrap());
    assert_eq!(k.ifindex, ifx("pod-client"));
    assert_eq!((k.proto, k.v6), (6, false));
    assert_eq!((&k.src[..4], &k.dst[..4]), (&CLIENT[..], &VIP[..]));
    assert_eq!((k.sport, k.dport), (40000, 80));
    assert_eq!((&a.src[..4], &a.dst[..4]), (&CLIENT[..], &be[..]));
    assert_eq!((a.sport, a.dport), (40000, 8080));
    assert_eq!(a.egress_ifindex, ifx(be_if));
    assert!(a.peer && a.dec_ttl && a.nat_dst && !a.nat_src, "{a:?}");
    assert_eq!(a.smac, t.ifaces[usize::from(idx(&p, be_if))].mac);
    assert_eq!(a.generation, 1);

    // The same direction again: nothing new (no second insert for a steady flow).
    let inserts = m.0.lock().unwrap().inserts;
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    assert_eq!(
        o.counters.offered, 2,
        "offered again: it reached the worker"
    );
    assert_eq!(o.counters.reoffered, 1);
    assert_eq!(m.0.lock().unwrap().inserts, inserts + 1);

    // The reply direction, at its first packet after the handshake: reverse NAT.
    step(&mut p, &mut o, tcp(be, CLIENT, 8080, 40000, "A"), be_if, S);
    assert_eq!(m.0.lock().unwrap().entries.len(), 2);
    let (_, (r, _)) =
        m.0.lock()
            .unwrap()
            .entries
            .iter()
            .find(|(k, _)| k.ifindex == ifx(be_if))
            .map(|(k, v)| (*k, *v))
            .unwrap();
    assert_eq!((&r.src[..4], r.sport), (&VIP[..], 80));
    assert_eq!((&r.dst[..4], r.dport), (&CLIENT[..], 40000));
    assert!(r.nat_src && !r.nat_dst);
    assert_eq!(r.dmac, CLIENT_MAC);
}

#[test]
fn a_fin_withdraws_both_directions() {
    let (mut p, mut o, m) = setup(100);
    let (be, be_if) = connected(&mut p, &mut o, &m);
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    step(&mut p, &mut o, tcp(be, CLIENT, 8080, 40000, "A"), be_if, S);
    assert_eq!(m.0.lock().unwrap().entries.len(), 2);
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "FA"),
        "pod-client",
        S,
    );
    assert!(
        m.0.lock().unwrap().entries.is_empty(),
        "closing: nothing left in the kernel"
    );
    assert_eq!(o.counters.withdrawn, 2);
    // Its last packets are the worker's: not offered again.
    step(&mut p, &mut o, tcp(be, CLIENT, 8080, 40000, "A"), be_if, S);
    assert!(m.0.lock().unwrap().entries.is_empty());
}

#[test]
fn nothing_is_offered_under_a_policy_mode_override_or_from_the_uplink() {
    let (mut p, mut o, m) = setup(100);
    p.set_policy_mode_override(Some(PolicyMode::AllowAll));
    connected(&mut p, &mut o, &m);
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    assert!(m.0.lock().unwrap().entries.is_empty());

    let (be, be_if) = {
        let (mut p2, mut o2, m2) = setup(100);
        let r = connected(&mut p2, &mut o2, &m2);
        // The decision itself: an established forward entering on the uplink is not offered.
        let mut f = tcp(CLIENT, VIP, 40000, 80, "A");
        let i = idx(&p2, "pod-client");
        let out = p2.process_one(&mut f, i, S);
        let key = p2.tuples(1)[0];
        let (slot, dir) = p2.conntrack().find(&key).unwrap();
        let e = p2.conntrack().entry(slot);
        let up = Seen {
            iface: idx(&p2, "uplink0"),
            ..Seen::of(i, &out)
        };
        assert_eq!(
            decide(p2.tables(), &e, dir, &up, p2.epoch(), false),
            Offer::Nothing
        );
        let pod = Seen::of(i, &out);
        assert_eq!(
            decide(p2.tables(), &e, dir, &pod, p2.epoch(), false),
            Offer::Offer { again: false }
        );
        assert_eq!(
            decide(p2.tables(), &e, dir, &pod, p2.epoch(), true),
            Offer::Nothing
        );
        assert_eq!(
            decide(
                p2.tables(),
                &e,
                dir,
                &pod,
                p2.epoch().wrapping_add(1),
                false
            ),
            Offer::Nothing,
            "a fast path of other tables"
        );
        r
    };
    let _ = (be, be_if);
}

#[test]
fn udp_is_offered_once_a_reply_was_seen_and_a_full_map_is_counted() {
    let (mut p, mut o, m) = setup(1);
    let q = step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    let (be, be_if) = backend(&q);
    step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    assert!(m.0.lock().unwrap().entries.is_empty(), "no reply yet");
    step(&mut p, &mut o, udp(be, CLIENT, 5353, 5000), be_if, S);
    assert_eq!(m.0.lock().unwrap().entries.len(), 1, "the reply direction");
    step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    assert_eq!(o.counters.offload_full, 1, "one entry fits");
    m.0.lock().unwrap().cap = 2;
    step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    assert_eq!(
        m.0.lock().unwrap().entries.len(),
        2,
        "offered again by its next packet"
    );
    assert_eq!(o.counters.reoffered, 1);
}

#[test]
fn an_offered_flow_the_kernel_forwards_is_refreshed_and_an_idle_one_expires() {
    let (mut p, mut o, m) = setup(100);
    let q = step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    let (be, be_if) = backend(&q);
    step(&mut p, &mut o, udp(be, CLIENT, 5353, 5000), be_if, S);
    step(
        &mut p,
        &mut o,
        udp(CLIENT, DNS_VIP, 5000, 53),
        "pod-client",
        S,
    );
    assert_eq!(m.0.lock().unwrap().entries.len(), 2);
    let udp_timeout = p.tables().ct.udp;
    // The kernel forwarded a packet 1 s before the timer ran out.
    for e in m.0.lock().unwrap().entries.values_mut() {
        e.1 = Some(S);
    }
    let t1 = S + udp_timeout + 1;
    p.gc(t1);
    o.after_burst(&mut p, &[], t1);
    assert_eq!(o.counters.refreshed, 1);
    assert_eq!(p.conntrack().len(), 1, "kept: the kernel forwarded it");
    // Then idle there too.
    for e in m.0.lock().unwrap().entries.values_mut() {
        e.1 = Some(udp_timeout);
    }
    let t2 = t1 + udp_timeout + 2 * S;
    p.gc(t2);
    o.after_burst(&mut p, &[], t2);
    assert_eq!(o.counters.expired, 1);
    assert_eq!(p.conntrack().len(), 0);
    assert!(
        m.0.lock().unwrap().entries.is_empty(),
        "its directions left the kernel"
    );
}

#[test]
fn clear_empties_the_map_and_the_flows_are_offered_again() {
    let (mut p, mut o, m) = setup(100);
    connected(&mut p, &mut o, &m);
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    assert_eq!(m.0.lock().unwrap().entries.len(), 1);
    o.clear(&mut p);
    assert!(m.0.lock().unwrap().entries.is_empty());
    let key = p.tuples(1)[0];
    let (slot, dir) = p.conntrack().find(&key).unwrap();
    assert!(!p.conntrack().entry(slot).offered(dir));
    step(
        &mut p,
        &mut o,
        tcp(CLIENT, VIP, 40000, 80, "A"),
        "pod-client",
        S,
    );
    assert_eq!(m.0.lock().unwrap().entries.len(), 1);
    assert_eq!(o.counters.reoffered, 0, "a fresh offer, not a repair");
    // An interface re-created: cleared after the next burst.
    o.request_clear();
    o.after_burst(&mut p, &[], S);
    assert!(m.0.lock().unwrap().entries.is_empty());
    assert_eq!(o.counters.cleared, 2);
}

#[test]
fn the_slow_path_mac_names_the_ingress_ifindex() {
    assert_eq!(
        ifindex_from_slow_path_mac(&[0x02, 0x6e, 0x70, 0x01, 0x02, 0x03]),
        Some(0x010203)
    );
    assert_eq!(
        ifindex_from_slow_path_mac(&[0x02, 0x6e, 0x70, 0, 0, 0]),
        None
    );
    assert_eq!(ifindex_from_slow_path_mac(&[0x02, 0, 0, 0, 1, 1]), None);
    assert_eq!(ifindex_from_slow_path_mac(&[0x02, 0x6e]), None);
}
