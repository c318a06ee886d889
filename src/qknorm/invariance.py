"""Batch invariance: which kernel configs sum a row's squares in the same order.

A row's sum of squares is a Triton ``tl.sum`` over the row's tile: each thread adds its own
elements in register order, then lanes combine by butterfly shuffles, then warps through
shared memory. That order, and so the last bit of the result, is fixed by how the row is
laid out over (registers, lanes, warps), which Triton derives from the tile
``[rows, block_d]`` and ``num_warps`` (its coalescing pass; Triton 3.x):

* elements per thread along the row ``spt = min(vec, max(1, rows * block_d // (32 * num_warps)))``
  where ``vec`` is one 16-byte load (8 bf16/fp16, 4 fp32; fewer for a misaligned view);
* lanes along the row ``min(32, block_d // spt)``, warps along the row
  ``min(num_warps, block_d // (spt * lanes))``; the rest of the threads take other rows.

Configs with the same :func:`row_layout` give a row the same bits whatever the other rows
of the call (measured on an H200: ``benchmarks/results/h200/2026-12-01-batch-invariance``).
The dispatcher only picks configs in the *canonical* layout of their (dtype, width)
(:func:`canonical_layout`, :func:`is_invariant`): full 16-byte vectors along the row, all
32 lanes (or the whole row), and a fixed number of warps along the row (``block_d / 512``
clamped to 4 ... 8, 16 for the widest rows; never more than the row can use). So a row's output does not depend on
how many tokens the call has, nor on in-place or not (engines need this for deterministic
serving and RL rollouts). A ``config=`` given by the caller is used as given.

Not covered: views whose rows are not 16-byte aligned (a row stride that is not a multiple of 16 elements,
e.g. ``x[:, 8:]`` of an fp32 ``[T, 168]`` tensor). Triton then cannot vectorise their loads, and the layout
comes from whichever access is aligned: out of place the new output's 16-byte stores give the canonical
layout; in place (and the in-place fused add) every access is unaligned, a thread holds one element and
every warp of the program lies along the row, so the order follows the config's warp count, which the
dispatcher varies with the token count (sm_90 TTGIR). Such rows may change in the last bit with the token
count and between ``rms_norm(x, w)`` and ``rms_norm(x, w, out=x)``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from .config import KernelConfig

__all__ = ["RowLayout", "row_layout", "canonical_layout", "is_invariant", "make_invariant", "VEC_BYTES"]

VEC_BYTES = 16     #: widest load per thread (bytes)
LANES = 32         #: threads per warp
ROW_WARPS_MIN = 4  #: a wide row may always spread over this many warps


class RowLayout(NamedTuple):
    """How one row of a tile lies over a program's threads (fixes the reduction order)."""

    block_d: int   #: tile width (columns)
    per_thread: int  #: consecutive elements a thread holds
    lanes: int     #: lanes along the row
    warps: int     #: warps along the row


def _vec(itemsize: int, block_d: int) -> int:
    return max(1, min(VEC_BYTES // itemsize, block_d))


def row_layout(rows: int, block_d: int, num_warps: int, itemsize: int) -> RowLayout:
    """The layout Triton gives one row of a ``[rows, block_d]`` tile over ``num_warps`` warps
    (16-byte-aligned rows with unit stride; ``itemsize`` bytes per element)."""
    spt = min(_vec(itemsize, block_d), max(1, rows * block_d // (LANES * num_warps)))
    lanes = min(LANES, max(1, block_d // spt))
    warps = min(num_warps, max(1, block_d // (spt * lanes)))
    return RowLayout(block_d, spt, lanes, warps)


def _row_warps(block_d: int, itemsize: int) -> tuple[int, int]:
    """(canonical warps along the row, warps the row can use at most)."""
    vec = _vec(itemsize, block_d)
    lanes = min(LANES, max(1, block_d // vec))
    full = max(1, block_d // (vec * lanes))
    # H200 sweep (2026-12-01-layout-sweep): bf16 rows of 2048 fastest over 4 warps, of 4096 and
    # 5120 (8192 tiles) over 8; the widest whole rows keep the heuristic's 16.
    target = max(1, min(16, block_d // 1024)) if block_d > 8192 else max(ROW_WARPS_MIN, min(8, block_d // 512))
    return min(full, target), full


def canonical_layout(block_d: int, itemsize: int) -> RowLayout:
    """The one layout the dispatcher uses for rows of tile width ``block_d``."""
    vec = _vec(itemsize, block_d)
    return RowLayout(block_d, vec, min(LANES, max(1, block_d // vec)), _row_warps(block_d, itemsize)[0])


def is_invariant(cfg: KernelConfig, itemsize: int) -> bool:
    """Whether ``cfg`` lays rows out in the canonical layout of its tile width."""
    return row_layout(cfg.rows, cfg.block_d, cfg.num_warps, itemsize) == canonical_layout(cfg.block_d, itemsize)


def make_invariant(cfg: KernelConfig, itemsize: int) -> KernelConfig:
    """The closest config in the canonical layout: the warps along the row fixed (or at least
    the canonical count when the row takes all it can use), at most as many warps as keep
    full 16-byte vectors per thread, and more rows per program when even one warp per row
    would not."""
    b = cfg.block_d
    vec = _vec(itemsize, b)
    wd, full = _row_warps(b, itemsize)
    rows = max(cfg.rows, -(-LANES * vec * wd // b))
    warps = wd if wd < full else max(wd, min(cfg.num_warps, rows * b // (LANES * vec)))
    if rows == cfg.rows and warps == cfg.num_warps:
        return cfg
    return dataclasses.replace(cfg, rows=rows, num_warps=warps)
