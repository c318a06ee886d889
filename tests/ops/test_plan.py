"""The shared plan mechanism (``ops/_plan.py``) and the ops' fast call, without a GPU.

The fast call normally takes CUDA tensors only; ``_plan.FAST_ON_CPU`` lets it take CPU
tensors, whose kernels then run in the Triton interpreter through the launcher's plain
path: results, plan caching, the argument packing by name, and errors still raised by the
general call with nothing written.
"""
import numpy as np
import pytest
import torch

import qknorm
from qknorm import launch
from qknorm.ops import PLANS, _plan
from qknorm.ops import rms_norm as rms_op
from helpers import assert_matches, packed_qkv, ref_norm, ref_add_norm, randn

triton = pytest.importorskip("triton")


@pytest.fixture
def fast_ops(monkeypatch):
    """``qknorm`` with the fast call taking CPU tensors (interpreted kernels)."""
    if torch.cuda.is_available():
        pytest.skip("CPU stand-in for the CUDA fast path")
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    with qknorm.use_backend("triton"):
        yield qknorm


@pytest.fixture
def on_interpreter():
    yield


def test_fast_path_results(fast_ops, on_interpreter):
    dt = torch.float32
    x = randn((5, 3, 64), dt, "cpu")
    w = randn((64,), dt, "cpu")
    y = fast_ops.rms_norm(x, w, 1e-6)
    assert_matches(y, ref_norm(x, w), dt)
    n_plans = len(PLANS)
    y2 = fast_ops.rms_norm(x, w, 1e-6)
    assert len(PLANS) == n_plans, "second call reuses the plan"
    assert torch.equal(y, y2)
    out = torch.full_like(x, float("nan"))
    fast_ops.rms_norm(x, w, 1e-6, out=out, weight_offset=1.0)
    assert_matches(out, ref_norm(x, w, offset=1.0), dt)
    xi = x.clone()
    fast_ops.rms_norm(xi, None, 1e-5, out=xi)
    assert_matches(xi, ref_norm(x, None, 1e-5), dt)
    # fused add
    xa, r = randn((4, 64), dt, "cpu"), randn((4, 64), dt, "cpu")
    yref, sref = ref_add_norm(xa, r, w)
    fast_ops.fused_add_rms_norm(xa, r, w, 1e-6)
    assert_matches(xa, yref, dt)
    assert_matches(r, sref, dt)


def test_fast_path_qk_packed_in_place_and_outputs(fast_ops, on_interpreter):
    dt = torch.float32
    qkv, q, k, v = packed_qkv(3, 4, 2, 64, dt, "cpu")
    qw, kw = randn((64,), dt, "cpu"), randn((64,), dt, "cpu")
    rq, rk = ref_norm(q, qw), ref_norm(k, kw)
    v_before = v.clone()
    for _ in range(2):  # second call: cached plan and overlap memo
        work = qkv.clone()
        wq, wk = work[:, :4 * 64].view(3, 4, 64), work[:, 4 * 64:6 * 64].view(3, 2, 64)
        a, b = fast_ops.qk_rms_norm(wq, wk, qw, kw, 1e-6, q_out=wq, k_out=wk)
        assert a is wq and b is wk
        assert_matches(wq, rq, dt)
        assert_matches(wk, rk, dt)
        assert torch.equal(work[:, 6 * 64:].view(3, 2, 64), v_before), "V untouched"
    qo, ko = fast_ops.qk_rms_norm(q, k, qw, kw)
    assert qo.is_contiguous() and ko.is_contiguous()
    assert_matches(qo, rq, dt)
    assert_matches(ko, rk, dt)
    qo2, ko2 = torch.full_like(qo, float("nan")), torch.full_like(ko, float("nan"))
    fast_ops.qk_rms_norm(q, k, qw, kw, q_out=qo2, k_out=ko2)
    assert torch.equal(qo2, qo) and torch.equal(ko2, ko)


