"""Host side of ``qk_rms_norm`` (kernels: ``kernels/qk_norm.py``): checks, plans, launch.

Public function and documentation: :func:`qknorm.qk_rms_norm` (``functional.py``). Q and K
run in one launch: the segment-ordered kernel (all Q rows, then all K rows), or, when the
config asks for ``token_order`` and the views allow it, the token-ordered kernel.
"""
from __future__ import annotations

import torch

from .. import backend, launch
from .. import validate
from .. import layout
from ..layout import kernel_layout
from ..reference import rms_norm_ref, writing
from . import _express
from . import _plan as plans
from ._plan import PLANS

OP = "qk_rms_norm"
_PTRS = ("XQ", "YQ", "WQ", "XK", "YK", "WK")
_PER_CALL = _PTRS + ("eps", "eps_tiny", "w_offset")
# Positions of the express call's arguments (q, k, q_weight, k_weight, q_out, k_out, eps, weight_offset, config)
_A_Q, _A_K, _A_QW, _A_KW, _A_QO, _A_KO = range(6)


def launcher(token_order: bool = False) -> launch.KernelLauncher:
    """The segment-ordered (or token-ordered) kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("qk_norm", "qk_rms_norm_tokens_kernel" if token_order else "qk_rms_norm_kernel",
                             _PTRS, _PER_CALL)


def check_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config, *, memory: bool = True):
    """Every rule of ``qk_rms_norm`` in the order users see the errors; ``memory=False``
    skips the rules about the actual buffers (for plans and fakes). Returns float (eps, weight_offset)."""
    validate.qk_pair(q, k, q_weight, k_weight)
    validate.scalars(eps, weight_offset, q_weight is not None)
    validate.config(config)
    validate.qk_outputs(q, k, q_out, k_out, memory=memory)
    return float(eps), float(weight_offset)


def fast(q, k, qw, kw, eps, weight_offset, q_out, k_out, config):
    """The common CUDA call on a cached plan; None: take the general call (see ``rms_norm.fast``)."""
    if type(eps) is not float or type(weight_offset) is not float or backend.active == "torch":
        return None
    r = plans.qk_describe(q, k, qw, kw, q_out, k_out)
    if r is None:
        return None
    qo, ko, d = r
    plan = PLANS.fetch((OP, qo, ko, d[0], eps, weight_offset, config), _fast_plan, q, k, qw, kw, eps, weight_offset,
                       q_out, k_out, qo, ko, config)
    if plan is None:
        return None
    wk = qw_ptr = d[4]  # None: no weights
    kw_ptr = d[5]
    given = (qw, kw, q_out, k_out)
    t = plans.qk_placed(plan, d, q, k, q_out, k_out, qo, ko, () if wk is None else (qw_ptr, kw_ptr))
    if t is None:
        return None
    q_out, k_out, q_ptr, k_ptr, q_out_ptr, k_out_ptr = t
    if wk is None:
        qw_ptr, kw_ptr, qw, kw = q_ptr, k_ptr, q, k  # never read (HAS_WEIGHT=False)
    launch.launch_plan(plan, (q_ptr, q_out_ptr, qw_ptr, k_ptr, k_out_ptr, kw_ptr), (q, q_out, qw, k, k_out, kw))
    if qo or ko:  # outputs given (in place or not): they existed before the call
        launch.bump_versions((q_out, k_out) if qo and ko else (q_out,) if qo else (k_out,))
    if plan.records is not None and _express.wants(plan):
        # the express call's entry: arguments (q, k, q_weight, k_weight, q_out, k_out, eps, weight_offset, config)
        reads = () if wk is None else ((_A_QW, plan.read_spans[0]), (_A_KW, plan.read_spans[1]))
        plans.register_qk(_express.QK, (q, k, *given, eps, weight_offset, config), plan,
                          (q_ptr, k_ptr, d[4], d[5], q_out_ptr, k_out_ptr, None, None, None),
                          (_A_Q, _A_K, _A_QO, _A_KO),
                          (_A_Q, _A_QO, _A_Q if wk is None else _A_QW, _A_K, _A_KO, _A_K if wk is None else _A_KW),
                          reads, qo, ko, q, k)
    return q_out, k_out


def _fast_plan(q, k, qw, kw, eps, weight_offset, q_out, k_out, qo, ko, config):
    if not plans.checked(lambda: check_args(q, k, qw, kw, eps, weight_offset, q_out, k_out, config, memory=False)):
        return None
    if q.numel() == 0 or k.numel() == 0 or (not q.is_cuda and not plans.FAST_ON_CPU):
        return None
    q_out_strides = plans.out_strides(q, q_out, qo)
    k_out_strides = plans.out_strides(k, k_out, ko)
    plan = _plan(q, k, qw, kw, q_out_strides, k_out_strides, config)
    if plan is not None:
        plans.set_qk_pairs(plan, q, k, q_out_strides, k_out_strides, (qw, kw))
        plan = plans.bind_scalars(plan, eps, weight_offset)
    return plan


def _plan(q, k, qw, kw, q_out_strides, k_out_strides, config):
    """Plan of one launch over q (outputs strided ``q_out_strides``) and k (``k_out_strides``); None when the
    kernel cannot address them directly."""
    d = q.shape[-1]
    q_lay = kernel_layout(q.shape, d, q.stride(), q_out_strides)
    k_lay = kernel_layout(k.shape, d, k.stride(), k_out_strides)
    if q_lay is None or k_lay is None or q_lay.n_rows + k_lay.n_rows > layout.ROW_LIMIT:
        return None
    if not (plans.weight_ok(qw, d) and plans.weight_ok(kw, d)):
        return None
    q_rows = 0 if q.numel() == 0 else q_lay.n_rows
    k_rows = 0 if k.numel() == 0 else k_lay.n_rows
    cfg = plans.choose(OP, q.dtype, d, q_rows + k_rows, q.device, config)
    dts = (q.dtype, qw.dtype if qw is not None else q.dtype, kw.dtype if kw is not None else q.dtype)
    weights = dict(qws=qw.stride(0) if qw is not None else 0, kws=kw.stride(0) if kw is not None else 0,
                   HAS_WEIGHT=qw is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d)
    if cfg.token_order and _token_order_ok(q, k, q_out_strides, k_out_strides, cfg):
        # Q [T, Hq, D] and K [T, Hkv, D] walked token by token (kernels/qk_norm.py).
        t, hq, hk = q.shape[0], q.shape[1], k.shape[1]
        return plans.make_plan(launcher(True), cfg, plans.cdiv(t * (hq + hk), cfg.rows), q.device, dts,
                               D=d, n_tokens=t, HQ=hq, qxt=q.stride(0), qxh=q.stride(1), qyt=q_out_strides[0],
                               qyh=q_out_strides[1], HK=hk, kxt=k.stride(0), kxh=k.stride(1), kyt=k_out_strides[0],
                               kyh=k_out_strides[1], **weights)
    (_, qn1, qn2), (qxs, qys) = q_lay.sizes, q_lay.strides
    (_, kn1, kn2), (kxs, kys) = k_lay.sizes, k_lay.strides
    return plans.make_plan(launcher(), cfg, plans.blocks(q_rows, cfg) + plans.blocks(k_rows, cfg), q.device, dts,
                           D=d, q_rows=q_rows, qN1=qn1, qN2=qn2, **plans.strides_named("qx", qxs),
                           **plans.strides_named("qy", qys), k_rows=k_rows, kN1=kn1, kN2=kn2,
                           **plans.strides_named("kx", kxs), **plans.strides_named("ky", kys),
                           CHUNKED=cfg.chunk_mode(d), **weights)


def _token_order_ok(q, k, q_out_strides, k_out_strides, cfg) -> bool:
    """The token-ordered kernel needs Q [T, Hq, D], K [T, Hkv, D], unit last-dim strides
    everywhere and whole rows in registers; otherwise the segment order runs."""
    return (q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and not cfg.chunked(q.shape[-1])
            and q.stride(2) == 1 and k.stride(2) == 1 and q_out_strides[2] == 1 and k_out_strides[2] == 1)


def run(q, k, q_weight, k_weight, eps: float, weight_offset: float, q_out, k_out, config):
    """The general call, after :func:`check_args` (and without autograd)."""
    q_weight = validate.unaliased(q_weight, (q_out, k_out))
    k_weight = validate.unaliased(k_weight, (q_out, k_out))
    q_out, k_out = plans.qk_outputs(q, k, q_out, k_out)
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    if not backend.use_triton(q):
        q_res = rms_norm_ref(q, q_weight, eps, weight_offset)
        k_res = rms_norm_ref(k, k_weight, eps, weight_offset)
        with writing(q_out, k_out):
            q_out.copy_(q_res)
            k_out.copy_(k_res)
        return q_out, k_out
    _launch(q, k, q_out, k_out, q_weight, k_weight, eps, weight_offset, config)
    launch.bump_versions((q_out, k_out))
    return q_out, k_out


def _launch(q, k, q_out, k_out, q_weight, k_weight, eps, weight_offset, config, copied=False):
    d = q.shape[-1]
    q_weight, k_weight = plans.addressable_weight(q_weight, d), plans.addressable_weight(k_weight, d)
    if plans.n_rows(q) + plans.n_rows(k) > layout.ROW_LIMIT:
        # Too many rows for one launch: Q, then K, in pieces of at most layout.ROW_LIMIT rows
        # (the other segment empty).
        empty = q.new_empty((0, d))
        for xc, oc in plans.row_chunks([q, q_out]):
            _launch(xc, empty, oc, empty, q_weight, k_weight, eps, weight_offset, config)
        for xc, oc in plans.row_chunks([k, k_out]):
            _launch(empty, xc, empty, oc, q_weight, k_weight, eps, weight_offset, config)
        return
    key = (OP, "general", q.shape, q.stride(), k.shape, k.stride(), q.dtype, q.get_device(), q_out.stride(),
           k_out.stride(), _wkey(q_weight), _wkey(k_weight), config)
    plan = plans.cached(key, lambda: _plan(q, k, q_weight, k_weight, q_out.stride(), k_out.stride(), config))
    if plan is None:
        # Rare layouts (> 3 leading dims that do not merge, last-dim strides past int32):
        # once on contiguous copies, which are always addressable.
        assert not copied, "a contiguous copy must be addressable"
        qc, kc = q.contiguous(), k.contiguous()
        qt, kt = torch.empty_like(qc), torch.empty_like(kc)
        _launch(qc, kc, qt, kt, q_weight, k_weight, eps, weight_offset, config, copied=True)
        with writing(q_out, k_out):
            q_out.copy_(qt)
            k_out.copy_(kt)
        return
    qw = q_weight if q_weight is not None else q
    kw = k_weight if k_weight is not None else k
    ptrs = (q.data_ptr(), q_out.data_ptr(), qw.data_ptr(), k.data_ptr(), k_out.data_ptr(), kw.data_ptr())
    plans.launch_general(plan, ptrs, eps, weight_offset, (q, q_out, qw, k, k_out, kw))


def _wkey(w):
    return None if w is None else (w.shape, w.stride(), w.dtype, w.device)


def call(q, k, q_weight, k_weight, eps=1e-6, weight_offset=0.0, q_out=None, k_out=None, config=None):
    """Eager ``qk_rms_norm`` without compile or autograd routing (the custom ops' body)."""
    r = fast(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    if r is None:
        eps, weight_offset = check_args(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
        r = run(q, k, q_weight, k_weight, eps, weight_offset, q_out, k_out, config)
    return r
