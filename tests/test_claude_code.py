"""The claude-code agent: the real Claude Code CLI (installed by scripts/install-cli-agents.sh) in a session's
sandbox, its model requests through the server's real model proxy to a fake Anthropic server on this machine,
which the sandbox reaches only through the proxy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mcp_sessions.agents.cli import binaries
from mcp_sessions.agents.cli.proxy import PLACEHOLDER_KEY
from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .ci import unavailable
from .conftest import call, call_error, processes_marked
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_images import PNG, PNG_BLUE
from .test_llm_agent import stored_messages
from .test_stdio import kill_server

pytestmark = pytest.mark.anyio

KEY = "sk-ant-real-" + "4" * 28
MODEL = "claude-sonnet-4-5"
INSTALLED = binaries.default_dir()


def installed(name: str = "claude-code") -> None:
    """The CLI must be installed here (CI installs it); elsewhere its tests skip, saying how to run them."""
    try:
        binaries.binary(INSTALLED, name)
    except ValueError as e:
        unavailable(str(e))


AGENT = "claude-code"
"""The agent this module's fixtures make sessions of (test_codex.py and test_opencode.py use them for theirs)."""


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> Iterator[FakeLLM]:
    installed(request.module.AGENT)
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(params=["local", "docker"])
def driver(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
def settings(home: Path, llm: FakeLLM, driver: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    upstreams = dict(claude_code_base_url=llm.url, claude_code_api_key=KEY, codex_base_url=llm.openai_base_url, codex_api_key=KEY)
    upstreams |= dict(opencode_base_url=llm.openai_base_url, opencode_api_key=KEY)
    settings = Settings(home=home, driver=driver, image=IMAGE, agent=request.module.AGENT, **upstreams)
    yield settings
    if driver == "docker":
        remove_labelled(request.getfixturevalue("docker_engine"), server_id(settings))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings)) as c:
        yield c


@pytest.fixture
def inside(settings: Settings, request: pytest.FixtureRequest) -> Callable[[str], Inside]:
    """`inside(session_id)`: a look into the session's sandbox, wherever it runs."""
    engine = request.getfixturevalue("docker_engine") if settings.driver == "docker" else None
    return lambda sid: Inside(settings.driver, settings.home, sid, engine)


class Inside:
    """Commands and processes in a session's sandbox: on this machine (local) or in its container (docker)."""

    def __init__(self, driver: str, home: Path, sid: str, engine: Any) -> None:
        self.sid = sid
        self.local = driver == "local"
        self.workspace = home / "workspaces" / sid / "workspace" if self.local else Path("/workspace")
        self.container = None if self.local else engine.containers.get(f"mcp-ses-{sid}")

    async def sh(self, script: str) -> str:
        """Run a bash script there, as the sandbox's user, and return its output (in a thread: the server's
        proxy, which it may reach, runs on this event loop)."""
        return await anyio.to_thread.run_sync(self._sh, script)

    def _sh(self, script: str) -> str:
        if self.container is None:
            done = subprocess.run(["bash", "-c", script], cwd=self.workspace, capture_output=True, text=True, timeout=60)
            return done.stdout + done.stderr
        result = self.container.exec_run(["bash", "-c", script], user="1000:1000", workdir="/workspace")
        return str(result.output.decode(errors="replace"))

    async def pids(self, exe_suffix: str | None = None, argv: list[str] | None = None) -> list[int]:
        """Live processes of the sandbox whose executable ends with `exe_suffix`, or whose argv starts with `argv`."""
        candidates = processes_marked(self.sid) if self.local else [int(p) for p in (await self.sh(LIST_PIDS)).split()]
        found = []
        for pid in candidates:
            said = await self.sh(f"readlink /proc/{pid}/exe; tr '\\0' ' ' </proc/{pid}/cmdline")
            exe, cmdline = [*said.split("\n"), ""][:2]
            if (exe_suffix and exe.endswith(exe_suffix)) or (argv and cmdline.split()[: len(argv)] == argv):
                found.append(pid)
        return found

    async def cli_env(self) -> dict[str, str]:
        """The environment of the session's Claude Code process (there must be exactly one)."""
        (pid,) = await self.pids("/claude")
        raw = await self.sh(f"tr '\\0' '\\n' </proc/{pid}/environ")
        return dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)

    async def holding(self, secret: str) -> str:
        """Files of the sandbox and environments of its processes that hold `secret` (nothing, one hopes)."""
        places = f"{self.workspace.parent}" if self.local else "/workspace /tmp /run /home /etc"
        found = await self.sh(f"grep -rlF {secret} {places} 2>/dev/null")
        pids = processes_marked(self.sid) if self.local else [int(p) for p in (await self.sh(LIST_PIDS)).split()]
        for pid in pids:
            found += await self.sh(f"grep -lF {secret} /proc/{pid}/environ 2>/dev/null")
        return found


