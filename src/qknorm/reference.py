"""PyTorch implementations: the numerical reference and the CPU path.

Same numerics as the kernels: upcast, mean of squares in the compute dtype (fp32 on
the CPU path, fp64 in tests), multiply by ``weight + weight_offset`` in that dtype,
round once at the end.

Also the numerics every checker shares (``tune``, ``selfcheck``, the bench's gate): the
tolerance of each activation dtype (:data:`TOL`) and the relative error (:func:`rel_l2`).
"""
from __future__ import annotations

import contextlib
import math

import torch

# The correctness gate of tune, selfcheck and the bench: the relative L2 error (fp64) of an output
# against the reference must stay below this for the output's dtype (one rounding to bf16 is ~4e-3
# relative).
TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in fp64; NaN/inf anywhere in ``out`` gives inf (so a NaN never
    passes a ``<`` test nor vanishes in a ``max``)."""
    o = out.detach().to(torch.float64)
    r = ref.detach().to(torch.float64)
    if not torch.isfinite(o).all():
        return math.inf
    den = r.norm().item()
    num = (o - r).norm().item()
    return num / den if den > 0 else num


FLT_MIN = 2.0 ** -126  # smallest normal fp32
FLT_MAX = 3.4028234663852886e38
EPS_TINY_SCALE = 2.0 ** 250  # eps below FLT_MIN reaches the kernels as eps * 2**250 (see kernel_eps)
_EXTREME_SS = 3.0e38  # an fp32 sum of squares above this may have overflowed
_EXTREME_MS = 2.0 ** -60  # a mean square + eps below this may have lost flushed squares or eps


def kernel_eps(eps: float) -> tuple[float, float]:
    """eps as the kernels take it: ``(eps, 0.0)`` when eps is a normal fp32 number, else
    ``(2**-126, eps * 2**250)``: the smallest normal fp32 number (a positive eps stays
    positive on every GPU, which flushes subnormals; it differs from eps only for rows whose
    mean square is below ~1e-38, which fp32 cannot represent anyway) and eps scaled into
    range (clamped to at least ``2**-376``, far below any non-zero mean square of fp32 data)
    for the exact rescaling of such rows (``kernels/rows.py: range_factors``)."""
    if eps >= FLT_MIN:
        return (min(eps, FLT_MAX), 0.0)
    if eps > 0.0:
        return (FLT_MIN, max(eps, 2.0 ** -376) * EPS_TINY_SCALE)
    return (0.0, 0.0)


def _rstd(xf: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(mean(xf**2) + eps)`` over the last dim (keepdim) in xf's dtype."""
    return torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)


def _out_of_range(ms: torch.Tensor, e: float, d: int) -> torch.Tensor:
    """The rows (keepdim mask) whose fp32 mean square ``ms`` (eps as the kernels take it: ``e``) may have
    overflowed or lost flushed squares or eps: recomputed in fp64."""
    m = ms + e
    return (ms * d > _EXTREME_SS) | (m < _EXTREME_MS) | (m > _EXTREME_SS) | ms.isinf()


def _rescued(xf: torch.Tensor, ms: torch.Tensor, eps: float, skip_when_clean: bool = True):
    """The rows of fp32 ``xf`` (mean squares ``ms``) to recompute in fp64 (:func:`_out_of_range`, keepdim mask), or
    None when no row needs it. With ``skip_when_clean`` that is decided from two scalars where reading them is
    possible (plain CPU tensors, not under tracing: a host sync); on CUDA, for meta and wrapper tensors (fake,
    functional) and under tracing the mask is always returned (no sync)."""
    e = kernel_eps(eps)[0]
    # fake, functional and other wrapper tensors (AOT autograd traces a backward with them, and on some torch
    # releases without setting is_compiling): no values to read
    unread = (xf.is_cuda or xf.device.type == "meta" or torch.compiler.is_compiling()
              or (type(xf) is not torch.Tensor and type(xf) is not torch.nn.Parameter))
    if skip_when_clean and not unread:
        # One reduction, then scalars: every row clean (the usual case) needs no mask. A NaN row makes
        # both NaN: then the row-wise mask decides.
        lo, hi = (float(v) for v in ms.detach().aminmax())
        if hi == hi and not (hi * xf.shape[-1] > _EXTREME_SS or lo + e < _EXTREME_MS or hi + e > _EXTREME_SS):
            return None
    bad = _out_of_range(ms, e, xf.shape[-1])
    if skip_when_clean and not unread and not bool(bad.any()):
        return None
    return bad


