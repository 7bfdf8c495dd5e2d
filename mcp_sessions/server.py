"""The MCP surface: six tools and the session resources. A thin adapter over SessionManager.

Every word here is read by an LLM deciding what to call, so descriptions say what a tool does, when
to use it and what comes back; errors say what went wrong and what to do next.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar, cast

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.types import (
    CallToolResult,
    EmptyResult,
    InputRequiredResult,
    Resource,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
    ToolExecution,
    UnsubscribeRequestParams,
)
from pydantic import Field, ValidationError

from sandbox_backends.base import PathNotAllowed, SandboxError
from sandbox_backends.registry import PluginError

from . import __version__, sdk
from .agents.providers.sampling import ConnectionSampler
from .app import open_manager
from .auth import caller as _owner
from .create import CreateRequest, create_parameters
from .errors import SessionError, SessionNotFound
from .files import FileMissing, list_folder
from .images import Images
from .inputs import IsoTime, PageSize, Seq, WaitS, one_line
from .manager import SessionManager
from .models import CloseReply, InterruptReply, Session, SessionDetail, SessionPage, Status, TurnReply
from .notifications import ChangeFeed, with_progress
from .plugins import catalog
from .schemas import flatten, lean_input
from .settings import Settings
from .stdio import stdio_streams
from .tasks import EXTENSION, Tasks, TasksExtension, TaskSupport, as_task_wait, middleware, task_client
from .tasks import status as task_status
from .tasks.status import StatusWatches
from .tools import ToolPlugin

INSTRUCTIONS = """\
Run work in isolated agent sessions. A session is a sandbox with a persistent shell (the `shell` agent runs \
each message as a bash script; cd, exported variables and functions carry over between messages). \
create_session(agent="llm") gives a coding agent instead: each message is a task that a model carries out \
with bash and file tools in the sandbox; the reply is its answer, with token usage and cost.

Typical flow: create_session -> send_message (waits up to wait_s; if the turn is still running you get \
status "busy" and the output so far) -> get_session(wait_s=30, events_after=<cursor>) until the turn ends -> \
close_session. interrupt stops a running turn and keeps the session usable. Sessions survive server restarts; \
list_sessions finds them again. Resources: session://{id} (state), session://{id}/transcript, \
session://{id}/events, session://{id}/files/{path}, session://{id}/folders/{path}."""

P = ParamSpec("P")
R = TypeVar("R")


def _tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the session layer's errors into tool errors the caller's model can act on."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (SessionError, SandboxError) as e:
            raise ToolError(str(e)) from e

    return wrapper


@dataclass
class AppState:
    """What the server's lifespan holds: the manager, the feed that notifies clients of sessions, and the
    watches that tell handshake-era clients how their tasks stand."""

    manager: SessionManager
    feed: ChangeFeed
    task_watches: StatusWatches


def _manager(ctx: Context) -> SessionManager:
    state = cast(AppState, ctx.request_context.lifespan_context)
    state.feed.connection(ctx.request_context.session, _owner())
    return state.manager


SessionId = Annotated[str, Field(description="The session id (ses_...), as returned by create_session or list_sessions.")]


