"""RMSNorm over a dimension split across tensor-parallel ranks: one all-reduce of row sums.

Some models normalise Q and K over the whole projection, not per head (OLMo 2: ``q_norm``
over ``Hq*D``, ``k_norm`` over ``Hkv*D``). Under tensor parallelism each rank holds only
its heads, ``q [T, Hq*D/tp]``. Engines today all-gather Q and K, normalise the full width
and keep their slice; only the per-token sum of squares has to cross the link::

    y = rms_norm_tp(x, w_shard, eps, group=tp_group)               # one tensor
    q, k = qk_rms_norm_tp(q, k, qw_shard, kw_shard, eps, group=tp_group,
                          q_out=q, k_out=k)                        # Q and K, one all-reduce

Each rank passes its shard ``x [..., D_local]`` (any strides, e.g. a slice of the packed
QKV buffer) and the matching shard of the weight. The result on every rank is its slice
of the norm of the full row, ``x / sqrt(sum_all_ranks(x**2) / D_full + eps) * (w + offset)``:
fp64 row sums (so rows of 1e20 or 1e-25 neither overflow nor underflow), ``rstd`` and
``x * rstd`` in fp64 (every positive eps, even one below fp32's range, acts as positive),
weight multiply in fp32, one rounding.
``D_full`` is ``D_local * world_size`` (an even split, as TP engines shard heads) unless
``full_width`` (``q_full_width``/``k_full_width``) says otherwise; uneven shards are
supported by passing it.

How a call runs (eager):
  1. checks of the local arguments (dtype, weight shard length, eps and other scalars
     — Python or NumPy numbers —, ``config``, outputs: no output may overlap itself, an
     input or another output), then of the group (initialised, this rank a member) — all
     before any collective and before anything is written. A weight that overlaps an
     output is cloned first (the values on entry are used);
  2. ``kernels.tp_norm.tp_sumsq_kernel`` writes the fp64 row sums of Q and K into one
     packed buffer ``[rows_q + rows_k]`` (one launch for both);
  3. ``torch.distributed.all_reduce`` of that buffer (NCCL on GPUs, gloo on CPU): ONE
     collective of ``8 * (rows_q + rows_k)`` bytes;
  4. ``kernels.tp_norm.tp_scale_kernel`` scales Q and K (one launch for both).
CPU tensors take a PyTorch path with the same numerics unless ``QKNORM_BACKEND=triton``
with ``TRITON_INTERPRET=1`` runs the kernels (``backend.use_triton``, as ``ops`` does).
Addressing: row offsets are int64 in the kernels, column offsets int32; a weight whose
``|stride| * (D - 1)`` reaches 2**31 is copied contiguous (it is small), an activation
whose layout the kernels cannot address is copied contiguous once, and one with more
rows than the kernels' int32 row index takes the PyTorch path (never a retry).

Autograd (eager): when grad mode is on and an input or weight requires grad, the call
runs through ``_TPNormFn``, whose backward all-reduces one fp64 dot product per row
(Q's and K's in one buffer) across the group — every rank must run the backward, as it
runs the forward. In-place outputs are then written with ``copy_`` (PyTorch's in-place
rules: a leaf that requires grad, or a view of one, is refused before anything is
written); ``out=`` other than the input does not support autograd (a RuntimeError, as
for PyTorch's ``out=`` ops). Under ``torch.compile`` inputs must not require grad.

Mismatches across ranks (check mode):
  Local arguments are checked on every call, before any collective; an error raises on
  the rank that made it (its peers would then wait in the all-reduce until the group's
  timeout). What only the other ranks know (their widths, dtypes, row counts, eps,
  weight_offset, whether weights are given, which op) is checked only with ``check=True``:
  one extra ``all_gather`` of a fixed-size fp64 descriptor per rank before the
  all-reduce, after which every rank evaluates the same gathered table and raises the
  same ``ValueError`` (``TypeError`` for dtypes). A rank whose local arguments are
  invalid still joins that all-gather with an error flag, so with ``check=True`` every
  error, local or not, raises on every rank and no rank is left waiting. It costs one
  collective and a host sync, so the default is ``check=False``: turn it on for the first
  call after loading a model (and in tests, debugging), with the same ``check`` on every
  rank. There is deliberately no hidden per-shape "checked once" cache: whether a rank
  joins the check collective must not depend on its local state, or mismatched ranks
  would enter different collectives and hang. Without the check, a rank whose row count
  differs fails or hangs in the all-reduce (buffers of different sizes) and a width or
  eps mismatch silently gives wrong values.

CUDA graphs:
  The eager path (two Triton launches + ``dist.all_reduce`` on a buffer allocated inside
  the captured region) is capturable: NCCL all-reduce can be recorded in a CUDA graph as
  long as the communicator already exists, i.e. make one eager call (or any collective on
  the group) before capturing, which engines' warm-up runs do. ``check=True`` needs a
  host sync and raises a clear error if called while a stream is capturing.

torch.compile:
  Under ``torch.compile`` (``torch.compiler.is_compiling()``) the call takes a traceable
  path: the two local steps are ``torch.library`` custom ops (``qknorm::tp_partial_sumsq``,
  ``qknorm::tp_scale``, with fake implementations) and the collective is the functional
  ``torch.distributed._functional_collectives.all_reduce`` (``_c10d_functional.all_reduce``
  + ``wait_tensor`` in the graph): one graph, no break, ``fullgraph=True`` works. Outputs
  are computed out of place and copied into ``out``/``q_out``/``k_out`` when given (one
  extra write). Overlap checks of outputs are eager-only, and ``check=True`` is not
  traceable (fullgraph: an error; otherwise Dynamo runs that frame eagerly). The eager
  path does not go through the custom-op layer, to keep its host cost low.

Launch configuration: ``dispatch.choose_config("rms_norm", dtype, max local width, rows)``
(the same row-reduction heuristic/tables); only ``rows``, ``block_d`` and ``num_warps``
are used (both kernels loop over ``block_d`` column chunks; no persistent grid, no PDL).
Eager launches are plain ``kernel[grid](...)`` calls (tens of µs of host time each on
the H100 host): use CUDA graphs in decode.

Tested on CPU only (``tests/test_distributed.py``: gloo, 2 and 4 processes, PyTorch
path and Triton interpreter, the compile path with AOT tracing). The NCCL path, CUDA-graph
capture and the timings need a multi-GPU run: ``qknorm bench --preset tp`` (``bench/tp.py``),
``docs/tensor-parallel-norm.md``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.distributed as dist

from . import layout
from . import validate as V
from .backend import use_triton
from .dispatch import choose_config
from .ops import _cdiv, _layout_of

__all__ = ["rms_norm_tp", "qk_rms_norm_tp"]

_kernels = None


def _k():
    """``kernels.tp_norm``, imported on first use so CPU-only callers never import triton."""
    global _kernels
    if _kernels is None:
        from .kernels import tp_norm
        _kernels = tp_norm
    return _kernels


# --------------------------------------------------------------------------- checks

def _local_width(name: str, x) -> int:
    d = x.shape[-1]
    if d < 1:
        raise ValueError(f"{name} must have a local shard width (last dim) >= 1, got shape {tuple(x.shape)}")
    return d


def _full_width(full_width, d_local: int, world: int) -> int:
    return d_local * world if full_width is None else full_width


def _shard_weight(name: str, w, d: int, ref_name: str, ref) -> None:
    try:
        V.weight(name, w, d, ref_name, ref)
    except ValueError as e:
        if str(e).startswith(f"{name} must have shape"):
            raise ValueError(f"{e}: a weight shard must have this rank's local width") from None
        raise


def _group_size(group) -> int:
    """World size of ``group``; raises before any collective when there is no usable group."""
    if not dist.is_available():
        raise RuntimeError("qknorm.distributed needs torch.distributed, which this PyTorch build lacks")
    if not dist.is_initialized():
        raise RuntimeError("qknorm.distributed: no process group is initialised; call "
                           "torch.distributed.init_process_group(...) first (NCCL for CUDA tensors, "
                           "gloo for CPU tensors)")
    if dist.get_rank(group) < 0:
        raise ValueError("qknorm.distributed: this process is not a member of `group`")
    return dist.get_world_size(group)


def _backend_fits(group, t) -> None:
    if not t.is_cuda and str(dist.get_backend(group)) == "nccl":
        raise ValueError(f"tensors are on {t.device} but the process group's backend is NCCL, "
                         f"which only reduces CUDA tensors (use a gloo group for CPU tensors)")


def _outputs(x_name, x, out_name, out) -> None:
    V.output(out_name, out, x_name, x)
    if out is not None and out is not x:
        V.in_place_or_disjoint(out_name, out, x_name, x)


# --------------------------------------------------------------------------- check mode

_DTYPE_CODE = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_CODE_DTYPE = {v: str(k).replace("torch.", "") for k, v in _DTYPE_CODE.items()}
# descriptor fields (fixed length whatever the op, so ranks calling different ops still agree on sizes)
_FIELDS = ("error", "op", "a_rows", "a_width", "a_full", "a_dtype", "b_rows", "b_width", "b_full",
           "b_dtype", "has_weight", "eps", "weight_offset")
_OPS = {1: "rms_norm_tp", 2: "qk_rms_norm_tp"}


def _raise_everywhere(err: Exception, check: bool, group, t, op: int):
    """Re-raise a local argument error; with ``check=True`` first tell the other ranks
    (through the check collective they are about to enter) so that they raise too."""
    if not check:
        raise err
    _group_size(group)
    if isinstance(t, torch.Tensor):
        device = t.device
    elif "nccl" in str(dist.get_backend(group)) and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    _check_across_ranks(group, device, dict(error=1, op=op), ("x", None) if op == 1 else ("q", "k"), err)


def _check_across_ranks(group, device, desc: dict, names: tuple, own_error: Exception | None = None) -> None:
    """All-gather ``desc`` (one fixed-size fp64 vector per rank) and raise, identically on
    every rank, if any rank rejected its arguments or the ranks disagree. One collective,
    then a host sync."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("check=True needs a host sync and cannot run during CUDA-graph capture; "
                           "make one eager call with check=True before capturing")
    mine = torch.tensor([float(desc.get(f, 0)) for f in _FIELDS], dtype=torch.float64, device=device)
    world = dist.get_world_size(group)
    table = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(table, mine, group=group)
    rows = [dict(zip(_FIELDS, t.tolist())) for t in table]
    op_name = _OPS.get(int(desc["op"]), "?")
    bad = [r for r, row in enumerate(rows) if row["error"]]
    if own_error is not None:
        raise own_error
    if bad:
        raise ValueError(f"{op_name} check=True: rank(s) {bad} of the group rejected their arguments "
                         f"(their own error says why); raised on every rank")
    problems, dtype_problem = [], False

    def per_rank(field, fmt=lambda v: v):
        return "[" + ", ".join(str(fmt(r[field])) for r in rows) + "]"

    if len({r["op"] for r in rows}) > 1:
        raise ValueError(f"{op_name} check=True: ranks call different ops: "
                         f"{per_rank('op', lambda v: _OPS.get(int(v), v))} (raised on every rank)")
    for seg, name in (("a", names[0]), ("b", names[1])):
        if name is None:
            continue
        if len({r[f"{seg}_dtype"] for r in rows}) > 1:
            dtype_problem = True
            problems.append(f"{name} dtypes differ across ranks: "
                            f"{per_rank(f'{seg}_dtype', lambda v: _CODE_DTYPE.get(int(v), v))}")
        if len({r[f"{seg}_rows"] for r in rows}) > 1:
            problems.append(f"{name} row counts (product of leading dims) differ across ranks: "
                            f"{per_rank(f'{seg}_rows', int)}")
        fulls = {r[f"{seg}_full"] for r in rows}
        total = int(sum(r[f"{seg}_width"] for r in rows))
        widths = per_rank(f"{seg}_width", int)
        if len(fulls) > 1:
            problems.append(f"{name} full widths differ across ranks: {per_rank(f'{seg}_full', int)} "
                            f"(local widths {widths})")
        elif total != int(next(iter(fulls))):
            arg = "full_width" if names[1] is None else f"{name}_full_width"
            problems.append(f"{name} local widths per rank {widths} sum to {total}, but the full width "
                            f"is {int(next(iter(fulls)))} (for uneven shards pass {arg}={total})")
    for field, what in (("has_weight", "weight presence"), ("eps", "eps"), ("weight_offset", "weight_offset")):
        if len({r[field] for r in rows}) > 1:
            problems.append(f"{what} differs across ranks: {per_rank(field)}")
    if problems:
        msg = f"{op_name} check=True: ranks disagree (raised on every rank): " + "; ".join(problems)
        raise (TypeError if dtype_problem else ValueError)(msg)


