/* SPDX-License-Identifier: Apache-2.0 */
/*
 * EXPERIMENT, not a product: the ceiling of a kernel fast path for decided flows (issue 10,
 * bench/e2e/throughput.sh dataplanes `tc-ceiling` and `tc-ceiling-xdp`).
 *
 * A TC ingress program (clsact, direct action) on the node's host-side pod veths and its
 * uplink that forwards the benchmark's IPv4 TCP/UDP traffic itself, as Cilium's datapath does
 * once a flow is known, keeping GSO skbs whole:
 *   - DNAT: (daddr, dport, proto) found in `svc` (ClusterIP or NodePort -> backend): the
 *     destination is rewritten, and the reply's 5-tuple is remembered in `rev` (LRU hash);
 *   - reverse NAT: the packet's 5-tuple found in `rev` (a backend's reply): the source becomes
 *     the service address and port the client used;
 *   - then the (new) destination address is looked up in `route` (pod IP or router IP ->
 *     ifindex of the node-side interface, MACs, peer or egress); the MACs are rewritten, the
 *     TTL decremented, the IP and L4 checksums fixed with bpf_l3_csum_replace /
 *     bpf_l4_csum_replace (BPF_F_PSEUDO_HDR for addresses, so CHECKSUM_PARTIAL and GSO skbs
 *     stay correct), and the skb leaves with bpf_redirect_peer (a pod: straight into its
 *     namespace) or bpf_redirect (the uplink: its egress).
 * Anything else (ARP, ICMP, no route, IP options, fragments) goes to the kernel (TC_ACT_OK).
 * No policy is evaluated, no conntrack state is kept beyond `rev`, new connections never
 * leave the kernel: an upper bound for what such a fast path could do, not a design.
 *
 * Needs clang -target bpf and the kernel UAPI headers only; maps are BTF-defined (bpftool
 * loads and pins them).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset, const void *from, __u32 len,
				   __u64 flags) = (void *)BPF_FUNC_skb_store_bytes;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
				   __u64 size) = (void *)BPF_FUNC_l3_csum_replace;
static long (*bpf_l4_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to,
				   __u64 flags) = (void *)BPF_FUNC_l4_csum_replace;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;
static long (*bpf_skb_pull_data)(struct __sk_buff *skb, __u32 len) = (void *)BPF_FUNC_skb_pull_data;

/* service address:port/proto -> backend address:port (network order) */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};
struct nat_val {
	__be32 addr;
	__be16 port;
	__u16 pad;
};
/* a reply's 5-tuple (backend -> client) -> the service address:port the client used */
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};
#define ROUTE_PEER 1 /* bpf_redirect_peer into the veth's namespace; else bpf_redirect (egress) */
struct route_val {
	__u32 ifindex;
	__u8 dmac[ETH_ALEN]; /* the next hop's MAC, then ours: the Ethernet header as written */
	__u8 smac[ETH_ALEN];
	__u32 flags;
};

/* Hit counters, per CPU: what the program did with each skb. */
enum {
	C_DNAT,      /* service matched: DNAT and forwarded */
	C_REVNAT,    /* reply matched: reverse NAT and forwarded */
	C_ROUTED,    /* no NAT, destination in `route`: forwarded */
	C_PASS,      /* handed to the kernel (not ours) */
	C_GSO,       /* forwarded skbs that were GSO (more than one segment) */
	C_GSO_SEGS,  /* segments in those skbs */
	C_BYTES,     /* bytes forwarded (skb->len) */
	C_REDIR_ERR, /* the redirect helper refused (kernel dropped) */
	C_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct svc_key);
	__type(value, struct nat_val);
} svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct flow_key);
	__type(value, struct nat_val);
} rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, struct route_val);
} route SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static inline __attribute__((always_inline)) void count(__u32 i, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&hits, &i);
	if (c)
		*c += n;
}

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (IP_OFF + offsetof(struct iphdr, daddr))
#define IP_TTL_OFF (IP_OFF + offsetof(struct iphdr, ttl))
#define L4_OFF (IP_OFF + sizeof(struct iphdr))

static inline __attribute__((always_inline)) int pass(void)
{
	count(C_PASS, 1);
	return TC_ACT_OK;
}

