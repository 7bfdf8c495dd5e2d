"""SessionManager: what callers can do with sessions, whatever surface they come through. Knows nothing of
MCP or HTTP, and no driver or agent by name.

The store is the source of truth, so several server processes can share one state folder: a session
created by one is seen, messaged, interrupted and closed by the others. A turn runs in the process that
started it (its lease holder, `turns.py`); other processes wait on it through the event waiter
(`events.py`), stop it through the store and the sandbox, and finish it themselves if its owner died.
Status changes are made by `lifecycle.py` only; replies are shaped by `replies.py`.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from . import lifecycle
from .approving import Approving
from .checkpoints import Checkpointing
from .errors import SessionNotFound, StoreError
from .forking import Forking
from .messaging import Messaging
from .models import SessionRecord, now
from .pausing import Pausing
from .provisioning import Provisioning
from .reading import Reading
from .sandboxes import Sandboxes
from .stopping import Stopping
from .store import EventSpec
from .turns import Turns

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0
RECOVER_INTERVAL_S = 10.0
"""How often a server looks for turns and creations left by a server that died (at start, and when a session
is read, it looks at once): so that lists and dashboards do not show them running for ever."""


class SessionManager(Forking, Provisioning, Messaging, Reading, Stopping, Pausing, Checkpointing, Approving):
    """Create with `SessionManager(settings, store, catalog, make_driver, agents)` and use as `async with`."""

    async def __aenter__(self) -> SessionManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.waiter.run)
        self._sandboxes = Sandboxes(self._make_driver, self._on_sandbox_failure, self._tg, self.store, self.waiter.changed)
        self._turns = Turns(
            self.settings,
            self.store,
            self._agents,
            self._sandboxes,
            self.waiter,
            self._update,
            self._record,
            self._on_sandbox_failure,
            self._lease,
            self._tg,
        )
        self._sandboxes.driver(self.settings.driver)  # its watch starts now, and a warm pool fills before the first create
        await self.recover()
        self._tg.start_soon(self._reap_idle_sessions)
        self._tg.start_soon(self._recover_now_and_then)
        await self._turns.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tg is not None and self._sandboxes is not None and self._turns is not None
        self._turns.stopping = True
        for running in self._turns.running.values():
            running.stop_reason = "server stopped"
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(*exc_info)
        await self._sandboxes.aclose()

    # -- timers -----------------------------------------------------------------------------------

    async def _reap_idle_sessions(self) -> None:
        """Pause or close ready sessions past their idle timeout (`Pausing.idle`). A busy session has no deadline,
        so it is never reaped."""
        while True:
            await anyio.sleep(REAP_INTERVAL_S)
            try:
                due = await self.store.idle_past_deadline(now())
            except StoreError as e:
                log.warning("idle check failed: %s", e)
                continue
            for session_id in due:
                try:
                    await self.idle(session_id)
                except SessionNotFound:
                    pass
                except StoreError as e:
                    log.warning("closing %s after its idle timeout failed: %s", session_id, e)

    async def _recover_now_and_then(self) -> None:
        while True:
            await anyio.sleep(RECOVER_INTERVAL_S)
            try:
                await self.recover(("creating", "busy"))
            except (StoreError, SessionNotFound) as e:
                log.warning("looking for turns left by a dead server failed: %s", e)

    async def _on_sandbox_failure(self, session_id: str, reason: str) -> None:
        def fail(r: SessionRecord) -> list[EventSpec]:
            if r.session.status == "creating":  # its creation fails with the reason it knows better
                return []
            if r.session.status == "paused":  # stopped on purpose; a sandbox gone for good fails its resume
                return []
            return lifecycle.fail(r, reason)

        try:
            await self._update(session_id, fail)
        except SessionNotFound:
            return
        self.turns.stop(session_id, f"the sandbox failed: {reason}", "failed")
