"""Usage read from model API responses as they pass through the proxy, streamed (SSE) or whole (JSON).

What was seen is counted even if a stream is cut short: those tokens were billed.
- Anthropic Messages: `message_start` carries the model and the input side, `message_delta` the output
  count (cumulative) and sometimes corrected input counts; a whole response has one `usage`.
- OpenAI Responses: `response.completed` (or `.incomplete`, `.failed`) carries the response with its
  `usage` (`input_tokens` with `input_tokens_details.cached_tokens` among them, `output_tokens`).
- OpenAI Chat Completions: the last chunk carries `usage` (`prompt_tokens`, `completion_tokens`,
  `prompt_tokens_details.cached_tokens`) when the request asked for it (the proxy asks).
"""

from __future__ import annotations

import json
from typing import Any

from ..providers.common import TokenUsage

MAX_JSON_BYTES = 8 << 20
"""Most of a non-streamed response kept to read its usage; a larger one is not read."""


def count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Meter:
    """Fed a response's body chunk by chunk; `usage` and `model` hold what it said so far."""

    def __init__(self, streamed: bool, requested_model: str | None) -> None:
        self.streamed = streamed
        self.model = requested_model or "unknown"
        self.usage = TokenUsage()
        self.seen = False
        """Whether the response said anything of its usage (an error response says nothing)."""
        self._buf = bytearray()
        self._gave_up = False

    def feed(self, chunk: bytes) -> None:
        if self._gave_up:
            return
        self._buf += chunk
        if not self.streamed:
            if len(self._buf) > MAX_JSON_BYTES:  # too large to keep: read nothing more of it
                self._buf.clear()
                self._gave_up = True
            return
        if b"\r" in chunk:
            self._buf[:] = self._buf.replace(b"\r\n", b"\n")
        while (end := self._buf.find(b"\n\n")) >= 0:
            block = bytes(self._buf[:end])
            del self._buf[: end + 2]
            data = b"\n".join(line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:"))
            if data and data != b"[DONE]":
                self._parse(data, streamed=True)

    def close(self) -> None:
        """The body has ended: read a whole JSON response."""
        if not self.streamed and not self._gave_up and self._buf:
            self._parse(bytes(self._buf), streamed=False)

    def _parse(self, data: bytes, streamed: bool) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            return
        if isinstance(doc, dict):
            self.read(doc, streamed)

    def read(self, doc: dict[str, Any], streamed: bool) -> None:
        """Take what one event (or the whole response) says."""
        raise NotImplementedError

    def _model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model


class AnthropicMeter(Meter):
    FIELDS = (
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
        ("cache_read_input_tokens", "cache_read_tokens"),
        ("cache_creation_input_tokens", "cache_creation_tokens"),
    )

    def read(self, doc: dict[str, Any], streamed: bool) -> None:
        if not streamed:
            self._take(doc.get("usage"), doc.get("model"))
        elif doc.get("type") == "message_start" and isinstance(doc.get("message"), dict):
            self._take(doc["message"].get("usage"), doc["message"].get("model"))
        elif doc.get("type") == "message_delta":
            self._take(doc.get("usage"), None)

    def _take(self, usage: Any, model: Any) -> None:
        self._model(model)
        if isinstance(usage, dict):
            for wire, attr in self.FIELDS:
                if (value := count(usage.get(wire))) is not None:
                    setattr(self.usage, attr, value)
                    self.seen = True


class OpenAIMeter(Meter):
    """Responses and Chat Completions alike: the usage is where the API puts it, named as it names it."""

    def read(self, doc: dict[str, Any], streamed: bool) -> None:
        nested = doc.get("response")
        found: dict[str, Any] = nested if isinstance(nested, dict) else doc  # Responses' events nest it
        self._model(found.get("model"))
        usage = found.get("usage")
        if not isinstance(usage, dict):
            return
        given = count(usage.get("input_tokens", usage.get("prompt_tokens")))
        output = count(usage.get("output_tokens", usage.get("completion_tokens")))
        details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        cached = count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if given is None and output is None:
            return
        self.usage = TokenUsage(
            input_tokens=max(0, (given or 0) - (cached or 0)), output_tokens=output or 0, cache_read_tokens=cached or 0
        )
        self.seen = True