def test_fast_path_errors_come_from_general_path(fast_ops, on_interpreter):
    dt = torch.float32
    qkv, q, k, _ = packed_qkv(3, 4, 2, 64, dt, "cpu")
    w = randn((64,), dt, "cpu")
    before = qkv.clone()
    # warm the plans with a valid call of the same key first, so the per-call checks decide
    buf = torch.randn(4, 64)
    fast_ops.rms_norm(buf[:3], w, 1e-6, out=torch.empty(3, 64))
    with pytest.raises(ValueError, match="out partially overlaps x"):
        fast_ops.rms_norm(buf[:3], w, 1e-6, out=buf[1:])
    with pytest.raises(ValueError, match="k_out and q overlap"):
        fast_ops.qk_rms_norm(q, k, w, w, q_out=k.new_empty(q.shape), k_out=q[:, 1:3])
    with pytest.raises(ValueError, match="q_out and k_out overlap"):
        fast_ops.qk_rms_norm(q, k, w, w, q_out=q, k_out=q[:, :2])
    with pytest.raises(ValueError, match=r"k_weight must have shape \(64,\)"):
        fast_ops.qk_rms_norm(q, k, w, w[:63])
    with pytest.raises(ValueError, match="weight_offset=1.0 needs a weight"):
        fast_ops.rms_norm(q, None, weight_offset=1.0)
    with pytest.raises(ValueError, match="eps must be"):
        fast_ops.rms_norm(q, w, eps=float("nan"))
    with pytest.raises(ValueError, match="x and residual overlap"):
        fast_ops.fused_add_rms_norm(qkv, qkv)
    assert torch.equal(qkv, before)


def test_plans_follow_dispatch_reset(fast_ops, on_interpreter):
    x = torch.randn(2, 32)
    fast_ops.rms_norm(x)
    assert PLANS
    qknorm.dispatch.reset()
    fast_ops.rms_norm(x)
    # reset emptied the dispatcher's decisions: the plans were rebuilt from scratch
    assert len(PLANS) == 1


def test_specialisation_separates_ints_equal_to_one(fast_ops, on_interpreter):
    """Rows == 1 is a constexpr in Triton: a plan for 1 row must not share entries with 2 rows."""
    w = torch.randn(32)
    for t in (1, 2, 16, 17):
        x = torch.randn(t, 32)
        assert_matches(fast_ops.rms_norm(x, w), ref_norm(x, w), torch.float32)
    specs = [s for s in rms_op.launcher().specs]
    assert len({s[0] for s in specs}) >= 3  # int specialisations differ (1 / 16-divisible / other)


@pytest.mark.parametrize("eps", [0.0, 2.0 ** -101, 1e-40])
@pytest.mark.parametrize("rows", [1, 4])
def test_eps_below_lo_eps_runs_the_lo_sums_kernel(fast_ops, on_interpreter, eps, rows):
    """eps below 2**-100 (0 included) takes the plan's twin compiled with LO_SUMS, on the fast and the general
    call, and rows whose mean square is below it stay exact; any other eps keeps the plan without it."""
    cfg = qknorm.KernelConfig(rows=rows, block_d=64, num_warps=1)
    x = torch.randn(8, 64) * 1e-30
    x[3] = 0.0 if eps else 1e-44  # a zero row: 0 for any positive eps; for eps = 0, a row of subnormals
    kl = rms_op.launcher()
    lo = kl.static_names.index("LO_SUMS")
    for call in range(2):  # the first call builds the fast plan, the second takes it
        y = fast_ops.rms_norm(x, None, eps, config=cfg)
        assert_matches(y, ref_norm(x, None, eps), torch.float32)
        assert torch.equal(y[3], torch.zeros(64)) if eps else torch.allclose(y[3], torch.ones(64))
    plan = next(p for k, p in PLANS.items() if k[0] == "rms_norm" and k[3] == eps)
    assert plan.tail[3 + lo] is True and plan.lo is plan  # a fast plan's tail starts with eps, eps_tiny, w_offset
    y = fast_ops.rms_norm(x, None, np.float64(eps), config=cfg)  # not a Python float: the general call
    assert_matches(y, ref_norm(x, None, eps), torch.float32)
    general = [p for k, p in PLANS.items() if k[:2] == ("rms_norm", "general")]
    assert general and all(p.tail[lo] is False and p.lo is not None and p.lo.tail[lo] is True for p in general)
    plain = _plan.for_eps(general[0], 1e-6)
    assert plain is general[0] and _plan.for_eps(general[0], eps) is general[0].lo
    assert plain.entries is not plain.lo.entries  # its own specialisation (compiled separately on a GPU)



