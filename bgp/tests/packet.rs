//! Codec cases as (bytes, struct) pairs, checked both ways, then the error cases with the
//! NOTIFICATION each must produce (RFC 4271 §6, RFC 7606).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nodeplane_bgp::packet::update::{pack_updates, pack_withdrawals, ErrorAction};
use nodeplane_bgp::packet::{
    frame_len, AsPath, Capability, Community, Context, Family, GrFamily, GracefulRestart, Message,
    MpReach, MpUnreach, Notification, Open, Origin, PathAttributes, RouteRefresh, Update,
};

const M: [u8; 16] = [0xff; 16];

fn msg(len: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = M.to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    assert_eq!(v.len(), len as usize, "test vector length field");
    v
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn cases() -> Vec<(&'static str, Vec<u8>, Message)> {
    let ctx_bytes_open = [
        4, 0xfd, 0xe9, 0, 90, 10, 0, 0, 2, 20, //
        2, 6, 1, 4, 0, 1, 0, 1, // MP ipv4 unicast
        2, 2, 2, 0, // route refresh
        2, 6, 65, 4, 0xfa, 0x56, 0xea, 0x01, // 4-octet AS 4200000001
    ];
    let gr_open = [
        4, 0x5b, 0xa0, 0, 3, 10, 0, 0, 1, 10, //
        2, 8, 64, 6, 0x80, 0x78, 0, 2, 1, 0x80, // GR: R, 120 s, ipv6 unicast F
    ];
    let v4_update = [
        0, 0, 0, 20, //
        0x40, 1, 1, 0, // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, // AS_PATH seq [65001]
        0x40, 3, 4, 10, 0, 0, 2, // NEXT_HOP
        24, 10, 244, 1, // 10.244.1.0/24
    ];
    let mut v6_update = vec![
        0, 0, 0, 46, //
        0x40, 1, 1, 0, //
        0x40, 2, 0, // empty AS_PATH (iBGP)
        0x40, 5, 4, 0, 0, 0, 100, // LOCAL_PREF 100
        0xc0, 8, 4, 0xfd, 0xe8, 0, 100, // COMMUNITIES 65000:100
        0x80, 14, 21, 0, 2, 1, 16, // MP_REACH ipv6 unicast, nh len 16
    ];
    v6_update.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    v6_update.extend_from_slice(&[0, 0]); // reserved, then /0 default route
                                          // That makes MP_REACH 2+1+1+16+1+1 = 22 bytes.
    v6_update[27] = 22;
    vec![
        ("keepalive", msg(19, 4, &[]), Message::Keepalive),
        (
            "notification shutdown",
            msg(25, 3, &[6, 2, 3, b'b', b'y', b'e']),
            Message::Notification(Notification::shutdown("bye")),
        ),
        (
            "route refresh",
            msg(23, 5, &[0, 2, 0, 1]),
            Message::RouteRefresh(RouteRefresh {
                afi: 2,
                subtype: 0,
                safi: 1,
            }),
        ),
        (
            "open 4-octet AS",
            msg(49, 1, &ctx_bytes_open),
            Message::Open(Open {
                my_as: 65001,
                hold_time: 90,
                bgp_id: Ipv4Addr::new(10, 0, 0, 2),
                capabilities: vec![
                    Capability::Multiprotocol { afi: 1, safi: 1 },
                    Capability::RouteRefresh,
                    Capability::FourOctetAs(4_200_000_001),
                ],
            }),
        ),
        (
            "open graceful restart",
            msg(39, 1, &gr_open),
            Message::Open(Open {
                my_as: 23456,
                hold_time: 3,
                bgp_id: Ipv4Addr::new(10, 0, 0, 1),
                capabilities: vec![Capability::GracefulRestart(GracefulRestart {
                    restart_state: true,
                    notification: false,
                    restart_time: 120,
                    families: vec![GrFamily {
                        afi: 2,
                        safi: 1,
                        forwarding_preserved: true,
                    }],
                })],
            }),
        ),
        (
            "update ipv4",
            msg(47, 2, &v4_update),
            Message::Update(Update {
                attrs: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath::sequence(vec![65001])),
                    next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
                    ..Default::default()
                },
                nlri: vec!["10.244.1.0/24".parse().unwrap()],
                ..Default::default()
            }),
        ),
        (
            "update ipv6 mp_reach ibgp",
            msg(19 + 4 + 46, 2, &v6_update),
            Message::Update(Update {
                attrs: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath::default()),
                    local_pref: Some(100),
                    communities: vec!["65000:100".parse().unwrap()],
                    mp_reach: Some(MpReach {
                        afi: 2,
                        safi: 1,
                        next_hop: vec![IpAddr::V6("fd00::2".parse().unwrap())],
                        nlri: vec![net("::/0")],
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
        ),
        (
            "end-of-rib ipv6",
            msg(29, 2, &[0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]),
            Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
        ),
        (
            "withdraw ipv4",
            msg(28, 2, &[0, 5, 25, 10, 244, 2, 0, 0, 0]),
            Message::Update(Update {
                withdrawn: vec!["10.244.2.0/25".parse().unwrap()],
                ..Default::default()
            }),
        ),
    ]
}

#[test]
fn bytes_and_structs_both_ways() {
    let ctx = Context::default();
    for (name, bytes, want) in cases() {
        assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())), "{name}: framing");
        let got = Message::decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}: decode");
        assert_eq!(want.to_bytes(&ctx).unwrap(), bytes, "{name}: encode");
    }
}

