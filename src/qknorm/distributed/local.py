"""The local steps of a tensor-parallel norm: argument checks, partial sums, scale.

Nothing here talks to the other ranks. :func:`check_rms_args` / :func:`check_qk_args`
check one rank's arguments (with :mod:`qknorm.validate`, before any collective);
:func:`kernel_plan` works out once per call how the Triton kernels of
:mod:`qknorm.kernels.tp_norm` address the tensors (or None: the PyTorch path, same
numerics); :func:`partial_sums` and :func:`scale` are the two halves around the
all-reduce. Launches go through :mod:`qknorm.launch` (a cached raw launcher after the
first calls of a specialisation), as the core ops' do.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from .. import launch, layout
from ..reference import writing
from .. import validate
from ..backend import use_triton
from ..dispatch import choose_config

_tp_norm = None
_launchers = None


def kernels():
    """``qknorm.kernels.tp_norm``, imported on first use so CPU-only callers never import triton."""
    global _tp_norm
    if _tp_norm is None:
        from ..kernels import tp_norm
        _tp_norm = tp_norm
    return _tp_norm


def kernels_loaded() -> bool:
    """Whether a call has needed the Triton kernels in this process."""
    return _tp_norm is not None


def _kls():
    """One :class:`qknorm.launch.KernelLauncher` per kernel: ``(sums, scale)``."""
    global _launchers
    if _launchers is None:
        k = kernels()
        kls = (launch.KernelLauncher(k.tp_sumsq_kernel, ("XA", "SA", "XB", "SB")),
               launch.KernelLauncher(k.tp_scale_kernel, ("XA", "YA", "WA", "SA", "XB", "YB", "WB", "SB")))
        for kl, names in zip(kls, (SUMSQ_PARAMS, SCALE_PARAMS)):
            if tuple(kl.arg_names) != names:  # partial_sums/scale pass arguments in this order
                raise RuntimeError(f"{kl.name} parameters are {kl.arg_names}, qknorm.distributed.local "
                                   f"passes {names}")
        _launchers = kls
    return _launchers


# The kernels' parameters in the order partial_sums and scale pass them (checked against
# the kernels' signatures once, when the launchers are made).
SUMSQ_PARAMS = ("XA", "SA", "a_rows", "DA", "aN1", "aN2", "as0", "as1", "as2", "asd",
                "XB", "SB", "b_rows", "DB", "bN1", "bN2", "bs0", "bs1", "bs2", "bsd", "ROWS", "BLOCK_D")
SCALE_PARAMS = ("eps", "w_offset",
                "XA", "YA", "WA", "SA", "a_rows", "DA", "DA_full", "aN1", "aN2",
                "axs0", "axs1", "axs2", "axsd", "ays0", "ays1", "ays2", "aysd", "aws",
                "XB", "YB", "WB", "SB", "b_rows", "DB", "DB_full", "bN1", "bN2",
                "bxs0", "bxs1", "bxs2", "bxsd", "bys0", "bys1", "bys2", "bysd", "bws",
                "HAS_WEIGHT", "ROWS", "BLOCK_D")


# --------------------------------------------------------------------------- argument checks

def rows(x) -> int:
    """Row count of ``x [..., D]``: the product of its leading dims."""
    return math.prod(x.shape[:-1])


def _local_width(name: str, x) -> int:
    d = x.shape[-1]
    if d < 1:
        raise ValueError(f"{name} must have a local shard width (last dim) >= 1, got shape {tuple(x.shape)}")
    return d


def _shard_weight(name: str, w, d: int, ref_name: str, ref) -> None:
    try:
        validate.weight(name, w, d, ref_name, ref)
    except ValueError as e:
        if str(e).startswith(f"{name} must have shape"):
            raise ValueError(f"{e}: a weight shard must have this rank's local width") from None
        raise


def _full_width_arg(name: str, full_width, d_local: int):
    if full_width is None:
        return None
    if isinstance(full_width, bool) or not isinstance(full_width, numbers.Integral):
        raise TypeError(f"{name} must be None or an int >= the local width {d_local}, "
                        f"got {type(full_width).__name__} {full_width!r}")
    if full_width < d_local:
        raise ValueError(f"{name} must be None or an int >= the local width {d_local}, got {full_width!r}")
    return int(full_width)


def full_width(given, d_local: int, world: int) -> int:
    """The full row width: ``given``, else an even split (``d_local * world``)."""
    return d_local * world if given is None else given


class RmsArgs(NamedTuple):
    d: int
    eps: float
    weight_offset: float
    full_width: int | None
    in_place: bool  # out is x itself (eager only; False under tracing)


class QKArgs(NamedTuple):
    dq: int
    dk: int
    eps: float
    weight_offset: float
    q_full_width: int | None
    k_full_width: int | None
    q_in_place: bool  # q_out is q itself (eager only)
    k_in_place: bool


def _scalars(eps, weight_offset, has_weight: bool) -> tuple[float, float]:
    validate.scalars(eps, weight_offset, has_weight)
    return float(eps), float(weight_offset)


def check_rms_args(x, weight, eps, weight_offset, out, full_width_, config, eager: bool) -> RmsArgs:
    """This rank's arguments of ``rms_norm_tp``; raises TypeError/ValueError, writes nothing.
    ``eager=False`` (tracing): shapes, strides and dtypes only, no data pointers."""
    validate.activation("x", x)
    d = _local_width("x", x)
    _shard_weight("weight", weight, d, "x", x)
    eps, weight_offset = _scalars(eps, weight_offset, weight is not None)
    full_width_ = _full_width_arg("full_width", full_width_, d)
    validate.config(config)
    validate.output("out", out, "x", x)
    in_place = False
    if out is not None:
        validate.written("out", out)  # shapes and strides only: also under torch.compile
        if eager:
            in_place = out is x or validate.in_place_or_disjoint("out", out, "x", x)
    return RmsArgs(d, eps, weight_offset, full_width_, in_place)


def check_qk_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width, k_full_width,
                  config, eager: bool) -> QKArgs:
    """This rank's arguments of ``qk_rms_norm_tp``; raises TypeError/ValueError, writes nothing."""
    validate.qk_activations(q, k)
    dq, dk = _local_width("q", q), _local_width("k", k)
    validate.paired_weights(q_weight, k_weight)
    _shard_weight("q_weight", q_weight, dq, "q", q)
    _shard_weight("k_weight", k_weight, dk, "k", k)
    eps, weight_offset = _scalars(eps, weight_offset, q_weight is not None)
    q_full_width = _full_width_arg("q_full_width", q_full_width, dq)
    k_full_width = _full_width_arg("k_full_width", k_full_width, dk)
    validate.config(config)
    validate.qk_outputs(q, k, q_out, k_out, memory=eager)  # under torch.compile: no data pointers
    if not eager:
        return QKArgs(dq, dk, eps, weight_offset, q_full_width, k_full_width, False, False)
    q_in_place = q_out is not None and layout.same_view(q_out, q)
    k_in_place = k_out is not None and layout.same_view(k_out, k)
    return QKArgs(dq, dk, eps, weight_offset, q_full_width, k_full_width, q_in_place, k_in_place)


