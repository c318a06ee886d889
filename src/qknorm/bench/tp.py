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

Modes: ``graph`` = CUDA-graph replay (``--inner`` calls captured in one graph, median of
``--trials`` timings of ``--reps`` replays; the NCCL communicator is initialised by the
eager warm-up before capture), ``eager`` = back-to-back calls, wall clock (includes host
cost). Without CUDA it runs on gloo/CPU, eager only, as a smoke test (numbers meaningless)::

    qknorm bench --preset tp --tokens 1,64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

import qknorm
from qknorm.distributed import qk_rms_norm_tp
from qknorm.reference import rms_norm_ref

from .common import DTYPES, TOL, packed_qkv, rel_l2
from .report import CsvSink

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


class Case:
    """One rank's shard of the full Q, K (and V) for ``t`` tokens, in a packed local buffer."""

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
        return qk_rms_norm_tp(self.q, self.k, self.qw, self.kw, 1e-6, q_out=self.q, k_out=self.k)

    def allgather(self):
        qf = qknorm.rms_norm(gather_last_dim(self.q, self.tp), self.wq, 1e-6)
        kf = qknorm.rms_norm(gather_last_dim(self.k, self.tp), self.wk, 1e-6)
        return qf[:, self.qc], kf[:, self.kc]

    def allgather_1(self):
        both = gather_last_dim(self.qkv[:, :self.ql + self.kl], self.tp)  # [T, tp*(ql+kl)]
        both = both.view(self.t, self.tp, self.ql + self.kl)
        qf = qknorm.rms_norm(both[:, :, :self.ql].reshape(self.t, self.qw_full), self.wq, 1e-6)
        kf = qknorm.rms_norm(both[:, :, self.ql:].reshape(self.t, self.kw_full), self.wk, 1e-6)
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
    def check(self):
        ref_q = rms_norm_ref(self.fq, self.wq)[:, self.qc]
        ref_k = rms_norm_ref(self.fk, self.wk)[:, self.kc]
        saved = self.qkv.clone()
        errs = {}
        for name, fn in (("allgather", self.allgather), ("allgather-1", self.allgather_1), ("ours", self.ours)):
            q, k = fn()
            errs[name] = max(rel_l2(q, ref_q), rel_l2(k, ref_k))
        self.qkv.copy_(saved)
        return errs


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


# The two timers below are the bench's (timing.time_eager / time_graph) with the ranks lined up
# (an all-reduce barrier) before every trial: a collective's time on one rank otherwise
# includes waiting for the slowest rank to arrive.
def time_eager(fn, device, calls, trials):
    for _ in range(3):
        fn()
    res = []
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        res.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(res)


def time_graph(fn, device, inner, reps, trials):
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()  # compiles kernels, creates the NCCL communicator before capture
    torch.cuda.current_stream(device).wait_stream(s)
    sync(device)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    for _ in range(3):
        g.replay()
    res = []
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(trials):
        sync(device)
        e0.record()
        for _ in range(reps):
            g.replay()
        e1.record()
        e1.synchronize()
        res.append(e0.elapsed_time(e1) * 1e3 / (reps * inner))
    del g
    return statistics.median(res)


