"""Triton kernels (no torch glue). One file per kernel family; shared pieces in ``rows.py``."""
from . import _interp_compat

_interp_compat.apply()

from .fused_add import fused_add_rms_norm_kernel, fused_add_rms_norm_out_kernel
from .qk_norm import qk_rms_norm_kernel, qk_rms_norm_tokens_kernel
from .rms_norm import rms_norm_kernel

__all__ = ["rms_norm_kernel", "qk_rms_norm_kernel", "qk_rms_norm_tokens_kernel", "fused_add_rms_norm_kernel",
           "fused_add_rms_norm_out_kernel"]