@pytest.mark.parametrize("rows,warps", [(1, 1), (4, 1), (4, 2)])
def test_range_branch_is_in_the_plans_of_one_warp_tiles_of_several_rows(fast_ops, on_interpreter, rows, warps):
    """RANGE_BRANCH (kernels/rows.row_normalized: one test per program for rows out of fp32's range) is on
    exactly in the plans of one-warp programs of several rows, for every kernel that has it, and the results
    are right (what the kernels do with it: tests/kernels/test_rows.py)."""
    cfg = qknorm.KernelConfig(rows=rows, block_d=64, num_warps=warps)
    x = torch.randn(8, 64) * torch.tensor([1.0, 1e20, 1.0, 1.0, 1e-3, 1.0, 1e25, 1.0])[:, None]
    PLANS.clear()
    assert_matches(fast_ops.rms_norm(x, None, 1e-6, config=cfg), ref_norm(x, None, 1e-6), torch.float32)
    xa, r = x.clone(), x.flip(0).clone()
    fast_ops.fused_add_rms_norm(xa, r, None, 1e-6, config=cfg)
    assert_matches(xa, ref_add_norm(x, x.flip(0), None, 1e-6)[0], torch.float32)
    q, k = x.view(2, 4, 64), x[:4].view(2, 2, 64)
    for order in (False, True):
        qo, ko = fast_ops.qk_rms_norm(q, k, None, None, 1e-6,
                                      config=qknorm.KernelConfig(rows=rows, block_d=64, num_warps=warps,
                                                                 token_order=order))
        assert_matches(qo, ref_norm(q, None, 1e-6), torch.float32)
        assert_matches(ko, ref_norm(k, None, 1e-6), torch.float32)
    plans = [p for p in PLANS.values() if p is not None and "RANGE_BRANCH" in p.launcher.static_names]
    assert len(plans) >= 4
    for p in plans:
        n = len(p.tail) - len(p.launcher.static_names)  # a fast plan's tail starts with the per-call scalars
        assert p.tail[n + p.launcher.static_names.index("RANGE_BRANCH")] is (warps == 1 and rows > 1), p.launcher.name




# --------------------------------------------------------------------------- the pieces

def test_pack_by_name_rejects_unknown_and_missing_parameters():
    kl = rms_op.launcher()
    assert kl.per_call == ("X", "Y", "W", "eps", "eps_tiny", "w_offset")
    full = dict(n_rows=3, D=8, N1=1, N2=3, xs0=0, xs1=0, xs2=8, xsd=1, ys0=0, ys1=0, ys2=8, ysd=1, ws=1,
                HAS_WEIGHT=True, ROWS=1, BLOCK_D=8, CHUNKED=False, PERSISTENT=False)
    tail = kl.pack(**full)  # USE_PDL has a default
    assert len(tail) == len(kl.arg_names) - len(kl.per_call)
    assert tail[kl.static_names.index("ws")] == 1 and tail[-1] is False
    with pytest.raises(TypeError, match="unknown kernel parameters"):
        kl.pack(**full, bogus=1)
    del full["ws"]
    with pytest.raises(TypeError, match="ws not given"):
        kl.pack(**full)


def test_launcher_checks_the_leading_per_call_parameters():
    from qknorm.kernels.rms_norm import rms_norm_kernel
    with pytest.raises(ValueError, match="leading parameters"):
        launch.KernelLauncher(rms_norm_kernel, ("X", "Y", "W"), ("X", "W", "Y"))


def test_spec_keeps_constexprs_by_value():
    """ROWS=16 and ROWS=32 are different compiled kernels although both are 16-divisible ints."""
    kl = rms_op.launcher()
    base = dict(n_rows=64, D=64, N1=1, N2=64, xs0=0, xs1=0, xs2=64, xsd=1, ys0=0, ys1=0, ys2=64, ysd=1, ws=1,
                HAS_WEIGHT=True, BLOCK_D=64, CHUNKED=False, PERSISTENT=False)
    assert kl.spec(kl.pack(ROWS=16, **base)) != kl.spec(kl.pack(ROWS=32, **base))
    assert kl.spec(kl.pack(ROWS=16, **base)) == kl.spec(kl.pack(ROWS=16, **{**base, "n_rows": 128}))


