import os, sys, time
os.environ["TRITON_INTERPRET"] = "1"
import torch, qknorm
from qknorm.ops import _plan
from qknorm import launch
_plan.FAST_ON_CPU = True
def t(f, n=20000):
    for _ in range(300): f()
    best = 1e9
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best
x = torch.randn(16, 4096, dtype=torch.bfloat16); r = torch.randn(16, 4096, dtype=torch.bfloat16)
w = torch.randn(4096, dtype=torch.bfloat16); wp = torch.nn.Parameter(w.clone())
qkv = torch.randn(16, 48 * 128, dtype=torch.bfloat16); q = qkv[:, :4096].view(16, 32, 128); k = qkv[:, 4096:5120].view(16, 8, 128)
qw = torch.randn(128, dtype=torch.bfloat16); kw = torch.randn(128, dtype=torch.bfloat16)
cases = {"rms alloc": lambda: qknorm.rms_norm(x, w, 1e-6), "rms in place": lambda: qknorm.rms_norm(x, w, 1e-6, out=x),
         "rms in place, Parameter": lambda: qknorm.rms_norm(x, wp, 1e-6, out=x),
         "fused add": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6),
         "qk in place": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)}
with qknorm.use_backend("triton"), torch.inference_mode():
    for f in cases.values(): f()
    launch.run_plan = lambda *a: None
    print(sys.argv[1], {n: round(t(f), 2) for n, f in cases.items()})
