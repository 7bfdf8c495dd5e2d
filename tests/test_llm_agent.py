"""The llm agent through real MCP clients, against fake model servers speaking the real wire formats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.agents.llm import LlmSettings
from mcp_sessions.agents.pricing import PriceTable
from mcp_sessions.agents.providers.common import TokenUsage
from mcp_sessions.app import server_id
from mcp_sessions.cli import build_parser, main
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from mcp_sessions.store import Store

from .conftest import ERAS, call, new_session, processes_marked
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .fake_llm import Fail, FakeLLM, Reply, ToolCall
from .forwarder import tcp_forwarder

pytestmark = pytest.mark.anyio

OPENAI_KEY = "sk-test-openai-" + "7" * 24
ANTHROPIC_KEY = "sk-ant-test-" + "5" * 24
KEYS = (OPENAI_KEY, ANTHROPIC_KEY)
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def llm_settings(home: Path, llm: FakeLLM, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        home=home,
        command_timeout_s=120,
        agent="llm",
        llm_provider="openai",
        model="gpt-4o-mini",
        openai_base_url=llm.openai_base_url,
        openai_api_key=OPENAI_KEY,
        anthropic_base_url=llm.url,
        anthropic_api_key=ANTHROPIC_KEY,
        llm_retries=0,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=ERAS)
async def client(request: pytest.FixtureRequest, home: Path, llm: FakeLLM) -> AsyncIterator[Client]:
    async with Client(create_server(llm_settings(home, llm)), mode=request.param) as c:
        yield c


async def events_of(client: Client, sid: str) -> list[dict[str, Any]]:
    return (await call(client, "get_session", session_id=sid, events_after=0))["events"]


async def stored_messages(home: Path, sid: str) -> list[Any]:
    store = await Store.open(home / "sessions.db")
    try:
        return await store.messages(sid)
    finally:
        await store.aclose()


def assert_no_keys(*texts: str) -> None:
    for text in texts:
        for key in KEYS:
            assert key not in text


def tool_results_openai(body: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


def tool_results_anthropic(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for m in body["messages"]:
        if m["role"] == "user" and isinstance(m["content"], list):
            for b in m["content"]:
                if b["type"] == "tool_result":
                    found[b["tool_use_id"]] = b
    return found


def coding_task() -> list[Reply]:
    return [
        Reply(
            text="I will write the script.",
            tool_calls=[ToolCall("write_file", {"path": "hello.py", "content": "print('hello')\n"}, id="c1")],
        ),
        Reply(tool_calls=[ToolCall("bash", {"command": "python3 hello.py"}, id="c2")]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "hello.py", "old_text": "hello", "new_text": "bye"}, id="c3")]),
        Reply(tool_calls=[ToolCall("read_file", {"path": "hello.py"}, id="c4"), ToolCall("list_files", {}, id="c5")]),
        Reply(text="Done: hello.py now prints bye.", cache_read_tokens=40, cache_creation_tokens=10),
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ERAS)
async def test_a_task_with_several_tool_calls_completes(home: Path, llm: FakeLLM, provider: str, mode: str) -> None:
    llm.script(*coding_task())
    settings = llm_settings(home, llm)
    async with Client(create_server(settings), mode=mode) as client:
        session = await call(
            client, "create_session", agent="llm", provider=provider, model=MODELS[provider], system_prompt="Be brief."
        )
        sid = session["id"]
        assert session["model"] == MODELS[provider]
        reply = await call(client, "send_message", session_id=sid, text="Write hello.py, run it, make it say bye.", wait_s=30)
        assert reply["turn_status"] == "completed", reply
        assert reply["output"] == "Done: hello.py now prints bye."
        text = (await client.read_resource(f"session://{sid}/files/hello.py")).contents[0].text
        assert text == "print('bye')\n"
        events = await events_of(client, sid)
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
    assert len(llm.requests) == 5 and llm.pending == 0

    # what the agent sent: the tools, the system prompt, the key in the header, the results threaded back
    first, last = llm.requests[0], llm.requests[-1]
    if provider == "openai":
        assert first.path == "/v1/chat/completions" and first.body["stream"] is True
        assert first.body["stream_options"] == {"include_usage": True}
        assert first.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert {t["function"]["name"] for t in first.body["tools"]} == {
            "bash",
            "read_file",
            "write_file",
            "edit_file",
            "list_files",
        }
        assert first.body["messages"][0] == {"role": "system", "content": "Be brief."}
        results = tool_results_openai(last.body)
        assert "hello\n" in results["c2"] and "[exit code 0]" in results["c2"]
        assert results["c4"] == "print('bye')\n"
        assert "hello.py" in results["c5"]
    else:
        assert first.path == "/v1/messages" and first.body["stream"] is True
        assert first.headers["x-api-key"] == ANTHROPIC_KEY and first.headers["anthropic-version"]
        assert {t["name"] for t in first.body["tools"]} == {"bash", "read_file", "write_file", "edit_file", "list_files"}
        assert first.body["system"] == "Be brief."
        results = tool_results_anthropic(last.body)
        assert "hello\n" in results["c2"]["content"] and results["c2"]["is_error"] is False
        assert results["c4"]["content"] == "print('bye')\n"

    # the transcript: text, tool_use and tool_result blocks, in order
    messages = await stored_messages(home, sid)
    roles = [m.role for m in messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert [b.type for b in messages[1].content] == ["text", "tool_use"]
    assert messages[1].content[1].name == "write_file"
    assert [b.type for b in messages[8].content] == ["tool_result", "tool_result"]
    assert messages[-1].content[0].text == "Done: hello.py now prints bye."
    assert "[tool call bash" in transcript and "[tool result]" in transcript

    # events: streamed text, each tool started and completed with duration (and exit code for bash)
    types_ = [e["type"] for e in events]
    assert "text.delta" in types_
    deltas = "".join(e["data"]["text"] for e in events if e["type"] == "text.delta")
    assert "I will write the script." in deltas and "Done: hello.py now prints bye." in deltas
    started = [e["data"] for e in events if e["type"] == "tool.started"]
    completed = [e["data"] for e in events if e["type"] == "tool.completed"]
    assert [s["tool"] for s in started] == ["write_file", "bash", "edit_file", "read_file", "list_files"]
    bash = next(c for c in completed if c["tool"] == "bash")
    assert bash["exit_code"] == 0 and bash["duration_s"] >= 0
    assert all("duration_s" in c for c in completed)
    end = next(e for e in events if e["type"] == "turn.completed")
    assert end["data"]["usage"]["output_tokens"] == 100

    # usage: 5 calls of 100 input and 20 output tokens; the last read 40 cached tokens (and wrote 10 on Anthropic)
    usage = reply["usage"]
    assert usage["input_tokens"] == 500 and usage["output_tokens"] == 100
    assert usage["cache_read_tokens"] == 40
    assert usage["cache_creation_tokens"] == (10 if provider == "anthropic" else 0)
    price = PriceTable.load().find(MODELS[provider])
    expected = (
        500 * price.input + 100 * price.output + 40 * price.cache_read + usage["cache_creation_tokens"] * price.cache_write
    ) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected)
    assert usage["cost_by_model"] == {MODELS[provider]: pytest.approx(expected)}


async def test_edit_file_says_when_the_text_is_missing_or_not_unique(home: Path, llm: FakeLLM) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("edit_file", {"path": "a.txt", "old_text": "zzz", "new_text": "y"}, id="e1")]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "a.txt", "old_text": "x", "new_text": "y"}, id="e2")]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "nope.txt", "old_text": "x", "new_text": "y"}, id="e3")]),
        Reply(
            tool_calls=[ToolCall("edit_file", {"path": "a.txt", "old_text": "x", "new_text": "y", "replace_all": True}, id="e4")]
        ),
        Reply(text="ok"),
    )
    async with Client(create_server(llm_settings(home, llm, llm_provider="anthropic", model="claude-haiku-4-5"))) as client:
        sid = await new_session(client, files={"a.txt": "x\nx\n"})
        reply = await call(client, "send_message", session_id=sid, text="edit", wait_s=30)
        assert reply["turn_status"] == "completed"
        text = (await client.read_resource(f"session://{sid}/files/a.txt")).contents[0].text
    assert text == "y\ny\n"
    results = tool_results_anthropic(llm.requests[-1].body)
    assert results["e1"]["is_error"] and "old_text was not found in a.txt" in results["e1"]["content"]
    assert results["e2"]["is_error"] and "occurs 2 times in a.txt" in results["e2"]["content"]
    assert results["e3"]["is_error"] and "No such file" in results["e3"]["content"]
    assert not results["e4"]["is_error"] and "Replaced 2" in results["e4"]["content"]


async def test_max_steps_ends_the_turn_saying_so(client: Client, llm: FakeLLM) -> None:
    llm.script(*[Reply(tool_calls=[ToolCall("bash", {"command": "echo step"})]) for _ in range(3)])
    sid = await new_session(client, max_steps=2)
    reply = await call(client, "send_message", session_id=sid, text="loop", wait_s=30)
    assert reply["turn_status"] == "failed"
    assert "max_steps reached: 2 model calls" in reply["reason"]
    assert "max_steps" in reply["output"]
    assert len(llm.requests) == 2 and llm.pending == 1


async def test_token_and_cost_budgets_end_the_turn_saying_which(client: Client, llm: FakeLLM) -> None:
    llm.script(*[Reply(tool_calls=[ToolCall("bash", {"command": "true"})]) for _ in range(3)])
    sid = await new_session(client, max_turn_tokens=200)
    reply = await call(client, "send_message", session_id=sid, text="go", wait_s=30)
    assert reply["turn_status"] == "failed" and "token budget reached: 240 tokens" in reply["reason"]
    assert reply["usage"]["total_tokens"] == 240

    llm.script(*[Reply(tool_calls=[ToolCall("bash", {"command": "true"})]) for _ in range(2)])
    sid = await new_session(client, model="gpt-4o", max_turn_cost_usd=0.0005)  # 0.00045 per call
    reply = await call(client, "send_message", session_id=sid, text="go", wait_s=30)
    assert reply["turn_status"] == "failed" and "cost budget reached" in reply["reason"]
    assert reply["usage"]["cost_usd"] == pytest.approx(0.0009)


async def test_usage_is_summed_per_turn_and_in_total_and_survives_a_restart(home: Path, llm: FakeLLM) -> None:
    settings = llm_settings(home, llm)
    llm.script(
        Reply(tool_calls=[ToolCall("bash", {"command": "true"})], input_tokens=1000, output_tokens=100),
        Reply(text="one", input_tokens=1000, output_tokens=100),
        Reply(text="two", input_tokens=3000, output_tokens=500, model="gpt-4o"),
    )
    async with Client(create_server(settings)) as client:
        sid = await new_session(client)
        one = await call(client, "send_message", session_id=sid, text="1", wait_s=30)
        two = await call(client, "send_message", session_id=sid, text="2", wait_s=30)
    mini = (2000 * 0.15 + 200 * 0.6) / 1e6
    big = (3000 * 2.5 + 500 * 10.0) / 1e6
    assert one["usage"]["input_tokens"] == 2000 and one["usage"]["cost_usd"] == pytest.approx(mini)
    assert two["usage"]["output_tokens"] == 500 and two["usage"]["cost_by_model"] == {"gpt-4o": pytest.approx(big)}
    # the second turn's request carried the first turn's whole conversation
    assert [m["role"] for m in llm.requests[2].body["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user"]
    async with Client(create_server(settings)) as client:  # a new server on the same state folder
        session = (await call(client, "get_session", session_id=sid))["session"]
    total = session["usage"]
    assert total["input_tokens"] == 5000 and total["output_tokens"] == 700 and total["total_tokens"] == 5700
    assert total["cost_usd"] == pytest.approx(mini + big)
    assert total["cost_by_model"] == {"gpt-4o-mini": pytest.approx(mini), "gpt-4o": pytest.approx(big)}
    assert session["last_turn"]["usage"]["output_tokens"] == 500


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_provider_errors_fail_the_turn_with_a_sentence_and_no_key(home: Path, llm: FakeLLM, provider: str) -> None:
    key = OPENAI_KEY if provider == "openai" else ANTHROPIC_KEY
    llm.script(
        Fail(401, f"Incorrect API key provided: {key}."),
        Fail(429, "Rate limit reached for requests", {"retry-after": "0"}),
        Fail(500, "The server had an error while processing your request."),
    )
    async with Client(create_server(llm_settings(home, llm, llm_provider=provider, model=MODELS[provider]))) as client:
        sid = await new_session(client)
        denied = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
        limited = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
        broken = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
        events = json.dumps(await events_of(client, sid))
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
        state = (await client.read_resource(f"session://{sid}")).contents[0].text
    assert denied["turn_status"] == "failed"
    assert "refused the credentials (401" in denied["reason"] and "[redacted]" in denied["reason"]
    assert ("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY") in denied["reason"]
    assert "rate limiting or out of quota (429" in limited["reason"]
    assert "internal error (500" in broken["reason"]
    assert_no_keys(json.dumps(denied), events, transcript, state)


async def test_a_429_is_retried_after_the_pause_the_api_asks_for(home: Path, llm: FakeLLM) -> None:
    llm.script(Fail(429, "slow down", {"retry-after": "0.1"}), Reply(text="fine"))
    async with Client(create_server(llm_settings(home, llm, llm_retries=1))) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "completed" and reply["output"] == "fine"


async def test_a_5xx_is_retried_twice_then_fails_the_turn(home: Path, llm: FakeLLM) -> None:
    llm.script(Fail(500, "overloaded"), Fail(503, "unavailable"), Reply(text="fine"))
    llm.script(Fail(500, "down"), Fail(502, "down"), Fail(503, "still down"), Reply(text="never asked for"))
    async with Client(create_server(llm_settings(home, llm, llm_retries=2))) as client:
        sid = await new_session(client)
        recovered = await call(client, "send_message", session_id=sid, text="hi", wait_s=45)
        exhausted = await call(client, "send_message", session_id=sid, text="again", wait_s=45)
    assert recovered["turn_status"] == "completed" and recovered["output"] == "fine"
    assert exhausted["turn_status"] == "failed" and "internal error (503: still down)" in exhausted["reason"]
    assert len(llm.requests) == 6 and llm.pending == 1


async def test_a_dropped_connection_to_the_model_server_is_retried(home: Path, llm: FakeLLM) -> None:
    """The model server's first connection closes before it answers (as while it restarts): asked again, it answers."""
    llm.script(Reply(text="fine"))
    async with tcp_forwarder(int(llm.url.rsplit(":", 1)[1]), drop=1) as (forwarder, port):
        settings = llm_settings(home, llm, openai_base_url=f"http://127.0.0.1:{port}/v1", llm_retries=1)
        async with Client(create_server(settings)) as client:
            sid = await new_session(client)
            reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "completed" and reply["output"] == "fine", reply
    assert forwarder.accepted == 2 and len(llm.requests) == 1


