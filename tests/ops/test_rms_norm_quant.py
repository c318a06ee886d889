"""``rms_norm_quant`` / ``fused_add_rms_norm_quant`` against an fp64 reference (issue 15)."""
import pytest
import torch

import helpers
import qknorm
from helpers import ref_norm  # fp64, on the CPU

DEV = "cuda" if torch.cuda.is_available() else "cpu"
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
    assert y.abs().double().amax() > 0.9 * QMAX[out_dtype]  # the group max reaches qmax


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
        (TypeError, "scale must be a 1-element float32", lambda: qknorm.rms_norm_quant(x, scale=torch.ones(2, device=DEV))),
        (ValueError, "group_size is for dynamic scales", lambda: qknorm.rms_norm_quant(x, scale=one, group_size=8)),
        (ValueError, "scale_ue8m0", lambda: qknorm.rms_norm_quant(x, scale=one, scale_ue8m0=True)),
        (TypeError, "column_major_scales must be a bool", lambda: qknorm.rms_norm_quant(x, column_major_scales=1)),
        (ValueError, "scale_ub must be a positive", lambda: qknorm.rms_norm_quant(x, scale_ub=-1.0)),
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


def test_bad_input_raises_and_writes_nothing():
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


def test_not_differentiable_under_grad_mode():
    x = randn(2, 32).requires_grad_()
    with pytest.raises(ValueError, match="x requires grad"):
        qknorm.rms_norm_quant(x)
    with torch.no_grad():
        y, _ = qknorm.rms_norm_quant(x)
    assert not y.requires_grad


def test_compiles_fullgraph():
    x = randn(4, 64, seed=12)
    f = torch.compile(lambda t: qknorm.rms_norm_quant(t, group_size=32, scale_ue8m0=True), fullgraph=True,
                      backend="aot_eager")
    y, s = f(x)
    y2, s2 = qknorm.rms_norm_quant(x, group_size=32, scale_ue8m0=True)
    assert torch.equal(y.view(torch.uint8), y2.view(torch.uint8)) and torch.equal(s, s2)


def test_batch_invariant_codes():
    x = randn(64, 128, dtype=torch.bfloat16, seed=13)
    y, s = qknorm.rms_norm_quant(x, group_size=64)
    for n in (1, 5, 33):
        yn, sn = qknorm.rms_norm_quant(x[:n], group_size=64)
        assert torch.equal(yn.view(torch.uint8), y[:n].view(torch.uint8)) and torch.equal(sn, s[:n])
