"""Table of attrib.py's JSON: best of the runs per build, us, and this/start, nohi/start."""
import glob
import json
import sys

d = sys.argv[1]
best = {}
for f in sorted(glob.glob(f"{d}/attrib-*.json")):
    v = f.rsplit("/", 1)[1].split("-")[1]
    for k, t in json.load(open(f)).items():
        best.setdefault(v, {})[k] = min(t, best.get(v, {}).get(k, 1e9))
keys = list(best.get("this", {}))
vs = ("start", "this", "nohi", "branch", "f64")
print(f"{'case':24s}" + "".join(f"{v:>8s}" for v in vs) + "".join(f"{v[:6] + '/st':>10s}" for v in vs[1:]))
for k in keys:
    t = [best.get(v, {}).get(k, float("nan")) for v in vs]
    print(f"{k:24s}" + "".join(f"{x:8.3f}" for x in t) + "".join(f"{x / t[0]:10.3f}" for x in t[1:]))
