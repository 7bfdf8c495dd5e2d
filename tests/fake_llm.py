"""A scriptable model server for tests: real HTTP on 127.0.0.1, speaking the documented wire formats of
OpenAI Chat Completions (`POST /v1/chat/completions`, SSE with `stream: true`), OpenAI Responses
(`POST /v1/responses`, SSE) and Anthropic Messages (`POST /v1/messages`, SSE), error bodies included.

    with FakeLLM() as llm:                      # starts on an ephemeral port, in a thread
        llm.script(
            Reply(tool_calls=[ToolCall("bash", {"command": "echo hi"})]),
            Reply(text="All done."),
            Fail(429, "slow down"),
        )
        settings = Settings(..., openai_base_url=llm.openai_base_url, anthropic_base_url=llm.url)
        ...
        llm.requests[0].body["tools"]           # what the agent sent, parsed JSON
        llm.requests[1].headers["authorization"]

Each request takes the next scripted response, whichever API it came to; with none left the server
answers 500 "no scripted response left". `Reply(hang=True)` streams its text and then keeps the
connection open (before the end of its message) until the client goes away (for interrupt tests);
`chunk_delay_s` slows each chunk.
"""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(4))


@dataclass
class Reply:
    """One streamed answer: optional text, then tool calls, then usage."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    model: str | None = None
    """The model name the answer reports; default: the one asked for."""
    chunk_delay_s: float = 0.0
    hang: bool = False
    """After the text, keep the stream open (sending nothing) until the client disconnects."""


@dataclass
class Fail:
    """An HTTP error with the API's error body, e.g. Fail(401, "invalid x-api-key")."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    """When it arrived (`time.monotonic()`), for benchmarks that time what reaches the model."""


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data) if not isinstance(data, str) else data}\n\n".encode()


def openai_error(failure: Fail) -> JSONResponse:
    """An error in the OpenAI APIs' shape."""
    body = {"error": {"message": failure.message, "type": "fake_error", "param": None, "code": str(failure.status)}}
    return JSONResponse(body, status_code=failure.status, headers=failure.headers)


