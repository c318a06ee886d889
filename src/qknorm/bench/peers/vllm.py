"""vLLM: its custom norm ops (``vllm``, the quantised kinds included), its fused QK-norm
+ RoPE op (``vllm_fused_qk_norm_rope``) and, for the attention prologue, that op followed by its
cache write (``vllm_fused_qk_norm_rope+reshape_and_cache_flash``).

The fused quant norms (schemas in vllm-project/vllm ``csrc/torch_bindings.cpp``, kernels in
``csrc/layernorm_quant_kernels.cu`` and ``csrc/quantization/fused_kernels/``), called as
``torch.ops._C.<op>`` with preallocated outputs:

- ``rms_norm_static_fp8_quant(Tensor! result, Tensor input, Tensor weight, Tensor scale, float
  epsilon)`` and ``fused_add_rms_norm_static_fp8_quant(Tensor! result, Tensor input, Tensor!
  residual, Tensor weight, Tensor scale, float epsilon)``: static fp8 (multiplies by ``1 /
  scale``);
- ``rms_norm_dynamic_per_token_quant(Tensor! result, Tensor input, Tensor weight, Tensor!
  scale, float epsilon, Tensor? scale_ub, Tensor!? residual)``: per token, scales ``[T, 1]``,
  fp8 or int8;
- ``rms_norm_per_block_quant(Tensor! result, Tensor input, Tensor weight, Tensor! scale, float
  epsilon, Tensor? scale_ub, Tensor!? residual, int group_size, bool is_scale_transposed)``:
  per group (64 or 128), row-major or transposed (column-major) scales; builds whose schema has a
  trailing ``bool scale_ue8m0`` (vllm-xpu-kernels' has) also run ``group_ue8m0``, others skip it.

Their kernels round ``x * rstd`` and its product with the weight to the activation dtype before
quantising (``static_cast<scalar_t>(x * rms) * weight``), and the static fused one also the
residual sum it normalises: ``norm_rounded``.
"""
from __future__ import annotations

import torch

from ..cases import QUANT_OPS
from .base import Impl, import_module

VLLM_QUANT_OPS = {"static": ("rms_norm_static_fp8_quant", "fused_add_rms_norm_static_fp8_quant"),
                  "token": ("rms_norm_dynamic_per_token_quant", "rms_norm_dynamic_per_token_quant"),
                  "group": ("rms_norm_per_block_quant", "rms_norm_per_block_quant"),
                  "group_ue8m0": ("rms_norm_per_block_quant", "rms_norm_per_block_quant")}


def _c_op(name: str):
    """``torch.ops._C.<name>`` (registered by importing vllm._custom_ops), or None."""
    try:
        return getattr(torch.ops._C, name)
    except (AttributeError, RuntimeError):
        return None


def _takes_arg(op, arg: str) -> bool:
    """Whether a custom op's schema has an argument ``arg``."""
    try:
        return any(a.name == arg for a in op.default._schema.arguments)
    except (AttributeError, RuntimeError):
        return False


