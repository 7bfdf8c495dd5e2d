"""The session lifecycle in one place: the statuses, the moves allowed between them, and the events each
move writes. No other module sets a session's status (a test checks).

    creating -> ready <-> busy        ready <-> paused        any live status -> failed | dead        failed -> dead

Each function changes a record in place, inside a store update (`Store.update`), and returns the events
to write with it, so a status and the events that announce it are stored together or not at all.
Functions that find the move already made, or no longer possible (the session ended meanwhile), change
nothing and return no events: callers racing another process need no checks of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .images import decoded_size
from .models import ImageBlock, Message, Phase, SessionRecord, Status, TextBlock, TurnSummary, now
from .store import EventSpec

MOVES: dict[Status, frozenset[Status]] = {
    "creating": frozenset({"ready", "failed", "dead"}),
    "ready": frozenset({"busy", "paused", "failed", "dead"}),
    "busy": frozenset({"ready", "failed", "dead"}),
    "paused": frozenset({"ready", "failed", "dead"}),
    "failed": frozenset({"dead"}),
    "dead": frozenset(),
}
"""Where each status may go. `failed -> dead`: closing a failed session frees what is left of it."""


class IllegalMove(Exception):
    """A move the lifecycle does not allow: a bug in the caller, never the user's doing."""


def _move(record: SessionRecord, to: Status) -> EventSpec:
    s = record.session
    if to not in MOVES[s.status]:
        raise IllegalMove(f"session {s.id} cannot go from {s.status} to {to}")
    s.status = to
    if to in ("failed", "dead"):
        s.finished_at = s.finished_at or now()
    return ("status", {"status": to})


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- creating -------------------------------------------------------------------------------------


def set_phase(record: SessionRecord, phase: Phase, detail: str | None = None) -> list[EventSpec]:
    """Report a step of bring-up; nothing if the session is no longer being created."""
    s = record.session
    if s.status != "creating":
        return []
    s.phase, s.phase_detail = phase, detail
    return [("phase", {"phase": phase, "detail": detail})]


def become_ready(record: SessionRecord, sandbox_id: str, describe: dict[str, Any], workspace: str) -> list[EventSpec]:
    """The sandbox is up: the session takes messages. If it failed or was closed meanwhile, only the sandbox
    is recorded (so that it can be freed) and no event is written."""
    s = record.session
    record.sandbox_id = sandbox_id
    if s.status != "creating":
        return []
    record.lease = None
    s.phase, s.phase_detail = "ready", None
    s.started_at = s.last_activity_at = now()
    s.sandbox, s.workspace = describe, workspace
    if s.image is None and isinstance(describe.get("image"), str):
        s.image = str(describe["image"])  # the driver's default
    return [("phase", {"phase": "ready"}), _move(record, "ready")]


# -- turns ----------------------------------------------------------------------------------------


def start_turn(
    record: SessionRecord, text: str, lease: str, messages: list[Message], images: Sequence[ImageBlock] = ()
) -> list[EventSpec]:
    """Mark the next turn as running and add its user message (its text, then its images) to `messages`. The
    caller has checked that the session takes messages (`ready`, or `busy` ending a turn with a queued message next)."""
    s = record.session
    s.turns += 1
    s.last_activity_at = now()
    s.preview = s.preview or shorten(text, 200)
    s.last_turn = TurnSummary(turn=s.turns, status="running", started_at=now())
    record.lease, record.interrupt_requested = lease, False
    messages.append(Message(role="user", content=[TextBlock(text=text), *images], turn=s.turns))
    started: dict[str, Any] = {"turn": s.turns, "text": shorten(text, 2000)}
    if images:
        started["images"] = [{"media_type": i.media_type, "bytes": decoded_size(i.data)} for i in images]
    events: list[EventSpec] = [("turn.started", started)]
    if s.status != "busy":
        events.append(_move(record, "busy"))
    return events


