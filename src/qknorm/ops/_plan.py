"""The call-plan mechanism every op shares: plan cache, output kinds, overlap pairs, launch.

An op call on CUDA tensors takes one of two ways:

* the *fast call*: the op reads every tensor's metadata and data pointer in one call
  (``native.describe``: shapes, strides, dtypes, devices, in C where it builds), builds a key
  from that, the output kinds and the scalars, and looks it up in :data:`PLANS`. A
  :class:`Plan` is built once per key, after the op's ``check_args`` has passed on that
  metadata; it holds the grid, the kernel's static arguments (packed by name,
  :meth:`launch.KernelLauncher.pack`), the launch entries and records and the byte spans used
  by the per-call overlap checks. Per call the op only checks that the actual buffers do not
  overlap (:func:`apart`), launches (``launch.launch_plan``) and bumps the written tensors'
  autograd versions. A key whose check failed caches None: the call goes the general way,
  which raises the error.
* the *general call*: the op's ``check_args``, then its ``run`` (allocation, private copies
  of aliased read tensors, the PyTorch path on CPU, row splitting, copies of views the
  kernels cannot address) and the same plans.

:data:`PLANS` is bounded and is emptied when the dispatcher forgets its decisions
(``dispatch.reset()``, through ``dispatch.add_reset_hook``), so no plan keeps a config the
dispatcher would no longer pick.
"""
from __future__ import annotations

import enum
import importlib
import os

import torch

from .. import dispatch, launch, native
from . import _express
from ..backend import interpreter_on
from ..config import KernelConfig
from .. import layout
from ..layout import INT32_MAX, cdiv, kernel_layout, views_overlap
from ..reference import FLT_MAX, FLT_MIN, kernel_eps, writing

__all__ = ["OutKind", "Pair", "Plan", "PlanCache", "PLANS", "apart",
           "make_plan", "eps_pair", "for_eps", "bind_scalars", "launch_general", "LO_EPS", "qk_describe",
           "contig_strides", "span", "clear_caches"]

_grad_on = torch.is_grad_enabled
#: Tests only: let the fast call take CPU tensors too (the kernels then run in the Triton
#: interpreter through the launcher's plain path), so its logic is tested without a GPU.
FAST_ON_CPU = False


class OutKind(enum.IntEnum):
    """How a call receives an output tensor."""

    NEW = 0        #: None: the op allocates a new contiguous tensor
    IN_PLACE = 1   #: the input object itself
    OTHER = 2      #: another tensor (may still be the same view as the input: then in place)


NEW, IN_PLACE, OTHER = OutKind.NEW, OutKind.IN_PLACE, OutKind.OTHER


class Pair(enum.IntEnum):
    """Pairs of views whose overlap a fast call checks (index into ``Plan.geom``/``Plan.memo``)."""

    X_OUT = 0       #: rms_norm: x and out; fused add: x and residual
    Q_QOUT = 1      #: q and q_out
    K_KOUT = 2      #: k and k_out
    QOUT_KOUT = 3   #: q_out and k_out
    QOUT_K = 4      #: q_out and k (also q and k, for in place on both)
    KOUT_Q = 5      #: k_out and q


def qk_describe(q, k, qw, kw, q_out, k_out, *more):
    """A QK fast call's arguments described at once: ``(qo, ko, d)`` with each output's
    :class:`OutKind` and ``d = native.describe(grad mode, q, k, qw, kw, q_out | None, k_out | None, *more)``
    (OTHER outputs only), or None when the fast call cannot take them (see ``native.describe``)
    or a tensor requires grad under grad mode. Weights not both tensors or both None are
    described as given: their plan's checks fail, and the general call raises."""
    qo = NEW if q_out is None else IN_PLACE if q_out is q else OTHER
    ko = NEW if k_out is None else IN_PLACE if k_out is k else OTHER
    d = native.describe(_grad_on(), q, k, qw, kw, q_out if qo is OTHER else None, k_out if ko is OTHER else None,
                        *more)
    if d is None or (d[1] < 0 and not FAST_ON_CPU):
        return None
    return qo, ko, d


