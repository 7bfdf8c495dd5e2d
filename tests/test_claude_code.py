"""The claude-code agent: the real Claude Code CLI (installed by scripts/install-cli-agents.sh) in a session's
sandbox, its model requests through the server's real model proxy to a fake Anthropic server on this machine,
which the sandbox reaches only through the proxy."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

from mcp_sessions.agents.cli import binaries
from mcp_sessions.agents.cli.proxy import PLACEHOLDER_KEY
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from mcp_sessions.store import Store

from .ci import unavailable
from .conftest import call, call_error, processes_marked
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_stdio import kill_server

pytestmark = pytest.mark.anyio

KEY = "sk-ant-real-" + "4" * 28
MODEL = "claude-sonnet-4-5"
INSTALLED = binaries.default_dir()


def installed() -> None:
    """Claude Code must be installed here (CI installs it); elsewhere its tests skip, saying how to run them."""
    try:
        binaries.binary(INSTALLED, "claude-code")
    except ValueError as e:
        unavailable(str(e))


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    installed()
    with FakeLLM() as fake:
        yield fake


def cc_settings(home: Path, llm: FakeLLM, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(home=home, agent="claude-code", claude_code_base_url=llm.url, claude_code_api_key=KEY)
    return Settings(**{**values, **overrides})


@pytest.fixture
async def client(home: Path, llm: FakeLLM) -> AsyncIterator[Client]:
    async with Client(create_server(cc_settings(home, llm))) as c:
        yield c


def write_file_task() -> list[Reply]:
    return [
        Reply(text="Writing it.", tool_calls=[ToolCall("Bash", {"command": "echo hello > hi.txt", "description": "write"})]),
        Reply(text="I wrote hi.txt.", input_tokens=150, output_tokens=30, cache_read_tokens=7),
    ]


async def stored_messages(home: Path, sid: str) -> list[Any]:
    store = await Store.open(home / "sessions.db")
    try:
        return await store.messages(sid)
    finally:
        await store.aclose()


def user_texts(body: dict[str, Any]) -> list[str]:
    """The plain user messages a request carried (what the caller sent, turn by turn)."""
    texts = []
    for m in body["messages"]:
        if m["role"] == "user":
            content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            texts += [b["text"] for b in content if b.get("type") == "text" and not b["text"].startswith("<")]
    return texts


def cli_pids(sid: str) -> list[int]:
    """The session's Claude Code processes (found by its sandbox's marker)."""
    found = []
    for pid in processes_marked(sid):
        try:
            if os.readlink(f"/proc/{pid}/exe").endswith("/claude"):
                found.append(pid)
        except OSError:
            continue
    return found


def sleeping(sid: str) -> list[int]:
    """The session's processes running `sleep 60`."""
    found = []
    for pid in processes_marked(sid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"60"]:
                found.append(pid)
        except OSError:
            continue
    return found


