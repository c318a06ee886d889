"""Interpreter fix for Triton < 3.7 with NumPy >= 2.3 (``TRITON_INTERPRET=1`` only).

The Triton 3.6 interpreter turns a scalar kernel argument used as a Python index (the
bound of ``range(0, D, BLOCK_D)``) into ``int(a)`` of a one-element 1-D array, which
NumPy 2.3 rejects ("only 0-dimensional arrays can be converted to Python scalars").
Triton 3.7+ squeezes the array first; this applies the same fix to older interpreters.
Compiled GPU kernels are not affected.
"""
from __future__ import annotations

import os


def apply() -> None:
    """Patch the interpreter's tensor ``__index__`` (idempotent; no-op when not interpreting)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
        return
    try:
        from triton.runtime import interpreter as interp
    except Exception:  # noqa: BLE001 - no interpreter module: nothing to patch
        return
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_qknorm_patched", False):
        return

    def patched(tensor, scope, *a, **kw):
        r = orig(tensor, scope, *a, **kw)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0])
                       if getattr(self.handle.data, "size", 1) == 1 else int(self.handle.data))
        return r

    patched._qknorm_patched = True
    interp._patch_lang_tensor = patched
