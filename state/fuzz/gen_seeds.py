#!/usr/bin/env python3
"""Seeds of the state loader fuzz target (seeds/load): the example node's directory (its
files joined with the target's file cut line), every distinct golden-case state and the
packaged default state. Run: python3 state/fuzz/gen_seeds.py
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUT = "\n---8<---\n"

d = os.path.join(ROOT, "state/fuzz/seeds/load")
os.makedirs(d, exist_ok=True)
for old in os.listdir(d):
    os.remove(os.path.join(d, old))
ex = sorted(glob.glob(os.path.join(ROOT, "examples/state/*.yaml")))
open(os.path.join(d, "example-dir"), "w").write(CUT.join(open(f).read() for f in ex))
seen = set()
for f in sorted(glob.glob(os.path.join(ROOT, "pcap-tests/cases/*/*.yaml"))):
    t = open(f).read()
    if t in seen:
        continue
    seen.add(t)
    case = os.path.basename(os.path.dirname(f))
    open(os.path.join(d, case + "-" + os.path.basename(f)[:-5]), "w").write(t)
for f in sorted(glob.glob(os.path.join(ROOT, "packaging/state/*.yaml"))):
    open(os.path.join(d, "packaging-" + os.path.basename(f)[:-5]), "w").write(open(f).read())
print(len(os.listdir(d)), "seeds")
