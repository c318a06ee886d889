"""Per-head RMSNorm of Q and K in one launch ("two segments in one grid").

Blocks ``[0, q_blocks)`` normalise Q rows, the rest K rows; each segment has its own
base pointers, strides, row count and weight, so Q and K may be strided views of one
packed QKV buffer (normalised in place) or separate tensors.
Launcher: ``ops.qk_rms_norm``; dispatcher entry: ``dispatch.choose_config("qk_rms_norm", ...)``;
test: ``tests/kernels/test_qk_norm.py``; bench case: ``qknorm bench --preset qwen3-8b``.
"""
import triton
import triton.language as tl

from .rows import norm_block


@triton.jit
def _qk_block(block, q_blocks, D, eps, w_offset,
              XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
              XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
              HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              CHUNKED: tl.constexpr):
    if block < q_blocks:
        norm_block(block, XQ, YQ, WQ, q_rows, D, qN1, qN2, qxs0, qxs1, qxs2, qxsd,
                   qys0, qys1, qys2, qysd, qws, eps, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED)
    else:
        norm_block(block - q_blocks, XK, YK, WK, k_rows, D, kN1, kN2, kxs0, kxs1, kxs2, kxsd,
                   kys0, kys1, kys2, kysd, kws, eps, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED)


@triton.jit
def qk_rms_norm_kernel(D, eps, w_offset,
                       XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                       XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                       HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                       CHUNKED: tl.constexpr, PERSISTENT: tl.constexpr):
    """Q then K blocks in one grid; PERSISTENT loops over all blocks with a grid stride."""
    q_blocks = tl.cdiv(q_rows, ROWS)
    if PERSISTENT:
        n_blocks = q_blocks + tl.cdiv(k_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            _qk_block(block, q_blocks, D, eps, w_offset,
                      XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                      XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                      HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED)
    else:
        _qk_block(tl.program_id(0), q_blocks, D, eps, w_offset,
                  XQ, YQ, WQ, q_rows, qN1, qN2, qxs0, qxs1, qxs2, qxsd, qys0, qys1, qys2, qysd, qws,
                  XK, YK, WK, k_rows, kN1, kN2, kxs0, kxs1, kxs2, kxsd, kys0, kys1, kys2, kysd, kws,
                  HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED)
