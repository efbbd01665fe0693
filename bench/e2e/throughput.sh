#!/usr/bin/env bash
# Pod-traffic throughput benchmark (issue 10 item 2): real kernel clients and servers in pods
# at their Linux defaults, three paths, three dataplanes, one topology, one run.
#
#   bench/e2e/throughput.sh [--quick] [--out bench/e2e/throughput.json]
#                           [--dataplanes nodeplane,nft,iptables]   (experiments: tc-ceiling,tc-ceiling-xdp)
#                           [--paths clusterip,pod,nodeport]
#                           [--tests stream1,stream4,rr,crr,udp]
#
#   np-tp-rtr  eth0 02:00:00:00:00:fe 192.168.100.1/24 (the router: NodePort client)
#        |
#   +----+-------------------------------------------------------------------------+
#   | np-tp-node  uplink0 02:00:00:00:00:01 192.168.100.2/24 (node IP)             |
#   |             pod-a ..:01:01   pod-b ..:01:02   (each holds the gateway 10.244.1.1/32, |
#   |             proxy ARP for the pods: every pod frame goes to the node)         |
#   +----+---------------------------+---------------------------------------------+
#   np-tp-pa eth0 ..:02:0a            np-tp-pb eth0 ..:02:15
#   10.244.1.10/24 (client pod)       10.244.1.21/24 (server pod: iperf3 on 5201,
#                                     bench/src/bin/rr.rs on 7000 and 7001 (pod path),
#                                     UDP sink on 5353)
#
# Every veth has 2 RX and 2 TX queues. Services (bench/e2e/tp-state/, the same for every
# dataplane): ClusterIP 10.96.0.10 ports 5201/TCP, 7000/TCP, 53/UDP (-> 5353), NodePorts
# 30201, 30700, 30053/UDP on 192.168.100.2; the one backend is the server pod.
#
# Paths:  clusterip  client pod -> 10.96.0.10:PORT -> server pod (DNAT on the node)
#         pod        client pod -> 10.244.1.21:PORT (routed through the node, no NAT)
#         nodeport   router -> 192.168.100.2:NODEPORT -> server pod
# Tests:  stream1/stream4  TCP_STREAM, iperf3 -t STREAM_SECS, 1 and 4 streams (Gbit/s received)
#         rr    TCP_RR: one connection, 1-byte request/response (bench/src/bin/rr.rs): p50, p99
#               latency (µs) and transactions/s
#         crr   TCP_CRR: a new connection per transaction, 4 client threads: connections/s
#         udp   64-byte frames (60 + FCS) of UDP from trafgen in the client pod (or the router),
#               source port counting through 50 000 values: packets/s that reach the server
#               pod's eth0 with the backend's address and port (counted by a netdev ingress
#               rule there, which drops them)
# Dataplanes:
#         nodeplane  the daemon, `nodeplane run --config` with `io: afxdp`, 1 worker, on the
#                    node's three veths (conntrack, Maglev DNAT, ingress policy)
#         nodeplane-fast  the same with `io.afxdp.fast_path: tc` (issue 10): no XDP on the pod
#                    veths (pods keep TSO), a TC program forwards the flow directions the worker
#                    offered, misses go up to it through npslow0/npslow1
#         nft        the kernel: kube-proxy's nftables-mode layout (table ip kube-proxy,
#                    service-ips / service-nodeports verdict maps, service-/endpoint-/external-
#                    chains, masquerade of NodePort traffic by mark), conntrack
#         iptables   the kernel: kube-proxy's iptables-mode chains (KUBE-SERVICES, KUBE-SVC-*,
#                    KUBE-SEP-*, KUBE-EXT-*, KUBE-NODEPORTS, KUBE-MARK-MASQ, KUBE-POSTROUTING,
#                    KUBE-FORWARD), loaded with iptables-nft-restore
# Experiments (only when named in --dataplanes; ceilings, not products; bench/e2e/tc-ceiling/):
#         tc-ceiling      a TC program on the node's veths does the services' DNAT and reverse
#                         NAT from BPF maps and forwards with bpf_redirect_peer / bpf_redirect
#                         (GSO skbs kept whole; no XDP, pods keep TSO; no policy, no userspace)
#         tc-ceiling-xdp  the same, plus an XDP_PASS program attached natively to the same veths
#                         (TSO off on the pods, as with nodeplane): the cost of XDP alone
#                         Both need clang, bpftool and nsenter; their hit counters go in the JSON.
# Pods and the router are at their Linux defaults: no offload is changed. When nodeplane
# attaches XDP to the node's veths, the kernel turns TSO off on the pods' side itself (GSO
# and TX checksum offload stay on); the offloads seen are recorded per dataplane.
# TP_PODS_TX_CSUM_OFF=1 turns TX checksumming off in the pods and the router instead (for
# every dataplane; TP_PODS_TX_CSUM_OFF=nodeplane: only while nodeplane runs): NOT the default,
# NOT a result; it only checks the nodeplane wiring while nodeplane cannot complete partial
# checksums (every such line of output, and every such figure in the table, says so).
#
# CPU placement (2 cores): the clients, servers and trafgen on APP_CPU (default 0; trafgen
# -P 1 always pins itself to CPU 0), the nodeplane daemon (its one worker) on NP_CPU (default
# 1). The kernel dataplanes forward in softirq on the CPU that sends on the veth (on veth the
# receive side runs on the sender's CPU), i.e. mostly APP_CPU. Each case records how busy both cores were. Everything measured
# runs at nice TP_NICE (default -10); other jobs share the machine: compare only ratios of
# one run.
#
# A case that fails (no connection, a timeout) is reported as failed with its error and the
# TcpInCsumErrors / UdpInCsumErrors counters of both pods, and the run goes on; the exit
# code is 1 if any case failed. Namespaces (np-tp-*, or TP_PREFIX*) are deleted on exit, also on
# failure.
#
# Environment: NODEPLANE_BIN, RR_BIN (default: release builds of this checkout, built if
# missing), APP_CPU, NP_CPU, TP_NICE, TP_PODS_TX_CSUM_OFF, TP_AFXDP (extra `io.afxdp` keys for
# nodeplane, e.g. TP_AFXDP='busy_poll_us: 0, ring_size: 1024'), TP_MTU (every veth's MTU, default
# 1500; above 1778 nodeplane needs TP_AFXDP='frame_size: 4096'; veth's XDP limit is 3506 unless
# TP_AFXDP also has 'multi_buffer: true', then up to 65000),
# TP_WORKERS (nodeplane's workers, default 1; for 2 also NP_CPU=0,1: worker w pins to the w-th
# core), TP_PERF=1 (perf record of both cores during the clusterip stream1 case of every
# dataplane, top symbols in the JSON).
# Needs root, iproute2, nftables, iptables (iptables-nft-restore), conntrack, iperf3,
# trafgen (netsniff-ng), ethtool, nstat, python3; installs iperf3 and iptables if missing.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/throughput.json"
DATAPLANES="nodeplane,nft,iptables"
PATHS="clusterip,pod,nodeport"
TESTS="stream1,stream4,rr,crr,udp"
STREAM_SECS=10
RR_SECS=5
UDP_SECS=5
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; STREAM_SECS=3; RR_SECS=2; UDP_SECS=2; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --dataplanes) DATAPLANES="$2"; shift 2 ;;
    --paths) PATHS="$2"; shift 2 ;;
    --tests) TESTS="$2"; shift 2 ;;
    *) echo "usage: $0 [--quick] [--out FILE] [--dataplanes nodeplane,nodeplane-fast,nft,iptables] [--paths clusterip,pod,nodeport] [--tests stream1,stream4,rr,crr,udp]" >&2; exit 2 ;;
  esac
