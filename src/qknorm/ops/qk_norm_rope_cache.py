"""Host side of ``qk_norm_rope_cache`` (kernel: ``kernels/qk_norm_rope_cache.py``): checks,
the PyTorch path, plans, launch.

Public function and documentation: :func:`qknorm.qk_norm_rope_cache` (``functional.py``).

Slots: ``slot_mapping[t] < 0`` skips token ``t``'s cache writes (padding, as vLLM). A slot
``>= num_slots`` is a ValueError for CPU tensors (checked before anything is written); CUDA
slots are not checked (that would need a device sync): the kernel skips such tokens, as
negative ones, so nothing outside the caches is written. Positions: as ``qk_rms_norm_rope``
(CPU: checked; CUDA: clamped into the cos/sin cache by the kernel).

Two ways, as the other ops (``_plan.py``): :func:`fast`, the common CUDA call on a plan cached
by the arguments' metadata (per call only the data pointers, the overlap checks that depend
on them and the launch), and the general call (:func:`check_args`, then :func:`run`).
"""
from __future__ import annotations

import torch

from .. import backend, dispatch, launch, layout
from .. import validate
from ..dispatch import next_pow2
from ..reference_rope import qk_rms_norm_rope_ref, rope_ref
from ..reference import rms_norm_ref, writing
from . import _express
from . import _plan as plans
from ._plan import IN_PLACE, NEW, OTHER, PLANS
from .rms_norm_quant import QMAX, native_cast

OP = "qk_norm_rope_cache"
MAX_HEAD_DIM = dispatch.ROPE_MAX_HEAD_DIM  # whole head in registers; no chunked form
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_FP8_CODE = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}
_PTRS = ("CS", "P", "XQ", "YQ", "WQ", "XK", "WK", "KC", "KO", "XV", "VC", "SM", "KSC", "VSC")


