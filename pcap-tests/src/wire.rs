//! An independent, deliberately simple decoder for the checks on replay output: addresses, ports,
//! TTL, the quoted packet of ICMP errors, and checksum verification computed from scratch (not
//! through the pipeline's code and not through etherparse's checksum helpers), so a checksum bug
//! in either cannot hide itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// What the checks need to know about one IP packet (outer or the quoted inner one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Ports for TCP/UDP when this packet carries the L4 header (unfragmented or first fragment).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// Fragment: (identification, offset in bytes, more fragments).
    pub frag: Option<(u32, u32, bool)>,
    /// Byte offset of the IP header in the frame and of the L4 header.
    pub ip_off: usize,
    pub l4_off: usize,
    /// End of the IP packet in the frame (by its length field, clamped to the frame).
    pub end: usize,
}

impl IpInfo {
    pub fn is_fragment(&self) -> bool {
        self.frag.is_some()
    }
    pub fn is_first_or_whole(&self) -> bool {
        self.frag.is_none_or(|(_, off, _)| off == 0)
    }
}

/// A decoded Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub ethertype: u16,
    pub ip: Option<IpInfo>,
    /// For ICMP/ICMPv6 errors: the quoted packet.
    pub inner: Option<IpInfo>,
    pub icmp_type: Option<u8>,
}

fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

/// Decodes a frame. Returns `None` only when the Ethernet header itself is cut.
pub fn decode(frame: &[u8]) -> Option<FrameInfo> {
    if frame.len() < 14 {
        return None;
    }
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    let mut ethertype = be16(frame, 12)?;
    let mut off = 14;
    let mut vlan = None;
    if ethertype == 0x8100 {
        vlan = Some(be16(frame, 14)? & 0x0fff);
        ethertype = be16(frame, 16)?;
        off = 18;
    }
    let mut info = FrameInfo {
        dst_mac,
        src_mac,
        vlan,
        ethertype,
        ip: None,
        inner: None,
        icmp_type: None,
    };
    let ip = match ethertype {
        0x0800 => decode_ipv4(frame, off, frame.len()),
        0x86dd => decode_ipv6(frame, off, frame.len()),
        _ => None,
    };
    if let Some(ip) = &ip {
        let is_icmp = ip.proto == PROTO_ICMP || ip.proto == PROTO_ICMPV6;
        if is_icmp && ip.is_first_or_whole() && ip.l4_off < ip.end {
            let t = frame[ip.l4_off];
            info.icmp_type = Some(t);
            let is_error = if ip.proto == PROTO_ICMP {
                matches!(t, 3 | 4 | 5 | 11 | 12)
            } else {
                t < 128
            };
            if is_error && ip.l4_off + 8 < ip.end {
                let q = ip.l4_off + 8;
                info.inner = match frame[q] >> 4 {
                    4 => decode_ipv4(frame, q, ip.end),
                    6 => decode_ipv6(frame, q, ip.end),
                    _ => None,
                };
            }
        }
    }
    info.ip = ip;
    Some(info)
}

fn decode_ipv4(b: &[u8], off: usize, limit: usize) -> Option<IpInfo> {
    let b = &b[..limit];
    if b.len() < off + 20 || b[off] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[off] & 0x0f) * 4;
    if ihl < 20 || b.len() < off + ihl {
        return None;
    }
    let total = usize::from(be16(b, off + 2)?);
    let end = (off + total).min(b.len());
    let flags_frag = be16(b, off + 6)?;
    let more = flags_frag & 0x2000 != 0;
    let frag_off = u32::from(flags_frag & 0x1fff) * 8;
    let frag =
        (more || frag_off != 0).then(|| (u32::from(be16(b, off + 4).unwrap_or(0)), frag_off, more));
    let src = IpAddr::V4(Ipv4Addr::new(
        b[off + 12],
        b[off + 13],
        b[off + 14],
        b[off + 15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        b[off + 16],
        b[off + 17],
        b[off + 18],
        b[off + 19],
    ));
    let proto = b[off + 9];
    let l4_off = off + ihl;
    let mut info = IpInfo {
        src,
        dst,
        ttl: b[off + 8],
        proto,
        sport: None,
        dport: None,
        frag,
        ip_off: off,
        l4_off,
        end,
    };
    fill_ports(b, &mut info);
    Some(info)
}