#[test]
fn end_of_rib_is_recognised() {
    assert_eq!(
        Update::end_of_rib(Family::Ipv4Unicast).is_end_of_rib(),
        Some(Family::Ipv4Unicast)
    );
    assert_eq!(
        Update::end_of_rib(Family::Ipv6Unicast).is_end_of_rib(),
        Some(Family::Ipv6Unicast)
    );
    let mut u = Update::end_of_rib(Family::Ipv6Unicast);
    u.attrs
        .mp_unreach
        .as_mut()
        .unwrap()
        .withdrawn
        .push(net("fd00::/64"));
    assert_eq!(u.is_end_of_rib(), None);
}

#[test]
fn two_octet_session_uses_as_trans_and_as4_path() {
    let ctx = Context {
        four_octet_as: false,
    };
    let u = Message::Update(Update {
        attrs: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![4_200_000_001])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ..Default::default()
        },
        nlri: vec!["10.244.1.0/24".parse().unwrap()],
        ..Default::default()
    });
    let bytes = u.to_bytes(&ctx).unwrap();
    let Message::Update(back) = Message::decode(&bytes, &ctx).unwrap() else {
        panic!("not an update")
    };
    assert_eq!(back.attrs.as_path, Some(AsPath::sequence(vec![23456])));
    let as4 = &back.attrs.other[0];
    assert_eq!(as4.code, 17, "AS4_PATH");
    assert_eq!(as4.value, vec![2, 1, 0xfa, 0x56, 0xea, 0x01]);
}

/// The type codes of an UPDATE's path attributes, in wire order.
fn attr_codes(bytes: &[u8]) -> Vec<u8> {
    let wlen = usize::from(u16::from_be_bytes([bytes[19], bytes[20]]));
    let at = 21 + wlen;
    let alen = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
    let (mut i, end, mut codes) = (at + 2, at + 2 + alen, Vec::new());
    while i < end {
        let (flags, code) = (bytes[i], bytes[i + 1]);
        codes.push(code);
        i += if flags & 0x10 != 0 {
            4 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]))
        } else {
            3 + usize::from(bytes[i + 2])
        };
    }
    codes
}

