"""MCP tasks in the handshake era (2025-11-25, experimental): a `tools/call` with a `task` field answers at
once with the task, and `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel` follow it.

The SDK (mcp 2.3) knows the wire types but serves none of it: its `tools/call` result check would refuse
a CreateTaskResult, so the task-augmented call is answered by a server middleware, which owns its result.
"""

from __future__ import annotations

from typing import Any, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ..errors import InvalidInput
from ..manager import SessionManager
from ..turns import MAX_WAIT_S
from .core import POLL_MS, TERMINAL, Notification, Tasks, TaskState, answer_of, iso, owner, starting

RELATED_TASK = "io.modelcontextprotocol/related-task"
PAGE = 50


def task_wire(state: TaskState) -> dict[str, Any]:
    """A Task as 2025-11-25 writes it: `ttl` is required and null (kept as long as the session is)."""
    return {
        "taskId": state.ref.id,
        "status": state.status,
        "statusMessage": state.message,
        "createdAt": iso(state.created_at),
        "lastUpdatedAt": iso(state.updated_at),
        "ttl": None,
        "pollInterval": POLL_MS,
    }


def middleware(tasks: Tasks) -> Any:
    """The server middleware that starts a task when a handshake-era `tools/call` asks for one."""

    async def task_augmented_call(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params or {}
        if ctx.method != "tools/call" or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        tool = str(params.get("name"))
        support = tasks.support.get(tool)
        if params.get("task") is None:
            if support is not None and support.required:
                raise MCPError(METHOD_NOT_FOUND, f"The tool {tool} runs only as a task: call it with a `task` field.")
            return await call_next(ctx)
        if support is None:
            raise MCPError(
                METHOD_NOT_FOUND,
                f"The tool {tool[:100]} does not run as a task; call it without `task` "
                f"(tools that do: {', '.join(sorted(tasks.support))}).",
            )
        with starting():
            result = await call_next(ctx)
        answer = answer_of(result)
        if answer is None:  # the call failed before starting anything: say why, as the tool would have
            content = result.get("content") if isinstance(result, dict) else None
            text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) else None
            raise MCPError(INVALID_PARAMS, str(text or f"{tool} failed before its task could start."))
        state = await tasks.begin(ctx.lifespan_context.manager, tool, answer)
        if state.status not in TERMINAL:
            session = ctx.session

            async def send(changed: TaskState) -> None:
                status = Notification(method="notifications/tasks/status", params=task_wire(changed))
                await session.send_notification(cast(Any, status))  # a method the SDK's union leaves out

            ctx.lifespan_context.task_watches.follow(state.ref, send)
        return {"task": task_wire(state)}

    return task_augmented_call


async def get(tasks: Tasks, manager: SessionManager, task_id: object) -> dict[str, Any]:
    return task_wire(await tasks.get(manager, task_id))


async def result(tasks: Tasks, manager: SessionManager, task_id: object) -> dict[str, Any]:
    """The tool's result once the task has ended (waiting for it, as the spec says); a cancelled turn's
    is its reply as interrupted."""
    state = await tasks.get(manager, task_id)
    while state.status not in TERMINAL:
        state = await tasks.state(manager, state.ref, MAX_WAIT_S)
    if state.result is None:
        assert state.error is not None
        raise MCPError(state.error.code, state.error.message)
    out = state.result.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"result_type"})
    out["_meta"] = {**(out.get("_meta") or {}), RELATED_TASK: {"taskId": state.ref.id}}
    return out


async def list_page(tasks: Tasks, manager: SessionManager, cursor: str | None) -> dict[str, Any]:
    """The caller's tasks, newest first (every task on stdio, where there are no owners)."""
    try:
        ids, next_cursor = await manager.store.tasks(owner(), PAGE, cursor)
    except InvalidInput as e:  # a cursor this server did not give out
        raise MCPError(INVALID_PARAMS, f"Invalid cursor: {e}; pass the nextCursor of the previous page.") from None
    listed = []
    for task_id in ids:
        try:
            listed.append(task_wire(await tasks.get(manager, task_id)))
        except MCPError:  # the tool of a task given out by another version of this server is gone
            continue
    return {"tasks": listed, **({"nextCursor": next_cursor} if next_cursor else {})}


async def cancel(tasks: Tasks, manager: SessionManager, task_id: object) -> dict[str, Any]:
    """Cancel a task that has not ended (2025-11-25 refuses to cancel one that has, with -32602)."""
    state = await tasks.get(manager, task_id)
    if state.status in TERMINAL:
        raise MCPError(INVALID_PARAMS, f"Task {state.ref.id} has already ended ({state.status}); there is nothing to cancel.")
    state = await tasks.cancel(manager, task_id)
    if state.status not in TERMINAL:
        state.message = f"Cancelling: {state.message}"
    return task_wire(state)
