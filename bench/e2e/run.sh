#!/usr/bin/env bash
# End-to-end benchmark (issue 3 item 7): one topology, three forwarders measured side by
# side (plus the generator's ceiling and the kernel with RPS).
#
#   bench/e2e/run.sh [--seconds 5] [--out bench/e2e/results.json]
#                    [--duts ceiling,l2fwd,nodeplane,nft,nft-rps]
#
#   np-e2e-gen                   np-e2e-dut                             np-e2e-sink
#   trafgen (core GEN_CPU) ─ eth0 ══ npe2e-up ─[ DUT (core DUT_CPU) ]─ npe2e-pod ══ eth0 (drop)
#   02:00:00:00:00:fe            02:00:00:00:00:01       02:00:00:00:01:02     02:00:00:00:02:15
#   192.168.100.1                192.168.100.2 (node IP)                       10.244.1.21
#
# Every veth has 2 RX and 2 TX queues. The generator sends 60-byte frames (64 on a wire) of UDP
# 192.168.100.1:SPORT -> 192.168.100.2:30053 (the NodePort of bench/e2e/state), SPORT fixed
# (1 flow) or counting through 50 000 values (50k flows). The DUTs:
#   ceiling    none: the DUT drops every frame at its netdev ingress hook, counted there (not at
#              the sink): what the generator core can offer at all
#   l2fwd      bench/src/bin/l2fwd.rs: raw AF_XDP, MAC rewrite, descriptor hand-off to npe2e-pod
#   nodeplane  the full pipeline (conntrack, NodePort DNAT to 10.244.1.21:5353 via Maglev,
#              ingress policy, rewrite) on AF_XDP, one worker: the daemon,
#              `nodeplane run --config` with `io: afxdp` (nothing else is measured: a binary
#              without it fails the run)
#   nft        the kernel: nftables DNAT + conntrack + an equivalent forward filter
#   nft-rps    the same with RPS moving the kernel's receive work onto the DUT core (on veth the
#              kernel otherwise forwards on the sending CPU, i.e. the generator's core); the
#              host's net.core.wmem_default is raised for this case (see gen_sndbuf)
# The figure is what arrives at the sink: RX packets of the sink's eth0 (which drops them at its
# netdev ingress hook) over SECONDS, after 1 s of warm-up. Each case then samples 5 frames at
# the sink with tcpdump and checks the destination (the DNAT'ed backend, or the untouched
# NodePort for l2fwd). Namespaces are deleted on exit, also on failure. A case whose generator
# dies is reported as not measured, the other cases still run, and the exit code is 1.
#
# Environment: E2E_PREFIX (namespace prefix, default np-e2e-), NODEPLANE_BIN, L2FWD_BIN
# (default: release builds of this checkout, built if
# missing), DUT_CPU (default 1; trafgen -P 1 always pins itself to CPU 0), E2E_NICE (default
# -10), GEN_QDISC (default 1), E2E_NAPI=threaded (experimental, see napi_pin), E2E_AFXDP (extra
# `io.afxdp` keys for nodeplane, e.g. E2E_AFXDP='busy_poll_us: 0, ring_size: 1024').
# Needs root, iproute2, nftables, conntrack, trafgen (netsniff-ng), tcpdump, python3.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SECONDS_RUN=5
OUT="$ROOT/bench/e2e/results.json"
DUTS="ceiling,l2fwd,nodeplane,nft,nft-rps"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --duts) DUTS="$2"; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--out FILE] [--duts ceiling,l2fwd,nodeplane,nft,nft-rps]" >&2; exit 2 ;;
  esac
done
GEN_CPU=0
DUT_CPU="${DUT_CPU:-1}"
# Other jobs share this machine's cores: the generator and the DUTs run at nice -10 so they win
# most of the CPU time on their cores (E2E_NICE=0 to run them at normal priority).
NICE="${E2E_NICE:--10}"
# GEN_QDISC=0: trafgen bypasses the qdisc layer, and veth then picks the TX (= the DUT's RX)
# queue from the sending CPU: everything lands on one queue. Through the (noqueue) qdisc path
# the queue follows the flow hash, so with 50k flows both DUT queues receive.
GEN_Q=-q
[ "${GEN_QDISC:-1}" = 1 ] || GEN_Q=""
WARMUP=1
FLOWS_MANY=50000

