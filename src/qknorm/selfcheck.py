"""A short end-to-end check: run every public op on a few cases, compare with fp64, print the error."""
from __future__ import annotations

import torch

from .backend import get_backend, interpreter_on
from .functional import (fused_add_rms_norm, fused_add_rms_norm_quant, qk_norm_rope_cache, qk_rms_norm,
                         qk_rms_norm_rope, rms_norm, rms_norm_quant)
from .reference import TOL, fused_add_rms_norm_ref, rel_l2, rms_norm_ref
from .reference_rope import qk_rms_norm_rope_ref
from .validate import dtype_name

TOL_FP8 = 5e-2  # float8_e4m3fn keeps 3 mantissa bits: 2**-4 relative per element at most


def why_not(device: str) -> str | None:
    """Why the check cannot run on ``device`` with the active backend (None: it can)."""
    if get_backend() == "triton" and device == "cpu" and not interpreter_on():
        return ("QKNORM_BACKEND=triton on the CPU needs the Triton interpreter: set TRITON_INTERPRET=1 as well "
                "(slow), or use QKNORM_BACKEND=auto")
    return None


def _cases(dtype, device, g):
    """``(name, relative L2 error, tolerance)`` of each op on one dtype's inputs."""
    f64 = torch.float64
    tol = TOL[dtype]

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    qkv = rnd(33, 48 * 128)
    q, k = qkv[:, :4096].view(33, 32, 128), qkv[:, 4096:5120].view(33, 8, 128)
    qw, kw = torch.randn(128, generator=g).to(device), torch.randn(128, generator=g).to(device)
    rq, rk = rms_norm_ref(q, qw, compute_dtype=f64), rms_norm_ref(k, kw, compute_dtype=f64)
    qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k)
    yield "qk_rms_norm packed [33,32+8,128] in place", max(rel_l2(q, rq), rel_l2(k, rk)), tol

    x, r = rnd(17, 5000), rnd(17, 5000)
    w = torch.randn(5000, generator=g).to(device)
    rx = rms_norm_ref(x, w, weight_offset=1.0, compute_dtype=f64)
    ry, rs = fused_add_rms_norm_ref(x, r, w, compute_dtype=f64)
    yield "rms_norm [17,5000] gemma offset", rel_l2(rms_norm(x, w, weight_offset=1.0), rx), tol
    fused_add_rms_norm(x, r, w)
    yield "fused_add_rms_norm [17,5000]", max(rel_l2(x, ry), rel_l2(r, rs)), tol

    qkv = rnd(9, 48 * 128)
    q, k, v = qkv[:, :4096].view(9, 32, 128), qkv[:, 4096:5120].view(9, 8, 128), qkv[:, 5120:].view(9, 8, 128)
    cs = torch.randn(64, 128, generator=g).to(device)
    pos = torch.randint(0, 64, (9,), generator=g).to(device)
    rq, rk = qk_rms_norm_rope_ref(q, k, qw, kw, cs, pos, compute_dtype=f64)
    oq, ok = qk_rms_norm_rope(q, k, qw, kw, cs, pos, q_out=torch.empty_like(q), k_out=torch.empty_like(k))
    yield "qk_rms_norm_rope [9,32+8,128] NeoX", max(rel_l2(oq, rq), rel_l2(ok, rk)), tol

    k_cache = torch.zeros(4, 16, 8, 128, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(64, generator=g)[:9].to(device)
    vv = v.clone()
    oq = qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, k_cache, v_cache, slots, q_out=torch.empty_like(q))
    kc, vc = k_cache.view(64, 8, 128)[slots], v_cache.view(64, 8, 128)[slots]
    yield ("qk_norm_rope_cache [9,32+8+8,128] paged 4x16",
           max(rel_l2(oq, rq), rel_l2(kc, rk), rel_l2(vc, vv)), tol)

    x, r = rnd(7, 512), rnd(7, 512)
    w = torch.randn(512, generator=g).to(device)
    rx = rms_norm_ref(x, w, compute_dtype=f64)
    codes, scales = rms_norm_quant(x, w)
    yield "rms_norm_quant [7,512] fp8 per-token", rel_l2(codes.to(f64) * scales.to(f64), rx), TOL_FP8
    ry, rs = fused_add_rms_norm_ref(x, r, w, compute_dtype=f64)
    codes, scales = fused_add_rms_norm_quant(x, r, w, group_size=128)
    deq = codes.to(f64).view(7, 4, 128) * scales.to(f64).view(7, 4, 1)
    yield "fused_add_rms_norm_quant [7,512] fp8 groups 128", max(rel_l2(deq.view(7, 512), ry), rel_l2(r, rs)), TOL_FP8


def run(device: str | None = None) -> bool:
    """Print one line per op and dtype (backend, relative L2 error against fp64); True when all pass.
    Raises RuntimeError (:func:`why_not`) when the check cannot run on ``device``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    why = why_not(device)
    if why:
        raise RuntimeError(why)
    backend = get_backend()
    runs = "Triton kernels" if (backend == "triton" or (backend == "auto" and device == "cuda")) else "PyTorch path"
    print(f"qknorm self-check on {device} (backend={backend}: {runs})")
    ok = True
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for name, e, tol in _cases(dtype, device, g):
            good = e < tol
            ok &= good
            print(f"  {dtype_name(dtype):9s} {name:48s} max rel L2 err {e:.2e} "
                  f"{'ok' if good else 'FAIL'}")
    return ok
