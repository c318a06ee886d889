"""``qknorm tune``: time every candidate config on this GPU and write its tuned table.

For each grid point (op, dtype, D, rows) every :func:`dispatch.candidate_configs` entry is
run once on fresh random inputs and checked against ``reference.rms_norm_ref`` (fp32);
the configs that pass are timed by CUDA-graph replay with the bench's own timer
(:func:`qknorm.bench.timing.time_graph`: one graph of about ``--rep-ms`` of calls, median of
``TUNE_REPLAYS`` replays), so tune and bench compare like with like, and the fastest becomes the table entry, with every measured time kept as its
alternatives (``qknorm explain`` shows them). The file format, its validation and its
writer are :mod:`qknorm.tuned_table`. The table is rewritten after every point, so
a run cut short (``--max-seconds``, a kill) still leaves a valid, partial table.

Grid (``build_grid``):
  * ``rms_norm``, ``fused_add_rms_norm``: hidden ``HIDDEN`` x rows 1, 4, 16 ... 65536
    (powers of 4; ``--quick``: powers of 16, hidden 4096 and 8192).
  * ``qk_rms_norm``: head_dim ``HEAD_DIMS`` x tokens 1, 4, 16 ... 65536 on a packed QKV
    buffer, in place, with the heads in ``QK_HEADS``; rows = tokens x (Hq + Hk)
    (``--quick``: powers of 16, head_dim 128). Powers of 4, not 2: the dispatcher takes
    the nearest tuned bucket, and each of Triton's integer specialisation classes
    (1, multiples of 16, others) is still measured.
  * Points whose tensor (x, or Q+K) exceeds ``CAP_BYTES`` are dropped and the largest
    power-of-two row count under the cap is measured instead: far beyond L2 the pick no
    longer changes with rows, and the dispatcher uses the largest tuned bucket above it.
  * dtypes: bf16 unless ``--dtypes`` says otherwise; fp16 calls use bf16 entries (same
    bytes moved) when the table has no fp16 ones.
  * Budget (:func:`estimate`, ~0.1 s a timing + ~0.5 s a compile on an H100): the full
    grid ~7.5 min, ``--quick`` ~1.3 min, bf16 only; each extra dtype adds about as much.
    ``--max-seconds`` (default 540, under the device tool's 10-minute command limit) stops
    starting new points; ``--merge`` continues a table in a later run.

Without a GPU the command prints why and exits with status 1 (nothing was written);
``--dry-run`` prints the grid and a time estimate anywhere. The measuring function is a
parameter of :func:`run_tune`, so everything but the timing itself is testable on a CPU.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from . import compile_pool
from .cli import ArgParser, write_probe
from .config import KernelConfig
from .dispatch import DEFAULT_SMS, DTYPES, OPS, candidate_configs, heuristic, next_pow2
from .reference import TOL, rel_l2
from .tuned_table import (
    ENV_TABLE,
    OP_ALIASES,
    TableError,
    gpu_key,
    merge_entries,
    read_entries,
    table_doc,
    write_table,
)

HIDDEN = (1024, 2048, 4096, 5120, 7168, 8192, 16384)
HEAD_DIMS = (64, 128, 256, 512)
QK_HEADS = {64: (32, 8), 128: (32, 8), 256: (16, 2), 512: (8, 1)}  # (Hq, Hk) per head_dim
QK_HEADS_DEFAULT = (32, 8)
ROW_EXPONENTS = tuple(range(0, 17, 2))         # 1, 4, 16, 64 ... 65536
QUICK_ROW_EXPONENTS = tuple(range(0, 17, 4))   # 1, 16, 256, 4096, 65536
QUICK_HIDDEN = (4096, 8192)
QUICK_HEAD_DIMS = (128,)
CAP_BYTES = 128 << 20   # per tensor: x, or Q+K; 2.5x the 50 MB L2 of H100/H200
REP_MS = 2              # ms of calls per captured graph (the bench's GRAPH_TARGET_US)
QUICK_REP_MS = 1
TUNE_REPLAYS = 10       # replays per timing; the median is kept

# Cost model of --dry-run and the budget line (H100-class GPU, Triton 3.6 host).
EST_COMPILE_S = 0.5
EST_LAUNCH_S = 25e-6      # one eager launch through the public op
EST_BANDWIDTH = 2.9e12    # bytes/s, read + write
EST_FIXED_S = 0.05        # graph capture/instantiate, events, the correctness check
EST_POOL_S = 15.0         # starting the --jobs processes (spawn, import torch, a CUDA context)
MAX_JOBS = 16             # default --jobs: the CPUs this process may use, at most this
COMPILE_SHARE = 0.6       # of the time left, the most that compiling ahead may take


class GridPoint(NamedTuple):
    op: str
    dtype: str
    D: int
    n_rows: int
    tokens: int
    heads: tuple[int, int] | None = None  # (Hq, Hk) for qk_rms_norm

    @property
    def rows(self) -> int:
        """Row bucket: the table key."""
        return next_pow2(self.n_rows)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.op, self.dtype, self.D, self.rows)

    @property
    def shape(self) -> str:
        if self.heads:
            return f"T={self.tokens} Hq={self.heads[0]} Hk={self.heads[1]}"
        return f"T={self.tokens}"

    @property
    def tensor_bytes(self) -> int:
        return self.n_rows * self.D * DTYPES[self.dtype].itemsize

    @property
    def moved_bytes(self) -> int:
        """Bytes read + written by one call."""
        return self.tensor_bytes * (4 if self.op == "fused_add_rms_norm" else 2)


class Result(NamedTuple):
    config: KernelConfig
    us: float | None       # None: not timed (failed the check or raised)
    error: str | None = None


Measure = Callable[[GridPoint, Sequence[KernelConfig]], Sequence[Result]]


def parse_ops(s: str) -> tuple[str, ...]:
    ops = tuple(OP_ALIASES.get(o.strip(), o.strip()) for o in s.split(",") if o.strip())
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"argument --ops: {s!r}: choose from {', '.join(OPS)} (or rms, add, qk), comma list")
    return ops


def parse_dtypes(s: str) -> tuple[str, ...]:
    dts = tuple(d.strip() for d in s.split(",") if d.strip())
    bad = [d for d in dts if d not in DTYPES]
    if bad or not dts:
        raise ValueError(f"argument --dtypes: {s!r}: choose from {', '.join(DTYPES)}, comma list")
    return dts


def parse_widths(flag: str, s: str | None) -> tuple[int, ...] | None:
    """``--hidden`` / ``--head-dims``: a comma list of positive integers (None: the default grid)."""
    if s is None:
        return None
    eg = "64,128" if flag == "--head-dims" else "4096,8192"
    try:
        vals = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"argument {flag}: {s!r} is not a comma list of positive integers (e.g. {eg})") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"argument {flag}: {s!r}: widths must be positive integers (e.g. {eg})")
    return vals


def _row_counts(exponents: Sequence[int], bytes_per_row: int, cap: int, per_row: int = 1) -> list[int]:
    """Token counts ``2**e`` whose ``2**e * per_row`` rows fit ``cap`` bytes, plus the largest
    power of two that fits when the grid stopped short of the cap."""
    out = [(1 << e) for e in exponents if (1 << e) * per_row * bytes_per_row <= cap]
    top = max(exponents)
    if len(out) < len(exponents):
        m = 1
        while 2 * m <= (1 << top) and 2 * m * per_row * bytes_per_row <= cap:
            m *= 2
        if (not out or m > out[-1]) and m * per_row * bytes_per_row <= cap:
            out.append(m)
    return out


def build_grid(ops: Sequence[str] = OPS, dtypes: Sequence[str] = ("bf16",), *, quick: bool = False,
               hidden: Sequence[int] | None = None, head_dims: Sequence[int] | None = None,
               cap_bytes: int = CAP_BYTES) -> list[GridPoint]:
    """The grid points to measure, in order (qk first: the op the library is about)."""
    exps = QUICK_ROW_EXPONENTS if quick else ROW_EXPONENTS
    hidden = tuple(hidden or (QUICK_HIDDEN if quick else HIDDEN))
    head_dims = tuple(head_dims or (QUICK_HEAD_DIMS if quick else HEAD_DIMS))
    points: list[GridPoint] = []
    seen = set()
    order = sorted(ops, key=lambda o: (o != "qk_rms_norm", OPS.index(o)))
    for op in order:
        for dt in dtypes:
            size = DTYPES[dt].itemsize
            if op == "qk_rms_norm":
                for d in head_dims:
                    hq, hk = QK_HEADS.get(d, QK_HEADS_DEFAULT)
                    for t in _row_counts(exps, d * size, cap_bytes, hq + hk):
                        points.append(GridPoint(op, dt, d, t * (hq + hk), t, (hq, hk)))
            else:
                for d in hidden:
                    for n in _row_counts(exps, d * size, cap_bytes):
                        points.append(GridPoint(op, dt, d, n, n))
    out = []
    for p in points:  # one point per table key
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def _spec(n: int) -> str:
    """Triton's integer specialisation class (a new value class means a new compile)."""
    return "1" if n == 1 else ("16" if n % 16 == 0 else "x")