# --------------------------------------------------------------------------- local steps

_INT32_LIMIT = 2**31 - 1
_ROW_LIMIT = _INT32_LIMIT - 65536  # flat row indices (int32 in the kernels) stay below this


def _rows(x) -> int:
    return math.prod(x.shape[:-1])


def _layout(x, *others):
    """Joint row layout of ``x`` and tensors of its shape (``ops._layout_of``), or None
    (more than 3 unmergeable leading dims, a column offset that could pass int32, or too
    many rows for the kernels' int32 row indices)."""
    return _layout_of(x.shape, x.shape[-1], x.stride(), *(o.stride() for o in others))


def _kernel_view(x, y=None):
    """``(x, y, layout, copy_back)`` the kernels can address, or None: then the call takes
    the PyTorch path (same numerics). A layout the kernels cannot address is copied
    contiguous ONCE; if even that does not fit (rows past int32) there is no retry."""
    lay = _layout(x) if y is None else _layout(x, y)
    if lay is not None:
        return x, y, lay, None
    if _rows(x) > _ROW_LIMIT:
        return None
    xc = x.contiguous()
    yc = None if y is None else torch.empty_like(xc)
    lay = _layout(xc) if y is None else _layout(xc, yc)
    if lay is None:
        return None
    return xc, yc, lay, (None if y is None else (y, yc))


