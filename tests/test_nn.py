"""qknorm.nn: RMSNorm as a drop-in for torch.nn.RMSNorm, QKNorm against per-head references.

Runs on every (device, backend) pair of the ``impl`` fixture: the PyTorch path and, on a
CPU, the Triton kernels in the interpreter.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qknorm.nn import QKNorm, RMSNorm, default_eps
from helpers import assert_matches, packed_qkv, ref_norm

DT = [torch.float32, torch.bfloat16, torch.float16]


def _pair(shape, eps, affine, device, dtype=torch.float32):
    ours = RMSNorm(shape, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
    theirs = torch.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
    if affine:
        with torch.no_grad():
            w = torch.rand(theirs.weight.shape, generator=torch.Generator().manual_seed(3)) + 0.5
            theirs.weight.copy_(w)
            ours.weight.copy_(w)
    return ours, theirs


@pytest.mark.parametrize("eps", [None, 1e-6, 1e-2])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_matches_torch_fp32(impl, eps, affine):
    ours, theirs = _pair(96, eps, affine, impl)
    x = torch.randn(4, 5, 96).to(impl)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_matches_torch_half(impl, dtype):
    ours, theirs = _pair(256, None, True, impl, dtype)
    x = torch.randn(8, 256).to(dtype).to(impl)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.dtype == b.dtype == dtype
    # torch rounds before the weight multiply, qknorm after it: about one ulp apart
    torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2 if dtype == torch.bfloat16 else 2e-3, atol=1e-2)


def test_eps_none_follows_installed_torch(impl):
    """Tiny inputs make eps dominate: eps=None must be the value torch.nn.RMSNorm uses."""
    ours, theirs = _pair(32, None, False, impl)
    x = (torch.randn(3, 32) * 1e-4).to(impl)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    for dt in (torch.bfloat16, torch.float16):
        xs = torch.full((1, 1), 1e-3, dtype=dt)
        want = torch.nn.functional.rms_norm(xs, (1,), None, None).float()
        got = torch.nn.functional.rms_norm(xs, (1,), None, default_eps(dt)).float()
        torch.testing.assert_close(got, want)
        other = torch.finfo(dt).eps if default_eps(dt) != torch.finfo(dt).eps else torch.finfo(torch.float32).eps
        assert not torch.allclose(torch.nn.functional.rms_norm(xs, (1,), None, other).float(), want)


def test_multi_dim_normalized_shape(impl):
    ours, theirs = _pair((4, 24), 1e-5, True, impl)
    x = torch.randn(2, 3, 4, 24).to(impl)
    with torch.no_grad():
        y = ours(x)
        assert y.shape == x.shape
        torch.testing.assert_close(y, theirs(x), rtol=2e-6, atol=2e-6)
        xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, trailing dims not viewable
        with pytest.raises(ValueError, match="cannot be flattened without a copy"):
            ours(xt)
        with pytest.raises(ValueError, match="does not end with normalized_shape"):
            ours(torch.randn(2, 4, 23).to(impl))


def test_state_dict_round_trips(impl):
    theirs = torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2.0)
    ours = RMSNorm(64, eps=1e-6)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.weight, theirs.weight)
    back = torch.nn.RMSNorm(64, eps=1e-6)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(back.weight, theirs.weight)
    # no affine: empty state on both sides
    assert RMSNorm(64, elementwise_affine=False).state_dict().keys() == \
        torch.nn.RMSNorm(64, elementwise_affine=False).state_dict().keys()
    # a model built with torch's norm loads into the same model built with ours
    mk = lambda cls: torch.nn.Sequential(torch.nn.Linear(8, 64), cls(64, eps=1e-6))  # noqa: E731
    a, b = mk(torch.nn.RMSNorm), mk(RMSNorm)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(b.to(impl)(x.to(impl)), a.to(impl)(x.to(impl)), rtol=2e-6, atol=2e-6)


def test_constructor_matches_torch():
    m = RMSNorm([2, 3], eps=None, elementwise_affine=True, device="cpu", dtype=torch.float64)
    t = torch.nn.RMSNorm([2, 3])
    assert m.normalized_shape == t.normalized_shape == (2, 3)
    assert m.weight.dtype == torch.float64 and torch.equal(m.weight, torch.ones(2, 3, dtype=torch.float64))
    assert m.eps is None
    assert "(2, 3), eps=None, elementwise_affine=True" in repr(m)
    x = torch.randn(4, 2, 3, dtype=torch.float64)  # float64: torch's own op, same semantics
    with torch.no_grad():
        torch.testing.assert_close(m(x), t.double()(x))
    with pytest.raises(ValueError):
        RMSNorm(0)
    with pytest.raises(ValueError, match="weight_offset needs elementwise_affine"):
        RMSNorm(8, elementwise_affine=False, weight_offset=1.0)


def test_weight_offset_gemma(impl):
    m = RMSNorm(64, eps=1e-6, weight_offset=1.0, device=impl)
    assert torch.equal(m.weight.cpu(), torch.zeros(64)), "a fresh Gemma-style norm scales by 1 + 0"
    with torch.no_grad():
        m.weight.uniform_(-0.5, 0.5)
        x = torch.randn(3, 64).to(impl)
        assert_matches(m(x), ref_norm(x, m.weight, 1e-6, 1.0), torch.float32)


def test_autograd_falls_back_to_differentiable_math(impl):
    ours, theirs = _pair(48, 1e-6, True, impl)
    x1 = torch.randn(4, 48, device=impl, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ours(x1).square().sum().backward()
    theirs(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-5)


def _qk_ref(q, k, qw, kw, eps, off=0.0):
    return ref_norm(q, qw, eps, off), ref_norm(k, kw, eps, off)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qknorm_matches_reference(impl, in_place, dtype):
    m = QKNorm(64, eps=1e-6, device=impl).requires_grad_(False)
    with torch.no_grad():
        m.q_weight.uniform_(0.5, 1.5)
        m.k_weight.uniform_(0.5, 1.5)
    qkv, q, k, v = packed_qkv(5, 4, 2, 64, dtype, impl, torch.Generator().manual_seed(0))
    rq, rk = _qk_ref(q, k, m.q_weight, m.k_weight, 1e-6)
    v_before = v.clone()
    qo, ko = m(q, k, in_place=in_place)
    assert (qo is q and ko is k) == in_place
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    assert torch.equal(v, v_before)


def test_qknorm_equals_two_torch_rmsnorms(impl):
    qn, kn = torch.nn.RMSNorm(64, eps=1e-6), torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        qn.weight.uniform_(0.5, 1.5)
        kn.weight.uniform_(0.5, 1.5)
    m = QKNorm.from_norms(qn, kn).to(impl).requires_grad_(False)
    q, k = torch.randn(3, 8, 64), torch.randn(3, 2, 64)
    with torch.no_grad():
        a, b = m(q.to(impl), k.to(impl))
        torch.testing.assert_close(a.cpu(), qn(q), rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(b.cpu(), kn(k), rtol=2e-6, atol=2e-6)


def test_qknorm_gemma_offset_and_state_dict(impl):
    m = QKNorm(32, eps=1e-6, weight_offset=1.0)
    assert set(m.state_dict()) == {"q_weight", "k_weight"}
    assert torch.equal(m.q_weight, torch.zeros(32))

    class Attn(torch.nn.Module):  # a Hugging Face style attention block's norms
        def __init__(self):
            super().__init__()
            self.q_norm = torch.nn.RMSNorm(32, eps=1e-6)
            self.k_norm = torch.nn.RMSNorm(32, eps=1e-6)

    class Ours(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qk_norm = QKNorm(32, eps=1e-6, weight_offset=1.0)

    src = torch.nn.ModuleDict({"attn": Attn()})
    with torch.no_grad():
        src.attn.q_norm.weight.uniform_(-0.3, 0.3)
        src.attn.k_norm.weight.uniform_(-0.3, 0.3)
    dst = torch.nn.ModuleDict({"attn": Ours()})
    sd = QKNorm.remap_state_dict(src.state_dict())
    assert set(sd) == {"attn.qk_norm.q_weight", "attn.qk_norm.k_weight"}
    dst.load_state_dict(sd, strict=True)
    q, k = torch.randn(2, 4, 32).to(impl), torch.randn(2, 1, 32).to(impl)
    dst = dst.to(impl).requires_grad_(False)
    a, b = dst.attn.qk_norm(q, k)
    rq, rk = _qk_ref(q, k, src.attn.q_norm.weight, src.attn.k_norm.weight, 1e-6, 1.0)
    assert_matches(a, rq, torch.float32)
    assert_matches(b, rk, torch.float32)


def test_qknorm_autograd_and_errors():
    m = QKNorm(16)
    q = torch.randn(2, 3, 16, requires_grad=True)
    k = torch.randn(2, 1, 16)
    a, b = m(q, k)
    (a.sum() + b.sum()).backward()
    assert q.grad is not None and m.q_weight.grad is not None
    with pytest.raises(RuntimeError, match=r"in_place=True\) cannot record autograd"):
        m(q, k, in_place=True)
    with pytest.raises(ValueError):
        QKNorm(0)
    with pytest.raises(ValueError, match="pass eps="):
        QKNorm.from_norms(torch.nn.RMSNorm(8, eps=1e-5), torch.nn.RMSNorm(8, eps=1e-6))


def test_constructor_refuses_loose_arguments():
    """Sizes that are not ints, a string shape, a non-number or huge weight_offset: TypeError/ValueError naming
    the argument (they became (8,), (1, 6), or an OverflowError), for RMSNorm and QKNorm alike."""
    for bad, exc in ((8.5, TypeError), ((8.5,), TypeError), ("16", TypeError), (True, TypeError), ((0,), ValueError)):
        with pytest.raises(exc, match="normalized_shape"):
            RMSNorm(bad)
    for cls in (RMSNorm, QKNorm):
        for bad, exc in (("1", TypeError), (True, TypeError), (10**400, ValueError), (float("nan"), ValueError)):
            with pytest.raises(exc, match="weight_offset"):
                cls(16, weight_offset=bad)
    assert RMSNorm(np.int64(16)).normalized_shape == RMSNorm(torch.Size([16])).normalized_shape == (16,)


def test_qknorm_checks_head_dim_and_takes_float64_in_every_mode():
    """QKNorm without weights refused nothing (a head_dim of 8 went through a QKNorm(16)); float64 raised under
    no_grad but ran in fp32 under grad. Now: the width is checked, and float64 runs PyTorch's own rms_norm in
    float64 either way (as RMSNorm does), in place too."""
    m = QKNorm(16, elementwise_affine=False)
    with pytest.raises(ValueError, match="head_dim 16"):
        m(torch.randn(2, 4, 8), torch.randn(2, 2, 8))
    m = QKNorm(16)
    q, k = torch.randn(5, 4, 16, dtype=torch.float64), torch.randn(5, 2, 16, dtype=torch.float64)
    want = (F.rms_norm(q, (16,), None, 1e-6), F.rms_norm(k, (16,), None, 1e-6))
    with torch.no_grad():
        got = m(q, k)
    assert got[0].dtype == torch.float64 and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    qg = q.clone().requires_grad_()
    got = m(qg, k)
    assert torch.equal(got[0], want[0]) and got[0].requires_grad
    got[0].sum().backward()
    assert qg.grad is not None and qg.grad.dtype == torch.float64
    with torch.no_grad():
        qi, ki = q.clone(), k.clone()
        out = m(qi, ki, in_place=True)
    assert out[0] is qi and torch.equal(qi, want[0]) and torch.equal(ki, want[1])


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16, torch.float32])
def test_float64_input_adds_the_offset_in_float64_whatever_the_weight_dtype(wdtype):
    """RMSNorm and QKNorm on float64 input with an offset (Gemma's ``1 + w``): the offset is added in
    float64, not in the weight's dtype (bf16 rounded ``1 + 1e-3`` to 1: a 3e-3 relative error)."""
    w = torch.tensor([1e-3, 2e-3, -3e-3, 4e-4, 5e-3, 1e-2, 0.3, -0.7])
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * (w.to(wdtype).double() + 1.0)
    m = RMSNorm(8, eps=1e-6, weight_offset=1.0, dtype=wdtype)
    qk = QKNorm(8, eps=1e-6, weight_offset=1.0, dtype=wdtype)
    with torch.no_grad():
        m.weight.copy_(w)
        qk.q_weight.copy_(w)
        qk.k_weight.copy_(w)
        for got in (m(x), *qk(x, x)):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_modules_check_their_inputs_in_every_mode(impl, grad):
    """Under grad mode (the weights are Parameters) QKNorm ran the autograd math on whatever it was given: an int32
    k came back "normalised" as int32, a bf16 k next to an fp32 q was taken; RMSNorm leaked IndexError/AttributeError/
    NotImplementedError for a 0-d tensor, a list, an int tensor. Now the TypeError/ValueError naming the input, under
    grad mode and under no_grad alike, and nothing is written."""
    q = torch.randn(2, 4, 8, device=impl)
    m, r = QKNorm(8, device=impl), RMSNorm(8, device=impl)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    bad_k = [((torch.randn(2, 2, 8, device=impl) * 3).int(), TypeError, "k must be"),
             (torch.randn(2, 2, 8, device=impl, dtype=torch.bfloat16), TypeError, "dtype|k must"),
             (torch.randn(2, 2, 8, device=impl, dtype=torch.float64), TypeError, "dtype|k must"),
             ([0.0] * 8, (TypeError, ValueError), "k")]
    with ctx:
        for k, exc, match in bad_k:
            with pytest.raises(exc, match=match):
                m(q, k)
        for x, exc, match in [(torch.tensor(1.0, device=impl), ValueError, "x must have at least 1 dimension"),
                              ([1.0] * 8, TypeError, "x must be a torch.Tensor"),
                              (torch.ones(2, 8, dtype=torch.int32, device=impl), TypeError, "x must be bfloat16"),
                              (torch.ones(2, 8, dtype=torch.bool, device=impl), TypeError, "x must be bfloat16")]:
            with pytest.raises(exc, match=match):
                r(x)


def test_qknorm_float64_in_place_refuses_q_and_k_in_one_memory(impl):
    """float64 (PyTorch's op) in place with q and k sharing memory wrote k's result over q's; the kernel dtypes
    raised. Now both raise, before writing."""
    m = QKNorm(8, device=impl, dtype=torch.float64)
    x = torch.randn(2, 2, 8, device=impl, dtype=torch.float64)
    x0 = x.clone()
    with torch.no_grad(), pytest.raises(ValueError, match="overlap"):
        m(x, x, in_place=True)
    assert torch.equal(x, x0)


def test_modules_keep_forward_mode_ad_and_inference_inputs(impl):
    """The modules record autograd with PyTorch ops (not the custom ops, which define a backward only and save
    their inputs): routed through the ops for a stop, torch.func.jvp gave a zero tangent and inputs made under
    inference mode could not be saved for backward. Both work as with torch.nn.RMSNorm."""
    torch.manual_seed(0)
    m, ref = RMSNorm(16, device=impl), torch.nn.RMSNorm(16, eps=1e-6, device=impl)
    x, t = torch.randn(3, 16, device=impl), torch.randn(3, 16, device=impl)
    _, got = torch.func.jvp(m, (x,), (t,))
    _, want = torch.func.jvp(ref, (x,), (t,))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        xi = torch.randn(3, 16, device=impl)
        qi, ki = torch.randn(2, 4, 16, device=impl), torch.randn(2, 2, 16, device=impl)
    m(xi).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    qk = QKNorm(16, device=impl)
    a, b = qk(qi, ki)
    (a.sum() + b.sum()).backward()
    assert qk.q_weight.grad is not None and qk.k_weight.grad is not None
