"""Approvals of Claude Code's tool calls: with `permission_mode="ask"` it asks through its stdio
(`--permission-prompt-tool stdio`: a `control_request` `can_use_tool`), and the turn asks the caller
(`TurnContext.approve`: the event approval.requested, answered by `answer_approval` through any server or by
the sending client through MCP elicitation); the answer goes back as Claude Code's permission result.
"""

from __future__ import annotations

from typing import Any

from ...approvals import DENIED
from ..base import TurnContext


async def ask(ctx: TurnContext, request_id: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """The caller's answer to a tool call, as Claude Code's permission result: allow (with the input as given,
    or as the caller edited it), or deny with a message the model reads."""
    if ctx.approve is None:
        return {"behavior": "deny", "message": "This server cannot ask anyone for approval here."}
    answer = await ctx.approve(request_id, tool, args)
    if answer.decision == "allow":
        return {"behavior": "allow", "updatedInput": answer.updated_input if answer.updated_input is not None else args}
    return {"behavior": "deny", "message": answer.message or DENIED}
