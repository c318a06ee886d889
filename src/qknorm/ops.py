"""Public ops: validate arguments, pick the backend and the kernel config, launch.

Nothing is written before every check has passed. CUDA tensors run the Triton kernels
(``kernels/``); CPU tensors run the PyTorch path (``reference.py``) unless
``QKNORM_BACKEND=triton`` (with ``TRITON_INTERPRET=1``) asks for the kernels.

Host cost per call is part of the product (a decode step launches these kernels
hundreds of times), so each op has two ways in:

* the *fast path* (CUDA tensors, float ``eps``/``weight_offset``): one dict lookup of a
  :class:`_Plan` keyed by the shapes, strides, dtypes and devices of the arguments. A
  plan is built once per key: it has run every check that depends only on the key (with
  the same functions as the general path), chosen the kernel config, and holds the grid,
  the kernel's int arguments and its specialisation's launch entries (``launch.py``).
  Per call only what the key cannot know is checked (``eps``, overlap of the actual
  buffers) before the cached launcher is called with raw pointers.
* the *general path*: every check in order with the messages users see
  (``validate.py``), then the same plans and launcher. Anything the fast path does not
  cover (CPU, odd scalar types, empty tensors, a failed check) goes here, so errors are
  raised only by the general path.

Under ``torch.compile`` the public functions route to the ``torch.ops.qknorm`` custom
ops (``torch_library.py``) so tracing sees one opaque op; eager calls skip that layer.
"""
from __future__ import annotations

import math
import os

import torch

from . import backend as _backend
from . import dispatch as _dispatch
from . import launch as _launch
from . import validate as V
from .backend import interpreter_on, use_triton
from .config import KernelConfig
from .dispatch import choose_config, sm_count
from .layout import row_layout, views_overlap
from .reference import FLT_MAX, FLT_MIN, fused_add_rms_norm_torch, kernel_eps, rms_norm_ref, rms_norm_torch

_INT32_MAX = 2**31 - 1
ROW_LIMIT = 2**30  # rows per launch; larger calls are split (row indices stay int32 in the kernels)
_INF = math.inf
_Tensor = torch.Tensor
_CONTIG = torch.contiguous_format
_ACT = frozenset(V.ACT_DTYPES)
_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)
_MAX_PLANS = 4096
_kernels = None
_launchers = None


def _k():
    """The kernels module, imported on first use so CPU-only callers never import triton."""
    global _kernels
    if _kernels is None:
        from . import kernels
        _kernels = kernels
    return _kernels


def _kl():
    """One :class:`launch.KernelLauncher` per kernel (created with the kernels module)."""
    global _launchers
    if _launchers is None:
        k = _k()
        _launchers = {
            "rms_norm": _launch.KernelLauncher(k.rms_norm_kernel, ("X", "Y", "W")),
            "fused_add_rms_norm": _launch.KernelLauncher(k.fused_add_rms_norm_kernel, ("X", "R", "W")),
            "qk_rms_norm": _launch.KernelLauncher(k.qk_rms_norm_kernel, ("XQ", "YQ", "WQ", "XK", "YK", "WK")),
            "qk_rms_norm_tokens": _launch.KernelLauncher(k.qk_rms_norm_tokens_kernel,
                                                         ("XQ", "YQ", "WQ", "XK", "YK", "WK")),
        }
    return _launchers


def _traced():
    return _torch_library


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- plans

_plans: dict = {}
_decisions = getattr(_dispatch, "_decisions", None)
_used_dispatch = False  # a cached plan holds a choose_config decision


def clear_caches() -> None:
    """Forget cached plans and launch entries (after changing the dispatcher's tables)."""
    _plans.clear()
    _launch.clear()


def _plans_fresh() -> dict:
    """The plan cache; emptied when the dispatcher forgot its decisions (``dispatch.reset()``)
    so plans never keep a config the dispatcher would no longer pick."""
    global _used_dispatch
    if (_used_dispatch and _decisions is not None and not _decisions) or len(_plans) > _MAX_PLANS:
        _plans.clear()
        _used_dispatch = False
    return _plans


def _choose(op, dtype, d, n_rows, device, config):
    global _used_dispatch
    if config is not None:
        return config
    _used_dispatch = True
    return choose_config(op, dtype, d, n_rows, device)[0]


class _Plan:
    """Everything about one call that follows from its key: grid, int arguments, launch
    entries, and the byte spans used by the per-call overlap checks."""

    __slots__ = ("kl", "grid", "ints", "consts", "kwargs", "entries", "spans", "geom", "memo", "device",
                 "n_ptrs", "same_layout")

    def __init__(self, kl, grid, ints, consts, kwargs, entries, device, n_ptrs):
        self.kl = kl
        self.grid = grid
        self.ints = ints
        self.consts = consts
        self.kwargs = kwargs
        self.entries = entries
        self.device = device
        self.n_ptrs = n_ptrs
        self.spans = ()
        self.geom = []
        self.memo = [{} for _ in range(5)]
        self.same_layout = False


def _layout_of(shape, d, *strides):
    """Joint row layout of tensors of ``shape`` with the given strides, or None when the
    kernels cannot address it directly (> 3 leading dims after merging, or offsets that
    would overflow int32)."""
    lay = row_layout(tuple(shape), *(tuple(s) for s in strides))
    if lay is None:
        return None
    if any(abs(s[3]) * d > _INT32_MAX for s in lay.strides) or lay.n_rows > ROW_LIMIT:
        return None
    return lay