def test_qk_describe_output_kinds_and_refusals(monkeypatch):
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    q, k, w = torch.zeros(2, 3, 8), torch.zeros(2, 1, 8), torch.ones(8)
    qo, ko, d = _plan.qk_describe(q, k, w, w, None, k)
    assert (qo, ko) == (_plan.OutKind.NEW, _plan.OutKind.IN_PLACE) and d[2:6] == (q.data_ptr(), k.data_ptr(),
                                                                                 w.data_ptr(), w.data_ptr())
    o = torch.zeros(2, 3, 8)
    qo, ko, d2 = _plan.qk_describe(q, k, w, w, o, None)
    assert (qo, ko) == (_plan.OutKind.OTHER, _plan.OutKind.NEW) and d2[6] == o.data_ptr() and d2[0] != d[0]
    assert _plan.qk_describe(q, k, w, w, "q", None) is None  # not a tensor: the general call raises
    g = torch.ones(8, requires_grad=True)
    assert _plan.qk_describe(q, k, g, w, None, None) is None  # grad: the differentiable op
    with torch.no_grad():
        assert _plan.qk_describe(q, k, g, w, None, None) is not None
    monkeypatch.setattr(_plan, "FAST_ON_CPU", False)
    assert _plan.qk_describe(q, k, w, w, None, None) is None  # CPU tensors: not a fast call


def test_plan_cache_is_bounded_and_follows_dispatch_reset():
    cache = _plan.PlanCache(limit=3)
    for i in range(3):
        cache.build(i, lambda: i)
    assert len(cache) == 3
    cache.build(3, lambda: None)  # over the limit: emptied first, None cached too
    assert len(cache) == 1 and 3 in cache and cache[3] is None
    PLANS.build(("probe",), lambda: 1)
    qknorm.dispatch.reset()
    assert ("probe",) not in PLANS


def test_apart_exact_for_interleaved_views():
    """Q and K of a packed buffer: byte ranges meet, elements do not; the exact answer is cached."""
    qkv = torch.zeros(4, 96)
    q, k = qkv[:, :64].view(4, 2, 32), qkv[:, 64:].view(4, 1, 32)
    plan = _plan.Plan(None, None, (1, 1, 1), (), {}, -1, None)
    _plan.set_qk_pairs(plan, q, k, q.stride(), k.stride())
    sq, sk = plan.spans[0], plan.spans[1]
    pq, pk = q.data_ptr(), k.data_ptr()
    assert _plan.apart(plan, _plan.Pair.QOUT_K, pq, sq, pk, sk)
    assert plan.memo[_plan.Pair.QOUT_K] == {pk - pq: True}
    assert not _plan.apart(plan, _plan.Pair.QOUT_K, pq, sq, pq + 4, sk)  # k shifted onto q's elements


def test_reads_apart_checks_each_output_when_the_union_meets():
    """A weight between Q_out and K_out (inside their union, outside both) is still apart."""
    buf = torch.zeros(3 * 64)
    qo, w, ko = buf[:64].view(1, 1, 64), buf[64:128], buf[128:].view(1, 1, 64)
    plan = _plan.Plan(None, None, (1, 1, 1), (), {}, -1, None)
    _plan.set_qk_pairs(plan, qo, ko, qo.stride(), ko.stride(), (w,))
    io = _plan.OutKind.IN_PLACE
    assert _plan.reads_apart(plan, (w.data_ptr(),), io, io, qo.data_ptr(), ko.data_ptr())
    assert not _plan.reads_apart(plan, (buf[100:].data_ptr(),), io, io, qo.data_ptr(), ko.data_ptr())


# --------------------------------------------------------------------------- inputs found by review

def test_negated_views_are_refused_after_a_cached_plan(fast_ops):
    """A negated view (its memory holds -x) with the metadata of a cached plan: not read as x."""
    x, w = torch.randn(4, 32), torch.randn(32)
    fast_ops.rms_norm(x, w)  # caches the plan of this key
    for args in ((torch._neg_view(x), w), (x, torch._neg_view(w))):
        with pytest.raises(ValueError, match="negated view"):
            fast_ops.rms_norm(*args)
    out = torch.empty(4, 32)
    fast_ops.rms_norm(x, w, out=out)
    with pytest.raises(ValueError, match="out is a negated view"):
        fast_ops.rms_norm(x, w, out=torch._neg_view(out))
    qkv, q, k, _ = packed_qkv(2, 2, 1, 32, torch.float32, "cpu")
    fast_ops.qk_rms_norm(q, k, w, w, q_out=q, k_out=k)
    with pytest.raises(ValueError, match="k_weight is a negated view"):
        fast_ops.qk_rms_norm(q, k, w, torch._neg_view(w), q_out=q, k_out=k)
    r = torch.randn(4, 32)
    fast_ops.fused_add_rms_norm(x.clone(), r.clone(), w)
    with pytest.raises(ValueError, match="residual is a negated view"):
        fast_ops.fused_add_rms_norm(x.clone(), torch._neg_view(r.clone()), w)


