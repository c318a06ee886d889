"""The eager core: local sums, ONE all-reduce, local scale; and its autograd Function.

:func:`sums_reduce_scale` is the whole forward of an eager call (no custom-op layer, to
keep the host cost low). :class:`TPNormFn` records it for autograd; its backward
all-reduces one fp64 dot product per row (A's and B's in one buffer) across the group,
so every rank must run the backward, as it runs the forward.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import local


def sums_reduce_scale(group, a, ya, wa, a_full, b, yb, wb, b_full, eps, weight_offset, config):
    """Write ``ya`` (and ``yb``) from ``a`` (and ``b``, None for one tensor). Returns the
    all-reduced fp64 row totals ``[rows(a) + rows(b)]``."""
    n = local.rows(a) + (local.rows(b) if b is not None else 0)
    sums = torch.empty(n, dtype=torch.float64, device=a.device)
    if n == 0:
        return sums
    plan = local.kernel_plan(a, ya, b, yb, config)  # once for both kernels
    local.partial_sums(a, b, sums, plan)
    dist.all_reduce(sums, group=group)
    local.scale(eps, weight_offset, a, ya, wa, a_full, b, yb, wb, b_full, sums, plan)
    return sums


class TPNormFn(torch.autograd.Function):
    """Autograd of the TP norm (A, and B when given). With ``xh = x * rstd`` and
    ``gw = grad * (w + offset)``, per row: ``dx = rstd * (gw - xh * dot / D_full)`` where
    ``dot = sum over ALL ranks of sum(gw * xh)`` (one all-reduce of A's and B's per-row dots
    in the backward, fp64), and ``dw = sum over rows of grad * xh`` (local). Composed of
    PyTorch ops in fp64. Under autograd an in-place call costs one extra copy (``copy_``).

    ``spec``: ``(group, a_full, b_full, eps, weight_offset, a_in_place, b_in_place, config)``.
    """

    @staticmethod
    def forward(ctx, spec, a, wa, b, wb):
        group, a_full, b_full, eps, weight_offset, a_in_place, b_in_place, config = spec
        # outputs are new tensors (the caller copies them into in-place outputs with copy_,
        # which autograd tracks for views and leaves as it does for any in-place op); inputs
        # written in place later are cloned here so the backward sees their values on entry
        xa = a.clone() if a_in_place else a
        xb = b.clone() if (b is not None and b_in_place) else b
        ya = torch.empty(a.shape, dtype=a.dtype, device=a.device)
        yb = None if b is None else torch.empty(b.shape, dtype=b.dtype, device=b.device)
        sums = sums_reduce_scale(group, a, ya, wa, a_full, b, yb, wb, b_full, eps, weight_offset, config)
        ctx.spec = spec
        # saved for backward (not kept as attributes): autograd's version check then refuses a backward after the
        # inputs or weights were written in place, instead of differentiating their new values
        ctx.save_for_backward(xa, xb, wa, wb, sums)
        return (ya,) if b is None else (ya, yb)

    @staticmethod
    def backward(ctx, *grads):
        group, a_full, b_full, eps, weight_offset = ctx.spec[:5]
        xa, xb, wa, wb, sums = ctx.saved_tensors
        segs, n0 = [], 0
        for x, w, full, g in ((xa, wa, a_full, grads[0]), (xb, wb, b_full, grads[1] if len(grads) > 1 else None)):
            if x is None:
                continue
            n = local.rows(x)
            rstd = torch.rsqrt(sums[n0:n0 + n].view(*x.shape[:-1], 1) / full + eps)
            n0 += n
            xh = x.double() * rstd
            g64 = torch.zeros(x.shape, dtype=torch.float64, device=x.device) if g is None else g.double()
            gw = g64 if w is None else g64 * (w.double() + weight_offset)
            segs.append((x, w, full, rstd, xh, g64, gw, (gw * xh).sum(-1).reshape(-1)))
        dots = torch.cat([sg[-1] for sg in segs])
        if dots.numel():
            dist.all_reduce(dots, group=group)
        out, n0 = [None], 0
        for i, (x, w, full, rstd, xh, g64, gw, _) in enumerate(segs):
            n = local.rows(x)
            dot = dots[n0:n0 + n].view(*x.shape[:-1], 1)
            n0 += n
            dx = dw = None
            if ctx.needs_input_grad[1 + 2 * i]:
                dx = (rstd * (gw - xh * (dot / full))).to(x.dtype)
            if w is not None and ctx.needs_input_grad[2 + 2 * i]:
                dw = (g64 * xh).reshape(-1, x.shape[-1]).sum(0).to(w.dtype)
            out += [dx, dw]
        out += [None] * (5 - len(out))
        return tuple(out)
