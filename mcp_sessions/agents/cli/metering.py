"""Usage read from model API responses as they pass through the proxy, streamed (SSE) or whole (JSON).

Anthropic Messages: `message_start` carries the model and the input side, `message_delta` the output
count (cumulative) and sometimes corrected input counts; a whole response has one `usage`. What was seen
is counted even if the stream is cut short: those tokens were billed.
"""

from __future__ import annotations

import json
from typing import Any

from ..providers.common import TokenUsage

MAX_JSON_BYTES = 8 << 20
"""Most of a non-streamed response kept to read its usage; a larger one is counted as unreadable."""

ANTHROPIC_FIELDS = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_creation_tokens"),
)


class AnthropicMeter:
    """Fed a response's body chunk by chunk; `usage` and `model` hold what it said so far."""

    def __init__(self, streamed: bool, requested_model: str | None) -> None:
        self.streamed = streamed
        self.model = requested_model or "unknown"
        self.usage = TokenUsage()
        self.seen = False
        """Whether the response said anything of its usage (an error response says nothing)."""
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if not self.streamed:
            if len(self._buf) > MAX_JSON_BYTES:
                self._buf.clear()
                self.streamed = True  # too large to keep: read nothing more of it
            return
        while (end := self._buf.find(b"\n\n")) >= 0:
            block = bytes(self._buf[:end]).replace(b"\r\n", b"\n")
            del self._buf[: end + 2]
            data = b"\n".join(line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:"))
            if data:
                self._event(data)

    def close(self) -> None:
        """The body has ended: read a whole JSON response."""
        if not self.streamed and self._buf:
            try:
                doc = json.loads(self._buf)
            except ValueError:
                return
            if isinstance(doc, dict):
                self._read(doc.get("usage"), doc.get("model"))

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._read(event["message"].get("usage"), event["message"].get("model"))
        elif event.get("type") == "message_delta":
            self._read(event.get("usage"), None)

    def _read(self, usage: Any, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model
        if not isinstance(usage, dict):
            return
        for wire, attr in ANTHROPIC_FIELDS:
            value = usage.get(wire)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self.usage, attr, value)
                self.seen = True
