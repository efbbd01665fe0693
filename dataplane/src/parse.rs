//! Stage 1: parse. Reads Ethernet (+ one 802.1Q tag), IPv4 (options allowed) or IPv6 (extension
//! headers skipped), and the TCP/UDP/ICMP/ICMPv6 header into a small `Copy` [`Meta`] of offsets
//! and key fields. Nothing is copied out of the frame but addresses and ports; later stages
//! rewrite the frame in place at the offsets recorded here.
//!
//! Every length is checked once here; later stages index the frame only at offsets this stage
//! proved in bounds (`l3_off + header`, `l4_off + 8` for ports, `l4_off + 18` for the TCP
//! checksum). Field positions come from [`crate::wire`]. The common frame takes [`lean4`]
//! (~50 instructions: straight-line checks on fixed-size views, the IPv4 header checksum as one
//! divisibility test), which the established fast lane reads directly; everything else, and
//! every error, [`parse_general`].

use crate::csum;
use crate::drop::DropReason;
use crate::flow::{Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::wire::{at, ethernet, icmp, icmpv6, ipv4, ipv6, tcp, udp, vlan, Field};

/// Where a packet stands with respect to IP fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frag {
    /// Not a fragment (or an IPv6 atomic fragment).
    #[default]
    None,
    /// Offset 0, more fragments follow: carries the L4 header.
    First,
    /// Offset > 0: no L4 header; its ports come from the first fragment.
    Later,
}

/// The parsed view of one frame. `l4_off == 0` means there is no L4 header in this frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    pub l3_off: u16,
    pub l4_off: u16,
    /// End of the IP datagram in the frame (Ethernet padding may follow).
    pub ip_end: u16,
    pub v6: bool,
    /// The L4 protocol (for IPv6: after the extension headers).
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// TCP/UDP ports; for ICMP echo see [`crate::flow::FlowKey`]; else 0.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub frag: Frag,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
    pub ttl: u8,
    /// The TCP/UDP checksum field holds the folded pseudo-header sum (either representation of
    /// zero; a UDP-over-IPv4 0, "no checksum", is then left alone by the completion): a partial
    /// checksum (CHECKSUM_PARTIAL) from a sender that left the rest to its device, or, once in
    /// 65536, a full checksum of that value; [`crate::partial::complete`] tells them apart.
    /// Only on unfragmented frames (a kernel completes the checksum before it fragments).
    pub csum_partial: bool,
}

impl Meta {
    pub fn has_l4(&self) -> bool {
        self.l4_off != 0
    }
}

/// What the parse stage decided.
#[derive(Debug, Clone, Copy)]
pub enum Parsed {
    Ip(Meta),
    /// Not IP (ARP, LLDP, QinQ, ...): the kernel's business.
    NotIp,
}

impl Lean4 {
    /// The flow key of the frame as it arrived.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: Addr::v4(self.src),
            dst: Addr::v4(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
}

/// The 5-tuple of a parse as the frame arrived (flow events): all zero for a frame that is not
/// IP or did not parse; ports 0 for a later fragment (its ports come from its first fragment).
#[inline]
pub fn tuple(parsed: &Result<Parsed, DropReason>) -> FlowKey {
    match parsed {
        Ok(Parsed::Ip(m)) => FlowKey {
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            proto: m.proto,
        },
        _ => FlowKey::default(),
    }
}

/// The longest frame parsed: any offset into it fits the `u16` fields of [`Meta`].
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// Parses one Ethernet frame (at most [`MAX_FRAME_LEN`] bytes, else `frame-too-long`).
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
    if let Some(l) = lean4(frame) {
        return Ok(Parsed::Ip(l.meta()));
    }
    parse_general(frame)
}

/// The big-endian 16-bit `field` of a fixed-size header view: constant indices, so no bounds
/// check survives.
#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], field: Field) -> u16 {
    u16::from_be_bytes([h[field.start], h[field.start + 1]])
}

/// The 16-bit `field` of a fixed-size header view in the machine's byte order (for checksum
/// arithmetic, which does not depend on it).
#[inline(always)]
fn ne16<const N: usize>(h: &[u8; N], field: Field) -> u16 {
    u16::from_ne_bytes([h[field.start], h[field.start + 1]])
}

