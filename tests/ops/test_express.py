"""The express call (``ops/_express.py``, ``_native/launchcall.c``: ``call``), without a GPU.

``_express.set_test_launch`` gives CPU plans stand-in launch records and makes the compiled call
launch them through the Triton interpreter, so everything the C call decides — the key, the
overlap checks, new outputs, version bumps, the result, NotImplemented — runs here as it does
on a GPU. Each case: a first call through the Python fast call (which registers the entry), then
calls on fresh tensors that must run in C and give the Python fast call's bits.
"""
import pytest
import torch

import qknorm
from qknorm import dispatch, native
from qknorm.ops import _express, _plan
from qknorm.ops import fused_add as add_op
from qknorm.ops import qk_norm as qk_op
from qknorm.ops import rms_norm as rms_op
from helpers import assert_matches, packed_qkv, randn, ref_add_norm, ref_norm

pytest.importorskip("triton")
DT = torch.float32


@pytest.fixture
def express(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU stand-in for the CUDA express call")
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    _plan.clear_caches()
    if not _express.set_test_launch(True):
        pytest.skip(f"compiled launch module unavailable: {native.reason(launcher=True)}")
    try:
        with qknorm.use_backend("triton"):
            yield _express.hits
    finally:
        _express.set_test_launch(False)
        _plan.clear_caches()


def _rms_cases():
    def new(x, w):
        return (x, w), {}

    def out(x, w):
        return (x, w), {"out": torch.full_like(x, float("nan"))}

    def in_place(x, w):
        return (x, w), {"out": x}

    def no_weight(x, w):
        return (x, None), {"out": torch.full_like(x, float("nan"))}

    def strided_out(x, w):
        return (x, w), {"out": torch.full((x.shape[0], 2 * x.shape[1]), float("nan"))[:, ::2]}

    def new_from_transposed(x, w):  # dense but not contiguous: the new output is contiguous all the same
        return (x.t().contiguous().t(), w), {}
    return [new, out, in_place, no_weight, strided_out, new_from_transposed]


@pytest.mark.parametrize("case", _rms_cases(), ids=lambda f: f.__name__)
def test_rms_norm_runs_in_c_with_the_python_calls_bits(express, case):
    w = randn((96,), DT, "cpu")
    for i in range(4):
        x = randn((7, 96), DT, "cpu")
        a, kw = case(x, w)
        want = rms_op.call(x.clone(), a[1], 1e-6, 0.5 if a[1] is not None else 0.0,
                           torch.empty_like(x) if "out" in kw else None)
        ref = ref_norm(x, a[1], 1e-6, 0.5 if a[1] is not None else 0.0)
        express.clear()
        y = qknorm.rms_norm(*a, 1e-6, weight_offset=0.5 if a[1] is not None else 0.0, **kw)
        assert i == 0 or express == ["rms_norm_kernel"]  # (the first call may already: `want` registered)
        if "out" in kw:
            assert y is kw["out"]
        assert torch.equal(y, want) and y.shape == x.shape
        assert "out" in kw or y.is_contiguous()
        assert_matches(y, ref, DT)


@pytest.mark.parametrize("weight", [True, False])
def test_fused_add_runs_in_c(express, weight):
    w = randn((64,), DT, "cpu") if weight else None
    for i in range(4):
        x, r = randn((5, 64), DT, "cpu"), randn((5, 64), DT, "cpu")
        (yref, sref), want = ref_add_norm(x, r, w), add_op.call(x.clone(), r.clone(), w, 1e-6)
        express.clear()
        got = qknorm.fused_add_rms_norm(x, r, w, 1e-6)
        assert i == 0 or express == ["fused_add_rms_norm_kernel"]
        assert got[0] is x and got[1] is r and type(got) is tuple
        assert torch.equal(x, want[0]) and torch.equal(r, want[1])
        assert_matches(x, yref, DT)
        assert_matches(r, sref, DT)


@pytest.mark.parametrize("outputs", ["in_place", "new", "given", "q_only"])
@pytest.mark.parametrize("weights", [True, False])
def test_qk_runs_in_c(express, outputs, weights):
    qw, kw = (randn((32,), DT, "cpu"), randn((32,), DT, "cpu")) if weights else (None, None)
    for i in range(4):
        _, q, k, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
        q0, k0 = q.clone(), k.clone()
        kwargs = {"in_place": {"q_out": q, "k_out": k}, "new": {},
                  "given": {"q_out": torch.full_like(q0, float("nan")), "k_out": torch.full_like(k0, float("nan"))},
                  "q_only": {"q_out": q}}[outputs]
        want = qk_op.call(q0.clone(), k0.clone(), qw, kw, 1e-6, 0.0, None, None)
        express.clear()
        qo, ko = qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, **kwargs)
        assert i == 0 or express == ["qk_rms_norm_kernel"]
        for name in ("q_out", "k_out"):
            if name in kwargs:
                assert (qo, ko)[name == "k_out"] is kwargs[name]
        assert torch.equal(qo, want[0]) and torch.equal(ko, want[1])
        assert_matches(qo, ref_norm(q0, qw), DT)
        assert_matches(ko, ref_norm(k0, kw), DT)


