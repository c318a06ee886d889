"""RMSNorm of a dimension split across tensor-parallel ranks: the two local halves.

Each rank holds ``x [..., D_local]``, a shard of a row of ``D_full`` elements. The norm
needs the sum of squares of the *whole* row, so it runs in three steps:

1. :func:`tp_sumsq_kernel` writes each row's sum of squares of the local shard
   (fp32 loads, squared and summed in fp64) into a flat fp64 buffer (row ``r`` of segment A at ``SA + r``, of segment B at
   ``SB + r``; the launcher points both into one packed buffer);
2. the launcher all-reduces that buffer across the group (``torch.distributed``);
3. :func:`tp_scale_kernel` writes ``x * rsqrt(total / D_full + eps) * (w + offset)``:
   ``rstd`` in fp64 (``eps`` is an fp64 argument, so every positive eps stays positive),
   ``x * rstd`` in fp64 rounded once to fp32 (no intermediate can overflow or underflow:
   rows of 1e20 or 1e-25 normalise right), then the fp32 weight multiply, one rounding.

fp64 sums cost nothing measurable here: the kernels are bound by memory and the
collective, and the sums are 8 bytes per row.

Both kernels take two segments (Q and K) in one grid, like ``qk_norm.py``: blocks
``[0, cdiv(a_rows, ROWS))`` work on A, the rest on B; a single tensor passes
``b_rows = 0``. Rows are addressed with the tensor's own strides (``rows.row_offsets``),
so shards may be strided views of a packed QKV buffer. Row offsets are int64; column
offsets ``c * stride`` are int32, so the launcher only passes tensors whose
``|stride| * (D - 1)`` stays below 2**31 (a weight that does not is copied contiguous
first; activations take a contiguous copy or the PyTorch path). Neither kernel keeps a row in
registers: the sum loops over ``BLOCK_D`` column chunks, the scale is elementwise once
the row's total is known.

Launcher: ``qknorm.distributed`` (``rms_norm_tp``, ``qk_rms_norm_tp``); test:
``tests/distributed/``; bench: ``qknorm bench --preset tp`` (``bench/tp.py``).
"""
import triton
import triton.language as tl

from .rows import row_offsets


@triton.jit
def _sumsq_block(block, X, S, n_rows, D, N1, N2, xs0, xs1, xs2, xsd,
                 ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``S[r] = sum(x[r, :]**2)`` (fp64) for the rows of one block."""
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    x_row = X + row_offsets(rows, N1, N2, xs0, xs1, xs2)
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float64)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = row_ok[:, None] & (c < D)[None, :]
        x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32).to(tl.float64)
        acc += x * x
    tl.store(S + rows, tl.sum(acc, axis=1), mask=row_ok)


@triton.jit
def tp_sumsq_kernel(XA, SA, a_rows, DA, aN1, aN2, as0, as1, as2, asd,
                    XB, SB, b_rows, DB, bN1, bN2, bs0, bs1, bs2, bsd,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-row fp64 sums of squares of two strided tensors (A then B) in one grid."""
    a_blocks = tl.cdiv(a_rows, ROWS)
    block = tl.program_id(0)
    if block < a_blocks:
        _sumsq_block(block, XA, SA, a_rows, DA, aN1, aN2, as0, as1, as2, asd, ROWS, BLOCK_D)
    else:
        _sumsq_block(block - a_blocks, XB, SB, b_rows, DB, bN1, bN2, bs0, bs1, bs2, bsd, ROWS, BLOCK_D)


@triton.jit
def _scale_block(block, X, Y, W, S, n_rows, D, D_full, N1, N2,
                 xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws, eps, w_offset,
                 HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``y = x * rsqrt(S[r] / D_full + eps) * (w + offset)`` for the rows of one block
    (``S`` and ``eps`` fp64; ``x * rstd`` in fp64, rounded to fp32 before the weight)."""
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    total = tl.load(S + rows, mask=row_ok, other=0.0)
    rstd = 1.0 / tl.sqrt(total / D_full + eps)
    x_row = X + row_offsets(rows, N1, N2, xs0, xs1, xs2)
    y_row = Y + row_offsets(rows, N1, N2, ys0, ys1, ys2)
    cols = tl.arange(0, BLOCK_D)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        col_ok = c < D
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_row[:, None] + (c * xsd)[None, :], mask=mask, other=0.0).to(tl.float32)
        y = (x.to(tl.float64) * rstd[:, None]).to(tl.float32)
        if HAS_WEIGHT:
            w = tl.load(W + c * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
            y = y * w[None, :]
        tl.store(y_row[:, None] + (c * ysd)[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def tp_scale_kernel(eps: tl.float64, w_offset,
                    XA, YA, WA, SA, a_rows, DA, DA_full, aN1, aN2,
                    axs0, axs1, axs2, axsd, ays0, ays1, ays2, aysd, aws,
                    XB, YB, WB, SB, b_rows, DB, DB_full, bN1, bN2,
                    bxs0, bxs1, bxs2, bxsd, bys0, bys1, bys2, bysd, bws,
                    HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scale two strided tensors (A then B) by their all-reduced row totals, one grid."""
    a_blocks = tl.cdiv(a_rows, ROWS)
    block = tl.program_id(0)
    if block < a_blocks:
        _scale_block(block, XA, YA, WA, SA, a_rows, DA, DA_full, aN1, aN2,
                     axs0, axs1, axs2, axsd, ays0, ays1, ays2, aysd, aws, eps, w_offset,
                     HAS_WEIGHT, ROWS, BLOCK_D)
    else:
        _scale_block(block - a_blocks, XB, YB, WB, SB, b_rows, DB, DB_full, bN1, bN2,
                     bxs0, bxs1, bxs2, bxsd, bys0, bys1, bys2, bysd, bws, eps, w_offset,
                     HAS_WEIGHT, ROWS, BLOCK_D)
