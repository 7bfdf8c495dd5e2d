"""The model-API proxy: how a CLI in a sandbox reaches its model while the key stays in the server.

One proxy per session, served on whatever byte streams reach it from the sandbox (HTTP/1.1 spoken over
an `anyio.abc.ByteStream` with h11, so any channel into a sandbox can carry it). For each request it:
- allows only the model API's own paths (method and path exact, query aside: nothing encoded, no `..`);
- refuses a request when no turn of the session runs, or when a budget over the session is reached (an
  error in the API's own format, which the CLI shows), so the turn ends with that reason;
- drops the CLI's credentials (it holds a placeholder), sets the real key from the server's settings,
  and forwards to the configured upstream (Anthropic, a LiteLLM proxy, any server of that API);
- speaks one API per upstream (`Dialect`): Anthropic Messages (key in `x-api-key`), or OpenAI Responses and
  Chat Completions (key as `Authorization: Bearer`; a streamed chat request is made to ask for its usage);
- relays the response as it comes (chunked, never close-delimited: Claude Code loses the end of a body
  ended by a close and retries it, billed), counting its usage and cost into the running turn;
- stops the upstream request when the CLI goes away, so nothing is billed for a reader that left;
- or, for a turn whose model is the caller's (`provider="sampling"`), forwards nothing and answers from the
  model of the client that sent the message, through MCP sampling (sampled.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
import httpx
from anyio.abc import ByteStream

from ...models import Usage
from ..pricing import PriceTable, add_usage
from ..providers.common import TokenUsage, error_message, redact
from ..providers.sampling import Sampler
from .metering import AnthropicMeter, Meter, OpenAIMeter
from .sampled import SampledAnswer, sample

log = logging.getLogger(__name__)

PLACEHOLDER_KEY = "sk-mcp-sessions-placeholder"
"""The key a CLI is given: a value for its own checks, replaced by the proxy, worth nothing elsewhere."""

MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class Dialect:
    """One model API as the proxy speaks it: its paths, how its key is sent, how its usage and errors look."""

    name: str
    paths: frozenset[tuple[str, str]]
    """(method, path) pairs allowed, the path without its query."""
    key_header: Callable[[str], tuple[str, str]]
    meter: type[Meter]
    base_holds: str = ""
    """What the upstream's base URL ends with, by the API's custom (OpenAI's `.../v1`): dropped from the path."""

    def error(self, kind: str, message: str) -> dict[str, Any]:
        """An error body in the API's own shape, which its CLIs print."""
        if self.name == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"type": kind, "message": message, "code": None, "param": None}}


