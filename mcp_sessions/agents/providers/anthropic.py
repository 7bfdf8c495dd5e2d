"""Anthropic Messages API, streamed: POST {base_url}/v1/messages with `stream: true`.

Events: message_start (usage), content_block_start / content_block_delta (text_delta,
input_json_delta) / content_block_stop, message_delta (stop_reason, output usage), message_stop;
an `error` event mid-stream fails the call.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ...models import ContentBlock, ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from .common import (
    ModelReply,
    ModelRequest,
    ProviderError,
    StreamingHTTPProvider,
    TextCallback,
    TokenUsage,
    parse_arguments,
    sse_events,
    text_of,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


def image_block(image: ImageBlock) -> dict[str, Any]:
    """An image as Anthropic's Messages API (and Claude Code's stream-json input) takes it."""
    return {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}


def to_wire(messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic's alternation: tool results travel in user messages; consecutive same-role messages merge."""
    wire: list[dict[str, Any]] = []
    for m in messages:
        role = "assistant" if m.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        for b in m.content:
            if isinstance(b, TextBlock) and b.text:
                blocks.append({"type": "text", "text": b.text})
            elif isinstance(b, ToolUseBlock):
                blocks.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
            elif isinstance(b, ToolResultBlock):
                blocks.append({"type": "tool_result", "tool_use_id": b.tool_use_id, "content": b.content, "is_error": b.is_error})
            elif isinstance(b, ImageBlock):
                blocks.append(image_block(b))
        if not blocks:
            continue
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    return wire


def image_of(source: Any) -> ImageBlock | None:
    """An image block's base64 `source` as the session keeps it; None for another kind (a URL)."""
    if isinstance(source, dict) and source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and isinstance(data, str):
            return ImageBlock(media_type=media_type, data=data)
    return None


def from_wire(messages: Any, turn: int = 0) -> list[Message]:
    """`to_wire` the other way: a request's messages as the session's `Message`s (text, tool_use,
    tool_result and base64 image blocks; a string content is one text block; other blocks, such as thinking,
    are left out; a tool result's content is its text)."""
    out: list[Message] = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        given = [{"type": "text", "text": content}] if isinstance(content, str) else content if isinstance(content, list) else []
        blocks: list[ContentBlock] = []
        for b in given:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text" and isinstance(b.get("text"), str):
                blocks.append(TextBlock(text=b["text"]))
            elif kind == "tool_use":
                given_input = b.get("input")
                tool_input = given_input if isinstance(given_input, dict) else {}
                blocks.append(ToolUseBlock(id=str(b.get("id", "")), name=str(b.get("name", "")), input=tool_input))
            elif kind == "tool_result":
                text = text_of(b.get("content"))
                blocks.append(
                    ToolResultBlock(tool_use_id=str(b.get("tool_use_id", "")), content=text, is_error=b.get("is_error") is True)
                )
            elif kind == "image" and (image := image_of(b.get("source"))):
                blocks.append(image)
        if blocks:
            out.append(Message(role="assistant" if m.get("role") == "assistant" else "user", content=blocks, turn=turn))
    return out


class AnthropicProvider(StreamingHTTPProvider):
    name = "anthropic"
    who = "the Anthropic API"
    key_var = "ANTHROPIC_API_KEY"
    default_base_url = DEFAULT_BASE_URL

    def _request(self, request: ModelRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": to_wire(request.messages),
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in request.tools
            ]
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION, "accept": "text/event-stream"}
        if self._key:
            headers["x-api-key"] = self._key
        url = f"{self.base_url}/v1/messages"
        return url, body, headers

    async def _read(self, response: httpx.Response, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        blocks: dict[int, dict[str, Any]] = {}
        usage = TokenUsage()
        stop: str | None = None
        model = request.model or ""
        async for _, data in sse_events(response):
            try:
                event = json.loads(data)
            except ValueError:
                raise ProviderError(f"{self.who} sent a stream event that is not JSON: {data[:200]!r}.") from None
            kind = event.get("type")
            if kind == "message_start":
                message = event.get("message") or {}
                model = message.get("model") or model
                u = message.get("usage") or {}
                usage = TokenUsage(
                    input_tokens=u.get("input_tokens") or 0,
                    output_tokens=u.get("output_tokens") or 0,
                    cache_read_tokens=u.get("cache_read_input_tokens") or 0,
                    cache_creation_tokens=u.get("cache_creation_input_tokens") or 0,
                )
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                blocks[event.get("index", len(blocks))] = {
                    "type": block.get("type"),
                    "text": block.get("text") or "",
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "json": "",
                }
            elif kind == "content_block_delta":
                slot = blocks.setdefault(event.get("index", 0), {"type": "text", "text": "", "json": ""})
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    slot["text"] += delta.get("text") or ""
                    if delta.get("text"):
                        await on_text(delta["text"])
                elif delta.get("type") == "input_json_delta":
                    slot["json"] += delta.get("partial_json") or ""
            elif kind == "message_delta":
                stop = (event.get("delta") or {}).get("stop_reason") or stop
                u = event.get("usage") or {}
                if u.get("output_tokens") is not None:
                    usage.output_tokens = u["output_tokens"]
                for key, attr in (
                    ("input_tokens", "input_tokens"),
                    ("cache_read_input_tokens", "cache_read_tokens"),
                    ("cache_creation_input_tokens", "cache_creation_tokens"),
                ):
                    if u.get(key) is not None:
                        setattr(usage, attr, u[key])
            elif kind == "message_stop":
                break
            elif kind == "error":
                err = event.get("error") or {}
                retryable = err.get("type") in ("overloaded_error", "api_error", "rate_limit_error")
                raise ProviderError(
                    f"{self.who} failed mid-answer ({err.get('type')}: {err.get('message')}).", retryable=retryable
                )
        content: list[TextBlock | ToolUseBlock] = []
        for index in sorted(blocks):
            b = blocks[index]
            if b["type"] == "text" and b["text"]:
                content.append(TextBlock(text=b["text"]))
            elif b["type"] == "tool_use":
                content.append(
                    ToolUseBlock(id=b["id"] or f"toolu_{index}", name=b["name"] or "", input=parse_arguments(b["json"]))
                )
        return ModelReply(content=content, stop_reason=stop, model=model, usage=usage)
