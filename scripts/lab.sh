#!/usr/bin/env bash
# The example node (examples/state/) built from network namespaces, for running nodeplane on
# real AF_XDP sockets over veth.
#
#   scripts/lab.sh up      create the lab (recreates it if it exists)
#   scripts/lab.sh down    delete everything it created, by name; idempotent
#   scripts/lab.sh status  list the lab's namespaces and the node's interfaces
#   scripts/lab.sh demo    up, run the daemon (nodeplane run --config, AF_XDP) with examples/state,
#                          drive traffic, show status / ct list / service list / explain, stop, down
#
#        np-router   eth0 02:00:00:00:00:fe  192.168.100.1/24  fd00:100::1/64
#            |       routes 10.244.1.0/24, 10.96.0.0/12, 203.0.113.10, fd00:244:1::/64,
#            |       fd00:96::/64 via the node
#   +--------+----------------------------------------------------------------------+
#   | np-node   uplink0 02:00:00:00:00:01  192.168.100.2/24  fd00:100::2/64           |
#   |           pod-client 02:00:00:00:01:01  pod-web1 ..:01:02  pod-web2 ..:01:03    |
#   |           each pod-* also holds the pods' gateway 10.244.1.1/32 fd00:244:1::1/128 |
#   +--------+--------------------------+--------------------------+-----------------+
#        np-client eth0 02:00:00:00:02:0a  np-web1 eth0 ..:02:15     np-web2 eth0 ..:02:16
#        10.244.1.10/24 fd00:244:1::10/64  10.244.1.21 fd00:244:1::21 10.244.1.22 fd00:244:1::22
#
# Every veth has 2 RX and 2 TX queues. Pods and the router keep Linux's default offloads: their
# kernels send TCP/UDP with partial checksums (CHECKSUM_PARTIAL) on veth, which nodeplane
# completes before forwarding (docs/runtime.md).
#
# How pods reach the node (chosen: kernel-answered gateway + proxy ARP/NDP, no static entries):
# - Pods have on-link /24 and /64 prefixes and default routes via 10.244.1.1 / fd00:244:1::1.
#   The node holds those gateway addresses (/32, /128) on every pod-* interface, so its kernel
#   answers the pods' ARP and neighbour solicitations for the gateway (the XDP program passes
#   ARP and ND to the kernel).
# - A pod resolving another pod's address (on-link in its /24 or /64) gets the node's MAC:
#   proxy ARP (proxy_delay 0) and proxy NDP entries on the pod-* interfaces, backed by /32 and
#   /128 host routes to each pod. So every pod frame goes to the node, where nodeplane (or, when
#   it is not running, the node's kernel with forwarding on) handles it.
# - The gateway addresses are node-owned: nodeplane passes traffic to them to the kernel.
#
# NP_LAB_PREFIX (default "np-") prefixes the namespace names, so tests can build a private copy
# (interface names stay exactly as in examples/state/).
set -euo pipefail

P="${NP_LAB_PREFIX:-np-}"
NODE="${P}node"
ROUTER="${P}router"
# pod name : namespace suffix : node-side MAC : pod MAC : IPv4 : IPv6
PODS=(
  "client:02:00:00:00:01:01:02:00:00:00:02:0a:10.244.1.10:fd00:244:1::10"
  "web1:02:00:00:00:01:02:02:00:00:00:02:15:10.244.1.21:fd00:244:1::21"
  "web2:02:00:00:00:01:03:02:00:00:00:02:16:10.244.1.22:fd00:244:1::22"
)
GW4=10.244.1.1
GW6=fd00:244:1::1