def estimate(points: Sequence[GridPoint], rep_ms: float = REP_MS,
             candidates: Callable = candidate_configs, jobs: int = 1) -> dict:
    """Timings, compiles and seconds a run of ``points`` should take (rough model), with the compiles
    shared by ``jobs`` processes."""
    n_timings = 0
    compiles = set()
    seconds = 0.0
    for p in points:
        cfgs = candidates(p.op, DTYPES[p.dtype], p.D, p.n_rows)
        t_k = 2e-6 + p.moved_bytes / EST_BANDWIDTH
        est = max(t_k, EST_LAUNCH_S)
        n_rep = max(1, int(rep_ms * 1e-3 / est))  # calls per graph
        per = EST_FIXED_S + 6 * est + n_rep * EST_LAUNCH_S + TUNE_REPLAYS * n_rep * t_k
        n_timings += len(cfgs)
        seconds += len(cfgs) * per
        for c in cfgs:
            compiles.add((p.op, p.dtype, c, c.chunked(p.D), _spec(p.tokens), p.D % 16 == 0))
    seconds += len(compiles) * EST_COMPILE_S / jobs + (EST_POOL_S if jobs > 1 else 0.0)
    return {"points": len(points), "timings": n_timings, "compiles": len(compiles), "seconds": seconds}


