"""The fused quantised norm kernel (``kernels/rms_norm_quant.py``), interpreted on the CPU.

Exactness is checked in two steps, each bit for bit: the kernel's fp32 ``n`` (its ``DEBUG``
output) against ``rms_norm`` / ``fused_add_rms_norm`` run by the Triton kernels under the same
config (the pre-quantisation values are theirs before rounding), and the kernel's codes and
scales against the PyTorch quantisation of that same ``n`` (``ops.rms_norm_quant.quantise``).
``n`` itself is checked against the fp64 reference. The FP8 cast (the kernel's own bit path in
the interpreter, whose ``.to(fp8)`` is wrong) and the UE8M0 rounding are checked on their own
over many edge values.
"""
import pytest
import torch

import qknorm
from qknorm import invariance
from helpers import DTYPES, randn, ref_add_norm, ref_norm
from qknorm.ops import _plan
from qknorm.ops import rms_norm_quant as Q

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from qknorm.kernels.rms_norm_quant import pow2_ceil, to_codes  # noqa: E402 - needs triton

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
F8 = torch.float8_e4m3fn
F5 = torch.float8_e5m2
I8 = torch.int8
OUTS = [F8, F5, I8]
MODES = {"static": dict(scale=0.02), "token": {}, "g32": dict(group_size=32), "g40": dict(group_size=40)}


@pytest.fixture(autouse=True)
def kernel_backend():
    with qknorm.use_backend("triton"):
        yield


# --------------------------------------------------------------------------- helpers

def mode_kwargs(mode, device=DEV):
    kw = dict(MODES[mode])
    if "scale" in kw:
        kw["scale"] = torch.tensor([kw["scale"]], device=device)
    return kw


def n_groups_of(kw, d):
    if kw.get("scale") is not None:
        return 0
    return 1 if kw.get("group_size") is None else d // kw["group_size"]


def nan_code(y):
    """Where ``y`` (8-bit codes) holds a NaN (any sign or payload): fp8 only."""
    b = y.view(torch.uint8).to(torch.int32) & 0x7F
    if y.dtype == F8:
        return b == 0x7F
    if y.dtype == F5:
        return b > 0x7C
    return torch.zeros_like(b, dtype=torch.bool)


def assert_same_codes(a, b, what="codes"):
    """Bit for bit, except that any NaN code equals any other."""
    assert a.dtype == b.dtype and a.shape == b.shape
    na, nb = nan_code(a), nan_code(b)
    assert torch.equal(na, nb), f"{what}: NaN codes differ"
    ua, ub = a.view(torch.uint8), b.view(torch.uint8)
    diff = (ua != ub) & ~na
    assert not bool(diff.any()), f"{what}: {int(diff.sum())} codes differ, e.g. {ua[diff][:5]} vs {ub[diff][:5]}"


def assert_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    ia = a.contiguous().view(torch.int32 if a.element_size() == 4 else torch.int16)
    ib = b.contiguous().view(torch.int32 if b.element_size() == 4 else torch.int16)
    nan = torch.isnan(a) & torch.isnan(b)
    diff = (ia != ib) & ~nan
    worst = float((a - b).abs().nan_to_num().max())
    assert not bool(diff.any()), f"{what}: {int(diff.sum())} values differ, max {worst}"


