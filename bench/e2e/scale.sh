#!/usr/bin/env bash
# Side by side with the kernel at scale (issue 11 item 6): new connections per second to the
# last of N services, and the time to load N services into the running node; nodeplane
# against kube-proxy's iptables-mode rules and its nftables-mode verdict map, in one run.
#
#   bench/e2e/scale.sh [--seconds 3] [--sizes 10,1000,10000] [--load-sizes 10000,100000,100000:10]
#                      [--duts ceiling,nodeplane,iptables,nft,nft-rps] [--load-duts nodeplane,iptables,nft]
#                      [--load-timeout 120] [--out bench/e2e/scale.json]
#
# The topology is bench/e2e/run.sh's (bench/e2e/topo.sh), in namespaces named SCALE_PREFIX
# (default np-e-: np-e-gen, np-e-dut, np-e-sink, and np-e-kload for the kernel loads):
#
#   np-e-gen                      np-e-dut                             np-e-sink
#   trafgen (CPU 0) ─ eth0 ══ npe2e-up ─[ DUT (CPU DUT_CPU) ]─ npe2e-pod ══ eth0 (drop)
#   src 10.244.128.0/17                                                10.244.1.21, 10.244.1.22
#
# Services (bench/e2e/scale.py): N ClusterIP services, VIP 10.96.0.0 + 1 + i, 53/UDP, two
# backends each; the last one's backends are the sink's two addresses (port 5353), every
# other service has its own backend pair. The same N services for every dataplane:
#   ceiling    none: the DUT drops every frame at its netdev ingress hook, counted there: what
#              the generator's core can offer at all (a DUT whose figure is close to it is
#              bounded by the generator, not by its own core)
#   nodeplane  the daemon, `nodeplane run --config` with `io: afxdp`, one worker (Maglev,
#              conntrack, ingress policy: one allow rule), conntrack max_entries SCALE_NP_CT
#              (default 4 Mi), node.maglev_table_size SCALE_MAGLEV_M (default 1021)
#   iptables   kube-proxy's iptables mode: KUBE-SERVICES -> KUBE-SVC-* (statistic mode random)
#              -> KUBE-SEP-* (DNAT), loaded with iptables-restore (the system's variant, said
#              in the output); the measured service is the last rule of KUBE-SERVICES
#   nft        kube-proxy's nftables mode: `service-ips` verdict map VIP . proto . port : goto
#              service chain -> numgen random vmap -> endpoint chain (DNAT)
#   nft-rps    the same with RPS moving the kernel's receive work onto DUT_CPU (on veth the
#              kernel otherwise runs it on the sending CPU, the generator's); the host's
#              net.core.wmem_default is raised for this case and restored (run.sh explains why)
#
# 1. New connections: trafgen sends 60-byte UDP frames to the last service's VIP:53, source
#    address counting through 10.244.128.0/17 (remote pods: inside the cluster CIDR, so
#    kube-proxy's rules do not masquerade them and every dataplane does DNAT only) and source
#    port through 1024-65534 at once: no (address, port) pair repeats within 2.1e9 frames,
#    so every frame is a new flow. The figure: frames that arrive at the sink DNAT'ed to one of
#    the two backends (a netdev ingress counter per backend address and port 5353) per second
#    over SECONDS after 1 s of warm-up; then 5 frames are sampled at the sink with tcpdump and
#    checked for a backend address and port. The kernel's conntrack table must hold every
#    flow of a case: net.netfilter.nf_conntrack_max and the conntrack hash size (both
#    host-wide) are set to SCALE_CT_MAX (default 4194304) for the run and restored on exit;
#    the conntrack table is flushed between cases.
# 2. Load time: nodeplane: the daemon runs with 10 services; a services.yaml of N services is
#    renamed into its state directory and timed until `nodeplane status` shows the new
#    generation with N services (published: every service forwards), and until the daemon
#    logs that every Maglev table is built (scale.py npload); `nodeplane state check` of the
#    same directory is timed apart (parse + validate in a process of its own). Kernel:
#    `iptables-restore` and `nft -f` of the same rules as above into an empty namespace
#    (np-e-kload), each capped at --load-timeout seconds ("did not finish" when it hits it).
#
# Output: a table per part with ratios, JSON in --out. Namespaces are deleted and sysctls
# restored on exit, also on failure.
#
# Environment: NODEPLANE_BIN (default: target/ci/nodeplane of this checkout, built with
# --profile ci if missing), DUT_CPU (default 1), E2E_NICE (default -10), SCALE_PREFIX,
# SCALE_CT_MAX, SCALE_NP_CT, SCALE_MAGLEV_M, E2E_AFXDP (extra io.afxdp keys), SCALE_STATE_FORMAT
# (yaml, default, or json: nodeplane's services file in that format).
# Needs root, iproute2, nftables, iptables, conntrack, trafgen (netsniff-ng), tcpdump, python3.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SECONDS_RUN=3
SIZES="10,1000,10000"
LOAD_SIZES="10000,100000,100000:10"
DUTS="ceiling,nodeplane,iptables,nft,nft-rps"
LOAD_DUTS="nodeplane,iptables,nft"
LOAD_TIMEOUT=120
OUT="$HERE/scale.json"
usage() {
  echo "usage: $0 [--seconds N] [--sizes 10,1000,10000] [--load-sizes 10000,100000,100000:10] [--duts nodeplane,iptables,nft,nft-rps] [--load-duts nodeplane,iptables,nft] [--load-timeout S] [--out FILE]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --load-sizes) LOAD_SIZES="$2"; shift 2 ;;
    --duts) DUTS="$2"; shift 2 ;;
    --load-duts) LOAD_DUTS="$2"; shift 2 ;;
    --load-timeout) LOAD_TIMEOUT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) usage ;;
  esac
