"""The `claude-code` agent: Claude Code, Anthropic's coding-agent CLI, runs in the session's sandbox.

One long-lived `claude -p --input-format stream-json --output-format stream-json` process per session: a
message is one JSON line on its stdin, and the turn is what it prints until its `result` (no start-up per
turn). Its stdin and stdout are a stream to the server (link.py); its model requests go to the session's
model proxy (proxy.py), which holds the key, counts usage into the turn and enforces budgets; it is given
only a placeholder key. Its state (HOME: settings, transcripts) is a folder in the workspace, so after a
server restart, or once an interrupt has stopped it, the next turn starts it again with `--resume`: the
conversation goes on. Its background traffic (telemetry, update checks, error reports) is switched off.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from typing import Any, Literal

import anyio
import anyio.abc
from pydantic import BaseModel, Field, field_validator

from sandbox_backends.base import SandboxError

from ..base import AgentContext, AgentPlugin, TurnContext, TurnOutcome
from ..providers.anthropic import image_block
from ..providers.common import PROVIDER_HELP, ProviderName
from .base import REFUSED_EXIT_S, CliAgent, CliSettings, Running, check_args
from .link import Link, LinkClosed
from .proxy import ANTHROPIC, PLACEHOLDER_KEY, ProxyTurn, Upstream
from .stream_json import TurnReader

log = logging.getLogger(__name__)

NAME = "claude-code"
STATE_DIR = ".mcp-sessions/claude-code"
"""The CLI's HOME and log, relative to the workspace (so they live as long as the session's files)."""
LOG = f"{STATE_DIR}/claude.log"
CONNECT_WAIT_S = 30.0
INTERRUPT_WAIT_S = 5.0
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "IS_SANDBOX": "1",  # the sandbox is the boundary: skipping permission prompts is allowed even as root
}
ARGS_WITH_VALUE = ("--max-turns", "--allowedTools", "--disallowedTools", "--append-system-prompt", "--effort", "--fallback-model")
"""The only flags a caller may add; each takes one value (`--flag value` or `--flag=value`)."""
SESSION_NAMESPACE = uuid.UUID("6f1c3a52-4be5-4a51-9a3e-0c1de2b8f0a7")


class ClaudeCodeOptions(BaseModel):
    provider: ProviderName | None = Field(None, description=PROVIDER_HELP)
    permission_mode: Literal["bypass", "ask"] | None = Field(
        None, description="ask: each tool call waits for answer_approval (default bypass)"
    )
    system_prompt: str | None = Field(None, max_length=100_000, description="replaces the default system prompt")
    cli_args: list[str] | None = Field(
        None, max_length=20, description=f"extra CLI flags with values, of: {' '.join(ARGS_WITH_VALUE)}"
    )

    @field_validator("cli_args")
    @classmethod
    def _allowed(cls, args: list[str] | None) -> list[str] | None:
        return check_args(args, ARGS_WITH_VALUE) if args is not None else None


def user_content(text: str, ctx: TurnContext) -> str | list[dict[str, Any]]:
    """The message as the CLI's stream-json input takes it: its text, or with images, content blocks as the
    Messages API's, which the CLI passes to the model as they are."""
    if not ctx.images:
        return text
    return [{"type": "text", "text": text}, *(image_block(image) for image in ctx.images)]


