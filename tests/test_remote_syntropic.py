"""The read-only `syntropic137` dialect: its sessions mirrored into ours, against a test server that answers as
Syntropic137's own API app does (measured against it, notes/platforms-lab/real-syn_endpoints.txt, and read in its
`routes/sessions.py` and `session_tools_dispatch.py`): routes without a prefix when served directly, `GET
/sessions` with `statuses`, `started_before`, `limit` (1..200, else 422 with pydantic's list) and `{sessions,
total}`, `offset` ignored; `GET /sessions/{id}` matching ids by prefix (409 when ambiguous); timestamps with a
space; costs as decimal strings; the detail's token split and model from a cost projection that may have no row
(zeros, null); operations whose `operation_type` is the raw event type; FastAPI's `{"detail": ...}` errors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
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
T0 = datetime(2026, 3, 11, 10, 0, tzinfo=UTC)
OPERATION = dict.fromkeys(("duration_seconds", "input_tokens", "output_tokens", "total_tokens", "tool_name", "tool_use_id",
    "tool_input", "tool_output", "message_role", "message_content", "thinking_content", "git", "git_sha", "git_message",
    "git_branch", "git_repo"))  # fmt: skip
GIT = dict.fromkeys(("operation", "sha", "branch", "repo", "message", "prev_branch", "is_clone", "remote", "author",
    "files_changed", "insertions", "deletions", "commits_count", "commit_range", "remote_url", "details", "from_branch",
    "to_branch", "estimated_tokens_added", "estimated_tokens_removed"))  # fmt: skip


def op(n: int, kind: str, **fields: Any) -> dict[str, Any]:
    """An operation as the detail shows it: every field present, most null, `success` true unless said."""
    at = T0 + timedelta(minutes=4, seconds=n)
    return {"operation_id": f"{fields.get('tool_use_id') or ''}-{at.isoformat()}", "operation_type": kind,
            "timestamp": str(at), "success": True, **OPERATION, **fields}  # fmt: skip


def commit(n: int, sha: str, message: str) -> dict[str, Any]:
    git = {**GIT, "operation": "commit", "sha": sha, "branch": "fix/flaky", "repo": "acme/app", "message": message,
           "files_changed": 2, "insertions": 10, "deletions": 3}  # fmt: skip
    fields = {"tool_name": "commit", "git_sha": sha, "git_message": message, "git_branch": "fix/flaky", "git_repo": "acme/app"}
    return op(n, "git_commit", git=git, **fields)


OPERATIONS = [
    op(1, "session_started"),
    op(2, "user_prompt_submitted", tool_name=""),
    op(3, "tool_execution_started", tool_name="Bash", tool_use_id="tu_1", tool_input={"command": "pytest -q"}),
    op(
        9,
        "tool_execution_completed",
        tool_name="Bash",
        tool_use_id="tu_1",
        tool_output="1 failed",
        success=False,
        duration_seconds=6.0,
    ),
    op(10, "tool_execution_started", tool_name="Edit", tool_use_id="tu_2", tool_input={"raw": "tests/test_app.py"}),
    op(11, "tool_execution_completed", tool_name="Edit", tool_use_id="tu_2", tool_output="edited", duration_seconds=0.2),
    commit(12, "9fceb02d0ae598e95dc970b74767f19372d61af8", "Fix the flaky test"),
    op(13, "agent_stopped"),
]


def session(n: int, status: str, *, sid: str | None = None, priced: bool = True, **extra: Any) -> dict[str, Any]:
    """A session as the platform keeps it: its own tokens (shown by the list), and a cost projection row (`priced`)
    that, when there is one, gives the list and the detail their tokens, model and cost."""
    started = T0 + timedelta(minutes=n)
    cost = {"agent_model": "claude-sonnet-4-5", "input_tokens": 1200 * n, "output_tokens": 300 * n,
            "cache_creation_tokens": 50, "cache_read_tokens": 4000, "total_tokens": 1500 * n + 4050,
            "total_cost_usd": f"0.{n:02d}25", "cost_by_model": {"claude-sonnet-4-5": f"0.{n:02d}25"}}  # fmt: skip
    return {
        "id": sid or f"sess-{n:04d}", "workflow_id": "wf-ci", "workflow_name": "CI repair", "execution_id": f"exec-{n}",
        "phase_id": "implement", "status": status, "agent_provider": "claude", "repos": ["acme/app"],
        "workspace_path": f"/workspace/{n}", "tokens": {"input_tokens": 120, "output_tokens": 40, "cache_creation_tokens": 0,
        "cache_read_tokens": 0, "total_tokens": 160}, "cost": cost if priced else None, "started_at": started,
        "completed_at": None if status == "running" else started + timedelta(seconds=59), "error_message": None,
        "operations": [], **extra,
    }  # fmt: skip


def summary(s: dict[str, Any]) -> dict[str, Any]:
    """A list row, in the platform's order of fields."""
    tokens, cost = s["tokens"], s["cost"] or {}
    tokens = {k: cost.get(k, v) for k, v in tokens.items()}
    price = cost.get("total_cost_usd", "0")
    return {"id": s["id"], "workflow_id": s["workflow_id"], "workflow_name": s["workflow_name"],
            "execution_id": s["execution_id"], "phase_id": s["phase_id"], "phase_display": s["phase_id"].title(),
            "status": s["status"], "agent_provider": s["agent_provider"], "agent_model": cost.get("agent_model"),
            "agent_model_display": cost.get("agent_model"), "repos": s["repos"], "repos_display": "app", **tokens,
            "total_tokens_display": str(tokens["total_tokens"]), "total_cost_usd": price, "total_cost_display": f"${price}",
            "duration_seconds": None, "duration_display": "\u2014", "started_at": str(s["started_at"]),
            "completed_at": str(s["completed_at"]) if s["completed_at"] else None}  # fmt: skip


