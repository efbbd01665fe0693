#!/usr/bin/env python3
"""Seeds of the control-socket request target (seeds/request): one line per request kind the
CLI sends (docs/control.md), on the example node's names and addresses, plus a few lines the
server must answer with an error. Run: python3 control/fuzz/gen_seeds.py
"""
import json
import os

D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds/request")
SEEDS = {
    "status": {"cmd": "status"},
    "service-list": {"cmd": "service-list"},
    "backend-list": {"cmd": "backend-list"},
    "ct-list": {"cmd": "ct-list", "filter": {"src": "10.244.1.10", "port": 80, "proto": "tcp"}, "limit": 5},
    "ct-list-count": {"cmd": "ct-list", "count_only": True},
    "ct-flush": {"cmd": "ct-flush", "filter": {"dst": "10.96.0.10"}},
    "ct-save": {"cmd": "ct-save"},
    "ipcache-get": {"cmd": "ipcache-get", "ip": "10.244.1.10"},
    "ipcache-get-v6": {"cmd": "ipcache-get", "ip": "fd00:244:1::10"},
    "identity-list": {"cmd": "identity-list"},
    "policy-get": {"cmd": "policy-get", "endpoint": "web-1"},
    "policy-mode": {"cmd": "policy-mode", "mode": "allow-all"},
    "policy-mode-audit": {"cmd": "policy-mode", "mode": "audit"},
    "explain": {"cmd": "explain", "iface": "pod-client", "proto": "tcp", "src": "10.244.1.10:40000", "dst": "10.96.0.10:80"},
    "explain-v6": {"cmd": "explain", "iface": "uplink0", "proto": "udp", "src": "[fd00:100::9]:5000", "dst": "[fd00:96::10]:53", "tcp_flags": None},
    "explain-ack": {"cmd": "explain", "iface": "pod-client", "proto": "tcp", "src": "10.244.1.10:40000", "dst": "10.244.1.20:8080", "tcp_flags": "ack"},
    "explain-icmp": {"cmd": "explain", "iface": "pod-client", "proto": "icmp", "src": "10.244.1.10", "dst": "10.96.0.10"},
    "bgp-status": {"cmd": "bgp-status"},
    "observe": {"cmd": "observe", "filter": {"verdict": "dropped", "proto": "tcp", "ip": "10.244.1.10", "reason": "policy-denied"}},
}
os.makedirs(D, exist_ok=True)
for old in os.listdir(D):
    os.remove(os.path.join(D, old))
for name, req in SEEDS.items():
    with open(os.path.join(D, name), "w") as f:
        f.write(json.dumps(req) + "\n")
with open(os.path.join(D, "several-lines"), "w") as f:
    f.write("\n".join(json.dumps(SEEDS[k]) for k in ["status", "ct-list", "explain", "policy-mode"]) + "\r\n\n")
with open(os.path.join(D, "errors"), "w") as f:
    f.write('{"cmd":"nope"}\n{"cmd":"status","extra":1}\nnot json\n{"cmd":"ipcache-get","ip":"300.1.1.1"}\n')
print(len(os.listdir(D)), "seeds")
