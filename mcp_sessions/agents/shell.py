"""The `shell` agent: a message is a bash script, run in the session's shell; the reply is its output."""

from __future__ import annotations

import secrets

from ..models import TextBlock, TurnStatus
from .base import AgentPlugin, TurnContext, TurnOutcome


class ShellAgent:
    name = "shell"

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        call_id = "call_" + secrets.token_hex(6)
        await ctx.emit("tool.started", {"id": call_id, "tool": "bash", "input": {"command": text[:2000]}})
        result = await ctx.sandbox.exec(
            text, timeout_s=ctx.command_timeout_s, on_output=ctx.output, max_output_bytes=ctx.max_output_bytes
        )
        await ctx.emit(
            "tool.completed",
            {"id": call_id, "tool": "bash", "exit_code": result.exit_code, "duration_s": result.duration_s},
        )
        status: TurnStatus
        reason: str | None
        if result.timed_out:
            status, reason = "failed", f"the command ran past its {ctx.command_timeout_s:g} s timeout and was stopped"
        elif result.failure:
            status, reason = "failed", result.failure
        elif result.interrupted:
            status, reason = "interrupted", "interrupted by the caller"
        else:
            status, reason = "completed", None
        return TurnOutcome(
            status=status,
            content=[TextBlock(text=result.output)],
            exit_code=result.exit_code,
            duration_s=result.duration_s,
            output=result.output,
            output_bytes=result.output_bytes,
            output_cut_bytes=result.cut_bytes,
            reason=reason,
        )


plugin = AgentPlugin(
    name="shell",
    make=lambda settings, context: ShellAgent(),
    summary="runs each message as a bash script in the session's persistent shell",
)
