"""The opencode agent: the real OpenCode CLI (installed by scripts/install-cli-agents.sh) in a session's sandbox,
one `opencode run` per message, its model requests (Chat Completions) through the server's model proxy to a
fake model server on this machine, which the sandbox reaches only through the proxy."""

# ruff: noqa: F811  (the fixtures imported from other test modules are used by name)
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.agents.cli.proxy import PLACEHOLDER_KEY
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .fake_llm import Fail, FakeLLM, Reply, ToolCall
from .test_claude_code import (  # noqa: F401  (fixtures)
    HTTP_REQUEST,
    KEY,
    Inside,
    client,
    driver,
    goes_on_after_a_kill,
    inside,
    installed,
    llm,
    refused_stand_in,
    settings,
    user_texts,
    wrote_a_file,
)
from .test_codex import two_turns_with_images
from .test_llm_agent import stored_messages

pytestmark = pytest.mark.anyio

MODEL = "gpt-4.1"
AGENT = "opencode"
STATE = ".mcp-sessions/opencode"


def write_file_task() -> list[Reply]:
    return [
        Reply(tool_calls=[ToolCall("bash", {"command": "echo hello > hi.txt", "description": "write"})]),
        Reply(text="I wrote hi.txt.", input_tokens=150, output_tokens=30, cache_read_tokens=7),
    ]