LIST_PIDS = "for p in /proc/[0-9]*; do [ -r $p/exe ] && echo ${p#/proc/}; done"


def stdio_server(settings: Settings) -> StdioServerParameters:
    """The server as a process of its own over stdio, set as `settings` say (so it can be killed)."""
    names = ("home", "driver", "image", "agent", "claude_code_base_url", "claude_code_api_key", "codex_base_url", "codex_api_key")
    names += ("opencode_base_url", "opencode_api_key")
    values = settings.values()
    env = {
        f"MCP_SESSIONS_{n.upper()}": str(v.get_secret_value() if hasattr(v, "get_secret_value") else v)
        for n in names
        if (v := values[n])
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions"], env={**os.environ, **env})


def write_file_task() -> list[Reply]:
    return [
        Reply(text="Writing it.", tool_calls=[ToolCall("Bash", {"command": "echo hello > hi.txt", "description": "write"})]),
        Reply(text="I wrote hi.txt.", input_tokens=150, output_tokens=30, cache_read_tokens=7),
    ]


def user_texts(body: dict[str, Any]) -> list[str]:
    """The plain user messages a request carried (what the caller sent, turn by turn)."""
    texts = []
    for m in body["messages"]:
        if m["role"] == "user":
            content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            texts += [b["text"] for b in content if b.get("type") == "text" and not b["text"].startswith("<")]
    return texts


async def wrote_a_file(
    client: Client, llm: FakeLLM, look: Callable[[str], Inside], model: str, task: list[Reply], *after: Reply
) -> tuple[str, dict[str, Any]]:
    """A new session's first turn on `model`, `task` (then `after`): the CLI wrote hi.txt with its own tools and says so, and
    the turn's usage is what the fake reported, counted by the proxy (two requests, the second with cached
    tokens). The session's id, and that usage."""
    llm.script(*task, *after)
    sid = (await call(client, "create_session", model=model))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "completed", reply
    assert reply["output"] == "I wrote hi.txt."
    assert await look(sid).sh("cat hi.txt") == "hello\n"
    usage = reply["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"]) == (250, 50, 7)
    return sid, usage


async def goes_on_after_a_kill(
    home: Path, llm: FakeLLM, settings: Settings, model: str, task: list[Reply], texts: Callable[[dict[str, Any]], list[str]]
) -> None:
    """A server over stdio runs `task` (hi.txt written), is killed (SIGKILL), and the next server's turn goes on
    with the same conversation: the CLI's state is the session's, not the server's."""
    llm.script(*task, Reply(text="You asked for hi.txt."))
    params = stdio_server(settings)
    async with Client(params) as first:
        sid = (await call(first, "create_session", model=model))["id"]
        assert (await call(first, "send_message", session_id=sid, text="write hi.txt", wait_s=50))["turn_status"] == "completed"
        await kill_server(home)
    async with Client(params) as second:
        reply = await call(second, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert reply["turn_status"] == "completed" and reply["output"] == "You asked for hi.txt.", reply
    assert texts(llm.requests[-1].body) == ["write hi.txt", "what did I ask?"]


async def test_a_task_writes_a_file_with_the_cli_tools_and_the_next_turn_continues(
    home: Path, llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    sid, usage = await wrote_a_file(client, llm, inside, MODEL, write_file_task(), Reply(text="You asked for hi.txt."))
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
    home: Path, llm: FakeLLM, client: Client, inside: Callable[[str], Inside], caplog: pytest.LogCaptureFixture
) -> None:
    llm.script(*write_file_task())
    sid = (await call(client, "create_session", model=MODEL))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "completed", reply
    sandbox = inside(sid)
    assert (await sandbox.cli_env())["ANTHROPIC_API_KEY"] == PLACEHOLDER_KEY
    assert [r.headers["x-api-key"] for r in llm.requests] == [KEY, KEY]
    assert all("authorization" not in r.headers for r in llm.requests)
    assert await sandbox.holding(PLACEHOLDER_KEY)  # the search finds what is there...
    assert await sandbox.holding(KEY) == ""  # ...and the key is in no file or process environment of the sandbox
    detail = await call(client, "get_session", session_id=sid, events_after=0)
    assert KEY not in json.dumps(detail)
    assert KEY not in json.dumps([m.model_dump(mode="json") for m in await stored_messages(home, sid)])
    assert KEY not in caplog.text


async def test_the_proxy_refuses_paths_other_than_the_model_api(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(text="hi"))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="say hi", wait_s=50)
    sandbox = inside(sid)
    port = (await sandbox.cli_env())["ANTHROPIC_BASE_URL"].rsplit(":", 1)[1]  # where the CLI reaches the proxy
    seen = len(llm.requests)
    for method, path in [("GET", "/v1/files"), ("POST", "/v1/messages/../files"), ("POST", "/v1/models%2f..%2fmessages")]:
        answer = await sandbox.sh(HTTP_REQUEST.format(port=port, method=method, path=path, length=0, body=""))
        assert answer.startswith("HTTP/1.1 403"), (path, answer)
        assert "not a model API path" in answer
    body = json.dumps({"model": MODEL, "messages": []})
    between_turns = await sandbox.sh(
        HTTP_REQUEST.format(port=port, method="POST", path="/v1/messages", length=len(body), body=body)
    )
    assert between_turns.startswith("HTTP/1.1 400") and "no turn" in between_turns
    assert len(llm.requests) == seen  # none of them reached the upstream


