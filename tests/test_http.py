"""The HTTP server for real: uvicorn on an ephemeral loopback port, httpx for REST and SSE, the MCP SDK's
streamable HTTP client for MCP, in both protocol eras."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.routing import Route

from mcp_sessions.auth import ConfigError, parse_tokens
from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .asgi import serve
from .conftest import ERAS, call, call_error, stdio_params

pytestmark = pytest.mark.anyio

ALICE, BOB = "alice-token-0123456789", "bob-token-abcdefghijkl"
TOKENS = {ALICE: "alice", BOB: "bob"}
API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running(settings: Settings, tokens: dict[str, str] | None = None) -> AsyncIterator[tuple[str, Any]]:
    """The real app under uvicorn on 127.0.0.1, a free port; yields its base URL and the app."""
    app = build_app(settings, tokens or {})
    async with serve(app, lifespan="on", grace_s=5) as url:
        yield url, app


@pytest.fixture
async def base(settings: Settings) -> AsyncIterator[str]:
    async with running(settings, TOKENS) as (url, _):
        yield url


@asynccontextmanager
async def http(base: str, token: str | None = ALICE) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(token) if token else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        yield client


@asynccontextmanager
async def mcp_client(base: str, token: str, mode: str = "legacy", **kw: Any) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=bearer(token), timeout=60) as hc:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=hc), mode=mode, **kw) as client:
            yield client


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream: yields {"id", "event", "data"} per event, and {"comment"} for comments."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def read_stream(client: httpx.AsyncClient, sid: str, until: str, **kw: Any) -> list[dict[str, Any]]:
    """Events of the session's stream up to and including the first of type `until`."""
    got = []
    with anyio.fail_after(30):
        async with client.stream("GET", f"{API}/sessions/{sid}/stream", **kw) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse_events(response):
                if "comment" in event:
                    continue
                got.append(event)
                if event["event"] == until:
                    break
    return got


