"""What a task is, whatever the protocol era: its id, the work it follows, its state read from the session,
cancelling it, and what its turn asks of the client while it runs (2026-07-28: through `tasks/update`)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResultWithTools,
    ElicitRequestFormParams,
    ElicitResult,
    ErrorData,
    TextContent,
)
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import BaseModel

from ..agents.providers.sampling import elicitation_unavailable
from ..auth import caller as owner
from ..errors import InvalidInput, SessionError, SessionNotFound
from ..manager import SessionManager
from ..models import Session, TurnReply, now

log = logging.getLogger(__name__)

EXTENSION = "io.modelcontextprotocol/tasks"
"""The 2026-07-28 tasks extension's identifier."""
Status = Literal["working", "input_required", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
POLL_MS = 2000
"""How often a client should ask how a task stands: agent turns take seconds to hours."""
CANCELLED_REASON = "interrupted by the caller"
"""The reason of a turn stopped by `interrupt` or by cancelling its task: such a task is `cancelled`."""
CANCEL_WAIT_S = 10.0
"""How long cancelling waits for the turn to stop (it gets SIGINT, SIGTERM, then SIGKILL within ~1 s)."""
TASK_ID = re.compile(r"^(ses_[0-9a-f]{32})\.(new|[1-9][0-9]{0,8})$")


@dataclass(frozen=True)
class TaskSupport:
    """How a tool runs as a task: what its call starts, and how the task's result is made from it."""

    follows: Literal["turn", "create"]
    """`turn`: the call returns the TurnReply of a turn it started; `create`: the Session it is creating."""
    required: bool = False
    """The tool runs only as a task (a client that cannot take one is refused)."""
    finish: Callable[[TurnReply], Awaitable[BaseModel]] | None = None
    """Makes the tool's result from its turn's reply once the turn has ended; raise ToolError for a tool
    error (the task completes with it), MCPError for a protocol error (the task fails with it). None: the
    reply is the result."""

    def pending(self, answer: Mapping[str, Any]) -> bool:
        """Whether the work a call started was still going on when the call answered."""
        if self.follows == "turn":
            return bool(answer.get("turn_status") in ("queued", "running"))
        return bool(answer.get("status") == "creating")

    def ref(self, answer: Mapping[str, Any]) -> TaskRef:
        if self.follows == "turn":
            return TaskRef(answer["session_id"], answer["turn"])
        return TaskRef(answer["id"], None)


@dataclass(frozen=True)
class TaskRef:
    """A task, as its id names it: the session, and the turn (None: the session's creation)."""

    session_id: str
    turn: int | None

    @property
    def id(self) -> str:
        return f"{self.session_id}.{self.turn or 'new'}"

    @classmethod
    def parse(cls, task_id: object) -> TaskRef:
        """The task an id names; -32602 for anything this server could not have given out."""
        if task_id is None:
            raise MCPError(INVALID_PARAMS, "The request has no taskId: pass the taskId the tool call returned.")
        found = TASK_ID.match(task_id) if isinstance(task_id, str) else None
        if found is None:
            raise MCPError(
                INVALID_PARAMS,
                f"Malformed taskId {str(task_id)[:100]!r}: this server's task ids look like "
                "'ses_<32 hex digits>.<turn number or new>'; pass the taskId the tool call returned.",
            )
        sid, turn = found.groups()
        return cls(sid, None if turn == "new" else int(turn))


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def unknown_task(task_id: str) -> MCPError:
    return MCPError(
        INVALID_PARAMS,
        f"No task {task_id!r} here: it was never given out to this caller, or its session was deleted.",
    )


@dataclass
class TaskState:
    ref: TaskRef
    tool: str
    created_at: datetime
    status: Status
    message: str
    result: CallToolResult | None = None
    """The tool's result (a tool error included) once completed; a cancelled turn's reply, too."""
    error: ErrorData | None = None
    """Once failed: why no result could be made."""
    input_requests: dict[str, Any] | None = None
    updated_at: datetime = field(default_factory=now)


class Notification(BaseModel):
    """A notification as written: its params exactly as built (the SDK drops null fields, but a Task's
    `ttl` is a required field that is null here)."""

    method: str
    params: dict[str, Any]

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("exclude_none", None)
        return super().model_dump(**kwargs)


def tool_result(model: BaseModel) -> CallToolResult:
    """A tool's result as the server's tools answer: structured, and the same as compact JSON text."""
    structured = model.model_dump(mode="json", by_alias=True)
    text = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


_starting: ContextVar[bool] = ContextVar("mcp_sessions_task_starting", default=False)


def as_task_wait(wait_s: float) -> float:
    """The wait of a tool that runs as a task: none while the call starts a task the client asked for
    (2025-11-25), whose work the task then follows instead of the call."""
    return 0.0 if _starting.get() else wait_s


@contextmanager
def starting() -> Iterator[None]:
    token = _starting.set(True)
    try:
        yield
    finally:
        _starting.reset(token)


def answer_of(result: Any) -> Mapping[str, Any] | None:
    """The structured answer of a successful tool call (a CallToolResult or its wire dict), else None."""
    if isinstance(result, CallToolResult):
        return None if result.is_error else result.structured_content
    if isinstance(result, Mapping) and not result.get("isError"):
        found = result.get("structuredContent")
        return found if isinstance(found, Mapping) else None
    return None


class Tasks:
    """The tools that run as tasks, the tasks' states, and what their turns ask of the clients."""

    def __init__(self) -> None:
        self.support: dict[str, TaskSupport] = {}
        self.asks: dict[str, dict[str, Ask]] = {}
        """Per task id, the questions to the client still unanswered (2026-07-28)."""
        self._asked: dict[str, anyio.Event] = {}

    def changed(self, task_id: str) -> anyio.Event:
        """Set when the task's questions change next (asked, answered, dropped): what a status watch
        waits for besides the task's end."""
        return self._asked.setdefault(task_id, anyio.Event())

    def poke(self, task_id: str) -> None:
        if (event := self._asked.pop(task_id, None)) is not None:
            event.set()

    async def begin(self, manager: SessionManager, tool: str, answer: Mapping[str, Any]) -> TaskState:
        """Record the task of a call that started a turn (or a creation) and answered: after this, any
        server process sharing the store answers for it."""
        ref = self.support[tool].ref(answer)
        await manager.store.add_task(ref.id, ref.session_id, owner(), tool, now())
        return await self.state(manager, ref)

    async def find(self, manager: SessionManager, task_id: object) -> tuple[TaskRef, str, datetime]:
        """The task an id names, its tool and when it began; -32602 unless it is the caller's."""
        ref = TaskRef.parse(task_id)
        found = await manager.store.task(ref.id)
        caller = owner()
        if found is None or (caller is not None and found[0] != caller) or found[1] not in self.support:
            raise unknown_task(ref.id)
        return ref, found[1], found[2]

    async def get(self, manager: SessionManager, task_id: object, wait_s: float = 0.0) -> TaskState:
        ref, _, _ = await self.find(manager, task_id)
        return await self.state(manager, ref, wait_s)

    async def state(self, manager: SessionManager, ref: TaskRef, wait_s: float = 0.0) -> TaskState:
        """How the task stands, waiting up to `wait_s` for it to end."""
        found = await manager.store.task(ref.id)
        if found is None:
            raise unknown_task(ref.id)
        _, tool, created = found
        try:
            if ref.turn is None:
                session = (await manager.get(ref.session_id, wait_s=wait_s)).session
                return self._created(ref, tool, created, session)
            reply = await manager.turn(ref.session_id, ref.turn, wait_s)
        except (SessionNotFound, InvalidInput):
            raise unknown_task(ref.id) from None
        if reply.turn_status in ("queued", "running"):
            asks = {key: ask.request for key, ask in self.asks.get(ref.id, {}).items()}
            status: Status = "input_required" if asks else "working"
            return TaskState(ref, tool, created, status, reply.next_step, input_requests=asks or None)
        if reply.turn_status == "interrupted" and reply.reason == CANCELLED_REASON:
            message = f"Turn {reply.turn} was interrupted: the task was cancelled."
            return TaskState(ref, tool, created, "cancelled", message, tool_result(reply))
        return await self._finished(ref, tool, created, reply)

    @staticmethod
    def _created(ref: TaskRef, tool: str, created: datetime, session: Session) -> TaskState:
        if session.status == "creating":
            return TaskState(ref, tool, created, "working", f"The session is being created (phase {session.phase}).")
        return TaskState(ref, tool, created, "completed", f"The session is {session.status}.", tool_result(session))

    async def _finished(self, ref: TaskRef, tool: str, created: datetime, reply: TurnReply) -> TaskState:
        done = f"Turn {reply.turn} ended: {reply.turn_status}."
        finish = self.support[tool].finish
        if finish is None:
            return TaskState(ref, tool, created, "completed", done, tool_result(reply))
        try:
            return TaskState(ref, tool, created, "completed", done, tool_result(await finish(reply)))
        except (ToolError, SessionError) as e:
            error = CallToolResult(content=[TextContent(type="text", text=str(e))], is_error=True)
            return TaskState(ref, tool, created, "completed", done, error)
        except MCPError as e:
            return TaskState(ref, tool, created, "failed", f"{done} {e.error.message}", error=e.error)
        except Exception:
            log.exception("making the result of task %s failed", ref.id)
            error_data = ErrorData(
                code=INTERNAL_ERROR, message=f"The result of task {ref.id} could not be made (see the server's log)."
            )
            return TaskState(ref, tool, created, "failed", done, error=error_data)

    async def cancel(self, manager: SessionManager, task_id: object) -> TaskState:
        """Stop the task's work: interrupt its turn, or close the session it is creating; then answer how it
        stands. A task that has ended stays as it was; a message still queued behind another turn will not
        run: its turn ends interrupted when its place comes."""
        ref, _, _ = await self.find(manager, task_id)
        state = await self.state(manager, ref)
        if state.status in TERMINAL:
            return state
        self.asks.pop(ref.id, None)
        self.poke(ref.id)
        if ref.turn is None:
            await manager.close(ref.session_id)
            state = await self.state(manager, ref)
            return TaskState(
                ref, state.tool, state.created_at, "cancelled", "The session's creation was cancelled: it is closed."
            )
        turns = (await manager.get(ref.session_id)).session.turns
        if turns == ref.turn:
            await manager.interrupt(ref.session_id)
        elif turns < ref.turn:
            await manager.turns.cancel_queued(ref.session_id, ref.turn, CANCELLED_REASON)
        return await self.state(manager, ref, CANCEL_WAIT_S)

    def answer(self, ref: TaskRef, responses: Mapping[str, Any]) -> None:
        """Hand the client's answers to the questions of a task; keys it did not ask are ignored."""
        asks = self.asks.get(ref.id, {})
        for key, response in responses.items():
            if (ask := asks.pop(key, None)) is not None:
                ask.give(response)
                self.poke(ref.id)


@dataclass
class Ask:
    """One question to the client, waiting for its answer."""

    request: dict[str, Any]
    answered: anyio.Event = field(default_factory=anyio.Event)
    response: Any = None

    def give(self, response: Any) -> None:
        self.response = response
        self.answered.set()


class TaskClient:
    """The client of a task whose turn runs after the call answered (2026-07-28), as the turn's sampler:
    what the turn asks the client's model is put to it as the task's input requests (`tasks/get` shows
    the task `input_required`), and answered through `tasks/update`. The questions live in this process;
    a client polling another process sharing the store sees the task `working` meanwhile."""

    def __init__(self, tasks: Tasks, capabilities: Any) -> None:
        self._tasks = tasks
        self._capabilities = capabilities
        self._task_id: str | None = None
        self._bound = anyio.Event()
        self._numbers = iter(range(1, 1 << 30))

    def bind(self, task_id: str) -> None:
        """The task is known (the turn may have started asking before the call answered)."""
        self._task_id = task_id
        self._bound.set()

    def unavailable(self) -> str | None:
        """Why this client cannot be sampled, or None (asked by the sampling provider of the llm and CLI agents)."""
        sampling = getattr(self._capabilities, "sampling", None)
        if sampling is None:
            return "the calling client does not offer MCP sampling, so the agent has no model to ask"
        if getattr(sampling, "tools", None) is None:
            return "the calling client offers MCP sampling but not tool use in sampling, which the agent needs"
        return None

    async def ask(self, method: str, params: dict[str, Any]) -> Any:
        """Put one question to the client and wait for its answer (the task is `input_required` meanwhile)."""
        await self._bound.wait()
        assert self._task_id is not None
        key = f"{method.split('/')[0]}-{next(self._numbers)}"
        ask = Ask({"method": method, "params": params})
        self._tasks.asks.setdefault(self._task_id, {})[key] = ask
        self._tasks.poke(self._task_id)
        try:
            await ask.answered.wait()
        finally:
            if self._tasks.asks.get(self._task_id, {}).pop(key, None) is not None:
                self._tasks.poke(self._task_id)
        return ask.response

    async def create_message(self, params: dict[str, Any]) -> CreateMessageResultWithTools:
        wire = CreateMessageRequestParams(**params).model_dump(by_alias=True, mode="json", exclude_none=True)
        return CreateMessageResultWithTools.model_validate(await self.ask("sampling/createMessage", wire))

    def elicitation_unavailable(self) -> str | None:
        """Why this client cannot be asked through form elicitation (a tool call's approval), or None if it can."""
        return elicitation_unavailable(self._capabilities)

    async def elicit(self, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Ask the client's user through a form put on the task (`input_required`)."""
        wire = ElicitRequestFormParams(message=message, requested_schema=schema).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
        result = ElicitResult.model_validate(await self.ask("elicitation/create", wire))
        return result.model_dump(mode="json", exclude_none=True)
