"""Each control connection's share of the server: a byte budget per second, and turns for the others.

The server reads every sandbox's control stream on one event loop. A stream that always has data
would keep its reader running without ever yielding (a socket read that finds data does not wait),
and a sandbox writing tiny frames as fast as it can once delayed another session's 10 ms `echo` by
7.7 s. So a connection's reader yields after every `SLICE` of work, which gives every connection a
turn in the loop's order, and is held to `RATE` a second with `BURST` at once, so no sandbox can keep
the loop busy for long even when the others are idle. Work is counted in bytes read (at least
`FRAME_COST` for a read, however small) plus `FRAME_COST` a frame: what a tiny frame costs the server
is its parsing, not its size. A command costs about 32 KiB, a 1 MB file read about 1 MB: 64 of those fit in
the burst, and a sandbox writing tiny frames as fast as it can gets 4,096 a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

RATE = 64 << 20
"""Bytes a second a connection may make the server read, once its burst is spent."""
BURST = 64 << 20
FRAME_COST = 16 << 10
"""What a frame, and the least a read from the transport, is charged: 4,096 tiny frames a second at `RATE`."""
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

    def took(self, nbytes: int) -> None:
        """Charge a read from the transport: its bytes, and at least `FRAME_COST`."""
        self._charge(max(FRAME_COST, nbytes))

    def frame(self) -> None:
        """Charge a frame parsed (its bytes were charged as they were read)."""
        self._charge(FRAME_COST)

    def _charge(self, cost: int) -> None:
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
