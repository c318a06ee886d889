"""``torch.ops.qknorm.*``: the ops as PyTorch custom ops, for ``torch.compile`` and CUDA graphs.

Registered on import of ``qknorm`` (``ops.py`` imports this module):

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
=====================================  =====================================================

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

No autograd formulas: these are inference kernels. Backward through them raises.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import validate as V

__all__ = ["traced_rms_norm", "traced_fused_add_rms_norm", "traced_qk_rms_norm", "traced_qk_rms_norm_rope"]


def _ops():
    from . import ops
    return ops


def _meta_checks_norm(x, weight, name="x"):
    V.activation(name, x)
    V.weight("weight", weight, x.shape[-1], name, x)


def _meta_checks_qk(q, k, q_weight, k_weight):
    V.activation("q", q)
    V.activation("k", k)
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q and k must have the same head_dim (last dim): q has {d}, k has {k.shape[-1]}")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None")
    V.weight("q_weight", q_weight, d, "q", q)
    V.weight("k_weight", k_weight, d, "k", k)


# --------------------------------------------------------------------------- rms_norm

@torch.library.custom_op("qknorm::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float, weight_offset: float) -> Tensor:
    return _ops().rms_norm(x, weight, eps, weight_offset=weight_offset)


@rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps, weight_offset):
    _meta_checks_norm(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("qknorm::rms_norm_", mutates_args=("x",))
def rms_norm_inplace_op(x: Tensor, weight: Optional[Tensor], eps: float, weight_offset: float) -> None:
    _ops().rms_norm(x, weight, eps, weight_offset=weight_offset, out=x)


@rms_norm_inplace_op.register_fake
def _rms_norm_inplace_fake(x, weight, eps, weight_offset):
    _meta_checks_norm(x, weight)


# --------------------------------------------------------------------------- fused add

@torch.library.custom_op("qknorm::fused_add_rms_norm", mutates_args=("x", "residual"))
def fused_add_rms_norm_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                          weight_offset: float) -> None:
    _ops().fused_add_rms_norm(x, residual, weight, eps, weight_offset=weight_offset)


@fused_add_rms_norm_op.register_fake
def _fused_add_fake(x, residual, weight, eps, weight_offset):
    _meta_checks_norm(x, weight)
    V.activation("residual", residual)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual must have the shape and dtype of x {tuple(x.shape)} {x.dtype}, "
                         f"got {tuple(residual.shape)} {residual.dtype}")


# --------------------------------------------------------------------------- QK norm

@torch.library.custom_op("qknorm::qk_rms_norm", mutates_args=())
def qk_rms_norm_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor], eps: float,
                   weight_offset: float) -> tuple[Tensor, Tensor]:
    return _ops().qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset=weight_offset)


@qk_rms_norm_op.register_fake
def _qk_fake(q, k, q_weight, k_weight, eps, weight_offset):
    _meta_checks_qk(q, k, q_weight, k_weight)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


@torch.library.custom_op("qknorm::qk_rms_norm_", mutates_args=("q", "k"))
def qk_rms_norm_inplace_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                           eps: float, weight_offset: float) -> None:
    _ops().qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset=weight_offset, q_out=q, k_out=k)


@qk_rms_norm_inplace_op.register_fake
def _qk_inplace_fake(q, k, q_weight, k_weight, eps, weight_offset):
    _meta_checks_qk(q, k, q_weight, k_weight)


# --------------------------------------------------------------------------- QK norm + RoPE

def _rope():
    from . import rope
    return rope


@torch.library.custom_op("qknorm::qk_rms_norm_rope", mutates_args=())
def qk_rms_norm_rope_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                        cos_sin_cache: Tensor, positions: Tensor, eps: float, is_neox: bool, rotary_dim: int,
                        weight_offset: float) -> tuple[Tensor, Tensor]:
    return _rope().qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox=is_neox,
                                    rotary_dim=rotary_dim, weight_offset=weight_offset)


@qk_rms_norm_rope_op.register_fake
def _qk_rope_fake(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset):
    _rope()._check_meta(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, weight_offset, is_neox,
                        rotary_dim, None, None)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


@torch.library.custom_op("qknorm::qk_rms_norm_rope_", mutates_args=("q", "k"))
def qk_rms_norm_rope_inplace_op(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor],
                                cos_sin_cache: Tensor, positions: Tensor, eps: float, is_neox: bool,
                                rotary_dim: int, weight_offset: float) -> None:
    _rope().qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox=is_neox,
                             rotary_dim=rotary_dim, weight_offset=weight_offset, q_out=q, k_out=k)


@qk_rms_norm_rope_inplace_op.register_fake
def _qk_rope_inplace_fake(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                          weight_offset):
    _rope()._check_meta(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, weight_offset, is_neox,
                        rotary_dim, q, k)


# --------------------------------------------------------------------------- routing under tracing

def _no_config(config):
    if config is not None:
        raise ValueError("config= is not supported under torch.compile (call the op eagerly to force a "
                         "KernelConfig)")


def traced_rms_norm(x, weight, eps, weight_offset, out, config):
    """``qknorm.rms_norm`` while torch.compile traces: the matching custom op."""
    _no_config(config)
    if out is None:
        return torch.ops.qknorm.rms_norm(x, weight, eps, weight_offset)
    if out is x:
        torch.ops.qknorm.rms_norm_(x, weight, eps, weight_offset)
        return x
    out.copy_(torch.ops.qknorm.rms_norm(x, weight, eps, weight_offset))
    return out


def traced_fused_add_rms_norm(x, residual, weight, eps, weight_offset, config):
    """``qknorm.fused_add_rms_norm`` while torch.compile traces."""
    _no_config(config)
    torch.ops.qknorm.fused_add_rms_norm(x, residual, weight, eps, weight_offset)
    return x, residual


def traced_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config):
    """``qknorm.qk_rms_norm`` while torch.compile traces."""
    _no_config(config)
    if q_out is q and k_out is k:
        torch.ops.qknorm.qk_rms_norm_(q, k, q_weight, k_weight, eps, weight_offset)
        return q, k
    qn, kn = torch.ops.qknorm.qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset)
    if q_out is None:
        q_out = qn
    else:
        q_out.copy_(qn)
    if k_out is None:
        k_out = kn
    else:
        k_out.copy_(kn)
    return q_out, k_out


def traced_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                            weight_offset, q_out, k_out, config):
    """``qknorm.qk_rms_norm_rope`` while torch.compile traces."""
    _no_config(config)
    r = q.shape[-1] if rotary_dim is None else rotary_dim
    if q_out is q and k_out is k:
        torch.ops.qknorm.qk_rms_norm_rope_(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, r,
                                           weight_offset)
        return q, k
    qn, kn = torch.ops.qknorm.qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
                                               r, weight_offset)
    if q_out is None:
        q_out = qn
    else:
        q_out.copy_(qn)
    if k_out is None:
        k_out = kn
    else:
        k_out.copy_(kn)
    return q_out, k_out