done
DUT_CPU="${DUT_CPU:-1}"
NICE="${E2E_NICE:--10}"
GEN_Q=-q
WARMUP=1
CT_MAX="${SCALE_CT_MAX:-4194304}"
# SCALE_STATE_FORMAT=json: the services file as services.json (scale.py reads it too)
SVC_FILE="services.${SCALE_STATE_FORMAT:-yaml}"
P="${SCALE_PREFIX:-np-e-}"
KLOAD=${P}kload
GEN_MAC=02:00:00:00:00:fe
UP_MAC=02:00:00:00:00:01
PODIF_MAC=02:00:00:00:01:02
SINK_MAC=02:00:00:00:02:15
NODE_IP=192.168.100.2
BACKENDS=(10.244.1.21 10.244.1.22)
TARGET_PORT=5353
PY="$HERE/scale.py"

die() { echo "scale: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
for t in ip nft iptables-restore conntrack trafgen tcpdump python3 taskset timeout; do
  command -v "$t" >/dev/null || die "needs $t"
done

TMP="$(mktemp -d /tmp/np-e-scale.XXXXXX)"
DUT_PID=""
# shellcheck source=bench/e2e/topo.sh
. "$HERE/topo.sh"

# Host-wide settings changed by this run, as found (restored on exit).
modprobe nf_conntrack 2>/dev/null || true
CT_MAX0="$(sysctl -n net.netfilter.nf_conntrack_max)"
HASH0="$(cat /sys/module/nf_conntrack/parameters/hashsize)"
WMEM0="$(sysctl -n net.core.wmem_default)"
cleanup() {
  local rc=$?
  [ -n "$GEN_PID" ] && kill -INT -- "-$GEN_PID" 2>/dev/null || true
  [ -n "$DUT_PID" ] && kill -TERM "$DUT_PID" 2>/dev/null || true
  [ -n "$DUT_PID" ] && wait "$DUT_PID" 2>/dev/null || true
  sleep 0.3
  sysctl -qw net.core.wmem_default="$WMEM0" || true
  sysctl -qw net.netfilter.nf_conntrack_max="$CT_MAX0" || true
  echo "$HASH0" > /sys/module/nf_conntrack/parameters/hashsize || true
  topo_down
  if ns_exists "$KLOAD"; then ip netns del "$KLOAD" || true; fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries
if [ -n "${NODEPLANE_BIN:-}" ]; then
  NP="$NODEPLANE_BIN"; NP_KIND="NODEPLANE_BIN"
else
  TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
  NP="$TARGET/ci/nodeplane"; NP_KIND="profile ci (release without LTO)"
  if [ ! -x "$NP" ]; then
    echo "scale: building nodeplane (--profile ci)"
    (cd "$ROOT" && cargo build --profile ci -q -p nodeplane-control --bin nodeplane)
  fi
fi
IPT_VARIANT="$(iptables-restore --version 2>&1 | head -1)"
export NODEPLANE_BIN_KIND="$NP_KIND" IPTABLES_VARIANT="$IPT_VARIANT" SCALE_SECONDS="$SECONDS_RUN" \
  SCALE_CT_MAX="$CT_MAX" SCALE_LOAD_TIMEOUT="$LOAD_TIMEOUT" DUT_CPU E2E_NICE="$NICE"

IFS=, read -r -a SIZE_LIST <<< "$SIZES"
IFS=, read -r -a LOAD_LIST <<< "$LOAD_SIZES"
IFS=, read -r -a DUT_LIST <<< "$DUTS"
IFS=, read -r -a LDUT_LIST <<< "$LOAD_DUTS"

# ---------------------------------------------------------------- inputs, generated up front
echo "scale: generating states and rules for ${SIZES} (traffic) and ${LOAD_SIZES} (load) services"
for spec in $(printf '%s\n' 10 "${SIZE_LIST[@]}" "${LOAD_LIST[@]}" | sort -u); do
  tag="${spec/:/_}"
  python3 "$PY" npstate "$TMP/state-$tag" "$spec"
  python3 "$PY" iptables "$spec" "$TMP/ipt-$tag.rules"
  python3 "$PY" nft "$spec" "$TMP/nft-$tag.rules"
done
"$NP" state check "$TMP/state-10" >/dev/null || die "the generated state does not load"

sysctl -qw net.netfilter.nf_conntrack_max="$CT_MAX"
echo "$CT_MAX" > /sys/module/nf_conntrack/parameters/hashsize
echo "scale: nf_conntrack_max and conntrack hash size $CT_MAX (were $CT_MAX0 and $HASH0; restored on exit)"

# ---------------------------------------------------------------- nodeplane
np_config() {
  cat > "$TMP/config.yaml" <<EOF
state:
  dir: $1
control_socket: $TMP/np.sock
workers: 1
log_level: info
# No conntrack snapshot: the default path (/var/lib/nodeplane/conntrack.snap) would carry
# one case's flows into the next start (and into other jobs' daemons on this machine).
conntrack_snapshot: null
io:
  afxdp: {${E2E_AFXDP:-}}
EOF
}
# Starts the daemon on state directory $1, confined to DUT_CPU unless $2 = any.
np_start() {
  np_config "$1"
  : > "$TMP/np.log"
  local pin=(taskset -c "$DUT_CPU")
  [ "${2:-}" != any ] || pin=()
  ip netns exec "$DUT" nice -n "$NICE" "${pin[@]}" "$NP" run --config "$TMP/config.yaml" \
    > /dev/null 2> "$TMP/np.log" &
  DUT_PID=$!
  wait_xdp || { cat "$TMP/np.log" >&2; die "nodeplane did not attach XDP to npe2e-up and npe2e-pod"; }
  np_wait_maglev
  "$NP" ct flush --socket "$TMP/np.sock" > /dev/null
}
# Until the daemon's tables are complete (no Maglev table left to build).
np_wait_maglev() {
  local i last
  for i in $(seq 600); do
    # The last word on Maglev tables is that every one is built, or there never was one
    # pending (a generation that only changes the gateway MAC repeats the pending count).
    last=$(grep -E "Maglev tables still to build|every Maglev table built" "$TMP/np.log" | tail -1 || true)
    case "$last" in
      *"every Maglev table built"*) return 0 ;;
      "") grep -q "published generation" "$TMP/np.log" && return 0 ;;
    esac
    sleep 0.1
  done
  tail -20 "$TMP/np.log" >&2
  die "nodeplane: Maglev tables not built after 60 s (its log above)"
}
np_stop() {
  kill -TERM "$DUT_PID" 2>/dev/null || true
  wait "$DUT_PID" 2>/dev/null || true
  DUT_PID=""
  wait_xdp_gone nodeplane
}

