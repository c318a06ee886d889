"""qknorm: Triton kernels for RMSNorm, fused add + RMSNorm and single-launch per-head QK norm.

Public API::

    qknorm.rms_norm(x, weight=None, eps=1e-6, *, weight_offset=0.0, out=None)
    qknorm.fused_add_rms_norm(x, residual, weight=None, eps=1e-6, *, weight_offset=0.0)
    qknorm.qk_rms_norm(q, k, q_weight, k_weight, eps=1e-6, *, weight_offset=0.0, q_out=None, k_out=None)
    qknorm.rms_norm_quant(x, weight=None, eps=1e-6, *, scale=None, group_size=None, out_dtype=torch.float8_e4m3fn, ...)
    qknorm.fused_add_rms_norm_quant(x, residual, weight=None, eps=1e-6, *, <the same keywords>)
    qknorm.explain(q, k)
"""
from .backend import get_backend, set_backend, use_backend
from .config import KernelConfig
from .explain import explain
from .functional import (fused_add_rms_norm, fused_add_rms_norm_quant, qk_norm_rope_cache, qk_rms_norm,
                         qk_rms_norm_rope, rms_norm, rms_norm_quant)
from . import nn

from ._version import __version__
__all__ = ["rms_norm", "fused_add_rms_norm", "qk_rms_norm", "qk_rms_norm_rope", "rms_norm_quant",
           "fused_add_rms_norm_quant", "qk_norm_rope_cache", "explain", "KernelConfig",
           "get_backend", "set_backend", "use_backend", "__version__"]
