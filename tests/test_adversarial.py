"""Adversarial inputs (issue 11): one test per fault kind, every op, both backends.

Right values come from the fp64 PyTorch reference on the values on entry. Kinds:
int32 offsets (weight stride, last-dim stride, rows past one launch), written tensors that
overlap themselves, read tensors sharing memory with written ones, sums of squares that
overflow or underflow fp32, eps that fp32 cannot hold, loose arguments.
(Autograd: tests/test_autograd.py.) Without a GPU each test runs on the PyTorch backend, the Triton
kernels through the general call, and the fast call (see ``impl`` below).
"""
import numpy as np
import pytest
import torch

import qknorm
from qknorm import invariance
from qknorm.reference_rope import qk_rms_norm_rope_ref
from qknorm.ops import _plan
from conftest import HAS_CUDA, IMPLS
from helpers import TOL, packed_qkv, ref_add_norm, ref_norm, rel_err

# Without a GPU also ("cpu", "fast"): the Triton backend with the fast call taking CPU tensors
# (``_plan.FAST_ON_CPU``), so its own overlap and range checks meet every input here too.
ADV_IMPLS = IMPLS + ([] if HAS_CUDA else [("cpu", "fast")])


@pytest.fixture(params=ADV_IMPLS, ids=[f"{d}-{b}" for d, b in ADV_IMPLS])
def impl(request, monkeypatch):
    """(device, backend) as conftest's ``impl``, plus the CPU fast call."""
    device, backend = request.param
    if backend == "fast":
        monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
        backend = "triton"
    with qknorm.use_backend(backend):
        yield device


def _tol(dtype):
    return TOL[dtype]


def _check(out, ref, dtype, what):
    err = rel_err(out, ref)
    assert err < _tol(dtype), f"{what}: relative error {err:.3e} ({dtype})"


def _huge_stride_weight(d, device, dtype=torch.float32):
    """A weight ``[d]`` whose element stride times d passes 2**31 (column offsets overflow int32)."""
    step = max(2**25 + 1, 2**31 // (d - 1) + 1)
    w = torch.empty((d - 1) * step + 1, dtype=dtype, device=device).as_strided((d,), (step,))
    w.copy_(torch.randn(d))
    return w


def _huge_stride_cos_sin(max_pos, r, device, dtype=torch.float32):
    """A ``cos_sin_cache [max_pos, r]`` (``_rope_cache``'s values) whose column stride times r passes 2**31."""
    step = 2**31 // (r - 1) + 1
    cs = torch.empty((r - 1) * step + max_pos, dtype=dtype, device=device).as_strided((max_pos, r), (1, step))
    cs.copy_(_rope_cache(max_pos, r, device, dtype))
    return cs


def _rope_cache(max_pos, r, device, dtype=torch.float32):
    inv = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=1).to(dtype).to(device)


# --------------------------------------------------------------------------- 1. int32 offsets

def test_weight_stride_past_int32(impl):
    d = 128
    w = _huge_stride_weight(d, impl)
    x = torch.randn(3, d).to(impl)
    _check(qknorm.rms_norm(x, w), ref_norm(x, w), torch.float32, "rms_norm")
    xr, r = torch.randn(3, d).to(impl), torch.randn(3, d).to(impl)
    y_ref, s_ref = ref_add_norm(xr, r, w)
    qknorm.fused_add_rms_norm(xr, r, w)
    _check(xr, y_ref, torch.float32, "fused_add")
    _check(r, s_ref, torch.float32, "fused_add residual")
    q, k = torch.randn(2, 4, d).to(impl), torch.randn(2, 2, d).to(impl)
    kw = torch.randn(d).to(impl)
    qo, ko = qknorm.qk_rms_norm(q, k, w, kw)
    _check(qo, ref_norm(q, w), torch.float32, "qk q")
    _check(ko, ref_norm(k, kw), torch.float32, "qk k")
    cs = _rope_cache(8, d, impl)
    pos = torch.tensor([3, 5]).to(impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, w, kw, cs, pos)
    rq, rk = qk_rms_norm_rope_ref(q.cpu(), k.cpu(), w.cpu(), kw.cpu(), cs.cpu(), pos.cpu(),
                                  compute_dtype=torch.float64)
    _check(qo, rq, torch.float32, "rope q")
    _check(ko, rk, torch.float32, "rope k")


def test_prologue_and_quant_weights_and_cos_sin_past_int32(impl):
    """The attention prologue with a weight and a cos/sin cache whose column offsets pass int32 (it
    segfaulted: its kernel addressed them in int32 whatever ``WIDE`` said), and both quant ops with such a
    weight: the values of the same call on contiguous copies, bit for bit."""
    d = 16
    g = torch.Generator().manual_seed(11)
    kw, cs = _huge_stride_weight(d, impl), _huge_stride_cos_sin(8, d, impl)
    qw = torch.randn(d, generator=g).to(impl)
    q, k, v = (torch.randn(3, h, d, generator=g).to(impl) for h in (2, 1, 1))
    pos, slots = torch.tensor([0, 7, 3]).to(impl), torch.tensor([2, 0, 5]).to(impl)

    def prologue(kw_, cs_):
        kc, vc, qo = torch.zeros(3, 2, 1, d, device=impl), torch.zeros(3, 2, 1, d, device=impl), q.clone()
        for _ in range(3):  # the fast call and its express entry from the third call on
            qknorm.qk_norm_rope_cache(qo, k, v, qw, kw_, cs_, pos, kc, vc, slots)
        return qo, kc, vc

    for got, want in zip(prologue(kw, cs), prologue(kw.contiguous(), cs.contiguous())):
        assert torch.equal(got, want)
    x, r = torch.randn(3, d, generator=g).to(impl), torch.randn(3, d, generator=g).to(impl)
    for fused in (False, True):
        def quant(w_):
            xc, rc = x.clone(), r.clone()
            if fused:
                return (*qknorm.fused_add_rms_norm_quant(xc, rc, w_, group_size=8), rc)
            return qknorm.rms_norm_quant(xc, w_, group_size=8)
        for got, want in zip(quant(kw), quant(kw.contiguous())):
            assert torch.equal(got.view(torch.uint8) if got.element_size() == 1 else got,
                               want.view(torch.uint8) if want.element_size() == 1 else want), fused


