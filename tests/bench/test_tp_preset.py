"""`qknorm bench --preset tp` starts its ranks itself; on a CPU it is a 2-process gloo smoke test
that checks the result against the full-width reference before timing, with the bench's
check, timers and CSV columns."""
import csv

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
    assert float(impls["ours"]["speedup_vs_allgather"]) > 0
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
