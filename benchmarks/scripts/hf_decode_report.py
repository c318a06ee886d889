"""A Markdown table from ``hf_decode.py``'s JSON lines: time per decode step and prefill per
(model, mode, batch) for each variant, with each variant's speedup over ``unpatched`` measured
in the same file (the same machine, when the runs were made together).

    python benchmarks/scripts/hf_decode_report.py results.jsonl [more.jsonl ...]

Where a (model, variant, mode, batch) appears more than once, the last line counts.
"""
from __future__ import annotations

import argparse
import json

VARIANTS = ("unpatched", "qknorm", "liger")


def load(paths: list[str]) -> dict:
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[(r["model"], r["mode"], r["batch"], r["variant"])] = r
    return rows


def table(rows: dict) -> str:
    keys = sorted({k[:3] for k in rows})
    out = ["| model | mode | batch | variant | decode step (ms) | vs unpatched | prefill (ms) | norm host share |",
           "|---|---|---|---|---|---|---|---|"]
    for model, mode, batch in keys:
        base = rows.get((model, mode, batch, "unpatched"))
        for v in VARIANTS:
            r = rows.get((model, mode, batch, v))
            if r is None:
                continue
            speed = f"{base['decode_step_ms'] / r['decode_step_ms']:.2f}x" if base else "-"
            share = r.get("norm_host_share")
            out.append(f"| {model} | {mode} | {batch} | {v} | {r['decode_step_ms']:.2f} | {speed} | "
                       f"{r.get('prefill_ms', float('nan')):.1f} | {'-' if share is None else f'{share:.0%}'} |")
    gpus = sorted({r.get("gpu", "?") for r in rows.values()})
    return "\n".join(out) + f"\n\nGPU: {', '.join(gpus)}\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+")
    print(table(load(ap.parse_args(argv).jsonl)))


if __name__ == "__main__":
    main()
