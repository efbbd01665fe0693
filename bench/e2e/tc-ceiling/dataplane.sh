# shellcheck shell=bash
# EXPERIMENT dataplanes of bench/e2e/throughput.sh (sourced by it; not products, not in its
# default set): the ceiling of a kernel fast path for decided flows (issue 10).
#
#   tc-ceiling      tc_ceiling.c on clsact ingress of the node's uplink0, pod-a and pod-b:
#                   the benchmark's ClusterIP and NodePort DNAT and the reverse NAT from BPF
#                   hash maps, MACs rewritten, checksums fixed, forwarded with
#                   bpf_redirect_peer (pods) / bpf_redirect (uplink). No XDP program anywhere,
#                   so the pods keep TSO. No policy, no userspace: every packet, the first of
#                   a connection too, is decided in the kernel.
#   tc-ceiling-xdp  the same, plus xdp_pass.c (XDP_PASS) attached natively to the same three
#                   veths, as nodeplane's program is: the kernel turns TSO off on the pods' side.
# TP_CEILING_TSO=off (not the default): TSO turned off by hand (ethtool) on the pods' and the
# router's eth0 while a tc-ceiling* dataplane runs, back on after it: tc-ceiling then shows the
# cost of losing TSO alone, without veth's XDP receive path.
#
# The program is compiled at run time (clang -target bpf), loaded and its maps pinned by
# bpftool into a bpffs instance of our own, /tmp/${P}bpffs-PID (unmounted on exit), and attached with
# `tc filter add ... ingress bpf da pinned`, from the node's network namespace entered with
# nsenter (which keeps our mount namespace, so tc sees that bpffs). Uses the caller's NODE,
# RTR, PA, PB, P, TMP, HERE, the addresses and MACs, SERVICES, nsx, app, RR, die.

TC_DIR="$HERE/tc-ceiling"
TC_FS=""          # our bpffs mount, once mounted
TC_IFACES=(uplink0 pod-a pod-b)
TC_HITS=(dnat revnat routed pass gso_skbs gso_segs bytes redirect_errors)

tc_need() {
  local t
  for t in clang bpftool nsenter tc; do command -v "$t" >/dev/null || die "$1 needs $t (scripts/setup.sh installs it)"; done
}

# Builds both programs once per run.
tc_build() {
  [ -f "$TMP/tc_ceiling.o" ] && return 0
  local arch f
  arch="$(uname -m)"
  for f in tc_ceiling xdp_pass; do
    clang -O2 -g -target bpf -Wall -Wextra -Werror -I"/usr/include/$arch-linux-gnu" \
      -c "$TC_DIR/$f.c" -o "$TMP/$f.o" || die "clang failed on $TC_DIR/$f.c"
  done
}

in_node() { nsenter --net="/run/netns/$NODE" "$@"; }

