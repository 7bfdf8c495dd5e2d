"""Reading sessions: one session with its recent events, its events as they come, pages of sessions,
the transcript, and workspace files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import anyio

from sandbox_backends.base import SandboxNotFound

from . import replies, trees
from .errors import InvalidInput, SessionBusy, SessionClosed, SessionNotFound
from .images import without_data
from .models import LIVE_STATUSES, Event, Message, SessionDetail, SessionPage, SessionRecord, SessionSummary
from .session_core import ManagerCore
from .transcript import render_transcript
from .turns import MAX_WAIT_S, TURN_END_EVENTS

FOLLOW_PAGE = 500


class Reading(ManagerCore):
    """get_session, list_sessions, the event stream, transcripts and files."""

    async def get(
        self, session_id: str, wait_s: float = 0.0, events_after: int | None = None, owner: str | None = None
    ) -> SessionDetail:
        record = await self._record(session_id, owner)
        if self.mirror is not None:
            record = await self.mirror.refresh(record)
        s = record.session
        if wait_s > 0 and s.status in ("busy", "creating"):
            record = await self._wait_until_settled(session_id, s.status, s.turns, wait_s)
            s = record.session
        if s.status == "busy" and s.last_turn is not None and s.last_turn.status == "running":  # its output so far
            output, total, cut = await replies.output_so_far(
                self.store, session_id, s.last_turn.turn, self.turns.running.get(session_id), self.settings.max_output_bytes
            )
            s.last_turn = s.last_turn.model_copy(update={"output": output, "output_bytes": total, "output_cut_bytes": cut})
        events, note = await replies.event_batch(self.store, session_id, events_after)
        cursor = events[-1].seq if events else (events_after if events_after is not None else await self.store.last_seq(s.id))
        return SessionDetail(
            session=s,
            queued=[q.text for q in record.queue],
            recent_messages=without_data(await self.store.messages(session_id, last=4)),
            events=events,
            events_cursor=cursor,
            events_note=note,
            **await trees.tree_view(self.store, s),
            next_step=self.turns.unrecorded(s) or replies.next_step(s, cursor),
        )

    async def _wait_until_settled(self, session_id: str, status: str, turn: int, wait_s: float) -> SessionRecord:
        if status == "busy":
            return await self.turns.wait(session_id, turn, wait_s)
        deadline = anyio.current_time() + min(wait_s, MAX_WAIT_S)
        while True:
            cursor = await self.store.last_seq(session_id)
            record = await self._record(session_id)
            remaining = deadline - anyio.current_time()
            if record.session.status != "creating" or remaining <= 0:
                return record
            await self.waiter.wait(session_id, cursor, remaining)

    async def follow(
        self, session_id: str, after: int = 0, owner: str | None = None, idle_s: float | None = None
    ) -> AsyncIterator[list[Event]]:
        """The session's events after `after`, in batches as they are written, until it has ended and its last
        events are given (or it is deleted). With `idle_s`, an empty batch after that long without events."""
        cursor = after
        while True:
            try:
                # State first: a change of state and its events are written together, so once the session has
                # ended the events read next include the last ones.
                ended = (await self._record(session_id, owner)).session.has_ended()
            except SessionNotFound:
                return
            batch = await self.store.events(session_id, after=cursor, limit=FOLLOW_PAGE)
            if batch:
                cursor = batch[-1].seq
                yield batch
                if len(batch) == FOLLOW_PAGE:
                    continue
            if ended:
                return
            seq = await self.waiter.wait(session_id, cursor, idle_s if idle_s is not None else MAX_WAIT_S)
            if seq <= cursor and idle_s is not None:
                yield []

    async def list_sessions(
        self,
        *,
        statuses: list[str] | None = None,
        tags: list[str] | None = None,
        driver: str | None = None,
        agent: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        owner: str | None = None,
        parent: str | None = None,
    ) -> SessionPage:
        if not 1 <= limit <= 200:
            raise InvalidInput(f"limit must be between 1 and 200, not {limit}.")
        rows, total, next_cursor = await self.store.query(
            statuses=statuses,
            tags=tags,
            driver=driver,
            agent=agent,
            owner=owner,
            parent=parent,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        return SessionPage(sessions=rows, total=total, next_cursor=next_cursor)

    async def live_sessions(self, owner: str | None = None) -> list[SessionSummary]:
        page = await self.store.query(statuses=list(LIVE_STATUSES), owner=owner, limit=200)
        return page[0]

    async def transcript(self, session_id: str, owner: str | None = None) -> str:
        """The whole conversation as readable text, with each turn's outcome."""
        record = await self._record(session_id, owner)
        messages = await self.store.messages(session_id)
        ends = await self.store.events_of_type(session_id, TURN_END_EVENTS)
        return render_transcript(record.session, messages, ends)

    async def messages(self, session_id: str, owner: str | None = None, from_turn: int | None = None) -> list[Message]:
        """The whole conversation, oldest first (`from_turn`: the messages of that turn and later)."""
        await self._record(session_id, owner)
        return await self.store.messages(session_id, from_turn=from_turn)

    async def events(self, session_id: str, after: int = 0, limit: int = 1000, owner: str | None = None) -> list[Event]:
        await self._record(session_id, owner)
        return await self.store.events(session_id, after=after, limit=limit)

    async def read_file(self, session_id: str, path: str, owner: str | None = None) -> bytes:
        record = await self._record(session_id, owner)
        if record.session.status == "paused":
            record = await self._resume(record)
        if record.session.status in ("creating",) or record.sandbox_id is None:
            raise SessionBusy(f"Session '{session_id}' has no workspace yet (status {record.session.status}).")
        try:
            sandbox = await self.sandboxes.of(record)
        except SandboxNotFound as e:
            raise SessionClosed(f"The sandbox of session '{session_id}' is gone ({e}); its files cannot be read.") from e
        return await sandbox.read_file(path, self.settings.max_file_bytes)
