"""Host side of ``qk_rms_norm_rope`` (kernel: ``kernels/qk_norm_rope.py``): checks, plans, launch.

Public function and documentation: :func:`qknorm.qk_rms_norm_rope` (``functional.py``).
Positions out of the cache's range: CPU positions are checked (ValueError); CUDA positions
are not (that would need a device sync): the kernel clamps them into ``[0, max_position)``
and the PyTorch path on CUDA clamps the same way.
"""
from __future__ import annotations

import torch

from .. import backend, dispatch, launch
from .. import validate
from ..dispatch import next_pow2
from .. import layout
from ..reference import writing
from ..reference_rope import qk_rms_norm_rope_torch
from . import _express
from . import _plan as plans
from ._plan import PLANS

OP = "qk_rms_norm_rope"
MAX_HEAD_DIM = dispatch.ROPE_MAX_HEAD_DIM  # whole head in registers; no chunked form
_PTRS = ("CS", "P", "XQ", "YQ", "WQ", "XK", "YK", "WK")
# Positions of the express call's arguments (q, k, q_weight, k_weight, cos_sin_cache, positions, q_out, k_out, eps,
# is_neox, rotary_dim, weight_offset, config)
_A_Q, _A_K, _A_QW, _A_KW, _A_CS, _A_POS, _A_QO, _A_KO = range(8)


def launcher() -> launch.KernelLauncher:
    """The kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("qk_norm_rope", "qk_rms_norm_rope_kernel", _PTRS,
                                 _PTRS + ("eps", "eps_tiny", "w_offset"))


def check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset,
               q_out, k_out, config, *, memory: bool = True) -> tuple[float, float, int]:
    """Every rule of ``qk_rms_norm_rope`` in the order users see the errors; ``memory=False``
    skips the rules about the actual buffers and values (for plans and fakes).
    Returns float (eps, weight_offset) and the rotary dim."""
    validate.rope_pair(OP, q, k, q_weight, k_weight, MAX_HEAD_DIM)
    validate.scalars(eps, weight_offset, q_weight is not None)
    r = validate.rotary(q, cos_sin_cache, positions, rotary_dim, is_neox)
    validate.config(config)
    validate.qk_outputs(q, k, q_out, k_out, memory=memory)
    if memory:
        validate.positions_in_range(positions, cos_sin_cache.shape[0])
    return float(eps), float(weight_offset), r


def fast(q, k, qw, kw, cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out, config):
    """The common CUDA call on a cached plan; None: take the general call (see ``rms_norm.fast``)."""
    if type(eps) is not float or type(weight_offset) is not float or type(is_neox) is not bool \
            or not (rotary_dim is None or type(rotary_dim) is int) or backend.active == "torch":
        return None
    r = plans.qk_describe(q, k, qw, kw, q_out, k_out, cs, positions)
    if r is None:
        return None
    qo, ko, d = r
    if d[1] < 0 and (d[8] is None or d[9] is None or not plans.cpu_positions_ok(positions, cs)):
        return None  # (tests only: CPU tensors) a None cache or positions: the general call raises
    plan = PLANS.fetch((OP, qo, ko, d[0], eps, weight_offset, is_neox, rotary_dim, config), _fast_plan, q, k, qw, kw,
                       cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out, qo, ko, config)
    if plan is None:
        return None
    cs_ptr, pos_ptr, qw_ptr, kw_ptr = d[8], d[9], d[4], d[5]
    wk = qw_ptr
    given = (qw, kw, cs, positions, q_out, k_out)
    if wk is None:
        reads = (cs_ptr, pos_ptr)
    else:
        reads = (cs_ptr, pos_ptr, qw_ptr, kw_ptr)
    t = plans.qk_placed(plan, d, q, k, q_out, k_out, qo, ko, reads)
    if t is None:
        return None
    q_out, k_out, q_ptr, k_ptr, q_out_ptr, k_out_ptr = t
    if wk is None:
        qw_ptr, kw_ptr, qw, kw = q_ptr, k_ptr, q, k  # never read (HAS_WEIGHT=False)
    ptrs = (cs_ptr, pos_ptr, q_ptr, q_out_ptr, qw_ptr, k_ptr, k_out_ptr, kw_ptr)
    launch.launch_plan(plan, ptrs, (cs, positions, q, q_out, qw, k, k_out, kw))
    if qo or ko:  # outputs given (in place or not): they existed before the call
        launch.bump_versions((q_out, k_out) if qo and ko else (q_out,) if qo else (k_out,))
    if plan.records is not None and (d[1] >= 0 or _express.testing()) and _express.wants(plan):
        # the express call's entry: arguments (q, k, q_weight, k_weight, cos_sin_cache, positions, q_out, ...)
        # (CPU tensors, tests only: positions checked per call above, not by the C call)
        rs = plan.read_spans
        reads = tuple(zip((_A_CS, _A_POS) if wk is None else (_A_CS, _A_POS, _A_QW, _A_KW), rs))
        plans.register_qk(_express.QK_ROPE, (q, k, *given, eps, is_neox, rotary_dim, weight_offset, config), plan,
                          (q_ptr, k_ptr, d[4], d[5], cs_ptr, pos_ptr, q_out_ptr, k_out_ptr) + (None,) * 5,
                          (_A_Q, _A_K, _A_QO, _A_KO),
                          (_A_CS, _A_POS, _A_Q, _A_QO, _A_Q if wk is None else _A_QW, _A_K, _A_KO,
                           _A_K if wk is None else _A_KW), reads, qo, ko, q, k,
                          cpu_check=None if d[1] >= 0 else lambda ts: plans.cpu_positions_ok(ts[1], ts[0]))
    return q_out, k_out


def _fast_plan(q, k, qw, kw, cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out, qo, ko, config):
    try:
        r = check_args(q, k, qw, kw, cs, positions, eps, is_neox, rotary_dim, weight_offset, q_out, k_out, config,
                       memory=False)[2]
    except (TypeError, ValueError):
        return None
    if q.numel() == 0 or k.numel() == 0 or (not q.is_cuda and not plans.FAST_ON_CPU):
        return None
    q_out_strides = plans.out_strides(q, q_out, qo)
    k_out_strides = plans.out_strides(k, k_out, ko)
    if not _addressable(q, k, qw, kw, cs, q_out_strides, k_out_strides, r):
        return None
    plan = _plan(q, k, qw, kw, cs, positions, q_out_strides, k_out_strides, is_neox, r, config)
    reads = (cs, positions) if qw is None else (cs, positions, qw, kw)
    plans.set_qk_pairs(plan, q, k, q_out_strides, k_out_strides, reads)
    plan = plans.bind_scalars(plan, eps, weight_offset)
    return plan


def _addressable(q, k, qw, kw, cs, q_out_strides, k_out_strides, r) -> bool:
    """Whether the kernel's int32 column offsets reach every element, and one launch takes the rows."""
    d, lim = q.shape[-1], plans.INT32_MAX
    return (q.shape[0] * (q.shape[1] + k.shape[1]) <= layout.ROW_LIMIT and plans.cos_sin_ok(cs, r)
            and all(abs(s) * d <= lim for s in (q.stride(2), k.stride(2), q_out_strides[2], k_out_strides[2]))
            and plans.weight_ok(qw, d) and plans.weight_ok(kw, d))


