"""The REST API at /api/v1: CIAB's sessions API with one sandbox per session. A thin adapter over the
SessionManager, like the MCP tools: parse, call the manager, shape the answer.

Every route is one `Endpoint` in `endpoints()`; the Starlette routes and the OpenAPI document (openapi.py)
are both made from that table and from the pydantic models it names, so the document matches what is served.
"""

from __future__ import annotations

import posixpath
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandbox_backends.base import SandboxError

from .create import CreateRequest, create_body
from .errors import Forbidden, SessionError
from .files import FolderView, list_folder, read_file
from .images import Images
from .inputs import IsoTime, PageSize, Seq, WaitS, one_line
from .manager import SessionManager
from .models import (
    CloseReply,
    InterruptReply,
    Message,
    Session,
    SessionDetail,
    SessionPage,
    Status,
    TurnReply,
)
from .plugins import catalog
from .tools import ToolPlugin

API = "/api/v1"
KEEPALIVE_S = 15.0
STATUS_OF_CODE = {
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "session_not_found": 404,
    "not_found": 404,
    "file_not_found": 404,
    "session_busy": 409,
    "session_closed": 409,
    "conflict": 409,
    "payload_too_large": 413,
    "too_many_sessions": 429,
    "rate_limited": 429,
    "store_error": 503,
    "sandbox_error": 502,
    "unsupported": 501,
}


# -- what comes in ----------------------------------------------------------------------------------


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="The message. For the shell agent: a bash script run in the session's shell.")
    queue: bool = Field(True, description="If a turn runs, run this one after it (false: refuse with 409).")
    images: Images = None


class CreateQuery(BaseModel):
    wait_s: WaitS = Field(30, description="Wait up to this long for the session to be ready (capped at 50).")


class WaitQuery(BaseModel):
    wait_s: WaitS = Field(0, description="Wait up to this long for the turn to end (capped at 50); 0 = at once.")


class GetQuery(BaseModel):
    wait_s: WaitS = Field(0, description="If a turn runs, wait up to this long for it to end (capped at 50).")
    events_after: Seq | None = Field(None, description="Also return the events after this sequence number.")
    messages_from_turn: Seq | None = Field(
        None, description="Only the messages of this turn and later (a page that has the earlier ones reads less)."
    )


class ListQuery(BaseModel):
    status: list[Status] | None = Field(None, description="Only these statuses (repeat the parameter for several).")
    tag: list[str] | None = Field(None, description="Only sessions with all of these tags (repeat).")
    driver: str | None = None
    agent: str | None = None
    created_after: IsoTime | None = Field(None, description="ISO 8601, inclusive.")
    created_before: IsoTime | None = Field(None, description="ISO 8601, inclusive.")
    parent: str | None = Field(None, max_length=100, description="Only children of this session.")
    owner: str | None = Field(
        None, max_length=100, description="Only this owner's sessions: an admin's token (or no tokens) may name anyone."
    )
    limit: PageSize = Field(50, description="Page size, 1..200.")
    cursor: str | None = Field(None, description="next_cursor of the previous page.")


class CloseQuery(BaseModel):
    delete: bool = Field(False, description="Also delete the transcript, events and workspace.")
    keep_children: bool = Field(False, description="Leave its descendants open (by default they are closed, or deleted, too).")


class FolderQuery(BaseModel):
    path: str = Field("", max_length=4096, description='A folder relative to the workspace ("": the workspace).')


class DownloadQuery(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="A file relative to the workspace.")


class StreamQuery(BaseModel):
    last_event_id: Seq | None = Field(
        None, description="Replay events after this seq; the Last-Event-ID header, for clients that cannot set it."
    )


LAST_EVENT_ID: TypeAdapter[int] = TypeAdapter(Seq)


# -- what goes out ----------------------------------------------------------------------------------


class SessionView(SessionDetail):
    """A session with its whole conversation."""

    messages: list[Message] = Field(
        default_factory=list, description="Every message (from messages_from_turn on, when given), oldest first."
    )


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. session_not_found.")
    message: str = Field(description="What went wrong and what to do next.")


