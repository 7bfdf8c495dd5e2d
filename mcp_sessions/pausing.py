"""Pausing and resuming: an idle session can stop its sandbox's processes (docker: the container stops,
the volume stays; local: the shell ends, the folder stays) instead of closing, and come back at its next
use, so a hundred idle sessions cost a hundred workspaces, not a hundred running sandboxes.

A session pauses by its idle timer (`idle_action="pause"`, per session or the server's default) or when a
caller asks (`pause`). It resumes by itself: a message, a file read or a fork finds it paused, resumes
it (phase `resuming`) and goes on. What the sandbox needs to come back as it was (docker: its shell
state, which lived on the stopped container's tmpfs) is kept in the record, so a paused session outlives
the server and the engine: the next server attaches the stopped sandbox and gives that back.

Within one process a session's pause and resume take turns (a lock per session). A move a dead server
left half done is found by its lease (`recover`): the session is taken as paused, and its next use resumes
it (attaching a sandbox works whether its stop happened or not).
"""

from __future__ import annotations

import base64
import logging

from sandbox_backends.base import Pauses, SandboxError, SandboxNotFound

from . import lifecycle
from .errors import Conflict, SessionBusy, SessionClosed
from .mirror import read_only
from .models import Session, SessionRecord, now
from .session_core import ManagerCore
from .store import EventSpec

log = logging.getLogger(__name__)


class Pausing(ManagerCore):
    """pause_session, the idle timer's pause or close, and the resume every use of a paused session makes."""

    async def pause(self, session_id: str, owner: str | None = None) -> Session:
        """Pause a ready session now (see the module docstring). A paused one is left as it is."""
        record = await self._record(session_id, owner)
        if reason := read_only(record):
            raise SessionClosed(reason)
        s = record.session
        if s.status == "busy":
            raise SessionBusy(
                f"Session '{s.id}' is running turn {s.turns}: wait for it with get_session(wait_s=30), or stop it with "
                "interrupt, then pause."
            )
        if s.status == "creating":
            raise SessionBusy(f"Session '{s.id}' is still being created. Wait with get_session(wait_s=30), then pause.")
        if s.status in ("failed", "dead"):
            raise SessionClosed(f"Session '{s.id}' is {'closed' if s.status == 'dead' else 'failed'}: there is nothing to pause.")
        return (await self._pause(record, idle=False)).session

    async def _pause(self, record: SessionRecord, idle: bool) -> SessionRecord:
        session_id = record.session.id
        async with self._one_move(session_id):
            try:
                sandbox = await self.sandboxes.of(record)
            except SandboxError as e:
                raise SessionBusy(f"Session '{session_id}' cannot be paused now: {e}") from None
            if not isinstance(sandbox, Pauses):
                raise Conflict(f"The {record.session.driver} driver cannot pause sessions. Close it with close_session instead.")
            moment = now()

            def begin(r: SessionRecord) -> list[EventSpec]:
                s = r.session
                if idle and (s.idle_timeout_s <= 0 or (moment - s.last_activity_at).total_seconds() < s.idle_timeout_s):
                    return []  # it woke up meanwhile
                return lifecycle.pause(r, self._lease)

            record, events = await self._update(session_id, begin)
            if not events:
                return record
            try:
                saved = await sandbox.pause()
            except SandboxError as e:
                reason = f"pausing failed: {e}"
                record, _ = await self._update(session_id, lambda r: lifecycle.fail(r, reason))
                return record
            finally:
                self.sandboxes.forget(record)
            text = base64.b64encode(saved).decode()
            record, _ = await self._update(session_id, lambda r: lifecycle.set_paused_phase(r, "paused", text))
            log.info("paused %s", session_id)
            return record

    async def _resume(self, record: SessionRecord) -> SessionRecord:
        """The session ready again if it is paused (else as it is): its sandbox attached and given its state."""
        session_id = record.session.id
        async with self._one_move(session_id):
            record = await self._record(session_id)
            s = record.session
            if s.status != "paused":
                return record
            if s.phase in ("pausing", "resuming") and record.lease not in (None, self._lease):
                raise SessionBusy(
                    f"Session '{session_id}' is being {s.phase[:-3]}ed by another server process: send again shortly."
                )
            record, _ = await self._update(session_id, lambda r: lifecycle.set_paused_phase(r, "resuming"))
            try:
                sandbox = await self.sandboxes.of(record)
                if isinstance(sandbox, Pauses) and record.paused_state:
                    await sandbox.resume(base64.b64decode(record.paused_state))
            except SandboxNotFound as e:
                reason = f"the paused sandbox is gone ({e}), so the session cannot resume"
                await self._update(session_id, lambda r: lifecycle.fail(r, reason))
                raise SessionClosed(f"Session '{session_id}' failed: {reason}. Create a new session.") from None
            except SandboxError as e:
                self.sandboxes.forget(record)
                await self._update(session_id, lambda r: lifecycle.set_paused_phase(r, "paused"))
                raise SessionBusy(f"Session '{session_id}' is paused and could not resume now: {e} Try again shortly.") from None
            record, _ = await self._update(session_id, lifecycle.resumed)
            log.info("resumed %s", session_id)
            return record

    async def idle(self, session_id: str) -> None:
        """The idle timer of a ready session ran out: pause it if it asks for that and its driver can, else close it.
        Or the paused timer of a paused one did: close it."""
        record = await self._record(session_id)
        s = record.session
        if s.status == "paused":
            await self._close_paused_long(session_id)
            return
        if s.status != "ready":
            return
        if s.idle_action == "pause" and not read_only(record):
            try:
                await self._pause(record, idle=True)
                return
            except Conflict:
                pass  # its driver cannot pause: closed, as the timer says otherwise
            except SessionBusy as e:
                log.warning("pausing %s after its idle timeout failed: %s", session_id, e)
                return
        await self._close_idle(record)

    async def _close_idle(self, record: SessionRecord) -> None:
        moment = now()

        def mark_dead(r: SessionRecord) -> list[EventSpec]:
            s = r.session
            if s.status != "ready" or s.idle_timeout_s <= 0 or (moment - s.last_activity_at).total_seconds() < s.idle_timeout_s:
                return []  # it woke up meanwhile
            return lifecycle.close(r, "idle timeout")

        record, events = await self._update(record.session.id, mark_dead)
        if events:
            log.info("closed %s after %g s idle", record.session.id, record.session.idle_timeout_s)
            await self.sandboxes.free(record, delete=False)

    async def _close_paused_long(self, session_id: str) -> None:
        """Close a session paused for longer than its `paused_timeout_s` (its sandbox closed where it lies, not
        run again; its workspace kept, as any close keeps it), unless it is resuming or resumed meanwhile."""

        def expired(r: SessionRecord) -> bool:
            s = r.session
            return (
                s.status == "paused"
                and s.phase == "paused"
                and s.paused_at is not None
                and 0 < s.paused_timeout_s <= (now() - s.paused_at).total_seconds()
            )

        async with self._one_move(session_id):
            record = await self._record(session_id)
            if not expired(record):
                return
            await self.sandboxes.free(record, delete=False)
            _, events = await self._update(
                session_id, lambda r: lifecycle.close(r, "paused timeout") if r.session.status == "paused" else []
            )
        if events:
            log.info("closed %s after %g s paused", session_id, record.session.paused_timeout_s)
