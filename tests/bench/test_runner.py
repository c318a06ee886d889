"""Runner and correctness gate: a wrong implementation is reported and never timed, a
crashing or missing one is recorded and the run goes on, rows reach the sink at once."""
import math

import pytest
import torch

from qknorm.bench.cases import Case, build_inputs, expected, preset_cases, quick_cases
from qknorm.bench.check import gate
from qknorm.bench.peers import Impl, Qknorm, TorchEager, matches
from qknorm.bench.runner import COLUMNS, Options, Runner
from qknorm.bench.timing import Baselines

BASE = Baselines("cpu", False, 10.0, None, None, 0, 0)
QK = Case("t", "qk", 3, torch.float32, 4, 2, 16)


class Identity(Impl):
    """Returns the in-place outputs unchanged: an unwritten output."""

    name = "identity"

    def build(self, case, inp):
        return lambda: (inp.q, inp.k)


class Boom(Impl):
    name = "boom"

    def build(self, case, inp):
        def call():
            raise RuntimeError("kernel exploded")
        return call


class Missing(Impl):
    name = "missing"

    def available(self):
        return False, "import nothing failed"


class WritesV(Impl):
    name = "writes_v"

    def build(self, case, inp):
        good = TorchEager().build(case, inp)

        def call():
            out = good()
            inp.v.add_(1.0)
            return out
        return call


def _runner(impls, **kw):
    rows = []
    r = Runner(Options(device="cpu", modes=("eager",), **kw), BASE, rows.append, impls=impls)
    return r, rows


def test_gate_accepts_reference_quality_and_rejects_unwritten():
    inp = build_inputs(QK)
    assert gate(QK, inp, TorchEager().build(QK, inp)).ok
    inp = build_inputs(QK)
    v = gate(QK, inp, Identity().build(QK, inp))
    assert not v.ok and "rel L2" in v.reason


def test_gate_rejects_writes_outside_q_and_k():
    inp = build_inputs(QK)
    v = gate(QK, inp, WritesV().build(QK, inp))
    assert not v.ok and "V slice" in v.reason


def test_gate_rejects_nan_in_poisoned_out():
    c = Case("t", "rms2d", 2, torch.float32, hidden=32)
    inp = build_inputs(c)
    v = gate(c, inp, lambda: (inp.out,))  # never writes the NaN-poisoned out
    assert not v.ok and math.isinf(v.error)


def test_runner_records_every_failure_kind_and_goes_on():
    r, rows = _runner([Missing(), Boom(), Identity(), TorchEager(), Qknorm()])
    r.run_case(QK)
    st = {row["impl"]: row for row in rows}
    assert st["missing"]["status"] == "skipped" and "import nothing" in st["missing"]["reason"]
    assert st["boom"]["status"] == "error" and "kernel exploded" in st["boom"]["reason"]
    assert st["identity"]["status"] == "wrong" and st["identity"]["us"] == ""
    for name in ("torch", "qknorm"):
        assert st[name]["status"] == "ok" and float(st[name]["us"]) > 0
        assert float(st[name]["rel_err"]) < 1e-5
    assert set(rows[0]) == set(COLUMNS)


def test_runner_skips_gpu_only_peers_on_cpu():
    from qknorm.bench.peers import static_impls
    r, rows = _runner(static_impls(), include=("flashinfer", "quack", "liger", "torch.compile"))
    r.run_case(QK)
    assert len(rows) == 4 and all(row["status"] == "skipped" for row in rows)
    for row in rows:  # a GPU library: whether it is installed; torch.compile (runs on a CPU): why it is left out
        assert row["reason"].startswith("GPU runs only: Inductor's compile time" if row["impl"] == "torch.compile"
                                        else "needs a CUDA GPU; "), row


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_cpu_rows_name_the_path_that_ran(backend):
    """On a CPU the PyTorch path runs (no config), or with the Triton backend the interpreter runs the
    dispatcher's pick: the row names that config and its reason, not the PyTorch path."""
    import qknorm
    from qknorm.dispatch import choose_config

    if backend == "triton" and not qknorm.backend.interpreter_on():
        pytest.skip("QKNORM_BACKEND=triton on the CPU needs TRITON_INTERPRET=1 (a GPU machine runs the suite without)")
    with qknorm.use_backend(backend):
        r, rows = _runner([Qknorm()])
        r.run_case(QK)
    (row,) = rows
    assert row["status"] == "ok", row
    if backend == "auto":
        assert (row["config"], row["config_reason"]) == ("", "CPU: PyTorch path")
    else:
        cfg, why = choose_config(QK.qknorm_op, QK.dtype, QK.width, QK.n_rows, "cpu")
        assert (row["config"], row["config_reason"]) == (cfg.name, why)


