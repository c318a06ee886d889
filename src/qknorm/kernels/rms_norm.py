"""RMSNorm over the last dim of a strided tensor: ``y = x / sqrt(mean(x^2) + eps) * (w + offset)``.

Launcher: ``ops/rms_norm.py``; dispatcher entry: ``dispatch.choose_config("rms_norm", ...)``;
test: ``tests/kernels/test_rms_norm.py``; bench case: ``qknorm bench --preset llama3-70b``.
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait

from .rows import norm_block


@triton.jit
def rms_norm_kernel(X, Y, W, eps, eps_tiny, w_offset, n_rows, D: tl.constexpr, N1, N2,
                    xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd, ws,
                    HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                    CHUNKED: tl.constexpr, PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                    LO_SUMS: tl.constexpr = False, RANGE_BRANCH: tl.constexpr = False):
    """One program per block of ROWS rows, or (PERSISTENT) a grid-stride loop over blocks."""
    pdl_wait(USE_PDL)
    if PERSISTENT:
        n_blocks = tl.cdiv(n_rows, ROWS)
        for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
            norm_block(block, X, Y, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, ys0, ys1, ys2, ysd,
                       ws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED, LO_SUMS,
                       RANGE_BRANCH)
    else:
        norm_block(tl.program_id(0), X, Y, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd,
                   ys0, ys1, ys2, ysd, ws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D, CHUNKED, LO_SUMS,
                   RANGE_BRANCH)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (it measured 40% slower at 16k tokens).
    pdl_launch_dependents(USE_PDL)
