//! Frame construction for the cases: etherparse's `PacketBuilder` for every well-formed packet
//! (it computes lengths and checksums), plus small byte-level helpers for what a builder cannot
//! express on purpose: fragments and malformed frames.

use std::net::IpAddr;

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, PacketBuilder, TcpHeader, VlanId,
};

/// TCP flags of a built segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
    psh: false,
};
pub const SYNACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const PSHACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: true,
};
pub const FINACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
    psh: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
    psh: false,
};

/// The transport part of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: Flags,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    Icmpv4(Icmpv4Type),
    Icmpv6(Icmpv6Type),
}

/// Extra IP-layer features of a packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpExtras {
    /// IPv4 options bytes (length a multiple of 4, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv6: add a hop-by-hop options header and a destination options header.
    pub ipv6_opts: bool,
    pub ipv4_id: u16,
    pub dont_fragment: bool,
}

/// One packet to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub extras: IpExtras,
}

fn ip_headers(p: &Pkt) -> IpHeaders {
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // Protocol and lengths are filled in by the builder.
            let mut h = Ipv4Header::new(0, p.ttl, IpNumber::UDP, s.octets(), d.octets())
                .expect("a zero payload length fits");
            h.identification = p.extras.ipv4_id;
            h.dont_fragment = p.extras.dont_fragment;
            h.options = etherparse::Ipv4Options::try_from(&p.extras.ipv4_options[..])
                .expect("IPv4 options of a valid length");
            IpHeaders::Ipv4(h, Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: IpNumber::UDP,
                hop_limit: p.ttl,
                source: s.octets(),
                destination: d.octets(),
            };
            let mut exts = Ipv6Extensions::default();
            if p.extras.ipv6_opts {
                // PadN options only: a router must skip them without acting.
                let pad = [1u8, 4, 0, 0, 0, 0];
                exts.hop_by_hop_options = Some(
                    Ipv6RawExtHeader::new_raw(IpNumber::IPV6_DESTINATION_OPTIONS, &pad)
                        .expect("valid"),
                );
                exts.destination_options =
                    Some(Ipv6RawExtHeader::new_raw(IpNumber::UDP, &pad).expect("valid"));
            }
            IpHeaders::Ipv6(h, exts)
        }
        _ => panic!(
            "mixed IPv4/IPv6 addresses in one packet: {} -> {}",
            p.src, p.dst
        ),
    }
}

impl Pkt {
    /// The whole Ethernet frame, with correct lengths and checksums.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = ip_headers(self);
        let step = match self.vlan {
            Some(v) => eth
                .single_vlan(VlanId::try_new(v).expect("12-bit VLAN id"))
                .ip(ip),
            None => eth.ip(ip),
        };
        let mut out = Vec::new();
        let r = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
            } => {
                let mut t = TcpHeader::new(*sport, *dport, *seq, 64240);
                t.syn = flags.syn;
                t.ack = flags.ack;
                t.fin = flags.fin;
                t.rst = flags.rst;
                t.psh = flags.psh;
                t.acknowledgment_number = if flags.ack { *ack } else { 0 };
                step.tcp_header(t).write(&mut out, &self.payload)
            }
            L4::Udp { sport, dport } => step.udp(*sport, *dport).write(&mut out, &self.payload),
            L4::EchoRequest { id, seq } if self.src.is_ipv4() => step
                .icmpv4_echo_request(*id, *seq)
                .write(&mut out, &self.payload),
            L4::EchoRequest { id, seq } => step
                .icmpv6_echo_request(*id, *seq)
                .write(&mut out, &self.payload),
            L4::EchoReply { id, seq } if self.src.is_ipv4() => step
                .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader { id: *id, seq: *seq }))
                .write(&mut out, &self.payload),
            L4::EchoReply { id, seq } => step
                .icmpv6_echo_reply(*id, *seq)
                .write(&mut out, &self.payload),
            L4::Icmpv4(t) => step.icmpv4(t.clone()).write(&mut out, &self.payload),
            L4::Icmpv6(t) => step.icmpv6(*t).write(&mut out, &self.payload),
        };
        r.expect("building a frame into a Vec cannot fail");
        out
    }

    /// The IP packet alone (no Ethernet header): what an ICMP error quotes.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let mut p = self.clone();
        p.vlan = None;
        p.build()[14..].to_vec()
    }
}

