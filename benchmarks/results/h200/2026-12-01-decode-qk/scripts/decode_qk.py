"""QK norm at decode sizes on one H200: every qknorm kernel config against SGLang's JIT
``fused_inplace_qknorm`` (one launch for Q and K, PDL), CUDA-graph replay, warm L2, bf16, in
place on the packed QKV buffer. Data for issue 13 (which config could win T <= 64).

Usage (GPU, SGLang's JIT kernels importable):  PYTHONPATH=$PWD/src python decode_qk.py $OUT
Per point: median of 15 replays of a graph of 200 back-to-back calls / 200; the two
implementations alternate (3 rounds, best median). Results agree with SGLang's to bf16 rounding.
"""
import itertools
import json
import os
import statistics
import sys

import torch

import qknorm
from qknorm import KernelConfig

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(OUT, exist_ok=True)
dev = "cuda"
SHAPES = {"qwen3-8b": (32, 8, 128), "qwen3-235b": (64, 4, 128), "qwen3-next": (16, 2, 256)}
TOKENS = (1, 2, 4, 8, 16, 32, 64)
CALLS = 200


def graph_us(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(CALLS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / CALLS)
    return statistics.median(ts)


try:
    from sglang.jit_kernel.norm import fused_inplace_qknorm
except Exception as e:  # noqa: BLE001
    fused_inplace_qknorm = None
    print("no SGLang JIT:", e)

rows = []
log = open(os.path.join(OUT, "decode_qk.txt"), "w")
for name, (hq, hkv, d) in SHAPES.items():
    cfgs = [None] + [KernelConfig(rows=r, block_d=d, num_warps=w, pdl=p)
                     for r, w, p in itertools.product((1, 2, 4, 8), (1, 2, 4), (False, True))]
    qw = torch.rand(d, device=dev, dtype=torch.bfloat16) + 0.5
    kw = torch.rand(d, device=dev, dtype=torch.bfloat16) + 0.5
    for t in TOKENS:
        qkv = torch.randn(t, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16)
        q = qkv[:, :hq * d].view(t, hq, d)
        k = qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d)
        base = qkv.clone()
        res = {}
        if fused_inplace_qknorm is not None:
            a = base.clone()
            fused_inplace_qknorm(a[:, :hq * d].view(t, hq, d), a[:, hq * d:(hq + hkv) * d].view(t, hkv, d), qw, kw,
                                 1e-6, head_dim=d)
            b = base.clone()
            qknorm.qk_rms_norm(b[:, :hq * d].view(t, hq, d), b[:, hq * d:(hq + hkv) * d].view(t, hkv, d), qw, kw,
                               1e-6, q_out=b[:, :hq * d].view(t, hq, d), k_out=b[:, hq * d:(hq + hkv) * d].view(t, hkv, d))
            err = ((a.float() - b.float()).abs().max()).item()
        else:
            err = None
        best = {}
        for rnd in range(3):
            if fused_inplace_qknorm is not None:
                us = graph_us(lambda: fused_inplace_qknorm(q, k, qw, kw, 1e-6, head_dim=d))
                best["sglang"] = min(best.get("sglang", 1e9), us)
            for c in cfgs:
                nm = "qknorm:pick" if c is None else f"qknorm:{c.name}"
                us = graph_us(lambda c=c: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k, config=c))
                best[nm] = min(best.get(nm, 1e9), us)
        pick = qknorm.dispatch.choose_config("qk_rms_norm", torch.bfloat16, d, t * (hq + hkv), q.device)[0].name
        top = sorted((v, k_) for k_, v in best.items() if k_.startswith("qknorm:r"))[:3]
        line = (f"{name:11s} T={t:3d} sglang {best.get('sglang', float('nan')):.3f}  pick({pick}) "
                f"{best['qknorm:pick']:.3f}  best " + ", ".join(f"{n[7:]} {v:.3f}" for v, n in top)
                + f"  max|diff| vs sglang {err}")
        print(line, flush=True)
        log.write(line + "\n")
        rows.append({"shape": name, "T": t, "pick": pick, "us": best, "max_abs_diff_vs_sglang": err})
json.dump(rows, open(os.path.join(OUT, "decode_qk.json"), "w"), indent=1)
