"""A docker sandbox whose limits are used up tells the caller so, through the real MCP client and engine.

A turn that cannot run because earlier commands left the sandbox at its process limit, or that fails for
want of room in /tmp or the workspace, ends `failed` with a reason naming the limit and the way out, not
"completed" after bash's 15 s of fork retries. `interrupt` on a ready session kills what earlier
commands left running. Each case runs under runc and gVisor. (Out of memory: test_sandbox_boundary.py.)
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, new_session
from .docker_support import IMAGE, RUNTIMES, docker_engine, isolation, remove_labelled  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BOUND_S = 60.0
"""Bound on a turn: it only turns a hang into a failure (bash alone retries a failing fork for 15 s)."""
WAY_OUT = "Interrupt the session to kill the processes earlier commands left running, close it, or create a session"
FILLER = "(while :; do sleep 1000 & done) >/dev/null 2>/tmp/filler.err & echo started"
"""A background job that keeps the sandbox at its process limit, left by a turn that completes; once a fork
fails (the limit is reached) bash says so in /tmp/filler.err."""
AT_LIMIT = "[[ -s /tmp/filler.err ]] && echo at-limit"
"""Whether the filler has reached the limit, asked without a fork."""


@pytest.fixture
def docker_settings(home: Path, docker_engine: Any, isolation: str) -> Iterator[Settings]:
    settings = Settings(home=home, driver="docker", image=IMAGE, command_timeout_s=120, docker_runtime=RUNTIMES[isolation])
    yield settings
    remove_labelled(docker_engine, server_id(settings))


async def send(client: Client, sid: str, text: str) -> dict[str, Any]:
    with anyio.fail_after(BOUND_S):
        return await call(client, "send_message", session_id=sid, text=text, wait_s=BOUND_S)


async def test_a_turn_that_cannot_start_a_process_fails_naming_the_limit(docker_settings: Settings) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client, limits={"pids": 64})
        left = await send(client, sid, FILLER)
        assert (left["turn_status"], left["output"]) == ("completed", "started\n")
        with anyio.fail_after(BOUND_S):
            while (await send(client, sid, AT_LIMIT))["output"] != "at-limit\n":
                await anyio.sleep(0.1)
        blocked = await send(client, sid, "/bin/true && echo ran")
        assert blocked["turn_status"] == "failed", blocked
        assert blocked["reason"].startswith("process limit reached: the sandbox runs "), blocked["reason"]
        assert " of its 64 processes " in blocked["reason"] and blocked["reason"].endswith(f"{WAY_OUT} with a larger limits.pids")
        assert "ran" not in blocked["output"]
        assert blocked["status"] == "ready"

        stopped = await call(client, "interrupt", session_id=sid)  # nothing runs: the filler is what goes
        assert (stopped["interrupted"], stopped["status"]) == (False, "ready")
        assert "left running were stopped" in stopped["message"]
        free = await send(client, sid, "/bin/true && echo ran; ps -eo args= | grep -c '^sleep 1000$'")
        assert (free["turn_status"], free["output"]) == ("completed", "ran\n0\n")


@pytest.mark.parametrize(
    ("limits", "fill", "reason"),
    [
        (
            {"tmp_mb": 16},
            "/tmp/fill",
            f"/tmp is full (its limit is 16 MiB): delete files there. {WAY_OUT} with a larger limits.tmp_mb",
        ),
        (
            {"disk_mb": 16},
            "fill",
            f"the workspace is full (its limit is 16 MiB): delete files. {WAY_OUT} with a larger limits.disk_mb",
        ),
    ],
    ids=["tmp", "workspace"],
)
async def test_a_full_place_fails_the_turn_naming_it(
    docker_settings: Settings, limits: dict[str, int], fill: str, reason: str
) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client, limits=limits)
        full = await send(client, sid, f"head -c 32M /dev/zero > {fill}")
        assert (full["turn_status"], full["reason"]) == ("failed", reason)
        assert "No space left on device" in full["output"]
        freed = await send(client, sid, f"rm {fill} && echo freed")
        assert (freed["turn_status"], freed["output"]) == ("completed", "freed\n")