die() { echo "lab.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# Splits a PODS entry into NAME NODE_MAC POD_MAC IP4 IP6.
pod_fields() {
  local e="$1"
  NAME="${e%%:*}"; e="${e#*:}"
  NODE_MAC="${e:0:17}"; e="${e:18}"
  POD_MAC="${e:0:17}"; e="${e:18}"
  IP4="${e%%:*}"; IP6="${e#*:}"
}

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

lab_down() {
  local ns pids
  for ns in "$NODE" "$ROUTER" "${P}client" "${P}web1" "${P}web2"; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
      # Processes still inside (the demo's servers) would keep the namespace, and its veths,
      # alive after its name is gone: end them first.
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [ -n "$pids" ]; then
        kill $pids 2>/dev/null || true
        sleep 0.2
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
      fi
      ip netns del "$ns"   # deletes the namespace's veths and their peers
    fi
  done
}

lab_up() {
  lab_down
  local ns
  for ns in "$NODE" "$ROUTER"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No duplicate address detection: addresses (link-local ones too) are usable at once.
    nsx "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
  done

  # Node: routing on (the kernel baseline when nodeplane is not running), no reverse-path
  # filter (the same gateway address lives on several interfaces).
  nsx "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv6.conf.all.proxy_ndp=1

  # Uplink: node uplink0 <-> router eth0.
  ip -n "$NODE" link add uplink0 address 02:00:00:00:00:01 numrxqueues 2 numtxqueues 2 type veth \
    peer name eth0 address 02:00:00:00:00:fe numrxqueues 2 numtxqueues 2 netns "$ROUTER"
  ip -n "$NODE" addr add 192.168.100.2/24 dev uplink0
  ip -n "$NODE" addr add fd00:100::2/64 dev uplink0 nodad
  ip -n "$NODE" link set uplink0 up
  ip -n "$ROUTER" addr add 192.168.100.1/24 dev eth0
  ip -n "$ROUTER" addr add fd00:100::1/64 dev eth0 nodad
  ip -n "$ROUTER" link set eth0 up
  ip -n "$NODE" route add default via 192.168.100.1
  ip -n "$NODE" -6 route add default via fd00:100::1
  nsx "$ROUTER" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  for r in 10.244.1.0/24 10.96.0.0/12 203.0.113.10/32; do
    ip -n "$ROUTER" route add "$r" via 192.168.100.2
  done
  for r in fd00:244:1::/64 fd00:96::/64; do
    ip -n "$ROUTER" -6 route add "$r" via fd00:100::2
  done

  # Pods.
  local e
  for e in "${PODS[@]}"; do
    pod_fields "$e"
    local pns="${P}${NAME}" nif="pod-${NAME}"
    ip netns add "$pns"
    ip -n "$pns" link set lo up
    nsx "$pns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
    ip -n "$NODE" link add "$nif" address "$NODE_MAC" numrxqueues 2 numtxqueues 2 type veth \
      peer name eth0 address "$POD_MAC" numrxqueues 2 numtxqueues 2 netns "$pns"
    ip -n "$NODE" link set "$nif" up
    ip -n "$NODE" addr add "$GW4/32" dev "$nif"
    ip -n "$NODE" addr add "$GW6/128" dev "$nif" nodad
    ip -n "$NODE" route add "$IP4/32" dev "$nif"
    ip -n "$NODE" -6 route add "$IP6/128" dev "$nif"
    nsx "$NODE" sysctl -qw "net.ipv4.conf.$nif.proxy_arp=1" "net.ipv4.neigh.$nif.proxy_delay=0" \
      "net.ipv6.conf.$nif.proxy_ndp=1" "net.ipv6.neigh.$nif.proxy_delay=0" \
      "net.ipv4.conf.$nif.rp_filter=0"

    ip -n "$pns" addr add "$IP4/24" dev eth0
    ip -n "$pns" addr add "$IP6/64" dev eth0 nodad
    ip -n "$pns" link set eth0 up
    ip -n "$pns" route add default via "$GW4"
    ip -n "$pns" -6 route add default via "$GW6"
  done

  # Proxy NDP: on each pod interface, answer for every other pod's IPv6 address.
  local a b
  for a in "${PODS[@]}"; do
    pod_fields "$a"; local nif="pod-${NAME}" self="$IP6"
    for b in "${PODS[@]}"; do
      pod_fields "$b"
      [ "$IP6" = "$self" ] || ip -n "$NODE" -6 neigh add proxy "$IP6" dev "$nif"
    done
  done
  echo "lab.sh: up ($NODE, $ROUTER, ${P}client, ${P}web1, ${P}web2)"
}

lab_status() {
  ip netns list | awk '{print $1}' | grep -E "^${P}(node|router|client|web1|web2)$" || true
  if ip netns list | awk '{print $1}' | grep -qx "$NODE"; then
    ip -n "$NODE" -br link
    ip -n "$NODE" -br addr
  fi
}

# The end-to-end demo: the nodeplane daemon (`nodeplane run --config`, AF_XDP I/O) on the lab's
# node with the bundled example state, real clients and servers in the pods and the router,
# then what the running daemon says about it (`nodeplane status`, `ct list`, `service list`, `explain`), a
# clean stop and the teardown. NODEPLANE_BIN overrides the binary (default: a release build of
# this checkout).
lab_demo() {
  local root bin tmp
  root="$(cd "$(dirname "$0")/.." && pwd)"
  # A fresh machine: install what the lab and the build need.
  bash "$root/scripts/setup.sh"
  if [ -n "${NODEPLANE_BIN:-}" ]; then
    bin="$NODEPLANE_BIN"
  else
    echo "lab.sh: building nodeplane (release)"
    (cd "$root" && cargo build --release -q -p nodeplane-control)
    bin="${CARGO_TARGET_DIR:-$root/target}/release/nodeplane"
  fi
  tmp="$(mktemp -d /tmp/np-demo.XXXXXX)"
  DEMO_TMP="$tmp"
  trap 'demo_cleanup' EXIT
  lab_up

  local w ns
  # The answering commands read the request first (a socat SYSTEM: child that exits before
  # socat wrote the request to it makes socat drop the answer; docs/runtime.md).
  printf '#!/bin/sh\nread -r req\nprintf "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from %%s\\n" "$1"\n' > "$tmp/http.sh"
  for w in web1 web2; do
    ns="${P}${w}"
    nsx "$ns" socat TCP6-LISTEN:8080,ipv6only=0,reuseaddr,fork \
      SYSTEM:"sh $tmp/http.sh $w" >/dev/null 2>&1 &
    nsx "$ns" socat UDP4-RECVFROM:5353,fork SYSTEM:"read -r q; echo answer from $w" >/dev/null 2>&1 &
    nsx "$ns" socat UDP4-RECVFROM:8080,fork SYSTEM:"read -r q; echo udp answer from $w" >/dev/null 2>&1 &
    nsx "$ns" socat TCP-LISTEN:9050,reuseaddr,fork SYSTEM:"echo should not be reached" >/dev/null 2>&1 &
  done

  local sock="$tmp/nodeplane.sock"
  cat > "$tmp/config.yaml" <<CFG
# nodeplane daemon config written by lab.sh demo (docs/config.md)
state:
  dir: $root/examples/state
control_socket: $sock
log_level: info
# The lab's own: a demo never leaves (or restores) flows in the host's /var/lib/nodeplane.
conntrack_snapshot: $tmp/conntrack.snap
io:
  afxdp:
    workers: 1
    # The daemon runs in the namespace's private mount namespace (ip netns exec), where a
    # bpffs pin would vanish with it: not pinned, the program goes with the process.
    pin_dir: null
CFG
  echo "== nodeplane run --config $tmp/config.yaml (in $NODE)"
  sed 's/^/   /' "$tmp/config.yaml"
  nsx "$NODE" bash -c "echo \$\$ > $tmp/pid; exec $bin run --config $tmp/config.yaml" \
    2> "$tmp/nodeplane.log" &
  local i
  for i in $(seq 100); do
    "$bin" status --socket "$sock" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$bin" status --socket "$sock" >/dev/null 2>&1 || { cat "$tmp/nodeplane.log" >&2; die "nodeplane did not start"; }

  demo_step pass "client -> ClusterIP 10.96.0.10:80/TCP (service web, DNAT to a web pod)" \
    nsx "${P}client" curl -sS -m 3 http://10.96.0.10/
  demo_step pass "client -> ClusterIP [fd00:96::10]:80/TCP (IPv6)" \
    nsx "${P}client" curl -sS -m 3 "http://[fd00:96::10]/"
  demo_step pass "client -> ClusterIP 10.96.0.53:53/UDP (service dns, backend port 5353)" \
    bash -c "echo query | ip netns exec ${P}client socat -T2 - UDP4:10.96.0.53:53"
  demo_step pass "router -> NodePort 192.168.100.2:30080/TCP (service web-nodeport; world allowed on TCP 8080)" \
    nsx "$ROUTER" curl -sS -m 3 http://192.168.100.2:30080/
  demo_step pass "router -> NodePort 192.168.100.2:30054/UDP (service dns-nodeport, backend port 5353; world allowed on UDP 5353)" \
    bash -c "echo query | ip netns exec $ROUTER socat -T2 - UDP4:192.168.100.2:30054 | grep . || { echo '(no answer)'; exit 1; }"
  demo_step block "client -> web-1 10.244.1.21:9050/TCP (a denied connection: web's deny rule; expect a timeout)" \
    nsx "${P}client" curl -sS -m 2 http://10.244.1.21:9050/
  demo_step block "router -> NodePort 192.168.100.2:30053/UDP (web-nodeport's UDP port reaches 8080/UDP, which web does not allow from the world; a server listens there: expect no answer)" \
    bash -c "echo query | ip netns exec $ROUTER socat -T2 - UDP4:192.168.100.2:30053 | grep . || { echo '(no answer: dropped by policy)'; exit 1; }"
  demo_step pass "web-1 -> client ping (pod to pod)" \
    nsx "${P}web1" ping -c 2 -i 0.2 -W 2 10.244.1.10
  demo_step pass "client -> 10.244.1.1 ping (the node itself: left to the kernel)" \
    nsx "${P}client" ping -c 1 -W 2 10.244.1.1

  echo
  echo "== nodeplane status (the running daemon)"
  "$bin" status --socket "$sock" || true
  echo
  echo "== nodeplane ct list"
  "$bin" ct list --socket "$sock" || true
  echo
  echo "== nodeplane service list (with the traffic each service saw)"
  "$bin" service list --socket "$sock" || true
  echo
  echo "== nodeplane explain --iface pod-client --proto tcp --src 10.244.1.10:40000 --dst 10.244.1.21:9050"
  "$bin" explain --socket "$sock" --iface pod-client --proto tcp \
    --src 10.244.1.10:40000 --dst 10.244.1.21:9050 || true
  echo
  echo "== nodeplane explain --iface uplink0 --proto tcp --src 192.168.100.1:50000 --dst 192.168.100.2:30080"
  "$bin" explain --socket "$sock" --iface uplink0 --proto tcp \
    --src 192.168.100.1:50000 --dst 192.168.100.2:30080 || true

  echo
  echo "== stopping nodeplane (SIGTERM)"
  kill -TERM "$(cat "$tmp/pid")"
  for i in $(seq 50); do kill -0 "$(cat "$tmp/pid")" 2>/dev/null || break; sleep 0.1; done
  grep -E 'stopped|detached|ERROR|level=error' "$tmp/nodeplane.log" | sed 's/^/   /'
  # The kernel detaches a closed BPF link under the RTNL lock: give it a moment.
  for i in $(seq 30); do ip -n "$NODE" -d link show | grep -q "prog/xdp" || break; sleep 0.1; done
  if ip -n "$NODE" -d link show | grep -q "prog/xdp"; then
    die "an XDP program is still attached"
  fi
  echo "no XDP program left attached"
  [ -z "${DEMO_BAD:-}" ] || die "some traffic did not do what the state says (see above)"
}

# demo_step pass|block TITLE CMD...: runs CMD and says whether that is what the state wants.
demo_step() {
  local want="$1" title="$2"; shift 2
  echo
  echo "== $title"
  if "$@"; then
    [ "$want" = pass ] && echo "-> ok" || { echo "-> UNEXPECTED: went through"; DEMO_BAD=1; }
  else
    [ "$want" = block ] && echo "-> blocked, as the policy says" || { echo "-> UNEXPECTED: failed"; DEMO_BAD=1; }
  fi
}

demo_cleanup() {
  if [ -n "${DEMO_TMP:-}" ] && [ -s "$DEMO_TMP/pid" ]; then
    kill -TERM "$(cat "$DEMO_TMP/pid")" 2>/dev/null || true
    sleep 0.3
  fi
  lab_down
  [ -n "${DEMO_TMP:-}" ] && rm -rf "$DEMO_TMP"
  echo "lab.sh: demo done, lab deleted"
}

case "${1:-}" in
  up) lab_up ;;
  down) lab_down; echo "lab.sh: down" ;;
  status) lab_status ;;
  demo) lab_demo ;;
  *) echo "usage: $0 up|down|status|demo" >&2; exit 2 ;;
esac
