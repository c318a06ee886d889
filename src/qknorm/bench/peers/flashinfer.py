"""FlashInfer: its norm API on the CuTe DSL path (``flashinfer``) and the CUDA path
(``flashinfer_cuda``), the copy-then-2D path (``flashinfer_copy2d``), and the RoPE
compositions ending in its ``apply_rope_with_cos_sin_cache_inplace``
(``qknorm_qk+flashinfer_rope``, ``flashinfer_rms+rope``).

:class:`FlashInferLike` also serves SGLang's compiled kernel package (``sgl_kernel``,
see :mod:`.sglang`), which speaks the same norm API.
"""
from __future__ import annotations

import contextlib

import torch

from ..cases import qk_views_contiguous
from .base import Impl, import_module, module_flag

__all__ = ["FlashInferLike", "FlashInferCopy2D", "QknormQkFlashInferRope", "FlashInferRmsRope"]


def _offset_rule(case) -> tuple[bool, str]:
    if case.weight_offset not in (0.0, 1.0):
        return False, f"weight_offset={case.weight_offset:g}: only 0 and Gemma's 1 (gemma_ forms)"
    return True, ""


class FlashInferLike(Impl):
    """FlashInfer's norm API (``rmsnorm(input, weight, eps, out=None, enable_pdl=None)``,
    ``fused_add_rmsnorm(input, residual, weight, eps, enable_pdl=None)`` and the
    ``gemma_`` forms for weight offset 1), also spoken by sgl_kernel.

    FlashInfer >= 0.6 runs its CuTe DSL kernels when ``nvidia-cutlass-dsl`` imports and
    its CUDA JIT kernels otherwise or with ``FLASHINFER_USE_CUDA_NORM=1``; the choice is
    the module global ``flashinfer.norm._USE_CUDA_NORM``, read at every call by
    ``_use_cuda_norm(device)``. ``cuda_path=True`` sets that global for the duration
    of this implementation (same public entry points, other kernels).
    """

    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add")

    def __init__(self, name: str, module: str, cuda_path: bool = False, dists: tuple[str, ...] = (),
                 library: str = "FlashInfer"):
        self.name, self.module, self.cuda_path, self.dists, self.library = name, module, cuda_path, dists, library
        self.not_ops = {"rope": "rmsnorm only (flashinfer_rms+rope is the composition): no RoPE"}
        self._mod = None
        self._why = ""

    def available(self):
        m = self.load()
        if m is None:
            return False, self._why
        if self.cuda_path:
            if not hasattr(m, "_USE_CUDA_NORM") or not hasattr(m, "get_norm_module"):
                return False, "this FlashInfer chooses its CUDA path only at import (FLASHINFER_USE_CUDA_NORM=1)"
            if m._USE_CUDA_NORM:
                return False, "the default FlashInfer path is already the CUDA one (CuTe DSL unavailable or env set)"
        return True, ""

    def check(self, case):
        return _offset_rule(case)

    def _path(self) -> str:
        m = self.load()
        if m is None or not hasattr(m, "_USE_CUDA_NORM"):
            return ""
        return "CUDA path" if (self.cuda_path or m._USE_CUDA_NORM) else "CuTe DSL path"

    def ran(self, case):
        return self._path()

    def _head(self) -> str:
        dist = next((d for d in self.dists if d), "")
        v = self.version()
        return ", ".join(s for s in (f"{dist} {v}".strip() if dist else "", self._path()) if s)

    def notes(self, case):
        head = self._head()
        if case.is_qk:
            how = "3D strided [T,H,D]" if case.op == "qk" else "2D strided rows"
            body = f"{how}, Q then K (2 launches), in place"
        else:
            body = "out= preallocated output" if case.op == "rms2d" else "in place"
        return f"{head}; {body}" if head else body

    def scope(self):
        if not self.cuda_path:
            return contextlib.nullcontext()
        return module_flag(self.load(), "_USE_CUDA_NORM", True)

    def build(self, case, inp):
        m, eps = self.load(), case.eps
        gemma = case.weight_offset == 1.0
        rms = m.gemma_rmsnorm if gemma else m.rmsnorm
        add = m.gemma_fused_add_rmsnorm if gemma else m.fused_add_rmsnorm
        if case.is_qk:
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            outs = (q, k)

            def call():
                rms(q, qw, eps, out=q)
                rms(k, kw, eps, out=k)
                return outs
        elif case.op == "rms2d":
            x, w, out = inp.x, inp.w, inp.out
            outs = (out,)

            def call():
                rms(x, w, eps, out=out)
                return outs
        else:
            x, r, w = inp.x, inp.residual, inp.w
            outs = (x, r)

            def call():
                add(x, r, w, eps)
                return outs
        return call


