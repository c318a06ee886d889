"""``torch.ops.qknorm.*``: the ops as PyTorch custom ops, for ``torch.compile`` and CUDA graphs.

Registered on import of ``qknorm`` (``functional.py`` imports this module):

=====================================  =====================================================
``qknorm::rms_norm(x, weight, eps, weight_offset) -> Tensor``          functional
``qknorm::rms_norm_(x!, weight, eps, weight_offset) -> ()``           in place on ``x``
``qknorm::fused_add_rms_norm(x!, residual!, weight, eps, weight_offset) -> ()``
                                                                       mutates ``x``, ``residual``
``qknorm::qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset) -> (Tensor, Tensor)``
                                                                       functional
``qknorm::qk_rms_norm_(q!, k!, q_weight, k_weight, eps, weight_offset) -> ()``
                                                                       in place on ``q``, ``k``
``qknorm::qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
rotary_dim, weight_offset) -> (Tensor, Tensor)`` and ``qknorm::qk_rms_norm_rope_(q!, k!, ...) -> ()``
``qknorm::rms_norm_quant(x, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
scale_ub_tensor, column_major_scales, scale_ue8m0) -> (Tensor, Tensor)``
                                                                       functional: codes, scales
``qknorm::rms_norm_quant_out(x, ..., out!, scales_out!) -> ()``        writes ``out``, ``scales_out``
``qknorm::fused_add_rms_norm_quant(x, residual!, weight, ...) -> (Tensor, Tensor)``
                                                                       mutates ``residual``
``qknorm::fused_add_rms_norm_quant_functional(x, residual, ...) -> (Tensor, Tensor, Tensor)``
                                                                       functional: codes, scales, sum
``qknorm::fused_add_rms_norm_quant_out(x, residual!, ..., out!, scales_out!) -> ()``
``qknorm::qk_norm_rope_cache(q, k, v, ..., k_cache!, v_cache!, ..., q_out!, k_out!) -> ()``
                                                                       writes Q, the caches, K
=====================================  =====================================================

The quantised ops take ``scale_ub`` as two optional arguments (a number or a tensor) and
return an empty ``scales`` tensor for a static ``scale`` (an op may not return its input;
``qknorm.rms_norm_quant`` returns ``scale`` itself). They are not differentiable.

Each has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces code
that calls them without graph breaks, and inductor treats them as opaque kernels
(CUDA-graph safe: no host sync, outputs from the caching allocator). The real
implementations are the eager ``qknorm`` functions.

The public ``qknorm.rms_norm`` / ``fused_add_rms_norm`` / ``qk_rms_norm`` route here by
themselves while ``torch.compiler.is_compiling()`` (the ``traced_*`` functions below), and
run eagerly without the dispatcher otherwise: the custom-op layer costs host time that
eager calls need not pay. Under tracing, ``out=`` / ``q_out=`` / ``k_out=`` other than
None or the input itself become a functional op plus ``copy_``, and ``config=`` is
not supported (a ``KernelConfig`` is not an op argument type).

Autograd: the functional ops have backward formulas (composed of PyTorch ops, fp32 math:
``reference.rms_norm_backward``; RoPE's backward is the rotation by the negated angle).
Eager calls whose tensors require grad (under grad mode) run the functional op and copy
the result into the in-place or ``out=`` target with ``copy_``, so PyTorch's own rules
for in-place ops apply (a leaf that requires grad cannot be written in place).

Under tracing every form routes to a *functional* op followed by ``copy_`` into the
target: Inductor's reinplacing of mutating custom ops can alias an input that the op
reads after the mutation (``r = x.clone(); fused_add_rms_norm(r, x)``), so qknorm never
gives it a mutating op to reinplace. Code that calls a mutating ``torch.ops.qknorm`` op itself
in that pattern gets a wrong result from Inductor (pytorch/pytorch#198031: the clone is dropped;
a plain ``torch.library.custom_op`` does the same on torch 2.11 and 2.13); nothing in the op can
see it. Under tracing the written-tensor overlap rules are not checked (fake tensors have no
memory to compare; PyTorch's own ``out=`` ops are the same).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ops import fused_add as _add
from .ops import qk_norm as _qk
from .ops import qk_norm_rope as _rope
from .ops import qk_norm_rope_cache as _prologue
from .ops import rms_norm as _rms
from .ops import rms_norm_quant as _quant
from . import validate
from .reference import refused_write, rms_norm_backward
from .reference_rope import rope_ref

__all__ = ["traced_rms_norm", "traced_fused_add_rms_norm", "traced_qk_rms_norm", "traced_qk_rms_norm_rope",
           "traced_rms_norm_quant", "traced_fused_add_rms_norm_quant", "traced_qk_norm_rope_cache",
           "autograd_rms_norm", "autograd_fused_add_rms_norm", "autograd_qk_rms_norm", "autograd_qk_rms_norm_rope"]


# --------------------------------------------------------------------------- rms_norm

@torch.library.custom_op("qknorm::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float, weight_offset: float) -> Tensor:
    with torch.no_grad():
        return _rms.call(x, weight, eps, weight_offset)


@rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps, weight_offset):
    _rms.check_args(x, weight, eps, weight_offset, None, None, memory=False)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _norm_setup(ctx, inputs, output):
    x, weight, eps, weight_offset = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps, ctx.weight_offset = eps, weight_offset


def _norm_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    dx, dw = rms_norm_backward(x, weight, ctx.eps, ctx.weight_offset, grad, ctx.needs_input_grad[1])
    return dx, dw, None, None


rms_norm_op.register_autograd(_norm_backward, setup_context=_norm_setup)


@torch.library.custom_op("qknorm::rms_norm_", mutates_args=("x",))
def rms_norm_inplace_op(x: Tensor, weight: Optional[Tensor], eps: float, weight_offset: float) -> None:
    _rms.call(x, weight, eps, weight_offset, x)


@rms_norm_inplace_op.register_fake
def _rms_norm_inplace_fake(x, weight, eps, weight_offset):
    _rms.check_args(x, weight, eps, weight_offset, x, None, memory=False)


# --------------------------------------------------------------------------- fused add

@torch.library.custom_op("qknorm::fused_add_rms_norm", mutates_args=("x", "residual"))
def fused_add_rms_norm_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                          weight_offset: float) -> None:
    _add.call(x, residual, weight, eps, weight_offset)


@fused_add_rms_norm_op.register_fake
def _fused_add_fake(x, residual, weight, eps, weight_offset):
    _add.check_args(x, residual, weight, eps, weight_offset, None, memory=False)


def _fused_add_out_fake(x, residual, weight, eps, weight_offset):
    _add.check_out_args(x, residual, weight, eps, weight_offset, None)  # inputs only read: no written-tensor rules


@torch.library.custom_op("qknorm::fused_add_rms_norm_functional", mutates_args=())
def fused_add_rms_norm_functional_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                                     weight_offset: float) -> tuple[Tensor, Tensor]:
    """Functional form: returns ``(norm(x + residual) * w, x + residual)`` without touching the
    inputs: one out-of-place launch into two new tensors (``ops.fused_add.call_out``), no copies."""
    with torch.no_grad():
        return _add.call_out(x, residual, weight, eps, weight_offset)


@fused_add_rms_norm_functional_op.register_fake
def _fused_add_functional_fake(x, residual, weight, eps, weight_offset):
    _fused_add_out_fake(x, residual, weight, eps, weight_offset)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(residual, memory_format=torch.contiguous_format))


def _fused_add_setup(ctx, inputs, output):
    x, residual, weight, eps, weight_offset = inputs
    ctx.save_for_backward(x, residual, weight)
    ctx.eps, ctx.weight_offset = eps, weight_offset


def _fused_add_backward(ctx, grad_y, grad_sum):
    x, residual, weight = ctx.saved_tensors
    s = x.to(torch.float32) + residual.to(torch.float32)  # the norm is of the unrounded fp32 sum
    ds, dw = rms_norm_backward(s, weight, ctx.eps, ctx.weight_offset, grad_y, ctx.needs_input_grad[2])
    if grad_sum is not None:
        ds = ds + grad_sum.to(torch.float32)
    return ds.to(x.dtype), ds.to(residual.dtype), dw, None, None


fused_add_rms_norm_functional_op.register_autograd(_fused_add_backward, setup_context=_fused_add_setup)


# --------------------------------------------------------------------------- QK norm

@torch.library.custom_op("qknorm::qk_rms_norm", mutates_args=())
def qk_rms_norm_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor], eps: float,
                   weight_offset: float) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return _qk.call(q, k, q_weight, k_weight, eps, weight_offset)


@qk_rms_norm_op.register_fake
def _qk_fake(q, k, q_weight, k_weight, eps, weight_offset):
    _qk.check_args(q, k, q_weight, k_weight, eps, weight_offset, None, None, None, memory=False)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _qk_setup(ctx, inputs, output):
    q, k, q_weight, k_weight, eps, weight_offset = inputs
    ctx.save_for_backward(q, k, q_weight, k_weight)
    ctx.eps, ctx.weight_offset = eps, weight_offset


def _qk_backward(ctx, grad_q, grad_k):
    q, k, q_weight, k_weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    dq = dqw = dk = dkw = None
    if grad_q is not None:
        dq, dqw = rms_norm_backward(q, q_weight, ctx.eps, ctx.weight_offset, grad_q, need[2])
    if grad_k is not None:
        dk, dkw = rms_norm_backward(k, k_weight, ctx.eps, ctx.weight_offset, grad_k, need[3])
    return dq, dk, dqw, dkw, None, None


qk_rms_norm_op.register_autograd(_qk_backward, setup_context=_qk_setup)


@torch.library.custom_op("qknorm::qk_rms_norm_", mutates_args=("q", "k"))
def qk_rms_norm_inplace_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                           eps: float, weight_offset: float) -> None:
    _qk.call(q, k, q_weight, k_weight, eps, weight_offset, q, k)


@qk_rms_norm_inplace_op.register_fake
def _qk_inplace_fake(q, k, q_weight, k_weight, eps, weight_offset):
    _qk.check_args(q, k, q_weight, k_weight, eps, weight_offset, q, k, None, memory=False)


# --------------------------------------------------------------------------- QK norm + RoPE

@torch.library.custom_op("qknorm::qk_rms_norm_rope", mutates_args=())
def qk_rms_norm_rope_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                        cos_sin_cache: Tensor, positions: Tensor, eps: float, is_neox: bool, rotary_dim: int,
                        weight_offset: float) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return _rope.call(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                          weight_offset)


@qk_rms_norm_rope_op.register_fake
def _qk_rope_fake(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset):
    _rope.check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                     None, None, None, memory=False)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _rope_setup(ctx, inputs, output):
    q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset = inputs
    ctx.save_for_backward(q, k, q_weight, k_weight, cos_sin_cache, positions)
    ctx.eps, ctx.is_neox, ctx.rotary_dim, ctx.weight_offset = eps, is_neox, rotary_dim, weight_offset


def _rope_backward_one(x, weight, cs, positions, grad, ctx, need_w, need_cs):
    """Gradients of ``rope(norm(x) * w)`` for one of Q/K: the rotation by the negated angle
    takes ``grad`` back to the normalised values, then the norm's backward."""
    r, half = ctx.rotary_dim, ctx.rotary_dim // 2
    pos = positions.clamp(0, cs.shape[0] - 1).long()  # as the kernel reads the cache
    cs32 = cs.to(torch.float32)
    inverse = torch.cat((cs32[:, :half], -cs32[:, half:r]), dim=1)
    g_norm = rope_ref(grad, inverse, pos, r, ctx.is_neox, torch.float32)
    dx, dw = rms_norm_backward(x, weight, ctx.eps, ctx.weight_offset, g_norm, need_w)
    dcs = None
    if need_cs:
        from .reference import rms_norm_ref
        y = rms_norm_ref(x, weight, ctx.eps, ctx.weight_offset)  # [T, H, D] fp32, before rotation
        g = grad.to(torch.float32)
        if ctx.is_neox:
            y1, y2, g1, g2 = y[..., :half], y[..., half:r], g[..., :half], g[..., half:r]
        else:
            y1, y2, g1, g2 = y[..., 0:r:2], y[..., 1:r:2], g[..., 0:r:2], g[..., 1:r:2]
        d_cos = (g1 * y1 + g2 * y2).sum(dim=1)  # [T, half]
        d_sin = (g2 * y1 - g1 * y2).sum(dim=1)
        dcs = torch.zeros(cs.shape, dtype=torch.float32, device=cs.device)
        dcs.index_add_(0, pos, torch.cat((d_cos, d_sin), dim=1))
    return dx, dw, dcs