/// The 4 bytes of `field` (an IPv4 address) of a fixed-size header view.
#[inline(always)]
fn bytes4<const N: usize>(h: &[u8; N], field: Field) -> [u8; 4] {
    let i = field.start;
    [h[i], h[i + 1], h[i + 2], h[i + 3]]
}

/// The common frame reduced to what the established fast lane reads (`pipeline::lane4`): the
/// key, the TCP flags, the TTL, and whether the L4 checksum is partial. The offsets are fixed
/// ([`LEAN4_L3`], [`LEAN4_L4`]) and [`lean4`] proved the frame holds the whole IPv4 header and
/// the TCP header (TCP) or the 8-byte UDP header (UDP). [`Lean4::meta`] is exactly the [`Meta`]
/// [`parse`] gives for the same frame, so a packet that leaves the lane after its lean parse is
/// not parsed again.
#[derive(Debug, Clone, Copy)]
pub struct Lean4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ttl: u8,
    /// End of the IP datagram in the frame.
    pub ip_end: u16,
    ident: u16,
    /// See [`Meta::csum_partial`].
    pub csum_partial: bool,
}

/// Where a [`Lean4`] frame's IPv4 header starts (untagged Ethernet).
pub const LEAN4_L3: usize = ethernet::HEADER_LEN;
/// Where a [`Lean4`] frame's TCP/UDP header starts (a 20-byte IPv4 header).
pub const LEAN4_L4: usize = LEAN4_L3 + ipv4::MIN_HEADER_LEN;

impl Lean4 {
    /// The [`Meta`] of the same frame, as [`parse`] gives it.
    #[inline(always)]
    pub fn meta(&self) -> Meta {
        Meta {
            l3_off: LEAN4_L3 as u16,
            l4_off: LEAN4_L4 as u16,
            ip_end: self.ip_end,
            v6: false,
            proto: self.proto,
            src: Addr::v4(self.src),
            dst: Addr::v4(self.dst),
            sport: self.sport,
            dport: self.dport,
            tcp_flags: self.tcp_flags,
            icmp_type: 0,
            icmp_code: 0,
            frag: Frag::None,
            frag_id: u32::from(self.ident),
            ttl: self.ttl,
            csum_partial: self.csum_partial,
        }
    }
}

/// The common frame, straight-line: untagged IPv4 with a 20-byte header, not a fragment,
/// carrying a complete TCP or UDP header, header checksum right, at most [`MAX_FRAME_LEN`]
/// bytes. Anything else (including every error) returns `None` and goes through
/// [`parse_general`], so errors are reported in one place. ~50 instructions instead of ~280:
/// fixed-size array views let the compiler drop the bounds checks and unroll the sum.
#[inline(always)]
pub fn lean4(frame: &[u8]) -> Option<Lean4> {
    lean4_within(frame, MAX_FRAME_LEN)
}

