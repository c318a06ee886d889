"""fused_add_rms_norm: residual gets the rounded sum, x the norm of the fp32 sum."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qknorm
from helpers import DTYPES, assert_matches, randn, ref_add_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 80, 111, 128, 4096, 7168])
def test_fused_add(impl, dtype, d):
    x, r = randn((3, d), dtype, impl), randn((3, d), dtype, impl, 4.0)
    w = randn((d,), torch.float32, impl)
    ref_y, ref_s = ref_add_norm(x, r, w)
    rx, rr = qknorm.fused_add_rms_norm(x, r, w)
    assert rx is x and rr is r
    assert_matches(x, ref_y, dtype, "x")
    assert_matches(r, ref_s, dtype, "residual")
    # the residual is the sum rounded once, exactly
    assert torch.equal(r.cpu(), ref_s.to(dtype))


def test_norm_uses_unrounded_sum():
    """bf16 sum rounding differs from fp32: the norm must be of the fp32 sum (checked exactly in fp32 math)."""
    x = torch.tensor([[1.0, 2.0 ** -9, 3.0, -1.5]], dtype=torch.bfloat16)
    r = torch.tensor([[256.0, 0.0, 1.0, 0.5]], dtype=torch.bfloat16)
    ref_y, _ = ref_add_norm(x, r)
    qknorm.fused_add_rms_norm(x, r)
    assert_matches(x, ref_y, torch.bfloat16)


@pytest.mark.parametrize("d", [3000, 4096])
def test_chunked_fused_add(impl, d):
    x, r = randn((2, d), torch.bfloat16, impl), randn((2, d), torch.bfloat16, impl)
    ref_y, ref_s = ref_add_norm(x, r, None, offset=0.0)
    qknorm.fused_add_rms_norm(x, r, None, config=qknorm.KernelConfig(rows=1, block_d=1024, num_warps=4))
    assert_matches(x, ref_y, torch.bfloat16)
    assert torch.equal(r.cpu(), ref_s.to(torch.bfloat16))


def test_strided_and_offset(impl):
    big_x = randn((4, 3, 256), torch.float16, impl)
    big_r = randn((3, 4, 200), torch.float16, impl)
    x = big_x[:, :, :128]
    r = big_r.transpose(0, 1)[:, :, 50:178]
    w = randn((128,), torch.float16, impl, 0.1)
    ref_y, ref_s = ref_add_norm(x, r, w, offset=1.0)
    untouched = big_x[:, :, 128:].clone()
    qknorm.fused_add_rms_norm(x, r, w, weight_offset=1.0)
    assert_matches(x, ref_y, torch.float16)
    assert_matches(r, ref_s, torch.float16)
    assert torch.equal(big_x[:, :, 128:], untouched)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 9), d=st.sampled_from([1, 16, 80, 96, 111, 500]),
       dtype=st.sampled_from(DTYPES), persistent=st.booleans())
def test_random(impl, rows, d, dtype, persistent):
    x, r = randn((rows, d), dtype, impl), randn((rows, d), dtype, impl)
    ref_y, ref_s = ref_add_norm(x, r)
    from qknorm.dispatch import next_pow2
    cfg = qknorm.KernelConfig(rows=2, block_d=next_pow2(d), num_warps=2, persistent=persistent, programs_per_sm=1)
    qknorm.fused_add_rms_norm(x, r, config=cfg)
    assert_matches(x, ref_y, dtype)
    assert_matches(r, ref_s, dtype)


OUT_CONFIGS = [None, qknorm.KernelConfig(rows=2, block_d=64, num_warps=2),  # exact tiles in registers / two-pass
               qknorm.KernelConfig(rows=4, block_d=128, num_warps=2, persistent=True, programs_per_sm=1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", OUT_CONFIGS, ids=["pick", "chunked", "persistent"])
def test_out_of_place_matches_in_place(impl, dtype, config):
    """The out-of-place kernel (the functional op's body: ``ops.fused_add.call_out``) writes two new
    contiguous tensors with the in-place call's bits and leaves x and residual as they were; strided
    inputs, widths that are and are not multiples of the tile, no weight."""
    from qknorm.ops import fused_add as add_op

    for d in (256, 290):
        base = randn((6, 3, d + 10), dtype, impl, 2.0)
        x = base[:, 1, 10:]
        r = randn((d, 6), dtype, impl).t()  # column-major residual
        for w, off in ((randn((d,), torch.float32, impl), 0.5), (None, 0.0)):
            x0, r0 = x.clone(), r.clone()
            y, s = add_op.call_out(x, r, w, 1e-6, off, config)
            assert torch.equal(x, x0) and torch.equal(r, r0), "inputs must not be written"
            assert y.is_contiguous() and s.is_contiguous() and y.shape == x.shape and s.dtype == r.dtype
            xi, ri = x0.clone(), r0.clone()
            qknorm.fused_add_rms_norm(xi, ri, w, 1e-6, weight_offset=off, config=config)
            assert torch.equal(y, xi) and torch.equal(s, ri)
    same = randn((5, 64), dtype, impl)  # x and residual may share memory: both are only read
    y, s = add_op.call_out(same, same, None, 1e-6, 0.0, None)
    ref_y, ref_s = ref_add_norm(same, same)
    assert_matches(y, ref_y, dtype, "out")
    assert_matches(s, ref_s, dtype, "residual_out")