done
APP_CPU="${APP_CPU:-0}"
NP_CPU="${NP_CPU:-1}"
NICE="${TP_NICE:--10}"
CSUM_OFF="${TP_PODS_TX_CSUM_OFF:-0}"
UDP_FLOWS=50000
CLUSTER_CIDR=10.244.0.0/16

# TP_PREFIX: namespace name prefix (default np-tp-), so that runs of several people on one
# machine do not meet.
P="${TP_PREFIX:-np-tp-}"
NODE=${P}node
RTR=${P}rtr
PA=${P}pa
PB=${P}pb
RTR_MAC=02:00:00:00:00:fe
UP_MAC=02:00:00:00:00:01
PODA_NODE_MAC=02:00:00:00:01:01
PODB_NODE_MAC=02:00:00:00:01:02
PA_MAC=02:00:00:00:02:0a
PB_MAC=02:00:00:00:02:15
NODE_IP=192.168.100.2
RTR_IP=192.168.100.1
CLIENT_IP=10.244.1.10
SERVER_IP=10.244.1.21
VIP=10.96.0.10
GW=10.244.1.1

die() { echo "throughput: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# Preflight: iperf3 and iptables come from Debian (scripts/setup.sh lists them too).
need_pkgs=()
command -v iperf3 >/dev/null || need_pkgs+=(iperf3)
command -v iptables-nft-restore >/dev/null || need_pkgs+=(iptables)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "throughput: installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; }
fi
for t in ip nft iptables-nft-restore conntrack iperf3 trafgen ethtool nstat python3 taskset ss timeout; do
  command -v "$t" >/dev/null || die "needs $t"
done

TMP="$(mktemp -d /tmp/np-tp.XXXXXX)"
NP_PID=""
BG_PIDS=()
# shellcheck source-path=SCRIPTDIR source=tc-ceiling/dataplane.sh
. "$HERE/tc-ceiling/dataplane.sh"

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
topo_down() {
  local ns pids
  for ns in "$NODE" "$RTR" "$PA" "$PB"; do
    ns_exists "$ns" || continue
    # Processes still inside (servers) would keep the namespace's veths alive: end them first.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill $pids 2>/dev/null || true
      sleep 0.3
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
  done
}
cleanup() {
  local rc=$? p
  [ -n "$NP_PID" ] && kill -TERM "$NP_PID" 2>/dev/null || true
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  tc_ceiling_down
  topo_down
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
# A measured process in a namespace: pinned to APP_CPU, at nice NICE.
app() { local ns="$1"; shift; ip netns exec "$ns" nice -n "$NICE" taskset -c "$APP_CPU" "$@"; }

# ---------------------------------------------------------------- binaries
if [ -z "${NODEPLANE_BIN:-}" ] || [ -z "${RR_BIN:-}" ]; then
  echo "throughput: building nodeplane and rr (release)"
  (cd "$ROOT" && cargo build --release -q -p nodeplane-control --bin nodeplane \
     && cargo build --release -q -p nodeplane-bench --bin rr)
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
NP="${NODEPLANE_BIN:-$TARGET/release/nodeplane}"
RR="${RR_BIN:-$TARGET/release/rr}"
STATE="$HERE/tp-state"
"$NP" state check "$STATE" >/dev/null || die "bench/e2e/tp-state does not load"

# ---------------------------------------------------------------- topology
topo_up() {
  topo_down
  local ns
  for ns in "$NODE" "$RTR" "$PA" "$PB"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No IPv6 chatter (router solicitations, MLD) on the measured links.
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  # Node: routing on, no reverse-path filter (the gateway address is on both pod interfaces).
  nsx "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0
  ip -n "$NODE" link add uplink0 address $UP_MAC numrxqueues 2 numtxqueues 2 type veth \
    peer name eth0 address $RTR_MAC numrxqueues 2 numtxqueues 2 netns "$RTR"
  ip -n "$NODE" addr add $NODE_IP/24 dev uplink0
  ip -n "$NODE" link set uplink0 up
  ip -n "$NODE" route add default via $RTR_IP
  ip -n "$RTR" addr add $RTR_IP/24 dev eth0
  ip -n "$RTR" link set eth0 up
  ip -n "$RTR" route add 10.244.1.0/24 via $NODE_IP
  ip -n "$RTR" route add 10.96.0.0/12 via $NODE_IP
  local name nmac pmac pip pns
  for e in "a:$PODA_NODE_MAC:$PA_MAC:$CLIENT_IP" "b:$PODB_NODE_MAC:$PB_MAC:$SERVER_IP"; do
    IFS=: read -r name m1 m2 m3 m4 m5 m6 p1 p2 p3 p4 p5 p6 pip <<< "$e"
    nmac="$m1:$m2:$m3:$m4:$m5:$m6"; pmac="$p1:$p2:$p3:$p4:$p5:$p6"; pns="${P}p$name"
    ip -n "$NODE" link add "pod-$name" address "$nmac" numrxqueues 2 numtxqueues 2 type veth \
      peer name eth0 address "$pmac" numrxqueues 2 numtxqueues 2 netns "$pns"
    ip -n "$NODE" link set "pod-$name" up
    ip -n "$NODE" addr add "$GW/32" dev "pod-$name"
    ip -n "$NODE" route add "$pip/32" dev "pod-$name"
    nsx "$NODE" sysctl -qw "net.ipv4.conf.pod-$name.proxy_arp=1" \
      "net.ipv4.neigh.pod-$name.proxy_delay=0" "net.ipv4.conf.pod-$name.rp_filter=0"
    ip -n "$pns" addr add "$pip/24" dev eth0
    ip -n "$pns" link set eth0 up
    ip -n "$pns" route add default via $GW
  done
  # TP_MTU: every veth end (pods, router, node) at this MTU (default 1500).
  if [ "${TP_MTU:-1500}" != 1500 ]; then
    for name in uplink0 pod-a pod-b; do ip -n "$NODE" link set "$name" mtu "$TP_MTU"; done
    for ns in "$RTR" "${P}pa" "${P}pb"; do ip -n "$ns" link set eth0 mtu "$TP_MTU"; done
  fi
  # Neighbours resolved once by the kernels (nodeplane reads the uplink gateway's entry).
  nsx "$NODE" ping -c 1 -W 1 $RTR_IP >/dev/null || die "router does not answer ARP"
  nsx "$PA" ping -c 1 -W 1 $GW >/dev/null || die "node does not answer the client pod"
  nsx "$PB" ping -c 1 -W 1 $GW >/dev/null || die "node does not answer the server pod"
}

# ---------------------------------------------------------------- servers (server pod)
# rr runs for the whole run; iperf3 is started for each case (-1: one test, then exit), so a
# client that failed mid-test never leaves it stuck.
servers_up() {
  # Two rr servers: 7000 behind the services, 7001 for the pod path. The server closes the
  # crr connections first, so it holds their TIME_WAITs, keyed by the tuple it sees (client
  # pod -> 10.244.1.21:PORT). The client's TCP timestamps are offset per destination address
  # (10.96.0.10 or 10.244.1.21), so on one port a pod-path SYN could meet a TIME_WAIT of the
  # ClusterIP case with a higher timestamp: PAWS rejects it (TcpExtPAWSTimewait) and the
  # client retransmits the SYN a second later. A port per path keeps the cases apart.
  local port
  for port in 7000 7001; do
    ip netns exec "$PB" nice -n "$NICE" taskset -c "$APP_CPU" "$RR" server --listen 0.0.0.0:$port \
      > /dev/null 2>> "$TMP/rr-server.log" &
    BG_PIDS+=($!)
    wait_listen tcp $port || die "rr server did not start: $(cat "$TMP/rr-server.log")"
  done
  # The UDP sink: a netdev ingress rule counts (and drops) what reaches the server pod's eth0
  # for the backend port; only enabled during udp cases (chain policy accept otherwise).
  nsx "$PB" nft -f - <<EOF
table netdev tpsink {
  counter udp5353 {}
  chain in { type filter hook ingress device "eth0" priority 0; policy accept; }
}
EOF
}
wait_listen() {
  local proto="$1" port="$2" i
  for i in $(seq 50); do
    nsx "$PB" ss -Hln"${proto:0:1}" "sport = :$port" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- dataplanes
# kube-proxy's names: a hash of the service port name and protocol (as proxy/iptables and
# proxy/nftables derive them; the exact hash does not matter, the shape does).
svc_hash() { printf '%s' "$1" | sha256sum | cut -c1-16 | tr 'a-f' 'A-F'; }

# name:proto:clusterport:nodeport:targetport
SERVICES=("tp-iperf:tcp:5201:30201:5201" "tp-rr:tcp:7000:30700:7000" "tp-udp:udp:53:30053:5353")

nft_rules() {
  local s name proto cport nport tport h svc ep ext
  local svc_elems="" np_elems="" chains=""
  for s in "${SERVICES[@]}"; do
    IFS=: read -r name proto cport nport tport <<< "$s"
    h=$(svc_hash "bench/$name:p$cport$proto" | cut -c1-8)
    svc="service-$h-bench/$name/$proto/p$cport"
    ep="endpoint-$(svc_hash "$svc$SERVER_IP" | cut -c1-8)-bench/$name/$proto/p${cport}__$SERVER_IP/$tport"
    ext="external-$h-bench/$name/$proto/p$cport"
    svc_elems+="$VIP . $proto . $cport : goto $svc, "
    np_elems+="$proto . $nport : goto $ext, "
    chains+="
  chain $svc {
    ip daddr $VIP $proto dport $cport ip saddr != $CLUSTER_CIDR jump mark-for-masquerade
    numgen random mod 1 vmap { 0 : goto $ep }
  }
  chain $ep {
    ip saddr $SERVER_IP jump mark-for-masquerade
    meta l4proto $proto dnat to $SERVER_IP:$tport
  }
  chain $ext {
    jump mark-for-masquerade
    goto $svc
  }"
  done
  cat <<EOF
table ip kube-proxy {
  comment "rules for kube-proxy (layout of kube-proxy's nftables mode; bench/e2e/throughput.sh)"
  set cluster-ips { type ipv4_addr; elements = { $VIP } }
  set nodeport-ips { type ipv4_addr; elements = { $NODE_IP } }
  map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }
  map no-endpoint-nodeports { type inet_proto . inet_service : verdict; }
  map firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; elements = { ${svc_elems%, } } }
  map service-nodeports { type inet_proto . inet_service : verdict; elements = { ${np_elems%, } } }
  chain filter-prerouting {
    type filter hook prerouting priority dstnat - 10; policy accept;
    ct state new jump firewall-check
  }
  chain filter-input {
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain filter-output {
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain nat-prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }
  chain nat-output {
    type nat hook output priority -100; policy accept;
    jump services
  }
  chain nat-postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump masquerading
  }
  chain firewall-check {
    ip daddr . meta l4proto . th dport vmap @firewall-ips
  }
  chain cluster-ips-check {
    ip daddr @cluster-ips reject
    ip daddr 10.96.0.0/12 drop
  }
  chain service-endpoints-check {
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }
  chain nodeport-endpoints-check {
    ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
  }
  chain mark-for-masquerade {
    meta mark set meta mark or 0x4000
  }
  chain masquerading {
    meta mark & 0x4000 == 0 return
    meta mark set meta mark xor 0x4000
    masquerade fully-random
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
    ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
  }$chains
}
EOF
}

iptables_rules() {
  local s name proto cport nport tport h sep decl="" rules=""
  for s in "${SERVICES[@]}"; do
    IFS=: read -r name proto cport nport tport <<< "$s"
    h=$(svc_hash "bench/$name:p$cport$proto")
    sep=$(svc_hash "bench/$name:p$cport$proto$SERVER_IP:$tport")
    decl+=":KUBE-SVC-$h - [0:0]
:KUBE-EXT-$h - [0:0]
:KUBE-SEP-$sep - [0:0]
"
    rules+="-A KUBE-SERVICES -m comment --comment \"bench/$name:p$cport cluster IP\" -m $proto -p $proto -d $VIP/32 --dport $cport -j KUBE-SVC-$h
-A KUBE-NODEPORTS -m comment --comment bench/$name:p$cport -m $proto -p $proto --dport $nport -j KUBE-EXT-$h
-A KUBE-EXT-$h -m comment --comment \"masquerade traffic for bench/$name:p$cport external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-$h -j KUBE-SVC-$h
-A KUBE-SVC-$h -m comment --comment \"bench/$name:p$cport cluster IP\" -m $proto -p $proto -d $VIP/32 --dport $cport ! -s $CLUSTER_CIDR -j KUBE-MARK-MASQ
-A KUBE-SVC-$h -m comment --comment \"bench/$name:p$cport -> $SERVER_IP:$tport\" -j KUBE-SEP-$sep
-A KUBE-SEP-$sep -m comment --comment bench/$name:p$cport -s $SERVER_IP/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-$sep -m comment --comment bench/$name:p$cport -m $proto -p $proto -j DNAT --to-destination $SERVER_IP:$tport
"
  done
  cat <<EOF
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
$decl-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
$rules-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
EOF
}

wait_xdp() {
  local i ifc ok
  for i in $(seq 100); do
    ok=1
    for ifc in uplink0 pod-a pod-b; do
      ip -n "$NODE" -d link show "$ifc" | grep -q "prog/xdp" || ok=0
    done
    if [ "$ok" = 1 ]; then
      sleep 0.5
      kill -0 "$NP_PID" 2>/dev/null && return 0
      return 1
    fi
    kill -0 "$NP_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# TP_PODS_TX_CSUM_OFF: TX checksumming off in the pods and the router for every dataplane (1)
# or only while the named one runs (e.g. nodeplane); on (the default) otherwise.
TX_OFF_NOW=0
set_tx() {
  local ns state=on
  TX_OFF_NOW=0
  if [ "$CSUM_OFF" = 1 ] || [ "$CSUM_OFF" = "$1" ]; then state=off; TX_OFF_NOW=1; fi
  for ns in "$PA" "$PB" "$RTR"; do nsx "$ns" ethtool -K eth0 tx "$state" >/dev/null; done
}

# nodeplane-fast: XDP on uplink0 and npslow1 (not on the pod veths), the TC program on them.
wait_fast() {
  local i
  for i in $(seq 100); do
    if ip -n "$NODE" -d link show uplink0 | grep -q "prog/xdp" \
      && ip -n "$NODE" -d link show npslow1 2>/dev/null | grep -q "prog/xdp" \
      && "$NP" status --socket "$TMP/np.sock" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["io"].get("fast_path") is not None and d["generation"] >= 1 else 1)'; then
      sleep 0.5
      kill -0 "$NP_PID" 2>/dev/null && return 0
      return 1
    fi
    kill -0 "$NP_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

dp_start() {
  set_tx "$1"
  local afxdp="${TP_AFXDP:-}"
  [ "$1" = nodeplane-fast ] && afxdp="fast_path: tc${TP_AFXDP:+, $TP_AFXDP}"
  case "$1" in
    nodeplane|nodeplane-fast)
      cat > "$TMP/config.yaml" <<EOF
state:
  dir: $STATE
control_socket: $TMP/np.sock
workers: ${TP_WORKERS:-1}
log_level: warn
# No conntrack snapshot: the default path (/var/lib/nodeplane/conntrack.snap) would carry
# one case's flows into the next start (and into other jobs' daemons on this machine).
conntrack_snapshot: null
io:
  afxdp: {$afxdp}
EOF
      # The whole process on NP_CPU (its worker pins itself to the first core it may use).
      ip netns exec "$NODE" nice -n "$NICE" taskset -c "$NP_CPU" "$NP" run --config "$TMP/config.yaml" \
        > /dev/null 2> "$TMP/np.log" &
      NP_PID=$!
      if [ "$1" = nodeplane-fast ]; then
        wait_fast || { cat "$TMP/np.log" >&2; die "nodeplane (fast_path: tc) did not start its fast path"; }
      else
        wait_xdp || { cat "$TMP/np.log" >&2; die "nodeplane did not attach XDP to uplink0, pod-a and pod-b"; }
      fi
      # The worker's CPU use with no traffic (busy polling must not spin when idle).
      sleep 1
      local t0 t1
      t0=$(awk '{print $14 + $15}' "/proc/$NP_PID/stat"); sleep 3
      t1=$(awk '{print $14 + $15}' "/proc/$NP_PID/stat")
      echo "throughput: nodeplane idle: $(python3 -c "print(round(($t1 - $t0) * 100 / $(getconf CLK_TCK) / 3, 1))") % of a core over 3 s"
      ;;
    nft)
      nft_rules > "$TMP/nft.rules"
      nsx "$NODE" nft -f "$TMP/nft.rules" || die "nft rules rejected ($TMP/nft.rules)"
      ;;
    iptables)
      iptables_rules > "$TMP/iptables.rules"
      nsx "$NODE" iptables-nft-restore < "$TMP/iptables.rules" || die "iptables-nft-restore failed"
      ;;
    tc-ceiling|tc-ceiling-xdp) tc_ceiling_up "$1" ;;
    *) die "unknown dataplane $1" ;;
  esac
}

