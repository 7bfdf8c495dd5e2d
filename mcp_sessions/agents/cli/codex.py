"""The `codex` agent: OpenAI's Codex CLI runs in the session's sandbox, one `codex exec --json` per message.

Its HOME is that folder too, so the login shells it runs read no profile of the server's user (on the local
driver). Its model requests go to the session's model proxy (OpenAI Responses: the only API Codex speaks), which
holds the key; it is given a placeholder. Its state (CODEX_HOME: config and the recorded conversation)
is a folder in the workspace, and every turn after the first is `codex exec resume --last`: the session's
only conversation, so the conversation goes on across turns, interrupts and server restarts. Each turn
is one command of the session's shell, so `interrupt` stops it as it stops any command. Its background
traffic (plugin syncs, analytics, metrics) is off. Headless `codex exec` asks no approvals (it has no way
to ask anyone: permission_mode "ask" is refused at create); its own sandbox is off (`danger-full-access`),
the session's sandbox is the boundary. A `system_prompt` replaces Codex's own instructions
(`model_instructions_file`); `cli_args` take a few flags, and `-c` only for the config keys listed.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from ...models import Message, TextBlock
from ..base import AgentContext, AgentPlugin, TurnContext, TurnOutcome
from ..providers.common import PROVIDER_HELP, ProviderName
from .base import IMAGES, CliAgent, CliSettings, TurnLines, check_args, secret
from .proxy import OPENAI, PLACEHOLDER_KEY, Upstream

NAME = "codex"
STATE_DIR = ".mcp-sessions/codex"
LOG = f"{STATE_DIR}/codex.log"
KEY_ENV = "MCP_SESSIONS_MODEL_KEY"
CONFIG = """model_provider = "mcp-sessions"
approval_policy = "never"
sandbox_mode = "danger-full-access"
{model}
[analytics]
enabled = false

[otel]
metrics_exporter = "none"