class ClaudeCodeAgent(CliAgent):
    name = NAME
    mount = "claude"
    api = ("anthropic", "the Anthropic Messages API", "ANTHROPIC_API_KEY")
    sees_images = True

    async def _joined(self, ctx: TurnContext) -> tuple[Running, Link]:
        """The session's proxy and door served into its sandbox, and its CLI process, launched if none is joined."""
        running = await self.served(ctx)
        if running.link is not None and running.last_turn != ctx.session.turns - 1:
            await running.link.close()  # it has not seen turns run elsewhere: resume them from its state
        if running.link is None or running.link.closed.is_set():
            running.link = await self._launch(ctx, running)
        return running, running.link

    async def _launch(self, ctx: TurnContext, running: Running) -> Link:
        """Start the CLI in the sandbox, resuming the session's conversation if it has one, and wait for it to join."""
        nonce, arrived = running.door.expect()
        host, _, port = running.door_at.rpartition(":")
        conversation = str(uuid.uuid5(SESSION_NAMESPACE, ctx.session.id))
        argv = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
        argv += ["--include-partial-messages"]
        if ctx.options.get("permission_mode") == "ask":
            argv += ["--permission-prompt-tool", "stdio"]
        else:
            argv += ["--dangerously-skip-permissions"]
        if ctx.session.model:
            argv += ["--model", ctx.session.model]
        if ctx.options.get("system_prompt"):
            argv += ["--system-prompt", ctx.options["system_prompt"]]
        argv += ctx.options.get("cli_args") or []
        env = {**QUIET_ENV, "ANTHROPIC_BASE_URL": f"http://{running.proxy_at}", "ANTHROPIC_API_KEY": PLACEHOLDER_KEY}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        join = (
            f'exec 3<>/dev/tcp/{host}/{port} || exit 1; printf "%s\\n" {nonce} >&3; '
            'exec "$0" "$@" <&3 >&3 2>>"$HOME/../claude.log" 3>&-'
        )
        script = f"""(
cd {shlex.quote(ctx.sandbox.workspace)} || exit 1
state={shlex.quote(ctx.sandbox.workspace)}/{STATE_DIR}
mkdir -p "$state/home" || exit 1
if compgen -G "$state/home/.claude/projects/*/{conversation}.jsonl" >/dev/null; then resume=--resume; else resume=--session-id; fi
export HOME="$state/home" {exports}
setsid -f bash -c {shlex.quote(join)} "$MCP_SESSIONS_MOUNTS/claude" {shlex.join(argv)} "$resume" {conversation} \\
  </dev/null >/dev/null 2>&1
)"""
        try:
            result = await ctx.sandbox.exec(script, timeout_s=CONNECT_WAIT_S, max_output_bytes=4096)
            if result.exit_code != 0:
                raise SandboxError(f"Claude Code could not be started in the sandbox: {result.output.strip()[-500:]}")
            with anyio.move_on_after(CONNECT_WAIT_S):
                return await arrived.receive()
            raise SandboxError(f"Claude Code did not start within {CONNECT_WAIT_S:g} s; its log: {await self.log_tail(ctx, LOG)}")
        finally:
            running.door.forget(nonce)
            arrived.close()

    # -- a turn ---------------------------------------------------------------------------------------

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        started = time.monotonic()
        turn = self.proxy_turn(ctx)
        reader = TurnReader(ctx)
        for attempt in (1, 2):
            running, link = await self._joined(ctx)
            running.proxy.turn = turn
            try:
                await link.send({"type": "user", "message": {"role": "user", "content": user_content(text, ctx)}})
                got = await self._result(reader, link, turn)
                if got is None:  # refused, and still going: stopped as an interrupt stops it
                    with anyio.CancelScope(shield=True):
                        await self._interrupt(running, link, reader)
                    running.last_turn = ctx.session.turns
                    stopped = (
                        f"Claude Code did not end its turn within {REFUSED_EXIT_S:g} s of being refused, and was interrupted"
                    )
                    log.warning("%s in session %s: %s", stopped, ctx.session.id, turn.refused)
                    return reader.outcome("failed", f"{turn.refused} ({stopped})", time.monotonic() - started)
                result = got
                running.last_turn = ctx.session.turns
                break
            except LinkClosed:
                running.link = None
                if attempt == 1 and not reader.lines:
                    continue  # it had exited between turns (an interrupt of the idle session stops it): start it again
                reason = f"Claude Code exited during the turn; its log: {await self.log_tail(ctx, LOG)}"
                return reader.outcome("failed", reason, time.monotonic() - started)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._interrupt(running, link, reader)
                    running.last_turn = ctx.session.turns
                raise
            finally:
                running.proxy.turn = None
        if turn.refused is not None:
            return reader.outcome("failed", turn.refused, time.monotonic() - started, result)
        if result.get("subtype") != "success" or result.get("is_error"):
            return reader.outcome("failed", reader.failure(result), time.monotonic() - started, result)
        return reader.outcome("completed", None, time.monotonic() - started, result)

    async def _result(self, reader: TurnReader, link: Link, turn: ProxyTurn) -> dict[str, Any] | None:
        """The turn's `result`; None if Claude Code goes on `REFUSED_EXIT_S` after the proxy refused one of its
        requests (told why, it normally ends the turn at once). Raises LinkClosed."""
        reading, watching = anyio.CancelScope(), anyio.CancelScope()

        async def expire() -> None:
            with watching:
                await turn.refusal.wait()
                reading.deadline = anyio.current_time() + REFUSED_EXIT_S

        assert self._tg is not None, "run_background runs for the server's life"
        self._tg.start_soon(expire)
        try:
            with reading:
                return await reader.until_result(link)
        finally:
            watching.cancel()
        return None

    async def _interrupt(self, running: Running, link: Link, reader: TurnReader) -> None:
        """Stop the CLI's turn, keeping the process: it answers an `interrupt` control request with the turn's
        `result`. A process that does not is closed (the next turn resumes the conversation in a new one)."""
        with anyio.move_on_after(INTERRUPT_WAIT_S) as waited:
            try:
                await link.send(
                    {"type": "control_request", "request_id": f"int_{uuid.uuid4().hex[:12]}", "request": {"subtype": "interrupt"}}
                )
                await reader.until_result(link)
                return
            except LinkClosed:
                pass
        if waited.cancelled_caught:
            log.warning("Claude Code did not stop its turn within %g s; its process is closed", INTERRUPT_WAIT_S)
        await link.close()
        running.link = None


def _make(settings: object, context: AgentContext) -> ClaudeCodeAgent:
    s = settings if isinstance(settings, CliSettings) else CliSettings()
    key = s.claude_code_api_key.get_secret_value() if s.claude_code_api_key else None
    return ClaudeCodeAgent(
        s.cli_agents_dir,
        Upstream(s.claude_code_base_url, key, ANTHROPIC, "ANTHROPIC_API_KEY (or MCP_SESSIONS_CLAUDE_CODE_API_KEY)"),
        s.claude_code_model,
        context.prices,
    )


plugin = AgentPlugin(
    name=NAME,
    make=_make,
    summary="Claude Code (the CLI) in the sandbox; the key stays in the server",
    settings=CliSettings,
    options=ClaudeCodeOptions,
)
