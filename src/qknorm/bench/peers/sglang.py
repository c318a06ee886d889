"""SGLang: its JIT kernels (``sglang.jit_kernel``, CUDA sources compiled by nvcc on first use
and launched through tvm-ffi) and its compiled kernel package (import ``sgl_kernel``,
distributed as ``sglang-kernel`` since 0.4, formerly ``sgl-kernel``).

Rows:

``sglang_jit``
    ``sglang.jit_kernel.norm``:

    - ``qk``: ``fused_inplace_qknorm(q, k, q_weight, k_weight, eps, head_dim=D)``: Q and K
      of the packed QKV buffer, the strided ``[T, H, D]`` views, normalised in place in
      one launch (head_dim 64/128/256/512/1024);
    - ``qk_full``: ``fused_inplace_qknorm_across_heads(q, k, q_weight, k_weight, eps)`` on
      the strided ``[T, H*D]`` slices, in place, one launch (when this SGLang has it);
    - ``rms2d``: ``rmsnorm(x, weight, out=out, eps=eps)`` into a preallocated output
      (hidden 64/128/256, multiples of 256 up to 8192, multiples of 512 up to 16384);
    - ``add``: ``fused_add_rmsnorm(x, residual, weight, eps)``: ``residual += x``,
      ``x = norm(residual)``, in place (hidden a multiple of 16, at most 8192).

    No weight offset (Gemma's ``1 + w``) in these kernels: such cases are skipped.
``sglang_jit_qk_norm_rope``
    ``sglang.jit_kernel.fused_qknorm_rope.fused_qk_norm_rope(qkv, num_heads_q, num_heads_k,
    num_heads_v, head_dim, eps, q_weight, k_weight, base, is_neox, position_ids, factor,
    low, high, attention_factor, rotary_dim)``: norm + RoPE of Q and K in place on the
    contiguous packed buffer, one launch; bf16 only, head_dim 64/128/256, int32 positions
    (converted once at build time). It computes cos/sin itself from ``base`` (the case's
    ``ROPE_THETA``; ``factor=1``: plain RoPE, no YaRN) with ``__sincosf`` instead of reading
    the case's fp32 cache, so at large positions its angles differ from the reference's;
    the gate decides.
``sgl_kernel``
    the compiled package's FlashInfer-style norm API (the same adapter as FlashInfer's).
``sgl_kernel_qk_norm_rope``
    ``sgl_kernel.fused_qk_norm_rope`` with the same signature as the JIT one.
"""
from __future__ import annotations

import inspect

import torch

from ..cases import ROPE_THETA
from .base import Impl, dist_version, import_module, version_file
from .flashinfer import FlashInferLike

__all__ = ["SGLangJit", "SGLangQkNormRope", "sgl_kernel_norm", "SGLANG_KERNEL_DISTS"]

SGLANG_KERNEL_DISTS = ("sglang-kernel", "sgl-kernel")  # renamed at 0.4; import name sgl_kernel
QKNORM_HEAD_DIMS = (64, 128, 256, 512, 1024)
ROPE_HEAD_DIMS = (64, 128, 256)


def _takes(fn, name: str) -> bool:
    """Whether ``fn`` accepts a keyword ``name`` (True when its signature cannot be read)."""
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in ps or any(p.kind is p.VAR_KEYWORD for p in ps.values())


def sglang_version() -> str:
    """SGLang's version: package metadata, or the ``sglang/VERSION`` file of a bundle that
    carries only the JIT kernels (``shared/device/stage_peers.sh``)."""
    return dist_version("sglang") or version_file("sglang")


def rmsnorm_width_ok(d: int) -> bool:
    """The widths SGLang's JIT ``rmsnorm`` accepts (its ``_is_supported_rmsnorm_hidden_size``)."""
    return d in (64, 128, 256) or (256 < d <= 8192 and d % 256 == 0) or (8192 <= d <= 16384 and d % 512 == 0)


def fused_add_width_ok(d: int) -> bool:
    """The widths SGLang's JIT ``fused_add_rmsnorm`` accepts."""
    return 0 < d <= 8192 and d % 16 == 0