fn decode_ipv6(b: &[u8], off: usize, limit: usize) -> Option<IpInfo> {
    let b = &b[..limit];
    if b.len() < off + 40 || b[off] >> 4 != 6 {
        return None;
    }
    let plen = usize::from(be16(b, off + 4)?);
    let end = (off + 40 + plen).min(b.len());
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&b[off + 8..off + 24]);
    d.copy_from_slice(&b[off + 24..off + 40]);
    let mut next = b[off + 6];
    let mut l4_off = off + 40;
    let mut frag = None;
    // Extension headers: hop-by-hop, routing, destination options, fragment.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*b.get(l4_off + 1)?) + 1) * 8;
                next = *b.get(l4_off)?;
                l4_off += len;
            }
            44 => {
                next = *b.get(l4_off)?;
                let fo = be16(b, l4_off + 2)?;
                let id = u32::from_be_bytes([
                    *b.get(l4_off + 4)?,
                    *b.get(l4_off + 5)?,
                    *b.get(l4_off + 6)?,
                    *b.get(l4_off + 7)?,
                ]);
                frag = Some((id, u32::from(fo & 0xfff8), fo & 1 != 0));
                l4_off += 8;
            }
            _ => break,
        }
    }
    let mut info = IpInfo {
        src: IpAddr::V6(Ipv6Addr::from(s)),
        dst: IpAddr::V6(Ipv6Addr::from(d)),
        ttl: b[off + 7],
        proto: next,
        sport: None,
        dport: None,
        frag,
        ip_off: off,
        l4_off,
        end,
    };
    fill_ports(b, &mut info);
    Some(info)
}

fn fill_ports(b: &[u8], info: &mut IpInfo) {
    if (info.proto == PROTO_TCP || info.proto == PROTO_UDP) && info.is_first_or_whole() {
        info.sport = be16(b, info.l4_off).filter(|_| info.l4_off + 4 <= info.end);
        info.dport = be16(b, info.l4_off + 2).filter(|_| info.l4_off + 4 <= info.end);
    } else if (info.proto == PROTO_ICMP || info.proto == PROTO_ICMPV6) && info.is_first_or_whole() {
        // Echo: the identifier stands in for both ports (as conntrack keys it).
        let t = b.get(info.l4_off).copied();
        if matches!(t, Some(0 | 8 | 128 | 129)) && info.l4_off + 8 <= info.end {
            info.sport = be16(b, info.l4_off + 4);
            info.dport = info.sport;
        }
    }
}

/// One's complement sum of `data` (odd length padded with a zero byte), not yet folded.
fn sum16(data: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut s = 0;
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            s += sum16(&a.octets()) + sum16(&b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            s += sum16(&a.octets()) + sum16(&b.octets());
        }
        _ => {}
    }
    s + u64::from(proto) + len as u64
}

/// True when the data (containing its own checksum field) sums to 0xffff.
fn sums_ok(s: u64) -> bool {
    fold(s) == 0xffff
}

/// Verifies the IPv4 header checksum of the packet at `ip`.
pub fn ipv4_header_ok(frame: &[u8], ip: &IpInfo) -> bool {
    let ihl = usize::from(frame[ip.ip_off] & 0x0f) * 4;
    sums_ok(sum16(&frame[ip.ip_off..ip.ip_off + ihl]))
}

/// The bytes of the UDP segment `l4` (the IP payload) that its checksum covers: its UDP length
/// when that is legal (8 ..= payload; RFC 768, and the kernel trims the surplus), else the whole
/// payload (such a datagram is malformed; a checksum is still defined over what is there).
pub fn udp_extent(l4: &[u8]) -> usize {
    match be16(l4, 4).map(usize::from) {
        Some(n) if (8..=l4.len()).contains(&n) => n,
        _ => l4.len(),
    }
}

/// The UDP checksum field value for the UDP segment `l4` (its checksum field is ignored) over
/// [`udp_extent`] bytes.
pub fn udp_checksum(src: IpAddr, dst: IpAddr, l4: &[u8]) -> u16 {
    let n = udp_extent(l4);
    let mut seg = l4[..n].to_vec();
    seg[6] = 0;
    seg[7] = 0;
    match !fold(pseudo(src, dst, PROTO_UDP, n) + sum16(&seg)) {
        0 => 0xffff,
        c => c,
    }
}

