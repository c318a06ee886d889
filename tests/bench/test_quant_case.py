"""The quantised kinds of `qknorm bench` (issue 15) on a CPU: the `quant` preset and its cases,
ideal bytes, the fp64 reference against `qknorm.rms_norm_quant`, the gate's tie rule (accepts a
right answer, counts one-step rounding ties, fails wrong ones), the peers' calls (fake FlashInfer,
SGLang and vLLM modules doing the documented work), and `qknorm bench --quick --preset quant`."""
import csv
import math
import sys
import types

import pytest
import torch

import qknorm
from qknorm.bench import peers as P
from qknorm.bench.cases import (QUANT_MODES, QUANT_OPS, Case, build_inputs, expected, preset_cases, quant_reference,
                                quant_values, quick_cases, round_to_codes)
from qknorm.bench.check import code_table, compare_codes, gate, quant_window
from qknorm.bench.cli import main
from qknorm.bench.common import torch_norm_f32
from qknorm.bench.peers import (VLLM, FlashInferLike, FlashInferRmsTorchQuant, Qknorm, SGLangRmsQuant, TorchEager,
                                torch_quant)
from qknorm.bench.peers.pytorch import quant_fn, torch_norm_quant
from qknorm.bench.runner import Options, Runner
from qknorm.bench.timing import Baselines

BASE = Baselines("cpu", False, 10.0, None, None, 0, 0)
E4M3 = torch.float8_e4m3fn


def _case(op, t=8, hidden=512, dtype=torch.bfloat16, **kw):
    return Case("quant", op, t, dtype, hidden=hidden, **kw)


# --------------------------------------------------------------------------- cases and preset

def test_quant_preset_widths_modes_and_tokens():
    cases = preset_cases("quant")
    by = {}
    for c in cases:
        by.setdefault(c.hidden, set()).add(c.op)
        assert c.is_quant and c.out_dtype == E4M3 and c.preset == "quant" and c.dtype == torch.bfloat16
    forms = ("rmsq", "addq")
    assert by == {8192: {f"{f}_{m}" for f in forms for m in ("static", "token", "group")},
                  4096: {f"{f}_{m}" for f in forms for m in ("static", "token", "group")},
                  7168: {"rmsq_group_ue8m0", "addq_group_ue8m0"}}
    assert sorted({c.tokens for c in cases}) == [1, 4, 16, 64, 256, 512, 1024, 4096, 16384]
    assert all(c.group_size == 128 for c in cases if c.quant_mode.startswith("group"))
    assert {c.quant_mode for c in cases} == set(QUANT_MODES)
    assert "quant" in __import__("qknorm.bench.cases", fromlist=["PRESETS"]).PRESETS
    quick = quick_cases(["quant"])
    assert {c.quant_mode for c in quick} == set(QUANT_MODES) and {c.tokens for c in quick} == {16}
    assert {c.op[:4] for c in quick} == {"rmsq", "addq"} and len(quick) == 4


def test_quant_case_fields_and_group_string():
    c = _case("rmsq_group_ue8m0", hidden=7168)
    assert (c.n_groups, c.column_major_scales, c.scale_ue8m0, c.qknorm_op) == (56, True, True, "rms_norm")
    assert c.group == "rmsq_group_ue8m0 hidden=7168 g=128 e4m3 bf16" and c.shape == "[8, 7168]"
    assert _case("addq_token").n_groups == 1 and _case("addq_token").qknorm_op == "fused_add_rms_norm"
    assert _case("rmsq_static").n_groups == 0 and _case("rmsq_static", out_dtype=torch.int8).group.endswith("int8 bf16")
    with pytest.raises(ValueError, match="group_size"):
        _case("rmsq_token", group_size=128)
    with pytest.raises(ValueError, match="divide"):
        _case("rmsq_group", hidden=200)
    with pytest.raises(ValueError, match="out_dtype"):
        _case("rmsq_token", out_dtype=torch.float16)
    with pytest.raises(ValueError, match="quantised kinds only"):
        Case("t", "rms2d", 2, hidden=256, group_size=128)