/// [`lean4`] for frames of at most `limit` bytes (`limit` ≤ [`MAX_FRAME_LEN`]): a longer frame
/// returns `None` (and [`parse_general`] parses it to the same `Meta`). The pipeline passes
/// the node's smallest MTU ([`crate::tables::Tables::frame_limit`]), so that the egress MTU
/// costs the established lane no compare of its own: the length check is one the parse makes
/// anyway.
#[inline(always)]
pub fn lean4_within(frame: &[u8], limit: usize) -> Option<Lean4> {
    const L3: usize = LEAN4_L3;
    const L4: usize = LEAN4_L4;
    const ETHERTYPE: [u8; 2] = ethernet::ETHERTYPE_IPV4.to_be_bytes();
    // Every offset in `Meta` is 16 bits: a longer frame (replay has no MTU) would wrap them.
    debug_assert!(limit <= MAX_FRAME_LEN);
    if frame.len() > limit {
        return None;
    }
    let h: &[u8; L4 + udp::HEADER_LEN] = frame.first_chunk()?;
    // The EtherType and the version/IHL byte (adjacent) in one masked 4-byte compare.
    const TYPE_VER: u32 =
        u32::from_le_bytes([ETHERTYPE[0], ETHERTYPE[1], ipv4::VER_IHL_NO_OPTIONS, 0]);
    let et = ethernet::ETHERTYPE.start;
    const _: () = assert!(ethernet::ETHERTYPE.end == L3 && ipv4::VER_IHL == 0);
    // One 4-byte load (from the bytes one by one, the compiler loads only the three it keeps,
    // as two loads).
    let w = h[et..].first_chunk::<4>()?;
    if u32::from_le_bytes(*w) & 0x00ff_ffff != TYPE_VER {
        return None;
    }
    // Flags and fragment offset: only DF may be set (offset 0, no more fragments).
    if be16(h, at(L3, ipv4::FLG_OFF)) & (ipv4::FLAG_MF | ipv4::OFFSET_MASK) != 0 {
        return None;
    }
    let total = usize::from(be16(h, at(L3, ipv4::TOTAL_LEN)));
    let ip_end = L3 + total;
    // `total` ≥ the IPv4 header: implied by the L4 checks below (`L4 + doff` or `L4 + ulen`
    // within `ip_end`, both ≥ 8), which come before `ip_end - L4` is used.
    if ip_end > frame.len() {
        return None;
    }
    let ip: &[u8; ipv4::MIN_HEADER_LEN] = h[L3..L4].try_into().ok()?;
    if !csum::ipv4_header20_ok(ip) {
        return None;
    }
    let proto = ip[ipv4::PROTOCOL];
    let (tcp_flags, check) = match proto {
        PROTO_TCP => {
            let t: &[u8; tcp::MIN_HEADER_LEN] =
                frame.get(L4..L4 + tcp::MIN_HEADER_LEN)?.try_into().ok()?;
            let doff = usize::from(t[tcp::DATA_OFF] >> 4) * 4;
            // The header within the datagram: `doff` ≥ 20 and `L4 + doff` within it.
            if doff < tcp::MIN_HEADER_LEN || L4 + doff > ip_end {
                return None;
            }
            (t[tcp::FLAGS], ne16(t, tcp::CHECKSUM))
        }
        PROTO_UDP => {
            let ulen = usize::from(be16(h, at(L4, udp::LENGTH)));
            // The datagram within the IP datagram: `ulen` ≥ 8 and `L4 + ulen` within it.
            if ulen < udp::HEADER_LEN || L4 + ulen > ip_end {
                return None;
            }
            (0, ne16(h, at(L4, udp::CHECKSUM)))
        }
        _ => return None,
    };
    // The pseudo-header sum and the checksum field in the machine's byte order: the test is
    // a congruence mod 0xffff, and reading every 16-bit word byte-swapped multiplies both
    // sides by 256, which is invertible mod 0xffff (RFC 1071 §2(B)); so no byte swap but the
    // length's. The addresses' words are the ones the header checksum above just loaded.
    let w = |f: Field| u64::from(u32::from_ne_bytes(bytes4(ip, f)));
    let pseudo = w(ipv4::SRC_ADDR)
        + w(ipv4::DST_ADDR)
        + u64::from(u16::from_ne_bytes([0, proto]))
        + u64::from(u16::from_ne_bytes(((ip_end - L4) as u16).to_be_bytes()));
    Some(Lean4 {
        src: bytes4(ip, ipv4::SRC_ADDR),
        dst: bytes4(ip, ipv4::DST_ADDR),
        sport: be16(h, at(L4, tcp::SRC_PORT)),
        dport: be16(h, at(L4, tcp::DST_PORT)),
        proto,
        tcp_flags,
        ttl: ip[ipv4::TTL],
        ip_end: ip_end as u16,
        ident: be16(ip, ipv4::IDENT),
        csum_partial: csum::congruent(pseudo, check),
    })
}

/// Every frame the common path ([`lean4`]) does not take, and every error.
#[inline(never)]
pub fn parse_general(frame: &[u8]) -> Result<Parsed, DropReason> {
    // Every offset in `Meta` is 16 bits: a longer frame (replay has no MTU) would wrap them.
    if frame.len() > MAX_FRAME_LEN {
        return Err(DropReason::FrameTooLong);
    }
    if frame.len() < ethernet::HEADER_LEN {
        return Err(DropReason::MalformedEthernet);
    }
    let mut ethertype = csum::get16(frame, ethernet::ETHERTYPE.start);
    let mut l3 = ethernet::HEADER_LEN;
    if ethertype == ethernet::ETHERTYPE_VLAN {
        if frame.len() < vlan::HEADER_LEN {
            return Err(DropReason::MalformedEthernet);
        }
        ethertype = csum::get16(frame, vlan::ETHERTYPE.start);
        l3 += vlan::TAG_LEN;
    }
    let mut m = Meta::default();
    match ethertype {
        ethernet::ETHERTYPE_IPV4 => parse_ipv4(frame, l3, frame.len(), &mut m, false)?,
        ethernet::ETHERTYPE_IPV6 => parse_ipv6(frame, l3, frame.len(), &mut m, false)?,
        _ => return Ok(Parsed::NotIp),
    }
    Ok(Parsed::Ip(m))
}