class VLLM(Impl):
    """vLLM's custom ops: ``rms_norm(out, input, weight, epsilon)`` and
    ``fused_add_rms_norm(input, residual, weight, epsilon)`` (in place); for the quantised kinds
    its fused quant norms (see the module docstring)."""

    name = "vllm"
    library = "vLLM"
    dists = ("vllm",)
    module = "vllm._custom_ops"
    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add") + QUANT_OPS
    not_ops = {"rope": "vllm rms_norm only (vllm_fused_qk_norm_rope is its fused op): no RoPE"}
    norm_rounded = True  # quantised kinds: see the module docstring (no effect on the others)

    def __init__(self):
        self._ops = None

    def available(self):
        self._ops, why = import_module(self.module)
        return (self._ops is not None), why

    def check(self, case):
        if case.weight_offset:
            return False, "no weight_offset"
        if not case.is_quant:
            return True, ""
        name = VLLM_QUANT_OPS[case.quant_mode][case.has_residual]
        op = _c_op(name)
        if op is None:
            return False, f"this vLLM has no torch.ops._C.{name}"
        if case.quant_mode == "static" and case.out_dtype != torch.float8_e4m3fn:
            return False, f"{name}: fp8 e4m3 output only"
        if case.out_dtype == torch.float8_e5m2:
            return False, f"{name}: fp8 e4m3 or int8 output only"
        if case.quant_mode.startswith("group") and case.group_size not in (64, 128):
            return False, f"{name}: group_size 64 or 128 only"
        if case.quant_mode == "group_ue8m0" and not _takes_arg(op, "scale_ue8m0"):
            return False, f"this vLLM's {name} has no scale_ue8m0 argument (no UE8M0 scales)"
        return True, ""

    def notes(self, case):
        if case.is_quant:
            name = VLLM_QUANT_OPS[case.quant_mode][case.has_residual]
            return (f"vllm {self.version()}; torch.ops._C.{name}, one launch" +
                    ("; residual in place" if case.has_residual else "") + "; norm rounded to the input dtype first")
        return f"vllm {self.version()}; " + ("Q then K, in place (out=input)" if case.is_qk else "")

    def _quant(self, case, inp):
        op = _c_op(VLLM_QUANT_OPS[case.quant_mode][case.has_residual])
        x, w, out, eps = inp.x, inp.w, inp.out, case.eps
        r = inp.t.get("residual")
        tail = (r,) if r is not None else ()
        if case.quant_mode == "static":
            scale = inp.scale
            if r is not None:
                def call():
                    op(out, x, r, w, scale, eps)
                    return out, scale, r
            else:
                def call():
                    op(out, x, w, scale, eps)
                    return out, scale
            return call
        scales = inp.scales
        if case.quant_mode == "token":
            def call():
                op(out, x, w, scales, eps, None, r)
                return (out, scales) + tail
            return call
        args = (case.group_size, case.column_major_scales) + ((True,) if case.scale_ue8m0 else ())

        def call():
            op(out, x, w, scales, eps, None, r, *args)
            return (out, scales) + tail
        return call

    def build(self, case, inp):
        ops, eps = self._ops, case.eps
        if case.is_quant:
            return self._quant(case, inp)
        if case.is_qk:
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            outs = (q, k)

            def call():
                ops.rms_norm(q, q, qw, eps)
                ops.rms_norm(k, k, kw, eps)
                return outs
        elif case.op == "rms2d":
            x, w, out = inp.x, inp.w, inp.out
            outs = (out,)

            def call():
                ops.rms_norm(out, x, w, eps)
                return outs
        else:
            x, r, w = inp.x, inp.residual, inp.w
            outs = (x, r)

            def call():
                ops.fused_add_rms_norm(x, r, w, eps)
                return outs
        return call


class VLLMFusedQkNormRope(Impl):
    """vLLM's fused op ``torch.ops._C.fused_qk_norm_rope(qkv, num_heads_q, num_heads_k,
    num_heads_v, head_dim, eps, q_weight, k_weight, cos_sin_cache, is_neox, position_ids)``
    (through ``vllm._custom_ops.fused_qk_norm_rope`` when that wrapper exists): in place on a
    contiguous 2D packed QKV buffer; fp16/bf16 activations with weights of the same dtype,
    int64 positions, head_dim 64/128/256; ``rotary_dim`` is the cache width (partial rotary
    needs a recent vLLM; an older one fails the gate or raises, and the row says so)."""

    name = "vllm_fused_qk_norm_rope"
    library = "vLLM"
    dists = ("vllm",)
    module = "vllm._custom_ops"
    needs_cuda = True
    ops = ("rope",)
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add"), "rope cases only (norm + RoPE)")

    def __init__(self):
        self._fn = None

    def available(self):
        ops, why = import_module(self.module)
        if ops is None:
            return False, why
        fn = getattr(ops, "fused_qk_norm_rope", None)
        if fn is None:
            c = getattr(torch.ops, "_C", None)
            try:
                fn = getattr(c, "fused_qk_norm_rope") if c is not None else None
            except (AttributeError, RuntimeError):
                fn = None
        if fn is None:
            return False, "this vLLM has no fused_qk_norm_rope op"
        self._fn = fn
        return True, ""

    def check(self, case):
        if case.weight_offset:
            return False, "no weight_offset (Gemma's 1 + w would need a pre-added weight)"
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "fp16/bf16 only"
        if case.head_dim not in (64, 128, 256):
            return False, f"head_dim {case.head_dim}: vLLM's kernel takes 64, 128, 256"
        return True, ""

    def notes(self, case):
        return f"vllm {self.version()}; one launch, in place on the contiguous packed QKV buffer"

    def build(self, case, inp):
        f, qkv = self._fn, inp.qkv
        assert qkv.is_contiguous() and inp.positions.dtype == torch.int64
        args = (qkv, case.hq, case.hkv, case.hkv, case.head_dim, case.eps, inp.qw, inp.kw, inp.cos_sin_cache,
                case.is_neox, inp.positions)
        outs = (inp.q, inp.k)

        def call():
            f(*args)
            return outs
        return call


