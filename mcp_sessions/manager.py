"""SessionManager: the lifecycle of sessions and their turns. Knows nothing of MCP or HTTP.

The store is the source of truth, so several server processes can share one state folder: a
session created by one is seen, messaged, interrupted and closed by the others. A turn runs in the
process that started it (its lease holder); other processes wait on it by polling the store, stop it
through the sandbox, and finish it themselves if its owner died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from sandbox_backends.base import (
    ChecksSpec,
    Driver,
    Limits,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    SandboxRestarted,
    SandboxSpec,
)
from sandbox_backends.output import OutputBuffer

from . import leases
from .agents.base import Agent, ConfiguresSessions, PrepareContext, PreparesSandbox, TurnContext, TurnOutcome
from .create import CreateRequest
from .errors import InvalidInput, PayloadTooLarge, SessionBusy, SessionClosed, SessionNotFound, StoreError, TooManySessions
from .mirror import Mirror, read_only
from .models import (
    LIVE_STATUSES,
    CloseReply,
    Event,
    InterruptReply,
    LimitsModel,
    Message,
    QueuedMessage,
    Session,
    SessionDetail,
    SessionPage,
    SessionRecord,
    SessionSummary,
    TextBlock,
    TurnReply,
    TurnStatus,
    TurnSummary,
    Usage,
    new_session_id,
    now,
)
from .plugins import Catalog
from .settings import Settings
from .store import EventSpec, Store
from .transcript import render_transcript

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often a process checks the store for changes made by another process."""
OUTPUT_FLUSH_S = POLL_S  # a running turn publishes its output and checks for an interrupt request together
OUTPUT_FLUSH_BYTES = 16384
MAX_WAIT_S = 50.0
MAX_QUEUE = 100
REAP_INTERVAL_S = 1.0
WATCH_RETRY_S = 5.0
TURN_END_EVENTS = ("turn.completed", "turn.failed", "turn.interrupted")
MAX_EVENTS_PER_READ = 200
MAX_EVENT_TEXT = 16384
"""Bound on the output text returned in one batch of events, so a reply stays readable for an LLM."""


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class _Orphaned(Exception):
    """Raised inside a store update that found a session held by a dead server; nothing is written."""


@dataclass
class RunningTurn:
    """A turn this process runs: the scope that `interrupt` cancels and the output seen so far."""

    turn: int
    buffer: OutputBuffer
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str = "server stopped"
    stop_status: TurnStatus = "interrupted"
    flush: Callable[[], Awaitable[None]] | None = None
    """Publishes output not yet sent as events, so a reply's output and its events cursor agree."""
    ended: tuple[SessionRecord, int] | None = None
    """The record as the turn's end left it and the last event seq then: the reply needs no store read."""
    helpers: TaskGroup | None = None
    """While the agent runs: the group where the turn's helper (`tend`) starts once the turn has run a tick."""
    tend: Callable[[], Awaitable[None]] | None = None


