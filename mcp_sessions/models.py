"""The data every surface shares: sessions, messages, content blocks, events, usage.

One place for each fact: the MCP tools, the resources and the store all speak these models.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .inputs import IN_RANGE

Status = Literal["creating", "ready", "busy", "paused", "failed", "dead"]
Phase = Literal[
    "queued",
    "creating_sandbox",
    "starting",
    "injecting_files",
    "cloning_repo",
    "installing_deps",
    "starting_agent",
    "copying_workspace",
    "ready",
    "pausing",
    "paused",
    "resuming",
]
TurnStatus = Literal["queued", "running", "completed", "failed", "interrupted"]
LIVE_STATUSES: tuple[Status, ...] = ("creating", "ready", "busy", "paused")
"""Not ended. A paused session is live: it holds a workspace and comes back at its next use."""
IdleAction = Literal["pause", "close"]


def now() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(16)


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(8)


# -- content -------------------------------------------------------------------------------------


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False


class ImageBlock(BaseModel):
    type: Literal["image"] = "image"
    media_type: str
    data: str


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ImageBlock, Field(discriminator="type")]


class Message(BaseModel):
    id: str = Field(default_factory=new_message_id)
    role: Literal["user", "assistant", "tool", "system"]
    content: list[ContentBlock]
    created_at: datetime = Field(default_factory=now)
    turn: int
    undone: bool = Field(False, description="Its turn was undone by a restore: kept in the transcript, out of the conversation.")

    def text(self) -> str:
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))


# -- sessions ------------------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    cost_by_model: dict[str, float] = Field(default_factory=dict)

    def add(self, other: Usage) -> None:
        """Add `other` into this usage, model by model."""
        for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens", "cost_usd"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for model, cost in other.cost_by_model.items():
            self.cost_by_model[model] = self.cost_by_model.get(model, 0.0) + cost


class TreeUsage(Usage):
    """Usage of a session and all its descendants: what the budgets of its tree count."""

    sessions: int = Field(1, description="Sessions counted: this one and its descendants.")
    turns: int = Field(0, description="Turns started in them.")
    turn_time_s: float = Field(0.0, description="Seconds their turns ran, added up.")


class Budget(BaseModel):
    """What a session and all its descendants may use together, set at create. A turn anywhere in the tree
    that would pass it ends failed; a descendant's own budget binds too, and never loosens this one.

    The fields are create_session parameters too (create.py), so their descriptions are read by models: terse.
    """

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: Annotated[float, Field(gt=0, le=10**6, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="Budgets of it and its descendants; a turn past one fails."
    )
    max_tokens: Annotated[int, Field(ge=1, le=10**12), IN_RANGE] | None = None
    max_turns: Annotated[int, Field(ge=1, le=10**6), IN_RANGE] | None = None
    max_duration_s: Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="Turn seconds, summed."
    )

    def set(self) -> dict[str, float]:
        """The budgets given, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class LimitsModel(BaseModel):
    """Sandbox resource limits. Each is capped by the server's maximum."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: Annotated[int, Field(ge=64, le=1 << 20), IN_RANGE] | None = Field(None, description="Memory limit in MiB.")
    cpus: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="CPU limit in cores."
    )
    pids: Annotated[int, Field(ge=16, le=1 << 22), IN_RANGE] | None = Field(None, description="Maximum number of processes.")
    tmp_mb: Annotated[int, Field(ge=1, le=1 << 20), IN_RANGE] | None = Field(None, description="Size of the /tmp tmpfs in MiB.")
    disk_mb: Annotated[int, Field(ge=16, le=1 << 24), IN_RANGE] | None = Field(
        None, description="Size of the workspace in MiB (default: the server's). A turn that passes it fails, or its writes do."
    )


class TurnSummary(BaseModel):
    """The outcome of the last turn, as the caller needs it."""

    turn: int
    status: TurnStatus
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    output: str = ""
    output_bytes: int = 0
    output_cut_bytes: int = 0
    reason: str | None = Field(None, description="Why the turn failed or was interrupted.")
    usage: Usage | None = Field(None, description="Tokens and cost of this turn (agents that call a model).")


class Session(BaseModel):
    """What a caller sees of a session."""

    id: str
    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    driver: str
    agent: str
    model: str | None = None
    image: str | None = None
    status: Status = "creating"
    phase: Phase = "queued"
    phase_detail: str | None = None
    failure_reason: str | None = None
    close_reason: str | None = None
    created_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    last_activity_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    idle_timeout_s: float = 0
    idle_action: IdleAction = Field("close", description="What its idle timeout does: pause it, or close it.")
    paused_timeout_s: float = Field(0, description="Closed once paused this long, in seconds (0 = never).")
    paused_at: datetime | None = Field(None, description="When it was paused: while it is, and if it was closed paused.")
    command_timeout_s: float
    turns: int = 0
    preview: str | None = Field(None, description="The first user message, shortened.")
    last_response: list[ContentBlock] = Field(default_factory=list)
    output_preview: str | None = Field(None, description="The end of the last turn's output.")
    last_turn: TurnSummary | None = None
    usage: Usage = Field(default_factory=Usage)
    sandbox: dict[str, Any] | None = None
    workspace: str | None = None
    parent_session_id: str | None = Field(None, description="The session this one was created under.")
    budget: Budget | None = Field(None, description="What this session and its descendants may use together.")
    turn_time_s: float = Field(0.0, description="Seconds this session's turns ran, added up (what max_duration_s counts).")
    forked_turns: int = Field(0, description="Turns copied from the session it was forked from (not its own: budgets skip them).")
    owner: str | None = None

    def has_ended(self) -> bool:
        """Dead or failed, and no turn left to record its end (a failed sandbox's turn is finished by its runner)."""
        return self.status in ("dead", "failed") and (self.last_turn is None or self.last_turn.status != "running")


class Checkpoint(BaseModel):
    """A named copy of a session's workspace and shell state, after a turn, to restore or fork from."""

    name: str
    turn: int = Field(description="The last turn it holds; restoring it undoes the turns after it.")
    created_at: datetime = Field(default_factory=now)
    size_mb: int = Field(description="MiB its copy of the workspace holds.")


class SavedCheckpoint(Checkpoint):
    """A checkpoint as the record keeps it: the driver's key for the copy, and the shell state (base64)."""

    key: str
    state: str = ""


class QueuedMessage(BaseModel):
    text: str
    queued_at: datetime = Field(default_factory=now)
    cancelled: str | None = None
    """Why it will not run: when its turn comes, the turn ends interrupted with this reason, without running."""


class Approval(BaseModel):
    """A tool call the running turn waits on (permission_mode "ask"), and once given, its answer: kept in the
    record so that any server process sharing the store can answer it, the first answer alone counting."""

    request_id: str
    tool: str
    turn: int
    decision: Literal["allow", "deny"] | None = None
    message: str | None = None
    updated_input: dict[str, Any] | None = None
    by: str | None = None
    """Who answered: `answer_approval` or `elicitation` (the client that sent the message)."""


class SessionRecord(BaseModel):
    """A session plus what only the server needs: how to reach its sandbox and who runs its turn."""

    session: Session
    sandbox_id: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    lease: str | None = Field(None, description="The server process running this session's turn or creation.")
    interrupt_requested: bool = False
    queue: list[QueuedMessage] = Field(default_factory=list, description="Messages to run, in order, after the current turn.")
    agent_options: dict[str, Any] = Field(
        default_factory=dict, description="The agent's settings: system prompt, limits, provider."
    )
    driver_options: dict[str, Any] = Field(default_factory=dict, description="The driver's create options, e.g. which remote.")
    egress: list[str] = Field(default_factory=list, description="The host:port pairs its egress proxy connects to.")
    mounts: dict[str, str] = Field(default_factory=dict, description="Host files its sandbox sees read-only (the agent's needs).")
    paused_state: str | None = Field(
        None, description="What the paused sandbox needs to come back as it was (its shell state), base64; set while paused."
    )
    checkpoints: list[SavedCheckpoint] = Field(default_factory=list, description="Oldest first.")
    budget_from: list[str] = Field(
        default_factory=list,
        description="This session and its ancestors that set a budget, nearest first: whose budgets bind its turns.",
    )
    approvals: list[Approval] = Field(default_factory=list, description="Tool calls its running turn waits on.")


# -- events --------------------------------------------------------------------------------------

EventType = Literal[
    "session.created",
    "phase",
    "status",
    "turn.queued",
    "turn.started",
    "text.delta",
    "tool.started",
    "tool.output",
    "tool.completed",
    "model.sampled",
    "approval.requested",
    "approval.answered",
    "approval.unanswered",
    "turn.completed",
    "turn.failed",
    "turn.interrupted",
    "session.failed",
    "session.closed",
    "egress",
    "checkpoint.saved",
    "checkpoint.restored",
]


class Event(BaseModel):
    seq: int
    time: datetime
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)


