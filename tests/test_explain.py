"""``qknorm.explain`` and ``qknorm explain``: the pick, the table entry or heuristic rule
behind it, the measured alternatives, and the layout/backend lines."""
import re
import sys

import pytest
import torch
from helpers import packed_qkv
from test_dispatch import clean  # noqa: F401 - autouse: no user table, fresh dispatcher caches

import qknorm
from qknorm import cli
from qknorm import tune as T
from qknorm import tuned_table as TT
from qknorm.config import KernelConfig
from qknorm.explain import explain_config

PICK = KernelConfig(rows=8, block_d=128, num_warps=2)
# Measured times of the qk entry (T=512 tokens x 40 heads = 20480 rows, bucket 32768).
TIMES = {PICK: 3.46, KernelConfig(16, 128, 4): 3.50, KernelConfig(32, 128, 4): 3.66,
         KernelConfig(4, 128, 1): 3.80, KernelConfig(2, 128, 1): 4.10, KernelConfig(1, 128, 1): 6.92,
         KernelConfig(64, 128, 8): 5.00}


@pytest.fixture
def table_path(tmp_path):
    pts = [T.GridPoint("qk_rms_norm", "bf16", 128, 20480, 512, (32, 8)),
           T.GridPoint("rms_norm", "bf16", 4096, 16, 16)]

    def measure(p, cfgs):
        if p.op == "qk_rms_norm":
            return [T.Result(c, us) for c, us in TIMES.items()]
        return [T.Result(c, 2.0 + 0.1 * i) for i, c in enumerate(cfgs)]

    run = T.run_tune(pts, measure, log=lambda s: None)
    path = str(tmp_path / "nvidia-fake-9000.json")
    TT.write_table(path, TT.table_doc(run.entries, gpu="NVIDIA Fake 9000", sm_count=132, command="qknorm tune",
                                      date="2026-11-25T00:00:00Z"))
    return path


def _alt_lines(text):
    return [ln for ln in text.splitlines() if re.match(r"\s+r\d+\.b\d+\.w\d+", ln)]


def test_explain_with_table(table_path, monkeypatch):
    monkeypatch.setenv(TT.ENV_TABLE, table_path)
    _, q, k, _ = packed_qkv(512, 32, 8, 128, torch.bfloat16, "cpu")
    text = qknorm.explain(q, k)
    first = text.splitlines()[0]
    assert first.startswith("qk_rms_norm: dtype=bfloat16 D=128 rows=20480 (bucket rows<=32768) -> r8.b128.w2")
    assert "8 rows x 128 cols, 2 warps" in first and "row in registers" in first
    assert "tuned table nvidia-fake-9000.json entry (qk_rms_norm, bf16, D=128, rows<=32768) [exact]" in text
    assert f"table: {table_path} (NVIDIA Fake 9000, 132 SMs, triton" in text
    assert "measured on: T=512 Hq=32 Hk=8 (20480 rows)" in text
    assert "measured alternatives (5 fastest of 7)" in text
    alts = _alt_lines(text)
    assert len(alts) == 5
    assert alts[0].split()[:3] == ["r8.b128.w2", "3.46", "us"] and alts[0].rstrip().endswith("<- pick")
    assert alts[1].split()[:4] == ["r16.b128.w4", "3.50", "us", "+1.2%"]
    assert alts[2].split()[3] == "+5.8%"  # 3.66 / 3.46
    assert "r1.b128.w1" not in text  # not in the top 5
    # layout and backend lines are still there
    assert re.search(r"^  q: shape \(512, 32, 128\) stride \(6144, 128, 1\): 16384 rows", text, re.MULTILINE)
    assert re.search(r"^  k: shape \(512, 8, 128\)", text, re.MULTILINE)
    assert "backend=auto: this call runs the PyTorch path" in text


