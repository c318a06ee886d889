"""qknorm.distributed across ranks: full-width RMSNorm of tensor-parallel shards, one all-reduce.

Multi-rank tests spawn gloo process groups of 2 and 4 ranks on loopback (127.0.0.1, a
free port, ``GLOO_SOCKET_IFNAME=lo``). This file is also the worker script::

    python tests/distributed/test_multi_rank.py SCENARIO RANK OUTDIR

Each worker runs its scenario's cases in order and writes ``OUTDIR/rank{RANK}.json``
(case -> "ok" or the failure) after every case. Nothing here depends on wall-clock
speed: the timeouts are hang guards only (a collective some rank never joins raises after
``COLLECTIVE_TIMEOUT_S``, a spawn is killed after ``SPAWN_TIMEOUT_S``), far above what a
slow or busy machine needs (about 10 s per spawn on 2 idle cores). To keep CI light there are two
spawns, of 2 and 3 processes, and each runs its cases on the PyTorch path first and
then on the Triton kernels in the interpreter, in the same processes. Every rank builds the same full-width
tensors from a per-case seed, takes its shard (strided views of its own packed QKV
buffer, as an engine holds them) and compares its output with the single-device
reference (``rms_norm_ref`` on the full width, fp64) restricted to its columns.

Scenarios: ``w2`` and ``w3`` (world sizes 2 and 3); each case runs under a backend,
``torch`` (PyTorch path) or ``triton`` (the kernels in the interpreter: ``TRITON_INTERPRET=1``
is set in the worker's environment before anything imports triton; ``qknorm.set_backend``
switches). The cases cover every module of the package across ranks: the local steps'
numerics (``local``), ``check=True`` (``consistency``), autograd (``eager``) and the
compile path (``custom_ops``). One rank in-process: ``test_local.py``, ``test_eager.py``,
``test_consistency.py`` in this folder.
"""
import datetime
import functools
import json
import os
import socket
import subprocess
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist

import qknorm
from helpers import assert_matches, poisoned, ref_norm
from qknorm.distributed import qk_rms_norm_tp, rms_norm_tp

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: helpers.py
SRC = os.path.dirname(os.path.dirname(os.path.abspath(qknorm.__file__)))
# Hang guards only, never a speed limit: a busy CI machine may be slow, never red.
COLLECTIVE_TIMEOUT_S = 600  # gloo: a collective some rank never joins raises after this
SPAWN_TIMEOUT_S = 1200  # one scenario's processes are killed after this (a real hang)


# =========================================================================== shards

