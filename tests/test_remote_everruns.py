"""The remote driver's `everruns` dialect against a test server written from Everruns' documented wire format
(shared/seeds/001, notes/platforms.md §2, and the everruns sources the dialect names), whose every answer and
event is first parsed by Everruns' official Python client's own models (`everruns_sdk.models`): sessions made
from an agent, messages `{"message": {"role", "content"}}`, the SSE stream with `event:`/`id:` frames (only
durable events are kept for replay; deltas are live only), `connected`/`disconnecting` framing, resume with
`?since_id=` (event ids are time-ordered), cancel (400 when no turn runs), DELETE, and `{"error": "..."}`
bodies. The dialect's requests are compared with those the official client sends to the same server."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from everruns_sdk import Everruns
from everruns_sdk.models import Event, ListResponse, Message, Session
from mcp import Client
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .asgi import serve_fake
from .conftest import call
from .remote_checks import check_lost_session_fails

pytestmark = pytest.mark.anyio

KEY = "evr_0123456789abcdef0123456789abcdef"
AGENT = "agent_01933b5a000070008000000000000001"
MODEL = "model_01933b5a000070008000000000000002"
P = "/api/v1/sessions"


ORG = "org_00000000000000000000000000000001"
_ids = itertools.count(0x01933B5A000070008000000000000000)


def new_id(kind: str) -> str:
    """Ids as Everruns makes them: a prefix and 32 hex digits of a UUIDv7, so later ids sort after earlier ones."""
    return f"{kind}_{next(_ids):032x}"


def sdk(model: type[BaseModel], payload: dict[str, Any]) -> dict[str, Any]:
    """A payload the official client's model reads (it raises if not), as the server sends it."""
    model.model_validate(payload)
    return payload


