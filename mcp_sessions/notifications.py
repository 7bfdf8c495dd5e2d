"""Telling MCP clients what changed: resource updates, list changes, turn logs and progress.

Any server process sharing the state folder may change a session, so changes come from the event
waiter (events.py), which hears this process at once and other processes through the store. Both
protocol eras are served: handshake-era connections get notifications on their standalone channel; 2026-07-28 clients
get them through the SDK's subscription bus (`subscriptions/listen`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.abc import TaskStatus
from mcp.server.mcpserver import Context
from mcp.server.session import ServerSession
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import LoggingLevel

from . import sdk
from .events import EventWaiter
from .models import Event
from .store import Store

if TYPE_CHECKING:
    from .manager import SessionManager

log = logging.getLogger(__name__)

LEVELS: tuple[LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
TURN_LOGS: dict[str, LoggingLevel] = {
    "turn.started": "info",
    "turn.completed": "info",
    "turn.interrupted": "warning",
    "turn.failed": "warning",
    "session.failed": "error",
}
PROGRESS_TEXT = 4096
T = TypeVar("T")


def session_uris(session_id: str) -> list[str]:
    return [f"session://{session_id}", f"session://{session_id}/transcript", f"session://{session_id}/events"]


def _session_of(uri: str) -> str | None:
    if not uri.startswith("session://"):
        return None
    return uri.removeprefix("session://").split("/", 1)[0] or None


def describe_event(session_id: str, event: Event) -> str:
    d = event.data
    if event.type == "turn.started":
        return f"{session_id}: turn {d.get('turn')} started: {str(d.get('text', ''))[:200]}"
    if event.type == "session.failed":
        return f"{session_id}: session failed: {d.get('reason')}"
    outcome = event.type.removeprefix("turn.")
    extra = [f"exit code {d['exit_code']}"] if d.get("exit_code") is not None else []
    if d.get("duration_s") is not None:
        extra.append(f"{d['duration_s']:.1f} s")
    if d.get("reason"):
        extra.append(str(d["reason"]))
    return f"{session_id}: turn {d.get('turn')} {outcome}" + (f" ({', '.join(extra)})" if extra else "")


class _Connection:
    """A handshake-era client connection: where its notifications go and which it wants."""

    def __init__(self, session: ServerSession, owner: str | None) -> None:
        self.session = session
        self.owner = owner
        """Whose sessions it hears about; None: every session (stdio)."""
        self.alive = sdk.connection_alive(session)  # no public disconnect hook: notice when it is collected
        self.level: LoggingLevel = "debug"
        self.uris: set[str] = set()


class ChangeFeed:
    """Follows every session's changes and notifies subscribers. Start `run()` in a task group for the
    server's lifetime."""

    def __init__(self, waiter: EventWaiter, store: Store, bus: SubscriptionBus) -> None:
        self._waiter = waiter
        self._store = store
        self._bus = bus
        self._connections: dict[int, _Connection] = {}

    # -- who listens ------------------------------------------------------------------------------

    def connection(self, session: ServerSession, owner: str | None = None) -> _Connection | None:
        """Remember a handshake-era connection (modern ones have no standalone channel) and whose it is."""
        if str(session.protocol_version) >= "2026":
            return None
        key = id(sdk.connection_of(session))
        known = self._connections.get(key)
        if known is None or known.alive() is not sdk.connection_of(session):
            known = self._connections[key] = _Connection(session, owner)
        return known

    def subscribe(self, session: ServerSession, uri: str, owner: str | None = None) -> None:
        conn = self.connection(session, owner)
        if conn is not None:
            conn.uris.add(uri)

    def unsubscribe(self, session: ServerSession, uri: str, owner: str | None = None) -> None:
        conn = self.connection(session, owner)
        if conn is not None:
            conn.uris.discard(uri)

    def set_level(self, session: ServerSession, level: LoggingLevel, owner: str | None = None) -> None:
        conn = self.connection(session, owner)
        if conn is not None:
            conn.level = level

    def _live_connections(self) -> list[_Connection]:
        for key in [k for k, c in self._connections.items() if c.alive() is None]:
            del self._connections[key]
        return list(self._connections.values())

    # -- watching ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start with `await task_group.start(feed.run)`: it returns once the feed knows what to report changes
        against, so a session created right after is reported (as a list change) like any other."""
        live: set[str] | None = None
        seqs: dict[str, int] = {}
        async for now_live, now_seqs in self._waiter.changes():
            if live is None:
                live, seqs = now_live, now_seqs
                task_status.started()
                continue
            subscribed = {sid for c in self._live_connections() for u in c.uris if (sid := _session_of(u))}
            try:
                if now_live != live:
                    await self._list_changed()
                for sid, seq in now_seqs.items():
                    if seq > seqs.get(sid, 0):
                        await self._session_changed(sid, seqs.get(sid, 0))
            except Exception as e:  # a full disk or a locked database must not end notifications
                log.warning("change feed: %s", e)
            # a session that just ended was reported above; keep following only live or subscribed ones
            live, seqs = now_live, {sid: seq for sid, seq in now_seqs.items() if sid in now_live or sid in subscribed}

    async def _list_changed(self) -> None:
        await self._bus.publish(ResourcesListChanged())
        for conn in self._live_connections():
            await self._send(conn, conn.session.send_resource_list_changed())

    async def _session_changed(self, session_id: str, after: int) -> None:
        for uri in session_uris(session_id):
            await self._bus.publish(ResourceUpdated(uri=uri))
        conns = self._live_connections()
        if any(c.owner is not None for c in conns):  # a caller hears only of its own sessions
            record = await self._store.get(session_id)
            owner = record.session.owner if record else None
            conns = [c for c in conns if c.owner is None or c.owner == owner]
        for conn in conns:
            for uri in session_uris(session_id):
                if uri in conn.uris:
                    await self._send(conn, conn.session.send_resource_updated(uri))
        if not conns:
            return
        for event in await self._store.events(session_id, after=after, limit=500):
            level = TURN_LOGS.get(event.type)
            if level is None:
                continue
            for conn in conns:
                if LEVELS.index(level) >= LEVELS.index(conn.level):
                    data = {"session_id": session_id, "event": event.type, "message": describe_event(session_id, event)}
                    with warnings.catch_warnings():  # deprecated in 2026-07-28, still what handshake-era clients use
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        sending = conn.session.send_log_message(level, data, logger="mcp-sessions")
                    await self._send(conn, sending)

    async def _send(self, conn: _Connection, sending: Awaitable[None]) -> None:
        try:
            await sending
        except Exception as e:  # a client that went away: forget it
            log.debug("dropping a connection that cannot be notified: %s", e)
            self._connections.pop(id(sdk.connection_of(conn.session)), None)


async def with_progress(ctx: Context, manager: SessionManager, session_id: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` while forwarding the session's new output to the caller as progress notifications.

    Callers that sent no progress token just get `work` done. Output is forwarded as it is written (a
    running turn writes its output every 0.2 s), so a turn that prints keeps the caller informed.
    """
    if not sdk.wants_progress(ctx):
        return await work()
    cursor = await manager.store.last_seq(session_id)
    seen = 0

    async def report(events: list[Event]) -> None:
        nonlocal cursor, seen
        if not events:
            return
        cursor = events[-1].seq
        text = "".join(e.data.get("text", "") for e in events if e.type == "tool.output")
        if text:
            seen += len(text)
            shown = text if len(text) <= PROGRESS_TEXT else "…" + text[-PROGRESS_TEXT:]
            await ctx.report_progress(seen, None, shown)

    async def follow() -> None:
        async for batch in manager.follow(session_id, cursor):
            await report(batch)

    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        try:
            value = await work()
        except Exception as e:  # re-raised below, outside the task group, so it is not wrapped in a group
            failure = e
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    await report(
        await manager.store.events(session_id, after=cursor, limit=500)
    )  # the last lines, so the progress stream is complete when the reply arrives
    return value
