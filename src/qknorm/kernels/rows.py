"""Building blocks shared by the norm kernels: row addressing and one block of rows.

A *block* is ``ROWS`` consecutive flat row indices. Row ``r`` of a tensor with up to
three leading dims (sizes ``N0 x N1 x N2``, only N1 and N2 needed) lives at
``i0*S0 + i1*S1 + i2*S2`` elements from the base, with ``r = (i0*N1 + i1)*N2 + i2``.
Offsets are int64 so tensors past 2**31 elements index correctly.

Numerics everywhere: load, upcast to fp32, sum of squares in fp32, multiply by the
fp32 weight (+ offset), one rounding on store.

Rows out of fp32's range (only with ``QKNORM_SAFE_RANGE=1``, see ``SAFE_RANGE``): the fp32
sum of squares overflows for |x| above ~1e19 and flushes to zero below ~1e-19 (PyTorch's
``F.rms_norm`` returns 0 or inf there). Such rows are found from the sum itself
(:func:`extreme_rows`: above 3e38, or mean square + eps below 2**-60). An unchunked block
first stores every other row the common way (:func:`common_rows`), then, if it holds such a
row, reads those rows again in chunks (their memory still holds the input, also in place)
and stores them rescaled (:func:`reread_extreme_rows`): the common path waits for no extra
reduction, and the branch needs few registers (sm_90, ``ptxas``: a 16384-wide row at 16
warps takes 64 registers, as without the rescue; keeping the rows in registers for it took
106). :func:`rescued_factors` scales each such row by an exact power of two ``2**k``,
``k = -exponent(max |x|)`` (:func:`row_exponent`), then normalises with eps scaled too
(:func:`scaled_factors`: ``y = (x * p) * q``, both per-row factors inside fp32's range).
Other rows keep ``q = rsqrt(mean(x**2) + eps)`` and the same bits. The chunked form decides
before its write pass (it may write in place, so it cannot read the row again after).
``eps`` arrives as two fp32 values (``reference.kernel_eps``): ``eps`` itself when it is
a normal fp32 number (else 0) and ``eps_tiny = eps * 2**250`` when it is not, so every
positive eps stays positive.
"""
import os

import triton
import triton.language as tl

# Rows out of fp32's range are handled only when QKNORM_SAFE_RANGE=1 (read once, at import):
# even with the rescue out of line and not taken, the branch measured 4% slower in geometric
# mean on an H200 (up to 16% at 1024 tokens; RoPE's inline rescue up to 24%):
# benchmarks/results/h200/2026-12-01-host-cost/graph-ab. So by default the kernels keep the
# plain fp32 sum of squares (the PyTorch path is always exact).
SAFE_RANGE = tl.constexpr(os.environ.get("QKNORM_SAFE_RANGE", "0").strip() not in ("", "0"))


@triton.jit
def row_offsets(rows, N1, N2, S0, S1, S2):
    """Element offset (int64) of each flat row index in ``rows``."""
    i2 = rows % N2
    t = rows // N2
    i1 = t % N1
    i0 = t // N1
    return i0.to(tl.int64) * S0 + i1.to(tl.int64) * S1 + i2.to(tl.int64) * S2


@triton.jit
def pow2(e):
    """``2.0**e`` in fp32, exactly, for int32 ``e`` in [-126, 127] (built from its bits)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def extreme_rows(ss, D, eps):
    """Rows whose fp32 sum of squares ``ss`` cannot be trusted: overflow, or a mean square
    plus eps so small that flushed squares (or an eps below fp32's normal range) matter."""
    return (ss > 3.0e38) | (ss / D + eps < 8.673617379884035e-19)  # 2**-60


@triton.jit
def row_exponent(amax, bad):
    """Per-row exponent ``k`` (int32) that brings the ``bad`` rows into fp32's comfortable
    range: ``-exponent(amax)`` (zero and subnormal maxima count as exponent -127); 0 for the
    other rows and for inf/NaN maxima. ``amax``: the row's max |x|."""
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 255) - 127
    return tl.where(bad & (e < 128), -e, 0)


