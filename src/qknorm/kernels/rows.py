"""Building blocks shared by the norm kernels: row addressing and one block of rows.

A *block* is ``ROWS`` consecutive flat row indices. Row ``r`` of a tensor with up to
three leading dims (sizes ``N0 x N1 x N2``, only N1 and N2 needed) lives at
``i0*S0 + i1*S1 + i2*S2`` elements from the base, with ``r = (i0*N1 + i1)*N2 + i2``.
Offsets are int64 so tensors past 2**31 elements index correctly.

Numerics everywhere: load, upcast to fp32, sum of squares in fp32, multiply by the
fp32 weight (+ offset), one rounding on store.

Rows out of fp32's range: the fp32 sum of squares overflows for |x| above ~1e19 and
flushes to zero below ~1e-19 (PyTorch's ``F.rms_norm`` returns 0 or inf there). Each row
is therefore scaled by an exact power of two ``2**k`` chosen from its largest |x|
(:func:`row_scale`): ``k = 0`` for every row whose max |x| lies in ``[2**-40, 2**41)``
(multiplying by 1.0 changes no bit: ordinary rows keep their exact numerics), else
``k = -exponent(max |x|)``. The norm of the scaled row ``xs = x * 2**k`` is the norm of
``x`` when eps is scaled too (:func:`scaled_rstd`: ``y = xs / sqrt(mean(xs**2) + eps * 4**k)``).
``eps`` arrives as two fp32 values (``reference.kernel_eps``): ``eps`` itself when it is
a normal fp32 number (else 0) and ``eps_tiny = eps * 2**250`` when it is not, so every
positive eps stays positive. The chunked (two-pass) form rescales behind a branch taken
only by blocks that hold such a row.
"""
import triton
import triton.language as tl


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
def row_scale(amax):
    """Per-row exponent ``k`` (int32) and ``2**k`` as two normal fp32 factors ``(sa, sb)``.

    ``amax``: the row's max |x| (fp32). ``k = 0`` when it lies in ``[2**-40, 2**41)`` or is
    inf/NaN; else ``-exponent(amax)`` (zero and subnormal rows count as exponent -127)."""
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 255) - 127
    k = tl.where(((e > 40) & (e < 128)) | (e < -40), -e, 0)
    ka = k >> 1
    return k, pow2(ka), pow2(k - ka)


@triton.jit
def scaled_rstd(ss, D, eps, eps_tiny, k, sa, sb):
    """``1 / sqrt(ss / D + eps * 4**k)`` per row, for ``ss`` the fp32 sum of squares of the
    row scaled by ``2**k = sa * sb``: ``y = xs * scaled_rstd`` is ``x / sqrt(mean(x**2) + eps)``.

    Where ``eps * 4**k`` passes fp32's range the row is negligible next to eps and the
    factor is ``rsqrt(eps) * 2**-k`` (so that ``xs * factor = x * rsqrt(eps)``)."""
    kt = tl.minimum(tl.maximum(k - 125, -126), 127)
    eps_s = eps * sa * sa * sb * sb + eps_tiny * pow2(kt) * pow2(kt)  # eps_tiny * 2**(2k - 250)
    r = tl.rsqrt(ss / D + eps_s)
    ka = k >> 1
    f_eps = tl.rsqrt(eps + 0.0 * sa) * pow2(-ka) * pow2(ka - k)
    f_tiny = tl.rsqrt(eps_tiny + 0.0 * sa) * pow2(tl.minimum(tl.maximum(125 - k, -126), 127))
    return tl.where(eps_s > 3.0e38, tl.where(eps + 0.0 * sa > 0, f_eps, f_tiny), r)


@triton.jit
def normalize_rows(x, D, eps, eps_tiny):
    """``x / sqrt(mean(x**2) + eps)`` per row of the fp32 tile ``x`` ``[ROWS, BLOCK_D]``
    (masked columns hold 0), with every row kept inside fp32's range (module docstring)."""
    k, sa, sb = row_scale(tl.max(tl.abs(x), axis=1))
    xs = x * sa[:, None] * sb[:, None]
    rstd = scaled_rstd(tl.sum(xs * xs, axis=1), D, eps, eps_tiny, k, sa, sb)
    return xs * rstd[:, None]


@triton.jit
def any_true(mask):
    return tl.max(mask.to(tl.int32), axis=0) > 0