def skip_turn(record: SessionRecord, text: str, reason: str, messages: list[Message], at: datetime) -> list[EventSpec]:
    """A queued message that was cancelled takes its turn number and ends at once, interrupted, without
    running: the turns after it keep the numbers their callers were given."""
    s = record.session
    s.turns += 1
    messages.append(Message(role="user", content=[TextBlock(text=text)], turn=s.turns))
    s.last_turn = TurnSummary(turn=s.turns, status="interrupted", started_at=at, finished_at=at, duration_s=0.0, reason=reason)
    end = {"turn": s.turns, "exit_code": None, "duration_s": 0.0, "output_bytes": 0, "reason": reason}
    return [("turn.started", {"turn": s.turns, "text": shorten(text, 2000)}), ("turn.interrupted", end)]


def turn_ended(record: SessionRecord, finished: datetime) -> list[EventSpec]:
    """A turn ended with no queued message next: a busy session is ready again. Nothing for a session that
    failed or was closed while the turn ran (its status says so already)."""
    s = record.session
    record.lease, record.interrupt_requested = None, False
    s.last_activity_at = finished
    if s.status != "busy":
        return []
    return [_move(record, "ready")]


# -- pausing --------------------------------------------------------------------------------------
#
# ready -> paused (phase "pausing", this process's lease) -> phase "paused" once the sandbox has stopped;
# then phase "resuming" (a lease again) -> ready. The lease tells a dead server's half-done move (session_core).


def pause(record: SessionRecord, lease: str) -> list[EventSpec]:
    """A ready session starts pausing. Nothing if it is not ready."""
    s = record.session
    if s.status != "ready":
        return []
    record.lease = lease
    s.phase, s.phase_detail = "pausing", None
    s.paused_at = now()
    return [("phase", {"phase": "pausing"}), _move(record, "paused")]


def set_paused_phase(record: SessionRecord, phase: Phase, saved: str | None = None, detail: str | None = None) -> list[EventSpec]:
    """A paused session's step: "paused" (its sandbox stopped, `saved` what brings it back), or "resuming"."""
    s = record.session
    if s.status != "paused":
        return []
    if phase == "paused":
        record.lease, record.paused_state = None, saved if saved is not None else record.paused_state
    s.phase, s.phase_detail = phase, detail
    return [("phase", {"phase": phase, "detail": detail})]


def resumed(record: SessionRecord) -> list[EventSpec]:
    """A paused session's sandbox is back: it takes messages again. Nothing if it ended meanwhile."""
    s = record.session
    if s.status != "paused":
        return []
    record.lease, record.paused_state = None, None
    s.phase, s.phase_detail, s.paused_at = "ready", None, None
    s.last_activity_at = now()
    return [("phase", {"phase": "ready"}), _move(record, "ready")]


# -- ending ---------------------------------------------------------------------------------------


def fail(record: SessionRecord, reason: str) -> list[EventSpec]:
    """The session cannot go on: `reason` in words a user can act on. Nothing if it has ended already."""
    s = record.session
    if s.status in ("failed", "dead"):
        return []
    if s.status != "busy":  # a running turn keeps its lease: its owner still has to record how it ended
        record.lease = None
    s.failure_reason = reason
    return [("session.failed", {"reason": reason}), _move(record, "failed")]


def close(record: SessionRecord, reason: str, **data: Any) -> list[EventSpec]:
    """Close the session (`reason`: "closed", "idle timeout", or why a platform ended it). Nothing if dead."""
    s = record.session
    if s.status == "dead":
        return []
    record.lease = None
    s.close_reason = reason
    return [("session.closed", {"reason": reason, **data}), _move(record, "dead")]


# -- mirrored sessions ----------------------------------------------------------------------------


def mirror_status(record: SessionRecord, to: Status, reason: str | None, finished: datetime | None) -> list[EventSpec]:
    """Follow the status a platform reports for a session it runs (a mirrored one): busy while it runs, then
    dead or failed with the platform's reason. Nothing if it is already there."""
    s = record.session
    if to == s.status:
        if to == "failed" and reason:
            s.failure_reason = reason
        return []
    if to == "failed":
        s.finished_at = finished or now()
        return fail(record, reason or "failed")
    if to == "dead":
        s.finished_at = finished or now()
        return close(record, reason or "ended")
    if to not in MOVES[s.status]:  # an ended session stays ended here, whatever the platform says later
        return []
    return [_move(record, to)]