def _rope_backward(ctx, grad_q, grad_k):
    q, k, q_weight, k_weight, cs, positions = ctx.saved_tensors
    need = ctx.needs_input_grad
    dq = dk = dqw = dkw = dcs = None
    if grad_q is not None:
        dq, dqw, dcs = _rope_backward_one(q, q_weight, cs, positions, grad_q, ctx, need[2], need[4])
    if grad_k is not None:
        dk, dkw, dcs_k = _rope_backward_one(k, k_weight, cs, positions, grad_k, ctx, need[3], need[4])
        if dcs_k is not None:
            dcs = dcs_k if dcs is None else dcs + dcs_k
    if dcs is not None:
        dcs = dcs.to(cs.dtype)
    return dq, dk, dqw, dkw, dcs, None, None, None, None, None


qk_rms_norm_rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)


@torch.library.custom_op("qknorm::qk_rms_norm_rope_", mutates_args=("q", "k"))
def qk_rms_norm_rope_inplace_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                                cos_sin_cache: Tensor, positions: Tensor, eps: float, is_neox: bool,
                                rotary_dim: int, weight_offset: float) -> None:
    _rope.call(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset, q, k)


@qk_rms_norm_rope_inplace_op.register_fake
def _qk_rope_inplace_fake(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                          weight_offset):
    _rope.check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                     q, k, None, memory=False)


