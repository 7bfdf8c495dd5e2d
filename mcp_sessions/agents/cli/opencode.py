"""The `opencode` agent: OpenCode, the open-source coding-agent CLI, runs in the session's sandbox, one
`opencode run --format json` per message.

Its model requests go to the session's model proxy through a provider of its own config (OpenAI-compatible
Chat Completions, base URL the proxy inside the sandbox), which holds the key; it is given a placeholder.
With `provider="sampling"` the proxy answers them from the caller's model instead (MCP sampling).
Its state (HOME and its XDG folders: config, the conversation's database, logs) is a folder in the
workspace, with the id of its conversation: every turn after the first is `--session <id>`, so the
conversation goes on across turns, interrupts and server restarts (and a fork or checkpoint of the
workspace takes it along). Each turn is one command of the session's shell, so `interrupt` stops it as it
stops any command. Its background traffic is off: update checks, model list fetches, sharing, LSP
downloads, default plugins, and the npm install of its plugin package into its config folder (marked as
done: the config names no plugin), so it starts without the network, where the docker sandbox has none.
Headless `opencode run` cannot put a question to anyone (it refuses what would ask), so it runs with
`--auto` (everything allowed that the config does not deny): the session's sandbox is the boundary.
"""

from __future__ import annotations

import json
import logging
import shlex
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, field_validator

from sandbox_backends.base import SandboxError

from ...models import Message, TextBlock
from ..base import AgentContext, AgentPlugin, TurnContext, TurnOutcome
from ..providers.common import PROVIDER_HELP, ProviderName
from .base import IMAGES, CliAgent, CliSettings, TurnLines, check_args, secret
from .proxy import OPENAI, PLACEHOLDER_KEY, Upstream

logger = logging.getLogger(__name__)

NAME = "opencode"
STATE_DIR = ".mcp-sessions/opencode"
LOG = f"{STATE_DIR}/opencode.log"
CONVERSATION = f"{STATE_DIR}/conversation"
"""OpenCode's id of the session's conversation (what `--session` takes), once its first turn has run."""
KEY_ENV = "MCP_SESSIONS_MODEL_KEY"
PROVIDER = "mcp-sessions"
QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
}
PLUGIN_PACKAGE_LOCK = {"lockfileVersion": 3, "packages": {"": {"dependencies": {"@opencode-ai/plugin": "*"}}}}
"""Written into its config folder with an empty node_modules: OpenCode installs its plugin package (from npm)
into each config folder whose lock file does not list it, at every start; this one has no plugins to build."""
ARGS_WITH_VALUE = ("--agent", "--variant")
"""The only flags a caller may add; each takes one value."""
KEEP_WAIT_S = 10.0
MODALITIES = {"input": ["text", "image"], "output": ["text"]}


class OpenCodeOptions(BaseModel):
    provider: ProviderName | None = Field(None, description=PROVIDER_HELP)
    permission_mode: Literal["bypass", "ask"] | None = Field(None, description="bypass only (it cannot ask)")
    system_prompt: str | None = Field(None, max_length=100_000, description="replaces the default system prompt")
    cli_args: list[str] | None = Field(None, max_length=20, description=f"flags with values, of: {' '.join(ARGS_WITH_VALUE)}")

    @field_validator("cli_args")
    @classmethod
    def _allowed(cls, args: list[str] | None) -> list[str] | None:
        return check_args(args, ARGS_WITH_VALUE) if args is not None else None


def config(model: str, proxy_at: str, system_prompt: str | None) -> dict[str, Any]:
    """OpenCode's config: one provider, the session's model proxy; nothing that reaches anywhere else."""
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": PROVIDER,
        "options": {"baseURL": f"http://{proxy_at}/v1", "apiKey": f"{{env:{KEY_ENV}}}"},
        # images given with --file reach the model only if it is said to take them
        "models": {model: {"name": model, "tool_call": True, "attachment": True, "modalities": MODALITIES}},
    }
    doc: dict[str, Any] = {
        "autoupdate": False,
        "share": "disabled",
        "snapshot": False,
        "enabled_providers": [PROVIDER],
        "provider": {PROVIDER: provider},
        "model": f"{PROVIDER}/{model}",
        "small_model": f"{PROVIDER}/{model}",
    }
    if system_prompt:
        doc["agent"] = {"build": {"prompt": system_prompt}}
    return doc


