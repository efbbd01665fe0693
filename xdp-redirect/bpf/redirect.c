// SPDX-License-Identifier: Apache-2.0
/*
 * nodeplane's XDP program: the one piece of the dataplane that runs in the kernel.
 *
 * It decides, per frame, between two outcomes and nothing else:
 *   - steer:  bpf_redirect_map(&xsks, slot(ifindex, rx_queue), XDP_PASS) to the AF_XDP socket of
 *             this interface queue, where the userspace pipeline owns the frame;
 *   - pass:   XDP_PASS to the kernel stack (ARP, ND, BGP, SSH, host traffic, anything unknown).
 * It never rewrites and drops only on request (see DROP_NO_SOCKET below): all decisions that
 * can be wrong live in userspace, where they are tested and replayed. Every exit is counted in `counters` by reason (enum np_counter).
 *
 * Decision order (first match wins):
 *   1. not IPv4/IPv6 (after at most one 802.1Q/802.1ad tag)       -> pass  NOT_IP
 *   2. headers truncated or malformed                               -> pass  MALFORMED
 *   3. ICMPv6 router/neighbour discovery, types 133..137            -> pass  ND
 *      (on every interface: the node's kernel answers pods' and routers' NS/RS; the dataplane
 *      has no ND responder)
 *   4a. an ICMP/ICMPv6 error (v4: types 3, 11, 12; v6: 1-4, unfragmented) quoting a
 *       TCP/UDP packet whose source is in `snat_addrs` with a source port in its range
 *       -> steer SNAT (the error about a flow the dataplane masqueraded, e.g. a router's
 *       "fragmentation needed" for it), or whose (source, protocol, source port) is in
 *       `nodeports` -> steer NODEPORT (about a NodePort flow's reply to its client). Before
 *       rule 4 (the masquerade source 169.254.0.1 is link-local) and rule 6 (node IPs).
 *       Errors about anything else go on to the kernel as before.
 *   5. (dst, proto, dport) in `nodeports` (NodePort on a node IP)   -> steer NODEPORT
 *      (a first fragment also records its datagram in `frags`)
 *   5a. TCP/UDP to (dst, dport) with dst in `snat_addrs` and dport   -> steer SNAT
 *       in its port range (node.snat_port_range): the replies of flows the dataplane
 *       source-NATed to a node IP (masquerade, NodePort hairpin), on the uplink and on pod
 *       interfaces alike; before rule 6, which would give them to the kernel. The range
 *       lies above Linux's ephemeral ports (net.ipv4.ip_local_port_range ends at 60999), so
 *       the node's own connections never own such a reply; a host socket *listening* on a
 *       node IP in that range is shadowed (documented in docs/runtime.md)
 *       (a first fragment also records its datagram in `frags`)
 *       (5 and 5a come before 4: the host interface's masquerade source 169.254.0.1 is
 *       link-local and in `snat_addrs`; nothing else link-local or multicast is in either map)
 *   4. multicast, broadcast, link-local destination                 -> pass  MULTICAST
 *   5b. a non-first fragment of a datagram recorded in `frags`      -> steer FRAGMENT
 *   6. dst in `host_addrs` (node IPs, pod gateway addresses)        -> pass  HOST
 *   7. ingress interface in `pod_ifaces`: all remaining IP traffic  -> steer POD
 *   8. dst in `steer_v4` / `steer_v6` (PodCIDRs, service VIPs)      -> steer UPLINK
 *   9. anything else (traffic for the host: BGP, SSH, ...)          -> pass  NOT_STEERED
 * A steer whose (interface, queue) has no socket (yet) falls back to the kernel: NO_SOCKET --
 * unless `config.no_socket_drop` is set (the runtime sets it when a worker died, so that its
 * queues' traffic is not forwarded by the kernel without policy): then it is dropped,
 * DROP_NO_SOCKET. That is the program's only drop, and only on the loader's request.
 *
 * Fragments: a non-first IPv4/IPv6 fragment carries no ports, so it cannot match a NodePort by
 * itself. When rule 5 or 5a steers a first fragment (offset 0, more fragments), the datagram's
 * identity -- (src, dst, id, protocol) for IPv4, (src, dst, id) for IPv6 -- goes into the LRU
 * map `frags` with the time; later fragments of that datagram follow it to userspace (rule 5b)
 * for NP_FRAG_TTL_NS, the default reassembly timeout of the kernel and of the pipeline.
 * Known limit: a later fragment that arrives before its first fragment is not known yet and
 * goes to the kernel (which then never completes the datagram: it is lost, as on a node
 * without nodeplane it would not be).
 *
 * Map keys are byte arrays with a fixed layout that the loader (src/maps.rs) encodes; IPv4
 * addresses in the 16-byte keys are IPv4-mapped IPv6 (::ffff:a.b.c.d).
 */
