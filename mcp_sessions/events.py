"""One way to wait for a session's events after a cursor, in this process and across processes.

Everything observable about a session is an event first (a status change, a turn's output, its end), so
"has anything happened since seq N" is the one question every follower asks: a long-poll waiting for a
turn to end, the REST event stream, `mcp-sessions events --follow`, progress notifications, resource
subscriptions. They all ask `EventWaiter`:

- a change made by this process wakes its waiters at once (`changed()`, called after every write);
- a change made by another server process sharing the store is seen by one poll of the store's change
  feed (`Store.live_and_latest`) per tick for all waiters together, not one poll per follower. A tick
  is `POLL_S` on SQLite; PostgreSQL ends it as soon as another server commits a change (LISTEN/NOTIFY).

`changes()` serves followers of every session at once (resource subscriptions): a snapshot of the live
sessions and their last seqs each time it differs from the last one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskStatus

from .store import Store

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often the store is asked for changes made by other processes, while anyone waits."""

Snapshot = tuple[set[str], dict[str, int]]
"""(ids of live sessions, last event seq of each of those and of every session someone waits on)."""


class EventWaiter:
    """Start `run()` in a task group for the process's lifetime; call `changed()` after writing a session."""

    def __init__(self, store: Store, poll_s: float = POLL_S) -> None:
        self._store = store
        self._poll_s = poll_s
        self._wakers: dict[str, anyio.Event] = {}
        self._watching: Counter[str] = Counter()
        self._seen: dict[str, int] = {}
        self._listeners = 0
        self._snapshot: Snapshot | None = None
        self._new_snapshot = anyio.Event()

    def changed(self, session_id: str) -> None:
        """This process wrote to the session: whoever waits on it looks again now."""
        waker = self._wakers.pop(session_id, None)
        if waker is not None:
            waker.set()

    async def wait(self, session_id: str, after: int, timeout: float) -> int:
        """Wait until the session has an event after `after`, or `timeout` seconds; the last seq then."""
        deadline = anyio.current_time() + max(timeout, 0.0)
        self._watching[session_id] += 1
        try:
            while True:
                waker = self._wakers.setdefault(session_id, anyio.Event())  # before reading: no change slips between
                seq = await self._store.last_seq(session_id)
                remaining = deadline - anyio.current_time()
                if seq > after or remaining <= 0:
                    return seq
                with anyio.move_on_after(remaining):
                    await waker.wait()
        finally:
            self._watching[session_id] -= 1
            if not self._watching[session_id]:
                del self._watching[session_id]

    async def wait_change(self, session_id: str, timeout: float) -> None:
        """Wait until the session changes (a new event, here or in another process), or `timeout` seconds."""
        await self.wait(session_id, await self._store.last_seq(session_id), timeout)

    async def changes(self) -> AsyncIterator[Snapshot]:
        """Every session at once: the current snapshot, then each one that differs from the one before."""
        self._listeners += 1
        try:
            if self._snapshot is None:
                self._snapshot = await self._store.live_and_latest(set(self._watching))
            last = self._snapshot
            yield last
            while True:
                waker = self._new_snapshot
                await waker.wait()
                if self._snapshot is not None and self._snapshot != last:
                    last = self._snapshot
                    yield last
        finally:
            self._listeners -= 1

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Poll for changes made by other processes while anyone waits. Start with `task_group.start`."""
        task_status.started()
        failing = False
        while True:
            await self._store.wait_for_change(self._poll_s)
            if not self._watching and not self._listeners:
                continue
            try:
                snapshot = await self._store.live_and_latest(set(self._watching))
            except Exception as e:  # a full disk or a locked database must not end following
                if not failing:
                    log.warning("cannot read the store's changes (trying again every %g s): %s", self._poll_s, e)
                failing = True
                continue
            failing = False
            _, seqs = snapshot
            for session_id, seq in seqs.items():
                if seq != self._seen.get(session_id):
                    self._seen[session_id] = seq
                    self.changed(session_id)
            self._seen = {sid: seq for sid, seq in self._seen.items() if sid in seqs}
            if snapshot != self._snapshot:
                self._snapshot = snapshot
                self._new_snapshot.set()
                self._new_snapshot = anyio.Event()
