"""The claude-code agent on the caller's model (`provider="sampling"`): the real Claude Code CLI in a sandbox,
its model requests answered by the real MCP SDK client's sampling callback, which plays the model. No key
is configured; the configured upstream is a fake server that must see nothing."""
# ruff: noqa: F811  (fixtures imported from test_claude_code are used by name)

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types

from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .fake_llm import FakeLLM
from .test_claude_code import HTTP_REQUEST, Inside, driver, inside, installed  # noqa: F401
from .test_http import API, TOKENS, http, running
from .test_images import PNG, image
from .test_llm_agent import stored_messages
from .test_llm_providers import SAMPLES_TOOLS

pytestmark = pytest.mark.anyio

AGENT = "claude-code"
Answer = Callable[[types.CreateMessageRequestParams], Awaitable[Any]]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    """The configured upstream: a sampled session must send it nothing."""
    installed(AGENT)
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def settings(home: Path, llm: FakeLLM, driver: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    upstreams = dict(claude_code_base_url=llm.url, codex_base_url=llm.openai_base_url, opencode_base_url=llm.openai_base_url)
    keys = dict(claude_code_api_key=None, codex_api_key=None, opencode_api_key=None)
    settings = Settings(home=home, driver=driver, image=IMAGE, agent=AGENT, **upstreams, **keys)
    yield settings
    if driver == "docker":
        remove_labelled(request.getfixturevalue("docker_engine"), server_id(settings))


class Model:
    """A sampling callback that plays the model: each request is recorded and answered by the next answer."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.seen: list[types.CreateMessageRequestParams] = []

    async def __call__(self, ctx: Any, params: types.CreateMessageRequestParams) -> Any:
        self.seen.append(params)
        return await self.answers.pop(0)(params)


def says(*content: Any) -> types.CreateMessageResultWithTools:
    stop = "toolUse" if any(isinstance(c, types.ToolUseContent) for c in content) else "endTurn"
    return types.CreateMessageResultWithTools(role="assistant", content=list(content), model="client-model", stop_reason=stop)


def text(words: str) -> Answer:
    async def answer(params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        return says(types.TextContent(type="text", text=words))

    return answer


async def write_with_bash(params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
    assert "Bash" in {t.name for t in params.tools or []}, "Claude Code offers its own tools"
    bash = types.ToolUseContent(
        type="tool_use", id="toolu_s1", name="Bash", input={"command": "echo hello > hi.txt", "description": "write"}
    )
    return says(types.TextContent(type="text", text="Writing it."), bash)


@asynccontextmanager
async def sampling_client(
    settings: Settings, model: Model, capabilities: types.SamplingCapability = SAMPLES_TOOLS
) -> AsyncIterator[Client]:
    async with Client(
        create_server(settings), mode="legacy", sampling_callback=model, sampling_capabilities=capabilities
    ) as client:
        yield client


async def sampled_session(client: Client) -> str:
    session = await call(client, "create_session", provider="sampling")
    assert session["status"] == "ready", session
    return str(session["id"])


async def test_claude_code_runs_on_the_callers_model_with_no_key(
    home: Path, settings: Settings, llm: FakeLLM, inside: Callable[[str], Inside]
) -> None:
    model = Model(write_with_bash, text("I wrote hi.txt."), text("You asked for hi.txt."))
    async with sampling_client(settings, model) as client:
        sid = await sampled_session(client)
        reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
        assert reply["turn_status"] == "completed", reply
        assert reply["output"] == "I wrote hi.txt."
        assert await inside(sid).sh("cat hi.txt") == "hello\n"  # Claude Code's own Bash tool ran the call

        first, second = model.seen
        assert first.system_prompt and "Claude" in first.system_prompt
        assert any(b.type == "text" and "write hi.txt" in b.text for m in first.messages for b in m.content_as_list)
        result = second.messages[-1].content_as_list[0]  # what the tool did, as Claude Code reported it
        assert result.type == "tool_result" and result.tool_use_id == "toolu_s1" and not result.is_error
        assert second.messages[-2].role == "assistant" and second.messages[-2].content_as_list[-1].type == "tool_use"

        events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
        streamed = "".join(e["data"]["text"] for e in events if e["type"] == "text.delta")
        assert streamed == "Writing it.I wrote hi.txt."  # Claude Code read the answers as streams
        sampled = [e["data"] for e in events if e["type"] == "model.sampled"]
        assert [(s["request"], s["model"], s["tokens"]) for s in sampled] == [
            (1, "client-model", None),
            (2, "client-model", None),
        ]
        assert reply["usage"]["total_tokens"] == 0 and reply["usage"]["cost_by_model"] == {"client-model": 0.0}
        messages = await stored_messages(home, sid)
        assert [b.type for m in messages for b in m.content] == ["text", "text", "tool_use", "tool_result", "text"]

        again = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert again["output"] == "You asked for hi.txt."
        asked = [b.text for m in model.seen[2].messages if m.role == "user" for b in m.content_as_list if b.type == "text"]
        assert any("write hi.txt" in t for t in asked)  # the conversation went on
    assert llm.requests == []  # nothing left the server for an upstream


class Held:
    """A model answer held until `go` is set: a turn that runs while a test makes its own requests of the sandbox."""

    def __init__(self) -> None:
        self.asked, self.go = anyio.Event(), anyio.Event()

    async def __call__(self, params: types.CreateMessageRequestParams) -> Any:
        self.asked.set()
        await self.go.wait()
        return says(types.TextContent(type="text", text="done"))

    async def turn(self, client: Client, sid: str) -> None:
        """Start a turn and wait until its CLI asks the model (the proxy then takes requests)."""
        await call(client, "send_message", session_id=sid, text="hold on", wait_s=0)
        with anyio.fail_after(50):
            await self.asked.wait()


async def test_a_non_streamed_request_gets_one_json_message(
    settings: Settings, llm: FakeLLM, inside: Callable[[str], Inside]
) -> None:
    """While a turn runs, a request of the sandbox without `stream` gets the Messages API's JSON answer."""
    held = Held()

    async def as_json(params: types.CreateMessageRequestParams) -> Any:
        tool = types.ToolUseContent(type="tool_use", id="toolu_j", name="Read", input={"file_path": "x"})
        return says(types.TextContent(type="text", text="as json"), tool)

    model = Model(held, as_json)
    async with sampling_client(settings, model) as client:
        sid = await sampled_session(client)
        await held.turn(client, sid)
        sandbox = inside(sid)
        env = await sandbox.cli_env()
        port = env["ANTHROPIC_BASE_URL"].rsplit(":", 1)[1]
        messages = [
            {"role": "user", "content": "json please"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a"}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "file text"}]},
                    {"type": "text", "text": "<reminder>"},
                ],
            },
        ]
        body = json.dumps({"model": "m", "max_tokens": 100, "messages": messages})
        raw = await sandbox.sh(HTTP_REQUEST.format(port=port, method="POST", path="/v1/messages", length=len(body), body=body))
        count = await sandbox.sh(
            HTTP_REQUEST.format(port=port, method="POST", path="/v1/messages/count_tokens", length=len(body), body=body)
        )
        assert count.startswith("HTTP/1.1 404") and "not available when the model is the caller's" in count, count
        held.go.set()
        head, _, payload = raw.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 200") and "application/json" in head, raw
        message = json.loads(payload)
        assert message["type"] == "message" and message["model"] == "client-model"
        assert message["content"] == [
            {"type": "text", "text": "as json"},
            {"type": "tool_use", "id": "toolu_j", "name": "Read", "input": {"file_path": "x"}},
        ]
        assert message["stop_reason"] == "tool_use"
        first, _, last = model.seen[1].messages
        assert first.content_as_list[0].text == "json please"
        # MCP wants tool results alone in their message: the text beside them travels in the last result
        (result,) = last.content_as_list
        assert result.type == "tool_result" and [c.text for c in result.content] == ["file text", "<reminder>"]
        done = await call(client, "get_session", session_id=sid, wait_s=50)
        assert done["session"]["last_turn"]["output"] == "done"
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_a_client_that_cannot_sample_is_refused_naming_the_option_and_the_alternative(
    settings: Settings, llm: FakeLLM
) -> None:
    async with Client(create_server(settings), mode="legacy") as client:  # declares no sampling
        sid = await sampled_session(client)
        error = await call_error(client, "send_message", session_id=sid, text="hi", wait_s=5)
        assert "provider='sampling'" in error and "does not offer MCP sampling" in error
        assert "provider='anthropic'" in error and "ANTHROPIC_API_KEY" in error
        detail = await call(client, "get_session", session_id=sid)
        assert detail["session"]["turns"] == 0 and detail["session"]["status"] == "ready"  # nothing started
        wrong = await call_error(client, "create_session", provider="openai")
        assert "Anthropic Messages API" in wrong and "'sampling'" in wrong
    async with sampling_client(settings, Model(), types.SamplingCapability()) as client:
        sid = await sampled_session(client)
        error = await call_error(client, "send_message", session_id=sid, text="hi", wait_s=5)
        assert "not tool use in sampling" in error
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
@pytest.mark.parametrize(("agent", "own"), [("claude-code", "anthropic"), ("opencode", "openai")])
async def test_a_message_over_rest_is_refused_there_being_no_client_to_ask(
    settings: Settings, llm: FakeLLM, agent: str, own: str
) -> None:
    installed(agent)
    async with running(settings, TOKENS) as (base, _), http(base) as c:
        r = await c.post(f"{API}/sessions", json={"agent": agent, "provider": "sampling", "model": "gpt-4.1"})
        assert r.status_code == 201, r.text
        r = await c.post(f"{API}/sessions/{r.json()['id']}/messages", json={"text": "hi"})
        assert r.status_code == 400, r.text
        assert "REST API" in r.text and "send_message tool" in r.text and f"provider='{own}'" in r.text
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_a_declined_request_fails_the_turn_with_the_reason_and_the_next_one_works(settings: Settings, llm: FakeLLM) -> None:
    async def declined(params: types.CreateMessageRequestParams) -> types.ErrorData:
        return types.ErrorData(code=-1, message="the user declined the sampling request")

    model = Model(declined, text("Here now."))
    async with sampling_client(settings, model) as client:
        sid = await sampled_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=50)
        assert reply["turn_status"] == "failed", reply
        assert reply["reason"].startswith("the model call failed: the calling client refused the sampling request")
        assert "the user declined the sampling request" in reply["reason"]
        assert len(model.seen) == 1  # Claude Code took the API error as final: no retry
        again = await call(client, "send_message", session_id=sid, text="hi again", wait_s=50)
        assert again["turn_status"] == "completed" and again["output"] == "Here now.", again
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_interrupt_withdraws_the_outstanding_request_and_the_session_goes_on(settings: Settings, llm: FakeLLM) -> None:
    asked, withdrawn = anyio.Event(), anyio.Event()

    async def never(params: types.CreateMessageRequestParams) -> Any:
        asked.set()
        try:
            await anyio.sleep_forever()
        finally:
            withdrawn.set()  # the server cancelled its request (notifications/cancelled)

    model = Model(never, text("Back again."))
    async with sampling_client(settings, model) as client:
        sid = await sampled_session(client)
        busy = await call(client, "send_message", session_id=sid, text="think hard", wait_s=0)
        assert busy["status"] == "busy"
        with anyio.fail_after(50):
            await asked.wait()
        stopped = await call(client, "interrupt", session_id=sid)
        assert stopped["interrupted"] is True
        with anyio.fail_after(30):
            await withdrawn.wait()
        detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
        assert detail["status"] == "ready" and detail["last_turn"]["status"] == "interrupted", detail
        reply = await call(client, "send_message", session_id=sid, text="are you there?", wait_s=50)
        assert reply["turn_status"] == "completed" and reply["output"] == "Back again.", reply
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_a_time_budget_stops_a_turn_waiting_on_the_callers_model(settings: Settings, llm: FakeLLM) -> None:
    """Sampling counts no tokens, so the budgets that bound a sampled session are turns and time: a turn whose
    time runs out while the client's model is being asked fails with the budget, and the request is withdrawn."""
    withdrawn = anyio.Event()

    async def never(params: types.CreateMessageRequestParams) -> Any:
        try:
            await anyio.sleep_forever()
        finally:
            withdrawn.set()

    async with sampling_client(settings, Model(never)) as client:
        sid = (await call(client, "create_session", provider="sampling", max_duration_s=3))["id"]
        reply = await call(client, "send_message", session_id=sid, text="think hard", wait_s=50)
        assert reply["turn_status"] == "failed" and "max_duration_s" in (reply["reason"] or ""), reply
        with anyio.fail_after(30):
            await withdrawn.wait()
    assert llm.requests == []


