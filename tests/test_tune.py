"""``qknorm tune`` without a GPU: the grid, the budget, picking with injected timings, the
tables it writes, and the command line. One GPU test times a tiny grid for real. The table
format itself (write, read back, merge): test_tuned_table.py."""
import json
import os

import pytest
import torch
from test_dispatch import clean  # noqa: F401 - autouse: no user table, fresh dispatcher caches

from qknorm import dispatch as D
from qknorm import tune as T
from qknorm import tuned_table as TT
from qknorm.config import KernelConfig
from qknorm.dispatch import DTYPES, OPS, next_pow2
from qknorm.reference import TOL

BF16 = torch.bfloat16


def fake_us(p, c):
    """Deterministic fake timing with a unique winner per point that depends on the point."""
    pref = 1 << ((p.n_rows.bit_length() // 3) % 5)  # preferred rows per program
    return 1.0 + abs(c.rows.bit_length() - pref.bit_length()) * 0.1 + c.num_warps * 0.01 + c.persistent * 0.05


def fake_measure(p, cfgs):
    return [T.Result(c, fake_us(p, c)) for c in cfgs]


# --------------------------------------------------------------------------- grid

def test_default_grid_covers_the_spec():
    pts = T.build_grid()
    assert {p.op for p in pts} == set(OPS) and {p.dtype for p in pts} == {"bf16"}
    assert pts[0].op == "qk_rms_norm"  # measured first
    assert len({p.key for p in pts}) == len(pts)
    assert {p.D for p in pts if p.op == "qk_rms_norm"} == set(T.HEAD_DIMS)
    for op in ("rms_norm", "fused_add_rms_norm"):
        assert {p.D for p in pts if p.op == op} == set(T.HIDDEN)
    for p in pts:
        assert p.rows == next_pow2(p.n_rows) and p.rows // 2 < p.n_rows <= p.rows
        assert p.tensor_bytes <= T.CAP_BYTES
        if p.op == "qk_rms_norm":
            assert p.n_rows == p.tokens * sum(p.heads) and p.heads == T.QK_HEADS[p.D]
        else:
            assert p.n_rows == p.tokens and p.heads is None
    # per (op, D): starts at one token; the largest point is at the cap or at 65536 tokens
    for op in OPS:
        for d in {p.D for p in pts if p.op == op}:
            mine = [p for p in pts if p.op == op and p.D == d]
            assert min(p.tokens for p in mine) == 1
            top = max(mine, key=lambda p: p.tokens)
            assert top.tokens == 65536 or 2 * top.tensor_bytes > T.CAP_BYTES
            assert any(p.tokens == 4 for p in mine)  # a decode batch, and the 'not 1, not 16k' class


def test_grid_flags():
    q = T.build_grid(quick=True)
    assert len(q) < len(T.build_grid()) / 3
    assert {p.D for p in q if p.op == "qk_rms_norm"} == set(T.QUICK_HEAD_DIMS)
    three = T.build_grid(["qk_rms_norm"], ["bf16", "fp16", "fp32"])
    assert {p.dtype for p in three} == {"bf16", "fp16", "fp32"} and {p.op for p in three} == {"qk_rms_norm"}
    fp32 = [p for p in three if p.dtype == "fp32"]
    assert max(p.tensor_bytes for p in fp32) <= T.CAP_BYTES
    custom = T.build_grid(["rms_norm"], hidden=[3000])
    assert {p.D for p in custom} == {3000}


def test_parse_flags():
    assert T.parse_ops("qk,rms") == ("qk_rms_norm", "rms_norm")
    assert T.parse_ops("fused_add_rms_norm") == ("fused_add_rms_norm",)
    assert T.parse_dtypes("bf16, fp32") == ("bf16", "fp32")
    for bad in ("", "layer_norm", "qk,nope"):
        with pytest.raises(ValueError):
            T.parse_ops(bad)
    with pytest.raises(ValueError):
        T.parse_dtypes("fp8")


def lead_model(e):
    """The lead's budget model: ~0.1 s a timing, ~0.5 s a new compile."""
    return e["timings"] * 0.1 + e["compiles"] * 0.5


def test_budget_full_under_9_minutes_and_quick_under_2():
    """A full tune must fit one 10-minute device command (--max-seconds defaults to 540)."""
    full = T.estimate(T.build_grid(), T.REP_MS)
    quick = T.estimate(T.build_grid(quick=True), T.QUICK_REP_MS)
    assert lead_model(full) <= 9 * 60 and full["seconds"] <= 9 * 60, full
    assert lead_model(quick) <= 2 * 60 and quick["seconds"] <= 2 * 60, quick
    assert full["timings"] == sum(len(D.candidate_configs(p.op, BF16, p.D, p.n_rows)) for p in T.build_grid())


def test_estimate_shares_the_compiles_among_jobs():
    pts = T.build_grid()
    one, many = T.estimate(pts, T.REP_MS), T.estimate(pts, T.REP_MS, jobs=8)
    compile_s = one["compiles"] * T.EST_COMPILE_S
    assert many["seconds"] == pytest.approx(one["seconds"] - compile_s + compile_s / 8 + T.EST_POOL_S)


def test_compile_tasks_are_every_timed_config_point_by_point():
    pts = T.build_grid(["qk_rms_norm", "rms_norm"], quick=True)
    tasks = T.compile_tasks(pts)
    assert tasks == [(p, c) for p in pts for c in D.candidate_configs(p.op, DTYPES[p.dtype], p.D, p.n_rows)]
    firsts = [i for i, (p, _) in enumerate(tasks) if i == 0 or tasks[i - 1][0] != p]
    assert len(firsts) == len(pts)  # each point's configs together, in grid order


def test_compile_ahead_launches_every_config_in_worker_processes(monkeypatch):
    """The real pool and worker function on the CPU (spawned processes, the Triton interpreter): each
    (point, config) runs once, a task that cannot run counts as failed, the pool is gone afterwards."""
    import multiprocessing

    from qknorm import compile_pool
    monkeypatch.setenv("QKNORM_BACKEND", "triton")  # read by the spawned processes, which import triton afresh:
    monkeypatch.setenv("TRITON_INTERPRET", "1")     # the interpreter there (on a CUDA machine too)
    before = set(multiprocessing.active_children())
    pt = T.GridPoint("rms_norm", "bf16", 64, 3, 3)
    cfgs = D.candidate_configs("rms_norm", BF16, 64, 3)[:2]
    lines = []
    r = T.compile_ahead([pt], "cpu", 2, 600, log=lines.append, candidates=lambda *a: cfgs)
    assert (r.ran, r.failed, r.finished) == (len(cfgs), 0, True), r
    assert lines and f"{len(cfgs)} of {len(cfgs)} configs launched" in lines[0]
    bad = compile_pool.run([(pt, "not a config")], T.compile_one, 1, 600, T._worker_init, ("cpu",))
    assert (bad.ran, bad.failed) == (0, 1)
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.parametrize("jobs", ["3", "1"])
def test_cli_compiles_ahead_with_jobs_before_timing(jobs, tmp_path, monkeypatch, capsys):
    """On a GPU (faked here) the command compiles ahead in --jobs processes, within its share of the time
    limit, before the first timing; --jobs 1 compiles while timing."""
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    calls = []
    monkeypatch.setattr(T, "compile_ahead", lambda pts, dev, n, secs: calls.append((len(pts), dev, n, secs)))

    def timing(p, cfgs):
        assert len(calls) == (jobs != "1")  # compiled ahead before the first timing
        return fake_measure(p, cfgs)
    monkeypatch.setattr(T, "CudaMeasure", lambda *a, **k: timing)
    argv = ["--quick", "--ops", "qk", "--out", str(tmp_path / "t.json"), "--jobs", jobs, "--max-seconds", "600"]
    assert T.main(argv) == 0
    if jobs == "1":
        assert calls == []
    else:
        (n, dev, n_jobs, secs), = calls
        assert (n, dev, n_jobs) == (len(T.build_grid(["qk_rms_norm"], quick=True)), "cuda:0", 3)
        assert 0 < secs <= T.COMPILE_SHARE * 600
    assert f"in {jobs} process" in capsys.readouterr().out


def test_compile_pool_counts_and_stops_at_its_time_limit():
    """Falsy results and exceptions count as failed; at the time limit the processes are ended (tasks that
    would take 10 minutes do not hold it up)."""
    import time

    from qknorm import compile_pool
    assert compile_pool.run([1, 0, "", 2, None], bool, 2, 600)[:2] == (2, 3)
    assert compile_pool.run([-1], time.sleep, 1, 600)[:2] == (0, 1)  # ValueError: negative sleep
    r = compile_pool.run([600, 600], time.sleep, 2, 2)
    assert not r.finished and r.seconds < 600 and not r.error
    # a process that dies (here: os._exit in a task, or in every process's initializer) stops the pool at once,
    # every task not done counted as failed, not a wait for the time limit
    for tasks, init in (([0, 1, 2, 3], None), ([1, 2], os._exit)):
        r = compile_pool.run(tasks, os._exit if init is None else bool, 2, 600, init, (3,) if init else ())
        assert (r.ran, r.failed, r.finished) == (0, len(tasks), False) and "died or could not start" in r.error
        assert r.seconds < 600


def test_estimate_counts_compile_specialisations():
    p1 = T.GridPoint("rms_norm", "bf16", 4096, 1, 1)
    p16 = T.GridPoint("rms_norm", "bf16", 4096, 16, 16)
    p32 = T.GridPoint("rms_norm", "bf16", 4096, 32, 32)
    p4 = T.GridPoint("rms_norm", "bf16", 4096, 4, 4)
    def one(*a):
        return [KernelConfig(1, 4096, 8)]

    assert T.estimate([p16, p32], candidates=one)["compiles"] == 1   # both multiples of 16
    assert T.estimate([p1, p16, p4], candidates=one)["compiles"] == 3  # ==1, %16, other
    assert T.estimate([p16, p16._replace(dtype="fp32")], candidates=one)["compiles"] == 2


# --------------------------------------------------------------------------- the run

def test_run_picks_the_fastest_and_keeps_all_times():
    pts = T.build_grid(quick=True)
    seen = []
    run = T.run_tune(pts, fake_measure, log=lambda s: None, on_entry=lambda es: seen.append(len(es)))
    assert len(run.entries) == len(pts) and not run.failed and not run.skipped
    assert seen == list(range(1, len(pts) + 1))
    for p, e in zip(pts, run.entries):
        cands = D.candidate_configs(p.op, BF16, p.D, p.n_rows)
        best = min(cands, key=lambda c: fake_us(p, c))
        assert KernelConfig.from_dict(e["config"]) == best
        assert e["us"] == pytest.approx(fake_us(p, best))
        assert set(e["alternatives"]) == {c.name for c in cands}
        assert (e["op"], e["dtype"], e["D"], e["rows"], e["n_rows"]) == (p.op, p.dtype, p.D, p.rows, p.n_rows)


def test_failed_configs_are_recorded_and_never_picked():
    p = T.GridPoint("qk_rms_norm", "bf16", 128, 640, 16, (32, 8))
    cands = D.candidate_configs(p.op, BF16, p.D, p.n_rows)
    fastest = min(cands, key=lambda c: fake_us(p, c))

    def measure(pt, cfgs):
        return [T.Result(c, None, "relative L2 error 1e+00 >= 1e-02") if c == fastest else T.Result(c, fake_us(pt, c))
                for c in cfgs]

    logs = []
    run = T.run_tune([p], measure, log=logs.append)
    (e,) = run.entries
    assert KernelConfig.from_dict(e["config"]) != fastest
    assert fastest.name not in e["alternatives"] and fastest.name in e["failed"]
    assert run.failed == [(p, fastest.name, "relative L2 error 1e+00 >= 1e-02")]
    assert any("FAILED" in line for line in logs)
    # nothing passes: no entry at all
    run = T.run_tune([p], lambda pt, cfgs: [T.Result(c, None, "boom") for c in cfgs], log=lambda s: None)
    assert run.entries == [] and len(run.failed) == len(cands)


def test_run_logs_the_heuristic_regret():
    p = T.GridPoint("rms_norm", "bf16", 4096, 16, 16)
    heur = D.heuristic("rms_norm", BF16, 4096, 16)[0]
    best = min(D.candidate_configs("rms_norm", BF16, 4096, 16), key=lambda c: fake_us(p, c))
    logs = []
    T.run_tune([p], fake_measure, log=logs.append)
    regret = 100 * (fake_us(p, heur) / fake_us(p, best) - 1)
    assert any(f"heuristic {heur.name} +{regret:.1f}%" in line for line in logs), logs
    assert logs[-1].startswith(f"heuristic vs tuned pick: geometric mean +{regret:.1f}%")


def test_deadline_skips_the_rest():
    pts = T.build_grid(quick=True)
    run = T.run_tune(pts, fake_measure, deadline=0.0, log=lambda s: None)
    assert run.entries == [] and run.skipped == pts


# --------------------------------------------------------------------------- tables it writes

def make_table(tmp_path, pts=None, name="nvidia-fake-9000.json"):
    pts = pts if pts is not None else T.build_grid(quick=True)
    run = T.run_tune(pts, fake_measure, log=lambda s: None)
    d = TT.table_doc(run.entries, gpu="NVIDIA Fake 9000", sm_count=132, command="qknorm tune --quick",
                     timing=T.timing_meta(T.QUICK_REP_MS))
    path = str(tmp_path / name)
    return path, TT.write_table(path, d), run, pts


def test_tuned_entries_are_a_valid_table(tmp_path):
    path, _, run, pts = make_table(tmp_path)
    t = TT.load_table(path)
    assert len(t.entries) == len(pts)
    assert t.meta["timing"]["method"] == "qknorm.bench.timing.time_graph"
    assert t.meta["timing"]["rep_ms"] == T.QUICK_REP_MS
    for p, e in zip(pts, run.entries):
        got = t.lookup(p.op, p.dtype, p.D, p.rows)
        assert got.note == "exact" and got.entry.config == KernelConfig.from_dict(e["config"])
        assert dict(got.entry.alternatives) == e["alternatives"]
        assert (got.entry.n_rows, got.entry.shape) == (p.n_rows, p.shape)


def test_written_table_drives_choose_config(tmp_path, monkeypatch):
    path, _, run, pts = make_table(tmp_path)
    monkeypatch.setenv(TT.ENV_TABLE, path)
    for p, e in zip(pts, run.entries):
        c, why = D.choose_config(p.op, DTYPES[p.dtype], p.D, p.n_rows, "cpu")
        assert c == KernelConfig.from_dict(e["config"]), why


def test_out_path(tmp_path):
    assert T.out_path(str(tmp_path), "NVIDIA H200") == str(tmp_path / "nvidia-h200.json")
    assert T.out_path(str(tmp_path / "t.json"), "NVIDIA H200") == str(tmp_path / "t.json")
    assert T.out_path(None, "NVIDIA H100 80GB HBM3").endswith(os.sep + "nvidia-h100-80gb-hbm3.json")


# --------------------------------------------------------------------------- command line

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_without_gpu(capsys, tmp_path):
    from qknorm import cli
    assert cli.main(["tune", "--quick", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "needs a CUDA GPU" in out and "Nothing was measured or written" in out
    assert os.listdir(tmp_path) == []


def test_cli_dry_run(capsys):
    from qknorm import cli
    assert cli.main(["tune", "--dry-run", "--quick", "--ops", "qk"]) == 0
    out = capsys.readouterr().out
    assert "grid points" in out and "estimated" in out and "qk_rms_norm" in out and " rms_norm " not in out
    with pytest.raises(SystemExit):
        cli.main(["tune", "--ops", "layer_norm"])


@pytest.mark.parametrize("argv,words", [
    (["--dry-run", "--hidden", "0"], ["--hidden", "'0'", "positive"]),
    (["--head-dims", "abc"], ["--head-dims", "'abc'", "positive integers"]),
    (["--dry-run", "--hidden", "4096,x"], ["--hidden", "'4096,x'"]),
    (["--ops", "layer_norm"], ["--ops", "'layer_norm'", "qk_rms_norm"]),
    (["--dtypes", "fp8"], ["--dtypes", "'fp8'", "bf16"]),
    (["--max-seconds", "-1"], ["--max-seconds", "-1", "> 0"]),
    (["--rep-ms", "0"], ["--rep-ms", "0", "> 0"]),
    (["--rep-ms", "inf"], ["--rep-ms", "inf", "below 1e6"]),  # was an OverflowError traceback
    (["--ops", "qk", "--hidden", "4096"], ["--hidden", "'4096'", "--ops 'qk'"]),
    (["--ops", "rms", "--head-dims", "128"], ["--head-dims", "'128'"]),
    (["--jobs", "0"], ["--jobs", "0", ">= 1"]),
])
def test_cli_bad_values_are_one_line_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    from qknorm import cli
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["tune"] + argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("qknorm tune: error: argument ") and err.count("\n") == 1, err
    assert all(w in err for w in words), (words, err)
    assert os.listdir(tmp_path) == []


def test_cli_out_under_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        T.main(["--dry-run", "--out", str(tmp_path / "f" / "t.json")])
    assert e.value.code == 2 and "argument --out" in capsys.readouterr().err


def test_cli_end_to_end_with_injected_timings(tmp_path, monkeypatch, capsys):
    """The whole command with the GPU faked: writes the table, --merge extends it, a failed
    config makes the exit status 1 and is recorded."""
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    out = tmp_path / "tables"
    out.mkdir()
    assert T.main(["--quick", "--ops", "qk", "--out", str(out)], measure=fake_measure) == 0
    path = out / "nvidia-fake-9000.json"
    text = capsys.readouterr().out
    assert f"wrote {path}" in text and "src/qknorm/tuned/nvidia-fake-9000.json" in text
    t = TT.load_table(str(path))
    assert {e.op for e in t.entries.values()} == {"qk_rms_norm"} and t.meta["complete"] is True
    assert t.meta["command"] == f"qknorm tune --quick --ops qk --out {out}"
    n_qk = len(t.entries)

    def failing(p, cfgs):
        # the first config fails where there is another to take its place (some wide rows have
        # one batch-invariant config only)
        return [T.Result(c, None, "boom") if i == 0 and len(cfgs) > 1 else T.Result(c, fake_us(p, c))
                for i, c in enumerate(cfgs)]

    rc = T.main(["--quick", "--ops", "rms", "--out", str(path), "--merge", str(path)], measure=failing)
    assert rc == 1 and "FAILED" in capsys.readouterr().out
    t = TT.load_table(str(path))
    assert len(t.entries) == n_qk + len(T.build_grid(["rms_norm"], quick=True))
    assert t.meta["complete"] is False
    raw = json.loads(path.read_text())
    rms = [e for e in raw["entries"] if e["op"] == "rms_norm"]
    assert any("failed" in e for e in rms) and all("failed" in e for e in rms if len(e["alternatives"]) > 1)
    # a --merge table from another GPU is refused
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA H200", 132))
    assert T.main(["--quick", "--ops", "rms", "--out", str(tmp_path / "x.json"), "--merge", str(path)],
                  measure=fake_measure) == 1
    assert "tuned on NVIDIA Fake 9000" in capsys.readouterr().out


def test_cli_never_overwrites_a_table_silently(tmp_path, monkeypatch, capsys):
    """A table already at the output path is kept: one line naming --merge/--overwrite, exit 2,
    nothing measured or written; --overwrite replaces it."""
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    path = tmp_path / "t.json"
    path.write_text("earlier results")
    calls = []

    def counting(p, cfgs):
        calls.append(p)
        return fake_measure(p, cfgs)

    with pytest.raises(SystemExit) as e:
        T.main(["--quick", "--ops", "qk", "--out", str(path)], measure=counting)
    assert e.value.code == 2 and not calls and path.read_text() == "earlier results"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "--merge" in err[0]
    assert T.main(["--quick", "--ops", "qk", "--out", str(path), "--overwrite"], measure=counting) == 0
    assert calls and TT.load_table(str(path)).entries


def test_cli_deadline_writes_a_partial_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    calls = []
    clock = [0.0]  # a fake clock: only measuring takes time, so a busy machine cannot change the outcome
    monkeypatch.setattr(T.time, "monotonic", lambda: clock[0])

    def slow(p, cfgs):
        calls.append(p)
        clock[0] += 1.0
        return fake_measure(p, cfgs)

    path = tmp_path / "t.json"
    assert T.main(["--quick", "--max-seconds", "0.5", "--out", str(path)], measure=slow) == 0
    t = TT.load_table(str(path))
    assert len(t.entries) == len(calls) == 1 and t.meta["complete"] is False
    assert "skipped (deadline)" in capsys.readouterr().out


# --------------------------------------------------------------------------- the measuring function

def test_measure_rejects_a_wrong_result_before_timing(monkeypatch):
    """The correctness check runs first: a config whose output is wrong is never timed."""
    import qknorm
    m = T.CudaMeasure(device="cpu")
    p = T.GridPoint("rms_norm", "bf16", 64, 16, 16)

    def wrong(x, w, out=None, config=None):
        out.copy_(x)
        return out

    monkeypatch.setattr(qknorm, "rms_norm", wrong)
    (r,) = m(p, [KernelConfig(1, 64, 1)])
    assert r.us is None and "relative L2 error" in r.error


@pytest.mark.parametrize("op", OPS)
def test_measure_cases_check_against_the_reference_on_cpu(op):
    """The checked cases themselves are right (CPU path): a right result passes."""
    m = T.CudaMeasure(device="cpu")
    p = {"qk_rms_norm": T.GridPoint(op, "bf16", 64, 12, 4, (2, 1)),
         "rms_norm": T.GridPoint(op, "fp32", 64, 16, 16),
         "fused_add_rms_norm": T.GridPoint(op, "fp16", 64, 16, 16)}[op]
    reset, run, error = m._case(p)
    reset()
    assert error() != error() or error() > 0.1  # not normalised yet (NaN or far off)
    run(KernelConfig(1, 64, 1))
    assert error() < TOL[DTYPES[p.dtype]]


@pytest.mark.parametrize("op", OPS)
def test_measure_cases_with_each_candidate_kind(impl, op):
    """Every kind of candidate (multi-row, persistent, chunked) passes the tuner's check on
    the real kernels (the Triton interpreter on a CPU)."""
    m = T.CudaMeasure(device=impl)
    d = 64 if op == "qk_rms_norm" else 20000
    p = T.GridPoint(op, "fp32", d, 12 if op == "qk_rms_norm" else 4, 4, (2, 1) if op == "qk_rms_norm" else None)
    kinds = [KernelConfig(4, next_pow2(d) if d <= 16384 else 4096, 2),
             KernelConfig(2, 4096 if d > 4096 else 64, 2, persistent=True, programs_per_sm=1)]
    reset, run, error = m._case(p)
    for c in kinds:
        reset()
        run(c)
        assert error() < TOL[torch.float32], c.name


@pytest.mark.gpu
def test_tune_on_gpu_end_to_end(tmp_path):
    pts = [T.GridPoint("qk_rms_norm", "bf16", 128, 40 * 16, 16, (32, 8)),
           T.GridPoint("rms_norm", "bf16", 4096, 16, 16)]
    run = T.run_tune(pts, T.CudaMeasure(rep_ms=2), device="cuda", log=lambda s: None,
                     candidates=lambda *a: D.candidate_configs(*a)[:3])
    assert not run.failed and len(run.entries) == 2
    for p, e in zip(pts, run.entries):
        n_cands = len(D.candidate_configs(p.op, DTYPES[p.dtype], p.D, p.n_rows, torch.device("cuda"))[:3])
        assert 0.5 < e["us"] < 1000 and len(e["alternatives"]) == n_cands >= 2  # every candidate timed
    path = str(tmp_path / "t.json")
    TT.write_table(path, TT.table_doc(run.entries, gpu=torch.cuda.get_device_name(), sm_count=1, command="test"))
    assert len(TT.load_table(path).entries) == 2


@pytest.mark.gpu
def test_compile_ahead_on_gpu():
    pt = T.GridPoint("qk_rms_norm", "bf16", 128, 40 * 16, 16, (32, 8))
    r = T.compile_ahead([pt], "cuda:0", 2, 600, log=lambda s: None,
                        candidates=lambda *a: D.candidate_configs(*a)[:4])
    assert (r.ran, r.failed, r.finished) == (4, 0, True), r


@pytest.mark.parametrize("out", ["", "/proc/qknorm-table.json"])
def test_an_out_it_cannot_write_is_refused_before_measuring(out, tmp_path, monkeypatch, capsys):
    """`--out ''` and a path in /proc passed the checks (os.access says yes to root), the grid was timed, then the
    save failed with a traceback. Now a usage error before the first measurement."""
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    measured = []

    def measure(p, cfgs):
        measured.append(p)
        return fake_measure(p, cfgs)

    with pytest.raises(SystemExit) as e:
        T.main(["--quick", "--ops", "qk", "--out", out], measure=measure)
    assert e.value.code == 2 and "argument --out" in capsys.readouterr().err and not measured


def test_an_interrupt_is_one_line_and_keeps_the_entries_so_far(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a run printed a KeyboardInterrupt traceback (the table so far was kept): now one line naming
    the table, exit status 130, the entries measured so far on disk and the table marked incomplete."""
    monkeypatch.setattr(T, "_gpu", lambda: (0, "NVIDIA Fake 9000", 132))
    monkeypatch.setattr(D, "sm_count", lambda i: 132)
    calls = []

    def measure(p, cfgs):
        calls.append(p)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_measure(p, cfgs)

    assert T.main(["--quick", "--ops", "qk", "--out", str(tmp_path)], measure=measure) == 130
    err = capsys.readouterr().err
    path = tmp_path / "nvidia-fake-9000.json"
    assert err.count("\n") == 1 and "interrupted" in err and str(path) in err
    t = TT.load_table(str(path))
    assert 0 < len(t.entries) and t.meta.get("complete") is False