# --------------------------------------------------------------------------- the run

class TuneRun(NamedTuple):
    entries: list[dict]
    failed: list[tuple[GridPoint, str, str]]   # (point, config name, error)
    skipped: list[GridPoint]                   # not reached before the deadline


def entry_for(point: GridPoint, results: Sequence[Result]) -> dict | None:
    """The table entry of one point: the fastest passing config and all measured times."""
    ok = [r for r in results if r.us is not None and math.isfinite(r.us) and r.us > 0]
    if not ok:
        return None
    best = min(ok, key=lambda r: r.us)  # first of equals: candidate order
    e = {"op": point.op, "dtype": point.dtype, "D": point.D, "rows": point.rows,
         "n_rows": point.n_rows, "shape": point.shape, "config": best.config.to_dict(),
         "us": round(best.us, 4), "alternatives": {r.config.name: round(r.us, 4) for r in ok}}
    bad = {r.config.name: r.error or "not timed" for r in results if r not in ok}
    if bad:
        e["failed"] = bad
    return e


def run_tune(points: Sequence[GridPoint], measure: Measure, *, candidates: Callable = candidate_configs,
             device=None, deadline: float | None = None, log: Callable[[str], None] = print,
             on_entry: Callable[[list[dict]], None] | None = None, sms: int | None = None) -> TuneRun:
    """Measure every point (until ``deadline``, a ``time.monotonic()`` value) with ``measure``."""
    entries: list[dict] = []
    failed: list = []
    skipped: list[GridPoint] = []
    t0 = time.monotonic()
    regrets = []
    for i, p in enumerate(points):
        if deadline is not None and time.monotonic() > deadline:
            skipped = list(points[i:])
            log(f"deadline reached: {len(skipped)} of {len(points)} points not measured")
            break
        dtype = DTYPES[p.dtype]
        cfgs = candidates(p.op, dtype, p.D, p.n_rows, device)
        results = list(measure(p, cfgs))
        for r in results:
            if r.us is None:
                failed.append((p, r.config.name, r.error or "not timed"))
                log(f"  FAILED {p.op} {p.dtype} D={p.D} {p.shape} {r.config.name}: {r.error}")
        e = entry_for(p, results)
        if e is None:
            log(f"[{i + 1}/{len(points)}] {p.op} {p.dtype} D={p.D} {p.shape}: no config passed")
            continue
        entries.append(e)
        heur, _ = heuristic(p.op, dtype, p.D, p.n_rows, sms or DEFAULT_SMS)
        h_us = e["alternatives"].get(heur.name)
        vs = f"heuristic {heur.name} {'+%.1f%%' % (100 * (h_us / e['us'] - 1)) if h_us else 'not measured'}"
        if h_us:
            regrets.append(h_us / e["us"])
        log(f"[{i + 1}/{len(points)} {time.monotonic() - t0:5.0f}s] {p.op} {p.dtype} D={p.D} {p.shape} "
            f"({p.n_rows} rows): best {KernelConfig.from_dict(e['config']).name} {e['us']:.2f} us "
            f"of {len(e['alternatives'])}; {vs}")
        if on_entry is not None:
            on_entry(entries)
    if regrets:
        g = math.exp(sum(math.log(r) for r in regrets) / len(regrets))
        log(f"heuristic vs tuned pick: geometric mean +{100 * (g - 1):.1f}%, worst +{100 * (max(regrets) - 1):.1f}%")
    return TuneRun(entries, failed, skipped)


