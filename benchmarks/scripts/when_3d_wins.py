"""Persistent ("3D") grid vs plain grid, from measured data: a tuned table (every candidate
config timed by `qknorm tune`) and, optionally, a `qknorm bench` results.csv.

    python benchmarks/scripts/when_3d_wins.py src/qknorm/tuned/nvidia-h100-80gb-hbm3.json \
        [--bench benchmarks/results/h100/2026-11-24-bench/regret/results.csv] [--png docs/img/x.png]

Prints Markdown: per (op, D) and row count, the best plain-grid config, the best persistent
one, the token-ordered QK one, and plain/persistent (> 1: persistent wins).
"""
import argparse
import csv
import json
from collections import defaultdict

from qknorm.config import config_from_name


def kind(name: str) -> str:
    """``tok`` (token-ordered QK), ``persistent`` or ``plain``, from the config's fields (a
    name's substrings mislead: ``.pdl`` also starts with ``.p``); ``?`` for a foreign name."""
    cfg = config_from_name(name)
    if cfg is None:
        return "?"
    return "tok" if cfg.token_order else "persistent" if cfg.persistent else "plain"


def best(alts: dict, k: str):
    c = [(us, n) for n, us in alts.items() if kind(n) == k]
    return min(c) if c else None


def table_rows(doc):
    out = []
    for e in doc["entries"]:
        a = e["alternatives"]
        out.append((e["op"], e["dtype"], e["D"], e.get("n_rows") or e["rows"], e.get("shape", ""),
                    best(a, "plain"), best(a, "persistent"), best(a, "tok")))
    return sorted(out)


def bench_rows(path):
    by = defaultdict(dict)
    for r in csv.DictReader(open(path)):
        if r["status"] == "ok" and r["family"] == "qknorm-variant" and r["mode"] == "graph":
            config = r["impl"].removeprefix("qknorm[").removesuffix("]")
            by[(r["preset"], r["group"], int(r["tokens"]))][config] = float(r["us"])
    return by


def main():
    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--bench")
    p.add_argument("--png")
    a = p.parse_args()
    doc = json.load(open(a.table))
    rows = table_rows(doc)
    print(f"From `{a.table}` ({doc['gpu']}, {doc['date']}): every candidate config timed per grid point.\n")
    print("| op | D | rows | shape | best plain | best persistent | plain/persistent | token-ordered |")
    print("|---|---|---|---|---|---|---|---|")
    series = defaultdict(list)
    for op, dt, D, n, shape, pl, pe, tok in rows:
        ratio = pl[0] / pe[0] if pl and pe else None
        if ratio:
            series[(op, D)].append((n, ratio))
        f = lambda b: f"{b[0]:.2f} `{b[1]}`" if b else "-"  # noqa: E731
        print(f"| {op} | {D} | {n} | {shape} | {f(pl)} | {f(pe)} | {f'{ratio:.3f}' if ratio else '-'} | {f(tok)} |")
    if a.bench:
        print("\nFrom the bench run (the variants it timed per case):\n")
        print("| preset | case | T | best plain | best persistent | plain/persistent |")
        print("|---|---|---|---|---|---|")
        for (pr, g, t), v in sorted(bench_rows(a.bench).items()):
            pl, pe = best(v, "plain"), best(v, "persistent")
            if pl and pe:
                print(f"| {pr} | {g} | {t} | {pl[0]:.2f} `{pl[1]}` | {pe[0]:.2f} `{pe[1]}` | {pl[0] / pe[0]:.3f} |")
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for (op, D), pts in sorted(series.items()):
            if len(pts) >= 2:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", label=f"{op} D={D}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows normalised per call")
        ax.set_ylabel("best plain / best persistent (>1: persistent wins)")
        ax.set_title(f"Persistent vs plain grid, {doc['gpu']}", fontsize=10)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
