"""Creating sessions: admitting a request (its parent, its driver's checks, the caller's limit), then
bringing its sandbox and agent up in the background while the caller waits up to `wait_s`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from sandbox_backends.base import ChecksSpec, Sandbox, SandboxError

from . import lifecycle, trees
from .agents.base import PrepareContext, PreparesSandbox
from .create import CreateRequest, new_record
from .errors import InvalidInput, TooManySessions
from .models import LIVE_STATUSES, Session, SessionRecord
from .sandboxes import spec_of
from .session_core import ManagerCore
from .turns import MAX_WAIT_S

log = logging.getLogger(__name__)

MakeSandbox = Callable[[Callable[[str, str], Awaitable[None]]], Awaitable[Sandbox]]
"""Makes a new session's sandbox, reporting its steps to the callback given."""


class Provisioning(ManagerCore):
    """create_session."""

    async def create(self, request: CreateRequest, wait_s: float = 30.0) -> Session:
        record = new_record(request, self.settings, self.catalog, self._agents, self._lease)
        await trees.link_to_parent(self.store, record, request.owner)
        chosen = self.sandboxes.driver(record.session.driver)
        if isinstance(chosen, ChecksSpec):
            try:
                chosen.check(spec_of(record))
            except ValueError as e:
                raise InvalidInput(str(e)) from None
        async with self._admit:
            await self._check_owner_limit(request.owner)
            s = record.session
            created = {"driver": s.driver, "agent": s.agent, "title": s.title}
            await self.store.insert(record, [("session.created", created), ("phase", {"phase": "queued"})])
        done = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._provision, record, request.files, done)
        with anyio.move_on_after(min(wait_s, MAX_WAIT_S)):
            await done.wait()
        return (await self._record(s.id)).session

    async def _check_owner_limit(self, owner: str | None) -> None:
        """An owner (a token's) may hold at most `max_sessions_per_owner` live sessions; no owner, no limit."""
        cap = self.settings.max_sessions_per_owner
        if owner is None or cap <= 0:
            return
        _, live, _ = await self.store.query(statuses=list(LIVE_STATUSES), owner=owner, limit=1)
        if live >= cap:
            raise TooManySessions(
                f"You already have {live} live sessions, this server's limit per caller. "
                "Close sessions you no longer need (close_session), then create again."
            )

    async def _provision(
        self, record: SessionRecord, files: dict[str, str], done: anyio.Event, make: MakeSandbox | None = None
    ) -> None:
        """Bring the session up: its sandbox made (by `make`, a fork's copy, else the driver's create), its files
        written, its agent prepared; ready, or failed with the reason."""
        sid = record.session.id

        async def phase(name: str, detail: str | None = None) -> None:
            await self._update(sid, lambda r: lifecycle.set_phase(r, name, detail))  # type: ignore[arg-type]

        try:
            with anyio.fail_after(self.settings.create_timeout_s):
                sandbox = await (make(phase) if make else self.sandboxes.create(record, on_phase=phase))
                if files:
                    await phase("injecting_files", f"{len(files)} file(s)")
                    for path, content in files.items():
                        await sandbox.write_file(path, content.encode())
                agent = self._agents[record.session.agent]
                if isinstance(agent, PreparesSandbox):
                    await phase("starting_agent", record.session.agent)

                    async def detail(text: str) -> None:
                        await phase("starting_agent", text)

                    await agent.prepare(PrepareContext(record.session, sandbox, record.agent_options, detail))
            describe, workspace = sandbox.describe(), sandbox.workspace
            ready, events = await self._update(sid, lambda r: lifecycle.become_ready(r, sandbox.id, describe, workspace))
            if not events:  # closed or failed while it was being made: nothing may keep running for it
                await self.sandboxes.free(ready, delete=False)
        except TimeoutError:
            await self._update(sid, lambda r: lifecycle.fail(r, "creating timeout"))
        except (SandboxError, OSError, ValueError) as e:
            reason = str(e)
            await self._update(sid, lambda r: lifecycle.fail(r, reason))
        except Exception as e:
            log.exception("creating %s failed", sid)
            reason = f"internal error while creating: {e}"
            await self._update(sid, lambda r: lifecycle.fail(r, reason))
        finally:
            done.set()
