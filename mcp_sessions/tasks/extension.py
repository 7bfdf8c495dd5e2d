"""MCP tasks in 2026-07-28: the `io.modelcontextprotocol/tasks` extension, and the one set of `tasks/*`
methods that answers both eras.

The server decides per call: a client that declares the extension in the request's capabilities and calls
`send_message` or `create_session` gets the ordinary result if the work ended within the call's `wait_s`,
and a task (`resultType: "task"`) if it did not, instead of a 'busy' reply to poll with get_session.
A turn that asks the client's model (the llm agent sampling through the client) puts the question on its
task (`input_required`, `inputRequests`) and gets the answer through `tasks/update`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolRequestParams, RequestParams
from mcp_types import HEADER_MISMATCH, INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from . import handshake
from .core import EXTENSION, POLL_MS, TaskClient, Tasks, TaskState, answer_of, iso

_client: ContextVar[TaskClient | None] = ContextVar("mcp_sessions_task_client", default=None)


def task_client() -> TaskClient | None:
    """The sampler of a turn that may become a task (2026-07-28): its questions go on the task."""
    return _client.get()


class TaskParams(RequestParams):
    """The params of the tasks/* methods; the id is checked by the server, which says what is wrong with it."""

    task_id: Any = None
    input_responses: Any = None
    cursor: str | None = None


def task_wire(state: TaskState, detailed: bool) -> dict[str, Any]:
    """A Task as the extension writes it; `detailed` (tasks/get) inlines the result, error or questions."""
    out: dict[str, Any] = {
        "taskId": state.ref.id,
        "status": state.status,
        "statusMessage": state.message,
        "createdAt": iso(state.created_at),
        "lastUpdatedAt": iso(state.updated_at),
        "ttlMs": None,
        "pollIntervalMs": POLL_MS,
    }
    if detailed and state.status == "completed" and state.result is not None:
        out["result"] = state.result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if detailed and state.status == "failed" and state.error is not None:
        out["error"] = state.error.model_dump(by_alias=True, mode="json", exclude_none=True)
    if detailed and state.input_requests:
        out["inputRequests"] = state.input_requests
    return out


def check_routing_header(ctx: ServerRequestContext[Any, Any], task_id: object) -> None:
    """Over HTTP, an `Mcp-Name` header on a tasks/* request names the task in its body (SEP-2663)."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    named = headers.get("mcp-name") if headers is not None else None
    if named is not None and named.strip() != task_id:
        raise MCPError(HEADER_MISMATCH, "The Mcp-Name header does not match the request's taskId: send the same id in both.")


Handler = Callable[[ServerRequestContext[Any, Any], TaskParams], Awaitable[dict[str, Any]]]


class TasksExtension(Extension):
    """`send_message` and `create_session` as tasks: the extension in 2026-07-28, the core methods of
    2025-11-25 (with handshake.middleware) on the same method names."""

    identifier = EXTENSION

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks

    def methods(self) -> Sequence[MethodBinding]:
        both: dict[str, tuple[Handler | None, Handler | None]] = {
            "tasks/get": (self._get_handshake, self._get),
            "tasks/cancel": (self._cancel_handshake, self._cancel),
            "tasks/result": (self._result_handshake, None),
            "tasks/list": (self._list_handshake, None),
            "tasks/update": (None, self._update),
        }
        return [MethodBinding(method, TaskParams, self._by_era(method, *pair)) for method, pair in both.items()]

    @staticmethod
    def _by_era(method: str, handshake_era: Handler | None, modern: Handler | None) -> Handler:
        async def handle(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
            is_modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            chosen = modern if is_modern else handshake_era
            if chosen is None:
                era = "the io.modelcontextprotocol/tasks extension" if is_modern else "MCP 2025-11-25"
                raise MCPError(METHOD_NOT_FOUND, f"{method} is not part of {era}.", data=method)
            if is_modern:
                require_client_extension(ctx, EXTENSION)
            if params.task_id is not None:
                check_routing_header(ctx, params.task_id)
            return await chosen(ctx, params)

        return handle

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        support = self.tasks.support.get(params.name)
        if support is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        declared = ctx.session.client_capabilities
        if declared is None or EXTENSION not in (declared.extensions or {}):
            if support.required:
                require_client_extension(ctx, EXTENSION)
            return await call_next(ctx)
        client = TaskClient(self.tasks, declared)
        token = _client.set(client)
        try:
            result = await call_next(ctx)
        finally:
            _client.reset(token)
        answer = answer_of(result)
        if answer is None or not support.pending(answer):
            return result  # ended within the call's wait (or failed): the ordinary result
        state = await self.tasks.begin(ctx.lifespan_context.manager, params.name, answer)
        client.bind(state.ref.id)
        return {"resultType": "task", **task_wire(state, detailed=False)}

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        return task_wire(await self.tasks.get(ctx.lifespan_context.manager, params.task_id), detailed=True)

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        await self.tasks.cancel(ctx.lifespan_context.manager, params.task_id)
        return {}

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        ref, _, _ = await self.tasks.find(ctx.lifespan_context.manager, params.task_id)
        if not isinstance(params.input_responses, Mapping):
            raise MCPError(
                INVALID_PARAMS, "tasks/update needs inputResponses: an object of answers keyed by the inputRequests keys."
            )
        self.tasks.answer(ref, params.input_responses)
        return {}

    async def _get_handshake(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        return await handshake.get(self.tasks, ctx.lifespan_context.manager, params.task_id)

    async def _cancel_handshake(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        return await handshake.cancel(self.tasks, ctx.lifespan_context.manager, params.task_id)

    async def _result_handshake(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        return await handshake.result(self.tasks, ctx.lifespan_context.manager, params.task_id)

    async def _list_handshake(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        return await handshake.list_page(self.tasks, ctx.lifespan_context.manager, params.cursor)
