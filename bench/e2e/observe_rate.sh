#!/usr/bin/env bash
# Flow events end to end (bench/RESULTS.md "## Flow events"): the release daemon with the
# replay I/O at RATE pps over two frames that are always dropped (every frame an event), and
# `nodeplane observe --json` reading them for SECS seconds. Prints the worker's events
# counters, what the CLI printed and dropped, and the daemon threads' CPU over the middle 5 s.
# No root needed. Usage: bench/e2e/observe_rate.sh [RATE] [SECS]
set -euo pipefail
RATE=${1:-200000}
SECS=${2:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NP=${CARGO_TARGET_DIR:-$ROOT/target}/release/nodeplane
[ -x "$NP" ] || { echo "build first: cargo build --release -p nodeplane-control --bin nodeplane" >&2; exit 1; }
D=$(mktemp -d)
trap 'kill "$DP" 2>/dev/null || true; rm -rf "$D"' EXIT
python3 - "$D/in.pcap" <<'PY'
import struct, sys
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def frame(src, dst, proto, l4):
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, bytes(src), bytes(dst))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return bytes([2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 2, 0x0a]) + b'\x08\x00' + ip + l4
# client -> web-1:9050/tcp SYN (policy-denied); client -> 10.244.1.99:53/udp (no-endpoint)
tcp = struct.pack('!HHIIBBHHH', 42000, 9050, 1, 0, 5 << 4, 0x02, 65000, 0, 0)
udp = struct.pack('!HHHH', 43000, 53, 13, 0) + b'hello'
frames = [frame([10, 244, 1, 10], [10, 244, 1, 21], 6, tcp), frame([10, 244, 1, 10], [10, 244, 1, 99], 17, udp)]
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
    for i, fr in enumerate(frames):
        f.write(struct.pack('<IIII', 0, i, len(fr), len(fr)) + fr)
PY
mkdir "$D/state" && cp "$ROOT"/examples/state/*.yaml "$D/state/"
cat > "$D/config.yaml" <<YAML
state: { dir: $D/state }
control_socket: $D/np.sock
log_level: info
io:
  replay:
    inputs: [{ iface: pod-client, file: $D/in.pcap }]
    rate_pps: $RATE
    vary_ports: true
YAML
"$NP" run --config "$D/config.yaml" 2>"$D/daemon.log" &
DP=$!
sleep 2
counters() {
  "$NP" status --socket "$D/np.sock" --json | python3 -c 'import json,sys; w=json.load(sys.stdin)["workers"][0]; print("emitted", w["events"]["emitted"], "lost", w["events"]["lost"])'
}
cpu() { for t in /proc/$DP/task/*; do echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done; }
echo "before: $(counters)"
"$NP" observe --socket "$D/np.sock" --json --duration "$SECS" >"$D/obs.out" 2>"$D/obs.err" &
OP=$!
sleep $(( (SECS - 5) / 2 ))
a=$(cpu); sleep 5; b=$(cpu)
wait "$OP" || true
echo "after:  $(counters)"
echo "printed by the CLI: $(wc -l <"$D/obs.out")"
cat "$D/obs.err"
echo "thread CPU over 5 s (100% = one core):"
join <(echo "$a" | sort) <(echo "$b" | sort) | awk '{printf "  %-16s %3.0f%%\n", $1, ($3-$2)/5}'
uptime