class OpenCodeAgent(CliAgent):
    name = NAME
    mount = "opencode"
    api = ("openai", "OpenAI-compatible Chat Completions", "OPENAI_API_KEY")
    label = "OpenCode"
    log = LOG
    sees_images = True

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        model, options = super().configure(model, options)
        if options.get("permission_mode") == "ask":
            raise ValueError(
                "The opencode agent cannot ask for approvals: headless `opencode run` refuses every tool call that "
                "would ask, with no way to put the question to anyone. Leave permission_mode out (bypass: the "
                "session's sandbox is the boundary), or use the claude-code agent for approvals."
            )
        if not model:
            raise ValueError(
                "The opencode agent needs a model of its upstream API: pass model=... (e.g. 'gpt-4.1'), or set "
                "MCP_SESSIONS_OPENCODE_MODEL on the server."
            )
        return model, options

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        running = await self.served(ctx)
        model = ctx.session.model or self.default_model or ""
        doc = config(model, running.proxy_at, ctx.options.get("system_prompt"))
        await ctx.sandbox.write_file(f"{STATE_DIR}/opencode.json", json.dumps(doc, indent=1).encode())
        await ctx.sandbox.write_file(f"{STATE_DIR}/config/opencode/package-lock.json", json.dumps(PLUGIN_PACKAGE_LOCK).encode())
        await ctx.sandbox.write_file(f"{STATE_DIR}/message", text.encode())
        known = await self._conversation(ctx)
        argv = ["run", "--format", "json", "--auto", "--title", "mcp-sessions", "--model", f"{PROVIDER}/{model}"]
        argv += ["--session", known] if known else []
        argv += ctx.options.get("cli_args") or []
        workspace = shlex.quote(ctx.sandbox.workspace)
        exports = " ".join(f"{k}={v}" for k, v in QUIET_ENV.items())
        attach = " ".join(f'--file="$state"/{shlex.quote(path)}' for path in await self.write_images(ctx, STATE_DIR))
        # --title: a title of its own would cost a model request. No id kept but a database: the first turn was
        # cut short (the server killed) before its id was kept; its conversation is OpenCode's last one.
        script = f"""(
cd {workspace} || exit 1
state={workspace}/{STATE_DIR}
mkdir -p "$state/home" "$state/config/opencode/node_modules" || exit 1
export HOME="$state/home" XDG_CONFIG_HOME="$state/config" XDG_DATA_HOME="$state/data" XDG_CACHE_HOME="$state/cache" \\
  XDG_STATE_HOME="$state/state" OPENCODE_CONFIG="$state/opencode.json" {KEY_ENV}={PLACEHOLDER_KEY} {exports}
if [ -z {shlex.quote(known or "")} ] && [ -e "$state/data/opencode/opencode.db" ]; then set -- --continue; else set --; fi
"$MCP_SESSIONS_MOUNTS/opencode" {shlex.join(argv)} "$@" {attach} <"$state/message" 2>>"$state/opencode.log"
status=$?; rm -rf -- "$state/{IMAGES}"; exit $status
)"""
        reader = RunReader(ctx)
        try:
            return await self.exec_turn(ctx, running, script, reader)
        finally:
            if reader.conversation and reader.conversation != known:
                with anyio.CancelScope(shield=True), anyio.move_on_after(KEEP_WAIT_S):
                    try:
                        await ctx.sandbox.write_file(CONVERSATION, reader.conversation.encode())
                    except (OSError, SandboxError) as e:  # the next turn falls back on --continue
                        logger.warning("could not keep OpenCode's conversation id in the sandbox: %s", e)

    async def _conversation(self, ctx: TurnContext) -> str | None:
        """OpenCode's id of the session's conversation, if a turn has kept one."""
        try:
            said = (await ctx.sandbox.read_file(CONVERSATION, 200)).decode(errors="replace").strip()
        except (OSError, SandboxError):
            return None
        return said if said.startswith("ses_") else None


class RunReader(TurnLines):
    """Reads `opencode run --format json` lines: events, the turn's messages, its end.

    Lines (each with the conversation's `sessionID`): `step_start`; `text` (a part's whole text); `tool_use`
    (a tool call once done: its tool, call id, input, status completed or error, output or error, exit code:
    OpenCode reports no tool while it runs); `step_finish` (its reason: "tool-calls" when the model goes on;
    token counts: the proxy counts them instead); `error` (the turn failed: the model API's error, say)."""

    def __init__(self, ctx: TurnContext) -> None:
        super().__init__(ctx)
        self.conversation: str | None = None

    async def event(self, event: dict[str, Any]) -> None:
        if self.conversation is None and isinstance(event.get("sessionID"), str):
            self.conversation = event["sessionID"]
        kind = event.get("type")
        given = event.get("part")
        part: dict[str, Any] = given if isinstance(given, dict) else {}
        if kind == "step_start":
            self.completed = False
        elif kind == "step_finish":
            self.completed = part.get("reason") != "tool-calls"
        elif kind == "error":
            self.completed = False
            error = event.get("error")
            data = error.get("data") if isinstance(error, dict) else None
            said = data.get("message") if isinstance(data, dict) else None
            self.failure = str(said or (error.get("name") if isinstance(error, dict) else error))[:1000]
        elif kind == "text" and part.get("text"):
            said = str(part["text"])
            await self.ctx.emit("text.delta", {"text": said})
            self.ctx.messages.append(Message(role="assistant", content=[TextBlock(text=said)], turn=self.ctx.session.turns))
        elif kind == "tool_use":
            await self._tool(part)

    async def _tool(self, part: dict[str, Any]) -> None:
        """A tool call, done: started and completed at once."""
        call_id, tool = str(part.get("callID") or part.get("id")), str(part.get("tool"))
        given = part.get("state")
        state: dict[str, Any] = given if isinstance(given, dict) else {}
        given = state.get("input")
        await self.tool_started(call_id, tool, given if isinstance(given, dict) else {})
        failed = state.get("status") != "completed"
        metadata = state.get("metadata")
        code = metadata.get("exit") if isinstance(metadata, dict) else None
        code = code if isinstance(code, int) else None
        output = str(state.get("error") if failed else state.get("output") or "")
        await self.tool_completed(call_id, tool, output, failed or bool(code), code)


def _make(settings: object, context: AgentContext) -> OpenCodeAgent:
    s = settings if isinstance(settings, CliSettings) else CliSettings()
    return OpenCodeAgent(
        s.cli_agents_dir,
        Upstream(s.opencode_base_url, secret(s.opencode_api_key), OPENAI, "OPENAI_API_KEY (or MCP_SESSIONS_OPENCODE_API_KEY)"),
        s.opencode_model,
        context.prices,
    )


plugin = AgentPlugin(
    name=NAME,
    make=_make,
    summary="OpenCode (the CLI) in the sandbox; the key stays in the server",
    settings=CliSettings,
    options=OpenCodeOptions,
)
