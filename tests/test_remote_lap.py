"""The remote driver's `litellm-agent-platform` dialect against a test server that answers as LAP's own server
does (measured against it, notes/platforms-lab/real-lap*.txt): create per agent answering 200 with the whole
`creating` row, bring-up polled through phases (or ending `failed` at `creating_sandbox`), `message_stream` SSE
(`ready`, `harness_event`, `done`, `error`), `/events` to follow again after a drop, `abort`; 404 "not found or
not ready" on `message_stream`/`abort` and 409 "session not ready, status=..." on `/events` while a session is
not ready; DELETE answering `deleted`, then `dead`; `{"error": "..."}`, 401 `unauthorized`, and zod's issue list
with 400."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
from sandbox_backends.remote import dialect, parse_remotes
from sandbox_backends.remote.litellm_agent_platform import LiteLlmAgentPlatformClient

from .asgi import serve_fake
from .conftest import call

pytestmark = pytest.mark.anyio

KEY = "lap-master-key-0123456789"
AGENT = "agent-7"
P = "/api/v1/managed_agents"
RESERVED = ("REPO_URL", "BRANCH", "LITELLM_API_KEY", "LITELLM_API_BASE", "LITELLM_DEFAULT_MODEL", "AGENT_PROMPT", "PORT",
            "GIT_TOKEN", "AGENT_REQUIREMENTS")  # fmt: skip
NO_K8S = "HTTP protocol is not allowed when skipTLSVerify is not set or false"


class FakeLap:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.listeners: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.aborts = 0
        self.titles: dict[str, str | None] = {}
        self.deletes: list[tuple[str, str]] = []
        self.fail_bring_up = False
        """Sessions made from now on end `failed` at `creating_sandbox`, as on a platform without Kubernetes."""
        self.refusals: list[tuple[int, str]] = []

    def restart(self, sid: str, polls: int = 2) -> None:
        """The session goes back to `creating` (its pod replaced) and is ready again after `polls` reads."""
        self.sessions[sid].update(status="creating", phase="pod_pending", polls=3 - polls)

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
        if text == "replace":  # the pod is replaced under the turn: the stream drops, the session is creating again
            self.restart(sid, polls=2)
        last = "replaced" if text == "replace" else "done"  # the reply read after the drop shows the turn ended
        for word in ("all ", last):
            await asyncio.sleep(0.6 if text == "drop" else 0.02)
            harness({"type": "assistant_text", "text": word})
        harness(
            {
                "type": "turn_complete",
                "cost_usd": 0.0123,
                "usage": {"input": 100, "output": 20, "cache_read": 50, "cache_write": 5},
            }
        )
        self.sessions[sid]["response"] = {"parts": [{"type": "text", "text": "all " + last}]}
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
                return err(404, f"agent '{request.path_params['agent_id']}' not found")
            body = await request.json()
            if set(body.get("env_vars") or {}) & set(RESERVED):
                issue = {"code": "custom", "message": f"env_vars cannot override reserved keys: {', '.join(RESERVED)}",
                         "path": ["env_vars"]}  # fmt: skip
                return JSONResponse({"error": [issue]}, status_code=400)
            sid = str(uuid.uuid4())
            self.titles[sid] = body.get("title")
            self.sessions[sid] = {
                "id": sid, "agent_id": AGENT, "sandbox_url": None, "harness_session_id": None, "tty_url": None,
                "tty_token": None, "supports_tui": False, "status": "creating", "task_arn": None, "response": None,
                "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "last_seen_at": None, "idle_timeout_ms": 900000, "failure_reason": None, "phase": None, "phase_detail": None,
                "origin": None, "title_preview": None, "sandboxes": None, "polls": 0, "fails": self.fail_bring_up,
            }  # fmt: skip
            return JSONResponse(public(self.sessions[sid]))  # 200, not 201

        def public(s: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in s.items() if k not in ("polls", "fails")}

        async def get(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None:
                return err(404, f"session {request.path_params['sid']} not found")
            if s["status"] == "creating":
                s["polls"] += 1
                if s["fails"]:
                    s.update(status="failed", phase="creating_sandbox", failure_reason=NO_K8S)
                else:
                    s["phase"] = ["pod_pending", "harness_listening", "ready"][min(s["polls"] - 1, 2)]
                    if s["phase"] == "ready":
                        s["status"] = "ready"
            return JSONResponse(public(s))

        def not_ready(request: Request, s: dict[str, Any] | None) -> Response | None:
            """What message, message_stream and abort answer for a session that is missing or not ready."""
            if s is None or s["status"] != "ready":
                self.refusals.append((404, request.url.path))
                return err(404, f"session {request.path_params['sid']} not found or not ready")
            return None

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
            if (refused := not_ready(request, s)) is not None:
                return refused
            assert s is not None
            text = (await request.json())["text"]
            return sse(s["id"], text, drop_after=1 if text in ("drop", "replace") else None)

        async def events(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None:
                return err(404, f"session {request.path_params['sid']} not found")
            if s["status"] != "ready":
                self.refusals.append((409, request.url.path))
                return err(409, f"session not ready, status={s['status']}")
            return sse(s["id"], None)

        async def abort(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if (refused := not_ready(request, s)) is not None:
                return refused
            assert s is not None
            self.aborts += 1
            task = self.tasks.pop(s["id"], None)
            if task is not None:
                task.cancel()
            return JSONResponse({"ok": True})

        async def delete(request: Request) -> Response:
            if not authorized(request):
                return err(401, "unauthorized")
            s = session(request)
            if s is None:
                return err(404, f"session {request.path_params['sid']} not found")
            answer = {"id": s["id"], "status": "dead" if s["status"] == "dead" else "deleted"}
            s["status"] = "dead"
            self.deletes.append((s["id"], answer["status"]))
            return JSONResponse(answer)

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
            got = (await call(client, "get_session", session_id=sid))["session"]
            assert got["status"] == "ready" and got["last_turn"]["turn"] == 3
            assert got["last_turn"]["status"] == "interrupted" and got["last_turn"]["reason"] == "interrupted by the caller"

            r = await call(client, "send_message", session_id=sid, text="fail", wait_s=30)
            assert r["turn_status"] == "failed" and "pod replacement" in r["reason"]

            assert (await call(client, "close_session", session_id=sid))["status"] == "dead"
            assert fake.sessions[rid]["status"] == "dead" and fake.deletes == [(rid, "deleted")]
            assert fake.titles[rid] is None  # no title asked for, none sent (not our session id)

        async with Client(create_server(front(tmp_path / "b", url, agent_id="nobody"))) as client:
            s = await call(client, "create_session", driver="remote", remote="lap")
            assert s["status"] == "failed" and "404" in s["failure_reason"] and "agent 'nobody' not found" in s["failure_reason"]
            assert "litellm-agent-platform" in s["failure_reason"]


def lap_client(url: str) -> LiteLlmAgentPlatformClient:
    remote = parse_remotes({"lap": {"url": url, "dialect": "litellm-agent-platform", "token_env": "LAP_KEY"}})
    client = dialect("litellm-agent-platform").client(remote["lap"])
    assert isinstance(client, LiteLlmAgentPlatformClient)
    return client


async def test_lap_sessions_that_are_not_ready_wait_or_say_their_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAP_KEY", KEY)
    fake = FakeLap()
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="lap", title="triage")
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            assert fake.titles[rid] == "triage"

            # its pod replaced, the session is creating again: a message waits for it instead of calling it gone
            fake.restart(rid)
            r = await call(client, "send_message", session_id=sid, text="list the files", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "all done", r

            # replaced during a turn: /events answers 409 "not ready" until it is ready, then the turn is followed
            r = await call(client, "send_message", session_id=sid, text="replace", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "all replaced", r
            assert (409, f"{P}/sessions/{rid}/events") in fake.refusals

            # abort on a session that is not ready: nothing runs there to stop (404 "not ready" is not "gone")
            fake.restart(rid, polls=1000)
            assert await lap_client(url).interrupt(rid) is False
            assert (404, f"{P}/sessions/{rid}/abort") in fake.refusals
            fake.sessions[rid]["status"] = "ready"

            # a session that failed there: the message fails, and so does the session, saying how, not "gone"
            fake.sessions[rid].update(status="failed", phase="pod_running", failure_reason="oom killed")
            r = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
            assert r["turn_status"] == "failed", r
            s = (await call(client, "get_session", session_id=sid))["session"]
            assert s["status"] == "failed" and "is failed at pod_running: oom killed" in s["failure_reason"], s
            assert "gone" not in s["failure_reason"] and rid in s["failure_reason"]

            # a create that never gets ready: the failure says why, and its session there is deleted
            fake.fail_bring_up = True
            s = await call(client, "create_session", driver="remote", remote="lap")
            made = list(fake.titles)[-1]
            assert s["status"] == "failed" and f"is failed at creating_sandbox: {NO_K8S}" in s["failure_reason"], s
            assert fake.deletes == [(made, "deleted")] and fake.sessions[made]["status"] == "dead"
            fake.fail_bring_up = False

            # zod's issues with 400: the field and the platform's message
            s = await call(client, "create_session", driver="remote", remote="lap", env={"PORT": "1"})
            assert s["status"] == "failed" and "answered 400" in s["failure_reason"], s
            assert "env_vars: env_vars cannot override reserved keys: REPO_URL" in s["failure_reason"]

        monkeypatch.setenv("LAP_KEY", "wrong")
        async with Client(create_server(front(tmp_path / "b", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="lap")
            assert s["status"] == "failed" and "refused the credentials (set LAP_KEY): unauthorized" in s["failure_reason"]
