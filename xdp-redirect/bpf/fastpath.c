// SPDX-License-Identifier: Apache-2.0
/*
 * nodeplane's TC fast path (io.afxdp.fast_path: tc): a kernel flow cache in front of the worker.
 *
 * Attached to the TC ingress (tcx, direct action) of the host side of every pod veth. No XDP
 * program is attached to those interfaces in this mode, so the pods keep TSO/GSO and their
 * 64 KB skbs arrive here whole. The worker keeps every decision: it offers the flow directions
 * it has decided (established, plain forward) into `np_flows`, and this program repeats the
 * decision for later packets of those directions. Everything else that is the dataplane's goes
 * up to the worker through the slow-path veth pair.
 *
 * Decision order (first match wins); rules 1-6 are the XDP program's on a pod interface
 * (redirect.c, same maps), so "ours" means exactly what it means there:
 *   1. not IPv4/IPv6 (after at most one 802.1Q/802.1ad tag)       -> TC_ACT_OK  pass
 *   2. headers truncated or malformed                               -> TC_ACT_OK  pass
 *   3. ICMPv6 router/neighbour discovery                            -> TC_ACT_OK  pass
 *   4a. an ICMP error about a source-NATed or NodePort flow         -> ours
 *   5/5a. (dst, proto, dport) a NodePort, or a source-NAT reply      -> ours
 *       (a first fragment records its datagram in `frags`, as the XDP program does)
 *   4. multicast, broadcast, link-local destination                 -> TC_ACT_OK  pass
 *   5b. a non-first fragment of a datagram recorded in `frags`      -> ours
 *   6. dst in `host_addrs`                                          -> TC_ACT_OK  pass
 *   7. everything else                                              -> ours
 * Ours:
 *   8. untagged TCP/UDP, IPv4 without options or IPv6 without extension headers, not a
 *      fragment, no SYN/FIN/RST, and (ingress ifindex, proto, family, src, dst, sport, dport)
 *      in `np_flows` (TTL/hop limit > 1 if the entry decrements it) -> the entry's action:
 *      addresses and ports rewritten where the entry's NAT flags say and they differ, MACs
 *      written, TTL/hop limit decremented, IPv4 header checksum and L4 checksum fixed with
 *      bpf_l3/l4_csum_replace (BPF_F_PSEUDO_HDR for addresses: CHECKSUM_PARTIAL and GSO skbs
 *      stay right; a zero UDP checksum stays zero), `last_seen_ns`/`packets`/`bytes` of the
 *      entry updated, then bpf_redirect_peer(egress) (FLOW_PEER: into a pod's namespace) or
 *      bpf_redirect(egress, 0). GSO skbs stay whole.
 *      Exception, only while the slow path cannot take GSO skbs (`fp_config.slow_gso` 0): a
 *      GSO skb with FIN (not SYN/RST) of a flow in the map is forwarded so (`fast_gso_fin`),
 *      as the sender's TCP may resend the same GSO skb; the worker then sees the other
 *      direction's FIN only.
 *   9. anything else ours (a miss, SYN/FIN/RST, ICMP, fragments, IP options, VLAN tags, TTL
 *      expiring) -> the slow path: the destination MAC becomes 02:6e:70:II:II:II (the low 24
 *      bits of the ingress ifindex, src/flows.rs `slow_path_mac`) and the skb is redirected
 *      to the egress of `fp_config.slow_ifindex` (npslow0), whose peer npslow1 carries the XDP
 *      program and the workers' AF_XDP sockets. A GSO skb (more than one segment) goes there
 *      whole when `fp_config.slow_gso` says npslow0's transmit path segments it (no TSO/GSO
 *      features on npslow0, which the kernel arranges itself when npslow1 has a native XDP
 *      program: the workers then see MTU-sized segments; `slow_gso_skbs`), else it is
 *      dropped (`slow_gso_drop`; TCP resends it). No slow path configured yet: dropped
 *      (`slow_unset`).
 * Every exit is counted in `fp_counters` (enum np_fp_counter, `FastPathCounter` in
 * src/fastpath.rs).
 */
