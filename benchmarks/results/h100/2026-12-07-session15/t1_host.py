"""Host cost of the in-place QK and RMSNorm express calls at T=1 and T=16, launch stubbed (CPU tensors, the C
module's test launch a no-op), 7 rounds of 20,000 calls: PYTHONPATH=src python benchmarks/results/h100/2026-12-07-session15/t1_host.py"""
import os, time, statistics
os.environ["TRITON_INTERPRET"] = "1"
import torch, qknorm
from qknorm import native
from qknorm.ops import _plan, _express
qknorm.set_backend("triton")
_plan.FAST_ON_CPU = True
assert _express.set_test_launch(True)
HQ, HK, D = 32, 8, 128
cases = {}
for T in (1, 16):
    qkv = torch.randn(T, (HQ + 2 * HK) * D, dtype=torch.bfloat16)
    q, k = qkv[:, :HQ * D].view(T, HQ, D), qkv[:, HQ * D:(HQ + HK) * D].view(T, HK, D)
    qw, kw = torch.randn(D, dtype=torch.bfloat16), torch.randn(D, dtype=torch.bfloat16)
    cases[f"qk T={T}"] = (lambda q=q, k=k, qw=qw, kw=kw: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k))
    x = torch.randn(T, 4096, dtype=torch.bfloat16); w = torch.randn(4096, dtype=torch.bfloat16)
    cases[f"rms T={T}"] = (lambda x=x, w=w: qknorm.rms_norm(x, w, out=x))
for fn in cases.values():
    for _ in range(4): fn()
m = native.launch_module()
m.set_test_launch(lambda rec, values, tensors: True)
_express.hits.clear()
res = {}
for rnd in range(7):
    for name, fn in cases.items():
        n = 20000; t0 = time.perf_counter()
        for _ in range(n): fn()
        res.setdefault(name, []).append((time.perf_counter() - t0) / n * 1e6)
for name, v in res.items():
    print(f"{name:10s} median {statistics.median(v):.3f} us  min {min(v):.3f}")
print("express hits", dict(_express.hits) if hasattr(_express, "hits") else None)
