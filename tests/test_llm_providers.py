"""Where the llm agent's model runs: the calling client's own, through MCP sampling, and the server's choice
among providers (`auto`). The agent's loop, tools and the HTTP providers are in test_llm_agent.py."""
# ruff: noqa: F811  (the `llm` fixture imported from test_llm_agent is used by name)

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types

from mcp_sessions import __version__
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import ERAS, call, new_session
from .fake_llm import FakeLLM, Reply
from .test_llm_agent import ANTHROPIC_KEY, OPENAI_KEY, llm, llm_settings  # noqa: F401

pytestmark = pytest.mark.anyio


def sampling_model(replies: list[types.CreateMessageResultWithTools], seen: list[types.CreateMessageRequestParams]) -> Any:
    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        seen.append(params)
        return replies.pop(0)

    return sample


SAMPLES_TOOLS = types.SamplingCapability(tools=types.SamplingToolsCapability())


def answer(*content: Any) -> types.CreateMessageResultWithTools:
    stop = "toolUse" if any(isinstance(c, types.ToolUseContent) for c in content) else "endTurn"
    return types.CreateMessageResultWithTools(role="assistant", content=list(content), model="client-model", stop_reason=stop)


@asynccontextmanager
async def answering_client(settings: Settings, said: str, seen: list[types.CreateMessageRequestParams]) -> AsyncIterator[Client]:
    """A handshake-era client whose model answers one sampling request with `said`; the requests go into `seen`."""
    async with Client(
        create_server(settings),
        mode="legacy",
        sampling_callback=sampling_model([answer(types.TextContent(type="text", text=said))], seen),
        sampling_capabilities=SAMPLES_TOOLS,
    ) as client:
        yield client


async def test_sampling_uses_the_calling_clients_model(home: Path, llm: FakeLLM) -> None:
    seen: list[types.CreateMessageRequestParams] = []
    replies = [
        types.CreateMessageResultWithTools(
            role="assistant",
            content=[types.ToolUseContent(type="tool_use", id="s1", name="bash", input={"command": "echo from-sampling"})],
            model="client-model",
            stop_reason="toolUse",
        ),
        types.CreateMessageResultWithTools(
            role="assistant",
            content=[types.TextContent(type="text", text="sampled answer")],
            model="client-model",
            stop_reason="endTurn",
        ),
    ]
    settings = llm_settings(home, llm, llm_provider="sampling", model=None, openai_api_key=None, anthropic_api_key=None)
    async with Client(
        create_server(settings),
        mode="legacy",
        sampling_callback=sampling_model(replies, seen),
        sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
    ) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="say hi", wait_s=30)
    assert reply["turn_status"] == "completed", reply
    assert reply["output"] == "sampled answer"
    assert len(seen) == 2 and llm.requests == []
    assert {t.name for t in seen[0].tools} == {"bash", "read_file", "write_file", "edit_file", "list_files"}
    last = seen[1].messages[-1]
    result = last.content[0] if isinstance(last.content, list) else last.content
    assert result.type == "tool_result" and "from-sampling" in result.content[0].text
    assert reply["usage"]["cost_usd"] == 0 and "client-model" in reply["usage"]["cost_by_model"]


@pytest.mark.parametrize("mode", ERAS)
async def test_sampling_fails_with_a_sentence_when_the_client_cannot_sample(home: Path, llm: FakeLLM, mode: str) -> None:
    settings = llm_settings(home, llm, llm_provider="sampling", model=None)
    async with Client(create_server(settings), mode=mode) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "failed"
    assert reply["reason"].startswith("the model call failed: the calling client does not offer MCP sampling") or (
        mode == "auto" and "where a server cannot ask the client's model outside a tool call" in reply["reason"]
    )


async def test_sampling_in_the_2026_era_fails_with_a_sentence(home: Path, llm: FakeLLM) -> None:
    settings = llm_settings(home, llm, llm_provider="sampling", model=None)
    async with Client(
        create_server(settings),
        mode="auto",
        sampling_callback=sampling_model([], []),
        sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
    ) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "failed"
    assert "2026-07-28" in reply["reason"] and "outside a tool call" in reply["reason"]


