"""Public ops: validate arguments, pick the backend and the kernel config, launch.

Nothing is written before every check has passed. CUDA tensors run the Triton kernels
(``kernels/``); CPU tensors run the PyTorch path (``reference.py``) unless
``QKNORM_BACKEND=triton`` (with ``TRITON_INTERPRET=1``) asks for the kernels.
"""
from __future__ import annotations

import torch

from . import validate as V
from .backend import use_triton
from .config import KernelConfig
from .dispatch import choose_config, sm_count
from .layout import row_layout
from .reference import fused_add_rms_norm_torch, rms_norm_ref, rms_norm_torch

_INT32_MAX = 2**31 - 1
_kernels = None


def _k():
    """The kernels module, imported on first use so CPU-only callers never import triton."""
    global _kernels
    if _kernels is None:
        from . import kernels
        _kernels = kernels
    return _kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _layout(x, *others):
    """Joint row layout of ``x`` and tensors of its shape, or None when the kernels cannot
    address it directly (> 3 leading dims after merging, or a last-dim stride so large
    that column offsets would overflow int32)."""
    lay = row_layout(tuple(x.shape), tuple(x.stride()), *(tuple(o.stride()) for o in others))
    if lay is None:
        return None
    d = x.shape[-1]
    if any(abs(s[3]) * d > _INT32_MAX for s in lay.strides) or lay.n_rows > _INT32_MAX - 65536:
        return None
    return lay


def _grid(cfg: KernelConfig, n_blocks: int, device) -> tuple[int]:
    if cfg.persistent:
        return (max(1, min(n_blocks, cfg.programs_per_sm * sm_count(device.index if device.type == "cuda" else None))),)
    return (max(1, n_blocks),)


def _weight_args(w, fallback):
    return (w, w.stride(0)) if w is not None else (fallback, 0)


