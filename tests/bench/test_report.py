"""Summary arithmetic on synthetic rows: speedups, facts, regret, thresholds."""
from qknorm.config import config_from_name
from qknorm.bench.report import facts, losses, regret, speedups, summary_markdown, thresholds, timed, winning_ranges


def _row(impl, family, t, us, preset="qwen3-8b", group="qk Hq=32 Hkv=8 D=128 bf16", mode="graph", pct=50.0):
    return dict(preset=preset, group=group, mode=mode, tokens=str(t), impl=impl, family=family, status="ok",
                us=str(us), pct_copy=str(pct), gbps="1", config="cfg", reason="")


def _rows():
    rows = []
    for t, q, fi, v1, v2 in [(1, 1.0, 2.0, 1.0, 1.5), (4096, 10.0, 12.0, 9.0, 10.0), (16384, 40.0, 41.0, 40.0, 60.0)]:
        rows += [_row("qknorm", "qknorm", t, q, pct=98.0 if t == 16384 else 50.0),
                 _row("flashinfer", "peer", t, fi), _row("torch", "peer", t, 5 * fi),
                 _row("contiguous_copy", "copy", t, 0.1), _row("torch_flat2d", "trap", t, 0.01),
                 _row("qknorm[r1.p4]", "qknorm-variant", t, v1), _row("qknorm[r2]", "qknorm-variant", t, v2)]
    return rows


def test_speedup_uses_best_peer_only():
    sp = speedups(timed(_rows())[("qwen3-8b", "qk Hq=32 Hkv=8 D=128 bf16", "graph")])
    assert sp[1][:2] == (2.0, "flashinfer")  # copy and trap rows are not peers
    assert abs(sp[4096][0] - 1.2) < 1e-9


def test_regret_and_thresholds():
    tab = timed(_rows())[("qwen3-8b", "qk Hq=32 Hkv=8 D=128 bf16", "graph")]
    rg = regret(tab)
    assert abs(rg[4096][0] - (10 / 9 - 1)) < 1e-9 and rg[1][0] == 0.0
    th = thresholds(tab)
    assert th[0][1] == "qknorm[r1.p4]" and abs(th[0][2] - 1.5) < 1e-9
    rec = winning_ranges(th)
    assert rec[0].startswith("T 1..16384") and "qknorm[r1.p4]" in rec[0]


def test_facts_state_speedups_losses_and_bandwidth_not_targets():
    lines = facts(_rows())
    qk = next(line for line in lines if "qwen3-8b" in line)
    # geomean of (2.0, 1.2, 1.025); lowest 1.025 at T=16384 vs flashinfer; 98% of copy at T=16384
    assert "geomean 1.35x" in qk and "lowest 1.02x at T=16384 (vs flashinfer)" in qk
    assert "faster at every T measured" in qk and "98.0% of copy bandwidth at T=16384" in qk
    slow = [dict(r, us="100") if r["impl"] == "qknorm" else r for r in _rows()]
    assert "slower at T=1,4096,16384" in next(line for line in facts(slow) if "qwen3-8b" in line)
    lost = losses(slow)
    assert [x[3] for x in lost] == [1, 4096, 16384] and lost[0][5] == "flashinfer"  # slowest ratio first
    assert "## Where qknorm is slower than the best peer" in summary_markdown(slow, {"device": "X"})
    assert "slower than the best peer" not in summary_markdown(_rows(), {"device": "X"})
    md = summary_markdown(_rows(), {"device": "X"})
    assert "## Facts" in md and "target" not in md.lower() and "met**" not in md
    assert "recommend" not in md.lower() and "fine" not in md.lower()  # facts, not advice


def test_persistent_variant_is_not_matched_by_pdl():
    rows = [_row("qknorm", "qknorm", 1, 1.0), _row("qknorm[r1.b128.w4.pdl]", "qknorm-variant", 1, 1.0),
            _row("qknorm[r1.b128.w4.p4]", "qknorm-variant", 1, 2.0)]
    th = thresholds(timed(rows)[("qwen3-8b", "qk Hq=32 Hkv=8 D=128 bf16", "graph")])
    assert th[0][3] == "qknorm[r1.b128.w4.p4]" and abs(th[0][4] - 0.5) < 1e-9  # plain (.pdl) / persistent