def grad_rules(op: str, grad: bool, outs) -> None:
    """PyTorch's rules, before anything is written: ``out=`` tensors other than the input
    itself take no part in autograd; in-place writes to a leaf that requires grad (or a
    view of one) are refused. ``outs``: ``(name, out, in_place)`` per output."""
    if not torch.is_grad_enabled():
        return
    for name, o, in_place in outs:
        if o is None:
            continue
        if in_place:
            if o.requires_grad and o.is_leaf:
                raise RuntimeError(f"{op}: {name} is in place on a leaf that requires grad: a leaf Variable "
                                   f"that requires grad is being used in an in-place operation.")
            base = o._base if o._is_view() else None
            if base is not None and base.requires_grad and base.is_leaf:
                raise RuntimeError(f"{op}: {name} is in place on a view of a leaf that requires grad: a view "
                                   f"of a leaf Variable that requires grad is being used in an in-place "
                                   f"operation.")
        elif grad or o.requires_grad:
            raise RuntimeError(f"{op}(): functions with out=... arguments don't support automatic "
                               f"differentiation, but one of the arguments requires grad (argument {name}).")


# --------------------------------------------------------------------------- addressing

def kernel_view(x, y=None):
    """``(x, y, layout, copy_back)`` the kernels can address, or None: then the call takes
    the PyTorch path (same numerics). ``y`` (None or a tensor of x's shape) shares x's
    row layout. A layout the kernels cannot address is copied contiguous ONCE (``y`` then
    becomes a new tensor and ``copy_back = (y, y_copy)``); a tensor with more rows than
    :data:`qknorm.layout.ROW_LIMIT` takes the PyTorch path at once (a copy would not fit
    either)."""
    d = x.shape[-1]
    lay = layout.kernel_layout(x.shape, d, x.stride()) if y is None else \
        layout.kernel_layout(x.shape, d, x.stride(), y.stride())
    if lay is not None:
        return x, y, lay, None
    if rows(x) > layout.ROW_LIMIT:
        return None
    xc = x.contiguous()
    yc = None if y is None else torch.empty_like(xc)
    lay = layout.kernel_layout(xc.shape, d, xc.stride()) if y is None else \
        layout.kernel_layout(xc.shape, d, xc.stride(), yc.stride())
    if lay is None:
        return None
    return xc, yc, lay, (None if y is None else (y, yc))


