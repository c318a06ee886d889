"""Tuned tables (``qknorm.tuned_table``): validation, file loading, the lookup rule, the
shipped tables, and the writer's round trip (write, read back, merge)."""
import copy
import json
import os

import pytest
import torch

from qknorm import tuned_table as TT
from qknorm.config import KernelConfig
from qknorm.dispatch import candidate_configs, decide
from qknorm.tuned_table import TableError, load_table, next_pow2, parse_table, row_bucket

BF16 = torch.bfloat16


def cfg(rows=1, block_d=128, warps=1, **kw):
    return KernelConfig(rows=rows, block_d=block_d, num_warps=warps, **kw)


def entry(op, D_, rows, config, dtype="bf16", us=2.0, alts=None, **extra):
    alts = alts if alts is not None else {config.name: us, "r1.b8.w1": us * 1.5}
    e = {"op": op, "dtype": dtype, "D": D_, "rows": rows, "config": config.to_dict(), "us": us,
         "alternatives": alts}
    e.update(extra)
    return e


def doc(entries=None, gpu="NVIDIA Fake 9000", sms=100, **top):
    d = {"schema_version": TT.SCHEMA_VERSION, "gpu": gpu, "sm_count": sms, "triton": "3.6.0",
         "torch": "2.11.0", "date": "2026-11-25T00:00:00Z", "command": "qknorm tune",
         "entries": copy.deepcopy(entries if entries is not None else ENTRIES)}
    d.update(top)
    return d


# Distinct configs per entry, so a test can tell which entry a lookup used.
# Configs in the batch-invariant row layout of their width (qknorm.invariance), as tune writes them.
E_RMS_4096 = {1: cfg(1, 4096, 8), 16: cfg(2, 4096, 8), 256: cfg(4, 4096, 8), 4096: cfg(4, 4096, 8, persistent=True)}
E_RMS_8192 = {16: cfg(1, 8192, 8), 4096: cfg(1, 8192, 8, persistent=True)}
E_RMS_20000 = {1024: cfg(2, 4096, 8)}  # chunked
E_ADD = {5120: cfg(1, 8192, 8), 7168: cfg(1, 8192, 8, persistent=True)}
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


# --------------------------------------------------------------------------- names

