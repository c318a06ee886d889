"""The ops' host side: one module per op family over one plan mechanism (``_plan.py``).

Each op module (``rms_norm``, ``fused_add``, ``qk_norm``, ``qk_norm_rope``; the same stems
as ``kernels/``) holds only what differs between ops: ``check_args`` (every rule, once),
``fast`` (the common CUDA call on a cached plan), ``run`` (the general call), the plan
builder and the kernel's per-call argument list, and ``call`` (eager, no compile or
autograd routing: the body of the ``torch.ops.qknorm`` custom ops). ``EXPRESS_*`` are the op codes
of the express call (``native.call``; entries made by ``_express.py``) that the public functions
pass first.

The public functions with their documentation are in ``qknorm.functional``; they route
traced and autograd calls to ``torch_library`` and everything else here. Imports run one
way: ``functional → torch_library → ops → (validate, layout, dispatch, launch) → kernels``.
"""
from . import fused_add, qk_norm, qk_norm_rope, rms_norm
from ._express import (FUSED_ADD as EXPRESS_FUSED_ADD, PROLOGUE as EXPRESS_PROLOGUE, QK as EXPRESS_QK,
                       QK_ROPE as EXPRESS_QK_ROPE, QUANT as EXPRESS_QUANT, RMS_NORM as EXPRESS_RMS_NORM)
from ._plan import PLANS, clear_caches

__all__ = ["rms_norm", "fused_add", "qk_norm", "qk_norm_rope", "PLANS", "clear_caches", "EXPRESS_RMS_NORM",
           "EXPRESS_FUSED_ADD", "EXPRESS_QK", "EXPRESS_QK_ROPE", "EXPRESS_QUANT", "EXPRESS_PROLOGUE"]