def _kernel_weight(w, d: int):
    """The weight as the scale kernel reads it: ``c * stride`` is int32 there, so a shard
    whose ``|stride| * (d - 1)`` reaches 2**31 is read from a contiguous copy (weights are
    small)."""
    if w is not None and abs(w.stride(0)) * (d - 1) > _INT32_LIMIT:
        return w.contiguous()
    return w


def _weight_args(w, fallback):
    return (w, w.stride(0)) if w is not None else (fallback, 0)


def _sums_torch(x):
    """Row sums of squares in fp64 (the kernel's numerics: fp32 values, fp64 sum)."""
    return x.float().double().square().sum(-1).reshape(-1)


def _partial_sums(a, b, sums, config=None) -> None:
    """``sums[:rows_a]`` = fp64 row sums of squares of ``a``; then those of ``b`` (may be None)."""
    n_a = _rows(a)
    va = _kernel_view(a) if use_triton(a) else None
    vb = None if b is None or va is None else _kernel_view(b)
    if va is None or (b is not None and vb is None):
        sums[:n_a].copy_(_sums_torch(a))
        if b is not None:
            sums[n_a:].copy_(_sums_torch(b))
        return
    a, _, la, _ = va
    if b is not None:
        b, _, lb, _ = vb
    else:
        b, lb = a, la._replace(n_rows=0)
    da, db = a.shape[-1], b.shape[-1]
    cfg = _launch_config(a, max(da, db), la.n_rows + lb.n_rows, config)
    n_blocks = _cdiv(la.n_rows, cfg.rows) + _cdiv(lb.n_rows, cfg.rows)
    (_, an1, an2), (ast,) = la.sizes, la.strides
    (_, bn1, bn2), (bst,) = lb.sizes, lb.strides
    _k().tp_sumsq_kernel[(max(1, n_blocks),)](
        a, sums, la.n_rows, da, an1, an2, *ast,
        b, sums[n_a:] if lb.n_rows else sums, lb.n_rows, db, bn1, bn2, *bst,
        ROWS=cfg.rows, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps)


