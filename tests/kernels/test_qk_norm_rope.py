"""qk_rms_norm_rope: per-head RMSNorm of Q and K, then RoPE, against an fp64 reference.

The reference here is written independently of ``qknorm.reference_rope``: the rotation is
a complex multiplication ``(a + ib) * (cos + i sin)`` of the pairs picked by the style
(NeoX: ``x[j]``/``x[j + R/2]``, GPT-J: ``x[2j]``/``x[2j+1]``), cos/sin read from the cache
that the op gets. Sensitivity tests check that a wrong style, wrong positions or a wrong
rotary split would fail these comparisons.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qknorm
from helpers import DTYPES, TOL, assert_matches, packed_qkv, poisoned, randn, ref_norm, rel_err, rope64_rows
from qknorm.reference_rope import qk_rms_norm_rope_ref


# --------------------------------------------------------------------------- reference

def make_cache(max_pos, rotary_dim, dtype=torch.float32, base=10000.0, device="cpu"):
    """``[max_pos, rotary_dim]``: cos half then sin half (vLLM/FlashInfer layout)."""
    inv = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1).to(dtype).to(device)


def rope64(x, cache, positions, rotary_dim, is_neox):
    """fp64 RoPE of ``x`` ``[T, H, D]`` (already in fp64) with the cache rows of ``positions``."""
    half = rotary_dim // 2
    cs = cache.detach().cpu().to(torch.float64)[positions.cpu().long()]
    return rope64_rows(x, cs[:, :half], cs[:, half:rotary_dim], rotary_dim, is_neox)


def ref(q, k, qw, kw, cache, positions, rotary_dim=None, is_neox=True, eps=1e-6, offset=0.0):
    r = q.shape[-1] if rotary_dim is None else rotary_dim
    return (rope64(ref_norm(q, qw, eps, offset), cache, positions, r, is_neox),
            rope64(ref_norm(k, kw, eps, offset), cache, positions, r, is_neox))


def positions_for(t, max_pos, dtype=torch.int64, device="cpu", seed=0):
    """Random, unsorted positions (distinct where possible, so a token mix-up shows)."""
    g = torch.Generator().manual_seed(seed)
    if t <= max_pos:
        p = torch.randperm(max_pos, generator=g)[:t]
    else:
        p = torch.randint(0, max_pos, (t,), generator=g)
    return p.to(dtype).to(device)


def weights(kind, d, dtype, device):
    """(q_weight, k_weight, weight_offset) for a weight kind."""
    if kind == "none":
        return None, None, 0.0
    if kind == "fp32":
        return randn((d,), torch.float32, device), randn((d,), torch.float32, device), 0.0
    if kind == "act":
        return randn((d,), dtype, device), randn((d,), dtype, device), 0.0
    if kind == "gemma":
        return randn((d,), dtype, device, 0.1), randn((d,), torch.float32, device, 0.1), 1.0
    raise AssertionError(kind)


# (head_dim, rotary_dim): full rotary, partial (Qwen3-Next 64 of 256, 32 of 128), odd sizes
DIMS = [(64, 64), (128, 128), (256, 256), (256, 64), (128, 32), (80, 48), (80, 80), (96, 2)]


# --------------------------------------------------------------------------- the reference itself

def test_reference_module_matches_independent_reference():
    """reference_rope (the CPU path's math) agrees with the complex-number reference here."""
    q, k = randn((5, 3, 80), torch.float32, "cpu"), randn((5, 2, 80), torch.float32, "cpu")
    qw, kw = randn((80,), torch.float32, "cpu"), randn((80,), torch.float32, "cpu")
    cs, pos = make_cache(64, 48), positions_for(5, 64)
    for neox in (True, False):
        a = qk_rms_norm_rope_ref(q, k, qw, kw, cs, pos, is_neox=neox, rotary_dim=48, weight_offset=1.0,
                                 compute_dtype=torch.float64)
        b = ref(q, k, qw, kw, cs, pos, 48, neox, offset=1.0)
        assert torch.allclose(a[0], b[0], atol=1e-12) and torch.allclose(a[1], b[1], atol=1e-12)


def test_reference_pairs_by_hand():
    """A one-hot head rotated by 90 degrees moves to its pair partner: NeoX j -> j + R/2,
    GPT-J 2j -> 2j + 1 (so the two styles cannot be confused by a symmetric check)."""
    d = 8
    cs = torch.zeros(1, d, dtype=torch.float64)
    cs[0, d // 2:] = 1.0  # cos 0, sin 1
    x = torch.zeros(1, 1, d, dtype=torch.float64)
    x[0, 0, 1] = 1.0
    pos = torch.zeros(1, dtype=torch.long)
    neox = rope64(x, cs, pos, d, True)[0, 0]
    gptj = rope64(x, cs, pos, d, False)[0, 0]
    assert neox.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert gptj.tolist() == [-1, 0, 0, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- kernel vs reference

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("d,r", DIMS)
def test_packed_in_place(impl, dtype, is_neox, d, r):
    """In place on packed-QKV views (the engine's call); V stays bit-identical."""
    t, hq, hkv = 5, 4, 2
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    v_before = v.clone()
    qw, kw, off = weights("fp32", d, dtype, impl)
    cs = make_cache(40, r, device=impl)
    pos = positions_for(t, 40, device=impl)
    rq, rk = ref(q, k, qw, kw, cs, pos, r, is_neox, offset=off)
    out = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, is_neox=is_neox, rotary_dim=r, q_out=q, k_out=k)
    assert out[0] is q and out[1] is k
    assert_matches(q, rq, dtype, "q")
    assert_matches(k, rk, dtype, "k")
    assert torch.equal(v, v_before), "in-place QK norm + RoPE touched V"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wkind", ["none", "fp32", "act", "gemma"])
@pytest.mark.parametrize("cache_dtype", ["fp32", "act"])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_out_of_place_poisoned(impl, dtype, wkind, cache_dtype, pos_dtype):
    """Into NaN-poisoned outputs (every element must be written); inputs unchanged."""
    t, hq, hkv, d, r = 7, 3, 1, 128, 128
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    before = qkv.clone()
    qw, kw, off = weights(wkind, d, dtype, impl)
    cs = make_cache(300, r, torch.float32 if cache_dtype == "fp32" else dtype, device=impl)
    pos = positions_for(t, 300, pos_dtype, impl, seed=3)
    qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
    rq, rk = ref(q, k, qw, kw, cs, pos, r, True, offset=off)
    res = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, weight_offset=off, q_out=qo, k_out=ko)
    assert res[0] is qo and res[1] is ko
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    assert torch.equal(qkv, before), "out-of-place call modified its inputs"


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("d,r", [(256, 64), (80, 48)])
def test_gemma_offset_partial(impl, is_neox, d, r):
    qkv, q, k, v = packed_qkv(3, 4, 2, d, torch.bfloat16, impl)
    qw, kw, off = weights("gemma", d, torch.bfloat16, impl)
    cs = make_cache(16, r, torch.bfloat16, device=impl)
    pos = positions_for(3, 16, torch.int32, impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-5, is_neox=is_neox, rotary_dim=r,
                                     weight_offset=off)
    assert qo.is_contiguous() and ko.is_contiguous()
    rq, rk = ref(q, k, qw, kw, cs, pos, r, is_neox, eps=1e-5, offset=off)
    assert_matches(qo, rq, torch.bfloat16, "q")
    assert_matches(ko, rk, torch.bfloat16, "k")


@pytest.mark.parametrize("t", [1, 3, 17])
def test_token_counts(impl, t):
    qkv, q, k, v = packed_qkv(t, 8, 2, 64, torch.float16, impl)
    qw, kw, _ = weights("act", 64, torch.float16, impl)
    cs = make_cache(64, 64, device=impl)
    pos = positions_for(t, 64, device=impl, seed=t)
    qo, ko = poisoned(q.shape, torch.float16, impl), poisoned(k.shape, torch.float16, impl)
    qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, q_out=qo, k_out=ko)
    rq, rk = ref(q, k, qw, kw, cs, pos)
    assert_matches(qo, rq, torch.float16, "q")
    assert_matches(ko, rk, torch.float16, "k")