def cpu_positions_ok(positions, cos_sin_cache) -> bool:
    """With :data:`FAST_ON_CPU` (tests) a fast call may see CPU positions: they must index the
    cache, as the general call checks (CUDA positions are clamped by the kernel instead)."""
    return positions.numel() == 0 or (int(positions.min()) >= 0 and int(positions.max()) < cos_sin_cache.shape[0])


class Plan:
    """Everything about one call that follows from its key.

    ``launcher``/``entries``: the kernel's :class:`launch.KernelLauncher` and the launch
    entries of this specialisation (indexed by the pointers' 16-byte alignment bits);
    ``grid``; ``tail``: every kernel argument after the per-call ones, in signature order;
    ``kwargs``: launch options (``num_warps``, ``launch_pdl``); ``device``: CUDA index.
    ``spans``: byte ranges ``[lo, hi)`` of the views relative to their data pointers;
    ``geom``/``memo``: per :class:`Pair`, the geometry for an exact overlap test and its
    cached answers by pointer distance; ``same_layout``: per output, whether an OTHER
    output with the input's strides is in place when the pointers are equal; ``records``:
    the compiled launch's records by alignment bits (``launch.py``); ``express``: how many
    express-call entries this plan's fast calls tried to make (``_express.wants``).
    """

    __slots__ = ("launcher", "entries", "grid", "tail", "kwargs", "device", "config", "spans", "geom", "memo",
                 "same_layout", "read_spans", "in_place", "records", "express", "lo")

    def __init__(self, launcher, entries, grid, tail, kwargs, device, config):
        self.launcher = launcher
        self.entries = entries
        self.grid = grid
        self.tail = tail
        self.kwargs = kwargs
        self.device = device
        self.config = config
        self.spans = ()
        self.geom = {}
        self.memo = {}
        self.same_layout = (False, False)
        self.read_spans = ()
        self.in_place = None
        self.records = None  # launch records by alignment bits (launch.py), made on the first fast calls
        self.express = 0  # express-call registrations tried (ops/_express.py: wants)
        self.lo = None  # the twin for eps below LO_EPS (for_eps), made on first use


MISS = object()  #: ``PLANS.get(key, MISS)``: a key never seen (None: a key that takes the general call)


class PlanCache(dict):
    """Plans by key (None cached too: a key whose checks failed). Bounded: emptied when it
    holds more than ``limit`` keys, and on ``dispatch.reset()``."""

    def __init__(self, limit: int = 4096):
        super().__init__()
        self.limit = limit

    def clear(self):
        """Forget every plan, and the express call's entries made from them."""
        super().clear()
        _express.clear()

    def build(self, key, fn, *args):
        """The plan of ``key``, built by ``fn(*args)`` (which may return None) on first use."""
        if len(self) >= self.limit:
            self.clear()
        plan = self[key] = fn(*args)
        return plan

    def fetch(self, key, fn, *args):
        """A fast call's plan: the plan of ``key`` (built by ``fn(*args)`` on first use), or None
        where the general call must run: a key known not to take the fast call, or one that
        cannot be hashed (a config of another type; the general call raises the error)."""
        try:
            plan = self.get(key, MISS)
            if plan is MISS:
                plan = self.build(key, fn, *args)
        except TypeError:
            return None
        return plan


PLANS = PlanCache()
dispatch.add_reset_hook(PLANS.clear)


def clear_caches() -> None:
    """Forget every cached plan and launch entry."""
    PLANS.clear()
    launch.clear()


