"""The read-only `syntropic137` dialect: its sessions mirrored into ours, against a test server written from
Syntropic137's documented wire format (shared/seeds/003, notes/platforms.md §4): `GET /sessions` with
`statuses`, `started_before`, `limit` (1..200) and `{sessions, total}`, `GET /sessions/{id}` with tokens,
`total_cost_usd` as a decimal string, `cost_by_model` and `operations`, FastAPI's `{"detail": ...}` errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_sessions.mirror import local_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .asgi import serve_fake
from .conftest import call, call_error

pytestmark = pytest.mark.anyio

TOKEN = "syn-token-0123456789abcdef"
SUMMARY = ("id", "workflow_id", "workflow_name", "execution_id", "phase_id", "phase_display", "status", "agent_provider",
           "agent_model", "repos", "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
           "total_tokens", "total_cost_usd", "total_cost_display", "duration_seconds", "started_at", "completed_at")  # fmt: skip
OPERATIONS = [
    {
        "operation_id": "op1",
        "operation_type": "message_request",
        "timestamp": "2026-03-11T10:04:01Z",
        "message_role": "user",
        "message_content": "Fix the failing test",
    },
    {
        "operation_id": "op2",
        "operation_type": "thinking",
        "timestamp": "2026-03-11T10:04:02Z",
        "thinking_content": "look at tests first",
    },
    {
        "operation_id": "op3",
        "operation_type": "tool_started",
        "timestamp": "2026-03-11T10:04:03Z",
        "tool_name": "Bash",
        "tool_use_id": "tu_1",
        "tool_input": {"command": "pytest -q"},
    },
    {
        "operation_id": "op4",
        "operation_type": "tool_completed",
        "timestamp": "2026-03-11T10:04:09Z",
        "tool_name": "Bash",
        "tool_use_id": "tu_1",
        "tool_output": "1 passed",
        "success": True,
        "duration_seconds": 6.0,
    },
    {
        "operation_id": "op5",
        "operation_type": "message_response",
        "timestamp": "2026-03-11T10:04:10Z",
        "message_role": "assistant",
        "message_content": "Fixed it.",
    },
]


def session(n: int, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"sess-{n:04d}", "workflow_id": "wf-ci", "workflow_name": "CI repair", "execution_id": f"exec-{n}",
        "phase_id": "implement", "phase_display": "Implement", "milestone_id": None, "status": status,
        "agent_provider": "claude", "agent_model": "claude-sonnet-4-5", "repos": ["acme/app"], "workspace_path": f"/workspace/{n}",
        "input_tokens": 1200 * n, "output_tokens": 300 * n, "cache_creation_tokens": 50, "cache_read_tokens": 4000,
        "total_tokens": 1500 * n + 4050, "total_cost_usd": f"0.{n:02d}25", "total_cost_display": f"$0.{n:02d}",
        "cost_by_model": {"claude-sonnet-4-5": f"0.{n:02d}25"}, "duration_seconds": 60.0,
        "started_at": f"2026-03-11T10:{n:02d}:00+00:00", "completed_at": None if status == "running" else f"2026-03-11T10:{n:02d}:59+00:00",
        "error_message": None, "metadata": {}, "operations": [], **extra,
    }  # fmt: skip


class FakeSyntropic:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_details = 0
        self.tasks: dict[str, Any] = {}

    def add(self, s: dict[str, Any]) -> str:
        self.sessions[s["id"]] = s
        return s["id"]

    def app(self) -> Starlette:
        def refused(request: Request) -> Response | None:
            self.requests.append((request.method, request.url.path, dict(request.query_params)))
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse({"detail": "Not authenticated"}, status_code=401)
            return None

        async def listing(request: Request) -> Response:
            if (bad := refused(request)) is not None:
                return bad
            q = request.query_params
            limit = int(q.get("limit", 50))
            if not 1 <= limit <= 200:
                return JSONResponse(
                    {
                        "detail": [
                            {
                                "loc": ["query", "limit"],
                                "msg": "Input should be less than or equal to 200",
                                "type": "less_than_equal",
                                "input": q["limit"],
                                "ctx": {"le": 200},
                            }
                        ]
                    },
                    status_code=422,
                )
            statuses = (q.get("statuses") or q.get("status") or "").split(",")
            rows = [s for s in self.sessions.values() if statuses == [""] or s["status"] in statuses]
            if "started_before" in q:
                rows = [s for s in rows if s["started_at"] <= q["started_before"]]  # inclusive, as documented
            rows = sorted(rows, key=lambda s: s["started_at"], reverse=True)[:limit]
            return JSONResponse({"sessions": [{k: s[k] for k in SUMMARY} for s in rows], "total": len(rows)})

        async def detail(request: Request) -> Response:
            if (bad := refused(request)) is not None:
                return bad
            if self.fail_details:
                self.fail_details -= 1
                return JSONResponse({"detail": "projection store unavailable"}, status_code=500)
            wanted = request.path_params["sid"]
            found = [s for s in self.sessions.values() if s["id"].startswith(wanted)]  # partial ids match
            if len(found) != 1:
                return JSONResponse({"detail": f"Session {wanted} not found"}, status_code=404)
            return JSONResponse(found[0])

        async def other(request: Request) -> Response:  # sessions are read-only over HTTP
            refused(request)
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)

        return Starlette(
            routes=[
                Route("/api/v1/sessions", listing, methods=["GET"]),
                Route("/api/v1/sessions/{sid}", detail, methods=["GET"]),
                Route("/api/v1/{path:path}", other, methods=["POST", "PUT", "PATCH", "DELETE"]),
            ]
        )


def front(home: Path, url: str, **options: Any) -> Settings:
    options = {"limit": 2, "poll_s": 0.3, **options}
    remotes = {
        "syn": {"url": url + "/api/v1", "dialect": "syntropic137", "token_env": "SYN_TOKEN", "options": options, "reconnect_s": 2}
    }
    return Settings(home=home, remotes=json.dumps(remotes))


async def listed(client: Client, **filters: Any) -> dict[str, Any]:
    return await call(client, "list_sessions", tags=["syn"], **filters)


async def wait_listed(client: Client, total: int, **filters: Any) -> dict[str, Any]:
    with anyio.fail_after(10):
        while (page := await listed(client, **filters))["total"] != total:
            await anyio.sleep(0.05)
    return page


async def test_syntropic_sessions_are_mirrored_read_only_and_kept_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYN_TOKEN", TOKEN)
    fake = FakeSyntropic()
    running = fake.add(session(5, "running", operations=OPERATIONS))
    for n, status in ((4, "completed"), (3, "failed"), (2, "cancelled"), (1, "completed")):
        fake.add(session(n, status, error_message="agent exceeded max turns" if status == "failed" else None))
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            await wait_listed(client, 5)
            # five sessions read two a page, going back in time with started_before
            befores = [p.get("started_before") for m, path, p in fake.requests if path == "/api/v1/sessions"][:5]
            assert befores[0] is None and befores[1] == "2026-03-11T10:04:00+00:00"

            assert [s["status"] for s in (await listed(client, statuses=["busy"]))["sessions"]] == ["busy"]
            failed = (await listed(client, statuses=["failed"]))["sessions"]
            assert failed[0]["failure_reason"] == "on syntropic137: agent exceeded max turns"
            dead = (await listed(client, statuses=["dead"]))["sessions"]
            assert sorted(s["close_reason"] for s in dead) == [
                "cancelled on syntropic137",
                "completed on syntropic137",
                "completed on syntropic137",
            ]
            first = await listed(client, limit=2)
            rest = await listed(client, limit=3, cursor=first["next_cursor"])
            assert rest["next_cursor"] is None and len({s["id"] for s in first["sessions"] + rest["sessions"]}) == 5
            assert first["sessions"][0]["title"] == "CI repair / Implement" and first["sessions"][0]["driver"] == "remote"

            sid = local_id("syn", running)
            got = await call(client, "get_session", session_id=sid)
            s = got["session"]
            assert s["status"] == "busy" and s["agent"] == "remote" and s["model"] == "claude-sonnet-4-5"
            assert s["sandbox"] == {
                "remote": "syn",
                "dialect": "syntropic137",
                "url": url + "/api/v1",
                "remote_session_id": running,
                "read_only": True,
            }
            assert s["usage"]["input_tokens"] == 6000 and s["usage"]["output_tokens"] == 1500
            assert s["usage"]["cache_read_tokens"] == 4000 and s["usage"]["cache_creation_tokens"] == 50
            assert s["usage"]["cost_usd"] == pytest.approx(0.0525) and s["usage"]["cost_by_model"] == {
                "claude-sonnet-4-5": pytest.approx(0.0525)
            }
            assert s["metadata"]["workflow_id"] == "wf-ci" and s["metadata"]["operations"] == 5
            assert s["preview"] == "Fix the failing test" and s["workspace"] == "/workspace/5"
            assert [m["role"] for m in got["recent_messages"]] == ["user", "assistant", "tool", "assistant"]
            assert got["recent_messages"][1]["content"][0] == {
                "type": "tool_use",
                "id": "tu_1",
                "name": "Bash",
                "input": {"command": "pytest -q"},
            }
            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert "Fix the failing test" in transcript and "[tool result] 1 passed" in transcript and "Fixed it." in transcript

            for tool, args in (
                ("send_message", {"text": "hi"}),
                ("send_message", {"text": "hi", "queue": True}),
                ("interrupt", {}),
            ):
                error = await call_error(client, tool, session_id=sid, **args)
                assert "syntropic137 sessions are read-only:" in error and running in error
            error = await call_error(client, "create_session", driver="remote", remote="syn")
            assert "syntropic137 sessions are read-only" in error and "list_sessions(tags=['syn'])" in error

            # get_session reads the platform first: a new operation, the cost so far, the end
            fake.sessions[running].update(status="completed", completed_at="2026-03-11T10:05:59+00:00", total_cost_usd="0.0900")
            fake.sessions[running]["operations"] = [
                *OPERATIONS,
                {"operation_id": "op6", "operation_type": "message_response", "message_content": "All green now."},
            ]
            got = await call(client, "get_session", session_id=sid)
            assert got["session"]["status"] == "dead" and got["session"]["close_reason"] == "completed on syntropic137"
            assert got["session"]["usage"]["cost_usd"] == pytest.approx(0.09)
            assert (
                got["recent_messages"][-1]["content"][0]["text"] == "All green now."
                and got["session"]["metadata"]["operations"] == 6
            )
            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert transcript.count("Fixed it.") == 1  # operations already stored are not added again

            # a new session on the platform shows up at the next poll; one that vanishes while running fails
            gone = fake.add(session(6, "running"))
            kept = fake.add(session(7, "running"))
            await wait_listed(client, 2, statuses=["busy"])
            del fake.sessions[gone]
            await wait_listed(client, 2, statuses=["failed"])  # found by the poll
            s = (await call(client, "get_session", session_id=local_id("syn", gone)))["session"]
            assert (
                s["status"] == "failed"
                and "sess-0006" in s["failure_reason"]
                and "is gone" in s["failure_reason"]
                and "syntropic137" in s["failure_reason"]
            )

            # closing marks the session closed here, calls nothing there, and the mirror leaves it closed
            closed = await call(client, "close_session", session_id=local_id("syn", kept))
            assert closed["status"] == "dead"
            assert {m for m, _, _ in fake.requests} == {"GET"}
            polls = len(fake.requests)
            with anyio.fail_after(10):
                while len(fake.requests) < polls + 8:
                    await anyio.sleep(0.05)
            s = (await call(client, "get_session", session_id=local_id("syn", kept)))["session"]
            assert s["status"] == "dead" and s["close_reason"] == "closed"

        # another server on the same state finds the same sessions, not copies
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            await anyio.sleep(0.5)
            page = await listed(client, limit=50)
            assert page["total"] == 7 and len({s["id"] for s in page["sessions"]}) == 7


async def test_syntropic_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_sessions.mirror")
    fake = FakeSyntropic()
    running = fake.add(session(1, "running", operations=OPERATIONS[:1]))
    async with serve_fake(fake) as url:
        monkeypatch.setenv("SYN_TOKEN", "wrong")
        async with Client(create_server(front(tmp_path / "a", url))) as client:
            with anyio.fail_after(10):
                while not fake.requests:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.1)
            assert (await listed(client))["total"] == 0
            assert any(
                "syntropic137" in r.message and "refused the credentials (set SYN_TOKEN)" in r.message for r in caplog.records
            )

        monkeypatch.setenv("SYN_TOKEN", TOKEN)
        async with Client(create_server(front(tmp_path / "b", url))) as client:
            await wait_listed(client, 1)
            fake.fail_details = 1
            s = (await call(client, "get_session", session_id=local_id("syn", running)))["session"]
            assert (
                s["status"] == "busy"
                and "answered 500" in s["phase_detail"]
                and "projection store unavailable" in s["phase_detail"]
            )
            assert "syntropic137" in s["phase_detail"]
            s = (await call(client, "get_session", session_id=local_id("syn", running)))["session"]
            assert s["phase_detail"] is None and s["preview"] == "Fix the failing test"

        async with Client(create_server(front(tmp_path / "c", url, poll_s="often"))) as client:
            text = await call_error(client, "create_session", driver="remote", remote="syn")
            assert "options.poll_s must be a number from 0.1 up, not 'often'" in text and "'syn'" in text
