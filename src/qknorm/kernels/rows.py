"""Building blocks shared by the norm kernels: row addressing and one block of rows.

A *block* is ``ROWS`` consecutive flat row indices. Row ``r`` of a tensor with up to
three leading dims (sizes ``N0 x N1 x N2``, only N1 and N2 needed) lives at
``i0*S0 + i1*S1 + i2*S2`` elements from the base, with ``r = (i0*N1 + i1)*N2 + i2``.
Offsets are int64 so tensors past 2**31 elements index correctly.

Numerics everywhere: load, upcast to fp32, sum of squares in fp32, multiply by the
fp32 weight (+ offset), one rounding on store.

Rows out of fp32's range: the fp32 sum of squares overflows for |x| above ~1e19 and flushes
to zero below ~1e-19 (PyTorch's ``F.rms_norm`` returns 0 or inf there). Every kernel takes,
beside the plain sum ``ss``, the sum of squares of ``x * 2**-72`` (:func:`range_sums`: the
same tile, reduced in parallel with ``ss``), and for the rows whose plain sum (or mean
square + eps) overflowed uses that one (:func:`range_factors`). Programs of one row take it
only behind a branch on that row's plain sum (:func:`row_factors`): an H100 measured the
parallel sum at up to +25% per call at decode sizes where a row spans the program's warps
(`benchmarks/results/h100/2026-12-07-session7`); in the plain norm kernels (rms_norm, fused
add, QK) such programs also keep a plain kernel's arithmetic on the common path, and so do
one-warp tiles of several rows, behind one test per program (:func:`row_normalized`,
``RANGE_BRANCH``; tiles over several warps keep the parallel sum: a test across warps is a
shared-memory round trip). Underflow
matters only when eps does not dominate (eps below ``2**-100``): for those calls alone (the
``LO_SUMS`` constexpr, a separate compile: the host sets it from eps, ``ops/_plan.for_eps``) a
third sum, of ``x * 2**96``, serves the rows whose mean square is below ``2**-100``; every other
call's kernel holds no code for it (a runtime branch on eps measured 1-2% per call on an H100,
``benchmarks/results/h100/2026-12-07-session9``). Both scaled sums hold every finite fp32 row exactly
(with ``LO_SUMS``: ``y = (x * p) * q``, ``p = 2**-36`` or ``2**48``, both factors normal; without it the
overflowed rows take one folded factor, ``y = x * q``, :func:`hi_folded`); every other
row keeps ``p = 1``, ``q = rsqrt(mean(x**2) + eps)``, the same bits as without them. fp16 data cannot
leave the range (:func:`in_range`): the whole-row norm kernels (rms_norm, fused add, QK) compile the plain
kernel alone for it.
``eps`` arrives as two fp32 values (``reference.kernel_eps``): ``eps`` itself when it is
a normal fp32 number (else ``2**-126``, or 0) and ``eps_tiny = eps * 2**250`` when it is not,
so every positive eps stays positive.
"""
import triton
import triton.language as tl


@triton.jit
def split_rows(rows, n):
    """``(rows // n, rows % n)`` for the non-negative int32 row indices ``rows`` and a positive ``n`` (a runtime
    int, or the constant 1 Triton makes of a 1), as uint32: unsigned division, the shorter sequence (no sign
    fix-ups; sm_90 SASS of the QK kernel at 32 rows x 8 warps: 600 instructions against 664 signed)."""
    r = rows.to(tl.uint32)
    d = tl.cast(n, tl.uint32)
    return r // d, r % d


@triton.jit
def row_offsets(rows, N1, N2, S0, S1, S2):
    """Element offset (int64) of each flat row index in ``rows``."""
    t, i2 = split_rows(rows, N2)
    i0, i1 = split_rows(t, N1)
    return i0.to(tl.int64) * S0 + i1.to(tl.int64) * S1 + i2.to(tl.int64) * S2