def test_gpu_key():
    assert TT.gpu_key("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert TT.gpu_key("NVIDIA H200") == "nvidia-h200"
    assert TT.gpu_key("  NVIDIA  A100-SXM4-80GB ") == "nvidia-a100-sxm4-80gb"


def test_next_pow2_and_row_bucket():
    assert [next_pow2(n) for n in (-3, 0, 1, 2, 3, 4, 5, 1023, 1024, 1025)] == [1, 1, 1, 2, 4, 4, 8, 1024, 1024, 2048]
    assert [row_bucket(n) for n in (0, 1, 2, 40, 20480)] == [1, 1, 2, 64, 32768]
    for n in range(1, 300):
        b = row_bucket(n)
        assert b // 2 < n <= b and b & (b - 1) == 0


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
    "future schema": (_mut(["schema_version"], TT.SCHEMA_VERSION + 1), "stale or unknown schema_version"),
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
    monkeypatch.setattr(TT, "MAX_TABLE_BYTES", 100)
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
    assert TT.MAX_BUCKET_GAP == 2
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
    assert TT.admissible(whole, 8192, 5120)
    assert not TT.admissible(cfg(1, 4096, 8), 4096, 5000)  # whole row at 4096, not at 5000
    chunked = cfg(1, 4096, 8)
    assert TT.admissible(chunked, 20000, 30000)
    assert not TT.admissible(chunked, 20000, 3000)  # would no longer be chunked
    # within one block class the rule always holds: every tuned config stays admissible
    for tuned in (4100, 6000, 8192):
        for d in (4097, 5120, 7168, 8192):
            for c in candidate_configs("rms_norm", BF16, tuned, 4096):
                assert TT.admissible(c, tuned, d)


def test_lookup_dtype_same_element_size(table):
    r = _lk(table, "rms_norm", "fp16", 4096, 16)
    assert r.entry.config == E_RMS_4096[16] and "fp16 uses the bf16 entries" in r.note
    r = _lk(table, "rms_norm", "fp32", 4096, 16)
    assert r.entry is None and "no rms_norm fp32 entries" in r.note


# --------------------------------------------------------------------------- shipped tables

def test_shipped_tables_load_and_are_named_by_their_gpu():
    keys = TT.shipped_tables()
    assert "nvidia-h100-80gb-hbm3" in keys
    for key in keys:
        path = TT.shipped_table_path(key)
        assert os.path.isfile(path) and os.path.basename(path) == key + ".json"
        t = load_table(path)
        assert TT.gpu_key(t.gpu) == key and t.entries
    assert TT.shipped_table_path("NVIDIA H100 80GB HBM3") == TT.shipped_table_path("nvidia-h100-80gb-hbm3")
    assert not os.path.exists(TT.shipped_table_path("NVIDIA Nonexistent 1"))


# --------------------------------------------------------------------------- writing

def written(tmp_path, entries=None, name="nvidia-fake-9000.json", **kw):
    d = TT.table_doc(copy.deepcopy(entries if entries is not None else ENTRIES), gpu="NVIDIA Fake 9000",
                     sm_count=132, command="qknorm tune --quick", **kw)
    path = str(tmp_path / name)
    return path, TT.write_table(path, d)


def test_table_round_trip(tmp_path):
    timing = {"method": "fake", "unit": "us"}
    path, returned = written(tmp_path, timing=timing, notes="a note", date="2026-11-25T00:00:00Z")
    with open(path) as f:
        text = f.read()
    raw = json.loads(text)
    assert raw["schema_version"] == TT.SCHEMA_VERSION and raw["gpu_key"] == "nvidia-fake-9000"
    for k in ("triton", "torch", "qknorm", "date", "command", "sm_count"):
        assert raw[k]
    assert raw["torch"] == torch.__version__ and raw["complete"] is True
    assert raw["timing"] == timing and raw["notes"] == "a note" and raw["date"] == "2026-11-25T00:00:00Z"
    assert "timing" not in TT.table_doc([], gpu="X", sm_count=1, command="c")  # optional
    assert text.count('\n  {"op"') == len(ENTRIES)  # one line per entry
    assert raw["entries"] == ENTRIES
    t = load_table(path)
    assert len(t.entries) == len(returned.entries) == len(ENTRIES)
    for e in ENTRIES:
        got = t.lookup(e["op"], e["dtype"], e["D"], e["rows"])
        assert got.note == "exact" and got.entry.config == KernelConfig.from_dict(e["config"])
        assert dict(got.entry.alternatives) == e["alternatives"]
        # and what the dispatcher picks on the measured problem itself
        c, why = decide(e["op"], BF16, e["D"], e.get("n_rows", e["rows"]), t)[:2]
        assert c == got.entry.config and "nvidia-fake-9000.json" in why


def test_empty_table_round_trip(tmp_path):
    path, t = written(tmp_path, [])
    assert t.entries == {} and load_table(path).entries == {}
    assert '"entries": []' in open(path).read()


def test_write_table_refuses_an_invalid_doc(tmp_path):
    d = TT.table_doc([{"op": "rms_norm"}], gpu="X", sm_count=1, command="c")
    path = tmp_path / "bad.json"
    with pytest.raises(TableError):
        TT.write_table(str(path), d)
    assert not path.exists() and os.listdir(tmp_path) == []
    d = TT.table_doc([], gpu="X", sm_count=1, command="c")
    d["entries"] = [{"op": "rms_norm", "dtype": "bf16", "D": 64, "rows": 1, "config": KernelConfig().to_dict(),
                     "us": float("nan"), "alternatives": {}}]
    with pytest.raises(ValueError):  # NaN never reaches a file
        TT.write_table(str(path), d)
    assert not path.exists()


def test_write_table_replaces_a_table_in_place(tmp_path):
    path, _ = written(tmp_path, ENTRIES[:2])
    path, _ = written(tmp_path, ENTRIES[2:])
    assert len(load_table(path).entries) == len(ENTRIES) - 2
    assert sorted(os.listdir(tmp_path)) == ["nvidia-fake-9000.json"]  # no temporary left behind


def test_merge(tmp_path):
    qk = [e for e in ENTRIES if e["op"] == "qk_rms_norm"]
    rms = [e for e in ENTRIES if e["op"] == "rms_norm"]
    path, _ = written(tmp_path, qk)
    base = TT.read_entries(path, "NVIDIA Fake 9000")
    assert base == qk
    changed = dict(qk[0], us=0.5)
    merged = TT.merge_entries(base, rms + [changed])
    assert len(merged) == len(qk) + len(rms)
    assert merged[0]["us"] == 0.5  # replaced in place
    assert merged[len(qk):] == rms  # new keys appended in order
    assert TT.read_entries(path) == qk  # no GPU given: no check
    with pytest.raises(TableError, match="tuned on NVIDIA Fake 9000"):
        TT.read_entries(path, "NVIDIA H200")
    with pytest.raises(TableError, match="does not exist"):
        TT.read_entries(str(tmp_path / "nope.json"))
    bad = write(tmp_path, doc(schema_version=0), "stale.json")
    with pytest.raises(TableError, match="stale"):
        TT.read_entries(bad)
