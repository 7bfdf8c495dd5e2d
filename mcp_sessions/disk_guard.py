"""Workspace size limits that no filesystem enforces: measured around turns, and the turn that passes one fails.

A sandbox whose limit is kept by a filesystem of its own needs nothing from here (a write past it fails).
One that is a `MeasuresDisk` is asked for its use:
- while a turn runs, every `CHECK_S`: the turn is stopped, failed with the reason, once it has taken the
  workspace past its limit (or, for a turn that began over it, past the size it began with: a turn
  deleting files must be able to run);
- when a turn ends: a completed turn that left the workspace over its limit fails with the reason.
The session stays usable: the next turn runs as usual, so the caller can delete files.

Measuring a large tree takes a while (in a docker sandbox 50,000 files take about 75 ms, a few 0.3 ms), so a
sandbox within its limit is not measured again until `COST_RATIO` times its last measurement's cost has
passed: measuring takes at most a tenth of the time. A turn that ends within that window is judged at
the next measurement. One found over its limit is measured at the end of every turn until it is not.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio

from sandbox_backends.base import DiskUse, MeasuresDisk, SandboxError

from .agents.base import TurnOutcome

log = logging.getLogger(__name__)

CHECK_S = 1.0
COST_RATIO = 10.0


@dataclass
class _Measured:
    at: float = -math.inf
    cost: float = 0.0
    use: DiskUse | None = None


def over_limit(outcome: TurnOutcome, reason: str) -> TurnOutcome:
    """The outcome of a turn that left the workspace over its limit: a completed turn fails with the reason, a
    failed one has it added; an interrupted one stays as it is."""
    if outcome.status == "completed":
        return replace(outcome, status="failed", reason=reason)
    if outcome.status == "failed":
        return replace(outcome, reason=f"{outcome.reason}; {reason}" if outcome.reason else reason)
    return outcome


def passed(use: DiskUse, before: DiskUse) -> str | None:
    """Why a running turn must stop: it took the workspace from `before` to `use` past its limit (or hid a folder
    from the measurement); None if not, or if it only has not deleted enough yet."""
    reason = use.over()
    if reason is None:
        return None
    if use.unreadable is not None:
        return reason if before.unreadable is None else None
    return reason if use.used_mb > max(before.used_mb, use.limit_mb) else None


class DiskGuard:
    """Measures the workspaces of sandboxes that are `MeasuresDisk`, at most once per window each."""

    def __init__(self) -> None:
        self._measured: weakref.WeakKeyDictionary[Any, _Measured] = weakref.WeakKeyDictionary()

    async def _measure(self, sandbox: MeasuresDisk, *, if_over: bool = False) -> DiskUse | None:
        """Its use now, or None if it was measured too recently (unless `if_over` and it was over then), has nothing
        to measure, or cannot be reached."""
        last = self._measured.setdefault(sandbox, _Measured())
        was_over = last.use is not None and last.use.over() is not None
        if time.monotonic() - last.at < last.cost * COST_RATIO and not (if_over and was_over):
            return None
        started = time.monotonic()
        try:
            use = await sandbox.disk_use()
        except (SandboxError, OSError) as e:  # the turn fails or goes on for its own reasons, not for a meter that failed
            log.warning("cannot measure a workspace: %s", e)
            use = None
        last.at, last.cost = time.monotonic(), time.monotonic() - started
        if use is not None:
            last.use = use
        return use

    async def after_turn(self, sandbox: object) -> str | None:
        """Why the turn that just ended must fail (the workspace is over its limit), or None."""
        if not isinstance(sandbox, MeasuresDisk):
            return None
        use = await self._measure(sandbox, if_over=True)
        return use.over() if use is not None else None

    async def watch(self, sandbox: object, stop: Callable[[str], None]) -> None:
        """While a turn runs (cancelled when it ends): `stop(reason)` once the turn takes the workspace past its limit."""
        if not isinstance(sandbox, MeasuresDisk):
            return
        known = self._measured.get(sandbox)
        before = known.use if known is not None else None
        while True:
            last = self._measured.get(sandbox)
            await anyio.sleep(max(CHECK_S, last.cost * COST_RATIO if last else 0.0))
            use = await self._measure(sandbox)
            if use is None:
                continue
            if before is None:  # the first measurement of this sandbox here (say, after a restart): the baseline
                before = use
                continue
            if (reason := passed(use, before)) is not None:
                stop(reason)
                return
