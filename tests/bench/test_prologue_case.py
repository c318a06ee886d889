"""The ``prologue`` bench case (``qknorm.qk_norm_rope_cache``): preset shapes, ideal bytes, inputs,
the reference against qknorm's CPU path, the gate (right results pass; a wrong slot, a touched
padding slot, a wrong Q fail), the new peer calls against fake FlashInfer/SGLang/vLLM modules,
and ``qknorm bench --quick --preset prologue`` end to end."""
import math
import sys
import types

import pytest
import torch

import qknorm
from qknorm.bench.cases import (OPS, PRESETS, QKNORM_OP, Case, build_inputs, cache_rows, expected, kept_slots,
                                preset_cases, quick_cases)
from qknorm.bench.check import gate
from qknorm.bench.peers import (FlashInferRmsRopeAppend, Impl, Qknorm, QknormRopeFlashInferAppend,
                                QknormRopeTorchCache, SGLangQkNormRopeTorchCache, TorchPrologue,
                                VLLMFusedQkNormRopeCache, qknorm_variants, torch_prologue)

FP8 = torch.float8_e4m3fn


def small(t=16, cd=None, bs=0, mrope=(), dtype=torch.bfloat16, d=128, r=64, offset=0.0):
    return Case("prologue", "prologue", t, dtype, 4, 2, d, weight_offset=offset, rotary_dim=r, cache_dtype=cd,
                block_size=bs, mrope_section=mrope)


# --------------------------------------------------------------------------- cases

def test_preset_shapes():
    assert "prologue" in PRESETS and "prologue" in OPS and QKNORM_OP["prologue"] == "qk_rms_norm"
    cases = preset_cases("prologue")
    assert {c.tokens for c in cases} == {1, 4, 16, 64, 256, 512, 1024, 4096, 16384}
    shapes = {(c.hq, c.hkv, c.head_dim, c.rotary_dim, c.weight_offset, c.mrope_section) for c in cases}
    assert shapes == {(32, 8, 128, 128, 0.0, ()), (64, 4, 128, 128, 0.0, ()), (16, 2, 256, 64, 0.0, ()),
                      (32, 16, 128, 128, 1.0, ()), (28, 4, 128, 128, 0.0, (16, 24, 24))}
    assert {c.cache_dtype for c in cases} == {None, FP8}
    assert {c.block_size for c in cases} == {16, 1}
    flat = {(c.hq, c.cache_dtype) for c in cases if c.block_size == 1}
    assert flat == {(32, None), (32, FP8)}  # Qwen3-8B, both cache dtypes
    assert len({c.group for c in cases}) == 12 and len({c.key for c in cases}) == len(cases)
    q = quick_cases(["prologue"])
    assert {c.op for c in q} == {"prologue"} and len(q) == 12 and {c.tokens for c in q} == {16}


def test_case_validation():
    with pytest.raises(ValueError, match="mrope_section"):
        small(mrope=(8, 8, 8))  # sums to 24, not 32
    with pytest.raises(ValueError, match="cache_dtype"):
        small(cd=torch.float16)
    with pytest.raises(ValueError, match="prologue' only"):
        Case("t", "rope", 2, torch.bfloat16, 4, 2, 64, rotary_dim=32, cache_dtype=FP8)
    c = small(t=64)
    assert c.block_size == 16 and c.n_pad == 2 and c.n_kept == 62 and c.num_slots % 16 == 0
    assert small(t=1).n_pad == 0


@pytest.mark.parametrize("cd,mrope", [(None, ()), (FP8, (8, 12, 12))])
def test_ideal_bytes(cd, mrope):
    c = small(t=64, cd=cd, mrope=mrope)
    act = 64 * (4 + 2 + 2) * 128 * 2 + 64 * 4 * 128 * 2     # Q, K, V read; Q written
    cache = 62 * 2 * 2 * 128 * (1 if cd else 2)               # the kept tokens' K and V entries
    meta = 64 * (8 * (3 if mrope else 1) + 8 + 4 * 64)        # positions, slot, cos/sin row
    assert c.ideal_bytes == act + cache + 2 * 128 * 2 + meta + (8 if cd else 0)


