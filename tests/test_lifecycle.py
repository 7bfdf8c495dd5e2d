"""Timers and the cancellation rules: idle sessions are reaped, busy ones never; a caller giving up
on a call stops waiting, not the turn."""

from __future__ import annotations

from pathlib import Path

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


async def test_a_cancelled_send_message_leaves_the_turn_running(client: Client, tmp_path: Path) -> None:
    sid = await new_session(client)
    gate = tmp_path / "go"  # the turn runs until the test says: a loaded machine cannot end it early
    text = f"until [ -e {gate} ]; do sleep 0.05; done; echo finished"
    with anyio.move_on_after(2):
        await client.call_tool("send_message", {"session_id": sid, "text": text, "wait_s": 30})
    detail = await call(client, "get_session", session_id=sid)
    assert detail["session"]["status"] == "busy"
    gate.touch()
    done = await call(client, "get_session", session_id=sid, wait_s=20)
    assert done["session"]["last_turn"]["status"] == "completed"
    assert done["session"]["last_turn"]["output"] == "finished\n"


async def test_queued_messages_run_in_order_after_the_running_turn(client: Client, tmp_path: Path) -> None:
    sid = await new_session(client)
    gate = tmp_path / "go"  # turn 1 runs until the queue has been looked at
    first = f"until [ -e {gate} ]; do sleep 0.05; done; echo one > order.txt"
    await call(client, "send_message", session_id=sid, text=first, wait_s=0)
    second = await call(client, "send_message", session_id=sid, text="echo two >> order.txt", wait_s=0, queue=True)
    third = await call(
        client, "send_message", session_id=sid, text="echo three >> order.txt; cat order.txt", wait_s=0, queue=True
    )
    assert second["turn_status"] == third["turn_status"] == "queued"
    assert (second["turn"], third["turn"]) == (2, 3)
    detail = await call(client, "get_session", session_id=sid)
    assert detail["queued"] == ["echo two >> order.txt", "echo three >> order.txt; cat order.txt"]
    # without queue=true a message is still refused while busy
    assert "busy running turn 1" in await call_error(client, "send_message", session_id=sid, text="true")
    gate.touch()
    reply = await call(client, "send_message", session_id=sid, text="echo four", wait_s=30, queue=True)
    assert reply["turn"] == 4 and reply["output"] == "four\n"
    detail = await call(client, "get_session", session_id=sid)
    assert detail["queued"] == [] and detail["session"]["turns"] == 4
    transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
    assert "one\ntwo\nthree" in transcript


async def test_closing_drops_queued_messages(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="sleep 30", wait_s=0)
    await call(client, "send_message", session_id=sid, text="touch ran.txt", wait_s=0, queue=True)
    await call(client, "close_session", session_id=sid)
    # No wait needed: close returns once the running turn's end is recorded, and a queued message would have
    # begun in that same store transaction (as turn 2).
    detail = await call(client, "get_session", session_id=sid, events_after=0)
    assert detail["session"]["status"] == "dead" and detail["session"]["turns"] == 1
    closed = [e["data"] for e in detail["events"] if e["type"] == "session.closed"]
    assert closed == [{"reason": "closed", "dropped_queued": 1}]