@triton.jit
def pow2(e):
    """``2.0**e`` in fp32, exactly, for int32 ``e`` in [-126, 127] (built from its bits)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


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


# The scaled sums (see the module docstring). HI: for rows whose plain sum overflowed, so max |x| is past
# 2**64 / sqrt(D): the squares of x * 2**-72 are at most 2**112 (2**126 summed over 2**14 columns) and the
# largest at least 2**-30 at any width up to 2**20, so the sum is as exact as a plain one. LO: for rows whose
# mean square is below TINY, so max |x| is below 2**-43 (2**14 columns): the squares of x * 2**96 lie in
# [2**-106, 2**106], subnormal x included. From eps >= TINY on, eps dominates every flushed square (at
# most 2**-149 each against a mean square + eps of at least 2**-100), so LO is only needed below it.
HI = tl.constexpr(2.0 ** -72)
HALF_HI = tl.constexpr(2.0 ** -36)
LO_K = tl.constexpr(96)
LO = tl.constexpr(2.0 ** 96)
TINY = tl.constexpr(2.0 ** -100)
OVERFLOW = tl.constexpr(3.0e38)  # a plain sum of squares above this may have overflowed


@triton.jit
def range_sums(x, LO_SUMS: tl.constexpr):
    """``(ssh, ssl)`` per row of the fp32 tile ``x`` (sums over axis 1): the squares of ``x * 2**-72``
    and, with ``LO_SUMS`` (eps below ``TINY``), of ``x * 2**96`` (else 0).
    Callers add these over chunks as they add the plain sum."""
    ssh = hi_sum(x)
    return ssh, lo_sum(x, ssh, LO_SUMS)


@triton.jit
def lo_sum(x, like, LO_SUMS: tl.constexpr):
    """The sum of squares of ``x * 2**96`` per row with ``LO_SUMS`` (eps below ``TINY``), else 0
    (``like * 0.0``: a per-row vector of the sums' layout, no reduction)."""
    ssl = like * 0.0
    if LO_SUMS:
        xl = x * LO
        ssl = tl.sum(xl * xl, axis=1)
    return ssl


@triton.jit
def hi_folded(ss, ssh, D, eps):
    """Per-row ``q`` with ``y = x * q = x / sqrt(mean(x**2) + eps)`` from the plain sum of squares ``ss`` and
    the ``2**-72`` one ``ssh`` (:func:`range_sums`) when no row needs the lo sum: ``rsqrt(ss / D + eps)``
    (the plain bits) except where that overflowed, where ``q = rsqrt(ssh / D + eps * 2**-144) * 2**-72``
    — :func:`range_factors`'s ``p * q`` as one number, normal down to rows of rms ``2**126`` and a
    subnormal (21-23 significant bits, exact to fp32 rounding of y within a few ulp) past that."""
    m = ss / D + eps
    hi = m > OVERFLOW
    q = tl.rsqrt(tl.where(hi, ssh / D + eps * HI * HI, m))  # one rsqrt per row: the argument selected first
    return tl.where(hi, q * HI, q)


@triton.jit
def range_factors(ss, ssh, ssl, D, eps, eps_tiny, LO_SUMS: tl.constexpr, FOLD: tl.constexpr = False):
    """Per-row ``(p, q)`` with ``y = (x * p) * q = x / sqrt(mean(x**2) + eps)`` from the plain sum of
    squares ``ss`` and the scaled sums of :func:`range_sums`: ``p = 1``, ``q = rsqrt(ss / D + eps)``
    (the plain bits) except for rows whose plain mean square + eps passed fp32's range (an
    overflowed sum, or an eps near fp32's largest value: ``p = 2**-36`` and ``q`` from ``ssh``) and,
    with ``LO_SUMS`` (eps below ``TINY``), rows whose mean square is below ``TINY`` (``p = 2**48``, from ``ssl``).
    ``p`` keeps both factors normal where ``q`` alone would leave fp32's range. NaN rows stay NaN.
    ``FOLD`` (outputs narrower than fp32; the quantised forms: x narrower than fp32, so their ``n`` keeps
    ``rms_norm``'s bits), without ``LO_SUMS``: ``p`` is the constant 1
    (``x * p`` folds away) and ``q`` is :func:`hi_folded`'s, a subnormal for rows of rms past ``2**126``
    (2-3 ulp of fp32 there, below any 16- or 8-bit output's rounding)."""
    if LO_SUMS or not FOLD:
        m = ss / D + eps
        hi = m > OVERFLOW
        q = tl.rsqrt(tl.where(hi, ssh / D + eps * HI * HI, m))
        q = tl.where(hi, q * HALF_HI, q)
        p = tl.where(hi, HALF_HI, 1.0)
        if LO_SUMS:
            lo = m < TINY
            pl, ql = scaled_factors(ssl, D, eps, eps_tiny, tl.full(ss.shape, LO_K, tl.int32))
            # eps * 4**96 underflows for eps below ~2**-341: a zero row then gives 0 (any finite q), not 0 * inf
            ql = tl.where((ssl == 0.0) & (eps > 0.0), 1.0, ql)
            p = tl.where(lo, pl, p)
            q = tl.where(lo, ql, q)
    else:
        p = tl.full(ss.shape, 1.0, tl.float32)
        q = hi_folded(ss, ssh, D, eps)
    return p, q


@triton.jit
def normalized(x, p, q):
    """``(x * p) * q`` for the fp32 tile ``x`` and per-row factors (:func:`range_factors`)."""
    return (x * p[:, None]) * q[:, None]


@triton.jit
def hi_sum(x):
    """The sum of squares of ``x * 2**-72`` per row of the fp32 tile ``x`` (see ``HI``)."""
    xh = x * HI
    return tl.sum(xh * xh, axis=1)


@triton.jit
def row_factors(x, eps, eps_tiny, D, LO_SUMS: tl.constexpr, FOLD: tl.constexpr = False):
    """``(p, q, ss)`` of the rows of the whole-row fp32 tile ``x``: :func:`range_factors` of its sums,
    for kernels that apply the factors to several tiles (RoPE's halves, a re-read row). One row per
    program: the scaled sums only behind a branch on the row's own plain sum (uniform over the
    program; a further block-wide sum costs a shared-memory round trip). Several rows: beside the
    plain sum, as :func:`range_sums` says. (One-warp tiles of several rows could take one test per
    program as :func:`row_normalized` does; compiled for sm_90 that form cut RoPE's whole-row 2 x 256
    tile from 1028 to 977 instructions but raised its registers from 80 to 105, and the quantised and
    RoPE kernels are not issue-bound: not done until a GPU measures it.)"""
    ss = tl.sum(x * x, axis=1)
    if x.shape[0] == 1:
        m = tl.max(ss, axis=0) / D + eps  # the one row's mean square + eps, as a scalar (no reduction left)
        ssh = ss * 0.0
        if m > OVERFLOW:
            ssh = hi_sum(x)
        ssl = lo_sum(x, ss, LO_SUMS)
    else:
        ssh, ssl = range_sums(x, LO_SUMS)
    p, q = range_factors(ss, ssh, ssl, D, eps, eps_tiny, LO_SUMS, FOLD)
    return p, q, ss


@triton.jit
def in_range(X, R):
    """Whether rows of ``X`` (or of ``X + R``) stay inside fp32's range whatever their values: fp16 data
    (|x| <= 65504, |x + r| <= 131008: squares from 2**-48 to 1.8e10, a sum far from overflow at any width,
    none flushed), so neither scaled sum is needed (a constexpr)."""
    return (X.dtype.element_ty == tl.float16) & (R.dtype.element_ty == tl.float16)


@triton.jit
def row_normalized(x, eps, eps_tiny, D, LO_SUMS: tl.constexpr, FOLD: tl.constexpr, IN_RANGE: tl.constexpr = False,
                   RANGE_BRANCH: tl.constexpr = False):
    """``y = x / sqrt(mean(x**2) + eps)`` for each row of the whole-row fp32 tile ``x`` (unweighted).

    ``IN_RANGE`` (fp16 data: :func:`in_range`): the plain path alone, ``y = x * rsqrt(ss / D + eps)``, the
    bits every other path gives such rows.

    One row per program, or several with ``RANGE_BRANCH`` (the host sets it for one-warp programs of several
    rows, where the test below is a few shuffles with no shared memory): the common path is a plain kernel's,
    ``y = x * rsqrt(ss / D + eps)``, one multiply per element right after the reduction (at decode sizes
    the kernel's time is this critical path); when a row of the program is out of fp32's range, one
    branch (uniform over the program) recomputes every row of it with the scaled sums and
    :func:`range_factors`, which give in-range rows the plain bits. Several rows otherwise: the
    ``2**-72`` sum in parallel with the plain one, ``y = x * q`` with ``FOLD`` (:func:`hi_folded`: an
    output narrower than fp32), else or with ``LO_SUMS`` ``y = (x * p) * q`` (:func:`range_factors`); the
    same bits as the branch. An H100 measured the alternatives for several rows over several warps (a
    per-element select after a plain-first ``y``; one cross-warp test and branch per program before the
    store; storing first and rewriting after such a test) no faster, most slower
    (``benchmarks/results/h100/2026-12-07-session8``), and the one folded factor 1-5% faster than
    ``(x * p) * q`` at 64-1024 tokens of Qwen3-8B's QK norm (``.../2026-12-07-session9``)."""
    ss = tl.sum(x * x, axis=1)
    if IN_RANGE:
        y = x * tl.rsqrt(ss / D + eps)[:, None]
    elif x.shape[0] == 1 or RANGE_BRANCH:
        m = ss / D + eps
        q = tl.rsqrt(m)
        bad = m > OVERFLOW  # per row; a NaN row is not out of range (it stays NaN)
        if LO_SUMS:
            bad = bad | (m < TINY)
        # y in each arm (not a plain y first, replaced in the branch): x and a y of the tile are never live at
        # once (sm_90, QK 8 / 16 rows x 128 in one warp: 86 / 167 registers that way, 64 / 126 this way)
        if tl.max(bad.to(tl.int32), axis=0) != 0:  # any row of the program (one row: no reduction left)
            p, q = range_factors(ss, hi_sum(x), lo_sum(x, ss, LO_SUMS), D, eps, eps_tiny, LO_SUMS, FOLD)
            y = normalized(x, p, q)
        else:
            y = x * q[:, None]
    elif LO_SUMS or not FOLD:
        ssh, ssl = range_sums(x, LO_SUMS)
        p, q = range_factors(ss, ssh, ssl, D, eps, eps_tiny, LO_SUMS)
        y = normalized(x, p, q)
    else:
        y = x * hi_folded(ss, hi_sum(x), D, eps)[:, None]
    return y


@triton.jit
def load_sum(x_ptr, r_ptr, mask, HAS_RESIDUAL: tl.constexpr):
    """fp32 ``x`` (or ``x + residual`` when ``HAS_RESIDUAL``; ``r_ptr`` is never read otherwise)."""
    s = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = s + tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32)
    return s


