"""``qknorm.fused_add_rms_norm`` (ops/fused_add.py check_args):
bad input raises TypeError/ValueError naming the argument, and nothing is written."""
import pytest
import torch

import qknorm


def _snap(*ts):
    return [t.clone() for t in ts]


def _unchanged(before, *ts):
    return all(torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()) for a, b in zip(before, ts))


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
