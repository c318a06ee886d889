"""Per-head RMSNorm of Q and K followed by rotary embedding, in one launch.

Same grid as ``qk_norm.py`` ("two segments in one grid"): blocks ``[0, q_blocks)`` take
Q rows, the rest K rows; a row is one (token, head) pair of a ``[T, H, D]`` tensor with
any strides. Per row, every element is read once and written once:

1. load the row (as its rotary pair halves ``x1``, ``x2`` plus the pass-through tail),
   upcast to fp32, ``rstd = rsqrt(sum(x**2) / D + eps)`` over the whole row (rows out of
   fp32's range: ``rows.range_factors``);
2. ``y = x * rstd * (w + w_offset)`` in fp32;
3. rotate the first ``R = 2 * HALF`` elements by the angle of the row's position:
   ``o1 = y1 * cos - y2 * sin``, ``o2 = y2 * cos + y1 * sin`` with ``cos``/``sin`` read
   from ``cos_sin_cache[pos, :HALF]`` / ``cos_sin_cache[pos, HALF:R]``; the tail
   ``R <= c < D`` is only normalised;
4. one rounding to the output dtype, one store.

Pairs: NeoX style (``IS_NEOX``) pairs element ``j`` with ``j + HALF`` (rotate halves; two
contiguous half-row loads); GPT-J style pairs ``2j`` with ``2j + 1`` (one contiguous load
of the rotary part, split into even/odd lanes with ``reshape`` + ``split``, joined back
before the store). In both styles pair ``j`` uses ``cos[j]``/``sin[j]``.

Two row forms (``WHOLE``; the host picks one per (head_dim, rotary_dim): ``dispatch.rope_row_form``):
the *split* form above loads the rotary halves and the tail as separate tiles (full rotary:
no tail); the *whole-row* form (:func:`norm_rope_whole`, partial rotary) loads each row as one
``[ROWS, next_pow2(D)]`` tile and takes each NeoX element's partner ``c +- HALF`` by reading it
again (``PARTNER_LOAD``, an L1 hit) or by ``tl.gather``. With rotary 64 of 256 (Qwen3-Next) the
split form's narrow tiles moved 27-41% of the copy bandwidth; the whole row moves 16-byte vectors.

Positions are clamped into ``[0, max_pos - 1]`` before the cache is read: an
out-of-range position never reads outside the cache (it rotates by the nearest valid
angle instead). The launcher checks the range on CPU tensors only (no device sync).

Launcher: ``ops/qk_norm_rope.py``; dispatcher entry: ``dispatch.choose_config("qk_rms_norm", ...)``
(ROWS, num_warps); tests: ``tests/kernels/test_qk_norm_rope.py`` (numerics),
``tests/ops/test_qk_norm_rope.py`` (argument checks); bench: ``qknorm bench --preset rope`` (op ``"rope"`` in
``bench/cases.py``).
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait
from .rows import normalized, range_factors, range_sums, row_factors, split_rows


@triton.jit
def col_offset(c, WIDE: tl.constexpr):
    """Column index ``c`` as the offset type: int64 when ``WIDE``."""
    if WIDE:
        c = c.to(tl.int64)
    return c


@triton.jit
def norm_rope_rows(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1, max_pos,
                   P, ps, ps3, S0, S01, W, ws, xsd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT: tl.constexpr,
                   IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr, MROPE: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK_H: tl.constexpr, WIDE: tl.constexpr, WHOLE: tl.constexpr = False, BLOCK_D: tl.constexpr = 1,
                   PARTNER_LOAD: tl.constexpr = False):
    """fp32 ``(o1, o2, ot)`` of the rows at ``x_row`` (tokens ``t``): normalised (rows out of fp32's
    range too: ``rows.range_factors``), weighted and rotated pair halves and the weighted tail
    (steps 1-3 above); nothing stored. ``MROPE``: the position of frequency ``j`` is row ``(j >= S0) + (j >= S01)``
    of ``P [3, T]`` (row stride ``ps3``; Qwen2-VL's multimodal RoPE). ``WIDE``: int64 column
    offsets. ``WHOLE``: the whole-row form (:func:`norm_rope_whole`): ``o1`` is then the rows'
    ``[ROWS, BLOCK_D]`` result and ``o2``/``ot`` are unused."""
    if WHOLE:
        o1 = norm_rope_whole(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P,
                             ps, ps3, S0, S01, W, ws, xsd, HAS_WEIGHT, IS_NEOX, MROPE, ROWS, BLOCK_D, WIDE,
                             PARTNER_LOAD)
        o2 = o1
        ot = o1
    else:
        o1, o2, ot = norm_rope_split(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1,
                                     max_pos, P, ps, ps3, S0, S01, W, ws, xsd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT,
                                     IS_NEOX, HAS_TAIL, MROPE, ROWS, BLOCK_H, WIDE)
    return o1, o2, ot


@triton.jit
def norm_rope_split(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1, max_pos,
                    P, ps, ps3, S0, S01, W, ws, xsd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT: tl.constexpr,
                    IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr, MROPE: tl.constexpr, ROWS: tl.constexpr,
                    BLOCK_H: tl.constexpr, WIDE: tl.constexpr):
    """The split form of :func:`norm_rope_rows`: the rotary halves and the tail as separate tiles."""
    R = 2 * HALF
    pm = row_ok[:, None] & j_ok[None, :]
    cos, sin = cos_sin(t, row_ok, j, j_ok, CS, css0, css1, max_pos, HALF, P, ps, ps3, S0, S01, MROPE)

    w1 = 1.0  # no weight: never used
    w2 = 1.0
    if HAS_WEIGHT:
        if IS_NEOX:
            w1 = tl.load(W + j * ws, mask=j_ok, other=0.0).to(tl.float32) + w_offset
            w2 = tl.load(W + (j + HALF) * ws, mask=j_ok, other=0.0).to(tl.float32) + w_offset
        else:
            cw = tl.arange(0, 2 * BLOCK_H)
            wr = tl.load(W + cw * ws, mask=cw < R, other=0.0).to(tl.float32) + w_offset
            w1, w2 = tl.split(tl.reshape(wr, [BLOCK_H, 2]))

    if IS_NEOX:
        x1 = tl.load(x_row[:, None] + (col_offset(j, WIDE) * xsd)[None, :], mask=pm, other=0.0).to(tl.float32)
        x2 = tl.load(x_row[:, None] + (col_offset(j + HALF, WIDE) * xsd)[None, :], mask=pm, other=0.0).to(tl.float32)
    else:
        xr = tl.load(x_row[:, None] + (col_offset(c, WIDE) * xsd)[None, :], mask=row_ok[:, None] & c_ok[None, :],
                     other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(xr, [ROWS, BLOCK_H, 2]))
    ss = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)
    ssh, ssl = range_sums(x1, LO_SUMS)
    ssh2, ssl2 = range_sums(x2, LO_SUMS)
    ssh += ssh2
    ssl += ssl2
    xt = x1  # no tail: never used
    if HAS_TAIL:
        xt = tl.load(x_row[:, None] + (col_offset(tc, WIDE) * xsd)[None, :], mask=row_ok[:, None] & t_ok[None, :],
                     other=0.0).to(tl.float32)
        ss += tl.sum(xt * xt, axis=1)
        ssh3, ssl3 = range_sums(xt, LO_SUMS)
        ssh += ssh3
        ssl += ssl3
    p, q = range_factors(ss, ssh, ssl, D, eps, eps_tiny, LO_SUMS)
    y1 = normalized(x1, p, q)
    y2 = normalized(x2, p, q)
    yt = normalized(xt, p, q)
    if HAS_WEIGHT:
        y1 = y1 * w1[None, :]
        y2 = y2 * w2[None, :]
    o1 = y1 * cos - y2 * sin
    o2 = y2 * cos + y1 * sin
    if HAS_TAIL:
        if HAS_WEIGHT:
            wt = tl.load(W + tc * ws, mask=t_ok, other=0.0).to(tl.float32) + w_offset
            yt = yt * wt[None, :]
    return o1, o2, yt


@triton.jit
def cos_sin(t, row_ok, j, rot, CS, css0, css1, max_pos, HALF, P, ps, ps3, S0, S01, MROPE: tl.constexpr):
    """fp32 ``(cos, sin)`` ``[ROWS, len(j)]`` of frequency ``j`` at each row's position (clamped into the
    cache; with ``MROPE`` the position row of ``j``'s section); 1 and 0 where ``rot`` is false."""
    pm = row_ok[:, None] & rot[None, :]
    if MROPE:
        sec = (j >= S0).to(tl.int64) + (j >= S01).to(tl.int64)
        pos = tl.load(P + t[:, None] * ps + (sec * ps3)[None, :], mask=pm, other=0)
        cs_at = CS + tl.minimum(tl.maximum(pos, 0), max_pos - 1).to(tl.int64) * css0
    else:
        pos = tl.load(P + t * ps, mask=row_ok, other=0)
        cs_at = (CS + tl.minimum(tl.maximum(pos, 0), max_pos - 1).to(tl.int64) * css0)[:, None]
    cos = tl.load(cs_at + (j * css1)[None, :], mask=pm, other=1.0).to(tl.float32)
    sin = tl.load(cs_at + ((j + HALF) * css1)[None, :], mask=pm, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def norm_rope_whole(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1, max_pos,
                    P, ps, ps3, S0, S01, W, ws, xsd, HAS_WEIGHT: tl.constexpr, IS_NEOX: tl.constexpr,
                    MROPE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, WIDE: tl.constexpr,
                    PARTNER_LOAD: tl.constexpr):
    """fp32 ``o`` of the rows at ``x_row``: the whole rows ``[ROWS, BLOCK_D]`` (one contiguous
    load, 16-byte vectors where the strides allow) normalised, weighted, their first ``2 * HALF``
    elements rotated. For partial rotary this replaces the three
    narrow tiles (two rotary halves and the tail) of the split form. The rotation partner of each
    element: GPT-J, the neighbour (``reshape`` + ``split``); NeoX, element ``c +- HALF``, taken from
    the normalised tile by ``tl.gather`` (warp shuffles where the row lies in one warp) or, with
    ``PARTNER_LOAD``, read again (an L1 hit) and normalised the same way. Same arithmetic per
    element as the split form."""
    c = tl.arange(0, BLOCK_D)
    c_ok = c < D
    m = row_ok[:, None] & c_ok[None, :]
    x = tl.load(x_row[:, None] + (col_offset(c, WIDE) * xsd)[None, :], mask=m, other=0.0).to(tl.float32)
    p, q, _ = row_factors(x, eps, eps_tiny, D, LO_SUMS)
    y = normalized(x, p, q)
    if HAS_WEIGHT:
        w = tl.load(W + c * ws, mask=c_ok, other=0.0).to(tl.float32) + w_offset
        y = y * w[None, :]
    R = 2 * HALF
    if IS_NEOX:
        rot = c < R
        partner = tl.where(c < HALF, c + HALF, tl.where(rot, c - HALF, c))
        if PARTNER_LOAD:
            xp = tl.load(x_row[:, None] + (col_offset(partner, WIDE) * xsd)[None, :], mask=row_ok[:, None] & rot[None, :],
                         other=0.0).to(tl.float32)
            yp = normalized(xp, p, q)
            if HAS_WEIGHT:
                yp = yp * (tl.load(W + partner * ws, mask=rot, other=0.0).to(tl.float32) + w_offset)[None, :]
        else:
            yp = tl.gather(y, tl.broadcast_to(partner[None, :], (ROWS, BLOCK_D)), axis=1)
        cos, sin = cos_sin(t, row_ok, tl.where(c < HALF, c, c - HALF), rot, CS, css0, css1, max_pos, HALF, P, ps, ps3,
                           S0, S01, MROPE)
        # o1 = y1 * cos - y2 * sin, o2 = y2 * cos + y1 * sin (the split form's products, the sign exact);
        # the tail keeps y itself (a product with cos = 1, sin = 0 would turn inf into NaN)
        o = tl.where(rot[None, :], y * cos + tl.where((c < HALF)[None, :], -yp, yp) * sin, y)
    else:
        ye, yo = tl.split(tl.reshape(y, [ROWS, BLOCK_D // 2, 2]))
        j = tl.arange(0, BLOCK_D // 2)
        cos, sin = cos_sin(t, row_ok, j, j < HALF, CS, css0, css1, max_pos, HALF, P, ps, ps3, S0, S01, MROPE)
        r2 = (j < HALF)[None, :]
        o = tl.reshape(tl.join(tl.where(r2, ye * cos - yo * sin, ye), tl.where(r2, yo * cos + ye * sin, yo)),
                       [ROWS, BLOCK_D])
    return o


@triton.jit
def rope_columns(D, HALF, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr):
    """The column ranges of a row and their masks: ``j`` the pair index (``[0, HALF)``), ``c`` the
    rotary part as one range (GPT-J, ``[0, 2*HALF)``), ``tc`` the pass-through tail
    (``[2*HALF, D)``)."""
    j = tl.arange(0, BLOCK_H)
    c = tl.arange(0, 2 * BLOCK_H)
    tc = 2 * HALF + tl.arange(0, BLOCK_T)
    return j, j < HALF, c, c < 2 * HALF, tc, tc < D


@triton.jit
def _rope_rows(block, D, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1, max_pos, P, ps, X, Y, W,
               n_rows, H, xst, xsh, xsd, yst, ysh, ysd, ws, HAS_WEIGHT: tl.constexpr, IS_NEOX: tl.constexpr,
               HAS_TAIL: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
               WHOLE: tl.constexpr, BLOCK_D: tl.constexpr, PARTNER_LOAD: tl.constexpr):
    """Norm + RoPE of rows ``block*ROWS ... +ROWS`` of X (``[T, H, D]``) into Y."""
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    t, h = split_rows(rows, H)
    t = t.to(tl.int64)
    h = h.to(tl.int64)
    j, j_ok, c, c_ok, tc, t_ok = rope_columns(D, HALF, BLOCK_H, BLOCK_T)
    x_row = X + t * xst + h * xsh
    o1, o2, ot = norm_rope_rows(t, x_row, row_ok, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P,
                                ps, 0, 0, 0, W, ws, xsd, j, j_ok, c, c_ok, tc, t_ok, HAS_WEIGHT, IS_NEOX, HAS_TAIL,
                                False, ROWS, BLOCK_H, False, WHOLE, BLOCK_D, PARTNER_LOAD)
    _store_rope(o1, o2, ot, Y + t * yst + h * ysh, ysd, row_ok, D, j, j_ok, HALF, c, c_ok, tc, t_ok,
                IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, WHOLE, BLOCK_D)


@triton.jit
def _store_rope(o1, o2, ot, y_row, ysd, rows, D, j, j_ok, HALF, c, c_ok, tc, t_ok, IS_NEOX: tl.constexpr,
                HAS_TAIL: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, WHOLE: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """Store the rotated halves ``o1``/``o2`` and the tail ``ot`` of the rows ``rows`` (``WHOLE``: the
    whole rows ``o1``)."""
    ty = y_row.dtype.element_ty
    if WHOLE:
        cd = tl.arange(0, BLOCK_D)
        tl.store(y_row[:, None] + (cd * ysd)[None, :], o1.to(ty), mask=rows[:, None] & (cd < D)[None, :])
    elif IS_NEOX:
        pm = rows[:, None] & j_ok[None, :]
        tl.store(y_row[:, None] + (j * ysd)[None, :], o1.to(ty), mask=pm)
        tl.store(y_row[:, None] + ((j + HALF) * ysd)[None, :], o2.to(ty), mask=pm)
    else:
        o = tl.reshape(tl.join(o1, o2), [ROWS, 2 * BLOCK_H])
        tl.store(y_row[:, None] + (c * ysd)[None, :], o.to(ty), mask=rows[:, None] & c_ok[None, :])
    if HAS_TAIL and not WHOLE:
        tl.store(y_row[:, None] + (tc * ysd)[None, :], ot.to(ty), mask=rows[:, None] & t_ok[None, :])


@triton.jit
def _qk_rope_block(block, q_blocks, D, HALF, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, CS, css0, css1, max_pos, P,
                   ps, XQ, YQ, WQ, q_rows, qH, qxt, qxh, qxd, qyt, qyh, qyd, qws, XK, YK, WK, k_rows, kH, kxt, kxh, kxd,
                   kyt, kyh, kyd, kws, HAS_WEIGHT: tl.constexpr, IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, WHOLE: tl.constexpr,
                   BLOCK_D: tl.constexpr, PARTNER_LOAD: tl.constexpr):
    if block < q_blocks:
        _rope_rows(block, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P, ps, XQ, YQ, WQ, q_rows,
                   qH, qxt, qxh, qxd, qyt, qyh, qyd, qws, HAS_WEIGHT, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, BLOCK_T, WHOLE,
                   BLOCK_D, PARTNER_LOAD)
    else:
        _rope_rows(block - q_blocks, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P, ps, XK, YK,
                   WK, k_rows, kH, kxt, kxh, kxd, kyt, kyh, kyd, kws, HAS_WEIGHT, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H,
                   BLOCK_T, WHOLE, BLOCK_D, PARTNER_LOAD)


@triton.jit
def qk_rms_norm_rope_kernel(CS, P, XQ, YQ, WQ, XK, YK, WK, eps, eps_tiny, w_offset,
                            D, HALF, css0, css1, max_pos, ps,
                            q_rows, qH, qxt, qxh, qxd, qyt, qyh, qyd, qws,
                            k_rows, kH, kxt, kxh, kxd, kyt, kyh, kyd, kws,
                            HAS_WEIGHT: tl.constexpr, IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr,
                            ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, WHOLE: tl.constexpr,
                            BLOCK_D: tl.constexpr, PARTNER_LOAD: tl.constexpr,
                            PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                          LO_SUMS: tl.constexpr = False):
    """Q then K blocks of ROWS (token, head) rows in one grid; PERSISTENT loops over all
    blocks with a grid stride.

    ``D``: head_dim; ``HALF``: rotary_dim // 2 (``BLOCK_H = next_pow2(HALF)``); the tail
    ``[2*HALF, D)`` (``HAS_TAIL``, ``BLOCK_T = next_pow2(D - 2*HALF)``) is only normalised.
    ``CS``: cos/sin cache ``[max_pos, 2*HALF]`` (strides ``css0``, ``css1``); ``P``: positions
    ``[T]`` (stride ``ps``, int32 or int64). Per segment: rows ``T*H``, heads ``H``, input and
    output strides (token, head, element), weight stride. ``WHOLE``: each row as one ``[ROWS, BLOCK_D]``
    tile (``BLOCK_D = next_pow2(D)``, :func:`norm_rope_whole`; ``PARTNER_LOAD`` its NeoX partner read
    again) instead of its rotary halves and tail.
    """
    pdl_wait(USE_PDL)
    q_blocks = tl.cdiv(q_rows, ROWS)
    if PERSISTENT:
        n_blocks = q_blocks + tl.cdiv(k_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            _qk_rope_block(block, q_blocks, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos, P, ps,
                           XQ, YQ, WQ, q_rows, qH, qxt, qxh, qxd, qyt, qyh, qyd, qws, XK, YK, WK, k_rows, kH, kxt, kxh,
                           kxd, kyt, kyh, kyd, kws, HAS_WEIGHT, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, BLOCK_T, WHOLE,
                           BLOCK_D, PARTNER_LOAD)
    else:
        _qk_rope_block(tl.program_id(0), q_blocks, D, HALF, eps, eps_tiny, LO_SUMS, w_offset, CS, css0, css1, max_pos,
                       P, ps, XQ, YQ, WQ, q_rows, qH, qxt, qxh, qxd, qyt, qyh, qyd, qws, XK, YK, WK, k_rows, kH, kxt,
                       kxh, kxd, kyt, kyh, kyd, kws, HAS_WEIGHT, IS_NEOX, HAS_TAIL, ROWS, BLOCK_H, BLOCK_T, WHOLE,
                       BLOCK_D, PARTNER_LOAD)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (it measured 40% slower at 16k tokens).
    pdl_launch_dependents(USE_PDL)
