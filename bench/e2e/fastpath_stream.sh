#!/usr/bin/env bash
# The TC fast path alone, end to end (issue 10): one iperf3 TCP stream from pod A through a
# ClusterIP-like service (10.96.0.10:80 -> pod B 10.77.2.2:5201) with the pods at their default
# offloads, forwarded by
#   nft   the node's kernel: nftables DNAT + conntrack, routing (kube-proxy's way);
#   fast  bpf/fastpath.c on the host side of both pod veths with the stream's two flow
#         directions in np_flows (as a worker would offer them: DNAT + reverse NAT, MACs,
#         TTL, bpf_redirect_peer); everything else (iperf3's control connection, SYN/FIN)
#         takes the slow path, which here is the node's kernel again (fps0 -> fps1, a small
#         TC program marks the frames PACKET_HOST, nftables DNATs them): no worker involved.
# So "fast" is the kernel side of io.afxdp.fast_path: tc for an established stream; the mode
# end to end (with the daemon's worker on the slow path) is throughput.sh's business.
#
#   bash bench/e2e/fastpath_stream.sh [seconds] [runs]     (root; default 5 s, 2 runs each)
#
# Namespaces ${FS_PREFIX:-np-fpstream}{n,a,b} and a bpffs of the script's own, removed on exit.
# Prints Gbit/s per run and the program's counters (fast_gso_skbs > 0: TSO stayed on).
set -euo pipefail

SECS="${1:-5}"
RUNS="${2:-2}"
P="${FS_PREFIX:-np-fpstream}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The newest build of the object (ls -t: by time; the paths have no odd characters).
# shellcheck disable=SC2012
OBJ="$(ls -t "$ROOT"/target/ci/build/nodeplane-xdp-*/out/fastpath.bpf.o 2>/dev/null | head -1 || true)"
[ -n "$OBJ" ] || { echo "no fastpath.bpf.o: cargo build -p nodeplane-xdp --profile ci first" >&2; exit 1; }
for t in bpftool python3 ip tc nft iperf3 clang; do command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }; done

