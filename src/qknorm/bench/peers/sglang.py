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
``sglang_jit_rms+quant`` (quantised kinds)
    SGLang's JIT norm (``rmsnorm(x, w, out=n, eps=eps)`` into a preallocated buffer, or
    ``fused_add_rmsnorm(x, residual, w, eps)`` in place: ``x`` becomes the norm), then SGLang's
    JIT quant kernel of the mode, read from sgl-project/sglang's ``python/sglang/jit_kernel``:

    - static: ``per_tensor_quant_fp8.per_tensor_quant_fp8(input, output_q, output_s,
      is_static=True)`` (``output_s`` the given 1-element scale);
    - per token: ``per_token_quant_fp8.per_token_quant_fp8(input, output_q, output_s)``
      (``output_s`` ``[T, 1]`` fp32);
    - per group, row-major: ``per_token_group_quant_8bit.per_token_group_quant_8bit(input=,
      output_q=, output_s=, group_size=, eps=1e-10, fp8_min=-448, fp8_max=448,
      scale_ue8m0=False)`` (fp32 scales ``[T, G]``);
    - ``group_ue8m0``: not run. That kernel's UE8M0 form writes the scales as packed uint8
      exponents, four to an int32 word (``csrc/gemm/per_token_group_quant_8bit.cuh``: DeepGEMM's
      Blackwell layout), not fp32 powers of two: another output format.

    A module missing from this SGLang makes the mode's rows say so. fp8 e4m3 output only here.
``sglang_jit_qk_norm_rope+torch_cache`` (prologue)
    ``fused_qk_norm_rope`` as above, then a PyTorch index write of K and V into the caches.
``sglang_jit_rms+torch_quant`` (quantised kinds)
    The same norm, then the PyTorch quantisation (every mode).