HTTP_REQUEST = (
    "exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{method} %s HTTP/1.1\\r\\nHost: x\\r\\nx-api-key: k\\r\\n"
    "Content-Length: {length}\\r\\nConnection: close\\r\\n\\r\\n{body}' '{path}' >&3 && timeout 10 cat <&3"
)


async def test_a_budget_reached_refuses_the_next_model_request_and_fails_the_turn(llm: FakeLLM, client: Client) -> None:
    llm.script(*write_file_task())
    sid = (await call(client, "create_session", model=MODEL, max_tokens=100))["id"]
    reply = await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
    assert reply["turn_status"] == "failed"
    assert reply["reason"].startswith("budget max_tokens=100 of session")
    assert len(llm.requests) == 1  # the second request was refused by the proxy, not forwarded
    assert reply["usage"]["total_tokens"] == 120


STAND_IN = """#!/bin/bash
# Takes a message and asks its model twice; refused the second time, it neither says so nor ends its turn,
# nor answers an interrupt.
read -r message
where=${ANTHROPIC_BASE_URL#http://}
body='{"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
for request in 1 2; do
  exec 4<>/dev/tcp/${where%:*}/${where##*:} || exit 1
  head='POST /v1/messages HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nConnection: close'
  printf "$head\\r\\nContent-Length: %d\\r\\n\\r\\n%s" ${#body} "$body" >&4
  cat <&4 >&2
done
sleep 600
"""


def stand_in(folder: Path, agent: str, script: str) -> Path:
    """`script` installed in `folder` (a CLI cache folder) as `agent`'s pinned binary; the folder."""
    pin = binaries.PINNED[agent]
    install = folder / f"{agent}-{pin.version}"
    (install / pin.binary).parent.mkdir(parents=True)
    (install / pin.binary).write_text(script)
    (install / pin.binary).chmod(0o755)
    (install / ".complete").touch()
    return folder


@asynccontextmanager
async def refused_stand_in(
    tmp_path: Path, llm: FakeLLM, settings: Settings, agent: str, model: str, script: str, **upstream: Any
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """`script` as `agent`'s CLI, in a session with a 100-token budget that its first model request (120
    tokens) uses up, so its second is refused: the session and the turn's reply, which failed with the
    budget's reason after one request forwarded. The session stays usable, and is closed after."""
    folder = stand_in(tmp_path / "cli-agents", agent, script)
    settings = Settings(home=settings.home, driver=settings.driver, image=IMAGE, agent=agent, cli_agents_dir=folder, **upstream)
    llm.script(Reply(text="hi"))
    async with Client(create_server(settings)) as client:
        sid = (await call(client, "create_session", model=model, max_tokens=100))["id"]
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=50)
        assert reply["turn_status"] == "failed", reply
        assert reply["reason"].startswith("budget max_tokens=100 of session"), reply
        assert len(llm.requests) == 1 and reply["usage"]["total_tokens"] == 120
        yield sid, reply
        assert (await call(client, "get_session", session_id=sid))["session"]["status"] == "ready"
        await call(client, "close_session", session_id=sid)  # and whatever the stand-in left running