#include "np_parse.h"
#include "np_flows.h"

#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>

static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset, const void *from, __u32 len,
				   __u64 flags) = (void *)BPF_FUNC_skb_store_bytes;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
				   __u64 size) = (void *)BPF_FUNC_l3_csum_replace;
static long (*bpf_l4_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
				   __u64 flags) = (void *)BPF_FUNC_l4_csum_replace;
static __s64 (*bpf_csum_diff)(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size,
			      __wsum seed) = (void *)BPF_FUNC_csum_diff;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;
static long (*bpf_skb_pull_data)(struct __sk_buff *skb, __u32 len) = (void *)BPF_FUNC_skb_pull_data;

/* Keep in sync with `FastPathCounter` in src/fastpath.rs (a unit test compares the lists). */
enum np_fp_counter {
	NP_FP_FAST_FWD_PACKETS = 0,
	NP_FP_FAST_FWD_BYTES = 1,
	NP_FP_FAST_GSO_SKBS = 2,
	NP_FP_SLOW_PATH = 3,
	NP_FP_SLOW_GSO_DROP = 4,
	NP_FP_PASS = 5,
	NP_FP_REDIRECT_ERROR = 6,
	NP_FP_SLOW_UNSET = 7,
	NP_FP_FAST_GSO_FIN = 8,
	NP_FP_REWRITE_ERROR = 9,
	NP_FP_SLOW_GSO_SKBS = 10,
	NP_FP_COUNTER_MAX = 11,
};

#define NP_FRAG_TTL_NS (30ULL * 1000000000ULL)

/* Runtime settings, written by the loader (one entry, key 0). */
struct np_fp_config {
	__u32 slow_ifindex; /* npslow0: slow-path frames leave through its egress; 0: none yet */
	__u32 slow_gso;     /* 1: npslow0's transmit path segments GSO skbs (see rule 9) */
};

/* The flow cache; max_entries is set by the loader (io.afxdp.fast_path_flows). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct np_flow_key);
	__type(value, struct np_flow_action);
} np_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct np_fp_config);
} fp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NP_FP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fp_counters SEC(".maps");

/* The XDP program's maps (redirect.c), shared: the loader opens them from the XDP loader's
 * pins (FastPath::load checks that they exist, so these shapes are never created on their
 * own; their sizes here do not matter). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct np_addr);
	__type(value, __u32);
} host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct np_nodeport);
	__type(value, __u32);
} nodeports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct np_addr);
	__type(value, struct np_port_range);
} snat_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, struct np_frag_key);
	__type(value, __u64);
} frags SEC(".maps");

static __always_inline void count(__u32 reason, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&fp_counters, &reason);

	if (v)
		*v += n; /* per-CPU slot */
}

static __always_inline int pass(void)
{
	count(NP_FP_PASS, 1);
	return TC_ACT_OK;
}

