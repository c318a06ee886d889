"""The README's main job runs on a CPU-only machine and writes its files."""
import csv
import os

from qknorm.bench.cli import main
from qknorm.cli import main as qknorm_main


def test_quick_cpu_run_writes_csv_summary_meta(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["--quick", "--tokens", "1", "--impl", "qknorm,torch,flashinfer", "--out", str(out), "--no-plots",
               "--device", "cpu"])
    assert rc == 0
    said = capsys.readouterr().out
    assert "CPU paths only" in said and "GPU figures need a GPU" in said
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["impl"] for r in rows} == {"qknorm", "torch", "flashinfer"}
    assert all(r["status"] == "ok" for r in rows if r["impl"] != "flashinfer")
    assert all(r["status"] == "skipped" and r["reason"].startswith("needs a CUDA GPU; ")
               for r in rows if r["impl"] == "flashinfer")
    assert os.path.exists(out / "summary.md") and os.path.exists(out / "meta.json")
    # --report-only rebuilds the summary from the CSV
    os.remove(out / "summary.md")
    assert main(["--report-only", str(out / "results.csv"), "--no-plots"]) == 0
    assert "Headline" in open(out / "summary.md").read()


def test_top_level_cli_dispatches_to_bench(tmp_path):
    assert qknorm_main(["bench", "--quick", "--tokens", "1", "--impl", "torch", "--out", str(tmp_path),
                        "--no-plots"]) == 0


def test_unknown_preset_is_a_clear_error(tmp_path):
    import pytest
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["--preset", "qwen9", "--out", str(tmp_path)])
