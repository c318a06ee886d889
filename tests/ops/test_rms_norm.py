"""``qknorm.rms_norm`` (ops/rms_norm.py check_args):
bad input raises TypeError/ValueError naming the argument, and nothing is written."""
import pytest
import torch

import qknorm


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
