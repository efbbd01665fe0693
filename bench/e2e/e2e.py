#!/usr/bin/env python3
"""Bookkeeping of bench/e2e/run.sh (no measuring here).

  e2e.py record DUT FLOWS LOAD S0 S1 G0 G1 T0 T1 SAMPLE DUTJSON NPMODE CPU0 CPU1  -> one JSON line
  e2e.py line RUNS.jsonl                   -> the last case, one human line
  e2e.py report RUNS.jsonl OUT.json SECS   -> table with ratios, goals, OUT.json
"""
import datetime
import json
import os
import platform
import sys

SINK_MAC = "02:00:00:00:02:15"


def cpu_times(txt):
    """/proc/stat cpuN lines -> {cpuN: (busy, total, softirq)} in jiffies."""
    out = {}
    for line in txt.splitlines():
        f = line.split()
        v = list(map(int, f[1:]))
        out[f[0]] = (sum(v) - v[3] - v[4], sum(v), v[6])
    return out


def dut_summary(dut, stats):
    """The few DUT counters that explain a figure (full stats stay in the JSON)."""
    if not isinstance(stats, dict):
        return {}
    if dut == "l2fwd":
        socks = stats.get("sockets", [])
        return {
            "forwarded": stats.get("forwarded"),
            "frames_per_burst": round(stats.get("frames_per_burst", 0), 1),
            "empty_polls": stats.get("empty_polls"),
            "kernel_rx_dropped": sum(s.get("k_rx_dropped") or 0 for s in socks),
            "kernel_rx_ring_full": sum(s.get("k_rx_ring_full") or 0 for s in socks),
            "kernel_fill_ring_empty": sum(s.get("k_fill_ring_empty") or 0 for s in socks),
            "rx_per_socket": {f"{s['iface']}/{s['queue']}": s["rx"] for s in socks if s["rx"]},
        }
    if dut == "nodeplane":
        ws = stats.get("workers", [])
        drops = {}
        for w in ws:
            for k, v in (w.get("drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        return {
            "packets": sum(w.get("packets", 0) for w in ws),
            "forwarded": sum(w.get("forwarded", 0) for w in ws),
            "drops": drops,
            "ct_entries": sum(w.get("ct_entries", 0) for w in ws),
            "io": [w.get("io") for w in ws],
            "xdp": (stats.get("io") or {}).get("xdp"),
        }
    return stats


def record(a):
    (dut, flows, load, s0, s1, g0, g1, t0, t1, sample, dutjson, npmode, c0, c1) = a
    dt = float(t1) - float(t0)
    x, y = cpu_times(c0), cpu_times(c1)
    busy = {k: round(100.0 * (y[k][0] - x[k][0]) / max(1, y[k][1] - x[k][1]), 1) for k in x}
    soft = {k: round(100.0 * (y[k][2] - x[k][2]) / max(1, y[k][1] - x[k][1]), 1) for k in x}
    lines = [l for l in open(sample).read().splitlines() if l.strip()]
    # l2fwd rewrites MACs only; the others DNAT the NodePort to the sink's backend port.
    want = "> 192.168.100.2.30053:" if dut == "l2fwd" else "> 10.244.1.21.5353:"
    mac = "> " + SINK_MAC
    if dut == "ceiling":
        want, mac, ok = "(nothing: dropped at the DUT's ingress)", "", None
    else:
        ok = len(lines) == 5 and all(want in l and mac in l for l in lines)
    try:
        stats = json.load(open(dutjson))
    except (OSError, ValueError):
        stats = None
    print(json.dumps({
        "dut": dut,
        "flows": int(flows),
        "seconds": round(dt, 3),
        "loadavg_before": load,
        "sink_pps": round((int(s1) - int(s0)) / dt),
        "offered_pps": round((int(g1) - int(g0)) / dt),
        "cpu_busy_pct": busy,
        "cpu_softirq_pct": soft,
        "verified": ok,
        "expected_at_sink": want if dut == "ceiling" else f"dst {want[2:-1]}, dst MAC {SINK_MAC}",
        "sample": lines,
        "nodeplane_mode": npmode if dut == "nodeplane" else None,
        "dut_summary": dut_summary(dut, stats),
        "dut_stats": stats,
    }))


def line(a):
    r = json.loads(open(a[0]).read().splitlines()[-1])
    print(f"  {r['dut']:<10} {r['flows']:>6} flows: {r['sink_pps'] / 1e6:6.3f} Mpps at the sink "
          f"(offered {r['offered_pps'] / 1e6:.3f}), load {r['loadavg_before']}, "
          f"cpu busy {r['cpu_busy_pct']}, verified {r['verified']}")
    s = r.get("dut_summary") or {}
    if s:
        brief = {k: v for k, v in s.items() if k not in ("io", "xdp", "rx_per_socket")}
        print(f"  {'':<10} {json.dumps(brief)}")


def report(a):
    runs = [json.loads(l) for l in open(a[0]) if l.strip()]
    out, secs = a[1], float(a[2])
    pps = {(r["dut"], r["flows"]): r["sink_pps"] for r in runs}
    flows = sorted({r["flows"] for r in runs})
    duts = []
    for r in runs:
        if r["dut"] not in duts:
            duts.append(r["dut"])
    bases = ("l2fwd", "nft", "nft-rps")
    print()
    print(f"{'flows':>6} " + " ".join(f"{d + ' Mpps':>15}" for d in duts)
          + "".join(f"{'np/' + b:>12}" for b in bases))
    ratios = {}
    for f in flows:
        row = f"{f:>6} " + " ".join(f"{pps.get((d, f), 0) / 1e6:>15.3f}" for d in duts)
        npv = pps.get(("nodeplane", f))
        rr = {}
        for b in bases:
            bv = pps.get((b, f))
            rr["nodeplane/" + b] = round(npv / bv, 3) if npv and bv else None
        ratios[str(f)] = rr
        row += "".join(f"{('%.2f' % v) if v else '-':>12}" for v in rr.values())
        print(row)
    bad = [f"{r['dut']}/{r['flows']}" for r in runs if r["verified"] is False]
    print()
    print("sink samples verified (5 frames per case)" if not bad else f"NOT VERIFIED: {', '.join(bad)}")
    goals = None
    g = ratios.get(str(max(flows))) if flows else None
    if g:
        def met(k, t):
            return None if g[k] is None else g[k] >= t
        goals = {
            "nodeplane/l2fwd >= 0.85": met("nodeplane/l2fwd", 0.85),
            "nodeplane/nft >= 1.4": met("nodeplane/nft", 1.4),
            "nodeplane/nft-rps >= 1.4": met("nodeplane/nft-rps", 1.4),
        }
        word = {True: "met", False: "NOT met", None: "not measured"}
        print(f"goals at {max(flows)} flows: "
              + ", ".join(f"{k}: {word[v]}" for k, v in goals.items()))
    doc = {
        "benchmark": "bench/e2e/run.sh",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "seconds_per_case": secs,
        "frame_bytes": 60,
        "settings": {k: os.environ.get(k) for k in ("E2E_NICE", "GEN_QDISC", "E2E_NAPI", "DUT_CPU")},
        "sink_pps": {d: {str(f): pps.get((d, f)) for f in flows} for d in duts},
        "ratios": ratios,
        "goals_at_max_flows": goals,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=2)
    print(f"written {out}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"record": record, "line": line, "report": report}[cmd](args)
