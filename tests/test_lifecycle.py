"""Timers and the cancellation rules: idle sessions are reaped, busy ones never; a caller giving up
on a call stops waiting, not the turn."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from .conftest import call, call_error, new_session, processes_marked

pytestmark = pytest.mark.anyio


async def wait_for_status(client: Client, sid: str, status: str, within: float) -> dict:
    with anyio.fail_after(within):
        while True:
            session = (await call(client, "get_session", session_id=sid))["session"]
            if session["status"] == status:
                return session
            await anyio.sleep(0.2)


async def test_an_idle_session_is_reaped_and_a_busy_one_is_not(client: Client) -> None:
    idle = await new_session(client, idle_timeout_s=2)
    busy = await new_session(client, idle_timeout_s=2)
    never = await new_session(client, idle_timeout_s=0)
    await call(client, "send_message", session_id=busy, text="sleep 6", wait_s=0)
    reaped = await wait_for_status(client, idle, "dead", within=15)
    assert reaped["close_reason"] == "idle timeout"
    assert "idle timeout" in await call_error(client, "send_message", session_id=idle, text="true")
    assert (await call(client, "get_session", session_id=busy))["session"]["status"] == "busy"
    finished = await call(client, "get_session", session_id=busy, wait_s=15)
    assert finished["session"]["last_turn"]["status"] == "completed"
    assert processes_marked(idle) == []
    # after its turn the busy one idles too, and goes; the one with no timeout stays
    await wait_for_status(client, busy, "dead", within=15)
    assert (await call(client, "get_session", session_id=never))["session"]["status"] == "ready"


async def test_a_cancelled_send_message_leaves_the_turn_running(client: Client) -> None:
    sid = await new_session(client)
    with anyio.move_on_after(0.5):
        await client.call_tool("send_message", {"session_id": sid, "text": "sleep 1.5; echo finished", "wait_s": 30})
    detail = await call(client, "get_session", session_id=sid)
    assert detail["session"]["status"] == "busy"
    done = await call(client, "get_session", session_id=sid, wait_s=20)
    assert done["session"]["last_turn"]["status"] == "completed"
    assert done["session"]["last_turn"]["output"] == "finished\n"