async def test_claude_code_going_on_after_its_budget_refusal_is_interrupted_and_the_turn_fails(
    tmp_path: Path, llm: FakeLLM, settings: Settings
) -> None:
    upstream = dict(claude_code_base_url=llm.url, claude_code_api_key=KEY)
    async with refused_stand_in(tmp_path, llm, settings, AGENT, MODEL, STAND_IN, **upstream) as (_, reply):
        assert "Claude Code did not end its turn within 10 s of being refused, and was interrupted" in reply["reason"]


async def test_interrupt_stops_the_turn_and_the_conversation_goes_on(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("Bash", {"command": "sleep 60", "description": "wait"})]),
        Reply(text="Back again."),
    )
    sid = (await call(client, "create_session", model=MODEL))["id"]
    busy = await call(client, "send_message", session_id=sid, text="wait a minute", wait_s=0)
    assert busy["status"] == "busy"
    sandbox = inside(sid)
    with anyio.fail_after(50):  # the CLI's Bash tool runs the command
        while not await sandbox.pids(argv=["sleep", "60"]):
            await anyio.sleep(0.05)
    cli = await sandbox.pids("/claude")
    stopped = await call(client, "interrupt", session_id=sid)
    assert stopped["interrupted"] is True
    detail = (await call(client, "get_session", session_id=sid, wait_s=20))["session"]
    assert detail["status"] == "ready" and detail["last_turn"]["status"] == "interrupted"
    assert not await sandbox.pids(argv=["sleep", "60"])
    assert await sandbox.pids("/claude") == cli  # the same process goes on: the CLI stopped its own turn
    reply = await call(client, "send_message", session_id=sid, text="are you there?", wait_s=50)
    assert reply["output"] == "Back again."
    assert user_texts(llm.requests[-1].body)[:1] == ["wait a minute"]


async def test_an_interrupt_of_the_idle_session_stops_the_cli_and_the_next_turn_resumes_it(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    llm.script(Reply(text="First."), Reply(text="Second."))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    await call(client, "send_message", session_id=sid, text="one", wait_s=50)
    sandbox = inside(sid)
    cli = await sandbox.pids("/claude")
    with anyio.fail_after(30):  # the CLI writes its transcript just after the turn (a kill before loses the turn)
        while "First." not in await sandbox.sh("cat .mcp-sessions/claude-code/home/.claude/projects/*/*.jsonl"):
            await anyio.sleep(0.05)
    idle = await call(client, "interrupt", session_id=sid)  # stops what earlier commands left: the CLI too
    assert idle["interrupted"] is False
    with anyio.fail_after(30):
        while set(await sandbox.pids("/claude")) & set(cli):
            await anyio.sleep(0.1)
    reply = await call(client, "send_message", session_id=sid, text="two", wait_s=50)
    assert reply["turn_status"] == "completed" and reply["output"] == "Second.", reply
    assert user_texts(llm.requests[-1].body) == ["one", "two"]


@pytest.mark.parametrize("agent", ["claude-code", "codex", "opencode"])
async def test_a_missing_binary_fails_create_session_naming_the_install_script(home: Path, tmp_path: Path, agent: str) -> None:
    settings = Settings(home=home, agent=agent, cli_agents_dir=tmp_path / "empty")
    async with Client(create_server(settings)) as client:
        error = await call_error(client, "create_session")
    assert f"scripts/install-cli-agents.sh {agent}" in error and "is not installed" in error


async def test_a_bwrap_session_says_the_cli_cannot_reach_the_server_from_there(home: Path, llm: FakeLLM) -> None:
    """A bubblewrap sandbox has a network of its own: the model proxy cannot be served into it."""
    if shutil.which("bwrap") is None:
        unavailable("bwrap is not installed (scripts/install-bwrap.sh installs it)")
    async with Client(create_server(Settings(home=home, agent=AGENT, claude_code_base_url=llm.url))) as client:
        sid = (await call(client, "create_session", isolation="bwrap"))["id"]
        reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=30)
        assert reply["turn_status"] == "failed"
        assert reply["reason"].startswith("A local sandbox with isolation='bwrap' has a network of its own"), reply
        assert "isolation='plain' or the docker driver" in reply["reason"]
    assert llm.requests == []


