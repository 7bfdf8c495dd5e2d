"""How the caller's model answers each model API a CLI speaks: a request body read into the session's model
request, and the reply written back as the API's JSON or as its server-sent events, each block whole."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Protocol

from ...models import ContentBlock, ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from ..providers import openai
from ..providers.anthropic import from_wire, to_wire
from ..providers.common import ModelReply, ModelRequest, ToolSpec, parse_arguments

MAX_TOKENS = 32_000
"""Most output tokens asked of the client's model in one answer (the CLI's own ask, if lower, wins)."""
STOP_REASONS = {"endTurn": "end_turn", "toolUse": "tool_use", "maxTokens": "max_tokens", "stopSequence": "stop_sequence"}
"""MCP's stop reasons by their Messages API names; another reason is told by the answer's blocks."""
FINISH_REASONS = {"endTurn": "stop", "toolUse": "tool_calls", "maxTokens": "length", "stopSequence": "stop"}
"""The same by their Chat Completions names."""


class Wire(Protocol):
    """One model API as the caller's model answers it."""

    def request_of(self, doc: dict[str, Any]) -> ModelRequest:
        """The session's model request that a request body makes."""
        ...

    def answer(self, reply: ModelReply, streamed: bool) -> tuple[str, bytes]:
        """The content type and body of the answer, streamed (server-sent events) or whole."""
        ...


def tokens_asked(value: Any) -> int:
    return min(value, MAX_TOKENS) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else MAX_TOKENS


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


