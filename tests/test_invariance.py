"""Batch invariance (``qknorm.invariance``): the row-layout rule, the dispatcher kept to one
layout per (op, dtype, width), and, on a GPU, rows bitwise the same across row counts."""
import dataclasses

import pytest
import torch

from qknorm import dispatch, invariance
from qknorm.config import KernelConfig
from qknorm.dispatch import next_pow2
from qknorm.tuned_table import parse_table
from test_tuned_table import cfg, doc, entry

BF16 = torch.bfloat16


def _same_layout(d, ref_rows, ref_warps, itemsize=2):
    b = next_pow2(d)
    ref = invariance.row_layout(ref_rows, b, ref_warps, itemsize)
    return {f"r{r}.w{w}" for r in (1, 2, 4, 8) for w in (1, 2, 4, 8)
            if r * b <= 16384 and invariance.row_layout(r, b, w, itemsize) == ref}


def test_rule_reproduces_the_h200_measurement():
    """benchmarks/results/h200/2026-12-01-batch-invariance: the bf16 configs giving r1's bits."""
    assert _same_layout(128, 1, 1) == {"r1.w1", "r2.w2", "r4.w4", "r8.w8"}
    assert _same_layout(256, 1, 1) == {f"r{r}.w{w}" for r in (1, 2, 4, 8) for w in (1, 2, 4, 8) if w <= r}
    assert _same_layout(1024, 1, 1) == {"r1.w1", "r2.w1", "r4.w1", "r8.w1"}
    assert _same_layout(4096, 1, 4) == {"r1.w4", "r2.w4", "r4.w4"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [1, 7, 64, 96, 128, 200, 256, 512, 1000, 1024, 2048, 4096, 5120, 8192, 16384, 20000])
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm", "qk_rms_norm"])
def test_every_heuristic_pick_of_a_width_has_one_row_layout(op, dtype, d):
    picks = [dispatch.heuristic(op, dtype, d, n)[0] for n in (0, 1, 2, 40, 300, 2048, 4096, 5000, 65536, 10 ** 6)]
    layouts = {invariance.row_layout(c.rows, c.block_d, c.num_warps, dtype.itemsize) for c in picks}
    assert len(layouts) == 1, [c.name for c in picks]
    assert all(dispatch.row_invariant(c, dtype.itemsize, d) for c in picks)
    assert all(c in dispatch.candidate_configs(op, dtype, d, n) for c, n in zip(picks[1:3], (1, 2)))


def test_make_invariant_is_idempotent_and_invariant():
    for b in (1, 2, 8, 64, 128, 256, 1024, 4096, 16384):
        for r in (1, 2, 4, 8, 16, 32):
            for w in (1, 2, 4, 8, 16):
                if r * b > 16384:
                    continue
                for size in (2, 4):
                    c = invariance.make_invariant(KernelConfig(rows=r, block_d=b, num_warps=w), size)
                    assert invariance.is_invariant(c, size), (b, r, w, size, c.name)
                    assert invariance.make_invariant(c, size) == c


def test_a_table_pick_outside_the_layout_yields_to_the_fastest_inside():
    fast_other = cfg(1, 4096, 2)  # 2 warps along a 4096 row: not the canonical 8
    alts = {"r1.b4096.w2": 1.0, "r1.b4096.w4": 1.1, "r2.b4096.w8": 1.2, "r1.b4096.w8": 1.3}
    t = parse_table(doc([entry("rms_norm", 4096, 16, fast_other, us=1.0, alts=alts)]), "/x/t.json")
    d = dispatch.decide("rms_norm", BF16, 4096, 16, t)
    assert d.config == cfg(2, 4096, 8) and "batch-invariant" in d.reason and "r1.b4096.w2" in d.reason
    t = parse_table(doc([entry("rms_norm", 4096, 16, fast_other, us=1.0, alts={"r1.b4096.w2": 1.0})]), "/x/t.json")
    d = dispatch.decide("rms_norm", BF16, 4096, 16, t)
    assert d.reason.startswith("heuristic") and dispatch.row_invariant(d.config, 2, 4096)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the reduction order is a GPU property")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 128, 256, 1024, 4096, 5120])
