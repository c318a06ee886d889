"""CPU proxy of the eager host cost at T = 1/16/64 (express call, launch stubbed; the session-4 method).
    python express_proxy_t.py"""
import os, time
os.environ["TRITON_INTERPRET"] = "1"
import torch
import qknorm
from qknorm import native
from qknorm.ops import _express, _plan
_plan.FAST_ON_CPU = True
dt = torch.bfloat16
def per_call(fn, n=5000, b=5):
    for _ in range(200): fn()
    rs = []
    for _ in range(b):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        rs.append((time.perf_counter() - t0) / n * 1e6)
    return min(rs)
_express.set_test_launch(True)
m = native.launch_module()
with qknorm.use_backend("triton"), torch.inference_mode():
    for (HQ, HKV, D, HID) in ((32, 8, 128, 4096), (16, 2, 256, 2048)):
        for T in (1, 16, 64):
            x, w, r = torch.randn(T, HID, dtype=dt), torch.randn(HID, dtype=dt), torch.randn(T, HID, dtype=dt)
            o = torch.empty_like(x)
            qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dt)
            q, k = qkv[:, :HQ * D].view(T, HQ, D), qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
            qw, kw = torch.randn(D, dtype=dt), torch.randn(D, dtype=dt)
            cases = {"rms_out": lambda: qknorm.rms_norm(x, w, 1e-6, out=o),
                     "fused_add": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6),
                     "qk_inplace": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)}
            res = []
            for name, fn in cases.items():
                m.set_test_launch(_express._test_launch)
                fn(), fn(), fn()
                m.set_test_launch(slice)
                res.append(f"{name} {per_call(fn):.2f}")
            print(f"D={D} T={T}: " + ", ".join(res), flush=True)