def test_last_dim_stride_past_int32(impl):
    # x[:, ::step] with a column stride whose d multiples pass 2**31: copied once, right values
    d, step = 16, 2**27 + 1
    base = torch.randn((d - 1) * step + 2, device=impl)
    x = base.as_strided((2, d), (1, step))
    _check(qknorm.rms_norm(x), ref_norm(x), torch.float32, "rms_norm")


@pytest.mark.parametrize("limit", [1, 5])
def test_rows_split_past_one_launch(impl, monkeypatch, limit):
    """More rows than one launch may take (ROW_LIMIT lowered): the call is split, every row right."""
    monkeypatch.setattr(qknorm.layout, "ROW_LIMIT", limit)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 32, generator=g).to(impl)
    w = torch.randn(32, generator=g).to(impl)
    _check(qknorm.rms_norm(x, w), ref_norm(x, w), torch.float32, "rms_norm")
    xt = x.transpose(0, 1)  # strided leading dims
    _check(qknorm.rms_norm(xt, w), ref_norm(xt, w), torch.float32, "rms_norm strided")
    r = torch.randn(3, 7, 32, generator=g).to(impl)
    y_ref, s_ref = ref_add_norm(x, r, w)
    x2, r2 = x.clone(), r.clone()
    qknorm.fused_add_rms_norm(x2, r2, w)
    _check(x2, y_ref, torch.float32, "fused_add")
    _check(r2, s_ref, torch.float32, "fused_add residual")
    qkv, q, k, v = packed_qkv(9, 4, 2, 32, torch.float32, impl, g)
    q0, k0 = q.clone(), k.clone()
    qknorm.qk_rms_norm(q, k, w, w, q_out=q, k_out=k, config=qknorm.KernelConfig(rows=4, block_d=32,
                                                                                 token_order=True))
    _check(q, ref_norm(q0, w), torch.float32, "qk q")
    _check(k, ref_norm(k0, w), torch.float32, "qk k")
    assert torch.equal(v, qkv[:, 6 * 32:].view(9, 2, 32))
    cs = _rope_cache(16, 32, impl)
    pos = torch.arange(9).to(impl)
    qo, ko = qknorm.qk_rms_norm_rope(q0, k0, w, w, cs, pos)
    rq, rk = qk_rms_norm_rope_ref(q0.cpu(), k0.cpu(), w.cpu(), w.cpu(), cs.cpu(), pos.cpu(),
                                  compute_dtype=torch.float64)
    _check(qo, rq, torch.float32, "rope q")
    _check(ko, rk, torch.float32, "rope k")


# --------------------------------------------------------------------------- 3. written tensors overlapping themselves

def _expanded(shape, device):
    return torch.zeros(shape[-1], device=device).expand(*shape)


def test_written_tensor_overlapping_itself_is_rejected(impl):
    x = torch.randn(4, 8, device=impl)
    out = _expanded((4, 8), impl)
    with pytest.raises(ValueError, match="out"):
        qknorm.rms_norm(x, out=out)
    assert out.abs().max() == 0
    base = torch.zeros(8, device=impl)
    with pytest.raises(ValueError, match="out"):
        qknorm.rms_norm(base.expand(4, 8), out=base.expand(4, 8))  # in place on an expanded view
    r0 = torch.zeros(8, device=impl)
    xa = torch.randn(300, 8, device=impl)
    xa0 = xa.clone()
    with pytest.raises(ValueError, match="residual"):
        qknorm.fused_add_rms_norm(xa, r0.expand(300, 8))
    assert r0.abs().max() == 0 and torch.equal(xa, xa0)
    resid = torch.randn(4, 8, device=impl)
    resid0 = resid.clone()
    with pytest.raises(ValueError, match="x"):
        qknorm.fused_add_rms_norm(base.expand(4, 8), resid)
    assert torch.equal(resid, resid0)
    q, k = torch.randn(5, 4, 8, device=impl), torch.randn(5, 2, 8, device=impl)
    with pytest.raises(ValueError, match="q_out"):
        qknorm.qk_rms_norm(q, k, None, None, q_out=_expanded((5, 4, 8), impl))
    ko = _expanded((5, 2, 8), impl)
    with pytest.raises(ValueError, match="k_out"):
        qknorm.qk_rms_norm(q, k, None, None, k_out=ko)
    assert ko.abs().max() == 0
    cs = _rope_cache(8, 8, impl)
    pos = torch.zeros(5, dtype=torch.long, device=impl)
    with pytest.raises(ValueError, match="q_out"):
        qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, q_out=_expanded((5, 4, 8), impl))
    with pytest.raises(ValueError, match="k_out"):
        qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, k_out=torch.zeros(5, 1, 8, device=impl).expand(5, 2, 8))


