"""Eager cost per call, one process, interleaved: this tree's qknorm ("after"), the tree before
the ops/ rewrite imported as ``qknorm_before`` (e5be7fa, made with make_copy.sh) and SGLang's
JIT kernels (the fastest peer in eager mode), bf16, Qwen3-8B shapes, T = 1, 16, 64:
rms_norm into a preallocated out, fused add + RMSNorm in place, QK norm in place on the packed
QKV buffer. Back-to-back calls, synchronised per batch; per point the best of 3 rounds of the
median of 7 batches of 2000 calls, the implementations alternating.

Usage:  PYTHONPATH=$PWD/src:$PWD/.baseline python eager_ab.py $OUT
"""
import json
import os
import statistics
import sys
import time

import torch

import qknorm
import qknorm_before

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(OUT, exist_ok=True)
dev = "cuda"
HQ, HKV, D, HID = 32, 8, 128, 4096
try:
    from sglang.jit_kernel import norm as sgl
except Exception as e:  # noqa: BLE001
    sgl = None
    print("no SGLang JIT kernels:", e)


def per_call(fn, calls=2000, batches=7):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    r = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        r.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(r)


rows, lines = [], []
with torch.inference_mode():
    for t in (1, 16, 64):
        qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=dev, dtype=torch.bfloat16)
        q, k = qkv[:, :HQ * D].view(t, HQ, D), qkv[:, HQ * D:(HQ + HKV) * D].view(t, HKV, D)
        qw, kw = torch.rand(D, device=dev, dtype=torch.bfloat16), torch.rand(D, device=dev, dtype=torch.bfloat16)
        x, r = torch.randn(t, HID, device=dev, dtype=torch.bfloat16), torch.randn(t, HID, device=dev, dtype=torch.bfloat16)
        w, out = torch.rand(HID, device=dev, dtype=torch.bfloat16), torch.empty(t, HID, device=dev, dtype=torch.bfloat16)
        cases = {
            "rms_norm out=": {"after": lambda: qknorm.rms_norm(x, w, 1e-6, out=out),
                              "before": lambda: qknorm_before.rms_norm(x, w, 1e-6, out=out)},
            "fused_add": {"after": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6),
                          "before": lambda: qknorm_before.fused_add_rms_norm(x, r, w, 1e-6)},
            "qk in place": {"after": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k),
                            "before": lambda: qknorm_before.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)},
        }
        if sgl is not None:
            cases["rms_norm out="]["sglang_jit"] = lambda: sgl.rmsnorm(x, w, out=out, eps=1e-6)
            cases["fused_add"]["sglang_jit"] = lambda: sgl.fused_add_rmsnorm(x, r, w, 1e-6)
            cases["qk in place"]["sglang_jit"] = lambda: sgl.fused_inplace_qknorm(q, k, qw, kw, 1e-6, head_dim=D)
        for case, impls in cases.items():
            best = {}
            for rnd in range(3):
                for name in (list(impls) if rnd % 2 == 0 else list(impls)[::-1]):
                    best[name] = min(best.get(name, 1e9), per_call(impls[name]))
            row = {"case": case, "T": t, "us": best}
            rows.append(row)
            line = f"{case:14s} T={t:3d} " + "  ".join(f"{n} {v:6.2f}" for n, v in best.items())
            if "sglang_jit" in best:
                line += f"  | sglang/after {best['sglang_jit'] / best['after']:.2f}  sglang/before " \
                        f"{best['sglang_jit'] / best['before']:.2f}"
            print(line, flush=True)
            lines.append(line)
json.dump(rows, open(os.path.join(OUT, "eager_ab.json"), "w"), indent=1)
open(os.path.join(OUT, "eager_ab.txt"), "w").write(torch.cuda.get_device_name() + "\n" + "\n".join(lines) + "\n")
