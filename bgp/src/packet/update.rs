//! UPDATE (RFC 4271 §4.3) with MP_REACH/MP_UNREACH (RFC 4760), 4-octet AS_PATH (RFC 6793),
//! communities (RFC 1997) and RFC 7606 revised error handling.
//!
//! Error handling, per RFC 7606: errors that leave the NLRI unlocatable (withdrawn/attribute
//! lengths overrunning the message, malformed NLRI, malformed or duplicate MP_REACH/MP_UNREACH)
//! are session resets and come back as [`DecodeError`]. Malformed ORIGIN, AS_PATH, NEXT_HOP,
//! MED, LOCAL_PREF, COMMUNITIES, missing mandatory attributes are "treat-as-withdraw";
//! malformed ATOMIC_AGGREGATE/AGGREGATOR and repeated attributes are "attribute-discard".
//! Both come back as an `Update` whose [`Update::malformed`] lists what was wrong.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::{code, subcode, DecodeError, EncodeError};
use super::reader::Reader;
use super::{
    Context, Family, AFI_IPV4, AFI_IPV6, AS_TRANS, HEADER_LEN, MAX_MESSAGE_LEN, SAFI_UNICAST,
};

pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_AS4_PATH: u8 = 17;

const FLAG_OPTIONAL: u8 = 0x80;
/// The well-known attributes of RFC 4271 (ORIGIN, AS_PATH, NEXT_HOP, LOCAL_PREF,
/// ATOMIC_AGGREGATE): any other attribute code without the optional bit is unrecognized.
const KNOWN_WELL_KNOWN: [u8; 5] = [
    ATTR_ORIGIN,
    ATTR_AS_PATH,
    ATTR_NEXT_HOP,
    ATTR_LOCAL_PREF,
    ATTR_ATOMIC_AGGREGATE,
];
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attrs: PathAttributes,
    pub nlri: Vec<Ipv4Net>,
    /// RFC 7606 errors found while decoding (always empty on what we build).
    pub malformed: Vec<Malformed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub communities: Vec<Community>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Attributes we do not interpret (AGGREGATOR, AS4_PATH, ...), in received order.
    pub other: Vec<RawAttribute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    /// 1 AS_SET, 2 AS_SEQUENCE, 3 AS_CONFED_SEQUENCE, 4 AS_CONFED_SET.
    pub kind: u8,
    pub asns: Vec<u32>,
}

pub const AS_SET: u8 = 1;
pub const AS_SEQUENCE: u8 = 2;

impl AsPath {
    pub fn sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: AS_SEQUENCE,
                asns,
            }],
        }
    }
}

/// A community (RFC 1997), printed `high:low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Community(pub u32);

impl Community {
    /// RFC 8326.
    pub const GRACEFUL_SHUTDOWN: Community = Community(0xffff_0000);
    pub const NO_EXPORT: Community = Community(0xffff_ff01);
}

