"""``qk_rms_norm_rope``: per-head RMSNorm of Q and K, then rotary embedding, in one launch.

Validation, backend choice and launch, structured like ``ops.qk_rms_norm`` (whose private
helpers it imports): CUDA tensors run ``kernels/qk_norm_rope.py``; CPU tensors run the
PyTorch path (``reference_rope.py``) unless ``QKNORM_BACKEND=triton`` with
``TRITON_INTERPRET=1`` asks for the kernel.

Conventions (vLLM ``RotaryEmbedding`` / ``fused_qk_norm_rope``, FlashInfer
``apply_rope_with_cos_sin_cache_inplace``, SGLang): ``cos_sin_cache[p]`` holds the cos half
then the sin half of ``rotary_dim`` values; NeoX style rotates pairs
``(x[j], x[j + rotary_dim/2])``, GPT-J style pairs ``(x[2j], x[2j+1])``; pair ``j`` becomes
``(a cos_j - b sin_j, b cos_j + a sin_j)``; elements past ``rotary_dim`` are only normalised.

Positions out of the cache's range: CPU positions are checked (ValueError); CUDA positions
are not (that would need a device sync); the kernel clamps them into
``[0, max_position - 1]``, so it never reads outside the cache, and the torch path on CUDA
clamps the same way.

Host cost: CUDA calls with plain float ``eps``/``weight_offset`` take a *fast path*: a plan
cached per shapes/strides/dtypes/devices (built after every metadata check has passed) and
the cached raw launcher of ``launch.py``; per call only the overlap of the actual buffers is
checked. Everything else, and every error, goes through the general path.
"""
from __future__ import annotations

import math

import torch

from . import backend as _backend
from . import dispatch as _dispatch
from . import launch as _launch
from . import validate as V
from .backend import use_triton
from .config import KernelConfig
from .dispatch import choose_config, next_pow2
from . import ops as _ops
from .ops import _cdiv, _contig_strides, _eps_pair, _grid, _is_compiling, _no_overlap, _span, _use_pdl
from .reference import FLT_MAX, FLT_MIN, kernel_eps
from .reference_rope import qk_rms_norm_rope_torch

__all__ = ["qk_rms_norm_rope", "MAX_HEAD_DIM", "clear_caches"]

MAX_HEAD_DIM = 1024  # whole head in registers; no chunked form
POSITION_DTYPES = (torch.int32, torch.int64)
_INF = math.inf
_INT32_MAX = 2**31 - 1
_Tensor = torch.Tensor
_CONTIG = torch.contiguous_format
_MAX_PLANS = 4096
_PTRS = ("CS", "P", "XQ", "YQ", "WQ", "XK", "YK", "WK")
_kl = None
_plans: dict = {}
_decisions = getattr(_dispatch, "_decisions", None)
_used_dispatch = False


def _launcher():
    """The kernel's :class:`launch.KernelLauncher`, created on first use (imports triton)."""
    global _kl
    if _kl is None:
        from .kernels.qk_norm_rope import qk_rms_norm_rope_kernel
        _kl = _launch.KernelLauncher(qk_rms_norm_rope_kernel, _PTRS)
    return _kl


def clear_caches() -> None:
    """Forget cached plans (after changing the dispatcher's tables)."""
    _plans.clear()


# --------------------------------------------------------------------------- checks

