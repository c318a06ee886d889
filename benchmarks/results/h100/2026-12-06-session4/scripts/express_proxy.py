"""CPU proxy of an eager call's host cost (no GPU): the fast call on CPU tensors with the launch stubbed.

    python express_proxy.py [--grad] [--python-path]

Default: the express call (``native.call``) with stand-in records (``_express.set_test_launch``) whose
launch is the builtin ``slice`` (a 3-argument no-op: the C call still builds its two tuples).
``--python-path``: the Python fast call instead (the express call off, ``launch.launch_plan`` a no-op).
Qwen3-8B shapes, bf16, T=16, best of 7 x 20000 calls; inference mode unless ``--grad``.
"""
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402

import qknorm  # noqa: E402
from qknorm import launch, native  # noqa: E402
from qknorm.ops import _express, _plan  # noqa: E402

_plan.FAST_ON_CPU = True
GRAD, PYTHON_PATH = "--grad" in sys.argv, "--python-path" in sys.argv
T, HQ, HKV, D, HID = 16, 32, 8, 128, 4096
dt = torch.bfloat16
x, w, r = torch.randn(T, HID, dtype=dt), torch.randn(HID, dtype=dt), torch.randn(T, HID, dtype=dt)
o = torch.empty_like(x)
qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dt)
q, k = qkv[:, :HQ * D].view(T, HQ, D), qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
qw, kw = torch.randn(D, dtype=dt), torch.randn(D, dtype=dt)
cases = {
    "rms_inplace": lambda: qknorm.rms_norm(x, w, out=x),
    "rms_out": lambda: qknorm.rms_norm(x, w, out=o),
    "rms_new": lambda: qknorm.rms_norm(x, w),
    "fused_add": lambda: qknorm.fused_add_rms_norm(x, r, w),
    "qk_inplace": lambda: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k),
}


def per_call(fn, n=20000, b=7):
    for _ in range(500):
        fn()
    rs = []
    for _ in range(b):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rs.append((time.perf_counter() - t0) / n * 1e6)
    return min(rs)


_express.set_test_launch(True)
m = native.launch_module()
with qknorm.use_backend("triton"), torch.inference_mode(not GRAD):
    for name, fn in cases.items():
        m.set_test_launch(_express._test_launch)
        _express.set_enabled(not PYTHON_PATH)
        fn(), fn(), fn()  # plans, stand-in records, entries
        real = launch.launch_plan
        if PYTHON_PATH:
            launch.launch_plan = lambda *a: None
        else:
            m.set_test_launch(slice)
        try:
            print(f"{name:12s} {per_call(fn):.2f} us")
        finally:
            launch.launch_plan = real
    print(f"floor torch.empty_like {per_call(lambda: torch.empty_like(x)):.2f} us")