N="${P}n" A="${P}a" B="${P}b"
TMP="$(mktemp -d)"
FS="/tmp/$P-bpffs-$$" # libbpf turns every '.' of a pin path into '_': no mktemp name
cleanup() {
  for ns in "$A" "$B"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  umount -l "$FS" 2>/dev/null || true
  rmdir "$FS" 2>/dev/null || true
  for ns in "$N" "$A" "$B"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
for ns in "$N" "$A" "$B"; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; ip -n "$ns" link set lo up; done
inn() { ip netns exec "$N" "$@"; }

# Topology (as xdp-redirect/tests/fastpath.rs).
ip -n "$N" link add fpa address 02:00:00:77:01:01 type veth peer name eth0 address 02:00:00:77:01:02 netns "$A"
ip -n "$N" link add fpb address 02:00:00:77:02:01 type veth peer name eth0 address 02:00:00:77:02:02 netns "$B"
ip -n "$N" link add fps0 type veth peer name fps1
for i in fpa fpb fps0 fps1; do ip -n "$N" link set "$i" up; done
ip -n "$N" addr add 10.77.1.1/24 dev fpa
ip -n "$N" addr add 10.77.2.1/24 dev fpb
for x in "$A:1" "$B:2"; do
  ns="${x%%:*}" n="${x##*:}"
  ip -n "$ns" link set eth0 up
  ip -n "$ns" addr add "10.77.$n.2/24" dev eth0
  ip -n "$ns" route add default via "10.77.$n.1"
done
inn sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
  net.ipv4.conf.fps1.rp_filter=0 net.netfilter.nf_conntrack_tcp_be_liberal=1
inn nft -f - <<'EOF'
table ip fps {
  chain pre {
    type nat hook prerouting priority -100; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.77.2.2:5201
  }
}
EOF

# The slow path into the node's kernel.
cat > "$TMP/to_host.c" <<'EOF'
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
static long (*change_type)(struct __sk_buff *, __u32) = (void *)BPF_FUNC_skb_change_type;
__attribute__((section("tc"), used)) int to_host(struct __sk_buff *skb)
{ change_type(skb, 0 /* PACKET_HOST */); return TC_ACT_OK; }
char _license[] __attribute__((section("license"), used)) = "GPL";
EOF
clang -O2 -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -c "$TMP/to_host.c" -o "$TMP/to_host.o"
inn tc qdisc add dev fps1 clsact
inn tc filter add dev fps1 ingress bpf da obj "$TMP/to_host.o" sec tc

# The fast path: loaded and its maps pinned by bpftool (host_addrs etc. of its own, 1 entry
# each and empty: nothing in this run is addressed to the node), the stream's two directions
# in np_flows.
mkdir -p "$FS"
mount -t bpf bpf "$FS"
mkdir "$FS/maps"
bpftool prog load "$OBJ" "$FS/prog" type classifier pinmaps "$FS/maps"
ifx() { ip -n "$N" -o link show dev "$1" | cut -d: -f1; }
SA="$(ifx fpa)" SB="$(ifx fpb)" S0="$(ifx fps0)"
python3 - "$TMP" "$SA" "$SB" <<'EOF'
import struct, sys, ipaddress
d, sa, sb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a = lambda x: ipaddress.ip_address(x).packed.ljust(16, b"\0")
def key(ifx, src, dst, sport, dport):
    return struct.pack("<IBBH", ifx, 6, 4, 0) + a(src) + a(dst) + struct.pack("!HH", sport, dport)
def val(src, dst, sport, dport, egress, dmac, smac, flags):
    return (a(src) + a(dst) + struct.pack("!HH", sport, dport) + struct.pack("<I", egress)
            + bytes.fromhex(dmac + smac) + struct.pack("<III", flags, 1, 0) + bytes(24))
PEER, DEC, NATD, NATS = 1, 2, 8, 4
entries = [
    (key(sa, "10.77.1.2", "10.96.0.10", 40000, 80),
     val("10.77.1.2", "10.77.2.2", 40000, 5201, sb, "020000770202", "020000770201", PEER | DEC | NATD)),
    (key(sb, "10.77.2.2", "10.77.1.2", 5201, 40000),
     val("10.96.0.10", "10.77.1.2", 80, 40000, sa, "020000770102", "020000770101", PEER | DEC | NATS)),
]
hexs = lambda b: " ".join("%02x" % x for x in b)
with open(f"{d}/entries", "w") as f:
    for k, v in entries:
        f.write(hexs(k) + "|" + hexs(v) + "\n")
EOF
while IFS='|' read -r k v; do
  # shellcheck disable=SC2086
  bpftool map update pinned "$FS/maps/np_flows" key hex $k value hex $v
done < "$TMP/entries"
# shellcheck disable=SC2046
bpftool map update pinned "$FS/maps/fp_config" key hex 00 00 00 00 value hex $(printf '%02x %02x %02x %02x' $((S0 & 255)) $(((S0 >> 8) & 255)) 0 0) 00 00 00 00

stream() {
  ip netns exec "$B" iperf3 -s -1 -D >/dev/null
  sleep 0.3
  ip netns exec "$A" iperf3 -c 10.96.0.10 -p 80 --cport 40000 -t "$SECS" -J 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))'
  sleep 1 # TIME_WAIT of port 40000 on A: iperf3 sets SO_REUSEADDR
}
attach() { for i in fpa fpb; do inn tc qdisc add dev "$i" clsact; inn tc filter add dev "$i" ingress bpf da pinned "$FS/prog"; done; }
detach() { for i in fpa fpb; do inn tc qdisc del dev "$i" clsact; done; }
counters() {
  bpftool -j map dump pinned "$FS/maps/fp_counters" | python3 -c '
import json, sys
names = ["fast_fwd_packets", "fast_fwd_bytes", "fast_gso_skbs", "slow_path", "slow_gso_drop",
         "pass", "redirect_error", "slow_unset", "fast_gso_fin", "rewrite_error", "slow_gso_skbs"]
out = []
for e in json.load(sys.stdin):
    k = e["key"] if isinstance(e["key"], int) else int.from_bytes(bytes(int(x, 16) for x in e["key"]), "little")
    tot = sum(int(c["value"]) if isinstance(c["value"], int) else int.from_bytes(bytes(int(x, 16) for x in c["value"]), "little") for c in e["values"])
    if tot: out.append(f"{names[k]}={tot}")
print(" ".join(out))'
}
echo "pods' TSO: $(ip netns exec "$A" ethtool -k eth0 | grep tcp-segmentation-offload:)"
for r in $(seq 1 "$RUNS"); do
  echo "run $r nft  Gbit/s: $(stream)"
  attach
  echo "run $r fast Gbit/s: $(stream)"
  detach
done
echo "fast path counters: $(counters)"