# --------------------------------------------------------------------------- quantised norms

def _ub(scale_ub: Optional[float], scale_ub_tensor: Optional[Tensor]):
    """The quantised ops' one ``scale_ub`` from the schema's two slots (a number or a tensor, not both)."""
    if scale_ub_tensor is None:
        return scale_ub
    if scale_ub is not None:
        raise ValueError(f"scale_ub is given twice, as the number {scale_ub!r} and as scale_ub_tensor: pass one")
    return scale_ub_tensor


def _no_scales(x: Tensor) -> Tensor:
    """The ``scales`` output of a static-scale call: empty (the caller has ``scale``)."""
    return torch.empty((0,), dtype=torch.float32, device=x.device)


def _quant_fake(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                column_major_scales, scale_ue8m0):
    _, _, n_groups = _quant.check_args(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset,
                                       _ub(scale_ub, scale_ub_tensor), column_major_scales, scale_ue8m0, None, None,
                                       memory=False)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if scale is not None:
        return y, _no_scales(x)
    return y, _quant.new_scales(x.shape, x.device, n_groups, column_major_scales)


def _quant_body(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                column_major_scales, scale_ue8m0):
    """``(codes, scales)`` of the functional quantised ops (residual, when given, written with the sum)."""
    with torch.no_grad():
        y, s = _quant.call(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset,
                           _ub(scale_ub, scale_ub_tensor), column_major_scales, scale_ue8m0)
    return y, (_no_scales(x) if scale is not None else s)


