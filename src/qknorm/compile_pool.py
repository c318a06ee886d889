"""Compile Triton kernels ahead of a timing pass, in worker processes.

Compiling dominates ``qknorm tune``: its cost model (``tune.estimate``, which matched an H100's log of
2026-12-07 within 10%: 184 s estimated, 205 s measured for the first 22 grid points) puts ~215 s of a full
tune's ~295 s in ~430 compiles of about 0.5 s each, one at a time on one CPU core. Triton keeps every
compiled kernel in its on-disk cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``), so a kernel that
one process compiled loads in milliseconds in another. :func:`run` calls a function on every task in a
pool of spawned processes (CUDA needs ``spawn``), each task being one launch that compiles its kernel;
the timing pass that follows then finds them compiled. Inductor compiles its Triton kernels ahead in
worker processes in the same way.

Nothing here knows about kernels: the caller gives the tasks and a module-level function (spawned
processes import it by name) that launches one and returns whether it ran.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class PoolRun(NamedTuple):
    ran: int          # tasks whose function returned true
    failed: int       # returned false or raised (the timing pass reports why)
    seconds: float    # wall time of the pool, start-up included
    finished: bool    # False: the time limit stopped it (the rest compile in the timing pass)


def run(tasks: Sequence[Any], work: Callable[[Any], bool], jobs: int, seconds: float,
        initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> PoolRun:
    """``work(task)`` for every task in ``jobs`` spawned processes, in the tasks' order (each process
    takes the next task when it is free), for at most ``seconds`` of wall time; then the processes are
    ended (terminated at the time limit), so none is left running while the caller times kernels.

    ``work`` and ``initializer`` must be module-level functions and the tasks picklable. A task whose
    ``work`` raises counts as failed; an error in the pool itself (a process that cannot start) is
    raised."""
    t0 = time.monotonic()
    ran = failed = 0
    finished = True
    pool = multiprocessing.get_context("spawn").Pool(max(1, jobs), initializer, initargs)
    try:
        results = pool.imap_unordered(_guarded, [(work, t) for t in tasks], chunksize=1)
        for _ in tasks:
            left = seconds - (time.monotonic() - t0)
            try:
                ok = results.next(timeout=max(left, 0.0))
            except multiprocessing.TimeoutError:
                finished = False
                break
            ran, failed = ran + bool(ok), failed + (not ok)
    finally:
        pool.terminate()
        pool.join()
    return PoolRun(ran, failed, time.monotonic() - t0, finished)


def _guarded(item) -> bool:
    work, task = item
    try:
        return bool(work(task))
    except Exception:  # noqa: BLE001 - one task's failure is counted, not fatal; the timing pass says why
        return False