/* Rules 1-7: whether the frame is the dataplane's (1) or the kernel's (0). */
static __always_inline int is_ours(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct np_pkt pkt = {};
	enum parse_result res;

	if ((void *)(eth + 1) > end)
		return 0;

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;

	if (proto == np_htons(ETH_P_8021Q) || proto == np_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > end)
			return 0;
		proto = vh->proto;
		l3 = vh + 1;
	}
	if (proto == np_htons(ETH_P_IP))
		res = parse_ipv4(l3, end, &pkt);
	else if (proto == np_htons(ETH_P_IPV6))
		res = parse_ipv6(l3, end, &pkt);
	else
		res = PARSE_NOT_IP;
	if (res != PARSE_IP || pkt.is_nd)
		return 0;
	if (pkt.icmp_err) {
		struct np_nodeport np = { .port = pkt.inner_sport, .proto = pkt.inner_proto };
		struct np_port_range *r = bpf_map_lookup_elem(&snat_addrs, &pkt.inner_src);
		__u16 port = np_ntohs(pkt.inner_sport);

		__builtin_memcpy(np.addr, pkt.inner_src.addr, 16);
		if (r && port >= r->first && port <= r->last)
			return 1;
		if (bpf_map_lookup_elem(&nodeports, &np))
			return 1;
	}
	if (pkt.dport) {
		struct np_nodeport np = { .port = pkt.dport, .proto = pkt.proto };
		int hit = 0;

		__builtin_memcpy(np.addr, pkt.dst.addr, 16);
		if (bpf_map_lookup_elem(&nodeports, &np)) {
			hit = 1;
		} else if (pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP) {
			struct np_port_range *r = bpf_map_lookup_elem(&snat_addrs, &pkt.dst);
			__u16 port = np_ntohs(pkt.dport);

			hit = r && port >= r->first && port <= r->last;
		}
		if (hit) {
			if (pkt.frag == NP_FRAG_FIRST) {
				__u64 now = bpf_ktime_get_ns();

				bpf_map_update_elem(&frags, &pkt.fkey, &now, BPF_ANY);
			}
			return 1;
		}
	}
	if (pkt.is_mcast)
		return 0;
	if (pkt.frag == NP_FRAG_LATER) {
		__u64 *first = bpf_map_lookup_elem(&frags, &pkt.fkey);

		if (first && bpf_ktime_get_ns() - *first < NP_FRAG_TTL_NS)
			return 1;
	}
	if (bpf_map_lookup_elem(&host_addrs, &pkt.dst))
		return 0;
	return 1;
}

/* What the program reads of the skb's context, read once at the start: clang would otherwise
 * fold the loads into offsets from a moved context pointer, which the verifier refuses. */
struct np_skb_meta {
	__u32 ifindex;
	__u32 len;
	__u32 segs; /* gso_segs, at least 1 */
};

/* Whether the slow path takes GSO skbs (fp_config.slow_gso). */
static __always_inline int slow_gso_ok(void)
{
	__u32 zero = 0;
	struct np_fp_config *cfg = bpf_map_lookup_elem(&fp_config, &zero);

	return cfg && cfg->slow_gso;
}

/* Rule 9. */
static __always_inline int slow_path(struct __sk_buff *skb, const struct np_skb_meta *m)
{
	__u32 zero = 0;
	struct np_fp_config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
	__u32 slow = cfg ? cfg->slow_ifindex : 0;

	if (!slow) {
		count(NP_FP_SLOW_UNSET, 1);
		return TC_ACT_SHOT;
	}
	if (m->segs > 1) {
		if (!cfg->slow_gso) {
			count(NP_FP_SLOW_GSO_DROP, 1);
			return TC_ACT_SHOT;
		}
		count(NP_FP_SLOW_GSO_SKBS, 1);
	}
	__u32 ifindex = m->ifindex;
	__u8 mac[6] = { NP_SLOW_MAC0, NP_SLOW_MAC1, NP_SLOW_MAC2, (ifindex >> 16) & 0xff,
			(ifindex >> 8) & 0xff, ifindex & 0xff };

	if (bpf_skb_store_bytes(skb, 0, mac, 6, 0) < 0) {
		count(NP_FP_REWRITE_ERROR, 1);
		return TC_ACT_SHOT;
	}
	long r = bpf_redirect(slow, 0);

	count(r == TC_ACT_REDIRECT ? NP_FP_SLOW_PATH : NP_FP_REDIRECT_ERROR, 1);
	return r;
}

