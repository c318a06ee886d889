"""Host side of ``qk_norm_rope_cache`` (kernel: ``kernels/qk_norm_rope_cache.py``): checks,
the PyTorch path, plans, launch.

Public function and documentation: :func:`qknorm.qk_norm_rope_cache` (``functional.py``).

Slots: ``slot_mapping[t] < 0`` skips token ``t``'s cache writes (padding, as vLLM). A slot
``>= num_slots`` is a ValueError for CPU tensors (checked before anything is written); CUDA
slots are not checked (that would need a device sync): the kernel skips such tokens, as
negative ones, so nothing outside the caches is written. Positions: as ``qk_rms_norm_rope``
(CPU: checked; CUDA: clamped into the cos/sin cache by the kernel).

Not yet here: the cached-plan fast call of the other ops (every call takes the general
call, whose plans are cached; see ``_plan.py``).
"""
from __future__ import annotations

import torch

from .. import backend, launch, layout
from .. import validate
from ..dispatch import next_pow2
from ..reference_rope import qk_rms_norm_rope_ref, rope_ref
from ..reference import rms_norm_ref
from . import _plan as plans
from .rms_norm_quant import QMAX, native_cast

OP = "qk_norm_rope_cache"
CONFIG_OP = "qk_rms_norm"  # the dispatcher's pick for QK norm of the same rows (ROWS, num_warps)
MAX_HEAD_DIM = 1024  # whole head in registers; no chunked form
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
    if not isinstance(cache, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cache).__name__}")
    validate.dense(name, cache)
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
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a 1-element float32 torch.Tensor or None, got {type(scale).__name__}")
    validate.dense(name, scale)
    if scale.dtype != torch.float32 or scale.numel() != 1:
        raise TypeError(f"{name} must be a 1-element float32 tensor, got {validate.dtype_name(scale.dtype)} with "
                        f"{scale.numel()} elements")
    validate.same_device(name, scale, "q", q)


def _slots(slot_mapping, t: int, q) -> None:
    if not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(f"slot_mapping must be a torch.Tensor, got {type(slot_mapping).__name__}")
    validate.dense("slot_mapping", slot_mapping)
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"slot_mapping must be int32 or int64, got {validate.dtype_name(slot_mapping.dtype)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != t:
        raise ValueError(f"slot_mapping must have shape ({t},) (one slot per token), got {tuple(slot_mapping.shape)}")
    validate.same_device("slot_mapping", slot_mapping, "q", q)


def slots_in_range(slot_mapping, num_slots: int) -> None:
    """CPU slots (free to read) must be below ``num_slots``; negative ones mean "skip". CUDA
    slots are not read (no sync): the kernel skips out-of-range ones."""
    if slot_mapping.numel() == 0 or slot_mapping.is_cuda:
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
    d = validate.qk_pair(q, k, q_weight, k_weight, three_d=True)
    t, hkv = q.shape[0], k.shape[1]
    if k.shape[0] != t:
        raise ValueError(f"q and k must have the same number of tokens (dim 0): q has {t}, k has {k.shape[0]}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is not supported by qk_norm_rope_cache (at most {MAX_HEAD_DIM}: the whole "
                         f"head is kept in registers)")
    validate.activation("v", v)
    if v.dtype != q.dtype:
        raise TypeError(f"v must have q's dtype ({validate.dtype_name(q.dtype)}), got {validate.dtype_name(v.dtype)}")
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
                                  torch.tensor(sections, device=positions.device))  # [half]
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
    for cache, vals, scale in ((kc, kr, k_scale), (vc, v, v_scale)):
        raw = _raw(cache)
        new = _raw(_to_cache(vals, cache, scale))[src]
        new = torch.where(none, raw[0, 0], new)  # no token kept: slot 0 gets its own content back
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
    cfg = plans.choose(CONFIG_OP, q.dtype, d, q_rows + k_rows, q.device, None)
    half, tail = r // 2, d - r
    mrope = sections is not None
    s0, s01 = (sections[0], sections[0] + sections[1]) if mrope else (0, 0)
    kfp8, vfp8 = _FP8_CODE.get(kc.dtype, 0), _FP8_CODE.get(vc.dtype, 0)
    ko_strides = k_out.stride() if k_out is not None else (0, 0, 0)
    wide = any(abs(st) * w > plans.INT32_MAX for st, w in (
        (q.stride(2), d), (q_out.stride(2), d), (k.stride(2), d), (ko_strides[2], d), (v.stride(2), dv),
        (kc.stride(3), d), (vc.stride(3), dv), (cs.stride(1), r),
        (qw.stride(0) if qw is not None else 0, d), (kw.stride(0) if kw is not None else 0, d)))
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
        BLOCK_H=next_pow2(half), BLOCK_T=next_pow2(tail) if tail else 1, BLOCK_V=next_pow2(max(dv, 1)))


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
    launch.run_plan(plan, launch.align_bits(*ptrs), ptrs + (*plans.eps_pair(eps), weight_offset), tensors)


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
    return q_out


def call(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps=1e-6,
         is_neox=True, rotary_dim=None, weight_offset=0.0, mrope_section=None, k_scale=None, v_scale=None, q_out=None,
         k_out=None):
    """Eager ``qk_norm_rope_cache`` without compile routing (the custom op's body)."""
    eps, weight_offset, r, sections = check_args(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache,
                                                 v_cache, slot_mapping, eps, is_neox, rotary_dim, weight_offset,
                                                 mrope_section, k_scale, v_scale, q_out, k_out)
    with torch.no_grad():
        return run(q, k, v, q_weight, k_weight, cos_sin_cache, positions, k_cache, v_cache, slot_mapping, eps, is_neox,
                   r, weight_offset, sections, k_scale, v_scale, q_out, k_out)


def refuse_grad(*ts) -> None:
    """The op is not differentiable (it writes a KV cache): under grad mode no argument may
    require grad (a gradient would silently stop here)."""
    if torch.is_grad_enabled():
        for name, t in ts:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise ValueError(f"{name} requires grad, but qk_norm_rope_cache is not differentiable; call it "
                                 "under torch.no_grad() / torch.inference_mode(), or detach it")
