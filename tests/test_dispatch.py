"""Dispatcher: tuned-table loading and validation, the lookup rule, fallback with one
warning, the QKNORM_TUNED_TABLE override, decision caching and the candidate list."""
import copy
import json
import math
import re
import warnings

import pytest
import torch

from qknorm import dispatch as D
from qknorm.config import KernelConfig
from qknorm.dispatch import (
    QknormTableWarning,
    TableError,
    candidate_configs,
    choose_config,
    load_table,
    next_pow2,
    parse_table,
)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def cfg(rows=1, block_d=128, warps=1, **kw):
    return KernelConfig(rows=rows, block_d=block_d, num_warps=warps, **kw)


def entry(op, D_, rows, config, dtype="bf16", us=2.0, alts=None, **extra):
    alts = alts if alts is not None else {config.name: us, "r1.b8.w1": us * 1.5}
    e = {"op": op, "dtype": dtype, "D": D_, "rows": rows, "config": config.to_dict(), "us": us,
         "alternatives": alts}
    e.update(extra)
    return e


def doc(entries=None, gpu="NVIDIA Fake 9000", sms=100, **top):
    d = {"schema_version": D.SCHEMA_VERSION, "gpu": gpu, "sm_count": sms, "triton": "3.6.0",
         "torch": "2.11.0", "date": "2026-11-25T00:00:00Z", "command": "qknorm tune",
         "entries": copy.deepcopy(entries if entries is not None else ENTRIES)}
    d.update(top)
    return d