def timing_meta(rep_ms: float) -> dict:
    """The table's ``timing`` field: how :class:`CudaMeasure` measured the times."""
    return {"method": "qknorm.bench.timing.time_graph", "stat": "median", "replays": TUNE_REPLAYS,
            "rep_ms": rep_ms, "unit": "us",
            "inputs": "fresh torch.randn per config, checked against rms_norm_ref"}


def out_path(out: str | None, gpu: str) -> str:
    """``--out``: a file, or a directory that gets ``<gpu-key>.json``; default the cwd."""
    name = gpu_key(gpu) + ".json"
    if out is None:
        return os.path.abspath(name)
    if os.path.isdir(out) or out.endswith(os.sep):
        return os.path.join(out, name)
    return out


# --------------------------------------------------------------------------- GPU measuring

class CudaMeasure:
    """Check each config against ``rms_norm_ref``, then time it with CUDA-graph replay."""

    def __init__(self, rep_ms: float = REP_MS, device: str = "cuda", seed: int = 0):
        self.rep_ms = rep_ms
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def _randn(self, *shape, dtype):
        return torch.randn(*shape, generator=self.gen, device=self.device, dtype=torch.float32).to(dtype)

    def _case(self, p: GridPoint):
        """(reset, run(cfg), error()) for one point; inputs are fresh random, never zeros."""
        import qknorm

        from .reference import rms_norm_ref

        dt = DTYPES[p.dtype]
        d = p.D
        if p.op == "qk_rms_norm":
            hq, hk = p.heads
            t = p.tokens
            qkv0 = self._randn(t, (hq + 2 * hk) * d, dtype=dt)
            qkv = qkv0.clone()
            q = qkv[:, : hq * d].view(t, hq, d)
            k = qkv[:, hq * d:(hq + hk) * d].view(t, hk, d)
            qw = self._randn(d, dtype=dt)
            kw = self._randn(d, dtype=dt)
            ref_q = rms_norm_ref(qkv0[:, : hq * d].view(t, hq, d), qw)
            ref_k = rms_norm_ref(qkv0[:, hq * d:(hq + hk) * d].view(t, hk, d), kw)
            return (lambda: qkv.copy_(qkv0),
                    lambda cfg: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k, config=cfg),
                    lambda: max(rel_l2(q, ref_q), rel_l2(k, ref_k)))
        x0 = self._randn(p.n_rows, d, dtype=dt)
        w = self._randn(d, dtype=dt)
        if p.op == "rms_norm":
            out = torch.empty_like(x0)
            ref = rms_norm_ref(x0, w)
            return (lambda: out.fill_(float("nan")),
                    lambda cfg: qknorm.rms_norm(x0, w, out=out, config=cfg),
                    lambda: rel_l2(out, ref))
        # Small weights: timing replays the in-place op thousands of times, and the residual
        # grows by about |w| per call; keep it far from fp16's range.
        w = (w.float() * 0.01).to(dt)
        r0 = self._randn(p.n_rows, d, dtype=dt)
        x, r = x0.clone(), r0.clone()
        s = x0.float() + r0.float()
        ref_y, ref_s = rms_norm_ref(s, w), s
        return (lambda: (x.copy_(x0), r.copy_(r0)),
                lambda cfg: qknorm.fused_add_rms_norm(x, r, w, config=cfg),
                lambda: max(rel_l2(x, ref_y), rel_l2(r, ref_s)))

    def __call__(self, p: GridPoint, configs: Sequence[KernelConfig]) -> list[Result]:
        from .bench.timing import time_graph

        reset, run, error = self._case(p)
        tol = TOL[DTYPES[p.dtype]]
        out = []
        for cfg in configs:
            try:
                reset()
                run(cfg)
                self._sync()
                err = error()
                if not err < tol:
                    out.append(Result(cfg, None, f"relative L2 error {err:.2e} >= {tol:.0e}"))
                    continue
                us = time_graph([lambda cfg=cfg: run(cfg)], replays=TUNE_REPLAYS, target_us=self.rep_ms * 1e3)
                out.append(Result(cfg, us))
            except Exception as e:  # noqa: BLE001 - a compile or launch failure fails this config only
                msg = str(e).splitlines()[0][:200] if str(e) else ""
                out.append(Result(cfg, None, f"{type(e).__name__}: {msg}"))
                try:
                    self._sync()
                except Exception:  # noqa: BLE001, S110 - a sticky CUDA error: the next configs say so too
                    pass
        return out

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# Compiling ahead (``--jobs``): each worker process launches (point, config) pairs once, so that Triton's on-disk
# cache holds their kernels before the timing pass (:mod:`qknorm.compile_pool`).
_WORKER: dict = {}