impl std::fmt::Display for Community {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

impl std::str::FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .split_once(':')
            .ok_or_else(|| format!("community {s:?} is not HIGH:LOW"))?;
        let hi: u16 = hi
            .parse()
            .map_err(|_| format!("community {s:?}: {hi:?} is not a 16-bit number"))?;
        let lo: u16 = lo
            .parse()
            .map_err(|_| format!("community {s:?}: {lo:?} is not a 16-bit number"))?;
        Ok(Community((hi as u32) << 16 | lo as u32))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub afi: u16,
    pub safi: u8,
    /// One address, or for IPv6 a global and a link-local one. Empty for a family we do not
    /// parse (then `nlri` is empty too and the update is marked malformed/unsupported).
    pub next_hop: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub afi: u16,
    pub safi: u8,
    pub withdrawn: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttribute {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// An RFC 7606 error the session survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub action: ErrorAction,
    pub attr: u8,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    TreatAsWithdraw,
    AttributeDiscard,
}

impl Update {
    /// End-of-RIB marker (RFC 4724 §2) for a family.
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            Family::Ipv6Unicast => Update {
                attrs: PathAttributes {
                    mp_unreach: Some(MpUnreach {
                        afi: AFI_IPV6,
                        safi: SAFI_UNICAST,
                        withdrawn: Vec::new(),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    /// The family this update is an End-of-RIB marker for, if it is one.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        let a = &self.attrs;
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || a.mp_reach.is_some() {
            return None;
        }
        let bare = a.origin.is_none()
            && a.as_path.is_none()
            && a.next_hop.is_none()
            && a.med.is_none()
            && a.local_pref.is_none()
            && a.communities.is_empty()
            && a.other.is_empty();
        match &a.mp_unreach {
            None if bare => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() && bare => Family::from_afi_safi(u.afi, u.safi),
            _ => None,
        }
    }

    pub(crate) fn decode(body: &[u8], ctx: &Context) -> Result<Update, DecodeError> {
        let mut r = Reader::new(body);
        let wlen = r
            .u16()
            .ok_or_else(|| DecodeError::attr_list("truncated withdrawn length"))?;
        let wbuf = r
            .take(wlen as usize)
            .ok_or_else(|| DecodeError::attr_list("withdrawn routes overrun the message"))?;
        let alen = r
            .u16()
            .ok_or_else(|| DecodeError::attr_list("truncated attribute length"))?;
        let abuf = r
            .take(alen as usize)
            .ok_or_else(|| DecodeError::attr_list("path attributes overrun the message"))?;
        let withdrawn = decode_prefixes_v4(wbuf)?;
        let nlri = decode_prefixes_v4(r.rest())?;
        let mut malformed = Vec::new();
        let attrs = decode_attributes(abuf, ctx, &mut malformed)?;

        let mut update = Update {
            withdrawn,
            attrs,
            nlri,
            malformed,
        };
        // RFC 7606 §3(d): missing well-known mandatory attributes with reachable NLRI.
        let reach = !update.nlri.is_empty() || update.attrs.mp_reach.is_some();
        if reach {
            let missing = |attr, reason| Malformed {
                action: ErrorAction::TreatAsWithdraw,
                attr,
                reason,
            };
            // An attribute present but malformed is already reported; do not report it twice.
            let reported = |u: &Update, attr| u.malformed.iter().any(|m| m.attr == attr);
            if update.attrs.origin.is_none() && !reported(&update, ATTR_ORIGIN) {
                update
                    .malformed
                    .push(missing(ATTR_ORIGIN, "missing ORIGIN"));
            }
            if update.attrs.as_path.is_none() && !reported(&update, ATTR_AS_PATH) {
                update
                    .malformed
                    .push(missing(ATTR_AS_PATH, "missing AS_PATH"));
            }
            if !update.nlri.is_empty()
                && update.attrs.next_hop.is_none()
                && !reported(&update, ATTR_NEXT_HOP)
            {
                update
                    .malformed
                    .push(missing(ATTR_NEXT_HOP, "missing NEXT_HOP"));
            }
        }
        Ok(update)
    }

    pub(crate) fn encode_body(&self, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let wlen_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for p in &self.withdrawn {
            encode_prefix(&IpNet::V4(*p), out);
        }
        let wlen = out.len() - wlen_at - 2;
        out[wlen_at..wlen_at + 2].copy_from_slice(&(wlen.min(0xffff) as u16).to_be_bytes());
        let alen_at = out.len();
        out.extend_from_slice(&[0, 0]);
        self.attrs.encode(ctx, out)?;
        let alen = out.len() - alen_at - 2;
        out[alen_at..alen_at + 2].copy_from_slice(&(alen.min(0xffff) as u16).to_be_bytes());
        for p in &self.nlri {
            encode_prefix(&IpNet::V4(*p), out);
        }
        Ok(())
    }
}

fn decode_prefixes_v4(buf: &[u8]) -> Result<Vec<Ipv4Net>, DecodeError> {
    let mut out = Vec::new();
    decode_prefixes(buf, AFI_IPV4, &mut |p| {
        if let IpNet::V4(p) = p {
            out.push(p)
        }
    })
    .map_err(|reason| {
        DecodeError::new(code::UPDATE_MESSAGE, subcode::INVALID_NETWORK_FIELD, reason)
    })?;
    Ok(out)
}

/// Decodes `len, prefix bytes` pairs. Host bits beyond the length are cleared.
fn decode_prefixes(buf: &[u8], afi: u16, push: &mut dyn FnMut(IpNet)) -> Result<(), &'static str> {
    let mut r = Reader::new(buf);
    let max = if afi == AFI_IPV4 { 32 } else { 128 };
    while let Some(len) = r.u8() {
        if len > max {
            return Err("prefix length exceeds the address size");
        }
        let bytes = r
            .take((len as usize).div_ceil(8))
            .ok_or("prefix overruns its field")?;
        let net = if afi == AFI_IPV4 {
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            Ipv4Net::new(Ipv4Addr::from(a), len).map(|n| IpNet::V4(n.trunc()))
        } else {
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            Ipv6Net::new(Ipv6Addr::from(a), len).map(|n| IpNet::V6(n.trunc()))
        };
        push(net.map_err(|_| "prefix length exceeds the address size")?);
    }
    Ok(())
}

pub(crate) fn encode_prefix(net: &IpNet, out: &mut Vec<u8>) {
    let len = net.prefix_len();
    let n = (len as usize).div_ceil(8);
    out.push(len);
    match net {
        IpNet::V4(p) => out.extend_from_slice(&p.network().octets()[..n]),
        IpNet::V6(p) => out.extend_from_slice(&p.network().octets()[..n]),
    }
}

/// Expected optional/transitive flags of the attributes we interpret.
fn expected_flags(code: u8) -> Option<u8> {
    match code {
        ATTR_ORIGIN | ATTR_AS_PATH | ATTR_NEXT_HOP | ATTR_LOCAL_PREF | ATTR_ATOMIC_AGGREGATE => {
            Some(FLAG_TRANSITIVE)
        }
        ATTR_MED | ATTR_MP_REACH | ATTR_MP_UNREACH => Some(FLAG_OPTIONAL),
        ATTR_AGGREGATOR | ATTR_COMMUNITIES => Some(FLAG_OPTIONAL | FLAG_TRANSITIVE),
        _ => None,
    }
}

fn decode_attributes(
    buf: &[u8],
    ctx: &Context,
    malformed: &mut Vec<Malformed>,
) -> Result<PathAttributes, DecodeError> {
    let mut attrs = PathAttributes::default();
    let mut seen = [false; 256];
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            // RFC 7606 §4: a truncated attribute header: the NLRI is still locatable from the
            // total attribute length, so treat-as-withdraw rather than reset.
            malformed.push(taw(0, "truncated attribute header"));
            break;
        };
        let len = if flags & FLAG_EXTENDED != 0 {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let Some(value) = len.and_then(|l| r.take(l as usize)) else {
            if seen[ATTR_MP_REACH as usize]
                || seen[ATTR_MP_UNREACH as usize]
                || code >= ATTR_MP_REACH
            {
                // The tail may hold MP_REACH/MP_UNREACH whose NLRI we can no longer locate.
                return Err(DecodeError::attr_list(
                    "attribute overruns the attribute field",
                ));
            }
            malformed.push(taw(code, "attribute overruns the attribute field"));
            break;
        };
        if seen[code as usize] {
            if code == ATTR_MP_REACH || code == ATTR_MP_UNREACH {
                return Err(DecodeError::attr_list(
                    "repeated MP_REACH/MP_UNREACH attribute",
                ));
            }
            malformed.push(Malformed {
                action: ErrorAction::AttributeDiscard,
                attr: code,
                reason: "repeated attribute",
            });
            continue;
        }
        seen[code as usize] = true;
        let flags_ok = expected_flags(code)
            .is_none_or(|want| flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) == want);
        decode_attribute(flags, code, value, flags_ok, ctx, &mut attrs, malformed)?;
    }
    Ok(attrs)
}

fn taw(attr: u8, reason: &'static str) -> Malformed {
    Malformed {
        action: ErrorAction::TreatAsWithdraw,
        attr,
        reason,
    }
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

fn decode_attribute(
    flags: u8,
    code: u8,
    value: &[u8],
    flags_ok: bool,
    ctx: &Context,
    attrs: &mut PathAttributes,
    malformed: &mut Vec<Malformed>,
) -> Result<(), DecodeError> {
    let mp_err = |reason| {
        DecodeError::new(
            code::UPDATE_MESSAGE,
            subcode::OPTIONAL_ATTRIBUTE_ERROR,
            reason,
        )
    };
    match code {
        ATTR_MP_REACH => {
            if !flags_ok {
                return Err(mp_err("MP_REACH_NLRI has wrong flags"));
            }
            attrs.mp_reach = Some(decode_mp_reach(value).map_err(mp_err)?);
        }
        ATTR_MP_UNREACH => {
            if !flags_ok {
                return Err(mp_err("MP_UNREACH_NLRI has wrong flags"));
            }
            attrs.mp_unreach = Some(decode_mp_unreach(value).map_err(mp_err)?);
        }
        _ if !flags_ok => {
            let action = if matches!(code, ATTR_ATOMIC_AGGREGATE | ATTR_AGGREGATOR) {
                ErrorAction::AttributeDiscard
            } else {
                ErrorAction::TreatAsWithdraw
            };
            malformed.push(Malformed {
                action,
                attr: code,
                reason: "attribute flags conflict with its type",
            });
        }
        ATTR_ORIGIN => match value {
            [0] => attrs.origin = Some(Origin::Igp),
            [1] => attrs.origin = Some(Origin::Egp),
            [2] => attrs.origin = Some(Origin::Incomplete),
            _ => malformed.push(taw(code, "malformed ORIGIN")),
        },
        ATTR_AS_PATH => match decode_as_path(value, ctx.four_octet_as) {
            Some(p) => attrs.as_path = Some(p),
            None => malformed.push(taw(code, "malformed AS_PATH")),
        },
        ATTR_NEXT_HOP => match <[u8; 4]>::try_from(value) {
            Ok(a) => attrs.next_hop = Some(Ipv4Addr::from(a)),
            Err(_) => malformed.push(taw(code, "NEXT_HOP length is not 4")),
        },
        ATTR_MED => match be_u32(value) {
            Some(v) => attrs.med = Some(v),
            None => malformed.push(taw(code, "MULTI_EXIT_DISC length is not 4")),
        },
        ATTR_LOCAL_PREF => match be_u32(value) {
            Some(v) => attrs.local_pref = Some(v),
            None => malformed.push(taw(code, "LOCAL_PREF length is not 4")),
        },
        ATTR_ATOMIC_AGGREGATE => {
            if value.is_empty() {
                attrs.atomic_aggregate = true;
            } else {
                malformed.push(Malformed {
                    action: ErrorAction::AttributeDiscard,
                    attr: code,
                    reason: "ATOMIC_AGGREGATE length is not 0",
                });
            }
        }
        ATTR_COMMUNITIES => {
            if value.len() % 4 != 0 || value.is_empty() {
                malformed.push(taw(
                    code,
                    "COMMUNITIES length is not a positive multiple of 4",
                ));
            } else {
                attrs.communities = value
                    .chunks_exact(4)
                    .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
            }
        }
        // RFC 4271 §6.3: a well-known (non-optional) attribute we do not recognise is a
        // session error, not something to pass on.
        _ if flags & FLAG_OPTIONAL == 0 && !KNOWN_WELL_KNOWN.contains(&code) => {
            return Err(DecodeError::new(
                code::UPDATE_MESSAGE,
                subcode::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                "unrecognized well-known attribute",
            ));
        }
        _ => {
            if code == ATTR_AGGREGATOR && value.len() != if ctx.four_octet_as { 8 } else { 6 } {
                malformed.push(Malformed {
                    action: ErrorAction::AttributeDiscard,
                    attr: code,
                    reason: "AGGREGATOR has the wrong length",
                });
                return Ok(());
            }
            attrs.other.push(RawAttribute {
                flags: flags & !FLAG_EXTENDED,
                code,
                value: value.to_vec(),
            });
        }
    }
    Ok(())
}

fn decode_as_path(value: &[u8], four_octet: bool) -> Option<AsPath> {
    let asn_len = if four_octet { 4 } else { 2 };
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = r.u8()?;
        if !(1..=4).contains(&kind) || count == 0 {
            return None;
        }
        let raw = r.take(count as usize * asn_len)?;
        let asns = raw
            .chunks_exact(asn_len)
            .map(|c| {
                if four_octet {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u16::from_be_bytes([c[0], c[1]]) as u32
                }
            })
            .collect();
        segments.push(AsSegment { kind, asns });
    }
    Some(AsPath { segments })
}

fn decode_next_hops(afi: u16, nh: &[u8]) -> Result<Vec<IpAddr>, &'static str> {
    let v6 = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16])));
    match (afi, nh.len()) {
        (AFI_IPV4, 4) => Ok(vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))]),
        // RFC 8950 IPv6 next hop for IPv4 routes, and RFC 2545 for IPv6 routes.
        (AFI_IPV4 | AFI_IPV6, 16) => Ok(vec![v6(nh)]),
        (AFI_IPV4 | AFI_IPV6, 32) => Ok(vec![v6(&nh[..16]), v6(&nh[16..])]),
        _ => Err("MP_REACH_NLRI next hop has a length that does not fit its family"),
    }
}

