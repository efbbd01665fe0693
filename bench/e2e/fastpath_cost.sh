#!/usr/bin/env bash
# The TC fast path's own cost per skb (issue 10): bpf/fastpath.c run by BPF_PROG_TEST_RUN
# (`bpftool prog run ... repeat N`: the kernel runs the program N times on one skb and reports
# the average duration) for each of its exits: a hit (IPv4 and IPv6, DNAT of address and port +
# MACs + checksums + last_seen/counters, redirect; no TTL decrement, see below), a miss and a SYN (the slow path: MAC rewrite + redirect), not ours
# (ARP: TC_ACT_OK). The redirect itself is not performed by a test run (nor counted here);
# what the kernel does after the program returns is the same as for any TC redirect.
#
#   bash bench/e2e/fastpath_cost.sh [repeat]        (root; default repeat 1000000)
#
# The program is loaded by bpftool from the object `cargo build -p nodeplane-xdp --profile ci`
# built, with maps of its own (empty host_addrs etc.: the decision order is the same), in a
# bpffs and a network namespace of this script's own (FC_NS, default np-fpcost), both removed
# on exit. Prints one line per case: name, return value, ns per run.
set -euo pipefail

REPEAT="${1:-1000000}"
NS="${FC_NS:-np-fpcost}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The newest build of the object (ls -t: by time; the paths have no odd characters).
# shellcheck disable=SC2012
OBJ="$(ls -t "$ROOT"/target/ci/build/nodeplane-xdp-*/out/fastpath.bpf.o 2>/dev/null | head -1 || true)"
[ -n "$OBJ" ] || { echo "no fastpath.bpf.o: cargo build -p nodeplane-xdp --profile ci first" >&2; exit 1; }
for t in bpftool python3 ip; do command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }; done

TMP="$(mktemp -d)"
FS="/tmp/$NS-bpffs-$$" # libbpf turns every '.' of a pin path (mktemp's has one) into '_'
cleanup() {
  umount -l "$FS" 2>/dev/null || true
  rmdir "$FS" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$FS"
mount -t bpf bpf "$FS"
mkdir "$FS/maps"
bpftool prog load "$OBJ" "$FS/prog" type classifier pinmaps "$FS/maps"

# Frames and map entries (the test run's skb arrives on the namespace's lo, ifindex 1).
python3 - "$TMP" <<'EOF'
import struct, sys, ipaddress
d = sys.argv[1]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
eth = lambda t: bytes.fromhex("020000770101" "020000770102") + struct.pack("!H", t)
def tcp(sport, dport, flags, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
def v4(src, dst, l4):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 6, 0,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return eth(0x0800) + h + l4
def v6(src, dst, l4):
    h = struct.pack("!IHBB16s16s", 6 << 28, len(l4), 6, 64,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return eth(0x86dd) + h + l4
pay = bytes(1400)
frames = {
    "hit4_ack": v4("10.77.1.2", "10.96.0.10", tcp(40000, 80, 0x10)),
    "hit4_1400B": v4("10.77.1.2", "10.96.0.10", tcp(40000, 80, 0x10, pay)),
    "hit6_ack": v6("fd77:1::2", "fd96::10", tcp(40000, 80, 0x10)),
    "miss4_ack": v4("10.77.1.2", "10.96.0.10", tcp(40001, 80, 0x10)),
    "syn4": v4("10.77.1.2", "10.96.0.10", tcp(40000, 80, 0x02)),
    "arp": eth(0x0806) + bytes.fromhex("0001080006040001" "020000770102" "0a4d0102" "000000000000" "0a4d0101") + bytes(18),
}
for k, v in frames.items():
    open(f"{d}/{k}.bin", "wb").write(v)
def key(fam, src, dst, sport, dport):
    a = lambda x: ipaddress.ip_address(x).packed.ljust(16, b"\0")
    return struct.pack("<IBBH", 1, 6, fam, 0) + a(src) + a(dst) + struct.pack("!HH", sport, dport)
def val(src, dst, sport, dport, flags):
    a = lambda x: ipaddress.ip_address(x).packed.ljust(16, b"\0")
    return (a(src) + a(dst) + struct.pack("!HH", sport, dport) + struct.pack("<I", 1)
            + bytes.fromhex("020000770202" "020000770201") + struct.pack("<III", flags, 1, 0) + bytes(24))
# A test run runs the program `repeat` times on the same skb, which each hit rewrites: every
# flow has a twin keyed by its rewritten tuple that rewrites it back, so every run is a hit
# with a DNAT of address and port (no TTL decrement: it would run out).
PEER, NATD = 1, 8
entries = []
for fam, c, vip, be in [(4, "10.77.1.2", "10.96.0.10", "10.77.2.2"), (6, "fd77:1::2", "fd96::10", "fd77:2::2")]:
    entries.append((key(fam, c, vip, 40000, 80), val(c, be, 40000, 8080, PEER | NATD)))
    entries.append((key(fam, c, be, 40000, 8080), val(c, vip, 40000, 80, PEER | NATD)))
with open(f"{d}/entries", "w") as f:
    for k, v in entries:
        f.write(" ".join("%02x" % b for b in k) + "|" + " ".join("%02x" % b for b in v) + "\n")
EOF
while IFS='|' read -r k v; do
  # shellcheck disable=SC2086
  bpftool map update pinned "$FS/maps/np_flows" key hex $k value hex $v
done < "$TMP/entries"
bpftool map update pinned "$FS/maps/fp_config" key hex 00 00 00 00 value hex 01 00 00 00

printf '%-12s %-8s %s\n' case retval ns/run
for c in hit4_ack hit4_1400B hit6_ack miss4_ack syn4 arp; do
  out="$(ip netns exec "$NS" bpftool prog run pinned "$FS/prog" data_in "$TMP/$c.bin" repeat "$REPEAT" 2>&1)"
  rv="$(sed -n 's/.*Return value: \([0-9-]*\).*/\1/p' <<< "$out")"
  ns="$(sed -n 's/.*duration (average): \([0-9]*\)ns.*/\1/p' <<< "$out")"
  printf '%-12s %-8s %s\n' "$c" "$rv" "$ns"
done
echo "counters (fp_counters, summed over CPUs):"
bpftool -j map dump pinned "$FS/maps/fp_counters" | python3 -c '
import json, sys
names = ["fast_fwd_packets", "fast_fwd_bytes", "fast_gso_skbs", "slow_path", "slow_gso_drop",
         "pass", "redirect_error", "slow_unset", "fast_gso_fin", "rewrite_error"]
for e in json.load(sys.stdin):
    k = e["key"] if isinstance(e["key"], int) else int.from_bytes(bytes(int(x, 16) for x in e["key"]), "little")
    tot = sum(int(c["value"]) if isinstance(c["value"], int) else int.from_bytes(bytes(int(x, 16) for x in c["value"]), "little") for c in e["values"])
    if tot: print(f"  {names[k]}: {tot}")
'
