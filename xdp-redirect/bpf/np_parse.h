/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Frame parsing shared by the XDP program (redirect.c) and the TC fast path (fastpath.c):
 * the map key layouts both read, and the header walk that fills `struct np_pkt` from a linear
 * buffer [l3, end) (an xdp_md's data, or the linear part of an skb). Both programs take the
 * same decision of "ours or the kernel's" from it; see redirect.c's header for the rules.
 */
#ifndef NP_PARSE_H
#define NP_PARSE_H

#include "np_bpf.h"

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

struct np_addr {
	__u8 addr[16];
};

struct np_nodeport {
	__u8 addr[16];
	__be16 port; /* network order */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP */
	__u8 pad;    /* always 0 */
};

/* The source ports a `snat_addrs` address gives flows it source-NATs (inclusive, host order). */
struct np_port_range {
	__u16 first;
	__u16 last;
};

/* A fragmented datagram: IPv4-mapped addresses for IPv4; proto 0 for IPv6, whose fragments
 * are identified by (src, dst, id) alone. */
struct np_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;   /* as read from the header (IPv4: 16 bits, zero-extended) */
	__u8 proto;
	__u8 pad[3]; /* always 0 */
};

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* What classification needs from a frame. */
struct np_pkt {
	struct np_addr dst; /* IPv4-mapped for IPv4 */
	__be16 dport;       /* 0 when unknown (non-first fragment, no TCP/UDP/SCTP) */
	__u8 proto;         /* L4 protocol, 0 when unknown */
	__u8 is_v6;
	__u8 is_nd;
	__u8 is_mcast;      /* multicast, broadcast or link-local destination */
	__u8 frag;          /* enum np_frag */
	struct np_frag_key fkey; /* set when frag != NP_FRAG_NONE */
	/* An ICMP/ICMPv6 error quoting a TCP/UDP packet: the quoted packet's source (the address
	 * and port the node sent it from), IPv4-mapped for IPv4. */
	__u8 icmp_err;
	__u8 inner_proto;
	__be16 inner_sport;
	struct np_addr inner_src;
};

enum np_frag { NP_FRAG_NONE = 0, NP_FRAG_FIRST = 1, NP_FRAG_LATER = 2 };

enum parse_result { PARSE_IP, PARSE_NOT_IP, PARSE_MALFORMED };

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Writes the IPv4-mapped IPv6 form ::ffff:a.b.c.d of `v4` into `out` (zeroed by the caller). */
static __always_inline void v4_mapped(__u8 *out, const __u8 *v4)
{
	out[10] = 0xff;
	out[11] = 0xff;
	out[12] = v4[0];
	out[13] = v4[1];
	out[14] = v4[2];
	out[15] = v4[3];
}

/* The packet an ICMP error quotes (at `q`, after the 8-byte ICMP header), when it is an
 * unfragmented TCP/UDP packet whose ports are quoted: its source goes into `pkt`. IPv6: a quote
 * with extension headers is not looked into (the node sends none). */
static __always_inline void parse_quoted4(void *q, void *end, struct np_pkt *pkt)
{
	struct iphdr *ip = q;
	__u32 ihl;

	if ((void *)(ip + 1) > end)
		return;
	ihl = ip->ihl;
	if (ip->version != 4 || ihl < 5 || (ip->frag_off & np_htons(0x1fff)))
		return;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return;
	__be16 *ports = q + ihl * 4;

	if ((void *)(ports + 1) > end)
		return;
	v4_mapped(pkt->inner_src.addr, (__u8 *)&ip->saddr);
	pkt->inner_sport = ports[0];
	pkt->inner_proto = ip->protocol;
	pkt->icmp_err = 1;
}

static __always_inline void parse_quoted6(void *q, void *end, struct np_pkt *pkt)
{
	struct ipv6hdr *ip6 = q;

	if ((void *)(ip6 + 1) > end)
		return;
	if (ip6->version != 6 || (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP))
		return;
	__be16 *ports = (void *)(ip6 + 1);

	if ((void *)(ports + 1) > end)
		return;
	__builtin_memcpy(pkt->inner_src.addr, ip6->saddr.s6_addr, 16);
	pkt->inner_sport = ports[0];
	pkt->inner_proto = ip6->nexthdr;
	pkt->icmp_err = 1;
}

