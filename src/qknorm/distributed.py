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
fp32 sums, weight multiply in fp32, one rounding, the numerics of ``qknorm.rms_norm``.
``D_full`` is ``D_local * world_size`` (an even split, as TP engines shard heads) unless
``full_width`` (``q_full_width``/``k_full_width``) says otherwise; uneven shards are
supported by passing it.

How a call runs (eager):
  1. checks of the local arguments (dtype, weight shard length, outputs), then of the
     group (initialised, this rank a member) — all before any collective;
  2. ``kernels.tp_norm.tp_sumsq_kernel`` writes the fp32 row sums of Q and K into one
     packed buffer ``[rows_q + rows_k]`` (one launch for both);
  3. ``torch.distributed.all_reduce`` of that buffer (NCCL on GPUs, gloo on CPU): ONE
     collective of ``4 * (rows_q + rows_k)`` bytes;
  4. ``kernels.tp_norm.tp_scale_kernel`` scales Q and K (one launch for both).
CPU tensors take a PyTorch path with the same numerics unless ``QKNORM_BACKEND=triton``
with ``TRITON_INTERPRET=1`` runs the kernels (``backend.use_triton``, as ``ops`` does).

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


def _full_width_arg(name: str, full_width, d_local: int) -> None:
    if full_width is None:
        return
    if not isinstance(full_width, int) or isinstance(full_width, bool) or full_width < d_local:
        raise ValueError(f"{name} must be None or an int >= the local width {d_local}, got {full_width!r}")


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

def _rows(x) -> int:
    return math.prod(x.shape[:-1])


def _layout(x, *others):
    """Joint row layout of ``x`` and tensors of its shape (``ops._layout_of``), or None."""
    return _layout_of(x.shape, x.shape[-1], x.stride(), *(o.stride() for o in others))


def _weight_args(w, fallback):
    return (w, w.stride(0)) if w is not None else (fallback, 0)


def _partial_sums(a, b, sums) -> None:
    """``sums[:rows_a]`` = fp32 row sums of squares of ``a``; then those of ``b`` (may be None)."""
    n_a = _rows(a)
    if not use_triton(a):
        sums[:n_a].copy_(a.float().square().sum(-1).reshape(-1))
        if b is not None:
            sums[n_a:].copy_(b.float().square().sum(-1).reshape(-1))
        return
    la = _layout(a)
    if la is None:
        a = a.contiguous()
        la = _layout(a)
    if b is not None:
        lb = _layout(b)
        if lb is None:
            b = b.contiguous()
            lb = _layout(b)
    else:
        b, lb = a, la._replace(n_rows=0)
    da, db = a.shape[-1], b.shape[-1]
    cfg = choose_config("rms_norm", a.dtype, max(da, db), la.n_rows + lb.n_rows, a.device)[0]
    n_blocks = _cdiv(la.n_rows, cfg.rows) + _cdiv(lb.n_rows, cfg.rows)
    (_, an1, an2), (ast,) = la.sizes, la.strides
    (_, bn1, bn2), (bst,) = lb.sizes, lb.strides
    _k().tp_sumsq_kernel[(max(1, n_blocks),)](
        a, sums, la.n_rows, da, an1, an2, *ast,
        b, sums[n_a:] if lb.n_rows else sums, lb.n_rows, db, bn1, bn2, *bst,
        ROWS=cfg.rows, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps)


def _scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums) -> None:
    """``y = x * rsqrt(total / full + eps) * (w + offset)`` for ``a`` (then ``b`` if not None)."""
    n_a = _rows(a)
    if not use_triton(a):
        for x, y, w, full, s in ((a, ya, wa, a_full, sums[:n_a]), (b, yb, wb, b_full, sums[n_a:])):
            if x is None:
                continue
            xf = x.float()
            r = xf * torch.rsqrt(s.view(*x.shape[:-1], 1) / full + eps)
            if w is not None:
                r = r * (w.float() + weight_offset)
            y.copy_(r)
        return
    copies = []

    def prep(x, y):
        lay = _layout(x, y)
        if lay is None:  # rare layouts: run on contiguous copies, copy back after
            xc = x.contiguous()
            yc = torch.empty_like(xc)
            copies.append((y, yc))
            return xc, yc, _layout(xc, yc)
        return x, y, lay

    a, ya, la = prep(a, ya)
    if b is not None:
        b, yb, lb = prep(b, yb)
        sb = sums[n_a:]
    else:
        b, yb, wb, b_full, lb, sb = a, ya, wa, a_full, la._replace(n_rows=0), sums
    da, db = a.shape[-1], b.shape[-1]
    cfg = choose_config("rms_norm", a.dtype, max(da, db), la.n_rows + lb.n_rows, a.device)[0]
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