@asynccontextmanager
async def sampling_in_tasks(home: Path, llm: FakeLLM, extensions: list[Any] | None = None) -> AsyncIterator[Client]:
    """A 2026-07-28 client that takes tasks and can sample, against an llm agent that samples through it."""
    from .test_tasks import TasksAware

    settings = llm_settings(home, llm, llm_provider="sampling", model=None, openai_api_key=None, anthropic_api_key=None)
    async with Client(
        create_server(settings),
        mode="auto",
        extensions=extensions or [TasksAware()],
        sampling_callback=sampling_model([], []),
        sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
    ) as client:
        yield client


async def test_sampling_in_the_2026_era_goes_through_the_turns_task(home: Path, llm: FakeLLM) -> None:
    """With the tasks extension, the turn's question to the client's model is the task's input request
    (input_required), answered by tasks/update: sampling without a back channel."""
    from .test_tasks import rpc, settle, start

    async with sampling_in_tasks(home, llm) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text="say hi")
        asked = await settle(client, task["taskId"], "input_required")
        assert asked["status"] == "input_required", asked
        [(key, request)] = asked["inputRequests"].items()
        assert (
            request["method"] == "sampling/createMessage" and request["params"]["messages"][-1]["content"][0]["text"] == "say hi"
        )
        answer = {
            "role": "assistant",
            "content": [{"type": "text", "text": "sampled in a task"}],
            "model": "client-model",
            "stopReason": "endTurn",
        }
        assert await rpc(client, "tasks/update", taskId=task["taskId"], inputResponses={key: answer}) == {
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "mcp-sessions", "version": __version__}},
        }
        done = await settle(client, task["taskId"])
    assert done["status"] == "completed", done
    assert done["result"]["structuredContent"]["output"] == "sampled in a task"
    assert llm.requests == []


async def test_each_turn_samples_through_the_client_that_sent_it(home: Path, llm: FakeLLM) -> None:
    """The sampler belongs to the turn: a queued turn puts its question on its own task, not on the task of
    a message queued after it (nor on an earlier, finished one)."""
    from .test_tasks import rpc, settle, start

    answer = {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "model": "m", "stopReason": "endTurn"}
    async with sampling_in_tasks(home, llm) as client:
        sid = await new_session(client)
        first = await start(client, "send_message", session_id=sid, text="one")
        [key] = (await settle(client, first["taskId"], "input_required"))["inputRequests"]
        second = await start(client, "send_message", session_id=sid, text="two", queue=True)
        third = await start(client, "send_message", session_id=sid, text="three", queue=True)
        await rpc(client, "tasks/update", taskId=first["taskId"], inputResponses={key: answer})
        assert (await settle(client, first["taskId"]))["status"] == "completed"
        with anyio.fail_after(30):
            while (await rpc(client, "tasks/get", taskId=second["taskId"]))["status"] == "working":
                assert (await rpc(client, "tasks/get", taskId=third["taskId"]))["status"] == "working"
                await anyio.sleep(0.05)
        asked = await rpc(client, "tasks/get", taskId=second["taskId"])
        assert asked["status"] == "input_required", asked
        [(key, request)] = asked["inputRequests"].items()
        assert request["params"]["messages"][-1]["content"][0]["text"] == "two"
        await rpc(client, "tasks/update", taskId=second["taskId"], inputResponses={key: answer})
        assert (await settle(client, second["taskId"]))["status"] == "completed"
        [(key, request)] = (await settle(client, third["taskId"], "input_required"))["inputRequests"].items()
        assert request["params"]["messages"][-1]["content"][0]["text"] == "three"
        await rpc(client, "tasks/update", taskId=third["taskId"], inputResponses={key: answer})
        assert (await settle(client, third["taskId"]))["status"] == "completed"