def _widths(full: int, world: int, uneven: bool) -> list[int]:
    """Per-rank widths summing to ``full``: equal, or proportional to rank + 1."""
    if not uneven:
        assert full % world == 0
        return [full // world] * world
    unit = world * (world + 1) // 2
    w = [full * (r + 1) // unit for r in range(world)]
    w[-1] += full - sum(w)
    return w


def _cols(widths: list[int], rank: int) -> slice:
    start = sum(widths[:rank])
    return slice(start, start + widths[rank])


def _full(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _qk_case(rank, world, dtype, *, seed, t=5, hq=6, hkv=3, d=16, uneven=False, in_place=True,
             weights=True, offset=0.0, check=False, group=None, compiled=False):
    """Q and K shards as strided views of this rank's packed ``[T, q_l + 2 k_l]`` buffer."""
    qw_full, kw_full = hq * d, hkv * d
    qws, kws = _widths(qw_full, world, uneven), _widths(kw_full, world, uneven)
    qc, kc = _cols(qws, rank), _cols(kws, rank)
    fq, fk, fv = _full((t, qw_full), dtype, seed), _full((t, kw_full), dtype, seed + 1), \
        _full((t, kw_full), dtype, seed + 2)
    wq = _full((qw_full,), torch.float32, seed + 3, 0.5) if weights else None
    wk = _full((kw_full,), torch.bfloat16, seed + 4, 0.5) if weights else None
    buf = torch.cat([fq[:, qc], fk[:, kc], fv[:, kc]], dim=1)
    ql, kl = qws[rank], kws[rank]
    q, k, v = buf[:, :ql], buf[:, ql:ql + kl], buf[:, ql + kl:]
    assert q.stride(0) == buf.shape[1]  # a strided view of the packed buffer
    v_before, inputs = v.clone(), buf.clone()
    kwargs = dict(group=group, weight_offset=offset, check=check)
    if uneven:
        kwargs.update(q_full_width=qw_full, k_full_width=kw_full)
    if in_place:
        kwargs.update(q_out=q, k_out=k)
    else:
        kwargs.update(q_out=poisoned(q.shape, dtype, "cpu"), k_out=poisoned(k.shape, dtype, "cpu"))
    fn = qk_rms_norm_tp
    graphs = []
    if compiled:
        def backend(gm, example_inputs):  # record Dynamo's graph, then run it through AOT (functionalised)
            graphs.append(gm)
            from torch._dynamo.backends.common import aot_autograd
            return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)
        fn = torch.compile(functools.partial(qk_rms_norm_tp, **kwargs), backend=backend, fullgraph=True)
        kwargs = {}
    qs_w = wq[qc] if weights else None
    ks_w = wk[kc] if weights else None
    qo, ko = fn(q, k, qs_w, ks_w, 1e-6, **kwargs)
    if in_place:
        assert qo.data_ptr() == q.data_ptr() and ko.data_ptr() == k.data_ptr()
    else:
        assert torch.equal(buf, inputs), "out-of-place call modified its inputs"
    assert_matches(qo, ref_norm(fq, wq, 1e-6, offset)[:, qc], dtype, "q")
    assert_matches(ko, ref_norm(fk, wk, 1e-6, offset)[:, kc], dtype, "k")
    assert torch.equal(v, v_before), "touched V"
    if compiled:
        targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
        assert len(graphs) == 1, f"{len(graphs)} graphs"
        assert targets.count("_c10d_functional.all_reduce") == 1, targets
        assert "qknorm.tp_partial_sumsq" in targets and "qknorm.tp_scale" in targets, targets


def _rms_case(rank, world, dtype, *, seed, shape=(3, 4), width=96, uneven=False, offset=0.0,
              out="new", check=False):
    """One tensor, 3-D strided shard: ``full[S, B, W]`` sliced by columns, then transposed."""
    ws = _widths(width, world, uneven)
    c = _cols(ws, rank)
    fx = _full((*shape, width), dtype, seed)
    w = _full((width,), torch.bfloat16, seed + 1, 0.3)
    x = fx[..., c].transpose(0, 1)
    kwargs = dict(weight_offset=offset, check=check)
    if uneven:
        kwargs["full_width"] = width
    if out == "x":
        kwargs["out"] = x
    elif out == "given":
        kwargs["out"] = poisoned(x.shape, dtype, "cpu")
    ref = ref_norm(fx, w, 1e-5, offset)[..., c].transpose(0, 1)  # before: x is a view of fx
    y = rms_norm_tp(x, w[c], 1e-5, **kwargs)
    if out != "new":
        assert y is kwargs["out"]
    assert_matches(y, ref, dtype)


def _raises_everywhere(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


# --------------------------------------------------------------------------- error cases (check=True)

def _mismatched_widths(rank, world):
    # every rank passes the same full width but rank 0 holds 8 extra columns
    x = torch.randn(3, 32 + (8 if rank == 0 else 0))
    _raises_everywhere(ValueError, r"local widths per rank \[40, 32.*sum to .* full width is",
                       lambda: rms_norm_tp(x, None, full_width=32 * world, check=True))


def _mismatched_default_width(rank, world):
    x = torch.randn(3, 32 + (8 if rank == 1 else 0))
    _raises_everywhere(ValueError, r"x full widths differ across ranks",
                       lambda: rms_norm_tp(x, None, check=True))


def _mismatched_dtypes(rank, world):
    dt = torch.bfloat16 if rank == 0 else torch.float32
    q, k = torch.randn(2, 3, 32).to(dt), torch.randn(2, 3, 16).to(dt)
    _raises_everywhere(TypeError, r"q dtypes differ across ranks: \[bfloat16, float32",
                       lambda: qk_rms_norm_tp(q, k, None, None, check=True))


def _mismatched_rows(rank, world):
    # without check the all-reduce buffers would differ in size (error or hang)
    q, k = torch.randn(4 + rank, 32), torch.randn(4, 16)
    _raises_everywhere(ValueError, r"q row counts .* differ across ranks: \[4, 5",
                       lambda: qk_rms_norm_tp(q, k, None, None, check=True))


def _mismatched_eps(rank, world):
    x = torch.randn(2, 32)
    _raises_everywhere(ValueError, r"eps differs across ranks",
                       lambda: rms_norm_tp(x, None, 1e-6 if rank else 1e-5, check=True))


def _bad_weight_on_one_rank(rank, world):
    # a local error on rank 0 only: with check=True the other ranks raise too (no hang)
    q, k = torch.randn(3, 32), torch.randn(3, 16)
    qw = torch.randn(31 if rank == 0 else 32)
    kw = torch.randn(16)
    if rank == 0:
        _raises_everywhere(ValueError, r"q_weight must have shape \(32,\).*this rank's local width",
                           lambda: qk_rms_norm_tp(q, k, qw, kw, check=True))
    else:
        _raises_everywhere(ValueError, r"rank\(s\) \[0\] of the group rejected their arguments",
                           lambda: qk_rms_norm_tp(q, k, qw, kw, check=True))


def _different_ops(rank, world):
    x = torch.randn(3, 32)
    if rank == 0:
        fn = lambda: rms_norm_tp(x, None, check=True)
    else:
        fn = lambda: qk_rms_norm_tp(x, x[:, :16], None, None, check=True)
    _raises_everywhere(ValueError, "ranks call different ops", fn)


def _empty_rows(rank, world):
    q, k = torch.randn(0, 4, 32), torch.randn(0, 4, 16)
    qo, ko = qk_rms_norm_tp(q, k, None, None, check=True)
    assert qo.shape == q.shape and ko.shape == k.shape


def _one_all_reduce(rank, world):
    """Q's and K's sums travel in ONE all-reduce of rows_q + rows_k fp64 values; check adds one all-gather."""
    calls = []
    real_ar, real_ag = dist.all_reduce, dist.all_gather

    def ar(t, *a, **kw):
        calls.append(("all_reduce", t.numel(), t.dtype))
        return real_ar(t, *a, **kw)

    def ag(out, t, *a, **kw):
        calls.append(("all_gather", t.numel(), t.dtype))
        return real_ag(out, t, *a, **kw)

    dist.all_reduce, dist.all_gather = ar, ag
    try:
        qkv = torch.randn(6, 3, 96)
        q, k = qkv[..., :32], qkv[..., 32:64]  # 18 rows each
        qk_rms_norm_tp(q, k, None, None, q_out=q, k_out=k)
        assert calls == [("all_reduce", 36, torch.float64)], calls
        calls.clear()
        qk_rms_norm_tp(q, k, None, None, check=True)
        assert [c[0] for c in calls] == ["all_gather", "all_reduce"], calls
    finally:
        dist.all_reduce, dist.all_gather = real_ar, real_ag


def _backend_used(rank, world):
    from qknorm.distributed import local
    if qknorm.get_backend() == "triton":
        assert local.kernels_loaded() and os.environ["TRITON_INTERPRET"] == "1", "Triton kernels did not run"
    else:
        assert not local.kernels_loaded(), "the torch path imported the Triton kernels"


def _subgroup(rank, world):
    sub = dist.new_group([0, 1])  # every rank must call new_group
    if rank >= 2:
        _raises_everywhere(ValueError, "not a member of `group`",
                           lambda: qk_rms_norm_tp(torch.randn(2, 8), torch.randn(2, 8), None, None, group=sub))
        return
    _qk_case(rank, 2, torch.float32, seed=70, group=sub, check=True)


def _extreme_scales(rank, world):
    """Rows of 1e20 and 1e-25 (eps=0): the fp32 sum of squares would overflow/underflow;
    the fp64 sums and the fp64 all-reduce give x / rms(x). Zero rows with eps below fp32's
    range give 0, not NaN."""
    qws, kws = _widths(96, world, False), _widths(48, world, True)
    qc, kc = _cols(qws, rank), _cols(kws, rank)
    for dtype, scale, eps in ((torch.float32, 1e20, 1e-6), (torch.float32, 1e-25, 0.0),
                              (torch.bfloat16, 1e-30, 1e-50)):
        fq, fk = _full((4, 96), dtype, 90, scale), _full((4, 48), dtype, 91, 1.0 / scale)
        w = _full((96,), torch.float32, 92, 0.5)
        y = rms_norm_tp(fq[:, qc], w[qc], eps)
        assert_matches(y, ref_norm(fq, w, eps)[:, qc], dtype, f"x*{scale}")
        qo, ko = qk_rms_norm_tp(fq[:, qc], fk[:, kc], None, None, eps, k_full_width=48)
        assert_matches(qo, ref_norm(fq, None, eps)[:, qc], dtype, f"q*{scale}")
        assert_matches(ko, ref_norm(fk, None, eps)[:, kc], dtype, f"k/{scale}")
    z = torch.zeros(3, 32)
    for eps in (1e-50, 1e-40):
        y = rms_norm_tp(z, None, eps)
        assert torch.equal(y, z), f"zero rows with eps={eps}: {y}"


def _ref_grad(fx, w, eps, offset, c):
    """Gradients of sum(norm(fx) * c) + sum(fx * fx) by PyTorch autograd, full width, fp32."""
    x = fx.detach().float().clone().requires_grad_()
    wr = w.detach().float().clone().requires_grad_()
    y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * (wr + offset)
    ((y * c).sum() + (x * x).sum()).backward()
    return x.grad, wr.grad


def _grad_qk_in_place_views(rank, world):
    """Autograd through the all-reduce: Q and K in place as views of a non-leaf packed
    buffer; gradients of this rank's shards and weights equal the full-width PyTorch ones."""
    t, qw_full, kw_full, eps, off = 4, 96, 48, 1e-6, 1.0
    qc, kc = _cols(_widths(qw_full, world, False), rank), _cols(_widths(kw_full, world, False), rank)
    fq, fk = _full((t, qw_full), torch.float32, 100), _full((t, kw_full), torch.float32, 101)
    wq, wk = _full((qw_full,), torch.float32, 102, 0.5), _full((kw_full,), torch.float32, 103, 0.5)
    cq, ck = _full((t, qw_full), torch.float32, 104), _full((t, kw_full), torch.float32, 105)
    gq, gwq = _ref_grad(fq, wq, eps, off, cq)
    gk, gwk = _ref_grad(fk, wk, eps, off, ck)
    leaf = torch.cat([fq[:, qc], fk[:, kc]], 1).requires_grad_()
    wql, wkl = wq[qc].clone().requires_grad_(), wk[kc].clone().requires_grad_()
    buf = leaf * 1.0  # not a leaf: Q and K views of it may be normalised in place
    nq = qc.stop - qc.start
    q, k = buf[:, :nq], buf[:, nq:]
    qo, ko = qk_rms_norm_tp(q, k, wql, wkl, eps, q_out=q, k_out=k, weight_offset=off)
    assert qo is q and ko is k and qo.grad_fn is not None
    ((qo * cq[:, qc]).sum() + (ko * ck[:, kc]).sum() + (leaf * leaf).sum()).backward()
    assert_matches(leaf.grad[:, :nq], gq[:, qc], torch.float32, "dq")
    assert_matches(leaf.grad[:, nq:], gk[:, kc], torch.float32, "dk")
    assert_matches(wql.grad, gwq[qc], torch.float32, "dq_weight")
    assert_matches(wkl.grad, gwk[kc], torch.float32, "dk_weight")


def _grad_rms_uneven(rank, world):
    """Autograd of rms_norm_tp with uneven shards (full_width) and a bf16 weight."""
    t, width, eps = 5, 96, 1e-5
    c_ = _cols(_widths(width, world, True), rank)
    fx, c = _full((t, width), torch.float32, 110), _full((t, width), torch.float32, 111)
    w = _full((width,), torch.bfloat16, 112, 0.5)
    gx, gw = _ref_grad(fx, w, eps, 0.0, c)
    x = fx[:, c_].clone().requires_grad_()
    wl = w[c_].clone().requires_grad_()
    y = rms_norm_tp(x, wl, eps, full_width=width)
    ((y * c[:, c_]).sum() + (x * x).sum()).backward()
    assert_matches(x.grad, gx[:, c_], torch.float32, "dx")
    assert wl.grad.dtype == torch.bfloat16
    assert_matches(wl.grad, gw[c_], torch.bfloat16, "dweight")


CASES = {
    "qk_packed_bf16_in_place": lambda r, w: _qk_case(r, w, torch.bfloat16, seed=10),
    "qk_packed_fp32_out_of_place_no_weight": lambda r, w: _qk_case(r, w, torch.float32, seed=20, in_place=False,
                                                                   weights=False),
    "qk_uneven_widths_checked": lambda r, w: _qk_case(r, w, torch.bfloat16, seed=30, uneven=True, check=True),
    "qk_gemma_offset_fp16": lambda r, w: _qk_case(r, w, torch.float16, seed=35, offset=1.0, t=1),
    "qk_compiled_fullgraph": lambda r, w: _qk_case(r, w, torch.bfloat16, seed=37, compiled=True),
    "rms_3d_strided_fp32": lambda r, w: _rms_case(r, w, torch.float32, seed=40),
    "rms_bf16_in_place_offset": lambda r, w: _rms_case(r, w, torch.bfloat16, seed=50, out="x", offset=1.0),
    "rms_uneven_given_out_checked": lambda r, w: _rms_case(r, w, torch.float32, seed=60, uneven=True,
                                                           out="given", check=True),
    "err_mismatched_widths": _mismatched_widths,
    "err_mismatched_default_width": _mismatched_default_width,
    "err_mismatched_dtypes": _mismatched_dtypes,
    "err_mismatched_rows": _mismatched_rows,
    "err_mismatched_eps": _mismatched_eps,
    "err_bad_weight_on_one_rank": _bad_weight_on_one_rank,
    "err_different_ops": _different_ops,
    "after_errors_group_still_works": lambda r, w: _qk_case(r, w, torch.float32, seed=80, check=True),
    "empty_rows": _empty_rows,
    "one_all_reduce": _one_all_reduce,
    "extreme_scales": _extreme_scales,
    "grad_qk_in_place_views": _grad_qk_in_place_views,
    "grad_rms_uneven": _grad_rms_uneven,
    "subgroup_of_two": _subgroup,
    "backend_used": _backend_used,  # last: every earlier case ran on the scenario's backend
}

_ALL = [c for c in CASES if c not in ("subgroup_of_two", "backend_used")]
_TRITON = ["qk_packed_bf16_in_place", "qk_packed_fp32_out_of_place_no_weight", "qk_uneven_widths_checked",
           "rms_3d_strided_fp32", "rms_bf16_in_place_offset", "err_mismatched_widths",
           "after_errors_group_still_works", "extreme_scales", "grad_qk_in_place_views", "grad_rms_uneven"]


def _phases(*phases):
    return [(backend, c) for backend, cases in phases for c in cases]


SCENARIOS = {
    # name: (world size, [(backend, case)] in order); the torch phase first, so that
    # "backend_used" can check that it never imported the Triton kernels
    "w2": (2, _phases(("torch", _ALL + ["backend_used"]),
                      ("triton", _TRITON + ["qk_compiled_fullgraph", "backend_used"]))),
    "w3": (3, _phases(("torch", [c for c in _ALL if c != "qk_compiled_fullgraph"] + ["subgroup_of_two",
                                                                                      "backend_used"]),
                      ("triton", _TRITON + ["backend_used"]))),
}


# =========================================================================== worker side

def _worker(scenario: str, rank: int, outdir: str) -> None:
    world, cases = SCENARIOS[scenario]
    assert qknorm.get_backend() == "torch", qknorm.get_backend()
    results: dict[str, str] = {}
    path = os.path.join(outdir, f"rank{rank}.json")

    def dump():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)

    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        for backend, case in cases:
            key = f"{backend}:{case}"
            t0 = time.perf_counter()
            try:
                qknorm.set_backend(backend)
                CASES[case](rank, world)
                results[key] = "ok"
            except BaseException:  # noqa: BLE001 - reported to the parent
                results[key] = "FAIL: " + traceback.format_exc(limit=6)[-3000:]
            results["_time_" + key] = f"{time.perf_counter() - t0:.2f}s"
            dump()
    finally:
        dump()
        dist.destroy_process_group()


# =========================================================================== parent side

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(scenario: str, outdir: str, timeout: float) -> dict:
    """Run a scenario on ``world`` processes; returns {rank: results} plus logs, never hangs."""
    world, _ = SCENARIOS[scenario]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
               QKNORM_BACKEND="torch", TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]))
    if os.path.isdir("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    os.makedirs(outdir, exist_ok=True)
    logs = [open(os.path.join(outdir, f"rank{r}.log"), "w") for r in range(world)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), scenario, str(r), outdir],
                              env=env, stdout=logs[r], stderr=subprocess.STDOUT, cwd=TESTS)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    timed_out = False
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in logs:
        f.close()
    out = {"timed_out": timed_out, "returncodes": [p.returncode for p in procs], "ranks": {}, "logs": {}}
    for r in range(world):
        res = os.path.join(outdir, f"rank{r}.json")
        out["ranks"][r] = {}
        if os.path.exists(res):
            with open(res) as f:
                out["ranks"][r] = json.load(f)
        with open(os.path.join(outdir, f"rank{r}.log")) as f:
            out["logs"][r] = f.read()[-3000:]
    return out