class FakeEverruns:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.listeners: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.since_ids: list[str | None] = []
        self.cancels = 0
        self.deleted: list[str] = []
        self.drop_after: int | None = None
        """Close the next stream abruptly after this many durable events."""
        self.cycle_after: int | None = None
        """Cycle the next stream (`disconnecting`, then close) after this many durable events."""
        self.fail_creates = 0
        self.requests: list[dict[str, Any]] = []
        """Every request, as the dialect's and the official client's are compared: what it asks, with what."""

    def emit(self, sid: str, kind: str, data: dict[str, Any], turn: str | None = None, durable: bool = True) -> None:
        event = sdk(Event, {"id": new_id("event"), "type": kind, "ts": "2026-05-25T10:00:00.000Z", "session_id": sid,
                 "context": {"turn_id": turn} if turn else {}, "data": data})  # fmt: skip
        if durable:
            event["sequence"] = len(self.events[sid]) + 1
            self.events[sid].append(event)
        for q in self.listeners.get(sid, []):
            q.put_nowait(event)

    def said(self, sid: str, turn: str, content: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
        message = {"id": new_id("message"), "session_id": sid, "role": "agent", "content": content}
        self.emit(
            sid,
            "output.message.completed",
            {"message": message, "metadata": {"model": "gpt-4o"}, **({"usage": usage} if usage else {})},
            turn,
        )

    async def turn(self, sid: str, text: str, message_id: str) -> None:
        s, t = self.sessions[sid], new_id("turn")
        s["status"] = "active"
        self.emit(sid, "turn.started", {"turn_id": t, "input_message_id": message_id, "input_content": text}, t)
        self.emit(sid, "output.message.started", {"turn_id": t, "model": "gpt-4o", "iteration": 1}, t)
        if cancelled := s.pop("cancelled_turn", None):
            self.after_cancel(sid, cancelled)
        await asyncio.sleep(0.05)
        if text.startswith("tool: "):
            call = {"id": "call_1", "name": "bash", "arguments": {"command": text[6:]}}
            self.said(sid, t, [{"type": "tool_call", **call}])
            self.emit(sid, "tool.started", {"tool_call": call}, t)
            await asyncio.sleep(0.3)
            out = f"ran {text[6:]}\n"
            self.emit(
                sid,
                "tool.output.delta",
                {"tool_call_id": "call_1", "tool_name": "bash", "delta": out, "stream": "stdout"},
                t,
                durable=False,
            )
            self.emit(
                sid,
                "tool.completed",
                {
                    "tool_call_id": "call_1",
                    "tool_name": "bash",
                    "success": True,
                    "status": "success",
                    "result": [{"type": "text", "text": out}],
                },
                t,
            )
            reply = "done"
        elif text == "slow":
            self.emit(sid, "output.message.delta", {"turn_id": t, "delta": "working", "accumulated": "working"}, t, durable=False)
            await asyncio.sleep(60)
            reply = "never"
        elif text == "fail":
            s["status"] = "idle"
            self.emit(sid, "turn.failed", {"turn_id": t, "error": "LLM provider returned 529: overloaded"}, t)
            return
        else:
            reply = "echo: " + text
        sent = ""
        for i, word in enumerate(reply.split(" ")):
            sent += ("" if i == 0 else " ") + word
            self.emit(
                sid,
                "output.message.delta",
                {"turn_id": t, "delta": sent[-len(word) - (i > 0) :], "accumulated": sent},
                t,
                durable=False,
            )
            await asyncio.sleep(0.05)
        usage: dict[str, Any] = {"input_tokens": 1000, "output_tokens": 200, "cache_read_tokens": 400}
        if text == "with its cost":
            usage |= {"actual_cost_usd": 0.042, "estimated_cost_usd": 0.04}
        self.said(sid, t, [{"type": "text", "text": reply}], usage)
        self.emit(sid, "turn.completed", {"turn_id": t, "iterations": 1, "duration_ms": 300, "usage": usage}, t)
        s["status"] = "idle"
        self.emit(sid, "session.idled", {"turn_id": t, "iterations": 1, "usage": usage}, t)

    def after_cancel(self, sid: str, turn: str) -> None:
        """What the worker emits once it notices a cancel: late, here in the middle of the next turn."""
        self.said(sid, turn, [{"type": "text", "text": "Work was cancelled by user."}])
        self.emit(sid, "session.idled", {"turn_id": turn}, turn)

    def app(self) -> Starlette:
        def err(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=status)

        async def authorized(request: Request) -> bool:  # API keys bare, as the official client sends them
            body = await request.body()
            self.requests.append(
                {
                    "method": request.method,
                    "path": re.sub(r"session_[0-9a-f]{32}", "{sid}", request.url.path),
                    "query": sorted(request.query_params),
                    "body": json.loads(body) if body else None,
                    **{h: request.headers.get(h) for h in ("authorization", "x-org-id", "accept", "cache-control")},
                }
            )
            return request.headers.get("authorization") == KEY

        def session(request: Request) -> dict[str, Any] | None:
            return self.sessions.get(request.path_params["sid"])

        async def create(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            if self.fail_creates:
                self.fail_creates -= 1
                return err(500, "Internal server error")
            body = await request.json()
            self.bodies.append(body)
            if body.get("agent_id") != AGENT:
                return err(404, "Agent not found")
            sid = new_id("session")
            self.sessions[sid] = {
                "id": sid, "organization_id": "org_00000000000000000000000000000001", "harness_id": new_id("harness"),
                "agent_id": AGENT, "title": body.get("title"), "tags": body.get("tags", []), "model_id": body.get("model_id"),
                "status": "started", "created_at": "2026-05-25T10:00:00Z", "updated_at": "2026-05-25T10:00:00Z", "usage": None,
            }  # fmt: skip
            self.events[sid] = []
            self.emit(sid, "session.started", {"harness_id": self.sessions[sid]["harness_id"], "agent_id": AGENT})
            return JSONResponse(sdk(Session, self.sessions[sid]), status_code=201)

        async def get(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            s = session(request)
            return JSONResponse(sdk(Session, s)) if s else err(404, "Session not found")

        async def delete(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            if session(request) is None:
                return err(404, "Session not found")
            self.deleted.append(request.path_params["sid"])
            del self.sessions[request.path_params["sid"]]
            return Response(status_code=204)

        async def events(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            s = session(request)
            if s is None:
                return err(404, "Session not found")
            listed = self.events[s["id"]]
            limit = int(request.query_params.get("limit", len(listed) or 1))
            return JSONResponse(sdk(ListResponse, {"data": listed[-limit:], "total": len(listed), "offset": 0, "limit": limit}))

        async def message(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            s = session(request)
            if s is None:
                return err(404, "Session not found")
            body = await request.json()
            text = body["message"]["content"][0]["text"]
            m = {"id": new_id("message"), "session_id": s["id"], "sequence": len(self.events[s["id"]]) + 1, "role": "user",
                 "content": body["message"]["content"], "created_at": "2026-05-25T10:01:00Z"}  # fmt: skip
            self.emit(s["id"], "input.message", {"message": m})
            self.tasks[s["id"]] = asyncio.create_task(self.turn(s["id"], text, m["id"]))
            return JSONResponse(sdk(Message, m), status_code=201)

        async def cancel(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            s = session(request)
            if s is None:
                return err(404, "Session not found")
            if s["status"] != "active":
                return err(400, "Session is not active")
            self.cancels += 1
            self.tasks.pop(s["id"]).cancel()
            turn = next(
                (e["context"].get("turn_id") for e in reversed(self.events[s["id"]]) if e["type"] == "turn.started"), None
            )
            self.emit(s["id"], "turn.cancelled", {"turn_id": turn, "reason": "Cancelled by user"}, turn)
            s["status"], s["cancelled_turn"] = "idle", turn
            return JSONResponse({"status": "cancelled"})

        async def sse(request: Request) -> Response:
            if not await authorized(request):
                return err(401, "Unauthorized")
            s = session(request)
            if s is None:
                return err(404, "Session not found")
            sid, since = s["id"], request.query_params.get("since_id")
            self.since_ids.append(since)
            q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.listeners.setdefault(sid, []).append(q)  # subscribed before answering, as Everruns does
            replay = [e for e in self.events[sid] if since and e["id"] > since]  # ids are time-ordered
            drop, self.drop_after = self.drop_after, None
            cycle, self.cycle_after = self.cycle_after, None

            def frame(e: dict[str, Any]) -> str:
                return (
                    f"event: {e['type']}\n"
                    + (f"id: {e['id']}\n" if "sequence" in e else "")
                    + f"retry: 100\ndata: {json.dumps(e)}\n\n"
                )

            async def frames() -> AsyncIterator[str]:
                try:
                    yield 'event: connected\ndata: {"status":"connected"}\n\n'
                    durable = 0
                    for e in replay:
                        yield frame(e)
                    while True:
                        try:
                            e = await asyncio.wait_for(q.get(), 10)
                        except TimeoutError:
                            yield ": heartbeat\n\n"
                            continue
                        yield frame(e)
                        durable += "sequence" in e
                        if durable == drop:
                            return
                        if durable == cycle:
                            yield 'event: disconnecting\ndata: {"reason":"connection_cycle","retry_ms":100}\n\n'
                            return
                finally:
                    self.listeners[sid].remove(q)

            return StreamingResponse(frames(), media_type="text/event-stream")

        return Starlette(
            routes=[
                Route(P, create, methods=["POST"]),
                Route(P + "/{sid}", get, methods=["GET"]),
                Route(P + "/{sid}", delete, methods=["DELETE"]),
                Route(P + "/{sid}/events", events, methods=["GET"]),
                Route(P + "/{sid}/messages", message, methods=["POST"]),
                Route(P + "/{sid}/cancel", cancel, methods=["POST"]),
                Route(P + "/{sid}/sse", sse, methods=["GET"]),
            ]
        )


def front(home: Path, url: str, **options: Any) -> Settings:
    options = options or {"agent_id": AGENT, "tags": ["team-a"], "org_id": ORG}
    remotes = {"evr": {"url": url + "/api", "dialect": "everruns", "token_env": "EVR_KEY", "options": options, "reconnect_s": 10}}
    return Settings(home=home, remotes=json.dumps(remotes))


async def test_everruns_session_stream_usage_resume_cancel_delete_and_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVR_KEY", KEY)
    fake = FakeEverruns()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="evr", title="triage", tags=["ci"], model=MODEL)
            assert s["status"] == "ready", s
            assert s["sandbox"]["dialect"] == "everruns" and s["model"] == MODEL
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            assert fake.bodies[-1] == {
                "agent_id": AGENT,
                "title": "triage",
                "tags": ["team-a", "ci"],
                "model_id": MODEL,
                "capabilities": [],
                "tools": [],
            }

            r = await call(client, "send_message", session_id=sid, text="hello there world", wait_s=30)
            assert r["turn_status"] == "completed", r
            assert r["output"] == "echo: hello there world"
            assert (
                r["usage"]["input_tokens"] == 1000
                and r["usage"]["output_tokens"] == 200
                and r["usage"]["cache_read_tokens"] == 400
            )
            assert r["usage"]["cost_usd"] == pytest.approx(0.005)  # gpt-4o at this server's prices: Everruns reports no cost
            got = await call(client, "get_session", session_id=sid, events_after=0)
            assert "".join(e["data"]["text"] for e in got["events"] if e["type"] == "text.delta") == "echo: hello there world"
            assert got["session"]["usage"]["cost_by_model"] == {"gpt-4o": pytest.approx(0.005)}
            assert fake.since_ids[-1] == fake.events[rid][0]["id"]  # the stream starts after the session's last event

            # a turn whose usage has its cost: that is the cost, not the model's price
            r = await call(client, "send_message", session_id=sid, text="with its cost", wait_s=30)
            assert r["usage"]["cost_usd"] == pytest.approx(0.042) and r["usage"]["cost_by_model"] == {"gpt-4o": 0.042}
            got = await call(client, "get_session", session_id=sid, events_after=0)

            # the stream drops after three durable events (the message, turn.started, output.message.started):
            # resumed with since_id, nothing doubled
            fake.drop_after = 3
            cursor = got["events_cursor"]
            r = await call(client, "send_message", session_id=sid, text="tool: ls", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "done", r
            started = [e for e in fake.events[rid] if e["type"] == "output.message.started"][-1]
            assert fake.since_ids[-1] == started["id"]
            got = await call(client, "get_session", session_id=sid, events_after=cursor)
            types = [e["type"] for e in got["events"]]
            assert types.count("tool.started") == 1 and types.count("tool.completed") == 1
            assert [e["data"]["text"] for e in got["events"] if e["type"] == "tool.output"] == ["ran ls\n"]
            roles = [m["role"] for m in got["recent_messages"]]
            assert roles == ["user", "assistant", "tool", "assistant"]

            # a cycled stream (`disconnecting`) is resumed the same way
            fake.cycle_after = 1
            r = await call(client, "send_message", session_id=sid, text="after the cycle", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "echo: after the cycle", r
            asked = [e for e in fake.events[rid] if e["type"] == "input.message"][-1]
            assert len(fake.since_ids) == 6 and fake.since_ids[-1] == asked["id"]

            r = await call(client, "send_message", session_id=sid, text="slow", wait_s=1)
            assert r["turn_status"] == "running"
            assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
            assert fake.cancels == 1 and fake.sessions[rid]["status"] == "idle"

            # the cancelled turn's late events arrive during the next turn and are not taken for its own
            r = await call(client, "send_message", session_id=sid, text="next one", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "echo: next one", r
            recent = (await call(client, "get_session", session_id=sid))["recent_messages"]
            assert [(m["role"], m["content"][0]["text"]) for m in recent[-2:]] == [
                ("user", "next one"),
                ("assistant", "echo: next one"),
            ]

            r = await call(client, "send_message", session_id=sid, text="fail", wait_s=30)
            assert r["turn_status"] == "failed" and r["reason"] == "on the remote: LLM provider returned 529: overloaded"
            assert (await call(client, "get_session", session_id=sid))["session"]["status"] == "ready"

            assert (await call(client, "close_session", session_id=sid))["status"] == "dead"
            assert fake.deleted == [rid]

            # an Everruns session deleted behind our back: the local session fails, saying so
            await check_lost_session_fails(client, "evr", fake.sessions.pop, "everruns")


async def test_everruns_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVR_KEY", KEY)
    fake = FakeEverruns()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "a", url, title="no agent"))) as client:
            s = await call(client, "create_session", driver="remote", remote="evr")
            assert s["status"] == "failed" and "set options.agent_id" in s["failure_reason"]
            assert "everruns" in s["failure_reason"] and not fake.bodies

        async with Client(create_server(front(tmp_path / "b", url, agent_id="agent_nobody"))) as client:
            s = await call(client, "create_session", driver="remote", remote="evr")
            assert s["status"] == "failed" and "answered 404" in s["failure_reason"] and "Agent not found" in s["failure_reason"]

            fake.fail_creates = 1
            s = await call(client, "create_session", driver="remote", remote="evr")
            assert s["status"] == "failed" and "answered 500" in s["failure_reason"] and "everruns" in s["failure_reason"]

        monkeypatch.setenv("EVR_KEY", "evr_wrong")
        async with Client(create_server(front(tmp_path / "c", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="evr")
            assert s["status"] == "failed" and "refused the credentials (set EVR_KEY)" in s["failure_reason"]


async def test_everruns_requests_are_those_of_the_official_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same steps taken by Everruns' official client and by the dialect (through this server) reach the test
    server as the same requests: paths, bodies, credentials, organization, stream headers and resume parameter. The
    client's own SSE reader reads the test server's stream."""
    monkeypatch.setenv("EVR_KEY", KEY)
    fake = FakeEverruns()
    async with serve_fake(fake) as url:
        official = Everruns(api_key=KEY, base_url=url + "/api", org_id=ORG)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # it points applications to its agent client
            made = await official.sessions.create(agent_id=AGENT, title="triage", tags=["team-a", "ci"], model_id=MODEL)
            last = (await official.events.list(made.id, limit=1))[-1]
            stream = official.events.stream(made.id, since_id=last.id)
            read: list[Event] = []
            with anyio.fail_after(30):
                await official.messages.create(made.id, "hello there world")
                async for event in stream:
                    read.append(event)
                    if event.type == "turn.completed":
                        break
            await stream.aclose()
            assert [e.type for e in read if e.type != "output.message.delta"] == [
                "input.message",
                "turn.started",
                "output.message.started",
                "output.message.completed",
                "turn.completed",
            ]
            assert read[-1].data["usage"]["input_tokens"] == 1000
            await official.messages.create(made.id, "slow")
            with anyio.fail_after(10):
                while fake.sessions[made.id]["status"] != "active":
                    await anyio.sleep(0.02)
            await official.sessions.cancel(made.id)
            await official.sessions.delete(made.id)
        await official.close()
        theirs, fake.requests = fake.requests, []

        async with Client(create_server(front(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="evr", title="triage", tags=["ci"], model=MODEL)
            r = await call(client, "send_message", session_id=s["id"], text="hello there world", wait_s=30)
            assert r["turn_status"] == "completed", r
            assert (await call(client, "send_message", session_id=s["id"], text="slow", wait_s=1))["turn_status"] == "running"
            assert (await call(client, "interrupt", session_id=s["id"]))["interrupted"] is True
            await call(client, "close_session", session_id=s["id"])
        ours = fake.requests

    def kinds(requests: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in requests:
            found.setdefault((r["method"], r["path"]), []).append(r)
        return found

    mine = kinds(ours)
    for kind, asked in kinds(theirs).items():
        assert kind in mine, f"the dialect never sends {kind}, which the official client does"
        bodies = {json.dumps(r["body"], sort_keys=True) for r in mine[kind]}
        assert bodies == {json.dumps(r["body"], sort_keys=True) for r in asked}, kind
        for r in mine[kind]:
            assert (r["authorization"], r["x-org-id"]) == (KEY, ORG), r
            if kind[1].endswith("/sse"):
                assert (r["accept"], r["cache-control"], r["query"]) == ("text/event-stream", "no-cache", ["since_id"]), r
            else:
                assert r["query"] == asked[0]["query"], r
