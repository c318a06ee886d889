"""The attention prologue in one launch: per-head RMSNorm of Q and K, rotary embedding
(RoPE or multimodal mRoPE), and the write of K and V into a paged KV cache (bf16/fp16/fp32
or FP8 with per-tensor scales).

Grid: two segments, as ``qk_norm_rope.py``: blocks ``[0, q_blocks)`` take ROWS Q rows each
(a row is one (token, head) pair of ``q [T, Hq, D]``), the rest take ROWS K rows *and the V
rows of the same (token, head)*, so a token's slot is read once for both caches. Per row,
every element is read once and written once (twice for K when ``k_out`` is given):

1. Q/K: load the row as its rotary pair halves ``x1``/``x2`` plus the pass-through tail,
   ``rstd = rsqrt(sum(x**2) / D + eps)`` in fp32, ``y = x * rstd * (w + w_offset)``, then
   pair ``j`` is rotated, ``o1 = y1 cos_j - y2 sin_j``, ``o2 = y2 cos_j + y1 sin_j``: the
   arithmetic of ``qk_norm_rope.norm_rope_rows`` (the same code as ``qk_rms_norm_rope``), so
   Q's bits equal ``qk_rms_norm_rope``'s. Pairs: NeoX ``(j, j + HALF)``, GPT-J ``(2j, 2j + 1)``.
2. cos/sin: ``cos_sin_cache[pos, j]`` / ``cos_sin_cache[pos, HALF + j]``. With ``MROPE``
   (Qwen2-VL's multimodal RoPE) the position of frequency ``j`` is row
   ``(j >= S0) + (j >= S01)`` of ``positions [3, T]`` (sections t, h, w over the
   ``HALF`` frequencies, ``S0 = t``, ``S01 = t + h``). Positions are clamped into
   ``[0, max_pos)``: never a read outside the cache.
3. Q is stored to ``YQ`` (in place or another tensor). K is stored to the cache at its
   token's slot ``s = slot_mapping[t]``: block ``s // block_size``, offset
   ``s % block_size``, head ``h`` (any strides) and to ``KO`` when ``HAS_KOUT``. V is read
   and stored to its cache at the same place. A slot outside ``[0, num_slots)`` (negative:
   padding, vLLM's convention; too large: a caller's bug the host cannot see without a
   device sync) skips the token's K and V cache stores: no out-of-bounds access.
4. FP8 caches (``K_FP8``/``V_FP8``: 1 e4m3fn, 2 e5m2): ``saturate(value / scale)`` with the
   IEEE division (``div_rn``), NaN kept, cast by ``rms_norm_quant.to_codes`` (the exact
   bit cast unless ``NATIVE_CAST``: the interpreter's and pre-sm_89 casts are wrong there,
   see ``rms_norm_quant.py``). ``KSC``/``VSC``: the 1-element fp32 dequantisation scales,
   read on the device (no sync).

Offsets: token/head/slot offsets int64; column offsets ``col * stride`` of the activations and caches int32
unless ``WIDE`` (the host sets it when a ``stride * width`` passes int32); those of the weights and the cos/sin
cache always int32 (the host passes contiguous copies where they would not do).

Launcher: ``ops/qk_norm_rope_cache.py``; configs: the dispatcher's ``qk_rms_norm`` pick
(ROWS, num_warps, persistent); tests: ``tests/kernels/test_qk_norm_rope_cache.py``.
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait
from .rms_norm_quant import code_cols, to_codes
from .qk_norm_rope import col_offset, norm_rope_rows, rope_columns
from .rows import split_rows


@triton.jit
def _cast(v, sc, out_ty: tl.constexpr, FP8: tl.constexpr, QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr):
    """fp32 ``v`` in the store type: a rounding, or FP8 ``saturate(v / sc)`` (``FP8`` != 0)."""
    if FP8 != 0:
        return to_codes(tl.math.div_rn(v, tl.zeros_like(v) + sc), out_ty, FP8, NATIVE_CAST, QMAX)
    else:
        return v.to(out_ty)


@triton.jit
def _fp8_cols(c, X, FP8: tl.constexpr):
    """Columns ``c`` of an FP8 store (``FP8`` != 0) seen by the compiler as at most one 16-byte vector of the
    activations ``X`` (:func:`rms_norm_quant.code_cols`): an 8-bit store left to ask for 16 codes per thread made
    Triton lay the whole row tile out that way at some configs, the sum of squares included, so a row's bits
    changed with the config, i.e. with the token count (sm_90 TTGIR). Other stores: ``c``."""
    if FP8 != 0:
        c = code_cols(c, X)
    return c


@triton.jit
def _store_row(o1, o2, ot, X, Y, y_row, ysd, rows_ok, D, j, j_ok, HALF, c, c_ok, tc, t_ok, sc,
               FP8: tl.constexpr, QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr, IS_NEOX: tl.constexpr,
               HAS_TAIL: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, WIDE: tl.constexpr,
               WHOLE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store the rotated pair halves ``o1``/``o2`` and the tail ``ot`` of rows ``rows_ok``
    (row pointers ``y_row``, element stride ``ysd``) in ``Y``'s type; ``WHOLE``: the whole rows ``o1``.
    ``X``: the activations (their dtype caps an FP8 store's vectors, :func:`_fp8_cols`)."""
    ty = Y.dtype.element_ty
    j = _fp8_cols(j, X, FP8)
    c = _fp8_cols(c, X, FP8)
    tc = _fp8_cols(tc, X, FP8)
    if WHOLE:
        cd = _fp8_cols(tl.arange(0, BLOCK_D), X, FP8)
        tl.store(y_row[:, None] + (col_offset(cd, WIDE) * ysd)[None, :], _cast(o1, sc, ty, FP8, QMAX, NATIVE_CAST),
                 mask=rows_ok[:, None] & (cd < D)[None, :])
    elif IS_NEOX:
        pm = rows_ok[:, None] & j_ok[None, :]
        tl.store(y_row[:, None] + (col_offset(j, WIDE) * ysd)[None, :], _cast(o1, sc, ty, FP8, QMAX, NATIVE_CAST),
                 mask=pm)
        tl.store(y_row[:, None] + (col_offset(j + HALF, WIDE) * ysd)[None, :],
                 _cast(o2, sc, ty, FP8, QMAX, NATIVE_CAST), mask=pm)
    else:
        o = tl.reshape(tl.join(o1, o2), [ROWS, 2 * BLOCK_H])
        tl.store(y_row[:, None] + (col_offset(c, WIDE) * ysd)[None, :], _cast(o, sc, ty, FP8, QMAX, NATIVE_CAST),
                 mask=rows_ok[:, None] & c_ok[None, :])
    if HAS_TAIL and not WHOLE:
        tl.store(y_row[:, None] + (col_offset(tc, WIDE) * ysd)[None, :], _cast(ot, sc, ty, FP8, QMAX, NATIVE_CAST),
                 mask=rows_ok[:, None] & t_ok[None, :])


