"""The ``rope`` bench case (QK norm + RoPE in place on the packed QKV buffer): presets,
inputs, the fp32 reference, the correctness gate on the CPU adapters, and the peers that
must skip it (norm-only implementations) or report themselves unavailable here."""
import math

import pytest
import torch

import qknorm
from qknorm.bench.cases import (OPS, PRESETS, QKNORM_OP, ROPE_MAX_POSITION, Case, build_inputs, expected,
                                layout, preset_cases, quick_cases)
from qknorm.bench.check import gate
from qknorm.bench.peers import (Impl, Qknorm, QknormQkFlashInferRope, FlashInferRmsRope, TorchEager, TorchRope,
                                VLLMFusedQkNormRope, qknorm_variants, static_impls)
from qknorm.bench.runner import Options, Runner
from qknorm.bench.timing import Baselines

BASE = Baselines("cpu", False, 10.0, None, None, 0, 0)
ROPE_IMPLS = {"qknorm", "torch.compile", "torch_norm+rope", "qknorm_qk+flashinfer_rope", "flashinfer_rms+rope",
              "vllm_fused_qk_norm_rope"}


def small(t=5, dtype=torch.float32, d=64, r=32, offset=0.0, neox=True):
    return Case("rope", "rope", t, dtype, 4, 2, d, weight_offset=offset, rotary_dim=r, is_neox=neox)


def fp64_rope_ref(case, inp):
    """Independent fp64 reference: norm, then the pairs rotated as complex numbers."""
    r, half = case.rotary_dim, case.rotary_dim // 2
    cs = inp.cos_sin_cache.double()[inp.positions]
    rot = torch.complex(cs[:, :half], cs[:, half:r])[:, None, :]
    outs = []
    for x, w in ((inp.q, inp.qw), (inp.k, inp.kw)):
        xf = x.double()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + case.eps) * (w.double() + case.weight_offset)
        out = y.clone()
        if case.is_neox:
            z = torch.complex(y[..., :half], y[..., half:r]) * rot
            out[..., :half], out[..., half:r] = z.real, z.imag
        else:
            z = torch.complex(y[..., 0:r:2], y[..., 1:r:2]) * rot
            out[..., 0:r:2], out[..., 1:r:2] = z.real, z.imag
        outs.append(out)
    return outs


# --------------------------------------------------------------------------- cases and presets

def test_preset_covers_the_issue_models():
    assert "rope" in PRESETS and "rope" in OPS and QKNORM_OP["rope"] == "qk_rms_norm"
    cases = preset_cases("rope")
    assert {c.op for c in cases} == {"rope"} and {c.preset for c in cases} == {"rope"}
    assert {c.tokens for c in cases} == {1, 4, 16, 64, 256, 512, 1024, 4096, 16384}
    shapes = {(c.hq, c.hkv, c.head_dim, c.rotary_dim, c.weight_offset) for c in cases}
    assert shapes == {(32, 8, 128, 128, 0.0), (64, 4, 128, 128, 0.0), (16, 2, 256, 64, 0.0),
                      (32, 16, 128, 128, 1.0)}
    assert all(c.is_neox and c.dtype == torch.bfloat16 and c.is_qk for c in cases)
    assert len({c.group for c in cases}) == 4 and all(c.group.split()[0] == "rope" for c in cases)
    assert {c.tokens for c in preset_cases("rope", tokens=(2, 8))} == {2, 8}
    assert len([c for c in quick_cases() if c.op == "rope"]) == 1  # --quick: one case of each op kind
    assert {c.op for c in quick_cases(["rope"])} == {"rope"}


def test_case_validation():
    assert small(r=0).rotary_dim == 64  # 0: the whole head
    with pytest.raises(ValueError, match="rotary_dim"):
        small(r=33)
    with pytest.raises(ValueError, match="rotary_dim"):
        small(r=128)
    with pytest.raises(ValueError, match="rotary_dim is for op 'rope' only"):
        Case("t", "qk", 2, torch.float32, 4, 2, 64, rotary_dim=32)


def test_ideal_bytes():
    c = Case("rope", "rope", 4, torch.bfloat16, 32, 8, 128, rotary_dim=128)
    qk = 2 * 4 * 40 * 128 * 2          # Q and K read and written
    weights = 2 * 128 * 2
    positions = 4 * 8
    cache_rows = 4 * 128 * 4             # one fp32 cos/sin row per token
    assert c.ideal_bytes == qk + weights + positions + cache_rows


