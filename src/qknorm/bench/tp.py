"""Full-width QK norm under tensor parallelism: one all-reduce of row sums vs all-gather.

OLMo 2 normalises Q over Hq*D and K over Hkv*D. With TP each rank holds ``q [T, Hq*D/tp]``.
Implementations timed, per call, on every rank (the reported time is the slowest rank):

  ours            qknorm.distributed.qk_rms_norm_tp, in place on the packed QKV shard:
                  row sums of Q and K (one launch) + ONE all-reduce of 2T fp32 + scale (one launch)
  allgather       what vLLM's Olmo2Attention does: all-gather Q, all-gather K (each into
                  [tp, T, l], then [T, tp*l]), full-width norm of each (qknorm.rms_norm), keep own slice
  allgather-1     the same with Q and K packed into ONE all-gather
  comm-ours       the all-reduce alone (2T fp32)
  comm-allgather  the two all-gathers alone

Bytes per rank: ``payload`` is what the rank contributes to its collectives; ``ring_sent``
is what a ring algorithm sends from each rank (all-gather: (tp-1) * payload; all-reduce:
2 (tp-1)/tp * payload). NCCL picks tree/LL protocols for small messages; the ratio between
the two approaches is what matters: (ql + kl) * itemsize / 8 per token at tp=2.

Correctness first: every rank builds the same full Q, K from a seed, runs ``ours`` and the
all-gather path on its shard and compares with ``rms_norm_ref`` of the full width (fp32).

Run (2 GPUs, e.g. nvidia-h200-x2) as the bench preset, which starts the ranks itself::

    qknorm bench --preset tp --tp 2 --out results/tp

or directly: ``torchrun --nproc-per-node 2 -m qknorm.bench.tp --out tp.csv``.

Modes: ``graph`` = CUDA-graph replay, ``eager`` = back-to-back calls, wall clock (includes host
cost): the bench's timers (:mod:`.timing`), with the call count fixed on every rank (``--inner``
x ``--reps`` calls per timed replay or batch, median of ``--trials``; each call is a collective,
so the ranks make the same number) and the ranks lined up before each trial. The NCCL
communicator is created by the correctness check, before any capture. Without CUDA it runs on
gloo/CPU, eager only, as a smoke test (numbers meaningless)::

    qknorm bench --preset tp --tokens 1,64

The correctness check is the bench's (:mod:`.check`: relative L2 error against the tolerance
of the dtype, the worst over the ranks); an implementation that fails it is recorded as
``wrong`` and not timed, and the run exits with status 1. Rows have the bench's columns
(:data:`.runner.COLUMNS`: ``us``, ``rel_err``, ``status``, ``family`` ...) followed by
:data:`TP_COLUMNS`; ``ours`` is family ``qknorm``, the all-gather paths ``peer``, the
collectives alone ``comm``.

Rank 0 writes each row to ``--out`` (flushed) as soon as it is measured (``--append`` adds to
an existing CSV of the same columns); an interrupted rank (Ctrl-C: exit status 130) or a
crashed one (the exception propagates) keeps every row measured so far. On the CPU the table
prints no speedups: the times of a gloo smoke test are not a comparison.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import torch
import torch.distributed as dist

import qknorm
from qknorm.distributed import qk_rms_norm_tp
from qknorm.reference import rms_norm_ref

from .check import Verdict, verdict, worst_error
from .common import DTYPES, EPS, packed_qkv, triton_version
from .report import CsvSink
from .runner import COLUMNS
from .timing import time_eager, time_graph

# name: (Hq, Hkv, head_dim); q_norm over Hq*D, k_norm over Hkv*D
MODELS = {
    "olmo2-7b": (32, 32, 128),   # q 4096, k 4096
    "olmo2-13b": (40, 40, 128),  # q 5120, k 5120
    "olmo2-32b": (40, 8, 128),   # q 5120, k 1024 (GQA; 8 KV heads from memory: check config.json)
}
TOKENS = [1, 4, 16, 64, 256, 512, 1024, 4096, 16384]
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


def gather_last_dim(x: torch.Tensor, tp: int) -> torch.Tensor:
    """``[T, l]`` on each rank -> ``[T, tp*l]`` (vLLM's tensor_model_parallel_all_gather, dim=-1)."""
    t, l = x.shape
    buf = torch.empty(tp * t, l, dtype=x.dtype, device=x.device)
    _all_gather_tensor(buf, x.contiguous())
    return buf.view(tp, t, l).movedim(0, 1).reshape(t, tp * l)


class Shard:
    """One rank's shard of the full Q, K (and V) of ``model`` for ``t`` tokens, in a packed
    local buffer, with the implementations timed on it. (Not a :class:`.cases.Case`: Q and K
    widths differ for GQA models, and the problem is one rank's part of a full-width norm.)"""

    def __init__(self, model, t, dtype, device, rank, tp):
        hq, hkv, d = MODELS[model]
        self.qw_full, self.kw_full = hq * d, hkv * d
        assert self.qw_full % tp == 0 and self.kw_full % tp == 0
        self.ql, self.kl = self.qw_full // tp, self.kw_full // tp
        self.t, self.tp, self.rank = t, tp, rank
        g = torch.Generator(device=device).manual_seed(1234 + t)  # same full tensors on every rank
        self.fq = torch.randn(t, self.qw_full, generator=g, device=device).to(dtype)
        self.fk = torch.randn(t, self.kw_full, generator=g, device=device).to(dtype)
        self.wq = (1 + 0.1 * torch.randn(self.qw_full, generator=g, device=device)).to(dtype)
        self.wk = (1 + 0.1 * torch.randn(self.kw_full, generator=g, device=device)).to(dtype)
        self.qc = slice(rank * self.ql, (rank + 1) * self.ql)
        self.kc = slice(rank * self.kl, (rank + 1) * self.kl)
        # this rank's packed shard [T, ql + 2 kl]: Q and K as strided column slices, V zero
        self.qkv, self.q, self.k, _ = packed_qkv(self.fq[:, self.qc], self.fk[:, self.kc])
        self.qw, self.kw = self.wq[self.qc].contiguous(), self.wk[self.kc].contiguous()
        self.sums = torch.zeros(2 * t, dtype=torch.float64, device=device)  # the op all-reduces fp64 row sums
        self.itemsize = self.q.element_size()

    # ----------------------------------------------------------------- implementations
    def ours(self):
        return qk_rms_norm_tp(self.q, self.k, self.qw, self.kw, EPS, q_out=self.q, k_out=self.k)

    def allgather(self):
        qf = qknorm.rms_norm(gather_last_dim(self.q, self.tp), self.wq, EPS)
        kf = qknorm.rms_norm(gather_last_dim(self.k, self.tp), self.wk, EPS)
        return qf[:, self.qc], kf[:, self.kc]

    def allgather_1(self):
        both = gather_last_dim(self.qkv[:, :self.ql + self.kl], self.tp)  # [T, tp*(ql+kl)]
        both = both.view(self.t, self.tp, self.ql + self.kl)
        qf = qknorm.rms_norm(both[:, :, :self.ql].reshape(self.t, self.qw_full), self.wq, EPS)
        kf = qknorm.rms_norm(both[:, :, self.ql:].reshape(self.t, self.kw_full), self.wk, EPS)
        return qf[:, self.qc], kf[:, self.kc]

    def comm_ours(self):
        dist.all_reduce(self.sums)

    def comm_allgather(self):
        gather_last_dim(self.q, self.tp)
        gather_last_dim(self.k, self.tp)

    # ----------------------------------------------------------------- bytes
    def bytes(self, impl):
        tp = self.tp
        if impl in ("ours", "comm-ours"):
            payload = 8 * 2 * self.t  # fp64 row sums of Q and K
            return payload, int(2 * (tp - 1) / tp * payload)
        payload = self.itemsize * self.t * (self.ql + self.kl)
        return payload, (tp - 1) * payload

    # ----------------------------------------------------------------- correctness
    def check(self) -> dict[str, tuple[float, str]]:
        """Per checked implementation, ``(worst relative L2 error on this rank, reason if the
        outputs do not even match in count or shape)`` against the fp32 full-width reference.
        The packed buffer is restored after each (``ours`` works in place)."""
        ref = (rms_norm_ref(self.fq, self.wq, EPS)[:, self.qc], rms_norm_ref(self.fk, self.wk, EPS)[:, self.kc])
        saved = self.qkv.clone()
        out = {}
        for name in CHECKED:
            out[name] = worst_error(self.impls()[name](), ref)
            self.qkv.copy_(saved)
        return out

    def impls(self) -> dict:
        return {"ours": self.ours, "allgather": self.allgather, "allgather-1": self.allgather_1,
                "comm-ours": self.comm_ours, "comm-allgather": self.comm_allgather}


def slowest(v: float, device) -> float:
    t = torch.tensor([v], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    z = torch.zeros(1, device=device)
    dist.all_reduce(z)  # line the ranks up
    if device.type == "cuda":
        torch.cuda.synchronize(device)


IMPLS = ("ours", "allgather", "allgather-1", "comm-ours", "comm-allgather")
CHECKED = ("allgather", "allgather-1", "ours")  # the norms; the collectives alone are not checked
FAMILY = {"ours": "qknorm", "allgather": "peer", "allgather-1": "peer", "comm-ours": "comm", "comm-allgather": "comm"}
NOTES = {"ours": "qk_rms_norm_tp in place on the packed shard: row sums, one all-reduce of 2T fp64, scale",
         "allgather": "vLLM's Olmo2Attention: all-gather Q, all-gather K, full-width qknorm.rms_norm, own slice",
         "allgather-1": "Q and K packed into one all-gather, full-width qknorm.rms_norm, own slice",
         "comm-ours": "the all-reduce of ours alone", "comm-allgather": "the two all-gathers alone"}
TP_COLUMNS = ("model", "tp", "q_width", "k_width", "payload_bytes_per_rank", "ring_bytes_sent_per_rank",
              "speedup_vs_allgather", "device")


def time_impl(fn, mode: str, device, calls: int, trials: int) -> float:
    """Per-call µs of ``fn`` on this rank by the bench's timers: ``calls`` calls per timed batch
    (eager) or per captured graph (graph), median of ``trials``, the ranks lined up before each."""
    barrier = lambda: sync(device)  # noqa: E731
    if mode == "graph":
        return time_graph([fn], replays=trials, calls=calls, before=barrier)
    return time_eager([fn], device.type == "cuda", batches=trials, calls=calls, before=barrier)


def _row(shard: Shard, model: str, mode: str, impl: str, dtype: str, device_name: str, **kw) -> dict:
    s = shard
    r = dict.fromkeys(tuple(COLUMNS) + TP_COLUMNS, "")
    r.update(preset="tp", op="qk_full", group=f"qk_full tp={s.tp} {model} Q={s.qw_full} K={s.kw_full} {dtype}",
             shape=f"T={s.t} Q=[{s.t}, {s.ql}], K=[{s.t}, {s.kl}] of qkv[{s.t}, {s.ql + 2 * s.kl}] per rank",
             tokens=s.t, hq=MODELS[model][0], hkv=MODELS[model][1], head_dim=MODELS[model][2], dtype=dtype,
             impl=impl, family=FAMILY[impl], mode=mode, l2="warm", notes=NOTES[impl], model=model, tp=s.tp,
             q_width=s.qw_full, k_width=s.kw_full, device=device_name)
    r["payload_bytes_per_rank"], r["ring_bytes_sent_per_rank"] = s.bytes(impl)
    r.update(kw)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="olmo2-7b", choices=sorted(MODELS) + ["all"])
    ap.add_argument("--tokens", type=int, nargs="+", default=None)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--modes", nargs="+", default=None, choices=["graph", "eager"])
    ap.add_argument("--inner", type=int, default=10, help="calls per timed replay or batch = inner x reps")
    ap.add_argument("--reps", type=int, default=20, help="calls per timed replay or batch = inner x reps")
    ap.add_argument("--trials", type=int, default=7, help="timed replays or batches (the median is reported)")
    ap.add_argument("--out", default=None, help="CSV path (rank 0 writes, row by row)")
    ap.add_argument("--append", action="store_true", help="add rows to an existing --out CSV of the same columns "
                                                          "(default: a new file)")
    args = ap.parse_args(argv)
    if args.inner < 1 or args.reps < 1 or args.trials < 1:
        ap.error("--inner, --reps and --trials must be >= 1")
    if args.tokens and min(args.tokens) < 1:
        ap.error(f"argument --tokens: token counts must be >= 1, got {args.tokens}")

    gpu = torch.cuda.is_available()
    if gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, tp = dist.get_rank(), dist.get_world_size()
    tokens = args.tokens or (TOKENS if gpu else [1, 16, 64])
    modes = args.modes or (["graph", "eager"] if gpu else ["eager"])
    if "graph" in modes and not gpu:
        log("no CUDA: graph mode skipped")
        modes = [m for m in modes if m != "graph"]
    dtype = DTYPES[args.dtype]
    models = sorted(MODELS) if args.model == "all" else [args.model]
    calls = args.inner * args.reps
    device_name = torch.cuda.get_device_name(device) if gpu else "cpu"

    env = (f"torch {torch.__version__}, triton {triton_version()}, tp={tp}, backend "
           f"{dist.get_backend()}, qknorm backend {qknorm.get_backend()}")
    if gpu:
        env += f", {device_name}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
    else:
        env += ", CPU (gloo): smoke test only, timings are not GPU numbers"
    log(env)

    sink = None
    if rank == 0 and args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        sink = CsvSink(args.out, fieldnames=COLUMNS + TP_COLUMNS, append=args.append)
    rows, wrong = [], False
    status = "complete"

    def emit(row):
        """One measured row: kept in ``rows`` and on disk (flushed) at once."""
        rows.append(row)
        if sink:
            sink(row)

    try:
        for model in models:
            for t in tokens:
                wrong |= _run_point(model, t, dtype, device, rank, tp, modes, calls, args, device_name, emit)
                if gpu:
                    torch.cuda.empty_cache()
    except KeyboardInterrupt:
        status = "interrupted"
        log(f"\ninterrupted; the {len(rows)} rows measured are kept" + (f" in {args.out}" if args.out else ""))
    except BaseException:
        if sink:
            sink.close()
            sink = None
        if rank == 0:
            print(f"crashed; the {len(rows)} rows measured are kept" + (f" in {args.out}" if args.out else ""),
                  file=sys.stderr, flush=True)
        _destroy()
        raise
    finally:
        if sink:
            sink.close()
    if rank == 0:
        _print_table(rows, models, tokens, modes, speedups=gpu)
        if args.out:
            print(f"wrote {args.out} ({len(rows)} rows)")
    _destroy()
    if status != "complete":
        return 130
    return 1 if wrong else 0


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _run_point(model, t, dtype, device, rank, tp, modes, calls, args, device_name, emit) -> bool:
    """Check and time every implementation at one (model, T); each row goes to ``emit`` as
    soon as it is measured. Returns whether a norm failed the check."""
    wrong = False
    shard = Shard(model, t, dtype, device, rank, tp)
    checked = {}
    for name, (err, why) in shard.check().items():
        err = slowest(err, device)  # the worst rank's error
        checked[name] = Verdict(False, err, why) if why else verdict(err, dtype)
    log(f"{model} T={t}: rel. L2 error vs full-width fp32 reference (worst rank) "
        + ", ".join(f"{k} {v.error:.2e}" for k, v in checked.items()))
    fns = shard.impls()
    for mode in modes:
        res = {}
        # allgather first: the speedup of the others over it is known when their row is written
        for impl in ("allgather",) + tuple(i for i in IMPLS if i != "allgather"):
            v = checked.get(impl)
            err = "" if v is None else ("inf" if math.isinf(v.error) else f"{v.error:.3e}")
            if v is not None and not v.ok:
                wrong = True
                log(f"  {impl}: WRONG ({v.reason}); not timed")
                emit(_row(shard, model, mode, impl, args.dtype, device_name, status="wrong", rel_err=err,
                          reason=v.reason))
                continue
            try:
                us = slowest(time_impl(fns[impl], mode, device, calls, args.trials), device)
            except Exception as e:  # noqa: BLE001 - e.g. capture not supported: report, go on
                log(f"  {impl} {mode}: failed: {type(e).__name__}: {e}")
                emit(_row(shard, model, mode, impl, args.dtype, device_name, status="error", rel_err=err,
                          reason=f"{type(e).__name__}: {e}"[:300]))
                continue
            res[impl] = us
            row = _row(shard, model, mode, impl, args.dtype, device_name, status="ok", us=f"{us:.3f}", rel_err=err)
            if impl in ("ours", "allgather-1") and "allgather" in res and device.type == "cuda":  # (CPU: no ratios)
                row["speedup_vs_allgather"] = f"{res['allgather'] / us:.3f}"
            emit(row)
    return wrong


def _print_table(rows, models, tokens, modes, speedups: bool = True) -> None:
    """The console table; ``speedups=False`` (a CPU smoke test) leaves the ratios out."""
    hdr = f"{'model':10} {'T':>6} {'mode':6} " + " ".join(f"{i:>14}" for i in IMPLS) + \
        (f" {'speedup':>8}" if speedups else "") + f" {'bytes ours':>11} {'bytes AG':>11} {'ratio':>7}"
    print("\nus per call (slowest rank)" + ("; speedup = allgather / ours" if speedups else
                                         " on the CPU: a smoke test, not a comparison (no speedups)")
          + "; bytes = ring bytes sent per rank")
    print(hdr)
    for model in models:
        for t in tokens:
            for mode in modes:
                r = {x["impl"]: x for x in rows if x["model"] == model and x["tokens"] == t and x["mode"] == mode}
                if not r:
                    continue
                bo = r["ours"]["ring_bytes_sent_per_rank"] if "ours" in r else 0
                ba = r["allgather"]["ring_bytes_sent_per_rank"] if "allgather" in r else 0
                cells = " ".join((f"{float(r[i]['us']):>14.2f}" if r[i]["us"] else f"{r[i]['status']:>14}")
                                 if i in r else f"{'-':>14}" for i in IMPLS)
                sp = r["ours"]["speedup_vs_allgather"] if "ours" in r else ""
                ratio = f"{ba / bo:>6.0f}x" if bo else f"{'-':>7}"
                print(f"{model:10} {t:>6} {mode:6} {cells}"
                      + (f" {(float(sp) if sp else math.nan):>7.2f}x" if speedups else "")
                      + f" {bo:>11} {ba:>11} {ratio}")


def launch(nproc: int, tokens=None, dtype: str = "bf16", out_csv: str | None = None, model: str = "olmo2-7b",
           modes=None, append: bool = False, cpu: bool = False) -> int:
    """Start ``nproc`` ranks of this benchmark with ``torch.distributed.run`` (NCCL on GPUs,
    gloo on the CPU; ``cpu`` hides the GPUs from the ranks) and wait for them; returns their
    exit status. ``append``: add rows to ``out_csv``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "qknorm.bench.tp", "--model", model, "--dtype", dtype]
    if tokens:
        cmd += ["--tokens", *map(str, tokens)]
    if out_csv:
        cmd += ["--out", out_csv]
    if modes:
        cmd += ["--modes", *modes]
    if append:
        cmd.append("--append")
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    print("qknorm bench --preset tp: " + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
