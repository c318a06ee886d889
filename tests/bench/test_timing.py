"""Timers: the interleaved eager timing calls each implementation's batches in turn, inside its
scope, and gives one value per implementation (what the values are is wall clock: not asserted)."""
import contextlib

from qknorm.bench.timing import time_eager, time_eager_rounds


def test_time_eager_rounds_interleaves_batches_in_their_scopes():
    log = []

    def fn(name):
        return lambda: log.append((name, scope_of[0]))

    scope_of = [None]

    def scope(name):
        @contextlib.contextmanager
        def enter():
            scope_of[0] = name
            yield
            scope_of[0] = None
        return enter

    a, b = [fn("a0"), fn("a1")], [fn("b")]
    us = time_eager_rounds([a, b], False, rounds=4, calls=3, scopes=[scope("A"), scope("B")])
    assert len(us) == 2 and all(u > 0 for u in us)
    assert all(s == {"a0": "A", "a1": "A", "b": "B"}[n] for n, s in log), "every call inside its own scope"
    timed = log[2 * len(a) + 2 * len(b):]  # after each set's warm-up and estimate (one pass over its callables each)
    i, firsts = 0, []
    for r in range(4):  # a then b, then b then a: the order reverses every other round
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for who in order:
            k = 4 if who == "a" else 3  # a: 3 calls rounded up to a multiple of its 2 callables
            chunk = timed[i:i + k]
            assert len(chunk) == k and all(n.startswith(who) for n, _ in chunk), (r, who, chunk)
            i += k
        firsts.append(order[0])
    assert i == len(timed) and firsts == ["a", "b", "a", "b"]


def test_time_eager_is_the_one_set_case():
    calls = []
    assert time_eager([lambda: calls.append(1)], False, batches=3, calls=5) > 0
    assert len(calls) == 2 + 3 * 5  # warm-up, estimate, then 3 batches of 5