def test_self_overlap_decided_exactly():
    from qknorm.layout import self_overlap
    assert self_overlap((4, 8), (0, 1)) is True
    assert self_overlap((4, 8), (2, 1)) is True  # rows overlap by 6 elements
    assert self_overlap((3, 4), (4, 3)) is False  # interleaved but disjoint
    assert self_overlap((5, 4, 8), (96, 8, 1)) is False  # a Q view of a packed QKV buffer
    assert self_overlap((4, 8), (1, 4)) is False  # transposed contiguous


# --------------------------------------------------------------------------- 4. read tensors aliasing written ones

def test_weight_aliasing_output_reads_values_on_entry(impl):
    x = torch.randn(300, 32, device=impl)
    x0 = x.clone()
    qknorm.rms_norm(x, x[0], out=x)
    _check(x, ref_norm(x0, x0[0]), torch.float32, "rms_norm in place, weight = x[0]")
    x = torch.randn(300, 32, device=impl)
    out = torch.randn(300, 32, device=impl)
    w0 = out[5].clone()
    x0 = x.clone()
    qknorm.rms_norm(x, out[5], out=out)
    _check(out, ref_norm(x0, w0), torch.float32, "rms_norm weight = out[5]")
    x, r = torch.randn(300, 32, device=impl), torch.randn(300, 32, device=impl)
    x0, r0 = x.clone(), r.clone()
    qknorm.fused_add_rms_norm(x, r, r[0])
    y_ref, s_ref = ref_add_norm(x0, r0, r0[0])
    _check(x, y_ref, torch.float32, "fused_add weight = residual[0]")
    _check(r, s_ref, torch.float32, "fused_add residual")
    x, r = torch.randn(300, 32, device=impl), torch.randn(300, 32, device=impl)
    x0, r0 = x.clone(), r.clone()
    qknorm.fused_add_rms_norm(x, r, x[7])
    y_ref, s_ref = ref_add_norm(x0, r0, x0[7])
    _check(x, y_ref, torch.float32, "fused_add weight = x[7]")
    qkv, q, k, v = packed_qkv(300, 4, 2, 32, torch.float32, impl, torch.Generator().manual_seed(1))
    q0, k0 = q.clone(), k.clone()
    qw, kw = q[0, 1], v[0, 0]  # one weight inside the written Q (several programs), one in the untouched V
    qw0, kw0 = qw.clone(), kw.clone()
    qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k)
    _check(q, ref_norm(q0, qw0), torch.float32, "qk q")
    _check(k, ref_norm(k0, kw0), torch.float32, "qk k")
    q, k = torch.randn(300, 4, 32, device=impl), torch.randn(300, 2, 32, device=impl)
    qo, ko = torch.randn_like(q), torch.randn_like(k)
    qw0, kw0 = qo[7, 1].clone(), ko[3, 0].clone()
    qknorm.qk_rms_norm(q, k, qo[7, 1], ko[3, 0], q_out=qo, k_out=ko)  # weights inside separate outputs
    _check(qo, ref_norm(q, qw0), torch.float32, "qk q, weight inside q_out")
    _check(ko, ref_norm(k, kw0), torch.float32, "qk k, weight inside k_out")
    qkv, q, k, v = packed_qkv(6, 4, 2, 32, torch.float32, impl, torch.Generator().manual_seed(2))
    q0, k0, kw0 = q.clone(), k.clone(), k[2, 1].clone()
    cs = _rope_cache(8, 32, impl)
    pos = torch.arange(6, device=impl)
    qknorm.qk_rms_norm_rope(q, k, kw0 * 0 + 1, k[2, 1], cs, pos, q_out=q, k_out=k)
    rq, rk = qk_rms_norm_rope_ref(q0.cpu(), k0.cpu(), torch.ones(32), kw0.cpu(), cs.cpu(), pos.cpu(),
                                  compute_dtype=torch.float64)
    _check(q, rq, torch.float32, "rope q")
    _check(k, rk, torch.float32, "rope k, weight inside k")


def test_cos_sin_cache_aliasing_output(impl):
    """A cache that lives inside the written buffer is read as it was on entry."""
    t, d = 4, 16
    buf = torch.randn(t * 3 * d + 8 * d, device=impl)
    q = buf[: t * 2 * d].view(t, 2, d)
    k = buf[t * 2 * d: t * 3 * d].view(t, 1, d)
    cs = buf[: 8 * d].view(8, d)  # overlaps q
    pos = torch.tensor([0, 3, 7, 2], device=impl)
    q0, k0, cs0 = q.clone(), k.clone(), cs.clone()
    qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, q_out=q, k_out=k)
    rq, rk = qk_rms_norm_rope_ref(q0.cpu(), k0.cpu(), None, None, cs0.cpu(), pos.cpu(), compute_dtype=torch.float64)
    _check(q, rq, torch.float32, "rope q")
    _check(k, rk, torch.float32, "rope k")


# --------------------------------------------------------------------------- 5./6. extreme values and eps

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale,eps", [(1e20, 1e-6), (1e-25, 0.0), (1e-30, 1e-6), (3e18, 1e-6), (1e-20, 1e-45),
                                       (1e37, 1e-6), (1e-40, 0.0), (1e30, 1e-300), (1e-12, 1e-35), (1e19, 1e38),
                                       (1e19, 3e38)])
