"""Low-overhead launches of the norm kernels: a cached raw launcher per specialisation.

``kernel[grid](...)`` re-binds the arguments, re-derives Triton's specialisation key,
hashes it, looks up the compiled kernel, builds launch metadata and calls two launch
hooks on every call: 20-40 µs of host time on the H100 host. A decode step cannot
afford that, so after the first call of a specialisation we call the compiled
kernel's C launcher directly.

How it works, per kernel (:class:`KernelLauncher`) and per specialisation *entry*:

1. First call: the normal ``kernel[grid](...)`` path (compiles). Its return value is
   the ``CompiledKernel``.
2. Second call: the normal path again, with the C ``launch`` function of that kernel's
   launcher temporarily wrapped to record the exact argument tuple Triton passes.
   We pack the same call our way (:func:`_make_go` with a recording ``launch``) and
   compare position by position. Equal: the entry gets a fast ``go`` function.
   Anything else: the entry stays on the plain path for good.
3. Later calls: ``go(grid, stream, args)`` calls the C launcher with the argument
   list in the layout of the installed Triton (:data:`PROTOCOL`). Pointers are
   passed as ints (``data_ptr()``), so the launcher neither calls back into Python
   nor asks the driver about each pointer. If a fast call raises, the entry falls
   back to the plain path for good and the call is redone there.

The caller (``ops``) owns the specialisation key: every int argument's Triton
specialisation (``== 1``, ``% 16 == 0``, i32/i64/u64 range; see :func:`int_spec`),
pointer dtypes, constexprs, ``num_warps``, PDL and device are folded into the
``entries`` list it passes, and the list index is the pointers' 16-byte-alignment bits.

Launch protocols of Triton's CUDA launcher (``CudaLauncher.launch``), found by
reading each release (3.4.0 ... 3.9.0):

``L34`` (3.4)
    ``launch(gx, gy, gz, stream, function, coop, pdl, global_scratch,
    packed_metadata, launch_metadata, enter_hook, exit_hook, *args)``
``L35`` (3.5, 3.6)
    as L34 with ``profile_scratch`` after ``global_scratch``.
``L37`` (3.7, 3.8, 3.9)
    ``launch(gx, gy, gz, stream, function, coop, pdl, packed_metadata,
    launch_metadata, enter_hook, exit_hook, global_scratch, profile_scratch,
    arg_annotations, kernel_signature, args_tuple)`` (one shared C launcher).

In all of them ``args`` are every kernel parameter in order, constexprs included
(the launcher skips them), and ``coop``/``pdl`` come from the compiled kernel's
metadata. We only take the fast path when the kernel needs no global or profile
scratch and Triton's launch hooks are idle (since 3.5 they are ``HookChain``
objects that Triton calls on every launch even when empty; a profiler such as
proton adds hooks, and then every call takes the plain path so it sees them).
Other versions, other launcher signatures, ``TRITON_INTERPRET=1`` and
``QKNORM_FAST_LAUNCH=0`` use the plain path.
"""
from __future__ import annotations

import inspect
import os
import re
import struct
import threading
import weakref
from typing import NamedTuple

from .backend import interpreter_on

__all__ = ["PROTOCOL", "PROTOCOL_REASON", "KernelLauncher", "int_spec", "run", "run_plan", "launch_plan", "set_enabled",
           "enabled", "clear", "entry_states", "init"]

# entry states
NEW, VERIFY, FAST, PLAIN = "new", "verify", "fast", "plain"

_lock = threading.Lock()
_launchers: list["KernelLauncher"] = []


#: Triton's FMA contraction (``enable_fp_fusion``), pinned for every kernel: on, the default of the Triton
#: releases the kernels were written and measured with (3.x up to 3.9), so their results keep their bits when
#: that default changes (Triton 3.10 turns it off by default; ``TRITON_FORCE_DISABLE_FP_FUSION=1`` still wins).
FP_FUSION = True