SEC("tc")
int tc_ceiling(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	/* Ethernet, IPv4 without options and the ports must be in the linear part (a local
	 * TCP/UDP stack puts them there; trafgen's AF_PACKET ring does not: pull them once). */
	if (data + L4_OFF + 4 > end) {
		if (skb->len < L4_OFF + 4 || bpf_skb_pull_data(skb, L4_OFF + 4) < 0)
			return pass();
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + L4_OFF + 4 > end)
			return pass();
	}
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	if (eth->h_proto != __constant_htons(ETH_P_IP) || ip->ihl != 5 ||
	    (ip->frag_off & __constant_htons(0x3fff)) || ip->ttl <= 1)
		return pass();
	__u8 proto = ip->protocol;
	__u32 csum_off;
	__u64 l4flags;
	/* the checksum fields are reached through the helpers (by offset), not read here */
	if (proto == IPPROTO_TCP) {
		if (skb->len < L4_OFF + sizeof(struct tcphdr))
			return pass();
		csum_off = L4_OFF + offsetof(struct tcphdr, check);
		l4flags = 0;
	} else if (proto == IPPROTO_UDP) {
		if (skb->len < L4_OFF + sizeof(struct udphdr))
			return pass();
		csum_off = L4_OFF + offsetof(struct udphdr, check);
		l4flags = BPF_F_MARK_MANGLED_0;
	} else {
		return pass();
	}
	/* sport and dport are the first 4 bytes of both TCP and UDP headers */
	__be16 *ports = data + L4_OFF;
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__be16 sport = ports[0], dport = ports[1];
	__u8 ttl = ip->ttl;

	struct svc_key sk = { .addr = daddr, .port = dport, .proto = proto };
	struct nat_val *be = bpf_map_lookup_elem(&svc, &sk);
	struct nat_val *orig = NULL;
	__be32 new_saddr = saddr, new_daddr = daddr;
	__be16 new_sport = sport, new_dport = dport;
	if (be) {
		new_daddr = be->addr;
		new_dport = be->port;
	} else {
		struct flow_key fk = { .saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport,
				       .proto = proto };
		orig = bpf_map_lookup_elem(&rev, &fk);
		if (orig) {
			new_saddr = orig->addr;
			new_sport = orig->port;
		}
	}
	struct route_val *rt = bpf_map_lookup_elem(&route, &new_daddr);
	if (!rt)
		return pass();
	__u32 ifindex = rt->ifindex, rflags = rt->flags;

	if (be) {
		/* the reply's tuple: backend -> client, remembered until the LRU evicts it */
		struct flow_key rk = { .saddr = new_daddr, .daddr = saddr, .sport = new_dport,
				       .dport = sport, .proto = proto };
		struct nat_val *have = bpf_map_lookup_elem(&rev, &rk);
		if (!have || have->addr != daddr || have->port != dport) {
			struct nat_val ov = { .addr = daddr, .port = dport };
			bpf_map_update_elem(&rev, &rk, &ov, BPF_ANY);
		}
	}

	/* L2: the node's MAC of the outgoing interface -> the next hop's */
	if (bpf_skb_store_bytes(skb, 0, rt->dmac, 2 * ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	/* TTL, and the IP checksum over its 16-bit word ttl|protocol (as the bytes lie) */
	__u8 tp_old[2] = { ttl, proto }, tp_new[2] = { ttl - 1, proto };
	__u16 old_w, new_w;
	__builtin_memcpy(&old_w, tp_old, 2);
	__builtin_memcpy(&new_w, tp_new, 2);
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, tp_new, 1, 0) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_w, new_w, 2) < 0)
		return TC_ACT_SHOT;
	if (new_daddr != daddr) {
		if (bpf_l4_csum_replace(skb, csum_off, daddr, new_daddr, l4flags | BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, daddr, new_daddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &new_daddr, 4, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (new_dport != dport) {
		if (bpf_l4_csum_replace(skb, csum_off, dport, new_dport, l4flags | 2) < 0 ||
		    bpf_skb_store_bytes(skb, L4_OFF + 2, &new_dport, 2, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (new_saddr != saddr) {
		if (bpf_l4_csum_replace(skb, csum_off, saddr, new_saddr, l4flags | BPF_F_PSEUDO_HDR | 4) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, saddr, new_saddr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SADDR_OFF, &new_saddr, 4, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (new_sport != sport) {
		if (bpf_l4_csum_replace(skb, csum_off, sport, new_sport, l4flags | 2) < 0 ||
		    bpf_skb_store_bytes(skb, L4_OFF, &new_sport, 2, 0) < 0)
			return TC_ACT_SHOT;
	}

	count(be ? C_DNAT : orig ? C_REVNAT : C_ROUTED, 1);
	count(C_BYTES, skb->len);
	if (skb->gso_segs > 1) {
		count(C_GSO, 1);
		count(C_GSO_SEGS, skb->gso_segs);
	}
	long r = (rflags & ROUTE_PEER) ? bpf_redirect_peer(ifindex, 0) : bpf_redirect(ifindex, 0);
	if (r != TC_ACT_REDIRECT)
		count(C_REDIR_ERR, 1);
	return r;
}

char _license[] SEC("license") = "GPL";