def test_sum_of_squares_out_of_fp32_range(impl, dtype, scale, eps):
    if dtype == torch.float16 and not 1e-7 < scale < 6e4:
        pytest.skip("not representable in fp16")
    if dtype == torch.bfloat16 and scale < 1e-38:
        pytest.skip("mostly zeros in bf16 (a zero row with eps = 0 is NaN)")
    g = torch.Generator().manual_seed(5)
    for d, cfg in ((64, None), (300, None), (256, qknorm.KernelConfig(rows=2, block_d=64))):  # chunked form too
        x = (torch.randn(5, d, generator=g) * scale).to(dtype).to(impl)
        w = torch.randn(d, generator=g).to(impl)
        kw = {} if cfg is None else {"config": cfg}
        if impl == "cpu" and qknorm.get_backend() == "torch":
            kw = {}
        _check(qknorm.rms_norm(x, w, eps, **kw), ref_norm(x, w, eps), dtype, f"rms_norm d={d}")
        r = (torch.randn(5, d, generator=g) * scale).to(dtype).to(impl)
        y_ref, s_ref = ref_add_norm(x, r, w, eps)
        x2, r2 = x.clone(), r.clone()
        qknorm.fused_add_rms_norm(x2, r2, w, eps, **kw)
        _check(x2, y_ref, dtype, f"fused_add d={d}")
    qkv, q, k, v = packed_qkv(3, 4, 2, 64, torch.float32, "cpu", g)
    qkv = (qkv * scale).to(dtype).to(impl)
    q, k = qkv[:, :256].view(3, 4, 64), qkv[:, 256:384].view(3, 2, 64)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None, eps)
    _check(qo, ref_norm(q, None, eps), dtype, "qk q")
    _check(ko, ref_norm(k, None, eps), dtype, "qk k")
    if impl == "cpu" and qknorm.get_backend() == "triton" or impl == "cuda":
        qo, ko = qknorm.qk_rms_norm(q, k, None, None, eps, config=qknorm.KernelConfig(rows=4, block_d=64,
                                                                                      token_order=True))
        _check(qo, ref_norm(q, None, eps), dtype, "qk q (token order)")
    cs = _rope_cache(8, 32, impl)
    pos = torch.tensor([1, 0, 7], device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, eps, rotary_dim=32)
    rq, rk = qk_rms_norm_rope_ref(q.cpu(), k.cpu(), None, None, cs.cpu(), pos.cpu(), eps, rotary_dim=32,
                                  compute_dtype=torch.float64)
    _check(qo, rq, dtype, "rope q")
    _check(ko, rk, dtype, "rope k")