def _quant_out_checks(x, residual, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor,
                      scale_ue8m0, out, scales_out):
    if scale is None and scales_out is None:
        raise ValueError("scales_out is needed for dynamic scales (scale=None) in the out= form")
    _quant.check_args(x, residual, weight, eps, scale, group_size, out.dtype, weight_offset,
                      _ub(scale_ub, scale_ub_tensor), False, scale_ue8m0, out, scales_out, memory=False)


@torch.library.custom_op("qknorm::rms_norm_quant", mutates_args=())
def rms_norm_quant_op(x: Tensor, weight: Optional[Tensor], eps: float, scale: Optional[Tensor],
                      group_size: Optional[int], out_dtype: torch.dtype, weight_offset: float,
                      scale_ub: Optional[float], scale_ub_tensor: Optional[Tensor], column_major_scales: bool,
                      scale_ue8m0: bool) -> tuple[Tensor, Tensor]:
    return _quant_body(x, None, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                       column_major_scales, scale_ue8m0)


@rms_norm_quant_op.register_fake
def _rms_norm_quant_fake(x, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                         column_major_scales, scale_ue8m0):
    return _quant_fake(x, None, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                       column_major_scales, scale_ue8m0)


@torch.library.custom_op("qknorm::rms_norm_quant_out", mutates_args=("out", "scales_out"))
def rms_norm_quant_out_op(x: Tensor, weight: Optional[Tensor], eps: float, scale: Optional[Tensor],
                          group_size: Optional[int], weight_offset: float, scale_ub: Optional[float],
                          scale_ub_tensor: Optional[Tensor], scale_ue8m0: bool, out: Tensor,
                          scales_out: Optional[Tensor]) -> None:
    """Codes into ``out`` (its dtype is the output format), scales into ``scales_out`` (None
    only with a static ``scale``)."""
    _quant_out_checks(x, None, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor, scale_ue8m0,
                      out, scales_out)
    _quant.call(x, None, weight, eps, scale, group_size, out.dtype, weight_offset, _ub(scale_ub, scale_ub_tensor),
                False, scale_ue8m0, out, scales_out)


