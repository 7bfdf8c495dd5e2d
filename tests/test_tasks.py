"""MCP tasks through the real SDK client: 2025-11-25 task-augmented tools/call with tasks/get, result, list
and cancel; the 2026-07-28 io.modelcontextprotocol/tasks extension. In memory, over HTTP with owners, and
across two stdio server processes sharing one store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, Request, RequestParams
from mcp_types import Result
from pydantic import ConfigDict, TypeAdapter

from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .asgi import serve
from .conftest import ERAS, call, new_session, stdio_params

pytestmark = pytest.mark.anyio

EXTENSION = "io.modelcontextprotocol/tasks"
ALICE, BOB = "alice-token-0123456789", "bob-token-abcdefghijkl"


class CreatedTask(Result):
    """What a 2026-07-28 tools/call answers when the server made a task."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str


async def _never(result: CreatedTask, ctx: ClaimContext) -> CallToolResult:
    raise AssertionError("these tests take the task shape themselves (allow_claimed=True)")


class TasksAware(ClientExtension):
    """A client that declares the tasks extension (and can receive its task results)."""

    identifier = EXTENSION

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=_never)]


class AnyParams(RequestParams):
    model_config = ConfigDict(extra="allow")


class Raw(Request[AnyParams, str]):
    method: str
    params: AnyParams


async def rpc(client: Client, method: str, **params: Any) -> dict[str, Any]:
    """A request the SDK client has no method for. The 2026-07-28 path goes through the client's envelope
    (protocol version, declared capabilities); the handshake path is sent as is, since the client would
    check a task-augmented tools/call's answer against the plain CallToolResult."""
    if client.protocol_version.startswith("2026"):
        return await client.session.send_request(Raw(method=method, params=AnyParams(**params)), TypeAdapter(dict[str, Any]))
    answer: dict[str, Any] = await client.session._dispatcher.send_raw_request(method, params, None)  # type: ignore[attr-defined]
    return answer


async def start(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Start a tool as a task in the client's era: the Task it answers with."""
    if client.protocol_version.startswith("2026"):
        created = await client.session.call_tool(tool, {"wait_s": 0, **arguments}, allow_claimed=True)
        assert isinstance(created, CreatedTask), created
        return created.model_dump(by_alias=True)
    return (await rpc(client, "tools/call", name=tool, arguments=arguments, task={"ttl": 60_000}))["task"]


async def settle(client: Client, task_id: str, status: str | None = None) -> dict[str, Any]:
    """Poll tasks/get until the task is in `status` (or has ended)."""
    with anyio.fail_after(60):
        while True:
            task = await rpc(client, "tasks/get", taskId=task_id)
            if task["status"] == status or task["status"] in ("completed", "failed", "cancelled"):
                return task
            await anyio.sleep(0.1)


async def outcome(client: Client, task_id: str) -> dict[str, Any]:
    """The structured result of an ended task: tasks/result (2025-11-25), or inlined by tasks/get."""
    if client.protocol_version.startswith("2026"):
        task = await settle(client, task_id)
        assert task["status"] == "completed", task
        return task["result"]["structuredContent"]
    result = await rpc(client, "tasks/result", taskId=task_id)
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
    return result["structuredContent"]


@pytest.fixture(params=ERAS)
async def tasks_client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings), mode=request.param, extensions=[TasksAware()]) as c:
        yield c


async def test_the_capabilities_say_which_tools_run_as_tasks(settings: Settings) -> None:
    server = create_server(settings)
    async with Client(server, mode="legacy") as legacy:
        tasks = legacy.server_capabilities.tasks
        assert tasks is not None and tasks.requests and tasks.requests.tools and tasks.requests.tools.call is not None
        assert tasks.list is not None and tasks.cancel is not None
        execution = {t.name: t.execution.task_support if t.execution else None for t in (await legacy.list_tools()).tools}
        assert execution["send_message"] == execution["create_session"] == "optional"
        assert execution["get_session"] is None
    async with Client(server, mode="auto") as modern:
        capabilities = modern.server_capabilities
        assert capabilities.extensions and EXTENSION in capabilities.extensions and capabilities.tasks is None


