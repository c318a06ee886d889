"""Correctness gate: an implementation is timed only after its output matched the fp32
reference on fresh inputs.

The gate poisons what it can before the call: a caller-provided output buffer is
filled with NaN, and for implementations that allocate their outputs the caching
allocator is handed a NaN-filled block of the same size just before (best effort: an
unwritten element then reads NaN, which never passes). In-place outputs cannot be
poisoned; an unwritten element there keeps its input value, which differs from the
normalised one. For QK cases the V slice of the packed buffer must come back
bit-identical (no writes outside Q and K).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cases import Case, Inputs, expected
from .common import TOL, rel_l2

__all__ = ["TOL", "Verdict", "gate", "poison_allocator", "rel_l2", "verdict", "worst_error"]


@dataclass
class Verdict:
    ok: bool
    error: float          # worst relative L2 error over the outputs (inf for NaN)
    reason: str = ""


def poison_allocator(like: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    """Fill and free blocks of the outputs' sizes so that an implementation allocating
    its output is likely handed NaN memory (CUDA caching allocator; no effect on the
    CPU, whose allocator does not cache)."""
    blocks = [torch.full(t.shape, math.nan, dtype=dtype, device=t.device) for t in like]
    del blocks


def gate(case: Case, inp: Inputs, fn, poison_out: bool = True) -> Verdict:
    """Run ``fn`` once on ``inp`` (fresh inputs, mutated in place by in-place
    implementations) and compare its outputs with the fp32 reference."""
    ref = expected(case, inp)
    v_before = inp.v.clone() if case.is_qk else None
    if case.op == "rms2d" and poison_out:
        inp.out.fill_(math.nan)
    poison_allocator(ref, case.dtype)
    outs = fn()
    if ref[0].is_cuda:
        torch.cuda.synchronize()
    err, why = worst_error(outs, ref)
    if why:
        return Verdict(False, err, why)
    if v_before is not None and not torch.equal(inp.v, v_before):
        return Verdict(False, err, "wrote outside Q/K: the V slice of the packed buffer changed")
    return verdict(err, case.dtype)


def worst_error(outs, ref) -> tuple[float, str]:
    """The worst relative L2 error of ``outs`` (a tuple of tensors) against the reference
    outputs ``ref``, with "" for the reason; or (inf, why) where their count or shapes differ."""
    if not isinstance(outs, (tuple, list)) or len(outs) != len(ref):
        return math.inf, (f"returned {type(outs).__name__} of "
                          f"{len(outs) if isinstance(outs, (tuple, list)) else 1} outputs, expected {len(ref)}")
    errs = []
    for i, (o, r) in enumerate(zip(outs, ref)):
        if tuple(o.shape) != tuple(r.shape):
            return math.inf, f"output {i} has shape {tuple(o.shape)}, expected {tuple(r.shape)}"
        errs.append(rel_l2(o, r))
    return max(errs), ""


def verdict(err: float, dtype: torch.dtype) -> Verdict:
    """The gate's answer for a worst relative L2 error ``err`` of a ``dtype`` output."""
    tol = TOL[dtype]
    if not err < tol:
        what = "NaN/inf in output (unwritten or overflow)" if math.isinf(err) else f"rel L2 error {err:.2e} >= {tol:.0e}"
        return Verdict(False, err, what)
    return Verdict(True, err)
