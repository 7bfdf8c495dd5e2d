"""An agent as a third-party package would add one: one module, one entry point (`mcp_sessions.agents`).

It answers each message with the message, after an optional prefix, and uses each seam an agent has:
server settings (`--echo-greeting`), create options (`prefix` of its own, `system_prompt` shared with the
llm agent), a check at create (`configure`), and a step that prepares the sandbox (`prepare`: it writes
the greeting into the workspace, which every turn then reads back from the sandbox).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mcp_sessions.agents.base import AgentContext, AgentPlugin, PrepareContext, TurnContext, TurnOutcome
from mcp_sessions.models import TextBlock

GREETING_FILE = ".echo-greeting"


class EchoSettings(BaseModel):
    echo_greeting: str = Field("hello from the echo agent", max_length=200, description="What the echo agent says first.")


class EchoOptions(BaseModel):
    prefix: str | None = Field(None, max_length=20, description="put before every reply")
    system_prompt: str | None = Field(None, max_length=100_000, description="said once, before the first reply")


class EchoAgent:
    name = "echo"

    def __init__(self, settings: EchoSettings) -> None:
        self.settings = settings

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if "\n" in options.get("prefix", ""):
            raise ValueError("The echo agent's prefix must be one line.")
        return model, options

    async def prepare(self, ctx: PrepareContext) -> None:
        await ctx.detail("writing the greeting")
        await ctx.sandbox.write_file(GREETING_FILE, self.settings.echo_greeting.encode())

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        greeting = (await ctx.sandbox.read_file(GREETING_FILE, 1000)).decode()
        lines = [greeting] if ctx.session.turns == 1 else []
        if ctx.session.turns == 1 and ctx.options.get("system_prompt"):
            lines.append(ctx.options["system_prompt"])
        lines.append(ctx.options.get("prefix", "") + text)
        answer = "\n".join(lines)
        await ctx.emit("text.delta", {"text": answer})
        return TurnOutcome(status="completed", content=[TextBlock(text=answer)], output=answer, output_bytes=len(answer.encode()))


def make(settings: Any, context: AgentContext) -> EchoAgent:
    return EchoAgent(settings)


plugin = AgentPlugin(
    name="echo",
    make=make,
    summary="answers each message with the message (a test plugin)",
    settings=EchoSettings,
    options=EchoOptions,
)