def _weight_ok(w, d: int) -> bool:
    """Whether the kernels can address weight ``w`` (``col * stride`` is int32 there)."""
    return w is None or abs(w.stride(0)) * d <= _INT32_MAX


def _addressable_weight(w, d: int):
    """``w``, or a contiguous copy when its stride would overflow the kernels' int32 offsets."""
    return w if _weight_ok(w, d) else w.contiguous()


def _n_rows(t) -> int:
    n = 1
    for s in t.shape[:-1]:
        n *= s
    return n


def _row_chunks(ts, limit: int = None):
    """Views of the same-shaped tensors ``ts`` split along their leading dims so that each
    piece has at most ``limit`` rows (default ``ROW_LIMIT``); one piece when it already fits."""
    limit = ROW_LIMIT if limit is None else limit
    shape = ts[0].shape
    if _n_rows(ts[0]) <= limit:
        yield ts
        return
    dim = next(i for i in range(len(shape) - 1) if shape[i] > 1)
    inner = 1
    for n in shape[dim + 1:-1]:
        inner *= n
    step = max(1, limit // inner)
    for start in range(0, shape[dim], step):
        n = min(step, shape[dim] - start)
        yield from _row_chunks([t.narrow(dim, start, n) for t in ts], limit)


def _eps_pair(eps: float):
    """``(eps, eps_tiny)`` kernel arguments (``reference.kernel_eps``), the common case inline."""
    return (eps, 0.0) if FLT_MIN <= eps <= FLT_MAX else kernel_eps(eps)


def _contig_strides(shape) -> tuple:
    st, acc = [], 1
    for n in reversed(tuple(shape)):
        st.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(st))