def test_each_alignment_of_the_pointers_has_its_own_record(express):
    w = randn((64,), DT, "cpu")
    for i in range(6):  # x 16-byte aligned, then one fp32 element off: one key, two records
        base = randn((4, 65), DT, "cpu")
        x = base[:, i % 2:i % 2 + 64]
        express.clear()
        y = qknorm.rms_norm(x, w)
        assert i < 2 or express == ["rms_norm_kernel"]
        assert_matches(y, ref_norm(x, w), DT)


def test_a_later_call_whose_views_overlap_is_refused_before_anything_is_written(express):
    w = randn((64,), DT, "cpu")
    for _ in range(3):
        x = randn((6, 64), DT, "cpu")
        qknorm.rms_norm(x, w, out=torch.empty_like(x))
    assert express  # in C by now
    base = randn((7, 64), DT, "cpu")
    x, out = base[:6], base[1:]  # the same key as above, out one row after x
    before = base.clone()
    express.clear()
    with pytest.raises(ValueError, match="out"):
        qknorm.rms_norm(x, w, out=out)
    assert express == [] and torch.equal(base, before)
    # QK in place on a buffer where K now starts inside Q (same shapes and strides as the entry's)
    for _ in range(3):
        _, q, k, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
        qknorm.qk_rms_norm(q, k, None, None, q_out=q, k_out=k)
    qkv, q, _, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
    k = qkv[:, 32:32 + 2 * 32].view(3, 2, 32)  # inside Q's heads
    before = qkv.clone()
    express.clear()
    with pytest.raises(ValueError):
        qknorm.qk_rms_norm(q, k, None, None, q_out=q, k_out=k)
    assert express == [] and torch.equal(qkv, before)


def test_a_weight_inside_the_output_is_read_from_its_values_on_entry(express):
    for _ in range(3):
        x, w = randn((4, 64), DT, "cpu"), randn((64,), DT, "cpu")
        qknorm.rms_norm(x, w, out=torch.empty_like(x))
    x = randn((4, 64), DT, "cpu")
    out = torch.empty(4, 64)
    w = out[2]  # the entry's weight was apart from the output; this one lies inside it
    w.copy_(randn((64,), DT, "cpu"))
    ref = ref_norm(x, w.clone())
    express.clear()
    qknorm.rms_norm(x, w, out=out)
    assert express == []
    assert_matches(out, ref, DT)


def test_grad_mode_with_a_tensor_that_requires_grad_takes_autograd(express):
    w = torch.nn.Parameter(randn((64,), DT, "cpu"))
    with torch.no_grad():  # a model's weights under no_grad: the express call may take them
        for i in range(3):
            express.clear()
            qknorm.rms_norm(randn((4, 64), DT, "cpu"), w)
        assert express == ["rms_norm_kernel"]
    x = randn((4, 64), DT, "cpu")
    express.clear()
    y = qknorm.rms_norm(x, w)
    assert express == [] and y.requires_grad
    y.sum().backward()
    assert w.grad is not None


