#!/usr/bin/env python3
"""Generates the pipeline fuzz target's embedded states (src/states.rs) and its seeds
(seeds/pipeline/<case>): every golden replay case of pcap-tests/cases and the example node's
capture, in the target's input format (src/input.rs), each on the state it was made for and
with its `state_at` change published where the case publishes it.

Also the shared real captures of /work/shared/pcaps where that directory exists. Run from
anywhere: python3 dataplane/fuzz/gen_pipeline.py. Seeds go to seeds/pipeline/
(committed); `cargo fuzz run pipeline corpus/pipeline seeds/pipeline` starts from them.
"""
import glob
import hashlib
import json
import os
import struct
import subprocess

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(FUZZ))
# Interface names the input format knows by number (src/input.rs: IFACE_NAMES).
SHARED_PCAPS = "/work/shared/pcaps"
NAMES = ["eth0", "veth-a", "veth-b", "veth-c", "uplink0", "pod-client", "pod-web1", "pod-web2"]
# Time codes (src/input.rs: delta_ns): 4 ranges of 64 steps.
UNITS = [100_000, 10_000_000, 1_000_000_000, 120_000_000_000]


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian, scale = "<", 1000
    elif magic == b"\x4d\x3c\xb2\xa1":
        endian, scale = "<", 1
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian, scale = ">", 1000
    elif magic == b"\xa1\xb2\x3c\x4d":
        endian, scale = ">", 1
    else:
        raise SystemExit(f"{path}: not a classic pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"{path}: not Ethernet"
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        out.append((sec * 1_000_000_000 + frac * scale, data[off : off + incl]))
        off += incl
    return out


def code(delta):
    """The largest time code not above `delta` nanoseconds, and its value."""
    best = (0, 0)
    for r, unit in enumerate(UNITS):
        n = min(delta // unit, 63)
        if n * unit > best[1]:
            best = (r * 64 + n, n * unit)
    return best


def encode(state_a, state_b, flags, inputs, switch_ns):
    frames = []
    for i, (iface, path) in enumerate(inputs):
        for ts, data in read_pcap(path):
            frames.append((ts, i, iface, data))
    frames.sort(key=lambda f: (f[0], f[1]))
    t0 = frames[0][0] if frames else 0
    publish_at = len(frames)
    if switch_ns is not None:
        publish_at = next((k for k, f in enumerate(frames) if f[0] >= t0 + switch_ns), len(frames))
    out = bytearray([state_a, state_b, flags, min(publish_at, 255)])
    clock = t0
    for ts, _, iface, data in frames:
        c, v = code(max(ts - clock, 0))
        clock += v
        out += bytes([NAMES.index(iface), c]) + struct.pack("<H", len(data)) + data
    return bytes(out)


def main():
    cases = sorted(glob.glob(os.path.join(ROOT, "pcap-tests/cases/*/case.json")))
    states = [("examples/state", None)]  # index 0: the example node (nodeplane_state::example)
    index = {}

    def state_index(path):
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest not in index:
            index[digest] = len(states)
            states.append((os.path.relpath(path, ROOT), path))
        return index[digest]

    seeds = {}
    for c in cases:
        case = json.load(open(c))
        d = os.path.dirname(c)
        a = state_index(os.path.join(d, case["state"]))
        b, switch = a, None
        if case.get("state_at"):
            at = case["state_at"][0]
            b, switch = state_index(os.path.join(d, at["state"])), int(at["seconds"] * 1e9)
        flags = 1 if case.get("removed_flow_action") == "rst" else 0
        inputs = [(i["iface"], os.path.join(d, i["file"])) for i in case["inputs"]]
        seeds[case["name"]] = encode(a, b, flags, inputs, switch)
    ex = os.path.join(ROOT, "examples/capture")
    seeds["example-capture"] = encode(
        0, 0, 0,
        [(n, os.path.join(ex, n + ".pcap")) for n in ["pod-client", "pod-web1", "pod-web2", "uplink0"]],
        None,
    )
    # The shared real captures (/work/shared/pcaps: PcapPlusPlus, suricata-verify): fragments,
    # VLANs, options, tunnels, malformed headers nobody here wrote, entering on the example
    # node's uplink, cut to the frames that fit the campaign's -max_len.
    for path in sorted(glob.glob(os.path.join(SHARED_PCAPS, "*/*.*ap"))):
        try:
            frames = read_pcap(path)
        except (SystemExit, AssertionError):
            continue
        out, clock = bytearray([0, 0, 0, 255]), frames[0][0] if frames else 0
        for ts, data in frames:
            if len(out) + 4 + len(data) > 8000:
                break
            c, v = code(max(ts - clock, 0))
            clock += v
            out += bytes([NAMES.index("uplink0"), c]) + struct.pack("<H", len(data)) + data
        if len(out) > 4:
            seeds["pcap-" + os.path.splitext(os.path.basename(path))[0]] = bytes(out)
    assert len(states) <= 256
    rs = [
        "//! Generated by `python3 dataplane/fuzz/gen_pipeline.py`: the states the pipeline target",
        "//! runs on (index = the input's state bytes), every distinct state of the golden cases.",
        "//! Index 0 is the example node (`nodeplane_state::example`).",
        "",
        "pub const STATES: &[(&str, &str)] = &[",
        '    ("examples/state", ""),',
    ]
    for name, _ in states[1:]:
        rs.append(f'    ("{name}", include_str!("../../../{name}")),')
    rs.append("];")
    with open(os.path.join(FUZZ, "src/states.rs"), "w") as f:
        f.write("\n".join(rs) + "\n")
    subprocess.run(["rustfmt", "--edition", "2021", os.path.join(FUZZ, "src/states.rs")], check=True)
    sd = os.path.join(FUZZ, "seeds/pipeline")
    os.makedirs(sd, exist_ok=True)
    for old in glob.glob(os.path.join(sd, "*")):
        os.remove(old)
    for name, data in seeds.items():
        with open(os.path.join(sd, name), "wb") as f:
            f.write(data)
    print(f"{len(states)} states, {len(seeds)} seeds")


main()
