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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class PoolRun(NamedTuple):
    ran: int          # tasks whose function returned true
    failed: int       # returned false or raised, or lost with a process that died (the timing pass says why)
    seconds: float    # wall time of the pool, start-up included
    finished: bool    # False: the time limit or a dead process stopped it (the rest compile in the timing pass)
    error: str = ""   # why the pool stopped early, if a process died or could not start


def run(tasks: Sequence[Any], work: Callable[[Any], bool], jobs: int, seconds: float,
        initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> PoolRun:
    """``work(task)`` for every task in ``jobs`` spawned processes, in the tasks' order (each process
    takes the next task when it is free), for at most ``seconds`` of wall time; then the processes are
    ended (terminated at the time limit), so none is left running while the caller times kernels.

    ``work`` and ``initializer`` must be module-level functions and the tasks picklable. A task whose
    ``work`` raises counts as failed. A process that dies (a crash in a compile, an out-of-memory kill) or
    cannot start (a failing ``initializer``; a script that starts the pool without an
    ``if __name__ == "__main__":`` guard) stops the pool at once: the tasks not done count as failed and
    ``error`` says why."""
    t0 = time.monotonic()
    ran = failed = 0
    finished, error = True, ""
    pool = ProcessPoolExecutor(max(1, jobs), multiprocessing.get_context("spawn"), initializer, initargs)
    try:
        left = {pool.submit(_guarded, work, t) for t in tasks}
        while left:
            wait_s = seconds - (time.monotonic() - t0)
            if wait_s <= 0:
                finished = False
                break
            done, left = wait(left, timeout=wait_s, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    ok = f.result()
                except BrokenProcessPool as e:
                    ok, finished, error = False, False, f"a worker process died or could not start ({e})"
                ran, failed = ran + bool(ok), failed + (not ok)
            if error:
                failed += len(left)
                break
    finally:
        _end(pool)
    return PoolRun(ran, failed, time.monotonic() - t0, finished, error)


def _end(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: queued tasks cancelled, running ones' processes terminated (a compile may take
    seconds; the caller is about to time kernels), every process joined before returning. The processes and
    the pool's manager thread are taken before ``shutdown``, which drops its references to them (every
    process was started by ``submit``)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    if manager is not None:
        manager.join()
    for p in procs:
        p.join()


def _guarded(work, task) -> bool:
    try:
        return bool(work(task))
    except Exception:  # noqa: BLE001 - one task's failure is counted, not fatal; the timing pass says why
        return False