def cli_env(sid: str) -> dict[str, str]:
    """The environment of the session's Claude Code process."""
    (pid,) = cli_pids(sid)
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_a_task_writes_a_file_with_the_cli_tools_and_the_next_turn_continues(
    home: Path, llm: FakeLLM, client: Client
) -> None:
    llm.script(*write_file_task(), Reply(text="You asked for hi.txt."))
    session = await call(client, "create_session", model=MODEL)
    sid = session["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "completed", reply
    assert reply["output"] == "I wrote hi.txt."
    workspace = home / "workspaces" / sid / "workspace"
    assert (workspace / "hi.txt").read_text() == "hello\n"
    # usage as the fake reported it, counted by the proxy: two requests, the second with cached tokens
    usage = reply["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"]) == (250, 50, 7)
    assert usage["cost_usd"] == pytest.approx((250 * 3 + 50 * 15 + 7 * 0.3) / 1e6)

    events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
    kinds = [e["type"] for e in events]
    started = next(e["data"] for e in events if e["type"] == "tool.started")
    assert started["tool"] == "Bash" and started["input"]["command"] == "echo hello > hi.txt"
    assert kinds.index("tool.started") < kinds.index("tool.completed") < kinds.index("turn.completed")
    assert "".join(e["data"]["text"] for e in events if e["type"] == "text.delta") == "Writing it.I wrote hi.txt."

    messages = await stored_messages(home, sid)
    blocks = [(m.role, b.type) for m in messages for b in m.content]
    assert blocks == [
        ("user", "text"),
        ("assistant", "text"),
        ("assistant", "tool_use"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    tool_use, tool_result = messages[1].content[1], messages[2].content[0]
    assert tool_result.tool_use_id == tool_use.id and not tool_result.is_error

    second = await call(client, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
    assert second["output"] == "You asked for hi.txt."
    assert user_texts(llm.requests[2].body) == ["write hi.txt", "what did I ask?"]  # the conversation went on
    assert len(llm.requests) == 3  # one process: no start-up request, no retry


async def test_the_key_stays_in_the_server_and_the_cli_sends_a_placeholder(
    home: Path, llm: FakeLLM, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    llm.script(*write_file_task())
    sid = (await call(client, "create_session", model=MODEL))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "completed", reply
    env = cli_env(sid)
    assert env["ANTHROPIC_API_KEY"] == PLACEHOLDER_KEY
    assert [r.headers["x-api-key"] for r in llm.requests] == [KEY, KEY]
    assert all("authorization" not in r.headers for r in llm.requests)
    # nowhere in the sandbox: its files, its processes' environments
    for path in (home / "workspaces" / sid).rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert KEY.encode() not in path.read_bytes(), path
    for pid in processes_marked(sid):
        assert KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    detail = await call(client, "get_session", session_id=sid, events_after=0)
    assert KEY not in json.dumps(detail)
    assert KEY not in json.dumps([m.model_dump(mode="json") for m in await stored_messages(home, sid)])
    assert KEY not in caplog.text


async def test_the_proxy_refuses_paths_other_than_the_model_api(home: Path, llm: FakeLLM, client: Client) -> None:
    llm.script(Reply(text="hi"))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="say hi", wait_s=50)
    base = cli_env(sid)["ANTHROPIC_BASE_URL"]  # the address the CLI in the sandbox was given
    seen = len(llm.requests)
    async with httpx.AsyncClient(base_url=base) as http:
        for method, path in [("GET", "/v1/files"), ("POST", "/v1/messages/../files"), ("POST", "/v1/models%2f..%2fmessages")]:
            answer = await http.request(method, path, headers={"x-api-key": PLACEHOLDER_KEY})
            assert answer.status_code == 403, (path, answer.text)
            assert "not a model API path" in answer.json()["error"]["message"]
        between_turns = await http.post("/v1/messages", json={"model": MODEL, "messages": []})
        assert between_turns.status_code == 400 and "no turn" in between_turns.json()["error"]["message"]
    assert len(llm.requests) == seen  # none of them reached the upstream


async def test_a_budget_reached_refuses_the_next_model_request_and_fails_the_turn(
    home: Path, llm: FakeLLM, client: Client
) -> None:
    llm.script(*write_file_task())
    sid = (await call(client, "create_session", model=MODEL, max_tokens=100))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "failed"
    assert reply["reason"].startswith("budget max_tokens=100 of session")
    assert len(llm.requests) == 1  # the second request was refused by the proxy, not forwarded
    assert reply["usage"]["total_tokens"] == 120


async def test_interrupt_stops_the_turn_and_the_conversation_goes_on(home: Path, llm: FakeLLM, client: Client) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("Bash", {"command": "sleep 60", "description": "wait"})]),
        Reply(text="Back again."),
    )
    sid = (await call(client, "create_session", model=MODEL))["id"]
    busy = await call(client, "send_message", session_id=sid, text="wait a minute", wait_s=0)
    assert busy["status"] == "busy"
    with anyio.fail_after(50):  # the CLI's Bash tool runs the command
        while not sleeping(sid):
            await anyio.sleep(0.05)
    cli = cli_pids(sid)
    stopped = await call(client, "interrupt", session_id=sid)
    assert stopped["interrupted"] is True
    detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
    assert detail["status"] == "ready" and detail["last_turn"]["status"] == "interrupted"
    assert not sleeping(sid)
    assert cli_pids(sid) == cli  # the same process goes on: the CLI stopped its own turn
    reply = await call(client, "send_message", session_id=sid, text="are you there?", wait_s=50)
    assert reply["output"] == "Back again."
    assert user_texts(llm.requests[-1].body)[:1] == ["wait a minute"]


async def test_a_missing_binary_fails_create_session_naming_the_install_script(home: Path, tmp_path: Path) -> None:
    settings = Settings(home=home, agent="claude-code", cli_agents_dir=tmp_path / "empty")
    async with Client(create_server(settings)) as client:
        error = await call_error(client, "create_session")
    assert "scripts/install-cli-agents.sh claude-code" in error and "is not installed" in error


async def test_the_conversation_goes_on_after_the_server_is_killed(home: Path, llm: FakeLLM) -> None:
    llm.script(*write_file_task(), Reply(text="You asked for hi.txt."))
    env = {
        **os.environ,
        "MCP_SESSIONS_HOME": str(home),
        "MCP_SESSIONS_AGENT": "claude-code",
        "MCP_SESSIONS_CLAUDE_CODE_BASE_URL": llm.url,
        "MCP_SESSIONS_CLAUDE_CODE_API_KEY": KEY,
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions"], env=env)
    async with Client(params) as first:
        sid = (await call(first, "create_session", model=MODEL))["id"]
        reply = await call(first, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
        assert reply["turn_status"] == "completed", reply
        cli = cli_pids(sid)
        assert cli
        await kill_server(home)
    with anyio.fail_after(30):  # its input ended with the server: the CLI exits
        while set(cli_pids(sid)) & set(cli):
            await anyio.sleep(0.1)
    async with Client(params) as second:
        reply = await call(second, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert reply["turn_status"] == "completed", reply
        assert reply["output"] == "You asked for hi.txt."
    assert user_texts(llm.requests[-1].body) == ["write hi.txt", "what did I ask?"]