def launcher() -> launch.KernelLauncher:
    """The kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("qk_norm_rope_cache", "qk_norm_rope_cache_kernel", _PTRS,
                                 _PTRS + ("eps", "eps_tiny", "w_offset"))


# --------------------------------------------------------------------------- checks

def cache_geometry(cache) -> tuple[int, int]:
    """``(num_blocks, block_size)`` of a checked cache (a flat ``[num_slots, H, D]`` pool: block_size 1)."""
    return (cache.shape[0], cache.shape[1]) if cache.dim() == 4 else (cache.shape[0], 1)


def as_blocks(cache):
    """A ``[num_blocks, block_size, H, D]`` view of a checked cache (flat pool: block_size 1)."""
    return cache if cache.dim() == 4 else cache.unsqueeze(1)


def _cache(name: str, cache, q, hkv: int, width: int, width_name: str) -> None:
    validate.tensor(name, cache)
    if cache.dtype != q.dtype and cache.dtype not in FP8_DTYPES:
        raise TypeError(f"{name} must have q's dtype ({validate.dtype_name(q.dtype)}) or be float8_e4m3fn / "
                        f"float8_e5m2, got {validate.dtype_name(cache.dtype)}")
    if cache.dim() not in (3, 4) or cache.shape[-2] != hkv or cache.shape[-1] != width or cache.shape[0] < 1 \
            or (cache.dim() == 4 and cache.shape[1] < 1):
        raise ValueError(f"{name} must have shape [num_blocks, block_size, num_kv_heads={hkv}, {width_name}={width}] "
                         f"(or a flat pool [num_slots, {hkv}, {width}]), got {tuple(cache.shape)}")
    validate.same_device(name, cache, "q", q)


def _scale(name: str, scale, cache_name: str, cache, q) -> None:
    if scale is None:
        if cache.dtype in FP8_DTYPES:
            raise ValueError(f"{name} is needed for an FP8 {cache_name} ({validate.dtype_name(cache.dtype)}): a "
                             f"1-element float32 tensor (dequantisation scale: stored = saturate(value / {name}))")
        return
    validate.scale_tensor(name, scale, "q", q)


def _slots(slot_mapping, t: int, q) -> None:
    validate.index_tensor("slot_mapping", slot_mapping)
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != t:
        raise ValueError(f"slot_mapping must have shape ({t},) (one slot per token), got {tuple(slot_mapping.shape)}")
    validate.same_device("slot_mapping", slot_mapping, "q", q)


def slots_in_range(slot_mapping, num_slots: int) -> None:
    """CPU slots (free to read) must be below ``num_slots``; negative ones mean "skip". CUDA
    slots are not read (no sync): the kernel skips out-of-range ones; nor are meta ones."""
    if slot_mapping.numel() == 0 or slot_mapping.device.type in ("cuda", "meta"):
        return
    hi = int(slot_mapping.max())
    if hi >= num_slots:
        raise ValueError(f"slot_mapping must be < num_slots={num_slots} (num_blocks * block_size of the caches; "
                         f"negative slots skip a token), got a slot {hi}")


def check_args(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps, is_neox,
               rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out, *, memory: bool = True):
    """Every rule of ``qk_norm_rope_cache`` in the order users see the errors; nothing is
    written. ``memory=False`` skips the rules about actual buffers and values (fakes).
    Returns ``(eps, weight_offset, rotary_dim, mrope_section as a tuple or None)``."""
    d = validate.rope_pair(OP, q, k, q_weight, k_weight, MAX_HEAD_DIM)
    t, hkv = q.shape[0], k.shape[1]
    validate.activation("v", v)
    validate.same_dtype("v", v, "q", q)
    if v.dim() != 3 or v.shape[0] != t or v.shape[1] != hkv:
        raise ValueError(f"v must be [T={t}, Hkv={hkv}, head_dim_v] (k's tokens and heads), got {tuple(v.shape)}")
    dv = v.shape[2]
    if dv > MAX_HEAD_DIM:
        raise ValueError(f"v's head_dim {dv} is not supported (at most {MAX_HEAD_DIM})")
    validate.same_device("v", v, "q", q)
    validate.scalars(eps, weight_offset, q_weight is not None)
    if mrope_section is None:
        r = validate.rotary(q, cos_sin_cache, positions, rotary_dim, is_neox)
        sections = None
    else:
        r, sections = validate.mrope(q, cos_sin_cache, positions, rotary_dim, is_neox, mrope_section)
    _cache("k_cache", k_cache, q, hkv, d, "head_dim")
    _cache("v_cache", v_cache, q, hkv, dv, "head_dim_v")
    if k_cache.dim() != v_cache.dim() or k_cache.shape[:-2] != v_cache.shape[:-2]:
        raise ValueError(f"k_cache and v_cache must have the same num_blocks and block_size, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    _slots(slot_mapping, t, q)
    _scale("k_scale", k_scale, "k_cache", k_cache, q)
    _scale("v_scale", v_scale, "v_cache", v_cache, q)
    q_target = q if q_out is None else q_out  # None: Q in place
    if q_out is None:  # named as the caller knows it (qk_outputs would call it q_out)
        validate.written("q (written in place: q_out=None)", q)
    validate.qk_outputs(q, k, q_target, k_out, memory=memory)
    validate.written("k_cache", k_cache)
    validate.written("v_cache", v_cache)
    if memory:
        written = [("k_cache", k_cache), ("v_cache", v_cache), ("q_out" if q_out is not None else "q", q_target)]
        if k_out is not None:
            written.append(("k_out", k_out))
        for i, (na, a) in enumerate(written[:2]):  # the caches: apart from each other and the Q/K outputs
            for nb, b in written[i + 1:]:  # (q_out and k_out: qk_outputs checked them)
                validate.disjoint(na, a, nb, b)
        for nc, cache in written[:2]:  # the caches meet none of the activations read
            for ni, x in (("q", q), ("k", k), ("v", v)):
                validate.disjoint(nc, cache, ni, x)
        for no, out in written[2:]:  # Q/K outputs: not over V
            validate.disjoint(no, out, "v", v)
        validate.positions_in_range(positions, cos_sin_cache.shape[0])
        nb, bs = cache_geometry(k_cache)
        slots_in_range(slot_mapping, nb * bs)
    return float(eps), float(weight_offset), r, sections


# --------------------------------------------------------------------------- the PyTorch path

def mrope_cos_sin(cos_sin_cache, positions, sections, rotary_dim: int):
    """``[T, rotary_dim]``: per token, the cos/sin row of mRoPE: frequency ``j`` (and its sin
    at ``rotary_dim/2 + j``) from the cache row of position ``positions[i, t]``, where
    ``i`` is the section of ``j`` (t: ``j < s0``, h: ``j < s0 + s1``, w: the rest), as
    vLLM's ``MRotaryEmbedding`` and transformers' ``apply_multimodal_rotary_pos_emb`` do."""
    half = rotary_dim // 2
    sec = torch.repeat_interleave(torch.arange(3, device=positions.device),
                                  torch.tensor(sections, device=positions.device), output_size=half)  # [half]
    pos = positions.long()[sec]  # [half, T]: each frequency's position per token
    cols = torch.arange(half, device=positions.device)
    cos = cos_sin_cache[pos, cols[:, None]]  # [half, T]
    sin = cos_sin_cache[pos, half + cols[:, None]]
    return torch.cat((cos.t(), sin.t()), dim=1)


def quantise_fp8(x: torch.Tensor, scale: torch.Tensor, dtype) -> torch.Tensor:
    """``saturate(x / scale)`` in ``dtype`` (fp32 division, round to nearest even, NaN kept)."""
    qmax = QMAX[dtype]
    return torch.clamp(x.to(torch.float32) / scale.reshape(()).to(torch.float32), -qmax, qmax).to(dtype)


def _to_cache(x, cache, scale):
    return quantise_fp8(x, scale, cache.dtype) if cache.dtype in FP8_DTYPES else x.to(cache.dtype)


_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _raw(t):
    """``t``'s bits as integers of its element size (copies and selections are then bit exact for any dtype)."""
    return t.view(_RAW[t.element_size()])


