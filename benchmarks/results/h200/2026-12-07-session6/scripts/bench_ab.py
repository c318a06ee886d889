"""Summarise interleaved `qknorm bench` runs of two builds (same machine, same call):
python bench_ab.py OUT_FILE DIR_A1 DIR_B1 [DIR_A2 DIR_B2 ...] -- A = baseline build, B = this build.
Per case: the best (minimum) of each build's runs, B/A time ratio; geometric mean, worst."""
import csv
import statistics
import sys

out, dirs = sys.argv[1], sys.argv[2:]
runs = {"A": dirs[0::2], "B": dirs[1::2]}
best = {"A": {}, "B": {}}
for b, ds in runs.items():
    for d in ds:
        try:
            rows = list(csv.DictReader(open(f"{d}/results.csv")))
        except OSError as e:
            print("missing", d, e)
            continue
        for r in rows:
            if r["status"] != "ok" or r["impl"] != "qknorm":  # the pick, not its variants
                continue
            key = (r["op"], r["group"], int(r["tokens"]))
            us = float(r["us"])
            best[b][key] = min(best[b].get(key, us), us)
lines = [f"{'op':6s} {'group':34s} {'T':>6s} {'base us':>9s} {'this us':>9s} {'this/base':>9s}"]
ratios = []
for key in sorted(set(best["A"]) & set(best["B"])):
    a, b = best["A"][key], best["B"][key]
    ratios.append(b / a)
    lines.append(f"{key[0]:6s} {key[1][:34]:34s} {key[2]:6d} {a:9.3f} {b:9.3f} {b / a:9.3f}")
if ratios:
    lines.append(f"time ratio this/base: geomean {statistics.geometric_mean(ratios):.4f}, "
                 f"max {max(ratios):.4f}, min {min(ratios):.4f}, {len(ratios)} cases, "
                 f"runs per build {len(runs['A'])}/{len(runs['B'])}")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines[-3:]))