dp_stop() {
  case "$1" in
    nodeplane|nodeplane-fast)
      kill -TERM "$NP_PID" 2>/dev/null || true
      wait "$NP_PID" 2>/dev/null || true
      NP_PID=""
      local i
      for i in $(seq 100); do
        if ! ip -n "$NODE" -d link show | grep -q "prog/xdp\|npslow"; then return 0; fi
        sleep 0.1
      done
      die "nodeplane left XDP attached (or its slow-path pair)"
      ;;
    nft|iptables)
      nsx "$NODE" nft flush ruleset
      nsx "$NODE" conntrack -F >/dev/null 2>&1 || true
      ;;
    tc-ceiling|tc-ceiling-xdp)
      tc_ceiling_down
      tc_ceiling_gone
      ;;
  esac
}

# Between cases: no flow of a previous case left in the dataplane's table.
dp_flush() {
  case "$1" in
    nodeplane|nodeplane-fast) "$NP" ct flush --socket "$TMP/np.sock" >/dev/null 2>&1 || true ;;
    *) nsx "$NODE" conntrack -F >/dev/null 2>&1 || true ;;
  esac
}

# Counters of the dataplane after a case, for the JSON.
dp_snapshot() {
  case "$1" in
    nodeplane|nodeplane-fast) "$NP" status --socket "$TMP/np.sock" --json 2>/dev/null || echo null ;;
    tc-ceiling|tc-ceiling-xdp) echo "{\"tc_hits\": $(tc_hits)}" ;;
    *) echo "{\"conntrack_entries\": $(nsx "$NODE" conntrack -C 2>/dev/null || echo -1)}" ;;
  esac
}