def _check_meta(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, weight_offset, is_neox, rotary_dim,
                q_out, k_out) -> int:
    """Every check that depends only on metadata (shapes, dtypes, devices, scalars), in the
    order users see the errors. Returns the rotary dim."""
    V.activation("q", q)
    V.activation("k", k)
    if q.dim() != 3:
        raise ValueError(f"q must be [T, Hq, head_dim] (3 dims), got shape {tuple(q.shape)}")
    if k.dim() != 3:
        raise ValueError(f"k must be [T, Hkv, head_dim] (3 dims), got shape {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    V.same_device("k", k, "q", q)
    t, d = q.shape[0], q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q and k must have the same head_dim (last dim): q has {d}, k has {k.shape[-1]}")
    if k.shape[0] != t:
        raise ValueError(f"q and k must have the same number of tokens (dim 0): q has {t}, k has {k.shape[0]}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is not supported by qk_rms_norm_rope (at most {MAX_HEAD_DIM}: the "
                         f"whole head is kept in registers)")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None, got "
                         f"q_weight={'None' if q_weight is None else 'tensor'}, "
                         f"k_weight={'None' if k_weight is None else 'tensor'}")
    V.weight("q_weight", q_weight, d, "q", q)
    V.weight("k_weight", k_weight, d, "k", k)
    V.scalars(eps, weight_offset, q_weight is not None)
    if not isinstance(is_neox, bool):
        raise TypeError(f"is_neox must be a bool, got {type(is_neox).__name__}")
    r = d if rotary_dim is None else rotary_dim
    if not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f"rotary_dim must be an int or None, got {type(r).__name__}")
    if r < 2 or r % 2 or r > d:
        raise ValueError(f"rotary_dim must be even and in [2, head_dim={d}], got {r}")
    cs = cos_sin_cache
    if not isinstance(cs, torch.Tensor):
        raise TypeError(f"cos_sin_cache must be a torch.Tensor, got {type(cs).__name__}")
    if cs.dtype not in (torch.float32, q.dtype):
        raise TypeError(f"cos_sin_cache must be float32 or q's dtype ({V._dt(q.dtype)}), got {V._dt(cs.dtype)}")
    if cs.dim() != 2 or cs.shape[1] != r or cs.shape[0] < 1:
        hint = "" if rotary_dim is not None else " (rotary_dim defaults to head_dim; pass rotary_dim for partial rotary)"
        raise ValueError(f"cos_sin_cache must have shape [max_position >= 1, rotary_dim={r}] (cos half, then sin "
                         f"half){hint}, got {tuple(cs.shape)}")
    V.same_device("cos_sin_cache", cs, "q", q)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype not in POSITION_DTYPES:
        raise TypeError(f"positions must be int32 or int64, got {V._dt(positions.dtype)}")
    if positions.dim() != 1 or positions.shape[0] != t:
        raise ValueError(f"positions must have shape ({t},) (one position per token of q and k), "
                         f"got {tuple(positions.shape)}")
    V.same_device("positions", positions, "q", q)
    V.output("q_out", q_out, "q", q)
    V.output("k_out", k_out, "k", k)
    if q_out is not None:
        V.written("q_out", q_out)
    if k_out is not None:
        V.written("k_out", k_out)
    return r


def _check_overlaps(q, k, q_out, k_out) -> None:
    """Outputs may be their own input (in place) or separate memory; never the other input,
    each other, or part of their input (the rules of ``ops.qk_rms_norm``)."""
    q_in_place = q_out is not None and V.in_place_or_disjoint("q_out", q_out, "q", q)
    k_in_place = k_out is not None and V.in_place_or_disjoint("k_out", k_out, "k", k)
    if q_out is not None and k_out is not None:
        V.disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        V.disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        V.disjoint("k_out", k_out, "q", q)


