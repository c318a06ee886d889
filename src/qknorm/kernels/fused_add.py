"""Fused residual add + RMSNorm: ``residual += x; x = norm(residual)`` in place
(``fused_add_rms_norm_kernel``), or into two other tensors, the inputs left as they are
(``fused_add_rms_norm_out_kernel``: ``residual_out = x + residual; out = norm(residual_out)``,
the functional custom op's body).

The norm is taken of the fp32 sum; ``residual`` (``residual_out``) stores that sum rounded once.
Launcher: ``ops/fused_add.py``; dispatcher entry:
``dispatch.choose_config("fused_add_rms_norm", ...)``; test: ``tests/kernels/test_fused_add.py``;
bench case: ``qknorm bench --preset llama3-70b``.
"""
import triton
import triton.language as tl

from .pdl import pdl_launch_dependents, pdl_wait
from .rows import add_norm_program


@triton.jit
def fused_add_rms_norm_kernel(X, R, W, eps, eps_tiny, w_offset, n_rows, D: tl.constexpr, N1, N2,
                              xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ws,
                              HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                              CHUNKED: tl.constexpr, PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                              LO_SUMS: tl.constexpr = False, RANGE_BRANCH: tl.constexpr = False):
    """In place (the outputs are the inputs). One program per block of ROWS rows, or
    (PERSISTENT) a grid-stride loop over blocks."""
    pdl_wait(USE_PDL)
    add_norm_program(X, R, X, R, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd,
                     xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D,
                     CHUNKED, PERSISTENT, LO_SUMS, RANGE_BRANCH)
    # After the work: a dependent kernel launched earlier would hold SM slots while
    # this grid still has blocks to run (it measured 40% slower at 16k tokens).
    pdl_launch_dependents(USE_PDL)


@triton.jit
def fused_add_rms_norm_out_kernel(X, R, Y, RO, W, eps, eps_tiny, w_offset, n_rows, D: tl.constexpr, N1, N2,
                                  xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd, ys0, ys1, ys2, ysd, os0, os1, os2, osd,
                                  ws, HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                                  CHUNKED: tl.constexpr, PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr = False,
                                  LO_SUMS: tl.constexpr = False, RANGE_BRANCH: tl.constexpr = False):
    """Out of place (Y, RO share no memory with X, R): as ``fused_add_rms_norm_kernel``."""
    pdl_wait(USE_PDL)
    add_norm_program(X, R, Y, RO, W, n_rows, D, N1, N2, xs0, xs1, xs2, xsd, rs0, rs1, rs2, rsd,
                     ys0, ys1, ys2, ysd, os0, os1, os2, osd, ws, eps, eps_tiny, w_offset, HAS_WEIGHT, ROWS, BLOCK_D,
                     CHUNKED, PERSISTENT, LO_SUMS, RANGE_BRANCH)
    pdl_launch_dependents(USE_PDL)
