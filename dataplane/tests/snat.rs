//! Source NAT (issue 14 item 1) against the example node, with built frames: masquerade of
//! NodePort traffic to a backend on another node, the reply reverse-translated, the SNAT in
//! `ct list`'s row, ports whose replies come back to the allocating worker, and exhaustion as
//! a counted drop.
//!
//! ```text
//!  world 198.51.100.7 ── uplink0 ── node-1 (192.168.100.2) ── nodeplane
//!  web-nodeport 30080/tcp on 192.168.100.2 → 10.244.2.5:8080 (a pod on node-2, via uplink0)
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use nodeplane_dataplane::flow::Addr;
use nodeplane_dataplane::owner::reply_owner;
use nodeplane_dataplane::worker::CtRow;
use nodeplane_dataplane::{Action, DropReason, MaglevCache, Pipeline, Tables};
use nodeplane_state::State;

mod common;
use common::{remote_nodeport, REMOTE};

const WORLD: [u8; 4] = [198, 51, 100, 7];
const NODE: [u8; 4] = [192, 168, 100, 2];
const S: u64 = 1_000_000_000;

/// The example node, `web-nodeport`'s only backend on another node (source NAT).
fn state(snat_range: [u16; 2]) -> State {
    remote_nodeport(|s| s.node.snat_port_range = snat_range)
}

fn pipeline(snat_range: [u16; 2]) -> Pipeline {
    let s = state(snat_range);
    Pipeline::new(Arc::new(Tables::build(&s, 1, &mut MaglevCache::default())))
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 1, 0])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 100, 65000);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::new();
    b.write(&mut f, b"x").unwrap();
    f
}

/// (src, sport, dst, dport) of a frame, its IPv4 and TCP checksums verified.
fn tuple(f: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP")
    };
    let sum = t
        .to_header()
        .calc_checksum_ipv4(&h, t.payload())
        .expect("checksum");
    assert_eq!(t.checksum(), sum, "TCP checksum");
    (
        h.source,
        t.source_port(),
        h.destination,
        t.destination_port(),
    )
}

#[test]
fn nodeport_to_a_remote_backend_is_masqueraded_and_its_reply_restored() {
    let mut p = pipeline([61000, 65535]);
    let up = p.tables().iface_index("uplink0").unwrap();
    let mut syn = tcp(WORLD, NODE, 61500, 30080, true);
    let o = p.process_one(&mut syn, up, S);
    assert_eq!(o.action, Action::Forward(up));
    // From the node IP, the client's port kept (inside the range and free).
    assert_eq!(tuple(&syn), (NODE, 61500, REMOTE, 8080));
    let mut reply = tcp(REMOTE, NODE, 8080, 61500, true);
    let o = p.process_one(&mut reply, up, S + 1);
    assert_eq!(o.action, Action::Forward(up));
    assert_eq!(tuple(&reply), (NODE, 30080, WORLD, 61500));

    // A client port outside the range: a port of the range.
    let mut syn = tcp(WORLD, NODE, 40000, 30080, true);
    p.process_one(&mut syn, up, S + 2);
    let (src, port, dst, _) = tuple(&syn);
    assert_eq!((src, dst), (NODE, REMOTE));
    assert!((61000..=65535).contains(&port), "{port}");

    // `ct list` shows the source NAT.
    let t = Arc::clone(p.tables());
    let ct = p.conntrack();
    let rows: Vec<CtRow> = ct
        .iter_slots()
        .map(|(s, e)| CtRow::from_entry(0, &e, ct.expires(s), &t, S + 3))
        .collect();
    let row = rows.iter().find(|r| r.sport == 61500).unwrap();
    assert_eq!(row.snat.as_deref(), Some("192.168.100.2:61500"));
    assert_eq!(row.backend.as_deref(), Some("10.244.2.5"));
}

/// With several workers, a SNAT port is one whose replies flow ownership brings back to the
/// worker that allocated it (rule 2 of owner.rs: a backend's reply is owned by its
/// destination endpoint).
#[test]
fn allocated_ports_bring_replies_back_to_their_worker() {
    for me in 0..4 {
        let mut p = pipeline([61000, 65535]);
        p.set_owner(me, 4);
        let up = p.tables().iface_index("uplink0").unwrap();
        for sport in 40000..40020 {
            let mut syn = tcp(WORLD, NODE, sport, 30080, true);
            assert_eq!(p.process_one(&mut syn, up, S).action, Action::Forward(up));
            let (src, port, ..) = tuple(&syn);
            assert_eq!(reply_owner(&Addr::from(IpAddr::from(src)), port, 6, 4), me);
        }
    }
}

#[test]
fn exhausted_range_is_a_counted_drop() {
    let mut p = pipeline([61000, 61001]);
    let up = p.tables().iface_index("uplink0").unwrap();
    let mut ports = Vec::new();
    for sport in [50000, 50001] {
        let mut syn = tcp(WORLD, NODE, sport, 30080, true);
        assert_eq!(p.process_one(&mut syn, up, S).action, Action::Forward(up));
        ports.push(tuple(&syn).1);
    }
    ports.sort_unstable();
    assert_eq!(ports, [61000, 61001]);
    let mut syn = tcp(WORLD, NODE, 50002, 30080, true);
    let o = p.process_one(&mut syn, up, S);
    assert_eq!(o.action, Action::Drop(DropReason::SnatExhausted));
    assert_eq!(
        p.counters().drops[DropReason::SnatExhausted as usize],
        1,
        "counted by reason"
    );
    // A port frees itself when its flow expires (SYN_SENT: 60 s by default).
    let mut syn = tcp(WORLD, NODE, 50002, 30080, true);
    let o = p.process_one(&mut syn, up, 200 * S);
    assert_eq!(o.action, Action::Forward(up));
}
