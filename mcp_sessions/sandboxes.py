"""The sandboxes of this process's sessions: drivers made on first use (each with its failure watch), and
each session's sandbox made or re-attached by the driver its record names. Knows no driver by name."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from sandbox_backends.base import (
    Checkpoints,
    ClosesPaused,
    Driver,
    Forks,
    Limits,
    RemovesLeftovers,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)

from .egress import Egress
from .models import SessionRecord
from .store import Store

log = logging.getLogger(__name__)


WATCH_RETRY_S = 5.0


def spec_of(record: SessionRecord) -> SandboxSpec:
    """What the driver makes for a session, or finds again: the same spec every time."""
    s = record.session
    return SandboxSpec(
        name=s.id,
        image=s.image,
        env=record.env,
        limits=Limits(**record.limits),
        labels={"mcp-sessions.session": s.id},
        title=s.title,
        tags=tuple(s.tags),
        model=s.model,
        options=record.driver_options,
        mounts=record.mounts,
    )


class Sandboxes:
    """Drivers by name and sandboxes by session id, for one process. `tg` runs the drivers' watches, and the
    egress proxy of each sandbox whose session has one (served as the sandbox is made or attached again),
    which records its connections in `store` and tells `changed`."""

    def __init__(
        self,
        make_driver: Callable[[str], Driver],
        on_failure: Callable[[str, str], Awaitable[None]],
        tg: TaskGroup,
        store: Store | None = None,
        changed: Callable[[str], None] | None = None,
    ) -> None:
        self._make_driver = make_driver
        self._on_failure = on_failure
        self._tg = tg
        self._egress = Egress(store, changed) if store is not None and changed is not None else None
        self._drivers: dict[str, Driver] = {}
        self._sandboxes: dict[str, Sandbox] = {}

    def driver(self, name: str) -> Driver:
        """The driver called `name`, made (and its watch started) on first use."""
        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = self._make_driver(name)
            self._tg.start_soon(self._watch, driver)
        return driver

    async def _watch(self, driver: Driver) -> None:
        """Keep a driver's failure watch (and whatever it tends, such as a warm pool) running through outages."""
        while True:
            try:
                await driver.watch(self._on_failure)
                return
            except Exception as e:
                log.warning("the %s driver's watch stopped (%s); restarting it in %g s", driver.name, e, WATCH_RETRY_S)
                await anyio.sleep(WATCH_RETRY_S)

    async def create(self, record: SessionRecord, on_phase: Callable[[str, str], Awaitable[None]]) -> Sandbox:
        sandbox = await self.driver(record.session.driver).create(spec_of(record), on_phase=on_phase)
        self._sandboxes[record.session.id] = sandbox
        if self._egress is not None:
            await self._egress.start(record, sandbox, self._tg, new=True)
        return sandbox

    async def fork(
        self,
        source: SessionRecord,
        record: SessionRecord,
        on_phase: Callable[[str, str], Awaitable[None]],
        at: tuple[str, bytes] | None = None,
    ) -> Sandbox:
        """A sandbox for `record` copied from `source`'s, or from its checkpoint `at` (key, shell state); its
        driver `Forks`: the caller checked."""
        driver = self.driver(record.session.driver)
        assert isinstance(driver, Forks)
        sandbox = await driver.fork(await self.of(source), spec_of(record), on_phase=on_phase, at=at)
        self._sandboxes[record.session.id] = sandbox
        return sandbox

    def forget(self, record: SessionRecord) -> None:
        """Let go of the session's sandbox object without closing it (it was paused: the next use attaches)."""
        self._sandboxes.pop(record.session.id, None)

    async def interrupt_idle(self, record: SessionRecord) -> str:
        """An interrupt of a session with nothing running, and what it did in words for the caller: a ready
        session's sandbox stops what earlier commands left running (background jobs may hold its limits)."""
        if record.session.status != "ready":
            return "nothing to interrupt."
        try:
            await (await self.of(record)).interrupt()
        except SandboxError as e:
            log.warning("stopping what earlier commands of %s left running failed: %s", record.session.id, e)
            return "what earlier commands left running could not be stopped: the sandbox did not answer."
        return "the processes earlier commands left running were stopped."

    async def of(self, record: SessionRecord) -> Sandbox:
        """The session's sandbox: the one this process holds, or re-attached by its id (after a restart)."""
        sandbox = self._sandboxes.get(record.session.id)
        if sandbox is None:
            if record.sandbox_id is None:
                raise SandboxNotFound("The session has no sandbox.")
            sandbox = await self.driver(record.session.driver).attach(record.sandbox_id, spec_of(record))
            self._sandboxes[record.session.id] = sandbox
            if self._egress is not None:
                await self._egress.start(record, sandbox, self._tg, new=False)
        return sandbox

    async def free(self, record: SessionRecord, delete: bool) -> None:
        """Close the session's sandbox (`delete`: its workspace and checkpoints too). A sandbox already gone is fine;
        a paused one is closed where it lies where its driver can (`ClosesPaused`), never run again for it."""
        driver = self.driver(record.session.driver)
        if delete and isinstance(driver, Checkpoints):
            for saved in record.checkpoints:
                try:
                    await driver.drop_checkpoint(record.session.id, saved.key)
                except SandboxError as e:
                    log.warning("removing checkpoint %s of %s failed: %s", saved.name, record.session.id, e)
        if record.sandbox_id is not None:
            try:
                try:
                    paused = record.session.status == "paused" and record.session.id not in self._sandboxes
                    if paused and isinstance(driver, ClosesPaused):  # attaching it would run it again first
                        await driver.close_paused(record.sandbox_id, spec_of(record), delete=delete)
                    else:
                        await (await self.of(record)).close(delete=delete)
                except SandboxNotFound:
                    if delete and isinstance(driver, RemovesLeftovers):  # closed before: what it kept goes now
                        await driver.remove_leftovers(record.sandbox_id, record.session.sandbox or {})
            except SandboxError as e:
                log.warning("closing the sandbox of %s failed: %s", record.session.id, e)
        self._sandboxes.pop(record.session.id, None)

    async def aclose(self) -> None:
        """Release the drivers; their sandboxes keep running for the next server process."""
        with anyio.CancelScope(shield=True):
            for driver in self._drivers.values():
                await driver.aclose()
