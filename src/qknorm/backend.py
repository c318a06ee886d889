"""Which implementation runs a call: the Triton kernels or the PyTorch path.

``QKNORM_BACKEND`` (read once at import) is ``auto`` (default: Triton for CUDA
tensors, PyTorch for CPU tensors), ``triton`` (Triton everywhere; CPU tensors need
``TRITON_INTERPRET=1`` set before triton is imported) or ``torch``.
:func:`use_backend` switches it for a block of code.
"""
from __future__ import annotations

import contextlib
import os

BACKENDS = ("auto", "triton", "torch")


def _from_env() -> str:
    name = os.environ.get("QKNORM_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"QKNORM_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


#: The backend in force (read on every fast call; change it with :func:`set_backend` /
#: :func:`use_backend`).
active = _from_env()


def get_backend() -> str:
    """The backend in force for qknorm's calls.

    Returns
    -------
    str
        ``"auto"`` (Triton kernels for CUDA tensors, the PyTorch path for CPU tensors),
        ``"triton"`` or ``"torch"``: ``QKNORM_BACKEND`` as read at import, or the last
        :func:`set_backend` / the enclosing :func:`use_backend`.
    """
    return active


#: Called with the new name whenever the backend changes (``ops/_express.py`` forgets its entries).
listeners: list = []


def set_backend(name: str) -> None:
    """Set the backend for every later call, process-wide (not per thread).

    Parameters
    ----------
    name : str
        ``"auto"`` (Triton kernels for CUDA tensors, the PyTorch path for CPU and meta
        tensors), ``"triton"`` (the kernels for every tensor except meta ones; CPU tensors
        then need ``TRITON_INTERPRET=1``, else each call raises ``RuntimeError``) or
        ``"torch"`` (the PyTorch path everywhere). Exact, lower-case names (the
        ``QKNORM_BACKEND`` variable is stripped and lower-cased; this argument is not).

    Raises
    ------
    ValueError
        ``name`` is not one of ``"auto"``, ``"triton"``, ``"torch"`` (the backend is left
        unchanged).
    """
    global active
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    active = name
    for fn in listeners:
        fn(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed calls on backend ``name``, then restore the previous one.

    ``with qknorm.use_backend("torch"): ...``. The previous backend is restored on exit,
    also when the block raises. Process-wide, as :func:`set_backend`.

    Parameters
    ----------
    name : str
        ``"auto"``, ``"triton"`` or ``"torch"``, as in :func:`set_backend`.

    Returns
    -------
    contextlib.AbstractContextManager
        Yields None.

    Raises
    ------
    ValueError
        ``name`` is not a backend name (raised on entering the block; the backend is left
        unchanged).
    """
    prev = active
    set_backend(name)
    try:
        yield
    finally:
        set_backend(prev)


#: The values of ``TRITON_INTERPRET`` that turn Triton's interpreter on, as Triton itself reads the variable
#: (``triton.knobs``' boolean: case-insensitive). ``kernels/_interp_compat.py`` holds the same rule (kernels
#: import only triton); ``tests/test_backend.py`` checks both against Triton's own parser.
INTERPRET_ON = ("1", "true", "yes", "on", "y")


def interpreter_on() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET``, read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in INTERPRET_ON


def use_triton(t) -> bool:
    """Whether a call on tensor ``t`` runs the Triton kernels (never for meta tensors: nothing to launch,
    the PyTorch path gives their shapes)."""
    b = active
    if b == "torch" or t.device.type == "meta":
        return False
    if b == "auto":
        return t.is_cuda
    if not t.is_cuda and not interpreter_on():
        raise RuntimeError(
            "QKNORM_BACKEND=triton with CPU tensors needs TRITON_INTERPRET=1 set before "
            "triton is imported (or use QKNORM_BACKEND=torch/auto)")
    return True