async def test_a_model_server_that_refuses_connections_is_retried_twice(home: Path, llm: FakeLLM) -> None:
    """No connection at all: each retry comes after its pause (1 s, then 2 s), so the turn lasts at least 3 s."""
    with FakeLLM() as gone:
        dead_url = gone.openai_base_url
    async with Client(create_server(llm_settings(home, llm, openai_base_url=dead_url, llm_retries=2))) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=45)
    assert reply["turn_status"] == "failed" and f"cannot reach the OpenAI-compatible API at {dead_url}" in reply["reason"]
    assert reply["duration_s"] >= 3.0, "the pauses of two retries are missing: the call was not retried"


async def test_an_unreachable_model_server_fails_the_turn(home: Path, llm: FakeLLM) -> None:
    with FakeLLM() as gone:
        dead_url = gone.openai_base_url
    async with Client(create_server(llm_settings(home, llm, openai_base_url=dead_url))) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
    assert reply["turn_status"] == "failed"
    assert f"cannot reach the OpenAI-compatible API at {dead_url}" in reply["reason"]


async def test_interrupt_stops_a_streaming_model_call(client: Client, llm: FakeLLM) -> None:
    llm.script(Reply(text="Let me think about this for a very long time...", hang=True))
    sid = await new_session(client)
    busy = await call(client, "send_message", session_id=sid, text="think", wait_s=0)
    assert busy["turn_status"] == "running"
    with anyio.fail_after(10):
        while not any(e["type"] == "text.delta" for e in await events_of(client, sid)):
            await anyio.sleep(0.05)
    # The model's stream hangs until its client goes away: the turn ends only if the interrupt cancels the call
    # (interrupt waits at most 10 s for the turn to end, and says interrupted only if it did).
    stopped = await call(client, "interrupt", session_id=sid)
    assert stopped["interrupted"] is True and stopped["status"] == "ready"
    detail = await call(client, "get_session", session_id=sid)
    assert detail["session"]["last_turn"]["status"] == "interrupted"


