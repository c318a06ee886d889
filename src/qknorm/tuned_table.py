"""Per-GPU tuned tables: the one module that reads and writes the format.

A tuned table (``tuned/<gpu-key>.json``, written by ``qknorm tune``) maps
(op, dtype, D, row bucket) to the :class:`~qknorm.config.KernelConfig` measured fastest on
one GPU, with every time measured beside it. Which table a device uses, and what happens
without one, is the dispatcher's business (:mod:`qknorm.dispatch`); this module only
validates, looks up and writes. Tables are JSON, validated strictly on load (no pickle, no
eval); a bad file raises :class:`TableError` and nothing else.

Table schema (``SCHEMA_VERSION`` 1; unknown fields, wrong types, bools for ints are errors)::

  {"schema_version": 1, "gpu": "NVIDIA H100 80GB HBM3", "sm_count": 132,
   "triton": "3.6.0", "torch": "2.11.0+cu130", "date": "...Z", "command": "qknorm tune ...",
   optional: "gpu_key", "qknorm", "timing": {...}, "complete": bool, "notes": str,
   "entries": [{"op": "qk_rms_norm", "dtype": "bf16", "D": 128, "rows": 32768,
                "config": KernelConfig.to_dict(), "us": 28.0,
                "alternatives": {"r16.b128.w2": 28.2, ...},   # config name -> us, pick included
                optional: "n_rows": 20480, "shape": "T=512 Hq=32 Hk=8", "failed": {name: why}}]}

  (op, dtype, D, rows) is unique; ``rows`` is a row bucket (:func:`row_bucket`: the next
  power of two) and ``n_rows`` the measured row count inside it.

Lookup rule (:meth:`TunedTable.lookup`), for a call (op, dtype, D, n_rows):
  1. Rows are bucketed to the next power of two (``rows<=B`` covers ``B/2 < n_rows <= B``).
  2. dtype: entries of the call's dtype; if the table has none for this op, entries of a
     dtype with the same element size (fp16 <-> bf16: same bytes moved).
  3. D: the exact D; else the nearest tuned D (ties: the larger) of the same block_d class
     (same ``next_pow2(D)``), and only if the entry's config stays admissible for the
     call's D (:func:`admissible`; always true within one class, checked anyway);
     else no entry.
  4. Row bucket: the exact bucket; else the nearest tuned bucket in octaves (ties: the
     smaller, since a bucket's calls sit at or below its top) within ``MAX_BUCKET_GAP``
     octaves; a bucket above the largest tuned one takes the largest (the large buckets
     are DRAM-bound, so the pick no longer changes with rows); else no entry.

Writing: :func:`table_doc` wraps entries in a document, :func:`write_table` validates it
as :func:`load_table` would and writes it atomically, one line per entry (diffable);
:func:`read_entries` and :func:`merge_entries` continue a table over several runs.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import torch

from ._version import __version__
from .config import KernelConfig

OPS = ("rms_norm", "fused_add_rms_norm", "qk_rms_norm")
OP_ALIASES = {"qk": "qk_rms_norm", "rms": "rms_norm", "add": "fused_add_rms_norm"}  # short names of the CLIs
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

SCHEMA_VERSION = 1
ENV_TABLE = "QKNORM_TUNED_TABLE"  # a user table; takes precedence over the shipped one
MAX_BUCKET_GAP = 2  # octaves between a call's row bucket and the tuned bucket it may use
MAX_TABLE_BYTES = 16 << 20


class QknormTableWarning(UserWarning):
    """A tuned table could not be used; the dispatcher runs on its heuristic."""


class TableError(ValueError):
    """A tuned table file is missing, stale or malformed."""


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n``.

    Parameters
    ----------
    n : int
        Any integer; values below 2 give 1.

    Returns
    -------
    int
        ``2**k`` for the smallest ``k >= 0`` with ``2**k >= n``.
    """
    return 1 << max(0, int(n) - 1).bit_length()


def row_bucket(n_rows: int) -> int:
    """The row bucket of ``n_rows`` rows: the table key ``rows`` (``next_pow2``, at least 1).

    Parameters
    ----------
    n_rows : int
        Rows of one call (0 allowed: bucket 1).

    Returns
    -------
    int
        A power of two ``B`` with ``B // 2 < n_rows <= B`` (``B = 1`` for 0 or 1 rows).
    """
    return next_pow2(max(1, n_rows))