#include "np_parse.h"

/* Keep in sync with `Counter` in src/maps.rs (a unit test compares the two lists). */
enum np_counter {
	NP_REDIRECT_POD = 0,
	NP_REDIRECT_UPLINK = 1,
	NP_REDIRECT_NODEPORT = 2,
	NP_PASS_NO_SOCKET = 3,
	NP_PASS_NOT_IP = 4,
	NP_PASS_MALFORMED = 5,
	NP_PASS_ND = 6,
	NP_PASS_MULTICAST = 7,
	NP_PASS_HOST = 8,
	NP_PASS_NOT_STEERED = 9,
	NP_REDIRECT_FRAGMENT = 10,
	NP_DROP_NO_SOCKET = 11,
	NP_REDIRECT_SNAT = 12,
	NP_COUNTER_MAX = 13,
};

/* Sizes; the loader documents them as limits (src/maps.rs `limits`). */
#define NP_MAX_XSKS 1024
#define NP_MAX_IFACES 1024
#define NP_MAX_PREFIXES 1048576
#define NP_MAX_HOST_ADDRS 1024
#define NP_MAX_NODEPORTS 8192
#define NP_MAX_SNAT_ADDRS 64
#define NP_MAX_FRAGS 8192
#define NP_FRAG_TTL_NS (30ULL * 1000000000ULL)

struct np_lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct np_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Runtime switches, written by the loader (one entry, key 0). */
struct np_config {
	__u32 no_socket_drop; /* 1: steered traffic without a socket is dropped, not passed */
};

struct np_xsk_slot {
	__u32 base;   /* first index in `xsks` of this interface */
	__u32 queues; /* number of queues with an index reserved */
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, NP_MAX_XSKS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_IFACES);
	__type(key, __u32); /* ifindex */
	__type(value, struct np_xsk_slot);
} xsk_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_IFACES);
	__type(key, __u32); /* ifindex */
	__type(value, __u32); /* 1 */
} pod_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NP_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_lpm4);
	__type(value, __u32);
} steer_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NP_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_lpm6);
	__type(value, __u32);
} steer_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_HOST_ADDRS);
	__type(key, struct np_addr);
	__type(value, __u32);
} host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_NODEPORTS);
	__type(key, struct np_nodeport);
	__type(value, __u32);
} nodeports SEC(".maps");

/* Node IPs that source NAT uses, with the port range it allocates from. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_SNAT_ADDRS);
	__type(key, struct np_addr);
	__type(value, struct np_port_range);
} snat_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct np_config);
} config SEC(".maps");

/* Written by the program only: datagrams whose first fragment went to a NodePort (or was the
 * reply of a source-NATed flow). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NP_MAX_FRAGS);
	__type(key, struct np_frag_key);
	__type(value, __u64); /* bpf_ktime_get_ns() of the first fragment */
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 reason, int action)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &reason);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
	return action;
}

static __always_inline int no_socket(void)
{
	__u32 zero = 0;
	struct np_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (cfg && cfg->no_socket_drop)
		return count(NP_DROP_NO_SOCKET, XDP_DROP);
	return count(NP_PASS_NO_SOCKET, XDP_PASS);
}

static __always_inline int steer(struct xdp_md *ctx, __u32 reason)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 queue = ctx->rx_queue_index;
	struct np_xsk_slot *slot = bpf_map_lookup_elem(&xsk_slots, &ifindex);

	if (!slot || queue >= slot->queues)
		return no_socket();
	/* Falls back to XDP_PASS (lower bits of flags) when the slot holds no socket. */
	long act = bpf_redirect_map(&xsks, slot->base + queue, XDP_PASS);

	if (act == XDP_REDIRECT)
		return count(reason, XDP_REDIRECT);
	return no_socket();
}

/* `xdp.frags`: loaded with BPF_F_XDP_HAS_FRAGS, so that veth (and drivers with multi-buffer
 * XDP) accept MTUs beyond one page (io.afxdp.multi_buffer). Only the linear part is read here
 * (`data_end` ends it), and every header this program parses lies in it. */
