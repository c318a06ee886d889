"""The compiled parts of the fast call: ``describe``, the metadata and data pointers of a call's
tensors in one C call (``_native/fastcall.c``, with a Python twin of the same contract), and the
kernel launch from a prepacked record (``_native/launchcall.c``, used by ``launch.py``).

A fast call's plan key holds every tensor's dtype, device, shape and strides; read from Python
that is ~0.35 µs per tensor (four attribute calls and a negation check), in C through PyTorch's
DLPack C exchange API (``__dlpack_c_exchange_api__``, torch >= 2.10) ~0.1 µs. The C source is
built on first use with the C compiler and Python headers Triton already needs for its own
launchers (``triton.runtime.build.compile_module_from_src``, cached by Triton); where that is
not possible — no compiler, no exchange API, ``QKNORM_NATIVE=0`` — :func:`describe_py` runs
instead and :data:`REASON` says why.

``describe(*args)`` returns None when the fast call cannot take the arguments (a non-tensor
other than None, a tensor subclass other than ``nn.Parameter``, a negated view, a tensor
DLPack cannot describe), else ``(meta, device, ptr0, ptr1, ...)``: ``meta`` a hashable value
equal for two calls exactly when every argument has the same dtype, device, shape and strides
(None arguments included by position), ``device`` the first tensor's CUDA index (-1 for other
devices), then each argument's ``data_ptr()`` (None for None).
"""
from __future__ import annotations

import os
import threading

import torch

__all__ = ["describe", "describe_py", "load", "load_launcher", "REASON", "LAUNCH_REASON", "set_enabled", "enabled"]

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter


def describe_py(*args):
    """:func:`describe` in Python (the fallback, and the reference its tests compare with)."""
    meta = []
    ptrs = []
    dev = None
    for a in args:
        if a is None:
            meta.append(None)
            ptrs.append(None)
            continue
        if (type(a) is not _Tensor and type(a) is not _Parameter) or a.is_neg():
            return None
        try:
            d = a.get_device()
            meta.append((a.shape, a.stride(), a.dtype, d))
            ptrs.append(a.data_ptr())
        except RuntimeError:  # sparse and other layouts without strides or storage
            return None
        if dev is None:
            dev = d
    return (tuple(meta), -1 if dev is None else dev, *ptrs)


REASON = "not loaded yet"
_module = None
_lock = threading.Lock()
_tried = False


def _env_enabled() -> bool:
    return os.environ.get("QKNORM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def load():
    """The compiled module, building it on first use; None (and :data:`REASON`) when not possible."""
    global _module, REASON, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        _module, REASON = _build()
        _tried = True
    return _module


def _build():
    if not _env_enabled():
        return None, "QKNORM_NATIVE=0"
    if not hasattr(_Tensor, "__dlpack_c_exchange_api__"):
        return None, f"torch {torch.__version__} has no DLPack C exchange API (torch >= 2.10)"
    try:
        from triton.runtime.build import compile_module_from_src
    except Exception as e:  # noqa: BLE001 - no triton, or a triton without the helper
        return None, f"cannot import triton.runtime.build.compile_module_from_src ({type(e).__name__}: {e})"
    path = os.path.join(os.path.dirname(__file__), "_native", "fastcall.c")
    try:
        with open(path) as f:
            src = f.read()
        mod = compile_module_from_src(src=src, name="qknorm_fastcall")
        mod.init(_Tensor, _Parameter, torch.int8, torch.uint8)
    except Exception as e:  # noqa: BLE001 - any build or load problem: the Python twin runs
        return None, f"building {path} failed ({type(e).__name__}: {str(e).strip()[:300]})"
    return mod, "compiled (DLPack C exchange API)"


LAUNCH_REASON = "not loaded yet"
_launch_module = None
_launch_tried = False


def load_launcher():
    """The compiled launch module (``launch``, ``param_info``), built on first use; None (and
    :data:`LAUNCH_REASON`) where it cannot be: no CUDA driver, no exchange API, no compiler,
    ``QKNORM_NATIVE=0``."""
    global _launch_module, LAUNCH_REASON, _launch_tried
    if _launch_tried:
        return _launch_module
    with _lock:
        if not _launch_tried:
            _launch_module, LAUNCH_REASON = _build_launcher()
            _launch_tried = True
    return _launch_module


def _build_launcher():
    if not _env_enabled():
        return None, "QKNORM_NATIVE=0"
    if not hasattr(_Tensor, "__dlpack_c_exchange_api__"):
        return None, f"torch {torch.__version__} has no DLPack C exchange API (torch >= 2.10)"
    try:
        from triton.runtime.build import compile_module_from_src
    except Exception as e:  # noqa: BLE001
        return None, f"cannot import triton.runtime.build.compile_module_from_src ({type(e).__name__}: {e})"
    path = os.path.join(os.path.dirname(__file__), "_native", "launchcall.c")
    try:
        with open(path) as f:
            src = f.read()
        mod = compile_module_from_src(src=src, name="qknorm_launchcall")
        mod.init(_Tensor)
    except Exception as e:  # noqa: BLE001 - any build or load problem: Triton's launcher runs
        return None, f"{path}: {type(e).__name__}: {str(e).strip()[:300]}"
    return mod, "compiled (cuLaunchKernelEx from a prepacked record)"


def set_enabled(flag: bool) -> None:
    """Use the compiled :func:`describe` (True: built now if it was not) or the Python twin (False).
    Plans cached under one form's keys are not found under the other's (``ops._plan.clear_caches``
    drops them)."""
    global describe, _tried, _module, REASON
    if flag:
        _tried = False
        m = load()
        describe = m.describe if m is not None else describe_py
    else:
        with _lock:
            describe = describe_py
            _module, _tried, REASON = None, True, "switched off (native.set_enabled(False))"


def describe(*args):
    """See the module docstring. The first call builds the compiled form and rebinds this name."""
    global describe
    m = load()
    describe = m.describe if m is not None else describe_py
    return describe(*args)


def enabled() -> bool:
    """Whether the compiled form is in use (False before the first fast call)."""
    return _module is not None and describe is _module.describe