/// Found by the `session` fuzz target: AS4_PATH (17) went out between AS_PATH (2) and
/// NEXT_HOP (3), against RFC 4271 §5's ascending order, and the decoded message re-encoded to
/// other bytes. Attributes go out in ascending type order, and our bytes are stable.
#[test]
fn two_octet_session_sends_attributes_in_ascending_order() {
    let ctx = Context {
        four_octet_as: false,
    };
    let u = Message::Update(Update {
        attrs: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![4_200_000_001])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
            med: Some(10),
            communities: vec!["65000:100".parse().unwrap()],
            ..Default::default()
        },
        nlri: vec!["10.244.1.0/24".parse().unwrap()],
        ..Default::default()
    });
    let bytes = u.to_bytes(&ctx).unwrap();
    assert_eq!(attr_codes(&bytes), vec![1, 2, 3, 4, 8, 17]);
    let back = Message::decode(&bytes, &ctx).unwrap();
    assert_eq!(back.to_bytes(&ctx).unwrap(), bytes);
}

#[test]
fn packing_splits_at_4096_bytes_and_loses_nothing() {
    let ctx = Context::default();
    let prefixes: Vec<IpNet> = (0..3000u32)
        .map(|i| {
            IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap())
        })
        .collect();
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![65001])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
        ..Default::default()
    };
    let ups = pack_updates(&prefixes, &attrs, &ctx);
    assert!(ups.len() > 1);
    let mut seen = Vec::new();
    for u in &ups {
        let bytes = Message::Update(u.clone()).to_bytes(&ctx).expect("fits");
        assert!(bytes.len() <= 4096);
        seen.extend(u.nlri.iter().map(|p| IpNet::V4(*p)));
    }
    assert_eq!(seen, prefixes);

    let v6: Vec<IpNet> = (0..1000u128)
        .map(|i| {
            IpNet::V6(
                ipnet::Ipv6Net::new(Ipv6Addr::from((0xfd00u128 << 112) | (i << 64)), 64).unwrap(),
            )
        })
        .collect();
    let mut seen = Vec::new();
    for u in pack_withdrawals(Family::Ipv6Unicast, &v6) {
        assert!(Message::Update(u.clone()).to_bytes(&ctx).unwrap().len() <= 4096);
        seen.extend(u.attrs.mp_unreach.unwrap().withdrawn);
    }
    assert_eq!(seen, v6);
}

/// (name, message bytes, expected NOTIFICATION code/subcode).
fn error_cases() -> Vec<(&'static str, Vec<u8>, u8, u8)> {
    let mut bad_marker = msg(19, 4, &[]);
    bad_marker[3] = 0;
    vec![
        ("bad marker", bad_marker, 1, 1),
        ("length below 19", [&M[..], &[0, 18, 4]].concat(), 1, 2),
        (
            "length above 4096",
            [&M[..], &[0x10, 0x01, 4]].concat(),
            1,
            2,
        ),
        ("keepalive with a body", msg(20, 4, &[0]), 1, 2),
        ("unknown type", msg(19, 9, &[]), 1, 3),
        (
            "open version 3",
            msg(29, 1, &[3, 0, 1, 0, 90, 1, 1, 1, 1, 0]),
            2,
            1,
        ),
        (
            "open hold time 1",
            msg(29, 1, &[4, 0, 1, 0, 1, 1, 1, 1, 1, 0]),
            2,
            6,
        ),
        (
            "open bgp id 0",
            msg(29, 1, &[4, 0, 1, 0, 90, 0, 0, 0, 0, 0]),
            2,
            3,
        ),
        (
            "open unknown optional parameter",
            msg(31, 1, &[4, 0, 1, 0, 90, 1, 1, 1, 1, 2, 9, 0]),
            2,
            4,
        ),
        ("update withdrawn overruns", msg(23, 2, &[0, 9, 0, 0]), 3, 1),
        (
            "update nlri prefix /33",
            msg(28, 2, &[0, 0, 0, 0, 33, 1, 2, 3, 4]),
            3,
            10,
        ),
        (
            "update duplicate mp_unreach",
            msg(
                35,
                2,
                &[0, 0, 0, 12, 0x80, 15, 3, 0, 2, 1, 0x80, 15, 3, 0, 2, 1],
            ),
            3,
            1,
        ),
        (
            "update mp_reach bad next hop length",
            msg(33, 2, &[0, 0, 0, 10, 0x80, 14, 7, 0, 2, 1, 3, 1, 2, 3]),
            3,
            9,
        ),
        // Attribute 99 with the optional bit clear (transitive only): RFC 4271 §6.3.
        (
            "update unrecognized well-known attribute",
            msg(27, 2, &[0, 0, 0, 4, 0x40, 99, 1, 0]),
            3,
            2,
        ),
    ]
}

