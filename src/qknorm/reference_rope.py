"""PyTorch reference of QK norm + RoPE: the numerical reference and the CPU path.

Per-head RMSNorm (``reference.rms_norm_ref``) then rotary embedding, both in
``compute_dtype`` (fp32 on the CPU path, fp64 in tests), no rounding in between.

Conventions (those of vLLM's ``RotaryEmbedding``, FlashInfer's
``apply_rope_with_cos_sin_cache_inplace`` and SGLang):

* ``cos_sin_cache[p]`` is ``[cos(p * f_0) ... cos(p * f_{R/2-1}), sin(p * f_0) ... sin(p * f_{R/2-1})]``
  for a rotary dim ``R``: cos half, then sin half.
* Pair ``j`` (``0 <= j < R/2``) is ``(x[j], x[j + R/2])`` in NeoX style (``is_neox=True``,
  rotate halves) and ``(x[2j], x[2j + 1])`` in GPT-J style (interleaved); it is rotated by
  ``(a, b) -> (a cos_j - b sin_j, b cos_j + a sin_j)``, i.e. ``a + ib`` times ``e^{i p f_j}``.
* Elements ``R <= c < D`` (partial rotary) pass through (normalised only).
"""
from __future__ import annotations

import torch

from .reference import rms_norm_ref, writing


def rope_ref(x: torch.Tensor, cos_sin_cache: torch.Tensor, positions: torch.Tensor, rotary_dim: int,
             is_neox: bool = True, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[T, H, D]`` (first ``rotary_dim`` elements of each head)
    in ``compute_dtype``; the result stays in that dtype."""
    xf = x.to(compute_dtype)
    half = rotary_dim // 2
    cs = cos_sin_cache[positions.long()].to(compute_dtype)  # [T, R]: only the rows used are converted
    cos = cs[:, None, :half]
    sin = cs[:, None, half:rotary_dim]
    if is_neox:
        x1, x2 = xf[..., :half], xf[..., half:rotary_dim]
    else:
        x1, x2 = xf[..., 0:rotary_dim:2], xf[..., 1:rotary_dim:2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    rot = torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)
    return torch.cat((rot, xf[..., rotary_dim:]), dim=-1)


def qk_rms_norm_rope_ref(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                         k_weight: torch.Tensor | None, cos_sin_cache: torch.Tensor, positions: torch.Tensor,
                         eps: float = 1e-6, *, is_neox: bool = True, rotary_dim: int | None = None,
                         weight_offset: float = 0.0, compute_dtype: torch.dtype = torch.float32):
    """``(rope(norm(q)), rope(norm(k)))`` in ``compute_dtype`` for ``q`` ``[T, Hq, D]``, ``k``
    ``[T, Hkv, D]``, ``positions`` ``[T]``. No argument checks: see ``qknorm.qk_rms_norm_rope``."""
    r = q.shape[-1] if rotary_dim is None else rotary_dim
    qn = rms_norm_ref(q, q_weight, eps, weight_offset, compute_dtype)
    kn = rms_norm_ref(k, k_weight, eps, weight_offset, compute_dtype)
    return (rope_ref(qn, cos_sin_cache, positions, r, is_neox, compute_dtype),
            rope_ref(kn, cos_sin_cache, positions, r, is_neox, compute_dtype))


def qk_rms_norm_rope_torch(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                           weight_offset, q_out, k_out):
    """CPU path of ``qk_rms_norm_rope``: fp32 math, one rounding into ``q_out``/``k_out``.
    Both results are computed before either output is written (outputs may alias inputs)."""
    qr, kr = qk_rms_norm_rope_ref(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox=is_neox,
                                  rotary_dim=rotary_dim, weight_offset=weight_offset)
    with writing(q_out, k_out):
        q_out.copy_(qr)
        k_out.copy_(kr)
    return q_out, k_out