def test_empty(impl):
    qkv, q, k, v = packed_qkv(0, 4, 2, 64, torch.bfloat16, impl)
    cs = make_cache(8, 64, device=impl)
    pos = torch.empty(0, dtype=torch.int64, device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos)
    assert qo.shape == (0, 4, 64) and ko.shape == (0, 2, 64)
    rq, rk = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, q_out=q, k_out=k)
    assert rq is q and rk is k


def test_strided_views(impl):
    """Permuted Q, last-dim stride 2 for K, strided outputs, positions, cache and weights."""
    t, hq, hkv, d, r = 4, 3, 2, 64, 32
    dtype = torch.float32
    q = randn((hq, t, d), dtype, impl).transpose(0, 1)                     # [T, H, D], token stride D
    k = randn((t, d, 2 * hkv), dtype, impl).permute(0, 2, 1)[:, ::2]       # last-dim stride 2*hkv
    assert q.stride(2) == 1 and k.stride(2) != 1
    qw = randn((2 * d,), dtype, impl)[::2]
    kw = randn((d,), torch.bfloat16, impl)
    big = make_cache(50, 2 * r, device=impl)
    cs = torch.cat((big[:, :r // 2], big[:, r:r + r // 2]), dim=1)  # a real cache, made strided below
    cs_strided = torch.empty(50, 3 * r, dtype=torch.float32, device=impl)[:, ::3]
    cs_strided.copy_(cs)
    pos_big = torch.zeros(2 * t, dtype=torch.int64, device=impl)
    pos_big[::2] = positions_for(t, 50, device=impl, seed=7)
    pos = pos_big[::2]
    qo = poisoned((t, d, hq), dtype, impl).transpose(1, 2)
    ko = poisoned((2, t, hkv, d), dtype, impl)[1]
    for neox in (True, False):
        qknorm.qk_rms_norm_rope(q, k, qw, kw, cs_strided, pos, is_neox=neox, rotary_dim=r, q_out=qo, k_out=ko)
        rq, rk = ref(q, k, qw, kw, cs, pos, r, neox)
        assert_matches(qo, rq, dtype, f"q neox={neox}")
        assert_matches(ko, rk, dtype, f"k neox={neox}")


@pytest.mark.parametrize("persistent", [False, True])
def test_configs(impl, persistent):
    qkv, q, k, v = packed_qkv(5, 6, 3, 80, torch.float16, impl)
    cs = make_cache(20, 48, device=impl)
    pos = positions_for(5, 20, device=impl)
    qw, kw, _ = weights("fp32", 80, torch.float16, impl)
    rq, rk = ref(q, k, qw, kw, cs, pos, 48, False)
    for rows in (1, 2, 8):
        cfg = qknorm.KernelConfig(rows=rows, block_d=128, num_warps=2, persistent=persistent, programs_per_sm=1)
        qo, ko = poisoned(q.shape, torch.float16, impl), poisoned(k.shape, torch.float16, impl)
        qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, is_neox=False, rotary_dim=48, q_out=qo, k_out=ko,
                                config=cfg)
        assert_matches(qo, rq, torch.float16, f"q rows={rows}")
        assert_matches(ko, rk, torch.float16, f"k rows={rows}")



@pytest.fixture
def row_form(request, monkeypatch):
    """Pins ``dispatch.ROPE_ROW_FORM`` (the kernels' row form) for one test, plans forgotten before and after."""
    monkeypatch.setattr(qknorm.dispatch, "ROPE_ROW_FORM", request.param)
    qknorm.dispatch.reset()
    yield request.param
    monkeypatch.undo()
    qknorm.dispatch.reset()


@pytest.mark.parametrize("row_form", ["split", "gather", "load"], indirect=True)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("d,r", [(256, 64), (80, 48), (64, 64), (96, 2)])
def test_row_forms(impl, row_form, is_neox, d, r):
    """Every row form (split; whole row with the NeoX partner gathered or read again) against the
    reference: strided input, out of place into poisoned outputs, the Gemma offset, 1 and 4 rows per
    program; and in place on a packed buffer (the partner is read before any store)."""
    t, hq, hkv, dtype = 5, 3, 2, torch.bfloat16
    q = randn((hq, t, d), dtype, impl).transpose(0, 1)
    k = randn((t, hkv, 2 * d), dtype, impl)[:, :, ::2]
    qw, kw, off = weights("gemma", d, dtype, impl)
    cs = make_cache(30, r, device=impl)
    pos = positions_for(t, 30, device=impl, seed=3)
    rq, rk = ref(q, k, qw, kw, cs, pos, r, is_neox, offset=off)
    for rows in (1, 4):
        cfg = qknorm.KernelConfig(rows=rows, block_d=256, num_warps=2)
        qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
        qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, is_neox=is_neox, rotary_dim=r, weight_offset=off,
                                q_out=qo, k_out=ko, config=cfg)
        assert_matches(qo, rq, dtype, f"q rows={rows}")
        assert_matches(ko, rk, dtype, f"k rows={rows}")
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    v_before = v.clone()
    rq, rk = ref(q, k, None, None, cs, pos, r, is_neox)
    qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, is_neox=is_neox, rotary_dim=r, q_out=q, k_out=k)
    assert_matches(q, rq, dtype, "q in place")
    assert_matches(k, rk, dtype, "k in place")
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("row_form", ["split", "gather", "load"], indirect=True)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_tail_stays_in_its_column(impl, row_form, is_neox, bad):
    """A NaN or an inf in the pass-through tail stays in its own column: the tail is not
    multiplied by cos = 1 / sin = 0 (inf * 0 would be NaN) and never reaches a rotary partner."""
    t, hq, hkv, d, r = 3, 2, 1, 80, 48
    q, k = randn((t, hq, d), torch.float32, impl), randn((t, hkv, d), torch.float32, impl)
    qw = torch.ones(d, device=impl)
    qw[r + 1] = bad
    cs, pos = make_cache(8, r, device=impl), positions_for(t, 8, device=impl)
    qo, _ = qknorm.qk_rms_norm_rope(q, k, qw, qw, cs, pos, is_neox=is_neox, rotary_dim=r)
    rq, _ = ref(q, k, qw, qw, cs, pos, r, is_neox)
    bad_cols = (~torch.isfinite(qo)).any(0).any(0).nonzero().flatten().tolist()
    assert bad_cols == [r + 1], bad_cols
    keep = torch.ones(d, dtype=torch.bool)
    keep[r + 1] = False
    assert_matches(qo[..., keep.to(impl)], rq[..., keep], torch.float32, "finite columns")
    assert torch.equal(torch.isnan(qo[..., r + 1]).cpu(), torch.isnan(rq[..., r + 1]))