def test_explain_top_and_explicit_table(table_path):
    x = torch.randn(16, 4096, dtype=torch.bfloat16)
    text = qknorm.explain(x, table=table_path, top=2)
    assert "tuned table nvidia-fake-9000.json entry (rms_norm, bf16, D=4096, rows<=16)" in text
    assert len(_alt_lines(text)) == 2 and "2 fastest of" in text
    assert "x: shape (16, 4096)" in text
    # fused add: the residual line
    text = qknorm.explain(x, x.clone(), op="fused_add_rms_norm", table=TT.load_table(table_path))
    assert "heuristic (tuned table nvidia-fake-9000.json: no fused_add_rms_norm bf16 entries)" in text
    assert "residual: shape (16, 4096)" in text and "measured alternatives" not in text


def test_explain_heuristic_rule():
    _, q, k, _ = packed_qkv(4, 16, 2, 256, torch.float16, "cpu")
    text = qknorm.explain(q, k)
    assert "heuristic (no GPU, no QKNORM_TUNED_TABLE set): row of 256 fits registers (block_d=256)" in text
    assert "rows=" in text and "num_warps=" in text
    assert "measured alternatives" not in text and "table:" not in text


def test_explain_nearest_entry_says_so(table_path):
    x = torch.randn(3000, 4096, dtype=torch.bfloat16)  # bucket 4096: above the only tuned bucket, 16
    assert "[rows<=4096 above the largest tuned bucket rows<=16]" in qknorm.explain(x, table=table_path)
    x = torch.randn(7, 3000, dtype=torch.float16)  # D=3000, fp16, 7 rows: the bf16 D=4096 rows<=16 entry
    text = qknorm.explain(x, table=table_path)
    assert "fp16 uses the bf16 entries" in text and "nearest tuned D=4096" in text
    assert "nearest tuned row bucket to rows<=8" in text


