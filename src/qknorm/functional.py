"""The public ops: documentation and routing.

Each function takes one of three ways: while ``torch.compile`` traces, the ``torch.ops.qknorm``
custom op (``torch_library``); when a tensor argument requires grad under grad mode, the
differentiable custom op (after every argument check); otherwise the eager op in ``ops/``
(a cached-plan fast call for common CUDA calls, else the general call). Nothing is written
before every check has passed.
"""
from __future__ import annotations

import torch

from . import native as _native
from . import torch_library as _tl
from . import validate
from .config import KernelConfig
from .ops import fused_add as _add
from .ops import qk_norm as _qk
from .ops import qk_norm_rope as _rope
from .ops import qk_norm_rope_cache as _cache
from .ops import rms_norm as _rms
from .ops import rms_norm_quant as _quant
from .ops import (EXPRESS_FUSED_ADD as _X_ADD, EXPRESS_PROLOGUE as _X_PROLOGUE, EXPRESS_QK as _X_QK,
                  EXPRESS_QK_ROPE as _X_ROPE, EXPRESS_QUANT as _X_QUANT, EXPRESS_RMS_NORM as _X_RMS)

__all__ = ["rms_norm", "fused_add_rms_norm", "qk_rms_norm", "qk_rms_norm_rope", "rms_norm_quant",
           "fused_add_rms_norm_quant", "qk_norm_rope_cache"]

_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)
_FAKE_KEY = torch._C._TorchDispatchModeKey.FAKE
_Tensor = torch.Tensor


def _faking() -> bool:
    """A ``FakeTensorMode`` is active outside ``torch.compile`` (shape propagation, meta tracing): the call
    takes the traced path (the custom ops and their fake implementations), as under compile: fake tensors
    have no memory to run on or to check for overlap. Asked only after the eager fast paths declined."""
    return torch._C._get_dispatch_mode(_FAKE_KEY) is not None


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
    if not _is_compiling():
        r = _native.call(_X_RMS, x, weight, out, eps, weight_offset, config)
        if r is not NotImplemented:
            return r
        r = _rms.fast(x, weight, eps, weight_offset, out, config)
        if r is not None:
            return r
        if not _faking():
            eps, weight_offset = _rms.check_args(x, weight, eps, weight_offset, out, config)
            if validate.grad_needed(x, weight, out):
                return _tl.autograd_rms_norm(x, weight, eps, weight_offset, out)
            return _rms.run(x, weight, eps, weight_offset, out, config)
        _rms.check_args(x, weight, eps, weight_offset, out, config, memory=False)
        config = None  # shape propagation: checked as eagerly, but no kernel runs
    return _tl.traced_rms_norm(x, weight, eps, weight_offset, out, config)


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
    if not _is_compiling():
        r = _native.call(_X_ADD, x, residual, weight, eps, weight_offset, config)
        if r is not NotImplemented:
            return r
        if _add.fast(x, residual, weight, eps, weight_offset, config):
            return x, residual
        if not _faking():
            eps, weight_offset = _add.check_args(x, residual, weight, eps, weight_offset, config)
            if validate.grad_needed(x, residual, weight):
                return _tl.autograd_fused_add_rms_norm(x, residual, weight, eps, weight_offset)
            return _add.run(x, residual, weight, eps, weight_offset, config)
        _add.check_args(x, residual, weight, eps, weight_offset, config, memory=False)
        config = None  # shape propagation: checked as eagerly, but no kernel runs
    return _tl.traced_fused_add_rms_norm(x, residual, weight, eps, weight_offset, config)


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
    if not _is_compiling():
        r = _native.call(_X_QK, q, k, q_weight, k_weight, q_out, k_out, eps, weight_offset, config)
        if r is not NotImplemented:
            return r
        r = _qk.fast(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
        if r is not None:
            return r
        if not _faking():
            eps, weight_offset = _qk.check_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
            if validate.grad_needed(q, k, q_weight, k_weight, q_out, k_out):
                return _tl.autograd_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out)
            return _qk.run(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
        _qk.check_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config, memory=False)
        config = None  # shape propagation: checked as eagerly, but no kernel runs
    return _tl.traced_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)


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
    if not _is_compiling():
        r = _native.call(_X_ROPE, q, k, q_weight, k_weight, cos_sin_cache, positions, q_out, k_out, eps, is_neox,
                         rotary_dim, weight_offset, config)
        if r is not NotImplemented:
            return r
        r = _rope.fast(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                       q_out, k_out, config)
        if r is not None:
            return r
        if not _faking():
            eps, weight_offset, rd = _rope.check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps,
                                                      is_neox, rotary_dim, weight_offset, q_out, k_out, config)
            if validate.grad_needed(q, k, q_weight, k_weight, cos_sin_cache, q_out, k_out):
                return _tl.autograd_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps,
                                                     is_neox, rd, weight_offset, q_out, k_out)
            return _rope.run(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rd, weight_offset,
                             q_out, k_out, config)
        _rope.check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                         q_out, k_out, config, memory=False)
        config = None  # shape propagation: checked as eagerly, but no kernel runs
    return _tl.traced_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                                       weight_offset, q_out, k_out, config)


