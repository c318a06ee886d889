"""The ``torch.compile`` path: the local steps as ``torch.library`` custom ops around a
functional all-reduce, so one call traces into one graph (``fullgraph=True`` works).

``qknorm::tp_partial_sumsq`` and ``qknorm::tp_scale`` have fake implementations; the
collective is ``torch.distributed._functional_collectives.all_reduce``
(``_c10d_functional.all_reduce`` + ``wait_tensor`` in the graph). Outputs are new
tensors; the API copies them into the caller's outputs. Eager calls do not come here.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .. import validate
from . import local


def _cfg_list(config):
    return None if config is None else [config.rows, config.block_d, config.num_warps]


def _cfg_from(cfg: Optional[list]):
    if cfg is None:
        return None
    from ..config import KernelConfig
    return KernelConfig(rows=cfg[0], block_d=cfg[1], num_warps=cfg[2])


def _n_rows(a, b) -> int:
    return local.rows(a) + (local.rows(b) if b is not None else 0)


@torch.library.custom_op("qknorm::tp_partial_sumsq", mutates_args=())
def _op_partial_sumsq(a: torch.Tensor, b: Optional[torch.Tensor], config: Optional[list[int]] = None) -> torch.Tensor:
    """Packed fp64 row sums of squares ``[rows_a + rows_b]`` (traceable local step 1)."""
    sums = torch.empty(_n_rows(a, b), dtype=torch.float64, device=a.device)
    if sums.numel():
        local.partial_sums(a, b, sums, local.kernel_plan(a, None, b, None, _cfg_from(config)))
    return sums


@_op_partial_sumsq.register_fake
def _(a, b, config=None):
    return a.new_empty((_n_rows(a, b),), dtype=torch.float64)


@torch.library.custom_op("qknorm::tp_scale", mutates_args=())
def _op_scale(sums: torch.Tensor, a: torch.Tensor, wa: Optional[torch.Tensor], a_full: int,
              b: Optional[torch.Tensor], wb: Optional[torch.Tensor], b_full: int,
              eps: float, weight_offset: float, config: Optional[list[int]] = None) -> list[torch.Tensor]:
    """New contiguous outputs ``[y_a]`` or ``[y_a, y_b]`` scaled by the reduced sums (step 3)."""
    ya = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    yb = None if b is None else torch.empty(b.shape, dtype=b.dtype, device=b.device)
    if sums.numel():
        plan = local.kernel_plan(a, ya, b, yb, _cfg_from(config))
        local.scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums, plan)
    return [ya] if b is None else [ya, yb]


@_op_scale.register_fake
def _(sums, a, wa, a_full, b, wb, b_full, eps, weight_offset, config=None):
    ya = a.new_empty(a.shape)
    return [ya] if b is None else [ya, b.new_empty(b.shape)]


def traced(group, a, wa, a_full, b, wb, b_full, eps, weight_offset, check, config):
    """The compile path of both ops: returns ``[y_a]`` or ``[y_a, y_b]`` (new tensors)."""
    if check:
        raise RuntimeError("check=True is eager-only (it needs a host sync); make one eager call "
                           "with check=True before compiling")
    if validate.grad_needed(a, wa, b, wb):
        raise RuntimeError("qknorm.distributed ops are not differentiable under torch.compile yet: an input "
                           "requires grad. Call them eagerly (they are differentiable there) or under "
                           "torch.no_grad()")
    from torch.distributed import _functional_collectives as funcol
    cfg = _cfg_list(config)
    sums = torch.ops.qknorm.tp_partial_sumsq(a, b, cfg)
    sums = funcol.all_reduce(sums, "sum", group if group is not None else dist.group.WORLD)
    return torch.ops.qknorm.tp_scale(sums, a, wa, a_full, b, wb, b_full, float(eps), float(weight_offset), cfg)