@triton.jit
def scaled_factors(ss, D, eps, eps_tiny, k):
    """Per-row factors ``(p, q)`` with ``y = (x * p) * q = x / sqrt(mean(x**2) + eps)`` for rows
    scaled by ``2**k``, where ``ss`` is the fp32 sum of squares of ``x * 2**k``.

    ``p = 2**(k//2)`` and ``q = 2**(k - k//2) / sqrt(ss / D + eps * 4**k)``, both inside
    fp32's range. Where ``eps * 4**k`` passes that range the row is negligible next to eps
    and ``q = rsqrt(eps) * 2**-(k//2)`` (``y = x * rsqrt(eps)``)."""
    ka = k >> 1
    sa = pow2(ka)
    sb = pow2(k - ka)
    kt = tl.minimum(tl.maximum(k - 125, -126), 127)
    tiny = eps_tiny + 0.0 * sa > 0  # eps below fp32's normal range: eps_tiny = eps * 2**250 holds it
    eps_s = tl.where(tiny, eps_tiny * pow2(kt) * pow2(kt), eps * sa * sa * sb * sb)
    q = sb * tl.rsqrt(ss / D + eps_s)
    q_eps = tl.rsqrt(eps + 0.0 * sa) * pow2(-ka)
    q_tiny = tl.rsqrt(eps_tiny + 0.0 * sa) * pow2(tl.minimum(tl.maximum(125 - ka, -126), 127))
    return sa, tl.where(eps_s > 3.0e38, tl.where(tiny, q_tiny, q_eps), q)


@triton.jit
def rescued_factors(x, ss, D, eps, eps_tiny):
    """``(p, q)`` per row of the fp32 tile ``x`` (sum of squares ``ss``) with
    ``y = (x * p) * q = x / sqrt(mean(x**2) + eps)``: rows out of fp32's range get
    :func:`scaled_factors`, the others ``p = 1``, ``q = rsqrt(ss / D + eps)`` (the same bits as
    the common path)."""
    bad = extreme_rows(ss, D, eps)
    k = row_exponent(tl.max(tl.abs(x), axis=1), bad)
    s = pow2(k >> 1) * pow2(k - (k >> 1))
    xs = x * s[:, None]
    p2, q2 = scaled_factors(tl.sum(xs * xs, axis=1), D, eps, eps_tiny, k)
    return tl.where(bad, p2, 1.0), tl.where(bad, q2, tl.rsqrt(ss / D + eps))


@triton.jit
def rescued_rows(x, ss, D, eps, eps_tiny):
    """``x / sqrt(mean(x**2) + eps)`` per row of the fp32 tile ``x`` (sums of squares ``ss``)
    with the rows out of fp32's range rescaled (:func:`rescued_factors`)."""
    p, q = rescued_factors(x, ss, D, eps, eps_tiny)
    return (x * p[:, None]) * q[:, None]


@triton.jit
def common_rows(mask, ss, D, eps):
    """The store mask of a block's common path: ``mask``, or with ``SAFE_RANGE`` ``mask`` less
    the rows out of fp32's range, left as they are in memory for :func:`reread_extreme_rows`."""
    if SAFE_RANGE:
        return mask & ~extreme_rows(ss, D, eps)[:, None]
    return mask


@triton.jit
def factors_from_memory(x_row, r_row, xsd, rsd, rows, bad, D, eps, eps_tiny, HAS_RESIDUAL: tl.constexpr,
                        ROWS: tl.constexpr, CH: tl.constexpr):
    """Per-row ``(p, q)`` of :func:`scaled_factors` for the ``bad`` rows, from two reads of the rows
    (``rows``: the rows read; x, or x + residual) in chunks of ``CH`` columns: max |x| for the
    exponent, then the sum of squares of the scaled row."""
    cols = tl.arange(0, CH)
    amax = tl.zeros([ROWS, CH], dtype=tl.float32)
    for start in range(0, D, CH):
        c = start + cols
        m = rows[:, None] & (c < D)[None, :]
        x = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], m, HAS_RESIDUAL)
        amax = tl.maximum(amax, tl.abs(x))
    k = row_exponent(tl.max(amax, axis=1), bad)
    sc = pow2(k >> 1) * pow2(k - (k >> 1))
    acc = tl.zeros([ROWS, CH], dtype=tl.float32)
    for start in range(0, D, CH):
        c = start + cols
        m = rows[:, None] & (c < D)[None, :]
        x = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], m,
                     HAS_RESIDUAL) * sc[:, None]
        acc += x * x
    return scaled_factors(tl.sum(acc, axis=1), D, eps, eps_tiny, k)