offloads() {
  local ns="$1"
  nsx "$ns" ethtool -k eth0 | awk -F': ' '/^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):/ {printf "%s=%s ", $1, $2}'
}

# ---------------------------------------------------------------- cases
# src namespace, destination address and ports for a path.
path_target() {
  case "$1" in
    clusterip) SRC_NS=$PA; DST=$VIP; P_IPERF=5201; P_RR=7000; P_UDP=53
      SRC_MAC=$PA_MAC; DST_MAC=$PODA_NODE_MAC; SRC_IP=$CLIENT_IP ;;
    pod) SRC_NS=$PA; DST=$SERVER_IP; P_IPERF=5201; P_RR=7001; P_UDP=5353
      SRC_MAC=$PA_MAC; DST_MAC=$PODA_NODE_MAC; SRC_IP=$CLIENT_IP ;;
    nodeport) SRC_NS=$RTR; DST=$NODE_IP; P_IPERF=30201; P_RR=30700; P_UDP=30053
      SRC_MAC=$RTR_MAC; DST_MAC=$UP_MAC; SRC_IP=$RTR_IP ;;
    *) die "unknown path $1" ;;
  esac
}

# Every SNMP/netstat counter of the pods and the router (the JSON keeps those that moved;
# TcpInCsumErrors / UdpInCsumErrors are what a failed nodeplane case shows).
pod_counters() {
  local ns
  for ns in "$PA" "$PB" "$RTR"; do
    nsx "$ns" nstat -saz 2>/dev/null | awk -v ns="$ns" '!/^#/ {printf "%s/%s=%s ", ns, $1, $2}'
  done
}
cpu_sample() { grep '^cpu[0-9]' /proc/stat; }

