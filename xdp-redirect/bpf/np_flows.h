/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The flow cache shared by the TC fast path (fastpath.c) and the worker (src/flows.rs, whose
 * `#[repr(C)]` structs mirror these; a unit test pins sizes and offsets of both).
 *
 * One entry per flow *direction* that entered on a pod interface and that the worker has
 * decided (established, plain forward). The worker writes the key and the action (counters 0);
 * the program only ever writes `last_seen_ns`, `packets` and `bytes` of an entry it hit.
 */
#ifndef NP_FLOWS_H
#define NP_FLOWS_H

#include <linux/types.h>

/* The packet as it arrives on the ingress interface. 44 bytes. */
struct np_flow_key {
	__u32 ifindex; /* ingress interface (host side of a pod veth) */
	__u8 proto;    /* IPPROTO_TCP (6) / IPPROTO_UDP (17) */
	__u8 family;   /* 4 / 6 */
	__u16 pad;     /* always 0 */
	__u8 src[16];  /* IPv4: the 4 address bytes first, the other 12 zero */
	__u8 dst[16];
	__be16 sport;  /* network order, as on the wire */
	__be16 dport;
};

/* np_flow_action.flags */
#define NP_FLOW_PEER 1u     /* bpf_redirect_peer(egress): straight into a pod's namespace */
#define NP_FLOW_DEC_TTL 2u  /* decrement TTL / hop limit (the packet is routed) */
#define NP_FLOW_NAT_SRC 4u  /* rewrite source address and port to src/sport */
#define NP_FLOW_NAT_DST 8u  /* rewrite destination address and port to dst/dport */

/* What to do with it. 88 bytes. */
struct np_flow_action {
	__u8 src[16];          /* after NAT (IPv4: the 4 bytes first) */
	__u8 dst[16];
	__be16 sport;          /* after NAT, network order */
	__be16 dport;
	__u32 egress_ifindex;
	__u8 dmac[6];          /* the Ethernet header as written: destination, then source */
	__u8 smac[6];
	__u32 flags;           /* NP_FLOW_* */
	__u32 generation;      /* the worker's table generation it was decided under */
	__u32 pad;             /* always 0 */
	__u64 last_seen_ns;    /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last hit: program */
	__u64 packets;         /* segments forwarded (a GSO skb counts its segments): program */
	__u64 bytes;           /* skb bytes forwarded, Ethernet header included: program */
};

/* The slow-path MAC: 02:6e:70 and the low 24 bits of the ingress ifindex, big-endian. */
#define NP_SLOW_MAC0 0x02
#define NP_SLOW_MAC1 0x6e
#define NP_SLOW_MAC2 0x70

/* The layout src/flows.rs mirrors (its unit test asserts the same numbers). */
_Static_assert(sizeof(struct np_flow_key) == 44, "np_flow_key size");
_Static_assert(__builtin_offsetof(struct np_flow_key, src) == 8, "np_flow_key.src");
_Static_assert(__builtin_offsetof(struct np_flow_key, dst) == 24, "np_flow_key.dst");
_Static_assert(__builtin_offsetof(struct np_flow_key, sport) == 40, "np_flow_key.sport");
_Static_assert(__builtin_offsetof(struct np_flow_key, dport) == 42, "np_flow_key.dport");
_Static_assert(sizeof(struct np_flow_action) == 88, "np_flow_action size");
_Static_assert(__builtin_offsetof(struct np_flow_action, sport) == 32, "np_flow_action.sport");
_Static_assert(__builtin_offsetof(struct np_flow_action, egress_ifindex) == 36, "egress_ifindex");
_Static_assert(__builtin_offsetof(struct np_flow_action, dmac) == 40, "np_flow_action.dmac");
_Static_assert(__builtin_offsetof(struct np_flow_action, smac) == 46, "np_flow_action.smac");
_Static_assert(__builtin_offsetof(struct np_flow_action, flags) == 52, "np_flow_action.flags");
_Static_assert(__builtin_offsetof(struct np_flow_action, generation) == 56, "generation");
_Static_assert(__builtin_offsetof(struct np_flow_action, last_seen_ns) == 64, "last_seen_ns");
_Static_assert(__builtin_offsetof(struct np_flow_action, packets) == 72, "packets");
_Static_assert(__builtin_offsetof(struct np_flow_action, bytes) == 80, "bytes");

#endif /* NP_FLOWS_H */