@triton.jit
def chunked_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, HAS_RESIDUAL: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr, LO_SUMS: tl.constexpr,
                    FOLD: tl.constexpr = False):
    """First pass of a chunked row (of ``x``, or of ``x + residual``): ``(p, q, tiles)`` with
    ``n = (s * p) * q`` (:func:`range_factors`) from chunk-wise partial sums of squares, plain and
    scaled. ``tiles``: with ``CHUNKED >= 2`` the row's ``CHUNKED`` exact tiles, kept in registers for
    the write pass; else ``()`` (the write pass reads the row again). Reads only."""
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    ssl = tl.zeros([ROWS], dtype=tl.float32)
    tiles = ()
    if CHUNKED >= 2:
        for i in tl.static_range(CHUNKED):
            c = i * BLOCK_D + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask,
                         HAS_RESIDUAL)
            acc += s * s
            tiles = tiles + (s,)
        ss = tl.sum(acc, axis=1)
        # the scaled sums after the plain one, from the tiles held anyway: acc's registers serve again
        acc_h = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for i in tl.static_range(CHUNKED):
            acc_h, ssl = _range_acc(acc_h, ssl, tiles[i], LO_SUMS)
    else:
        acc_h = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = load_sum(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask,
                         HAS_RESIDUAL)
            acc += s * s
            acc_h, ssl = _range_acc(acc_h, ssl, s, LO_SUMS)
        ss = tl.sum(acc, axis=1)
    p, q = range_factors(ss, tl.sum(acc_h, axis=1), ssl, D, eps, eps_tiny, LO_SUMS, FOLD)
    return p, q, tiles