def _plan(q, k, qw, kw, cs, positions, q_out_strides, k_out_strides, is_neox, r, config) -> plans.Plan:
    """Plan of one launch: Q ``[T, Hq, D]`` into strides ``q_out_strides``, K into ``k_out_strides``."""
    t, hq, d = q.shape
    hk = k.shape[1]
    q_rows, k_rows = t * hq, t * hk
    cfg = plans.choose_rope(q.dtype, d, r, q_rows + k_rows, q.device, config)
    half, tail = r // 2, d - r
    dts = (cs.dtype, positions.dtype, q.dtype, qw.dtype if qw is not None else q.dtype,
           kw.dtype if kw is not None else q.dtype)
    return plans.make_plan(launcher(), cfg, plans.blocks(q_rows, cfg) + plans.blocks(k_rows, cfg), q.device, dts,
                       D=d, HALF=half, css0=cs.stride(0), css1=cs.stride(1), max_pos=cs.shape[0],
                       ps=positions.stride(0),
                       q_rows=q_rows, qH=max(hq, 1), qxt=q.stride(0), qxh=q.stride(1), qxd=q.stride(2),
                       qyt=q_out_strides[0], qyh=q_out_strides[1], qyd=q_out_strides[2],
                       qws=qw.stride(0) if qw is not None else 0,
                       k_rows=k_rows, kH=max(hk, 1), kxt=k.stride(0), kxh=k.stride(1), kxd=k.stride(2),
                       kyt=k_out_strides[0], kyh=k_out_strides[1], kyd=k_out_strides[2],
                       kws=kw.stride(0) if kw is not None else 0,
                       HAS_WEIGHT=qw is not None, IS_NEOX=is_neox, HAS_TAIL=tail > 0, ROWS=cfg.rows,
                       BLOCK_H=next_pow2(half), BLOCK_T=next_pow2(tail) if tail else 1,
                       **plans.row_form(d, r, is_neox))



