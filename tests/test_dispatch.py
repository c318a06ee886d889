"""Dispatcher: the heuristic, decisions under a table, which table a device uses (fallback
with one warning, the QKNORM_TUNED_TABLE override), decision caching, the reset hook and
the candidate list. The table format itself: test_tuned_table.py."""
import json
import math
import re
import warnings

import pytest
import torch
from test_tuned_table import E_QK, E_RMS_4096, cfg, doc, entry, write

from qknorm import dispatch as D
from qknorm import invariance
from qknorm.config import KernelConfig
from qknorm.dispatch import candidate_configs, choose_config, next_pow2
from qknorm.tuned_table import ENV_TABLE, QknormTableWarning, TunedTable, gpu_key, parse_table

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No user table, fresh caches before and after every test."""
    monkeypatch.delenv(ENV_TABLE, raising=False)
    D.reset()
    yield
    D.reset()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Pretend CUDA device i is 'NVIDIA Fake 9000' with 100 SMs; count the device queries.
    Its shipped table is tmp_path/shipped/<key>.json (absent unless a test writes it)."""
    queries = {"name": 0, "sms": 0}

    def name(i=None):
        queries["name"] += 1
        return "NVIDIA Fake 9000"

    def sms(i):
        queries["sms"] += 1
        return 100

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", name)
    monkeypatch.setattr(D, "sm_count", sms)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(D, "shipped_table_path", lambda n: str(shipped / (gpu_key(n) + ".json")))
    monkeypatch.setattr(D, "shipped_tables", lambda: sorted(p.stem for p in shipped.iterdir()))
    return queries, shipped


def table_warnings(record):
    return [w for w in record if issubclass(w.category, QknormTableWarning)]


# --------------------------------------------------------------------------- heuristic

def test_no_table_on_cpu_is_the_heuristic_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, why = choose_config("qk_rms_norm", BF16, 128, 20480, "cpu")
    assert why.startswith("heuristic (no GPU")
    assert (c.block_d, c.rows, c.num_warps, c.persistent) == (128, 64, 8, False)
    assert c == D.heuristic("qk_rms_norm", BF16, 128, 20480, D.DEFAULT_SMS)[0]


@pytest.mark.parametrize("op,d,n,sms,want", [
    # rows narrower than a warp (128 x 2 bytes): 8192-element tiles while >= 2 blocks per SM (512 here)
    ("rms_norm", 128, 20480, 132, (64, 128, 8, False)),
    ("qk_rms_norm", 64, 10240, 132, (64, 64, 4, False)),      # 8192: 128 blocks < 2 x 132; 4096: 256 >= 132
    ("qk_rms_norm", 128, 40, 132, (16, 128, 8, False)),       # decode: 2048-element tiles, one 16-byte load/thread
    ("qk_rms_norm", 256, 4096, 132, (16, 256, 4, False)),     # a 512-byte row fills a warp: no decode tile
    ("qk_rms_norm", 512, 576, 132, (4, 512, 2, False)),       # bucket 1024: 8 rows would give 128 blocks < 132
    ("qk_rms_norm", 128, 40960, 132, (64, 128, 8, False)),    # QK: never persistent
    ("rms_norm", 1024, 1024, 132, (4, 1024, 4, False)),       # >= 1 block per SM
    ("fused_add_rms_norm", 1024, 1024, 132, (2, 1024, 4, False)),  # the fused add: >= 2 blocks per SM
    ("rms_norm", 4096, 16, 132, (1, 4096, 8, False)),         # 8 warps along a 4096 row
    ("rms_norm", 4096, 1024, 132, (2, 4096, 8, False)),       # 2 rows: 32 elements/thread; 512 blocks <= 528
    ("rms_norm", 4096, 1024, 100, (2, 4096, 8, True)),        # 512 blocks for 400 programs
    ("rms_norm", 4096, 4096, 132, (2, 4096, 8, False)),       # 2048 blocks > 2 x 528: plain
    ("rms_norm", 5120, 1024, 132, (1, 8192, 8, True)),        # 1024 blocks for 528 programs
    ("fused_add_rms_norm", 2048, 4096, 132, (4, 2048, 4, True)),  # grown to 4 rows: 1024 blocks
    ("rms_norm", 1024, 6000, 100, (4, 1024, 4, False)),       # 2048 blocks; 8 rows: 1024 > 2 x 400
    ("rms_norm", 16384, 1024, 132, (1, 16384, 16, False)),    # 4 programs of 16 warps would fill an SM
    ("rms_norm", 20000, 1, 132, (1, 4096, 8, False)),         # wider than MAX_REG_BLOCK: chunked
    ("rms_norm", 16384, 1, 132, (1, 16384, 16, False)),       # the widest whole row in registers
])
def test_heuristic_rule(op, d, n, sms, want):
    c, why = D.heuristic(op, BF16, d, n, sms)
    assert (c.rows, c.block_d, c.num_warps, c.persistent) == want, why
    decode = next_pow2(n) <= D.DECODE_ROWS and next_pow2(d) * 2 < D.WARP_ROW_BYTES
    assert why.startswith("heuristic: row of ") and ("decode:" in why) == decode
    assert (f"on {sms} SMs" in why) == (not decode and not c.chunked(d))
    assert ("persistent" in why) == c.persistent
    assert invariance.is_invariant(c, 2)
    assert ("chunked two-pass" in why) == c.chunked(d)
    assert D.heuristic(op, BF16, d, n, sms) == D.heuristic(op, BF16, d, next_pow2(n), sms)  # only the bucket