class FlashInferCopy2D(FlashInferLike):
    """The copy path with FlashInfer's 2D kernel: ``.contiguous()`` then ``rmsnorm`` on
    [T*H, D] rows in place on the copy."""

    ops = ("qk", "qk_full")

    def __init__(self):
        super().__init__("flashinfer_copy2d", "flashinfer.norm", dists=("flashinfer-python",))
        self.not_ops = {"rms2d": "QK cases only", "add": "QK cases only",
                        "rope": "rmsnorm only (flashinfer_rms+rope is the composition): no RoPE"}

    def notes(self, case):
        if qk_views_contiguous(case):
            return f"{self._head()}; Q and K views already contiguous (T=1): no copy, the 2D rmsnorm alone"
        return f"{self._head()}; copies Q and K to contiguous (timed), then the 2D rmsnorm in place on the copies"

    def build(self, case, inp):
        m, eps, D = self.load(), case.eps, case.width
        rms = m.gemma_rmsnorm if case.weight_offset == 1.0 else m.rmsnorm
        q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw

        def call():
            qc, kc = q.contiguous(), k.contiguous()
            q2, k2 = qc.view(-1, D), kc.view(-1, D)
            rms(q2, qw, eps, out=q2)
            rms(k2, kw, eps, out=k2)
            return qc, kc
        return call


# --------------------------------------------------------------------------- RoPE compositions

class _FlashInferRope(Impl):
    """Base of the compositions ending in FlashInfer's
    ``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size,
    cos_sin_cache, is_neox=True)``: query/key ``[T, H*D]``, cos_sin_cache fp32
    ``[max_pos, rotary_dim]`` (the rotary dim is its width), positions int32/int64. Its CUDA
    kernel reads the token and head strides and needs only a unit last-dim stride, so the
    strided ``[T, H*D]`` column slices of the packed QKV buffer are passed as they are (no
    copy). Its JIT build can fail (e.g. against CUDA 13 headers): the row then says so."""

    library = "FlashInfer"
    dists = ("flashinfer-python",)
    module = "flashinfer.rope"
    needs_cuda = True
    ops = ("rope",)
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add"), "rope cases only (norm + RoPE)")
    norm_module = ""

    def __init__(self):
        self._rope = self._norm = None

    def available(self):
        m, why = import_module("flashinfer.rope")
        if m is None:
            return False, why
        self._rope = getattr(m, "apply_rope_with_cos_sin_cache_inplace", None)
        if self._rope is None:
            return False, "this flashinfer.rope has no apply_rope_with_cos_sin_cache_inplace"
        if self.norm_module:
            self._norm, why = import_module(self.norm_module)
            if self._norm is None:
                return False, why
        return True, ""

    def check(self, case):
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "FlashInfer RoPE: fp16/bf16 only"
        return True, ""

    def _rope_call(self, case, inp):
        """``rope()`` applying FlashInfer's RoPE in place to the packed buffer's Q and K."""
        D, hq, hkv = case.head_dim, case.hq, case.hkv
        q2, k2 = inp.qkv[:, :hq * D], inp.qkv[:, hq * D:(hq + hkv) * D]  # strided [T, H*D] views
        f, cs, pos, neox = self._rope, inp.cos_sin_cache, inp.positions, case.is_neox
        assert q2.stride(-1) == 1 and k2.stride(-1) == 1 and cs.dtype == torch.float32

        def rope():
            f(pos, q2, k2, D, cs, neox)
        return rope


class QknormQkFlashInferRope(_FlashInferRope):
    """qknorm's ``qk_rms_norm`` (Q and K in one launch, in place) + FlashInfer's RoPE: the
    best two-pass composition qknorm itself offers without the fused kernel."""

    name = "qknorm_qk+flashinfer_rope"

    def notes(self, case):
        return (f"2 launches: qknorm.qk_rms_norm in place, then flashinfer-python {self.version()} "
                "apply_rope_with_cos_sin_cache_inplace on the strided [T, H*D] views (no copy)")

    def build(self, case, inp):
        import qknorm
        q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
        eps, off, outs, norm = case.eps, case.weight_offset, (q, k), qknorm.qk_rms_norm
        rope = self._rope_call(case, inp)

        def call():
            norm(q, k, qw, kw, eps, weight_offset=off, q_out=q, k_out=k)
            rope()
            return outs
        return call


class FlashInferRmsRope(_FlashInferRope):
    """FlashInfer only: ``rmsnorm`` (``gemma_rmsnorm`` for offset 1) of Q, of K (3D strided
    views, in place), then FlashInfer's RoPE: what an engine built on FlashInfer runs."""

    name = "flashinfer_rms+rope"
    norm_module = "flashinfer.norm"

    def check(self, case):
        ok, why = _offset_rule(case)
        return super().check(case) if ok else (ok, why)

    def notes(self, case):
        return (f"3 launches: flashinfer-python {self.version()} rmsnorm(Q), rmsnorm(K) on the "
                "strided [T, H, D] views in place, then apply_rope_with_cos_sin_cache_inplace (no copy)")

    def build(self, case, inp):
        m = self._norm
        rms = m.gemma_rmsnorm if case.weight_offset == 1.0 else m.rmsnorm
        q, k, qw, kw, eps, outs = inp.q, inp.k, inp.qw, inp.kw, case.eps, (inp.q, inp.k)
        rope = self._rope_call(case, inp)

        def call():
            rms(q, qw, eps, out=q)
            rms(k, kw, eps, out=k)
            rope()
            return outs
        return call