def _check_positions_range(positions, max_position: int) -> None:
    """CPU positions only (free to read): every position must index the cache."""
    if positions.numel() == 0 or positions.is_cuda:
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0 or hi >= max_position:
        raise ValueError(f"positions must be in [0, {max_position - 1}] (cos_sin_cache has {max_position} rows), "
                         f"got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------- public op

def qk_rms_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                     k_weight: torch.Tensor | None, cos_sin_cache: torch.Tensor, positions: torch.Tensor,
                     eps: float = 1e-6, *, is_neox: bool = True, rotary_dim: int | None = None,
                     weight_offset: float = 0.0, q_out: torch.Tensor | None = None,
                     k_out: torch.Tensor | None = None, config: KernelConfig | None = None):
    """Per-head RMSNorm of Q and K, then rotary embedding of each head's first ``rotary_dim``
    elements, in one kernel launch. Math in fp32, one rounding at the end.

    ``q``: ``[T, Hq, D]``, ``k``: ``[T, Hkv, D]`` (bf16/fp16/fp32, same dtype, any strides,
    e.g. views of a packed QKV buffer). ``q_weight``/``k_weight``: both None or ``[D]``
    (any float dtype); ``weight_offset=1.0`` is Gemma's ``(1 + w)``. ``cos_sin_cache``:
    ``[max_position, rotary_dim]``, cos half then sin half, float32 or q's dtype.
    ``positions``: ``[T]`` int32/int64. ``is_neox``: rotate halves (True) or interleaved
    pairs (False, GPT-J). ``rotary_dim``: even, <= D, default D (partial rotary: the rest of
    each head is only normalised). ``q_out=q, k_out=k`` works in place; None allocates new
    contiguous outputs. ``config`` forces ROWS/num_warps/persistent (default: the
    dispatcher's ``qk_rms_norm`` pick). Returns ``(q_out, k_out)``.

    Positions outside ``[0, max_position)`` raise ValueError for CPU tensors; on CUDA they
    are not checked (no sync) and are clamped into range (no out-of-bounds read).
    """
    if _is_compiling():
        from .torch_library import traced_qk_rms_norm_rope
        return traced_qk_rms_norm_rope(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim,
                                       weight_offset, q_out, k_out, config)
    if (type(q) is _Tensor and q.is_cuda and _backend._backend != "torch" and type(eps) is float
            and type(weight_offset) is float and 0.0 <= eps < _INF and -_INF < weight_offset < _INF
            and type(k) is _Tensor and type(cos_sin_cache) is _Tensor and type(positions) is _Tensor
            and type(is_neox) is bool and (rotary_dim is None or type(rotary_dim) is int)
            and (config is None or type(config) is KernelConfig)
            and not (q.requires_grad or k.requires_grad or cos_sin_cache.requires_grad)):
        r = _fast(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                  q_out, k_out, config)
        if r is not None:
            return r
    return _general(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
                    q_out, k_out, config)


def _general(q, k, q_weight, k_weight, cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out,
             config):
    r = _check_meta(q, k, q_weight, k_weight, cs, positions, eps, weight_offset, is_neox, rotary_dim, q_out, k_out)
    V.config(config)
    _check_overlaps(q, k, q_out, k_out)
    _check_positions_range(positions, cs.shape[0])
    eps, weight_offset = float(eps), float(weight_offset)
    if V.grad_needed(q, k, q_weight, k_weight, cs, q_out, k_out):
        from .torch_library import autograd_qk_rms_norm_rope
        return autograd_qk_rms_norm_rope(q, k, q_weight, k_weight, cs, positions, eps, is_neox, r, weight_offset,
                                         q_out, k_out)
    # read-only tensors sharing memory with an output are read from a private copy
    written = (q_out, k_out)
    q_weight, k_weight = V.unaliased(q_weight, written), V.unaliased(k_weight, written)
    cs, positions = V.unaliased(cs, written), V.unaliased(positions, written)
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    if not use_triton(q):
        if positions.is_cuda:  # same behaviour as the kernel, without a sync
            positions = positions.clamp(0, cs.shape[0] - 1)
        return qk_rms_norm_rope_torch(q, k, q_weight, k_weight, cs, positions, eps, is_neox, r, weight_offset,
                                      q_out, k_out)
    _launch_general(q, k, q_out, k_out, q_weight, k_weight, cs, positions, eps, is_neox, r, weight_offset, config)
    return q_out, k_out


# --------------------------------------------------------------------------- plans and launch