async def test_rest_create_send_stream_resume_interrupt_close_delete(base: str) -> None:
    async with http(base) as c:
        r = await c.post(f"{API}/sessions", json={"title": "rest", "tags": ["t"]})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["status"] == "ready" and r.json()["owner"] == "alice"

        r = await c.post(f"{API}/sessions/{sid}/messages", params={"wait_s": 30}, json={"text": "echo one"})
        assert r.status_code == 200 and r.json()["turn_status"] == "completed" and r.json()["output"] == "one\n"

        # queued: answered at once, then followed on the stream
        r = await c.post(f"{API}/sessions/{sid}/messages", json={"text": "sleep 0.3; echo two"})
        assert r.status_code == 202 and r.json()["turn_status"] in ("running", "completed")
        events = await read_stream(c, sid, "turn.completed", params={"last_event_id": r.json()["events_cursor"]})
        assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
        assert any(json.loads(e["data"]).get("data", {}).get("text") == "two\n" for e in events if e["event"] == "tool.output")

        # resume: the header replays exactly what came after it
        all_events = await read_stream(c, sid, "turn.completed", headers={"Last-Event-ID": "0"})
        middle = int(all_events[len(all_events) // 2]["id"])
        resumed = await read_stream(c, sid, "turn.completed", headers={"Last-Event-ID": str(middle)})
        assert [e["id"] for e in resumed] == [e["id"] for e in all_events if int(e["id"]) > middle]
        first = all_events[0]
        assert first["event"] == "session.created" and json.loads(first["data"])["seq"] == 1

        r = await c.get(f"{API}/sessions/{sid}")
        assert r.status_code == 200
        texts = [m["content"][0]["text"] for m in r.json()["messages"]]
        assert texts == ["echo one", "one\n", "sleep 0.3; echo two", "two\n"]

        r = await c.get(f"{API}/sessions", params=[("status", "ready"), ("tag", "t")])
        assert [s["id"] for s in r.json()["sessions"]] == [sid] and r.json()["total"] == 1

        # interrupt a long turn
        r = await c.post(f"{API}/sessions/{sid}/messages", json={"text": "sleep 300"})
        assert r.status_code == 202
        r = await c.post(f"{API}/sessions/{sid}/interrupt")
        assert r.status_code == 200 and r.json()["interrupted"] is True and r.json()["status"] == "ready"

        # a busy session refuses an unqueued message with 409
        await c.post(f"{API}/sessions/{sid}/messages", json={"text": "sleep 300"})
        r = await c.post(f"{API}/sessions/{sid}/messages", json={"text": "echo no", "queue": False})
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy"

        r = await c.post(f"{API}/sessions/{sid}/close")
        assert r.status_code == 200 and r.json()["status"] == "dead" and r.json()["deleted"] is False
        closed = await read_stream(c, sid, "session.closed", headers={"Last-Event-ID": "0"})
        assert closed[-1]["event"] == "session.closed"
        # the stream of an ended session ends by itself
        with anyio.fail_after(30):
            async with c.stream("GET", f"{API}/sessions/{sid}/stream", headers={"Last-Event-ID": closed[-1]["id"]}) as s:
                rest = [e async for e in sse_events(s) if "comment" not in e]
        assert [e["event"] for e in rest] == ["status"]

        r = await c.post(f"{API}/sessions/{sid}/close", params={"delete": "true"})
        assert r.status_code == 200 and r.json()["deleted"] is True
        r = await c.get(f"{API}/sessions/{sid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"

        r = await c.post(f"{API}/sessions", json={"env": {"A=B": "x"}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = await c.post(f"{API}/sessions", json={"no_such_field": 1})
        assert r.status_code == 400 and "no_such_field" in r.json()["error"]["message"]


async def test_stream_sends_a_keepalive_comment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_sessions import http_api

    monkeypatch.setattr(http_api, "KEEPALIVE_S", 0.3)
    async with running(settings, TOKENS) as (url, _), http(url) as c:
        sid = (await c.post(f"{API}/sessions", json={})).json()["id"]
        seen: list[dict[str, Any]] = []
        with anyio.move_on_after(15):  # a quiet session's stream: only keepalives come after its first events
            async with c.stream("GET", f"{API}/sessions/{sid}/stream") as s:
                async for event in sse_events(s):
                    seen.append(event)
                    if "comment" in event:
                        break
    assert seen and seen[-1] == {"comment": "keepalive"}, f"no keepalive comment on a quiet stream: {seen}"


@pytest.mark.parametrize("mode", ERAS)
async def test_mcp_over_http_with_progress_in_both_eras(base: str, mode: str) -> None:
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with mcp_client(base, ALICE, mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "send_message" in tools
        sid = (await call(client, "create_session", title="over http"))["id"]
        result = await client.call_tool(
            "send_message",
            {"session_id": sid, "text": "for i in 1 2 3 4; do echo tick $i; sleep 0.4; done", "wait_s": 30},
            progress_callback=on_progress,
        )
        assert result.structured_content["turn_status"] == "completed"
        assert [line for line in "".join(progress).splitlines() if line] == [f"tick {i}" for i in range(1, 5)]
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert f"session://{sid}" in listed
    # the same manager answers REST: the session made over MCP is there, owned by alice
    async with http(base) as c:
        r = await c.get(f"{API}/sessions/{sid}")
        assert r.status_code == 200 and r.json()["session"]["owner"] == "alice"


async def test_two_owners_never_see_or_touch_each_others_sessions(base: str) -> None:
    async with http(base, ALICE) as alice, http(base, BOB) as bob:
        sid = (await alice.post(f"{API}/sessions", json={"title": "alice's"})).json()["id"]
        bob_sid = (await bob.post(f"{API}/sessions", json={"title": "bob's"})).json()["id"]
        for method, path, kw in [
            ("GET", f"{API}/sessions/{sid}", {}),
            ("POST", f"{API}/sessions/{sid}/messages", {"json": {"text": "echo hi"}}),
            ("POST", f"{API}/sessions/{sid}/interrupt", {}),
            ("POST", f"{API}/sessions/{sid}/close", {"params": {"delete": "true"}}),
            ("GET", f"{API}/sessions/{sid}/stream", {}),
        ]:
            r = await bob.request(method, path, **kw)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json() == {"error": {"code": "session_not_found", "message": r.json()["error"]["message"]}}
        assert [s["id"] for s in (await bob.get(f"{API}/sessions")).json()["sessions"]] == [bob_sid]
        assert [s["id"] for s in (await alice.get(f"{API}/sessions")).json()["sessions"]] == [sid]

    for mode in ERAS:
        async with mcp_client(base, BOB, mode) as client:
            for tool, args in [
                ("get_session", {}),
                ("send_message", {"text": "echo hi"}),
                ("interrupt", {}),
                ("close_session", {"delete": True}),
            ]:
                text = await call_error(client, tool, session_id=sid, **args)
                assert f"No session '{sid}'" in text, (tool, text)
            assert [s["id"] for s in (await call(client, "list_sessions"))["sessions"]] == [bob_sid]
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert not any(sid in uri for uri in uris) and f"session://{bob_sid}" in uris
            for uri in (f"session://{sid}", f"session://{sid}/transcript", f"session://{sid}/events", f"session://{sid}/files/x"):
                with pytest.raises(MCPError, match=f"No session '{sid}'"):
                    await client.read_resource(uri)
    async with http(base, ALICE) as alice:
        r = await alice.get(f"{API}/sessions/{sid}")
        assert r.status_code == 200 and r.json()["session"]["status"] == "ready"


async def test_a_missing_or_wrong_token_gets_401(base: str) -> None:
    for token in (None, "wrong-token-0123456789"):
        async with http(base, token) as c:
            for method, path in [("GET", f"{API}/sessions"), ("POST", f"{API}/sessions"), ("POST", "/mcp")]:
                r = await c.request(method, path, json={})
                assert r.status_code == 401, (token, path)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
            assert (await c.get("/healthz")).json()["status"] == "ok"
    with pytest.raises(ExceptionGroup) as refused:  # the MCP client is refused at its first request
        async with mcp_client(base, "wrong-token-0123456789") as client:
            await client.list_tools()
    assert refused.group_contains(MCPError, match="error response")


async def test_dns_rebinding_is_refused_on_loopback(base: str) -> None:
    async with http(base) as c:
        r = await c.get(f"{API}/sessions", headers={"Host": "evil.example"})
        assert r.status_code == 421
        r = await c.get(f"{API}/sessions", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await c.get(f"{API}/sessions", headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 200


async def test_a_non_loopback_bind_without_tokens_is_refused_with_the_reason(home: Path, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="without tokens"):
        build_app(settings.model_copy(update={"host": "0.0.0.0"}), {})
    params = stdio_params(home)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_sessions", "serve", "--http", "--host", "0.0.0.0", "--port", "0"],
        env=params.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without tokens" in done.stderr and "--tokens-file" in done.stderr


def test_tokens_file_format_is_checked(tmp_path: Path) -> None:
    assert parse_tokens("# comment\n\nalice:" + ALICE + "\nbob: " + BOB + "\n", "f") == TOKENS
    with pytest.raises(ConfigError, match="shorter"):
        parse_tokens("alice:short", "f")
    with pytest.raises(ConfigError, match="owner:token"):
        parse_tokens("just-a-token-without-owner", "f")


async def test_a_body_over_the_limit_gets_413(settings: Settings) -> None:
    async with running(settings.model_copy(update={"max_request_bytes": 4096}), TOKENS) as (url, _), http(url) as c:
        r = await c.post(f"{API}/sessions", json={"files": {"big.txt": "x" * 10_000}})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while reading
            yield b'{"files": {"big.txt": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}}'

        r = await c.post(f"{API}/sessions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = await c.post("/mcp", content=b"x" * 10_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413


async def test_the_rate_limit_answers_429_with_retry_after(settings: Settings) -> None:
    async with running(settings.model_copy(update={"rate_limit_per_s": 0.1}), TOKENS) as (url, _):
        async with http(url, ALICE) as alice, http(url, BOB) as bob:
            assert (await alice.get(f"{API}/sessions")).status_code == 200
            r = await alice.get(f"{API}/sessions")
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
            assert (await bob.get(f"{API}/sessions")).status_code == 200  # per owner
            assert (await alice.get("/healthz")).status_code == 200


async def test_without_tokens_no_caller_is_rate_limited(settings: Settings) -> None:
    """Without tokens there are no owners to keep from starving each other, and only this machine may call:
    the limit does not apply, however low it is set."""
    async with running(settings.model_copy(update={"rate_limit_per_s": 0.1}), None) as (url, _):
        async with http(url, None) as one, http(url, None) as another:
            statuses = [(await c.get(f"{API}/sessions")).status_code for c in (one, another, one, another)]
            assert statuses == [200] * 4


async def test_an_orchestrator_fanning_out_with_one_token_meets_no_429_under_defaults(settings: Settings) -> None:
    """As many MCP clients as an owner may have sessions, started at once: each connects, creates a session
    and runs a message, every request of them under the one owner's default limit."""
    assert settings.rate_limit_per_s == Settings.model_fields["rate_limit_per_s"].default
    fan_out = settings.max_sessions_per_owner
    replies: list[dict[str, Any]] = []

    async def worker(n: int) -> None:
        async with mcp_client(url, ALICE) as client:
            sid = (await call(client, "create_session", title=f"worker {n}"))["id"]
            replies.append(await call(client, "send_message", session_id=sid, text=f"echo {n}", wait_s=30))

    async with running(settings, TOKENS) as (url, _):
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for n in range(fan_out):
                    tg.start_soon(worker, n)
    assert sorted(r["output"] for r in replies) == sorted(f"{n}\n" for n in range(fan_out))


async def test_an_owner_has_at_most_max_sessions_per_owner_live_sessions(settings: Settings) -> None:
    async with running(settings.model_copy(update={"max_sessions_per_owner": 2}), TOKENS) as (url, _):
        async with http(url, ALICE) as alice, http(url, BOB) as bob:
            ids = [(await alice.post(f"{API}/sessions", json={})).json()["id"] for _ in range(2)]
            r = await alice.post(f"{API}/sessions", json={})
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions"
            assert (await bob.post(f"{API}/sessions", json={})).status_code == 201
            async with mcp_client(url, ALICE) as client:
                assert "live sessions" in await call_error(client, "create_session")
            await alice.post(f"{API}/sessions/{ids[0]}/close")
            assert (await alice.post(f"{API}/sessions", json={})).status_code == 201


async def test_the_openapi_document_matches_the_served_routes(base: str, settings: Settings) -> None:
    async with http(base, None) as c:
        doc = (await c.get(f"{API}/openapi.json")).json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}

    app = build_app(settings, TOKENS).app
    served = {(route.path, m) for route in app.routes if isinstance(route, Route) for m in route.methods or () if m != "HEAD"}
    pages = {(path, m) for path, m in served if path == "/ui" or path.startswith("/ui/")}  # HTML for people, not API
    assert {path for path, _ in pages} == {"/ui", "/ui/sessions/{session_id}", "/ui/static/{name}", "/ui/login", "/ui/logout"}
    previews = {(path, m) for path, m in served if path.startswith("/preview/")}  # a web app's own pages, proxied
    assert {path for path, _ in previews} == {"/preview/{session_id}/{port:int}", "/preview/{session_id}/{port:int}/{rest:path}"}
    assert served - pages - previews == documented
    # each operation has its own operationId (a client generator makes a method of each); a tool's is its name
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert doc["paths"][f"{API}/tools/answer_approval"]["post"]["operationId"] == "answer_approval"
    assert doc["paths"][f"{API}/tools/pause_session"]["post"]["operationId"] == "pause_session"

    # every documented REST operation answers (not a routing 404/405), and its refs resolve
    schemas = doc["components"]["schemas"]
    for ref in json.dumps(doc).split('"$ref": "#/components/schemas/')[1:]:
        assert ref.split('"')[0] in schemas
    async with http(base, BOB) as c:
        for path, method in documented:
            if not path.startswith(API + "/sessions/"):
                continue
            r = await c.request(method, path.replace("{session_id}", "ses_" + "0" * 32), json={"text": "x"}, params={"path": "x"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", (path, method)
    # the create body's schema is the one that validates requests; it may be left out, as every field may
    create = doc["paths"][f"{API}/sessions"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateBody")
    assert create["requestBody"]["required"] is False
    async with http(base) as c:
        r = await c.post(f"{API}/sessions", params={"wait_s": 5})
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    messages = doc["paths"][f"{API}/sessions/{{session_id}}/messages"]["post"]
    assert messages["requestBody"]["required"] is True
    assert {p["name"] for p in doc["paths"][f"{API}/sessions"]["get"]["parameters"]} >= {"status", "tag", "limit", "cursor"}
    # each operation lists the gate's answers and its own, and only those
    assert set(create["responses"]) == {"201", "400", "401", "403", "413", "421", "429", "502", "503"}
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) == {"200", "403", "421"}
    assert {"400", "401", "404", "406", "415", "429"} <= set(doc["paths"]["/mcp"]["post"]["responses"])
    # each event of the stream: its data is an Event as JSON
    stream = doc["paths"][f"{API}/sessions/{{session_id}}/stream"]["get"]
    event = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Event"}
    assert stream["parameters"][-1]["name"] == "Last-Event-ID" and stream["parameters"][-1]["schema"]["maximum"] == 2**63 - 1


async def test_a_method_a_path_does_not_serve_gets_405_with_allow(base: str) -> None:
    async with http(base) as c:
        for method, path, allowed in (
            ("TRACE", "/healthz", "GET, HEAD"),
            ("DELETE", f"{API}/sessions", "GET, HEAD, POST"),
            ("PUT", f"{API}/sessions/ses_{'0' * 32}/close", "POST"),
            ("PATCH", "/mcp", "DELETE, GET, HEAD, POST"),
        ):
            r = await c.request(method, path)
            assert r.status_code == 405, (method, path, r.text)
            assert r.headers["allow"] == allowed
            assert r.json()["error"] == {
                "code": "method_not_allowed",
                "message": f"{method} is not served at {path}; use {allowed}.",
            }
        r = await c.get("/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_the_rest_create_body_takes_the_same_fields_as_create_session(base: str, settings: Settings) -> None:
    async with http(base, BOB) as c:
        body = (await c.get(f"{API}/openapi.json")).json()["components"]["schemas"]["CreateBody"]["properties"]
    async with Client(create_server(settings)) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "create_session")
    fields = {k: v for k, v in tool.input_schema["properties"].items() if k != "wait_s"}
    assert set(body) == set(fields) and {"provider", "remote", "limits"} <= set(body)
    assert all(body[k].get("description") == fields[k].get("description") for k in fields if k != "limits")


async def test_a_modern_listener_hears_only_its_own_sessions(base: str) -> None:
    """subscriptions/listen honors only the caller's sessions: another owner cannot learn when one changes."""
    from mcp.shared.subscriptions import ResourceUpdated

    async with http(base, ALICE) as alice:
        alices = (await alice.post(f"{API}/sessions", json={})).json()["id"]
    async with mcp_client(base, BOB, "auto") as bob:
        bobs = (await call(bob, "create_session"))["id"]
        wanted = [f"session://{alices}", f"session://{bobs}"]
        async with bob.listen(resource_subscriptions=wanted) as stream:
            assert stream.honored.resource_subscriptions == [f"session://{bobs}"]
            async with http(base, ALICE) as alice:
                await alice.post(f"{API}/sessions/{alices}/messages", params={"wait_s": 5}, json={"text": "echo a"})
            await call(bob, "send_message", session_id=bobs, text="echo b")
            seen = []
            with anyio.fail_after(10):
                async for event in stream:
                    seen.append(event)
                    if event == ResourceUpdated(uri=f"session://{bobs}"):
                        break
    assert all(alices not in str(getattr(e, "uri", "")) for e in seen)
