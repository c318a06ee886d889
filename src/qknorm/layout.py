"""Row layouts: how a strided tensor's rows map to memory, and whether two views overlap.

A norm treats a tensor of shape ``[*lead, D]`` as ``prod(lead)`` rows of ``D``
elements. Kernels address row ``r`` through at most three leading (size, stride)
pairs, so :func:`row_layout` merges leading dims that are laid out as one
(jointly for every tensor that shares the row index) and reports when more than
three remain.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

MAX_LEAD_DIMS = 3
INT32_MAX = 2**31 - 1
ROW_LIMIT = 2**30  # rows per launch; larger calls are split (row indices stay int32 in the kernels)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)


class RowLayout(NamedTuple):
    """Leading dims ``sizes`` (outermost first, len <= 3, padded with trailing 1s) and, per tensor,
    the matching strides plus the stride of the normalised dim."""

    n_rows: int
    sizes: tuple[int, int, int]
    strides: tuple[tuple[int, int, int, int], ...]  # per tensor: (s0, s1, s2, s_last)


def _merge_lead(sizes: Sequence[int], stride_sets: Sequence[Sequence[int]]):
    """Drop size-1 dims and merge dim i into i+1 when, for every tensor, stride[i] == size[i+1]*stride[i+1]."""
    dims = [(n, tuple(s[i] for s in stride_sets)) for i, n in enumerate(sizes) if n != 1]
    merged: list[tuple[int, tuple[int, ...]]] = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(ps == n * s for ps, s in zip(pst, st)):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    return merged


@functools.lru_cache(maxsize=4096)
def row_layout(shape: tuple[int, ...], *strides: tuple[int, ...]) -> RowLayout | None:
    """Row layout shared by tensors of one ``shape`` with the given ``strides``.

    Returns None when more than three leading dims remain after merging (the caller
    then works on a contiguous copy). Cached: shapes and strides are plain ints.
    """
    lead = shape[:-1]
    merged = _merge_lead(lead, [s[:-1] for s in strides])
    if len(merged) > MAX_LEAD_DIMS:
        return None
    n_rows = 1
    for n, _ in merged:
        n_rows *= n
    # Padded at the end: kernels split a row index with ``% N2``, ``// N2``, ``% N1``, ``// N1``
    # (rows.row_offsets), and a size of 1 is a compile-time constant there, so one leading dim
    # (the common [T, D]) costs no integer division and two dims (a packed [T, H, D] view) one.
    pad = MAX_LEAD_DIMS - len(merged)
    sizes = tuple(n for n, _ in merged) + (1,) * pad
    per_tensor = []
    for t, s in enumerate(strides):
        lead_strides = tuple(st[t] for _, st in merged) + (0,) * pad
        per_tensor.append(lead_strides + (s[-1],))
    return RowLayout(n_rows, sizes, tuple(per_tensor))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Overlap of two strided views of one buffer.
#
# Element offsets of a view are base + sum(i_k * s_k) with 0 <= i_k < n_k. Two views
# share an element iff some difference of offsets is zero: a bounded integer
# problem. Terms are visited from the largest |stride| down; at each step only
# digits that keep the remaining terms able to reach zero are tried. Equal strides
# are merged first, so Q and K views of one packed buffer (same strides, different
# head counts) resolve in a handful of steps.
# ---------------------------------------------------------------------------

_NODE_BUDGET = 20000


class _Budget(Exception):
    pass


def _terms(sizes, strides, sign):
    return [(sign * s, n - 1) for n, s in zip(sizes, strides) if n > 1 and s != 0]


@functools.lru_cache(maxsize=4096)
def views_overlap(delta: int, sizes_a: tuple[int, ...], strides_a: tuple[int, ...],
                  sizes_b: tuple[int, ...], strides_b: tuple[int, ...]) -> bool | None:
    """Whether view A (element offsets ``sum i*sa``) and view B (offsets ``delta + sum j*sb``)
    share an element. Returns True/False, or None when the search exceeds its budget."""
    if any(n == 0 for n in sizes_a) or any(n == 0 for n in sizes_b):
        return False
    # term: digit d in [lo, hi] times stride s; A's terms positive, B's negative.
    merged: dict[int, list[int]] = {}
    for s, hi in _terms(sizes_a, strides_a, 1) + _terms(sizes_b, strides_b, -1):
        lo_hi = merged.setdefault(abs(s), [0, 0])
        if s > 0:
            lo_hi[1] += hi
        else:
            lo_hi[0] -= hi
    terms = sorted(((s, lo, hi) for s, (lo, hi) in merged.items()), reverse=True)
    # suffix reach: min/max of sum over terms[k:]
    smin = [0] * (len(terms) + 1)
    smax = [0] * (len(terms) + 1)
    for k in range(len(terms) - 1, -1, -1):
        s, lo, hi = terms[k]
        smin[k] = smin[k + 1] + lo * s
        smax[k] = smax[k + 1] + hi * s
    target = delta  # want sum(i*sa) - sum(j*sb) == delta
    nodes = [0]

    def search(k: int, rem: int) -> bool:
        nodes[0] += 1
        if nodes[0] > _NODE_BUDGET:
            raise _Budget
        if k == len(terms):
            return rem == 0
        s, lo, hi = terms[k]
        # need rem - d*s in [smin[k+1], smax[k+1]]
        d_lo = max(lo, -((-(rem - smax[k + 1])) // s))  # ceil((rem - smax)/s)
        d_hi = min(hi, (rem - smin[k + 1]) // s)
        for d in range(d_lo, d_hi + 1):
            if search(k + 1, rem - d * s):
                return True
        return False

    try:
        return search(0, target)
    except _Budget:
        return None


def _address(t) -> tuple[int, int]:
    """``(storage key, byte address)`` of ``t``'s first element: for memory-backed tensors ``(0, data_ptr)``;
    meta tensors hold no memory (every ``data_ptr()`` is 0), so their storage tells views of one tensor
    apart from other tensors and the storage offset places them in it."""
    if t.device.type == "meta":
        return t.untyped_storage()._cdata, t.storage_offset() * t.element_size()
    return 0, t.data_ptr()


def _extent(t) -> tuple[int, int]:
    """Byte range [lo, hi) touched by tensor ``t`` (non-empty)."""
    lo = hi = _address(t)[1]
    size = t.element_size()
    for n, s in zip(t.shape, t.stride()):
        if s >= 0:
            hi += (n - 1) * s * size
        else:
            lo += (n - 1) * s * size
    return lo, hi + size


def overlap(a, b) -> bool | None:
    """Whether tensors ``a`` and ``b`` share memory: True, False, or None if undecided.

    Cheap when the byte ranges are apart (the usual case); otherwise an exact search
    over element offsets, cached by shape, stride and offset difference. Meta tensors: views of one
    tensor overlap as their memory-backed twins would; others never.
    """
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    (ka, pa), (kb, pb) = _address(a), _address(b)
    if ka != kb:
        return False
    alo, ahi = _extent(a)
    blo, bhi = _extent(b)
    if ahi <= blo or bhi <= alo:
        return False
    if a.dtype.itemsize != b.dtype.itemsize:
        return None
    es = a.element_size()
    delta_bytes = pb - pa
    if delta_bytes % es:
        return None
    return views_overlap(delta_bytes // es, tuple(a.shape), tuple(a.stride()),
                         tuple(b.shape), tuple(b.stride()))


def same_view(a, b) -> bool:
    """True when ``a`` and ``b`` address exactly the same elements in the same order."""
    return (a.device == b.device and _address(a) == _address(b) and a.shape == b.shape
            and a.stride() == b.stride())


@functools.lru_cache(maxsize=4096)
def self_overlap(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool | None:
    """Whether two different indices of a view address the same element: True, False, or
    None when the exact search exceeds its budget.

    A view whose dims, sorted by |stride|, each step over the whole extent of the smaller
    ones (``|s_i| >= sum_{j<i} |s_j| * (n_j - 1) + 1``) cannot overlap itself (every
    contiguous tensor, transposes, and Q/K views of a packed QKV buffer); a zero stride
    on a dim of size > 1 (``expand``) always does. Other views are decided exactly: two
    indices collide iff ``sum d_k * s_k == 0`` for some non-zero digits ``|d_k| < n_k``.
    """
    dims = sorted((abs(s), n) for n, s in zip(shape, strides) if n > 1)
    if any(n == 0 for n in shape) or not dims:
        return False
    if dims[0][0] == 0:
        return True
    reach = 0
    ok = True
    for s, n in dims:
        if s <= reach:
            ok = False
            break
        reach += s * (n - 1)
    if ok:
        return False
    # exact: some non-zero digit vector d (|d_k| < n_k) with sum d_k s_k == 0. Fix the first
    # non-zero digit's position and sign (d_i > 0, d_j = 0 for j < i) and search the rest.
    for i in range(len(dims)):
        s_i, n_i = dims[i]
        rest_sizes = tuple(2 * n - 1 for _, n in dims[i + 1:])
        rest_strides = tuple(s for s, _ in dims[i + 1:])
        # digits d in (-(n-1) .. n-1) written as e - (n-1) with 0 <= e < 2n-1
        shift = sum(s * (n - 1) for s, n in dims[i + 1:])
        for d_i in range(1, n_i):
            r = views_overlap(d_i * s_i - shift, (1,), (0,), rest_sizes, rest_strides)
            if r is None:
                return None
            if r:
                return True
    return False


def kernel_layout(shape, d: int, *strides) -> RowLayout | None:
    """Joint row layout of tensors of ``shape`` with the given strides, or None when the
    kernels cannot address it directly: more than three leading dims after merging, a
    last-dim offset ``col * stride`` past int32, or more than :data:`ROW_LIMIT` rows."""
    lay = row_layout(tuple(shape), *(tuple(s) for s in strides))
    if lay is None:
        return None
    if any(abs(s[3]) * d > INT32_MAX for s in lay.strides) or lay.n_rows > ROW_LIMIT:
        return None
    return lay