/// Verifies the L4 checksum of `l4` (the whole L4 segment) for `proto` between `src` and `dst`
/// (UDP: over its [`udp_extent`]).
pub fn l4_ok(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Result<(), String> {
    let v4 = src.is_ipv4();
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let min = if proto == PROTO_TCP { 20 } else { 8 };
            if l4.len() < min {
                return Err(format!(
                    "L4 segment of {} bytes is shorter than its header",
                    l4.len()
                ));
            }
            if proto == PROTO_UDP && v4 && l4[6] == 0 && l4[7] == 0 {
                return Ok(()); // no checksum (allowed over IPv4 only)
            }
            let l4 = if proto == PROTO_UDP {
                &l4[..udp_extent(l4)]
            } else {
                l4
            };
            if sums_ok(pseudo(src, dst, proto, l4.len()) + sum16(l4)) {
                Ok(())
            } else {
                Err(format!(
                    "bad {} checksum",
                    if proto == PROTO_TCP { "TCP" } else { "UDP" }
                ))
            }
        }
        PROTO_ICMP if v4 => {
            if sums_ok(sum16(l4)) {
                Ok(())
            } else {
                Err("bad ICMPv4 checksum".into())
            }
        }
        PROTO_ICMPV6 if !v4 => {
            if sums_ok(pseudo(src, dst, proto, l4.len()) + sum16(l4)) {
                Ok(())
            } else {
                Err("bad ICMPv6 checksum".into())
            }
        }
        _ => Ok(()),
    }
}

/// The offset of the TCP/UDP checksum field of an unfragmented frame and the value a sender
/// with TX checksum offload leaves there (CHECKSUM_PARTIAL: the folded pseudo-header sum, not
/// complemented, as Linux's `~csum_tcpudp_magic(saddr, daddr, len, proto, 0)`). `None` for any
/// other frame.
pub fn partial_checksum(frame: &[u8]) -> Option<(usize, u16)> {
    let ip = decode(frame)?.ip?;
    if ip.is_fragment() {
        return None;
    }
    let field = match ip.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return None,
    };
    let len = ip.end.checked_sub(ip.l4_off)?;
    (len >= field + 2).then(|| {
        (
            ip.l4_off + field,
            fold(pseudo(ip.src, ip.dst, ip.proto, len)),
        )
    })
}

/// Whether a frame's TCP/UDP checksum is partial ([`partial_checksum`]).
pub fn is_partial(frame: &[u8]) -> bool {
    partial_checksum(frame).is_some_and(|(off, v)| be16(frame, off) == Some(v))
}

/// Checks every checksum of one frame that can be checked on its own: the IPv4 header, the L4
/// checksum of an unfragmented packet, and for ICMP errors the quoted IPv4 header. Fragments'
/// L4 checksums are checked after reassembly by [`FragmentChecker`].
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let Some(info) = decode(frame) else {
        return Ok(());
    };
    let Some(ip) = &info.ip else {
        return Ok(());
    };
    if ip.src.is_ipv4() && !ipv4_header_ok(frame, ip) {
        return Err("bad IPv4 header checksum".into());
    }
    if !ip.is_fragment() {
        l4_ok(ip.src, ip.dst, ip.proto, &frame[ip.l4_off..ip.end])?;
    }
    if let Some(inner) = &info.inner {
        if inner.src.is_ipv4() && !ipv4_header_ok(frame, inner) {
            return Err("bad IPv4 header checksum of the packet quoted in an ICMP error".into());
        }
    }
    Ok(())
}

/// (src, dst, protocol, identification)
type DatagramKey = (IpAddr, IpAddr, u8, u32);
/// offset → bytes, and the total length once the last fragment is seen.
type PartialDatagram = (BTreeMap<u32, Vec<u8>>, Option<u32>);

/// Reassembles fragments (of output packets) to check the L4 checksum of the whole datagram.
#[derive(Debug, Default)]
pub struct FragmentChecker {
    /// (src, dst, proto, id) → (offset → bytes, total length once the last fragment is seen)
    pending: BTreeMap<DatagramKey, PartialDatagram>,
}

impl FragmentChecker {
    pub fn add(&mut self, frame: &[u8]) {
        let Some(FrameInfo { ip: Some(ip), .. }) = decode(frame) else {
            return;
        };
        let Some((id, off, more)) = ip.frag else {
            return;
        };
        let e = self
            .pending
            .entry((ip.src, ip.dst, ip.proto, id))
            .or_default();
        let data = frame[ip.l4_off..ip.end].to_vec();
        if !more {
            e.1 = Some(off + data.len() as u32);
        }
        e.0.insert(off, data);
    }

    /// Verifies every complete datagram; returns (datagrams checked, errors).
    pub fn finish(self) -> (usize, Vec<String>) {
        let mut checked = 0;
        let mut errors = Vec::new();
        for ((src, dst, proto, id), (parts, total)) in self.pending {
            let Some(total) = total else {
                errors.push(format!(
                    "fragments of {src}->{dst} id {id}: last fragment missing"
                ));
                continue;
            };
            let mut whole = Vec::new();
            for (off, data) in parts {
                if off as usize != whole.len() {
                    break;
                }
                whole.extend_from_slice(&data);
            }
            if whole.len() as u32 != total {
                errors.push(format!(
                    "fragments of {src}->{dst} id {id}: hole (got {} of {total} bytes)",
                    whole.len()
                ));
                continue;
            }
            checked += 1;
            if let Err(e) = l4_ok(src, dst, proto, &whole) {
                errors.push(format!("reassembled {src}->{dst} id {id}: {e}"));
            }
        }
        (checked, errors)
    }
}

