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
print(f"{'case':28s} {'start':>8s} {'this':>8s} {'nohi':>8s} this/st nohi/st")
for k in keys:
    s, t, n = (best.get(v, {}).get(k, float('nan')) for v in ("start", "this", "nohi"))
    print(f"{k:28s} {s:8.3f} {t:8.3f} {n:8.3f} {t / s:7.3f} {n / s:7.3f}")
