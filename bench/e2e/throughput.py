#!/usr/bin/env python3
"""Bookkeeping of bench/e2e/throughput.sh (no measuring here).

  throughput.py record DP PATH TEST RC OUT ERR DP0JSON DP1JSON LOAD E0 E1 CPU0 CPU1 OFF_PA OFF_RTR CSUMOFF TMP
                                          -> one JSON line (the case)
  throughput.py line RUNS.jsonl           -> the last case, one human line (exit 3: it failed)
  throughput.py report RUNS.jsonl OUT.json  -> table with ratios and goals, OUT.json
"""
import datetime
import json
import os
import platform
import sys

DATAPLANES = ["nodeplane", "nodeplane-fast", "nft", "iptables", "tc-ceiling", "tc-ceiling-xdp"]
# Experiments (bench/e2e/tc-ceiling/): ceilings of a kernel fast path, not products.
CEILINGS = {"tc-ceiling": "tc/nft", "tc-ceiling-xdp": "tcx/nft"}
PATHS = ["clusterip", "pod", "nodeport"]
PATH_NAMES = {
    "clusterip": "pod -> ClusterIP -> pod",
    "pod": "pod -> pod",
    "nodeport": "router -> NodePort -> pod",
}
# (row label, test, metric, unit, higher is better)
ROWS = [
    ("TCP_STREAM, 1 stream", "stream1", "gbps", "Gbit/s", True),
    ("TCP_STREAM, 4 streams", "stream4", "gbps", "Gbit/s", True),
    ("TCP_RR p50 latency", "rr", "p50_us", "us", False),
    ("TCP_RR p99 latency", "rr", "p99_us", "us", False),
    ("TCP_RR transactions", "rr", "tps", "1/s", True),
    ("TCP_CRR connections", "crr", "cps", "1/s", True),
    ("UDP 64 B, 50k flows", "udp", "mpps", "Mpps", True),
]
# Counters that move in every case (packet and segment totals): left out of pod_counters.
BULKY = {"IpInReceives", "IpInDelivers", "IpOutRequests", "TcpInSegs", "TcpOutSegs",
         "UdpInDatagrams", "UdpOutDatagrams", "IpExtInOctets", "IpExtOutOctets",
         "IpExtInNoECTPkts", "TcpExtTCPHPHits", "TcpExtTCPPureAcks", "TcpExtTCPHPAcks",
         "TcpExtTCPOrigDataSent", "TcpExtTCPDelivered", "TcpExtTCPBacklogCoalesce",
         "TcpExtTCPRcvCoalesce", "TcpExtTCPAutoCorking", "IpOutTransmits"}
# Issue 10 item 3: nodeplane / kernel nftables, pod -> ClusterIP (UDP: the 50k-flow case).
GOALS = [
    ("TCP_STREAM pod -> ClusterIP (1 stream)", "stream1", "gbps", ">=", 1.0),
    ("TCP_RR p50 latency pod -> ClusterIP", "rr", "p50_us", "<=", 1.0),
    ("TCP_CRR pod -> ClusterIP", "crr", "cps", ">=", 1.5),
    ("UDP 64 B pps, 50k flows, pod -> ClusterIP", "udp", "mpps", ">=", 1.5),
]


def cpu_busy(c0, c1):
    """/proc/stat cpuN lines before and after -> {cpuN: % busy}."""
    def parse(txt):
        out = {}
        for line in txt.splitlines():
            f = line.split()
            v = list(map(int, f[1:]))
            out[f[0]] = (sum(v) - v[3] - v[4], sum(v))
        return out
    x, y = parse(c0), parse(c1)
    return {k: round(100.0 * (y[k][0] - x[k][0]) / max(1, y[k][1] - x[k][1]), 1) for k in x}


def kv(txt):
    out = {}
    for item in txt.split():
        k, _, v = item.partition("=")
        out[k] = v
    return out


def counter_delta(e0, e1):
    """nstat counters of the pods and the router that moved during the case."""
    a, b = kv(e0), kv(e1)
    out = {}
    for k in b:
        try:
            d = int(b[k]) - int(a.get(k, 0))
        except ValueError:
            continue
        if d:
            out[k] = d
    return out


def csum_delta(delta):
    return {k: v for k, v in delta.items() if k.endswith("InCsumErrors")}


