#!/usr/bin/env bash
# The main job on the embedded default: replays the bundled capture of the example node
# (examples/capture/*.pcap through examples/state/) with the release pipeline, then shows what
# happened to every packet and the packets as transmitted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p nodeplane-control
out=${NODEPLANE_DEMO_OUT:-out/demo}
rm -rf "$out"
inputs=()
for f in examples/capture/*.pcap; do
  inputs+=(--input "$(basename "$f" .pcap)=$f")
done
echo "== nodeplane replay --state examples/state ${inputs[*]} --output-dir $out"
target/release/nodeplane replay --state examples/state "${inputs[@]}" --output-dir "$out"
echo
echo "== verdicts ($out/verdicts.jsonl)"
python3 - "$out/verdicts.jsonl" <<'PY'
import json, sys
cols = ["index", "input", "verdict", "reason", "egress", "ct", "service", "backend", "policy"]
rows = [json.loads(l) for l in open(sys.argv[1])]
w = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows)) for c in cols}
print("  ".join(c.upper().ljust(w[c]) for c in cols))
for r in rows:
    print("  ".join(str(r[c] if r[c] is not None else "-").ljust(w[c]) for c in cols))
PY
for p in "$out"/*.pcap; do
  echo
  echo "== transmitted on $(basename "$p" .pcap)"
  tcpdump -nn -e -r "$p" 2>/dev/null
done
