"""Shared fixtures: a fresh state folder per test and real MCP clients in both protocol eras."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from tests.plugin_site import installed

ERAS = ["legacy", "auto"]
"""legacy: the initialize handshake (Claude Desktop, VS Code today); auto: the 2026-07-28 era."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, command_timeout_s=120)


@pytest.fixture
def docker_settings(home: Path, docker_engine: Any) -> Iterator[Settings]:
    """Settings whose default driver is docker, for modules that import `docker_engine` from tests.docker_support;
    what their sessions leave on the engine (and on the host) is removed afterwards."""
    from mcp_sessions.app import server_id

    from .docker_support import IMAGE, remove_labelled

    settings = Settings(home=home, driver="docker", image=IMAGE, command_timeout_s=120)
    yield settings
    remove_labelled(docker_engine, server_id(settings))


@pytest.fixture(params=ERAS)
async def client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Client]:
    async with Client(create_server(settings), mode=request.param) as c:
        yield c


def stdio_params(home: Path, *args: str) -> StdioServerParameters:
    """The real command, as an MCP host would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    env["MCP_SESSIONS_HOME"] = str(home)
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions", *args], env=env)


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call a tool that must succeed and return its structured result."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, **args: Any) -> str:
    """Call a tool that must fail and return the error text the caller's model reads."""
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def start_turn(client: Client, session_id: str, text: str, shown: str, within: float = 30) -> dict[str, Any]:
    """Start a turn that runs on and return its reply once the turn's output so far is `shown`, as stored (so a
    server killed now has left it behind). A fixed short wait_s would race a slow machine."""
    before = (await call(client, "get_session", session_id=session_id))["events_cursor"]
    reply = await call(client, "send_message", session_id=session_id, text=text, wait_s=0)
    assert reply["status"] == "busy", reply
    output = ""
    with anyio.fail_after(within):
        while output != shown:
            assert shown.startswith(output), output
            detail = await call(client, "get_session", session_id=session_id, events_after=before)
            output = "".join(e["data"]["text"] for e in detail["events"] if e["type"] == "tool.output")
            await anyio.sleep(0.05)
    return reply


async def new_session(client: Client, **args: Any) -> str:
    session = await call(client, "create_session", **args)
    assert session["status"] == "ready", session
    return session["id"]


def processes_marked(session_id: str) -> list[int]:
    """Pids of live processes started in a local session's sandbox (they carry its marker variable)."""
    needle = f"MCP_SESSIONS_SANDBOX={session_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def plugins_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test plugins (the `memory` driver) installed through their entry points for this test only,
    subprocess servers included; yields the site folder they are installed in."""
    with installed(tmp_path_factory.mktemp("site")) as site:
        yield site
