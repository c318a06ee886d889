"""Bench output: the CSV (written row by row), the Markdown summary and the plots.

The summary states facts measured inside one run, like with like: qknorm (the
dispatcher's pick) against the best *peer* per case (family ``peer``: other libraries,
PyTorch, torch.compile and the ``.contiguous()`` copy paths) as a speedup, where qknorm
loses (every case and token count), its share of the device copy bandwidth measured in the same run, the dispatch regret
against the fastest qknorm variant measured, and the variant that wins each token range by
>= 5%. It states no goals: whether a number is good enough is for the reader.

A CPU run (``meta["device"] == "cpu"``) is a smoke test: the summary says so and states
no speedups, losses or bandwidth shares, only the times as measured.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import defaultdict
from typing import Iterable

from ..config import config_from_name
from .runner import COLUMNS

WIN_MARGIN = 1.05
EAGER_FACT_MAX_T = 64  # eager (host cost included) comparison shown per call up to this many tokens


def cut_tail(path: str) -> str | None:
    """A CSV whose last line was cut off (a disk filled up, a crash mid-write) ends without a newline: move that
    partial line into ``<path>.cut`` and truncate the CSV after its last whole line, so that rows appended later
    start on a line of their own. Returns the ``.cut`` path, or None when the CSV ends whole."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return None
        f.seek(max(0, end - (1 << 20)))
        tail = f.read()
        keep = end - len(tail) + tail.rfind(b"\n") + 1  # after the last newline (0: no whole line)
        f.seek(keep)
        part = f.read()
        cut = path + ".cut"
        with open(cut, "ab") as c:
            c.write(part + b"\n")
        f.truncate(keep)
    return cut