# ---------------------------------------------------------------- kernel DUTs
RULES_S=""
kernel_load() {
  local kind="$1" n="$2" t0 t1
  t0=$(date +%s.%N)
  case "$kind" in
    iptables*) nsx "$DUT" iptables-restore < "$TMP/ipt-$n.rules" || die "iptables-restore failed ($n services)" ;;
    nft*) nsx "$DUT" nft -f "$TMP/nft-$n.rules" || die "nft -f failed ($n services)" ;;
  esac
  t1=$(date +%s.%N)
  RULES_S=$(python3 -c "print(round($t1 - $t0, 3))")
}
rps() {
  local mask=0 q
  [ "$1" = on ] && mask=$(printf '%x' $((1 << DUT_CPU)))
  for q in 0 1; do nsx "$DUT" sh -c "echo $mask > /sys/class/net/npe2e-up/queues/rx-$q/rps_cpus"; done
}

dut_start() {
  local dut="$1" n="$2"
  RULES_S=""
  case "$dut" in
    nodeplane) np_start "$TMP/state-$n" ;;
    ceiling)
      nsx "$DUT" nft -f - <<EOF
table netdev ceiling {
  chain in { type filter hook ingress device "npe2e-up" priority 0; policy drop; }
}
EOF
      ;;
    iptables|nft) kernel_load "$dut" "$n" ;;
    nft-rps|iptables-rps) kernel_load "$dut" "$n"; rps on; sysctl -qw net.core.wmem_default=4194304 ;;
    *) die "unknown DUT $dut" ;;
  esac
}
dut_stop() {
  case "$1" in
    nodeplane) np_stop ;;
    ceiling) nsx "$DUT" nft delete table netdev ceiling ;;
    *)
      sysctl -qw net.core.wmem_default="$WMEM0"
      rps off
      nsx "$DUT" nft flush ruleset
      nsx "$DUT" conntrack -F >/dev/null 2>&1 || true
      ;;
  esac
}
dut_snapshot() {
  case "$1" in
    nodeplane) "$NP" status --socket "$TMP/np.sock" --json > "$TMP/dut.json" 2>/dev/null || echo null > "$TMP/dut.json" ;;
    *) echo "{\"conntrack_entries\": $(nsx "$DUT" conntrack -C 2>/dev/null || echo -1)}" > "$TMP/dut.json" ;;
  esac
}