@rms_norm_quant_out_op.register_fake
def _rms_norm_quant_out_fake(x, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor, scale_ue8m0,
                             out, scales_out):
    _quant_out_checks(x, None, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor, scale_ue8m0,
                      out, scales_out)


@torch.library.custom_op("qknorm::fused_add_rms_norm_quant", mutates_args=("residual",))
def fused_add_rms_norm_quant_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                                scale: Optional[Tensor], group_size: Optional[int], out_dtype: torch.dtype,
                                weight_offset: float, scale_ub: Optional[float], scale_ub_tensor: Optional[Tensor],
                                column_major_scales: bool, scale_ue8m0: bool) -> tuple[Tensor, Tensor]:
    return _quant_body(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                       scale_ub_tensor, column_major_scales, scale_ue8m0)


@fused_add_rms_norm_quant_op.register_fake
def _fused_add_quant_fake(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                          scale_ub_tensor, column_major_scales, scale_ue8m0):
    return _quant_fake(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                       scale_ub_tensor, column_major_scales, scale_ue8m0)


@torch.library.custom_op("qknorm::fused_add_rms_norm_quant_functional", mutates_args=())
def fused_add_rms_norm_quant_functional_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                                           scale: Optional[Tensor], group_size: Optional[int], out_dtype: torch.dtype,
                                           weight_offset: float, scale_ub: Optional[float],
                                           scale_ub_tensor: Optional[Tensor], column_major_scales: bool,
                                           scale_ue8m0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Functional form: ``(codes, scales, x + residual)`` without touching the inputs."""
    validate.tensor("residual", residual)  # (None would pass the schema here and read as the plain form)
    r = residual.clone(memory_format=torch.contiguous_format)
    y, s = _quant_body(x, r, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, scale_ub_tensor,
                       column_major_scales, scale_ue8m0)
    return y, s, r


@fused_add_rms_norm_quant_functional_op.register_fake
def _fused_add_quant_functional_fake(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                                     scale_ub_tensor, column_major_scales, scale_ue8m0):
    y, s = _quant_fake(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                       scale_ub_tensor, column_major_scales, scale_ue8m0)
    return y, s, torch.empty_like(residual, memory_format=torch.contiguous_format)


@torch.library.custom_op("qknorm::fused_add_rms_norm_quant_out", mutates_args=("residual", "out", "scales_out"))
def fused_add_rms_norm_quant_out_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                                    scale: Optional[Tensor], group_size: Optional[int], weight_offset: float,
                                    scale_ub: Optional[float], scale_ub_tensor: Optional[Tensor], scale_ue8m0: bool,
                                    out: Tensor, scales_out: Optional[Tensor]) -> None:
    """``residual += x``; codes of the norm of the sum into ``out``, scales into ``scales_out``."""
    _quant_out_checks(x, residual, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor,
                      scale_ue8m0, out, scales_out)
    _quant.call(x, residual, weight, eps, scale, group_size, out.dtype, weight_offset,
                _ub(scale_ub, scale_ub_tensor), False, scale_ue8m0, out, scales_out)


@fused_add_rms_norm_quant_out_op.register_fake
def _fused_add_quant_out_fake(x, residual, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor,
                              scale_ue8m0, out, scales_out):
    _quant_out_checks(x, residual, weight, eps, scale, group_size, weight_offset, scale_ub, scale_ub_tensor,
                      scale_ue8m0, out, scales_out)


# --------------------------------------------------------------------------- QK norm + RoPE + KV-cache write

@torch.library.custom_op("qknorm::qk_norm_rope_cache", mutates_args=("k_cache", "v_cache", "q_out", "k_out"))
def qk_norm_rope_cache_op(q: Tensor, k: Tensor, v: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                          cos_sin_cache: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                          slot_mapping: Tensor, eps: float, is_neox: bool, rotary_dim: int, weight_offset: float,
                          mrope_section: Optional[list[int]], k_scale: Optional[Tensor], v_scale: Optional[Tensor],
                          q_out: Tensor, k_out: Optional[Tensor]) -> None:
    """``qknorm.qk_norm_rope_cache`` into ``q_out`` (``q`` itself for in place) and ``k_out``
    (None: none), writing the caches. Not differentiable."""
    _prologue.call(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps,
                   is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out)


@qk_norm_rope_cache_op.register_fake
def _qk_norm_rope_cache_fake(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping,
                             eps, is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out):
    _prologue.check_args(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps,
                         is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out,
                         memory=False)


# --------------------------------------------------------------------------- routing under tracing

def _no_config(config):
    if config is not None:
        raise ValueError("config= is not supported under torch.compile (call the op eagerly to force a "
                         "KernelConfig)")


def _into(target, value):
    """``value`` written into ``target`` (None: ``value`` itself) with ``copy_``."""
    if target is None:
        return value
    target.copy_(value)
    return target


def _kept_for_backward(writes: bool, weights, *ts):
    """The activations ``ts`` as a traced functional op should read them: clones when the call
    then writes targets (``writes``: in place or ``out=``, which may share memory with them) and
    autograd records the op, so that the tensors it saves for its backward are not modified
    afterwards (PyTorch refuses that); else ``ts`` themselves."""
    if not writes or not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (*ts, *weights)):
        return ts
    return tuple(t.clone() for t in ts)


def traced_rms_norm(x, weight, eps, weight_offset, out, config):
    """``qknorm.rms_norm`` while torch.compile traces: the functional custom op, then ``copy_``."""
    _no_config(config)
    (x,) = _kept_for_backward(out is not None, (weight,), x)
    return _into(out, torch.ops.qknorm.rms_norm(x, weight, eps, weight_offset))


def traced_fused_add_rms_norm(x, residual, weight, eps, weight_offset, config):
    """``qknorm.fused_add_rms_norm`` while torch.compile traces."""
    _no_config(config)
    xi, ri = _kept_for_backward(True, (weight,), x, residual)
    y, s = torch.ops.qknorm.fused_add_rms_norm_functional(xi, ri, weight, eps, weight_offset)
    residual.copy_(s)
    x.copy_(y)
    return x, residual


def traced_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config):
    """``qknorm.qk_rms_norm`` while torch.compile traces."""
    _no_config(config)
    qi, ki = _kept_for_backward(q_out is not None or k_out is not None, (q_weight, k_weight), q, k)
    qn, kn = torch.ops.qknorm.qk_rms_norm(qi, ki, q_weight, k_weight, eps, weight_offset)
    return _into(q_out, qn), _into(k_out, kn)


def traced_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                            weight_offset, q_out, k_out, config):
    """``qknorm.qk_rms_norm_rope`` while torch.compile traces."""
    _no_config(config)
    r = q.shape[-1] if rotary_dim is None else rotary_dim
    qi, ki = _kept_for_backward(q_out is not None or k_out is not None, (q_weight, k_weight, cos_sin_cache), q, k)
    qn, kn = torch.ops.qknorm.qk_rms_norm_rope(qi, ki, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
                                               r, weight_offset)
    return _into(q_out, qn), _into(k_out, kn)


def traced_qk_norm_rope_cache(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping,
                              eps, is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out):
    """``qknorm.qk_norm_rope_cache`` while torch.compile traces: the mutating custom op with
    fresh Q/K outputs (so it never writes a tensor it also reads), then ``copy_`` into the
    targets; the caches are its mutated arguments (never read by it)."""
    r = q.shape[-1] if rotary_dim is None else rotary_dim
    sections = None if mrope_section is None else [int(s) for s in mrope_section]
    qn = torch.empty_like(q, memory_format=torch.contiguous_format)
    kn = None if k_out is None else torch.empty_like(k, memory_format=torch.contiguous_format)
    torch.ops.qknorm.qk_norm_rope_cache(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache,
                                        slot_mapping, eps, is_neox, r, weight_offset, sections, k_scale, v_scale, qn,
                                        kn)
    if k_out is not None:
        k_out.copy_(kn)
    if q_out is None:  # in place on q: return the fresh result, not the mutated input view (on torch 2.11,
        q.copy_(qn)    # aot_eager returned the view's whole base buffer for it: a [T, (Hq+2Hkv)*D] tensor)
        return qn
    q_out.copy_(qn)
    return q_out


def _ub_args(scale_ub):
    """A checked ``scale_ub`` (None, a number or a tensor) as the ops' two arguments."""
    if isinstance(scale_ub, torch.Tensor):
        return None, scale_ub
    return (None if scale_ub is None else float(scale_ub)), None


