"""OpenAI-compatible Chat Completions, streamed: OpenAI, a LiteLLM proxy, vLLM, Ollama, llama.cpp's server.

POST {base_url}/chat/completions with `stream: true` and `stream_options.include_usage`; the reply
arrives as SSE chunks of `choices[0].delta` (content, tool_calls fragments by index) and a last
chunk with `usage`.
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def to_wire(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "assistant":
            text = "".join(b.text for b in m.content if isinstance(b, TextBlock))
            calls = [
                {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                for b in m.content
                if isinstance(b, ToolUseBlock)
            ]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            wire.append(entry)
        elif m.role == "tool":
            for b in m.content:
                if isinstance(b, ToolResultBlock):
                    wire.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": b.content})
        elif any(isinstance(b, ImageBlock) for b in m.content):  # parts: the text, then each image as a data URL
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.text()}] if m.text() else []
            parts += [
                {"type": "image_url", "image_url": {"url": f"data:{b.media_type};base64,{b.data}"}}
                for b in m.content
                if isinstance(b, ImageBlock)
            ]
            wire.append({"role": "user", "content": parts})
        else:
            wire.append({"role": "user", "content": m.text()})
    return wire


def image_of_url(url: Any) -> ImageBlock | None:
    """An image given as a data URL (`data:image/png;base64,...`, as `to_wire` writes one); None for another URL."""
    head, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    if comma and head.startswith("data:") and head.endswith(";base64"):
        return ImageBlock(media_type=head[5:-7], data=data)
    return None


def from_wire(wire: Any, turn: int = 0) -> tuple[str, list[Message]]:
    """`to_wire` the other way: a request's messages as its system prompt (its system and developer messages)
    and the session's `Message`s. Consecutive tool messages make one message of results; a user's `image_url`
    parts given as data URLs are images; other parts than text are named as left out."""
    system: list[str] = []
    out: list[Message] = []
    for m in wire if isinstance(wire, list) else []:
        role = m.get("role") if isinstance(m, dict) else None
        if role is None:
            continue
        content = m.get("content")
        blocks: list[ContentBlock] = []
        if role == "user" and isinstance(content, list):  # images taken out, the rest read as text
            kept = []
            for part in content:
                given = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
                image = image_of_url(given.get("url") if isinstance(given, dict) else given)
                blocks += [image] if image else []
                kept += [] if image else [part]
            content = kept
        text = text_of(content)
        if role in ("system", "developer"):
            system.append(text)
        elif role == "tool":
            blocks.append(ToolResultBlock(tool_use_id=str(m.get("tool_call_id", "")), content=text))
        elif role == "assistant":
            blocks += [TextBlock(text=text)] if text else []
            for call in m.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    arguments = fn.get("arguments")
                    tool_input = parse_arguments(arguments if isinstance(arguments, str) else "")
                    blocks.append(ToolUseBlock(id=str(call.get("id", "")), name=str(fn.get("name", "")), input=tool_input))
        elif text:
            blocks.insert(0, TextBlock(text=text))
        if not blocks:
            continue
        if role == "tool" and out and out[-1].role == "tool":
            out[-1].content += blocks
        else:
            side = "tool" if role == "tool" else "assistant" if role == "assistant" else "user"
            out.append(Message(role=side, content=blocks, turn=turn))
    return "\n\n".join(s for s in system if s), out


class OpenAIProvider(StreamingHTTPProvider):
    name = "openai"
    who = "the OpenAI-compatible API"
    key_var = "OPENAI_API_KEY"
    default_base_url = DEFAULT_BASE_URL

    def _request(self, request: ModelRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": to_wire(request.system, request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
                for t in request.tools
            ]
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        url = f"{self.base_url}/chat/completions"
        return url, body, headers

    async def _read(self, response: httpx.Response, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage = TokenUsage()
        model = request.model or ""
        async for _, data in sse_events(response):
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ProviderError(f"{self.who} sent a stream chunk that is not JSON: {data[:200]!r}.") from None
            if "error" in chunk:
                err = chunk["error"]
                raise ProviderError(f"{self.who} failed mid-answer: {err.get('message', err) if isinstance(err, dict) else err}.")
            model = chunk.get("model") or model
            if chunk.get("usage"):
                u = chunk["usage"]
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                usage = TokenUsage(
                    input_tokens=max((u.get("prompt_tokens") or 0) - cached, 0),
                    output_tokens=u.get("completion_tokens") or 0,
                    cache_read_tokens=cached,
                )
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text.append(delta["content"])
                    await on_text(delta["content"])
                for call in delta.get("tool_calls") or []:
                    slot = calls.setdefault(call.get("index", len(calls)), {"id": "", "name": "", "arguments": ""})
                    slot["id"] = call.get("id") or slot["id"]
                    fn = call.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
        content: list[TextBlock | ToolUseBlock] = []
        if text:
            content.append(TextBlock(text="".join(text)))
        for index in sorted(calls):
            c = calls[index]
            content.append(ToolUseBlock(id=c["id"] or f"call_{index}", name=c["name"], input=parse_arguments(c["arguments"])))
        return ModelReply(content=content, stop_reason=finish, model=model, usage=usage)