fn decode_mp_reach(value: &[u8]) -> Result<MpReach, &'static str> {
    let mut r = Reader::new(value);
    let (afi, safi) = (
        r.u16().ok_or("truncated MP_REACH_NLRI")?,
        r.u8().ok_or("truncated MP_REACH_NLRI")?,
    );
    let nh_len = r.u8().ok_or("truncated MP_REACH_NLRI")?;
    let nh = r
        .take(nh_len as usize)
        .ok_or("MP_REACH_NLRI next hop overruns")?;
    r.u8().ok_or("truncated MP_REACH_NLRI")?; // reserved
    if Family::from_afi_safi(afi, safi).is_none() {
        // A family we did not negotiate: nothing we will import anyway; keep the session.
        return Ok(MpReach {
            afi,
            safi,
            next_hop: Vec::new(),
            nlri: Vec::new(),
        });
    }
    let next_hop = decode_next_hops(afi, nh)?;
    let mut nlri = Vec::new();
    decode_prefixes(r.rest(), afi, &mut |p| nlri.push(p))?;
    Ok(MpReach {
        afi,
        safi,
        next_hop,
        nlri,
    })
}

fn decode_mp_unreach(value: &[u8]) -> Result<MpUnreach, &'static str> {
    let mut r = Reader::new(value);
    let (afi, safi) = (
        r.u16().ok_or("truncated MP_UNREACH_NLRI")?,
        r.u8().ok_or("truncated MP_UNREACH_NLRI")?,
    );
    let mut withdrawn = Vec::new();
    if Family::from_afi_safi(afi, safi).is_some() {
        decode_prefixes(r.rest(), afi, &mut |p| withdrawn.push(p))?;
    }
    Ok(MpUnreach {
        afi,
        safi,
        withdrawn,
    })
}

