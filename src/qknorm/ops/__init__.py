"""The ops' host side: one module per op family over one plan mechanism (``_plan.py``).

Each op module (``rms_norm``, ``fused_add``, ``qk_norm``, ``qk_norm_rope``; the same stems
as ``kernels/``) holds only what differs between ops: ``check_args`` (every rule, once),
``fast`` (the common CUDA call on a cached plan), ``run`` (the general call), the plan
builder and the kernel's per-call argument list, and ``call`` (eager, no compile or
autograd routing: the body of the ``torch.ops.qknorm`` custom ops).

The public functions with their documentation are in ``qknorm.functional``; they route
traced and autograd calls to ``torch_library`` and everything else here. Imports run one
way: ``functional → torch_library → ops → (validate, layout, dispatch, launch) → kernels``.
"""
from . import fused_add, qk_norm, qk_norm_rope, rms_norm
from ._plan import PLANS, clear_caches

__all__ = ["rms_norm", "fused_add", "qk_norm", "qk_norm_rope", "PLANS", "clear_caches"]
