"""Every adapter in peers/ builds here or is skipped with its own reason (the one the bench's
``skipped`` row gives: on a CPU, "needs a CUDA GPU; <installed or not>"); SGLang's adapters
call SGLang's functions with the right arguments (checked with a fake ``sglang.jit_kernel``
injected into ``sys.modules``); F.rms_norm's row names the kernel that ran."""
import sys
import types

import pytest
import torch

from qknorm.bench.cases import OPS, QUANT_OPS, ROPE_THETA, Case, build_inputs
from qknorm.bench.check import gate
from qknorm.bench.common import torch_norm
from qknorm.bench.peers import (Impl, SGLangJit, SGLangQkNormRope, TorchFRmsNorm, peer_status, rms_norm_path,
                                static_impls)
from qknorm.bench.runner import COLUMNS, Options, Runner, needs_cuda_reason
from qknorm.bench.timing import Baselines

BASE = Baselines("cpu", False, 10.0, None, None, 0, 0)
QK = Case("qwen3-8b", "qk", 3, torch.bfloat16, 4, 2, 128)
QK_FULL = Case("olmo2-7b", "qk_full", 3, torch.bfloat16, 2, 2, 128)
RMS = Case("qwen3-8b", "rms2d", 3, torch.bfloat16, hidden=512)
ADD = Case("llama3-70b", "add", 3, torch.bfloat16, hidden=512)
ROPE = Case("rope", "rope", 3, torch.bfloat16, 4, 2, 128, rotary_dim=64)
QUANT = tuple(Case("quant", op, 3, torch.bfloat16, hidden=512) for op in QUANT_OPS)
PROLOGUE = Case("prologue", "prologue", 5, torch.bfloat16, 4, 2, 128, rotary_dim=64)
ALL = (QK, QK_FULL, RMS, ADD, ROPE) + QUANT + (PROLOGUE,)


def _one_per_op():
    return [Case("t", "qk", 2, torch.float32, 4, 2, 64), Case("t", "qk_full", 2, torch.float32, 2, 2, 64),
            Case("t", "rms2d", 2, torch.float32, hidden=256), Case("t", "add", 2, torch.float32, hidden=256),
            Case("t", "rope", 2, torch.float32, 4, 2, 64, rotary_dim=32)] + \
        [Case("t", op, 2, torch.bfloat16, hidden=256) for op in QUANT_OPS] + \
        [Case("t", "prologue", 5, torch.bfloat16, 4, 2, 128, rotary_dim=64, cache_dtype=cd) for cd in
         (None, torch.float8_e4m3fn)]


# --------------------------------------------------------------------------- every adapter

def test_names_are_unique_and_stable():
    names = [i.name for i in static_impls()]
    assert len(names) == len(set(names))
    old = {"qknorm", "torch", "torch.compile", "torch_rms_norm", "torch_copy2d", "contiguous_copy", "torch_flat2d",
           "flashinfer", "flashinfer_cuda", "flashinfer_copy2d", "quack", "quack_flat", "liger", "vllm", "sgl_kernel",
           "torch_norm+rope", "qknorm_qk+flashinfer_rope", "flashinfer_rms+rope", "vllm_fused_qk_norm_rope"}
    assert old <= set(names)  # earlier CSVs stay comparable
    assert {"sglang_jit", "sglang_jit_qk_norm_rope", "sgl_kernel_qk_norm_rope"} <= set(names)


def _adapter_classes():
    """Every concrete adapter class defined in a module of ``qknorm.bench.peers``."""
    import importlib
    import inspect
    import pkgutil

    import qknorm.bench.peers as peers
    out = set()
    for m in pkgutil.iter_modules(peers.__path__):
        mod = importlib.import_module(f"{peers.__name__}.{m.name}")
        out |= {c for _, c in inspect.getmembers(mod, inspect.isclass)
                if issubclass(c, Impl) and c is not Impl and c.__module__ == mod.__name__
                and not c.__name__.startswith("_")}
    return out


def test_every_adapter_class_is_in_the_run():
    """Each adapter in peers/ is built by the parametrised test below (through static_impls);
    the qknorm variants are the same class as the pick."""
    missing = _adapter_classes() - {type(i) for i in static_impls()}
    assert not missing, sorted(c.__name__ for c in missing)


