"""nnqk_host.py: host cost of nn.QKNorm(128) in place (Qwen3-8B T=1, bf16, CPU, launch stubbed as express_host.py does)."""
import os, time, statistics
os.environ["TRITON_INTERPRET"] = "1"
import torch, qknorm, qknorm.nn as qn
from qknorm import native
from qknorm.ops import _plan, _express
qknorm.set_backend("triton"); _plan.FAST_ON_CPU = True
assert _express.set_test_launch(True)
qkv = torch.randn(1, 48 * 128, dtype=torch.bfloat16)
q, k = qkv[:, :4096].view(1, 32, 128), qkv[:, 4096:5120].view(1, 8, 128)
m = qn.QKNorm(128, dtype=torch.bfloat16).eval()
with torch.inference_mode():
    for _ in range(4): m(q, k, in_place=True)
    native.launch_module().set_test_launch(lambda rec, values, tensors: True)
    v = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20000): m(q, k, in_place=True)
        v.append((time.perf_counter() - t0) / 20000 * 1e6)
print(f"nn.QKNorm in place   median {statistics.median(v):.3f} us  min {min(v):.3f}")