class ErrorBody(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: str
    version: str


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# -- the routes ---------------------------------------------------------------------------------------

Reply = BaseModel | tuple[BaseModel, int] | Response


@dataclass
class Call:
    """One request, parsed: who asks, the path's session id, the query and the body."""

    manager: SessionManager
    request: Request
    owner: str | None
    session_id: str
    query: Any
    body: Any


async def create_session(c: Call) -> Reply:
    request = CreateRequest.of(c.owner, **dict(c.body))
    return await c.manager.create(request, wait_s=c.query.wait_s), 201


async def list_sessions(c: Call) -> Reply:
    q: ListQuery = c.query
    if q.owner is not None and c.owner is not None and q.owner != c.owner:
        raise Forbidden(
            f"Your token lists only the sessions of '{c.owner}': leave out owner, or use an admin's token (--admins)."
        )
    return await c.manager.list_sessions(
        statuses=list(q.status) if q.status else None,
        tags=q.tag,
        driver=q.driver,
        agent=q.agent,
        created_after=q.created_after,
        created_before=q.created_before,
        limit=q.limit,
        cursor=q.cursor,
        owner=c.owner if q.owner is None else q.owner,
        parent=q.parent,
    )


async def get_session(c: Call) -> Reply:
    detail = await c.manager.get(c.session_id, wait_s=c.query.wait_s, events_after=c.query.events_after, owner=c.owner)
    messages = await c.manager.messages(c.session_id, owner=c.owner, from_turn=c.query.messages_from_turn)
    return SessionView(**dict(detail), messages=messages)


async def send_message(c: Call) -> Reply:
    body: MessageBody = c.body
    reply = await c.manager.send(
        c.session_id, body.text, wait_s=c.query.wait_s, queue=body.queue, owner=c.owner, images=body.images or ()
    )
    return reply, (202 if reply.turn_status in ("queued", "running") else 200)


async def interrupt(c: Call) -> Reply:
    return await c.manager.interrupt(c.session_id, owner=c.owner)


async def close_session(c: Call) -> Reply:
    return await c.manager.close(c.session_id, delete=c.query.delete, owner=c.owner, keep_children=c.query.keep_children)


async def list_files(c: Call) -> Reply:
    return await list_folder(c.manager, c.session_id, c.query.path, owner=c.owner)


async def download_file(c: Call) -> Reply:
    data = await read_file(c.manager, c.session_id, c.query.path, owner=c.owner)
    name = quote(posixpath.basename(c.query.path.rstrip("/")) or "file", safe="")
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}", "X-Content-Type-Options": "nosniff"},
    )


def _sse(event_id: int | None, event: str, data: str) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream(c: Call) -> Reply:
    """Server-Sent Events: the session's events after Last-Event-ID, then new ones as they come, a keepalive
    comment every 15 s, until the session is closed or failed and its last events are sent."""
    after = c.query.last_event_id
    header = c.request.headers.get("last-event-id")
    if header is not None:  # checked even when the query wins: a malformed header is a mistake to report
        try:
            from_header = LAST_EVENT_ID.validate_python(header)
        except ValidationError as e:
            return error_response(400, "invalid_request", one_line(e, "Last-Event-ID"))
        after = from_header if after is None else after
    manager, sid, owner = c.manager, c.session_id, c.owner
    await manager.get(sid, owner=owner)  # an unknown session is a 404, not an empty stream

    async def events() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for batch in manager.follow(sid, after or 0, owner=owner, idle_s=KEEPALIVE_S):
            for event in batch:
                yield _sse(event.seq, event.type, event.model_dump_json())
            if not batch:
                yield ": keepalive\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Callable[[Call], Awaitable[Reply]]
    summary: str
    response: type[BaseModel] | None
    status: tuple[int, ...] = (200,)
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    sse: bool = False
    binary: bool = False
    """The answer is a file's bytes (application/octet-stream), not JSON."""
    errors: tuple[int, ...] = (400, 404, 503)
    """The error statuses the route itself can answer (see STATUS_OF_CODE), besides the gate's in front of it."""
    name: str = ""
    """Its OpenAPI operationId, unique in the document; "" = the handler's name (a tool route: the tool's)."""

    @property
    def operation_id(self) -> str:
        return self.name or self.handler.__name__


S = API + "/sessions/{session_id}"


def tool_endpoint(plugin: ToolPlugin) -> Endpoint:
    """A tool plugin as a route: its parameters are the JSON body, its output the response."""

    async def run(c: Call) -> Reply:
        return await plugin.run(c.manager, c.owner, **dict(c.body))

    return Endpoint(
        "POST",
        f"{API}/tools/{plugin.name}",
        run,
        plugin.description,
        plugin.output(),
        body=plugin.body(),
        errors=(400, 404, 409, 413, 502, 503),  # a tool may do anything the session layer does
        name=plugin.name,
    )


