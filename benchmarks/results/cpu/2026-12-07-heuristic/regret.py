"""Regret of the dispatcher's heuristic on the shipped tuned tables (offline: the tables' own measurements).

regret(point) = median time of the heuristic's config / median time of the fastest config measured at that
point, the heuristic's config looked up by name in the entry's ``alternatives`` (as ``qknorm.tune.run_tune``
does). A pick the table did not measure cannot be scored: such points are skipped, and counted.

    PYTHONPATH=src python benchmarks/results/cpu/2026-12-07-heuristic/regret.py [--rule tree|git:REV ...]
        [--worst N] [--history] [--crossfit]

``--rule``: ``tree`` is ``qknorm.dispatch._heuristic`` of this tree; ``git:REV`` the heuristic of
``src/qknorm/dispatch.py`` at git revision REV (e.g. ``git:73213c9``, the rule before this change), loaded
beside this tree's other modules. Several ``--rule`` compare rules. ``--history``: also score the H100 tables
shipped before (git history of ``src/qknorm/tuned/nvidia-h100-80gb-hbm3.json``: independent H100 runs of the
same grid on slightly older kernels). ``--crossfit``: the rule family of ``family`` (switches for each part of
the rule; its defaults are this tree's rule, checked) chosen on one table and scored on the other.

Tables: the H100 table (188 entries: 146 measured by session 15's tune on the current kernels, named in its
``tune.log``, and 42 merged from a 2026-11-24 tune whose candidate sets predate the batch-invariant layout,
so many picks there are unmeasured) and the H200 table (146 entries, tuned 2026-12-01 on older kernels).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys

from qknorm import dispatch, invariance
from qknorm.config import KernelConfig, config_from_name

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
H100 = "src/qknorm/tuned/nvidia-h100-80gb-hbm3.json"
H200 = "src/qknorm/tuned/nvidia-h200.json"
S15_LOG = os.path.join(ROOT, "benchmarks/results/h100/2026-12-07-session15/tune.log")
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
#: Earlier H100 tables (same 146-point grid, 2026-12-07 sessions 10, 11 and 12).
HISTORY = {"1a66c26": "session 10", "e2c7634": "session 11", "374f4a1": "session 12"}


def git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def s15_points() -> set:
    """(op, D, n_rows) measured by session 15's H100 tune (the rest of the H100 table was merged from earlier)."""
    pts = set()
    for line in open(S15_LOG):
        m = re.match(r"\[\d+/\d+ +\d+s\] (\S+) (\S+) D=(\d+) .*\((\d+) rows\)", line)
        if m:
            pts.add((m[1], int(m[3]), int(m[4])))
    return pts


def rule_from(spec: str):
    """A function (op, itemsize, D, bucket, sms) -> KernelConfig."""
    if spec == "tree":
        return lambda op, size, D, bucket, sms: dispatch._heuristic(op, size, D, bucket, sms)[0]
    if spec.startswith("git:"):
        rev = spec[4:]
        src = git_show(rev, "src/qknorm/dispatch.py")
        name = f"qknorm._dispatch_{re.sub(r'[^0-9A-Za-z]', '_', rev)}"
        mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
        mod.__package__ = "qknorm"
        exec(compile(src, f"{rev}:src/qknorm/dispatch.py", "exec"), mod.__dict__)
        return lambda op, size, D, bucket, sms: mod._heuristic(op, size, D, bucket, sms)[0]
    raise SystemExit(f"unknown rule {spec!r}: tree or git:REV")


