"""(Session 5: adds RELOAD, the partner read again from memory, an L1 hit.)
Prototype for issue 16's partial-rotary loss (GPU): QK norm + NeoX RoPE with the whole row as one
[ROWS, D] tile (16-byte loads, the sum of squares in registers) and each rotary element's partner
fetched by ``tl.gather`` along the row, which Triton 3.6 lowers to warp shuffles (no shared memory,
no barrier: checked offline on sm_90 PTX). SGLang's kernel (one warp per head, partner by
``__shfl_xor_sync``) works this way; ours loads the rotary halves and the tail as three narrow
tiles. Checks the prototype against ``qknorm.qk_rms_norm_rope`` (in place on a packed QKV buffer)
and times both, and SGLang's ``fused_qk_norm_rope`` when importable, in one process (CUDA graphs,
warm L2), bf16.

    python rope_gather_proto.py   (writes $OUT/rope_gather.json and prints a table)
"""
import json
import os

import torch
import triton
import triton.language as tl

import qknorm
from qknorm.bench.timing import time_graph


@triton.jit
def qk_rope_gather_kernel(XQ, XK, WQ, WK, CS, P, q_rows, k_rows, HQ, HK, qs_t, ks_t, css0, eps,
                          D: tl.constexpr, HALF: tl.constexpr, ROWS: tl.constexpr, RELOAD: tl.constexpr):
    """In place: rows [0, q_rows) are Q's (token r // HQ, head r % HQ), then K's."""
    q_blocks = tl.cdiv(q_rows, ROWS)
    pid = tl.program_id(0)
    is_q = pid < q_blocks
    r0 = tl.where(is_q, pid, pid - q_blocks) * ROWS
    rows = r0 + tl.arange(0, ROWS)
    n = tl.where(is_q, q_rows, k_rows)
    H = tl.where(is_q, HQ, HK)
    row_ok = rows < n
    t = (rows // H).to(tl.int64)
    h = (rows % H).to(tl.int64)
    base = tl.where(is_q, XQ + t * qs_t + h * D, XK + t * ks_t + h * D)
    W = tl.where(is_q, WQ, WK)
    c = tl.arange(0, D)
    m = row_ok[:, None]
    ptr = base[:, None] + c[None, :]
    x = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    ss = tl.sum(x * x, axis=1)
    y = x * tl.rsqrt(ss / D + eps)[:, None] * tl.load(W + c).to(tl.float32)[None, :]
    R: tl.constexpr = 2 * HALF
    partner = tl.where(c < HALF, c + HALF, tl.where(c < R, c - HALF, c))
    if RELOAD:
        rot_m = m & (c < R)[None, :]
        xp = tl.load(base[:, None] + partner[None, :], mask=rot_m, other=0.0).to(tl.float32)
        wp = tl.load(W + partner).to(tl.float32)[None, :]
        yp = xp * tl.rsqrt(ss / D + eps)[:, None] * wp
    else:
        yp = tl.gather(y, tl.broadcast_to(partner[None, :], (ROWS, D)), axis=1)
    pos = tl.load(P + t, mask=row_ok, other=0)
    j = tl.where(c < HALF, c, c - HALF)
    rot = (c < R)[None, :]
    cs_row = CS + pos * css0
    cos = tl.load(cs_row[:, None] + j[None, :], mask=m & rot, other=1.0)
    sin = tl.load(cs_row[:, None] + HALF + j[None, :], mask=m & rot, other=0.0)
    sign = tl.where(c < HALF, -1.0, 1.0)[None, :]
    tl.store(ptr, (y * cos + sign * yp * sin).to(XQ.dtype.element_ty), mask=m)


def proto(q, k, qw, kw, cs, pos, rows, warps, reload=False):
    t, hq, d = q.shape
    hk = k.shape[1]
    half = cs.shape[1] // 2
    grid = (triton.cdiv(t * hq, rows) + triton.cdiv(t * hk, rows),)
    qk_rope_gather_kernel[grid](q, k, qw, kw, cs, pos, t * hq, t * hk, hq, hk, q.stride(0), k.stride(0), cs.stride(0),
                                1e-6, D=d, HALF=half, ROWS=rows, RELOAD=reload, num_warps=warps)


def main():
    out = os.environ.get("OUT", ".")
    dev = "cuda"
    try:
        from sglang.jit_kernel.fused_qknorm_rope import fused_qk_norm_rope as sgl
    except Exception as e:  # noqa: BLE001
        sgl = None
        print("no sglang:", e)
    res = []
    for hq, hk, d, r in ((16, 2, 256, 64), (32, 8, 128, 64), (32, 8, 128, 128)):
        for T in (1, 64, 512, 4096, 16384):
            g = torch.Generator(device=dev).manual_seed(T)
            qkv = torch.randn(T, (hq + 2 * hk) * d, device=dev, dtype=torch.bfloat16, generator=g)
            qw = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
            kw = torch.rand(d, device=dev, dtype=torch.bfloat16, generator=g) + 0.5
            inv = 1.0 / 1e6 ** (torch.arange(0, r, 2, device=dev, dtype=torch.float32) / r)
            ang = torch.arange(40960, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
            cs = torch.cat((ang.cos(), ang.sin()), dim=1).contiguous()
            pos = torch.randint(0, 40960, (T,), device=dev, generator=g)
            views = lambda b: (b[:, :hq * d].view(T, hq, d), b[:, hq * d:(hq + hk) * d].view(T, hk, d))  # noqa: E731
            a, b = qkv.clone(), qkv.clone()
            qa, ka = views(a)
            qb, kb = views(b)
            qknorm.qk_rms_norm_rope(qa, ka, qw, kw, cs, pos, 1e-6, rotary_dim=r, q_out=qa, k_out=ka)
            proto(qb, kb, qw, kw, cs, pos, 4, 4)
            err = ((a.float() - b.float()).abs().max() / a.float().abs().max()).item()
            c2 = qkv.clone()
            qc, kc = views(c2)
            proto(qc, kc, qw, kw, cs, pos, 4, 4, True)
            err2 = ((a.float() - c2.float()).abs().max() / a.float().abs().max()).item()
            row = dict(hq=hq, hk=hk, d=d, rotary=r, T=T, max_rel_diff=err, max_rel_diff_reload=err2)
            x = qkv.clone()
            qx, kx = views(x)
            row["qknorm"] = time_graph([lambda: qknorm.qk_rms_norm_rope(qx, kx, qw, kw, cs, pos, 1e-6, rotary_dim=r,
                                                                        q_out=qx, k_out=kx)])
            # the library's own row forms (ops/_plan.ROW_FORM at the time; dispatch.ROPE_ROW_FORM since), checked against the split form
            import qknorm.ops._plan as rope_op
            for form in ("split", "gather", "load"):
                rope_op.ROW_FORM = form
                qknorm.dispatch.reset()
                f2 = qkv.clone()
                qf, kf = views(f2)
                qknorm.qk_rms_norm_rope(qf, kf, qw, kw, cs, pos, 1e-6, rotary_dim=r, q_out=qf, k_out=kf)
                row[f"lib_{form}_diff"] = ((a.float() - f2.float()).abs().max() / a.float().abs().max()).item()
                row[f"lib.{form}"] = time_graph([lambda: qknorm.qk_rms_norm_rope(qx, kx, qw, kw, cs, pos, 1e-6,
                                                                                 rotary_dim=r, q_out=qx, k_out=kx)])
            rope_op.ROW_FORM = "auto"
            qknorm.dispatch.reset()
            for rows in (1, 2, 4, 8, 16):
                for warps in (1, 2, 4, 8):
                    if rows * d // (32 * warps) < 4 or rows * d // (32 * warps) > 64:
                        continue
                    for rl in (False, True):
                        row[f"{'reload' if rl else 'proto'}.r{rows}.w{warps}"] = time_graph(
                            [lambda rows=rows, warps=warps, rl=rl: proto(qx, kx, qw, kw, cs, pos, rows, warps, rl)])
            if sgl is not None:
                p32 = pos.to(torch.int32)
                try:
                    row["sglang"] = time_graph([lambda: sgl(x, num_heads_q=hq, num_heads_k=hk, num_heads_v=hk,
                                                            head_dim=d, eps=1e-6, q_weight=qw, k_weight=kw,
                                                            base=1e6, is_neox=True, position_ids=p32, factor=1.0,
                                                            low=1.0, high=32.0, attention_factor=1.0,
                                                            rotary_dim=r)])
                except Exception as e:  # noqa: BLE001
                    row["sglang_error"] = str(e)[:200]
            best = min((v, k) for k, v in row.items() if k.startswith("proto."))
            best2 = min((v, k) for k, v in row.items() if k.startswith("reload."))
            print(f"hq={hq} hk={hk} d={d} r={r} T={T:6d} diff={err:.1e}/{err2:.1e} qknorm={row['qknorm']:.2f} "
                  f"gather {best[1]}={best[0]:.2f} reload {best2[1]}={best2[0]:.2f} "
                  f"sglang={row.get('sglang', float('nan')):.2f} lib split/gather/load="
                  f"{row['lib.split']:.2f}/{row['lib.gather']:.2f}/{row['lib.load']:.2f} "
                  f"(diff {row['lib_gather_diff']:.1e}/{row['lib_load_diff']:.1e})", flush=True)
            res.append(row)
    with open(os.path.join(out, "rope_gather.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
