"""A person's terminal through a control shell (`attach`): an interactive bash on a PTY the control shell opens
in the sandbox as the sandbox user, starting from the state the last command saved and saving its own back
when it exits (program.py, "a person's terminal"). Any driver with a control shell can offer it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from ..base import SandboxBusy, SandboxError
from .client import ControlClient, Lost

HANG_UP_S = 10.0
"""Upper bound on a hung-up terminal's last frames (bash saves its state and exits at once)."""


@asynccontextmanager
async def control_terminal(
    connection: Callable[[], Awaitable[ControlClient]], env: dict[str, str], rows: int, cols: int
) -> AsyncIterator[ControlTerminal]:
    """A terminal on the control shell `connection()` gives, hung up on the way out."""
    conn = await connection()
    req = conn.open_request("attach")
    try:
        await conn.send({"op": "attach", "req": req, "rows": rows, "cols": cols, "env": env})
        _kind, msg = await conn.next(req)
        if msg.get("error") == "busy":
            raise SandboxBusy(f"{msg.get('message')} Wait for it to end, or interrupt it.")
        if msg.get("error"):
            raise SandboxError(f"Cannot open a terminal: {msg.get('message') or msg['error']}.")
        terminal = ControlTerminal(conn, req)
        try:
            yield terminal
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(HANG_UP_S):
                await terminal.hang_up()
    finally:
        conn.close_request(req)


class ControlTerminal:
    """A terminal the control shell opened (`attach`): its output comes as the request's O frames, its end as
    an `exit` answer; keys, sizes and the hang-up go as requests it does not answer."""

    def __init__(self, conn: ControlClient, req: str) -> None:
        self._conn = conn
        self._req = req
        self.exit_code: int | None = None
        self.state_saved = False
        self.ended = False

    async def read(self) -> bytes:
        while not self.ended:
            try:
                kind, item = await self._conn.next(self._req)
            except Lost:
                self.ended = True
                break
            if kind == "O":
                return bytes(item)
            if item.get("ev") == "exit" or item.get("error"):
                self.ended = True
                self.exit_code, self.state_saved = item.get("rc"), bool(item.get("saved"))
        return b""

    async def write(self, data: bytes) -> None:
        if not self.ended:
            await self._conn.send({"op": "input", "req": "", "term": self._req}, data)

    async def resize(self, rows: int, cols: int) -> None:
        if not self.ended:
            await self._conn.send({"op": "resize", "req": "", "term": self._req, "rows": rows, "cols": cols})

    async def hang_up(self) -> None:
        """As closing the window: bash saves its state and exits; its last output is read (and dropped)."""
        if not self.ended:
            await self._conn.send({"op": "hangup", "req": "", "term": self._req})
        while await self.read():
            pass