@torch.library.custom_op("qknorm::tp_partial_sumsq", mutates_args=())
def _op_partial_sumsq(a: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """Packed fp32 row sums of squares ``[rows_a + rows_b]`` (traceable local step 1)."""
    n = _rows(a) + (_rows(b) if b is not None else 0)
    sums = torch.empty(n, dtype=torch.float32, device=a.device)
    if n:
        _partial_sums(a, b, sums)
    return sums


@_op_partial_sumsq.register_fake
def _(a, b):
    n = _rows(a) + (_rows(b) if b is not None else 0)
    return a.new_empty((n,), dtype=torch.float32)


@torch.library.custom_op("qknorm::tp_scale", mutates_args=())
def _op_scale(sums: torch.Tensor, a: torch.Tensor, wa: Optional[torch.Tensor], a_full: int,
              b: Optional[torch.Tensor], wb: Optional[torch.Tensor], b_full: int,
              eps: float, weight_offset: float) -> list[torch.Tensor]:
    """New contiguous outputs ``[y_a]`` or ``[y_a, y_b]`` scaled by the reduced sums (step 3)."""
    ya = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    yb = None if b is None else torch.empty(b.shape, dtype=b.dtype, device=b.device)
    if sums.numel():
        _scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums)
    return [ya] if b is None else [ya, yb]


@_op_scale.register_fake
def _(sums, a, wa, a_full, b, wb, b_full, eps, weight_offset):
    ya = a.new_empty(a.shape)
    return [ya] if b is None else [ya, b.new_empty(b.shape)]


def _traced(group, a, wa, a_full, b, wb, b_full, eps, weight_offset, check):
    """The compile path: custom ops around a functional all-reduce (no graph break)."""
    if check:
        raise RuntimeError("check=True is eager-only (it needs a host sync); make one eager call "
                           "with check=True before compiling")
    from torch.distributed import _functional_collectives as funcol
    sums = torch.ops.qknorm.tp_partial_sumsq(a, b)
    sums = funcol.all_reduce(sums, "sum", group if group is not None else dist.group.WORLD)
    return torch.ops.qknorm.tp_scale(sums, a, wa, a_full, b, wb, b_full, float(eps), float(weight_offset))


# --------------------------------------------------------------------------- public API

def _validate_rms(x, weight, eps, weight_offset, out, full_width, eager: bool) -> int:
    V.activation("x", x)
    d = _local_width("x", x)
    _shard_weight("weight", weight, d, "x", x)
    V.scalars(eps, weight_offset, weight is not None)
    _full_width_arg("full_width", full_width, d)
    if eager:
        _outputs("x", x, "out", out)
    elif out is not None:
        V.output("out", out, "x", x)
    return d


def _validate_qk(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width,
                 k_full_width, eager: bool) -> tuple[int, int]:
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
    V.scalars(eps, weight_offset, q_weight is not None)
    _full_width_arg("q_full_width", q_full_width, dq)
    _full_width_arg("k_full_width", k_full_width, dk)
    if not eager:  # under torch.compile: shapes and dtypes only (no data pointers)
        V.output("q_out", q_out, "q", q)
        V.output("k_out", k_out, "k", k)
        return dq, dk
    _outputs("q", q, "q_out", q_out)
    _outputs("k", k, "k_out", k_out)
    q_in_place = q_out is not None and layout.same_view(q_out, q)
    k_in_place = k_out is not None and layout.same_view(k_out, k)
    if q_out is not None and k_out is not None:
        V.disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        V.disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        V.disjoint("k_out", k_out, "q", q)
    return dq, dk


