"""MCP sampling: the model of the client that sent the message, asked through `sampling/createMessage`.

The server layer wraps that client's connection in a `ConnectionSampler` and hands it to the manager
with the message, so a turn running after the tool call returned still reaches the same client. The
request goes on the connection's own channel (no related request), which outlives the tool call.
In the 2026-07-28 era a server may ask the client only inside a request: a client that declares the
tasks extension gets its turn as a task, whose sampler puts each question on the task (`input_required`,
answered by `tasks/update`: mcp_sessions/tasks); without it the turn fails with a sentence that says so.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

from mcp import types
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp_types import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ...models import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from .common import ModelReply, ModelRequest, ProviderError, TextCallback, TokenUsage

NO_SAMPLING = (
    "the calling client does not offer MCP sampling, so the agent has no model to ask; "
    "use a client that supports sampling with tools, or start the server with a provider key "
    "(OPENAI_API_KEY or ANTHROPIC_API_KEY) and pass provider='openai' or 'anthropic'"
)


class Sampler(Protocol):
    """Asks a client's model for one message. Given to the manager with each message sent."""

    async def create_message(self, params: dict[str, Any]) -> types.CreateMessageResultWithTools: ...


class ConnectionSampler:
    """Samples through the connection of the client that sent the message."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.protocol_version: str = session.protocol_version

    def unavailable(self) -> str | None:
        """Why this client cannot be sampled, or None if it can."""
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return (
                f"the client connected with MCP {self.protocol_version}, where a server cannot ask the client's "
                "model outside a tool call, so sampling is not available to a turn; connect with the handshake era "
                "(2025-11-25 or older), declare the io.modelcontextprotocol/tasks extension (the turn then asks through "
                "its task), or give the server a provider key and pass provider='openai' or 'anthropic'"
            )
        caps = self._session.client_capabilities
        if caps is None or caps.sampling is None:
            return NO_SAMPLING
        if caps.sampling.tools is None:
            return (
                "the calling client offers MCP sampling but not tool use in sampling (capability sampling.tools), "
                "which the agent needs for its tools; use a client that declares it, or a provider key"
            )
        return None

    async def create_message(self, params: dict[str, Any]) -> types.CreateMessageResultWithTools:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return await self._session.create_message(**params)

    def elicitation_unavailable(self) -> str | None:
        """Why this client cannot be asked through form elicitation (a tool call's approval), or None if it can."""
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return f"the client connected with MCP {self.protocol_version}, where a server asks only inside a request"
        return elicitation_unavailable(self._session.client_capabilities)

    async def elicit(self, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Ask the client's user through a form, on the connection's own channel (the tool call may be over)."""
        result = await self._session.elicit_form(message, schema)
        return result.model_dump(mode="json", exclude_none=True)


def elicitation_unavailable(capabilities: Any) -> str | None:
    """Why a client that declared `capabilities` cannot take a form elicitation, or None. An empty
    `elicitation` capability means form mode (as before modes existed)."""
    declared = getattr(capabilities, "elicitation", None)
    if declared is None:
        return "the client does not offer MCP elicitation"
    if declared.form is None and declared.url is not None:
        return "the client offers URL elicitation only, not forms"
    return None


def to_sampling(messages: list[Message]) -> list[types.SamplingMessage]:
    """Sampling messages of the session's messages. A message holding tool results holds only them (MCP's
    rule): text sent beside them (a CLI's reminders, say) goes into the last result's content."""
    out: list[types.SamplingMessage] = []
    for m in messages:
        blocks: list[Any] = []
        for b in m.content:
            if isinstance(b, TextBlock) and b.text:
                blocks.append(types.TextContent(type="text", text=b.text))
            elif isinstance(b, ToolUseBlock):
                blocks.append(types.ToolUseContent(type="tool_use", id=b.id, name=b.name, input=b.input))
            elif isinstance(b, ImageBlock):
                blocks.append(types.ImageContent(type="image", data=b.data, mime_type=b.media_type))
            elif isinstance(b, ToolResultBlock):
                blocks.append(
                    types.ToolResultContent(
                        type="tool_result",
                        tool_use_id=b.tool_use_id,
                        content=[types.TextContent(type="text", text=b.content)],
                        is_error=b.is_error,
                    )
                )
        results = [b for b in blocks if isinstance(b, types.ToolResultContent)]
        if results and len(results) < len(blocks):
            results[-1].content.extend(b for b in blocks if isinstance(b, types.TextContent))
            blocks = list(results)
        if blocks:
            out.append(types.SamplingMessage(role="assistant" if m.role == "assistant" else "user", content=blocks))
    return out


def _disconnected(how: str) -> ProviderError:
    return ProviderError(
        f"the client that sent the message disconnected (or its connection broke: {how}), "
        "so its model cannot be sampled; send the message again from a connected client"
    )


class SamplingProvider:
    name = "sampling"

    def __init__(self, sampler: Sampler | None) -> None:
        self._sampler = sampler

    async def complete(self, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        if self._sampler is None:
            raise ProviderError(NO_SAMPLING)
        unavailable = getattr(self._sampler, "unavailable", lambda: None)()
        if unavailable:
            raise ProviderError(unavailable)
        params: dict[str, Any] = {
            "messages": to_sampling(request.messages),
            "max_tokens": request.max_tokens,
            "system_prompt": request.system or None,
            "tools": [types.Tool(name=t.name, description=t.description, input_schema=t.input_schema) for t in request.tools],
        }
        if request.model:
            params["model_preferences"] = types.ModelPreferences(hints=[types.ModelHint(name=request.model)])
        try:
            result = await self._sampler.create_message(params)
        except NoBackChannelError:
            raise ProviderError(
                "the calling client's connection has no channel for server requests, so its model cannot be sampled; "
                "connect with the handshake era, or use a provider key"
            ) from None
        except ValueError as e:  # the SDK checks the conversation's tool calls and results before sending
            raise ProviderError(f"the conversation cannot be sent through MCP sampling ({e}).") from None
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:  # it went away while its model was being asked: it refused nothing
                raise _disconnected(e.message) from None
            raise ProviderError(f"the calling client refused the sampling request ({e}).") from None
        except Exception as e:  # a closed connection surfaces as several stream and resource errors
            raise _disconnected(type(e).__name__) from None
        blocks = result.content if isinstance(result.content, list) else [result.content]
        content: list[TextBlock | ToolUseBlock] = []
        for block in blocks:
            if isinstance(block, types.TextContent):
                content.append(TextBlock(text=block.text))
                await on_text(block.text)
            elif isinstance(block, types.ToolUseContent):
                content.append(ToolUseBlock(id=block.id, name=block.name, input=dict(block.input)))
        return ModelReply(content=content, stop_reason=result.stop_reason, model=result.model, usage=TokenUsage())