def endpoints() -> list[Endpoint]:
    """Every route: the create body built from the installed plugins' options, a route per tool plugin."""
    plugins = catalog()
    return [
        Endpoint(
            "POST",
            API + "/sessions",
            create_session,
            "Create a session and wait up to wait_s until it is ready.",
            Session,
            (201,),
            CreateQuery,
            create_body(plugins),
            errors=(400, 413, 429, 502, 503),
        ),
        *SESSION_ENDPOINTS,
        *(tool_endpoint(plugin) for plugin in plugins.tools.values()),
    ]


SESSION_ENDPOINTS = [
    Endpoint(
        "GET",
        API + "/sessions",
        list_sessions,
        "List your sessions (an admin's token: everyone's), newest first, with filters and a cursor.",
        SessionPage,
        query=ListQuery,
        errors=(400, 403, 503),
    ),
    Endpoint(
        "GET",
        S,
        get_session,
        "A session's state, queue, whole conversation (or from a turn on) and, with events_after, its events.",
        SessionView,
        query=GetQuery,
    ),
    Endpoint(
        "POST",
        S + "/messages",
        send_message,
        "Send a message: queued behind a running turn and answered at once (202), or after up to wait_s (200 once the turn ended).",
        TurnReply,
        (200, 202),
        WaitQuery,
        MessageBody,
        errors=(400, 404, 409, 413, 502, 503),
    ),
    Endpoint(
        "POST",
        S + "/interrupt",
        interrupt,
        "Stop the running turn; the session stays usable.",
        InterruptReply,
        errors=(404, 409, 502, 503),
    ),
    Endpoint(
        "POST",
        S + "/close",
        close_session,
        "Close the session and its descendants, freeing their sandboxes; delete=true also removes their transcripts "
        "and workspaces. Idempotent.",
        CloseReply,
        query=CloseQuery,
        errors=(400, 404, 502, 503),
    ),
    Endpoint(
        "GET",
        S + "/files",
        list_files,
        "A workspace folder's entries (name, kind, size, time), sorted by name, at most 500; symlinks are not followed.",
        FolderView,
        query=FolderQuery,
        errors=(400, 404, 409, 501, 502, 503),
    ),
    Endpoint(
        "GET",
        S + "/files/download",
        download_file,
        "A workspace file's bytes (as the session://{id}/files/{path} resource reads it), up to the server's file limit.",
        None,
        query=DownloadQuery,
        binary=True,
        errors=(400, 404, 409, 413, 502, 503),
    ),
    Endpoint(
        "GET",
        S + "/stream",
        stream,
        "Server-Sent Events of the session's events: id = seq, event = type, data = the event as JSON.",
        None,
        query=StreamQuery,
        sse=True,
    ),
]


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def parse_query(request: Request, model: type[BaseModel]) -> BaseModel:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if _is_list(info.annotation):
            found = request.query_params.getlist(name)
            if found:
                values[name] = found
        elif name in request.query_params:
            values[name] = request.query_params[name]
    return model.model_validate(values)


def routes(manager_of: Callable[[], SessionManager], owner_of: Callable[[Request], str | None]) -> list[Route]:
    def make(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                query = parse_query(request, ep.query) if ep.query else None
                # strict: a JSON body holds what the document says, so "5" or true is not a number here
                body = ep.body.model_validate_json(await request.body() or b"{}", strict=True) if ep.body else None
                call = Call(manager_of(), request, owner_of(request), request.path_params.get("session_id", ""), query, body)
                reply = await ep.handler(call)
            except ValidationError as e:
                return error_response(400, "invalid_request", one_line(e, "body"))
            except SessionError as e:
                return error_response(STATUS_OF_CODE.get(e.code, 400), e.code, str(e))
            except SandboxError as e:
                return error_response(502, "sandbox_error", str(e))
            if isinstance(reply, Response):
                return reply
            model, status = reply if isinstance(reply, tuple) else (reply, 200)
            return Response(model.model_dump_json(), status_code=status, media_type="application/json")

        return endpoint

    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in endpoints():
        by_path.setdefault(ep.path, {})[ep.method] = ep
    served = []
    for path, methods in by_path.items():
        handlers = {m: make(ep) for m, ep in methods.items()}

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            return await handlers[request.method](request)

        served.append(Route(path, dispatch, methods=list(methods)))
    return served