def _launch_config(x, d, n_rows, config):
    """``config`` (a KernelConfig; only rows, block_d and num_warps matter) or the dispatcher's pick."""
    if config is not None:
        return config
    return choose_config("rms_norm", x.dtype, d, n_rows, x.device)[0]


def _scale_torch(eps, weight_offset, x, y, w, full, s) -> None:
    """``y = fp32(x * rstd) * (w + offset)`` with ``rstd`` and ``x * rstd`` in fp64."""
    rstd = torch.rsqrt(s.view(*x.shape[:-1], 1) / full + eps)
    r = (x.float().double() * rstd).float()
    if w is not None:
        r = r * (w.float() + weight_offset)
    y.copy_(r)


def _scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums, config=None) -> None:
    """``y = x * rsqrt(total / full + eps) * (w + offset)`` for ``a`` (then ``b`` if not None)."""
    n_a = _rows(a)
    va = _kernel_view(a, ya) if use_triton(a) else None
    vb = None if b is None or va is None else _kernel_view(b, yb)
    if va is None or (b is not None and vb is None):
        _scale_torch(eps, weight_offset, a, ya, wa, a_full, sums[:n_a])
        if b is not None:
            _scale_torch(eps, weight_offset, b, yb, wb, b_full, sums[n_a:])
        return
    copies = []
    a, ya, la, ca = va
    wa = _kernel_weight(wa, a.shape[-1])
    if ca is not None:
        copies.append(ca)
    if b is not None:
        b, yb, lb, cb = vb
        wb = _kernel_weight(wb, b.shape[-1])
        if cb is not None:
            copies.append(cb)
        sb = sums[n_a:]
    else:
        b, yb, wb, b_full, lb, sb = a, ya, wa, a_full, la._replace(n_rows=0), sums
    da, db = a.shape[-1], b.shape[-1]
    cfg = _launch_config(a, max(da, db), la.n_rows + lb.n_rows, config)
    n_blocks = _cdiv(la.n_rows, cfg.rows) + _cdiv(lb.n_rows, cfg.rows)
    wa_, was = _weight_args(wa, a)
    wb_, wbs = _weight_args(wb, b)
    (_, an1, an2), (axs, ays) = la.sizes, la.strides
    (_, bn1, bn2), (bxs, bys) = lb.sizes, lb.strides
    _k().tp_scale_kernel[(max(1, n_blocks),)](
        eps, weight_offset,
        a, ya, wa_, sums, la.n_rows, da, a_full, an1, an2, *axs, *ays, was,
        b, yb, wb_, sb, lb.n_rows, db, b_full, bn1, bn2, *bxs, *bys, wbs,
        HAS_WEIGHT=wa is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps)
    for y, yc in copies:
        y.copy_(yc)