async def test_a_long_turn_runs_as_a_task_to_its_reply(tasks_client: Client) -> None:
    sid = await new_session(tasks_client)
    task = await start(tasks_client, "send_message", session_id=sid, text="echo first; sleep 1.5; echo last")
    assert task["taskId"] == f"{sid}.1" and task["status"] == "working"
    assert (await rpc(tasks_client, "tasks/get", taskId=task["taskId"]))["status"] == "working"
    reply = await outcome(tasks_client, task["taskId"])
    assert reply["turn_status"] == "completed" and reply["output"] == "first\nlast\n" and reply["exit_code"] == 0
    assert (await settle(tasks_client, task["taskId"]))["status"] == "completed"


async def test_create_session_runs_as_a_task_when_asked(settings: Settings) -> None:
    """2025-11-25: the client asks for a task. (In 2026-07-28 the server makes one only if the creation
    outlasts wait_s, which a local sandbox never does.)"""
    async with Client(create_server(settings), mode="legacy") as legacy:
        task = await start(legacy, "create_session", title="as a task")
        assert task["taskId"].endswith(".new")
        session = await outcome(legacy, task["taskId"])
        assert session["status"] == "ready" and session["title"] == "as a task" and task["taskId"] == f"{session['id']}.new"


async def test_cancelling_a_task_interrupts_its_turn(tasks_client: Client) -> None:
    sid = await new_session(tasks_client)
    task = await start(tasks_client, "send_message", session_id=sid, text="echo started; sleep 60")
    with anyio.fail_after(30):  # the turn has begun its command
        while "started" not in (await call(tasks_client, "get_session", session_id=sid))["session"]["last_turn"]["output"]:
            await anyio.sleep(0.05)
    await rpc(tasks_client, "tasks/cancel", taskId=task["taskId"])
    assert (await settle(tasks_client, task["taskId"]))["status"] == "cancelled"
    detail = await call(tasks_client, "get_session", session_id=sid)
    assert detail["session"]["status"] == "ready"
    assert detail["session"]["last_turn"]["status"] == "interrupted"
    reply = await call(tasks_client, "send_message", session_id=sid, text="echo still usable")
    assert reply["output"] == "still usable\n"


async def test_cancelling_the_task_of_a_queued_message_keeps_it_from_running(tasks_client: Client, tmp_path: Path) -> None:
    """The message waits behind a running turn; its task cancelled, it never runs: its turn ends
    interrupted in its place, and the message queued after it keeps its turn number and runs."""
    sid = await new_session(tasks_client)
    gate = tmp_path / "release"
    first = await start(tasks_client, "send_message", session_id=sid, text=f"until [ -e {gate} ]; do sleep 0.05; done")
    queued = await start(tasks_client, "send_message", session_id=sid, text="touch cancelled-ran", queue=True)
    after = await start(tasks_client, "send_message", session_id=sid, text="ls", queue=True)
    assert (queued["taskId"], after["taskId"]) == (f"{sid}.2", f"{sid}.3")
    await rpc(tasks_client, "tasks/cancel", taskId=queued["taskId"])
    assert (await rpc(tasks_client, "tasks/get", taskId=queued["taskId"]))["status"] == "cancelled"  # at once
    assert (await rpc(tasks_client, "tasks/get", taskId=first["taskId"]))["status"] == "working"  # untouched
    gate.touch()
    assert (await outcome(tasks_client, after["taskId"]))["output"] == ""  # turn 3 ran, and found no file
    assert (await settle(tasks_client, first["taskId"]))["status"] == "completed"
    assert (await settle(tasks_client, queued["taskId"]))["status"] == "cancelled"
    detail = await call(tasks_client, "get_session", session_id=sid, events_after=0)
    ends = {e["data"]["turn"]: e["type"] for e in detail["events"] if e["type"].startswith("turn.") and "exit_code" in e["data"]}
    assert ends == {1: "turn.completed", 2: "turn.interrupted", 3: "turn.completed"}
    assert detail["session"]["turns"] == 3 and detail["session"]["status"] == "ready"