def test_summary_mentions_the_trap_and_problems():
    rows = _rows() + [dict(_row("liger", "peer", 1, 0), status="wrong", us="", reason="rel L2 error 1e+00")]
    md = summary_markdown(rows, {"device": "X", "command": "qknorm bench"})
    assert "different function" in md and "Dispatch regret" in md
    assert "| liger | wrong | rel L2 error" in md


def test_variant_kind_comes_from_the_config_fields():
    assert config_from_name("qknorm[r1.b128.w4.pdl]").persistent is False
    cfg = config_from_name("r16.b128.w4.p2.tok.pdl")
    assert cfg.persistent and cfg.programs_per_sm == 2 and cfg.token_order and cfg.pdl
    assert config_from_name("r1.b128.w4.p4").name == "r1.b128.w4.p4"
    for foreign in ("torch", "r3.b128.w4", "qknorm[r1.p4]", "r1.b128.w4.p4.extra"):
        assert config_from_name(foreign) is None, foreign
    # a token-ordered config is neither the best persistent nor the best plain grid
    rows = [_row("qknorm", "qknorm", 1, 1.0), _row("qknorm[r1.b128.w4.tok]", "qknorm-variant", 1, 0.5),
            _row("qknorm[r1.b128.w4.p4]", "qknorm-variant", 1, 2.0)]
    th = thresholds(timed(rows)[("qwen3-8b", "qk Hq=32 Hkv=8 D=128 bf16", "graph")])
    assert th[0][1] == "qknorm[r1.b128.w4.tok]" and th[0][3] == "qknorm[r1.b128.w4.p4]" and th[0][4] is None


def test_a_noop_copy_row_from_older_results_is_labelled_not_timed():
    """Older CSVs hold a `contiguous_copy` time at T=1 where the views were already contiguous
    (a no-op): the per-case table says `no-op`, never a time, and no comparison uses it."""
    rows = _rows()
    for r in rows:
        r["contiguous"] = "True" if r["tokens"] == "1" else "False"
    md = summary_markdown(rows, {"device": "X"})
    table = md[md.index("### qwen3-8b"):]
    t1 = next(line for line in table.splitlines() if line.startswith("| 1 |"))
    t4096 = next(line for line in table.splitlines() if line.startswith("| 4096 |"))
    names = next(line for line in table.splitlines() if line.startswith("| T |")).split(" | ")
    col = names.index("contiguous_copy")
    assert t1.split(" | ")[col] == "no-op" and t4096.split(" | ")[col] == "0.10"
    assert "contiguous_copy" not in timed(rows)[("qwen3-8b", "qk Hq=32 Hkv=8 D=128 bf16", "graph")][1]


def test_a_cpu_summary_is_a_smoke_test_without_speedups():
    cpu = summary_markdown(_rows(), {"device": "cpu"})
    assert "## CPU run: a smoke test, not a comparison" in cpu
    for gone in ("Headline", "## Facts", "Dispatch regret", "best peer", "x |", "geomean"):
        assert gone not in cpu, gone
    assert "| 1 | 1.00 | 2.00 |" in cpu  # the times as measured are still there
    gpu = summary_markdown(_rows(), {"device": "NVIDIA H100"})
    assert "Headline" in gpu and "2.00x" in gpu and "smoke test" not in gpu


def test_a_cpu_csv_without_its_meta_is_still_a_smoke_test():
    """No device in meta (a CSV rebuilt without its meta.json): the qknorm rows' `CPU: ...` config
    reason tells a CPU run, and no speedups are stated."""
    from qknorm.bench.report import is_smoke
    rows = _rows()
    for r in rows:
        r["config_reason"] = "CPU: PyTorch path" if r["impl"] == "qknorm" else ""
    assert is_smoke({}, rows) and not is_smoke({"device": "NVIDIA H100"}, rows)
    md = summary_markdown(rows, {})
    assert "## CPU run: a smoke test, not a comparison" in md and "Headline" not in md
    assert not is_smoke({}, _rows()) and "Headline" in summary_markdown(_rows(), {})


def test_cpu_plots_are_titled_a_smoke_test(tmp_path, monkeypatch):
    import pytest
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from qknorm.bench.report import plot
    titles = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append(t) or real(self, t, *a, **k))
    assert plot(_rows(), str(tmp_path), smoke=True)
    assert titles and all("CPU smoke test" in t and "not a comparison" in t for t in titles)
    titles.clear()
    assert plot(_rows(), str(tmp_path))
    assert titles and not any("smoke" in t for t in titles)