# ---------------------------------------------------------------- generator and sink
LAST_VIP_OF() { python3 -c "import sys; sys.path.insert(0, '$HERE'); import scale; print(scale.vip($1 - 1))"; }
gen_cfg() {
  local vip="$1" f="$TMP/gen-$1.cfg"
  # Source 10.244.128.0-10.244.255.255 (32768 values) and port 1024-65534 (64511, odd) step
  # together: the pair repeats only after lcm = 2 113 961 984 frames.
  cat > "$f" <<EOF
{
  eth(da=$UP_MAC, sa=$GEN_MAC, type=0x0800),
  ipv4(saddr=dinc(183795712, 183828479), daddr=$vip, ttl=64),
  udp(sport=dinc(1024, 65534), dport=53),
  fill(0x41, 18)
}
EOF
  echo "$f"
}
# Per-backend counters at the sink's ingress (before its drop-everything chain).
sink_counters_up() {
  nsx "$SINK" nft -f - <<EOF
table netdev count {
  counter b0 {}
  counter b1 {}
  chain in {
    type filter hook ingress device "eth0" priority -10; policy accept;
    ip daddr ${BACKENDS[0]} udp dport $TARGET_PORT counter name b0
    ip daddr ${BACKENDS[1]} udp dport $TARGET_PORT counter name b1
  }
}
EOF
}
sink_count() {
  nsx "$SINK" nft list counters table netdev count | awk '/packets/ {for (i = 1; i < NF; i++) if ($i == "packets") v = v (v == "" ? "" : ",") $(i + 1)} END {print v}'
}
# What arrived: per backend at the sink, or (ceiling) at the DUT's ingress.
arrived() {
  if [ "$1" = ceiling ]; then echo "$(counter "$DUT" npe2e-up rx_packets),0"; else sink_count; fi
}
verify_sample() {
  local cfg="$1" out="$2"
  ip netns exec "$SINK" timeout 5 tcpdump -i eth0 -nn -c 5 -l udp > "$out" 2>/dev/null &
  local td=$!
  sleep 0.7
  setsid ip netns exec "$GEN" trafgen -i "$cfg" -o eth0 -P 1 -q -Q -C -n 50 >/dev/null 2>&1 || true
  wait "$td" 2>/dev/null || true
}