impl PathAttributes {
    fn encode(&self, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let wk = FLAG_TRANSITIVE;
        if let Some(o) = self.origin {
            put_attr(out, wk, ATTR_ORIGIN, |o2| o2.push(o as u8));
        }
        if let Some(path) = &self.as_path {
            put_attr(out, wk, ATTR_AS_PATH, |v| {
                encode_as_path(path, ctx.four_octet_as, v)
            });
        }
        if let Some(nh) = self.next_hop {
            put_attr(out, wk, ATTR_NEXT_HOP, |v| {
                v.extend_from_slice(&nh.octets())
            });
        }
        if let Some(med) = self.med {
            put_attr(out, FLAG_OPTIONAL, ATTR_MED, |v| {
                v.extend_from_slice(&med.to_be_bytes())
            });
        }
        if let Some(lp) = self.local_pref {
            put_attr(out, wk, ATTR_LOCAL_PREF, |v| {
                v.extend_from_slice(&lp.to_be_bytes())
            });
        }
        if self.atomic_aggregate {
            put_attr(out, wk, ATTR_ATOMIC_AGGREGATE, |_| {});
        }
        if !self.communities.is_empty() {
            put_attr(
                out,
                FLAG_OPTIONAL | FLAG_TRANSITIVE,
                ATTR_COMMUNITIES,
                |v| {
                    for c in &self.communities {
                        v.extend_from_slice(&c.0.to_be_bytes());
                    }
                },
            );
        }
        if let Some(mp) = &self.mp_reach {
            put_attr(out, FLAG_OPTIONAL, ATTR_MP_REACH, |v| {
                v.extend_from_slice(&mp.afi.to_be_bytes());
                v.push(mp.safi);
                let nh_at = v.len();
                v.push(0);
                for a in &mp.next_hop {
                    match a {
                        IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
                    }
                }
                v[nh_at] = (v.len() - nh_at - 1) as u8;
                v.push(0);
                for p in &mp.nlri {
                    encode_prefix(p, v);
                }
            });
        }
        if let Some(mp) = &self.mp_unreach {
            put_attr(out, FLAG_OPTIONAL, ATTR_MP_UNREACH, |v| {
                v.extend_from_slice(&mp.afi.to_be_bytes());
                v.push(mp.safi);
                for p in &mp.withdrawn {
                    encode_prefix(p, v);
                }
            });
        }
        // RFC 6793 §4.2.2: on a 2-octet session the real path travels in AS4_PATH (type 17:
        // here, so that attributes go out in ascending type order, RFC 4271 §5).
        if let Some(path) = self.as_path.as_ref().filter(|p| {
            !ctx.four_octet_as && p.segments.iter().flat_map(|s| &s.asns).any(|&a| a > 0xffff)
        }) {
            put_attr(out, FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AS4_PATH, |v| {
                encode_as_path(path, true, v)
            });
        }
        for a in &self.other {
            put_attr(out, a.flags & !FLAG_EXTENDED, a.code, |v| {
                v.extend_from_slice(&a.value)
            });
        }
        if out.len() > MAX_MESSAGE_LEN {
            return Err(EncodeError::FieldTooLong {
                what: "path attributes",
                len: out.len(),
            });
        }
        Ok(())
    }
}

