"""rope_inv.py: why fp32 head_dim 256 full-rotary QK norm + RoPE rows differ between T = 1 and T = 256 (the GPU
invariance test's one failure, session 12). Prints the dispatch of both calls, then, for each forced config, whether
the T = 1 rows equal the T = 256 rows and the config-vs-config bit differences. Run from the repository root."""
import itertools
import sys

import os

import torch

import qknorm
from qknorm.config import KernelConfig

CASES = ((torch.float32, 256), (torch.float32, 128), (torch.bfloat16, 256))[:int(os.environ.get('NCASES', 3))]
for dtype, d in CASES:
    g = torch.Generator(device="cuda").manual_seed(d)
    x = torch.randn(8192, d, device="cuda", dtype=dtype, generator=g)
    r = torch.randn(8192, d, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(d, device="cuda", dtype=dtype, generator=g)
    qkv = torch.randn(256, 48 * d, device="cuda", dtype=dtype, generator=g)
    q, k = qkv[:, :32 * d].view(256, 32, d), qkv[:, 32 * d:40 * d].view(256, 8, d)
    cs = torch.randn(512, d, device="cuda", dtype=torch.float32, generator=g)
    pos = torch.randint(0, 512, (256,), device="cuda", generator=g)
    rot = d
    print(f"===== {dtype} head_dim {d} rotary {rot}")
    for t in (1, 256):
        print(f"-- explain T={t}:", qknorm.explain(q[:t], k[:t], op="qk_rms_norm_rope", rotary_dim=rot).strip().replace("\n", "\n   "))
    rq, rk = qknorm.qk_rms_norm_rope(q, k, w, w, cs[:, :rot], pos, rotary_dim=rot)
    tq, tk = qknorm.qk_rms_norm_rope(q[:1], k[:1], w, w, cs[:, :rot], pos[:1], rotary_dim=rot)
    print("default T=1 vs T=256 equal:", torch.equal(tq, rq[:1]), torch.equal(tk, rk[:1]),
          "max |diff|", (tq - rq[:1]).abs().max().item(), (tk - rk[:1]).abs().max().item())
    outs = {}
    for rows, warps, pers in itertools.product((1, 2, 8, 16, 32), (1, 2, 4, 8), (False, True)[:int(os.environ.get('NPERS', 2))]):
        cfg = KernelConfig(rows=rows, block_d=d, num_warps=warps, persistent=pers)
        try:
            a = qknorm.qk_rms_norm_rope(q, k, w, w, cs[:, :rot], pos, rotary_dim=rot, config=cfg)
            b = qknorm.qk_rms_norm_rope(q[:1], k[:1], w, w, cs[:, :rot], pos[:1], rotary_dim=rot, config=cfg)
        except Exception as e:  # noqa: BLE001
            print(cfg.name, "refused:", str(e)[:100])
            continue
        outs[cfg.name] = a
        same = torch.equal(a[0][:1], b[0]) and torch.equal(a[1][:1], b[1])
        vs = torch.equal(a[0], rq) and torch.equal(a[1], rk)
        print(f"{cfg.name:18s} T1==T256 {same}  ==default(T=256) {vs}  q diff vs default "
              f"{(a[0] - rq).abs().max().item():.3g}  T=1 vs default T=1 {torch.equal(b[0], tq)}")
    names = list(outs)
    groups = []
    for n in names:
        for gp in groups:
            if torch.equal(outs[gp[0]][0], outs[n][0]) and torch.equal(outs[gp[0]][1], outs[n][1]):
                gp.append(n)
                break
        else:
            groups.append([n])
    print("bit-identical groups:", groups)
    sys.stdout.flush()
