"""Where the microseconds of one eager qknorm call go (H200 host), op by op. Works on the tree
before the ops/ rewrite (launches through ``launch.run``), after it (``launch.run_plan``) and with
the compiled launch (``launch.launch_plan``).

Usage:  PYTHONPATH=$PWD/src python profile_host.py OUTDIR [--grad]

Per op (Qwen3-8B shapes, bf16, T = 1, 16, 64, inference_mode; ``--grad``: grad mode on, as
``qknorm bench --mode eager`` runs):
  total    public call, back-to-back, sync at the end of each batch (median per call); with the
           express call (``native.call``) where the tree has it
  total_python_path  the same with the express call off (the Python fast call); the columns below too
  python   the same with the launch function replaced by a no-op (host code before the launch)
  run      the launch function with one call's recorded arguments (our launch wrapper + C launcher)
  go       the verified entry's go() alone (Triton's C launcher)
  static   torch's Inductor static CUDA launcher on the same compiled kernel, if available
Floors: x.mul_(1.0), torch.empty_like, stream/device getters. cProfile of 20000 calls. With SGLang's JIT kernels
importable (``PYTHONPATH`` holding the bundle ``shared/device/stage_peers.sh`` makes), their eager call on the
same shapes (``sglang_*`` rows, total only).
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch

import qknorm
from qknorm import launch

try:
    from qknorm.ops import _express
except ImportError:  # a tree before the express call
    _express = None

_p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
_p.add_argument("outdir", nargs="?", default=".", help="where the JSON goes (default: here)")
_p.add_argument("--grad", action="store_true", help="grad mode on (as qknorm bench --mode eager runs)")
_a = _p.parse_args()
if not torch.cuda.is_available():
    sys.exit("profile_host.py: needs a CUDA GPU (it times eager launches)")
GRAD, OUT = _a.grad, _a.outdir
os.makedirs(OUT, exist_ok=True)
dev = torch.device("cuda")
HQ, HKV, D, HID = 32, 8, 128, 4096
res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
import triton
res["triton"] = triton.__version__
lines = []


def log(s):
    print(s, flush=True)
    lines.append(s)


def per_call(fn, calls=2000, batches=7, warm=200):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    r = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        r.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(r)


def inputs(t):
    """Fresh Qwen3-8B-shaped inputs for T tokens: q, k views of a packed QKV buffer, weights, x, residual."""
    qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=dev, dtype=torch.bfloat16)
    return (qkv[:, :HQ * D].view(t, HQ, D), qkv[:, HQ * D:(HQ + HKV) * D].view(t, HKV, D),
            torch.rand(D, device=dev, dtype=torch.bfloat16), torch.rand(D, device=dev, dtype=torch.bfloat16),
            torch.randn(t, HID, device=dev, dtype=torch.bfloat16),
            torch.randn(t, HID, device=dev, dtype=torch.bfloat16), torch.rand(HID, device=dev, dtype=torch.bfloat16))


def cases(t):
    q, k, qw, kw, x, r, w = inputs(t)
    cache = torch.randn(4096, D, device=dev, dtype=torch.float32)
    pos = torch.arange(t, device=dev, dtype=torch.int64)
    return {
        "rms_norm": lambda: qknorm.rms_norm(x, w, 1e-6),
        "rms_norm_inplace": lambda: qknorm.rms_norm(x, w, 1e-6, out=x),
        "fused_add": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6),
        "qk_inplace": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k),
        "qk_alloc": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6),
        "rope_inplace": lambda: qknorm.qk_rms_norm_rope(q, k, qw, kw, cache, pos, 1e-6, q_out=q, k_out=k),
    }


def peer_cases(t):
    """SGLang's JIT kernels on the same shapes (``sglang.jit_kernel.norm``; none when it does not import)."""
    try:
        from sglang.jit_kernel import norm as sg
    except Exception as exc:  # noqa: BLE001 - any import failure: no peer rows
        if t == 1:
            log(f"sglang.jit_kernel.norm: not importable ({type(exc).__name__}: {exc})")
        return {}
    q, k, qw, kw, x, r, w = inputs(t)
    y = torch.empty_like(x)
    return {"sglang_qk_inplace": lambda: sg.fused_inplace_qknorm(q, k, qw, kw, 1e-6, head_dim=D),
            "sglang_rms_norm": lambda: sg.rmsnorm(x, w, out=y, eps=1e-6),
            "sglang_fused_add": lambda: sg.fused_add_rmsnorm(x, r, w, 1e-6)}


LAUNCH = "launch_plan" if hasattr(launch, "launch_plan") else "run_plan" if hasattr(launch, "run_plan") else "run"
real_run = getattr(launch, LAUNCH)
rec = {}


def recording(*a):
    rec["args"] = a
    return real_run(*a)


def noop(*a):
    return None


table = {}
import contextlib  # noqa: E402

