"""qk_norm_rope_cache: QK norm + RoPE + paged KV-cache write, against an fp64 reference.

Every test runs on both CPU implementations (the PyTorch path and the Triton kernel in the
interpreter; CUDA + Triton on a GPU). The reference is written here: RMSNorm in fp64, RoPE
as a complex multiplication of the pairs picked by the style, cache slots by hand
(``block = s // block_size``, ``offset = s % block_size``). Caches are poisoned first, so a
slot written that should not be (or not written that should be) shows.
"""
import pytest
import torch

import qknorm
from helpers import assert_matches, packed_qkv, randn, ref_norm, rope64_rows

T, HQ, HKV, NB, BS = 6, 4, 2, 3, 16
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def make_cache(max_pos, rotary_dim, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1).to(torch.float32)


def reference(q, k, qw, kw, cs, pos, r, is_neox, offset=0.0):
    half = r // 2
    rows = cs.double()[pos.cpu().long()]
    cos, sin = rows[:, :half], rows[:, half:r]
    return (rope64_rows(ref_norm(q, qw, 1e-6, offset), cos, sin, r, is_neox),
            rope64_rows(ref_norm(k, kw, 1e-6, offset), cos, sin, r, is_neox))


def new_cache(layout, h, d, dtype, device):
    """A poisoned cache and the view passed to the op: NHD ``[NB, BS, H, D]``, HND
    (``[NB, H, BS, D]`` permuted), or a flat pool ``[NB*BS, H, D]``."""
    if layout == "nhd":
        base = torch.empty(NB, BS, h, d, dtype=dtype, device=device)
        view = base
    elif layout == "hnd":
        base = torch.empty(NB, h, BS, d, dtype=dtype, device=device)
        view = base.permute(0, 2, 1, 3)
    else:
        base = torch.empty(NB * BS, h, d, dtype=dtype, device=device)
        view = base
    if dtype in FP8:
        base.view(torch.uint8).fill_(0x5A)  # an arbitrary code: any unnamed slot must keep it
    else:
        base.fill_(float("nan"))
    return base, view


