"""Implementations compared by the benchmark: one module per library over the adapter in
:mod:`.base`.

=================  ==========================================================================
module             rows (``impl`` names, stable across versions)
=================  ==========================================================================
:mod:`.qknorm`     ``qknorm`` (the dispatcher's pick), ``qknorm[<config>]`` (forced variants)
:mod:`.pytorch`    ``torch``, ``torch.compile``, ``torch_rms_norm``, ``torch_copy2d``,
                   ``contiguous_copy`` (copy), ``torch_flat2d`` (trap), ``torch_norm+rope``
:mod:`.flashinfer` ``flashinfer`` (CuTe DSL path), ``flashinfer_cuda``, ``flashinfer_copy2d``,
                   ``qknorm_qk+flashinfer_rope``, ``flashinfer_rms+rope``,
                   ``flashinfer_rms+torch_quant``
:mod:`.quack`      ``quack``, ``quack_flat``
:mod:`.liger`      ``liger``
:mod:`.vllm`       ``vllm``, ``vllm_fused_qk_norm_rope``
:mod:`.sglang`     ``sglang_jit``, ``sglang_jit_qk_norm_rope``, ``sgl_kernel``,
                   ``sgl_kernel_qk_norm_rope``, ``sglang_jit_rms+quant``,
                   ``sglang_jit_rms+torch_quant``
=================  ==========================================================================

Attention prologue (``prologue``, ``qknorm.qk_norm_rope_cache``): ``qknorm``, ``torch_norm+rope+cache``,
``torch.compile`` (of that composition), ``qknorm_rope+torch_cache``, ``qknorm_rope+flashinfer_append``,
``flashinfer_rms+rope+append``, ``sglang_jit_qk_norm_rope+torch_cache``,
``vllm_fused_qk_norm_rope+reshape_and_cache_flash``, all family ``peer`` but ``qknorm``.

Quantised kinds (``rmsq_*``/``addq_*``): ``qknorm``, ``torch``, ``torch.compile``, FlashInfer's
fused static quant norms (``flashinfer``, ``flashinfer_cuda``), vLLM's fused quant norms
(``vllm``) and the compositions of a peer norm with a quantisation (``flashinfer_rms+torch_quant``,
``sglang_jit_rms+quant``, ``sglang_jit_rms+torch_quant``), all family ``peer``.

Families: ``qknorm``, ``qknorm-variant``, ``peer`` (the best of them is what qknorm is
compared with; for ``rope`` the compositions of a norm and a RoPE pass, and the fused
ops), ``copy`` (the ``.contiguous()`` copy alone: not a norm, not checked) and ``trap``
(flattening heads into hidden: a different function, shown failing the gate). Like with
like: per-head norm against per-head norm, Q and K both normalised by every
implementation (in one launch or Q then K), in place where the implementation can be.
"""
from __future__ import annotations

import fnmatch

from .base import Fn, Impl, dist_version, import_module, module_flag, no_rope, version_file
from .flashinfer import (FlashInferCopy2D, FlashInferLike, FlashInferRmsRope, FlashInferRmsRopeAppend,
                         FlashInferRmsTorchQuant, QknormQkFlashInferRope, QknormRopeFlashInferAppend)
from .liger import Liger
from .pytorch import (ContiguousCopy, FlattenedTrap, TorchCompile, TorchCopy2D, TorchEager, TorchFRmsNorm,
                      TorchPrologue, TorchRope, rms_norm_path, torch_cache_write, torch_norm, torch_norm_quant,
                      torch_prologue, torch_quant, torch_rope)
from .qknorm import Qknorm, QknormRopeTorchCache, qknorm_pick, qknorm_ranked, qknorm_variants
from .quack import Quack
from .sglang import SGLangJit, SGLangQkNormRope, SGLangQkNormRopeTorchCache, SGLangRmsQuant, sgl_kernel_norm
from .vllm import VLLM, VLLMFusedQkNormRope, VLLMFusedQkNormRopeCache