def test_rows_reach_the_sink_before_an_interrupt():
    class Interrupt(Impl):
        name = "interrupt"

        def build(self, case, inp):
            raise KeyboardInterrupt

    r, rows = _runner([TorchEager(), Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        r.run_case(QK)
    assert [row["impl"] for row in rows] == ["torch"]


def test_impl_patterns():
    assert matches("qknorm[r1.b128.w4]", ["qknorm[*]"])
    assert not matches("qknorm", ["qknorm[*]"])
    assert matches("flashinfer_cuda", ["flashinfer*"])
    assert matches("anything", [])


@pytest.mark.parametrize("op", ["qk", "qk_full", "rms2d", "add"])
def test_expected_matches_torch_formula(op):
    c = next(c for c in quick_cases() if c.op == op)
    c = Case(c.preset, c.op, 2, torch.float32, c.hq, c.hkv, c.head_dim, c.hidden, c.weight_offset)
    inp = build_inputs(c)
    ref = expected(c, inp)
    got = TorchEager().build(c, inp.clone())()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b, rtol=1e-5, atol=1e-5)


def test_presets_cover_the_issue_grid():
    seed = preset_cases("seed")
    assert {c.tokens for c in seed} == {1, 8, 64, 256, 1024, 4096}
    assert {c.head_dim for c in seed if c.op == "qk"} == {16, 32, 64, 128, 256, 512, 1024}
    assert {c.hidden for c in seed if c.op == "rms2d"} == {256, 1024, 4096, 8192}
    q = preset_cases("qwen3-8b")
    assert max(c.tokens for c in q) == 16384 and {c.op for c in q} == {"qk", "rms2d", "add"}
    assert {c.op for c in preset_cases("olmo2-7b")} == {"qk_full", "rms2d", "add"}
    assert "qk" not in {c.op for c in preset_cases("llama3-70b")}
    grid = preset_cases("norm2d")
    assert {c.hidden for c in grid} == {256, 1024, 2048, 4096, 5120, 5376, 7168, 8192}
    assert {c.tokens for c in grid} == {1, 16, 128, 512, 1024, 2048, 4096, 16384}
    assert {c.op for c in grid} == {"rms2d", "add"} and len(grid) == 8 * 8 * 2
    assert {c.op for c in quick_cases(["norm2d"])} == {"rms2d", "add"}
    with pytest.raises(ValueError, match="unknown preset"):
        preset_cases("nope")


def test_ideal_bytes():
    c = Case("t", "qk", 4, torch.bfloat16, 32, 8, 128)
    assert c.ideal_bytes == 2 * 4 * 40 * 128 * 2 + 2 * 128 * 2
    a = Case("t", "add", 4, torch.float32, hidden=64)
    assert a.ideal_bytes == 4 * 4 * 64 * 4 + 64 * 4


def test_repeated_identical_errors_disable_an_implementation():
    from qknorm.bench.runner import MAX_SAME_ERRORS
    r, rows = _runner([Boom(), TorchEager()])
    for t in range(1, MAX_SAME_ERRORS + 3):
        r.run_case(Case("t", "qk", t, torch.float32, 2, 1, 8))
    boom = [row for row in rows if row["impl"] == "boom"]
    assert [row["status"] for row in boom] == ["error"] * MAX_SAME_ERRORS + ["skipped"] * 2
    assert "disabled after" in boom[-1]["reason"] and "kernel exploded" in boom[-1]["reason"]
    assert all(row["status"] == "ok" for row in rows if row["impl"] == "torch")


@pytest.mark.parametrize("op", ["qk", "qk_full"])
def test_a_copy_baseline_that_copies_nothing_is_not_timed(op):
    """At T=1 the Q and K views of the packed buffer are already contiguous: `.contiguous()`
    is a no-op, so `contiguous_copy` is skipped with that reason instead of timing nothing;
    from T=2 on it copies and is timed. The copy-then-2D-norm peers say there was no copy."""
    from qknorm.bench.peers import ContiguousCopy, TorchCopy2D
    hkv = 4 if op == "qk_full" else 2
    one, two = Case("t", op, 1, torch.float32, 4, hkv, 16), Case("t", op, 2, torch.float32, 4, hkv, 16)
    r, rows = _runner([ContiguousCopy(), TorchCopy2D()])
    r.run_case(one)
    r.run_case(two)
    copy = [row for row in rows if row["impl"] == "contiguous_copy"]
    assert [(row["tokens"], row["status"]) for row in copy] == [(1, "skipped"), (2, "ok")]
    assert "no-op" in copy[0]["reason"] and "already contiguous" in copy[0]["reason"]
    c2d = {row["tokens"]: row for row in rows if row["impl"] == "torch_copy2d"}
    assert "no copy" in c2d[1]["notes"] and "copies Q and K" in c2d[2]["notes"]


def test_gpu_eager_rows_are_timed_together(monkeypatch):
    """On a GPU the eager timings of a case's implementations are taken interleaved, after every
    implementation passed its check; one that raises there gets its own error row."""
    import qknorm.bench.runner as runner_mod
    seen = []

    def rounds(fn_sets, cuda, scopes=None, **kw):
        seen.append([len(f) for f in fn_sets])
        raise RuntimeError("interleaved failed")

    def alone(fns, cuda, **kw):
        timing[0] = True
        for f in fns:
            f()
        return 1.5

    timing = [False]

    class Late(Impl):  # passes the check, raises when timed
        name = "late"

        def build(self, case, inp):
            good = TorchEager().build(case, inp)

            def call():
                if timing[0]:
                    raise RuntimeError("late failure")
                return good()
            return call

    monkeypatch.setattr(runner_mod, "time_eager_rounds", rounds)
    monkeypatch.setattr(runner_mod, "time_eager", alone)
    r, rows = _runner([TorchEager(), Late(), Identity()])
    r.cuda = True
    monkeypatch.setattr(r, "_sync_after_error", lambda: None)
    r.run_case(QK)
    assert seen == [[1, 1]], "torch and late together (identity failed its check)"
    st = {row["impl"]: row for row in rows}
    assert st["identity"]["status"] == "wrong"
    assert st["torch"]["status"] == "ok" and st["torch"]["us"] == "1.500" and st["torch"]["mode"] == "eager"
    assert st["late"]["status"] == "error" and "late failure" in st["late"]["reason"]