@triton.jit
def _store_k(o1, o2, ot, XK, KC, kc_row, kcd, KO, t, h, kot, koh, kod, to_cache, to_kout, D, j, j_ok, HALF, c, c_ok, tc,
             t_ok, ksc,
             K_FP8: tl.constexpr, K_QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr, IS_NEOX: tl.constexpr,
             HAS_TAIL: tl.constexpr, HAS_KOUT: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
             WIDE: tl.constexpr, WHOLE: tl.constexpr, BLOCK_D: tl.constexpr):
    """K's rows (activations ``XK``): into the cache (rows ``to_cache``, FP8 with ``ksc`` when ``K_FP8``) and, with
    ``HAS_KOUT``, into ``KO`` (rows ``to_kout``; row ``t, h`` at ``t * kot + h * koh``)."""
    _store_row(o1, o2, ot, XK, KC, kc_row, kcd, to_cache, D, j, j_ok, HALF, c, c_ok, tc, t_ok, ksc, K_FP8, K_QMAX,
               NATIVE_CAST, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D)
    if HAS_KOUT:
        _store_row(o1, o2, ot, XK, KO, KO + t * kot + h * koh, kod, to_kout, D, j, j_ok, HALF, c, c_ok, tc, t_ok, 1.0,
                   0, 1.0, NATIVE_CAST, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D)


