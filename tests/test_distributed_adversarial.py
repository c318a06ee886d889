"""Issue 11's adversarial inputs on the tensor-parallel ops, on a one-rank gloo group.

Each test is one fault *kind* for ``rms_norm_tp`` and ``qk_rms_norm_tp`` on both backends
(``impl``: the PyTorch path and the Triton kernels in the interpreter): weight strides
past int32, written tensors that overlap themselves, weights aliasing an output, sums of
squares past fp32's range, eps below fp32's range, autograd, loose arguments. The
right value is the fp64 PyTorch reference on fresh random data. The multi-rank versions
(fp64 all-reduce, backward all-reduce) are cases of ``test_distributed.py``.
"""
import numpy as np
import pytest
import torch
import torch.distributed as dist

import qknorm
from helpers import assert_matches, randn, ref_norm
from qknorm.distributed import qk_rms_norm_tp, rms_norm_tp


@pytest.fixture
def one_rank():
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- int32 offsets

def _far_strided_weight(d: int, stride: int, dtype):
    """A ``[d]`` weight whose last element sits ``stride * (d - 1) >= 2**31`` elements
    after the first (a lazily allocated storage: only ``d`` pages are touched)."""
    try:
        w = torch.empty(stride * (d - 1) + 1, dtype=dtype).as_strided((d,), (stride,))
    except RuntimeError as e:  # no address space for the storage on this machine
        pytest.skip(f"cannot reserve a {stride * d * 2 / 2**30:.1f} GiB storage: {e}")
    w.copy_(torch.randn(d).to(dtype))
    return w


def test_weight_stride_past_int32(one_rank, impl):
    """``c * weight_stride`` past 2**31 (a crash or garbage in int32): right values."""
    d = 129
    w = _far_strided_weight(d, 2**24 + 1, torch.bfloat16)  # 128 * (2**24 + 1) > 2**31
    assert abs(w.stride(0)) * (d - 1) >= 2**31
    x = randn((3, d), torch.float32, impl)
    assert_matches(rms_norm_tp(x, w), ref_norm(x, w), torch.float32)
    k = randn((2, 2, 64), torch.float32, impl)
    kw = _far_strided_weight(64, 2**25 + 1, torch.bfloat16)[:64]  # 63 * (2**25 + 1) < 2**31: as is
    qo, ko = qk_rms_norm_tp(x, k, w, kw)
    assert_matches(qo, ref_norm(x, w), torch.float32, "q")
    assert_matches(ko, ref_norm(k, kw), torch.float32, "k")


def test_rows_past_int32_take_one_fallback():
    """A view with more rows than the kernels' int32 row index: no contiguous-copy retry
    (which would hit the same limit); the PyTorch path (int64 everywhere) runs instead."""
    from qknorm.distributed import _ROW_LIMIT, _kernel_view
    x = torch.zeros(1, dtype=torch.float16).expand(_ROW_LIMIT + 1, 1)
    assert _kernel_view(x) is None
    y = torch.zeros(4, 3, 8)[..., :4]
    v = _kernel_view(y)
    assert v is not None and v[0] is y


# --------------------------------------------------------------------------- overlap

@pytest.mark.parametrize("call,match", [
    (lambda x, base: rms_norm_tp(x, None, out=base.expand(4, 8)), r"^out overlaps itself"),
    (lambda x, base: rms_norm_tp(base.expand(4, 8), None, out=base.expand(4, 8)), r"^out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x.view(4, 1, 8), x[:2], None, None, q_out=base.expand(4, 1, 8)),
     r"^q_out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x, x[:2].clone(), None, None, k_out=base.expand(2, 8)),
     r"^k_out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x, x[:2].clone(), None, None,
                                    k_out=torch.zeros(16).as_strided((2, 8), (3, 1))), r"^k_out overlaps itself"),
])
def test_written_tensor_overlapping_itself(one_rank, impl, call, match):
    x = randn((4, 8), torch.float32, impl)
    base = torch.zeros(8, device=impl)
    before = x.clone()
    with pytest.raises(ValueError, match=match):
        call(x, base)
    assert torch.equal(base, torch.zeros(8, device=impl)) and torch.equal(x, before), "written before the error"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_aliasing_an_output(one_rank, impl, dtype):
    """``rms_norm_tp(x, x[0], out=x)``: the weight is read with its values on entry."""
    x = randn((64, 32), dtype, impl)  # more rows than one kernel block: later blocks would see a written row 0
    ref = ref_norm(x, x[0])
    assert_matches(rms_norm_tp(x, x[0], out=x), ref, dtype)
    qkv = randn((16, 3, 48), dtype, impl)
    q, k = qkv[..., :32], qkv[..., 32:]
    rq, rk = ref_norm(q, k[0, 0].repeat(2)), ref_norm(k, q[3, 1, :16])
    qo, ko = qk_rms_norm_tp(q, k, k[0, 0].repeat(2), q[3, 1, :16], q_out=q, k_out=k)
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    out = torch.empty_like(x)
    w = out[5]  # a weight inside a separate output
    w.copy_(randn((32,), dtype, impl))
    ref = ref_norm(x, w)
    assert_matches(rms_norm_tp(x, w, out=out), ref, dtype)