def _launch_general(q, k, q_out, k_out, qw, kw, cs, positions, eps, is_neox, r, weight_offset, config):
    """Launch for checked arguments: tensors the kernel cannot address with int32 column
    offsets are copied once (weights, cache, or Q/K/outputs to contiguous), calls with more
    rows than one launch takes run in pieces of whole tokens."""
    d = q.shape[-1]
    if qw is not None and abs(qw.stride(0)) * d > _INT32_MAX:
        qw = qw.contiguous()
    if kw is not None and abs(kw.stride(0)) * d > _INT32_MAX:
        kw = kw.contiguous()
    if abs(cs.stride(1)) * r > _INT32_MAX:
        cs = cs.contiguous()
    if any(abs(st) * d > _INT32_MAX for st in (q.stride(2), k.stride(2), q_out.stride(2), k_out.stride(2))):
        qt, kt = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype,
                                                                                   device=k.device)
        _launch_general(q.contiguous(), k.contiguous(), qt, kt, qw, kw, cs, positions, eps, is_neox, r,
                        weight_offset, config)  # contiguous: addressable, no further copy
        q_out.copy_(qt)
        k_out.copy_(kt)
        return
    t = q.shape[0]
    step = max(1, _ops.ROW_LIMIT // max(1, q.shape[1] + k.shape[1]))
    for t0 in range(0, t, step):
        n = min(step, t - t0)
        qc, kc, qoc, koc, pc = ((q, k, q_out, k_out, positions) if n == t else
                                (q.narrow(0, t0, n), k.narrow(0, t0, n), q_out.narrow(0, t0, n),
                                 k_out.narrow(0, t0, n), positions.narrow(0, t0, n)))
        plan = _plan_for(("G", qc.shape, qc.stride(), kc.shape, kc.stride(), q.dtype, q.device, qoc.stride(),
                          koc.stride(), _wkey(qw), _wkey(kw), _tkey(cs), _tkey(pc), is_neox, r, config),
                         lambda: _plan(qc, kc, qw, kw, cs, pc, qoc.stride(), koc.stride(), is_neox, r, config))
        _run(plan, qc, kc, qoc, koc, qw, kw, cs, pc, eps, weight_offset)


class _Plan:
    """What follows from a call's metadata: grid, int arguments, constexprs, launch entries,
    and the byte spans / geometry used by the per-call overlap checks (``ops._no_overlap``)."""

    __slots__ = ("kl", "grid", "head", "q_ints", "k_ints", "consts", "kwargs", "entries", "device",
                 "spans", "geom", "memo", "same_layout", "read_spans")

    def __init__(self):
        self.spans = ()
        self.geom = []
        self.memo = [{} for _ in range(5)]
        self.same_layout = (False, False)


def _wkey(w):
    return None if w is None else (w.shape, w.stride(), w.dtype, w.device)


def _tkey(t):
    return (t.shape, t.stride(), t.dtype, t.device)


def _plan_for(key, build):
    global _used_dispatch
    if (_used_dispatch and _decisions is not None and not _decisions) or len(_plans) > _MAX_PLANS:
        _plans.clear()  # the dispatcher forgot its decisions: do not keep configs it would not pick
        _used_dispatch = False
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = build()
    return plan


def _plan(q, k, qw, kw, cs, positions, qos, kos, is_neox, r, config) -> _Plan:
    """Plan of one launch: Q ``[T, Hq, D]`` into strides ``qos``, K into ``kos``."""
    global _used_dispatch
    t, hq, d = q.shape
    hk = k.shape[1]
    q_rows, k_rows = t * hq, t * hk
    if config is None:
        _used_dispatch = True
        cfg = choose_config("qk_rms_norm", q.dtype, d, q_rows + k_rows, q.device)[0]
    else:
        cfg = config
    half, tail = r // 2, d - r
    p = _Plan()
    p.kl = _launcher()
    p.grid = _grid(cfg, _cdiv(q_rows, cfg.rows) + _cdiv(k_rows, cfg.rows), q.device)
    p.head = (d, half, cs.stride(0), cs.stride(1), cs.shape[0], positions.stride(0))
    p.q_ints = (q_rows, max(hq, 1), q.stride(0), q.stride(1), q.stride(2), qos[0], qos[1], qos[2],
                qw.stride(0) if qw is not None else 0)
    p.k_ints = (k_rows, max(hk, 1), k.stride(0), k.stride(1), k.stride(2), kos[0], kos[1], kos[2],
                kw.stride(0) if kw is not None else 0)
    pdl = _use_pdl(cfg, q.device, p.grid[0])
    p.consts = (qw is not None, is_neox, tail > 0, cfg.rows, next_pow2(half), next_pow2(tail) if tail else 1,
                cfg.persistent, pdl)
    p.kwargs = {"num_warps": cfg.num_warps}
    if pdl:
        p.kwargs["launch_pdl"] = True
    p.device = q.device.index if q.device.type == "cuda" else -1
    ptr_dtypes = (cs.dtype, positions.dtype, q.dtype, qw.dtype if qw is not None else q.dtype,
                  kw.dtype if kw is not None else q.dtype)
    ints = p.head + p.q_ints + p.k_ints
    spec = (tuple(_launch.int_spec(v) for v in ints), ptr_dtypes, p.consts, cfg.num_warps, pdl, p.device)
    p.entries = p.kl.entries(spec, len(_PTRS))
    return p


def _run(plan, q, k, q_out, k_out, qw, kw, cs, positions, eps, weight_offset):
    if qw is None:
        qw, kw = q, k  # never read (HAS_WEIGHT=False)
    tensors = (cs, positions, q, q_out, qw, k, k_out, kw)
    ptrs = [t.data_ptr() for t in tensors]
    bits = 0
    for i, ptr in enumerate(ptrs):
        if ptr & 15:
            bits |= 1 << i
    pcs, pp, pq, pqo, pqw, pk, pko, pkw = ptrs
    d, half, css0, css1, max_pos, ps = plan.head
    args = (d, half, *_eps_pair(eps), weight_offset, pcs, css0, css1, max_pos, pp, ps,
            pq, pqo, pqw, *plan.q_ints, pk, pko, pkw, *plan.k_ints, *plan.consts)
    _launch.run(plan.kl, plan.entries, bits, plan.grid, args, tensors, plan.kwargs, plan.device)


# --------------------------------------------------------------------------- fast path

def _fast(q, k, qw, kw, cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out, config):
    """The common CUDA call with a cached plan; None means: take the general path."""
    qo = 0 if q_out is None else 1 if q_out is q else 2 if isinstance(q_out, _Tensor) and not q_out.requires_grad \
        else -1
    ko = 0 if k_out is None else 1 if k_out is k else 2 if isinstance(k_out, _Tensor) and not k_out.requires_grad \
        else -1
    if qo < 0 or ko < 0:
        return None
    if qw is None:
        if kw is not None or weight_offset != 0.0:
            return None
        wk = None
    elif isinstance(qw, _Tensor) and isinstance(kw, _Tensor) and not (qw.requires_grad or kw.requires_grad):
        wk = (_wkey(qw), _wkey(kw))
    else:
        return None
    key = ("F", qo, ko, q.shape, q.stride(), k.shape, k.stride(), q.dtype, k.dtype, q.device, k.device, wk,
           _tkey(cs), _tkey(positions), is_neox, rotary_dim, config,
           _tkey(q_out) if qo == 2 else None, _tkey(k_out) if ko == 2 else None)
    plan = _plans.get(key)
    if plan is None or (_used_dispatch and not _decisions):
        if plan is None and key in _plans:
            return None  # not a fast-path call (a check failed when the plan was built)
        plan = _plan_for(key, lambda: _fast_plan(q, k, qw, kw, cs, positions, is_neox, rotary_dim, q_out, k_out,
                                                 qo, ko, config))
        if plan is None:
            return None
    pq, pk = q.data_ptr(), k.data_ptr()
    sq, sk, sqo, sko = plan.spans
    if qo == 0:
        q_out = torch.empty_like(q, memory_format=_CONTIG)
        pqo, q_in = q_out.data_ptr(), False
    elif qo == 1:
        pqo, q_in = pq, True
    else:
        pqo = q_out.data_ptr()
        q_in = pqo == pq and plan.same_layout[0]
        if not q_in and not _apart(plan, 0, pq, sq, pqo, sqo):
            return None
    if ko == 0:
        k_out = torch.empty_like(k, memory_format=_CONTIG)
        pko, k_in = k_out.data_ptr(), False
    elif ko == 1:
        pko, k_in = pk, True
    else:
        pko = k_out.data_ptr()
        k_in = pko == pk and plan.same_layout[1]
        if not k_in and not _apart(plan, 1, pk, sk, pko, sko):
            return None
    if qo and ko and not _apart(plan, 2, pqo, sqo, pko, sko):
        return None
    if qo and not k_in and not _apart(plan, 3, pqo, sqo, pk, sk):
        return None
    if ko and not q_in and not _apart(plan, 4, pko, sko, pq, sq):
        return None
    if qo or ko:  # read-only tensors sharing memory with an output: the general path copies them
        qlo, qhi = (pqo + sqo[0], pqo + sqo[1]) if qo else (0, 0)
        klo, khi = (pko + sko[0], pko + sko[1]) if ko else (0, 0)
        s_w, s_kw, s_cs, s_pos = plan.read_spans
        p = cs.data_ptr()
        lo, hi = p + s_cs[0], p + s_cs[1]
        if (hi > qlo and qhi > lo) or (hi > klo and khi > lo):
            return None
        p = positions.data_ptr()
        lo, hi = p + s_pos[0], p + s_pos[1]
        if (hi > qlo and qhi > lo) or (hi > klo and khi > lo):
            return None
        if qw is not None:
            p = qw.data_ptr()
            lo, hi = p + s_w[0], p + s_w[1]
            if (hi > qlo and qhi > lo) or (hi > klo and khi > lo):
                return None
            p = kw.data_ptr()
            lo, hi = p + s_kw[0], p + s_kw[1]
            if (hi > qlo and qhi > lo) or (hi > klo and khi > lo):
                return None
    _run(plan, q, k, q_out, k_out, qw, kw, cs, positions, eps, weight_offset)
    return q_out, k_out


def _apart(plan, pair, pa, sa, pb, sb) -> bool:
    """Whether two views (data pointers ``pa``/``pb``, byte spans ``sa``/``sb``) share no element."""
    return pa + sa[1] <= pb + sb[0] or pb + sb[1] <= pa + sa[0] or _no_overlap(plan, pair, pa, pb)


def _fast_plan(q, k, qw, kw, cs, positions, is_neox, rotary_dim, q_out, k_out, qo, ko, config):
    try:
        r = _check_meta(q, k, qw, kw, cs, positions, 0.0, 0.0, is_neox, rotary_dim, q_out, k_out)
        V.config(config)
    except (TypeError, ValueError):
        return None
    if q.numel() == 0 or k.numel() == 0 or q.shape[0] * (q.shape[1] + k.shape[1]) > _ops.ROW_LIMIT:
        return None
    d = q.shape[-1]
    if any(abs(st) * d > _INT32_MAX for st in (q.stride(2), k.stride(2))) or abs(cs.stride(1)) * d > _INT32_MAX \
            or any(w is not None and abs(w.stride(0)) * d > _INT32_MAX for w in (qw, kw)):
        return None
    if (qo == 2 and abs(q_out.stride(2)) * d > _INT32_MAX) or (ko == 2 and abs(k_out.stride(2)) * d > _INT32_MAX):
        return None
    qos = _contig_strides(q.shape) if qo == 0 else q.stride() if qo == 1 else q_out.stride()
    kos = _contig_strides(k.shape) if ko == 0 else k.stride() if ko == 1 else k_out.stride()
    plan = _plan(q, k, qw, kw, cs, positions, qos, kos, is_neox, r, config)
    es = q.element_size()
    qs, ks, qos, kos = tuple(q.stride()), tuple(k.stride()), tuple(qos), tuple(kos)
    plan.spans = (_span(q.shape, qs, es), _span(k.shape, ks, es), _span(q.shape, qos, es), _span(k.shape, kos, es))
    # overlap pairs: 0 (q, q_out), 1 (k, k_out), 2 (q_out, k_out), 3 (q_out, k), 4 (k_out, q)
    plan.geom = [(q.shape, qs, q.shape, qos, es), (k.shape, ks, k.shape, kos, es), (q.shape, qos, k.shape, kos, es),
                 (q.shape, qos, k.shape, ks, es), (k.shape, kos, q.shape, qs, es)]
    plan.same_layout = (qos == qs, kos == ks)
    plan.read_spans = tuple((0, 0) if t is None else _span(t.shape, t.stride(), t.element_size())
                            for t in (qw, kw, cs, positions))
    return plan