def test_heuristic_checks_its_arguments():
    for args, match in [(("layer_norm", BF16, 64, 1), "op must be one of"), (("rms_norm", BF16, 0, 1), "D >= 1"),
                        (("rms_norm", BF16, 64, -1), "n_rows >= 0")]:
        with pytest.raises(ValueError, match=match):
            D.heuristic(*args)


_SIZES = (1, 2, 4, 8)


def _grid():
    """(op, dtype, D, row bucket, SMs) over the widths and row counts the rule distinguishes."""
    for op in D.OPS:
        for dtype in (BF16, FP16, FP32):
            for d in (16, 64, 96, 128, 256, 512, 1000, 1024, 2048, 4096, 5120, 8192, 16384, 20000):
                for k in range(0, 23, 2):
                    for sms in (16, 100, 132):
                        yield op, dtype, d, 1 << k, sms


def test_heuristic_grid_properties():
    """What the rule promises at every (op, dtype, width, row bucket, SM count), whatever the timings."""
    pps = KernelConfig().programs_per_sm
    for op, dtype, d, bucket, sms in _grid():
        c, why = D.heuristic(op, dtype, d, bucket, sms)
        size = dtype.itemsize
        assert D.row_invariant(c, size, d), (op, d, bucket, c.name)
        blocks = -(-bucket // c.rows)
        # a plain grid holds at most ~32 values of the tile per thread (ELEMS_PER_WARP per warp)
        assert c.persistent or c.rows * c.block_d <= D.ELEMS_PER_WARP * c.num_warps, (op, d, bucket, c.name)
        decode = bucket <= D.DECODE_ROWS and c.block_d * size < D.WARP_ROW_BYTES
        assert ("decode:" in why) == decode, (op, d, bucket, why)
        if c.persistent:
            # rms_norm and the fused add, whole rows: one to two blocks per program, all programs resident
            assert op != "qk_rms_norm" and not c.chunked(d) and c.rows * c.block_d <= D.MAX_CANDIDATE_TILE
            assert pps * sms < blocks <= 2 * pps * sms, (op, d, bucket, sms, c.name)
            assert pps * c.num_warps <= D.PERSISTENT_MAX_WARPS
            assert "persistent" in why
        elif not decode and not c.chunked(d):
            # the plain grid keeps MIN_WAVES blocks per SM (the fused add MIN_WAVES_FUSED) when rows allow
            waves = D.MIN_WAVES_FUSED if op == "fused_add_rms_norm" else D.MIN_WAVES
            least = invariance.make_invariant(KernelConfig(rows=1, block_d=c.block_d, num_warps=1), size).rows
            assert c.rows <= least or blocks >= waves * sms, (op, d, bucket, sms, c.name)
            # and ends in no partial persistent wave: at the tile grown up to MAX_CANDIDATE_TILE elements the
            # grid would be more than twice the persistent grid (or fit it, or p4 would not fit an SM)
            if op != "qk_rms_norm" and blocks > pps * sms and pps * c.num_warps <= D.PERSISTENT_MAX_WARPS:
                grown = c.rows
                while 2 * grown * c.block_d <= D.MAX_CANDIDATE_TILE and -(-bucket // (2 * grown)) > pps * sms:
                    grown *= 2
                assert -(-bucket // grown) > 2 * pps * sms, (op, d, bucket, sms, c.name)


def test_heuristic_picks_lie_in_the_search_space(monkeypatch):
    """Every pick but a decode tile is a config the tuner's search space holds at that row count anyway (not
    only as the pick it adds), so a table tuned under any heuristic scores this one (regret:
    benchmarks/results/cpu/2026-12-07-heuristic). Decode tiles (one 16-byte vector per thread) and whole rows
    wider than MAX_CANDIDATE_TILE (16384) enter the space as the pick only."""
    cases = [(op, dtype, d, bucket) for op, dtype, d, bucket, sms in _grid()
             if sms == D.DEFAULT_SMS and bucket <= 1 << 20 and next_pow2(d) != D.MAX_REG_BLOCK
             and not (bucket <= D.DECODE_ROWS and next_pow2(d) * dtype.itemsize < D.WARP_ROW_BYTES)]
    picks = [D.heuristic(op, dtype, d, bucket)[0] for op, dtype, d, bucket in cases]
    outside = KernelConfig(rows=1, block_d=65536, num_warps=32)  # never a candidate: stands in for the pick
    monkeypatch.setattr(D, "_heuristic", lambda *a: (outside, ""))
    for (op, dtype, d, bucket), pick in zip(cases, picks):
        assert pick in candidate_configs(op, dtype, d, bucket), (op, dtype, d, bucket, pick.name)


def test_heuristic_by_op():
    """QK never takes the persistent grid; the fused add keeps twice the blocks per SM of rms_norm."""
    assert D.heuristic("rms_norm", BF16, 5120, 1024)[0].persistent
    assert D.heuristic("fused_add_rms_norm", BF16, 5120, 1024)[0].persistent
    assert not D.heuristic("qk_rms_norm", BF16, 5120, 1024)[0].persistent
    assert D.heuristic("rms_norm", BF16, 1024, 1024)[0].rows == 2 * D.heuristic("fused_add_rms_norm", BF16, 1024,
                                                                                  1024)[0].rows


# --------------------------------------------------------------------------- decisions under a table

@pytest.fixture
def table():
    return parse_table(doc(), "/x/table.json")


def test_other_dtype_never_raises(table):
    d = D.decide("rms_norm", torch.float64, 4096, 16, table)
    assert d.reason.startswith("heuristic (tuned table table.json: no entries for torch.float64)")


def test_decide_reason_names_file_and_key(table):
    d = D.decide("qk_rms_norm", BF16, 128, 40 * 512, table)
    assert d.config == E_QK[1024]
    assert "tuned table table.json entry (qk_rms_norm, bf16, D=128, rows<=1024)" in d.reason
    d = D.decide("rms_norm", FP32, 4096, 16, table, 132)
    assert d.reason.startswith("heuristic (tuned table table.json: no rms_norm fp32 entries)")
    assert d.config == D.heuristic("rms_norm", FP32, 4096, 16, 132)[0]


def test_device_decision_and_measured_alternatives(tmp_path, monkeypatch):
    assert D.measured_alternatives("qk_rms_norm", BF16, 128, 40, "cpu") == []  # no table
    alts = {E_QK[64].name: 2.0, "r1.b128.w1": 2.5, "r2.b128.w1": 2.2}
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc([entry("qk_rms_norm", 128, 64, E_QK[64], alts=alts)])))
    D.reset()
    assert D.measured_alternatives("qk_rms_norm", BF16, 128, 40, "cpu") == [E_QK[64].name, "r2.b128.w1",
                                                                              "r1.b128.w1"]  # fastest first
    assert D.measured_alternatives("qk_rms_norm", torch.float64, 128, 40, "cpu") == []
    assert D.measured_alternatives("rms_norm", BF16, 128, 40, "cpu") == []  # no entry for the op
    d = D.device_decision("qk_rms_norm", BF16, 128, 40, "cpu")
    assert d.config == E_QK[64] and d.table.name == "table.json" and d.lookup.note == "exact" and d.bucket == 64
    # an explicit table replaces the device's
    other = parse_table(doc([entry("qk_rms_norm", 128, 64, cfg(2, 128, 1))]), "/x/other.json")
    d = D.device_decision("qk_rms_norm", BF16, 128, 40, "cpu", table=other)
    assert d.config == cfg(2, 128, 1) and "other.json" in d.reason


# --------------------------------------------------------------------------- fallback and warnings

def _calls(device):
    out = []
    for op, d, n in [("rms_norm", 4096, 1), ("rms_norm", 4096, 5000), ("qk_rms_norm", 128, 40),
                     ("fused_add_rms_norm", 8192, 7), ("rms_norm", 4096, 1)]:
        out.append(choose_config(op, BF16, d, n, device))
    return out


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    ("{broken", "not readable JSON"),
    ("stale", "stale"),
    ("bad-entry", "entries\\[0\\]"),
])
def test_bad_user_table_falls_back_with_one_warning(tmp_path, monkeypatch, content, match):
    if content is None:
        path = str(tmp_path / "missing.json")
    elif content == "stale":
        path = write(tmp_path, doc(schema_version=0))
    elif content == "bad-entry":
        d = doc()
        d["entries"][0]["config"]["rows"] = 5
        path = write(tmp_path, d)
    else:
        path = write(tmp_path, content)
    monkeypatch.setenv(ENV_TABLE, path)
    with pytest.warns(QknormTableWarning) as rec:
        got = _calls("cpu") + _calls(torch.device("cpu")) + _calls(None)
    ws = table_warnings(rec)
    assert len(ws) == 1, [str(w.message) for w in ws]
    assert ENV_TABLE in str(ws[0].message)
    assert re.search(match, str(ws[0].message))
    for c, why in got:
        assert isinstance(c, KernelConfig) and why.startswith("heuristic (")