/// Parses the IP packet quoted inside an ICMP error, starting at `off`, ending at `end`
/// (the quote is usually truncated: only the addresses and the first 8 bytes of L4 are needed).
pub fn parse_inner(buf: &[u8], off: usize, end: usize, v6: bool) -> Result<Meta, DropReason> {
    let mut m = Meta::default();
    if v6 {
        parse_ipv6(buf, off, end, &mut m, true)?;
    } else {
        parse_ipv4(buf, off, end, &mut m, true)?;
    }
    Ok(m)
}

fn parse_ipv4(
    b: &[u8],
    l3: usize,
    end: usize,
    m: &mut Meta,
    inner: bool,
) -> Result<(), DropReason> {
    const E: DropReason = DropReason::MalformedIpv4;
    if end < l3 + ipv4::MIN_HEADER_LEN {
        return Err(E);
    }
    let vihl = b[l3 + ipv4::VER_IHL];
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != ipv4::VERSION || ihl < ipv4::MIN_HEADER_LEN || end < l3 + ihl {
        return Err(E);
    }
    let total = usize::from(csum::get16(b, l3 + ipv4::TOTAL_LEN.start));
    if total < ihl {
        return Err(E);
    }
    let ip_end = if inner {
        // A quoted datagram is truncated by design.
        end.min(l3 + total)
    } else {
        if l3 + total > end {
            return Err(E);
        }
        if !csum::ipv4_header_ok(&b[l3..l3 + ihl]) {
            return Err(DropReason::BadIpChecksum);
        }
        l3 + total
    };
    // One bounds check for the fixed header; the fields below index a fixed-size array.
    let h: &[u8; ipv4::MIN_HEADER_LEN] =
        b[l3..l3 + ipv4::MIN_HEADER_LEN].try_into().map_err(|_| E)?;
    m.v6 = false;
    m.l3_off = l3 as u16;
    m.ip_end = ip_end as u16;
    m.ttl = h[ipv4::TTL];
    m.proto = h[ipv4::PROTOCOL];
    m.src = Addr::v4(bytes4(h, ipv4::SRC_ADDR));
    m.dst = Addr::v4(bytes4(h, ipv4::DST_ADDR));
    let fo = be16(h, ipv4::FLG_OFF);
    let more = fo & ipv4::FLAG_MF != 0;
    let offset = fo & ipv4::OFFSET_MASK;
    m.frag_id = u32::from(be16(h, ipv4::IDENT));
    m.frag = match (offset, more) {
        (0, false) => Frag::None,
        (0, true) => Frag::First,
        _ => Frag::Later,
    };
    if m.frag == Frag::Later {
        return Ok(());
    }
    parse_l4(b, l3 + ihl, ip_end, m, inner)
}