/// Writes one attribute, choosing the extended length form when the value exceeds 255 bytes.
fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, value: impl FnOnce(&mut Vec<u8>)) {
    let mut v = Vec::new();
    value(&mut v);
    if v.len() > 255 {
        out.extend_from_slice(&[flags | FLAG_EXTENDED, code]);
        out.extend_from_slice(&(v.len().min(0xffff) as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, code, v.len() as u8]);
    }
    out.extend_from_slice(&v);
}

fn encode_as_path(path: &AsPath, four_octet: bool, out: &mut Vec<u8>) {
    for seg in &path.segments {
        // A segment holds at most 255 ASNs; longer ones are split.
        for chunk in seg.asns.chunks(255) {
            out.extend_from_slice(&[seg.kind, chunk.len() as u8]);
            for &asn in chunk {
                if four_octet {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let a = u16::try_from(asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&a.to_be_bytes());
                }
            }
        }
    }
}

/// Splits announcements of `prefixes` (one family) carrying `attrs` into UPDATEs that each fit
/// in 4096 bytes. For IPv6 `attrs.mp_reach` must carry the next hop; its NLRI is filled here.
pub fn pack_updates(prefixes: &[IpNet], attrs: &PathAttributes, ctx: &Context) -> Vec<Update> {
    let mut template = Update {
        attrs: attrs.clone(),
        ..Default::default()
    };
    if let Some(mp) = template.attrs.mp_reach.as_mut() {
        mp.nlri.clear();
    }
    let base = Message::Update(template.clone())
        .to_bytes(ctx)
        .map(|b| b.len())
        .unwrap_or(MAX_MESSAGE_LEN);
    pack(prefixes, base, |chunk| {
        let mut u = template.clone();
        match u.attrs.mp_reach.as_mut() {
            Some(mp) => mp.nlri = chunk.to_vec(),
            None => u.nlri = chunk.iter().filter_map(as_v4).collect(),
        }
        u
    })
}

