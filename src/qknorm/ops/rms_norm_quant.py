"""Host side of ``rms_norm_quant`` and ``fused_add_rms_norm_quant``: argument checks and the
PyTorch path (fp32 norm as ``rms_norm`` computes it, then the 8-bit quantisation).

Public functions and documentation: ``functional.py``. Every backend runs the PyTorch path
for now (a handful of PyTorch kernels on a GPU); the fused one-pass Triton kernel is the next
step of issue 15, and will have to give the same codes.
"""
from __future__ import annotations

import torch

from .. import validate
from ..reference import rms_norm_ref

_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)

#: Largest finite value of each output format (saturation bound; the quantisation's ``qmax``).
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0, torch.int8: 127.0}
AMAX_FLOOR = 1e-10  #: dynamic scales are ``max(amax, AMAX_FLOOR) / qmax``


def _scale_tensor(name: str, t, x) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a 1-element float32 torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32 or t.numel() != 1:
        raise TypeError(f"{name} must be a 1-element float32 tensor, got {validate.dtype_name(t.dtype)} "
                        f"with {t.numel()} elements")
    validate.same_device(name, t, "x", x)


def scales_shape(x_shape, n_groups: int) -> tuple:
    """Shape of the dynamic scales: x's leading dims and one scale per group (1: per token)."""
    return tuple(x_shape[:-1]) + (n_groups,)