#define L3_OFF ETH_HLEN
#define IP4_CSUM_OFF (L3_OFF + __builtin_offsetof(struct iphdr, check))
#define IP4_SADDR_OFF (L3_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP4_DADDR_OFF (L3_OFF + __builtin_offsetof(struct iphdr, daddr))
#define IP4_TTL_OFF (L3_OFF + __builtin_offsetof(struct iphdr, ttl))
#define IP6_HOP_OFF (L3_OFF + __builtin_offsetof(struct ipv6hdr, hop_limit))
#define IP6_SADDR_OFF (L3_OFF + __builtin_offsetof(struct ipv6hdr, saddr))
#define IP6_DADDR_OFF (L3_OFF + __builtin_offsetof(struct ipv6hdr, daddr))
#define L4_OFF4 (L3_OFF + sizeof(struct iphdr))
#define L4_OFF6 (L3_OFF + sizeof(struct ipv6hdr))

/* A rewrite helper failed: the skb may be half-rewritten, so it is dropped. */
static __always_inline int rewrite_error(void)
{
	count(NP_FP_REWRITE_ERROR, 1);
	return TC_ACT_SHOT;
}

/* Rule 8's rewrite of an IPv4 packet; 0 on success. */
static __always_inline int rewrite4(struct __sk_buff *skb, struct np_flow_key *k,
				    struct np_flow_action *a, __u8 ttl, __u32 csum_off, __u64 l4f)
{
	if (a->flags & NP_FLOW_DEC_TTL) {
		/* The IP checksum covers the 16-bit word ttl|protocol, as the bytes lie. */
		__u8 old_tp[2] = { ttl, k->proto }, new_tp[2] = { ttl - 1, k->proto };
		__u16 old_w, new_w;

		__builtin_memcpy(&old_w, old_tp, 2);
		__builtin_memcpy(&new_w, new_tp, 2);
		if (bpf_skb_store_bytes(skb, IP4_TTL_OFF, new_tp, 1, 0) < 0 ||
		    bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old_w, new_w, 2) < 0)
			return -1;
	}
	__be32 from, to;

	if (a->flags & NP_FLOW_NAT_DST) {
		__builtin_memcpy(&from, k->dst, 4);
		__builtin_memcpy(&to, a->dst, 4);
		if (from != to &&
		    (bpf_l4_csum_replace(skb, csum_off, from, to, l4f | BPF_F_PSEUDO_HDR | 4) < 0 ||
		     bpf_l3_csum_replace(skb, IP4_CSUM_OFF, from, to, 4) < 0 ||
		     bpf_skb_store_bytes(skb, IP4_DADDR_OFF, &to, 4, 0) < 0))
			return -1;
		if (k->dport != a->dport &&
		    (bpf_l4_csum_replace(skb, csum_off, k->dport, a->dport, l4f | 2) < 0 ||
		     bpf_skb_store_bytes(skb, L4_OFF4 + 2, &a->dport, 2, 0) < 0))
			return -1;
	}
	if (a->flags & NP_FLOW_NAT_SRC) {
		__builtin_memcpy(&from, k->src, 4);
		__builtin_memcpy(&to, a->src, 4);
		if (from != to &&
		    (bpf_l4_csum_replace(skb, csum_off, from, to, l4f | BPF_F_PSEUDO_HDR | 4) < 0 ||
		     bpf_l3_csum_replace(skb, IP4_CSUM_OFF, from, to, 4) < 0 ||
		     bpf_skb_store_bytes(skb, IP4_SADDR_OFF, &to, 4, 0) < 0))
			return -1;
		if (k->sport != a->sport &&
		    (bpf_l4_csum_replace(skb, csum_off, k->sport, a->sport, l4f | 2) < 0 ||
		     bpf_skb_store_bytes(skb, L4_OFF4, &a->sport, 2, 0) < 0))
			return -1;
	}
	return 0;
}

/* Whether two 16-byte addresses differ. */
static __always_inline int addr_ne(const __u8 *x, const __u8 *y)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, x, 8);
	__builtin_memcpy(&a1, x + 8, 8);
	__builtin_memcpy(&b0, y, 8);
	__builtin_memcpy(&b1, y + 8, 8);
	return a0 != b0 || a1 != b1;
}

