#!/usr/bin/env bash
# Soak (issue 13 item 10): the example node of scripts/lab.sh in network namespaces, the daemon
# (`nodeplane run --config`, AF_XDP, 2 workers) on it, mixed real traffic for N minutes while
# the state directory's service set changes every second. Not in CI: the figures go to
# bench/RESULTS.md ("Soak (issue 13 item 10)") with the command.
#
#   scripts/soak.sh [--minutes N]      N >= 3, may be fractional (default 10); root
#
# Traffic (each loop counts its successes and failures):
#   curl  client -> ClusterIP web 10.96.0.10:80 and [fd00:96::10]:80 (alternating)
#   dns   client -> ClusterIP dns 10.96.0.53:53/UDP (socat request, an answer expected)
#   np    router -> NodePort 192.168.100.2:30080/TCP
#   ping  web1 -> client 10.244.1.10 (pod to pod)
#   deny  client -> web-1 10.244.1.21:9050/TCP every ~3 s: must NOT connect (web's deny rule)
# Churn: every second `soak-services.yaml` in a copy of examples/state is rewritten (written to a
# dot file, which the loader skips, then renamed) with a sliding window of 1..50 extra ClusterIP
# services soak-J on VIPs 10.100.x.y (no traffic goes there): each step adds a new service
# (window grows) or removes the oldest (window shrinks), the size going 1 -> 50 -> 1 -> ...,
# so every step is a different state and retired services' tables must be freed.
# Samples every 10 s: the daemon's VmRSS and `nodeplane status --json`.
# Checks at the end (exit 1 if any fails):
#   rss       VmRSS growth from the end of the warm-up (2 min) to the end < 2 %
#   counters  per worker, from `status --json`: packets = forwarded + passed + held
#             + (dropped - io_lost), where io_lost is the sum of the drop reasons the I/O adds
#             after the pipeline decided (tx-no-socket, tx-failed, handoff-*, worker-panic,
#             pass-unavailable: dataplane/src/worker/mod.rs `stats`, where `dropped` =
#             pipeline drops + those). `packets` counts what the worker's pipeline processed
#             (its own frames and those handed in); held fragments leave `held` when released.
#   gens      the status generation advanced by the number of changes written (at least 95 %
#             of them, never more than one per change), every worker on the final generation,
#             the final service count = 5 example services + the window
#   rejects   rejections = 0 throughout
#   log       no warn/error line in the daemon's log outside the allowlist (ALLOW_LOG below)
#   traffic   every loop's failures = 0 (deny: successes = 0), each loop ran
set -euo pipefail

MINUTES=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    *) echo "usage: $0 [--minutes N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "soak.sh: must run as root" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${NODEPLANE_BIN:-$ROOT/target/ci/nodeplane}"
[ -x "$BIN" ] || { echo "soak.sh: no $BIN (cargo build -p nodeplane-control --profile ci)" >&2; exit 1; }
export NP_LAB_PREFIX="${NP_LAB_PREFIX:-np-i-}"
P="$NP_LAB_PREFIX"
NODE="${P}node"
TOTAL_S=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
# Warm-up: 2 minutes, the longest conntrack timeouts the traffic reaches (tcp_time_wait and
# tcp_fin_wait, 120 s): until then the tables fill with the closed connections of the loops.
WARMUP_S=120
[ "$TOTAL_S" -ge 180 ] || { echo "soak.sh: at least 3 minutes (2 of them warm-up)" >&2; exit 2; }
# Warn/error lines that may appear and why they are not a fault. A regular expression on the
# message, or empty. Only one, said once at start: `XDP links NOT pinned` (error) when
# /sys/fs/bpf is no bpffs in the daemon's mount namespace. `ip netns exec` gives the daemon a
# private mount namespace and the lab host has no bpffs mounted, so the links cannot be pinned:
# a property of the lab host, not of the soak (the program then goes with the process, which is
# what the soak's cleanup wants anyway). It is allowed at most once (checked).
ALLOW_LOG='^AF_XDP: XDP links NOT pinned '