def test_rows_bitwise_the_same_across_row_counts_on_the_gpu(dtype, d):
    import qknorm
    g = torch.Generator(device="cuda").manual_seed(d)
    x = torch.randn(8192, d, device="cuda", dtype=dtype, generator=g)
    r = torch.randn(8192, d, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(d, device="cuda", dtype=dtype, generator=g)
    full = qknorm.rms_norm(x, w)
    xa, ra = x.clone(), r.clone()
    qknorm.fused_add_rms_norm(xa, ra, w)
    for n in (1, 3, 40, 513, 2048, 4096):
        assert torch.equal(qknorm.rms_norm(x[:n], w), full[:n]), n
        y = x[:n].clone()
        assert torch.equal(qknorm.rms_norm(y, w, out=y), full[:n]), n
        xb, rb = x[:n].clone(), r[:n].clone()
        qknorm.fused_add_rms_norm(xb, rb, w)
        assert torch.equal(xb, xa[:n]) and torch.equal(rb, ra[:n]), n
    if d <= 512:
        qkv = torch.randn(256, 48 * d, device="cuda", dtype=dtype, generator=g)
        q, k = qkv[:, :32 * d].view(256, 32, d), qkv[:, 32 * d:40 * d].view(256, 8, d)
        qf, kf = qknorm.qk_rms_norm(q, k, w, w)
        for t in (1, 2, 16, 100):
            qq, kk = q[:t].clone(), k[:t].clone()
            qknorm.qk_rms_norm(qq, kk, w, w, q_out=qq, k_out=kk)
            assert torch.equal(qq, qf[:t]) and torch.equal(kk, kf[:t]), t
        # QK norm + RoPE (full and partial rotary): a row's bits do not depend on the token count either
        cs = torch.randn(512, d, device="cuda", dtype=torch.float32, generator=g)
        pos = torch.randint(0, 512, (256,), device="cuda", generator=g)
        for rot in (d, d // 2):
            rq, rk = qknorm.qk_rms_norm_rope(q, k, w, w, cs[:, :rot], pos, rotary_dim=rot)
            for t in (1, 2, 16, 100):
                tq, tk = qknorm.qk_rms_norm_rope(q[:t], k[:t], w, w, cs[:, :rot], pos[:t], rotary_dim=rot)
                assert torch.equal(tq, rq[:t]) and torch.equal(tk, rk[:t]), (rot, t)
        # the dispatcher switches between the head-ordered and the token-ordered kernel with the token
        # count: in the canonical layout both give a row the same bits
        for rows in (8, 32):
            cfg = invariance.make_invariant(KernelConfig(rows=rows, block_d=d, num_warps=8), x.element_size())
            for tok in (False, True):
                got = qknorm.qk_rms_norm(q, k, w, w, config=dataclasses.replace(cfg, token_order=tok))
                assert torch.equal(got[0], qf) and torch.equal(got[1], kf), (cfg, tok)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the reduction order is a GPU property")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_every_rope_config_the_dispatcher_makes_gives_the_same_rows_on_the_gpu(dtype, d):
    """QK norm + RoPE, full and partial rotary: every config ``dispatch.rope_config`` makes from any
    head-ordered qk_rms_norm candidate (so from any tuned table's pick) at any token count gives the same rows,
    bit for bit — not only the two picks the row-count test above meets. (fp32 configs that lay a rotary half out
    alike rounded 1-4 ulps apart by their warps on an H100: ``dispatch.ROPE_FP32_TILE``.)"""
    import qknorm
    g = torch.Generator(device="cuda").manual_seed(d + 1)
    w = torch.randn(d, device="cuda", dtype=dtype, generator=g)
    qkv = torch.randn(64, 48 * d, device="cuda", dtype=dtype, generator=g)
    q, k = qkv[:, :32 * d].view(64, 32, d), qkv[:, 32 * d:40 * d].view(64, 8, d)
    cs = torch.randn(512, d, device="cuda", dtype=torch.float32, generator=g)
    pos = torch.randint(0, 512, (64,), device="cuda", generator=g)
    for rot in (d, d // 2):
        cfgs = {}
        for n in (40, 2560, 40960, 5_000_000):
            for qk in dispatch.candidate_configs("qk_rms_norm", dtype, d, n):
                if not qk.token_order:
                    cfg = dispatch.rope_config(qk, "", dtype, d, rot, n)[0]
                    cfgs[cfg.name] = cfg
        outs = {name: qknorm.qk_rms_norm_rope(q, k, w, w, cs[:, :rot], pos, rotary_dim=rot, config=cfg)
                for name, cfg in sorted(cfgs.items())}
        first = next(iter(outs))
        apart = [name for name, (oq, ok) in outs.items()
                 if not (torch.equal(oq, outs[first][0]) and torch.equal(ok, outs[first][1]))]
        assert not apart, f"rotary {rot}: {apart} differ from {first} (of {sorted(outs)})"
