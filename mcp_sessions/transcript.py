"""A session's conversation as plain text for people and models to read."""

from __future__ import annotations

from .models import Message, Session, TextBlock, ToolResultBlock, ToolUseBlock


def render_transcript(session: Session, messages: list[Message]) -> str:
    title = f" {session.title!r}" if session.title else ""
    lines = [f"# Session {session.id}{title}: {session.agent} agent on {session.driver}, status {session.status}"]
    if session.failure_reason:
        lines.append(f"# failed: {session.failure_reason}")
    turns = {session.last_turn.turn: session.last_turn} if session.last_turn else {}
    for message in messages:
        stamp = message.created_at.isoformat(timespec="seconds")
        lines.append(f"\n## {message.role} (turn {message.turn}, {stamp})")
        for block in message.content:
            if isinstance(block, TextBlock):
                lines.append(block.text.rstrip("\n") if block.text else "(no output)")
            elif isinstance(block, ToolUseBlock):
                lines.append(f"[tool call {block.name} {block.input}]")
            elif isinstance(block, ToolResultBlock):
                lines.append(f"[tool result{' (error)' if block.is_error else ''}] {block.content}")
            else:
                lines.append(f"[image {block.media_type}]")
        summary = turns.get(message.turn)
        if message.role == "assistant" and summary is not None and summary.status != "completed":
            lines.append(f"[turn {summary.status}: {summary.reason}]")
    return "\n".join(lines) + "\n"
