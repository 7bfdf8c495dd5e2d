"""Telling a client how its tasks stand as they change, so it need not poll.

- 2025-11-25: the connection that started a task gets `notifications/tasks/status` (the Task) each time
  the task's status changes, until it ends.
- 2026-07-28 (tasks extension): a `subscriptions/listen` request may name `taskIds`; the acknowledgement
  says which of them the server follows (the caller's own tasks), then `notifications/tasks` carries the
  detailed task (its result once completed, its questions while `input_required`) on that stream: once
  at once, so a task that ended before the listen is not waited for forever, then at every change.

Both are optional in the specs and `tasks/get` stays the source of truth; a notification that cannot be
sent ends its watch quietly. A task's state is read from the store as `tasks/get` reads it, so a task
whose turn another server process runs is followed just the same.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp.types import SubscriptionFilter, SubscriptionsAcknowledgedNotification, SubscriptionsListenRequestParams

from ..manager import SessionManager
from ..turns import MAX_WAIT_S
from .core import EXTENSION, TERMINAL, Notification, TaskRef, Tasks, TaskState
from .extension import task_wire

log = logging.getLogger(__name__)

MAX_WATCHES = 1000
"""Tasks followed at once for handshake-era connections; past it, those clients poll as before."""
MAX_LISTENED_TASKS = 100
"""Task ids one `subscriptions/listen` stream may follow; the acknowledgement lists those taken."""

Send = Callable[[TaskState], Awaitable[None]]


async def changes(tasks: Tasks, manager: SessionManager, ref: TaskRef) -> AsyncIterator[TaskState]:
    """The task as it stands now, then again each time its status or its open questions change; the last
    one yielded has ended."""
    last: tuple[str, tuple[str, ...]] | None = None
    while True:
        asked = tasks.changed(ref.id)
        state = await tasks.state(manager, ref)
        key = (state.status, tuple(sorted(state.input_requests or ())))
        if key != last:
            last = key
            yield state
        if state.status in TERMINAL:
            tasks.poke(ref.id)  # an ended task asks nothing more: let its entry go
            return
        await _first_of(partial(tasks.state, manager, ref, MAX_WAIT_S), asked.wait)


async def _first_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Wait until one of `waits` is over; the others are cancelled."""
    async with anyio.create_task_group() as tg:

        async def until(wait: Callable[[], Awaitable[Any]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(until, wait)


class StatusWatches:
    """The handshake-era watches: one per task a connection started, for the server's lifetime."""

    def __init__(self, tasks: Tasks, manager: SessionManager, group: TaskGroup) -> None:
        self._tasks = tasks
        self._manager = manager
        self._group = group
        self.running = 0

    def follow(self, ref: TaskRef, send: Send) -> bool:
        """Send the task's state on each change after the one its creator was just told; False when too
        many are followed already (the client polls, as the spec lets it)."""
        if self.running >= MAX_WATCHES:
            log.debug("not following task %s: %d tasks followed already", ref.id, self.running)
            return False
        self.running += 1
        self._group.start_soon(self._watch, ref, send)
        return True

    async def _watch(self, ref: TaskRef, send: Send) -> None:
        try:
            first = True
            async for state in changes(self._tasks, self._manager, ref):
                if not first:
                    await send(state)
                first = False
        except Exception as e:  # a client gone, a session deleted: its watch ends, nothing else does
            log.debug("stopped following task %s: %s", ref.id, e)
        finally:
            self.running -= 1


async def listen(
    ctx: ServerRequestContext[Any, Any],
    params: SubscriptionsListenRequestParams,
    tasks: Tasks,
    serve: Callable[[ServerRequestContext[Any, Any], SubscriptionsListenRequestParams], Awaitable[Any]],
) -> Any:
    """Serve a 2026-07-28 listen stream that may name `taskIds`: `serve` (the SDK's handler) serves the rest
    of the filter; its acknowledgement gains the task ids followed, and the tasks' notifications follow it."""
    wanted = (params.notifications.model_extra or {}).get("taskIds")
    if wanted is None:
        return await serve(ctx, params)
    require_client_extension(ctx, EXTENSION)
    if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
        raise MCPError(-32602, "notifications.taskIds must be a list of task id strings, as the tool calls returned them.")
    manager: SessionManager = ctx.lifespan_context.manager
    taken: list[TaskRef] = []
    for task_id in dict.fromkeys(wanted):
        if len(taken) == MAX_LISTENED_TASKS:
            break
        try:
            taken.append((await tasks.find(manager, task_id))[0])
        except MCPError:  # not the caller's, or not a task: left out of the acknowledgement
            continue
    stream = _TaskStream(ctx, [ref.id for ref in taken])
    async with anyio.create_task_group() as tg:

        async def follow(ref: TaskRef) -> None:
            await stream.acked.wait()
            try:
                async for state in changes(tasks, manager, ref):
                    await stream.send(task_wire(state, detailed=True))
            except Exception as e:  # its session deleted meanwhile: the other tasks and the stream go on
                log.debug("stopped following task %s on a listen stream: %s", ref.id, e)

        for ref in taken:
            tg.start_soon(follow, ref)
        try:
            return await serve(dataclasses.replace(ctx, session=cast(Any, stream)), params)
        finally:
            tg.cancel_scope.cancel()


class _TaskStream:
    """Stands in for the session while the SDK serves a listen stream: adds the task ids to its
    acknowledgement, and lets the task watches write to the stream only once that is out (the
    acknowledgement is the stream's first frame)."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], task_ids: list[str]) -> None:
        self._ctx = ctx
        self._task_ids = task_ids
        self.acked = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx.session, name)

    async def send_notification(self, notification: Any, related_request_id: Any = None) -> None:
        if isinstance(notification, SubscriptionsAcknowledgedNotification):
            honored = notification.params.notifications.model_dump(by_alias=True, exclude_none=True)
            with_tasks = SubscriptionFilter.model_validate({**honored, "taskIds": self._task_ids})
            params = notification.params.model_copy(update={"notifications": with_tasks})
            await self._ctx.session.send_notification(notification.model_copy(update={"params": params}), related_request_id)
            self.acked.set()
            return
        await self._ctx.session.send_notification(notification, related_request_id)

    async def send(self, task: dict[str, Any]) -> None:
        meta = {SUBSCRIPTION_ID_META_KEY: self._ctx.request_id}
        note = Notification(method="notifications/tasks", params={**task, "_meta": meta})
        await self._ctx.session.send_notification(cast(Any, note), related_request_id=self._ctx.request_id)