/// The TCP header fields the reset checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Header length in bytes (data offset).
    pub header_len: usize,
    /// Payload bytes (to the end of the IP packet).
    pub payload_len: usize,
}

impl TcpInfo {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The TCP header of a decoded packet (`None`: not TCP, a later fragment, or cut).
pub fn tcp(frame: &[u8], ip: &IpInfo) -> Option<TcpInfo> {
    if ip.proto != PROTO_TCP || !ip.is_first_or_whole() || ip.end > frame.len() {
        return None;
    }
    let t = frame.get(ip.l4_off..ip.end)?;
    if t.len() < 20 {
        return None;
    }
    let header_len = usize::from(t[12] >> 4) * 4;
    Some(TcpInfo {
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        header_len,
        payload_len: t.len().saturating_sub(header_len),
    })
}

/// `ip:port`, `[ip6]:port`, or the bare address when there is no port.
pub fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, None) => a.to_string(),
    }
}

/// Compares an expected endpoint string (`ip`, `ip:port` or `[ip6]:port`) with a decoded one.
pub fn endpoint_matches(expected: &str, ip: IpAddr, port: Option<u16>) -> bool {
    match expected.parse::<IpAddr>() {
        Ok(e) => e == ip,
        Err(_) => expected == endpoint(ip, port),
    }
}

/// Parses `ip`, `ip:port` or `[ip6]:port`.
pub fn split_endpoint(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some((a, None));
    }
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A one-line, human description of a frame (for diffs), decoded with etherparse.
pub fn describe(frame: &[u8]) -> String {
    use etherparse::{LaxNetSlice as NetSlice, LaxSlicedPacket, TransportSlice};
    let mut out = format!("{} bytes", frame.len());
    if let Some(i) = decode(frame) {
        out += &format!(" eth {} > {}", mac(&i.src_mac), mac(&i.dst_mac));
        if let Some(v) = i.vlan {
            out += &format!(" vlan {v}");
        }
    }
    match LaxSlicedPacket::from_ethernet(frame) {
        Err(e) => out += &format!(" (etherparse: {e})"),
        Ok(p) => {
            match &p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    let h = ip.header();
                    out += &format!(
                        " ipv4 {} > {} ttl {} id {} off {} mf {} csum {:#06x}",
                        h.source_addr(),
                        h.destination_addr(),
                        h.ttl(),
                        h.identification(),
                        h.fragments_offset().value(),
                        h.more_fragments(),
                        h.header_checksum()
                    );
                }
                Some(NetSlice::Ipv6(ip)) => {
                    let h = ip.header();
                    out += &format!(
                        " ipv6 {} > {} hlim {}",
                        h.source_addr(),
                        h.destination_addr(),
                        h.hop_limit()
                    );
                }
                None => {}
            }
            match &p.transport {
                Some(TransportSlice::Tcp(t)) => {
                    let mut flags = String::new();
                    for (set, c) in [
                        (t.syn(), 'S'),
                        (t.ack(), '.'),
                        (t.fin(), 'F'),
                        (t.rst(), 'R'),
                        (t.psh(), 'P'),
                    ] {
                        if set {
                            flags.push(c);
                        }
                    }
                    out += &format!(
                        " tcp {} > {} [{flags}] seq {} ack {} csum {:#06x} len {}",
                        t.source_port(),
                        t.destination_port(),
                        t.sequence_number(),
                        t.acknowledgment_number(),
                        t.checksum(),
                        t.payload().len()
                    );
                }
                Some(TransportSlice::Udp(u)) => {
                    out += &format!(
                        " udp {} > {} csum {:#06x} len {}",
                        u.source_port(),
                        u.destination_port(),
                        u.checksum(),
                        u.payload().len()
                    );
                }
                Some(TransportSlice::Icmpv4(i)) => {
                    out += &format!(" icmp {:?} csum {:#06x}", i.icmp_type(), i.checksum());
                }
                Some(TransportSlice::Icmpv6(i)) => {
                    out += &format!(" icmpv6 {:?} csum {:#06x}", i.icmp_type(), i.checksum());
                }
                None => {}
            }
        }
    }
    if let Some(FrameInfo {
        inner: Some(inner), ..
    }) = decode(frame)
    {
        out += &format!(
            " | quoted {} > {}",
            endpoint(inner.src, inner.sport),
            endpoint(inner.dst, inner.dport)
        );
    }
    out
}