@triton.jit
def _range_acc(acc_h, ssl, s, LO_SUMS: tl.constexpr):
    """One chunk's share of :func:`range_sums`: the ``2**-72`` squares added to the tile ``acc_h``
    (reduced once, as the plain sum), the ``2**96`` sum (``LO_SUMS`` only) to ``ssl``."""
    sh = s * HI
    acc_h += sh * sh
    if LO_SUMS:
        sl = s * LO
        ssl += tl.sum(sl * sl, axis=1)
    return acc_h, ssl


@triton.jit
def norm_block(block, X, Y, W, n_rows, D, N1, N2,
               xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws, eps, eps_tiny, w_offset,
               HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               CHUNKED: tl.constexpr, LO_SUMS: tl.constexpr,
               RANGE_BRANCH: tl.constexpr = False):
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
                   BLOCK_D, CHUNKED, LO_SUMS, RANGE_BRANCH)


@triton.jit
def _scaled_chunk_store(x, p, q, W, c, ws, w_offset, col_ok, y_ptr, mask, HAS_WEIGHT: tl.constexpr):
    """The write pass of a chunked row, one chunk: ``(x * p) * q`` times the weight's chunk, stored
    at ``y_ptr``."""
    y = normalized(x, p, q)
    if HAS_WEIGHT:
        w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        y = y * w[None, :]
    tl.store(y_ptr, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_block(block, X, R, Y, RO, W, n_rows, D, N1, N2,
                   xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, os0, os1, os2, osd,
                   ws, eps, eps_tiny, w_offset, HAS_RESIDUAL: tl.constexpr,
                   HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                   CHUNKED: tl.constexpr, LO_SUMS: tl.constexpr,
                   RANGE_BRANCH: tl.constexpr = False):
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
    FOLD: tl.constexpr = Y.dtype.element_ty != tl.float32  # one folded factor: rows.range_factors
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
        # The sum is stored before the norm: behind row_normalized's range branch (one-row and RANGE_BRANCH
        # programs) the store would wait for the join (H100, fused add 4096 wide, one row per program, 256-512
        # tokens: +5% against the same kernel with no range handling; benchmarks/results/h100/2026-12-08-session18)
        if HAS_RESIDUAL:
            tl.store(o_row[:, None] + (cols * osd)[None, :], s.to(RO.dtype.element_ty), mask=mask)
        y = row_normalized(s, eps, eps_tiny, D, LO_SUMS, FOLD, in_range(X, R), RANGE_BRANCH)
        if not HAS_RESIDUAL:
            y_ptr = y_row[:, None] + (cols * ysd)[None, :]
        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(y_ptr, y.to(Y.dtype.element_ty), mask=mask)
    else:
        p, q, sums = chunked_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, HAS_RESIDUAL, ROWS,
                                     BLOCK_D, CHUNKED, LO_SUMS, FOLD)
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
                     PERSISTENT: tl.constexpr, LO_SUMS: tl.constexpr,
                     RANGE_BRANCH: tl.constexpr = False):
    """One program's share of a fused add: its block of ROWS rows, or (PERSISTENT) a grid-stride
    loop over blocks (:func:`add_norm_block` each)."""
    if PERSISTENT:
        for block in range(tl.program_id(0), tl.cdiv(n_rows, ROWS), tl.num_programs(0)):
            add_norm_block(block, X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd,
                           ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset, True, HAS_WEIGHT,
                           ROWS, BLOCK_D, CHUNKED, LO_SUMS, RANGE_BRANCH)
    else:
        add_norm_block(tl.program_id(0), X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2,
                       rsd, ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset, True, HAS_WEIGHT,
                       ROWS, BLOCK_D, CHUNKED, LO_SUMS, RANGE_BRANCH)