# -- what the surfaces return ----------------------------------------------------------------------


class TurnReply(BaseModel):
    """The answer to send_message: the turn's outcome, or where it stands if it still runs."""

    session_id: str
    status: Status = Field(description="The session's status now: 'busy' while the turn runs, 'ready' after it.")
    turn: int
    turn_status: TurnStatus
    output: str = Field("", description="The turn's output (head and tail if long), or the output so far while busy.")
    exit_code: int | None = None
    duration_s: float | None = None
    output_bytes: int = 0
    output_cut_bytes: int = Field(0, description="Bytes cut from the middle of the output to keep the reply bounded.")
    reason: str | None = None
    usage: Usage | None = Field(None, description="Tokens and cost of this turn (agents that call a model).")
    events_cursor: int = Field(description="Pass as events_after to get_session to read only newer events.")
    next_step: str = Field(description="What to do next, in one sentence.")


class SessionDetail(BaseModel):
    """The answer to get_session."""

    session: Session
    queued: list[str] = Field(default_factory=list, description="Messages waiting to run, in order, after the current turn.")
    recent_messages: list[Message] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list, description="Events after events_after, oldest first.")
    events_cursor: int
    events_note: str | None = None
    children: int = Field(0, description="Sessions created with this one as their parent.")
    usage_with_children: TreeUsage = Field(
        default_factory=TreeUsage, description="Usage of this session and all its descendants, what its budget counts."
    )
    next_step: str


