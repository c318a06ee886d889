"""``qknorm.qk_rms_norm`` (ops/qk_norm.py check_args):
bad input raises TypeError/ValueError naming the argument, and nothing is written."""
import pytest
import torch

import qknorm
from helpers import packed_qkv


def test_qk_errors_name_arguments():
    qkv, q, k, v = packed_qkv(3, 4, 2, 64, torch.bfloat16, "cpu")
    before = qkv.clone()
    w = torch.randn(64)
    cases = [
        (lambda: qknorm.qk_rms_norm(q, k.float(), w, w), TypeError, "q and k must have the same dtype"),
        (lambda: qknorm.qk_rms_norm(q, k[..., :32], w, w), ValueError, "same head_dim.*q has 64, k has 32"),
        (lambda: qknorm.qk_rms_norm(q, k, w, None), ValueError, "both be tensors or both be None"),
        (lambda: qknorm.qk_rms_norm(q, k, w, w[:63]), ValueError, r"k_weight must have shape \(64,\)"),
        (lambda: qknorm.qk_rms_norm(q, k, w, w, q_out=q, k_out=q[:, :2]), ValueError, "overlap"),
        (lambda: qknorm.qk_rms_norm(q, k, w, w, q_out=k.new_empty(q.shape), k_out=q[:, 1:3]),
         ValueError, "k_out and q overlap"),
        (lambda: qknorm.qk_rms_norm(q, q[:, :2], w, w, q_out=q, k_out=q[:, :2]), ValueError, "overlap"),
        (lambda: qknorm.qk_rms_norm(q, k, w, w, k_out=torch.empty(3, 2, 64)), TypeError, "k_out must have the dtype"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
        assert torch.equal(qkv, before), f"written on error: {match}"
