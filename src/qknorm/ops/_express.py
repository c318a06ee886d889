"""Entries of the *express call*: an op's whole fast call in one C call (``native.call``).

After an op's Python fast call (``_plan``) has launched a plan through its compiled launch
record, the op *registers* what that call did, keyed by the C form of its arguments (every
tensor's metadata, which arguments are the same object, the scalars' types and values):

* ``head``: which arguments are the kernel's per-call pointers (in kernel order);
* ``pairs``: pairs of views that must share no element, with their byte spans: a later call
  passes a pair when the byte ranges are disjoint, or when the pointer distance is the one this
  call checked exactly (Q and K of one packed buffer; an output that is its input's view);
* ``allocs``: new outputs (``torch.empty_like`` of an input, contiguous);
* ``bumps``: the written tensors whose autograd versions move; ``ret``: what the op returns.

Later calls with the same key run entirely in C (``_native/launchcall.c``: ``call``): argument
metadata, key, checks, allocation, launch, version bumps. Everything the entry does not cover —
another key, a failed check, no record for the pointers' alignment, Triton's launch hooks
active, grad mode with a tensor that requires grad — returns NotImplemented before anything is
written, and the Python path decides. The table is emptied with the plan cache
(``dispatch.reset()``) and on a backend change; :func:`set_enabled` (and ``native.set_enabled(False)``)
turns the express call off.

Tests: :func:`set_test_launch` gives CPU plans stand-in records that the C call launches
through the Triton interpreter, so the whole express path runs in CI without a GPU.
"""
from __future__ import annotations

import struct

import torch

from .. import backend, launch, native

__all__ = ["RMS_NORM", "FUSED_ADD", "QK", "QK_ROPE", "QUANT", "PROLOGUE", "TABLE", "TRIES", "wants", "register",
           "clear", "set_enabled", "set_test_launch", "testing", "hits", "errors"]

#: Op codes (the first argument of ``native.call``).
RMS_NORM, FUSED_ADD, QK, QK_ROPE, QUANT, PROLOGUE = 1, 2, 3, 4, 5, 6

#: Entries by key (the C call's table).
TABLE: dict = {}
_NONE = -(1 << 63)  # a check without an exact pointer distance
_PROG = struct.Struct("<BBBx16s16s4x")
_CHECK = struct.Struct("<qqqqqBB6x")
_CONTIGUOUS = {"memory_format": torch.contiguous_format}
_module = None  # the compiled module once the express call has been switched on


def clear(*_):
    """Forget every entry (the next calls take the Python path and register again)."""
    TABLE.clear()


backend.listeners.append(clear)


def _on():
    """The compiled module with the express call switched on, or None where it cannot be (the compiled
    parts off: ``QKNORM_NATIVE=0``, ``native.set_enabled(False)``, no compiler)."""
    global _module
    if not _enabled or not native.enabled():
        return None
    if _module is None:
        m = native.launch_module()
        if m is None:
            return None
        m.set_express(TABLE, torch.is_grad_enabled, _bump_fn(), (torch.dtype,))
        _module = m
    native.call = _module.call
    return _module


_enabled = True


def set_enabled(flag: bool) -> None:
    """Turn the express call on (the default; entries are made again from the next fast calls) or off
    (every call takes the Python fast call: for measurements and debugging)."""
    global _enabled
    _enabled = bool(flag)
    clear()
    if not _enabled:
        native.express_off()


def _bump_fn():
    return getattr(torch._C, "_increment_version", None) or torch.autograd.graph.increment_version


#: Registrations tried per plan at most: an entry the C call keeps declining (Triton launch hooks active, a
#: pointer distance that changes every call) or that cannot be made (the compiled parts off) stops costing
#: the Python fast call anything after this many.
TRIES = 32


def wants(plan) -> bool:
    """Whether a fast call that just launched ``plan`` should (try to) register its entry; counts the try."""
    n = plan.express
    if not _enabled or n >= TRIES:
        return False
    plan.express = n + 1
    return True