class VLLMFusedQkNormRopeCache(VLLMFusedQkNormRope):
    """Prologue: vLLM's ``fused_qk_norm_rope`` (in place on the packed buffer), then
    ``torch.ops._C_cache_ops.reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping,
    kv_cache_dtype, k_scale, v_scale)`` as vLLM's attention backends call it (vllm-project/vllm
    ``vllm/_custom_ops.py`` and the v1 FlashAttention/FlashInfer backends): key/value ``[T, Hkv, D]``
    (the packed buffer's strided views: it reads the token stride), caches ``[num_blocks, block_size,
    Hkv, D]`` (a flat pool as block_size 1), the full int64 ``slot_mapping`` (it skips negative slots),
    ``kv_cache_dtype`` ``"auto"`` or ``"fp8"`` (e4m3; the cache passed as its uint8 view, as vLLM
    allocates it), fp32 scale tensors (stored = value / scale). No mRoPE in the fused op."""

    name = "vllm_fused_qk_norm_rope+reshape_and_cache_flash"
    ops = ("prologue",)

    def __init__(self):
        super().__init__()
        from ..cases import OPS
        self.not_ops = {op: "prologue cases only (norm + RoPE + KV-cache write)" for op in OPS if op != "prologue"}
        self._cache = None

    def available(self):
        ok, why = super().available()
        if not ok:
            return ok, why
        try:
            self._cache = torch.ops._C_cache_ops.reshape_and_cache_flash
        except (AttributeError, RuntimeError):
            return False, "this vLLM has no torch.ops._C_cache_ops.reshape_and_cache_flash"
        return True, ""

    def check(self, case):
        if case.mrope_section:
            return False, "vLLM's fused_qk_norm_rope has no mRoPE"
        if case.cache_dtype not in (None, torch.float8_e4m3fn):
            return False, "kv_cache_dtype 'fp8' is e4m3 (fp8_e5m2 not wired here)"
        return super().check(case)

    def notes(self, case):
        return (f"vllm {self.version()}; 2 launches: fused_qk_norm_rope in place on the packed buffer, then "
                f"reshape_and_cache_flash ({'fp8' if case.cache_fp8 else 'auto'}, full slot_mapping)")

    def build(self, case, inp):
        rope = super().build(case, inp)
        bs, hkv, d = case.block_size, case.hkv, case.head_dim
        kc, vc = inp.k_cache.view(-1, bs, hkv, d), inp.v_cache.view(-1, bs, hkv, d)
        dev = inp.q.device
        if case.cache_fp8:
            kc, vc, dt, ks, vs = kc.view(torch.uint8), vc.view(torch.uint8), "fp8", inp.k_scale, inp.v_scale
        else:
            dt = "auto"
            ks = vs = torch.ones(1, dtype=torch.float32, device=dev)
        f, k, v, slots = self._cache, inp.k, inp.v, inp.slot_mapping
        outs = (inp.q, inp.k_cache, inp.v_cache)

        def call():
            rope()
            f(k, v, kc, vc, slots, dt, ks, vs)
            return outs
        return call
