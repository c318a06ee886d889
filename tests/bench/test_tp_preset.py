"""`qknorm bench --preset tp` starts its ranks itself; on a CPU it is a 2-process gloo smoke test
that checks the result against the full-width reference before timing, with the bench's
check, timers and CSV columns."""
import csv
import json

import pytest
import torch

from qknorm.bench.cli import main
from qknorm.bench.runner import COLUMNS
from qknorm.bench.tp import TP_COLUMNS


def test_tp_preset_runs_two_ranks_and_writes_csv(tmp_path):
    if torch.cuda.device_count() == 1:
        import pytest
        pytest.skip("one GPU: the tp preset needs two")
    assert main(["--preset", "tp", "--tokens", "1", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "tp.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == tuple(COLUMNS) + tuple(TP_COLUMNS)  # the bench's columns first
        rows = list(reader)
    impls = {r["impl"]: r for r in rows}
    assert set(impls) == {"ours", "allgather", "allgather-1", "comm-ours", "comm-allgather"}
    assert all(r["status"] == "ok" and float(r["us"]) > 0 and r["preset"] == "tp" for r in rows)
    # the norms were checked against the full-width fp32 reference (bf16 tolerance 1e-2); the collectives are not
    for name in ("ours", "allgather", "allgather-1"):
        assert float(impls[name]["rel_err"]) < 1e-2
    assert impls["comm-ours"]["rel_err"] == "" and impls["comm-ours"]["family"] == "comm"
    assert impls["ours"]["family"] == "qknorm" and impls["allgather"]["family"] == "peer"
    cuda = torch.cuda.is_available()
    # a ratio on GPUs; none from a CPU smoke test (gloo times are not a comparison)
    assert (float(impls["ours"]["speedup_vs_allgather"]) > 0) if cuda else impls["ours"]["speedup_vs_allgather"] == ""
    # what the run was sits beside its table
    meta = json.loads((tmp_path / "tp-meta.json").read_text())
    assert meta["status"] == "complete" and meta["tp"] == 2 and meta["date"].endswith("UTC")
    assert meta["command"] == f"qknorm bench --preset tp --tokens 1 --out {tmp_path}"
    assert meta["device"] == (f"2 x {torch.cuda.get_device_name(0)}" if cuda else "2 gloo CPU processes")
    assert {"torch", "triton", "qknorm"} <= set(meta)
    # one fp64 sum per row of Q and of K crosses the link instead of the activations
    assert int(impls["ours"]["payload_bytes_per_rank"]) == 16
    assert int(impls["ours"]["payload_bytes_per_rank"]) * 100 < int(impls["allgather"]["payload_bytes_per_rank"])


def test_tp_check_uses_the_bench_gate_arithmetic():
    from qknorm.bench.check import verdict, worst_error
    ref = (torch.ones(2, 4), torch.ones(2, 4))
    err, why = worst_error((torch.ones(2, 4), torch.full((2, 4), 1.5)), ref)
    assert why == "" and abs(err - 0.5) < 1e-12
    assert not verdict(err, torch.bfloat16).ok and verdict(0.0, torch.bfloat16).ok
    err, why = worst_error((torch.ones(2, 4),), ref)
    assert err == float("inf") and "expected 2" in why


# --------------------------------------------------------------------------- rows kept on an interrupt or a crash

def _one_rank(monkeypatch):
    """A one-process gloo group for ``tp.main`` in this process (the rows, not the speed, are checked)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1").items():
        monkeypatch.setenv(k, v)


def _argv(path):
    return ["--tokens", "1", "2", "--inner", "1", "--reps", "1", "--trials", "1", "--out", str(path)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="one gloo rank on the CPU")
def test_tp_interrupt_keeps_every_row_measured(tmp_path, monkeypatch, capsys):
    from qknorm.bench import tp
    _one_rank(monkeypatch)
    real, calls = tp.time_impl, []

    def time_impl(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(tp, "time_impl", time_impl)
    assert tp.main(_argv(tmp_path / "tp.csv")) == 130
    assert not torch.distributed.is_initialized()
    with open(tmp_path / "tp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["impl"] for r in rows] == ["allgather", "ours"] and all(r["status"] == "ok" for r in rows)
    assert "interrupted; the 2 rows measured are kept" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="one gloo rank on the CPU")
def test_tp_crash_keeps_every_row_measured(tmp_path, monkeypatch, capsys):
    from qknorm.bench import tp
    _one_rank(monkeypatch)
    real = tp.Shard.check

    def check(self):
        if self.t == 2:
            raise RuntimeError("a bug at T=2")
        return real(self)
    monkeypatch.setattr(tp.Shard, "check", check)
    with pytest.raises(RuntimeError, match="a bug at T=2"):
        tp.main(_argv(tmp_path / "tp.csv"))
    assert not torch.distributed.is_initialized()
    with open(tmp_path / "tp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(tp.IMPLS) and {r["tokens"] for r in rows} == {"1"}  # all of T=1, kept
    assert "crashed; the 5 rows measured are kept" in capsys.readouterr().err


def test_tp_preset_refuses_a_second_run_into_the_same_out(tmp_path, capsys):
    (tmp_path / "tp.csv").write_text("kept\n")
    with pytest.raises(SystemExit) as e:
        main(["--preset", "tp", "--tokens", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tp.csv" in err and "--append" in err and "--overwrite" in err
    assert (tmp_path / "tp.csv").read_text() == "kept\n"


def test_report_only_refuses_the_tp_table(tmp_path, capsys):
    """tp.csv is the tp preset's own report: --report-only on it would write an empty, mislabelled summary."""
    header = ",".join(tuple(COLUMNS) + tuple(TP_COLUMNS))
    (tmp_path / "tp.csv").write_text(header + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--report-only", str(tmp_path / "tp.csv")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tp preset" in err and "results.csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tp.csv"]


def test_tp_append_refuses_another_devices_results(tmp_path, capsys):
    """As a case run's --append: one folder holds one device's tp results; tp-meta.json says which."""
    header = ",".join(tuple(COLUMNS) + tuple(TP_COLUMNS))
    (tmp_path / "tp.csv").write_text(header + "\n")
    (tmp_path / "tp-meta.json").write_text(json.dumps({"device": "2 x NVIDIA H100 80GB HBM3", "status": "complete"}))
    with pytest.raises(SystemExit) as e:
        main(["--preset", "tp", "--tokens", "1", "--device", "cpu", "--out", str(tmp_path), "--append"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 x NVIDIA H100 80GB HBM3" in err and "2 gloo CPU processes" in err
    assert (tmp_path / "tp.csv").read_text() == header + "\n"
