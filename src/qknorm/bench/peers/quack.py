"""Quack (quack-kernels): ``quack.rmsnorm.rmsnorm`` with a per-head ``[H, D]`` weight
(``quack``) and with the 1D weight that makes it copy a strided view (``quack_flat``)."""
from __future__ import annotations

from .base import Impl


class Quack(Impl):
    """Quack (``quack.rmsnorm.rmsnorm(x, weight=None, bias=None, residual=None,
    out_dtype=None, residual_dtype=None, eps=1e-6, prenorm=False, weight_offset=0.0)``,
    quack-kernels 0.6.x). Out of place: returns new tensors (same bytes as in place).

    ``per_head=True`` passes the weight as [H, D] (repeated once at build time): Quack's
    per-head form keeps the strided [T, H, D] view as it is. ``per_head=False`` (the
    1D weight) makes Quack ``reshape`` the view to [T*H, D], which copies a strided
    view inside the call."""

    library = "Quack"
    dists = ("quack-kernels",)
    module = "quack.rmsnorm"
    needs_cuda = True

    def __init__(self, per_head: bool = True):
        self.per_head = per_head
        self.name = "quack" if per_head else "quack_flat"
        if per_head:
            self.ops = ("qk", "qk_full", "rms2d", "add")
            self.not_ops = {"rope": "quack rmsnorm only: no RoPE"}
        else:
            self.ops = ("qk",)
            why = "the 1D-weight (copying) form is shown for per-head QK only; see 'quack'"
            self.not_ops = dict.fromkeys(("qk_full", "rms2d", "add"), why) | {"rope": "quack rmsnorm only: no RoPE"}
        self._mod = None
        self._why = ""

    def available(self):
        return (True, "") if self.load() is not None else (False, self._why)

    def notes(self, case):
        v = f"quack-kernels {self.version()}"
        if case.op == "qk":
            how = ("per-head weight [H,D] (built once), strided view read as is" if self.per_head
                   else "1D weight: reshape to [T*H,D] copies the strided view inside the call")
            return f"{v}; {how}; Q then K, out of place"
        if case.op == "qk_full":
            return f"{v}; 2D strided rows; Q then K, out of place"
        return f"{v}; " + ("out of place" if case.op == "rms2d" else "residual + prenorm=True, out of place")

    def build(self, case, inp):
        f, eps, off = self.load().rmsnorm, case.eps, case.weight_offset
        if case.is_qk:
            q, k = inp.q, inp.k
            qw, kw = inp.qw, inp.kw
            if case.op == "qk" and self.per_head:
                qw = qw.expand(case.hq, case.head_dim).contiguous()
                kw = kw.expand(case.hkv, case.head_dim).contiguous()
            return lambda: (f(q, qw, eps=eps, weight_offset=off), f(k, kw, eps=eps, weight_offset=off))
        if case.op == "rms2d":
            x, w = inp.x, inp.w
            return lambda: (f(x, w, eps=eps, weight_offset=off),)
        x, r, w = inp.x, inp.residual, inp.w
        return lambda: tuple(f(x, w, residual=r, eps=eps, prenorm=True, weight_offset=off))