SGLang's fused norm+quant JIT kernels (``fused_add_rmsnorm_per_tensor_quant`` and friends,
imported by its benchmarks) are not run: their definitions could not be read from source here,
so their signatures are not confirmed.
"""
from __future__ import annotations

import inspect

import torch

from ..cases import QUANT_OPS, ROPE_THETA
from .base import Impl, dist_version, import_module, version_file
from .flashinfer import FlashInferLike
from .pytorch import torch_quant

__all__ = ["SGLangJit", "SGLangQkNormRope", "SGLangQkNormRopeTorchCache", "SGLangRmsQuant", "sgl_kernel_norm", "SGLANG_KERNEL_DISTS",
           "SGL_QUANT_KERNELS"]

# mode -> (module, function) of SGLang's JIT quant kernels composed with its norm
SGL_QUANT_KERNELS = {
    "static": ("sglang.jit_kernel.per_tensor_quant_fp8", "per_tensor_quant_fp8"),
    "token": ("sglang.jit_kernel.per_token_quant_fp8", "per_token_quant_fp8"),
    "group": ("sglang.jit_kernel.per_token_group_quant_8bit", "per_token_group_quant_8bit"),
}
SGL_NO_UE8M0 = ("SGLang's per_token_group_quant_8bit writes UE8M0 scales as packed uint8 exponents (four per int32, "
                "DeepGEMM's Blackwell layout), not fp32 powers of two: another output format "
                "(sglang_jit_rms+torch_quant covers this mode)")

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
    not_ops = {"rope": "norm only (sglang_jit_qk_norm_rope is its fused op): no RoPE",
               **dict.fromkeys(QUANT_OPS, "norm only: sglang_jit_rms+quant / sglang_jit_rms+torch_quant are the "
                                          "quantised compositions")}

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


class SGLangQkNormRopeTorchCache(SGLangQkNormRope):
    """Prologue composition (row ``sglang_jit_qk_norm_rope+torch_cache``): SGLang's JIT
    ``fused_qk_norm_rope`` in place on the packed buffer (the call of :class:`SGLangQkNormRope`),
    then the PyTorch cache write (:func:`~qknorm.bench.peers.pytorch.torch_cache_write`) of the real
    tokens' K and V (FP8: quantised in torch ops). No mRoPE in SGLang's kernel."""

    ops = ("prologue",)

    def __init__(self):
        super().__init__(jit=True)
        self.name = "sglang_jit_qk_norm_rope+torch_cache"
        from ..cases import OPS
        self.not_ops = {op: "prologue cases only (norm + RoPE + KV-cache write)" for op in OPS if op != "prologue"}

    def check(self, case):
        if case.mrope_section:
            return False, "SGLang's fused_qk_norm_rope has no mRoPE"
        return super().check(case)

    def notes(self, case):
        return (super().notes(case) + "; then torch index_copy_ of K and V" +
                (" quantised to FP8 in torch ops" if case.cache_fp8 else "") + " at the real tokens' slots")

    def build(self, case, inp):
        from .pytorch import torch_cache_write
        rope = super().build(case, inp)
        n = case.n_kept
        k, v, kc, vc = inp.k[:n], inp.v[:n], inp.k_cache, inp.v_cache
        slots, ks, vs = inp.slot_mapping[:n], inp.k_scale, inp.v_scale
        outs = (inp.q, kc, vc)

        def call():
            rope()
            torch_cache_write(k, v, kc, vc, slots, ks, vs)
            return outs
        return call


class SGLangRmsQuant(Impl):
    """SGLang's JIT norm then a quantisation: SGLang's JIT quant kernel of the mode
    (``quant="sglang"``, row ``sglang_jit_rms+quant``) or the PyTorch one (``quant="torch"``,
    ``sglang_jit_rms+torch_quant``); see the module docstring. The norm passes through the
    activation dtype (``norm_rounded``)."""

    library = "SGLang JIT kernels"
    module = "sglang.jit_kernel.norm"
    needs_cuda = True
    ops = QUANT_OPS
    norm_rounded = True
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add", "rope"),
                            "quantised kinds only (a norm + quantise composition)")

    def __init__(self, quant: str = "sglang"):
        if quant not in ("sglang", "torch"):
            raise ValueError(f"quant must be 'sglang' or 'torch', got {quant!r}")
        self.quant = quant
        self.name = "sglang_jit_rms+quant" if quant == "sglang" else "sglang_jit_rms+torch_quant"
        self._norm = None
        self._q: dict = {}

    def version(self):
        return sglang_version()

    def available(self):
        self._norm, why = import_module(self.module)
        return (self._norm is not None), why

    def _quant_kernel(self, mode: str):
        """``(function, "")`` of SGLang's JIT quant kernel for ``mode``, or ``(None, why)``."""
        if mode not in self._q:
            mod, fn = SGL_QUANT_KERNELS[mode]
            m, why = import_module(mod)
            f = getattr(m, fn, None) if m is not None else None
            why = "" if f is not None else f"this SGLang has no {mod}.{fn}" + (f" ({why})" if why else "")
            self._q[mode] = (f, why)
        return self._q[mode]

    def check(self, case):
        if case.weight_offset:
            return False, "no weight_offset (Gemma's 1 + w) in SGLang's JIT norm kernels"
        m = self._norm
        if case.has_residual:
            ok = getattr(m, "is_supported_jit_fused_add_rmsnorm_hidden_size", fused_add_width_ok)(case.hidden)
            if not ok:
                return False, f"hidden {case.hidden}: not a width SGLang's JIT fused_add_rmsnorm takes"
        elif not getattr(m, "_is_supported_rmsnorm_hidden_size", rmsnorm_width_ok)(case.hidden):
            return False, f"hidden {case.hidden}: not a width SGLang's JIT rmsnorm takes"
        if self.quant == "sglang":
            if case.quant_mode == "group_ue8m0":
                return False, SGL_NO_UE8M0
            if case.out_dtype != torch.float8_e4m3fn:
                return False, "SGLang's JIT quant kernels are wired here for fp8 e4m3 output only"
            f, why = self._quant_kernel(case.quant_mode)
            if f is None:
                return False, why
        return True, ""

    def notes(self, case):
        v = f"sglang {self.version() or '?'} jit_kernel"
        first = "fused_add_rmsnorm in place (x becomes the norm)" if case.has_residual else "rmsnorm out= buffer"
        if self.quant == "torch":
            return f"{v}; {first}, then torch quantise of the {case.dtype} norm (several kernels)"
        mod, fn = SGL_QUANT_KERNELS.get(case.quant_mode, ("", "?"))
        return f"{v}; {first}, then {fn} (2 launches)"

    def build(self, case, inp):
        m, eps, mode = self._norm, case.eps, case.quant_mode
        x, w, out = inp.x, inp.w, inp.out
        scale, scales = inp.t.get("scale"), inp.t.get("scales")
        if case.has_residual:
            add, r = m.fused_add_rmsnorm, inp.residual
            n, tail = x, (r,)

            def norm():
                add(x, r, w, eps)
        else:
            rms, n, tail = m.rmsnorm, torch.empty_like(x), ()

            def norm():
                rms(x, w, out=n, eps=eps)
        if self.quant == "torch":
            args = (mode, case.out_dtype, case.group_size, scale, case.column_major_scales, case.scale_ue8m0)

            def call():
                norm()
                return torch_quant(n, *args) + tail
            return call
        q, _ = self._quant_kernel(mode)
        if mode == "static":
            def call():
                norm()
                q(n, out, scale, is_static=True)
                return (out, scale) + tail
        elif mode == "token":
            def call():
                norm()
                q(n, out, scales)
                return (out, scales) + tail
        else:
            g, qmax = case.group_size, 448.0

            def call():
                norm()
                q(input=n, output_q=out, output_s=scales, group_size=g, eps=1e-10, fp8_min=-qmax, fp8_max=qmax,
                  scale_ue8m0=False)
                return (out, scales) + tail
        return call


def sgl_kernel_norm() -> FlashInferLike:
    """SGLang's compiled package through the FlashInfer-style norm API (row ``sgl_kernel``,
    unchanged from earlier runs)."""
    return FlashInferLike("sgl_kernel", "sgl_kernel", dists=SGLANG_KERNEL_DISTS, library="sgl_kernel")