def compile_tasks(points: Sequence[GridPoint], candidates: Callable = candidate_configs,
                  device=None) -> list[tuple[GridPoint, KernelConfig]]:
    """Every (point, config) the timing pass will launch, point by point: processes that take the next
    task when free then compile different configs of one point at once, and a later point's configs
    mostly find theirs compiled (two processes seldom compile one kernel twice)."""
    return [(p, c) for p in points for c in candidates(p.op, DTYPES[p.dtype], p.D, p.n_rows, device)]


def _worker_init(device: str) -> None:
    # an error here ends the process: the pool stops at once and says so (compile_pool.run)
    _WORKER["measure"] = CudaMeasure(device=device)


def compile_one(task: tuple[GridPoint, KernelConfig]) -> bool:
    """Launch one (point, config) once (in a worker process): whether it ran. Failures are left to the
    timing pass, which checks and reports every config."""
    point, cfg = task
    m = _WORKER["measure"]
    if _WORKER.get("point") != point:  # one point's inputs at a time: the last ones freed first
        _WORKER["case"] = _WORKER["point"] = None
        _WORKER["case"], _WORKER["point"] = m._case(point), point
    reset, run, _ = _WORKER["case"]
    reset()
    run(cfg)
    m._sync()
    return True


def compile_ahead(points: Sequence[GridPoint], device: str, jobs: int, seconds: float,
                  log: Callable[[str], None] = print, candidates: Callable = candidate_configs) -> compile_pool.PoolRun:
    """Launch every (point, config) of the grid once in ``jobs`` processes (at most ``seconds``), so that the
    timing pass finds the kernels in Triton's on-disk cache; say what ran."""
    tasks = compile_tasks(points, candidates, device)
    r = compile_pool.run(tasks, compile_one, jobs, seconds, _worker_init, (device,))
    log(f"compiled ahead in {jobs} processes: {r.ran} of {len(tasks)} configs launched in {r.seconds:.0f} s"
        + ("" if r.finished else f"; {r.error or 'the time limit stopped it'}: the rest compile while timing")
        + (f"; {r.failed} did not run (the timing pass checks and reports every config)" if r.failed else ""))
    return r


# --------------------------------------------------------------------------- command line

