#!/usr/bin/env python3
"""Generators and bookkeeping of bench/e2e/scale.sh (the measuring is done there, except the
nodeplane load, which this times against the daemon's control socket).

  scale.py npstate DIR N                 nodeplane state of N services (services.yaml last)
  scale.py iptables N OUT                kube-proxy iptables-mode rules (iptables-restore input)
  scale.py nft N OUT                     kube-proxy nftables-mode rules (nft -f input)
  scale.py npload NP SOCK STAGED TARGET LOG N TIMEOUT   -> one JSON object (nodeplane load)
  scale.py record ...                    -> one JSON line (a new-connection case)
  scale.py report RUNS.jsonl LOADS.jsonl OUT.json       -> tables with ratios, goals, OUT.json

The N services are ClusterIP-style: service i has VIP 10.96.0.0 + 1 + i, port 53/UDP, and two
backends. The last one (i = N - 1), the one the traffic goes to, has the sink's two addresses
10.244.1.21:5353 and 10.244.1.22:5353; every other one has its own backend pair (distinct
ports, then distinct addresses of a remote node's pods), so that nodeplane builds one Maglev
table per service, as it would in a cluster, and the kernel rules have one DNAT target pair
per service, as kube-proxy writes them.
"""
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import platform
import re
import subprocess
import sys
import time

VIP_BASE = int(ipaddress.IPv4Address("10.96.0.0"))
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
SINK_BACKENDS = ("10.244.1.21", "10.244.1.22")
SVC_PORT = 53
TARGET_PORT = 5353


def spec(s):
    """"N" (N services, one VIP each) or "N:K" (N services on N/K VIPs, K ports each: how
    kube-proxy counts, one service port is one service) -> (N, K)."""
    n, _, k = str(s).partition(":")
    return int(n), int(k or 1)


