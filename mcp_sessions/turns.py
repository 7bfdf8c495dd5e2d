"""Turns: starting one, running its agent, publishing its output, recording how it ended, running the next
queued message, and waiting for one to end.

A turn runs in the process that started it (its lease holder), inside a cancel scope that `interrupt`
cancels; other processes ask it to stop through the store (`interrupt_requested`) and the sandbox. A turn
left by a dead process is finished by whoever finds it (`finish` with the dead lease).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from sandbox_backends.base import SandboxError, SandboxNotFound, SandboxRestarted
from sandbox_backends.output import OutputBuffer

from . import lifecycle
from .agents.base import Agent, TurnContext, TurnOutcome, start_background
from .approvals import TurnApprovals
from .disk_guard import DiskGuard, over_limit
from .errors import SessionBusy, SessionClosed, StoreError
from .events import POLL_S, EventWaiter
from .models import ImageBlock, Message, QueuedMessage, Session, SessionRecord, TextBlock, TurnStatus, TurnSummary, Usage, now
from .sandboxes import Sandboxes
from .settings import Settings
from .store import EventSpec, Store
from .trees import Budgets

log = logging.getLogger(__name__)

OUTPUT_FLUSH_S = POLL_S  # a running turn publishes its output and checks for an interrupt request together
OUTPUT_FLUSH_BYTES = 16384
MAX_WAIT_S = 50.0
TURN_END_EVENTS = ("turn.completed", "turn.failed", "turn.interrupted")

Update = Callable[..., Awaitable[tuple[SessionRecord, list[Any]]]]
"""`update(session_id, mutate, messages=[])`: a store update that wakes this process's waiters."""


def tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


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
    tend: Callable[[], Coroutine[Any, Any, None]] | None = None
    unrecorded: str | None = None
    """Why the turn's end, reached, is not in the store yet (it cannot be written: a full disk)."""
    terminal: bool = False
    """A person's terminal (attach.py), not an agent's turn."""

    def stop(self, reason: str, status: TurnStatus = "interrupted") -> None:
        self.stop_reason, self.stop_status = reason, status
        self.scope.cancel()


class TurnOutput:
    """A running turn's events and command output on their way to the store: output is coalesced into
    `tool.output` events (at most `max_output_bytes` of them a turn), and everything is written in order by
    the next flush, or with the turn's end."""

    def __init__(self, session_id: str, running: RunningTurn, store: Store, changed: Callable[[str], None], limit: int) -> None:
        self._sid = session_id
        self._running = running
        self._store = store
        self._changed = changed
        self._limit = limit
        self._pending = bytearray()
        self._published = 0
        self._queued: list[EventSpec] = []
        self._failing = False

    def _queue_output(self) -> None:
        if not self._pending:
            return
        chunk = bytes(self._pending)
        self._pending.clear()
        room = self._limit - self._published
        if room <= 0:
            return
        data: dict[str, Any] = {"text": chunk[:room].decode("utf-8", errors="replace")}
        if len(chunk) > room:
            data["note"] = "Later output is not published as events; the reply keeps its tail."
        self._published += len(chunk)
        self._queued.append(("tool.output", data))

    def take(self) -> list[EventSpec]:
        """Every event not written yet, output included; the caller writes them."""
        self._queue_output()
        taken = list(self._queued)
        self._queued.clear()
        return taken

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        self._queue_output()
        self._queued.append((type_, data))

    async def output(self, chunk: bytes) -> None:
        self._running.buffer.feed(chunk)
        self._pending.extend(chunk[: OUTPUT_FLUSH_BYTES * 4])
        if len(self._pending) >= OUTPUT_FLUSH_BYTES:
            await self.try_flush()

    async def flush(self) -> None:
        if events := self.take():
            try:
                await self._store.append_events(self._sid, events)
            except BaseException:
                # Not written: a full disk, or cancelled while waiting for the store (the turn ended as
                # this flush began). Kept for the next flush or the turn's end; bounded by max_output_bytes.
                self._queued[:0] = events
                raise
            self._changed(self._sid)

    async def try_flush(self) -> None:
        """Flush, but let a store that cannot be written (a full disk) not stop the command."""
        try:
            await self.flush()
            self._failing = False
        except StoreError as e:
            if not self._failing:
                log.warning("cannot record the output of %s yet: %s", self._sid, e)
            self._failing = True


