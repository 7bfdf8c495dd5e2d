"""Forking: a new session (new id, new sandbox) that starts from where another one is, to try something
else from the same state while the source goes on.

The fork's workspace is a copy of the source's, and its shell starts with the source's cwd and exported
environment (the driver's `Forks`: docker copies the volume in a helper container without stopping the
source; local makes a reflink copy where the filesystem allows). Its conversation is the source's up to
its last finished turn, copied message by message: the llm agent reads it as its history, the shell
agent's transcript shows it, and the fork's turns are numbered on from there. With `at_turn`, the fork
starts from the source's checkpoint of that turn instead (checkpoints.py): its workspace and shell state,
and the conversation up to that turn. A busy source's running
turn is not copied and not disturbed; a paused source is resumed first (its sandbox is what is copied).

The fork is a child of its source (`parent_session_id`): it is listed under it, its usage counts in the
source's tree and the source's budgets bind it, and closing the source closes it unless kept. Its own
usage starts at zero. Mirrored sessions cannot be forked: their workspace is on a platform that runs
them; neither can sessions of a driver that does not fork (remote platforms).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable

import anyio

from sandbox_backends.base import Forks, Sandbox

from .errors import Conflict, SessionBusy, SessionClosed
from .mirror import read_only
from .models import Session, SessionRecord, Usage, new_message_id, new_session_id, now
from .provisioning import Provisioning
from .turns import MAX_WAIT_S

log = logging.getLogger(__name__)


class Forking(Provisioning):
    """fork_session."""

    async def fork(
        self,
        session_id: str,
        *,
        title: str | None = None,
        at_turn: int | None = None,
        owner: str | None = None,
        wait_s: float = 30.0,
    ) -> Session:
        """A new session from where `session_id` is, or was at turn `at_turn` (its latest checkpoint of that turn;
        see the module docstring); waits up to `wait_s` for it."""
        source = await self._record(session_id, owner)
        s = source.session
        if reason := read_only(source):
            raise Conflict(f"Session '{s.id}' is mirrored from another platform and cannot be forked: {reason}")
        if not isinstance(self.sandboxes.driver(s.driver), Forks):
            raise Conflict(
                f"Sessions of the {s.driver} driver cannot be forked (their sandboxes cannot be copied). "
                "Create a new session instead."
            )
        if s.status in ("failed", "dead"):
            raise SessionClosed(
                f"Session '{s.id}' is {'closed' if s.status == 'dead' else 'failed'}: only a live session can be forked. "
                "Create a new session instead."
            )
        if s.status == "creating":
            raise SessionBusy(f"Session '{s.id}' is still being created. Wait with get_session(wait_s=30), then fork it.")
        finished = s.turns - 1 if s.last_turn is not None and s.last_turn.status == "running" else s.turns
        at: tuple[str, bytes] | None = None
        if at_turn is not None:
            saved = next((c for c in reversed(source.checkpoints) if c.turn == at_turn), None)
            if saved is None:
                have = ", ".join(f"{c.name!r} at turn {c.turn}" for c in source.checkpoints) or "none"
                raise Conflict(
                    f"Session '{s.id}' has no checkpoint of turn {at_turn} to fork from (it has: {have}). Leave at_turn "
                    "out to fork it as it is now, or make checkpoints with checkpoint_session as you go."
                )
            finished, at = saved.turn, (saved.key, base64.b64decode(saved.state))
        if s.status == "paused":
            source = await self._resume(source)
        record = self._forked_record(source, title)
        await self._check_owner_limit(owner)
        copied = [
            m.model_copy(update={"id": new_message_id()})
            for m in await self.store.messages(s.id, kept_only=True)
            if m.turn <= finished
        ]
        new = record.session
        new.turns = new.forked_turns = finished
        created = {"driver": new.driver, "agent": new.agent, "title": new.title, "forked_from": s.id, "at_turn": finished}
        async with self._admit:
            await self.store.insert(record, [("session.created", created), ("phase", {"phase": "queued"})])
        if copied:
            await self._update(new.id, lambda r: None, copied)

        def make(phase: Callable[[str, str], Awaitable[None]]) -> Awaitable[Sandbox]:
            return self.sandboxes.fork(source, record, phase, at)

        done = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._provision, record, {}, done, make)
        with anyio.move_on_after(min(wait_s, MAX_WAIT_S)):
            await done.wait()
        return (await self._record(new.id)).session

    def _forked_record(self, source: SessionRecord, title: str | None) -> SessionRecord:
        """The new session's record: the source's settings, a new id, under the source, with nothing run yet."""
        s = source.session
        session = s.model_copy(
            deep=True,
            update={
                "id": new_session_id(),
                "title": title if title is not None else (f"{s.title} (fork)" if s.title else None),
                "status": "creating",
                "phase": "queued",
                "phase_detail": None,
                "failure_reason": None,
                "close_reason": None,
                "started_at": None,
                "finished_at": None,
                "last_response": [],
                "output_preview": None,
                "last_turn": None,
                "usage": Usage(),
                "sandbox": None,
                "workspace": None,
                "parent_session_id": s.id,
                "budget": None,
                "turn_time_s": 0.0,
                "forked_turns": 0,
            },
        )
        session.created_at = session.last_activity_at = now()
        return SessionRecord(
            session=session,
            env=dict(source.env),
            limits=dict(source.limits),
            lease=self._lease,
            agent_options=dict(source.agent_options),
            driver_options=dict(source.driver_options),
            budget_from=list(source.budget_from),
        )