# --------------------------------------------------------------------------- torch.compile path

def _cfg_list(config):
    return None if config is None else [config.rows, config.block_d, config.num_warps]


def _cfg_from(cfg: Optional[list]):
    if cfg is None:
        return None
    from .config import KernelConfig
    return KernelConfig(rows=cfg[0], block_d=cfg[1], num_warps=cfg[2])


@torch.library.custom_op("qknorm::tp_partial_sumsq", mutates_args=())
def _op_partial_sumsq(a: torch.Tensor, b: Optional[torch.Tensor], config: Optional[list[int]] = None) -> torch.Tensor:
    """Packed fp64 row sums of squares ``[rows_a + rows_b]`` (traceable local step 1)."""
    n = _rows(a) + (_rows(b) if b is not None else 0)
    sums = torch.empty(n, dtype=torch.float64, device=a.device)
    if n:
        _partial_sums(a, b, sums, _cfg_from(config))
    return sums


@_op_partial_sumsq.register_fake
def _(a, b, config=None):
    n = _rows(a) + (_rows(b) if b is not None else 0)
    return a.new_empty((n,), dtype=torch.float64)


@torch.library.custom_op("qknorm::tp_scale", mutates_args=())
def _op_scale(sums: torch.Tensor, a: torch.Tensor, wa: Optional[torch.Tensor], a_full: int,
              b: Optional[torch.Tensor], wb: Optional[torch.Tensor], b_full: int,
              eps: float, weight_offset: float, config: Optional[list[int]] = None) -> list[torch.Tensor]:
    """New contiguous outputs ``[y_a]`` or ``[y_a, y_b]`` scaled by the reduced sums (step 3)."""
    ya = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    yb = None if b is None else torch.empty(b.shape, dtype=b.dtype, device=b.device)
    if sums.numel():
        _scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums, _cfg_from(config))
    return [ya] if b is None else [ya, yb]


@_op_scale.register_fake
def _(sums, a, wa, a_full, b, wb, b_full, eps, weight_offset, config=None):
    ya = a.new_empty(a.shape)
    return [ya] if b is None else [ya, b.new_empty(b.shape)]


def _traced(group, a, wa, a_full, b, wb, b_full, eps, weight_offset, check, config):
    """The compile path: custom ops around a functional all-reduce (no graph break)."""
    if check:
        raise RuntimeError("check=True is eager-only (it needs a host sync); make one eager call "
                           "with check=True before compiling")
    if V.grad_needed(a, wa, b, wb):
        raise RuntimeError("qknorm.distributed ops are not differentiable under torch.compile yet: an input "
                           "requires grad. Call them eagerly (they are differentiable there) or under "
                           "torch.no_grad()")
    from torch.distributed import _functional_collectives as funcol
    cfg = _cfg_list(config)
    sums = torch.ops.qknorm.tp_partial_sumsq(a, b, cfg)
    sums = funcol.all_reduce(sums, "sum", group if group is not None else dist.group.WORLD)
    return torch.ops.qknorm.tp_scale(sums, a, wa, a_full, b, wb, b_full, float(eps), float(weight_offset), cfg)


# --------------------------------------------------------------------------- eager core and autograd

def _run(group, a, ya, wa, a_full, b, yb, wb, b_full, eps, weight_offset, config):
    """Local sums, ONE all-reduce, local scale. Returns the all-reduced fp64 row totals."""
    n = _rows(a) + (_rows(b) if b is not None else 0)
    sums = torch.empty(n, dtype=torch.float64, device=a.device)
    if n == 0:
        return sums
    _partial_sums(a, b, sums, config)
    dist.all_reduce(sums, group=group)
    _scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums, config)
    return sums


