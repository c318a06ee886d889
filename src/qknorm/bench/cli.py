"""``qknorm bench``: check and time qknorm against its peers; write CSV, Markdown and plots.

Examples::

    qknorm bench --quick                              # seconds; runs on a CPU too
    qknorm bench --preset qwen3-8b,qwen3-235b,qwen3-next --out results/h100
    qknorm bench --preset seed --variants all         # the original question's grid
    qknorm bench --preset qwen3-8b --mode eager --tokens 1,4,16,64 --variants none
    qknorm bench --preset rope --impl 'qknorm,flashinfer*,torch*'
    qknorm bench --preset tp --tp 2                   # tensor-parallel full-width norm (2+ GPUs)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time

import torch

from .cases import DTYPES, PRESETS, preset_cases, quick_cases
from .peers import peer_status
from .report import CsvSink, facts, plot, read_csv, summary_markdown
from .runner import MODES, VARIANT_CHOICES, Options, Runner
from .timing import measure_baselines


def _csv_list(s: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else ()


def _tokens(s: str | None) -> tuple[int, ...] | None:
    if not s:
        return None
    try:
        t = tuple(int(x) for x in _csv_list(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens must be a comma list of integers, got {s!r}") from None
    if any(v < 1 for v in t):
        raise argparse.ArgumentTypeError(f"--tokens must be >= 1, got {s!r}")
    return t


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qknorm bench",
        description="Check every implementation against the fp32 reference, then time it: qknorm (the "
                    "dispatcher's pick and its kernel variants) side by side with FlashInfer, SGLang's JIT kernels "
                    "and sgl_kernel, Quack, Liger, vLLM (when importable; otherwise listed as skipped with the "
                    "reason), torch eager, torch.compile and F.rms_norm. Writes results.csv, "
                    "summary.md, meta.json and plots/ under --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--preset", default=None,
                   help=f"comma list of presets: {', '.join(PRESETS)}, or 'all' (default qwen3-8b; with "
                        "--quick: one small case of each op kind)")
    p.add_argument("--impl", default="", help="comma list of implementation names or globs to run "
                                              "(e.g. 'qknorm,flashinfer*,torch'; 'qknorm[*]' = every variant); "
                                              "default: all")
    p.add_argument("--exclude", default="", help="comma list of names or globs to leave out")
    p.add_argument("--tokens", type=_tokens, default=None,
                   help="comma list of token counts (default: the preset's, 1..16384)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--mode", choices=list(MODES) + ["both"], default=None,
                   help="graph: CUDA-graph replay (device time); eager: back-to-back calls (host cost "
                        "included); both. Default: graph on a GPU, eager on a CPU")
    p.add_argument("--cold-l2", action="store_true",
                   help="rotate over input sets larger than 2x L2 (default: warm L2, inputs may stay cached)")
    p.add_argument("--variants", choices=VARIANT_CHOICES, default="top",
                   help="qknorm kernel variants to time beside the pick: none, top (the tuned table's best "
                        "for the case + the pick; all candidates where the table has none), all")
    p.add_argument("--out", default=None, help="output folder (default ./qknorm-bench/<gpu>-<time>)")
    p.add_argument("--quick", action="store_true", help="a few small cases (seconds, CPU included)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--tp", type=int, default=None, help="ranks for --preset tp (default: the GPUs here, or 2 "
                                                        "CPU processes)")
    p.add_argument("--report-only", metavar="CSV", help="rebuild summary.md and plots from an existing results.csv")
    return p


EXTRA_PRESETS = ("tp",)  # run by their own launcher (several processes), not by the case runner


def _presets(s: str) -> list[str]:
    names = list(PRESETS) if s.strip() == "all" else list(_csv_list(s))
    bad = [n for n in names if n not in PRESETS + EXTRA_PRESETS]
    if bad:
        raise SystemExit(f"qknorm bench: unknown preset {', '.join(bad)}; choose from "
                         f"{', '.join(PRESETS + EXTRA_PRESETS)} or all")
    return names


def _run_tp(a, out_dir: str) -> int:
    """The ``tp`` preset: full-width QK norm under tensor parallelism, one all-reduce vs
    all-gather, on ``--tp`` ranks (GPUs; 2 gloo processes on a CPU)."""
    from .tp import launch
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nproc = a.tp or (n_gpu if n_gpu >= 2 else 2)
    if n_gpu and n_gpu < nproc:
        print(f"qknorm bench --preset tp: needs {nproc} GPUs, this machine has {n_gpu}; skipped")
        return 1
    if not n_gpu:
        print("qknorm bench --preset tp: no CUDA GPU here; running 2 gloo processes on the CPU as a smoke "
              "test (correctness check and bytes per rank; the times are not GPU numbers)")
    os.makedirs(out_dir, exist_ok=True)
    return launch(nproc, a.tokens, a.dtype, os.path.join(out_dir, "tp.csv"))


def _progress(total: int, quiet: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="impl", dynamic_ncols=True, disable=quiet, file=sys.stderr)
    except Exception:  # noqa: BLE001 - tqdm is optional

        class _Bar:
            def __init__(self):
                self.n, self.t0, self.last = 0, time.time(), 0.0

            def update(self, k=1):
                self.n += k
                now = time.time()
                if not quiet and (now - self.last > 5 or self.n == total):
                    self.last = now
                    print(f"  [{self.n}/{total}] {now - self.t0:.0f} s", file=sys.stderr, flush=True)

            def set_description(self, s):
                pass

            def close(self):
                pass
        return _Bar()


def _write_report(rows: list[dict], meta: dict, out: str, plots: bool) -> list[str]:
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(rows, meta))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    if not plots:
        return []
    pdir = os.path.join(out, "plots")
    os.makedirs(pdir, exist_ok=True)
    return plot(rows, pdir)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.report_only:
        rows = read_csv(a.report_only)
        out = os.path.dirname(os.path.abspath(a.report_only))
        meta = {}
        mp = os.path.join(out, "meta.json")
        if os.path.exists(mp):
            with open(mp) as f:
                meta = json.load(f)
        paths = _write_report(rows, meta, out, not a.no_plots)
        print(f"qknorm bench: rewrote {out}/summary.md and {len(paths)} plots from {len(rows)} rows")
        return 0

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("qknorm bench: --device cuda but torch sees no CUDA GPU")
    modes = (("graph", "eager") if a.mode == "both" else (a.mode,)) if a.mode else (("graph",) if cuda else ("eager",))
    if not cuda and "graph" in modes:
        print("qknorm bench: graph mode needs CUDA; timing eager only on the CPU")
        modes = ("eager",)
    dtype = DTYPES[a.dtype]
    presets = _presets(a.preset) if a.preset else None
    rc_tp = 0
    if presets and "tp" in presets:
        rc_tp = _run_tp(a, a.out or os.path.join("qknorm-bench", "tp"))
        presets = [p for p in presets if p != "tp"]
        if not presets:
            return rc_tp
    if a.quick:
        cases = quick_cases(presets, dtype, a.tokens)
    else:
        cases = [c for p in (presets or ["qwen3-8b"]) for c in preset_cases(p, a.tokens, dtype)]

    if not cuda:
        import qknorm
        where = "--device cpu" if torch.cuda.is_available() else "no CUDA GPU here"
        print(f"qknorm bench: {where}. Running the CPU paths only (qknorm on its "
              f"{'Triton-interpreter' if qknorm.get_backend() == 'triton' else 'PyTorch'} path, torch eager); "
              "GPU implementations are listed as skipped. GPU figures need a GPU: times below are CPU times "
              "and say nothing about kernel speed.")
    base = measure_baselines(device)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    out = a.out or os.path.join("qknorm-bench", f"{_slug_device(base.device)}-{stamp:%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    import qknorm
    import triton
    meta = dict(device=base.device, date=f"{stamp:%Y-%m-%d %H:%M} UTC",
                command="qknorm bench " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
                torch=torch.__version__, triton=triton.__version__, qknorm=qknorm.__version__,
                peers="; ".join(f"{k} {v}" for k, v in peer_status().items()),
                copy_gbps=round(base.copy_gbps, 1), empty_graph_us=base.empty_graph_us,
                empty_eager_us=base.empty_eager_us, l2="cold" if a.cold_l2 else "warm", modes=",".join(modes),
                sm_count=base.sm_count, l2_bytes=base.l2_bytes, status="running")
    opt = Options(device=device, modes=modes, cold_l2=a.cold_l2, include=_csv_list(a.impl),
                  exclude=_csv_list(a.exclude), variants=a.variants, seed=a.seed)
    sink = CsvSink(os.path.join(out, "results.csv"))
    runner = Runner(opt, base, sink)
    print(f"qknorm bench: {len(cases)} cases on {base.device} (copy {base.copy_gbps:.0f} GB/s"
          + (f", empty kernel {base.empty_graph_us:.2f} us graph / {base.empty_eager_us:.2f} us eager"
             if base.empty_graph_us else "") + f"); modes {','.join(modes)}; L2 {meta['l2']}; out {out}")
    rows: list[dict] = []
    _sigterm_interrupts()
    bar = _progress(runner.count(cases), quiet=False)
    try:
        for c in cases:
            bar.set_description(f"{c.preset} {c.op} T={c.tokens}")
            rows += runner.run_case(c, tick=bar.update)
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = f"interrupted after {len(rows)} rows (kept)"
        print(f"\nqknorm bench: interrupted; keeping the {len(rows)} rows measured", file=sys.stderr)
    finally:
        bar.close()
        sink.close()
    ran = sorted({r["ran"] for r in rows if r["impl"] == "torch_rms_norm" and r.get("ran")})
    if ran:
        meta["torch_rms_norm_ran"] = " | ".join(ran)
    paths = _write_report(rows, meta, out, not a.no_plots)
    _print_console(rows, out, paths)
    return 0 if meta["status"] == "complete" else 130


def _sigterm_interrupts() -> None:
    """A SIGTERM (``timeout``, a job scheduler) ends the run like Ctrl-C: the rows measured so
    far are kept and the summary is written from them."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread
        pass


