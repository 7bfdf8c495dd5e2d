"""Port previews: a web server started in a session, opened through the HTTP server's gateway.

`expose_port(session_id, port)` (a tool, so also `POST /api/v1/tools/expose_port`) answers the URL
`/preview/<session id>/<port>/` of the HTTP server. A request there, HTTP or a websocket, is made again
to 127.0.0.1:port inside the session's sandbox over a stream of its own (`OpensStreams.connect_inside`:
the sandbox keeps no network interface). The gateway checks the caller as every route does (the bearer
token, or the dashboard's cookie) and answers 404 for a session of another owner, or one that is closed,
so a preview ends with its session. The URL is a function of the session and the port, not a grant:
whoever owns a session may already run anything in it.

What is sent on: the method, the path under the preview and the query, the body, and the headers but
the caller's credentials (`Authorization`, the dashboard's cookie) and hop-by-hop ones. Requests go out
as HTTP/1.0 with the body's length, so the answer comes back unchunked and ends with its connection.
Websockets are relayed message by message (wsproto on the sandbox's side).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Annotated, Any

import anyio
import anyio.abc
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

from sandbox_backends.base import OpensStreams, PortClosed, SandboxError

from .errors import SessionClosed, SessionNotFound
from .inputs import IN_RANGE
from .manager import SessionManager
from .tools import ToolPlugin

PREFIX = "/preview"
MAX_HEAD = 64 << 10
"""The longest answer head read from a server in a sandbox."""
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"authorization",
    b"content-length",
}
LIVE = ("ready", "busy")


class Preview(BaseModel):
    session_id: str
    port: int
    url: str = Field(description="Served by the HTTP server (`serve --http`); open it with the caller's token.")


async def expose_port(
    sessions: SessionManager,
    owner: str | None,
    session_id: Annotated[str, Field(max_length=100)],
    port: Annotated[int, Field(ge=1, le=65535), IN_RANGE],
) -> Preview:
    """URL on the HTTP server proxying HTTP and websockets to a port inside the session; ends with the session."""
    await sandbox_of(sessions, session_id, owner)
    settings = sessions.settings
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return Preview(session_id=session_id, port=port, url=f"http://{host}:{settings.port}{PREFIX}/{session_id}/{port}/")


plugin = ToolPlugin(name="expose_port", run=expose_port, title="Expose a port", read_only=True, idempotent=True)


async def sandbox_of(sessions: SessionManager, session_id: str, owner: str | None) -> OpensStreams:
    """The sandbox of a live session `owner` may see, if it can open streams."""
    record = await sessions.store.get(session_id)
    if record is None or (owner is not None and record.session.owner != owner):
        raise SessionNotFound(session_id)
    if record.session.status not in LIVE or record.sandbox_id is None:
        raise SessionClosed(
            f"Session '{session_id}' is {record.session.status}: only a ready or busy session has ports to preview."
        )
    sandbox = await sessions.sandboxes.of(record)
    if not isinstance(sandbox, OpensStreams):
        raise SessionClosed(f"The {record.session.driver} driver cannot reach ports inside its sandboxes.")
    return sandbox


def forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The caller's headers to send on: hop-by-hop ones and its credentials left out."""
    from .ui import COOKIE

    kept = []
    for name, value in scope["headers"]:
        name = name.lower()
        if name in HOP_BY_HOP or name.startswith(b"sec-websocket-"):
            continue
        if name == b"cookie":
            jar = SimpleCookie(value.decode("latin-1"))
            jar.pop(COOKIE, None)
            if not jar:
                continue
            value = "; ".join(f"{k}={m.value}" for k, m in jar.items()).encode("latin-1")
        kept.append((name, value))
    return kept


def target_of(scope: Scope) -> str:
    rest = scope["path_params"].get("rest", "")
    query = scope.get("query_string", b"").decode("latin-1")
    return "/" + rest + (f"?{query}" if query else "")


class Gateway:
    """The ASGI app at /preview/<session id>/<port>/<rest>, for HTTP and websockets."""

    def __init__(self, manager_of: Callable[[], SessionManager], owner_of: Callable[[Scope], str | None]) -> None:
        self._manager_of = manager_of
        self._owner_of = owner_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from .http_api import error_response

        params = scope["path_params"]
        port = params["port"]
        try:
            if not 0 < port < 65536:
                raise SessionNotFound(params["session_id"])
            sandbox = await sandbox_of(self._manager_of(), params["session_id"], self._owner_of(scope))
            stream = await sandbox.connect_inside(port)
        except (SessionNotFound, SessionClosed, PortClosed, SandboxError) as e:
            gone = isinstance(e, (SessionNotFound, SessionClosed))
            if scope["type"] == "websocket":  # refused at the handshake; the reason for whoever reads it
                await send({"type": "websocket.close", "code": 1008 if gone else 1011, "reason": str(e)[:120]})
            else:
                await error_response(*((404, "not_found") if gone else (502, "bad_gateway")), str(e))(scope, receive, send)
            return
        async with stream:
            if scope["type"] == "websocket":
                await relay_websocket(scope, receive, send, stream, port)
            else:
                await relay_http(scope, receive, send, stream, port)