TMP="$(mktemp -d /tmp/np-i-soak.XXXXXX)"
PIDS=()
cleanup() {
  local rc=$?
  touch "$TMP/stop" 2>/dev/null || true
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -s "$TMP/pid" ]; then
    kill -TERM "$(cat "$TMP/pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$TMP/pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  bash "$ROOT/scripts/lab.sh" down >/dev/null 2>&1 || true
  if [ -n "${NP_SOAK_KEEP:-}" ]; then
    echo "soak.sh: kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

bash "$ROOT/scripts/lab.sh" up

# Servers, as lab.sh demo starts them.
printf '#!/bin/sh\nread -r req\nprintf "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from %%s\\n" "$1"\n' > "$TMP/http.sh"
for w in web1 web2; do
  ns="${P}${w}"
  nsx "$ns" socat TCP6-LISTEN:8080,ipv6only=0,reuseaddr,fork SYSTEM:"sh $TMP/http.sh $w" >/dev/null 2>&1 &
  PIDS+=($!)
  nsx "$ns" socat UDP4-RECVFROM:5353,fork SYSTEM:"read -r q; echo answer from $w" >/dev/null 2>&1 &
  PIDS+=($!)
  nsx "$ns" socat TCP-LISTEN:9050,reuseaddr,fork SYSTEM:"echo should not be reached" >/dev/null 2>&1 &
  PIDS+=($!)
done