@triton.jit
def reread_extreme_rows(x_row, r_row, xsd, rsd, y_row, ysd, o_row, osd, W, ws, W2, ws2, second, w_offset, rows_ok,
                        ss, D, eps, eps_tiny, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """With ``SAFE_RANGE``, after a block's common stores (:func:`common_rows` kept them off these
    rows): the rows out of fp32's range (sums of squares ``ss``) done again from memory, which
    still holds their input (so this is right in place too). Row pointers ``x_row`` (and
    ``r_row`` with ``HAS_RESIDUAL``: the sum is stored at ``o_row``), output ``y_row``; the
    weight ``W`` (stride ``ws``), or ``W2`` (stride ``ws2``) for the rows where ``second`` is
    set (QK: Q's and K's weights, of any two dtypes). In chunks of ``max(16, 1024 // ROWS)``
    columns (at most ``BLOCK_D``) over three reads (max |x|, the scaled sum of squares, the store),
    so the branch needs few registers (``ptxas`` sizes the whole kernel for its widest part:
    holding the rows, or a whole-row rescue, cost 40-70% more registers on the common path).
    Without ``SAFE_RANGE`` it is no code at all."""
    if SAFE_RANGE:
        bad = rows_ok & extreme_rows(ss, D, eps)
        if any_true(bad):  # rare, block-uniform
            CH: tl.constexpr = min(BLOCK_D, max(16, 1024 // ROWS))
            p, q = factors_from_memory(x_row, r_row, xsd, rsd, bad, bad, D, eps, eps_tiny, HAS_RESIDUAL, ROWS, CH)
            cols = tl.arange(0, CH)
            for start in range(0, D, CH):
                c = start + cols
                c_ok = (c < D)[None, :]
                m = bad[:, None] & c_ok
                x = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], m,
                             HAS_RESIDUAL)
                if HAS_RESIDUAL:
                    tl.store(o_row[:, None] + (c * osd)[None, :], x.to(o_row.dtype.element_ty), mask=m)
                y = (x * p[:, None]) * q[:, None]
                if HAS_WEIGHT:
                    wa = tl.load(W + c * ws, mask=c < D, other=0.0).to(tl.float32)
                    wb = tl.load(W2 + c * ws2, mask=c < D, other=0.0).to(tl.float32)
                    y = y * (tl.where(second[:, None], wb[None, :], wa[None, :]) + w_offset)
                tl.store(y_row[:, None] + (c * ysd)[None, :], y.to(y_row.dtype.element_ty), mask=m)


@triton.jit
def scale_store(x, ss, D, eps, w, y_ptr, mask, HAS_WEIGHT: tl.constexpr):
    """Store ``x / sqrt(ss / D + eps) * w`` (rows of the fp32 tile ``x``, sums of squares
    ``ss``) at ``y_ptr``: the common path of the unchunked blocks."""
    y = x * tl.rsqrt(ss / D + eps)[:, None]
    if HAS_WEIGHT:
        y = y * w[None, :]
    tl.store(y_ptr, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def any_true(mask):
    return tl.max(mask.to(tl.int32), axis=0) > 0


@triton.jit
def load_sum(x_ptr, r_ptr, mask, HAS_RESIDUAL: tl.constexpr):
    """fp32 ``x`` (or ``x + residual`` when ``HAS_RESIDUAL``; ``r_ptr`` is never read otherwise)."""
    s = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = s + tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32)
    return s


@triton.jit
def chunked_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, HAS_RESIDUAL: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr):
    """First pass of a chunked row (of ``x``, or of ``x + residual``): ``(p, q, tiles)`` with
    ``n = (s * p) * q``: ``p = 1``, ``q = rsqrt(mean(s**2) + eps)`` from chunk-wise partial sums of
    squares, and the rows out of fp32's range rescaled with ``SAFE_RANGE`` (two more reads).
    ``tiles``: with ``CHUNKED >= 2`` the row's ``CHUNKED`` exact tiles, kept in registers for the
    write pass; else ``()`` (the write pass reads the row again). Reads only."""
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    tiles = ()
    if CHUNKED >= 2:
        for i in tl.static_range(CHUNKED):
            c = i * BLOCK_D + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask,
                         HAS_RESIDUAL)
            acc += s * s
            tiles = tiles + (s,)
    else:
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask,
                         HAS_RESIDUAL)
            acc += s * s
    ss = tl.sum(acc, axis=1)
    q = tl.rsqrt(ss / D + eps)
    p = q * 0.0 + 1.0
    if SAFE_RANGE:
        # (padding rows sum to 0: with eps below 2**-60 a tail block takes the two reads too, right but
        # slower; masking them with row_ok cost 98 -> 122 registers at CHUNKED=4, sm_90)
        bad = extreme_rows(ss, D, eps)
        if any_true(bad):  # rare: rows out of fp32's range; two more reads
            p2, q2 = factors_from_memory(x_row, r_row, xsd, rsd, row_ok, bad, D, eps, eps_tiny, HAS_RESIDUAL, ROWS,
                                         BLOCK_D)
            p = tl.where(bad, p2, p)
            q = tl.where(bad, q2, q)
    return p, q, tiles