async def wrote_hi(client: Client, agent: str) -> tuple[str, dict[str, Any]]:
    """A sampled session of `agent` (a CLI whose model name is free) asked to write hi.txt: its id and reply,
    the turn completed with the model's last answer."""
    sid = (await call(client, "create_session", agent=agent, provider="sampling", model="gpt-4.1"))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "completed", reply
    assert reply["output"] == "I wrote hi.txt."
    return str(sid), reply


async def test_codex_runs_on_the_callers_model_too(settings: Settings, llm: FakeLLM, inside: Callable[[str], Inside]) -> None:
    """The same for Codex, whose API is OpenAI Responses: a function call that writes a file, then the answer."""
    installed("codex")

    async def write_with_exec(params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        names = {t.name for t in params.tools or []}
        assert "exec_command" in names, names
        call_ = types.ToolUseContent(type="tool_use", id="call_s1", name="exec_command", input={"cmd": "echo hello > hi.txt"})
        return says(call_)

    model = Model(write_with_exec, text("I wrote hi.txt."), text("You asked for hi.txt."))
    async with sampling_client(settings, model) as client:
        sid, _ = await wrote_hi(client, "codex")
        assert await inside(sid).sh("cat hi.txt") == "hello\n"  # Codex's own exec_command ran the call
        result = model.seen[1].messages[-1].content_as_list[0]
        assert result.type == "tool_result" and result.tool_use_id == "call_s1"
        assert model.seen[0].system_prompt  # Codex's instructions
        again = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert again["output"] == "You asked for hi.txt."
        wrong = await call_error(client, "create_session", agent="codex", provider="anthropic")
        assert "OpenAI Responses API" in wrong and "provider='openai'" in wrong
    assert llm.requests == []


async def test_opencode_runs_on_the_callers_model_too(
    home: Path, settings: Settings, llm: FakeLLM, inside: Callable[[str], Inside]
) -> None:
    """The same for OpenCode, whose API is Chat Completions (streamed): its own write tool makes a file, then the
    answer; the conversation goes on in the next turn."""
    installed("opencode")

    async def write_with_write(params: types.CreateMessageRequestParams) -> types.CreateMessageResultWithTools:
        names = {t.name for t in params.tools or []}
        assert {"write", "bash"} <= names, names  # OpenCode offers its own tools
        write = types.ToolUseContent(
            type="tool_use", id="call_o1", name="write", input={"filePath": "hi.txt", "content": "hello\n"}
        )
        return says(types.TextContent(type="text", text="Writing it."), write)

    model = Model(write_with_write, text("I wrote hi.txt."), text("You asked for hi.txt."))
    async with sampling_client(settings, model) as client:
        sid, reply = await wrote_hi(client, "opencode")
        assert await inside(sid).sh("cat hi.txt") == "hello\n"  # OpenCode's own write tool ran the call

        first, second = model.seen
        assert first.system_prompt  # OpenCode's system prompt, from its system messages
        assert any(b.type == "text" and "write hi.txt" in b.text for m in first.messages for b in m.content_as_list)
        call_ = second.messages[-2].content_as_list[-1]  # the call, as OpenCode sent it back
        assert call_.type == "tool_use" and call_.input == {"filePath": "hi.txt", "content": "hello\n"}
        (result,) = second.messages[-1].content_as_list  # what the tool did, as OpenCode reported it
        assert result.type == "tool_result" and result.tool_use_id == "call_o1" and not result.is_error
        events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
        assert [e["data"]["text"] for e in events if e["type"] == "text.delta"] == ["Writing it.", "I wrote hi.txt."]
        tool = next(e["data"] for e in events if e["type"] == "tool.completed")
        assert tool["tool"] == "write" and not tool["is_error"]
        sampled = [(e["data"]["request"], e["data"]["model"]) for e in events if e["type"] == "model.sampled"]
        assert sampled == [(1, "client-model"), (2, "client-model")]  # no title request, no other
        assert reply["usage"]["total_tokens"] == 0 and reply["usage"]["cost_by_model"] == {"client-model": 0.0}

        again = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert again["turn_status"] == "completed" and again["output"] == "You asked for hi.txt.", again
        asked = [b.text for m in model.seen[2].messages if m.role == "user" for b in m.content_as_list if b.type == "text"]
        assert any("write hi.txt" in t for t in asked) and any("what did I ask?" in t for t in asked)
        wrong = await call_error(client, "create_session", agent="opencode", provider="anthropic", model="gpt-4.1")
        assert "Chat Completions" in wrong and "provider='openai'" in wrong
    async with Client(create_server(settings), mode="legacy") as client:  # declares no sampling
        sid = (await call(client, "create_session", agent="opencode", provider="sampling", model="gpt-4.1"))["id"]
        error = await call_error(client, "send_message", session_id=sid, text="hi", wait_s=5)
        assert "does not offer MCP sampling" in error and "provider='openai'" in error and "OPENAI_API_KEY" in error
    assert llm.requests == []  # nothing left the server for an upstream


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_a_chat_request_without_stream_gets_one_chat_completion(
    settings: Settings, llm: FakeLLM, inside: Callable[[str], Inside]
) -> None:
    """While an OpenCode turn runs, a Chat Completions request of the sandbox without `stream` gets one
    `chat.completion`; its system and developer messages are the system prompt, its tool messages one message
    of results."""
    installed("opencode")
    held = Held()

    async def two_calls(params: types.CreateMessageRequestParams) -> Any:
        first = types.ToolUseContent(type="tool_use", id="call_a", name="read", input={"filePath": "a"})
        return says(first, types.ToolUseContent(type="tool_use", id="call_b", name="read", input={"filePath": "b"}))

    model = Model(held, two_calls)
    async with sampling_client(settings, model) as client:
        sid = (await call(client, "create_session", agent="opencode", provider="sampling", model="gpt-4.1"))["id"]
        await held.turn(client, sid)
        sandbox = inside(sid)
        config = json.loads(await sandbox.sh("cat .mcp-sessions/opencode/opencode.json"))
        port = config["provider"]["mcp-sessions"]["options"]["baseURL"].rsplit(":", 1)[1].removesuffix("/v1")
        calls = [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]  # printf: no quotes
        calls.append({"id": "c2", "type": "function", "function": {"name": "read", "arguments": "{}"}})
        shown = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "json please"}, {"type": "image_url", "image_url": {}}, *shown],
            },
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "file a"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "file b"}]},
        ]
        body = json.dumps({"model": "m", "max_tokens": 100, "messages": messages})
        path = "/v1/chat/completions"
        raw = await sandbox.sh(HTTP_REQUEST.format(port=port, method="POST", path=path, length=len(body), body=body))
        held.go.set()
        head, _, payload = raw.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 200") and "application/json" in head, raw
        completion = json.loads(payload)
        assert completion["object"] == "chat.completion" and completion["model"] == "client-model"
        (choice,) = completion["choices"]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]
        ] == [
            ("call_a", "read", {"filePath": "a"}),
            ("call_b", "read", {"filePath": "b"}),
        ]
        seen = model.seen[1]
        assert seen.system_prompt == "be brief\n\nand kind" and seen.max_tokens == 100
        user, assistant, results = seen.messages
        text_, image = user.content_as_list  # an image given as a data URL reaches the model; another is named
        assert text_.text == "json please\n[image_url block left out]"
        assert image.type == "image" and (image.mime_type, image.data) == ("image/png", "aGk=")
        assert [(b.id, b.input) for b in assistant.content_as_list] == [("c1", {}), ("c2", {})]
        assert [(r.tool_use_id, r.content[0].text) for r in results.content_as_list] == [("c1", "file a"), ("c2", "file b")]
        done = await call(client, "get_session", session_id=sid, wait_s=50)
        assert done["session"]["last_turn"]["output"] == "done"
    assert llm.requests == []