class _TPNormFn(torch.autograd.Function):
    """Autograd of the TP norm (A, and B when given). With ``xh = x * rstd`` and
    ``gw = grad * (w + offset)``, per row: ``dx = rstd * (gw - xh * dot / D_full)`` where
    ``dot = sum over ALL ranks of sum(gw * xh)`` (one all-reduce of A's and B's per-row dots
    in the backward, fp64), and ``dw = sum over rows of grad * xh`` (local). Composed of
    PyTorch ops in fp64. Under autograd an in-place call costs one extra copy (``copy_``)."""

    @staticmethod
    def forward(ctx, spec, a, wa, b, wb):
        group, a_full, b_full, eps, weight_offset, a_in_place, b_in_place, config = spec
        # outputs are new tensors (the caller copies them into in-place outputs with copy_,
        # which autograd tracks for views and leaves as it does for any in-place op); inputs
        # written in place later are cloned here so the backward sees their values on entry
        xa = a.clone() if a_in_place else a
        xb = b.clone() if (b is not None and b_in_place) else b
        ya = torch.empty(a.shape, dtype=a.dtype, device=a.device)
        yb = None if b is None else torch.empty(b.shape, dtype=b.dtype, device=b.device)
        sums = _run(group, a, ya, wa, a_full, b, yb, wb, b_full, eps, weight_offset, config)
        ctx.spec, ctx.x, ctx.w, ctx.sums = spec, (xa, xb), (wa, wb), sums
        return (ya,) if b is None else (ya, yb)

    @staticmethod
    def backward(ctx, *grads):
        group, a_full, b_full, eps, weight_offset = ctx.spec[:5]
        (xa, xb), (wa, wb), sums = ctx.x, ctx.w, ctx.sums
        segs, n0 = [], 0
        for x, w, full, g in ((xa, wa, a_full, grads[0]), (xb, wb, b_full, grads[1] if len(grads) > 1 else None)):
            if x is None:
                continue
            n = _rows(x)
            rstd = torch.rsqrt(sums[n0:n0 + n].view(*x.shape[:-1], 1) / full + eps)
            n0 += n
            xh = x.double() * rstd
            g64 = torch.zeros(x.shape, dtype=torch.float64, device=x.device) if g is None else g.double()
            gw = g64 if w is None else g64 * (w.double() + weight_offset)
            segs.append((x, w, full, rstd, xh, g64, gw, (gw * xh).sum(-1).reshape(-1)))
        dots = torch.cat([sg[-1] for sg in segs])
        if dots.numel():
            dist.all_reduce(dots, group=group)
        out, n0 = [None], 0
        for i, (x, w, full, rstd, xh, g64, gw, _) in enumerate(segs):
            n = _rows(x)
            dot = dots[n0:n0 + n].view(*x.shape[:-1], 1)
            n0 += n
            dx = dw = None
            if ctx.needs_input_grad[1 + 2 * i]:
                dx = (rstd * (gw - xh * (dot / full))).to(x.dtype)
            if w is not None and ctx.needs_input_grad[2 + 2 * i]:
                dw = (g64 * xh).reshape(-1, x.shape[-1]).sum(0).to(w.dtype)
            out += [dx, dw]
        out += [None] * (5 - len(out))
        return tuple(out)


def _grad_rules(op: str, grad: bool, outs) -> None:
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


# --------------------------------------------------------------------------- public API

def _full_width_arg(name: str, full_width, d_local: int):
    if full_width is None:
        return None
    if isinstance(full_width, bool) or not isinstance(full_width, numbers.Integral):
        raise TypeError(f"{name} must be None or an int >= the local width {d_local}, "
                        f"got {type(full_width).__name__} {full_width!r}")
    if full_width < d_local:
        raise ValueError(f"{name} must be None or an int >= the local width {d_local}, got {full_width!r}")
    return int(full_width)


def _scalar_args(eps, weight_offset, has_weight) -> tuple[float, float]:
    V.scalars(eps, weight_offset, has_weight)
    return float(eps), float(weight_offset)


