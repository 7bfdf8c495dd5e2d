"""What every CLI agent shares: its pinned binary (checked at create, mounted into the sandbox), and per
session what this server holds for it: the model proxy and the door, served into its sandbox for as long
as the sandbox lives, and the CLI process joined through the door (for CLIs that run long). CLIs run once
per message (codex, opencode) share the turn itself: one command of the session's shell, its JSON lines
read as they come (`TurnLines`), its outcome told the same way (`CliAgent.exec_turn`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from pydantic import BaseModel, Field, SecretStr

from sandbox_backends.base import Sandbox, SandboxError

from ...models import ContentBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from ..base import TurnContext, TurnOutcome
from ..pricing import PriceTable
from . import binaries
from .link import Door, Link
from .proxy import ModelProxy, ProxyTurn, Upstream
from .sampled import cannot_sample
from .streams import serve

log = logging.getLogger(__name__)

SHOWN_INPUT_CHARS = 2000
"""Most of a tool call's string input shown in its `tool.started` event (the transcript keeps it whole)."""


IMAGES = "images"
"""The folder of a turn's images in a CLI's state folder (CliAgent.write_images)."""
REFUSED_EXIT_S = 10.0
"""How long a CLI has to end its turn after the proxy refused one of its requests (it is told why, in the
API's words, and normally says so and ends it at once) before it is stopped: the command of a CLI run once
per message, or the turn of Claude Code's long-lived process, interrupted."""


class CliSettings(BaseModel):
    """The server settings of every CLI agent (one section, shared by their plugins)."""

    cli_agents_dir: Path = Field(
        default_factory=binaries.default_dir,
        description="Folder of the coding-agent CLIs' binaries, filled by scripts/install-cli-agents.sh.",
    )
    claude_code_model: str | None = Field(None, description="Default model of the claude-code agent (else Claude Code's own).")
    claude_code_base_url: str = Field(
        "https://api.anthropic.com",
        description="Anthropic Messages API the claude-code agent's model proxy forwards to (Anthropic, a LiteLLM proxy).",
        json_schema_extra={"env": "ANTHROPIC_BASE_URL"},
    )
    claude_code_api_key: SecretStr | None = Field(
        None,
        description="Key the model proxy adds to the claude-code agent's requests (the sandbox never sees it).",
        json_schema_extra={"env": "ANTHROPIC_API_KEY"},
    )
    codex_model: str | None = Field(None, description="Default model of the codex agent (else Codex's own).")
    codex_base_url: str = Field(
        "https://api.openai.com/v1",
        description="OpenAI Responses API the codex agent's model proxy forwards to (OpenAI, a LiteLLM proxy).",
        json_schema_extra={"env": "OPENAI_BASE_URL"},
    )
    codex_api_key: SecretStr | None = Field(
        None,
        description="Key the model proxy adds to the codex agent's requests (the sandbox never sees it).",
        json_schema_extra={"env": "OPENAI_API_KEY"},
    )
    opencode_model: str | None = Field(
        None, description="Default model of the opencode agent (a model name of its upstream; one is needed, here or at create)."
    )
    opencode_base_url: str = Field(
        "https://api.openai.com/v1",
        description="OpenAI-compatible Chat Completions API the opencode agent's model proxy forwards to (OpenAI, a LiteLLM proxy).",
        json_schema_extra={"env": "OPENAI_BASE_URL"},
    )
    opencode_api_key: SecretStr | None = Field(
        None,
        description="Key the model proxy adds to the opencode agent's requests (the sandbox never sees it).",
        json_schema_extra={"env": "OPENAI_API_KEY"},
    )


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@dataclass
class Running:
    """What this server holds for one session: its proxy and door, and its CLI process while one is joined."""

    proxy: ModelProxy
    door: Door = field(default_factory=Door)
    sandbox: Sandbox | None = None
    proxy_at: str = ""
    door_at: str = ""
    link: Link | None = None
    last_turn: int = 0
    """The session's turn the process last answered: one that is not the turn before this one means another
    server process ran turns meanwhile, which this process's CLI has not seen."""


def check_args(args: list[str], allowed: tuple[str, ...]) -> list[str]:
    """The flags as given, if each is `allowed` and has its value (`--flag value` or `--flag=value`). Raises
    ValueError naming the first that is not."""
    i = 0
    while i < len(args):
        flag, eq, _ = args[i].partition("=")
        if flag not in allowed:
            raise ValueError(f"cli_args: {args[i][:100]!r} is not allowed; use {', '.join(allowed)}")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"cli_args: {flag} needs a value after it")
            i += 1
        i += 1
    return args


