"""PyTorch implementations: the numerical reference and the CPU path.

Same numerics as the kernels: upcast, mean of squares in the compute dtype (fp32 on
the CPU path, fp64 in tests), multiply by ``weight + weight_offset`` in that dtype,
round once at the end.
"""
from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
                 weight_offset: float = 0.0, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` in ``compute_dtype`` (result stays in that dtype)."""
    xf = x.to(compute_dtype)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.to(compute_dtype) + weight_offset)
    return y


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                           eps: float = 1e-6, weight_offset: float = 0.0,
                           compute_dtype: torch.dtype = torch.float32):
    """Returns ``(norm(x + residual), x + residual)`` in ``compute_dtype``: the norm is of the unrounded sum."""
    s = x.to(compute_dtype) + residual.to(compute_dtype)
    return rms_norm_ref(s, weight, eps, weight_offset, compute_dtype), s


def rms_norm_torch(x, weight, eps, weight_offset, out):
    """CPU path of ``rms_norm``: fp32 math, one rounding into ``out``."""
    out.copy_(rms_norm_ref(x, weight, eps, weight_offset))
    return out


def fused_add_rms_norm_torch(x, residual, weight, eps, weight_offset):
    """CPU path of ``fused_add_rms_norm`` (in place on ``x`` and ``residual``)."""
    y, s = fused_add_rms_norm_ref(x, residual, weight, eps, weight_offset)
    residual.copy_(s)
    x.copy_(y)
    return x, residual