def traced_rms_norm_quant(x, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
                          scale_ue8m0, out, scales_out):
    """``qknorm.rms_norm_quant`` while torch.compile traces (arguments checked): the functional
    custom op, then ``copy_`` into ``out`` / ``scales_out``."""
    ub, ub_t = _ub_args(scale_ub)
    g = None if group_size is None else int(group_size)
    y, s = torch.ops.qknorm.rms_norm_quant(x, weight, eps, scale, g, out_dtype, weight_offset, ub, ub_t,
                                           column_major_scales, scale_ue8m0)
    return _into(out, y), (scale if scale is not None else _into(scales_out, s))


def traced_fused_add_rms_norm_quant(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                                    column_major_scales, scale_ue8m0, out, scales_out):
    """``qknorm.fused_add_rms_norm_quant`` while torch.compile traces (arguments checked)."""
    ub, ub_t = _ub_args(scale_ub)
    g = None if group_size is None else int(group_size)
    y, s, r = torch.ops.qknorm.fused_add_rms_norm_quant_functional(x, residual, weight, eps, scale, g, out_dtype,
                                                                   weight_offset, ub, ub_t, column_major_scales,
                                                                   scale_ue8m0)
    residual.copy_(r)
    return _into(out, y), (scale if scale is not None else _into(scales_out, s))


