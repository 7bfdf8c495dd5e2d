"""A person at the keyboard of an idle session: `mcp-sessions attach`, recorded as a human turn.

Taking the terminal is a turn like any other in the store: it starts only when the session is ready (a
running turn refuses it, with the reason), the session is busy while the person types (an agent's message
meanwhile is refused or queued, as behind any turn; interrupt ends the terminal), and its end is recorded
with what was typed and what the terminal showed, both bounded, so the transcript says what a person did
by hand. The sandbox opens the terminal in the shell's cwd with its environment and saves the shell's
state back when it exits (`OpensTerminal`), so the next turn goes on from there.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from sandbox_backends.base import OpensTerminal, SandboxBusy, Terminal
from sandbox_backends.output import OutputBuffer

from .agents.base import TurnOutcome
from .errors import SessionBusy, SessionClosed, SessionError, SessionNotFound, Unsupported
from .files import workspace_of
from .manager import SessionManager
from .mirror import read_only
from .models import Message, SessionRecord, TextBlock
from .store import EventSpec
from .turns import RunningTurn, check_can_send

HUMAN_TURN = "(a person took the keyboard: mcp-sessions attach)"
MAX_TYPED = 16384
"""The most of what was typed that the transcript keeps (the first part)."""
ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])")
"""Terminal control sequences (colours, cursor moves, titles, bracketed paste): kept out of the record."""


def readable(raw: bytes) -> str:
    """What a terminal showed or was sent, as text: control sequences dropped, backspaces applied, CR LF as LF."""
    text = ESCAPES.sub(b"", raw).replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
    kept: list[str] = []
    for ch in text:
        if ch in ("\x7f", "\b"):
            if kept and kept[-1] != "\n":
                kept.pop()
        elif ch in ("\n", "\t") or ch >= " ":
            kept.append(ch)
    return "".join(kept)


class Attachment:
    """The terminal as the person's client drives it: what passes through is kept for the record."""

    def __init__(self, terminal: Terminal, output: OutputBuffer) -> None:
        self.terminal = terminal
        self.output = output
        self.typed = bytearray()
        self.typed_bytes = 0

    async def read(self) -> bytes:
        chunk = await self.terminal.read()
        self.output.feed(chunk)
        return chunk

    async def write(self, data: bytes) -> None:
        self.typed_bytes += len(data)
        self.typed += data[: max(0, MAX_TYPED - len(self.typed))]
        await self.terminal.write(data)

    async def resize(self, rows: int, cols: int) -> None:
        await self.terminal.resize(rows, cols)


@asynccontextmanager
async def attach(
    manager: SessionManager, session_id: str, rows: int, cols: int, owner: str | None = None
) -> AsyncIterator[Attachment]:
    """A terminal in the session's sandbox for as long as the context lasts, as a human turn."""
    sandbox = await workspace_of(manager, session_id, owner)
    if not isinstance(sandbox, OpensTerminal):
        raise Unsupported(
            f"Session '{session_id}' runs on a driver that cannot open a terminal (docker, kubernetes and local can)."
        )
    messages: list[Message] = []

    def start(r: SessionRecord) -> list[EventSpec]:
        s = r.session
        if owner is not None and s.owner != owner:
            raise SessionNotFound(s.id)
        if reason := read_only(r):
            raise SessionClosed(reason)
        try:
            check_can_send(s, manager.turns.running.get(s.id))
        except SessionError as e:
            raise type(e)(f"Cannot attach now: {e}") from None
        return manager.turns.begin(r, HUMAN_TURN, messages)

    try:
        record, _ = await manager.store.update(session_id, start, messages)
    except KeyError:
        raise SessionNotFound(session_id) from None
    manager.waiter.changed(session_id)
    turn, lease = record.session.turns, record.lease
    running = RunningTurn(turn=turn, buffer=OutputBuffer(manager.settings.max_output_bytes), terminal=True)
    manager.turns.running[session_id] = running
    attachment: Attachment | None = None
    busy: str | None = None
    started = time.monotonic()
    try:
        with running.scope:
            try:
                async with sandbox.open_terminal(rows, cols) as terminal:
                    attachment = Attachment(terminal, running.buffer)
                    yield attachment
            except SandboxBusy as e:
                busy = str(e)
    finally:
        with anyio.CancelScope(shield=True):
            await manager.turns.finish(session_id, turn, lease, _outcome(attachment, running, busy, started))
            manager.turns.running.pop(session_id, None)
            running.done.set()
    if busy is not None:
        raise SessionBusy(f"Session '{session_id}' cannot take the keyboard now: {busy}")


def _outcome(attachment: Attachment | None, running: RunningTurn, busy: str | None, started: float) -> TurnOutcome:
    """How the human turn ended, with what was typed (a user message) and what the terminal showed."""
    duration = time.monotonic() - started
    if attachment is None:
        why = busy or running.stop_reason
        return TurnOutcome(status="failed" if busy else running.stop_status, content=[], duration_s=duration, reason=why)
    terminal = attachment.terminal
    shown = readable(running.buffer.render().encode())
    typed = readable(bytes(attachment.typed))
    if attachment.typed_bytes > len(attachment.typed):
        typed += f"\n[... {attachment.typed_bytes - len(attachment.typed)} more bytes typed ...]"
    saved = "" if terminal.state_saved else " Its shell state (cwd, exports) was not saved: the next turn starts from the last."
    interrupted = running.scope.cancel_called
    return TurnOutcome(
        status=running.stop_status if interrupted else "completed",
        content=[TextBlock(text=shown)],
        exit_code=terminal.exit_code,
        duration_s=duration,
        output=shown,
        output_bytes=running.buffer.total,
        output_cut_bytes=running.buffer.cut,
        reason=(running.stop_reason if interrupted else None) or (saved.strip() or None),
        messages=[
            Message(role="user", content=[TextBlock(text="typed in the terminal:\n" + typed)], turn=running.turn),
            Message(role="assistant", content=[TextBlock(text=shown)], turn=running.turn),
        ],
    )
