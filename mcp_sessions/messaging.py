"""Sending messages and reading a turn's reply: a turn is started (or queued behind the running one) in
one store update, run by `turns.py`, and answered from its own end when it ends within the wait."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from . import lifecycle, replies
from .agents.base import AsksCallersModel, SeesImages
from .errors import InvalidInput, PayloadTooLarge, SessionBusy, SessionClosed, SessionNotFound, StoreError
from .images import ImageInput, checked
from .mirror import read_only
from .models import Message, QueuedMessage, Session, SessionRecord, TurnReply
from .session_core import ManagerCore, _Orphaned, _Paused
from .store import EventSpec
from .turns import MAX_WAIT_S, check_can_send, turn_over

MAX_QUEUE = 100


class Messaging(ManagerCore):
    """send_message and the turn replies MCP tasks follow."""

    async def send(
        self,
        session_id: str,
        text: str,
        wait_s: float = 20.0,
        queue: bool = False,
        owner: str | None = None,
        sampler: Any = None,
        images: Sequence[ImageInput] = (),
    ) -> TurnReply:
        """`sampler` reaches the sending client's model; this message's turn (and only it) asks it. `images` go
        with the message to agents that see them; others refuse the message before its turn starts."""
        if not text.strip():
            raise InvalidInput("The message is empty. Send the text (for the shell agent, a bash script) to run.")
        size = len(text.encode())
        if size > self.settings.max_message_bytes:
            raise PayloadTooLarge(
                f"The message is {size} bytes, over this server's limit of {self.settings.max_message_bytes}. "
                "Write large inputs into the workspace as files and send a short message that uses them."
            )
        blocks = checked(images)
        turns = self.turns
        messages: list[Message] = []
        placed: dict[str, int] = {}

        def start(r: SessionRecord) -> list[EventSpec]:
            s = r.session
            if owner is not None and s.owner != owner:
                raise SessionNotFound(s.id)
            if self._orphaned(r):
                raise _Orphaned()
            if s.status == "paused":
                raise _Paused(r)
            if reason := read_only(r):
                raise SessionClosed(reason)
            agent = self._agents.get(s.agent)
            if isinstance(agent, AsksCallersModel) and (why := agent.cannot_ask(r.agent_options, sampler)):
                raise InvalidInput(why)
            if blocks:
                self._check_sees_images(s, queue)
            if queue and s.status == "busy":
                if len(r.queue) >= MAX_QUEUE:
                    raise SessionBusy(
                        f"Session '{s.id}' already has {MAX_QUEUE} queued messages. Wait for them with get_session."
                    )
                r.queue.append(QueuedMessage(text=text))
                placed["turn"], placed["position"] = s.turns + len(r.queue), len(r.queue)
                queued = {"turn": placed["turn"], "position": len(r.queue), "text": lifecycle.shorten(text, 2000)}
                return [("turn.queued", queued)]
            if why := turns.unrecorded(s):
                raise StoreError(why)
            check_can_send(s, turns.running.get(s.id))
            placed["turn"] = s.turns + 1
            return turns.begin(r, text, messages, blocks)

        try:
            record, _ = await self._update(session_id, start, messages)
        except _Orphaned:  # a turn left by a dead server: finish it, then start ours
            await self._record(session_id, owner)
            record, _ = await self._update(session_id, start, messages)
        except _Paused as paused:  # its next use resumes it
            await self._resume(paused.record)
            record, _ = await self._update(session_id, start, messages)
        if sampler is not None:
            turns.samplers[(session_id, placed["turn"])] = sampler
        if "position" not in placed:
            running = turns.spawn(record, text, blocks)
            with anyio.move_on_after(min(max(wait_s, 0.0), MAX_WAIT_S)):
                await running.done.wait()
            if running.ended is not None:  # the usual quick turn: answered from its own end
                record, cursor = running.ended
                return await self._reply(record, placed["turn"], cursor)
            wait_s = 0  # waited already: the turn is still running (or its end could not be recorded)
        record = await turns.wait(session_id, placed["turn"], wait_s)
        return await self._reply(record, placed["turn"])

    def _check_sees_images(self, s: Session, queue: bool) -> None:
        """Refuse a message with images that its session's agent cannot see, or that would wait in the queue (the
        queue is kept in the session's record, read at every look at the session: no place for megabytes)."""
        if not isinstance(self._agents.get(s.agent), SeesImages):
            seeing = sorted(name for name, agent in self._agents.items() if isinstance(agent, SeesImages))
            raise InvalidInput(
                f"The {s.agent} agent of session '{s.id}' cannot see images, so the message was not sent: send its "
                f"text without images, or create a session with an agent that sees them ({', '.join(seeing) or 'none here'})."
            )
        if queue and s.status == "busy":
            raise SessionBusy(
                f"Session '{s.id}' is busy running turn {s.turns}, and a message with images cannot wait in the queue. "
                f"Wait for the turn with get_session(session_id='{s.id}', wait_s=30), then send it again."
            )

    async def turn(self, session_id: str, turn: int, wait_s: float = 0.0, owner: str | None = None) -> TurnReply:
        """One turn's reply, as send_message gives it: where the turn stands (queued, running, with its output
        so far) or how it ended; waits up to `wait_s` for it to end. An MCP task follows its turn through this."""
        record = await self._record(session_id, owner)
        s = record.session
        if not 1 <= turn <= s.turns + len(record.queue) and not (turn > s.turns and turn_over(s, turn)):
            raise InvalidInput(f"Session '{session_id}' has no turn {turn}: it has had {s.turns}.")
        if wait_s > 0 and not turn_over(s, turn, record.queue):
            record = await self.turns.wait(session_id, turn, wait_s)
        return await self._reply(record, turn)

    async def _reply(self, record: SessionRecord, turn: int, cursor: int | None = None) -> TurnReply:
        return await replies.turn_reply(self.store, record, turn, self.turns.running.get(record.session.id), cursor)
