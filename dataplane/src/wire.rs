//! Header field positions: where each field of Ethernet, 802.1Q, IPv4 (+ its fragment fields),
//! IPv6 (+ the extension headers parse walks), TCP, UDP, ICMP and ICMPv6 sits, as byte ranges
//! ([`Field`]) or single-byte positions (`usize`) from the start of that header, with the header
//! lengths and the header values the packet path tests (ethertypes, flag bits, ICMP types).
//! The shape is smoltcp's `wire::*::field`; there are no header views here, only positions:
//! the stages keep their own fixed-size views and bounds checks (see [`crate::parse`]).
//!
//! Invariant: no other file of the crate indexes into a header with a bare number. A stage
//! writes `l4 + tcp::CHECKSUM.start`, or `&frame[at(l3, ipv4::SRC_ADDR)]`, never `l4 + 16`.
//! Everything here is a compile-time constant, so the generated code is the same as with the
//! numbers written out.

use core::ops::Range;

/// A run of bytes within a header, from the start of that header.
pub type Field = Range<usize>;

/// `field` of the header that starts at `base` in the frame: `&frame[at(l3, ipv4::SRC_ADDR)]`.
#[inline(always)]
pub const fn at(base: usize, field: Field) -> Range<usize> {
    base + field.start..base + field.end
}

/// Ethernet II, from the start of the frame.
pub mod ethernet {
    use super::Field;

    pub const DST_MAC: Field = 0..6;
    pub const SRC_MAC: Field = 6..12;
    /// Both MACs: the part of the header that moves when a VLAN tag is stripped.
    pub const MACS: Field = 0..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const HEADER_LEN: usize = 14;

    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_IPV6: u16 = 0x86dd;
    /// 802.1Q: a [`super::vlan`] tag follows the MACs.
    pub const ETHERTYPE_VLAN: u16 = 0x8100;
    /// 802.1ad (QinQ): not parsed, the kernel's business.
    pub const ETHERTYPE_QINQ: u16 = 0x88a8;
}

/// One 802.1Q tag, between the source MAC and the ethertype: offsets from the start of the
/// frame (the tag's TPID takes the place of [`ethernet::ETHERTYPE`]).
pub mod vlan {
    use super::Field;

    /// Tag protocol identifier, [`super::ethernet::ETHERTYPE_VLAN`].
    pub const TPID: Field = 12..14;
    /// Priority, drop eligibility and VLAN id.
    pub const TCI: Field = 14..16;
    /// The ethertype of what the tag carries.
    pub const ETHERTYPE: Field = 16..18;
    pub const TAG_LEN: usize = 4;
    /// Ethernet header with one tag.
    pub const HEADER_LEN: usize = super::ethernet::HEADER_LEN + TAG_LEN;
}

/// IPv4 (RFC 791), from the start of the IP header.
pub mod ipv4 {
    use super::Field;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// Flags (high 3 bits) and fragment offset in 8-byte units.
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    /// TTL and protocol as the one 16-bit word the header checksum sums.
    pub const TTL_PROTOCOL: Field = 8..10;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    /// Both addresses, adjacent.
    pub const ADDRS: Field = 12..20;
    pub const MIN_HEADER_LEN: usize = 20;
    pub const ADDR_LEN: usize = 4;

    pub const VERSION: u8 = 4;
    /// [`VER_IHL`] of a header without options.
    pub const VER_IHL_NO_OPTIONS: u8 = 0x45;
    /// In [`FLG_OFF`]: don't fragment, more fragments, and the offset bits.
    pub const FLAG_DF: u16 = 0x4000;
    pub const FLAG_MF: u16 = 0x2000;
    pub const OFFSET_MASK: u16 = 0x1fff;
}

/// IPv6 (RFC 8200), from the start of the IP header.
pub mod ipv6 {
    use super::Field;

    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
    /// Both addresses, adjacent.
    pub const ADDRS: Field = 8..40;
    pub const HEADER_LEN: usize = 40;
    pub const ADDR_LEN: usize = 16;