ANTHROPIC = Dialect(
    "anthropic",
    frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models")}),
    lambda key: ("x-api-key", key),
    AnthropicMeter,
)
OPENAI = Dialect(
    "openai",
    frozenset({("POST", "/v1/responses"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")}),
    lambda key: ("authorization", f"Bearer {key}"),
    OpenAIMeter,
    "/v1",
)
"""OpenAI Responses and Chat Completions, as OpenAI, a LiteLLM proxy or any compatible server serves them
(the upstream's base URL ends with `/v1`, as OPENAI_BASE_URL does)."""
DROPPED = {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "cookie",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
"""Request headers not passed on: credentials (the real one is set), and what belongs to one hop."""
DROPPED_BACK = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "date", "server"}
"""Response headers not passed back: the body is re-framed (chunked), and the upstream's connection is its own."""


@dataclass
class ProxyTurn:
    """The turn a session's model requests count into, while it runs."""

    usage: Usage
    over_budget: Callable[[Usage], Awaitable[str | None]] | None = None
    refused: str | None = None
    """Why the proxy refused a request of this turn (a budget reached, the upstream refusing the server's key):
    the turn fails with it, and its later requests are refused with it."""
    refusal: anyio.Event = field(default_factory=anyio.Event)
    """Set with `refused`: a CLI told so is expected to end its turn (exec_turn stops one that does not)."""
    requests: int = 0
    first_request: anyio.Event = field(default_factory=anyio.Event)
    sampling: bool = False
    """The model is the caller's: requests are answered through `sampler` (MCP sampling), never forwarded."""
    sampler: Sampler | None = None
    emit: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None

    def refuse(self, reason: str | None) -> None:
        """A request of this turn was refused for `reason` (None: refused for no reason of the turn's)."""
        if reason:
            self.refused = reason
            self.refusal.set()


@dataclass(frozen=True)
class Upstream:
    """Where requests go and the key they get (None: sent without one, e.g. a local server)."""

    base_url: str
    key: str | None
    dialect: Dialect = ANTHROPIC
    key_env: str = "the server's settings"
    """Where the key comes from, for the sentence that says it was refused."""


class ModelProxy:
    """A session's proxy: `handle` serves one connection from its sandbox; `turn` is set while a turn runs."""

    def __init__(self, upstream: Upstream, prices: PriceTable, client: Callable[[], httpx.AsyncClient]) -> None:
        self.upstream = upstream
        self.prices = prices
        self._client = client
        self.turn: ProxyTurn | None = None

    async def handle(self, stream: ByteStream) -> None:
        """Serve HTTP/1.1 requests on `stream` until the CLI closes it."""
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while True:
                    got = await self._read_request(conn, stream)
                    if got is None:
                        return
                    await self._answer(conn, stream, *got)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, h11.ProtocolError):
                return  # the CLI went away or spoke no HTTP: nothing to answer

    async def _read_request(self, conn: h11.Connection, stream: ByteStream) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    conn.receive_data(b"")
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES and request is not None:
                    await self._error(conn, stream, request, 413, "request_too_large", "The request body is too large.")
                    return None
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            else:  # closed, or paused at the end of a cycle
                return None

    async def _answer(self, conn: h11.Connection, stream: ByteStream, request: h11.Request, body: bytes) -> None:
        method = request.method.decode("ascii", "replace")
        path, _, query = request.target.decode("latin-1").partition("?")
        if (method, path) not in self.upstream.dialect.paths:
            allowed = ", ".join(f"{m} {p}" for m, p in sorted(self.upstream.dialect.paths))
            message = f"mcp-sessions model proxy: {method} {path[:200]} is not a model API path (allowed: {allowed})."
            await self._error(conn, stream, request, 403, "permission_error", message)
            return
        turn = self.turn
        if turn is None:
            message = "mcp-sessions model proxy: no turn of this session is running; model requests are taken only during one."
            await self._error(conn, stream, request, 400, "invalid_request_error", message)
            return
        if turn.refused is not None:  # refused already (its key, its budget): a retry is not sent on
            await self._error(conn, stream, request, 400, "invalid_request_error", f"mcp-sessions: {turn.refused}")
            return
        if turn.over_budget is not None and (reason := await turn.over_budget(turn.usage)):
            turn.refuse(reason)
            await self._error(conn, stream, request, 400, "invalid_request_error", f"mcp-sessions: {reason}")
            return
        turn.requests += 1
        turn.first_request.set()
        if turn.sampling:
            await self._sample(conn, stream, request, path, body, turn)
        else:
            await self._forward(conn, stream, request, method, path, query, body, turn)

    async def _sample(
        self, conn: h11.Connection, stream: ByteStream, request: h11.Request, path: str, body: bytes, turn: ProxyTurn
    ) -> None:
        """Answer from the caller's model; if the CLI goes away meanwhile (an interrupt), withdraw the question."""
        got: list[Any] = []

        async def ask(scope: anyio.CancelScope) -> None:
            try:
                got.append(await sample(turn.sampler, path, body))
            except SampledAnswer as e:
                got.append(e)
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_client, conn, stream, tg.cancel_scope)
            tg.start_soon(ask, tg.cancel_scope)
        if not got:
            return
        if isinstance(got[0], SampledAnswer):
            turn.refuse(got[0].reason)
            kind = "invalid_request_error" if got[0].http_status == 400 else "not_found_error"
            await self._error(conn, stream, request, got[0].http_status, kind, str(got[0]))
            return
        reply, content_type, payload = got[0]
        model = reply.model or "unknown"
        self.count(turn, model, TokenUsage())
        if turn.emit is not None:
            said = {"request": turn.requests, "model": model, "stop_reason": reply.stop_reason, "tokens": None}
            await turn.emit("model.sampled", said)
        headers = [("content-type", content_type), ("content-length", str(len(payload)))]
        await stream.send(conn.send(h11.Response(status_code=200, headers=headers)))
        await stream.send(conn.send(h11.Data(data=payload)))
        await stream.send(conn.send(h11.EndOfMessage()))

    async def _forward(
        self,
        conn: h11.Connection,
        stream: ByteStream,
        request: h11.Request,
        method: str,
        path: str,
        query: str,
        body: bytes,
        turn: ProxyTurn,
    ) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers if k.lower().decode() not in DROPPED]
        headers.append(("accept-encoding", "identity"))  # the meter reads the body as it passes
        if self.upstream.key:
            headers.append(self.upstream.dialect.key_header(self.upstream.key))
        if path == "/v1/chat/completions":
            body = ask_for_usage(body)
        url = self.upstream.base_url.rstrip("/") + path.removeprefix(self.upstream.dialect.base_holds)
        url += f"?{query}" if query else ""
        client = self._client()
        try:
            response = await client.send(client.build_request(method, url, headers=headers, content=body), stream=True)
        except httpx.HTTPError as e:
            host = httpx.URL(self.upstream.base_url).host
            log.warning("the model API at %s did not answer: %s", host, type(e).__name__)
            message = f"mcp-sessions model proxy: the model API at {host} cannot be reached ({type(e).__name__})."
            await self._error(conn, stream, request, 502, "api_error", message)
            return
        streamed = "text/event-stream" in response.headers.get("content-type", "")
        meter = self.upstream.dialect.meter(streamed, requested_model(body))
        try:
            chunks = response.aiter_raw()
            if response.status_code >= 400:  # an error: read whole (it is small) to be read and redacted
                error = await self._error_body(response)
                chunks = _once(error)
                if response.status_code in (401, 403):
                    turn.refuse(self._key_refused(response.status_code, error))
            back = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in DROPPED_BACK]
            await stream.send(conn.send(h11.Response(status_code=response.status_code, headers=back)))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_client, conn, stream, tg.cancel_scope)
                async for chunk in chunks:
                    meter.feed(chunk)
                    if chunk and method != "HEAD":
                        await stream.send(conn.send(h11.Data(data=chunk)))
                await stream.send(conn.send(h11.EndOfMessage()))
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            meter.close()
            if meter.seen:
                self.count(turn, meter.model, meter.usage)

    async def _error_body(self, response: httpx.Response) -> bytes:
        """An upstream's error, without the server's key: some say back the key they refuse, which must reach
        neither the sandbox nor the caller."""
        try:
            return redact((await response.aread()).decode("utf-8", "replace"), [self.upstream.key]).encode()
        except httpx.HTTPError:
            return b""

    def _key_refused(self, status: int, error: bytes) -> str:
        """Why the upstream refused (401, 403), in a sentence that says what to do: the CLI cannot mend it, and
        Claude Code would retry it for minutes."""
        said = f" ({error_message(error)})" if error else ""
        host = httpx.URL(self.upstream.base_url).host
        key = "the server has no key to add" if not self.upstream.key else "it did not take the key the server adds"
        return (
            f"The model API at {host} refused the request with HTTP {status}{said}: {key}. Set a valid key in "
            f"{self.upstream.key_env} where the server runs (the sandbox never holds it), restart the server, and "
            "send the message again."
        )

    @staticmethod
    async def _watch_client(conn: h11.Connection, stream: ByteStream, scope: anyio.CancelScope) -> None:
        """While a response streams: stop it if the CLI goes away (what it sends meanwhile waits in h11)."""
        try:
            while data := await stream.receive():
                conn.receive_data(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()

    def count(self, turn: ProxyTurn, model: str, tokens: TokenUsage) -> None:
        add_usage(turn.usage, self.prices, model, tokens)

    async def _error(
        self, conn: h11.Connection, stream: ByteStream, request: h11.Request, status: int, kind: str, message: str
    ) -> None:
        """Answer with an error in the API's shape, which CLIs print as the API's error."""
        body = json.dumps(self.upstream.dialect.error(kind, message)).encode()
        head = request.method == b"HEAD"
        headers = [("content-type", "application/json"), ("content-length", "0" if head else str(len(body)))]
        await stream.send(conn.send(h11.Response(status_code=status, headers=headers)))
        if not head:
            await stream.send(conn.send(h11.Data(data=body)))
        await stream.send(conn.send(h11.EndOfMessage()))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def ask_for_usage(body: bytes) -> bytes:
    """A streamed Chat Completions request made to end with a usage chunk (without it, the usage of a
    streamed answer is not told); any other body as it was."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict) or doc.get("stream") is not True:
        return body
    given = doc.get("stream_options")
    options: dict[str, Any] = given if isinstance(given, dict) else {}
    if options.get("include_usage") is True:
        return body
    return json.dumps({**doc, "stream_options": {**options, "include_usage": True}}).encode()


def requested_model(body: bytes) -> str | None:
    """The model a request body names, if it is a JSON object that names one."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None
