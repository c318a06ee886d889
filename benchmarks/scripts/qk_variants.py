"""Experiment: QK norm in one launch, segment order (all Q then all K) vs token order
(Q and K heads of a token together), over rows/warps/persistent. Calls the kernels
directly; checks each against fp64 first. Usage: python qk_variants.py [out.csv]"""
import csv
import itertools
import os
import sys

import torch

from qknorm.kernels.qk_norm import qk_rms_norm_kernel, qk_rms_norm_tokens_kernel
from qknorm.reference import rms_norm_ref

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"


def make(t, hq, hk, d, dt=torch.bfloat16):
    qkv = torch.randn(t, (hq + 2 * hk) * d, device=DEV).to(dt)
    return qkv, qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d:(hq + hk) * d].view(t, hk, d)


def launch(kind, q, k, qw, kw, rows, warps, pps, sms):
    t, hq, d = q.shape
    hk = k.shape[1]
    bd = triton_next_pow2(d)
    if kind == "tokens":
        nb = -(-(t * (hq + hk)) // rows)
        grid = (min(nb, pps * sms),) if pps else (nb,)
        qk_rms_norm_tokens_kernel[grid](d, 1e-6, 0.0,
                                        q, q, qw, t, hq, q.stride(0), q.stride(1), q.stride(0), q.stride(1), 1,
                                        k, k, kw, hk, k.stride(0), k.stride(1), k.stride(0), k.stride(1), 1,
                                        HAS_WEIGHT=True, ROWS=rows, BLOCK_D=bd, PERSISTENT=bool(pps),
                                        num_warps=warps)
    else:
        nb = -(-(t * hq) // rows) + -(-(t * hk) // rows)
        grid = (min(nb, pps * sms),) if pps else (nb,)
        qk_rms_norm_kernel[grid](d, 1e-6, 0.0,
                                 q, q, qw, t * hq, t, hq, 0, q.stride(0), q.stride(1), 1, 0, q.stride(0), q.stride(1), 1, 1,
                                 k, k, kw, t * hk, t, hk, 0, k.stride(0), k.stride(1), 1, 0, k.stride(0), k.stride(1), 1, 1,
                                 HAS_WEIGHT=True, ROWS=rows, BLOCK_D=bd, CHUNKED=False, PERSISTENT=bool(pps),
                                 num_warps=warps)


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    sms = torch.cuda.get_device_properties(0).multi_processor_count if GPU else 4
    import triton.testing as tt
    if GPU:
        n = 1 << 28
        a = torch.empty(n, dtype=torch.uint8, device=DEV)
        b = torch.empty_like(a)
        bw = 2 * n / tt.do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median") / 1e6
        print(f"copy {bw:.0f} GB/s")
    shapes = [(32, 8, 128), (64, 4, 128), (16, 2, 256)]
    tokens = [1, 64, 512, 4096, 16384] if GPU else [3]
    res = []
    for (hq, hk, d), t in itertools.product(shapes, tokens):
        qkv, q, k = make(t, hq, hk, d)
        qw = torch.randn(d, device=DEV)
        kw = torch.randn(d, device=DEV)
        ref_q, ref_k = rms_norm_ref(q, qw, compute_dtype=torch.float64), rms_norm_ref(k, kw, compute_dtype=torch.float64)
        nbytes = 4 * (q.numel() + k.numel())
        best = {}
        for kind, rows, warps, pps in itertools.product(("seg", "tokens"), (1, 2, 4, 8, 16, 32), (1, 2, 4, 8), (0, 4, 8)):
            if rows * d > 8192 or warps * 32 * 4 > rows * d or (not GPU and (warps > 1 or pps == 8 or rows > 2)):
                continue
            work = qkv.clone()
            qq = work[:, : hq * d].view(t, hq, d)
            kk = work[:, hq * d:(hq + hk) * d].view(t, hk, d)
            launch(kind, qq, kk, qw, kw, rows, warps, pps, sms)
            e = max(((qq.double() - ref_q).norm() / ref_q.norm()).item(), ((kk.double() - ref_k).norm() / ref_k.norm()).item())
            if not e < 1e-2:
                print("WRONG", kind, rows, warps, pps, e)
                continue
            if not GPU:
                continue
            us = tt.do_bench_cudagraph(lambda: launch(kind, qq, kk, qw, kw, rows, warps, pps, sms), rep=25, return_mode="median") * 1e3
            res.append(dict(hq=hq, hk=hk, d=d, t=t, kind=kind, rows=rows, warps=warps, pps=pps, us=round(us, 3)))
            if kind not in best or us < best[kind][0]:
                best[kind] = (us, rows, warps, pps)
        if GPU:
            line = "  ".join(f"{kd}: {v[0]:7.2f}us r{v[1]} w{v[2]} p{v[3]} ({nbytes / v[0] / 1e3 / bw * 100:5.1f}% copy)"
                             for kd, v in best.items())
            print(f"{hq:3d}/{hk}/{d} T={t:6d}  {line}", flush=True)
    if out and res:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(res[0]))
            w.writeheader()
            w.writerows(res)


if __name__ == "__main__":
    main()
