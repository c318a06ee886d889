import os, sys, time, statistics
os.environ["TRITON_INTERPRET"] = "1"
import torch, qknorm
from qknorm import launch
from qknorm.ops import _plan
_plan.FAST_ON_CPU = True
T = int(os.environ.get("T", 16))
HQ, HKV, D, HID = 32, 8, 128, 4096
dt = torch.bfloat16
x = torch.randn(T, HID, dtype=dt); w = torch.randn(HID, dtype=dt); r = torch.randn(T, HID, dtype=dt); o = torch.empty_like(x)
qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dt)
q = qkv[:, :HQ * D].view(T, HQ, D); k = qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
qw = torch.randn(D, dtype=dt); kw = torch.randn(D, dtype=dt)
cases = {
 "rms_inplace": lambda: qknorm.rms_norm(x, w, out=x),
 "rms_out": lambda: qknorm.rms_norm(x, w, out=o),
 "fused_add": lambda: qknorm.fused_add_rms_norm(x, r, w),
 "qk_inplace": lambda: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k),
}
def per_call(fn, n=20000, b=7):
    for _ in range(500): fn()
    rs = []
    for _ in range(b):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        rs.append((time.perf_counter() - t0) / n * 1e6)
    return min(rs)
grad = "--grad" in sys.argv
for name, fn in cases.items():
    with torch.inference_mode(not grad):
        fn(); fn(); fn()  # build plan + verify
        real = launch.launch_plan
        launch.launch_plan = lambda *a: None
        try:
            print(f"{name:12s} {per_call(fn):.2f} us")
        finally:
            launch.launch_plan = real
