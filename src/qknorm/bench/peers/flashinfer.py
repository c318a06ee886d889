"""FlashInfer: its norm API on the CuTe DSL path (``flashinfer``) and the CUDA path
(``flashinfer_cuda``), the copy-then-2D path (``flashinfer_copy2d``), the RoPE
compositions ending in its ``apply_rope_with_cos_sin_cache_inplace``
(``qknorm_qk+flashinfer_rope``, ``flashinfer_rms+rope``), and for the quantised kinds its fused
static-scale quant norms (rows ``flashinfer``/``flashinfer_cuda``) and the composition of its
norm with the PyTorch quantisation (``flashinfer_rms+torch_quant``, every mode). For the attention
prologue: ``flashinfer_rms+rope+append`` and ``qknorm_rope+flashinfer_append``, ending in its
``append_paged_kv_cache`` (bf16/fp16 caches only; see :class:`_FlashInferAppend`).

FlashInfer's quant norms (``flashinfer/norm/__init__.py``, 0.6+; read at commit fb28d72 of
flashinfer-ai/flashinfer): ``rmsnorm_quant(out, input, weight, scale, eps=1e-6,
enable_pdl=None)`` and ``fused_add_rmsnorm_quant(out, input, residual, weight, scale, eps=1e-6,
enable_pdl=None)``: a static per-tensor fp32 ``scale`` of shape (1,) only (no dynamic per-token
or per-group scales), fp8 e4m3/e5m2 ``out`` (its dtype picks the format; no int8), fp16/bf16
input, 2D; ``residual += input`` in place, ``input`` unchanged. Both kernels (CUDA
``RMSNormQuantKernel`` in ``include/flashinfer/norm.cuh`` and the CuTe DSL one) compute
``x * rstd * w * (1 / scale)`` in fp32 from the fp32 sum and clamp to +-max before the cast, so
the gate's fp32 window applies (the reciprocal's rounding is inside it).

:class:`FlashInferLike` also serves SGLang's compiled kernel package (``sgl_kernel``,
see :mod:`.sglang`), which speaks the same norm API.
"""
from __future__ import annotations

import contextlib

import torch

from ..cases import QUANT_OPS, qk_views_contiguous
from .base import Impl, import_module, module_flag
from .pytorch import torch_quant

__all__ = ["FlashInferLike", "FlashInferCopy2D", "QknormQkFlashInferRope", "FlashInferRmsRope",
           "FlashInferRmsTorchQuant", "FlashInferRmsRopeAppend", "QknormRopeFlashInferAppend"]