# E2E_PREFIX: the namespaces' prefix (default np-e2e-), so that concurrent runs do not collide.
P="${E2E_PREFIX:-np-e2e-}"
GEN_MAC=02:00:00:00:00:fe
UP_MAC=02:00:00:00:00:01
PODIF_MAC=02:00:00:00:01:02
SINK_MAC=02:00:00:00:02:15
NODE_IP=192.168.100.2
NODEPORT=30053
BACKEND=10.244.1.21
BACKEND_PORT=5353
BACKENDS=("$BACKEND")

die() { echo "e2e: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
for t in ip nft conntrack trafgen tcpdump python3 taskset; do
  command -v "$t" >/dev/null || die "needs $t"
done

TMP="$(mktemp -d /tmp/np-e2e.XXXXXX)"
DUT_PID=""
# The topology, the generator and their helpers (shared with bench/e2e/scale.sh).
# shellcheck source=bench/e2e/topo.sh
. "$HERE/topo.sh"
# net.core.wmem_default as found (restored after the nft-rps case and on exit; see gen_sndbuf).
WMEM_DEFAULT="$(sysctl -n net.core.wmem_default)"
cleanup() {
  local rc=$?
  [ -n "$GEN_PID" ] && kill -INT -- "-$GEN_PID" 2>/dev/null || true
  [ -n "$DUT_PID" ] && kill -TERM "$DUT_PID" 2>/dev/null || true
  sleep 0.3
  sysctl -qw net.core.wmem_default="$WMEM_DEFAULT" || true
  topo_down
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries
if [ -z "${NODEPLANE_BIN:-}" ] || [ -z "${L2FWD_BIN:-}" ]; then
  echo "e2e: building nodeplane and l2fwd (release)"
  (cd "$ROOT" && cargo build --release -q -p nodeplane-control --bin nodeplane \
     && cargo build --release -q -p nodeplane-bench --bin l2fwd)
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
NP="${NODEPLANE_BIN:-$TARGET/release/nodeplane}"
L2FWD="${L2FWD_BIN:-$TARGET/release/l2fwd}"
STATE="$ROOT/bench/e2e/state"
"$NP" state check "$STATE" >/dev/null || die "bench state does not load"

# ---------------------------------------------------------------- generator
# trafgen config: FLOWS=1 fixed source port; otherwise source ports 10000..10000+FLOWS-1.
gen_cfg() {
  local flows="$1" f="$TMP/gen-$1.cfg" sport
  if [ "$flows" = 1 ]; then sport=10000; else sport="dinc(10000, $((10000 + flows - 1)))"; fi
  cat > "$f" <<EOF
{
  eth(da=$UP_MAC, sa=$GEN_MAC, type=0x0800),
  ipv4(saddr=192.168.100.1, daddr=$NODE_IP, ttl=64),
  udp(sport=$sport, dport=$NODEPORT),
  fill(0x41, 18)
}
EOF
  echo "$f"
}

# With RPS the generator's frames wait in the DUT core's backlog, still charged to trafgen's
# socket: its send buffer (net.core.wmem_default, 208 KiB: ~270 small frames) fills before the
# backlog (netdev_max_backlog, 1000) does, and trafgen's non-blocking flush then fails with
# EAGAIN, which it treats as fatal ("Flushing TX_RING failed: Resource temporarily
# unavailable"). With a larger default send buffer the backlog overflows first: those drops
# come back as ENOBUFS, which trafgen tolerates (the kernel counts them, the sink sees what the
# DUT forwarded). net.core.wmem_default is not per network namespace (a write inside one is
# refused), so it is raised on the host for the nft-rps case only and restored after it and
# on exit.
gen_sndbuf() {
  case "$1" in
    nft-rps) sysctl -qw net.core.wmem_default=4194304 ;;
    *) sysctl -qw net.core.wmem_default="$WMEM_DEFAULT" ;;
  esac
}
# ---------------------------------------------------------------- DUTs
dut_start() {
  local dut="$1"
  : > "$TMP/dut.log"
  rm -f "$TMP/dut.json"
  case "$dut" in
    l2fwd)
      ip netns exec "$DUT" nice -n "$NICE" "$L2FWD" npe2e-up npe2e-pod --peer-a $GEN_MAC --peer-b $SINK_MAC \
        --queues 2 --core "$DUT_CPU" > "$TMP/dut.json" 2> "$TMP/dut.log" &
      DUT_PID=$!
      wait_xdp || { cat "$TMP/dut.log" >&2; ip -n "$DUT" -d link show | grep prog >&2; ps -eo pid,ppid,etime,stat,args | grep "[l]2fwd" >&2; die "l2fwd did not start"; }
      ;;
    nodeplane)
      np_start
      ;;
  esac
  case "$dut" in
    l2fwd|nodeplane) [ "${E2E_NAPI:-}" != threaded ] || napi_pin ;;
  esac
  case "$dut" in
    ceiling)
      nsx "$DUT" nft -f - <<EOF
