"""The model proxy answering through MCP sampling (`provider="sampling"`): no upstream, no key anywhere.

Each model request of the CLI becomes one `sampling/createMessage` to the client that sent the turn's
message: the request is read into the session's own messages by its API's `Wire` (sampled_wires.py: the
Anthropic Messages API, OpenAI Responses, Chat Completions), asked by the llm agent's sampling provider, which maps
messages and tools to MCP and the answer back, and the answer is written back in the API's own format: one
JSON body, or the API's server-sent events when the CLI asked for a stream. The whole answer is known before
its first byte is sent, so a failure is an HTTP error in the API's shape, which the CLI prints as it ends
its turn, never a stream cut in the middle.

Sampling tells no token usage: each request is counted (a `model.sampled` event naming the model that
answered, tokens null) and the usage names that model at no cost; tokens stay zero, never guessed.
"""

from __future__ import annotations

import json
from typing import Any

from ..providers.common import ModelReply, ProviderError
from ..providers.sampling import Sampler, SamplingProvider
from .sampled_wires import ChatWire, MessagesWire, ResponsesWire, Wire

WIRES: dict[str, Wire] = {
    "/v1/messages": MessagesWire(),
    "/v1/responses": ResponsesWire(),
    "/v1/chat/completions": ChatWire(),
}
"""The model APIs the caller's model answers, by their path."""
NOT_SAMPLED = "mcp-sessions model proxy: {path} is not available when the model is the caller's (provider='sampling')."


class SampledAnswer(Exception):
    """A request the caller's model cannot answer: `http_status` and the message for the CLI; `reason`, if set,
    ends the turn failed."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.http_status, self.reason = status, reason


async def sample(sampler: Sampler | None, path: str, body: bytes) -> tuple[ModelReply, str, bytes]:
    """Ask the caller's model the request: its reply, and the answer's content type and body for the CLI.
    Raises SampledAnswer."""
    wire = WIRES.get(path)
    if wire is None:
        raise SampledAnswer(404, NOT_SAMPLED.format(path=path))
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise SampledAnswer(400, "mcp-sessions model proxy: the request body is not a JSON object.")
    try:
        reply = await SamplingProvider(sampler).complete(wire.request_of(doc), _ignore)
    except ProviderError as e:
        reason = f"the model call failed: {e}"
        raise SampledAnswer(400, f"mcp-sessions: {reason}", reason) from None
    return (reply, *wire.answer(reply, doc.get("stream") is True))


def cannot_sample(sampler: Any, own: str, key_var: str) -> str | None:
    """Why a message sent with `sampler` (None: no MCP client sent it) cannot run on the caller's model, or None.
    `own` is the agent's provider with a key, `key_var` where the server takes that key."""
    unavailable: str | None = getattr(sampler, "unavailable", lambda: None)() if sampler is not None else None
    if sampler is None:
        why = "this message came with no MCP client to ask (over the REST API)"
    elif unavailable:
        why = unavailable.split(";")[0]
    else:
        return None
    return (
        f"This session's model is the caller's (provider='sampling'), and {why}. Send the message with the "
        "send_message tool from an MCP client that offers sampling with tools (VS Code, for one), or create the "
        f"session with provider='{own}' to use the server's {key_var}."
    )


async def _ignore(text: str) -> None:
    """Text is not streamed on: the CLI's own stream says it (and the answer arrives whole)."""