def _cpus() -> int:
    """CPUs this process may run on (affinity and container limits), for the default ``--jobs``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _gpu() -> tuple[int, str, int] | None:
    """(device index, name, SM count) of the current CUDA device, or None without one."""
    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device()
    return dev, torch.cuda.get_device_name(dev), torch.cuda.get_device_properties(dev).multi_processor_count


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``qknorm tune``, added to ``p``."""
    p.add_argument("--ops", default=",".join(OPS), help="comma list of ops (rms_norm, fused_add_rms_norm, "
                   "qk_rms_norm; or rms, add, qk). Default: all")
    p.add_argument("--dtypes", default="bf16", help="comma list of bf16, fp16, fp32 (default bf16; fp16 "
                   "calls use bf16 entries when the table has no fp16 ones)")
    p.add_argument("--quick", action="store_true", help="a coarse grid (about 1.5 minutes on an H100)")
    p.add_argument("--max-seconds", type=float, default=540.0,
                   help="stop starting new grid points after this many seconds and write what was "
                        "measured (default 540)")
    p.add_argument("--out", default=None, help="table file, or a directory for <gpu-key>.json "
                   "(default: ./<gpu-key>.json; ship it as src/qknorm/tuned/<gpu-key>.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing table at the output path (default: refuse; --merge it to add to it)")
    p.add_argument("--merge", default=None, metavar="TABLE",
                   help="start from this table's entries (same GPU) and add or replace the measured ones: "
                        "split a long tune over several runs (e.g. --ops qk, then --ops rms,add --merge ...)")
    p.add_argument("--hidden", default=None, help=f"comma list of 2D widths (default {','.join(map(str, HIDDEN))})")
    p.add_argument("--head-dims", default=None,
                   help=f"comma list of QK head dims (default {','.join(map(str, HEAD_DIMS))})")
    p.add_argument("--rep-ms", type=float, default=None, help=f"ms of calls per timed CUDA graph "
                   f"(default {REP_MS}, --quick {QUICK_REP_MS})")
    p.add_argument("--jobs", type=int, default=None, help="processes that compile the kernels before the timing "
                   f"pass (default: the CPUs this process may use, at most {MAX_JOBS}; 1: compile while timing, "
                   "in this process)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and the estimate, measure nothing")


