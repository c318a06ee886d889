"""Interpreter fixes (``TRITON_INTERPRET=1`` only; compiled GPU kernels are not affected).

1. Triton < 3.7 with NumPy >= 2.3: the interpreter turns a scalar kernel argument used as a Python
   index (the bound of ``range(0, D, BLOCK_D)``) into ``int(a)`` of a one-element 1-D array, which
   NumPy 2.3 rejects ("only 0-dimensional arrays can be converted to Python scalars"). Triton 3.7+
   squeezes the array first; this applies the same fix to older interpreters.
2. fp32 -> bf16 casts (``x.to(tl.bfloat16)``): the interpreter (Triton 3.6 to 3.9 at least) truncates
   the mantissa, and clamps the exponent (no inf), while a GPU rounds to nearest even
   (``cvt.rn.bf16.f32``): a bf16 result of a kernel run on the CPU differed from the GPU's by up to one
   ulp in about half the elements. The cast rounds as the GPU does here (NaN stays NaN, overflow gives
   inf, subnormals kept), so CPU tests see the GPU's bf16 bits.
"""
from __future__ import annotations

import os


def _f32_to_bf16_bits(x, np):
    """Round-to-nearest-even fp32 -> bf16 of a NumPy float32 array, as uint16 bits (quiet NaN for NaN);
    ``np``: the NumPy the interpreter runs on (kernels import triton only)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((b[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r.reshape(np.shape(x))


def apply() -> None:
    """Patch the interpreter (idempotent; no-op when not interpreting)."""
    if os.environ.get("TRITON_INTERPRET", "").lower() not in ("1", "true", "yes", "on", "y"):
        return  # Triton's reading of the variable (backend.INTERPRET_ON; kernels import only triton)
    try:
        from triton.runtime import interpreter as interp
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no interpreter module: nothing to patch
        return
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is not None and not getattr(orig, "_qknorm_patched", False):
        def patched(tensor, scope, *a, **kw):
            r = orig(tensor, scope, *a, **kw)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0])
                           if getattr(self.handle.data, "size", 1) == 1 else int(self.handle.data))
            return r

        patched._qknorm_patched = True
        interp._patch_lang_tensor = patched
    builder = getattr(interp, "InterpreterBuilder", None)
    cast = getattr(builder, "cast_impl", None)
    if cast is not None and not getattr(cast, "_qknorm_patched", False):
        def cast_impl(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                return interp.TensorHandle(_f32_to_bf16_bits(src.data, interp.np), dst_type.scalar)
            return cast(self, src, dst_type)

        cast_impl._qknorm_patched = True
        builder.cast_impl = cast_impl
