"""The dashboard at /ui: plain server-rendered pages and a little JavaScript over the REST API and its
event stream, for the people behind the agents. No build step: the script and style sheet are files here.

Auth is the REST API's: without tokens (a loopback bind) the pages just work; with tokens, /ui/login takes
one and keeps it in an HttpOnly, SameSite=Strict cookie, which the gate (http.py) accepts like a bearer
header. A request authenticated by that cookie that changes something must also carry the header
`X-MCP-Sessions-UI: 1`, which the dashboard's fetch sends and a form posted from another site cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..auth import StaticTokenVerifier
from .pages import login_page, session_page, sessions_page

UI = "/ui"
COOKIE = "mcp_sessions_token"
CSRF_HEADER = "x-mcp-sessions-ui"
PUBLIC_PREFIXES = (UI + "/static/", UI + "/login", UI + "/logout")
"""What the gate lets through without a token: signing in and out, and the files those pages need."""
STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOGIN_MAX_BYTES = 4096
PAGE_HEADERS = {
    # Only this server's script and style sheet run, a message's images show from their data: URLs, and no
    # other site may frame the pages (a click stolen from an invisible dashboard) or learn their addresses
    # (same-origin, not no-referrer: a form posted with no referrer says Origin: null, which the gate refuses).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def page(html: str, status_code: int = 200) -> HTMLResponse:
    """A dashboard page, with the headers that keep it to itself."""
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def login_redirect(path: str) -> Response:
    """Where a page asked for without a valid token sends the browser."""
    return RedirectResponse(f"{UI}/login?next={quote(path)}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a dashboard path: never another site (an open redirect after login)."""
    return target if target and target.startswith(UI) and not target.startswith("//") and "\\" not in target else UI


def routes(verifier: StaticTokenVerifier | None, reads_all: Callable[[Request], bool]) -> list[Route]:
    """The pages; `reads_all` tells whether a request's caller may list every owner's sessions (an admin, or
    a server without tokens), who gets the owner filter."""

    async def sessions(request: Request) -> Response:
        return page(sessions_page(signed_in=verifier is not None, overseer=reads_all(request)))

    async def session(request: Request) -> Response:
        return page(session_page(request.path_params["session_id"], signed_in=verifier is not None))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    async def login(request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))
        if verifier is None:  # no tokens: nothing to sign in to
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return page(login_page(target))
        body = await request.body()
        if len(body) > LOGIN_MAX_BYTES:
            return page(login_page(target, "That is not a token."), status_code=400)
        token = (parse_qs(body.decode(errors="replace")).get("token") or [""])[0].strip()
        if not token or await verifier.verify_token(token) is None:
            return page(login_page(target, "Unknown token: use one from the server's tokens."), status_code=401)
        response = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"  # behind TLS (uvicorn reads X-Forwarded-Proto from a proxy it trusts)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{UI}/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return [
        Route(UI, sessions, methods=["GET"]),
        Route(UI + "/sessions/{session_id}", session, methods=["GET"]),
        Route(UI + "/static/{name}", static, methods=["GET"]),
        Route(UI + "/login", login, methods=["GET", "POST"]),
        Route(UI + "/logout", logout, methods=["POST"]),
    ]
