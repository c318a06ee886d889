"""RMSNorm over a dimension split across tensor-parallel ranks: one all-reduce of row sums.

Each rank passes its shard ``[..., D_local]`` and gets its slice of the full-width norm
(OLMo 2's ``q_norm``/``k_norm`` over all heads); only fp64 per-row sums of squares cross
the link. Method, numerics, errors and ``check=True``, CUDA graphs, ``torch.compile`` and
measurements: ``docs/tensor-parallel-norm.md``. Modules: ``local`` (argument checks,
partial sums, scale), ``consistency`` (the group and the cross-rank check), ``eager``
(the eager core and autograd), ``custom_ops`` (the traceable path).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .. import validate
from . import consistency, custom_ops, local
from .eager import TPNormFn, sums_reduce_scale

__all__ = ["rms_norm_tp", "qk_rms_norm_tp"]


def rms_norm_tp(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                out: torch.Tensor | None = None, weight_offset: float = 0.0,
                full_width: int | None = None, check: bool = False, config=None) -> torch.Tensor:
    """RMSNorm of rows whose last dimension is split across the ranks of ``group``.

    Every rank passes its shard; the result on each rank is its slice of the
    single-device norm of the full row,
    ``x / sqrt(sum_over_ranks(sum(x**2)) / full_width + eps) * (weight + weight_offset)``.
    Eager: one Triton launch for the row sums, one ``torch.distributed.all_reduce`` of
    ``8 * rows`` bytes (fp64), one launch for the scale. CPU tensors take a PyTorch path
    with the same numerics.

    Parameters
    ----------
    x
        This rank's shard, shape ``[..., D_local]``, dtype ``bfloat16``, ``float16`` or
        ``float32``, any strides (e.g. a slice of a packed buffer). ``D_local >= 1``.
    weight
        None, or this rank's shard of the weight: shape ``[D_local]``, a floating dtype
        (``bfloat16``/``float16``/``float32``/``float64``), any stride, on x's device.
    eps
        A real number (Python or NumPy), finite and ``>= 0``; every positive value acts
        as positive (``rstd`` is computed in fp64).
    group
        The tensor-parallel process group (None: the default group). NCCL for CUDA
        tensors, gloo for CPU tensors.
    out
        None (a new contiguous tensor), ``x`` itself (in place), or a tensor of x's shape,
        dtype and device that neither overlaps itself nor shares memory with ``x``.
    weight_offset
        A finite real number added to the weight (``1.0`` for Gemma's ``1 + w``); must be
        0 when ``weight`` is None.
    full_width
        The full row width when shards are uneven: None (``D_local * world_size``) or an
        int ``>= D_local``.
    check
        True (the same value on every rank) adds one ``all_gather`` of a small
        descriptor that verifies widths, dtypes, row counts, eps, weight_offset and the op
        across ranks, and makes every error, local or not, raise on every rank. It needs
        a host sync: eager only, not during CUDA-graph capture.
    config
        None (the dispatcher's pick) or a :class:`qknorm.KernelConfig` whose ``rows``,
        ``block_d`` and ``num_warps`` the two kernels use.

    Returns
    -------
    torch.Tensor
        ``out`` when given, else a new contiguous tensor of x's shape and dtype.

    Raises
    ------
    TypeError
        A tensor of the wrong dtype or type, non-numeric ``eps``/``weight_offset``, a
        non-int ``full_width``, a ``config`` that is not a ``KernelConfig``; with
        ``check=True``, dtypes that differ across ranks.
    ValueError
        A weight shard whose length is not ``D_local``, ``eps < 0``, ``full_width <
        D_local``, an ``out`` of another shape or that overlaps itself or partially
        overlaps ``x``, this process not in ``group``, CPU tensors on an NCCL group; with
        ``check=True``, row counts, widths, eps, weight presence or ops that differ across
        ranks, or another rank's local error.
    RuntimeError
        No initialised process group; in place on a leaf that requires grad (or a view of
        one); ``out`` other than ``x`` while autograd records the call; inputs that
        require grad under ``torch.compile``; ``check=True`` during capture or under
        ``torch.compile``.

    Notes
    -----
    Local argument errors are raised before any collective and before anything is
    written. Without ``check=True`` they raise only on the rank that made them, whose
    peers then wait in the all-reduce until the group's timeout; a row-count mismatch
    fails or hangs there, and a width or eps mismatch gives wrong values silently.

    Aliasing: ``weight`` may overlap ``out`` (its values on entry are used).

    Every rank of ``group`` must make the call, with the same row count (product of
    leading dims). Differentiable eagerly in ``x`` and ``weight``: the backward
    all-reduces one fp64 dot per row, so every rank must run it too.

    References
    ----------
    RMSNorm: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    Full-width QK norm under tensor parallelism: OLMo 2 (Team OLMo, "2 OLMo 2 Furious",
    2024) normalises Q and K over all heads; this op sends per-row sums of squares instead
    of all-gathering the activations (``docs/tensor-parallel-norm.md``).
    """
    if torch.compiler.is_compiling():
        args = local.check_rms_args(x, weight, eps, weight_offset, out, full_width, config, eager=False)
        d_full = local.full_width(args.full_width, args.d, dist.get_world_size(group))
        res = custom_ops.traced(group, x, weight, d_full, None, None, 0, args.eps, args.weight_offset,
                                check, config)[0]
        return res if out is None else out.copy_(res)
    try:
        args = local.check_rms_args(x, weight, eps, weight_offset, out, full_width, config, eager=True)
        grad = validate.grad_needed(x, weight)
        if grad or out is not None:
            local.grad_rules("rms_norm_tp", grad, (("out", out, args.in_place),))
    except (TypeError, ValueError, RuntimeError) as e:
        consistency.raise_everywhere(e, check, group, x, op=consistency.RMS_OP)
    world = consistency.group_size(group)
    consistency.backend_fits(group, x)
    d_full = local.full_width(args.full_width, args.d, world)
    if check:
        consistency.check_across_ranks(group, x.device, dict(
            op=consistency.RMS_OP, a_rows=local.rows(x), a_width=args.d, a_full=d_full,
            a_dtype=consistency.DTYPE_CODE[x.dtype], has_weight=weight is not None, eps=args.eps,
            weight_offset=args.weight_offset), ("x", None))
    if out is not None:
        weight = validate.unaliased(weight, (out,))  # a weight inside out: read its values on entry
    if grad:
        spec = (group, d_full, 0, args.eps, args.weight_offset, args.in_place, False, config)
        y = TPNormFn.apply(spec, x, weight, None, None)[0]
        return out.copy_(y) if args.in_place else y
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    sums_reduce_scale(group, x, out, weight, d_full, None, None, None, 0, args.eps, args.weight_offset, config)
    return out


def qk_rms_norm_tp(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                   k_weight: torch.Tensor | None, eps: float = 1e-6, *, group=None,
                   q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                   weight_offset: float = 0.0, q_full_width: int | None = None,
                   k_full_width: int | None = None, check: bool = False, config=None):
    """Full-width RMSNorm of Q and of K (OLMo 2 style) from this rank's shards, ONE all-reduce.

    Q is normalised over its full width and K over its own, as :func:`rms_norm_tp` does
    for one tensor, but Q's and K's fp64 row sums travel in one packed buffer of
    ``8 * (rows_q + rows_k)`` bytes: one launch for both sums, one all-reduce, one launch
    for both scales.

    Parameters
    ----------
    q, k
        This rank's shards, shapes ``[..., Dq_local]`` and ``[..., Dk_local]`` (leading
        dims may differ), one dtype (``bfloat16``, ``float16`` or ``float32``), one
        device, any strides: typically ``qkv[:, :q_size]`` and
        ``qkv[:, q_size:q_size + kv_size]`` of the packed QKV buffer.
    q_weight, k_weight
        Both None, or both this rank's weight shards: shapes ``[Dq_local]`` and
        ``[Dk_local]``, floating dtypes (``bfloat16``/``float16``/``float32``/``float64``).
    eps
        A real number, finite and ``>= 0`` (shared by Q and K).
    group
        The tensor-parallel process group (None: the default group).
    q_out, k_out
        None (new contiguous tensors), the input itself (``q_out=q, k_out=k``: in place,
        one pass over the packed buffer, V untouched), or tensors of the input's shape,
        dtype and device. An output may not overlap itself, the other output or the
        other input, nor partially overlap its own input.
    weight_offset
        A finite real number added to both weights (``1.0``: Gemma's ``1 + w``); 0 when
        the weights are None.
    q_full_width, k_full_width
        Full widths for uneven shards: None (local width times world size) or an int
        ``>=`` the local width.
    check, config
        As for :func:`rms_norm_tp` (``check=True`` verifies both Q's and K's widths, row
        counts and dtypes across ranks).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(q_out, k_out)``: the given outputs, or new contiguous tensors.

    Raises
    ------
    TypeError
        As for :func:`rms_norm_tp`, and q and k of different dtypes.
    ValueError
        As for :func:`rms_norm_tp`, and one weight None but not the other, q and k on
        different devices, outputs that overlap each other or the other input.
    RuntimeError
        As for :func:`rms_norm_tp`.

    Notes
    -----
    Aliasing: the weights may overlap the outputs (their values on entry are used).
    Errors, ``check=True``, autograd (eager, in Q, K and both weights) and the
    requirement that every rank calls with the same row counts are as for
    :func:`rms_norm_tp`.

    References
    ----------
    RMSNorm: Zhang & Sennrich 2019. QK norm: Dehghani et al., "Scaling Vision
    Transformers to 22 Billion Parameters", 2023; full-width (all heads) QK norm: OLMo 2
    (Team OLMo 2024). Method and traffic: ``docs/tensor-parallel-norm.md``.
    """
    if torch.compiler.is_compiling():
        args = local.check_qk_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width,
                                   k_full_width, config, eager=False)
        world = dist.get_world_size(group)
        rq, rk = custom_ops.traced(group, q, q_weight, local.full_width(args.q_full_width, args.dq, world),
                                   k, k_weight, local.full_width(args.k_full_width, args.dk, world),
                                   args.eps, args.weight_offset, check, config)
        return (rq if q_out is None else q_out.copy_(rq)), (rk if k_out is None else k_out.copy_(rk))
    try:
        args = local.check_qk_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, q_full_width,
                                   k_full_width, config, eager=True)
        grad = validate.grad_needed(q, k, q_weight, k_weight)
        if grad or q_out is not None or k_out is not None:
            local.grad_rules("qk_rms_norm_tp", grad, (("q_out", q_out, args.q_in_place),
                                                      ("k_out", k_out, args.k_in_place)))
    except (TypeError, ValueError, RuntimeError) as e:
        consistency.raise_everywhere(e, check, group, q, op=consistency.QK_OP)
    world = consistency.group_size(group)
    consistency.backend_fits(group, q)
    dq_full = local.full_width(args.q_full_width, args.dq, world)
    dk_full = local.full_width(args.k_full_width, args.dk, world)
    if check:
        consistency.check_across_ranks(group, q.device, dict(
            op=consistency.QK_OP, a_rows=local.rows(q), a_width=args.dq, a_full=dq_full,
            a_dtype=consistency.DTYPE_CODE[q.dtype], b_rows=local.rows(k), b_width=args.dk, b_full=dk_full,
            b_dtype=consistency.DTYPE_CODE[k.dtype], has_weight=q_weight is not None, eps=args.eps,
            weight_offset=args.weight_offset), ("q", "k"))
    if q_weight is not None:  # a weight inside an output: read its values on entry
        written = (q_out, k_out)
        q_weight, k_weight = validate.unaliased(q_weight, written), validate.unaliased(k_weight, written)
    if grad:
        spec = (group, dq_full, dk_full, args.eps, args.weight_offset, args.q_in_place, args.k_in_place, config)
        yq, yk = TPNormFn.apply(spec, q, q_weight, k, k_weight)
        return (q_out.copy_(yq) if args.q_in_place else yq), (k_out.copy_(yk) if args.k_in_place else yk)
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    sums_reduce_scale(group, q, q_out, q_weight, dq_full, k, k_out, k_weight, dk_full, args.eps,
                      args.weight_offset, config)
    return q_out, k_out
