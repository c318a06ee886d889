"""qknorm.distributed.eager: autograd of the eager path, on a one-rank group (both backends).

The multi-rank versions (the backward all-reduce) are cases of ``test_multi_rank.py``.
"""
import pytest
import torch

from helpers import assert_matches, randn, ref_norm
from qknorm.distributed import qk_rms_norm_tp, rms_norm_tp


# --------------------------------------------------------------------------- autograd

def _full_grad(x, w, eps, c):
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = xr * torch.rsqrt(xr.square().mean(-1, keepdim=True) + eps) * wr
    ((y * c).sum() + (xr * xr).sum()).backward()
    return xr.grad, wr.grad


def test_autograd_matches_pytorch(one_rank, impl):
    """Gradients are recorded (never silently dropped) and equal PyTorch autograd's."""
    x, w, c = randn((2, 3, 48), torch.float32, impl), randn((48,), torch.float32, impl), \
        randn((2, 3, 48), torch.float32, impl)
    gx, gw = _full_grad(x, w, 1e-6, c)
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = rms_norm_tp(xl, wl)
    assert y.requires_grad and y.grad_fn is not None
    ((y * c).sum() + (xl * xl).sum()).backward()
    assert_matches(xl.grad, gx, torch.float32, "dx")
    assert_matches(wl.grad, gw, torch.float32, "dweight")
    # qk: grad through K only (Q's output unused), Q without grad
    k = x[0].clone().requires_grad_()
    qo, ko = qk_rms_norm_tp(randn((4, 16), torch.float32, impl), k, None, None)
    assert ko.requires_grad
    (ko * c[0]).sum().backward()
    gk, _ = _full_grad(x[0], torch.ones(48, device=impl), 1e-6, c[0])
    assert_matches(k.grad, gk - 2 * x[0], torch.float32, "dk")


def test_autograd_in_place_rules(one_rank, impl):
    """In place on a leaf that requires grad (or a view of one) fails as PyTorch's own
    in-place ops do, before anything is written; ``out=`` does not support autograd."""
    leaf = randn((4, 32), torch.float32, impl).requires_grad_()
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        rms_norm_tp(leaf, None, out=leaf)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        qk_rms_norm_tp(leaf[:, :16], leaf[:, 16:], None, None, q_out=leaf[:, :16], k_out=leaf[:, 16:])
    with pytest.raises(RuntimeError, match=r"out=\.\.\. arguments don't support automatic differentiation"):
        rms_norm_tp(leaf, None, out=torch.empty(4, 32, device=impl))
    assert torch.equal(leaf.detach(), before)
    with torch.no_grad():  # allowed without grad mode, as for PyTorch's ops
        rms_norm_tp(leaf, None, out=leaf)
    assert_matches(leaf.detach(), ref_norm(before), torch.float32)
    # in place on a non-leaf: recorded like any in-place op
    w = randn((32,), torch.float32, impl).requires_grad_()
    x = randn((4, 32), torch.float32, impl)
    h = x * 1.0
    y = rms_norm_tp(h, w, out=h)
    assert y is h and h.grad_fn is not None
    h.sum().backward()
    _, gw = _full_grad(x, w, 1e-6, torch.ones_like(x))
    assert_matches(w.grad, gw, torch.float32, "dweight")


def test_backward_after_an_input_was_written_in_place_is_refused(one_rank, impl):
    """The backward needs x and the weight as they were: written in place after the forward, autograd's version
    check refuses it, as for PyTorch's own ops (the saved tensors were kept as attributes and the new values
    differentiated, silently wrong)."""
    a = randn((3, 32), torch.float32, impl).requires_grad_()
    x = a * 1.0
    y = rms_norm_tp(x, None)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    w = randn((32,), torch.float32, impl).requires_grad_()
    y = rms_norm_tp(a * 1.0, w)
    with torch.no_grad():
        w.mul_(3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    q, k = a * 1.0, randn((3, 16), torch.float32, impl).requires_grad_() * 1.0
    qo, ko = qk_rms_norm_tp(q, k, None, None)
    k.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (qo.sum() + ko.sum()).backward()


def test_huge_int_scalars_are_value_errors(one_rank, impl):
    """eps or weight_offset of 10**400 (past float's range) raised OverflowError, which ``check=True`` does not
    pass to the other ranks (they fell out of step): a ValueError naming the argument, nothing written."""
    x = randn((3, 32), torch.float32, impl)
    before = x.clone()
    for kw in (dict(eps=10**400), dict(eps=-10**400), dict(weight_offset=10**400)):
        for check in (False, True):
            with pytest.raises(ValueError, match="eps|weight_offset"):
                rms_norm_tp(x, randn((32,), torch.float32, impl), out=x, check=check, **kw)
            with pytest.raises(ValueError, match="eps|weight_offset"):
                qk_rms_norm_tp(x[:, :16], x[:, 16:], None, None, check=check, **kw)
    assert torch.equal(x, before)