def test_row_form_setting_is_checked(monkeypatch):
    monkeypatch.setattr(qknorm.dispatch, "ROPE_ROW_FORM", "Load")
    with pytest.raises(ValueError, match="ROPE_ROW_FORM must be one of"):
        qknorm.dispatch.rope_row_form(256, 64)

def test_int32_and_int64_positions_agree(impl):
    qkv, q, k, v = packed_qkv(6, 4, 2, 128, torch.bfloat16, impl)
    cs = make_cache(1000, 128, device=impl)
    pos = positions_for(6, 1000, device=impl, seed=11)
    a = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos)
    b = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos.to(torch.int32))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_large_positions(impl):
    """Positions near the end of a long cache (int64 row offsets into the cache)."""
    max_pos = 40960
    qkv, q, k, v = packed_qkv(3, 2, 1, 128, torch.float32, impl)
    cs = make_cache(max_pos, 128, device=impl)
    pos = torch.tensor([max_pos - 1, 0, max_pos // 2 + 3], dtype=torch.int64, device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos)
    rq, rk = ref(q, k, None, None, cs, pos)
    assert_matches(qo, rq, torch.float32, "q")
    assert_matches(ko, rk, torch.float32, "k")


def test_position_zero_is_plain_norm(impl):
    """cos 1, sin 0: the output is qk_rms_norm's (same numerics, one rounding)."""
    qkv, q, k, v = packed_qkv(4, 4, 2, 128, torch.float32, impl)
    qw, kw, _ = weights("fp32", 128, torch.float32, impl)
    cs = make_cache(8, 128, device=impl)
    pos = torch.zeros(4, dtype=torch.int64, device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos)
    nq, nk = qknorm.qk_rms_norm(q, k, qw, kw)
    torch.testing.assert_close(qo, nq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ko, nk, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the tests can fail

@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_wrong_style_positions_or_rotary_dim_would_fail(impl, is_neox):
    """The comparisons above separate the styles, the positions and the rotary split by far
    more than the tolerance (a kernel that mixed them up could not pass)."""
    t, d, r = 5, 128, 64
    qkv, q, k, v = packed_qkv(t, 4, 2, d, torch.bfloat16, impl)
    cs = make_cache(40, r, device=impl)
    pos = positions_for(t, 40, device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, is_neox=is_neox, rotary_dim=r)
    tol = TOL[torch.bfloat16]
    assert rel_err(qo, ref(q, k, None, None, cs, pos, r, is_neox)[0]) < tol
    assert rel_err(qo, ref(q, k, None, None, cs, pos, r, not is_neox)[0]) > 10 * tol
    assert rel_err(qo, ref(q, k, None, None, cs, pos.flip(0), r, is_neox)[0]) > 10 * tol
    cs_full = make_cache(40, d, device=impl)
    assert rel_err(qo, ref(q, k, None, None, cs_full, pos, d, is_neox)[0]) > 10 * tol
    assert rel_err(ko, ref_norm(k)) > 10 * tol  # RoPE was applied at all


def test_rounding_once(impl):
    """fp32 math with one rounding: every bf16 output is within one bf16 ulp of the fp64
    reference (half an ulp when rounding to nearest, plus fp32 noise)."""
    qkv, q, k, v = packed_qkv(16, 8, 2, 128, torch.bfloat16, impl)
    qw, kw, _ = weights("act", 128, torch.bfloat16, impl)
    cs = make_cache(64, 128, device=impl)
    pos = positions_for(16, 64, device=impl)
    qo, ko = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos)
    for out, r in zip((qo, ko), ref(q, k, qw, kw, cs, pos)):
        ulp = r.abs().clamp_min(1e-30).log2().floor().exp2() * 2.0 ** -7
        slack = 1e-5 * r.abs().max()
        assert ((out.double().cpu() - r).abs() <= ulp + slack).all()


# --------------------------------------------------------------------------- random shapes

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(1, 5), hq=st.integers(1, 6), hkv=st.integers(1, 3),
       dr=st.sampled_from([(2, 2), (16, 8), (48, 48), (64, 32), (80, 48), (96, 96), (128, 64), (256, 64)]),
       dtype=st.sampled_from(DTYPES), is_neox=st.booleans(), in_place=st.booleans(),
       wkind=st.sampled_from(["none", "fp32", "gemma"]), pos_i32=st.booleans(), cache_act=st.booleans())
def test_random(impl, t, hq, hkv, dr, dtype, is_neox, in_place, wkind, pos_i32, cache_act):
    d, r = dr
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, impl)
    v_before = v.clone()
    qw, kw, off = weights(wkind, d, dtype, impl)
    cs = make_cache(24, r, dtype if cache_act else torch.float32, device=impl)
    pos = positions_for(t, 24, torch.int32 if pos_i32 else torch.int64, impl, seed=t * 7 + hq)
    rq, rk = ref(q, k, qw, kw, cs, pos, r, is_neox, offset=off)
    if in_place:
        qo, ko = q, k
    else:
        qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
    qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, is_neox=is_neox, rotary_dim=r, weight_offset=off,
                            q_out=qo, k_out=ko)
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    assert torch.equal(v, v_before)