def _slug_device(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "device"


def _print_console(rows: list[dict], out: str, plots: list[str]) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    by = {}
    for r in ok:
        by.setdefault((r["preset"], r["group"], r["mode"], int(r["tokens"])), []).append(r)
    print(f"\n{'case':<52} {'T':>6} {'mode':>5}  {'qknorm us':>10}  {'best peer':>22}  {'speedup':>7}")
    for (preset, group, mode, t), rs in sorted(by.items()):
        q = next((r for r in rs if r["impl"] == "qknorm"), None)
        peers = [r for r in rs if r["family"] == "peer"]
        if q is None:
            continue
        bp = min(peers, key=lambda r: float(r["us"])) if peers else None
        sp = f"{float(bp['us']) / float(q['us']):.2f}x" if bp else ""
        bps = f"{bp['impl']} {float(bp['us']):.2f}" if bp else "-"
        print(f"{(preset + ' ' + group)[:52]:<52} {t:>6} {mode:>5}  {float(q['us']):>10.2f}  {bps:>22}  {sp:>7}")
    bad = [r for r in rows if r["status"] in ("wrong", "error")]
    skipped = sorted({(r["impl"], r["reason"]) for r in rows if r["status"] == "skipped"})
    for r in bad:
        print(f"{r['status']:>7}: {r['impl']} on {r['preset']} {r['group']} T={r['tokens']}: {r['reason']}")
    if skipped:
        print("skipped: " + "; ".join(f"{n} ({why})" for n, why in skipped))
    fl = facts(rows)
    if fl:
        print("\n".join(["facts (this run):"] + fl))
    print(f"\nwrote {out}/results.csv ({len(rows)} rows), {out}/summary.md" + (f", {len(plots)} plots" if plots else ""))