def detail(s: dict[str, Any]) -> dict[str, Any]:
    """The detail: without a cost row its token split is zeros (the total is the session's own), model null."""
    cost = s["cost"] or {
        "agent_model": None, "input_tokens": 0, "output_tokens": 0, "cache_creation_tokens": 0, "cache_read_tokens": 0,
        "total_tokens": s["tokens"]["total_tokens"], "total_cost_usd": "0", "cost_by_model": {},
    }  # fmt: skip
    row = summary(s)
    tokens = {}
    for key in ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens", "total_tokens"):
        tokens |= {key: cost[key], f"{key}_display": str(cost[key])}
    return {**{k: row[k] for k in ("id", "workflow_id", "workflow_name", "execution_id", "phase_id", "phase_display")},
            "milestone_id": None, "agent_provider": s["agent_provider"], "agent_model": cost["agent_model"],
            "agent_model_display": cost["agent_model"], "repos": s["repos"], "repos_display": "app", "status": s["status"],
            "workspace_path": s["workspace_path"], **tokens, "total_cost_usd": cost["total_cost_usd"],
            "total_cost_display": f"${cost['total_cost_usd']}", "cost_by_model": cost["cost_by_model"],
            "operations": s["operations"], "started_at": row["started_at"], "completed_at": row["completed_at"],
            "duration_seconds": None, "duration_display": "\u2014", "error_message": s["error_message"], "metadata": {}}  # fmt: skip


class FakeSyntropic:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        """Served directly the API has no prefix; behind the gateway, /api/v1."""
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

        def invalid(loc: str, kind: str, msg: str, value: str, ctx: dict[str, Any]) -> JSONResponse:
            error = {"type": kind, "loc": ["query", loc], "msg": msg, "input": value, "ctx": ctx}
            return JSONResponse({"detail": [error]}, status_code=422)

        async def listing(request: Request) -> Response:
            if (bad := refused(request)) is not None:
                return bad
            q = request.query_params  # `offset` is not a parameter: it is ignored
            limit = int(q.get("limit", 50))
            if limit > 200:
                return invalid("limit", "less_than_equal", "Input should be less than or equal to 200", q["limit"], {"le": 200})
            if limit < 1:
                return invalid("limit", "greater_than_equal", "Input should be greater than or equal to 1", q["limit"], {"ge": 1})
            statuses = (q.get("statuses") or q.get("status") or "").split(",")
            rows = [s for s in self.sessions.values() if statuses == [""] or s["status"] in statuses]
            if "started_before" in q:  # inclusive, compared as times
                rows = [s for s in rows if s["started_at"] <= datetime.fromisoformat(q["started_before"])]
            rows = sorted(rows, key=lambda s: s["started_at"], reverse=True)[:limit]
            return JSONResponse({"sessions": [summary(s) for s in rows], "total": len(rows)})

        async def one(request: Request) -> Response:
            if (bad := refused(request)) is not None:
                return bad
            if self.fail_details:
                self.fail_details -= 1
                return JSONResponse({"detail": "projection store unavailable"}, status_code=500)
            wanted = request.path_params["sid"]
            found = [s for s in self.sessions.values() if s["id"] == wanted] or [
                s for s in self.sessions.values() if s["id"].startswith(wanted)
            ]  # an equal id first, else a unique prefix
            if len(found) > 1:
                listed = "".join(f"\n  - {s['id'][:12]}..." for s in found)
                text = f"Ambiguous session ID '{wanted}' matches {len(found)} entries:{listed}\nProvide a longer prefix to disambiguate."
                return JSONResponse({"detail": text}, status_code=409)
            if not found:
                return JSONResponse({"detail": f"Session not found: {wanted}"}, status_code=404)
            return JSONResponse(detail(found[0]))

        async def nothing(request: Request) -> Response:
            return JSONResponse({"detail": "Not Found"}, status_code=404)

        async def other(request: Request) -> Response:  # sessions are read-only over HTTP
            refused(request)
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)

        return Starlette(
            routes=[
                Route(self.prefix + "/sessions", listing, methods=["GET"]),
                Route(self.prefix + "/sessions/{sid}", one, methods=["GET"]),
                Route(self.prefix + "/sessions/{path:path}", other, methods=["POST", "PUT", "PATCH", "DELETE"]),
                Route("/{path:path}", nothing, methods=["GET"]),
            ]
        )


