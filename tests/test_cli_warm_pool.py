"""CLI agents on docker served from the warm pool: pooled containers bind the installed CLIs' binaries, so a
claude-code session claims one instead of paying a container's creation, and its CLI runs from the binary
the pool bound (a turn against the fake Anthropic server on this machine, through the model proxy)."""

# ruff: noqa: F811  (the fixtures imported from other test modules are used by name)
from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call
from .docker_support import docker_engine  # noqa: F401
from .fake_llm import FakeLLM, Reply
from .test_claude_code import KEY, MODEL, llm, settings  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

AGENT = "claude-code"


@pytest.fixture
def driver(docker_engine: Any) -> str:
    return "docker"


async def test_a_claude_code_session_is_served_from_the_warm_pool(llm: FakeLLM, settings: Settings, docker_engine: Any) -> None:
    async with Client(create_server(settings.replace(docker_pool=1))) as client:
        made = [await call(client, "create_session", model=MODEL)]  # starts the driver, and with it the pool
        with anyio.fail_after(60):
            while True:  # a create that comes while the pool's container is still being made is made cold
                await anyio.sleep(0.5)
                warm = {
                    c.id for c in docker_engine.containers.list(filters={"label": "mcp-sessions.pool=1", "name": "mcp-pool-"})
                }
                made.append(created := await call(client, "create_session", model=MODEL))
                if created["sandbox"]["pooled"]:
                    break
        sid = created["id"]
        assert created["sandbox"]["id"] in warm, "the session got a new container, not the warm pool's"
        events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
        phases = [e["data"].get("detail") for e in events if e["type"] == "phase"]
        assert f"warm pool container {created['sandbox']['id'][:12]}" in phases, phases

        llm.script(Reply(text="Hello from a warm container.", input_tokens=12, output_tokens=5))
        reply = await call(client, "send_message", session_id=sid, text="say hello", wait_s=50)
        assert reply["turn_status"] == "completed" and reply["output"] == "Hello from a warm container.", reply
        assert [r.headers["x-api-key"] for r in llm.requests] == [KEY]  # the CLI's one request, through the proxy
        assert (reply["usage"]["input_tokens"], reply["usage"]["output_tokens"]) == (12, 5)
        for session in made:
            await call(client, "close_session", session_id=session["id"], delete=True)