async def test_unknown_and_malformed_task_ids_are_refused_naming_the_problem(tasks_client: Client) -> None:
    sid = await new_session(tasks_client)
    for bad, words in [
        ("nope", "Malformed taskId 'nope'"),
        (f"{sid}.7", f"No task '{sid}.7'"),
        ("ses_" + "0" * 32 + ".1", "No task"),
        (None, "no taskId"),
        (12, "Malformed taskId '12'"),
    ]:
        for method in ("tasks/get", "tasks/cancel"):
            with pytest.raises(MCPError) as raised:
                await rpc(tasks_client, method, **({"taskId": bad} if bad is not None else {}))
            assert raised.value.error.code == -32602 and words in raised.value.error.message, (method, bad, raised.value)


async def test_a_modern_client_without_the_extension_keeps_the_wait_and_poll_pattern(settings: Settings) -> None:
    async with Client(create_server(settings), mode="auto") as plain:
        sid = await new_session(plain)
        reply = await call(plain, "send_message", session_id=sid, text="sleep 1; echo done", wait_s=0)
        assert reply["status"] == "busy" and reply["turn_status"] == "running"
        detail = await call(plain, "get_session", session_id=sid, wait_s=30)
        assert detail["session"]["last_turn"]["output"] == "done\n"
        with pytest.raises(MCPError) as raised:  # the tasks methods want the extension declared
            await rpc(plain, "tasks/get", taskId=f"{sid}.1")
        assert raised.value.error.code == -32021


async def test_a_modern_turn_that_ends_within_wait_s_answers_as_usual(settings: Settings) -> None:
    async with Client(create_server(settings), mode="auto", extensions=[TasksAware()]) as c:
        sid = await new_session(c)
        result = await c.session.call_tool("send_message", {"session_id": sid, "text": "echo quick"}, allow_claimed=True)
        assert isinstance(result, CallToolResult) and result.structured_content is not None
        assert result.structured_content["output"] == "quick\n"


@asynccontextmanager
async def over_http(base: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as hc:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=hc), mode=mode, extensions=[TasksAware()]) as c:
            yield c


@pytest.mark.parametrize("mode", ERAS)
async def test_tasks_are_their_owners_only_over_http(settings: Settings, mode: str) -> None:
    app = build_app(settings, {ALICE: "alice", BOB: "bob"})
    async with serve(app, lifespan="on", grace_s=5) as base:
        async with over_http(base, ALICE, mode) as alice, over_http(base, BOB, mode) as bob:
            sid = await new_session(alice)
            task = await start(alice, "send_message", session_id=sid, text="sleep 0.5; echo alice")
            assert (await outcome(alice, task["taskId"]))["output"] == "alice\n"
            for method in ("tasks/get", "tasks/cancel"):
                with pytest.raises(MCPError) as raised:
                    await rpc(bob, method, taskId=task["taskId"])
                assert raised.value.error.code == -32602 and "No task" in raised.value.error.message
            if mode == "legacy":  # tasks/list is 2025-11-25's only
                assert [t["taskId"] for t in (await rpc(alice, "tasks/list"))["tasks"]] == [task["taskId"]]
                assert (await rpc(bob, "tasks/list"))["tasks"] == []
                with pytest.raises(MCPError) as raised:
                    await rpc(bob, "tasks/result", taskId=task["taskId"])
                assert raised.value.error.code == -32602


@pytest.mark.parametrize("mode", ERAS)
async def test_a_task_outlives_the_server_process_that_started_it(home: Path, mode: str) -> None:
    params = stdio_params(home)
    async with Client(params, mode=mode, extensions=[TasksAware()]) as first:
        sid = await new_session(first)
        task = await start(first, "send_message", session_id=sid, text="sleep 0.5; echo from the first server")
        assert (await settle(first, task["taskId"]))["status"] == "completed"
    async with Client(params, mode=mode, extensions=[TasksAware()]) as second:
        assert (await rpc(second, "tasks/get", taskId=task["taskId"]))["status"] == "completed"
        assert (await outcome(second, task["taskId"]))["output"] == "from the first server\n"
        if mode == "legacy":
            assert task["taskId"] in [t["taskId"] for t in (await rpc(second, "tasks/list"))["tasks"]]
