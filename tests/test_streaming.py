"""Long turns in every client: progress notifications, subscriptions, list changes and logs, in both eras."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import (
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
)

from mcp_sessions import sdk
from mcp_sessions.models import Session, SessionRecord, new_session_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import ERAS, call, new_session, stdio_params

pytestmark = pytest.mark.anyio


async def test_progress_notifications_carry_new_output(client: Client) -> None:
    sid = await new_session(client)
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    result = await client.call_tool(
        "send_message",
        {"session_id": sid, "text": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.4; done", "wait_s": 30},
        progress_callback=on_progress,
    )
    assert result.structured_content["turn_status"] == "completed"
    assert len(messages) >= 2, messages
    streamed = "".join(messages)
    assert [line for line in streamed.splitlines() if line] == [f"tick {i}" for i in range(1, 7)]


class Notes(list[str]):
    """What a handshake-era client is sent, one line each: `updated URI`, `list_changed`, `log MESSAGE`."""

    async def on_message(self, message: object) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            self.append(f"updated {message.params.uri}")
        elif isinstance(message, ResourceListChangedNotification):
            self.append("list_changed")
        elif isinstance(message, LoggingMessageNotification):
            self.append(f"log {message.params.data['message']}")

    async def heard(self, note: str, within: float = 10) -> None:
        """Until a line that contains `note` has come."""
        with anyio.fail_after(within):
            while not any(note in line for line in self):
                await anyio.sleep(0.05)


async def test_a_handshake_era_subscriber_gets_updates_list_changes_and_turn_logs(settings: Settings) -> None:
    notes = Notes()
    logs: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    server = create_server(settings)
    async with Client(server, mode="legacy", message_handler=notes.on_message, logging_callback=on_log) as client:
        caps = client.server_capabilities
        assert caps.resources.subscribe and caps.resources.list_changed and caps.logging is not None
        await client.set_logging_level("info")
        sid = await new_session(client)
        with anyio.fail_after(30):  # a hang, not a slow machine
            while "list_changed" not in notes:
                await anyio.sleep(0.1)
        await client.subscribe_resource(f"session://{sid}")
        await call(client, "send_message", session_id=sid, text="echo hi; exit 2")
        with anyio.fail_after(30):  # a hang, not a slow machine
            while f"updated session://{sid}" not in notes or len(logs) < 2:
                await anyio.sleep(0.1)
        notes.clear()
        await call(client, "close_session", session_id=sid)
        with anyio.fail_after(30):  # a hang, not a slow machine
            while "list_changed" not in notes:
                await anyio.sleep(0.1)
    texts = [log.data["message"] for log in logs]
    assert any("turn 1 started: echo hi" in t for t in texts)
    assert any("turn 1 completed (exit code 2" in t for t in texts)


async def test_a_session_added_while_the_server_starts_is_announced(settings: Settings) -> None:
    """A session written the moment the server starts, before anything else runs: the change feed knows what it
    reports changes against before the first request, so nothing added after goes unannounced. The write is
    in-process on purpose: only a writer that does not yield lands in that window (another server process's
    writes are announced too: test_a_subscriber_hears_of_changes_made_through_another_server_process)."""
    server = create_server(settings)
    seen: list[object] = []
    sdk.subscription_bus(server).subscribe(seen.append)
    async with server.serving() as state:
        s = Session(id=new_session_id(), driver="local", agent="shell", command_timeout_s=10, status="ready")
        await state.manager.store.insert(SessionRecord(session=s), [("session.created", {})])
        with anyio.fail_after(30):  # a hang, not a slow machine
            while not any(isinstance(event, ResourcesListChanged) for event in seen):
                await anyio.sleep(0.05)
        assert ResourceUpdated(uri=f"session://{s.id}") in seen


async def test_a_subscriber_hears_of_changes_made_through_another_server_process(home: Path) -> None:
    """Two stdio servers on one state folder, as two clients start them: the subscriber's server hears of what the
    other one does through the store (list changes, updates, turn logs), not from the process that did it."""
    notes = Notes()
    async with (
        Client(stdio_params(home), mode="legacy", message_handler=notes.on_message) as subscriber,
        Client(stdio_params(home), mode="legacy") as other,
    ):
        await subscriber.set_logging_level("info")
        sid = await new_session(other)
        await notes.heard("list_changed")
        await subscriber.subscribe_resource(f"session://{sid}")
        notes.clear()
        await call(other, "send_message", session_id=sid, text="echo from the other server")
        await notes.heard(f"updated session://{sid}")
        await notes.heard(f"log {sid}: turn 1 completed (exit code 0")
        notes.clear()
        await call(other, "close_session", session_id=sid)
        await notes.heard("list_changed")


async def test_logging_level_filters_what_the_client_gets(settings: Settings) -> None:
    logs: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(create_server(settings), mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("warning")
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text="true")
        for _ in range(2):
            await call(client, "send_message", session_id=sid, text="sleep 30", wait_s=0)
            await call(client, "interrupt", session_id=sid)
        # Logs arrive in order: once turn 3's end is in, anything logged for turns 1 to 3 before it is too.
        with anyio.fail_after(10):
            while not any("turn 3 interrupted" in log.data["message"] for log in logs):
                await anyio.sleep(0.05)
    assert [log.level for log in logs] == ["warning", "warning"], [log.data["message"] for log in logs]
    assert "turn 2 interrupted" in logs[0].data["message"]


async def test_a_modern_era_listener_gets_updates_and_list_changes(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        sid = await new_session(client)
        seen: list[object] = []
        async with client.listen(resources_list_changed=True, resource_subscriptions=[f"session://{sid}"]) as stream:
            await call(client, "send_message", session_id=sid, text="echo hi")  # an update, not a list change
            await call(client, "create_session")  # a list change
            with anyio.move_on_after(10):
                async for event in stream:
                    seen.append(event)
                    if ResourceUpdated(uri=f"session://{sid}") in seen and ResourcesListChanged() in seen:
                        break
    assert ResourceUpdated(uri=f"session://{sid}") in seen, seen
    assert ResourcesListChanged() in seen, seen


async def test_a_90_second_turn_is_followed_to_the_end_in_both_eras(tmp_path: Path) -> None:
    """Every call returns at its wait_s while the turn runs (so a client's time-out never cuts one), and every
    line lands in the transcript. Checked by behaviour, not by the clock: the machine is shared."""
    script = "for i in $(seq 1 90); do echo line $i; sleep 1; done"

    async def follow(mode: str) -> None:
        async with Client(create_server(Settings(home=tmp_path / mode)), mode=mode) as client:
            sid = await new_session(client)
            with anyio.fail_after(60):  # a hang guard: no call waits past 50 s
                reply = await call(client, "send_message", session_id=sid, text=script, wait_s=5)
            assert reply["status"] == "busy"  # it returned at its wait_s, long before the turn's end
            cursor = reply["events_cursor"]
            calls = 0
            while True:
                with anyio.fail_after(60):
                    detail = await call(client, "get_session", session_id=sid, wait_s=20, events_after=cursor)
                calls += 1
                cursor = detail["events_cursor"]
                if detail["session"]["status"] != "busy":
                    break
            assert calls >= 4, f"{calls} calls of wait_s=20 followed a 90 s turn: some waited past their wait_s"
            assert detail["session"]["last_turn"]["status"] == "completed"
            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert all(f"line {i}\n" in transcript for i in range(1, 91))

    async with anyio.create_task_group() as tg:
        for mode in ERAS:
            tg.start_soon(follow, mode)
