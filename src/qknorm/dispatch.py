"""Variant choice: (GPU, op, dtype, D, rows) -> KernelConfig, with the reason.

Source of truth: a tuned table per GPU (``tuned/<gpu-key>.json``, written by
``qknorm tune``), else the heuristic below.

Which table
  ``QKNORM_TUNED_TABLE=/path.json`` names a user table; it takes precedence and is used
  on every device (a warning says so once if it was tuned on another GPU). Otherwise the
  table shipped for the device's normalised name (:func:`gpu_key`: ``NVIDIA H100 80GB
  HBM3`` -> ``nvidia-h100-80gb-hbm3.json``) is used, if its SM count matches the device.
  A missing, stale (schema version) or malformed table, or a GPU without one, means the
  heuristic, with ONE :class:`QknormTableWarning` per process and device; never an
  exception at call time. CPU/interpreter calls use the user table if one is set, else
  the heuristic, silently. Tables are JSON, validated strictly on load (no pickle, no eval).

Table schema (``SCHEMA_VERSION`` 1; unknown fields, wrong types, bools for ints are errors)::

  {"schema_version": 1, "gpu": "NVIDIA H100 80GB HBM3", "sm_count": 132,
   "triton": "3.6.0", "torch": "2.11.0+cu130", "date": "...Z", "command": "qknorm tune ...",
   optional: "gpu_key", "qknorm", "timing": {...}, "complete": bool, "notes": str,
   "entries": [{"op": "qk_rms_norm", "dtype": "bf16", "D": 128, "rows": 32768,
                "config": KernelConfig.to_dict(), "us": 28.0,
                "alternatives": {"r16.b128.w2": 28.2, ...},   # config name -> us, pick included
                optional: "n_rows": 20480, "shape": "T=512 Hq=32 Hk=8", "failed": {name: why}}]}

  (op, dtype, D, rows) is unique; ``rows`` is a row bucket (power of two) and ``n_rows``
  the measured row count inside it.

Lookup rule (:meth:`TunedTable.lookup`), for a call (op, dtype, D, n_rows):
  1. Rows are bucketed to the next power of two (``rows<=B`` covers ``B/2 < n_rows <= B``).
  2. dtype: entries of the call's dtype; if the table has none for this op, entries of a
     dtype with the same element size (fp16 <-> bf16: same bytes moved).
  3. D: the exact D; else the nearest tuned D (ties: the larger) of the same block_d class
     (same ``next_pow2(D)``), and only if the entry's config stays admissible for the
     call's D (``block_d >= next_pow2(D)``, i.e. whole row in registers, unless the
     config is chunked for both Ds; always true within one class, checked anyway);
     else the heuristic.
  4. Row bucket: the exact bucket; else the nearest tuned bucket in octaves (ties: the
     smaller, since a bucket's calls sit at or below its top) within ``MAX_BUCKET_GAP``
     octaves; a bucket above the largest tuned one takes the largest (the large buckets
     are DRAM-bound, so the pick no longer changes with rows); else the heuristic.

Heuristic (:func:`_heuristic`):
  1. ``block_d = next_pow2(D)`` while that is <= ``MAX_REG_BLOCK`` (whole row in
     registers); wider rows take the chunked two-pass form with ``CHUNK_BLOCK`` columns.
  2. ``rows`` = as many rows as fit a tile of ``TARGET_TILE`` elements, halved while that
     would leave fewer than ``MIN_WAVES`` blocks per SM (keep every SM busy at small T).
  3. ``num_warps`` = tile / ``ELEMS_PER_WARP`` rounded to a power of two in [1, 16]:
     about 32 elements per thread, so each thread has several 16-byte loads in flight.

Cost per call: :func:`choose_config` is one dict lookup keyed by (device, op, dtype, D,
row bucket); the device name, SM count and table are resolved once per device index.
:func:`reset` forgets all of it (after changing ``QKNORM_TUNED_TABLE``, in tests).
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from importlib import resources
from typing import NamedTuple

import torch

from .config import KernelConfig

OPS = ("rms_norm", "fused_add_rms_norm", "qk_rms_norm")
MAX_REG_BLOCK = 16384
CHUNK_BLOCK = 4096
TARGET_TILE = 4096
MIN_WAVES = 2
ELEMS_PER_WARP = 1024
MAX_CANDIDATE_TILE = 2 * TARGET_TILE  # H100 sweeps: no winner had a larger [rows, block_d] tile
DEFAULT_SMS = 132  # H100 SXM; used when no GPU can be asked (CPU, interpreter)

SCHEMA_VERSION = 1
ENV_TABLE = "QKNORM_TUNED_TABLE"
MAX_BUCKET_GAP = 2  # octaves between a call's row bucket and the tuned bucket it may use
MAX_TABLE_BYTES = 16 << 20
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Offer token-ordered QK candidates (ops.py runs kernels/qk_norm.py:qk_rms_norm_tokens_kernel).
QK_TOKEN_ORDER = True
TOKEN_ORDER_MIN_ROWS = 4096  # token order only pays off once Q+K leave L2 (H100 data)


class QknormTableWarning(UserWarning):
    """A tuned table could not be used; the dispatcher runs on its heuristic."""


class TableError(ValueError):
    """A tuned table file is missing, stale or malformed."""


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def gpu_key(name: str) -> str:
    """File stem of a GPU's table: lower case, runs of other characters -> ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.lru_cache(maxsize=64)