def _validate_rms(x, weight, eps, weight_offset, out, full_width, config, eager: bool):
    V.activation("x", x)
    d = _local_width("x", x)
    _shard_weight("weight", weight, d, "x", x)
    eps, weight_offset = _scalar_args(eps, weight_offset, weight is not None)
    full_width = _full_width_arg("full_width", full_width, d)
    V.config(config)
    V.output("out", out, "x", x)
    if out is not None:
        V.written("out", out)  # shapes and strides only: also under torch.compile
        if eager and out is not x:
            V.in_place_or_disjoint("out", out, "x", x)
    return d, eps, weight_offset, full_width


def _validate_qk(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width,
                 k_full_width, config, eager: bool):
    V.activation("q", q)
    V.activation("k", k)
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    V.same_device("k", k, "q", q)
    dq, dk = _local_width("q", q), _local_width("k", k)
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None, got "
                         f"q_weight={'None' if q_weight is None else 'tensor'}, "
                         f"k_weight={'None' if k_weight is None else 'tensor'}")
    _shard_weight("q_weight", q_weight, dq, "q", q)
    _shard_weight("k_weight", k_weight, dk, "k", k)
    eps, weight_offset = _scalar_args(eps, weight_offset, q_weight is not None)
    q_full_width = _full_width_arg("q_full_width", q_full_width, dq)
    k_full_width = _full_width_arg("k_full_width", k_full_width, dk)
    V.config(config)
    V.output("q_out", q_out, "q", q)
    V.output("k_out", k_out, "k", k)
    for name, o in (("q_out", q_out), ("k_out", k_out)):
        if o is not None:
            V.written(name, o)
    res = dq, dk, eps, weight_offset, q_full_width, k_full_width
    if not eager:  # under torch.compile: shapes, strides and dtypes only (no data pointers)
        return res
    if q_out is not None and q_out is not q:
        V.in_place_or_disjoint("q_out", q_out, "q", q)
    if k_out is not None and k_out is not k:
        V.in_place_or_disjoint("k_out", k_out, "k", k)
    q_in_place = q_out is not None and layout.same_view(q_out, q)
    k_in_place = k_out is not None and layout.same_view(k_out, k)
    if q_out is not None and k_out is not None:
        V.disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        V.disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        V.disjoint("k_out", k_out, "q", q)
    return res


def rms_norm_tp(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                out: torch.Tensor | None = None, weight_offset: float = 0.0,
                full_width: int | None = None, check: bool = False, config=None) -> torch.Tensor:
    """RMSNorm of rows split across the ranks of ``group``; this rank holds ``x [..., D_local]``.

    Returns this rank's slice of ``norm(concat_over_ranks(x), concat(weight))`` in ``out``
    (None: a new contiguous tensor; ``x`` itself: in place; else a disjoint tensor of x's
    shape and dtype, without internal overlap). ``weight``: None or this rank's
    ``[D_local]`` shard (any stride; it may overlap ``out``: the values on entry are used).
    ``eps``, ``weight_offset``: real numbers (Python or NumPy), eps >= 0. ``full_width``:
    the full row width when shards are uneven (default ``D_local * world_size``).
    ``group``: the TP process group (None: the default group). Every rank of ``group``
    must call it with the same row count (product of leading dims). One all-reduce of
    ``8 * rows`` bytes (fp64 row sums). ``check=True`` (same value on every rank) adds one
    small all-gather that verifies widths, dtypes, row counts and eps across ranks and
    makes every error, local or not, raise on every rank (see the module docstring).
    ``config``: None or a :class:`qknorm.KernelConfig` (its ``rows``, ``block_d``,
    ``num_warps``) for the Triton kernels.

    Differentiable (eager) in ``x`` and ``weight``: the backward all-reduces one fp64 dot
    per row across ``group`` (every rank must run it, as for the forward). ``out=`` other
    than ``x`` does not support autograd, and in place on a leaf that requires grad is
    refused, as PyTorch's own ops do. Under ``torch.compile`` inputs must not require grad.
    """
    if torch.compiler.is_compiling():
        d, eps, weight_offset, full_width = _validate_rms(x, weight, eps, weight_offset, out, full_width,
                                                         config, eager=False)
        d_full = _full_width(full_width, d, dist.get_world_size(group))
        res = _traced(group, x, weight, d_full, None, None, 0, eps, weight_offset, check, config)[0]
        return res if out is None else out.copy_(res)
    try:
        d, eps, weight_offset, full_width = _validate_rms(x, weight, eps, weight_offset, out, full_width,
                                                         config, eager=True)
        grad = V.grad_needed(x, weight)
        in_place = out is not None and layout.same_view(out, x)
        _grad_rules("rms_norm_tp", grad, (("out", out, in_place),))
    except (TypeError, ValueError, RuntimeError) as e:
        _raise_everywhere(e, check, group, x, op=1)
    world = _group_size(group)
    _backend_fits(group, x)
    d_full = _full_width(full_width, d, world)
    n = _rows(x)
    if check:
        _check_across_ranks(group, x.device, dict(
            op=1, a_rows=n, a_width=d, a_full=d_full, a_dtype=_DTYPE_CODE[x.dtype],
            has_weight=weight is not None, eps=eps, weight_offset=weight_offset), ("x", None))
    if out is not None:
        weight = V.unaliased(weight, (out,))  # a weight inside out: read its values on entry
    if grad:
        spec = (group, d_full, 0, eps, weight_offset, in_place, False, config)
        y = _TPNormFn.apply(spec, x, weight, None, None)[0]
        return out.copy_(y) if in_place else y
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _run(group, x, out, weight, d_full, None, None, None, 0, eps, weight_offset, config)
    return out