fn ipv4_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let mut s: u32 = 0;
    for c in hdr.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    let c = !(s as u16);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Splits a built, untagged frame into IP fragments carrying at most `chunk` bytes of IP
/// payload each (rounded down to a multiple of 8). IPv4: the header is copied with MF/offset
/// set; IPv6: a fragment header with `id` is inserted after the fixed header (the frame must
/// not carry other extension headers). Returns the fragments in order (first fragment first).
pub fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let chunk = chunk / 8 * 8;
    assert!(chunk >= 8);
    let eth = &frame[..14];
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut out = Vec::new();
    if ethertype == 0x0800 {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let hdr = &frame[14..14 + ihl];
        let payload = &frame[14 + ihl..];
        let mut off = 0;
        while off < payload.len() {
            let end = (off + chunk).min(payload.len());
            let more = end < payload.len();
            let mut h = hdr.to_vec();
            let total = (ihl + end - off) as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            ipv4_checksum(&mut h);
            let mut f = eth.to_vec();
            f.extend_from_slice(&h);
            f.extend_from_slice(&payload[off..end]);
            out.push(f);
            off = end;
        }
    } else {
        let (hdr, payload) = (&frame[14..54], &frame[54..]);
        let next = IpNumber(hdr[6]);
        let mut off = 0;
        while off < payload.len() {
            let end = (off + chunk).min(payload.len());
            let more = end < payload.len();
            // Written by hand: etherparse 0.16's `Ipv6FragmentHeader::to_bytes` puts the M flag
            // at 0x80 of the 4th byte (fixed in later versions); RFC 8200 has it at 0x01.
            let fo = ((off / 8) as u16) << 3 | u16::from(more);
            let mut fh = [next.0, 0, 0, 0, 0, 0, 0, 0];
            fh[2..4].copy_from_slice(&fo.to_be_bytes());
            fh[4..8].copy_from_slice(&id.to_be_bytes());
            let mut h = hdr.to_vec();
            h[4..6].copy_from_slice(&((8 + end - off) as u16).to_be_bytes());
            h[6] = IpNumber::IPV6_FRAGMENTATION_HEADER.0;
            let mut f = eth.to_vec();
            f.extend_from_slice(&h);
            f.extend_from_slice(&fh);
            f.extend_from_slice(&payload[off..end]);
            out.push(f);
            off = end;
        }
    }
    out
}

/// Recomputes the IPv4 header checksum of an untagged frame after a deliberate edit.
pub fn fix_ipv4_header_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if frame.len() >= 14 + ihl.max(20) {
        let len = ihl.max(20);
        ipv4_checksum(&mut frame[14..14 + len]);
    }
}

/// Sets the UDP length field of a built, untagged UDP frame (IPv4 without options, or IPv6
/// without extension headers) to `ulen`, and its checksum to the one the sender of such a
/// datagram computes ([`crate::wire::udp_checksum`]).
pub fn set_udp_length(frame: &mut [u8], ulen: u16) {
    let (l4, src, dst) = if u16::from_be_bytes([frame[12], frame[13]]) == 0x0800 {
        assert_eq!(frame[14], 0x45, "IPv4 without options");
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&frame[o..o + 4]).unwrap());
        (34, a(26), a(30))
    } else {
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&frame[o..o + 16]).unwrap());
        (54, a(22), a(38))
    };
    assert_eq!(frame[if l4 == 34 { 23 } else { 20 }], 17, "a UDP frame");
    frame[l4 + 4..l4 + 6].copy_from_slice(&ulen.to_be_bytes());
    let c = crate::wire::udp_checksum(src, dst, &frame[l4..]);
    frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
}

/// A deterministic payload of `len` bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
