"""Python cost of one eager ``qk_norm_rope_cache`` call, without a GPU (issue 16): CPU tensors take the
fast path (ops._plan.FAST_ON_CPU), the first calls run the kernel in the Triton interpreter, then every
launch entry is replaced by a no-op "go" so the timing is the host code before the launch (key, plan
lookup, overlap checks, run_plan). The CPU-only range checks of positions and slots (not done for CUDA
tensors) are stubbed out on both paths. Qwen3-8B shapes (Hq 32, Hkv 8, D 128), bf16, T=16, a paged cache
of 64 blocks x 16, in place on a packed QKV buffer, torch.inference_mode; best of 7 batches of 5000 calls.

"general" is the call without the fast path (check_args + run: what every call cost before it);
"new QKV buffer" cycles through 300 packed buffers, so the per-call overlap checks run on every call
(the other cases repeat their pointers: the plan remembers pointer tuples that passed).

Usage (repository root): PYTHONPATH=src python benchmarks/results/cpu/2026-12-06-prologue-host/host_prologue.py
"""
import os, time
os.environ["TRITON_INTERPRET"] = "1"
import torch
import qknorm
from qknorm import launch, validate
from qknorm.ops import _plan as plans
from qknorm.ops import qk_norm_rope_cache as cache_op
plans.FAST_ON_CPU = True
plans.cpu_positions_ok = lambda p, c: True
validate.positions_in_range = lambda p, m: None
cache_op.slots_in_range = lambda s, n: None
if hasattr(cache_op, "cpu_slots_ok"):
    cache_op.cpu_slots_ok = lambda s, c: True
launch._init()
launch._current_device = lambda: -1
launch._raw_stream = lambda d: 0


def noop(grid, stream, args):
    pass


def install():
    for kl in launch._launchers:
        for spec, ents in kl.specs.items():
            for i in range(len(ents)):
                e = launch._Entry(); e.state = launch.FAST; e.go = noop; ents[i] = e


def per_call(fn, n=5000, reps=7):
    for _ in range(500): fn()
    r = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        r.append((time.perf_counter() - t0) / n * 1e6)
    return min(r)


torch.manual_seed(0)
T, HQ, HKV, D, NB, BS = 16, 32, 8, 128, 64, 16
dt = torch.bfloat16
qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dt)
q = qkv[:, :HQ * D].view(T, HQ, D); k = qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
v = qkv[:, (HQ + HKV) * D:].view(T, HKV, D)
qw = torch.randn(D, dtype=dt); kw = torch.randn(D, dtype=dt)
cs = torch.randn(4096, D, dtype=torch.float32); pos = torch.arange(T)
kc = torch.zeros(NB, BS, HKV, D, dtype=dt); vc = torch.zeros_like(kc)
kc8 = torch.zeros(NB, BS, HKV, D, dtype=torch.float8_e4m3fn); vc8 = torch.zeros_like(kc8)
ks = torch.tensor([0.05]); vs = torch.tensor([0.05])
sm = torch.arange(T) * 3
pos3 = pos.expand(3, T).contiguous()
qo = torch.empty_like(q); ko = torch.empty_like(k)
f = qknorm.qk_norm_rope_cache


bufs = [torch.randn(T, (HQ + 2 * HKV) * D, dtype=dt) for _ in range(300)]  # more than a plan remembers
views = [(b[:, :HQ * D].view(T, HQ, D), b[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D), b[:, (HQ + HKV) * D:].view(T, HKV, D))
         for b in bufs]
it = [0]


def new_pointers():
    """A different packed QKV buffer each call: the per-call overlap checks run every time."""
    i = it[0] = (it[0] + 1) % len(views)
    qq, kk, vv = views[i]
    return f(qq, kk, vv, qw, kw, cs, pos, kc, vc, sm)


cases = {
    "prologue bf16 in place": lambda: f(q, k, v, qw, kw, cs, pos, kc, vc, sm),
    "prologue fp8 in place": lambda: f(q, k, v, qw, kw, cs, pos, kc8, vc8, sm, k_scale=ks, v_scale=vs),
    "prologue mrope bf16": lambda: f(q, k, v, qw, kw, cs, pos3, kc, vc, sm, mrope_section=(16, 24, 24)),
    "prologue q_out,k_out": lambda: f(q, k, v, qw, kw, cs, pos, kc, vc, sm, q_out=qo, k_out=ko),
    "prologue new QKV buffer": new_pointers,
    "general bf16 in place": lambda: cache_op.general(q, k, v, qw, kw, cs, pos, kc, vc, sm)
    if hasattr(cache_op, "general") else f(q, k, v, qw, kw, cs, pos, kc, vc, sm),
    "rope in place (ref)": lambda: qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-6, q_out=q, k_out=k),
}
with torch.inference_mode(), qknorm.use_backend("triton"):
    for fn in cases.values(): fn(); fn()
    install()
    res = {name: per_call(fn) for name, fn in cases.items()}
for name, t in res.items():
    print(f"{name:26s} {t:7.3f} us")