def _quant_extra(scale, scale_ub, out, scales_out):
    """The quantised ops' other tensor arguments, named, for ``refuse_grad``."""
    return (("scale", scale), ("scale_ub", scale_ub), ("out", out), ("scales_out", scales_out))


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
                   scale: torch.Tensor | None = None, group_size: int | None = None,
                   out_dtype: torch.dtype = torch.float8_e4m3fn, weight_offset: float = 0.0, scale_ub=None,
                   column_major_scales: bool = False, scale_ue8m0: bool = False, out: torch.Tensor | None = None,
                   scales_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with an 8-bit output (FP8 or INT8) and its scales, for the next GEMM.

    ``n = x / sqrt(mean(x**2) + eps) * (weight + weight_offset)`` in fp32 exactly as
    :func:`rms_norm` computes it (Zhang & Sennrich 2019), then quantised: statically with a
    given ``scale``, or dynamically per token or per group. ``x`` is not modified.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]``, bfloat16/float16/float32, rank >= 1, any strides.
    weight : torch.Tensor or None
        ``[D]``, any float dtype, on x's device.
    eps : float
        Added to the mean square, >= 0.
    scale : torch.Tensor or None
        Static per-tensor quantisation: a 1-element float32 tensor on x's device holding the
        *dequantisation* scale (``x ≈ y * scale``); ``y = saturate(n / scale)`` and the returned
        ``scales`` is this tensor. None: dynamic scales computed here.
    group_size : int or None
        None: one dynamic scale per row (per token). ``g`` (must divide D): one per group of ``g``
        consecutive elements (1 x 128 groups are DeepSeek-V3/DeepGEMM's).
    out_dtype : torch.dtype
        ``torch.float8_e4m3fn`` (qmax 448), ``torch.float8_e5m2`` (qmax 57344) or ``torch.int8``
        (symmetric, qmax 127, round half to even; NaN becomes 0). Saturation is to ±qmax; fp8
        keeps NaN.
    weight_offset : float
        Added to the weight in fp32 (Gemma's ``1 + w``: 1.0). Needs a weight.
    scale_ub : float, torch.Tensor or None
        Dynamic scales only: an upper bound on each scale (a number in fp32's normal range,
        about 1.2e-38 to 3.4e38, or a 1-element float32 tensor, not read on the host: a NaN
        in it bounds nothing).
    column_major_scales : bool
        Dynamic scales only: allocate ``scales`` with stride 1 along the tokens (x's leading
        dims flattened), the layout DeepGEMM's and TMA's grouped GEMMs read.
    scale_ue8m0 : bool
        Dynamic scales only: round each scale up to a power of two (``2**ceil(log2(s))``, the
        UE8M0 scales of Blackwell's MX formats and DeepGEMM) before dividing.
    out : torch.Tensor or None
        The codes: x's shape, ``out_dtype``, x's device, no internal overlap, sharing no memory
        with the inputs. None: a new contiguous tensor.
    scales_out : torch.Tensor or None
        Dynamic scales: float32, shape ``x.shape[:-1] + (D // group_size,)`` (``(..., 1)`` per
        token), any strides; None: a new tensor (row-major, or column-major as asked).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(y, scales)``: the codes (``out_dtype``) and the dequantisation scales (float32),
        ``y * scales ≈ n`` per row / group; for a static scale, ``scales`` is ``scale``.

    Raises
    ------
    TypeError
        A wrong argument type or dtype (x, weight, out_dtype, scale, out, scales_out, the bools).
    ValueError
        Shape mismatches, ``group_size`` not dividing D, static and dynamic arguments mixed, eps < 0,
        outputs (``out``, ``scales_out``, the fused form's ``residual``) overlapping themselves, each
        other, x or residual, or a tensor requiring grad under grad mode (the quantised output is not
        differentiable). Nothing is written on error.

    Aliasing: ``weight``, ``scale`` and ``scale_ub`` sharing memory with a written tensor are read
    from private copies (the values on entry). A static ``scale`` that is a view into ``residual``
    is still returned as ``scales`` itself, so after the call it holds what the fused add wrote there,
    not the scale the codes were divided by.

    Notes
    -----
    Scales: per token/group ``max(amax(|n|), 1e-10) / qmax`` in fp32 (amax over the row or group),
    then clamped to ``scale_ub``, then (UE8M0) rounded up to a power of two; ``y = saturate(n / s)``
    rounded to nearest even in ``out_dtype``. The method is the FP8 recipe of the serving engines
    (vLLM ``rms_norm_dynamic_per_token_quant``, FlashInfer ``rmsnorm_quant``, DeepSeek-V3's 1 x 128
    block scales). CUDA tensors run one fused kernel (bits of ``n`` as :func:`rms_norm` computes
    them before its rounding; one read of each row for static, per-token and power-of-two group
    scales up to D = 16384, a re-read from cache for other group sizes and wider rows), CPU
    tensors the PyTorch path with the same numerics. ``torch.compile`` traces it as the
    ``torch.ops.qknorm.rms_norm_quant`` / ``fused_add_rms_norm_quant_functional`` custom ops.
    Not differentiable.
    """
    if not _is_compiling():  # the eager fast paths first, in this frame (no extra call per eager call)
        r = _native.call(_X_QUANT, x, None, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                         column_major_scales, scale_ue8m0, out, scales_out, _quant.FP8_CAST == "auto")
        if r is not NotImplemented:
            return r
        r = _quant.fast(x, None, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                        column_major_scales, scale_ue8m0, out, scales_out)
        if r is not None:
            return r
    return _quantised(x, None, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
                      scale_ue8m0, out, scales_out)


def fused_add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                             eps: float = 1e-6, *, scale: torch.Tensor | None = None, group_size: int | None = None,
                             out_dtype: torch.dtype = torch.float8_e4m3fn, weight_offset: float = 0.0, scale_ub=None,
                             column_major_scales: bool = False, scale_ue8m0: bool = False,
                             out: torch.Tensor | None = None,
                             scales_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add, RMSNorm and an 8-bit output: ``residual += x`` (stored in residual's
    dtype), then :func:`rms_norm_quant` of the fp32 sum, as :func:`fused_add_rms_norm` does.

    The fused pre-norm step of a decoder layer feeding an FP8/INT8 GEMM. ``x`` is not modified.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]``, bfloat16/float16/float32, any strides.
    residual : torch.Tensor
        x's shape, dtype and device; overwritten with ``x + residual``. Shares no memory with x.
    weight : torch.Tensor or None
        ``[D]``, any float dtype, on x's device.
    eps : float
        Added to the mean square, >= 0.
    scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales, scale_ue8m0, out, scales_out
        As in :func:`rms_norm_quant`; ``out`` and ``scales_out`` also share no memory with ``residual``.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(y, scales)`` of the norm of ``x + residual``, as :func:`rms_norm_quant` returns them.

    Raises
    ------
    TypeError, ValueError
        As :func:`rms_norm_quant` (``residual`` checked as x's partner: same shape, dtype and device, no memory
        shared with x or the outputs). Nothing is written on error, ``residual`` included.

    Aliasing, method and paths: as :func:`rms_norm_quant`. Not differentiable.
    """
    if residual is None:  # (the shared fast paths read None as rms_norm_quant's form)
        raise TypeError("residual must be a torch.Tensor, got NoneType (rms_norm_quant is the form without one)")
    if not _is_compiling():  # the eager fast paths first, in this frame (no extra call per eager call)
        r = _native.call(_X_QUANT, x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                         column_major_scales, scale_ue8m0, out, scales_out, _quant.FP8_CAST == "auto")
        if r is not NotImplemented:
            return r
        r = _quant.fast(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                        column_major_scales, scale_ue8m0, out, scales_out)
        if r is not None:
            return r
    return _quantised(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                      column_major_scales, scale_ue8m0, out, scales_out)


def _quantised(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
               scale_ue8m0, out, scales_out):
    """:func:`rms_norm_quant` (``residual`` None) and :func:`fused_add_rms_norm_quant` once their eager fast paths
    declined: the checks and the general call (or, compiling or faking, the traced custom op)."""
    _quant.refuse_grad(("x", x), ("residual", residual), ("weight", weight),
                       *_quant_extra(scale, scale_ub, out, scales_out))
    traced = _is_compiling() or _faking()
    eps, weight_offset, groups = _quant.check_args(x, residual, weight, eps, scale, group_size, out_dtype,
                                                   weight_offset, scale_ub, column_major_scales, scale_ue8m0, out,
                                                   scales_out, memory=not traced)
    if traced and residual is None:
        return _tl.traced_rms_norm_quant(x, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                                         column_major_scales, scale_ue8m0, out, scales_out)
    if traced:
        return _tl.traced_fused_add_rms_norm_quant(x, residual, weight, eps, scale, group_size, out_dtype,
                                                   weight_offset, scale_ub, column_major_scales, scale_ue8m0, out,
                                                   scales_out)
    return _quant.run(x, residual, weight, eps, scale, groups, out_dtype, weight_offset, scale_ub,
                      column_major_scales, scale_ue8m0, out, scales_out)




def qk_norm_rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, cos_sin_cache: torch.Tensor, positions: torch.Tensor,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, eps: float = 1e-6, *,
                       is_neox: bool = True, rotary_dim: int | None = None, weight_offset: float = 0.0,
                       mrope_section=None, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
                       q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None) -> torch.Tensor:
    """The attention prologue in one launch: per-head RMSNorm of Q and K, rotary embedding
    (RoPE or multimodal mRoPE), and the write of K and V into a paged KV cache.

    Q is normalised and rotated in place (``q_out=None``) or into ``q_out``. K is normalised,
    rotated and written to ``k_cache`` at its token's slot (and to ``k_out`` when given); V
    is written to ``v_cache`` unchanged (FP8 caches: quantised). Nothing else is written:
    ``k``, ``v`` (the packed QKV buffer's K and V regions, unless ``k_out=k``) and every cache
    slot not named by ``slot_mapping`` are left untouched.

    Sources: RMSNorm, Zhang & Sennrich 2019 (arXiv:1910.07467), per head as in Qwen3 / Gemma 3
    QK norm; RoPE, Su et al. 2021 (arXiv:2104.09864), conventions of vLLM's
    ``RotaryEmbedding`` (see :func:`qk_rms_norm_rope`); mRoPE, Qwen2-VL (Wang et al. 2024,
    arXiv:2409.12191) as transformers' ``apply_multimodal_rotary_pos_emb`` and vLLM's
    ``MRotaryEmbedding.forward_native`` define it; the paged KV cache and ``slot_mapping``,
    vLLM's PagedAttention (Kwon et al. 2023, arXiv:2309.06180) and its
    ``reshape_and_cache_flash``.

    Parameters
    ----------
    q : torch.Tensor
        ``[T, Hq, D]``, bfloat16/float16/float32, any strides (the Q view of a packed QKV buffer).
    k : torch.Tensor
        ``[T, Hkv, D]``, q's dtype and device, any strides.
    v : torch.Tensor
        ``[T, Hkv, Dv]``, q's dtype and device, any strides (``Dv`` may differ from ``D``).
    q_weight, k_weight : torch.Tensor or None
        Both None or both ``[D]`` (any float dtype, on q's device).
    cos_sin_cache : torch.Tensor
        ``[max_position, rotary_dim]`` (cos half, then sin half), float32 or q's dtype.
    positions : torch.Tensor
        ``[T]`` int32/int64 (the row of ``cos_sin_cache`` of each token); with ``mrope_section``
        ``[3, T]``: the temporal, height and width positions of each token.
    k_cache : torch.Tensor
        ``[num_blocks, block_size, Hkv, D]``, any strides (an HND cache ``[num_blocks, Hkv,
        block_size, D]`` is passed as its ``.permute(0, 2, 1, 3)`` view), or a flat token pool
        ``[num_slots, Hkv, D]`` (block_size 1). dtype: q's, or ``float8_e4m3fn`` /
        ``float8_e5m2``. Written in place.
    v_cache : torch.Tensor
        ``[num_blocks, block_size, Hkv, Dv]`` (or ``[num_slots, Hkv, Dv]``, as ``k_cache``), any
        strides, q's dtype or FP8. Written in place.
    slot_mapping : torch.Tensor
        ``[T]`` int32/int64 on q's device: token ``t`` goes to block ``s // block_size``, offset
        ``s % block_size`` of both caches (``s = slot_mapping[t]``); a negative slot skips the
        token's cache writes (padding, as vLLM). Two tokens naming one slot: which one is
        stored is unspecified.
    eps : float
        Added to the mean square, >= 0.
    is_neox : bool
        True: rotate halves (NeoX, pairs ``(j, j + R/2)``); False: interleaved (GPT-J, ``(2j, 2j+1)``).
    rotary_dim : int or None
        ``R``, even, at most D (default D). Partial rotary: elements past it are only normalised.
    weight_offset : float
        Added to the weights in fp32 (Gemma's ``1 + w``: 1.0). Needs weights.
    mrope_section : tuple[int, int, int] or None
        Multimodal RoPE (Qwen2-VL / Qwen2.5-VL): ``(t, h, w)`` >= 0 summing to ``R / 2``. Rotary
        frequency ``j`` (``0 <= j < R/2``; its cos at column ``j``, its sin at ``R/2 + j``)
        takes its angle from position row 0 (temporal) for ``j < t``, row 1 (height) for
        ``t <= j < t + h`` and row 2 (width) after; the pairs are those of ``is_neox``. Text
        tokens (three equal rows) get plain RoPE. (The interleaved layout of Qwen3-VL,
        ``mrope_interleaved``, is not this.)
    k_scale, v_scale : torch.Tensor or None
        Needed for an FP8 cache: 1-element float32 tensors on q's device holding the
        *dequantisation* scale: stored = ``saturate(value / scale)`` (fp32 division, saturation
        to the format's largest finite value, round to nearest even, NaN kept). Read on the
        device (no sync; CUDA-graph safe). Ignored for a cache of q's dtype.
    q_out : torch.Tensor or None
        None: Q in place (``q_out = q``); else a tensor of q's shape, dtype and device that is
        ``q`` itself or shares no memory with q, k, v, the caches or ``k_out``.
    k_out : torch.Tensor or None
        None, ``k`` itself (in place), or a tensor of k's shape, dtype and device sharing no
        memory with q, v, the caches or ``q_out``: receives K normalised and rotated.

    Returns
    -------
    torch.Tensor
        ``q_out`` (``q`` itself when ``q_out`` is None): Q normalised, then rotated. Under
        ``torch.compile`` the in-place form writes ``q`` and returns a tensor equal to it
        (not necessarily ``q`` itself).

    Raises
    ------
    TypeError
        A wrong argument type or dtype (message names the argument): activations, weights,
        cache dtypes, positions / slot_mapping not int32/int64, scales not 1-element float32,
        ``mrope_section`` not three ints.
    ValueError
        Shape mismatches (caches ``[num_blocks, block_size, Hkv, D / Dv]``, ``slot_mapping``
        ``[T]``, positions ``[T]`` or ``[3, T]``), a missing scale for an FP8 cache,
        ``mrope_section`` not summing to ``rotary_dim / 2``, outputs or caches overlapping
        each other or the activations, CPU positions outside the cos/sin cache, CPU slots
        ``>= num_slots``, a tensor requiring grad under grad mode (not differentiable).
        Nothing is written on error.

    Notes
    -----
    Numerics: fp32 math, one rounding per stored value; Q's values equal
    :func:`qk_rms_norm_rope`'s. CUDA tensors run one Triton kernel (Q rows, then K rows with
    the V rows of the same token and head); CPU tensors a PyTorch path with the same math.
    On CUDA, slots are not checked on the host (that would need a device sync): a slot
    ``>= num_blocks * block_size`` is skipped like a negative one (no write, nothing out of
    bounds); positions are clamped into the cos/sin cache, as :func:`qk_rms_norm_rope`
    does. Read-only tensors sharing memory with a written one are read from private
    copies. ``torch.compile`` traces it as ``torch.ops.qknorm.qk_norm_rope_cache`` (the
    caches, ``q_out`` and ``k_out`` are its mutated arguments).
    """
    if not _is_compiling():
        r = _native.call(_X_PROLOGUE, q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache,
                         slot_mapping, eps, is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out,
                         k_out)
        if r is not NotImplemented:
            return r
        r = _cache.fast(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps,
                        is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out)
        if r is not None:  # (it declines any tensor requiring grad under grad mode: refused below)
            return r
    _cache.refuse_grad(("q", q), ("k", k), ("v", v), ("q_weight", q_weight), ("k_weight", k_weight),
                       ("cos_sin_cache", cos_sin_cache), ("k_cache", k_cache), ("v_cache", v_cache),
                       ("k_scale", k_scale), ("v_scale", v_scale), ("q_out", q_out), ("k_out", k_out))
    if _is_compiling() or _faking():
        return _tl.traced_qk_norm_rope_cache(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache,
                                             slot_mapping, eps, is_neox, rotary_dim, weight_offset, mrope_section,
                                             k_scale, v_scale, q_out, k_out)
    return _cache.general(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps,
                          is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out)