class SessionsServer(MCPServer[AppState]):
    """MCPServer whose resources/list shows the live sessions, whose output schemas are quick to check
    (see schemas.py), whose results carry their JSON compactly in the text block, as a model reads it,
    and whose stdio transport polls the pipes instead of handing each message to a thread (stdio.py)."""

    settings_: Settings
    state: AppState | None = None
    """The manager and change feed every connection uses, while `serving()` runs."""
    tasks: Tasks
    texts: dict[str, Callable[[dict[str, Any]], str]]
    """Per tool, how its result reads in the text block, if not as its compact JSON (tool plugins)."""
    _arguments: dict[str, list[str]] | None = None

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[AppState]:
        """Open the manager and its change feed for every connection, until the block ends."""
        async with open_manager(self.settings_) as manager, anyio.create_task_group() as tg:
            feed = ChangeFeed(manager.waiter, manager.store, sdk.subscription_bus(self))
            state = AppState(manager, feed, StatusWatches(self.tasks, manager, tg))
            await tg.start(state.feed.run)  # before the first request: what that request changes gets reported
            self.state = state
            try:
                yield state
            finally:
                self.state = None
                tg.cancel_scope.cancel()

    async def run_stdio_async(self) -> None:
        async with stdio_streams() as (read_stream, write_stream):
            server = sdk.lowlevel(self)
            await server.run(read_stream, write_stream, server.create_initialization_options())

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        for tool in tools:
            tool.description = " ".join((tool.description or "").split())  # a docstring's layout is bytes a model reads
            tool.input_schema = lean_input(tool.input_schema)
            if tool.output_schema is not None:
                tool.output_schema = flatten(tool.output_schema)
            if (support := self.tasks.support.get(tool.name)) is not None:
                tool.execution = ToolExecution(task_support="required" if support.required else "optional")
        return tools

    async def arguments_of(self, name: str) -> list[str] | None:
        """The argument names a tool takes (None for no such tool), from the schemas it publishes."""
        if self._arguments is None:
            self._arguments = {t.name: list(t.input_schema.get("properties", {})) for t in await super().list_tools()}
        return self._arguments.get(name)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        taken = await self.arguments_of(name)
        if taken is not None and (unknown := [a for a in arguments if a not in taken]):
            raise ToolError(unknown_arguments(name, unknown, taken))
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError) and not isinstance(
                e, UnexpectedToolError
            ):  # the caller's arguments: one line per field, the range said
                raise ToolError(f"Invalid arguments for {name}: {one_line(e.__cause__, 'arguments')}.") from e.__cause__
            raise
        if isinstance(result, CallToolResult) and result.structured_content is not None and not result.is_error:
            render = self.texts.get(name)
            structured = result.structured_content
            text = render(structured) if render else json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
            result.content = [TextContent(type="text", text=text)]
        return result

    async def list_resources(self) -> list[Resource]:
        static = await super().list_resources()
        state = self.state
        if state is None:
            return static
        listed = []
        for s in await state.manager.live_sessions(owner=_owner()):
            name = s.title or s.id
            listed.append(
                Resource(
                    uri=f"session://{s.id}",
                    name=f"{name} (state)",
                    mime_type="application/json",
                    description=f"State of session {s.id}: {s.status}, {s.turns} turn(s).",
                )
            )
            listed.append(
                Resource(
                    uri=f"session://{s.id}/transcript",
                    name=f"{name} (transcript)",
                    mime_type="text/plain",
                    description=f"The whole conversation of session {s.id}.",
                )
            )
        return static + listed


def unknown_arguments(tool: str, unknown: list[str], taken: list[str]) -> str:
    """The error for arguments a tool does not take: the SDK would drop them silently, and a model that
    misspells an option must learn that it did (input schemas say `additionalProperties: false`)."""
    hints = [
        f"'{u[:60]}' (did you mean '{close[0]}'?)" if (close := difflib.get_close_matches(u, taken, 1)) else f"'{u[:60]}'"
        for u in unknown[:10]
    ]
    return (
        f"Unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for {tool}, which takes only: {', '.join(taken)}."
    )


def create_server(settings: Settings, shared: bool = False) -> SessionsServer:
    """The MCP server. With `shared`, its lifespan opens no manager of its own: whoever runs it (the HTTP
    app) keeps `server.serving()` open around it, and every connection uses that one."""

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        assert isinstance(server, SessionsServer)
        if shared:
            assert server.state is not None, "serve the shared server inside server.serving()"
            yield server.state
            return
        async with server.serving() as state:
            yield state

    tasks = Tasks()
    mcp = SessionsServer(
        "mcp-sessions",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level=settings.log_level.upper(),  # type: ignore[arg-type]
        lifespan=lifespan,
        subscriptions=InMemorySubscriptionBus(),
        extensions=[TasksExtension(tasks)],
        middleware=[middleware(tasks)],
    )
    mcp.settings_ = settings
    mcp.tasks = tasks
    mcp.texts = {}
    tasks.support.update(send_message=TaskSupport("turn"), create_session=TaskSupport("create"))
    sdk.advertise_tasks(mcp, EXTENSION)
    register_plugin_tools(mcp, register_tools(mcp))
    register_resources(mcp)
    register_notifications(mcp)
    return mcp


async def _owns(manager: SessionManager, uri: str, owner: str) -> bool:
    """Whether a session:// URI names a session of `owner` (other URIs are nobody's, so allowed)."""
    if not uri.startswith("session://"):
        return True
    session_id = uri.removeprefix("session://").split("/", 1)[0]
    try:
        await manager.get(session_id, owner=owner)
    except SessionNotFound:
        return False
    return True