def front(home: Path, url: str, **options: Any) -> Settings:
    options = {"limit": 2, "poll_s": 0.3, **options}
    remotes = {"syn": {"url": url, "dialect": "syntropic137", "token_env": "SYN_TOKEN", "options": options, "reconnect_s": 2}}
    return Settings(home=home, remotes=json.dumps(remotes))


def first_pages(requests: list[tuple[str, str, dict[str, str]]]) -> list[dict[str, str]]:
    """The first page of each poll among `requests`: it is the only one without `started_before`."""
    return [p for m, path, p in requests if path == "/sessions" and "started_before" not in p]


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
            # five sessions read two a page, going back in time with started_before (timestamps have a space)
            befores = [p.get("started_before") for m, path, p in fake.requests if path == "/sessions"][:5]
            assert befores[0] is None and befores[1] == "2026-03-11T10:04:00+00:00"
            assert all("offset" not in p for m, path, p in fake.requests)

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
            assert first["sessions"][0]["created_at"].startswith("2026-03-11T10:05:00")

            sid = local_id("syn", running)
            got = await call(client, "get_session", session_id=sid)
            s = got["session"]
            assert s["status"] == "busy" and s["agent"] == "remote" and s["model"] == "claude-sonnet-4-5"
            assert s["sandbox"] == {
                "remote": "syn",
                "dialect": "syntropic137",
                "url": url,
                "remote_session_id": running,
                "read_only": True,
            }
            assert s["usage"]["input_tokens"] == 6000 and s["usage"]["output_tokens"] == 1500
            assert s["usage"]["cache_read_tokens"] == 4000 and s["usage"]["cache_creation_tokens"] == 50
            assert s["usage"]["cost_usd"] == pytest.approx(0.0525) and s["usage"]["cost_by_model"] == {
                "claude-sonnet-4-5": pytest.approx(0.0525)
            }
            assert s["metadata"]["workflow_id"] == "wf-ci" and s["metadata"]["operations"] == 8
            assert s["workspace"] == "/workspace/5" and s["turns"] == 1

            # the real operations reach the transcript: the prompt, tool calls with input and result, the commit
            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert "## user" in transcript and "Syntropic137 does not return its text" in transcript
            assert "[tool call Bash {'command': 'pytest -q'}]" in transcript
            assert "[tool result (error)] 1 failed" in transcript
            assert "[tool call Edit {'raw': 'tests/test_app.py'}]" in transcript and "[tool result] edited" in transcript
            assert "[git_commit] 9fceb02d0ae5 on fix/flaky in acme/app: Fix the flaky test (2 files +10 -3)" in transcript
            assert "session_started" not in transcript and "agent_stopped" not in transcript
            messages = got["recent_messages"]
            assert [m["role"] for m in messages[-4:]] == ["tool", "assistant", "tool", "system"]
            assert messages[-3]["content"][0] == {
                "type": "tool_use",
                "id": "tu_2",
                "name": "Edit",
                "input": {"raw": "tests/test_app.py"},
            }
            assert messages[-3]["created_at"].startswith("2026-03-11T10:04:10")

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
            fake.sessions[running].update(status="completed", completed_at=T0 + timedelta(minutes=5, seconds=59))
            fake.sessions[running]["cost"]["total_cost_usd"] = "0.0900"
            git_push = op(20, "git_push", tool_name="push", git={**GIT, "operation": "push", "branch": "fix/flaky"})
            fake.sessions[running]["operations"] = [*OPERATIONS, git_push]
            got = await call(client, "get_session", session_id=sid)
            assert got["session"]["status"] == "dead" and got["session"]["close_reason"] == "completed on syntropic137"
            assert got["session"]["usage"]["cost_usd"] == pytest.approx(0.09)
            assert got["recent_messages"][-1]["content"][0]["text"] == "[git_push] on fix/flaky"
            assert got["session"]["metadata"]["operations"] == 9
            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert transcript.count("Fix the flaky test") == 1  # operations already stored are not added again

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
        before = len(fake.requests)
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            with anyio.fail_after(10):  # a poll's first page comes after the whole previous poll is stored
                while len(first_pages(fake.requests[before:])) < 2:
                    await anyio.sleep(0.05)
            page = await listed(client, limit=50)
            assert page["total"] == 7 and len({s["id"] for s in page["sessions"]}) == 7