def test_cli_explain(table_path, capsys):
    rc = cli.main(["explain", "--op", "qk", "--tokens", "512", "--heads", "32,8", "--head-dim", "128",
                   "--table", table_path])
    out = capsys.readouterr().out
    assert rc == 0
    assert "qk_rms_norm: dtype=bfloat16 D=128 rows=20480" in out and "-> r8.b128.w2" in out
    assert "entry (qk_rms_norm, bf16, D=128, rows<=32768)" in out and "+1.2%" in out
    assert cli.main(["explain", "--op", "rms", "--hidden", "4096", "--tokens", "16", "--table", table_path,
                     "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "rms_norm: dtype=bfloat16 D=4096 rows=16" in out and len(_alt_lines(out)) == 1
    # no table: the heuristic, still exit 0
    assert cli.main(["explain", "--op", "add", "--hidden", "8192", "--tokens", "7"]) == 0
    assert "fused_add_rms_norm" in capsys.readouterr().out


def test_cli_explain_env_table(table_path, capsys, monkeypatch):
    monkeypatch.setenv(TT.ENV_TABLE, table_path)
    assert cli.main(["explain", "--op", "qk", "--tokens", "512"]) == 0
    assert "-> r8.b128.w2" in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [
    (["--gpu", "NVIDIA Nonexistent 1"], ["--gpu", "'NVIDIA Nonexistent 1'", "nvidia-h100-80gb-hbm3"]),
    (["--gpu", "h100"], ["--gpu", "'h100'", "shipped: nvidia-h100-80gb-hbm3"]),
    (["--op", "qk", "--heads", "32"], ["--heads", "'32'", "32,8"]),
    (["--heads", "32,x"], ["--heads", "'32,x'"]),
    (["--heads", "0,8"], ["--heads", "'0,8'", ">= 1"]),
    (["--tokens", "-5"], ["--tokens", "-5", ">= 1"]),
    (["--tokens", "many"], ["--tokens", "'many'"]),
    (["--op", "rms", "--hidden", "0"], ["--hidden", "0", ">= 1"]),
    (["--head-dim", "0"], ["--head-dim", "0", ">= 1"]),
    (["--top", "-1"], ["--top", "-1", ">= 0"]),
    (["--op", "rms", "--heads", "32,8"], ["--heads", "--op qk"]),
    (["--op", "qk", "--hidden", "4096"], ["--hidden", "4096", "--op rms/add"]),
    (["--table", "missing.json"], ["--table", "missing.json", "does not exist"]),
    (["--op", "layer_norm"], ["--op", "'layer_norm'", "rms"]),
])
def test_cli_bad_values_are_one_line_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["explain"] + argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("qknorm explain: error: argument ") and err.count("\n") == 1, err
    assert all(w in err for w in words), (words, err)


def test_explain_config_top_zero_still_shows_the_pick(table_path):
    t = TT.load_table(table_path)
    text = explain_config("qk_rms_norm", torch.bfloat16, 128, 20480, table=t, top=0)
    assert "measured alternatives (0 fastest of 7)" in text
    (line,) = _alt_lines(text)
    assert line.split()[:4] == ["r8.b128.w2", "3.46", "us", "+0.0%"] and line.endswith("<- pick")
    with pytest.raises(ValueError, match="op must be one of"):
        explain_config("layer_norm", torch.bfloat16, 128, 1)


def test_explain_main_under_a_shipped_table(capsys):
    E = sys.modules["qknorm.explain"]  # the module (qknorm.explain is the function)
    assert E.main(["--gpu", "NVIDIA H100 80GB HBM3", "--op", "qk", "--tokens", "512"]) == 0
    out = capsys.readouterr().out
    assert "tuned table nvidia-h100-80gb-hbm3.json entry (qk_rms_norm, bf16, D=128" in out
    assert "(NVIDIA H100 80GB HBM3, 132 SMs" in out and "<- pick" in out
    with pytest.raises(SystemExit):
        E.main(["--op", "layer_norm"])



def test_explain_says_which_fallback_runs(monkeypatch):
    """The addressing line names the fallback the general call takes: a contiguous copy for
    more than 3 unmergeable leading dims or last-dim offsets past int32, pieces past ROW_LIMIT."""
    import qknorm
    from qknorm import layout
    x = torch.zeros(2, 3, 4, 5, 8).permute(1, 0, 3, 2, 4)  # 4 leading dims that do not merge
    assert "copied to contiguous once (more than 3 leading dims" in qknorm.explain(x)
    wide = torch.empty_strided((2, 64), (0, 2**26), device="meta")  # col * stride passes int32 (no memory)
    assert "last-dim offsets pass int32: run once on a contiguous copy" in qknorm.explain(wide)
    monkeypatch.setattr(layout, "ROW_LIMIT", 4)
    assert "more than 4 rows: launched in pieces" in qknorm.explain(torch.zeros(10, 8))
    assert "fallback" not in qknorm.explain(torch.zeros(3, 8)) and "pieces" not in qknorm.explain(torch.zeros(3, 8))


def test_quantised_ops_explain_the_decision_their_kernel_uses():
    x = torch.randn(4, 4096, dtype=torch.bfloat16)
    r = torch.randn(4, 4096, dtype=torch.bfloat16)
    for op, shared, args in (("rms_norm_quant", "rms_norm", (x,)),
                             ("fused_add_rms_norm_quant", "fused_add_rms_norm", (x, r))):
        text = qknorm.explain(*args, op=op)
        assert text.startswith(f"{op} runs its own kernel on the tile {shared} picks")
        assert text.split("\n", 1)[1] == qknorm.explain(*args, op=shared)


def test_explain_refuses_a_second_tensor_or_a_missing_residual():
    x = torch.randn(8, 256)
    for op in ("rms_norm", "rms_norm_quant"):
        with pytest.raises(ValueError, match="takes one tensor"):
            qknorm.explain(x, torch.randn(3, 256), op=op)
    for op in ("fused_add_rms_norm", "fused_add_rms_norm_quant"):
        with pytest.raises(ValueError, match="needs the residual"):
            qknorm.explain(x, op=op)


def test_rope_ops_explain_the_config_and_row_form_their_kernels_run():
    """qk_rms_norm_rope (and the prologue, same config) explain dispatch.choose_rope_config's decision:
    the whole-row form for partial rotary, the split form for full rotary; the text names the config the
    op's plan launches."""
    from qknorm import dispatch
    from qknorm.ops import _plan
    q, k = torch.randn(4, 16, 256, dtype=torch.bfloat16), torch.randn(4, 2, 256, dtype=torch.bfloat16)
    for r, form in ((64, "load"), (256, "split")):
        text = qknorm.explain(q, k, op="qk_rms_norm_rope", rotary_dim=r)
        cfg = _plan.choose_rope(torch.bfloat16, 256, r, 72, torch.device("cpu"), None)
        assert f"rotary_dim={r} rows=72 -> {cfg.name} ({form} form" in text, text
        assert cfg == dispatch.choose_rope_config(torch.bfloat16, 256, r, 72)[0]
        assert ("per rotary half" in text) == (form == "split") and "batch-invariant" in text
    assert "qk_norm_rope_cache" in qknorm.explain(q, k, op="qk_norm_rope_cache", rotary_dim=64)
    with pytest.raises(ValueError, match="needs k"):
        qknorm.explain(q, op="qk_rms_norm_rope")
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        qknorm.explain(q, k, op="qk_rms_norm_rope", rotary_dim=63)
    with pytest.raises(ValueError, match="rotary_dim is for"):
        qknorm.explain(q, k, rotary_dim=64)
    with pytest.raises(ValueError, match="head_dim 2000 is not supported"):  # as the ops say
        from qknorm.explain import explain_config
        explain_config("qk_rms_norm_rope", torch.bfloat16, 2000, 6)


def test_cli_explain_rope(capsys):
    from qknorm.explain import main
    assert main(["--op", "rope", "--heads", "16,2", "--head-dim", "256", "--rotary-dim", "64", "--tokens", "4096"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qk_rms_norm_rope: dtype=bfloat16 D=256 rotary_dim=64 rows=73728 -> ")
    with pytest.raises(SystemExit) as e:
        main(["--op", "qk", "--rotary-dim", "64"])
    assert e.value.code == 2
    assert "--rotary-dim: is for --op rope" in capsys.readouterr().err


def test_explain_a_call_with_no_elements():
    """Width 0 raised ``need D >= 1`` (the ops take it), and 0 rows said the Triton kernels run: neither
    launches anything, and explain says so, for every op."""
    for args, op in (((torch.empty(3, 0),), None), ((torch.empty(0, 64),), "rms_norm_quant"),
                     ((torch.empty(0, 4, 128), torch.empty(0, 2, 128)), None),
                     ((torch.empty(2, 0), torch.empty(2, 0)), "fused_add_rms_norm")):
        text = qknorm.explain(*args, op=op)
        assert "no elements, so no kernel runs" in text and "Triton" not in text, text
    # one of Q and K empty: the other still launches
    assert "no kernel runs" not in qknorm.explain(torch.empty(0, 4, 128), torch.empty(3, 2, 128))


def test_explain_checks_what_the_call_checks():
    """explain took q and k of two dtypes, a RoPE op on 2-D tensors or two token counts, and a residual of another
    dtype (the calls refuse them); table=3 raised AttributeError and op=3 a ValueError."""
    x = torch.randn(4, 2, 64)
    cases = [((x, torch.randn(4, 1, 64, dtype=torch.bfloat16)), {}, TypeError, "k must have the dtype of x"),
             ((x[0], torch.randn(1, 64)), {"op": "qk_rms_norm_rope"}, ValueError, "3 dims"),
             ((x, torch.randn(3, 1, 64)), {"op": "qk_rms_norm_rope"}, ValueError, "same number of tokens"),
             ((x[0], torch.randn(2, 64, dtype=torch.float16)), {"op": "fused_add_rms_norm"}, TypeError, "dtype"),
             ((x,), {"table": 3}, TypeError, "table must be"),
             ((x,), {"op": 3}, TypeError, "op must be a str")]
    for args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            qknorm.explain(*args, **kw)
    assert "qk_rms_norm_rope" in qknorm.explain(x, torch.randn(4, 1, 64), op="qk_rms_norm_rope")


def test_explain_takes_a_table_path_of_any_kind(table_path):
    """A path string and a pathlib.Path alike (load_table takes both; the first type check took str only)."""
    import pathlib
    x = torch.randn(8, 256)
    assert qknorm.explain(x, table=str(table_path)) == qknorm.explain(x, table=pathlib.Path(table_path))
