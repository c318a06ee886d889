"""Python cost of one eager fast call, without a GPU: CPU tensors take the fast path (ops._plan.FAST_ON_CPU),
the first calls run the kernels in the Triton interpreter, then every launch entry is replaced by a no-op
"go" so the timing is the host code before the launch (key, plan lookup, checks, run_plan). Qwen3-8B shapes,
bf16, T=16, torch.inference_mode; best of 7 batches of 20000 calls (µs per call).

Usage (repository root): PYTHONPATH=src python benchmarks/results/cpu/2026-12-01-host-python/host_python.py
"""
import os, sys, time, statistics
os.environ["TRITON_INTERPRET"] = "1"
import torch
import qknorm
from qknorm import launch
from qknorm.ops import _plan as plans
plans.FAST_ON_CPU = True
plans.cpu_positions_ok = lambda p, c: True
launch._init()
launch._current_device = lambda: -1
launch._raw_stream = lambda d: 0
calls = []
def noop(grid, stream, args):
    pass
def install():
    for kl in launch._launchers:
        for spec, ents in kl.specs.items():
            for i in range(len(ents)):
                e = launch._Entry(); e.state = launch.FAST; e.go = noop; ents[i] = e
def per_call(fn, n=20000, reps=7):
    for _ in range(2000): fn()
    r = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        r.append((time.perf_counter() - t0) / n * 1e6)
    return min(r)
torch.manual_seed(0)
T, HQ, HKV, D, H = 16, 32, 8, 128, 4096
dt = torch.bfloat16
qkv = torch.randn(T, (HQ + 2*HKV)*D, dtype=dt)
q = qkv[:, :HQ*D].view(T, HQ, D); k = qkv[:, HQ*D:(HQ+HKV)*D].view(T, HKV, D)
qw = torch.randn(D, dtype=dt); kw = torch.randn(D, dtype=dt)
x = torch.randn(T, H, dt and dt) if False else torch.randn(T, H, dtype=dt)
w = torch.randn(H, dtype=dt); r = torch.randn(T, H, dtype=dt); o = torch.empty_like(x)
cs = torch.randn(4096, D, dtype=torch.float32); pos = torch.arange(T)
cases = {
 "rms out=": lambda: qknorm.rms_norm(x, w, 1e-6, out=o),
 "rms new": lambda: qknorm.rms_norm(x, w, 1e-6),
 "rms inplace": lambda: qknorm.rms_norm(x, w, 1e-6, out=x),
 "fused add": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6),
 "qk inplace": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k),
 "qk new": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6),
 "rope inplace": lambda: qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-6, q_out=q, k_out=k),
}
with torch.inference_mode():
    for f in cases.values(): f(); f()
    install()
    res = {}
    for name, f in cases.items():
        res[name] = per_call(f)
    floors = {"empty_like": lambda: torch.empty_like(x), "x.stride()": lambda: x.stride(), "x.shape": lambda: x.shape,
              "data_ptr": lambda: x.data_ptr(), "is_compiling": torch.compiler.is_compiling, "noop": lambda: None,
              "get_device": lambda: x.get_device(), "is_neg": lambda: x.is_neg(), "requires_grad": lambda: x.requires_grad,
              "is_cuda": lambda: x.is_cuda}
    for name, f in floors.items():
        res["floor " + name] = per_call(f)
for k_, v in res.items():
    print(f"{k_:24s} {v:6.3f} us")