_spawned: dict = {}


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Scenario runs, spawned lazily once per module, one after another (hang guard only)."""
    def get(scenario):
        if scenario not in _spawned:
            _spawned[scenario] = _spawn(scenario, str(tmp_path_factory.mktemp(scenario)), SPAWN_TIMEOUT_S)
        return _spawned[scenario]
    return get


_PARAMS = [(s, b, c) for s, (_, cases) in SCENARIOS.items() for b, c in cases]


@pytest.mark.parametrize("scenario,backend,case", _PARAMS, ids=[f"{s}-{b}-{c}" for s, b, c in _PARAMS])
def test_multi_rank(spawned, scenario, backend, case):
    run = spawned(scenario)
    world = SCENARIOS[scenario][0]
    key = f"{backend}:{case}"
    for r in range(world):
        got = run["ranks"][r].get(key)
        if got is None:
            pytest.fail(f"rank {r} never finished {key!r} (timed out: {run['timed_out']}, "
                        f"return codes {run['returncodes']})\nlog tail:\n{run['logs'][r]}")
        assert got == "ok", f"rank {r} of {world}: {got}"


def test_spawns_exit_cleanly(spawned):
    for s in SCENARIOS:
        run = spawned(s)
        assert not run["timed_out"] and run["returncodes"] == [0] * SCENARIOS[s][0], \
            f"{s}: {run['returncodes']}\n" + "\n".join(run["logs"].values())


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