def qk_rms_norm_tp(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                   k_weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                   q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                   weight_offset: float = 0.0, q_full_width: int | None = None,
                   k_full_width: int | None = None, check: bool = False, config=None):
    """Full-width RMSNorm of Q and of K (OLMo 2 style) from this rank's shards, ONE all-reduce.

    ``q [..., Dq_local]``, ``k [..., Dk_local]``: this rank's shards (typically strided
    slices ``qkv[:, :q_size]``, ``qkv[:, q_size:q_size + kv_size]`` of the packed QKV
    buffer), same dtype; ``q_weight``/``k_weight``: both None or both this rank's shards.
    Q's and K's fp64 row sums travel in one packed buffer, ``8 * (rows_q + rows_k)``
    bytes. ``q_out=q, k_out=k`` normalises in place; None allocates contiguous outputs;
    outputs may not overlap themselves, each other or the other input (weights may: the
    values on entry are used). ``q_full_width``/``k_full_width``: full widths for uneven
    shards (default local width times world size). ``group``, ``check``, ``config``, autograd:
    see :func:`rms_norm_tp`. Returns ``(q_out, k_out)``.
    """
    if torch.compiler.is_compiling():
        dq, dk, eps, weight_offset, q_full_width, k_full_width = _validate_qk(
            q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width, k_full_width,
            config, eager=False)
        world = dist.get_world_size(group)
        rq, rk = _traced(group, q, q_weight, _full_width(q_full_width, dq, world),
                         k, k_weight, _full_width(k_full_width, dk, world), eps, weight_offset, check, config)
        return (rq if q_out is None else q_out.copy_(rq)), (rk if k_out is None else k_out.copy_(rk))
    try:
        dq, dk, eps, weight_offset, q_full_width, k_full_width = _validate_qk(
            q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width, k_full_width,
            config, eager=True)
        grad = V.grad_needed(q, k, q_weight, k_weight)
        q_in_place = q_out is not None and layout.same_view(q_out, q)
        k_in_place = k_out is not None and layout.same_view(k_out, k)
        _grad_rules("qk_rms_norm_tp", grad, (("q_out", q_out, q_in_place), ("k_out", k_out, k_in_place)))
    except (TypeError, ValueError, RuntimeError) as e:
        _raise_everywhere(e, check, group, q, op=2)
    world = _group_size(group)
    _backend_fits(group, q)
    dq_full, dk_full = _full_width(q_full_width, dq, world), _full_width(k_full_width, dk, world)
    n_q, n_k = _rows(q), _rows(k)
    if check:
        _check_across_ranks(group, q.device, dict(
            op=2, a_rows=n_q, a_width=dq, a_full=dq_full, a_dtype=_DTYPE_CODE[q.dtype],
            b_rows=n_k, b_width=dk, b_full=dk_full, b_dtype=_DTYPE_CODE[k.dtype],
            has_weight=q_weight is not None, eps=eps, weight_offset=weight_offset), ("q", "k"))
    written = (q_out, k_out)
    q_weight, k_weight = V.unaliased(q_weight, written), V.unaliased(k_weight, written)
    if grad:
        spec = (group, dq_full, dk_full, eps, weight_offset, q_in_place, k_in_place, config)
        yq, yk = _TPNormFn.apply(spec, q, q_weight, k, k_weight)
        return (q_out.copy_(yq) if q_in_place else yq), (k_out.copy_(yk) if k_in_place else yk)
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _run(group, q, q_out, q_weight, dq_full, k, k_out, k_weight, dk_full, eps, weight_offset, config)
    return q_out, k_out