__all__ = ["Fn", "Impl", "Qknorm", "TorchEager", "TorchCompile", "TorchFRmsNorm", "TorchCopy2D", "ContiguousCopy",
           "FlattenedTrap", "TorchRope", "FlashInferLike", "FlashInferCopy2D", "QknormQkFlashInferRope",
           "FlashInferRmsRope", "FlashInferRmsTorchQuant", "Quack", "Liger", "VLLM", "VLLMFusedQkNormRope",
           "SGLangJit", "SGLangQkNormRope", "SGLangRmsQuant", "static_impls", "qknorm_variants", "qknorm_pick",
           "qknorm_ranked", "matches", "peer_status", "rms_norm_path", "torch_norm", "torch_norm_quant", "torch_quant",
           "torch_rope", "dist_version", "import_module", "module_flag", "no_rope", "version_file", "TorchPrologue",
           "QknormRopeTorchCache", "FlashInferRmsRopeAppend", "QknormRopeFlashInferAppend",
           "SGLangQkNormRopeTorchCache", "VLLMFusedQkNormRopeCache", "torch_cache_write", "torch_prologue"]


def static_impls() -> list[Impl]:
    """Every implementation other than the qknorm variants, in report order."""
    return [
        Qknorm(),
        TorchEager(),
        TorchCompile(),
        TorchFRmsNorm(),
        TorchCopy2D(),
        ContiguousCopy(),
        FlattenedTrap(),
        FlashInferLike("flashinfer", "flashinfer.norm", dists=("flashinfer-python",), quant=True),
        FlashInferLike("flashinfer_cuda", "flashinfer.norm", cuda_path=True, dists=("flashinfer-python",), quant=True),
        FlashInferCopy2D(),
        Quack(per_head=True),
        Quack(per_head=False),
        Liger(),
        VLLM(),
        sgl_kernel_norm(),
        SGLangJit(),
        TorchRope(),
        QknormQkFlashInferRope(),
        FlashInferRmsRope(),
        VLLMFusedQkNormRope(),
        SGLangQkNormRope(jit=True),
        SGLangQkNormRope(jit=False),
        FlashInferRmsTorchQuant(),
        SGLangRmsQuant(quant="sglang"),
        SGLangRmsQuant(quant="torch"),
        TorchPrologue(),
        QknormRopeTorchCache(),
        QknormRopeFlashInferAppend(),
        FlashInferRmsRopeAppend(),
        SGLangQkNormRopeTorchCache(),
        VLLMFusedQkNormRopeCache(),
    ]


def peer_status(impls: list[Impl] | None = None) -> dict[str, str]:
    """``{library: version, or why it is not there}`` over the adapters, without importing
    anything (a cheap look for the run's metadata; whether a library actually loads is the
    per-row ``skipped`` reason)."""
    out: dict[str, str] = {}
    for impl in impls if impls is not None else static_impls():
        lib = impl.library or impl.name
        if lib in out and not out[lib].startswith("not installed"):
            continue
        ok, why = impl.installed()
        if not ok:
            out[lib] = why
            continue
        try:
            v = impl.version()
        except Exception as e:  # noqa: BLE001 - a version look-up must not end the run
            v = f"? ({type(e).__name__})"
        out[lib] = v or "installed (version unknown)"
    return out


def matches(name: str, patterns) -> bool:
    """Whether ``name`` is selected by ``patterns`` (shell globs; ``[`` and ``]`` are
    literal, so ``qknorm[*]`` means every qknorm variant). No patterns: everything."""
    if not patterns:
        return True
    return any(p == name or fnmatch.fnmatchcase(name, _literal_brackets(p)) for p in patterns)


def _literal_brackets(pattern: str) -> str:
    return "".join({"[": "[[]", "]": "[]]"}.get(c, c) for c in pattern)
