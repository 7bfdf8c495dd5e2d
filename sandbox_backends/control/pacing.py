"""Each control connection's share of the server: a byte budget per second, and turns for the others.

The server reads every sandbox's control stream on one event loop. A stream that always has data
would keep its reader running without ever yielding (a socket read that finds data does not wait),
and a sandbox writing tiny frames as fast as it can once delayed another session's 10 ms `echo` by
7.7 s. So a connection's reader yields after every `SLICE` of work, which gives every connection a
turn in the loop's order, and is held to `RATE` a second with `BURST` at once, so no sandbox can keep
the loop busy for long even when the others are idle. Work is counted in bytes, and every frame or
read counts as at least `FRAME_COST` bytes: what a tiny frame costs the server is its parsing, not
its size. The ordinary command needs two frames, and a 1 MB file read fits many times in the burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

RATE = 32 << 20
"""Bytes a second a connection may make the server read, once its burst is spent."""
BURST = 64 << 20
FRAME_COST = 16 << 10
"""The least a frame (or a read from the transport) is charged: about 2,000 tiny frames a second at `RATE`."""
SLICE = 1 << 20
"""Work after which the reader lets the other tasks run: 64 tiny frames, or one output chunk."""


class Pacer:
    """The budget of one connection's reader (see the module docstring)."""

    def __init__(
        self,
        rate: float = RATE,
        burst: float = BURST,
        slice_: int = SLICE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.slice = slice_
        self._clock = clock
        self._credit = float(burst)
        self._at = clock()
        self._used = 0

    def charge(self, cost: int) -> None:
        self._credit -= cost
        self._used += cost

    @property
    def spent(self) -> bool:
        """Whether the reader should stop and call `pace` before it takes more."""
        return self._used >= self.slice or self._credit < 0

    async def pace(self) -> None:
        """Let the others run if this slice is used up, and wait while the budget is overdrawn."""
        if self._used >= self.slice:
            self._used = 0
            await anyio.lowlevel.checkpoint()
        self._refill()
        if self._credit < 0:
            await anyio.sleep(-self._credit / self.rate)
            self._refill()
            self._credit = max(self._credit, 0.0)

    def _refill(self) -> None:
        now = self._clock()
        self._credit = min(self.burst, self._credit + (now - self._at) * self.rate)
        self._at = now