async def test_interrupt_stops_a_long_bash_tool_and_the_next_turn_goes_on(client: Client, llm: FakeLLM, home: Path) -> None:
    llm.script(Reply(text="Sleeping.", tool_calls=[ToolCall("bash", {"command": "sleep 300"}, id="long")]))
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="sleep", wait_s=0)
    with anyio.fail_after(10):
        while not processes_marked(sid):
            await anyio.sleep(0.05)
    stopped = await call(client, "interrupt", session_id=sid)  # `sleep 300` ends the turn only if interrupted
    assert stopped["interrupted"] is True
    assert processes_marked(sid) == []
    messages = await stored_messages(home, sid)
    assert [m.role for m in messages] == ["user", "assistant"]  # the tool call is kept, with the text before it
    assert messages[1].content[1].id == "long"
    # the next turn sends the interrupted call with a result saying so (APIs need one per call)
    llm.script(Reply(text="Back."))
    reply = await call(client, "send_message", session_id=sid, text="again", wait_s=30)
    assert reply["turn_status"] == "completed" and reply["output"] == "Back."
    results = tool_results_openai(llm.requests[-1].body)
    assert "stopped before this tool ran to its end" in results["long"]


async def test_no_api_key_reaches_the_sandbox(home: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", llm.openai_base_url)
    monkeypatch.setenv("MCP_SESSIONS_MODEL", "gpt-4o-mini")
    settings = Settings.load(home=str(home), llm_provider="openai", agent="llm")
    llm_settings = settings.section(LlmSettings)
    assert llm_settings.openai_api_key is not None and llm_settings.openai_api_key.get_secret_value() == OPENAI_KEY
    assert llm_settings.model == "gpt-4o-mini" and OPENAI_KEY not in repr(settings) + repr(llm_settings) + str(settings.values())
    llm.script(
        Reply(tool_calls=[ToolCall("bash", {"command": "env; cat /proc/self/environ | tr '\\0' '\\n'"}, id="env")]),
        Reply(text="ok"),
    )
    async with Client(create_server(settings)) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="show env", wait_s=30)
    assert reply["turn_status"] == "completed"
    env = tool_results_openai(llm.requests[-1].body)["env"]
    assert "PATH=" in env and "[exit code 0]" in env
    assert_no_keys(env)
    assert "OPENAI" not in env and "ANTHROPIC" not in env