/* Replaces the 16-byte address at `off` by `to` (from `from`), with the L4 checksum's
 * pseudo-header part; 0 on success. */
static __always_inline int replace6(struct __sk_buff *skb, __u32 off, const __u8 *from,
				    const __u8 *to, __u32 csum_off, __u64 l4f)
{
	__be32 f[4], t[4];

	__builtin_memcpy(f, from, 16);
	__builtin_memcpy(t, to, 16);
	__s64 diff = bpf_csum_diff(f, 16, t, 16, 0);

	if (diff < 0)
		return -1;
	/* size 0: `to` is a checksum difference */
	if (bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff, l4f | BPF_F_PSEUDO_HDR) < 0 ||
	    bpf_skb_store_bytes(skb, off, t, 16, 0) < 0)
		return -1;
	return 0;
}

/* Rule 8's rewrite of an IPv6 packet (no IP header checksum); 0 on success. */
static __always_inline int rewrite6(struct __sk_buff *skb, struct np_flow_key *k,
				    struct np_flow_action *a, __u8 hop, __u32 csum_off, __u64 l4f)
{
	if (a->flags & NP_FLOW_DEC_TTL) {
		__u8 h = hop - 1;

		if (bpf_skb_store_bytes(skb, IP6_HOP_OFF, &h, 1, 0) < 0)
			return -1;
	}
	if (a->flags & NP_FLOW_NAT_DST) {
		if (addr_ne(k->dst, a->dst) &&
		    replace6(skb, IP6_DADDR_OFF, k->dst, a->dst, csum_off, l4f) < 0)
			return -1;
		if (k->dport != a->dport &&
		    (bpf_l4_csum_replace(skb, csum_off, k->dport, a->dport, l4f | 2) < 0 ||
		     bpf_skb_store_bytes(skb, L4_OFF6 + 2, &a->dport, 2, 0) < 0))
			return -1;
	}
	if (a->flags & NP_FLOW_NAT_SRC) {
		if (addr_ne(k->src, a->src) &&
		    replace6(skb, IP6_SADDR_OFF, k->src, a->src, csum_off, l4f) < 0)
			return -1;
		if (k->sport != a->sport &&
		    (bpf_l4_csum_replace(skb, csum_off, k->sport, a->sport, l4f | 2) < 0 ||
		     bpf_skb_store_bytes(skb, L4_OFF6, &a->sport, 2, 0) < 0))
			return -1;
	}
	return 0;
}

/* What must be in the linear part: Ethernet, IPv4 or IPv6 and the TCP header without options
 * (the fast path's fields; a local TCP stack puts its headers there, payload in fragments). */
#define NP_NEED_V4 (ETH_HLEN + 20 + 20)
#define NP_NEED_V6 (ETH_HLEN + 40 + 20)
/* When it is not: what is pulled in (ICMP errors' quotes too), or all of a shorter skb. */
#define NP_PULL_LEN 128