def register_notifications(mcp: SessionsServer) -> None:
    """resources/subscribe, resources/unsubscribe and logging/setLevel for handshake-era clients, which
    MCPServer does not serve itself, and the capabilities that announce them."""

    async def subscribe(ctx: ServerRequestContext[AppState], params: SubscribeRequestParams) -> EmptyResult:
        ctx.lifespan_context.feed.subscribe(ctx.session, str(params.uri), _owner())
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[AppState], params: UnsubscribeRequestParams) -> EmptyResult:
        ctx.lifespan_context.feed.unsubscribe(ctx.session, str(params.uri), _owner())
        return EmptyResult()

    async def set_level(ctx: ServerRequestContext[AppState], params: SetLevelRequestParams) -> EmptyResult:
        ctx.lifespan_context.feed.set_level(ctx.session, params.level, _owner())
        return EmptyResult()

    sdk_listen = ListenHandler(sdk.subscription_bus(mcp))

    async def listen(ctx: ServerRequestContext[AppState], params: SubscriptionsListenRequestParams) -> Any:
        """2026-07-28 subscriptions: drop URIs of sessions the caller does not own before the SDK honors
        them, so an owner cannot even learn when another owner's session changes."""
        owner, wanted = _owner(), params.notifications.resource_subscriptions
        if owner is not None and wanted:
            kept = [uri for uri in wanted if await _owns(ctx.lifespan_context.manager, uri, owner)]
            notifications = params.notifications.model_copy(update={"resource_subscriptions": kept})
            params = params.model_copy(update={"notifications": notifications})
        return await task_status.listen(ctx, params, mcp.tasks, sdk_listen)

    sdk.add_request_handler(mcp, "subscriptions/listen", SubscriptionsListenRequestParams, listen)
    sdk.add_request_handler(mcp, "resources/subscribe", SubscribeRequestParams, subscribe)
    sdk.add_request_handler(mcp, "resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    sdk.add_request_handler(mcp, "logging/setLevel", SetLevelRequestParams, set_level)
    sdk.announce_resource_changes(mcp)
    sdk.withdraw_request_handlers(mcp, "prompts/list", "prompts/get")  # there are none: do not advertise them


def register_tools(mcp: MCPServer[AppState]) -> set[str]:
    """The six built-in tools; their names."""

    async def create_session(ctx: Context, wait_s: float = 30, **given: Any) -> Session:
        """Create a new session: a sandbox with a persistent bash shell, ready for send_message.

        Use it once per independent task; reuse the session for follow-up messages. Returns the session
        (id, status, workspace path). Status is 'ready' when it can take messages; 'creating' if it is still
        being set up after wait_s (poll get_session); 'failed' with failure_reason if it could not start.
        """
        return await _manager(ctx).create(CreateRequest.of(_owner(), **given), wait_s=as_task_wait(wait_s))

    wait = Annotated[WaitS, Field(description="Wait up to this long for the session to be ready (capped at 50).")]
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context),
        *create_parameters(catalog()),
        inspect.Parameter("wait_s", inspect.Parameter.KEYWORD_ONLY, annotation=wait, default=30),
    ]
    create_session.__signature__ = inspect.Signature(parameters, return_annotation=Session)  # type: ignore[attr-defined]
    create_session.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": Session}
    mcp.tool(
        title="Create session",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False),
    )(_tool_errors(create_session))

    @mcp.tool(
        title="Send message",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False),
    )
    @_tool_errors
    async def send_message(
        ctx: Context,
        session_id: SessionId,
        text: Annotated[str, Field(description="The message. For the shell agent: a bash script run in the session's shell.")],
        wait_s: Annotated[
            WaitS, Field(description="Wait up to this long for the turn to end (default 20, capped at 50). 0 returns at once.")
        ] = 20,
        queue: Annotated[
            bool, Field(description="If a turn is running, queue this message to run after it instead of failing.")
        ] = False,
        images: Images = None,
    ) -> TurnReply:
        """Send a message to a session, starting a turn, and wait up to wait_s for the reply.

        If the turn ends in time: turn_status 'completed' (or 'failed'/'interrupted') with the output, exit_code
        and duration. If not: status 'busy', turn_status 'running', the output so far and an events_cursor;
        then call get_session(session_id, wait_s=30, events_after=events_cursor) until it ends, or interrupt.
        One turn runs at a time: sending while busy is an error naming the running turn, unless queue=true,
        which runs the message after the turns ahead of it (turn_status 'queued'; get_session lists the queue).
        """
        manager = _manager(ctx)
        return await with_progress(
            ctx,
            manager,
            session_id,
            lambda: manager.send(
                session_id,
                text,
                wait_s=as_task_wait(wait_s),
                queue=queue,
                owner=_owner(),
                sampler=task_client() or ConnectionSampler(ctx.request_context.session),
                images=images or (),
            ),
        )

    @mcp.tool(
        title="Get session",
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def get_session(
        ctx: Context,
        session_id: SessionId,
        wait_s: Annotated[
            WaitS,
            Field(
                description="If a turn is running, wait up to this long for it to end (capped at 50). Default 0: answer at once."
            ),
        ] = 0,
        events_after: Annotated[
            Seq | None,
            Field(
                description="Return the events after this sequence number (an events_cursor from an earlier reply). Omit for no events.",
            ),
        ] = None,
    ) -> SessionDetail:
        """Read a session's state: status, phase, last turn (output, exit code), recent messages and, with
        events_after, the events since that cursor (output chunks, tool starts and ends).

        Use it to follow a running turn: call with wait_s=30 and events_after set to the last events_cursor
        until session.status is no longer 'busy'. Long output in events is cut with a note.
        """
        manager = _manager(ctx)
        owner = _owner()
        if wait_s <= 0:
            return await manager.get(session_id, events_after=events_after, owner=owner)
        return await with_progress(
            ctx,
            manager,
            session_id,
            lambda: manager.get(session_id, wait_s=wait_s, events_after=events_after, owner=owner),
        )

    @mcp.tool(
        title="List sessions",
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def list_sessions(
        ctx: Context,
        statuses: Annotated[list[Status] | None, Field(description="Only sessions in any of these statuses.")] = None,
        tags: Annotated[list[str] | None, Field(description="Only sessions that have all of these tags.")] = None,
        driver: Annotated[str | None, Field(description="Only sessions on this driver.")] = None,
        agent: Annotated[str | None, Field(description="Only sessions with this agent.")] = None,
        created_after: Annotated[
            IsoTime | None, Field(description="Only sessions created at or after this ISO 8601 time.")
        ] = None,
        created_before: Annotated[
            IsoTime | None, Field(description="Only sessions created at or before this ISO 8601 time.")
        ] = None,
        parent: Annotated[str | None, Field(description="Only children of this session.")] = None,
        limit: Annotated[PageSize, Field(description="Page size, 1..200.")] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    ) -> SessionPage:
        """List sessions, newest first, with filters. Rows are short (no transcripts); total counts every
        match. Use it to find a session id again, including sessions from before a server restart."""
        return await _manager(ctx).list_sessions(
            statuses=list(statuses) if statuses else None,
            tags=tags,
            driver=driver,
            agent=agent,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
            owner=_owner(),
            parent=parent,
        )

    @mcp.tool(
        title="Interrupt",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def interrupt(ctx: Context, session_id: SessionId) -> InterruptReply:
        """Stop the running turn of a session: the command and every process it started get SIGINT, then
        SIGTERM, then SIGKILL, within about a second. The session stays usable (status 'ready') and keeps
        the output produced so far. Safe to call when nothing runs (returns interrupted=false)."""
        return await _manager(ctx).interrupt(session_id, owner=_owner())

    @mcp.tool(
        title="Close session",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def close_session(
        ctx: Context,
        session_id: SessionId,
        delete: Annotated[bool, Field(description="Also delete the transcript, events and workspace files for good.")] = False,
        keep_children: Annotated[bool, Field(description="Leave its children open.")] = False,
    ) -> CloseReply:
        """Close a session and its descendants: stop what runs, free the sandboxes. Transcripts stay readable
        unless delete=true. Idempotent."""
        return await _manager(ctx).close(session_id, delete=delete, owner=_owner(), keep_children=keep_children)

    return {f.__name__ for f in (create_session, send_message, get_session, list_sessions, interrupt, close_session)}


def register_plugin_tools(mcp: SessionsServer, taken: set[str]) -> None:
    """Serve every tool plugin (tools.py) like the built-in tools: typed input, output schema, annotations,
    the caller's owner passed on, the session layer's errors turned into tool errors; as a task too if it
    says how (the same task machinery as send_message's)."""
    for plugin in catalog().tools.values():
        if plugin.name in taken:
            raise PluginError(f"The tool plugin '{plugin.name}' has the name of a built-in tool: rename it.")
        if plugin.task is not None:
            mcp.tasks.support[plugin.name] = plugin.task
        if plugin.text is not None:
            mcp.texts[plugin.name] = plugin.text

        async def tool(ctx: Context, __plugin: ToolPlugin = plugin, **params: Any) -> Any:
            return await __plugin.run(_manager(ctx), _owner(), **params)

        parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context), *plugin.parameters()]
        tool.__signature__ = inspect.Signature(parameters, return_annotation=plugin.output())  # type: ignore[attr-defined]
        tool.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": plugin.output()}
        tool.__name__ = tool.__qualname__ = plugin.name
        tool.__doc__ = plugin.description
        annotations = ToolAnnotations(
            read_only_hint=plugin.read_only,
            destructive_hint=plugin.destructive,
            idempotent_hint=plugin.idempotent,
            open_world_hint=False,
        )
        mcp.tool(name=plugin.name, title=plugin.title, description=plugin.description, annotations=annotations)(
            _tool_errors(tool)
        )


def _resource_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except SessionNotFound as e:
            raise ResourceNotFoundError(str(e)) from e
        except FileNotFoundError as e:
            raise ResourceNotFoundError(f"No such file in the workspace: {e.filename or e}.") from e
        except FileMissing as e:
            raise ResourceNotFoundError(str(e)) from e
        except (SessionError, SandboxError, PathNotAllowed, IsADirectoryError) as e:
            raise ResourceError(str(e)) from e

    return wrapper


def register_resources(mcp: MCPServer[AppState]) -> None:
    @mcp.resource(
        "session://{session_id}/transcript",
        name="transcript",
        mime_type="text/plain",
        description="The whole conversation of a session as readable text.",
    )
    @_resource_errors
    async def transcript(session_id: str, ctx: Context) -> str:
        return await _manager(ctx).transcript(session_id, owner=_owner())

    @mcp.resource(
        "session://{session_id}/checkpoints",
        mime_type="application/json",
        description="The session's checkpoints (name, turn, size), oldest first.",
    )
    @_resource_errors
    async def checkpoints(session_id: str, ctx: Context) -> str:
        return json.dumps([c.model_dump(mode="json") for c in await _manager(ctx).checkpoints(session_id, owner=_owner())])

    @mcp.resource(
        "session://{session_id}/events",
        name="events",
        mime_type="application/json",
        description="The session's event log (up to the first 1000 events), oldest first.",
    )
    @_resource_errors
    async def events(session_id: str, ctx: Context) -> str:
        found = await _manager(ctx).events(session_id, owner=_owner())
        return json.dumps([e.model_dump(mode="json") for e in found], indent=1)

    @mcp.resource(
        "session://{session_id}/files/{+path}",
        name="file",
        mime_type="text/plain",
        description="A file in the session's workspace, by path relative to the workspace.",
    )
    @_resource_errors
    async def file(session_id: str, path: str, ctx: Context) -> str | bytes:
        data = await _manager(ctx).read_file(session_id, path, owner=_owner())
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    @mcp.resource(
        "session://{session_id}/folders",
        name="workspace",
        mime_type="application/json",
        description="The entries of the session's workspace folder (name, path, kind, size, time); at most 500.",
    )
    @_resource_errors
    async def workspace(session_id: str, ctx: Context) -> str:
        return (await list_folder(_manager(ctx), session_id, "", owner=_owner())).model_dump_json(indent=1)

    @mcp.resource(
        "session://{session_id}/folders/{+path}",
        name="folder",
        mime_type="application/json",
        description="The entries of a workspace folder, by path relative to the workspace; at most 500.",
    )
    @_resource_errors
    async def folder(session_id: str, path: str, ctx: Context) -> str:
        return (await list_folder(_manager(ctx), session_id, path, owner=_owner())).model_dump_json(indent=1)

    @mcp.resource(
        "session://{session_id}",
        name="session",
        mime_type="application/json",
        description="A session's state as JSON: status, phase, last turn, usage, sandbox.",
    )
    @_resource_errors
    async def state(session_id: str, ctx: Context) -> str:
        detail = await _manager(ctx).get(session_id, owner=_owner())
        return detail.session.model_dump_json(indent=1)