def family(mw=1, mw_fused=2, narrow_tile=True, bound2x=True, window=None, row_tile=True, decode_bytes=512,
           qk_persistent=False):
    """The rule with switches (defaults: this tree's ``dispatch._heuristic``, whole rows). ``mw``/``mw_fused``:
    blocks per SM the plain grid keeps; ``narrow_tile``: rows narrower than a warp take 8192-element tiles;
    ``bound2x``: persistent only with at most 2x the persistent grid's programs at the grown tile; ``window``:
    also persistent only while the ungrown grid has at most ``window`` blocks per SM; ``row_tile``: 32 elements
    per thread over the row's canonical warps; ``decode_bytes``: decode tiles for rows narrower than this."""
    D = dispatch

    def rule(op, size, d, bucket, sms):
        bd = dispatch.next_pow2(d)
        if bd > D.MAX_REG_BLOCK:
            return D._heuristic(op, size, d, bucket, sms)[0]  # chunked rows: unchanged
        if bucket <= D.DECODE_ROWS and bd * size < decode_bytes:
            rows = min(D.DECODE_TILE // bd, max(1, bucket))
            warps = max(1, min(16, rows * bd * size // (32 * invariance.VEC_BYTES)))
            return invariance.make_invariant(KernelConfig(rows=rows, block_d=bd, num_warps=warps), size)
        tile = max(D.TARGET_TILE, D.ELEMS_PER_WARP * invariance.canonical_layout(bd, size).warps if row_tile else 0)
        rows = max(1, tile // bd)
        blocks = lambda r: -(-bucket // r)  # noqa: E731
        if narrow_tile and bd * size < D.WARP_ROW_BYTES and blocks(D.MAX_CANDIDATE_TILE // bd) >= 2 * sms:
            rows = D.MAX_CANDIDATE_TILE // bd
        waves = mw_fused if op == "fused_add_rms_norm" else mw
        while rows > 1 and blocks(rows) < waves * sms:
            rows //= 2
        pers, progs = False, KernelConfig().programs_per_sm * sms
        if (qk_persistent or op != "qk_rms_norm") and blocks(rows) > progs and \
                (window is None or blocks(rows) <= window * sms):
            grown = rows
            while 2 * grown * bd <= D.MAX_CANDIDATE_TILE and blocks(2 * grown) > progs:
                grown *= 2
            if not bound2x or blocks(grown) <= 2 * progs:
                pers, rows = True, grown
        c = invariance.make_invariant(KernelConfig(rows=rows, block_d=bd, num_warps=dispatch._warps_for(rows * bd),
                                                   persistent=pers), size)
        if c.persistent and c.programs_per_sm * c.num_warps > D.PERSISTENT_MAX_WARPS:
            c = dataclasses.replace(c, persistent=False)
        return c
    return rule


FAMILY = dict(mw=(1, 2), mw_fused=(1, 2), narrow_tile=(False, True), bound2x=(False, True), window=(None, 8, 16),
              row_tile=(False, True), decode_bytes=(512, 513), qk_persistent=(False, True))


def crossfit(tabs):
    """Choose the family's switches on one table (least worst regret, then geomean), score them on the other."""
    tree = rule_from("tree")
    for label, sms, entries in tabs:  # the family's defaults are the tree's rule
        for e in entries:
            args = (e["op"], ITEMSIZE[e["dtype"]], e["D"], e["rows"], sms)
            assert family()(*args) == tree(*args), args
    h100, h200 = tabs[0], tabs[3]
    combos = [dict(zip(FAMILY, v)) for v in itertools.product(*FAMILY.values())]
    scores = []
    for kw in combos:
        r = family(**kw)
        scores.append((kw, *(evaluate(r, t[2], t[1]) for t in (h100, h200))))

    def key(sc):
        scored = sc[0]
        return (round(max(r for r, *_ in scored), 3), sum(math.log(r) for r, *_ in scored))
    for name, fit, other in (("H100 session-15 points", 1, 2), ("H200", 2, 1)):
        best = min(scores, key=lambda s: key(s[fit]))
        same = [s[0] for s in scores if key(s[fit]) == key(best[fit])]
        print(f"fit on {name} ({len(combos)} combinations; {len(same)} tie): {best[0]}")
        print(f"  on its own table: {summary(*best[fit])}")
        print(f"  on the other:     {summary(*best[other])}")
        print(f"  this tree's rule among the ties: {dict(zip(FAMILY, family.__defaults__)) in same}")


def evaluate(rule, entries, sms):
    """(scored, unmeasured): scored = [(regret, entry, pick name, fastest name)]."""
    scored, unmeasured = [], []
    for e in entries:
        cfg = rule(e["op"], ITEMSIZE[e["dtype"]], e["D"], e["rows"], sms)
        alts = e["alternatives"]
        us = alts.get(cfg.name)
        if us is None:
            unmeasured.append((e, cfg.name))
            continue
        best = min(alts, key=alts.get)
        scored.append((us / alts[best], e, cfg.name, best))
    return scored, unmeasured


def summary(scored, unmeasured) -> str:
    if not scored:
        return f"no scored points; unmeasured picks: {len(unmeasured)}"
    g = math.exp(sum(math.log(r) for r, *_ in scored) / len(scored))
    w = max(r for r, *_ in scored)
    within = sum(r <= 1.03 for r, *_ in scored)
    return (f"geomean +{100 * (g - 1):.2f}%, worst +{100 * (w - 1):.1f}%, within 3%: {within}/{len(scored)}, "
            f"unmeasured picks: {len(unmeasured)}")


def show(scored, unmeasured, n):
    for r, e, name, best in sorted(scored, key=lambda x: -x[0])[:n]:
        print(f"      +{100 * (r - 1):5.1f}%  {e['op']:<18} D={e['D']:<5} rows={e['n_rows']:<7} "
              f"(bucket {e['rows']:<7}) {e['shape']:<20} pick {name:<16} fastest {best} "
              f"({e['alternatives'][best]:.2f} us)")
    if unmeasured:
        print("      unmeasured: " + ", ".join(f"{e['op']} D={e['D']} bucket={e['rows']} {name}"
                                                for e, name in unmeasured))


def tables(history: bool):
    """[(label, sm_count, entries)]."""
    s15 = s15_points()
    out = []
    t = json.load(open(os.path.join(ROOT, H100)))
    out.append((f"H100 {t['date'][:10]}, the 146 points of session 15", t["sm_count"],
                [e for e in t["entries"] if (e["op"], e["D"], e["n_rows"]) in s15]))
    out.append((f"H100 {t['date'][:10]}, all {len(t['entries'])} entries", t["sm_count"], t["entries"]))
    out.append((f"H100 {t['date'][:10]}, the entries merged from the 2026-11-24 tune (older kernels and candidate "
                "sets)", t["sm_count"], [e for e in t["entries"] if (e["op"], e["D"], e["n_rows"]) not in s15]))
    t = json.load(open(os.path.join(ROOT, H200)))
    out.append((f"H200 {t['date'][:10]} (older kernels), {len(t['entries'])} entries", t["sm_count"], t["entries"]))
    if history:
        for rev, what in HISTORY.items():
            t = json.loads(git_show(rev, H100))
            out.append((f"H100 {t['date'][:10]} ({what}, git {rev}), its 146 session-grid points", t["sm_count"],
                        [e for e in t["entries"] if (e["op"], e["D"], e["n_rows"]) in s15]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", action="append", help="tree (default) or git:REV; repeat to compare")
    ap.add_argument("--worst", type=int, default=10, help="worst points listed per table (default 10)")
    ap.add_argument("--history", action="store_true", help="also the earlier H100 tables (git history)")
    ap.add_argument("--crossfit", action="store_true", help="choose the rule family's switches on one table, "
                                                              "score them on the other")
    a = ap.parse_args(argv)
    specs = a.rule or ["tree"]
    rules = {s: rule_from(s) for s in specs}
    tabs = tables(a.history)
    for label, sms, entries in tabs:
        print(f"{label} ({sms} SMs):")
        for spec, rule in rules.items():
            scored, unmeasured = evaluate(rule, entries, sms)
            print(f"  [{spec}] {summary(scored, unmeasured)}")
            if a.worst and "all" not in label:
                show(scored, unmeasured, a.worst)
            elif a.worst and unmeasured:
                print(f"      ({len(unmeasured)} unmeasured picks, all in entries merged from the 2026-11-24 tune)"
                      if all((e["op"], e["D"], e["n_rows"]) not in s15_points() for e, _ in unmeasured) else "")
    if a.crossfit:
        crossfit(tabs)


if __name__ == "__main__":
    sys.exit(main())
