"""Batch invariance on one GPU: does a row's result depend on the kernel config (rows per
program, warps) or on how many rows the call has? Data for issue 13.

Usage:  PYTHONPATH=$PWD/src python invariance.py $OUT

1. Per width D (bf16, weight, unchunked block_d = next_pow2(D)): one input of 4096 rows, run
   with every config rows in {1..32} x num_warps in {1,2,4,8} (tile <= 65536); configs whose
   output equals the r1.w1 output bit for bit form one class; the others are listed with the
   number of rows that differ.
2. The dispatcher's own picks: rms_norm and qk_rms_norm (Qwen3-8B heads) on the first n rows
   of the same input, n = 1 ... 4096, against the rows of the full call: rows that differ.
"""
import json
import os
import sys

import torch

import qknorm
from qknorm import KernelConfig
from qknorm.dispatch import choose_config

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(OUT, exist_ok=True)
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
res = {"configs": {}, "dispatch": {}}
lines = []


def say(s):
    print(s, flush=True)
    lines.append(s)


def npow2(n):
    return 1 << (n - 1).bit_length()


for d in (64, 128, 256, 1024, 4096, 5120, 8192):
    x = torch.randn(4096, d, device=dev, dtype=torch.bfloat16, generator=g) * 3
    w = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
    bd = npow2(d)
    base = qknorm.rms_norm(x, w, config=KernelConfig(rows=1, block_d=bd, num_warps=1 if bd <= 1024 else 4))
    same, diff = [], {}
    for rows in (1, 2, 4, 8, 16, 32):
        for warps in (1, 2, 4, 8):
            if rows * bd > 65536:
                continue
            cfg = KernelConfig(rows=rows, block_d=bd, num_warps=warps)
            y = qknorm.rms_norm(x, w, config=cfg)
            n = int((y != base).any(dim=1).sum())
            (same.append(cfg.name) if n == 0 else diff.__setitem__(cfg.name, n))
    res["configs"][d] = {"same_as_r1": same, "differ_rows": diff}
    say(f"D={d}: {len(same)} configs equal to r1 bit for bit; differ: "
        + (", ".join(f"{k} ({v} rows)" for k, v in sorted(diff.items())) or "none"))

for d in (128, 4096, 5120):
    x = torch.randn(4096, d, device=dev, dtype=torch.bfloat16, generator=g) * 3
    w = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
    full = qknorm.rms_norm(x, w)
    bad = {}
    for n in (1, 2, 3, 4, 8, 16, 31, 64, 100, 256, 1000, 2048):
        y = qknorm.rms_norm(x[:n], w)
        k = int((y != full[:n]).any(dim=1).sum())
        if k:
            bad[n] = (k, choose_config("rms_norm", torch.bfloat16, d, n, x.device)[0].name)
    res["dispatch"][f"rms_norm D={d}"] = {"full_pick": choose_config("rms_norm", torch.bfloat16, d, 4096,
                                                                     x.device)[0].name, "differ": bad}
    say(f"rms_norm D={d}: rows of a call of n rows that differ from the 4096-row call: {bad or 'none'}")

hq, hkv, d = 32, 8, 128
qkv = torch.randn(1024, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16, generator=g) * 3
qw = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
kw = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
q, k = qkv[:, :hq * d].view(-1, hq, d), qkv[:, hq * d:(hq + hkv) * d].view(-1, hkv, d)
fq, fk = qknorm.qk_rms_norm(q, k, qw, kw)
bad = {}
for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
    a, b = qknorm.qk_rms_norm(q[:t], k[:t], qw, kw)
    n = int((a != fq[:t]).any(dim=-1).sum() + (b != fk[:t]).any(dim=-1).sum())
    if n:
        bad[t] = (n, choose_config("qk_rms_norm", torch.bfloat16, d, t * (hq + hkv), q.device)[0].name)
res["dispatch"]["qk_rms_norm 32+8x128"] = {"full_pick": choose_config("qk_rms_norm", torch.bfloat16, d,
                                                                      1024 * 40, q.device)[0].name, "differ": bad}
say(f"qk_rms_norm 32+8 x 128: heads of a T-token call that differ from the 1024-token call: {bad or 'none'}")
json.dump(res, open(os.path.join(OUT, "invariance.json"), "w"), indent=1, default=str)
open(os.path.join(OUT, "invariance.txt"), "w").write("\n".join(lines) + "\n")