def _write_plan(slot_mapping, num_slots: int):
    """Index writes of the kept tokens (slot in ``[0, num_slots)``) without a device sync:
    ``(slot, src, none)``: row ``i`` writes token ``src[i]``'s value to ``slot[i]``. A skipped
    token repeats the first kept token's write (same slot, same value: the result does not
    depend on the order); ``none`` (0-d bool) when no token is kept, then every row writes
    slot 0's current content back to it."""
    s = slot_mapping.long()
    t = s.shape[0]
    keep = (s >= 0) & (s < num_slots)
    ar = torch.arange(t, device=s.device)
    first = torch.where(keep, ar, t).min()
    none = first >= t
    src = torch.where(keep, ar, first.clamp(max=t - 1))
    slot = torch.where(none, 0, s[src])
    return slot, src, none


def torch_path(q, k, v, q_weight, k_weight, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, r,
               weight_offset, sections, k_scale, v_scale, q_out, k_out):
    """PyTorch path: ``reference_rope``'s fp32 math (mRoPE through :func:`mrope_cos_sin`), every
    value computed before anything is written; then index writes of the kept tokens. Slots
    outside ``[0, num_slots)`` are skipped, without a device sync (:func:`_write_plan`)."""
    if sections is None:
        qr, kr = qk_rms_norm_rope_ref(q, k, q_weight, k_weight, cs, positions, eps, is_neox=is_neox, rotary_dim=r,
                                      weight_offset=weight_offset)
    else:
        cst = mrope_cos_sin(cs, positions, sections, r)
        tok = torch.arange(q.shape[0], device=q.device)
        qr = rope_ref(rms_norm_ref(q, q_weight, eps, weight_offset), cst, tok, r, is_neox)
        kr = rope_ref(rms_norm_ref(k, k_weight, eps, weight_offset), cst, tok, r, is_neox)
    kc, vc = as_blocks(k_cache), as_blocks(v_cache)
    slot, src, none = _write_plan(slot_mapping, kc.shape[0] * kc.shape[1])
    bs = kc.shape[1]
    news = []
    for cache, vals, scale in ((kc, kr, k_scale), (vc, v, v_scale)):
        raw = _raw(cache)
        new = _raw(_to_cache(vals, cache, scale))[src]
        news.append((raw, torch.where(none, raw[0, 0], new)))  # no token kept: slot 0 gets its own content back
    with writing(k_cache, v_cache, k_out, q_out):
        for raw, new in news:
            raw[slot // bs, slot % bs] = new
        if k_out is not None:
            k_out.copy_(kr)
        q_out.copy_(qr)
    return q_out


# --------------------------------------------------------------------------- the kernel

def _plan(q, k, v, qw, kw, cs, positions, q_out, k_out, kc, vc, slot_mapping, is_neox, r, sections):
    """Plan of one launch (caches as ``[num_blocks, block_size, H, D]`` views)."""
    t, hq, d = q.shape
    hk, dv = k.shape[1], v.shape[2]
    q_rows, k_rows = t * hq, t * hk
    cfg = plans.choose_rope(q.dtype, d, r, q_rows + k_rows, q.device, None)  # as qk_rms_norm_rope: Q's bits
    half, tail = r // 2, d - r
    mrope = sections is not None
    s0, s01 = (sections[0], sections[0] + sections[1]) if mrope else (0, 0)
    kfp8, vfp8 = _FP8_CODE.get(kc.dtype, 0), _FP8_CODE.get(vc.dtype, 0)
    ko_strides = k_out.stride() if k_out is not None else (0, 0, 0)
    # int64 columns of the activations and caches (weights and cos/sin arrive addressable: plans.weight_ok,
    # plans.cos_sin_ok)
    wide = any(abs(st) * w > plans.INT32_MAX for st, w in (
        (q.stride(2), d), (q_out.stride(2), d), (k.stride(2), d), (ko_strides[2], d), (v.stride(2), dv),
        (kc.stride(3), d), (vc.stride(3), dv)))
    dts = (cs.dtype, positions.dtype, q.dtype, qw.dtype if qw is not None else q.dtype,
           kw.dtype if kw is not None else q.dtype, kc.dtype, vc.dtype, slot_mapping.dtype)
    ps3, ps = (positions.stride(0), positions.stride(1)) if mrope else (0, positions.stride(0))
    nb, bs = kc.shape[0], kc.shape[1]
    return plans.make_plan(
        launcher(), cfg, plans.blocks(q_rows, cfg) + plans.blocks(k_rows, cfg), q.device, dts,
        D=d, DV=dv, HALF=half, css0=cs.stride(0), css1=cs.stride(1), max_pos=cs.shape[0], ps=ps, ps3=ps3,
        S0=s0, S01=s01,
        q_rows=q_rows, qH=max(hq, 1), qxt=q.stride(0), qxh=q.stride(1), qxd=q.stride(2),
        qyt=q_out.stride(0), qyh=q_out.stride(1), qyd=q_out.stride(2), qws=qw.stride(0) if qw is not None else 0,
        k_rows=k_rows, kH=max(hk, 1), kxt=k.stride(0), kxh=k.stride(1), kxd=k.stride(2),
        kws=kw.stride(0) if kw is not None else 0, kot=ko_strides[0], koh=ko_strides[1], kod=ko_strides[2],
        vxt=v.stride(0), vxh=v.stride(1), vxd=v.stride(2),
        kcb=kc.stride(0), kco=kc.stride(1), kch=kc.stride(2), kcd=kc.stride(3),
        vcb=vc.stride(0), vco=vc.stride(1), vch=vc.stride(2), vcd=vc.stride(3),
        block_size=bs, num_slots=nb * bs, sms=slot_mapping.stride(0),
        HAS_WEIGHT=qw is not None, IS_NEOX=is_neox, HAS_TAIL=tail > 0, MROPE=mrope, HAS_KOUT=k_out is not None,
        K_FP8=kfp8, V_FP8=vfp8, K_QMAX=QMAX.get(kc.dtype, 1.0), V_QMAX=QMAX.get(vc.dtype, 1.0),
        NATIVE_CAST=bool(kfp8 or vfp8) and native_cast(q.device), WIDE=wide, ROWS=cfg.rows,
        BLOCK_H=next_pow2(half), BLOCK_T=next_pow2(tail) if tail else 1, BLOCK_V=next_pow2(max(dv, 1)),
        **plans.row_form(d, r, is_neox))


def _tkey(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def _launch(q, k, v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, r, weight_offset, sections,
            k_scale, v_scale, q_out, k_out):
    kc, vc = as_blocks(k_cache), as_blocks(v_cache)
    key = (OP, _tkey(q), _tkey(k), _tkey(v), _tkey(qw), _tkey(kw), _tkey(cs), _tkey(positions), _tkey(kc), _tkey(vc),
           _tkey(slot_mapping), _tkey(q_out), _tkey(k_out), is_neox, r, sections)
    plan = plans.cached(key, lambda: _plan(q, k, v, qw, kw, cs, positions, q_out, k_out, kc, vc, slot_mapping,
                                           is_neox, r, sections))
    wq, wk = (q, k) if qw is None else (qw, kw)  # never read without weights
    ko = k_out if k_out is not None else k  # never written without k_out
    ksc = k_scale if k_scale is not None else cs  # never read for a cache that is not FP8
    vsc = v_scale if v_scale is not None else cs
    tensors = (cs, positions, q, q_out, wq, k, wk, kc, ko, v, vc, slot_mapping, ksc, vsc)
    ptrs = tuple(x.data_ptr() for x in tensors)
    plans.launch_general(plan, ptrs, eps, weight_offset, tensors)


def run(q, k, v, q_weight, k_weight, cs, positions, k_cache, v_cache, slot_mapping, eps: float, is_neox: bool, r: int,
        weight_offset: float, sections, k_scale, v_scale, q_out, k_out):
    """The general call, after :func:`check_args` (no autograd: the op is not differentiable).
    Returns Q's output (``q`` itself when ``q_out`` is None)."""
    q_out = q if q_out is None else q_out
    written = (q_out, k_out, k_cache, v_cache)  # read-only tensors sharing memory with an output: private copies
    q_weight, k_weight = validate.unaliased(q_weight, written), validate.unaliased(k_weight, written)
    cs, positions = validate.unaliased(cs, written), validate.unaliased(positions, written)
    slot_mapping = validate.unaliased(slot_mapping, written)
    k_scale, v_scale = validate.unaliased(k_scale, written), validate.unaliased(v_scale, written)
    if q.shape[0] == 0:
        return q_out
    if not backend.use_triton(q):
        if positions.is_cuda:  # same behaviour as the kernel, without a sync
            positions = positions.clamp(0, cs.shape[0] - 1)
        return torch_path(q, k, v, q_weight, k_weight, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, r,
                          weight_offset, sections, k_scale, v_scale, q_out, k_out)
    if q.shape[1] * q.shape[0] + k.shape[1] * k.shape[0] == 0:
        return q_out
    d = q.shape[-1]  # the kernel's weight and cos/sin columns are int32 offsets: copies where they would overflow
    q_weight, k_weight = plans.addressable_weight(q_weight, d), plans.addressable_weight(k_weight, d)
    cs = plans.addressable_cos_sin(cs, r)
    t = q.shape[0]
    step = max(1, layout.ROW_LIMIT // max(1, q.shape[1] + k.shape[1]))
    for t0 in range(0, t, step):  # calls with more rows than one launch takes: pieces of whole tokens
        n = min(step, t - t0)
        if n == t:
            parts = (q, k, v, positions, slot_mapping, q_out, k_out)
        else:
            parts = (q.narrow(0, t0, n), k.narrow(0, t0, n), v.narrow(0, t0, n), positions.narrow(-1, t0, n),
                     slot_mapping.narrow(0, t0, n), q_out.narrow(0, t0, n),
                     None if k_out is None else k_out.narrow(0, t0, n))
        qc, kc, vc, pc, sc, qoc, koc = parts
        _launch(qc, kc, vc, q_weight, k_weight, cs, pc, k_cache, v_cache, sc, eps, is_neox, r, weight_offset,
                sections, k_scale, v_scale, qoc, koc)
    launch.bump_versions(tuple(t for t in (q_out, k_out, k_cache, v_cache) if t is not None))
    return q_out


# --------------------------------------------------------------------------- the fast call

# Views of one call, as indices into ``_CachePlan.spans`` (byte spans relative to the data pointers).
_Q, _K, _V, _QO, _KO, _KC, _VC = range(7)
_KC_VC = (_KC, _VC)
_SEEN_LIMIT = 256  # pointer tuples remembered per plan (an engine: one per layer and QKV buffer)
# The read-only tensors among the kernel's pointers (``_PTRS`` order): CS, P, WQ, WK, SM, KSC, VSC.
_CS, _P, _WQ, _WK, _SM, _KSC, _VSC = 0, 1, 4, 6, 11, 12, 13


class _CachePlan(plans.Plan):
    """A fast call's plan, with what its per-call overlap checks need besides ``spans``/``geom``/``memo``:
    ``pairs``: the pairs of views (indices above) that must share no element (every written view
    against every other written or read activation, except an output against its own input);
    ``written``: the indices of the written views; ``read_spans``: ``(pointer index, lo, hi)`` of
    every tensor only read (weights, cos/sin cache, positions, slots, scales); ``seen``: pointer
    tuples that passed the per-call checks (bounded: ``_SEEN_LIMIT``)."""

    __slots__ = ("pairs", "written", "seen")


def cpu_slots_ok(slot_mapping, k_cache) -> bool:
    """With :data:`_plan.FAST_ON_CPU` (tests): CPU slots must be below ``num_slots``, as the
    general call checks (CUDA slots are skipped by the kernel instead)."""
    nb, bs = cache_geometry(k_cache)
    return slot_mapping.numel() == 0 or int(slot_mapping.max()) < nb * bs


def _sections(mrope_section):
    """``mrope_section`` as a tuple of three ints for the key, or None (the general call takes it:
    bools, numpy ints and other types are its to accept or refuse)."""
    if type(mrope_section) not in (tuple, list) or len(mrope_section) != 3:
        return None
    a, b, c = mrope_section
    if type(a) is not int or type(b) is not int or type(c) is not int:
        return None
    return a, b, c


def fast(q, k, v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, rotary_dim, weight_offset,
         mrope_section, k_scale, v_scale, q_out, k_out):
    """The common CUDA call on a cached plan; None: take the general call (see ``qk_norm_rope.fast``).

    The key holds every tensor's shape, stride, dtype and device and the scalars; per call only
    the data pointers are read and checked: no written view (Q's target, ``k_out``, the caches)
    may share memory with another written view or with q, k or v (an output may be its own
    input exactly), and no read-only tensor may meet a written one (the general call would read
    it from a private copy). Declined: non-tensor or unusual scalar arguments, negated views,
    tensors requiring grad under grad mode, the torch backend, empty calls, calls past one
    launch's rows, and on CPU (tests only, :data:`_plan.FAST_ON_CPU`) positions or slots out of
    range."""
    if type(eps) is not float or type(weight_offset) is not float or type(is_neox) is not bool \
            or not (rotary_dim is None or type(rotary_dim) is int) or backend.active == "torch":
        return None
    args = (q, k, v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, rotary_dim, weight_offset,
            mrope_section, k_scale, v_scale, q_out, k_out)
    if mrope_section is not None:
        mrope_section = _sections(mrope_section)
        if mrope_section is None:
            return None
    r = plans.qk_describe(q, k, qw, kw, q if q_out is None else q_out, k_out, v, cs, positions, k_cache, v_cache,
                          slot_mapping, k_scale, v_scale)
    if r is None:
        return None
    qo, ko, d = r  # qo: IN_PLACE or OTHER; ko: NEW (no k_out), IN_PLACE or OTHER
    if d[1] < 0 and (None in d[8:14] or not (plans.cpu_positions_ok(positions, cs)
                                             and cpu_slots_ok(slot_mapping, k_cache))):
        return None  # (tests only: CPU tensors) a None tensor: the general call raises
    plan = PLANS.fetch((OP, qo, ko, d[0], eps, weight_offset, is_neox, rotary_dim, mrope_section), _fast_plan, q, k,
                       v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, rotary_dim, weight_offset,
                       mrope_section, k_scale, v_scale, q_out, k_out, qo, ko)
    if plan is None:
        return None
    q_ptr, k_ptr, qw_ptr, kw_ptr, v_ptr, cs_ptr, pos_ptr, kc_ptr, vc_ptr, sm_ptr, ks_ptr, vs_ptr = \
        d[2], d[3], d[4], d[5], *d[8:16]
    if qw_ptr is None:
        qw_ptr, kw_ptr, qw, kw = q_ptr, k_ptr, q, k  # never read (HAS_WEIGHT=False)
    if ks_ptr is None:
        ks_ptr, k_scale = cs_ptr, cs  # never read for a cache that is not FP8
    if vs_ptr is None:
        vs_ptr, v_scale = cs_ptr, cs
    if qo is IN_PLACE:
        q_out, q_out_ptr = q, q_ptr
    else:
        q_out_ptr = d[6]
    if ko is NEW:
        k_out, k_out_ptr = k, k_ptr  # never written (HAS_KOUT=False)
    elif ko is IN_PLACE:
        k_out_ptr = k_ptr
    else:
        k_out_ptr = d[7]
    ptrs = (cs_ptr, pos_ptr, q_ptr, q_out_ptr, qw_ptr, k_ptr, kw_ptr, kc_ptr, k_out_ptr, v_ptr, vc_ptr, sm_ptr, ks_ptr,
            vs_ptr)
    seen = plan.seen
    if ptrs not in seen:  # the overlap checks depend on the plan's layouts and these pointers only
        if not _pointers_ok(plan, ptrs, qo, ko):
            return None  # overlapping views (the general call raises) or a read tensor meeting a written one
        if len(seen) >= _SEEN_LIMIT:
            seen.clear()
        seen.add(ptrs)
    launch.launch_plan(plan, ptrs, (cs, positions, q, q_out, qw, k, kw, k_cache, k_out, v, v_cache, slot_mapping,
                                    k_scale, v_scale))
    launch.bump_versions((q_out, k_cache, v_cache) if ko is NEW else (q_out, k_out, k_cache, v_cache))
    if plan.records is not None and mrope_section is None and (d[1] >= 0 or _express.testing()) \
            and _express.wants(plan):
        # (CPU tensors, tests only: positions and slots checked per call above, not by the C call)
        _express_entry(plan, args, ptrs, qo, ko)
    return q_out


# The express call's arguments: the public function's, in its order.
_ARGS = ("q", "k", "v", "q_weight", "k_weight", "cos_sin_cache", "positions", "k_cache", "v_cache", "slot_mapping",
         "eps", "is_neox", "rotary_dim", "weight_offset", "mrope_section", "k_scale", "v_scale", "q_out", "k_out")
# ... and the positions of the tensors among them
_A_Q, _A_K, _A_V, _A_QW, _A_KW, _A_CS, _A_P, _A_KC, _A_VC, _A_SM, _A_KSC, _A_VSC, _A_QO, _A_KO = (
    _ARGS.index(n) for n in ("q", "k", "v", "q_weight", "k_weight", "cos_sin_cache", "positions", "k_cache", "v_cache",
                             "slot_mapping", "k_scale", "v_scale", "q_out", "k_out"))


def _express_entry(plan, args, ptrs, qo, ko):
    """This call for the express call (``ops/_express.py``): ``args`` the public arguments (``_ARGS``),
    ``ptrs`` the kernel's pointers; the overlap pairs of :func:`_pointers_ok`."""
    q_written = _A_Q if qo is IN_PLACE else _A_QO  # the argument Q is written to
    k_written = _A_K if ko is not OTHER else _A_KO
    view_arg = (_A_Q, _A_K, _A_V, q_written, k_written, _A_KC, _A_VC)  # the views _Q, _K, _V, _QO, _KO, _KC, _VC
    # the kernel's pointers (_PTRS order) as arguments: absent weights/scales/k_out stand in as read
    ptr_arg = (_A_CS, _A_P, _A_Q, q_written, _A_QW if args[_A_QW] is not None else _A_Q, _A_K,
               _A_KW if args[_A_KW] is not None else _A_K, _A_KC, k_written if ko is not NEW else _A_K, _A_V, _A_VC,
               _A_SM, _A_KSC if args[_A_KSC] is not None else _A_CS, _A_VSC if args[_A_VSC] is not None else _A_CS)
    arg_ptr = [None] * len(_ARGS)
    for a, p in zip(ptr_arg, ptrs):
        arg_ptr[a] = p
    sp = plan.spans
    pairs = [(view_arg[i], sp[i], view_arg[j], sp[j]) for i, j in plan.pairs]
    if qo is OTHER:
        pairs.append((_A_QO, sp[_QO], _A_Q, sp[_Q]))
    if ko is OTHER:
        pairs.append((_A_KO, sp[_KO], _A_K, sp[_K]))
    pairs += [(ptr_arg[i], (a, b), view_arg[w], sp[w]) for i, a, b in plan.read_spans for w in plan.written]
    bumps = (q_written,) + (() if ko is NEW else (k_written,)) + (_A_KC, _A_VC)
    cpu = None
    if not args[_A_Q].is_cuda:  # tests: the checks of the CPU fast call above, on the kernel's tensors (_PTRS order)
        nb, bs = cache_geometry(args[_A_KC])
        cpu = lambda ts: plans.cpu_positions_ok(ts[_P], ts[_CS]) and (ts[_SM].numel() == 0 or  # noqa: E731
                                                                        int(ts[_SM].max()) < nb * bs)
    _express.register(_express.PROLOGUE, args, plan, tuple(arg_ptr), ptr_arg, pairs, bumps=bumps, ret=q_written,
                      cpu_check=cpu)


def _pointers_ok(plan, ptrs, qo, ko) -> bool:
    """The per-call rules on the kernel's pointers ``ptrs`` (``_PTRS`` order): the written views
    share no element with each other or with q, k, v (:func:`_views_apart`), and no read-only
    tensor meets a written one (else the general call reads it from a private copy)."""
    q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr = ptrs[2], ptrs[5], ptrs[9], ptrs[7], ptrs[10]
    views = (q_ptr, k_ptr, v_ptr, ptrs[3], ptrs[8], kc_ptr, vc_ptr)
    ranges = None
    if qo is IN_PLACE and ko is not OTHER:  # the engine's call: in place on a packed QKV buffer
        ip = plan.in_place
        if ip is None or ip[0] != k_ptr - q_ptr or ip[1] != v_ptr - q_ptr:
            ip = _activations_apart(plan, q_ptr, k_ptr, v_ptr)
        if ip is not None:
            s = plan.spans
            lo, hi = q_ptr + ip[2], q_ptr + ip[3]  # Q, K and V together
            kl, kh = kc_ptr + s[_KC][0], kc_ptr + s[_KC][1]
            vl, vh = vc_ptr + s[_VC][0], vc_ptr + s[_VC][1]
            if (kh <= lo or hi <= kl) and (vh <= lo or hi <= vl) and (kh <= vl or vh <= kl
                                                                      or _apart(plan, _KC_VC, kc_ptr, vc_ptr)):
                ranges = ((lo, hi), (kl, kh), (vl, vh))
    if ranges is None:
        if not _views_apart(plan, views, qo, ko):
            return False
        s = plan.spans
        ranges = tuple((views[i] + s[i][0], views[i] + s[i][1]) for i in plan.written)
    for i, a, b in plan.read_spans:
        lo, hi = ptrs[i] + a, ptrs[i] + b
        for wl, wh in ranges:
            if lo < wh and wl < hi:
                return False
    return True


def _activations_apart(plan, q_ptr: int, k_ptr: int, v_ptr: int):
    """In place on Q (and K, with ``k_out=k``): ``(k_ptr - q_ptr, v_ptr - q_ptr, lo, hi)`` when no
    written one of q, k, v shares an element with another of them, where ``[q_ptr + lo, q_ptr + hi)`` is the byte
    range the three cover; else None. The answer for the last distances is kept in
    ``plan.in_place``."""
    for i, j in plan.pairs:
        if j <= _V and not _apart(plan, (i, j), (q_ptr, k_ptr, v_ptr)[i], (q_ptr, k_ptr, v_ptr)[j]):
            return None
    s = plan.spans
    dk, dv = k_ptr - q_ptr, v_ptr - q_ptr
    plan.in_place = ip = (dk, dv, min(s[_Q][0], dk + s[_K][0], dv + s[_V][0]),
                          max(s[_Q][1], dk + s[_K][1], dv + s[_V][1]))
    return ip


def _views_apart(plan, views, qo, ko) -> bool:
    """The exact overlap rules of :func:`check_args` on the data pointers ``views`` (indexed as
    ``plan.spans``): an OTHER output is its input's exact view (in place) or shares no element
    with it; every pair of ``plan.pairs`` shares no element."""
    if qo is OTHER and not (views[_QO] == views[_Q] and plan.same_layout[0]) \
            and not _apart(plan, (_QO, _Q), views[_QO], views[_Q]):
        return False
    if ko is OTHER and not (views[_KO] == views[_K] and plan.same_layout[1]) \
            and not _apart(plan, (_KO, _K), views[_KO], views[_K]):
        return False
    for i, j in plan.pairs:
        if not _apart(plan, (i, j), views[i], views[j]):
            return False
    return True


def _apart(plan, pair, pa: int, pb: int) -> bool:
    """:func:`_plan.apart` of two of the call's views; views of different element sizes whose
    byte ranges meet are not apart (``layout.overlap`` cannot decide them: the general call raises)."""
    sa, sb = plan.spans[pair[0]], plan.spans[pair[1]]
    if pa + sa[1] <= pb + sb[0] or pb + sb[1] <= pa + sa[0]:
        return True
    return pair in plan.geom and plans.apart(plan, pair, pa, sa, pb, sb)


def _fast_plan(q, k, v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, rotary_dim,
               weight_offset, sections, k_scale, v_scale, q_out, k_out, qo, ko):
    try:
        r = check_args(q, k, v, qw, kw, cs, positions, k_cache, v_cache, slot_mapping, eps, is_neox, rotary_dim,
                       weight_offset, sections, k_scale, v_scale, q_out, k_out, memory=False)[2]
    except (TypeError, ValueError):
        return None
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0 or (not q.is_cuda and not plans.FAST_ON_CPU) \
            or q.shape[0] * (q.shape[1] + k.shape[1]) > layout.ROW_LIMIT or not plans.cos_sin_ok(cs, r) \
            or not (plans.weight_ok(qw, q.shape[-1]) and plans.weight_ok(kw, q.shape[-1])):
        return None  # nothing to launch, pieces of tokens, or copies of a weight or cos/sin: the general call
    qt = q if qo is IN_PLACE else q_out
    kc, vc = as_blocks(k_cache), as_blocks(v_cache)
    base = _plan(q, k, v, qw, kw, cs, positions, qt, None if ko is NEW else k_out, kc, vc, slot_mapping, is_neox, r,
                 sections)
    plan = _CachePlan(base.launcher, base.entries, base.grid, base.tail, base.kwargs, base.device, base.config)
    plan = plans.bind_scalars(plan, eps, weight_offset)
    # every view's byte span; an absent output gets its input's (never used)
    views = (q, k, v, qt, k if ko is not OTHER else k_out, k_cache, v_cache)
    plan.spans = tuple(plans.span(t.shape, t.stride(), t.element_size()) for t in views)
    written = (_Q if qo is IN_PLACE else _QO,) + (() if ko is NEW else (_K if ko is IN_PLACE else _KO,)) + (_KC, _VC)
    plan.written = written
    plan.seen = set()
    pairs = []
    for i in written:
        for j in written + (_Q, _K, _V):
            if i != j and (i, j) not in ((_QO, _Q), (_KO, _K)) and (i, j) not in pairs and (j, i) not in pairs:
                pairs.append((i, j) if i < j else (j, i))
    plan.pairs = tuple(sorted(pairs))
    for i, j in plan.pairs + ((_QO, _Q), (_KO, _K)):
        a, b = views[i], views[j]
        if a.element_size() == b.element_size():  # else: byte ranges that meet decline (the general call raises)
            plans.set_pair(plan, (i, j), a.shape, a.stride(), b.shape, b.stride(), a.element_size())
    plan.same_layout = (qo is OTHER and q_out.stride() == q.stride(), ko is OTHER and k_out.stride() == k.stride())
    reads = ((_CS, cs), (_P, positions), (_SM, slot_mapping), (_WQ, qw), (_WK, kw), (_KSC, k_scale), (_VSC, v_scale))
    plan.read_spans = tuple((i,) + plans.span(t.shape, t.stride(), t.element_size()) for i, t in reads
                            if t is not None)
    return plan


def call(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps=1e-6,
         is_neox=True, rotary_dim=None, weight_offset=0.0, mrope_section=None, k_scale=None, v_scale=None, q_out=None,
         k_out=None):
    """Eager ``qk_norm_rope_cache`` without compile routing (the custom op's body): the fast
    call, else the general one."""
    r = fast(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps, is_neox,
             rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out)
    if r is None:
        r = general(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps,
                    is_neox, rotary_dim, weight_offset, mrope_section, k_scale, v_scale, q_out, k_out)
    return r


def general(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps=1e-6,
            is_neox=True, rotary_dim=None, weight_offset=0.0, mrope_section=None, k_scale=None, v_scale=None,
            q_out=None, k_out=None):
    """The general call: :func:`check_args`, then :func:`run`."""
    eps, weight_offset, r, sections = check_args(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache,
                                                 v_cache, slot_mapping, eps, is_neox, rotary_dim, weight_offset,
                                                 mrope_section, k_scale, v_scale, q_out, k_out)
    with torch.no_grad():
        return run(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps, is_neox,
                   r, weight_offset, sections, k_scale, v_scale, q_out, k_out)


def refuse_grad(*named) -> None:
    """The op is not differentiable: :func:`validate.not_differentiable` of its named tensor arguments."""
    validate.not_differentiable("qk_norm_rope_cache", *named)
