"""Host side of ``rms_norm`` (kernel: ``kernels/rms_norm.py``): argument checks, plans, launch.

Public function and documentation: :func:`qknorm.rms_norm` (``functional.py``).
"""
from __future__ import annotations

import torch

from .. import backend, launch, native
from .. import validate
from ..reference import rms_norm_torch
from . import _express
from . import _plan as plans
from ._plan import IN_PLACE, NEW, OTHER, PLANS, Pair

OP = "rms_norm"
_CONTIG = torch.contiguous_format
_grad_on = torch.is_grad_enabled


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
    """The common CUDA call on a cached plan; None: take the general call.

    The key holds everything a plan depends on: every tensor's metadata (``native.describe``,
    which also refuses other types, negated views and, under grad mode, tensors that require
    grad), the output kind and the scalars (their rules ran when the plan was built); per call
    only the data pointers' overlaps are checked (see ``_plan``)."""
    if type(eps) is not float or type(weight_offset) is not float or backend.active == "torch":
        return None
    if out is None:
        ok, d = NEW, native.describe(_grad_on(), x, weight)
    elif out is x:
        ok, d = IN_PLACE, native.describe(_grad_on(), x, weight)
    else:
        ok, d = OTHER, native.describe(_grad_on(), x, weight, out)
    if d is None or (d[1] < 0 and not plans.FAST_ON_CPU):
        return None
    plan = PLANS.fetch((OP, ok, d[0], eps, weight_offset, config), _fast_plan, x, weight, out, ok, eps, weight_offset,
                       config)
    if plan is None:
        return None
    px, pw = d[2], d[3]
    given = (weight, out)
    if ok is NEW:
        out = torch.empty_like(x, memory_format=_CONTIG)
        po = out.data_ptr()
    elif ok is IN_PLACE:
        po = px
    else:
        po = d[4]
        sx, so = plan.spans[0], plan.spans[1]
        if not (px + sx[1] <= po + so[0] or po + so[1] <= px + sx[0] or (po == px and plan.same_layout[0])
                or plans.apart(plan, Pair.X_OUT, px, sx, po, so)):
            return None  # the same view as x is in place; any other overlap: the general call raises
    if pw is None:
        weight, pw = x, px
    elif ok is not NEW:  # a weight sharing memory with the output: the general call copies it
        so, sw = plan.spans[1], plan.spans[2]
        if not (pw + sw[1] <= po + so[0] or po + so[1] <= pw + sw[0]):
            return None
    launch.launch_plan(plan, (px, po, pw), (x, out, weight))
    if ok is not NEW:
        launch.bump_versions((out,))
    if plan.records is not None and _express.wants(plan):
        _express_entry(plan, x, given, eps, weight_offset, config, ok, px, d[3], po)
    return out


def _express_entry(plan, x, given, eps, weight_offset, config, ok, px, pw, po):
    """This call for the express call: arguments ``(x, weight, out, eps, weight_offset, config)``."""
    weight, out = given
    sx, so, sw = plan.spans
    pairs = ((0, sx, 2, so),) if ok is OTHER else ()
    if weight is not None and ok is not NEW:
        pairs += ((1, sw, 2, so),)
    _express.register(_express.RMS_NORM, (x, weight, out, eps, weight_offset, config), plan,
                      (px, pw, po, None, None, None), (0, 2, 0 if weight is None else 1), pairs,
                      bumps=() if ok is NEW else (2,), allocs=((2, 0, x),) if ok is NEW else (),
                      ret=2)


def _fast_plan(x, weight, out, ok, eps, weight_offset, config):
    if not plans.checked(lambda: check_args(x, weight, eps, weight_offset, out, config, memory=False)):
        return None
    if x.numel() == 0 or (not x.is_cuda and not plans.FAST_ON_CPU):
        return None
    o_strides = plans.out_strides(x, out, ok)
    plan = plans.row_plan(launcher(), OP, x, weight, o_strides, config, "y")
    if plan is not None:
        es = x.element_size()
        plan.same_layout = (ok is OTHER and tuple(out.stride()) == tuple(x.stride()), False)
        sw = (0, 0) if weight is None else plans.span(weight.shape, weight.stride(), weight.element_size())
        plan.spans = (plans.span(x.shape, x.stride(), es), plans.span(x.shape, o_strides, es), sw)
        plans.set_pair(plan, Pair.X_OUT, x.shape, x.stride(), x.shape, o_strides, es)
        plan = plans.bind_scalars(plan, eps, weight_offset)
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
    launch.bump_versions((out,))
    return out


def call(x, weight=None, eps=1e-6, weight_offset=0.0, out=None, config=None):
    """Eager ``rms_norm`` without compile or autograd routing (the custom ops' body)."""
    r = fast(x, weight, eps, weight_offset, out, config)
    if r is None:
        eps, weight_offset = check_args(x, weight, eps, weight_offset, out, config)
        r = run(x, weight, eps, weight_offset, out, config)
    return r
