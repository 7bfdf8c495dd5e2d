"""What every provider speaks: a request in the session's own message format, a reply of content
blocks with token usage, and errors as one sentence a caller can act on.

Providers translate `Message`s (roles user, assistant and tool; blocks text, tool_use, tool_result)
to their wire format and back, stream text through `on_text`, and never put a key in an error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import httpx

from ...models import Message, TextBlock, ToolUseBlock

TextCallback = Callable[[str], Awaitable[None]]
ProviderName = Literal["openai", "anthropic", "sampling"]
PROVIDER_HELP = "where the model runs; 'sampling' asks your own model through MCP sampling (default: the server's)"
"""The `provider` create option, one for every agent that takes it (the create_session schema merges them)."""


class ProviderError(Exception):
    """A model call failed. The message is one sentence for the caller, free of keys."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@dataclass
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass
class ModelRequest:
    model: str | None
    system: str
    messages: list[Message]
    tools: list[ToolSpec]
    max_tokens: int = 8192


@dataclass
class TokenUsage:
    """Tokens of one model call. `input_tokens` excludes the cached ones, which are counted apart."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


@dataclass
class ModelReply:
    content: list[TextBlock | ToolUseBlock]
    stop_reason: str | None
    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)


class Provider(Protocol):
    name: str

    async def complete(self, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        """One model call. Text is streamed to `on_text` as it arrives. Raises `ProviderError`."""
        ...


def redact(text: str, secrets: list[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def error_message(body: bytes) -> str:
    """The human part of an error body in the OpenAI or Anthropic shape, else the body's start."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "no details"
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"][:500]
        if isinstance(err, str):
            return err[:500]
    return json.dumps(doc)[:300]


def http_error(status: int, body: bytes, headers: httpx.Headers, who: str, key_var: str) -> ProviderError:
    """The sentence for a non-2xx answer of a model API."""
    detail = error_message(body)
    if status in (401, 403):
        return ProviderError(f"{who} refused the credentials ({status}: {detail}); check {key_var}.")
    if status == 429:
        retry_after = _seconds(headers.get("retry-after"))
        return ProviderError(
            f"{who} is rate limiting or out of quota (429: {detail}); wait and send the message again.",
            retryable=True,
            retry_after_s=retry_after,
        )
    if status == 404:
        return ProviderError(f"{who} answered 404 ({detail}); check the model name and the base URL.")
    if status >= 500 or status == 529:
        return ProviderError(f"{who} failed with an internal error ({status}: {detail}); try again later.", retryable=True)
    return ProviderError(f"{who} rejected the request ({status}: {detail}).")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def connect_error(e: Exception, who: str, url: str) -> ProviderError:
    reason = type(e).__name__ if not str(e) else str(e)
    return ProviderError(f"cannot reach {who} at {url} ({reason}); check that it runs and the base URL.", retryable=True)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str]]:
    """(event name, data) pairs of a server-sent event stream."""
    event: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield event, "\n".join(data)


async def with_retries(call: Callable[[], Awaitable[ModelReply]], retries: int, backoff_s: float) -> ModelReply:
    """Run `call`, again after a pause on errors worth retrying (429, 5xx, unreachable), at most `retries` more times."""
    attempt = 0
    while True:
        try:
            return await call()
        except ProviderError as e:
            if not e.retryable or attempt >= retries:
                raise
            pause = e.retry_after_s if e.retry_after_s is not None else backoff_s * 2**attempt
            await anyio.sleep(min(pause, 30.0))
            attempt += 1


def parse_arguments(text: str) -> dict[str, Any]:
    """Tool arguments the model streamed as JSON; invalid JSON becomes an input the tool reports as an error."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"__invalid_json__": text[:2000]}
    return value if isinstance(value, dict) else {"__invalid_json__": text[:2000]}


def text_of(content: Any) -> str:
    """The text of a content given as a string or as parts (a tool result's, a chat message's): its text parts
    joined, others named as left out."""
    if isinstance(content, str):
        return content
    parts = []
    for b in content if isinstance(content, list) else []:
        if isinstance(b, dict) and b.get("type") == "text":
            parts.append(str(b.get("text", "")))
        elif isinstance(b, dict):
            parts.append(f"[{b.get('type')} block left out]")
    return "\n".join(parts)


class StreamingHTTPProvider:
    """A model API reached over HTTP with a streamed answer. Retries, key redaction and transport errors
    live here; a subclass says how to ask (`_request`) and how to read the stream (`_read`)."""

    name: str
    who: str
    """How errors name the API, e.g. "the Anthropic API"."""
    key_var: str
    """The environment variable that holds the key, named in authentication errors."""
    default_base_url: str

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        retries: int = 2,
        backoff_s: float = 1.0,
    ) -> None:
        self._client = client
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self._key = api_key
        self._retries, self._backoff_s = retries, backoff_s

    async def complete(self, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        try:
            return await with_retries(lambda: self._once(request, on_text), self._retries, self._backoff_s)
        except ProviderError as e:
            raise ProviderError(redact(str(e), [self._key])) from None

    async def _once(self, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        url, body, headers = self._request(request)
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code >= 300:
                    raise http_error(response.status_code, await response.aread(), response.headers, self.who, self.key_var)
                return await self._read(response, request, on_text)
        except httpx.TransportError as e:
            raise connect_error(e, self.who, self.base_url) from None

    def _request(self, request: ModelRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The URL, JSON body and headers of one streamed call."""
        raise NotImplementedError

    async def _read(self, response: httpx.Response, request: ModelRequest, on_text: TextCallback) -> ModelReply:
        raise NotImplementedError
