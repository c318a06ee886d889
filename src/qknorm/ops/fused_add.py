"""Host side of ``fused_add_rms_norm`` (kernel: ``kernels/fused_add.py``): checks, plans, launch.

Public function and documentation: :func:`qknorm.fused_add_rms_norm` (``functional.py``).
"""
from __future__ import annotations

import torch

from .. import backend, launch, native, layout
from .. import validate
from ..reference import fused_add_rms_norm_torch
from . import _express
from . import _plan as plans
from ._plan import PLANS, Pair

OP = "fused_add_rms_norm"
_grad_on = torch.is_grad_enabled


def launcher() -> launch.KernelLauncher:
    """The kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("fused_add", "fused_add_rms_norm_kernel", ("X", "R", "W"),
                             ("X", "R", "W", "eps", "eps_tiny", "w_offset"))


def check_args(x, residual, weight, eps, weight_offset, config, *, memory: bool = True):
    """Every rule of ``fused_add_rms_norm`` in the order users see the errors; ``memory=False``
    skips the rule about the actual buffers (for plans and fakes). Returns float (eps, weight_offset)."""
    validate.activation("x", x)
    validate.residual(x, residual)
    validate.weight("weight", weight, x.shape[-1], "x", x)
    validate.scalars(eps, weight_offset, weight is not None)
    validate.config(config)
    validate.written("x", x)
    validate.written("residual", residual)
    if memory:
        validate.disjoint("x", x, "residual", residual)
    return float(eps), float(weight_offset)


def fast(x, residual, weight, eps, weight_offset, config) -> bool:
    """The common CUDA call on a cached plan; False: take the general call (see ``rms_norm.fast``)."""
    if type(eps) is not float or type(weight_offset) is not float or backend.active == "torch":
        return False
    d = native.describe(_grad_on(), x, residual, weight)
    if d is None or (d[1] < 0 and not plans.FAST_ON_CPU):
        return False
    plan = PLANS.fetch((OP, d[0], eps, weight_offset, config), _fast_plan, x, residual, weight, eps, weight_offset,
                       config)
    if plan is None:
        return False
    px, pr, pw = d[2], d[3], d[4]
    sx, sr, sw = plan.spans
    if not (px + sx[1] <= pr + sr[0] or pr + sr[1] <= px + sx[0] or plans.apart(plan, Pair.X_OUT, px, sx, pr, sr)):
        return False
    w = weight
    if pw is None:
        w, pw = x, px
    elif not ((pw + sw[1] <= px + sx[0] or px + sx[1] <= pw + sw[0])
              and (pw + sw[1] <= pr + sr[0] or pr + sr[1] <= pw + sw[0])):
        return False  # a weight sharing memory with x or residual: the general call copies it
    launch.launch_plan(plan, (px, pr, pw), (x, residual, w))
    launch.bump_versions((x, residual))
    if plan.records is not None and _express.wants(plan):
        # the express call's entry: arguments (x, residual, weight, eps, weight_offset, config)
        pairs = ((0, sx, 1, sr),) if weight is None else ((0, sx, 1, sr), (2, sw, 0, sx), (2, sw, 1, sr))
        _express.register(_express.FUSED_ADD, (x, residual, weight, eps, weight_offset, config), plan,
                          (px, pr, d[4], None, None, None), (0, 1, 0 if weight is None else 2), pairs,
                          bumps=(0, 1), ret=(0, 1))
    return True


def _fast_plan(x, residual, weight, eps, weight_offset, config):
    if not plans.checked(lambda: check_args(x, residual, weight, eps, weight_offset, config, memory=False)) \
            or x.numel() == 0 or (not x.is_cuda and not plans.FAST_ON_CPU):
        return None
    plan = plans.row_plan(launcher(), OP, x, weight, residual.stride(), config, "r")
    if plan is not None:
        es = x.element_size()
        sw = (0, 0) if weight is None else plans.span(weight.shape, weight.stride(), weight.element_size())
        plan.spans = (plans.span(x.shape, x.stride(), es), plans.span(residual.shape, residual.stride(), es), sw)
        plans.set_pair(plan, Pair.X_OUT, x.shape, x.stride(), residual.shape, residual.stride(), es)
        plan = plans.bind_scalars(plan, eps, weight_offset)
    return plan


def run(x, residual, weight, eps: float, weight_offset: float, config):
    """The general call, after :func:`check_args` (and without autograd)."""
    weight = validate.unaliased(weight, (x, residual))
    if x.numel() == 0:
        return x, residual
    if not backend.use_triton(x):
        return fused_add_rms_norm_torch(x, residual, weight, eps, weight_offset)
    plans.launch_general_rows(launcher(), OP, "r", x, residual, weight, eps, weight_offset, config, writes_x=True)
    launch.bump_versions((x, residual))
    return x, residual


def call(x, residual, weight=None, eps=1e-6, weight_offset=0.0, config=None):
    """Eager ``fused_add_rms_norm`` without compile or autograd routing (the custom ops' body)."""
    if fast(x, residual, weight, eps, weight_offset, config):
        return x, residual
    eps, weight_offset = check_args(x, residual, weight, eps, weight_offset, config)
    return run(x, residual, weight, eps, weight_offset, config)


# --------------------------------------------------------------------------- out of place

OUT_OP = "fused_add_rms_norm_out"


def out_launcher() -> launch.KernelLauncher:
    """The out-of-place kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("fused_add", "fused_add_rms_norm_out_kernel", ("X", "R", "Y", "RO", "W"),
                                 ("X", "R", "Y", "RO", "W", "eps", "eps_tiny", "w_offset"))


def check_out_args(x, residual, weight, eps, weight_offset, config):
    """The rules of the out-of-place form: ``fused_add_rms_norm``'s, less those about written
    tensors (x and residual are only read; they may even share memory)."""
    validate.activation("x", x)
    validate.residual(x, residual)
    validate.weight("weight", weight, x.shape[-1], "x", x)
    validate.scalars(eps, weight_offset, weight is not None)
    validate.config(config)
    return float(eps), float(weight_offset)


def _out_plan(x, residual, weight, config, bind=None):
    d = x.shape[-1]
    contig = plans.contig_strides(x.shape)
    lay = plans.kernel_layout(x.shape, d, x.stride(), residual.stride(), contig, contig)
    if lay is None or not plans.weight_ok(weight, d):
        return None
    cfg = plans.choose(OP, x.dtype, d, lay.n_rows, x.device, config)
    (_, n1, n2), (xs, rs, ys, os_) = lay.sizes, lay.strides
    plan = plans.make_plan(out_launcher(), cfg, plans.blocks(lay.n_rows, cfg), x.device,
                           (x.dtype, weight.dtype if weight is not None else x.dtype),
                           n_rows=lay.n_rows, D=d, N1=n1, N2=n2, **plans.strides_named("x", xs),
                           **plans.strides_named("r", rs), **plans.strides_named("y", ys),
                           **plans.strides_named("o", os_), ws=weight.stride(0) if weight is not None else 0,
                           HAS_WEIGHT=weight is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d,
                           CHUNKED=cfg.chunk_mode(d))
    if bind is not None:
        plan = plans.bind_scalars(plan, *bind)
    return plan


def _fast_out_plan(x, residual, weight, eps, weight_offset, config):
    if not plans.checked(lambda: check_out_args(x, residual, weight, eps, weight_offset, config)) \
            or x.numel() == 0 or (not x.is_cuda and not plans.FAST_ON_CPU):
        return None
    return _out_plan(x, residual, weight, config, (eps, weight_offset))


def _launch_out(plan, x, residual, weight, y, ro, scalars=None):
    """Launch the out-of-place kernel: a fast call's plan (scalars bound), or with ``scalars``
    ``(eps, weight_offset)`` a general call's (``plans.launch_general``)."""
    w = weight if weight is not None else x
    ptrs = (x.data_ptr(), residual.data_ptr(), y.data_ptr(), ro.data_ptr(), w.data_ptr())
    tensors = (x, residual, y, ro, w)
    if scalars is None:
        launch.launch_plan(plan, ptrs, tensors)
    else:
        plans.launch_general(plan, ptrs, *scalars, tensors)


def call_out(x, residual, weight=None, eps=1e-6, weight_offset=0.0, config=None):
    """``(norm(x + residual) * w, x + residual)`` in two new contiguous tensors, x and residual
    only read: the numerics of ``fused_add_rms_norm`` (the norm of the fp32 sum; the sum
    rounded once to residual's dtype), one launch, no copies. The body of the functional
    custom op (what ``torch.compile`` runs for ``fused_add_rms_norm``) and of the Hugging Face
    integration's fused residual. No autograd here."""
    if type(eps) is float and type(weight_offset) is float and backend.active != "torch":
        d = native.describe(False, x, residual, weight)  # the custom op's body: autograd is outside
        if d is not None and (d[1] >= 0 or plans.FAST_ON_CPU):
            plan = PLANS.fetch((OUT_OP, d[0], eps, weight_offset, config), _fast_out_plan, x, residual, weight, eps,
                               weight_offset, config)
            if plan is not None:
                y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
                ro = torch.empty(x.shape, dtype=x.dtype, device=x.device)
                _launch_out(plan, x, residual, weight, y, ro)
                return y, ro
    eps, weight_offset = check_out_args(x, residual, weight, eps, weight_offset, config)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ro = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y, ro
    if not backend.use_triton(x):
        y.copy_(x)
        ro.copy_(residual)
        return fused_add_rms_norm_torch(y, ro, weight, eps, weight_offset)
    weight = plans.addressable_weight(weight, x.shape[-1])
    if plans.n_rows(x) > layout.ROW_LIMIT:
        for xc, rc, yc, oc in plans.row_chunks([x, residual, y, ro]):
            _general_out(xc, rc, weight, eps, weight_offset, config, yc, oc)
    else:
        _general_out(x, residual, weight, eps, weight_offset, config, y, ro)
    return y, ro


def _general_out(x, residual, weight, eps, weight_offset, config, y, ro):
    key = (OUT_OP, "general", x.shape, x.stride(), x.dtype, x.get_device(), residual.stride(), y.stride(),
           ro.stride(), None if weight is None else (weight.stride(), weight.dtype), config)
    plan = plans.cached(key, lambda: _out_plan(x, residual, weight, config))
    if plan is None:  # a view the kernel cannot address: once on contiguous copies of the inputs
        xc, rc = x.contiguous(), residual.contiguous()
        plan = _out_plan(xc, rc, weight, config)
        assert plan is not None, "a contiguous copy must be addressable"
        x, residual = xc, rc
    _launch_out(plan, x, residual, weight, y, ro, (eps, weight_offset))
