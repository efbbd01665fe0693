# Sourced (not run) by bench/e2e/run.sh and bench/e2e/scale.sh: the three-namespace topology
# they share, its generator and its clean-up helpers.
#
#   ${P}gen                       ${P}dut                                ${P}sink
#   trafgen ─ eth0 ══ npe2e-up ─[ DUT ]─ npe2e-pod ══ eth0 (drops everything at ingress)
#   $GEN_MAC            $UP_MAC                $PODIF_MAC           $SINK_MAC
#   192.168.100.1       $NODE_IP (node IP)     (10.244.1.1/32)      ${BACKENDS[@]}
#
# The caller sets, before calling anything here: P (the namespace prefix, e.g. np-e2e- or
# np-e-), GEN_MAC UP_MAC PODIF_MAC SINK_MAC NODE_IP, BACKENDS (array of the sink's addresses,
# each routed to npe2e-pod with a static neighbour entry), NICE, GEN_Q (-q or empty: trafgen
# through the qdisc layer or not), TMP (the caller's scratch directory), and a `die` function.
# Interface names inside the DUT namespace are fixed (npe2e-up, npe2e-pod): names are per
# namespace, so runs with different prefixes never collide.

GEN=${P}gen
DUT=${P}dut
SINK=${P}sink
GEN_PID=""

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# Foreground only: backgrounded, a shell function runs in a subshell and $! would not be the
# command (start background jobs with `ip netns exec` itself).
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

topo_down() {
  local ns
  for ns in "$GEN" "$DUT" "$SINK"; do
    if ns_exists "$ns"; then ip netns del "$ns"; fi
  done
}

topo_up() {
  topo_down
  local ns b
  for ns in "$GEN" "$DUT" "$SINK"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No IPv6 chatter (router solicitations, MLD) on the measured links.
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  nsx "$DUT" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0
  ip -n "$DUT" link add npe2e-up address "$UP_MAC" numrxqueues 2 numtxqueues 2 type veth \
    peer name eth0 address "$GEN_MAC" numrxqueues 2 numtxqueues 2 netns "$GEN"
  ip -n "$DUT" link add npe2e-pod address "$PODIF_MAC" numrxqueues 2 numtxqueues 2 type veth \
    peer name eth0 address "$SINK_MAC" numrxqueues 2 numtxqueues 2 netns "$SINK"
  ip -n "$GEN" addr add 192.168.100.1/24 dev eth0
  ip -n "$GEN" link set eth0 up
  ip -n "$DUT" addr add "$NODE_IP/24" dev npe2e-up
  ip -n "$DUT" link set npe2e-up up
  ip -n "$DUT" route add default via 192.168.100.1
  ip -n "$DUT" addr add 10.244.1.1/32 dev npe2e-pod
  ip -n "$DUT" link set npe2e-pod up
  for b in "${BACKENDS[@]}"; do
    ip -n "$DUT" route add "$b/32" dev npe2e-pod
    # The sink drops everything at ingress, ARP included: its neighbour entries are static.
    ip -n "$DUT" neigh replace "$b" lladdr "$SINK_MAC" dev npe2e-pod nud permanent
    ip -n "$SINK" addr add "$b/24" dev eth0
  done
  ip -n "$SINK" link set eth0 up
  ip -n "$SINK" route add default via 10.244.1.1
  nsx "$SINK" nft -f - <<EOF
table netdev sink {
  chain in { type filter hook ingress device "eth0" priority 0; policy drop; }
}
EOF
  # Let the DUT's kernel resolve the generator once (nodeplane reads that entry).
  nsx "$DUT" ping -c 1 -W 1 192.168.100.1 >/dev/null || die "generator does not answer ARP"
}

# -q: through the (noqueue) qdisc path, so veth's TX queue, hence the DUT's RX queue, follows
# the flow hash (both queues busy with many flows) instead of the sending CPU.
# setsid: trafgen -P 1 is a parent and a pinned child, stopped together by a SIGINT to their
# process group (as a terminal's ^C would); the group must not include the calling script.
gen_start() {
  setsid ip netns exec "$GEN" nice -n "$NICE" trafgen -i "$1" -o eth0 -P 1 $GEN_Q -Q -C >/dev/null 2>"$TMP/trafgen.log" &
  GEN_PID=$!
}
gen_stop() {
  [ -n "$GEN_PID" ] || return 0
  kill -INT -- "-$GEN_PID" 2>/dev/null || true
  wait "$GEN_PID" 2>/dev/null || true
  GEN_PID=""
}

counter() { nsx "$1" cat "/sys/class/net/$2/statistics/$3"; }

# Waits until XDP is attached on both DUT interfaces (an AF_XDP DUT, process $DUT_PID, is up),
# then a bit.
wait_xdp() {
  local i
  for i in $(seq 100); do
    if ip -n "$DUT" -d link show npe2e-up | grep -q "prog/xdp" \
       && ip -n "$DUT" -d link show npe2e-pod | grep -q "prog/xdp"; then
      sleep 0.5
      kill -0 "$DUT_PID" 2>/dev/null && return 0
      return 1
    fi
    kill -0 "$DUT_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Waits until no XDP program is left on the DUT's interfaces (an AF_XDP DUT stopped). The
# kernel releases a closed BPF link asynchronously (under the RTNL lock, which other jobs
# creating and deleting namespaces hold for long moments): give it time.
wait_xdp_gone() {
  local what="$1" i
  for i in $(seq 100); do
    if ! ip -n "$DUT" -d link show | grep -q "prog/xdp"; then
      [ "$i" -le 10 ] || echo "$what: XDP detached $((i / 10)) s after it stopped" >&2
      return 0
    fi
    sleep 0.1
  done
  ip -n "$DUT" -d link show >&2
  die "$what left XDP attached"
}

cpu_sample() { grep '^cpu[0-9]' /proc/stat; }