# ---------------------------------------------------------------- 1. new connections
RUNS="$TMP/runs.jsonl"
LOADS="$TMP/loads.jsonl"
: > "$RUNS"; : > "$LOADS"
topo_up
sink_counters_up
echo "scale: topology up (${P}gen, ${P}dut, ${P}sink); ${SECONDS_RUN}s per case after ${WARMUP}s warm-up; trafgen on CPU 0, DUT on CPU $DUT_CPU; nodeplane: $NP_KIND; $IPT_VARIANT"
FAILED=()
if [ "${#DUT_LIST[@]}" -gt 0 ] && [ -n "$DUTS" ]; then
  for n in "${SIZE_LIST[@]}"; do
    vip="$(LAST_VIP_OF "$n")"
    cfg="$(gen_cfg "$vip")"
    for dut in "${DUT_LIST[@]}"; do
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      dut_start "$dut" "$n"
      gen_start "$cfg"
      sleep "$WARMUP"
      if ! kill -0 "$GEN_PID" 2>/dev/null; then
        echo "scale: $dut $n services NOT MEASURED: trafgen died: $(tr '\n' ' ' < "$TMP/trafgen.log")" >&2
        FAILED+=("$dut/$n"); GEN_PID=""
        dut_stop "$dut"
        continue
      fi
      b0=$(arrived "$dut"); g0=$(counter "$GEN" eth0 tx_packets); c0="$(cpu_sample)"; t0=$(date +%s.%N)
      sleep "$SECONDS_RUN"
      b1=$(arrived "$dut"); g1=$(counter "$GEN" eth0 tx_packets); c1="$(cpu_sample)"; t1=$(date +%s.%N)
      gen_stop
      dut_snapshot "$dut"
      : > "$TMP/sample.txt"
      [ "$dut" = ceiling ] || verify_sample "$cfg" "$TMP/sample.txt"
      dut_stop "$dut"
      python3 "$PY" record "$dut" "$n" "$load" "$b0" "$b1" "$g0" "$g1" "$t0" "$t1" \
        "$TMP/sample.txt" "$TMP/dut.json" "$c0" "$c1" "$RULES_S" >> "$RUNS"
      python3 "$PY" line "$RUNS"
    done
  done