class TurnLines:
    """Reads the JSON lines a CLI prints during one turn, as they come, into events and the turn's messages
    (in `ctx.messages`). Subclasses handle each line (`event`) and say whether the turn reached its end
    (`completed`) or why it failed (`failure`)."""

    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self.completed = False
        self.failure: str | None = None
        self._buf = b""

    async def feed(self, chunk: bytes) -> None:
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                await self.event(event)

    async def event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def tool_started(self, call_id: str, tool: str, args: dict[str, Any]) -> None:
        """A tool call begins: its event (long inputs cut), and its `tool_use` block in the transcript."""
        shown = {k: (v[:SHOWN_INPUT_CHARS] if isinstance(v, str) else v) for k, v in args.items()}
        await self.ctx.emit("tool.started", {"id": call_id, "tool": tool, "input": shown})
        use = ToolUseBlock(id=call_id, name=tool, input=args)
        self.ctx.messages.append(Message(role="assistant", content=[use], turn=self.ctx.session.turns))

    async def tool_completed(self, call_id: str, tool: str, output: str, is_error: bool, exit_code: Any = None) -> None:
        """A tool call ends: its output (as `tool.output`), its event, its `tool_result` block in the transcript."""
        if output:
            await self.ctx.output((output if output.endswith("\n") else output + "\n").encode())
        done: dict[str, Any] = {"id": call_id, "tool": tool, "is_error": is_error}
        if exit_code is not None:
            done["exit_code"] = exit_code
        await self.ctx.emit("tool.completed", done)
        result = ToolResultBlock(tool_use_id=call_id, content=output, is_error=is_error)
        self.ctx.messages.append(Message(role="tool", content=[result], turn=self.ctx.session.turns))

    def outcome(self, status: str, reason: str | None, duration_s: float) -> TurnOutcome:
        """The reply is the CLI's last text."""
        return outcome(self.ctx, status, reason, duration_s)


