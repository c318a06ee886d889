"""Per-head RMSNorm of Q and K in one launch ("two segments in one grid").

Blocks ``[0, q_blocks)`` normalise Q rows, the rest K rows; each segment has its own
base pointers, strides, row count and weight, so Q and K may be strided views of one
packed QKV buffer (normalised in place) or separate tensors.
Launcher: ``ops/qk_norm.py``; dispatcher entry: ``dispatch.choose_config("qk_rms_norm", ...)``;
test: ``tests/kernels/test_qk_norm.py``; bench case: ``qknorm bench --preset qwen3-8b``.
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait

from .rows import in_range, norm_block, row_normalized, split_rows


@triton.jit
def _qk_block(block, q_blocks, D, eps, eps_tiny, w_offset,
              XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
              XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
              HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              CHUNKED: tl.constexpr, LO_SUMS: tl.constexpr, RANGE_BRANCH: tl.constexpr):
    if block < q_blocks:
        norm_block(block, XQ, YQ, WQ, q_rows, D, qN1, qN2, qxs0, qxs1, qxs2, qxsd,
                   qys0, qys1, qys2, qysd, qws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED,
                   LO_SUMS, RANGE_BRANCH)
    else:
        norm_block(block - q_blocks, XK, YK, WK, k_rows, D, kN1, kN2, kxs0, kxs1, kxs2, kxsd,
                   kys0, kys1, kys2, kysd, kws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED,
                   LO_SUMS, RANGE_BRANCH)


@triton.jit
def qk_rms_norm_kernel(XQ, YQ, WQ, XK, YK, WK, eps, eps_tiny, w_offset, D: tl.constexpr,
                       q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                       k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                       HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                       CHUNKED: tl.constexpr, PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                       LO_SUMS: tl.constexpr = False, RANGE_BRANCH: tl.constexpr = False):
    """Q then K blocks in one grid; PERSISTENT loops over all blocks with a grid stride."""
    pdl_wait(USE_PDL)
    q_blocks = tl.cdiv(q_rows, ROWS)
    if PERSISTENT:
        n_blocks = q_blocks + tl.cdiv(k_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            _qk_block(block, q_blocks, D, eps, eps_tiny, w_offset,
                      XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                      XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                      HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED, LO_SUMS, RANGE_BRANCH)
    else:
        _qk_block(tl.program_id(0), q_blocks, D, eps, eps_tiny, w_offset,
                  XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                  XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                  HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED, LO_SUMS, RANGE_BRANCH)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (it measured 40% slower at 16k tokens).
    pdl_launch_dependents(USE_PDL)



@triton.jit
def _tokens_block(block, D, eps, eps_tiny, n_rows, H, HQ, wq, wk,
                  XQ, YQ, qxt, qxh, qyt, qyh, XK, YK, kxt, kxh, kyt, kyh,
                  HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, LO_SUMS: tl.constexpr,
                  RANGE_BRANCH: tl.constexpr):
    rows = block * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    t, h = split_rows(rows, H)
    t = t.to(tl.int64)
    h = h.to(tl.int32)
    is_q = h < HQ
    hq = h.to(tl.int64)
    hk = hq - HQ
    # Q rows and K rows are read and written by two masked accesses each, not one access through a
    # per-row select of the two base pointers: Triton cannot prove a selected pointer 16-byte aligned, so
    # that form compiled to 2-byte loads and stores (sm_90 SASS: LDG.E.U16, 1760 instructions for a
    # 32x128 bf16 tile; 16-byte LDG.E.128 this way). A masked-off lane issues no memory access.
    hk = tl.where(is_q, 0, hk)  # K offsets of Q rows stay in range (never accessed)
    hq = tl.where(is_q, hq, 0)
    cols = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (cols < D)[None, :]
    mq = mask & is_q[:, None]
    mk = mask & (~is_q)[:, None]
    xq = tl.load((XQ + t * qxt + hq * qxh)[:, None] + cols[None, :], mask=mq, other=0.0)
    xk = tl.load((XK + t * kxt + hk * kxh)[:, None] + cols[None, :], mask=mk, other=0.0)
    x = tl.where(is_q[:, None], xq.to(tl.float32), xk.to(tl.float32))
    y = row_normalized(x, eps, eps_tiny, D, LO_SUMS, YQ.dtype.element_ty != tl.float32, in_range(XQ, XK),
                       RANGE_BRANCH)
    if HAS_WEIGHT:
        y = tl.where(is_q[:, None], y * wq[None, :], y * wk[None, :])
    y = y.to(YQ.dtype.element_ty)
    tl.store((YQ + t * qyt + hq * qyh)[:, None] + cols[None, :], y, mask=mq)
    tl.store((YK + t * kyt + hk * kyh)[:, None] + cols[None, :], y, mask=mk)


@triton.jit
def qk_rms_norm_tokens_kernel(XQ, YQ, WQ, XK, YK, WK, eps, eps_tiny, w_offset, D: tl.constexpr,
                              n_tokens, HQ, qxt, qxh, qyt, qyh, qws,
                              HK, kxt, kxh, kyt, kyh, kws,
                              HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                              PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False, LO_SUMS: tl.constexpr = False,
                              RANGE_BRANCH: tl.constexpr = False):
    """Token-ordered form for Q ``[T, HQ, D]`` and K ``[T, HK, D]`` with unit last-dim
    strides: flat row r is head ``r % (HQ+HK)`` of token ``r // (HQ+HK)``, a Q head below
    HQ, else a K head.

    Blocks sweep a packed QKV buffer in address order (Q and K of a token together)
    instead of all of Q and then all of K, which keeps DRAM access sequential at large T.
    Rows must fit one register tile (no chunked form).
    """
    pdl_wait(USE_PDL)
    H = HQ + HK
    n_rows = n_tokens * H
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    wq = tl.zeros([BLOCK_D], dtype=tl.float32)
    wk = wq
    if HAS_WEIGHT:
        wq = tl.load(WQ + cols * qws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        wk = tl.load(WK + cols * kws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
    if PERSISTENT:
        for block in range(tl.program_id(0), tl.cdiv(n_rows, ROWS), tl.num_programs(0)):
            _tokens_block(block, D, eps, eps_tiny, n_rows, H, HQ, wq, wk,
                          XQ, YQ, qxt, qxh, qyt, qyh, XK, YK, kxt, kxh, kyt, kyh, HAS_WEIGHT, ROWS, BLOCK_D, LO_SUMS,
                          RANGE_BRANCH)
    else:
        _tokens_block(tl.program_id(0), D, eps, eps_tiny, n_rows, H, HQ, wq, wk,
                      XQ, YQ, qxt, qxh, qyt, qyh, XK, YK, kxt, kxh, kyt, kyh, HAS_WEIGHT, ROWS, BLOCK_D, LO_SUMS,
                      RANGE_BRANCH)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (it measured 40% slower at 16k tokens).
    pdl_launch_dependents(USE_PDL)