# Runs one case; writes its raw result to $TMP/case.out and its verdict to $TMP/case.rc.
run_case() {
  local test="$1" rc=0
  : > "$TMP/case.out"; : > "$TMP/case.err"
  case "$test" in
    stream1|stream4)
      local n=${test#stream}
      ip netns exec "$PB" nice -n "$NICE" taskset -c "$APP_CPU" iperf3 -s -1 -p 5201 \
        > /dev/null 2>&1 &
      local srv=$!
      wait_listen tcp 5201 || { echo "iperf3 server did not start" > "$TMP/case.err"; kill "$srv" 2>/dev/null || true; echo 1 > "$TMP/case.rc"; return; }
      timeout -k 2 $((STREAM_SECS + 15)) ip netns exec "$SRC_NS" nice -n "$NICE" taskset -c "$APP_CPU" \
        iperf3 -c "$DST" -p "$P_IPERF" -t "$STREAM_SECS" -P "$n" -J --connect-timeout 3000 \
        > "$TMP/case.out" 2> "$TMP/case.err" || rc=$?
      kill "$srv" 2>/dev/null || true
      wait "$srv" 2>/dev/null || true
      ;;
    rr)
      timeout -k 2 $((RR_SECS + 10)) ip netns exec "$SRC_NS" nice -n "$NICE" taskset -c "$APP_CPU" \
        "$RR" rr --connect "$DST:$P_RR" --seconds "$RR_SECS" > "$TMP/case.out" 2> "$TMP/case.err" || rc=$?
      ;;
    crr)
      timeout -k 2 $((RR_SECS + 10)) ip netns exec "$SRC_NS" nice -n "$NICE" taskset -c "$APP_CPU" \
        "$RR" crr --connect "$DST:$P_RR" --seconds "$RR_SECS" --threads 4 > "$TMP/case.out" 2> "$TMP/case.err" || rc=$?
      ;;
    udp)
      run_udp || rc=$?
      ;;
  esac
  echo "$rc" > "$TMP/case.rc"
}

