"""vLLM: its custom norm ops (``vllm``) and its fused QK-norm + RoPE op
(``vllm_fused_qk_norm_rope``)."""
from __future__ import annotations

import torch

from .base import Impl, import_module


class VLLM(Impl):
    """vLLM's custom ops: ``rms_norm(out, input, weight, epsilon)`` and
    ``fused_add_rms_norm(input, residual, weight, epsilon)`` (in place)."""

    name = "vllm"
    library = "vLLM"
    dists = ("vllm",)
    module = "vllm._custom_ops"
    needs_cuda = True
    ops = ("qk", "qk_full", "rms2d", "add")
    not_ops = {"rope": "vllm rms_norm only (vllm_fused_qk_norm_rope is its fused op): no RoPE"}

    def __init__(self):
        self._ops = None

    def available(self):
        self._ops, why = import_module(self.module)
        return (self._ops is not None), why

    def check(self, case):
        return (False, "no weight_offset") if case.weight_offset else (True, "")

    def notes(self, case):
        return f"vllm {self.version()}; " + ("Q then K, in place (out=input)" if case.is_qk else "")

    def build(self, case, inp):
        ops, eps = self._ops, case.eps
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