#[test]
fn errors_name_their_notification() {
    let ctx = Context::default();
    for (name, bytes, code, subcode) in error_cases() {
        let err = frame_len(&bytes)
            .err()
            .or_else(|| Message::decode(&bytes, &ctx).err())
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!((err.code, err.subcode), (code, subcode), "{name}: {err}");
    }
}

#[test]
fn rfc7606_treat_as_withdraw_keeps_the_session() {
    let ctx = Context::default();
    // ORIGIN with value 7, then a good NEXT_HOP and one NLRI.
    let body = [
        0, 0, 0, 20, //
        0x40, 1, 1, 7, //
        0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, //
        0x40, 3, 4, 10, 0, 0, 2, //
        24, 10, 244, 1,
    ];
    let Message::Update(u) = Message::decode(&msg(47, 2, &body), &ctx).unwrap() else {
        panic!()
    };
    assert_eq!(u.malformed.len(), 1);
    assert_eq!(u.malformed[0].action, ErrorAction::TreatAsWithdraw);
    assert_eq!(u.malformed[0].attr, 1);

    // NLRI without NEXT_HOP: missing mandatory attribute.
    let body = [0, 0, 0, 4, 0x40, 1, 1, 0, 24, 10, 244, 1];
    let Message::Update(u) = Message::decode(&msg(31, 2, &body), &ctx).unwrap() else {
        panic!()
    };
    let attrs: Vec<u8> = u.malformed.iter().map(|m| m.attr).collect();
    assert_eq!(attrs, vec![2, 3], "AS_PATH and NEXT_HOP missing");

    // ATOMIC_AGGREGATE with a byte: attribute-discard.
    let body = [0, 0, 0, 4, 0x40, 6, 1, 0];
    let Message::Update(u) = Message::decode(&msg(27, 2, &body), &ctx).unwrap() else {
        panic!()
    };
    assert_eq!(u.malformed[0].action, ErrorAction::AttributeDiscard);

    // A repeated COMMUNITIES: the second is discarded, the first kept.
    let body = [0, 0, 0, 14, 0xc0, 8, 4, 0, 1, 0, 2, 0xc0, 8, 4, 0, 3, 0, 4];
    let Message::Update(u) = Message::decode(&msg(37, 2, &body), &ctx).unwrap() else {
        panic!()
    };
    assert_eq!(u.attrs.communities, vec![Community(0x0001_0002)]);
    assert_eq!(u.malformed[0].action, ErrorAction::AttributeDiscard);
}

#[test]
fn communities_parse_and_print() {
    let c: Community = "65535:0".parse().unwrap();
    assert_eq!(c, Community::GRACEFUL_SHUTDOWN);
    assert_eq!(c.to_string(), "65535:0");
    assert!("65536:1".parse::<Community>().is_err());
    assert!("1".parse::<Community>().is_err());
}

#[test]
fn shutdown_message_is_read_back() {
    let n = Notification::shutdown("maintenance");
    assert_eq!(n.shutdown_message(), Some("maintenance"));
    assert!(n.to_string().contains("maintenance"));
    let _ = MpUnreach {
        afi: 2,
        safi: 1,
        withdrawn: vec![],
    };
}

