"""The `llm` agent: a tool-using loop. The brain (model calls, tool choice) runs in the server; only
the tools (bash, file reads, writes and edits, listings) run in the session's sandbox, through its
driver. So the sandbox needs no network and never sees an API key.

One turn: the model is called with the conversation and five tools; each tool call it makes runs in
the sandbox and its result goes back; this repeats until the model answers without a tool call, or a
limit (`max_steps` model calls, the turn's token or cost budget, a budget of the session's tree) ends the
turn with a message saying which.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import httpx
from pydantic import BaseModel, Field, SecretStr

from sandbox_backends.base import PathNotAllowed, SandboxError, SandboxNotFound

from ..inputs import IN_RANGE
from ..models import ContentBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock, Usage
from .base import AgentPlugin, TurnContext, TurnOutcome
from .pricing import PriceTable, add_usage
from .providers.anthropic import AnthropicProvider
from .providers.common import PROVIDER_HELP, ModelRequest, Provider, ProviderError, ProviderName, ToolSpec
from .providers.openai import OpenAIProvider
from .providers.sampling import SamplingProvider

TEXT_FLUSH_CHARS = 400
TEXT_FLUSH_S = 0.2
MAX_TOOL_RESULT_CHARS = 30000
"""Bound on one tool result sent back to the model; the middle of longer results is cut with a note."""
LIST_LIMIT = 500

DEFAULT_SYSTEM_PROMPT = """\
You are a careful software engineer working in a sandbox. Your workspace is {workspace}. Use the tools \
to inspect, change and run things there: bash for commands, read_file/write_file/edit_file for files, \
list_files to look around. Work step by step, check your changes by running them, and finish with a \
short answer saying what you did and what the result is."""

TOOLS = [
    ToolSpec(
        "bash",
        "Run a bash command in the workspace's persistent shell (cd and exported variables carry over). "
        "Returns the combined stdout and stderr and the exit code. Long output is cut in the middle.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The bash command or script to run."},
                "timeout_s": {"type": "number", "description": "Stop the command after this many seconds (optional)."},
            },
            "required": ["command"],
        },
    ),
    ToolSpec(
        "read_file",
        "Read a text file, by path relative to the workspace (or absolute inside it).",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
    ToolSpec(
        "write_file",
        "Create or overwrite a file with the given content, making parent folders.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
    ToolSpec(
        "edit_file",
        "Replace an exact piece of text in a file. old_text must occur exactly once (include surrounding "
        "lines to make it unique), unless replace_all is true.",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_text": {"type": "string", "description": "The exact text to replace, whitespace included."},
                "new_text": {"type": "string"},
                "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)."},
            },
            "required": ["path", "old_text", "new_text"],
        },
    ),
    ToolSpec(
        "list_files",
        "List files and folders under a path in the workspace (default: the workspace), up to a depth.",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Folder relative to the workspace (default '.')."},
                "depth": {"type": "integer", "description": "How deep to go, 1..10 (default 3)."},
            },
        },
    ),
]


class ToolFailed(Exception):
    """A tool call the model got wrong; its message goes back to the model as an error result."""


def cut_middle(text: str, limit: int = MAX_TOOL_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n…[{len(text) - 2 * half} characters cut]…\n{text[-half:]}"


def close_dangling_tool_calls(messages: list[Message]) -> list[Message]:
    """Every tool call needs a result before the conversation goes on (APIs refuse it otherwise): a
    turn interrupted during a tool leaves one without; give it a result saying so."""
    fixed: list[Message] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        fixed.append(m)
        i += 1
        calls = [b.id for b in m.content if isinstance(b, ToolUseBlock)] if m.role == "assistant" else []
        if not calls:
            continue
        results: list[ToolResultBlock] = []
        if i < len(messages) and messages[i].role == "tool":
            results = [b for b in messages[i].content if isinstance(b, ToolResultBlock)]
            i += 1
        answered = {r.tool_use_id for r in results}
        results += [
            ToolResultBlock(tool_use_id=c, content="The turn was stopped before this tool ran to its end.", is_error=True)
            for c in calls
            if c not in answered
        ]
        fixed.append(Message(role="tool", content=results, turn=m.turn))
    return fixed


class LlmSettings(BaseModel):
    llm_provider: Literal["auto", "openai", "anthropic", "sampling"] = Field(
        "auto",
        description="Model provider of the llm agent; auto: anthropic with ANTHROPIC_API_KEY, else openai with "
        "OPENAI_API_KEY or a base URL, else the client's own model through MCP sampling.",
    )
    model: str | None = Field(None, description="Default model of the llm agent.")
    openai_base_url: str | None = Field(
        None,
        description="OpenAI-compatible API base URL, e.g. http://localhost:11434/v1 for Ollama.",
        json_schema_extra={"env": "OPENAI_BASE_URL"},
    )
    openai_api_key: SecretStr | None = Field(
        None, description="Key for the OpenAI-compatible API.", json_schema_extra={"env": "OPENAI_API_KEY"}
    )
    anthropic_base_url: str | None = Field(
        None, description="Anthropic API base URL.", json_schema_extra={"env": "ANTHROPIC_BASE_URL"}
    )
    anthropic_api_key: SecretStr | None = Field(
        None, description="Key for the Anthropic API.", json_schema_extra={"env": "ANTHROPIC_API_KEY"}
    )
    llm_max_steps: int = Field(50, ge=1, le=1000, description="Default most model calls per turn of the llm agent.")
    llm_max_tokens: int = Field(8192, ge=16, le=1_000_000, description="Most output tokens of one model call.")
    llm_retries: int = Field(2, ge=0, le=10, description="Retries of a model call on 429, 5xx or an unreachable API.")


class LlmOptions(BaseModel):
    provider: ProviderName | None = Field(None, description=PROVIDER_HELP)
    system_prompt: str | None = Field(None, max_length=100_000, description="replaces the default system prompt")
    max_steps: Annotated[int, Field(ge=1, le=1000), IN_RANGE] | None = Field(
        None, description="most model calls per turn (default: the server's, 50)"
    )
    max_turn_tokens: Annotated[int, Field(ge=1, le=10**12), IN_RANGE] | None = Field(
        None, description="stop a turn once it has used this many tokens"
    )
    max_turn_cost_usd: Annotated[float, Field(gt=0, le=10**6, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="stop a turn once it has cost this much"
    )


class LlmAgent:
    name = "llm"
    sees_images = True  # every provider takes them; a model without vision answers with the API's own error

    def __init__(self, settings: LlmSettings, prices: PriceTable) -> None:
        self.settings = settings
        self.prices = prices

    # -- configuration -----------------------------------------------------------------------------

    def default_provider(self) -> str:
        s = self.settings
        if s.llm_provider != "auto":
            return s.llm_provider
        if s.anthropic_api_key is not None:
            return "anthropic"
        if s.openai_api_key is not None or s.openai_base_url:
            return "openai"
        return "sampling"

    def configure(self, model: str | None, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Check a new session's options and fill in the server's defaults. Raises ValueError."""
        provider = options.get("provider") or self.default_provider()
        model = model or self.settings.model
        if provider != "sampling" and not model:
            raise ValueError(
                f"The llm agent needs a model for provider '{provider}': pass model=... to create_session, "
                "or start the server with --model (MCP_SESSIONS_MODEL)."
            )
        return model, {k: v for k, v in options.items() if v is not None}

    def _provider(self, name: str, client: httpx.AsyncClient, sampler: Any) -> Provider:
        s = self.settings
        if name == "openai":
            key = s.openai_api_key.get_secret_value() if s.openai_api_key else None
            return OpenAIProvider(client, s.openai_base_url, key, retries=s.llm_retries)
        if name == "anthropic":
            key = s.anthropic_api_key.get_secret_value() if s.anthropic_api_key else None
            return AnthropicProvider(client, s.anthropic_base_url, key, retries=s.llm_retries)
        return SamplingProvider(sampler)

    def _secrets(self) -> list[str | None]:
        s = self.settings
        return [k.get_secret_value() if k else None for k in (s.openai_api_key, s.anthropic_api_key)]

    # -- the loop ------------------------------------------------------------------------------------

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        options = ctx.options
        provider_name = options.get("provider") or self.default_provider()
        model = ctx.session.model or self.settings.model
        max_steps = int(options.get("max_steps") or self.settings.llm_max_steps)
        max_tokens = options.get("max_turn_tokens")
        max_cost = options.get("max_turn_cost_usd")
        system = options.get("system_prompt") or DEFAULT_SYSTEM_PROMPT.format(workspace=ctx.sandbox.workspace)
        turn = ctx.session.turns
        asked = Message(role="user", content=[TextBlock(text=text), *ctx.images], turn=turn)
        history = await ctx.history() if ctx.history else [asked]
        conversation = close_dangling_tool_calls([m for m in history if m.content])
        started = time.monotonic()

        def finish(status: str, reason: str | None = None, note: str | None = None) -> TurnOutcome:
            if note:
                ctx.messages.append(Message(role="assistant", content=[TextBlock(text=note)], turn=turn))
            last = next((m for m in reversed(ctx.messages) if m.role == "assistant"), None)
            content: list[ContentBlock] = [b for b in last.content if isinstance(b, TextBlock)] if last else []
            answer = "\n".join(b.text for b in content if isinstance(b, TextBlock))
            return TurnOutcome(
                status=status,  # type: ignore[arg-type]
                content=content,
                duration_s=time.monotonic() - started,
                output=answer,
                output_bytes=len(answer.encode()),
                reason=reason,
                usage=ctx.usage,
                messages=ctx.messages,
            )

        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
            provider = self._provider(provider_name, client, ctx.sampler)
            for step in range(1, max_steps + 1):
                request = ModelRequest(
                    model=model,
                    system=system,
                    messages=conversation + ctx.messages,
                    tools=TOOLS,
                    max_tokens=self.settings.llm_max_tokens,
                )
                try:
                    reply = await self._call(ctx, provider, request, step)
                except ProviderError as e:
                    reason = f"the model call failed: {e}"
                    for secret in self._secrets():
                        if secret:
                            reason = reason.replace(secret, "[redacted]")
                    return finish("failed", reason)
                add_usage(ctx.usage, self.prices, reply.model or model or provider_name, reply.usage)
                ctx.messages.append(Message(role="assistant", content=list(reply.content), turn=turn))
                calls = [b for b in reply.content if isinstance(b, ToolUseBlock)]
                if not calls:
                    return finish("completed")
                if ctx.over_budget is not None and (over := await ctx.over_budget(ctx.usage)):
                    return finish("failed", over, f"[stopped: {over}]")
                results = []
                for call in calls:
                    result = await self._run_tool(ctx, call)
                    results.append(result)
                    if result is None:  # the command was interrupted from outside this process
                        ctx.messages.append(Message(role="tool", content=[r for r in results if r], turn=turn))
                        return finish("interrupted", "interrupted by the caller")
                ctx.messages.append(Message(role="tool", content=[r for r in results if r], turn=turn))
                over = self._over_budget(ctx.usage, max_tokens, max_cost)
                if over:
                    return finish("failed", over, f"[stopped: {over}]")
            reason = f"max_steps reached: {max_steps} model calls without a final answer"
            return finish("failed", reason, f"[stopped: {reason}]")

    @staticmethod
    def _over_budget(usage: Usage, max_tokens: Any, max_cost: Any) -> str | None:
        if max_tokens is not None and usage.total_tokens >= max_tokens:
            return f"token budget reached: {usage.total_tokens} tokens used of max_turn_tokens={max_tokens}"
        if max_cost is not None and usage.cost_usd >= max_cost:
            return f"cost budget reached: ${usage.cost_usd:.4f} spent of max_turn_cost_usd={max_cost:g}"
        return None

    async def _call(self, ctx: TurnContext, provider: Provider, request: ModelRequest, step: int) -> Any:
        """One model call, its text streamed as `text.delta` events, coalesced (at most about 5 a second)."""
        pending: list[str] = []

        async def flush() -> None:
            if pending:
                text = "".join(pending)
                pending.clear()
                await ctx.emit("text.delta", {"text": text, "step": step})

        async def on_text(chunk: str) -> None:
            pending.append(chunk)
            if sum(map(len, pending)) >= TEXT_FLUSH_CHARS:
                await flush()

        async def flush_periodically() -> None:
            while True:
                await anyio.sleep(TEXT_FLUSH_S)
                await flush()

        reply: Any = None
        failure: ProviderError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush_periodically)
                try:
                    reply = await provider.complete(request, on_text)
                except ProviderError as e:  # raised outside the group, so callers see it, not a group of it
                    failure = e
                except Exception as e:  # a malformed answer: say so rather than fail as an internal error
                    failure = ProviderError(f"the {provider.name} provider's answer could not be read ({type(e).__name__}: {e})")
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await flush()
        if failure is not None:
            raise failure
        return reply

    # -- tools ---------------------------------------------------------------------------------------

    async def _run_tool(self, ctx: TurnContext, call: ToolUseBlock) -> ToolResultBlock | None:
        """Run one tool call in the sandbox. None if a command was interrupted from outside."""
        shown = {k: (v[:2000] if isinstance(v, str) else v) for k, v in call.input.items()}
        await ctx.emit("tool.started", {"id": call.id, "tool": call.name, "input": shown})
        started = time.monotonic()
        exit_code: int | None = None
        try:
            if "__invalid_json__" in call.input:
                raise ToolFailed("The tool arguments were not valid JSON; send them again as a JSON object.")
            handler = getattr(self, f"_tool_{call.name}", None)
            if handler is None:
                raise ToolFailed(f"Unknown tool '{call.name}'. Use one of: {', '.join(t.name for t in TOOLS)}.")
            content, exit_code, interrupted = await handler(ctx, call.input)
            is_error = False
        except ToolFailed as e:
            content, interrupted, is_error = str(e), False, True
        except SandboxNotFound:
            raise
        except (PathNotAllowed, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            content, interrupted, is_error = self._file_error(e, call.input.get("path")), False, True
        except SandboxError as e:
            content, interrupted, is_error = str(e), False, True
        await ctx.emit(
            "tool.completed",
            {
                "id": call.id,
                "tool": call.name,
                "exit_code": exit_code,
                "duration_s": round(time.monotonic() - started, 3),
                "is_error": is_error,
            },
        )
        if interrupted:
            return None
        return ToolResultBlock(tool_use_id=call.id, content=cut_middle(content), is_error=is_error)

    @staticmethod
    def _file_error(e: Exception, path: Any) -> str:
        if isinstance(e, PathNotAllowed):
            return f"{path!r} is outside the workspace; use a path inside it."
        if isinstance(e, FileNotFoundError):
            return f"No such file: {path!r}. Use list_files to see what exists."
        if isinstance(e, IsADirectoryError):
            return f"{path!r} is a folder, not a file. Use list_files for folders."
        return f"{path!r}: {e}"

    @staticmethod
    def _arg(args: dict[str, Any], name: str, kind: type = str) -> Any:
        value = args.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ToolFailed(f"Argument '{name}' is required and must be a {kind.__name__}.")
        return value

    async def _tool_bash(self, ctx: TurnContext, args: dict[str, Any]) -> tuple[str, int | None, bool]:
        command = self._arg(args, "command")
        timeout = ctx.command_timeout_s
        if isinstance(args.get("timeout_s"), int | float) and args["timeout_s"] > 0:
            timeout = min(float(args["timeout_s"]), timeout)
        result = await ctx.sandbox.exec(
            command, timeout_s=timeout, on_output=ctx.output, max_output_bytes=min(ctx.max_output_bytes, MAX_TOOL_RESULT_CHARS)
        )
        text = result.output
        if result.cut_bytes:
            text += f"\n[{result.cut_bytes} bytes of output cut from the middle]"
        if result.timed_out:
            text += f"\n[the command ran past {timeout:g} s and was stopped]"
        else:
            text += f"\n[exit code {result.exit_code}]"
        if result.failure:
            text += f"\n[{result.failure}]"
        return text, result.exit_code, result.interrupted

    async def _read_text(self, ctx: TurnContext, path: str) -> str:
        data = await ctx.sandbox.read_file(path, ctx.max_file_bytes)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolFailed(f"{path!r} is not a UTF-8 text file ({len(data)} bytes).") from None

    async def _tool_read_file(self, ctx: TurnContext, args: dict[str, Any]) -> tuple[str, int | None, bool]:
        path = self._arg(args, "path")
        return await self._read_text(ctx, path), None, False

    async def _tool_write_file(self, ctx: TurnContext, args: dict[str, Any]) -> tuple[str, int | None, bool]:
        path, content = self._arg(args, "path"), self._arg(args, "content")
        data = content.encode()
        if len(data) > ctx.max_file_bytes:
            raise ToolFailed(f"The content is {len(data)} bytes, over the {ctx.max_file_bytes}-byte limit.")
        await ctx.sandbox.write_file(path, data)
        return f"Wrote {len(data)} bytes to {path}.", None, False

    async def _tool_edit_file(self, ctx: TurnContext, args: dict[str, Any]) -> tuple[str, int | None, bool]:
        path, old, new = self._arg(args, "path"), self._arg(args, "old_text"), self._arg(args, "new_text")
        if not old:
            raise ToolFailed("old_text is empty; give the exact text to replace (use write_file for a new file).")
        text = await self._read_text(ctx, path)
        count = text.count(old)
        if count == 0:
            raise ToolFailed(
                f"old_text was not found in {path}. Read the file again and copy the exact text, whitespace and indentation included."
            )
        if count > 1 and not args.get("replace_all"):
            raise ToolFailed(
                f"old_text occurs {count} times in {path}; include more surrounding lines so it occurs once, or set replace_all=true."
            )
        await ctx.sandbox.write_file(path, text.replace(old, new).encode())
        return f"Replaced {count} occurrence(s) in {path}.", None, False

    async def _tool_list_files(self, ctx: TurnContext, args: dict[str, Any]) -> tuple[str, int | None, bool]:
        path = args.get("path") or "."
        if not isinstance(path, str) or "\0" in path:
            raise ToolFailed("Argument 'path' must be a string.")
        asked = args.get("depth")
        depth = max(1, min(asked if isinstance(asked, int) else 3, 10))
        workspace = ctx.sandbox.workspace
        target = Path(workspace, path).as_posix() if not path.startswith("/") else path
        script = (
            f"( cd -- {shlex.quote(workspace)} && find {shlex.quote(target)} -mindepth 1 -maxdepth {depth} "
            f"-not -path '*/.git/*' -printf '%y %P\\n' 2>&1 | sort -k2 | head -n {LIST_LIMIT + 1} )"
        )
        result = await ctx.sandbox.exec(script, timeout_s=60, max_output_bytes=MAX_TOOL_RESULT_CHARS)
        if result.exit_code not in (0, None) or "No such file" in result.output:
            raise ToolFailed(f"Cannot list {path!r}: {result.output.strip()[:500]}")
        lines = [line for line in result.output.splitlines() if line.strip()]
        entries = [(line[2:] + "/" if line.startswith("d ") else line[2:]) for line in lines[:LIST_LIMIT]]
        more = f"\n[more than {LIST_LIMIT} entries; list a subfolder]" if len(lines) > LIST_LIMIT else ""
        return ("\n".join(entries) or "(empty)") + more, None, result.interrupted


plugin = AgentPlugin(
    name="llm",
    make=lambda settings, context: LlmAgent(settings, context.prices),
    summary="a coding agent: a model that works with bash and file tools in the sandbox; the reply is its answer, with usage and cost",
    settings=LlmSettings,
    options=LlmOptions,
)