table netdev e2e {
  chain in { type filter hook ingress device "npe2e-up" priority 0; policy drop; }
}
EOF
      ;;
    nft|nft-rps)
      nsx "$DUT" nft -f - <<EOF
table ip e2e {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $NODE_IP udp dport $NODEPORT dnat to $BACKEND:$BACKEND_PORT
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip daddr $BACKEND tcp dport 9000-9100 drop
    ip daddr $BACKEND udp dport $BACKEND_PORT accept
  }
}
EOF
      if [ "$dut" = nft-rps ]; then
        local mask q
        mask=$(printf '%x' $((1 << DUT_CPU)))
        for q in 0 1; do
          nsx "$DUT" sh -c "echo $mask > /sys/class/net/npe2e-up/queues/rx-$q/rps_cpus"
        done
      fi
      ;;
  esac
}

# E2E_NAPI=threaded: veth runs XDP (and the AF_XDP RX copy) in its NAPI poll, which is
# otherwise a softirq on the *sending* CPU (the generator's). Threaded NAPI makes it a kthread
# (napi/npe2e-up-N) that is pinned here to the DUT core, as a NIC's interrupt would be: the DUT
# core then does all the DUT's work.
napi_pin() {
  local pid n=0
  # veth has NAPI instances only while XDP is attached: switch them to threads now.
  nsx "$DUT" sh -c 'echo 1 > /sys/class/net/npe2e-up/threaded; echo 1 > /sys/class/net/npe2e-pod/threaded'
  sleep 0.2
  for pid in $(ps -eo pid=,comm= | awk '$2 ~ /^napi\/npe2e-(up|pod)-/ {print $1}'); do
    taskset -pc "$DUT_CPU" "$pid" >/dev/null
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || die "E2E_NAPI=threaded: no napi/npe2e-* threads found"
}

# nodeplane: the daemon, `nodeplane run --config` with `io: afxdp`. The whole process is
# confined to DUT_CPU (its worker pins itself to the first core it is allowed).
np_start() {
  cat > "$TMP/config.yaml" <<EOF
state:
  dir: $STATE
control_socket: $TMP/np.sock
workers: 1
log_level: warn
# No conntrack snapshot: the default path (/var/lib/nodeplane/conntrack.snap) would carry
# one case's flows into the next start (and into other jobs' daemons on this machine).
conntrack_snapshot: null
io:
  afxdp: {${E2E_AFXDP:-}}
EOF
  ip netns exec "$DUT" nice -n "$NICE" taskset -c "$DUT_CPU" "$NP" run --config "$TMP/config.yaml" \
    > /dev/null 2> "$TMP/dut.log" &
  DUT_PID=$!
  if ! wait_xdp; then
    cat "$TMP/dut.log" >&2
    die "'$NP run --config' with io.afxdp did not attach XDP to npe2e-up and npe2e-pod (daemon log above); this benchmark measures only the daemon with AF_XDP I/O"
  fi
}

# Counters of the DUT while it still runs (nodeplane), written to $TMP/dut.json.
dut_snapshot() {
  case "$1" in
    nodeplane)
      "$NP" status --socket "$TMP/np.sock" --json > "$TMP/dut.json" 2>/dev/null || echo null > "$TMP/dut.json"
      ;;
    nft|nft-rps)
      nsx "$DUT" conntrack -C > "$TMP/ct_count" 2>/dev/null || echo -1 > "$TMP/ct_count"
      echo "{\"conntrack_entries\": $(cat "$TMP/ct_count")}" > "$TMP/dut.json"
      ;;
  esac
}

