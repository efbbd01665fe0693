#!/usr/bin/env bash
# The packet path's load-independent figures, and a gate against the committed baseline.
#
#   bash scripts/bench.sh --quick                  # the gate: figures vs bench/baseline.json
#   bash scripts/bench.sh --quick --write-baseline # rewrite the baseline (commit it with a why)
#   bash scripts/bench.sh --curves                 # scaling curves: bench/curves/*.json + *.svg
#
# --quick (a few minutes; CI runs it after the tests) measures, with callgrind instruction
# counts that do not move with the machine's load:
#   est_instr_per_pkt      established ACK, 10 services, 1024 flows, whole program
#   est_10k_instr_per_pkt  the same with 10,000 live flows
#   new_instr_per_conn     a SYN of a new connection, 10 services (Pipeline::process_burst)
#   bytes_per_flow         heap per conntrack flow, its index share included (counting allocator)
# and fails when a figure is more than 3% worse than bench/baseline.json. The method (two runs,
# N = 200 and 400 bursts of 64, the difference divided by 12,800 packets) is that of
# bench/RESULTS.md "## Pipeline".
set -euo pipefail
cd "$(dirname "$0")/.."

mode=""
write_baseline=0
for a in "$@"; do
  case "$a" in
    --quick) mode=quick ;;
    --curves) mode=curves ;;
    --write-baseline) write_baseline=1 ;;
    *) echo "usage: bash scripts/bench.sh --quick [--write-baseline] | --curves" >&2; exit 2 ;;
  esac
done
[ -n "$mode" ] || { echo "usage: bash scripts/bench.sh --quick [--write-baseline] | --curves" >&2; exit 2; }

command -v valgrind >/dev/null || { echo "bench: valgrind is required (scripts/setup.sh installs it)" >&2; exit 1; }

BASELINE=bench/baseline.json
TOLERANCE=0.03
EX=target/release/examples
work=$(mktemp -d /tmp/np-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "bench: building the profiling examples (release, no AF_XDP)" >&2
cargo build --release -q -p nodeplane-bench --no-default-features --examples

if [ "$mode" = curves ]; then
  mkdir -p bench/curves
  "$EX/scaling_curves" bench/curves
  exit 0
fi

# Total instructions of a whole-program run.
total_ir() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$@" >/dev/null 2>"$work/vg.log" \
    || { cat "$work/vg.log" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$work/cg"
}

# Instructions inside Pipeline::process_burst (inclusive) of a run.
burst_ir() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$@" >/dev/null 2>"$work/vg.log" \
    || { cat "$work/vg.log" >&2; exit 1; }
  callgrind_annotate --inclusive=yes "$work/cg" 2>/dev/null \
    | awk '/Pipeline::process_burst/ { gsub(",", "", $1); print $1; exit }'
}

per_packet() { # IR200 IR400
  python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 12800:.1f}')" "$1" "$2"
}

echo "bench: callgrind, established (10 services, 1024 flows)" >&2
est=$(per_packet "$(total_ir "$EX/profile_established" 200)" "$(total_ir "$EX/profile_established" 400)")
echo "bench: callgrind, established (10 services, 10000 flows)" >&2
est10k=$(per_packet "$(total_ir "$EX/profile_established" 200 10 10000)" \
  "$(total_ir "$EX/profile_established" 400 10 10000)")
echo "bench: callgrind, new connections (10 services)" >&2
new=$(per_packet "$(burst_ir "$EX/profile_new_connections" 200)" "$(burst_ir "$EX/profile_new_connections" 400)")
echo "bench: heap per flow (200000 flows)" >&2
mem_line=$("$EX/profile_memory" 200000)
bytes=$(awk '{for (i = 1; i < NF; i++) if ($i == "bytes_per_flow") print $(i + 1)}' <<<"$mem_line")

cat >"$work/now.json" <<EOF
{
  "est_instr_per_pkt": $est,
  "est_10k_instr_per_pkt": $est10k,
  "new_instr_per_conn": $new,
  "bytes_per_flow": $bytes
}
EOF

if [ "$write_baseline" = 1 ]; then
  cp "$work/now.json" "$BASELINE"
  echo "bench: wrote $BASELINE:" >&2
  cat "$BASELINE"
  exit 0
fi

[ -f "$BASELINE" ] || { echo "bench: $BASELINE is missing (--write-baseline creates it)" >&2; exit 1; }
python3 - "$BASELINE" "$work/now.json" "$TOLERANCE" <<'PY'
import json, sys
base = json.load(open(sys.argv[1]))
now = json.load(open(sys.argv[2]))
tol = float(sys.argv[3])
worse = []
print(f"{'figure':<24}{'baseline':>12}{'now':>12}{'change':>10}")
for key, b in base.items():
    n = now.get(key)
    if n is None:
        worse.append(f"{key}: not measured")
        continue
    change = (n - b) / b if b else 0.0
    flag = "  WORSE" if change > tol else ""
    print(f"{key:<24}{b:>12.1f}{n:>12.1f}{change:>+9.1%}{flag}")
    if change > tol:
        worse.append(f"{key}: {b} -> {n} ({change:+.1%}, limit +{tol:.0%})")
if worse:
    print("bench: REGRESSION against bench/baseline.json:\n  " + "\n  ".join(worse))
    sys.exit(1)
print("bench: no figure worse than the baseline by more than 3%")
PY