def test_written_tensors_move_their_autograd_version(express):
    w = randn((64,), DT, "cpu")
    for _ in range(3):
        x = randn((4, 64), DT, "cpu")
        qknorm.rms_norm(x, w, out=x)
    a = torch.ones(64, requires_grad=True)
    x = randn((4, 64), DT, "cpu")
    y = (x * a).sum()  # saves x for the backward
    v = x._version
    express.clear()
    qknorm.rms_norm(x, w, out=x)
    assert express == ["rms_norm_kernel"] and x._version > v
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_backend_change_reset_and_native_off_forget_the_entries(express):
    w = randn((64,), DT, "cpu")

    def warm():
        for _ in range(3):
            qknorm.rms_norm(randn((4, 64), DT, "cpu"), w)
        assert _express.TABLE
    warm()
    with qknorm.use_backend("torch"):
        assert not _express.TABLE
        express.clear()
        qknorm.rms_norm(randn((4, 64), DT, "cpu"), w)
        assert express == []
    warm()
    dispatch.reset()
    assert not _express.TABLE
    warm()
    native.set_enabled(False)
    try:
        assert native.call(_express.RMS_NORM, randn((4, 64), DT, "cpu"), w, None, 1e-6, 0.0, None) \
            is NotImplemented
        express.clear()
        qknorm.rms_norm(randn((4, 64), DT, "cpu"), w)
        assert express == []
    finally:
        native.set_enabled(True)


def test_arguments_the_entry_does_not_cover_take_the_python_path(express):
    w = randn((64,), DT, "cpu")
    for _ in range(3):
        qknorm.rms_norm(randn((4, 64), DT, "cpu"), w, 1e-6)
    x = randn((4, 64), DT, "cpu")
    express.clear()
    for call in (lambda: qknorm.rms_norm(x, w, 1e-5),  # another eps: another key
                 lambda: qknorm.rms_norm(x, w, 1e-6, config=qknorm.KernelConfig(rows=1, block_d=64, num_warps=1)),
                 lambda: qknorm.rms_norm(x[:, :32], w[:32], 1e-6),
                 lambda: qknorm.rms_norm(x.double(), w, 1e-6)):
        try:
            call()
        except (TypeError, ValueError):
            pass
    assert express == []
    with pytest.raises(TypeError, match="eps"):
        qknorm.rms_norm(x, w, "1e-6")
    m = native.launch_module()
    assert m.key(_express.RMS_NORM, x, w, None, 1e-6, 0.0, None) != m.key(_express.RMS_NORM, x, w, x, 1e-6, 0.0, None)
    assert m.key(_express.RMS_NORM, x, w, None, 1e-6, 0.0, object()) is None
    assert m.key(_express.RMS_NORM, x, w, None, 1, 0.0, None) != m.key(_express.RMS_NORM, x, w, None, 1.0, 0.0, None)


@pytest.mark.parametrize("mode", ["per_token", "per_group", "group_col_ue8m0", "static", "given_outputs"])
@pytest.mark.parametrize("fused", [False, True])
def test_quantised_norms_run_in_c(express, mode, fused):
    from qknorm.ops import rms_norm_quant as quant_op
    w = randn((128,), DT, "cpu")
    kw = {"out_dtype": torch.int8}
    if mode == "per_group":
        kw["group_size"] = 32
    if mode == "group_col_ue8m0":
        kw.update(group_size=64, column_major_scales=True, scale_ue8m0=True)
    for i in range(4):
        x, r = randn((5, 128), DT, "cpu"), randn((5, 128), DT, "cpu")
        args = dict(kw)
        if mode == "static":
            args["scale"] = torch.tensor([0.03])
        if mode == "given_outputs":
            args.update(out=torch.empty(5, 128, dtype=torch.int8), scales_out=torch.full((5, 1), float("nan")))
        rc = r.clone()
        want = quant_op.call(x.clone(), rc if fused else None, w, 1e-6,
                             **{k: (v.clone() if torch.is_tensor(v) else v) for k, v in args.items()})
        express.clear()
        if fused:
            y, s = qknorm.fused_add_rms_norm_quant(x, r, w, 1e-6, **args)
        else:
            y, s = qknorm.rms_norm_quant(x, w, 1e-6, **args)
        assert i == 0 or express == ["rms_norm_quant_kernel"] or express == ["fused_add_rms_norm_quant_kernel"], express
        assert torch.equal(y, want[0]) and torch.equal(s, want[1]) and s.stride() == want[1].stride()
        assert not fused or torch.equal(r, rc)  # the residual written as the Python call wrote it
        if "out" in args:
            assert y is args["out"] and s is args["scales_out"]
        if mode == "static":
            assert s is args["scale"]