fn parse_ipv6(
    b: &[u8],
    l3: usize,
    end: usize,
    m: &mut Meta,
    inner: bool,
) -> Result<(), DropReason> {
    const E: DropReason = DropReason::MalformedIpv6;
    if end < l3 + ipv6::HEADER_LEN || b[l3 + ipv6::VER_TC_FLOW.start] >> 4 != ipv6::VERSION {
        return Err(E);
    }
    let payload = usize::from(csum::get16(b, l3 + ipv6::PAYLOAD_LEN.start));
    let ip_end = if inner {
        end.min(l3 + ipv6::HEADER_LEN + payload)
    } else {
        // Payload length 0 would be a jumbogram (hop-by-hop option): not on our links.
        if payload == 0 || l3 + ipv6::HEADER_LEN + payload > end {
            return Err(E);
        }
        l3 + ipv6::HEADER_LEN + payload
    };
    m.v6 = true;
    m.l3_off = l3 as u16;
    m.ip_end = ip_end as u16;
    m.ttl = b[l3 + ipv6::HOP_LIMIT];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&b[at(l3, ipv6::SRC_ADDR)]);
    dst.copy_from_slice(&b[at(l3, ipv6::DST_ADDR)]);
    m.src = Addr::v6(src);
    m.dst = Addr::v6(dst);

    let mut next = b[l3 + ipv6::NEXT_HEADER];
    let mut off = l3 + ipv6::HEADER_LEN;
    // A bounded walk: more than 8 extension headers is an attack, not traffic.
    for _ in 0..8 {
        use ipv6::{ext, frag};
        match next {
            // Hop-by-hop, routing, destination options, mobility: (len + 1) * 8 bytes.
            ipv6::NH_HOP_BY_HOP | ipv6::NH_ROUTING | ipv6::NH_DEST_OPTS | ipv6::NH_MOBILITY => {
                if off + ext::MIN_LEN > ip_end {
                    return Err(E);
                }
                let len = (usize::from(b[off + ext::LENGTH]) + 1) * ext::MIN_LEN;
                if off + len > ip_end {
                    return Err(E);
                }
                next = b[off + ext::NEXT_HEADER];
                off += len;
            }
            // Authentication header: (len + 2) * 4 bytes.
            ipv6::NH_AUTH => {
                if off + ext::MIN_LEN > ip_end {
                    return Err(E);
                }
                let len = (usize::from(b[off + ext::LENGTH]) + 2) * ext::AUTH_UNIT;
                if off + len > ip_end {
                    return Err(E);
                }
                next = b[off + ext::NEXT_HEADER];
                off += len;
            }
            // Fragment header: 8 bytes.
            ipv6::NH_FRAGMENT => {
                if off + frag::HEADER_LEN > ip_end {
                    return Err(E);
                }
                let fo = csum::get16(b, off + frag::FLG_OFF.start);
                let offset = fo >> frag::OFFSET_SHIFT;
                let more = fo & frag::FLAG_MF != 0;
                let id = &b[at(off, frag::IDENT)];
                m.frag_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
                m.frag = match (offset, more) {
                    (0, false) => Frag::None,
                    (0, true) => Frag::First,
                    _ => Frag::Later,
                };
                next = b[off + frag::NEXT_HEADER];
                off += frag::HEADER_LEN;
                if m.frag == Frag::Later {
                    m.proto = next;
                    return Ok(());
                }
            }
            _ => {
                m.proto = next;
                return parse_l4(b, off, ip_end, m, inner);
            }
        }
    }
    Err(E)
}

