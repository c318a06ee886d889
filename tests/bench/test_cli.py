"""`qknorm bench` as a user meets it, on a CPU: the run writes its files, earlier results are
never lost, rows are on disk before anything that can fail, and every mistake in a flag is one
line on stderr with exit status 2 and nothing written."""
import csv
import json
import os

import pytest

from qknorm.bench import cli as B
from qknorm.bench.cli import main
from qknorm.cli import main as qknorm_main

QUICK = ["--quick", "--tokens", "1", "--impl", "qknorm,torch", "--no-plots", "--device", "cpu"]  # the same run on a GPU machine


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _usage_error(argv, capsys):
    """Run ``argv``; it must exit 2 with exactly one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qknorm bench: error: "), err
    return err


def test_cpu_run_without_triton(tmp_path, monkeypatch, capsys):
    """The README's main command on a CPU machine without Triton (the CPU torch wheel does not
    bring it; the `bench` extra does not either): runs, and says Triton is not installed."""
    import json
    import sys
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    out = tmp_path / "r"
    assert main(["--quick", "--tokens", "1", "--impl", "qknorm,torch", "--out", str(out), "--no-plots",
                 "--device", "cpu"]) == 0
    assert json.load(open(out / "meta.json"))["triton"] == "not installed"
    rows = _rows(out / "results.csv")
    assert {r["status"] for r in rows if r["impl"] == "qknorm"} == {"ok"}
    assert {r["status"] for r in rows} <= {"ok", "skipped"}  # torch: no RoPE or cache form (skipped, reason given)
    assert {r["op"] for r in rows if r["impl"] == "qknorm"} >= {"qk", "rms2d", "add", "rope", "addq_token", "prologue"}


def test_quick_cpu_run_writes_csv_summary_meta(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["--quick", "--tokens", "1", "--impl", "qknorm,torch,flashinfer", "--out", str(out), "--no-plots",
               "--device", "cpu"])
    assert rc == 0
    said = capsys.readouterr().out
    assert "CPU paths only" in said
    rows = _rows(out / "results.csv")
    assert {r["impl"] for r in rows} == {"qknorm", "torch", "flashinfer"}
    assert all(r["status"] == "ok" for r in rows if r["impl"] == "qknorm")
    assert all(r["status"] == "ok" or r["op"] in ("rope", "prologue") for r in rows if r["impl"] == "torch")
    assert all(r["status"] == "skipped" and r["reason"].startswith("needs a CUDA GPU; ")
               for r in rows if r["impl"] == "flashinfer")
    assert os.path.exists(out / "summary.md") and os.path.exists(out / "meta.json")
    # --report-only rebuilds the summary from the CSV
    os.remove(out / "summary.md")
    assert main(["--report-only", str(out / "results.csv"), "--no-plots"]) == 0
    assert "## Per case" in open(out / "summary.md").read()


def test_cpu_run_is_called_a_smoke_test_and_prints_no_speedups(tmp_path, capsys):
    assert main(QUICK + ["--out", str(tmp_path / "r")]) == 0
    said = capsys.readouterr().out
    assert "smoke test, not a comparison" in said
    assert "speedup" not in said.replace("no speedups", "") and "facts" not in said
    md = open(tmp_path / "r" / "summary.md").read()
    assert "## CPU run: a smoke test, not a comparison" in md
    assert "Headline" not in md and "speedup" not in md.lower().replace("no speedups", "").replace(
        "without speedups", "")


def test_top_level_cli_dispatches_to_bench(tmp_path):
    assert qknorm_main(["bench"] + QUICK + ["--out", str(tmp_path / "r")]) == 0
    assert _rows(tmp_path / "r" / "results.csv")


# --------------------------------------------------------------------------- results are never lost

def test_second_run_into_the_same_out_refuses_and_keeps_the_first(tmp_path, capsys):
    out = str(tmp_path / "same")
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", out]) == 0
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("results.csv", "summary.md", "meta.json")}
    capsys.readouterr()
    err = _usage_error(QUICK + ["--preset", "llama3-70b", "--out", out], capsys)
    assert "--out" in err and "already holds bench results" in err and "--append" in err and "--overwrite" in err
    assert {n: open(os.path.join(out, n), "rb").read() for n in before} == before


def test_append_adds_rows_beside_the_earlier_ones(tmp_path, capsys):
    out = str(tmp_path / "same")
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", out]) == 0
    first = _rows(os.path.join(out, "results.csv"))
    assert main(QUICK + ["--preset", "llama3-70b", "--out", out, "--append"]) == 0
    rows = _rows(os.path.join(out, "results.csv"))
    assert rows[:len(first)] == first and len(rows) > len(first)
    assert {r["preset"] for r in rows} == {"qwen3-8b", "llama3-70b"}
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert "--preset llama3-70b" in meta["command"]
    assert [e["command"] for e in meta["earlier_runs"]] == [
        "qknorm bench " + " ".join(QUICK + ["--preset", "qwen3-8b", "--out", out])]
    md = open(os.path.join(out, "summary.md")).read()
    assert "qwen3-8b" in md and "llama3-70b" in md and "earlier run" in md


def test_append_refuses_a_csv_of_other_columns(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.csv").write_text("preset,impl,us\nqwen3-8b,qknorm,1.0\n")
    err = _usage_error(QUICK + ["--out", str(out), "--append"], capsys)
    assert "--append" in err and "other columns" in err
    assert (out / "results.csv").read_text() == "preset,impl,us\nqwen3-8b,qknorm,1.0\n"


def test_overwrite_replaces_every_earlier_output(tmp_path, capsys):
    out = tmp_path / "same"
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", str(out)]) == 0
    (out / "plots").mkdir()
    (out / "plots" / "old.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")  # not a bench output: left alone
    assert main(QUICK + ["--preset", "llama3-70b", "--out", str(out), "--overwrite"]) == 0
    assert {r["preset"] for r in _rows(out / "results.csv")} == {"llama3-70b"}
    assert not (out / "plots").exists() and (out / "notes.txt").read_text() == "mine"


def test_rows_are_on_disk_before_the_report_runs(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("plotting exploded")
    monkeypatch.setattr(B, "_write_report", broken)
    assert main(QUICK + ["--out", str(tmp_path / "r")]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("qknorm bench: writing the report failed") and "plotting exploded" in last
    assert "results.csv" in last
    rows = _rows(tmp_path / "r" / "results.csv")
    assert rows and {r["impl"] for r in rows} == {"qknorm", "torch"}


def _fail_on_second_case(monkeypatch, exc):
    real = B.Runner.run_case
    seen = []

    def run_case(self, case, tick=lambda: None):
        seen.append(case)
        if len(seen) == 2:
            raise exc
        return real(self, case, tick)
    monkeypatch.setattr(B.Runner, "run_case", run_case)


def test_an_interrupted_run_keeps_every_row_so_far(tmp_path, capsys, monkeypatch):
    _fail_on_second_case(monkeypatch, KeyboardInterrupt())
    out = tmp_path / "r"
    assert main(QUICK + ["--out", str(out)]) == 130
    rows = _rows(out / "results.csv")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}  # the first case: qknorm and torch
    meta = json.load(open(out / "meta.json"))
    assert meta["status"] == "interrupted after 2 rows (kept)"
    assert "interrupted" in capsys.readouterr().err and (out / "summary.md").exists()


def test_a_crashed_run_keeps_every_row_so_far(tmp_path, capsys, monkeypatch):
    _fail_on_second_case(monkeypatch, RuntimeError("a bug"))
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="a bug"):
        main(QUICK + ["--out", str(out)])
    assert len(_rows(out / "results.csv")) == 2
    assert json.load(open(out / "meta.json"))["status"].startswith("crashed after 2 rows (kept): RuntimeError")


# --------------------------------------------------------------------------- one line per mistake

BAD = [  # argv, words the line must hold (the flag, the value, what is allowed)
    (["--quick", "--impl", "bogus"], ["--impl", "'bogus'", "torch_rms_norm", "flashinfer"]),
    (["--quick", "--exclude", "*"], ["--exclude", "'*'", "leave no implementation"]),
    (["--quick", "--device", "cpu", "--impl", "qknorm[nope]"], ["--impl", "'qknorm[nope]'", "CUDA GPU only"]),
    (["--quick", "--impl", "qknorm,bogus"], ["--impl", "'bogus'"]),
    (["--quick", "--exclude", "nothing-like-this"], ["--exclude", "'nothing-like-this'"]),
    (["--preset", "qwen9"], ["--preset", "'qwen9'", "qwen3-8b", "tp", "all"]),
    (["--device", "bogus"], ["--device", "'bogus'", "cuda, cuda:N or cpu"]),
    (["--device", "mps"], ["--device", "'mps'", "cuda, cuda:N or cpu"]),
    (["--preset", "tp", "--tp", "1"], ["--tp", "1", ">= 2"]),
    (["--preset", "tp", "--tp", "0"], ["--tp", "0", ">= 2"]),
    (["--preset", "tp", "--tp", "-2"], ["--tp", "-2", ">= 2"]),
    (["--tp", "2"], ["--tp", "--preset tp"]),
    (["--preset", "tp", "--tp", "3"], ["--tp", "3", "power of two"]),
    (["--quick", "--tokens", "1024"], ["--tokens", "1024", "at most 64"]),
    (["--tokens", "abc"], ["--tokens", "'abc'"]),
    (["--tokens", "0"], ["--tokens", "'0'", ">= 1"]),
    (["--dtype", "fp8"], ["--dtype", "'fp8'", "bf16"]),
    (["--append", "--overwrite"], ["--overwrite", "--append"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_flag_is_one_line_exit_2_and_nothing_written(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _usage_error(argv + ["--out", str(tmp_path / "out")], capsys)
    for w in words:
        assert w in err, (w, err)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(B.torch.cuda.is_available(), reason="checks the no-GPU answers")
@pytest.mark.parametrize("argv,words", [(["--device", "cuda"], ["--device", "'cuda'", "--device cpu"]),
                                        (["--mode", "graph"], ["--mode", "'graph'", "eager"]),
                                        (["--mode", "both"], ["--mode", "'both'"]),
                                        (["--cold-l2"], ["--cold-l2", "CUDA"]),
                                        (["--variants", "all"], ["--variants", "'all'", "CUDA"]),
                                        (["--variants", "top"], ["--variants", "'top'", "CUDA"])])
def test_gpu_only_flags_on_a_cpu(argv, words, tmp_path, capsys):
    err = _usage_error(argv + ["--out", str(tmp_path / "out")], capsys)
    assert all(w in err for w in words), err
    assert os.listdir(tmp_path) == []


def test_triton_backend_on_a_cpu_without_the_interpreter_is_refused(tmp_path, capsys, monkeypatch):
    """Every qknorm row would be an error (the kernels cannot run on CPU tensors without the interpreter):
    refused up front, nothing written, instead of a 'complete' run without qknorm rows."""
    import qknorm
    from qknorm import backend

    monkeypatch.setattr(backend, "interpreter_on", lambda: False)
    with qknorm.use_backend("triton"):
        err = _usage_error(QUICK + ["--out", str(tmp_path / "out")], capsys)
    assert "QKNORM_BACKEND=triton" in err and "TRITON_INTERPRET=1" in err, err
    assert os.listdir(tmp_path) == []


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("x")
    err = _usage_error(QUICK + ["--out", str(f)], capsys)
    assert "--out" in err and str(f) in err and "is a file" in err
    err = _usage_error(QUICK + ["--out", str(f / "sub")], capsys)
    assert "--out" in err and "is a file" in err
    assert os.listdir(tmp_path) == ["results.txt"]


def test_out_in_a_folder_it_cannot_write(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then fake the permission check
        ro.chmod(0o555)
    else:
        real = os.access
        monkeypatch.setattr(B.os, "access", lambda p, m: False if os.path.abspath(p) == str(ro) else real(p, m))
    try:
        err = _usage_error(QUICK + ["--out", str(ro / "run")], capsys)
        assert "--out" in err and "cannot write" in err and "permission denied" in err
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- --report-only

def test_report_only_writes_next_to_the_csv_never_into_the_cwd(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(QUICK + ["--out", str(out)]) == 0
    os.remove(out / "summary.md")
    meta = (out / "meta.json").read_bytes()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["--report-only", str(out / "results.csv"), "--no-plots"]) == 0
    assert (out / "summary.md").exists() and os.listdir(cwd) == []
    assert (out / "meta.json").read_bytes() == meta  # the run's record is read, not rewritten
    # --out puts the rebuilt report elsewhere on purpose
    assert main(["--report-only", str(out / "results.csv"), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.md").exists()


def test_report_only_refuses_what_is_not_a_bench_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# qknorm\n\nTriton kernels, a, b, c\n" * 40)
    err = _usage_error(["--report-only", str(readme)], capsys)
    assert "--report-only" in err and "not a qknorm bench results CSV" in err
    err = _usage_error(["--report-only", str(tmp_path / "missing.csv")], capsys)
    assert "--report-only" in err and "missing.csv" in err and "no such file" in err
    err = _usage_error(["--report-only", str(readme), "--preset", "seed"], capsys)
    assert "--preset" in err
    assert os.listdir(tmp_path) == ["README.md"]


# --------------------------------------------------------------------------- found by trying it again (issue 14)

def test_an_interrupt_inside_a_case_keeps_its_rows_in_the_report_too(tmp_path, capsys, monkeypatch):
    """Ctrl-C between two implementations of one case: the row already measured is in the CSV
    and in the summary and the console count (they used to hold only finished cases)."""
    real, calls = B.Runner._run_impl, []

    def run_impl(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(B.Runner, "_run_impl", run_impl)
    out = tmp_path / "r"
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", str(out)]) == 130
    rows = _rows(out / "results.csv")
    assert len(rows) == 1
    said = capsys.readouterr().out
    assert f"results.csv ({len(rows)} rows)" in said
    assert f"### {rows[0]['preset']} · {rows[0]['group']}" in (out / "summary.md").read_text()


def test_an_interrupt_while_the_report_is_written_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(B, "summary_markdown", interrupted)
    out = tmp_path / "r"
    try:
        rc = main(QUICK + ["--out", str(out)])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped main() (a traceback for the user)")
    assert rc == 130
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("qknorm bench: interrupted while writing the report") and "--report-only" in last
    assert _rows(out / "results.csv")
    assert json.load(open(out / "meta.json"))["status"] == "complete"  # the record is written first


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_where_the_system_refuses_writes_even_to_root(tmp_path, capsys):
    """os.access says yes to root everywhere; /proc refuses new entries to everyone."""
    err = _usage_error(QUICK + ["--out", "/proc/qknorm-bench-test"], capsys)
    assert "--out" in err and "'/proc/qknorm-bench-test'" in err and "cannot write in /proc" in err


def test_out_on_a_read_only_filesystem(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # the write probe's (qknorm.cli.write_probe)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.chdir(tmp_path)
    for out in (tmp_path / "new", tmp_path):  # a folder to create, and one that exists
        err = _usage_error(QUICK + ["--out", str(out)], capsys)
        assert "--out" in err and "Read-only file system" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv,words", [
    (["--out", ""], ["--out", "''", "empty"]),
    (["--out", " "], ["--out", "' '", "empty"]),
    (["--report-only", ""], ["--report-only", "''", "empty"]),
    (["--impl", ","], ["--impl", "','", "names no implementation"]),
    (["--exclude", " , "], ["--exclude", "' , '", "names no implementation"]),
    (["--impl", ""], ["--impl", "''", "names no implementation"]),
    (["--exclude", ""], ["--exclude", "''", "names no implementation"]),
    (["--tokens", ""], ["--tokens", "''", "empty"]),
    (["--device", ""], ["--device", "''", "empty"]),
    (["--seed", str(10**23)], ["--seed", "2**63"]),
])
def test_an_empty_value_is_a_mistake_not_the_default(argv, words, tmp_path, capsys, monkeypatch):
    """`--out ''` used to write to the default folder and `--report-only ''` ran a whole bench."""
    monkeypatch.chdir(tmp_path)
    err = _usage_error(argv if "--report-only" in argv else ["--quick"] + argv, capsys)
    assert all(w in err for w in words), err
    assert os.listdir(tmp_path) == []


def test_report_only_given_a_folder_names_its_csv(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(QUICK + ["--out", str(out)]) == 0
    capsys.readouterr()
    before = sorted(os.listdir(out))
    err = _usage_error(["--report-only", str(out)], capsys)
    assert "--report-only" in err and "is a folder" in err and str(out / "results.csv") in err
    assert sorted(os.listdir(out)) == before


def test_report_only_of_a_cpu_csv_without_its_meta_is_still_a_smoke_test(tmp_path, capsys):
    """A CPU results.csv copied away from its meta.json: the rebuilt summary states no speedups."""
    assert main(QUICK + ["--out", str(tmp_path / "run")]) == 0
    lone = tmp_path / "lone"
    lone.mkdir()
    os.replace(tmp_path / "run" / "results.csv", lone / "results.csv")
    assert main(["--report-only", str(lone / "results.csv"), "--no-plots"]) == 0
    md = (lone / "summary.md").read_text()
    assert "## CPU run: a smoke test, not a comparison" in md and "Headline" not in md


def test_presets_each_once_and_all_inside_a_list():
    p = B.parser()
    assert B._presets(p, "qwen3-8b,qwen3-8b") == ["qwen3-8b"]
    assert B._presets(p, "all,tp") == list(B.PRESETS) + ["tp"]
    assert B._presets(p, "rope,all") == ["rope"] + [x for x in B.PRESETS if x != "rope"]


_TP_SCRIPT = r'''
import pathlib, subprocess, sys
from qknorm.bench import cli as B, tp
ready, got, out, mode = sys.argv[1:5]
CHILD = """
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("ready")
end = time.monotonic() + 600  # a bound (a slow machine must not end it first), not a speed
try:
    while time.monotonic() < end:
        time.sleep(0.01)