@triton.jit
def norm_block(block, X, Y, W, n_rows, D, N1, N2,
               xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws, eps, eps_tiny, w_offset,
               HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               CHUNKED: tl.constexpr):
    """Normalise rows ``block*ROWS ... +ROWS`` of X into Y: :func:`add_norm_block` without a
    residual.

    Unchunked (``CHUNKED == 0``): the whole row (BLOCK_D >= D) is held in registers, one read
    and one write per element. ``CHUNKED >= 2``: the row is that many exact BLOCK_D tiles,
    all kept in registers (one read; the host picks it when they fit). ``CHUNKED == 1`` (rows
    wider than the registers hold): a first pass sums squares chunk by chunk, a second re-reads,
    scales and writes. Both chunked forms do the same arithmetic (the same bits).
    """
    add_norm_block(block, X, X, Y, Y, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, xs0, xs1, xs2, xsd,
                   ys0, ys1, ys2, ysd, ys0, ys1, ys2, ysd, ws, eps, eps_tiny, w_offset, False, HAS_WEIGHT, ROWS,
                   BLOCK_D, CHUNKED)


@triton.jit
def _scaled_chunk_store(x, p, q, W, c, ws, w_offset, col_ok, y_ptr, mask, HAS_WEIGHT: tl.constexpr):
    """The write pass of a chunked row, one chunk: ``(x * p) * q`` (``x * q`` without the safe
    range) times the weight's chunk, stored at ``y_ptr``."""
    if SAFE_RANGE:
        y = (x * p[:, None]) * q[:, None]
    else:
        y = x * q[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        y = y * w[None, :]
    tl.store(y_ptr, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_block(block, X, R, Y, RO, W, n_rows, D, N1, N2,
                   xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, os0, os1, os2, osd,
                   ws, eps, eps_tiny, w_offset, HAS_RESIDUAL: tl.constexpr,
                   HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                   CHUNKED: tl.constexpr):
    """``RO = X + R; Y = norm(RO)`` for one block of rows: in place with ``Y = X``, ``RO = R``
    (and their strides), out of place into fresh tensors otherwise; without ``HAS_RESIDUAL``
    ``Y = norm(X)`` (R and RO unused: :func:`norm_block`).

    The norm uses the fp32 sum; RO stores its rounding. The chunked form sums squares
    in a read-only first pass so the second pass can recompute the exact fp32 sum
    before either tensor is overwritten.
    """
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    x_row = X + row_offsets(rows, N1, N2, xs0, xs1, xs2)
    r_row = x_row
    o_row = x_row
    if HAS_RESIDUAL:
        r_row = R + row_offsets(rows, N1, N2, rs0, rs1, rs2)
    y_row = Y + row_offsets(rows, N1, N2, ys0, ys1, ys2)
    if HAS_RESIDUAL:
        o_row = RO + row_offsets(rows, N1, N2, os0, os1, os2)
    cols = tl.arange(0, BLOCK_D)
    if not CHUNKED:
        col_ok = cols < D
        # The weight load is issued first so that its latency overlaps the row's load and
        # reduction instead of following them (a whole DRAM round trip at decode sizes).
        w = 1.0  # no weight (HAS_WEIGHT=False: never read)
        if HAS_WEIGHT:
            w = tl.load(W + cols * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        mask = row_ok[:, None] & col_ok[None, :]
        x_ptr = x_row[:, None] + (cols * xsd)[None, :]
        r_ptr = r_row[:, None] + (cols * rsd)[None, :]
        if HAS_RESIDUAL:
            y_ptr = y_row[:, None] + (cols * ysd)[None, :]
        s = load_sum(x_ptr, r_ptr, mask, HAS_RESIDUAL)
        ss = tl.sum(s * s, axis=1)
        if HAS_RESIDUAL:
            common = common_rows(mask, ss, D, eps)
            tl.store(o_row[:, None] + (cols * osd)[None, :], s.to(RO.dtype.element_ty), mask=common)
        else:
            y_ptr = y_row[:, None] + (cols * ysd)[None, :]
            common = common_rows(mask, ss, D, eps)
        scale_store(s, ss, D, eps, w, y_ptr, common, HAS_WEIGHT)
        # After the common store, so the common path waits for nothing.
        reread_extreme_rows(x_row, r_row, xsd, rsd, y_row, ysd, o_row, osd, W, ws, W, ws, rows < 0, w_offset, row_ok,
                            ss, D, eps, eps_tiny, HAS_RESIDUAL, HAS_WEIGHT, ROWS, BLOCK_D)
    else:
        p, q, sums = chunked_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, HAS_RESIDUAL, ROWS,
                                     BLOCK_D, CHUNKED)
        if CHUNKED >= 2:
            for i in tl.static_range(CHUNKED):
                c = i * BLOCK_D + cols
                col_ok = c < D
                mask = row_ok[:, None] & col_ok[None, :]
                if HAS_RESIDUAL:
                    tl.store(o_row[:, None] + (c * osd)[None, :], sums[i].to(RO.dtype.element_ty), mask=mask)
                _scaled_chunk_store(sums[i], p, q, W, c, ws, w_offset, col_ok, y_row[:, None] + (c * ysd)[None, :],
                                    mask, HAS_WEIGHT)
        else:
            for start in range(0, D, BLOCK_D):
                c = start + cols
                col_ok = c < D
                mask = row_ok[:, None] & col_ok[None, :]
                s = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask,
                             HAS_RESIDUAL)
                if HAS_RESIDUAL:
                    tl.store(o_row[:, None] + (c * osd)[None, :], s.to(RO.dtype.element_ty), mask=mask)
                _scaled_chunk_store(s, p, q, W, c, ws, w_offset, col_ok, y_row[:, None] + (c * ysd)[None, :], mask,
                                    HAS_WEIGHT)


@triton.jit
def add_norm_program(X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd,
                     ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset,
                     HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr,
                     PERSISTENT: tl.constexpr):
    """One program's share of a fused add: its block of ROWS rows, or (PERSISTENT) a grid-stride
    loop over blocks (:func:`add_norm_block` each)."""
    if PERSISTENT:
        for block in range(tl.program_id(0), tl.cdiv(n_rows, ROWS), tl.num_programs(0)):
            add_norm_block(block, X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd,
                           ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset, True, HAS_WEIGHT,
                           ROWS, BLOCK_D, CHUNKED)
    else:
        add_norm_block(tl.program_id(0), X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2,
                       rsd, ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset, True, HAS_WEIGHT,
                       ROWS, BLOCK_D, CHUNKED)