class SessionManager:
    """Create with `SessionManager(settings, store, make_driver, agents)` and use as `async with`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: Catalog,
        make_driver: Callable[[str], Driver],
        agents: dict[str, Agent],
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self._make_driver = make_driver
        self._agents = agents
        self._drivers: dict[str, Driver] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self._turns: dict[str, RunningTurn] = {}
        self._turn_spawned = anyio.Event()
        self._changed: dict[str, anyio.Event] = {}
        self._lease = leases.this_process()
        self._tg: TaskGroup | None = None
        self._samplers: dict[str, Any] = {}
        """Per session, how to reach the model of the client that last sent it a message (MCP sampling)."""
        self._admit = anyio.Lock()
        self._stopping = False
        self.mirror: Mirror | None = None
        """Keeps the sessions of read-only platforms in the store (mirror.py); set by whoever opens the manager."""

    async def __aenter__(self) -> SessionManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._driver(self.settings.driver)  # its watch starts now, and a warm pool fills before the first create
        await self.recover()
        self._tg.start_soon(self._reap_idle_sessions)
        self._tg.start_soon(self._start_helpers)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tg is not None
        self._stopping = True
        for running in self._turns.values():
            running.stop_reason = "server stopped"
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(*exc_info)
        with anyio.CancelScope(shield=True):
            for driver in self._drivers.values():
                await driver.aclose()

    # -- plumbing ---------------------------------------------------------------------------------

    def _driver(self, name: str) -> Driver:
        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = self._make_driver(name)
            assert self._tg is not None
            self._tg.start_soon(self._watch, driver)
        return driver

    async def _watch(self, driver: Driver) -> None:
        """Keep a driver's failure watch (and, for docker, its warm pool) running through engine outages."""
        while True:
            try:
                await driver.watch(self._on_sandbox_failure)
                return
            except Exception as e:
                log.warning("the %s driver's watch stopped (%s); restarting it in %g s", driver.name, e, WATCH_RETRY_S)
                await anyio.sleep(WATCH_RETRY_S)

    def _spec(self, record: SessionRecord) -> SandboxSpec:
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
        )

    async def _sandbox(self, record: SessionRecord) -> Sandbox:
        sandbox = self._sandboxes.get(record.session.id)
        if sandbox is None:
            if record.sandbox_id is None:
                raise SandboxNotFound("The session has no sandbox.")
            sandbox = await self._driver(record.session.driver).attach(record.sandbox_id, self._spec(record))
            self._sandboxes[record.session.id] = sandbox
        return sandbox

    def _notify(self, session_id: str) -> None:
        event = self._changed.pop(session_id, None)
        if event is not None:
            event.set()

    async def _wait_change(self, session_id: str, timeout: float) -> None:
        """Wait until this process changes the session, or `timeout`, whichever is first."""
        event = self._changed.setdefault(session_id, anyio.Event())
        with anyio.move_on_after(timeout):
            await event.wait()

    async def _update(
        self, session_id: str, mutate: Callable[[SessionRecord], list[EventSpec] | None], messages: list[Message] = []
    ) -> tuple[SessionRecord, list[Event]]:
        try:
            result = await self.store.update(session_id, mutate, messages)
        except KeyError:
            raise SessionNotFound(session_id) from None
        self._notify(session_id)
        return result

    async def _record(self, session_id: str, owner: str | None = None) -> SessionRecord:
        """The stored record, with a turn orphaned by a dead server finished first."""
        record = await self.store.get(session_id)
        if record is None or (owner is not None and record.session.owner != owner):
            raise SessionNotFound(session_id)
        if self._orphaned(record):
            record = await self._adopt(record)
        return record

    def _orphaned(self, record: SessionRecord) -> bool:
        """True if a server process that died holds this session's turn or creation."""
        return bool(record.lease and record.lease != self._lease and not leases.is_alive(record.lease))

    # -- recovery ---------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish what a dead server process left half done: running turns and creations."""
        for record in await self.store.with_status(["creating", "busy", "failed"]):
            if self._orphaned(record):
                await self._adopt(record)

    async def _adopt(self, record: SessionRecord) -> SessionRecord:
        s = record.session
        dead_lease = record.lease
        log.info("taking over %s (%s) from a server that is gone", s.id, s.status)
        if s.status == "creating":

            def fail(r: SessionRecord) -> list[EventSpec]:
                if r.lease != dead_lease:
                    return []
                return self._fail(r, "server restarted while the session was being created")

            record, _ = await self._update(s.id, fail)
            return record
        result = None
        try:
            result = await (await self._sandbox(record)).take_over()
        except SandboxError as e:
            log.warning("cannot reach the sandbox of %s: %s", s.id, e)
        outcome = TurnOutcome(status="interrupted", content=[], reason="server restarted")
        if result is not None:
            outcome.content = [TextBlock(text=result.output)]
            outcome.exit_code, outcome.output = result.exit_code, result.output
            outcome.output_bytes, outcome.output_cut_bytes = result.output_bytes, result.cut_bytes
        return (await self._finish_turn(s.id, s.turns, dead_lease, outcome))[0]

    # -- timers -----------------------------------------------------------------------------------

    async def _reap_idle_sessions(self) -> None:
        """Close ready sessions past their idle timeout. A busy session has no deadline, so it is never reaped."""
        while True:
            await anyio.sleep(REAP_INTERVAL_S)
            try:
                due = await self.store.idle_past_deadline(now())
            except StoreError as e:
                log.warning("idle check failed: %s", e)
                continue
            for session_id in due:
                try:
                    await self._close_idle(session_id)
                except StoreError as e:
                    log.warning("closing %s after its idle timeout failed: %s", session_id, e)

    async def _close_idle(self, session_id: str) -> None:
        moment = now()

        def mark_dead(r: SessionRecord) -> list[EventSpec]:
            s = r.session
            if s.status != "ready" or s.idle_timeout_s <= 0 or (moment - s.last_activity_at).total_seconds() < s.idle_timeout_s:
                return []  # it woke up meanwhile
            s.status, s.close_reason, s.finished_at = "dead", "idle timeout", moment
            return [("session.closed", {"reason": "idle timeout"}), ("status", {"status": "dead"})]

        try:
            record, events = await self._update(session_id, mark_dead)
        except SessionNotFound:
            return
        if events:
            log.info("closed %s after %g s idle", session_id, record.session.idle_timeout_s)
            await self._free_sandbox(record, delete=False)

    # -- create -----------------------------------------------------------------------------------

    async def create(self, request: CreateRequest, wait_s: float = 30.0) -> Session:
        settings, catalog = self.settings, self.catalog
        driver = request.driver or settings.driver
        if driver not in catalog.drivers:
            raise InvalidInput(f"Unknown driver '{driver}'. Use one of: {', '.join(catalog.drivers)}.")
        own_agent = catalog.own_agent(driver)
        agent = request.agent or own_agent or settings.agent
        if agent not in self._agents:
            raise InvalidInput(f"Unknown agent '{agent}'. Use one of: {', '.join(self._agents)}.")
        if own_agent is not None and agent != own_agent:
            raise InvalidInput(
                f"A '{driver}' session runs its platform's own agent: use agent='{own_agent}' (the default there) "
                "or leave agent out."
            )
        if own_agent is None and (homes := catalog.drivers_of(agent)):
            raise InvalidInput(
                f"Agent '{agent}' is the own agent of driver {' or '.join(repr(h) for h in homes)} and runs only there: "
                f"use driver='{homes[0]}'."
            )
        driver_options, agent_options = catalog.split_options(driver, agent, request.options)
        command_timeout = request.command_timeout_s or settings.command_timeout_s
        if command_timeout > settings.max_command_timeout_s:
            raise InvalidInput(
                f"command_timeout_s {command_timeout:g} is over this server's maximum of "
                f"{settings.max_command_timeout_s:g} s. Ask for less."
            )
        for path, content in request.files.items():
            if not path or "\0" in path or path.startswith("/") or ".." in path.split("/"):
                raise InvalidInput(f"File path {path!r} must be relative to the workspace, without '..'.")
            if len(content.encode()) > settings.max_file_bytes:
                raise PayloadTooLarge(f"File {path!r} is over the {settings.max_file_bytes}-byte limit.")
        for key, value in request.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise InvalidInput(f"Environment variable name {key!r} is invalid: use a name without '=' or NUL bytes.")
        limits = (request.limits or LimitsModel()).model_dump(exclude_none=True)
        model = request.model
        configures = self._agents[agent]
        if isinstance(configures, ConfiguresSessions):  # the agent checks its options and fills in defaults
            try:
                model, agent_options = configures.configure(model, agent_options)
            except ValueError as e:
                raise InvalidInput(str(e)) from None
        session = Session(
            id=new_session_id(),
            title=request.title,
            tags=request.tags,
            metadata=request.metadata,
            driver=driver,
            agent=agent,
            image=request.image,
            idle_timeout_s=settings.idle_timeout_s if request.idle_timeout_s is None else request.idle_timeout_s,
            command_timeout_s=command_timeout,
            owner=request.owner,
            model=model,
        )
        record = SessionRecord(
            session=session,
            env=request.env,
            limits=limits,
            lease=self._lease,
            agent_options=agent_options,
            driver_options=driver_options,
        )
        chosen = self._driver(driver)
        if isinstance(chosen, ChecksSpec):
            try:
                chosen.check(self._spec(record))
            except ValueError as e:
                raise InvalidInput(str(e)) from None
        async with self._admit:
            await self._check_owner_limit(request.owner)
            await self.store.insert(
                record,
                [("session.created", {"driver": driver, "agent": agent, "title": request.title}), ("phase", {"phase": "queued"})],
            )
        done = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._provision, record, request.files, done)
        with anyio.move_on_after(min(wait_s, MAX_WAIT_S)):
            await done.wait()
        return (await self._record(session.id)).session

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

    async def _provision(self, record: SessionRecord, files: dict[str, str], done: anyio.Event) -> None:
        sid = record.session.id

        async def phase(name: str, detail: str | None = None) -> None:
            def set_phase(r: SessionRecord) -> list[EventSpec]:
                r.session.phase, r.session.phase_detail = name, detail  # type: ignore[assignment]
                return [("phase", {"phase": name, "detail": detail})]

            await self._update(sid, set_phase)

        try:
            with anyio.fail_after(self.settings.create_timeout_s):
                sandbox = await self._driver(record.session.driver).create(self._spec(record), on_phase=phase)
                self._sandboxes[sid] = sandbox
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

            def ready(r: SessionRecord) -> list[EventSpec]:
                r.sandbox_id, r.lease = sandbox.id, None
                s = r.session
                s.status, s.phase, s.phase_detail = "ready", "ready", None
                s.started_at = s.last_activity_at = now()
                s.sandbox, s.workspace = sandbox.describe(), sandbox.workspace
                if s.image is None and isinstance(s.sandbox.get("image"), str):
                    s.image = s.sandbox["image"]  # the driver's default
                return [("phase", {"phase": "ready"}), ("status", {"status": "ready"})]

            await self._update(sid, ready)
        except TimeoutError:
            await self._update(sid, lambda r: self._fail(r, "creating timeout"))
        except (SandboxError, OSError, ValueError) as e:
            reason = str(e)
            await self._update(sid, lambda r: self._fail(r, reason))
        except Exception as e:
            log.exception("creating %s failed", sid)
            reason = f"internal error while creating: {e}"
            await self._update(sid, lambda r: self._fail(r, reason))
        finally:
            done.set()

    @staticmethod
    def _fail(record: SessionRecord, reason: str) -> list[EventSpec]:
        s = record.session
        if s.status != "busy":  # a running turn keeps its lease: its owner still has to record how it ended
            record.lease = None
        s.status, s.failure_reason, s.finished_at = "failed", reason, now()
        return [("session.failed", {"reason": reason}), ("status", {"status": "failed"})]

    async def _on_sandbox_failure(self, session_id: str, reason: str) -> None:
        def fail(r: SessionRecord) -> list[EventSpec]:
            if r.session.status in ("dead", "failed"):
                return []
            return self._fail(r, reason)

        try:
            await self._update(session_id, fail)
        except SessionNotFound:
            return
        running = self._turns.get(session_id)
        if running is not None:
            running.stop_reason, running.stop_status = f"the sandbox failed: {reason}", "failed"
            running.scope.cancel()

    # -- turns ------------------------------------------------------------------------------------

    async def send(
        self,
        session_id: str,
        text: str,
        wait_s: float = 20.0,
        queue: bool = False,
        owner: str | None = None,
        sampler: Any = None,
    ) -> TurnReply:
        """`sampler` reaches the sending client's model; this and later turns of the session use it."""
        if not text.strip():
            raise InvalidInput("The message is empty. Send the text (for the shell agent, a bash script) to run.")
        size = len(text.encode())
        if size > self.settings.max_message_bytes:
            raise PayloadTooLarge(
                f"The message is {size} bytes, over this server's limit of {self.settings.max_message_bytes}. "
                "Write large inputs into the workspace as files and send a short message that uses them."
            )
        messages: list[Message] = []
        placed: dict[str, int] = {}

        def start(r: SessionRecord) -> list[EventSpec]:
            s = r.session
            if owner is not None and s.owner != owner:
                raise SessionNotFound(s.id)
            if self._orphaned(r):
                raise _Orphaned()
            if reason := read_only(r):
                raise SessionClosed(reason)
            if queue and s.status == "busy":
                if len(r.queue) >= MAX_QUEUE:
                    raise SessionBusy(
                        f"Session '{s.id}' already has {MAX_QUEUE} queued messages. Wait for them with get_session."
                    )
                r.queue.append(QueuedMessage(text=text))
                placed["turn"], placed["position"] = s.turns + len(r.queue), len(r.queue)
                return [("turn.queued", {"turn": placed["turn"], "position": len(r.queue), "text": shorten(text, 2000)})]
            self._check_can_send(s)
            placed["turn"] = s.turns + 1
            return self._begin_turn(r, text, messages)

        try:
            record, _ = await self._update(session_id, start, messages)
        except _Orphaned:  # a turn left by a dead server: finish it, then start ours
            await self._record(session_id, owner)
            record, _ = await self._update(session_id, start, messages)
        if sampler is not None:
            self._samplers[session_id] = sampler
        else:
            self._samplers.pop(session_id, None)
        if "position" not in placed:
            running = self._spawn_turn(record, text)
            with anyio.move_on_after(min(max(wait_s, 0.0), MAX_WAIT_S)):
                await running.done.wait()
            if running.ended is not None:  # the usual quick turn: answered from its own end
                record, cursor = running.ended
                return await self._reply(record, placed["turn"], cursor)
            wait_s = 0  # waited already: the turn is still running (or its end could not be recorded)
        record = await self._wait_turn(session_id, placed["turn"], wait_s)
        return await self._reply(record, placed["turn"])

    def _begin_turn(self, r: SessionRecord, text: str, messages: list[Message]) -> list[EventSpec]:
        """Mark the next turn as running in `r` (inside a store update) and add its user message."""
        s = r.session
        s.turns += 1
        s.status, s.last_activity_at = "busy", now()
        s.preview = s.preview or shorten(text, 200)
        s.last_turn = TurnSummary(turn=s.turns, status="running", started_at=now())
        r.lease, r.interrupt_requested = self._lease, False
        messages.append(Message(role="user", content=[TextBlock(text=text)], turn=s.turns))
        return [("turn.started", {"turn": s.turns, "text": shorten(text, 2000)}), ("status", {"status": "busy"})]

    def _spawn_turn(self, record: SessionRecord, text: str) -> RunningTurn:
        running = RunningTurn(turn=record.session.turns, buffer=OutputBuffer(self.settings.max_output_bytes))
        self._turns[record.session.id] = running
        self._turn_spawned.set()
        assert self._tg is not None
        self._tg.start_soon(self._run_turn, record, text, running)
        return running

    async def _start_helpers(self) -> None:
        """Every tick, start the helper of each turn that has run since the last tick.

        Most turns end before the first tick: they never start a task beside their own.
        """
        while True:
            if not self._turns:
                self._turn_spawned = anyio.Event()
                await self._turn_spawned.wait()
            await anyio.sleep(OUTPUT_FLUSH_S)
            for running in list(self._turns.values()):
                if running.helpers is not None and running.tend is not None:
                    running.helpers.start_soon(running.tend)
                    running.tend = None

    def _check_can_send(self, s: Session) -> None:
        if s.status == "busy":
            started = s.last_turn.started_at.isoformat(timespec="seconds") if s.last_turn else "earlier"
            raise SessionBusy(
                f"Session '{s.id}' is busy running turn {s.turns} (started {started}). Wait for it with "
                f"get_session(session_id='{s.id}', wait_s=30), or stop it with interrupt, then send again."
            )
        if s.status == "creating":
            raise SessionBusy(
                f"Session '{s.id}' is still being created (phase {s.phase}). Wait with get_session(wait_s=30)."
            )
        if s.status == "failed":
            raise SessionClosed(
                f"Session '{s.id}' failed ({s.failure_reason}) and takes no messages. Create a new session."
            )
        if s.status == "dead":
            raise SessionClosed(f"Session '{s.id}' is closed ({s.close_reason}). Create a new session to go on.")

    async def _run_turn(self, record: SessionRecord, text: str, running: RunningTurn) -> None:
        sid = record.session.id
        pending = bytearray()
        published = 0
        outcome: TurnOutcome | None = None
        ctx: TurnContext | None = None

        queued: list[EventSpec] = []
        """Events of this turn not yet written: they go out with the next flush, or with the turn's end."""

        def queue_output() -> None:
            nonlocal published
            if not pending:
                return
            chunk = bytes(pending)
            pending.clear()
            room = self.settings.max_output_bytes - published
            if room <= 0:
                return
            data: dict[str, Any] = {"text": chunk[:room].decode("utf-8", errors="replace")}
            if len(chunk) > room:
                data["note"] = "Later output is not published as events; the reply keeps its tail."
            published += len(chunk)
            queued.append(("tool.output", data))

        def take_queued() -> list[EventSpec]:
            queue_output()
            taken = list(queued)
            queued.clear()
            return taken

        async def emit(type_: str, data: dict[str, Any]) -> None:
            queue_output()
            queued.append((type_, data))

        async def flush() -> None:
            if events := take_queued():
                try:
                    await self.store.append_events(sid, events)
                except BaseException:
                    # Not written: a full disk, or cancelled while waiting for the store (the turn ended as
                    # this flush began). Kept for the next flush or the turn's end; bounded by max_output_bytes.
                    queued[:0] = events
                    raise
                self._notify(sid)

        store_failing = False

        async def try_flush() -> None:
            """Flush, but let a store that cannot be written (a full disk) not stop the command."""
            nonlocal store_failing
            try:
                await flush()
                store_failing = False
            except StoreError as e:
                if not store_failing:
                    log.warning("cannot record the output of %s yet: %s", sid, e)
                store_failing = True

        async def output(chunk: bytes) -> None:
            running.buffer.feed(chunk)
            pending.extend(chunk[: OUTPUT_FLUSH_BYTES * 4])
            if len(pending) >= OUTPUT_FLUSH_BYTES:
                await try_flush()

        running.flush = flush

        async def tend() -> None:
            """While the turn runs, every tick: publish its new output, and stop it when an interrupt was asked
            for in the store (by this server or another)."""
            while True:
                await try_flush()
                try:
                    current = await self.store.get(sid)
                except StoreError:  # locked or full: look again next tick
                    pass
                else:
                    if current is None or current.interrupt_requested:
                        running.stop_reason = "interrupted by the caller"
                        running.scope.cancel()
                await anyio.sleep(OUTPUT_FLUSH_S)

        try:
            with running.scope:
                sandbox = await self._sandbox(record)
                ctx = TurnContext(
                    session=record.session,
                    sandbox=sandbox,
                    command_timeout_s=record.session.command_timeout_s,
                    max_output_bytes=self.settings.max_output_bytes,
                    max_file_bytes=self.settings.max_file_bytes,
                    emit=emit,
                    output=output,
                    options=record.agent_options,
                    history=lambda: self.store.messages(sid),
                    sampler=self._samplers.get(sid),
                )
                error: Exception | None = None
                async with anyio.create_task_group() as helpers:
                    running.helpers, running.tend = helpers, tend  # started by _start_helpers
                    try:
                        outcome = await self._agents[record.session.agent].run_turn(ctx, text)
                    except Exception as e:  # raised outside the group, so it is not wrapped in an ExceptionGroup
                        error = e
                    finally:
                        running.helpers = None
                        helpers.cancel_scope.cancel()
                if error is not None:
                    raise error
        except SandboxRestarted as e:  # e.g. its engine restarted: the command is gone, the sandbox works
            running.stop_status, running.stop_reason = "interrupted", str(e)
        except SandboxNotFound as e:
            running.stop_status, running.stop_reason = "failed", f"the sandbox is gone: {e}"
            await self._on_sandbox_failure(sid, f"sandbox lost: {e}")
        except SandboxError as e:
            running.stop_status, running.stop_reason = "failed", str(e)
        except Exception as e:
            log.exception("turn %s of %s failed", running.turn, sid)
            running.stop_status, running.stop_reason = "failed", f"internal error: {e}"
        finally:
            with anyio.CancelScope(shield=True):
                if outcome is None:
                    output_text = running.buffer.render()
                    outcome = TurnOutcome(
                        status=running.stop_status,
                        content=[TextBlock(text=output_text)],
                        output=output_text,
                        output_bytes=running.buffer.total,
                        output_cut_bytes=running.buffer.cut,
                        reason=running.stop_reason,
                    )
                    if ctx is not None and ctx.messages:  # what the agent said and did before it was stopped
                        outcome.messages, outcome.usage = ctx.messages, ctx.usage
                try:
                    await self._record_turn_end(sid, running, outcome, take_queued())
                finally:
                    if self._turns.get(sid) is running:
                        del self._turns[sid]
                    running.done.set()
                    self._notify(sid)

    async def _record_turn_end(
        self, sid: str, running: RunningTurn, outcome: TurnOutcome, events: list[EventSpec]
    ) -> None:
        """Write how a turn ended; while the store cannot be written (a full disk), try again every second.
        A server stopped meanwhile leaves the turn to the next one, which marks it interrupted."""
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    running.ended = await self._finish_turn(sid, running.turn, self._lease, outcome, events)
                return
            except StoreError as e:
                if self._stopping:
                    return
                log.warning("cannot record the end of turn %s of %s yet: %s", running.turn, sid, e)
            await anyio.sleep(1.0)

    async def _finish_turn(
        self, session_id: str, turn: int, lease: str | None, outcome: TurnOutcome, events_first: list[EventSpec] = []
    ) -> tuple[SessionRecord, int]:
        """Record how `turn` ended and, if messages are queued, start the next one in the same transaction.

        `events_first` are the turn's own events not yet written (its last output, tool ends); they go first.
        Returns the record as written and the session's last event seq.
        """
        finished = now()
        if outcome.messages is not None:
            messages = outcome.messages
        else:
            messages = [Message(role="assistant", content=outcome.content, turn=turn)] if outcome.content else []
        turn_usage = outcome.usage if outcome.usage != Usage() else None
        next_text: list[str] = []

        def finish(r: SessionRecord) -> list[EventSpec]:
            s = r.session
            if r.lease != lease or s.turns != turn or s.last_turn is None or s.last_turn.status != "running":
                return events_first  # someone else finished it already
            started = s.last_turn.started_at
            s.last_turn = TurnSummary(
                turn=turn,
                status=outcome.status,
                started_at=started,
                finished_at=finished,
                duration_s=outcome.duration_s if outcome.duration_s is not None else (finished - started).total_seconds(),
                exit_code=outcome.exit_code,
                output=outcome.output,
                output_bytes=outcome.output_bytes,
                output_cut_bytes=outcome.output_cut_bytes,
                reason=outcome.reason,
                usage=turn_usage,
            )
            s.last_response = outcome.content
            s.output_preview = tail(outcome.output, 500) if outcome.output else None
            s.last_activity_at = finished
            for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens"):
                setattr(s.usage, key, getattr(s.usage, key) + getattr(outcome.usage, key))
            s.usage.cost_usd += outcome.usage.cost_usd
            for model, cost in outcome.usage.cost_by_model.items():
                s.usage.cost_by_model[model] = s.usage.cost_by_model.get(model, 0.0) + cost
            r.lease, r.interrupt_requested = None, False
            data = {
                "turn": turn,
                "exit_code": outcome.exit_code,
                "duration_s": s.last_turn.duration_s,
                "output_bytes": outcome.output_bytes,
                "reason": outcome.reason,
            }
            if turn_usage is not None:
                data["usage"] = turn_usage.model_dump()
            events: list[EventSpec] = [*events_first, (f"turn.{outcome.status}", data)]
            if s.status == "busy" and r.queue:
                queued = r.queue.pop(0)
                next_text.append(queued.text)
                events += self._begin_turn(r, queued.text, messages)
            elif s.status == "busy":
                s.status = "ready"
                events.append(("status", {"status": "ready"}))
            return events

        record, events = await self._update(session_id, finish, messages)
        if next_text:
            self._spawn_turn(record, next_text[0])
        return record, events[-1].seq if events else await self.store.last_seq(session_id)

    async def _wait_turn(self, session_id: str, turn: int, wait_s: float) -> SessionRecord:
        """The record once `turn` has ended, or as it stands after `wait_s` (at most 50 s)."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            record = await self._record(session_id)
            s = record.session
            if self._turn_over(s, turn):
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            running = self._turns.get(session_id)
            if running is not None and running.turn == turn:
                with anyio.move_on_after(remaining):
                    await running.done.wait()
            else:
                await self._wait_change(session_id, min(POLL_S, remaining))

    @staticmethod
    def _turn_over(s: Session, turn: int) -> bool:
        if s.turns > turn:
            return True
        if s.turns < turn:  # still queued, unless the session ended first
            return s.status in ("dead", "failed")
        return s.last_turn is None or s.last_turn.status != "running"

    async def _reply(self, record: SessionRecord, turn: int, cursor: int | None = None) -> TurnReply:
        """What the caller learns of `turn`; `cursor`, if known, is the last event seq as of `record`."""
        s = record.session
        running = self._turns.get(s.id)
        if cursor is None:
            if running is not None and running.flush is not None:
                await running.flush()
            cursor = await self.store.last_seq(s.id)
        base = {"session_id": s.id, "status": s.status, "turn": turn, "events_cursor": cursor}
        if s.turns < turn and s.status == "busy":
            position = turn - s.turns
            return TurnReply(
                **base,
                turn_status="queued",
                next_step=(
                    f"The message is queued: it runs as turn {turn}, after {position} turn(s) ahead of it. "
                    f"Call get_session(session_id='{s.id}', wait_s=30, events_after={cursor}) to follow."
                ),
            )
        if s.turns == turn and s.last_turn is not None and s.last_turn.status == "running":
            return TurnReply(
                **base,
                turn_status="running",
                output=running.buffer.render() if running else "",
                output_bytes=running.buffer.total if running else 0,
                output_cut_bytes=running.buffer.cut if running else 0,
                next_step=self._next_step(s, cursor),
            )
        summary = s.last_turn if s.last_turn and s.last_turn.turn == turn else await self._past_turn(s.id, turn)
        if summary is None:  # closed before a queued message ran
            return TurnReply(**base, turn_status="interrupted", reason="the session closed first", next_step=self._next_step(s))
        return TurnReply(
            **base,
            turn_status=summary.status,
            output=summary.output,
            exit_code=summary.exit_code,
            duration_s=summary.duration_s,
            output_bytes=summary.output_bytes,
            output_cut_bytes=summary.output_cut_bytes,
            reason=summary.reason,
            usage=summary.usage,
            next_step=self._next_step(s),
        )

    async def _past_turn(self, session_id: str, turn: int) -> TurnSummary | None:
        """How an earlier turn ended, rebuilt from its end event and its reply message."""
        ends = [e for e in await self.store.events_of_type(session_id, TURN_END_EVENTS) if e.data.get("turn") == turn]
        if not ends:
            return None
        end = ends[-1]
        replies = [m for m in await self.store.messages(session_id) if m.turn == turn and m.role == "assistant"]
        output = replies[-1].text() if replies else ""
        return TurnSummary(
            turn=turn,
            status=end.type.removeprefix("turn."),  # type: ignore[arg-type]
            started_at=end.time,
            finished_at=end.time,
            duration_s=end.data.get("duration_s"),
            exit_code=end.data.get("exit_code"),
            output=output,
            output_bytes=end.data.get("output_bytes") or 0,
            reason=end.data.get("reason"),
            usage=end.data.get("usage"),
        )

    @staticmethod
    def _next_step(s: Session, cursor: int | None = None) -> str:
        if s.status == "busy":
            after = f", events_after={cursor}" if cursor is not None else ""
            return (
                f"Turn {s.turns} is still running. Call get_session(session_id='{s.id}', wait_s=30{after}) to wait "
                "for it and read new output, or interrupt to stop it."
            )
        if s.status == "ready":
            return "The session is ready: send the next message with send_message, or close it with close_session."
        if s.status == "creating":
            return f"The session is being created (phase {s.phase}). Call get_session(session_id='{s.id}', wait_s=30)."
        if s.status == "failed":
            return f"The session failed: {s.failure_reason}. Read its transcript, then create a new session."
        return "The session is closed. Its transcript stays readable; create a new session to go on."

    # -- reading ----------------------------------------------------------------------------------

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
        events, note = await self._event_batch(session_id, events_after)
        cursor = events[-1].seq if events else (events_after if events_after is not None else await self.store.last_seq(s.id))
        return SessionDetail(
            session=s,
            queued=[q.text for q in record.queue],
            recent_messages=await self.store.messages(session_id, last=4),
            events=events,
            events_cursor=cursor,
            events_note=note,
            next_step=self._next_step(s, cursor),
        )

    async def _wait_until_settled(self, session_id: str, status: str, turn: int, wait_s: float) -> SessionRecord:
        if status == "busy":
            return await self._wait_turn(session_id, turn, wait_s)
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            record = await self._record(session_id)
            remaining = deadline - time.monotonic()
            if record.session.status != "creating" or remaining <= 0:
                return record
            await self._wait_change(session_id, min(POLL_S, remaining))

    async def _event_batch(self, session_id: str, after: int | None) -> tuple[list[Event], str | None]:
        if after is None:
            return [], None
        events = await self.store.events(session_id, after=after, limit=MAX_EVENTS_PER_READ)
        note = None
        budget = MAX_EVENT_TEXT
        kept: list[Event] = []
        for event in events:
            text = event.data.get("text")
            if isinstance(text, str):
                if budget <= 0:
                    note = (
                        f"Stopped at event {kept[-1].seq if kept else after} to keep this reply short; "
                        "call again with the new events_after for more, or read the transcript resource."
                    )
                    break
                if len(text) > budget:
                    event = event.model_copy(update={"data": {**event.data, "text": text[:budget] + "…[cut]"}})
                budget -= len(text)
            kept.append(event)
        if note is None and len(events) == MAX_EVENTS_PER_READ:
            note = "More events follow; call again with the new events_after."
        return kept, note

    async def list(
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
    ) -> SessionPage:
        if not 1 <= limit <= 200:
            raise InvalidInput(f"limit must be between 1 and 200, not {limit}.")
        rows, total, next_cursor = await self.store.query(
            statuses=statuses,
            tags=tags,
            driver=driver,
            agent=agent,
            owner=owner,
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

    async def messages(self, session_id: str, owner: str | None = None) -> list[Message]:
        """The whole conversation, oldest first."""
        await self._record(session_id, owner)
        return await self.store.messages(session_id)

    async def events(self, session_id: str, after: int = 0, limit: int = 1000, owner: str | None = None) -> list[Event]:
        await self._record(session_id, owner)
        return await self.store.events(session_id, after=after, limit=limit)

    async def read_file(self, session_id: str, path: str, owner: str | None = None) -> bytes:
        record = await self._record(session_id, owner)
        if record.session.status in ("creating",) or record.sandbox_id is None:
            raise SessionBusy(f"Session '{session_id}' has no workspace yet (status {record.session.status}).")
        try:
            sandbox = await self._sandbox(record)
        except SandboxNotFound as e:
            raise SessionClosed(f"The sandbox of session '{session_id}' is gone ({e}); its files cannot be read.") from e
        return await sandbox.read_file(path, self.settings.max_file_bytes)

    # -- stopping ---------------------------------------------------------------------------------

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
                message=f"Nothing is running in session '{s.id}' (status {s.status}); nothing to interrupt.",
            )
        turn = s.turns
        running = self._turns.get(session_id)
        if running is not None and running.turn == turn:
            running.stop_reason = "interrupted by the caller"
            running.scope.cancel()
        else:

            def request(r: SessionRecord) -> None:
                r.interrupt_requested = True

            await self._update(session_id, request)
            try:
                await (await self._sandbox(record)).interrupt()
            except SandboxError as e:
                log.warning("interrupting %s through its sandbox failed: %s", session_id, e)
        record = await self._wait_turn(session_id, turn, 10.0)
        stopped = self._turn_over(record.session, turn)
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

    async def _free_sandbox(self, record: SessionRecord, delete: bool) -> None:
        if record.sandbox_id is not None:
            try:
                await (await self._sandbox(record)).close(delete=delete)
            except SandboxNotFound:
                pass
            except SandboxError as e:
                log.warning("closing the sandbox of %s failed: %s", record.session.id, e)
        self._sandboxes.pop(record.session.id, None)

    async def close(self, session_id: str, delete: bool = False, owner: str | None = None) -> CloseReply:
        record = await self._record(session_id, owner)
        s = record.session
        self._samplers.pop(session_id, None)
        dropped = len(record.queue)
        if dropped:

            def drop_queue(r: SessionRecord) -> None:
                r.queue.clear()

            await self._update(session_id, drop_queue)
        if s.status == "busy" and not read_only(record):  # a mirrored session is only marked closed here
            await self.interrupt(session_id)
        was_closed = s.status == "dead"
        if not was_closed or delete:
            await self._free_sandbox(record, delete=delete)
        if delete:
            await self.store.delete(session_id)
            self._notify(session_id)
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

        def mark_dead(r: SessionRecord) -> list[EventSpec]:
            r.session.status, r.session.close_reason, r.session.finished_at = "dead", "closed", now()
            r.lease = None
            return [("session.closed", {"reason": "closed", "dropped_queued": dropped}), ("status", {"status": "dead"})]

        await self._update(session_id, mark_dead)
        return CloseReply(
            session_id=session_id,
            status="dead",
            deleted=False,
            message=f"Session '{session_id}' is closed. Its transcript stays readable.",
        )