# --------------------------------------------------------------------------- eager calls that need autograd
#
# The general path of each op sends calls here when a tensor requires grad under grad
# mode (arguments already checked). In place targets get the functional result by
# ``copy_``; the op reads a clone of them, so its saved inputs are not modified.

def _pre(t, target):
    return t.clone() if target is t else t


def _recordable(*targets):
    """A call that records autograd cannot write an inference tensor outside inference mode, nor a leaf that
    requires grad or a view of one (PyTorch refuses the ``copy_``): refused before anything runs, not after the
    first of several targets was written."""
    for name, t in targets:
        if refused_write(t):
            raise RuntimeError(f"{name} is an inference tensor: a call whose tensors require grad cannot "
                               "write it outside torch.inference_mode() (PyTorch refuses that in-place write)")
        if t is not None and t.requires_grad:
            base = t if t._base is None else t._base
            if base.is_leaf:
                what = "a leaf tensor" if base is t else "a view of a leaf tensor"
                raise RuntimeError(f"{name} is {what} that requires grad: PyTorch refuses an in-place write of it "
                                   "while grad mode is on (write a clone, or call under torch.no_grad())")


def autograd_rms_norm(x, weight, eps, weight_offset, out):
    _recordable(("out", out))
    return _into(out, torch.ops.qknorm.rms_norm(_pre(x, out), weight, eps, weight_offset))


def autograd_fused_add_rms_norm(x, residual, weight, eps, weight_offset):
    _recordable(("x", x), ("residual", residual))
    y, s = torch.ops.qknorm.fused_add_rms_norm_functional(x.clone(), residual.clone(), weight, eps, weight_offset)
    residual.copy_(s)
    x.copy_(y)
    return x, residual


def autograd_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out):
    _recordable(("q_out", q_out), ("k_out", k_out))
    qn, kn = torch.ops.qknorm.qk_rms_norm(_pre(q, q_out), _pre(k, k_out), q_weight, k_weight, eps, weight_offset)
    return _into(q_out, qn), _into(k_out, kn)


def autograd_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                              weight_offset, q_out, k_out):
    _recordable(("q_out", q_out), ("k_out", k_out))
    qn, kn = torch.ops.qknorm.qk_rms_norm_rope(_pre(q, q_out), _pre(k, k_out), q_weight, k_weight, cos_sin_cache,
                                               positions, eps, is_neox, rotary_dim, weight_offset)
    return _into(q_out, qn), _into(k_out, kn)
