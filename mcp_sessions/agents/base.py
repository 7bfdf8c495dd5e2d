"""What answers a message: the agent protocol and the context a turn runs in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandbox_backends.base import Sandbox

from ..models import ContentBlock, Message, Session, TurnStatus, Usage


@dataclass
class TurnContext:
    """Everything an agent may touch during one turn. Events and output go through the manager."""

    session: Session
    sandbox: Sandbox
    command_timeout_s: float
    max_output_bytes: int
    emit: Callable[[str, dict[str, Any]], Awaitable[None]]
    output: Callable[[bytes], Awaitable[None]]
    """Streams command output: kept for the busy reply and published as coalesced `tool.output` events."""
    options: dict[str, Any] = field(default_factory=dict)
    """The agent's settings for this session, as given to create_session (model, system prompt, limits)."""
    history: Callable[[], Awaitable[list[Message]]] | None = None
    """Loads the session's messages so far, this turn's user message last."""
    sampler: Any = None
    """Reaches the model of the client that sent the message (MCP sampling), if the surface offered one."""
    messages: list[Message] = field(default_factory=list)
    """Messages the agent has produced so far this turn; kept if the turn is interrupted."""
    usage: Usage = field(default_factory=Usage)
    """Usage so far this turn; kept if the turn is interrupted."""


@dataclass
class TurnOutcome:
    status: TurnStatus
    content: list[ContentBlock]
    exit_code: int | None = None
    duration_s: float | None = None
    output: str = ""
    output_bytes: int = 0
    output_cut_bytes: int = 0
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    messages: list[Message] | None = None
    """The turn's messages (assistant and tool) in order; None records one assistant message of `content`."""


class Agent(Protocol):
    name: str

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        """Answer one user message. Cancellation means the turn was interrupted: stop promptly."""
        ...
