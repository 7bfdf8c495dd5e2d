"""Resuming MCP streams over HTTP (resumption.py): the priming event and its `retry`, a client whose stream
drops in the middle of a call getting the reply on its own, the bounds of what is kept, and an unknown
`Last-Event-ID` answered with a sentence instead of a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import mcp_types as types
import pytest
from anyio.abc import SocketStream
from mcp.server.streamable_http import EventMessage

from mcp_sessions.resumption import RETRY_MS, EventBuffer
from mcp_sessions.settings import Settings

from .conftest import call
from .test_http import mcp_client, running, sse_events

pytestmark = pytest.mark.anyio

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


@asynccontextmanager
async def raw_session(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A handshake-era MCP session made by hand; yields the client and the headers every later request needs."""
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as http:
        r = await http.post("/mcp", json=INITIALIZE)
        assert r.status_code == 200, r.text
        session = {"Mcp-Session-Id": r.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        r = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        assert r.status_code == 202
        yield http, session


def message(n: int, size: int = 0) -> types.JSONRPCMessage:
    return types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n, "pad": "x" * size})


async def replayed(buffer: EventBuffer, session: str, after: str) -> list[int]:
    got: list[int] = []

    async def send(event: EventMessage) -> None:
        assert isinstance(event.message, types.JSONRPCNotification) and event.message.params is not None
        got.append(event.message.params["n"])

    await buffer.replay(session, after, send)
    return got


async def test_a_call_answers_on_a_stream_that_starts_with_a_priming_event_and_retry(settings: Settings) -> None:
    async with running(settings) as (url, _), raw_session(url) as (http, session):
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_sessions", "arguments": {}}}
        async with http.stream("POST", "/mcp", json=request, headers=session) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in r.aiter_lines()]
        first = lines[: lines.index("")]
        assert first[0].startswith("id: ") and "data: " in first and f"retry: {RETRY_MS}" in first


async def test_get_with_an_unknown_last_event_id_is_told_so(settings: Settings) -> None:
    async with running(settings) as (url, _), raw_session(url) as (http, session):
        for unknown in ("12345-67890", "not an id", "-1"):
            with anyio.fail_after(30):
                r = await http.get("/mcp", headers={**session, "Accept": "text/event-stream", "Last-Event-ID": unknown})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == -32600 and "not an event this session still keeps" in r.json()["error"]["message"]
        r = await http.get("/mcp", headers={"Mcp-Session-Id": "f" * 32, "Accept": "text/event-stream", "Last-Event-ID": "1-1"})
        assert r.status_code == 404  # an unknown session is still the SDK's 404, so a client starts a new one


async def test_a_session_cannot_replay_another_sessions_stream(settings: Settings) -> None:
    """Both sessions' first call has request id 2, so the SDK names both streams "2"."""
    async with running(settings) as (url, _), raw_session(url) as (one, first), raw_session(url) as (other, second):
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_sessions", "arguments": {}}}
        async with one.stream("POST", "/mcp", json=request, headers=first) as r:
            events = [e async for e in sse_events(r)]
        priming = events[0]["id"]
        r = await other.get("/mcp", headers={**second, "Accept": "text/event-stream", "Last-Event-ID": priming})
        assert r.status_code == 400
        with anyio.fail_after(30):
            async with one.stream("GET", "/mcp", headers={**first, "Accept": "text/event-stream", "Last-Event-ID": priming}) as r:
                assert r.status_code == 200
                async for event in sse_events(r):
                    if event.get("data"):
                        assert '"id":2' in event["data"] and "sessions" in event["data"]
                        break


@asynccontextmanager
async def dropping_proxy(upstream: str, marker: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP proxy to `upstream` that cuts, once, the connection whose request carries `marker`, right after
    the first SSE event of its response (the priming event) went through; yields its URL and what it cut."""
    host, port = upstream.removeprefix("http://").split(":")
    cut: list[bytes] = []

    async def pump(source: SocketStream, sink: SocketStream, watch: bool, state: dict[str, bool]) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
                if not watch and marker in chunk and not cut:
                    state["marked"] = True
                if watch and state.get("marked") and b"retry: " in chunk and not cut:
                    cut.append(chunk)
                    await source.aclose()
                    await sink.aclose()
                    return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            await sink.aclose()

    async def handle(client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(host, int(port)) as server, anyio.create_task_group() as tg:
            state: dict[str, bool] = {}
            tg.start_soon(pump, client, server, False, state)
            tg.start_soon(pump, server, client, True, state)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}", cut
        tg.cancel_scope.cancel()


async def test_an_sdk_client_whose_stream_drops_mid_call_gets_the_reply(settings: Settings) -> None:
    """The connection carrying send_message's answer is cut after its first event; the SDK's client
    reconnects with Last-Event-ID after `retry` and the turn's reply reaches it as if nothing happened."""
    async with running(settings, {"alice-token-0123456789": "alice"}) as (url, _):
        async with (
            dropping_proxy(url, b"resume-marker") as (proxied, cut),
            mcp_client(proxied, "alice-token-0123456789") as client,
        ):
            sid = (await call(client, "create_session"))["id"]
            with anyio.fail_after(60):
                reply = await call(client, "send_message", session_id=sid, text="sleep 1; echo resume-marker done", wait_s=30)
            assert cut, "the proxy never cut the stream"
            assert reply["turn_status"] == "completed" and reply["output"] == "resume-marker done\n"


async def test_each_stream_keeps_its_last_events_and_the_newest_always() -> None:
    buffer = EventBuffer(per_stream_events=3, per_stream_bytes=10_000)
    first = buffer.store(("s", "1"), None)
    ids = [buffer.store(("s", "1"), message(n)) for n in range(5)]
    assert await replayed(buffer, "s", ids[1]) == [2, 3, 4]
    assert await replayed(buffer, "s", first) == [2, 3, 4]  # resumed after a dropped event: the rest, never an error
    big = buffer.store(("s", "1"), message(99, size=20_000))
    assert await replayed(buffer, "s", first) == [99] and buffer.stream_of("s", big) is not None


async def test_the_buffer_is_bounded_in_all_and_forgets_emptied_streams() -> None:
    buffer = EventBuffer(per_stream_events=100, total_events=10, total_bytes=1 << 20)
    old = [buffer.store(("a", "1"), message(n)) for n in range(5)]
    new = [buffer.store(("b", str(n)), message(n)) for n in range(10)]
    assert buffer.stream_of("a", old[-1]) is None  # every event of a's stream went: the stream is forgotten
    assert all(buffer.stream_of("b", i) is not None for i in new)
    sized = EventBuffer(per_stream_events=100, total_events=1000, total_bytes=5_000)
    kept = [sized.store(("c", str(n)), message(n, size=1000)) for n in range(10)]
    assert sum(sized.stream_of("c", i) is not None for i in kept) in (3, 4)


async def test_sessions_are_kept_apart() -> None:
    buffer = EventBuffer()
    a = buffer.view("session-a")
    b = buffer.view("session-b")
    start = await a.store_event("1", None)
    await a.store_event("1", message(1))
    await b.store_event("1", message(2))
    assert await replayed(buffer, "session-a", start) == [1]
    assert await replayed(buffer, "session-b", start) == []
    assert buffer.knows_session("session-a")
    del a
    assert not buffer.knows_session("session-a")