with contextlib.nullcontext() if GRAD else torch.inference_mode():
    for t in (1, 16, 64):
        for name, fn in cases(t).items():
            row = {}
            row["total"] = per_call(fn)
            # The rest on the Python fast call: the express call off for this row
            if _express is not None:
                _express.set_enabled(False)
                row["total_python_path"] = per_call(fn)
            setattr(launch, LAUNCH, recording)
            fn()
            setattr(launch, LAUNCH, real_run)
            a = rec["args"]
            setattr(launch, LAUNCH, noop)
            row["python"] = per_call(fn)
            setattr(launch, LAUNCH, real_run)
            row["run"] = per_call(lambda: real_run(*a))
            if LAUNCH == "launch_plan":
                plan, head, tensors = a
                bits = launch.bits_of(head)
                kl, entries, grid, args, device = plan.launcher, plan.entries, plan.grid, head + plan.tail, plan.device
            elif LAUNCH == "run_plan":
                plan, bits, head, tensors = a
                kl, entries, grid, args, device = plan.launcher, plan.entries, plan.grid, head + plan.tail, plan.device
            else:
                kl, entries, bits, grid, args, tensors, kwargs, device = a
            e = entries[bits]
            row["state"] = e.state if e else None
            recs = getattr(plan, "records", None) if LAUNCH != "run" else None
            if recs and recs[bits]:  # the compiled launch alone (alignment bits, record, hooks, launch)
                nl = launch._launch_from
                row["native"] = per_call(lambda: nl(recs, *head))
            if e is not None and e.go is not None:
                go, stream = e.go, launch._raw_stream(device)
                row["go"] = per_call(lambda: go(grid, stream, args))
                if t == 16:
                    try:
                        try:
                            from torch._inductor.runtime.static_cuda_launcher import StaticallyLaunchedCudaKernel
                        except ImportError:
                            from torch._inductor.runtime.static_triton_launcher import StaticallyLaunchedCudaKernel
                        ck = e.ck
                        path = os.path.join(tempfile.mkdtemp(), "k.cubin")
                        with open(path, "wb") as f:
                            f.write(ck.asm["cubin"])
                        ck._cubin_path = path
                        sk = StaticallyLaunchedCudaKernel(ck)
                        sk.load_kernel(torch.cuda.current_device())
                        names = kl.arg_names
                        const = set(getattr(sk, "full_constexprs", []))
                        sargs = tuple(v for i, v in enumerate(args) if i not in const)
                        C = sk.C_impl
                        fnh, nw, sh, tys = sk.function, sk.num_warps, sk.shared, sk.arg_tys
                        extra = tuple(None for h in (sk.has_global_scratch, sk.has_profile_scratch) if h)
                        sargs = sargs + extra
                        tys = tys + "O" * len(extra)
                        row["static_tys"] = tys
                        row["static"] = per_call(lambda: C._launch_kernel(fnh, grid[0], grid[1], grid[2], nw, sh,
                                                                          tys, sargs, stream))
                        row["static_run"] = per_call(lambda: sk.run(grid[0], grid[1], grid[2], stream, *sargs[:len(sargs)-len(extra)]))
                    except Exception as exc:  # noqa: BLE001
                        row["static_err"] = f"{type(exc).__name__}: {exc}"
            if _express is not None:
                _express.set_enabled(True)
            table[f"{name} T={t}"] = row
            log(f"{name:18s} T={t:3d} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in row.items()))
        for name, fn in peer_cases(t).items():  # the same work through SGLang's JIT kernels, when importable
            try:
                table[f"{name} T={t}"] = {"total": per_call(fn)}
            except Exception as exc:  # noqa: BLE001 - a peer's failure is a row, not the end of the run
                log(f"{name:18s} T={t:3d} error {type(exc).__name__}: {exc}")
                continue
            log(f"{name:18s} T={t:3d} total={table[f'{name} T={t}']['total']:.2f}")
    x = torch.randn(16, HID, device=dev, dtype=torch.bfloat16)
    floors = {
        "mul_": per_call(lambda: x.mul_(1.0)),
        "empty_like": per_call(lambda: torch.empty_like(x)),
        "empty": per_call(lambda: torch.empty((16, HID), dtype=torch.bfloat16, device=dev)),
        "raw_stream": per_call(lambda: launch._raw_stream(0)),
        "get_device": per_call(lambda: launch._current_device()),
        "is_compiling": per_call(lambda: torch.compiler.is_compiling()),
    }
    log("floors " + " ".join(f"{k}={v:.3f}" for k, v in floors.items()))
    res["floors"] = floors
    res["table"] = table
    for name in ("qk_inplace", "rms_norm", "rope_inplace"):
        fn = cases(16)[name]
        for _ in range(100):
            fn()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(20000):
            fn()
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
        log(f"==== cProfile {name} T=16, 20000 calls\n" + s.getvalue())
with open(os.path.join(OUT, "profile.json"), "w") as f:
    json.dump(res, f, indent=1)
with open(os.path.join(OUT, "profile.txt"), "w") as f:
    f.write("\n".join(lines))