async def relay_http(scope: Scope, receive: Receive, send: Send, stream: anyio.abc.ByteStream, port: int) -> None:
    from .http_api import error_response

    body = bytearray()
    while True:  # bounded by the gate's --max-request-bytes
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    lines = [f"{scope['method']} {target_of(scope)} HTTP/1.0".encode("latin-1"), f"Host: 127.0.0.1:{port}".encode()]
    lines += [name + b": " + value for name, value in forwarded_headers(scope)]
    lines += [f"Content-Length: {len(body)}".encode()] if body or scope["method"] in ("POST", "PUT", "PATCH") else []
    await stream.send(b"\r\n".join(lines) + b"\r\n\r\n" + bytes(body))
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_HEAD:
                raise anyio.EndOfStream
            head += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        await error_response(502, "bad_gateway", f"The server on port {port} in the sandbox sent no HTTP answer.")(
            scope, receive, send
        )
        return
    head, _, rest = head.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
    headers = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() not in HOP_BY_HOP - {b"content-length"}:
            headers.append((name.strip().lower(), value.strip()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if rest:
        await send({"type": "http.response.body", "body": rest, "more_body": True})
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except anyio.BrokenResourceError:
        pass
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def relay_websocket(scope: Scope, receive: Receive, send: Send, stream: anyio.abc.ByteStream, port: int) -> None:
    """Open the websocket inside as a client, then relay messages both ways until either side closes."""
    await receive()  # websocket.connect
    conn = WSConnection(ConnectionType.CLIENT)
    request = ws.Request(
        host=f"127.0.0.1:{port}",
        target=target_of(scope),
        subprotocols=list(scope.get("subprotocols", [])),
        extra_headers=forwarded_headers(scope),
    )
    await stream.send(conn.send(request))
    accepted: ws.AcceptConnection | None = None
    try:
        while accepted is None:
            conn.receive_data(await stream.receive())
            for event in conn.events():
                if isinstance(event, ws.AcceptConnection):
                    accepted = event
                elif isinstance(event, (ws.RejectConnection, ws.CloseConnection)):
                    raise anyio.EndOfStream
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        await send({"type": "websocket.close", "code": 1011, "reason": f"no websocket on port {port} in the sandbox"})
        return
    await send({"type": "websocket.accept", "subprotocol": accepted.subprotocol})
    lock = anyio.Lock()

    async def inside(event: ws.Event) -> None:  # both directions answer inside (a pong, a close): one writer at a time
        async with lock:
            await stream.send(conn.send(event))

    async with anyio.create_task_group() as tg:
        tg.start_soon(_from_caller, receive, inside, tg.cancel_scope)
        await _from_sandbox(send, stream, conn, inside)
        tg.cancel_scope.cancel()


async def _from_caller(receive: Receive, inside: Callable[[ws.Event], Awaitable[None]], scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await inside(ws.CloseConnection(code=message.get("code", 1000)))
            scope.cancel()
            return
        data: Any = message.get("text") if message.get("text") is not None else message.get("bytes", b"")
        await inside(ws.Message(data=data))


async def _from_sandbox(
    send: Send, stream: anyio.abc.ByteStream, conn: WSConnection, inside: Callable[[ws.Event], Awaitable[None]]
) -> None:
    parts: list[Any] = []
    try:
        while True:
            conn.receive_data(await stream.receive())
            for event in conn.events():
                if isinstance(event, ws.Message):
                    parts.append(event.data)
                    if event.message_finished:
                        key = "text" if isinstance(event, ws.TextMessage) else "bytes"
                        await send({"type": "websocket.send", key: type(event.data)().join(parts)})
                        parts.clear()
                elif isinstance(event, ws.Ping):
                    await inside(event.response())
                elif isinstance(event, ws.CloseConnection):
                    await inside(event.response())
                    await send({"type": "websocket.close", "code": event.code})
                    return
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        await send({"type": "websocket.close", "code": 1011})