IMPLS = ("ours", "allgather", "allgather-1", "comm-ours", "comm-allgather")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="olmo2-7b", choices=sorted(MODELS) + ["all"])
    ap.add_argument("--tokens", type=int, nargs="+", default=None)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--modes", nargs="+", default=None, choices=["graph", "eager"])
    ap.add_argument("--inner", type=int, default=10, help="calls captured per CUDA graph")
    ap.add_argument("--reps", type=int, default=20, help="graph replays (or eager calls x inner) per trial")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--out", default=None, help="CSV path (rank 0 writes)")
    args = ap.parse_args()

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

    import triton
    env = (f"torch {torch.__version__}, triton {triton.__version__}, tp={tp}, backend "
           f"{dist.get_backend()}, qknorm backend {qknorm.get_backend()}")
    if gpu:
        env += f", {torch.cuda.get_device_name(device)}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
    else:
        env += ", CPU (gloo): smoke test only, timings are not GPU numbers"
    log(env)

    rows = []
    for model in models:
        for t in tokens:
            case = Case(model, t, dtype, device, rank, tp)
            errs = case.check()
            worst = {k: slowest(v, device) for k, v in errs.items()}
            tol = TOL[dtype]
            bad = {k: v for k, v in worst.items() if not v < tol}
            log(f"{model} T={t}: rel. L2 error vs full-width fp32 reference "
                + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
            if bad:
                log(f"WRONG RESULTS ({bad}); not timing")
                dist.destroy_process_group()
                sys.exit(1)
            fns = {"ours": case.ours, "allgather": case.allgather, "allgather-1": case.allgather_1,
                   "comm-ours": case.comm_ours, "comm-allgather": case.comm_allgather}
            for mode in modes:
                res = {}
                for impl in IMPLS:
                    try:
                        if mode == "graph":
                            us = time_graph(fns[impl], device, args.inner, args.reps, args.trials)
                        else:
                            us = time_eager(fns[impl], device, args.reps * args.inner, args.trials)
                        us = slowest(us, device)
                    except Exception as e:  # noqa: BLE001 - e.g. capture not supported: report, go on
                        log(f"  {impl} {mode}: failed: {type(e).__name__}: {e}")
                        us = float("nan")
                    res[impl] = us
                for impl in IMPLS:
                    payload, ring = case.bytes(impl)
                    rows.append(dict(model=model, tokens=t, impl=impl, mode=mode, dtype=args.dtype, tp=tp,
                                     q_width=case.qw_full, k_width=case.kw_full, us_per_call=round(res[impl], 3),
                                     payload_bytes_per_rank=payload, ring_bytes_sent_per_rank=ring,
                                     speedup_vs_allgather=round(res["allgather"] / res[impl], 3)
                                     if impl in ("ours", "allgather-1") else "",
                                     device=torch.cuda.get_device_name(device) if gpu else "cpu"))
            del case
            if gpu:
                torch.cuda.empty_cache()

    if rank == 0:
        hdr = f"{'model':10} {'T':>6} {'mode':6} " + " ".join(f"{i:>14}" for i in IMPLS) + \
            f" {'speedup':>8} {'bytes ours':>11} {'bytes AG':>11} {'ratio':>7}"
        print("\nus per call (slowest rank); bytes = ring bytes sent per rank")
        print(hdr)
        for model in models:
            for t in tokens:
                for mode in modes:
                    r = {x["impl"]: x for x in rows if x["model"] == model and x["tokens"] == t and x["mode"] == mode}
                    if not r:
                        continue
                    bo, ba = r["ours"]["ring_bytes_sent_per_rank"], r["allgather"]["ring_bytes_sent_per_rank"]
                    print(f"{model:10} {t:>6} {mode:6} " + " ".join(f"{r[i]['us_per_call']:>14.2f}" for i in IMPLS)
                          + f" {r['ours']['speedup_vs_allgather']:>7.2f}x {bo:>11} {ba:>11} {ba / bo:>6.0f}x")
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            sink = CsvSink(args.out, fieldnames=list(rows[0]))
            for r in rows:
                sink(r)
            sink.close()
            print(f"wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()


def launch(nproc: int, tokens=None, dtype: str = "bf16", out_csv: str | None = None, model: str = "olmo2-7b") -> int:
    """Start ``nproc`` ranks of this benchmark with ``torch.distributed.run`` (NCCL on GPUs,
    gloo on the CPU) and wait for them; returns their exit status."""
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "qknorm.bench.tp", "--model", model, "--dtype", dtype]
    if tokens:
        cmd += ["--tokens", *map(str, tokens)]
    if out_csv:
        cmd += ["--out", out_csv]
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    print("qknorm bench --preset tp: " + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, env=env)