def _kernel_weight(w, d: int):
    """The weight as the scale kernel reads it: ``c * stride`` is int32 there, so a shard
    whose ``|stride| * (d - 1)`` reaches 2**31 is read from a contiguous copy (weights are
    small)."""
    if w is not None and abs(w.stride(0)) * (d - 1) > layout.INT32_MAX:
        return w.contiguous()
    return w


class KernelPlan(NamedTuple):
    """How both kernels address A (and B) in one call; built once, used by both steps."""

    a: torch.Tensor  # what the kernels read (x, or its contiguous copy)
    ya: torch.Tensor | None  # what the scale kernel writes (None: a sums-only plan)
    la: layout.RowLayout
    b: torch.Tensor  # A again, with lb.n_rows == 0, when there is no B
    yb: torch.Tensor | None
    lb: layout.RowLayout
    has_b: bool
    rows: int  # ROWS of the launch config
    block_d: int
    num_warps: int
    grid: tuple[int, int, int]
    device: int  # CUDA index, -1 otherwise
    copies: tuple  # (y, y_copy) pairs to copy back after the scale kernel


def kernel_plan(a, ya, b, yb, config=None) -> KernelPlan | None:
    """The kernels' plan for ``a`` (written to ``ya``) and ``b`` (to ``yb``; None: no B),
    or None when the call takes the PyTorch path (backend, or a tensor the kernels cannot
    address). ``ya``/``yb`` None: a plan for the sums kernel only."""
    if not use_triton(a):
        return None
    va = kernel_view(a, ya)
    if va is None:
        return None
    vb = None if b is None else kernel_view(b, yb)
    if b is not None and vb is None:
        return None
    a, ya, la, ca = va
    copies = () if ca is None else (ca,)
    if vb is not None:
        b, yb, lb, cb = vb
        if cb is not None:
            copies += (cb,)
    else:
        b, yb, lb = a, ya, la._replace(n_rows=0)
    da, db = a.shape[-1], b.shape[-1]
    n_rows = la.n_rows + lb.n_rows
    cfg = config if config is not None else choose_config("rms_norm", a.dtype, max(da, db), n_rows, a.device)[0]
    n_blocks = layout.cdiv(la.n_rows, cfg.rows) + layout.cdiv(lb.n_rows, cfg.rows)
    dev = a.device.index if a.device.type == "cuda" else -1
    return KernelPlan(a, ya, la, b, yb, lb, vb is not None, cfg.rows, cfg.block_d, cfg.num_warps,
                      (max(1, n_blocks), 1, 1), dev, copies)


_entries: dict = {}
_ENTRIES_MAX = 4096


def _run_kernel(which: int, plan: KernelPlan, args: tuple, ptrs: tuple, ints: tuple, consts: tuple,
                tensors: tuple) -> None:
    """Launch kernel ``which`` (0: sums, 1: scale) through :func:`qknorm.launch.run`.

    ``args``: every kernel parameter in order (pointers as ``data_ptr()`` ints, constexprs
    included); ``ptrs`` its pointer values and ``tensors`` the tensors behind them;
    ``ints`` its int parameters, ``consts`` its constexprs. The specialisation key (each int's Triton
    specialisation, pointer dtypes, constexprs, warps, device) is cached per argument set.
    """
    kl = _kls()[which]
    dtypes = tuple(t.dtype for t in tensors)
    key = (which, ints, dtypes, consts, plan.num_warps, plan.device)
    entries = _entries.get(key)
    if entries is None:
        if len(_entries) >= _ENTRIES_MAX:
            _entries.clear()
        spec = (tuple(launch.int_spec(v) for v in ints), dtypes, consts, plan.num_warps, plan.device)
        entries = _entries[key] = kl.entries(spec, len(tensors))
    launch.run(kl, entries, launch.align_bits(*ptrs), plan.grid, args, tensors, {"num_warps": plan.num_warps}, plan.device)


