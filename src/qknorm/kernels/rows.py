"""Building blocks shared by the norm kernels: row addressing and one block of rows.

A *block* is ``ROWS`` consecutive flat row indices. Row ``r`` of a tensor with up to
three leading dims (sizes ``N0 x N1 x N2``, only N1 and N2 needed) lives at
``i0*S0 + i1*S1 + i2*S2`` elements from the base, with ``r = (i0*N1 + i1)*N2 + i2``.
Offsets are int64 so tensors past 2**31 elements index correctly.

Numerics everywhere: load, upcast to fp32, sum of squares in fp32, multiply by the
fp32 weight (+ offset), one rounding on store.
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
def norm_block(block, X, Y, W, n_rows, D, N1, N2,
               xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws, eps, w_offset,
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
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
        y = x * rstd[:, None]
        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(y_row[:, None] + (cols * ysd)[None, :], y.to(Y.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += x * x
        rstd = tl.rsqrt(tl.sum(acc, axis=1) / D + eps)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            col_ok = c < D
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
            y = x * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
                y = y * w[None, :]
            tl.store(y_row[:, None] + (c * ysd)[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_block(block, X, R, W, n_rows, D, N1, N2,
                   xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ws, eps, w_offset,
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
        rstd = tl.rsqrt(tl.sum(s * s, axis=1) / D + eps)
        y = s * rstd[:, None]
        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(x_ptr, y.to(X.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            mask = row_ok[:, None] & (c < D)[None, :]
            s = (tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
                 + tl.load(r_row[:, None] + (c * rsd)[None, :], mask=mask, other=0.0).to(tl.float32))
            acc += s * s
        rstd = tl.rsqrt(tl.sum(acc, axis=1) / D + eps)
        for start in range(0, D, BLOCK_D):
            c = start + cols
            col_ok = c < D
            mask = row_ok[:, None] & col_ok[None, :]
            x_ptr = x_row[:, None] + (c * xsd)[None, :]
            r_ptr = r_row[:, None] + (c * rsd)[None, :]
            s = (tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
                 + tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32))
            tl.store(r_ptr, s.to(R.dtype.element_ty), mask=mask)
            y = s * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
                y = y * w[None, :]
            tl.store(x_ptr, y.to(X.dtype.element_ty), mask=mask)
