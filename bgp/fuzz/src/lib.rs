//! What the BGP fuzz targets share: the round trip of one received message through our codec
//! ([`round_trip`]) and its comparison with an independent decoder, netgauze-bgp-pkt
//! ([`compare_with_netgauze`]), and the check of a message the FSM sends ([`check_sent`]).

use std::collections::HashMap;

use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use nodeplane_bgp::packet::{Context, Message};

/// Our decoding of one framed message, checked: what decodes (and is not marked malformed
/// under RFC 7606, which discards what it cannot keep) encodes, and decodes back equal; and
/// netgauze, where it accepts the bytes too, sees the same facts.
pub fn round_trip(bytes: &[u8], ctx: &Context) -> Option<Message> {
    let m = Message::decode(bytes, ctx).ok()?;
    if let Message::Update(u) = &m {
        if !u.malformed.is_empty() {
            return Some(m);
        }
    }
    let again = m
        .to_bytes(ctx)
        .unwrap_or_else(|e| panic!("decoded {m:?} from {bytes:02x?}, but it does not encode: {e}"));
    let back = Message::decode(&again, ctx)
        .unwrap_or_else(|e| panic!("our encoding {again:02x?} of {m:?} does not decode: {e}"));
    assert_eq!(
        back, m,
        "decode(encode(m)) != m; bytes in {bytes:02x?}, re-encoded {again:02x?}"
    );
    compare_with_netgauze(bytes, &m, ctx);
    Some(m)
}

fn netgauze_parse(bytes: &[u8], ctx: &Context) -> Option<BgpMessage> {
    let mut nctx = BgpParsingContext::new(
        ctx.four_octet_as,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        true,
        true,
    );
    BgpMessage::parse(&mut SliceReader::new(bytes), &mut nctx).ok()
}

/// Where netgauze accepts bytes we decoded, the facts agree: the message type, an OPEN's
/// AS, hold time and identifier, an UPDATE's IPv4 NLRI and withdrawn routes. (Acceptance
/// itself may differ: netgauze refuses multicast NLRI, we are RFC 7606-lenient, etc.)
pub fn compare_with_netgauze(bytes: &[u8], ours: &Message, ctx: &Context) {
    let Some(theirs) = netgauze_parse(bytes, ctx) else {
        return;
    };
    // RFC 4271 §4.3: the trailing bits of an NLRI prefix are irrelevant. We clear them,
    // netgauze keeps them (`02 01` is 0.0.0.0/2 to us, 1.0.0.0/2 to netgauze): compare the
    // prefixes they stand for.
    let name =
        |n: &netgauze_bgp_pkt::nlri::Ipv4UnicastAddress| n.network().address().trunc().to_string();
    match (ours, &theirs) {
        (Message::Open(o), BgpMessage::Open(n)) => {
            assert_eq!(
                (o.my_as, o.hold_time, o.bgp_id),
                (n.my_as(), n.hold_time(), n.bgp_id()),
                "OPEN {bytes:02x?}"
            );
        }
        (Message::Update(u), BgpMessage::Update(n)) => {
            let w: Vec<String> = u.withdrawn.iter().map(|p| p.to_string()).collect();
            let nw: Vec<String> = n.withdraw_routes().iter().map(name).collect();
            assert_eq!(w, nw, "withdrawn routes of UPDATE {bytes:02x?}");
            let r: Vec<String> = u.nlri.iter().map(|p| p.to_string()).collect();
            let nr: Vec<String> = n.nlri().iter().map(name).collect();
            assert_eq!(r, nr, "NLRI of UPDATE {bytes:02x?}");
        }
        (Message::Notification(_), BgpMessage::Notification(_))
        | (Message::Keepalive, BgpMessage::KeepAlive)
        | (Message::RouteRefresh(_), BgpMessage::RouteRefresh(_)) => {}
        _ => panic!("we decode {ours:?}, netgauze {theirs:?} from {bytes:02x?}"),
    }
}

/// A message our FSM sends: it encodes (under the session's settings), decodes back equal (a
/// 2-octet session: re-encodes to the same bytes), and
/// netgauze reads an OPEN, UPDATE or KEEPALIVE of ours.
pub fn check_sent(m: &Message, ctx: &Context) {
    let bytes = m
        .to_bytes(ctx)
        .unwrap_or_else(|e| panic!("the FSM sends {m:?}, which does not encode: {e}"));
    let back = Message::decode(&bytes, ctx)
        .unwrap_or_else(|e| panic!("our own {m:?} ({bytes:02x?}) does not decode: {e}"));
    if ctx.four_octet_as {
        assert_eq!(
            &back, m,
            "our own message changes through the codec: {bytes:02x?}"
        );
    } else {
        // A 2-octet session carries 4-octet ASNs as AS_TRANS in AS_PATH plus an AS4_PATH
        // attribute (RFC 6793 §4.2.2), which decode as such: the bytes must be stable.
        let again = back
            .to_bytes(ctx)
            .expect("what we decoded of our own encodes");
        assert_eq!(
            again, bytes,
            "our own {m:?} is not stable through the codec"
        );
    }
    if matches!(
        m,
        Message::Open(_) | Message::Update(_) | Message::Keepalive
    ) {
        assert!(
            netgauze_parse(&bytes, ctx).is_some(),
            "netgauze rejects our {m:?}: {bytes:02x?}"
        );
        compare_with_netgauze(&bytes, m, ctx);
    }
}