# --------------------------------------------------------------------------- out-of-range positions

def test_kernel_clamps_out_of_range_positions():
    """The GPU behaviour (no range check, no sync): positions are clamped into the cache,
    never read outside it. Checked on the interpreted kernel through the op's general call
    after its checks (``run``), which is where the CPU range check sits."""
    from qknorm.ops import qk_norm_rope as rope_op
    if not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs the Triton interpreter or a GPU")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    qkv, q, k, v = packed_qkv(4, 2, 1, 64, torch.float32, device)
    cs = make_cache(10, 64, device=device)
    pos = torch.tensor([-5, 3, 10, 1000], dtype=torch.int64, device=device)
    with qknorm.use_backend("triton"):
        qo, ko = rope_op.run(q, k, None, None, cs, pos, 1e-6, True, 64, 0.0, None, None, None)
    clamped = pos.clamp(0, 9)
    rq, rk = ref(q, k, None, None, cs, clamped)
    assert_matches(qo, rq, torch.float32, "q")
    assert_matches(ko, rk, torch.float32, "k")


# --------------------------------------------------------------------------- the CUDA fast path's logic

@pytest.fixture
def _fast(monkeypatch):
    """``ops.qk_norm_rope.fast`` (the cached-plan CUDA call), called directly: on the CPU
    (``_plan.FAST_ON_CPU``) it runs the interpreted kernel through the same plan, argument
    packing and overlap checks."""
    from qknorm.ops import _plan, qk_norm_rope as rope_op
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    return rope_op.fast


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_fast_path_matches(impl, is_neox, _fast):
    if impl == "cpu" and (torch.cuda.is_available() or qknorm.get_backend() != "triton"):
        pytest.skip("the fast path runs the Triton kernel: on CUDA tensors, or interpreted on a CPU-only machine")
    t, d, r = 5, 80, 48
    dtype = torch.bfloat16
    qkv, q, k, v = packed_qkv(t, 4, 2, d, dtype, impl)
    v_before = v.clone()
    qw, kw, off = weights("gemma", d, dtype, impl)
    cs = make_cache(32, r, device=impl)
    pos = positions_for(t, 32, torch.int32, impl)
    rq, rk = ref(q, k, qw, kw, cs, pos, r, is_neox, offset=off)
    # allocated outputs (twice: the second call reuses the cached plan)
    for _ in range(2):
        qo, ko = _fast(q, k, qw, kw, cs, pos, 1e-6, is_neox, r, off, None, None, None)
        assert qo.is_contiguous() and ko.is_contiguous()
        assert_matches(qo, rq, dtype, "q alloc")
        assert_matches(ko, rk, dtype, "k alloc")
    # separate poisoned outputs
    qo, ko = poisoned(q.shape, dtype, impl), poisoned(k.shape, dtype, impl)
    res = _fast(q, k, qw, kw, cs, pos, 1e-6, is_neox, r, off, qo, ko, None)
    assert res[0] is qo and res[1] is ko
    assert_matches(qo, rq, dtype, "q out")
    assert_matches(ko, rk, dtype, "k out")
    # in place
    res = _fast(q, k, qw, kw, cs, pos, 1e-6, is_neox, r, off, q, k, None)
    assert res[0] is q and res[1] is k
    assert_matches(q, rq, dtype, "q in place")
    assert_matches(k, rk, dtype, "k in place")
    assert torch.equal(v, v_before)