def test_rows_near_fp32s_largest_value_keep_full_precision(impl):
    """Rows whose rms is past 2**126: their factor would be an fp32 subnormal alone (fewer bits);
    split as (x * p) * q they keep fp32's precision (within 2 ulp of the fp64 value)."""
    for v in (3.2112056044788855e38, 1e38, 8.5e37, 3e38):
        x = torch.tensor([[v, v / 2, -v / 3, 0.0]], device=impl)
        y = qknorm.rms_norm(x, None, 1e-6)
        ref = ref_norm(x, None, 1e-6)
        err = ((y.double().cpu() - ref.double()).abs() / ref.double().abs().clamp_min(1e-30)).max().item()
        assert err < 2.5e-7, (v, y.tolist(), ref.tolist())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rows_near_fp32s_largest_value_in_every_tile_shape(impl, dtype):
    """Rows of rms past 2**126 in programs of one row and in tiles of several rows (QK norm too): right, and
    bitwise the same whichever tile holds them (bf16 outputs take one folded factor, a subnormal there:
    a GPU that flushed it would give 0). The row is one warp's 16-byte vectors wide, so every config here
    sums it in the same order (qknorm.invariance): narrower rows of one program are laid out differently
    from tiles of several, and a GPU's fp32 sums then differ in the last bit for any row."""
    d = 32 * (16 // dtype.itemsize)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, d, generator=g) * torch.tensor([3e38, 1.0, 2e38, 1e37, 1.0, 3.3e38, 1e-3, 1.5e38])[:, None]
    x = x.clamp(-3.38e38, 3.38e38).to(dtype).to(impl)
    ref = ref_norm(x, None, 1e-6)
    outs = []
    # one-row programs; tiles of several rows in one warp (the program-wide range branch) and in two (the
    # parallel scaled sum)
    for rows, warps in ((1, 1), (4, 1), (8, 1), (8, 2)):
        cfg = qknorm.KernelConfig(rows=rows, block_d=d, num_warps=warps)
        assert invariance.is_invariant(cfg, dtype.itemsize), cfg
        kw = {} if impl == "cpu" and qknorm.get_backend() == "torch" else {"config": cfg}
        y = qknorm.rms_norm(x, None, 1e-6, **kw)
        _check(y, ref, dtype, f"rms_norm {cfg}")
        outs.append(y)
        q, k = x.view(2, 4, d), x[:4].view(2, 2, d)
        qo, ko = qknorm.qk_rms_norm(q, k, None, None, 1e-6, **kw)
        _check(qo, ref.view(2, 4, d), dtype, f"qk {cfg}")
        assert torch.equal(qo.reshape(8, d), y) and torch.equal(ko.reshape(4, d), y[:4])
    assert all(torch.equal(o, outs[0]) for o in outs), "a row's bits depend on the tile that holds it"


@pytest.mark.parametrize("eps", [1e-6, 1e-40, 0.0])
def test_fp16_rows_at_its_extremes_in_every_tile_shape(impl, eps):
    """fp16 rows take the plain kernel alone (kernels/rows.in_range): rows of +-65504 (the fused add's sum
    131008), of fp16's smallest subnormal and mixed, right in one-row programs and tiles of several rows,
    the fused add's residual too."""
    d = 256
    big, tiny = 65504.0, 2.0 ** -24
    g = torch.Generator().manual_seed(12)  # randn * big / 4 passes fp16's range (inf) for ~1% of seeds: clamped
    rows = [torch.full((d,), big), torch.full((d,), -big), torch.full((d,), tiny),
            (torch.randn(d, generator=g) * big / 4).clamp(-big, big),
            torch.cat([torch.full((1,), big), torch.full((d - 1,), tiny)]), torch.randn(d, generator=g),
            torch.full((d,), tiny), torch.randn(d, generator=g) * 1e-3]
    x = torch.stack(rows).to(torch.float16).to(impl)
    for cfg_rows in (1, 4, 8):
        kw = {} if impl == "cpu" and qknorm.get_backend() == "torch" else {
            "config": qknorm.KernelConfig(rows=cfg_rows, block_d=d, num_warps=1)}
        _check(qknorm.rms_norm(x, None, eps, **kw), ref_norm(x, None, eps), torch.float16, f"rms rows={cfg_rows}")
        q, k = x.view(2, 4, d), x[:4].view(2, 2, d)
        qo, ko = qknorm.qk_rms_norm(q, k, None, None, eps, **kw)
        _check(qo, ref_norm(q, None, eps), torch.float16, f"qk rows={cfg_rows}")
        xa, r = x.clone(), x.clone()
        y_ref, s_ref = ref_add_norm(x, x, None, eps)
        qknorm.fused_add_rms_norm(xa, r, None, eps, **kw)
        _check(xa, y_ref, torch.float16, f"fused add rows={cfg_rows}")
        assert torch.equal(r.cpu(), s_ref.cpu().to(torch.float16)), "the residual: x + r rounded once (inf past 65504)"


@pytest.mark.parametrize("v,eps", [(1.7e19, 1e38), (1e19, 3.3e38), (1.7e19, 2e38)])
def test_eps_near_fp32s_largest_value(impl, v, eps):
    """mean(x**2) + eps past fp32's range while the sum itself is not (narrow rows): the result is
    x / sqrt(mean(x**2) + eps), not 0 (found by a review helper, on both backends)."""
    for x in (torch.tensor([[v]], device=impl), torch.tensor([[v, 0.0]], device=impl)):
        _check(qknorm.rms_norm(x, None, eps), ref_norm(x, None, eps), torch.float32, f"rms_norm {x.tolist()}")
        q, k = x.view(1, 1, -1).clone(), x.view(1, 1, -1).clone()
        qo, _ = qknorm.qk_rms_norm(q, k, None, None, eps)
        _check(qo, ref_norm(q, None, eps), torch.float32, "qk")


@pytest.mark.parametrize("eps", [1e-50, 1e-40, 1e-300, 5e-324])
def test_every_positive_eps_is_positive(impl, eps):
    z = torch.zeros(3, 16, device=impl)
    y = qknorm.rms_norm(z, eps=eps)
    assert torch.equal(y, torch.zeros_like(y)), "zero rows with eps > 0 must give 0, not NaN"
    q, k = torch.zeros(2, 2, 16, device=impl), torch.zeros(2, 1, 16, device=impl)
    qo, ko = qknorm.qk_rms_norm(q, k, None, None, eps)
    assert not qo.isnan().any() and not ko.isnan().any()
    x, r = torch.zeros(3, 16, device=impl), torch.zeros(3, 16, device=impl)
    qknorm.fused_add_rms_norm(x, r, None, eps)
    assert not x.isnan().any()
    cs = _rope_cache(4, 16, impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, None, None, cs, torch.tensor([0, 1], device=impl), eps)
    assert not qo.isnan().any() and not ko.isnan().any()


@pytest.mark.parametrize("eps", [1e-60, 1e-45])
def test_tiny_eps_next_to_a_tiny_row(impl, eps):
    """A row of 1e-30s with a tiny eps: eps still counts, exactly."""
    x = torch.full((1, 4), 1e-30, device=impl)
    y = qknorm.rms_norm(x, eps=eps)
    expect = 1e-30 / (1e-60 + eps) ** 0.5
    assert abs(y[0, 0].item() - expect) < 1e-5 * expect


# --------------------------------------------------------------------------- 8. loose arguments

def test_loose_arguments_same_rules_on_every_backend(impl):
    x = torch.randn(2, 8, device=impl)
    with pytest.raises(TypeError, match="config"):
        qknorm.rms_norm(x, config="fast")
    with pytest.raises(TypeError, match="config"):
        qknorm.fused_add_rms_norm(x.clone(), x.clone() + 1, config="fast")
    with pytest.raises(TypeError, match="config"):
        qknorm.qk_rms_norm(x.view(2, 1, 8), x.view(2, 1, 8).clone(), None, None, config={"rows": 1})
    y = qknorm.rms_norm(x, eps=np.float32(1e-6), weight_offset=np.float64(0.0))
    _check(y, ref_norm(x), torch.float32, "numpy scalars")
    with pytest.raises(TypeError, match="eps"):
        qknorm.rms_norm(x, eps="1e-6")
    with pytest.raises(TypeError, match="eps"):
        qknorm.rms_norm(x, eps=True)
    with pytest.raises(ValueError, match="eps"):
        qknorm.rms_norm(x, eps=-1.0)


def test_nn_module_arguments():
    with pytest.raises(TypeError, match="head_dim"):
        qknorm.nn.QKNorm(64.5)
    with pytest.raises(ValueError, match="head_dim"):
        qknorm.nn.QKNorm(0)
    m = qknorm.nn.QKNorm(64, eps=None)  # as nn.RMSNorm: the dtype's default eps
    q, k = torch.randn(2, 3, 64), torch.randn(2, 1, 64)
    qo, _ = m(q, k)
    _check(qo, ref_norm(q, m.q_weight.detach(), qknorm.nn.default_eps(torch.float32)), torch.float32, "QKNorm")
    with pytest.raises(TypeError, match="eps"):
        qknorm.nn.QKNorm(64, eps="small")
    qknorm.nn.RMSNorm(8, eps=np.float32(1e-5))


def test_explain_validates():
    with pytest.raises(TypeError, match="x"):
        qknorm.explain("not a tensor")
    with pytest.raises(ValueError, match="op"):
        qknorm.explain(torch.randn(2, 8), op="nope")
    with pytest.raises(TypeError, match="k"):
        qknorm.explain(torch.randn(2, 8), k=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_of_range_rows_next_to_ordinary_ones_in_place(impl, dtype):
    """Tiles holding rows out of fp32's range next to ordinary rows, written in place, with
    weights (Q's and K's of two dtypes), every row checked: the rescued rows and the ordinary ones
    beside them, in place too."""
    g = torch.Generator().manual_seed(7)
    scales = torch.tensor([1e20, 1.0, 1e-25, 3.0, 1e-30, 1e18, 1.0, 1e-22])[:, None]
    x0 = (torch.randn(8, 96, generator=g) * scales).to(dtype).to(impl)
    w = torch.randn(96, generator=g).to(impl)
    backend_cfgs = [None] if impl == "cpu" and qknorm.get_backend() == "torch" else \
        [None, qknorm.KernelConfig(rows=4, block_d=128, num_warps=2)]
    for cfg in backend_cfgs:
        kw = {} if cfg is None else {"config": cfg}
        x = x0.clone()
        qknorm.rms_norm(x, w, 1e-6, out=x, **kw)
        _check(x, ref_norm(x0, w, 1e-6), dtype, f"rms_norm in place {cfg}")
        x, r = x0.clone(), x0.flip(0).clone()
        y_ref, s_ref = ref_add_norm(x0, x0.flip(0), w, 1e-6)
        qknorm.fused_add_rms_norm(x, r, w, 1e-6, **kw)
        _check(x, y_ref, dtype, f"fused_add in place {cfg}")
        _check(r, s_ref, dtype, f"fused_add residual {cfg}")
    qkv = (torch.randn(4, 6 * 32, generator=g) * scales.repeat(3, 1)[:4 * 6].view(4, 6).repeat_interleave(32, 1)) \
        .to(dtype).to(impl)
    q0, k0 = qkv[:, :128].view(4, 4, 32).clone(), qkv[:, 128:].view(4, 2, 32).clone()
    qw = torch.randn(32, generator=g).to(impl)
    kw_ = torch.randn(32, generator=g).to(torch.bfloat16).to(impl)
    cfgs = [None] if impl == "cpu" and qknorm.get_backend() == "torch" else \
        [None, qknorm.KernelConfig(rows=4, block_d=32, num_warps=1),
         qknorm.KernelConfig(rows=4, block_d=32, num_warps=1, token_order=True)]
    for cfg in cfgs:
        kw = {} if cfg is None else {"config": cfg}
        q, k = q0.clone(), k0.clone()
        qknorm.qk_rms_norm(q, k, qw, kw_, 1e-6, q_out=q, k_out=k, **kw)
        _check(q, ref_norm(q0, qw, 1e-6), dtype, f"qk q in place {cfg}")
        _check(k, ref_norm(k0, kw_, 1e-6), dtype, f"qk k in place {cfg}")



def test_out_of_range_rows_next_to_nan_and_inf_rows(impl):
    """A NaN or inf row in the same call must not hide an out-of-range row (the PyTorch path decides from
    the extremes of the mean squares, which a NaN poisons): each row as if alone."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 64, generator=g) * torch.tensor([1.0, 1e20, 1.0, 1e-25, 1.0, 1.0])[:, None]
    x[0, 3], x[2, 5], x[4, 1] = float("nan"), float("inf"), -float("inf")
    want = ref_norm(x, None, 0.0)
    # one tile of all six rows: one warp (the program-wide range branch) and two (the parallel scaled sum)
    cfgs = [None] if impl == "cpu" and qknorm.get_backend() == "torch" else \
        [None, qknorm.KernelConfig(rows=8, block_d=64, num_warps=1), qknorm.KernelConfig(rows=8, block_d=64, num_warps=2)]
    for cfg in cfgs:
        y = qknorm.rms_norm(x.to(impl), None, 0.0, **({} if cfg is None else {"config": cfg})).cpu()
        assert torch.isnan(y[0]).all(), cfg
        for i in (2, 4):  # rms = inf: 0 everywhere, NaN (inf / inf) where the inf was, as in fp64
            assert torch.equal(y[i].isnan(), want[i].isnan()), cfg
            assert torch.equal(y[i].nan_to_num(), want[i].float().nan_to_num()), cfg
        for i in (1, 3, 5):
            _check(y[i:i + 1], want[i:i + 1], torch.float32, f"row {i} {cfg}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_of_range_rows_in_the_attention_prologue(impl, dtype):
    """qk_norm_rope_cache: Q in place and K into the cache and into k_out = k (in place), rows out
    of fp32's range next to ordinary ones: the rescued rows read their input again, so none may
    have been written by the common path first."""
    g = torch.Generator().manual_seed(9)
    t, hq, hkv, d = 4, 4, 2, 32
    scales = torch.tensor([1e20, 1.0, 1e-25, 3.0, 1e-30, 1e18, 1.0, 1e-22])
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g) * scales.repeat(4)[:t * (hq + 2 * hkv)].view(t, -1) \
        .repeat_interleave(d, 1)
    qkv = qkv.to(dtype).to(impl)
    q, k, v = (qkv[:, :hq * d].view(t, hq, d), qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d),
               qkv[:, (hq + hkv) * d:].view(t, hkv, d))
    q0, k0 = q.clone(), k.clone()
    cs = _rope_cache(8, 32, impl)
    pos = torch.tensor([1, 0, 7, 3], device=impl)
    kc = torch.zeros(2, 4, hkv, d, dtype=dtype, device=impl)
    vc = torch.zeros_like(kc)
    slots = torch.tensor([5, 0, 7, 2], device=impl)
    qknorm.qk_norm_rope_cache(q, k, v, None, None, cs, pos, kc, vc, slots, 1e-6, rotary_dim=32, k_out=k)
    rq, rk = qk_rms_norm_rope_ref(q0.cpu(), k0.cpu(), None, None, cs.cpu(), pos.cpu(), 1e-6, rotary_dim=32,
                                  compute_dtype=torch.float64)
    _check(q, rq, dtype, "prologue q")
    _check(k, rk, dtype, "prologue k_out = k")
    flat = kc.view(-1, hkv, d)
    _check(flat[slots.cpu().tolist()], rk, dtype, "prologue k cache")


# --------------------------------------------------------------------------- meta tensors

def _meta_calls(dev):
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.bfloat16: torch.randn(*s, generator=g, dtype=dtype).to(dev)  # noqa: E731
    x, res, w = r(5, 64), r(5, 64), r(64)
    qkv = r(5, 8 * 16)
    q, k, v = qkv[:, :64].view(5, 4, 16), qkv[:, 64:96].view(5, 2, 16), qkv[:, 96:].view(5, 2, 16)
    cs, pos = r(100, 16, dtype=torch.float32), torch.tensor([0, 3, 99, 7, 1]).to(dev)
    kc, vc, slots = torch.zeros(4, 4, 2, 16, dtype=torch.bfloat16).to(dev), \
        torch.zeros(4, 4, 2, 16, dtype=torch.bfloat16).to(dev), torch.tensor([0, 5, -1, 15, 2]).to(dev)
    return {
        "rms_norm": lambda: qknorm.rms_norm(x, w),
        "fused_add_rms_norm": lambda: qknorm.fused_add_rms_norm(x, res, w),
        "qk_rms_norm": lambda: qknorm.qk_rms_norm(q, k, w[:16], w[:16]),
        "qk_rms_norm_rope": lambda: qknorm.qk_rms_norm_rope(q, k, w[:16], w[:16], cs, pos),
        "rms_norm_quant": lambda: qknorm.rms_norm_quant(x, w, group_size=16, column_major_scales=True),
        "fused_add_rms_norm_quant": lambda: qknorm.fused_add_rms_norm_quant(x, res, w),
        "qk_norm_rope_cache": lambda: qknorm.qk_norm_rope_cache(q, k, v, w[:16], w[:16], cs, pos, kc, vc, slots),
        "nn.RMSNorm": lambda: qknorm.nn.RMSNorm(64, device=dev, dtype=torch.bfloat16)(x),
        "nn.QKNorm": lambda: qknorm.nn.QKNorm(16, device=dev, dtype=torch.bfloat16)(q, k),
        "qk_norm_rope_cache mRoPE": lambda: qknorm.qk_norm_rope_cache(
            q, k, v, w[:16], w[:16], cs, torch.stack([pos, pos.flip(0), pos]), kc, vc, slots, mrope_section=(2, 3, 3)),
    }


@pytest.mark.parametrize("name", ["auto", "triton"])
@pytest.mark.parametrize("op", list(_meta_calls("cpu")))
def test_meta_tensors_give_the_cpu_results_shapes(op, name):
    """Shape inference on meta tensors (no memory, every data_ptr 0) on either backend: no launch, no false
    overlap error, no read of positions or slots, results with the CPU call's shapes, strides and dtypes."""
    want = _meta_calls("cpu")[op]()
    if name == "triton" and not qknorm.backend.interpreter_on():
        pytest.skip("QKNORM_BACKEND=triton on the CPU needs TRITON_INTERPRET=1")
    with qknorm.use_backend(name):
        got = _meta_calls("meta")[op]()
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
    assert [(t.shape, t.stride(), t.dtype) for t in got] == [(t.shape, t.stride(), t.dtype) for t in want]
    assert all(t.device.type == "meta" for t in got)


def test_meta_views_of_one_tensor_keep_the_aliasing_rules():
    """Meta tensors have no memory (every data_ptr is 0), yet views of one meta tensor overlap as their CPU
    twins do: the same errors, and separate meta tensors never collide."""
    for dev in ("cpu", "meta"):
        b = torch.zeros(6, 8, device=dev)
        with pytest.raises(ValueError, match="out"):
            qknorm.rms_norm(b[:5], None, out=b[1:])
        with pytest.raises(ValueError, match="x and residual"):
            qknorm.fused_add_rms_norm(b, b)
        assert qknorm.rms_norm(b, None, out=b) is b  # in place: the same view
        o = torch.empty(6, 8, device=dev)
        assert qknorm.rms_norm(b, None, out=o) is o  # another tensor: no overlap


def test_cpu_path_under_autograd_warns_nothing():
    """The PyTorch path's range check reads two scalars of the mean squares: never from a tensor that requires
    grad (PyTorch warns on that)."""
    import warnings
    x = torch.randn(4, 64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qknorm.nn.RMSNorm(64)(x).sum().backward()
        qknorm.rms_norm(x, None).sum().backward()
    assert x.grad is not None


def test_inference_tensors_written_outside_inference_mode_on_every_path(impl):
    """Inference tensors written outside inference mode next to normal ones: PyTorch refuses such an in-place
    write, qknorm does not enforce that (the kernels write them). The PyTorch path wrote the first target and
    then raised on the next (residual, q, the caches, out); now every path writes them all, and each result
    equals the same call on normal tensors."""
    g = torch.Generator().manual_seed(5)

    def infer(t):
        with torch.inference_mode():
            return t.clone()

    w = torch.randn(32, generator=g).to(impl)
    cs = _rope_cache(8, 32, impl)
    pos = torch.tensor([3, 0, 7], device=impl)
    x, r = torch.randn(3, 32, generator=g).to(impl), torch.randn(3, 32, generator=g).to(impl)
    q, k = torch.randn(3, 2, 32, generator=g).to(impl), torch.randn(3, 1, 32, generator=g).to(impl)

    def calls(inf):
        """(op name, function of the tensors it writes, the tensors); ``inf`` marks which become inference."""
        return [
            ("fused_add_rms_norm", lambda a, b: qknorm.fused_add_rms_norm(a, b, w), (x, r)),
            ("qk_rms_norm", lambda a, b: qknorm.qk_rms_norm(a, b, w, w, q_out=a, k_out=b), (q, k)),
            ("qk_rms_norm_rope", lambda a, b: qknorm.qk_rms_norm_rope(a, b, w, w, cs, pos, q_out=a, k_out=b), (q, k)),
            ("qk_norm_rope_cache", lambda a, b, kc, vc: qknorm.qk_norm_rope_cache(
                a, b, b * 2, w, w, cs, pos, kc, vc, torch.tensor([5, 1, 2], device=impl)),
             (q, k, torch.zeros(4, 2, 1, 32, device=impl), torch.zeros(4, 2, 1, 32, device=impl))),
            ("fused_add_rms_norm_quant", lambda a, b, o, s: qknorm.fused_add_rms_norm_quant(
                a, b, w, out_dtype=torch.int8, out=o, scales_out=s),
             (x, r, torch.zeros(3, 32, dtype=torch.int8, device=impl), torch.zeros(3, 1, device=impl))),
        ]

    for name, fn, ts in calls(None):
        for pick in range(len(ts)):  # one of the written tensors is an inference tensor at a time
            want = [t.clone() for t in ts]
            fn(*want)
            got = [infer(t) if i == pick else t.clone() for i, t in enumerate(ts)]
            fn(*got)
            for i, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"{name}: tensor {i} (inference tensor: {pick})"
    # a new output next to an inference target is an ordinary tensor (made outside the inference-mode write)
    y, _ = qknorm.rms_norm_quant(x.t().contiguous().t(), w, out_dtype=torch.int8,
                                 scales_out=infer(torch.zeros(3, 1, device=impl)))
    assert not y.is_inference() and y.is_contiguous()
    m = qknorm.nn.QKNorm(32, dtype=torch.float64, device=impl)
    qd, kd = q.double(), k.double()
    with torch.no_grad():  # its weights require grad
        want = m(qd.clone(), kd.clone())
        got = m(qd.clone(), infer(kd), in_place=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want)), "QKNorm float64 in place"


def test_an_inference_target_of_a_call_that_records_autograd_is_refused_before_any_write(impl):
    """With a weight that requires grad the call records autograd, and PyTorch refuses to write an inference
    tensor there: the first target (q, the residual) was written before the second raised; now nothing is."""
    w = torch.randn(16, device=impl, requires_grad=True)
    with torch.inference_mode():
        ki, xi = torch.randn(3, 1, 16, device=impl), torch.randn(3, 16, device=impl)
    q, r = torch.randn(3, 2, 16, device=impl), torch.randn(3, 16, device=impl)
    q0, r0 = q.clone(), r.clone()
    with pytest.raises(RuntimeError, match="k_out is an inference tensor"):
        qknorm.qk_rms_norm(q, ki, w, w, q_out=q, k_out=ki)
    with pytest.raises(RuntimeError, match="x is an inference tensor"):
        qknorm.fused_add_rms_norm(xi, r, w)
    assert torch.equal(q, q0) and torch.equal(r, r0)
