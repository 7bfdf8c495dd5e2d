"""One turn of Claude Code's stream-json output, read into the session's events, transcript and reply.

What it prints (one JSON object a line): `system` (init at each turn), `stream_event` (the API's own
stream: text deltas), `assistant` (a message's content blocks: text, tool_use; one event per block, same
message id), `user` (tool_result blocks, and notes such as an interrupt), `result` (the turn's end:
subtype success or error_*, the final text), `control_request` (with permission_mode "ask": may a tool run?).
Usage is not read from here: the model proxy counted it.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from ...models import ContentBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from ..base import TurnContext, TurnOutcome
from . import approvals
from .base import SHOWN_INPUT_CHARS, outcome
from .link import Link

TEXT_FLUSH_CHARS = 400
TEXT_FLUSH_S = 0.2


class TurnReader:
    """Reads a turn's lines, emitting events and keeping the turn's messages in `ctx.messages`."""

    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self._pending: list[str] = []
        self._flushed_at = anyio.current_time()
        self._streamed: set[str] = set()
        """Message ids whose text came as deltas (their `assistant` event repeats it)."""
        self._message_id: str | None = None
        self._tools: dict[str, str] = {}
        self.lines = 0
        """Lines read so far this turn."""
        self._open: tuple[str, Message] | None = None
        """The assistant message its next blocks join: the CLI prints one `assistant` event per block."""

    async def until_result(self, link: Link) -> dict[str, Any]:
        """Handle lines until the turn's `result`, which is returned. Raises LinkClosed."""
        try:
            while True:
                line = await link.receive()
                self.lines += 1
                kind = line.get("type")
                if kind == "result":
                    return line
                if kind == "stream_event":
                    await self._delta(line.get("event"))
                elif kind == "assistant":
                    await self._assistant(line.get("message"))
                elif kind == "user":
                    await self._tool_results(line.get("message"))
                elif kind == "control_request":
                    await self._permission(link, line)
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()

    async def _permission(self, link: Link, line: dict[str, Any]) -> None:
        """Answer the CLI's question whether a tool may run: the caller's answer (permission_mode "ask")."""
        request, request_id = line.get("request"), str(line.get("request_id"))
        if not isinstance(request, dict) or request.get("subtype") != "can_use_tool":
            return
        await self._flush()
        given = request.get("input")
        args: dict[str, Any] = given if isinstance(given, dict) else {}
        response = await approvals.ask(self.ctx, request_id, str(request.get("tool_name")), args)
        await link.send(
            {"type": "control_response", "response": {"subtype": "success", "request_id": request_id, "response": response}}
        )

    async def _delta(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._message_id = event["message"].get("id")
        delta = event.get("delta")
        if event.get("type") == "content_block_delta" and isinstance(delta, dict) and delta.get("type") == "text_delta":
            self._pending.append(str(delta.get("text", "")))
            if self._message_id:
                self._streamed.add(self._message_id)
            if sum(map(len, self._pending)) >= TEXT_FLUSH_CHARS or anyio.current_time() - self._flushed_at >= TEXT_FLUSH_S:
                await self._flush()

    async def _flush(self) -> None:
        self._flushed_at = anyio.current_time()
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            await self.ctx.emit("text.delta", {"text": text})

    async def _assistant(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            return
        await self._flush()
        mid = str(message.get("id") or "")
        blocks: list[ContentBlock] = []
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text"):
                blocks.append(TextBlock(text=str(block["text"])))
                if mid not in self._streamed:
                    await self.ctx.emit("text.delta", {"text": str(block["text"])})
            elif block.get("type") == "tool_use":
                given = block.get("input")
                args: dict[str, Any] = given if isinstance(given, dict) else {}
                use = ToolUseBlock(id=str(block.get("id")), name=str(block.get("name")), input=args)
                blocks.append(use)
                self._tools[use.id] = use.name
                shown = {k: (v[:SHOWN_INPUT_CHARS] if isinstance(v, str) else v) for k, v in args.items()}
                await self.ctx.emit("tool.started", {"id": use.id, "tool": use.name, "input": shown})
        if not blocks:
            return
        if self._open is not None and self._open[0] == mid:
            self._open[1].content.extend(blocks)
        else:
            added = Message(role="assistant", content=blocks, turn=self.ctx.session.turns)
            self._open = (mid, added)
            self.ctx.messages.append(added)

    async def _tool_results(self, message: Any) -> None:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return
        results = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            use_id = str(block.get("tool_use_id"))
            text = flatten(block.get("content"))
            is_error = bool(block.get("is_error"))
            results.append(ToolResultBlock(tool_use_id=use_id, content=text, is_error=is_error))
            if text:
                await self.ctx.output((text if text.endswith("\n") else text + "\n").encode())
            await self.ctx.emit("tool.completed", {"id": use_id, "tool": self._tools.get(use_id), "is_error": is_error})
        if results:
            self._open = None
            self.ctx.messages.append(Message(role="tool", content=list(results), turn=self.ctx.session.turns))

    def failure(self, result: dict[str, Any]) -> str:
        """Why the CLI says its turn failed, in a sentence."""
        said = result.get("result") or "; ".join(map(str, result.get("errors") or [])) or result.get("subtype")
        return f"Claude Code ended the turn with an error ({result.get('subtype')}): {str(said)[:1000]}"

    def outcome(self, status: str, reason: str | None, duration_s: float, result: dict[str, Any] | None = None) -> TurnOutcome:
        """The turn's outcome: the reply is the CLI's final text (else its last text)."""
        answer = result.get("result") if result is not None and isinstance(result.get("result"), str) else None
        return outcome(self.ctx, status, reason, duration_s, answer)


def flatten(content: Any) -> str:
    """A tool result's content as text: a string, or the text of its blocks (others shown by their type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type')}]")
        return "\n".join(parts)
    return "" if content is None else json.dumps(content)
