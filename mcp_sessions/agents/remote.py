"""The `remote` agent: a remote platform's own agent. It forwards each message to the remote session (the
session's sandbox, made by the `remote` driver) and maps what the remote reports into this server's events,
reply, transcript and usage."""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import TypeAdapter, ValidationError

from sandbox_backends.base import MessageSandbox, SandboxError

from ..models import ContentBlock, Message, TextBlock, TurnStatus, Usage
from .base import AgentPlugin, TurnContext, TurnOutcome
from .pricing import PriceTable
from .providers.common import TokenUsage

_blocks = TypeAdapter(list[ContentBlock])


def _content(raw: Any) -> list[ContentBlock]:
    try:
        return _blocks.validate_python(raw or [])
    except ValidationError:
        return [TextBlock(text=str(raw))]


class RemoteAgent:
    name = "remote"

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices
        """Prices the usage of remotes that report tokens and the model but no cost."""

    def _priced(self, usage: Usage, model: Any) -> Usage:
        if usage.cost_usd or not model or self.prices is None:
            return usage
        tokens = TokenUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_creation_tokens)
        cost = self.prices.cost(str(model), tokens)
        return usage.model_copy(update={"cost_usd": cost, "cost_by_model": {str(model): cost}}) if cost else usage

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        if not isinstance(ctx.sandbox, MessageSandbox):
            return TurnOutcome(
                status="failed",
                content=[],
                reason="The remote agent works only with driver='remote'; this sandbox cannot answer messages.",
            )
        turn = ctx.session.turns
        try:
            async for event in ctx.sandbox.send(text):
                kind = event["kind"]
                if kind == "text":
                    await ctx.emit("text.delta", {"text": event["text"]})
                elif kind == "output":
                    await ctx.output(event["text"].encode())
                elif kind in ("tool.started", "tool.completed"):
                    await ctx.emit(kind, event["data"])
                elif kind == "end":
                    usage = self._priced(Usage.model_validate(event.get("usage") or {}), event.get("model"))
                    messages = [
                        Message(role=m["role"], content=_content(m["content"]), turn=turn)
                        for m in event.get("messages") or []
                        if m.get("role") in ("assistant", "tool", "system")
                    ]
                    content = _content(event.get("content"))
                    output = event.get("output") or "".join(b.text for b in content if isinstance(b, TextBlock))
                    status: TurnStatus = (
                        event["status"] if event["status"] in ("completed", "failed", "interrupted") else "failed"
                    )
                    reason = event.get("reason")
                    if status != "completed" and reason:
                        reason = f"on the remote: {reason}"
                    return TurnOutcome(
                        status=status,
                        content=content,
                        exit_code=event.get("exit_code"),
                        output=output,
                        output_bytes=len(output.encode()),
                        reason=reason,
                        usage=usage,
                        messages=messages or None,
                    )
        except SandboxError as e:  # returned, not raised: the turn fails with the reason, the session goes on
            return TurnOutcome(status="failed", content=[], reason=str(e))  # (a gone remote also failed the session)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):  # stop the remote turn too
                try:
                    await ctx.sandbox.interrupt()
                except SandboxError:
                    pass
            raise
        return TurnOutcome(status="failed", content=[], reason="the remote's event stream ended before the turn did")


plugin = AgentPlugin(
    name="remote",
    make=lambda settings, context: RemoteAgent(context.prices),
    summary="a remote platform's own agent (driver='remote' only)",
)