def test_build_inputs():
    c = Case("rope", "rope", 64, torch.bfloat16, 16, 2, 256, rotary_dim=64)
    inp = build_inputs(c, seed=3)
    assert inp.q.shape == (64, 16, 256) and inp.k.shape == (64, 2, 256) and not inp.q.is_contiguous()
    assert inp.q.data_ptr() == inp.qkv.data_ptr()  # views of the packed buffer
    assert inp.cos_sin_cache.shape == (ROPE_MAX_POSITION, 64) and inp.cos_sin_cache.dtype == torch.float32
    cs = inp.cos_sin_cache
    torch.testing.assert_close(cs[:, :32].square() + cs[:, 32:].square(), torch.ones(ROPE_MAX_POSITION, 32))
    assert torch.equal(cs[0], torch.cat((torch.ones(32), torch.zeros(32))))
    p = inp.positions
    assert p.dtype == torch.int64 and p.shape == (64,)
    assert 0 <= int(p.min()) and int(p.max()) < ROPE_MAX_POSITION
    assert not torch.equal(p, p.sort().values), "positions should not be sorted"
    assert torch.equal(build_inputs(c, seed=3).positions, p)  # same seed, same inputs
    lay = layout(c, inp)
    assert lay["contiguous"] is False and "q:(5120, 256, 1)" in lay["strides"]
    cl = inp.clone()
    assert cl.qkv.data_ptr() != inp.qkv.data_ptr() and torch.equal(cl.qkv, inp.qkv)
    assert cl.q.data_ptr() == cl.qkv.data_ptr() and cl.positions is p and cl.cos_sin_cache is cs


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_expected_is_norm_then_rope(neox, offset):
    c = small(t=6, d=80, r=48, offset=offset, neox=neox)
    inp = build_inputs(c)
    got = expected(c, inp)
    for g, r in zip(got, fp64_rope_ref(c, inp)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the gate on the CPU adapters

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [Qknorm, TorchRope], ids=["qknorm", "torch_norm+rope"])
def test_gate_passes_rope_implementations(make, dtype):
    for c in (small(dtype=dtype), small(dtype=dtype, d=256, r=64), small(dtype=dtype, offset=1.0, neox=False)):
        inp = build_inputs(c)
        v_before = inp.v.clone()
        v = gate(c, inp, make().build(c, inp))
        assert v.ok, (c.group, v.reason)
        assert torch.equal(inp.v, v_before)


def test_gate_passes_qknorm_on_the_interpreted_kernel():
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    c = small(dtype=torch.bfloat16, d=128, r=64)
    with qknorm.use_backend("triton"):
        inp = build_inputs(c)
        assert gate(c, inp, Qknorm().build(c, inp)).ok
        cfg = qknorm_variants(c, "cpu")[0].config
        inp = build_inputs(c)
        assert gate(c, inp, Qknorm(cfg).build(c, inp)).ok


class NormOnly(Impl):
    """qk_rms_norm without the RoPE: must fail the rope gate."""

    name = "norm_only"

    def build(self, case, inp):
        def call():
            qknorm.qk_rms_norm(inp.q, inp.k, inp.qw, inp.kw, case.eps, weight_offset=case.weight_offset,
                               q_out=inp.q, k_out=inp.k)
            return inp.q, inp.k
        return call


class WrongStyle(Impl):
    """The fused op with the other pairing (GPT-J for a NeoX case): must fail the gate."""

    name = "wrong_style"

    def build(self, case, inp):
        def call():
            qknorm.qk_rms_norm_rope(inp.q, inp.k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, case.eps,
                                    is_neox=not case.is_neox, rotary_dim=case.rotary_dim,
                                    weight_offset=case.weight_offset, q_out=inp.q, k_out=inp.k)
            return inp.q, inp.k
        return call


@pytest.mark.parametrize("impl", [NormOnly(), WrongStyle()], ids=lambda i: i.name)
def test_gate_rejects_no_rope_and_wrong_style(impl):
    c = small(dtype=torch.bfloat16, d=128, r=128)
    inp = build_inputs(c)
    v = gate(c, inp, impl.build(c, inp))
    assert not v.ok and "rel L2" in v.reason


# --------------------------------------------------------------------------- peers and the runner

def test_norm_only_peers_skip_rope_and_gpu_peers_report_unavailable():
    c = small()
    qk = Case("t", "qk", 3, torch.float32, 4, 2, 64)
    for impl in static_impls():
        ok, why = impl.available()  # never raises, even without the library
        assert isinstance(ok, bool) and (ok or why)
        if impl.name in ROPE_IMPLS:
            assert not ok or impl.supports(c)[0], impl.name
            continue
        if ok:
            sup, why = impl.supports(c)
            assert not sup and why, impl.name
    for impl in (TorchRope(), QknormQkFlashInferRope(), FlashInferRmsRope(), VLLMFusedQkNormRope()):
        assert impl.supports(qk) == (False, "rope cases only (norm + RoPE)")
    for impl in (QknormQkFlashInferRope(), FlashInferRmsRope(), VLLMFusedQkNormRope()):
        assert impl.needs_cuda
    assert not TorchEager().supports(c)[0]


def test_vllm_fused_supports():
    v = VLLMFusedQkNormRope()
    assert v.supports(Case("rope", "rope", 4, torch.bfloat16, 32, 8, 128))[0]
    assert not v.supports(Case("rope", "rope", 4, torch.bfloat16, 32, 16, 128, weight_offset=1.0))[0]
    assert not v.supports(Case("rope", "rope", 4, torch.float32, 32, 8, 128))[0]
    assert not v.supports(Case("rope", "rope", 4, torch.bfloat16, 4, 2, 80, rotary_dim=48))[0]


def test_runner_on_a_rope_case():
    rows = []
    r = Runner(Options(device="cpu", modes=("eager",)), BASE, rows.append, impls=static_impls())
    r.run_case(small(t=3, dtype=torch.bfloat16, d=128, r=64))
    st = {row["impl"]: row for row in rows}
    assert len(st) == len(static_impls())
    for name in ("qknorm", "torch_norm+rope"):
        assert st[name]["status"] == "ok" and float(st[name]["us"]) > 0, st[name]
        assert float(st[name]["rel_err"]) < 1e-2
        assert st[name]["rotary_dim"] == 64 and st[name]["op"] == "rope"
    others = [row for n, row in st.items() if n not in ("qknorm", "torch_norm+rope")]
    assert all(row["status"] == "skipped" and row["reason"] for row in others), \
        [(row["impl"], row["status"], row["reason"]) for row in others if row["status"] != "skipped"]
    assert not math.isnan(float(st["qknorm"]["gbps"]))