def test_sparse_tensors_raise_type_errors(fast_ops):
    x, w = torch.randn(4, 32), torch.randn(32)
    fast_ops.rms_norm(x, w)
    with pytest.raises(TypeError, match="x must be a dense"):
        fast_ops.rms_norm(x.to_sparse(), w)
    with pytest.raises(TypeError, match="weight must be a dense"):
        fast_ops.rms_norm(x, w.to_sparse())


def test_rope_cpu_positions_out_of_range_raise_on_the_fast_call(fast_ops):
    q, k, cs = torch.randn(2, 1, 8), torch.randn(2, 1, 8), torch.randn(4, 8)
    fast_ops.qk_rms_norm_rope(q, k, None, None, cs, torch.tensor([0, 3]))  # caches the plan
    with pytest.raises(ValueError, match=r"positions must be in \[0, 3\]"):
        fast_ops.qk_rms_norm_rope(q, k, None, None, cs, torch.tensor([0, 4]))


@pytest.mark.parametrize("op", ["rms", "add", "qk", "rope"])
def test_eps_above_fp32_range_is_refused(op):
    """eps is added in fp32: above fp32's largest value it would become inf (or be clamped)."""
    x, w = torch.randn(2, 8), torch.randn(8)
    q, k, cs = torch.randn(2, 1, 8), torch.randn(2, 1, 8), torch.randn(4, 8)
    calls = {"rms": lambda: qknorm.rms_norm(x, w, 1e39), "add": lambda: qknorm.fused_add_rms_norm(x, x.clone(), w, 1e39),
             "qk": lambda: qknorm.qk_rms_norm(q, k, None, None, 1e39),
             "rope": lambda: qknorm.qk_rms_norm_rope(q, k, None, None, cs, torch.tensor([0, 1]), 1e39)}
    with pytest.raises(ValueError, match="eps must be a finite number >= 0 and <= 3.4028235e"):
        calls[op]()
    assert qknorm.rms_norm(x, w, 3.4e38).isfinite().all()


def test_module_parameters_take_the_fast_call(fast_ops, on_interpreter):
    """Weights and scales held by modules are ``nn.Parameter``s: the fast call must take them
    (a real model passed Parameters to every norm and went through the general call: ~10x the
    host cost). Each op's ``fast`` answers (not None) with Parameter weights, and with a
    weight that requires grad outside grad mode."""
    from torch import nn
    from qknorm.ops import fused_add, qk_norm, qk_norm_rope, rms_norm_quant

    dt = torch.float32
    P = lambda t: nn.Parameter(t)  # noqa: E731 - requires_grad=True, as in a model
    w = P(randn((64,), dt, "cpu"))
    with torch.no_grad():
        x = randn((3, 64), dt, "cpu")
        assert rms_op.fast(x, w, 1e-6, 0.0, None, None) is not None
        assert fused_add.fast(x.clone(), x.clone(), w, 1e-6, 0.0, None) is True
        qkv, q, k, _ = packed_qkv(2, 4, 2, 64, dt, "cpu")
        assert qk_norm.fast(q, k, w, P(w.detach().clone()), 1e-6, 0.0, q, k, None) is not None
        y = rms_norm_quant.fast(x, None, w, 1e-6, P(torch.tensor([0.05])), None, torch.int8, 0.0, None, False,
                                False, None, None)
        assert y is not None
        cs = torch.randn(16, 64)
        pos = torch.arange(2)
        assert qk_norm_rope.fast(q, k, w, w, cs, pos, 1e-6, True, 64, 0.0, q, k, None) is not None
    # grad mode with a weight that requires grad: the differentiable general call, not the fast one
    assert rms_op.fast(x, w, 1e-6, 0.0, None, None) is None
