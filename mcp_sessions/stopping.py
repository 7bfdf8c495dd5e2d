"""Stopping work: interrupting a running turn, closing (or deleting) a session and the tree below it."""

from __future__ import annotations

import logging

from sandbox_backends.base import SandboxError

from . import lifecycle, trees
from .errors import SessionClosed
from .mirror import read_only
from .models import CloseReply, InterruptReply, SessionRecord
from .session_core import ManagerCore
from .turns import turn_over

log = logging.getLogger(__name__)


class Stopping(ManagerCore):
    """interrupt and close_session."""

    async def interrupt(self, session_id: str, owner: str | None = None) -> InterruptReply:
        record = await self._record(session_id, owner)
        if reason := read_only(record):
            raise SessionClosed(reason)
        s = record.session
        if s.status != "busy":
            return InterruptReply(
                session_id=s.id,
                interrupted=False,
                status=s.status,
                message=f"Nothing is running in session '{s.id}' (status {s.status}); {await self.sandboxes.interrupt_idle(record)}",
            )
        turn = s.turns
        running = self.turns.running.get(session_id)
        if running is not None and running.turn == turn:
            running.stop("interrupted by the caller")
        else:

            def request(r: SessionRecord) -> None:
                r.interrupt_requested = True

            await self._update(session_id, request)
            try:
                await (await self.sandboxes.of(record)).interrupt()
            except SandboxError as e:
                log.warning("interrupting %s through its sandbox failed: %s", session_id, e)
        record = await self.turns.wait(session_id, turn, 10.0)
        stopped = turn_over(record.session, turn, record.queue)
        return InterruptReply(
            session_id=s.id,
            interrupted=stopped,
            turn=turn,
            status=record.session.status,
            message=(
                f"Turn {turn} was stopped; the session is {record.session.status}."
                if stopped
                else f"Turn {turn} was asked to stop but is still running; check again with get_session."
            ),
        )

    async def close(
        self, session_id: str, delete: bool = False, owner: str | None = None, keep_children: bool = False
    ) -> CloseReply:
        """Close (or delete) the session, then its descendants (none can be added once it is closed) unless keep_children."""
        record = await self._record(session_id, owner)
        reply = await self._close_one(record, delete)
        if not keep_children and (below := await trees.to_close(self.store, session_id, delete)):
            reply.closed_descendants, reply.message = await trees.close_all(
                self.store, below, lambda r: self._close_one(r, delete, closed_with=session_id), delete, reply.message
            )
        return reply

    async def _close_one(self, record: SessionRecord, delete: bool, **why: str) -> CloseReply:
        s, session_id = record.session, record.session.id
        self.turns.forget_samplers(session_id)
        dropped = len(record.queue)
        if dropped:

            def drop_queue(r: SessionRecord) -> None:
                r.queue.clear()

            await self._update(session_id, drop_queue)
        if s.status == "busy" and not read_only(record):  # a mirrored session is only marked closed here
            await self.interrupt(session_id)
        was_closed = s.status == "dead"
        if s.status == "paused":
            async with self._one_move(session_id):  # not halfway through a pause or resume of this process
                await self.sandboxes.free(await self._record(session_id), delete=delete)
        elif not was_closed or delete:
            await self.sandboxes.free(record, delete=delete)
        if delete:
            await self.store.delete(session_id)
            self.waiter.changed(session_id)
            return CloseReply(
                session_id=session_id,
                status="dead",
                deleted=True,
                message=f"Session '{session_id}' is closed and deleted with its transcript and workspace.",
            )
        if was_closed:
            return CloseReply(
                session_id=session_id, status="dead", deleted=False, message=f"Session '{session_id}' was already closed."
            )
        await self._update(session_id, lambda r: lifecycle.close(r, "closed", dropped_queued=dropped, **why))
        return CloseReply(
            session_id=session_id,
            status="dead",
            deleted=False,
            message=f"Session '{session_id}' is closed. Its transcript stays readable.",
        )
