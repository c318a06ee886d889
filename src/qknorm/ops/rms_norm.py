"""Host side of ``rms_norm`` (kernel: ``kernels/rms_norm.py``): argument checks, plans, launch.

Public function and documentation: :func:`qknorm.rms_norm` (``functional.py``).
"""
from __future__ import annotations

import torch

from .. import backend, launch
from .. import validate
from ..reference import rms_norm_torch
from . import _plan as plans
from ._plan import IN_PLACE, NEW, OTHER, PLANS, Pair

OP = "rms_norm"
_Tensor = torch.Tensor
_CONTIG = torch.contiguous_format


def launcher() -> launch.KernelLauncher:
    """The kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("rms_norm", "rms_norm_kernel", ("X", "Y", "W"),
                             ("X", "Y", "W", "eps", "eps_tiny", "w_offset"))


def check_args(x, weight, eps, weight_offset, out, config, *, memory: bool = True):
    """Every rule of ``rms_norm``, in the order users see the errors; ``memory=False`` skips
    the rules about the actual buffers (for plans and fakes). Returns float (eps, weight_offset)."""
    validate.activation("x", x)
    validate.weight("weight", weight, x.shape[-1], "x", x)
    validate.scalars(eps, weight_offset, weight is not None)
    validate.config(config)
    validate.output("out", out, "x", x)
    if out is not None:
        validate.written("out", out)
        if memory and out is not x:
            validate.in_place_or_disjoint("out", out, "x", x)
    return float(eps), float(weight_offset)


def fast(x, weight, eps, weight_offset, out, config):
    """The common CUDA call on a cached plan; None: take the general call."""
    if not (type(x) is _Tensor and (x.is_cuda or plans.FAST_ON_CPU) and backend.active != "torch"
            and plans.fast_scalars(eps, weight_offset, config)) or x.requires_grad or x.is_neg():
        return None
    ok = NEW if out is None else IN_PLACE if out is x else plans.out_kind(out, x)
    if ok is None:
        return None
    try:  # a sparse tensor has no strides: the general call raises its TypeError
        if weight is None:
            if weight_offset != 0.0:
                return None
            key = (OP, ok, x.shape, x.stride(), x.dtype, x.get_device(), config)
        elif type(weight) is _Tensor and not (weight.requires_grad or weight.is_neg()):
            key = (OP, ok, x.shape, x.stride(), x.dtype, x.get_device(), config, weight.shape, weight.stride(),
                   weight.dtype, weight.get_device())
        else:
            return None
        if ok is OTHER:
            key += (out.shape, out.stride(), out.dtype, out.get_device())
    except RuntimeError:
        return None
    plan = PLANS.get(key) or plans.lookup(key, lambda: _fast_plan(x, weight, out, ok, config))
    if plan is None:
        return None
    px = x.data_ptr()
    if ok is NEW:
        out = torch.empty_like(x, memory_format=_CONTIG)
        po = out.data_ptr()
    elif ok is IN_PLACE:
        po = px
    else:
        po = out.data_ptr()
        sx, so = plan.spans[0], plan.spans[1]
        if not (px + sx[1] <= po + so[0] or po + so[1] <= px + sx[0] or (po == px and plan.same_layout[0])
                or plans.apart(plan, Pair.X_OUT, px, sx, po, so)):
            return None  # the same view as x is in place; any other overlap: the general call raises
    if weight is None:
        weight, pw = x, px
    else:
        pw = weight.data_ptr()
        if ok is not NEW:  # a weight sharing memory with the output: the general call copies it
            so, sw = plan.spans[1], plan.spans[2]
            if not (pw + sw[1] <= po + so[0] or po + so[1] <= pw + sw[0]):
                return None
    plans.launch_rows(plan, px, po, pw, eps, weight_offset, (x, out, weight))
    return out


def _fast_plan(x, weight, out, ok, config):
    if not plans.checked(lambda: check_args(x, weight, 0.0, 0.0, out, config, memory=False)):
        return None
    if x.numel() == 0:
        return None
    o_strides = plans.out_strides(x, out, ok)
    plan = plans.row_plan(launcher(), OP, x, weight, o_strides, config, "y")
    if plan is not None:
        es = x.element_size()
        plan.same_layout = (ok is OTHER and tuple(out.stride()) == tuple(x.stride()), False)
        sw = (0, 0) if weight is None else plans.span(weight.shape, weight.stride(), weight.element_size())
        plan.spans = (plans.span(x.shape, x.stride(), es), plans.span(x.shape, o_strides, es), sw)
        plans.set_pair(plan, Pair.X_OUT, x.shape, x.stride(), x.shape, o_strides, es)
    return plan


def run(x, weight, eps: float, weight_offset: float, out, config):
    """The general call, after :func:`check_args` (and without autograd): allocate the
    output, read a weight that shares memory with it from a private copy, then the PyTorch
    path or the kernel."""
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        weight = validate.unaliased(weight, (out,))
    if x.numel() == 0:
        return out
    if not backend.use_triton(x):
        return rms_norm_torch(x, weight, eps, weight_offset, out)
    plans.launch_general_rows(launcher(), OP, "y", x, out, weight, eps, weight_offset, config, writes_x=False)
    return out


def call(x, weight=None, eps=1e-6, weight_offset=0.0, out=None, config=None):
    """Eager ``rms_norm`` without compile or autograd routing (the custom ops' body)."""
    r = fast(x, weight, eps, weight_offset, out, config)
    if r is None:
        eps, weight_offset = check_args(x, weight, eps, weight_offset, out, config)
        r = run(x, weight, eps, weight_offset, out, config)
    return r
