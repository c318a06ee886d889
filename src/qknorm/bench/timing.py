"""Timers and the device's own yardsticks.

``time_graph``: the calls captured back to back in one CUDA graph, replayed many
times; per-call time = median replay time / calls. This is the device-side cost with
launch gaps squeezed out (how engines run decode).
``time_eager``: back-to-back calls from Python, synchronised at the end of each batch;
per-call time = median batch wall time / calls. It includes the host cost of a call
(argument checks, dispatch, launch), which dominates at small sizes. ``time_eager_rounds``
times several implementations of one case that way, interleaved batch by batch, so that
host drift does not decide a comparison.
Both take a list of callables and call them round robin: one callable (warm L2), or one
per input set (cold L2, see :func:`cold_sets`). Both size their call count from a first
estimate unless ``calls`` fixes it, and call ``before`` (if given) ahead of every timed batch or
replay: the tensor-parallel preset fixes the count on every rank (each call is a collective,
so the ranks must make the same number) and lines the ranks up there.

``measure_baselines``: device copy bandwidth (a large device-to-device copy, bytes read
plus written) and the time of an empty kernel, in the same run as the cases.
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext as _no_scope
from dataclasses import asdict, dataclass

import torch

GRAPH_TARGET_US = 2000.0   # a replay long enough that event resolution does not matter
GRAPH_MAX_CALLS = 1000
EAGER_TARGET_US = 20000.0
EAGER_MAX_CALLS = 5000
EAGER_ROUNDS = 15           # interleaved eager timing (several implementations): rounds ...
EAGER_ROUND_US = 4000.0     # ... of one batch this long per implementation
COLD_L2_FACTOR = 2          # rotate over buffers of at least this many times the L2 size
COLD_MAX_SETS = 8192        # cap on input sets (tiny cases cannot be made cold)


@dataclass
class Baselines:
    device: str
    is_cuda: bool
    copy_gbps: float
    empty_graph_us: float | None
    empty_eager_us: float | None
    l2_bytes: int
    sm_count: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(cuda: bool):
    if cuda:
        torch.cuda.synchronize()


def _rounds(calls: int, n: int) -> int:
    """``calls`` rounded up to a multiple of ``n`` (every input set equally often)."""
    return max(n, -(-calls // n) * n)


def time_graph(fns, replays: int = 20, target_us: float = GRAPH_TARGET_US,
               max_calls: int = GRAPH_MAX_CALLS, calls: int | None = None, before=None) -> float:
    """Median per-call µs of ``fns`` (round robin) captured in one CUDA graph (``calls`` of
    them if given, else sized to ``target_us``); ``before()`` runs ahead of each timed replay."""
    n = len(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if calls is None:
        # A short graph first, to size the real one from device time rather than host time.
        probe = _replay_us(_capture(fns, _rounds(min(10, max_calls), n)), 3) / _rounds(min(10, max_calls), n)
        calls = min(max_calls, max(4, math.ceil(target_us / max(probe, 0.5))))
    calls = _rounds(calls, n)
    g = _capture(fns, calls)
    return _replay_us(g, replays, before) / calls


def _capture(fns, calls: int):
    g = torch.cuda.CUDAGraph()
    n = len(fns)
    with torch.cuda.graph(g):
        for i in range(calls):
            fns[i % n]()
    g.replay()
    torch.cuda.synchronize()
    return g


def _replay_us(g, replays: int, before=None) -> float:
    times = []
    for _ in range(replays):
        if before is not None:
            before()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def time_eager(fns, cuda: bool, batches: int = 5, target_us: float = EAGER_TARGET_US,
               max_calls: int = EAGER_MAX_CALLS, calls: int | None = None, before=None) -> float:
    """Median per-call wall-clock µs of back-to-back calls (host cost included): batches of
    ``calls`` calls if given, else sized to ``target_us``; ``before()`` runs ahead of each batch."""
    return time_eager_rounds([fns], cuda, batches, target_us, max_calls, calls, before)[0]


def time_eager_rounds(fn_sets, cuda: bool, rounds: int = EAGER_ROUNDS, target_us: float = EAGER_ROUND_US,
                      max_calls: int = EAGER_MAX_CALLS, calls: int | None = None, before=None,
                      scopes=None) -> list[float]:
    """:func:`time_eager` of several implementations at once, one value per entry of ``fn_sets`` (each a
    list of callables, called round robin): every round times one batch of each, in turn (the order
    reversed every other round), and each gets the median over rounds. Drift on the host (clock
    speed, other work) then falls on every implementation alike instead of on whichever ran during
    it. ``scopes``: per entry, a context-manager factory entered around each of its batches."""
    sizes = []
    for i, fns in enumerate(fn_sets):
        with scopes[i]() if scopes else _no_scope():
            for f in fns:
                f()
            _sync(cuda)
            t0 = time.perf_counter()
            for f in fns:
                f()
            _sync(cuda)
        est = (time.perf_counter() - t0) / len(fns) * 1e6
        k = calls if calls is not None else min(max_calls, max(10, math.ceil(target_us / max(est, 0.1))))
        sizes.append(_rounds(k, len(fns)))
    per: list[list[float]] = [[] for _ in fn_sets]
    order = list(range(len(fn_sets)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            fns, k, n = fn_sets[i], sizes[i], len(fn_sets[i])
            with scopes[i]() if scopes else _no_scope():
                if before is not None:
                    before()
                t0 = time.perf_counter()
                for j in range(k):
                    fns[j % n]()
                _sync(cuda)
                per[i].append((time.perf_counter() - t0) / k * 1e6)
    return [statistics.median(p) for p in per]


def cold_sets(set_bytes: int, l2_bytes: int) -> int:
    """How many input sets to rotate over so that the rotation exceeds
    ``COLD_L2_FACTOR`` x L2 (capped at ``COLD_MAX_SETS``)."""
    return max(2, min(COLD_MAX_SETS, math.ceil(COLD_L2_FACTOR * l2_bytes / max(1, set_bytes))))


# --------------------------------------------------------------------------- baselines

_noop = None


def _empty_kernel():
    """A Triton kernel that does nothing: the floor of any launch."""
    global _noop
    if _noop is None:
        import triton

        @triton.jit
        def _bench_noop(x):
            pass
        _noop = _bench_noop
    return _noop


def copy_gbps(device, nbytes: int | None = None) -> float:
    """Device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    cuda = torch.device(device).type == "cuda"
    n = nbytes or ((512 << 20) if cuda else (64 << 20))
    a = torch.empty(n, dtype=torch.uint8, device=device)
    a.fill_(1)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _sync(cuda)
    times = []
    for _ in range(10 if cuda else 5):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            b.copy_(a)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) * 1e-3)
        else:
            t0 = time.perf_counter()
            b.copy_(a)
            times.append(time.perf_counter() - t0)
    return 2 * n / statistics.median(times) / 1e9


def measure_baselines(device) -> Baselines:
    """Copy bandwidth and empty-kernel times on ``device`` (empty kernel: GPU only)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    bw = copy_gbps(dev)
    if not cuda:
        return Baselines("cpu", False, bw, None, None, 0, 0)
    props = torch.cuda.get_device_properties(dev)
    l2 = int(getattr(props, "L2_cache_size", 0) or 50 << 20)
    empty_g = empty_e = None
    try:
        k, buf = _empty_kernel(), torch.empty(16, device=dev)
        fn = [lambda: k[(1,)](buf)]
        empty_g = time_graph(fn, replays=10, target_us=500.0)
        empty_e = time_eager(fn, True, batches=3, target_us=5000.0)
    except Exception:  # no Triton on this GPU stack: leave the floor unmeasured
        pass
    return Baselines(props.name, True, bw, empty_g, empty_e, l2, props.multi_processor_count)
