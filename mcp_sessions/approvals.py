"""Approvals: a turn asks whether a tool call may run (an agent with permission_mode "ask") and waits for the
first answer, from whichever server process sharing the store gives it.

Two ways to answer, open together: `answer_approval` (MCP, REST or CLI, through any server), and the client
that sent the message, asked directly through MCP elicitation when it offers form elicitation (over its
connection in the handshake era; on the turn's task in 2026-07-28). The question and its answer live in the
session's record (`SessionRecord.approvals`), so answering is one store update that only the first answerer
makes: a later one finds the question answered and is told so. The turn waits through the event waiter,
which sees an answer given by another process (its `approval.answered` event) on the store's change feed:
the wait polls nothing of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import anyio

from .errors import Conflict, SessionError, StoreError
from .events import POLL_S, EventWaiter
from .models import Approval, SessionRecord
from .store import EventSpec, Store

log = logging.getLogger(__name__)

SHOWN_CHARS = 2000
"""Of each string of a tool call's input, what the `approval.requested` event shows."""
ASKED_CHARS = 600
"""Of a tool call's input, what the elicitation's message shows."""
DENIED = "The user denied this tool call."
MESSAGE_CHARS = 10_000
"""Of a denial's message given through elicitation, what the agent reads (answer_approval's bound too)."""
WAIT_S = 3600.0
KEPT_ANSWERED = 20
"""Answered questions of the running turn kept in the record, to tell a late answer it came second."""
FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "title": "Decision", "enum": ["allow", "deny"]},
        "message": {"type": "string", "title": "Message", "description": "If you deny it: why (the agent reads it)"},
    },
    "required": ["decision"],
}
"""The elicitation's form: flat primitives, as form elicitation requires."""

Update = Callable[..., Awaitable[tuple[SessionRecord, list[Any]]]]


class NoSuchApproval(SessionError):
    """No tool call waits under the request id given (HTTP 404)."""

    code = "not_found"


class AlreadyAnswered(Conflict):
    """The tool call was answered already, through the other way (HTTP 409)."""


