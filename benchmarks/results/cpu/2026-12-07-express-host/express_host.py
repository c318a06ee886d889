"""Host cost of an express (C) call per op, launch stubbed (CPU tensors, the C module's test launch replaced by a
no-op after the entries are registered): what the eager call costs before cuLaunchKernelEx."""
import os, sys, time, statistics
os.environ["TRITON_INTERPRET"] = "1"
import torch, qknorm
from qknorm import native
from qknorm.ops import _plan, _express
qknorm.set_backend("triton")
_plan.FAST_ON_CPU = True
assert _express.set_test_launch(True)
g = torch.Generator().manual_seed(0)
H, HQ, HK, D = 4096, 32, 8, 128
x = torch.randn(1, H, dtype=torch.bfloat16); w = torch.randn(H, dtype=torch.bfloat16); r = torch.randn(1, H, dtype=torch.bfloat16)
qkv = torch.randn(1, (HQ + 2 * HK) * D, dtype=torch.bfloat16)
q, k = qkv[:, :HQ * D].view(1, HQ, D), qkv[:, HQ * D:(HQ + HK) * D].view(1, HK, D)
qw, kw = torch.randn(D, dtype=torch.bfloat16), torch.randn(D, dtype=torch.bfloat16)
cs = torch.randn(64, D); pos = torch.tensor([3])
cases = {
    "rms_norm in place": lambda: qknorm.rms_norm(x, w, out=x),
    "rms_norm new": lambda: qknorm.rms_norm(x, w),
    "fused_add": lambda: qknorm.fused_add_rms_norm(x, r, w),
    "qk in place": lambda: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k),
    "qk rope in place": lambda: qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, q_out=q, k_out=k),
}
for name, fn in cases.items():
    for _ in range(4):
        fn()  # plan, then the express entry
m = native.launch_module()
m.set_test_launch(lambda rec, values, tensors: True)  # the launch: nothing
_express.hits.clear()
res = {}
for rnd in range(7):
    for name, fn in cases.items():
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        res.setdefault(name, []).append((time.perf_counter() - t0) / n * 1e6)
empty = []
for rnd in range(7):
    t0 = time.perf_counter()
    for _ in range(20000):
        pass
    empty.append((time.perf_counter() - t0) / 20000 * 1e6)
for name, v in res.items():
    print(f"{name:20s} median {statistics.median(v):.3f} us  min {min(v):.3f}")
print("empty loop", f"{statistics.median(empty):.3f}")
print("python fallback hits (should be 0 if express):", len(_express.hits), _express.errors[:2])
