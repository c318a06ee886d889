"""What the benchmark's parts share: dtype names, tolerances, the relative error, the 8-bit
output formats of the quantised norms, the RMSNorm formula in PyTorch, the packed QKV buffer
that QK norm reads Q and K from, and the :class:`~qknorm.KernelConfig` behind a variant's name.

Used by :mod:`.cases`, :mod:`.check`, :mod:`.peers`, :mod:`.report` and :mod:`.tp`; one
definition each. The dtype names, the tolerances, the relative error and the quantised formats'
qmax are the library's own (:mod:`qknorm.tuned_table`, :mod:`qknorm.reference`,
:mod:`qknorm.ops.rms_norm_quant`), imported here: tune, selfcheck and the bench check alike.
"""
from __future__ import annotations

import torch

from ..ops.rms_norm_quant import AMAX_FLOOR, QMAX  # the quantised norms' qmax and amax floor
from ..reference import TOL, rel_l2  # the correctness gate: tolerance per dtype, relative L2 error (fp64)
from ..tuned_table import DTYPE_NAMES, DTYPES  # bf16/fp16/fp32 <-> torch dtype

EPS = 1e-6

# The 8-bit output formats of the quantised norms by short name.
QUANT_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "int8": torch.int8}
QUANT_DTYPE_NAMES = {v: k for k, v in QUANT_DTYPES.items()}

__all__ = ["AMAX_FLOOR", "DTYPES", "DTYPE_NAMES", "EPS", "QMAX", "QUANT_DTYPES", "QUANT_DTYPE_NAMES", "TOL",
           "dtype_name", "packed_qkv", "packed_qkv_views", "rel_l2", "torch_norm", "torch_norm_f32", "triton_version"]


def dtype_name(dtype: torch.dtype) -> str:
    """``bf16``/``fp16``/``fp32``, or the torch name for any other dtype."""
    return DTYPE_NAMES.get(dtype, str(dtype))


def torch_norm(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dim by the fp32 upcast formula, rounded once to x's dtype."""
    return torch_norm_f32(x, w, eps, offset).to(x.dtype)


def torch_norm_f32(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dim by the fp32 upcast formula, left in fp32 (what a quantiser reads)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y * (w.float() + offset)


def packed_qkv_views(qkv: torch.Tensor, q_width: int, k_width: int, v_width: int | None = None):
    """The column slices ``q [T, q_width]``, ``k [T, k_width]``, ``v [T, rest]`` of a packed
    ``qkv [T, q_width + k_width + v_width]`` buffer: strided views (row stride = the packed
    width), the way an engine's QKV projection output holds them."""
    v_width = qkv.shape[1] - q_width - k_width if v_width is None else v_width
    if q_width + k_width + v_width != qkv.shape[1]:
        raise ValueError(f"packed_qkv_views: widths {q_width}+{k_width}+{v_width} != {qkv.shape[1]}")
    return qkv[:, :q_width], qkv[:, q_width:q_width + k_width], qkv[:, q_width + k_width:]


def packed_qkv(q: torch.Tensor, k: torch.Tensor, v_width: int | None = None):
    """A packed buffer ``[T, Q | K | V]`` holding copies of ``q [T, q_width]`` and ``k [T, k_width]``
    (V zero, ``v_width`` defaulting to K's); returns ``(qkv, q_view, k_view, v_view)``."""
    t, qw, kw = q.shape[0], q.shape[1], k.shape[1]
    vw = kw if v_width is None else v_width
    qkv = torch.zeros(t, qw + kw + vw, dtype=q.dtype, device=q.device)
    qv, kv, vv = packed_qkv_views(qkv, qw, kw, vw)
    qv.copy_(q)
    kv.copy_(k)
    return qkv, qv, kv, vv


def triton_version() -> str:
    """The installed Triton's version, or "not installed" (a CPU machine runs the bench without it)."""
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__
