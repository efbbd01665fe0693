#!/usr/bin/env bash
# Bulk transfers through nodeplane (the lab of scripts/lab.sh, 1 worker) with every pod and the
# router at Linux's default offloads, so that their TCP/UDP checksums arrive partial: 4 x 20 MiB
# over HTTP (ClusterIP v4 and v6, pod to pod, NodePort from the router), 2 x 2000 UDP datagrams
# of 1400 bytes; then TcpInCsumErrors/UdpInCsumErrors in every namespace (must stay 0) and the
# daemon's csum_completed and csum_offloaded. bench/RESULTS.md "## Partial checksums".
#
#   bash bench/e2e/partial_csum.sh      # root; NP_LAB_PREFIX (default np-pc-), NODEPLANE_BIN
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"; cd "$REPO"
export NP_LAB_PREFIX="${NP_LAB_PREFIX:-np-pc-}"
P="$NP_LAB_PREFIX"; NODE=${P}node; ROUTER=${P}router
BIN="${NODEPLANE_BIN:-$REPO/target/release/nodeplane}"
[ -x "$BIN" ] || (cargo build --release -q -p nodeplane-control)
tmp=$(mktemp -d /tmp/np-partial-csum.XXXXXX)
PIDS=()
cleanup() {
  [ -s "$tmp/pid" ] && kill -TERM "$(cat "$tmp/pid")" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  bash scripts/lab.sh down
  rm -rf "$tmp"
}
trap cleanup EXIT
bash scripts/lab.sh up >/dev/null
echo "== offloads of the client's eth0 (defaults: nothing set by the lab)"
ip netns exec ${P}client ethtool -k eth0 | grep -E "^tx-checksumming|^tcp-segmentation-offload|^generic-segmentation-offload"
echo "== offloads of the router's eth0"
ip netns exec $ROUTER ethtool -k eth0 | grep -E "^tx-checksumming"
cat > "$tmp/config.yaml" <<CFG
state:
  dir: $REPO/examples/state
control_socket: $tmp/np.sock
log_level: info
io:
  afxdp:
    workers: 1
CFG
ip netns exec "$NODE" bash -c "echo \$\$ > $tmp/pid; exec $BIN run --config $tmp/config.yaml" 2> "$tmp/np.log" &
for i in $(seq 100); do "$BIN" status --socket "$tmp/np.sock" >/dev/null 2>&1 && break; sleep 0.1; done
head -c $((20*1024*1024)) /dev/urandom > "$tmp/blob"
sha=$(sha256sum < "$tmp/blob" | cut -d' ' -f1)
for w in web1 web2; do
  (cd "$tmp" && exec ip netns exec ${P}$w python3 -m http.server 8080 --bind :: >/dev/null 2>&1) &
  PIDS+=($!)
  ip netns exec ${P}$w python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8<<20); s.bind(("0.0.0.0", 5353))
while True: s.recv(2048)' >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 1
for ns in client web1 web2; do ip netns exec ${P}$ns nstat -n; done
ip netns exec $ROUTER nstat -n
ok=1
get() { # ns url
  local got; got=$(ip netns exec "$1" curl -sS -m 60 "$2" | sha256sum | cut -d' ' -f1)
  if [ "$got" = "$sha" ]; then echo "$1 GET $2: 20 MiB, sha256 ok"; else echo "$1 GET $2: FAILED ($got)"; ok=0; fi
}
get ${P}client http://10.96.0.10/blob
get ${P}client "http://[fd00:96::10]/blob"
get ${P}client http://10.244.1.21:8080/blob
get $ROUTER http://192.168.100.2:30080/blob
# UDP: 2000 datagrams of 1400 bytes to the dns ClusterIP (backend port 5353) and pod to pod.
python3 - "$tmp" "${P}client" <<'PY' || ok=0
import subprocess, sys
tmp = sys.argv[1]
code = """
import socket, time
for dst in [('10.96.0.53', 53), ('10.244.1.22', 5353)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(2000):
        s.sendto(bytes([i % 251]) * 1400, dst)
        if i % 32 == 31: time.sleep(0.002)
"""
subprocess.run(["ip", "netns", "exec", sys.argv[2], "python3", "-c", code], check=True)
print("client sent 2 x 2000 UDP datagrams of 1400 bytes")
PY
sleep 1
echo "== nstat (since the transfers began)"
for ns in ${P}client ${P}web1 ${P}web2 $ROUTER; do
  line=$(ip netns exec $ns nstat -az TcpInCsumErrors UdpInCsumErrors Udp6InCsumErrors TcpInSegs UdpInDatagrams Udp6InDatagrams TcpRetransSegs UdpRcvbufErrors 2>/dev/null | awk 'NR>1 {printf "%s=%s ", $1, $2}')
  echo "$ns: $line"
  for c in TcpInCsumErrors UdpInCsumErrors Udp6InCsumErrors; do
    v=$(ip netns exec $ns nstat -az $c | awk -v c=$c '$1==c {print $2}')
    [ "${v:-0}" = 0 ] || { echo "  $c = $v"; ok=0; }
  done
done
echo "== nodeplane status"
"$BIN" status --socket "$tmp/np.sock" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); [print("worker", w["worker"], "packets", w["packets"], "forwarded", w["forwarded"], "dropped", w["dropped"], "csum_completed", w["csum_completed"], "csum_offloaded", w.get("csum_offloaded", 0), "drops", w["drops"]) for w in s["workers"]]'
if [ $ok = 1 ]; then echo "BULK OK"; else echo "BULK FAILED"; exit 1; fi