static __always_inline enum parse_result parse_l4(void *l4, void *end, struct np_pkt *pkt)
{
	if (pkt->proto == IPPROTO_ICMPV6) {
		__u8 *type = l4;

		if ((void *)(type + 1) > end)
			return PARSE_MALFORMED;
		pkt->is_nd = *type >= 133 && *type <= 137;
		/* Destination unreachable, packet too big, time exceeded, parameter problem. */
		if (*type >= 1 && *type <= 4 && pkt->frag == NP_FRAG_NONE)
			parse_quoted6(l4 + 8, end, pkt);
	} else if (pkt->proto == IPPROTO_ICMP) {
		__u8 *type = l4;

		/* Destination unreachable (incl. fragmentation needed), time exceeded, parameter
		 * problem. A short ICMP header is the kernel's to judge, as before. */
		if ((void *)(type + 1) <= end && (*type == 3 || *type == 11 || *type == 12) &&
		    pkt->frag == NP_FRAG_NONE)
			parse_quoted4(l4 + 8, end, pkt);
	} else if (has_ports(pkt->proto)) {
		__be16 *ports = l4; /* source port, destination port */

		if ((void *)(ports + 2) > end)
			return PARSE_MALFORMED;
		pkt->dport = ports[1];
	}
	return PARSE_IP;
}

static __always_inline enum parse_result parse_ipv4(void *l3, void *end, struct np_pkt *pkt)
{
	struct iphdr *ip = l3;
	__u32 ihl;

	if ((void *)(ip + 1) > end)
		return PARSE_MALFORMED;
	ihl = ip->ihl;
	if (ip->version != 4 || ihl < 5)
		return PARSE_MALFORMED;

	__u8 *d = (__u8 *)&ip->daddr;
	v4_mapped(pkt->dst.addr, d);
	/* 224.0.0.0/4 multicast, 255.255.255.255 broadcast, 169.254.0.0/16 link-local */
	pkt->is_mcast = (d[0] & 0xf0) == 0xe0 || ip->daddr == 0xffffffff ||
			(d[0] == 169 && d[1] == 254);

	/* MF or a fragment offset: a fragment. Only the first (offset 0) has the L4 header. */
	if (ip->frag_off & np_htons(0x3fff)) {
		v4_mapped(pkt->fkey.src, (__u8 *)&ip->saddr);
		__builtin_memcpy(pkt->fkey.dst, pkt->dst.addr, 16);
		pkt->fkey.id = ip->id;
		pkt->fkey.proto = ip->protocol;
		if (ip->frag_off & np_htons(0x1fff)) {
			pkt->frag = NP_FRAG_LATER;
			return PARSE_IP;
		}
		pkt->frag = NP_FRAG_FIRST;
	}
	pkt->proto = ip->protocol;
	return parse_l4(l3 + ihl * 4, end, pkt);
}

#define NP_MAX_EXT_HDRS 4

static __always_inline enum parse_result parse_ipv6(void *l3, void *end, struct np_pkt *pkt)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	pkt->is_v6 = 1;
	__builtin_memcpy(pkt->dst.addr, ip6->daddr.s6_addr, 16);
	/* ff00::/8 multicast, fe80::/10 link-local */
	pkt->is_mcast = ip6->daddr.s6_addr[0] == 0xff ||
			(ip6->daddr.s6_addr[0] == 0xfe && (ip6->daddr.s6_addr[1] & 0xc0) == 0x80);

	__u8 next = ip6->nexthdr;
	void *cur = ip6 + 1;

#pragma unroll
	for (int i = 0; i < NP_MAX_EXT_HDRS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			__u8 *ext = cur; /* next header, length in 8-octet units minus 1 */

			if ((void *)(ext + 2) > end)
				return PARSE_MALFORMED;
			next = ext[0];
			cur += ((__u32)ext[1] + 1) * 8;
		} else if (next == IPPROTO_FRAGMENT) {
			__u8 *frag = cur; /* next, reserved, offset+flags (2), id (4) */

			if ((void *)(frag + 8) > end)
				return PARSE_MALFORMED;
			next = frag[0];
			__builtin_memcpy(pkt->fkey.src, ip6->saddr.s6_addr, 16);
			__builtin_memcpy(pkt->fkey.dst, ip6->daddr.s6_addr, 16);
			__builtin_memcpy(&pkt->fkey.id, frag + 4, 4);
			if (*(__be16 *)(frag + 2) & np_htons(0xfff8)) {
				pkt->frag = NP_FRAG_LATER;
				return PARSE_IP; /* non-first fragment: no L4 header */
			}
			/* An atomic fragment (offset 0, no M flag) is a whole datagram. */
			if (frag[3] & 1)
				pkt->frag = NP_FRAG_FIRST;
			cur += 8;
		} else {
			break;
		}
	}
	pkt->proto = next;
	return parse_l4(cur, end, pkt);
}

#endif /* NP_PARSE_H */