def check_can_send(s: Session, running: RunningTurn | None = None) -> None:
    """Raise the error a caller gets for a message the session cannot take now, saying what to do instead;
    `running`: the turn this process runs for it, if any."""
    if s.status == "busy":
        started = s.last_turn.started_at.isoformat(timespec="seconds") if s.last_turn else "earlier"
        if running is not None and running.terminal:  # a person's: it ends when they exit it, not on its own
            raise SessionBusy(
                f"Session '{s.id}' is busy: a person's terminal is open in it (mcp-sessions attach, turn {s.turns}, "
                f"since {started}). It takes messages again once that terminal exits (exit or Ctrl-D in it); "
                f"interrupt(session_id='{s.id}') or close_session ends it now, or send with queue=true to run after it."
            )
        raise SessionBusy(
            f"Session '{s.id}' is busy running turn {s.turns} (started {started}). Wait for it with "
            f"get_session(session_id='{s.id}', wait_s=30), or stop it with interrupt, then send again."
        )
    if s.status == "creating":
        raise SessionBusy(f"Session '{s.id}' is still being created (phase {s.phase}). Wait with get_session(wait_s=30).")
    if s.status == "failed":
        raise SessionClosed(f"Session '{s.id}' failed ({s.failure_reason}) and takes no messages. Create a new session.")
    if s.status == "dead":
        raise SessionClosed(f"Session '{s.id}' is closed ({s.close_reason}). Create a new session to go on.")


def turn_over(s: Session, turn: int, queue: Sequence[QueuedMessage] = ()) -> bool:
    """Whether `turn` has ended, or will never run: the session ended while it was queued, or its queued
    message (`queue` is the record's) was cancelled."""
    if s.turns > turn:
        return True
    if s.turns < turn:  # still queued, unless the session ended first or it was cancelled
        return s.status in ("dead", "failed") or cancelled_in(queue, turn - s.turns) is not None
    return s.last_turn is None or s.last_turn.status != "running"


def cancelled_in(queue: Sequence[QueuedMessage], position: int) -> str | None:
    """Why the message at `position` (1: next) of the queue will not run, if it was cancelled."""
    return queue[position - 1].cancelled if 0 < position <= len(queue) else None


