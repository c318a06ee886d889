"""RMSNorm with an 8-bit output in one pass: ``n = x / sqrt(mean(x^2) + eps) * (w + offset)``
(optionally of ``x + residual``, with ``residual`` written), then FP8/INT8 codes and their scales.

Launcher: ``ops/rms_norm_quant.py``; configs: the dispatcher's pick for ``rms_norm`` /
``fused_add_rms_norm`` of the same width (the canonical row layout, so ``n`` has the bits
``rms_norm`` / ``fused_add_rms_norm`` compute before their rounding; the two-pass group form for
group sizes that are not powers of two may differ by one rounding on a GPU, where Triton may lay
its first-pass tile out differently — measured on an H100; its codes are still batch invariant:
one tile for every token count); reference and CPU path:
``ops/rms_norm_quant.run``; tests: ``tests/kernels/test_rms_norm_quant.py``.

Numerics (the PyTorch path's, operation by operation):

* ``n``: as ``rows.norm_block`` / ``rows.add_norm_block`` (fp32 sum of squares over the same
  tile, ``s * rsqrt(ss / D + eps)``, times ``w + offset``; the rows out of fp32's range the same
  way: ``rows.range_factors``).
* scales: static (``STATIC``): the fp32 value read from the 1-element tensor ``SIN`` on the
  device (no host sync). Dynamic: ``amax`` of ``|n|`` over the row (``GROUP == 0``) or over each
  group of ``GROUP`` consecutive elements, NaN-propagating as ``torch.amax``; ``s =
  max(amax, 1e-10) / qmax`` (IEEE division, as PyTorch divides), then ``min(s, ub)`` (``UB``: 1 a
  float argument, 2 the value at ``SIN``), then with ``UE8M0`` ``2**ceil(log2(s))`` from the bits
  (:func:`pow2_ceil`, exact, subnormals too).
* codes: ``q = n / s`` with IEEE round-to-nearest division (``tl.math.div_rn``; Triton's ``/``
  is an approximate division on the GPU, and ``n * (1 / s)`` differs from ``n / s`` in the last
  bit, which moves codes at rounding ties), saturated to ``[-qmax, qmax]`` with NaN kept, then
  int8: round half to even (:func:`rint_small`), NaN -> 0; fp8: round to nearest even.

FP8 casts and the interpreter: under ``TRITON_INTERPRET=1`` (Triton 3.9 checked) ``x.to(
tl.float8e4nv)`` / ``x.to(tl.float8e5)`` are wrong: ties round away from zero (17.0 -> 18 in
e4m3), mantissa carries are OR-ed into the exponent, subnormal results are truncated
(0.0017 -> 0 instead of 2**-9), values past the largest exponent wrap (500 -> 256) and NaN
becomes 384. So the kernel has its own exact cast, :func:`fp8_bits` (integer operations on the
fp32 bits, round to nearest even, subnormals, NaN -> ``0x7F | sign`` as PyTorch), used whenever
``NATIVE_CAST`` is off: in the interpreter (tests compare its codes with PyTorch's bit for bit)
and on GPUs without FP8 conversions (before sm_89). On sm_89+ the host turns ``NATIVE_CAST`` on:
``.to(fp8)`` is then the hardware's ``cvt.rn.satfinite`` (one instruction for two values), which
gives the same codes for the saturated inputs this kernel casts (checked on the GPU by
``tests/kernels/test_rms_norm_quant.py::test_native_fp8_cast_matches_bits``; NaN's sign is
the only possible difference). ``DEBUG`` stores ``n`` (fp32, y's strides) at ``DBG``: tests
check the pre-quantisation values against ``rms_norm`` and PyTorch's quantisation of them.

Forms (host picks them with the config):

* ``ONE_PASS``: whole rows in registers (``BLOCK_D >= D``), static / per-token / power-of-two
  groups (a reshape of the tile): one read, one write.
* otherwise a first pass sums squares (the ``norm_block`` tile or chunks) and a second pass
  re-reads the row: in 2D chunks (static), in tiles of whole groups ``[ROWS, GB, GP]`` (groups
  whose padded width ``GP`` fits ``BLOCK_D``; any group size), or, for a row / group wider than a
  tile, an amax pass and a quantising pass over its chunks. ``residual`` is written in the last
  pass only, after every read of it.

Offsets: row offsets int64; column offsets ``col * stride`` fit int32 (the host checks).
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait
from .rows import chunked_factors, load_sum, normalized, row_factors, row_offsets

AMAX_FLOOR = tl.constexpr(1e-10)  #: dynamic scales are ``max(amax, AMAX_FLOOR) / qmax``
OUT_INT8 = tl.constexpr(0)
OUT_E4M3 = tl.constexpr(1)  #: float8_e4m3fn
OUT_E5M2 = tl.constexpr(2)  #: float8_e5m2


# --------------------------------------------------------------------------- scalar helpers

@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def amax_nan(v, axis: tl.constexpr):
    """``max |v|`` along ``axis``, NaN when any element is NaN (as ``torch.amax``)."""
    return tl.reduce(tl.abs(v), axis, _max_nan)


@triton.jit
def pow2_ceil(s):
    """``2**ceil(log2(s))`` exactly for positive finite fp32 ``s`` (subnormal too), from the
    bits: ``s`` itself when its mantissa is zero, else the next exponent with a zero mantissa.
    Other values (<= 0, inf, NaN) are returned unchanged."""
    sub = s < 1.1754943508222875e-38  # 2**-126: scaled into the normal range by 2**64
    t = tl.where(sub, s * 18446744073709551616.0, s)
    b = t.to(tl.int32, bitcast=True)
    up = ((b >> 23) + 1) << 23
    r = tl.where((b & 0x7FFFFF) == 0, b, up).to(tl.float32, bitcast=True)
    r = tl.where(sub, r * 5.421010862427522e-20, r)  # 2**-64
    return tl.where((s > 0.0) & (s <= 3.4028234663852886e38), r, s)


@triton.jit
def dyn_scale(amax, ub, UB: tl.constexpr, UE8M0: tl.constexpr, QMAX: tl.constexpr):
    """Dynamic scale from an amax: ``max(amax, 1e-10) / qmax`` (IEEE division), clamped to
    ``ub`` (``UB`` != 0), rounded up to a power of two (``UE8M0``). NaN stays NaN."""
    s = tl.where(amax < AMAX_FLOOR, AMAX_FLOOR, amax)
    s = tl.math.div_rn(s, tl.zeros_like(s) + QMAX)
    if UB != 0:
        s = tl.where(s > ub, ub, s)
    if UE8M0:
        s = pow2_ceil(s)
    return s


@triton.jit
def rint_small(q):
    """Round to nearest, ties to even, for ``|q| <= 2**22`` (fp32 addition of 1.5 * 2**23)."""
    return (q + 12582912.0) - 12582912.0


@triton.jit
def fp8_bits(q, MANT: tl.constexpr, BIAS: tl.constexpr, SUB_SCALE: tl.constexpr):
    """The FP8 code (int32, 0..255) of fp32 ``q`` with ``|q|`` at most the format's largest
    finite value or NaN: round to nearest even, subnormal results included, NaN ->
    ``0x7F | sign`` (PyTorch's NaN for both ``float8_e4m3fn`` and ``float8_e5m2``).
    ``MANT``/``BIAS``: mantissa bits and exponent bias; ``SUB_SCALE = 2**(BIAS - 1 + MANT)``
    (one over the subnormal step)."""
    b = q.to(tl.int32, bitcast=True)
    a = b & 0x7FFFFFFF
    sign = (b >> 24) & 0x80
    SH: tl.constexpr = 23 - MANT
    # normal results: round the mantissa to MANT bits (a carry moves into the exponent)
    r = a + ((1 << (SH - 1)) - 1) + ((a >> SH) & 1)
    normal = (r >> SH) - ((127 - BIAS) << MANT)
    # subnormal results (|q| < 2**(1 - BIAS)): rint(|q| / step), exact in fp32 (|q| * SUB_SCALE
    # is exact and below 8; adding 2**23 rounds it to an integer, ties to even)
    v = a.to(tl.float32, bitcast=True) * SUB_SCALE + 8388608.0
    sub = v.to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(a < ((128 - BIAS) << 23), sub, normal)
    code = tl.where(a > 0x7F800000, 0x7F, code)
    return code | sign


@triton.jit
def to_codes(q, out_ty: tl.constexpr, OUT: tl.constexpr, NATIVE_CAST: tl.constexpr, QMAX: tl.constexpr):
    """Saturate fp32 ``q`` to ``[-QMAX, QMAX]`` (NaN kept) and cast to the output type."""
    q = tl.where(q > QMAX, QMAX, tl.where(q < -QMAX, -QMAX, q))
    if OUT == OUT_INT8:
        return tl.where(q != q, 0.0, rint_small(q)).to(tl.int8)
    elif NATIVE_CAST:
        return q.to(out_ty)
    elif OUT == OUT_E4M3:
        return fp8_bits(q, 3, 7, 512.0).to(tl.uint8).to(out_ty, bitcast=True)
    else:
        return fp8_bits(q, 2, 15, 65536.0).to(tl.uint8).to(out_ty, bitcast=True)


# --------------------------------------------------------------------------- row pieces

@triton.jit
def _normed(s, p, q, w, HAS_WEIGHT: tl.constexpr):
    """``n`` of a re-read piece of rows: ``(s * p) * q`` (``rows.range_factors``, broadcast to ``s``'s
    shape by the caller), times ``w``."""
    n = (s * p) * q
    if HAS_WEIGHT:
        n = n * w
    return n


@triton.jit
def _row_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, LO_SUMS: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr, X, Y):
    """First pass of the two-pass forms: per row ``(p, q)`` with ``n = (s * p) * q * w``; ``p = 1``,
    ``q = rsqrt(ss / D + eps)`` from the sum of squares ``norm_block`` computes for the config
    (the whole-row tile, or chunk-wise partial sums), ``rows.range_factors`` for rows out of
    fp32's range. Reads only (see :func:`_layout_anchor`)."""
    if not CHUNKED:
        mask = row_ok[:, None] & (cols < D)[None, :]
        s = load_sum(x_row[:, None] + (cols * xsd)[None, :], r_row[:, None] + (cols * rsd)[None, :], mask,
                     HAS_RESIDUAL)
        _layout_anchor(s, X, Y, mask, eps)
        p, q, _ = row_factors(s, eps, eps_tiny, D, LO_SUMS, X.dtype.element_ty != tl.float32)
    else:
        p, q, _ = chunked_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, HAS_RESIDUAL, ROWS,
                                  BLOCK_D, 1, LO_SUMS, X.dtype.element_ty != tl.float32)
    return p, q