class MessagesWire:
    """The Anthropic Messages API (Claude Code)."""

    def request_of(self, doc: dict[str, Any]) -> ModelRequest:
        system = doc.get("system")
        if isinstance(system, list):
            system = "\n\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
        tools = [
            ToolSpec(t["name"], str(t.get("description") or ""), t["input_schema"])
            for t in doc.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
        ]
        model = doc.get("model") if isinstance(doc.get("model"), str) else None
        system = system if isinstance(system, str) else ""
        return ModelRequest(model, system, from_wire(doc.get("messages")), tools, tokens_asked(doc.get("max_tokens")))

    def answer(self, reply: ModelReply, streamed: bool) -> tuple[str, bytes]:
        message = self.message_of(reply)
        return ("text/event-stream", self.events_of(message)) if streamed else ("application/json", json.dumps(message).encode())

    def message_of(self, reply: ModelReply) -> dict[str, Any]:
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

    @staticmethod
    def events_of(message: dict[str, Any]) -> bytes:
        """The message as the Messages API streams one, each block whole in one delta."""
        events: list[dict[str, Any]] = [{"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}]
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
        stopped = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        events += [{"type": "message_delta", "delta": stopped, "usage": {"output_tokens": 0}}, {"type": "message_stop"}]
        return sse(events)


class ResponsesWire:
    """OpenAI Responses (Codex): `instructions` and developer messages make the system prompt; `message`,
    `function_call` and `function_call_output` items the conversation; `function` tools the tools. Other
    items (reasoning, other tool kinds) are left out. The answer is one response of `message` and
    `function_call` items, with no usage (sampling tells none)."""

    def request_of(self, doc: dict[str, Any]) -> ModelRequest:
        system = [doc["instructions"]] if isinstance(doc.get("instructions"), str) else []
        given = doc.get("input")
        items = [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else given
        messages: list[Message] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            kind, role = item.get("type", "message"), item.get("role")
            blocks: list[ContentBlock] = []
            if kind == "message" and role in ("system", "developer"):
                system.append(self._text(item.get("content")))
            elif kind == "message":
                text, role = self._text(item.get("content")), "assistant" if role == "assistant" else "user"
                blocks = [TextBlock(text=text)] if text else []
                blocks += self._images(item.get("content"))
            elif kind == "function_call":
                arguments = item.get("arguments")
                blocks, role = (
                    [
                        ToolUseBlock(
                            id=str(item.get("call_id", "")),
                            name=str(item.get("name", "")),
                            input=parse_arguments(arguments if isinstance(arguments, str) else ""),
                        )
                    ],
                    "assistant",
                )
            elif kind == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else self._text(output)
                blocks, role = [ToolResultBlock(tool_use_id=str(item.get("call_id", "")), content=text)], "user"
            if not blocks:
                continue
            if messages and messages[-1].role == role:  # one message per side: calls with their results
                messages[-1].content.extend(blocks)
            else:
                messages.append(Message(role=role, content=blocks, turn=0))
        tools = [
            ToolSpec(t["name"], str(t.get("description") or ""), t.get("parameters") or {"type": "object"})
            for t in doc.get("tools") or []
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
        ]
        model = doc.get("model") if isinstance(doc.get("model"), str) else None
        return ModelRequest(model, "\n\n".join(system), messages, tools, tokens_asked(doc.get("max_output_tokens")))

    @staticmethod
    def _images(content: Any) -> list[ImageBlock]:
        """The `input_image` parts given as data URLs (`data:image/png;base64,...`); others are left out."""
        parts = (
            [p for p in content if isinstance(p, dict) and p.get("type") == "input_image"] if isinstance(content, list) else []
        )
        return [image for p in parts if (image := openai.image_of_url(p.get("image_url")))]

    @staticmethod
    def _text(content: Any) -> str:
        if isinstance(content, str):
            return content
        parts = [c.get("text") for c in content if isinstance(c, dict)] if isinstance(content, list) else []
        return "\n".join(p for p in parts if isinstance(p, str))

    def answer(self, reply: ModelReply, streamed: bool) -> tuple[str, bytes]:
        items: list[dict[str, Any]] = []
        text = "\n".join(b.text for b in reply.content if isinstance(b, TextBlock))
        if text:
            content = [{"type": "output_text", "text": text, "annotations": []}]
            items.append(
                {
                    "type": "message",
                    "id": f"msg_{secrets.token_hex(8)}",
                    "role": "assistant",
                    "status": "completed",
                    "content": content,
                }
            )
        for b in reply.content:
            if isinstance(b, ToolUseBlock):
                call = {"type": "function_call", "id": f"fc_{b.id}", "call_id": b.id, "name": b.name}
                items.append({**call, "arguments": json.dumps(b.input), "status": "completed"})
        response = {
            "id": f"resp_{secrets.token_hex(12)}",
            "object": "response",
            "created_at": int(time.time()),
            "model": reply.model or "unknown",
            "status": "completed",
            "output": items,
        }
        if not streamed:
            return "application/json", json.dumps(response).encode()
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": {**response, "status": "in_progress", "output": []}}
        ]
        for index, item in enumerate(items):
            events.append({"type": "response.output_item.added", "output_index": index, "item": item})
            if item["type"] == "message":
                delta = {"item_id": item["id"], "output_index": index, "content_index": 0, "delta": text}
                events.append({"type": "response.output_text.delta", **delta})
            events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        events.append({"type": "response.completed", "response": response})
        return "text/event-stream", sse(events)


class ChatWire:
    """OpenAI Chat Completions (OpenCode): system and developer messages make the system prompt; user,
    assistant (text and `tool_calls`) and tool messages the conversation, read by the OpenAI provider's own
    mapping; `function` tools the tools. The answer is one `chat.completion`, or its `chat.completion.chunk`
    stream (the text in one delta, each tool call whole in one, then the finish reason and `[DONE]`), with
    zero usage where it is asked for (sampling tells none)."""

    def request_of(self, doc: dict[str, Any]) -> ModelRequest:
        system, messages = openai.from_wire(doc.get("messages"))
        tools = [
            ToolSpec(f["name"], str(f.get("description") or ""), f.get("parameters") or {"type": "object"})
            for t in doc.get("tools") or []
            if isinstance(t, dict) and isinstance(f := t.get("function"), dict) and isinstance(f.get("name"), str)
        ]
        model = doc.get("model") if isinstance(doc.get("model"), str) else None
        asked = doc.get("max_completion_tokens") or doc.get("max_tokens")
        return ModelRequest(model, system, messages, tools, tokens_asked(asked))

    def answer(self, reply: ModelReply, streamed: bool) -> tuple[str, bytes]:
        (message,) = openai.to_wire("", [Message(role="assistant", content=list(reply.content), turn=0)])
        calls = message.get("tool_calls") or []
        finish = FINISH_REASONS.get(reply.stop_reason or "") or ("tool_calls" if calls else "stop")
        head: dict[str, Any] = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "created": int(time.time()),
            "model": reply.model or "unknown",
        }
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not streamed:
            choice = {"index": 0, "message": message, "finish_reason": finish}
            completion = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            return "application/json", json.dumps(completion).encode()
        deltas: list[dict[str, Any]] = [{"role": "assistant", **({"content": message["content"]} if message["content"] else {})}]
        deltas += [{"tool_calls": [{"index": i, **call}]} for i, call in enumerate(calls)]
        chunks: list[dict[str, Any]] = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
        chunks.append({"index": 0, "delta": {}, "finish_reason": finish})
        events = [{**head, "object": "chat.completion.chunk", "choices": [c]} for c in chunks]
        events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
        return "text/event-stream", body + b"data: [DONE]\n\n"
