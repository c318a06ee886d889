"""Bad input raises TypeError/ValueError naming the argument, and nothing is written."""
import pytest
import torch

import qknorm
from helpers import packed_qkv


def _snap(*ts):
    return [t.clone() for t in ts]


def _unchanged(before, *ts):
    return all(torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()) for a, b in zip(before, ts))


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w, o: qknorm.rms_norm(x.int(), None), TypeError, "x must be bfloat16"),
    (lambda x, w, o: qknorm.rms_norm(x, w[:5]), ValueError, r"weight must have shape \(64,\)"),
    (lambda x, w, o: qknorm.rms_norm(x, w.int()), TypeError, "weight must be a floating"),
    (lambda x, w, o: qknorm.rms_norm(x, w, out=o[:, :32]), ValueError, "out must have the shape"),
    (lambda x, w, o: qknorm.rms_norm(x, w, out=o.half()), TypeError, "out must have the dtype"),
    (lambda x, w, o: qknorm.rms_norm(x, w, eps=-1.0), ValueError, "eps must be"),
    (lambda x, w, o: qknorm.rms_norm(x, None, weight_offset=1.0), ValueError, "weight_offset=1.0 needs a weight"),
    (lambda x, w, o: qknorm.rms_norm(torch.tensor(1.0), None), ValueError, "at least 1 dimension"),
    (lambda x, w, o: qknorm.rms_norm([1.0], None), TypeError, "x must be a torch.Tensor"),
])
def test_rms_norm_errors(call, exc, match):
    x = torch.randn(4, 64)
    w = torch.randn(64)
    o = torch.full((4, 64), float("nan"))
    before = _snap(x, w, o)
    with pytest.raises(exc, match=match):
        call(x, w, o)
    assert _unchanged(before, x, w, o)


def test_out_partially_overlapping_input():
    buf = torch.randn(5, 64)
    x = buf[:4]
    before = buf.clone()
    with pytest.raises(ValueError, match="out partially overlaps x"):
        qknorm.rms_norm(x, None, out=buf[1:])
    assert torch.equal(buf, before)


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


def test_fused_add_errors():
    x, r = torch.randn(3, 64), torch.randn(3, 64)
    before = _snap(x, r)
    with pytest.raises(ValueError, match="residual must have the shape"):
        qknorm.fused_add_rms_norm(x, r[:2])
    with pytest.raises(TypeError, match="residual must have the dtype"):
        qknorm.fused_add_rms_norm(x, r.half())
    with pytest.raises(ValueError, match="x and residual overlap"):
        qknorm.fused_add_rms_norm(x, x)
    assert _unchanged(before, x, r)


@pytest.mark.gpu
def test_device_mismatch():
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(ValueError, match="weight is on cpu but x is on cuda"):
        qknorm.rms_norm(x, torch.randn(64))
    qkv, q, k, _ = packed_qkv(2, 2, 1, 64, torch.float32, "cuda")
    with pytest.raises(ValueError, match="k is on cpu but q is on cuda"):
        qknorm.qk_rms_norm(q, k.cpu(), None, None)


def test_backend_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with qknorm.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            qknorm.rms_norm(torch.randn(2, 8))


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        qknorm.set_backend("cuda")