@triton.jit
def norm_block(block, X, Y, W, n_rows, D, N1, N2,
               xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws, eps, eps_tiny, w_offset,
               HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               CHUNKED: tl.constexpr):
    """Normalise rows ``block*ROWS ... +ROWS`` of X into Y.

    Unchunked: the whole row (BLOCK_D >= D) is held in registers, one read and one
    write per element. Chunked (rows wider than a register tile): a first pass sums
    squares chunk by chunk, a second re-reads, scales and writes.
    """
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    x_row = X + row_offsets(rows, N1, N2, xs0, xs1, xs2)
    y_row = Y + row_offsets(rows, N1, N2, ys0, ys1, ys2)
    cols = tl.arange(0, BLOCK_D)
    if not CHUNKED:
        col_ok = cols < D
        # The weight load is issued first so that its latency overlaps the row's load and
        # reduction instead of following them (a whole DRAM round trip at decode sizes).
        if HAS_WEIGHT:
            w = tl.load(W + cols * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_row[:, None] + (cols * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
        y = normalize_rows(x, D, eps, eps_tiny)
        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(y_row[:, None] + (cols * ysd)[None, :], y.to(Y.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        amax = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += x * x
            amax = tl.maximum(amax, tl.abs(x))
        k, sa, sb = row_scale(tl.max(amax, axis=1))
        ss = tl.sum(acc, axis=1)
        if any_true(k != 0):  # rare: a row out of fp32's range; sum its scaled squares again
            acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
            for start in range(0, D, BLOCK_D):
                c = start + cols
                mask = row_ok[:, None] & (c < D)[None, :]
                x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
                x = x * sa[:, None] * sb[:, None]
                acc += x * x
            ss = tl.sum(acc, axis=1)
        rstd = scaled_rstd(ss, D, eps, eps_tiny, k, sa, sb)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            col_ok = c < D
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
            y = (x * sa[:, None] * sb[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
                y = y * w[None, :]
            tl.store(y_row[:, None] + (c * ysd)[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_block(block, X, R, W, n_rows, D, N1, N2,
                   xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ws, eps, eps_tiny, w_offset,
                   HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                   CHUNKED: tl.constexpr):
    """``R += X; X = norm(R)`` for one block of rows, in place.

    The norm uses the fp32 sum; R stores its rounding. The chunked form sums squares
    in a read-only first pass so the second pass can recompute the exact fp32 sum
    before either tensor is overwritten.
    """
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    x_row = X + row_offsets(rows, N1, N2, xs0, xs1, xs2)
    r_row = R + row_offsets(rows, N1, N2, rs0, rs1, rs2)
    cols = tl.arange(0, BLOCK_D)
    if not CHUNKED:
        col_ok = cols < D
        if HAS_WEIGHT:  # first, to overlap its latency (see norm_block)
            w = tl.load(W + cols * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        mask = row_ok[:, None] & col_ok[None, :]
        x_ptr = x_row[:, None] + (cols * xsd)[None, :]
        r_ptr = r_row[:, None] + (cols * rsd)[None, :]
        s = (tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
             + tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32))
        tl.store(r_ptr, s.to(R.dtype.element_ty), mask=mask)
        y = normalize_rows(s, D, eps, eps_tiny)
        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(x_ptr, y.to(X.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        amax = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = (tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
                 + tl.load(r_row[:, None] + (c * rsd)[None, :], mask=mask, other=0.0).to(tl.float32))
            acc += s * s
            amax = tl.maximum(amax, tl.abs(s))
        k, sa, sb = row_scale(tl.max(amax, axis=1))
        ss = tl.sum(acc, axis=1)
        if any_true(k != 0):  # rare: a row out of fp32's range; sum its scaled squares again
            acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
            for start in range(0, D, BLOCK_D):
                c = start + cols
                mask = row_ok[:, None] & (c < D)[None, :]
                s = (tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
                     + tl.load(r_row[:, None] + (c * rsd)[None, :], mask=mask, other=0.0).to(tl.float32))
                s = s * sa[:, None] * sb[:, None]
                acc += s * s
            ss = tl.sum(acc, axis=1)
        rstd = scaled_rstd(ss, D, eps, eps_tiny, k, sa, sb)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            col_ok = c < D
            mask = row_ok[:, None] & col_ok[None, :]
            x_ptr = x_row[:, None] + (c * xsd)[None, :]
            r_ptr = r_row[:, None] + (c * rsd)[None, :]
            s = (tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
                 + tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32))
            tl.store(r_ptr, s.to(R.dtype.element_ty), mask=mask)
            y = (s * sa[:, None] * sb[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
                y = y * w[None, :]
            tl.store(x_ptr, y.to(X.dtype.element_ty), mask=mask)