class Elicits(Protocol):
    """The client that sent the message, as the turn reaches it (the turn's sampler, when it can elicit)."""

    def elicitation_unavailable(self) -> str | None:
        """Why this client cannot be asked through form elicitation, or None if it can."""
        ...

    async def elicit(self, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Ask the client; its ElicitResult as JSON (`action`, `content`)."""
        ...


def settle(
    r: SessionRecord,
    request_id: str,
    decision: Literal["allow", "deny"],
    message: str | None,
    updated_input: dict[str, Any] | None,
    by: str,
) -> list[EventSpec]:
    """Inside a store update: give the waiting tool call its answer. Raises (nothing is written) if no call
    waits under that id, or if it was answered already."""
    s = r.session
    found = next((a for a in r.approvals if a.request_id == request_id), None)
    if found is None or found.turn != s.turns or s.status != "busy":
        raise NoSuchApproval(
            f"No tool call of session '{s.id}' waits for an answer under request_id '{request_id}' (its turn ended, or "
            "it was never asked). Take request_id from the latest approval.requested event of get_session."
        )
    if found.decision is not None:
        raise AlreadyAnswered(
            f"The {found.tool} call '{request_id}' of session '{s.id}' was answered already ({found.decision}, "
            f"through {found.by}); this answer changes nothing."
        )
    found.decision, found.message, found.updated_input, found.by = decision, message, updated_input, by
    return [("approval.answered", {"request_id": request_id, "tool": found.tool, "behavior": decision, "by": by})]


class TurnApprovals:
    """The questions of one running turn: asked in the store, answered from anywhere (see the module's words).
    `sender` is the turn's sampler (the client that sent the message): asked too if it offers form elicitation."""

    def __init__(
        self,
        session_id: str,
        turn: int,
        store: Store,
        waiter: EventWaiter,
        update: Update,
        flush: Callable[[], Awaitable[None]],
        sender: Any = None,
    ) -> None:
        self._sid = session_id
        self._turn = turn
        self._store = store
        self._waiter = waiter
        self._update = update
        self._flush = flush
        self._sender = sender

    async def ask(self, request_id: str, tool: str, args: dict[str, Any]) -> Approval:
        """Announce the tool call (`approval.requested`), ask the client too if it can be asked, and wait for the
        first answer. Cancellable: an interrupt ends the wait (and the client's question) with the turn."""
        await self._flush()  # the turn's earlier events come first
        shown = {k: (v[:SHOWN_CHARS] if isinstance(v, str) else v) for k, v in args.items()}
        unavailable = getattr(self._sender, "elicitation_unavailable", None)
        client: Elicits | None = self._sender if unavailable is not None and unavailable() is None else None

        def add(r: SessionRecord) -> list[EventSpec]:
            # this turn's last answered questions stay (a second answer is told it came second); earlier turns' go
            kept = [a for a in r.approvals if a.turn == self._turn and a.request_id != request_id]
            r.approvals = [*kept[-KEPT_ANSWERED:], Approval(request_id=request_id, tool=tool, turn=self._turn)]
            data = {"request_id": request_id, "tool": tool, "input": shown, "elicitation": client is not None}
            return [("approval.requested", data)]

        await self._update(self._sid, add)
        async with anyio.create_task_group() as tg:
            if client is not None:
                tg.start_soon(self._elicit, client, request_id, tool, args)
            answer = await self._answered(request_id)
            tg.cancel_scope.cancel()  # answered through answer_approval: the client's question is withdrawn
        return answer

    async def _answered(self, request_id: str) -> Approval:
        while True:
            try:
                cursor = await self._store.last_seq(self._sid)
                record = await self._store.get(self._sid)
            except StoreError:  # locked or full: look again in a tick
                await anyio.sleep(POLL_S)
                continue
            found = next((a for a in record.approvals if a.request_id == request_id), None) if record else None
            if found is None:  # the session was deleted under the turn, which is being stopped
                return Approval(request_id=request_id, tool="", turn=self._turn, decision="deny", message=DENIED)
            if found.decision is not None:
                return found
            await self._waiter.wait(self._sid, cursor, WAIT_S)

    async def _elicit(self, client: Elicits, request_id: str, tool: str, args: dict[str, Any]) -> None:
        """Ask the client; its accept (allow or deny) or decline (deny) answers the tool call, unless answered
        already. A cancel, an error or a form without a decision leaves it to answer_approval, as an event says."""
        said = json.dumps(args, ensure_ascii=False)
        said = said if len(said) <= ASKED_CHARS else said[:ASKED_CHARS] + "…"
        question = f"Session {self._sid} wants to run the tool {tool} with input {said}. Allow it?"
        try:
            result = await client.elicit(question, FORM)
        except Exception as e:
            log.info("elicitation for %s of %s failed: %s", request_id, self._sid, e)
            return await self._unanswered(request_id, tool, f"the client's elicitation failed: {str(e)[:300]}")
        action, content = result.get("action"), result.get("content") or {}
        chosen = content.get("decision") if action == "accept" else "deny" if action == "decline" else None
        decision: Literal["allow", "deny"] | None = "allow" if chosen == "allow" else "deny" if chosen == "deny" else None
        if decision is None:
            how = "without a decision" if action == "accept" else f"with {action}"
            return await self._unanswered(request_id, tool, f"the client's elicitation ended {how}")
        given = content.get("message")
        message = str(given)[:MESSAGE_CHARS] if given else ("The user declined this tool call." if action == "decline" else None)
        try:
            await self._update(self._sid, lambda r: settle(r, request_id, decision, message, None, "elicitation"))
        except (AlreadyAnswered, NoSuchApproval) as e:  # answer_approval came first
            log.info("the elicited answer to %s of %s came second: %s", request_id, self._sid, e)

    async def _unanswered(self, request_id: str, tool: str, why: str) -> None:
        data = {"request_id": request_id, "tool": tool, "reason": f"{why}; the tool call still waits for answer_approval"}
        try:
            await self._update(self._sid, lambda r: [("approval.unanswered", data)])
        except SessionError as e:  # gone, or a full disk: the call waits all the same
            log.warning("could not record that %s of %s is still unanswered: %s", request_id, self._sid, e)
