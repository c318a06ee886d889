"""`qknorm bench --preset tp` starts its ranks itself; on a CPU it is a 2-process gloo smoke test
that checks the result against the full-width reference before timing."""
import csv

import torch

from qknorm.bench.cli import main


def test_tp_preset_runs_two_ranks_and_writes_csv(tmp_path):
    if torch.cuda.device_count() == 1:
        import pytest
        pytest.skip("one GPU: the tp preset needs two")
    assert main(["--preset", "tp", "--tokens", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "tp.csv")))
    impls = {r["impl"]: r for r in rows}
    assert set(impls) == {"ours", "allgather", "allgather-1", "comm-ours", "comm-allgather"}
    # one fp32 sum per row of Q and of K crosses the link instead of the activations
    assert int(impls["ours"]["payload_bytes_per_rank"]) * 100 < int(impls["allgather"]["payload_bytes_per_rank"])