except KeyboardInterrupt:
    pathlib.Path(sys.argv[2]).write_text("SIGINT")
    sys.exit(130)
"""
tp.launch = lambda *a, **k: subprocess.call([sys.executable, "-c", CHILD, ready, got],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if mode == "noproc":
    B._child_pids = lambda: []
sys.exit(B.main(["--preset", "tp", "--tp", "2", "--device", "cpu", "--out", out]))
'''


@pytest.mark.skipif(not hasattr(os, "getpgrp"), reason="POSIX signals")
@pytest.mark.parametrize("mode", ["proc", "noproc"])
def test_a_signal_to_a_tp_run_stops_its_ranks_in_one_line(mode, tmp_path):
    """SIGTERM (a scheduler, `kill`) to `qknorm bench --preset tp`: the launcher is told (SIGINT,
    so the ranks keep their rows), and the bench says so in one line, exit 130. It used to die
    alone (SIGTERM) or with a traceback (SIGINT), leaving the ranks running. Without /proc the
    launcher is stopped as before, still in one line."""
    import signal
    import subprocess
    import sys
    import time
    ready, got = tmp_path / "ready", tmp_path / "got"
    proc = subprocess.Popen([sys.executable, "-c", _TP_SCRIPT, str(ready), str(got), str(tmp_path / "out"), mode],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 1200  # hang guard only: the child writes `ready` once it starts
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.communicate(timeout=600)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=1200)  # hang guard only
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1].startswith("qknorm bench: interrupted (SIG") and "tp.csv" in err, err
    assert "Traceback" not in err
    if mode == "proc":
        assert got.read_text() == "SIGINT"  # the launcher was told, not killed


def test_cpu_console_names_each_case_once_and_sets_the_trap_apart(tmp_path, capsys):
    """Whole case names (the preset not said twice), the flattening trap as one "by design" line (not as a
    failure), the implementations that ran nowhere grouped by reason."""
    assert main(["--quick", "--tokens", "1", "--impl", "qknorm,torch_flat2d,flashinfer*", "--out", str(tmp_path / "r"),
                 "--no-plots", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "rope Hq=16 Hkv=2 D=256 rotary=64 neox bf16 " in said and "rope rope" not in said
    assert "prologue Hq=32 Hkv=8 D=128 rotary=128 neox cache=e4m3 bs=16 bf16 " in said
    assert "wrong:" not in said and "by design: torch_flat2d computes a different function" in said
    assert "flashinfer, flashinfer_copy2d" in said and said.count("needs a CUDA GPU") == 1
    summary = open(tmp_path / "r" / "summary.md").read()
    assert "## A different function by design" in summary and "## Failed the correctness gate" not in summary


def test_a_trap_that_raises_is_an_error_not_a_design_note(tmp_path, capsys, monkeypatch):
    from qknorm.bench.peers import pytorch

    def boom(self, case, inp):
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(pytorch.FlattenedTrap, "build", boom)
    assert main(["--quick", "--tokens", "1", "--impl", "qknorm,torch_flat2d", "--out", str(tmp_path / "r"),
                 "--no-plots", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "error: torch_flat2d" in said and "simulated crash" in said and "by design" not in said
    assert "## Failed the correctness gate or raised" in open(tmp_path / "r" / "summary.md").read()


def test_quick_with_one_token_count_runs_each_case_once(tmp_path, capsys):
    assert main(["--quick", "--tokens", "1", "--impl", "qknorm", "--out", str(tmp_path / "r"), "--no-plots",
                 "--device", "cpu"]) == 0
    keys = [(r["group"], r["tokens"]) for r in _rows(tmp_path / "r" / "results.csv")]
    assert len(keys) == len(set(keys)) == 8  # 2 QK, full-width QK, 2D, add, RoPE, quantised, prologue


def test_append_after_a_cut_off_last_line_starts_a_line_of_its_own(tmp_path, capsys):
    """A run that died mid-row (a full disk) left a CSV ending in half a line; --append glued its first row onto
    it, and the CSV could no longer be read. The cut-off line is moved to results.csv.cut, the rows go on after the
    last whole one, and the report rebuilds."""
    out = str(tmp_path / "r")
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", out]) == 0
    path = os.path.join(out, "results.csv")
    whole = _rows(path)
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 40)
    assert main(QUICK + ["--preset", "llama3-70b", "--out", out, "--append"]) == 0
    assert "cut-off line" in capsys.readouterr().err
    rows = _rows(path)
    assert rows[:len(whole) - 1] == whole[:-1] and {r["preset"] for r in rows} == {"qwen3-8b", "llama3-70b"}
    assert all(r["tokens"].isdigit() for r in rows)
    assert os.path.getsize(path + ".cut") > 0
    assert main(["--report-only", path, "--no-plots"]) == 0


def test_report_only_into_another_runs_folder_is_refused(tmp_path, capsys):
    """--report-only replaced the summary of the run in --out with a report of another CSV."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", a]) == 0
    assert main(QUICK + ["--preset", "llama3-70b", "--out", b]) == 0
    before = open(os.path.join(b, "summary.md"), "rb").read()
    capsys.readouterr()
    err = _usage_error(["--report-only", os.path.join(a, "results.csv"), "--no-plots", "--out", b], capsys)
    assert "another run" in err
    assert open(os.path.join(b, "summary.md"), "rb").read() == before


