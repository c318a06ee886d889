"""Argument checks shared by the ops. Each raises TypeError/ValueError naming the argument
and the offending values; none of them writes anything."""
from __future__ import annotations

import math

import torch

from . import layout

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _dt(d) -> str:
    return str(d).replace("torch.", "")


def activation(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in ACT_DTYPES:
        raise TypeError(f"{name} must be bfloat16, float16 or float32, got {_dt(t.dtype)}")
    if t.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension (the normalised one), got a 0-d tensor")


def weight(name: str, w, d: int, ref_name: str, ref) -> None:
    if w is None:
        return
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if w.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (bf16/fp16/fp32/fp64), got {_dt(w.dtype)}")
    if w.dim() != 1 or w.shape[0] != d:
        raise ValueError(f"{name} must have shape ({d},) to match the last dim of {ref_name}, "
                         f"got {tuple(w.shape)}")
    if w.device != ref.device:
        raise ValueError(f"{name} is on {w.device} but {ref_name} is on {ref.device}")


def scalars(eps, weight_offset, has_weight: bool) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not isinstance(weight_offset, (int, float)) or isinstance(weight_offset, bool) \
            or not math.isfinite(weight_offset):
        raise ValueError(f"weight_offset must be a finite number, got {weight_offset!r}")
    if weight_offset != 0 and not has_weight:
        raise ValueError(f"weight_offset={weight_offset} needs a weight (weight is None)")


def same_device(name: str, t, ref_name: str, ref) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def output(name: str, out, ref_name: str, ref) -> None:
    if out is None:
        return
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(out).__name__}")
    if out.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(out.shape)}")
    if out.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({_dt(ref.dtype)}), got {_dt(out.dtype)}")
    same_device(name, out, ref_name, ref)


def disjoint(name_a: str, a, name_b: str, b) -> None:
    """Raise unless ``a`` and ``b`` share no element (undecidable counts as sharing)."""
    ov = layout.overlap(a, b)
    if ov is None:
        raise ValueError(f"cannot prove that {name_a} and {name_b} do not overlap in memory; "
                         f"pass non-overlapping tensors")
    if ov:
        raise ValueError(f"{name_a} and {name_b} overlap in memory")


def in_place_or_disjoint(out_name: str, out, in_name: str, inp) -> bool:
    """True when ``out`` is exactly ``inp`` (in place). Raises on partial overlap.

    Returns False when they are disjoint."""
    if layout.same_view(out, inp):
        return True
    ov = layout.overlap(out, inp)
    if ov is None:
        raise ValueError(f"cannot prove that {out_name} does not partially overlap {in_name}; pass "
                         f"{out_name}={in_name} (same view) for in place, or a separate tensor")
    if ov:
        raise ValueError(f"{out_name} partially overlaps {in_name}: pass the same view for in place, "
                         f"or a non-overlapping tensor")
    return False
