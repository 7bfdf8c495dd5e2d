"""A session's conversation as plain text for people and models to read."""

from __future__ import annotations

from .images import placeholder
from .models import Event, Message, Session, TextBlock, ToolResultBlock, ToolUseBlock


def _outcome(event: Event) -> str:
    status = event.type.removeprefix("turn.")
    parts = [status]
    if event.data.get("exit_code") is not None:
        parts.append(f"exit code {event.data['exit_code']}")
    if event.data.get("duration_s") is not None:
        parts.append(f"{event.data['duration_s']:.3f} s")
    if event.data.get("reason"):
        parts.append(str(event.data["reason"]))
    return f"[turn {event.data.get('turn')} {', '.join(parts)}]"


def render_transcript(session: Session, messages: list[Message], turn_ends: list[Event]) -> str:
    title = f" {session.title!r}" if session.title else ""
    lines = [f"# Session {session.id}{title}: {session.agent} agent on {session.driver}, status {session.status}"]
    if session.failure_reason:
        lines.append(f"# failed: {session.failure_reason}")
    ends = {e.data.get("turn"): e for e in turn_ends}
    for i, message in enumerate(messages):
        stamp = message.created_at.isoformat(timespec="seconds")
        undone = ", undone by a restore" if message.undone else ""
        lines.append(f"\n## {message.role} (turn {message.turn}, {stamp}{undone})")
        for block in message.content:
            if isinstance(block, TextBlock):
                lines.append(block.text.rstrip("\n") if block.text else "(no output)")
            elif isinstance(block, ToolUseBlock):
                lines.append(f"[tool call {block.name} {block.input}]")
            elif isinstance(block, ToolResultBlock):
                lines.append(f"[tool result{' (error)' if block.is_error else ''}] {block.content}")
            else:
                lines.append(placeholder(block))  # the data is for the agent's model, not for a reader
        last_of_turn = i + 1 == len(messages) or messages[i + 1].turn != message.turn
        if last_of_turn and message.turn in ends:
            lines.append(_outcome(ends[message.turn]))
    return "\n".join(lines) + "\n"
