"""hostprof.py: where an eager call's microseconds go, T = 1 (Qwen3-8B: QK norm of the packed QKV buffer's
[1, 32|8, 128] views in place; RMSNorm of [1, 4096] into a preallocated output), bf16, on the current GPU.

Per call (µs; 9 interleaved rounds of 4000 back-to-back calls, min and median over rounds; a synchronize only
around each round, so a host-bound call measures its host cost): qknorm's public call (the express C call),
the same with the express call off (the Python fast call), the launch alone (``launch_from`` replaying the
record and pointers that call launched), the express call's key alone (``native`` ``key``), SGLang's JIT
kernel call where importable, and two references: an empty Python call and ``torch.Tensor.zero_`` on a
16-element tensor (one PyTorch eager launch)."""
import statistics
import sys
import time

import torch

import qknorm
from qknorm import launch, native
from qknorm.ops import _express

dev = "cuda"
T, HQ, HK, D, HID = 1, 32, 8, 128, 4096
g = torch.Generator(device=dev).manual_seed(0)
qkv = torch.randn(T, (HQ + 2 * HK) * D, device=dev, dtype=torch.bfloat16, generator=g)
q = qkv[:, :HQ * D].view(T, HQ, D)
k = qkv[:, HQ * D:(HQ + HK) * D].view(T, HK, D)
qw = torch.randn(D, device=dev, dtype=torch.bfloat16, generator=g)
kw = torch.randn(D, device=dev, dtype=torch.bfloat16, generator=g)
x = torch.randn(T, HID, device=dev, dtype=torch.bfloat16, generator=g)
w = torch.randn(HID, device=dev, dtype=torch.bfloat16, generator=g)
out = torch.empty_like(x)
small = torch.empty(16, device=dev)
eps = 1e-6

fns = {}
fns["qk express"] = lambda: qknorm.qk_rms_norm(q, k, qw, kw, eps, q_out=q, k_out=k)
fns["rms express"] = lambda: qknorm.rms_norm(x, w, eps, out=out)


def python_fast(f):
    def run():
        _express.set_enabled(False)
        try:
            f()
        finally:
            _express.set_enabled(True)
    return run


# the launch alone: capture what the Python fast call hands launch_from, then replay it
captured = {}
for name, f in (("qk", fns["qk express"]), ("rms", fns["rms express"])):
    _express.set_enabled(False)
    for _ in range(3):
        f()
    real = launch._launch_from
    seen = []
    launch._launch_from = lambda rec, *head, _r=real, _s=seen: (_s.append((rec, head)), _r(rec, *head))[1]
    f()
    launch._launch_from = real
    _express.set_enabled(True)
    for _ in range(3):
        f()
    if seen:
        captured[name] = seen[-1]
m = native.launch_module()
for name, (rec, head) in captured.items():
    fns[f"{name} launch_from only"] = (lambda r=rec, h=head: m.launch_from(r, *h))
    print(f"{name}: {len(head)} per-call args", flush=True)
fns["qk key only"] = lambda: m.key(_express.QK, q, k, qw, kw, q, k, eps, 0.0, None)
fns["empty python call"] = lambda: None
fns["torch zero_ (16 el)"] = small.zero_


def off_timer(f):
    def loop(n):
        _express.set_enabled(False)
        for _ in range(n):
            f()
        _express.set_enabled(True)
    return loop


loops = {name: (lambda n, f=f: [f() for _ in range(n)]) for name, f in fns.items()}
loops["qk python fast call"] = off_timer(fns["qk express"])
loops["rms python fast call"] = off_timer(fns["rms express"])
try:
    sys.path.insert(0, "/tmp/peers")
    from sglang.jit_kernel import norm as sg
    sg.fused_inplace_qknorm(q, k, qw, kw, eps, head_dim=D)
    sg.rmsnorm(x, w, out=out, eps=eps)
    loops["qk sglang"] = lambda n: [sg.fused_inplace_qknorm(q, k, qw, kw, eps, head_dim=D) for _ in range(n)]
    loops["rms sglang"] = lambda n: [sg.rmsnorm(x, w, out=out, eps=eps) for _ in range(n)]
except Exception as exc:  # noqa: BLE001
    print("sglang:", type(exc).__name__, str(exc)[:200])
print("express hits before:", m.launches(), flush=True)
N = 4000
res = {name: [] for name in loops}
for rnd in range(9):
    for name, loop in loops.items():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loop(N)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        res[name].append((t1 - t0) / N * 1e6)
print("express launches after:", m.launches())
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
print(f"{'call':28s} {'min us':>8s} {'median us':>10s}")
for name, v in res.items():
    print(f"{name:28s} {min(v):8.2f} {statistics.median(v):10.2f}")