# UDP 64 B, 50k flows: trafgen in the source namespace (client pod or router) sends frames to
# the node's MAC; the server pod's netdev ingress rule counts those that arrive DNAT'ed to
# (or, pod path, addressed to) 10.244.1.21:5353, and drops them.
run_udp() {
  cat > "$TMP/udp.cfg" <<EOF
{
  eth(da=$DST_MAC, sa=$SRC_MAC, type=0x0800),
  ipv4(saddr=$SRC_IP, daddr=$DST, ttl=64),
  udp(sport=dinc(10000, $((10000 + UDP_FLOWS - 1))), dport=$P_UDP),
  fill(0x41, 18)
}
EOF
  nsx "$PB" nft add rule netdev tpsink in ip daddr $SERVER_IP udp dport 5353 counter name udp5353 drop
  local c0 c1 g0 g1 t0 t1 gen
  # setsid: trafgen -P 1 is a parent and a pinned child, stopped together by SIGINT to the group.
  setsid ip netns exec "$SRC_NS" nice -n "$NICE" trafgen -i "$TMP/udp.cfg" -o eth0 -P 1 -q -Q -C \
    > /dev/null 2> "$TMP/trafgen.log" &
  gen=$!
  sleep 1
  if ! kill -0 "$gen" 2>/dev/null; then
    echo "trafgen died: $(tr '\n' ' ' < "$TMP/trafgen.log")" > "$TMP/case.err"
    nsx "$PB" nft flush chain netdev tpsink in
    return 1
  fi
  c0=$(udp_count); g0=$(nsx "$SRC_NS" cat /sys/class/net/eth0/statistics/tx_packets); t0=$(date +%s.%N)
  sleep "$UDP_SECS"
  c1=$(udp_count); g1=$(nsx "$SRC_NS" cat /sys/class/net/eth0/statistics/tx_packets); t1=$(date +%s.%N)
  kill -INT -- "-$gen" 2>/dev/null || true
  wait "$gen" 2>/dev/null || true
  nsx "$PB" nft flush chain netdev tpsink in
  echo "{\"received\": $((c1 - c0)), \"offered\": $((g1 - g0)), \"seconds\": $(python3 -c "print(round($t1 - $t0, 3))"), \"flows\": $UDP_FLOWS}" > "$TMP/case.out"
  [ $((c1 - c0)) -gt 0 ] || { echo "no datagram reached the server pod as $SERVER_IP:5353" > "$TMP/case.err"; return 1; }
}
udp_count() { nsx "$PB" nft -j list counter netdev tpsink udp5353 | python3 -c 'import json,sys; print([o["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "counter" in o][0])'; }