async def test_syntropic_usage_from_the_list_is_not_lost_to_an_unpriced_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cost row the detail says 0 input and 0 output tokens under a total of 160, and no model, where the
    list said 120/40/160: the mirror keeps 120/40."""
    monkeypatch.setenv("SYN_TOKEN", TOKEN)
    fake = FakeSyntropic()
    key = fake.add(session(1, "running", priced=False, operations=OPERATIONS[:2]))
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url))) as client:
            await wait_listed(client, 1)
            got = await call(client, "get_session", session_id=local_id("syn", key))
            usage = got["session"]["usage"]
            assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (120, 40, 160)
            assert usage["cost_usd"] == 0.0 and got["session"]["model"] is None
            assert got["session"]["metadata"]["agent_provider"] == "claude"
            # a priced detail later raises the figures; an unpriced one again does not lower them
            fake.sessions[key]["cost"] = session(1, "running")["cost"]
            usage = (await call(client, "get_session", session_id=local_id("syn", key)))["session"]["usage"]
            assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (1200, 300, pytest.approx(0.0125))
            fake.sessions[key]["cost"] = None
            usage = (await call(client, "get_session", session_id=local_id("syn", key)))["session"]["usage"]
            assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (1200, 300, pytest.approx(0.0125))


async def test_syntropic_prefix_matching_never_passes_one_session_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detail matches ids by prefix once none is equal: a vanished session whose id begins others' answers as
    409 "Ambiguous session ID", or as the one other session; either way it is gone."""
    monkeypatch.setenv("SYN_TOKEN", TOKEN)
    fake = FakeSyntropic()
    ambiguous = fake.add(session(1, "running", sid="sess-ab"))
    fake.add(session(2, "completed", sid="sess-ab-01"))
    fake.add(session(3, "completed", sid="sess-ab-02"))
    shadowed = fake.add(session(4, "running", sid="sess-cd"))
    fake.add(session(5, "failed", sid="sess-cd-01", error_message="boom"))
    async with serve_fake(fake) as url:
        async with Client(create_server(front(tmp_path / "front", url, limit=50))) as client:
            await wait_listed(client, 5)
            del fake.sessions[ambiguous], fake.sessions[shadowed]
            for key in (ambiguous, shadowed):
                s = (await call(client, "get_session", session_id=local_id("syn", key)))["session"]
                assert s["status"] == "failed" and f"the session {key} on" in s["failure_reason"], s
                assert "is gone" in s["failure_reason"]


async def test_syntropic_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_sessions.mirror")
    fake = FakeSyntropic()
    running = fake.add(session(1, "running", operations=OPERATIONS[:2]))
    async with serve_fake(fake) as url:
        monkeypatch.setenv("SYN_TOKEN", "wrong")
        async with Client(create_server(front(tmp_path / "a", url))) as client:
            with anyio.fail_after(10):  # the poll says why it read nothing
                while not any(
                    "syntropic137" in r.message and "refused the credentials (set SYN_TOKEN)" in r.message for r in caplog.records
                ):
                    await anyio.sleep(0.05)
            assert (await listed(client))["total"] == 0

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
            assert s["phase_detail"] is None and s["preview"] == "(a prompt; Syntropic137 does not return its text)"

        # the gateway's prefix on a server that has none (or the other way round): the log says where /sessions is
        caplog.clear()
        async with Client(create_server(front(tmp_path / "d", url + "/api/v1"))) as client:
            with anyio.fail_after(10):
                while not any("no sessions list" in r.message for r in caplog.records):
                    await anyio.sleep(0.05)
            text = next(r.message for r in caplog.records if "no sessions list" in r.message)
            assert f"{url}/api/v1/sessions (it answered 404)" in text
            assert "http://HOST:8137/api/v1" in text and "no prefix" in text

        async with Client(create_server(front(tmp_path / "c", url, poll_s="often"))) as client:
            text = await call_error(client, "create_session", driver="remote", remote="syn")
            assert "options.poll_s must be a number from 0.1 up, not 'often'" in text and "'syn'" in text
