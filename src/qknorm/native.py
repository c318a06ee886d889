"""The compiled part of the fast call, one C module (``_native/launchcall.c``): ``describe``, the
metadata and data pointers of a call's tensors in one C call (with a Python twin of the same
contract), the kernel launch from a prepacked record (used by ``launch.py``) and the express call
(:data:`call`, entries made by ``ops/_express.py``).

A fast call's plan key holds every tensor's dtype, device, shape and strides; read from Python
that is ~0.35 µs per tensor (four attribute calls and a negation check), in C through PyTorch's
DLPack C exchange API (``__dlpack_c_exchange_api__``, torch >= 2.10) ~0.1 µs. The C source is
built on first use with the C compiler and Python headers Triton already needs for its own
launchers (``triton.runtime.build.compile_module_from_src``, cached by Triton); where that is
not possible — no compiler, no exchange API, ``QKNORM_NATIVE=0`` — :func:`describe_py` runs
instead and :func:`reason` says why.

``describe(grad, *args)`` returns None when the fast call cannot take the arguments (a non-tensor
other than None, a tensor subclass other than ``nn.Parameter``, a negated view, a tensor
DLPack cannot describe, or with ``grad`` — the caller's ``torch.is_grad_enabled()`` — a tensor
that requires grad: autograd's path), else ``(meta, device, ptr0, ptr1, ...)``: ``meta`` a hashable value
equal for two calls exactly when every argument has the same dtype, device, shape and strides
(None arguments included by position), ``device`` the first tensor's CUDA index (-1 for other
devices), then each argument's ``data_ptr()`` (None for None).
"""
from __future__ import annotations

import os
import threading

import torch

__all__ = ["describe", "describe_py", "load", "load_launcher", "launch_module", "call", "express_off", "reason",
           "set_enabled", "enabled"]

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter


def describe_py(grad, *args):
    """:func:`describe` in Python (the fallback, and the reference its tests compare with)."""
    meta = []
    ptrs = []
    dev = None
    for a in args:
        if a is None:
            meta.append(None)
            ptrs.append(None)
            continue
        if (type(a) is not _Tensor and type(a) is not _Parameter) or a.is_neg() or (grad and a.requires_grad):
            return None
        dv = a.device
        if dv.type not in ("cuda", "cpu"):  # meta, ...: as DLPack (the compiled form) refuses them
            return None
        d = -1 if dv.index is None or dv.type == "cpu" else dv.index
        try:
            meta.append((a.shape, a.stride(), a.dtype, dv))
            p = a.data_ptr()
        except RuntimeError:  # sparse and other layouts without strides or storage
            return None
        if p == 0 and a.numel() > 0:  # no memory (an efficient zero tensor), as the compiled form refuses
            return None
        ptrs.append(p)
        if dev is None:
            dev = d
    return (tuple(meta), -1 if dev is None else dev, *ptrs)


_NATIVE_DIR = os.path.join(os.path.dirname(__file__), "_native")
_lock = threading.Lock()


class _Compiled:
    """One C module of ``_native/``, built and initialised on first use (at most once)."""

    def __init__(self, source: str, name: str, init_args, built: str):
        self.source, self.name, self.init_args, self.built = source, name, init_args, built
        self.module = None
        self.reason = "not loaded yet"
        self.tried = False

    def load(self):
        if not self.tried:
            with _lock:
                if not self.tried:
                    self.module, self.reason = self._build()
                    self.tried = True
        return self.module

    def _build(self):
        if not _env_enabled():
            return None, f"QKNORM_NATIVE={os.environ.get('QKNORM_NATIVE', '').strip()}"
        if not hasattr(_Tensor, "__dlpack_c_exchange_api__"):
            return None, f"torch {torch.__version__} has no DLPack C exchange API (torch >= 2.10)"
        try:
            from triton.runtime.build import compile_module_from_src
        except Exception as e:  # noqa: BLE001 - no triton, or a triton without the helper
            return None, f"cannot import triton.runtime.build.compile_module_from_src ({type(e).__name__}: {e})"
        path = os.path.join(_NATIVE_DIR, self.source)
        try:
            src = source_text(self.source)
            mod = compile_module_from_src(src=src, name=self.name)
            mod.init(*self.init_args())
        except Exception as e:  # noqa: BLE001 - any build or load problem: the Python path runs
            return None, f"{path}: {type(e).__name__}: {str(e).strip()[:300]}"
        return mod, self.built


_native_c = _Compiled("launchcall.c", "qknorm_launchcall",
                      lambda: (_Tensor, _Parameter, torch.int8, torch.uint8, False),
                      "compiled (DLPack C exchange API; cuLaunchKernelEx from prepacked records)")
_off = None  # why describe is switched off (set_enabled(False)), or None


def source_text(name: str) -> str:
    """A C file of ``_native/`` with its local ``#include "x.h"`` lines replaced by the header's text
    (Triton's build cache keys on the source text: a header change must change it too)."""
    with open(os.path.join(_NATIVE_DIR, name)) as f:
        lines = f.read().splitlines(keepends=True)
    out = []
    for line in lines:
        s = line.strip()
        if s.startswith('#include "') and s.endswith('"'):
            out.append(source_text(s[len('#include "'):-1]))
        else:
            out.append(line)
    return "".join(out)


def _env_enabled() -> bool:
    return os.environ.get("QKNORM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def load():
    """The compiled module for ``describe``, built on first use; None (see :func:`reason`) when not
    possible or switched off (:func:`set_enabled`)."""
    return None if _off else _native_c.load()


def load_launcher():
    """The compiled module for launches (``launch_from``, ``pick``, ``param_info``, the express ``call``),
    built on first use; None (see :func:`reason`) where it cannot launch: no CUDA driver, no exchange
    API, no compiler, ``QKNORM_NATIVE=0``."""
    m = _native_c.load()
    return m if m is not None and m.has_driver() else None


def launch_module():
    """The compiled module even without a CUDA driver (tests launch through its ``set_test_launch``),
    or None."""
    return _native_c.load()


def reason(launcher: bool = False) -> str:
    """Why the compiled ``describe`` (or launch) is or is not in use, in words."""
    if not launcher and _off:
        return _off
    if launcher and _native_c.module is not None and not _native_c.module.has_driver():
        return "no CUDA driver (libcuda.so.1)"
    return _native_c.reason


def _no_express(*args):
    return NotImplemented


#: ``call(op, *args)``: an op's whole fast call in C (``_native/launchcall.c``; entries made by
#: ``ops/_express.py``), NotImplemented when it cannot take the call. Until the first entry is made
#: (and with the compiled parts off) this stand-in says NotImplemented at once.
call = _no_express


def express_off() -> None:
    """Put the stand-in back as :data:`call` (every call then takes the Python fast call)."""
    global call
    call = _no_express


def set_enabled(flag: bool) -> None:
    """Use the compiled :func:`describe` (True: built now if it was not) or the Python twin (False).
    Plans cached under one form's keys are not found under the other's (``ops._plan.clear_caches``
    drops them). Off also turns the express call off (:data:`call`)."""
    global describe, call, _off
    with _lock:
        _off = None if flag else "switched off (native.set_enabled(False))"
        if not flag:
            call = _no_express
    m = load()
    describe = m.describe if m is not None else describe_py


def describe(*args):
    """See the module docstring. The first call builds the compiled form and rebinds this name."""
    global describe
    m = load()
    describe = m.describe if m is not None else describe_py
    return describe(*args)


def enabled() -> bool:
    """Whether the compiled form is in use (False before the first fast call)."""
    m = _native_c.module
    return m is not None and describe is m.describe
