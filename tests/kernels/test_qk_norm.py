"""qk_rms_norm on strided Q/K views of a packed QKV buffer, in place and out of place."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qknorm
from helpers import DTYPES, assert_matches, packed_qkv, poisoned, randn, ref_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,hq,hkv,d", [(1, 32, 8, 128), (7, 4, 2, 64), (3, 16, 2, 256), (5, 3, 1, 80),
                                         (2, 2, 2, 111), (4, 5, 1, 96)])
def test_packed_out_of_place(impl, dtype, t, hq, hkv, d):
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    before = qkv.clone()
    qw, kw = randn((d,), torch.float32, impl), randn((d,), dtype, impl)
    qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
    rq, rk = qknorm.qk_rms_norm(q, k, qw, kw, q_out=qo, k_out=ko)
    assert rq is qo and rk is ko
    assert_matches(qo, ref_norm(q, qw), dtype, "q")
    assert_matches(ko, ref_norm(k, kw), dtype, "k")
    assert torch.equal(qkv, before), "out-of-place call modified its inputs"


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_in_place_leaves_v_alone(impl, dtype):
    qkv, q, k, v = packed_qkv(6, 8, 2, 128, dtype, impl)
    v_before = v.clone()
    ref_q, ref_k = ref_norm(q, None), ref_norm(k, None)
    rq, rk = qknorm.qk_rms_norm(q, k, None, None, q_out=q, k_out=k)
    assert rq is q and rk is k
    assert_matches(q, ref_q, dtype, "q")
    assert_matches(k, ref_k, dtype, "k")
    assert torch.equal(v, v_before), "in-place QK norm touched V"


def test_gemma_offset_and_allocated_outputs(impl):
    qkv, q, k, _ = packed_qkv(3, 4, 2, 128, torch.bfloat16, impl)
    qw, kw = randn((128,), torch.bfloat16, impl, 0.1), randn((128,), torch.bfloat16, impl, 0.1)
    qo, ko = qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, weight_offset=1.0)
    assert qo.is_contiguous() and ko.is_contiguous()
    assert_matches(qo, ref_norm(q, qw, offset=1.0), torch.bfloat16)
    assert_matches(ko, ref_norm(k, kw, offset=1.0), torch.bfloat16)


def test_separate_tensors_and_4d(impl):
    q = randn((2, 3, 4, 64), torch.float32, impl).transpose(1, 2)  # [B, H, S, D] view
    k = randn((5, 64), torch.float32, impl)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None)
    assert_matches(qo, ref_norm(q), torch.float32)
    assert_matches(ko, ref_norm(k), torch.float32)


@pytest.mark.parametrize("persistent", [False, True])
def test_configs(impl, persistent):
    qkv, q, k, _ = packed_qkv(5, 6, 3, 64, torch.float16, impl)
    for rows in (1, 2, 8):
        cfg = qknorm.KernelConfig(rows=rows, block_d=64, num_warps=2, persistent=persistent, programs_per_sm=1)
        qo, ko = poisoned(q.shape, torch.float16, impl), poisoned(k.shape, torch.float16, impl)
        qknorm.qk_rms_norm(q, k, None, None, q_out=qo, k_out=ko, config=cfg)
        assert_matches(qo, ref_norm(q), torch.float16)
        assert_matches(ko, ref_norm(k), torch.float16)


def test_chunked_head_dim(impl):
    qkv, q, k, _ = packed_qkv(2, 2, 1, 640, torch.bfloat16, impl)
    cfg = qknorm.KernelConfig(rows=1, block_d=256, num_warps=2)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None, config=cfg)
    assert_matches(qo, ref_norm(q), torch.bfloat16)
    assert_matches(ko, ref_norm(k), torch.bfloat16)


def test_empty(impl):
    qkv, q, k, _ = packed_qkv(0, 4, 2, 64, torch.bfloat16, impl)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None)
    assert qo.shape == (0, 4, 64) and ko.shape == (0, 2, 64)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(1, 6), hq=st.integers(1, 8), hkv=st.integers(1, 4),
       d=st.sampled_from([1, 2, 16, 48, 64, 80, 96, 111, 128, 256]),
       dtype=st.sampled_from(DTYPES), in_place=st.booleans(), weighted=st.booleans())
def test_random_packed_views(impl, t, hq, hkv, d, dtype, in_place, weighted):
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    v_before = v.clone()
    qw = randn((d,), torch.float32, impl) if weighted else None
    kw = randn((d,), torch.bfloat16, impl) if weighted else None
    rq, rk = ref_norm(q, qw), ref_norm(k, kw)
    if in_place:
        qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k)
        qo, ko = q, k
    else:
        qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
        qknorm.qk_rms_norm(q, k, qw, kw, q_out=qo, k_out=ko)
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_token_order(impl, persistent, weighted):
    """The token-ordered kernel: in place on packed views and into fresh outputs."""
    cfg = qknorm.KernelConfig(rows=4, block_d=128, num_warps=2, persistent=persistent, programs_per_sm=1,
                              token_order=True)
    qkv, q, k, v = packed_qkv(5, 6, 2, 96, torch.bfloat16, impl)
    v_before = v.clone()
    qw = randn((96,), torch.float32, impl) if weighted else None
    kw = randn((96,), torch.float16, impl) if weighted else None
    rq, rk = ref_norm(q, qw), ref_norm(k, kw)
    qo, ko = poisoned(q.shape, torch.bfloat16, impl), poisoned(k.shape, torch.bfloat16, impl)
    qknorm.qk_rms_norm(q, k, qw, kw, q_out=qo, k_out=ko, config=cfg)
    assert_matches(qo, rq, torch.bfloat16, "q")
    assert_matches(ko, rk, torch.bfloat16, "k")
    qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k, config=cfg)
    assert_matches(q, rq, torch.bfloat16, "q in place")
    assert_matches(k, rk, torch.bfloat16, "k in place")
    assert torch.equal(v, v_before)


def test_token_order_falls_back_on_other_shapes(impl):
    cfg = qknorm.KernelConfig(rows=2, block_d=64, num_warps=2, token_order=True)
    q = randn((2, 3, 4, 64), torch.float32, impl)
    k = randn((5, 64), torch.float32, impl)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None, config=cfg)
    assert_matches(qo, ref_norm(q), torch.float32)
    assert_matches(ko, ref_norm(k), torch.float32)
