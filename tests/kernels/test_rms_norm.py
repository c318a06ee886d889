"""rms_norm against the fp64 reference: dtypes, widths, strides, weights, in place, chunked."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qknorm
from helpers import DTYPES, assert_matches, poisoned, randn, ref_norm

WIDTHS = [1, 7, 80, 96, 111, 128, 500, 7168]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", WIDTHS)
def test_widths_and_dtypes(impl, dtype, d):
    x = randn((3, d), dtype, impl, scale=3.0)
    w = randn((d,), torch.float32, impl)
    out = poisoned(x.shape, dtype, impl)
    y = qknorm.rms_norm(x, w, out=out)
    assert y is out
    assert_matches(y, ref_norm(x, w), dtype)


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_weight_dtypes_offset_and_none(impl, wdtype):
    x = randn((5, 96), torch.bfloat16, impl)
    w = randn((96,), wdtype, impl, scale=0.1)
    assert_matches(qknorm.rms_norm(x, w, weight_offset=1.0), ref_norm(x, w, offset=1.0), torch.bfloat16)
    assert_matches(qknorm.rms_norm(x, None, eps=1e-5), ref_norm(x, None, eps=1e-5), torch.bfloat16)


def test_rank1_and_rank4_permuted(impl):
    x = randn((200,), torch.float32, impl)
    assert_matches(qknorm.rms_norm(x), ref_norm(x), torch.float32)
    base = randn((2, 5, 3, 64), torch.float16, impl)
    xp = base.permute(2, 0, 1, 3)  # [3, 2, 5, 64], strides do not merge into one
    w = randn((64,), torch.float16, impl)
    assert_matches(qknorm.rms_norm(xp, w), ref_norm(xp, w), torch.float16)


def test_column_slice_row_stride_2112(impl):
    """DeepSeek-style: a 1536-wide slice of rows 2112 wide."""
    buf = randn((9, 2112), torch.bfloat16, impl)
    x = buf[:, :1536]
    rest = buf[:, 1536:].clone()
    w = randn((1536,), torch.bfloat16, impl)
    assert_matches(qknorm.rms_norm(x, w), ref_norm(x, w), torch.bfloat16)
    qknorm.rms_norm(x, w, out=x)  # in place on the slice
    assert torch.equal(buf[:, 1536:], rest), "in-place norm wrote outside its slice"


def test_five_leading_dims_that_do_not_merge(impl):
    base = randn((2, 3, 2, 3, 2, 16), torch.float32, impl)
    x = base.permute(4, 0, 3, 1, 2, 5)
    out = poisoned(x.shape, torch.float32, impl)
    assert_matches(qknorm.rms_norm(x, out=out), ref_norm(x), torch.float32)


def test_non_unit_last_stride(impl):
    base = randn((6, 40), torch.float32, impl)
    x = base.t()  # last dim has stride 40
    assert_matches(qknorm.rms_norm(x), ref_norm(x), torch.float32)


def test_strided_output_and_in_place(impl):
    x = randn((4, 3, 80), torch.bfloat16, impl)
    w = randn((80,), torch.bfloat16, impl)
    ref = ref_norm(x, w)
    big = poisoned((4, 3, 160), torch.bfloat16, impl)
    out = big[:, :, 80:]
    qknorm.rms_norm(x, w, out=out)
    assert_matches(out, ref, torch.bfloat16)
    assert torch.isnan(big[:, :, :80].float()).all(), "wrote outside out"
    y = qknorm.rms_norm(x, w, out=x)
    assert y is x
    assert_matches(x, ref, torch.bfloat16)


@pytest.mark.parametrize("d", [4096, 5000])
def test_chunked_form_matches(impl, d):
    """A config with block_d < D forces the chunked two-pass form."""
    x = randn((3, d), torch.bfloat16, impl, scale=2.0)
    w = randn((d,), torch.float32, impl)
    cfg = qknorm.KernelConfig(rows=2, block_d=1024, num_warps=4)
    out = poisoned(x.shape, torch.bfloat16, impl)
    assert_matches(qknorm.rms_norm(x, w, out=out, config=cfg), ref_norm(x, w), torch.bfloat16)
    x2 = x.clone()
    qknorm.rms_norm(x2, w, out=x2, config=cfg)
    assert_matches(x2, ref_norm(x, w), torch.bfloat16)


@pytest.mark.parametrize("fused", [False, True], ids=["rms_norm", "fused_add"])
def test_chunks_in_registers_give_the_two_pass_bits(impl, fused, monkeypatch):
    """A row of 5 exact tiles is kept in registers (read once); forcing the two-pass form
    (read twice) must give the same bits, in place and not, for rms_norm and fused add."""
    from qknorm import config as C
    from qknorm import dispatch
    cfg = qknorm.KernelConfig(rows=1, block_d=1024, num_warps=4)
    assert cfg.chunk_mode(5120) == 5 and cfg.chunk_mode(5000) == 1
    x = randn((5, 5120), torch.bfloat16, impl, scale=2.0)
    r = randn((5, 5120), torch.bfloat16, impl)
    w = randn((5120,), torch.float32, impl)

    def run():
        if fused:
            xs, rs = x.clone(), r.clone()
            qknorm.fused_add_rms_norm(xs, rs, w, config=cfg)
            return xs, rs
        xi = x.clone()
        return qknorm.rms_norm(x, w, config=cfg), qknorm.rms_norm(xi, w, out=xi, config=cfg)
    got = run()
    monkeypatch.setattr(C, "REG_CHUNKS_MAX", 0)
    dispatch.reset()  # cached plans hold the old CHUNKED
    assert cfg.chunk_mode(5120) == 1
    want = run()
    dispatch.reset()
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    if not fused:
        assert_matches(got[0], ref_norm(x, w), torch.bfloat16)


def test_wide_rows_default_path(impl):
    x = randn((2, 32768), torch.float16, impl)
    assert_matches(qknorm.rms_norm(x), ref_norm(x), torch.float16)


@pytest.mark.parametrize("persistent", [False, True])
def test_configs_rows_and_persistent(impl, persistent):
    x = randn((37, 64), torch.float32, impl)
    for rows in (1, 4, 16):
        cfg = qknorm.KernelConfig(rows=rows, block_d=64, num_warps=2, persistent=persistent, programs_per_sm=1)
        out = poisoned(x.shape, torch.float32, impl)
        assert_matches(qknorm.rms_norm(x, out=out, config=cfg), ref_norm(x), torch.float32)


def test_empty_returns_at_once(impl):
    x = torch.empty((0, 128), dtype=torch.bfloat16, device=impl)
    assert qknorm.rms_norm(x).shape == (0, 128)
    assert qknorm.rms_norm(torch.empty((4, 0), device=impl)).shape == (4, 0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_strided_views(impl, data):
    """Random 2-4D views cut out of a bigger buffer with random permutations of the leading dims."""
    nd = data.draw(st.integers(1, 3))
    lead = data.draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd))
    d = data.draw(st.sampled_from([1, 3, 16, 64, 80, 111, 256]))
    pad = data.draw(st.lists(st.integers(0, 2), min_size=nd + 1, max_size=nd + 1))
    dtype = data.draw(st.sampled_from(DTYPES))
    big = randn([n + p for n, p in zip(lead + [d], pad)], dtype, impl)
    x = big[tuple(slice(0, n) for n in lead + [d])]
    perm = data.draw(st.permutations(range(nd)))
    x = x.permute(*perm, nd)
    w = randn((d,), torch.float32, impl) if data.draw(st.booleans()) else None
    in_place = data.draw(st.booleans())
    ref = ref_norm(x, w)
    before = big.clone()
    out = x if in_place else poisoned(x.shape, dtype, impl)
    qknorm.rms_norm(x, w, out=out)
    assert_matches(out, ref, dtype)
    if in_place:
        mask = torch.ones_like(big, dtype=torch.bool)
        mask[tuple(slice(0, n) for n in lead + [d])] = False
        assert torch.equal(big[mask], before[mask]), "in-place norm wrote outside the view"
