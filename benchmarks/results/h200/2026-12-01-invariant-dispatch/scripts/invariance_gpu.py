"""Batch invariance on the GPU (issue 13): (1) the row-layout rule of qknorm.invariance
against every config of a pool (configs of one layout must give the same bits); (2) the
dispatcher's picks, bitwise, for prefixes of one input (1 ... 8192 rows), in place and not,
for rms_norm, fused add and QK norm, bf16/fp16/fp32. Writes $OUT/invariance_gpu.txt/json.

Usage: PYTHONPATH=$PWD/src python invariance_gpu.py $OUT
"""
import json
import os
import sys

import torch

import qknorm
from qknorm import invariance
from qknorm.config import KernelConfig

OUT = sys.argv[1]
dev = "cuda"
log = open(os.path.join(OUT, "invariance_gpu.txt"), "w")
res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}


def say(s):
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


say(f"{res['gpu']} torch {torch.__version__}")
# (1) the rule
rule = []
for dt in (torch.bfloat16, torch.float32):
    for D in (128, 256, 1024, 4096):
        b = 1 << (D - 1).bit_length()
        g = torch.Generator(device=dev).manual_seed(D)
        x = torch.randn(4096, D, device=dev, dtype=dt, generator=g) * 3
        w = torch.randn(D, device=dev, dtype=dt, generator=g)
        outs = {}
        for r in (1, 2, 4, 8, 16, 32):
            for nw in (1, 2, 4, 8, 16):
                if r * b > 16384 or nw * 32 > r * b:
                    continue
                cfg = KernelConfig(rows=r, block_d=b, num_warps=nw)
                outs[cfg] = qknorm.rms_norm(x, w, 1e-6, config=cfg)
        groups = {}
        for cfg, y in outs.items():
            groups.setdefault(invariance.row_layout(cfg.rows, b, cfg.num_warps, dt.itemsize), []).append(cfg)
        bad = 0
        for lay, cfgs in groups.items():
            ref = outs[cfgs[0]]
            for c in cfgs[1:]:
                if not torch.equal(outs[c], ref):
                    bad += 1
                    say(f"  RULE VIOLATION {dt} D={D} {lay}: {c.name} != {cfgs[0].name}")
        across = sum(1 for a in groups for b2 in groups if a < b2 and not torch.equal(outs[groups[a][0]], outs[groups[b2][0]]))
        canon = invariance.canonical_layout(b, dt.itemsize)
        say(f"rule {str(dt)[6:]} D={D}: {len(outs)} configs in {len(groups)} layouts; violations {bad}; "
            f"layout pairs that differ {across}; canonical {tuple(canon)}: {[c.name for c in groups.get(canon, [])]}")
        rule.append({"dtype": str(dt), "D": D, "configs": len(outs), "layouts": len(groups), "violations": bad,
                     "pairs_differ": across})
res["rule"] = rule
# (2) the dispatcher
disp = []
NS = (1, 2, 3, 5, 8, 16, 40, 64, 100, 256, 513, 1000, 2048, 4096, 8192)
for dt in (torch.bfloat16, torch.float16, torch.float32):
    for D in (64, 128, 256, 512, 1024, 2048, 4096, 5120):
        g = torch.Generator(device=dev).manual_seed(7 * D)
        N = 8192
        x = torch.randn(N, D, device=dev, dtype=dt, generator=g)
        r0 = torch.randn(N, D, device=dev, dtype=dt, generator=g)
        w = torch.randn(D, device=dev, dtype=dt, generator=g)
        full = qknorm.rms_norm(x, w, 1e-6)
        xa, ra = x.clone(), r0.clone()
        qknorm.fused_add_rms_norm(xa, ra, w, 1e-6)
        diff_rms = diff_add = 0
        for n in NS:
            y = qknorm.rms_norm(x[:n], w, 1e-6)
            diff_rms += int((y != full[:n]).any(dim=-1).sum())
            yi = x[:n].clone()
            qknorm.rms_norm(yi, w, 1e-6, out=yi)
            diff_rms += int((yi != full[:n]).any(dim=-1).sum())
            xb, rb = x[:n].clone(), r0[:n].clone()
            qknorm.fused_add_rms_norm(xb, rb, w, 1e-6)
            diff_add += int((xb != xa[:n]).any(dim=-1).sum() + (rb != ra[:n]).any(dim=-1).sum())
        diff_qk = 0
        if D <= 512:
            T = 256
            qkv = torch.randn(T, 48 * D, device=dev, dtype=dt, generator=g)
            q, k = qkv[:, :32 * D].view(T, 32, D), qkv[:, 32 * D:40 * D].view(T, 8, D)
            qf, kf = qknorm.qk_rms_norm(q, k, w, w, 1e-6)
            for t in (1, 2, 3, 8, 16, 64, 100, 256):
                qq, kk = q[:t].clone(), k[:t].clone()
                qknorm.qk_rms_norm(qq, kk, w, w, 1e-6, q_out=qq, k_out=kk)
                diff_qk += int((qq != qf[:t]).any(dim=-1).sum() + (kk != kf[:t]).any(dim=-1).sum())
        say(f"dispatcher {str(dt)[6:]} D={D}: rows differing from the {N}-row call: rms_norm {diff_rms}, "
            f"fused add {diff_add}, qk {diff_qk if D <= 512 else '-'}")
        disp.append({"dtype": str(dt), "D": D, "rms": diff_rms, "add": diff_add, "qk": diff_qk})
res["dispatcher"] = disp
json.dump(res, open(os.path.join(OUT, "invariance_gpu.json"), "w"), indent=1)
