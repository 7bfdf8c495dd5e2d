"""What every part of the session manager stands on: its state, the one way to change a record (`_update`),
the one way to read one (`_record`, which first finishes a turn a dead server left: recovery).

The manager is split by what callers do (`provisioning`, `messaging`, `reading`, `stopping`, ...); each
part is a class on top of `ManagerCore`, and `manager.SessionManager` puts them together. An operation is
added as a module of its own beside them, not by growing one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from sandbox_backends.base import Driver, SandboxError

from . import leases, lifecycle
from .agents.base import Agent, TurnOutcome
from .errors import SessionNotFound
from .events import EventWaiter
from .mirror import Mirror
from .models import Event, Message, SessionRecord, TextBlock
from .plugins import Catalog
from .sandboxes import Sandboxes
from .settings import Settings
from .store import EventSpec, Store
from .turns import Turns

log = logging.getLogger(__name__)


class _Orphaned(Exception):
    """Raised inside a store update that found a session held by a dead server; nothing is written."""


class _Paused(Exception):
    """Raised inside a store update that found the session paused; nothing is written, the caller resumes it."""

    def __init__(self, record: SessionRecord) -> None:
        self.record = record


class ManagerCore:
    """The state and plumbing the manager's parts share. Made by `SessionManager`; opened with `async with`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: Catalog,
        make_driver: Callable[[str], Driver],
        agents: dict[str, Agent],
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.waiter = EventWaiter(store)
        self._make_driver = make_driver
        self._agents = agents
        self._lease = leases.this_process()
        self._tg: TaskGroup | None = None
        self._sandboxes: Sandboxes | None = None
        self._turns: Turns | None = None
        self._admit = anyio.Lock()
        self._moving: dict[str, anyio.Lock] = {}
        """Per session, while it is being paused, resumed or closed paused by this process (`_one_move`)."""
        self.mirror: Mirror | None = None
        """Keeps the sessions of read-only platforms in the store (mirror.py); set by whoever opens the manager."""

    @property
    def sandboxes(self) -> Sandboxes:
        assert self._sandboxes is not None, "use the manager as `async with`"
        return self._sandboxes

    @property
    def turns(self) -> Turns:
        assert self._turns is not None, "use the manager as `async with`"
        return self._turns

    # -- plumbing ---------------------------------------------------------------------------------

    async def _update(
        self, session_id: str, mutate: Callable[[SessionRecord], list[EventSpec] | None], messages: Sequence[Message] = ()
    ) -> tuple[SessionRecord, list[Event]]:
        try:
            result = await self.store.update(session_id, mutate, messages)
        except KeyError:
            raise SessionNotFound(session_id) from None
        self.waiter.changed(session_id)
        return result

    async def _record(self, session_id: str, owner: str | None = None) -> SessionRecord:
        """The stored record, with a turn orphaned by a dead server finished first."""
        record = await self.store.get(session_id)
        if record is None or (owner is not None and record.session.owner != owner):
            raise SessionNotFound(session_id)
        if self._orphaned(record):
            record = await self._adopt(record)
        return record

    @asynccontextmanager
    async def _one_move(self, session_id: str) -> AsyncIterator[None]:
        """One pause, resume or close of a paused session at a time in this process."""
        lock = self._moving.setdefault(session_id, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._moving.pop(session_id, None)

    async def _resume(self, record: SessionRecord) -> SessionRecord:
        """The session ready again if it is paused; pausing.py does it."""
        raise NotImplementedError

    def _orphaned(self, record: SessionRecord) -> bool:
        """True if a server process that died holds this session's turn or creation."""
        return bool(record.lease and record.lease != self._lease and not self.store.lease_alive(record.lease))

    # -- recovery ---------------------------------------------------------------------------------

    async def recover(self, statuses: Sequence[str] = ("creating", "busy", "paused", "failed")) -> None:
        """Finish what a dead server process left half done: running turns and creations."""
        for record in await self.store.with_status(statuses):
            if self._orphaned(record):
                await self._adopt(record)

    async def _adopt(self, record: SessionRecord) -> SessionRecord:
        s = record.session
        dead_lease = record.lease
        log.info("taking over %s (%s) from a server that is gone", s.id, s.status)
        if s.status == "paused":  # a pause or resume it left half done: taken as paused, the next use resumes it
            record, _ = await self._update(
                s.id, lambda r: lifecycle.set_paused_phase(r, "paused") if r.lease == dead_lease else []
            )
            return record
        if s.status == "creating":

            def fail(r: SessionRecord) -> list[EventSpec]:
                if r.lease != dead_lease:
                    return []
                return lifecycle.fail(r, "server restarted while the session was being created")

            record, _ = await self._update(s.id, fail)
            return record
        result = None
        try:
            result = await (await self.sandboxes.of(record)).take_over()
        except SandboxError as e:
            log.warning("cannot reach the sandbox of %s: %s", s.id, e)
        outcome = TurnOutcome(status="interrupted", content=[], reason="server restarted")
        if result is not None:
            outcome.content = [TextBlock(text=result.output)]
            outcome.exit_code, outcome.output = result.exit_code, result.output
            outcome.output_bytes, outcome.output_cut_bytes = result.output_bytes, result.cut_bytes
        return (await self.turns.finish(s.id, s.turns, dead_lease, outcome))[0]
