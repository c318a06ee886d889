"""The adapter every implementation in the benchmark is written against.

An adapter says which library it is and which version is installed (or why it cannot
load), which op kinds it implements (and, for the others, why not), and builds for a
:class:`~qknorm.bench.cases.Case` and its inputs a zero-argument callable that performs the
case's function on those very tensors and returns the outputs in the case's order
(``qk``/``qk_full``/``rope`` -> (q, k); ``rms2d`` -> (y,); ``add`` -> (x, residual);
``rmsq_*`` -> (codes, scales); ``addq_*`` -> (codes, scales, residual), the scales being the
given scale tensor for the static kinds).

All host-side set-up (weight copies, module look-ups, dtype conversions of positions)
happens in ``build``, outside the timed region. Where an implementation needs a copy to
accept a strided input, the copy is inside the callable (so it is timed) and ``notes``
say so. ``ran`` names what actually ran where a library picks among several
implementations at run time (PyTorch's ``F.rms_norm``, FlashInfer's CuTe/CUDA paths).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from typing import Callable

from ..cases import OPS, Case, Inputs

Fn = Callable[[], tuple]


class Impl:
    """Base adapter.

    ``name``: the row's ``impl`` (stable: old CSVs stay comparable). ``library``: the
    library's display name. ``dists``: distribution names to read the version from (the
    first installed one wins); ``module``: the import that must succeed. ``family``:
    ``qknorm`` / ``qknorm-variant`` / ``peer`` / ``copy`` / ``trap`` (only ``peer`` rows
    compete for "best peer"). ``needs_cuda``: skipped with that reason on a CPU run.
    ``ops``: the op kinds implemented; ``not_ops``: for the other kinds, why not (a norm
    without a quantised form says so by default). ``norm_rounded``: the implementation rounds
    the normalised values (or the residual sum) to the activation dtype before quantising
    (compositions through a bf16 norm output, vLLM's kernels): the quantised gate widens its
    tie window by that rounding (``check.quant_window``)."""

    name = "?"
    library = ""
    dists: tuple[str, ...] = ()
    module = ""
    family = "peer"
    needs_cuda = False
    ops: tuple[str, ...] = OPS
    not_ops: dict[str, str] = {}
    norm_rounded = False

    # ------------------------------------------------------------------ identity

    def available(self) -> tuple[bool, str]:
        """Whether the library loads here; (False, reason) if not. May import it."""
        if not self.module:
            return True, ""
        m, why = import_module(self.module)
        return (m is not None), why

    def load(self):
        """``self.module``, imported on the first call that succeeds; None if it does not
        load, with the reason in ``self._why``."""
        if getattr(self, "_mod", None) is None:
            self._mod, self._why = import_module(self.module)
        return self._mod

    def version(self) -> str:
        """The installed version, from package metadata or the module; "" if unknown."""
        return dist_version(*self.dists)

    def installed(self) -> tuple[bool, str]:
        """Cheap check (no import): whether the module can be found; (False, reason) if not."""
        if not self.module:
            return True, ""
        top = self.module.split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        return (True, "") if found else (False, f"not installed (no module {top!r})")

    # ------------------------------------------------------------------ cases

    def supports(self, case: Case) -> tuple[bool, str]:
        """(True, "") if this adapter runs ``case``; else (False, why not)."""
        if case.op not in self.ops:
            default = (f"no FP8/INT8 output: {self.name} is a norm without the quantised form" if case.is_quant
                       else f"{case.op} cases: not implemented by {self.name}")
            return False, self.not_ops.get(case.op, default)
        return self.check(case)

    def check(self, case: Case) -> tuple[bool, str]:
        """Per-case rules beyond the op kind (dtype, widths, weight offset)."""
        return True, ""

    def notes(self, case: Case) -> str:
        return ""

    def ran(self, case: Case) -> str:
        """What actually ran for ``case`` (after ``build``); "" where there is one path."""
        return ""

    def build(self, case: Case, inp: Inputs) -> Fn:
        raise NotImplementedError

    def scope(self):
        """Context entered around this implementation's check and timing."""
        return contextlib.nullcontext()


def import_module(name: str):
    """Import ``name``; returns (module, "") or (None, reason)."""
    try:
        return importlib.import_module(name), ""
    except Exception as e:  # ImportError, or a peer failing inside its own import
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"import {name} failed: {type(e).__name__}: {first}"


def dist_version(*dists: str, module: str = "") -> str:
    """Version of the first installed distribution in ``dists``; else ``module.__version__``
    if that module is already imported or importable; else ""."""
    from importlib.metadata import PackageNotFoundError, version
    for d in dists:
        try:
            return version(d)
        except (PackageNotFoundError, ValueError):
            continue
    if module:
        m, _ = import_module(module)
        v = getattr(m, "__version__", "") if m is not None else ""
        return str(v) if v else ""
    return ""


def version_file(package: str, filename: str = "VERSION") -> str:
    """Contents of ``filename`` inside ``package``'s folder, found without importing it
    (bundles installed without metadata carry their version that way)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return ""
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = os.path.join(loc, filename)
        if os.path.isfile(p):
            with open(p) as f:
                return f.read().strip()
    return ""


def no_rope(case: Case, what: str = "norm only") -> tuple[bool, str]:
    """``supports()`` answer of a norm-only implementation for ``case``: rope cases are
    not its function (the compositions pair a norm with a RoPE pass)."""
    if case.op == "rope":
        return False, f"{what}: no RoPE"
    return True, ""


@contextlib.contextmanager
def module_flag(mod, attr: str, value):
    """Set ``mod.attr = value`` for the duration of the block."""
    prev = getattr(mod, attr)
    setattr(mod, attr, value)
    try:
        yield
    finally:
        setattr(mod, attr, prev)