def register(op: int, args: tuple, plan, ptrs: tuple, head: tuple, pairs=(), bumps=(), allocs=(), ret=0,
             cpu_check=None) -> None:
    """Make the entry of a fast call that just launched ``plan``.

    ``args``: the call's arguments exactly as the public function passes them to ``native.call``
    (after the op code); ``ptrs``: each argument's data pointer in this call (None for
    non-tensors; an allocated output's pointer at its index); ``head``: argument indices of the
    kernel's per-call pointers; ``pairs``: ``(i, span_i, j, span_j)`` views that must not overlap
    (spans: byte ranges relative to the data pointers); ``bumps``: indices of written tensors;
    ``allocs``: new outputs: ``(index, index of the input it is made like, that input)`` (a contiguous
    ``torch.empty_like``) or ``(index, fn, src, kwargs)`` as the C call takes them; ``ret``: the index
    (or tuple of indices) of what the call returns; ``cpu_check``: tests only, a check of the kernel's tensors (in
    head order) that a CPU call must pass (positions, slots in range) before the stand-in launch.
    Nothing is registered unless the plan launched through a record for these pointers' alignment (a
    later C call does exactly what this one did)."""
    rec = plan.records
    if rec is None or backend.active == "torch":
        return
    bits = 0
    for h, i in enumerate(head):
        if ptrs[i] & 15:
            bits |= 1 << h
    if bits >= len(rec) or type(rec[bits]) is not bytes:
        return
    m = _on()
    if m is None:
        return
    checks = []
    for i, si, j, sj in pairs:
        pi, pj = ptrs[i], ptrs[j]
        apart = pi + si[1] <= pj + sj[0] or pj + sj[1] <= pi + si[0]
        checks.append(_CHECK.pack(si[0], si[1], sj[0], sj[1], _NONE if apart else pj - pi, i, j))
    prog = _PROG.pack(len(head), len(bumps), len(checks), bytes(head), bytes(bumps)) + b"".join(checks)
    made = tuple(a if len(a) == 4 else (a[0], torch.empty_like, a[1], _CONTIGUOUS) for a in allocs)
    if cpu_check is not None:
        _test_checks[id(plan)] = cpu_check
    try:
        m.register((rec, prog, made, ret), op, *args)
    except Exception as exc:  # noqa: BLE001 - the call itself is done: no entry, and the reason kept
        errors.append(f"{type(exc).__name__}: {exc}")


#: Why entries could not be registered (should stay empty; tests check).
errors: list = []


# --------------------------------------------------------------------------- tests

_test_plans: dict = {}
_TEST_MAGIC = b"qknorm-test-record"


def _test_launch(record, values, tensors):
    """The C call's launch in test mode: the plan behind a stand-in record, on the tensors the
    C call chose, through the plain (interpreter) path."""
    if tensors is None or not record.startswith(_TEST_MAGIC):
        return False
    pid, bits = struct.unpack_from("<QI", record, len(_TEST_MAGIC))
    plan = _test_plans[pid]
    assert values == tuple(t.data_ptr() for t in tensors), "pointers and tensors disagree"
    assert launch.align_bits(*values) == bits, "the record of another alignment"
    check = _test_checks.get(pid)
    if check is not None and not check(tensors):
        return False  # (the C call then declines: the Python call raises)
    plan.launcher.plain(plan.grid, tuple(tensors) + plan.tail, tuple(tensors), plan.kwargs)
    hits.append(plan.launcher.name)
    return True


#: Kernel names of the express calls launched in test mode (tests read and clear it).
hits: list = []


_test_checks: dict = {}


def _arm_test(plan, bits: int) -> None:
    rec = plan.records
    if rec is None:
        rec = plan.records = launch.new_records(len(plan.entries))  # launch.clear() forgets them too
    rec[bits] = _TEST_MAGIC + struct.pack("<QI", id(plan), bits)
    _test_plans[id(plan)] = plan


def testing() -> bool:
    """Whether :func:`set_test_launch` is on (ops whose CPU fast call checks data per call — positions,
    slots — register CPU entries only then: the C call does not repeat those checks)."""
    return launch.test_arm is not None


def set_test_launch(on: bool) -> bool:
    """Tests only: CPU plans get stand-in launch records after their first launch, and the C call
    launches them through the Triton interpreter. False when the compiled module is not available."""
    m = native.launch_module()
    if m is None:
        return False
    m.set_test_launch(_test_launch if on else None)
    launch.test_arm = _arm_test if on else None
    if not on:
        _test_plans.clear()
        _test_checks.clear()
    clear()
    return True