def slot_view(view, s):
    """The ``[H, D]`` cache entry of slot ``s``."""
    return view[s] if view.dim() == 3 else view[s // BS, s % BS]


def slots_for(t, seed=0, skip=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randperm(NB * BS, generator=g)[:t]
    for i in skip:
        if i < t:
            s[i] = -1
    return s


def poisoned_elsewhere(view, slots):
    """Whether every slot not in ``slots`` still holds the poison."""
    named = {int(s) for s in slots if s >= 0}
    for s in range(NB * BS):
        if s in named:
            continue
        e = slot_view(view, s)
        if e.dtype in FP8:
            if not bool((e.view(torch.uint8) == 0x5A).all()):
                return False
        elif not bool(torch.isnan(e).all()):
            return False
    return True


def quant64(x, scale, dtype):
    """Dequantised FP8 value of fp64 ``x``: how close a stored code must be."""
    return torch.clamp(x / scale, -QMAX[dtype], QMAX[dtype]).to(dtype).double() * scale


def run_case(device, d, r, is_neox, layout, cache_dtype=torch.bfloat16, dtype=torch.bfloat16, k_out=False,
             q_out=False, seed=0):
    qkv, q, k, v = packed_qkv(T, HQ, HKV, d, dtype, device, gen=torch.Generator().manual_seed(seed))
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    qw, kw = randn((d,), torch.float32, device), randn((d,), torch.float32, device)
    cs = make_cache(64, r).to(device)
    pos = torch.randperm(64, generator=torch.Generator().manual_seed(seed + 1))[:T].to(device)
    slots = slots_for(T, seed).to(device)
    kb, kc = new_cache(layout, HKV, d, cache_dtype, device)
    vb, vc = new_cache(layout, HKV, d, cache_dtype, device)
    scales = {}
    if cache_dtype in FP8:
        scales = dict(k_scale=torch.tensor([0.02], device=device), v_scale=torch.tensor([0.01], device=device))
    qo = torch.full(q.shape, float("nan"), dtype=dtype, device=device) if q_out else None
    ko = torch.full(k.shape, float("nan"), dtype=dtype, device=device) if k_out else None
    res = qknorm.qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, kc, vc, slots, is_neox=is_neox, rotary_dim=r,
                                    q_out=qo, k_out=ko, **scales)
    rq, rk = reference(q0, k0, qw, kw, cs, pos, r, is_neox)
    return dict(qkv=qkv, q=q, k=k, v=v, q0=q0, k0=k0, v0=v0, res=res, qo=qo, ko=ko, rq=rq, rk=rk, kc=kc, vc=vc,
                slots=slots.cpu(), scales=scales, dtype=dtype, cache_dtype=cache_dtype)


def check_caches(c):
    kc, vc, slots = c["kc"].cpu(), c["vc"].cpu(), c["slots"]
    dtype, cdt = c["dtype"], c["cache_dtype"]
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        ke, ve = slot_view(kc, s), slot_view(vc, s)
        if cdt in FP8:
            ks, vs = float(c["scales"]["k_scale"]), float(c["scales"]["v_scale"])
            # K: within one FP8 step of the quantised reference (the fp32 value may round either way at a tie)
            err = (ke.double() * ks - quant64(c["rk"][t], ks, cdt)).abs()
            step = c["rk"][t].abs() * (2.0 ** -3 if cdt == torch.float8_e4m3fn else 2.0 ** -2) + 1e-9
            assert bool((err <= step).all()), f"K cache slot {s}: FP8 codes off by more than one step"
            # V: exactly PyTorch's quantisation of the input
            want = torch.clamp(c["v0"][t].cpu().float() / vs, -QMAX[cdt], QMAX[cdt]).to(cdt)
            assert torch.equal(ve.view(torch.uint8), want.view(torch.uint8)), f"V cache slot {s}"
        else:
            assert_matches(ke, c["rk"][t], dtype, f"K cache slot {s}")
            assert torch.equal(ve, c["v0"][t].cpu()), f"V cache slot {s}: not a copy of v"
    assert poisoned_elsewhere(kc, slots), "a K cache slot not named by slot_mapping was written"
    assert poisoned_elsewhere(vc, slots), "a V cache slot not named by slot_mapping was written"


# (head_dim, rotary_dim): full rotary, partial, an odd head_dim (80) full and partial
DIMS = [(64, 64), (128, 32), (80, 80), (96, 48)]


@pytest.mark.parametrize("layout", ["nhd", "hnd", "flat"])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("d,r", DIMS)
def test_in_place_bf16_cache(impl, d, r, is_neox, layout):
    """The engine's call: Q in place on the packed buffer, K and V into the cache; the K and
    V regions of the buffer stay bit-identical; only named slots are written."""
    c = run_case(impl, d, r, is_neox, layout)
    assert c["res"] is c["q"]
    assert_matches(c["q"], c["rq"], torch.bfloat16, "Q")
    assert torch.equal(c["k"], c["k0"]), "K region of the QKV buffer was modified"
    assert torch.equal(c["v"], c["v0"]), "V region of the QKV buffer was modified"
    check_caches(c)


@pytest.mark.parametrize("cache_dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("layout", ["nhd", "flat"])
def test_fp8_cache(impl, cache_dtype, layout):
    c = run_case(impl, 80, 32, True, layout, cache_dtype=cache_dtype)
    assert_matches(c["q"], c["rq"], torch.bfloat16, "Q")
    assert torch.equal(c["v"], c["v0"])
    check_caches(c)


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_q_out_and_k_out(impl, is_neox):
    """q_out given: q untouched; k_out given: receives K normalised and rotated."""
    c = run_case(impl, 64, 32, is_neox, "nhd", q_out=True, k_out=True)
    assert c["res"] is c["qo"]
    assert torch.equal(c["q"], c["q0"]) and torch.equal(c["k"], c["k0"]) and torch.equal(c["v"], c["v0"])
    assert_matches(c["qo"], c["rq"], torch.bfloat16, "q_out")
    assert_matches(c["ko"], c["rk"], torch.bfloat16, "k_out")
    check_caches(c)


def test_k_out_in_place(impl):
    """k_out=k: K normalised and rotated in place too (the cache gets the same values)."""
    qkv, q, k, v = packed_qkv(T, HQ, HKV, 64, torch.float32, impl, gen=torch.Generator().manual_seed(3))
    q0, k0 = q.clone(), k.clone()
    cs, pos = make_cache(32, 64).to(impl), torch.arange(T, device=impl)
    kc = torch.zeros(NB, BS, HKV, 64, device=impl)
    vc = torch.zeros(NB, BS, HKV, 64, device=impl)
    slots = torch.tensor([0, 5, 17, 33, 47, 2], device=impl)
    qknorm.qk_norm_rope_cache(q, k, v, None, None, cs, pos, kc, vc, slots, k_out=k)
    rq, rk = reference(q0, k0, None, None, cs, pos, 64, True)
    assert_matches(q, rq, torch.float32, "Q")
    assert_matches(k, rk, torch.float32, "K in place")
    assert torch.equal(kc[slots // BS, slots % BS], k)


def test_fp8_saturation_and_nan(impl):
    """V values past the format's range saturate to +-qmax; NaN stays NaN; zero scale-free codes."""
    d = 64
    qkv, q, k, v = packed_qkv(2, 1, 1, d, torch.float32, impl, gen=torch.Generator().manual_seed(4))
    v[0, 0, :4] = torch.tensor([1e6, -1e6, float("nan"), 0.0])
    v0 = v.clone()
    cs, pos = make_cache(8, d).to(impl), torch.tensor([1, 2], device=impl)
    for cdt in FP8:
        kc = torch.zeros(4, 1, d, dtype=cdt, device=impl)
        vc = torch.zeros(4, 1, d, dtype=cdt, device=impl)
        sc = torch.tensor([0.5], device=impl)
        qknorm.qk_norm_rope_cache(q, k, v, None, None, cs, pos, kc, vc, torch.tensor([3, 0], device=impl),
                                  k_scale=sc, v_scale=sc)
        got = vc[3, 0].cpu().float()
        assert got[0] == QMAX[cdt] and got[1] == -QMAX[cdt] and torch.isnan(got[2]) and got[3] == 0
        want = torch.clamp(v0[0, 0].cpu() / 0.5, -QMAX[cdt], QMAX[cdt]).to(cdt)
        assert torch.equal(vc[3, 0].cpu().view(torch.uint8)[4:], want.view(torch.uint8)[4:])


def test_q_matches_qk_rms_norm_rope(impl):
    """Q's values are qk_rms_norm_rope's, bit for bit (same arithmetic on both paths)."""
    for is_neox, (d, r) in ((True, (80, 48)), (False, (64, 64))):
        qkv, q, k, v = packed_qkv(T, HQ, HKV, d, torch.bfloat16, impl, gen=torch.Generator().manual_seed(5))
        qw, kw = randn((d,), torch.bfloat16, impl), randn((d,), torch.float32, impl)
        cs, pos = make_cache(40, r).to(impl), torch.randperm(40)[:T].to(impl)
        want, want_k = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, is_neox=is_neox, rotary_dim=r,
                                               weight_offset=1.0)
        kc = torch.zeros(NB * BS, HKV, d, dtype=torch.bfloat16, device=impl)
        vc = torch.zeros(NB * BS, HKV, d, dtype=torch.bfloat16, device=impl)
        slots = torch.arange(T, device=impl) * 7
        got = qknorm.qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, kc, vc, slots, is_neox=is_neox, rotary_dim=r,
                                        weight_offset=1.0, q_out=torch.empty_like(q))
        assert torch.equal(got, want)
        assert torch.equal(kc[slots], want_k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes_and_dv(impl, dtype):
    """fp16/fp32 activations and caches; V with its own head_dim (Dv != D); int32 slots and positions."""
    d, dv = 64, 32
    g = torch.Generator().manual_seed(6)
    q = torch.randn(T, HQ, d, generator=g).to(dtype).to(impl)
    k = torch.randn(T, HKV, d, generator=g).to(dtype).to(impl)
    v = torch.randn(T, HKV, 2 * dv, generator=g).to(dtype).to(impl)[..., ::2]  # strided last dim
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    cs = make_cache(16, d).to(impl)
    pos = torch.tensor([0, 3, 15, 7, 7, 1], dtype=torch.int32, device=impl)
    kc = torch.full((NB, BS, HKV, d), float("nan"), dtype=dtype, device=impl)
    vc = torch.full((NB, BS, HKV, dv), float("nan"), dtype=dtype, device=impl)
    slots = torch.tensor([47, -1, 0, 16, 20, -5], dtype=torch.int32, device=impl)
    qknorm.qk_norm_rope_cache(q, k, v, None, None, cs, pos, kc, vc, slots)
    rq, rk = reference(q0, k0, None, None, cs, pos, d, True)
    assert_matches(q, rq, dtype, "Q")
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert_matches(kc[s // BS, s % BS], rk[t], dtype, "K cache")
            assert torch.equal(vc[s // BS, s % BS], v0[t])
    assert int(torch.isnan(kc).flatten(2).all(-1).sum()) == NB * BS - 4


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_slots_past_the_cache_are_skipped(backend):
    """On CUDA slots are not checked on the host (no sync): both paths skip a slot >= num_slots
    like a negative one. Run here through ``run`` directly (the CPU call raises first); the
    Triton backend on the GPU when there is one, else in the interpreter."""
    d = 64
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    qkv, q, k, v = packed_qkv(4, 2, 1, d, torch.float32, dev, gen=torch.Generator().manual_seed(7))
    cs, pos = make_cache(8, d).to(dev), torch.tensor([0, 1, 2, 3], device=dev)
    for slots, want in ((torch.tensor([2, 1 << 40, 8, -7]), [[False, False, True, False], [False] * 4]),
                        (torch.tensor([-1, 8, 9, -2]), [[False] * 4, [False] * 4])):  # 8 slots
        _skip_case(backend, q, k, v, cs, pos, slots.to(dev), want, d)


def _skip_case(backend, q, k, v, cs, pos, slots, want, d):
    from qknorm.ops import qk_norm_rope_cache as op
    dev = q.device
    for cdt in (torch.float32, torch.float8_e4m3fn):
        kc = torch.randn(2, 4, 1, d).to(cdt).to(dev)
        vc = torch.randn(2, 4, 1, d).to(cdt).to(dev)
        before = (kc.view(torch.uint8).clone(), vc.view(torch.uint8).clone())
        sc = torch.tensor([1.0], device=dev)
        with qknorm.use_backend(backend):
            op.run(q, k, v, None, None, cs, pos, kc, vc, slots, 1e-6, True, d, 0.0, None, sc, sc, None, None)
        for c, b in zip((kc, vc), before):
            written = (c.view(torch.uint8) != b).flatten(2).any(-1)
            assert written.tolist() == want