dut_stop() {
  local dut="$1"
  case "$dut" in
    l2fwd|nodeplane)
      kill -TERM "$DUT_PID" 2>/dev/null || true
      wait "$DUT_PID" 2>/dev/null || true
      DUT_PID=""
      wait_xdp_gone "$dut"
      ;;
    ceiling)
      nsx "$DUT" nft delete table netdev e2e
      ;;
    nft|nft-rps)
      nsx "$DUT" nft delete table ip e2e
      nsx "$DUT" conntrack -F >/dev/null 2>&1 || true
      local q
      for q in 0 1; do nsx "$DUT" sh -c "echo 0 > /sys/class/net/npe2e-up/queues/rx-$q/rps_cpus"; done
      ;;
  esac
}

# Sends a few frames with only tcpdump watching and keeps what the sink saw.
verify_sample() {
  local cfg="$1" out="$2"
  ip netns exec "$SINK" timeout 5 tcpdump -i eth0 -nn -e -c 5 -l > "$out" 2>/dev/null &
  local td=$!
  sleep 0.7
  setsid ip netns exec "$GEN" trafgen -i "$cfg" -o eth0 -P 1 -q -Q -C -n 50 >/dev/null 2>&1 || true
  wait "$td" 2>/dev/null || true
}

# ---------------------------------------------------------------- run
RUNS="$TMP/runs.jsonl"
: > "$RUNS"
topo_up
echo "e2e: topology up; ${SECONDS_RUN}s per case after ${WARMUP}s warm-up; trafgen on CPU $GEN_CPU, DUT on CPU $DUT_CPU"

FAILED=()
IFS=, read -r -a DUT_LIST <<< "$DUTS"
for dut in "${DUT_LIST[@]}"; do
  for flows in 1 $FLOWS_MANY; do
    cfg="$(gen_cfg "$flows")"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    dut_start "$dut"
    gen_sndbuf "$dut"
    gen_start "$cfg"
    sleep "$WARMUP"
    if ! kill -0 "$GEN_PID" 2>/dev/null; then
      # A case the generator cannot drive is reported and skipped; the others still run.
      echo "e2e: $dut $flows flows NOT MEASURED: trafgen died: $(tr '\n' ' ' < "$TMP/trafgen.log")" >&2
      FAILED+=("$dut/$flows")
      GEN_PID=""
      gen_sndbuf none
      dut_stop "$dut"
      continue
    fi
    # ceiling: the generator alone (frames dropped at the DUT's ingress, counted there).
    if [ "$dut" = ceiling ]; then at=("$DUT" npe2e-up); else at=("$SINK" eth0); fi
    s0=$(counter "${at[@]}" rx_packets); g0=$(counter "$GEN" eth0 tx_packets)
    c0="$(cpu_sample)"; t0=$(date +%s.%N)
    sleep "$SECONDS_RUN"
    s1=$(counter "${at[@]}" rx_packets); g1=$(counter "$GEN" eth0 tx_packets)
    c1="$(cpu_sample)"; t1=$(date +%s.%N)
    gen_stop
    gen_sndbuf none
    dut_snapshot "$dut"
    : > "$TMP/sample.txt"
    [ "$dut" = ceiling ] || verify_sample "$cfg" "$TMP/sample.txt"
    dut_stop "$dut"
    python3 "$HERE/e2e.py" record "$dut" "$flows" "$load" "$s0" "$s1" "$g0" "$g1" "$t0" "$t1" \
      "$TMP/sample.txt" "$TMP/dut.json" "run --config" "$c0" "$c1" >> "$RUNS"
    python3 "$HERE/e2e.py" line "$RUNS"
  done
done

# ---------------------------------------------------------------- report
E2E_NICE="$NICE" GEN_QDISC="${GEN_QDISC:-1}" E2E_NAPI="${E2E_NAPI:-}" DUT_CPU="$DUT_CPU" \
  python3 "$HERE/e2e.py" report "$RUNS" "$OUT" "$SECONDS_RUN"
if [ "${#FAILED[@]}" -gt 0 ]; then
  die "not measured (see above): ${FAILED[*]}"
fi