class SGLangJit(Impl):
    """SGLang's JIT norm kernels; see the module docstring for the calls."""

    name = "sglang_jit"
    library = "SGLang JIT kernels"
    module = "sglang.jit_kernel.norm"
    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add")
    not_ops = {"rope": "norm only (sglang_jit_qk_norm_rope is its fused op): no RoPE"}

    def __init__(self):
        self._mod = None

    def version(self):
        return sglang_version()

    def available(self):
        self._mod, why = import_module(self.module)
        return (self._mod is not None), why

    def check(self, case):
        if case.weight_offset:
            return False, "no weight_offset (Gemma's 1 + w) in SGLang's JIT norm kernels"
        m = self._mod
        if case.op == "qk" and case.head_dim not in QKNORM_HEAD_DIMS:
            return False, f"head_dim {case.head_dim}: fused_inplace_qknorm takes {', '.join(map(str, QKNORM_HEAD_DIMS))}"
        if case.op == "qk_full" and not hasattr(m, "fused_inplace_qknorm_across_heads"):
            return False, "this SGLang has no fused_inplace_qknorm_across_heads"
        if case.op == "rms2d":
            ok = getattr(m, "_is_supported_rmsnorm_hidden_size", rmsnorm_width_ok)(case.hidden)
            if not ok:
                return False, f"hidden {case.hidden}: not a width SGLang's JIT rmsnorm takes"
        if case.op == "add":
            ok = getattr(m, "is_supported_jit_fused_add_rmsnorm_hidden_size", fused_add_width_ok)(case.hidden)
            if not ok:
                return False, f"hidden {case.hidden}: not a width SGLang's JIT fused_add_rmsnorm takes"
        return True, ""

    def notes(self, case):
        v = f"sglang {self.version() or '?'} jit_kernel"
        if case.op == "qk":
            return f"{v}; fused_inplace_qknorm: Q and K in one launch, in place on the strided [T,H,D] views"
        if case.op == "qk_full":
            return f"{v}; fused_inplace_qknorm_across_heads: Q and K in one launch, in place on the strided slices"
        if case.op == "rms2d":
            return f"{v}; rmsnorm, out= preallocated output"
        return f"{v}; fused_add_rmsnorm, in place"

    def build(self, case, inp):
        m, eps = self._mod, case.eps
        if case.op == "qk":
            f, q, k, qw, kw = m.fused_inplace_qknorm, inp.q, inp.k, inp.qw, inp.kw
            extra = {"head_dim": case.head_dim} if _takes(f, "head_dim") else {}  # older SGLang: no head_dim
            outs = (q, k)

            def call():
                f(q, k, qw, kw, eps, **extra)
                return outs
        elif case.op == "qk_full":
            f, q, k, qw, kw = m.fused_inplace_qknorm_across_heads, inp.q, inp.k, inp.qw, inp.kw
            outs = (q, k)

            def call():
                f(q, k, qw, kw, eps)
                return outs
        elif case.op == "rms2d":
            f, x, w, out = m.rmsnorm, inp.x, inp.w, inp.out
            outs = (out,)

            def call():
                f(x, w, out=out, eps=eps)
                return outs
        else:
            f, x, r, w = m.fused_add_rmsnorm, inp.x, inp.residual, inp.w
            outs = (x, r)

            def call():
                f(x, r, w, eps)
                return outs
        return call


class SGLangQkNormRope(Impl):
    """SGLang's fused QK-norm + RoPE (``fused_qk_norm_rope``), from the JIT kernels
    (``jit=True``) or the compiled ``sgl_kernel`` package; see the module docstring."""

    needs_cuda = True
    ops = ("rope",)
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add"), "rope cases only (norm + RoPE)")

    def __init__(self, jit: bool = True):
        self.jit = jit
        if jit:
            self.name, self.module, self.library = ("sglang_jit_qk_norm_rope", "sglang.jit_kernel.fused_qknorm_rope",
                                                    "SGLang JIT kernels")
        else:
            self.name, self.module, self.library = "sgl_kernel_qk_norm_rope", "sgl_kernel", "sgl_kernel"
            self.dists = SGLANG_KERNEL_DISTS
        self._fn = None

    def version(self):
        return sglang_version() if self.jit else dist_version(*self.dists)

    def available(self):
        m, why = import_module(self.module)
        if m is None:
            return False, why
        self._fn = getattr(m, "fused_qk_norm_rope", None)
        if self._fn is None:
            return False, f"this {self.module} has no fused_qk_norm_rope"
        return True, ""

    def check(self, case):
        if case.weight_offset:
            return False, "no weight_offset (Gemma's 1 + w would need a pre-added weight)"
        if case.dtype != torch.bfloat16:
            return False, "bf16 only"
        if case.head_dim not in ROPE_HEAD_DIMS:
            return False, f"head_dim {case.head_dim}: the kernel takes {', '.join(map(str, ROPE_HEAD_DIMS))}"
        per_lane = case.head_dim // 32
        if case.rotary_dim % per_lane:
            return False, f"rotary_dim {case.rotary_dim} not a multiple of head_dim/32 = {per_lane}"
        half = case.rotary_dim // per_lane // 2
        if case.is_neox and (half < 1 or half & (half - 1)):
            return False, f"rotary_dim {case.rotary_dim}: NeoX needs a power-of-two number of half rotary lanes"
        return True, ""

    def notes(self, case):
        src = f"sglang {self.version() or '?'} jit_kernel" if self.jit else f"sgl_kernel {self.version() or '?'}"
        return (f"{src}; fused_qk_norm_rope: one launch, in place on the contiguous packed QKV buffer; cos/sin "
                f"computed in-kernel from base={ROPE_THETA:g} (__sincosf), not read from the cache; int32 positions")

    def build(self, case, inp):
        f, qkv = self._fn, inp.qkv
        if not qkv.is_contiguous():
            raise ValueError("fused_qk_norm_rope needs the contiguous packed QKV buffer")
        pos = inp.positions.to(torch.int32).contiguous()  # set-up: outside the timed call
        kw = dict(num_heads_q=case.hq, num_heads_k=case.hkv, num_heads_v=case.hkv, head_dim=case.head_dim,
                  eps=case.eps, q_weight=inp.qw, k_weight=inp.kw, base=float(ROPE_THETA), is_neox=case.is_neox,
                  position_ids=pos, factor=1.0, low=1.0, high=32.0, attention_factor=1.0,
                  rotary_dim=case.rotary_dim)
        outs = (inp.q, inp.k)

        def call():
            f(qkv, **kw)
            return outs
        return call


def sgl_kernel_norm() -> FlashInferLike:
    """SGLang's compiled package through the FlashInfer-style norm API (row ``sgl_kernel``,
    unchanged from earlier runs)."""
    return FlashInferLike("sgl_kernel", "sgl_kernel", dists=SGLANG_KERNEL_DISTS, library="sgl_kernel")