def check_args(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
               column_major_scales, scale_ue8m0, out, scales_out, *, memory: bool = True):
    """Every rule, in the order users see the errors; nothing is written. Returns
    ``(eps, weight_offset, n_groups)`` (``n_groups`` 0 for a static scale)."""
    validate.activation("x", x)
    if residual is not None:
        validate.residual(x, residual)
    validate.weight("weight", weight, x.shape[-1], "x", x)
    validate.scalars(eps, weight_offset, weight is not None)
    if out_dtype not in QMAX:
        raise TypeError(f"out_dtype must be torch.float8_e4m3fn, torch.float8_e5m2 or torch.int8, got {out_dtype!r}")
    for name, v in (("column_major_scales", column_major_scales), ("scale_ue8m0", scale_ue8m0)):
        if type(v) is not bool:
            raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")
    d = x.shape[-1]
    if scale is not None:
        _scale_tensor("scale", scale, x)
        for name, v in (("group_size", group_size), ("scale_ub", scale_ub), ("scales_out", scales_out)):
            if v is not None:
                raise ValueError(f"{name} is for dynamic scales; with a static scale pass {name}=None")
        if scale_ue8m0 or column_major_scales:
            raise ValueError("scale_ue8m0 and column_major_scales are for dynamic scales; with a static scale "
                             "leave them False")
        n_groups = 0
    else:
        n_groups = 1
        if group_size is not None:
            g = validate.integer("group_size", group_size, minimum=1)
            if d % g:
                raise ValueError(f"group_size {g} must divide the last dim of x ({d})")
            n_groups = d // g
        if scale_ub is not None:
            if isinstance(scale_ub, torch.Tensor):
                _scale_tensor("scale_ub", scale_ub, x)
            else:
                ub = validate.real("scale_ub", scale_ub)
                if not ub > 0 or ub == float("inf"):
                    raise ValueError(f"scale_ub must be a positive finite number, got {scale_ub!r}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        validate.dense("out", out)
        if out.dtype != out_dtype:
            raise TypeError(f"out must have dtype {out_dtype} (out_dtype), got {validate.dtype_name(out.dtype)}")
        if out.shape != x.shape:
            raise ValueError(f"out must have the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
        validate.same_device("out", out, "x", x)
        validate.written("out", out)
    if scales_out is not None:
        if not isinstance(scales_out, torch.Tensor):
            raise TypeError(f"scales_out must be a torch.Tensor or None, got {type(scales_out).__name__}")
        validate.dense("scales_out", scales_out)
        want = scales_shape(x.shape, n_groups)
        if scales_out.dtype != torch.float32:
            raise TypeError(f"scales_out must be float32, got {validate.dtype_name(scales_out.dtype)}")
        if tuple(scales_out.shape) != want:
            raise ValueError(f"scales_out must have shape {want} (x's leading dims, {n_groups} scale"
                             f"{'s' if n_groups > 1 else ''} per row), got {tuple(scales_out.shape)}")
        validate.same_device("scales_out", scales_out, "x", x)
        validate.written("scales_out", scales_out)
    if residual is not None:
        validate.written("residual", residual)
    if memory:
        written = [("out", out), ("scales_out", scales_out), ("residual", residual)]
        written = [(n, t) for n, t in written if t is not None]
        for i, (na, a) in enumerate(written):
            for nb, b in written[i + 1:]:
                validate.disjoint(na, a, nb, b)
            if na != "residual":
                validate.disjoint(na, a, "x", x)
        if residual is not None:
            validate.disjoint("x", x, "residual", residual)
    return float(eps), float(weight_offset), n_groups


def refuse_grad(*ts) -> None:
    """The quantised ops are not differentiable: under grad mode no argument may require grad
    (a gradient would silently stop here)."""
    if torch.is_grad_enabled():
        for name, t in ts:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise ValueError(f"{name} requires grad, but the quantised output is not differentiable; "
                                 "call under torch.no_grad() / torch.inference_mode(), or detach it")


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """``2**ceil(log2(s))`` exactly for positive finite ``s`` (UE8M0 scales)."""
    m, e = torch.frexp(s)  # s = m * 2**e, m in [0.5, 1)
    return torch.ldexp(torch.ones_like(s), e - (m == 0.5).to(e.dtype))


def _new_scales(x, n_groups: int, column_major: bool) -> torch.Tensor:
    shape = scales_shape(x.shape, n_groups)
    if not column_major:
        return torch.empty(shape, dtype=torch.float32, device=x.device)
    # stride 1 along the tokens (the leading dims flattened): the layout DeepGEMM/TMA reads
    return torch.empty((n_groups,) + shape[:-1], dtype=torch.float32, device=x.device).movedim(0, -1)


def run(x, residual, weight, eps: float, scale, n_groups: int, out_dtype, weight_offset: float, scale_ub,
        column_major_scales: bool, scale_ue8m0: bool, out, scales_out):
    """The PyTorch path, after :func:`check_args`: ``(y, scales)``; writes ``residual`` (fused
    form), ``out`` and ``scales_out`` last."""
    qmax = QMAX[out_dtype]
    with torch.no_grad():
        weight = validate.unaliased(weight, (residual, out, scales_out))
        if residual is not None:
            s = x.to(torch.float32) + residual.to(torch.float32)
            n = rms_norm_ref(s, weight, eps, weight_offset)
        else:
            n = rms_norm_ref(x, weight, eps, weight_offset)
        if scale is not None:
            q = n / scale.reshape(())
            scales = scale
        else:
            d = x.shape[-1]
            ng = n.reshape(n.shape[:-1] + (n_groups, d // n_groups))
            sc = torch.clamp(ng.abs().amax(dim=-1), min=AMAX_FLOOR) / qmax
            if scale_ub is not None:
                ub = scale_ub.reshape(()) if isinstance(scale_ub, torch.Tensor) else float(scale_ub)
                sc = torch.clamp(sc, max=ub)
            if scale_ue8m0:
                sc = _pow2_ceil(sc)
            q = (ng / sc.unsqueeze(-1)).reshape(n.shape)
            scales = sc
        q = torch.clamp(q, -qmax, qmax)  # NaN stays NaN
        if out_dtype == torch.int8:
            q = torch.nan_to_num(torch.round(q), nan=0.0)  # round half to even; int8 has no NaN
        y = q.to(out_dtype)
        if residual is not None:
            residual.copy_(s)
        if out is not None:
            out.copy_(y)
            y = out
        if scale is None:
            if scales_out is None:
                scales_out = _new_scales(x, n_groups, column_major_scales)
            scales_out.copy_(scales)
            scales = scales_out
    return y, scales