async def test_a_task_writes_a_file_with_opencode_and_the_next_turn_continues(
    home: Path, llm: FakeLLM, client: Client, inside: Callable[[str], Inside], caplog: pytest.LogCaptureFixture
) -> None:
    sid, usage = await wrote_a_file(client, llm, inside, MODEL, write_file_task(), Reply(text="You asked for hi.txt."))
    assert usage["cost_usd"] == pytest.approx((250 * 2.0 + 50 * 8.0 + 7 * 0.5) / 1e6)

    events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
    kinds = [e["type"] for e in events]
    started = next(e["data"] for e in events if e["type"] == "tool.started")
    assert started["tool"] == "bash" and started["input"]["command"] == "echo hello > hi.txt"
    completed = next(e["data"] for e in events if e["type"] == "tool.completed")
    assert completed["id"] == started["id"] and completed["exit_code"] == 0 and not completed["is_error"]
    assert kinds.index("tool.started") < kinds.index("tool.completed") < kinds.index("turn.completed")
    assert [e["data"]["text"] for e in events if e["type"] == "text.delta"] == ["I wrote hi.txt."]
    messages = await stored_messages(home, sid)
    assert [(m.role, b.type) for m in messages for b in m.content] == [
        ("user", "text"),
        ("assistant", "tool_use"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    tool_use, tool_result = messages[1].content[0], messages[2].content[0]
    assert tool_result.tool_use_id == tool_use.id and not tool_result.is_error

    second = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
    assert second["output"] == "You asked for hi.txt."
    assert user_texts(llm.requests[-1].body) == ["write hi.txt", "what did I ask?"]  # resumed, not started anew
    # only model requests, and no more than the model answered: no title request, no model list fetch
    assert [r.path for r in llm.requests] == ["/v1/chat/completions"] * 3
    sandbox = inside(sid)
    # its plugin package was not fetched from npm (nor was anything else: no npm cache appeared)
    assert await sandbox.sh(f"ls -A {STATE}/home {STATE}/config/opencode/node_modules") == (
        f"{STATE}/config/opencode/node_modules:\n\n{STATE}/home:\n"
    )
    # the key: added by the proxy, in no file of the sandbox, event, message or log; the CLI's own is the placeholder
    assert {r.headers["authorization"] for r in llm.requests} == {f"Bearer {KEY}"}
    assert PLACEHOLDER_KEY not in json.dumps([r.headers for r in llm.requests])
    assert await sandbox.holding("{env:MCP_SESSIONS_MODEL_KEY}")  # the search finds what is there (its config)...
    assert await sandbox.holding(KEY) == ""  # ...and the key is nowhere in the sandbox
    assert KEY not in json.dumps(await call(client, "get_session", session_id=sid, events_after=0))
    assert KEY not in json.dumps([m.model_dump(mode="json") for m in await stored_messages(home, sid)])
    assert KEY not in caplog.text


async def test_interrupt_stops_opencode_and_the_conversation_goes_on(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(tool_calls=[ToolCall("bash", {"command": "sleep 60", "description": "wait"})]), Reply(text="Back again."))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="wait a minute", wait_s=0)
    sandbox = inside(sid)
    with anyio.fail_after(50):
        while not await sandbox.pids(argv=["sleep", "60"]):
            await anyio.sleep(0.05)
    (cli,) = await sandbox.pids("/opencode")
    env = await sandbox.sh(f"tr '\\0' '\\n' </proc/{cli}/environ")
    assert f"MCP_SESSIONS_MODEL_KEY={PLACEHOLDER_KEY}\n" in env and KEY not in env  # what it sends as its key
    assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
    detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
    assert detail["status"] == "ready" and detail["last_turn"]["status"] == "interrupted"
    assert not await sandbox.pids(argv=["sleep", "60"])
    assert not await sandbox.pids("/opencode")
    reply = await call(client, "send_message", session_id=sid, text="are you there?", wait_s=50)
    assert reply["output"] == "Back again."
    assert user_texts(llm.requests[-1].body) == ["wait a minute", "are you there?"]


async def test_opencode_goes_on_after_the_server_is_killed(home: Path, llm: FakeLLM, settings: Settings) -> None:
    await goes_on_after_a_kill(home, llm, settings, MODEL, write_file_task(), user_texts)


async def test_without_its_kept_id_opencode_takes_up_its_last_conversation(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(text="First."), Reply(text="Second."))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    assert (await call(client, "send_message", session_id=sid, text="one", wait_s=50))["output"] == "First."
    sandbox = inside(sid)
    kept = await sandbox.sh(f"cat {STATE}/conversation && rm {STATE}/conversation")  # as if the server died first
    assert kept.startswith("ses_")
    assert (await call(client, "send_message", session_id=sid, text="two", wait_s=50))["output"] == "Second."
    assert user_texts(llm.requests[-1].body) == ["one", "two"]
    assert await sandbox.sh(f"cat {STATE}/conversation") == kept  # and its id is kept again


async def test_an_image_sent_with_the_message_reaches_the_model_and_its_file_goes(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    sid = await two_turns_with_images(llm, client, MODEL, chat_images)
    # OpenCode gives each attached file as its Read tool's call and result, in text, before the image
    said = [t for t in user_texts(llm.requests[1].body) if not t.startswith(("Called the Read tool", "Image read successfully"))]
    assert said == ["What is this?", "And this?"]
    state = (await inside(sid).sh(f"ls -A {STATE}")).split()
    assert "message" in state and "images" not in state  # the turn's image files went with it


def chat_images(body: dict[str, Any]) -> list[str]:
    """The images of the user's messages, as a Chat Completions request carries them."""
    return [
        part["image_url"]["url"]
        for m in body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for part in m["content"]
        if part.get("type") == "image_url"
    ]


async def test_the_proxy_refuses_opencode_sandbox_paths_other_than_the_model_api(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(text="hi"))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    assert (await call(client, "send_message", session_id=sid, text="say hi", wait_s=50))["output"] == "hi"
    sandbox = inside(sid)
    config = json.loads(await sandbox.sh(f"cat {STATE}/opencode.json"))
    port = config["provider"]["mcp-sessions"]["options"]["baseURL"].split(":")[-1].split("/")[0]
    for method, path in [("GET", "/v1/files"), ("POST", "/v1/messages"), ("POST", "/v1/chat/completions/../files")]:
        answer = await sandbox.sh(HTTP_REQUEST.format(port=port, method=method, path=path, length=0, body=""))
        assert answer.startswith("HTTP/1.1 403"), (path, answer)
        assert "not a model API path" in answer
    assert len(llm.requests) == 1  # none of them reached the upstream


async def test_a_budget_reached_refuses_opencode_next_model_request_and_fails_the_turn(llm: FakeLLM, client: Client) -> None:
    llm.script(*write_file_task())
    sid = (await call(client, "create_session", model=MODEL, max_tokens=100))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "failed", (reply, await call(client, "get_session", session_id=sid, events_after=0))
    assert reply["reason"].startswith("budget max_tokens=100 of session")
    assert len(llm.requests) == 1  # the second request was refused by the proxy, not forwarded
    assert reply["usage"]["total_tokens"] == 120


STAND_IN = """#!/bin/bash
# Asks its model twice, as OpenCode does for a tool step; refused the second time, it neither says so nor exits.
port=$(grep -o '127.0.0.1:[0-9]*' "$OPENCODE_CONFIG" | cut -d: -f2)
body='{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}'
for request in 1 2; do
  exec 3<>/dev/tcp/127.0.0.1/$port || exit 1
  head='POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nConnection: close'
  printf "$head\\r\\nContent-Length: %d\\r\\n\\r\\n%s" ${#body} "$body" >&3
  cat <&3 >&2
done
sleep 600
"""


async def test_a_cli_that_does_not_exit_after_its_budget_refusal_is_stopped_and_the_turn_fails(
    tmp_path: Path, llm: FakeLLM, settings: Settings, inside: Callable[[str], Inside]
) -> None:
    upstream = dict(opencode_base_url=llm.openai_base_url, opencode_api_key=KEY)
    async with refused_stand_in(tmp_path, llm, settings, AGENT, MODEL, STAND_IN, **upstream) as (sid, reply):
        assert "OpenCode did not exit within 10 s of being refused, and was stopped" in reply["reason"]
        assert not await inside(sid).pids(argv=["sleep", "600"])  # the stand-in's command is gone


async def test_a_system_prompt_replaces_opencode_own(llm: FakeLLM, client: Client) -> None:
    llm.script(Reply(text="Aye."))
    sid = (await call(client, "create_session", model=MODEL, system_prompt="You are a pirate."))["id"]
    assert (await call(client, "send_message", session_id=sid, text="hi", wait_s=50))["output"] == "Aye."
    (system, *_) = llm.requests[0].body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a pirate.\n")
    assert "You are opencode" not in system["content"]


async def test_an_api_error_after_a_tool_step_fails_the_turn_with_the_apis_words(llm: FakeLLM, client: Client) -> None:
    llm.script(write_file_task()[0], Fail(400, "this model does not take that"))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "failed", reply
    assert reply["reason"] == "OpenCode did not complete the turn: this model does not take that"


async def test_opencode_refuses_ask_and_a_session_without_a_model(home: Path) -> None:
    installed(AGENT)
    async with Client(create_server(Settings(home=home, agent=AGENT))) as client:
        ask = await call_error(client, "create_session", model=MODEL, permission_mode="ask")
        unnamed = await call_error(client, "create_session")
        flag = await call_error(client, "create_session", model=MODEL, cli_args=["--port", "1"])
    assert "cannot ask for approvals" in ask and "headless `opencode run`" in ask
    assert "needs a model" in unnamed and "MCP_SESSIONS_OPENCODE_MODEL" in unnamed
    assert "'--port' is not allowed" in flag