class CsvSink:
    """Writes rows to ``path`` as they come (flushed each row: an interrupted or crashed run
    keeps them). ``append``: add to an existing CSV of the same columns (no second header).
    ``exclusive`` (without ``append``): the CSV must not exist yet (``FileExistsError``): a second
    run writing the same folder at once fails instead of replacing the first one's rows."""

    def __init__(self, path: str, fieldnames=COLUMNS, append: bool = False, exclusive: bool = False):
        self.path = path
        self.rows = 0
        fresh = not (append and os.path.exists(path) and os.path.getsize(path) > 0)
        self._f = open(path, "a" if append else "x" if exclusive else "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=list(fieldnames), extrasaction="ignore")
        if fresh:
            self._w.writeheader()
        self._f.flush()

    def __call__(self, row: dict) -> None:
        self._w.writerow(row)
        self._f.flush()
        self.rows += 1

    def close(self) -> None:
        self._f.close()


# The columns the report reads: a CSV without them is not a bench results CSV.
REPORT_COLUMNS = ("preset", "op", "group", "tokens", "impl", "family", "mode", "status", "us")


def csv_header(path: str) -> list[str]:
    """The column names of ``path`` (its first line); [] for an empty file."""
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _f(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def geomean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


# --------------------------------------------------------------------------- analysis

def is_noop(r: dict) -> bool:
    """A copy baseline row whose inputs were already contiguous (T=1): ``.contiguous()``
    copied nothing, so its time is a no-op's (older results hold such rows; the runner now
    skips them)."""
    return r.get("family") == "copy" and str(r.get("contiguous", "")) == "True"


def timed(rows: list[dict]) -> dict:
    """``{(preset, group, mode): {tokens: {impl: row}}}`` over rows with a time (no-op
    copy rows left out: see :func:`is_noop`)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("status") == "ok" and _f(r.get("us")) is not None and not is_noop(r):
            out[(r["preset"], r["group"], r["mode"])][int(r["tokens"])][r["impl"]] = r
    return out


def best_peer(impls: dict) -> tuple[str, float] | None:
    peers = [(n, _f(r["us"])) for n, r in impls.items() if r["family"] == "peer"]
    return min(peers, key=lambda p: p[1]) if peers else None


def speedups(table: dict) -> dict[int, tuple[float, str, float, float]]:
    """Per tokens: (best peer us / qknorm us, best peer name, qknorm us, qknorm % copy)."""
    out = {}
    for t, impls in sorted(table.items()):
        q = impls.get("qknorm")
        bp = best_peer(impls)
        if q is None or bp is None:
            continue
        qu = _f(q["us"])
        out[t] = (bp[1] / qu, bp[0], qu, _f(q["pct_copy"]) or float("nan"))
    return out


def regret(table: dict) -> dict[int, tuple[float, str]]:
    """Per tokens: (qknorm us / fastest variant us - 1, fastest variant name)."""
    out = {}
    for t, impls in sorted(table.items()):
        q = impls.get("qknorm")
        var = [(n, _f(r["us"])) for n, r in impls.items() if r["family"] == "qknorm-variant"]
        if q is None or not var:
            continue
        n, u = min(var, key=lambda p: p[1])
        out[t] = (_f(q["us"]) / u - 1.0, n)
    return out


def _op_of(group: str) -> str:
    return group.split()[0]


def facts(rows: list[dict]) -> list[str]:
    """One line per (preset, case, mode): geometric-mean and lowest speedup over the best
    peer (and which peer), the token counts where qknorm is slower, and qknorm's share of the
    copy bandwidth at the largest T; then, in eager mode up to ``EAGER_FACT_MAX_T`` tokens,
    qknorm's time per call beside the fastest peer's (host cost included)."""
    lines = []
    for (preset, group, mode), table in sorted(timed(rows).items()):
        sp = speedups(table)
        if not sp:
            continue
        tok = sorted(sp)
        worst = min(tok, key=lambda t: sp[t][0])
        lose = [t for t in tok if sp[t][0] < 1.0]
        big = tok[-1]
        line = (f"- {preset} · {group} · {mode}: geomean {geomean(sp[t][0] for t in tok):.2f}x over the best peer; "
                f"lowest {sp[worst][0]:.2f}x at T={worst} (vs {sp[worst][1]}); ")
        line += (f"slower at T={','.join(map(str, lose))}" if lose else "faster at every T measured")
        pct = sp[big][3]
        if pct == pct:  # not NaN
            line += f"; {pct:.1f}% of copy bandwidth at T={big}"
        lines.append(line)
    for (preset, group, mode), table in sorted(timed(rows).items()):
        if mode != "eager":
            continue
        for t, impls in sorted(table.items()):
            q, bp = impls.get("qknorm"), best_peer(impls)
            if t > EAGER_FACT_MAX_T or q is None or bp is None:
                continue
            lines.append(f"- eager {preset} · {group} T={t}: qknorm {_f(q['us']):.2f} us per call, fastest peer "
                         f"{bp[0]} {bp[1]:.2f} us ({bp[1] / _f(q['us']):.2f}x)")
    return lines


def losses(rows: list[dict]) -> list[tuple[str, str, str, int, float, str, float]]:
    """Where qknorm is slower than the best peer: (preset, case, mode, tokens, qknorm us, peer,
    peer us), slowest ratio first."""
    out = []
    for (preset, group, mode), table in timed(rows).items():
        for t, (ratio, peer, qu, _) in speedups(table).items():
            if ratio < 1.0:
                out.append((preset, group, mode, t, qu, peer, ratio * qu))
    return sorted(out, key=lambda x: x[6] / x[4])


def thresholds(table: dict) -> list[tuple[int, str, float, str, float | None]]:
    """Per tokens: (tokens, fastest variant, margin over the runner-up, best persistent vs best
    non-persistent name, their ratio plain/persistent or None)."""
    out = []
    for t, impls in sorted(table.items()):
        var = sorted(((_f(r["us"]), n) for n, r in impls.items() if r["family"] == "qknorm-variant"))
        if not var:
            continue
        margin = var[1][0] / var[0][0] if len(var) > 1 else float("nan")
        cfgs = {n: config_from_name(n) for _, n in var}  # None: a name that is not a KernelConfig's
        pers = [v for v in var if cfgs[v[1]] is not None and cfgs[v[1]].persistent]
        plain = [v for v in var if cfgs[v[1]] is not None and not cfgs[v[1]].persistent
                 and not cfgs[v[1]].token_order]
        ratio = plain[0][0] / pers[0][0] if pers and plain else None
        out.append((t, var[0][1], margin, pers[0][1] if pers else "", ratio))
    return out


def winning_ranges(th) -> list[str]:
    """Token ranges where one variant is faster by >= 5% than every other variant measured."""
    out, cur = [], None
    for t, name, margin, _, _ in th:
        win = name if margin >= WIN_MARGIN else None
        if cur and cur[0] == win:
            cur[2] = t
        else:
            if cur:
                out.append(cur)
            cur = [win, t, t]
    if cur:
        out.append(cur)
    return [f"T {a}..{b}: " + (f"`{w}` fastest by >= 5%" if w else "no variant fastest by >= 5%")
            for w, a, b in out]


# --------------------------------------------------------------------------- markdown

def _fmt(x, nd=2):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def summary_markdown(rows: list[dict], meta: dict) -> str:
    tb = timed(rows)
    smoke = is_smoke(meta, rows)
    L = [f"# qknorm bench: {meta.get('device', '?')}, {meta.get('date', '')}", ""]
    L += [f"Command: `{meta.get('command', '')}`", ""]
    earlier = meta.get("earlier_runs") or []
    if earlier:
        L += [f"Appended (`--append`) to {len(earlier)} earlier run(s) in this folder; the tables below hold "
              "every run's rows (a case measured again shows the later run's times):", ""]
        L += [f"- {e.get('date', '?')}: `{e.get('command', '?')}` ({e.get('status', '?')})" for e in earlier]
        L.append("")
    L += ["| | |", "|---|---|"]
    for k in ("device", "torch", "triton", "qknorm", "peers", "torch_rms_norm_ran", "copy_gbps", "empty_graph_us",
              "empty_eager_us", "l2", "modes", "status"):
        if k in meta and meta[k] not in (None, ""):
            v = meta[k]
            L.append(f"| {k} | {_fmt(v, 2) if isinstance(v, float) else v} |")
    L += ["", "Times are per call. **graph**: the calls captured back to back in one CUDA graph, median of "
          "replays (device time, launch gaps squeezed out). **eager**: back-to-back Python calls, wall clock "
          "(includes host cost). GB/s counts the bytes an ideal kernel moves (each input element read once, each "
          "output written once, weights once); % copy is that over the device copy bandwidth measured in this "
          "run. " + ("**Warm L2**: inputs under the L2 size stay cached between calls, so small cases can exceed "
                     "HBM copy bandwidth." if meta.get("l2") != "cold" else
                     "**Cold L2**: calls rotate over input sets larger than twice the L2."),
          ""]
    if not smoke:
        L += ["Speedup = best peer time / qknorm time (qknorm = the dispatcher's pick). Peers: FlashInfer (CuTe DSL "
          "and CUDA paths), SGLang's JIT kernels and sgl_kernel, Quack, Liger, vLLM when importable, torch eager, "
              "torch.compile, F.rms_norm, and the `.contiguous()` copy paths. Like with like: per-head against "
              "per-head, Q and K both, in place where the peer can.", ""]

    if smoke:
        L += ["## CPU run: a smoke test, not a comparison", "",
              SMOKE_TEXT + " The per-case tables below list the CPU times as measured, without speedups.", ""]
    else:
        L += _comparison(rows, tb)
    L += _per_case(tb, rows, smoke)
    L += _problems(rows)
    return "\n".join(L)


def is_smoke(meta: dict, rows: Iterable[dict] = ()) -> bool:
    """Whether the run behind ``meta`` was on a CPU (a smoke test: no speedups are stated).

    Without a device in ``meta`` (a CSV rebuilt without its meta.json), the rows tell: on a CPU
    the qknorm row's ``config_reason`` is the runner's ``CPU: ...``."""
    device = str(meta.get("device", "") or "").strip().lower()
    if device:
        return device == "cpu"
    return any(r.get("impl") == "qknorm" and str(r.get("config_reason", "")).startswith("CPU") for r in rows)


SMOKE_TEXT = ("This run was on a CPU: qknorm ran its PyTorch path (or the Triton interpreter) and every "
              "implementation was checked against the fp32 reference, but CPU times vary by orders of magnitude "
              "between identical runs and say nothing about GPU kernels. They are not a comparison: no speedups, "
              "losses or bandwidth shares are stated. Run `qknorm bench` on a GPU for those.")


def _comparison(rows: list[dict], tb: dict) -> list[str]:
    """The GPU-run sections: headline speedups, facts, losses, what ran, dispatch regret."""
    L: list[str] = []
    # Headline
    L += ["## Headline: qknorm speedup over the best peer", ""]
    head_tok = sorted({t for tab in tb.values() for t in tab})
    L.append("| preset | case | mode | " + " | ".join(f"T={t}" for t in head_tok) + " | geomean | min |")
    L.append("|---|---|---|" + "---|" * (len(head_tok) + 2))
    for (preset, group, mode), table in sorted(tb.items()):
        sp = speedups(table)
        if not sp:
            continue
        cells = [f"{sp[t][0]:.2f}x" if t in sp else "" for t in head_tok]
        L.append(f"| {preset} | {group} | {mode} | " + " | ".join(cells)
                 + f" | {geomean(v[0] for v in sp.values()):.2f}x | {min(v[0] for v in sp.values()):.2f}x |")
    L.append("")

    fl = facts(rows)
    if fl:
        L += ["## Facts", "", "Measured in this run: speedup = best peer time / qknorm time; % of copy bandwidth = "
              "the bytes an ideal kernel moves per second over the device copy's, both measured here.", ""] + fl + [""]
    lost = losses(rows)
    if lost:
        L += ["## Where qknorm is slower than the best peer", "",
              "| preset | case | mode | T | qknorm us | best peer | peer us | speedup |",
              "|---|---|---|---|---|---|---|---|"]
        L += [f"| {p} | {g} | {m} | {t} | {qu:.2f} | {n} | {pu:.2f} | {pu / qu:.2f}x |"
              for p, g, m, t, qu, n, pu in lost]
        L.append("")
    ran = sorted({(r["impl"], r.get("ran", "")) for r in rows if r.get("ran") and r.get("status") in ("ok", "wrong")})
    if ran:
        L += ["## What ran", "", "Where a library picks its kernel at run time, the path each row took:", "",
              "| impl | ran |", "|---|---|"] + [f"| {n} | {w} |" for n, w in ran] + [""]

    # Dispatch regret
    regs = []
    for (preset, group, mode), table in sorted(tb.items()):
        if mode == "graph":
            for t, (r, n) in regret(table).items():
                regs.append((r, preset, group, t, n))
    if regs:
        worst = max(regs)
        g = geomean(1 + r for r, *_ in regs) - 1
        within = sum(1 for r, *_ in regs if r <= 0.03)
        L += ["## Dispatch regret (graph mode)", "",
              f"The dispatcher's pick against the fastest qknorm variant measured in this run, over {len(regs)} "
              f"cases: geometric mean {100 * g:+.1f}%, worst {100 * worst[0]:+.1f}% ({worst[1]} {worst[2]} "
              f"T={worst[3]}, fastest `{worst[4]}`); {within}/{len(regs)} within 3%.", ""]
        bad = sorted(regs, reverse=True)[:10]
        if bad and bad[0][0] > 0.03:
            L += ["| regret | preset | case | T | fastest variant |", "|---|---|---|---|---|"]
            L += [f"| {100 * r:+.1f}% | {p} | {gr} | {t} | `{n}` |" for r, p, gr, t, n in bad if r > 0.03]
            L.append("")

    return L


def _per_case(tb: dict, rows: list[dict], smoke: bool) -> list[str]:
    """One table per (preset, case, mode): µs per implementation and T; a copy baseline that
    copied nothing (T=1 in older results) reads ``no-op``, never a time."""
    noop = {(r["preset"], r["group"], r["mode"], int(r["tokens"]), r["impl"]) for r in rows
            if r.get("status") == "ok" and is_noop(r)}
    L = ["## Per case", ""]
    if smoke:
        L += ["CPU times (µs per call, eager): a smoke test, not a comparison.", ""]
    for (preset, group, mode), table in sorted(tb.items()):
        names = _impl_order({n for impls in table.values() for n in impls
                             if impls[n]["family"] in ("qknorm", "peer", "copy")})
        L += [f"### {preset} · {group} · {mode}", ""]
        tail = ["qknorm config"] if smoke else ["best peer", "speedup", "qknorm GB/s", "qknorm % copy", "qknorm config"]
        L.append("| T | " + " | ".join(names + tail) + " |")
        L.append("|---|" + "---|" * (len(names) + len(tail)))
        for t, impls in sorted(table.items()):
            bp = best_peer(impls)
            q = impls.get("qknorm")
            cells = [_fmt(_f(impls[n]["us"])) if n in impls else
                     "no-op" if (preset, group, mode, t, n) in noop else "" for n in names]
            if smoke:
                cells.append(q["config"] if q else "")
            else:
                sp = f"{bp[1] / _f(q['us']):.2f}x" if bp and q else ""
                cells += [bp[0] if bp else "", sp, q["gbps"] if q else "", q["pct_copy"] if q else "",
                          q["config"] if q else ""]
            L.append(f"| {t} | " + " | ".join(cells) + " |")
        th = thresholds(table)
        if th:
            L += ["", "Fastest qknorm variant per T (margin over the runner-up; persistent vs plain grid):", ""]
            L += [f"- T={t}: `{n}` by {100 * (m - 1):.1f}%" + (f"; best plain / best persistent `{p}` = {r:.3f}"
                                                               if r else "") for t, n, m, p, r in th]
            L += ["", "Fastest variant by a margin: " + "; ".join(winning_ranges(th))]
        L.append("")
    return L


def failed_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(bad, traps)``: rows that raised or failed the correctness gate, and the rows of "trap"
    implementations (a different function by design), which fail it as expected."""
    trap = [r.get("family") == "trap" for r in rows]
    bad = [r for r, t in zip(rows, trap) if r.get("status") == "error" or (r.get("status") == "wrong" and not t)]
    return bad, [r for r, t in zip(rows, trap) if r.get("status") == "wrong" and t]


def _problems(rows: list[dict]) -> list[str]:
    """Rows that failed the gate, raised or were skipped; then the notes."""
    L: list[str] = []
    bad, traps = failed_rows(rows)
    for title, rs in (("Failed the correctness gate or raised (not timed)", bad),
                      ("A different function by design (fails the gate, not timed; see Notes)", traps)):
        if rs:
            L += [f"## {title}", "", "| preset | case | T | impl | status | reason |", "|---|---|---|---|---|---|"]
            L += [f"| {r['preset']} | {r['group']} | {r['tokens']} | {r['impl']} | {r['status']} | {r['reason']} |"
                  for r in rs]
            L.append("")
    skipped = {}
    for r in rows:
        if r.get("status") == "skipped":
            skipped.setdefault((r["impl"], r["reason"]), 0)
            skipped[(r["impl"], r["reason"])] += 1
    if skipped:
        L += ["## Skipped", "", "| impl | reason | cases |", "|---|---|---|"]
        L += [f"| {n} | {why} | {c} |" for (n, why), c in sorted(skipped.items())]
        L.append("")
    L += ["## Notes", "",
          "- **Flattening heads into hidden is a different function.** Viewing Q `[T, H, D]` as `[T, H*D]` and "
          "running a 2D RMSNorm computes one RMS per token over all heads, not one per head; heads differ in "
          "magnitude, so the result differs (the `torch_flat2d` row fails the gate above by design). It is "
          "listed to show why a 2D kernel cannot be reused that way.",
          "- **The `.contiguous()` copy path**: `contiguous_copy` times the copy of the strided Q and K views "
          "alone; `torch_copy2d` / `flashinfer_copy2d` copy, then run a 2D norm on `[T*H, D]` rows. The copy "
          "moves as many bytes as the norm itself, which is why the strided kernel exists. Where the views are "
          "already contiguous (T=1: one row) `.contiguous()` copies nothing: `contiguous_copy` is not timed "
          "there (skipped, or `no-op` in results from older versions) and the copy2d rows are the 2D norm alone.",
          "- Peers that only take contiguous input (Liger) copy inside the call; their notes say so and the "
          "copy is timed.", ""]
    return L


_ORDER = ("qknorm", "sglang_jit", "flashinfer", "flashinfer_cuda", "quack", "quack_flat", "liger", "vllm", "sgl_kernel",
          "torch", "torch.compile", "torch_rms_norm", "torch_copy2d", "flashinfer_copy2d", "contiguous_copy")


def _impl_order(names) -> list[str]:
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


# --------------------------------------------------------------------------- plots

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def plot(rows: list[dict], out_dir: str, smoke: bool = False) -> list[str]:
    """One PNG per (preset, case, mode): time vs tokens, one line per implementation
    (qknorm and peers; variants left out). ``smoke``: a CPU run, titled as a smoke test, not a
    comparison. Needs matplotlib; returns the paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return []
    paths = []
    for (preset, group, mode), table in sorted(timed(rows).items()):
        if len(table) < 2:
            continue
        names = _impl_order({n for impls in table.values() for n in impls
                             if impls[n]["family"] in ("qknorm", "peer", "copy")})
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = plt.get_cmap("tab20").colors
        for i, n in enumerate(names):
            # a copy of an already contiguous view is a no-op (T=1): not a point on a log axis
            pts = [(t, _f(impls[n]["us"])) for t, impls in sorted(table.items()) if n in impls]
            if pts:
                xs, ys = zip(*pts)
                q = n == "qknorm"
                ax.plot(xs, ys, marker="os^vD<>ph*"[i % 10], ms=4, lw=2.8 if q else 1.1, label=n,
                        color="black" if q else colors[(2 * i) % 20 + (i // 10) % 2], zorder=3 if q else 2,
                        ls="--" if n == "contiguous_copy" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(f"µs per call ({mode})")
        ax.set_title(f"{preset}: {group}" + ("\nCPU smoke test: times as measured, not a comparison" if smoke
                                             else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{_slug(preset)}__{_slug(group)}__{mode}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