def flatten(x, prefix=""):
    """Numeric leaves of a JSON value -> {dotted path: number}; list items by their
    iface/queue or worker when they have one."""
    out = {}
    if isinstance(x, dict):
        for k, v in x.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            if isinstance(v, dict) and "iface" in v:
                key = f"{v['iface']}/{v.get('queue', i)}"
            elif isinstance(v, dict) and "worker" in v:
                key = f"w{v['worker']}"
            else:
                key = str(i)
            out.update(flatten(v, f"{prefix}{key}."))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out[prefix.rstrip(".")] = x
    return out


# Status fields that are not traffic counters, or move by themselves (tx_ring_empty_descs:
# every idle poll in copy mode; docs/runtime.md).
NOT_COUNTERS = ("uptime_s", "applied_at", "generation", "last_publish_ms", "ct_capacity",
                "ct_entries", "core", "tx_ring_empty_descs", "publications")


def np_delta(before, after):
    """nodeplane counters that moved during the case (status after - status before)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    a, b = flatten(before), flatten(after)
    out = {}
    for k, v in b.items():
        if k.split(".")[-1] in NOT_COUNTERS:
            continue
        d = v - a.get(k, 0)
        if d:
            out[k] = round(d, 3) if isinstance(d, float) else d
    return out


def metrics_of(test, out):
    """Raw client output -> (metrics, error)."""
    txt = open(out).read().strip()
    if test.startswith("stream"):
        try:
            j = json.loads(txt)
        except ValueError:
            return {}, "iperf3 printed no JSON" if not txt else "iperf3: " + txt[:200]
        if j.get("error"):
            return {}, "iperf3: " + j["error"]
        end = j.get("end", {})
        recv = end.get("sum_received", {})
        sent = end.get("sum_sent", {})
        if not recv.get("bits_per_second"):
            return {}, "iperf3: nothing received"
        return {
            "gbps": round(recv["bits_per_second"] / 1e9, 3),
            "retransmits": sent.get("retransmits"),
            "seconds": round(recv.get("seconds", 0), 2),
        }, None
    if test in ("rr", "crr"):
        try:
            j = json.loads(txt.splitlines()[-1])
        except (ValueError, IndexError):
            return {}, "rr printed nothing"
        if not j.get("ok"):
            return {k: j[k] for k in ("connections", "errors") if k in j}, "rr: " + str(j.get("error"))
        keep = ("tps", "p50_us", "p90_us", "p99_us", "transactions") if test == "rr" else (
            "cps", "p50_us", "p99_us", "connections", "errors", "threads")
        return {k: j.get(k) for k in keep}, None
    if test == "udp":
        try:
            j = json.loads(txt)
        except ValueError:
            return {}, None
        return {
            "mpps": round(j["received"] / j["seconds"] / 1e6, 4),
            "offered_mpps": round(j["offered"] / j["seconds"] / 1e6, 4),
            "flows": j["flows"],
        }, None
    return {}, "unknown test"


def record(a):
    (dp, path, test, rc, out, err, dp0, dp1, load, e0, e1, c0, c1, off_pa, off_rtr, csum_off, tmp) = a
    m, error = metrics_of(test, out)
    counters = counter_delta(e0, e1)
    errtxt = open(err).read().strip()
    rc = int(rc)
    if rc != 0 and not error:
        error = errtxt[:300] or ("timed out (killed)" if rc in (124, 137) else f"exit code {rc}")
    if rc == 124 and error:
        error = "timed out: " + error
    def load_json(f):
        try:
            return json.load(open(f))
        except (OSError, ValueError):
            return None
    stats0, stats = load_json(dp0), load_json(dp1)
    rec = {
        "dataplane": dp,
        "path": path,
        "test": test,
        "ok": rc == 0 and error is None,
        "error": error,
        "metrics": m,
        "csum_errors": csum_delta(counters),
        "pod_counters": {k: v for k, v in counters.items() if k.split("/")[1] not in BULKY},
        "cpu_busy_pct": cpu_busy(c0, c1),
        "load_before": load,
        "offloads": {"client_pod": off_pa.strip(), "router": off_rtr.strip()},
        "pods_tx_csum_off": csum_off == "1",
    }
    if dp in ("nodeplane", "nodeplane-fast"):
        rec["nodeplane_counters"] = np_delta(stats0, stats)
    elif dp in CEILINGS:
        rec["experiment"] = "ceiling of a kernel fast path (no policy, no userspace), not a product"
        rec["tc_hits"] = (np_delta(stats0, stats) or {})
    else:
        rec["kernel"] = stats
    for cpu in (0, 1):
        f = os.path.join(tmp, f"perf-{dp}-cpu{cpu}.txt")
        if os.path.exists(f):
            rec.setdefault("perf_top", {})[f"cpu{cpu}"] = [
                " ".join(l.split()).replace(" - -", "") for l in open(f).read().splitlines()]
            os.remove(f)
    print(json.dumps(rec))


def fmt(v, metric):
    if v is None:
        return "failed"
    if metric in ("gbps",):
        return f"{v:.2f}"
    if metric == "mpps":
        return f"{v:.3f}"
    if metric in ("p50_us", "p99_us"):
        return f"{v:.1f}"
    return f"{v:.0f}"


def line(runs):
    r = [json.loads(l) for l in open(runs) if l.strip()][-1]
    tag = " [TX CSUM OFF: not a result]" if r["pods_tx_csum_off"] else ""
    head = f"{r['dataplane']:9s} {r['path']:9s} {r['test']:7s}"
    cpu = " ".join(f"{k}={v}%" for k, v in sorted(r["cpu_busy_pct"].items()))
    if not r["ok"]:
        extra = ""
        if r["csum_errors"]:
            extra = " csum errors: " + ", ".join(f"{k} +{v}" for k, v in r["csum_errors"].items())
        elif r["dataplane"] in ("nodeplane", "nodeplane-fast"):
            extra = " (no checksum error counted in the pods)"
        print(f"{head} FAILED: {r['error']}{extra}{tag}", flush=True)
        sys.exit(3)
    m = r["metrics"]
    t = r["test"]
    if t.startswith("stream"):
        s = f"{m['gbps']:.2f} Gbit/s (retransmits {m.get('retransmits')})"
    elif t == "rr":
        s = f"p50 {m['p50_us']:.1f} us, p99 {m['p99_us']:.1f} us, {m['tps']:.0f} trans/s"
    elif t == "crr":
        s = f"{m['cps']:.0f} conn/s ({m.get('errors', 0)} errors)"
    else:
        s = f"{m['mpps']:.3f} Mpps received of {m['offered_mpps']:.3f} offered"
    drops = ""
    npc = r.get("nodeplane_counters") or {}
    lost = {k: v for k, v in npc.items()
            if any(w in k for w in ("drops.", "rx_ring_full", "rx_dropped", "fill_empty",
                                    "fill_starved", "tx_ring_full", "copy_failed"))}
    if lost:
        drops = " losses " + json.dumps(lost)
    idle = {k.split(".")[-1]: v for k, v in npc.items()
            if k.endswith(("idle_sleeps", "busy_polls"))}
    if idle:
        drops += " " + " ".join(f"{k}={v}" for k, v in sorted(idle.items()))
    if r["dataplane"] in CEILINGS:
        h = {k.split(".")[-1]: v for k, v in (r.get("tc_hits") or {}).items()}
        drops += " tc hits " + " ".join(f"{k}={h.get(k, 0)}" for k in (
            "dnat", "revnat", "routed", "pass", "gso_skbs", "gso_segs", "redirect_errors"))
        if r["csum_errors"]:
            drops += " csum errors " + json.dumps(r["csum_errors"])
    print(f"{head} {s}  [cpu {cpu}]{drops}{tag}", flush=True)


def value(runs, dp, path, test, metric):
    for r in runs:
        if (r["dataplane"], r["path"], r["test"]) == (dp, path, test):
            return r["metrics"].get(metric) if r["ok"] else None
    return "absent"


def txoff(runs, dp, path, test):
    return any(r["pods_tx_csum_off"] for r in runs
               if (r["dataplane"], r["path"], r["test"]) == (dp, path, test))


def ratio(a, b):
    if a in (None, "absent") or b in (None, "absent") or not b:
        return None
    return a / b


def report(runs_file, out):
    runs = [json.loads(l) for l in open(runs_file) if l.strip()]
    dps = [d for d in DATAPLANES if any(r["dataplane"] == d for r in runs)]
    paths = [p for p in PATHS if any(r["path"] == p for r in runs)]
    csum_off = any(r["pods_tx_csum_off"] for r in runs)
    rows = []
    print()
    if csum_off:
        off = sorted({r["dataplane"] for r in runs if r["pods_tx_csum_off"]})
        print(f"*** figures marked * (dataplanes: {', '.join(off)}): pods and router with TX"
              " checksumming OFF (TP_PODS_TX_CSUM_OFF): NOT the default, NOT a result (nodeplane"
              " wiring check); ratios with them are not results either ***")
    hdr = ["test", "path", "unit"] + dps
    if "nodeplane" in dps and "nft" in dps:
        hdr.append("np/nft")
    if "nodeplane" in dps and "iptables" in dps:
        hdr.append("np/ipt")
    if "nodeplane-fast" in dps and "nft" in dps:
        hdr.append("fast/nft")
    ceil = [(d, CEILINGS[d]) for d in dps if d in CEILINGS and "nft" in dps]
    hdr += [key for _, key in ceil]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for label, test, metric, unit, higher in ROWS:
        for path in paths:
            vals = {d: value(runs, d, path, test, metric) for d in dps}
            if all(v == "absent" for v in vals.values()):
                continue
            cells = [label, PATH_NAMES[path], unit + ("" if higher else " (lower is better)")]
            cells += ["-" if vals[d] == "absent" else
                      fmt(vals[d], metric) + ("*" if txoff(runs, d, path, test) else "")
                      for d in dps]
            row = {"test": test, "metric": metric, "path": path, "unit": unit,
                   "higher_is_better": higher, "values": vals}
            for num, other, key in ([("nodeplane", "nft", "np/nft"), ("nodeplane", "iptables", "np/ipt"),
                                     ("nodeplane-fast", "nft", "fast/nft")]
                                    + [(d, "nft", key) for d, key in ceil]):
                if key in hdr:
                    q = ratio(vals.get(num), vals.get(other))
                    cells.append("-" if q is None else f"{q:.2f}")
                    row[key] = None if q is None else round(q, 3)
            print("| " + " | ".join(cells) + " |")
            rows.append(row)
    if any(d in CEILINGS for d in dps):
        print("tc-ceiling, tc-ceiling-xdp (tc/nft, tcx/nft): EXPERIMENT, ceilings of a kernel fast path"
              " (a TC program does DNAT and forwarding itself; no policy, no userspace, -xdp adds an"
              " XDP_PASS program on the node's veths), NOT products")
    goals = []
    for np_dp in ("nodeplane", "nodeplane-fast"):
        if not (np_dp in dps and "nft" in dps and "clusterip" in paths):
            continue
        print()
        print(f"Goals (issue 10 item 3), {np_dp} / kernel nftables in this run:")
        for label, test, metric, op, target in GOALS:
            q = ratio(value(runs, np_dp, "clusterip", test, metric),
                      value(runs, "nft", "clusterip", test, metric))
            met = None if q is None else (q >= target if op == ">=" else q <= target)
            state = "not measured" if q is None else ("met" if met else "MISSED")
            if csum_off and q is not None:
                state += " (TX csum off: not a result)"
            print(f"  {label}: {'-' if q is None else f'{q:.2f}'} (goal {op} {target}): {state}")
            goals.append({"dataplane": np_dp, "goal": label,
                          "ratio": None if q is None else round(q, 3),
                          "op": op, "target": target, "met": met})
    failed = [f"{r['dataplane']}/{r['path']}/{r['test']}" for r in runs if not r["ok"]]
    if failed:
        print()
        print("Failed cases:")
        for r in runs:
            if not r["ok"]:
                ce = ", ".join(f"{k} +{v}" for k, v in r["csum_errors"].items()) or "none"
                print(f"  {r['dataplane']}/{r['path']}/{r['test']}: {r['error']}; checksum errors: {ce}")
    offl = {}
    for r in runs:
        offl.setdefault(r["dataplane"], r["offloads"])
    print()
    print("Offloads seen (client pod eth0 / router eth0) per dataplane:")
    for d, o in offl.items():
        print(f"  {d}: {o['client_pod']} / {o['router']}")
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "placement": {"app_cpu": int(os.environ.get("APP_CPU", 0)),
                      "nodeplane_cpu": os.environ.get("NP_CPU", "1"),
                      "nodeplane_workers": int(os.environ.get("TP_WORKERS", 1)),
                      "nice": int(os.environ.get("TP_NICE", -10))},
        "quick": os.environ.get("QUICK") == "1",
        "mtu": int(os.environ.get("TP_MTU", 1500)),
        "nodeplane_afxdp": "{" + os.environ.get("TP_AFXDP", "") + "}",
        "seconds": {"stream": float(os.environ.get("STREAM_SECS", 10)),
                    "rr_crr": float(os.environ.get("RR_SECS", 5)),
                    "udp": float(os.environ.get("UDP_SECS", 5))},
        "pods_tx_csum_off": csum_off,
        "not_a_result": csum_off,
        "table": rows,
        "goals": goals,
        "failed": failed,
        "cases": runs,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "record":
        record(sys.argv[2:])
    elif cmd == "line":
        line(sys.argv[2])
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: throughput.py record ...|line RUNS|report RUNS OUT")