def test_unknown_gpu_one_warning_per_device(fake_gpu):
    queries, _ = fake_gpu
    with pytest.warns(QknormTableWarning) as rec:
        got = _calls(torch.device("cuda", 0)) + _calls("cuda:0") + _calls(torch.device("cuda", 1))
    ws = table_warnings(rec)
    assert len(ws) == 2, [str(w.message) for w in ws]  # device 0 and device 1
    assert "no tuned table for NVIDIA Fake 9000" in str(ws[0].message)
    assert "nvidia-fake-9000.json" in str(ws[0].message)
    assert all(why.startswith("heuristic (no tuned table") for _, why in got)
    assert queries["name"] == 2  # once per device index


def test_shipped_table_is_used(fake_gpu, tmp_path):
    _, shipped = fake_gpu
    (shipped / "nvidia-fake-9000.json").write_text(json.dumps(doc()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, why = choose_config("rms_norm", BF16, 4096, 16, torch.device("cuda", 0))
    assert c == E_RMS_4096[16]
    assert why.startswith("tuned table nvidia-fake-9000.json entry (rms_norm, bf16, D=4096, rows<=16)")


@pytest.mark.parametrize("change,match", [
    ({"sms": 132}, "tuned on 132 SMs"),
    ({"gpu": "NVIDIA Other"}, "tuned on NVIDIA Other"),
    ({"schema_version": 0}, "stale"),
])
def test_shipped_table_mismatch_falls_back(fake_gpu, change, match):
    _, shipped = fake_gpu
    (shipped / "nvidia-fake-9000.json").write_text(json.dumps(doc(**change)))
    with pytest.warns(QknormTableWarning, match=match) as rec:
        got = _calls(torch.device("cuda", 0))
    assert len(table_warnings(rec)) == 1
    assert all(why.startswith("heuristic (") for _, why in got)


def test_env_table_takes_precedence(fake_gpu, tmp_path, monkeypatch):
    _, shipped = fake_gpu
    (shipped / "nvidia-fake-9000.json").write_text(json.dumps(doc()))
    user = [entry("rms_norm", 4096, 16, cfg(1, 4096, 8, persistent=True))]
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc(user), "mine.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, why = choose_config("rms_norm", BF16, 4096, 16, torch.device("cuda", 0))
    assert c == cfg(1, 4096, 8, persistent=True) and "mine.json" in why


def test_env_table_from_another_gpu_is_used_with_a_warning(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc(gpu="NVIDIA H200", sms=132), "h200.json"))
    with pytest.warns(QknormTableWarning, match="tuned on NVIDIA H200") as rec:
        got = _calls(torch.device("cuda", 0))
    assert len(table_warnings(rec)) == 1
    assert got[0][0] == E_RMS_4096[1] and "h200.json" in got[0][1]


def test_env_table_on_cpu_and_reset(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc()))
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[0] == E_QK[64]
    monkeypatch.delenv(ENV_TABLE)
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[0] == E_QK[64]  # cached
    D.reset()
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[1].startswith("heuristic")


