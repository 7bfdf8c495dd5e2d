"""Approvals: with `permission_mode="ask"`, each tool call of a CLI waits for the caller's answer.

Claude Code asks through its stdio (`--permission-prompt-tool stdio`: a `control_request` `can_use_tool`);
the turn emits `approval.requested` (request id, tool, input) and waits, still busy; the caller answers
with the `answer_approval` tool (approval_tool.py): allow (optionally with edited input) or deny (with a message the model
reads). The answer must reach the server process that runs the turn (one server: always).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from ...errors import SessionError
from ..base import TurnContext

SHOWN_CHARS = 2000


class NoSuchApproval(SessionError):
    """No tool call waits under the request id given (HTTP 404)."""

    code = "not_found"


@dataclass
class Pending:
    tool: str
    input: dict[str, Any]
    answered: anyio.Event = field(default_factory=anyio.Event)
    response: dict[str, Any] = field(default_factory=dict)


class Approvals:
    """Tool calls waiting for an answer, by session id and request id."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], Pending] = {}

    async def ask(self, ctx: TurnContext, request_id: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Announce the tool call, wait for its answer (cancellable: an interrupt stops the wait) and return
        it as Claude Code's permission result."""
        pending = self._pending[(ctx.session.id, request_id)] = Pending(tool, args)
        shown = {k: (v[:SHOWN_CHARS] if isinstance(v, str) else v) for k, v in args.items()}
        try:
            await ctx.emit("approval.requested", {"request_id": request_id, "tool": tool, "input": shown})
            await pending.answered.wait()
        finally:
            self._pending.pop((ctx.session.id, request_id), None)
        await ctx.emit("approval.answered", {"request_id": request_id, "tool": tool, "behavior": pending.response["behavior"]})
        return pending.response

    def answer(self, session_id: str, request_id: str, allow: bool, message: str | None, updated: dict[str, Any] | None) -> str:
        """Answer a waiting tool call; the tool's name. Raises NoSuchApproval if none waits under that id."""
        pending = self._pending.get((session_id, request_id))
        if pending is None or pending.answered.is_set():
            raise NoSuchApproval(
                f"No tool call of session '{session_id}' waits for an answer under request_id '{request_id}' (answered "
                "already, or its turn ended). Take request_id from the latest approval.requested event of get_session."
            )
        if allow:
            pending.response = {"behavior": "allow", "updatedInput": updated if updated is not None else pending.input}
        else:
            pending.response = {"behavior": "deny", "message": message or "The user denied this tool call."}
        pending.answered.set()
        return pending.tool


WAITING = Approvals()
"""The tool calls this server process waits on (the agents ask, the `answer_approval` tool answers)."""
