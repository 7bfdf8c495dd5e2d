"""What a caller is told: the reply to a message, the next step to take, a readable batch of events.

Every reply ends in `next_step`, a sentence naming the call to make next, because the caller is often a
model deciding what to do; outputs and event batches are bounded so a reply stays readable for one.
"""

from __future__ import annotations

from sandbox_backends.output import OutputBuffer

from .models import Event, Session, SessionRecord, TurnReply, TurnSummary
from .store import Store
from .trees import BUDGET_SPENT
from .turns import TURN_END_EVENTS, RunningTurn, cancelled_in

MAX_EVENTS_PER_READ = 200
MAX_EVENT_TEXT = 16384
"""Bound on the output text returned in one batch of events, so a reply stays readable for an LLM."""


def next_step(s: Session, cursor: int | None = None) -> str:
    if s.status == "busy":
        after = f", events_after={cursor}" if cursor is not None else ""
        return (
            f"Turn {s.turns} is still running. Call get_session(session_id='{s.id}', wait_s=30{after}) to wait "
            "for it and read new output, or interrupt to stop it."
        )
    if (
        s.status == "ready"
        and s.last_turn
        and s.last_turn.status == "failed"
        and (s.last_turn.reason or "").startswith(BUDGET_SPENT)
    ):
        return (
            "A budget of this session's tree is spent, so every turn in it fails: go on in a session outside the "
            "tree (create_session without this parent), or close it with close_session."
        )
    if s.status == "ready":
        return "The session is ready: send the next message with send_message, or close it with close_session."
    if s.status == "paused":
        return "The session is paused: send_message, a file read or fork_session resumes it (close_session ends it)."
    if s.status == "creating":
        return f"The session is being created (phase {s.phase}). Call get_session(session_id='{s.id}', wait_s=30)."
    if s.status == "failed":
        return f"The session failed: {s.failure_reason}. Read its transcript, then create a new session."
    return "The session is closed. Its transcript stays readable; create a new session to go on."


async def past_turn(store: Store, session_id: str, turn: int) -> TurnSummary | None:
    """How an earlier turn ended, rebuilt from its end event and its reply message."""
    ends = [e for e in await store.events_of_type(session_id, TURN_END_EVENTS) if e.data.get("turn") == turn]
    if not ends:
        return None
    end = ends[-1]
    replies = [m for m in await store.messages(session_id, from_turn=turn) if m.turn == turn and m.role == "assistant"]
    output = replies[-1].text() if replies else ""
    return TurnSummary(
        turn=turn,
        status=end.type.removeprefix("turn."),
        started_at=end.time,
        finished_at=end.time,
        duration_s=end.data.get("duration_s"),
        exit_code=end.data.get("exit_code"),
        output=output,
        output_bytes=end.data.get("output_bytes") or 0,
        reason=end.data.get("reason"),
        usage=end.data.get("usage"),
    )


async def output_so_far(
    store: Store, session_id: str, turn: int, running: RunningTurn | None, limit: int
) -> tuple[str, int, int]:
    """A running turn's output so far, bounded like a reply: (text, bytes, bytes cut). From the turn itself
    when this process runs it, else from the output events the process running it published."""
    if running is not None and running.turn == turn:
        return running.buffer.render(), running.buffer.total, running.buffer.cut
    buffer = OutputBuffer(limit)
    starts = [e.seq for e in await store.events_of_type(session_id, ("turn.started",)) if e.data.get("turn") == turn]
    after = starts[-1] if starts else 0
    while events := await store.events(session_id, after=after, limit=1000):
        for event in events:
            if event.type == "tool.output":
                buffer.feed(str(event.data.get("text", "")).encode())
        after = events[-1].seq
    return buffer.render(), buffer.total, buffer.cut


async def turn_reply(
    store: Store, record: SessionRecord, turn: int, running: RunningTurn | None, cursor: int | None = None
) -> TurnReply:
    """What the caller learns of `turn`; `cursor`, if known, is the last event seq as of `record`;
    `running` is the turn this process runs for the session, if any."""
    s = record.session
    if cursor is None:
        if running is not None and running.flush is not None:
            await running.flush()
        cursor = await store.last_seq(s.id)
    base = {"session_id": s.id, "status": s.status, "turn": turn, "events_cursor": cursor}
    if s.turns < turn and s.status == "busy":
        position = turn - s.turns
        if (why := cancelled_in(record.queue, position)) is not None:
            return TurnReply(**base, turn_status="interrupted", reason=why, next_step=next_step(s, cursor))
        return TurnReply(
            **base,
            turn_status="queued",
            next_step=(
                f"The message is queued: it runs as turn {turn}, after {position} turn(s) ahead of it. "
                f"Call get_session(session_id='{s.id}', wait_s=30, events_after={cursor}) to follow."
            ),
        )
    if s.turns == turn and s.last_turn is not None and s.last_turn.status == "running":
        return TurnReply(
            **base,
            turn_status="running",
            output=running.buffer.render() if running else "",
            output_bytes=running.buffer.total if running else 0,
            output_cut_bytes=running.buffer.cut if running else 0,
            next_step=next_step(s, cursor),
        )
    summary = s.last_turn if s.last_turn and s.last_turn.turn == turn else await past_turn(store, s.id, turn)
    if summary is None:  # closed before a queued message ran
        return TurnReply(**base, turn_status="interrupted", reason="the session closed first", next_step=next_step(s))
    return TurnReply(
        **base,
        turn_status=summary.status,
        output=summary.output,
        exit_code=summary.exit_code,
        duration_s=summary.duration_s,
        output_bytes=summary.output_bytes,
        output_cut_bytes=summary.output_cut_bytes,
        reason=summary.reason,
        usage=summary.usage,
        next_step=next_step(s),
    )


async def event_batch(store: Store, session_id: str, after: int | None) -> tuple[list[Event], str | None]:
    """The events after `after` (none if None), their output text bounded, and a note if more follow."""
    if after is None:
        return [], None
    events = await store.events(session_id, after=after, limit=MAX_EVENTS_PER_READ)
    note = None
    budget = MAX_EVENT_TEXT
    kept: list[Event] = []
    for event in events:
        text = event.data.get("text")
        if isinstance(text, str):
            if budget <= 0:
                note = (
                    f"Stopped at event {kept[-1].seq if kept else after} to keep this reply short; "
                    "call again with the new events_after for more, or read the transcript resource."
                )
                break
            if len(text) > budget:
                event = event.model_copy(update={"data": {**event.data, "text": text[:budget] + "…[cut]"}})
            budget -= len(text)
        kept.append(event)
    if note is None and len(events) == MAX_EVENTS_PER_READ:
        note = "More events follow; call again with the new events_after."
    return kept, note
