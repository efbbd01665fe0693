//! Our codec against an independent one (netgauze-bgp-pkt): what we encode, netgauze decodes
//! and sees the same facts in; what netgauze re-encodes, we decode back to the same struct.
//! Then seeded garbage into our decoder: it must never panic.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;
use nodeplane_bgp::fsm::{Action, Event, Neighbor, Params};
use nodeplane_bgp::packet::update::pack_withdrawals;
use nodeplane_bgp::packet::{
    frame_len, Context, Family, Message, Notification, RouteRefresh, Update,
};

fn params(local_as: u32, remote_as: u32) -> Params {
    Params {
        name: "leaf".into(),
        peer: "10.0.0.1".parse().unwrap(),
        local_as,
        remote_as,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: 9,
        keepalive: None,
        connect_retry: Duration::from_secs(1),
        passive: false,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        next_hop_v4: None,
        next_hop_v6: Some("fd00::2".parse().unwrap()),
        communities: vec!["65000:100".parse().unwrap(), "65535:0".parse().unwrap()],
        med: Some(10),
        local_pref: 200,
        restart_time: Some(120),
        forwarding_preserved: true,
    }
}

/// Drives an FSM to Established against a scripted peer and collects every message it sends.
fn messages_from_fsm(local_as: u32, remote_as: u32) -> Vec<Message> {
    let now = Instant::now();
    let mut n = Neighbor::new(params(local_as, remote_as), 1 << 32);
    let routes: BTreeSet<IpNet> = ["10.244.1.0/24", "192.0.2.10/32", "fd00:244:1::/64"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut sent = Vec::new();
    let mut take = |acts: Vec<Action>| {
        for a in acts {
            if let Action::Send { msg, .. } = a {
                sent.push(msg);
            }
        }
    };
    take(n.handle(Event::RoutesChanged(routes), now));
    take(n.handle(Event::ManualStart, now));
    let conn = 1 << 32;
    take(n.handle(
        Event::TcpCrAcked {
            conn,
            local: "10.0.0.2:40000".parse().unwrap(),
        },
        now,
    ));
    let mut peer = n.our_open();
    peer.bgp_id = Ipv4Addr::new(10, 0, 0, 1);
    peer.my_as = u16::try_from(remote_as).unwrap_or(23456);
    peer.capabilities
        .retain(|c| !matches!(c, nodeplane_bgp::packet::Capability::FourOctetAs(_)));
    peer.capabilities
        .push(nodeplane_bgp::packet::Capability::FourOctetAs(remote_as));
    take(n.handle(Event::BgpOpen { conn, open: peer }, now));
    take(n.handle(Event::KeepAliveMsg { conn }, now));
    take(n.handle(Event::RoutesChanged(BTreeSet::new()), now));
    sent
}

fn netgauze_parse(bytes: &[u8]) -> BgpMessage {
    let mut ctx =
        BgpParsingContext::new(true, HashMap::new(), HashMap::new(), true, true, true, true);
    let mut r = SliceReader::new(bytes);
    BgpMessage::parse(&mut r, &mut ctx)
        .unwrap_or_else(|e| panic!("netgauze rejects our bytes {bytes:02x?}: {e:?}"))
}

fn netgauze_write(m: &BgpMessage) -> Vec<u8> {
    let mut out = Vec::new();
    m.write(&mut out).expect("netgauze writes");
    out
}

#[test]
fn netgauze_reads_what_we_write_and_we_read_what_it_writes() {
    let ctx = Context::default();
    let mut msgs = messages_from_fsm(4_200_000_001, 65000);
    msgs.extend(messages_from_fsm(4_200_000_001, 4_200_000_001)); // iBGP: LOCAL_PREF
    msgs.push(Message::Notification(Notification::shutdown("maintenance")));
    msgs.push(Message::RouteRefresh(RouteRefresh {
        afi: 2,
        subtype: 0,
        safi: 1,
    }));
    msgs.extend(
        pack_withdrawals(Family::Ipv4Unicast, &["10.244.1.0/24".parse().unwrap()])
            .into_iter()
            .map(Message::Update),
    );
    let mut kinds = BTreeSet::new();
    for m in &msgs {
        let ours = m.to_bytes(&ctx).unwrap();
        let theirs = netgauze_parse(&ours);
        let dbg = format!("{theirs:?}");
        match m {
            Message::Open(o) => {
                let BgpMessage::Open(no) = &theirs else {
                    panic!("{dbg}")
                };
                assert_eq!(no.my_asn4(), o.asn());
                assert_eq!(no.hold_time(), o.hold_time);
                assert_eq!(no.bgp_id(), o.bgp_id);
                assert!(dbg.contains("GracefulRestart"), "{dbg}");
                assert!(dbg.contains("RouteRefresh"), "{dbg}");
                assert!(dbg.contains("FourOctetAs"), "{dbg}");
            }
            Message::Update(u) => {
                let BgpMessage::Update(nu) = &theirs else {
                    panic!("{dbg}")
                };
                assert_eq!(nu.nlri().len(), u.nlri.len(), "{dbg}");
                assert_eq!(nu.withdraw_routes().len(), u.withdrawn.len(), "{dbg}");
                for p in &u.nlri {
                    assert!(dbg.contains(&p.to_string()), "{p} missing in {dbg}");
                }
                if let Some(mp) = &u.attrs.mp_reach {
                    for p in &mp.nlri {
                        assert!(dbg.contains(&p.to_string()), "{p} missing in {dbg}");
                    }
                    assert!(dbg.contains("fd00::2"), "{dbg}");
                }
                if let Some(path) = &u.attrs.as_path {
                    for asn in path.segments.iter().flat_map(|s| &s.asns) {
                        assert!(dbg.contains(&asn.to_string()), "AS {asn} missing in {dbg}");
                    }
                }
                if let Some(lp) = u.attrs.local_pref {
                    assert!(dbg.contains("LocalPreference"), "{dbg}");
                    assert!(dbg.contains(&lp.to_string()), "{dbg}");
                }
                if let Some(f) = u.is_end_of_rib() {
                    assert!(nu.end_of_rib().is_some(), "netgauze misses EoR {f}: {dbg}");
                }
            }
            _ => {}
        }
        let back = netgauze_write(&theirs);
        let decoded = Message::decode(&back, &ctx).unwrap_or_else(|e| panic!("{e} on {back:02x?}"));
        assert_eq!(
            &decoded, m,
            "netgauze bytes {back:02x?} vs ours {ours:02x?}"
        );
        kinds.insert(m.kind_name());
    }
    assert_eq!(
        kinds.len(),
        5,
        "every message type was cross-checked: {kinds:?}"
    );
    // The FSM sent announcements of both families and both End-of-RIBs.
    let eors: BTreeSet<Family> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Update(u) => u.is_end_of_rib(),
            _ => None,
        })
        .collect();
    assert_eq!(eors.len(), 2);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn garbage_never_panics_the_decoder() {
    let mut rng = Rng(0x6e6f_6465_706c_616e);
    let seeds: Vec<Vec<u8>> = messages_from_fsm(65001, 65000)
        .iter()
        .map(|m| m.to_bytes(&Context::default()).unwrap())
        .collect();
    let (mut ok, mut err) = (0u32, 0u32);
    for i in 0..30_000u32 {
        let mut buf = match i % 3 {
            // Pure noise.
            0 => (0..rng.below(120))
                .map(|_| rng.next() as u8)
                .collect::<Vec<u8>>(),
            // A valid header with a random type and body.
            1 => {
                let len = 19 + rng.below(200) as usize;
                let mut v = vec![0xff; 16];
                v.extend_from_slice(&(len as u16).to_be_bytes());
                v.push(1 + rng.below(5) as u8);
                v.extend((19..len).map(|_| rng.next() as u8));
                v
            }
            // A real message with a few bytes changed (past the header).
            _ => {
                let mut v = seeds[rng.below(seeds.len() as u64) as usize].clone();
                for _ in 0..=rng.below(4) {
                    let at = 18 + rng.below((v.len() - 18) as u64) as usize;
                    v[at] = rng.next() as u8;
                }
                v
            }
        };
        if i % 7 == 0 && buf.len() > 19 {
            buf.truncate(19 + rng.below((buf.len() - 19) as u64) as usize);
        }
        for four in [true, false] {
            let ctx = Context {
                four_octet_as: four,
            };
            let _ = frame_len(&buf);
            match Message::decode(&buf, &ctx) {
                Ok(m) => {
                    ok += 1;
                    // Whatever we accept, we can write again.
                    let _ = m.to_bytes(&ctx);
                }
                Err(e) => {
                    err += 1;
                    assert!((1..=7).contains(&e.code), "{e}");
                }
            }
        }
    }
    assert!(
        ok > 1000 && err > 1000,
        "the corpus exercises both paths: {ok} ok, {err} err"
    );
}

#[test]
fn update_of_another_family_is_discarded_not_fatal() {
    // MP_REACH for AFI 25 (L2VPN): we do not speak it; keep the session, mark nothing parsed.
    let body = [0, 0, 0, 12, 0x80, 14, 9, 0, 25, 65, 4, 1, 2, 3, 4, 0];
    let mut bytes = vec![0xff; 16];
    bytes.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    bytes.push(2);
    bytes.extend_from_slice(&body);
    let Message::Update(u) = Message::decode(&bytes, &Context::default()).unwrap() else {
        panic!()
    };
    let mp = u.attrs.mp_reach.unwrap();
    assert_eq!((mp.afi, mp.nlri.len()), (25, 0));
    let _: Option<IpAddr> = None;
    let _ = Update::default();
}