# --------------------------------------------------------------------------- caching

def test_decisions_are_cached_per_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc()))
    calls = []
    orig = TunedTable.lookup

    def counting(self, *a):
        calls.append(a)
        return orig(self, *a)

    monkeypatch.setattr(TunedTable, "lookup", counting)
    dev = torch.device("cpu")
    first = choose_config("rms_norm", BF16, 4096, 3000, dev)
    for n in (2049, 2500, 3000, 4096):  # one bucket
        for _ in range(50):
            assert choose_config("rms_norm", BF16, 4096, n, dev) == first
    assert len(calls) == 1
    choose_config("rms_norm", BF16, 4096, 4097, dev)  # next bucket
    choose_config("rms_norm", FP16, 4096, 3000, dev)  # other dtype
    choose_config("rms_norm", BF16, 5120, 3000, dev)  # other D
    choose_config("fused_add_rms_norm", BF16, 4096, 3000, dev)  # other op
    assert len(calls) == 5
    for dv in ("cpu", None, dev):  # every spelling of the device: no new lookup
        choose_config("rms_norm", BF16, 4096, 3000, dv)
    assert len(calls) == 5


def test_no_device_query_after_the_first_call(fake_gpu, monkeypatch):
    queries, shipped = fake_gpu
    (shipped / "nvidia-fake-9000.json").write_text(json.dumps(doc()))
    dev = torch.device("cuda", 0)
    want = choose_config("qk_rms_norm", BF16, 128, 640, dev)

    def boom(*a, **k):
        raise AssertionError("device queried on the hot path")

    for name in ("get_device_name", "get_device_properties", "current_device", "is_available"):
        monkeypatch.setattr(torch.cuda, name, boom)
    monkeypatch.setattr(D, "sm_count", boom)
    monkeypatch.setattr(D, "load_table", boom)
    for n in range(513, 1025, 7):
        assert choose_config("qk_rms_norm", BF16, 128, n, dev) == want
    assert queries == {"name": 1, "sms": 1}