def sm_count(device_index: int | None) -> int:
    """Multiprocessors of a CUDA device (cached: asked once per device)."""
    if device_index is None or not torch.cuda.is_available():
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_index(device) -> int | None:
    if device is None:
        return None
    if type(device) is not torch.device:
        device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _warps_for(tile: int) -> int:
    return max(1, min(16, next_pow2(max(1, tile // ELEMS_PER_WARP))))


def _check(op: str, D: int, n_rows: int):
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if D < 1 or n_rows < 0:
        raise ValueError(f"need D >= 1 and n_rows >= 0, got D={D}, n_rows={n_rows}")


@functools.lru_cache(maxsize=8192)
def _heuristic(op: str, itemsize: int, D: int, row_bucket: int, sms: int) -> tuple[KernelConfig, str]:
    if next_pow2(D) <= MAX_REG_BLOCK:
        block_d = next_pow2(D)
        why = f"row of {D} fits registers (block_d={block_d})"
    else:
        block_d = CHUNK_BLOCK
        why = f"row of {D} > {MAX_REG_BLOCK}: chunked two-pass, block_d={block_d}"
    rows = max(1, TARGET_TILE // block_d)
    while rows > 1 and -(-row_bucket // rows) < MIN_WAVES * sms:
        rows //= 2
    why += f"; rows={rows} (tile <= {TARGET_TILE} elements, >= {MIN_WAVES} blocks/SM on {sms} SMs when rows allow)"
    warps = _warps_for(rows * block_d)
    why += f"; num_warps={warps} (~{ELEMS_PER_WARP // 32} elements per thread)"
    return KernelConfig(rows=rows, block_d=block_d, num_warps=warps), "heuristic: " + why


# --------------------------------------------------------------------------- tuned tables

class Entry(NamedTuple):
    """One tuned decision: the measured winner and what else was measured (name -> us)."""

    op: str
    dtype: str
    D: int
    rows: int                # row bucket (power of two)
    config: KernelConfig
    us: float
    alternatives: tuple[tuple[str, float], ...]  # fastest first, the pick included
    n_rows: int | None = None  # rows of the measured problem
    shape: str | None = None   # e.g. "T=64 Hq=32 Hk=8"


class Lookup(NamedTuple):
    entry: Entry | None
    note: str  # how the entry was found, or why none was


_TOP_REQUIRED = {"schema_version": int, "gpu": str, "sm_count": int, "triton": str, "torch": str,
                 "date": str, "command": str, "entries": list}
_TOP_OPTIONAL = {"gpu_key": str, "qknorm": str, "timing": dict, "complete": bool, "notes": str}
_ENTRY_REQUIRED = {"op": str, "dtype": str, "D": int, "rows": int, "config": dict, "us": (int, float),
                   "alternatives": dict}
_ENTRY_OPTIONAL = {"n_rows": int, "shape": str, "failed": dict}
_CONFIG_TYPES = {"rows": int, "block_d": int, "num_warps": int, "persistent": bool,
                 "programs_per_sm": int, "token_order": bool, "pdl": bool}


def _typed(value, types, what: str):
    # bool is an int in Python: never accept it where a number is meant, nor the reverse.
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if not ok:
        names = "/".join(t.__name__ for t in types)
        raise TableError(f"{what} must be {names}, got {type(value).__name__} {value!r}")
    return value


def _fields(obj: dict, required: dict, optional: dict, what: str):
    if not isinstance(obj, dict):
        raise TableError(f"{what} must be an object, got {type(obj).__name__}")
    missing = sorted(set(required) - set(obj))
    unknown = sorted(set(obj) - set(required) - set(optional))
    if missing:
        raise TableError(f"{what} lacks {missing}")
    if unknown:
        raise TableError(f"{what} has unknown fields {unknown}")
    for k, v in obj.items():
        _typed(v, required.get(k) or optional[k], f"{what}.{k}")


def _us(v, what: str) -> float:
    _typed(v, (int, float), what)
    if not (math.isfinite(v) and v > 0):
        raise TableError(f"{what} must be a positive finite time in us, got {v!r}")
    return float(v)


def _config(d: dict, what: str) -> KernelConfig:
    if not isinstance(d, dict):
        raise TableError(f"{what} must be an object")
    for k, v in d.items():
        if k in _CONFIG_TYPES:
            _typed(v, _CONFIG_TYPES[k], f"{what}.{k}")
    try:
        return KernelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise TableError(f"{what}: {e}") from None


def _entry(e: dict, i: int) -> Entry:
    what = f"entries[{i}]"
    _fields(e, _ENTRY_REQUIRED, _ENTRY_OPTIONAL, what)
    if e["op"] not in OPS:
        raise TableError(f"{what}.op must be one of {OPS}, got {e['op']!r}")
    if e["dtype"] not in DTYPES:
        raise TableError(f"{what}.dtype must be one of {list(DTYPES)}, got {e['dtype']!r}")
    if e["D"] < 1:
        raise TableError(f"{what}.D must be >= 1, got {e['D']}")
    if e["rows"] < 1 or e["rows"] & (e["rows"] - 1):
        raise TableError(f"{what}.rows must be a power of two (a row bucket), got {e['rows']}")
    cfg = _config(e["config"], f"{what}.config")
    if cfg.token_order and e["op"] != "qk_rms_norm":
        raise TableError(f"{what}.config: token_order is a qk_rms_norm variant, not {e['op']}")
    alts = tuple(sorted(((_typed(k, str, f"{what}.alternatives key"), _us(v, f"{what}.alternatives[{k!r}]"))
                         for k, v in e["alternatives"].items()), key=lambda kv: kv[1]))
    if "n_rows" in e and not (e["rows"] // 2 < e["n_rows"] <= e["rows"] or e["n_rows"] == e["rows"] == 1):
        raise TableError(f"{what}.n_rows={e['n_rows']} is not in the bucket rows<={e['rows']}")
    return Entry(e["op"], e["dtype"], e["D"], e["rows"], cfg, _us(e["us"], f"{what}.us"), alts,
                 e.get("n_rows"), e.get("shape"))


class TunedTable:
    """A validated tuned table. Build with :func:`load_table` or :func:`parse_table`."""

    def __init__(self, doc: dict, path: str | None = None):
        if not isinstance(doc, dict):
            raise TableError(f"a tuned table is a JSON object, got {type(doc).__name__}")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise TableError(f"stale or unknown schema_version {version!r} (this qknorm reads "
                             f"{SCHEMA_VERSION}); re-run `qknorm tune`")
        _fields(doc, _TOP_REQUIRED, _TOP_OPTIONAL, "table")
        if doc["sm_count"] < 1:
            raise TableError(f"table.sm_count must be >= 1, got {doc['sm_count']}")
        self.path = path
        self.gpu: str = doc["gpu"]
        self.sm_count: int = doc["sm_count"]
        self.meta = {k: v for k, v in doc.items() if k != "entries"}
        self.entries: dict[tuple[str, str, int, int], Entry] = {}
        self._index: dict[tuple[str, str], dict[int, list[int]]] = {}
        for i, raw in enumerate(doc["entries"]):
            e = _entry(raw, i)
            key = (e.op, e.dtype, e.D, e.rows)
            if key in self.entries:
                raise TableError(f"entries[{i}] repeats the key {key}")
            self.entries[key] = e
            self._index.setdefault((e.op, e.dtype), {}).setdefault(e.D, []).append(e.rows)
        for ds in self._index.values():
            for buckets in ds.values():
                buckets.sort()

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.path else f"<table for {self.gpu}>"

    def lookup(self, op: str, dtype: str, D: int, bucket: int) -> Lookup:
        """The entry behind (op, dtype, D, row bucket) under the rule in the module docstring."""
        notes = []
        dt = dtype
        if (op, dt) not in self._index:
            size = DTYPES[dtype].itemsize
            same = [n for n in DTYPES if n != dtype and DTYPES[n].itemsize == size and (op, n) in self._index]
            if not same:
                return Lookup(None, f"no {op} {dtype} entries")
            dt = same[0]
            notes.append(f"{dtype} uses the {dt} entries (same element size)")
        ds = self._index[(op, dt)]
        d_used = D
        if D not in ds:
            cls = next_pow2(D)
            near = [t for t in ds if next_pow2(t) == cls]
            if not near:
                return Lookup(None, f"no {op} {dt} entry with D={D} or another D of its block class "
                                    f"(next_pow2={cls}); tuned D: {sorted(ds)}")
            d_used = min(near, key=lambda t: (abs(t - D), -t))
            notes.append(f"nearest tuned D={d_used} of the same block class")
        buckets = ds[d_used]
        b_used = bucket
        if bucket not in buckets:
            if bucket > buckets[-1]:
                b_used = buckets[-1]
                notes.append(f"rows<={bucket} above the largest tuned bucket rows<={b_used}")
            else:
                lb = bucket.bit_length()
                b_used = min(buckets, key=lambda b: (abs(b.bit_length() - lb), b))
                gap = abs(b_used.bit_length() - lb)
                if gap > MAX_BUCKET_GAP:
                    return Lookup(None, f"nearest tuned row bucket of {op} {dt} D={d_used} to rows<={bucket} "
                                        f"is rows<={b_used}, {gap} octaves away (> {MAX_BUCKET_GAP})")
                notes.append(f"nearest tuned row bucket to rows<={bucket}")
        e = self.entries[(op, dt, d_used, b_used)]
        if d_used != D and not _admissible(e.config, e.D, D):
            return Lookup(None, f"config {e.config.name} tuned for D={e.D} is not admissible for D={D}")
        return Lookup(e, "exact" if not notes else "; ".join(notes))


def _admissible(cfg: KernelConfig, tuned_d: int, D: int) -> bool:
    """Whether a config tuned for ``tuned_d`` keeps its form at ``D``: a whole row in
    registers needs ``block_d >= next_pow2(D)``; a chunked config must stay chunked."""
    if cfg.chunked(tuned_d):
        return cfg.chunked(D)
    return cfg.block_d >= next_pow2(D)


def parse_table(doc: dict, path: str | None = None) -> TunedTable:
    """Validate a decoded table (raises :class:`TableError`)."""
    return TunedTable(doc, path)


def _reject_constant(name):
    raise TableError(f"non-finite number {name} in JSON")


def load_table(path) -> TunedTable:
    """Read and validate a tuned table file (raises :class:`TableError`, never anything else
    for a bad file)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_TABLE_BYTES:
            raise TableError(f"{path} is {size} bytes (> {MAX_TABLE_BYTES})")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f, parse_constant=_reject_constant)
    except FileNotFoundError:
        raise TableError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TableError(f"{path} is not readable JSON ({e})") from None
    try:
        return TunedTable(doc, path)
    except TableError as e:
        raise TableError(f"{path}: {e}") from None


def shipped_table_path(name_or_key: str) -> str:
    """Where the table of a GPU (name or key) lives in the installed package."""
    return str(resources.files(__package__).joinpath("tuned", gpu_key(name_or_key) + ".json"))


def shipped_tables() -> list[str]:
    """Keys of the tables shipped in the package."""
    d = resources.files(__package__).joinpath("tuned")
    if not d.is_dir():
        return []
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".json"))


# --------------------------------------------------------------------------- per-device state

class DeviceState(NamedTuple):
    table: TunedTable | None
    sms: int
    gpu: str | None    # device name, None off the GPU
    fallback: str      # why there is no table ("" when there is one)


def _warn(msg: str):
    warnings.warn(msg, QknormTableWarning, stacklevel=4)


@functools.lru_cache(maxsize=64)
def device_state(device_index: int | None) -> DeviceState:
    """Table, SM count and GPU name of a device: resolved once per process and device
    index, with at most one warning when the table cannot be used."""
    sms = sm_count(device_index)
    gpu = None
    if device_index is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device_index)
    where = f"GPU {device_index} ({gpu})" if gpu else "CPU"
    user = os.environ.get(ENV_TABLE, "").strip()
    if user:
        try:
            table = load_table(user)
        except TableError as e:
            why = f"{ENV_TABLE} table unusable: {e}"
            _warn(f"qknorm: {why}; {where} uses the heuristic dispatcher")
            return DeviceState(None, sms, gpu, why)
        if gpu is not None and (gpu_key(table.gpu) != gpu_key(gpu) or table.sm_count != sms):
            _warn(f"qknorm: {ENV_TABLE}={user} was tuned on {table.gpu} ({table.sm_count} SMs); "
                  f"using it on {where} ({sms} SMs) as asked")
        return DeviceState(table, sms, gpu, "")
    if gpu is None:
        return DeviceState(None, sms, None, f"no GPU, no {ENV_TABLE} set")
    path = shipped_table_path(gpu)
    try:
        if not os.path.exists(path):
            raise TableError(f"no tuned table for {gpu} (looked for {os.path.basename(path)} in "
                             f"qknorm/tuned; shipped: {', '.join(shipped_tables()) or 'none'}); "
                             f"`qknorm tune` makes one, {ENV_TABLE} points to it")
        table = load_table(path)
        if gpu_key(table.gpu) != gpu_key(gpu):
            raise TableError(f"{path} was tuned on {table.gpu}, not {gpu}")
        if table.sm_count != sms:
            raise TableError(f"{path} was tuned on {table.sm_count} SMs, {where} has {sms} "
                             f"(MIG slice or another SKU)")
    except TableError as e:
        _warn(f"qknorm: {e}; {where} uses the heuristic dispatcher")
        return DeviceState(None, sms, gpu, str(e))
    return DeviceState(table, sms, gpu, "")


# --------------------------------------------------------------------------- decisions

class Decision(NamedTuple):
    config: KernelConfig
    reason: str
    table: TunedTable | None
    lookup: Lookup | None   # None when no table was consulted
    bucket: int


def decide(op: str, dtype: torch.dtype, D: int, n_rows: int, table: TunedTable | None,
           sms: int = DEFAULT_SMS, fallback: str = "no tuned table") -> Decision:
    """The decision for one problem under ``table`` (None: the heuristic). Uncached; what
    :func:`choose_config` caches, and what ``explain`` prints."""
    _check(op, D, n_rows)
    dname = DTYPE_NAMES.get(dtype)
    bucket = next_pow2(max(1, n_rows))
    found = None
    if table is not None:
        found = table.lookup(op, dname, D, bucket) if dname else Lookup(None, f"no entries for {dtype}")
        e = found.entry
        if e is not None:
            src = f"({e.op}, {e.dtype}, D={e.D}, rows<={e.rows})"
            return Decision(e.config, f"tuned table {table.name} entry {src} [{found.note}]: "
                                      f"{e.us:.2f} us measured, fastest of {len(e.alternatives)}",
                            table, found, bucket)
    cfg, why = _heuristic(op, dtype.itemsize, D, bucket, sms)
    if found is not None:
        why = f"heuristic (tuned table {table.name}: {found.note})" + why[len("heuristic"):]
    elif fallback:
        why = f"heuristic ({fallback})" + why[len("heuristic"):]
    return Decision(cfg, why, table, found, bucket)


_decisions: dict = {}


def choose_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> tuple[KernelConfig, str]:
    """The dispatcher's pick for ``op`` on ``n_rows`` rows of width ``D``, and why.

    One dict lookup per call, keyed by (device, op, dtype, D, row bucket): no device
    query, no tensor allocation. The first call per key runs :func:`decide`.
    """
    key = (device, op, dtype, D, 1 << (n_rows - 1).bit_length() if n_rows > 1 else n_rows)
    try:
        return _decisions[key]
    except (KeyError, TypeError):  # TypeError: an unhashable device spec
        return _choose_slow(op, dtype, D, n_rows, device)


def _choose_slow(op, dtype, D, n_rows, device):
    _check(op, D, n_rows)
    idx = _device_index(device)
    bucket = next_pow2(max(1, n_rows))
    resolved = (idx, op, dtype, D, bucket)
    hit = _decisions.get(resolved)
    if hit is None:
        st = device_state(idx)
        d = decide(op, dtype, D, n_rows, st.table, st.sms, st.fallback)
        hit = _decisions[resolved] = (d.config, d.reason)
    # Cache under the caller's own device spec too, unless it names no fixed device
    # ("cuda" without an index follows torch.cuda.current_device()).
    if idx is None or isinstance(device, int) or (isinstance(device, torch.device) and device.index is not None) \
            or (isinstance(device, str) and ":" in device):
        try:
            _decisions[(device, op, dtype, D, bucket if n_rows > 1 else n_rows)] = hit
        except TypeError:
            pass
    return hit


_reset_hooks: list = []


def add_reset_hook(fn) -> None:
    """Call ``fn()`` after every :func:`reset` (callers that cache decisions, such as the
    ops' plan cache, forget them then)."""
    if fn not in _reset_hooks:
        _reset_hooks.append(fn)


def reset() -> None:
    """Forget cached decisions and per-device tables (re-reads ``QKNORM_TUNED_TABLE``), then
    run the hooks of :func:`add_reset_hook`."""
    _decisions.clear()
    device_state.cache_clear()
    for fn in list(_reset_hooks):
        fn()


def candidate_configs(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> list[KernelConfig]:
    """Every admissible config worth measuring for this problem (used by bench and tune).

    Whole-row tiles of ``rows`` x ``next_pow2(D)`` up to ``MAX_CANDIDATE_TILE`` elements
    (rows up to the row bucket), each with the heuristic's warp count, half and double;
    the persistent form only where there are more blocks than persistent programs; the
    chunked form (``CHUNK_BLOCK``, ``2 * CHUNK_BLOCK``) only for rows wider than
    ``MAX_CANDIDATE_TILE``; token-ordered QK only behind ``QK_TOKEN_ORDER``."""
    _check(op, D, n_rows)
    out: list[KernelConfig] = []
    seen = set()
    blocks = [next_pow2(D)] if next_pow2(D) <= MAX_REG_BLOCK else []
    # The chunked form reads each row twice; on the H100 sweeps it never won while the
    # row fit a tile of MAX_CANDIDATE_TILE, so it is measured only for wider rows.
    if next_pow2(D) > MAX_CANDIDATE_TILE:
        blocks += [b for b in (CHUNK_BLOCK, 2 * CHUNK_BLOCK) if b < D and b not in blocks]
    token_order = QK_TOKEN_ORDER and op == "qk_rms_norm" and next_pow2(max(1, n_rows)) >= TOKEN_ORDER_MIN_ROWS
    # The persistent grid is min(blocks, programs_per_sm * SMs) programs: with no more
    # blocks than that it is the plain grid plus a loop, so it is not a separate candidate.
    programs = KernelConfig().programs_per_sm * sm_count(_device_index(device))
    for block_d in blocks:
        max_rows = max(1, MAX_CANDIDATE_TILE // block_d)
        rows = 1
        while rows <= max_rows and rows <= next_pow2(max(1, n_rows)):
            base = _warps_for(rows * block_d)
            for warps in sorted({max(1, base // 2), base, min(16, base * 2)}):
                variants = [(False, False)]  # (persistent, token_order)
                if -(-n_rows // rows) > programs:
                    variants.append((True, False))
                if token_order and block_d >= D:
                    variants.append((False, True))
                for persistent, tok in variants:
                    cfg = KernelConfig(rows=rows, block_d=block_d, num_warps=warps, persistent=persistent,
                                       token_order=tok)
                    if cfg not in seen:
                        seen.add(cfg)
                        out.append(cfg)
            rows *= 2
    return out


def measured_alternatives(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> list[str]:
    """Config names the device's tuned table measured for this problem's entry, fastest
    first (the bench times these as the "top" variants); empty without a table entry."""
    _check(op, D, n_rows)
    st = device_state(_device_index(device))
    dname = DTYPE_NAMES.get(dtype)
    if st.table is None or dname is None:
        return []
    e = st.table.lookup(op, dname, D, next_pow2(max(1, n_rows))).entry
    return [name for name, _ in e.alternatives] if e is not None else []


def explain_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None, *,
                   table: TunedTable | None = None, top: int = 5) -> str:
    """Which config runs this problem and why: the variant, the table entry or heuristic
    rule behind it, and the measured alternatives when the table has them.

    ``table`` explains the decision under that table instead of the device's own."""
    if table is None:
        st = device_state(_device_index(device))
        d = decide(op, dtype, D, n_rows, st.table, st.sms, st.fallback)
    else:
        d = decide(op, dtype, D, n_rows, table, sm_count(_device_index(device)))
    return _describe(op, dtype, D, n_rows, d, top)


def _versions() -> tuple[str | None, str]:
    try:
        from importlib.metadata import version
        tv = version("triton")
    except Exception:  # noqa: BLE001 - only for a remark in explain
        tv = None
    return tv, torch.__version__


def _describe(op, dtype, D, n_rows, d: Decision, top: int) -> str:
    cfg = d.config
    chunk = "chunked two-pass" if cfg.chunked(D) else "row in registers"
    grid = (f"persistent grid-stride, {cfg.programs_per_sm} programs/SM" if cfg.persistent
            else "one program per block")
    extra = (", token order" if cfg.token_order else "") + (", PDL" if cfg.pdl else "")
    head = (f"{op}: dtype={str(dtype).replace('torch.', '')} D={D} rows={n_rows} (bucket rows<={d.bucket}) "
            f"-> {cfg.name} ({chunk}, {grid}{extra}, {cfg.rows} rows x {cfg.block_d} cols, "
            f"{cfg.num_warps} warps)")
    lines = [head, f"  {d.reason}"]
    t = d.table
    if t is not None:
        m = t.meta
        now = _versions()
        tv = m["triton"] + (f" (running {now[0]})" if now[0] and now[0] != m["triton"] else "")
        pv = m["torch"] + (f" (running {now[1]})" if now[1] != m["torch"] else "")
        lines.append(f"  table: {t.path or t.name} ({t.gpu}, {t.sm_count} SMs, triton {tv}, torch {pv}, "
                     f"{m['date']})")
    e = d.lookup.entry if d.lookup else None
    if e is not None:
        if e.shape or e.n_rows:
            lines.append(f"  measured on: {e.shape or ''}{' ' if e.shape else ''}({e.n_rows} rows)")
        if e.alternatives:
            best = e.alternatives[0][1]
            lines.append(f"  measured alternatives ({min(top, len(e.alternatives))} fastest of "
                         f"{len(e.alternatives)}):")
            for name, us in e.alternatives[:top]:
                mark = "  <- pick" if name == e.config.name else ""
                lines.append(f"    {name:22s} {us:9.2f} us  {100 * (us / best - 1):+6.1f}%{mark}")
            if e.config.name not in dict(e.alternatives[:top]):
                us = dict(e.alternatives).get(e.config.name)
                if us is not None:
                    lines.append(f"    {e.config.name:22s} {us:9.2f} us  {100 * (us / best - 1):+6.1f}%  <- pick")
    return "\n".join(lines)