@pytest.mark.parametrize("driver", ["local"], indirect=True)
async def test_in_the_2026_era_the_cli_asks_through_the_turns_task(settings: Settings, llm: FakeLLM) -> None:
    """A 2026-07-28 client that declares the tasks extension: each request of the CLI is one of the turn's task's
    input requests (input_required), answered with tasks/update."""
    from .test_tasks import TasksAware, rpc, settle, start

    async with Client(
        create_server(settings),
        mode="auto",
        extensions=[TasksAware()],
        sampling_callback=Model(),
        sampling_capabilities=SAMPLES_TOOLS,
    ) as client:
        sid = await sampled_session(client)
        task = await start(client, "send_message", session_id=sid, text="say hi")
        asked = await settle(client, task["taskId"], "input_required")
        assert asked["status"] == "input_required", asked
        [(key, request)] = asked["inputRequests"].items()
        assert request["method"] == "sampling/createMessage"
        assert "Bash" in {t["name"] for t in request["params"]["tools"]}
        answer = {
            "role": "assistant",
            "content": [{"type": "text", "text": "hi from a task"}],
            "model": "m",
            "stopReason": "endTurn",
        }
        await rpc(client, "tasks/update", taskId=task["taskId"], inputResponses={key: answer})
        done = await settle(client, task["taskId"])
    assert done["status"] == "completed", done
    assert done["result"]["structuredContent"]["output"] == "hi from a task"
    assert llm.requests == []


@pytest.mark.parametrize("agent", ["claude-code", "codex", "opencode"])
async def test_an_image_sent_with_the_message_reaches_the_callers_model(settings: Settings, llm: FakeLLM, agent: str) -> None:
    installed(agent)
    model = Model(text("A red square."))
    async with sampling_client(settings, model) as client:
        sid = (await call(client, "create_session", agent=agent, provider="sampling", model="m-1"))["id"]
        reply = await call(client, "send_message", session_id=sid, text="What is this?", images=[image()], wait_s=50)
        assert reply["output"] == "A red square.", reply
    (asked,) = model.seen
    images = [b for m in asked.messages if m.role == "user" for b in m.content_as_list if b.type == "image"]
    assert images == [types.ImageContent(type="image", data=PNG, mime_type="image/png")]
    assert llm.requests == []
