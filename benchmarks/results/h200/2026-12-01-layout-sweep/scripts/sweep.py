"""Every kernel config of a pool, by row layout, against SGLang's JIT kernels: which layout per
width is fastest across token counts (issue 13: the dispatcher may use one layout per width).
CUDA-graph replay (qknorm.bench.timing.time_graph), warm L2, bf16, one process.

Usage: PYTHONPATH=$PWD/src:<sglang jit> python sweep.py $OUT      (writes sweep.json as it goes)
"""
import json
import os
import sys
import time

import torch

import qknorm
from qknorm.bench.timing import time_graph
from qknorm.config import KernelConfig

OUT = sys.argv[1]
dev = "cuda"
from sglang.jit_kernel import norm as sgl  # noqa: E402

res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "points": []}
t_start = time.time()


def pool(d, min_rows=1):
    b = 1 << (d - 1).bit_length()
    out = []
    for r in (1, 2, 4, 8, 16, 32):
        for w in (1, 2, 4, 8, 16, 32):
            if r * b <= 16384 and w * 32 <= r * b and r >= min_rows:
                out.append(KernelConfig(rows=r, block_d=b, num_warps=w))
    return out


def save():
    json.dump(res, open(os.path.join(OUT, "sweep.json"), "w"))


def t(fn):
    return time_graph([fn], replays=10)


torch.manual_seed(0)
CASES = [("qk", 32, 8, 128, (1, 2, 4, 8, 16, 64, 256, 1024, 4096, 16384)),
         ("qk", 16, 2, 256, (1, 2, 4, 8, 16, 64, 256, 1024, 4096, 16384)),
         ("rms", 4096, 0, 0, (1, 16, 128, 1024, 4096, 16384)),
         ("rms", 2048, 0, 0, (1, 16, 128, 1024, 4096, 16384)),
         ("rms", 5120, 0, 0, (1, 16, 128, 1024, 4096, 16384)),
         ("add", 4096, 0, 0, (1, 16, 128, 1024, 4096, 16384))]
with torch.inference_mode():
    for op, a, b_, d, toks in CASES:
        for T in toks:
            if op == "qk":
                qkv = torch.randn(T, (a + 2 * b_) * d, device=dev, dtype=torch.bfloat16)
                q, k = qkv[:, :a * d].view(T, a, d), qkv[:, a * d:(a + b_) * d].view(T, b_, d)
                qw, kw = torch.rand(d, device=dev, dtype=torch.bfloat16), torch.rand(d, device=dev, dtype=torch.bfloat16)
                peer = lambda: sgl.fused_inplace_qknorm(q, k, qw, kw, 1e-6, head_dim=d)  # noqa: E731
                ours = lambda c: (lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k, config=c))  # noqa: E731
                width, name = d, f"qk {a}+{b_}x{d}"
            else:
                width = a
                x = torch.randn(T, a, device=dev, dtype=torch.bfloat16)
                r = torch.randn(T, a, device=dev, dtype=torch.bfloat16)
                w = torch.rand(a, device=dev, dtype=torch.bfloat16)
                o = torch.empty_like(x)
                if op == "rms":
                    peer = lambda: sgl.rmsnorm(x, w, out=o, eps=1e-6)  # noqa: E731
                    ours = lambda c: (lambda: qknorm.rms_norm(x, w, 1e-6, out=o, config=c))  # noqa: E731
                else:
                    peer = lambda: sgl.fused_add_rmsnorm(x, r, w, 1e-6)  # noqa: E731
                    ours = lambda c: (lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6, config=c))  # noqa: E731
                name = f"{op} {a}"
            p0 = t(peer)
            us = {}
            for c in pool(width):
                try:
                    us[c.name] = t(ours(c))
                except Exception as e:  # noqa: BLE001
                    us[c.name] = None
                    print("fail", name, T, c.name, e)
            us["pick"] = t(lambda: (qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k) if op == "qk" else
                                    qknorm.rms_norm(x, w, 1e-6, out=o) if op == "rms" else
                                    qknorm.fused_add_rms_norm(x, r, w, 1e-6)))
            p1 = t(peer)
            best = min((v, n) for n, v in us.items() if v)
            res["points"].append({"case": name, "op": op, "D": width, "T": T, "sglang": min(p0, p1), "us": us})
            print(f"{name:16s} T={T:6d} sglang {min(p0, p1):7.2f} pick {us['pick']:7.2f} best {best[1]} {best[0]:7.2f} "
                  f"[{time.time() - t_start:.0f}s]", flush=True)
            save()