    pub const VERSION: u8 = 6;

    /// Next-header values of the extension headers parse walks over.
    pub const NH_HOP_BY_HOP: u8 = 0;
    pub const NH_ROUTING: u8 = 43;
    pub const NH_FRAGMENT: u8 = 44;
    pub const NH_AUTH: u8 = 51;
    pub const NH_DEST_OPTS: u8 = 60;
    pub const NH_MOBILITY: u8 = 135;

    /// The generic extension header (hop-by-hop, routing, destination options, mobility,
    /// authentication), from its start.
    pub mod ext {
        pub const NEXT_HEADER: usize = 0;
        /// Hdr Ext Len: (len + 1) * 8 bytes, or (len + 2) * 4 for the authentication header.
        pub const LENGTH: usize = 1;
        /// The shortest extension header, and the unit of [`LENGTH`].
        pub const MIN_LEN: usize = 8;
        /// The unit of the authentication header's [`LENGTH`] (RFC 4302).
        pub const AUTH_UNIT: usize = 4;
    }

    /// The fragment extension header, from its start.
    pub mod frag {
        use crate::wire::Field;

        pub const NEXT_HEADER: usize = 0;
        /// Fragment offset in 8-byte units (high 13 bits) and the M flag (low bit).
        pub const FLG_OFF: Field = 2..4;
        pub const IDENT: Field = 4..8;
        pub const HEADER_LEN: usize = 8;

        pub const OFFSET_SHIFT: u32 = 3;
        pub const FLAG_MF: u16 = 0x0001;
    }
}

/// TCP (RFC 9293), from the start of the TCP header.
pub mod tcp {
    use super::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const MIN_HEADER_LEN: usize = 20;

    /// Bits of [`FLAGS`].
    pub mod flags {
        pub const FIN: u8 = 0x01;
        pub const SYN: u8 = 0x02;
        pub const RST: u8 = 0x04;
        pub const ACK: u8 = 0x10;
    }
}

/// UDP (RFC 768), from the start of the UDP header.
pub mod udp {
    use super::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const HEADER_LEN: usize = 8;
}

/// The source and destination ports at the same place in TCP and UDP.
const _: () = assert!(tcp::SRC_PORT.start == udp::SRC_PORT.start);
const _: () = assert!(tcp::DST_PORT.start == udp::DST_PORT.start);

/// ICMP (RFC 792), from the start of the ICMP header.
pub mod icmp {
    use super::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Echo request and reply: identifier and sequence number.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
    /// The fixed header; an error's quoted datagram starts right after it.
    pub const HEADER_LEN: usize = 8;
    /// How much of the quoted datagram's L4 header an error carries at least (RFC 792): the
    /// ports, and for TCP the sequence number.
    pub const QUOTED_L4_LEN: usize = 8;

    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Code of [`DEST_UNREACHABLE`]: nothing listens on the port.
    pub const PORT_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
}

/// ICMPv6 (RFC 4443): the same layout as ICMP, other type numbers.
pub mod icmpv6 {
    use super::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
    pub const HEADER_LEN: usize = 8;

    /// Errors: destination unreachable through parameter problem.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Code of [`DEST_UNREACHABLE`]: nothing listens on the port.
    pub const PORT_UNREACHABLE: u8 = 4;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// MLD and neighbour/router discovery: MLD query through redirect, and MLDv2 report.
    pub const MLD_QUERY: u8 = 130;
    pub const REDIRECT: u8 = 137;
    pub const MLDV2_REPORT: u8 = 143;
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn get16(f: &[u8], base: usize, field: Field) -> u16 {
        u16::from_be_bytes(f[at(base, field)].try_into().unwrap())
    }

