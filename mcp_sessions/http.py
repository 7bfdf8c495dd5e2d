"""HTTP: MCP streamable HTTP at /mcp, the REST API at /api/v1 (http_api.py), /healthz. One process, one
SessionManager and one change feed behind both surfaces; bearer tokens name owners (auth.py).

Every request except /healthz and the OpenAPI document passes the gate first: the Host and Origin
check on a loopback bind, the bearer token, the owner's rate limit, the body size.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import mcp_types as types
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, sdk
from .auth import RateLimiter, StaticTokenVerifier, check_bind, is_loopback, load_admins, load_tokens
from .errors import PayloadTooLarge
from .http_api import API, Health, error_response, routes
from .http_attach import attach_route
from .jsonrpc import InvalidMessage, check
from .openapi import document, dumps
from .previews import PREFIX, Gateway
from .resumption import PER_STREAM_EVENTS, RETRY_MS, EventBuffer
from .server import AppState, create_server
from .settings import Settings
from .ui import COOKIE, CSRF_HEADER, PUBLIC_PREFIXES, UI, login_redirect
from .ui import routes as ui_routes

MCP_PATH = "/mcp"
MCP_METHODS = ["GET", "POST", "DELETE"]
PUBLIC = ("/healthz", API + "/openapi.json")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _host_name(host: str) -> str:
    """The name in a Host header or an Origin's authority, without the port."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Gate:
    """Pure ASGI middleware in front of both surfaces. SSE responses pass through unbuffered."""

    def __init__(self, app: ASGIApp, settings: Settings, verifier: StaticTokenVerifier | None) -> None:
        self.app = app
        self.verifier = verifier
        self.backend = BearerAuthBackend(verifier) if verifier else None
        self.limiter = RateLimiter(settings.rate_limit_per_s)
        self.max_body = settings.max_request_bytes
        self.loopback = is_loopback(settings.host)

    def answers(self, public: bool = False) -> tuple[int, ...]:
        """The statuses this gate may answer before a route runs (for the OpenAPI document)."""
        found = [403, 421] if self.loopback else []
        if not public:
            found += [*([401, 429] if self.backend else []), 413]
        return tuple(sorted(found))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.loopback:  # DNS rebinding: a web page must not reach a server that trusts this machine
            if _host_name(headers.get("host", "")) not in LOOPBACK_HOSTS:
                await error_response(421, "misdirected_request", "Host must be 127.0.0.1, localhost or [::1].")(
                    scope, receive, send
                )
                return
            origin = headers.get("origin")
            if origin and _host_name(origin.split("://", 1)[-1]) not in LOOPBACK_HOSTS:
                await error_response(403, "forbidden", f"Origin {origin} may not call this server.")(scope, receive, send)
                return
        if scope["path"] in PUBLIC or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        user, by_cookie = await self._authenticate(scope)
        if self.backend is not None and user is None:
            if scope["path"] == UI or scope["path"].startswith(UI + "/"):  # a person at a browser: the login page
                await login_redirect(scope["path"])(scope, receive, send)
                return
            await error_response(
                401,
                "unauthorized",
                "A valid bearer token is required: send 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )(scope, receive, send)
            return
        # The limit is per owner: it keeps one owner from starving the others. Without tokens there are no
        # owners, only callers on this machine (check_bind), so nothing is limited: a loopback client fanning
        # out, or the official conformance suite, must not meet a 429 under default flags.
        owner = user.access_token.client_id if user else None
        wait = self.limiter.take(owner) if owner else 0.0
        if wait:
            await error_response(
                429,
                "rate_limited",
                f"Over {self.limiter.rate:g} requests a second; retry after the Retry-After seconds.",
                {"Retry-After": self.limiter.retry_after(wait)},
            )(scope, receive, send)
            return
        if by_cookie and scope["method"] not in ("GET", "HEAD") and headers.get(CSRF_HEADER) != "1":
            # a browser sends the cookie with a form posted from any site; only the dashboard's fetch sends this
            await error_response(
                403, "forbidden", f"A change made with the dashboard's cookie needs the header {CSRF_HEADER}: 1."
            )(scope, receive, send)
            return
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        if user is None:
            await self._guarded(scope, receive, send)
            return
        scope["user"], scope["auth"] = user, AuthCredentials(user.scopes)
        reset = auth_context_var.set(user)
        try:
            await self._guarded(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket (a port preview's) passes the same checks, refused at the handshake; it must come from
        a page of this server's own origin, since a browser sends the dashboard's cookie from any site."""
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        user, _by_cookie = await self._authenticate(scope)
        refused = (
            (self.loopback and _host_name(host) not in LOOPBACK_HOSTS)
            or (origin is not None and origin.split("://", 1)[-1] != host)
            or (self.backend is not None and user is None)
        )
        if refused:
            await send({"type": "websocket.close", "code": 1008})
            return
        if user is not None:
            scope["user"], scope["auth"] = user, AuthCredentials(user.scopes)
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> tuple[AuthenticatedUser | None, bool]:
        """Who calls, and whether they were known by the dashboard's cookie (not a header they chose to send)."""
        if self.backend is None or self.verifier is None:
            return None, False
        found = await self.backend.authenticate(HTTPConnection(scope))
        if found is not None:
            return found[1], False
        # EventSource in a browser cannot set headers: the stream also takes ?access_token=
        token = QueryParams(scope.get("query_string", b"")).get("access_token")
        if token and scope["path"].endswith("/stream") and (info := await self.verifier.verify_token(token)):
            return AuthenticatedUser(info), False
        cookie = HTTPConnection(scope).cookies.get(COOKIE)
        if cookie and (info := await self.verifier.verify_token(cookie)):
            return AuthenticatedUser(info), True
        return None, False

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, cutting off a body that grows past the limit without announcing its length."""
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # the REST routes answer 413 for it; for others, it is answered below
                    raise PayloadTooLarge(self._too_large_message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "payload_too_large", self._too_large_message())(scope, receive, send)

    def _too_large_message(self) -> str:
        return f"The request body is over this server's limit of {self.max_body} bytes (--max-request-bytes)."


class MessagesOnly:
    """The SDK's MCP app, with a POST body that is JSON but not one JSON-RPC message (a batch array, an
    object of no message's shape) answered 400 with -32600 (jsonrpc.py), where the SDK answers -32602
    with a pydantic dump. The body is read once and handed on as it came. (A class: Starlette would take
    a plain function for a request handler, not an ASGI app.)"""

    def __init__(self, app: ASGIApp, events: EventBuffer) -> None:
        self.app, self.events = app, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET":
            await self._resume(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            check(bytes(body), "request")
        except InvalidMessage as e:
            reply = e.reply().model_dump_json(by_alias=True, exclude_unset=True)
            await Response(reply, status_code=400, media_type="application/json")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _resume(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A GET that resumes after an event this session no longer has (or never had) gets 400 saying so,
        where the SDK would answer an empty stream that its own client reconnects to again and again."""
        headers = Headers(scope=scope)
        session, last = headers.get("mcp-session-id"), headers.get("last-event-id")
        if session and last and self.events.knows_session(session) and self.events.stream_of(session, last) is None:
            reply = InvalidMessage(
                types.INVALID_REQUEST,
                f"Last-Event-ID {last[:100]!r} is not an event this session still keeps (the server keeps the last "
                f"{PER_STREAM_EVENTS} events of each stream, and not across restarts): send the request again.",
            ).reply()
            body = reply.model_dump_json(by_alias=True, exclude_unset=True)
            await Response(body, status_code=400, media_type="application/json")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(settings: Settings, tokens: dict[str, str] | None = None) -> Gate:
    """The whole HTTP server as one ASGI app (the Starlette app is its `.app`); the lifespan opens the
    manager both surfaces share. `tokens` (token -> owner) defaults to those the settings name."""
    tokens = load_tokens(settings) if tokens is None else tokens
    check_bind(settings, tokens)
    admins = load_admins(settings, tokens)
    verifier = StaticTokenVerifier(tokens) if tokens else None
    mcp = create_server(settings, shared=True)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        host=settings.host,
        max_request_body_size=settings.max_request_bytes,
        retry_interval=RETRY_MS,
    )
    events = EventBuffer()
    sdk.event_store_per_session(mcp.session_manager, events.view)
    holder: dict[str, AppState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with mcp.serving() as state:
            holder["state"] = state
            async with mcp.session_manager.run():
                yield

    def owner_of(request: Request) -> str | None:
        """Whose sessions a REST request reaches: the token's owner's; every owner's (None) for an admin's read."""
        user = request.scope.get("user")
        owner = user.access_token.client_id if isinstance(user, AuthenticatedUser) else None
        return None if owner in admins and request.method == "GET" else owner

    async def healthz(request: Request) -> Response:
        return Response(Health(status="ok", version=__version__).model_dump_json(), media_type="application/json")

    async def openapi_json(request: Request) -> Response:
        return Response(document_bytes, media_type="application/json")

    def owner_of_scope(scope: Scope) -> str | None:
        user = scope.get("user")
        return user.access_token.client_id if isinstance(user, AuthenticatedUser) else None

    async def preview_root(request: Request) -> Response:  # relative links need the trailing slash
        return RedirectResponse(request.url.path + "/" + (f"?{request.url.query}" if request.url.query else ""), 308)

    gateway = Gateway(lambda: holder["state"].manager, owner_of_scope)
    preview = PREFIX + "/{session_id}/{port:int}"

    served = [
        Route("/healthz", healthz, methods=["GET"]),
        Route(API + "/openapi.json", openapi_json, methods=["GET"]),
        *routes(lambda: holder["state"].manager, owner_of),
        attach_route(lambda: holder["state"].manager),
        *ui_routes(verifier, lambda request: owner_of(request) is None),
        Route(preview, preview_root),
        Route(preview + "/{rest:path}", gateway, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        WebSocketRoute(preview + "/{rest:path}", gateway),
        Route(MCP_PATH, MessagesOnly(mcp_app, events), methods=MCP_METHODS),  # the SDK's app, which serves MCP_PATH
    ]
    app = Starlette(routes=served, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    gate = Gate(app, settings, verifier)
    document_bytes = dumps(document(gate.answers(), gate.answers(public=True), secured=verifier is not None))
    return gate


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (an unknown path, such as a session id with a '/' in it; a method a path does not
    take, answered 405 with Allow) in the error body every route uses, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return error_response(404, "not_found", f"No route {path}. See {API}/openapi.json for the routes.")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed = ", ".join(sorted(headers.get("Allow", "").split(", ")))
        return error_response(405, "method_not_allowed", f"{request.method} is not served at {path}; use {allowed}.", headers)
    return error_response(exc.status_code, "invalid_request", str(exc.detail), headers)


def serve_http(settings: Settings) -> None:
    import uvicorn

    app = build_app(settings)
    base = f"http://{settings.host}:{settings.port}"
    print(f"mcp-sessions: MCP at {base}{MCP_PATH}, REST at {API}, the dashboard at {base}{UI}", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), lifespan="on")