def run(q, k, q_weight, k_weight, cs, positions, eps: float, is_neox: bool, r: int, weight_offset: float,
        q_out, k_out, config):
    """The general call, after :func:`check_args` (and without autograd)."""
    written = (q_out, k_out)  # read-only tensors sharing memory with an output: read from private copies
    q_weight, k_weight = validate.unaliased(q_weight, written), validate.unaliased(k_weight, written)
    cs, positions = validate.unaliased(cs, written), validate.unaliased(positions, written)
    q_out, k_out = plans.qk_outputs(q, k, q_out, k_out)
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    if not backend.use_triton(q):
        if positions.is_cuda:  # same behaviour as the kernel, without a sync
            positions = positions.clamp(0, cs.shape[0] - 1)
        return qk_rms_norm_rope_torch(q, k, q_weight, k_weight, cs, positions, eps, is_neox, r, weight_offset,
                                      q_out, k_out)
    _launch(q, k, q_out, k_out, q_weight, k_weight, cs, positions, eps, is_neox, r, weight_offset, config)
    launch.bump_versions((q_out, k_out))
    return q_out, k_out


def _launch(q, k, q_out, k_out, qw, kw, cs, positions, eps, is_neox, r, weight_offset, config):
    """Launch for checked arguments: tensors the kernel cannot address with int32 column
    offsets are copied once (weights, cache, or Q/K/outputs to contiguous), calls with more
    rows than one launch takes run in pieces of whole tokens."""
    d = q.shape[-1]
    qw, kw, cs = plans.addressable_weight(qw, d), plans.addressable_weight(kw, d), plans.addressable_cos_sin(cs, r)
    if any(abs(st) * d > plans.INT32_MAX for st in (q.stride(2), k.stride(2), q_out.stride(2), k_out.stride(2))):
        qt = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        kt = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        _launch(q.contiguous(), k.contiguous(), qt, kt, qw, kw, cs, positions, eps, is_neox, r, weight_offset,
                config)  # contiguous: addressable, no further copy
        with writing(q_out, k_out):
            q_out.copy_(qt)
            k_out.copy_(kt)
        return
    t = q.shape[0]
    step = max(1, layout.ROW_LIMIT // max(1, q.shape[1] + k.shape[1]))
    for t0 in range(0, t, step):
        n = min(step, t - t0)
        qc, kc, qoc, koc, pc = ((q, k, q_out, k_out, positions) if n == t else
                                (q.narrow(0, t0, n), k.narrow(0, t0, n), q_out.narrow(0, t0, n),
                                 k_out.narrow(0, t0, n), positions.narrow(0, t0, n)))
        key = (OP, "general", qc.shape, qc.stride(), kc.shape, kc.stride(), q.dtype, q.get_device(), qoc.stride(),
               koc.stride(), _tkey(qw), _tkey(kw), _tkey(cs), _tkey(pc), is_neox, r, config)
        plan = plans.cached(key, lambda: _plan(qc, kc, qw, kw, cs, pc, qoc.stride(), koc.stride(), is_neox, r, config))
        wq, wk = (qc, kc) if qw is None else (qw, kw)  # never read without weights
        tensors = (cs, pc, qc, qoc, wq, kc, koc, wk)
        ptrs = tuple(x.data_ptr() for x in tensors)
        plans.launch_general(plan, ptrs, eps, weight_offset, tensors)


def _tkey(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def call(q, k, q_weight, k_weight, cos_sin_cache, positions, eps=1e-6, is_neox=True, rotary_dim=None,
         weight_offset=0.0, q_out=None, k_out=None, config=None):
    """Eager ``qk_rms_norm_rope`` without compile or autograd routing (the custom ops' body)."""
    r = fast(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rotary_dim, weight_offset, q_out,
             k_out, config)
    if r is None:
        eps, weight_offset, rd = check_args(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox,
                                            rotary_dim, weight_offset, q_out, k_out, config)
        r = run(q, k, q_weight, k_weight, cos_sin_cache, positions, eps, is_neox, rd, weight_offset, q_out, k_out,
                config)
    return r
