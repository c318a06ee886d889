"""t1_probe.py: why an eager in-place QK norm call costs more at T=1 than at T=16 (issue 12), on the current GPU.

Qwen3-8B shapes (packed QKV [T, (32+2*8)*128] bf16, Q/K views normalised in place). For each T in TOKENS:
  * per call (µs): best of 5 tight loops of 2000 calls (a synchronize around each loop only), qknorm's public call;
    SGLang's JIT ``fused_inplace_qknorm`` beside it when importable (PYTHONPATH=/tmp/peers);
  * a torch.profiler trace of 300 back-to-back calls: the kernels' GPU durations, the start-to-start interval of
    consecutive kernels, and the CPU time of the launch API calls (cuLaunchKernel*), medians;
  * the SM clock (nvidia-smi) sampled while a loop runs.
Run it once per PDL setting (QKNORM_PDL=0 / 1); prints one table, also written to $OUT/t1_probe_<tag>.txt.
    python t1_probe.py TAG
"""
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

import qknorm

TAG = sys.argv[1] if len(sys.argv) > 1 else "default"
TOKENS = (1, 2, 4, 8, 16, 64)
HQ, HK, D = 32, 8, 128
dev = "cuda"
eps = 1e-6
lines = [f"{torch.cuda.get_device_name()} torch {torch.__version__} QKNORM_PDL={os.environ.get('QKNORM_PDL', 'auto')}"]
try:
    sys.path.insert(0, "/tmp/peers")
    from sglang.jit_kernel import norm as sg
except Exception as exc:  # noqa: BLE001
    sg = None
    lines.append(f"sglang: {type(exc).__name__}: {str(exc)[:160]}")


def sm_clock_during(fn, seconds=0.6):
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.strip()
                samples.append(int(out.splitlines()[0]))
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)
    th = threading.Thread(target=sample)
    th.start()
    t_end = time.time() + seconds
    while time.time() < t_end:
        fn()
        torch.cuda.synchronize()
    stop.set()
    th.join()
    return statistics.median(samples) if samples else float("nan")


def per_call(fn, n=2000, reps=5):
    best = float("inf")
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def trace(fn, n=300):
    from torch.profiler import ProfilerActivity, profile
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    kern, launch = [], []
    for ev in prof.events():
        dt = getattr(ev, "device_type", None)
        if dt is not None and "CUDA" in str(dt) and ev.device_time_total > 0 and "Memcpy" not in ev.name:
            kern.append((ev.time_range.start, ev.time_range.end))
        elif "LaunchKernel" in ev.name or "cuLaunch" in ev.name:
            launch.append(ev.time_range.end - ev.time_range.start)
    kern.sort()
    dur = [e - s for s, e in kern]
    gaps = [b[0] - a[0] for a, b in zip(kern, kern[1:])]
    med = (lambda v: statistics.median(v) if v else float("nan"))
    return len(kern), med(dur), med(gaps), med(launch)


lines.append(f"{'case':26s} {'call us':>8s} {'kernels':>7s} {'gpu us':>7s} {'start-start':>11s} {'launch api':>10s} "
             f"{'sm MHz':>7s}  config")
for T in TOKENS:
    g = torch.Generator(device=dev).manual_seed(T)
    qkv = torch.randn(T, (HQ + 2 * HK) * D, device=dev, dtype=torch.bfloat16, generator=g)
    q = qkv[:, :HQ * D].view(T, HQ, D)
    k = qkv[:, HQ * D:(HQ + HK) * D].view(T, HK, D)
    qw = torch.randn(D, device=dev, dtype=torch.bfloat16, generator=g)
    kw = torch.randn(D, device=dev, dtype=torch.bfloat16, generator=g)
    impls = {"qknorm": lambda: qknorm.qk_rms_norm(q, k, qw, kw, eps, q_out=q, k_out=k)}
    if sg is not None:
        impls["sglang"] = lambda: sg.fused_inplace_qknorm(q, k, qw, kw, eps, head_dim=D)
    cfg = qknorm.explain(q, k, top=0).splitlines()[0].split("-> ", 1)[-1][:120]
    for name, fn in impls.items():
        fn()
        us = per_call(fn)
        nk, gpu, ss, api = trace(fn)
        mhz = sm_clock_during(fn)
        lines.append(f"{name + ' T=' + str(T):26s} {us:8.2f} {nk:7d} {gpu:7.2f} {ss:11.2f} {api:10.2f} {mhz:7.0f}  "
                     + (cfg if name == "qknorm" else ""))
        print(lines[-1], flush=True)
text = "\n".join(lines) + "\n"
print(text)
out = os.environ.get("OUT")
if out:
    with open(os.path.join(out, f"t1_probe_{TAG}.txt"), "w") as f:
        f.write(text)