def main(argv: list[str] | None = None, *, measure: Measure | None = None) -> int:
    """``qknorm tune``: measure the grid on this GPU and write the table.

    Parameters
    ----------
    argv : list of str or None
        The options (default ``sys.argv[1:]``).
    measure : callable or None
        Replaces the GPU timing (:class:`CudaMeasure`); for tests.

    Returns
    -------
    int
        0 when the table was written and every config passed its check (or ``--dry-run``);
        1 without a GPU, with nothing measured, a ``--merge`` table that does not load or
        is from another GPU, or a config that failed (the table is written then). Bad flags
        exit through argparse (status 2).
    """
    argv = sys.argv[1:] if argv is None else argv
    p = ArgParser(
        prog="qknorm tune",
        description="Time every candidate kernel config on this GPU (CUDA-graph replay, median) and "
                    "write its tuned table. Needs a CUDA GPU (exit status 1 without one); "
                    "--dry-run prints the grid and a time estimate anywhere.")
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        ops, dtypes = parse_ops(a.ops), parse_dtypes(a.dtypes)
        hidden = parse_widths("--hidden", a.hidden)
        head_dims = parse_widths("--head-dims", a.head_dims)
    except ValueError as e:
        p.error(str(e))
    if not a.max_seconds > 0:
        p.error(f"argument --max-seconds: {a.max_seconds:g}: must be > 0")
    if a.jobs is not None and a.jobs < 1:
        p.error(f"argument --jobs: {a.jobs}: must be >= 1 (1: compile while timing, in this process)")
    jobs = a.jobs or max(1, min(MAX_JOBS, _cpus()))
    if a.rep_ms is not None and not 0 < a.rep_ms < 1e6:  # NaN and inf fail too
        p.error(f"argument --rep-ms: {a.rep_ms:g}: must be > 0 and below 1e6 (ms of calls per timed graph)")
    if a.hidden and "rms_norm" not in ops and "fused_add_rms_norm" not in ops:
        p.error(f"argument --hidden: {a.hidden!r} is for the 2D ops (rms, add), and --ops {a.ops!r} has none")
    if a.head_dims and "qk_rms_norm" not in ops:
        p.error(f"argument --head-dims: {a.head_dims!r} is for qk_rms_norm, and --ops {a.ops!r} does not include it")
    if a.out is not None and not a.out.strip():
        p.error(f"argument --out: {a.out!r} is empty; give a table file or folder, or leave --out out")
    if a.out is not None:
        d = os.path.abspath(a.out)
        while not os.path.exists(d):
            d = os.path.dirname(d)
        if not os.path.isdir(d) and d != os.path.abspath(a.out):
            p.error(f"argument --out: {a.out!r}: {d} is a file, not a folder")
        if not os.access(d if os.path.isdir(d) else os.path.dirname(d), os.W_OK | os.X_OK):
            p.error(f"argument --out: {a.out!r}: cannot write in {d} (permission denied)")
    rep_ms = a.rep_ms or (QUICK_REP_MS if a.quick else REP_MS)
    points = build_grid(ops, dtypes, quick=a.quick, hidden=hidden, head_dims=head_dims)
    for flag, widths, kinds in (("--hidden", hidden, ("rms_norm", "fused_add_rms_norm")),
                                ("--head-dims", head_dims, ("qk_rms_norm",))):
        empty = [w for w in widths or () if not any(pt.D == w and pt.op in kinds for pt in points)]
        if empty and any(o in kinds for o in ops):
            p.error(f"argument {flag}: {','.join(map(str, empty))}: one "
                    f"{'row' if flag == '--hidden' else 'token (all heads)'} of that width is over the grid's "
                    f"{CAP_BYTES >> 20} MiB per-tensor cap, so there is nothing to measure; give smaller widths")
    est = estimate(points, rep_ms, jobs=jobs)
    print(f"qknorm tune: {est['points']} grid points, {est['timings']} timings, ~{est['compiles']} compiles "
          f"in {jobs} process{'es' if jobs > 1 else ''}; estimated {est['seconds'] / 60:.1f} min on an H100-class "
          f"GPU (budget {a.max_seconds:.0f} s)")
    if a.dry_run:
        for pt in points:
            n = len(candidate_configs(pt.op, DTYPES[pt.dtype], pt.D, pt.n_rows))
            print(f"  {pt.op:19s} {pt.dtype} D={pt.D:<6d} {pt.shape:22s} rows={pt.n_rows:<8d} "
                  f"bucket={pt.rows:<8d} {pt.tensor_bytes / 2**20:8.1f} MiB  {n} configs")
        return 0
    info = _gpu()
    if info is None:
        print("qknorm tune needs a CUDA GPU: it times the Triton kernels with CUDA-graph replay. "
              "Nothing was measured or written. (`qknorm tune --dry-run` shows the grid.)")
        return 1
    t_start = time.monotonic()
    dev, gpu, sms = info
    path = out_path(a.out, gpu)
    if os.path.exists(path) and not a.overwrite and not (a.merge and os.path.abspath(a.merge) == os.path.abspath(path)):
        p.error(f"argument --out: {path} already holds a table; add --merge {path} to add this run's entries to "
                f"it, or --overwrite to replace it, or pick another --out")
    why = write_probe(path)
    if why:
        p.error(f"argument --out: cannot write {path}: {why}; pick another --out")
    command = "qknorm tune " + shlex.join(argv) if argv else "qknorm tune"
    print(f"GPU {gpu} ({sms} SMs), torch {torch.__version__}; table -> {path}")

    base: list[dict] = []
    if a.merge:
        try:
            base = read_entries(a.merge, gpu)
        except TableError as e:
            print(f"qknorm tune: --merge: {e}")
            return 1
        print(f"merging into the {len(base)} entries of {a.merge}")

    saved = [0]  # entries in the table on disk (it is rewritten, atomically, after each grid point)

    def save(entries, complete=False):
        write_table(path, table_doc(merge_entries(base, entries), gpu=gpu, sm_count=sms, command=command,
                                    complete=complete, timing=timing_meta(rep_ms)))
        saved[0] = len(entries)

    try:
        if jobs > 1 and measure is None:
            compile_ahead(points, f"cuda:{dev}", jobs, COMPILE_SHARE * (t_start + a.max_seconds - time.monotonic()))
        run = run_tune(points, measure or CudaMeasure(rep_ms, f"cuda:{dev}"), device=f"cuda:{dev}",
                       deadline=t_start + a.max_seconds, on_entry=save, sms=sms)
    except KeyboardInterrupt:
        print("qknorm tune: interrupted; " + (f"the {saved[0]} entries measured so far are in {path} (marked "
                                              "incomplete)" if saved[0] else "nothing was measured or written"),
              file=sys.stderr)
        return 130
    if not run.entries:
        print("no grid point was measured; nothing written")
        return 1
    save(run.entries, complete=not run.skipped and not run.failed)
    total = len(merge_entries(base, run.entries))
    print(f"wrote {path}: {len(run.entries)} entries measured"
          + (f" ({total} in the table with the merged ones)" if base else "")
          + f" in {time.monotonic() - t_start:.0f} s"
          + (f"; {len(run.skipped)} points skipped (deadline)" if run.skipped else ""))
    shipped = os.path.join("src", "qknorm", "tuned", gpu_key(gpu) + ".json")
    print(f"to ship it: cp {path} {shipped}   (or point {ENV_TABLE} at it)")
    if run.failed:
        print(f"{len(run.failed)} config(s) FAILED the correctness check or raised; they are not in the "
              f"table's picks (see 'failed' in its entries). Exit status 1.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
