"""``qknorm.explain``: which kernel variant and config a call would use, and why."""
from __future__ import annotations

import torch

from .backend import get_backend
from .dispatch import TunedTable, explain_config, load_table
from . import validate as V
from .layout import row_layout

OPS = ("rms_norm", "fused_add_rms_norm", "qk_rms_norm")


def _rows(t: torch.Tensor) -> int:
    n = 1
    for s in t.shape[:-1]:
        n *= s
    return n


def explain(x: torch.Tensor, k: torch.Tensor | None = None, *, op: str | None = None,
            table: TunedTable | str | None = None, top: int = 5) -> str:
    """Describe the decision for ``rms_norm(x)`` (one tensor), ``qk_rms_norm(x, k)`` (two), or
    ``fused_add_rms_norm(x, residual)`` with ``op="fused_add_rms_norm"``. Launches nothing.

    Prints the chosen variant and config, the tuned-table entry (file and key) or the
    heuristic rule behind it, the ``top`` fastest measured alternatives when the table has
    them, and how each tensor's rows are addressed. ``table`` (a path or a loaded table)
    explains the decision under that table instead of the one the device uses."""
    V.activation("x", x)
    if k is not None:
        V.activation("k", k)
        if k.shape[-1] != x.shape[-1]:
            raise ValueError(f"k must have the last dim of x ({x.shape[-1]}), got shape {tuple(k.shape)}")
    if op is None:
        op = "rms_norm" if k is None else "qk_rms_norm"
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if op == "qk_rms_norm" and k is None:
        raise ValueError("op='qk_rms_norm' needs k (the K tensor)")
    if op == "fused_add_rms_norm" and k is not None and k.shape != x.shape:
        raise ValueError(f"residual (passed as k) must have the shape of x {tuple(x.shape)}, got {tuple(k.shape)}")
    top = V.integer("top", top, minimum=0)
    if isinstance(table, str):
        table = load_table(table)
    tensors = [x] if k is None else [x, k]
    d = x.shape[-1]
    n_rows = sum(_rows(t) for t in tensors) if op == "qk_rms_norm" else _rows(x)
    lines = [explain_config(op, x.dtype, d, n_rows, x.device, table=table, top=top)]
    for name, t in zip(("q", "k") if op == "qk_rms_norm" else ("x", "residual"), tensors):
        lay = row_layout(tuple(t.shape), tuple(t.stride()))
        how = ("copied to contiguous first (more than 3 leading dims that do not merge)" if lay is None
               else f"{lay.n_rows} rows addressed as sizes {lay.sizes} strides {lay.strides[0][:3]}, "
                    f"last-dim stride {lay.strides[0][3]}")
        lines.append(f"  {name}: shape {tuple(t.shape)} stride {tuple(t.stride())}: {how}")
    backend = get_backend()
    runs = "Triton kernels" if (backend == "triton" or (backend == "auto" and x.is_cuda)) else "PyTorch path"
    lines.append(f"  backend={backend}: this call runs the {runs}")
    return "\n".join(lines)