def _span(shape, stride, itemsize) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` relative to the data pointer touched by a non-empty view."""
    lo = hi = 0
    for n, s in zip(shape, stride):
        if s >= 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo * itemsize, (hi + 1) * itemsize


def _grid(cfg: KernelConfig, n_blocks: int, device) -> tuple[int, int, int]:
    if cfg.persistent:
        idx = device.index if device.type == "cuda" else None
        return (max(1, min(n_blocks, cfg.programs_per_sm * sm_count(idx))), 1, 1)
    return (max(1, n_blocks), 1, 1)


_pdl_default: dict = {}


def _pdl_by_default(device) -> bool:
    """PDL on by default on Hopper and newer (compute capability >= 9), as FlashInfer does:
    the next kernel's launch overlaps this one's tail. ``QKNORM_PDL=0`` turns it off,
    ``QKNORM_PDL=1`` asks for it wherever Triton supports it. Cached per device."""
    idx = device.index if device is not None and device.type == "cuda" else None
    hit = _pdl_default.get(idx)
    if hit is None:
        env = os.environ.get("QKNORM_PDL", "auto").strip().lower()
        if env in ("0", "false", "off", "no"):
            hit = False
        elif env in ("1", "true", "on", "yes"):
            hit = True
        else:
            try:
                hit = device is not None and device.type == "cuda" and \
                    torch.cuda.get_device_capability(device)[0] >= 9
            except Exception:  # noqa: BLE001 - no CUDA: no PDL
                hit = False
        _pdl_default[idx] = hit
    return hit


PDL_MAX_PROGRAMS_PER_SM = 4  # by default PDL only for grids of one wave or so (see _use_pdl)


def _use_pdl(cfg: KernelConfig, device=None, programs: int = 1) -> bool:
    """Whether this launch uses programmatic dependent launch: ``cfg.pdl``, or the device
    default for grids of at most ``PDL_MAX_PROGRAMS_PER_SM`` programs per SM (PDL saves a
    launch latency, which only matters for short kernels; on large grids an early
    dependent launch competes for SM slots). Never in the interpreter or without
    Triton's ``gdc_*`` intrinsics."""
    if interpreter_on():
        return False
    if not cfg.pdl:
        if not _pdl_by_default(device):
            return False
        idx = device.index if device is not None and device.type == "cuda" else None
        if programs > PDL_MAX_PROGRAMS_PER_SM * sm_count(idx):
            return False
    from .kernels.pdl import HAVE_GDC
    return HAVE_GDC


def _finish(op, cfg, ints, consts_head, pointer_dtypes, device, n_ptrs, grid):
    """Constexprs, launch kwargs and the shared launch entries of a plan."""
    pdl = _use_pdl(cfg, device, grid[0])
    consts = consts_head + (cfg.persistent, pdl)
    kwargs = {"num_warps": cfg.num_warps}
    if pdl:
        kwargs["launch_pdl"] = True
    dev = device.index if device.type == "cuda" else -1
    spec = (tuple(_launch.int_spec(v) for v in ints), pointer_dtypes, consts, cfg.num_warps, pdl, dev)
    kl = _kl()[op]
    return _Plan(kl, grid, ints, consts, kwargs, kl.entries(spec, n_ptrs), dev, n_ptrs)


def _rms_like_plan(op, x, w, o_strides, config):
    """Plan of rms_norm / fused_add (x and a second tensor of x's shape with ``o_strides``)."""
    shape = x.shape
    d = shape[-1]
    lay = _layout_of(shape, d, x.stride(), o_strides)
    if lay is None or not _weight_ok(w, d):
        return None
    cfg = _choose(op, x.dtype, d, lay.n_rows, x.device, config)
    ws = w.stride(0) if w is not None else 0
    (_, n1, n2), (xs, ys) = lay.sizes, lay.strides
    ints = (lay.n_rows, d, n1, n2, *xs, *ys, ws)
    grid = _grid(cfg, _cdiv(lay.n_rows, cfg.rows), x.device)
    wdt = w.dtype if w is not None else x.dtype
    head = (w is not None, cfg.rows, cfg.block_d, cfg.chunked(d))
    return _finish(op, cfg, ints, head, (x.dtype, wdt), x.device, 3, grid)


def _checked(fn) -> bool:
    try:
        fn()
        return True
    except (TypeError, ValueError):
        return False


def _no_overlap(plan, pair, pa, pb) -> bool:
    """Exact answer to "do these views share no element?" for views whose byte ranges meet
    (Q and K of one packed buffer), cached per plan and pair by the pointers' distance.
    False also when undecidable (the general path then raises its error)."""
    delta = pb - pa
    memo = plan.memo[pair]
    r = memo.get(delta)
    if r is None:
        shape_a, stride_a, shape_b, stride_b, es = plan.geom[pair]
        if delta % es:
            r = False
        else:
            r = views_overlap(delta // es, tuple(shape_a), tuple(stride_a), tuple(shape_b), tuple(stride_b)) is False
        if len(memo) < 64:
            memo[delta] = r
    return r


def _new_plan(key, build):
    """Build, cache and return the plan of ``key`` (None cached too: not a fast-path call)."""
    plan = _plans[key] = build()
    return plan


# --------------------------------------------------------------------------- rms_norm

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
             weight_offset: float = 0.0, out: torch.Tensor | None = None,
             config: KernelConfig | None = None) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x**2) + eps) * (weight + weight_offset)``.

    ``x``: bf16/fp16/fp32, rank >= 1, any strides. ``weight``: None or ``[D]`` of any float
    dtype. ``out``: None (a new contiguous tensor), ``x`` itself (in place) or a tensor of
    x's shape and dtype that does not overlap x. ``config`` forces a kernel variant.
    Returns ``out``.
    """
    if _is_compiling():
        return _traced().traced_rms_norm(x, weight, eps, weight_offset, out, config)
    if (type(x) is _Tensor and x.is_cuda and _backend._backend != "torch" and type(eps) is float
            and type(weight_offset) is float and 0.0 <= eps < _INF and -_INF < weight_offset < _INF
            and (config is None or type(config) is KernelConfig)
            and not x.requires_grad):
        r = _rms_fast(x, weight, eps, weight_offset, out, config)
        if r is not None:
            return r
    return _rms_norm_general(x, weight, eps, weight_offset, out, config)


def _rms_fast(x, weight, eps, weight_offset, out, config):
    """The common CUDA call with cached plan and launcher; None means: take the general path."""
    if weight is None:
        if weight_offset != 0.0:
            return None
        if out is None:
            key = ("r0", x.shape, x.stride(), x.dtype, x.device, config)
        elif out is x:
            key = ("r1", x.shape, x.stride(), x.dtype, x.device, config)
        elif isinstance(out, _Tensor):
            key = ("r2", x.shape, x.stride(), x.dtype, x.device, out.shape, out.stride(), out.dtype, out.device,
                   config)
        else:
            return None
    elif isinstance(weight, _Tensor) and not weight.requires_grad:
        if out is None:
            key = ("rw0", x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.stride(), weight.dtype,
                   weight.device, config)
        elif out is x:
            key = ("rw1", x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.stride(), weight.dtype,
                   weight.device, config)
        elif isinstance(out, _Tensor):
            key = ("rw2", x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.stride(), weight.dtype,
                   weight.device, out.shape, out.stride(), out.dtype, out.device, config)
        else:
            return None
    else:
        return None
    if _used_dispatch and not _decisions:
        _plans_fresh()
    plan = _plans.get(key)
    if plan is None:
        if key in _plans:
            return None
        plan = _new_plan(key, lambda: _rms_fast_plan(x, weight, out, key[0][-1], config))
        if plan is None:
            return None
    px = x.data_ptr()
    pw = px if weight is None else weight.data_ptr()
    if out is None:
        out = torch.empty_like(x, memory_format=_CONTIG)
        po = out.data_ptr()
    else:
        if out is x:
            po = px
        else:
            if out.requires_grad:
                return None
            po = out.data_ptr()
            if not (po == px and plan.same_layout):  # the same view as x is in place
                sx, so = plan.spans[0], plan.spans[1]
                if not (px + sx[1] <= po + so[0] or po + so[1] <= px + sx[0]
                        or _no_overlap(plan, 0, px, po)):
                    return None
        if weight is not None:  # a weight sharing memory with the output: the general path copies it
            so, sw = plan.spans[1], plan.spans[2]
            if not (pw + sw[1] <= po + so[0] or po + so[1] <= pw + sw[0]):
                return None
    if weight is None:
        weight = x
    et = 0.0
    if not FLT_MIN <= eps <= FLT_MAX:
        eps, et = kernel_eps(eps)
    bits = 0 if not (px | po | pw) & 15 else ((px & 15) and 1) | ((po & 15) and 2) | ((pw & 15) and 4)
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (px, po, pw, *plan.ints, eps, et, weight_offset, *plan.consts),
                (x, out, weight), plan.kwargs, plan.device)
    return out


def _rms_fast_plan(x, weight, out, okey, config):
    if not _checked(lambda: (V.activation("x", x), V.weight("weight", weight, x.shape[-1], "x", x),
                             V.output("out", out, "x", x), V.config(config),
                             okey != "0" and V.written("out", out))):
        return None
    if x.numel() == 0 or x.dtype not in _ACT:
        return None
    o_strides = _contig_strides(x.shape) if okey == "0" else x.stride() if okey == "1" else out.stride()
    plan = _rms_like_plan("rms_norm", x, weight, o_strides, config)
    if plan is not None:
        es = x.element_size()
        plan.same_layout = okey == "2" and tuple(out.stride()) == tuple(x.stride())
        sw = (0, 0) if weight is None else _span(weight.shape, weight.stride(), weight.element_size())
        plan.spans = (_span(x.shape, x.stride(), es), _span(x.shape, o_strides, es), sw)
        if okey == "2":
            plan.geom = [(x.shape, x.stride(), out.shape, out.stride(), es)]
    return plan


def _rms_norm_general(x, weight, eps, weight_offset, out, config):
    V.activation("x", x)
    d = x.shape[-1]
    V.weight("weight", weight, d, "x", x)
    V.scalars(eps, weight_offset, weight is not None)
    V.config(config)
    V.output("out", out, "x", x)
    if out is not None:
        V.written("out", out)
        if out is not x:
            V.in_place_or_disjoint("out", out, "x", x)
    eps, weight_offset = float(eps), float(weight_offset)
    if V.grad_needed(x, weight, out):
        return _traced().autograd_rms_norm(x, weight, eps, weight_offset, out)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        weight = V.unaliased(weight, (out,))
    if x.numel() == 0:
        return out
    if not use_triton(x):
        return rms_norm_torch(x, weight, eps, weight_offset, out)
    _launch_rms_norm(x, out, weight, eps, weight_offset, config)
    return out


def _plan_for(key, build):
    plans = _plans_fresh()
    plan = plans.get(key)
    if plan is None and key not in plans:
        plan = plans[key] = build()
    return plan


def _launch_rms_norm(x, out, weight, eps, weight_offset, config, copied=False):
    weight = _addressable_weight(weight, x.shape[-1])
    if _n_rows(x) > ROW_LIMIT:
        for xc, oc in _row_chunks([x, out]):
            _launch_rms_norm(xc, oc, weight, eps, weight_offset, config)
        return
    key = ("R", x.shape, x.stride(), x.dtype, x.device, out.stride(),
           None if weight is None else (weight.stride(), weight.dtype), config)
    plan = _plan_for(key, lambda: _rms_like_plan("rms_norm", x, weight, out.stride(), config))
    if plan is None:
        # Not addressable as is (> 3 leading dims that do not merge, or a last-dim stride
        # past int32): once on a contiguous copy, which always is.
        assert not copied, "a contiguous copy must be addressable"
        xc = x.contiguous()
        tmp = torch.empty_like(xc)
        _launch_rms_norm(xc, tmp, weight, eps, weight_offset, config, copied=True)
        out.copy_(tmp)
        return
    w = weight if weight is not None else x
    px, po, pw = x.data_ptr(), out.data_ptr(), w.data_ptr()
    bits = ((px & 15) and 1) | ((po & 15) and 2) | ((pw & 15) and 4)
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (px, po, pw, *plan.ints, *_eps_pair(eps), weight_offset, *plan.consts), (x, out, w), plan.kwargs,
                plan.device)


# --------------------------------------------------------------------------- fused add

def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                       eps: float = 1e-6, *, weight_offset: float = 0.0,
                       config: KernelConfig | None = None):
    """In place: ``residual += x`` then ``x = rms_norm(residual)``.

    The norm is taken of the fp32 sum; ``residual`` stores its rounding. ``x`` and
    ``residual`` have the same shape, dtype and device and must not overlap.
    Returns ``(x, residual)``.
    """
    if _is_compiling():
        return _traced().traced_fused_add_rms_norm(x, residual, weight, eps, weight_offset, config)
    if (type(x) is _Tensor and x.is_cuda and _backend._backend != "torch" and type(eps) is float
            and type(weight_offset) is float and 0.0 <= eps < _INF and -_INF < weight_offset < _INF
            and (config is None or type(config) is KernelConfig)
            and isinstance(residual, _Tensor) and not (x.requires_grad or residual.requires_grad)):
        if _add_fast(x, residual, weight, eps, weight_offset, config):
            return x, residual
    return _fused_add_general(x, residual, weight, eps, weight_offset, config)


def _add_fast(x, residual, weight, eps, weight_offset, config) -> bool:
    if weight is None:
        if weight_offset != 0.0:
            return False
        key = ("a0", x.shape, x.stride(), x.dtype, x.device, residual.shape, residual.stride(), residual.dtype,
               residual.device, config)
    elif isinstance(weight, _Tensor) and not weight.requires_grad:
        key = ("aw", x.shape, x.stride(), x.dtype, x.device, residual.shape, residual.stride(), residual.dtype,
               residual.device, weight.shape, weight.stride(), weight.dtype, weight.device, config)
    else:
        return False
    if _used_dispatch and not _decisions:
        _plans_fresh()
    plan = _plans.get(key)
    if plan is None:
        if key in _plans:
            return False
        plan = _new_plan(key, lambda: _add_fast_plan(x, residual, weight, config))
        if plan is None:
            return False
    px, pr = x.data_ptr(), residual.data_ptr()
    sx, sr, sw = plan.spans
    if not (px + sx[1] <= pr + sr[0] or pr + sr[1] <= px + sx[0] or _no_overlap(plan, 0, px, pr)):
        return False
    if weight is None:
        pw = px
        weight = x
    else:
        pw = weight.data_ptr()  # a weight sharing memory with x or residual: the general path copies it
        if not ((pw + sw[1] <= px + sx[0] or px + sx[1] <= pw + sw[0])
                and (pw + sw[1] <= pr + sr[0] or pr + sr[1] <= pw + sw[0])):
            return False
    et = 0.0
    if not FLT_MIN <= eps <= FLT_MAX:
        eps, et = kernel_eps(eps)
    bits = 0 if not (px | pr | pw) & 15 else ((px & 15) and 1) | ((pr & 15) and 2) | ((pw & 15) and 4)
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (px, pr, pw, *plan.ints, eps, et, weight_offset, *plan.consts),
                (x, residual, weight), plan.kwargs, plan.device)
    return True


def _add_fast_plan(x, residual, weight, config):
    def check():
        V.activation("x", x)
        V.activation("residual", residual)
        if residual.dtype != x.dtype or residual.shape != x.shape:
            raise ValueError
        V.same_device("residual", residual, "x", x)
        V.weight("weight", weight, x.shape[-1], "x", x)
        V.config(config)
        V.written("x", x)
        V.written("residual", residual)
    if not _checked(check) or x.numel() == 0:
        return None
    plan = _rms_like_plan("fused_add_rms_norm", x, weight, residual.stride(), config)
    if plan is not None:
        es = x.element_size()
        sw = (0, 0) if weight is None else _span(weight.shape, weight.stride(), weight.element_size())
        plan.spans = (_span(x.shape, x.stride(), es), _span(residual.shape, residual.stride(), es), sw)
        plan.geom = [(x.shape, x.stride(), residual.shape, residual.stride(), es)]
    return plan


def _fused_add_general(x, residual, weight, eps, weight_offset, config):
    V.activation("x", x)
    V.activation("residual", residual)
    if residual.dtype != x.dtype:
        raise TypeError(f"residual must have the dtype of x ({x.dtype}), got {residual.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    V.same_device("residual", residual, "x", x)
    d = x.shape[-1]
    V.weight("weight", weight, d, "x", x)
    V.scalars(eps, weight_offset, weight is not None)
    V.config(config)
    V.written("x", x)
    V.written("residual", residual)
    V.disjoint("x", x, "residual", residual)
    eps, weight_offset = float(eps), float(weight_offset)
    if V.grad_needed(x, residual, weight):
        return _traced().autograd_fused_add_rms_norm(x, residual, weight, eps, weight_offset)
    weight = V.unaliased(weight, (x, residual))
    if x.numel() == 0:
        return x, residual
    if not use_triton(x):
        return fused_add_rms_norm_torch(x, residual, weight, eps, weight_offset)
    _launch_fused_add(x, residual, weight, eps, weight_offset, config)
    return x, residual


def _launch_fused_add(x, residual, weight, eps, weight_offset, config, copied=False):
    weight = _addressable_weight(weight, x.shape[-1])
    if _n_rows(x) > ROW_LIMIT:
        for xc, rc in _row_chunks([x, residual]):
            _launch_fused_add(xc, rc, weight, eps, weight_offset, config)
        return
    key = ("A", x.shape, x.stride(), x.dtype, x.device, residual.stride(),
           None if weight is None else (weight.stride(), weight.dtype), config)
    plan = _plan_for(key, lambda: _rms_like_plan("fused_add_rms_norm", x, weight, residual.stride(), config))
    if plan is None:  # once on contiguous copies (see _launch_rms_norm)
        assert not copied, "a contiguous copy must be addressable"
        xc, rc = x.contiguous(), residual.contiguous()
        _launch_fused_add(xc, rc, weight, eps, weight_offset, config, copied=True)
        x.copy_(xc)
        residual.copy_(rc)
        return
    w = weight if weight is not None else x
    px, pr, pw = x.data_ptr(), residual.data_ptr(), w.data_ptr()
    bits = ((px & 15) and 1) | ((pr & 15) and 2) | ((pw & 15) and 4)
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (px, pr, pw, *plan.ints, *_eps_pair(eps), weight_offset, *plan.consts), (x, residual, w),
                plan.kwargs, plan.device)


# --------------------------------------------------------------------------- QK norm

def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                k_weight: torch.Tensor | None, eps: float = 1e-6, *, weight_offset: float = 0.0,
                q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                config: KernelConfig | None = None):
    """Per-head RMSNorm of Q and K (last dim = head_dim) in one kernel launch.

    ``q``/``k`` are typically strided views ``[T, H, D]`` of a packed QKV buffer.
    ``q_out=q, k_out=k`` normalises in place; None allocates new contiguous outputs.
    Outputs may not overlap each other or the other input. Returns ``(q_out, k_out)``.
    """
    if _is_compiling():
        return _traced().traced_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    if (type(q) is _Tensor and q.is_cuda and _backend._backend != "torch" and type(eps) is float
            and type(weight_offset) is float and 0.0 <= eps < _INF and -_INF < weight_offset < _INF
            and (config is None or type(config) is KernelConfig)
            and type(k) is _Tensor and not (q.requires_grad or k.requires_grad)):
        r = _qk_fast(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
        if r is not None:
            return r
    return _qk_general(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)


def _qk_fast(q, k, qw, kw, eps, weight_offset, q_out, k_out, config):
    """The common CUDA call of qk_rms_norm; None means: take the general path."""
    # output kinds: 0 = allocate, 1 = in place (the input object itself), 2 = another tensor
    if q_out is None:
        qo = 0
    elif q_out is q:
        qo = 1
    elif isinstance(q_out, _Tensor) and not q_out.requires_grad:
        qo = 2
    else:
        return None
    if k_out is None:
        ko = 0
    elif k_out is k:
        ko = 1
    elif isinstance(k_out, _Tensor) and not k_out.requires_grad:
        ko = 2
    else:
        return None
    if qw is None:
        if kw is not None or weight_offset != 0.0:
            return None
        key = (qo, ko, q.shape, q.stride(), k.shape, k.stride(), q.dtype, k.dtype, q.device, k.device, config)
    elif isinstance(qw, _Tensor) and isinstance(kw, _Tensor) and not (qw.requires_grad or kw.requires_grad):
        key = (qo, ko, q.shape, q.stride(), k.shape, k.stride(), q.dtype, k.dtype, q.device, k.device, config,
               qw.shape, qw.stride(), qw.dtype, qw.device, kw.shape, kw.stride(), kw.dtype, kw.device)
    else:
        return None
    if qo == 2:
        key += (q_out.shape, q_out.stride(), q_out.dtype, q_out.device)
    if ko == 2:
        key += (k_out.shape, k_out.stride(), k_out.dtype, k_out.device)
    if _used_dispatch and not _decisions:
        _plans_fresh()
    plan = _plans.get(key)
    if plan is None:
        if key in _plans:
            return None
        plan = _new_plan(key, lambda: _qk_fast_plan(q, k, qw, kw, q_out, k_out, qo, ko, config))
        if plan is None:
            return None
    pq, pk = q.data_ptr(), k.data_ptr()
    # Overlap rules of the general path, on raw pointers and cached byte spans:
    # outputs must not meet each other, nor the other input, nor partially their own input.
    sq, sk, sqo, sko, sqw, skw = plan.spans
    if qo == 0:
        q_out = torch.empty_like(q, memory_format=_CONTIG)
        pqo = q_out.data_ptr()
        q_in = False
    elif qo == 1:
        pqo = pq
        q_in = True
    else:
        pqo = q_out.data_ptr()
        q_in = pqo == pq and plan.same_layout[0]
        if not q_in and not (pq + sq[1] <= pqo + sqo[0] or pqo + sqo[1] <= pq + sq[0]
                             or _no_overlap(plan, 0, pq, pqo)):
            return None
    if ko == 0:
        k_out = torch.empty_like(k, memory_format=_CONTIG)
        pko = k_out.data_ptr()
        k_in = False
    elif ko == 1:
        pko = pk
        k_in = True
    else:
        pko = k_out.data_ptr()
        k_in = pko == pk and plan.same_layout[1]
        if not k_in and not (pk + sk[1] <= pko + sko[0] or pko + sko[1] <= pk + sk[0]
                             or _no_overlap(plan, 1, pk, pko)):
            return None
    if qo and ko and not (pqo + sqo[1] <= pko + sko[0] or pko + sko[1] <= pqo + sqo[0]
                          or _no_overlap(plan, 2, pqo, pko)):
        return None
    if qo and not k_in and not (pqo + sqo[1] <= pk + sk[0] or pk + sk[1] <= pqo + sqo[0]
                                or _no_overlap(plan, 3, pqo, pk)):
        return None
    if ko and not q_in and not (pko + sko[1] <= pq + sq[0] or pq + sq[1] <= pko + sko[0]
                                or _no_overlap(plan, 4, pko, pq)):
        return None
    if qw is None:
        pqw, pkw, qw, kw = pq, pk, q, k
    else:
        pqw, pkw = qw.data_ptr(), kw.data_ptr()
        # a weight sharing memory with a written tensor: the general path copies it
        if qo and not ((pqw + sqw[1] <= pqo + sqo[0] or pqo + sqo[1] <= pqw + sqw[0])
                       and (pkw + skw[1] <= pqo + sqo[0] or pqo + sqo[1] <= pkw + skw[0])):
            return None
        if ko and not ((pqw + sqw[1] <= pko + sko[0] or pko + sko[1] <= pqw + sqw[0])
                       and (pkw + skw[1] <= pko + sko[0] or pko + sko[1] <= pkw + skw[0])):
            return None
    et = 0.0
    if not FLT_MIN <= eps <= FLT_MAX:
        eps, et = kernel_eps(eps)
    if (pq | pqo | pqw | pk | pko | pkw) & 15:
        bits = (((pq & 15) and 1) | ((pqo & 15) and 2) | ((pqw & 15) and 4) | ((pk & 15) and 8)
                | ((pko & 15) and 16) | ((pkw & 15) and 32))
    else:
        bits = 0
    qi, ki = plan.ints
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (qi[0], eps, et, weight_offset, pq, pqo, pqw, *qi[1:], pk, pko, pkw, *ki, *plan.consts),
                (q, q_out, qw, k, k_out, kw), plan.kwargs, plan.device)
    return q_out, k_out


def _wkey(w):
    return None if w is None else (w.shape, w.stride(), w.dtype, w.device)


def _qk_static_checks(q, k, qw, kw, q_out, k_out, config):
    """The checks of qk_rms_norm that depend only on metadata (same functions and order)."""
    V.activation("q", q)
    V.activation("k", k)
    if k.dtype != q.dtype:
        raise TypeError("dtype")
    V.same_device("k", k, "q", q)
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError("head_dim")
    if (qw is None) != (kw is None):
        raise ValueError("weights")
    V.weight("q_weight", qw, d, "q", q)
    V.weight("k_weight", kw, d, "k", k)
    V.output("q_out", q_out, "q", q)
    V.output("k_out", k_out, "k", k)
    V.config(config)
    if q_out is not None:
        V.written("q_out", q_out)
    if k_out is not None:
        V.written("k_out", k_out)


def _qk_fast_plan(q, k, qw, kw, q_out, k_out, qo, ko, config):
    if not _checked(lambda: _qk_static_checks(q, k, qw, kw, q_out, k_out, config)):
        return None
    if q.numel() == 0 or k.numel() == 0:
        return None
    qos = _contig_strides(q.shape) if qo == 0 else q.stride() if qo == 1 else q_out.stride()
    kos = _contig_strides(k.shape) if ko == 0 else k.stride() if ko == 1 else k_out.stride()
    plan = _qk_plan(q, k, qw, kw, qos, kos, config)
    if plan is None:
        return None
    es = q.element_size()
    qs, ks, qos, kos = tuple(q.stride()), tuple(k.stride()), tuple(qos), tuple(kos)
    # spans of q, k, q_out, k_out (an allocated output's span is never read)
    sqw = (0, 0) if qw is None else _span(qw.shape, qw.stride(), qw.element_size())
    skw = (0, 0) if kw is None else _span(kw.shape, kw.stride(), kw.element_size())
    plan.spans = (_span(q.shape, qs, es), _span(k.shape, ks, es), _span(q.shape, qos, es), _span(k.shape, kos, es),
                  sqw, skw)
    # overlap pairs: 0 (q, q_out), 1 (k, k_out), 2 (q_out, k_out), 3 (q_out, k), 4 (k_out, q)
    plan.geom = [(q.shape, qs, q.shape, qos, es), (k.shape, ks, k.shape, kos, es), (q.shape, qos, k.shape, kos, es),
                 (q.shape, qos, k.shape, ks, es), (k.shape, kos, q.shape, qs, es)]
    plan.same_layout = (qos == qs, kos == ks)
    return plan


def _qk_plan(q, k, qw, kw, qos, kos, config):
    """Plan of one qk_rms_norm launch over q (outputs strided ``qos``) and k (``kos``)."""
    d = q.shape[-1]
    q_lay, k_lay = _layout_of(q.shape, d, q.stride(), qos), _layout_of(k.shape, d, k.stride(), kos)
    if q_lay is None or k_lay is None or q_lay.n_rows + k_lay.n_rows > ROW_LIMIT \
            or not (_weight_ok(qw, d) and _weight_ok(kw, d)):
        return None
    if q.numel() == 0:
        q_lay = q_lay._replace(n_rows=0)
    if k.numel() == 0:
        k_lay = k_lay._replace(n_rows=0)
    cfg = _choose("qk_rms_norm", q.dtype, d, q_lay.n_rows + k_lay.n_rows, q.device, config)
    qws = qw.stride(0) if qw is not None else 0
    kws = kw.stride(0) if kw is not None else 0
    dts = (q.dtype, qw.dtype if qw is not None else q.dtype, kw.dtype if kw is not None else q.dtype)
    if cfg.token_order and _token_order_ok(q, k, qos, kos, cfg):
        # Q [T, Hq, D] and K [T, Hkv, D] walked token by token (kernels/qk_norm.py).
        t, hq, hk = q.shape[0], q.shape[1], k.shape[1]
        q_ints = (d, t, hq, q.stride(0), q.stride(1), qos[0], qos[1], qws)
        k_ints = (hk, k.stride(0), k.stride(1), kos[0], kos[1], kws)
        grid = _grid(cfg, _cdiv(t * (hq + hk), cfg.rows), q.device)
        plan = _finish("qk_rms_norm_tokens", cfg, q_ints + k_ints, (qw is not None, cfg.rows, cfg.block_d),
                       dts, q.device, 6, grid)
        plan.ints = (q_ints, k_ints)
        return plan
    n_blocks = _cdiv(q_lay.n_rows, cfg.rows) + _cdiv(k_lay.n_rows, cfg.rows)
    (_, qn1, qn2), (qxs, qys) = q_lay.sizes, q_lay.strides
    (_, kn1, kn2), (kxs, kys) = k_lay.sizes, k_lay.strides
    q_ints = (d, q_lay.n_rows, qn1, qn2, *qxs, *qys, qws)
    k_ints = (k_lay.n_rows, kn1, kn2, *kxs, *kys, kws)
    grid = _grid(cfg, n_blocks, q.device)
    head = (qw is not None, cfg.rows, cfg.block_d, cfg.chunked(d))
    plan = _finish("qk_rms_norm", cfg, q_ints + k_ints, head, dts, q.device, 6, grid)
    plan.ints = (q_ints, k_ints)
    return plan


def _token_order_ok(q, k, qos, kos, cfg) -> bool:
    """The token-ordered kernel needs Q [T, Hq, D], K [T, Hkv, D], unit last-dim strides
    everywhere and whole rows in registers; otherwise the segment order runs."""
    return (q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and not cfg.chunked(q.shape[-1])
            and q.stride(2) == 1 and k.stride(2) == 1 and qos[2] == 1 and kos[2] == 1)


def _qk_general(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config):
    V.activation("q", q)
    V.activation("k", k)
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    V.same_device("k", k, "q", q)
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q and k must have the same head_dim (last dim): q has {d}, k has {k.shape[-1]}")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None, got "
                         f"q_weight={'None' if q_weight is None else 'tensor'}, "
                         f"k_weight={'None' if k_weight is None else 'tensor'}")
    V.weight("q_weight", q_weight, d, "q", q)
    V.weight("k_weight", k_weight, d, "k", k)
    V.scalars(eps, weight_offset, q_weight is not None)
    V.config(config)
    V.output("q_out", q_out, "q", q)
    V.output("k_out", k_out, "k", k)
    if q_out is not None:
        V.written("q_out", q_out)
    if k_out is not None:
        V.written("k_out", k_out)
    q_in_place = q_out is not None and V.in_place_or_disjoint("q_out", q_out, "q", q)
    k_in_place = k_out is not None and V.in_place_or_disjoint("k_out", k_out, "k", k)
    if q_out is not None and k_out is not None:
        V.disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        V.disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        V.disjoint("k_out", k_out, "q", q)
    eps, weight_offset = float(eps), float(weight_offset)
    if V.grad_needed(q, k, q_weight, k_weight, q_out, k_out):
        return _traced().autograd_qk_rms_norm(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out)
    q_weight = V.unaliased(q_weight, (q_out, k_out))
    k_weight = V.unaliased(k_weight, (q_out, k_out))
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    if not use_triton(q):
        q_res = rms_norm_ref(q, q_weight, eps, weight_offset)
        k_res = rms_norm_ref(k, k_weight, eps, weight_offset)
        q_out.copy_(q_res)
        k_out.copy_(k_res)
        return q_out, k_out
    _launch_qk(q, k, q_out, k_out, q_weight, k_weight, eps, weight_offset, config)
    return q_out, k_out


def _launch_qk(q, k, q_out, k_out, q_weight, k_weight, eps, weight_offset, config, copied=False):
    d = q.shape[-1]
    q_weight, k_weight = _addressable_weight(q_weight, d), _addressable_weight(k_weight, d)
    if _n_rows(q) + _n_rows(k) > ROW_LIMIT:
        # Too many rows for one launch: Q, then K, in pieces of at most ROW_LIMIT rows
        # (the other segment empty).
        for src, dst, wq, wk, is_q in ((q, q_out, q_weight, k_weight, True), (k, k_out, q_weight, k_weight, False)):
            empty = src.new_empty((0, d))
            for xc, oc in _row_chunks([src, dst]):
                if is_q:
                    _launch_qk(xc, empty, oc, empty, wq, wk, eps, weight_offset, config)
                else:
                    _launch_qk(empty, xc, empty, oc, wq, wk, eps, weight_offset, config)
        return
    key = ("Q", q.shape, q.stride(), k.shape, k.stride(), q.dtype, q.device, q_out.stride(), k_out.stride(),
           _wkey(q_weight), _wkey(k_weight), config)
    plan = _plan_for(key, lambda: _qk_plan(q, k, q_weight, k_weight, q_out.stride(), k_out.stride(), config))
    if plan is None:
        # Rare layouts (> 3 leading dims that do not merge, last-dim strides past int32):
        # once on contiguous copies, which are always addressable.
        assert not copied, "a contiguous copy must be addressable"
        qc, kc = q.contiguous(), k.contiguous()
        qt, kt = torch.empty_like(qc), torch.empty_like(kc)
        _launch_qk(qc, kc, qt, kt, q_weight, k_weight, eps, weight_offset, config, copied=True)
        q_out.copy_(qt)
        k_out.copy_(kt)
        return
    qw = q_weight if q_weight is not None else q
    kw = k_weight if k_weight is not None else k
    pq, pqo, pqw, pk, pko, pkw = (q.data_ptr(), q_out.data_ptr(), qw.data_ptr(), k.data_ptr(), k_out.data_ptr(),
                                  kw.data_ptr())
    bits = (((pq & 15) and 1) | ((pqo & 15) and 2) | ((pqw & 15) and 4) | ((pk & 15) and 8)
            | ((pko & 15) and 16) | ((pkw & 15) and 32))
    qi, ki = plan.ints
    _launch.run(plan.kl, plan.entries, bits, plan.grid,
                (qi[0], *_eps_pair(eps), weight_offset, pq, pqo, pqw, *qi[1:], pk, pko, pkw, *ki, *plan.consts),
                (q, q_out, qw, k, k_out, kw), plan.kwargs, plan.device)


from . import torch_library as _torch_library  # noqa: E402 - registers torch.ops.qknorm.* (imports this module)
