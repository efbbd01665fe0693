#!/usr/bin/env bash
# The example node (examples/state/) built from network namespaces, for running nodeplane on
# real AF_XDP sockets over veth.
#
#   scripts/lab.sh up      create the lab (recreates it if it exists)
#   scripts/lab.sh down    delete everything it created, by name; idempotent
#   scripts/lab.sh status  list the lab's namespaces and the node's interfaces
#   scripts/lab.sh demo    (reserved: the lead's end-to-end demo)
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
# Every veth has 2 RX and 2 TX queues. Pods and the router have TX checksum offload off on eth0
# (a kernel sending on veth otherwise leaves partial TCP/UDP checksums that AF_XDP passes on as
# is).
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
  local ns
  for ns in "$NODE" "$ROUTER" "${P}client" "${P}web1" "${P}web2"; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
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
  # The router's kernel sends on a veth too: without this its TCP/UDP checksums stay partial
  # in the frames nodeplane receives over AF_XDP (node requirement, docs/runtime.md).
  nsx "$ROUTER" ethtool -K eth0 tx off >/dev/null
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
    nsx "$pns" ethtool -K eth0 tx off >/dev/null
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

# The end-to-end demo (nodeplane on the lab, traffic from client and router) belongs to the
# lead (issue 3, item 5); it goes here.
lab_demo() {
  die "demo is not written yet (issue 3 item 5)"
}

case "${1:-}" in
  up) lab_up ;;
  down) lab_down; echo "lab.sh: down" ;;
  status) lab_status ;;
  demo) lab_demo ;;
  *) echo "usage: $0 up|down|status|demo" >&2; exit 2 ;;
esac