@pytest.mark.parametrize("impl", static_impls(), ids=lambda i: i.name)
def test_every_adapter_states_its_op_kinds_and_builds_or_skips_with_a_reason(impl):
    assert isinstance(impl, Impl) and impl.library
    assert set(impl.ops) <= set(OPS)
    for op in OPS:  # every kind it does not implement has a reason
        if op not in impl.ops:
            case = next(c for c in ALL if c.op == op)
            ok, why = impl.supports(case)
            assert not ok and why
    ok, why = impl.installed()
    assert ok or why.startswith("not installed")
    if impl.needs_cuda and not torch.cuda.is_available():
        # never built on a CPU run; whether it would load is still said, with a reason
        loaded, why = impl.available() if ok else (False, why)
        assert loaded or why
        said = needs_cuda_reason(impl)  # what the bench's skipped row says
        if impl.module:  # a GPU library
            assert said.startswith("needs a CUDA GPU; ") and (ok or why in said)
        else:  # runs on a CPU too, left out of CPU runs by choice: says why
            assert said.startswith("GPU runs only: ")
        pytest.skip(f"{impl.name}: {said}")
    loaded, why = impl.available()
    if not loaded:  # not installed on this GPU machine: skipped, with the reason
        assert why
        pytest.skip(f"{impl.name}: {why}")
    for case in _one_per_op():
        sup, why = impl.supports(case)
        if not sup:
            assert why
            continue
        inp = build_inputs(case)
        fn = impl.build(case, inp)
        if impl.family == "copy":  # not a norm: runs, is not checked
            assert len(fn()) == 2
            continue
        try:
            v = gate(case, inp, fn, norm_rounded=impl.norm_rounded)
        except Exception as e:  # noqa: BLE001
            if impl.name == "torch.compile":  # Inductor itself can fail on a peer's code; the bench records it
                pytest.skip(f"torch.compile failed on {case.op}: {type(e).__name__}: {e}"[:300])
            raise
        assert v.ok == (impl.family != "trap"), (impl.name, case.op, v.reason)


def test_cpu_runner_skips_every_absent_peer_with_its_reason():
    rows = []
    r = Runner(Options(device="cpu", modes=("eager",)), BASE, rows.append)
    for c in (QK, ROPE):
        r.run_case(c)
    assert set(rows[0]) == set(COLUMNS)
    by = {row["impl"]: row for row in rows if row["status"] == "skipped"}
    for name in ("sglang_jit", "sglang_jit_qk_norm_rope", "sgl_kernel", "flashinfer", "quack", "liger", "vllm"):
        assert by[name]["reason"].startswith("needs a CUDA GPU; "), by[name]
    st = peer_status()
    assert set(st) >= {"qknorm", "torch", "FlashInfer", "SGLang JIT kernels", "sgl_kernel", "Quack", "Liger-Kernel",
                       "vLLM"}
    assert st["torch"] == torch.__version__


# --------------------------------------------------------------------------- F.rms_norm: what ran

def test_f_rms_norm_row_records_the_kernel_that_ran():
    impl = TorchFRmsNorm()
    case = Case("t", "qk", 2, torch.float32, 4, 2, 64)
    inp = build_inputs(case)
    assert gate(case, inp, impl.build(case, inp)).ok
    assert impl.ran(case).startswith("ATen CPU kernel")
    # the profiler-based probe itself: on this build no torch._native override exists for CPU tensors
    x, w = torch.randn(3, 64), torch.ones(64)
    said = rms_norm_path(lambda: torch.nn.functional.rms_norm(x, (64,), w, 1e-6))
    assert said.startswith("ATen _fused_rms_norm kernel") or said.startswith("aten::rms_norm"), said


def test_f_rms_norm_probe_names_a_native_override(monkeypatch):
    """A ``_native::<id>`` op in the profile means torch._native's override ran."""
    from qknorm.bench.peers import pytorch

    class Node:
        node_id, dsl_name = "_fused_rms_norm_cutedsl_0", "cutedsl"

        def impl_fn(self):
            pass

    class Ev:
        def __init__(self, name):
            self.name = name

    class Prof:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def events(self):
            return [Ev("aten::rms_norm"), Ev("aten::_fused_rms_norm"), Ev("_native::_fused_rms_norm_cutedsl_0")]

    monkeypatch.setattr(torch.profiler, "profile", lambda **kw: Prof())
    monkeypatch.setattr(pytorch, "_override_nodes", lambda: ([Node()], ""))
    said = rms_norm_path(lambda: None)
    assert "torch._native cutedsl override" in said and "Quack" in said


# --------------------------------------------------------------------------- SGLang, with a fake module

