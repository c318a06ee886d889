"""Tensors past 2**31 elements: offsets must be computed in int64 (GPU only: ~4.5 GB each)."""
import pytest
import torch

import qknorm
from helpers import assert_matches, ref_norm

pytestmark = pytest.mark.gpu


def test_rms_norm_past_int32_offsets():
    d = 4096
    rows = 2**31 // d + 64
    x = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(d, device="cuda", dtype=torch.bfloat16)
    tail = x[-80:].clone()
    qknorm.rms_norm(x, w, out=x)
    assert_matches(x[-80:], ref_norm(tail, w), torch.bfloat16, "rows past 2**31 elements")
    del x


def test_qk_norm_past_int32_offsets():
    hq, hkv, d = 32, 8, 128
    width = (hq + 2 * hkv) * d
    t = 2**31 // width + 64
    qkv = torch.randn(t, width, device="cuda", dtype=torch.bfloat16)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d: (hq + hkv) * d].view(t, hkv, d)
    q_tail, k_tail, v_tail = q[-70:].clone(), k[-70:].clone(), qkv[-70:, (hq + hkv) * d:].clone()
    qknorm.qk_rms_norm(q, k, None, None, q_out=q, k_out=k)
    assert_matches(q[-70:], ref_norm(q_tail), torch.bfloat16, "q")
    assert_matches(k[-70:], ref_norm(k_tail), torch.bfloat16, "k")
    assert torch.equal(qkv[-70:, (hq + hkv) * d:], v_tail)
