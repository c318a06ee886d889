"""Why does qknorm's RMSNorm trail SGLang's at the same tile (one row per program, 16-byte
vectors, same warps)? A lean kernel with the fewest arguments and D as a constexpr, timed
beside the production kernel (forced to the same configs) and SGLang's JIT rmsnorm in one
process, CUDA-graph replay (warm L2), best of 3 alternating rounds. Registers per thread too.

Usage: PYTHONPATH=$PWD/src:/tmp/peers python lean.py OUTDIR
"""
import json
import os
import sys

import torch
import triton
import triton.language as tl

import qknorm
from qknorm import KernelConfig, launch
from qknorm import layout as qlayout
from qknorm.ops import _plan
from qknorm.bench.timing import time_graph
from qknorm.kernels.pdl import pdl_launch_dependents, pdl_wait

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""  # "qk": only the QK A/B (5 rounds, T <= 64); "chunks"
os.makedirs(OUT, exist_ok=True)


@triton.jit
def lean_rms(X, Y, W, xs, ys, n_rows, eps, D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
             RUNTIME_D: tl.constexpr, USE_PDL: tl.constexpr, Dr):
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    if RUNTIME_D:
        col_ok = cols < Dr
    else:
        col_ok = cols < D
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    x = tl.load(X + rows.to(tl.int64)[:, None] * xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    ss = tl.sum(x * x, axis=1)
    if RUNTIME_D:
        r = tl.rsqrt(ss / Dr + eps)
    else:
        r = tl.rsqrt(ss / D + eps)
    y = x * r[:, None] * w[None, :]
    tl.store(Y + rows.to(tl.int64)[:, None] * ys + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    pdl_launch_dependents(USE_PDL)


NEW_ROW_LAYOUT = qlayout.row_layout.__wrapped__


def old_row_layout(shape, *strides):
    """The layout before 2026-12-06: leading dims padded at the front (sizes (1, 1, T) for [T, D])."""
    lay = NEW_ROW_LAYOUT(shape, *strides)
    if lay is None:
        return None
    k = sum(1 for n in lay.sizes if n != 1)  # merged dims are never 1; the rest is padding
    pad = 3 - k
    sizes = (1,) * pad + lay.sizes[:k]
    return qlayout.RowLayout(lay.n_rows, sizes, tuple((0,) * pad + st[:k] + (st[3],) for st in lay.strides))


def timed(f, old=False):
    """Graph time of f; with old=True the plans are built (and the graph captured) under the old layout."""
    if old:
        qlayout.row_layout = old_row_layout
        _plan.clear_caches()
    try:
        return time_graph([f])
    finally:
        if old:
            qlayout.row_layout = NEW_ROW_LAYOUT
            _plan.clear_caches()


def sglang():
    try:
        from sglang.jit_kernel.norm import rmsnorm
        return rmsnorm
    except Exception as e:  # noqa: BLE001
        print("no sglang:", e)
        return None


def main():
    dev = torch.device("cuda")
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    sgl = sglang()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    regs = {}
    for D in (() if ONLY in ("qk", "chunks") else (2048, 4096, 5120, 8192)):
        block = triton.next_power_of_2(D)
        for T in (1, 2, 8, 64, 1024, 4096, 16384):
            x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
            w = torch.randn(D, device=dev, dtype=torch.bfloat16)
            y = torch.empty_like(x)
            ref = qknorm.rms_norm(x, w, 1e-6)
            pdl = T <= 4 * sm
            fns = {}
            fns["qknorm"] = lambda: qknorm.rms_norm(x, w, 1e-6, out=y)
            fns["qknorm.oldpad"] = fns["qknorm"]
            if sgl is not None:
                fns["sglang"] = lambda: sgl(x, w, out=y, eps=1e-6)
            for wp in (4, 8, 16):
                if block // (wp * 32) < 8:  # fewer than one 16-byte vector per thread
                    continue
                cfg = KernelConfig(rows=1, block_d=block, num_warps=wp)
                fns[f"prod.w{wp}"] = (lambda cfg=cfg: qknorm.rms_norm(x, w, 1e-6, out=y, config=cfg))
                for rt in (False,):
                    name = f"lean{'.rtD' if rt else ''}.w{wp}"

                    def f(wp=wp, rt=rt, name=name):
                        ck = lean_rms[(T,)](x, y, w, x.stride(0), y.stride(0), T, 1e-6, D, block, 1, rt, pdl, D,
                                            num_warps=wp, launch_pdl=pdl)
                        regs.setdefault(f"{name} D={D}", (ck.n_regs, ck.n_spills))
                    fns[name] = f
            # correctness of every variant
            for name, f in fns.items():
                y.fill_(float("nan"))
                f()
                torch.cuda.synchronize()
                err = (y.float() - ref.float()).abs().max().item()
                if not err <= 0.02 * max(1.0, ref.float().abs().max().item()):
                    print(f"WRONG {name} D={D} T={T}: {err}")
            best = {n: float("inf") for n in fns}
            for _ in range(3):
                for n, f in fns.items():
                    best[n] = min(best[n], timed(f, old=n.endswith(".oldpad")))
            line = f"D={D:5d} T={T:5d} " + " ".join(f"{n}={v:.3f}" for n, v in best.items())
            print(line, flush=True)
            res["points"].append({"D": D, "T": T, "us": best})
    if ONLY == "chunks":  # non-power-of-two widths: exact tiles kept in registers vs the padded tile
        for D in (3072, 5120, 7168):
            for T in (1, 16, 128, 1024, 4096, 16384):
                x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
                w = torch.randn(D, device=dev, dtype=torch.bfloat16)
                y = torch.empty_like(x)
                fns = {"qknorm": lambda: qknorm.rms_norm(x, w, 1e-6, out=y)}
                if sgl is not None:
                    fns["sglang"] = lambda: sgl(x, w, out=y, eps=1e-6)
                for blk, wp in ((512, 2), (1024, 4), (1024, 2), (2048, 8), (1024, 8)):
                    cfg = KernelConfig(rows=1, block_d=blk, num_warps=wp)
                    if D % blk == 0 and cfg.chunk_mode(D) >= 2:
                        fns[f"reg{D // blk}x{blk}.w{wp}"] = (lambda cfg=cfg: qknorm.rms_norm(x, w, 1e-6, out=y, config=cfg))
                best = {n: float("inf") for n in fns}
                for r in range(3):
                    for n, f in (reversed(list(fns.items())) if r % 2 else fns.items()):
                        best[n] = min(best[n], time_graph([f]))
                print(f"CHUNKS D={D:5d} T={T:5d} " + " ".join(f"{n}={v:.3f}" for n, v in best.items()), flush=True)
                res["points"].append({"op": "chunks", "D": D, "T": T, "us": best})
        json.dump(res, open(os.path.join(OUT, "lean.json"), "w"), indent=1)
        return
    try:
        from sglang.jit_kernel.norm import fused_add_rmsnorm, fused_inplace_qknorm
    except Exception:  # noqa: BLE001
        fused_add_rmsnorm = fused_inplace_qknorm = None
    for (hq, hkv, d) in ((32, 8, 128), (16, 2, 256), (64, 4, 128)):
        for T in ((1, 2, 4, 8, 16, 64) if ONLY == "qk" else (1, 2, 4, 8, 16, 64, 256, 1024)):
            qkv = torch.randn(T, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16)
            q = qkv[:, :hq * d].view(T, hq, d)
            k = qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
            qw = torch.randn(d, device=dev, dtype=torch.bfloat16)
            kw = torch.randn(d, device=dev, dtype=torch.bfloat16)
            fns = {"qknorm": lambda: qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)}
            fns["qknorm.oldpad"] = fns["qknorm"]
            if fused_inplace_qknorm is not None:
                fns["sglang"] = lambda: fused_inplace_qknorm(q, k, qw, kw, 1e-6)
            best = {n: float("inf") for n in fns}
            for _ in range(5 if ONLY == "qk" else 3):
                for n, f in reversed(list(fns.items())) if _ % 2 else fns.items():
                    best[n] = min(best[n], timed(f, old=n.endswith(".oldpad")))
            line = f"QK {hq}+{hkv}x{d} T={T:5d} " + " ".join(f"{n}={v:.3f}" for n, v in best.items())
            print(line, flush=True)
            res["points"].append({"op": "qk", "hq": hq, "hkv": hkv, "D": d, "T": T, "us": best})
    for D in (() if ONLY == "qk" else (2048, 4096, 8192)):
        for T in (1, 2, 8, 64, 1024, 4096):
            x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
            r = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
            w = torch.randn(D, device=dev, dtype=torch.bfloat16)
            fns = {"qknorm": lambda: qknorm.fused_add_rms_norm(x, r, w, 1e-6)}
            fns["qknorm.oldpad"] = fns["qknorm"]
            if fused_add_rmsnorm is not None:
                fns["sglang"] = lambda: fused_add_rmsnorm(x, r, w, 1e-6)
            best = {n: float("inf") for n in fns}
            for _ in range(3):
                for n, f in fns.items():
                    x.normal_(); r.normal_()
                    best[n] = min(best[n], timed(f, old=n.endswith(".oldpad")))
            line = f"ADD D={D:5d} T={T:5d} " + " ".join(f"{n}={v:.3f}" for n, v in best.items())
            print(line, flush=True)
            res["points"].append({"op": "add", "D": D, "T": T, "us": best})
    for kl in launch._launchers:
        for spec, entries in kl.specs.items():
            for e in entries:
                if e is not None and getattr(e, "ck", None) is not None:
                    regs[f"{kl.name} {spec}"] = (e.ck.n_regs, e.ck.n_spills)
    res["regs"] = regs
    for k, v in regs.items():
        print("regs", k, v)
    json.dump(res, open(os.path.join(OUT, "lean.json"), "w"), indent=1)


main()