@triton.jit
def quant_block(block, X, R, Y, W, SC, SIN, DBG, eps, eps_tiny, LO_SUMS: tl.constexpr, w_offset, ub, n_rows, D, N1, N2,
                xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, ws, ss0, ss1, ss2, ssg, n_groups,
                HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, STATIC: tl.constexpr, GROUP: tl.constexpr,
                GP: tl.constexpr, UB: tl.constexpr, UE8M0: tl.constexpr, OUT: tl.constexpr, QMAX: tl.constexpr,
                NATIVE_CAST: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr,
                ONE_PASS: tl.constexpr, DEBUG: tl.constexpr):
    """Rows ``block*ROWS ... +ROWS``: norm, quantise, store codes (and scales, residual)."""
    rws = block * ROWS + tl.arange(0, ROWS)
    row_ok = rws < n_rows
    x_row = X + row_offsets(rws, N1, N2, xs0, xs1, xs2)
    r_row = x_row
    if HAS_RESIDUAL:
        r_row = R + row_offsets(rws, N1, N2, rs0, rs1, rs2)
    y_row = Y + row_offsets(rws, N1, N2, ys0, ys1, ys2)
    d_row = y_row
    if DEBUG:
        d_row = DBG + row_offsets(rws, N1, N2, ys0, ys1, ys2)
    s_row = SC + row_offsets(rws, N1, N2, ss0, ss1, ss2)
    cols = tl.arange(0, BLOCK_D)
    s_static = 1.0
    if STATIC:
        s_static = tl.load(SIN).to(tl.float32)
    if UB == 2:
        ub = tl.load(SIN).to(tl.float32)
    if ONE_PASS:
        col_ok = cols < D
        w = 1.0  # no weight (HAS_WEIGHT=False: never read)
        if HAS_WEIGHT:  # first, to overlap its latency (see norm_block)
            w = tl.load(W + cols * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        mask = row_ok[:, None] & col_ok[None, :]
        x_ptr = x_row[:, None] + (cols * xsd)[None, :]
        r_ptr = r_row[:, None] + (cols * rsd)[None, :]
        s = load_sum(x_ptr, r_ptr, mask, HAS_RESIDUAL)
        if HAS_RESIDUAL:  # before the factors' range branch, as rows.add_norm_block
            tl.store(r_ptr, s.to(R.dtype.element_ty), mask=mask)
        p, q, _ = row_factors(s, eps, eps_tiny, D, LO_SUMS, X.dtype.element_ty != tl.float32)
        n = normalized(s, p, q)  # as rows.add_norm_block
        if HAS_WEIGHT:
            n = n * w[None, :]
        ycols = code_cols(cols, X)
        if DEBUG:
            tl.store(d_row[:, None] + (ycols * ysd)[None, :], n, mask=mask)
        y_ptr = y_row[:, None] + (ycols * ysd)[None, :]
        if STATIC:
            qv = tl.math.div_rn(n, tl.zeros_like(n) + s_static)
        elif GROUP == 0:  # per token
            sc = dyn_scale(amax_nan(n, 1), ub, UB, UE8M0, QMAX)
            qv = tl.math.div_rn(n, tl.zeros_like(n) + sc[:, None])
            tl.store(s_row, sc, mask=row_ok)
        else:  # power-of-two groups: a [ROWS, BLOCK_D // GROUP, GROUP] view of the tile
            NGB: tl.constexpr = BLOCK_D // GROUP
            n3 = tl.reshape(n, (ROWS, NGB, GROUP))
            sc = dyn_scale(amax_nan(n3, 2), ub, UB, UE8M0, QMAX)
            q3 = tl.math.div_rn(n3, tl.zeros_like(n3) + sc[:, :, None])
            qv = tl.reshape(q3, (ROWS, BLOCK_D))
            gi = tl.arange(0, NGB)
            tl.store(s_row[:, None] + (gi.to(tl.int64) * ssg)[None, :], sc,
                     mask=row_ok[:, None] & (gi < n_groups)[None, :])
        tl.store(y_ptr, to_codes(qv, Y.dtype.element_ty, OUT, NATIVE_CAST, QMAX), mask=mask)
    else:
        p, q = _row_factors(x_row, r_row, row_ok, cols, D, xsd, rsd, eps, eps_tiny, LO_SUMS, HAS_RESIDUAL, ROWS,
                            BLOCK_D, CHUNKED, X, Y)
        p2 = p[:, None]
        q2 = q[:, None]
        if STATIC:
            for start in range(0, D, BLOCK_D):
                c = start + cols
                col_ok = c < D
                mask = row_ok[:, None] & col_ok[None, :]
                n = _reread(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask, W, c,
                            col_ok, ws, w_offset, p2, q2, HAS_RESIDUAL, HAS_WEIGHT, True)
                yc = code_cols(c, X)
                _store_codes(n, s_static, y_row[:, None] + (yc * ysd)[None, :], d_row[:, None] + (yc * ysd)[None, :],
                             mask, OUT, QMAX, NATIVE_CAST, DEBUG)
        elif GROUP > 0 and GP <= BLOCK_D:  # tiles of whole groups: [ROWS, GB, GP]
            GB: tl.constexpr = BLOCK_D // GP
            gb = tl.arange(0, GB)
            j = tl.arange(0, GP)
            p3 = p[:, None, None]
            q3 = q[:, None, None]
            for g0 in range(0, n_groups, GB):
                gi = g0 + gb
                c = gi[:, None] * GROUP + j[None, :]  # [GB, GP] columns
                cm = (gi < n_groups)[:, None] & (j < GROUP)[None, :]
                mask = row_ok[:, None, None] & cm[None, :, :]
                n = _reread(x_row[:, None, None] + (c * xsd)[None, :, :], r_row[:, None, None] + (c * rsd)[None, :, :],
                            mask, W, c, cm, ws, w_offset, p3, q3, HAS_RESIDUAL, HAS_WEIGHT, True)
                sc = dyn_scale(amax_nan(n, 2), ub, UB, UE8M0, QMAX)
                yc = gi[:, None] * GROUP + code_cols(j, X)[None, :]
                _store_codes(n, sc[:, :, None], y_row[:, None, None] + (yc * ysd)[None, :, :],
                             d_row[:, None, None] + (yc * ysd)[None, :, :], mask, OUT, QMAX, NATIVE_CAST, DEBUG)
                tl.store(s_row[:, None] + (gi.to(tl.int64) * ssg)[None, :], sc,
                         mask=row_ok[:, None] & (gi < n_groups)[None, :])
        else:  # a row (per token) or a group wider than a tile: an amax pass, then a quantising pass
            glen = D
            if GROUP > 0:
                glen = GROUP
            for gi in range(0, n_groups):
                base = gi * glen
                amax = tl.zeros([ROWS], dtype=tl.float32)
                for start in range(0, glen, BLOCK_D):
                    k = start + cols
                    c = base + k
                    col_ok = k < glen
                    mask = row_ok[:, None] & col_ok[None, :]
                    n = _reread(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask, W,
                                c, col_ok, ws, w_offset, p2, q2, HAS_RESIDUAL, HAS_WEIGHT, False)
                    amax = _max_nan(amax, amax_nan(n, 1))
                sc = dyn_scale(amax, ub, UB, UE8M0, QMAX)
                for start in range(0, glen, BLOCK_D):
                    k = start + cols
                    c = base + k
                    col_ok = k < glen
                    mask = row_ok[:, None] & col_ok[None, :]
                    n = _reread(x_row[:, None] + (c * xsd)[None, :], r_row[:, None] + (c * rsd)[None, :], mask, W,
                                c, col_ok, ws, w_offset, p2, q2, HAS_RESIDUAL, HAS_WEIGHT, True)
                    yc = base + start + code_cols(cols, X)
                    _store_codes(n, sc[:, None], y_row[:, None] + (yc * ysd)[None, :],
                                 d_row[:, None] + (yc * ysd)[None, :], mask, OUT, QMAX, NATIVE_CAST, DEBUG)
                tl.store(s_row + tl.cast(gi, tl.int64) * ssg, sc, mask=row_ok)


@triton.jit
def _reread(x_ptr, r_ptr, mask, W, c, w_mask, ws, w_offset, p, q, HAS_RESIDUAL: tl.constexpr,
            HAS_WEIGHT: tl.constexpr, WRITE_RESIDUAL: tl.constexpr):
    """``n`` of a piece of rows read again in a second pass (columns ``c``, any tile shape with the
    rows first): ``x`` (or ``x + residual``, stored back when ``WRITE_RESIDUAL``), scaled by the
    first pass's ``p``/``q`` (:func:`_normed`), times the weight's piece."""
    s = load_sum(x_ptr, r_ptr, mask, HAS_RESIDUAL)
    if HAS_RESIDUAL and WRITE_RESIDUAL:
        tl.store(r_ptr, s.to(r_ptr.dtype.element_ty), mask=mask)
    w = 1.0
    if HAS_WEIGHT:
        w = tl.expand_dims(tl.load(W + c * ws, mask=w_mask, other=0.0).to(tl.float32) + w_offset, 0)
    return _normed(s, p, q, w, HAS_WEIGHT)


@triton.jit
def _layout_anchor(s, X, Y, mask, eps):
    """A store of the first pass's tile that never happens (masked by ``eps < 0``, false for
    every call: eps >= 0 is checked on the host; the compiler cannot know it), at
    16-byte-aligned contiguous addresses in ``X``'s dtype: what ``rms_norm``'s row tile flows into
    (its new output), so Triton gives this tile ``rms_norm``'s layout and the sum of squares its
    order. Without it the tile had only the loads to go by: for rows that are not 16-byte aligned
    (a strided x), one element per thread where ``rms_norm`` has a 16-byte vector, and fp32 ``n``
    differed in the last bits (sm_90 TTGIR; an H100). ``Y`` (a new code tensor) stands in for the
    address: nothing is written."""
    ROWS: tl.constexpr = s.shape[0]
    BLOCK_D: tl.constexpr = s.shape[1]
    a = Y.to(tl.pointer_type(X.dtype.element_ty)) + (tl.arange(0, ROWS) * 0)[:, None] + tl.arange(0, BLOCK_D)[None, :]
    tl.store(a, s.to(X.dtype.element_ty), mask=mask & (eps < 0.0))


@triton.jit
def code_cols(c, X):
    """Columns ``c`` for the code (and debug) stores, equal in value, whose contiguity the compiler
    sees as at most one 16-byte load of ``X``'s elements (8 bf16/fp16, 4 fp32). Left as they
    are, the 8-bit store asks for 16 codes per thread, and where a tile has that many elements
    per thread (``ROWS * BLOCK_D > 8 * 32 * num_warps`` for bf16) Triton lays the whole row out
    that way, the sum of squares included: another summation order than ``rms_norm``'s
    (whose row layout the dispatcher keeps canonical, ``invariance.py``), so ``n`` and the
    codes would change with the config, i.e. with the call's row count (seen on an H100)."""
    V: tl.constexpr = 128 // X.dtype.element_ty.primitive_bitwidth
    return (c // V) * V + c % V


@triton.jit
def _store_codes(n, sc, y_ptr, d_ptr, mask, OUT: tl.constexpr, QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr,
                 DEBUG: tl.constexpr):
    """Store the codes of ``n / sc`` (IEEE division, saturated, cast: :func:`to_codes`) at ``y_ptr``,
    and ``n`` itself at ``d_ptr`` with ``DEBUG``."""
    if DEBUG:
        tl.store(d_ptr, n, mask=mask)
    qv = tl.math.div_rn(n, tl.zeros_like(n) + sc)
    tl.store(y_ptr, to_codes(qv, y_ptr.dtype.element_ty, OUT, NATIVE_CAST, QMAX), mask=mask)


@triton.jit
def rms_norm_quant_kernel(X, R, Y, W, SC, SIN, DBG, eps, eps_tiny, w_offset, ub, n_rows, D: tl.constexpr, N1, N2,
                          xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, ws, ss0, ss1, ss2, ssg,
                          n_groups,
                          HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, STATIC: tl.constexpr,
                          GROUP: tl.constexpr, GP: tl.constexpr, UB: tl.constexpr, UE8M0: tl.constexpr,
                          OUT: tl.constexpr, QMAX: tl.constexpr, NATIVE_CAST: tl.constexpr, ROWS: tl.constexpr,
                          BLOCK_D: tl.constexpr, CHUNKED: tl.constexpr, ONE_PASS: tl.constexpr,
                          PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False, DEBUG: tl.constexpr = False,
                          LO_SUMS: tl.constexpr = False):
    """One program per block of ROWS rows, or (PERSISTENT) a grid-stride loop over blocks.

    X ``[rows, D]`` (strides xs0..xs2 for up to three leading dims of sizes N0 x N1 x N2, xsd
    along the row), bf16/fp16/fp32; R the residual (X's shape and dtype; read and written when
    HAS_RESIDUAL); Y the codes (X's shape, int8 / fp8e4nv / fp8e5; strides ys*); W ``[D]``
    (stride ws, any float dtype; HAS_WEIGHT); SC the fp32 scales ``[rows, n_groups]`` (strides
    ss0..ss2 per row, ssg per group; dynamic only); SIN a 1-element fp32 tensor: the static scale
    (STATIC) or the scale bound (UB == 2); DBG fp32, Y's strides (DEBUG). eps, eps_tiny:
    ``reference.kernel_eps``; w_offset added to the weight; ub the scale bound when UB == 1.
    GROUP: 0 per token, else the group size (GP: next power of two); OUT: 0 int8, 1 e4m3fn,
    2 e5m2, QMAX its largest finite value; NATIVE_CAST: fp8 by Triton's cast (sm_89+) instead
    of :func:`fp8_bits`.
    """
    pdl_wait(USE_PDL)
    if PERSISTENT:
        n_blocks = tl.cdiv(n_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            quant_block(block, X, R, Y, W, SC, SIN, DBG, eps, eps_tiny, LO_SUMS, w_offset, ub, n_rows, D, N1, N2, xs0,
                        xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, ws, ss0, ss1, ss2, ssg, n_groups,
                        HAS_RESIDUAL, HAS_WEIGHT, STATIC, GROUP, GP, UB, UE8M0, OUT, QMAX, NATIVE_CAST, ROWS, BLOCK_D,
                        CHUNKED, ONE_PASS, DEBUG)
    else:
        quant_block(tl.program_id(0), X, R, Y, W, SC, SIN, DBG, eps, eps_tiny, LO_SUMS, w_offset, ub, n_rows, D, N1, N2,
                    xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, ws, ss0, ss1, ss2, ssg, n_groups,
                    HAS_RESIDUAL, HAS_WEIGHT, STATIC, GROUP, GP, UB, UE8M0, OUT, QMAX, NATIVE_CAST, ROWS, BLOCK_D,
                    CHUNKED, ONE_PASS, DEBUG)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (see rms_norm_kernel).
    pdl_launch_dependents(USE_PDL)
