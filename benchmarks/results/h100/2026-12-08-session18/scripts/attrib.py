"""Attribute the graph-mode cost against bdefcae: time fixed configs of QK / RMSNorm / fused add (bf16, Qwen3-8B
shapes) in one build (PYTHONPATH picks it), CUDA-graph replays (triton.testing.do_bench_cudagraph, warm L2).
usage: [ATTRIB_OPS=qk,rms,add] [ATTRIB_TS=64,256,...] python attrib.py LABEL OUT.json"""
import json
import os
import sys

import torch
import triton

import qknorm
from qknorm import KernelConfig

label, out = sys.argv[1], sys.argv[2]
OPS = os.environ.get("ATTRIB_OPS", "qk,rms,add").split(",")
TS = [int(t) for t in os.environ.get("ATTRIB_TS", "64,256,512,1024,4096").split(",")]
dev, dt = "cuda", torch.bfloat16
torch.manual_seed(0)


def cfg(name):
    if name == "pick":
        return None
    r, b, w = name.split(".")
    return KernelConfig(rows=int(r[1:]), block_d=int(b[1:]), num_warps=int(w[1:]))


res = {}
for T in TS:
    qkv = torch.randn(T, (32 + 16) * 128, device=dev, dtype=dt)
    q, k = qkv[:, :4096].view(T, 32, 128), qkv[:, 4096:5120].view(T, 8, 128)
    wq, wk = torch.randn(128, device=dev, dtype=dt), torch.randn(128, device=dev, dtype=dt)
    for c in ("pick", "r32.b128.w4", "r16.b128.w8", "r8.b128.w1") if "qk" in OPS else ():
        fn = lambda: qknorm.qk_rms_norm(q, k, wq, wk, q_out=q, k_out=k, config=cfg(c))
        fn()
        res[f"qk T={T} {c}"] = triton.testing.do_bench_cudagraph(fn, rep=40) * 1e3
    x, r, w = (torch.randn(T, 4096, device=dev, dtype=dt) for _ in range(3))
    for c in ("pick", "r1.b4096.w8"):
        if "rms" in OPS:
            fn = lambda: qknorm.rms_norm(x, w[0], out=r, config=cfg(c))
            fn()
            res[f"rms T={T} {c}"] = triton.testing.do_bench_cudagraph(fn, rep=40) * 1e3
        if "add" in OPS:
            fn = lambda: qknorm.fused_add_rms_norm(x, r, w[0], config=cfg(c))
            fn()
            res[f"add T={T} {c}"] = triton.testing.do_bench_cudagraph(fn, rep=40) * 1e3
json.dump(res, open(out, "w"), indent=0)
print(label, "done", len(res))