# --------------------------------------------------------------------------- rms_norm

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
             weight_offset: float = 0.0, out: torch.Tensor | None = None,
             config: KernelConfig | None = None) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x**2) + eps) * (weight + weight_offset)``.

    ``x``: bf16/fp16/fp32, rank >= 1, any strides. ``weight``: None or ``[D]`` of any float
    dtype. ``out``: None (a new contiguous tensor), ``x`` itself (in place) or a tensor of
    x's shape and dtype that does not overlap x. ``config`` forces a kernel variant.
    Returns ``out``.
    """
    V.activation("x", x)
    d = x.shape[-1]
    V.weight("weight", weight, d, "x", x)
    V.scalars(eps, weight_offset, weight is not None)
    V.output("out", out, "x", x)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out is not x:
        V.in_place_or_disjoint("out", out, "x", x)
    if x.numel() == 0:
        return out
    if not use_triton(x):
        return rms_norm_torch(x, weight, eps, weight_offset, out)
    _launch_rms_norm(x, out, weight, float(eps), float(weight_offset), config)
    return out


def _launch_rms_norm(x, out, weight, eps, weight_offset, config):
    lay = _layout(x, out)
    if lay is None:
        xc = x.contiguous()
        tmp = torch.empty_like(xc)
        _launch_rms_norm(xc, tmp, weight, eps, weight_offset, config)
        out.copy_(tmp)
        return
    d = x.shape[-1]
    cfg = config or choose_config("rms_norm", x.dtype, d, lay.n_rows, x.device)[0]
    w, ws = _weight_args(weight, x)
    (_, n1, n2), (xs, ys) = lay.sizes, lay.strides
    _k().rms_norm_kernel[_grid(cfg, _cdiv(lay.n_rows, cfg.rows), x.device)](
        x, out, w, lay.n_rows, d, n1, n2, *xs, *ys, ws, eps, weight_offset,
        HAS_WEIGHT=weight is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d,
        CHUNKED=cfg.chunked(d), PERSISTENT=cfg.persistent, num_warps=cfg.num_warps)


# --------------------------------------------------------------------------- fused add

def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                       eps: float = 1e-6, *, weight_offset: float = 0.0,
                       config: KernelConfig | None = None):
    """In place: ``residual += x`` then ``x = rms_norm(residual)``.

    The norm is taken of the fp32 sum; ``residual`` stores its rounding. ``x`` and
    ``residual`` have the same shape, dtype and device and must not overlap.
    Returns ``(x, residual)``.
    """
    V.activation("x", x)
    V.activation("residual", residual)
    if residual.dtype != x.dtype:
        raise TypeError(f"residual must have the dtype of x ({x.dtype}), got {residual.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    V.same_device("residual", residual, "x", x)
    d = x.shape[-1]
    V.weight("weight", weight, d, "x", x)
    V.scalars(eps, weight_offset, weight is not None)
    V.disjoint("x", x, "residual", residual)
    if x.numel() == 0:
        return x, residual
    if not use_triton(x):
        return fused_add_rms_norm_torch(x, residual, weight, eps, weight_offset)
    _launch_fused_add(x, residual, weight, float(eps), float(weight_offset), config)
    return x, residual


def _launch_fused_add(x, residual, weight, eps, weight_offset, config):
    lay = _layout(x, residual)
    if lay is None:
        xc, rc = x.contiguous(), residual.contiguous()
        _launch_fused_add(xc, rc, weight, eps, weight_offset, config)
        x.copy_(xc)
        residual.copy_(rc)
        return
    d = x.shape[-1]
    cfg = config or choose_config("fused_add_rms_norm", x.dtype, d, lay.n_rows, x.device)[0]
    w, ws = _weight_args(weight, x)
    (_, n1, n2), (xs, rs) = lay.sizes, lay.strides
    _k().fused_add_rms_norm_kernel[_grid(cfg, _cdiv(lay.n_rows, cfg.rows), x.device)](
        x, residual, w, lay.n_rows, d, n1, n2, *xs, *rs, ws, eps, weight_offset,
        HAS_WEIGHT=weight is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d,
        CHUNKED=cfg.chunked(d), PERSISTENT=cfg.persistent, num_warps=cfg.num_warps)


# --------------------------------------------------------------------------- QK norm

def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                k_weight: torch.Tensor | None, eps: float = 1e-6, *, weight_offset: float = 0.0,
                q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                config: KernelConfig | None = None):
    """Per-head RMSNorm of Q and K (last dim = head_dim) in one kernel launch.

    ``q``/``k`` are typically strided views ``[T, H, D]`` of a packed QKV buffer.
    ``q_out=q, k_out=k`` normalises in place; None allocates new contiguous outputs.
    Outputs may not overlap each other or the other input. Returns ``(q_out, k_out)``.
    """
    V.activation("q", q)
    V.activation("k", k)
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    V.same_device("k", k, "q", q)
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q and k must have the same head_dim (last dim): q has {d}, k has {k.shape[-1]}")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None, got "
                         f"q_weight={'None' if q_weight is None else 'tensor'}, "
                         f"k_weight={'None' if k_weight is None else 'tensor'}")
    V.weight("q_weight", q_weight, d, "q", q)
    V.weight("k_weight", k_weight, d, "k", k)
    V.scalars(eps, weight_offset, q_weight is not None)
    V.output("q_out", q_out, "q", q)
    V.output("k_out", k_out, "k", k)
    q_in_place = q_out is not None and V.in_place_or_disjoint("q_out", q_out, "q", q)
    k_in_place = k_out is not None and V.in_place_or_disjoint("k_out", k_out, "k", k)
    if q_out is not None and k_out is not None:
        V.disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        V.disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        V.disjoint("k_out", k_out, "q", q)
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k_out is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    if not use_triton(q):
        q_res = rms_norm_ref(q, q_weight, eps, weight_offset)
        k_res = rms_norm_ref(k, k_weight, eps, weight_offset)
        q_out.copy_(q_res)
        k_out.copy_(k_res)
        return q_out, k_out
    _launch_qk(q, k, q_out, k_out, q_weight, k_weight, float(eps), float(weight_offset), config)
    return q_out, k_out


def _launch_qk(q, k, q_out, k_out, q_weight, k_weight, eps, weight_offset, config):
    q_lay, k_lay = _layout(q, q_out), _layout(k, k_out)
    if q_lay is None or k_lay is None:
        # Rare layouts (> 3 leading dims that do not merge): run on contiguous copies.
        qc, kc = q.contiguous(), k.contiguous()
        qt, kt = torch.empty_like(qc), torch.empty_like(kc)
        _launch_qk(qc, kc, qt, kt, q_weight, k_weight, eps, weight_offset, config)
        q_out.copy_(qt)
        k_out.copy_(kt)
        return
    d = q.shape[-1]
    if q.numel() == 0:
        q_lay = q_lay._replace(n_rows=0)
    if k.numel() == 0:
        k_lay = k_lay._replace(n_rows=0)
    cfg = config or choose_config("qk_rms_norm", q.dtype, d, q_lay.n_rows + k_lay.n_rows, q.device)[0]
    qw, qws = _weight_args(q_weight, q)
    kw, kws = _weight_args(k_weight, k)
    n_blocks = _cdiv(q_lay.n_rows, cfg.rows) + _cdiv(k_lay.n_rows, cfg.rows)
    (_, qn1, qn2), (qxs, qys) = q_lay.sizes, q_lay.strides
    (_, kn1, kn2), (kxs, kys) = k_lay.sizes, k_lay.strides
    _k().qk_rms_norm_kernel[_grid(cfg, n_blocks, q.device)](
        d, eps, weight_offset,
        q, q_out, qw, q_lay.n_rows, qn1, qn2, *qxs, *qys, qws,
        k, k_out, kw, k_lay.n_rows, kn1, kn2, *kxs, *kys, kws,
        HAS_WEIGHT=q_weight is not None, ROWS=cfg.rows, BLOCK_D=cfg.block_d,
        CHUNKED=cfg.chunked(d), PERSISTENT=cfg.persistent, num_warps=cfg.num_warps)