# The state: a copy of the example node plus the churned file.
mkdir -p "$TMP/state" "$TMP/samples"
cp "$ROOT"/examples/state/*.yaml "$TMP/state/"
LO=0; HI=1; GROW=1; CHANGES=0
write_services() {
  local j f="$TMP/state/.soak-services.yaml.tmp"
  {
    echo "# soak.sh churn: services soak-$LO .. soak-$((HI - 1))"
    echo "services:"
    for ((j = LO; j < HI; j++)); do
      local algo=maglev
      [ $((j % 2)) = 0 ] || algo=random
      echo "  - name: soak-$j"
      echo "    type: ClusterIP"
      echo "    frontends:"
      echo "      - { ip: 10.100.$((j / 200)).$((j % 200 + 1)), port: $((1000 + j % 50)), protocol: TCP }"
      echo "    algorithm: $algo"
      echo "    backends:"
      echo "      - { ip: 10.244.1.21, port: 8080 }"
      [ $((j % 3)) = 0 ] || echo "      - { ip: 10.244.1.22, port: 8080 }"
    done
  } > "$f"
  mv -f "$f" "$TMP/state/soak-services.yaml"
}
write_services

SOCK="$TMP/nodeplane.sock"
cat > "$TMP/config.yaml" <<CFG
state:
  dir: $TMP/state
control_socket: $SOCK
log_level: info
log_format: json
conntrack_snapshot: $TMP/conntrack.snap
io:
  afxdp:
    workers: 2
CFG
nsx "$NODE" bash -c "echo \$\$ > $TMP/pid; exec $BIN run --config $TMP/config.yaml" 2> "$TMP/nodeplane.log" &
PIDS+=($!)
for _ in $(seq 100); do
  "$BIN" status --socket "$SOCK" >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN" status --socket "$SOCK" >/dev/null 2>&1 || { cat "$TMP/nodeplane.log" >&2; echo "soak.sh: nodeplane did not start" >&2; exit 1; }
DPID="$(cat "$TMP/pid")"
"$BIN" status --socket "$SOCK" --json > "$TMP/status-start.json"
echo "soak.sh: daemon pid $DPID up; ${TOTAL_S} s of traffic and churn, warm-up ${WARMUP_S} s"

# Traffic loops: one line ok/fail per attempt in $TMP/t-NAME.
loop() {
  local name="$1" pause="$2"; shift 2
  local i=0
  while [ ! -e "$TMP/stop" ]; do
    if "$@" >/dev/null 2>&1; then echo ok; else echo fail; fi
    i=$((i + 1))
    sleep "$pause"
  done >> "$TMP/t-$name"
}
curl_web() {
  CURL_N=$(( ${CURL_N:-0} + 1 ))
  if [ $((CURL_N % 2)) = 0 ]; then
    nsx "${P}client" curl -sS -m 3 "http://[fd00:96::10]/" | grep -q "hello from"
  else
    nsx "${P}client" curl -sS -m 3 http://10.96.0.10/ | grep -q "hello from"
  fi
}
dns_q() { echo query | nsx "${P}client" socat -T2 - UDP4:10.96.0.53:53 | grep -q "answer from"; }
nodeport() { nsx "${P}router" curl -sS -m 3 http://192.168.100.2:30080/ | grep -q "hello from"; }
ping_pod() { nsx "${P}web1" ping -c 1 -W 2 10.244.1.10; }
denied() { nsx "${P}client" curl -sS -m 1 http://10.244.1.21:9050/; }   # success = a leak
touch "$TMP"/t-{curl,dns,np,ping,deny}
loop curl 0.1 curl_web & PIDS+=($!)
loop dns 0.1 dns_q & PIDS+=($!)
loop np 0.2 nodeport & PIDS+=($!)
loop ping 0.2 ping_pod & PIDS+=($!)
loop deny 2 denied & PIDS+=($!)

# Churn: one change a second.
churn() {
  while [ ! -e "$TMP/stop" ]; do
    sleep 1
    if [ "$GROW" = 1 ]; then HI=$((HI + 1)); else LO=$((LO + 1)); fi
    [ $((HI - LO)) -lt 50 ] || GROW=0
    [ $((HI - LO)) -gt 1 ] || GROW=1
    write_services
    CHANGES=$((CHANGES + 1))
    echo "$CHANGES $((HI - LO))" > "$TMP/changes"
  done
}
churn & CHURN_PID=$!
PIDS+=($CHURN_PID)

# Samples every 10 s.
sample() {
  local t="$1" rss
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DPID/status")
  "$BIN" status --socket "$SOCK" --json > "$TMP/samples/$t.json"
  echo "$t $rss" >> "$TMP/rss"
}
START=$(date +%s)
sample 0
next=10
while :; do
  now=$(( $(date +%s) - START ))
  [ "$now" -lt "$TOTAL_S" ] || break
  if [ "$now" -ge "$next" ]; then
    kill -0 "$DPID" 2>/dev/null || { echo "soak.sh: the daemon died" >&2; tail "$TMP/nodeplane.log" >&2; exit 1; }
    sample "$next"
    next=$((next + 10))
  fi
  sleep 0.5
done
[ "$next" -gt "$TOTAL_S" ] || sample "$TOTAL_S"
touch "$TMP/stop"
wait "$CHURN_PID" 2>/dev/null || true
sleep 3   # the last change published, the loops' last attempts done
"$BIN" status --socket "$SOCK" --json > "$TMP/status-end.json"
kill -TERM "$DPID"
for _ in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
: > "$TMP/pid"

python3 - "$TMP" "$WARMUP_S" "$ALLOW_LOG" <<'PY'
import json, os, re, sys
tmp, warm, allow = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fails = []
rss = [tuple(map(int, l.split())) for l in open(f"{tmp}/rss")]
t_end, r_end = rss[-1]
t_w, r_w = min(rss, key=lambda x: abs(x[0] - warm))
growth = (r_end - r_w) * 100.0 / r_w
print(f"RSS (VmRSS, KiB) every 10 s: {' '.join(str(r) for _, r in rss)}")
print(f"rss: start {rss[0][1]} KiB (t=0), after warm-up {r_w} KiB (t={t_w} s), end {r_end} KiB (t={t_end} s), "
      f"growth after warm-up {growth:+.2f} %, max {max(r for _, r in rss)} KiB")
if growth >= 2.0:
    fails.append(f"rss: grew {growth:.2f} % after warm-up (>= 2 %)")

st0 = json.load(open(f"{tmp}/status-start.json"))
st = json.load(open(f"{tmp}/status-end.json"))
IO = ("tx-no-socket", "tx-failed", "handoff-full", "handoff-too-long", "handoff-abandoned",
      "worker-panic", "pass-unavailable")
for w in st["workers"]:
    io_lost = sum(v for k, v in w["drops"].items() if k in IO)
    rhs = w["forwarded"] + w["passed"] + w["held"] + (w["dropped"] - io_lost)
    ok = w["packets"] == rhs
    print(f"worker {w['worker']}: packets {w['packets']} = forwarded {w['forwarded']} + passed {w['passed']} "
          f"+ held {w['held']} + dropped {w['dropped']} - io_lost {io_lost} = {rhs}: {'ok' if ok else 'MISMATCH'}; "
          f"rx {w['io']['rx_packets']}, drops {w['drops']}, ct {w['ct_entries']}, generation {w['generation']}")
    if not ok:
        fails.append(f"counters: worker {w['worker']} packets {w['packets']} != {rhs}")
    if w["generation"] != st["generation"]:
        fails.append(f"gens: worker {w['worker']} on generation {w['generation']}, status {st['generation']}")
rx = sum(w["io"]["rx_packets"] for w in st["workers"])
print(f"all workers: rx {rx}, pipeline packets {sum(w['packets'] for w in st['workers'])} "
      f"(frames handed to their owner are received by one worker, processed by the other)")
changes, window = map(int, open(f"{tmp}/changes").read().split())
dg = st["generation"] - st0["generation"]
print(f"generations: {st0['generation']} -> {st['generation']} (+{dg}) for {changes} changes written; "
      f"publications {st['publications']}, rejections {st['rejections']}, services {st['services']} "
      f"(5 + window {window}), state {st['state']}, dead workers {len(st.get('dead_workers', []))}")
if not (0.95 * changes <= dg <= changes):
    fails.append(f"gens: +{dg} generations for {changes} changes")
if st["services"] != 5 + window:
    fails.append(f"gens: {st['services']} services, want {5 + window}")
rej = max(json.load(open(f"{tmp}/samples/{f}"))["rejections"] for f in os.listdir(f"{tmp}/samples"))
if rej or st["rejections"]:
    fails.append(f"rejects: {max(rej, st['rejections'])} ({st.get('last_rejection')})")
if st["state"] != "ok" or st.get("dead_workers"):
    fails.append(f"state {st['state']}, dead workers {st.get('dead_workers')}")

bad, levels, allowed = [], {}, []
for line in open(f"{tmp}/nodeplane.log"):
    try:
        o = json.loads(line)
    except ValueError:
        bad.append(line.rstrip()); continue
    lv = o.get("level", "?")
    levels[lv] = levels.get(lv, 0) + 1
    if lv in ("warn", "error"):
        if allow and re.search(allow, o.get("msg", "")) and not allowed:
            allowed.append(line.rstrip())
        else:
            bad.append(line.rstrip())
print(f"log: lines per level {levels}; allowlisted: {len(allowed)}; unexpected: {len(bad)}")
for l in bad[:20]:
    print("   ", l)
if bad:
    fails.append(f"log: {len(bad)} unexpected lines")

for name in ("curl", "dns", "np", "ping", "deny"):
    lines = open(f"{tmp}/t-{name}").read().split()
    ok, fail = lines.count("ok"), lines.count("fail")
    if name == "deny":
        print(f"traffic {name}: {fail} blocked, {ok} went through (must be 0)")
        if ok or not fail:
            fails.append(f"traffic: deny {ok} went through, {fail} blocked")
    else:
        print(f"traffic {name}: {ok} ok, {fail} failed")
        if fail or not ok:
            fails.append(f"traffic: {name} {fail} failed of {ok + fail}")
print()
if fails:
    print("SOAK FAILED:")
    for f in fails:
        print("  -", f)
    sys.exit(1)
print("SOAK OK: every check passed")
PY
