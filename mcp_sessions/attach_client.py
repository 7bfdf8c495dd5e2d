"""`mcp-sessions attach ID`: this terminal becomes a terminal in the session's sandbox, through a server's
websocket (http_attach.py), so it works against a server on another machine as well as this one.

The local terminal is put in raw mode (every key goes to the sandbox's shell, Ctrl-C included) and
restored on the way out; its size goes along, and again when it changes. Leave with `exit` or Ctrl-D:
the shell saves its state for the session's next turn.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import anyio

TOKEN_ENV = "MCP_SESSIONS_TOKEN"
CONNECT_S = 30.0


def websocket_url(server: str, session_id: str, rows: int, cols: int) -> str:
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + f"/api/v1/sessions/{quote(session_id, safe='')}/attach"
    return urlunsplit((scheme, parts.netloc, path, f"rows={rows}&cols={cols}", ""))


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


@contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(server: str, token: str | None, session_id: str) -> int:
    """Run the terminal until its shell exits; the exit status for the command (the shell's, or 1 if refused)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    rows, cols = _size()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with anyio.fail_after(CONNECT_S):
            ws = await connect(websocket_url(server, session_id, rows, cols), additional_headers=headers, max_size=1 << 22)
    except InvalidStatus as e:
        print(
            f"mcp-sessions: the server refused to attach (HTTP {e.response.status_code}): check the token in {TOKEN_ENV}",
            file=sys.stderr,
        )
        return 1
    except (OSError, TimeoutError) as e:
        print(f"mcp-sessions: cannot reach {server}: {e}. Is 'mcp-sessions serve --http' running there?", file=sys.stderr)
        return 1
    async with ws:
        first = json.loads(await ws.recv())
        if "error" in first:
            print(f"mcp-sessions: {first['error']['message']}", file=sys.stderr)
            return 1
        print(
            f"Attached to {session_id}: leave with exit or Ctrl-D (the shell's cwd and exports carry to the next turn).\r",
            file=sys.stderr,
        )
        ended: dict[str, object] = {}
        stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
        with _raw(stdin):
            async with anyio.create_task_group() as tg:

                async def keys() -> None:
                    while True:
                        await anyio.wait_readable(stdin)
                        data = os.read(stdin, 65536)
                        if not data:
                            return  # stdin closed: the server side ends when the shell does
                        await ws.send(data)

                async def resizes() -> None:
                    with anyio.open_signal_receiver(signal.SIGWINCH) as changes:
                        async for _ in changes:
                            await ws.send(json.dumps({"resize": list(_size())}))

                async def output() -> None:
                    try:
                        async for message in ws:
                            if isinstance(message, bytes):
                                os.write(stdout, message)
                            else:
                                ended.update(json.loads(message))
                    except ConnectionClosed:
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(keys)
                tg.start_soon(resizes)
                tg.start_soon(output)
    code = ended.get("exit_code")
    print(f"\r\nDetached from {session_id} (its shell exited with {code}).", file=sys.stderr)
    return code if isinstance(code, int) else 1