fi

# ---------------------------------------------------------------- 2. load time
time_cmd() {  # seconds a command took, or "timeout"; $1 = timeout
  local lim="$1" t0 t1 rc=0
  shift
  t0=$(date +%s.%N)
  timeout -k 5 "$lim" "$@" > /dev/null || rc=$?
  t1=$(date +%s.%N)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo timeout; elif [ "$rc" != 0 ]; then echo "failed:$rc"; else
    python3 -c "print(round($t1 - $t0, 3))"; fi
}
load_record() {  # dut spec result
  local dut="$1" spec="$2" r="$3" head
  head="\"dut\": \"$dut\", \"services\": ${spec%%:*}, \"spec\": \"$spec\""
  case "$r" in
    timeout) echo "{$head, \"result\": \"timeout\", \"seconds\": $LOAD_TIMEOUT}" ;;
    failed:*) echo "{$head, \"result\": \"$r\"}" ;;
    *) echo "{$head, \"result\": \"ok\", \"seconds\": $r}" ;;
  esac >> "$LOADS"
  tail -1 "$LOADS"
}
for spec in "${LOAD_LIST[@]}"; do
  tag="${spec/:/_}"
  n="${spec%%:*}"
  for dut in "${LDUT_LIST[@]}"; do
    [ -n "$dut" ] || continue
    case "$dut" in
      nodeplane)
        # parse + validate of the same directory, in a process of its own
        pv=$(time_cmd "$LOAD_TIMEOUT" "$NP" state check "$TMP/state-$tag")
        rm -rf "$TMP/np-load"; cp -r "$TMP/state-10" "$TMP/np-load"
        cp "$TMP/state-$tag/$SVC_FILE" "$TMP/np-load/.services.staged"
        np_start "$TMP/np-load" any
        python3 "$PY" npload "$NP" "$TMP/np.sock" "$TMP/np-load/.services.staged" \
          "$TMP/np-load/$SVC_FILE" "$TMP/np.log" "$n" "$LOAD_TIMEOUT" > "$TMP/npload.json"
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$DUT_PID/status")
        python3 - "$TMP/npload.json" "$spec" "$pv" "$rss" "$TMP/np.log" >> "$LOADS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r = {"dut": "nodeplane", "spec": sys.argv[2], **r}
r["state_check_s"] = None if sys.argv[3].startswith(("timeout", "failed")) else float(sys.argv[3])
r["rss_kib_after"] = int(sys.argv[4])
r["log"] = [l for l in open(sys.argv[5], errors="replace").read().splitlines()
            if "generation" in l or "REJECT" in l or "Maglev" in l][-6:]
print(json.dumps(r))
EOF
        tail -1 "$LOADS"
        np_stop
        ;;
      iptables|nft)
        if ns_exists "$KLOAD"; then ip netns del "$KLOAD"; fi
        ip netns add "$KLOAD"
        if [ "$dut" = iptables ]; then
          r=$(time_cmd "$LOAD_TIMEOUT" ip netns exec "$KLOAD" sh -c "iptables-restore < '$TMP/ipt-$tag.rules'")
        else
          r=$(time_cmd "$LOAD_TIMEOUT" ip netns exec "$KLOAD" nft -f "$TMP/nft-$tag.rules")
        fi
        load_record "$dut" "$spec" "$r"
        # Emptied before the namespace goes, so the kernel's clean-up does not run behind
        # the next measurement.
        timeout -k 5 "$LOAD_TIMEOUT" ip netns exec "$KLOAD" nft flush ruleset || true
        ip netns del "$KLOAD"
        ;;
      *) die "unknown load DUT $dut" ;;
    esac
  done
done

# ---------------------------------------------------------------- report
echo "scale: load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$PY" report "$RUNS" "$LOADS" "$OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  die "not measured (see above): ${FAILED[*]}"
fi