def gpu_key(name: str) -> str:
    """File stem of a GPU's table: lower case, runs of other characters -> ``-``.

    Parameters
    ----------
    name : str
        A GPU name as ``torch.cuda.get_device_name()`` returns it, or a key already.

    Returns
    -------
    str
        E.g. ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``.
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------- reading

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
    """What :meth:`TunedTable.lookup` found: the entry (None: none usable) and how."""

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
    """A validated tuned table. Build with :func:`load_table` or :func:`parse_table`.

    Attributes: ``path`` (file or None), ``gpu`` (device name it was tuned on),
    ``sm_count``, ``meta`` (every top-level field but the entries) and ``entries``
    (``(op, dtype, D, rows) -> Entry``).
    """

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
        """The file name, or ``<table for GPU>`` for a table not read from a file."""
        return os.path.basename(self.path) if self.path else f"<table for {self.gpu}>"

    def lookup(self, op: str, dtype: str, D: int, bucket: int) -> Lookup:
        """The entry behind one call under the lookup rule of this module's docstring.

        Parameters
        ----------
        op : str
            One of ``OPS``.
        dtype : str
            A key of ``DTYPES`` (``"bf16"``, ``"fp16"``, ``"fp32"``).
        D : int
            Normalised width (elements).
        bucket : int
            The call's row bucket (:func:`row_bucket` of its row count).

        Returns
        -------
        Lookup
            The entry used (None when none is usable) and a note on how it was found or
            why none was. Never raises for a miss.
        """
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
        if d_used != D and not admissible(e.config, e.D, D):
            return Lookup(None, f"config {e.config.name} tuned for D={e.D} is not admissible for D={D}")
        return Lookup(e, "exact" if not notes else "; ".join(notes))


def admissible(cfg: KernelConfig, tuned_d: int, D: int) -> bool:
    """Whether a config tuned for width ``tuned_d`` keeps its form at width ``D``.

    A whole row in registers needs ``block_d >= next_pow2(D)``; a chunked config must stay
    chunked.

    Parameters
    ----------
    cfg : KernelConfig
        The tuned config.
    tuned_d : int
        Width (elements) the config was measured at.
    D : int
        Width (elements) of the call.

    Returns
    -------
    bool
    """
    if cfg.chunked(tuned_d):
        return cfg.chunked(D)
    return cfg.block_d >= next_pow2(D)


def parse_table(doc: dict, path: str | None = None) -> TunedTable:
    """Validate a decoded table document.

    Parameters
    ----------
    doc : dict
        The decoded JSON object.
    path : str or None
        Where it came from (named in decisions and ``explain``).

    Returns
    -------
    TunedTable
        The table, its entries indexed for :meth:`TunedTable.lookup`.

    Raises
    ------
    TableError
        The document breaks the schema (the message names the field).
    """
    return TunedTable(doc, path)


def _reject_constant(name):
    raise TableError(f"non-finite number {name} in JSON")


def _load(path: str) -> tuple[dict, TunedTable]:
    """The decoded document of a table file and the table; TableError for anything wrong."""
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
        return doc, TunedTable(doc, path)
    except TableError as e:
        raise TableError(f"{path}: {e}") from None


def load_table(path: str | os.PathLike) -> TunedTable:
    """Read and validate a tuned table file.

    Parameters
    ----------
    path : str or os.PathLike
        The JSON file (at most ``MAX_TABLE_BYTES``).

    Returns
    -------
    TunedTable

    Raises
    ------
    TableError
        The file is missing, unreadable, too large, not JSON (NaN/Infinity included) or
        breaks the schema (:func:`parse_table`); never anything else for a bad file.
    """
    return _load(os.fspath(path))[1]


def shipped_table_path(name_or_key: str) -> str:
    """Where the table of a GPU lives in the installed package (it may not exist).

    Parameters
    ----------
    name_or_key : str
        A GPU name (``"NVIDIA H100 80GB HBM3"``) or its :func:`gpu_key`.

    Returns
    -------
    str
        ``.../qknorm/tuned/<gpu-key>.json``.
    """
    return str(resources.files(__package__).joinpath("tuned", gpu_key(name_or_key) + ".json"))


def shipped_tables() -> list[str]:
    """Keys (:func:`gpu_key`) of the tables shipped in the package, sorted."""
    d = resources.files(__package__).joinpath("tuned")
    if not d.is_dir():
        return []
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".json"))


# --------------------------------------------------------------------------- writing

def _key(e: dict) -> tuple[str, str, int, int]:
    return (e["op"], e["dtype"], e["D"], e["rows"])


def merge_entries(base: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """Raw entries of ``base`` with those of ``new`` replacing the same key, the rest appended.

    Parameters
    ----------
    base, new : sequence of dict
        Raw (JSON) entries, keyed by (op, dtype, D, rows).

    Returns
    -------
    list of dict
        ``base``'s order, then the new keys in ``new``'s order.
    """
    out = {_key(e): e for e in base}
    for e in new:
        out[_key(e)] = e
    return list(out.values())


def read_entries(path: str | os.PathLike, gpu: str | None = None) -> list[dict]:
    """The raw entries of a valid table file (to continue it with ``qknorm tune --merge``).

    Parameters
    ----------
    path : str or os.PathLike
        The table file.
    gpu : str or None
        When given, the GPU the table must have been tuned on (compared by :func:`gpu_key`).

    Returns
    -------
    list of dict
        The entries as stored.

    Raises
    ------
    TableError
        The file does not load (see :func:`load_table`) or was tuned on another GPU.
    """
    doc, table = _load(os.fspath(path))
    if gpu is not None and gpu_key(table.gpu) != gpu_key(gpu):
        raise TableError(f"{path} was tuned on {table.gpu}, not {gpu}")
    return doc["entries"]


def table_doc(entries: list[dict], *, gpu: str, sm_count: int, command: str, complete: bool = True,
              timing: dict | None = None, notes: str | None = None, date: str | None = None) -> dict:
    """A table document (schema ``SCHEMA_VERSION``) around raw entries.

    Records the running triton, torch and qknorm versions. Not validated here:
    :func:`write_table` validates before writing.

    Parameters
    ----------
    entries : list of dict
        Raw entries (see the schema).
    gpu : str
        Device name the entries were measured on.
    sm_count : int
        Its multiprocessor count.
    command : str
        The command line that made the table.
    complete : bool
        False for a run cut short or with failed configs.
    timing : dict or None
        How the times were measured (method, statistic, unit ...).
    notes : str or None
        Free text.
    date : str or None
        ISO 8601 UTC time; default now.

    Returns
    -------
    dict
    """
    import triton

    doc = {"schema_version": SCHEMA_VERSION, "gpu": gpu, "gpu_key": gpu_key(gpu), "sm_count": sm_count,
           "triton": triton.__version__, "torch": torch.__version__, "qknorm": __version__,
           "date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": command, "complete": complete, "entries": entries}
    if timing is not None:
        doc["timing"] = timing
    if notes:
        doc["notes"] = notes
    return doc


def dumps_table(doc: dict) -> str:
    """JSON text of a table document: header fields indented, one line per entry (diffable).

    Parameters
    ----------
    doc : dict
        A table document (:func:`table_doc`).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        An entry holds NaN or an infinity.
    """
    head = {k: v for k, v in doc.items() if k != "entries"}
    lines = ["{"]
    lines += [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    body = ",\n".join("  " + json.dumps(e, allow_nan=False) for e in doc["entries"])
    lines.append(' "entries": [' + ("\n" + body + "\n ]" if body else "]"))
    return "\n".join(lines) + "\n}\n"


def write_table(path: str, doc: dict) -> TunedTable:
    """Validate a table document as :func:`load_table` would, then write it atomically.

    Parameters
    ----------
    path : str
        Destination file; its directory is created if missing. Replaced in one step
        (a temporary file in the same directory, then ``os.replace``).
    doc : dict
        A table document (:func:`table_doc`).

    Returns
    -------
    TunedTable
        The table as a later :func:`load_table` of ``path`` reads it.

    Raises
    ------
    TableError
        ``doc`` breaks the schema; nothing is written.
    ValueError
        A number is NaN or infinite; nothing is written.
    """
    text = dumps_table(doc)
    table = parse_table(json.loads(text), path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".qknorm-tune-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return table
