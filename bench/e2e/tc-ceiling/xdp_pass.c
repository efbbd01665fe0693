/* SPDX-License-Identifier: Apache-2.0 */
/*
 * EXPERIMENT (bench/e2e/throughput.sh `tc-ceiling-xdp`): a trivial XDP program, attached
 * natively to the node's veths only for what attaching any XDP program does to a veth pair
 * (the kernel turns TSO off on the peer, and the veth receives through its XDP NAPI path), so
 * that this cost can be told apart from the cost of a userspace round trip.
 */
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