def test_fast_path_declines_bad_calls(impl, _fast):
    """Overlapping outputs and invalid metadata make the fast path decline (None), so the
    general path raises its error; nothing is written."""
    if impl == "cpu" and (torch.cuda.is_available() or qknorm.get_backend() != "triton"):
        pytest.skip("the fast path runs the Triton kernel: on CUDA tensors, or interpreted on a CPU-only machine")
    qkv, q, k, v = packed_qkv(3, 4, 2, 64, torch.float16, impl)
    before = qkv.clone()
    cs = make_cache(8, 64, device=impl)
    pos = positions_for(3, 8, device=impl)
    args = (None, None, cs, pos, 1e-6, True, None, 0.0)
    assert _fast(q, k, *args, q, q[:, :2], None) is None                      # k_out overlaps q
    # read tensors inside a written output: the general path reads them from a copy
    w_in_q = q[0, 1]
    assert _fast(q, k, w_in_q, w_in_q, cs, pos, 1e-6, True, None, 0.0, q, k, None) is None
    assert _fast(q, k, *args, k.new_empty(q.shape), q[:, 1:3], None) is None  # k_out inside q
    assert _fast(q, k, *args, qkv[:, 8:264].view(3, 4, 64), None, None) is None  # q_out partly over q
    assert _fast(q, k, None, None, cs[:, :32], pos, 1e-6, True, None, 0.0, None, None, None) is None
    assert _fast(q, k, None, None, cs, pos[:2], 1e-6, True, None, 0.0, None, None, None) is None
    assert _fast(q, k, None, None, cs, pos.float(), 1e-6, True, None, 0.0, None, None, None) is None
    assert torch.equal(qkv, before)
    with pytest.raises(ValueError, match="overlap"):
        qknorm.qk_rms_norm_rope(q, k, None, None, cs, pos, q_out=q, k_out=q[:, :2])
    assert torch.equal(qkv, before)


