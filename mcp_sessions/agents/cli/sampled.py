"""The model proxy answering through MCP sampling (`provider="sampling"`): no upstream, no key anywhere.

Each Anthropic Messages request of the CLI becomes one `sampling/createMessage` to the client that sent the
turn's message: the request is read into the session's own messages (`providers.anthropic.from_wire`) and
asked by the llm agent's sampling provider, which maps messages and tools to MCP and the answer back. The
answer goes to the CLI in the Messages API's format: one JSON message, or the SSE events of one when the
CLI asked for a stream (message_start; content_block_start, _delta and _stop for each text and tool_use
block; message_delta with the stop reason; message_stop). The whole answer is known before its first byte
is sent, so a failure is an HTTP error in the API's shape, which the CLI prints as it ends its turn, never a
stream cut in the middle.

Sampling tells no token usage: each request is counted (a `model.sampled` event naming the model that
answered, tokens null) and the usage names that model at no cost; tokens stay zero, never guessed.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ...models import Message
from ..providers.anthropic import from_wire, to_wire
from ..providers.common import ModelReply, ModelRequest, ProviderError, ToolSpec
from ..providers.sampling import Sampler, SamplingProvider

MAX_TOKENS = 32_000
"""Most output tokens asked of the client's model in one answer (the CLI's own ask, if lower, wins)."""
STOP_REASONS = {"endTurn": "end_turn", "toolUse": "tool_use", "maxTokens": "max_tokens", "stopSequence": "stop_sequence"}
"""MCP's stop reasons by their Messages API names; another reason is told by the answer's blocks."""
NOT_SAMPLED = "mcp-sessions model proxy: {path} is not available when the model is the caller's (provider='sampling')."


class SampledAnswer(Exception):
    """A request the caller's model cannot answer: `status` and `message` for the CLI, `reason` (if set) ends the turn."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.http_status, self.reason = status, reason


def request_of(body: bytes) -> ModelRequest:
    """The session's model request that a Messages API request body makes. Raises SampledAnswer (400)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise SampledAnswer(400, "mcp-sessions model proxy: the request body is not a JSON object.")
    system = doc.get("system")
    if isinstance(system, list):
        system = "\n\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    tools = [
        ToolSpec(t["name"], str(t.get("description") or ""), t["input_schema"])
        for t in doc.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
    ]
    asked = doc.get("max_tokens")
    max_tokens = min(asked, MAX_TOKENS) if isinstance(asked, int) and asked > 0 else MAX_TOKENS
    model = doc.get("model") if isinstance(doc.get("model"), str) else None
    return ModelRequest(model, system if isinstance(system, str) else "", from_wire(doc.get("messages")), tools, max_tokens)


async def sample(sampler: Sampler | None, path: str, body: bytes) -> tuple[dict[str, Any], bool]:
    """Ask the caller's model the request: the answer as a Messages API message, and whether the CLI asked for
    a stream. Raises SampledAnswer."""
    if path != "/v1/messages":
        raise SampledAnswer(404, NOT_SAMPLED.format(path=path))
    request = request_of(body)
    try:
        reply = await SamplingProvider(sampler).complete(request, _ignore)
    except ProviderError as e:
        reason = f"the model call failed: {e}"
        raise SampledAnswer(400, f"mcp-sessions: {reason}", reason) from None
    streamed = json.loads(body).get("stream") is True
    return message_of(reply), streamed


def cannot_sample(sampler: Any, key_var: str) -> str | None:
    """Why a message sent with `sampler` (None: no MCP client sent it) cannot run on the caller's model, or None."""
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
        f"session with provider='anthropic' to use the server's {key_var}."
    )


async def _ignore(text: str) -> None:
    """Text is not streamed on: the CLI's own stream says it (and the answer arrives whole)."""


def message_of(reply: ModelReply) -> dict[str, Any]:
    """A Messages API message of the reply. Its usage is zero: the CLI needs the field, sampling gives none."""
    content = to_wire([Message(role="assistant", content=list(reply.content), turn=0)])
    blocks = content[0]["content"] if content else []
    tool_used = any(b["type"] == "tool_use" for b in blocks)
    stop = STOP_REASONS.get(reply.stop_reason or "") or ("tool_use" if tool_used else "end_turn")
    return {
        "id": f"msg_sampled_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": reply.model or "unknown",
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def events_of(message: dict[str, Any]) -> bytes:
    """The message as the Messages API streams one: server-sent events, each block whole in one delta."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
    ]
    for index, block in enumerate(message["content"]):
        start: dict[str, Any]
        if block["type"] == "text":
            start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": index, "content_block": start},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": 0},
        },
        {"type": "message_stop"},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