class _Recorder:
    """Fake SGLang functions: record (name, args, kwargs) and do the documented work in place
    with the torch formula, so the gate can check the result."""

    def __init__(self):
        self.calls = []

    def module(self):
        rec = self

        def fused_inplace_qknorm(q, k, q_weight, k_weight, eps=1e-6, *, head_dim=0):
            rec.calls.append(("fused_inplace_qknorm", (q, k, q_weight, k_weight, eps), dict(head_dim=head_dim)))
            q.copy_(torch_norm(q, q_weight, eps))
            k.copy_(torch_norm(k, k_weight, eps))

        def fused_inplace_qknorm_across_heads(q, k, q_weight, k_weight, eps=1e-6):
            rec.calls.append(("fused_inplace_qknorm_across_heads", (q, k, q_weight, k_weight, eps), {}))
            q.copy_(torch_norm(q, q_weight, eps))
            k.copy_(torch_norm(k, k_weight, eps))

        def rmsnorm(input, weight, out=None, eps=1e-6):
            rec.calls.append(("rmsnorm", (input, weight), dict(out=out, eps=eps)))
            (input if out is None else out).copy_(torch_norm(input, weight, eps))

        def fused_add_rmsnorm(input, residual, weight, eps=1e-6, *, cast_x_before_out_mul=False):
            rec.calls.append(("fused_add_rmsnorm", (input, residual, weight, eps), {}))
            residual.copy_(input.float() + residual.float())
            input.copy_(torch_norm(residual.float(), weight, eps).to(input.dtype))

        return types.SimpleNamespace(fused_inplace_qknorm=fused_inplace_qknorm,
                                     fused_inplace_qknorm_across_heads=fused_inplace_qknorm_across_heads,
                                     rmsnorm=rmsnorm, fused_add_rmsnorm=fused_add_rmsnorm,
                                     is_supported_jit_fused_add_rmsnorm_hidden_size=lambda d: d % 16 == 0)

    def rope_module(self):
        rec = self

        def fused_qk_norm_rope(qkv, num_heads_q, num_heads_k, num_heads_v, head_dim, eps, q_weight, k_weight, base,
                               is_neox, position_ids, factor, low, high, attention_factor, rotary_dim=None):
            rec.calls.append(("fused_qk_norm_rope", (qkv,), dict(
                num_heads_q=num_heads_q, num_heads_k=num_heads_k, num_heads_v=num_heads_v, head_dim=head_dim,
                eps=eps, q_weight=q_weight, k_weight=k_weight, base=base, is_neox=is_neox, position_ids=position_ids,
                factor=factor, attention_factor=attention_factor, rotary_dim=rotary_dim)))
            from qknorm.bench.cases import rope_cache
            from qknorm.bench.peers import torch_rope
            t, d = qkv.shape[0], head_dim
            cs = rope_cache(rotary_dim, theta=base)
            q = qkv[:, :num_heads_q * d].view(t, num_heads_q, d)
            k = qkv[:, num_heads_q * d:(num_heads_q + num_heads_k) * d].view(t, num_heads_k, d)
            q.copy_(torch_rope(torch_norm(q, q_weight, eps), cs, position_ids.long(), rotary_dim, is_neox))
            k.copy_(torch_rope(torch_norm(k, k_weight, eps), cs, position_ids.long(), rotary_dim, is_neox))

        return types.SimpleNamespace(fused_qk_norm_rope=fused_qk_norm_rope)


@pytest.fixture
def fake_sglang(monkeypatch):
    rec = _Recorder()
    pkg, jit = types.ModuleType("sglang"), types.ModuleType("sglang.jit_kernel")
    pkg.__path__, jit.__path__ = [], []
    norm = types.ModuleType("sglang.jit_kernel.norm")
    norm.__dict__.update(vars(rec.module()))
    rope = types.ModuleType("sglang.jit_kernel.fused_qknorm_rope")
    rope.__dict__.update(vars(rec.rope_module()))
    for name, m in (("sglang", pkg), ("sglang.jit_kernel", jit), ("sglang.jit_kernel.norm", norm),
                    ("sglang.jit_kernel.fused_qknorm_rope", rope)):
        monkeypatch.setitem(sys.modules, name, m)
    return rec


def _same_view(a, b):
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def test_sglang_jit_qk_calls_fused_inplace_qknorm_on_the_packed_views(fake_sglang):
    impl = SGLangJit()
    assert impl.available() == (True, "")
    assert impl.supports(QK) == (True, "")
    inp = build_inputs(QK)
    v = gate(QK, inp, impl.build(QK, inp))
    assert v.ok, v.reason
    (name, args, kw), = fake_sglang.calls
    assert name == "fused_inplace_qknorm" and kw == {"head_dim": 128}
    q, k, qw, kw_, eps = args
    assert _same_view(q, inp.q) and _same_view(k, inp.k)  # in place on the strided [T, H, D] views
    assert q.shape == (3, 4, 128) and q.stride() == (8 * 128, 128, 1) and q.data_ptr() == inp.qkv.data_ptr()
    assert k.data_ptr() == inp.qkv.data_ptr() + 4 * 128 * 2
    assert qw is inp.qw and kw_ is inp.kw and eps == QK.eps