fn parse_l4(b: &[u8], off: usize, end: usize, m: &mut Meta, inner: bool) -> Result<(), DropReason> {
    // A first fragment too short for its L4 header is an overlapping-fragment attack pattern.
    let short = if m.frag == Frag::First {
        DropReason::FragMalformed
    } else {
        DropReason::MalformedL4
    };
    match m.proto {
        PROTO_TCP => {
            // Quoted TCP headers in ICMP errors carry only their first 8 bytes.
            if inner {
                if off + icmp::QUOTED_L4_LEN > end {
                    return Err(short);
                }
            } else {
                if off + tcp::MIN_HEADER_LEN > end {
                    return Err(short);
                }
                let t: &[u8; tcp::MIN_HEADER_LEN] = b[off..off + tcp::MIN_HEADER_LEN]
                    .try_into()
                    .map_err(|_| short)?;
                let doff = usize::from(t[tcp::DATA_OFF] >> 4) * 4;
                if doff < tcp::MIN_HEADER_LEN || off + doff > end {
                    return Err(DropReason::MalformedL4);
                }
                m.tcp_flags = t[tcp::FLAGS];
                m.csum_partial = partial_check(m, be16(t, tcp::CHECKSUM), end - off);
            }
            m.sport = csum::get16(b, off + tcp::SRC_PORT.start);
            m.dport = csum::get16(b, off + tcp::DST_PORT.start);
        }
        PROTO_UDP => {
            if off + udp::HEADER_LEN > end {
                return Err(short);
            }
            m.sport = csum::get16(b, off + udp::SRC_PORT.start);
            m.dport = csum::get16(b, off + udp::DST_PORT.start);
            // The UDP length as the kernel checks it (udp_rcv, nf_conntrack_udp): below the
            // header, or beyond the datagram, is malformed. A first fragment holds only part of
            // the datagram the length covers. Shorter than the datagram but >= 8 is legal: the
            // kernel accepts it (the receiver trims the surplus), so it is forwarded unchanged.
            let ulen = usize::from(csum::get16(b, off + udp::LENGTH.start));
            if !inner && (ulen < udp::HEADER_LEN || (m.frag == Frag::None && off + ulen > end)) {
                return Err(DropReason::MalformedL4);
            }
            if !inner {
                m.csum_partial =
                    partial_check(m, csum::get16(b, off + udp::CHECKSUM.start), end - off);
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if (m.proto == PROTO_ICMP) == m.v6 {
                // ICMPv4 in IPv6 or ICMPv6 in IPv4: nothing sane carries that.
                return Err(DropReason::MalformedL4);
            }
            // ICMP and ICMPv6 share the layout of their first 8 bytes.
            if off + icmp::HEADER_LEN > end {
                return Err(short);
            }
            m.icmp_type = b[off + icmp::TYPE];
            m.icmp_code = b[off + icmp::CODE];
            let id = csum::get16(b, off + icmp::ECHO_IDENT.start);
            match (m.v6, m.icmp_type) {
                // Echo request: identifier as the source "port".
                (false, icmp::ECHO_REQUEST) | (true, icmpv6::ECHO_REQUEST) => m.sport = id,
                // Echo reply: identifier as the destination "port".
                (false, icmp::ECHO_REPLY) | (true, icmpv6::ECHO_REPLY) => m.dport = id,
                _ => {}
            }
        }
        _ => return Ok(()),
    }
    m.l4_off = off as u16;
    Ok(())
}

/// [`Meta::csum_partial`] for a TCP/UDP header whose checksum field is `check`, `len` bytes
/// of L4 segment.
fn partial_check(m: &Meta, check: u16, len: usize) -> bool {
    m.frag == Frag::None
        && check
            == csum::fold64(csum::pseudo_header(
                &m.src.bytes,
                &m.dst.bytes,
                m.v6,
                m.proto,
                len,
            ))
}

/// ICMP(v6) errors that quote a datagram of a flow.
#[inline]
pub fn is_icmp_error(m: &Meta) -> bool {
    match (m.v6, m.proto) {
        (false, PROTO_ICMP) => matches!(
            m.icmp_type,
            icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAM_PROBLEM
        ),
        (true, PROTO_ICMPV6) => matches!(
            m.icmp_type,
            icmpv6::DEST_UNREACHABLE..=icmpv6::PARAM_PROBLEM
        ),
        _ => false,
    }
}

/// ICMP echo request or reply.
#[inline]
pub fn is_icmp_echo(m: &Meta) -> bool {
    match (m.v6, m.proto) {
        (false, PROTO_ICMP) => matches!(m.icmp_type, icmp::ECHO_REPLY | icmp::ECHO_REQUEST),
        (true, PROTO_ICMPV6) => {
            matches!(m.icmp_type, icmpv6::ECHO_REQUEST | icmpv6::ECHO_REPLY)
        }
        _ => false,
    }
}

/// ICMPv6 neighbour discovery / router discovery / MLD: link-local control the kernel owns.
#[inline]
pub fn is_icmpv6_link_control(m: &Meta) -> bool {
    m.v6 && m.proto == PROTO_ICMPV6
        && matches!(
            m.icmp_type,
            icmpv6::MLD_QUERY..=icmpv6::REDIRECT | icmpv6::MLDV2_REPORT
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv4::MIN_HEADER_LEN;

    fn udp4() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3, 4]).unwrap();
        out
    }

    #[test]
    fn parses_udp_over_ipv4() {
        let f = udp4();
        let Parsed::Ip(m) = parse(&f).unwrap() else {
            panic!("not ip")
        };
        assert_eq!(m.src, Addr::v4([10, 0, 0, 1]));
        assert_eq!(
            (m.sport, m.dport, m.proto, m.ttl),
            (1234, 53, PROTO_UDP, 64)
        );
        assert_eq!(
            (
                usize::from(m.l3_off),
                usize::from(m.l4_off),
                usize::from(m.ip_end)
            ),
            (L3, L4, L4 + udp::HEADER_LEN + 4)
        );
    }

    #[test]
    fn every_truncation_is_a_counted_drop_never_a_panic() {
        let f = udp4();
        for n in 0..f.len() {
            match parse(&f[..n]) {
                Err(_) => {}
                Ok(p) => panic!("truncated to {n} bytes parsed as {p:?}"),
            }
        }
    }

    /// The straight-line path must give exactly what the general parser gives, or defer to it.
    #[test]
    fn common_path_matches_general_parser() {
        let mut frames = vec![udp4()];
        for (flags, payload) in [(0u8, 0usize), (1, 10), (2, 0), (3, 30)] {
            let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 96, 0, 2], 64)
                .tcp(40000, 80, 7, 1000);
            b = match flags {
                0 => b.syn(),
                1 => b.ack(5),
                2 => b.fin().ack(5),
                _ => b.rst(),
            };
            let mut f = Vec::new();
            b.write(&mut f, &vec![0u8; payload]).unwrap();
            frames.push(f);
        }
        let base = frames.clone();
        // Edits that must make the common path defer: fragments, options, bad lengths and
        // checksums, other protocols, truncation, Ethernet padding.
        for f in &base {
            let flg_off = L3 + ipv4::FLG_OFF.start;
            let total_len = L3 + ipv4::TOTAL_LEN.start;
            for (off, val) in [
                (flg_off, 0x20),            // more fragments
                (flg_off + 1, 1),           // fragment offset
                (flg_off, 0x40),            // DF alone: still the common path
                (L3 + ipv4::VER_IHL, 0x46), // options
                (total_len, 0),             // total length 19, 0, ...
                (total_len + 1, 19),
            ] {
                let mut g = f.clone();
                g[off] = val;
                frames.push(g);
            }
            let mut g = f.clone();
            g[L3 + ipv4::PROTOCOL] = PROTO_ICMP;
            frames.push(g);
            let mut g = f.clone();
            g[L3 + ipv4::CHECKSUM.start] ^= 1;
            frames.push(g);
            let mut g = f.clone();
            g.extend_from_slice(&[0; 8]); // padding after the datagram
            frames.push(g);
            if f[L3 + ipv4::PROTOCOL] == PROTO_UDP {
                for ulen in [0u16, 7, 8, 11, 13, 200] {
                    let mut g = f.clone();
                    csum::put16(&mut g, L4 + udp::LENGTH.start, ulen);
                    frames.push(g);
                }
            }
            if f[L3 + ipv4::PROTOCOL] == PROTO_TCP {
                let mut g = f.clone();
                g[L4 + tcp::DATA_OFF] = 0x40; // data offset 16 < 20
                frames.push(g);
                let mut g = f.clone();
                g[L4 + tcp::DATA_OFF] = 0xf0; // data offset past the end
                frames.push(g);
            }
            for n in 0..f.len() {
                frames.push(f[..n].to_vec());
            }
        }
        for f in &frames {
            let common = lean4(f).map(|l| l.meta());
            let general = parse_general(f);
            match (common, general) {
                (None, _) => {}
                (Some(c), Ok(Parsed::Ip(g))) => {
                    assert_eq!(format!("{c:?}"), format!("{g:?}"), "frame {f:02x?}")
                }
                (Some(c), g) => panic!("common path took {f:02x?} as {c:?}, general: {g:?}"),
            }
        }
        assert!(
            lean4(&base[1]).is_some(),
            "the common case takes the fast path"
        );
        assert!(lean4(&base[0]).is_some());
    }

    fn udp6() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1234, 53);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3, 4]).unwrap();
        out
    }

    /// A UDP length below 8 or beyond the datagram is `malformed-l4` (as the kernel drops
    /// it); shorter than the datagram but >= 8 is legal and parses.
    #[test]
    fn udp_length_is_checked_against_the_datagram() {
        for (f, l4) in [(udp4(), L4), (udp6(), L3 + ipv6::HEADER_LEN)] {
            let real = csum::get16(&f, l4 + udp::LENGTH.start);
            assert_eq!(usize::from(real), udp::HEADER_LEN + 4);
            for (ulen, ok) in [
                (0u16, false),
                (7, false),
                (8, true),
                (real - 1, true),
                (real, true),
                (real + 1, false),
                (u16::MAX, false),
            ] {
                let mut g = f.clone();
                csum::put16(&mut g, l4 + udp::LENGTH.start, ulen);
                match parse(&g) {
                    Ok(Parsed::Ip(m)) if ok => assert_eq!(m.dport, 53),
                    Err(DropReason::MalformedL4) if !ok => {}
                    r => panic!("UDP length {ulen} (datagram {real}): {r:?}"),
                }
            }
        }
    }

    /// A frame longer than 65,535 bytes is refused before any offset is taken. Here a tagged
    /// frame whose datagram ends at byte 18 + 65,530: as a `u16` that end would wrap to 12.
    #[test]
    fn frames_longer_than_16_bit_offsets_are_refused() {
        let f = udp4();
        let mut g = f[ethernet::MACS].to_vec();
        g.extend_from_slice(&ethernet::ETHERTYPE_VLAN.to_be_bytes());
        g.extend_from_slice(&[0x00, 0x64]);
        g.extend_from_slice(&f[ethernet::ETHERTYPE.start..]);
        let l3 = vlan::HEADER_LEN;
        let total: u16 = 65_530;
        csum::put16(&mut g, l3 + ipv4::TOTAL_LEN.start, total);
        csum::put16(&mut g, l3 + ipv4::CHECKSUM.start, 0);
        let c = csum::checksum(&g[l3..l3 + ipv4::MIN_HEADER_LEN]);
        csum::put16(&mut g, l3 + ipv4::CHECKSUM.start, c);
        let l4 = l3 + ipv4::MIN_HEADER_LEN;
        csum::put16(
            &mut g,
            l4 + udp::LENGTH.start,
            total - ipv4::MIN_HEADER_LEN as u16,
        );
        g.resize(l3 + usize::from(total), 0);
        assert!(g.len() > MAX_FRAME_LEN);
        assert_eq!(parse(&g).unwrap_err(), DropReason::FrameTooLong);
        // The same datagram one VLAN tag shorter fits in 65,535 bytes (minus padding) and parses.
        let mut h = udp4();
        let total = (MAX_FRAME_LEN - L3) as u16;
        csum::put16(&mut h, L3 + ipv4::TOTAL_LEN.start, total);
        csum::put16(&mut h, L3 + ipv4::CHECKSUM.start, 0);
        let c = csum::checksum(&h[L3..L4]);
        csum::put16(&mut h, L3 + ipv4::CHECKSUM.start, c);
        csum::put16(
            &mut h,
            L4 + udp::LENGTH.start,
            total - ipv4::MIN_HEADER_LEN as u16,
        );
        h.resize(MAX_FRAME_LEN, 0);
        let Ok(Parsed::Ip(m)) = parse(&h) else {
            panic!("a 65,535-byte frame parses")
        };
        assert_eq!(usize::from(m.ip_end), MAX_FRAME_LEN);
    }

    #[test]
    fn bad_ipv4_checksum_is_dropped() {
        let mut f = udp4();
        f[L3 + ipv4::CHECKSUM.start] ^= 0xff;
        assert_eq!(parse(&f).unwrap_err(), DropReason::BadIpChecksum);
    }

    #[test]
    fn non_ip_and_vlan() {
        let mut arp = vec![0u8; 42];
        arp[ethernet::ETHERTYPE].copy_from_slice(&[0x08, 0x06]);
        assert!(matches!(parse(&arp), Ok(Parsed::NotIp)));
        let f = udp4();
        let mut tagged = f[ethernet::MACS].to_vec();
        tagged.extend_from_slice(&ethernet::ETHERTYPE_VLAN.to_be_bytes());
        tagged.extend_from_slice(&[0x00, 0x64]); // TCI: VLAN 100
        tagged.extend_from_slice(&f[ethernet::ETHERTYPE.start..]);
        let Parsed::Ip(m) = parse(&tagged).unwrap() else {
            panic!()
        };
        assert_eq!((usize::from(m.l3_off), m.dport), (vlan::HEADER_LEN, 53));
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(4000, 80, 1, 1000)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        // Insert an 8-byte destination-options header between IPv6 and TCP.
        let l4 = L3 + ipv6::HEADER_LEN;
        let mut g = f[..l4].to_vec();
        g[L3 + ipv6::NEXT_HEADER] = ipv6::NH_DEST_OPTS;
        let plen = csum::get16(&g, L3 + ipv6::PAYLOAD_LEN.start) + 8;
        csum::put16(&mut g, L3 + ipv6::PAYLOAD_LEN.start, plen);
        g.extend_from_slice(&[PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        g.extend_from_slice(&f[l4..]);
        let Parsed::Ip(m) = parse(&g).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.proto, m.dport, usize::from(m.l4_off)),
            (PROTO_TCP, 80, l4 + ipv6::ext::MIN_LEN)
        );
        assert_eq!(m.tcp_flags & tcp::flags::SYN, tcp::flags::SYN);
    }
}