# --------------------------------------------------------------------------- compiles for Hopper

_AOT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.qk_norm_rope import qk_rms_norm_rope_kernel as kernel

names = list(kernel.arg_names)
ptrs = {"CS": "*fp32", "P": "*i64", "XQ": "*bf16", "YQ": "*bf16", "WQ": "*fp32", "XK": "*bf16", "YK": "*bf16",
        "WK": "*bf16"}
cases = [(True, False, 64, 1, "split"), (False, True, 32, 128, "split"), (False, True, 1, 64, "split")]
cases += [(neox, True, 32, 256, form) for neox in (True, False) for form in ("gather", "load")]
for is_neox, has_tail, block_h, block_t, form in cases:
    consts = {"HAS_WEIGHT": True, "IS_NEOX": is_neox, "HAS_TAIL": has_tail, "ROWS": 4, "BLOCK_H": block_h,
              "BLOCK_T": block_t, "WHOLE": form != "split", "BLOCK_D": 1 if form == "split" else 256,
              "PARTNER_LOAD": form == "load", "PERSISTENT": True, "USE_PDL": False}
    sig = {n: ptrs.get(n, "constexpr" if n in consts else "fp32" if n in ("eps", "w_offset") else "i32")
           for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert "cubin" in ck.asm, sorted(ck.asm)
print("compiled")
"""


def test_compiles_for_sm90_without_a_gpu():
    """Ahead-of-time compile of the kernel to sm_90 cubins (NeoX full rotary, GPT-J partial,
    rotary_dim 2; the whole-row forms, partner gathered or loaded), in a process without the interpreter: checks what the interpreter cannot
    (constexpr branches, split/join layouts, the persistent loop lowered for Hopper)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no ahead-of-time compile API in this Triton: {e}")
    r = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=1800)  # hang guard only
    if r.returncode and "ptxas" in r.stderr.lower() and "not found" in r.stderr.lower():
        pytest.skip("no ptxas to assemble cubins")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
