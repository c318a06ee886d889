"""Compare `qknorm bench --variants all` runs of several builds (same machine, same call):
python variants_ab.py OUT_FILE BASE_DIR NAME=DIR [NAME=DIR ...]
Per case: the base build's pick (impl qknorm), then for each build its pick and its fastest variant
(name and time) over all configs and over one-warp configs (.w1), each / base pick. Geomean per column."""
import csv
import statistics
import sys
from collections import defaultdict

out, base_dir, named = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]


def load(d):
    pick, var = {}, defaultdict(dict)
    try:
        rows = list(csv.DictReader(open(f"{d}/results.csv")))
    except OSError as e:
        print("missing", d, e)
        return pick, var
    for r in rows:
        if r["status"] != "ok" or r["mode"] != "graph":
            continue
        key = (r["op"], r["group"][:30], int(r["tokens"]))
        us = float(r["us"])
        if r["impl"] == "qknorm":
            pick[key] = (min(us, pick.get(key, (us, ""))[0]), r["config"])
        if r["impl"].startswith("qknorm"):
            var[key][r["config"]] = min(us, var[key].get(r["config"], us))
    return pick, var


base_pick, base_var = load(base_dir)
builds = [(n, *load(d)) for n, d in named]
lines, cols = [], defaultdict(list)
hdr = f"{'op':5s} {'group':30s} {'T':>6s} {'base':>7s} {'base cfg':>16s}"
for n, _, _ in builds:
    hdr += f" | {n}: pick/b best/b (cfg) w1/b"
lines.append(hdr)
for key in sorted(base_pick):
    b, bcfg = base_pick[key]
    bb = min(base_var[key].values()) if base_var[key] else b
    line = f"{key[0]:5s} {key[1]:30s} {key[2]:6d} {b:7.3f} {bcfg:>16s} bestb/b {bb / b:.3f}"
    cols["base best"].append(bb / b)
    for n, pick, var in builds:
        if key not in pick:
            continue
        p = pick[key][0]
        v = var[key]
        cfg, best = min(v.items(), key=lambda kv: kv[1]) if v else ("-", p)
        w1 = [t for c, t in v.items() if ".w1." in c + "."]
        w1b = min(w1) / b if w1 else float("nan")
        line += f" | {p / b:.3f} {best / b:.3f} ({cfg}) {w1b:.3f}"
        cols[f"{n} pick"].append(p / b)
        cols[f"{n} best"].append(best / b)
        if w1:
            cols[f"{n} w1"].append(w1b)
    lines.append(line)
for c, v in cols.items():
    lines.append(f"{c}/base pick: geomean {statistics.geometric_mean(v):.4f} max {max(v):.4f} min {min(v):.4f} n={len(v)}")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines[-len(cols):]))