    /// The ranges here against etherparse's reading of packets it built itself.
    #[test]
    fn ranges_match_etherparse_packets() {
        let l3 = ethernet::HEADER_LEN;
        let l4 = l3 + ipv4::MIN_HEADER_LEN;

        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 96, 0, 10], 63)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .write(&mut f, &[1, 2, 3])
            .unwrap();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        assert_eq!(f[ethernet::SRC_MAC], MAC_A);
        assert_eq!(f[ethernet::DST_MAC], MAC_B);
        assert_eq!(get16(&f, 0, ethernet::ETHERTYPE), ethernet::ETHERTYPE_IPV4);
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not ipv4")
        };
        let h = ip.header();
        assert_eq!(f[l3 + ipv4::VER_IHL], ipv4::VER_IHL_NO_OPTIONS);
        assert_eq!(f[at(l3, ipv4::SRC_ADDR)], h.source());
        assert_eq!(f[at(l3, ipv4::DST_ADDR)], h.destination());
        assert_eq!(f[l3 + ipv4::TTL], 63);
        assert_eq!(f[l3 + ipv4::PROTOCOL], h.protocol().0);
        assert_eq!(get16(&f, l3, ipv4::TOTAL_LEN), h.total_len());
        assert_eq!(get16(&f, l3, ipv4::CHECKSUM), h.header_checksum());
        assert_eq!(
            get16(&f, l3, ipv4::FLG_OFF) & ipv4::FLAG_DF != 0,
            h.dont_fragment()
        );
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not tcp")
        };
        assert_eq!(get16(&f, l4, tcp::SRC_PORT), t.source_port());
        assert_eq!(get16(&f, l4, tcp::DST_PORT), t.destination_port());
        assert_eq!(get16(&f, l4, tcp::CHECKSUM), t.checksum());
        assert_eq!(get16(&f, l4, tcp::WINDOW), t.window_size());
        assert_eq!(f[at(l4, tcp::SEQ_NUM)], t.sequence_number().to_be_bytes());
        assert_eq!(f[l4 + tcp::DATA_OFF] >> 4, t.data_offset());
        assert_eq!(f[l4 + tcp::FLAGS], tcp::flags::SYN);

        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53)
            .write(&mut f, &[0; 5])
            .unwrap();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Udp(u)) = &p.transport else {
            panic!("not udp")
        };
        assert_eq!(get16(&f, l4, udp::SRC_PORT), 1234);
        assert_eq!(get16(&f, l4, udp::DST_PORT), 53);
        assert_eq!(get16(&f, l4, udp::LENGTH), u.length());
        assert_eq!(usize::from(u.length()), udp::HEADER_LEN + 5);
        assert_eq!(get16(&f, l4, udp::CHECKSUM), u.checksum());

        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6([0xfd; 16], [0xfe; 16], 17)
            .icmpv6_echo_request(0x1234, 9)
            .write(&mut f, &[7; 4])
            .unwrap();
        let l4 = l3 + ipv6::HEADER_LEN;
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not ipv6")
        };
        let h = ip.header();
        assert_eq!(get16(&f, 0, ethernet::ETHERTYPE), ethernet::ETHERTYPE_IPV6);
        assert_eq!(f[at(l3, ipv6::SRC_ADDR)], h.source());
        assert_eq!(f[at(l3, ipv6::DST_ADDR)], h.destination());
        assert_eq!(get16(&f, l3, ipv6::PAYLOAD_LEN), h.payload_length());
        assert_eq!(f[l3 + ipv6::NEXT_HEADER], h.next_header().0);
        assert_eq!(f[l3 + ipv6::HOP_LIMIT], 17);
        let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
            panic!("not icmpv6")
        };
        assert_eq!(f[l4 + icmpv6::TYPE], icmpv6::ECHO_REQUEST);
        assert_eq!(get16(&f, l4, icmpv6::CHECKSUM), i.checksum());
        assert_eq!(get16(&f, l4, icmpv6::ECHO_IDENT), 0x1234);
        assert_eq!(get16(&f, l4, icmpv6::ECHO_SEQ), 9);
    }
}