class SessionSummary(BaseModel):
    """One row of list_sessions: small, no transcript.

    Each stored session keeps its summary as JSON (store.py), so a field added here needs a migration
    that rewrites the stored summaries, unless its default is right for every stored one (as
    parent_session_id's None was when it came: no session had a parent before).
    """

    id: str
    title: str | None
    status: Status
    phase: Phase
    driver: str
    agent: str
    tags: list[str]
    created_at: datetime
    last_activity_at: datetime
    turns: int
    preview: str | None
    failure_reason: str | None
    close_reason: str | None
    parent_session_id: str | None = None
    owner: str | None = Field(None, description="Whose session it is (the token's owner); read from its own column.")


SUMMARY_FIELDS = set(SessionSummary.model_fields) - {"owner"}
"""What a stored summary holds: the owner has a column of its own, which the list reads beside it."""


def summary_json(s: Session) -> str:
    """The session's list_sessions row as JSON, dumped straight from the session (no model in between)."""
    return s.model_dump_json(include=SUMMARY_FIELDS)


class SessionPage(BaseModel):
    sessions: list[SessionSummary]
    total: int = Field(description="How many sessions match the filters, over all pages.")
    next_cursor: str | None = Field(None, description="Pass as cursor to get the next page; null on the last page.")


class InterruptReply(BaseModel):
    session_id: str
    interrupted: bool = Field(description="True if a running turn was stopped.")
    turn: int | None = None
    status: Status
    message: str


class CloseReply(BaseModel):
    session_id: str
    status: Status
    deleted: bool
    closed_descendants: int = Field(0, description="Descendant sessions closed (or deleted) with it.")
    message: str