def assert_within_one_ulp(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    it = torch.int32 if a.element_size() == 4 else torch.int16
    ia = a.contiguous().view(it).to(torch.int64)
    ib = b.contiguous().view(it).to(torch.int64)
    nan = torch.isnan(a) & torch.isnan(b)
    same_sign = (ia < 0) == (ib < 0)
    assert bool((((ia - ib).abs() <= 1) & same_sign | nan | (a == b)).all()), f"{what}: more than one ulp apart"


def as_stored(n, dtype):
    """fp32 ``n`` rounded to ``dtype`` as the kernels store it (round to nearest even, the interpreter too:
    ``kernels/_interp_compat.py``)."""
    return n.to(dtype)


def run_kernel(x, weight=None, residual=None, config=None, **kw):
    """The kernel's ``(y, scales, n)``: the call plus its DEBUG output."""
    out = kw.get("out")
    dbg = torch.full(x.shape, float("nan"), dtype=torch.float32, device=x.device)
    if out is not None:  # DEBUG stores with the codes' strides
        dbg = torch.empty_strided(out.shape, out.stride(), dtype=torch.float32, device=x.device).fill_(float("nan"))
    y, s = Q.call(x, residual, weight, kw.pop("eps", 1e-6), config=config, debug=dbg, **kw)
    return y, s, dbg


def _same_strides(values, like):
    """``values`` in a copy of ``like``'s storage, viewed with its offset, shape and strides."""
    t = torch.empty(0, dtype=like.dtype, device=like.device)
    t.set_(like.untyped_storage().clone(), like.storage_offset(), like.shape, like.stride())
    return t.copy_(values)


def check_call(x, weight=None, residual=None, config=None, offset=0.0, eps=1e-6, fp64=True, **kw):
    """Run the kernel and check n against the rms_norm kernels (bits) and fp64 (``fp64``), the
    codes and scales against PyTorch's quantisation of that n (bits), the residual write (bits)."""
    r0 = residual.clone() if residual is not None else None
    x0 = x.clone()
    y, s, n = run_kernel(x, weight, residual, config, weight_offset=offset, eps=eps, **kw)
    assert_bits(x, x0, "x must not be modified")
    cfg = {} if config is None else {"config": config}
    # The rms_norm kernels on copies with x's (and residual's) strides: Triton's layout of a row, and
    # so its summation order, depends on the rows' alignment (a strided x's row stride may not be a
    # multiple of 16 where a contiguous copy's is), which shows in fp32.
    if residual is None:
        ref = qknorm.rms_norm(_same_strides(x0, x), weight, eps, weight_offset=offset, **cfg)
        ref64 = ref_norm(x0, weight, eps, offset)
    else:
        xs, rs = _same_strides(x0, x), _same_strides(r0, residual)
        qknorm.fused_add_rms_norm(xs, rs, weight, eps, weight_offset=offset, **cfg)
        ref = xs
        ref64, sum64 = ref_add_norm(x0, r0, weight, eps, offset)
        assert_bits(residual, as_stored(x0.float() + r0.float(), x.dtype), "residual")
    # Bits: with the same strides the sum of squares has rms_norm's layout in every form (the
    # code stores are kept off it: rms_norm_quant.code_cols; tests/kernels/test_aot_compile.py).
    # The one-ulp differences seen on an H100 before came from comparing a strided x with a
    # contiguous copy.
    assert_bits(as_stored(n, x.dtype), ref, "n vs rms_norm's kernel")
    if fp64:
        err = ((n.cpu().double() - ref64).norm() / ref64.norm().clamp(min=1e-30)).item()
        assert err < 1e-5, f"n vs fp64: {err}"
    out_dtype = kw.get("out_dtype", F8)
    yq, sq = Q.quantise(n, kw.get("scale"), n_groups_of(kw, x.shape[-1]), out_dtype, kw.get("scale_ub"),
                        kw.get("scale_ue8m0", False))
    assert_same_codes(y, yq)
    if kw.get("scale") is not None:
        assert s is kw["scale"]
    else:
        torch.testing.assert_close(s, sq, rtol=0, atol=0, equal_nan=True)
    return y, s, n


# --------------------------------------------------------------------------- the cast and UE8M0 on their own

@triton.jit
def _codes_kernel(Q_, Y, n, OUT: tl.constexpr, QMAX: tl.constexpr, NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    q = tl.load(Q_ + i, mask=m, other=0.0)
    tl.store(Y + i, to_codes(q, Y.dtype.element_ty, OUT, NATIVE, QMAX), mask=m)


@triton.jit
def _pow2_kernel(S, R, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(R + i, pow2_ceil(tl.load(S + i, mask=m, other=1.0)), mask=m)


def _edge_values(qmax, device):
    """Every fp8/int8 code's value, the midpoints between neighbours (ties) and one fp32 ulp
    either side, subnormals, zeros, saturation, NaN, plus random values."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vals = torch.cat([codes.view(F8).float(), codes.view(F5).float(), torch.arange(-127.0, 128.0)])
    vals = vals[torch.isfinite(vals)].unique()
    mids = (vals[1:] + vals[:-1]) / 2
    e = torch.cat([vals, mids, torch.nextafter(mids, torch.tensor(float("inf"))),
                   torch.nextafter(mids, torch.tensor(-float("inf")))])
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(20000, generator=g) * torch.exp2(torch.randint(-30, 20, (20000,), generator=g).float())
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 2.0 ** -149, 1e-30, qmax, -qmax, float("nan"), -float("nan")])
    q = torch.cat([e, -e, rnd, special]).float()
    return q.clamp(-qmax, qmax).to(device)  # the kernel casts saturated values (clamp keeps NaN)


@pytest.mark.parametrize("out_dtype", OUTS)
def test_cast_matches_torch_bit_for_bit(out_dtype):
    """The kernel's cast (the bit path off sm_89+, always in the interpreter) of saturated
    values: PyTorch's round-to-nearest-even codes (int8: rint, NaN -> 0)."""
    qmax = Q.QMAX[out_dtype]
    q = _edge_values(qmax, DEV)
    y = torch.empty(q.shape, dtype=out_dtype, device=DEV)
    _codes_kernel[(triton.cdiv(q.numel(), 4096),)](q, y, q.numel(), OUT=Q._OUT_CODE[out_dtype], QMAX=qmax,
                                                   NATIVE=False, BLOCK=4096)
    if out_dtype == I8:
        want = torch.nan_to_num(torch.round(q), nan=0.0).to(I8)
        assert torch.equal(y, want)
    else:
        want = q.to(out_dtype)
        # NaN -> a NaN code (PyTorch keeps the sign; a GPU's min/max may return the canonical NaN)
        assert_same_codes(y, want)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [F8, F5])
def test_native_fp8_cast_matches_bits(out_dtype):
    """On the GPU: Triton's cast (NATIVE_CAST, sm_89+) gives the bit path's codes (NaN: any NaN)."""
    if not HAS_CUDA or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs an sm_89+ GPU")
    qmax = Q.QMAX[out_dtype]
    q = _edge_values(qmax, "cuda")
    ys = []
    for native in (False, True):
        y = torch.empty(q.shape, dtype=out_dtype, device="cuda")
        _codes_kernel[(triton.cdiv(q.numel(), 1024),)](q, y, q.numel(), OUT=Q._OUT_CODE[out_dtype], QMAX=qmax,
                                                       NATIVE=native, BLOCK=1024)
        ys.append(y)
    assert_same_codes(ys[1], ys[0], "native vs bits")


def test_pow2_ceil_matches_torch():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(5000, generator=g) * torch.exp2(torch.randint(-149, 127, (5000,), generator=g).float())
    pw = torch.exp2(torch.arange(-149, 128).float())
    special = torch.tensor([0.0, -1.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4028234663852886e38,
                            1.1754943508222875e-38, 1e-45, 1.5e-45, 3e-39])
    s = torch.cat([s, pw, torch.nextafter(pw, torch.tensor(0.0)), torch.nextafter(pw, torch.tensor(float("inf"))),
                   special]).to(DEV)
    r = torch.empty_like(s)
    _pow2_kernel[(triton.cdiv(s.numel(), 2048),)](s, r, s.numel(), BLOCK=2048)
    want = Q.pow2_ceil(s)
    torch.testing.assert_close(r, want, rtol=0, atol=0, equal_nan=True)
    s, want = s.cpu(), want.cpu()  # the fp64 formula on the CPU (CUDA's fp64 log2 is not correctly rounded)
    fin = (s > 0) & (s <= 2.0 ** 127)  # above 2**127 the power of two is inf in fp32
    f = s[fin].double()
    assert torch.equal(want[fin].double(), torch.exp2(torch.ceil(torch.log2(f))))


# --------------------------------------------------------------------------- modes x formats x dtypes

@pytest.mark.parametrize("fused", [False, True], ids=["norm", "fused"])
@pytest.mark.parametrize("out_dtype", OUTS, ids=["e4m3", "e5m2", "int8"])
@pytest.mark.parametrize("mode", list(MODES))
def test_modes_formats_dtypes(mode, out_dtype, fused):
    """Every mode x format x input dtype, weight with Gemma's offset, a strided x (D = 160)."""
    for i, dtype in enumerate(DTYPES):
        torch.manual_seed(i)
        base = randn((6, 3, 168), dtype, DEV, 3.0)
        x = base[:, 1, 8:]
        w = randn((160,), torch.float32, DEV, 0.5)
        r = randn((6, 160), dtype, DEV) if fused else None
        kw = mode_kwargs(mode)
        y, s, _ = check_call(x, w, r, offset=1.0, out_dtype=out_dtype, **kw)
        assert y.is_contiguous()
        if "scale" not in kw:
            assert s.shape == (6, n_groups_of(kw, 160))
            assert y.float().abs().amax() > 0.5 * Q.QMAX[out_dtype]  # codes span the format


@pytest.mark.parametrize("d", [1, 7, 111])
def test_odd_widths(d):
    for mode, out_dtype in (("token", F8), ("static", I8)):
        x = randn((5, d), torch.bfloat16, DEV, 2.0)
        check_call(x, randn((d,), torch.bfloat16, DEV), out_dtype=out_dtype, **mode_kwargs(mode))
    check_call(randn((3, d), torch.float16, DEV), None, group_size=d, out_dtype=F5)  # one group per row


def test_weight_none_dtypes_and_eps():
    x = randn((4, 96), torch.float16, DEV)
    check_call(x, None, eps=1e-3, group_size=32)
    for wd in (torch.bfloat16, torch.float16, torch.float64):
        check_call(x, randn((96,), wd, DEV), offset=0.5, group_size=48, out_dtype=I8)


def test_leading_dims_and_views():
    """rank 1, rank 4 permuted, a last dim with stride != 1, five leading dims that do not merge
    (run on contiguous copies), a DeepSeek-like column slice."""
    check_call(randn((64,), torch.float32, DEV), group_size=16)
    base = randn((2, 5, 3, 64), torch.float16, DEV)
    check_call(base.permute(2, 0, 1, 3), randn((64,), torch.float16, DEV), group_size=16, column_major_scales=True)
    check_call(randn((6, 40), torch.float32, DEV).t(), None, out_dtype=I8)  # [40, 6], last-dim stride 40
    b5 = randn((2, 3, 2, 3, 2, 16), torch.bfloat16, DEV)
    y, s, _ = check_call(b5.permute(4, 0, 3, 1, 2, 5), None, group_size=8)
    assert s.shape == (2, 2, 3, 3, 2, 2)
    buf = randn((9, 2112), torch.bfloat16, DEV)
    check_call(buf[:, :1536], randn((1536,), torch.bfloat16, DEV), group_size=128, scale_ue8m0=True,
               column_major_scales=True)


def test_given_strided_and_poisoned_outputs_are_overwritten():
    x = randn((3, 4, 96), torch.bfloat16, DEV, 2.0)
    w = randn((96,), torch.bfloat16, DEV)
    for out_dtype, mode in ((F8, "g32"), (I8, "token"), (F5, "static")):
        kw = mode_kwargs(mode)
        y_ref, s_ref, _ = run_kernel(x, w, out_dtype=out_dtype, **kw)
        big = torch.full((3, 4, 192), 0x55, dtype=torch.uint8, device=DEV).view(out_dtype)
        out = big[:, :, 96:]  # strided, pre-filled garbage
        ng = n_groups_of(kw, 96)
        so = None
        if ng:
            so = torch.full((ng, 3, 4), float("nan"), device=DEV).permute(1, 2, 0)  # column-major garbage
        y, s, _ = run_kernel(x, w, out=out, scales_out=so, out_dtype=out_dtype, **kw)
        assert y is out and (s is so if ng else s is kw["scale"])
        assert_same_codes(out, y_ref)
        assert torch.equal(big[:, :, :96].view(torch.uint8), torch.full_like(big[:, :, :96].view(torch.uint8), 0x55))
        if ng:
            torch.testing.assert_close(s, s_ref, rtol=0, atol=0)


def test_extreme_values():
    """Saturation, NaN and inf in x, a zero row (amax floor), huge weights, scale bounds,
    UE8M0 (codes and scales against PyTorch's quantisation of the kernel's n)."""
    x = randn((6, 64), torch.float32, DEV, 2.0)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    x[3] = 0.0
    x[4, 3] = -1e30
    for out_dtype in OUTS:
        sat = torch.tensor([1.0 / Q.QMAX[out_dtype]], device=DEV)  # |n| > 1 saturates
        y, _, _ = check_call(x, None, scale=sat, out_dtype=out_dtype, fp64=False)
        if out_dtype != I8:
            assert bool(nan_code(y[1]).all())  # a NaN row normalises to NaN everywhere; fp8 keeps it
            assert (y[0].float().abs() == Q.QMAX[out_dtype]).sum() > 10  # saturated
        else:
            assert bool((y[1] == 0).all()) and int(y[0].abs().max()) == 127
        for kw in (dict(group_size=16), dict(group_size=16, scale_ue8m0=True),
                   dict(scale_ub=1e-4), dict(scale_ub=torch.tensor([3e-3], device=DEV), group_size=32)):
            y, s, _ = check_call(x, None, out_dtype=out_dtype, fp64=False, **kw)
            assert bool(torch.isnan(s[1]).all()) and bool(torch.isfinite(s[0]).all())
    w = torch.full((64,), 3e38, device=DEV)  # n overflows to inf
    check_call(randn((2, 64), torch.float32, DEV), w, group_size=32, fp64=False)
    check_call(randn((2, 64), torch.float32, DEV), w, scale=torch.tensor([0.0], device=DEV), fp64=False)  # n / 0


# --------------------------------------------------------------------------- kernel forms

CHUNK = qknorm.KernelConfig(rows=2, block_d=64, num_warps=2)


@pytest.mark.parametrize("fused", [False, True], ids=["norm", "fused"])
def test_chunked_and_two_pass_forms(fused):
    """block_d < D (the chunked sum of squares): static chunks, whole-group tiles (power-of-two
    and not), groups and rows wider than a tile (amax pass + quantising pass); and the
    unchunked two-pass form (non-power-of-two groups). n has rms_norm's bits under the same
    config."""
    d = 240
    x = randn((5, d), torch.bfloat16, DEV, 2.0)
    w = randn((d,), torch.float32, DEV)
    for cfg in (CHUNK, qknorm.KernelConfig(rows=4, block_d=256, num_warps=4, persistent=True, programs_per_sm=1)):
        for kw in (dict(scale=torch.tensor([0.01], device=DEV)), {}, dict(group_size=16), dict(group_size=48),
                   dict(group_size=80, scale_ue8m0=True), dict(group_size=120, out_dtype=I8)):
            r = randn((5, d), torch.bfloat16, DEV) if fused else None
            check_call(x, w, r, config=cfg, offset=0.25, **kw)


def test_wide_rows_default_config():
    """Widths up to 16384 in registers, wider rows chunked by the dispatcher's pick."""
    for d, kw in ((16384, dict(group_size=128, scale_ue8m0=True, column_major_scales=True)),
                  (20000, {}), (20000, dict(group_size=2000, out_dtype=I8))):
        x = randn((2, d), torch.bfloat16, DEV)
        check_call(x, None, randn((2, d), torch.bfloat16, DEV), **kw)


@pytest.mark.parametrize("kw,d", [(dict(group_size=64), 128), (dict(group_size=40), 320), ({}, 256)],
                         ids=["g64", "g40-two-pass", "token"])
def test_rows_persistent_and_batch_invariance(kw, d):
    """A row's codes and scales do not depend on how many rows the call has (the dispatcher may
    pick other configs for other row counts: on a GPU up to 3000 rows), nor on rows per program."""
    t = 3000 if HAS_CUDA else 37
    x = randn((t, d), torch.bfloat16, DEV)
    y, s, _ = check_call(x, None, **kw)
    for n in (1, 5, 33) + ((257, 1100) if HAS_CUDA else ()):
        yn, sn, _ = run_kernel(x[:n], **kw)
        assert torch.equal(yn.view(torch.uint8), y[:n].view(torch.uint8))
        assert torch.equal(sn, s[:n])
    if d == 128:
        # rows per program changed, the row layout kept (the dispatcher's promise: a config outside
        # it, e.g. rows=1 x 2 warps here, sums a row in another order, as rms_norm's kernel would)
        for rows in (4, 8, 16):
            cfg = qknorm.KernelConfig(rows=rows, block_d=128, num_warps=2, persistent=True, programs_per_sm=1)
            assert invariance.is_invariant(cfg, 2), cfg
            yc, sc, _ = run_kernel(x, config=cfg, **kw)
            assert_same_codes(yc, y)
            assert torch.equal(sc, s)


def test_rows_out_of_fp32_range():
    """Rows whose fp32 sum of squares overflows (1e20, 1e37) or underflows (1e-22, with eps = 0 and
    a tiny eps) get rms_norm's exact values (``rows.range_factors``), in every form."""
    x = randn((4, 96), torch.float32, DEV, 1e20)
    x[1] *= 1e-42
    x[2] *= 1e17
    for cfg in (None, qknorm.KernelConfig(rows=2, block_d=32, num_warps=2)):
        for kw in ({}, dict(group_size=48), dict(group_size=24), dict(scale=torch.tensor([0.1], device=DEV))):
            check_call(x, None, None, config=cfg, **kw)
            check_call(x, None, randn((4, 96), torch.float32, DEV, 1e20), config=cfg, **kw)
    tiny = randn((3, 96), torch.float32, DEV, 1e-22)
    for eps in (0.0, 1e-45, 1e-6):
        check_call(tiny, None, None, eps=eps)
    big = torch.full((2, 96), 3.0e38, device=DEV)  # rms past 2**126: fp32 keeps two factors, bf16 folds them
    big[:, ::3] = -1.0e38
    for dt in (torch.float32, torch.bfloat16):
        for cfg in (None, qknorm.KernelConfig(rows=2, block_d=32, num_warps=2)):
            check_call(big.to(dt), None, None, config=cfg)


def test_rows_past_the_launch_limit(monkeypatch):
    """Calls past ``layout.ROW_LIMIT`` rows run in pieces (the limit lowered to 4 here)."""
    from qknorm import layout
    x = randn((3, 5, 32), torch.float16, DEV)
    want = run_kernel(x, group_size=16, column_major_scales=True)
    monkeypatch.setattr(layout, "ROW_LIMIT", 4)
    got = run_kernel(x, group_size=16, column_major_scales=True)
    assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


# --------------------------------------------------------------------------- the fast call

@pytest.fixture
def fast_call(monkeypatch):
    """The cached-plan call (CUDA only normally) on CPU tensors through the interpreter."""
    if HAS_CUDA:
        pytest.skip("CPU stand-in for the CUDA fast path")
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    calls = []
    general = Q._launch_general
    monkeypatch.setattr(Q, "_launch_general", lambda *a, **k: calls.append(1) or general(*a, **k))
    return calls


def test_fast_call_matches_general(fast_call):
    x = randn((5, 96), torch.bfloat16, DEV)
    w = randn((96,), torch.bfloat16, DEV)
    r = randn((5, 96), torch.bfloat16, DEV)
    cases = [dict(group_size=32, column_major_scales=True, scale_ue8m0=True), dict(out_dtype=I8, scale_ub=0.01),
             dict(scale=torch.tensor([0.02]), out_dtype=F5), dict(group_size=48, scale_ub=torch.tensor([0.004]))]
    for kw in cases:
        for fused in (False, True):
            r_want = r.clone() if fused else None
            y0, s0, _ = run_kernel(x, w, r_want, **kw)  # the general call (DEBUG)
            n_general = len(fast_call)
            for given in (False, False, True):  # the second call reuses the plan
                out = so = None
                if given:
                    out = torch.empty(x.shape, dtype=kw.get("out_dtype", F8))
                    so = None if "scale" in kw else torch.full(s0.shape, float("nan")).t().contiguous().t()
                if fused:
                    rr = r.clone()
                    y, s = qknorm.fused_add_rms_norm_quant(x, rr, w, 1e-6, out=out, scales_out=so, **kw)
                    assert torch.equal(rr, r_want)
                else:
                    y, s = qknorm.rms_norm_quant(x, w, 1e-6, out=out, scales_out=so, **kw)
                assert_same_codes(y, y0)
                if "scale" in kw:
                    assert s is kw["scale"]
                else:
                    assert torch.equal(s, s0) and (s is so if given else s.stride() == s0.stride())
                assert out is None or y is out
            assert len(fast_call) == n_general, "the fast call took them"


def test_fast_call_overlaps_go_the_general_way(fast_call):
    """A weight inside the written residual is read from a private copy (the general call);
    a written tensor meeting another one raises there, with nothing written."""
    x = randn((4, 64), torch.float32, DEV)
    buf = randn((4, 64), torch.float32, DEV)
    w = buf[1]  # a row of the residual
    r_ref, w_ref = buf.clone(), buf[1].clone()
    y_ref, s_ref = qknorm.fused_add_rms_norm_quant(x, r_ref, w_ref, group_size=32)
    assert len(fast_call) == 0
    y, s = qknorm.fused_add_rms_norm_quant(x, buf, w, group_size=32)
    assert len(fast_call) == 1
    assert_same_codes(y, y_ref)
    assert torch.equal(s, s_ref) and torch.equal(buf, r_ref)
    x0, r0 = x.clone(), buf.clone()
    with pytest.raises(ValueError, match="overlap"):
        qknorm.rms_norm_quant(x, group_size=32, scales_out=x[:, :2])
    with pytest.raises(ValueError, match="overlap"):
        qknorm.fused_add_rms_norm_quant(x, buf, group_size=32, scales_out=buf[:, :2])
    with pytest.raises(ValueError, match="overlap"):
        qknorm.fused_add_rms_norm_quant(x, buf, out=buf.view(torch.int8)[:, :64], out_dtype=I8)
    assert torch.equal(x, x0) and torch.equal(buf, r0)
