"""kernels/rows.py's form for rows out of fp32's range, watched in the interpreter: which programs reduce the
``2**-72`` squares (``rows.hi_sum``). One-warp tiles of several rows (``RANGE_BRANCH``) do so only in a program
holding a row out of range; tiles over several warps sum them in every program (the parallel form). Results are
checked against the fp64 reference in each form (every form gives the same bits: tests/test_adversarial.py)."""
import os

import pytest
import torch

import qknorm
from helpers import ref_add_norm, ref_norm, assert_matches

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("counts calls inside kernels: the Triton interpreter only", allow_module_level=True)


import triton.language as tl  # noqa: E402,F401  (the interpreter wants it visible to a jit'd function)

from qknorm.kernels import rows  # noqa: E402
from qknorm.ops import fused_add as fused_add_op  # noqa: E402

CALLS = []  # one entry per program that reduced the 2**-72 squares
_hi_sum = rows.hi_sum


@triton.jit
def _counted_hi_sum(x):
    CALLS.append(1)
    return _hi_sum(x)


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(rows, "hi_sum", _counted_hi_sum)
    CALLS.clear()
    with qknorm.use_backend("triton"):
        yield CALLS


def _ops(x, cfg, qk_order=False):
    """Each plain op on ``x`` ``[12, 64]`` (three tiles of 4 rows) under ``cfg``, checked against fp64."""
    eps = 1e-6
    assert_matches(qknorm.rms_norm(x, None, eps, config=cfg), ref_norm(x, None, eps), x.dtype)
    xa, r = x.clone(), x.flip(0).clone()
    qknorm.fused_add_rms_norm(xa, r, None, eps, config=cfg)
    assert_matches(xa, ref_add_norm(x, x.flip(0), None, eps)[0], x.dtype)
    y, s = fused_add_op.call_out(x, x.flip(0), None, eps, 0.0, cfg)  # the functional op's kernel
    assert_matches(y, ref_add_norm(x, x.flip(0), None, eps)[0], x.dtype)
    q, k = x.view(2, 6, 64)[:, :4], x.view(2, 6, 64)[:, 4:]  # Q 4 heads, K 2 heads of one packed buffer
    kcfg = qknorm.KernelConfig(rows=cfg.rows, block_d=cfg.block_d, num_warps=cfg.num_warps, token_order=qk_order)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None, eps, config=kcfg)
    assert_matches(qo, ref_norm(q, None, eps), x.dtype)
    assert_matches(ko, ref_norm(k, None, eps), x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("qk_order", [False, True])
def test_one_warp_tiles_sum_the_scaled_squares_only_where_a_row_is_out_of_range(counted, dtype, qk_order):
    x = torch.randn(12, 64).to(dtype)
    _ops(x, qknorm.KernelConfig(rows=4, block_d=64, num_warps=1), qk_order)
    assert counted == [], "one-warp tiles of ordinary rows reduced the scaled squares"
    x[5] *= 1e20  # out of range: the second tile of 4 rows (rms_norm); the QK tiles holding it
    _ops(x, qknorm.KernelConfig(rows=4, block_d=64, num_warps=1), qk_order)
    # rms_norm, fused add, its out-of-place kernel: the one tile holding row 5 (the flip puts it at row 6,
    # the same tile); QK: one tile of Q or K
    assert len(counted) == 4, counted
    counted.clear()
    _ops(torch.randn(12, 64).to(dtype), qknorm.KernelConfig(rows=4, block_d=64, num_warps=2), qk_order)
    assert len(counted) == 12, "tiles over two warps: the parallel sum in every program (3 tiles x 4 kernels)"
