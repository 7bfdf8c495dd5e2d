"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

Op = Callable[[], Awaitable[Any]]


async def _sample(fn: Op, between: Op | None) -> float:
    if between is not None:
        await between()
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def timed(n: int, fn: Op, warmup: int = 0, between: Op | None = None) -> list[float]:
    """`n` timings of `fn` in seconds, after `warmup` untimed calls; `between` runs before every call."""
    for _ in range(warmup):
        await fn()
    return [await _sample(fn, between) for _ in range(n)]


async def interleaved(
    n: int, ours: Op, baseline: Op, warmup: int = 1, between: Op | None = None, block: int = 1
) -> tuple[list[float], list[float]]:
    """Time `ours` and `baseline` in alternating blocks of `block` calls, `n` samples each, in seconds.

    These machines speed up and slow down over minutes; alternating (and swapping which goes first)
    puts both under the same conditions, so their ratio means something even when the medians drift.
    Blocks longer than 1 time each side back to back, as a caller sending one call after another sees it;
    `between` (say, a sleep) runs before every call.
    """
    for _ in range(warmup):
        await ours()
        await baseline()
    a: list[float] = []
    b: list[float] = []
    sides = [(ours, a), (baseline, b)]
    while len(a) < n or len(b) < n:
        for fn, into in sides:
            for _ in range(min(block, n - len(into))):
                into.append(await _sample(fn, between))
        sides.reverse()
    return a, b