[model_providers.mcp-sessions]
name = "mcp-sessions"
base_url = "http://{proxy}/v1"
env_key = "{key_env}"
wire_api = "responses"
"""
INSTRUCTIONS = f"{STATE_DIR}/home/instructions.md"
ARGS_WITH_VALUE = ("-c", "--disable", "--output-schema")
"""The only flags a caller may add; each takes one value."""
CONFIG_KEYS = ("model_reasoning_effort", "model_reasoning_summary", "model_verbosity", "developer_instructions")
"""The config keys `-c KEY=VALUE` may set (not the provider, its URL or the sandbox: the server sets those)."""
NO_ASK = (
    "permission_mode 'ask' is not available for the codex agent: headless `codex exec` has no way to ask anyone "
    "and runs every tool call; leave permission_mode unset (bypass: the session's sandbox is the boundary), or "
    "use agent='claude-code', whose tool calls can wait for answer_approval"
)


class CodexOptions(BaseModel):
    provider: ProviderName | None = Field(None, description=PROVIDER_HELP)
    permission_mode: Literal["bypass", "ask"] | None = Field(None, description="bypass only")
    system_prompt: str | None = Field(None, max_length=100_000, description="replaces the default system prompt")
    cli_args: list[str] | None = Field(
        None,
        max_length=20,
        description=f"-c KEY=VALUE (KEY of {', '.join(CONFIG_KEYS)}), --disable FEATURE, --output-schema FILE",
    )

    @field_validator("cli_args")
    @classmethod
    def _allowed(cls, args: list[str] | None) -> list[str] | None:
        if args is None:
            return None
        check_args(args, ARGS_WITH_VALUE)
        i = 0
        while i < len(args):
            flag, eq, given = args[i].partition("=")
            key = (given if eq else args[i + 1]).partition("=")[0].strip()
            if flag == "-c" and key not in CONFIG_KEYS:
                raise ValueError(f"cli_args: -c {key[:100]!r} is not allowed; the keys allowed: {', '.join(CONFIG_KEYS)}")
            i += 1 if eq else 2
        return args


class CodexAgent(CliAgent):
    name = NAME
    mount = "codex"
    api = ("openai", "the OpenAI Responses API", "OPENAI_API_KEY")
    label = "Codex"
    log = LOG
    sees_images = True

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if options.get("permission_mode") == "ask":
            raise ValueError(NO_ASK)
        return super().configure(model, options)

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        running = await self.served(ctx)
        model = f"model = {json.dumps(ctx.session.model)}" if ctx.session.model else ""
        config = CONFIG.format(model=model, proxy=running.proxy_at, key_env=KEY_ENV)
        if ctx.options.get("system_prompt"):
            await ctx.sandbox.write_file(INSTRUCTIONS, ctx.options["system_prompt"].encode())
            config = f"model_instructions_file = {json.dumps(f'{ctx.sandbox.workspace}/{INSTRUCTIONS}')}\n{config}"
        await ctx.sandbox.write_file(f"{STATE_DIR}/home/config.toml", config.encode())
        await ctx.sandbox.write_file(f"{STATE_DIR}/message", text.encode())
        attach = " ".join(f'--image="$state"/{shlex.quote(path)}' for path in await self.write_images(ctx, STATE_DIR))
        workspace = shlex.quote(ctx.sandbox.workspace)
        extra = shlex.join(ctx.options.get("cli_args") or [])
        script = f"""(
cd {workspace} || exit 1
state={workspace}/{STATE_DIR}
export HOME="$state/home" CODEX_HOME="$state/home" {KEY_ENV}={PLACEHOLDER_KEY}
if compgen -G "$state/home/sessions/*/*/*/*.jsonl" >/dev/null; then set -- resume --last; else set --; fi
"$MCP_SESSIONS_MOUNTS/codex" exec --json --skip-git-repo-check --disable plugins --disable remote_plugin {extra} "$@" {attach} - \\
  <"$state/message" 2>>"$state/codex.log"
status=$?; rm -rf -- "$state/{IMAGES}"; exit $status
)"""
        return await self.exec_turn(ctx, running, script, ExecReader(ctx))


class ExecReader(TurnLines):
    """Reads `codex exec --json` lines: events, the turn's messages, its end.

    Lines: `thread.started`, `turn.started`, `item.started` / `item.completed` (`command_execution` with its
    command, aggregated output and exit code; `agent_message` with its text; `error`, which may be only a
    warning), `turn.completed` (usage: counted by the proxy instead), `turn.failed`, `error`."""

    def __init__(self, ctx: TurnContext) -> None:
        super().__init__(ctx)
        self._started: set[str] = set()

    async def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        given = event.get("item")
        item: dict[str, Any] = given if isinstance(given, dict) else {}
        if kind == "turn.completed":
            self.completed = True
        elif kind == "turn.failed":
            error = event.get("error")
            self.failure = str(error.get("message") if isinstance(error, dict) else error)
        elif kind == "error":
            self.failure = str(event.get("message"))
        elif item.get("type") == "command_execution":
            await self._command(kind, item)
        elif kind == "item.completed" and item.get("type") == "agent_message" and item.get("text"):
            said = str(item["text"])
            await self.ctx.emit("text.delta", {"text": said})
            self.ctx.messages.append(Message(role="assistant", content=[TextBlock(text=said)], turn=self.ctx.session.turns))

    async def _command(self, kind: Any, item: dict[str, Any]) -> None:
        call_id, command = str(item.get("id")), str(item.get("command", ""))
        if call_id not in self._started:
            self._started.add(call_id)
            await self.tool_started(call_id, "exec_command", {"command": command})
        if kind == "item.completed":
            code = item.get("exit_code")
            await self.tool_completed(call_id, "exec_command", str(item.get("aggregated_output") or ""), code != 0, code)


def _make(settings: object, context: AgentContext) -> CodexAgent:
    s = settings if isinstance(settings, CliSettings) else CliSettings()
    return CodexAgent(
        s.cli_agents_dir,
        Upstream(s.codex_base_url, secret(s.codex_api_key), OPENAI, "OPENAI_API_KEY (or MCP_SESSIONS_CODEX_API_KEY)"),
        s.codex_model,
        context.prices,
    )


plugin = AgentPlugin(
    name=NAME,
    make=_make,
    summary="OpenAI Codex (the CLI) in the sandbox; the key stays in the server",
    settings=CliSettings,
    options=CodexOptions,
)