# -- configuration --------------------------------------------------------------------------------


async def test_a_model_is_required_unless_sampling(home: Path, llm: FakeLLM) -> None:
    async with Client(create_server(llm_settings(home, llm, model=None))) as client:
        result = await client.call_tool("create_session", {"agent": "llm"})
        assert result.is_error and "needs a model" in result.content[0].text
        ok = await call(client, "create_session", agent="llm", model="qwen2.5-coder")
        assert ok["model"] == "qwen2.5-coder"


def test_help_lists_the_llm_options() -> None:
    text = build_parser().format_help()
    for flag in ("--llm-provider", "--model", "--openai-base-url", "--anthropic-base-url", "--price-file", "--llm-max-steps"):
        assert flag in text
    assert "OPENAI_API_KEY" in text and "ANTHROPIC_API_KEY" in text


def test_a_price_file_overrides_and_extends_the_shipped_table(tmp_path: Path) -> None:
    shipped = PriceTable.load()
    assert shipped.find("claude-sonnet-4-5-20250929") == shipped.prices["claude-sonnet-4"]  # dated versions match
    assert shipped.find("openai/gpt-4o-mini") == shipped.prices["gpt-4o-mini"]  # LiteLLM-style names too
    override = tmp_path / "prices.json"
    override.write_text(
        json.dumps({"models": {"gpt-4o": {"input": 1, "output": 2}, "qwen2.5-coder": {"input": 0.5, "output": 0.5}}})
    )
    table = PriceTable.load(override)
    assert table.cost("gpt-4o", TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)) == pytest.approx(3.0)
    assert table.cost("qwen2.5-coder:7b", TokenUsage(input_tokens=2_000_000)) == pytest.approx(1.0)
    assert table.cost("unknown-model", TokenUsage(input_tokens=10)) == 0.0
    override.write_text("{}")
    with pytest.raises(ValueError, match="needs an object 'models'"):
        PriceTable.load(override)


