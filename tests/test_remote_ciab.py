"""The remote driver's `ciab` dialect against a test server written from CIAB's documented wire format
(shared/seeds/002, notes/platforms.md §3): sessions in a sandbox, queued messages answered in the
background, interrupt, SSE with `event:`/`id:` frames resumed by `?last_event_id=`, `{error:{code,message}}`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
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

TOKEN = "ciab-key-0123456789"
SANDBOX = "550e8400-e29b-41d4-a716-446655440000"


class FakeCiab:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.new_event = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.interrupts = 0
        self.drop_streams = 0
        """Close this many streams after their second event, to make the client resume."""

    def error(self, status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    def emit(self, sid: str, event_type: str, data: dict[str, Any]) -> None:
        self.events.append(
            {
                "id": str(uuid.uuid4()),
                "sandbox_id": SANDBOX,
                "session_id": sid,
                "event_type": event_type,
                "data": data,
                "timestamp": "2026-03-11T10:00:00Z",
            }
        )
        self.events[:] = self.events[-500:]
        self.new_event.set()
        self.new_event = asyncio.Event()

    def message(self, sid: str, role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        m = {"id": str(uuid.uuid4()), "session_id": sid, "role": role, "content": content, "timestamp": "2026-03-11T10:05:00Z"}
        self.sessions[sid]["messages"].append(m)
        return m

    async def agent(self, sid: str, text: str) -> None:
        s = self.sessions[sid]
        s["state"] = "processing"
        if text.startswith("tool: "):
            self.emit(sid, "tool_use_start", {"id": "tu_1", "name": "bash", "input": {"command": text[6:]}})
            self.emit(sid, "tool_result", {"tool_use_id": "tu_1", "content": f"ran {text[6:]}\n", "is_error": False})
            self.message(sid, "assistant", [{"type": "tool_use", "id": "tu_1", "name": "bash", "input": {"command": text[6:]}}])
            self.message(
                sid, "tool", [{"type": "tool_result", "tool_use_id": "tu_1", "content": f"ran {text[6:]}\n", "is_error": False}]
            )
            reply = "done"
        elif text == "slow":
            self.emit(sid, "text_delta", {"text": "working"})
            await asyncio.sleep(60)
            reply = "never"
        elif text == "fail":
            s["state"] = "failed"
            self.emit(sid, "session_failed", {"error": "agent crashed"})
            return
        else:
            reply = "echo: " + text
        for i, word in enumerate(reply.split(" ")):
            self.emit(sid, "text_delta", {"text": ("" if i == 0 else " ") + word})
            await asyncio.sleep(0.05)
        self.emit(sid, "text_complete", {"text": reply})
        self.message(sid, "assistant", [{"type": "text", "text": reply}])
        s["state"] = "waiting_for_input"
        self.emit(sid, "session_completed", {})

    def app(self) -> Starlette:
        async def guard(request: Request) -> Response | None:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return self.error(401, "unauthorized", "missing or invalid API key")
            return None

        async def create(request: Request) -> Response:
            if (bad := await guard(request)) is not None:
                return bad
            if request.path_params["id"] != SANDBOX:
                return self.error(404, "sandbox_not_found", f"sandbox {request.path_params['id']} not found")
            body = await request.json()
            sid = str(uuid.uuid4())
            self.sessions[sid] = {
                "id": sid,
                "sandbox_id": SANDBOX,
                "state": "active",
                "metadata": body.get("metadata", {}),
                "created_at": "2026-03-11T10:00:00Z",
                "updated_at": "2026-03-11T10:00:00Z",
                "messages": [],
            }
            return JSONResponse({k: v for k, v in self.sessions[sid].items() if k != "messages"})

        def find(request: Request) -> dict[str, Any] | Response:
            s = self.sessions.get(request.path_params["sid"])
            return s if s is not None else self.error(404, "session_not_found", f"session {request.path_params['sid']} not found")

        async def get(request: Request) -> Response:
            if (bad := await guard(request)) is not None:
                return bad
            s = find(request)
            return s if isinstance(s, Response) else JSONResponse(s)

        async def send(request: Request) -> Response:
            if (bad := await guard(request)) is not None:
                return bad
            s = find(request)
            if isinstance(s, Response):
                return s
            body = await request.json()
            text = body["message"] if "message" in body else body["content"][0]["text"]
            m = self.message(s["id"], "user", [{"type": "text", "text": text}])
            self.tasks[s["id"]] = asyncio.create_task(self.agent(s["id"], text))
            return JSONResponse(m)

        async def interrupt(request: Request) -> Response:
            if (bad := await guard(request)) is not None:
                return bad
            s = find(request)
            if isinstance(s, Response):
                return s
            self.interrupts += 1
            task = self.tasks.pop(s["id"], None)
            if task is not None:
                task.cancel()
            s["state"] = "active"
            return JSONResponse({"status": "interrupted"})

        async def stream(request: Request) -> Response:
            if (bad := await guard(request)) is not None:
                return bad
            s = find(request)
            if isinstance(s, Response):
                return s
            sid, after = s["id"], request.query_params.get("last_event_id")
            drop = self.drop_streams > 0
            self.drop_streams -= drop

            async def frames() -> AsyncIterator[str]:
                ids = [e["id"] for e in self.events]
                cursor = ids.index(after) + 1 if after in ids else len(self.events)
                yield f"event: connected\ndata: {json.dumps({'event_type': 'connected', 'data': {}})}\n\n"
                sent = 0
                while True:
                    for e in self.events[cursor:]:
                        cursor += 1
                        if e["session_id"] not in (sid, None):
                            continue
                        yield f"event: {e['event_type']}\nid: {e['id']}\ndata: {json.dumps(e)}\n\n"
                        sent += 1
                        if drop and sent == 2:
                            return
                    waiter = self.new_event
                    try:
                        await asyncio.wait_for(waiter.wait(), 15)
                    except TimeoutError:
                        yield ": keepalive\n\n"

            return StreamingResponse(frames(), media_type="text/event-stream")

        return Starlette(
            routes=[
                Route("/api/v1/sandboxes/{id}/sessions", create, methods=["POST"]),
                Route("/api/v1/sessions/{sid}", get, methods=["GET"]),
                Route("/api/v1/sessions/{sid}/messages", send, methods=["POST"]),
                Route("/api/v1/sessions/{sid}/interrupt", interrupt, methods=["POST"]),
                Route("/api/v1/sessions/{sid}/stream", stream, methods=["GET"]),
            ]
        )


def front(home: Path, url: str, sandbox_id: str = SANDBOX) -> Settings:
    remotes = {
        "box": {
            "url": url,
            "dialect": "ciab",
            "token_env": "CIAB_TOKEN",
            "options": {"sandbox_id": sandbox_id},
            "reconnect_s": 10,
        }
    }
    return Settings(home=home, remotes=json.dumps(remotes))


async def test_ciab_session_messages_stream_resume_interrupt_and_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIAB_TOKEN", TOKEN)
    fake = FakeCiab()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="box")
            assert s["status"] == "ready", s
            assert s["sandbox"]["dialect"] == "ciab"
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            assert fake.sessions[rid]["metadata"] == {"caller_session": sid}

            # the first stream drops after two events: the client resumes with last_event_id, nothing doubled
            fake.drop_streams = 1
            r = await call(client, "send_message", session_id=sid, text="hello there world", wait_s=30)
            assert r["turn_status"] == "completed", r
            assert r["output"] == "echo: hello there world"
            events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
            assert "".join(e["data"]["text"] for e in events if e["type"] == "text.delta") == "echo: hello there world"

            r = await call(client, "send_message", session_id=sid, text="tool: ls", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "done"
            got = await call(client, "get_session", session_id=sid, events_after=0)
            types = [e["type"] for e in got["events"]]
            assert types.count("tool.started") == 1 and types.count("tool.completed") == 1
            assert [e["data"]["text"] for e in got["events"] if e["type"] == "tool.output"] == ["ran ls\n"]
            roles = [m["role"] for m in got["recent_messages"]]
            assert roles[-3:] == ["assistant", "tool", "assistant"]

            r = await call(client, "send_message", session_id=sid, text="slow", wait_s=1)
            assert r["turn_status"] == "running"
            assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
            assert fake.interrupts >= 1 and fake.sessions[rid]["state"] == "active"
            got = (await call(client, "get_session", session_id=sid))["session"]
            assert got["status"] == "ready" and got["last_turn"]["turn"] == 3
            assert got["last_turn"]["status"] == "interrupted" and got["last_turn"]["reason"] == "interrupted by the caller"

            r = await call(client, "send_message", session_id=sid, text="fail", wait_s=30)
            assert r["turn_status"] == "failed" and r["reason"] == "on the remote: agent crashed"

            closed = await call(client, "close_session", session_id=sid)
            assert closed["status"] == "dead"

            # a CIAB session that disappears: the local session fails, saying so
            await check_lost_session_fails(client, "box", fake.sessions.pop, "ciab")


async def test_ciab_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIAB_TOKEN", TOKEN)
    fake = FakeCiab()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "a", url, sandbox_id="no-such-sandbox"))) as client:
            s = await call(client, "create_session", driver="remote", remote="box")
            assert s["status"] == "failed"
            assert "404 sandbox_not_found" in s["failure_reason"] and "ciab" in s["failure_reason"]

        monkeypatch.setenv("CIAB_TOKEN", "wrong")
        async with Client(create_server(front(tmp_path / "b", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="box")
            assert s["status"] == "failed" and "refused the credentials" in s["failure_reason"]
