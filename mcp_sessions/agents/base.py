"""What answers a message: the agent contract, the context a turn runs in, and how an agent declares itself.

The rules every agent keeps:
- `run_turn` answers one user message with one `TurnOutcome`; one turn runs at a time per session.
- Everything observable goes through the `TurnContext`: events (`emit`), command output (`output`),
  the messages and usage produced so far (`messages`, `usage`: kept if the turn is stopped).
- Cancellation means the turn was interrupted (by the caller, a failed sandbox or a server stopping):
  stop promptly, leaving the sandbox usable; the manager records the outcome.
- Keys and the server's settings stay in the server: an agent gives the sandbox only what its
  commands need.

An agent declares itself with one `AgentPlugin` (registry.py): its server settings, the create options it
takes (one pydantic model, from which the `create_session` schema, the REST body and the docs are built),
and how to make it. Optional steps are protocols below: `ConfiguresSessions` (check options, fill in
defaults at create), `PreparesSandbox` (set the sandbox up at create, phase `starting_agent`),
`SeesImages` (shows its model the images sent with a message), `NeedsHostFiles` (host files its sandboxes
see read-only), `RunsInBackground` (work that outlives turns), `AsksCallersModel` (refuse a message whose
sender's model cannot be asked).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc
from pydantic import BaseModel

from sandbox_backends.base import Sandbox

from ..models import Approval, ContentBlock, ImageBlock, Message, Session, TurnStatus, Usage
from .pricing import PriceTable


@dataclass
class TurnContext:
    """Everything an agent may touch during one turn. Events and output go through the manager."""

    session: Session
    sandbox: Sandbox
    command_timeout_s: float
    max_output_bytes: int
    max_file_bytes: int
    """The server's limit on one file read or written; a larger file is refused with a clear error."""
    emit: Callable[[str, dict[str, Any]], Awaitable[None]]
    output: Callable[[bytes], Awaitable[None]]
    """Streams command output: kept for the busy reply and published as coalesced `tool.output` events."""
    options: dict[str, Any] = field(default_factory=dict)
    """The agent's options for this session, as its options model and `configure` left them."""
    history: Callable[[], Awaitable[list[Message]]] | None = None
    """Loads the session's messages so far, this turn's user message last."""
    sampler: Any = None
    """Reaches the model of the client that sent the message (MCP sampling), if the surface offered one."""
    over_budget: Callable[[Usage], Awaitable[str | None]] | None = None
    """Given the usage of this turn so far, why the turn must stop (a budget of the session's tree is
    reached), or None. Agents that call a model ask after each step that would go on; None: no budget."""
    approve: Callable[[str, str, dict[str, Any]], Awaitable[Approval]] | None = None
    """`approve(request_id, tool, input)`: announce a tool call and wait for the caller's answer, given through
    `answer_approval` on any server process or by the sending client through elicitation (approvals.py)."""
    messages: list[Message] = field(default_factory=list)
    """Messages the agent has produced so far this turn; kept if the turn is interrupted."""
    usage: Usage = field(default_factory=Usage)
    """Usage so far this turn; kept if the turn is interrupted."""
    images: list[ImageBlock] = field(default_factory=list)
    """The images sent with this turn's message (checked: mcp_sessions/images.py); only agents that `SeesImages`
    are sent any. They are in the stored user message too, after its text."""


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


@runtime_checkable
class SeesImages(Protocol):
    """An agent that shows its model the images sent with a message (`TurnContext.images`). A message with
    images for any other agent is refused before its turn starts."""

    sees_images: bool
    """True; the attribute is the declaration."""


@runtime_checkable
class ConfiguresSessions(Protocol):
    """An agent that checks a new session's settings and fills in the server's defaults."""

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """The model and options to store for a new session (options already validated by the options model,
        unset ones left out). Raise `ValueError` with a sentence for the caller if they cannot work."""
        ...


@dataclass
class PrepareContext:
    """What an agent may use while a new session's sandbox is set up for it."""

    session: Session
    sandbox: Sandbox
    options: dict[str, Any]
    detail: Callable[[str], Awaitable[None]]
    """Says what is happening now (the phase's `phase_detail`), e.g. "installing claude 2.1"."""


@runtime_checkable
class PreparesSandbox(Protocol):
    """An agent that sets up a new session's sandbox (after its files are written; phase `starting_agent`)."""

    async def prepare(self, ctx: PrepareContext) -> None:
        """Raise `SandboxError` (or `ValueError`) with a sentence for the caller: the session fails with it."""
        ...


@dataclass(frozen=True)
class AgentContext:
    """What the server gives every agent it makes."""

    home: Path
    """The server's state folder; an agent may keep files under `home / "agents" / <name>`."""
    prices: PriceTable
    """Token prices (the shipped table and the server's price file), for agents that report usage."""


@dataclass(frozen=True)
class AgentPlugin:
    """How the server finds, configures and makes one agent."""

    name: str
    make: Callable[[Any, AgentContext], Agent]
    """Builds the agent from its settings (an instance of `settings`, or None without one) and the context."""
    summary: str
    """One line for people and models choosing an agent, e.g. "each message is a bash script"."""
    settings: type[BaseModel] | None = None
    """Server settings, as for drivers: each field a flag and a `MCP_SESSIONS_*` variable; names unique."""
    options: type[BaseModel] | None = None
    """What `create_session` may pass this agent. Every field defaults to None (= not given); its
    description says what it does in a few words. Agents may share a field name if its type is the same."""


@runtime_checkable
class RunsInBackground(Protocol):
    """An agent with work that outlives its turns (listeners its CLI processes reach, a shared HTTP client).
    The manager runs it for the server's life."""

    async def run_background(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Call `task_status.started()` once ready; run until cancelled (the server stops)."""
        ...


async def start_background(agents: Iterable[Agent], tg: anyio.abc.TaskGroup) -> None:
    """Start the background of every agent that has one, each ready before this returns."""
    for agent in agents:
        if isinstance(agent, RunsInBackground):
            await tg.start(agent.run_background)


@runtime_checkable
class AsksCallersModel(Protocol):
    """An agent whose sessions may run on the model of the client that sends each message (MCP sampling)."""

    def cannot_ask(self, options: dict[str, Any], sampler: Any) -> str | None:
        """Why a message sent with `sampler` (None: a surface with no client to ask, as REST) cannot run on a
        session with these options, or None. send_message refuses such a message with that sentence."""
        ...


@runtime_checkable
class NeedsHostFiles(Protocol):
    """An agent whose commands need files of the server's host in the sandbox, read-only (a CLI's binary)."""

    def host_files(self, options: dict[str, Any]) -> dict[str, str]:
        """Name -> host path, as `SandboxSpec.mounts` takes them, for a new session with these options."""
        ...
