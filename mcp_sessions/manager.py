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
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from sandbox_backends.base import ChecksSpec, Driver, SandboxError, SandboxNotFound

from . import leases, lifecycle, replies, trees
from .agents.base import Agent, PrepareContext, PreparesSandbox, TurnOutcome
from .create import CreateRequest, new_record
from .errors import InvalidInput, PayloadTooLarge, SessionBusy, SessionClosed, SessionNotFound, StoreError, TooManySessions
from .events import EventWaiter
from .mirror import Mirror, read_only
from .models import (
    LIVE_STATUSES,
    CloseReply,
    Event,
    InterruptReply,
    Message,
    QueuedMessage,
    Session,
    SessionDetail,
    SessionPage,
    SessionRecord,
    SessionSummary,
    TextBlock,
    TurnReply,
    now,
)
from .plugins import Catalog
from .sandboxes import Sandboxes, spec_of
from .settings import Settings
from .store import EventSpec, Store
from .transcript import render_transcript
from .turns import MAX_WAIT_S, TURN_END_EVENTS, Turns, check_can_send, turn_over

log = logging.getLogger(__name__)

MAX_QUEUE = 100
REAP_INTERVAL_S = 1.0
FOLLOW_PAGE = 500


class _Orphaned(Exception):
    """Raised inside a store update that found a session held by a dead server; nothing is written."""