@triton.jit
def _prologue_block(block, q_blocks, D, DV, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1,
                    max_pos, P, ps, ps3, S0, S01, XQ, YQ, WQ, XK, WK, KC, KO, XV, VC, SM, KSC, VSC, q_rows, qH, qxt,
                    qxh, qxd, qyt, qyh, qyd, qws, k_rows, kH, kxt, kxh, kxd, kws, kot, koh, kod, vxt, vxh, vxd, kcb,
                    kco, kch, kcd, vcb, vco, vch, vcd, block_size, num_slots, sms, HAS_WEIGHT: tl.constexpr,
                    IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr, MROPE: tl.constexpr, HAS_KOUT: tl.constexpr,
                    K_FP8: tl.constexpr, V_FP8: tl.constexpr, K_QMAX: tl.constexpr, V_QMAX: tl.constexpr,
                    NATIVE_CAST: tl.constexpr, WIDE: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, WHOLE: tl.constexpr, BLOCK_D: tl.constexpr,
                    PARTNER_LOAD: tl.constexpr):
    j, j_ok, c, c_ok, tc, t_ok = rope_columns(D, HALF, BLOCK_H, BLOCK_T)
    if block < q_blocks:
        rows = block * ROWS + tl.arange(0, ROWS)
        row_ok = rows < q_rows
        t, h = split_rows(rows, qH)
        t = t.to(tl.int64)
        h = h.to(tl.int64)
        xq_row = XQ + t * qxt + h * qxh
        o1, o2, ot = norm_rope_rows(t, xq_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1,
                                    max_pos, P, ps, ps3, S0, S01, WQ, qws, qxd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT,
                                    IS_NEOX, HAS_TAIL, MROPE, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D, PARTNER_LOAD)
        _store_row(o1, o2, ot, XQ, YQ, YQ + t * qyt + h * qyh, qyd, row_ok, D, j, j_ok, HALF, c, c_ok, tc,
                   t_ok, 1.0, 0, 1.0, NATIVE_CAST, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D)
    else:
        rows = (block - q_blocks) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < k_rows
        t, h = split_rows(rows, kH)
        t = t.to(tl.int64)
        h = h.to(tl.int64)
        # The token's slot; outside [0, num_slots): no cache store for this token.
        slot = tl.load(SM + t * sms, mask=row_ok, other=-1).to(tl.int64)
        in_cache = row_ok & (slot >= 0) & (slot < num_slots)
        slot = tl.where(in_cache, slot, 0)
        blk = slot // block_size
        off = slot % block_size
        xk_row = XK + t * kxt + h * kxh
        o1, o2, ot = norm_rope_rows(t, xk_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1,
                                    max_pos, P, ps, ps3, S0, S01, WK, kws, kxd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT,
                                    IS_NEOX, HAS_TAIL, MROPE, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D, PARTNER_LOAD)
        ksc = 1.0
        if K_FP8 != 0:
            ksc = tl.load(KSC).to(tl.float32)
        _store_k(o1, o2, ot, XK, KC, KC + blk * kcb + off * kco + h * kch, kcd, KO, t, h, kot, koh, kod, in_cache,
                 row_ok, D, j, j_ok, HALF, c, c_ok, tc, t_ok, ksc, K_FP8, K_QMAX, NATIVE_CAST, IS_NEOX, HAS_TAIL,
                 HAS_KOUT, ROWS, BLOCK_H, WIDE, WHOLE, BLOCK_D)
        # V: copied (FP8: quantised) into its cache at the same slot.
        cv = tl.arange(0, BLOCK_V)
        vm = in_cache[:, None] & (cv < DV)[None, :]
        vv = tl.load((XV + t * vxt + h * vxh)[:, None] + (col_offset(cv, WIDE) * vxd)[None, :], mask=vm, other=0.0)
        cvs = col_offset(_fp8_cols(cv, XV, V_FP8), WIDE)
        vdst = (VC + blk * vcb + off * vco + h * vch)[:, None] + (cvs * vcd)[None, :]
        if V_FP8 != 0:
            vsc = tl.load(VSC).to(tl.float32)
            tl.store(vdst, _cast(vv.to(tl.float32), vsc, VC.dtype.element_ty, V_FP8, V_QMAX, NATIVE_CAST), mask=vm)
        else:
            tl.store(vdst, vv.to(VC.dtype.element_ty), mask=vm)