SEC("classifier")
int np_fastpath(struct __sk_buff *skb)
{
	struct np_skb_meta m = { .ifindex = skb->ifindex, .len = skb->len, .segs = skb->gso_segs };
	__u32 need = skb->protocol == np_htons(ETH_P_IPV6) ? NP_NEED_V6 : NP_NEED_V4;

	asm volatile("" : "+r"(m.ifindex), "+r"(m.len), "+r"(m.segs), "+r"(need));
	if (m.segs == 0)
		m.segs = 1;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	/* Headers beyond the linear part (rare: a local stack puts them there) are pulled in;
	 * payload is not (a GSO skb's linear part is its headers). */
	if (need > m.len)
		need = m.len;
	if ((__u32)(end - data) < need) {
		__u32 want = m.len < NP_PULL_LEN ? m.len : NP_PULL_LEN;

		if (bpf_skb_pull_data(skb, want) < 0)
			return pass();
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (!is_ours(data, end))
		return pass();

	/* Rule 8: a flow the worker offered? Fixed layouts only: untagged, no options. */
	struct ethhdr *eth = data;
	struct np_flow_key k = { .ifindex = m.ifindex };
	__u8 ttl, tcp_flags = 0;
	__u32 l4_off;

	if ((void *)(eth + 1) > end)
		return slow_path(skb, &m);
	if (eth->h_proto == np_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & np_htons(0x3fff)))
			return slow_path(skb, &m);
		k.family = 4;
		k.proto = ip->protocol;
		__builtin_memcpy(k.src, &ip->saddr, 4);
		__builtin_memcpy(k.dst, &ip->daddr, 4);
		ttl = ip->ttl;
		l4_off = L4_OFF4;
	} else if (eth->h_proto == np_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return slow_path(skb, &m);
		k.family = 6;
		k.proto = ip6->nexthdr;
		__builtin_memcpy(k.src, ip6->saddr.s6_addr, 16);
		__builtin_memcpy(k.dst, ip6->daddr.s6_addr, 16);
		ttl = ip6->hop_limit;
		l4_off = L4_OFF6;
	} else {
		return slow_path(skb, &m);
	}
	__u32 csum_off;
	__u64 l4f;

	if (k.proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;

		if ((void *)(th + 1) > end)
			return slow_path(skb, &m);
		k.sport = th->source;
		k.dport = th->dest;
		tcp_flags = ((__u8 *)th)[13];
		csum_off = l4_off + __builtin_offsetof(struct tcphdr, check);
		l4f = 0;
	} else if (k.proto == IPPROTO_UDP) {
		struct udphdr *uh = data + l4_off;

		if ((void *)(uh + 1) > end)
			return slow_path(skb, &m);
		k.sport = uh->source;
		k.dport = uh->dest;
		csum_off = l4_off + __builtin_offsetof(struct udphdr, check);
		l4f = BPF_F_MARK_MANGLED_0;
	} else {
		return slow_path(skb, &m);
	}
	/* TCP flags byte: FIN 0x01, SYN 0x02, RST 0x04 */
	__u32 segs = m.segs;
	int gso_fin = 0;

	if (tcp_flags & 0x07) {
		if ((tcp_flags & 0x06) || segs == 1 || slow_gso_ok())
			return slow_path(skb, &m);
		gso_fin = 1; /* see the header */
	}

	struct np_flow_action *a = bpf_map_lookup_elem(&np_flows, &k);

	if (!a || ((a->flags & NP_FLOW_DEC_TTL) && ttl <= 1))
		return slow_path(skb, &m);

	__u32 egress = a->egress_ifindex, flags = a->flags;
	__u32 len = m.len;
	int err = k.family == 4 ? rewrite4(skb, &k, a, ttl, csum_off, l4f)
				: rewrite6(skb, &k, a, ttl, csum_off, l4f);

	/* The MACs last (bpf_skb_store_bytes may move the data: nothing is read from it after). */
	if (err < 0 || bpf_skb_store_bytes(skb, 0, a->dmac, 12, 0) < 0)
		return rewrite_error();

	a->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&a->packets, segs);
	__sync_fetch_and_add(&a->bytes, len);
	count(NP_FP_FAST_FWD_PACKETS, segs);
	count(NP_FP_FAST_FWD_BYTES, len);
	if (segs > 1)
		count(NP_FP_FAST_GSO_SKBS, 1);
	if (gso_fin)
		count(NP_FP_FAST_GSO_FIN, 1);

	long r = (flags & NP_FLOW_PEER) ? bpf_redirect_peer(egress, 0) : bpf_redirect(egress, 0);

	if (r != TC_ACT_REDIRECT)
		count(NP_FP_REDIRECT_ERROR, 1);
	return r;
}

char _license[] SEC("license") = "GPL";
