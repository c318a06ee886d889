"""Group sweep.json by row layout (qknorm.invariance): per layout, best config per T vs SGLang.

Usage (repository root): PYTHONPATH=src python benchmarks/results/h200/2026-12-01-layout-sweep/scripts/by_layout.py
"""
import json, math, statistics, sys
from qknorm.config import config_from_name
from qknorm.invariance import row_layout, canonical_layout
d = json.load(open("benchmarks/results/h200/2026-12-01-layout-sweep/sweep.json"))
cases = {}
for p in d["points"]:
    cases.setdefault(p["case"], []).append(p)
for case, pts in cases.items():
    classes = {}
    for p in pts:
        for n, v in p["us"].items():
            c = config_from_name(n)
            if c is None or v is None: continue
            lay = row_layout(c.rows, c.block_d, c.num_warps, 2)
            classes.setdefault(lay[1:], {}).setdefault(p["T"], []).append((v, n))
    Ts = [p["T"] for p in pts]
    sg = {p["T"]: p["sglang"] for p in pts}
    pick = {p["T"]: p["us"]["pick"] for p in pts}
    bestany = {p["T"]: min(v for n, v in p["us"].items() if v) for p in pts}
    b = pts[0]["us"]
    canon = canonical_layout(config_from_name([n for n in b if n != "pick"][0]).block_d, 2)[1:]
    print(f"== {case}  canonical {canon}; pick vs sglang: " + " ".join(f"{sg[T]/pick[T]:.2f}" for T in Ts) + "  best-any: " + " ".join(f"{sg[T]/bestany[T]:.2f}" for T in Ts))
    rows = []
    for lay, byT in classes.items():
        if set(byT) != set(Ts): continue
        r = [sg[T] / min(byT[T])[0] for T in Ts]
        rows.append((statistics.geometric_mean(r), min(r), lay, r, [min(byT[T])[1] for T in Ts]))
    for g, mn, lay, r, names in sorted(rows, reverse=True)[:4]:
        print(f"  {str(lay):14s} geo {g:.3f} min {mn:.3f} | " + " ".join(f"{x:.2f}" for x in r) + " | " + " ".join(names))