SEC("xdp.frags")
int np_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct np_pkt pkt = {};
	enum parse_result res;

	if ((void *)(eth + 1) > end)
		return count(NP_PASS_MALFORMED, XDP_PASS);

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;

	if (proto == np_htons(ETH_P_8021Q) || proto == np_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > end)
			return count(NP_PASS_MALFORMED, XDP_PASS);
		proto = vh->proto;
		l3 = vh + 1;
	}

	if (proto == np_htons(ETH_P_IP))
		res = parse_ipv4(l3, end, &pkt);
	else if (proto == np_htons(ETH_P_IPV6))
		res = parse_ipv6(l3, end, &pkt);
	else
		res = PARSE_NOT_IP;

	if (res == PARSE_NOT_IP)
		return count(NP_PASS_NOT_IP, XDP_PASS);
	if (res == PARSE_MALFORMED)
		return count(NP_PASS_MALFORMED, XDP_PASS);
	if (pkt.is_nd)
		return count(NP_PASS_ND, XDP_PASS);
	if (pkt.icmp_err) {
		struct np_nodeport np = { .port = pkt.inner_sport, .proto = pkt.inner_proto };
		struct np_port_range *r = bpf_map_lookup_elem(&snat_addrs, &pkt.inner_src);
		__u16 port = np_ntohs(pkt.inner_sport);

		__builtin_memcpy(np.addr, pkt.inner_src.addr, 16);
		if (r && port >= r->first && port <= r->last)
			return steer(ctx, NP_REDIRECT_SNAT);
		if (bpf_map_lookup_elem(&nodeports, &np))
			return steer(ctx, NP_REDIRECT_NODEPORT);
	}

	/* Rules 5 and 5a before rule 4: the loader puts no multicast, broadcast or link-local
	 * address into `nodeports` or `snat_addrs` but the host-network masquerade source
	 * 169.254.0.1, whose replies the node sends into the host interface. */
	if (pkt.dport) {
		struct np_nodeport np = { .port = pkt.dport, .proto = pkt.proto };
		__u32 reason = 0;

		__builtin_memcpy(np.addr, pkt.dst.addr, 16);
		if (bpf_map_lookup_elem(&nodeports, &np)) {
			reason = NP_REDIRECT_NODEPORT;
		} else if (pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP) {
			struct np_port_range *r = bpf_map_lookup_elem(&snat_addrs, &pkt.dst);
			__u16 port = np_ntohs(pkt.dport);

			if (r && port >= r->first && port <= r->last)
				reason = NP_REDIRECT_SNAT;
		}
		if (reason) {
			if (pkt.frag == NP_FRAG_FIRST) {
				__u64 now = bpf_ktime_get_ns();

				bpf_map_update_elem(&frags, &pkt.fkey, &now, BPF_ANY);
			}
			return steer(ctx, reason);
		}
	}

	if (pkt.is_mcast)
		return count(NP_PASS_MULTICAST, XDP_PASS);

	if (pkt.frag == NP_FRAG_LATER) {
		__u64 *first = bpf_map_lookup_elem(&frags, &pkt.fkey);

		if (first && bpf_ktime_get_ns() - *first < NP_FRAG_TTL_NS)
			return steer(ctx, NP_REDIRECT_FRAGMENT);
	}

	if (bpf_map_lookup_elem(&host_addrs, &pkt.dst))
		return count(NP_PASS_HOST, XDP_PASS);

	__u32 ifindex = ctx->ingress_ifindex;

	if (bpf_map_lookup_elem(&pod_ifaces, &ifindex))
		return steer(ctx, NP_REDIRECT_POD);

	if (pkt.is_v6) {
		struct np_lpm6 k6 = { .prefixlen = 128 };

		__builtin_memcpy(k6.addr, pkt.dst.addr, 16);
		if (bpf_map_lookup_elem(&steer_v6, &k6))
			return steer(ctx, NP_REDIRECT_UPLINK);
	} else {
		struct np_lpm4 k4 = { .prefixlen = 32 };

		__builtin_memcpy(k4.addr, &pkt.dst.addr[12], 4);
		if (bpf_map_lookup_elem(&steer_v4, &k4))
			return steer(ctx, NP_REDIRECT_UPLINK);
	}
	return count(NP_PASS_NOT_STEERED, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