/// Splits withdrawals of `prefixes` (one family) into UPDATEs that each fit.
pub fn pack_withdrawals(family: Family, prefixes: &[IpNet]) -> Vec<Update> {
    let base = HEADER_LEN
        + 4
        + if family == Family::Ipv6Unicast {
            3 + 4
        } else {
            0
        };
    pack(prefixes, base, |chunk| match family {
        Family::Ipv4Unicast => Update {
            withdrawn: chunk.iter().filter_map(as_v4).collect(),
            ..Default::default()
        },
        Family::Ipv6Unicast => Update {
            attrs: PathAttributes {
                mp_unreach: Some(MpUnreach {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                    withdrawn: chunk.to_vec(),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    })
}

fn as_v4(p: &IpNet) -> Option<Ipv4Net> {
    match p {
        IpNet::V4(p) => Some(*p),
        IpNet::V6(_) => None,
    }
}

fn pack(prefixes: &[IpNet], base: usize, build: impl Fn(&[IpNet]) -> Update) -> Vec<Update> {
    // +4: an extended-length attribute header may be needed once the NLRI passes 255 bytes.
    let room = MAX_MESSAGE_LEN.saturating_sub(base + 4);
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, p) in prefixes.iter().enumerate() {
        let size = 1 + (p.prefix_len() as usize).div_ceil(8);
        if used + size > room && i > start {
            out.push(build(&prefixes[start..i]));
            start = i;
            used = 0;
        }
        used += size;
    }
    if start < prefixes.len() {
        out.push(build(&prefixes[start..]));
    }
    out
}

use super::message::Message;