# --------------------------------------------------------------------------- fp32 range

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale,eps", [(1e20, 1e-6), (1e-25, 0.0), (1e-20, 1e-45)])
def test_sum_of_squares_past_fp32(one_rank, impl, dtype, scale, eps):
    x = randn((3, 64), dtype, impl, scale)
    w = randn((64,), torch.float32, impl)
    y = rms_norm_tp(x, w, eps)
    assert torch.isfinite(y).all() and y.abs().max() > 0.1
    assert_matches(y, ref_norm(x, w, eps), dtype)
    k = randn((2, 2, 32), dtype, impl, 1.0 / scale)
    qo, ko = qk_rms_norm_tp(x, k, None, None, eps)
    assert_matches(qo, ref_norm(x, None, eps), dtype, "q")
    assert_matches(ko, ref_norm(k, None, eps), dtype, "k")


@pytest.mark.parametrize("eps", [1e-50, 1e-40, 1e-300, 5e-324])
def test_eps_below_fp32_range(one_rank, impl, eps):
    """Every positive eps acts as positive: zero rows give 0, not NaN."""
    x = randn((3, 32), torch.float32, impl)
    x[1] = 0.0
    y = rms_norm_tp(x, None, eps)
    assert torch.equal(y[1], torch.zeros_like(y[1])), y[1]
    assert_matches(y, ref_norm(x, None, eps), torch.float32)
    qo, ko = qk_rms_norm_tp(torch.zeros(2, 16, device=impl), x, None, None, eps)
    assert torch.equal(qo, torch.zeros_like(qo))
    assert_matches(ko, ref_norm(x, None, eps), torch.float32)


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


# --------------------------------------------------------------------------- loose arguments

def test_numpy_scalars_and_config(one_rank, impl):
    x, w = randn((3, 64), torch.float32, impl), randn((64,), torch.float32, impl)
    ref = ref_norm(x, w, 1e-6, 1.0)
    y = rms_norm_tp(x, w, np.float32(1e-6), weight_offset=np.float64(1.0), full_width=np.int64(64))
    assert_matches(y, ref, torch.float32)
    cfg = qknorm.KernelConfig(rows=2, block_d=16, num_warps=1)
    assert_matches(rms_norm_tp(x, w, 1e-6, weight_offset=1.0, config=cfg), ref, torch.float32)
    qo, _ = qk_rms_norm_tp(x, x[:, :32], w, w[:32], np.float64(1e-6), weight_offset=1, config=cfg)
    assert_matches(qo, ref, torch.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: rms_norm_tp(x, w, config="fast"), TypeError, "^config must be a qknorm.KernelConfig"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, config=4), TypeError, "^config must be a qknorm.KernelConfig"),
    (lambda x, w: rms_norm_tp(x, w, eps="1e-6"), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=True), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=None), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=float("nan")), ValueError, "^eps must be a finite number >= 0"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, weight_offset="1"), TypeError, "^weight_offset must be a real"),
    (lambda x, w: rms_norm_tp(x, w, full_width=64.5), TypeError, "^full_width must be None or an int"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, q_full_width=True), TypeError, "^q_full_width must be None or an int"),
])
def test_loose_arguments(call, exc, match):
    """Same rules and messages as the rest of the library; raised before any collective."""
    x, w = torch.randn(3, 32), torch.randn(32)
    before = x.clone()
    with pytest.raises(exc, match=match):
        call(x, w)
    assert torch.equal(x, before)


_AOT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.tp_norm import tp_scale_kernel, tp_sumsq_kernel

for kernel, ptrs in ((tp_sumsq_kernel, {"XA": "*bf16", "SA": "*fp64", "XB": "*bf16", "SB": "*fp64"}),
                     (tp_scale_kernel, {"XA": "*bf16", "YA": "*bf16", "WA": "*fp32", "SA": "*fp64",
                                        "XB": "*bf16", "YB": "*bf16", "WB": "*fp32", "SB": "*fp64"})):
    names = list(kernel.arg_names)
    consts = {n: v for n, v in {"HAS_WEIGHT": True, "ROWS": 4, "BLOCK_D": 128}.items() if n in names}
    sig = {n: ptrs.get(n, "constexpr" if n in consts else "fp64" if n == "eps" else "fp32" if n == "w_offset"
                       else "i32") for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm
print("compiled")
"""


def test_tp_kernels_compile_for_sm90_without_a_gpu():
    """The fp64 sums, the fp64 ``eps`` argument and the fp64 scale lower for Hopper (what
    the interpreter cannot check)."""
    import os
    import subprocess
    import sys
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no ahead-of-time compile API in this Triton: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=1800)  # hang guard only
    if r.returncode and "ptxas" in r.stderr.lower() and "not found" in r.stderr.lower():
        pytest.skip("no ptxas to assemble cubins")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
