"""The codex agent: the real Codex CLI (installed by scripts/install-cli-agents.sh) in a session's sandbox,
one `codex exec` per message, its model requests (OpenAI Responses) through the server's model proxy to a
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
from mcp_sessions.settings import Settings

from .conftest import call
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_claude_code import (  # noqa: F401  (fixtures)
    KEY,
    Inside,
    client,
    driver,
    goes_on_after_a_kill,
    inside,
    llm,
    settings,
    wrote_a_file,
)
from .test_images import PNG, PNG_BLUE, image
from .test_llm_agent import stored_messages

pytestmark = pytest.mark.anyio

MODEL = "gpt-4.1"


AGENT = "codex"


def write_file_task() -> list[Reply]:
    return [
        Reply(tool_calls=[ToolCall("exec_command", {"cmd": "echo hello > hi.txt"})]),
        Reply(text="I wrote hi.txt.", input_tokens=150, output_tokens=30, cache_read_tokens=7),
    ]


def user_texts(body: dict[str, Any]) -> list[str]:
    """What the caller sent, turn by turn, as a Responses request carries it (Codex's own notes left out)."""
    texts = []
    for item in body["input"]:
        if item.get("type") == "message" and item.get("role") == "user":
            texts += [c["text"] for c in item["content"] if c.get("type") == "input_text" and not c["text"].startswith("<")]
    return texts


async def test_a_task_writes_a_file_with_codex_and_the_next_turn_continues(
    home: Path, llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    sid, usage = await wrote_a_file(client, llm, inside, MODEL, write_file_task(), Reply(text="You asked for hi.txt."))
    assert usage["cost_usd"] == pytest.approx((250 * 2.0 + 50 * 8.0 + 7 * 0.5) / 1e6)

    events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
    started = next(e["data"] for e in events if e["type"] == "tool.started")
    assert "echo hello > hi.txt" in started["input"]["command"]
    completed = next(e["data"] for e in events if e["type"] == "tool.completed")
    assert completed["id"] == started["id"] and completed["exit_code"] == 0
    messages = await stored_messages(home, sid)
    assert [(m.role, b.type) for m in messages for b in m.content] == [
        ("user", "text"),
        ("assistant", "tool_use"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]

    second = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
    assert second["output"] == "You asked for hi.txt."
    assert user_texts(llm.requests[-1].body) == ["write hi.txt", "what did I ask?"]  # resumed, not started anew
    # the key: added by the proxy, in no file of the sandbox; the CLI's own is the placeholder
    assert {r.headers["authorization"] for r in llm.requests} == {f"Bearer {KEY}"}
    assert await inside(sid).holding(KEY) == ""
    assert KEY not in json.dumps(await call(client, "get_session", session_id=sid, events_after=0))
    assert PLACEHOLDER_KEY not in json.dumps([r.headers for r in llm.requests])


async def test_interrupt_stops_codex_and_the_conversation_goes_on(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(tool_calls=[ToolCall("exec_command", {"cmd": "sleep 60"})]), Reply(text="Back again."))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="wait a minute", wait_s=0)
    sandbox = inside(sid)
    with anyio.fail_after(50):
        while not await sandbox.pids(argv=["sleep", "60"]):
            await anyio.sleep(0.05)
    assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
    detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
    assert detail["status"] == "ready" and detail["last_turn"]["status"] == "interrupted"
    assert not await sandbox.pids(argv=["sleep", "60"])
    reply = await call(client, "send_message", session_id=sid, text="are you there?", wait_s=50)
    assert reply["output"] == "Back again."
    assert user_texts(llm.requests[-1].body) == ["wait a minute", "are you there?"]


async def test_codex_goes_on_after_the_server_is_killed(home: Path, llm: FakeLLM, settings: Settings) -> None:
    await goes_on_after_a_kill(home, llm, settings, MODEL, write_file_task(), user_texts)


async def test_an_image_sent_with_the_message_reaches_the_model_and_its_file_goes(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    sid = await two_turns_with_images(llm, client, MODEL, input_images)
    assert user_texts(llm.requests[1].body) == ["What is this?", "And this?"]
    state = (await inside(sid).sh("ls -A .mcp-sessions/codex")).split()
    assert "message" in state and "images" not in state  # the turn's image files went with it


async def two_turns_with_images(
    llm: FakeLLM, client: Client, model: str, images_in: Callable[[dict[str, Any]], list[str]]
) -> str:
    """A red image with the first message, a blue one with the second: both answered, and the second request
    carries both (the conversation keeps them), as data URLs that `images_in` finds in a request. The session."""
    llm.script(Reply(text="A red square."), Reply(text="A blue one."))
    sid = (await call(client, "create_session", model=model))["id"]
    reply = await call(client, "send_message", session_id=sid, text="What is this?", images=[image()], wait_s=50)
    assert reply["turn_status"] == "completed" and reply["output"] == "A red square.", reply
    second = await call(client, "send_message", session_id=sid, text="And this?", images=[image(PNG_BLUE)], wait_s=50)
    assert second["output"] == "A blue one.", second
    assert images_in(llm.requests[0].body) == [f"data:image/png;base64,{PNG}"]
    assert images_in(llm.requests[1].body) == [f"data:image/png;base64,{PNG}", f"data:image/png;base64,{PNG_BLUE}"]
    return sid


def input_images(body: dict[str, Any]) -> list[str]:
    """The images of the caller's messages, as a Responses request carries them."""
    return message_parts(body, "user", "input_image", "image_url")


def developer_texts(body: dict[str, Any]) -> list[str]:
    """The developer messages a Responses request carried: Codex's instructions first."""
    return message_parts(body, "developer", "input_text", "text")


def message_parts(body: dict[str, Any], role: str, kind: str, key: str) -> list[str]:
    """`key` of each `kind` part of the `role` messages a Responses request carried, in order."""
    return [
        c[key]
        for item in body["input"]
        if item.get("type") == "message" and item.get("role") == role
        for c in item["content"]
        if c.get("type") == kind
    ]


async def test_the_system_prompt_and_allowed_cli_args_reach_the_model(llm: FakeLLM, client: Client) -> None:
    llm.script(Reply(text="Bonjour."), Reply(text="Encore."))
    sid = (
        await call(
            client,
            "create_session",
            model=MODEL,
            system_prompt="You are a terse French assistant.",
            cli_args=["-c", 'developer_instructions="Sign every answer X."', "--disable", "shell_snapshot"],
        )
    )["id"]
    assert (await call(client, "send_message", session_id=sid, text="hi", wait_s=50))["output"] == "Bonjour."
    assert (await call(client, "send_message", session_id=sid, text="again", wait_s=50))["output"] == "Encore."
    for request in llm.requests:  # the first turn and the resumed one
        texts = developer_texts(request.body)
        assert texts[0] == "You are a terse French assistant."  # instead of Codex's own instructions
        assert not any("Codex CLI" in t for t in texts)
        assert any("Sign every answer X." in t for t in texts)


async def test_codex_refuses_ask_and_flags_outside_its_allow_list(client: Client) -> None:
    from .conftest import call_error

    asked = await call_error(client, "create_session", model=MODEL, permission_mode="ask")
    assert "headless `codex exec` has no way to ask" in asked and "claude-code" in asked
    flag = await call_error(client, "create_session", cli_args=["--dangerously-bypass-approvals-and-sandbox"])
    assert "'--dangerously-bypass-approvals-and-sandbox' is not allowed" in flag
    key = await call_error(client, "create_session", cli_args=["-c", "model_providers.x.base_url=http://evil"])
    assert "'model_providers.x.base_url' is not allowed" in key and "model_reasoning_effort" in key
    assert (await call(client, "list_sessions"))["sessions"] == []  # nothing was made


async def test_an_interrupted_turn_keeps_the_usage_of_requests_answered_before_any_message(llm: FakeLLM, client: Client) -> None:
    """A turn stopped before Codex said or ran anything still counts what the model was paid for."""
    llm.script(
        Reply(tool_calls=[ToolCall("no_such_tool", {})], input_tokens=123, output_tokens=7, cache_read_tokens=5),
        Reply(hang=True),
    )
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="think", wait_s=0)
    with anyio.fail_after(50):  # the first request was answered (its usage counted): Codex asks again
        while len(llm.requests) < 2:
            await anyio.sleep(0.05)
    assert (await call(client, "interrupt", session_id=sid))["interrupted"] is True
    detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
    assert detail["last_turn"]["status"] == "interrupted"
    for usage in (detail["last_turn"]["usage"], detail["usage"]):
        assert usage is not None, "the usage counted before the interrupt was lost"
        assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"]) == (123, 7, 5), usage