def test_a_second_run_creating_the_same_csv_at_once_writes_nothing(tmp_path, capsys, monkeypatch):
    """Two benches started together on one new folder both passed the --out check, and the second replaced the
    first's rows. The CSV is created exclusively: the one that comes second stops without writing."""
    out = str(tmp_path / "r")
    real = B._run_cases

    def racing(a, argv, plan):  # the other run creates the CSV between this run's check and its first row
        with open(os.path.join(plan.out, "results.csv"), "w") as f:
            f.write("the other run's rows\n")
        return real(a, argv, plan)

    monkeypatch.setattr(B, "_run_cases", racing)
    assert main(QUICK + ["--preset", "qwen3-8b", "--out", out]) == 2
    assert "appeared after this run checked --out" in capsys.readouterr().err
    assert open(os.path.join(out, "results.csv")).read() == "the other run's rows\n"


def test_overwrite_where_an_output_name_is_a_folder_is_a_usage_error(tmp_path, capsys):
    """--overwrite on a folder whose results.csv (or meta.json) is a directory ended in an IsADirectoryError
    traceback after writing an empty CSV."""
    for name in ("results.csv", "meta.json"):
        out = tmp_path / name.split(".")[0]
        (out / name).mkdir(parents=True)
        err = _usage_error(QUICK + ["--out", str(out), "--overwrite"], capsys)
        assert name in err and "not a file" in err
        assert sorted(os.listdir(out)) == [name]