# Distinct configs per entry, so a test can tell which entry a lookup used.
E_RMS_4096 = {1: cfg(1, 4096, 4), 16: cfg(1, 4096, 8), 256: cfg(2, 4096, 8), 4096: cfg(2, 4096, 16)}
E_RMS_8192 = {16: cfg(1, 8192, 8), 4096: cfg(1, 8192, 16, persistent=True)}
E_RMS_20000 = {1024: cfg(2, 4096, 8)}  # chunked
E_ADD = {5120: cfg(1, 8192, 4), 7168: cfg(1, 8192, 2)}
E_QK = {64: cfg(4, 128, 2), 1024: cfg(16, 128, 2)}
ENTRIES = ([entry("rms_norm", 4096, b, c) for b, c in E_RMS_4096.items()]
           + [entry("rms_norm", 8192, b, c) for b, c in E_RMS_8192.items()]
           + [entry("rms_norm", 20000, b, c) for b, c in E_RMS_20000.items()]
           + [entry("fused_add_rms_norm", d, 64, c) for d, c in E_ADD.items()]
           + [entry("qk_rms_norm", 128, b, c, n_rows=b * 5 // 8, shape="T=1 Hq=32 Hk=8") for b, c in E_QK.items()])


def write(tmp_path, d, name="table.json"):
    p = tmp_path / name
    p.write_text(d if isinstance(d, str) else json.dumps(d))
    return str(p)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No user table, fresh caches before and after every test."""
    monkeypatch.delenv(D.ENV_TABLE, raising=False)
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
    monkeypatch.setattr(D, "shipped_table_path", lambda n: str(shipped / (D.gpu_key(n) + ".json")))
    monkeypatch.setattr(D, "shipped_tables", lambda: sorted(p.stem for p in shipped.iterdir()))
    return queries, shipped


def table_warnings(record):
    return [w for w in record if issubclass(w.category, QknormTableWarning)]


# --------------------------------------------------------------------------- names, heuristic

def test_gpu_key():
    assert D.gpu_key("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert D.gpu_key("NVIDIA H200") == "nvidia-h200"
    assert D.gpu_key("  NVIDIA  A100-SXM4-80GB ") == "nvidia-a100-sxm4-80gb"


def test_no_table_on_cpu_is_the_heuristic_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, why = choose_config("qk_rms_norm", BF16, 128, 20480, "cpu")
    assert why.startswith("heuristic (no GPU")
    assert (c.block_d, c.rows, c.num_warps) == (128, 32, 4)
    assert c == D._heuristic("qk_rms_norm", 2, 128, 32768, D.DEFAULT_SMS)[0]


# --------------------------------------------------------------------------- validation

def test_valid_table_loads(tmp_path):
    t = load_table(write(tmp_path, doc()))
    assert t.gpu == "NVIDIA Fake 9000" and t.sm_count == 100
    assert len(t.entries) == len(ENTRIES)
    e = t.entries[("rms_norm", "bf16", 4096, 16)]
    assert e.config == E_RMS_4096[16]
    assert e.alternatives[0] == (E_RMS_4096[16].name, 2.0)  # fastest first


def _mut(path, value):
    """A mutator setting doc[path...] = value (value DELETE removes the key)."""
    def f(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        if value is DELETE:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return d
    return f


DELETE = object()

BAD = {
    "stale schema": (_mut(["schema_version"], 0), "stale"),
    "future schema": (_mut(["schema_version"], D.SCHEMA_VERSION + 1), "stale or unknown schema_version"),
    "schema as bool": (_mut(["schema_version"], True), "schema_version"),
    "missing gpu": (_mut(["gpu"], DELETE), "lacks \\['gpu'\\]"),
    "unknown top field": (_mut(["pickle"], "x"), "unknown fields \\['pickle'\\]"),
    "sm_count str": (_mut(["sm_count"], "132"), "sm_count must be int"),
    "sm_count bool": (_mut(["sm_count"], True), "sm_count must be int"),
    "sm_count 0": (_mut(["sm_count"], 0), "sm_count must be >= 1"),
    "entries not list": (_mut(["entries"], {}), "entries must be list"),
    "entry not object": (_mut(["entries", 0], [1, 2]), "entries\\[0\\] must be an object"),
    "unknown op": (_mut(["entries", 0, "op"], "layer_norm"), "op must be one of"),
    "unknown dtype": (_mut(["entries", 0, "dtype"], "fp8"), "dtype must be one of"),
    "D zero": (_mut(["entries", 0, "D"], 0), "D must be >= 1"),
    "D float": (_mut(["entries", 0, "D"], 4096.0), "D must be int"),
    "rows not pow2": (_mut(["entries", 0, "rows"], 24), "power of two"),
    "rows bool": (_mut(["entries", 0, "rows"], True), "rows must be int"),
    "config rows 3": (_mut(["entries", 0, "config", "rows"], 3), "rows must be a power of two"),
    "config str": (_mut(["entries", 0, "config", "num_warps"], "4"), "num_warps must be int"),
    "config bool int": (_mut(["entries", 0, "config", "persistent"], 1), "persistent must be bool"),
    "config unknown": (_mut(["entries", 0, "config", "__reduce__"], 1), "unknown KernelConfig fields"),
    "config tile": (_mut(["entries", 0, "config", "rows"], 64), "exceeds"),
    "token order on rms": (_mut(["entries", 0, "config", "token_order"], True), "token_order is a qk_rms_norm"),
    "us negative": (_mut(["entries", 0, "us"], -1.0), "positive finite"),
    "us str": (_mut(["entries", 0, "us"], "2.0"), "us must be"),
    "alt not number": (_mut(["entries", 0, "alternatives", "r1.b4096.w4"], None), "alternatives"),
    "alternatives list": (_mut(["entries", 0, "alternatives"], []), "alternatives must be dict"),
    "n_rows outside bucket": (_mut(["entries", 0, "n_rows"], 5), "not in the bucket"),
    "unknown entry field": (_mut(["entries", 0, "eval"], "1"), "unknown fields \\['eval'\\]"),
    "duplicate key": (lambda d: d["entries"].append(copy.deepcopy(d["entries"][0])) or d, "repeats the key"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_table_is_rejected(tmp_path, name):
    mutate, match = BAD[name]
    d = mutate(copy.deepcopy(doc()))
    with pytest.raises(TableError, match=match):
        parse_table(d)
    with pytest.raises(TableError, match=match):  # the same through the file loader
        load_table(write(tmp_path, d))


@pytest.mark.parametrize("text,match", [
    ("{not json", "not readable JSON"),
    ('{"schema_version": NaN}', "non-finite"),
    ("[1, 2]", "JSON object"),
    ("", "not readable JSON"),
])
def test_bad_file_is_rejected(tmp_path, text, match):
    with pytest.raises(TableError, match=match):
        load_table(write(tmp_path, text))


def test_missing_and_non_utf8_and_oversized_files(tmp_path, monkeypatch):
    with pytest.raises(TableError, match="does not exist"):
        load_table(str(tmp_path / "nope.json"))
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TableError, match="not readable"):
        load_table(str(p))
    with pytest.raises(TableError, match="not readable"):
        load_table(str(tmp_path))  # a directory
    big = write(tmp_path, doc())
    monkeypatch.setattr(D, "MAX_TABLE_BYTES", 100)
    with pytest.raises(TableError, match="bytes"):
        load_table(big)


# --------------------------------------------------------------------------- lookup rule

@pytest.fixture
def table():
    return parse_table(doc(), "/x/table.json")


def _lk(table, op, dtype, d, n_rows):
    return table.lookup(op, dtype, d, next_pow2(n_rows))


def test_lookup_exact(table):
    r = _lk(table, "rms_norm", "bf16", 4096, 16)
    assert r.entry.config == E_RMS_4096[16] and r.note == "exact"


@pytest.mark.parametrize("n_rows,bucket_used", [
    (30, 16),       # bucket 32: 16 is 1 octave away, 256 is 3
    (33, 16),       # bucket 64: 16 and 256 both 2 octaves away -> the smaller
    (100, 256),     # bucket 128: 256 is 1 octave away
    (2, 1), (4, 1),  # 4: 1 and 16 both 2 octaves -> the smaller
    (8, 16),
    (1000, 256),    # bucket 1024: 256 and 4096 both 2 octaves -> the smaller
    (3000, 4096),
    (10 ** 6, 4096),  # above the largest tuned bucket: the largest
])
def test_lookup_nearest_bucket(table, n_rows, bucket_used):
    r = _lk(table, "rms_norm", "bf16", 4096, n_rows)
    assert r.entry is not None, r.note
    assert r.entry.rows == bucket_used and r.entry.config == E_RMS_4096[bucket_used]
    if next_pow2(n_rows) != bucket_used:
        assert "bucket" in r.note


@pytest.mark.parametrize("n_rows,hit", [(1, None), (2, None), (4, 16), (256, None), (512, None), (1024, 4096)])
def test_lookup_bucket_gap_limit(table, n_rows, hit):
    # D=8192 has buckets 16 and 4096 only: at most MAX_BUCKET_GAP = 2 octaves away, else a miss
    r = _lk(table, "rms_norm", "bf16", 8192, n_rows)
    if hit is None:
        assert r.entry is None and "octaves away" in r.note
    else:
        assert r.entry.rows == hit


def test_lookup_nearest_d_same_block_class(table):
    r = _lk(table, "rms_norm", "bf16", 5120, 16)  # class 8192: D=8192 tuned
    assert r.entry.D == 8192 and r.entry.config == E_RMS_8192[16] and "nearest tuned D=8192" in r.note
    r = _lk(table, "rms_norm", "bf16", 3000, 16)  # class 4096
    assert r.entry.D == 4096
    r = _lk(table, "rms_norm", "bf16", 2048, 16)  # class 2048: nothing tuned -> heuristic
    assert r.entry is None and "block class" in r.note
    r = _lk(table, "rms_norm", "bf16", 30000, 1024)  # chunked class 32768: stays chunked
    assert r.entry.D == 20000 and r.entry.config.chunked(30000)
    # equidistant tuned Ds: the larger
    r = _lk(table, "fused_add_rms_norm", "bf16", 6144, 64)
    assert r.entry.D == 7168


def test_admissibility_rule():
    whole = cfg(1, 8192, 8)
    assert D._admissible(whole, 8192, 5120)
    assert not D._admissible(cfg(1, 4096, 8), 4096, 5000)  # whole row at 4096, not at 5000
    chunked = cfg(1, 4096, 8)
    assert D._admissible(chunked, 20000, 30000)
    assert not D._admissible(chunked, 20000, 3000)  # would no longer be chunked
    # within one block class the rule always holds: every tuned config stays admissible
    for tuned in (4100, 6000, 8192):
        for d in (4097, 5120, 7168, 8192):
            for c in candidate_configs("rms_norm", BF16, tuned, 4096):
                assert D._admissible(c, tuned, d)


def test_lookup_dtype_same_element_size(table):
    r = _lk(table, "rms_norm", "fp16", 4096, 16)
    assert r.entry.config == E_RMS_4096[16] and "fp16 uses the bf16 entries" in r.note
    r = _lk(table, "rms_norm", "fp32", 4096, 16)
    assert r.entry is None and "no rms_norm fp32 entries" in r.note


def test_other_dtype_never_raises(table):
    d = D.decide("rms_norm", torch.float64, 4096, 16, table)
    assert d.reason.startswith("heuristic (tuned table table.json: no entries for torch.float64)")


def test_decide_reason_names_file_and_key(table):
    d = D.decide("qk_rms_norm", BF16, 128, 40 * 512, table)
    assert d.config == E_QK[1024]
    assert "tuned table table.json entry (qk_rms_norm, bf16, D=128, rows<=1024)" in d.reason
    d = D.decide("rms_norm", FP32, 4096, 16, table, 132)
    assert d.reason.startswith("heuristic (tuned table table.json: no rms_norm fp32 entries)")
    assert d.config == D._heuristic("rms_norm", 4, 4096, 16, 132)[0]


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
    monkeypatch.setenv(D.ENV_TABLE, path)
    with pytest.warns(QknormTableWarning) as rec:
        got = _calls("cpu") + _calls(torch.device("cpu")) + _calls(None)
    ws = table_warnings(rec)
    assert len(ws) == 1, [str(w.message) for w in ws]
    assert D.ENV_TABLE in str(ws[0].message)
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
    user = [entry("rms_norm", 4096, 16, cfg(4, 1024, 2))]
    monkeypatch.setenv(D.ENV_TABLE, write(tmp_path, doc(user), "mine.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, why = choose_config("rms_norm", BF16, 4096, 16, torch.device("cuda", 0))
    assert c == cfg(4, 1024, 2) and "mine.json" in why


def test_env_table_from_another_gpu_is_used_with_a_warning(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_TABLE, write(tmp_path, doc(gpu="NVIDIA H200", sms=132), "h200.json"))
    with pytest.warns(QknormTableWarning, match="tuned on NVIDIA H200") as rec:
        got = _calls(torch.device("cuda", 0))
    assert len(table_warnings(rec)) == 1
    assert got[0][0] == E_RMS_4096[1] and "h200.json" in got[0][1]


def test_env_table_on_cpu_and_reset(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_TABLE, write(tmp_path, doc()))
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[0] == E_QK[64]
    monkeypatch.delenv(D.ENV_TABLE)
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[0] == E_QK[64]  # cached
    D.reset()
    assert choose_config("qk_rms_norm", BF16, 128, 40, "cpu")[1].startswith("heuristic")


# --------------------------------------------------------------------------- caching

def test_decisions_are_cached_per_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_TABLE, write(tmp_path, doc()))
    calls = []
    orig = D.TunedTable.lookup

    def counting(self, *a):
        calls.append(a)
        return orig(self, *a)

    monkeypatch.setattr(D.TunedTable, "lookup", counting)
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
        assert c.rows <= next_pow2(n)
        assert c.rows == 1 or c.rows * c.block_d <= D.MAX_CANDIDATE_TILE
        assert not c.persistent or math.ceil(n / c.rows) > programs
        # token order: QK only, whole rows, and only once Q+K leave L2
        assert not c.token_order or (op == "qk_rms_norm" and not c.chunked(d)
                                     and next_pow2(n) >= D.TOKEN_ORDER_MIN_ROWS)
    if op == "qk_rms_norm" and next_pow2(n) >= D.TOKEN_ORDER_MIN_ROWS and next_pow2(d) <= D.MAX_CANDIDATE_TILE:
        assert any(c.token_order for c in cands)
    if next_pow2(d) > D.MAX_CANDIDATE_TILE:
        assert any(c.chunked(d) for c in cands)


def test_persistent_candidates_only_with_more_blocks_than_programs():
    small = candidate_configs("rms_norm", BF16, 4096, 256)
    big = candidate_configs("rms_norm", BF16, 4096, 65536)
    assert not any(c.persistent for c in small)
    assert any(c.persistent for c in big)


def test_heuristic_pick_is_a_candidate():
    for op, d, n in [("qk_rms_norm", 128, 20480), ("qk_rms_norm", 256, 18), ("rms_norm", 4096, 16384),
                     ("fused_add_rms_norm", 8192, 64)]:
        h = D._heuristic(op, 2, d, next_pow2(n), D.DEFAULT_SMS)[0]
        assert h in candidate_configs(op, BF16, d, n)


def test_token_order_candidates_behind_the_switch(monkeypatch):
    monkeypatch.setattr(D, "QK_TOKEN_ORDER", True)
    big = candidate_configs("qk_rms_norm", BF16, 128, 40 * 4096)
    assert any(c.token_order for c in big)
    assert all(not c.persistent and not c.chunked(128) for c in big if c.token_order)
    assert not any(c.token_order for c in candidate_configs("qk_rms_norm", BF16, 128, 40 * 16))
    assert not any(c.token_order for c in candidate_configs("rms_norm", BF16, 128, 1 << 20))