/// An OPEN whose optional parameters (one capability parameter per capability, in the base
/// form) take `params` bytes: one unknown capability of `params - 4` bytes.
fn open_with_params(params: usize) -> Open {
    Open {
        my_as: 65001,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(10, 0, 0, 2),
        capabilities: vec![Capability::Unknown {
            code: 200,
            data: (0..params - 4).map(|i| i as u8).collect(),
        }],
    }
}

/// Issue 13 item 4: decode and encode agree at the edge of the 1-byte optional parameters
/// length (RFC 9072). 254 and 255 bytes stay in the base form (255 is unambiguous: the first
/// parameter's type is 2, not 255); 256 needs the extended form. Each encodes, decodes to
/// the same OPEN and encodes to the same bytes.
#[test]
fn open_optional_parameters_round_trip_at_254_255_256_bytes() {
    let ctx = Context::default();
    for params in [254usize, 255, 256] {
        let open = Message::Open(open_with_params(params));
        let bytes = open
            .to_bytes(&ctx)
            .unwrap_or_else(|e| panic!("{params}: encode: {e}"));
        // Header 19, version 1, AS 2, hold 2, id 4: the optional parameters length at 28.
        let (form, body) = if params <= 255 {
            assert_eq!(usize::from(bytes[28]), params, "{params}: base form length");
            ("base", params)
        } else {
            assert_eq!(
                &bytes[28..30],
                &[255, 255],
                "{params}: extended form marker"
            );
            let len = usize::from(u16::from_be_bytes([bytes[30], bytes[31]]));
            // One more byte per parameter in the extended form: 2-byte parameter lengths.
            assert_eq!(len, params + 1, "{params}: extended length");
            ("extended", len + 3)
        };
        assert_eq!(bytes.len(), 29 + body, "{params}: {form} message length");
        let back = Message::decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{params}: {e}"));
        assert_eq!(back, open, "{params}: decode");
        assert_eq!(back.to_bytes(&ctx).unwrap(), bytes, "{params}: re-encode");
    }
}

/// What a peer may send: exactly 255 bytes of parameters in the base form, and a short
/// parameter list in the extended form (RFC 9072 lets configuration force it). Both decode, and
/// what decodes encodes and decodes back to the same OPEN.
#[test]
fn open_received_in_either_form_encodes_back() {
    let ctx = Context::default();
    let caps = |n: usize| {
        let mut v = vec![200u8, n as u8];
        v.extend((0..n).map(|i| i as u8));
        v
    };
    let head = |len: u16| {
        let mut b = M.to_vec();
        b.extend_from_slice(&len.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&[4, 0xfd, 0xe9, 0, 90, 10, 0, 0, 2]);
        b
    };
    // Base form, 255 bytes: one parameter of 253 (a capability of 251 data bytes).
    let mut base = head(19 + 10 + 255);
    base.extend_from_slice(&[255, 2, 253]);
    base.extend_from_slice(&caps(251));
    // Extended form, one parameter carrying a capability of 4 data bytes.
    let mut ext = head(19 + 10 + 3 + 9);
    ext.extend_from_slice(&[255, 255, 0, 9, 2, 0, 6]);
    ext.extend_from_slice(&caps(4));
    // Extended form carrying a capability of 255 data bytes: no base-form parameter holds it.
    let mut big = head(19 + 10 + 3 + 260);
    big.extend_from_slice(&[255, 255, 1, 4, 2, 1, 1]);
    big.extend_from_slice(&caps(255));
    for (name, bytes) in [
        ("base 255", base),
        ("extended 9", ext),
        ("extended 260", big),
    ] {
        let m = Message::decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = m
            .to_bytes(&ctx)
            .unwrap_or_else(|e| panic!("{name}: encode: {e}"));
        assert_eq!(Message::decode(&again, &ctx).unwrap(), m, "{name}");
        if name == "base 255" {
            assert_eq!(again, bytes, "{name}: same bytes");
        }
    }
}