def normalize(x: torch.Tensor, eps: float, compute_dtype: torch.dtype = torch.float32, *,
              skip_when_clean: bool = True) -> torch.Tensor:
    """``x / sqrt(mean(x**2) + eps)`` in ``compute_dtype``.

    In fp32 the sum of squares overflows for |x| above ~1e19 and underflows below ~1e-19
    (PyTorch's ``F.rms_norm`` returns 0 or inf there); rows in that range, or with an eps
    fp32 cannot hold, are recomputed in fp64, as the kernels do. ``skip_when_clean`` skips
    that fp64 pass when no row needs it (a host sync: CPU tensors, not under tracing)."""
    xf = x.to(compute_dtype)
    ms = xf.square().mean(dim=-1, keepdim=True)
    bad = None
    if compute_dtype == torch.float32 and xf.numel():
        bad = _rescued(xf, ms, eps, skip_when_clean)
    if bad is None:
        return xf * torch.rsqrt(ms + eps)
    # the fp32 branch of the rows taken from fp64 runs on ones: autograd masks its gradient there, and a
    # masked 0 * inf is NaN (clean rows keep their values and bits)
    xs = torch.where(bad, torch.ones_like(xf), xf)
    y = xs * torch.rsqrt(xs.square().mean(dim=-1, keepdim=True) + eps)
    x64 = xf.to(torch.float64)
    return torch.where(bad, (x64 * _rstd(x64, eps)).to(torch.float32), y)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
                 weight_offset: float = 0.0, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` in ``compute_dtype`` (result stays in that dtype)."""
    y = normalize(x, eps, compute_dtype)
    if weight is not None:
        y = y * (weight.to(compute_dtype) + weight_offset)
    return y


def rms_norm_backward(x: torch.Tensor, weight: torch.Tensor | None, eps: float, weight_offset: float,
                      grad: torch.Tensor, need_weight_grad: bool = True):
    """Gradients of ``rms_norm_ref(x, weight, eps, weight_offset)`` for ``grad`` (fp32 math):
    ``(dx, dweight)`` in the dtypes of ``x`` and ``weight`` (``dweight`` None without a weight
    or when not needed). With ``n = x * rstd``: ``dx = rstd * (g*w - n * mean(g*w*n))``,
    ``dweight = sum over rows of g * n``. Rows out of fp32's range (as :func:`normalize` finds them, whose
    fp32 ``rstd`` would be 0 or inf) take ``dx`` from fp64, as the forward takes ``n``."""
    xf = x.to(torch.float32)
    gf = grad.to(torch.float32)
    ms = xf.square().mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt(ms + eps)
    n = xf * rstd  # normalize's value for the rows in range
    gw = gf if weight is None else gf * (weight.to(torch.float32) + weight_offset)
    dx = rstd * (gw - n * (gw * n).mean(dim=-1, keepdim=True))
    bad = _rescued(xf, ms, eps) if xf.numel() else None
    if bad is not None:  # rows out of range: n and dx from fp64 (never differentiated: no masked branch to guard)
        x64, gw64 = xf.to(torch.float64), gw.to(torch.float64)
        r64 = _rstd(x64, eps)
        n64 = x64 * r64
        dx = torch.where(bad, (r64 * (gw64 - n64 * (gw64 * n64).mean(dim=-1, keepdim=True))).to(torch.float32), dx)
        n = torch.where(bad, n64.to(torch.float32), n)
    dw = None
    if weight is not None and need_weight_grad:
        dw = (gf * n).reshape(-1, x.shape[-1]).sum(dim=0).to(weight.dtype)
    return dx.to(x.dtype), dw


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                           eps: float = 1e-6, weight_offset: float = 0.0,
                           compute_dtype: torch.dtype = torch.float32):
    """Returns ``(norm(x + residual), x + residual)`` in ``compute_dtype``: the norm is of the unrounded sum."""
    s = x.to(compute_dtype) + residual.to(compute_dtype)
    return rms_norm_ref(s, weight, eps, weight_offset, compute_dtype), s


def refused_write(t) -> bool:
    """Whether PyTorch refuses an in-place write of ``t`` here: an inference tensor outside inference mode
    (the one rule behind :func:`writing` and the autograd route's refusal, ``torch_library._recordable``)."""
    return t is not None and t.is_inference() and not torch.is_inference_mode_enabled()


def writing(*targets):
    """The context for writing ``targets`` (None entries skipped) with PyTorch ops, as the kernels write them:
    inference mode when one is an inference tensor and inference mode is off. PyTorch refuses such a write
    outside inference mode, and with several targets the first ``copy_`` would land before the next raised
    (the kernels write them: qknorm does not enforce that refusal, on either backend, except for a call that
    records autograd, which refuses such a target before writing anything: ``torch_library._recordable``)."""
    if any(refused_write(t) for t in targets):
        return torch.inference_mode()
    return contextlib.nullcontext()


def rms_norm_torch(x, weight, eps, weight_offset, out):
    """CPU path of ``rms_norm``: fp32 math, one rounding into ``out``."""
    y = rms_norm_ref(x, weight, eps, weight_offset)
    with writing(out):
        out.copy_(y)
    return out


def fused_add_rms_norm_torch(x, residual, weight, eps, weight_offset):
    """CPU path of ``fused_add_rms_norm`` (in place on ``x`` and ``residual``)."""
    y, s = fused_add_rms_norm_ref(x, residual, weight, eps, weight_offset)
    with writing(x, residual):
        residual.copy_(s)
        x.copy_(y)
    return x, residual
