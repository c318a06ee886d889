"""The public ops: documentation and routing.

Each function takes one of three ways: while ``torch.compile`` traces, the ``torch.ops.qknorm``
custom op (``torch_library``); when a tensor argument requires grad under grad mode, the
differentiable custom op (after every argument check); otherwise the eager op in ``ops/``
(a cached-plan fast call for common CUDA calls, else the general call). Nothing is written
before every check has passed.
"""
from __future__ import annotations

import torch

from . import torch_library as _tl
from . import validate
from .config import KernelConfig
from .ops import fused_add as _add
from .ops import qk_norm as _qk
from .ops import qk_norm_rope as _rope
from .ops import rms_norm as _rms

__all__ = ["rms_norm", "fused_add_rms_norm", "qk_rms_norm", "qk_rms_norm_rope"]

_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)
_Tensor = torch.Tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
             weight_offset: float = 0.0, out: torch.Tensor | None = None,
             config: KernelConfig | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension: ``y = x / sqrt(mean(x**2) + eps) * (weight + weight_offset)``.

    Root mean square layer normalisation (Zhang & Sennrich, 2019, arXiv:1910.07467), as in
    Llama/Qwen/Gemma model code. Sum of squares and scaling in fp32, one rounding at the end.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]``, bfloat16/float16/float32, rank >= 1, any strides.
    weight : torch.Tensor or None
        ``[D]``, any float dtype (bf16/fp16/fp32/fp64), on x's device. None: no scaling.
    eps : float
        Added to the mean square, >= 0 (any positive value acts as positive, even below
        fp32's normal range).
    weight_offset : float
        Added to the weight in fp32: ``1.0`` is Gemma's ``(1 + w)``. Needs a weight.
    out : torch.Tensor or None
        None (a new contiguous tensor), ``x`` itself (in place), or a tensor of x's shape,
        dtype and device that shares no memory with x and does not overlap itself.
    config : KernelConfig or None
        Forces a kernel variant (default: the dispatcher's pick; see :func:`qknorm.explain`).

    Returns
    -------
    torch.Tensor
        ``out`` (or the new tensor).

    Raises
    ------
    TypeError
        A wrong argument type or dtype (message names the argument and the value).
    ValueError
        Shape mismatch, eps < 0 or not finite, ``out`` overlapping ``x`` partially or itself.

    Notes
    -----
    A weight sharing memory with ``out`` is read from a private copy (the values on entry).
    Differentiable in x and weight; an in-place call on a leaf that requires grad raises
    PyTorch's own error. CPU tensors take a PyTorch path with the same numerics.
    """
    if _is_compiling():
        return _tl.traced_rms_norm(x, weight, eps, weight_offset, out, config)
    r = _rms.fast(x, weight, eps, weight_offset, out, config)
    if r is not None:
        return r
    eps, weight_offset = _rms.check_args(x, weight, eps, weight_offset, out, config)
    if validate.grad_needed(x, weight, out):
        return _tl.autograd_rms_norm(x, weight, eps, weight_offset, out)
    return _rms.run(x, weight, eps, weight_offset, out, config)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                       eps: float = 1e-6, *, weight_offset: float = 0.0,
                       config: KernelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm, in place: ``residual += x``, then ``x = rms_norm(residual)``.

    The fused form of a pre-norm decoder layer (vLLM/SGLang ``fused_add_rms_norm``). The
    norm is taken of the fp32 sum; ``residual`` stores the sum rounded to its dtype.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]``, bfloat16/float16/float32, any strides; overwritten with the normalised sum.
    residual : torch.Tensor
        x's shape, dtype and device; overwritten with ``x + residual``. Must share no
        memory with x, and neither may overlap itself.
    weight : torch.Tensor or None
        ``[D]``, any float dtype, on x's device.
    eps, weight_offset, config
        As in :func:`rms_norm`.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(x, residual)``, both written in place.

    Raises
    ------
    TypeError, ValueError
        As in :func:`rms_norm`; ValueError when x and residual overlap.

    Notes
    -----
    A weight sharing memory with x or residual is read from a private copy. Differentiable
    (in place: x and residual must not be leaves that require grad).
    """
    if _is_compiling():
        return _tl.traced_fused_add_rms_norm(x, residual, weight, eps, weight_offset, config)
    if _add.fast(x, residual, weight, eps, weight_offset, config):
        return x, residual
    eps, weight_offset = _add.check_args(x, residual, weight, eps, weight_offset, config)
    if validate.grad_needed(x, residual, weight):
        return _tl.autograd_fused_add_rms_norm(x, residual, weight, eps, weight_offset)
    return _add.run(x, residual, weight, eps, weight_offset, config)


def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                k_weight: torch.Tensor | None, eps: float = 1e-6, *, weight_offset: float = 0.0,
                q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                config: KernelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of Q and K ("QK norm") in one kernel launch.

    Each head (last dimension) of Q and of K is normalised on its own, as in
    Dehghani et al. 2023 (arXiv:2302.05442) and the Qwen3, Gemma 3 and OLMo 2 model code.

    Parameters
    ----------
    q : torch.Tensor
        ``[..., Hq, D]`` (typically ``[T, Hq, D]``), bfloat16/float16/float32, any strides:
        e.g. the Q view ``qkv[:, :Hq*D].view(T, Hq, D)`` of a packed QKV buffer.
    k : torch.Tensor
        ``[..., Hkv, D]``, q's dtype and device, the same D.
    q_weight, k_weight : torch.Tensor or None
        Both None or both ``[D]`` (any float dtype).
    eps, weight_offset, config
        As in :func:`rms_norm` (the config applies to the Q and K rows together).
    q_out, k_out : torch.Tensor or None
        None (new contiguous tensors), the input itself (in place), or tensors of the
        input's shape, dtype and device sharing no memory with it.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(q_out, k_out)``.

    Raises
    ------
    TypeError, ValueError
        A wrong type/dtype/shape; an output overlapping itself, partially its input, the
        other output or the other input.

    Notes
    -----
    Weights sharing memory with an output are read from private copies. Differentiable in
    q, k and the weights.
    """
    if _is_compiling():
        return _tl.traced_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    r = _qk.fast(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    if r is not None:
        return r
    eps, weight_offset = _qk.check_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    if validate.grad_needed(q, k, q_weight, k_weight, q_out, k_out):
        return _tl.autograd_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out)
    return _qk.run(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)


def qk_rms_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                     k_weight: torch.Tensor | None, cos_sin_cache: torch.Tensor, positions: torch.Tensor,
                     eps: float = 1e-6, *, is_neox: bool = True, rotary_dim: int | None = None,
                     weight_offset: float = 0.0, q_out: torch.Tensor | None = None,
                     k_out: torch.Tensor | None = None,
                     config: KernelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of Q and K, then rotary position embedding (RoPE), in one launch.

    RoPE: Su et al. 2021 (arXiv:2104.09864); conventions of vLLM's ``RotaryEmbedding`` and
    FlashInfer's ``apply_rope_with_cos_sin_cache_inplace``: ``cos_sin_cache[p]`` holds the
    cos half then the sin half of ``rotary_dim`` values; NeoX style rotates pairs
    ``(x[j], x[j + rotary_dim/2])``, GPT-J style ``(x[2j], x[2j+1])``; pair ``j`` becomes
    ``(a cos_j - b sin_j, b cos_j + a sin_j)``. Math in fp32, one rounding at the end.

    Parameters
    ----------
    q : torch.Tensor
        ``[T, Hq, D]``, bfloat16/float16/float32, any strides (views of a packed QKV buffer).
    k : torch.Tensor
        ``[T, Hkv, D]``, q's dtype and device.
    q_weight, k_weight : torch.Tensor or None
        Both None or both ``[D]``.
    cos_sin_cache : torch.Tensor
        ``[max_position, rotary_dim]``, float32 or q's dtype, on q's device.
    positions : torch.Tensor
        ``[T]``, int32 or int64: each token's position (row of the cache).
    eps, weight_offset, config
        As in :func:`qk_rms_norm` (config: ROWS/num_warps/persistent).
    is_neox : bool
        True: rotate halves (NeoX); False: interleaved pairs (GPT-J).
    rotary_dim : int or None
        Even, at most D (default D). Partial rotary: elements past it are only normalised.
    q_out, k_out : torch.Tensor or None
        As in :func:`qk_rms_norm`.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(q_out, k_out)``: normalised, then rotated.

    Raises
    ------
    TypeError, ValueError
        The errors of :func:`qk_rms_norm`; head_dim above 1024; a cache shape that does not match
        ``rotary_dim``; CPU positions outside ``[0, max_position)``.

    Notes
    -----
    CUDA positions are not checked (no device sync): they are clamped into the cache's
    range, so nothing outside it is read. Weights, cache and positions sharing memory with
    an output are read from private copies. Differentiable in q, k, the weights and the cache.
    """
    if _is_compiling():
        return _tl.traced_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
                                           rotary_dim, weight_offset, q_out, k_out, config)
    r = _rope.fast(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                   q_out, k_out, config)
    if r is not None:
        return r
    eps, weight_offset, rd = _rope.check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
                                              rotary_dim, weight_offset, q_out, k_out, config)
    if validate.grad_needed(q, k, q_weight, k_weight, cos_sin_cache, q_out, k_out):
        return _tl.autograd_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rd,
                                             weight_offset, q_out, k_out)
    return _rope.run(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rd, weight_offset, q_out,
                     k_out, config)