def span(shape, stride, itemsize) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` relative to the data pointer touched by a non-empty view."""
    lo = hi = 0
    for n, s in zip(shape, stride):
        if s >= 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo * itemsize, (hi + 1) * itemsize


def contig_strides(shape) -> tuple:
    """Strides of a new contiguous tensor of ``shape``."""
    st, acc = [], 1
    for n in reversed(tuple(shape)):
        st.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(st))


def out_strides(x, out, kind) -> tuple:
    """Strides of the output of input ``x``: a new contiguous tensor's (NEW), x's (IN_PLACE) or ``out``'s."""
    return contig_strides(x.shape) if kind is NEW else tuple(x.stride()) if kind is IN_PLACE else tuple(out.stride())


def set_pair(plan: Plan, pair: Pair, shape_a, stride_a, shape_b, stride_b, itemsize: int) -> None:
    """Record the geometry of ``pair`` for :func:`apart`'s exact test."""
    plan.geom[pair] = (tuple(shape_a), tuple(stride_a), tuple(shape_b), tuple(stride_b), itemsize)
    plan.memo[pair] = {}


def apart(plan: Plan, pair: Pair, pa: int, sa, pb: int, sb) -> bool:
    """Whether two views (data pointers ``pa``/``pb``, byte spans ``sa``/``sb``) share no
    element: their byte ranges are disjoint, or (views whose ranges meet, such as Q and K
    of one packed buffer) the exact test says so. The exact answer is cached per pointer
    distance. False also when undecidable (the general call then raises its error)."""
    if pa + sa[1] <= pb + sb[0] or pb + sb[1] <= pa + sa[0]:
        return True
    delta = pb - pa
    memo = plan.memo[pair]
    r = memo.get(delta)
    if r is None:
        shape_a, stride_a, shape_b, stride_b, es = plan.geom[pair]
        r = delta % es == 0 and views_overlap(delta // es, shape_a, stride_a, shape_b, stride_b) is False
        if len(memo) < 64:
            memo[delta] = r
    return r


def bind_scalars(plan: Plan, eps: float, weight_offset: float) -> Plan:
    """``plan`` for these scalars (:func:`for_eps`), with them made part of it: its tail then starts with
    the kernel's ``eps, eps_tiny, w_offset`` (the fast call's key holds them), so a call passes pointers
    only. Use the plan it returns."""
    plan = for_eps(plan, eps)
    plan.tail = (*eps_pair(float(eps)), float(weight_offset)) + plan.tail
    return plan


LO_EPS = 2.0 ** -100  #: ``kernels/rows.TINY``: calls with eps below it run the kernels compiled with ``LO_SUMS``


def for_eps(plan: Plan | None, eps: float) -> Plan | None:
    """``plan``, or for eps below :data:`LO_EPS` (eps = 0 included) its twin: the same launch with the
    kernel's ``LO_SUMS`` constexpr on (``kernels/rows.py``: the third sum that keeps rows whose mean
    square is below ``2**-100`` exact when eps does not dominate them). A separate specialisation, so
    the kernel of every other eps holds no code for it. Made once per plan, before any scalars are
    bound (:func:`bind_scalars`)."""
    if plan is None or eps >= LO_EPS:
        return plan
    twin = plan.lo
    if twin is None:
        twin = plan.lo = _lo_twin(plan)
    return twin


def _lo_twin(plan: Plan) -> Plan:
    """A copy of ``plan`` (every slot, its subclass's too) whose tail says ``LO_SUMS=True``, with the launch
    entries of that specialisation and no launch records or express entries yet."""
    launcher = plan.launcher
    i = launcher.static_names.index("LO_SUMS")
    tail = plan.tail[:i] + (True,) + plan.tail[i + 1:]
    spec = next(s for s, e in launcher.specs.items() if e is plan.entries)  # the plan's specialisation
    twin = object.__new__(type(plan))
    for cls in type(plan).__mro__:
        for f in getattr(cls, "__slots__", ()):
            if hasattr(plan, f):
                setattr(twin, f, getattr(plan, f))
    twin.tail = tail
    twin.entries = launcher.entries((launcher.spec(tail),) + spec[1:], len(launcher.ptr_pos))
    twin.records = None
    twin.express = 0
    twin.lo = twin
    return twin


def eps_pair(eps: float):
    """``(eps, eps_tiny)`` kernel arguments (``reference.kernel_eps``), the common case inline."""
    return (eps, 0.0) if FLT_MIN <= eps <= FLT_MAX else kernel_eps(eps)


# --------------------------------------------------------------------------- building plans

def grid(cfg: KernelConfig, n_blocks: int, device) -> tuple[int, int, int]:
    """One program per block, or ``programs_per_sm`` per SM for persistent configs."""
    if cfg.persistent:
        idx = device.index if device.type == "cuda" else None
        return (max(1, min(n_blocks, cfg.programs_per_sm * dispatch.sm_count(idx))), 1, 1)
    return (max(1, n_blocks), 1, 1)


_pdl_default: dict = {}
PDL_MAX_PROGRAMS_PER_SM = 4  # by default PDL only for grids of one wave or so (see use_pdl)


def _pdl_by_default(device) -> bool:
    """PDL on by default on Hopper and newer (compute capability >= 9), as FlashInfer does.
    ``QKNORM_PDL=0`` turns it off, ``QKNORM_PDL=1`` asks for it wherever Triton supports it."""
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


def use_pdl(cfg: KernelConfig, device=None, programs: int = 1) -> bool:
    """Whether a launch uses programmatic dependent launch: ``cfg.pdl``, or the device
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
        if programs > PDL_MAX_PROGRAMS_PER_SM * dispatch.sm_count(idx):
            return False
    from ..kernels.pdl import HAVE_GDC
    return HAVE_GDC


def choose(op: str, dtype, d: int, n_rows: int, device, config):
    """``config`` when given, else the dispatcher's pick for the problem."""
    if config is not None:
        return config
    return dispatch.choose_config(op, dtype, d, n_rows, device)[0]


def choose_rope(dtype, d: int, rotary_dim: int, n_rows: int, device, config) -> KernelConfig:
    """The config of the QK norm + RoPE kernels (``qk_rms_norm_rope``, the attention prologue): the
    caller's ``config`` as given, else :func:`dispatch.choose_rope_config`."""
    if config is not None:
        return config
    return dispatch.choose_rope_config(dtype, d, rotary_dim, n_rows, device)[0]


def row_form(d: int, r: int, is_neox: bool) -> dict:
    """The rope kernels' ``WHOLE``/``BLOCK_D``/``PARTNER_LOAD`` constexprs (:func:`dispatch.rope_row_form`)."""
    form = dispatch.rope_row_form(d, r, is_neox)
    return dict(WHOLE=form != "split", BLOCK_D=dispatch.next_pow2(d), PARTNER_LOAD=form == "load")


def make_plan(launcher, cfg: KernelConfig, n_blocks: int, device, ptr_dtypes: tuple, **static) -> Plan:
    """A plan launching ``launcher``'s kernel under ``cfg`` over ``n_blocks`` blocks.

    ``static``: every kernel parameter after the per-call ones, by name, except
    ``PERSISTENT`` and ``USE_PDL`` (taken from ``cfg`` and the grid) and, for kernels that have it,
    ``RANGE_BRANCH`` (set here, whatever ``static`` says: on for one-warp programs of several rows,
    ``kernels/rows.row_normalized``). ``ptr_dtypes``: the dtypes of the pointer arguments (part of
    Triton's specialisation).
    """
    g = grid(cfg, n_blocks, device)
    pdl = use_pdl(cfg, device, g[0])
    if "RANGE_BRANCH" in launcher.static_names:
        static["RANGE_BRANCH"] = cfg.num_warps == 1 and cfg.rows > 1
    tail = launcher.pack(PERSISTENT=cfg.persistent, USE_PDL=pdl, **static)
    kwargs = {"num_warps": cfg.num_warps}
    if pdl:
        kwargs["launch_pdl"] = True
    dev = device.index if device.type == "cuda" else -1
    spec = (launcher.spec(tail), ptr_dtypes, cfg.num_warps, pdl, dev)
    return Plan(launcher, launcher.entries(spec, len(launcher.ptr_pos)), g, tail, kwargs, dev, cfg)


def blocks(n_rows: int, cfg: KernelConfig) -> int:
    return cdiv(n_rows, cfg.rows)


def checked(fn) -> bool:
    """Whether ``fn()`` passes (a plan's argument checks) without TypeError/ValueError."""
    try:
        fn()
        return True
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- general-call helpers

def weight_ok(w, d: int) -> bool:
    """Whether the kernels' int32 column offsets ``col * stride`` reach every element of the weight ``w``
    (``[d]`` or None)."""
    return w is None or abs(w.stride(0)) * d <= INT32_MAX


def addressable_weight(w, d: int):
    """``w``, or a contiguous copy when ``col * stride`` would overflow the kernels' int32 offsets."""
    return w if weight_ok(w, d) else w.contiguous()


def cos_sin_ok(cs, r: int) -> bool:
    """Whether the RoPE kernels' int32 column offsets reach every used column of ``cos_sin_cache``
    (``[max_pos, >= r]``, columns ``0 .. r-1``)."""
    return abs(cs.stride(1)) * r <= INT32_MAX


def addressable_cos_sin(cs, r: int):
    """``cs``, or a contiguous copy when its column offsets would overflow int32 (:func:`cos_sin_ok`)."""
    return cs if cos_sin_ok(cs, r) else cs.contiguous()


def n_rows(t) -> int:
    n = 1
    for s in t.shape[:-1]:
        n *= s
    return n


def row_chunks(ts, limit: int = None):
    """Views of the same-shaped tensors ``ts`` split along their leading dims so that each
    piece has at most ``limit`` rows (default ``layout.ROW_LIMIT``); one piece when it fits."""
    limit = layout.ROW_LIMIT if limit is None else limit
    shape = ts[0].shape
    if n_rows(ts[0]) <= limit:
        yield ts
        return
    dim = next(i for i in range(len(shape) - 1) if shape[i] > 1)
    inner = 1
    for n in shape[dim + 1:-1]:
        inner *= n
    step = max(1, limit // inner)
    for start in range(0, shape[dim], step):
        n = min(step, shape[dim] - start)
        yield from row_chunks([t.narrow(dim, start, n) for t in ts], limit)


def strides_named(prefix: str, strides) -> dict:
    """Kernel parameters ``{prefix}s0, {prefix}s1, {prefix}s2, {prefix}sd`` of a row layout."""
    return dict(zip((f"{prefix}s0", f"{prefix}s1", f"{prefix}s2", f"{prefix}sd"), strides))


def row_plan(launcher, op: str, x, w, o_strides, config, second: str):
    """Plan of a row-wise kernel (rms_norm, fused add) over ``x`` and a second tensor of x's
    shape with strides ``o_strides`` (kernel parameters ``{second}s0`` ... ``{second}sd``);
    None when the kernel cannot address them directly."""
    shape = x.shape
    d = shape[-1]
    lay = kernel_layout(shape, d, x.stride(), o_strides)
    if lay is None or not weight_ok(w, d):
        return None
    cfg = choose(op, x.dtype, d, lay.n_rows, x.device, config)
    (_, n1, n2), (xs, os_) = lay.sizes, lay.strides
    return make_plan(launcher, cfg, blocks(lay.n_rows, cfg), x.device,
                     (x.dtype, w.dtype if w is not None else x.dtype),
                     n_rows=lay.n_rows, D=d, N1=n1, N2=n2, **strides_named("x", xs), **strides_named(second, os_),
                     ws=w.stride(0) if w is not None else 0, HAS_WEIGHT=w is not None, ROWS=cfg.rows,
                     BLOCK_D=cfg.block_d, CHUNKED=cfg.chunk_mode(d))


def cached(key, build):
    """The plan of ``key`` from :data:`PLANS`, built by ``build()`` on first use."""
    return PLANS.get(key) or lookup(key, build)


def launch_general_rows(launcher, op: str, second: str, x, y, weight, eps: float, weight_offset: float, config,
                writes_x: bool, copied: bool = False) -> None:
    """General launch of a row kernel over ``x`` and ``y`` (rms_norm: the output; fused
    add: the residual) after every check: a weight the kernel cannot address is copied
    once, calls past ``ROW_LIMIT`` rows run in pieces, and views the kernel cannot address
    run once on contiguous copies (``writes_x``: x is written too and gets its copy back)."""
    weight = addressable_weight(weight, x.shape[-1])
    if n_rows(x) > layout.ROW_LIMIT:
        for xc, yc in row_chunks([x, y]):
            launch_general_rows(launcher, op, second, xc, yc, weight, eps, weight_offset, config, writes_x)
        return
    key = (op, "general", x.shape, x.stride(), x.dtype, x.get_device(), y.stride(),
           None if weight is None else (weight.stride(), weight.dtype), config)
    plan = cached(key, lambda: row_plan(launcher, op, x, weight, y.stride(), config, second))
    if plan is None:
        # > 3 leading dims that do not merge, or a last-dim stride past int32: once on
        # contiguous copies, which are always addressable.
        assert not copied, "a contiguous copy must be addressable"
        xc, yc = x.contiguous(), y.contiguous()
        launch_general_rows(launcher, op, second, xc, yc, weight, eps, weight_offset, config, writes_x, copied=True)
        with writing(x if writes_x else None, y):
            if writes_x:
                x.copy_(xc)
            y.copy_(yc)
        return
    w = weight if weight is not None else x
    px, py, pw = x.data_ptr(), y.data_ptr(), w.data_ptr()
    launch_general(plan, (px, py, pw), eps, weight_offset, (x, y, w))


def launch_general(plan: Plan, ptrs: tuple, eps: float, weight_offset: float, tensors: tuple) -> None:
    """A general call's launch of ``plan`` (scalars not bound): ``ptrs`` then the per-call scalars, on the
    plan's ``LO_SUMS`` twin for eps below :data:`LO_EPS` (:func:`for_eps`). The one place a general call
    turns eps into kernel arguments, so no launch site can pair them wrongly."""
    launch.launch_plan(for_eps(plan, eps), ptrs + (*eps_pair(eps), weight_offset), tensors)


# --------------------------------------------------------------------------- Q and K of one call

def set_qk_pairs(plan: Plan, q, k, q_out_strides, k_out_strides, reads=()) -> None:
    """Spans and overlap geometry of a QK call (outputs strided ``q_out_strides``/``k_out_strides``) and the
    byte spans of the tensors it only reads (weights, caches; None entries allowed). ``plan.spans``:
    those of q, k, q_out, k_out, in that order."""
    es = q.element_size()
    q_strides, k_strides = tuple(q.stride()), tuple(k.stride())
    q_out_strides, k_out_strides = tuple(q_out_strides), tuple(k_out_strides)
    plan.spans = (span(q.shape, q_strides, es), span(k.shape, k_strides, es), span(q.shape, q_out_strides, es),
                  span(k.shape, k_out_strides, es))
    set_pair(plan, Pair.Q_QOUT, q.shape, q_strides, q.shape, q_out_strides, es)
    set_pair(plan, Pair.K_KOUT, k.shape, k_strides, k.shape, k_out_strides, es)
    set_pair(plan, Pair.QOUT_KOUT, q.shape, q_out_strides, k.shape, k_out_strides, es)
    set_pair(plan, Pair.QOUT_K, q.shape, q_out_strides, k.shape, k_strides, es)
    set_pair(plan, Pair.KOUT_Q, k.shape, k_out_strides, q.shape, q_strides, es)
    plan.same_layout = (q_out_strides == q_strides, k_out_strides == k_strides)
    plan.read_spans = tuple((0, 0) if t is None else span(t.shape, t.stride(), t.element_size()) for t in reads)


def in_place_pair(plan: Plan, q_ptr: int, k_ptr: int):
    """For a QK call in place on both: ``(k_ptr - q_ptr, lo, hi)`` when Q and K share no element,
    where ``[q_ptr + lo, q_ptr + hi)`` is the byte range they cover together; else None. The
    answer for the last pointer distance is kept in ``plan.in_place``."""
    known = plan.in_place
    if known is not None and k_ptr - q_ptr == known[0]:
        return known
    q_span, k_span = plan.spans[0], plan.spans[1]
    if not apart(plan, Pair.QOUT_K, q_ptr, q_span, k_ptr, k_span):
        return None
    delta = k_ptr - q_ptr
    plan.in_place = (delta, min(q_span[0], delta + k_span[0]), max(q_span[1], delta + k_span[1]))
    return plan.in_place


def qk_placed(plan: Plan, d, q, k, q_out, k_out, qo, ko, reads):
    """Where a QK fast call reads and writes, after its overlap rules: ``(q_out, k_out, q_ptr, k_ptr,
    q_out_ptr, k_out_ptr)`` (:func:`qk_targets`; in place on both: Q and K sharing no element, by
    :func:`in_place_pair`), or None when the general call must run (a rule fails, or a read-only
    tensor at the data pointers ``reads``, spans ``plan.read_spans``, shares memory with a written one:
    the general call reads it from a private copy). ``d``: the call's :func:`qk_describe`; ``qo``/``ko``:
    the outputs' :class:`OutKind`."""
    if qo is IN_PLACE and ko is IN_PLACE:  # the engine's call: Q and K of a packed buffer, in place
        q_ptr, k_ptr = d[2], d[3]
        both = in_place_pair(plan, q_ptr, k_ptr)
        if both is None or not reads_outside(plan, reads, q_ptr + both[1], q_ptr + both[2]):
            return None
        return q_out, k_out, q_ptr, k_ptr, q_ptr, k_ptr
    placed = qk_targets(plan, q, k, q_out, k_out, qo, ko)
    if placed is None or ((qo or ko) and not reads_apart(plan, reads, qo, ko, placed[4], placed[5])):
        return None
    return placed


def reads_outside(plan: Plan, ptrs, lo: int, hi: int) -> bool:
    """Whether no read-only tensor at ``ptrs`` (spans ``plan.read_spans``) meets ``[lo, hi)``."""
    for p, (a, b) in zip(ptrs, plan.read_spans):
        if p + b > lo and hi > p + a:
            return False
    return True


def with_outputs(key: tuple, qo, q_out, ko, k_out) -> tuple:
    """``key`` extended by the metadata of the OTHER outputs of a QK call."""
    if qo is OTHER:
        key += (q_out.shape, q_out.stride(), q_out.dtype, q_out.get_device())
    if ko is OTHER:
        key += (k_out.shape, k_out.stride(), k_out.dtype, k_out.get_device())
    return key


def lookup(key, build):
    """:data:`PLANS`' plan of ``key`` after a miss of ``PLANS.get``: None when the key is known
    not to take the fast call, else built by ``build()`` (which may return None)."""
    return None if key in PLANS else PLANS.build(key, build)


_launchers: dict = {}


def kernel_launcher(module: str, kernel: str, pointers: tuple, per_call: tuple) -> launch.KernelLauncher:
    """The :class:`launch.KernelLauncher` of ``kernels/<module>.py``'s ``kernel``, made on
    first use (importing triton then, so CPU-only callers never do)."""
    kl = _launchers.get(kernel)
    if kl is None:
        fn = getattr(importlib.import_module(f"..kernels.{module}", __package__), kernel)
        kl = _launchers[kernel] = launch.KernelLauncher(fn, pointers, per_call)
    return kl


def qk_targets(plan: Plan, q, k, q_out, k_out, qo, ko):
    """Per-call data pointers of a QK call after its overlap rules (outputs are their input
    or share no memory with it, and meet neither the other output nor the other input);
    NEW outputs are allocated here. Returns ``(q_out, k_out, q_ptr, k_ptr, q_out_ptr, k_out_ptr)``,
    or None when a rule fails (the general call then raises)."""
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    q_span, k_span, q_out_span, k_out_span = plan.spans
    if qo is IN_PLACE and ko is IN_PLACE:  # the common engine call: Q and K of a packed buffer
        return (q, k, q_ptr, k_ptr, q_ptr, k_ptr) if apart(plan, Pair.QOUT_K, q_ptr, q_span, k_ptr, k_span) else None
    t = _target(plan, q, q_out, qo, q_ptr, q_span, q_out_span, Pair.Q_QOUT, plan.same_layout[0])
    if t is None:
        return None
    q_out, q_out_ptr, q_in_place = t
    t = _target(plan, k, k_out, ko, k_ptr, k_span, k_out_span, Pair.K_KOUT, plan.same_layout[1])
    if t is None:
        return None
    k_out, k_out_ptr, k_in_place = t
    if qo and ko and not apart(plan, Pair.QOUT_KOUT, q_out_ptr, q_out_span, k_out_ptr, k_out_span):
        return None
    if qo and not k_in_place and not apart(plan, Pair.QOUT_K, q_out_ptr, q_out_span, k_ptr, k_span):
        return None
    if ko and not q_in_place and not apart(plan, Pair.KOUT_Q, k_out_ptr, k_out_span, q_ptr, q_span):
        return None
    return q_out, k_out, q_ptr, k_ptr, q_out_ptr, k_out_ptr


def _target(plan: Plan, x, out, kind, x_ptr: int, x_span, out_span, pair: Pair, same_layout: bool):
    """One output of a QK call: ``(out, its pointer, in place?)``, a NEW one allocated; None
    when an OTHER output shares memory with its input without being the same view."""
    if kind is NEW:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        return out, out.data_ptr(), False
    if kind is IN_PLACE:
        return out, x_ptr, True
    out_ptr = out.data_ptr()
    if out_ptr == x_ptr and same_layout:
        return out, out_ptr, True
    return (out, out_ptr, False) if apart(plan, pair, x_ptr, x_span, out_ptr, out_span) else None


def register_qk(op: int, args: tuple, plan: Plan, ptrs: tuple, io: tuple, head: tuple, reads, qo, ko, q, k,
                cpu_check=None) -> None:
    """The express entry (``_express.register``) of a QK-family fast call that just launched
    ``plan``: ``io`` the argument positions of q, k, q_out, k_out; ``reads`` ``(position, span)`` of the
    tensors it only reads; the overlap pairs are those of :func:`qk_targets` (the :class:`Pair` named at
    each) and :func:`reads_apart`."""
    q_arg, k_arg, q_out_arg, k_out_arg = io
    q_span, k_span, q_out_span, k_out_span = plan.spans
    written = ((q_out_arg, q_out_span),) * bool(qo) + ((k_out_arg, k_out_span),) * bool(ko)
    pairs = ([(q_arg, q_span, q_out_arg, q_out_span)] * (qo is OTHER)  # Pair.Q_QOUT
             + [(k_arg, k_span, k_out_arg, k_out_span)] * (ko is OTHER))  # Pair.K_KOUT
    if qo and ko:
        pairs.append((q_out_arg, q_out_span, k_out_arg, k_out_span))  # Pair.QOUT_KOUT
    if qo:
        pairs.append((q_out_arg, q_out_span, k_arg, k_span))  # Pair.QOUT_K
    if ko:
        pairs.append((k_out_arg, k_out_span, q_arg, q_span))  # Pair.KOUT_Q
    pairs += [(i, s, o, so) for i, s in reads for o, so in written]
    allocs = tuple((out, src, t) for out, src, t, kind in ((q_out_arg, q_arg, q, qo), (k_out_arg, k_arg, k, ko))
                   if kind is NEW)
    _express.register(op, args, plan, ptrs, head, pairs, bumps=tuple(o for o, _ in written), allocs=allocs,
                      ret=(q_out_arg, k_out_arg), cpu_check=cpu_check)


def qk_outputs(q, k, q_out, k_out):
    """The general call's outputs of a QK op: the given ones, or new tensors of q's/k's shape."""
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    return q_out, k_out


def reads_apart(plan: Plan, ptrs, qo, ko, q_out_ptr: int, k_out_ptr: int) -> bool:
    """Whether the read-only tensors at ``ptrs`` (spans ``plan.read_spans``) share no byte
    with a written output (a NEW output is fresh memory and is not checked). False: the
    general call reads them from private copies."""
    _, _, q_out_span, k_out_span = plan.spans
    written = ((q_out_ptr + q_out_span[0], q_out_ptr + q_out_span[1]) if qo else None,
               (k_out_ptr + k_out_span[0], k_out_ptr + k_out_span[1]) if ko else None)
    for p, (a, b) in zip(ptrs, plan.read_spans):
        for w in written:
            if w is not None and p + b > w[0] and w[1] > p + a:
                return False
    return True
