"""The dispatcher: (GPU, op, dtype, D, rows) -> KernelConfig, with the reason.

Source of truth: the device's tuned table (:mod:`qknorm.tuned_table`: schema, validation
and the lookup rule), else the heuristic below. ``qknorm.explain`` prints a decision.

Which table
  ``QKNORM_TUNED_TABLE=/path.json`` names a user table; it takes precedence and is used
  on every device (a warning says so once if it was tuned on another GPU). Otherwise the
  table shipped for the device's normalised name (:func:`~qknorm.tuned_table.gpu_key`:
  ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3.json``) is used, if its SM count
  matches the device. A missing, stale (schema version) or malformed table, or a GPU
  without one, means the heuristic, with ONE :class:`~qknorm.tuned_table.QknormTableWarning`
  per process and device; never an exception at call time. CPU/interpreter calls use the
  user table if one is set, else the heuristic, silently.

Heuristic (:func:`heuristic`), from the row bucket ``B`` and the SM count (a "block" is one program's
``[rows, block_d]`` tile; ``blocks = ceil(B / rows)``):
  1. ``block_d = next_pow2(D)`` while that is <= ``MAX_REG_BLOCK`` (whole row in
     registers); wider rows take the chunked two-pass form with ``CHUNK_BLOCK`` columns, one row per program.
  2. Decode sizes (``B <= DECODE_ROWS``), rows narrower than one warp's 16-byte vectors
     (``block_d * itemsize < WARP_ROW_BYTES``, 512 bytes): a few large programs of ``DECODE_TILE``
     elements, one 16-byte load per thread.
  3. Otherwise ``rows`` = as many rows as fit a tile of ``TARGET_TILE`` elements, or of ``ELEMS_PER_WARP``
     per warp along the row where the row's canonical warps (:mod:`qknorm.invariance`) hold more (8 warps along
     a row of 4096: 2 rows); rows narrower than a warp take ``MAX_CANDIDATE_TILE`` elements while that leaves
     ``NARROW_TILE_WAVES`` blocks per SM (each program's fixed costs spread over more rows). Then halved while
     that would leave fewer than ``MIN_WAVES`` blocks per SM (``MIN_WAVES_FUSED`` for the fused add, whose
     programs read and write both x and the residual).
  4. Persistent grid (``rms_norm`` and the fused add; QK keeps the plain grid: its persistent form measured
     slower wherever this would pick it) when the plain grid has more blocks than the persistent grid has
     programs (``programs_per_sm`` per SM) but, with the tile grown up to ``MAX_CANDIDATE_TILE`` elements while
     that stays true, at most twice as many: one to two persistent grids' worth of blocks, whose plain grid
     would end in a partial wave. Only where ``programs_per_sm`` programs fit an SM at once
     (``programs_per_sm * num_warps <= PERSISTENT_MAX_WARPS``).
  5. ``num_warps`` = tile / ``ELEMS_PER_WARP`` rounded to a power of two in [1, 16]:
     about 32 elements per thread, so each thread has several 16-byte loads in flight.
  6. The config moved into the batch-invariant row layout (:func:`qknorm.invariance.make_invariant`).
  Regret against the tuned tables' fastest measured config (H100 2026-12-07 table: +0.55% geometric mean,
  +10.2% worst; H200 2026-12-01 table, older kernels: +1.06%, +12.6%):
  ``benchmarks/results/cpu/2026-12-07-heuristic``.

Search space: :func:`candidate_configs`, what ``qknorm tune`` and the bench measure.

Cost per call: :func:`choose_config` is one dict lookup keyed by (device, op, dtype, D,
row bucket); the device name, SM count and table are resolved once per device index.
:func:`reset` forgets all of it (after changing ``QKNORM_TUNED_TABLE``, in tests) and
tells the callers registered with :func:`add_reset_hook`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import NamedTuple

import torch

from . import invariance
from .config import KernelConfig, config_from_name
from .tuned_table import (
    DTYPE_NAMES,
    DTYPES,
    ENV_TABLE,
    OPS,
    Lookup,
    QknormTableWarning,
    TableError,
    TunedTable,
    gpu_key,
    load_table,
    next_pow2,
    row_bucket,
    shipped_table_path,
    shipped_tables,
)

__all__ = ["OPS", "DTYPES", "DTYPE_NAMES", "Decision", "DeviceState", "choose_config", "decide",
           "device_decision", "device_state", "heuristic", "candidate_configs", "measured_alternatives",
           "reset", "add_reset_hook", "sm_count", "next_pow2", "choose_rope_config", "rope_config",
           "rope_row_form", "ROPE_ROW_FORM", "ROPE_ROW_FORMS", "ROPE_MAX_HEAD_DIM"]

MAX_REG_BLOCK = 16384
CHUNK_BLOCK = 4096
TARGET_TILE = 4096
MIN_WAVES = 1  # blocks per SM the plain grid keeps (when rows allow); the fused add: MIN_WAVES_FUSED
MIN_WAVES_FUSED = 2
ELEMS_PER_WARP = 1024
MAX_CANDIDATE_TILE = 2 * TARGET_TILE  # H100 sweeps: no winner had a larger [rows, block_d] tile
#: Bytes of one warp's 16-byte vectors: a row narrower than this shares a warp with other rows.
WARP_ROW_BYTES = invariance.LANES * invariance.VEC_BYTES
NARROW_TILE_WAVES = 2  # rows narrower than a warp take MAX_CANDIDATE_TILE tiles while >= this many blocks per SM
PERSISTENT_MAX_WARPS = 32  # warps of programs_per_sm persistent programs on one SM (half its 64 warp slots)
DEFAULT_SMS = 132  # H100 SXM; used when no GPU can be asked (CPU, interpreter)
TOKEN_ORDER_MIN_ROWS = 64  # token-ordered QK candidates from this row bucket on (measured with 16-byte rows since
# session 11: before, that kernel moved 2-byte elements and won only from 4096 rows, on the H100)
DECODE_ROWS = 4096  # up to this row bucket rows narrower than a warp (WARP_ROW_BYTES) take decode tiles
DECODE_TILE = 2048  # elements per program at decode sizes (H200 sweep 2026-12-01-layout-sweep)


@functools.lru_cache(maxsize=64)
def sm_count(device_index: int | None) -> int:
    """Multiprocessors of a CUDA device (cached: asked once per device).

    Parameters
    ----------
    device_index : int or None
        CUDA device index; None (or no CUDA) gives ``DEFAULT_SMS``.

    Returns
    -------
    int
    """
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


def _blocks(bucket: int, rows: int) -> int:
    return -(-bucket // rows)


@functools.lru_cache(maxsize=8192)
def _heuristic(op: str, itemsize: int, D: int, bucket: int, sms: int) -> tuple[KernelConfig, str]:
    if next_pow2(D) <= MAX_REG_BLOCK:
        block_d = next_pow2(D)
        why = f"row of {D} fits registers (block_d={block_d})"
    else:
        block_d = CHUNK_BLOCK
        why = f"row of {D} > {MAX_REG_BLOCK}: chunked two-pass, block_d={block_d}"
    narrow = block_d * itemsize < WARP_ROW_BYTES
    assumed = " (assumed: no GPU to ask)" if sms == DEFAULT_SMS and not torch.cuda.is_available() else ""
    persistent = False
    if bucket <= DECODE_ROWS and narrow:
        # Decode sizes, rows narrower than a warp: a few large programs, one 16-byte load per thread
        # (up to 16 warps), beat many one-row programs (H200 sweeps: 2026-12-01-decode-qk, -layout-sweep).
        rows = min(DECODE_TILE // block_d, max(1, bucket))
        warps = max(1, min(16, rows * block_d * itemsize // (32 * invariance.VEC_BYTES)))
        why += f"; rows={rows}, num_warps={warps} (decode: <= {DECODE_ROWS} rows, tiles of {DECODE_TILE})"
    elif block_d < D:
        rows = 1
        warps = _warps_for(block_d)
        why += f"; rows=1, num_warps={warps} (~{ELEMS_PER_WARP // 32} elements per thread)"
    else:
        # The tile: TARGET_TILE elements, or ELEMS_PER_WARP per warp along the row where the row's
        # canonical warps hold more (8 warps along a row of 4096: 2 rows, 32 elements per thread).
        tile = max(TARGET_TILE, ELEMS_PER_WARP * invariance.canonical_layout(block_d, itemsize).warps)
        rows = max(1, tile // block_d)
        what = f"tile <= {rows * block_d} elements"
        if narrow and _blocks(bucket, MAX_CANDIDATE_TILE // block_d) >= NARROW_TILE_WAVES * sms:
            # Rows narrower than a warp: larger tiles spread each program's fixed costs (the weight
            # vector, row indices) over more rows, while the grid keeps NARROW_TILE_WAVES blocks per SM.
            rows = MAX_CANDIDATE_TILE // block_d
            what = (f"tile of {MAX_CANDIDATE_TILE} elements: rows of {block_d * itemsize} bytes share a warp, "
                    f"and it leaves >= {NARROW_TILE_WAVES} blocks/SM")
        waves = MIN_WAVES_FUSED if op == "fused_add_rms_norm" else MIN_WAVES
        while rows > 1 and _blocks(bucket, rows) < waves * sms:
            rows //= 2
        why += (f"; rows={rows} ({what}; at least {waves} block{'s' * (waves > 1)}/SM on {sms} SMs{assumed} "
                "when rows allow)")
        pps = KernelConfig().programs_per_sm
        if op != "qk_rms_norm" and _blocks(bucket, rows) > pps * sms:
            # A plain grid of one to two persistent grids' worth of blocks leaves SMs idle in its partial last
            # wave: run it persistent, the tile grown (up to MAX_CANDIDATE_TILE elements) while more blocks than
            # programs remain, so each program runs one or two blocks. Programs must all be resident at once.
            grown = rows
            while 2 * grown * block_d <= MAX_CANDIDATE_TILE and _blocks(bucket, 2 * grown) > pps * sms:
                grown *= 2
            p = invariance.make_invariant(KernelConfig(rows=grown, block_d=block_d, num_warps=_warps_for(
                grown * block_d), persistent=True), itemsize)
            if _blocks(bucket, p.rows) <= 2 * pps * sms and pps * p.num_warps <= PERSISTENT_MAX_WARPS:
                persistent, rows = True, grown
                why += (f"; persistent with rows={rows}: {_blocks(bucket, rows)} blocks for {pps} x {sms} programs "
                        f"(one or two each, no partial last wave)")
        warps = _warps_for(rows * block_d)
        why += f"; num_warps={warps} (~{ELEMS_PER_WARP // 32} elements per thread)"
    cfg = KernelConfig(rows=rows, block_d=block_d, num_warps=warps, persistent=persistent)
    inv = invariance.make_invariant(cfg, itemsize)
    if inv != cfg:
        moved = ", ".join(f"{f} {getattr(cfg, f)} -> {getattr(inv, f)}" for f in ("rows", "block_d", "num_warps")
                          if getattr(cfg, f) != getattr(inv, f))
        why += f"; then moved into the batch-invariant row layout ({moved}): {inv.name}"
    return inv, "heuristic: " + why


def heuristic(op: str, dtype: torch.dtype, D: int, n_rows: int, sms: int = DEFAULT_SMS) -> tuple[KernelConfig, str]:
    """The heuristic's config for a problem (the rule in this module's docstring), and why.

    Parameters
    ----------
    op : str
        One of ``OPS`` (the fused add keeps more blocks per SM; QK never takes the persistent grid).
    dtype : torch.dtype
        Element type (its size: bytes per row, 16-byte vectors).
    D : int
        Normalised width (elements), >= 1.
    n_rows : int
        Rows, >= 0; only their row bucket matters.
    sms : int
        Multiprocessors of the device.

    Returns
    -------
    (KernelConfig, str)
        The config and the reason, starting ``"heuristic: "``.

    Raises
    ------
    ValueError
        Unknown ``op``, ``D < 1`` or ``n_rows < 0``.
    """
    _check(op, D, n_rows)
    return _heuristic(op, dtype.itemsize, D, row_bucket(n_rows), sms)


# --------------------------------------------------------------------------- per-device state

class DeviceState(NamedTuple):
    """What the dispatcher knows of one device: its table, SM count and name."""

    table: TunedTable | None
    sms: int
    gpu: str | None    # device name, None off the GPU
    fallback: str      # why there is no table ("" when there is one)


def _warn(msg: str):
    warnings.warn(msg, QknormTableWarning, stacklevel=4)


@functools.lru_cache(maxsize=64)
def device_state(device_index: int | None) -> DeviceState:
    """Table, SM count and GPU name of a device, by the rule "Which table" above.

    Resolved once per process and device index (until :func:`reset`), with at most one
    :class:`~qknorm.tuned_table.QknormTableWarning` when the table cannot be used.

    Parameters
    ----------
    device_index : int or None
        CUDA device index; None for the CPU/interpreter.

    Returns
    -------
    DeviceState
        Never raises for a bad or missing table: ``table`` is None and ``fallback`` says why.
    """
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
    """One decision: the config, why, and the evidence behind it (what ``explain`` prints)."""

    config: KernelConfig
    reason: str
    table: TunedTable | None
    lookup: Lookup | None   # None when no table was consulted
    bucket: int


def decide(op: str, dtype: torch.dtype, D: int, n_rows: int, table: TunedTable | None,
           sms: int = DEFAULT_SMS, fallback: str = "no tuned table") -> Decision:
    """The decision for one problem under a given table; uncached (what :func:`choose_config`
    caches).

    Parameters
    ----------
    op : str
        One of ``OPS``.
    dtype : torch.dtype
        Element type; one without table entries (e.g. float64) takes the heuristic.
    D : int
        Normalised width (elements), >= 1.
    n_rows : int
        Rows of the call, >= 0.
    table : TunedTable or None
        The table to consult; None: the heuristic.
    sms : int
        Multiprocessors, for the heuristic.
    fallback : str
        Why there is no table (named in the reason when ``table`` is None).

    Returns
    -------
    Decision

    Raises
    ------
    ValueError
        Unknown ``op``, ``D < 1`` or ``n_rows < 0``.
    """
    _check(op, D, n_rows)
    dname = DTYPE_NAMES.get(dtype)
    bucket = row_bucket(n_rows)
    found = None
    if table is not None:
        found = table.lookup(op, dname, D, bucket) if dname else Lookup(None, f"no entries for {dtype}")
        e = found.entry
        if e is not None:
            src = f"({e.op}, {e.dtype}, D={e.D}, rows<={e.rows})"
            if row_invariant(e.config, dtype.itemsize, D):
                return Decision(e.config, f"tuned table {table.name} entry {src} [{found.note}]: "
                                          f"{e.us:.2f} us measured, fastest of {len(e.alternatives)}",
                                table, found, bucket)
            for name, us in e.alternatives:  # fastest first
                cfg = config_from_name(name)
                if cfg is not None and row_invariant(cfg, dtype.itemsize, D):
                    return Decision(cfg, f"tuned table {table.name} entry {src} [{found.note}]: {name} "
                                         f"{us:.2f} us, the fastest of {len(e.alternatives)} measured in the "
                                         f"batch-invariant row layout (the fastest, {e.config.name} "
                                         f"{e.us:.2f} us, is not)", table, found, bucket)
            found = Lookup(None, f"entry {src}: no measured config in the batch-invariant row layout")
    cfg, why = _heuristic(op, dtype.itemsize, D, bucket, sms)
    if found is not None:
        why = f"heuristic (tuned table {table.name}: {found.note})" + why[len("heuristic"):]
    elif fallback:
        why = f"heuristic ({fallback})" + why[len("heuristic"):]
    return Decision(cfg, why, table, found, bucket)


def row_invariant(cfg: KernelConfig, itemsize: int, D: int) -> bool:
    """Whether ``cfg`` is one the dispatcher may pick for width ``D``: the heuristic's tile
    width (whole row, or chunks of ``CHUNK_BLOCK``) in its canonical row layout
    (:mod:`qknorm.invariance`), so every pick for (op, dtype, D) sums a row in one order."""
    block = next_pow2(D) if next_pow2(D) <= MAX_REG_BLOCK else CHUNK_BLOCK
    return cfg.block_d == block and invariance.is_invariant(cfg, itemsize)


def _decide_on(idx: int | None, op, dtype, D, n_rows) -> Decision:
    st = device_state(idx)
    return decide(op, dtype, D, n_rows, st.table, st.sms, st.fallback)


def device_decision(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None, *,
                    table: TunedTable | None = None) -> Decision:
    """The decision for a problem on a device, uncached: under the device's own table, or
    under ``table`` when one is given (with the device's SM count).

    Parameters
    ----------
    op : str
        ``"rms_norm"``, ``"fused_add_rms_norm"`` or ``"qk_rms_norm"``.
    dtype : torch.dtype
        Element type of the tensor.
    D : int
        Its last dim, >= 1.
    n_rows : int
        Rows of the call (>= 0).
    device : torch.device, str, int or None
        Where the call runs; None or a CPU device: no GPU.
    table : TunedTable or None
        Decide under this table instead of the device's.

    Returns
    -------
    Decision
        What :func:`choose_config` would cache for this device (or under ``table``).

    Raises
    ------
    ValueError
        As :func:`decide`.
    """
    idx = _device_index(device)
    if table is None:
        return _decide_on(idx, op, dtype, D, n_rows)
    return decide(op, dtype, D, n_rows, table, sm_count(idx))


_decisions: dict = {}


def choose_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> tuple[KernelConfig, str]:
    """The dispatcher's pick for ``op`` on ``n_rows`` rows of width ``D``, and why.

    One dict lookup per call, keyed by (device, op, dtype, D, row bucket): no device
    query, no tensor allocation. The first call per key runs :func:`decide` on the
    device's table.

    Parameters
    ----------
    op : str
        One of ``OPS``.
    dtype : torch.dtype
        Element type of the normalised tensor.
    D : int
        Normalised width (elements), >= 1.
    n_rows : int
        Rows of the call, >= 0 (Q and K rows together for ``qk_rms_norm``).
    device : torch.device, str, int or None
        Where the call runs; None or a CPU device: no GPU.

    Returns
    -------
    (KernelConfig, str)
        The config and the reason (table entry or heuristic rule).

    Raises
    ------
    ValueError
        Unknown ``op``, ``D < 1`` or ``n_rows < 0`` (also for a cached key's neighbours:
        invalid arguments never reach the cache).
    """
    key = (device, op, dtype, D, 1 << (n_rows - 1).bit_length() if n_rows > 1 else n_rows)
    try:
        return _decisions[key]
    except (KeyError, TypeError):  # TypeError: an unhashable device spec
        return _choose_slow(op, dtype, D, n_rows, device)


# --------------------------------------------------------------------------- QK norm + RoPE

#: Row form of the RoPE kernels (``kernels/qk_norm_rope.py``): "split" (rotary halves and tail as separate
#: tiles), "load" (the whole row as one tile, each NeoX partner read again), "gather" (whole row, partner by
#: ``tl.gather``), or "auto": split for full rotary, load for partial rotary (H100:
#: ``benchmarks/results/h100/2026-12-07-session5``). Tests pin the others.
ROPE_ROW_FORM = "auto"
ROPE_ROW_FORMS = ("auto", "split", "load", "gather")

#: Widest head the RoPE kernels take: the whole head is kept in registers (no chunked form).
ROPE_MAX_HEAD_DIM = 1024

#: The split form loads each row's rotary halves as ``[ROWS, next_pow2(rotary_dim / 2)]`` tiles; its configs
#: give every thread exactly this many bytes of such a tile (one 16-byte vector: fewer are loaded in narrower
#: pieces, and a thread holding 8 bytes at one token count and 16 at another would sum a row's squares in
#: another order, so its bits would depend on the token count).
ROPE_MIN_BYTES = 16

#: fp32 split-form tile ``(rows, num_warps)``, the same at every token count (rows capped at a 4096-element tile,
#: then :data:`ROPE_MIN_BYTES`'s rule): fp32 configs that lay a rotary half out the same way (16-byte vectors over
#: the same lanes) still round 1-4 ulps apart on an H100 by their warps (1 and 8 against 2 and 4 at head_dim 256;
#: other groups at 128), which the per-element dataflow of their SASS does not show
#: (``benchmarks/results/h100/2026-12-07-session13``); the QK pick moves between such groups with the token count.
ROPE_FP32_TILE = (16, 4)


def rope_row_form(d: int, rotary_dim: int, is_neox: bool = True) -> str:
    """The RoPE kernels' row form for head_dim ``d`` and ``rotary_dim`` (:data:`ROPE_ROW_FORM`; after changing
    it, :func:`reset` forgets the plans made under the old one).

    Raises
    ------
    ValueError
        :data:`ROPE_ROW_FORM` is not one of :data:`ROPE_ROW_FORMS`.
    """
    if ROPE_ROW_FORM not in ROPE_ROW_FORMS:
        raise ValueError(f"dispatch.ROPE_ROW_FORM must be one of {', '.join(ROPE_ROW_FORMS)}, got {ROPE_ROW_FORM!r}")
    if ROPE_ROW_FORM != "auto":
        return ROPE_ROW_FORM
    return "split" if rotary_dim == d else "load"


def choose_rope_config(dtype: torch.dtype, D: int, rotary_dim: int, n_rows: int,
                       device=None) -> tuple[KernelConfig, str]:
    """The config of the QK norm + RoPE kernels (``qk_rms_norm_rope``, ``qk_norm_rope_cache``), and why.

    Split form (full rotary): the ``qk_rms_norm`` pick (:func:`choose_config`), with fewer warps (and, on one
    warp, more rows) where its tile would give each thread less than :data:`ROPE_MIN_BYTES` of a rotary half:
    every split config lays a half out as 16-byte vectors over the same lanes, so a row's bits do not depend
    on the token count (with 8 bytes per thread at some counts and 16 at others they did; with fewer, sm_90
    SASS showed 16-bit scalar loads and stores). fp32 takes one tile at every token count instead
    (:data:`ROPE_FP32_TILE`: fp32 configs laid out alike still rounded apart by their warps on an H100). Whole-row form
    (partial rotary): a plain grid; rows wider than 32 vectors of 16 bytes take one row per program
    over ``width / (32 vectors)`` warps; narrower rows share a warp, each thread holding 16 bytes of
    them below 32 programs' worth of rows per SM, else 32 bytes, on 2 warps from 32 to 256 rows per SM
    and 1 warp otherwise (the best configs of an H100 sweep:
    ``benchmarks/results/h100/2026-12-07-session5/rope``). Every whole-row config lays a row out the
    same way (16-byte vectors, the same lanes and warps along it: ``invariance.row_layout``), so a
    row's bits do not depend on the token count.

    Parameters are :func:`choose_config`'s, with ``rotary_dim`` (even, 2 ... D) and ``n_rows`` the Q
    rows plus the K rows. Returns the config and the reason.
    """
    cfg, why = choose_config("qk_rms_norm", dtype, D, n_rows, device)
    return rope_config(cfg, why, dtype, D, rotary_dim, n_rows, device)


def rope_config(qk_config: KernelConfig, qk_reason: str, dtype: torch.dtype, D: int, rotary_dim: int,
                n_rows: int, device=None) -> tuple[KernelConfig, str]:
    """:func:`choose_rope_config` from a given ``qk_rms_norm`` decision (``qknorm.explain`` passes the one
    a table other than the device's gives)."""
    if not 1 <= D <= ROPE_MAX_HEAD_DIM:
        raise ValueError(f"head_dim {D} is not supported by the RoPE kernels (1 ... {ROPE_MAX_HEAD_DIM}: the whole "
                         f"head is kept in registers)")
    if rotary_dim % 2 or not 2 <= rotary_dim <= D:
        raise ValueError(f"rotary_dim must be even, 2 ... head_dim {D}, got {rotary_dim}")
    cfg, why = qk_config, qk_reason
    form = rope_row_form(D, rotary_dim)
    if form != "split":
        vec = max(1, 16 // dtype.itemsize)
        bd = next_pow2(D)
        row_warps = max(1, bd // (vec * 32))
        if row_warps > 1:
            out = KernelConfig(rows=1, block_d=bd, num_warps=min(row_warps, 32), pdl=cfg.pdl)
        else:
            sms = sm_count(_device_index(device))
            per_thread = vec if n_rows < 32 * sms else 2 * vec
            warps = 2 if 32 * sms <= n_rows < 256 * sms else 1
            out = KernelConfig(rows=max(1, per_thread * 32 * warps // bd), block_d=bd, num_warps=warps, pdl=cfg.pdl)
        rows_s, warps_s = "s" * (out.rows != 1), "s" * (out.num_warps != 1)
        return out, (f"RoPE whole-row form ({form}: rotary {rotary_dim} of {D}), {out.rows} row{rows_s} x {bd} over "
                     f"{out.num_warps} warp{warps_s} for {n_rows} rows (PDL from the qk_rms_norm pick: {why})")
    half = next_pow2(max(rotary_dim // 2, 1)) * dtype.itemsize  # bytes of one row's rotary half
    span = max(1, half // (32 * ROPE_MIN_BYTES))  # warps one half spans (more than 32 vectors: head_dim 1024)
    fp32 = dtype == torch.float32
    if fp32:  # one tile shape at every token count (ROPE_FP32_TILE), whatever the QK pick
        rows, warps = ROPE_FP32_TILE
        cfg = dataclasses.replace(cfg, rows=max(1, min(rows, 4096 // next_pow2(D))), num_warps=warps)
    elif cfg.rows * half >= 32 * ROPE_MIN_BYTES * cfg.num_warps and cfg.num_warps >= span:
        return cfg, f"RoPE split form (full rotary): the qk_rms_norm pick ({why})"
    if cfg.rows * half < 32 * ROPE_MIN_BYTES * cfg.num_warps or cfg.num_warps < span:  # each thread 16 bytes of a half
        warps = max(span, min(cfg.num_warps, cfg.rows * half // (32 * ROPE_MIN_BYTES)))
        rows = max(cfg.rows, -(-32 * ROPE_MIN_BYTES * warps // half))
        cfg = dataclasses.replace(cfg, rows=rows, num_warps=warps)
    if fp32:
        return cfg, (f"RoPE split form (full rotary), fp32: {cfg.rows} rows over {cfg.num_warps} warps at every token "
                     f"count ({ROPE_MIN_BYTES} bytes of each rotary half per thread; grid kind (plain or "
                     f"persistent) and PDL from the qk_rms_norm pick: {why})")
    return cfg, (f"RoPE split form (full rotary): the qk_rms_norm pick as {cfg.rows} rows over {cfg.num_warps} warps, "
                 f"{ROPE_MIN_BYTES} bytes of each rotary half per thread ({why})")


def _choose_slow(op, dtype, D, n_rows, device):
    _check(op, D, n_rows)
    idx = _device_index(device)
    bucket = row_bucket(n_rows)
    resolved = (idx, op, dtype, D, bucket)
    hit = _decisions.get(resolved)
    if hit is None:
        d = _decide_on(idx, op, dtype, D, n_rows)
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


# --------------------------------------------------------------------------- search space

def candidate_configs(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> list[KernelConfig]:
    """Every admissible config worth measuring for this problem (used by bench and tune).

    The heuristic's pick, then whole-row tiles of ``rows`` x ``next_pow2(D)`` up to
    ``MAX_CANDIDATE_TILE`` elements (rows up to the row bucket), each with the heuristic's warp
    count, half and double, moved into the batch-invariant row layout (:mod:`qknorm.invariance`:
    every config of the space sums a row in one order, so a table tuned from it keeps rows
    bitwise the same across row counts);
    the persistent form only where there are more blocks than persistent programs; the
    chunked form (``CHUNK_BLOCK``, ``2 * CHUNK_BLOCK``) only for rows wider than
    ``MAX_CANDIDATE_TILE``; token-ordered QK (whole rows, not persistent) only from
    ``TOKEN_ORDER_MIN_ROWS`` rows.

    Parameters
    ----------
    op : str
        One of ``OPS``; token order is a ``qk_rms_norm`` variant.
    dtype : torch.dtype
        Element type (the space does not depend on it today).
    D : int
        Normalised width (elements), >= 1.
    n_rows : int
        Rows of the problem, >= 0.
    device : torch.device, str, int or None
        Its SM count bounds the persistent grid.

    Returns
    -------
    list of KernelConfig
        Distinct configs, in a stable order (the heuristic's pick among them).

    Raises
    ------
    ValueError
        Unknown ``op``, ``D < 1`` or ``n_rows < 0``.
    """
    _check(op, D, n_rows)
    sms = sm_count(_device_index(device))
    pick = _heuristic(op, dtype.itemsize, D, row_bucket(n_rows), sms)[0]
    out: list[KernelConfig] = [pick]
    seen = {pick}
    blocks = [next_pow2(D)] if next_pow2(D) <= MAX_REG_BLOCK else []
    # The chunked form reads each row twice; on the H100 sweeps it never won while the
    # row fit a tile of MAX_CANDIDATE_TILE, so it is measured only for wider rows.
    if next_pow2(D) > MAX_CANDIDATE_TILE:
        blocks += [b for b in (CHUNK_BLOCK, 2 * CHUNK_BLOCK) if b < D and b not in blocks]
    bucket = row_bucket(n_rows)
    token_order = op == "qk_rms_norm" and bucket >= TOKEN_ORDER_MIN_ROWS
    # The persistent grid is min(blocks, programs_per_sm * SMs) programs: with no more
    # blocks than that it is the plain grid plus a loop, so it is not a separate candidate.
    programs = KernelConfig().programs_per_sm * sms
    for block_d in blocks:
        max_rows = max(1, MAX_CANDIDATE_TILE // block_d)
        rows = 1
        while rows <= max_rows and rows <= bucket:
            base = _warps_for(rows * block_d)
            for warps in sorted({max(1, base // 2), base, min(16, base * 2)}):
                variants = [(False, False)]  # (persistent, token_order)
                if -(-n_rows // rows) > programs:
                    variants.append((True, False))
                if token_order and block_d >= D:
                    variants.append((False, True))
                for persistent, tok in variants:
                    cfg = invariance.make_invariant(KernelConfig(rows=rows, block_d=block_d, num_warps=warps,
                                                                 persistent=persistent, token_order=tok),
                                                    dtype.itemsize)
                    if cfg.rows * cfg.block_d <= MAX_CANDIDATE_TILE and cfg not in seen \
                            and row_invariant(cfg, dtype.itemsize, D):
                        seen.add(cfg)
                        out.append(cfg)
            rows *= 2
    return out


def measured_alternatives(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> list[str]:
    """Config names the device's tuned table measured for this problem's entry, fastest
    first (the bench times these as the "top" variants).

    Parameters
    ----------
    op : str
        One of ``OPS``.
    dtype : torch.dtype
        Element type; the table's entries of the same element size serve too.
    D : int
        Normalised width (elements), >= 1.
    n_rows : int
        Rows of the problem, >= 0.
    device : torch.device, str, int or None
        Whose tuned table; None or a CPU device: ``QKNORM_TUNED_TABLE`` only.

    Returns
    -------
    list of str
        Empty without a table entry for the problem.

    Raises
    ------
    ValueError
        Unknown ``op``, ``D < 1`` or ``n_rows < 0``.
    """
    found = device_decision(op, dtype, D, n_rows, device).lookup
    e = found.entry if found is not None else None
    return [name for name, _ in e.alternatives] if e is not None else []
