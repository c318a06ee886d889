"""Run the benchmark: for every case, every selected implementation is checked, then timed.

One row per (case, implementation, timing mode). An implementation that is missing,
does not support the case, fails the correctness gate or raises is recorded with its
status and reason, and the run goes on. Rows are handed to ``sink`` as soon as they are
measured, so an interrupted run keeps what it measured. Eager mode on a GPU times a case's
implementations together, interleaved batch by batch (``timing.time_eager_rounds``: host drift
falls on all alike), after all of them were checked: its rows come at the end of the case.

Statuses: ``ok`` (timed), ``skipped`` (not available / not applicable / needs a GPU),
``wrong`` (failed the gate: not timed), ``error`` (raised; the exception is the reason).
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..backend import get_backend
from .cases import Case, build_inputs, layout
from .check import gate
from .common import dtype_name
from .peers import Impl, Qknorm, matches, qknorm_pick, qknorm_ranked, qknorm_variants, static_impls
from .timing import Baselines, cold_sets, time_eager, time_eager_rounds, time_graph

MODES = ("graph", "eager")
VARIANT_CHOICES = ("none", "top", "all")
TOP_VARIANTS = 8
MAX_SAME_ERRORS = 3  # an implementation failing this many cases in a row the same way is skipped after

COLUMNS = ("preset", "op", "group", "shape", "tokens", "hq", "hkv", "head_dim", "hidden", "rotary_dim", "dtype",
           "impl", "family", "mode", "l2", "status", "us", "gbps", "pct_copy", "rel_err", "config", "config_reason",
           "strides", "contiguous", "aligned16", "ideal_bytes", "notes", "reason", "ran")
# ``ran``: what actually ran where a library picks at run time (F.rms_norm: ATen's kernel or
# torch._native's vendored Quack override; FlashInfer: CuTe DSL or CUDA path). Last, so older
# CSVs (without it) read the same.


@dataclass
class Options:
    """What to run: device, timing modes, cold L2, implementation patterns, variant set."""

    device: str = "cpu"
    modes: tuple[str, ...] = ("eager",)
    cold_l2: bool = False
    include: tuple[str, ...] = ()   # shell globs over implementation names; empty: all
    exclude: tuple[str, ...] = ()
    variants: str = "top"           # none | top (the table's best + the pick) | all
    seed: int = 0


def _selected(name: str, opt: Options) -> bool:
    if opt.exclude and matches(name, opt.exclude):
        return False
    return matches(name, opt.include)


def variant_impls(case: Case, opt: Options) -> list[Impl]:
    """The qknorm kernel variants to time for ``case`` (each forces one KernelConfig).

    ``all``: every admissible candidate config. ``top``: the dispatcher's pick plus the
    fastest alternatives its tuned table measured for this bucket (``TOP_VARIANTS`` in
    all), or every candidate where the table has no entry. ``none``: no variants."""
    if opt.variants == "none" or torch.device(opt.device).type != "cuda" or case.is_quant:
        return []  # quantised kinds: the public API takes no config= (the pick alone)
    cands = qknorm_variants(case, opt.device)
    if opt.variants == "top":
        ranked = qknorm_ranked(case, opt.device)
        if ranked:
            by_name = {v.name: v for v in cands}
            pick, _ = qknorm_pick(case, opt.device)
            keep = [f"qknorm[{pick}]"] + [f"qknorm[{n}]" for n in ranked]
            chosen, seen = [], set()
            for n in keep:
                if n in by_name and n not in seen:
                    seen.add(n)
                    chosen.append(by_name[n])
                if len(chosen) >= TOP_VARIANTS:
                    break
            cands = chosen or cands
    return [v for v in cands if _selected(v.name, opt)]


class Runner:
    """Checks and times implementations on cases; see the module docstring."""

    def __init__(self, opt: Options, base: Baselines, sink: Callable[[dict], None],
                 impls: list[Impl] | None = None):
        self.opt, self.base, self.sink = opt, base, sink
        self.cuda = torch.device(opt.device).type == "cuda"
        self.impls = [i for i in (impls if impls is not None else static_impls()) if _selected(i.name, opt)]
        self._avail: dict[str, tuple[bool, str]] = {}
        self._errors: dict[str, list[str]] = {}  # impl -> its consecutive error messages

    def impls_for(self, case: Case) -> list[Impl]:
        return self.impls + variant_impls(case, self.opt)

    def count(self, cases: Iterable[Case]) -> int:
        """Work units (case x implementation) for a progress bar."""
        return sum(len(self.impls_for(c)) for c in cases)

    def available(self, impl: Impl) -> tuple[bool, str]:
        errs = self._errors.get(impl.name, [])
        if len(errs) >= MAX_SAME_ERRORS and len(set(errs[-MAX_SAME_ERRORS:])) == 1:
            # e.g. a JIT build that fails: retrying it on every case costs minutes each
            return False, f"disabled after {MAX_SAME_ERRORS} identical errors: {errs[-1]}"
        if impl.name not in self._avail:
            if impl.needs_cuda and not self.cuda:
                self._avail[impl.name] = (False, needs_cuda_reason(impl))
            else:
                try:
                    self._avail[impl.name] = impl.available()
                except Exception as e:  # noqa: BLE001 - a peer failing in its own set-up
                    self._avail[impl.name] = (False, f"{type(e).__name__}: {e}")
        return self._avail[impl.name]

    # ------------------------------------------------------------------ one case

    def run_case(self, case: Case, tick: Callable[[], None] = lambda: None) -> list[dict]:
        rows = []
        pick = pick_why = ""
        try:
            if self.cuda or get_backend() == "triton":  # (on a CPU: the interpreter runs the dispatcher's pick)
                pick, pick_why = qknorm_pick(case, self.opt.device)
            else:
                pick, pick_why = "", "CPU: PyTorch path"
        except Exception as e:  # noqa: BLE001
            pick_why = f"dispatcher raised {type(e).__name__}: {e}"
        pending: list[tuple] = []  # (impl, fns, row fields): eager timings taken together below
        for impl in self.impls_for(case):
            try:
                rows += self._run_impl(case, impl, pick, pick_why, pending)
            finally:
                tick()
        if pending:
            rows += self._time_eager_together(case, pending)
        return rows

    def _time_eager_together(self, case: Case, pending: list[tuple]) -> list[dict]:
        """Eager mode on a GPU: the implementations that passed the gate, timed interleaved
        (``timing.time_eager_rounds``); if that raises, each alone, a failure its own error row."""
        rows: list[dict] = []
        try:
            times = time_eager_rounds([fns for _, fns, _ in pending], True,
                                      scopes=[impl.scope for impl, _, _ in pending])
        except Exception:  # noqa: BLE001 - find which one: time them one by one
            self._sync_after_error()
            times = []
            for impl, fns, base in pending:
                try:
                    with impl.scope():
                        times.append(time_eager(fns, True))
                except Exception as e:  # noqa: BLE001
                    self._sync_after_error()
                    times.append(e)
        for (impl, _, base), us in zip(pending, times):
            if isinstance(us, Exception):
                self._emit(rows, self._row(case, impl, mode="eager", status="error", reason=_reason(us), **base))
            else:
                self._emit(rows, self._timed_row(case, impl, "eager", us, base))
        return rows

    def _timed_row(self, case: Case, impl: Impl, mode: str, us: float, base: dict) -> dict:
        gbps = case.ideal_bytes / us / 1e3
        return self._row(case, impl, mode=mode, status="ok", us=f"{us:.3f}", gbps=f"{gbps:.1f}",
                         pct_copy=f"{100 * gbps / self.base.copy_gbps:.1f}", **base)

    def _sync_after_error(self) -> None:
        if self.cuda:
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - a sticky CUDA error: later rows will say so too
                pass

    def _row(self, case: Case, impl: Impl, **kw) -> dict:
        r = dict(preset=case.preset, op=case.op, group=case.group, shape=case.shape, tokens=case.tokens,
                 hq=case.hq, hkv=case.hkv, head_dim=case.head_dim, hidden=case.hidden,
                 rotary_dim=getattr(case, "rotary_dim", "") or "", dtype=dtype_name(case.dtype),
                 impl=impl.name, family=impl.family, mode="", l2="cold" if self.opt.cold_l2 else "warm",
                 status="", us="", gbps="", pct_copy="", rel_err="", config="", config_reason="",
                 strides="", contiguous="", aligned16="", ideal_bytes=case.ideal_bytes, notes="", reason="", ran="")
        r.update(kw)
        return r

    def _emit(self, rows: list[dict], row: dict) -> None:
        rows.append(row)
        self.sink(row)

    def _run_impl(self, case: Case, impl: Impl, pick: str, pick_why: str, pending: list | None = None) -> list[dict]:
        """Check ``impl`` on ``case`` and time it; eager mode on a GPU is left to the caller (appended to
        ``pending``) when given."""
        rows: list[dict] = []
        ok, why = self.available(impl)
        if ok:
            try:
                ok, why = impl.supports(case)
            except Exception as e:  # noqa: BLE001
                ok, why = False, f"supports() raised {type(e).__name__}: {e}"
        if not ok:
            self._emit(rows, self._row(case, impl, status="skipped", reason=why))
            return rows
        cfg = ""
        if isinstance(impl, Qknorm):
            cfg = impl.config.name if impl.config is not None else pick
        base = dict(config=cfg, config_reason=pick_why if impl.name == "qknorm" else "")
        try:
            with impl.scope():
                inp = build_inputs(case, self.opt.device, self.opt.seed)
                base.update(layout(case, inp))
                base["notes"] = impl.notes(case)
                fn = impl.build(case, inp)
                base["notes"], base["ran"] = impl.notes(case), impl.ran(case)  # after build: what it found
                if impl.family == "copy":
                    fn()  # not a norm: nothing to check
                    err = ""
                else:
                    v = gate(case, inp, fn, norm_rounded=impl.norm_rounded)
                    err = "inf" if math.isinf(v.error) else f"{v.error:.3e}"
                    base["notes"] = "; ".join(n for n in (base["notes"], v.notes) if n)  # quantised: ties counted
                    if not v.ok:
                        reason = v.reason
                        if impl.family == "trap":
                            reason += " (expected: a different function)"
                        self._emit(rows, self._row(case, impl, status="wrong", rel_err=err, reason=reason, **base))
                        return rows
                base["rel_err"] = err
                for mode in self.opt.modes:
                    if mode == "eager" and self.cuda and pending is not None:
                        pending.append((impl, self._inputs(case, impl, fn), base))
                        continue
                    self._emit(rows, self._timed_row(case, impl, mode, self._time(case, impl, fn, mode), base))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a crashing peer is a result, not the end of the run
            self._sync_after_error()
            reason = _reason(e)
            self._errors.setdefault(impl.name, []).append(reason)
            self._emit(rows, self._row(case, impl, mode=",".join(self.opt.modes), status="error",
                                       reason=reason, **base))
            return rows
        self._errors.pop(impl.name, None)
        return rows

    def _inputs(self, case: Case, impl: Impl, fn) -> list:
        """The callables to time: ``fn``, and with cold L2 (GPU) one per further input set."""
        fns = [fn]
        if self.opt.cold_l2 and self.cuda:
            n = cold_sets(_set_bytes(case), self.base.l2_bytes)
            fns += [impl.build(case, build_inputs(case, self.opt.device, self.opt.seed + 1 + i))
                    for i in range(n - 1)]
        return fns

    def _time(self, case: Case, impl: Impl, fn, mode: str) -> float:
        fns = self._inputs(case, impl, fn)
        if mode == "graph":
            if not self.cuda:
                raise RuntimeError("graph mode needs CUDA")
            return time_graph(fns)
        if self.cuda:
            return time_eager(fns, True)
        # CPU: a short budget, the point is that it runs and says what ran.
        return time_eager(fns, False, batches=3, target_us=5000.0, max_calls=200)


def needs_cuda_reason(impl: Impl) -> str:
    """Skip reason of a GPU-only implementation on a CPU run, with whether its library is
    installed here (found without importing it) and its version."""
    try:
        ok, why = impl.installed()
        v = impl.version() if ok else ""
    except Exception as e:  # noqa: BLE001
        ok, why, v = False, f"{type(e).__name__}: {e}", ""
    if not ok:
        return f"needs a CUDA GPU; {why}"
    if not impl.module:  # runs on a CPU, left out of CPU runs by choice
        return f"GPU runs only: {impl.cpu_skip}" if getattr(impl, "cpu_skip", "") else "GPU runs only"
    return f"needs a CUDA GPU; {impl.library or impl.name} {v or '(version unknown)'} installed"


def _reason(e: BaseException) -> str:
    """An exception as a row's reason: type, first line, where it was raised."""
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {where.filename.split('/')[-1]}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {msg}{at}"


def _set_bytes(case: Case) -> int:
    """Bytes of one input set (what a rotation of sets must exceed L2 with)."""
    return case.ideal_bytes