def test_reset_runs_each_hook_once_after_forgetting(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_reset_hooks", [])  # only this test's hook
    monkeypatch.setenv(ENV_TABLE, write(tmp_path, doc()))
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[0] == E_QK[64]
    seen = []

    def hook():  # a decision made from the hook sees the dispatcher's new state
        seen.append(choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[1])

    D.add_reset_hook(hook)
    D.add_reset_hook(hook)  # registered once
    monkeypatch.delenv(ENV_TABLE)
    D.reset()
    assert len(seen) == 1 and seen[0].startswith("heuristic (no GPU")
    D.reset()
    assert len(seen) == 2


def test_invalid_arguments_raise_even_when_cached():
    choose_config("rms_norm", BF16, 64, 1, "cpu")
    with pytest.raises(ValueError, match="op must be one of"):
        choose_config("layer_norm", BF16, 64, 1, "cpu")
    with pytest.raises(ValueError, match="n_rows >= 0"):
        choose_config("rms_norm", BF16, 64, -1, "cpu")
    with pytest.raises(ValueError, match="D >= 1"):
        choose_config("rms_norm", BF16, 0, 1, "cpu")
    assert choose_config("rms_norm", BF16, 64, 0, "cpu")[0].block_d == 64  # 0 rows is valid


# --------------------------------------------------------------------------- candidates

@pytest.mark.parametrize("op,d,n", [("qk_rms_norm", 64, 40), ("qk_rms_norm", 128, 10240),
                                    ("qk_rms_norm", 512, 9 * 16384), ("rms_norm", 4096, 1),
                                    ("rms_norm", 5120, 65536), ("fused_add_rms_norm", 16384, 4096),
                                    ("rms_norm", 20000, 100)])
def test_candidates_are_admissible_and_distinct(op, d, n):
    cands = candidate_configs(op, BF16, d, n)
    assert cands and len({c.name for c in cands}) == len(cands)
    programs = KernelConfig().programs_per_sm * D.DEFAULT_SMS
    for c in cands:
        assert KernelConfig.from_dict(c.to_dict()) == c
        assert c.block_d >= next_pow2(d) or (c.chunked(d) and next_pow2(d) > D.MAX_CANDIDATE_TILE)
        assert c.rows <= max(next_pow2(n), 32 * 8 // c.block_d)  # (fewer rows would not fill 16-byte loads)
        assert D.row_invariant(c, 2, d), c.name
        assert c.rows == 1 or c.rows * c.block_d <= D.MAX_CANDIDATE_TILE
        assert not c.persistent or math.ceil(n / c.rows) > programs
        # token order: QK only, whole rows, and only once Q+K leave L2
        assert not c.token_order or (op == "qk_rms_norm" and not c.chunked(d)
                                     and next_pow2(n) >= D.TOKEN_ORDER_MIN_ROWS)
    if op == "qk_rms_norm" and next_pow2(n) >= D.TOKEN_ORDER_MIN_ROWS and next_pow2(d) <= D.MAX_CANDIDATE_TILE:
        assert any(c.token_order for c in cands)
    if next_pow2(d) > D.MAX_REG_BLOCK:  # (narrower rows: the whole row, the one batch-invariant tile width)
        assert any(c.chunked(d) for c in cands)


def test_persistent_candidates_only_with_more_blocks_than_programs():
    small = candidate_configs("rms_norm", BF16, 4096, 256)
    big = candidate_configs("rms_norm", BF16, 4096, 65536)
    assert not any(c.persistent for c in small)
    assert any(c.persistent for c in big)


def test_heuristic_pick_is_a_candidate():
    for op, d, n in [("qk_rms_norm", 128, 20480), ("qk_rms_norm", 256, 18), ("rms_norm", 4096, 16384),
                     ("fused_add_rms_norm", 8192, 64)]:
        h = D.heuristic(op, BF16, d, n)[0]
        assert h in candidate_configs(op, BF16, d, n)


def test_token_order_candidates_from_token_order_min_rows():
    assert any(c.token_order for c in candidate_configs("qk_rms_norm", BF16, 128, D.TOKEN_ORDER_MIN_ROWS))
    assert not any(c.token_order for c in candidate_configs("qk_rms_norm", BF16, 128, D.TOKEN_ORDER_MIN_ROWS // 2))
    big = candidate_configs("qk_rms_norm", BF16, 128, 40 * 4096)
    assert any(c.token_order for c in big)
    assert all(not c.persistent and not c.chunked(128) for c in big if c.token_order)
    assert not any(c.token_order for c in candidate_configs("qk_rms_norm", BF16, 128, 20))
    assert not any(c.token_order for c in candidate_configs("rms_norm", BF16, 128, 1 << 20))


def test_fp32_rope_split_form_takes_one_tile_at_every_token_count():
    """fp32 QK norm + RoPE with full rotary (the split form): whatever the qk_rms_norm pick (any candidate, so any
    tuned table's) and the token count, the rows and warps of the tile are the same (configs that lay a rotary
    half out alike still rounded apart by their warps on an H100: ``dispatch.ROPE_FP32_TILE``); bf16 keeps the
    pick's tile."""
    for d in (8, 64, 128, 256, 1024):
        tiles = set()
        for n in (1, 40, 2560, 40960, 5_000_000):
            for qk in candidate_configs("qk_rms_norm", torch.float32, d, n):
                if not qk.token_order:
                    cfg, why = D.rope_config(qk, "", torch.float32, d, d, n)
                    tiles.add((cfg.rows, cfg.num_warps, cfg.block_d))
                    assert "at every token count" in why
        assert len(tiles) == 1, (d, tiles)
    bf16 = {D.rope_config(qk, "", BF16, 128, 128, 40960)[0].num_warps
            for qk in candidate_configs("qk_rms_norm", BF16, 128, 40960) if not qk.token_order}
    assert len(bf16) > 1
