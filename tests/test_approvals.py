"""Approvals of the real Claude Code's tool calls (permission_mode "ask"), answered by the client that sent the
message through MCP elicitation, by `answer_approval`, whichever comes first, and through another server
process sharing the state folder."""

# ruff: noqa: F811  (the fixtures imported from other test modules are used by name)
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, types

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error
from .docker_support import docker_engine  # noqa: F401
from .fake_llm import FakeLLM, Reply, ToolCall
from .postgres_support import postgres_cluster, postgres_url  # noqa: F401
from .test_claude_code import KEY, MODEL, Inside, driver, inside, llm, settings, stdio_server, wait_for_approval  # noqa: F401
from .test_http import API
from .test_postgres_servers import Server, free_ports

pytestmark = pytest.mark.anyio

AGENT = "claude-code"
WAITS = None
"""In a script of answers: the client does not answer until its question is withdrawn."""


class Elicitation:
    """The client's elicitation callback: keeps each question and answers from a script, in order."""

    def __init__(self, *answers: types.ElicitResult | types.ErrorData | None) -> None:
        self.answers = list(answers)
        self.questions: list[types.ElicitRequestFormParams] = []
        self.withdrawn = anyio.Event()

    async def __call__(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.questions.append(params)
        answer = self.answers.pop(0)
        if answer is None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.withdrawn.set()
                raise
        assert answer is not None
        return answer


def accept(decision: str, message: str | None = None) -> types.ElicitResult:
    content: dict[str, Any] = {"decision": decision} | ({"message": message} if message else {})
    return types.ElicitResult(action="accept", content=content)


@pytest.fixture
async def eliciting(settings: Settings) -> AsyncIterator[Callable[[Elicitation], Client]]:
    """`eliciting(callback)`: a handshake-era client (what deployed hosts speak) that offers form elicitation."""
    yield lambda callback: Client(create_server(settings), mode="legacy", elicitation_callback=callback)


def bash(command: str) -> Reply:
    return Reply(tool_calls=[ToolCall("Bash", {"command": command, "description": "write"})])


def tool_results(llm: FakeLLM) -> list[dict[str, Any]]:
    """The tool results the last model request carried, in order."""
    messages = llm.requests[-1].body["messages"]
    return [b for m in messages if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"]


async def answered(client: Client, sid: str) -> list[dict[str, Any]]:
    events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
    return [e["data"] for e in events if e["type"] == "approval.answered"]


async def test_the_client_that_sent_the_message_is_asked_and_its_answer_counts_first(
    llm: FakeLLM, eliciting: Callable[[Elicitation], Client], inside: Callable[[str], Inside]
) -> None:
    llm.script(bash("echo hello > hi.txt"), bash("echo bye > bye.txt"), Reply(text="Both done."))
    asked = Elicitation(accept("allow"), WAITS)
    async with eliciting(asked) as client:
        sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
        await call(client, "send_message", session_id=sid, text="write two files", wait_s=0)
        second = await wait_for_approval(client, sid, seen=1)  # the first was allowed by the client
        events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
        said = f"events {[(e['type'], e['data']) for e in events]}; model requests {len(llm.requests)}"
        assert second["input"]["command"] == "echo bye > bye.txt", said
        first = (await answered(client, sid))[0]
        assert first["by"] == "elicitation" and first["behavior"] == "allow" and first["tool"] == "Bash", said
        assert await inside(sid).sh("cat hi.txt") == "hello\n", said
        assert second["elicitation"] is True

        late = await call_error(
            client, "answer_approval", session_id=sid, request_id=first["request_id"], decision="deny"
        )  # the client answered it first
        assert "answered already (allow, through elicitation)" in late

        await call(client, "answer_approval", session_id=sid, request_id=second["request_id"], decision="allow")
        with anyio.fail_after(30):
            await asked.withdrawn.wait()  # answered here first: the client's question is withdrawn
        detail = (await call(client, "get_session", session_id=sid, wait_s=30))["session"]
        assert detail["last_turn"]["output"] == "Both done."
        assert await inside(sid).sh("cat bye.txt") == "bye\n"
        assert [a["by"] for a in await answered(client, sid)] == ["elicitation", "answer_approval"]

    question = asked.questions[0]
    assert "Bash" in question.message and "echo hello > hi.txt" in question.message
    assert question.requested_schema["properties"]["decision"]["enum"] == ["allow", "deny"]
    assert question.requested_schema["required"] == ["decision"]


async def test_the_client_denies_with_a_message_or_declines(
    llm: FakeLLM, eliciting: Callable[[Elicitation], Client], inside: Callable[[str], Inside]
) -> None:
    llm.script(bash("echo bye > bye.txt"), bash("echo no > no.txt"), Reply(text="Both refused."))
    async with eliciting(Elicitation(accept("deny", "Not that file."), types.ElicitResult(action="decline"))) as client:
        sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
        reply = await call(client, "send_message", session_id=sid, text="write two files", wait_s=50)
        assert reply["output"] == "Both refused.", reply
        assert [(a["behavior"], a["by"]) for a in await answered(client, sid)] == [("deny", "elicitation")] * 2
    assert await inside(sid).sh("ls") == ""  # nothing ran
    denied, declined = tool_results(llm)
    assert denied["is_error"] and "Not that file." in json.dumps(denied["content"])
    assert declined["is_error"] and "declined" in json.dumps(declined["content"])


async def test_a_cancelled_or_failed_elicitation_leaves_the_call_to_answer_approval(
    llm: FakeLLM, eliciting: Callable[[Elicitation], Client], inside: Callable[[str], Inside]
) -> None:
    llm.script(bash("echo one > one.txt"), bash("echo two > two.txt"), Reply(text="Done."))
    gave_up = Elicitation(types.ElicitResult(action="cancel"), types.ErrorData(code=-32603, message="no user here"))
    async with eliciting(gave_up) as client:
        sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
        await call(client, "send_message", session_id=sid, text="write two files", wait_s=0)
        for n, why in enumerate(["ended with cancel", "failed: no user here"]):
            asked = await wait_for_approval(client, sid, seen=n)
            with anyio.fail_after(30):
                while not (unanswered := await events_of(client, sid, "approval.unanswered", asked["request_id"])):
                    await anyio.sleep(0.05)
            assert why in unanswered[0]["reason"] and "still waits for answer_approval" in unanswered[0]["reason"]
            assert await inside(sid).sh("ls") == ("" if n == 0 else "one.txt\n")  # nothing ran before the answer
            await call(client, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="allow")
        detail = (await call(client, "get_session", session_id=sid, wait_s=30))["session"]
        assert detail["last_turn"]["output"] == "Done."
    assert await inside(sid).sh("cat one.txt two.txt") == "one\ntwo\n"


async def events_of(client: Client, sid: str, kind: str, request_id: str) -> list[dict[str, Any]]:
    events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
    return [e["data"] for e in events if e["type"] == kind and e["data"]["request_id"] == request_id]


async def test_a_client_of_the_2026_era_without_tasks_is_not_asked(llm: FakeLLM, settings: Settings) -> None:
    """In 2026-07-28 a server asks a client only inside a request: the turn waits for answer_approval alone."""
    llm.script(bash("echo hi > hi.txt"), Reply(text="Done."))
    asked = Elicitation()
    async with Client(create_server(settings), elicitation_callback=asked) as client:
        sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
        await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=0)
        request = await wait_for_approval(client, sid)
        assert request["elicitation"] is False
        await call(client, "answer_approval", session_id=sid, request_id=request["request_id"], decision="allow")
        assert (await call(client, "get_session", session_id=sid, wait_s=30))["session"]["last_turn"]["output"] == "Done."
    assert asked.questions == []


async def test_a_client_of_the_2026_era_with_tasks_is_asked_on_the_turns_task(
    llm: FakeLLM, settings: Settings, inside: Callable[[str], Inside]
) -> None:
    """With the tasks extension, the question is the task's input request (input_required), answered by tasks/update."""
    from .test_tasks import TasksAware, rpc, settle, start

    llm.script(bash("echo hi > hi.txt"), Reply(text="Done."))
    async with Client(create_server(settings), extensions=[TasksAware()], elicitation_callback=Elicitation()) as client:
        sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
        task = await start(client, "send_message", session_id=sid, text="write hi.txt")
        asked = await settle(client, task["taskId"], "input_required")
        [(key, request)] = asked["inputRequests"].items()
        assert request["method"] == "elicitation/create" and "echo hi > hi.txt" in request["params"]["message"]
        assert (await wait_for_approval(client, sid))["elicitation"] is True
        assert await inside(sid).sh("ls") == ""
        await rpc(client, "tasks/update", taskId=task["taskId"], inputResponses={key: accept("allow").model_dump()})
        done = await settle(client, task["taskId"])
        assert done["status"] == "completed" and done["result"]["structuredContent"]["output"] == "Done.", done
        assert [a["by"] for a in await answered(client, sid)] == ["elicitation"]
    assert await inside(sid).sh("cat hi.txt") == "hi\n"


async def test_an_approval_is_answered_through_another_server_process(
    home: Path, llm: FakeLLM, settings: Settings, inside: Callable[[str], Inside]
) -> None:
    """Two servers on one state folder: the turn runs on the first, the answer goes to the second, and reaches
    the turn through the store."""
    llm.script(bash("echo hello > hi.txt"), Reply(text="Allowed elsewhere."), bash("echo bye > bye.txt"), Reply(text="No."))
    params = stdio_server(settings)
    async with Client(params, mode="legacy") as first, Client(params, mode="legacy") as second:
        sid = (await call(first, "create_session", model=MODEL, permission_mode="ask"))["id"]
        await call(first, "send_message", session_id=sid, text="write hi.txt", wait_s=0)
        asked = await wait_for_approval(second, sid)
        await call(second, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="allow")
        again = await call_error(second, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="deny")
        assert "answered already (allow, through answer_approval)" in again or "No tool call" in again
        detail = (await call(first, "get_session", session_id=sid, wait_s=30))["session"]
        assert detail["last_turn"]["output"] == "Allowed elsewhere."
        assert await inside(sid).sh("cat hi.txt") == "hello\n"

        await call(first, "send_message", session_id=sid, text="write bye.txt", wait_s=0)
        asked = await wait_for_approval(first, sid, seen=1)
        await call(second, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="deny", message="Keep it.")
        detail = (await call(second, "get_session", session_id=sid, wait_s=30))["session"]
        assert detail["last_turn"]["output"] == "No."
    assert "Keep it." in json.dumps(tool_results(llm)[-1]["content"])
    assert "No such file" in await inside(sid).sh("cat bye.txt")


async def test_an_approval_is_answered_through_another_server_on_postgresql(
    tmp_path: Path,
    llm: FakeLLM,
    postgres_url: str,
) -> None:
    """Two HTTP servers on one PostgreSQL database: the turn runs on the first, the answer goes to the second over
    REST, and reaches the turn through the database's change feed (LISTEN/NOTIFY)."""
    llm.script(bash("echo hello > hi.txt"), Reply(text="Allowed on the other server."))
    upstream = {"MCP_SESSIONS_CLAUDE_CODE_BASE_URL": llm.url, "MCP_SESSIONS_CLAUDE_CODE_API_KEY": KEY}
    home = tmp_path / "home"
    servers = [Server(home, postgres_url, port, {"MCP_SESSIONS_AGENT": AGENT, **upstream}) for port in free_ports(2)]
    try:
        for server in servers:
            await server.ready()
        async with (
            httpx.AsyncClient(base_url=servers[0].base, timeout=60) as a,
            httpx.AsyncClient(base_url=servers[1].base, timeout=60) as b,
        ):
            created = await a.post(f"{API}/sessions", json={"model": MODEL, "permission_mode": "ask"})
            sid = created.json()["id"]
            sent = await a.post(f"{API}/sessions/{sid}/messages", params={"wait_s": 0}, json={"text": "write hi.txt"})
            assert sent.status_code in (200, 202), sent.text
            with anyio.fail_after(50):
                while True:
                    events = (await b.get(f"{API}/sessions/{sid}", params={"events_after": 0})).json()["events"]
                    if asked := [e["data"] for e in events if e["type"] == "approval.requested"]:
                        break
                    await anyio.sleep(0.05)
            assert asked[0]["elicitation"] is False  # sent over REST: no client to ask
            answer = {"session_id": sid, "request_id": asked[0]["request_id"], "decision": "allow"}
            assert (await b.post(f"{API}/tools/answer_approval", json=answer)).status_code == 200
            again = await b.post(f"{API}/tools/answer_approval", json=answer)
            assert again.status_code in (404, 409), again.text  # answered already, or its turn is over
            ended = (await a.get(f"{API}/sessions/{sid}", params={"wait_s": 30})).json()["session"]
            assert ended["last_turn"]["output"] == "Allowed on the other server.", ended
    finally:
        for server in servers:
            server.stop()
    assert (home / "workspaces" / sid / "workspace" / "hi.txt").read_text() == "hello\n"