# perf of both cores during a case (TP_PERF=1): top symbols per CPU into $TMP/perf-*.txt.
perf_start() {
  PERF_PID=""
  [ "${TP_PERF:-0}" = 1 ] && command -v perf >/dev/null || return 0
  perf record -q -a -o "$TMP/perf.data" -- sleep "$1" > /dev/null 2>&1 &
  PERF_PID=$!
  # perf first walks every process of the machine (other jobs' too): let it start recording.
  sleep 1
}
perf_finish() {
  local dp="$1" cpu comm
  [ -n "${PERF_PID:-}" ] || return 0
  wait "$PERF_PID" 2>/dev/null || true
  for cpu in 0 1; do
    # Share of the CPU per process, then the top symbols of the three busiest processes
    # (percentages of all the CPU's samples).
    perf report -i "$TMP/perf.data" --cpu "$cpu" --stdio --no-children --sort comm \
      --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8 > "$TMP/perf-$dp-cpu$cpu.txt" || true
    for comm in $(awk 'NF == 2 && n < 3 {print $2; n++}' "$TMP/perf-$dp-cpu$cpu.txt"); do
      echo "-- $comm" >> "$TMP/perf-$dp-cpu$cpu.txt"
      perf report -i "$TMP/perf.data" --cpu "$cpu" --comm "$comm" --stdio --no-children \
        --sort dso,symbol --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 \
        >> "$TMP/perf-$dp-cpu$cpu.txt" || true
    done
  done
  rm -f "$TMP/perf.data"
}