@pytest.mark.parametrize("op", QUANT_OPS)
def test_quant_ideal_bytes(op):
    t, h = 16, 7168
    c = _case(op, t, h)
    es, elems = 2, t * h
    scales = {"static": 4, "token": 4 * t, "group": 4 * t * h // 128, "group_ue8m0": 4 * t * h // 128}[c.quant_mode]
    # x read once, 8-bit codes and the scales written once (static: the scale read), the weight once;
    # fused: the residual read and written too
    want = elems * es + elems * 1 + scales + h * es + (2 * elems * es if op.startswith("addq") else 0)
    assert c.ideal_bytes == want


def test_quant_inputs():
    c = _case("addq_group_ue8m0", 5, 512)
    inp = build_inputs(c)
    assert inp.residual.shape == inp.x.shape and inp.out.dtype == E4M3 and inp.out.shape == (5, 512)
    assert inp.scales.shape == (5, 4) and inp.scales.stride() == (1, 5) and inp.scales.dtype == torch.float32
    s = build_inputs(_case("rmsq_static", 5, 512))
    # static: amax / 448 of the first row's norm, a 1-element fp32 tensor
    n0 = torch_norm_f32(s.x[:1], s.w, c.eps)
    assert s.scale.shape == (1,) and s.scale.dtype == torch.float32
    assert float(s.scale) == pytest.approx(float(n0.abs().max()) / 448, rel=1e-5)
    assert "scales" not in s.t and build_inputs(_case("rmsq_group", 5, 512)).scales.stride() == (4, 1)
    again = build_inputs(c)  # the same seed: the same values
    assert torch.equal(again.x, inp.x) and torch.equal(again.residual, inp.residual)


def test_pow2_ceil_is_exact():
    from qknorm.bench.cases import pow2_ceil
    s = torch.cat([torch.rand(1000, dtype=torch.float64) * 1e3 + 1e-12,
                   torch.tensor([1.0, 0.5, 2.0 ** -40, 2.0 ** -40 * (1 + 2 ** -52), 1e-10 / 448], dtype=torch.float64)])
    m, e = torch.frexp(s)
    assert torch.equal(pow2_ceil(s), torch.ldexp(torch.ones_like(s), e - (m == 0.5).to(e.dtype)))
    assert pow2_ceil(torch.tensor([3.0], dtype=torch.float64)).item() == 4.0


# --------------------------------------------------------------------------- reference vs qknorm

def _qknorm_call(case, inp):
    return Qknorm().build(case, inp)


@pytest.mark.parametrize("op", QUANT_OPS)
def test_expected_matches_rms_norm_quant_within_the_tie_rule(op):
    c = _case(op, 32, 1024)
    inp = build_inputs(c, seed=1)
    ref = expected(c, inp)
    ref_q = quant_reference(c, inp)
    y, s, *r = _qknorm_call(c, inp.clone())()  # qknorm's own call, on a copy
    win = quant_window(c.dtype)
    if c.n_groups:
        assert s.shape == ref[1].shape and s.stride() == ref[1].stride()
        if c.scale_ue8m0:
            assert torch.equal(s, ref[1])
        else:
            assert ((s.double() - ref[1].double()).abs() / ref[1].double()).max() <= win
    else:
        assert s is not None and float(s) == float(ref[1])
    table = code_table(c.out_dtype, "cpu")
    # against its own scales (what the gate does) and against the reference's (expected()'s codes):
    # every code the reference's, or one step off at a rounding tie
    own = quant_values(ref_q.n, s.double().reshape(ref_q.scales.shape) if c.n_groups else ref_q.scales, ref_q.qmax)
    assert compare_codes(y, own, win, table)[1] == 0
    ties, bad, worst = compare_codes(y, quant_values(ref_q.n, ref_q.scales, ref_q.qmax), win, table)
    assert bad == 0 and worst <= 1
    assert int((y.float() != ref[0].float()).sum()) == ties < y.numel() * 1e-3
    if r:
        assert torch.equal(r[0], ref[2])


@pytest.mark.parametrize("out_dtype", [torch.int8, torch.float8_e5m2])
def test_gate_passes_qknorm_for_other_formats(out_dtype):
    for op in ("rmsq_token", "addq_group"):
        c = _case(op, 8, 512, out_dtype=out_dtype)
        inp = build_inputs(c)
        v = gate(c, inp, _qknorm_call(c, inp))
        assert v.ok, v.reason


# --------------------------------------------------------------------------- the gate

def test_compare_codes_tie_rule():
    table = code_table(E4M3, "cpu")
    # 1.0 and 1.125 are adjacent e4m3 codes; 1.0625 is their midpoint (a tie, to even: 1.0)
    v = torch.tensor([1.0625, 1.0625 * (1 - 1e-7), 1.05, 1.0, 3.0], dtype=torch.float64)
    ok = torch.tensor([1.0, 1.125, 1.125, 1.0, 3.0]).to(E4M3)
    ties, bad, worst = compare_codes(ok[:2], v[:2], 2 ** -18, table)
    assert (ties, bad, worst) == (1, 0, 1.0)  # one step off at a (near-)tie: counted, allowed
    ties, bad, worst = compare_codes(ok, v, 2 ** -18, table)
    assert (ties, bad) == (1, 1)  # 1.05 rounds to 1.0, not near the midpoint: 1.125 is wrong
    two = torch.tensor([1.0, 1.25]).to(E4M3)  # 1.25 is two codes above 1.0 (1.125 between)
    assert compare_codes(two, torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5, table)[1:] == (1, 2.0)
    nan = torch.tensor([float("nan")]).to(E4M3)
    assert compare_codes(nan, torch.tensor([1.0], dtype=torch.float64), 2 ** -18, table)[1:] == (1, math.inf)
    t8 = code_table(torch.int8, "cpu")
    assert compare_codes(torch.tensor([3], dtype=torch.int8), torch.tensor([2.5], dtype=torch.float64), 1e-6,
                         t8) == (1, 0, 1.0)  # 2.5 rounds to 2 (even); 3 is the tie's other side


def _flip_ties(case, inp, fn):
    """``fn``'s outputs with every code whose value lies within 2**-20 of a midpoint moved to the
    tie's other code (still right by the rule); returns (wrapped fn, [(how many it moved, how many
    of those were off the reference before)])."""
    ref = quant_reference(case, inp)
    moved = []

    def call():
        outs = fn()
        y, s = outs[0], outs[1]
        sc = s.double().reshape(ref.scales.shape) if case.n_groups else ref.scales
        v = quant_values(ref.n, sc, ref.qmax)
        table = code_table(case.out_dtype, "cpu")
        i = torch.searchsorted(table, v).clamp(1, len(table) - 1)
        lo, hi = table[i - 1], table[i]
        mid = (lo + hi) / 2
        near = ((v - mid).abs() <= 2 ** -20 * mid.abs()) & (hi > lo)
        other = torch.where(y.double() == lo, hi, lo)
        was_off = near & (y.double() != round_to_codes(v, y.dtype).double())  # already the tie's other side
        y.copy_(torch.where(near, other, y.double()).float().to(y.dtype))
        moved.append((int(near.sum()), int(was_off.sum())))
        return outs
    return call, moved


def test_gate_accepts_counts_ties_and_fails_wrong_answers():
    c = _case("rmsq_token", 64, 1024)
    inp = build_inputs(c, seed=3)
    v = gate(c, inp, _qknorm_call(c, inp))
    assert v.ok and "codes one step off at rounding ties" in v.notes, v
    assert 0.01 < v.error < 0.05  # the e4m3 quantisation noise of the dequantised codes

    # the same answer with every exact tie resolved the other way: still right, and counted
    inp = build_inputs(c, seed=3)
    fn, moved = _flip_ties(c, inp, _qknorm_call(c, inp))
    v2 = gate(c, inp, fn)
    (n_moved, was_off), = moved
    assert n_moved > 0, "bf16 inputs give exact ties (the rms cancels in n / amax)"
    ties1, ties2 = int(v.notes.split()[1]), int(v2.notes.split()[1])
    assert v2.ok and ties2 == ties1 + n_moved - 2 * was_off

    def wrong(mutate, case=c, seed=3):
        i = build_inputs(case, seed=seed)
        f = _qknorm_call(case, i)

        def call():
            outs = list(f())
            mutate(outs, i)
            return tuple(outs)
        return gate(case, i, call)

    def two_steps(outs, i):
        outs[0][3, 7] = (outs[0][3, 7].float() * 1.3).to(E4M3)

    v = wrong(two_steps)
    assert not v.ok and v.reason.startswith("codes: 1 of ") and "steps" in v.reason
    v = wrong(lambda outs, i: outs[0][5].fill_(float("nan")))
    assert not v.ok and "NaN" in v.reason and math.isinf(v.error)
    v = wrong(lambda outs, i: outs[1].mul_(1 + 1e-4))
    assert not v.ok and v.reason.startswith("scales: ") and "relative" in v.reason
    v = wrong(lambda outs, i: outs.__setitem__(1, outs[1].reshape(-1)))
    assert not v.ok and "shape" in v.reason

    g = _case("rmsq_group_ue8m0", 16, 512)
    v = wrong(lambda outs, i: outs.__setitem__(1, outs[1].contiguous()), g)
    assert not v.ok and "column-major" in v.reason
    v = wrong(lambda outs, i: outs[1][2, 1].mul_(2.0), g)
    assert not v.ok and "power of two" in v.reason

    st = _case("addq_static", 16, 512)
    v = wrong(lambda outs, i: outs.__setitem__(1, outs[1] * 2), st)
    assert not v.ok and "is not the given" in v.reason
    v = wrong(lambda outs, i: outs[2].add_(1.0), st)
    assert not v.ok and v.reason.startswith("residual: ")

    # a different function: per-token scales where the case asks for groups
    grp = _case("rmsq_group", 16, 512)
    i = build_inputs(grp)
    bad = lambda: qknorm.rms_norm_quant(i.x, i.w, grp.eps)  # noqa: E731
    v = gate(grp, i, bad)
    assert not v.ok and "shape" in v.reason


@pytest.mark.parametrize("out_dtype", [E4M3, torch.float8_e5m2, torch.int8])
def test_gate_poisons_the_preallocated_outputs(out_dtype):
    """An implementation that writes nothing fails: codes are poisoned as raw bytes (NaN in both
    fp8 formats, -128 for int8, which symmetric codes never take), scales with NaN."""
    c = _case("rmsq_static", 4, 256, out_dtype=out_dtype)
    inp = build_inputs(c)
    v = gate(c, inp, lambda: (inp.out, inp.scale))
    assert not v.ok and v.reason.startswith("codes: 1024 of 1024"), v
    c = _case("addq_group", 4, 256, out_dtype=out_dtype)
    inp = build_inputs(c)
    v = gate(c, inp, lambda: (inp.out, inp.scales, inp.residual))
    assert not v.ok and "NaN" in v.reason and math.isinf(v.error)


def test_window_for_implementations_that_round_the_norm_first():
    assert quant_window(torch.bfloat16) == 2 ** -18
    assert quant_window(torch.bfloat16, True) == pytest.approx(2 ** -18 + 3 * 2 ** -8)
    assert quant_window(torch.float16, True) == pytest.approx(2 ** -18 + 3 * 2 ** -11)
    c = _case("addq_token", 32, 1024)

    def rounded(inp):  # the norm rounded to bf16, then quantised: a composition through a bf16 tensor
        def call():
            s = inp.x.float() + inp.residual.float()
            inp.residual.copy_(s)
            return torch_quant(torch_norm_f32(s, inp.w, c.eps).to(torch.bfloat16), "token", E4M3) + (inp.residual,)
        return call

    inp = build_inputs(c)
    assert not gate(c, inp, rounded(inp)).ok  # outside the fp32 window ...
    inp = build_inputs(c)
    v = gate(c, inp, rounded(inp), norm_rounded=True)
    assert v.ok, v.reason  # ... inside the rounded one, with its ties counted
    assert int(v.notes.split()[1]) > 0


# --------------------------------------------------------------------------- peers

def test_torch_composition_and_qknorm_pass_every_mode():
    for op in QUANT_OPS:
        c = _case(op, 4, 512)
        for impl in (Qknorm(), TorchEager()):
            inp = build_inputs(c)
            v = gate(c, inp, impl.build(c, inp), norm_rounded=impl.norm_rounded)
            assert v.ok, (impl.name, op, v.reason)
    assert P.qknorm_variants(_case("rmsq_token"), "cpu") == []


def test_torch_compile_composition_traces_in_one_graph():
    """The torch.compile row compiles torch_norm_quant with fullgraph=True: Dynamo must trace
    every mode in one graph (checked here with the eager backend; Inductor runs on the GPU)."""
    import torch._dynamo as dynamo
    impl = P.TorchCompile()
    assert impl.needs_cuda and "torch composition" in impl.notes(_case("rmsq_token"))
    assert impl.ran(_case("rmsq_token")) == "Inductor (generated Triton)"
    for op in ("addq_static", "rmsq_group_ue8m0"):
        dynamo.reset()
        c = _case(op, 4, 256)
        inp = build_inputs(c)
        f = torch.compile(torch_norm_quant, fullgraph=True, dynamic=False, backend="eager")
        assert gate(c, inp, quant_fn(c, inp, f)).ok
    dynamo.reset()


@pytest.fixture
def fake_flashinfer(monkeypatch):
    """``flashinfer.norm`` with rmsnorm, fused_add_rmsnorm and the static quant norms, doing the
    documented work in torch (fp32 norm times 1/scale, clamp, cast)."""
    calls = []
    norm = types.ModuleType("flashinfer.norm")

    def rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
        calls.append(("rmsnorm", (input, weight, eps), dict(out=out)))
        out.copy_(torch_norm_f32(input, weight, eps).to(input.dtype))
        return out

    def fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
        calls.append(("fused_add_rmsnorm", (input, residual, weight, eps), {}))
        s = input.float() + residual.float()
        residual.copy_(s)
        input.copy_(torch_norm_f32(s, weight, eps).to(input.dtype))

    def rmsnorm_quant(out, input, weight, scale, eps=1e-6, enable_pdl=None):
        calls.append(("rmsnorm_quant", (out, input, weight, scale, eps), {}))
        out.copy_((torch_norm_f32(input, weight, eps) * (1 / scale)).clamp(-448, 448).to(out.dtype))

    def fused_add_rmsnorm_quant(out, input, residual, weight, scale, eps=1e-6, enable_pdl=None):
        calls.append(("fused_add_rmsnorm_quant", (out, input, residual, weight, scale, eps), {}))
        s = input.float() + residual.float()
        residual.copy_(s)
        out.copy_((torch_norm_f32(s, weight, eps) * (1 / scale)).clamp(-448, 448).to(out.dtype))

    norm.__dict__.update(rmsnorm=rmsnorm, fused_add_rmsnorm=fused_add_rmsnorm, rmsnorm_quant=rmsnorm_quant,
                         fused_add_rmsnorm_quant=fused_add_rmsnorm_quant)
    pkg = types.ModuleType("flashinfer")
    pkg.__path__ = []
    monkeypatch.setitem(sys.modules, "flashinfer", pkg)
    monkeypatch.setitem(sys.modules, "flashinfer.norm", norm)
    return calls


def test_flashinfer_static_quant_norms_and_composition(fake_flashinfer):
    impl = FlashInferLike("flashinfer", "flashinfer.norm", dists=("flashinfer-python",), quant=True)
    assert impl.available() == (True, "")
    for op in ("rmsq_token", "rmsq_group", "addq_group_ue8m0"):
        ok, why = impl.supports(_case(op))
        assert not ok and "static per-tensor scale only" in why
    assert "fp8 e4m3/e5m2" in impl.supports(_case("rmsq_static", out_dtype=torch.int8))[1]
    for op, fn in (("rmsq_static", "rmsnorm_quant"), ("addq_static", "fused_add_rmsnorm_quant")):
        c = _case(op)
        assert impl.supports(c) == (True, "")
        fake_flashinfer.clear()
        inp = build_inputs(c)
        v = gate(c, inp, impl.build(c, inp), norm_rounded=impl.norm_rounded)
        assert v.ok, v.reason
        (name, args, _), = fake_flashinfer
        assert name == fn and args[0] is inp.out and args[1] is inp.x and args[-2] is inp.scale and args[-1] == c.eps
        if op == "addq_static":
            assert args[2] is inp.residual
    sgl = FlashInferLike("sgl_kernel", "sgl_kernel", library="sgl_kernel")
    assert not sgl.supports(_case("rmsq_static"))[0]

    comp = FlashInferRmsTorchQuant()
    assert comp.available() == (True, "") and comp.norm_rounded
    for op in QUANT_OPS:
        c = _case(op)
        inp = build_inputs(c)
        v = gate(c, inp, comp.build(c, inp), norm_rounded=True)
        assert v.ok, (op, v.reason)


@pytest.fixture
def fake_sglang(monkeypatch):
    """``sglang.jit_kernel`` norm and quant modules doing the documented work in torch."""
    calls = []
    mods = {}
    for name in ("sglang", "sglang.jit_kernel", "sglang.jit_kernel.norm", "sglang.jit_kernel.per_tensor_quant_fp8",
                 "sglang.jit_kernel.per_token_quant_fp8", "sglang.jit_kernel.per_token_group_quant_8bit"):
        mods[name] = types.ModuleType(name)
    mods["sglang"].__path__ = mods["sglang.jit_kernel"].__path__ = []

    def rmsnorm(input, weight, out=None, eps=1e-6):
        calls.append(("rmsnorm", (input, weight), dict(out=out, eps=eps)))
        out.copy_(torch_norm_f32(input, weight, eps).to(input.dtype))

    def fused_add_rmsnorm(input, residual, weight, eps=1e-6, *, cast_x_before_out_mul=False):
        calls.append(("fused_add_rmsnorm", (input, residual, weight, eps), {}))
        s = input.float() + residual.float()
        residual.copy_(s)
        input.copy_(torch_norm_f32(s, weight, eps).to(input.dtype))

    def per_tensor_quant_fp8(input, output_q, output_s, is_static=False):
        calls.append(("per_tensor_quant_fp8", (input, output_q, output_s), dict(is_static=is_static)))
        output_q.copy_(torch_quant(input, "static", E4M3, scale=output_s)[0])

    def per_token_quant_fp8(input, output_q, output_s):
        calls.append(("per_token_quant_fp8", (input, output_q, output_s), {}))
        q, s = torch_quant(input, "token", E4M3)
        output_q.copy_(q)
        output_s.copy_(s)

    def per_token_group_quant_8bit(input, output_q, output_s, group_size, eps, fp8_min, fp8_max, scale_ue8m0=False):
        calls.append(("per_token_group_quant_8bit", (), dict(input=input, output_q=output_q, output_s=output_s,
                                                             group_size=group_size, eps=eps, fp8_min=fp8_min,
                                                             fp8_max=fp8_max, scale_ue8m0=scale_ue8m0)))
        q, s = torch_quant(input, "group", E4M3, group_size)
        output_q.copy_(q)
        output_s.copy_(s)

    mods["sglang.jit_kernel.norm"].__dict__.update(rmsnorm=rmsnorm, fused_add_rmsnorm=fused_add_rmsnorm)
    mods["sglang.jit_kernel.per_tensor_quant_fp8"].per_tensor_quant_fp8 = per_tensor_quant_fp8
    mods["sglang.jit_kernel.per_token_quant_fp8"].per_token_quant_fp8 = per_token_quant_fp8
    mods["sglang.jit_kernel.per_token_group_quant_8bit"].per_token_group_quant_8bit = per_token_group_quant_8bit
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    return calls


def test_sglang_norm_plus_quant_kernels(fake_sglang):
    impl = SGLangRmsQuant("sglang")
    assert impl.name == "sglang_jit_rms+quant" and impl.available() == (True, "")
    ok, why = impl.supports(_case("rmsq_group_ue8m0"))
    assert not ok and "packed uint8 exponents" in why
    assert "e4m3" in impl.supports(_case("rmsq_token", out_dtype=torch.int8))[1]
    want = {"static": "per_tensor_quant_fp8", "token": "per_token_quant_fp8", "group": "per_token_group_quant_8bit"}
    for op in ("rmsq_static", "rmsq_token", "rmsq_group", "addq_static", "addq_token", "addq_group"):
        c = _case(op)
        assert impl.supports(c) == (True, "")
        fake_sglang.clear()
        inp = build_inputs(c)
        v = gate(c, inp, impl.build(c, inp), norm_rounded=impl.norm_rounded)
        assert v.ok, (op, v.reason)
        (norm, nargs, nkw), (quant, qargs, qkw) = fake_sglang
        if c.has_residual:
            assert norm == "fused_add_rmsnorm" and nargs[0] is inp.x and nargs[1] is inp.residual
        else:
            assert norm == "rmsnorm" and nargs[0] is inp.x and nkw["eps"] == c.eps
        assert quant == want[c.quant_mode]
        if c.quant_mode == "static":
            assert qargs[1] is inp.out and qargs[2] is inp.scale and qkw == {"is_static": True}
        elif c.quant_mode == "token":
            assert qargs[1] is inp.out and qargs[2] is inp.scales and inp.scales.shape == (8, 1)
        else:
            assert qkw["output_q"] is inp.out and qkw["output_s"] is inp.scales and qkw["group_size"] == 128
            assert (qkw["eps"], qkw["fp8_min"], qkw["fp8_max"], qkw["scale_ue8m0"]) == (1e-10, -448.0, 448.0, False)
    t = SGLangRmsQuant("torch")
    t.available()
    for op in QUANT_OPS:
        c = _case(op)
        inp = build_inputs(c)
        assert gate(c, inp, t.build(c, inp), norm_rounded=True).ok, op


def test_sglang_without_a_quant_module_says_so(fake_sglang, monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang.jit_kernel.per_token_quant_fp8", None)
    impl = SGLangRmsQuant("sglang")
    impl.available()
    ok, why = impl.supports(_case("rmsq_token"))
    assert not ok and "this SGLang has no sglang.jit_kernel.per_token_quant_fp8" in why


class _Schema:
    def __init__(self, names):
        self.arguments = [types.SimpleNamespace(name=n) for n in names]


class _FakeOp:
    """A vLLM custom op: records its call and does the work with the norm rounded to bf16 twice
    (``static_cast<scalar_t>(x * rms) * weight``), as vLLM's kernels do."""

    def __init__(self, name, calls, args):
        self.name, self.calls = name, calls
        self.default = types.SimpleNamespace(_schema=_Schema(args))

    def __call__(self, *a):
        self.calls.append((self.name, a))
        if self.name.endswith("static_fp8_quant"):
            out, x, *rest = a
            r, w, scale, eps = (rest if len(rest) == 4 else [None] + rest)
        else:
            out, x, w, scale, eps, _ub, r, *more = a
        s = x.float() + r.float() if r is not None else x.float()
        if r is not None:
            r.copy_(s)
        rms = torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)
        n = ((s * rms).to(x.dtype) * w).to(x.dtype)
        if self.name.endswith("static_fp8_quant"):
            out.copy_(torch_quant(n, "static", out.dtype, scale=scale)[0])
        elif self.name == "rms_norm_dynamic_per_token_quant":
            q, sc = torch_quant(n, "token", out.dtype)
            out.copy_(q)
            scale.copy_(sc)
        else:
            g, transposed, *ue = more
            q, sc = torch_quant(n, "group", out.dtype, g, ue8m0=bool(ue and ue[0]))
            out.copy_(q)
            scale.copy_(sc)


def test_vllm_quant_ops(monkeypatch):
    from qknorm.bench.peers import vllm as V
    calls = []
    block = ["result", "input", "weight", "scale", "epsilon", "scale_ub", "residual", "group_size",
             "is_scale_transposed"]
    ops = {n: _FakeOp(n, calls, block if n == "rms_norm_per_block_quant" else []) for n in
           ("rms_norm_static_fp8_quant", "fused_add_rms_norm_static_fp8_quant", "rms_norm_dynamic_per_token_quant",
            "rms_norm_per_block_quant")}
    monkeypatch.setattr(V, "_c_op", lambda name: ops.get(name))
    impl = VLLM()
    impl._ops = types.SimpleNamespace()
    assert impl.norm_rounded
    ok, why = impl.supports(_case("rmsq_group_ue8m0"))
    assert not ok and "no scale_ue8m0 argument" in why
    assert "fp8 e4m3 output only" in impl.supports(_case("rmsq_static", out_dtype=torch.int8))[1]
    for op in ("rmsq_static", "addq_static", "rmsq_token", "addq_token", "rmsq_group", "addq_group"):
        c = _case(op)
        assert impl.supports(c) == (True, ""), op
        calls.clear()
        inp = build_inputs(c)
        v = gate(c, inp, impl.build(c, inp), norm_rounded=True)
        assert v.ok, (op, v.reason)
        (name, a), = calls
        assert name == V.VLLM_QUANT_OPS[c.quant_mode][c.has_residual] and a[0] is inp.out and a[1] is inp.x
        if c.quant_mode == "static":
            assert a[-2] is inp.scale and (a[2] is inp.residual if c.has_residual else a[2] is inp.w)
        else:
            assert a[3] is inp.scales and a[5] is None and (a[6] is inp.residual if c.has_residual else a[6] is None)
        if c.quant_mode == "group":
            assert a[7:] == (128, False)
    ops["rms_norm_per_block_quant"] = _FakeOp("rms_norm_per_block_quant", calls, block + ["scale_ue8m0"])
    c = _case("addq_group_ue8m0")
    assert impl.supports(c) == (True, "")
    calls.clear()
    inp = build_inputs(c)
    assert gate(c, inp, impl.build(c, inp), norm_rounded=True).ok
    assert calls[0][1][7:] == (128, True, True)  # group, transposed (column-major) scales, UE8M0


# --------------------------------------------------------------------------- runner and CLI

def test_runner_rows_for_a_quant_case():
    rows = []
    Runner(Options(device="cpu", modes=("eager",)), BASE, rows.append).run_case(_case("addq_group_ue8m0", 4, 512))
    by = {r["impl"]: r for r in rows}
    for name in ("qknorm", "torch"):
        assert by[name]["status"] == "ok" and "codes one step off at rounding ties" in by[name]["notes"]
        assert 0.005 < float(by[name]["rel_err"]) < 0.1
    assert by["qknorm"]["config_reason"].startswith("CPU") and "fused_add_rms_norm_quant" in by["qknorm"]["notes"]
    for name in ("torch.compile", "flashinfer", "vllm", "flashinfer_rms+torch_quant", "sglang_jit_rms+quant",
                 "sglang_jit_rms+torch_quant"):
        assert by[name]["status"] == "skipped" and by[name]["reason"].startswith(
            "GPU runs only: " if name == "torch.compile" else "needs a CUDA GPU; "), by[name]
    assert by["quack"]["status"] == "skipped" and by["quack"]["reason"]


def test_quick_quant_preset_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["--quick", "--preset", "quant", "--impl", "qknorm,torch*,flashinfer*,vllm,sglang*", "--out",
                 str(out), "--no-plots", "--device", "cpu"]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["op"] for r in rows} == {"rmsq_static", "addq_token", "addq_group", "rmsq_group_ue8m0"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in ok} == {"qknorm", "torch"} and len(ok) == 8
    assert all(r["preset"] == "quant" and r["ideal_bytes"] and "rounding ties" in r["notes"] for r in ok)
    assert all(r["status"] == "skipped" and r["reason"] for r in rows if r["impl"] not in ("qknorm", "torch"))
    assert (out / "summary.md").exists()
