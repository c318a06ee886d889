"""Variant choice: (op, dtype, D, rows, GPU) -> KernelConfig, with the reason.

For now this is the documented heuristic below; per-GPU tuned tables plug in here.

Heuristic (``choose_config``):
  1. ``block_d = next_pow2(D)`` while that is <= ``MAX_REG_BLOCK`` (whole row in
     registers); wider rows take the chunked two-pass form with ``CHUNK_BLOCK`` columns.
  2. ``rows`` = as many rows as fit a tile of ``TARGET_TILE`` elements, halved while that
     would leave fewer than ``MIN_WAVES`` blocks per SM (keep every SM busy at small T).
  3. ``num_warps`` = tile / ``ELEMS_PER_WARP`` rounded to a power of two in [1, 16]:
     about 32 elements per thread, so each thread has several 16-byte loads in flight.
"""
from __future__ import annotations

import functools

import torch

from .config import KernelConfig

OPS = ("rms_norm", "fused_add_rms_norm", "qk_rms_norm")
MAX_REG_BLOCK = 16384
CHUNK_BLOCK = 4096
TARGET_TILE = 4096
MIN_WAVES = 2
ELEMS_PER_WARP = 1024
DEFAULT_SMS = 132  # H100 SXM; used when no GPU can be asked (CPU, interpreter)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=64)
def sm_count(device_index: int | None) -> int:
    """Multiprocessors of a CUDA device (cached: asked once per device)."""
    if device_index is None or not torch.cuda.is_available():
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_index(device) -> int | None:
    if device is None:
        return None
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


def choose_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> tuple[KernelConfig, str]:
    """The dispatcher's pick for ``op`` on ``n_rows`` rows of width ``D``, and why.

    Decisions are cached per (op, dtype size, D, row bucket, SM count); the row count is
    bucketed to the next power of two so the cache stays small.
    """
    _check(op, D, n_rows)
    sms = sm_count(_device_index(device))
    return _heuristic(op, dtype.itemsize, D, next_pow2(max(1, n_rows)), sms)


def candidate_configs(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> list[KernelConfig]:
    """Every admissible config worth measuring for this problem (used by bench and tune)."""
    _check(op, D, n_rows)
    out: list[KernelConfig] = []
    seen = set()
    blocks = [next_pow2(D)] if next_pow2(D) <= MAX_REG_BLOCK else []
    blocks += [b for b in (2048, 4096, 8192) if b < D and b not in blocks]
    for block_d in blocks:
        max_rows = max(1, TARGET_TILE * 4 // block_d)
        rows = 1
        while rows <= max_rows and rows <= next_pow2(max(1, n_rows)):
            base = _warps_for(rows * block_d)
            for warps in {max(1, base // 2), base, min(16, base * 2)}:
                for persistent in (False, True):
                    cfg = KernelConfig(rows=rows, block_d=block_d, num_warps=warps, persistent=persistent)
                    if cfg not in seen:
                        seen.add(cfg)
                        out.append(cfg)
            rows *= 2
    return out


def explain_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None) -> str:
    """One paragraph: which config runs this problem and why."""
    cfg, why = choose_config(op, dtype, D, n_rows, device)
    chunk = "chunked two-pass" if cfg.chunked(D) else "row in registers"
    grid = "persistent grid-stride" if cfg.persistent else "one program per block"
    return (f"{op}: dtype={str(dtype).replace('torch.', '')} D={D} rows={n_rows} -> {cfg.name} "
            f"({chunk}, {grid}, {cfg.rows} rows x {cfg.block_d} cols, {cfg.num_warps} warps)\n  {why}")