class SessionManager:
    """Create with `SessionManager(settings, store, catalog, make_driver, agents)` and use as `async with`."""

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
        self.waiter = EventWaiter(store)
        self._make_driver = make_driver
        self._agents = agents
        self._lease = leases.this_process()
        self._tg: TaskGroup | None = None
        self._sandboxes: Sandboxes | None = None
        self._turns: Turns | None = None
        self._admit = anyio.Lock()
        self.mirror: Mirror | None = None
        """Keeps the sessions of read-only platforms in the store (mirror.py); set by whoever opens the manager."""

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

    @property
    def sandboxes(self) -> Sandboxes:
        assert self._sandboxes is not None, "use the manager as `async with`"
        return self._sandboxes

    @property
    def turns(self) -> Turns:
        assert self._turns is not None, "use the manager as `async with`"
        return self._turns

    # -- plumbing ---------------------------------------------------------------------------------

    async def _update(
        self, session_id: str, mutate: Callable[[SessionRecord], list[EventSpec] | None], messages: Sequence[Message] = ()
    ) -> tuple[SessionRecord, list[Event]]:
        try:
            result = await self.store.update(session_id, mutate, messages)
        except KeyError:
            raise SessionNotFound(session_id) from None
        self.waiter.changed(session_id)
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
        return bool(record.lease and record.lease != self._lease and not self.store.lease_alive(record.lease))

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
                return lifecycle.fail(r, "server restarted while the session was being created")

            record, _ = await self._update(s.id, fail)
            return record
        result = None
        try:
            result = await (await self.sandboxes.of(record)).take_over()
        except SandboxError as e:
            log.warning("cannot reach the sandbox of %s: %s", s.id, e)
        outcome = TurnOutcome(status="interrupted", content=[], reason="server restarted")
        if result is not None:
            outcome.content = [TextBlock(text=result.output)]
            outcome.exit_code, outcome.output = result.exit_code, result.output
            outcome.output_bytes, outcome.output_cut_bytes = result.output_bytes, result.cut_bytes
        return (await self.turns.finish(s.id, s.turns, dead_lease, outcome))[0]

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
            return lifecycle.close(r, "idle timeout")

        try:
            record, events = await self._update(session_id, mark_dead)
        except SessionNotFound:
            return
        if events:
            log.info("closed %s after %g s idle", session_id, record.session.idle_timeout_s)
            await self.sandboxes.free(record, delete=False)

    # -- create -----------------------------------------------------------------------------------

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

    async def _provision(self, record: SessionRecord, files: dict[str, str], done: anyio.Event) -> None:
        sid = record.session.id

        async def phase(name: str, detail: str | None = None) -> None:
            await self._update(sid, lambda r: lifecycle.set_phase(r, name, detail))  # type: ignore[arg-type]

        try:
            with anyio.fail_after(self.settings.create_timeout_s):
                sandbox = await self.sandboxes.create(record, on_phase=phase)
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

    async def _on_sandbox_failure(self, session_id: str, reason: str) -> None:
        def fail(r: SessionRecord) -> list[EventSpec]:
            if r.session.status == "creating":  # its creation fails with the reason it knows better
                return []
            return lifecycle.fail(r, reason)

        try:
            await self._update(session_id, fail)
        except SessionNotFound:
            return
        self.turns.stop(session_id, f"the sandbox failed: {reason}", "failed")

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
        """`sampler` reaches the sending client's model; this message's turn (and only it) asks it."""
        if not text.strip():
            raise InvalidInput("The message is empty. Send the text (for the shell agent, a bash script) to run.")
        size = len(text.encode())
        if size > self.settings.max_message_bytes:
            raise PayloadTooLarge(
                f"The message is {size} bytes, over this server's limit of {self.settings.max_message_bytes}. "
                "Write large inputs into the workspace as files and send a short message that uses them."
            )
        turns = self.turns
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
                queued = {"turn": placed["turn"], "position": len(r.queue), "text": lifecycle.shorten(text, 2000)}
                return [("turn.queued", queued)]
            if why := turns.unrecorded(s):
                raise StoreError(why)
            check_can_send(s)
            placed["turn"] = s.turns + 1
            return turns.begin(r, text, messages)

        try:
            record, _ = await self._update(session_id, start, messages)
        except _Orphaned:  # a turn left by a dead server: finish it, then start ours
            await self._record(session_id, owner)
            record, _ = await self._update(session_id, start, messages)
        if sampler is not None:
            turns.samplers[(session_id, placed["turn"])] = sampler
        if "position" not in placed:
            running = turns.spawn(record, text)
            with anyio.move_on_after(min(max(wait_s, 0.0), MAX_WAIT_S)):
                await running.done.wait()
            if running.ended is not None:  # the usual quick turn: answered from its own end
                record, cursor = running.ended
                return await self._reply(record, placed["turn"], cursor)
            wait_s = 0  # waited already: the turn is still running (or its end could not be recorded)
        record = await turns.wait(session_id, placed["turn"], wait_s)
        return await self._reply(record, placed["turn"])

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
            recent_messages=await self.store.messages(session_id, last=4),
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
            sandbox = await self.sandboxes.of(record)
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
                message=f"Nothing is running in session '{s.id}' (status {s.status}); {await self.sandboxes.interrupt_idle(record)}",
            )
        turn = s.turns
        running = self.turns.running.get(session_id)
        if running is not None and running.turn == turn:
            running.stop("interrupted by the caller")
        else:

            def request(r: SessionRecord) -> None:
                r.interrupt_requested = True

            await self._update(session_id, request)
            try:
                await (await self.sandboxes.of(record)).interrupt()
            except SandboxError as e:
                log.warning("interrupting %s through its sandbox failed: %s", session_id, e)
        record = await self.turns.wait(session_id, turn, 10.0)
        stopped = turn_over(record.session, turn, record.queue)
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

    async def close(
        self, session_id: str, delete: bool = False, owner: str | None = None, keep_children: bool = False
    ) -> CloseReply:
        """Close (or delete) the session, then its descendants (none can be added once it is closed) unless keep_children."""
        record = await self._record(session_id, owner)
        reply = await self._close_one(record, delete)
        if not keep_children and (below := await trees.to_close(self.store, session_id, delete)):
            reply.closed_descendants, reply.message = await trees.close_all(
                self.store, below, lambda r: self._close_one(r, delete, closed_with=session_id), delete, reply.message
            )
        return reply

    async def _close_one(self, record: SessionRecord, delete: bool, **why: str) -> CloseReply:
        s, session_id = record.session, record.session.id
        self.turns.forget_samplers(session_id)
        dropped = len(record.queue)
        if dropped:

            def drop_queue(r: SessionRecord) -> None:
                r.queue.clear()

            await self._update(session_id, drop_queue)
        if s.status == "busy" and not read_only(record):  # a mirrored session is only marked closed here
            await self.interrupt(session_id)
        was_closed = s.status == "dead"
        if not was_closed or delete:
            await self.sandboxes.free(record, delete=delete)
        if delete:
            await self.store.delete(session_id)
            self.waiter.changed(session_id)
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
        await self._update(session_id, lambda r: lifecycle.close(r, "closed", dropped_queued=dropped, **why))
        return CloseReply(
            session_id=session_id,
            status="dead",
            deleted=False,
            message=f"Session '{session_id}' is closed. Its transcript stays readable.",
        )
