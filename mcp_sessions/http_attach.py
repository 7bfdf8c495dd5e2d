"""`mcp-sessions attach` over HTTP: a websocket at /api/v1/sessions/{id}/attach that carries a terminal.

A terminal needs both directions at once, which REST and SSE do not give, so this one route is a
websocket. The gate checks it as it checks every websocket (http.py): a bearer header, or the dashboard's
cookie only from a page of the server's own origin, and on a loopback bind only this machine's host names.
What goes over it:

    server -> client   text {"event": "open"} once the terminal is there, or {"error": {code, message}} and close
                       binary: the terminal's output, as it comes
                       text {"event": "exit", "exit_code", "state_saved"} once it ended and its turn is recorded
    client -> server   binary: keys; text {"resize": [rows, cols]}

Closing the websocket hangs the terminal up (bash saves its state and exits), as closing a window does.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .attach import Attachment, attach
from .errors import SessionError
from .http_api import API
from .manager import SessionManager

PATH = API + "/sessions/{session_id}/attach"
DEFAULT_SIZE = (24, 80)


def _size(websocket: WebSocket) -> tuple[int, int]:
    try:
        rows, cols = (
            int(websocket.query_params.get("rows", DEFAULT_SIZE[0])),
            int(websocket.query_params.get("cols", DEFAULT_SIZE[1])),
        )
    except ValueError:
        return DEFAULT_SIZE
    return max(1, min(rows, 1000)), max(1, min(cols, 1000))


async def _pump(websocket: WebSocket, attached: Attachment) -> None:
    """Output to the client and keys to the terminal until either side ends."""
    async with anyio.create_task_group() as tg:

        async def output() -> None:
            try:
                while chunk := await attached.read():
                    await websocket.send_bytes(chunk)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client left: the terminal is hung up on the way out
            tg.cancel_scope.cancel()

        async def keys() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes"):
                    await attached.write(message["bytes"])
                elif message.get("text"):
                    try:
                        rows, cols = json.loads(message["text"])["resize"]
                        await attached.resize(max(1, min(int(rows), 1000)), max(1, min(int(cols), 1000)))
                    except (ValueError, KeyError, TypeError):
                        pass  # not a control message this server knows: ignored, as a terminal ignores one
            tg.cancel_scope.cancel()

        tg.start_soon(output)
        tg.start_soon(keys)


def attach_route(manager_of: Callable[[], SessionManager]) -> WebSocketRoute:
    async def endpoint(websocket: WebSocket) -> None:
        user = websocket.scope.get("user")
        owner = user.access_token.client_id if isinstance(user, AuthenticatedUser) else None
        rows, cols = _size(websocket)
        await websocket.accept()
        try:
            async with attach(manager_of(), websocket.path_params["session_id"], rows, cols, owner=owner) as attached:
                await websocket.send_json({"event": "open"})
                await _pump(websocket, attached)
        except SessionError as e:
            await websocket.send_json({"error": {"code": e.code, "message": str(e)}})
            await websocket.close(1008)
            return
        terminal = attached.terminal
        try:
            await websocket.send_json({"event": "exit", "exit_code": terminal.exit_code, "state_saved": terminal.state_saved})
            await websocket.close()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left first

    return WebSocketRoute(PATH, endpoint)