async def test_the_conversation_goes_on_after_the_server_is_killed(
    home: Path, llm: FakeLLM, settings: Settings, inside: Callable[[str], Inside]
) -> None:
    llm.script(*write_file_task(), Reply(text="You asked for hi.txt."))
    params = stdio_server(settings)
    async with Client(params) as first:
        sid = (await call(first, "create_session", model=MODEL))["id"]
        reply = await call(first, "send_message", session_id=sid, text="write hi.txt", wait_s=50)
        assert reply["turn_status"] == "completed", reply
        sandbox = inside(sid)
        cli = await sandbox.pids("/claude")
        assert cli
        await kill_server(home)
    with anyio.fail_after(30):  # its input ended with the server: the CLI exits
        while set(await sandbox.pids("/claude")) & set(cli):
            await anyio.sleep(0.1)
    async with Client(params) as second:
        reply = await call(second, "send_message", session_id=sid, text="what did I ask?", wait_s=50)
        assert reply["turn_status"] == "completed", reply
        assert reply["output"] == "You asked for hi.txt."
    assert user_texts(llm.requests[-1].body) == ["write hi.txt", "what did I ask?"]


async def wait_for_approval(client: Client, sid: str, seen: int = 0) -> dict[str, Any]:
    """The tool call the session waits on, once it has asked more than `seen` times."""
    with anyio.fail_after(50):
        while True:
            events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
            asked = [e["data"] for e in events if e["type"] == "approval.requested"]
            if len(asked) > seen:
                return asked[-1]
            await anyio.sleep(0.05)


async def test_with_ask_a_tool_call_waits_for_the_callers_answer_allow_then_deny(
    llm: FakeLLM, client: Client, inside: Callable[[str], Inside]
) -> None:
    write = {"command": "echo hello > hi.txt", "description": "write"}
    llm.script(
        Reply(tool_calls=[ToolCall("Bash", write)]),
        Reply(text="Allowed and done."),
        Reply(tool_calls=[ToolCall("Bash", {"command": "echo bye > bye.txt", "description": "write"})]),
        Reply(text="It was denied."),
    )
    sid = (await call(client, "create_session", model=MODEL, permission_mode="ask"))["id"]
    await call(client, "send_message", session_id=sid, text="write hi.txt", wait_s=0)
    asked = await wait_for_approval(client, sid)
    assert asked["tool"] == "Bash" and asked["input"] == write
    assert await inside(sid).sh("ls") == ""  # nothing ran before the answer
    wrong = await call_error(client, "answer_approval", session_id=sid, request_id="nope", decision="allow")
    assert "No tool call" in wrong and "approval.requested" in wrong
    answered = await call(client, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="allow")
    assert answered == {"session_id": sid, "request_id": asked["request_id"], "tool": "Bash", "decision": "allow"}
    detail = (await call(client, "get_session", session_id=sid, wait_s=30))["session"]
    assert detail["last_turn"]["status"] == "completed" and detail["last_turn"]["output"] == "Allowed and done."
    assert await inside(sid).sh("cat hi.txt") == "hello\n"

    await call(client, "send_message", session_id=sid, text="write bye.txt", wait_s=0)
    asked = await wait_for_approval(client, sid, seen=1)
    await call(
        client, "answer_approval", session_id=sid, request_id=asked["request_id"], decision="deny", message="Not that file."
    )
    detail = (await call(client, "get_session", session_id=sid, wait_s=30))["session"]
    assert detail["last_turn"]["output"] == "It was denied."
    assert "No such file" in await inside(sid).sh("cat bye.txt")
    (result,) = [
        b
        for m in llm.requests[-1].body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ][-1:]
    assert result["is_error"] and "Not that file." in json.dumps(result["content"])


async def test_an_image_sent_with_the_message_reaches_the_model_as_it_was_sent(home: Path, llm: FakeLLM, client: Client) -> None:
    llm.script(Reply(text="A red square."))
    sid = (await call(client, "create_session", model=MODEL))["id"]
    images = [{"data": PNG, "media_type": "image/png"}, {"data": PNG_BLUE, "media_type": "image/png"}]
    reply = await call(client, "send_message", session_id=sid, text="What is this?", images=images, wait_s=50)
    assert reply["turn_status"] == "completed" and reply["output"] == "A red square.", reply
    (request,) = llm.requests
    sent = [b for m in request.body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "image"]
    assert [b["source"] for b in sent] == [
        {"type": "base64", "media_type": "image/png", "data": data} for data in (PNG, PNG_BLUE)
    ]
    assert user_texts(request.body) == ["What is this?"]
    assert [b.type for b in (await stored_messages(home, sid))[0].content] == ["text", "image", "image"]