@pytest.mark.parametrize("outputs", ["in_place", "new", "given"])
@pytest.mark.parametrize("is_neox,rotary_dim", [(True, None), (False, 16)])
def test_qk_rope_runs_in_c(express, outputs, is_neox, rotary_dim):
    from qknorm.ops import qk_norm_rope as rope_op
    qw, kw = randn((32,), DT, "cpu"), randn((32,), DT, "cpu")
    cs = randn((64, rotary_dim or 32), DT, "cpu")
    for i in range(4):
        _, q, k, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
        pos = torch.randint(0, 64, (3,))
        q0, k0 = q.clone(), k.clone()
        kwargs = {"in_place": {"q_out": q, "k_out": k}, "new": {},
                  "given": {"q_out": torch.full_like(q0, float("nan")), "k_out": torch.full_like(k0, float("nan"))}
                  }[outputs]
        want = rope_op.call(q0.clone(), k0.clone(), qw, kw, cs, pos, 1e-6, is_neox, rotary_dim, 0.0, None, None)
        express.clear()
        qo, ko = qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-6, is_neox=is_neox, rotary_dim=rotary_dim,
                                         **kwargs)
        assert i == 0 or len(express) == 1, express
        assert torch.equal(qo, want[0]) and torch.equal(ko, want[1])


def test_zero_tensors_and_odd_strides_of_size_one_dims(express):
    """A weight without memory (torch._efficientzerotensor) is refused before any launch, on every path;
    new outputs are contiguous as the Python call makes them, whatever the input's size-1 strides."""
    w = randn((64,), DT, "cpu")
    for _ in range(3):
        qknorm.rms_norm(randn((4, 64), DT, "cpu"), w)
    express.clear()
    with pytest.raises(ValueError, match="efficient zero tensor"):
        qknorm.rms_norm(randn((4, 64), DT, "cpu"), torch._efficientzerotensor(64))
    assert express == []
    for shape, make in (((1, 64), lambda: torch.randn(64, 1).t()), ((1, 4, 64), lambda: torch.randn(4, 1, 64)
                                                                   .transpose(0, 1))):
        for i in range(3):
            x = make()
            y = qknorm.rms_norm(x, w)
            assert y.shape == shape and y.stride() == rms_op.call(x, w).stride() and y.is_contiguous()


def test_cpu_positions_out_of_range_raise_in_test_mode_too(express):
    qw, kw = randn((32,), DT, "cpu"), randn((32,), DT, "cpu")
    cs = randn((16, 32), DT, "cpu")
    for _ in range(3):
        _, q, k, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
        qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, torch.tensor([0, 5, 15]), q_out=q, k_out=k)
    qkv, q, k, _ = packed_qkv(3, 4, 2, 32, DT, "cpu")
    before = qkv.clone()
    with pytest.raises(ValueError, match="positions"):
        qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, torch.tensor([0, 99, 5]), q_out=q, k_out=k)
    assert torch.equal(qkv, before)


def test_another_fp8_cast_setting_takes_the_python_path(express, monkeypatch):
    from qknorm.ops import rms_norm_quant as quant_op
    w = randn((128,), DT, "cpu")
    for _ in range(3):
        qknorm.rms_norm_quant(randn((4, 128), DT, "cpu"), w, out_dtype=torch.int8)
    express.clear()
    qknorm.rms_norm_quant(randn((4, 128), DT, "cpu"), w, out_dtype=torch.int8)
    assert express
    monkeypatch.setattr(quant_op, "FP8_CAST", "bits")
    express.clear()
    qknorm.rms_norm_quant(randn((4, 128), DT, "cpu"), w, out_dtype=torch.int8)
    assert express == [] and not _express.errors


def test_an_entry_the_c_call_keeps_declining_stops_being_registered(express, monkeypatch):
    """Launch hooks active, or anything else that makes every C call decline: the Python fast call tries
    to register its entry at most ``_express.TRIES`` times per plan, then not at all."""
    monkeypatch.setattr(_express, "TRIES", 3)
    native.launch_module().set_test_launch(lambda record, values, tensors: False)  # every C launch declines
    tried = []
    real = _express.register
    monkeypatch.setattr(_express, "register", lambda *a, **k: (tried.append(1), real(*a, **k)))
    w = randn((64,), DT, "cpu")
    for _ in range(8):
        x = randn((4, 64), DT, "cpu")
        assert_matches(qknorm.rms_norm(x, w), ref_norm(x, w), DT)
    assert len(tried) == 3