def test_build_inputs():
    c = small(t=64, cd=FP8, mrope=(8, 12, 12))
    inp = build_inputs(c, seed=2)
    assert inp.q.data_ptr() == inp.qkv.data_ptr() and inp.v.shape == (64, 2, 128) and not inp.q.is_contiguous()
    assert inp.positions.shape == (3, 64) and inp.positions.dtype == torch.int64
    assert inp.k_cache.shape == (c.num_slots // 16, 16, 2, 128) and inp.k_cache.dtype == FP8
    assert bool((inp.k_cache.view(torch.uint8) == 0x7F).all())  # poisoned (NaN)
    s = inp.slot_mapping
    assert s.dtype == torch.int64 and bool((s[c.n_kept:] == -1).all()) and bool((s[:c.n_kept] >= 0).all())
    assert len(set(s[:c.n_kept].tolist())) == c.n_kept and int(s.max()) < c.num_slots - 1  # last slot spare
    assert not torch.equal(s[:c.n_kept], s[:c.n_kept].sort().values)  # scattered
    assert inp.k_scale.shape == (1,) and inp.k_scale.dtype == torch.float32 and float(inp.v_scale) > 0
    flat = build_inputs(small(t=4, bs=1))
    assert flat.k_cache.dim() == 3 and bool(torch.isnan(flat.v_cache).all())
    cl = inp.clone()
    assert cl.k_cache.data_ptr() != inp.k_cache.data_ptr() and cl.slot_mapping is inp.slot_mapping


@pytest.mark.parametrize("cd", [None, FP8], ids=["bf16", "fp8"])
@pytest.mark.parametrize("mrope", [(), (8, 12, 12)], ids=["rope", "mrope"])
def test_expected_matches_qknorm_cpu_path(cd, mrope):
    c = small(cd=cd, mrope=mrope, offset=1.0 if mrope else 0.0)
    inp = build_inputs(c)
    rq, rk, rv = expected(c, inp)
    tok, slots = kept_slots(c, inp)
    qknorm.qk_norm_rope_cache(inp.q, inp.k, inp.v, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, inp.k_cache,
                              inp.v_cache, inp.slot_mapping, c.eps, rotary_dim=c.rotary_dim,
                              weight_offset=c.weight_offset, mrope_section=mrope or None, k_scale=inp.k_scale,
                              v_scale=inp.v_scale)
    torch.testing.assert_close(inp.q.float(), rq, rtol=1e-2, atol=1e-2)
    k = cache_rows(inp.k_cache, 2, 128)[slots].double()
    v = cache_rows(inp.v_cache, 2, 128)[slots].double()
    if cd is None:
        torch.testing.assert_close(k, rk, rtol=1e-2, atol=1e-2)
        assert torch.equal(v, rv)
    else:  # dequantised within one e4m3 step (relative 2**-3) of the reference
        assert bool(((k * float(inp.k_scale) - rk).abs() <= rk.abs() * 2 ** -3 + float(inp.k_scale)).all())
        assert bool(((v * float(inp.v_scale) - rv).abs() <= rv.abs() * 2 ** -3 + float(inp.v_scale)).all())


# --------------------------------------------------------------------------- the gate

@pytest.mark.parametrize("make", [Qknorm, TorchPrologue, QknormRopeTorchCache], ids=lambda m: m.__name__)
@pytest.mark.parametrize("c", [small(), small(cd=FP8), small(t=5, bs=1), small(cd=FP8, mrope=(8, 12, 12), d=256)],
                         ids=["bf16", "fp8", "flat", "fp8-mrope-d256"])
def test_gate_accepts_right_results(make, c):
    impl = make()
    ok, why = impl.supports(c)
    if not ok:
        assert c.mrope_section and "mRoPE" in why
        return
    inp = build_inputs(c)
    v = gate(c, inp, impl.build(c, inp))
    assert v.ok, (impl.name, v.reason)
    assert (v.error < 1e-2) if c.cache_dtype is None else ("one step" in v.notes)


def _qknorm_then(c, inp, spoil):
    def call():
        Qknorm().build(c, inp)()
        spoil()
        return inp.q, inp.k_cache, inp.v_cache
    return call


def _moved(c, inp):
    """Token 0's K entry also written to a spare (unnamed) slot."""
    tok, slots = kept_slots(c, inp)
    spare = next(s for s in range(c.num_slots) if s not in set(slots.tolist()))
    rows = cache_rows(inp.k_cache, c.hkv, c.head_dim)
    return lambda: rows.__setitem__(spare, rows[int(slots[0])])


def _padding_to_last(c, inp):
    """A padding token's V written Python-style to slot -1 (the last slot)."""
    rows = cache_rows(inp.v_cache, c.hkv, c.head_dim)
    return lambda: rows.__setitem__(-1, inp.v[-1].to(rows.dtype))


def _swapped(c, inp):
    """Two named slots' K entries swapped (each token in the other's slot)."""
    _, slots = kept_slots(c, inp)
    rows = cache_rows(inp.k_cache, c.hkv, c.head_dim)
    a, b = int(slots[0]), int(slots[1])

    def spoil():
        x = rows[a].clone()
        rows[a] = rows[b]
        rows[b] = x
    return spoil


def _wrong_q(c, inp):
    return lambda: inp.q.mul_(1.5)


@pytest.mark.parametrize("cd", [None, FP8], ids=["bf16", "fp8"])
@pytest.mark.parametrize("spoil,why", [(_moved, "not named"), (_padding_to_last, "not named"),
                                       (_swapped, "k_cache"), (_wrong_q, "q_out")],
                         ids=["wrong-slot", "padding-slot", "swapped", "wrong-q"])
def test_gate_rejects_wrong_results(cd, spoil, why):
    c = small(cd=cd)
    inp = build_inputs(c)
    v = gate(c, inp, _qknorm_then(c, inp, spoil(c, inp)))
    assert not v.ok and why in v.reason, v


def test_gate_rejects_an_unwritten_slot_and_a_skipped_v():
    c = small(cd=FP8)
    inp = build_inputs(c)
    _, slots = kept_slots(c, inp)
    rows = cache_rows(inp.k_cache, 2, 128)
    v = gate(c, inp, _qknorm_then(c, inp, lambda: rows[int(slots[3])].view(torch.uint8).fill_(0x7F)))
    assert not v.ok and "NaN" in v.reason
    c = small()
    inp = build_inputs(c)
    _, slots = kept_slots(c, inp)
    vr = cache_rows(inp.v_cache, 2, 128)
    v = gate(c, inp, _qknorm_then(c, inp, lambda: vr[int(slots[0])].mul_(1.5)))
    assert not v.ok and "bit-exact" in v.reason


def test_no_qknorm_variants_and_variant_rows_skip():
    c = small()
    assert qknorm_variants(c, "cpu") == []
    assert not Qknorm(config=object.__new__(type("C", (), {"name": "x"}))).supports(c)[0]


# --------------------------------------------------------------------------- new peer calls, fake modules

class _Rec:
    def __init__(self):
        self.calls = []


def _install(monkeypatch, name, **attrs):
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod = ".".join(parts[:i])
        m = sys.modules.get(mod) if i < len(parts) and isinstance(sys.modules.get(mod), types.ModuleType) \
            and getattr(sys.modules.get(mod), "_fake", False) else None
        if m is None:
            m = types.ModuleType(mod)
            m.__path__ = []
            m._fake = True
            monkeypatch.setitem(sys.modules, mod, m)
    sys.modules[name].__dict__.update(attrs)


def _fake_append(rec):
    def append_paged_kv_cache(append_key, append_value, batch_indices, positions, paged_kv_cache, kv_indices,
                              kv_indptr, kv_last_page_len, kv_layout="NHD"):
        rec.calls.append(("append_paged_kv_cache", (append_key, append_value, batch_indices, positions,
                                                    paged_kv_cache, kv_indices, kv_indptr, kv_last_page_len),
                          dict(kv_layout=kv_layout)))
        kc, vc = paged_kv_cache
        for i in range(append_key.shape[0]):  # FlashInfer's documented mapping
            b, p = int(batch_indices[i]), int(positions[i])
            page = int(kv_indices[int(kv_indptr[b]) + p // kc.shape[1]])
            kc[page, p % kc.shape[1]] = append_key[i]
            vc[page, p % kc.shape[1]] = append_value[i]
    return append_paged_kv_cache


@pytest.mark.parametrize("bs", [16, 1])
def test_qknorm_rope_flashinfer_append_arguments(monkeypatch, bs):
    rec = _Rec()
    _install(monkeypatch, "flashinfer.page", append_paged_kv_cache=_fake_append(rec))
    impl = QknormRopeFlashInferAppend()
    assert impl.available() == (True, "")
    c = small(t=20, bs=bs)
    assert impl.supports(c) == (True, "")
    assert "FP8" in impl.supports(small(cd=FP8))[1] and "mRoPE" in impl.supports(small(mrope=(8, 12, 12)))[1]
    inp = build_inputs(c)
    v = gate(c, inp, impl.build(c, inp))
    assert v.ok, v.reason
    (name, args, kw), = rec.calls
    k, vv, bi, pos, (kc, vc), kvi, kvp, last = args
    n = c.n_kept
    assert kw == {"kv_layout": "NHD"} and k.shape == (n, 2, 128) and k.data_ptr() == inp.k.data_ptr()
    assert k.stride() == inp.k.stride() and vv.data_ptr() == inp.v.data_ptr()  # strided views, no copy
    s = inp.slot_mapping[:n]
    assert all(t.dtype == torch.int32 for t in (bi, pos, kvi, kvp, last))
    assert torch.equal(bi.long(), torch.arange(n)) and torch.equal(kvp.long(), torch.arange(n + 1))
    assert torch.equal(kvi.long(), s // bs) and torch.equal(pos.long(), s % bs) and torch.equal(last, pos + 1)
    assert kc.shape == (c.num_slots // bs, bs, 2, 128) and kc.data_ptr() == inp.k_cache.data_ptr()


def test_flashinfer_rms_rope_append_arguments(monkeypatch):
    from qknorm.bench.common import torch_norm
    from qknorm.bench.peers import torch_rope
    rec = _Rec()

    def rmsnorm(x, w, eps, out=None):
        rec.calls.append(("rmsnorm", (x, w, eps), dict(out=out)))
        out.copy_(torch_norm(x, w, eps))

    def rope(positions, query, key, head_size, cos_sin_cache, is_neox=True):
        rec.calls.append(("rope", (positions, query, key, head_size, cos_sin_cache, is_neox), {}))
        r = cos_sin_cache.shape[1]
        for x in (query, key):
            x3 = x.view(x.shape[0], -1, head_size)
            x3.copy_(torch_rope(x3, cos_sin_cache, positions, r, is_neox))

    _install(monkeypatch, "flashinfer.page", append_paged_kv_cache=_fake_append(rec))
    _install(monkeypatch, "flashinfer.rope", apply_rope_with_cos_sin_cache_inplace=rope)
    _install(monkeypatch, "flashinfer.norm", rmsnorm=rmsnorm, gemma_rmsnorm=rmsnorm)
    impl = FlashInferRmsRopeAppend()
    assert impl.available() == (True, "")
    c = small()
    inp = build_inputs(c)
    v = gate(c, inp, impl.build(c, inp))
    assert v.ok, v.reason
    assert [n for n, _, _ in rec.calls] == ["rmsnorm", "rmsnorm", "rope", "append_paged_kv_cache"]
    _, (pos, q2, k2, hd, cs, neox), _ = rec.calls[2]
    assert pos is inp.positions and hd == 128 and cs is inp.cos_sin_cache and neox is True
    assert q2.shape == (16, 4 * 128) and q2.data_ptr() == inp.qkv.data_ptr()


def test_sglang_rope_torch_cache_arguments(monkeypatch):
    from qknorm.bench.cases import ROPE_THETA
    from qknorm.bench.common import torch_norm
    from qknorm.bench.peers import torch_rope
    rec = _Rec()

    def fused_qk_norm_rope(qkv, num_heads_q, num_heads_k, num_heads_v, head_dim, eps, q_weight, k_weight, base,
                           is_neox, position_ids, factor, low, high, attention_factor, rotary_dim=None):
        rec.calls.append(("fused_qk_norm_rope", (qkv,), dict(num_heads_q=num_heads_q, num_heads_k=num_heads_k,
                                                              head_dim=head_dim, base=base, rotary_dim=rotary_dim,
                                                              position_ids=position_ids)))
        from qknorm.bench.cases import rope_cache
        t, d = qkv.shape[0], head_dim
        cs = rope_cache(rotary_dim, theta=base)
        q = qkv[:, :num_heads_q * d].view(t, num_heads_q, d)
        k = qkv[:, num_heads_q * d:(num_heads_q + num_heads_k) * d].view(t, num_heads_k, d)
        q.copy_(torch_rope(torch_norm(q, q_weight, eps), cs, position_ids.long(), rotary_dim, is_neox))
        k.copy_(torch_rope(torch_norm(k, k_weight, eps), cs, position_ids.long(), rotary_dim, is_neox))

    _install(monkeypatch, "sglang.jit_kernel.fused_qknorm_rope", fused_qk_norm_rope=fused_qk_norm_rope)
    impl = SGLangQkNormRopeTorchCache()
    assert impl.available() == (True, "")
    assert "mRoPE" in impl.supports(small(mrope=(8, 12, 12)))[1]
    for c in (small(), small(cd=FP8)):
        rec.calls.clear()
        inp = build_inputs(c)
        v = gate(c, inp, impl.build(c, inp))
        assert v.ok, v.reason
        (name, args, kw), = rec.calls
        assert args[0] is inp.qkv and kw["base"] == ROPE_THETA and kw["rotary_dim"] == 64
        assert kw["position_ids"].dtype == torch.int32


def test_vllm_fused_then_reshape_and_cache_flash_arguments(monkeypatch):
    rec = _Rec()

    def fused_qk_norm_rope(*args):
        rec.calls.append(("fused_qk_norm_rope", args, {}))
        qkv, hq, hk, hv, d, eps, qw, kw, cs, neox, pos = args
        t = qkv.shape[0]
        q = qkv[:, :hq * d].view(t, hq, d)
        k = qkv[:, hq * d:(hq + hk) * d].view(t, hk, d)
        from qknorm.reference_rope import qk_rms_norm_rope_ref
        rq, rk = qk_rms_norm_rope_ref(q, k, qw, kw, cs, pos, eps, is_neox=neox, rotary_dim=cs.shape[1])
        q.copy_(rq)
        k.copy_(rk)

    def reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale):
        rec.calls.append(("reshape_and_cache_flash", (key, value, key_cache, value_cache, slot_mapping,
                                                      kv_cache_dtype, k_scale, v_scale), {}))
        from qknorm.bench.peers import torch_cache_write
        keep = slot_mapping >= 0
        kc, vc = key_cache, value_cache
        if kv_cache_dtype == "fp8":
            kc, vc = kc.view(FP8), vc.view(FP8)
        torch_cache_write(key[keep].float() if kv_cache_dtype == "fp8" else key[keep], value[keep], kc, vc,
                          slot_mapping[keep], k_scale, v_scale)

    _install(monkeypatch, "vllm._custom_ops", fused_qk_norm_rope=fused_qk_norm_rope)
    monkeypatch.setattr(torch.ops, "_C_cache_ops", types.SimpleNamespace(reshape_and_cache_flash=reshape_and_cache_flash),
                        raising=False)
    impl = VLLMFusedQkNormRopeCache()
    assert impl.available() == (True, "")
    assert "mRoPE" in impl.supports(small(mrope=(8, 12, 12)))[1]
    assert "weight_offset" in impl.supports(small(offset=1.0))[1]
    for c, dt in ((small(), "auto"), (small(cd=FP8), "fp8"), (small(t=5, bs=1), "auto")):
        rec.calls.clear()
        inp = build_inputs(c)
        v = gate(c, inp, impl.build(c, inp))
        assert v.ok, (dt, v.reason)
        (_, a, _), (_, b, _) = rec.calls
        assert a[0] is inp.qkv and a[1:5] == (4, 2, 2, 128) and a[8] is inp.cos_sin_cache
        key, value, kc, vc, sm, kdt, ks, vs = b
        assert key is inp.k and value is inp.v and sm is inp.slot_mapping and kdt == dt  # full slot_mapping
        assert kc.shape == (c.num_slots // c.block_size, c.block_size, 2, 128)
        assert kc.dtype == (torch.uint8 if dt == "fp8" else torch.bfloat16)
        if dt == "fp8":
            assert ks is inp.k_scale and vs is inp.v_scale
        else:
            assert float(ks) == 1.0 and ks.dtype == torch.float32


def test_torch_prologue_is_traceable_without_graph_breaks():
    """torch.compile's row compiles this function (fullgraph); here: dynamo traces it on CPU."""
    import torch._dynamo as dynamo
    c = small(t=4, cd=FP8, mrope=(8, 12, 12))
    inp = build_inputs(c)
    ex = dynamo.explain(torch_prologue)(inp.q, inp.k, inp.v, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions,
                                        inp.k_cache, inp.v_cache, inp.slot_mapping, inp.k_scale, inp.v_scale, c.eps,
                                        c.weight_offset, c.rotary_dim, c.is_neox, c.mrope_section, c.n_kept)
    assert ex.graph_break_count == 0, ex.break_reasons


# --------------------------------------------------------------------------- end to end

def test_cli_quick_prologue_end_to_end(tmp_path):
    import csv

    from qknorm.bench.cli import main
    out = tmp_path / "res"
    rc = main(["--quick", "--preset", "prologue", "--out", str(out)])
    assert rc in (0, None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["op"] for r in rows} == {"prologue"}
    by = {}
    for r in rows:
        by.setdefault(r["impl"], []).append(r)
    assert all(r["status"] == "ok" for r in by["qknorm"]) and len(by["qknorm"]) == 12
    assert all(r["status"] == "ok" for r in by["torch_norm+rope+cache"])
    assert all(r["status"] in ("ok", "skipped") for r in by["qknorm_rope+torch_cache"])
    assert not [r for r in rows if r["status"] in ("wrong", "error")]
    assert all(r["reason"] for r in rows if r["status"] == "skipped")
    assert all(math.isfinite(float(r["rel_err"])) for r in by["qknorm"])