def vip(i, k=1):
    return str(ipaddress.IPv4Address(VIP_BASE + 1 + i // k))


def port(i, k=1):
    return SVC_PORT + i % k


def backends(i, n):
    """The backend pair of service i of n: [(ip, port), (ip, port)]."""
    if i == n - 1:
        return [(SINK_BACKENDS[0], TARGET_PORT), (SINK_BACKENDS[1], TARGET_PORT)]
    if i < 60000:
        return [(SINK_BACKENDS[0], 1024 + i), (SINK_BACKENDS[1], 1024 + i)]
    j = i - 60000
    return [(f"10.244.2.{21 + j // 60000}", 1024 + j % 60000),
            (f"10.244.2.{121 + j // 60000}", 1024 + j % 60000)]


def name(i):
    return f"svc-{i:06d}"


# ---------------------------------------------------------------- nodeplane state
def npstate(a):
    d, (n, k) = a[0], spec(a[1])
    ct = int(os.environ.get("SCALE_NP_CT", "4194304"))
    m = int(os.environ.get("SCALE_MAGLEV_M", "1021"))
    os.makedirs(d, exist_ok=True)
    files = {
        "interfaces.yaml": """interfaces:
  - { name: npe2e-up, role: uplink, mac: "02:00:00:00:00:01", gateway_mac: "02:00:00:00:00:fe" }
  - { name: npe2e-pod, role: pod, mac: "02:00:00:00:01:02" }
""",
        "endpoints.yaml": """endpoints:
  - name: sink
    ips: [10.244.1.21, 10.244.1.22]
    mac: "02:00:00:00:02:15"
    interface: npe2e-pod
    identity: 1002
    labels: { app: sink }
""",
        # The generator's sources are remote pods (10.244.128.0/17, identity 4000), so the
        # kernel's kube-proxy rules do not masquerade them (sources inside the cluster CIDR):
        # the same work, DNAT only, on every dataplane.
        "ipcache.yaml": """ipcache:
  - { prefix: 10.244.2.0/24, identity: 2001 }
  - { prefix: 10.244.128.0/17, identity: 4000 }
""",
        "node.yaml": f"""# bench/e2e/scale.sh: the node of bench/e2e/run.sh with N ClusterIP services.
node:
  name: scale-node
  pod_cidrs: [10.244.1.0/24]
  node_ips: [192.168.100.2]
  policy_mode: enforce
  maglev_table_size: {m}
conntrack:
  max_entries: {ct}
""",
        "policies.yaml": """policies:
  - endpoint: sink
    ingress:
      - action: allow
        identities: [4000]
        protocol: UDP
        ports: [{ port: 1024, end_port: 65535 }]
""",
    }
    for f, text in files.items():
        with open(os.path.join(d, f), "w") as fh:
            fh.write(text)
    if state_format() == "json":
        write_atomic(os.path.join(d, "services.json"), services_json(n, k))
    else:
        write_atomic(os.path.join(d, "services.yaml"), services_yaml(n, k))


def state_format():
    """`SCALE_STATE_FORMAT`: the services file's format, yaml (default) or json (the same
    schema; the daemon reads `*.json` state files with serde_json)."""
    f = os.environ.get("SCALE_STATE_FORMAT", "yaml")
    if f not in ("yaml", "json"):
        sys.exit(f"SCALE_STATE_FORMAT must be yaml or json, not {f!r}")
    return f


def services_json(n, k):
    svcs = []
    for i in range(n):
        (a, pa), (b, pb) = backends(i, n)
        svcs.append({"name": name(i), "type": "ClusterIP",
                     "frontends": [{"ip": vip(i, k), "port": port(i, k), "protocol": "UDP"}],
                     "backends": [{"ip": a, "port": pa}, {"ip": b, "port": pb}]})
    return json.dumps({"services": svcs})


def services_yaml(n, k):
    out = [f"# {n} ClusterIP services, {k} port(s) per VIP (bench/e2e/scale.py)\nservices:\n"]
    for i in range(n):
        (a, pa), (b, pb) = backends(i, n)
        out.append(
            f"  - name: {name(i)}\n    type: ClusterIP\n"
            f"    frontends: [{{ ip: {vip(i, k)}, port: {port(i, k)}, protocol: UDP }}]\n"
            f"    backends: [{{ ip: {a}, port: {pa} }}, {{ ip: {b}, port: {pb} }}]\n")
    return "".join(out)


def write_atomic(path, text):
    d, f = os.path.split(path)
    tmp = os.path.join(d, "." + f + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.rename(tmp, path)


# ---------------------------------------------------------------- kube-proxy iptables mode
def kp_hash(s, n=16):
    """kube-proxy's chain-name hash: base32 of SHA-256, first 16 characters."""
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:n]


IPT_FILTER = """*filter
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
"""


def iptables(a):
    """The chains kube-proxy's iptables proxier (pkg/proxy/iptables/proxier.go) writes for N
    ClusterIP services with two ready endpoints each: KUBE-SERVICES -> KUBE-SVC-* (masquerade
    of off-cluster sources, then statistic-mode random over the endpoints) -> KUBE-SEP-*
    (hairpin masquerade, DNAT). The measured service is the last rule of KUBE-SERVICES before
    the NodePort jump, as the last service kube-proxy happens to write."""
    (n, k), path = spec(a[0]), a[1]
    decl, rules = [], []
    for i in range(n):
        spn = f"bench/{name(i)}:p{port(i, k)}"
        svc = "KUBE-SVC-" + kp_hash(spn + "udp")
        decl.append(f":{svc} - [0:0]\n")
        rules.append(f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" -m udp -p udp '
                     f"-d {vip(i, k)}/32 --dport {port(i, k)} -j {svc}\n")
        rules.append(f'-A {svc} -m comment --comment "{spn} cluster IP" -m udp -p udp '
                     f"-d {vip(i, k)}/32 --dport {port(i, k)} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ\n")
        eps = backends(i, n)
        seps = []
        for e, (ip, bport) in enumerate(eps):
            sep = "KUBE-SEP-" + kp_hash(spn + "udp" + f"{ip}:{bport}")
            seps.append(sep)
            decl.append(f":{sep} - [0:0]\n")
            prob = (f"-m statistic --mode random --probability {1.0 / (len(eps) - e):.11f} "
                    if e < len(eps) - 1 else "")
            rules.append(f'-A {svc} -m comment --comment "{spn} -> {ip}:{bport}" {prob}-j {sep}\n')
        for sep, (ip, bport) in zip(seps, eps):
            rules.append(f"-A {sep} -m comment --comment {spn} -s {ip}/32 -j KUBE-MARK-MASQ\n")
            rules.append(f"-A {sep} -m comment --comment {spn} -m udp -p udp "
                         f"-j DNAT --to-destination {ip}:{bport}\n")
    with open(path, "w") as fh:
        fh.write(IPT_FILTER)
        fh.write("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                 ":POSTROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n"
                 ":KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n")
        fh.writelines(decl)
        fh.write('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
                 '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
                 '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n'
                 "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"
                 "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
                 "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n"
                 '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
                 "-j MASQUERADE --random-fully\n")
        fh.writelines(rules)
        fh.write('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
                 'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n'
                 "COMMIT\n")


# ---------------------------------------------------------------- kube-proxy nftables mode
NFT_HEAD = """table ip kube-proxy {{
  comment "rules for kube-proxy (layout of kube-proxy's nftables mode; bench/e2e/scale.py)"
  set cluster-ips {{ type ipv4_addr; {cluster_ips} }}
  set nodeport-ips {{ type ipv4_addr; elements = {{ 192.168.100.2 }} }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
  map firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; {service_ips} }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  chain filter-prerouting {{
    type filter hook prerouting priority dstnat - 10; policy accept;
    ct state new jump firewall-check
  }}
  chain filter-input {{
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }}
  chain filter-forward {{
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }}
  chain filter-output {{
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    jump masquerading
  }}
  chain firewall-check {{
    ip daddr . meta l4proto . th dport vmap @firewall-ips
  }}
  chain cluster-ips-check {{
    ip daddr @cluster-ips reject
    ip daddr {service_cidr} drop
  }}
  chain service-endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }}
  chain nodeport-endpoints-check {{
    ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain mark-for-masquerade {{
    meta mark set meta mark or 0x4000
  }}
  chain masquerading {{
    meta mark & 0x4000 == 0 return
    meta mark set meta mark xor 0x4000
    masquerade fully-random
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
  }}
"""


def nft(a):
    """The table kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go) writes for N
    ClusterIP services with two ready endpoints each: one `service-ips` verdict map of
    VIP . proto . port : goto service chain; the service chain masquerades off-cluster sources
    and picks an endpoint chain with `numgen random mod 2 vmap`; the endpoint chain DNATs."""
    (n, k), path = spec(a[0]), a[1]
    elems, chains = [], []
    for i in range(n):
        base = f"bench/{name(i)}/udp/p{port(i, k)}"
        svc = f"service-{kp_hash(base, 8)}-{base}"
        elems.append(f"{vip(i, k)} . udp . {port(i, k)} : goto {svc}")
        eps = []
        for e, (ip, bport) in enumerate(backends(i, n)):
            ep = f"endpoint-{kp_hash(base + ip, 8)}-{base}__{ip}/{bport}"
            eps.append(f"{e} : goto {ep}")
            chains.append(f"  chain {ep} {{\n    ip saddr {ip} jump mark-for-masquerade\n"
                          f"    meta l4proto udp dnat to {ip}:{bport}\n  }}\n")
        chains.append(f"  chain {svc} {{\n    ip daddr {vip(i, k)} udp dport {port(i, k)} ip saddr != "
                      f"{CLUSTER_CIDR} jump mark-for-masquerade\n"
                      f"    numgen random mod 2 vmap {{ {', '.join(eps)} }}\n  }}\n")
    cluster_ips = ("elements = { " + ", ".join(vip(i * k, k) for i in range((n + k - 1) // k)) + " }"
                   if n else "")
    service_ips = "elements = { " + ", ".join(elems) + " }" if n else ""
    with open(path, "w") as fh:
        fh.write(NFT_HEAD.format(cluster_ips=cluster_ips, service_ips=service_ips,
                                 service_cidr=SERVICE_CIDR))
        fh.writelines(chains)
        fh.write("}\n")


# ---------------------------------------------------------------- nodeplane load
def status(np, sock):
    r = subprocess.run([np, "status", "--socket", sock, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def npload(a):
    """Moves a staged services.yaml of N services into the running daemon's state directory
    (one rename: one inotify event) and times it: until `nodeplane status` shows the new
    generation with N services (published: every service forwards, Maglev tables not yet
    built hash modulo their backends), and until the daemon logs that every Maglev table is
    built (the generations that follow). Polls the control socket (~every 5-10 ms: each poll
    is a `nodeplane status` process)."""
    np, sock, staged, target, log, n, timeout = a[0], a[1], a[2], a[3], a[4], int(a[5]), float(a[6])
    st0 = status(np, sock)
    g0, rej0 = st0["generation"], st0["rejections"]
    log_off = os.path.getsize(log)
    t0 = time.monotonic()
    wall0 = time.time()
    os.rename(staged, target)
    res = {"services": n, "generation_before": g0}
    pub = None
    while time.monotonic() - t0 < timeout:
        st = status(np, sock)
        now = time.monotonic() - t0
        if st and st["rejections"] > rej0:
            res.update(result="rejected", seconds=round(now, 3),
                       error=(st.get("last_rejection") or {}).get("error"))
            break
        if st and st["generation"] > g0 and st["services"] == n:
            pub = st["generation"]
            res.update(result="published", published_s=round(now, 3), generation=pub,
                       last_publish_ms=st.get("last_publish_ms"))
            break
        time.sleep(0.003)
    else:
        res.update(result="timeout", seconds=timeout)
    if pub is not None:
        res.update(log_times(log, log_off, g0, wall0, t0, timeout))
    print(json.dumps(res))


def log_ts(line):
    m = re.search(r"ts=(\S+?)Z? ", line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(
        tzinfo=datetime.timezone.utc).timestamp() if m else None


def log_times(log, off, g0, wall0, t0, timeout):
    """From the daemon's log lines after `off` (their own times, ms resolution; no polling in
    them): the first generation after g0 published from the state source (its compile +
    publish time, pending Maglev tables), and when every Maglev table was built."""
    out = {}
    pub_re = re.compile(r"published generation (\d+) from .* in ([0-9.]+) ms")
    pend_re = re.compile(r"generation (\d+): (\d+) Maglev tables still to build")
    done_re = re.compile(r"published generation (\d+): every Maglev table built")
    while time.monotonic() - t0 < timeout:
        lines = open(log, errors="replace").read()[off:].splitlines()
        pub = None
        for l in lines:
            m = pub_re.search(l)
            if m and int(m.group(1)) > g0:
                pub = int(m.group(1))
                out.update(generation=pub, compile_publish_ms=float(m.group(2)),
                           published_log_s=round(log_ts(l) - wall0, 3))
                break
        if pub is not None:
            pend = [int(m.group(2)) for l in lines
                    for m in [pend_re.search(l)] if m and int(m.group(1)) == pub]
            out["maglev_pending_at_publish"] = pend[0] if pend else 0
            if not pend:
                out["complete_log_s"] = out["published_log_s"]
                return out
            for l in lines:
                m = done_re.search(l)
                if m and int(m.group(1)) > pub:
                    out.update(complete_generation=int(m.group(1)),
                               complete_log_s=round(log_ts(l) - wall0, 3))
                    return out
        time.sleep(0.005)
    return out


# ---------------------------------------------------------------- new connections
def cpu_times(txt):
    out = {}
    for line in txt.splitlines():
        f = line.split()
        v = list(map(int, f[1:]))
        out[f[0]] = (sum(v) - v[3] - v[4], sum(v), v[6])
    return out


def record(a):
    (dut, n, load, b0, b1, g0, g1, t0, t1, sample, dutjson, c0, c1, extra) = a
    dt = float(t1) - float(t0)
    b0, b1 = [int(x) for x in b0.split(",")], [int(x) for x in b1.split(",")]
    per = [y - x for x, y in zip(b0, b1)]
    x, y = cpu_times(c0), cpu_times(c1)
    busy = {k: round(100.0 * (y[k][0] - x[k][0]) / max(1, y[k][1] - x[k][1]), 1) for k in x}
    lines = [l for l in open(sample).read().splitlines() if l.strip()]
    want = [f"> {ip}.{TARGET_PORT}:" for ip in SINK_BACKENDS]
    ok = len(lines) >= 5 and all(any(w in l for w in want) for l in lines)
    if dut == "ceiling":
        ok = None  # nothing reaches the sink: counted at the DUT's ingress
    try:
        stats = json.load(open(dutjson))
    except (OSError, ValueError):
        stats = None
    summary = stats
    if dut == "nodeplane" and isinstance(stats, dict):
        ws = stats.get("workers", [])
        drops = {}
        for w in ws:
            for k, v in (w.get("drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        summary = {"packets": sum(w.get("packets", 0) for w in ws),
                   "forwarded": sum(w.get("forwarded", 0) for w in ws),
                   "drops": drops,
                   "ct_entries": sum(w.get("ct_entries", 0) for w in ws),
                   "generation": stats.get("generation"), "services": stats.get("services")}
    print(json.dumps({
        "dut": dut, "services": int(n), "seconds": round(dt, 3), "loadavg_before": load,
        "new_conn_per_s": round(sum(per) / dt),
        "per_backend_per_s": [round(p / dt) for p in per],
        "offered_pps": round((int(g1) - int(g0)) / dt),
        "cpu_busy_pct": busy, "verified": ok, "sample": lines,
        "expected_at_sink": f"dst {' or '.join(SINK_BACKENDS)} port {TARGET_PORT}",
        "rules_load_s": float(extra) if extra else None,
        "dut_summary": summary, "dut_stats": stats if dut == "nodeplane" else None,
    }))


def line(a):
    r = json.loads(open(a[0]).read().splitlines()[-1])
    where = "at the DUT's ingress" if r["dut"] == "ceiling" else "at the sink"
    print(f"  {r['dut']:<10} {r['services']:>6} services: {r['new_conn_per_s'] / 1e3:8.1f} k new conn/s "
          f"{where} (per backend {r['per_backend_per_s']}, offered {r['offered_pps'] / 1e3:.0f} k/s), "
          f"load {r['loadavg_before']}, cpu busy {r['cpu_busy_pct']}, verified {r['verified']}")
    s = r.get("dut_summary")
    if r["dut"] == "nodeplane" and s:
        print(f"  {'':<10} {json.dumps(s)}")


def np_time(r):
    """Rename -> published: the log line's own time when found, else the status poll's."""
    return r.get("published_log_s") or r.get("published_s")


def fmt_load(r):
    if r is None:
        return "-"
    if r.get("result") == "published":
        return f"{np_time(r):.3f}"
    if r.get("result") == "ok":
        return f"{r['seconds']:.3f}"
    if r.get("result") == "timeout":
        return f">{r['seconds']:.0f} (dnf)"
    return r.get("result", "?")


def report(a):
    runs = [json.loads(l) for l in open(a[0]) if l.strip()]
    loads = [json.loads(l) for l in open(a[1]) if l.strip()]
    out = a[2]
    rate = {(r["dut"], r["services"]): r["new_conn_per_s"] for r in runs}
    sizes = sorted({r["services"] for r in runs})
    duts = []
    for r in runs:
        if r["dut"] not in duts:
            duts.append(r["dut"])
    bases = [b for b in ("nft", "nft-rps", "iptables", "iptables-rps") if b in duts]
    ratios = {}
    if runs:
        print("\nNew connections per second to the last of N services (k/s at the sink):")
        print(f"{'N':>7} " + " ".join(f"{d:>13}" for d in duts)
              + "".join(f"{'np/' + b:>16}" for b in bases))
        for n in sizes:
            npv = rate.get(("nodeplane", n))
            rr = {}
            for b in bases:
                bv = rate.get((b, n))
                rr["nodeplane/" + b] = round(npv / bv, 2) if npv and bv else None
            ratios[str(n)] = rr
            print(f"{n:>7} " + " ".join(f"{(rate.get((d, n)) or 0) / 1e3:>13.1f}" for d in duts)
                  + "".join(f"{('%.2f' % v) if v else '-':>16}" for v in rr.values()))
        bad = [f"{r['dut']}/{r['services']}" for r in runs if r["verified"] is False]
        print("sink samples verified (backend address and port)" if not bad
              else f"NOT VERIFIED: {', '.join(bad)}")
    lt = {(r["dut"], r["spec"]): r for r in loads}
    lsizes = sorted({r["spec"] for r in loads}, key=spec)
    ldut = []
    for r in loads:
        if r["dut"] not in ldut:
            ldut.append(r["dut"])
    load_ratios = {}
    if loads:
        print("\nTime to load N services into the running node (s):")
        print(f"{'N[:ports]':>10} " + " ".join(f"{d:>16}" for d in ldut)
              + "".join(f"{'other/np ' + d:>22}" for d in ldut if d != "nodeplane"))
        for n in lsizes:
            npr = lt.get(("nodeplane", n))
            npt = np_time(npr) if npr else None
            rr = {}
            for d in ldut:
                if d == "nodeplane":
                    continue
                o = lt.get((d, n))
                if npt and o and o.get("result") == "ok":
                    rr[d + "/nodeplane"] = round(o["seconds"] / npt, 1)
                elif npt and o and o.get("result") == "timeout":
                    rr[d + "/nodeplane"] = f">{o['seconds'] / npt:.0f}"
                else:
                    rr[d + "/nodeplane"] = None
            load_ratios[str(n)] = rr
            print(f"{n:>10} " + " ".join(f"{fmt_load(lt.get((d, n))):>16}" for d in ldut)
                  + "".join(f"{str(v if v is not None else '-'):>22}" for v in rr.values()))
        for n in lsizes:
            r = lt.get(("nodeplane", n))
            if r:
                print(f"  nodeplane {n}: {json.dumps({k: v for k, v in r.items() if k not in ('dut', 'services', 'spec', 'log')})}")
    goals = {}
    for sp in ("100000", "100000:10"):
        big = lt.get(("nodeplane", sp))
        if big:
            goals[f"load 100k services ({sp}) < 1 s"] = (big.get("result") == "published"
                                                       and np_time(big) < 1.0)
    g = ratios.get("10000") or {}
    kern = [rate.get((b, 10000)) for b in ("nft", "nft-rps") if rate.get((b, 10000))]
    if rate.get(("nodeplane", 10000)) and kern:
        goals["new conn/s at 10k services >= 2x nft map (its better case)"] = (
            rate[("nodeplane", 10000)] >= 2 * max(kern))
    word = {True: "MET", False: "MISSED"}
    for k, v in goals.items():
        print(f"goal: {k}: {word[v]}")
    doc = {
        "benchmark": "bench/e2e/scale.sh",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "settings": {k: os.environ.get(k) for k in (
            "SCALE_SECONDS", "SCALE_NP_CT", "SCALE_MAGLEV_M", "SCALE_CT_MAX", "DUT_CPU", "E2E_NICE",
            "SCALE_LOAD_TIMEOUT", "NODEPLANE_BIN_KIND", "IPTABLES_VARIANT")},
        "new_conn_per_s": {d: {str(n): rate.get((d, n)) for n in sizes} for d in duts},
        "ratios": ratios, "load": loads, "load_ratios": load_ratios, "goals": goals,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=2)
    print(f"written {out}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"npstate": npstate, "iptables": iptables, "nft": nft, "npload": npload,
     "record": record, "line": line, "report": report}[cmd](args)