class CliAgent:
    """A CLI agent's common part. Subclasses set `name` (also the binary's in `binaries.PINNED`), `mount`
    (the binary's name in the sandbox, at `$MCP_SESSIONS_MOUNTS/<mount>`), and, if run once per message,
    `label` (its name in sentences) and `log` (its log, relative to the workspace)."""

    name: str
    mount: str
    api: tuple[str, str, str]
    """The provider with a key, the model API it speaks, and the variable of that key: what `provider`
    refusals name (for agents whose options take `provider`)."""
    label: str = ""
    log: str = ""

    def __init__(self, folder: Path, upstream: Upstream, default_model: str | None, prices: PriceTable) -> None:
        self.folder = folder
        self.upstream = upstream
        self.default_model = default_model
        self.prices = prices
        self._running: dict[str, Running] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        binaries.binary(self.folder, self.name)  # a missing binary fails create_session now
        provider = options.get("provider")
        if provider is not None and provider not in (self.api[0], "sampling"):
            raise ValueError(
                f"The {self.name} agent speaks {self.api[1]}: pass provider='{self.api[0]}' (the server's "
                f"{self.api[2]}, the default) or 'sampling' (the caller's own model, through MCP sampling)."
            )
        return model or self.default_model, {k: v for k, v in options.items() if v is not None}

    def cannot_ask(self, options: dict[str, Any], sampler: Any) -> str | None:
        """Why a message sent with `sampler` cannot run here (the session samples, the sender cannot be), or None."""
        return cannot_sample(sampler, self.api[0], self.api[2]) if options.get("provider") == "sampling" else None

    def proxy_turn(self, ctx: TurnContext) -> ProxyTurn:
        """What the session's proxy serves a turn with: its usage, budgets and, if it samples, the sender's model."""
        sampling = ctx.options.get("provider") == "sampling"
        return ProxyTurn(ctx.usage, ctx.over_budget, sampling=sampling, sampler=ctx.sampler, emit=ctx.emit)

    def host_files(self, options: dict[str, Any]) -> dict[str, str]:
        return {self.mount: str(binaries.binary(self.folder, self.name))}

    async def run_background(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client, anyio.create_task_group() as tg:
            self._client, self._tg = client, tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                for running in self._running.values():
                    if running.link is not None:
                        await running.link.close()

    def _http(self) -> httpx.AsyncClient:
        assert self._client is not None, "run_background runs for the server's life"
        return self._client

    async def served(self, ctx: TurnContext) -> Running:
        """The session's proxy and door, served into its sandbox (again, if the sandbox is new to them)."""
        sid = ctx.session.id
        running = self._running.get(sid)
        if running is None:
            running = self._running[sid] = Running(ModelProxy(self.upstream, self.prices, self._http))
        if running.sandbox is not ctx.sandbox:
            if self._tg is None:
                raise SandboxError(f"The {self.name} agent is not serving (its server part has not started).")
            running.proxy_at, running.door_at = await self._tg.start(self._serve, sid, running, ctx.sandbox)
        return running

    async def _serve(
        self,
        sid: str,
        running: Running,
        sandbox: Sandbox,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, str]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the session's proxy and door into its sandbox until the sandbox closes (the session closed: what
        this server held for it goes) or the server stops."""
        refused: SandboxError | None = None
        try:
            async with anyio.create_task_group() as tg:
                try:
                    addresses = (await serve(sandbox, running.proxy.handle, tg), await serve(sandbox, running.door.handle, tg))
                except SandboxError as e:  # its driver cannot serve there: raised whole, not in an ExceptionGroup
                    refused = e
                    tg.cancel_scope.cancel()
                else:
                    task_status.started(addresses)
                    running.sandbox = sandbox
            if refused is not None:
                raise refused
        finally:
            if running.sandbox is sandbox:
                running.sandbox = None
                if running.link is not None:
                    with anyio.CancelScope(shield=True):
                        await running.link.close()
                if self._running.get(sid) is running:
                    del self._running[sid]

    async def exec_turn(self, ctx: TurnContext, running: Running, script: str, reader: TurnLines) -> TurnOutcome:
        """One turn as one command of the session's shell (so `interrupt` stops it as it stops any command), its
        model requests counted into the turn by the proxy, its output read by `reader` as it comes."""
        started = time.monotonic()
        turn = self.proxy_turn(ctx)
        running.proxy.turn = turn
        result = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stop_if_refused, turn, tg.cancel_scope)
                result = await ctx.sandbox.exec(
                    script, timeout_s=ctx.command_timeout_s, on_output=reader.feed, max_output_bytes=4096
                )
                tg.cancel_scope.cancel()
        finally:
            running.proxy.turn = None
        duration = time.monotonic() - started
        if result is None:
            stopped = f"{self.label} did not exit within {REFUSED_EXIT_S:g} s of being refused, and was stopped"
            log.warning("%s in session %s: %s", stopped, ctx.session.id, turn.refused)
            return reader.outcome("failed", f"{turn.refused} ({stopped})", duration)
        if result.interrupted:
            return reader.outcome("interrupted", "interrupted by the caller", duration)
        if turn.refused is not None:
            return reader.outcome("failed", turn.refused, duration)
        if result.timed_out:
            return reader.outcome(
                "failed", f"{self.label} ran past the {ctx.command_timeout_s:g} s command timeout and was stopped", duration
            )
        if not reader.completed:
            said = reader.failure or f"it exited with code {result.exit_code}; its log: {await self.log_tail(ctx, self.log)}"
            return reader.outcome("failed", f"{self.label} did not complete the turn: {said}", duration)
        return reader.outcome("completed", None, duration)

    @staticmethod
    async def _stop_if_refused(turn: ProxyTurn, command: anyio.CancelScope) -> None:
        """Stop the turn's command (cancelling its exec stops it in the sandbox) if the CLI has not exited
        `REFUSED_EXIT_S` after the proxy refused a request: OpenCode, told its budget is reached, at times
        takes the refusal for a passing error and asks again and again, backing off, never exiting."""
        await turn.refusal.wait()
        await anyio.sleep(REFUSED_EXIT_S)
        command.cancel()

    @staticmethod
    async def write_images(ctx: TurnContext, state_dir: str) -> list[str]:
        """Write the turn's images where the CLI reads them (its `--image` or `--file`): a folder of this turn
        under `state_dir/IMAGES`, not among the user's files; the turn's command removes it when it ends (or,
        if it was stopped, the next one's). Their paths, relative to `state_dir`."""
        paths = []
        for n, image in enumerate(ctx.images, 1):
            path = f"{IMAGES}/turn-{ctx.session.turns}/{n}.{image.media_type.removeprefix('image/')}"
            await ctx.sandbox.write_file(f"{state_dir}/{path}", base64.b64decode(image.data))
            paths.append(path)
        return paths

    async def log_tail(self, ctx: TurnContext, path: str) -> str:
        """The end of the CLI's log in the workspace, for a failure's reason."""
        try:
            text = (await ctx.sandbox.read_file(path, ctx.max_file_bytes)).decode(errors="replace")
        except (OSError, SandboxError):
            return "(no log)"
        return text.strip()[-800:] or "(empty)"


def outcome(ctx: TurnContext, status: str, reason: str | None, duration_s: float, answer: str | None = None) -> TurnOutcome:
    """A CLI turn's outcome: the reply is `answer` (the CLI's final text), else its last text this turn; the
    messages are the turn's; the usage is what the proxy counted."""
    if answer is None:
        last = next((m for m in reversed(ctx.messages) if m.role == "assistant" and m.text()), None)
        answer = last.text() if last is not None else ""
    content: list[ContentBlock] = [TextBlock(text=answer)] if answer else []
    return TurnOutcome(
        status=status,  # type: ignore[arg-type]
        content=content,
        duration_s=duration_s,
        output=answer,
        output_bytes=len(answer.encode()),
        reason=reason,
        usage=ctx.usage,
        messages=ctx.messages,
    )