def test_sglang_jit_other_ops_and_their_arguments(fake_sglang):
    impl = SGLangJit()
    impl.available()
    for case, fn in ((QK_FULL, "fused_inplace_qknorm_across_heads"), (RMS, "rmsnorm"), (ADD, "fused_add_rmsnorm")):
        fake_sglang.calls.clear()
        inp = build_inputs(case)
        v = gate(case, inp, impl.build(case, inp))
        assert v.ok, (case.op, v.reason)
        (name, args, kw), = fake_sglang.calls
        assert name == fn
        if case.op == "qk_full":
            assert _same_view(args[0], inp.q) and _same_view(args[1], inp.k) and args[0].dim() == 2
        elif case.op == "rms2d":
            assert args[0] is inp.x and args[1] is inp.w and kw == {"out": inp.out, "eps": case.eps}
        else:
            assert args[0] is inp.x and args[1] is inp.residual and args[2] is inp.w and args[3] == case.eps


def test_sglang_jit_says_why_not():
    impl = SGLangJit()
    impl._mod = types.SimpleNamespace()  # a module without the optional functions
    assert impl.supports(ROPE)[0] is False and "fused op" in impl.supports(ROPE)[1]
    gemma = Case("g", "qk", 2, torch.bfloat16, 4, 2, 128, weight_offset=1.0)
    assert "weight_offset" in impl.supports(gemma)[1]
    assert "head_dim 96" in impl.supports(Case("g", "qk", 2, torch.bfloat16, 4, 2, 96))[1]
    assert "no fused_inplace_qknorm_across_heads" in impl.supports(QK_FULL)[1]
    assert "hidden 2000" in impl.supports(Case("g", "rms2d", 2, torch.bfloat16, hidden=2000))[1]
    assert impl.supports(Case("g", "rms2d", 2, torch.bfloat16, hidden=5376))[0]  # 21 x 256
    assert "hidden 16384" in impl.supports(Case("g", "add", 2, torch.bfloat16, hidden=16384))[1]


def test_sglang_jit_qk_norm_rope_arguments(fake_sglang):
    impl = SGLangQkNormRope(jit=True)
    assert impl.available() == (True, "")
    assert impl.supports(ROPE) == (True, "")
    inp = build_inputs(ROPE)
    v = gate(ROPE, inp, impl.build(ROPE, inp))
    assert v.ok, v.reason
    (name, args, kw), = fake_sglang.calls
    assert name == "fused_qk_norm_rope" and args[0] is inp.qkv and inp.qkv.is_contiguous()
    assert kw["position_ids"].dtype == torch.int32 and torch.equal(kw["position_ids"].long(), inp.positions)
    assert (kw["num_heads_q"], kw["num_heads_k"], kw["num_heads_v"], kw["head_dim"]) == (4, 2, 2, 128)
    assert kw["rotary_dim"] == 64 and kw["is_neox"] is True and kw["base"] == ROPE_THETA
    assert kw["factor"] == 1.0 and kw["attention_factor"] == 1.0  # plain RoPE, no YaRN
    assert kw["q_weight"] is inp.qw and kw["k_weight"] is inp.kw and kw["eps"] == ROPE.eps
    for bad, why in ((Case("r", "rope", 2, torch.float16, 4, 2, 128), "bf16 only"),
                     (Case("r", "rope", 2, torch.bfloat16, 4, 2, 96), "head_dim 96"),
                     (Case("r", "rope", 2, torch.bfloat16, 4, 2, 128, weight_offset=1.0), "weight_offset"),
                     (Case("r", "rope", 2, torch.bfloat16, 4, 2, 128, rotary_dim=96), "power-of-two")):
        ok, said = impl.supports(bad)
        assert not ok and why in said, (bad, said)


def test_sglang_version_comes_from_the_bundle_file(tmp_path, monkeypatch):
    (tmp_path / "sglang").mkdir()
    (tmp_path / "sglang" / "__init__.py").write_text("")
    (tmp_path / "sglang" / "VERSION").write_text("0.5.10.post1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        monkeypatch.delitem(sys.modules, m)
    from importlib.metadata import PackageNotFoundError, version
    try:
        version("sglang")
        pytest.skip("a real sglang distribution is installed here")
    except PackageNotFoundError:
        pass
    assert SGLangJit().version() == "0.5.10.post1"
    assert SGLangJit().installed() == (True, "")
    assert peer_status([SGLangJit()]) == {"SGLang JIT kernels": "0.5.10.post1"}


def test_runner_times_the_fake_sglang_rows_on_cpu(fake_sglang, monkeypatch):
    """The runner checks then times the adapter like any other (needs_cuda lifted for the fake)."""
    impl = SGLangJit()
    monkeypatch.setattr(impl, "needs_cuda", False)
    rows = []
    r = Runner(Options(device="cpu", modes=("eager",)), BASE, rows.append, impls=[impl])
    r.run_case(QK)
    (row,) = rows
    assert row["status"] == "ok" and row["impl"] == "sglang_jit" and "fused_inplace_qknorm" in row["notes"]