# ---------------------------------------------------------------- run
RUNS="$TMP/runs.jsonl"
: > "$RUNS"
echo "throughput: topology up (${P}*); clients/servers/trafgen on CPU $APP_CPU, nodeplane on CPU $NP_CPU, nice $NICE"
[ "$QUICK" = 0 ] || echo "throughput: --quick: stream ${STREAM_SECS}s, rr/crr ${RR_SECS}s, udp ${UDP_SECS}s"
if [ "$CSUM_OFF" != 0 ]; then
  echo "throughput: *** TP_PODS_TX_CSUM_OFF=$CSUM_OFF: TX checksumming OFF in the pods and the router ($([ "$CSUM_OFF" = 1 ] && echo "every dataplane" || echo "while $CSUM_OFF runs")): NOT the default, NOT a result (wiring check only) ***"
fi
topo_up
servers_up

FAILED=()
IFS=, read -r -a DP_LIST <<< "$DATAPLANES"
IFS=, read -r -a PATH_LIST <<< "$PATHS"
IFS=, read -r -a TEST_LIST <<< "$TESTS"
for dp in "${DP_LIST[@]}"; do
  dp_start "$dp"
  off_pa="$(offloads "$PA")"; off_rtr="$(offloads "$RTR")"
  echo "throughput: $dp up; client pod eth0: $off_pa; router eth0: $off_rtr"
  for path in "${PATH_LIST[@]}"; do
    path_target "$path"
    for test in "${TEST_LIST[@]}"; do
      dp_flush "$dp"
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      dp_snapshot "$dp" > "$TMP/dp0.json"
      e0="$(pod_counters)"; c0="$(cpu_sample)"
      if [ "$path/$test" = clusterip/stream1 ]; then
        perf_start $((STREAM_SECS < 5 ? STREAM_SECS : 5))
      else
        PERF_PID=""
      fi
      run_case "$test"
      perf_finish "$dp"
      c1="$(cpu_sample)"; e1="$(pod_counters)"
      dp_snapshot "$dp" > "$TMP/dp1.json"
      python3 "$HERE/throughput.py" record "$dp" "$path" "$test" "$(cat "$TMP/case.rc")" \
        "$TMP/case.out" "$TMP/case.err" "$TMP/dp0.json" "$TMP/dp1.json" "$load" "$e0" "$e1" "$c0" "$c1" \
        "$off_pa" "$off_rtr" "$TX_OFF_NOW" "$TMP" >> "$RUNS"
      python3 "$HERE/throughput.py" line "$RUNS" || FAILED+=("$dp/$path/$test")
    done
  done
  dp_stop "$dp"
done

TP_WORKERS="${TP_WORKERS:-1}" TP_MTU="${TP_MTU:-1500}" TP_AFXDP="${TP_AFXDP:-}" APP_CPU="$APP_CPU" NP_CPU="$NP_CPU" TP_NICE="$NICE" QUICK="$QUICK" STREAM_SECS="$STREAM_SECS" \
  RR_SECS="$RR_SECS" UDP_SECS="$UDP_SECS" python3 "$HERE/throughput.py" report "$RUNS" "$OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  die "failed cases: ${FAILED[*]}"
fi