@triton.jit
def qk_norm_rope_cache_kernel(CS, P, XQ, YQ, WQ, XK, WK, KC, KO, XV, VC, SM, KSC, VSC, eps, eps_tiny, w_offset,
                              D, DV, HALF, css0, css1, max_pos, ps, ps3, S0, S01,
                              q_rows, qH, qxt, qxh, qxd, qyt, qyh, qyd, qws,
                              k_rows, kH, kxt, kxh, kxd, kws, kot, koh, kod, vxt, vxh, vxd,
                              kcb, kco, kch, kcd, vcb, vco, vch, vcd, block_size, num_slots, sms,
                              HAS_WEIGHT: tl.constexpr, IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr,
                              MROPE: tl.constexpr, HAS_KOUT: tl.constexpr, K_FP8: tl.constexpr, V_FP8: tl.constexpr,
                              K_QMAX: tl.constexpr, V_QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr,
                              WIDE: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
                              BLOCK_V: tl.constexpr, WHOLE: tl.constexpr, BLOCK_D: tl.constexpr,
                              PARTNER_LOAD: tl.constexpr, PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                          LO_SUMS: tl.constexpr = False):
    """Q blocks then K+V blocks of ROWS (token, head) rows in one grid; PERSISTENT loops
    over all blocks with a grid stride.

    Pointers: ``CS`` cos/sin cache ``[max_pos, 2*HALF]`` (strides ``css0``, ``css1``);
    ``P`` positions ``[T]`` (stride ``ps``) or, with ``MROPE``, ``[3, T]`` (strides ``ps3``,
    ``ps``); ``XQ``/``YQ`` Q in/out ``[T, qH, D]``; ``WQ``/``WK`` weights ``[D]``; ``XK`` K
    ``[T, kH, D]``; ``KO`` optional K out (``HAS_KOUT``); ``XV`` V ``[T, kH, DV]``;
    ``KC``/``VC`` caches ``[num_blocks, block_size, kH, D / DV]`` (strides block, offset,
    head, element: ``kcb, kco, kch, kcd`` / ``vcb, vco, vch, vcd``); ``SM`` slot_mapping
    ``[T]`` (stride ``sms``); ``KSC``/``VSC`` fp32 dequantisation scales (FP8 caches).
    ``D``: head_dim; ``DV``: V's head dim (``BLOCK_V = next_pow2(DV)``); ``HALF``:
    rotary_dim // 2 (``BLOCK_H = next_pow2(HALF)``); the tail ``[2*HALF, D)``
    (``HAS_TAIL``, ``BLOCK_T``) is only normalised. ``S0``/``S01``: mRoPE section bounds. ``WHOLE``,
    ``BLOCK_D``, ``PARTNER_LOAD``: the row form (``qk_norm_rope.norm_rope_whole``).
    """
    pdl_wait(USE_PDL)
    q_blocks = tl.cdiv(q_rows, ROWS)
    if PERSISTENT:
        n_blocks = q_blocks + tl.cdiv(k_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            _prologue_block(block, q_blocks, D, DV, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P,
                            ps, ps3, S0, S01, XQ, YQ, WQ, XK, WK, KC, KO, XV, VC, SM, KSC, VSC, q_rows, qH, qxt, qxh,
                            qxd, qyt, qyh, qyd, qws, k_rows, kH, kxt, kxh, kxd, kws, kot, koh, kod, vxt, vxh, vxd, kcb,
                            kco, kch, kcd, vcb, vco, vch, vcd, block_size, num_slots, sms, HAS_WEIGHT, IS_NEOX,
                            HAS_TAIL, MROPE, HAS_KOUT, K_FP8, V_FP8, K_QMAX, V_QMAX, NATIVE_CAST, WIDE, ROWS, BLOCK_H,
                            BLOCK_T, BLOCK_V, WHOLE, BLOCK_D, PARTNER_LOAD)
    else:
        _prologue_block(tl.program_id(0), q_blocks, D, DV, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1,
                        max_pos, P, ps, ps3, S0, S01, XQ, YQ, WQ, XK, WK, KC, KO, XV, VC, SM, KSC, VSC, q_rows, qH, qxt,
                        qxh, qxd, qyt, qyh, qyd, qws, k_rows, kH, kxt, kxh, kxd, kws, kot, koh, kod, vxt, vxh, vxd, kcb,
                        kco, kch, kcd, vcb, vco, vch, vcd, block_size, num_slots, sms, HAS_WEIGHT, IS_NEOX, HAS_TAIL,
                        MROPE, HAS_KOUT, K_FP8, V_FP8, K_QMAX, V_QMAX, NATIVE_CAST, WIDE, ROWS, BLOCK_H, BLOCK_T,
                        BLOCK_V, WHOLE, BLOCK_D, PARTNER_LOAD)
    pdl_launch_dependents(USE_PDL)