def partial_sums(a, b, sums, plan: KernelPlan | None) -> None:
    """``sums[:rows(a)]`` = fp64 row sums of squares of ``a``; then those of ``b`` (may be
    None). ``plan`` None: PyTorch ops with the kernel's numerics (fp32 values, fp64 sum)."""
    n_a = rows(a)
    if plan is None:
        sums[:n_a].copy_(_sums_torch(a))
        if b is not None:
            sums[n_a:].copy_(_sums_torch(b))
        return
    la, lb, xa, xb = plan.la, plan.lb, plan.a, plan.b
    sb = sums[n_a:] if lb.n_rows else sums
    (_, an1, an2), (_, bn1, bn2) = la.sizes, lb.sizes
    ints = (la.n_rows, xa.shape[-1], an1, an2, *la.strides[0], lb.n_rows, xb.shape[-1], bn1, bn2, *lb.strides[0])
    consts = (plan.rows, plan.block_d)
    tensors = (xa, sums, xb, sb)
    ptrs = (xa.data_ptr(), sums.data_ptr(), xb.data_ptr(), sb.data_ptr())
    args = (*ptrs[:2], *ints[:8], *ptrs[2:], *ints[8:], *consts)
    _run_kernel(0, plan, args, ptrs, ints, consts, tensors)


def _sums_torch(x):
    """Row sums of squares in fp64 (the kernel's numerics: fp32 values, fp64 sum)."""
    return x.float().double().square().sum(-1).reshape(-1)


def _scale_torch(eps, weight_offset, x, y, w, full, s) -> None:
    """``y = fp32(x * rstd) * (w + offset)`` with ``rstd`` and ``x * rstd`` in fp64."""
    rstd = torch.rsqrt(s.view(*x.shape[:-1], 1) / full + eps)
    r = (x.float().double() * rstd).float()
    if w is not None:
        r = r * (w.float() + weight_offset)
    y.copy_(r)


def scale(eps: float, weight_offset: float, a, ya, wa, a_full: int, b, yb, wb, b_full: int, sums,
          plan: KernelPlan | None) -> None:
    """``y = x * rsqrt(total / full + eps) * (w + offset)`` for ``a`` into ``ya`` (then ``b``
    into ``yb`` when not None), ``sums`` the all-reduced fp64 row totals. ``plan`` None:
    PyTorch ops with the kernel's numerics; else a plan built with ``ya``/``yb``."""
    n_a = rows(a)
    if plan is None:
        with writing(ya, yb):  # inference tensors written as the kernel writes them (reference.writing)
            _scale_torch(eps, weight_offset, a, ya, wa, a_full, sums[:n_a])
            if b is not None:
                _scale_torch(eps, weight_offset, b, yb, wb, b_full, sums[n_a:])
        return
    la, lb, xa, xb = plan.la, plan.lb, plan.a, plan.b
    da, db = xa.shape[-1], xb.shape[-1]
    wa = _kernel_weight(wa, da)
    if plan.has_b:
        wb, sb = _kernel_weight(wb, db), sums[n_a:]
    else:
        wb, b_full, sb = wa, a_full, sums
    has_weight = wa is not None
    wa_t, was = (wa, wa.stride(0)) if has_weight else (xa, 0)
    wb_t, wbs = (wb, wb.stride(0)) if has_weight else (xb, 0)
    (_, an1, an2), (axs, ays) = la.sizes, la.strides
    (_, bn1, bn2), (bxs, bys) = lb.sizes, lb.strides
    a_ints = (la.n_rows, da, a_full, an1, an2, *axs, *ays, was)
    b_ints = (lb.n_rows, db, b_full, bn1, bn2, *bxs, *bys, wbs)
    consts = (has_weight, plan.rows, plan.block_d)
    tensors = (xa, plan.ya, wa_t, sums, xb, plan.yb, wb_t, sb)
    ptrs = tuple(t.data_ptr() for t in tensors)
    args = (eps, weight_offset, *ptrs[:4], *a_ints, *ptrs[4:], *b_ints, *consts)
    _run_kernel(1, plan, args, ptrs, a_ints + b_ints, consts, tensors)
    launch.bump_versions((ya,) if yb is None else (ya, yb))  # written through pointers
    if plan.copies:  # (most plans have none: nothing per call on the kernel path)
        with writing(*(y for y, _ in plan.copies)):
            for y, y_copy in plan.copies:
                y.copy_(y_copy)