def _env_enabled() -> bool:
    return os.environ.get("QKNORM_FAST_LAUNCH", "1").strip().lower() not in ("0", "false", "no", "off")


def _version(v: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else None


_CALL_34_36 = ["self", "gridX", "gridY", "gridZ", "stream", "function", "args"]
_CALL_37_39 = ["self", "gridX", "gridY", "gridZ", "stream", "function", "kernel_metadata", "launch_metadata",
               "launch_enter_hook", "launch_exit_hook", "args"]


def detect_protocol(version: str | None = None, launcher_cls=None, base_format: str | None = None):
    """``(protocol, reason)`` for a Triton version and its ``CudaLauncher`` class.

    With no arguments, asks the installed Triton. ``protocol`` is ``"L34"``, ``"L35"``,
    ``"L37"`` or None (plain launches only); ``reason`` says why, in words.
    """
    if version is None:
        if interpreter_on():
            return None, "TRITON_INTERPRET=1: the interpreter runs every launch"
        try:
            import triton
            from triton.backends.nvidia import driver as nv
        except Exception as e:  # noqa: BLE001 - any import problem means: no fast path
            return None, f"cannot import Triton's CUDA driver ({type(e).__name__}: {e})"
        version = triton.__version__
        launcher_cls = getattr(nv, "CudaLauncher", None)
        base_format = getattr(nv, "_BASE_ARGS_FORMAT", None)
    ver = _version(version)
    if launcher_cls is None:
        return None, f"triton {version}: no CudaLauncher class"
    try:
        params = list(inspect.signature(launcher_cls.__call__).parameters)
    except (TypeError, ValueError):
        return None, f"triton {version}: CudaLauncher.__call__ has no readable signature"
    if ver == (3, 4) and params == _CALL_34_36 and base_format == "iiiKKppOOOOO":
        return "L34", f"triton {version}: launch(grid, stream, fn, coop, pdl, global_scratch, meta, hooks, *args)"
    if ver in ((3, 5), (3, 6)) and params == _CALL_34_36 and base_format == "iiiKKppOOOOOO":
        return "L35", (f"triton {version}: launch(grid, stream, fn, coop, pdl, global_scratch, profile_scratch, "
                       "meta, hooks, *args)")
    if ver is not None and (3, 7) <= ver <= (3, 9) and params == _CALL_37_39:
        return "L37", (f"triton {version}: launch(grid, stream, fn, coop, pdl, meta, hooks, global_scratch, "
                       "profile_scratch, arg_annotations, kernel_signature, args)")
    return None, f"triton {version}: launch protocol not known to qknorm (plain kernel[grid] launches)"


# Filled in by init() when the first KernelLauncher is made (so importing qknorm does not
# import Triton; CPU-only callers never need it).
PROTOCOL: str | None = None
PROTOCOL_REASON = "not detected yet (no kernel launched)"
_initialized = False
_enabled = False
_rt = None  # triton.knobs.runtime: launch hooks live there


class _HookChain:  # replaced by triton.knobs.HookChain (3.5+); Triton 3.4 hooks are None or callables
    calls = ()


def _idle(h) -> bool:
    return h is None or (type(h) is _HookChain and not h.calls)


def hooks_idle() -> bool:
    """Whether Triton's launch enter/exit hooks would do nothing (no profiler attached)."""
    rt = _rt
    return rt is None or (_idle(rt.launch_enter_hook) and _idle(rt.launch_exit_hook))


def init() -> None:
    """Detect the protocol, bind Triton's hooks and torch's stream/device getters (once)."""
    global PROTOCOL, PROTOCOL_REASON, _initialized, _enabled, _rt, _HookChain, _has_cuda
    if _initialized:
        return
    PROTOCOL, PROTOCOL_REASON = detect_protocol()
    try:
        from triton import knobs
        _rt = knobs.runtime
    except Exception:  # noqa: BLE001
        _rt = None
    try:
        from triton.knobs import HookChain
        _HookChain = HookChain
    except Exception:  # noqa: BLE001
        pass
    _has_cuda = _init_cuda()
    _enabled = PROTOCOL is not None and _env_enabled() and _has_cuda
    _initialized = True


def _cuda_funcs():
    import torch
    get_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_stream is None:
        get_stream = lambda idx: torch.cuda.current_stream(idx).cuda_stream  # noqa: E731
    get_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device
    return get_stream, get_device


_raw_stream = _current_device = None


def int_spec(v: int) -> int:
    """Triton's specialisation of an int argument as a small code: 1 when ``v == 1`` (a
    constexpr then), else bit 1 for ``v % 16 == 0``, bit 2 for i64, bit 3 for u64."""
    if v == 1:
        return 1
    c = 2 if v % 16 == 0 else 0
    if not -(2**31) <= v <= 2**31 - 1:
        c |= 8 if v >= 2**63 else 4
    return c


def align_bits(*ptrs: int) -> int:
    """Bit i set when pointer i is *not* 16-byte aligned (the list index of an entry)."""
    b = 0
    for i, p in enumerate(ptrs):
        if p & 15:
            b |= 1 << i
    return b


class _Entry:
    __slots__ = ("state", "ck", "go", "why")

    def __init__(self):
        self.state = NEW
        self.ck = None
        self.go = None
        self.why = ""


def _make_go(protocol, launch, function, coop, pdl, meta, ann=None, sig=None):
    """The fast call for one compiled kernel: ``go(grid, stream, args)``."""
    if protocol == "L35":
        def go(grid, stream, args):
            launch(grid[0], grid[1], grid[2], stream, function, coop, pdl, None, None, meta, None, None, None, *args)
    elif protocol == "L34":
        def go(grid, stream, args):
            launch(grid[0], grid[1], grid[2], stream, function, coop, pdl, None, meta, None, None, None, *args)
    elif protocol == "L37":
        def go(grid, stream, args):
            launch(grid[0], grid[1], grid[2], stream, function, coop, pdl, meta, None, None, None, None, None,
                   ann, sig, args)
    else:
        raise ValueError(f"unknown launch protocol {protocol!r}")
    return go


# Roles of the leading positions of launch(...) per protocol; "args" = the rest (L34/L35)
# or a trailing tuple (L37).
_ROLES = {
    "L34": ("g", "g", "g", "eq", "eq", "eq", "eq", "none", "eq", "lmeta", "hook", "hook"),
    "L35": ("g", "g", "g", "eq", "eq", "eq", "eq", "none", "none", "eq", "lmeta", "hook", "hook"),
    "L37": ("g", "g", "g", "eq", "eq", "eq", "eq", "eq", "lmeta", "hook", "hook", "none", "none", "eq", "eq"),
}


def _same_arg(ours, theirs) -> bool:
    if hasattr(theirs, "data_ptr") and not isinstance(theirs, (int, float)):
        return type(ours) is int and ours == theirs.data_ptr()
    return type(ours) is type(theirs) and ours == theirs


def compare_calls(protocol: str, ours: tuple, theirs: tuple) -> str:
    """'' when our packed launch(...) call equals Triton's recorded one, else what differs.

    Positions holding launch metadata or hooks may differ only while the hooks are idle
    (we pass None; Triton passes empty hook chains and a metadata dict only they read).
    """
    roles = _ROLES[protocol]
    n = len(roles)
    if protocol == "L37":
        if len(ours) != n + 1 or len(theirs) != n + 1:
            return f"argument count {len(ours)} vs Triton's {len(theirs)}"
        our_args, their_args = ours[n], theirs[n]
        if not isinstance(their_args, tuple) or len(our_args) != len(their_args):
            return "kernel argument tuple differs in length"
    else:
        if len(ours) != len(theirs):
            return f"argument count {len(ours)} vs Triton's {len(theirs)}"
        our_args, their_args = ours[n:], theirs[n:]
    for i, role in enumerate(roles):
        a, b = ours[i], theirs[i]
        if role in ("g", "eq"):
            if type(a) is not type(b) or a != b:
                return f"position {i} ({role}): {a!r} vs Triton's {b!r}"
        elif role == "none":
            if a is not None or b is not None:
                return f"position {i}: scratch buffer {b!r} (only scratch-free kernels take the fast path)"
        elif role == "hook":
            if a is not None or not _idle(b):
                return f"position {i}: launch hook {b!r} is active"
        # "lmeta": read only by hooks, which are idle
    for j, (a, b) in enumerate(zip(our_args, their_args)):
        if not _same_arg(a, b):
            return f"kernel argument {j}: {a!r} vs Triton's {type(b).__name__} {b!r}"
    return ""


def _launcher_state(ck, protocol):
    """Everything ``_make_go`` needs from a compiled kernel, or a reason why not."""
    for attr in ("function", "packed_metadata"):
        if not hasattr(ck, attr):
            return None, f"compiled kernel has no {attr}"
    launcher = ck.run  # a property since 3.5: creates the launcher if needed
    if type(launcher).__name__ != "CudaLauncher":
        return None, f"launcher is {type(launcher).__name__}, not CudaLauncher"
    if getattr(launcher, "global_scratch_size", 0) or getattr(launcher, "profile_scratch_size", 0):
        return None, "kernel needs global/profile scratch memory"
    if getattr(launcher, "gsan_enabled", False):
        return None, "GSan instrumentation is on"
    st = {"launcher": launcher, "function": ck.function, "meta": ck.packed_metadata,
          "coop": launcher.launch_cooperative_grid, "pdl": launcher.launch_pdl}
    if protocol == "L37":
        st["ann"] = launcher.arg_annotations
        st["sig"] = launcher.kernel_signature
    return st, ""


class KernelLauncher:
    """Cached launches of one ``@triton.jit`` kernel.

    ``pointer_args`` names the pointer parameters: callers pass their ``data_ptr()`` ints
    in ``args`` and the tensors in ``tensors`` (same order) for the plain path.
    """

    def __init__(self, fn, pointer_args: tuple[str, ...], per_call: tuple[str, ...] = ()):
        self.fn = fn
        names = list(getattr(fn, "arg_names", None) or inspect.signature(fn.fn).parameters)
        self.arg_names = names
        self.ptr_pos = tuple(names.index(n) for n in pointer_args)
        # The leading parameters a caller passes on every call (pointers and scalars); the
        # rest are packed once per plan by name (:meth:`pack`).
        self.per_call = tuple(per_call)
        if tuple(names[:len(per_call)]) != self.per_call:
            raise ValueError(f"{getattr(fn, '__name__', fn)}: the kernel's leading parameters are "
                             f"{names[:len(per_call)]}, expected {list(per_call)}")
        self.static_names = tuple(names[len(per_call):])
        try:
            params = inspect.signature(getattr(fn, "fn", fn)).parameters
        except (TypeError, ValueError):  # a stand-in without a Python signature
            params = {}
        self.constexprs = frozenset(n for n, p in params.items() if "constexpr" in str(p.annotation))
        self.defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
        self.specs: dict = {}  # specialisation -> entries list (index: alignment bits)
        self.name = getattr(fn, "__name__", str(fn))
        init()
        with _lock:
            _launchers.append(self)

    def pack(self, **static) -> tuple:
        """Every parameter after the per-call ones, in signature order, from keyword values
        (parameters with a default may be left out). Raises TypeError on a missing or an
        unknown name, so a kernel signature change cannot shift arguments silently."""
        unknown = set(static) - set(self.static_names)
        if unknown:
            raise TypeError(f"{self.name}: unknown kernel parameters {sorted(unknown)}")
        try:
            return tuple(static[n] if n in static else self.defaults[n] for n in self.static_names)
        except KeyError as e:
            raise TypeError(f"{self.name}: kernel parameter {e.args[0]} not given") from None

    def spec(self, tail: tuple) -> tuple:
        """The part of Triton's specialisation key that :meth:`pack`'s ``tail`` decides:
        constexprs by value, ints by :func:`int_spec`."""
        return tuple(v if n in self.constexprs else int_spec(v) if type(v) is int else type(v).__name__
                     for n, v in zip(self.static_names, tail))

    def entries(self, spec, n_ptrs: int) -> list:
        """The shared entries list of specialisation ``spec`` (a hashable tuple)."""
        e = self.specs.get(spec)
        if e is None:
            e = self.specs.setdefault(spec, [None] * (1 << n_ptrs))
        return e

    def plain(self, grid, args, tensors, kwargs):
        """The normal ``kernel[grid](...)`` launch, tensors in the pointer positions, with
        :data:`FP_FUSION` (every compile of a qknorm kernel goes through here)."""
        a = list(args)
        for i, t in zip(self.ptr_pos, tensors):
            a[i] = t
        return self.fn[grid](*a, enable_fp_fusion=FP_FUSION, **kwargs)

    def slow(self, entries, bits, grid, args, tensors, kwargs, device):
        """Every call that is not a ready fast call: compile, verify, or plain."""
        if _has_cuda and device is not None and device >= 0 and _current_device() != device:
            import torch
            with torch.cuda.device(device):
                return self.slow(entries, bits, grid, args, tensors, kwargs, device)
        e = entries[bits]
        if e is None:
            e = entries[bits] = _Entry()
        if e.state == FAST and e.go is not None and hooks_idle():
            # a fast entry reached through the device switch above
            e.go(grid, _raw_stream(device), args)
            return
        if e.state == NEW:
            ck = self.plain(grid, args, tensors, kwargs)
            if not _enabled or device is None or device < 0:
                e.state, e.why = PLAIN, "fast launches disabled" if not _enabled else "not a CUDA launch"
            elif ck is None or not hasattr(ck, "run"):
                e.state, e.why = PLAIN, "kernel[grid] returned no compiled kernel"
            else:
                e.ck, e.state = ck, VERIFY
            return
        if e.state == VERIFY and hooks_idle():
            self._verify(e, grid, args, tensors, kwargs, device)
            return
        self.plain(grid, args, tensors, kwargs)

    def _verify(self, e, grid, args, tensors, kwargs, device):
        e.state = PLAIN  # unless everything below checks out
        st, why = _launcher_state(e.ck, PROTOCOL)
        if st is None:
            e.why = why
            self.plain(grid, args, tensors, kwargs)
            return
        launcher = st["launcher"]
        real = launcher.__dict__.get("launch")
        if real is None:
            e.why = "launcher has no instance attribute 'launch'"
            self.plain(grid, args, tensors, kwargs)
            return
        recorded = []

        def recorder(*a):
            recorded.append(a)
            return real(*a)

        launcher.launch = recorder
        try:
            self.plain(grid, args, tensors, kwargs)
        finally:
            launcher.launch = real
        if len(recorded) != 1:
            e.why = f"Triton's launch was called {len(recorded)} times (expected once)"
            return
        ours = []
        try:  # the kernel has run (Triton's launch above): nothing below may raise
            _make_go(PROTOCOL, lambda *a: ours.append(a), st["function"], st["coop"], st["pdl"], st["meta"],
                     st.get("ann"), st.get("sig"))(grid, _raw_stream(device), args)
            diff = compare_calls(PROTOCOL, ours[0], recorded[0])
        except Exception as exc:  # noqa: BLE001
            diff = f"packing raised {type(exc).__name__}: {exc}"
        if diff:
            e.why = "verification failed: " + diff
            return
        e.go = _make_go(PROTOCOL, real, st["function"], st["coop"], st["pdl"], st["meta"], st.get("ann"),
                        st.get("sig"))
        e.state, e.why = FAST, "verified against Triton's own launch"


class _Call(NamedTuple):
    """A one-off plan for :func:`run` (never given launch records: it is not kept)."""
    launcher: "KernelLauncher"
    entries: list
    grid: tuple
    tail: tuple
    kwargs: dict
    device: int
    records: None = None


def run(kl: KernelLauncher, entries: list, bits: int, grid, args: tuple, tensors: tuple, kwargs: dict,
        device: int) -> None:
    """Launch ``kl``'s kernel: the fast call when this entry has one, else the slow path.

    ``grid`` is ``(gx, gy, gz)``; ``args`` every kernel parameter in order (pointers as
    ``data_ptr()`` ints, constexprs included); ``tensors`` the tensors behind the pointers
    (for the plain path); ``device`` the CUDA device index (-1: not CUDA, plain path).
    """
    run_plan(_Call(kl, entries, grid, (), kwargs, device), bits, args, tensors)


def launch_plan(plan, head: tuple, tensors: tuple) -> None:
    """Launch a call plan with the per-call arguments ``head`` (data pointers first): the compiled
    launch from the plan's records when there is one for these pointers' alignment (one C call:
    alignment bits, record, hooks, launch), else :func:`run_plan`. The hot path of every fast call."""
    rec = plan.records
    if rec is not None and _enabled:
        try:
            if _launch_from(rec, *head):
                return
        except Exception as exc:  # noqa: BLE001 - Triton's launch below redoes it (or raises)
            rec[:] = [False] * len(rec)
            _record_errors.append(f"{plan.launcher.name}: {type(exc).__name__}: {exc}")
    run_plan(plan, bits_of(head), head, tensors)


def bits_of(head: tuple) -> int:
    """:func:`align_bits` of the leading ints of ``head`` (the data pointers, before any float)."""
    b = 0
    for i, p in enumerate(head):
        if type(p) is not int:
            break
        if p & 15:
            b |= 1 << i
    return b


def _no_records(records, *head) -> bool:
    return False


_launch_from = _no_records  # the compiled launch_from once a record exists (see _arm)


def run_plan(plan, bits: int, head: tuple, tensors: tuple) -> None:
    """:func:`run` for a call plan (``ops/_plan.Plan``: ``launcher``, ``entries``, ``grid``,
    ``tail``, ``kwargs``, ``device``, ``records``) with the per-call arguments ``head``, when its
    compiled launch did not take the call (:func:`launch_plan`): Triton's C launcher (``go``) for
    an entry verified fast — after which the plan gets its launch record (:func:`_arm`) — else the
    slow path."""
    rec = plan.records
    e = plan.entries[bits]
    if e is not None:
        go = e.go
        device = plan.device
        if go is not None and _current_device() == device:
            rt = _rt
            if rt is None or ((type(h := rt.launch_enter_hook) is _HookChain and not h.calls or h is None)
                              and (type(x := rt.launch_exit_hook) is _HookChain and not x.calls or x is None)):
                try:
                    go(plan.grid, _raw_stream(device), head + plan.tail)
                except Exception as exc:  # noqa: BLE001 - fall back for good, then redo it plainly
                    e.go, e.state, e.why = None, PLAIN, f"fast call raised {type(exc).__name__}: {exc}"
                else:
                    if (rec is None or rec[bits] is None) and type(plan) is not _Call:
                        _arm(plan, bits, e, head)
                    return
    plan.launcher.slow(plan.entries, bits, plan.grid, head + plan.tail, tensors, plan.kwargs, plan.device)
    if test_arm is not None and plan.device < 0 and type(plan) is not _Call:
        test_arm(plan, bits)


#: Tests only (``ops/_express.set_test_launch``): gives CPU plans stand-in launch records.
test_arm = None


# --------------------------------------------------------------------------- compiled launches

#: Per-call argument kinds of a launch record by Triton type, and the bytes each occupies.
_KINDS = {"i32": ("i", 4), "i64": ("l", 8), "fp32": ("f", 4)}
_RECORD_HEAD = struct.Struct("<Q3IIIiIII16s16sI")  # launchcall.c's Record (80 bytes)
_record_errors: list = []


class Records(list):
    """A plan's launch records by alignment bits (bytes; False: none possible; None: not tried).
    Every such list is known to :func:`clear`, which forgets them with the entries."""

    __slots__ = ("__weakref__",)


_record_lists: "weakref.WeakValueDictionary[int, Records]" = weakref.WeakValueDictionary()  # by id


def new_records(n: int) -> Records:
    """An empty record list of ``n`` entries, known to :func:`clear`."""
    rec = Records([None] * n)
    with _lock:
        _record_lists[id(rec)] = rec
    return rec
#: The compiled kernels behind live records (a record holds the raw CUfunction only).
_record_kernels: dict = {}
#: Plans' launch-record outcomes by kernel: ``{kernel: {"armed": n, why-not: n}}`` (for explain/tests).
record_stats: dict = {}


def _note(name: str, what: str) -> None:
    d = record_stats.setdefault(name, {})
    d[what] = d.get(what, 0) + 1


def _arm(plan, bits: int, e, head: tuple) -> None:
    """Give ``plan`` the launch record of alignment ``bits`` after a fast call through Triton's
    launcher, or False where the compiled launch cannot take it (the reason is counted in
    :data:`record_stats`)."""
    global _launch_from
    rec = plan.records
    if rec is None:
        rec = plan.records = new_records(len(plan.entries))
    rec[bits] = False
    from . import native
    mod = native.load_launcher()
    if mod is None:
        _note(plan.launcher.name, "no compiled launch: " + native.reason(launcher=True))
        return
    try:
        r, why = launch_record(mod.param_info, plan, e.ck, head)
    except Exception as exc:  # noqa: BLE001 - no record: Triton's launcher keeps the calls
        r, why = None, f"record raised {type(exc).__name__}: {exc}"
    if r is None:
        _note(plan.launcher.name, why)
        return
    if _launch_from is _no_records:
        mod.set_hooks(_rt, _HookChain if _HookChain.__module__.startswith("triton") else None)
    _launch_from = mod.launch_from
    with _lock:
        _record_kernels[id(e.ck)] = e.ck
    rec[bits] = r
    _note(plan.launcher.name, "armed")


def launch_record(param_info, plan, ck, head: tuple):
    """``(record, "")`` for launching ``ck`` (the compiled kernel of ``plan``'s entry) with
    ``head`` per call and ``plan.tail`` fixed, or ``(None, why)``.

    The kernel parameters Triton passes are the non-constexpr arguments of the compiled
    kernel's signature in order, then its global and profile scratch pointers (Triton 3.5+,
    both NULL for our kernels). Checked against the driver's own list of the loaded kernel's
    parameters (``cuFuncGetParamInfo``: count and size of each); anything unexpected: no record."""
    if PROTOCOL not in ("L35", "L37"):
        return None, f"launch protocol {PROTOCOL}: records only for Triton 3.5+"
    st, why = _launcher_state(ck, PROTOCOL)
    if st is None:
        return None, why
    md = ck.metadata
    if getattr(md, "num_ctas", 1) != 1:
        return None, "num_ctas != 1"
    if md.shared > 227 * 1024:  # Triton 3.9 adds a shared-memory-mode attribute past this
        return None, f"{md.shared} bytes of shared memory"
    sig = ck.src.signature
    names = plan.launcher.arg_names
    args = head + plan.tail
    if len(sig) != len(names) or len(args) != len(names) or len(head) > 16:
        return None, f"signature of {len(sig)} arguments, {len(names)} names, {len(args)} values"
    types = [sig[n] if n in sig else sig[i] for i, n in enumerate(names)]
    slots, sizes, head_slot, head_kind = [], [], [], []
    for i, (t, v) in enumerate(zip(types, args)):
        if t == "constexpr":
            if i < len(head):
                return None, f"per-call argument {names[i]} is a constexpr"
            continue
        if type(t) is not str:
            return None, f"argument {names[i]} of type {t!r}"
        if t.startswith("*"):
            kind, size = "p", 8
        elif t in _KINDS:
            kind, size = _KINDS[t]
        else:
            return None, f"argument {names[i]} of type {t}"
        if i < len(head):
            head_slot.append(len(slots))
            head_kind.append(kind)
            slots.append(0)
        elif kind == "f":
            if type(v) is not float:
                return None, f"argument {names[i]} = {v!r} for {t}"
            slots.append(struct.unpack("<I", struct.pack("<f", v))[0])
        else:
            if type(v) is not int:
                return None, f"argument {names[i]} = {v!r} for {t}"
            slots.append(v & 0xFFFFFFFF if kind == "i" else v & 0xFFFFFFFFFFFFFFFF)
        sizes.append(size)
    slots += [0, 0]  # global and profile scratch: none
    sizes += [8, 8]
    info = param_info(st["function"])
    if info is None:
        return None, "the driver cannot list kernel parameters (cuFuncGetParamInfo, CUDA 12.4+)"
    if [s for _, s in info] != sizes:
        return None, f"kernel parameter sizes {[s for _, s in info]}, expected {sizes}"
    if len(slots) > 64:
        return None, f"{len(slots)} parameters (at most 64)"
    flags = (1 if st["pdl"] else 0) | (2 if st["coop"] else 0)
    head_rec = _RECORD_HEAD.pack(st["function"], *plan.grid, 32 * md.num_warps, md.shared, plan.device, flags,
                                 len(slots), len(head), bytes(head_slot), "".join(head_kind).encode(), 0)
    return head_rec + struct.pack(f"<{len(slots)}Q", *slots), ""


def _bump_versions(tensors) -> None:
    import torch
    global bump_versions
    bump_versions = getattr(torch._C, "_increment_version", None) or torch.autograd.graph.increment_version
    bump_versions(tensors)


#: ``bump_versions((t, ...))``: mark tensors a kernel wrote through their data pointers as modified
#: for autograd, as PyTorch's own in-place ops do (``torch.autograd.graph.increment_version``, whose
#: C function this is; inference tensors have no counter and are skipped). Without it a tensor saved
#: for a backward, then overwritten by a kernel, gives a silently wrong gradient. (Bound on first use:
#: importing this module does not import torch.)
bump_versions = _bump_versions


def _no_device() -> int:
    return -2  # no CUDA: never equal to a CUDA device index


def _init_cuda() -> bool:
    """Bind the stream/device getters Triton itself uses; False without CUDA."""
    global _raw_stream, _current_device
    try:
        import torch
        if torch.cuda.is_available():
            _raw_stream, _current_device = _cuda_funcs()
            return True
    except Exception:  # noqa: BLE001
        pass
    _raw_stream, _current_device = None, _no_device
    return False


_has_cuda = False
_current_device = _no_device


def enabled() -> bool:
    """Whether fast launches are on (a known protocol, CUDA, and not switched off)."""
    return _enabled


def set_enabled(flag: bool) -> None:
    """Switch fast launches on or off (e.g. to time the plain path); clears every entry."""
    global _enabled
    init()
    _enabled = bool(flag) and PROTOCOL is not None and _has_cuda
    clear()


def clear() -> None:
    """Forget every entry and launch record (they are rebuilt on the next calls)."""
    # Reset the lists in place: cached call plans (ops/) hold references to them.
    with _lock:
        for kl in _launchers:
            for entries in kl.specs.values():
                entries[:] = [None] * len(entries)
        for rec in list(_record_lists.values()):
            rec[:] = [None] * len(rec)
        _record_kernels.clear()


def entry_states() -> list[tuple[str, object, int, str, str]]:
    """``(kernel, spec, alignment bits, state, why)`` for every entry: what ran fast and why not."""
    out = []
    with _lock:
        for kl in _launchers:
            for spec, entries in kl.specs.items():
                for bits, e in enumerate(entries):
                    if e is not None:
                        out.append((kl.name, spec, bits, e.state, e.why))
    return out
