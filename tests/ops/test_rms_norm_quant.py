"""``rms_norm_quant`` / ``fused_add_rms_norm_quant`` against an fp64 reference (issue 15)."""
import os
import re

import pytest
import torch

import helpers
import qknorm
from helpers import ref_norm  # fp64, on the CPU

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0, torch.int8: 127.0}
MANT = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}
MIN_NORMAL = {torch.float8_e4m3fn: 2.0 ** -6, torch.float8_e5m2: 2.0 ** -14}


def ref_scales64(n, groups, qmax, ub=None, ue8m0=False):
    ng = n.reshape(n.shape[:-1] + (groups, n.shape[-1] // groups))
    s = ng.abs().amax(-1).clamp(min=1e-10) / qmax
    if ub is not None:
        s = s.clamp(max=ub)
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    return s


def check_codes(y, s, n, dtype, groups):
    """Dequantised codes within half a code step (plus fp32-vs-fp64 noise) of the fp64 norm."""
    assert y.dtype == dtype and y.shape == n.shape
    d = n.shape[-1]
    y, s = y.cpu(), s.cpu()
    sg = s.double().reshape(s.shape[:-1] + (s.shape[-1], 1))
    q = (n.reshape(n.shape[:-1] + (groups, d // groups)) / sg).clamp(-QMAX[dtype], QMAX[dtype])
    got = y.double().reshape(q.shape)
    if dtype == torch.int8:
        step = torch.ones_like(q)
    else:
        e = torch.floor(torch.log2(q.abs().clamp(min=MIN_NORMAL[dtype])))
        step = torch.exp2(e - MANT[dtype])
    err = (got - q).abs() / step
    assert bool((err <= 0.5 + 1e-3).all() | ((err <= 1.0) & ((err - 0.5).abs() < 1e-2)).all()), float(err.max())
    return int((err > 0.5 + 1e-3).sum())  # codes one step off at a rounding tie


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    torch.manual_seed(seed)
    return helpers.randn(shape, dtype, DEV, scale)


@pytest.mark.parametrize("out_dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8])
@pytest.mark.parametrize("xdtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("group_size", [None, 8, 40])
def test_dynamic_scales_match_fp64(out_dtype, xdtype, group_size):
    base = randn(6, 3, 200 + 8, dtype=xdtype, scale=3.0, seed=1)
    x = base[:, 1, 8:]  # strided view, D = 200
    w = randn(200, seed=2)
    y, s = qknorm.rms_norm_quant(x, w, 1e-5, group_size=group_size, out_dtype=out_dtype, weight_offset=0.5)
    groups = 1 if group_size is None else 200 // group_size
    n = ref_norm(x, w, 1e-5, 0.5)
    assert s.shape == (6, groups) and s.dtype == torch.float32
    torch.testing.assert_close(s.cpu().double(), ref_scales64(n, groups, QMAX[out_dtype]), rtol=1e-5, atol=0)
    check_codes(y, s, n, out_dtype, groups)
    assert y.double().abs().amax() > 0.9 * QMAX[out_dtype]  # the group max reaches qmax


def test_static_scale_saturates_and_keeps_nan():
    x = randn(4, 64, scale=2.0, seed=3)
    x[1, 5] = float("nan")
    scale = torch.tensor([1e-3], device=DEV)
    y, s = qknorm.rms_norm_quant(x, scale=scale)
    assert s is scale
    n = ref_norm(x)
    yd = y.double()
    assert bool((yd[0].abs() == 448).sum() > 10)  # n / 1e-3 saturates
    assert torch.isnan(yd[1]).all()  # a NaN row normalises to NaN everywhere; fp8 keeps it
    check_codes(y[[0, 2, 3]], scale.expand(3, 1), n[[0, 2, 3]], torch.float8_e4m3fn, 1)
    y8, _ = qknorm.rms_norm_quant(x, scale=scale, out_dtype=torch.int8)
    assert (y8[1] == 0).all() and int(y8[0].abs().max()) == 127


def test_scale_ub_ue8m0_and_column_major():
    x = randn(5, 7, 256, dtype=torch.bfloat16, seed=4)
    y, s = qknorm.rms_norm_quant(x, group_size=128, column_major_scales=True, scale_ue8m0=True)
    assert s.shape == (5, 7, 2) and s.stride()[1] == 1 and s.stride()[0] == 7  # tokens contiguous
    assert bool((torch.frexp(s)[0] == 0.5).all())  # powers of two
    n = ref_norm(x)
    plain = ref_scales64(n, 2, 448.0)
    sd = s.cpu().double()
    assert bool((sd >= plain * (1 - 1e-6)).all() & (sd < 2 * plain * (1 + 1e-6)).all())
    check_codes(y, s, n, torch.float8_e4m3fn, 2)
    y2, s2 = qknorm.rms_norm_quant(x, group_size=128)
    assert s2.is_contiguous()
    ub = float(plain.median().float())  # an fp32 value: scales are fp32
    _, s3 = qknorm.rms_norm_quant(x, group_size=128, scale_ub=ub)
    assert float(s3.max()) <= ub and torch.equal(s3, torch.clamp(s2, max=ub))
    _, s4 = qknorm.rms_norm_quant(x, group_size=128, scale_ub=torch.tensor([ub], device=DEV))
    assert torch.equal(s3, s4)


@pytest.mark.parametrize("out_dtype", [torch.float8_e4m3fn, torch.int8])
def test_fused_add_writes_the_sum_and_quantises_it(out_dtype):
    x = randn(9, 96, dtype=torch.bfloat16, seed=5)
    r = randn(9, 96, dtype=torch.bfloat16, seed=6)
    w = randn(96, dtype=torch.bfloat16, seed=7)
    x0, r0 = x.clone(), r.clone()
    y, s = qknorm.fused_add_rms_norm_quant(x, r, w, group_size=32, out_dtype=out_dtype)
    assert torch.equal(x, x0)
    s64 = x0.double() + r0.double()
    assert torch.equal(r, s64.float().to(torch.bfloat16))
    n = ref_norm(s64, w)
    torch.testing.assert_close(s.cpu().double(), ref_scales64(n, 3, QMAX[out_dtype]), rtol=1e-5, atol=0)
    check_codes(y, s, n, out_dtype, 3)


def test_given_outputs_are_written_and_returned():
    x = randn(3, 64, seed=8)
    out = torch.empty(3, 64, dtype=torch.float8_e4m3fn, device=DEV)
    so = torch.empty(2, 3, device=DEV).t()  # any strides
    y, s = qknorm.rms_norm_quant(x, group_size=32, out=out, scales_out=so)
    assert y is out and s is so
    y2, s2 = qknorm.rms_norm_quant(x, group_size=32)
    assert torch.equal(y.view(torch.uint8), y2.view(torch.uint8)) and torch.equal(s, s2)


def _bad_calls(x, r, w):
    f8 = torch.float8_e4m3fn
    one = torch.tensor([0.1], device=DEV)
    return [
        (TypeError, "out_dtype", lambda: qknorm.rms_norm_quant(x, out_dtype=torch.float16)),
        (ValueError, "group_size 7 must divide", lambda: qknorm.rms_norm_quant(x, group_size=7)),
        (TypeError, "scale must be a 1-element float32", lambda: qknorm.rms_norm_quant(x, scale=one.double())),
        (ValueError, "scale must be a 1-element float32", lambda: qknorm.rms_norm_quant(x, scale=torch.ones(2, device=DEV))),
        (TypeError, "residual must be a torch.Tensor", lambda: qknorm.fused_add_rms_norm_quant(x, None)),
        (TypeError, "residual must be a torch.Tensor", lambda: torch.ops.qknorm.fused_add_rms_norm_quant_functional(
            x, None, None, 1e-6, None, None, f8, 0.0, None, None, False, False)),
        (ValueError, "group_size is for dynamic scales", lambda: qknorm.rms_norm_quant(x, scale=one, group_size=8)),
        (ValueError, "scale_ue8m0", lambda: qknorm.rms_norm_quant(x, scale=one, scale_ue8m0=True)),
        (TypeError, "column_major_scales must be a Python bool", lambda: qknorm.rms_norm_quant(x, column_major_scales=1)),
        (ValueError, "scale_ub must be a positive", lambda: qknorm.rms_norm_quant(x, scale_ub=-1.0)),
        # outside fp32's normal range: 1e39 / 3.5e38 were inf to the kernels and a raw RuntimeError on the PyTorch
        # path, 1e-50 a zero bound (every scale 0)
        *[(ValueError, r"scale_ub must be a positive number in fp32's normal range", lambda v=v: qknorm.rms_norm_quant(
            x, scale_ub=v)) for v in (1e39, 3.5e38, 1e-50, float("nan"))],
        (ValueError, r"scale_ub .* got 1e\+39", lambda: qknorm.fused_add_rms_norm_quant(x, r, scale_ub=1e39)),
        (TypeError, "out must have dtype", lambda: qknorm.rms_norm_quant(x, out=torch.empty_like(x))),
        (ValueError, "out must have the shape", lambda: qknorm.rms_norm_quant(
            x, out=torch.empty(3, 64, dtype=f8, device=DEV))),
        (ValueError, "scales_out must have shape", lambda: qknorm.rms_norm_quant(
            x, group_size=16, scales_out=torch.empty(4, 2, device=DEV))),
        (ValueError, "scales_out overlaps itself", lambda: qknorm.rms_norm_quant(
            x, scales_out=torch.zeros(1, device=DEV).expand(4, 1))),
        (ValueError, "weight must have shape", lambda: qknorm.rms_norm_quant(x, w[:32])),
        (ValueError, "residual must have the shape", lambda: qknorm.fused_add_rms_norm_quant(x, r[:2])),
        (ValueError, "overlap", lambda: qknorm.fused_add_rms_norm_quant(x, x)),
    ]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_bad_input_raises_and_writes_nothing(backend):
    if backend == "triton" and DEV == "cpu" and not INTERPRET:
        pytest.skip("the kernels on the CPU need TRITON_INTERPRET=1")
    with qknorm.use_backend(backend):
        _bad_input_raises_and_writes_nothing()


def _bad_input_raises_and_writes_nothing():
    x = randn(4, 64, seed=9)
    r = randn(4, 64, seed=10)
    w = randn(64, seed=11)
    r0 = r.clone()
    for exc, match, call in _bad_calls(x, r, w):
        with pytest.raises(exc, match=match):
            call()
    # a fused call that fails late (scales_out) leaves the residual as it was
    with pytest.raises(ValueError, match="scales_out"):
        qknorm.fused_add_rms_norm_quant(x, r, w, group_size=16, scales_out=torch.empty(4, 3, device=DEV))
    assert torch.equal(r, r0)


def test_a_nan_bound_tensor_bounds_nothing_on_every_backend():
    """A ``scale_ub`` tensor is not read on the host: a NaN in it gave NaN scales and codes on the PyTorch path
    and bounded nothing in the kernels. Both now bound nothing (a NaN scale of a NaN row stays NaN)."""
    x = randn(4, 64, seed=12)
    x[2, 5] = float("nan")
    nan = torch.tensor([float("nan")], device=DEV)
    runs = []
    for backend in (["torch", "triton"] if DEV == "cuda" or INTERPRET else ["torch"]):
        with qknorm.use_backend(backend):
            runs.append((qknorm.rms_norm_quant(x, group_size=16, scale_ub=nan), qknorm.rms_norm_quant(x, group_size=16)))
    for (y, s), (y0, s0) in runs:
        assert torch.equal(s.isnan(), s0.isnan()) and s[2].isnan().any() and not s[[0, 1, 3]].isnan().any()
        torch.testing.assert_close(s, s0, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(y.view(torch.uint8), y0.view(torch.uint8))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_bound_that_rounds_to_fp32s_largest_is_taken(backend):
    """``3.4028235e38`` (fp32's largest as usually printed, a little above it as a double) rounds to it in fp32,
    as the kernels take the bound: no bound in effect, on both backends (the PyTorch path raised a raw
    RuntimeError on it); one half an ulp higher rounds to inf and is refused."""
    if backend == "triton" and DEV == "cpu" and not INTERPRET:
        pytest.skip("the kernels on the CPU need TRITON_INTERPRET=1")
    x = randn(2, 64, seed=13)
    with qknorm.use_backend(backend):
        want = qknorm.rms_norm_quant(x)
        for ub in (3.4028235e38, torch.finfo(torch.float32).max):
            got = qknorm.rms_norm_quant(x, scale_ub=ub)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
        with pytest.raises(ValueError, match="scale_ub"):
            qknorm.rms_norm_quant(x, scale_ub=3.4028235677973366e38)


def test_not_differentiable_under_grad_mode():
    x = randn(2, 32).requires_grad_()
    with pytest.raises(ValueError, match="x requires grad"):
        qknorm.rms_norm_quant(x)
    with torch.no_grad():
        y, _ = qknorm.rms_norm_quant(x)
    assert not y.requires_grad


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ["out", "scales_out", "scale", "scale_ub"])
def test_written_or_read_tensors_that_require_grad_are_refused(name, fused):
    """A written tensor (or a scale) that requires grad would get a gradient as if it were an
    independent leaf: refused, nothing written."""
    x = randn(4, 64)
    r = randn(4, 64, seed=1)
    kw = {"out": torch.zeros(4, 64, dtype=torch.float8_e4m3fn, device=DEV),
          "scales_out": torch.zeros(4, 1, device=DEV)}
    if name == "scale":
        kw = {"scale": torch.tensor([0.02], device=DEV)}
    elif name == "scale_ub":
        kw["scale_ub"] = torch.tensor([0.5], device=DEV)
    t = kw[name]
    if t.is_floating_point() and t.dtype.itemsize > 1:
        t.requires_grad_()
    else:
        pytest.skip("fp8 tensors cannot require grad")
    before = {k: v.detach().clone() for k, v in kw.items()}
    r0 = r.clone()
    with pytest.raises(ValueError, match=f"{name} requires grad"):
        if fused:
            qknorm.fused_add_rms_norm_quant(x, r, **kw)
        else:
            qknorm.rms_norm_quant(x, **kw)
    for k, v in kw.items():
        assert torch.equal(v.detach().view(torch.uint8) if v.element_size() == 1 else v.detach(),
                           before[k].view(torch.uint8) if v.element_size() == 1 else before[k]), k
    assert torch.equal(r, r0)


def test_a_new_output_is_contiguous_on_every_backend():
    x = randn(6, 5, 200)[::2].transpose(0, 1)
    y, _ = qknorm.rms_norm_quant(x)
    assert y.is_contiguous()
    y, _ = qknorm.fused_add_rms_norm_quant(x, x.clone())
    assert y.is_contiguous()




def test_batch_invariant_codes():
    x = randn(64, 128, dtype=torch.bfloat16, seed=13)
    y, s = qknorm.rms_norm_quant(x, group_size=64)
    for n in (1, 5, 33):
        yn, sn = qknorm.rms_norm_quant(x[:n], group_size=64)
        assert torch.equal(yn.view(torch.uint8), y[:n].view(torch.uint8)) and torch.equal(sn, s[:n])


# --------------------------------------------------------------------------- routing

@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_routing_kernel_or_torch_path(backend, monkeypatch):
    """CUDA tensors (auto/triton) and the interpreter (triton) run the kernel, the rest the
    PyTorch path; both give the same codes here (one code step at a rounding tie allowed)."""
    if backend == "triton" and DEV == "cpu" and not INTERPRET:
        pytest.skip("the kernels on the CPU need TRITON_INTERPRET=1")
    from qknorm.ops import rms_norm_quant as Q
    calls = []
    general, torch_path = Q._launch_general, Q.torch_path
    monkeypatch.setattr(Q, "_launch_general", lambda *a, **k: calls.append("kernel") or general(*a, **k))
    monkeypatch.setattr(Q, "torch_path", lambda *a, **k: calls.append("torch") or torch_path(*a, **k))
    x = randn(5, 3, 128, dtype=torch.bfloat16, seed=20)
    r = randn(5, 3, 128, dtype=torch.bfloat16, seed=21)
    w = randn(128, dtype=torch.bfloat16, seed=22)
    with qknorm.use_backend(backend):
        y, s = qknorm.rms_norm_quant(x, w, group_size=64, column_major_scales=True)
        r1 = r.clone()
        y2, s2 = qknorm.fused_add_rms_norm_quant(x, r1, w, out_dtype=torch.int8)
    kernel = backend == "triton" or (backend == "auto" and DEV == "cuda")
    if DEV == "cpu":  # on CUDA the fast call runs the kernel without the general call
        assert calls == (["kernel"] * 2 if kernel else ["torch"] * 2)
    n = ref_norm(x, w)
    check_codes(y, s, n, torch.float8_e4m3fn, 2)
    assert s.stride()[0] == 3 and s.stride()[1] == 1
    check_codes(y2, s2, ref_norm(x.double() + r.double(), w), torch.int8, 1)
    assert torch.equal(r1, (x.float() + r.float()).to(torch.bfloat16))


def test_empty_and_zero_width():
    for shape, g in (((0, 8), None), ((0, 8), 4), ((4, 0), None), ((4, 0), 4)):
        x = torch.zeros(shape, device=DEV)
        y, s = qknorm.rms_norm_quant(x, group_size=g)
        assert y.shape == shape and y.dtype == torch.float8_e4m3fn
        assert s.shape == shape[:-1] + ((1 if g is None else shape[-1] // g),)
        if shape == (4, 0) and g is None:  # an empty row's amax is 0: the floor
            assert torch.equal(s.cpu(), torch.full((4, 1), 1e-10) / 448.0)


# --------------------------------------------------------------------------- custom ops

ops = torch.ops.qknorm
QUANT_OPS = ["rms_norm_quant", "rms_norm_quant_out", "fused_add_rms_norm_quant",
             "fused_add_rms_norm_quant_functional", "fused_add_rms_norm_quant_out"]


def test_opcheck_quant_ops():
    """Schema, fake and real agree (shapes, strides, dtypes, mutations). The out= forms are
    checked with int8 codes: torch's schema check compares fp8 tensors with allclose, which
    fp8 does not implement."""
    x = randn(3, 128, seed=30)
    r = randn(3, 128, seed=31)
    w = randn(128, seed=32)
    sc = torch.tensor([0.01], device=DEV)
    ub = torch.tensor([0.003], device=DEV)
    f8, f5, i8 = torch.float8_e4m3fn, torch.float8_e5m2, torch.int8
    for a in [(x, w, 1e-6, None, None, f8, 0.0, None, None, False, False),
              (x, w, 1e-6, None, 32, i8, 0.5, 0.01, None, True, True),
              (x, None, 1e-6, sc, None, f5, 0.0, None, None, False, False),
              (x, w, 1e-6, None, 64, f8, 0.0, None, ub, False, False)]:
        torch.library.opcheck(ops.rms_norm_quant.default, a)
        torch.library.opcheck(ops.fused_add_rms_norm_quant.default, (x, r.clone()) + a[1:])
        torch.library.opcheck(ops.fused_add_rms_norm_quant_functional.default, (x, r.clone()) + a[1:])
    out = torch.empty(3, 128, dtype=i8, device=DEV)
    so = torch.empty(4, 3, device=DEV).t()
    torch.library.opcheck(ops.rms_norm_quant_out.default, (x, w, 1e-6, None, 32, 0.0, None, None, False, out, so))
    torch.library.opcheck(ops.rms_norm_quant_out.default, (x, w, 1e-6, sc, None, 0.0, None, None, False, out, None))
    torch.library.opcheck(ops.fused_add_rms_norm_quant_out.default,
                          (x, r.clone(), w, 1e-6, None, 32, 1.0, None, ub, True, out, so))


def test_quant_op_schemas_and_direct_calls():
    mut = lambda name, s: re.search(r"Tensor\(\w+!\)\?? " + name + r"\b", s)  # noqa: E731
    assert "!" not in str(ops.rms_norm_quant.default._schema)
    assert "!" not in str(ops.fused_add_rms_norm_quant_functional.default._schema)
    s = str(ops.rms_norm_quant_out.default._schema)
    assert mut("out", s) and mut("scales_out", s) and not mut("x", s)
    s = str(ops.fused_add_rms_norm_quant.default._schema)
    assert mut("residual", s) and not mut("x", s) and not mut("weight", s)
    s = str(ops.fused_add_rms_norm_quant_out.default._schema)
    assert mut("residual", s) and mut("out", s) and mut("scales_out", s) and not mut("x", s)
    x = randn(4, 64, seed=33)
    r = randn(4, 64, seed=34)
    y, s = qknorm.fused_add_rms_norm_quant(x, r.clone(), group_size=32)
    r2 = r.clone()
    out = torch.empty(4, 64, dtype=torch.float8_e4m3fn, device=DEV)
    so = torch.empty(4, 2, device=DEV)
    assert ops.fused_add_rms_norm_quant_out(x, r2, None, 1e-6, None, 32, 0.0, None, None, False, out, so) is None
    assert torch.equal(out.view(torch.uint8), y.view(torch.uint8)) and torch.equal(so, s)
    assert torch.equal(r2, (x + r).to(r.dtype))
    y3, s3, r3 = ops.fused_add_rms_norm_quant_functional(x, r, None, 1e-6, None, 32, torch.float8_e4m3fn, 0.0, None,
                                                         None, False, False)
    assert torch.equal(y3.view(torch.uint8), y.view(torch.uint8)) and torch.equal(s3, s) and torch.equal(r3, r2)
    y4, s4 = ops.rms_norm_quant(x, None, 1e-6, torch.tensor([0.1], device=DEV), None, torch.int8, 0.0, None, None,
                                False, False)
    assert s4.numel() == 0 and y4.dtype == torch.int8
    with pytest.raises(ValueError, match="scales_out is needed"):
        ops.rms_norm_quant_out(x, None, 1e-6, None, 32, 0.0, None, None, False, out, None)
    with pytest.raises(ValueError, match="scale_ub is given twice"):  # (the tensor was used, the number dropped)
        ops.rms_norm_quant(x, None, 1e-6, None, 32, torch.float8_e4m3fn, 0.0, 1e-9, torch.tensor([0.5], device=DEV),
                           False, False)


def _model(x, r, w, scale, out, so):
    """Model-like code: a static-scale call, a fused call writing the residual, out= and scales_out=."""
    y1, s1 = qknorm.rms_norm_quant(x, w, 1e-6, scale=scale)
    y2, s2 = qknorm.fused_add_rms_norm_quant(x, r, w, 1e-6, group_size=32, column_major_scales=True,
                                             scale_ue8m0=True)
    qknorm.rms_norm_quant(r, None, 1e-5, group_size=64, out_dtype=torch.int8, scale_ub=0.05, out=out, scales_out=so)
    return y1.float() * s1, y2.view(torch.uint8), s2 * 2, r + 1


def test_compiles_fullgraph_to_functional_ops():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd
        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)

    args = [randn(4, 128, seed=40), randn(4, 128, seed=41), randn(128, seed=42), torch.tensor([0.02], device=DEV)]

    def outs():
        return (torch.empty(4, 128, dtype=torch.int8, device=DEV), torch.full((4, 2), float("nan"), device=DEV))

    ref_args, ref_out = [a.clone() for a in args], outs()
    ref = _model(*ref_args, *ref_out)
    got_args, got_out = [a.clone() for a in args], outs()
    got = torch.compile(_model, fullgraph=True, backend=backend)(*got_args, *got_out)
    for a, b in zip(ref + ref_out, got + got_out):
        assert torch.equal(a, b)
    assert torch.equal(got_args[1], ref_args[1]) and not torch.equal(got_args[1], args[1])  # residual written
    assert len(graphs) == 1
    code = graphs[0].code
    assert "qknorm.rms_norm_quant" in code and "qknorm.fused_add_rms_norm_quant_functional" in code
    assert not re.findall(r"qknorm\.(?:rms_norm_quant_out|fused_add_rms_norm_quant_out|fused_add_rms_norm_quant)[.(]",
                          code)


@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_with_changing_token_counts(dynamic):
    """Recompiles for a new token count (or traces symbolic sizes) without a graph break, out=,
    the fused form and every scale mode included."""
    torch._dynamo.reset()
    fns = [lambda x, r, o, so: qknorm.rms_norm_quant(x, out=o, scales_out=so),
           lambda x, r, o, so: qknorm.fused_add_rms_norm_quant(x, r, group_size=16, scale_ue8m0=True,
                                                              column_major_scales=True),
           lambda x, r, o, so: qknorm.rms_norm_quant(x, scale_ub=0.01, out_dtype=torch.int8),
           lambda x, r, o, so: qknorm.rms_norm_quant(x, scale=torch.tensor([0.02], device=DEV))]
    for fn in fns:
        g = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        for t in (3, 5, 9):
            args = [randn(t, 64, seed=t), randn(t, 64, seed=t + 1),
                    torch.empty(t, 64, dtype=torch.float8_e4m3fn, device=DEV), torch.empty(t, 1, device=DEV)]
            got = g(*[a.clone() for a in args])
            want = fn(*[a.clone() for a in args])
            for a, b in zip(got, want):
                assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                                   b.view(torch.uint8) if b.element_size() == 1 else b)


def test_compile_fullgraph_aot_eager_matches_eager():
    torch._dynamo.reset()
    x = randn(4, 64, seed=12)
    f = torch.compile(lambda t: qknorm.rms_norm_quant(t, group_size=32, scale_ue8m0=True), fullgraph=True,
                      backend="aot_eager")
    y, s = f(x)
    y2, s2 = qknorm.rms_norm_quant(x, group_size=32, scale_ue8m0=True)
    assert torch.equal(y.view(torch.uint8), y2.view(torch.uint8)) and torch.equal(s, s2)
    with pytest.raises(Exception, match="group_size 7 must divide"):
        torch.compile(lambda t: qknorm.rms_norm_quant(t, group_size=7), fullgraph=True, backend="aot_eager")(x)


def test_a_cached_plan_does_not_let_a_flag_of_the_wrong_type_through(monkeypatch):
    """Plan keys compare by value (32.0 == 32, 1 == True): the fast call must still refuse the
    wrong types the general call refuses, also after a plan for the right ones was cached."""
    from qknorm.ops import _plan
    if torch.cuda.is_available():
        pytest.skip("CPU stand-in for the CUDA fast path")
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    x, w = torch.randn(4, 64), torch.ones(64)
    with qknorm.use_backend("triton"):
        qknorm.rms_norm_quant(x, w, group_size=32, scale_ue8m0=True, column_major_scales=False)
        for bad in (dict(group_size=32.0), dict(group_size=32, scale_ue8m0=1), dict(group_size=32, column_major_scales=0)):
            kw = dict(dict(group_size=32, scale_ue8m0=True, column_major_scales=False), **bad)
            with pytest.raises(TypeError):
                qknorm.rms_norm_quant(x, w, **kw)
