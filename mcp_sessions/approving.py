"""Answering a tool call a session's turn waits on (approvals.py), from any server process sharing the store."""

from __future__ import annotations

from typing import Any, Literal

from .approvals import settle
from .models import Approval
from .session_core import ManagerCore


class Approving(ManagerCore):
    """answer_approval."""

    async def answer_approval(
        self,
        session_id: str,
        request_id: str,
        decision: Literal["allow", "deny"],
        message: str | None = None,
        updated_input: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> Approval:
        """Give the waiting tool call its answer; the question as answered. The turn, wherever it runs, sees the
        answer through the store. Raises NoSuchApproval, or AlreadyAnswered if the client answered first."""
        await self._record(session_id, owner)  # the caller's session, or SessionNotFound
        record, _ = await self._update(
            session_id, lambda r: settle(r, request_id, decision, message, updated_input, "answer_approval")
        )
        return next(a for a in record.approvals if a.request_id == request_id)