async def test_sampling_reaches_the_client_after_send_message_returned_busy(home: Path, llm: FakeLLM) -> None:
    """The turn's model calls go to the client that sent the message, on its connection, after the tool call
    that started the turn is over: the second call here is asked only once send_message has answered busy."""
    replied = anyio.Event()
    seen: list[types.CreateMessageRequestParams] = []

    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        seen.append(params)
        if len(seen) == 1:
            await replied.wait()  # answered only after send_message returned: the next request comes later still
            return answer(types.ToolUseContent(type="tool_use", id="b1", name="bash", input={"command": "echo late"}))
        return answer(types.TextContent(type="text", text="answered after busy"))

    settings = llm_settings(home, llm, llm_provider="sampling", model=None, openai_api_key=None, anthropic_api_key=None)
    async with Client(
        create_server(settings), mode="legacy", sampling_callback=sample, sampling_capabilities=SAMPLES_TOOLS
    ) as client:
        sid = await new_session(client)
        busy = await call(client, "send_message", session_id=sid, text="say hi", wait_s=0)
        assert busy["status"] == "busy" and busy["turn_status"] == "running"
        replied.set()
        done = await call(client, "get_session", session_id=sid, wait_s=30)
    turn = done["session"]["last_turn"]
    assert turn["status"] == "completed" and turn["output"] == "answered after busy", turn
    assert len(seen) == 2 and "late" in seen[1].messages[-1].content[0].content[0].text


async def test_a_client_gone_mid_sampling_fails_the_turn_with_a_sentence(home: Path, llm: FakeLLM) -> None:
    """A real client that goes away while the server waits for its model's answer: the turn fails, saying so, and
    another client of the same server reads that."""
    asked = anyio.Event()

    async def sample(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        asked.set()
        await anyio.sleep_forever()  # the client's model never answers: its client leaves first
        raise AssertionError("unreachable")

    settings = llm_settings(home, llm, llm_provider="sampling", model=None, openai_api_key=None, anthropic_api_key=None)
    server = create_server(settings, shared=True)  # one manager for both clients, as over HTTP
    async with server.serving():
        async with Client(server, mode="legacy", sampling_callback=sample, sampling_capabilities=SAMPLES_TOOLS) as gone:
            sid = await new_session(gone)
            await call(gone, "send_message", session_id=sid, text="hi", wait_s=0)
            with anyio.fail_after(10):
                await asked.wait()
        async with Client(server, mode="legacy") as other:
            detail = await call(other, "get_session", session_id=sid, wait_s=30)
    turn = detail["session"]["last_turn"]
    assert turn["status"] == "failed", turn
    assert turn["reason"].startswith("the model call failed: the client that sent the message disconnected"), turn["reason"]
    assert detail["session"]["status"] == "ready"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"], "anthropic"),
        (["OPENAI_API_KEY", "OPENAI_BASE_URL"], "openai"),
        (["OPENAI_BASE_URL"], "openai"),  # a local server needs no key
        ([], "sampling"),  # ANTHROPIC_BASE_URL alone (always set here) chooses nothing
    ],
)
async def test_the_auto_provider_is_chosen_from_the_environment(
    home: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, variables: list[str], expected: str
) -> None:
    """`auto`: anthropic with ANTHROPIC_API_KEY, else openai with OPENAI_API_KEY or OPENAI_BASE_URL, else sampling.
    (OPENAI_API_KEY without a base URL would reach api.openai.com, so it is not tried here.)"""
    values = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": llm.openai_base_url}
    for name in [*values, "ANTHROPIC_BASE_URL", "MCP_SESSIONS_LLM_PROVIDER"]:
        monkeypatch.delenv(name, raising=False)
    for name in variables:
        monkeypatch.setenv(name, values[name])
    monkeypatch.setenv("ANTHROPIC_BASE_URL", llm.url)
    settings = Settings.load(home=str(home), agent="llm", model="m-1", llm_retries=0)
    sampled: list[types.CreateMessageRequestParams] = []
    llm.script(Reply(text="from a model server"))
    async with answering_client(settings, "from the client", sampled) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "completed", reply
    asked = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}
    chosen = [asked[r.path] for r in llm.requests] + ["sampling"] * len(sampled)
    assert chosen == [expected]