# Map keys and values as bpftool's hex bytes (addresses and ports in network order, the
# ifindex and flags in host order, little-endian here).
hex_ip() { local a b c d; IFS=. read -r a b c d <<< "$1"; printf '%02x %02x %02x %02x' "$a" "$b" "$c" "$d"; }
hex_be16() { printf '%02x %02x' $(($1 >> 8)) $(($1 & 255)); }
hex_le32() { printf '%02x %02x %02x %02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
hex_mac() { tr ':' ' ' <<< "$1"; }
map_put() {
  local key val
  read -r -a key <<< "$2"; read -r -a val <<< "$3"
  bpftool map update pinned "$TC_FS/maps/$1" key hex "${key[@]}" value hex "${val[@]}" \
    || die "bpftool could not update map $1"
}
ifindex_of() { ip -n "$NODE" -o link show dev "$1" | cut -d: -f1; }

tc_ceiling_up() {
  local dp="$1" s proto cport nport tport pn ifc ns
  tc_need "$dp"
  tc_build
  # libbpf turns every '.' of a pin path into '_' ($TMP has one): a path of its own.
  TC_FS="/tmp/${P}bpffs-$$"
  mkdir -p "$TC_FS"
  mount -t bpf bpf "$TC_FS" || die "cannot mount a bpffs at $TC_FS"
  mkdir "$TC_FS/maps"
  bpftool prog load "$TMP/tc_ceiling.o" "$TC_FS/tc_ceiling" type classifier pinmaps "$TC_FS/maps" \
    || die "bpftool could not load tc_ceiling.o (verifier log above)"
  for s in "${SERVICES[@]}"; do
    IFS=: read -r _ proto cport nport tport <<< "$s"
    pn=6; [ "$proto" = udp ] && pn=17
    map_put svc "$(hex_ip "$VIP") $(hex_be16 "$cport") $(printf %02x $pn) 00" "$(hex_ip "$SERVER_IP") $(hex_be16 "$tport") 00 00"
    map_put svc "$(hex_ip "$NODE_IP") $(hex_be16 "$nport") $(printf %02x $pn) 00" "$(hex_ip "$SERVER_IP") $(hex_be16 "$tport") 00 00"
  done
  map_put route "$(hex_ip "$SERVER_IP")" "$(hex_le32 "$(ifindex_of pod-b)") $(hex_mac "$PB_MAC") $(hex_mac "$PODB_NODE_MAC") $(hex_le32 1)"
  map_put route "$(hex_ip "$CLIENT_IP")" "$(hex_le32 "$(ifindex_of pod-a)") $(hex_mac "$PA_MAC") $(hex_mac "$PODA_NODE_MAC") $(hex_le32 1)"
  map_put route "$(hex_ip "$RTR_IP")" "$(hex_le32 "$(ifindex_of uplink0)") $(hex_mac "$RTR_MAC") $(hex_mac "$UP_MAC") $(hex_le32 0)"
  if [ "${TP_CEILING_TSO:-on}" = off ]; then
    for ns in "$PA" "$PB" "$RTR"; do nsx "$ns" ethtool -K eth0 tso off >/dev/null; done
    echo "throughput: $dp: *** TP_CEILING_TSO=off: TSO turned off by hand in the pods and the router ***"
  fi
  for ifc in "${TC_IFACES[@]}"; do
    if [ "$dp" = tc-ceiling-xdp ]; then
      ip -n "$NODE" link set dev "$ifc" xdpdrv obj "$TMP/xdp_pass.o" sec xdp \
        || die "cannot attach xdp_pass natively to $ifc"
    fi
    in_node tc qdisc add dev "$ifc" clsact || die "cannot add clsact to $ifc"
    in_node tc filter add dev "$ifc" ingress bpf da pinned "$TC_FS/tc_ceiling" \
      || die "cannot attach tc_ceiling to $ifc"
  done
  echo "throughput: $dp: EXPERIMENT (a ceiling, not a product): tc_ceiling on ${TC_IFACES[*]} ingress$([ "$dp" = tc-ceiling-xdp ] && echo ", xdp_pass native on the same veths"); no policy, no userspace"
  tc_ceiling_verify "$dp"
}

# The connection the server pod sees during a short TCP_RR through each service path: the
# client's own address (no SNAT) to the backend's (DNAT done), and the program's hits.
tc_ceiling_verify() {
  local dp="$1" src dst peer want rr_pid
  for src in "$PA:$VIP:7000:$CLIENT_IP" "$RTR:$NODE_IP:30700:$RTR_IP"; do
    IFS=: read -r src dst peer want <<< "$src"
    app "$src" "$RR" rr --connect "$dst:$peer" --seconds 2 > "$TMP/verify.out" 2>&1 &
    rr_pid=$!
    sleep 1
    peer="$(nsx "$PB" ss -Htn state established '( sport = :7000 )' | awk '{print $3 " <- " $4}' | head -1)"
    wait "$rr_pid" || die "$dp: TCP_RR to $dst through the program failed: $(cat "$TMP/verify.out")"
    case "$peer" in
      "$SERVER_IP:7000 <- $want:"*) echo "throughput: $dp check: the server pod sees $peer (a connection to $dst; DNAT done, source kept)" ;;
      *) die "$dp: the server pod saw '$peer' for a connection to $dst (expected $SERVER_IP:7000 <- $want:port)" ;;
    esac
  done
  echo "throughput: $dp hits so far: $(tc_hits | tr -d '{}"')"
}

# {"dnat": N, ...}: the per-CPU hit counters summed.
tc_hits() {
  bpftool map dump pinned "$TC_FS/maps/hits" -j | python3 -c '
import json, sys
names = sys.argv[1].split()
out = {}
for e in json.load(sys.stdin):
    # with BTF bpftool prints "formatted" numbers; without, hex byte lists
    k = e["formatted"]["key"] if "formatted" in e else e["key"]
    vals = e["formatted"]["values"] if "formatted" in e else e["values"]
    k = k if isinstance(k, int) else int.from_bytes(bytes(int(b, 16) for b in k), "little")
    tot = 0
    for v in vals:
        x = v["value"]
        tot += x if isinstance(x, int) else int.from_bytes(bytes(int(b, 16) for b in x), "little")
    out[names[k]] = tot
print(json.dumps(out))' "${TC_HITS[*]}"
}

# Detaches everything tc_ceiling_up attached (also on a failed or interrupted run).
tc_ceiling_down() {
  local ifc ns
  [ -n "$TC_FS" ] || return 0
  if ns_exists "$NODE"; then
    for ifc in "${TC_IFACES[@]}"; do
      in_node tc qdisc del dev "$ifc" clsact 2>/dev/null || true
      ip -n "$NODE" link set dev "$ifc" xdpdrv off 2>/dev/null || true
    done
  fi
  if [ "${TP_CEILING_TSO:-on}" = off ]; then
    for ns in "$PA" "$PB" "$RTR"; do
      if ns_exists "$ns"; then nsx "$ns" ethtool -K eth0 tso on >/dev/null 2>&1 || true; fi
    done
  fi
  umount "$TC_FS" 2>/dev/null || true
  rmdir "$TC_FS" 2>/dev/null || true
  TC_FS=""
}

# After tc_ceiling_down: nothing of ours left on the node's veths.
tc_ceiling_gone() {
  local ifc
  for ifc in "${TC_IFACES[@]}"; do
    ip -n "$NODE" -d link show "$ifc" | grep -q "prog/xdp" && die "xdp_pass left on $ifc"
    in_node tc filter show dev "$ifc" ingress | grep -q . && die "a tc filter left on $ifc"
  done
  return 0
}
