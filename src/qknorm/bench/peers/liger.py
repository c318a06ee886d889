"""Liger-Kernel: its RMSNorm autograd functions, forward only (``liger``)."""
from __future__ import annotations

from .base import Impl, import_module


class Liger(Impl):
    """Liger-Kernel's autograd functions: ``LigerRMSNormFunction.apply(X, W, eps,
    offset, casting_mode, in_place, row_mode)`` and ``LigerFusedAddRMSNormFunction
    .apply(X, R, W, eps, offset, casting_mode, in_place)``. ``casting_mode="gemma"``:
    fp32 math and one rounding, the same numerics as the reference. Their forward is
    wrapped in ``ensure_contiguous``, so a strided view is copied inside the call."""

    name = "liger"
    library = "Liger-Kernel"
    dists = ("liger-kernel",)
    module = "liger_kernel.ops.rms_norm"
    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add")
    not_ops = {"rope": "liger rms_norm only: no RoPE"}

    def __init__(self):
        self._rms = self._add = None

    def available(self):
        m, why = import_module(self.module)
        if m is None:
            return False, why
        self._rms = m.LigerRMSNormFunction
        a, _ = import_module("liger_kernel.ops.fused_add_rms_norm")
        self._add = getattr(a, "LigerFusedAddRMSNormFunction", None) if a is not None else None
        return True, ""

    def check(self, case):
        if case.op == "add" and self._add is None:
            return False, "this Liger has no LigerFusedAddRMSNormFunction"
        return True, ""

    def notes(self, case):
        v = f"liger-kernel {self.version()}; casting_mode=gemma"
        if case.is_qk:
            return f"{v}; .contiguous() copy of the strided view inside the call (timed); Q then K, out of place"
        return f"{v}; out of place"

    def build(self, case, inp):
        eps, off = case.eps, case.weight_offset
        if case.is_qk:
            rms = self._rms.apply
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            return lambda: (rms(q, qw, eps, off, "gemma", True, None), rms(k, kw, eps, off, "gemma", True, None))
        if case.op == "rms2d":
            rms = self._rms.apply
            x, w = inp.x, inp.w
            return lambda: (rms(x, w, eps, off, "gemma", True, None),)
        add = self._add.apply
        x, r, w = inp.x, inp.residual, inp.w
        return lambda: tuple(add(x, r, w, eps, off, "gemma", False))