async def _until_gone(request: Request) -> None:
    """A hanging answer: nothing more until the client goes away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeLLM:
    def __init__(self) -> None:
        self._script: queue.Queue[Reply | Fail] = queue.Queue()
        self.requests: list[Recorded] = []
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def script(self, *responses: Reply | Fail) -> None:
        """Queue responses; each request takes the next one."""
        for r in responses:
            self._script.put(r)

    @property
    def pending(self) -> int:
        """Scripted responses not yet taken."""
        return self._script.qsize()

    # -- the server ------------------------------------------------------------------------------

    def __enter__(self) -> FakeLLM:
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake model server did not start")
            threading.Event().wait(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _take(self, request: Request) -> tuple[Reply | Fail | None, dict[str, Any]]:
        body = await request.json()
        self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        try:
            return self._script.get_nowait(), body
        except queue.Empty:
            return None, body

    async def _next(self, request: Request) -> tuple[Reply | Fail, dict[str, Any]]:
        scripted, body = await self._take(request)
        return (Fail(500, "no scripted response left") if scripted is None else scripted), body

    # -- OpenAI Chat Completions -----------------------------------------------------------------

    async def _openai(self, request: Request) -> Response:
        scripted, body = await self._next(request)
        if isinstance(scripted, Fail):
            return openai_error(scripted)
        reply = scripted
        model = reply.model or body.get("model") or "fake"
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        cid = "chatcmpl-" + secrets.token_hex(6)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        async def stream() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in _pieces(reply.text):
                await asyncio.sleep(reply.chunk_delay_s)
                yield chunk({"content": piece})
            if reply.hang:
                await _until_gone(request)
                return
            for i, call in enumerate(reply.tool_calls):
                args = json.dumps(call.arguments)
                yield chunk(
                    {
                        "tool_calls": [
                            {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
                        ]
                    }
                )
                for piece in _pieces(args, 10):
                    await asyncio.sleep(reply.chunk_delay_s)
                    yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
            if include_usage:
                prompt = reply.input_tokens + reply.cache_read_tokens
                yield _sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": reply.output_tokens,
                            "total_tokens": prompt + reply.output_tokens,
                            "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens},
                        },
                    }
                )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- Anthropic Messages ----------------------------------------------------------------------

    async def _anthropic(self, request: Request) -> Response:
        scripted, body = await self._next(request)
        if isinstance(scripted, Fail):
            kind = ANTHROPIC_ERROR_TYPES.get(scripted.status, "api_error")
            return JSONResponse(
                {"type": "error", "error": {"type": kind, "message": scripted.message}},
                status_code=scripted.status,
                headers=scripted.headers,
            )
        reply = scripted
        model = reply.model or body.get("model") or "fake"

        async def stream() -> AsyncIterator[bytes]:
            start = {
                "type": "message_start",
                "message": {
                    "id": "msg_" + secrets.token_hex(6),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": reply.input_tokens,
                        "cache_read_input_tokens": reply.cache_read_tokens,
                        "cache_creation_input_tokens": reply.cache_creation_tokens,
                        "output_tokens": 1,
                    },
                },
            }
            yield _sse(start, "message_start")
            index = 0
            if reply.text or reply.hang:
                yield _sse(
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    "content_block_start",
                )
                for piece in _pieces(reply.text):
                    await asyncio.sleep(reply.chunk_delay_s)
                    yield _sse(
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                        "content_block_delta",
                    )
                if reply.hang:
                    await _until_gone(request)
                    return
                yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
                index = 1
            for call in reply.tool_calls:
                yield _sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
                    },
                    "content_block_start",
                )
                for piece in _pieces(json.dumps(call.arguments), 10):
                    await asyncio.sleep(reply.chunk_delay_s)
                    yield _sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                        "content_block_delta",
                    )
                yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
                index += 1
            stop = "tool_use" if reply.tool_calls else "end_turn"
            yield _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": reply.output_tokens},
                },
                "message_delta",
            )
            yield _sse({"type": "message_stop"}, "message_stop")

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- OpenAI Responses ------------------------------------------------------------------------

    async def _responses(self, request: Request) -> Response:
        scripted, body = await self._next(request)
        if isinstance(scripted, Fail):
            return openai_error(scripted)
        reply = scripted
        response: dict[str, Any] = {
            "id": "resp_" + secrets.token_hex(6),
            "object": "response",
            "model": reply.model or body.get("model") or "fake",
        }
        items: list[dict[str, Any]] = []
        if reply.text:
            items.append(
                {
                    "type": "message",
                    "id": "msg_" + secrets.token_hex(4),
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
                }
            )
        items += [
            {
                "type": "function_call",
                "id": "fc_" + call.id,
                "call_id": call.id,
                "name": call.name,
                "arguments": json.dumps(call.arguments),
                "status": "completed",
            }
            for call in reply.tool_calls
        ]
        usage = {
            "input_tokens": reply.input_tokens + reply.cache_read_tokens,
            "input_tokens_details": {"cached_tokens": reply.cache_read_tokens},
            "output_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.cache_read_tokens + reply.output_tokens,
        }

        async def stream() -> AsyncIterator[bytes]:
            yield _sse(
                {"type": "response.created", "response": {**response, "status": "in_progress", "output": []}}, "response.created"
            )
            for index, item in enumerate(items):
                yield _sse(
                    {"type": "response.output_item.added", "output_index": index, "item": item}, "response.output_item.added"
                )
                for piece in _pieces(reply.text) if item["type"] == "message" else []:
                    await asyncio.sleep(reply.chunk_delay_s)
                    yield _sse(
                        {
                            "type": "response.output_text.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "content_index": 0,
                            "delta": piece,
                        },
                        "response.output_text.delta",
                    )
                if reply.hang:
                    await _until_gone(request)
                    return
                yield _sse(
                    {"type": "response.output_item.done", "output_index": index, "item": item}, "response.output_item.done"
                )
            if reply.hang:
                await _until_gone(request)
                return
            done = {**response, "status": "completed", "output": items, "usage": usage}
            yield _sse({"type": "response.completed", "response": done}, "response.completed")

        return StreamingResponse(stream(), media_type="text/event-stream")
