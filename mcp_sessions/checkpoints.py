"""Checkpoints: named copies of a session's workspace and shell state after a turn, to go back to.

`checkpoint` copies the workspace (the driver's `Checkpoints`: docker into a volume of its own through a
helper container, local into a folder beside the workspace, reflinked where the filesystem can) and keeps
the shell state with it, at the session's last finished turn. `restore` makes the workspace and the shell
what they were, and takes the conversation back to that turn: the later turns' messages stay in the
transcript, marked undone, and leave the conversation the llm agent reads (and a fork copies). Turn
numbers go on from where they were, so every turn keeps the number its caller was given.

A session's checkpoints may hold `max_checkpoint_mb` together (what their copies measure): one that
would pass it is removed again and refused, saying how much the others hold. They go with the session
when it is deleted; a closed session keeps them, as it keeps its workspace.
"""

from __future__ import annotations

import base64
import re
import secrets

from sandbox_backends.base import Checkpoints, SandboxError

from .errors import Conflict, InvalidInput, SessionBusy, SessionClosed
from .mirror import read_only
from .models import Checkpoint, SavedCheckpoint, Session, SessionRecord
from .session_core import ManagerCore
from .store import EventSpec

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A checkpoint's name; the tools' schemas publish it as their pattern."""
MAX_CHECKPOINTS = 50


class Checkpointing(ManagerCore):
    """checkpoint_session, restore_session, and the list the checkpoints resource shows."""

    async def _ready_for(self, session_id: str, owner: str | None, what: str) -> tuple[SessionRecord, Checkpoints]:
        """The session, ready (a paused one resumed), and its driver, or the error saying why not."""
        record = await self._record(session_id, owner)
        s = record.session
        if reason := read_only(record):
            raise Conflict(f"Session '{s.id}' is mirrored from another platform: {reason}")
        driver = self.sandboxes.driver(s.driver)
        if not isinstance(driver, Checkpoints):
            raise Conflict(f"The {s.driver} driver keeps no checkpoints. Fork the session to keep a copy of it instead.")
        if s.status == "paused":
            record = await self._resume(record)
            s = record.session
        if s.status == "busy":
            raise SessionBusy(
                f"Session '{s.id}' is running turn {s.turns}: wait for it with get_session(wait_s=30), or stop it with "
                f"interrupt, then {what}."
            )
        if s.status == "creating":
            raise SessionBusy(f"Session '{s.id}' is still being created. Wait with get_session(wait_s=30), then {what}.")
        if s.status in ("failed", "dead"):
            raise SessionClosed(f"Session '{s.id}' is {'closed' if s.status == 'dead' else 'failed'}: it cannot {what}.")
        return record, driver

    async def checkpoint(self, session_id: str, name: str, owner: str | None = None) -> Checkpoint:
        """Keep the session's workspace and shell state as they are now, as checkpoint `name`."""
        if not NAME.fullmatch(name):
            raise InvalidInput(
                f"Checkpoint name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with one of the first two."
            )
        record, driver = await self._ready_for(session_id, owner, "checkpoint")
        if any(c.name == name for c in record.checkpoints):
            raise Conflict(f"Session '{session_id}' already has a checkpoint named {name!r}. Choose another name.")
        if len(record.checkpoints) >= MAX_CHECKPOINTS:
            raise Conflict(f"Session '{session_id}' has {MAX_CHECKPOINTS} checkpoints, the most one may keep.")
        key = secrets.token_hex(6)
        try:
            size, state = await driver.checkpoint(await self.sandboxes.of(record), key)
        except SandboxError as e:
            raise SessionBusy(f"The checkpoint could not be made: {e}") from None
        held = sum(c.size_mb for c in record.checkpoints)
        if held + size > self.settings.max_checkpoint_mb:
            await driver.drop_checkpoint(session_id, key)
            raise Conflict(
                f"Checkpoint {name!r} would hold {size} MiB; this session's checkpoints may hold {self.settings.max_checkpoint_mb} "
                f"MiB together and hold {held} MiB already. Delete files from the workspace first, or fork the session."
            )
        saved = SavedCheckpoint(
            name=name, turn=record.session.turns, size_mb=size, key=key, state=base64.b64encode(state).decode()
        )

        def keep(r: SessionRecord) -> list[EventSpec]:
            r.checkpoints.append(saved)
            return [("checkpoint.saved", {"name": name, "turn": saved.turn, "size_mb": size})]

        await self._update(session_id, keep)
        return Checkpoint(**saved.model_dump(include=set(Checkpoint.model_fields)))

    async def restore(self, session_id: str, name: str, owner: str | None = None) -> Session:
        """Take the workspace, the shell and the conversation back to checkpoint `name`."""
        record, driver = await self._ready_for(session_id, owner, "restore")
        saved = next((c for c in record.checkpoints if c.name == name), None)
        if saved is None:
            have = ", ".join(repr(c.name) for c in record.checkpoints) or "none"
            raise Conflict(f"Session '{session_id}' has no checkpoint named {name!r} (it has: {have}).")
        try:
            await driver.restore(await self.sandboxes.of(record), saved.key, base64.b64decode(saved.state))
        except SandboxError as e:
            raise SessionBusy(f"Checkpoint {name!r} could not be restored: {e}") from None
        await self.store.mark_undone(session_id, saved.turn)
        record, _ = await self._update(
            session_id, lambda r: [("checkpoint.restored", {"name": name, "turn": saved.turn, "undone_after": saved.turn})]
        )
        return record.session

    async def checkpoints(self, session_id: str, owner: str | None = None) -> list[Checkpoint]:
        record = await self._record(session_id, owner)
        return [Checkpoint(**c.model_dump(include=set(Checkpoint.model_fields))) for c in record.checkpoints]