FI_QUANT_OPS = ("rmsq_static", "addq_static")
FI_NO_DYNAMIC = ("FlashInfer's rmsnorm_quant/fused_add_rmsnorm_quant take a static per-tensor scale only "
                 "(flashinfer_rms+torch_quant is the composition for this mode)")


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

    ``quant=True`` (FlashInfer's rows) adds the static quantised kinds through
    ``rmsnorm_quant`` / ``fused_add_rmsnorm_quant`` (see the module docstring; the same global
    picks their path); sgl_kernel's row has no quantised kinds.
    """

    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add")

    def __init__(self, name: str, module: str, cuda_path: bool = False, dists: tuple[str, ...] = (),
                 library: str = "FlashInfer", quant: bool = False):
        self.name, self.module, self.cuda_path, self.dists, self.library = name, module, cuda_path, dists, library
        self.not_ops = {"rope": "rmsnorm only (flashinfer_rms+rope is the composition): no RoPE"}
        self.quant = quant
        if quant:
            self.ops = FlashInferLike.ops + FI_QUANT_OPS
            self.not_ops.update(dict.fromkeys((op for op in QUANT_OPS if op not in FI_QUANT_OPS), FI_NO_DYNAMIC))
        else:
            self.not_ops.update(dict.fromkeys(QUANT_OPS, f"the {library} norm API adapter: no quantised kinds"))
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
        if case.is_quant:
            if case.weight_offset:
                return False, "no weight_offset in FlashInfer's quant norms (no gemma_ form)"
            if case.dtype not in (torch.float16, torch.bfloat16):
                return False, "FlashInfer's quant norms: fp16/bf16 input only"
            if case.out_dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
                return False, "FlashInfer's quant norms: fp8 e4m3/e5m2 output only"
            m = self.load()
            f = "fused_add_rmsnorm_quant" if case.has_residual else "rmsnorm_quant"
            if m is not None and not hasattr(m, f):
                return False, f"this flashinfer.norm has no {f}"
            return True, ""
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
        if case.is_quant:
            f = "fused_add_rmsnorm_quant (residual in place)" if case.has_residual else "rmsnorm_quant"
            return f"{head}; {f}: static scale, one launch, out= preallocated" if head else f
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
        if case.is_quant:
            x, w, out, scale = inp.x, inp.w, inp.out, inp.scale
            if case.has_residual:
                f, r = m.fused_add_rmsnorm_quant, inp.residual

                def call():
                    f(out, x, r, w, scale, eps)
                    return out, scale, r
                return call
            f = m.rmsnorm_quant

            def call():
                f(out, x, w, scale, eps)
                return out, scale
            return call
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


class FlashInferRmsTorchQuant(Impl):
    """The composition of FlashInfer's norm with the PyTorch quantisation, every quantised kind:
    ``rmsnorm(x, w, eps, out=n)`` into a preallocated bf16/fp16 buffer, or
    ``fused_add_rmsnorm(x, residual, w, eps)`` (``residual += x``, ``x`` overwritten with the
    norm, in place), then :func:`~qknorm.bench.peers.pytorch.torch_quant` of that rounded norm.
    What an engine without a fused quant norm runs; ``n`` passes through the activation dtype
    (``norm_rounded``)."""

    name = "flashinfer_rms+torch_quant"
    library = "FlashInfer"
    dists = ("flashinfer-python",)
    module = "flashinfer.norm"
    needs_cuda = True
    ops = QUANT_OPS
    norm_rounded = True
    not_ops = {op: "quantised kinds only (a norm + quantise composition)" for op in ("qk", "qk_full", "rms2d", "add",
                                                                                      "rope")}

    def __init__(self):
        self._mod = None
        self._why = ""

    def available(self):
        return (True, "") if self.load() is not None else (False, self._why)

    def check(self, case):
        if case.weight_offset:
            return False, "weight_offset: only FlashInfer's gemma_ norms take it; not wired here"
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "FlashInfer norm: fp16/bf16 only"
        return True, ""

    def notes(self, case):
        v = f"flashinfer-python {self.version()}"
        first = "fused_add_rmsnorm in place (x becomes the norm)" if case.has_residual else "rmsnorm out= buffer"
        return f"{v}; {first}, then torch quantise of the {case.dtype} norm (several kernels)"

    def build(self, case, inp):
        m, eps = self.load(), case.eps
        x, w, scale = inp.x, inp.w, inp.t.get("scale")
        args = (case.quant_mode, case.out_dtype, case.group_size, scale, case.column_major_scales, case.scale_ue8m0)
        if case.has_residual:
            add, r = m.fused_add_rmsnorm, inp.residual

            def call():
                add(x, r, w, eps)
                return torch_quant(x, *args) + (r,)
            return call
        rms, n = m.rmsnorm, torch.empty_like(x)

        def call():
            rms(x, w, eps, out=n)
            return torch_quant(n, *args)
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


# --------------------------------------------------------------------------- prologue compositions

class _FlashInferAppend(Impl):
    """Base of the prologue compositions ending in FlashInfer's paged-cache append, read at
    flashinfer-ai/flashinfer ``flashinfer/page.py`` and ``csrc/page.cu``:
    ``flashinfer.page.append_paged_kv_cache(append_key, append_value, batch_indices, positions,
    paged_kv_cache, kv_indices, kv_indptr, kv_last_page_len, kv_layout="NHD")`` with
    ``paged_kv_cache=(k_cache, v_cache)`` of ``[max_num_pages, page_size, Hkv, D]``; append_key/value
    ``[nnz, Hkv, D]`` with a unit last-dim stride (token and head strides are read: the packed
    buffer's strided views pass as they are); int32 index arrays. Entry ``i`` goes to page
    ``kv_indices[kv_indptr[batch_indices[i]] + positions[i] // page_size]``, offset ``positions[i] %
    page_size``. Here each real token is its own one-page request (``kv_indptr = arange(n + 1)``,
    ``kv_indices = slot // block_size``, ``positions = slot % block_size``, ``kv_last_page_len =
    positions + 1``), built once outside the timed call; the padding tail is not passed (the kernel
    has no skip for negative slots). The kernel copies in the cache's dtype (``DISPATCH`` on the cache
    dtype, no scale argument): FP8 caches are skipped."""

    library = "FlashInfer"
    dists = ("flashinfer-python",)
    module = "flashinfer.page"
    needs_cuda = True
    ops = ("prologue",)
    rope = True  # whether FlashInfer's RoPE is part of the composition

    def __init__(self):
        from ..cases import OPS
        self.not_ops = {op: "prologue cases only (norm + RoPE + KV-cache write)" for op in OPS if op != "prologue"}
        self._append = self._rope = self._norm = None

    def available(self):
        m, why = import_module("flashinfer.page")
        if m is None:
            return False, why
        self._append = getattr(m, "append_paged_kv_cache", None)
        if self._append is None:
            return False, "this flashinfer.page has no append_paged_kv_cache"
        return True, ""

    def check(self, case):
        if case.cache_fp8:
            return False, "append_paged_kv_cache writes the append tensors' dtype (no FP8 quantisation, no scale)"
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "FlashInfer: fp16/bf16 only"
        return True, ""

    def _append_call(self, case, inp):
        n, bs = case.n_kept, case.block_size
        s = inp.slot_mapping[:n]
        dev = s.device
        pos = (s % bs).to(torch.int32)
        idx = dict(batch_indices=torch.arange(n, dtype=torch.int32, device=dev), positions=pos,
                   kv_indices=(s // bs).to(torch.int32), kv_indptr=torch.arange(n + 1, dtype=torch.int32, device=dev),
                   kv_last_page_len=pos + 1)
        hkv, d = case.hkv, case.head_dim
        kc = inp.k_cache.view(-1, bs, hkv, d)  # a flat pool is block_size 1
        vc = inp.v_cache.view(-1, bs, hkv, d)
        f, k, v = self._append, inp.k[:n], inp.v[:n]
        self._last_idx = idx  # for the tests

        def append():
            f(k, v, idx["batch_indices"], idx["positions"], (kc, vc), idx["kv_indices"], idx["kv_indptr"],
              idx["kv_last_page_len"], kv_layout="NHD")
        return append


class FlashInferRmsRopeAppend(_FlashInferAppend):
    """FlashInfer only: ``rmsnorm`` (``gemma_rmsnorm``) of Q, of K (strided views, in place),
    ``apply_rope_with_cos_sin_cache_inplace`` (see :class:`_FlashInferRope`), then
    ``append_paged_kv_cache``: 4 launches. No mRoPE in FlashInfer's RoPE."""

    name = "flashinfer_rms+rope+append"

    def available(self):
        ok, why = super().available()
        if not ok:
            return ok, why
        for mod in ("flashinfer.rope", "flashinfer.norm"):
            m, why = import_module(mod)
            if m is None:
                return False, why
            if mod == "flashinfer.rope":
                self._rope = getattr(m, "apply_rope_with_cos_sin_cache_inplace", None)
                if self._rope is None:
                    return False, "this flashinfer.rope has no apply_rope_with_cos_sin_cache_inplace"
            else:
                self._norm = m
        return True, ""

    def check(self, case):
        if case.mrope_section:
            return False, "FlashInfer's apply_rope_with_cos_sin_cache_inplace has no mRoPE"
        ok, why = _offset_rule(case)
        return super().check(case) if ok else (ok, why)

    def notes(self, case):
        return (f"4 launches: flashinfer-python {self.version()} rmsnorm(Q), rmsnorm(K) in place, "
                "apply_rope_with_cos_sin_cache_inplace on the strided views, append_paged_kv_cache (one-page "
                "requests, real tokens only)")

    def build(self, case, inp):
        m = self._norm
        rms = m.gemma_rmsnorm if case.weight_offset == 1.0 else m.rmsnorm
        D, hq, hkv = case.head_dim, case.hq, case.hkv
        q2, k2 = inp.qkv[:, :hq * D], inp.qkv[:, hq * D:(hq + hkv) * D]
        q, k, qw, kw, eps = inp.q, inp.k, inp.qw, inp.kw, case.eps
        rope, cs, pos, neox = self._rope, inp.cos_sin_cache, inp.positions, case.is_neox
        append = self._append_call(case, inp)
        outs = (q, inp.k_cache, inp.v_cache)

        def call():
            rms(q, qw, eps, out=q)
            rms(k, kw, eps, out=k)
            rope(pos, q2, k2, D, cs, neox)
            append()
            return outs
        return call


class QknormRopeFlashInferAppend(_FlashInferAppend):
    """qknorm's ``qk_rms_norm_rope`` (Q and K in place, one launch) + FlashInfer's
    ``append_paged_kv_cache``: 2 launches (FlashInfer's JIT RoPE need not build)."""

    name = "qknorm_rope+flashinfer_append"

    def check(self, case):
        if case.mrope_section:
            return False, "qk_rms_norm_rope has no mRoPE (qk_norm_rope_cache has)"
        return super().check(case)

    def notes(self, case):
        return (f"2 launches: qknorm.qk_rms_norm_rope in place, then flashinfer-python {self.version()} "
                "append_paged_kv_cache (one-page requests, real tokens only)")

    def build(self, case, inp):
        import qknorm
        f = qknorm.qk_rms_norm_rope
        q, k = inp.q, inp.k
        args = (q, k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, case.eps)
        kw = dict(is_neox=case.is_neox, rotary_dim=case.rotary_dim, weight_offset=case.weight_offset, q_out=q,
                  k_out=k)
        append = self._append_call(case, inp)
        outs = (q, inp.k_cache, inp.v_cache)

        def call():
            f(*args, **kw)
            append()
            return outs
        return call