class Turns:
    """The turns this process runs. Made by the manager, which owns `tg` and passes its store plumbing."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        agents: dict[str, Agent],
        sandboxes: Sandboxes,
        waiter: EventWaiter,
        update: Update,
        record: Callable[[str], Awaitable[SessionRecord]],
        on_sandbox_failure: Callable[[str, str], Awaitable[None]],
        lease: str,
        tg: TaskGroup,
    ) -> None:
        self.settings = settings
        self.store = store
        self._agents = agents
        self._sandboxes = sandboxes
        self._waiter = waiter
        self._update = update
        self._record = record
        self._on_sandbox_failure = on_sandbox_failure
        self._lease = lease
        self._tg = tg
        self.running: dict[str, RunningTurn] = {}
        self.disk = DiskGuard()
        self.samplers: dict[tuple[str, int], Any] = {}
        """Per (session, turn), how that turn reaches the model of the client that sent its message (MCP
        sampling): a turn that waited in the queue asks its own sender, not whoever sent a message last."""
        self.stopping = False
        self._spawned = anyio.Event()

    # -- starting ---------------------------------------------------------------------------------

    def begin(self, r: SessionRecord, text: str, messages: list[Message], images: Sequence[ImageBlock] = ()) -> list[EventSpec]:
        """Mark the next turn as running in `r` (inside a store update) and add its user message."""
        return lifecycle.start_turn(r, text, self._lease, messages, images)

    def spawn(self, record: SessionRecord, text: str, images: Sequence[ImageBlock] = ()) -> RunningTurn:
        """Run the turn just begun in `record`, in the background."""
        running = RunningTurn(turn=record.session.turns, buffer=OutputBuffer(self.settings.max_output_bytes))
        self.running[record.session.id] = running
        self._spawned.set()
        self._tg.start_soon(self._run, record, text, running, list(images))
        return running

    async def start(self) -> None:
        """Start what runs beside the turns: the starter of their helpers, and the agents' own background work."""
        self._tg.start_soon(self.start_helpers)
        await start_background(self._agents.values(), self._tg)

    async def start_helpers(self) -> None:
        """Every tick, start the helper of each turn that has run since the last tick.

        Most turns end before the first tick: they never start a task beside their own.
        """
        while True:
            if not self.running:
                self._spawned = anyio.Event()
                await self._spawned.wait()
            await anyio.sleep(OUTPUT_FLUSH_S)
            for running in list(self.running.values()):
                if running.helpers is not None and running.tend is not None:
                    running.helpers.start_soon(running.tend)
                    running.tend = None

    # -- running ----------------------------------------------------------------------------------

    async def _run(self, record: SessionRecord, text: str, running: RunningTurn, images: list[ImageBlock]) -> None:
        sid = record.session.id
        out = TurnOutput(sid, running, self.store, self._waiter.changed, self.settings.max_output_bytes)
        running.flush = out.flush
        outcome: TurnOutcome | None = None
        ctx: TurnContext | None = None

        async def tend() -> None:
            """While the turn runs, every tick: publish its new output, and stop it when an interrupt was asked
            for in the store (by this server or another); and from the first tick, watch its workspace's size."""
            if running.helpers is not None and ctx is not None:
                running.helpers.start_soon(self.disk.watch, ctx.sandbox, lambda reason: running.stop(reason, "failed"))
            while True:
                await out.try_flush()
                try:
                    current = await self.store.get(sid)
                except StoreError:  # locked or full: look again next tick
                    pass
                else:
                    if current is None or current.interrupt_requested:
                        running.stop("interrupted by the caller")
                await anyio.sleep(OUTPUT_FLUSH_S)

        try:
            with running.scope:
                budgets = await Budgets.of(self.store, record) if record.budget_from else None
                if budgets is not None and (refused := await budgets.at_start()) is not None:
                    outcome = TurnOutcome(status="failed", content=[], reason=refused, duration_s=0.0)
                    return
                ctx = TurnContext(
                    session=record.session,
                    sandbox=await self._sandboxes.of(record),
                    command_timeout_s=record.session.command_timeout_s,
                    max_output_bytes=self.settings.max_output_bytes,
                    max_file_bytes=self.settings.max_file_bytes,
                    emit=out.emit,
                    output=out.output,
                    options=record.agent_options,
                    history=lambda: self.store.messages(sid, kept_only=True),
                    sampler=(sampler := self.samplers.pop((sid, running.turn), None)),
                    over_budget=budgets.over if budgets is not None else None,
                    images=images,
                    approve=TurnApprovals(sid, running.turn, self.store, self._waiter, self._update, out.flush, sampler).ask,
                )
                error: Exception | None = None
                async with anyio.create_task_group() as helpers:
                    running.helpers, running.tend = helpers, tend  # started by start_helpers
                    if budgets is not None and budgets.seconds_left() < float("inf"):
                        helpers.start_soon(self._stop_when_out_of_time, running, budgets)
                    try:
                        outcome = await self._agents[record.session.agent].run_turn(ctx, text)
                        if (over := await self.disk.after_turn(ctx.sandbox)) is not None:
                            outcome = over_limit(outcome, over)
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
                    if ctx is not None:  # what the agent spent, said and did before it was stopped
                        outcome.usage = ctx.usage  # a CLI's proxy may have counted usage before any message
                        outcome.messages = ctx.messages or None
                try:
                    await self._record_end(sid, running, outcome, out.take())
                finally:
                    if self.running.get(sid) is running:
                        del self.running[sid]
                    running.done.set()
                    self._waiter.changed(sid)

    @staticmethod
    async def _stop_when_out_of_time(running: RunningTurn, budgets: Budgets) -> None:
        """Fail the turn once it has run the time a `max_duration_s` over it had left at its start."""
        started = anyio.current_time()
        await anyio.sleep(budgets.seconds_left())
        running.stop(budgets.out_of_time(anyio.current_time() - started), "failed")

    async def _record_end(self, sid: str, running: RunningTurn, outcome: TurnOutcome, events: list[EventSpec]) -> None:
        """Write how a turn ended; while the store cannot be written (a full disk), try again every second.
        A server stopped meanwhile leaves the turn to the next one, which marks it interrupted."""
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    running.ended = await self.finish(sid, running.turn, self._lease, outcome, events)
                return
            except StoreError as e:
                if self.stopping:
                    return
                if running.unrecorded is None:
                    log.warning("cannot record the end of turn %s of %s yet: %s", running.turn, sid, e)
                running.unrecorded = str(e)
            await anyio.sleep(1.0)

    # -- ending -----------------------------------------------------------------------------------

    async def finish(
        self, session_id: str, turn: int, lease: str | None, outcome: TurnOutcome, events_first: Sequence[EventSpec] = ()
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
                return list(events_first)  # someone else finished it already
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
            s.usage.add(outcome.usage)
            s.turn_time_s += s.last_turn.duration_s or 0.0
            data: dict[str, Any] = {
                "turn": turn,
                "exit_code": outcome.exit_code,
                "duration_s": s.last_turn.duration_s,
                "output_bytes": outcome.output_bytes,
                "reason": outcome.reason,
            }
            if turn_usage is not None:
                data["usage"] = turn_usage.model_dump()
            events: list[EventSpec] = [*events_first, (f"turn.{outcome.status}", data)]
            while s.status == "busy" and r.queue and r.queue[0].cancelled is not None:
                skipped = r.queue.pop(0)
                events += lifecycle.skip_turn(r, skipped.text, skipped.cancelled or "", messages, finished)
            if s.status == "busy" and r.queue:
                queued = r.queue.pop(0)
                next_text.append(queued.text)
                s.last_activity_at = finished
                return events + self.begin(r, queued.text, messages)
            return events + lifecycle.turn_ended(r, finished)

        record, events = await self._update(session_id, finish, messages)
        if next_text:
            self.spawn(record, next_text[0])
        return record, events[-1].seq if events else await self.store.last_seq(session_id)

    async def cancel_queued(self, session_id: str, turn: int, reason: str) -> bool:
        """Keep the queued `turn` from running: when its place comes it ends interrupted with `reason`.
        False if it is not queued (it runs, has ended, or the session is not busy)."""

        def cancel(r: SessionRecord) -> list[EventSpec]:
            position = turn - r.session.turns
            if r.session.status == "busy" and 0 < position <= len(r.queue):
                r.queue[position - 1].cancelled = reason
                marked.append(True)
            return []

        marked: list[bool] = []
        await self._update(session_id, cancel)
        self.samplers.pop((session_id, turn), None)
        return bool(marked)

    def forget_samplers(self, session_id: str) -> None:
        """The session's turns will not run (it is closing): drop the samplers they were given."""
        for key in [k for k in self.samplers if k[0] == session_id]:
            del self.samplers[key]

    def unrecorded(self, s: Session) -> str | None:
        """Why the session's running turn, which has ended in this process, still shows as running; None if it
        does not. The store says busy until the end is written, but the caller must not wait for a turn that is over."""
        running = self.running.get(s.id)
        if s.status != "busy" or running is None or running.turn != s.turns or running.unrecorded is None:
            return None
        return f"Turn {s.turns} of session '{s.id}' has ended, but its end cannot be recorded yet: {running.unrecorded}"

    def stop(self, session_id: str, reason: str, status: TurnStatus = "interrupted") -> bool:
        """Stop the turn this process runs for the session, if any; False if it runs none."""
        running = self.running.get(session_id)
        if running is None:
            return False
        running.stop(reason, status)
        return True

    # -- waiting ----------------------------------------------------------------------------------

    async def wait(self, session_id: str, turn: int, wait_s: float) -> SessionRecord:
        """The record once `turn` has ended, or as it stands after `wait_s` (at most 50 s)."""
        deadline = anyio.current_time() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            cursor = await self.store.last_seq(session_id)
            record = await self._record(session_id)
            if turn_over(record.session, turn, record.queue):
                return record
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return record
            running = self.running.get(session_id)
            if running is not None and running.turn == turn:
                with anyio.move_on_after(remaining):
                    await running.done.wait()
            else:
                await self._waiter.wait(session_id, cursor, remaining)