def rms_norm_tp(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                out: torch.Tensor | None = None, weight_offset: float = 0.0,
                full_width: int | None = None, check: bool = False) -> torch.Tensor:
    """RMSNorm of rows split across the ranks of ``group``; this rank holds ``x [..., D_local]``.

    Returns this rank's slice of ``norm(concat_over_ranks(x), concat(weight))`` in ``out``
    (None: a new contiguous tensor; ``x`` itself: in place; else a disjoint tensor of x's
    shape and dtype). ``weight``: None or this rank's ``[D_local]`` shard. ``full_width``:
    the full row width when shards are uneven (default ``D_local * world_size``).
    ``group``: the TP process group (None: the default group). Every rank of ``group``
    must call it with the same row count (product of leading dims). One all-reduce of
    ``4 * rows`` bytes. ``check=True`` (same value on every rank) adds one small
    all-gather that verifies widths, dtypes, row counts and eps across ranks and makes
    every error, local or not, raise on every rank (see the module docstring).
    """
    if torch.compiler.is_compiling():
        d = _validate_rms(x, weight, eps, weight_offset, out, full_width, eager=False)
        d_full = _full_width(full_width, d, dist.get_world_size(group))
        res = _traced(group, x, weight, d_full, None, None, 0, eps, weight_offset, check)[0]
        return res if out is None else out.copy_(res)
    try:
        d = _validate_rms(x, weight, eps, weight_offset, out, full_width, eager=True)
    except (TypeError, ValueError) as e:
        _raise_everywhere(e, check, group, x, op=1)
    world = _group_size(group)
    _backend_fits(group, x)
    d_full = _full_width(full_width, d, world)
    n = _rows(x)
    if check:
        _check_across_ranks(group, x.device, dict(
            op=1, a_rows=n, a_width=d, a_full=d_full, a_dtype=_DTYPE_CODE[x.dtype],
            has_weight=weight is not None, eps=eps, weight_offset=weight_offset), ("x", None))
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    sums = torch.empty(n, dtype=torch.float32, device=x.device)
    _partial_sums(x, None, sums)
    dist.all_reduce(sums, group=group)
    _scale(float(eps), float(weight_offset), x, out, weight, d_full, None, None, None, 0, sums)
    return out


def qk_rms_norm_tp(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                   k_weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                   q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                   weight_offset: float = 0.0, q_full_width: int | None = None,
                   k_full_width: int | None = None, check: bool = False):
    """Full-width RMSNorm of Q and of K (OLMo 2 style) from this rank's shards, ONE all-reduce.

    ``q [..., Dq_local]``, ``k [..., Dk_local]``: this rank's shards (typically strided
    slices ``qkv[:, :q_size]``, ``qkv[:, q_size:q_size + kv_size]`` of the packed QKV
    buffer), same dtype; ``q_weight``/``k_weight``: both None or both this rank's shards.
    Q's and K's fp32 row sums travel in one packed buffer, ``4 * (rows_q + rows_k)``
    bytes. ``q_out=q, k_out=k`` normalises in place; None allocates contiguous outputs;
    outputs may not overlap each other or the other input. ``q_full_width``/
    ``k_full_width``: full widths for uneven shards (default local width times world
    size). ``group``, ``check``: see :func:`rms_norm_tp`. Returns ``(q_out, k_out)``.
    """
    if torch.compiler.is_compiling():
        dq, dk = _validate_qk(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out,
                              q_full_width, k_full_width, eager=False)
        world = dist.get_world_size(group)
        rq, rk = _traced(group, q, q_weight, _full_width(q_full_width, dq, world),
                         k, k_weight, _full_width(k_full_width, dk, world), eps, weight_offset, check)
        return (rq if q_out is None else q_out.copy_(rq)), (rk if k_out is None else k_out.copy_(rk))
    try:
        dq, dk = _validate_qk(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out,
                              q_full_width, k_full_width, eager=True)
    except (TypeError, ValueError) as e:
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
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if n_q + n_k == 0:
        return q_out, k_out
    sums = torch.empty(n_q + n_k, dtype=torch.float32, device=q.device)
    _partial_sums(q, k, sums)
    dist.all_reduce(sums, group=group)
    _scale(float(eps), float(weight_offset), q, q_out, q_weight, dq_full, k, k_out, k_weight, dk_full, sums)
    return q_out, k_out
