"""The remote driver's `litellm-agent-platform` dialect against a test server written from LAP's documented
wire format (shared/seeds/000, notes/platforms.md §1): create per agent, bring-up polled through
`creating` phases, `message_stream` SSE (`ready`, `harness_event`, `done`, `error`), `/events` to follow
again after a drop, `abort`, DELETE, and `{"error": "..."}` bodies."""

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

pytestmark = pytest.mark.anyio

KEY = "lap-master-key-0123456789"
AGENT = "agent-7"
P = "/api/v1/managed_agents"


class FakeLap:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.listeners: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.aborts = 0

    def publish(self, sid: str, frame: dict[str, Any]) -> None:
        for q in self.listeners.get(sid, []):
            q.put_nowait(frame)

    async def turn(self, sid: str, text: str) -> None:
        def harness(event: dict[str, Any]) -> None:
            self.publish(sid, {"type": "harness_event", "event": event})

        await asyncio.sleep(0.05)
        if text == "fail":
            self.publish(sid, {"type": "error", "message": "harness unavailable — pod replacement in progress"})
            return
        harness({"type": "tool_call", "call_id": "c1", "tool": "bash", "input": {"command": "ls"}})
        harness({"type": "tool_result", "call_id": "c1", "output": "README.md\n", "is_error": False})
        if text == "slow":
            await asyncio.sleep(60)
        for word in ("all ", "done"):
            await asyncio.sleep(0.6 if text == "drop" else 0.02)
            harness({"type": "assistant_text", "text": word})
        harness(
            {
                "type": "turn_complete",
                "cost_usd": 0.0123,
                "usage": {"input": 100, "output": 20, "cache_read": 50, "cache_write": 5},
            }
        )
        self.sessions[sid]["response"] = {"parts": [{"type": "text", "text": "all done"}]}
        self.publish(sid, {"type": "done"})

    def app(self) -> Starlette:
        def err(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=status)

        def authorized(request: Request) -> bool:
            return request.headers.get("authorization") == f"Bearer {KEY}"

        def session(request: Request) -> dict[str, Any] | None:
            return self.sessions.get(request.path_params["sid"])

        async def create(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            if request.path_params["agent_id"] != AGENT:
                return err(404, f"agent {request.path_params['agent_id']} not found")
            body = await request.json()
            sid = str(uuid.uuid4())
            self.sessions[sid] = {
                "id": sid,
                "agent_id": AGENT,
                "status": "creating",
                "phase": "creating_sandbox",
                "title_preview": body.get("title"),
                "response": None,
                "polls": 0,
                "failure_reason": None,
            }
            return JSONResponse({k: v for k, v in self.sessions[sid].items() if k != "polls"}, status_code=201)

        async def get(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None:
                return err(404, "session not found")
            if s["status"] == "creating":
                s["polls"] += 1
                s["phase"] = ["pod_pending", "harness_listening", "ready"][min(s["polls"] - 1, 2)]
                if s["phase"] == "ready":
                    s["status"] = "ready"
            return JSONResponse({k: v for k, v in s.items() if k != "polls"})

        def sse(sid: str, start: str | None, drop_after: int | None = None) -> StreamingResponse:
            q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.listeners.setdefault(sid, []).append(q)

            async def frames() -> AsyncIterator[str]:
                try:
                    yield f"data: {json.dumps({'type': 'ready'})}\n\n"
                    if start is not None:
                        self.tasks[sid] = asyncio.create_task(self.turn(sid, start))
                    sent = 0
                    while True:
                        frame = await q.get()
                        yield f"data: {json.dumps(frame)}\n\n"
                        sent += 1
                        if frame["type"] in ("done", "error") or (drop_after is not None and sent >= drop_after):
                            return
                finally:
                    self.listeners[sid].remove(q)

            return StreamingResponse(frames(), media_type="text/event-stream")

        async def message_stream(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None or s["status"] != "ready":
                return err(404, "session not found or not ready")
            text = (await request.json())["text"]
            return sse(s["id"], text, drop_after=1 if text == "drop" else None)

        async def events(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None:
                return err(404, "session not found")
            return sse(s["id"], None)

        async def abort(request: Request) -> Response:
            s = session(request)
            if s is None:
                return err(404, "session not found")
            self.aborts += 1
            task = self.tasks.pop(s["id"], None)
            if task is not None:
                task.cancel()
            return JSONResponse({"ok": True})

        async def delete(request: Request) -> Response:
            s = session(request)
            if s is None:
                return err(404, "session not found")
            s["status"] = "dead"
            return JSONResponse({"id": s["id"], "status": "deleted"})

        return Starlette(
            routes=[
                Route(P + "/agents/{agent_id}/session", create, methods=["POST"]),
                Route(P + "/sessions/{sid}", get, methods=["GET"]),
                Route(P + "/sessions/{sid}", delete, methods=["DELETE"]),
                Route(P + "/sessions/{sid}/message_stream", message_stream, methods=["POST"]),
                Route(P + "/sessions/{sid}/events", events, methods=["GET"]),
                Route(P + "/sessions/{sid}/abort", abort, methods=["POST"]),
            ]
        )


def front(home: Path, url: str, agent_id: str = AGENT) -> Settings:
    remotes = {
        "lap": {
            "url": url,
            "dialect": "litellm-agent-platform",
            "token_env": "LAP_KEY",
            "options": {"agent_id": agent_id},
            "reconnect_s": 10,
        }
    }
    return Settings(home=home, remotes=json.dumps(remotes))


async def test_lap_bring_up_stream_usage_drop_abort_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAP_KEY", KEY)
    fake = FakeLap()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="lap")
            assert s["status"] == "ready", s
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            phases = [
                e["data"]["phase"]
                for e in (await call(client, "get_session", session_id=sid, events_after=0))["events"]
                if e["type"] == "phase"
            ]
            assert "starting" in phases and "starting_agent" in phases and phases[-1] == "ready"

            r = await call(client, "send_message", session_id=sid, text="list the files", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "all done", r
            assert r["usage"]["input_tokens"] == 100 and r["usage"]["cache_read_tokens"] == 50
            assert r["usage"]["cost_usd"] == pytest.approx(0.0123)
            got = await call(client, "get_session", session_id=sid, events_after=0)
            assert [e["data"]["text"] for e in got["events"] if e["type"] == "tool.output"] == ["README.md\n"]
            assert got["session"]["usage"]["output_tokens"] == 20

            # the stream drops after its first frame: the turn is followed on /events to its end
            r = await call(client, "send_message", session_id=sid, text="drop", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "all done", r

            r = await call(client, "send_message", session_id=sid, text="slow", wait_s=1)
            assert r["turn_status"] == "running"
            assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
            assert fake.aborts >= 1

            r = await call(client, "send_message", session_id=sid, text="fail", wait_s=30)
            assert r["turn_status"] == "failed" and "pod replacement" in r["reason"]

            assert (await call(client, "close_session", session_id=sid))["status"] == "dead"
            assert fake.sessions[rid]["status"] == "dead"

        async with Client(create_server(front(tmp_path / "b", url, agent_id="nobody"))) as client:
            s = await call(client, "create_session", driver="remote", remote="lap")
            assert s["status"] == "failed" and "404" in s["failure_reason"] and "agent nobody not found" in s["failure_reason"]
            assert "litellm-agent-platform" in s["failure_reason"]