# -- the docker driver ----------------------------------------------------------------------------


@pytest.mark.docker
async def test_the_llm_agent_works_in_a_docker_sandbox(home: Path, llm: FakeLLM, docker_engine: Any) -> None:  # noqa: F811
    settings = llm_settings(home, llm, driver="docker", image=IMAGE)
    llm.script(
        Reply(tool_calls=[ToolCall("write_file", {"path": "src/app.py", "content": "print(6 * 7)\n"}, id="d1")]),
        Reply(tool_calls=[ToolCall("bash", {"command": "python3 src/app.py; id -u; env"}, id="d2")]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "src/app.py", "old_text": "6 * 7", "new_text": "6 * 9"}, id="d3")]),
        Reply(tool_calls=[ToolCall("list_files", {}, id="d4"), ToolCall("read_file", {"path": "/etc/passwd"}, id="d5")]),
        Reply(text="done"),
    )
    try:
        async with Client(create_server(settings)) as client:
            session = await call(client, "create_session")
            assert session["status"] == "ready" and session["driver"] == "docker" and session["agent"] == "llm"
            sid = session["id"]
            reply = await call(client, "send_message", session_id=sid, text="build it", wait_s=45)
            assert reply["turn_status"] == "completed", reply
            text = (await client.read_resource(f"session://{sid}/files/src/app.py")).contents[0].text
            await call(client, "close_session", session_id=sid, delete=True)
    finally:
        remove_labelled(docker_engine, server_id(settings))
    assert text == "print(6 * 9)\n"
    results = tool_results_openai(llm.requests[-1].body)
    assert results["d2"].startswith("42\n1000\n") and "[exit code 0]" in results["d2"]
    assert_no_keys(results["d2"])
    assert results["d4"].splitlines() == ["src/", "src/app.py"]
    assert "outside the workspace" in results["d5"]


def test_an_unreadable_price_file_stops_the_command_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as stopped:
        main(["--home", str(tmp_path / "home"), "--price-file", str(bad), "ls"])
    assert stopped.value.code == 1
    assert f"invalid configuration: cannot read the price file {bad}" in capsys.readouterr().err
