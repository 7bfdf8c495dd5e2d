"""The `answer_approval` tool: the caller's answer to a tool call a session waits on (mcp_sessions/approvals.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ...manager import SessionManager
from ...tools import ToolPlugin


class ApprovalAnswer(BaseModel):
    session_id: str
    request_id: str
    tool: str
    decision: Literal["allow", "deny"]


async def answer_approval(
    sessions: SessionManager,
    owner: str | None,
    session_id: Annotated[str, Field(max_length=100, description="The session id (ses_...).")],
    request_id: Annotated[str, Field(max_length=200, description="From the approval.requested event")],
    decision: Literal["allow", "deny"],
    message: Annotated[str | None, Field(max_length=10_000, description="deny: why (the agent reads it)")] = None,
    updated_input: Annotated[dict[str, Any] | None, Field(description="allow: input to use instead")] = None,
) -> ApprovalAnswer:
    """Allow or deny a tool call a session waits on (event approval.requested; permission_mode='ask')."""
    answered = await sessions.answer_approval(session_id, request_id, decision, message, updated_input, owner=owner)
    return ApprovalAnswer(session_id=session_id, request_id=request_id, tool=answered.tool, decision=decision)


plugin = ToolPlugin(name="answer_approval", run=answer_approval, title="Answer a tool approval", idempotent=False)
